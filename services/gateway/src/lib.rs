//! The public HTTP gateway: the only HTTP entry of Tallyhouse. It keeps no
//! state and no payload: each request becomes an RPC call to the service
//! that owns it, and the reply (or its typed error) becomes the response.

mod packages;
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

    /// Largest package body accepted, in bytes (enforced while reading).
    #[arg(long, env = "TALLYHOUSE_MAX_PACKAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_package_bytes: usize,

    /// Package uploads handled at once; more get 503 with Retry-After.
    #[arg(long, env = "TALLYHOUSE_MAX_INFLIGHT_PACKAGES", default_value_t = 64)]
    pub max_inflight_packages: usize,

    /// Flags shared by every service.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The state handlers share: the RPC client and fixed limits; nothing about
/// any request outlives it.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) rpc: RpcClient,
    pub(crate) max_package_bytes: usize,
    pub(crate) upload_slots: std::sync::Arc<tokio::sync::Semaphore>,
}

/// A built gateway, bound to its ports.
pub struct Application {
    args: GatewayArgs,
    svc: Service,
    rpc: RpcClient,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl Application {
    /// Does all fallible set-up: Vault, brokers, ops endpoint, HTTP bind.
    pub async fn build(args: GatewayArgs) -> anyhow::Result<Self> {
        let mut svc = Service::bootstrap(SERVICE, args.common.clone()).await?;
        let rpc = RpcClient::start(svc.rpc.clone(), svc.rpc_metrics.clone());
        if !rpc.wait_connected(Duration::from_secs(10)).await {
            tracing::warn!("no broker connection yet; serving 503 until one is up");
        }
        svc.serve_ops().await?;
        let listener = tokio::net::TcpListener::bind(args.http_addr).await?;
        let addr = listener.local_addr()?;
        Ok(Self {
            args,
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
            max_package_bytes: self.args.max_package_bytes,
            upload_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
                self.args.max_inflight_packages.max(1),
            )),
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
