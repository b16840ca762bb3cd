//! Calls served only by the RPC runtime's test fixtures and benchmarks. They
//! live here so that even test queues and routing keys have one home.

use crate::{Bytes, ServiceQueue};
use serde::{Deserialize, Serialize};

/// The fixture server's queue.
pub const QUEUE: ServiceQueue = ServiceQueue::new("testkit.v1");

define_call!(
    QUEUE,
    /// Answers with the payload it was sent and who answered.
    Echo, "testkit.v1.echo", EchoRequest => EchoResponse
);
define_call!(
    QUEUE,
    /// Sleeps for the given time, then answers which instance it ran on.
    Sleep, "testkit.v1.sleep", SleepRequest => EchoResponse
);
define_call!(
    QUEUE,
    /// Fails with the error it is told to.
    Fail, "testkit.v1.fail", FailRequest => EchoResponse
);
define_call!(
    QUEUE,
    /// Panics inside the handler.
    Panic, "testkit.v1.panic", EchoRequest => EchoResponse
);
define_call!(
    QUEUE,
    /// Aborts the whole server process: a poison message.
    Crash, "testkit.v1.crash", EchoRequest => EchoResponse
);

/// Request of [`Echo`], [`Panic`] and [`Crash`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoRequest {
    /// Opaque bytes sent back unchanged.
    pub payload: Bytes,
}

/// Response of the testkit calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoResponse {
    /// The payload received.
    pub payload: Bytes,
    /// Which server instance answered.
    pub instance: String,
    /// How many times the broker had delivered this request before.
    pub delivery_count: u32,
}

/// Request of [`Sleep`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleepRequest {
    /// How long the handler sleeps.
    pub millis: u64,
}

/// Request of [`Fail`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailRequest {
    /// The error the handler returns.
    pub error: crate::RpcError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_pinned() {
        let req = EchoRequest {
            payload: Bytes(b"hi".to_vec()),
        };
        insta::assert_json_snapshot!(req, @r#"
        {
          "payload": "aGk="
        }
        "#);
        let resp = EchoResponse {
            payload: Bytes(b"hi".to_vec()),
            instance: "a".into(),
            delivery_count: 1,
        };
        insta::assert_json_snapshot!(resp, @r#"
        {
          "payload": "aGk=",
          "instance": "a",
          "delivery_count": 1
        }
        "#);
        insta::assert_json_snapshot!(SleepRequest { millis: 5 }, @r#"
        {
          "millis": 5
        }
        "#);
    }
}
