//! The ingest service's entry point: `ingest migrate` prepares the
//! time-series schema with the owner's credentials; `ingest serve` verifies
//! and stores signed packages until SIGINT or SIGTERM.

mod args;
mod keys;
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
    /// distribute it when Citus is present, and grant the service role
    /// what it needs (SELECT and INSERT only).
    Migrate(args::MigrateArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse() {
        Cli::Serve(args) => {
            platform::telemetry::init_telemetry(
                SERVICE,
                &args.common.environment,
                &args.common.log_filter,
            );
            exit_code(SERVICE, service::run(*args).await)
        }
        Cli::Migrate(args) => {
            platform::telemetry::init_telemetry(SERVICE, &args.environment, "info");
            exit_code(SERVICE, schema::migrate(&args).await)
        }
    }
}
