//! The registry service's entry point: parse flags, start telemetry, build,
//! serve the registry's RPC queue until SIGINT or SIGTERM.

use clap::Parser as _;
use platform::service::exit_code;
use registry::{Application, Clock, RegistryArgs, SERVICE};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = RegistryArgs::parse();
    platform::telemetry::init_telemetry(SERVICE, &args.common.telemetry());
    exit_code(SERVICE, run(args).await)
}

async fn run(args: RegistryArgs) -> anyhow::Result<()> {
    Application::build(args, Clock::system())
        .await?
        .run_until_stopped()
        .await
}
