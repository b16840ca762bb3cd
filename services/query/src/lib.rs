//! The query service: read-only access to the stored evidence, served over
//! RPC (`query.v1`): package lists and metadata from the ingest database,
//! the original bytes in chunks from the evidence store, and time-bucketed
//! aggregates of the records.
//!
//! It reads the ingest database with its own login role, which `ingest
//! migrate --reader-role` grants `SELECT` on `packages` and `records` and
//! nothing else; start-up refuses a role that could change them.
//!
//! [`QueryArgs`] are the flags; [`Application`] does start-up (Vault,
//! database, evidence store, ops endpoint) and serves. `handlers.rs` holds
//! the calls' rules ([`Query`]), `store.rs` every SQL statement ([`Sql`]),
//! `cursor.rs` the package list's opaque cursor, `error.rs`
//! [`QueryError`] and its wire codes, `metrics.rs` what is served.

mod cursor;
mod error;
mod handlers;
mod metrics;
mod store;

pub use error::QueryError;
pub use handlers::{MAX_BUCKET_SECS, Query};
pub use metrics::QueryMetrics;
pub use store::{ListFilter, MARKED_SHARE, SeriesFilter, Sql, Store, rollup_hours};

use anyhow::Context as _;
use platform::config::CommonArgs;
use platform::db::DatabaseArgs;
use platform::rpc::RpcServer;
use platform::s3::{EvidenceStore, S3Args, S3Credentials};
use platform::service::Service;

/// The service name (logs, metrics, Vault paths).
pub const SERVICE: &str = "query";

/// Query flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = SERVICE,
    version,
    about = "Tallyhouse query: read-only access to the stored evidence"
)]
pub struct QueryArgs {
    /// Flags shared by every service.
    #[command(flatten)]
    pub common: CommonArgs,

    /// The ingest database, read with the query service's own read-only
    /// role (credentials come from Vault).
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// The evidence bucket.
    #[command(flatten)]
    pub s3: S3Args,

    /// Longest a statement may run before PostgreSQL cancels it, in
    /// milliseconds (bounds a costly aggregate).
    #[arg(
        long,
        env = "TALLYHOUSE_STATEMENT_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub statement_timeout_ms: u64,
}

/// A started query service, ready to serve.
pub struct Application {
    svc: Service,
    store: Store,
    server: RpcServer,
}

impl Application {
    /// Does all fallible set-up: Vault, database (waiting for it within the
    /// start-up bound, then checking the role reads but cannot write), the
    /// evidence store, ops endpoint.
    pub async fn build(args: QueryArgs) -> anyhow::Result<Self> {
        let mut svc = Service::bootstrap(SERVICE, args.common).await?;
        let s3_creds: S3Credentials = svc
            .vault
            .read("s3")
            .await
            .context("reading the S3 credentials")?;
        let store = Store::new(
            connect(&args.database, &svc.vault, args.statement_timeout_ms)
                .await
                .context("connecting to the ingest database")?,
        );
        store.check_read_only().await?;
        let evidence = EvidenceStore::new(&args.s3, &s3_creds);
        let pool = store.pool().clone();
        svc.ready
            .add_check("database", platform::ops::postgres_check(pool.clone()));
        svc.ready
            .add_check("s3", platform::ops::s3_bucket_check(evidence.clone()));
        platform::db_metrics::register_sqlx(&mut svc.registry, SERVICE, pool);
        let metrics = QueryMetrics::register(&mut svc.registry);
        let server =
            handlers::server(Query::new(store.clone(), evidence, metrics)).gated(svc.vault.gate());
        svc.serve_ops().await?;
        Ok(Self { svc, store, server })
    }

    /// Serves until SIGINT or SIGTERM, drains in-flight calls, closes the pool.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.svc.ready.set(true);
        self.server
            .run(
                self.svc.rpc.clone(),
                self.svc.rpc_metrics.clone(),
                self.svc.stop.clone(),
            )
            .await;
        self.store.close().await;
        Ok(())
    }
}

/// The pool (see `platform::db::connect_managed`: it waits for the server,
/// proves the login and, for a leased one, keeps it fresh) with two session
/// defaults on every connection — read-only transactions (a second wall
/// behind the grants) and the statement timeout.
async fn connect(
    args: &DatabaseArgs,
    vault: &platform::vault::Vault,
    statement_timeout_ms: u64,
) -> anyhow::Result<sqlx::PgPool> {
    platform::db::connect_managed(SERVICE, args, vault, move |options| {
        options.options([
            ("default_transaction_read_only", "on".to_owned()),
            ("statement_timeout", statement_timeout_ms.to_string()),
        ])
    })
    .await
}
