//! The RPC client: typed calls with a deadline, publisher confirms and
//! `mandatory` routing, replies on direct reply-to, one connection per broker.

use crate::amqp::{BrokerUri, guard};
use crate::clock;
use crate::rpc::metrics::RpcMetrics;
use crate::rpc::{RpcConfig, link};
use futures_util::StreamExt as _;
use lapin::Confirmation;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use rpc_contracts::topology::{DIRECT_REPLY_TO, HEADER_DEADLINE_MS, HEADER_TRACE_ID};
use rpc_contracts::{Call, ErrorCode, Reply, RpcError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Per-call settings.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// How long the caller waits for the reply; the client's default when `None`.
    pub timeout: Option<Duration>,
    /// Trace id carried in the request headers; a new one when `None`.
    pub trace_id: Option<String>,
}

impl CallOptions {
    /// Options with a timeout.
    pub fn timeout(timeout: Duration) -> Self {
        Self {
            timeout: Some(timeout),
            trace_id: None,
        }
    }
}

/// A handle to the RPC client; cheap to clone. Dropping the last clone stops
/// its connections.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

struct Inner {
    links: Vec<Arc<LinkSlot>>,
    next: AtomicUsize,
    config: RpcConfig,
    metrics: RpcMetrics,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The current session of one broker link, if it is up.
#[derive(Default)]
struct LinkSlot {
    session: RwLock<Option<Arc<Session>>>,
}

/// One connected channel with its calls awaiting a reply.
struct Session {
    channel: Channel,
    pending: Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>,
    closed: AtomicBool,
}

impl Session {
    /// Fails every waiting call at once: their senders drop, so each
    /// receiver sees the link as gone.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.pending.lock().expect("pending lock").clear();
    }
}

/// Removes a call's pending entry however the call ends (reply, error or
/// cancellation by the caller).
struct PendingGuard<'a> {
    session: &'a Session,
    correlation_id: &'a str,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.session
            .pending
            .lock()
            .expect("pending lock")
            .remove(self.correlation_id);
    }
}

/// Clears the link slot when a session ends, however it ends.
struct SlotGuard {
    slot: Arc<LinkSlot>,
    session: Arc<Session>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        *self.slot.session.write().expect("slot lock") = None;
        self.session.close();
    }
}

impl RpcClient {
    /// Starts one background connection per configured broker and returns
    /// at once; calls made before any connection is up fail with
    /// `disconnected`. See [`RpcClient::wait_connected`].
    pub fn start(config: RpcConfig, metrics: RpcMetrics) -> Self {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let links: Vec<Arc<LinkSlot>> = config
            .brokers
            .iter()
            .map(|_| Arc::new(LinkSlot::default()))
            .collect();
        for (uri, slot) in config.brokers.iter().zip(&links) {
            tasks.spawn(run_link(
                uri.clone(),
                slot.clone(),
                config.clone(),
                metrics.clone(),
                stop.clone(),
            ));
        }
        tasks.close();
        Self {
            inner: Arc::new(Inner {
                links,
                next: AtomicUsize::new(0),
                config,
                metrics,
                stop,
                tasks,
            }),
        }
    }

    /// Waits until at least one broker connection is up, or `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if self.connected_links() > 0 {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many broker connections are up now.
    pub fn connected_links(&self) -> usize {
        self.inner
            .links
            .iter()
            .filter(|l| l.session.read().expect("slot lock").is_some())
            .count()
    }

    /// Calls `C` with the default deadline.
    pub async fn call<C: Call>(&self, request: &C::Request) -> Result<C::Response, RpcError> {
        self.call_with::<C>(request, CallOptions::default()).await
    }

    /// Calls `C` with explicit options.
    #[tracing::instrument(skip_all, fields(method = C::METHOD, trace_id))]
    pub async fn call_with<C: Call>(
        &self,
        request: &C::Request,
        options: CallOptions,
    ) -> Result<C::Response, RpcError> {
        let started = Instant::now();
        let _in_flight = self.inner.metrics.client.in_flight(C::METHOD);
        let timeout = options
            .timeout
            .unwrap_or(self.inner.config.default_call_timeout);
        let trace_id = options
            .trace_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        tracing::Span::current().record("trace_id", trace_id.as_str());

        let result = match rpc_contracts::codec::encode(request) {
            Err(e) => Err(RpcError::new(
                ErrorCode::Internal,
                format!("cannot encode request: {e}"),
            )),
            Ok(body) => {
                let deadline = started + timeout;
                let send = self.send(C::METHOD, body, deadline, timeout, &trace_id);
                match tokio::time::timeout_at(deadline, send).await {
                    Ok(r) => r.and_then(|bytes| decode::<C::Response>(&bytes)),
                    Err(_) => Err(RpcError::new(
                        ErrorCode::DeadlineExceeded,
                        format!("no reply to {} within {timeout:?}", C::METHOD),
                    )),
                }
            }
        };
        self.inner.metrics.client.record(
            C::METHOD,
            started.elapsed().as_secs_f64(),
            result.as_ref().err().map(|e| e.code),
        );
        if let Err(e) = &result {
            tracing::debug!(code = %e.code, error = %e.message, "rpc call failed");
        }
        result
    }

    /// Picks a connected link, round robin.
    fn session(&self) -> Option<Arc<Session>> {
        let n = self.inner.links.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|i| {
            let slot = &self.inner.links[(start + i) % n];
            slot.session
                .read()
                .expect("slot lock")
                .as_ref()
                .filter(|s| !s.closed.load(Ordering::SeqCst))
                .cloned()
        })
    }

    #[allow(clippy::disallowed_methods)] // the RPC client is the sanctioned publisher
    async fn send(
        &self,
        method: &'static str,
        body: Vec<u8>,
        deadline: Instant,
        timeout: Duration,
        trace_id: &str,
    ) -> Result<Vec<u8>, RpcError> {
        let Some(session) = self.session() else {
            return Err(RpcError::new(
                ErrorCode::Disconnected,
                "no broker connection is up",
            ));
        };
        let correlation_id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = oneshot::channel();
        session
            .pending
            .lock()
            .expect("pending lock")
            .insert(correlation_id.clone(), tx);
        let _pending = PendingGuard {
            session: &session,
            correlation_id: &correlation_id,
        };
        if session.closed.load(Ordering::SeqCst) {
            return Err(disconnected("the broker connection dropped"));
        }

        let remaining = deadline.saturating_duration_since(Instant::now());
        let remaining_ms = remaining.as_millis().max(1) as u64;
        let deadline_ms = clock::now_unix_ms() + remaining_ms;
        let mut headers = FieldTable::default();
        headers.insert(
            HEADER_DEADLINE_MS.into(),
            AMQPValue::LongLongInt(deadline_ms as i64),
        );
        headers.insert(
            HEADER_TRACE_ID.into(),
            AMQPValue::LongString(trace_id.into()),
        );
        let properties = BasicProperties::default()
            .with_correlation_id(correlation_id.as_str().into())
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_content_type(rpc_contracts::codec::CONTENT_TYPE.into())
            .with_delivery_mode(2)
            .with_expiration(remaining_ms.to_string().into())
            .with_headers(headers);

        let op_timeout = self.inner.config.op_timeout.min(timeout);
        let exchange = self.inner.config.topology.exchange();
        let confirm = guard(
            "basic.publish",
            op_timeout,
            session.channel.basic_publish(
                exchange.as_str().into(),
                method.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &body,
                properties,
            ),
        )
        .await
        .map_err(|e| disconnected(&e.to_string()))?;
        match guard("publisher confirm", op_timeout, confirm).await {
            Ok(Confirmation::Ack(None)) => {}
            Ok(Confirmation::Ack(Some(_returned))) => {
                return Err(RpcError::new(
                    ErrorCode::NoRoute,
                    format!("no queue is bound to {method}: no service serves it"),
                ));
            }
            Ok(Confirmation::Nack(_)) => {
                return Err(RpcError::new(
                    ErrorCode::Unavailable,
                    format!("the broker refused the request to {method}"),
                ));
            }
            Ok(Confirmation::NotRequested) => {
                return Err(RpcError::new(
                    ErrorCode::Internal,
                    "publisher confirms are not enabled on the channel",
                ));
            }
            Err(e) => return Err(disconnected(&e.to_string())),
        }
        rx.await
            .map_err(|_| disconnected("the broker connection dropped while waiting for the reply"))
    }

    /// Stops the connections and waits for their tasks to end.
    pub async fn close(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.wait().await;
    }
}

fn disconnected(why: &str) -> RpcError {
    RpcError::new(ErrorCode::Disconnected, why.to_owned())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RpcError> {
    match rpc_contracts::codec::decode::<Reply<T>>(bytes) {
        Ok(reply) => reply.into(),
        Err(e) => Err(RpcError::new(
            ErrorCode::Internal,
            format!("malformed reply: {e}"),
        )),
    }
}

async fn run_link(
    uri: BrokerUri,
    slot: Arc<LinkSlot>,
    config: RpcConfig,
    metrics: RpcMetrics,
    stop: CancellationToken,
) {
    let op_timeout = config.op_timeout;
    let exchange = config.topology.exchange();
    link::keep_connected(uri, config, metrics, stop, |conn, stop| {
        client_session(conn, stop, slot.clone(), op_timeout, exchange.clone())
    })
    .await;
}

async fn client_session(
    conn: Arc<Connection>,
    stop: CancellationToken,
    slot: Arc<LinkSlot>,
    op_timeout: Duration,
    exchange: String,
) -> anyhow::Result<()> {
    let channel = guard("channel.open", op_timeout, conn.create_channel()).await?;
    // Publishing to a missing exchange would close the channel; declaring it
    // (idempotently, as servers do) turns "nobody serves this" into NoRoute.
    guard(
        "exchange.declare",
        op_timeout,
        channel.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    guard(
        "confirm.select",
        op_timeout,
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    let mut replies = guard(
        "basic.consume reply-to",
        op_timeout,
        channel.basic_consume(
            DIRECT_REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let session = Arc::new(Session {
        channel,
        pending: Mutex::new(HashMap::new()),
        closed: AtomicBool::new(false),
    });
    *slot.session.write().expect("slot lock") = Some(session.clone());
    let _guard = SlotGuard {
        slot,
        session: session.clone(),
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            delivery = replies.next() => match delivery {
                Some(Ok(delivery)) => {
                    let waiter = delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .and_then(|id| session.pending.lock().expect("pending lock").remove(id.as_str()));
                    match waiter {
                        // The caller may have given up meanwhile; nothing to do then.
                        Some(tx) => { let _ = tx.send(delivery.data); }
                        None => tracing::debug!("reply for a call no longer waiting"),
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the reply consumer was cancelled"),
            }
        }
    }
}
