//! The reply envelope: every reply body is either `{"ok": <response>}` or
//! `{"error": <RpcError>}`.

use crate::RpcError;
use serde::{Deserialize, Serialize};

/// A reply as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    /// The handler's response.
    Ok(T),
    /// Why there is no response.
    Error(RpcError),
}

impl<T> From<Result<T, RpcError>> for Reply<T> {
    fn from(r: Result<T, RpcError>) -> Self {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Error(e),
        }
    }
}

impl<T> From<Reply<T>> for Result<T, RpcError> {
    fn from(r: Reply<T>) -> Self {
        match r {
            Reply::Ok(v) => Ok(v),
            Reply::Error(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn wire_format_is_pinned() {
        let ok: Reply<u32> = Reply::Ok(7);
        insta::assert_json_snapshot!(ok, @r#"
        {
          "ok": 7
        }
        "#);
        let err: Reply<u32> = Reply::Error(RpcError::new(ErrorCode::Unavailable, "db down"));
        insta::assert_json_snapshot!(err, @r#"
        {
          "error": {
            "code": "unavailable",
            "message": "db down",
            "retryable": true
          }
        }
        "#);
    }
}
