//! The token signing keys over time (docs/lifecycle.md, "Key rotation"):
//! read from the `jwt_key` secret at start-up, read again every few seconds
//! so that every instance signs with the same key at the same time and
//! publishes the same JWKS, and rotated one step at a time by
//! [`rotate`] (the `RotateSigningKey` call of the ingest `rotate-keys`
//! job), which only auth can do: its Vault policy alone may write
//! `jwt_key`.

use crate::error::AuthError;
use crate::handlers::Auth;
use crate::tokens::TokenSigner;
use anyhow::Context as _;
use evidence::SigningKey;
use evidence::rotation::{self, KeySecret, RotationPolicy};
use platform::vault::{Vault, VaultError};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rpc_contracts::auth::{
    AuditRecord, MAX_LEEWAY_SECS, RotateSigningKeyRequest, RotateSigningKeyResponse,
    TOKEN_LIFETIME_SECS,
};
use serde_json::json;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// The Vault secret holding the token signing keys.
pub const JWT_KEY: &str = "jwt_key";

/// Longest activation delay a rotation step accepts, in seconds (a day).
pub const MAX_ACTIVATION_DELAY_SECS: u64 = 86_400;

/// How long a replaced token key stays published: every token it signed
/// has expired by then, leeway included.
pub fn keep_replaced_for() -> time::Duration {
    time::Duration::seconds((TOKEN_LIFETIME_SECS + MAX_LEEWAY_SECS) as i64)
}

/// `tallyhouse_signing_key_active_since_timestamp_seconds{key}`: since
/// when the key that signs now has signed (Unix seconds), so that an alert
/// fires when rotation stops. A key of unknown age counts from when this
/// process first loaded it.
#[derive(Clone, Debug, Default)]
pub struct KeyMetrics {
    active_since: Family<KeyLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct KeyLabel {
    key: &'static str,
}

impl KeyMetrics {
    /// Registers the gauge in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "tallyhouse_signing_key_active_since_timestamp_seconds",
            "Since when the signing key in use has signed (Unix seconds), by key (jwt, receipt)",
            metrics.active_since.clone(),
        );
        metrics
    }

    /// Records the key in use of `signer` at `now`.
    fn observe(&self, signer: &TokenSigner, now: OffsetDateTime, first_loaded: OffsetDateTime) {
        let since = signer.keys().signing_since(now).unwrap_or(first_loaded);
        self.active_since
            .get_or_create(&KeyLabel { key: "jwt" })
            .set(since.unix_timestamp());
    }
}

/// Reads `jwt_key` from Vault and makes the signer (start-up: retried
/// while Vault is away, within the start-up bound).
pub async fn load(vault: &Vault, issuer: &str, audience: &str) -> anyhow::Result<TokenSigner> {
    let secret: KeySecret = vault
        .read(JWT_KEY)
        .await
        .context("reading the token signing key (jwt_key)")?;
    let mut signer = TokenSigner::from_secret(&secret, issuer, audience)
        .context("parsing the token signing keys (jwt_key)")?;
    signer.vault = Some(vault.clone());
    Ok(signer)
}

/// Reads `jwt_key` again every `every` until `stop` and swaps the keys
/// when they changed; a secret that cannot be read or parsed keeps the keys
/// held (logged, counted in `tallyhouse_vault_secret_reloads_total`).
/// Keeps [`KeyMetrics`] up to date.
pub fn keep_fresh(
    signer: &TokenSigner,
    every: Duration,
    metrics: KeyMetrics,
    stop: CancellationToken,
) {
    let first_loaded = platform::clock::now();
    metrics.observe(signer, first_loaded, first_loaded);
    let Some(vault) = signer.vault.clone() else {
        return;
    };
    let held = signer.clone();
    vault.keep_reading(
        JWT_KEY,
        every,
        move |secret: KeySecret| {
            let changed = held.reload(&secret).map_err(|e| e.to_string())?;
            let now = platform::clock::now();
            if changed {
                let keys = held.keys();
                tracing::info!(
                    signing = %keys.signing_key_id(now),
                    published = ?keys.published(now).map(|k| k.key_id().to_string()).collect::<Vec<_>>(),
                    "token signing keys changed in Vault: now in use"
                );
            }
            metrics.observe(&held, now, first_loaded);
            Ok(())
        },
        stop,
    );
}

fn vault_error(e: VaultError) -> AuthError {
    match e {
        VaultError::Conflict { .. } => {
            tracing::warn!(error = %e, "jwt_key changed during the rotation step");
            AuthError::Busy("the token signing key changed during the rotation step")
        }
        VaultError::Unreachable { .. } => {
            tracing::warn!(error = %e, "Vault unreachable during the rotation step");
            AuthError::Busy("Vault is unreachable")
        }
        other => AuthError::Internal(format!("rotating jwt_key: {other}")),
    }
}

/// One rotation step of the token signing key as of `req.now` (see
/// [`rotation::step`]): reads `jwt_key` with its version, writes the result
/// with check-and-set on that version (two steps cannot interleave: the
/// second fails with `unavailable` and is retried), applies it on this
/// instance at once (the others within their reload interval), and
/// records an audit entry when something changed.
pub async fn rotate(
    auth: &Auth,
    req: RotateSigningKeyRequest,
) -> Result<RotateSigningKeyResponse, AuthError> {
    if req.rotate_after_days == 0 {
        return Err(AuthError::Invalid(
            "rotate_after_days must be at least 1".into(),
        ));
    }
    if req.activation_delay_secs > MAX_ACTIVATION_DELAY_SECS {
        return Err(AuthError::Invalid(format!(
            "activation_delay_secs must be at most {MAX_ACTIVATION_DELAY_SECS}"
        )));
    }
    let signer = auth.tokens();
    let skew = (req.now - auth.now()).abs();
    if skew > signer.rotation_max_skew {
        return Err(AuthError::Invalid(format!(
            "now: {} is {} s from this service's clock (at most {} s)",
            req.now,
            skew.whole_seconds(),
            signer.rotation_max_skew.whole_seconds()
        )));
    }
    let Some(vault) = &signer.vault else {
        return Err(AuthError::Internal(
            "the token keys were not read from Vault: nothing to rotate".into(),
        ));
    };
    let policy = RotationPolicy {
        rotate_after: time::Duration::days(i64::from(req.rotate_after_days)),
        activation_delay: time::Duration::seconds(req.activation_delay_secs as i64),
        keep_replaced_for: Some(keep_replaced_for()),
        force: req.force,
    };
    let (secret, version) = vault
        .read_versioned::<KeySecret>(JWT_KEY)
        .await
        .map_err(vault_error)?;
    let step = rotation::step(&secret, req.now, &policy, SigningKey::generate)
        .map_err(|e| AuthError::Internal(format!("jwt_key cannot be rotated: {e}")))?;
    let active = step
        .secret
        .active_key_id()
        .map_err(|e| AuthError::Internal(e.to_string()))?;
    let changes = serde_json::to_value(&step.changes).unwrap_or_default();
    if !step.changes.is_empty() {
        let written = vault
            .write_cas(JWT_KEY, &step.secret, version)
            .await
            .map_err(vault_error)?;
        for change in &step.changes {
            tracing::info!(key = JWT_KEY, change = ?change, version = written, "token signing key rotation step");
        }
        if let Err(e) = signer.reload(&step.secret) {
            // Written but not applied here: the reload loop retries.
            tracing::error!(error = %e, "cannot apply the rotated token keys");
        }
        let audit = AuditRecord {
            actor: None,
            action: "key.rotate".into(),
            endpoint: None,
            outcome: "success".into(),
            status: None,
            submitter_id: None,
            range_from: None,
            range_to: None,
            rows: None,
            bytes: None,
            target: Some(JWT_KEY.into()),
            client_addr: None,
            trace_id: None,
            detail: Some(json!({"changes": changes, "version": written})),
        };
        if let Err(e) = auth.append_audit(audit).await {
            tracing::error!(error = %e, "cannot record the key rotation in the audit trail");
        }
    }
    let summary = json!({
        "key": JWT_KEY,
        "active": active,
        "next_active_at": step
            .secret
            .next_active_at
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
        "previous": step.secret.previous_keys.len(),
        "changes": changes,
    });
    Ok(RotateSigningKeyResponse {
        summary,
        changes: u32::try_from(step.changes.len()).unwrap_or(u32::MAX),
    })
}
