//! The auth service's calls: validation, the login sequence (throttle
//! check, Argon2id under a hashing slot, failure counting), token checks,
//! user administration and the audit trail, on top of `store.rs`. Every
//! change commits together with its audit entry; "now" comes from the
//! [`Clock`] the handlers were built with.

use crate::clock::Clock;
use crate::error::AuthError;
use crate::metrics::{AuthMetrics, LoginOutcome};
use crate::password::{MAX_PASSWORD_BYTES, Passwords, check_new_password};
use crate::store::{self, Store, UserRow};
use crate::throttle::{ThrottlePolicy, retry_after_secs, scope_name};
use crate::tokens::TokenSigner;
use platform::rpc::{RequestContext, RpcServer, RpcServerBuilder};
use rpc_contracts::auth::{
    self, AccessToken, AddUserRequest, AuditAppended, AuditPage, AuditRecord, CheckTokenRequest,
    ClearThrottleRequest, ClearThrottleResponse, Empty, JwkSet, ListAuditRequest,
    ListThrottlesRequest, ListUsersRequest, LoginRequest, LogoutRequest, MAX_LEEWAY_SECS,
    PurgeStaleRequest, PurgeStaleResponse, Role, SetPasswordRequest, TOKEN_LIFETIME_SECS,
    ThrottleList, ThrottleScope, TokenKeysRequest, TokenStatus, UpdateUserRequest, User, UserList,
};
use rpc_contracts::registry::{PingRequest, PingResponse};
use rpc_contracts::{Call, RpcError};
use serde_json::{Value, json};
use sqlx::postgres::PgConnection;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use time::OffsetDateTime;
use tracing::instrument;

/// Longest username accepted, in characters.
pub const MAX_USERNAME_CHARS: usize = 64;
/// Longest login name considered (any string is throttled, up to this).
pub const MAX_LOGIN_NAME_CHARS: usize = 256;
/// Longest client address accepted, in characters.
pub const MAX_CLIENT_ADDR_CHARS: usize = 256;
/// Most audit entries one page answers.
pub const MAX_AUDIT_PAGE: u32 = 1_000;
/// Largest `detail` of an audit entry, as JSON bytes.
pub const MAX_AUDIT_DETAIL_BYTES: usize = 16 * 1024;
/// Longest free-text field of an audit entry, in characters.
pub const MAX_AUDIT_TEXT_CHARS: usize = 512;

type Result<T> = std::result::Result<T, AuthError>;

/// The auth service's state.
#[derive(Debug)]
pub struct Auth {
    store: Store,
    clock: Clock,
    passwords: Passwords,
    tokens: TokenSigner,
    policy: ThrottlePolicy,
    metrics: AuthMetrics,
}

/// What a failure did to the throttling state.
#[derive(Debug, Default)]
struct Failures {
    account: u32,
    address: Option<u32>,
    lockouts: Vec<ThrottleScope>,
}

impl Auth {
    /// Handlers over `store`, reading the time from `clock`.
    pub fn new(
        store: Store,
        clock: Clock,
        passwords: Passwords,
        tokens: TokenSigner,
        policy: ThrottlePolicy,
        metrics: AuthMetrics,
    ) -> Self {
        Self {
            store,
            clock,
            passwords,
            tokens,
            policy,
            metrics,
        }
    }

    /// The store (tests close it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The token signing keys (`keys.rs` reloads and rotates them).
    pub fn tokens(&self) -> &TokenSigner {
        &self.tokens
    }

    /// This service's time (its clock, which tests may move).
    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    // --- Logins ------------------------------------------------------------

    /// Checks a password and issues a token; see [`auth::Login`].
    #[instrument(skip_all)]
    pub async fn login(&self, req: LoginRequest, ctx: &RequestContext) -> Result<AccessToken> {
        let result = self.login_checked(req, ctx).await;
        let outcome = match &result {
            Ok(_) => LoginOutcome::Success,
            Err(AuthError::InvalidCredentials) => LoginOutcome::InvalidCredentials,
            Err(AuthError::Throttled { .. }) => LoginOutcome::Throttled,
            Err(_) => LoginOutcome::Error,
        };
        self.metrics.login(outcome);
        result
    }

    async fn login_checked(&self, req: LoginRequest, ctx: &RequestContext) -> Result<AccessToken> {
        let account = account_key(&req.username)?;
        let address = req.client_addr.as_deref().map(address_key).transpose()?;
        if req.password.expose().len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::Invalid(format!(
                "the password must not be longer than {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        let trace_id = req.trace_id.clone().or_else(|| Some(ctx.trace_id.clone()));
        let record = |actor: Option<&str>, outcome: &str, detail: Value| AuditRecord {
            actor: actor.map(str::to_owned),
            // The attempted name, for a name that is no user.
            target: actor.is_none().then(|| bounded(&req.username)),
            client_addr: req.client_addr.as_deref().map(bounded),
            trace_id: trace_id.clone(),
            detail: Some(detail),
            ..event("login", outcome)
        };

        // One hashing slot from the throttle check to the failure count: an
        // instance never has more attempts in flight than slots.
        let slot = self.passwords.slot(ctx.deadline).await?;
        let now = self.clock.now();
        let pool = self.store.pool();
        if let Some(until) = store::active_block(pool, &account, address.as_deref(), now).await? {
            drop(slot);
            let retry_after_secs = retry_after_secs(until, now);
            let known = store::user(pool, &account).await?.map(|u| u.username);
            store::append_audit(
                pool,
                now,
                &record(
                    known.as_deref(),
                    "failure",
                    json!({"reason": "throttled", "retry_after_secs": retry_after_secs}),
                ),
            )
            .await?;
            tracing::info!(
                username = %account,
                client_addr = ?address,
                retry_after_secs,
                "login refused unchecked: throttled"
            );
            return Err(AuthError::Throttled { retry_after_secs });
        }

        let user = store::user(pool, &account).await?;
        let verification = slot
            .verify(
                &req.password,
                user.as_ref().map(|u| u.password_hash.as_str()),
            )
            .await?;
        match user {
            Some(user) if verification.matches && !user.disabled => {
                let roles = user.roles()?;
                let (token, claims) = self
                    .tokens
                    .issue(&user.username, &roles, user.version()?, now)
                    .map_err(|e| AuthError::Internal(e.to_string()))?;
                let mut tx = self.store.begin().await?;
                store::clear_throttle(&mut *tx, ThrottleScope::Account, &account).await?;
                store::append_audit(
                    &mut *tx,
                    now,
                    &record(
                        Some(&user.username),
                        "success",
                        json!({"jti": claims.jti, "roles": roles}),
                    ),
                )
                .await?;
                store::commit(tx).await?;
                if verification.outdated {
                    self.rehash(&slot, &user, &req).await;
                }
                drop(slot);
                tracing::info!(username = %user.username, jti = %claims.jti, "login succeeded");
                Ok(AccessToken {
                    access_token: token,
                    token_type: "Bearer".to_owned(),
                    expires_in: TOKEN_LIFETIME_SECS,
                })
            }
            user => {
                let reason = match &user {
                    None => "unknown_user",
                    Some(_) if !verification.matches => "wrong_password",
                    Some(_) => "disabled",
                };
                let mut tx = self.store.begin().await?;
                let failures = self
                    .record_failures(&mut tx, &account, address.as_deref(), now)
                    .await?;
                let actor = user.as_ref().map(|u| u.username.as_str());
                store::append_audit(
                    &mut *tx,
                    now,
                    &record(actor, "failure", failure_detail(reason, &failures)),
                )
                .await?;
                store::commit(tx).await?;
                drop(slot);
                for scope in &failures.lockouts {
                    self.metrics.lockout(*scope);
                    tracing::warn!(
                        scope = scope_name(*scope),
                        username = %account,
                        client_addr = ?address,
                        "login lockout started"
                    );
                }
                tracing::info!(
                    username = %account,
                    client_addr = ?address,
                    reason,
                    account_failures = failures.account,
                    "login failed"
                );
                Err(AuthError::InvalidCredentials)
            }
        }
    }

    /// Counts one failure of `account` and `address` and blocks them as the
    /// policy says, in `tx`.
    async fn record_failures(
        &self,
        tx: &mut PgConnection,
        account: &str,
        address: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Failures> {
        let mut failures = Failures::default();
        let scopes = std::iter::once((ThrottleScope::Account, account))
            .chain(address.map(|a| (ThrottleScope::Address, a)));
        for (scope, key) in scopes {
            let forget_before = now - self.policy.scope(scope).failure_reset;
            let count = store::record_failure(tx, scope, key, now, forget_before).await?;
            if let Some(block) = self.policy.block_after(scope, count, now) {
                store::set_block(tx, scope, key, block).await?;
                if block.locked {
                    failures.lockouts.push(scope);
                }
            }
            match scope {
                ThrottleScope::Account => failures.account = count,
                ThrottleScope::Address => failures.address = Some(count),
            }
        }
        Ok(failures)
    }

    /// Stores a hash at today's parameters for a password that just
    /// verified against an older one. Best effort: a failure is logged.
    async fn rehash(
        &self,
        slot: &crate::password::HashSlot<'_>,
        user: &UserRow,
        req: &LoginRequest,
    ) {
        let upgraded = match slot.hash(&req.password).await {
            Ok(hash) => {
                store::replace_hash(
                    self.store.pool(),
                    &user.username,
                    &user.password_hash,
                    &hash,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match upgraded {
            Ok(true) => tracing::info!(username = %user.username, "password hash upgraded"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(username = %user.username, error = %e, "cannot upgrade a password hash")
            }
        }
    }

    /// Revokes one token; see [`auth::Logout`].
    #[instrument(skip_all, fields(jti = %req.token.jti))]
    pub async fn logout(&self, req: LogoutRequest, ctx: &RequestContext) -> Result<Empty> {
        let token = &req.token;
        check_username(&token.sub)?;
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let revoked =
            store::revoke_token(&mut *tx, token.jti, &token.sub, token.expires_at, now).await?;
        // A repeated logout (or a redelivered one) changes and records nothing.
        if revoked {
            store::append_audit(
                &mut *tx,
                now,
                &AuditRecord {
                    actor: Some(token.sub.clone()),
                    trace_id: Some(ctx.trace_id.clone()),
                    detail: Some(json!({"jti": token.jti})),
                    ..event("logout", "success")
                },
            )
            .await?;
        }
        store::commit(tx).await?;
        Ok(Empty {})
    }

    /// Whether a verified token is still active; see [`auth::CheckToken`].
    #[instrument(skip_all, fields(jti = %req.token.jti))]
    pub async fn check_token(&self, req: CheckTokenRequest) -> Result<TokenStatus> {
        let token = &req.token;
        let inactive = TokenStatus {
            active: false,
            roles: Vec::new(),
        };
        let now = self.clock.now();
        if token.expires_at + time::Duration::seconds(MAX_LEEWAY_SECS as i64) < now {
            return Ok(inactive);
        }
        let Some(state) = store::token_state(self.store.pool(), token.jti, &token.sub).await?
        else {
            return Ok(inactive);
        };
        let current = i64::try_from(token.version).is_ok_and(|v| v == state.credential_version);
        if state.revoked || state.disabled || !current {
            return Ok(inactive);
        }
        Ok(TokenStatus {
            active: true,
            roles: state.roles()?,
        })
    }

    /// The JWKS that verifies tokens; see [`auth::TokenKeys`].
    pub fn token_keys(&self) -> JwkSet {
        self.tokens.jwks(self.clock.now())
    }

    // --- Users ---------------------------------------------------------------

    /// Creates a user; see [`auth::AddUser`].
    #[instrument(skip_all, fields(username = %req.username))]
    pub async fn add_user(&self, req: AddUserRequest, ctx: &RequestContext) -> Result<User> {
        let base = AuditRecord {
            actor: req.actor.clone(),
            target: Some(bounded(&req.username)),
            trace_id: Some(ctx.trace_id.clone()),
            detail: Some(json!({"roles": req.roles})),
            ..event("admin.add_user", "success")
        };
        let result = self.add_user_checked(req, ctx, &base).await;
        self.audit_refusal(base, result).await
    }

    async fn add_user_checked(
        &self,
        req: AddUserRequest,
        ctx: &RequestContext,
        audit: &AuditRecord,
    ) -> Result<User> {
        check_username(&req.username)?;
        let roles = normalise_roles(req.roles)?;
        check_new_password(&req.password, &req.username)?;
        let hash = {
            let slot = self.passwords.slot(ctx.deadline).await?;
            slot.hash(&req.password).await?
        };
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let Some(row) = store::insert_user(&mut *tx, &req.username, &roles, &hash, now).await?
        else {
            return Err(AuthError::UserExists(req.username));
        };
        store::append_audit(&mut *tx, now, audit).await?;
        store::commit(tx).await?;
        tracing::info!(roles = ?roles, actor = ?req.actor, "user added");
        row.to_user()
    }

    /// Every user; see [`auth::ListUsers`].
    #[instrument(skip_all)]
    pub async fn list_users(&self, _req: ListUsersRequest) -> Result<UserList> {
        Ok(UserList {
            users: store::users(self.store.pool()).await?,
        })
    }

    /// Changes roles or the disabled flag; see [`auth::UpdateUser`].
    #[instrument(skip_all, fields(username = %req.username))]
    pub async fn update_user(&self, req: UpdateUserRequest, ctx: &RequestContext) -> Result<User> {
        let base = AuditRecord {
            actor: req.actor.clone(),
            target: Some(bounded(&req.username)),
            trace_id: Some(ctx.trace_id.clone()),
            detail: Some(json!({"roles": req.roles, "disabled": req.disabled})),
            ..event("admin.update_user", "success")
        };
        let result = self.update_user_checked(req, &base).await;
        self.audit_refusal(base, result).await
    }

    async fn update_user_checked(
        &self,
        req: UpdateUserRequest,
        audit: &AuditRecord,
    ) -> Result<User> {
        check_username(&req.username)?;
        if req.roles.is_none() && req.disabled.is_none() {
            return Err(AuthError::Invalid(
                "nothing to change: give roles, disabled, or both".into(),
            ));
        }
        let roles = req.roles.map(normalise_roles).transpose()?;
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let row = store::update_user(&mut *tx, &req.username, roles.as_deref(), req.disabled, now)
            .await?
            .ok_or_else(|| AuthError::UnknownUser(req.username.clone()))?;
        store::append_audit(&mut *tx, now, audit).await?;
        store::commit(tx).await?;
        tracing::info!(roles = ?roles, disabled = ?req.disabled, actor = ?req.actor, "user updated");
        row.to_user()
    }

    /// Sets a password; see [`auth::SetPassword`].
    #[instrument(skip_all, fields(username = %req.username))]
    pub async fn set_password(
        &self,
        req: SetPasswordRequest,
        ctx: &RequestContext,
    ) -> Result<User> {
        let action = if req.current_password.is_some() {
            "password.change"
        } else {
            "admin.set_password"
        };
        let base = AuditRecord {
            actor: req.actor.clone(),
            target: Some(bounded(&req.username)),
            trace_id: Some(ctx.trace_id.clone()),
            ..event(action, "success")
        };
        let result = self.set_password_checked(req, ctx, &base).await;
        self.audit_refusal(base, result).await
    }

    async fn set_password_checked(
        &self,
        req: SetPasswordRequest,
        ctx: &RequestContext,
        audit: &AuditRecord,
    ) -> Result<User> {
        check_username(&req.username)?;
        check_new_password(&req.password, &req.username)?;
        let hash = {
            let slot = self.passwords.slot(ctx.deadline).await?;
            if let Some(current) = &req.current_password {
                // A user's own change proves the current password: it is
                // throttled and counted like a login.
                let now = self.clock.now();
                let pool = self.store.pool();
                if let Some(until) = store::active_block(pool, &req.username, None, now).await? {
                    return Err(AuthError::Throttled {
                        retry_after_secs: retry_after_secs(until, now),
                    });
                }
                let user = store::user(pool, &req.username).await?;
                let verification = slot
                    .verify(current, user.as_ref().map(|u| u.password_hash.as_str()))
                    .await?;
                if !verification.matches || user.is_none_or(|u| u.disabled) {
                    let mut tx = self.store.begin().await?;
                    let failures = self
                        .record_failures(&mut tx, &req.username, None, now)
                        .await?;
                    store::commit(tx).await?;
                    for scope in failures.lockouts {
                        self.metrics.lockout(scope);
                    }
                    return Err(AuthError::InvalidCredentials);
                }
            }
            slot.hash(&req.password).await?
        };
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let row = store::set_password_hash(&mut *tx, &req.username, &hash, now)
            .await?
            .ok_or_else(|| AuthError::UnknownUser(req.username.clone()))?;
        store::append_audit(&mut *tx, now, audit).await?;
        store::commit(tx).await?;
        tracing::info!(actor = ?req.actor, "password set; older tokens retired");
        row.to_user()
    }

    // --- Throttles -----------------------------------------------------------

    /// Current throttling state; see [`auth::ListThrottles`].
    #[instrument(skip_all)]
    pub async fn list_throttles(&self, _req: ListThrottlesRequest) -> Result<ThrottleList> {
        Ok(ThrottleList {
            entries: store::throttles(self.store.pool(), self.clock.now()).await?,
        })
    }

    /// Clears one account's or address's failures; see [`auth::ClearThrottle`].
    #[instrument(skip_all, fields(scope = scope_name(req.scope)))]
    pub async fn clear_throttle(
        &self,
        req: ClearThrottleRequest,
        ctx: &RequestContext,
    ) -> Result<ClearThrottleResponse> {
        let base = AuditRecord {
            actor: req.actor.clone(),
            target: Some(bounded(&req.key)),
            trace_id: Some(ctx.trace_id.clone()),
            ..event("admin.clear_throttle", "success")
        };
        let result = self.clear_throttle_checked(req, &base).await;
        self.audit_refusal(base, result).await
    }

    async fn clear_throttle_checked(
        &self,
        req: ClearThrottleRequest,
        audit: &AuditRecord,
    ) -> Result<ClearThrottleResponse> {
        let key = match req.scope {
            ThrottleScope::Account => account_key(&req.key)?,
            ThrottleScope::Address => address_key(&req.key)?,
        };
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let cleared = store::clear_throttle(&mut *tx, req.scope, &key).await?;
        let audit = AuditRecord {
            detail: Some(json!({"scope": req.scope, "key": key, "cleared": cleared})),
            ..audit.clone()
        };
        store::append_audit(&mut *tx, now, &audit).await?;
        store::commit(tx).await?;
        tracing::info!(key = %key, cleared, actor = ?req.actor, "login throttle cleared");
        Ok(ClearThrottleResponse { cleared })
    }

    // --- Audit trail ---------------------------------------------------------

    /// Appends what the gateway reports; see [`auth::AppendAudit`].
    #[instrument(skip_all, fields(action = %record.action))]
    pub async fn append_audit(&self, record: AuditRecord) -> Result<AuditAppended> {
        check_audit_record(&record)?;
        let id = store::append_audit(self.store.pool(), self.clock.now(), &record).await?;
        Ok(AuditAppended { id })
    }

    /// A page of the trail, newest first; see [`auth::ListAudit`].
    #[instrument(skip_all)]
    pub async fn list_audit(&self, req: ListAuditRequest) -> Result<AuditPage> {
        if req.limit == 0 || req.limit > MAX_AUDIT_PAGE {
            return Err(AuthError::Invalid(format!(
                "limit must be between 1 and {MAX_AUDIT_PAGE}"
            )));
        }
        if req.before_id.is_some_and(|id| id <= 0) {
            return Err(AuthError::Invalid("before_id must be positive".into()));
        }
        if [&req.actor, &req.action]
            .into_iter()
            .flatten()
            .any(|f| f.contains('\0'))
        {
            return Err(AuthError::Invalid(
                "actor and action filters must not contain NUL characters".into(),
            ));
        }
        let mut entries = store::audit_page(
            self.store.pool(),
            req.before_id,
            i64::from(req.limit) + 1,
            req.actor.as_deref(),
            req.action.as_deref(),
        )
        .await?;
        let more = entries.len() > req.limit as usize;
        entries.truncate(req.limit as usize);
        let next_cursor = if more {
            entries.last().map(|e| e.id)
        } else {
            None
        };
        Ok(AuditPage {
            entries,
            next_cursor,
        })
    }

    /// Passes `result` through; when the caller's request was refused,
    /// first records the refusal (`base` with outcome `failure` and the
    /// code). Best effort: an entry that cannot be written is logged.
    async fn audit_refusal<T>(&self, base: AuditRecord, result: Result<T>) -> Result<T> {
        if let Err(e) = &result
            && e.is_callers_fault()
        {
            let mut detail = base.detail.clone().unwrap_or_else(|| json!({}));
            if let Some(members) = detail.as_object_mut() {
                members.insert("code".into(), e.code().as_str().into());
            }
            let record = AuditRecord {
                outcome: "failure".to_owned(),
                detail: Some(detail),
                ..base
            };
            if let Err(audit_err) =
                store::append_audit(self.store.pool(), self.clock.now(), &record).await
            {
                tracing::warn!(error = %audit_err, action = %record.action, "cannot audit a refused call");
            }
        }
        result
    }

    /// Deletes throttle rows and revocations that no longer matter.
    pub async fn forget_stale(&self) -> Result<(u64, u64)> {
        let now = self.clock.now();
        store::forget_stale(
            self.store.pool(),
            now,
            now - self.policy.account.failure_reset,
            now - self.policy.address.failure_reset,
            now - time::Duration::seconds(MAX_LEEWAY_SECS as i64),
        )
        .await
    }
}

/// An audit record of `action` with `outcome` and nothing else.
fn event(action: &str, outcome: &str) -> AuditRecord {
    AuditRecord {
        actor: None,
        action: action.to_owned(),
        endpoint: None,
        outcome: outcome.to_owned(),
        status: None,
        submitter_id: None,
        range_from: None,
        range_to: None,
        rows: None,
        bytes: None,
        target: None,
        client_addr: None,
        trace_id: None,
        detail: None,
    }
}

fn failure_detail(reason: &str, failures: &Failures) -> Value {
    let mut detail = json!({"reason": reason, "account_failures": failures.account});
    if let Some(members) = detail.as_object_mut() {
        if let Some(n) = failures.address {
            members.insert("address_failures".into(), n.into());
        }
        if !failures.lockouts.is_empty() {
            let scopes: Vec<&str> = failures.lockouts.iter().map(|s| scope_name(*s)).collect();
            members.insert("lockout_started".into(), json!(scopes));
        }
    }
    detail
}

/// `text` cut to [`MAX_LOGIN_NAME_CHARS`] characters (what the trail keeps
/// of free text from a login form).
fn bounded(text: &str) -> String {
    text.chars().take(MAX_LOGIN_NAME_CHARS).collect()
}

/// Checks a username: 1 to 64 of lowercase letters, digits, `.`, `_`,
/// `-`, `@`.
pub fn check_username(username: &str) -> Result<()> {
    let count = username.chars().count();
    let ok = (1..=MAX_USERNAME_CHARS).contains(&count)
        && username.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '@')
        });
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "username {:?} is invalid: use 1 to {MAX_USERNAME_CHARS} of lowercase letters, \
             digits, '.', '_', '-', '@'",
            bounded(username)
        )))
    }
}

/// The throttling key of a login name: the name lowercased (usernames are
/// lowercase, so `Alice` and `alice` share one counter). Any name is
/// accepted, existing or not.
pub fn account_key(username: &str) -> Result<String> {
    let key = username.to_lowercase();
    if key.contains('\0') {
        // PostgreSQL text cannot hold NUL: refuse it as bad input here
        // rather than fail in the database.
        return Err(AuthError::Invalid(
            "username must not contain NUL characters".into(),
        ));
    }
    let count = key.chars().count();
    if count == 0 {
        return Err(AuthError::Invalid("username must not be empty".into()));
    }
    if count > MAX_LOGIN_NAME_CHARS {
        return Err(AuthError::Invalid(format!(
            "username must not be longer than {MAX_LOGIN_NAME_CHARS} characters"
        )));
    }
    Ok(key)
}

/// The throttling key of a client address: an IPv4 address as is, an IPv6
/// address as its /64 prefix (one subscriber usually holds a whole /64),
/// a port dropped; anything else as given (trimmed).
pub fn address_key(addr: &str) -> Result<String> {
    let addr = addr.trim();
    if addr.is_empty() || addr.chars().count() > MAX_CLIENT_ADDR_CHARS {
        return Err(AuthError::Invalid(format!(
            "client_addr must have 1 to {MAX_CLIENT_ADDR_CHARS} characters"
        )));
    }
    let ip = addr
        .parse::<IpAddr>()
        .ok()
        .or_else(|| addr.parse::<SocketAddr>().ok().map(|s| s.ip()));
    Ok(match ip {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", Ipv6Addr::from(bits))
            }
        },
        None => addr.to_owned(),
    })
}

/// Sorted, without duplicates, at least one.
fn normalise_roles(mut roles: Vec<Role>) -> Result<Vec<Role>> {
    roles.sort_unstable();
    roles.dedup();
    if roles.is_empty() {
        return Err(AuthError::Invalid(
            "a user needs at least one role (admin, analyst or auditor)".into(),
        ));
    }
    Ok(roles)
}

fn check_audit_record(r: &AuditRecord) -> Result<()> {
    let invalid = |m: String| Err(AuthError::Invalid(m));
    let action_ok = !r.action.is_empty()
        && r.action.len() <= 100
        && r.action.starts_with(|c: char| c.is_ascii_lowercase())
        && r.action
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    if !action_ok {
        return invalid(format!(
            "action {:?} is invalid: lowercase letters, digits, '_' and '.', starting with a \
             letter, at most 100",
            bounded(&r.action)
        ));
    }
    if !matches!(r.outcome.as_str(), "success" | "failure" | "denied") {
        return invalid("outcome must be success, failure or denied".into());
    }
    if r.status.is_some_and(|s| !(100..=599).contains(&s)) {
        return invalid("status must be an HTTP status (100 to 599)".into());
    }
    for (name, value) in [
        ("actor", &r.actor),
        ("endpoint", &r.endpoint),
        ("target", &r.target),
        ("client_addr", &r.client_addr),
        ("trace_id", &r.trace_id),
    ] {
        if let Some(v) = value {
            if v.chars().count() > MAX_AUDIT_TEXT_CHARS {
                return invalid(format!(
                    "{name} must not be longer than {MAX_AUDIT_TEXT_CHARS} characters"
                ));
            }
            if v.chars().any(char::is_control) {
                return invalid(format!("{name} must not contain control characters"));
            }
        }
    }
    for (name, value) in [("rows", r.rows), ("bytes", r.bytes)] {
        if value.is_some_and(|v| i64::try_from(v).is_err()) {
            return invalid(format!("{name} is too large"));
        }
    }
    if let (Some(from), Some(to)) = (r.range_from, r.range_to)
        && from > to
    {
        return invalid("range_from must not be after range_to".into());
    }
    if let Some(detail) = &r.detail {
        let size = serde_json::to_vec(detail).map_or(usize::MAX, |v| v.len());
        if size > MAX_AUDIT_DETAIL_BYTES {
            return invalid(format!(
                "detail must not be larger than {MAX_AUDIT_DETAIL_BYTES} bytes of JSON"
            ));
        }
    }
    Ok(())
}

/// The auth service's RPC server: every `auth.v1` call, served by `auth`.
pub fn server(auth: Arc<Auth>) -> RpcServer {
    let builder = RpcServer::builder(auth::QUEUE).on::<auth::Ping, _, _>(
        |ctx, _req: PingRequest| async move {
            Ok(PingResponse {
                service: crate::SERVICE.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                instance: ctx.instance.to_string(),
            })
        },
    );
    let builder = serve::<auth::Login, _, _>(builder, &auth, |a, ctx, req| async move {
        a.login(req, &ctx).await
    });
    let builder = serve::<auth::Logout, _, _>(builder, &auth, |a, ctx, req| async move {
        a.logout(req, &ctx).await
    });
    let builder = serve::<auth::CheckToken, _, _>(builder, &auth, |a, _ctx, req| async move {
        a.check_token(req).await
    });
    let builder = serve::<auth::TokenKeys, _, _>(
        builder,
        &auth,
        |a, _ctx, _req: TokenKeysRequest| async move { Ok(a.token_keys()) },
    );
    let builder = serve::<auth::AddUser, _, _>(builder, &auth, |a, ctx, req| async move {
        a.add_user(req, &ctx).await
    });
    let builder = serve::<auth::ListUsers, _, _>(builder, &auth, |a, _ctx, req| async move {
        a.list_users(req).await
    });
    let builder = serve::<auth::UpdateUser, _, _>(builder, &auth, |a, ctx, req| async move {
        a.update_user(req, &ctx).await
    });
    let builder = serve::<auth::SetPassword, _, _>(builder, &auth, |a, ctx, req| async move {
        a.set_password(req, &ctx).await
    });
    let builder = serve::<auth::ListThrottles, _, _>(builder, &auth, |a, _ctx, req| async move {
        a.list_throttles(req).await
    });
    let builder = serve::<auth::ClearThrottle, _, _>(builder, &auth, |a, ctx, req| async move {
        a.clear_throttle(req, &ctx).await
    });
    let builder = serve::<auth::AppendAudit, _, _>(builder, &auth, |a, _ctx, req| async move {
        a.append_audit(req).await
    });
    let builder = serve::<auth::ListAudit, _, _>(builder, &auth, |a, _ctx, req| async move {
        a.list_audit(req).await
    });
    let builder = serve::<auth::PurgeStale, _, _>(
        builder,
        &auth,
        |a, _ctx, _req: PurgeStaleRequest| async move {
            let (throttles, revocations) = a.forget_stale().await?;
            Ok(PurgeStaleResponse {
                throttles,
                revocations,
            })
        },
    );
    let builder =
        serve::<auth::RotateSigningKey, _, _>(builder, &auth, |a, _ctx, req| async move {
            crate::keys::rotate(&a, req).await
        });
    builder.build()
}

/// Registers `handler` for `C`, mapping its [`AuthError`] to the wire.
fn serve<C, F, Fut>(builder: RpcServerBuilder, auth: &Arc<Auth>, handler: F) -> RpcServerBuilder
where
    C: Call,
    F: Fn(Arc<Auth>, RequestContext, C::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<C::Response>> + Send + 'static,
{
    let auth = auth.clone();
    builder.on::<C, _, _>(move |ctx, req| {
        let fut = handler(auth.clone(), ctx, req);
        async move { fut.await.map_err(RpcError::from) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::AuthMetrics;
    use crate::store::MIGRATOR;
    use crate::throttle::ScopePolicy;
    use rpc_contracts::ErrorCode;
    use rpc_contracts::auth::{Password, TokenIdentity};
    use std::sync::Mutex;
    use time::Duration;
    use time::macros::datetime;

    /// The handlers on a fresh, migrated database, with the clock pinned
    /// and moved by the test (no sleeping).
    struct World {
        auth: Auth,
        now: Arc<Mutex<OffsetDateTime>>,
        db: String,
        db_url: String,
    }

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            account: ScopePolicy {
                delay_after_failures: 2,
                lockout_after_failures: 5,
                lockout: Duration::minutes(15),
                failure_reset: Duration::hours(12),
            },
            address: ScopePolicy {
                delay_after_failures: 0,
                lockout_after_failures: 4,
                lockout: Duration::minutes(30),
                failure_reset: Duration::hours(1),
            },
            delay_base: Duration::seconds(1),
            delay_max: Duration::seconds(60),
        }
    }

    fn ctx() -> RequestContext {
        RequestContext {
            method: "test",
            trace_id: "trace-test".into(),
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(60),
            delivery_count: 0,
            instance: Arc::from("test"),
        }
    }

    fn pw(s: &str) -> Password {
        Password(s.to_owned())
    }

    const PASSWORD: &str = "correct horse battery staple";

    impl World {
        async fn new() -> Self {
            let (db, db_url) = platform::testing::test_database().await;
            let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
            MIGRATOR.run(&pool).await.unwrap();
            let now = Arc::new(Mutex::new(datetime!(2026-03-01 09:00 UTC)));
            let clock_now = now.clone();
            let clock = Clock::from_fn(move || *clock_now.lock().unwrap());
            let metrics = AuthMetrics::default();
            let passwords = Passwords::new(2, metrics.clone()).await.unwrap();
            let auth = Auth::new(
                Store::new(pool),
                clock,
                passwords,
                TokenSigner::generate("iss", "aud"),
                policy(),
                metrics,
            );
            Self {
                auth,
                now,
                db,
                db_url,
            }
        }

        fn advance(&self, by: Duration) {
            *self.now.lock().unwrap() += by;
        }

        async fn add(&self, username: &str, roles: Vec<Role>) -> User {
            self.auth
                .add_user(
                    AddUserRequest {
                        username: username.into(),
                        roles,
                        password: pw(PASSWORD),
                        actor: Some("root".into()),
                    },
                    &ctx(),
                )
                .await
                .unwrap()
        }

        async fn login(
            &self,
            username: &str,
            password: &str,
            addr: Option<&str>,
        ) -> Result<AccessToken> {
            self.auth
                .login(
                    LoginRequest {
                        username: username.into(),
                        password: pw(password),
                        client_addr: addr.map(str::to_owned),
                        trace_id: None,
                    },
                    &ctx(),
                )
                .await
        }

        async fn rows(&self, sql: &str) -> Vec<Value> {
            platform::testing::query_json(&self.db_url, sql).await
        }

        async fn finish(self) {
            self.auth.store().close().await;
            platform::testing::drop_test_database(&self.db).await;
        }
    }

    fn code<T: std::fmt::Debug>(r: Result<T>) -> ErrorCode {
        r.expect_err("an error").code()
    }

    fn retry_after<T: std::fmt::Debug>(r: Result<T>) -> u64 {
        match r {
            Err(AuthError::Throttled { retry_after_secs }) => retry_after_secs,
            other => panic!("expected login_throttled, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn account_delays_double_then_lock_and_a_success_clears_them() {
        let w = World::new().await;
        w.add("alice", vec![Role::Analyst]).await;
        // Two failures without delay.
        for _ in 0..2 {
            assert_eq!(
                code(w.login("alice", "wrong password!", None).await),
                ErrorCode::InvalidCredentials
            );
        }
        // The third delays the next attempt by 1 s: even the right password
        // is refused unchecked.
        assert_eq!(
            code(w.login("alice", "wrong password!", None).await),
            ErrorCode::InvalidCredentials
        );
        assert_eq!(retry_after(w.login("alice", PASSWORD, None).await), 1);
        w.advance(Duration::seconds(1));
        // The fourth: 2 s.
        assert_eq!(
            code(w.login("ALICE", "wrong password!", None).await),
            ErrorCode::InvalidCredentials
        );
        assert_eq!(retry_after(w.login("alice", PASSWORD, None).await), 2);
        w.advance(Duration::seconds(2));
        // The fifth locks the account for 15 minutes.
        assert_eq!(
            code(w.login("alice", "wrong password!", None).await),
            ErrorCode::InvalidCredentials
        );
        assert_eq!(retry_after(w.login("alice", PASSWORD, None).await), 900);
        let list = w
            .auth
            .list_throttles(ListThrottlesRequest {})
            .await
            .unwrap();
        assert_eq!(list.entries.len(), 1);
        let entry = &list.entries[0];
        assert_eq!(
            (
                entry.scope,
                entry.key.as_str(),
                entry.failures,
                entry.locked
            ),
            (ThrottleScope::Account, "alice", 5, true)
        );
        assert_eq!(
            entry.blocked_until,
            Some(datetime!(2026-03-01 09:15:03 UTC))
        );
        // Once it ends, one more failure locks again at once.
        w.advance(Duration::minutes(15));
        assert_eq!(
            code(w.login("alice", "wrong password!", None).await),
            ErrorCode::InvalidCredentials
        );
        assert_eq!(retry_after(w.login("alice", PASSWORD, None).await), 900);
        w.advance(Duration::minutes(15));
        // A success clears the account.
        w.login("alice", PASSWORD, None).await.unwrap();
        assert!(
            w.auth
                .list_throttles(ListThrottlesRequest {})
                .await
                .unwrap()
                .entries
                .is_empty()
        );
        let outcomes = w
            .rows("SELECT outcome, actor, detail->>'reason' AS reason FROM audit_log WHERE action = 'login' ORDER BY id")
            .await;
        let reasons: Vec<Option<&str>> = outcomes.iter().map(|r| r["reason"].as_str()).collect();
        assert_eq!(
            reasons,
            [
                Some("wrong_password"),
                Some("wrong_password"),
                Some("wrong_password"),
                Some("throttled"),
                Some("wrong_password"),
                Some("throttled"),
                Some("wrong_password"),
                Some("throttled"),
                Some("wrong_password"),
                Some("throttled"),
                None,
            ]
        );
        assert!(outcomes.iter().all(|r| r["actor"] == "alice"));
        w.finish().await;
    }

    #[tokio::test]
    async fn unknown_names_are_throttled_like_accounts_and_failures_are_forgotten() {
        let w = World::new().await;
        for _ in 0..3 {
            assert_eq!(
                code(w.login("mallory", "guess guess guess", None).await),
                ErrorCode::InvalidCredentials
            );
        }
        assert_eq!(
            retry_after(w.login("mallory", "guess guess guess", None).await),
            1
        );
        // Twelve hours later the count starts again.
        w.advance(Duration::hours(13));
        assert_eq!(
            code(w.login("mallory", "guess guess guess", None).await),
            ErrorCode::InvalidCredentials
        );
        let list = w
            .auth
            .list_throttles(ListThrottlesRequest {})
            .await
            .unwrap();
        assert_eq!(
            (list.entries[0].failures, list.entries[0].blocked_until),
            (1, None)
        );
        let rows = w
            .rows("SELECT actor, target FROM audit_log ORDER BY id DESC LIMIT 1")
            .await;
        assert_eq!(rows, vec![json!({"actor": null, "target": "mallory"})]);
        // The cleanup forgets it once its reset time has passed.
        w.advance(Duration::hours(13));
        assert_eq!(w.auth.forget_stale().await.unwrap(), (1, 0));
        w.finish().await;
    }

    #[tokio::test]
    async fn an_address_spraying_names_is_locked_out_for_every_account() {
        let w = World::new().await;
        w.add("alice", vec![Role::Analyst]).await;
        for name in ["a1", "a2", "a3", "a4"] {
            assert_eq!(
                code(
                    w.login(name, "spray spray spray", Some("2001:db8:1:2::7"))
                        .await
                ),
                ErrorCode::InvalidCredentials
            );
        }
        // Another address of the same /64 is blocked too, even for alice.
        assert_eq!(
            retry_after(
                w.login("alice", PASSWORD, Some("[2001:db8:1:2::99]:5000"))
                    .await
            ),
            1800
        );
        // Elsewhere alice logs in.
        w.login("alice", PASSWORD, Some("203.0.113.9"))
            .await
            .unwrap();
        let cleared = w
            .auth
            .clear_throttle(
                ClearThrottleRequest {
                    scope: ThrottleScope::Address,
                    key: "2001:db8:1:2::1".into(),
                    actor: None,
                },
                &ctx(),
            )
            .await
            .unwrap();
        assert!(cleared.cleared);
        w.login("alice", PASSWORD, Some("2001:db8:1:2::7"))
            .await
            .unwrap();
        let rows = w
            .rows(
                "SELECT actor, target, detail FROM audit_log WHERE action = 'admin.clear_throttle'",
            )
            .await;
        assert_eq!(
            rows,
            vec![json!({
                "actor": null,
                "target": "2001:db8:1:2::1",
                "detail": {"scope": "address", "key": "2001:db8:1:2::/64", "cleared": true},
            })]
        );
        w.finish().await;
    }

    #[tokio::test]
    async fn tokens_retire_with_logout_password_changes_and_disabling() {
        let w = World::new().await;
        w.add("alice", vec![Role::Analyst]).await;
        let identity = |token: &AccessToken| {
            let payload = token.access_token.split('.').nth(1).unwrap();
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap();
            let claims: rpc_contracts::auth::AccessClaims = serde_json::from_slice(&bytes).unwrap();
            TokenIdentity {
                jti: claims.jti,
                sub: claims.sub,
                issued_at: OffsetDateTime::from_unix_timestamp(claims.iat).unwrap(),
                expires_at: OffsetDateTime::from_unix_timestamp(claims.exp).unwrap(),
                version: claims.ver,
            }
        };
        let check = |t: TokenIdentity| w.auth.check_token(CheckTokenRequest { token: t });
        let first = identity(&w.login("alice", PASSWORD, None).await.unwrap());
        let second = identity(&w.login("alice", PASSWORD, None).await.unwrap());
        assert_eq!(
            check(first.clone()).await.unwrap(),
            TokenStatus {
                active: true,
                roles: vec![Role::Analyst]
            }
        );
        // Logout retires that token only.
        w.auth
            .logout(
                LogoutRequest {
                    token: first.clone(),
                },
                &ctx(),
            )
            .await
            .unwrap();
        w.auth
            .logout(
                LogoutRequest {
                    token: first.clone(),
                },
                &ctx(),
            )
            .await
            .unwrap();
        assert!(!check(first.clone()).await.unwrap().active);
        assert!(check(second.clone()).await.unwrap().active);
        // Expired (beyond the leeway): inactive.
        w.advance(Duration::days(1) + Duration::minutes(2));
        assert!(!check(second.clone()).await.unwrap().active);
        w.advance(-(Duration::days(1) + Duration::minutes(2)));
        // A role change is answered at once, without a new token.
        w.auth
            .update_user(
                UpdateUserRequest {
                    username: "alice".into(),
                    roles: Some(vec![Role::Auditor]),
                    disabled: None,
                    actor: None,
                },
                &ctx(),
            )
            .await
            .unwrap();
        assert_eq!(
            check(second.clone()).await.unwrap().roles,
            vec![Role::Auditor]
        );
        // An admin reset retires every older token.
        w.auth
            .set_password(
                SetPasswordRequest {
                    username: "alice".into(),
                    password: pw("a brand new password"),
                    current_password: None,
                    actor: None,
                },
                &ctx(),
            )
            .await
            .unwrap();
        assert!(!check(second.clone()).await.unwrap().active);
        // A user's own change needs the current password.
        let third = identity(
            &w.login("alice", "a brand new password", None)
                .await
                .unwrap(),
        );
        assert_eq!(third.version, 2);
        let own = |current: &str| SetPasswordRequest {
            username: "alice".into(),
            password: pw("yet another password"),
            current_password: Some(pw(current)),
            actor: Some("alice".into()),
        };
        assert_eq!(
            code(w.auth.set_password(own("not the password"), &ctx()).await),
            ErrorCode::InvalidCredentials
        );
        assert!(check(third.clone()).await.unwrap().active);
        w.auth
            .set_password(own("a brand new password"), &ctx())
            .await
            .unwrap();
        assert!(!check(third).await.unwrap().active);
        // Disabling retires tokens, enabling does not bring them back.
        let fourth = identity(
            &w.login("alice", "yet another password", None)
                .await
                .unwrap(),
        );
        let disable = |d: bool| UpdateUserRequest {
            username: "alice".into(),
            roles: None,
            disabled: Some(d),
            actor: None,
        };
        w.auth.update_user(disable(true), &ctx()).await.unwrap();
        assert!(!check(fourth.clone()).await.unwrap().active);
        assert_eq!(
            code(w.login("alice", "yet another password", None).await),
            ErrorCode::InvalidCredentials
        );
        w.auth.update_user(disable(false), &ctx()).await.unwrap();
        assert!(!check(fourth).await.unwrap().active);
        w.login("alice", "yet another password", None)
            .await
            .unwrap();
        let actions = w
            .rows("SELECT action, outcome FROM audit_log WHERE action <> 'login' ORDER BY id")
            .await;
        assert_eq!(
            actions,
            vec![
                json!({"action": "admin.add_user", "outcome": "success"}),
                json!({"action": "logout", "outcome": "success"}),
                json!({"action": "admin.update_user", "outcome": "success"}),
                json!({"action": "admin.set_password", "outcome": "success"}),
                json!({"action": "password.change", "outcome": "failure"}),
                json!({"action": "password.change", "outcome": "success"}),
                json!({"action": "admin.update_user", "outcome": "success"}),
                json!({"action": "admin.update_user", "outcome": "success"}),
            ]
        );
        w.finish().await;
    }

    #[tokio::test]
    async fn the_audit_trail_pages_newest_first_with_filters() {
        let w = World::new().await;
        let mut ids = Vec::new();
        for i in 0..5 {
            let record = AuditRecord {
                actor: Some(if i % 2 == 0 { "ann" } else { "ben" }.into()),
                rows: Some(i),
                ..event("read.packages", "success")
            };
            ids.push(w.auth.append_audit(record).await.unwrap().id);
        }
        let page = |before_id, limit, actor: Option<&str>| {
            w.auth.list_audit(ListAuditRequest {
                before_id,
                limit,
                actor: actor.map(str::to_owned),
                action: None,
            })
        };
        let first = page(None, 2, None).await.unwrap();
        let got: Vec<i64> = first.entries.iter().map(|e| e.id).collect();
        assert_eq!(got, [ids[4], ids[3]]);
        assert_eq!(first.next_cursor, Some(ids[3]));
        let last = page(Some(ids[1]), 2, None).await.unwrap();
        assert_eq!(last.entries.len(), 1);
        assert_eq!(last.next_cursor, None);
        let ann = page(None, 10, Some("ann")).await.unwrap();
        assert_eq!(
            ann.entries
                .iter()
                .map(|e| e.record.rows)
                .collect::<Vec<_>>(),
            [Some(4), Some(2), Some(0)]
        );
        assert_eq!(ann.entries[0].at, datetime!(2026-03-01 09:00 UTC));
        assert_eq!(code(page(None, 0, None).await), ErrorCode::BadRequest);
        assert_eq!(code(page(None, 1001, None).await), ErrorCode::BadRequest);
        w.finish().await;
    }

    #[test]
    fn usernames_follow_the_contract() {
        for ok in [
            "alice",
            "a",
            "bob.smith@regulator.example",
            "x_y-z.9",
            &"a".repeat(64),
        ] {
            assert!(check_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "al ice",
            "al/ice",
            "ålice",
            &"a".repeat(65),
            "a\u{0}",
        ] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn login_names_are_lowercased_and_bounded() {
        assert_eq!(account_key("Alice").unwrap(), "alice");
        assert_eq!(account_key("no such user!").unwrap(), "no such user!");
        assert!(account_key("").is_err());
        assert!(
            account_key("al\0ice").is_err(),
            "NUL cannot reach PostgreSQL text"
        );
        assert!(account_key(&"a".repeat(MAX_LOGIN_NAME_CHARS + 1)).is_err());
    }

    #[test]
    fn ipv6_addresses_are_throttled_by_their_64_prefix() {
        let cases = [
            ("203.0.113.7", "203.0.113.7"),
            (" 203.0.113.7:51234 ", "203.0.113.7"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
            ("[2001:db8:1:2::9]:443", "2001:db8:1:2::/64"),
            ("gateway-test", "gateway-test"),
        ];
        for (given, key) in cases {
            assert_eq!(address_key(given).unwrap(), key, "{given}");
        }
        assert!(address_key("  ").is_err());
    }

    #[test]
    fn roles_are_sorted_deduplicated_and_required() {
        assert_eq!(
            normalise_roles(vec![Role::Auditor, Role::Admin, Role::Auditor]).unwrap(),
            vec![Role::Admin, Role::Auditor]
        );
        assert!(normalise_roles(vec![]).is_err());
    }

    #[test]
    fn audit_records_are_checked() {
        let ok = AuditRecord {
            status: Some(200),
            rows: Some(3),
            ..event("read.packages", "success")
        };
        assert!(check_audit_record(&ok).is_ok());
        let cases: Vec<(AuditRecord, &str)> = vec![
            (event("", "success"), "action"),
            (event("Read", "success"), "action"),
            (event("read packages", "success"), "action"),
            (event("read", "ok"), "outcome"),
            (
                AuditRecord {
                    status: Some(42),
                    ..event("read", "success")
                },
                "status",
            ),
            (
                AuditRecord {
                    actor: Some("a\nb".into()),
                    ..event("read", "success")
                },
                "actor",
            ),
            (
                AuditRecord {
                    rows: Some(u64::MAX),
                    ..event("read", "success")
                },
                "rows",
            ),
            (
                AuditRecord {
                    detail: Some(json!("x".repeat(MAX_AUDIT_DETAIL_BYTES))),
                    ..event("read", "success")
                },
                "detail",
            ),
        ];
        for (record, fragment) in cases {
            let err = check_audit_record(&record).unwrap_err();
            assert!(err.to_string().contains(fragment), "{fragment}: {err}");
        }
    }
}
