//! The raw-lapin baseline of the `rpc` benchmarks: the same round trip as the
//! framework's (durable quorum queue bound to a direct exchange; `mandatory`
//! publish with publisher confirms; reply on direct reply-to consumed
//! no-ack on the caller's channel; responder with the framework's prefetch
//! that publishes the reply, then acks) with none of the framework: raw
//! bytes, a counter for correlation ids, no headers, metrics or tracing.
//!
//! A [`RawStyle`] can add back, one at a time, what the framework puts on
//! the wire, so that `rpc-breakdown` can attribute the framework's cost.

// The raw baseline has to publish with lapin directly: that is its point.
#![allow(clippy::disallowed_methods)]

use crate::harness::Context;
use crate::load::CallFn;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};
use platform::amqp::guard;
use platform::rpc::ServerOptions;
use rpc_contracts::testkit::{EchoRequest, EchoResponse};
use rpc_contracts::topology::{DIRECT_REPLY_TO, HEADER_DEADLINE_MS, HEADER_TRACE_ID};
use rpc_contracts::{Bytes, Reply};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Same bound as the framework's default call deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const ROUTING_KEY: &str = "echo";
const JSON: &str = "application/json";

/// Which of the framework's wire choices the raw round trip also makes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawStyle {
    /// The framework's queue arguments: delivery limit, at-least-once
    /// dead-lettering to a dead-letter exchange, `reject-publish` overflow.
    pub queue_args: bool,
    /// The framework's message properties but expiration: content type,
    /// deadline and trace-id headers, 32-character correlation ids (the
    /// reply gets the content type too).
    pub headers: bool,
    /// The framework's per-message expiration (the call's timeout).
    pub expiration: bool,
    /// The framework's body: `EchoRequest` / `Reply<EchoResponse>` as JSON
    /// (payload in base64), encoded and decoded at both ends.
    pub json: bool,
}

/// A raw echo responder and a raw caller, each on its own connection.
pub struct Raw {
    caller: Arc<Caller>,
    caller_conn: Connection,
    responder_conn: Connection,
    tasks: Vec<JoinHandle<()>>,
}

/// The calling side: one confirm-mode channel that also consumes the replies.
struct Caller {
    channel: Channel,
    exchange: ShortString,
    style: RawStyle,
    pending: Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>,
    next_id: AtomicU64,
}

impl Raw {
    /// Declares the exchange and queue of `name`, starts the responder and
    /// the caller.
    pub async fn start(ctx: &Context, name: &str, style: RawStyle) -> anyhow::Result<Self> {
        let namespace = ctx.namespace(name);
        let exchange = format!("{namespace}.rpc");
        let queue = format!("{namespace}.echo");
        ctx.janitor.queue(&queue);
        ctx.janitor.exchange(&exchange);

        let responder_conn = ctx
            .amqp_uri
            .connect("bench-raw-responder", OP_TIMEOUT)
            .await?;
        let channel = guard("channel.open", OP_TIMEOUT, responder_conn.create_channel()).await?;
        declare_exchange(&channel, &exchange).await?;
        let mut args = quorum();
        if style.queue_args {
            // As the framework's server declares its queues.
            let dlx = format!("{namespace}.rpc.dead-letter");
            let dlq = format!("{namespace}.echo.dead-letter");
            ctx.janitor.queue(&dlq);
            ctx.janitor.exchange(&dlx);
            declare_exchange(&channel, &dlx).await?;
            declare_queue(&channel, &dlq, quorum()).await?;
            bind(&channel, &dlq, &dlx, &queue).await?;
            let limit = i64::from(ServerOptions::default().delivery_limit);
            args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(limit));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.as_str().into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(queue.as_str().into()),
            );
            args.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
        }
        declare_queue(&channel, &queue, args).await?;
        bind(&channel, &queue, &exchange, ROUTING_KEY).await?;
        let prefetch = ServerOptions::default().prefetch;
        guard(
            "basic.qos",
            OP_TIMEOUT,
            channel.basic_qos(prefetch, BasicQosOptions::default()),
        )
        .await?;
        let requests = guard(
            "basic.consume",
            OP_TIMEOUT,
            channel.basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        let responder = tokio::spawn(respond(channel, requests, style));

        let caller_conn = ctx.amqp_uri.connect("bench-raw-caller", OP_TIMEOUT).await?;
        let channel = guard("channel.open", OP_TIMEOUT, caller_conn.create_channel()).await?;
        guard(
            "confirm.select",
            OP_TIMEOUT,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let replies = guard(
            "basic.consume reply-to",
            OP_TIMEOUT,
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
        let caller = Arc::new(Caller {
            channel,
            exchange: exchange.as_str().into(),
            style,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let reader = tokio::spawn(read_replies(caller.clone(), replies));
        Ok(Self {
            caller,
            caller_conn,
            responder_conn,
            tasks: vec![responder, reader],
        })
    }

    /// One echo round trip of `body_bytes` bytes, checking the body comes back.
    pub fn echo(&self, body_bytes: usize) -> CallFn {
        let caller = self.caller.clone();
        let request = Arc::new(EchoRequest {
            payload: Bytes(super::payload(body_bytes)),
        });
        Arc::new(move || {
            let caller = caller.clone();
            let request = request.clone();
            async move {
                if caller.style.json {
                    let body = serde_json::to_vec(&*request).map_err(|e| e.to_string())?;
                    let reply = caller.call(&body).await?;
                    match serde_json::from_slice::<Reply<EchoResponse>>(&reply) {
                        Ok(Reply::Ok(r)) if r.payload == request.payload => Ok(()),
                        _ => Err("the echoed payload differs".to_owned()),
                    }
                } else {
                    let reply = caller.call(&request.payload.0).await?;
                    if reply != request.payload.0 {
                        return Err("the echoed body differs".to_owned());
                    }
                    Ok(())
                }
            }
            .boxed()
        })
    }

    /// Closes both connections and waits for the tasks to end.
    pub async fn stop(self) {
        let _ = guard(
            "connection.close",
            OP_TIMEOUT,
            self.caller_conn.close(200, "bye".into()),
        )
        .await;
        let _ = guard(
            "connection.close",
            OP_TIMEOUT,
            self.responder_conn.close(200, "bye".into()),
        )
        .await;
        for task in self.tasks {
            if tokio::time::timeout(OP_TIMEOUT, task).await.is_err() {
                eprintln!("bench: a raw baseline task did not stop");
            }
        }
    }
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

async fn declare_exchange(channel: &Channel, name: &str) -> anyhow::Result<()> {
    guard(
        "exchange.declare",
        OP_TIMEOUT,
        channel.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(())
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> anyhow::Result<()> {
    guard(
        "queue.declare",
        OP_TIMEOUT,
        channel.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        ),
    )
    .await?;
    Ok(())
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> anyhow::Result<()> {
    guard(
        "queue.bind",
        OP_TIMEOUT,
        channel.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(())
}

impl Caller {
    fn properties(&self, id: u64) -> BasicProperties {
        let mut properties = BasicProperties::default()
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_delivery_mode(2);
        let timeout_ms = CALL_TIMEOUT.as_millis() as u64;
        if self.style.headers {
            let mut headers = FieldTable::default();
            let deadline_ms = platform::clock::now_unix_ms() + timeout_ms;
            headers.insert(
                HEADER_DEADLINE_MS.into(),
                AMQPValue::LongLongInt(deadline_ms as i64),
            );
            headers.insert(
                HEADER_TRACE_ID.into(),
                AMQPValue::LongString(format!("{:032x}", !id).into()),
            );
            properties = properties
                .with_correlation_id(format!("{id:032x}").into())
                .with_content_type(JSON.into())
                .with_headers(headers);
        } else {
            properties = properties.with_correlation_id(format!("{id:x}").into());
        }
        if self.style.expiration {
            properties = properties.with_expiration(timeout_ms.to_string().into());
        }
        properties
    }

    async fn call(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let round_trip = async {
            let confirm = self
                .channel
                .basic_publish(
                    self.exchange.clone(),
                    ROUTING_KEY.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    body,
                    self.properties(id),
                )
                .await
                .map_err(|e| format!("publish: {e}"))?;
            match confirm.await.map_err(|e| format!("confirm: {e}"))? {
                Confirmation::Ack(None) => {}
                other => return Err(format!("not confirmed: {other:?}")),
            }
            rx.await.map_err(|_| "the reply reader stopped".to_owned())
        };
        let outcome = match tokio::time::timeout(CALL_TIMEOUT, round_trip).await {
            Ok(r) => r,
            Err(_) => Err(format!("no reply within {CALL_TIMEOUT:?}")),
        };
        if outcome.is_err() {
            self.pending.lock().expect("pending lock").remove(&id);
        }
        outcome
    }
}

/// Hands each reply to the call waiting for its correlation id.
async fn read_replies(caller: Arc<Caller>, mut replies: lapin::Consumer) {
    while let Some(Ok(delivery)) = replies.next().await {
        let waiter = delivery
            .properties
            .correlation_id()
            .as_ref()
            .and_then(|id| u64::from_str_radix(id.as_str(), 16).ok())
            .and_then(|id| caller.pending.lock().expect("pending lock").remove(&id));
        if let Some(tx) = waiter {
            let _ = tx.send(delivery.data);
        }
    }
}

/// Echoes every request to its reply-to address, then acks it; one task
/// per delivery, as prefetch lets several be in progress at once.
async fn respond(channel: Channel, mut requests: lapin::Consumer, style: RawStyle) {
    while let Some(Ok(delivery)) = requests.next().await {
        let channel = channel.clone();
        tokio::spawn(async move {
            let properties = &delivery.properties;
            if let (Some(reply_to), Some(id)) = (properties.reply_to(), properties.correlation_id())
            {
                let mut reply = BasicProperties::default().with_correlation_id(id.clone());
                if style.headers {
                    reply = reply.with_content_type(JSON.into());
                }
                let encoded;
                let body: &[u8] = if style.json {
                    encoded = echo_json(&delivery.data);
                    &encoded
                } else {
                    &delivery.data
                };
                let published = channel
                    .basic_publish(
                        "".into(),
                        reply_to.clone(),
                        BasicPublishOptions::default(),
                        body,
                        reply,
                    )
                    .await;
                if published.is_err() {
                    // Unacked, the request returns to the queue when the channel closes.
                    return;
                }
            }
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        });
    }
}

/// The Echo handler's work on the wire format: decode the request, encode
/// the reply envelope.
fn echo_json(request: &[u8]) -> Vec<u8> {
    let reply: Reply<EchoResponse> = match serde_json::from_slice::<EchoRequest>(request) {
        Ok(req) => Reply::Ok(EchoResponse {
            payload: req.payload,
            instance: "raw".to_owned(),
            delivery_count: 0,
        }),
        Err(e) => Reply::Error(rpc_contracts::RpcError::new(
            rpc_contracts::ErrorCode::BadRequest,
            e.to_string(),
        )),
    };
    serde_json::to_vec(&reply).unwrap_or_default()
}
