//! Names of the broker objects: the RPC exchange, service queues and their
//! dead-letter exchange and queues. Every name is derived here from a
//! namespace, so tests (and several deployments on one broker) never collide.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A service queue: one per service and contract version, e.g. `registry.v1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceQueue(&'static str);

impl ServiceQueue {
    /// Only contract modules create service queues.
    pub(crate) const fn new(name: &'static str) -> Self {
        Self(name)
    }

    /// The queue's name inside a namespace, e.g. `registry.v1`.
    pub const fn name(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for ServiceQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The broker objects of one deployment (or one test), all prefixed by its
/// namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    namespace: String,
}

/// The address replies come back on (RabbitMQ's direct reply-to).
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Header carrying the absolute call deadline, in milliseconds since the Unix epoch.
pub const HEADER_DEADLINE_MS: &str = "x-tallyhouse-deadline-ms";
/// Header carrying the trace (correlation) id that follows a request across hops.
pub const HEADER_TRACE_ID: &str = "x-tallyhouse-trace-id";
/// Header RabbitMQ quorum queues set on redelivered messages.
pub const HEADER_DELIVERY_COUNT: &str = "x-delivery-count";

impl Topology {
    /// The production namespace.
    pub const DEFAULT_NAMESPACE: &'static str = "tallyhouse";

    /// A topology for `namespace`, which must be non-empty and made of
    /// lower-case letters, digits, `-` and `_`.
    pub fn new(namespace: impl Into<String>) -> Result<Self, String> {
        let namespace = namespace.into();
        let valid = !namespace.is_empty()
            && namespace.len() <= 64
            && namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if valid {
            Ok(Self { namespace })
        } else {
            Err(format!(
                "invalid RPC namespace {namespace:?}: use 1 to 64 of a-z, 0-9, '-' and '_'"
            ))
        }
    }

    /// The namespace itself.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The direct exchange every call is published to, bound per routing key.
    pub fn exchange(&self) -> String {
        format!("{}.rpc", self.namespace)
    }

    /// The durable quorum queue serving `service`.
    pub fn queue(&self, service: ServiceQueue) -> String {
        format!("{}.{}", self.namespace, service.name())
    }

    /// The exchange dead-lettered requests go to.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.rpc.dead-letter", self.namespace)
    }

    /// The queue holding `service`'s dead-lettered requests for inspection.
    pub fn dead_letter_queue(&self, service: ServiceQueue) -> String {
        format!("{}.{}.dead-letter", self.namespace, service.name())
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            namespace: Self::DEFAULT_NAMESPACE.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;

    #[test]
    fn names_are_prefixed_by_the_namespace() {
        let t = Topology::new("test-42").unwrap();
        let q = registry::QUEUE;
        assert_eq!(t.exchange(), "test-42.rpc");
        assert_eq!(t.queue(q), "test-42.registry.v1");
        assert_eq!(t.dead_letter_exchange(), "test-42.rpc.dead-letter");
        assert_eq!(t.dead_letter_queue(q), "test-42.registry.v1.dead-letter");
        assert_eq!(Topology::default().queue(q), "tallyhouse.registry.v1");
    }

    #[test]
    fn bad_namespaces_are_refused() {
        for bad in ["", "Upper", "dot.ted", "sp ace", &"x".repeat(65)] {
            assert!(Topology::new(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
