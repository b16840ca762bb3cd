//! Errors as RFC 9457 `application/problem+json`. This is the only place
//! where an RPC error code becomes an HTTP status; 5xx bodies stay opaque.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rpc_contracts::{ErrorCode, RpcError};
use serde::Serialize;

/// A problem document with Tallyhouse's stable `code`.
#[derive(Debug, Serialize)]
pub(crate) struct Problem {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: String,
    code: &'static str,
    /// The query parameter or body field at fault, for `bad_request`.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    trace_id: String,
    #[serde(skip)]
    retry_after_secs: Option<u32>,
}

/// The HTTP status, title and Retry-After of each code.
pub(crate) fn status_of(code: ErrorCode) -> (StatusCode, &'static str, Option<u32>) {
    match code {
        ErrorCode::BadRequest => (StatusCode::BAD_REQUEST, "Bad request", None),
        ErrorCode::MalformedPackage => (StatusCode::BAD_REQUEST, "Malformed package", None),
        ErrorCode::UnknownKey
        | ErrorCode::BadSignature
        | ErrorCode::KeyRevoked
        | ErrorCode::KeyNotYetValid
        | ErrorCode::KeyExpired => (StatusCode::UNAUTHORIZED, "Signature not accepted", None),
        ErrorCode::KeySubmitterMismatch => {
            (StatusCode::FORBIDDEN, "Key of another submitter", None)
        }
        ErrorCode::WrongAudience | ErrorCode::CreatedAtOutOfWindow => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Package not accepted here or now",
            None,
        ),
        ErrorCode::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Body too large", None),
        ErrorCode::UnsupportedMediaType => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported media type",
            None,
        ),
        ErrorCode::NotFound => (StatusCode::NOT_FOUND, "Not found", None),
        ErrorCode::EvidenceExpired => (StatusCode::GONE, "Evidence past its retention", None),
        ErrorCode::Conflict => (StatusCode::CONFLICT, "Conflict", None),
        ErrorCode::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized", None),
        ErrorCode::InvalidToken => (StatusCode::UNAUTHORIZED, "Invalid token", None),
        ErrorCode::InvalidCredentials => (StatusCode::UNAUTHORIZED, "Login failed", None),
        ErrorCode::LoginThrottled => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed logins",
            Some(1),
        ),
        ErrorCode::Forbidden => (StatusCode::FORBIDDEN, "Forbidden", None),
        ErrorCode::Unavailable | ErrorCode::Disconnected | ErrorCode::NoRoute => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            Some(5),
        ),
        ErrorCode::SecretsExpired => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Service credentials expired",
            Some(5),
        ),
        ErrorCode::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "Timed out", Some(5)),
        ErrorCode::UnknownMethod => (StatusCode::BAD_GATEWAY, "Bad gateway", None),
        ErrorCode::HandlerPanicked | ErrorCode::Internal | ErrorCode::Unknown => {
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal error", None)
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "Internal error", None),
    }
}

impl Problem {
    /// The problem for an RPC error. Server-side failures are logged here,
    /// once, in full, and answered with a generic detail.
    pub(crate) fn from_rpc(error: &RpcError, trace_id: &str) -> Self {
        let (status, title, retry_after_secs) = status_of(error.code);
        let detail = if status.is_server_error() {
            tracing::warn!(code = %error.code, error = %error.message, trace_id, "request failed");
            match error.code {
                ErrorCode::Unavailable | ErrorCode::Disconnected | ErrorCode::NoRoute => {
                    "a service needed for this request is unavailable; retry later".to_owned()
                }
                ErrorCode::SecretsExpired => "a service needed for this request lost its credentials while Vault was unreachable; retry later".to_owned(),
                ErrorCode::DeadlineExceeded => "the request took too long; retry later".to_owned(),
                _ => "an unexpected error occurred".to_owned(),
            }
        } else {
            error.message.clone()
        };
        // A throttled call (a login, a password change) carries its delay as
        // `auth::LoginThrottled` JSON in the message: it becomes Retry-After.
        let (detail, retry_after_secs) = match error.code {
            ErrorCode::LoginThrottled => {
                match serde_json::from_str::<rpc_contracts::auth::LoginThrottled>(&detail) {
                    Ok(t) => (
                        "too many failed logins; retry after the delay in Retry-After".to_owned(),
                        Some(t.retry_after_secs.clamp(1, u64::from(u32::MAX)) as u32),
                    ),
                    Err(_) => (detail, retry_after_secs),
                }
            }
            _ => (detail, retry_after_secs),
        };
        Self {
            kind: format!("urn:tallyhouse:problem:{}", error.code.as_str()),
            title,
            status: status.as_u16(),
            detail,
            code: error.code.as_str(),
            field: None,
            trace_id: trace_id.to_owned(),
            retry_after_secs,
        }
    }

    /// A `bad_request` about one query parameter or body field.
    pub(crate) fn invalid_param(field: &str, message: impl Into<String>, trace_id: &str) -> Self {
        let mut p = Self::from_rpc(&RpcError::new(ErrorCode::BadRequest, message), trace_id);
        p.field = Some(field.chars().take(64).collect());
        p
    }

    /// The field at fault, if any.
    #[cfg(test)]
    pub(crate) fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// Overrides the `Retry-After` seconds.
    pub(crate) fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_status_and_retryable_codes_are_5xx_with_retry_after() {
        for &code in ErrorCode::ALL {
            let (status, _, retry_after) = status_of(code);
            if code.retryable_by_default() {
                assert!(status.is_server_error(), "{code}");
                assert!(retry_after.is_some(), "{code}");
            }
        }
    }

    #[test]
    fn server_errors_are_opaque_and_client_errors_explain() {
        let p = Problem::from_rpc(
            &RpcError::new(ErrorCode::Internal, "db password=xyz rejected"),
            "t1",
        );
        assert!(!p.detail.contains("xyz"));
        assert_eq!(p.code, "internal");
        let p = Problem::from_rpc(
            &RpcError::new(ErrorCode::BadRequest, "records[3].ts is not RFC 3339"),
            "t2",
        );
        assert_eq!(p.detail, "records[3].ts is not RFC 3339");
        assert_eq!(p.status, 400);
    }
}
