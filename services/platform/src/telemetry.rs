//! Logging set-up shared by every service: one JSON object per line on
//! stdout, with the service and environment on every line.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Installs the global subscriber for `service`. Call once, first thing in `main`.
pub fn init_telemetry(service: &'static str, environment: &str, filter: &str) {
    let filter = EnvFilter::try_new(filter)
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // lapin logs a returned (unroutable) message whole, payload included,
        // at WARN: the RPC client reports it as NoRoute instead.
        .add_directive(
            "lapin::returned_messages=error"
                .parse()
                .expect("static directive"),
        );
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true);
    let registry = tracing_subscriber::registry().with(filter).with(json);
    if registry.try_init().is_err() {
        // A second init (tests) keeps the first subscriber.
        return;
    }
    tracing::info!(
        service,
        environment,
        version = env!("CARGO_PKG_VERSION"),
        "telemetry initialised"
    );
}
