//! `POST /v1/packages` and `GET /v1/keys`: the submitter's side of the API.
//! The gateway checks only what is cheap (headers, content type, size) and
//! forwards the exact bytes to ingest; it keeps nothing.

use crate::AppState;
use crate::problem::Problem;
use crate::routes::TraceId;
use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use platform::rpc::CallOptions;
use rpc_contracts::auth;
use rpc_contracts::ingest::{self, ReceiptKeysRequest, SubmitPackageRequest};
use rpc_contracts::{Bytes, ErrorCode, RpcError};
use serde::Serialize;

/// Header naming the signing key (its RFC 7638 thumbprint).
pub(crate) const KEY_ID_HEADER: &str = "tallyhouse-key-id";
/// How long an upload waits for a slot before it is shed.
const UPLOAD_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Header carrying base64 of the DER ECDSA signature over the body.
pub(crate) const SIGNATURE_HEADER: &str = "tallyhouse-signature";

#[derive(Serialize)]
struct ReceiptBody {
    receipt: String,
}

fn problem(code: ErrorCode, message: impl Into<String>, trace: &TraceId) -> Response {
    Problem::from_rpc(&RpcError::new(code, message), &trace.0).into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn is_json(headers: &HeaderMap) -> bool {
    header_str(headers, header::CONTENT_TYPE.as_str()).is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
    })
}

/// `POST /v1/packages`: 201 with a receipt for a new package, 200 with the
/// original receipt for the exact same bytes again.
pub(crate) async fn submit(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Cheap checks first: content type, declared size, headers.
    if !is_json(&headers) {
        return problem(
            ErrorCode::UnsupportedMediaType,
            "the body must be application/json",
            &trace,
        );
    }
    let declared =
        header_str(&headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.max_package_bytes) {
        return too_large(state.max_package_bytes, &trace);
    }
    let Some(key_id) = header_str(&headers, KEY_ID_HEADER) else {
        return problem(
            ErrorCode::BadRequest,
            "the Tallyhouse-Key-Id header is missing",
            &trace,
        );
    };
    let Some(signature) = header_str(&headers, SIGNATURE_HEADER) else {
        return problem(
            ErrorCode::BadRequest,
            "the Tallyhouse-Signature header is missing",
            &trace,
        );
    };
    let (key_id, signature) = (key_id.to_owned(), signature.to_owned());
    // Bound the bodies held in memory at once: wait a little for a slot,
    // then shed load with 503 + Retry-After.
    let slot =
        tokio::time::timeout(UPLOAD_SLOT_WAIT, state.upload_slots.clone().acquire_owned()).await;
    let Ok(Ok(_slot)) = slot else {
        return problem(
            ErrorCode::Unavailable,
            "too many uploads in progress",
            &trace,
        );
    };
    // Read the body, refusing it as soon as it passes the limit.
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(state.max_package_bytes));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return problem(ErrorCode::BadRequest, "the body could not be read", &trace);
        };
        if bytes.len() + chunk.len() > state.max_package_bytes {
            return too_large(state.max_package_bytes, &trace);
        }
        bytes.extend_from_slice(&chunk);
    }
    if bytes.is_empty() {
        return problem(ErrorCode::MalformedPackage, "the body is empty", &trace);
    }
    let request = SubmitPackageRequest {
        key_id,
        signature,
        body: Bytes(bytes),
    };
    let options = CallOptions {
        trace_id: Some(trace.0.clone()),
        ..Default::default()
    };
    match state
        .rpc
        .call_with::<ingest::SubmitPackage>(&request, options)
        .await
    {
        Ok(outcome) => {
            let status = if outcome.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (
                status,
                Json(ReceiptBody {
                    receipt: outcome.receipt,
                }),
            )
                .into_response()
        }
        Err(e) => Problem::from_rpc(&e, &trace.0).into_response(),
    }
}

fn too_large(limit: usize, trace: &TraceId) -> Response {
    problem(
        ErrorCode::PayloadTooLarge,
        format!("the body is over the {limit}-byte limit"),
        trace,
    )
}

/// `GET /v1/keys`: the platform's public keys as one JWKS: the receipt keys
/// (ingest) and the access-token keys (auth), each with its `kid`, `alg` and
/// `use`, so any JOSE library can verify receipts and tokens.
pub(crate) async fn keys(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceId>,
) -> Response {
    let options = CallOptions {
        trace_id: Some(trace.0.clone()),
        ..Default::default()
    };
    let (receipts, tokens) = tokio::join!(
        state
            .rpc
            .call_with::<ingest::ReceiptKeys>(&ReceiptKeysRequest {}, options.clone()),
        state
            .rpc
            .call_with::<auth::TokenKeys>(&auth::TokenKeysRequest {}, options),
    );
    match (receipts, tokens) {
        (Ok(mut jwks), Ok(tokens)) => {
            jwks.keys.extend(tokens.keys);
            ([(header::CACHE_CONTROL, "public, max-age=300")], Json(jwks)).into_response()
        }
        (Err(e), _) | (_, Err(e)) => Problem::from_rpc(&e, &trace.0).into_response(),
    }
}

/// `GET /v1/openapi.json`: the API description.
pub(crate) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use rpc_contracts::ErrorCode;

    #[test]
    fn the_openapi_document_lists_exactly_the_wire_error_codes() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("../openapi.json")).unwrap();
        let listed: Vec<&str> =
            doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
        let mut expected: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed_sorted, expected);
    }
}
