//! Broker addresses and the guards every lapin call goes through: a timeout
//! on each operation (lapin has known hangs on closed connections), URIs
//! whose credentials never reach a log, and reconnect backoff.

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

/// Heartbeat used when a URI does not set one: a dead peer behind a silent
/// network is noticed within about two of these.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// A broker address, credentials included. Its `Debug` and `Display` show
/// only `amqp://user@host:port/vhost`.
#[derive(Clone)]
pub struct BrokerUri {
    uri: AMQPUri,
}

impl BrokerUri {
    /// Parses `amqp://[user:password@]host[:port][/vhost][?query]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut uri = AMQPUri::from_str(s).map_err(|e| {
            // The parse error may echo the input; keep it out of the message.
            let _ = e;
            "invalid AMQP URI (expected amqp://host:port/vhost)".to_owned()
        })?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
        }
        Ok(Self { uri })
    }

    /// The same address with the given credentials.
    pub fn with_credentials(mut self, username: &str, password: &str) -> Self {
        self.uri.authority.userinfo.username = username.to_owned();
        self.uri.authority.userinfo.password = password.to_owned();
        self
    }

    /// `host:port`, for logs and metric labels.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.uri.authority.host, self.uri.authority.port)
    }

    /// Opens a connection, bounded by `timeout`.
    pub async fn connect(&self, name: &str, timeout: Duration) -> Result<Connection, AmqpError> {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        guard(
            "connect",
            timeout,
            Connection::connect_uri(self.uri.clone(), props),
        )
        .await
    }
}

impl fmt::Display for BrokerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "amqp://{}@{}/{}",
            self.uri.authority.userinfo.username,
            self.host_port(),
            self.uri.vhost.replace('/', "%2f")
        )
    }
}

impl fmt::Debug for BrokerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUri({self})")
    }
}

/// A failed broker operation.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The broker did not answer in time.
    #[error("{op} timed out after {timeout:?}")]
    Timeout {
        /// Which operation.
        op: &'static str,
        /// The bound that was exceeded.
        timeout: Duration,
    },
    /// lapin reported an error.
    #[error("{op} failed: {source}")]
    Lapin {
        /// Which operation.
        op: &'static str,
        /// What lapin said.
        #[source]
        source: lapin::Error,
    },
}

/// Runs one lapin operation with a timeout.
pub async fn guard<T>(
    op: &'static str,
    timeout: Duration,
    fut: impl Future<Output = lapin::Result<T>>,
) -> Result<T, AmqpError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(AmqpError::Lapin { op, source }),
        Err(_) => Err(AmqpError::Timeout { op, timeout }),
    }
}

/// Exponential backoff with full jitter, for reconnecting.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `min`, doubles up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    /// The next wait: a random time up to the current bound.
    pub fn next_delay(&mut self) -> Duration {
        let bound = self
            .min
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = rand::random::<f64>();
        self.min.min(bound) / 2 + bound.mul_f64(jitter) / 2
    }

    /// Back to the shortest wait, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_debug_hide_the_password() {
        let uri = BrokerUri::parse("amqp://127.0.0.1:5672/%2f")
            .unwrap()
            .with_credentials("svc", "s3cr3t-pa55");
        for shown in [format!("{uri}"), format!("{uri:?}")] {
            assert!(!shown.contains("s3cr3t-pa55"), "{shown}");
            assert!(shown.contains("svc@127.0.0.1:5672"), "{shown}");
        }
    }

    #[test]
    fn parse_errors_do_not_echo_the_input() {
        let err = BrokerUri::parse("amqp://u:hunter2@[bad").unwrap_err();
        assert!(!err.contains("hunter2"));
    }

    #[test]
    fn heartbeat_defaults_but_can_be_set() {
        let uri = BrokerUri::parse("amqp://h:1/%2f").unwrap();
        assert_eq!(uri.uri.query.heartbeat, Some(DEFAULT_HEARTBEAT_SECS));
        let uri = BrokerUri::parse("amqp://h:1/%2f?heartbeat=3").unwrap();
        assert_eq!(uri.uri.query.heartbeat, Some(3));
    }

    #[test]
    fn backoff_grows_to_its_bound_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(1), "{d:?}");
            assert!(d >= Duration::from_millis(50), "{d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
