//! The shared runtime every Tallyhouse service stands on: typed RPC over
//! RabbitMQ ([`rpc`]), configuration ([`config`]), telemetry ([`telemetry`]),
//! graceful shutdown ([`shutdown`]), secrets from Vault ([`vault`]), the
//! metrics and health endpoints ([`ops`]) and, behind the `testing` feature,
//! the black-box test harness ([`testing`]).

pub mod amqp;
pub mod clock;
pub mod config;
pub mod db;
pub mod db_metrics;
pub mod ops;
pub mod rpc;
pub mod s3;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod vault;

#[cfg(feature = "testing")]
pub mod testing;

pub use rpc_contracts as contracts;
