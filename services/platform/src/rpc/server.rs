//! The RPC server: consumes one service's quorum queue on every broker,
//! dispatches by routing key to typed handlers, replies, then acks.

use crate::amqp::guard;
use crate::clock;
use crate::rpc::client::CallOptions;
use crate::rpc::metrics::RpcMetrics;
use crate::rpc::{RpcConfig, link};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use rpc_contracts::topology::{HEADER_DEADLINE_MS, HEADER_DELIVERY_COUNT, HEADER_TRACE_ID};
use rpc_contracts::{Call, ErrorCode, Reply, RpcError, ServiceQueue};
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// What a handler knows about the request it serves.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The routing key.
    pub method: &'static str,
    /// The trace id sent by the caller.
    pub trace_id: String,
    /// When the caller stops waiting (monotonic clock of this process).
    pub deadline: Instant,
    /// How many times the broker had delivered this request before this
    /// delivery (0 on the first).
    pub delivery_count: u32,
    /// Which server instance is handling it.
    pub instance: Arc<str>,
}

impl RequestContext {
    /// Options for a nested call that inherit this request's deadline and trace id.
    pub fn call_options(&self) -> CallOptions {
        CallOptions {
            timeout: Some(self.deadline.saturating_duration_since(Instant::now())),
            trace_id: Some(self.trace_id.clone()),
        }
    }
}

/// Server tuning.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Unacknowledged requests per broker connection (bounds concurrency).
    pub prefetch: u16,
    /// Deliveries of one request before the broker dead-letters it; a
    /// queue argument, so it is fixed when the queue is first declared.
    pub delivery_limit: u32,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain_timeout: Duration,
    /// How often the dead-letter queue's depth is read
    /// (`tallyhouse_rpc_dead_letter_messages`).
    pub dead_letter_sample_interval: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            prefetch: 64,
            delivery_limit: 5,
            drain_timeout: Duration::from_secs(20),
            dead_letter_sample_interval: Duration::from_secs(15),
        }
    }
}

type Handler = Arc<dyn Fn(RequestContext, Vec<u8>) -> BoxFuture<'static, Handled> + Send + Sync>;

/// A handler's encoded reply and the error code it carries, if any.
struct Handled {
    body: Vec<u8>,
    error: Option<ErrorCode>,
}

fn encode_reply<T: serde::Serialize>(reply: &Reply<T>) -> Vec<u8> {
    rpc_contracts::codec::encode(reply).unwrap_or_else(|e| {
        let err: Reply<()> = Reply::Error(RpcError::new(
            ErrorCode::Internal,
            format!("cannot encode reply: {e}"),
        ));
        rpc_contracts::codec::encode(&err).expect("an error reply always encodes")
    })
}

fn error_reply(error: RpcError) -> Handled {
    Handled {
        error: Some(error.code),
        body: encode_reply::<()>(&Reply::Error(error)),
    }
}

/// Collects the handlers of one service queue.
pub struct RpcServerBuilder {
    service: ServiceQueue,
    handlers: HashMap<&'static str, Handler>,
    options: ServerOptions,
    instance: String,
}

impl RpcServerBuilder {
    /// Serves `C` with `handler`.
    ///
    /// # Panics
    /// If `C` belongs to another service queue, or is registered twice:
    /// both are wiring mistakes, caught at start-up.
    pub fn on<C, F, Fut>(mut self, handler: F) -> Self
    where
        C: Call,
        F: Fn(RequestContext, C::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Response, RpcError>> + Send + 'static,
    {
        assert_eq!(
            C::SERVICE,
            self.service,
            "{} is served by {}, not {}",
            C::METHOD,
            C::SERVICE,
            self.service
        );
        let handler = Arc::new(handler);
        let erased: Handler = Arc::new(move |ctx, body| {
            let handler = handler.clone();
            async move {
                let request: C::Request = match rpc_contracts::codec::decode(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        return error_reply(RpcError::new(
                            ErrorCode::BadRequest,
                            format!("malformed {} request: {e}", C::METHOD),
                        ));
                    }
                };
                let reply = Reply::from(handler(ctx, request).await);
                let error = match &reply {
                    Reply::Ok(_) => None,
                    Reply::Error(e) => Some(e.code),
                };
                Handled {
                    body: encode_reply(&reply),
                    error,
                }
            }
            .boxed()
        });
        let previous = self.handlers.insert(C::METHOD, erased);
        assert!(previous.is_none(), "{} registered twice", C::METHOD);
        self
    }

    /// Replaces the default tuning.
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// Names this instance in replies' logs and in [`RequestContext::instance`].
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    /// The finished server.
    pub fn build(self) -> RpcServer {
        RpcServer {
            shared: Arc::new(Shared {
                service: self.service,
                handlers: self.handlers,
                options: self.options,
                instance: self.instance.into(),
                gate: None,
            }),
        }
    }
}

struct Shared {
    service: ServiceQueue,
    handlers: HashMap<&'static str, Handler>,
    options: ServerOptions,
    instance: Arc<str>,
    gate: Option<Gate>,
}

/// Asked before every call: `Some(error)` refuses the call with that error
/// without running its handler (e.g. the service's leased secrets expired
/// while Vault was away: see [`crate::vault::Vault::gate`]).
pub type Gate = Arc<dyn Fn() -> Option<RpcError> + Send + Sync>;

/// A server for one service queue; see [`RpcServer::builder`].
pub struct RpcServer {
    shared: Arc<Shared>,
}

impl RpcServer {
    /// Refuses calls with the gate's error while it returns one.
    ///
    /// # Panics
    /// If the server is already running (gates are set before `run`).
    pub fn gated(mut self, gate: Gate) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("gates are set before the server runs")
            .gate = Some(gate);
        self
    }

    /// Starts describing the server of `service`.
    pub fn builder(service: ServiceQueue) -> RpcServerBuilder {
        RpcServerBuilder {
            service,
            handlers: HashMap::new(),
            options: ServerOptions::default(),
            instance: format!(
                "{}-{}",
                service.name(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        }
    }

    /// Serves on every broker of `config` until `stop` is cancelled, then
    /// stops consuming, lets in-flight requests finish and reply (bounded by
    /// the drain timeout) and closes. Unacknowledged requests go back to the
    /// queue for another instance. Every method it serves has its metric
    /// series at 0 from the start ([`RpcMetrics::serving`]).
    pub async fn run(self, config: RpcConfig, metrics: RpcMetrics, stop: CancellationToken) {
        // Before the first await, so before any broker link is up.
        for method in self.shared.handlers.keys() {
            metrics.serving(method);
        }
        let tasks = TaskTracker::new();
        for uri in &config.brokers {
            let shared = self.shared.clone();
            let config2 = config.clone();
            let metrics2 = metrics.clone();
            tasks.spawn(link::keep_connected(
                uri.clone(),
                config.clone(),
                metrics.clone(),
                stop.clone(),
                move |conn, stop| {
                    server_session(
                        conn,
                        stop,
                        shared.clone(),
                        config2.clone(),
                        metrics2.clone(),
                    )
                },
            ));
        }
        tasks.close();
        tasks.wait().await;
        tracing::info!(service = %self.shared.service, "rpc server stopped");
    }
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

async fn declare_topology(
    channel: &Channel,
    shared: &Shared,
    config: &RpcConfig,
) -> anyhow::Result<String> {
    let t = &config.topology;
    let to = config.op_timeout;
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let queue = t.queue(shared.service);
    let dlq = t.dead_letter_queue(shared.service);
    for exchange in [t.exchange(), t.dead_letter_exchange()] {
        guard(
            "exchange.declare",
            to,
            channel.exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Direct,
                durable_exchange,
                FieldTable::default(),
            ),
        )
        .await?;
    }
    guard(
        "queue.declare dead-letter",
        to,
        channel.queue_declare(dlq.as_str().into(), durable_queue, quorum_args()),
    )
    .await?;
    guard(
        "queue.bind dead-letter",
        to,
        channel.queue_bind(
            dlq.as_str().into(),
            t.dead_letter_exchange().as_str().into(),
            queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    let mut args = quorum_args();
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(shared.options.delivery_limit)),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(t.dead_letter_exchange().as_str().into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queue.as_str().into()),
    );
    // Lossless dead-lettering: the broker keeps a message until the
    // dead-letter queue has confirmed it (needs overflow=reject-publish).
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    guard(
        "queue.declare",
        to,
        channel.queue_declare(queue.as_str().into(), durable_queue, args),
    )
    .await?;
    let mut methods: Vec<_> = shared.handlers.keys().copied().collect();
    methods.sort_unstable();
    for method in methods {
        guard(
            "queue.bind",
            to,
            channel.queue_bind(
                queue.as_str().into(),
                t.exchange().as_str().into(),
                method.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    Ok(queue)
}

async fn server_session(
    conn: Arc<Connection>,
    stop: CancellationToken,
    shared: Arc<Shared>,
    config: RpcConfig,
    metrics: RpcMetrics,
) -> anyhow::Result<()> {
    let to = config.op_timeout;
    let channel = guard("channel.open", to, conn.create_channel()).await?;
    let queue = declare_topology(&channel, &shared, &config).await?;
    let dlq = config.topology.dead_letter_queue(shared.service);
    let _dead_letters = crate::rpc::dead_letter::spawn_sampler(
        conn.clone(),
        dlq.clone(),
        metrics
            .dead_letter_messages
            .get_or_create_owned(&crate::rpc::metrics::QueueLabels { queue: dlq }),
        shared.options.dead_letter_sample_interval,
        to,
    );
    guard(
        "basic.qos",
        to,
        channel.basic_qos(shared.options.prefetch, BasicQosOptions::default()),
    )
    .await?;
    let tag = format!(
        "{}-{}",
        shared.instance,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut consumer = guard(
        "basic.consume",
        to,
        channel.basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    tracing::info!(queue = %queue, instance = %shared.instance, "consuming");
    let in_flight = TaskTracker::new();
    let result = loop {
        tokio::select! {
            () = stop.cancelled() => {
                // Stop new deliveries; what is already here is finished below.
                if let Err(e) = guard(
                    "basic.cancel",
                    to,
                    channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
                ).await {
                    tracing::warn!(error = %e, "cannot cancel consumer");
                }
                break Ok(());
            }
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    in_flight.spawn(handle(
                        delivery,
                        channel.clone(),
                        shared.clone(),
                        metrics.clone(),
                        to,
                    ));
                }
                Some(Err(e)) => break Err(e.into()),
                None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
            }
        }
    };
    in_flight.close();
    if tokio::time::timeout(shared.options.drain_timeout, in_flight.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = in_flight.len(),
            "drain timeout: unfinished requests go back to the queue"
        );
    }
    result
}

fn header<'a>(delivery: &'a Delivery, key: &str) -> Option<&'a AMQPValue> {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key))
}

fn header_u64(delivery: &Delivery, key: &str) -> Option<u64> {
    match header(delivery, key)? {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

fn header_string(delivery: &Delivery, key: &str) -> Option<String> {
    match header(delivery, key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[allow(clippy::disallowed_methods)] // the RPC server is the sanctioned publisher of replies
async fn handle(
    mut delivery: Delivery,
    channel: Channel,
    shared: Arc<Shared>,
    metrics: RpcMetrics,
    op_timeout: Duration,
) {
    let now_ms = clock::now_unix_ms();
    let deadline_ms = header_u64(&delivery, HEADER_DEADLINE_MS);
    let trace_id = header_string(&delivery, HEADER_TRACE_ID).unwrap_or_default();
    let span =
        tracing::info_span!("rpc_request", method = %delivery.routing_key, trace_id = %trace_id);
    async move {
        let entry = shared.handlers.get_key_value(delivery.routing_key.as_str());
        let method: &'static str = entry.map_or("unknown", |(m, _)| *m);
        if deadline_ms.is_some_and(|d| d <= now_ms) {
            // The caller has given up: drop without work.
            metrics.server.in_flight(method);
            metrics
                .expired
                .get_or_create(&crate::rpc::metrics::MethodLabels { method })
                .inc();
            tracing::debug!("request expired before it was handled; dropped");
            settle(&delivery, Settle::Ack, op_timeout).await;
            return;
        }
        let started = Instant::now();
        let _in_flight = metrics.server.in_flight(method);
        let remaining = Duration::from_millis(deadline_ms.map_or(60_000, |d| d - now_ms));
        let refusal = shared.gate.as_ref().and_then(|gate| gate());
        let (handled, panicked) = match (entry, refusal) {
            (None, _) => (
                error_reply(RpcError::new(
                    ErrorCode::UnknownMethod,
                    format!("{} is not served here", delivery.routing_key),
                )),
                false,
            ),
            (Some(_), Some(refusal)) => (error_reply(refusal), false),
            (Some((method, handler)), None) => {
                let ctx = RequestContext {
                    method,
                    trace_id: trace_id.clone(),
                    deadline: started + remaining,
                    delivery_count: header_u64(&delivery, HEADER_DELIVERY_COUNT).unwrap_or(0)
                        as u32,
                    instance: shared.instance.clone(),
                };
                match AssertUnwindSafe(handler(ctx, std::mem::take(&mut delivery.data)))
                    .catch_unwind()
                    .await
                {
                    Ok(handled) => (handled, false),
                    Err(_) => {
                        tracing::error!(
                            "handler panicked; the request goes to the dead-letter queue"
                        );
                        (
                            error_reply(RpcError::new(
                                ErrorCode::HandlerPanicked,
                                format!("the {method} handler failed unexpectedly"),
                            )),
                            true,
                        )
                    }
                }
            }
        };
        metrics
            .server
            .record(method, started.elapsed().as_secs_f64(), handled.error);
        if let Some(reply_to) = delivery.properties.reply_to() {
            let mut props = BasicProperties::default()
                .with_content_type(rpc_contracts::codec::CONTENT_TYPE.into());
            if let Some(id) = delivery.properties.correlation_id() {
                props = props.with_correlation_id(id.clone());
            }
            let published = guard(
                "basic.publish reply",
                op_timeout,
                channel.basic_publish(
                    ShortString::from(""),
                    reply_to.clone(),
                    BasicPublishOptions::default(),
                    &handled.body,
                    props,
                ),
            )
            .await;
            if let Err(e) = published {
                // Without a reply sent, the request must not be acked: it
                // returns to the queue when this channel closes.
                tracing::warn!(error = %e, "cannot publish reply; leaving request unacknowledged");
                return;
            }
        }
        if panicked {
            metrics
                .dead_lettered
                .get_or_create(&crate::rpc::metrics::MethodLabels { method })
                .inc();
            settle(&delivery, Settle::DeadLetter, op_timeout).await;
        } else {
            settle(&delivery, Settle::Ack, op_timeout).await;
        }
    }
    .instrument(span)
    .await;
}

enum Settle {
    Ack,
    DeadLetter,
}

async fn settle(delivery: &Delivery, how: Settle, op_timeout: Duration) {
    let result = match how {
        Settle::Ack => {
            guard(
                "basic.ack",
                op_timeout,
                delivery.acker.ack(BasicAckOptions::default()),
            )
            .await
        }
        Settle::DeadLetter => {
            guard(
                "basic.reject",
                op_timeout,
                delivery.acker.reject(BasicRejectOptions { requeue: false }),
            )
            .await
        }
    };
    match result {
        Ok(true) => {}
        // lapin answers Ok(false) on a closed or recovered channel: the
        // broker will redeliver the request to another consumer.
        Ok(false) => {
            tracing::warn!("channel gone before the request was settled; it will be redelivered")
        }
        Err(e) => tracing::warn!(error = %e, "cannot settle request; it will be redelivered"),
    }
}
