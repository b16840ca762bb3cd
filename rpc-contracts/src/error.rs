//! The one wire error of every internal call: a stable machine code, a
//! human message and whether retrying the same request may succeed.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Stable machine-readable error codes. The set is shared by every service;
/// the gateway alone maps them to HTTP statuses.
///
/// Transport codes (`deadline_exceeded`, `no_route`, `disconnected`) are
/// produced by the RPC client itself; the others come from handlers or from
/// the RPC server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed or fails validation (the caller's fault).
    BadRequest,
    /// The thing asked for does not exist.
    NotFound,
    /// The package is catalogued but its raw bytes were deleted at the end
    /// of their retention period.
    EvidenceExpired,
    /// A login failed: unknown user, wrong password or disabled user (one
    /// answer for all three, so that names cannot be probed).
    InvalidCredentials,
    /// Too many failed logins for the account or the client address: the
    /// next attempt is considered after a delay (see `auth::LoginThrottled`).
    LoginThrottled,
    /// A bearer token is missing, malformed, badly signed, expired, not yet
    /// valid, for another issuer or audience, or revoked.
    InvalidToken,
    /// The request conflicts with what is already stored.
    Conflict,
    /// The caller could not be authenticated.
    Unauthorized,
    /// The caller is known but not allowed to do this.
    Forbidden,
    /// The server has no handler for this routing key.
    UnknownMethod,
    /// The package is not valid JSON or breaks the package schema.
    MalformedPackage,
    /// The signing key id is not registered.
    UnknownKey,
    /// The signature does not verify over the exact body.
    BadSignature,
    /// The signing key was revoked before the package was received.
    KeyRevoked,
    /// The signing key is not valid yet at the receive time.
    KeyNotYetValid,
    /// The signing key's validity ended before the receive time.
    KeyExpired,
    /// The signing key belongs to another submitter than the package names.
    KeySubmitterMismatch,
    /// The package was signed for another deployment.
    WrongAudience,
    /// The package's created_at is outside the accepted window.
    CreatedAtOutOfWindow,
    /// The body is over the size limit.
    PayloadTooLarge,
    /// The body's content type is not accepted.
    UnsupportedMediaType,
    /// A dependency (database, storage, Vault) is unavailable; retry later.
    Unavailable,
    /// The service's credentials leased from Vault expired while Vault was
    /// unreachable or sealed: it refuses work until Vault is back; retry later.
    SecretsExpired,
    /// The call's deadline passed before an answer arrived.
    DeadlineExceeded,
    /// No queue is bound to the routing key: nothing could ever answer.
    NoRoute,
    /// The broker connection carrying the call dropped, or none is up.
    Disconnected,
    /// The handler panicked; the request was dead-lettered for inspection.
    HandlerPanicked,
    /// An unexpected failure on the server side.
    Internal,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The snake_case name used on the wire, in metrics and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
            Self::EvidenceExpired => "evidence_expired",
            Self::InvalidCredentials => "invalid_credentials",
            Self::LoginThrottled => "login_throttled",
            Self::InvalidToken => "invalid_token",
            Self::Conflict => "conflict",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::MalformedPackage => "malformed_package",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::KeyRevoked => "key_revoked",
            Self::KeyNotYetValid => "key_not_yet_valid",
            Self::KeyExpired => "key_expired",
            Self::KeySubmitterMismatch => "key_submitter_mismatch",
            Self::WrongAudience => "wrong_audience",
            Self::CreatedAtOutOfWindow => "created_at_out_of_window",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::UnknownMethod => "unknown_method",
            Self::Unavailable => "unavailable",
            Self::SecretsExpired => "secrets_expired",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::NoRoute => "no_route",
            Self::Disconnected => "disconnected",
            Self::HandlerPanicked => "handler_panicked",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }

    /// Whether a retry of the same request may succeed, by default.
    pub fn retryable_by_default(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::SecretsExpired | Self::DeadlineExceeded | Self::Disconnected
        )
    }

    /// Every code, for exhaustive tests and documentation.
    pub const ALL: &'static [ErrorCode] = &[
        Self::BadRequest,
        Self::NotFound,
        Self::EvidenceExpired,
        Self::InvalidCredentials,
        Self::LoginThrottled,
        Self::InvalidToken,
        Self::Conflict,
        Self::Unauthorized,
        Self::Forbidden,
        Self::MalformedPackage,
        Self::UnknownKey,
        Self::BadSignature,
        Self::KeyRevoked,
        Self::KeyNotYetValid,
        Self::KeyExpired,
        Self::KeySubmitterMismatch,
        Self::WrongAudience,
        Self::CreatedAtOutOfWindow,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::UnknownMethod,
        Self::Unavailable,
        Self::SecretsExpired,
        Self::DeadlineExceeded,
        Self::NoRoute,
        Self::Disconnected,
        Self::HandlerPanicked,
        Self::Internal,
        Self::Unknown,
    ];
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error half of every reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcError {
    /// Stable machine code.
    pub code: ErrorCode,
    /// Human-readable explanation; never contains secrets or payloads.
    pub message: String,
    /// Whether sending the same request again may succeed.
    pub retryable: bool,
}

impl RpcError {
    /// An error with the code's default retryability.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: code.retryable_by_default(),
        }
    }

    /// Overrides the retryable flag.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for RpcError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_serde_name_for_every_code() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(&serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn unknown_codes_from_newer_peers_deserialize_as_unknown() {
        let code: ErrorCode = serde_json::from_str("\"quota_exceeded\"").unwrap();
        assert_eq!(code, ErrorCode::Unknown);
    }

    #[test]
    fn wire_format_is_pinned() {
        let e = RpcError::new(ErrorCode::NoRoute, "no queue bound to registry.v1.ping");
        insta::assert_json_snapshot!(e, @r#"
        {
          "code": "no_route",
          "message": "no queue bound to registry.v1.ping",
          "retryable": false
        }
        "#);
    }
}
