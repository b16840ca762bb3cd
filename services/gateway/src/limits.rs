//! The gateway's HTTP/1 server with limits against slow and oversized
//! requests: the request head must arrive within a time and a size (else
//! the connection is closed, or answered 431), and a request body within
//! another time (else `400 bad_request` and the connection is closed).
//! Whatever the router answers on its own (no such route, a path that does
//! not decode) is a problem document with a stable code like every other
//! error, and a NUL character in the path or query is refused at the door
//! (PostgreSQL text cannot hold one: it must never reach a service).
//!
//! `axum::serve` offers no such knobs, so connections are served here with
//! hyper's own HTTP/1 builder and the axum router is called per request,
//! with the peer address as `ConnectInfo` as `axum::serve` would give it.
//! A slow client costs a task and a socket, never a worker: everyone else
//! is served meanwhile.

use crate::problem::Problem;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rpc_contracts::{ErrorCode, RpcError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

/// The smallest head limit (hyper's minimum read buffer).
const MIN_HEADER_BYTES: usize = 8 * 1024;
/// The read buffer of a connection: room for a head somewhat over the
/// limit, so that a refused head is read whole and answered 431 before the
/// connection closes (unread bytes would turn the close into a reset).
const MIN_READ_BUFFER_BYTES: usize = 64 * 1024;

/// Limits on what one HTTP request may take.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpLimitArgs {
    /// Time a client has to send a request's line and headers, from its
    /// first byte (or, on a kept-alive connection, from the previous
    /// response), in milliseconds; the connection is closed after it.
    #[arg(long, env = "TALLYHOUSE_HTTP_HEADER_READ_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub http_header_read_timeout_ms: u64,

    /// Time a client has to send a request's whole body, from the end of
    /// its headers, in milliseconds; then `400 bad_request` and the
    /// connection is closed. Covers a 16 MiB package on a slow link.
    #[arg(long, env = "TALLYHOUSE_HTTP_BODY_READ_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub http_body_read_timeout_ms: u64,

    /// Largest request line and headers together, in bytes (at least 8192);
    /// a larger head is answered `431 Request Header Fields Too Large`.
    #[arg(long, env = "TALLYHOUSE_HTTP_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub http_max_header_bytes: usize,
}

/// Serves `app` on `listener` under `limits` until `stop`, then stops
/// accepting and waits for the requests in flight.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: &HttpLimitArgs,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let body_timeout = Duration::from_millis(limits.http_body_read_timeout_ms);
    let app = app
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            body_deadline(body_timeout, req, next)
        }))
        .layer(middleware::from_fn(stable_answers));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.http_header_read_timeout_ms))
        .max_buf_size(limits.http_max_header_bytes.max(MIN_READ_BUFFER_BYTES))
        .max_header_size(limits.http_max_header_bytes.max(MIN_HEADER_BYTES));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move { app.call(req).await }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Gives the request body `timeout` to arrive in full. When it runs out,
/// reading the body fails (so the handler stops waiting for it) and the
/// answer, whatever the handler made of the failure, is `400 bad_request`
/// with `Connection: close`.
async fn body_deadline(timeout: Duration, req: Request, next: Next) -> Response {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if !has_body {
        return next.run(req).await;
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    // One timer for the whole body, polled beside each chunk.
    let deadline = Box::pin(tokio::time::sleep(timeout));
    let flag = timed_out.clone();
    let state = Some((body.into_data_stream(), deadline, flag));
    let chunks = futures_util::stream::unfold(state, |state| async move {
        let (mut stream, mut deadline, flag) = state?;
        tokio::select! {
            biased;
            chunk = stream.next() => chunk.map(|chunk| (chunk, Some((stream, deadline, flag)))),
            () = &mut deadline => {
                flag.store(true, Ordering::Relaxed);
                Some((Err(axum::Error::new("the request body timed out")), None))
            }
        }
    });
    let response = next
        .run(Request::from_parts(parts, Body::from_stream(chunks)))
        .await;
    if !timed_out.load(Ordering::Relaxed) {
        return response;
    }
    let trace_id = response
        .headers()
        .get("tallyhouse-trace-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let error = RpcError::new(
        ErrorCode::BadRequest,
        format!(
            "the request body did not arrive within {} ms",
            timeout.as_millis()
        ),
    );
    let mut response = Problem::from_rpc(&error, &trace_id).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if let Ok(v) = HeaderValue::from_str(&trace_id) {
        headers.insert("tallyhouse-trace-id", v);
    }
    response
}

/// Refuses request targets no service can take, and turns the router's own
/// plain-text refusals (unmatched path, undecodable path parameter, body
/// over a route's limit) into problem documents with a stable code.
async fn stable_answers(req: Request, next: Next) -> Response {
    if let Some((field, message)) = bad_target(req.uri()) {
        let trace_id = uuid::Uuid::new_v4().simple().to_string();
        return Problem::invalid_param(field, message, &trace_id).into_response();
    }
    let response = next.run(req).await;
    let status = response.status();
    let code = match status.as_u16() {
        400 => ErrorCode::BadRequest,
        404 => ErrorCode::NotFound,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        _ => return response,
    };
    let is_plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !is_plain {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut detail: String = String::from_utf8_lossy(&text).chars().take(300).collect();
    if detail.trim().is_empty() {
        detail = match code {
            ErrorCode::NotFound => "no such endpoint".to_owned(),
            _ => status.canonical_reason().unwrap_or("refused").to_owned(),
        };
    }
    let trace_id = parts
        .headers
        .get("tallyhouse-trace-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut problem = Problem::from_rpc(&RpcError::new(code, detail), &trace_id).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name, value.clone());
        }
    }
    problem
}

/// What is wrong with a request target, as (field, message): a path that
/// is not UTF-8 once percent-decoded, or a NUL character in the path or the
/// query.
fn bad_target(uri: &axum::http::Uri) -> Option<(&'static str, &'static str)> {
    let path = percent_decode(uri.path().as_bytes());
    match std::str::from_utf8(&path) {
        Err(_) => return Some(("path", "the path is not UTF-8 once percent-decoded")),
        Ok(p) if p.contains('\0') => {
            return Some(("path", "the path must not contain NUL characters"));
        }
        Ok(_) => {}
    }
    let query = percent_decode(uri.query().unwrap_or_default().as_bytes());
    query
        .contains(&0)
        .then_some(("query", "query parameters must not contain NUL characters"))
}

/// `%XX` escapes decoded; a `%` not followed by two hex digits kept as is.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_with_nul_or_broken_utf8_are_refused_and_others_pass() {
        let bad = |t: &str| bad_target(&t.parse().unwrap()).map(|(field, _)| field);
        assert_eq!(bad("/v1/audit?actor=%00"), Some("query"));
        assert_eq!(bad("/v1/lockouts/account/a%00b"), Some("path"));
        assert_eq!(bad("/v1/packages/%ff/x"), Some("path"));
        assert_eq!(bad("/v1/packages/acme/..%2F..%2Fetc%2Fpasswd"), None);
        assert_eq!(bad("/v1/audit?actor=%25%30%30&x=%"), None);
        assert_eq!(bad("/v1/series?label.%E2%82%AC=%F0%9F%98%80"), None);
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode(b"a%2Fb%zz%4"), b"a/b%zz%4");
        assert_eq!(percent_decode(b"%e2%82%ac"), "€".as_bytes());
    }
}
