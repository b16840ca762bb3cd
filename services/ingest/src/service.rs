//! `ingest serve`: start-up, and the SubmitPackage handler: cheap checks
//! first, then the signature over the exact bytes, then the parse of those
//! bytes, then evidence to S3, then one transaction, then the receipt. Each
//! stage is timed and each outcome counted in [`crate::metrics`].

use crate::args::ServeArgs;
use crate::keys::KeyDirectory;
use crate::metrics::{IngestMetrics, Stage};
use crate::receipt_keys::ReceiptKeys;
use crate::schema;
use crate::store::{PackageRow, RecordStore};
use anyhow::Context as _;
use evidence::ReceiptClaims;
use platform::db::DatabaseLogin;
use platform::rpc::{RequestContext, RpcClient, RpcServer};
use platform::s3::{EvidenceStore, S3Credentials};
use platform::service::Service;
use rpc_contracts::ingest::{
    self, JwkSet, ReceiptKeysRequest, SubmitPackageRequest, SubmitPackageResponse,
};
use rpc_contracts::{ErrorCode, KeyId, RpcError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

struct Ingest {
    keys: KeyDirectory,
    store: Arc<RecordStore>,
    evidence: EvidenceStore,
    /// The receipt signing keys (`receipt_keys.rs`), reloaded from Vault.
    signer: ReceiptKeys,
    verify_slots: Arc<Semaphore>,
    inline_verify_max_bytes: usize,
    metrics: IngestMetrics,
    audience: String,
    created_at_max_age: time::Duration,
    created_at_max_skew: time::Duration,
    record_max_age: time::Duration,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut svc = Service::bootstrap(crate::SERVICE, args.common.clone()).await?;
    let login = DatabaseLogin::from_vault(&svc.vault, &args.database)
        .await
        .context("reading the database login")?;
    let s3_creds: S3Credentials = svc
        .vault
        .read("s3")
        .await
        .context("reading the S3 credentials")?;
    let signer = crate::receipt_keys::load(&svc.vault).await?;
    crate::receipt_keys::keep_fresh(
        &signer,
        &svc.vault,
        Duration::from_secs(args.signing_key_reload_secs.max(1)),
        &mut svc.registry,
        svc.stop.clone(),
    );
    let store = Arc::new(RecordStore::connect(&args.database, &login.creds)?);
    store.check_schema(schema::expected_version()).await?;
    let lifecycle = crate::jobs::rpc::Lifecycle::start(
        &args.database,
        &login.creds,
        args.jobs.config(args.record_max_age_days),
        &mut svc.registry,
        svc.stop.clone(),
    );
    {
        let store = store.clone();
        let lifecycle = lifecycle.clone();
        login.keep_fresh(&svc.vault, move |creds| {
            lifecycle.use_login(&creds);
            store.use_login(creds);
        });
    }
    let evidence = EvidenceStore::new(&args.s3, &s3_creds);
    evidence
        .ensure_bucket()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let metrics = IngestMetrics::register(&mut svc.registry);
    let pool = store.pool().clone();
    svc.ready
        .add_check("database", crate::metrics::database_check(pool.clone()));
    svc.ready
        .add_check("s3", platform::ops::s3_bucket_check(evidence.clone()));
    platform::db_metrics::PoolMetrics::new()
        .source(crate::SERVICE, crate::metrics::pool_stats(pool))
        .register(&mut svc.registry);
    let rpc = RpcClient::start(svc.rpc.clone(), svc.rpc_metrics.clone());
    let archive = EvidenceStore::new(
        &platform::s3::S3Args {
            s3_bucket: args.archive_bucket.clone(),
            ..args.s3.clone()
        },
        &s3_creds,
    );
    archive
        .ensure_bucket()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    lifecycle.provide(crate::jobs::Resources {
        evidence: Some(evidence.clone()),
        archive: Some(archive),
        rpc: Some(rpc.clone()),
        vault: Some(svc.vault.clone()),
        partition: None,
    });
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let ingest = Arc::new(Ingest {
        keys: KeyDirectory::new(rpc.clone(), Duration::from_millis(args.key_cache_ttl_ms)),
        store,
        evidence,
        signer,
        verify_slots: Arc::new(Semaphore::new(
            args.verify_concurrency.unwrap_or(cores).max(1),
        )),
        inline_verify_max_bytes: args.inline_verify_max_bytes,
        metrics,
        audience: args.audience.clone(),
        created_at_max_age: time::Duration::seconds(args.created_at_max_age_secs as i64),
        created_at_max_skew: time::Duration::seconds(args.created_at_max_skew_secs as i64),
        record_max_age: time::Duration::days(i64::from(args.record_max_age_days)),
    });
    let submit = ingest.clone();
    let keys = ingest.clone();
    let server = lifecycle
        .register(RpcServer::builder(ingest::QUEUE))
        .on::<ingest::SubmitPackage, _, _>(move |ctx, req| {
            let ingest = submit.clone();
            async move { ingest.submit(ctx, req, platform::clock::now()).await }
        })
        .on::<ingest::ReceiptKeys, _, _>(move |_ctx, _req: ReceiptKeysRequest| {
            let jwks = keys.signer.current().jwks(platform::clock::now());
            async move { Ok(JwkSet { keys: jwks }) }
        })
        .build()
        .gated(svc.vault.gate());
    svc.serve_ops().await?;
    svc.ready.set(true);
    server
        .run(svc.rpc.clone(), svc.rpc_metrics.clone(), svc.stop.clone())
        .await;
    rpc.close().await;
    Ok(())
}

fn err(code: ErrorCode, message: impl Into<String>) -> RpcError {
    RpcError::new(code, message)
}

impl Ingest {
    /// The SubmitPackage handler: [`Ingest::store`], counted by outcome.
    #[tracing::instrument(skip_all, fields(trace_id = %ctx.trace_id, size = req.body.0.len()))]
    async fn submit(
        &self,
        ctx: RequestContext,
        req: SubmitPackageRequest,
        received_at: OffsetDateTime,
    ) -> Result<SubmitPackageResponse, RpcError> {
        let mut submitter = None;
        let outcome = self.store(ctx, req, received_at, &mut submitter).await;
        let counted = match &outcome {
            Ok(response) => Ok(response.created),
            Err(e) => Err(e.code),
        };
        self.metrics.finished(counted);
        if let Some(submitter) = submitter {
            self.metrics
                .submitter_finished(&submitter, counted, received_at);
        }
        outcome
    }

    async fn store(
        &self,
        ctx: RequestContext,
        req: SubmitPackageRequest,
        received_at: OffsetDateTime,
        submitter_seen: &mut Option<String>,
    ) -> Result<SubmitPackageResponse, RpcError> {
        let metrics = &self.metrics;
        // Cheap checks first: header shapes, then the key's state.
        let key_id = KeyId::parse(req.key_id.trim())
            .map_err(|_| err(ErrorCode::UnknownKey, "Tallyhouse-Key-Id is not a key id"))?;
        let signature = evidence::decode_signature_header(&req.signature).map_err(|e| {
            err(
                ErrorCode::BadSignature,
                format!("Tallyhouse-Signature: {e}"),
            )
        })?;
        let started = Instant::now();
        let known = self.keys.get(&key_id, &ctx).await;
        metrics.observe(Stage::KeyLookup, started.elapsed());
        let known = known?;
        *submitter_seen = Some(known.info.submitter_id.as_str().to_owned());
        check_key_state(&known.info, received_at)?;

        // The signature over the exact bytes, then the parse of those bytes.
        // The verification slot bounds verifications (and the hashing in
        // them) at once; it is released before the parse.
        let body = Arc::new(req.body.0);
        let (package, sha256) = {
            let queued = Instant::now();
            let slot = self
                .verify_slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| err(ErrorCode::Unavailable, "shutting down"))?;
            let inline = body.len() <= self.inline_verify_max_bytes;
            let body = body.clone();
            let key = known.clone();
            let metrics = metrics.clone();
            let signature = signature.clone();
            let work = move || {
                metrics.observe(Stage::VerifyQueue, queued.elapsed());
                // One pass over the body: the digest that is verified is
                // also the body's identity.
                let sha256 = metrics
                    .compute(Stage::Verify, || key.key.verify_and_hash(&body, &signature))
                    .map_err(|_| {
                        err(
                            ErrorCode::BadSignature,
                            "the signature does not verify over the body",
                        )
                    })?;
                drop(slot);
                let package = metrics
                    .compute(Stage::Parse, || evidence::parse_package(&body))
                    .map_err(|e| err(ErrorCode::MalformedPackage, e.to_string()))?;
                Ok::<_, RpcError>((package, sha256))
            };
            if inline {
                work()?
            } else {
                tokio::task::spawn_blocking(work)
                    .await
                    .map_err(|_| err(ErrorCode::Internal, "verification task failed"))??
            }
        };

        if package.submitter_id != known.info.submitter_id {
            return Err(err(
                ErrorCode::KeySubmitterMismatch,
                format!(
                    "key {key_id} belongs to another submitter than {}",
                    package.submitter_id
                ),
            ));
        }
        if package.audience != self.audience {
            return Err(err(
                ErrorCode::WrongAudience,
                format!(
                    "the package is for audience {:?}, this deployment is {:?}",
                    package.audience, self.audience
                ),
            ));
        }
        if package.created_at < received_at - self.created_at_max_age
            || package.created_at > received_at + self.created_at_max_skew
        {
            return Err(err(
                ErrorCode::CreatedAtOutOfWindow,
                format!(
                    "created_at {} is outside the accepted window",
                    rfc3339(package.created_at)
                ),
            ));
        }
        // The UTC days the records fall on: each needs its partition
        // (records mostly come in time order: one set insert per day).
        let mut days = std::collections::BTreeSet::new();
        let mut last_day = None;
        for (i, r) in package.records.iter().enumerate() {
            if r.ts < received_at - self.record_max_age
                || r.ts > received_at + time::Duration::days(1)
            {
                return Err(err(
                    ErrorCode::MalformedPackage,
                    format!(
                        "/records/{i}/ts: {} is outside the accepted range",
                        rfc3339(r.ts)
                    ),
                ));
            }
            let day = r.ts.to_offset(time::UtcOffset::UTC).date();
            if last_day != Some(day) {
                days.insert(day);
                last_day = Some(day);
            }
        }

        // Idempotency: (submitter_id, package_id) and the body's SHA-256.
        let submitter = package.submitter_id.as_str().to_owned();
        let started = Instant::now();
        let existing = self.store.existing(&submitter, package.package_id).await;
        metrics.observe(Stage::Dedupe, started.elapsed());
        if let Some(existing) = existing? {
            return same_or_conflict(&existing.sha256, &sha256, existing.receipt);
        }

        let claims = ReceiptClaims {
            package_id: package.package_id,
            submitter_id: package.submitter_id.clone(),
            sha256: hex::encode(sha256),
            size: body.len() as u64,
            records: package.records.len() as u64,
            received_at,
        };
        // Signing takes tens of microseconds: not worth a thread hop.
        let receipt = metrics
            .compute(Stage::ReceiptSign, || {
                self.signer.current().signer(received_at).sign(&claims)
            })
            .map_err(|e| {
                tracing::error!(error = %e, "cannot sign receipt");
                err(ErrorCode::Internal, "cannot sign the receipt")
            })?;

        // Evidence first: an orphan blob is harmless, a row without its blob is not.
        let body = Arc::try_unwrap(body).unwrap_or_else(|b| (*b).clone());
        let size = body.len() as i64;
        let started = Instant::now();
        let blob_key = self.evidence.put_blob(&sha256, body).await;
        metrics.observe(Stage::BlobPut, started.elapsed());
        let blob_key = blob_key?;
        let row = PackageRow {
            submitter_id: submitter.clone(),
            package_id: package.package_id,
            sha256,
            size_bytes: size,
            record_count: package.records.len() as i32,
            key_id: key_id.to_string(),
            signature,
            audience: package.audience.clone(),
            created_at: package.created_at,
            received_at,
            blob_key,
            receipt: receipt.clone(),
        };
        let started = Instant::now();
        let inserted = match self.store.ensure_partitions(&days).await {
            Ok(()) => self.store.insert(&row, &package.records).await,
            Err(e) => Err(e),
        };
        metrics.observe(Stage::DbWrite, started.elapsed());
        if inserted? {
            metrics.stored(package.records.len(), row.size_bytes as usize);
            metrics.submitter_lag(&submitter, received_at - package.created_at);
            tracing::info!(submitter = %submitter, package_id = %package.package_id, records = package.records.len(), "package stored");
            return Ok(SubmitPackageResponse {
                receipt,
                created: true,
            });
        }
        // A concurrent submission of the same package id won the race.
        match self.store.existing(&submitter, package.package_id).await? {
            Some(existing) => same_or_conflict(&existing.sha256, &sha256, existing.receipt),
            None => Err(err(
                ErrorCode::Unavailable,
                "the package row vanished; retry",
            )),
        }
    }
}

fn same_or_conflict(
    stored: &[u8],
    sent: &[u8; 32],
    receipt: String,
) -> Result<SubmitPackageResponse, RpcError> {
    if stored == sent.as_slice() {
        Ok(SubmitPackageResponse {
            receipt,
            created: false,
        })
    } else {
        Err(err(
            ErrorCode::Conflict,
            "a package with this package_id was already received with different bytes",
        ))
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Judges the key by its state at the receive time.
fn check_key_state(
    info: &rpc_contracts::registry::KeyInfo,
    at: OffsetDateTime,
) -> Result<(), RpcError> {
    if at < info.not_before {
        return Err(err(
            ErrorCode::KeyNotYetValid,
            format!(
                "key {} is valid from {}",
                info.key_id,
                rfc3339(info.not_before)
            ),
        ));
    }
    if let Some(end) = info.not_after
        && at >= end
    {
        return Err(err(
            ErrorCode::KeyExpired,
            format!("key {} expired at {}", info.key_id, rfc3339(end)),
        ));
    }
    if let Some(revoked) = info.revoked_at
        && at >= revoked
    {
        return Err(err(
            ErrorCode::KeyRevoked,
            format!("key {} was revoked at {}", info.key_id, rfc3339(revoked)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_contracts::SubmitterId;
    use rpc_contracts::registry::KeyInfo;
    use time::macros::datetime;

    fn key(not_after: Option<OffsetDateTime>, revoked_at: Option<OffsetDateTime>) -> KeyInfo {
        KeyInfo {
            key_id: KeyId::parse("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs").unwrap(),
            submitter_id: SubmitterId::parse("acme").unwrap(),
            public_key_pem: String::new(),
            not_before: datetime!(2026-01-01 00:00 UTC),
            not_after,
            revoked_at,
            created_at: datetime!(2026-01-01 00:00 UTC),
        }
    }

    #[test]
    fn a_key_is_judged_by_its_state_at_the_receive_time() {
        let t = datetime!(2026-03-01 00:00 UTC);
        let cases = [
            (key(None, None), t, None),
            (
                key(None, None),
                datetime!(2025-12-31 23:59 UTC),
                Some(ErrorCode::KeyNotYetValid),
            ),
            (key(Some(t), None), t, Some(ErrorCode::KeyExpired)),
            (key(None, Some(t)), t, Some(ErrorCode::KeyRevoked)),
            // Revoked later than the receive time: the package stays valid.
            (key(None, Some(datetime!(2026-03-02 00:00 UTC))), t, None),
        ];
        for (k, at, expected) in cases {
            assert_eq!(
                check_key_state(&k, at).err().map(|e| e.code),
                expected,
                "{k:?} at {at}"
            );
        }
    }

    #[test]
    fn same_bytes_return_the_stored_receipt_other_bytes_conflict() {
        let sha = [7u8; 32];
        let same = same_or_conflict(&sha, &sha, "r1".into()).unwrap();
        assert_eq!((same.receipt.as_str(), same.created), ("r1", false));
        let other = same_or_conflict(&[8u8; 32], &sha, "r1".into()).unwrap_err();
        assert_eq!(other.code, ErrorCode::Conflict);
    }
}
