//! The registry's calls: validation, defaults and the idempotency rules of
//! each contract, on top of [`Store`]. "Now" comes from the [`Clock`] the
//! handlers were built with.

use crate::clock::{Clock, to_stored_precision};
use crate::error::RegistryError;
use crate::store::{NewKey, Store};
use platform::rpc::{RpcServer, RpcServerBuilder};
use rpc_contracts::registry::{
    self, AddKeyRequest, AddSubmitterRequest, GetKeyRequest, KeyInfo, KeyList, ListKeysRequest,
    ListSubmittersRequest, PingRequest, PingResponse, RevokeKeyRequest, Submitter, SubmitterList,
};
use rpc_contracts::{Call, RpcError};
use std::future::Future;
use std::sync::Arc;
use tracing::instrument;

/// Longest display name of a submitter, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Largest public key PEM accepted, in bytes (a P-256 SPKI PEM is ~180).
pub const MAX_PEM_BYTES: usize = 4096;

type Result<T> = std::result::Result<T, RegistryError>;

/// The registry's state: its database and its clock.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Store,
    clock: Clock,
}

impl Registry {
    /// Handlers over `store`, reading the time from `clock`.
    pub fn new(store: Store, clock: Clock) -> Self {
        Self { store, clock }
    }

    /// Registers a submitter. The same registration again answers the
    /// stored submitter; another name for a known id is a conflict.
    #[instrument(skip_all, fields(submitter_id = %req.submitter_id))]
    pub async fn add_submitter(&self, req: AddSubmitterRequest) -> Result<Submitter> {
        if let Some(name) = &req.name {
            check_name(name)?;
        }
        let now = self.clock.now();
        if let Some(created) = self
            .store
            .insert_submitter(&req.submitter_id, req.name.as_deref(), now)
            .await?
        {
            tracing::info!(name = ?created.name, "submitter registered");
            return Ok(created);
        }
        let existing = self
            .store
            .submitter(&req.submitter_id)
            .await?
            .ok_or_else(|| RegistryError::Corrupt("submitter vanished after a conflict".into()))?;
        if existing.name == req.name {
            Ok(existing)
        } else {
            Err(RegistryError::SubmitterNameConflict {
                submitter_id: req.submitter_id,
                existing: existing.name,
                requested: req.name,
            })
        }
    }

    /// Every submitter, by id.
    #[instrument(skip_all)]
    pub async fn list_submitters(&self, _req: ListSubmittersRequest) -> Result<SubmitterList> {
        Ok(SubmitterList {
            submitters: self.store.submitters().await?,
        })
    }

    /// Adds a P-256 public key to a submitter and answers it with its key
    /// id. The same key again for the same submitter answers the stored key,
    /// unless the request names another validity explicitly (`conflict`);
    /// the key of another submitter is a conflict.
    #[instrument(skip_all, fields(submitter_id = %req.submitter_id, key_id))]
    pub async fn add_key(&self, req: AddKeyRequest) -> Result<KeyInfo> {
        let key = parse_public_key(&req.public_key_pem)?;
        let key_id = key.key_id();
        tracing::Span::current().record("key_id", key_id.as_str());
        let now = self.clock.now();
        let requested_not_before = req.not_before.map(to_stored_precision);
        let requested_not_after = req.not_after.map(to_stored_precision);
        let not_before = requested_not_before.unwrap_or(now);
        if let Some(not_after) = requested_not_after
            && not_after <= not_before
        {
            return Err(RegistryError::Invalid(
                "not_after must be later than not_before".into(),
            ));
        }
        if self.store.submitter(&req.submitter_id).await?.is_none() {
            return Err(RegistryError::UnknownSubmitter(req.submitter_id));
        }
        let pem = key.to_spki_pem();
        let inserted = self
            .store
            .insert_key(NewKey {
                key_id: &key_id,
                submitter_id: &req.submitter_id,
                public_key_pem: &pem,
                not_before,
                not_after: requested_not_after,
                created_at: now,
            })
            .await?;
        if let Some(created) = inserted {
            tracing::info!(not_before = %created.not_before, not_after = ?created.not_after, "key added");
            return Ok(created);
        }
        let existing = self
            .store
            .key(&key_id)
            .await?
            .ok_or_else(|| RegistryError::Corrupt("key vanished after a conflict".into()))?;
        if existing.submitter_id != req.submitter_id {
            return Err(RegistryError::KeyOwnedByAnother(key_id));
        }
        let other_validity = requested_not_before.is_some_and(|t| t != existing.not_before)
            || (requested_not_after.is_some() && requested_not_after != existing.not_after);
        if other_validity {
            return Err(RegistryError::KeyValidityConflict {
                key_id,
                not_before: existing.not_before,
                not_after: existing.not_after,
            });
        }
        Ok(existing)
    }

    /// A submitter's keys, oldest first.
    #[instrument(skip_all, fields(submitter_id = %req.submitter_id))]
    pub async fn list_keys(&self, req: ListKeysRequest) -> Result<KeyList> {
        if self.store.submitter(&req.submitter_id).await?.is_none() {
            return Err(RegistryError::UnknownSubmitter(req.submitter_id));
        }
        Ok(KeyList {
            keys: self.store.keys_of(&req.submitter_id).await?,
        })
    }

    /// Revokes a submitter's key from `at` (now by default). A key revoked
    /// already keeps the earlier of the two times, which is answered.
    #[instrument(skip_all, fields(submitter_id = %req.submitter_id, key_id = %req.key_id))]
    pub async fn revoke_key(&self, req: RevokeKeyRequest) -> Result<KeyInfo> {
        let at = req.at.map_or_else(|| self.clock.now(), to_stored_precision);
        match self
            .store
            .revoke_key(&req.submitter_id, &req.key_id, at)
            .await?
        {
            Some(key) => {
                tracing::info!(requested_at = %at, revoked_at = ?key.revoked_at, "key revoked");
                Ok(key)
            }
            None => Err(RegistryError::UnknownKey {
                key_id: req.key_id,
                submitter_id: Some(req.submitter_id),
            }),
        }
    }

    /// One key by id.
    #[instrument(skip_all, fields(key_id = %req.key_id))]
    pub async fn get_key(&self, req: GetKeyRequest) -> Result<KeyInfo> {
        self.store
            .key(&req.key_id)
            .await?
            .ok_or(RegistryError::UnknownKey {
                key_id: req.key_id,
                submitter_id: None,
            })
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(RegistryError::Invalid(
            "name must not be empty (omit it instead)".into(),
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(RegistryError::Invalid(format!(
            "name is longer than {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(RegistryError::Invalid(
            "name must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// Reads the request's PEM as a P-256 SPKI public key, with a message that
/// tells an operator what to send instead. The PEM itself is never echoed.
fn parse_public_key(pem: &str) -> Result<evidence::PublicKey> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(RegistryError::Invalid(format!(
            "public_key_pem is larger than {MAX_PEM_BYTES} bytes: expected one P-256 public key \
             (SPKI PEM, -----BEGIN PUBLIC KEY-----)"
        )));
    }
    if pem.contains("PRIVATE KEY-----") {
        return Err(RegistryError::Invalid(
            "public_key_pem holds a private key: send only the public key \
             (openssl ec -in key.pem -pubout), and keep the private key secret"
                .into(),
        ));
    }
    evidence::PublicKey::from_spki_pem(pem).map_err(|e| {
        RegistryError::Invalid(format!(
            "public_key_pem is not a P-256 public key in SPKI PEM \
             (-----BEGIN PUBLIC KEY-----, as `openssl ec -pubout` writes): {e}"
        ))
    })
}

/// The registry's RPC server: every `registry.v1` call, served by `registry`.
pub fn server(registry: Registry) -> RpcServer {
    let registry = Arc::new(registry);
    let builder = RpcServer::builder(registry::QUEUE).on::<registry::Ping, _, _>(
        |ctx, _req: PingRequest| async move {
            Ok(PingResponse {
                service: crate::SERVICE.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                instance: ctx.instance.to_string(),
            })
        },
    );
    let builder = serve::<registry::AddSubmitter, _, _>(builder, &registry, |r, req| async move {
        r.add_submitter(req).await
    });
    let builder =
        serve::<registry::ListSubmitters, _, _>(builder, &registry, |r, req| async move {
            r.list_submitters(req).await
        });
    let builder = serve::<registry::AddKey, _, _>(builder, &registry, |r, req| async move {
        r.add_key(req).await
    });
    let builder = serve::<registry::ListKeys, _, _>(builder, &registry, |r, req| async move {
        r.list_keys(req).await
    });
    let builder = serve::<registry::RevokeKey, _, _>(builder, &registry, |r, req| async move {
        r.revoke_key(req).await
    });
    let builder = serve::<registry::GetKey, _, _>(builder, &registry, |r, req| async move {
        r.get_key(req).await
    });
    builder.build()
}

/// Registers `handler` for `C`, mapping its [`RegistryError`] to the wire.
fn serve<C, F, Fut>(
    builder: RpcServerBuilder,
    registry: &Arc<Registry>,
    handler: F,
) -> RpcServerBuilder
where
    C: Call,
    F: Fn(Arc<Registry>, C::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<C::Response>> + Send + 'static,
{
    let registry = registry.clone();
    builder.on::<C, _, _>(move |_ctx, req| {
        let fut = handler(registry.clone(), req);
        async move { fut.await.map_err(RpcError::from) }
    })
}

#[cfg(test)]
mod tests {
    //! The rules of each call against a real, freshly migrated database,
    //! with the clock pinned and moved by the test.
    use super::*;
    use crate::store::MIGRATOR;
    use rpc_contracts::{ErrorCode, KeyId, SubmitterId};
    use std::sync::Mutex;
    use time::macros::datetime;
    use time::{Duration, OffsetDateTime};

    struct World {
        registry: Registry,
        now: Arc<Mutex<OffsetDateTime>>,
        db: String,
    }

    impl World {
        async fn new() -> Self {
            let (db, url) = platform::testing::test_database().await;
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            MIGRATOR.run(&pool).await.unwrap();
            let now = Arc::new(Mutex::new(datetime!(2026-03-01 09:00 UTC)));
            let clock_now = now.clone();
            let clock = Clock::from_fn(move || *clock_now.lock().unwrap());
            Self {
                registry: Registry::new(Store::new(pool), clock),
                now,
                db,
            }
        }

        fn advance(&self, by: Duration) -> OffsetDateTime {
            let mut now = self.now.lock().unwrap();
            *now += by;
            *now
        }

        async fn submitter(&self, id: &str) -> SubmitterId {
            let id = SubmitterId::parse(id).unwrap();
            self.registry
                .add_submitter(AddSubmitterRequest {
                    submitter_id: id.clone(),
                    name: None,
                })
                .await
                .unwrap();
            id
        }

        async fn add_key(&self, submitter: &SubmitterId, pem: &str) -> Result<KeyInfo> {
            self.registry
                .add_key(AddKeyRequest {
                    submitter_id: submitter.clone(),
                    public_key_pem: pem.to_owned(),
                    not_before: None,
                    not_after: None,
                })
                .await
        }

        async fn finish(self) {
            self.registry.store.close().await;
            platform::testing::drop_test_database(&self.db).await;
        }
    }

    fn code<T: std::fmt::Debug>(r: Result<T>) -> ErrorCode {
        RpcError::from(r.expect_err("an error")).code
    }

    fn new_pem() -> String {
        evidence::SigningKey::generate().public_key().to_spki_pem()
    }

    #[tokio::test]
    async fn submitters_are_idempotent_and_names_are_checked() {
        let w = World::new().await;
        let acme = SubmitterId::parse("acme").unwrap();
        let req = AddSubmitterRequest {
            submitter_id: acme.clone(),
            name: Some("Acme Betting".into()),
        };
        let first = w.registry.add_submitter(req.clone()).await.unwrap();
        assert_eq!(first.created_at, datetime!(2026-03-01 09:00 UTC));
        w.advance(Duration::hours(1));
        let again = w.registry.add_submitter(req.clone()).await.unwrap();
        assert_eq!(again, first, "a repeat answers the stored submitter");
        let renamed = AddSubmitterRequest {
            name: Some("Other".into()),
            ..req.clone()
        };
        assert_eq!(
            code(w.registry.add_submitter(renamed).await),
            ErrorCode::Conflict
        );
        let unnamed = AddSubmitterRequest { name: None, ..req };
        assert_eq!(
            code(w.registry.add_submitter(unnamed).await),
            ErrorCode::Conflict
        );
        for (name, why) in [
            ("", "empty"),
            ("   ", "blank"),
            ("a\u{0}b", "control character"),
            (&"x".repeat(MAX_NAME_CHARS + 1), "too long"),
        ] {
            let r = w
                .registry
                .add_submitter(AddSubmitterRequest {
                    submitter_id: SubmitterId::parse("other").unwrap(),
                    name: Some(name.to_owned()),
                })
                .await;
            assert_eq!(code(r), ErrorCode::BadRequest, "{why}");
        }
        let list = w
            .registry
            .list_submitters(ListSubmittersRequest {})
            .await
            .unwrap();
        assert_eq!(list.submitters, vec![first]);
        w.finish().await;
    }

    #[tokio::test]
    async fn a_key_defaults_to_valid_from_now_and_repeats_are_no_ops() {
        let w = World::new().await;
        let acme = w.submitter("acme").await;
        let signing = evidence::SigningKey::generate();
        // CRLF line endings and surrounding blank lines are accepted; the
        // stored PEM is the canonical one.
        let canonical = signing.public_key().to_spki_pem();
        let sloppy = format!("\r\n{}\r\n", canonical.replace('\n', "\r\n"));
        let key = w.add_key(&acme, &sloppy).await.unwrap();
        assert_eq!(key.key_id, signing.public_key().key_id());
        assert_eq!(key.public_key_pem, canonical);
        assert_eq!(key.not_before, datetime!(2026-03-01 09:00 UTC));
        assert_eq!(key.created_at, datetime!(2026-03-01 09:00 UTC));
        assert_eq!((key.not_after, key.revoked_at), (None, None));

        // Later, the same key again: the stored key, not a new validity.
        w.advance(Duration::days(1));
        assert_eq!(w.add_key(&acme, &canonical).await.unwrap(), key);
        // The same explicit validity is a no-op; another one is a conflict.
        let explicit = |not_before, not_after| AddKeyRequest {
            submitter_id: acme.clone(),
            public_key_pem: canonical.clone(),
            not_before,
            not_after,
        };
        let same = explicit(Some(datetime!(2026-03-01 11:00 +02:00)), None);
        assert_eq!(w.registry.add_key(same).await.unwrap(), key);
        let other = explicit(Some(datetime!(2026-01-01 00:00 UTC)), None);
        assert_eq!(code(w.registry.add_key(other).await), ErrorCode::Conflict);
        let other = explicit(None, Some(datetime!(2030-01-01 00:00 UTC)));
        assert_eq!(code(w.registry.add_key(other).await), ErrorCode::Conflict);

        // Validity must be a non-empty interval; times keep microseconds.
        let bad = AddKeyRequest {
            submitter_id: acme.clone(),
            public_key_pem: new_pem(),
            not_before: Some(datetime!(2026-05-01 00:00 UTC)),
            not_after: Some(datetime!(2026-05-01 00:00 UTC)),
        };
        assert_eq!(code(w.registry.add_key(bad).await), ErrorCode::BadRequest);
        let precise = w
            .registry
            .add_key(AddKeyRequest {
                submitter_id: acme.clone(),
                public_key_pem: new_pem(),
                not_before: Some(datetime!(2026-05-01 00:00:00.123456789 UTC)),
                not_after: Some(datetime!(2027-05-01 00:00 UTC)),
            })
            .await
            .unwrap();
        assert_eq!(
            precise.not_before,
            datetime!(2026-05-01 00:00:00.123456 UTC)
        );

        let list = w
            .registry
            .list_keys(ListKeysRequest {
                submitter_id: acme.clone(),
            })
            .await
            .unwrap();
        assert_eq!(list.keys, vec![key.clone(), precise]);
        w.finish().await;
    }

    #[tokio::test]
    async fn keys_are_refused_with_the_right_code() {
        let w = World::new().await;
        let acme = w.submitter("acme").await;
        let other = w.submitter("other").await;
        let pem = new_pem();
        w.add_key(&acme, &pem).await.unwrap();
        assert_eq!(code(w.add_key(&other, &pem).await), ErrorCode::Conflict);
        let ghost = SubmitterId::parse("ghost").unwrap();
        assert_eq!(
            code(w.add_key(&ghost, &new_pem()).await),
            ErrorCode::NotFound
        );
        let p384 = "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE\n-----END PUBLIC KEY-----\n";
        let private = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";
        for (bad, fragment) in [
            ("", "SPKI PEM"),
            ("not a key", "SPKI PEM"),
            (p384, "SPKI PEM"),
            (private, "private key"),
            (&"A".repeat(MAX_PEM_BYTES + 1), "larger than"),
        ] {
            let err = RpcError::from(w.add_key(&acme, bad).await.unwrap_err());
            assert_eq!(err.code, ErrorCode::BadRequest, "{bad:.40}");
            assert!(err.message.contains(fragment), "{err}");
        }
        assert_eq!(
            code(
                w.registry
                    .list_keys(ListKeysRequest {
                        submitter_id: ghost
                    })
                    .await
            ),
            ErrorCode::NotFound
        );
        w.finish().await;
    }

    #[tokio::test]
    async fn revocation_defaults_to_now_and_the_earliest_time_wins() {
        let w = World::new().await;
        let acme = w.submitter("acme").await;
        let other = w.submitter("other").await;
        let key = w.add_key(&acme, &new_pem()).await.unwrap();
        let revoke = |submitter: &SubmitterId, at| RevokeKeyRequest {
            submitter_id: submitter.clone(),
            key_id: key.key_id.clone(),
            at,
        };
        assert_eq!(
            code(w.registry.revoke_key(revoke(&other, None)).await),
            ErrorCode::NotFound,
            "another submitter's key is not found, not revoked"
        );
        let now = w.advance(Duration::days(10));
        let revoked = w.registry.revoke_key(revoke(&acme, None)).await.unwrap();
        assert_eq!(revoked.revoked_at, Some(now));
        // A later time does not move it; an earlier one does.
        let later = w
            .registry
            .revoke_key(revoke(&acme, Some(now + Duration::days(1))))
            .await
            .unwrap();
        assert_eq!(later.revoked_at, Some(now));
        let earlier = now - Duration::days(2);
        let moved = w
            .registry
            .revoke_key(revoke(&acme, Some(earlier)))
            .await
            .unwrap();
        assert_eq!(moved.revoked_at, Some(earlier));
        let got = w
            .registry
            .get_key(GetKeyRequest {
                key_id: key.key_id.clone(),
            })
            .await
            .unwrap();
        assert_eq!(got, moved);
        let unknown = KeyId::parse("A".repeat(43)).unwrap();
        assert_eq!(
            code(w.registry.get_key(GetKeyRequest { key_id: unknown }).await),
            ErrorCode::NotFound
        );
        w.finish().await;
    }
}
