//! The body encoding of every request and reply on the bus: MessagePack
//! with named fields. Binary fields ([`crate::Bytes`]) travel as raw bytes,
//! not base64 text, so a 256 KiB payload costs a copy, not an encoding and
//! an escape scan. The same types render as JSON for people (snapshots,
//! docs, the CLI's `--json`).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The `content_type` property of every RPC message.
pub const CONTENT_TYPE: &str = "application/msgpack";

/// Encodes a message body.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(value).map_err(|e| e.to_string())
}

/// Decodes a message body.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{EchoRequest, EchoResponse};
    use crate::{Bytes, ErrorCode, Reply, RpcError};

    #[test]
    fn every_kind_of_message_round_trips() {
        let req = EchoRequest {
            payload: Bytes(vec![0, 1, 2, 255]),
        };
        assert_eq!(decode::<EchoRequest>(&encode(&req).unwrap()).unwrap(), req);
        let ok: Reply<EchoResponse> = Reply::Ok(EchoResponse {
            payload: Bytes(b"x".to_vec()),
            instance: "i".into(),
            delivery_count: 2,
        });
        assert_eq!(
            decode::<Reply<EchoResponse>>(&encode(&ok).unwrap()).unwrap(),
            ok
        );
        let err: Reply<EchoResponse> = Reply::Error(RpcError::new(ErrorCode::NoRoute, "n"));
        assert_eq!(
            decode::<Reply<EchoResponse>>(&encode(&err).unwrap()).unwrap(),
            err
        );
    }

    #[test]
    fn bytes_travel_raw_not_as_base64() {
        let payload = vec![7u8; 4096];
        let encoded = encode(&EchoRequest {
            payload: Bytes(payload.clone()),
        })
        .unwrap();
        assert!(
            encoded.len() < payload.len() + 32,
            "{} bytes on the wire",
            encoded.len()
        );
        assert!(
            encoded
                .windows(payload.len())
                .any(|w| w == payload.as_slice())
        );
    }

    #[test]
    fn an_unknown_error_code_from_a_newer_peer_decodes_as_unknown() {
        #[derive(serde::Serialize)]
        struct Newer<'a> {
            code: &'a str,
            message: &'a str,
            retryable: bool,
        }
        let bytes = encode(&Newer {
            code: "quota_exceeded",
            message: "m",
            retryable: false,
        })
        .unwrap();
        assert_eq!(decode::<RpcError>(&bytes).unwrap().code, ErrorCode::Unknown);
    }
}
