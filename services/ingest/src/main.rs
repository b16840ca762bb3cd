//! The ingest service's entry point: `ingest migrate` prepares the
//! time-series schema with the owner's credentials; `ingest serve` verifies
//! and stores signed packages until SIGINT or SIGTERM.

mod args;
mod keys;
mod metrics;
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
    }
}
