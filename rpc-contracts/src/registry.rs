//! Calls served by the registry service (submitters and their keys).

use crate::{Call, ServiceQueue};
use serde::{Deserialize, Serialize};

/// The registry's queue, contract version 1.
pub const QUEUE: ServiceQueue = ServiceQueue::new("registry.v1");

/// Liveness over the bus: proves a registry instance consumes its queue.
#[derive(Debug)]
pub enum Ping {}

impl Call for Ping {
    type Request = PingRequest;
    type Response = PingResponse;
    const SERVICE: ServiceQueue = QUEUE;
    const METHOD: &'static str = "registry.v1.ping";
}

/// Request of [`Ping`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingRequest {}

/// Response of [`Ping`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {
    /// The answering service.
    pub service: String,
    /// Its version (the crate version it was built from).
    pub version: String,
    /// Which instance answered (process-unique id).
    pub instance: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_pinned() {
        insta::assert_json_snapshot!(PingRequest {}, @"{}");
        let resp = PingResponse {
            service: "registry".into(),
            version: "0.1.0".into(),
            instance: "registry-1".into(),
        };
        insta::assert_json_snapshot!(resp, @r#"
        {
          "service": "registry",
          "version": "0.1.0",
          "instance": "registry-1"
        }
        "#);
        let back: PingResponse =
            serde_json::from_str(&serde_json::to_string(&resp).unwrap()).unwrap();
        assert_eq!(back, resp);
    }
}
