//! PostgreSQL for the services that own a database: the connection flags
//! ([`DatabaseArgs`]), the credentials read from Vault
//! ([`DatabaseCredentials`]), a pool that waits for the server at start-up
//! ([`connect`]), and the one mapping from `sqlx` errors to wire errors
//! ([`rpc_error`]): the server being down is `unavailable` (retryable),
//! anything unexpected is `internal`, logged once here.

use crate::amqp::Backoff;
use crate::vault::{LeaseInfo, Vault, VaultError};
use rpc_contracts::{ErrorCode, RpcError};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where a service's database is, and how its pool behaves. The user name
/// and password are not flags: they come from Vault ([`DatabaseCredentials`]).
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL host.
    #[arg(long, env = "TALLYHOUSE_DATABASE_HOST", default_value = "127.0.0.1")]
    pub database_host: String,

    /// PostgreSQL port.
    #[arg(long, env = "TALLYHOUSE_DATABASE_PORT", default_value_t = 5432)]
    pub database_port: u16,

    /// Name of the service's database (e.g. `tallyhouse_registry`).
    #[arg(long, env = "TALLYHOUSE_DATABASE_NAME", required = true)]
    pub database_name: String,

    /// Most connections the pool holds open at once.
    #[arg(long, env = "TALLYHOUSE_DATABASE_POOL_SIZE", default_value_t = 10)]
    pub database_pool_size: u32,

    /// How long a query waits for a pooled connection before failing with
    /// `unavailable`, in milliseconds.
    #[arg(
        long,
        env = "TALLYHOUSE_DATABASE_ACQUIRE_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub database_acquire_timeout_ms: u64,

    /// How long start-up waits for an unreachable database before giving up, in seconds.
    #[arg(
        long,
        env = "TALLYHOUSE_DATABASE_STARTUP_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub database_startup_timeout_secs: u64,

    /// Role of Vault's database secrets engine to get a leased login from
    /// (`<mount>/creds/<role>`). Unset: the login is the service's static
    /// `database` secret in KV.
    #[arg(long, env = "TALLYHOUSE_DATABASE_VAULT_ROLE")]
    pub database_vault_role: Option<String>,

    /// Mount of Vault's database secrets engine.
    #[arg(
        long,
        env = "TALLYHOUSE_DATABASE_VAULT_MOUNT",
        default_value = "database"
    )]
    pub database_vault_mount: String,

    /// Role every session switches to (`SET ROLE` at connection start), so
    /// that the objects the service creates belong to one stable owner
    /// rather than to short-lived leased logins (which are its members).
    #[arg(long, env = "TALLYHOUSE_DATABASE_GROUP_ROLE")]
    pub database_group_role: Option<String>,
}

/// The `database` secret of a service in Vault: its PostgreSQL login.
#[derive(Clone, Deserialize)]
pub struct DatabaseCredentials {
    /// PostgreSQL role.
    pub username: String,
    /// Its password (never logged: `Debug` hides it).
    pub password: SecretString,
}

impl fmt::Debug for DatabaseCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseCredentials")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

impl DatabaseCredentials {
    /// Reads the service's `database` secret.
    pub async fn from_vault(vault: &Vault) -> Result<Self, VaultError> {
        vault.read("database").await
    }
}

/// The KV `database` secret: a login, and the database it is for when that
/// is another service's (the query service reads ingest's).
#[derive(Deserialize)]
struct DatabaseSecret {
    #[serde(flatten)]
    login: DatabaseCredentials,
    database: Option<String>,
}

/// A service's database login: from KV, or leased from the database secrets
/// engine (then kept fresh with [`DatabaseLogin::keep_fresh`]).
#[derive(Debug)]
pub struct DatabaseLogin {
    /// The current credentials.
    pub creds: DatabaseCredentials,
    /// The database the KV secret names, if it names one.
    pub database: Option<String>,
    lease: Option<(String, LeaseInfo)>,
}

impl DatabaseLogin {
    /// Reads the login `args` asks for: leased from
    /// `<database_vault_mount>/creds/<database_vault_role>` when a role is
    /// set, the KV `database` secret otherwise.
    pub async fn from_vault(vault: &Vault, args: &DatabaseArgs) -> Result<Self, VaultError> {
        match &args.database_vault_role {
            Some(role) => {
                let path = format!("{}/creds/{role}", args.database_vault_mount);
                let leased = vault
                    .read_leased::<DatabaseCredentials>(
                        &path,
                        Duration::from_secs(args.database_startup_timeout_secs),
                    )
                    .await?;
                tracing::info!(
                    user = %leased.value.username,
                    ttl_secs = leased.lease.ttl.as_secs(),
                    "leased database login from Vault"
                );
                Ok(Self {
                    creds: leased.value,
                    database: None,
                    lease: Some((path, leased.lease)),
                })
            }
            None => {
                let secret: DatabaseSecret = vault.read("database").await?;
                Ok(Self {
                    creds: secret.login,
                    database: secret.database,
                    lease: None,
                })
            }
        }
    }

    /// Whether the login is leased (and so will be replaced).
    pub fn is_leased(&self) -> bool {
        self.lease.is_some()
    }

    /// Keeps a leased login alive (see [`Vault::keep_leased`]); `on_new`
    /// gets each replacement. Nothing to do for a KV login.
    pub fn keep_fresh<F>(&self, vault: &Vault, on_new: F)
    where
        F: Fn(DatabaseCredentials) + Send + 'static,
    {
        if let Some((path, lease)) = &self.lease {
            vault.keep_leased(
                "database",
                path.clone(),
                lease,
                on_new,
                CancellationToken::new(),
            );
        }
    }
}

/// The connection options of `args`' database as `creds`: named
/// `application` in `pg_stat_activity`, switching to the group role when
/// one is set. Parameters come only from here, never from `PG*` variables
/// or `.pgpass`.
pub fn connect_options(
    application: &str,
    args: &DatabaseArgs,
    creds: &DatabaseCredentials,
) -> PgConnectOptions {
    let options = PgConnectOptions::new_without_pgpass()
        .host(&args.database_host)
        .port(args.database_port)
        .username(&creds.username)
        .password(creds.password.expose_secret())
        .database(&args.database_name)
        .application_name(application)
        // The workspace builds sqlx without a TLS stack; `prefer` would
        // silently fall back anyway. Say so explicitly.
        .ssl_mode(PgSslMode::Disable);
    match &args.database_group_role {
        Some(role) => options.options([("role", role.clone())]),
        None => options,
    }
}

/// Why the database could not be reached at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server did not answer within the start-up bound.
    #[error("PostgreSQL at {addr} (database {database}) was unreachable for {waited:?}: {reason}")]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// The database name.
        database: String,
        /// How long we tried.
        waited: Duration,
        /// The last error.
        reason: String,
    },
    /// The server answered but refused (bad credentials, missing database...).
    #[error("PostgreSQL at {addr} refused to connect to database {database}: {reason}")]
    Refused {
        /// `host:port`.
        addr: String,
        /// The database name.
        database: String,
        /// What the server said.
        reason: String,
    },
}

/// A pool for `args`' database, logged in as `creds`, named `application`
/// in `pg_stat_activity`. Waits (with backoff) while the server is
/// unreachable, up to the start-up bound; a refusal (authentication, missing
/// database) fails at once.
pub async fn connect(
    application: &str,
    args: &DatabaseArgs,
    creds: &DatabaseCredentials,
) -> Result<PgPool, ConnectError> {
    let pool =
        pool_options(args, None).connect_lazy_with(connect_options(application, args, creds));
    wait_reachable(&pool, args, &creds.username).await?;
    Ok(pool)
}

fn pool_options(args: &DatabaseArgs, rotated: Option<Rotation>) -> PgPoolOptions {
    let options = PgPoolOptions::new()
        .max_connections(args.database_pool_size.max(1))
        .acquire_timeout(Duration::from_millis(args.database_acquire_timeout_ms));
    match rotated {
        // A connection opened before the last rotation, with the previous
        // login, is closed rather than used again.
        Some(rotation) => {
            let before = rotation.clone();
            options
                .before_acquire(move |_conn, meta| {
                    let fresh = !before.opened_before(meta.age);
                    Box::pin(async move { Ok(fresh) })
                })
                .after_release(move |_conn, meta| {
                    let fresh = !rotation.opened_before(meta.age);
                    Box::pin(async move { Ok(fresh) })
                })
        }
        None => options,
    }
}

/// When the pool last moved to new credentials.
#[derive(Clone, Default)]
pub struct Rotation(Arc<Mutex<Option<std::time::Instant>>>);

impl Rotation {
    /// Marks now as the moment new credentials came into use.
    pub fn now(&self) {
        *self.0.lock().expect("rotation lock") = Some(std::time::Instant::now());
    }

    /// Whether a connection of age `age` was opened before the last rotation.
    pub fn opened_before(&self, age: Duration) -> bool {
        self.0.lock().expect("rotation lock").is_some_and(|at| {
            std::time::Instant::now()
                .checked_sub(age)
                .is_some_and(|opened| opened < at)
        })
    }

    /// Whether an object created at `created` predates the last rotation.
    pub fn predates(&self, created: std::time::Instant) -> bool {
        self.0
            .lock()
            .expect("rotation lock")
            .is_some_and(|at| created < at)
    }
}

async fn wait_reachable(
    pool: &PgPool,
    args: &DatabaseArgs,
    user: &str,
) -> Result<(), ConnectError> {
    let addr = format!("{}:{}", args.database_host, args.database_port);
    let bound = Duration::from_secs(args.database_startup_timeout_secs);
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match pool.acquire().await {
            Ok(_conn) => {
                tracing::info!(
                    database = %args.database_name,
                    addr = %addr,
                    user = %user,
                    "database reachable"
                );
                return Ok(());
            }
            Err(e) if is_unavailable(&e) => {
                let waited = started.elapsed();
                if waited >= bound {
                    return Err(ConnectError::Unreachable {
                        addr,
                        database: args.database_name.clone(),
                        waited,
                        reason: e.to_string(),
                    });
                }
                tracing::warn!(addr = %addr, error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                return Err(ConnectError::Refused {
                    addr,
                    database: args.database_name.clone(),
                    reason: e.to_string(),
                });
            }
        }
    }
}

/// Reads the service's database login from Vault (see
/// [`DatabaseLogin::from_vault`]) and connects (see [`connect_managed`]).
pub async fn connect_with_vault(
    application: &str,
    args: &DatabaseArgs,
    vault: &Vault,
) -> anyhow::Result<PgPool> {
    connect_managed(application, args, vault, |o| o).await
}

/// Like [`connect_with_vault`], with `customize` applied to the connection
/// options (session settings, say). A leased login is kept fresh: each
/// replacement becomes the options of new connections, and connections
/// opened with the previous login are closed as they are next acquired or
/// released, well before it expires.
pub async fn connect_managed<F>(
    application: &str,
    args: &DatabaseArgs,
    vault: &Vault,
    customize: F,
) -> anyhow::Result<PgPool>
where
    F: Fn(PgConnectOptions) -> PgConnectOptions + Send + Sync + 'static,
{
    let login = DatabaseLogin::from_vault(vault, args).await?;
    if let Some(named) = &login.database {
        anyhow::ensure!(
            *named == args.database_name,
            "the database secret is a login for {named}, but --database-name is {}",
            args.database_name
        );
    }
    let rotation = Rotation::default();
    let pool = pool_options(args, login.is_leased().then(|| rotation.clone()))
        .connect_lazy_with(customize(connect_options(application, args, &login.creds)));
    wait_reachable(&pool, args, &login.creds.username).await?;
    let (application, args2, handle) = (application.to_owned(), args.clone(), pool.clone());
    login.keep_fresh(vault, move |creds| {
        handle.set_connect_options(customize(connect_options(&application, &args2, &creds)));
        rotation.now();
        tracing::info!(user = %creds.username, "database pool moved to a fresh login");
    });
    Ok(pool)
}

/// The SQLSTATE of a database error, if `err` is one.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Whether `err` means "the database is not reachable or not serving now":
/// I/O and TLS failures, an exhausted or closed pool, and the SQLSTATEs of
/// connection exceptions (`08…`), insufficient resources (`53…`), operator
/// intervention (`57P01`–`57P03`) and serialization failures or deadlocks
/// (`40001`, `40P01`). Retrying later may succeed.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_unavailable_sqlstate(&code)),
        _ => false,
    }
}

/// Whether a server error's SQLSTATE means "not serving now, retry later"
/// (the codes [`is_unavailable`] lists); for services on another driver.
pub fn is_unavailable_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
}

/// Whether `err` is a unique violation, of `constraint` if given.
pub fn is_unique_violation(err: &sqlx::Error, constraint: Option<&str>) -> bool {
    violation(err, sqlx::error::ErrorKind::UniqueViolation, constraint)
}

/// Whether `err` is a foreign-key violation, of `constraint` if given.
pub fn is_foreign_key_violation(err: &sqlx::Error, constraint: Option<&str>) -> bool {
    violation(err, sqlx::error::ErrorKind::ForeignKeyViolation, constraint)
}

/// Whether `err` is a check-constraint violation, of `constraint` if given.
pub fn is_check_violation(err: &sqlx::Error, constraint: Option<&str>) -> bool {
    violation(err, sqlx::error::ErrorKind::CheckViolation, constraint)
}

fn violation(err: &sqlx::Error, kind: sqlx::error::ErrorKind, constraint: Option<&str>) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.kind() == kind && constraint.is_none_or(|c| db.constraint() == Some(c))
        }
        _ => false,
    }
}

/// The wire error for a database failure the handler has no better answer
/// for: `unavailable` (retryable) when the database is down or busy, and
/// `internal` otherwise. Logs it once, here, with what the server said
/// ([`ServerError`]); the message on the wire names only `what` was being
/// done. Handlers map the errors they expect (a unique violation meaning
/// `conflict`, say) before calling this.
pub fn rpc_error(what: &str, err: &sqlx::Error) -> RpcError {
    let server = ServerError::from_sqlx(err);
    if is_unavailable(err) {
        log_failure(what, true, err, server.as_ref());
        RpcError::new(
            ErrorCode::Unavailable,
            format!("the database is unavailable ({what}); retry later"),
        )
    } else {
        log_failure(what, false, err, server.as_ref());
        RpcError::new(ErrorCode::Internal, format!("database error while {what}"))
    }
}

/// What the PostgreSQL server reported about a failed statement (its
/// `ErrorResponse` fields): the driver's `Display` of an error shows little
/// of it (tokio-postgres prints only "db error"), and the cause of a 500 is
/// in these fields. Built from a `sqlx` error here, or field by field by a
/// service on another driver; logged by [`log_failure`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    /// SQLSTATE, e.g. `42P07`.
    pub sqlstate: String,
    /// The primary message.
    pub message: String,
    /// DETAIL, if any.
    pub detail: Option<String>,
    /// HINT, if any.
    pub hint: Option<String>,
    /// The schema of the object concerned, if any.
    pub schema: Option<String>,
    /// The table concerned, if any.
    pub table: Option<String>,
    /// The column concerned, if any.
    pub column: Option<String>,
    /// The constraint concerned, if any.
    pub constraint: Option<String>,
    /// Where in a function or statement it happened (CONTEXT), if any.
    pub context: Option<String>,
}

impl ServerError {
    /// The server's report inside `err`, if `err` is a server error.
    pub fn from_sqlx(err: &sqlx::Error) -> Option<Self> {
        let sqlx::Error::Database(db) = err else {
            return None;
        };
        let owned = |s: Option<&str>| s.map(str::to_owned);
        Some(
            match db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                Some(pg) => Self {
                    sqlstate: pg.code().to_owned(),
                    message: pg.message().to_owned(),
                    detail: owned(pg.detail()),
                    hint: owned(pg.hint()),
                    schema: owned(pg.schema()),
                    table: owned(pg.table()),
                    column: owned(pg.column()),
                    constraint: owned(pg.constraint()),
                    context: owned(pg.r#where()),
                },
                None => Self {
                    sqlstate: db.code().map(|c| c.into_owned()).unwrap_or_default(),
                    message: db.message().to_owned(),
                    table: owned(db.table()),
                    constraint: owned(db.constraint()),
                    ..Self::default()
                },
            },
        )
    }

    /// The first server report found in `err`'s chain of causes (a job's
    /// `anyhow` error wraps the driver's).
    pub fn find_in(err: &anyhow::Error) -> Option<Self> {
        err.chain()
            .find_map(|cause| cause.downcast_ref::<sqlx::Error>())
            .and_then(Self::from_sqlx)
    }
}

/// A DETAIL without the row values it may quote.
fn redact_detail(detail: &str) -> &str {
    const ROW: &str = "Failing row contains";
    if detail.starts_with(ROW) { ROW } else { detail }
}

/// Logs a database failure once, where it is mapped to a wire error: at
/// `warn` when the database is only unavailable, at `error` otherwise, with
/// every field of the server's report as its own log field (the request's
/// span adds the trace id). A DETAIL that quotes a whole row ("Failing row
/// contains (…)", a check or not-null violation) is cut to its first words:
/// the row may hold a password hash or an encrypted secret. A key's value
/// in a unique violation's DETAIL is an id, and stays.
pub fn log_failure(
    what: &str,
    unavailable: bool,
    err: &dyn std::fmt::Display,
    server: Option<&ServerError>,
) {
    let none = ServerError::default();
    let s = server.unwrap_or(&none);
    let detail = s.detail.as_deref().map(redact_detail);
    macro_rules! emit {
        ($level:ident, $msg:literal) => {
            tracing::$level!(
                error = %err,
                sqlstate = s.sqlstate.as_str(),
                db_message = s.message.as_str(),
                db_detail = detail,
                db_hint = s.hint.as_deref(),
                db_schema = s.schema.as_deref(),
                db_table = s.table.as_deref(),
                db_column = s.column.as_deref(),
                db_constraint = s.constraint.as_deref(),
                db_context = s.context.as_deref(),
                $msg,
                what
            )
        };
    }
    if unavailable {
        emit!(warn, "database unavailable while {}");
    } else {
        emit!(error, "database error while {}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        db: DatabaseArgs,
    }

    #[test]
    fn flags_have_local_defaults_and_the_name_is_required() {
        assert!(Cli::try_parse_from(["svc"]).is_err());
        let cli = Cli::try_parse_from(["svc", "--database-name", "tallyhouse_registry"]).unwrap();
        assert_eq!(cli.db.database_host, "127.0.0.1");
        assert_eq!(cli.db.database_port, 5432);
        assert_eq!(cli.db.database_name, "tallyhouse_registry");
    }

    #[test]
    fn credentials_never_show_the_password() {
        let creds: DatabaseCredentials =
            serde_json::from_str(r#"{"username":"tallyhouse_registry","password":"s3cr3t-pw"}"#)
                .unwrap();
        let shown = format!("{creds:?}");
        assert!(shown.contains("tallyhouse_registry"));
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
    }

    #[test]
    fn pool_and_io_errors_are_unavailable_and_retryable() {
        for err in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        ] {
            assert!(is_unavailable(&err), "{err}");
            let wire = rpc_error("testing", &err);
            assert_eq!(wire.code, ErrorCode::Unavailable);
            assert!(wire.retryable);
        }
        let wire = rpc_error("testing", &sqlx::Error::RowNotFound);
        assert_eq!(wire.code, ErrorCode::Internal);
        assert!(!wire.retryable);
    }
}
