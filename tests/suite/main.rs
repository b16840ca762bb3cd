//! The black-box suite: one test binary, one module per area. Every test
//! builds its own isolated world (namespace, queues, processes) on the real
//! servers, so tests run in parallel.

mod gateway;
mod ingest;
mod registry;
mod rpc;
