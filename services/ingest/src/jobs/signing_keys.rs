//! `rotate-keys`: one step of the receipt and access-token signing keys'
//! rotation (docs/lifecycle.md, "Key rotation"; the transitions are
//! `evidence::rotation::step`). Each service rotates only its own key, with
//! its own Vault policy: this job rotates `receipt_key` (ingest's) itself,
//! then asks auth to rotate `jwt_key` (RotateSigningKey). Each write is a
//! check-and-set on the version read, so two steps cannot interleave even
//! outside the job's advisory lock; a step redone after a crash finds the
//! work done and changes nothing. Instances pick the new state up within
//! their reload interval (`receipt_keys.rs`, auth's `keys.rs`).
//!
//! The job always respects the schedule (`key_rotation_days`): RunJob has
//! no way to force a rotation. A step as of another time (tests) calls
//! RotateSigningKey, or `evidence::rotation::step` on the secret, directly.

use crate::jobs::{JobConfig, Report};
use crate::receipt_keys::RECEIPT_KEY;
use evidence::SigningKey;
use evidence::rotation::{self, KeySecret, RotationPolicy};
use platform::rpc::{CallOptions, RpcClient};
use platform::vault::Vault;
use rpc_contracts::auth::{self, RotateSigningKeyRequest};
use serde_json::{Value, json};
use sqlx::PgConnection;
use std::time::Duration;
use time::OffsetDateTime;

/// What one key's step did: its summary and how many changes.
struct KeyStep {
    summary: Value,
    changes: u32,
}

/// The receipt keys' policy: rotated after `key_rotation_days`, published
/// `key_activation_delay_secs` before they sign, never retired.
pub fn receipt_policy(config: &JobConfig) -> RotationPolicy {
    RotationPolicy {
        rotate_after: time::Duration::days(i64::from(config.key_rotation_days.max(1))),
        activation_delay: time::Duration::seconds(
            i64::try_from(config.key_activation_delay_secs).unwrap_or(i64::MAX / 1_000_000),
        ),
        keep_replaced_for: None,
        force: false,
    }
}

/// One step of `receipt_key` as of `now`, written with check-and-set.
async fn rotate_receipt_key(
    vault: &Vault,
    config: &JobConfig,
    now: OffsetDateTime,
) -> anyhow::Result<KeyStep> {
    let (secret, version) = vault.read_versioned::<KeySecret>(RECEIPT_KEY).await?;
    let step = rotation::step(&secret, now, &receipt_policy(config), SigningKey::generate)
        .map_err(|e| anyhow::anyhow!("receipt_key cannot be rotated: {e}"))?;
    let changes = serde_json::to_value(&step.changes)?;
    let mut written = None;
    if !step.changes.is_empty() {
        let version = vault.write_cas(RECEIPT_KEY, &step.secret, version).await?;
        for change in &step.changes {
            tracing::info!(key = RECEIPT_KEY, change = ?change, version, "receipt key rotation step");
        }
        written = Some(version);
    }
    Ok(KeyStep {
        summary: json!({
            "key": RECEIPT_KEY,
            "active": step.secret.active_key_id().map_err(|e| anyhow::anyhow!("{e}"))?,
            "next_active_at": step
                .secret
                .next_active_at
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
            "previous": step.secret.previous_keys.len(),
            "changes": changes,
            "version": written,
        }),
        changes: u32::try_from(step.changes.len()).unwrap_or(u32::MAX),
    })
}

/// One step of auth's `jwt_key` as of `now` (auth writes it).
async fn rotate_jwt_key(
    rpc: &RpcClient,
    config: &JobConfig,
    now: OffsetDateTime,
) -> anyhow::Result<KeyStep> {
    let answer = rpc
        .call_with::<auth::RotateSigningKey>(
            &RotateSigningKeyRequest {
                now,
                rotate_after_days: config.key_rotation_days.max(1),
                activation_delay_secs: config.key_activation_delay_secs,
                force: false,
            },
            CallOptions::timeout(Duration::from_secs(30)),
        )
        .await
        .map_err(|e| anyhow::anyhow!("auth's RotateSigningKey: {e}"))?;
    Ok(KeyStep {
        summary: answer.summary,
        changes: answer.changes,
    })
}

/// Rotates the receipt and token signing keys one step as of `now`: both
/// are tried; the run fails if either failed (the other's result is in the
/// summary).
pub async fn run(
    _conn: &mut PgConnection,
    config: &JobConfig,
    now: OffsetDateTime,
    vault: &Vault,
    rpc: &RpcClient,
) -> anyhow::Result<Report> {
    let receipt = rotate_receipt_key(vault, config, now).await;
    let jwt = rotate_jwt_key(rpc, config, now).await;
    let mut items = 0;
    let mut failed = Vec::new();
    let mut part = |name: &str, result: anyhow::Result<KeyStep>| match result {
        Ok(step) => {
            items += i64::from(step.changes);
            step.summary
        }
        Err(e) => {
            let error = format!("{name}: {e:#}");
            failed.push(error.clone());
            json!({ "error": error })
        }
    };
    let summary = json!({
        "receipt": part("receipt_key", receipt),
        "jwt": part("jwt_key", jwt),
        "rotate_after_days": config.key_rotation_days,
        "activation_delay_secs": config.key_activation_delay_secs,
    });
    Ok(Report {
        items,
        summary,
        failed: (!failed.is_empty()).then(|| failed.join("; ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_keys_follow_the_schedule_and_are_never_retired() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            options: crate::jobs::JobOptions,
        }
        let config = Cli::try_parse_from(["serve"]).unwrap().options.config(400);
        let policy = receipt_policy(&config);
        assert_eq!(policy.rotate_after, time::Duration::days(90));
        assert_eq!(policy.activation_delay, time::Duration::minutes(10));
        assert_eq!(policy.keep_replaced_for, None);
        assert!(!policy.force);
    }
}
