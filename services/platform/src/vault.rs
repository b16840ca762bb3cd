//! Secrets from Vault (OpenBao locally).
//!
//! * **Login.** With AppRole (a role id and a secret id: locally and in
//!   tests) or with a token given to the process (in Nomad, the task's
//!   workload-identity token). The token's TTL is looked up; a token that
//!   expires is renewed at about two thirds of its TTL, and when renewal
//!   fails an AppRole login is made again (with backoff) before it expires.
//! * **Static secrets** are read from KV v2 at `<prefix>/<service>/<kind>`
//!   ([`Vault::read`]); each service's policy allows only its own paths.
//!   Those that change under a running service (rotated signing keys) are
//!   re-read with [`Vault::keep_reading`], and written by the service that
//!   owns them with [`Vault::write_cas`] (check-and-set on the version
//!   [`Vault::read_versioned`] answered).
//! * **Leased secrets** (database logins from the database secrets engine)
//!   are read with [`Vault::read_leased`] and kept alive by
//!   [`Vault::keep_leased`]: renewed at about two thirds of their TTL, and
//!   replaced by fresh ones (handed to the caller, which moves its pool to
//!   them) when the engine will not extend them far enough.
//! * **Vault away.** At start-up every read retries with backoff up to a
//!   bound, then fails naming Vault. Mid-run the service keeps what it holds:
//!   while Vault is sealed or unreachable nothing changes until a lease
//!   actually expires; from then on [`Vault::gate`] refuses calls with
//!   `secrets_expired` (HTTP 503) and the readiness check fails, until fresh
//!   credentials arrive once Vault is back, without a restart.
//!
//! Nothing secret is read from files or the image, and no secret (token,
//! secret id, password) reaches a log line: they are [`SecretString`]s.

use crate::amqp::Backoff;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use rpc_contracts::{ErrorCode, RpcError};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
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
    #[error("Vault at {addr} refused {path}: {reason}")]
    Refused {
        /// The Vault address.
        addr: String,
        /// The logical secret path (or the login endpoint).
        path: String,
        /// What Vault said (status code).
        reason: String,
    },
    /// A check-and-set write found another version than the one read: the
    /// secret changed meanwhile (read it again and redo the change).
    #[error("{path} changed in Vault at {addr} since version {version} was read")]
    Conflict {
        /// The Vault address.
        addr: String,
        /// The logical secret path.
        path: String,
        /// The version the write was based on.
        version: u64,
    },
    /// Vault could not be reached in the time allowed.
    #[error("Vault at {addr} was unreachable for {waited:?} while reading {path}: {reason}")]
    Unreachable {
        /// The Vault address.
        addr: String,
        /// The logical secret path (or the login endpoint).
        path: String,
        /// How long we tried.
        waited: Duration,
        /// The last error.
        reason: String,
    },
}

/// How a service proves who it is to Vault.
pub enum VaultAuth {
    /// A token handed to the process (Nomad's workload identity; tests).
    Token(SecretString),
    /// AppRole login: `auth/<mount>/login` with a role id and a secret id.
    AppRole {
        /// The AppRole auth mount (`approle`).
        mount: String,
        /// The role id (an identifier, not a secret on its own).
        role_id: String,
        /// The secret id (a credential).
        secret_id: SecretString,
    },
}

impl std::fmt::Debug for VaultAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token([redacted])"),
            Self::AppRole { mount, role_id, .. } => f
                .debug_struct("AppRole")
                .field("mount", mount)
                .field("role_id", role_id)
                .finish_non_exhaustive(),
        }
    }
}

/// Where Vault is and how this service reads from it.
#[derive(Debug)]
pub struct VaultSettings {
    /// Vault's address, e.g. `http://127.0.0.1:8200`.
    pub addr: String,
    /// How to log in.
    pub auth: VaultAuth,
    /// The KV v2 mount.
    pub mount: String,
    /// The path prefix inside the mount.
    pub prefix: String,
    /// The service's name: its secrets are under `<prefix>/<service>/`.
    pub service: String,
    /// How long start-up reads keep retrying an unreachable Vault.
    pub startup_bound: Duration,
}

/// One secret with a lease (a dynamic database login).
#[derive(Debug)]
pub struct Leased<T> {
    /// The secret.
    pub value: T,
    /// Its lease.
    pub lease: LeaseInfo,
}

/// A lease as Vault granted it.
#[derive(Debug, Clone)]
pub struct LeaseInfo {
    /// The lease id (not a secret: it cannot be used to read the value).
    pub lease_id: String,
    /// How long it is valid from when it was read.
    pub ttl: Duration,
    /// Whether the lease can be extended.
    pub renewable: bool,
}

/// What is known of one held lease, for the gate, the readiness check and
/// the metrics.
#[derive(Debug, Clone, Copy)]
struct LeaseState {
    expires_at: Instant,
    expired: bool,
}

struct TokenState {
    token: SecretString,
    /// `None`: the token does not expire (a root token in tests).
    expires_at: Option<Instant>,
    ttl: Duration,
    renewable: bool,
    /// The TTL granted at login: a renewal granting much less means the
    /// token's max TTL is near.
    login_ttl: Duration,
}

struct Inner {
    settings: VaultSettings,
    /// Rebuilt with the new token after each login.
    client: RwLock<Arc<VaultClient>>,
    http: reqwest::Client,
    token: Mutex<TokenState>,
    leases: Mutex<BTreeMap<&'static str, LeaseState>>,
    /// The last call to Vault succeeded.
    reachable: AtomicBool,
    renewals: Family<RenewalLabels, Counter>,
    /// Re-reads of static secrets ([`Vault::keep_reading`]).
    reloads: Family<ReloadLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReloadLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RenewalLabels {
    what: &'static str,
    outcome: &'static str,
}

/// A service's view of Vault; cheap to clone.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("addr", &self.inner.settings.addr)
            .field("mount", &self.inner.settings.mount)
            .field("prefix", &self.inner.settings.prefix)
            .field("service", &self.inner.settings.service)
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

#[derive(Deserialize)]
struct LeaseEnvelope<T> {
    #[serde(default)]
    lease_id: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
    data: T,
}

#[derive(Deserialize)]
struct KvEnvelope<T> {
    data: KvData<T>,
}

#[derive(Deserialize)]
struct KvData<T> {
    data: T,
    metadata: KvMetadata,
}

#[derive(Deserialize)]
struct KvMetadata {
    version: u64,
}

#[derive(Deserialize)]
struct RenewEnvelope {
    lease_duration: u64,
}

/// Whether a failed call is worth retrying: Vault unreachable, sealed (503),
/// standby (429) or failing (5xx). A 4xx is an answer: retrying cannot help.
fn transient(e: &vaultrs::error::ClientError) -> bool {
    !matches!(e, vaultrs::error::ClientError::APIError { code, .. } if !matches!(code, 429 | 500..=599))
}

fn client_for(addr: &str, token: &str) -> Result<VaultClient, VaultError> {
    let settings = VaultClientSettingsBuilder::default()
        .address(addr)
        .token(token)
        .timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| VaultError::Config {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
    VaultClient::new(settings).map_err(|e| VaultError::Config {
        addr: addr.to_owned(),
        reason: e.to_string(),
    })
}

impl Vault {
    /// Logs in (AppRole) or looks the given token up, retrying an
    /// unreachable or sealed Vault with backoff up to the start-up bound.
    pub async fn connect(settings: VaultSettings) -> Result<Self, VaultError> {
        let initial = match &settings.auth {
            VaultAuth::Token(t) => t.clone(),
            VaultAuth::AppRole { .. } => SecretString::from(String::new()),
        };
        let client = client_for(&settings.addr, initial.expose_secret())?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| VaultError::Config {
                addr: settings.addr.clone(),
                reason: e.to_string(),
            })?;
        let vault = Self {
            inner: Arc::new(Inner {
                client: RwLock::new(Arc::new(client)),
                http,
                token: Mutex::new(TokenState {
                    token: initial,
                    expires_at: None,
                    ttl: Duration::ZERO,
                    renewable: false,
                    login_ttl: Duration::ZERO,
                }),
                leases: Mutex::default(),
                reachable: AtomicBool::new(false),
                renewals: Family::default(),
                reloads: Family::default(),
                settings,
            }),
        };
        let bound = vault.inner.settings.startup_bound;
        vault
            .retrying("login", bound, || vault.authenticate())
            .await?;
        Ok(vault)
    }

    /// A Vault for tests and tools: token auth, no start-up wait beyond `bound`.
    pub async fn with_token(
        addr: &str,
        token: &SecretString,
        mount: &str,
        prefix: &str,
        service: &str,
        bound: Duration,
    ) -> Result<Self, VaultError> {
        Self::connect(VaultSettings {
            addr: addr.to_owned(),
            auth: VaultAuth::Token(token.clone()),
            mount: mount.to_owned(),
            prefix: prefix.to_owned(),
            service: service.to_owned(),
            startup_bound: bound,
        })
        .await
    }

    fn client(&self) -> Arc<VaultClient> {
        self.inner.client.read().expect("vault client lock").clone()
    }

    fn addr(&self) -> &str {
        &self.inner.settings.addr
    }

    /// Logs in with AppRole, or looks up the given token; records its TTL.
    async fn authenticate(&self) -> Result<(), vaultrs::error::ClientError> {
        match &self.inner.settings.auth {
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                // Login is unauthenticated: a fresh client without the old
                // (perhaps expired) token.
                let anonymous = client_for(self.addr(), "").map_err(|e| {
                    vaultrs::error::ClientError::APIError {
                        code: 400,
                        errors: vec![e.to_string()],
                    }
                })?;
                let auth = vaultrs::auth::approle::login(
                    &anonymous,
                    mount,
                    role_id,
                    secret_id.expose_secret(),
                )
                .await?;
                self.install_token(
                    SecretString::from(auth.client_token),
                    Duration::from_secs(auth.lease_duration),
                    auth.renewable,
                );
                tracing::info!(
                    vault = %self.addr(),
                    ttl_secs = auth.lease_duration,
                    "logged in to Vault with AppRole"
                );
            }
            VaultAuth::Token(_) => {
                let me = vaultrs::token::lookup_self(&*self.client()).await?;
                let token = self.inner.token.lock().expect("token lock").token.clone();
                self.install_token(
                    token,
                    Duration::from_secs(me.ttl),
                    me.renewable.unwrap_or(false),
                );
                tracing::info!(
                    vault = %self.addr(),
                    ttl_secs = me.ttl,
                    renewable = me.renewable,
                    "Vault token accepted"
                );
            }
        }
        Ok(())
    }

    fn install_token(&self, token: SecretString, ttl: Duration, renewable: bool) {
        let mut state = self.inner.token.lock().expect("token lock");
        if state.token.expose_secret() != token.expose_secret() {
            // The settings were valid for the first client: same address.
            if let Ok(client) = client_for(self.addr(), token.expose_secret()) {
                *self.inner.client.write().expect("vault client lock") = Arc::new(client);
            }
        }
        state.token = token;
        // A TTL of 0 means the token never expires (root tokens).
        state.expires_at = (!ttl.is_zero()).then(|| Instant::now() + ttl);
        state.ttl = ttl;
        state.renewable = renewable;
        if state.login_ttl.is_zero() || ttl > state.login_ttl {
            state.login_ttl = ttl;
        }
    }

    /// Runs `op` until it succeeds, retrying transient failures with backoff
    /// for up to `bound`; refusals fail at once.
    async fn retrying<T, F, Fut>(
        &self,
        path: &str,
        bound: Duration,
        mut op: F,
    ) -> Result<T, VaultError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, vaultrs::error::ClientError>>,
    {
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match op().await {
                Ok(v) => {
                    self.inner.reachable.store(true, Ordering::SeqCst);
                    return Ok(v);
                }
                Err(e) if !transient(&e) => {
                    self.inner.reachable.store(true, Ordering::SeqCst);
                    let reason = match &e {
                        vaultrs::error::ClientError::APIError { code, .. } => {
                            format!("status {code}")
                        }
                        other => other.to_string(),
                    };
                    return Err(VaultError::Refused {
                        addr: self.addr().to_owned(),
                        path: path.to_owned(),
                        reason,
                    });
                }
                Err(e) => {
                    self.inner.reachable.store(false, Ordering::SeqCst);
                    let waited = started.elapsed();
                    if waited >= bound {
                        return Err(VaultError::Unreachable {
                            addr: self.addr().to_owned(),
                            path: path.to_owned(),
                            waited,
                            reason: e.to_string(),
                        });
                    }
                    tracing::warn!(vault = %self.addr(), path, error = %e, "Vault not ready; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// The logical path of one of this service's secrets.
    pub fn path(&self, kind: &str) -> String {
        format!(
            "{}/{}/{kind}",
            self.inner.settings.prefix, self.inner.settings.service
        )
    }

    /// Reads this service's KV secret `kind`, retrying with backoff while
    /// Vault is unreachable or sealed, up to the start-up bound. A refusal
    /// (403, missing path) fails at once: retrying cannot fix it.
    pub async fn read<T: DeserializeOwned>(&self, kind: &str) -> Result<T, VaultError> {
        let path = self.path(kind);
        let mount = self.inner.settings.mount.clone();
        self.retrying(&path, self.inner.settings.startup_bound, || {
            let client = self.client();
            let (mount, path) = (mount.clone(), path.clone());
            async move { vaultrs::kv2::read::<T>(&*client, &mount, &path).await }
        })
        .await
    }

    /// This service's RabbitMQ credentials.
    pub async fn amqp_credentials(&self) -> Result<AmqpCredentials, VaultError> {
        self.read("amqp").await
    }

    /// Reads this service's KV secret `kind` once (no retry: for periodic
    /// re-reads and read-modify-write), with its KV version, the base of a
    /// [`Vault::write_cas`].
    pub async fn read_versioned<T: DeserializeOwned>(
        &self,
        kind: &str,
    ) -> Result<(T, u64), VaultError> {
        let path = self.path(kind);
        let url = format!(
            "{}/v1/{}/data/{path}",
            self.addr().trim_end_matches('/'),
            self.inner.settings.mount
        );
        let result = self.get_json::<KvEnvelope<T>>(&url).await;
        self.once(&path, result)
            .map(|e| (e.data.data, e.data.metadata.version))
    }

    /// Writes this service's KV secret `kind` if its current version is
    /// still `version` (KV v2 check-and-set), else fails with
    /// [`VaultError::Conflict`]; answers the new version. The policy must
    /// allow `update` on the path: only the secrets a service rotates
    /// itself (deployment/vault/secrets.json, `writes`).
    pub async fn write_cas<T: serde::Serialize>(
        &self,
        kind: &str,
        data: &T,
        version: u64,
    ) -> Result<u64, VaultError> {
        let path = self.path(kind);
        let cas = u32::try_from(version).map_err(|_| VaultError::Refused {
            addr: self.addr().to_owned(),
            path: path.clone(),
            reason: format!("version {version} is beyond check-and-set's range"),
        })?;
        let result = vaultrs::kv2::set_with_options(
            &*self.client(),
            &self.inner.settings.mount,
            &path,
            data,
            vaultrs::api::kv2::requests::SetSecretRequestOptions { cas },
        )
        .await;
        match result {
            Err(vaultrs::error::ClientError::APIError { code: 400, errors })
                if errors.iter().any(|e| e.contains("check-and-set")) =>
            {
                self.inner.reachable.store(true, Ordering::SeqCst);
                Err(VaultError::Conflict {
                    addr: self.addr().to_owned(),
                    path,
                    version,
                })
            }
            other => self.once(&path, other).map(|m| m.version),
        }
    }

    /// The outcome of one call to Vault as a [`VaultError`], recording
    /// whether Vault answered.
    fn once<T>(
        &self,
        path: &str,
        result: Result<T, vaultrs::error::ClientError>,
    ) -> Result<T, VaultError> {
        match result {
            Ok(v) => {
                self.inner.reachable.store(true, Ordering::SeqCst);
                Ok(v)
            }
            Err(e) if !transient(&e) => {
                self.inner.reachable.store(true, Ordering::SeqCst);
                let reason = match &e {
                    vaultrs::error::ClientError::APIError { code, .. } => format!("status {code}"),
                    other => other.to_string(),
                };
                Err(VaultError::Refused {
                    addr: self.addr().to_owned(),
                    path: path.to_owned(),
                    reason,
                })
            }
            Err(e) => {
                self.inner.reachable.store(false, Ordering::SeqCst);
                Err(VaultError::Unreachable {
                    addr: self.addr().to_owned(),
                    path: path.to_owned(),
                    waited: Duration::ZERO,
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Re-reads this service's static KV secret `kind` every `every` until
    /// `stop` and hands each value to `apply`, for secrets that change
    /// under a running service (rotated signing keys). A failed read, or a
    /// value `apply` refuses (its error, which must hold nothing secret),
    /// keeps what the service holds: logged, and counted in
    /// `tallyhouse_vault_secret_reloads_total{kind, outcome}` (`ok`,
    /// `read_failed`, `refused`).
    pub fn keep_reading<T, F>(
        &self,
        kind: &'static str,
        every: Duration,
        apply: F,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T) -> Result<(), String> + Send + 'static,
    {
        let vault = self.clone();
        for outcome in ["ok", "read_failed", "refused"] {
            let _ = vault
                .inner
                .reloads
                .get_or_create(&ReloadLabels { kind, outcome });
        }
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is now: the caller has just read it
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let outcome = match vault.read_versioned::<T>(kind).await {
                    Ok((value, _)) => match apply(value) {
                        Ok(()) => "ok",
                        Err(e) => {
                            tracing::warn!(kind, error = %e, "refused the secret read again from Vault; keeping the one held");
                            "refused"
                        }
                    },
                    Err(e) => {
                        tracing::warn!(kind, error = %e, "cannot read the secret again from Vault; keeping the one held");
                        "read_failed"
                    }
                };
                vault
                    .inner
                    .reloads
                    .get_or_create(&ReloadLabels { kind, outcome })
                    .inc();
            }
        })
    }

    /// Reads a secret with a lease at the API path `path` (e.g.
    /// `database/creds/tallyhouse-registry`), retrying transient failures
    /// for up to `bound`.
    pub async fn read_leased<T: DeserializeOwned>(
        &self,
        path: &str,
        bound: Duration,
    ) -> Result<Leased<T>, VaultError> {
        let url = format!("{}/v1/{}", self.addr().trim_end_matches('/'), path);
        self.retrying(path, bound, || self.get_json::<LeaseEnvelope<T>>(&url))
            .await
            .map(|e| Leased {
                value: e.data,
                lease: LeaseInfo {
                    lease_id: e.lease_id,
                    ttl: Duration::from_secs(e.lease_duration),
                    renewable: e.renewable,
                },
            })
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<T, vaultrs::error::ClientError> {
        let token = self.inner.token.lock().expect("token lock").token.clone();
        let response = self
            .inner
            .http
            .get(url)
            .header("X-Vault-Token", token.expose_secret())
            .send()
            .await;
        decode_response(response).await
    }

    async fn renew_lease(
        &self,
        lease_id: &str,
        increment: Duration,
    ) -> Result<Duration, vaultrs::error::ClientError> {
        let url = format!("{}/v1/sys/leases/renew", self.addr().trim_end_matches('/'));
        let token = self.inner.token.lock().expect("token lock").token.clone();
        let response = self
            .inner
            .http
            .put(url)
            .header("X-Vault-Token", token.expose_secret())
            .json(&serde_json::json!({
                "lease_id": lease_id,
                "increment": increment.as_secs(),
            }))
            .send()
            .await;
        let renewed: RenewEnvelope = decode_response(response).await?;
        Ok(Duration::from_secs(renewed.lease_duration))
    }

    fn track_lease(&self, kind: &'static str, state: LeaseState) {
        self.inner
            .leases
            .lock()
            .expect("lease lock")
            .insert(kind, state);
    }

    fn count(&self, what: &'static str, outcome: &'static str) {
        self.inner
            .renewals
            .get_or_create(&RenewalLabels { what, outcome })
            .inc();
    }

    /// Keeps the lease of `first` (read from `path`) alive until `stop`:
    /// renews it at about two thirds of its TTL; when the engine grants less
    /// than half the TTL asked for (its max TTL is near) or the lease cannot
    /// be renewed, reads fresh credentials from `path` and hands them to
    /// `on_new` (which moves the pool to them) before the old ones expire.
    /// While Vault is away it retries with backoff; if the lease expires
    /// meanwhile, [`Vault::gate`] refuses calls until fresh ones arrive.
    pub fn keep_leased<T, F>(
        &self,
        kind: &'static str,
        path: String,
        first: &LeaseInfo,
        on_new: F,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T) + Send + 'static,
    {
        let vault = self.clone();
        let mut lease_id = first.lease_id.clone();
        let mut granted = first.ttl;
        let mut renewable = first.renewable;
        let wanted = first.ttl;
        let mut expires_at = Instant::now() + first.ttl;
        vault.track_lease(
            kind,
            LeaseState {
                expires_at,
                expired: false,
            },
        );
        tokio::spawn(async move {
            if wanted.is_zero() {
                return; // not a lease (a static secret read through the API)
            }
            let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
            let mut next = expires_at - granted / 3;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(next) => {}
                }
                let now = Instant::now();
                let expired = now >= expires_at;
                if expired {
                    vault.track_lease(
                        kind,
                        LeaseState {
                            expires_at,
                            expired: true,
                        },
                    );
                }
                // Renew while the lease lives and can be extended enough.
                if !expired && renewable {
                    match vault.renew_lease(&lease_id, wanted).await {
                        Ok(got) if got >= wanted / 2 => {
                            vault.inner.reachable.store(true, Ordering::SeqCst);
                            vault.count("lease", "renewed");
                            granted = got;
                            expires_at = Instant::now() + got;
                            vault.track_lease(
                                kind,
                                LeaseState {
                                    expires_at,
                                    expired: false,
                                },
                            );
                            backoff.reset();
                            next = expires_at - granted / 3;
                            continue;
                        }
                        Ok(got) => {
                            // Near its max TTL: time for fresh credentials.
                            vault.inner.reachable.store(true, Ordering::SeqCst);
                            vault.count("lease", "capped");
                            expires_at = Instant::now() + got;
                            vault.track_lease(
                                kind,
                                LeaseState {
                                    expires_at,
                                    expired: false,
                                },
                            );
                        }
                        Err(e) => {
                            if transient(&e) {
                                vault.inner.reachable.store(false, Ordering::SeqCst);
                            }
                            vault.count("lease", "failed");
                            tracing::warn!(kind, error = %e, "cannot renew the lease; fetching fresh credentials");
                        }
                    }
                }
                let url = format!("{}/v1/{}", vault.addr().trim_end_matches('/'), path);
                match vault.get_json::<LeaseEnvelope<T>>(&url).await {
                    Ok(fresh) => {
                        vault.inner.reachable.store(true, Ordering::SeqCst);
                        vault.count("lease", "replaced");
                        on_new(fresh.data);
                        lease_id = fresh.lease_id;
                        granted = Duration::from_secs(fresh.lease_duration);
                        renewable = fresh.renewable;
                        expires_at = Instant::now() + granted;
                        vault.track_lease(
                            kind,
                            LeaseState {
                                expires_at,
                                expired: false,
                            },
                        );
                        tracing::info!(
                            kind,
                            ttl_secs = granted.as_secs(),
                            "fresh credentials from Vault in use"
                        );
                        backoff.reset();
                        next = expires_at - granted / 3;
                    }
                    Err(e) => {
                        if transient(&e) {
                            vault.inner.reachable.store(false, Ordering::SeqCst);
                        }
                        vault.count("lease", "fetch_failed");
                        let left = expires_at.saturating_duration_since(Instant::now());
                        tracing::warn!(
                            kind,
                            error = %e,
                            left_secs = left.as_secs(),
                            "cannot get fresh credentials from Vault; holding the current ones"
                        );
                        next = Instant::now() + backoff.next_delay();
                    }
                }
            }
        })
    }

    /// Keeps the token valid until `stop`: renews it at about two thirds of
    /// its TTL; when that fails, logs in again with AppRole (or, with a
    /// given token, keeps trying to renew until it expires), with backoff.
    /// Does nothing for a token that does not expire.
    pub fn keep_token(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let vault = self.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
            let mut next = None;
            loop {
                let (expires_at, ttl, renewable) = {
                    let t = vault.inner.token.lock().expect("token lock");
                    (t.expires_at, t.ttl, t.renewable)
                };
                let Some(expires_at) = expires_at else {
                    return;
                };
                let at = next.unwrap_or(expires_at - ttl / 3);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(at) => {}
                }
                let approle = matches!(vault.inner.settings.auth, VaultAuth::AppRole { .. });
                let renewed = if renewable {
                    match vaultrs::token::renew_self(&*vault.client(), None).await {
                        Ok(auth) => {
                            let granted = Duration::from_secs(auth.lease_duration);
                            let (token, login_ttl) = {
                                let t = vault.inner.token.lock().expect("token lock");
                                (t.token.clone(), t.login_ttl)
                            };
                            vault.install_token(token, granted, auth.renewable);
                            if approle && granted < login_ttl / 2 {
                                // Its max TTL is near: a new login before it ends.
                                Err(vaultrs::error::ClientError::APIError {
                                    code: 400,
                                    errors: vec!["the token is near its max TTL".to_owned()],
                                })
                            } else {
                                Ok(())
                            }
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    Err(vaultrs::error::ClientError::APIError {
                        code: 400,
                        errors: vec!["the token is not renewable".to_owned()],
                    })
                };
                let outcome = match renewed {
                    Ok(()) => Ok("renewed"),
                    Err(e) => match &vault.inner.settings.auth {
                        VaultAuth::AppRole { .. } => {
                            tracing::warn!(error = %e, "cannot renew the Vault token; logging in again");
                            vault
                                .authenticate()
                                .await
                                .map(|()| "relogin")
                                .map_err(|e2| (e, e2))
                        }
                        VaultAuth::Token(_) => Err((
                            e,
                            vaultrs::error::ClientError::APIError {
                                code: 0,
                                errors: Vec::new(),
                            },
                        )),
                    },
                };
                match outcome {
                    Ok(how) => {
                        vault.inner.reachable.store(true, Ordering::SeqCst);
                        vault.count("token", how);
                        backoff.reset();
                        next = None;
                    }
                    Err((e, _)) => {
                        vault
                            .inner
                            .reachable
                            .store(!transient(&e), Ordering::SeqCst);
                        vault.count("token", "failed");
                        tracing::warn!(error = %e, "cannot renew or replace the Vault token; retrying");
                        next = Some(Instant::now() + backoff.next_delay());
                    }
                }
            }
        })
    }

    /// Refuses work once a held lease has expired (Vault away too long):
    /// `secrets_expired`, retryable. For [`crate::rpc::RpcServer::gated`].
    pub fn gate(&self) -> crate::rpc::Gate {
        let vault = self.clone();
        Arc::new(move || {
            vault.expired_lease().map(|kind| {
                RpcError::new(
                    ErrorCode::SecretsExpired,
                    format!(
                        "the {kind} credentials leased from Vault have expired and Vault cannot be reached for new ones; retry later"
                    ),
                )
            })
        })
    }

    fn expired_lease(&self) -> Option<&'static str> {
        let now = Instant::now();
        self.inner
            .leases
            .lock()
            .expect("lease lock")
            .iter()
            .find(|(_, s)| s.expired || now >= s.expires_at)
            .map(|(kind, _)| *kind)
    }

    /// For the readiness check: Ok while every held lease is valid (Vault
    /// may be away meanwhile: the service still works); the reason otherwise.
    pub fn check(&self) -> Result<(), String> {
        match self.expired_lease() {
            Some(kind) => Err(format!(
                "{kind} credentials expired; Vault at {} unreachable",
                self.addr()
            )),
            None => Ok(()),
        }
    }

    /// Whether the last call to Vault got an answer.
    pub fn reachable(&self) -> bool {
        self.inner.reachable.load(Ordering::SeqCst)
    }

    /// Registers the Vault metrics: the token's and each lease's seconds
    /// left, whether Vault answered last time, and renewals by outcome.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("tallyhouse_vault");
        sub.register(
            "renewals",
            "Token and lease renewals, re-logins and replacements, by outcome",
            self.inner.renewals.clone(),
        );
        sub.register(
            "secret_reloads",
            "Periodic re-reads of static secrets (rotated signing keys), by kind and outcome",
            self.inner.reloads.clone(),
        );
        sub.register_collector(Box::new(VaultCollector {
            vault: self.clone(),
        }));
    }
}

#[derive(Debug)]
struct VaultCollector {
    vault: Vault,
}

impl Collector for VaultCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = Instant::now();
        let inner = &self.vault.inner;
        let token_left = {
            let t = inner.token.lock().expect("token lock");
            t.expires_at
                .map(|at| at.saturating_duration_since(now).as_secs_f64())
        };
        if let Some(left) = token_left {
            let metric = ConstGauge::new(left);
            let e = encoder.encode_descriptor(
                "token_seconds_remaining",
                "Seconds until the service's Vault token expires (absent for a token without expiry)",
                None,
                metric.metric_type(),
            )?;
            metric.encode(e)?;
        }
        let leases: Vec<_> = inner
            .leases
            .lock()
            .expect("lease lock")
            .iter()
            .map(|(k, s)| {
                (
                    *k,
                    s.expires_at.saturating_duration_since(now).as_secs_f64(),
                )
            })
            .collect();
        if !leases.is_empty() {
            let mut family = encoder.encode_descriptor(
                "lease_seconds_remaining",
                "Seconds until each secret leased from Vault expires, by kind",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (kind, left) in leases {
                let labels = [("kind", kind)];
                let e = family.encode_family(&labels)?;
                ConstGauge::new(left).encode(e)?;
            }
        }
        let up = ConstGauge::new(i64::from(inner.reachable.load(Ordering::SeqCst)));
        let e = encoder.encode_descriptor(
            "reachable",
            "1 when the last call to Vault got an answer, 0 when Vault was unreachable or sealed",
            None,
            up.metric_type(),
        )?;
        up.encode(e)?;
        Ok(())
    }
}

async fn decode_response<T: DeserializeOwned>(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<T, vaultrs::error::ClientError> {
    let response = response.map_err(|e| vaultrs::error::ClientError::APIError {
        code: 503,
        errors: vec![format!("unreachable: {e}")],
    })?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        return Err(vaultrs::error::ClientError::APIError {
            code: status,
            errors: Vec::new(),
        });
    }
    response
        .json::<T>()
        .await
        .map_err(|e| vaultrs::error::ClientError::APIError {
            code: 502,
            errors: vec![format!("undecodable answer: {e}")],
        })
}
