//! The gateway's routes. Each handler makes one typed RPC call and maps its
//! outcome; no handler keeps anything between requests.

use crate::problem::Problem;
use crate::{AppState, admin, backoffice};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::{Extension, Json};
use platform::rpc::CallOptions;
use rpc_contracts::registry::{self, PingRequest};

/// The trace id of one request, generated here and carried across RPC hops.
#[derive(Debug, Clone)]
pub(crate) struct TraceId(pub(crate) String);

/// Largest JSON body of an administration request.
const MAX_JSON_BODY: usize = 64 * 1024;

/// Header returning the trace id to the client, for support requests.
const TRACE_HEADER: &str = "tallyhouse-trace-id";

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/ping", get(ping))
        .route(
            "/v1/packages",
            post(crate::packages::submit).get(backoffice::list_packages),
        )
        .route("/v1/keys", get(crate::packages::keys))
        .route("/v1/openapi.json", get(crate::packages::openapi))
        .route(
            "/v1/auth/login",
            post(backoffice::login).layer(DefaultBodyLimit::max(backoffice::MAX_LOGIN_BODY)),
        )
        .route("/v1/auth/logout", post(backoffice::logout))
        .route("/v1/auth/me", get(backoffice::me))
        .route("/v1/auth/password", put(admin::change_own_password))
        .route(
            "/v1/packages/{submitter}/{package_id}",
            get(backoffice::get_package),
        )
        .route(
            "/v1/packages/{submitter}/{package_id}/raw",
            get(backoffice::raw_package),
        )
        .route("/v1/series", get(backoffice::series))
        .route("/v1/audit", get(backoffice::audit))
        .route("/v1/users", get(admin::list_users).post(admin::add_user))
        .route("/v1/users/{username}", patch(admin::update_user))
        .route("/v1/users/{username}/password", put(admin::reset_password))
        .route("/v1/lockouts", get(admin::list_lockouts))
        .route("/v1/lockouts/{scope}/{key}", delete(admin::clear_lockout))
        .route(
            "/v1/submitters",
            get(admin::list_submitters).post(admin::add_submitter),
        )
        .route(
            "/v1/submitters/{submitter}/keys",
            get(admin::list_keys).post(admin::add_key),
        )
        .route(
            "/v1/submitters/{submitter}/keys/{key_id}/revoke",
            post(admin::revoke_key),
        )
        // JSON bodies of the back office are small; package uploads read
        // their body as a stream under their own limit.
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(middleware::from_fn(trace_id))
        .layer(middleware::from_fn_with_state(
            state.http_metrics.clone(),
            crate::http_metrics::track,
        ))
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
