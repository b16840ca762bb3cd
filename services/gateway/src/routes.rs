//! The gateway's routes. Each handler makes one typed RPC call and maps its
//! outcome; no handler keeps anything between requests.

use crate::AppState;
use crate::problem::Problem;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use platform::rpc::CallOptions;
use rpc_contracts::registry::{self, PingRequest};

/// The trace id of one request, generated here and carried across RPC hops.
#[derive(Debug, Clone)]
pub(crate) struct TraceId(pub(crate) String);

/// Header returning the trace id to the client, for support requests.
const TRACE_HEADER: &str = "tallyhouse-trace-id";

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/ping", get(ping))
        .route("/v1/packages", axum::routing::post(crate::packages::submit))
        .route("/v1/keys", get(crate::packages::keys))
        .route("/v1/openapi.json", get(crate::packages::openapi))
        .layer(middleware::from_fn(trace_id))
        .with_state(state)
}

async fn trace_id(mut req: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().simple().to_string();
    req.extensions_mut().insert(TraceId(id.clone()));
    let span = tracing::info_span!("http_request", method = %req.method(), path = %req.uri().path(), trace_id = %id);
    let mut resp = tracing::Instrument::instrument(next.run(req), span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(TRACE_HEADER, v);
    }
    resp
}

/// `GET /v1/ping`: proves the path gateway → broker → registry → back works.
async fn ping(State(state): State<AppState>, Extension(trace): Extension<TraceId>) -> Response {
    let options = CallOptions {
        trace_id: Some(trace.0.clone()),
        ..Default::default()
    };
    match state
        .rpc
        .call_with::<registry::Ping>(&PingRequest {}, options)
        .await
    {
        Ok(pong) => Json(pong).into_response(),
        Err(e) => Problem::from_rpc(&e, &trace.0).into_response(),
    }
}
