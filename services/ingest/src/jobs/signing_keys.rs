//! Signing key rotation: the `rotate-keys` job (not built yet: it fails
//! with a clear error until it is).

use crate::jobs::{JobConfig, Report};
use platform::rpc::RpcClient;
use platform::vault::Vault;
use sqlx::PgConnection;
use time::OffsetDateTime;

/// Rotates the receipt and token signing keys.
pub async fn run(
    _conn: &mut PgConnection,
    _config: &JobConfig,
    _now: OffsetDateTime,
    _vault: &Vault,
    _rpc: &RpcClient,
) -> anyhow::Result<Report> {
    anyhow::bail!("key rotation is not built yet")
}
