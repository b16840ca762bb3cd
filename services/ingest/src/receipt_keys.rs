//! The receipt signing keys over time (docs/lifecycle.md, "Key rotation"):
//! read from the `receipt_key` secret at start-up and read again every few
//! seconds, so that every instance signs with the same key at the same time
//! (a published next key from its `next_active_at`, by its own clock) and
//! answers ReceiptKeys with the same keys. The `rotate-keys` job writes the
//! secret (`jobs/signing_keys.rs`); receipt keys are never retired, since
//! receipts never expire.

use anyhow::Context as _;
use evidence::ReceiptSigner;
use evidence::rotation::{KeyRing, KeySecret, KeySet};
use platform::vault::Vault;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// The Vault secret holding the receipt signing keys.
pub const RECEIPT_KEY: &str = "receipt_key";

/// The receipt keys in use, replaced whole on reload.
pub type ReceiptKeys = Arc<KeyRing<ReceiptSigner>>;

fn key_set(secret: &KeySecret) -> Result<KeySet<ReceiptSigner>, String> {
    KeySet::from_secret(secret, ReceiptSigner::from_signing_key).map_err(|e| e.to_string())
}

/// Reads `receipt_key` from Vault (start-up: retried while Vault is away,
/// within the start-up bound).
pub async fn load(vault: &Vault) -> anyhow::Result<ReceiptKeys> {
    let secret: KeySecret = vault
        .read(RECEIPT_KEY)
        .await
        .context("reading the receipt key")?;
    let set = key_set(&secret)
        .map_err(anyhow::Error::msg)
        .context("parsing the receipt keys (receipt_key)")?;
    Ok(Arc::new(KeyRing::new(set)))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct KeyLabel {
    key: &'static str,
}

/// Reads `receipt_key` again every `every` until `stop` and swaps the keys
/// when they changed; a secret that cannot be read or parsed keeps the keys
/// held (logged, counted in `tallyhouse_vault_secret_reloads_total`).
/// Exports `tallyhouse_signing_key_active_since_timestamp_seconds{key =
/// "receipt"}`: since when the key in use has signed (a key of unknown age
/// counts from when this process first loaded it).
pub fn keep_fresh(
    keys: &ReceiptKeys,
    vault: &Vault,
    every: Duration,
    registry: &mut Registry,
    stop: CancellationToken,
) {
    let gauge: Family<KeyLabel, Gauge> = Family::default();
    registry.register(
        "tallyhouse_signing_key_active_since_timestamp_seconds",
        "Since when the signing key in use has signed (Unix seconds), by key (jwt, receipt)",
        gauge.clone(),
    );
    let first_loaded = platform::clock::now();
    let observe = move |keys: &ReceiptKeys, now: OffsetDateTime| {
        let since = keys.current().signing_since(now).unwrap_or(first_loaded);
        gauge
            .get_or_create(&KeyLabel { key: "receipt" })
            .set(since.unix_timestamp());
    };
    observe(keys, first_loaded);
    let held = keys.clone();
    vault.keep_reading(
        RECEIPT_KEY,
        every,
        move |secret: KeySecret| {
            let changed = held.replace(key_set(&secret)?);
            let now = platform::clock::now();
            if changed {
                let current = held.current();
                tracing::info!(
                    signing = %current.signing_key_id(now),
                    published = ?current.published(now).map(|k| k.key_id().to_string()).collect::<Vec<_>>(),
                    "receipt keys changed in Vault: now in use"
                );
            }
            observe(&held, now);
            Ok(())
        },
        stop,
    );
}
