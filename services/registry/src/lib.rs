//! The registry service: submitters and their public keys, in PostgreSQL,
//! served over RPC (`registry.v1`).
//!
//! [`RegistryArgs`] are the flags (common ones and the database's);
//! [`Application`] does start-up (Vault, database, migrations, ops
//! endpoint) and serves. `handlers.rs` holds the calls' rules
//! ([`Registry`]), `store.rs` the SQL, `error.rs` [`RegistryError`] and its
//! wire codes, and [`clock`] the registry's "now".

pub mod clock;
mod error;
mod handlers;
mod store;

pub use clock::Clock;
pub use error::RegistryError;
pub use handlers::{MAX_NAME_CHARS, MAX_PEM_BYTES, Registry};
pub use store::{MIGRATOR, Store};

use anyhow::Context as _;
use platform::config::CommonArgs;
use platform::db::DatabaseArgs;
use platform::rpc::RpcServer;
use platform::service::Service;

/// The service name (logs, metrics, Vault paths).
pub const SERVICE: &str = "registry";

/// Registry flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = SERVICE,
    version,
    about = "Tallyhouse registry: submitters and their public keys"
)]
pub struct RegistryArgs {
    /// Flags shared by every service.
    #[command(flatten)]
    pub common: CommonArgs,

    /// The registry's database (credentials come from Vault).
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// A started registry, its database migrated, ready to serve.
pub struct Application {
    svc: Service,
    store: Store,
    server: RpcServer,
}

impl Application {
    /// Does all fallible set-up: Vault, database (waiting for it within the
    /// start-up bound), migrations, ops endpoint.
    pub async fn build(args: RegistryArgs, clock: Clock) -> anyhow::Result<Self> {
        let mut svc = Service::bootstrap(SERVICE, args.common).await?;
        let pool = platform::db::connect_with_vault(SERVICE, &args.database, &svc.vault)
            .await
            .context("connecting to the registry database")?;
        MIGRATOR
            .run(&pool)
            .await
            .context("migrating the registry database")?;
        svc.ready
            .add_check("database", platform::ops::postgres_check(pool.clone()));
        platform::db_metrics::register_sqlx(&mut svc.registry, SERVICE, pool.clone());
        let store = Store::new(pool);
        let server = handlers::server(Registry::new(store.clone(), clock)).gated(svc.vault.gate());
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
