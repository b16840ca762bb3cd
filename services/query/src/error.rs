//! The query service's errors, each mapped to one wire code: a bad parameter
//! is `bad_request` with a message that starts with the field's name; an
//! unknown package is `not_found`; database failures become `unavailable`
//! or `internal` through `platform::db::rpc_error`; a stored package whose
//! evidence blob is gone is `internal`, logged here as evidence lost.

use rpc_contracts::{ErrorCode, RpcError, SubmitterId};
use uuid::Uuid;

/// Why a query call failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A request field is invalid; the message names it.
    #[error("{field}: {message}")]
    BadRequest {
        /// The request field, as spelled on the wire (`limit`, `labels`...).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// No package is stored under this id.
    #[error("package {package_id} of submitter {submitter_id} is not stored")]
    UnknownPackage {
        /// The submitter asked for.
        submitter_id: SubmitterId,
        /// The package asked for.
        package_id: Uuid,
    },
    /// The package row exists but its blob was deleted at the end of its
    /// retention period.
    #[error(
        "the raw bytes of package {package_id} (submitter {submitter_id}) are past their retention"
    )]
    EvidenceExpired {
        /// The submitter.
        submitter_id: SubmitterId,
        /// The package.
        package_id: Uuid,
    },
    /// The package row exists but its blob is missing or shorter than the
    /// row says: stored evidence has been lost.
    #[error(
        "evidence lost: the blob {blob_key} of package {package_id} (submitter {submitter_id}) {detail}"
    )]
    EvidenceLost {
        /// The submitter.
        submitter_id: SubmitterId,
        /// The package.
        package_id: Uuid,
        /// The object key the row names.
        blob_key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A row read back does not hold what the schema promises.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database failed while doing `what`.
    #[error("database error while {what}: {source}")]
    Database {
        /// What the service was doing.
        what: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The evidence store failed (already a wire error: `unavailable`).
    #[error("{0}")]
    Storage(RpcError),
}

impl QueryError {
    /// A bad request naming `field`.
    pub fn bad(field: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            field,
            message: message.into(),
        }
    }

    /// Wraps a database error with what was being done.
    pub fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database { what, source }
    }
}

impl From<QueryError> for RpcError {
    fn from(e: QueryError) -> Self {
        let code = match &e {
            QueryError::BadRequest { .. } => ErrorCode::BadRequest,
            QueryError::UnknownPackage { .. } => ErrorCode::NotFound,
            QueryError::EvidenceExpired { .. } => ErrorCode::EvidenceExpired,
            QueryError::EvidenceLost { .. } => {
                // Loud on purpose: this is the one failure that must never happen.
                tracing::error!(alert = "evidence_lost", error = %e, "EVIDENCE LOST");
                return RpcError::new(
                    ErrorCode::Internal,
                    "the evidence of this package cannot be read; operators have been alerted",
                );
            }
            QueryError::Corrupt(detail) => {
                tracing::error!(detail = %detail, "corrupt row in the evidence database");
                return RpcError::new(
                    ErrorCode::Internal,
                    "the evidence database holds a corrupt row",
                );
            }
            QueryError::Database { what, source } => {
                return platform::db::rpc_error(what, source);
            }
            QueryError::Storage(err) => return err.clone(),
        };
        RpcError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_code_and_bad_requests_name_the_field() {
        let acme = SubmitterId::parse("acme").unwrap();
        let id = Uuid::nil();
        let cases: Vec<(QueryError, ErrorCode, &str)> = vec![
            (
                QueryError::bad("limit", "must be 1 to 1000"),
                ErrorCode::BadRequest,
                "limit: must be 1 to 1000",
            ),
            (
                QueryError::UnknownPackage {
                    submitter_id: acme.clone(),
                    package_id: id,
                },
                ErrorCode::NotFound,
                "is not stored",
            ),
            (
                QueryError::EvidenceLost {
                    submitter_id: acme,
                    package_id: id,
                    blob_key: "sha256/ab/ab".into(),
                    detail: "is missing".into(),
                },
                ErrorCode::Internal,
                "cannot be read",
            ),
            (
                QueryError::Database {
                    what: "testing",
                    source: sqlx::Error::PoolTimedOut,
                },
                ErrorCode::Unavailable,
                "unavailable",
            ),
            (
                QueryError::Storage(RpcError::new(ErrorCode::Unavailable, "s3 down")),
                ErrorCode::Unavailable,
                "s3 down",
            ),
        ];
        for (err, code, fragment) in cases {
            let wire = RpcError::from(err);
            assert_eq!(wire.code, code, "{wire}");
            assert!(wire.message.contains(fragment), "{wire}");
        }
    }
}
