//! Logging set-up shared by every service: one JSON object per line on
//! stdout (the enclosing spans and their fields under `spans`) and, when a
//! Loki URL is configured, the same events shipped to Loki (tracing-loki)
//! under the labels `service`, `environment` and `level` only; ids such as
//! `trace_id` stay fields of the line (span fields are merged into it).

use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;
use tracing_loki::url::Url;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How long [`flush_logs`] waits for the Loki shipper to deliver what it
/// still holds (Nomad's default `kill_timeout` is 5 s, after the drain).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a service's logs go and how many of them.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Deployment name (`local`, `dev`, `prod`...), the `environment` label.
    pub environment: String,
    /// Log filter (tracing `EnvFilter` syntax); `info` when it does not parse.
    pub log_filter: String,
    /// Base URL of Loki (`/loki/api/v1/push` is appended); `None`: stdout only.
    pub loki_url: Option<Url>,
}

impl TelemetryConfig {
    /// Logs to stdout only, for one-shot commands (`ingest migrate`).
    pub fn stdout(environment: &str, log_filter: &str) -> Self {
        Self {
            environment: environment.to_owned(),
            log_filter: log_filter.to_owned(),
            loki_url: None,
        }
    }
}

/// The running Loki shipper: how to stop it and learn that it stopped.
struct Shipper {
    /// Taken by the first [`flush_logs`].
    handles: Mutex<Option<(tokio::sync::oneshot::Sender<()>, mpsc::Receiver<()>)>>,
}

/// This process's Loki shipper, once [`init_telemetry`] started one.
static SHIPPER: OnceLock<Shipper> = OnceLock::new();

/// Installs the global subscriber for `service`: JSON lines on stdout and,
/// with `config.loki_url`, the same events to Loki. Call once, first thing
/// in `main`; call [`flush_logs`] last (`service::exit_code` does).
///
/// A Loki shipper that cannot start (no thread, no runtime) is reported and
/// the service keeps logging to stdout: losing the shipper must not stop it.
pub fn init_telemetry(service: &'static str, config: &TelemetryConfig) {
    let filter = EnvFilter::try_new(&config.log_filter)
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // lapin logs a returned (unroutable) message whole, payload included,
        // at WARN: the RPC client reports it as NoRoute instead.
        .add_directive(
            "lapin::returned_messages=error"
                .parse()
                .expect("static directive"),
        );
    // Every enclosing span, root first, with its fields: the `trace_id` of
    // the gateway's `http_request` or the server's `rpc_request` span rides
    // on every line logged under it, however deep.
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
        .with_target(true);
    let (loki, shipper, loki_error) = match &config.loki_url {
        None => (None, None, None),
        Some(url) => match start_loki(service, &config.environment, url) {
            Ok((layer, shipper)) => (Some(layer), Some(shipper), None),
            Err(e) => (None, None, Some(e)),
        },
    };
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(loki);
    if registry.try_init().is_err() {
        // A second init (tests) keeps the first subscriber; a shipper
        // started here stops by itself, its layer dropped.
        return;
    }
    if let Some(shipper) = shipper {
        let _ = SHIPPER.set(shipper);
    }
    tracing::info!(
        service,
        environment = %config.environment,
        version = env!("CARGO_PKG_VERSION"),
        loki = config.loki_url.as_ref().map(Url::as_str),
        "telemetry initialised"
    );
    if let Some(e) = loki_error {
        tracing::error!(error = %e, "cannot start the Loki shipper; logging to stdout only");
    }
}

/// Why the Loki shipper could not start.
#[derive(Debug, thiserror::Error)]
enum LokiError {
    #[error("building the Loki layer: {0}")]
    Build(#[from] tracing_loki::Error),
    #[error("starting the shipper thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Builds the Loki layer and runs its background task on a thread of its
/// own with a one-thread tokio runtime, so that [`flush_logs`] can wait for
/// it from synchronous code on any runtime, and a busy service runtime
/// cannot starve it.
fn start_loki(
    service: &'static str,
    environment: &str,
    url: &Url,
) -> Result<(tracing_loki::Layer, Shipper), LokiError> {
    // tracing-loki's reqwest 0.12 is built with rustls and no provider of
    // its own (see the root Cargo.toml): it takes the process default,
    // aws-lc-rs as everywhere else. An error means one is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // The labels are a small closed set; `level` is added by tracing-loki.
    // Anything open-ended (trace ids, methods, submitters) stays a field.
    let (layer, controller, task) = tracing_loki::builder()
        .label("service", service)?
        .label("environment", environment)?
        .build_controller_url(url.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("loki-shipper".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let mut task = std::pin::pin!(task);
                tokio::select! {
                    () = &mut task => {}
                    // A flush (or the shipper dropped unused): everything
                    // logged before it is in the channel ahead of the stop.
                    _ = stop_rx => {
                        controller.shutdown().await;
                        task.await;
                    }
                }
            });
            let _ = done_tx.send(());
        })?;
    Ok((
        layer,
        Shipper {
            handles: Mutex::new(Some((stop_tx, done_rx))),
        },
    ))
}

/// Sends what the Loki shipper still holds and stops it, waiting at most
/// [`FLUSH_TIMEOUT`]; returns whether it finished in time. Without Loki, or
/// on a second call, returns `true` at once.
///
/// It blocks the calling thread: call it only on the way out, after the
/// last line worth keeping (`service::exit_code` does). Lines logged after
/// it go to stdout only.
pub fn flush_logs() -> bool {
    let Some(shipper) = SHIPPER.get() else {
        return true;
    };
    let handles = match shipper.handles.lock() {
        Ok(mut guard) => guard.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    let Some((stop, done)) = handles else {
        return true;
    };
    // The shipper may have ended already (its receiver gone): nothing to wait for.
    let _ = stop.send(());
    match done.recv_timeout(FLUSH_TIMEOUT) {
        Ok(()) => true,
        // The shipper thread died (a panic) without saying it was done.
        Err(mpsc::RecvTimeoutError::Disconnected) => false,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            tracing::warn!(
                timeout_ms = FLUSH_TIMEOUT.as_millis() as u64,
                "Loki did not take the last log lines in time; they are on stdout only"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shipper_starts_for_https_and_stops_when_asked() {
        // Builds reqwest 0.12's rustls client with the installed aws-lc-rs
        // provider (it panics without one); nothing is listening there, and
        // nothing is queued, so the stop is immediate.
        let url = Url::parse("https://127.0.0.1:9/").unwrap();
        let (layer, shipper) = start_loki("test", "unit", &url).expect("a shipper");
        let (stop, done) = shipper.handles.lock().unwrap().take().unwrap();
        stop.send(()).unwrap();
        assert_eq!(done.recv_timeout(Duration::from_secs(10)), Ok(()));
        drop(layer);
    }
}
