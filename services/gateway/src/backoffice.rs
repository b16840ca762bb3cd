//! The back office's side of the API: login and logout, and the reads of the
//! evidence (package lists, one package, its original bytes, series
//! aggregates) and of the audit trail.
//!
//! Every read is appended to the audit trail with who, which endpoint, which
//! submitter and time range, and how many rows or bytes. A bounded answer is
//! audited before it is sent, and not sent if the audit append fails; a
//! streamed answer (raw bytes, series) is audited when the stream ends, with
//! exactly what was sent, even if the client goes away half-way.

use crate::AppState;
use crate::access::{self, Caller, READ_AUDIT, READ_EVIDENCE, append_audit};
use crate::params::{Params, parse_bucket};
use crate::problem::Problem;
use crate::routes::TraceId;
use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::stream::{self, Stream, StreamExt as _};
use platform::rpc::{CallOptions, RpcClient};
use rpc_contracts::auth::{self, AuditRecord, LoginRequest, LogoutRequest, Password};
use rpc_contracts::query::{
    self, Aggregate, GetPackageRequest, ListPackagesRequest, ReadRawRequest, SeriesPoint,
    SeriesRequest,
};
use rpc_contracts::{ErrorCode, RpcError, SubmitterId};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// Largest login body accepted.
pub(crate) const MAX_LOGIN_BODY: usize = 4 * 1024;
/// Chunk size of raw reads through the query service.
const RAW_CHUNK: u32 = 256 * 1024;
/// Buckets per series page fetched from the query service.
const SERIES_PAGE: u32 = 5_000;

fn rpc_problem(e: &RpcError, trace: &str) -> Response {
    Problem::from_rpc(e, trace).into_response()
}

/// `POST /v1/auth/login` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBody {
    username: String,
    password: String,
}

/// `POST /v1/auth/login`: `{access_token, token_type: "Bearer", expires_in}`.
pub(crate) async fn login(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceId>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
    if !is_json {
        return rpc_problem(
            &RpcError::new(
                ErrorCode::UnsupportedMediaType,
                "the body must be application/json",
            ),
            &trace.0,
        );
    }
    let Ok(body) = serde_json::from_slice::<LoginBody>(&body) else {
        return Problem::invalid_param(
            "body",
            "the body must be {\"username\": ..., \"password\": ...}",
            &trace.0,
        )
        .into_response();
    };
    // PostgreSQL text cannot hold NUL: such a name is no user, and must
    // not reach the auth service's queries.
    if body.username.contains('\0') {
        return Problem::invalid_param(
            "username",
            "the username must not contain NUL characters",
            &trace.0,
        )
        .into_response();
    }
    let client_addr = state.access.client_addr_of(&headers, Some(peer));
    let request = LoginRequest {
        username: body.username,
        password: Password(body.password),
        client_addr,
        trace_id: Some(trace.0.clone()),
    };
    let options = CallOptions {
        trace_id: Some(trace.0.clone()),
        ..Default::default()
    };
    match state.rpc.call_with::<auth::Login>(&request, options).await {
        Ok(token) => {
            let mut resp = Json(token).into_response();
            // RFC 6749 §5.1: token responses are not cached.
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) if e.code == ErrorCode::LoginThrottled => {
            let secs = serde_json::from_str::<auth::LoginThrottled>(&e.message)
                .map(|t| t.retry_after_secs)
                .unwrap_or(1);
            let generic = RpcError::new(
                ErrorCode::LoginThrottled,
                "too many failed logins; retry after the delay in Retry-After",
            );
            Problem::from_rpc(&generic, &trace.0)
                .retry_after(secs.min(u64::from(u32::MAX)) as u32)
                .into_response()
        }
        Err(e) => rpc_problem(&e, &trace.0),
    }
}

/// `POST /v1/auth/logout`: revokes the presented token; 204.
pub(crate) async fn logout(State(state): State<AppState>, caller: Caller) -> Response {
    let request = LogoutRequest {
        token: caller.token.clone(),
    };
    match state
        .rpc
        .call_with::<auth::Logout>(&request, caller.call_options())
        .await
    {
        Ok(_) => {
            state.access.forget(caller.token.jti);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => rpc_problem(&e, &caller.trace_id),
    }
}

#[derive(Serialize)]
struct Me {
    username: String,
    roles: Vec<auth::Role>,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: time::OffsetDateTime,
}

/// `GET /v1/auth/me`: who the token belongs to and their current roles.
pub(crate) async fn me(State(state): State<AppState>, caller: Caller) -> Response {
    if let Err(resp) = caller.require(&state, access::ANY_ROLE).await {
        return resp;
    }
    Json(Me {
        username: caller.username.clone(),
        roles: caller.roles.clone(),
        expires_at: caller.token.expires_at,
    })
    .into_response()
}

/// `GET /v1/packages?submitter=&from=&to=&limit=&cursor=`.
pub(crate) async fn list_packages(
    State(state): State<AppState>,
    caller: Caller,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    if let Err(resp) = caller.require(&state, READ_EVIDENCE).await {
        return resp;
    }
    let mut params = Params::new(pairs, &caller.trace_id);
    let request = (|| {
        let submitter_id = params
            .text("submitter")?
            .map(|s| {
                SubmitterId::parse(s)
                    .map_err(|e| Problem::invalid_param("submitter", e, &caller.trace_id))
            })
            .transpose()?;
        let request = ListPackagesRequest {
            submitter_id,
            from: params.time("from")?,
            to: params.time("to")?,
            limit: params.number("limit", 1, query::MAX_PACKAGE_PAGE, 100)?,
            cursor: params.text("cursor")?,
        };
        Ok::<_, Problem>(request)
    })();
    let request = match request.and_then(|r| params.finish().map(|()| r)) {
        Ok(r) => r,
        Err(p) => return p.into_response(),
    };
    let page = match state
        .rpc
        .call_with::<query::ListPackages>(&request, caller.call_options())
        .await
    {
        Ok(page) => page,
        Err(e) => return rpc_problem(&e, &caller.trace_id),
    };
    let mut record = caller.record("read.packages", "success");
    record.status = Some(200);
    record.submitter_id = request.submitter_id.clone();
    record.range_from = request.from;
    record.range_to = request.to;
    record.rows = Some(page.packages.len() as u64);
    if let Err(e) = append_audit(&state.rpc, record).await {
        return rpc_problem(&e, &caller.trace_id);
    }
    Json(page).into_response()
}

fn package_path(
    submitter: &str,
    package_id: &str,
    trace: &str,
) -> Result<(SubmitterId, Uuid), Response> {
    let submitter = SubmitterId::parse(submitter)
        .map_err(|e| Problem::invalid_param("submitter", e, trace).into_response())?;
    let package_id = Uuid::parse_str(package_id).map_err(|_| {
        Problem::invalid_param("package_id", "the package id must be a UUID", trace).into_response()
    })?;
    Ok((submitter, package_id))
}

/// `GET /v1/packages/{submitter}/{package_id}`: metadata and receipt.
pub(crate) async fn get_package(
    State(state): State<AppState>,
    caller: Caller,
    Path((submitter, package_id)): Path<(String, String)>,
) -> Response {
    if let Err(resp) = caller.require(&state, READ_EVIDENCE).await {
        return resp;
    }
    let (submitter_id, package_id) = match package_path(&submitter, &package_id, &caller.trace_id) {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let request = GetPackageRequest {
        submitter_id: submitter_id.clone(),
        package_id,
    };
    let detail = match state
        .rpc
        .call_with::<query::GetPackage>(&request, caller.call_options())
        .await
    {
        Ok(d) => d,
        Err(e) => return rpc_problem(&e, &caller.trace_id),
    };
    let mut record = caller.record("read.package", "success");
    record.status = Some(200);
    record.submitter_id = Some(submitter_id);
    record.target = Some(package_id.to_string());
    record.rows = Some(1);
    if let Err(e) = append_audit(&state.rpc, record).await {
        return rpc_problem(&e, &caller.trace_id);
    }
    Json(detail).into_response()
}

/// Appends an audit entry when a streamed answer ends, however it ends,
/// with what was actually sent.
struct StreamAudit {
    rpc: RpcClient,
    record: Option<AuditRecord>,
    sent: Arc<AtomicU64>,
    complete: Arc<std::sync::atomic::AtomicBool>,
    rows: bool,
}

impl Drop for StreamAudit {
    fn drop(&mut self) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        let sent = self.sent.load(Ordering::Relaxed);
        if self.rows {
            record.rows = Some(sent);
        } else {
            record.bytes = Some(sent);
        }
        if !self.complete.load(Ordering::Relaxed) {
            record.outcome = "partial".to_owned();
        }
        let rpc = self.rpc.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = append_audit(&rpc, record).await;
            });
        }
    }
}

/// `GET /v1/packages/{submitter}/{package_id}/raw`: the original bytes,
/// streamed from the evidence store, with what is needed to re-verify them
/// offline: `Tallyhouse-Key-Id`, `Tallyhouse-Signature` (base64 DER, as
/// sent) and `Repr-Digest` (RFC 9530, SHA-256).
pub(crate) async fn raw_package(
    State(state): State<AppState>,
    caller: Caller,
    Path((submitter, package_id)): Path<(String, String)>,
) -> Response {
    if let Err(resp) = caller.require(&state, READ_EVIDENCE).await {
        return resp;
    }
    let (submitter_id, package_id) = match package_path(&submitter, &package_id, &caller.trace_id) {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let detail = match state
        .rpc
        .call_with::<query::GetPackage>(
            &GetPackageRequest {
                submitter_id: submitter_id.clone(),
                package_id,
            },
            caller.call_options(),
        )
        .await
    {
        Ok(d) => d,
        Err(e) => return rpc_problem(&e, &caller.trace_id),
    };
    // The first chunk is read before answering, so that a missing blob is an
    // error status rather than a cut stream.
    let first = match read_chunk(&state.rpc, &caller, &submitter_id, package_id, 0).await {
        Ok(chunk) => chunk,
        Err(e) => return rpc_problem(&e, &caller.trace_id),
    };
    let total = first.total_size;
    let mut record = caller.record("read.raw", "success");
    record.status = Some(200);
    record.submitter_id = Some(submitter_id.clone());
    record.target = Some(package_id.to_string());
    let sent = Arc::new(AtomicU64::new(0));
    let complete = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guard = StreamAudit {
        rpc: state.rpc.clone(),
        record: Some(record),
        sent: sent.clone(),
        complete: complete.clone(),
        rows: false,
    };
    let rpc = state.rpc.clone();
    let first_len = first.bytes.0.len() as u64;
    let first_bytes = axum::body::Bytes::from(first.bytes.0);
    let rest = stream::unfold(
        (first_len, rpc, caller.clone(), submitter_id, guard),
        move |(offset, rpc, caller, submitter_id, guard)| async move {
            if offset >= total {
                guard.complete.store(true, Ordering::Relaxed);
                return None;
            }
            match read_chunk(&rpc, &caller, &submitter_id, package_id, offset).await {
                Ok(chunk) if !chunk.bytes.0.is_empty() => {
                    let n = chunk.bytes.0.len() as u64;
                    guard.sent.fetch_add(n, Ordering::Relaxed);
                    Some((
                        Ok(axum::body::Bytes::from(chunk.bytes.0)),
                        (offset + n, rpc, caller, submitter_id, guard),
                    ))
                }
                Ok(_) => Some((
                    Err(std::io::Error::other(
                        "the evidence store returned no bytes",
                    )),
                    (total, rpc, caller, submitter_id, guard),
                )),
                Err(e) => {
                    tracing::warn!(code = %e.code, "raw read failed mid-stream");
                    Some((
                        Err(std::io::Error::other("the evidence could not be read")),
                        (total, rpc, caller, submitter_id, guard),
                    ))
                }
            }
        },
    );
    sent.fetch_add(first_len, Ordering::Relaxed);
    let body = stream::once(async move { Ok::<_, std::io::Error>(first_bytes) }).chain(rest);
    let mut resp = Response::new(Body::from_stream(body));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    let digest = hex::decode(&detail.summary.sha256).unwrap_or_default();
    let digest = base64::engine::general_purpose::STANDARD.encode(digest);
    for (name, value) in [
        (crate::packages::KEY_ID_HEADER, detail.key_id.to_string()),
        (crate::packages::SIGNATURE_HEADER, detail.signature.clone()),
        ("repr-digest", format!("sha-256=:{digest}:")),
        (
            "content-disposition",
            format!("attachment; filename=\"{}.json\"", package_id),
        ),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    if first_len >= total {
        complete.store(true, Ordering::Relaxed);
    }
    resp
}

async fn read_chunk(
    rpc: &RpcClient,
    caller: &Caller,
    submitter_id: &SubmitterId,
    package_id: Uuid,
    offset: u64,
) -> Result<query::RawChunk, RpcError> {
    rpc.call_with::<query::ReadRaw>(
        &ReadRawRequest {
            submitter_id: submitter_id.clone(),
            package_id,
            offset,
            max_len: RAW_CHUNK,
        },
        caller.call_options(),
    )
    .await
}

/// `GET /v1/series?submitter=&series=&from=&to=&bucket=&agg=&label.<key>=`:
/// time-bucketed aggregates, streamed as JSON or, with `Accept: text/csv`,
/// as CSV (`bucket,value,count`).
pub(crate) async fn series(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    if let Err(resp) = caller.require(&state, READ_EVIDENCE).await {
        return resp;
    }
    let mut params = Params::new(pairs, &caller.trace_id);
    let trace = caller.trace_id.clone();
    let request = (|| {
        let submitter_id = SubmitterId::parse(params.required("submitter")?)
            .map_err(|e| Problem::invalid_param("submitter", e, &trace))?;
        let series = params.required("series")?;
        let from = params
            .time("from")?
            .ok_or_else(|| Problem::invalid_param("from", "`from` is required", &trace))?;
        let to = params
            .time("to")?
            .ok_or_else(|| Problem::invalid_param("to", "`to` is required", &trace))?;
        if from >= to {
            return Err(Problem::invalid_param(
                "to",
                "`to` must be after `from`",
                &trace,
            ));
        }
        let bucket_secs = match params.text("bucket")? {
            None => 3600,
            Some(b) => parse_bucket(&b).map_err(|e| Problem::invalid_param("bucket", e, &trace))?,
        };
        let agg = params.parsed::<Aggregate>("agg")?.unwrap_or(Aggregate::Sum);
        let labels = params.prefixed("label.")?;
        Ok(SeriesRequest {
            submitter_id,
            series,
            from,
            to,
            bucket_secs,
            agg,
            labels,
            after: None,
            limit: SERIES_PAGE,
        })
    })();
    let request = match request.and_then(|r| params.finish().map(|()| r)) {
        Ok(r) => r,
        Err(p) => return p.into_response(),
    };
    let csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .any(|t| t.split(';').next().unwrap_or("").trim() == "text/csv")
        });

    // The first page answers bad parameters with a status, before streaming.
    let first = match state
        .rpc
        .call_with::<query::Series>(&request, caller.call_options())
        .await
    {
        Ok(page) => page,
        Err(e) => return rpc_problem(&e, &caller.trace_id),
    };
    let mut record = caller.record("read.series", "success");
    record.status = Some(200);
    record.submitter_id = Some(request.submitter_id.clone());
    record.range_from = Some(request.from);
    record.range_to = Some(request.to);
    record.detail = Some(serde_json::json!({
        "series": request.series,
        "agg": request.agg.as_str(),
        "bucket_secs": request.bucket_secs,
        "labels": request.labels,
    }));
    let guard = StreamAudit {
        rpc: state.rpc.clone(),
        record: Some(record),
        sent: Arc::new(AtomicU64::new(0)),
        complete: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        rows: true,
    };
    let pages = series_pages(
        state.rpc.clone(),
        caller.clone(),
        request.clone(),
        first,
        guard,
    );
    let (content_type, body): (&'static str, Body) = if csv {
        let head =
            stream::once(async { Ok(axum::body::Bytes::from_static(b"bucket,value,count\n")) });
        let rows = pages.map(|page| {
            page.map(|points| {
                let mut out = String::with_capacity(points.len() * 48);
                for p in points {
                    out.push_str(&p.bucket.format(&Rfc3339).unwrap_or_default());
                    out.push(',');
                    out.push_str(&format_value(p.value));
                    out.push(',');
                    out.push_str(&p.count.to_string());
                    out.push('\n');
                }
                axum::body::Bytes::from(out)
            })
        });
        (
            "text/csv; charset=utf-8",
            Body::from_stream(head.chain(rows)),
        )
    } else {
        let head = serde_json::json!({
            "submitter_id": request.submitter_id,
            "series": request.series,
            "agg": request.agg,
            "bucket_secs": request.bucket_secs,
            "from": request.from.format(&Rfc3339).unwrap_or_default(),
            "to": request.to.format(&Rfc3339).unwrap_or_default(),
        })
        .to_string();
        // `{...head fields..., "points": [` … `]}`
        let open = format!("{},\"points\":[", &head[..head.len() - 1]);
        let first_item = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let rows = pages.map(move |page| {
            page.map(|points| {
                let mut out = Vec::with_capacity(points.len() * 64);
                for p in points {
                    if !first_item.swap(false, Ordering::Relaxed) {
                        out.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut out, &p);
                }
                axum::body::Bytes::from(out)
            })
        });
        let body = stream::once(async move { Ok(axum::body::Bytes::from(open)) })
            .chain(rows)
            .chain(stream::once(async {
                Ok(axum::body::Bytes::from_static(b"]}"))
            }));
        ("application/json", Body::from_stream(body))
    };
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Values print as JSON numbers do (shortest round-trip form).
fn format_value(v: f64) -> String {
    serde_json::Number::from_f64(v)
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// The pages of a series answer, the first already fetched; counts the rows
/// sent into the audit guard.
fn series_pages(
    rpc: RpcClient,
    caller: Caller,
    request: SeriesRequest,
    first: query::SeriesPage,
    guard: StreamAudit,
) -> impl Stream<Item = Result<Vec<SeriesPoint>, std::io::Error>> + Send {
    stream::unfold(
        (Some(first), rpc, caller, request, guard, false),
        |(page, rpc, caller, mut request, guard, done)| async move {
            if done {
                return None;
            }
            let page = match page {
                Some(page) => page,
                None => match rpc
                    .call_with::<query::Series>(&request, caller.call_options())
                    .await
                {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(code = %e.code, "series page failed mid-stream");
                        return Some((
                            Err(std::io::Error::other("the series could not be read")),
                            (None, rpc, caller, request, guard, true),
                        ));
                    }
                },
            };
            guard
                .sent
                .fetch_add(page.points.len() as u64, Ordering::Relaxed);
            let done = match page.next_cursor {
                Some(after) => {
                    request.after = Some(after);
                    false
                }
                None => {
                    guard.complete.store(true, Ordering::Relaxed);
                    true
                }
            };
            Some((Ok(page.points), (None, rpc, caller, request, guard, done)))
        },
    )
}

/// `GET /v1/audit?before=&limit=&actor=&action=` (auditors only).
pub(crate) async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    if let Err(resp) = caller.require(&state, READ_AUDIT).await {
        return resp;
    }
    let mut params = Params::new(pairs, &caller.trace_id);
    let request = (|| {
        let before_id = params.parsed::<i64>("before")?;
        Ok::<_, Problem>(auth::ListAuditRequest {
            before_id,
            limit: params.number("limit", 1, 1000, 100)?,
            actor: params.text("actor")?,
            action: params.text("action")?,
        })
    })();
    let request = match request.and_then(|r| params.finish().map(|()| r)) {
        Ok(r) => r,
        Err(p) => return p.into_response(),
    };
    match state
        .rpc
        .call_with::<auth::ListAudit>(&request, caller.call_options())
        .await
    {
        Ok(page) => {
            let mut record = caller.record("read.audit", "success");
            record.status = Some(200);
            record.rows = Some(page.entries.len() as u64);
            if let Err(e) = append_audit(&state.rpc, record).await {
                return rpc_problem(&e, &caller.trace_id);
            }
            Json(page).into_response()
        }
        Err(e) => rpc_problem(&e, &caller.trace_id),
    }
}
