//! The ingest service's entry point: `ingest migrate` prepares the
//! time-series schema with the owner's credentials; `ingest serve` verifies
//! and stores signed packages until SIGINT or SIGTERM; `ingest job <name>`
//! runs one data lifecycle job (`jobs/`).

mod args;
mod jobs;
mod keys;
mod metrics;
mod receipt_keys;
mod schema;
mod service;
mod store;

use clap::Parser;
use platform::service::exit_code;
use std::process::ExitCode;

const SERVICE: &str = "ingest";

/// Tallyhouse ingest: signed packages in, receipts out.
#[derive(Debug, Parser)]
#[command(name = SERVICE, version)]
enum Cli {
    /// Serve the ingest RPC queue.
    Serve(Box<args::ServeArgs>),
    /// Create or upgrade the time-series schema (as the database owner),
    /// distribute it when the citus extension has been created in the
    /// database, and grant the service role what it needs (SELECT and
    /// INSERT only) and any reader role (the query service's) SELECT only.
    Migrate(args::MigrateArgs),
    /// Run one data lifecycle job (partitions-ahead, columnar, seal,
    /// verify-seals, rollup; docs/lifecycle.md) under its advisory lock:
    /// exits 0 when it succeeded or another run holds the lock. Archive,
    /// restore, cleanup and rotate-keys need the service's buckets, RPC and
    /// Vault: they run in `ingest serve` (`tallyhouse job run <job>`).
    Job(jobs::args::JobArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse() {
        Cli::Serve(args) => {
            platform::telemetry::init_telemetry(SERVICE, &args.common.telemetry());
            exit_code(SERVICE, service::run(*args).await)
        }
        Cli::Migrate(args) => {
            let telemetry = platform::telemetry::TelemetryConfig::stdout(&args.environment, "info");
            platform::telemetry::init_telemetry(SERVICE, &telemetry);
            exit_code(SERVICE, schema::migrate(&args).await)
        }
        Cli::Job(args) => {
            let telemetry = platform::telemetry::TelemetryConfig::stdout(&args.environment, "info");
            platform::telemetry::init_telemetry(SERVICE, &telemetry);
            exit_code(SERVICE, jobs::command::run(&args).await)
        }
    }
}
