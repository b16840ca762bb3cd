//! Configuration shared by every service: clap flags with environment
//! fallbacks. Secrets are not configuration: only the credential to fetch
//! them from Vault (a token, or an AppRole secret id) comes in through the
//! environment.

use crate::amqp::BrokerUri;
use crate::rpc::RpcConfig;
use crate::telemetry::TelemetryConfig;
use crate::vault::{Vault, VaultAuth, VaultSettings};
use anyhow::Context as _;
use rpc_contracts::Topology;
use secrecy::{ExposeSecret as _, SecretString};
use std::net::SocketAddr;
use std::time::Duration;
use tracing_loki::url::Url;

/// Flags every service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Brokers to hold connections to, comma-separated, without credentials
    /// (those come from Vault), e.g. `amqp://rmq-1:5672/%2f,amqp://rmq-2:5672/%2f`.
    #[arg(
        long,
        env = "TALLYHOUSE_AMQP_URIS",
        value_delimiter = ',',
        required = true
    )]
    pub amqp_uris: Vec<String>,

    /// Namespace of the RPC exchange and queues.
    #[arg(long, env = "TALLYHOUSE_RPC_NAMESPACE", default_value = Topology::DEFAULT_NAMESPACE)]
    pub rpc_namespace: String,

    /// Deadline of an internal call, in milliseconds.
    #[arg(long, env = "TALLYHOUSE_RPC_TIMEOUT_MS", default_value_t = 10_000)]
    pub rpc_timeout_ms: u64,

    /// Deployment name (`local`, `dev`, `prod`...), a log label.
    #[arg(long, env = "TALLYHOUSE_ENVIRONMENT", default_value = "local")]
    pub environment: String,

    /// Address of the metrics and health endpoints (separate from any API).
    #[arg(long, env = "TALLYHOUSE_METRICS_ADDR", default_value = "127.0.0.1:0")]
    pub metrics_addr: SocketAddr,

    /// Vault (or OpenBao) address.
    #[arg(long, env = "VAULT_ADDR", default_value = "http://127.0.0.1:8200")]
    pub vault_addr: String,

    /// Vault token of this service (in Nomad: the task's workload-identity
    /// token). Not needed with AppRole (`--vault-role-id`).
    #[arg(long, env = "VAULT_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub vault_token: Option<SecretString>,

    /// AppRole role id of this service: log in with AppRole instead of a
    /// given token (the secret id comes from `TALLYHOUSE_VAULT_SECRET_ID`).
    #[arg(long, env = "TALLYHOUSE_VAULT_ROLE_ID")]
    pub vault_role_id: Option<String>,

    /// AppRole secret id of this service (environment only, never a flag
    /// value on a command line anyone can read).
    #[arg(long, env = "TALLYHOUSE_VAULT_SECRET_ID", hide_env_values = true, value_parser = parse_secret, requires = "vault_role_id")]
    pub vault_secret_id: Option<SecretString>,

    /// Mount of the AppRole auth method.
    #[arg(
        long,
        env = "TALLYHOUSE_VAULT_APPROLE_MOUNT",
        default_value = "approle"
    )]
    pub vault_approle_mount: String,

    /// KV v2 mount holding the secrets.
    #[arg(long, env = "TALLYHOUSE_VAULT_MOUNT", default_value = "secret")]
    pub vault_mount: String,

    /// Path prefix of the secrets inside the mount.
    #[arg(long, env = "TALLYHOUSE_VAULT_PREFIX", default_value = "tallyhouse")]
    pub vault_prefix: String,

    /// How long start-up waits for an unreachable Vault before giving up, in seconds.
    #[arg(
        long,
        env = "TALLYHOUSE_VAULT_STARTUP_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub vault_startup_timeout_secs: u64,

    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "TALLYHOUSE_LOG", default_value = "info")]
    pub log_filter: String,

    /// Base URL of Loki to ship the logs to as well as stdout, e.g.
    /// `http://loki:3100` (`loki/api/v1/push` is resolved against it, so a
    /// path prefix needs its trailing `/`). Unset: stdout only. Without
    /// credentials: a URL carrying any is refused.
    #[arg(long, env = "TALLYHOUSE_LOKI_URL", value_parser = parse_loki_url)]
    pub loki_url: Option<Url>,
}

fn parse_loki_url(s: &str) -> Result<Url, String> {
    if s.is_empty() {
        return Err("empty: leave it unset to log to stdout only".to_owned());
    }
    let url = Url::parse(s).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{} is not http or https", url.scheme()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // It would be shown by `--help`, `Debug` and the start-up line.
        return Err("credentials do not belong in the Loki URL".to_owned());
    }
    if url.host().is_none() {
        return Err("the Loki URL has no host".to_owned());
    }
    Ok(url)
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    if s.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(SecretString::from(s.to_owned()))
    }
}

impl CommonArgs {
    /// Where this service's logs go (see [`crate::telemetry::init_telemetry`]).
    pub fn telemetry(&self) -> TelemetryConfig {
        TelemetryConfig {
            environment: self.environment.clone(),
            log_filter: self.log_filter.clone(),
            loki_url: self.loki_url.clone(),
        }
    }

    /// How this service logs in to Vault: AppRole when a role id is given,
    /// the given token otherwise.
    pub fn vault_auth(&self) -> anyhow::Result<VaultAuth> {
        match (
            &self.vault_role_id,
            &self.vault_secret_id,
            &self.vault_token,
        ) {
            (Some(role_id), Some(secret_id), _) => Ok(VaultAuth::AppRole {
                mount: self.vault_approle_mount.clone(),
                role_id: role_id.clone(),
                secret_id: secret_id.clone(),
            }),
            (Some(_), None, _) => anyhow::bail!(
                "--vault-role-id is set but TALLYHOUSE_VAULT_SECRET_ID is not: AppRole needs both"
            ),
            (None, _, Some(token)) => Ok(VaultAuth::Token(token.clone())),
            (None, _, None) => anyhow::bail!(
                "no Vault credentials: set VAULT_TOKEN, or TALLYHOUSE_VAULT_ROLE_ID and TALLYHOUSE_VAULT_SECRET_ID"
            ),
        }
    }

    /// Logs `service` in to Vault (see [`Vault::connect`]).
    pub async fn vault(&self, service: &str) -> anyhow::Result<Vault> {
        Ok(Vault::connect(VaultSettings {
            addr: self.vault_addr.clone(),
            auth: self.vault_auth()?,
            mount: self.vault_mount.clone(),
            prefix: self.vault_prefix.clone(),
            service: service.to_owned(),
            startup_bound: Duration::from_secs(self.vault_startup_timeout_secs),
        })
        .await?)
    }

    /// The RPC configuration of `service`, with broker credentials read from Vault.
    pub async fn rpc_config(&self, service: &str, vault: &Vault) -> anyhow::Result<RpcConfig> {
        let creds = vault
            .amqp_credentials()
            .await
            .context("reading the AMQP credentials")?;
        let brokers = self
            .amqp_uris
            .iter()
            .map(|u| {
                BrokerUri::parse(u)
                    .map(|b| b.with_credentials(&creds.username, creds.password.expose_secret()))
                    .map_err(anyhow::Error::msg)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let topology = Topology::new(self.rpc_namespace.clone()).map_err(anyhow::Error::msg)?;
        let mut config = RpcConfig::new(brokers, service).with_topology(topology);
        config.default_call_timeout = Duration::from_millis(self.rpc_timeout_ms);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn flags_parse_and_token_is_not_shown() {
        let cli = Cli::try_parse_from([
            "svc",
            "--amqp-uris",
            "amqp://a:5672/%2f,amqp://b:5672/%2f",
            "--vault-token",
            "hvs.very-secret",
        ])
        .unwrap();
        assert_eq!(cli.common.amqp_uris.len(), 2);
        assert!(!format!("{:?}", cli.common).contains("very-secret"));
    }

    #[test]
    fn the_loki_url_is_optional_and_refused_with_credentials() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["svc", "--amqp-uris", "amqp://a:1/%2f", "--vault-token", "t"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|cli| cli.common.telemetry().loki_url)
        };
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(
            parse(&["--loki-url", "http://loki:3100"])
                .unwrap()
                .map(String::from),
            Some("http://loki:3100/".to_owned())
        );
        for (bad, why) in [
            ("https://user:key@logs.example", "credentials"),
            ("https://user@logs.example", "a user name"),
            ("ftp://loki:3100", "not http"),
            ("loki:3100", "no scheme"),
            ("not a url", "not a URL"),
            ("", "empty"),
        ] {
            assert!(
                parse(&["--loki-url", bad]).is_err(),
                "{bad} ({why}) was taken"
            );
        }
    }

    #[test]
    fn approle_wins_over_a_token_and_needs_both_halves() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["svc", "--amqp-uris", "amqp://a:1/%2f"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|cli| cli.common.vault_auth())
        };
        let auth = parse(&[
            "--vault-token",
            "t",
            "--vault-role-id",
            "role-1",
            "--vault-secret-id",
            "sid-very-secret",
        ])
        .unwrap()
        .unwrap();
        assert!(
            matches!(&auth, VaultAuth::AppRole { role_id, mount, .. } if role_id == "role-1" && mount == "approle")
        );
        assert!(!format!("{auth:?}").contains("very-secret"));
        assert!(matches!(
            parse(&["--vault-token", "t"]).unwrap().unwrap(),
            VaultAuth::Token(_)
        ));
        assert!(parse(&[]).unwrap().is_err(), "no credentials at all");
        assert!(
            parse(&["--vault-secret-id", "s"]).is_err(),
            "a secret id without a role id"
        );
    }

    #[test]
    fn an_empty_token_is_refused() {
        assert!(
            Cli::try_parse_from(["svc", "--amqp-uris", "amqp://a:1/%2f", "--vault-token", ""])
                .is_err()
        );
    }
}
