//! The `cleanup` job: removes what the platform keeps only for a while, and
//! nothing else.
//!
//! 1. Auth's login-throttle state past its reset time and revocations of
//!    tokens that have expired anyway (auth.v1.purge_stale: auth owns them).
//! 2. Run records finished more than `history_days` ago, and seal checks as
//!    old except each partition's latest (what the metrics read).
//! 3. Package blobs past their retention (`blob_retention_days` after the
//!    package was received, never less than the records retention): each is
//!    first recorded in `blob_expiries`, then deleted; the package row stays
//!    (the catalogue), and reading its raw bytes answers `evidence_expired`.
//! 4. Orphan blobs: objects under `sha256/` older than `orphan_grace_hours`
//!    that no package row references (an upload whose row was never
//!    committed, e.g. the package was refused or the database failed after
//!    the upload and the client did not resend), and objects whose expiry is
//!    recorded (a crash between steps of 3). Each is checked again, object
//!    and rows, just before its delete.
//!
//! Never an audit entry (auth's purge touches none), never a package row,
//! never a blob a package inside its blob retention references.

use crate::jobs::{JobConfig, Report};
use anyhow::Context as _;
use platform::rpc::RpcClient;
use platform::s3::EvidenceStore;
use rpc_contracts::auth::{self, PurgeStaleRequest};
use serde_json::json;
use sqlx::PgConnection;
use time::{Duration, OffsetDateTime};

/// Packages whose blobs one batch of step 3 expires.
const EXPIRY_BATCH: i64 = 500;
/// Most blobs one run expires (the next run goes on).
const EXPIRY_MAX_PER_RUN: usize = 100_000;
/// The evidence bucket's blob prefix (see `platform::s3::blob_key`).
const BLOB_PREFIX: &str = "sha256/";

fn s3_error<E: std::error::Error + 'static>(
    what: &str,
    e: aws_sdk_s3::error::SdkError<E>,
) -> anyhow::Error
where
    aws_sdk_s3::error::SdkError<E>: std::error::Error,
{
    anyhow::anyhow!("{what}: {}", aws_sdk_s3::error::DisplayErrorContext(e))
}

/// The SHA-256 a blob key names, if it is one of ours.
fn sha_of_key(key: &str) -> Option<[u8; 32]> {
    let hex_part = key.strip_prefix(BLOB_PREFIX)?.rsplit('/').next()?;
    let mut sha = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut sha).ok()?;
    (platform::s3::blob_key(hex_part) == key).then_some(sha)
}

/// Runs the cleanup as of `now`.
pub async fn run(
    conn: &mut PgConnection,
    config: &JobConfig,
    now: OffsetDateTime,
    run_id: i64,
    evidence: &EvidenceStore,
    rpc: &RpcClient,
) -> anyhow::Result<Report> {
    // 1. Auth's stale state.
    let purged = rpc
        .call::<auth::PurgeStale>(&PurgeStaleRequest {})
        .await
        .map_err(|e| anyhow::anyhow!("asking auth to forget stale state: {e}"))?;

    // 2. History.
    let history_cutoff = now - Duration::days(i64::from(config.history_days));
    let runs = sqlx::query("DELETE FROM job_runs WHERE finished_at < $1")
        .bind(history_cutoff)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let checks = sqlx::query(
        "DELETE FROM seal_checks c WHERE c.checked_at < $1
           AND c.check_id <> (SELECT max(l.check_id) FROM seal_checks l
                              WHERE l.partition_name = c.partition_name)",
    )
    .bind(history_cutoff)
    .execute(&mut *conn)
    .await?
    .rows_affected();

    // 3. Blobs past their retention.
    let blob_cutoff = now - Duration::days(i64::from(config.blob_retention_days));
    let mut expired = 0usize;
    // Keyset over the hashes: a batch starts after the last hash the
    // previous one looked at, so hashes kept (below) are not looked at again.
    let mut after: Vec<u8> = Vec::new();
    loop {
        let candidates: Vec<(Vec<u8>, String)> = sqlx::query_as(
            "SELECT p.sha256, min(p.blob_key) FROM packages p
             WHERE p.received_at < $1 AND p.sha256 > $3
               AND NOT EXISTS (SELECT 1 FROM blob_expiries e WHERE e.sha256 = p.sha256)
             GROUP BY p.sha256
             ORDER BY p.sha256
             LIMIT $2",
        )
        .bind(blob_cutoff)
        .bind(EXPIRY_BATCH)
        .bind(&after)
        .fetch_all(&mut *conn)
        .await?;
        let Some((last, _)) = candidates.last() else {
            break;
        };
        after = last.clone();
        // Content addressing: the same bytes may back several packages; the
        // blob goes only when every one of them is past retention. A
        // statement of its own: Citus cannot correlate a subquery on
        // `packages` by a column other than its distribution column.
        let shas: Vec<&[u8]> = candidates.iter().map(|(s, _)| s.as_slice()).collect();
        let newer: std::collections::HashSet<Vec<u8>> = sqlx::query_scalar(
            "SELECT DISTINCT sha256 FROM packages WHERE sha256 = ANY($1) AND received_at >= $2",
        )
        .bind(&shas)
        .bind(blob_cutoff)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        let due: Vec<&(Vec<u8>, String)> = candidates
            .iter()
            .filter(|(sha, _)| !newer.contains(sha))
            .collect();
        for &(sha, key) in &due {
            // Recorded first: a crash before the delete leaves an object
            // whose expiry is recorded, which step 4 removes.
            sqlx::query(
                "INSERT INTO blob_expiries (sha256, blob_key, deleted_at, run_id)
                 VALUES ($1, $2, clock_timestamp(), $3) ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(sha)
            .bind(key)
            .bind(run_id)
            .execute(&mut *conn)
            .await?;
            evidence
                .client()
                .delete_object()
                .bucket(evidence.bucket())
                .key(key)
                .send()
                .await
                .map_err(|e| s3_error(&format!("deleting {key}"), e))?;
        }
        expired += due.len();
        if !due.is_empty() {
            tracing::info!(
                blobs = due.len(),
                "deleted package blobs past their retention"
            );
        }
        if expired >= EXPIRY_MAX_PER_RUN {
            break;
        }
    }

    // 4. Orphans.
    let grace_cutoff = now - Duration::hours(i64::from(config.orphan_grace_hours));
    let mut scanned = 0u64;
    let mut orphans = Vec::new();
    let mut skipped = 0u64;
    let mut pages = evidence
        .client()
        .list_objects_v2()
        .bucket(evidence.bucket())
        .prefix(BLOB_PREFIX)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| s3_error("listing the evidence bucket", e))?;
        let mut candidates = Vec::new();
        for object in page.contents() {
            scanned += 1;
            let Some(key) = object.key() else { continue };
            let Some(sha) = sha_of_key(key) else {
                tracing::warn!(
                    key,
                    "an object under sha256/ not named like a blob: left alone"
                );
                skipped += 1;
                continue;
            };
            if object
                .last_modified()
                .is_some_and(|t| t.secs() <= grace_cutoff.unix_timestamp())
            {
                candidates.push((key.to_owned(), sha));
            }
        }
        if candidates.is_empty() {
            continue;
        }
        let shas: Vec<Vec<u8>> = candidates.iter().map(|(_, s)| s.to_vec()).collect();
        let keep: std::collections::HashSet<Vec<u8>> = sqlx::query_scalar(
            "SELECT p.sha256 FROM packages p WHERE p.sha256 = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM blob_expiries e WHERE e.sha256 = p.sha256)",
        )
        .bind(&shas)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        for (key, sha) in candidates {
            if keep.contains(sha.as_slice()) {
                continue;
            }
            if delete_orphan(conn, evidence, &key, &sha, grace_cutoff).await? {
                orphans.push(json!(key));
            }
        }
    }
    tracing::info!(
        throttles = purged.throttles,
        revocations = purged.revocations,
        runs,
        checks,
        expired,
        orphans = orphans.len(),
        scanned,
        "cleanup done"
    );
    Ok(Report::new(
        (purged.throttles + purged.revocations + runs + checks) as i64
            + expired as i64
            + orphans.len() as i64,
        json!({
            "auth": { "throttles": purged.throttles, "revocations": purged.revocations },
            "job_runs": runs,
            "seal_checks": checks,
            "blobs_expired": expired,
            "orphans_deleted": orphans,
            "objects_scanned": scanned,
            "objects_not_blobs": skipped,
            "blob_cutoff": blob_cutoff.unix_timestamp(),
            "orphan_cutoff": grace_cutoff.unix_timestamp(),
        }),
    ))
}

/// Deletes one orphan after checking again, as late as possible, that it
/// is still old (a resend writes it anew) and that no live package row
/// references it.
async fn delete_orphan(
    conn: &mut PgConnection,
    evidence: &EvidenceStore,
    key: &str,
    sha: &[u8; 32],
    grace_cutoff: OffsetDateTime,
) -> anyhow::Result<bool> {
    let head = evidence
        .client()
        .head_object()
        .bucket(evidence.bucket())
        .key(key)
        .send()
        .await;
    let still_old = match head {
        Ok(h) => h
            .last_modified()
            .is_some_and(|t| t.secs() <= grace_cutoff.unix_timestamp()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => return Ok(false),
        Err(e) => return Err(s3_error(&format!("checking {key}"), e)),
    };
    let referenced: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM packages p WHERE p.sha256 = $1)
            AND NOT EXISTS (SELECT 1 FROM blob_expiries e WHERE e.sha256 = $1)",
    )
    .bind(sha.as_slice())
    .fetch_one(&mut *conn)
    .await
    .context("checking an orphan's rows")?;
    if !still_old || referenced {
        return Ok(false);
    }
    evidence
        .client()
        .delete_object()
        .bucket(evidence.bucket())
        .key(key)
        .send()
        .await
        .map_err(|e| s3_error(&format!("deleting {key}"), e))?;
    tracing::info!(key, "deleted an orphan blob");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_blob_keys_name_a_hash() {
        let hex = "ab".repeat(32);
        let key = platform::s3::blob_key(&hex);
        assert_eq!(sha_of_key(&key), Some([0xab; 32]));
        assert_eq!(sha_of_key(&format!("sha256/cd/{hex}")), None);
        assert_eq!(sha_of_key("sha256/ab/xyz"), None);
        assert_eq!(sha_of_key("records/x"), None);
    }
}
