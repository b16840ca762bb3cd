//! The registry service's entry point: parse flags, start telemetry, serve
//! the registry's RPC queue until SIGINT or SIGTERM.

use clap::Parser;
use platform::config::CommonArgs;
use platform::rpc::RpcServer;
use platform::service::{Service, exit_code};
use rpc_contracts::registry::{self, PingRequest, PingResponse};
use std::process::ExitCode;

const SERVICE: &str = "registry";

/// Tallyhouse registry: submitters and their public keys.
#[derive(Debug, Parser)]
#[command(name = SERVICE, version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    platform::telemetry::init_telemetry(SERVICE, &cli.common.environment, &cli.common.log_filter);
    exit_code(SERVICE, run(cli).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut svc = Service::bootstrap(SERVICE, cli.common).await?;
    let server = RpcServer::builder(registry::QUEUE)
        .on::<registry::Ping, _, _>(|ctx, _req: PingRequest| async move {
            Ok(PingResponse {
                service: SERVICE.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                instance: ctx.instance.to_string(),
            })
        })
        .build();
    svc.serve_ops().await?;
    svc.ready.set(true);
    server
        .run(svc.rpc.clone(), svc.rpc_metrics.clone(), svc.stop.clone())
        .await;
    Ok(())
}
