//! `tallyhouse canary`: the end-to-end canary. Every `--interval` (or once,
//! with `--once`) it acts as a dedicated canary submitter and a canary
//! back-office user through the public gateway only, the way a customer and
//! an analyst would: it signs and submits a fresh package, verifies the
//! receipt against the platform's published keys, logs in, finds the
//! package in the list, downloads its original bytes (same SHA-256, its own
//! key id, a signature that verifies), reads its record back from the
//! series and logs out (`round.rs`). Success, the failing step and each
//! step's latency are metrics on `--metrics-addr` (`metrics.rs`), and
//! `grafana/alerts/tallyhouse.rules.yaml` alerts when rounds fail.
//!
//! Its credentials come from Vault only, read anew every round: the KV
//! secret `<prefix>/canary/canary` (`submitter_id`, `private_key_pem`,
//! `username`, `password`; the key id is derived from the key), which
//! `deployment/vault-provision.sh` generates and registers locally. It logs
//! in to Vault with AppRole (`TALLYHOUSE_VAULT_ROLE_ID`,
//! `TALLYHOUSE_VAULT_SECRET_ID`), a token (`VAULT_TOKEN`, Nomad's workload
//! identity) or the token file of a local run (`.run/state/tokens/canary`).
//! Nothing secret (key, password, access token, signature) is logged.

mod metrics;
mod round;

use crate::commands::Context;
use crate::connection::ConnectionArgs;
use crate::error::CliError;
use crate::gateway::{Gateway, GatewayArgs};
use crate::output::table;
use evidence::SigningKey;
use metrics::{CanaryMetrics, SharedRegistry};
use platform::telemetry::{TelemetryConfig, init_telemetry};
use platform::vault::{Vault, VaultAuth, VaultError, VaultSettings};
use prometheus_client::registry::Registry;
use round::{CredentialSource, Credentials, RoundReport};
use rpc_contracts::SubmitterId;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// The canary's Vault identity: its secrets live under `<prefix>/canary/`.
pub const VAULT_IDENTITY: &str = "canary";
/// The kind of its one secret (`<prefix>/canary/canary`).
pub const VAULT_KIND: &str = "canary";
/// Where `deployment/vault-provision.sh` writes the canary's token, relative
/// to the repository root; looked for from the current directory upwards.
pub const LOCAL_TOKEN_FILE: &str = ".run/state/tokens/canary";

const AFTER_HELP: &str = "\
Each round: vault (read the credentials), submit (sign and POST a fresh
package: one record of series canary.round, label probe=canary, at the
round's start to the millisecond, valued at that time in Unix seconds), keys
(GET /v1/keys), receipt (it verifies and attests the bytes sent), login,
list (the package is listed as sent), raw (the original bytes, Repr-Digest,
key id and signature), series (exactly that record), logout. The first
failing step ends the round with a stable code (the gateway's problem code,
or the canary's own: receipt_mismatch, raw_mismatch, series_missing...).

--once runs one round, prints its report (a table, or JSON with --json)
and exits 0 on success, 1 on failure. Otherwise rounds run every
--interval until SIGINT or SIGTERM, logging one JSON line per round on
stdout, with tallyhouse_canary_* metrics and /health on --metrics-addr.
See docs/lifecycle.md, \"Canary\".";

/// The steps of a round, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Read the credentials from Vault.
    Vault,
    /// Sign and submit the package.
    Submit,
    /// Fetch the platform's receipt keys.
    Keys,
    /// Verify the receipt.
    Receipt,
    /// Log in as the canary's back-office user.
    Login,
    /// Find the package in the list.
    List,
    /// Download and check the original bytes.
    Raw,
    /// Read the record back from the series.
    Series,
    /// Log out.
    Logout,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 9] = [
        Step::Vault,
        Step::Submit,
        Step::Keys,
        Step::Receipt,
        Step::Login,
        Step::List,
        Step::Raw,
        Step::Series,
        Step::Logout,
    ];

    /// Its name: the `step` label and what reports say.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vault => "vault",
            Self::Submit => "submit",
            Self::Keys => "keys",
            Self::Receipt => "receipt",
            Self::Login => "login",
            Self::List => "list",
            Self::Raw => "raw",
            Self::Series => "series",
            Self::Logout => "logout",
        }
    }
}

/// Why a step failed: a stable code to branch on, and a detail for people
/// (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    /// Stable: the gateway's problem `code`, `unreachable`, or the canary's
    /// own (`receipt_mismatch`, `vault_unreachable`...).
    pub code: String,
    /// What went wrong.
    pub detail: String,
}

impl StepError {
    /// A failure with `code` and `detail`.
    pub fn new(code: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            detail: detail.into(),
        }
    }
}

/// `tallyhouse canary`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct CanaryArgs {
    /// The public gateway to go through.
    #[command(flatten)]
    pub gateway: GatewayArgs,

    /// Run one round, print its report and exit: 0 on success, 1 on failure.
    #[arg(long)]
    pub once: bool,

    /// Time between the starts of two rounds: seconds, or 30s, 5m, 1h.
    #[arg(
        long,
        value_name = "DURATION",
        env = "TALLYHOUSE_CANARY_INTERVAL",
        default_value = "60s",
        value_parser = parse_interval
    )]
    pub interval: Duration,

    /// Where to serve /metrics and /health (not with --once).
    #[arg(
        long,
        env = "TALLYHOUSE_CANARY_METRICS_ADDR",
        default_value = "127.0.0.1:9185"
    )]
    pub metrics_addr: SocketAddr,

    /// The deployment's audience, written in every package.
    #[arg(long, env = "TALLYHOUSE_CANARY_AUDIENCE", default_value = "local")]
    pub audience: String,

    /// Bound on each request to the gateway, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        env = "TALLYHOUSE_CANARY_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub timeout_secs: u64,

    /// AppRole role id of the canary: log in to Vault with AppRole (the
    /// secret id comes from `TALLYHOUSE_VAULT_SECRET_ID`).
    #[arg(long, env = "TALLYHOUSE_VAULT_ROLE_ID")]
    pub vault_role_id: Option<String>,

    /// AppRole secret id of the canary (environment only, never a flag on a
    /// command line anyone can read).
    #[arg(long, env = "TALLYHOUSE_VAULT_SECRET_ID", hide_env_values = true,
          value_parser = parse_secret, requires = "vault_role_id")]
    pub vault_secret_id: Option<SecretString>,

    /// Mount of the AppRole auth method.
    #[arg(
        long,
        env = "TALLYHOUSE_VAULT_APPROLE_MOUNT",
        default_value = "approle"
    )]
    pub vault_approle_mount: String,

    /// Deployment name (`local`, `dev`, `prod`...), a log field.
    #[arg(long, env = "TALLYHOUSE_ENVIRONMENT", default_value = "local")]
    pub environment: String,

    /// Log filter (tracing `EnvFilter` syntax) of the rounds' log lines.
    #[arg(
        long = "log",
        value_name = "FILTER",
        env = "TALLYHOUSE_LOG",
        default_value = "info"
    )]
    pub log_filter: String,
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    if s.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(SecretString::from(s.to_owned()))
    }
}

/// A duration of at least a second: `90`, `90s`, `5m`, `1h`.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not an interval (e.g. 60, 30s, 5m, 1h)");
    let (number, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number.parse().map_err(|_| err())?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(err)?,
        "h" => n.checked_mul(3600).ok_or_else(err)?,
        _ => return Err(err()),
    };
    if secs == 0 {
        return Err(format!("{s:?}: the interval must be at least 1 s"));
    }
    Ok(Duration::from_secs(secs))
}

/// How the canary logs in to Vault.
enum AuthSpec {
    AppRole {
        mount: String,
        role_id: String,
        secret_id: SecretString,
    },
    Token(SecretString),
}

impl AuthSpec {
    /// AppRole when a role id is given; else `VAULT_TOKEN`; else the token
    /// file (`--vault-token-file`, or `.run/state/tokens/canary` of a local
    /// run found from the current directory upwards).
    fn from_args(args: &CanaryArgs, conn: &ConnectionArgs) -> Result<Self, CliError> {
        if let (Some(role_id), Some(secret_id)) = (&args.vault_role_id, &args.vault_secret_id) {
            return Ok(Self::AppRole {
                mount: args.vault_approle_mount.clone(),
                role_id: role_id.clone(),
                secret_id: secret_id.clone(),
            });
        }
        if args.vault_role_id.is_some() {
            return Err(CliError::Input(
                "TALLYHOUSE_VAULT_ROLE_ID is set but TALLYHOUSE_VAULT_SECRET_ID is not: AppRole needs both"
                    .into(),
            ));
        }
        if let Some(t) = conn.vault_token.as_deref().filter(|t| !t.trim().is_empty()) {
            return Ok(Self::Token(SecretString::from(t.trim().to_owned())));
        }
        let file = match &conn.vault_token_file {
            Some(f) => f.clone(),
            None => std::env::current_dir()
                .ok()
                .and_then(|cwd| find_upwards(&cwd, Path::new(LOCAL_TOKEN_FILE)))
                .ok_or_else(|| {
                    CliError::Input(format!(
                        "no Vault credentials for the canary: set TALLYHOUSE_VAULT_ROLE_ID and \
                         TALLYHOUSE_VAULT_SECRET_ID, or VAULT_TOKEN, or run from the repository \
                         of a local run ({LOCAL_TOKEN_FILE})"
                    ))
                })?,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            CliError::Input(format!(
                "cannot read the Vault token file {}: {e}",
                file.display()
            ))
        })?;
        match text.trim() {
            "" => Err(CliError::Input(format!(
                "the Vault token file {} is empty",
                file.display()
            ))),
            token => Ok(Self::Token(SecretString::from(token.to_owned()))),
        }
    }

    fn auth(&self) -> VaultAuth {
        match self {
            Self::AppRole {
                mount,
                role_id,
                secret_id,
            } => VaultAuth::AppRole {
                mount: mount.clone(),
                role_id: role_id.clone(),
                secret_id: secret_id.clone(),
            },
            Self::Token(t) => VaultAuth::Token(t.clone()),
        }
    }
}

/// `relative` under `start` or its nearest ancestor that has it.
fn find_upwards(start: &Path, relative: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(relative))
        .find(|p| p.is_file())
}

/// The secret `<prefix>/canary/canary` as Vault holds it.
#[derive(Deserialize)]
struct CanarySecret {
    submitter_id: String,
    private_key_pem: SecretString,
    username: String,
    password: SecretString,
}

impl CanarySecret {
    /// The credentials it holds, checked.
    fn credentials(self) -> Result<Credentials, StepError> {
        let bad = |what: String| StepError::new("bad_credentials", what);
        let submitter_id = SubmitterId::parse(&self.submitter_id)
            .map_err(|e| bad(format!("the secret's submitter_id is unusable: {e}")))?;
        let key = SigningKey::from_pkcs8_pem(self.private_key_pem.expose_secret())
            .map_err(|e| bad(format!("the secret's private_key_pem is unusable: {e}")))?;
        if self.username.is_empty() || self.password.expose_secret().is_empty() {
            return Err(bad("the secret's username or password is empty".into()));
        }
        Ok(Credentials {
            submitter_id,
            key_id: key.public_key().key_id().to_string(),
            key,
            username: self.username,
            password: self.password,
        })
    }
}

/// The canary's credentials from Vault: logs in on first use (and again
/// after a failed login), keeps the token renewed, reads the secret every
/// round.
struct VaultSource {
    auth: AuthSpec,
    addr: String,
    mount: String,
    prefix: String,
    bound: Duration,
    vault: Option<Vault>,
    /// Where to register the Vault client's metrics once it exists.
    registry: Option<SharedRegistry>,
    stop: CancellationToken,
}

fn vault_error(e: &VaultError) -> StepError {
    let code = match e {
        VaultError::Refused { .. } => "vault_refused",
        VaultError::Unreachable { .. } => "vault_unreachable",
        // A bad address (or anything else a read can meet).
        _ => "vault_error",
    };
    StepError::new(code, e.to_string())
}

impl CredentialSource for VaultSource {
    async fn credentials(&mut self) -> Result<Credentials, StepError> {
        let vault = match &self.vault {
            Some(v) => v.clone(),
            None => {
                let vault = Vault::connect(VaultSettings {
                    addr: self.addr.clone(),
                    auth: self.auth.auth(),
                    mount: self.mount.clone(),
                    prefix: self.prefix.clone(),
                    service: VAULT_IDENTITY.to_owned(),
                    startup_bound: self.bound,
                })
                .await
                .map_err(|e| vault_error(&e))?;
                vault.keep_token(self.stop.clone());
                if let Some(registry) = &self.registry {
                    vault.register_metrics(&mut registry.write().expect("canary registry lock"));
                }
                self.vault = Some(vault.clone());
                vault
            }
        };
        let secret: CanarySecret = vault.read(VAULT_KIND).await.map_err(|e| vault_error(&e))?;
        secret.credentials()
    }
}

/// Runs `canary`.
pub async fn run(args: CanaryArgs, ctx: &Context) -> Result<(), CliError> {
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let gateway = Gateway::new(&args.gateway.url, timeout)?;
    let auth = AuthSpec::from_args(&args, &ctx.connection)?;
    let once = args.once;
    let stop = if once {
        CancellationToken::new()
    } else {
        init_telemetry(
            "canary",
            &TelemetryConfig::stdout(&args.environment, &args.log_filter),
        );
        platform::shutdown::token_on_signal()
    };
    let mut source = VaultSource {
        auth,
        addr: ctx.connection.vault_addr.clone(),
        mount: ctx.connection.vault_mount.clone(),
        prefix: ctx.connection.vault_prefix.clone(),
        bound: timeout,
        vault: None,
        registry: None,
        stop: stop.clone(),
    };

    if once {
        let report = round::run(
            &gateway,
            &args.audience,
            &mut source,
            crate::commands::now(),
        )
        .await;
        ctx.output.print(&report, || human(&report));
        stop.cancel();
        if report.succeeded() {
            return Ok(());
        }
        return Err(CliError::Rejected(format!(
            "the canary round failed at {}: {}",
            report.failed_step.map_or("-", Step::as_str),
            report.code.as_deref().unwrap_or("-")
        )));
    }

    let registry: SharedRegistry = Arc::new(RwLock::new(Registry::default()));
    let metrics = CanaryMetrics::register(
        &mut registry.write().expect("canary registry lock"),
        unix_now(),
    );
    source.registry = Some(registry.clone());
    let addr = metrics::serve(args.metrics_addr, registry, stop.clone())
        .await
        .map_err(|e| {
            CliError::Input(format!(
                "cannot serve the canary's metrics on {}: {e}",
                args.metrics_addr
            ))
        })?;
    tracing::info!(
        metrics_addr = %addr,
        gateway = gateway.base(),
        interval_secs = args.interval.as_secs(),
        audience = %args.audience,
        "canary started"
    );
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let round = round::run(
            &gateway,
            &args.audience,
            &mut source,
            crate::commands::now(),
        );
        let report = tokio::select! {
            () = stop.cancelled() => break,
            report = round => report,
        };
        record(&metrics, &report);
        log(&report);
    }
    tracing::info!("canary stopped");
    platform::telemetry::flush_logs();
    Ok(())
}

fn unix_now() -> f64 {
    platform::clock::now_unix_ms() as f64 / 1000.0
}

/// Puts a finished round into the metrics.
fn record(metrics: &CanaryMetrics, report: &RoundReport) {
    for s in report.steps.iter().filter(|s| s.ok) {
        metrics.step_succeeded(s.step, Duration::from_secs_f64(s.seconds));
    }
    metrics.round_finished(
        report.failed_step,
        Duration::from_secs_f64(report.seconds),
        unix_now(),
    );
}

/// One log line per round: what it did, never a secret.
fn log(report: &RoundReport) {
    let package_id = report.package_id.map(|p| p.to_string());
    match (&report.failed_step, &report.code) {
        (Some(step), Some(code)) => tracing::warn!(
            step = step.as_str(),
            code = %code,
            detail = report.detail.as_deref().unwrap_or_default(),
            package_id,
            submitter_id = report.submitter_id,
            seconds = report.seconds,
            "canary round failed"
        ),
        _ => tracing::info!(
            package_id,
            submitter_id = report.submitter_id,
            seconds = report.seconds,
            "canary round succeeded"
        ),
    }
}

/// The report of `--once` for people.
fn human(report: &RoundReport) -> String {
    let rows: Vec<Vec<String>> = report
        .steps
        .iter()
        .map(|s| {
            vec![
                s.step.as_str().to_owned(),
                if s.ok { "ok" } else { "FAILED" }.to_owned(),
                format!("{:.3}", s.seconds),
            ]
        })
        .collect();
    let mut out = table(&["STEP", "OUTCOME", "SECONDS"], &rows);
    let package = report
        .package_id
        .map_or_else(|| "-".to_owned(), |p| p.to_string());
    match (&report.failed_step, &report.code) {
        (Some(step), Some(code)) => out.push_str(&format!(
            "\nround FAILED at {} after {:.3} s: {code}: {}",
            step.as_str(),
            report.seconds,
            report.detail.as_deref().unwrap_or_default()
        )),
        _ => out.push_str(&format!(
            "\nround succeeded in {:.3} s: package {package} of {}",
            report.seconds,
            report.submitter_id.as_deref().unwrap_or("-")
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{Cli, Command};
    use clap::Parser as _;

    #[test]
    fn intervals_are_whole_seconds_minutes_or_hours() {
        assert_eq!(parse_interval("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_interval("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_interval("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_interval("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "0",
            "0s",
            "1d",
            "m",
            "-5s",
            "1.5m",
            "99999999999999999999h",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_canary_parses_with_defaults_and_refuses_half_an_approle() {
        let cli = Cli::try_parse_from(["tallyhouse", "canary", "--once", "--json"]).unwrap();
        let Command::Canary(args) = cli.command else {
            panic!("canary");
        };
        assert!(args.once && cli.global.json);
        assert_eq!(args.interval, Duration::from_secs(60));
        assert_eq!(args.metrics_addr.port(), 9185);
        assert_eq!(args.audience, "local");
        assert!(
            Cli::try_parse_from(["tallyhouse", "canary", "--vault-secret-id", "s"]).is_err(),
            "a secret id without a role id"
        );
        assert!(Cli::try_parse_from(["tallyhouse", "canary", "--interval", "0"]).is_err());
    }

    #[test]
    fn step_names_are_the_metric_labels_and_report_values() {
        let names: Vec<&str> = Step::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "vault", "submit", "keys", "receipt", "login", "list", "raw", "series", "logout"
            ]
        );
        for step in Step::ALL {
            assert_eq!(
                serde_json::to_value(step).unwrap(),
                serde_json::Value::String(step.as_str().to_owned())
            );
        }
    }

    #[test]
    fn the_vault_secret_gives_checked_credentials_without_showing_them() {
        let key = SigningKey::generate();
        let secret = |submitter: &str, pem: String, password: &str| CanarySecret {
            submitter_id: submitter.to_owned(),
            private_key_pem: SecretString::from(pem),
            username: "tallyhouse-canary".to_owned(),
            password: SecretString::from(password.to_owned()),
        };
        let creds = secret(
            "tallyhouse-canary",
            key.to_pkcs8_pem(),
            "long enough password",
        )
        .credentials()
        .unwrap();
        assert_eq!(creds.key_id, key.public_key().key_id().to_string());
        assert_eq!(creds.submitter_id.as_str(), "tallyhouse-canary");
        for (bad, why) in [
            (secret("Not An Id", key.to_pkcs8_pem(), "pw"), "submitter"),
            (secret("tallyhouse-canary", "garbage".into(), "pw"), "key"),
            (
                secret("tallyhouse-canary", key.to_pkcs8_pem(), ""),
                "password",
            ),
        ] {
            let e = bad.credentials().err().expect(why);
            assert_eq!(e.code, "bad_credentials", "{why}");
            let pem = key.to_pkcs8_pem();
            let body = pem.lines().nth(1).unwrap();
            assert!(
                !e.detail.contains(body) && !e.detail.contains("-----BEGIN"),
                "{}",
                e.detail
            );
        }
    }
}
