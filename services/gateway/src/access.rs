//! Who is calling, and may they: bearer tokens, revocation, roles, and the
//! audit trail of what back-office users do.
//!
//! A request to a back-office endpoint carries `Authorization: Bearer <JWT>`.
//! [`Caller`] verifies it locally ([`TokenVerifier`]), then asks the auth
//! service whether it is still active (revoked, user disabled, password
//! changed) through a cache of a few seconds, so a revoked token stops
//! working everywhere within that time. Each handler then names the roles it
//! admits with [`Caller::require`]; a refusal is a 403 and an audit entry.

use crate::AppState;
use crate::problem::Problem;
use crate::routes::TraceId;
use crate::token::TokenVerifier;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use platform::rpc::{CallOptions, RpcClient};
use rpc_contracts::auth::{self, AuditRecord, CheckTokenRequest, Role, TokenIdentity};
use rpc_contracts::{ErrorCode, RpcError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// Roles that read evidence (packages, raw bytes, series).
pub(crate) const READ_EVIDENCE: &[Role] = &[Role::Analyst, Role::Auditor];
/// Roles that change users, submitters and keys.
pub(crate) const ADMIN: &[Role] = &[Role::Admin];
/// Roles that read users, submitters, keys and lockouts.
pub(crate) const READ_ADMIN: &[Role] = &[Role::Admin, Role::Auditor];
/// Roles that read the audit trail.
pub(crate) const READ_AUDIT: &[Role] = &[Role::Auditor];
/// Every role (any valid token).
pub(crate) const ANY_ROLE: &[Role] = &[Role::Admin, Role::Analyst, Role::Auditor];

/// Token checking shared by every request: the verifier, the revocation
/// cache and the clock.
#[derive(Clone)]
pub(crate) struct Access {
    pub(crate) verifier: TokenVerifier,
    /// `jti` → the auth service's answer, kept a few seconds.
    status: moka::sync::Cache<Uuid, auth::TokenStatus>,
    /// Unix seconds now; a parameter so tests of the rules can move it.
    clock: fn() -> i64,
    /// Header holding the client address appended by a trusted proxy.
    client_addr_header: Option<header::HeaderName>,
    /// When the verification keys were last fetched, and whether it worked.
    last_key_fetch: Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, bool)>>>,
}

/// The least time between two fetches of the verification keys prompted by
/// an unknown `kid`.
pub(crate) const KEY_FETCH_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// The least time between two attempts after a failed fetch.
const KEY_FETCH_RETRY_INTERVAL: Duration = Duration::from_millis(500);

fn wall_clock() -> i64 {
    (platform::clock::now_unix_ms() / 1000) as i64
}

impl Access {
    /// Token checking with revocation answers cached for `status_ttl`.
    pub(crate) fn new(
        verifier: TokenVerifier,
        status_ttl: Duration,
        client_addr_header: Option<header::HeaderName>,
    ) -> Self {
        Self {
            verifier,
            status: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(status_ttl)
                .build(),
            clock: wall_clock,
            client_addr_header,
            last_key_fetch: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// The client's address: the last hop a trusted proxy recorded when one
    /// is configured, the TCP peer otherwise.
    pub(crate) fn client_addr_of(
        &self,
        headers: &axum::http::HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Option<String> {
        if let Some(name) = &self.client_addr_header {
            let last = headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .rfind(|v| !v.is_empty());
            if let Some(addr) = last {
                return Some(addr.chars().take(64).collect());
            }
        }
        peer.map(|addr| addr.ip().to_string())
    }

    /// Fetches the token verification keys from the auth service now,
    /// unless a fetch was made less than [`KEY_FETCH_MIN_INTERVAL`] ago.
    /// Answers whether the keys were fetched.
    pub(crate) async fn refresh_keys(&self, rpc: &RpcClient) -> bool {
        let mut last = self.last_key_fetch.lock().await;
        if let Some((at, fetched)) = *last {
            // After a failed fetch (auth not up yet), try again sooner.
            let gap = if fetched {
                KEY_FETCH_MIN_INTERVAL
            } else {
                KEY_FETCH_RETRY_INTERVAL
            };
            if at.elapsed() < gap {
                return false;
            }
        }
        let options = CallOptions::timeout(Duration::from_secs(5));
        match rpc
            .call_with::<auth::TokenKeys>(&auth::TokenKeysRequest {}, options)
            .await
        {
            Ok(jwks) => {
                let kept = self.verifier.keys().replace(&jwks.keys);
                tracing::info!(keys = kept, "token verification keys fetched");
                *last = Some((tokio::time::Instant::now(), true));
                true
            }
            Err(e) => {
                tracing::warn!(code = %e.code, "could not fetch the token verification keys");
                *last = Some((tokio::time::Instant::now(), false));
                false
            }
        }
    }

    /// Drops the cached status of a token (after its logout).
    pub(crate) fn forget(&self, jti: Uuid) {
        self.status.invalidate(&jti);
    }
}

/// An authenticated back-office user, for one request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The username (`sub`).
    pub(crate) username: String,
    /// The user's current roles (as the auth service answers them).
    pub(crate) roles: Vec<Role>,
    /// The verified token.
    pub(crate) token: TokenIdentity,
    /// The client's address.
    pub(crate) client_addr: Option<String>,
    /// The request's trace id.
    pub(crate) trace_id: String,
    /// `METHOD /route/template`, for the audit trail.
    pub(crate) endpoint: String,
}

/// A refused authentication: 401 with `WWW-Authenticate`.
fn unauthenticated(code: ErrorCode, detail: &str, trace_id: &str) -> Response {
    let mut resp = Problem::from_rpc(&RpcError::new(code, detail), trace_id).into_response();
    let challenge = if code == ErrorCode::InvalidToken {
        r#"Bearer realm="tallyhouse", error="invalid_token""#
    } else {
        r#"Bearer realm="tallyhouse""#
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

fn unix_to_time(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let trace_id = parts
            .extensions
            .get::<TraceId>()
            .map(|t| t.0.clone())
            .unwrap_or_default();
        let endpoint = endpoint_of(parts);
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(unauthenticated(
                ErrorCode::Unauthorized,
                "this endpoint needs a bearer token (POST /v1/auth/login)",
                &trace_id,
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty() && t.len() <= 4096);
        let Some(token) = token else {
            return Err(unauthenticated(
                ErrorCode::InvalidToken,
                "the Authorization header must be `Bearer <token>`",
                &trace_id,
            ));
        };
        let access = &state.access;
        let mut verified = access.verifier.verify(token, (access.clock)());
        if verified == Err(crate::token::TokenError::UnknownKey)
            && access.refresh_keys(&state.rpc).await
        {
            // A key rotated in since the last fetch (or the first fetch
            // has not happened yet): one fetch from the auth service, at
            // most every few seconds whatever the `kid`s sent.
            verified = access.verifier.verify(token, (access.clock)());
        }
        let claims = match verified {
            Ok(claims) => claims,
            Err(reason) => {
                tracing::info!(reason = reason.as_str(), "access token refused");
                return Err(unauthenticated(
                    ErrorCode::InvalidToken,
                    "the access token is not valid",
                    &trace_id,
                ));
            }
        };
        let identity = TokenIdentity {
            jti: claims.jti,
            sub: claims.sub.clone(),
            issued_at: unix_to_time(claims.iat),
            expires_at: unix_to_time(claims.exp),
            version: claims.ver,
        };
        let status = match access.status.get(&claims.jti) {
            Some(status) => status,
            None => {
                let options = CallOptions {
                    trace_id: Some(trace_id.clone()),
                    timeout: Some(Duration::from_secs(5)),
                };
                let request = CheckTokenRequest {
                    token: identity.clone(),
                };
                match state
                    .rpc
                    .call_with::<auth::CheckToken>(&request, options)
                    .await
                {
                    Ok(status) => {
                        access.status.insert(claims.jti, status.clone());
                        status
                    }
                    // Fail closed: without the auth service's word a token
                    // is not honoured.
                    Err(e) => return Err(Problem::from_rpc(&e, &trace_id).into_response()),
                }
            }
        };
        if !status.active {
            tracing::info!(reason = "revoked", "access token refused");
            return Err(unauthenticated(
                ErrorCode::InvalidToken,
                "the access token is not valid",
                &trace_id,
            ));
        }
        Ok(Caller {
            username: claims.sub,
            roles: status.roles,
            token: identity,
            client_addr: access.client_addr_of(
                &parts.headers,
                parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(addr)| *addr),
            ),
            trace_id,
            endpoint,
        })
    }
}

/// `METHOD /matched/route`, e.g. `GET /v1/packages/{submitter}/{package_id}`.
pub(crate) fn endpoint_of(parts: &Parts) -> String {
    let route = parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.path().to_owned());
    format!("{} {}", parts.method, route)
}

impl Caller {
    /// Admits the caller if they hold one of `roles`; otherwise answers 403
    /// and appends a `denied` entry to the audit trail.
    pub(crate) async fn require(&self, state: &AppState, roles: &[Role]) -> Result<(), Response> {
        if self.roles.iter().any(|r| roles.contains(r)) {
            return Ok(());
        }
        let needed: Vec<_> = roles.iter().map(|r| r.as_str()).collect();
        let mut record = self.record("denied", "denied");
        record.status = Some(403);
        record.detail = Some(serde_json::json!({ "needs_one_of": needed }));
        // The refusal stands whether or not the audit append succeeds; a
        // failed append is logged by `append_audit`.
        let _ = append_audit(&state.rpc, record).await;
        Err(Problem::from_rpc(
            &RpcError::new(
                ErrorCode::Forbidden,
                format!(
                    "this endpoint needs one of the roles: {}",
                    needed.join(", ")
                ),
            ),
            &self.trace_id,
        )
        .into_response())
    }

    /// An audit record of this caller's request, to be completed.
    pub(crate) fn record(&self, action: &str, outcome: &str) -> AuditRecord {
        AuditRecord {
            actor: Some(self.username.clone()),
            action: action.to_owned(),
            endpoint: Some(self.endpoint.clone()),
            outcome: outcome.to_owned(),
            status: None,
            submitter_id: None,
            range_from: None,
            range_to: None,
            rows: None,
            bytes: None,
            target: None,
            client_addr: self.client_addr.clone(),
            trace_id: Some(self.trace_id.clone()),
            detail: None,
        }
    }

    /// RPC options carrying this request's trace id.
    pub(crate) fn call_options(&self) -> CallOptions {
        CallOptions {
            trace_id: Some(self.trace_id.clone()),
            ..Default::default()
        }
    }
}

/// Appends `record` to the audit trail. A failure is logged at error level
/// (an unaudited action is an operational incident) and returned.
pub(crate) async fn append_audit(rpc: &RpcClient, record: AuditRecord) -> Result<(), RpcError> {
    let options = CallOptions {
        trace_id: record.trace_id.clone(),
        timeout: Some(Duration::from_secs(5)),
    };
    match rpc.call_with::<auth::AppendAudit>(&record, options).await {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::error!(
                code = %e.code,
                action = %record.action,
                actor = ?record.actor,
                "could not append to the audit trail"
            );
            Err(e)
        }
    }
}
