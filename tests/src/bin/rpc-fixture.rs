//! A fixture RPC server process serving the `testkit` calls, for tests that
//! kill a server mid-call or feed it a poison message.

use clap::Parser;
use platform::amqp::BrokerUri;
use platform::rpc::{RpcMetrics, ServerOptions};
use platform::testing::{rpc_config, testkit_server};
use rpc_contracts::Topology;
use std::time::Duration;

/// Serves the testkit calls until SIGINT or SIGTERM.
#[derive(Debug, Parser)]
struct Args {
    /// Broker URI with credentials (test brokers only).
    #[arg(long)]
    amqp_uri: String,
    /// The test's namespace.
    #[arg(long)]
    namespace: String,
    /// Name of this instance, sent back in replies.
    #[arg(long)]
    instance: String,
    /// Queue delivery limit.
    #[arg(long, default_value_t = 5)]
    delivery_limit: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    platform::telemetry::init_telemetry(
        "rpc-fixture",
        &platform::telemetry::TelemetryConfig::stdout("test", "info"),
    );
    let uri = BrokerUri::parse(&args.amqp_uri).map_err(anyhow::Error::msg)?;
    let topology = Topology::new(args.namespace).map_err(anyhow::Error::msg)?;
    let config = rpc_config(&topology, vec![uri], &args.instance);
    let server = testkit_server()
        .instance(args.instance)
        .options(ServerOptions {
            delivery_limit: args.delivery_limit,
            drain_timeout: Duration::from_secs(10),
            ..ServerOptions::default()
        })
        .build();
    let stop = platform::shutdown::token_on_signal();
    server.run(config, RpcMetrics::unregistered(), stop).await;
    Ok(())
}
