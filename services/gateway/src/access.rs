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
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The fetches of the token verification keys (see [`KeyFetches`]).
    key_fetches: KeyFetches,
}

/// The least time between two fetches of the verification keys prompted by
/// unknown `kid`s after a successful fetch: within it, an unknown `kid` is
/// simply unknown (the auth service publishes a key before it signs with
/// it), so forged `kid`s cannot make the gateway flood auth.
pub(crate) const KEY_FETCH_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// The least time between two attempts after a failed fetch.
const KEY_FETCH_RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Why a fetch of the verification keys is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FetchReason {
    /// The periodic refresh (and the first load at start-up).
    Schedule,
    /// A token named a `kid` this gateway does not hold.
    UnknownKid,
}

/// What became of a request for fresh verification keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyRefresh {
    /// A fetch ended after the request arrived and it worked: the keys
    /// held now are what auth published; verify again.
    Fetched,
    /// The keys were fetched too recently for another fetch: an unknown
    /// `kid` is simply unknown.
    Fresh,
    /// The auth service could not be asked (not up yet, or down): a token
    /// with an unknown `kid` cannot be judged now (503, retry), which is
    /// not the same as a bad token (401).
    Unavailable,
}

/// The fetches of the verification keys, one at a time: a request that
/// finds a fetch under way waits for it and shares its result, so however
/// many requests carry unknown `kid`s, auth sees at most one fetch per
/// [`KEY_FETCH_MIN_INTERVAL`] (after a success) or per
/// [`KEY_FETCH_RETRY_INTERVAL`] (after a failure).
#[derive(Clone, Default)]
pub(crate) struct KeyFetches {
    /// The last fetch: when it ended, and whether it worked.
    last: Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, bool)>>>,
    /// Whether the keys have been loaded at least once (readiness).
    loaded: Arc<AtomicBool>,
}

impl KeyFetches {
    /// Whether a fetch has ever worked.
    pub(crate) fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Runs `fetch` unless the rules above say it need not or must not run;
    /// `install` takes the fetched keys.
    pub(crate) async fn refresh<F, Fut>(
        &self,
        reason: FetchReason,
        fetch: F,
        install: impl FnOnce(Vec<serde_json::Value>) -> usize,
    ) -> KeyRefresh
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<serde_json::Value>, RpcError>>,
    {
        let arrived = tokio::time::Instant::now();
        let mut last = self.last.lock().await;
        if let Some((ended, ok)) = *last {
            let age = ended.elapsed();
            if reason == FetchReason::UnknownKid {
                // A fetch ended while this request waited for the lock:
                // its answer is as fresh as one of our own.
                if ended > arrived {
                    return if ok {
                        KeyRefresh::Fetched
                    } else {
                        KeyRefresh::Unavailable
                    };
                }
                if ok && age < KEY_FETCH_MIN_INTERVAL {
                    return KeyRefresh::Fresh;
                }
            }
            if !ok && age < KEY_FETCH_RETRY_INTERVAL {
                // Auth was just found away: wait out the short gap (this
                // request keeps the lock, so others queue behind it and
                // share what it finds).
                tokio::time::sleep(KEY_FETCH_RETRY_INTERVAL - age).await;
            }
        }
        let result = fetch().await;
        let ok = result.is_ok();
        *last = Some((tokio::time::Instant::now(), ok));
        match result {
            Ok(jwks) => {
                let kept = install(jwks);
                self.loaded.store(true, Ordering::Release);
                tracing::info!(keys = kept, reason = ?reason, "token verification keys fetched");
                KeyRefresh::Fetched
            }
            Err(e) => {
                tracing::warn!(code = %e.code, reason = ?reason, "could not fetch the token verification keys");
                KeyRefresh::Unavailable
            }
        }
    }
}

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
            key_fetches: KeyFetches::default(),
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

    /// Fetches the token verification keys from the auth service, under
    /// the rules of [`KeyFetches`].
    pub(crate) async fn refresh_keys(&self, rpc: &RpcClient, reason: FetchReason) -> KeyRefresh {
        let options = CallOptions::timeout(Duration::from_secs(5));
        self.key_fetches
            .refresh(
                reason,
                || async {
                    rpc.call_with::<auth::TokenKeys>(&auth::TokenKeysRequest {}, options)
                        .await
                        .map(|jwks| jwks.keys)
                },
                |keys| self.verifier.keys().replace(&keys),
            )
            .await
    }

    /// Whether the verification keys have been loaded at least once.
    pub(crate) fn keys_loaded(&self) -> bool {
        self.key_fetches.loaded()
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
        if verified == Err(crate::token::TokenError::UnknownKey) {
            // A key published since the last fetch, or no fetch has worked
            // yet (the gateway started before auth): one fetch from the
            // auth service, shared by every request waiting for it, at most
            // every few seconds whatever the `kid`s sent.
            match access
                .refresh_keys(&state.rpc, FetchReason::UnknownKid)
                .await
            {
                KeyRefresh::Fetched => verified = access.verifier.verify(token, (access.clock)()),
                KeyRefresh::Fresh => {}
                KeyRefresh::Unavailable => {
                    return Err(Problem::from_rpc(
                        &RpcError::new(
                            ErrorCode::Unavailable,
                            "the access token cannot be checked now: the auth service is unavailable; retry later",
                        ),
                        &trace_id,
                    )
                    .into_response());
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    type Fetch = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<serde_json::Value>, RpcError>> + Send>,
    >;

    /// A fetcher that counts its calls, takes `delay`, and answers `ok`.
    fn fetcher(
        calls: &Arc<AtomicUsize>,
        delay: Duration,
        ok: bool,
    ) -> impl FnOnce() -> Fetch + use<> {
        let calls = calls.clone();
        move || {
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                if ok {
                    Ok(vec![serde_json::json!({"kid": "k1"})])
                } else {
                    Err(RpcError::new(ErrorCode::NoRoute, "no queue"))
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_with_unknown_kids_share_one_fetch() {
        let fetches = KeyFetches::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let outcomes = futures_util::future::join_all((0..50).map(|_| {
            fetches.refresh(
                FetchReason::UnknownKid,
                fetcher(&calls, Duration::from_millis(100), true),
                |keys| keys.len(),
            )
        }))
        .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one fetch for fifty requests"
        );
        assert!(
            outcomes.iter().all(|o| *o == KeyRefresh::Fetched),
            "{outcomes:?}"
        );
        assert!(fetches.loaded());
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_fetch_that_worked_forged_kids_cause_no_fetch_for_a_while() {
        let fetches = KeyFetches::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let refresh =
            |reason| fetches.refresh(reason, fetcher(&calls, Duration::ZERO, true), |k| k.len());
        assert_eq!(refresh(FetchReason::Schedule).await, KeyRefresh::Fetched);
        for _ in 0..100 {
            assert_eq!(refresh(FetchReason::UnknownKid).await, KeyRefresh::Fresh);
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(KEY_FETCH_MIN_INTERVAL).await;
        assert_eq!(refresh(FetchReason::UnknownKid).await, KeyRefresh::Fetched);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gateway_that_started_before_auth_fetches_when_a_token_arrives() {
        // The failure this guards against: the start-up fetch failed (auth
        // not consuming yet), a token signed by auth's key arrived a moment
        // later, and it was refused as `unknown_key` without a new fetch.
        let fetches = KeyFetches::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let away = fetches
            .refresh(
                FetchReason::Schedule,
                fetcher(&calls, Duration::ZERO, false),
                |k| k.len(),
            )
            .await;
        assert_eq!(away, KeyRefresh::Unavailable);
        assert!(!fetches.loaded(), "not ready while no fetch has worked");
        tokio::time::advance(Duration::from_millis(100)).await;
        let started = tokio::time::Instant::now();
        let now_up = fetches
            .refresh(
                FetchReason::UnknownKid,
                fetcher(&calls, Duration::ZERO, true),
                |k| k.len(),
            )
            .await;
        assert_eq!(
            now_up,
            KeyRefresh::Fetched,
            "a fetch right after a failure still happens"
        );
        assert_eq!(
            started.elapsed(),
            KEY_FETCH_RETRY_INTERVAL - Duration::from_millis(100)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(fetches.loaded());
    }

    #[tokio::test(start_paused = true)]
    async fn while_auth_is_away_unknown_kids_are_unavailable_and_fetches_stay_spaced() {
        let fetches = KeyFetches::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let t0 = tokio::time::Instant::now();
        for _ in 0..10 {
            let outcome = fetches
                .refresh(
                    FetchReason::UnknownKid,
                    fetcher(&calls, Duration::ZERO, false),
                    |k| k.len(),
                )
                .await;
            assert_eq!(outcome, KeyRefresh::Unavailable);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 10);
        // One attempt at once, then one per retry interval.
        assert_eq!(t0.elapsed(), KEY_FETCH_RETRY_INTERVAL * 9);
        assert!(!fetches.loaded());
    }
}
