//! The operations endpoint of every service, on its own port: `/metrics`
//! (Prometheus text format), `/health` (the process is alive) and `/ready`
//! (it can do its work).

use crate::rpc::RpcMetrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

/// Whether the service is ready: its own flag, set as it finishes starting,
/// and at least one broker connection up.
#[derive(Clone)]
pub struct Readiness {
    started: Arc<AtomicBool>,
    rpc: RpcMetrics,
}

impl Readiness {
    /// Not ready until [`Readiness::set`] and a broker link is up.
    pub fn new(rpc: RpcMetrics) -> Self {
        Self {
            started: Arc::default(),
            rpc,
        }
    }

    /// Marks the service as started (or not).
    pub fn set(&self, ready: bool) {
        self.started.store(ready, Ordering::SeqCst);
    }

    /// Whether it is ready.
    pub fn get(&self) -> bool {
        self.started.load(Ordering::SeqCst) && self.rpc.broker_links_up.get() > 0
    }
}

#[derive(Clone)]
struct OpsState {
    registry: Arc<Registry>,
    ready: Readiness,
}

/// Binds `addr` and serves the ops endpoints until `stop`; returns the bound
/// address (useful with port 0) and the serving task.
pub async fn serve_ops(
    addr: SocketAddr,
    registry: Registry,
    ready: Readiness,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let state = OpsState {
        registry: Arc::new(registry),
        ready,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready_handler))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "ops endpoint failed");
        }
    });
    Ok((bound, task))
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn ready_handler(State(state): State<OpsState>) -> impl IntoResponse {
    if state.ready.get() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
