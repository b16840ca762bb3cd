//! Secrets from Vault (OpenBao locally): each service reads its own KV v2
//! paths, `<prefix>/<service>/<kind>`, at start-up. Nothing secret is read
//! from files or the image.

use crate::amqp::Backoff;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio::time::Instant;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The client could not be configured (bad address).
    #[error("cannot configure the Vault client for {addr}: {reason}")]
    Config {
        /// The Vault address.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// Vault answered, but refused or lacked the secret.
    #[error("Vault at {addr} refused to read {path}: {reason}")]
    Refused {
        /// The Vault address.
        addr: String,
        /// The logical secret path.
        path: String,
        /// What Vault said (status code).
        reason: String,
    },
    /// Vault could not be reached in the time allowed.
    #[error("Vault at {addr} was unreachable for {waited:?} while reading {path}: {reason}")]
    Unreachable {
        /// The Vault address.
        addr: String,
        /// The logical secret path.
        path: String,
        /// How long we tried.
        waited: Duration,
        /// The last error.
        reason: String,
    },
}

/// A service's view of Vault.
pub struct Vault {
    client: VaultClient,
    addr: String,
    mount: String,
    prefix: String,
    service: String,
    startup_bound: Duration,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("addr", &self.addr)
            .field("mount", &self.mount)
            .field("prefix", &self.prefix)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// RabbitMQ credentials of one service.
#[derive(Deserialize)]
pub struct AmqpCredentials {
    /// Broker user name.
    pub username: String,
    /// Broker password.
    pub password: SecretString,
}

impl Vault {
    /// A client for `service`'s secrets, authenticated with `token`.
    pub fn new(
        addr: &str,
        token: &SecretString,
        mount: &str,
        prefix: &str,
        service: &str,
    ) -> Result<Self, VaultError> {
        let settings = VaultClientSettingsBuilder::default()
            .address(addr)
            .token(token.expose_secret())
            .timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| VaultError::Config {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?;
        let client = VaultClient::new(settings).map_err(|e| VaultError::Config {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            client,
            addr: addr.to_owned(),
            mount: mount.to_owned(),
            prefix: prefix.to_owned(),
            service: service.to_owned(),
            startup_bound: Duration::from_secs(30),
        })
    }

    /// How long start-up reads keep retrying an unreachable Vault.
    pub fn with_startup_bound(mut self, bound: Duration) -> Self {
        self.startup_bound = bound;
        self
    }

    /// The logical path of one of this service's secrets.
    pub fn path(&self, kind: &str) -> String {
        format!("{}/{}/{kind}", self.prefix, self.service)
    }

    /// Reads this service's secret `kind`, retrying with backoff while Vault
    /// is unreachable or sealed, up to the start-up bound. A refusal
    /// (403, missing path) fails at once: retrying cannot fix it.
    pub async fn read<T: DeserializeOwned>(&self, kind: &str) -> Result<T, VaultError> {
        let path = self.path(kind);
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match vaultrs::kv2::read::<T>(&self.client, &self.mount, &path).await {
                Ok(v) => return Ok(v),
                Err(vaultrs::error::ClientError::APIError { code, .. })
                    if !matches!(code, 429 | 500..=599) =>
                {
                    return Err(VaultError::Refused {
                        addr: self.addr.clone(),
                        path,
                        reason: format!("status {code}"),
                    });
                }
                Err(e) => {
                    let waited = started.elapsed();
                    if waited >= self.startup_bound {
                        return Err(VaultError::Unreachable {
                            addr: self.addr.clone(),
                            path,
                            waited,
                            reason: e.to_string(),
                        });
                    }
                    tracing::warn!(vault = %self.addr, path = %path, error = %e, "Vault not ready; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// This service's RabbitMQ credentials.
    pub async fn amqp_credentials(&self) -> Result<AmqpCredentials, VaultError> {
        self.read("amqp").await
    }
}
