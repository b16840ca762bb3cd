//! The auth service's errors, each mapped to one wire code. A failed login
//! is one generic `invalid_credentials` whatever the reason (the reason goes
//! to the audit trail only); a throttled one carries
//! [`LoginThrottled`] as its message. Database failures become
//! `unavailable` or `internal` through `platform::db::rpc_error`, which
//! logs them once.

use rpc_contracts::auth::LoginThrottled;
use rpc_contracts::{ErrorCode, RpcError};

/// The one message of every failed login.
pub const INVALID_CREDENTIALS: &str = "invalid username or password";

/// Why an auth call failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The request is well-formed but its content is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Unknown user, wrong password or disabled user (deliberately one case).
    #[error("{INVALID_CREDENTIALS}")]
    InvalidCredentials,
    /// Too many failed logins for the account or the client address.
    #[error("login throttled for {retry_after_secs} s")]
    Throttled {
        /// Seconds until the next attempt is considered.
        retry_after_secs: u64,
    },
    /// No such user (admin calls only; logins never say so).
    #[error("user {0:?} does not exist")]
    UnknownUser(String),
    /// The username is taken.
    #[error("user {0:?} exists already")]
    UserExists(String),
    /// No hashing slot came free before the caller's deadline, or the
    /// service is stopping.
    #[error("the auth service is busy ({0}); retry later")]
    Busy(&'static str),
    /// A row read back does not hold what the schema promises.
    #[error("corrupt auth row: {0}")]
    Corrupt(String),
    /// Something that cannot fail did (signing, a hashing task).
    #[error("internal error: {0}")]
    Internal(String),
    /// The database failed while doing `what`.
    #[error("database error while {what}: {source}")]
    Database {
        /// What the service was doing.
        what: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
}

impl AuthError {
    /// Wraps a database error with what was being done.
    pub fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database { what, source }
    }

    /// The wire code this error is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) => ErrorCode::BadRequest,
            Self::InvalidCredentials => ErrorCode::InvalidCredentials,
            Self::Throttled { .. } => ErrorCode::LoginThrottled,
            Self::UnknownUser(_) => ErrorCode::NotFound,
            Self::UserExists(_) => ErrorCode::Conflict,
            Self::Busy(_) => ErrorCode::Unavailable,
            Self::Corrupt(_) | Self::Internal(_) => ErrorCode::Internal,
            Self::Database { source, .. } => {
                if platform::db::is_unavailable(source) {
                    ErrorCode::Unavailable
                } else {
                    ErrorCode::Internal
                }
            }
        }
    }

    /// Whether the caller caused it (the audit trail records those as
    /// failures; the service's own failures are logged instead).
    pub fn is_callers_fault(&self) -> bool {
        matches!(
            self,
            Self::Invalid(_)
                | Self::InvalidCredentials
                | Self::Throttled { .. }
                | Self::UnknownUser(_)
                | Self::UserExists(_)
        )
    }
}

impl From<AuthError> for RpcError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Throttled { retry_after_secs } => {
                let body = LoginThrottled { retry_after_secs };
                let message = serde_json::to_string(&body)
                    .unwrap_or_else(|_| format!("{{\"retry_after_secs\":{retry_after_secs}}}"));
                RpcError::new(ErrorCode::LoginThrottled, message)
            }
            AuthError::Busy(_) => RpcError::new(ErrorCode::Unavailable, e.to_string()),
            AuthError::Corrupt(detail) => {
                tracing::error!(detail = %detail, "corrupt auth row");
                RpcError::new(ErrorCode::Internal, "the auth database holds a corrupt row")
            }
            AuthError::Internal(detail) => {
                tracing::error!(detail = %detail, "internal auth error");
                RpcError::new(ErrorCode::Internal, "internal error in the auth service")
            }
            AuthError::Database { what, source } => platform::db::rpc_error(what, &source),
            other => RpcError::new(other.code(), other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_code_and_a_login_failure_says_nothing_more() {
        let cases: Vec<(AuthError, ErrorCode, &str)> = vec![
            (
                AuthError::Invalid("bad".into()),
                ErrorCode::BadRequest,
                "bad",
            ),
            (
                AuthError::InvalidCredentials,
                ErrorCode::InvalidCredentials,
                INVALID_CREDENTIALS,
            ),
            (
                AuthError::UnknownUser("alice".into()),
                ErrorCode::NotFound,
                "\"alice\" does not exist",
            ),
            (
                AuthError::UserExists("alice".into()),
                ErrorCode::Conflict,
                "exists already",
            ),
            (
                AuthError::Busy("no hashing slot"),
                ErrorCode::Unavailable,
                "busy",
            ),
            (
                AuthError::Internal("boom".into()),
                ErrorCode::Internal,
                "internal error",
            ),
            (
                AuthError::Database {
                    what: "testing",
                    source: sqlx::Error::PoolTimedOut,
                },
                ErrorCode::Unavailable,
                "unavailable",
            ),
        ];
        for (err, code, fragment) in cases {
            assert_eq!(err.code(), code);
            let wire = RpcError::from(err);
            assert_eq!(wire.code, code, "{wire}");
            assert!(wire.message.contains(fragment), "{wire}");
        }
        assert_eq!(
            RpcError::from(AuthError::InvalidCredentials).message,
            "invalid username or password"
        );
    }

    #[test]
    fn a_throttled_login_carries_retry_after_as_json() {
        let wire = RpcError::from(AuthError::Throttled {
            retry_after_secs: 42,
        });
        assert_eq!(wire.code, ErrorCode::LoginThrottled);
        assert!(!wire.retryable);
        let body: LoginThrottled = serde_json::from_str(&wire.message).unwrap();
        assert_eq!(body.retry_after_secs, 42);
    }
}
