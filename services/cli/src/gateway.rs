//! The gateway's public HTTP API as a submitter uses it: `POST /v1/packages`
//! and `GET /v1/keys` (see `docs/api.md`). One call is one attempt; the
//! caller retries through [`crate::retry::RetryPolicy::run`], which asks
//! [`AttemptError`] whether another try is worth it: no answer, 408, 429 and
//! every server error but 501 and 505 are (resending the same bytes is safe:
//! the platform deduplicates on the package id and the bytes' SHA-256); the
//! caller's faults (any other 4xx) are final.

use crate::error::CliError;
use crate::retry::{Retryable, parse_retry_after};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Where the gateway listens on a local run.
pub const DEFAULT_GATEWAY_URL: &str = "http://127.0.0.1:8080";
/// Header naming the signing key (its RFC 7638 thumbprint).
pub const KEY_ID_HEADER: &str = "Tallyhouse-Key-Id";
/// Header carrying base64 of the DER ECDSA signature over the body.
pub const SIGNATURE_HEADER: &str = "Tallyhouse-Signature";
/// Header carrying the gateway's trace id of a request.
pub const TRACE_ID_HEADER: &str = "Tallyhouse-Trace-Id";
/// The longest wait for a TCP connection, whatever the request timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// The gateway's base URL.
    #[arg(
        long = "gateway",
        value_name = "URL",
        env = "TALLYHOUSE_GATEWAY_URL",
        default_value = DEFAULT_GATEWAY_URL
    )]
    pub url: String,
}

/// A package the gateway accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// 201 (newly stored) rather than 200 (stored before, original receipt).
    pub created: bool,
    /// The receipt, a compact JWS.
    pub receipt: String,
}

/// An HTTP error answer, read from its `application/problem+json` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The HTTP status.
    pub status: u16,
    /// The stable error code (`http_<status>` if the body has none).
    pub code: String,
    /// What went wrong, for people.
    pub detail: String,
    /// The gateway's trace id, to quote when reporting a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The wait the gateway asked for.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

impl Problem {
    /// Whether the same request may succeed later: a timeout (408), a
    /// rate limit (429), or a server error (500, 502, 503, 504, and any
    /// other 5xx but 501 Not Implemented and 505 HTTP Version Not
    /// Supported, which no resend changes). Any other 4xx is the caller's
    /// to fix.
    pub fn retryable(&self) -> bool {
        match self.status {
            408 | 429 => true,
            501 | 505 => false,
            status => (500..600).contains(&status),
        }
    }

    /// Whether the server is at fault (a 5xx).
    pub fn server_error(&self) -> bool {
        (500..600).contains(&self.status)
    }

    /// Reads a problem from a status, its headers and its body text.
    pub fn from_parts(
        status: u16,
        retry_after: Option<Duration>,
        trace_header: Option<String>,
        body: &str,
    ) -> Self {
        #[derive(Deserialize)]
        struct Body {
            code: Option<String>,
            detail: Option<String>,
            title: Option<String>,
            trace_id: Option<String>,
        }
        let parsed = serde_json::from_str::<Body>(body).ok();
        let code = parsed
            .as_ref()
            .and_then(|b| b.code.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| format!("http_{status}"));
        let detail = parsed
            .as_ref()
            .and_then(|b| b.detail.clone().or_else(|| b.title.clone()))
            .unwrap_or_else(|| {
                let text: String = body.trim().chars().take(200).collect();
                if text.is_empty() {
                    format!("HTTP {status} without a problem body")
                } else {
                    text
                }
            });
        let trace_id = parsed.and_then(|b| b.trace_id).or(trace_header);
        Self {
            status,
            code,
            detail,
            trace_id,
            retry_after,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (HTTP {}", self.code, self.detail, self.status)?;
        if let Some(trace) = &self.trace_id {
            write!(f, ", trace {trace}")?;
        }
        f.write_str(")")
    }
}

/// Why one attempt failed.
#[derive(Debug, Clone)]
pub enum AttemptError {
    /// No usable answer: the connection was refused or cut, the request
    /// timed out, or a success answer could not be read.
    Transport(String),
    /// The gateway answered with an error.
    Problem(Problem),
}

impl Retryable for AttemptError {
    /// No answer is worth another try (a package stored by an attempt whose
    /// answer was lost is answered 200 with its receipt); an answer, as
    /// [`Problem::retryable`] says.
    fn retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Problem(p) => p.retryable(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transport(_) => None,
            Self::Problem(p) => p.retry_after,
        }
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(message) => f.write_str(message),
            Self::Problem(p) => p.fmt(f),
        }
    }
}

/// An HTTP client of one gateway.
#[derive(Debug, Clone)]
pub struct Gateway {
    base: String,
    http: reqwest::Client,
    timeout: Duration,
}

impl Gateway {
    /// A client of the gateway at `base_url`; each request is bounded by
    /// `timeout` (connecting by at most 10 s of it).
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, CliError> {
        let base = base_url.trim().trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base)
            .map_err(|e| CliError::Input(format!("invalid gateway URL {base:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CliError::Input(format!(
                "invalid gateway URL {base:?}: expected http:// or https://"
            )));
        }
        let timeout = timeout.max(Duration::from_millis(1));
        let http = reqwest::Client::builder()
            .user_agent(concat!("tallyhouse-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
            .build()
            .map_err(|e| CliError::Input(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self {
            base,
            http,
            timeout,
        })
    }

    /// A request to `path` (starting with `/`) on this gateway.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// The gateway's base URL, as configured.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Describes a transport failure for people.
    pub fn describe_error(&self, e: &reqwest::Error) -> String {
        self.describe(e)
    }

    /// `POST /v1/packages` with exactly `body`, signed by `key_id`.
    pub async fn submit(
        &self,
        body: &[u8],
        key_id: &str,
        signature_b64: &str,
    ) -> Result<Accepted, AttemptError> {
        #[derive(Deserialize)]
        struct ReceiptBody {
            receipt: String,
        }
        let resp = self
            .http
            .post(format!("{}/v1/packages", self.base))
            .header(CONTENT_TYPE, "application/json")
            .header(KEY_ID_HEADER, key_id)
            .header(SIGNATURE_HEADER, signature_b64)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| AttemptError::Transport(self.describe(&e)))?;
        let status = resp.status().as_u16();
        match status {
            200 | 201 => {
                let answer: ReceiptBody = resp.json().await.map_err(|e| {
                    AttemptError::Transport(format!("unreadable answer: {}", self.describe(&e)))
                })?;
                Ok(Accepted {
                    created: status == 201,
                    receipt: answer.receipt,
                })
            }
            _ => Err(AttemptError::Problem(problem(resp).await)),
        }
    }

    /// `GET /v1/keys`: the platform's receipt keys (the JWKS `keys`).
    pub async fn receipt_keys(&self) -> Result<Vec<serde_json::Value>, AttemptError> {
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<serde_json::Value>,
        }
        let resp = self
            .http
            .get(format!("{}/v1/keys", self.base))
            .send()
            .await
            .map_err(|e| AttemptError::Transport(self.describe(&e)))?;
        if resp.status().as_u16() != 200 {
            return Err(AttemptError::Problem(problem(resp).await));
        }
        let jwks: Jwks = resp.json().await.map_err(|e| {
            AttemptError::Transport(format!("unreadable key set: {}", self.describe(&e)))
        })?;
        Ok(jwks.keys)
    }

    /// A short account of a transport error: a timeout, or the innermost
    /// cause ("Connection refused (os error 111)").
    fn describe(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            return format!(
                "no answer from {} within {} s",
                self.base,
                self.timeout.as_secs_f64()
            );
        }
        let mut cause: &dyn std::error::Error = e;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        if e.is_connect() {
            format!("cannot connect to {}: {cause}", self.base)
        } else {
            format!("{}: {cause}", self.base)
        }
    }
}

/// Reads an error answer.
pub async fn problem(resp: reqwest::Response) -> Problem {
    let status = resp.status().as_u16();
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header(RETRY_AFTER.as_str()).and_then(|v| parse_retry_after(&v));
    let trace = header(TRACE_ID_HEADER);
    let body = resp.text().await.unwrap_or_default();
    Problem::from_parts(status, retry_after, trace, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_read_from_their_body_or_described_without_one() {
        let body = r#"{"type":"urn:tallyhouse:problem:malformed_package","title":"Malformed package",
            "status":400,"detail":"/records/0/ts: invalid","code":"malformed_package","trace_id":"t1"}"#;
        let p = Problem::from_parts(400, None, Some("t0".into()), body);
        assert_eq!(p.code, "malformed_package");
        assert_eq!(p.detail, "/records/0/ts: invalid");
        assert_eq!(p.trace_id.as_deref(), Some("t1"));
        assert!(!p.retryable());
        assert_eq!(
            p.to_string(),
            "malformed_package: /records/0/ts: invalid (HTTP 400, trace t1)"
        );

        let p = Problem::from_parts(503, Some(Duration::from_secs(5)), None, "<html>busy</html>");
        assert_eq!(p.code, "http_503");
        assert_eq!(p.detail, "<html>busy</html>");
        assert!(p.retryable());
        assert_eq!(
            AttemptError::Problem(p).retry_after(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            Problem::from_parts(502, None, None, "").detail,
            "HTTP 502 without a problem body"
        );
    }

    #[test]
    fn no_answer_timeouts_rate_limits_and_server_errors_are_retried_the_callers_faults_not() {
        for (status, retry) in [
            (400, false),
            (401, false),
            (403, false),
            (404, false),
            (408, true),
            (409, false),
            (413, false),
            (415, false),
            (422, false),
            (429, true),
            (431, false),
            (500, true),
            (501, false),
            (502, true),
            (503, true),
            (504, true),
            (505, false),
            (507, true),
            (524, true),
        ] {
            let p = Problem::from_parts(status, None, None, "{}");
            assert_eq!(p.retryable(), retry, "{status}");
            assert_eq!(p.server_error(), status >= 500, "{status}");
        }
        assert!(AttemptError::Transport("refused".into()).retryable());
    }

    #[test]
    fn gateway_urls_are_checked() {
        assert!(Gateway::new("http://127.0.0.1:8080/", Duration::from_secs(1)).is_ok());
        assert_eq!(
            Gateway::new("https://gw.example/", Duration::from_secs(1))
                .unwrap()
                .base,
            "https://gw.example"
        );
        for bad in ["", "127.0.0.1:8080", "ftp://x", "http://"] {
            assert!(
                Gateway::new(bad, Duration::from_secs(1)).is_err(),
                "{bad:?}"
            );
        }
    }
}
