//! Reaching the platform over RPC the way a service does: broker addresses
//! from flags, broker credentials from Vault (the `cli` identity's `amqp`
//! secret). The connection is made on first use, so commands that need no
//! RPC never touch Vault or a broker.

use crate::error::CliError;
use platform::amqp::BrokerUri;
use platform::rpc::{RpcClient, RpcConfig, RpcMetrics};
use platform::vault::Vault;
use rpc_contracts::{Call, Topology};
use secrecy::{ExposeSecret as _, SecretString};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::OnceCell;

/// The Vault identity of the CLI: its secrets live under `<prefix>/cli/`.
pub const VAULT_IDENTITY: &str = "cli";

/// Where `deployment/vault-provision.sh` writes the CLI's token, relative
/// to the repository root; looked for from the current directory upwards.
pub const LOCAL_TOKEN_FILE: &str = ".run/state/tokens/cli";

/// How to reach the platform.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionArgs {
    /// Brokers, comma-separated, without credentials (those come from Vault).
    #[arg(
        long = "amqp-uri",
        value_name = "URI",
        env = "TALLYHOUSE_AMQP_URIS",
        value_delimiter = ',',
        default_value = "amqp://127.0.0.1:5672/%2f",
        global = true
    )]
    pub amqp_uris: Vec<String>,

    /// Namespace of the RPC exchange and queues.
    #[arg(long, env = "TALLYHOUSE_RPC_NAMESPACE", default_value = Topology::DEFAULT_NAMESPACE, global = true)]
    pub rpc_namespace: String,

    /// Deadline of each call, and bound on connecting, in milliseconds.
    #[arg(
        long,
        env = "TALLYHOUSE_RPC_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub rpc_timeout_ms: u64,

    /// Vault (or OpenBao) address.
    #[arg(
        long,
        env = "VAULT_ADDR",
        default_value = "http://127.0.0.1:8200",
        global = true
    )]
    pub vault_addr: String,

    /// Vault token allowed to read `<prefix>/cli/amqp`. Without it, the
    /// token is read from --vault-token-file.
    #[arg(long, env = "VAULT_TOKEN", hide_env_values = true, global = true)]
    pub vault_token: Option<String>,

    /// File holding the Vault token, used when no token is given. Default:
    /// `.run/state/tokens/cli` in the current directory or the nearest
    /// parent that has one (written by deployment/vault-provision.sh).
    #[arg(long, env = "TALLYHOUSE_VAULT_TOKEN_FILE", global = true)]
    pub vault_token_file: Option<PathBuf>,

    /// KV v2 mount holding the secrets.
    #[arg(
        long,
        env = "TALLYHOUSE_VAULT_MOUNT",
        default_value = "secret",
        global = true
    )]
    pub vault_mount: String,

    /// Path prefix of the secrets inside the mount.
    #[arg(
        long,
        env = "TALLYHOUSE_VAULT_PREFIX",
        default_value = "tallyhouse",
        global = true
    )]
    pub vault_prefix: String,
}

impl ConnectionArgs {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms.max(1))
    }

    /// The Vault token: the flag or `VAULT_TOKEN`, else the token file.
    fn token(&self) -> Result<SecretString, CliError> {
        if let Some(t) = self.vault_token.as_deref().filter(|t| !t.trim().is_empty()) {
            return Ok(SecretString::from(t.trim().to_owned()));
        }
        let file = match &self.vault_token_file {
            Some(f) => f.clone(),
            None => std::env::current_dir()
                .ok()
                .and_then(|cwd| find_upwards(&cwd, Path::new(LOCAL_TOKEN_FILE)))
                .ok_or_else(|| {
                    CliError::Connect(format!(
                        "no Vault token: set VAULT_TOKEN, pass --vault-token-file, or run from \
                         the repository of a local run (deployment/up.sh writes {LOCAL_TOKEN_FILE})"
                    ))
                })?,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            CliError::Connect(format!(
                "cannot read the Vault token file {}: {e}",
                file.display()
            ))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(CliError::Connect(format!(
                "the Vault token file {} is empty",
                file.display()
            )));
        }
        Ok(SecretString::from(token.to_owned()))
    }

    /// Reads the broker credentials from Vault and connects to the brokers.
    async fn connect(&self) -> Result<RpcClient, CliError> {
        let token = self.token()?;
        let vault = Vault::with_token(
            &self.vault_addr,
            &token,
            &self.vault_mount,
            &self.vault_prefix,
            VAULT_IDENTITY,
            self.timeout(),
        )
        .await
        .map_err(|e| CliError::Connect(e.to_string()))?;
        let creds = vault
            .amqp_credentials()
            .await
            .map_err(|e| CliError::Connect(format!("reading the broker credentials: {e}")))?;
        let brokers = self
            .amqp_uris
            .iter()
            .map(|u| {
                BrokerUri::parse(u)
                    .map(|b| b.with_credentials(&creds.username, creds.password.expose_secret()))
                    .map_err(CliError::Input)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shown: Vec<String> = brokers.iter().map(|b| b.to_string()).collect();
        let topology = Topology::new(self.rpc_namespace.clone()).map_err(CliError::Input)?;
        let mut config = RpcConfig::new(brokers, "tallyhouse-cli").with_topology(topology);
        config.default_call_timeout = self.timeout();
        let client = RpcClient::start(config, RpcMetrics::unregistered());
        if !client.wait_connected(self.timeout()).await {
            client.close().await;
            return Err(CliError::Connect(format!(
                "no broker answered within {} ms: {}",
                self.rpc_timeout_ms,
                shown.join(", ")
            )));
        }
        Ok(client)
    }
}

/// `relative` under `start` or its nearest ancestor that has it.
fn find_upwards(start: &Path, relative: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(relative))
        .find(|p| p.is_file())
}

/// An RPC client made on first use.
pub struct Rpc {
    args: ConnectionArgs,
    client: OnceCell<RpcClient>,
}

impl Rpc {
    /// Nothing is connected yet.
    pub fn new(args: ConnectionArgs) -> Self {
        Self {
            args,
            client: OnceCell::new(),
        }
    }

    /// Calls `C`, connecting first if needed.
    pub async fn call<C: Call>(&self, request: &C::Request) -> Result<C::Response, CliError> {
        let client = self.client.get_or_try_init(|| self.args.connect()).await?;
        Ok(client.call::<C>(request).await?)
    }

    /// Closes the connections, if any were made.
    pub async fn close(&self) {
        if let Some(client) = self.client.get() {
            client.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_found_in_a_parent_directory() {
        let root = std::env::temp_dir().join(format!("tallyhouse-cli-{}", std::process::id()));
        let nested = root.join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::create_dir_all(root.join(".run/state/tokens")).unwrap();
        std::fs::write(root.join(LOCAL_TOKEN_FILE), "s.token\n").unwrap();
        assert_eq!(
            find_upwards(&nested, Path::new(LOCAL_TOKEN_FILE)),
            Some(root.join(LOCAL_TOKEN_FILE))
        );
        let args = ConnectionArgs {
            amqp_uris: vec![],
            rpc_namespace: "tallyhouse".into(),
            rpc_timeout_ms: 1,
            vault_addr: "http://127.0.0.1:1".into(),
            vault_token: None,
            vault_token_file: Some(root.join(LOCAL_TOKEN_FILE)),
            vault_mount: "secret".into(),
            vault_prefix: "tallyhouse".into(),
        };
        assert_eq!(args.token().unwrap().expose_secret(), "s.token");
        let _ = std::fs::remove_dir_all(&root);
    }
}
