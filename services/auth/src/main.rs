//! The auth service's entry point: parse flags, start telemetry, build,
//! serve the auth RPC queue until SIGINT or SIGTERM.

use auth::{Application, AuthArgs, Clock, SERVICE};
use clap::Parser as _;
use platform::service::exit_code;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = AuthArgs::parse();
    platform::telemetry::init_telemetry(SERVICE, &args.common.telemetry());
    exit_code(SERVICE, run(args).await)
}

async fn run(args: AuthArgs) -> anyhow::Result<()> {
    Application::build(args, Clock::system())
        .await?
        .run_until_stopped()
        .await
}
