//! The packages and records tables, written with tokio-postgres: one
//! transaction per package holding its row and its records (binary COPY), so
//! nothing half-stored is ever visible.

use deadpool_postgres::{Connect, Hook, HookError, Manager, ManagerConfig, Pool, Runtime};
use evidence::Record;
use futures_util::future::BoxFuture;
use platform::db::{DatabaseArgs, DatabaseCredentials, Rotation};
use rpc_contracts::{ErrorCode, RpcError};
use secrecy::ExposeSecret as _;
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use time::{Date, OffsetDateTime};
use tokio_postgres::NoTls;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, Type};

/// One package's row.
#[derive(Debug, Clone)]
pub struct PackageRow {
    pub submitter_id: String,
    pub package_id: uuid::Uuid,
    pub sha256: [u8; 32],
    pub size_bytes: i64,
    pub record_count: i32,
    pub key_id: String,
    pub signature: Vec<u8>,
    pub audience: String,
    pub created_at: OffsetDateTime,
    pub received_at: OffsetDateTime,
    pub blob_key: String,
    pub receipt: String,
}

/// What is already stored for a `(submitter_id, package_id)`.
#[derive(Debug, Clone)]
pub struct Existing {
    pub sha256: Vec<u8>,
    pub receipt: String,
}

/// The time-series tables.
pub struct RecordStore {
    pool: Pool,
    login: Arc<RwLock<DatabaseCredentials>>,
    rotation: Rotation,
    known_days: Mutex<HashSet<Date>>,
}

/// Connects with the login in use at the time (it changes when a leased
/// login is replaced).
struct CurrentLogin(Arc<RwLock<DatabaseCredentials>>);

impl Connect for CurrentLogin {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let mut config = pg_config.clone();
        {
            let login = self.0.read().expect("login lock");
            config
                .user(&login.username)
                .password(login.password.expose_secret());
        }
        Box::pin(async move {
            let (client, connection) = config.connect(NoTls).await?;
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "database connection closed");
                }
            });
            Ok((client, task))
        })
    }
}

/// Maps a database failure while doing `what` to the wire, and logs it once
/// with what the server said ([`platform::db::log_failure`]): lost
/// connections and pool timeouts are `unavailable` (retryable), and so are
/// the server's "not serving now" SQLSTATEs (connection exceptions `08…`,
/// insufficient resources `53…`, shutdown `57P01`–`57P03`, serialization
/// failures and deadlocks `40001`/`40P01`); anything else is unexpected.
pub fn db_error<E: Into<DbFailure>>(what: &'static str) -> impl FnOnce(E) -> RpcError {
    move |failure| {
        let failure = failure.into();
        let (unavailable, server) = match &failure {
            DbFailure::Pool(_) => (true, None),
            DbFailure::Pg(e) => match e.as_db_error() {
                None => (true, None),
                Some(db) => {
                    let unavailable = platform::db::is_unavailable_sqlstate(db.code().code());
                    (unavailable, Some(server_error(db)))
                }
            },
        };
        platform::db::log_failure(what, unavailable, &failure, server.as_ref());
        if unavailable {
            RpcError::new(
                ErrorCode::Unavailable,
                format!("the database is unavailable ({what}); retry later"),
            )
        } else {
            RpcError::new(ErrorCode::Internal, format!("database error while {what}"))
        }
    }
}

/// The server's report, field by field, for the log.
fn server_error(db: &tokio_postgres::error::DbError) -> platform::db::ServerError {
    platform::db::ServerError {
        sqlstate: db.code().code().to_owned(),
        message: db.message().to_owned(),
        detail: db.detail().map(str::to_owned),
        hint: db.hint().map(str::to_owned),
        schema: db.schema().map(str::to_owned),
        table: db.table().map(str::to_owned),
        column: db.column().map(str::to_owned),
        constraint: db.constraint().map(str::to_owned),
        context: db.where_().map(str::to_owned),
    }
}

/// The SQLSTATE of a server error, if `e` is one.
fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|db| db.code().code())
}

/// A failure from the pool or from PostgreSQL.
#[derive(Debug)]
pub enum DbFailure {
    Pool(deadpool_postgres::PoolError),
    Pg(tokio_postgres::Error),
}

impl std::fmt::Display for DbFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pool(e) => write!(f, "{e}"),
            Self::Pg(e) => write!(f, "{e}"),
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbFailure {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Pool(e)
    }
}

impl From<tokio_postgres::Error> for DbFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Pg(e)
    }
}

/// Sorted days as runs of consecutive days, `(first, last)`.
fn runs(days: &[Date]) -> Vec<(Date, Date)> {
    let mut runs: Vec<(Date, Date)> = Vec::new();
    for &d in days {
        match runs.last_mut() {
            Some((_, last)) if last.next_day() == Some(d) => *last = d,
            _ => runs.push((d, d)),
        }
    }
    runs
}

const RECORD_TYPES: [Type; 7] = [
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::FLOAT8,
    Type::JSONB,
    Type::UUID,
    Type::INT4,
];

impl RecordStore {
    /// The pool (readiness check and pool metrics).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A pool to the time-series database, logged in as `creds`; see
    /// [`RecordStore::use_login`] for moving it to fresh credentials.
    pub fn connect(args: &DatabaseArgs, creds: &DatabaseCredentials) -> anyhow::Result<Self> {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&args.database_host)
            .port(args.database_port)
            .dbname(&args.database_name)
            .application_name("tallyhouse-ingest")
            .connect_timeout(std::time::Duration::from_secs(5));
        if let Some(role) = &args.database_group_role {
            // Role names here are identifiers from configuration.
            pg.options(format!("-c role={role}"));
        }
        let login = Arc::new(RwLock::new(creds.clone()));
        let manager =
            Manager::from_connect(pg, CurrentLogin(login.clone()), ManagerConfig::default());
        let rotation = Rotation::default();
        let stale = rotation.clone();
        let pool = Pool::builder(manager)
            .max_size(args.database_pool_size.max(1) as usize)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_millis(
                args.database_acquire_timeout_ms,
            )))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .recycle_timeout(Some(std::time::Duration::from_secs(5)))
            // A connection opened with a previous login is dropped instead
            // of being used again.
            .pre_recycle(Hook::sync_fn(move |_client, metrics| {
                if stale.predates(metrics.created) {
                    Err(HookError::message("opened with a previous login"))
                } else {
                    Ok(())
                }
            }))
            .build()?;
        Ok(Self {
            pool,
            login,
            rotation,
            known_days: Mutex::default(),
        })
    }

    /// New connections log in as `creds`; the ones opened before are
    /// dropped as they come back to the pool.
    pub fn use_login(&self, creds: DatabaseCredentials) {
        *self.login.write().expect("login lock") = creds;
        self.rotation.now();
        self.pool
            .retain(|_, metrics| !self.rotation.predates(metrics.created));
    }

    /// Fails unless the schema is at `expected` (run `ingest migrate` first).
    pub async fn check_schema(&self, expected: i64) -> anyhow::Result<()> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT max(version) FROM _sqlx_migrations WHERE success",
                &[],
            )
            .await;
        let version: Option<i64> = match row {
            Ok(Some(r)) => r.get(0),
            _ => None,
        };
        anyhow::ensure!(
            version == Some(expected),
            "the time-series schema is at version {version:?}, this build needs {expected}: run `ingest migrate`"
        );
        Ok(())
    }

    /// What is stored for this package id, if anything.
    pub async fn existing(
        &self,
        submitter_id: &str,
        package_id: uuid::Uuid,
    ) -> Result<Option<Existing>, RpcError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(db_error("reading a stored package"))?;
        let row = client
            .query_opt(
                "SELECT sha256, receipt FROM packages WHERE submitter_id = $1 AND package_id = $2",
                &[&submitter_id, &package_id],
            )
            .await
            .map_err(db_error("reading a stored package"))?;
        Ok(row.map(|r| Existing {
            sha256: r.get(0),
            receipt: r.get(1),
        }))
    }

    /// Makes sure a partition exists for each of `days` (UTC days; the
    /// ones records fall on, bounded by the record age checks before it is
    /// called): one call of the database function per run of consecutive
    /// days, only for runs with a day not known to exist. Days between two
    /// runs get no partition: a back-filled package creates the days it
    /// reports, not every day since. Safe under any concurrency: the
    /// function serialises creators per day (migration 0004); should
    /// another creator still win a race (42P07, or 23505 on the catalog),
    /// the partition exists, and one more call confirms it.
    pub async fn ensure_partitions(&self, days: &BTreeSet<Date>) -> Result<(), RpcError> {
        const WHAT: &str = "creating the records' partitions";
        let missing: Vec<Date> = {
            let known = self.known_days.lock().expect("days lock");
            days.iter()
                .filter(|d| !known.contains(d))
                .copied()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await.map_err(db_error(WHAT))?;
        for (first, last) in runs(&missing) {
            let from = first.midnight().assume_utc();
            let to = last.midnight().assume_utc();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&from, &to];
            let ensure = || client.execute("SELECT tallyhouse_ensure_partitions($1, $2)", &params);
            match ensure().await {
                Ok(_) => {}
                Err(e) if matches!(sqlstate(&e), Some("42P07" | "23505")) => {
                    tracing::info!(
                        sqlstate = sqlstate(&e),
                        "a partition was created concurrently; checking again"
                    );
                    ensure().await.map_err(db_error(WHAT))?;
                }
                Err(e) => return Err(db_error(WHAT)(e)),
            }
        }
        self.known_days.lock().expect("days lock").extend(missing);
        Ok(())
    }

    /// Stores the package row and its records in one transaction. Returns
    /// `false` (and stores nothing) when a row for this package id exists.
    pub async fn insert(&self, row: &PackageRow, records: &[Record]) -> Result<bool, RpcError> {
        const WHAT: &str = "storing the package and its records";
        let mut client = self.pool.get().await.map_err(db_error(WHAT))?;
        let tx = client.transaction().await.map_err(db_error(WHAT))?;
        let inserted = tx
            .execute(
                "INSERT INTO packages (submitter_id, package_id, sha256, size_bytes, record_count, key_id,
                     signature, audience, created_at, received_at, blob_key, receipt)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (submitter_id, package_id) DO NOTHING",
                &[
                    &row.submitter_id,
                    &row.package_id,
                    &row.sha256.as_slice(),
                    &row.size_bytes,
                    &row.record_count,
                    &row.key_id,
                    &row.signature,
                    &row.audience,
                    &row.created_at,
                    &row.received_at,
                    &row.blob_key,
                    &row.receipt,
                ],
            )
            .await
            .map_err(db_error(WHAT))?;
        if inserted == 0 {
            return Ok(false);
        }
        let sink = tx
            .copy_in(
                "COPY records (submitter_id, ts, series, value, labels, package_id, ordinal) FROM STDIN BINARY",
            )
            .await
            .map_err(db_error(WHAT))?;
        let writer = BinaryCopyInWriter::new(sink, &RECORD_TYPES);
        futures_util::pin_mut!(writer);
        for (ordinal, r) in records.iter().enumerate() {
            let ordinal = ordinal as i32;
            writer
                .as_mut()
                .write(&[
                    &row.submitter_id,
                    &r.ts,
                    &r.series,
                    &r.value,
                    &Json(&r.labels),
                    &row.package_id,
                    &ordinal,
                ])
                .await
                .map_err(db_error(WHAT))?;
        }
        writer.finish().await.map_err(db_error(WHAT))?;
        tx.commit().await.map_err(db_error(WHAT))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn days_group_into_runs_of_consecutive_days() {
        let days = [
            date!(2026 - 02 - 27),
            date!(2026 - 02 - 28),
            date!(2026 - 03 - 01),
            date!(2026 - 03 - 05),
            date!(2026 - 12 - 31),
            date!(2027 - 01 - 01),
        ];
        assert_eq!(
            runs(&days),
            vec![
                (date!(2026 - 02 - 27), date!(2026 - 03 - 01)),
                (date!(2026 - 03 - 05), date!(2026 - 03 - 05)),
                (date!(2026 - 12 - 31), date!(2027 - 01 - 01)),
            ]
        );
        assert!(runs(&[]).is_empty());
    }
}
