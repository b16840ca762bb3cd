//! The public HTTP gateway: the only HTTP entry of Tallyhouse. It keeps no
//! state and no payload: each request becomes an RPC call to the service
//! that owns it, and the reply (or its typed error) becomes the response.

// Handlers return `Result<_, Response>` / `Result<_, Problem>`: the error is
// the answer itself, built once per failed request, so its size is no cost.
#![allow(clippy::result_large_err)]

mod access;
mod admin;
mod backoffice;
mod http_metrics;
mod limits;
mod packages;
mod params;
mod problem;
mod routes;
pub mod token;

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

    /// `iss` required of access tokens.
    #[arg(long, env = "TALLYHOUSE_TOKEN_ISSUER", default_value = rpc_contracts::auth::DEFAULT_TOKEN_ISSUER)]
    pub token_issuer: String,

    /// `aud` required of access tokens.
    #[arg(long, env = "TALLYHOUSE_TOKEN_AUDIENCE", default_value = rpc_contracts::auth::DEFAULT_TOKEN_AUDIENCE)]
    pub token_audience: String,

    /// Clock skew tolerated on `exp` and `nbf`, in seconds (at most 60).
    #[arg(long, env = "TALLYHOUSE_TOKEN_LEEWAY_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=60))]
    pub token_leeway_secs: u64,

    /// How long the auth service's answer on a token's revocation is cached,
    /// in milliseconds: a revoked token stops working within this time.
    #[arg(long, env = "TALLYHOUSE_TOKEN_STATUS_CACHE_MS", default_value_t = 2000)]
    pub token_status_cache_ms: u64,

    /// How often the token verification keys are fetched again from the
    /// auth service, in seconds.
    #[arg(long, env = "TALLYHOUSE_TOKEN_KEYS_REFRESH_SECS", default_value_t = 60)]
    pub token_keys_refresh_secs: u64,

    /// Header in which a trusted reverse proxy appends the client's address
    /// (e.g. `x-forwarded-for` behind Fabio); unset, the TCP peer is used.
    #[arg(long, env = "TALLYHOUSE_CLIENT_ADDR_HEADER")]
    pub client_addr_header: Option<axum::http::HeaderName>,

    /// Header and body read limits of the public HTTP server.
    #[command(flatten)]
    pub http_limits: limits::HttpLimitArgs,

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
    pub(crate) access: access::Access,
    pub(crate) http_metrics: http_metrics::HttpMetrics,
}

/// A built gateway, bound to its ports.
pub struct Application {
    args: GatewayArgs,
    svc: Service,
    rpc: RpcClient,
    http_metrics: http_metrics::HttpMetrics,
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
        let http_metrics = http_metrics::HttpMetrics::register(&mut svc.registry);
        svc.serve_ops().await?;
        let listener = tokio::net::TcpListener::bind(args.http_addr).await?;
        let addr = listener.local_addr()?;
        Ok(Self {
            args,
            svc,
            rpc,
            http_metrics,
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
        let verifier = token::TokenVerifier::new(
            token::TokenKeys::default(),
            &self.args.token_issuer,
            &self.args.token_audience,
            self.args.token_leeway_secs,
        );
        let access = access::Access::new(
            verifier,
            Duration::from_millis(self.args.token_status_cache_ms),
            self.args.client_addr_header.clone(),
        );
        let refresh = Duration::from_secs(self.args.token_keys_refresh_secs.max(5));
        let access_for_ready = access.clone();
        tokio::spawn(refresh_token_keys(
            self.rpc.clone(),
            access.clone(),
            refresh,
            self.svc.stop.clone(),
        ));
        let state = AppState {
            access,
            rpc: self.rpc.clone(),
            http_metrics: self.http_metrics.clone(),
            max_package_bytes: self.args.max_package_bytes,
            upload_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
                self.args.max_inflight_packages.max(1),
            )),
        };
        let app = routes::router(state);
        tracing::info!(addr = %self.addr, "public HTTP API listening");
        // Not ready until the token keys have been loaded once: before
        // that, every back-office request would be answered 503.
        let loaded = access_for_ready;
        self.svc.ready.add_check("token_keys", move || {
            let ok = loaded.keys_loaded();
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(
                        "the token verification keys are not loaded yet (auth not answering)"
                            .to_owned(),
                    )
                }
            }
        });
        self.svc.ready.set(true);
        let stop = self.svc.stop.clone();
        limits::serve(self.listener, app, &self.args.http_limits, stop).await?;
        self.rpc.close().await;
        Ok(())
    }
}

/// Keeps the token verification keys fresh: fetched from the auth service
/// at start (every 2 s until it answers) and every `every` after. A request
/// with an unknown `kid` may also prompt a fetch (see
/// `access::KeyFetches`).
async fn refresh_token_keys(
    rpc: RpcClient,
    access: access::Access,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        access
            .refresh_keys(&rpc, access::FetchReason::Schedule)
            .await;
        let wait = if access.keys_loaded() {
            every
        } else {
            Duration::from_secs(2)
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
