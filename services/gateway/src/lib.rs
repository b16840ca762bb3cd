//! The public HTTP gateway: the only HTTP entry of Tallyhouse. It keeps no
//! state and no payload: each request becomes an RPC call to the service
//! that owns it, and the reply (or its typed error) becomes the response.

mod problem;
mod routes;

use platform::config::CommonArgs;
use platform::rpc::RpcClient;
use platform::service::Service;
use std::net::SocketAddr;
use std::time::Duration;

/// The service name (logs, metrics, Vault paths).
pub const SERVICE: &str = "gateway";

/// Gateway flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = SERVICE, version, about = "Tallyhouse public HTTP gateway")]
pub struct GatewayArgs {
    /// Address of the public HTTP API.
    #[arg(long, env = "TALLYHOUSE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Flags shared by every service.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The state handlers share: only the RPC client.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) rpc: RpcClient,
}

/// A built gateway, bound to its ports.
pub struct Application {
    svc: Service,
    rpc: RpcClient,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl Application {
    /// Does all fallible set-up: Vault, brokers, ops endpoint, HTTP bind.
    pub async fn build(args: GatewayArgs) -> anyhow::Result<Self> {
        let mut svc = Service::bootstrap(SERVICE, args.common).await?;
        let rpc = RpcClient::start(svc.rpc.clone(), svc.rpc_metrics.clone());
        if !rpc.wait_connected(Duration::from_secs(10)).await {
            tracing::warn!("no broker connection yet; serving 503 until one is up");
        }
        svc.serve_ops().await?;
        let listener = tokio::net::TcpListener::bind(args.http_addr).await?;
        let addr = listener.local_addr()?;
        Ok(Self {
            svc,
            rpc,
            listener,
            addr,
        })
    }

    /// The bound public address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until SIGINT or SIGTERM, then finishes in-flight requests.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let state = AppState {
            rpc: self.rpc.clone(),
        };
        let app = routes::router(state);
        tracing::info!(addr = %self.addr, "public HTTP API listening");
        self.svc.ready.set(true);
        let stop = self.svc.stop.clone();
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await?;
        self.rpc.close().await;
        Ok(())
    }
}
