//! Typed request/response RPC over RabbitMQ.
//!
//! * [`RpcClient`] publishes a call to the namespace's direct exchange with
//!   publisher confirms and `mandatory`, and waits for the reply on direct
//!   reply-to, bounded by the call's deadline.
//! * [`RpcServer`] consumes its service's quorum queue, dispatches each
//!   request by routing key to the handler registered for that
//!   [`Call`](rpc_contracts::Call), publishes the reply and only then acks.
//!
//! Both hold one connection per configured broker at once and reconnect each
//! with backoff; see `docs/rpc.md` for the design and its guarantees.

mod client;
mod dead_letter;
mod link;
pub mod metrics;
mod server;

pub use client::{CallOptions, RpcClient};
pub use metrics::RpcMetrics;
pub use server::{Gate, RequestContext, RpcServer, RpcServerBuilder, ServerOptions};

use crate::amqp::BrokerUri;
use rpc_contracts::Topology;
use std::time::Duration;

/// What both client and server need to reach the brokers.
#[derive(Debug, Clone)]
pub struct RpcConfig {
    /// Every broker to hold a connection to (at least one).
    pub brokers: Vec<BrokerUri>,
    /// Namespace of the exchange and queues.
    pub topology: Topology,
    /// Shown as the connection name in the broker's management tools.
    pub connection_name: String,
    /// Bound on every single broker operation (connect, declare, publish, confirm).
    pub op_timeout: Duration,
    /// Deadline of a call that sets none.
    pub default_call_timeout: Duration,
    /// Shortest and longest wait between reconnection attempts.
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
}

impl RpcConfig {
    /// Defaults for everything but the brokers and the connection name.
    pub fn new(brokers: Vec<BrokerUri>, connection_name: impl Into<String>) -> Self {
        Self {
            brokers,
            topology: Topology::default(),
            connection_name: connection_name.into(),
            op_timeout: Duration::from_secs(5),
            default_call_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }

    /// The same configuration in another namespace.
    pub fn with_topology(mut self, topology: Topology) -> Self {
        self.topology = topology;
        self
    }
}
