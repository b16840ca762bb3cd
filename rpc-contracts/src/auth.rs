//! Calls served by the auth service: back-office users and their roles,
//! logins and day-long access tokens (ES256 JWTs), token revocation, login
//! throttling, and the append-only audit trail.
//!
//! The gateway verifies token signatures itself with the keys of
//! [`TokenKeys`]; it asks [`CheckToken`] (through a short cache) only whether
//! a valid token has been revoked since it was issued.

use crate::registry::{PingRequest, PingResponse};
use crate::{ServiceQueue, SubmitterId};
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;
use uuid::Uuid;

pub use crate::ingest::JwkSet;

/// The auth queue, contract version 1.
pub const QUEUE: ServiceQueue = ServiceQueue::new("auth.v1");

/// Lifetime of an access token: one day.
pub const TOKEN_LIFETIME_SECS: u64 = 24 * 60 * 60;
/// The most clock skew a verifier tolerates on `exp` and `nbf`.
pub const MAX_LEEWAY_SECS: u64 = 60;
/// The only signature algorithm of access tokens.
pub const TOKEN_ALGORITHM: &str = "ES256";
/// `iss` of access tokens unless configured otherwise.
pub const DEFAULT_TOKEN_ISSUER: &str = "tallyhouse-auth";
/// `aud` of access tokens unless configured otherwise.
pub const DEFAULT_TOKEN_AUDIENCE: &str = "tallyhouse-back-office";

/// The claims of an access token (a JWT signed ES256, `typ` `JWT`, `kid` the
/// RFC 7638 thumbprint of the signing key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The username.
    pub sub: String,
    /// The user's roles when the token was issued (the gateway honours the
    /// current roles [`CheckToken`] answers).
    pub roles: Vec<Role>,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Token id (UUID v4), what logout revokes.
    pub jti: Uuid,
    /// The user's credential version when issued: a password change or
    /// disabling the user bumps it, which retires every older token.
    pub ver: u64,
}

define_call!(
    QUEUE,
    /// Liveness over the bus: proves an auth instance consumes its queue.
    Ping, "auth.v1.ping", PingRequest => PingResponse
);
define_call!(
    QUEUE,
    /// Checks a password and issues an access token. Every attempt, success
    /// or failure, is appended to the audit trail by the auth service itself.
    /// Errors: `invalid_credentials` (unknown user, wrong password or disabled
    /// user: one generic answer), `login_throttled` (with `retry_after_secs`
    /// in the message's place, see [`LoginThrottled`]).
    Login, "auth.v1.login", LoginRequest => AccessToken
);
define_call!(
    QUEUE,
    /// Revokes one token (by `jti`) until it would have expired anyway.
    Logout, "auth.v1.logout", LogoutRequest => Empty
);
define_call!(
    QUEUE,
    /// Whether a token whose signature and times already verified is still
    /// active: not revoked, its user not disabled, and not issued before the
    /// user's last password change.
    CheckToken, "auth.v1.check_token", CheckTokenRequest => TokenStatus
);
define_call!(
    QUEUE,
    /// The public keys that verify access tokens, as a JWKS (current and
    /// still-published previous keys).
    TokenKeys, "auth.v1.token_keys", TokenKeysRequest => JwkSet
);
define_call!(
    QUEUE,
    /// Creates a user. An existing username is `conflict`.
    AddUser, "auth.v1.add_user", AddUserRequest => User
);
define_call!(
    QUEUE,
    /// Every user, by username.
    ListUsers, "auth.v1.list_users", ListUsersRequest => UserList
);
define_call!(
    QUEUE,
    /// Changes a user's roles or disables/enables them. Disabling revokes
    /// every token the user holds.
    UpdateUser, "auth.v1.update_user", UpdateUserRequest => User
);
define_call!(
    QUEUE,
    /// Sets a user's password (an admin reset, or the user's own change with
    /// `current_password`). Revokes every token the user holds.
    SetPassword, "auth.v1.set_password", SetPasswordRequest => User
);
define_call!(
    QUEUE,
    /// Login throttling state: accounts and client addresses with recent
    /// failures, delays and lockouts.
    ListThrottles, "auth.v1.list_throttles", ListThrottlesRequest => ThrottleList
);
define_call!(
    QUEUE,
    /// Clears the throttling state of one account or client address.
    ClearThrottle, "auth.v1.clear_throttle", ClearThrottleRequest => ClearThrottleResponse
);
define_call!(
    QUEUE,
    /// Appends one entry to the audit trail; answers its id.
    AppendAudit, "auth.v1.append_audit", AuditRecord => AuditAppended
);
define_call!(
    QUEUE,
    /// A page of the audit trail, newest first.
    ListAudit, "auth.v1.list_audit", ListAuditRequest => AuditPage
);
define_call!(
    QUEUE,
    /// Forgets what auth keeps only for a while: login-throttle state past
    /// its reset time and revocations of tokens that have expired anyway.
    /// Never an audit entry. Called by the ingest `cleanup` job.
    PurgeStale, "auth.v1.purge_stale", PurgeStaleRequest => PurgeStaleResponse
);
define_call!(
    QUEUE,
    /// One step of the token signing key's rotation (the ingest
    /// `rotate-keys` job calls it): publishes a next key when the active one
    /// is due, activates a published one whose time has come, retires
    /// previous keys whose tokens have all expired.
    RotateSigningKey, "auth.v1.rotate_signing_key", RotateSigningKeyRequest => RotateSigningKeyResponse
);

/// A back-office role. Each gateway endpoint names the roles it admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages users, submitters and keys; does not read evidence.
    Admin,
    /// Reads packages and series.
    Analyst,
    /// Reads everything, the audit trail included; changes nothing.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Analyst, Role::Auditor];

    /// The wire name (`admin`, `analyst`, `auditor`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Analyst => "analyst",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (expected admin, analyst or auditor)"))
    }
}

/// A password in transit. Its `Debug` never shows it, so a request logged
/// with `{:?}` leaks nothing.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(pub String);

impl Password {
    /// The password text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// An empty response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Request of [`Login`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The username as typed.
    pub username: String,
    /// The password as typed.
    pub password: Password,
    /// The client's address as the gateway saw it, for per-address
    /// throttling and the audit trail.
    #[serde(default)]
    pub client_addr: Option<String>,
    /// The request's trace id, for the audit trail.
    #[serde(default)]
    pub trace_id: Option<String>,
}

/// Response of [`Login`]: the OAuth 2.0 token response shape (RFC 6749 §5.1).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessToken {
    /// The ES256 JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until it expires (86,400 for a fresh token).
    pub expires_in: u64,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// The `message` of a `login_throttled` error is this, as JSON, so that the
/// gateway can answer `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginThrottled {
    /// Seconds until the next attempt is considered.
    pub retry_after_secs: u64,
}

/// The identity a verified token carries, as the gateway passes it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenIdentity {
    /// The token's id (`jti`).
    pub jti: Uuid,
    /// The username (`sub`).
    pub sub: String,
    /// When it was issued (`iat`).
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// When it expires (`exp`).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The credential version it carries (`ver`).
    pub version: u64,
}

/// Request of [`Logout`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// The token to revoke (already verified by the gateway).
    pub token: TokenIdentity,
}

/// Request of [`CheckToken`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckTokenRequest {
    /// The token to check (already verified by the gateway).
    pub token: TokenIdentity,
}

/// Response of [`CheckToken`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenStatus {
    /// Whether the token may be used.
    pub active: bool,
    /// The user's current roles (a role removed since the token was issued
    /// is not honoured).
    pub roles: Vec<Role>,
}

/// Request of [`TokenKeys`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeysRequest {}

/// Request of [`AddUser`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddUserRequest {
    /// Lowercase letters, digits, `.`, `_`, `-`, `@`; 1 to 64 characters.
    pub username: String,
    /// At least one role.
    pub roles: Vec<Role>,
    /// At least 12 characters.
    pub password: Password,
    /// Who asks (`None` for the operator over RPC).
    #[serde(default)]
    pub actor: Option<String>,
}

/// A user (never with a password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The username.
    pub username: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// Whether it is disabled.
    pub disabled: bool,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When its password was last set.
    #[serde(with = "time::serde::rfc3339")]
    pub password_changed_at: OffsetDateTime,
}

/// Request of [`ListUsers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListUsersRequest {}

/// Response of [`ListUsers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserList {
    /// Ordered by username.
    pub users: Vec<User>,
}

/// Request of [`UpdateUser`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    /// Whom to change.
    pub username: String,
    /// New roles, if they change.
    #[serde(default)]
    pub roles: Option<Vec<Role>>,
    /// Disable (`true`) or enable (`false`), if it changes.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// Who asks (`None` for the operator over RPC).
    #[serde(default)]
    pub actor: Option<String>,
}

/// Request of [`SetPassword`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPasswordRequest {
    /// Whose password.
    pub username: String,
    /// The new password (at least 12 characters).
    pub password: Password,
    /// Required when users change their own password; `None` for an admin
    /// reset.
    #[serde(default)]
    pub current_password: Option<Password>,
    /// Who asks (`None` for the operator over RPC).
    #[serde(default)]
    pub actor: Option<String>,
}

/// What a throttle entry is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleScope {
    /// A username (known or not: unknown names are throttled the same way).
    Account,
    /// A client address.
    Address,
}

/// Request of [`ListThrottles`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListThrottlesRequest {}

/// One throttled account or address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleEntry {
    /// Account or address.
    pub scope: ThrottleScope,
    /// The username or the address.
    pub key: String,
    /// Failures since the last success or reset.
    pub failures: u32,
    /// No attempt is considered before this time.
    #[serde(with = "time::serde::rfc3339::option")]
    pub blocked_until: Option<OffsetDateTime>,
    /// Whether the block is a lockout (as opposed to a progressive delay).
    pub locked: bool,
    /// The last failure.
    #[serde(with = "time::serde::rfc3339")]
    pub last_failure_at: OffsetDateTime,
}

/// Response of [`ListThrottles`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleList {
    /// Most recent failure first.
    pub entries: Vec<ThrottleEntry>,
}

/// Request of [`ClearThrottle`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearThrottleRequest {
    /// Account or address.
    pub scope: ThrottleScope,
    /// The username or the address.
    pub key: String,
    /// Who asks (`None` for the operator over RPC).
    #[serde(default)]
    pub actor: Option<String>,
}

/// Response of [`ClearThrottle`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearThrottleResponse {
    /// Whether there was anything to clear.
    pub cleared: bool,
}

/// One audit entry as appended. Free text never holds a secret, a token or
/// package content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// The username acting (`None` for a failed login of an unknown name,
    /// whose attempted name goes to `target`, or for the operator).
    pub actor: Option<String>,
    /// What happened: `login`, `logout`, `read.packages`, `read.raw`,
    /// `admin.add_user`, `denied`, ...
    pub action: String,
    /// The HTTP method and route template, e.g. `GET /v1/packages`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// The HTTP status answered, if any.
    #[serde(default)]
    pub status: Option<u16>,
    /// The submitter whose evidence was read, if any.
    #[serde(default)]
    pub submitter_id: Option<SubmitterId>,
    /// Start of the time range read, if any.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub range_from: Option<OffsetDateTime>,
    /// End of the time range read, if any.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub range_to: Option<OffsetDateTime>,
    /// Rows served, if rows were read.
    #[serde(default)]
    pub rows: Option<u64>,
    /// Bytes served, if raw evidence was read.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// The object of an admin action (a username, a submitter, a key id).
    #[serde(default)]
    pub target: Option<String>,
    /// The client's address.
    #[serde(default)]
    pub client_addr: Option<String>,
    /// The request's trace id.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Structured details (parameters, reasons); never secrets.
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
}

/// Response of [`AppendAudit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAppended {
    /// The entry's id (increasing).
    pub id: i64,
}

/// Request of [`ListAudit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListAuditRequest {
    /// Entries with an id below this one (the previous page's `next_cursor`).
    #[serde(default)]
    pub before_id: Option<i64>,
    /// At most this many (1 to 1000).
    pub limit: u32,
    /// Only this actor's entries.
    #[serde(default)]
    pub actor: Option<String>,
    /// Only entries of this action.
    #[serde(default)]
    pub action: Option<String>,
}

/// One stored audit entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its id.
    pub id: i64,
    /// When it was appended.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What was appended.
    pub record: AuditRecord,
}

/// Response of [`ListAudit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// Pass as `before_id` for the next page; `None` at the end.
    pub next_cursor: Option<i64>,
}

/// Request of [`PurgeStale`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeStaleRequest {}

/// Response of [`PurgeStale`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeStaleResponse {
    /// Login-throttle rows forgotten.
    pub throttles: u64,
    /// Token revocations forgotten (their tokens had expired).
    pub revocations: u64,
}

/// Request of [`RotateSigningKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateSigningKeyRequest {
    /// The job's time (RFC 3339): what is due is decided with it.
    #[serde(with = "time::serde::rfc3339")]
    pub now: time::OffsetDateTime,
    /// A key is rotated once it has been active this many days.
    pub rotate_after_days: u32,
    /// A new key is published this many seconds before it starts signing.
    pub activation_delay_secs: u64,
    /// Publish a next key now even if the active one is not due.
    #[serde(default)]
    pub force: bool,
}

/// Response of [`RotateSigningKey`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotateSigningKeyResponse {
    /// What the step did, as a JSON object (published, activated and
    /// retired key ids, the active key's id).
    pub summary: serde_json::Value,
    /// How many keys it published, activated or retired.
    pub changes: u32,
}
