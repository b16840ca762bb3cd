//! The gateway's entry point: parse flags, start telemetry, build the
//! application, serve until SIGINT or SIGTERM.

use clap::Parser;
use gateway::{Application, GatewayArgs};
use platform::service::exit_code;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = GatewayArgs::parse();
    platform::telemetry::init_telemetry(gateway::SERVICE, &args.common.telemetry());
    let outcome = async {
        let app = Application::build(args).await?;
        app.run_until_stopped().await
    }
    .await;
    exit_code(gateway::SERVICE, outcome)
}
