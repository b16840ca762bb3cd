//! The black-box suite: one test binary, one module per area. Every test
//! builds its own isolated world (namespace, queues, processes) on the real
//! servers, so tests run in parallel.

mod archive;
mod auth;
mod backoffice;
mod canary;
mod citus;
mod cli;
mod gateway;
mod grafana;
mod health;
mod hostile;
mod ingest;
mod lifecycle;
mod loki;
mod query;
mod registry;
mod rotation;
mod rpc;
mod vault;
