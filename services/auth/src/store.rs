//! The auth service's tables (`migrations/`) and every query on them. Each
//! query is a function over any executor, so the handlers can run several
//! in one transaction (a change and its audit entry commit together). Rows
//! are internal types, converted to the contract types here; the rules live
//! in `handlers.rs`.

use crate::error::AuthError;
use crate::throttle::{Block, scope_from_name, scope_name};
use rpc_contracts::SubmitterId;
use rpc_contracts::auth::{AuditEntry, AuditRecord, Role, ThrottleEntry, ThrottleScope, User};
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnection;
use sqlx::{PgExecutor, PgPool, Postgres, QueryBuilder, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

/// The auth schema's migrations, embedded at build time. Run at start-up;
/// sqlx holds an advisory lock while migrating, so instances starting
/// together do not race.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// The most throttle entries [`throttles`] answers.
pub const MAX_THROTTLES_LISTED: i64 = 1_000;

type Result<T> = std::result::Result<T, AuthError>;

/// The auth database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Wraps a pool on a migrated database.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool, as an executor for single statements.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a transaction.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool
            .begin()
            .await
            .map_err(AuthError::db("starting a transaction"))
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Commits `tx`.
pub async fn commit(tx: Transaction<'static, Postgres>) -> Result<()> {
    tx.commit()
        .await
        .map_err(AuthError::db("committing a transaction"))
}

// --- Users -------------------------------------------------------------------

/// A user as stored, hash included (never leaves the service).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    /// The username.
    pub username: String,
    /// Role names.
    pub roles: Vec<String>,
    /// The Argon2id PHC string.
    pub password_hash: String,
    /// Disabled users cannot log in and their tokens are inactive.
    pub disabled: bool,
    /// Bumped by password changes and disables.
    pub credential_version: i64,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last password change.
    pub password_changed_at: OffsetDateTime,
}

impl UserRow {
    /// The stored roles.
    pub fn roles(&self) -> Result<Vec<Role>> {
        parse_roles(&self.roles)
    }

    /// The credential version as tokens carry it.
    pub fn version(&self) -> Result<u64> {
        u64::try_from(self.credential_version)
            .map_err(|_| AuthError::Corrupt(format!("credential_version of {}", self.username)))
    }

    /// The contract view (no hash, no version).
    pub fn to_user(&self) -> Result<User> {
        Ok(User {
            username: self.username.clone(),
            roles: self.roles()?,
            disabled: self.disabled,
            created_at: self.created_at,
            password_changed_at: self.password_changed_at,
        })
    }
}

fn parse_roles(names: &[String]) -> Result<Vec<Role>> {
    names
        .iter()
        .map(|n| n.parse::<Role>().map_err(AuthError::Corrupt))
        .collect()
}

fn role_names(roles: &[Role]) -> Vec<String> {
    roles.iter().map(|r| r.as_str().to_owned()).collect()
}

/// The columns of a user row, in [`UserRow`]'s order.
macro_rules! user_columns {
    () => {
        "username, roles, password_hash, disabled, credential_version, created_at, password_changed_at"
    };
}

/// Inserts a user; `None` when the username is taken.
pub async fn insert_user<'e>(
    db: impl PgExecutor<'e>,
    username: &str,
    roles: &[Role],
    password_hash: &str,
    now: OffsetDateTime,
) -> Result<Option<UserRow>> {
    sqlx::query_as::<_, UserRow>(concat!(
        "INSERT INTO users (username, roles, password_hash, disabled, credential_version,
                            created_at, updated_at, password_changed_at)
         VALUES ($1, $2, $3, false, 1, $4, $4, $4)
         ON CONFLICT (username) DO NOTHING
         RETURNING ",
        user_columns!()
    ))
    .bind(username)
    .bind(role_names(roles))
    .bind(password_hash)
    .bind(now)
    .fetch_optional(db)
    .await
    .map_err(AuthError::db("adding a user"))
}

/// One user.
pub async fn user<'e>(db: impl PgExecutor<'e>, username: &str) -> Result<Option<UserRow>> {
    sqlx::query_as::<_, UserRow>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE username = $1"
    ))
    .bind(username)
    .fetch_optional(db)
    .await
    .map_err(AuthError::db("reading a user"))
}

/// Every user, by username.
pub async fn users<'e>(db: impl PgExecutor<'e>) -> Result<Vec<User>> {
    sqlx::query_as::<_, UserRow>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users ORDER BY username"
    ))
    .fetch_all(db)
    .await
    .map_err(AuthError::db("listing users"))?
    .iter()
    .map(UserRow::to_user)
    .collect()
}

/// Changes roles and/or the disabled flag. Disabling an enabled user bumps
/// the credential version (retiring its tokens), in the same statement.
/// `None` when there is no such user.
pub async fn update_user<'e>(
    db: impl PgExecutor<'e>,
    username: &str,
    roles: Option<&[Role]>,
    disabled: Option<bool>,
    now: OffsetDateTime,
) -> Result<Option<UserRow>> {
    // On the right of SET, columns hold the old row's values.
    sqlx::query_as::<_, UserRow>(concat!(
        "UPDATE users SET
             roles = COALESCE($2, roles),
             disabled = COALESCE($3, disabled),
             credential_version = credential_version
                 + CASE WHEN $3 AND NOT disabled THEN 1 ELSE 0 END,
             updated_at = $4
         WHERE username = $1
         RETURNING ",
        user_columns!()
    ))
    .bind(username)
    .bind(roles.map(role_names))
    .bind(disabled)
    .bind(now)
    .fetch_optional(db)
    .await
    .map_err(AuthError::db("updating a user"))
}

/// Sets a new password hash and bumps the credential version (retiring
/// every older token). `None` when there is no such user.
pub async fn set_password_hash<'e>(
    db: impl PgExecutor<'e>,
    username: &str,
    password_hash: &str,
    now: OffsetDateTime,
) -> Result<Option<UserRow>> {
    sqlx::query_as::<_, UserRow>(concat!(
        "UPDATE users SET
             password_hash = $2,
             credential_version = credential_version + 1,
             password_changed_at = $3,
             updated_at = $3
         WHERE username = $1
         RETURNING ",
        user_columns!()
    ))
    .bind(username)
    .bind(password_hash)
    .bind(now)
    .fetch_optional(db)
    .await
    .map_err(AuthError::db("setting a password"))
}

/// Replaces a hash by a rehash of the same password (today's parameters),
/// unless the password changed meanwhile. Tokens stay valid.
pub async fn replace_hash<'e>(
    db: impl PgExecutor<'e>,
    username: &str,
    old_hash: &str,
    new_hash: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE users SET password_hash = $3 WHERE username = $1 AND password_hash = $2",
    )
    .bind(username)
    .bind(old_hash)
    .bind(new_hash)
    .execute(db)
    .await
    .map_err(AuthError::db("upgrading a password hash"))?;
    Ok(done.rows_affected() == 1)
}

// --- Tokens ------------------------------------------------------------------

/// What decides whether a token is still active.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenState {
    /// The user's current role names.
    pub roles: Vec<String>,
    /// Whether the user is disabled.
    pub disabled: bool,
    /// The user's current credential version.
    pub credential_version: i64,
    /// Whether the token's `jti` was revoked.
    pub revoked: bool,
}

impl TokenState {
    /// The current roles.
    pub fn roles(&self) -> Result<Vec<Role>> {
        parse_roles(&self.roles)
    }
}

/// The state of `username` and of token `jti`; `None` when the user is gone.
pub async fn token_state<'e>(
    db: impl PgExecutor<'e>,
    jti: Uuid,
    username: &str,
) -> Result<Option<TokenState>> {
    sqlx::query_as::<_, TokenState>(
        "SELECT u.roles, u.disabled, u.credential_version,
                EXISTS (SELECT 1 FROM token_revocations r WHERE r.jti = $1) AS revoked
         FROM users u WHERE u.username = $2",
    )
    .bind(jti)
    .bind(username)
    .fetch_optional(db)
    .await
    .map_err(AuthError::db("checking a token"))
}

/// Revokes token `jti` until `expires_at`; `false` when it was revoked already.
pub async fn revoke_token<'e>(
    db: impl PgExecutor<'e>,
    jti: Uuid,
    username: &str,
    expires_at: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO token_revocations (jti, username, expires_at, revoked_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(username)
    .bind(expires_at)
    .bind(now)
    .execute(db)
    .await
    .map_err(AuthError::db("revoking a token"))?;
    Ok(done.rows_affected() == 1)
}

// --- Throttling --------------------------------------------------------------

/// The latest time before which the account or the address (if any) is
/// blocked, if one of them is blocked at `now`.
pub async fn active_block<'e>(
    db: impl PgExecutor<'e>,
    account: &str,
    address: Option<&str>,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>> {
    sqlx::query_scalar::<_, Option<OffsetDateTime>>(
        "SELECT max(blocked_until) FROM login_throttles
         WHERE blocked_until > $3
           AND ((scope = 'account' AND key = $1) OR (scope = 'address' AND key = $2))",
    )
    .bind(account)
    .bind(address)
    .bind(now)
    .fetch_one(db)
    .await
    .map_err(AuthError::db("checking login throttles"))
}

/// Counts one failure of `scope`/`key` at `now` and answers the count in a
/// row: an atomic upsert. A previous failure before `forget_before` is
/// forgotten (the count restarts at 1 and any block is lifted). Run it in a
/// transaction with [`set_block`], so the row stays locked between the two.
pub async fn record_failure(
    tx: &mut PgConnection,
    scope: ThrottleScope,
    key: &str,
    now: OffsetDateTime,
    forget_before: OffsetDateTime,
) -> Result<u32> {
    let failures = sqlx::query_scalar::<_, i32>(
        "INSERT INTO login_throttles AS t (scope, key, failures, last_failure_at, blocked_until, locked)
         VALUES ($1, $2, 1, $3, NULL, false)
         ON CONFLICT (scope, key) DO UPDATE SET
             failures = CASE WHEN t.last_failure_at < $4 THEN 1
                             ELSE LEAST(t.failures + 1, 1000000) END,
             blocked_until = CASE WHEN t.last_failure_at < $4 THEN NULL ELSE t.blocked_until END,
             locked = CASE WHEN t.last_failure_at < $4 THEN false ELSE t.locked END,
             last_failure_at = GREATEST(t.last_failure_at, $3)
         RETURNING failures",
    )
    .bind(scope_name(scope))
    .bind(key)
    .bind(now)
    .bind(forget_before)
    .fetch_one(&mut *tx)
    .await
    .map_err(AuthError::db("recording a failed login"))?;
    Ok(u32::try_from(failures).unwrap_or(1))
}

/// Blocks `scope`/`key` until `block.until`, unless it is blocked longer
/// already (blocks only ever extend, so concurrent failures converge).
pub async fn set_block(
    tx: &mut PgConnection,
    scope: ThrottleScope,
    key: &str,
    block: Block,
) -> Result<()> {
    sqlx::query(
        "UPDATE login_throttles SET
             locked = CASE WHEN blocked_until IS NULL OR blocked_until <= $3 THEN $4 ELSE locked END,
             blocked_until = GREATEST(blocked_until, $3)
         WHERE scope = $1 AND key = $2",
    )
    .bind(scope_name(scope))
    .bind(key)
    .bind(block.until)
    .bind(block.locked)
    .execute(&mut *tx)
    .await
    .map_err(AuthError::db("blocking logins"))?;
    Ok(())
}

/// Forgets the failures of `scope`/`key`; `false` when there were none.
pub async fn clear_throttle<'e>(
    db: impl PgExecutor<'e>,
    scope: ThrottleScope,
    key: &str,
) -> Result<bool> {
    let done = sqlx::query("DELETE FROM login_throttles WHERE scope = $1 AND key = $2")
        .bind(scope_name(scope))
        .bind(key)
        .execute(db)
        .await
        .map_err(AuthError::db("clearing a login throttle"))?;
    Ok(done.rows_affected() > 0)
}

#[derive(sqlx::FromRow)]
struct ThrottleRow {
    scope: String,
    key: String,
    failures: i32,
    last_failure_at: OffsetDateTime,
    blocked_until: Option<OffsetDateTime>,
    locked: bool,
}

/// Throttle entries, most recent failure first (at most
/// [`MAX_THROTTLES_LISTED`]), as they stand at `now`: a block that has
/// ended shows as none.
pub async fn throttles<'e>(
    db: impl PgExecutor<'e>,
    now: OffsetDateTime,
) -> Result<Vec<ThrottleEntry>> {
    sqlx::query_as::<_, ThrottleRow>(
        "SELECT scope, key, failures, last_failure_at, blocked_until, locked
         FROM login_throttles ORDER BY last_failure_at DESC, scope, key LIMIT $1",
    )
    .bind(MAX_THROTTLES_LISTED)
    .fetch_all(db)
    .await
    .map_err(AuthError::db("listing login throttles"))?
    .into_iter()
    .map(|row| {
        let scope = scope_from_name(&row.scope)
            .ok_or_else(|| AuthError::Corrupt(format!("throttle scope {:?}", row.scope)))?;
        let blocked_until = row.blocked_until.filter(|until| *until > now);
        Ok(ThrottleEntry {
            scope,
            key: row.key,
            failures: u32::try_from(row.failures).unwrap_or(0),
            locked: row.locked && blocked_until.is_some(),
            blocked_until,
            last_failure_at: row.last_failure_at,
        })
    })
    .collect()
}

/// Deletes what no longer matters at `now`: throttle rows whose last
/// failure is older than their scope's reset time and that block nothing,
/// and revocations of tokens expired before `expired_before`. Answers how
/// many rows of each went.
pub async fn forget_stale<'e>(
    db: impl PgExecutor<'e> + Copy,
    now: OffsetDateTime,
    account_forget_before: OffsetDateTime,
    address_forget_before: OffsetDateTime,
    expired_before: OffsetDateTime,
) -> Result<(u64, u64)> {
    let throttles = sqlx::query(
        "DELETE FROM login_throttles
         WHERE (blocked_until IS NULL OR blocked_until <= $1)
           AND ((scope = 'account' AND last_failure_at < $2)
                OR (scope = 'address' AND last_failure_at < $3))",
    )
    .bind(now)
    .bind(account_forget_before)
    .bind(address_forget_before)
    .execute(db)
    .await
    .map_err(AuthError::db("forgetting old login failures"))?;
    let revocations = sqlx::query("DELETE FROM token_revocations WHERE expires_at < $1")
        .bind(expired_before)
        .execute(db)
        .await
        .map_err(AuthError::db("forgetting expired revocations"))?;
    Ok((throttles.rows_affected(), revocations.rows_affected()))
}

// --- Audit trail -------------------------------------------------------------

/// Appends one entry at `at`; answers its id.
pub async fn append_audit<'e>(
    db: impl PgExecutor<'e>,
    at: OffsetDateTime,
    record: &AuditRecord,
) -> Result<i64> {
    let rows = record
        .rows
        .map(i64::try_from)
        .transpose()
        .map_err(|_| AuthError::Invalid("rows is too large".into()))?;
    let bytes = record
        .bytes
        .map(i64::try_from)
        .transpose()
        .map_err(|_| AuthError::Invalid("bytes is too large".into()))?;
    sqlx::query_scalar::<_, i64>(
        "INSERT INTO audit_log (at, actor, action, endpoint, outcome, status, submitter_id,
                                range_from, range_to, rows, bytes, target, client_addr,
                                trace_id, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         RETURNING id",
    )
    .bind(at)
    .bind(record.actor.as_deref())
    .bind(&record.action)
    .bind(record.endpoint.as_deref())
    .bind(&record.outcome)
    .bind(record.status.map(i32::from))
    .bind(record.submitter_id.as_ref().map(SubmitterId::as_str))
    .bind(record.range_from)
    .bind(record.range_to)
    .bind(rows)
    .bind(bytes)
    .bind(record.target.as_deref())
    .bind(record.client_addr.as_deref())
    .bind(record.trace_id.as_deref())
    .bind(record.detail.as_ref())
    .fetch_one(db)
    .await
    .map_err(AuthError::db("appending to the audit trail"))
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: OffsetDateTime,
    actor: Option<String>,
    action: String,
    endpoint: Option<String>,
    outcome: String,
    status: Option<i32>,
    submitter_id: Option<String>,
    range_from: Option<OffsetDateTime>,
    range_to: Option<OffsetDateTime>,
    rows: Option<i64>,
    bytes: Option<i64>,
    target: Option<String>,
    client_addr: Option<String>,
    trace_id: Option<String>,
    detail: Option<serde_json::Value>,
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = AuthError;
    fn try_from(row: AuditRow) -> Result<Self> {
        let id = row.id;
        let corrupt = move |what: &str| AuthError::Corrupt(format!("audit entry {id}: {what}"));
        Ok(AuditEntry {
            id: row.id,
            at: row.at,
            record: AuditRecord {
                actor: row.actor,
                action: row.action,
                endpoint: row.endpoint,
                outcome: row.outcome,
                status: row
                    .status
                    .map(u16::try_from)
                    .transpose()
                    .map_err(|_| corrupt("status"))?,
                submitter_id: row
                    .submitter_id
                    .map(SubmitterId::parse)
                    .transpose()
                    .map_err(|_| corrupt("submitter_id"))?,
                range_from: row.range_from,
                range_to: row.range_to,
                rows: row
                    .rows
                    .map(u64::try_from)
                    .transpose()
                    .map_err(|_| corrupt("rows"))?,
                bytes: row
                    .bytes
                    .map(u64::try_from)
                    .transpose()
                    .map_err(|_| corrupt("bytes"))?,
                target: row.target,
                client_addr: row.client_addr,
                trace_id: row.trace_id,
                detail: row.detail,
            },
        })
    }
}

/// Up to `limit` entries, newest first, with an id below `before_id` and
/// the given actor and action, if any.
pub async fn audit_page<'e>(
    db: impl PgExecutor<'e>,
    before_id: Option<i64>,
    limit: i64,
    actor: Option<&str>,
    action: Option<&str>,
) -> Result<Vec<AuditEntry>> {
    let mut query = QueryBuilder::<Postgres>::new(
        "SELECT id, at, actor, action, endpoint, outcome, status, submitter_id, range_from,
                range_to, rows, bytes, target, client_addr, trace_id, detail
         FROM audit_log WHERE true",
    );
    if let Some(before) = before_id {
        query.push(" AND id < ").push_bind(before);
    }
    if let Some(actor) = actor {
        query.push(" AND actor = ").push_bind(actor.to_owned());
    }
    if let Some(action) = action {
        query.push(" AND action = ").push_bind(action.to_owned());
    }
    query.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    query
        .build_query_as::<AuditRow>()
        .fetch_all(db)
        .await
        .map_err(AuthError::db("reading the audit trail"))?
        .into_iter()
        .map(AuditEntry::try_from)
        .collect()
}
