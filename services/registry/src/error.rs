//! The registry's errors, each mapped to one wire code: the caller's
//! mistakes (`bad_request`, `not_found`, `conflict`) keep their detail;
//! database failures become `unavailable` or `internal` through
//! `platform::db::rpc_error`, which logs them once.

use rpc_contracts::{ErrorCode, KeyId, RpcError, SubmitterId};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request is well-formed JSON but its content is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The submitter is not registered.
    #[error("submitter {0} is not registered")]
    UnknownSubmitter(SubmitterId),
    /// The key is not registered (at all, or to this submitter).
    #[error("key {key_id} is not registered{}", owner_suffix(.submitter_id.as_ref()))]
    UnknownKey {
        /// The key asked for.
        key_id: KeyId,
        /// The submitter it was asked under, if any.
        submitter_id: Option<SubmitterId>,
    },
    /// The submitter exists with another display name.
    #[error(
        "submitter {submitter_id} is already registered with name {existing:?}, not {requested:?}"
    )]
    SubmitterNameConflict {
        /// The submitter.
        submitter_id: SubmitterId,
        /// Its stored name.
        existing: Option<String>,
        /// The name in the request.
        requested: Option<String>,
    },
    /// The public key is registered to another submitter.
    #[error("this public key (key id {0}) is already registered to another submitter")]
    KeyOwnedByAnother(KeyId),
    /// The key is registered to this submitter with another validity.
    #[error(
        "key {key_id} is already registered with not_before {} and not_after {}; \
         the validity of a registered key does not change (revoke it instead)",
        rfc3339(*.not_before),
        .not_after.map_or_else(|| "none".to_owned(), rfc3339)
    )]
    KeyValidityConflict {
        /// The key.
        key_id: KeyId,
        /// Its stored start of validity.
        not_before: OffsetDateTime,
        /// Its stored end of validity.
        not_after: Option<OffsetDateTime>,
    },
    /// A row read back does not hold what the schema promises.
    #[error("corrupt registry row: {0}")]
    Corrupt(String),
    /// The database failed while doing `what`.
    #[error("database error while {what}: {source}")]
    Database {
        /// What the registry was doing.
        what: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
}

fn owner_suffix(submitter: Option<&SubmitterId>) -> String {
    submitter.map_or_else(String::new, |s| format!(" to submitter {s}"))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

impl RegistryError {
    /// Wraps a database error with what was being done.
    pub fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database { what, source }
    }
}

impl From<RegistryError> for RpcError {
    fn from(e: RegistryError) -> Self {
        let code = match &e {
            RegistryError::Invalid(_) => ErrorCode::BadRequest,
            RegistryError::UnknownSubmitter(_) | RegistryError::UnknownKey { .. } => {
                ErrorCode::NotFound
            }
            RegistryError::SubmitterNameConflict { .. }
            | RegistryError::KeyOwnedByAnother(_)
            | RegistryError::KeyValidityConflict { .. } => ErrorCode::Conflict,
            RegistryError::Corrupt(detail) => {
                tracing::error!(detail = %detail, "corrupt registry row");
                return RpcError::new(ErrorCode::Internal, "the registry holds a corrupt row");
            }
            RegistryError::Database { what, source } => {
                return platform::db::rpc_error(what, source);
            }
        };
        RpcError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn each_error_has_its_code_and_a_message_naming_the_ids() {
        let key = KeyId::parse("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs").unwrap();
        let acme = SubmitterId::parse("acme").unwrap();
        let cases: Vec<(RegistryError, ErrorCode, &str)> = vec![
            (
                RegistryError::Invalid("bad".into()),
                ErrorCode::BadRequest,
                "bad",
            ),
            (
                RegistryError::UnknownSubmitter(acme.clone()),
                ErrorCode::NotFound,
                "submitter acme is not registered",
            ),
            (
                RegistryError::UnknownKey {
                    key_id: key.clone(),
                    submitter_id: Some(acme.clone()),
                },
                ErrorCode::NotFound,
                "key NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs is not registered to submitter acme",
            ),
            (
                RegistryError::KeyOwnedByAnother(key.clone()),
                ErrorCode::Conflict,
                "already registered to another submitter",
            ),
            (
                RegistryError::KeyValidityConflict {
                    key_id: key.clone(),
                    not_before: datetime!(2026-01-01 00:00 UTC),
                    not_after: None,
                },
                ErrorCode::Conflict,
                "not_before 2026-01-01T00:00:00Z and not_after none",
            ),
            (
                RegistryError::Database {
                    what: "testing",
                    source: sqlx::Error::PoolTimedOut,
                },
                ErrorCode::Unavailable,
                "unavailable",
            ),
        ];
        for (err, code, fragment) in cases {
            let wire = RpcError::from(err);
            assert_eq!(wire.code, code, "{wire}");
            assert!(wire.message.contains(fragment), "{wire}");
        }
    }
}
