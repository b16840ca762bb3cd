//! The query service's entry point: parse flags, start telemetry, build,
//! serve the query RPC queue until SIGINT or SIGTERM.

use clap::Parser as _;
use platform::service::exit_code;
use query::{Application, QueryArgs, SERVICE};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = QueryArgs::parse();
    platform::telemetry::init_telemetry(SERVICE, &args.common.telemetry());
    exit_code(SERVICE, run(args).await)
}

async fn run(args: QueryArgs) -> anyhow::Result<()> {
    Application::build(args).await?.run_until_stopped().await
}
