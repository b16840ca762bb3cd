//! The auth service: back-office users and their roles, Argon2id logins,
//! day-long ES256 access tokens, revocation, login throttling and the
//! append-only audit trail, in PostgreSQL, served over RPC (`auth.v1`).
//!
//! [`AuthArgs`] are the flags (common ones, the database's, tokens,
//! throttling); [`Application`] does start-up (Vault, signing key,
//! database, migrations, the dummy hash, ops endpoint) and serves.
//! `handlers.rs` holds the calls' rules ([`Auth`]), `store.rs` the SQL,
//! `password.rs` Argon2id behind a semaphore, `tokens.rs` the JWT signer,
//! `keys.rs` the signing keys' reload and rotation,
//! `throttle.rs` the throttling policy, `metrics.rs` the service's metrics,
//! `error.rs` [`AuthError`] and its wire codes, and [`clock`] its "now".
//! See docs/auth.md.

pub mod clock;
mod error;
mod handlers;
pub mod keys;
pub mod metrics;
pub mod password;
mod store;
pub mod throttle;
pub mod tokens;

pub use clock::Clock;
pub use error::{AuthError, INVALID_CREDENTIALS};
pub use handlers::{Auth, account_key, address_key, check_username, server};
pub use store::{MIGRATOR, Store};

use anyhow::Context as _;
use metrics::AuthMetrics;
use password::Passwords;
use platform::config::CommonArgs;
use platform::db::DatabaseArgs;
use platform::rpc::RpcServer;
use platform::service::Service;
use rpc_contracts::auth::{DEFAULT_TOKEN_AUDIENCE, DEFAULT_TOKEN_ISSUER};
use std::sync::Arc;
use std::time::Duration;
use throttle::{ScopePolicy, ThrottlePolicy};

/// The service name (logs, metrics, Vault paths).
pub const SERVICE: &str = "auth";

/// Auth flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = SERVICE,
    version,
    about = "Tallyhouse auth: back-office users, logins, access tokens, throttling and the audit trail"
)]
pub struct AuthArgs {
    /// Flags shared by every service.
    #[command(flatten)]
    pub common: CommonArgs,

    /// The auth database (credentials come from Vault).
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Access tokens.
    #[command(flatten)]
    pub tokens: TokenArgs,

    /// Login throttling.
    #[command(flatten)]
    pub throttle: ThrottleArgs,

    /// Argon2id computations at once (each holds 19 MiB for tens of
    /// milliseconds); further logins wait for a slot until their deadline.
    #[arg(long, env = "TALLYHOUSE_AUTH_HASH_CONCURRENCY", default_value_t = 2)]
    pub hash_concurrency: usize,

    /// How often the token signing keys are read again from Vault, in
    /// seconds: a rotated key reaches every instance within this time
    /// (keep it well below the rotation's activation delay).
    #[arg(long, env = "TALLYHOUSE_SIGNING_KEY_RELOAD_SECS", default_value_t = 30)]
    pub signing_key_reload_secs: u64,

    /// How far the time a rotation step is asked to run as (the ingest
    /// job's clock) may be from this service's clock, in seconds; a step
    /// further off is refused, so that no caller can retire the token key
    /// early by sending a time in the future.
    #[arg(
        long,
        env = "TALLYHOUSE_ROTATION_MAX_CLOCK_SKEW_SECS",
        default_value_t = 300
    )]
    pub rotation_max_clock_skew_secs: u64,

    /// How often expired revocations and forgotten failures are deleted,
    /// in seconds.
    #[arg(
        long,
        env = "TALLYHOUSE_AUTH_CLEANUP_INTERVAL_SECS",
        default_value_t = 300
    )]
    pub cleanup_interval_secs: u64,
}

/// What goes into every access token besides the user's claims.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Tokens")]
pub struct TokenArgs {
    /// The `iss` of access tokens.
    #[arg(long, env = "TALLYHOUSE_AUTH_TOKEN_ISSUER", default_value = DEFAULT_TOKEN_ISSUER)]
    pub token_issuer: String,

    /// The `aud` of access tokens.
    #[arg(long, env = "TALLYHOUSE_AUTH_TOKEN_AUDIENCE", default_value = DEFAULT_TOKEN_AUDIENCE)]
    pub token_audience: String,
}

/// The throttling policy (see docs/auth.md). A threshold of 0 switches
/// that stage off.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Login throttling")]
pub struct ThrottleArgs {
    /// Failed logins of one account answered without delay; each further
    /// one makes the next attempt wait (1 s, 2 s, 4 s, …).
    #[arg(
        long,
        env = "TALLYHOUSE_AUTH_ACCOUNT_DELAY_AFTER_FAILURES",
        default_value_t = 3
    )]
    pub account_delay_after_failures: u32,

    /// The failed login of one account that locks it out.
    #[arg(
        long,
        env = "TALLYHOUSE_AUTH_ACCOUNT_LOCKOUT_AFTER_FAILURES",
        default_value_t = 10
    )]
    pub account_lockout_after_failures: u32,

    /// How long an account lockout lasts, in seconds.
    #[arg(
        long,
        env = "TALLYHOUSE_AUTH_ACCOUNT_LOCKOUT_SECS",
        default_value_t = 900
    )]
    pub account_lockout_secs: u64,

    /// An account's failures are forgotten this long after the last one, in seconds.
    #[arg(
        long,
        env = "TALLYHOUSE_AUTH_ACCOUNT_FAILURE_RESET_SECS",
        default_value_t = 43_200
    )]
    pub account_failure_reset_secs: u64,

    /// Failed logins from one client address answered without delay
    /// (higher than an account's: an office shares one address).
    #[arg(
        long,
        env = "TALLYHOUSE_AUTH_ADDRESS_DELAY_AFTER_FAILURES",
        default_value_t = 20
    )]
    pub address_delay_after_failures: u32,

    /// The failed login from one client address that locks it out.
    #[arg(
        long,
        env = "TALLYHOUSE_AUTH_ADDRESS_LOCKOUT_AFTER_FAILURES",
        default_value_t = 100
    )]
    pub address_lockout_after_failures: u32,

    /// How long an address lockout lasts, in seconds.
    #[arg(
        long,
        env = "TALLYHOUSE_AUTH_ADDRESS_LOCKOUT_SECS",
        default_value_t = 900
    )]
    pub address_lockout_secs: u64,

    /// An address's failures are forgotten this long after the last one, in seconds.
    #[arg(
        long,
        env = "TALLYHOUSE_AUTH_ADDRESS_FAILURE_RESET_SECS",
        default_value_t = 3_600
    )]
    pub address_failure_reset_secs: u64,

    /// The first delay, in milliseconds; each further failure doubles it.
    #[arg(long, env = "TALLYHOUSE_AUTH_DELAY_BASE_MS", default_value_t = 1_000)]
    pub delay_base_ms: u64,

    /// The longest delay, in milliseconds.
    #[arg(long, env = "TALLYHOUSE_AUTH_DELAY_MAX_MS", default_value_t = 60_000)]
    pub delay_max_ms: u64,
}

fn secs(s: u64) -> time::Duration {
    time::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1_000_000))
}

fn millis(ms: u64) -> time::Duration {
    time::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX / 1_000_000))
}

impl ThrottleArgs {
    /// The policy these flags describe, checked.
    pub fn policy(&self) -> anyhow::Result<ThrottlePolicy> {
        let policy = ThrottlePolicy {
            account: ScopePolicy {
                delay_after_failures: self.account_delay_after_failures,
                lockout_after_failures: self.account_lockout_after_failures,
                lockout: secs(self.account_lockout_secs),
                failure_reset: secs(self.account_failure_reset_secs),
            },
            address: ScopePolicy {
                delay_after_failures: self.address_delay_after_failures,
                lockout_after_failures: self.address_lockout_after_failures,
                lockout: secs(self.address_lockout_secs),
                failure_reset: secs(self.address_failure_reset_secs),
            },
            delay_base: millis(self.delay_base_ms),
            delay_max: millis(self.delay_max_ms),
        };
        policy
            .validate()
            .map_err(|e| anyhow::anyhow!("login throttling flags: {e}"))?;
        Ok(policy)
    }
}

/// A started auth service, its database migrated, ready to serve.
pub struct Application {
    svc: Service,
    auth: Arc<Auth>,
    server: RpcServer,
    cleanup_interval: Duration,
    key_reload: Duration,
    key_metrics: keys::KeyMetrics,
}

impl Application {
    /// Does all fallible set-up: Vault (the signing key never touches
    /// disk), database (waiting for it within the start-up bound),
    /// migrations, the dummy hash, ops endpoint.
    pub async fn build(args: AuthArgs, clock: Clock) -> anyhow::Result<Self> {
        let policy = args.throttle.policy()?;
        let mut svc = Service::bootstrap(SERVICE, args.common).await?;
        let mut tokens = keys::load(
            &svc.vault,
            &args.tokens.token_issuer,
            &args.tokens.token_audience,
        )
        .await?;
        tokens.rotation_max_skew =
            time::Duration::seconds(args.rotation_max_clock_skew_secs.min(i64::MAX as u64) as i64);
        let key_metrics = keys::KeyMetrics::register(&mut svc.registry);
        let pool = platform::db::connect_with_vault(SERVICE, &args.database, &svc.vault)
            .await
            .context("connecting to the auth database")?;
        MIGRATOR
            .run(&pool)
            .await
            .context("migrating the auth database")?;
        svc.ready
            .add_check("database", platform::ops::postgres_check(pool.clone()));
        platform::db_metrics::register_sqlx(&mut svc.registry, SERVICE, pool.clone());
        let metrics = AuthMetrics::register(&mut svc.registry);
        let passwords = Passwords::new(args.hash_concurrency, metrics.clone())
            .await
            .context("preparing the password hasher")?;
        tracing::info!(
            key_id = %tokens.key_id(clock.now()),
            issuer = tokens.issuer(),
            audience = tokens.audience(),
            hash_concurrency = args.hash_concurrency.max(1),
            "token signing key loaded"
        );
        let auth = Arc::new(Auth::new(
            Store::new(pool),
            clock,
            passwords,
            tokens,
            policy,
            metrics,
        ));
        let server = handlers::server(auth.clone()).gated(svc.vault.gate());
        svc.serve_ops().await?;
        Ok(Self {
            svc,
            auth,
            server,
            cleanup_interval: Duration::from_secs(args.cleanup_interval_secs.max(1)),
            key_reload: Duration::from_secs(args.signing_key_reload_secs.max(1)),
            key_metrics,
        })
    }

    /// Serves until SIGINT or SIGTERM, drains in-flight calls, closes the pool.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.svc.ready.set(true);
        keys::keep_fresh(
            self.auth.tokens(),
            self.key_reload,
            self.key_metrics.clone(),
            self.svc.stop.clone(),
        );
        let cleanup = tokio::spawn(cleanup_loop(
            self.auth.clone(),
            self.cleanup_interval,
            self.svc.stop.clone(),
        ));
        self.server
            .run(
                self.svc.rpc.clone(),
                self.svc.rpc_metrics.clone(),
                self.svc.stop.clone(),
            )
            .await;
        self.svc.stop.cancel();
        let _ = cleanup.await;
        self.auth.store().close().await;
        Ok(())
    }
}

/// Deletes stale throttle rows and expired revocations every `interval`
/// until `stop`.
async fn cleanup_loop(
    auth: Arc<Auth>,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match auth.forget_stale().await {
            Ok((0, 0)) => {}
            Ok((throttles, revocations)) => {
                tracing::info!(
                    throttles,
                    revocations,
                    "forgot stale throttles and expired revocations"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cleanup of stale auth rows failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn defaults_are_the_documented_policy() {
        let args = AuthArgs::try_parse_from([
            "auth",
            "--amqp-uris",
            "amqp://a:1/%2f",
            "--vault-token",
            "t",
            "--database-name",
            "tallyhouse_auth",
        ])
        .unwrap();
        assert_eq!(args.hash_concurrency, 2);
        assert_eq!(args.tokens.token_issuer, "tallyhouse-auth");
        assert_eq!(args.tokens.token_audience, "tallyhouse-back-office");
        let policy = args.throttle.policy().unwrap();
        assert_eq!(policy.account.delay_after_failures, 3);
        assert_eq!(policy.account.lockout_after_failures, 10);
        assert_eq!(policy.account.lockout, time::Duration::minutes(15));
        assert_eq!(policy.address.lockout_after_failures, 100);
        assert_eq!(policy.delay_base, time::Duration::seconds(1));
    }

    #[test]
    fn an_inconsistent_policy_is_refused_at_start_up() {
        let args = AuthArgs::try_parse_from([
            "auth",
            "--amqp-uris",
            "amqp://a:1/%2f",
            "--vault-token",
            "t",
            "--database-name",
            "tallyhouse_auth",
            "--account-lockout-after-failures",
            "2",
        ])
        .unwrap();
        assert!(args.throttle.policy().is_err());
    }
}
