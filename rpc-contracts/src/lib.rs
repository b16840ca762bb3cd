//! The wire contracts of Tallyhouse's internal RPC: every call is a type that
//! names its request, its response, the service queue that serves it and its
//! versioned routing key.
//!
//! This crate is the only place where a routing key or a queue name is
//! written. It depends on serde-level crates only and does no I/O, so every
//! service, tool and test can depend on it cheaply.
//!
//! ```
//! use rpc_contracts::{Call, registry};
//! assert_eq!(<registry::Ping as Call>::METHOD, "registry.v1.ping");
//! assert_eq!(<registry::Ping as Call>::SERVICE.name(), "registry.v1");
//! ```

/// Declares a call: a marker type implementing [`Call`] for a queue.
macro_rules! define_call {
    ($queue:expr, $(#[$doc:meta])* $name:ident, $method:literal, $req:ty => $resp:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $name {}
        impl $crate::Call for $name {
            type Request = $req;
            type Response = $resp;
            const SERVICE: $crate::ServiceQueue = $queue;
            const METHOD: &'static str = $method;
        }
    };
}

pub mod auth;
pub mod bytes;
pub mod codec;
pub mod envelope;
pub mod error;
pub mod ids;
pub mod ingest;
pub mod jobs;
pub mod query;
pub mod registry;
pub mod testkit;
pub mod topology;

pub use bytes::Bytes;
pub use envelope::Reply;
pub use error::{ErrorCode, RpcError};
pub use ids::{KeyId, SubmitterId};
pub use topology::{ServiceQueue, Topology};

use serde::{Serialize, de::DeserializeOwned};

/// One internal call: a marker type tying a request type to its response
/// type, the queue that serves it and its routing key.
///
/// Clients call by type (`rpc.call::<registry::Ping>(&req)`) and servers
/// register handlers by type (`.on::<registry::Ping>(handler)`), so the
/// routing key below is the only place the string exists.
pub trait Call: 'static {
    /// What the caller sends.
    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What the handler answers on success.
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The service queue (one per service and contract version) serving it.
    const SERVICE: ServiceQueue;
    /// The versioned routing key, `<service>.v<N>.<method>`; it starts with
    /// the name of [`Call::SERVICE`] followed by a dot.
    const METHOD: &'static str;
}

/// Every call defined in this crate, as `(service queue, routing key)`; used
/// by tests to check naming rules and by tools that list the API.
pub const ALL_CALLS: &[(ServiceQueue, &str)] = &[
    (registry::Ping::SERVICE, registry::Ping::METHOD),
    (
        registry::AddSubmitter::SERVICE,
        registry::AddSubmitter::METHOD,
    ),
    (
        registry::ListSubmitters::SERVICE,
        registry::ListSubmitters::METHOD,
    ),
    (registry::AddKey::SERVICE, registry::AddKey::METHOD),
    (registry::ListKeys::SERVICE, registry::ListKeys::METHOD),
    (registry::RevokeKey::SERVICE, registry::RevokeKey::METHOD),
    (registry::GetKey::SERVICE, registry::GetKey::METHOD),
    (
        ingest::SubmitPackage::SERVICE,
        ingest::SubmitPackage::METHOD,
    ),
    (ingest::ReceiptKeys::SERVICE, ingest::ReceiptKeys::METHOD),
    (jobs::RunJob::SERVICE, jobs::RunJob::METHOD),
    (jobs::ListJobRuns::SERVICE, jobs::ListJobRuns::METHOD),
    (auth::Ping::SERVICE, auth::Ping::METHOD),
    (auth::Login::SERVICE, auth::Login::METHOD),
    (auth::Logout::SERVICE, auth::Logout::METHOD),
    (auth::CheckToken::SERVICE, auth::CheckToken::METHOD),
    (auth::TokenKeys::SERVICE, auth::TokenKeys::METHOD),
    (auth::AddUser::SERVICE, auth::AddUser::METHOD),
    (auth::ListUsers::SERVICE, auth::ListUsers::METHOD),
    (auth::UpdateUser::SERVICE, auth::UpdateUser::METHOD),
    (auth::SetPassword::SERVICE, auth::SetPassword::METHOD),
    (auth::ListThrottles::SERVICE, auth::ListThrottles::METHOD),
    (auth::ClearThrottle::SERVICE, auth::ClearThrottle::METHOD),
    (auth::AppendAudit::SERVICE, auth::AppendAudit::METHOD),
    (auth::ListAudit::SERVICE, auth::ListAudit::METHOD),
    (auth::PurgeStale::SERVICE, auth::PurgeStale::METHOD),
    (
        auth::RotateSigningKey::SERVICE,
        auth::RotateSigningKey::METHOD,
    ),
    (query::Ping::SERVICE, query::Ping::METHOD),
    (query::ListPackages::SERVICE, query::ListPackages::METHOD),
    (query::GetPackage::SERVICE, query::GetPackage::METHOD),
    (query::ReadRaw::SERVICE, query::ReadRaw::METHOD),
    (query::Series::SERVICE, query::Series::METHOD),
    (testkit::Echo::SERVICE, testkit::Echo::METHOD),
    (testkit::Sleep::SERVICE, testkit::Sleep::METHOD),
    (testkit::Fail::SERVICE, testkit::Fail::METHOD),
    (testkit::Panic::SERVICE, testkit::Panic::METHOD),
    (testkit::Crash::SERVICE, testkit::Crash::METHOD),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_routing_key_is_versioned_and_under_its_service() {
        for (service, method) in ALL_CALLS {
            let prefix = format!("{}.", service.name());
            assert!(
                method.starts_with(&prefix),
                "{method} must start with {prefix}"
            );
            let rest = &method[prefix.len()..];
            assert!(
                !rest.is_empty() && rest.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{method}: the method part must be lower snake case"
            );
            let version = service.name().rsplit('.').next().unwrap();
            assert!(
                version.starts_with('v') && version[1..].parse::<u32>().is_ok(),
                "{} must end in .v<N>",
                service.name()
            );
        }
    }

    #[test]
    fn routing_keys_are_unique() {
        let mut keys: Vec<_> = ALL_CALLS.iter().map(|(_, m)| *m).collect();
        keys.sort_unstable();
        let before = keys.len();
        keys.dedup();
        assert_eq!(before, keys.len(), "two calls share a routing key");
    }
}
