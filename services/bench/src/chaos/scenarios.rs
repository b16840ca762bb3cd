//! The fault scenarios: each starts a whole platform (`tests::stack::Stack`)
//! on its own namespace, databases and bucket, with the one server it
//! breaks made private to it; runs the load; injects the fault mid-load;
//! heals it; stops the load, lets what is under way finish, and has the
//! checker compare the history with what was stored.

use crate::check::{Timeline, Verdict, check};
use crate::load::{History, Load, LoadConfig, Outcome, Submitter};
use crate::servers::{
    DelayProxy, DelaySpec, PrivateBao, PrivatePostgres, PrivateS3, StallProxy, fd_kinds,
    proc_stats, sockets_to,
};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use platform::amqp::BrokerUri;
use platform::s3::{EvidenceStore, S3Args, S3Credentials};
use platform::testing::{DedicatedBroker, TcpProxy, amqp_uri};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tests::stack::{Stack, StackOptions};
use tokio::time::Instant;

/// What every scenario runs with.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The repository (for `.run/logs` and `.venv`).
    pub repo: PathBuf,
    /// The load.
    pub load: LoadConfig,
    /// Concurrent submitters.
    pub submitters: usize,
    /// Load before the fault.
    pub warmup: Duration,
    /// How long a fault is held (scenarios may need longer).
    pub fault: Duration,
    /// Load after the heal.
    pub after: Duration,
    /// After the load: how long packages under way may still take.
    pub drain: Duration,
    /// Blobs read back and hashed per scenario.
    pub verify_blobs: usize,
    /// `network-delay`: the one-way delay below the call deadlines.
    pub delay: DelaySpec,
    /// `network-delay`: a second phase whose delay makes a submission's
    /// round trips exceed the call deadline (`None`: skipped).
    pub deadline_delay: Option<DelaySpec>,
}

/// One scenario.
pub struct Scenario {
    pub name: &'static str,
    /// Part of `--short` (CI).
    pub short: bool,
    /// What is injected, for the report.
    pub injected: &'static str,
    /// What should happen, for the report.
    pub expected: &'static str,
    pub run: for<'a> fn(&'a Ctx) -> BoxFuture<'a, anyhow::Result<Verdict>>,
}

/// Every scenario, in the order `all` runs them.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "ingest-kill",
            short: true,
            injected: "two ingest instances; one killed with SIGKILL mid-load (after 2 s of as much load as the submitters can send); a replacement started, then the survivor killed the same way",
            expected: "unacknowledged deliveries of the killed instance are redelivered to the other; no error, no loss",
            run: |c| ingest_kill(c).boxed(),
        },
        Scenario {
            name: "new-days",
            short: true,
            injected: "no outside fault: the load itself, raised to 4x its rate for the fault time, with every 4 consecutive packages reporting a day that has no partition yet (`--record-days`), so first writes to new days race each other and the other writes",
            expected: "every package 201 (never a 500: the partition race of issue 14); one partition per new day; stored once",
            run: |c| new_days(c).boxed(),
        },
        Scenario {
            name: "broker-restart",
            short: false,
            injected: "a private RabbitMQ node: `rabbitmqctl stop_app` mid-load, `start_app` after the fault time",
            expected: "503 (disconnected / no route) while it is down, clients resend the same bytes; all stored once",
            run: |c| broker_restart(c).boxed(),
        },
        Scenario {
            name: "broker-cluster",
            short: false,
            injected: "a private 3-node RabbitMQ cluster (quorum queues on all three); the node leading ingest's queue killed with SIGKILL, restarted after the fault time",
            expected: "a new leader is elected, services go on through the other two nodes; retries only for calls on the dead node",
            run: |c| broker_cluster(c).boxed(),
        },
        Scenario {
            name: "broker-cut",
            short: true,
            injected: "services reach the shared broker through a TCP proxy; every connection cut and new ones refused, then restored",
            expected: "503 while cut; links reconnect with backoff; no loss, no duplicate",
            run: |c| broker_cut(c).boxed(),
        },
        Scenario {
            name: "broker-stall",
            short: false,
            injected: "the same proxy stalls instead (a black hole: no byte moves, new connections hang) for longer than two heartbeats, then flows again",
            expected: "504/503 while stalled; heartbeats detect the dead links; reconnects that time out leave no socket behind",
            run: |c| broker_stall(c).boxed(),
        },
        Scenario {
            name: "network-delay",
            short: true,
            injected: "services reach the shared broker through a proxy that delays every chunk each way (`--delay-ms` ± `--delay-jitter-ms`, default 200 ± 100 ms, order kept) for the fault time; in the full form, 5 s later, 2 s ± 100 ms each way for 15 s (`--deadline-delay-ms`: a submission's round trips with its key lookup exceed the 10 s call deadline)",
            expected: "no error, no loss, no duplicate under the delay below the deadlines; latency rises by the delay times the one-way passes of a call; above the deadline 504 deadline_exceeded, and resends succeed once the delay is gone, each stored once",
            run: |c| network_delay(c).boxed(),
        },
        Scenario {
            name: "postgres-restart",
            short: false,
            injected: "ingest's database on a private PostgreSQL: `pg_ctl stop -m immediate` mid-load, started again (crash recovery) after the fault time",
            expected: "503 unavailable while down; the pool reconnects; committed rows survive recovery",
            run: |c| postgres_restart(c).boxed(),
        },
        Scenario {
            name: "s3-restart",
            short: true,
            injected: "ingest's bucket on a private s3s-fs: killed with SIGKILL mid-load, restarted on the same port and folder after the fault time",
            expected: "503 unavailable with Retry-After while down; no row is committed without its blob",
            run: |c| s3_restart(c).boxed(),
        },
        Scenario {
            name: "vault-seal",
            short: true,
            injected: "a private OpenBao; ingest's database login leased from it (short TTL); sealed mid-load for longer than the lease, then unsealed",
            expected: "served from memory until the lease ends, then 503 secrets_expired; a fresh lease after the unseal and recovery without a restart",
            run: |c| vault_seal(c).boxed(),
        },
    ]
}

// --- common machinery -----------------------------------------------------------------

/// The shared servers' S3 key pair.
fn s3_keys() -> (String, String) {
    let (_, key, secret) = tests::stack::s3_settings();
    (key, secret)
}

/// An evidence store for `bucket` on `endpoint`, for the checker.
fn store_at(endpoint: &str, bucket: &str) -> EvidenceStore {
    let (key, secret) = s3_keys();
    EvidenceStore::new(
        &S3Args {
            s3_endpoint: endpoint.to_owned(),
            s3_region: "us-east-1".into(),
            s3_bucket: bucket.to_owned(),
            s3_timeout_ms: 30_000,
        },
        &S3Credentials {
            access_key_id: key,
            secret_access_key: secret.into(),
        },
    )
}

fn log_dir(ctx: &Ctx, name: &str) -> PathBuf {
    ctx.repo.join(".run/logs/chaos").join(name)
}

/// Starts the platform for scenario `name` (logs in `.run/logs/chaos/<name>/`),
/// with the production key cache (the tests' 0 asks the registry for every
/// package).
pub async fn start_stack(
    ctx: &Ctx,
    name: &str,
    mut options: StackOptions,
) -> anyhow::Result<Stack> {
    options.log_dir = Some(log_dir(ctx, name));
    options
        .ingest_env
        .insert(0, ("TALLYHOUSE_KEY_CACHE_TTL_MS", "2000".into()));
    eprintln!(
        "chaos {name}: starting the platform (logs in {})",
        log_dir(ctx, name).display()
    );
    // Stack::start panics on failure: keep that inside this scenario.
    let started = tokio::spawn(Stack::start(options)).await;
    started.map_err(|e| anyhow::anyhow!("the platform did not start: {e}"))
}

/// Registers `n` submitters with fresh keys.
async fn submitters(stack: &Stack, n: usize) -> Arc<Vec<Submitter>> {
    let mut all = Vec::with_capacity(n);
    for i in 1..=n {
        let id = format!("chaos-{i:02}");
        let (key, key_id) = stack.submitter_with_key(&id).await;
        all.push(Submitter {
            id: rpc_contracts::SubmitterId::parse(id).expect("a valid submitter id"),
            key,
            key_id,
        });
    }
    Arc::new(all)
}

/// Waits until the ops endpoint at `addr` answers `/ready` with 200.
async fn wait_ready(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + within;
    let http = reqwest::Client::new();
    loop {
        if let Ok(r) = http.get(format!("http://{addr}/ready")).send().await
            && r.status() == 200
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < until, "{addr} not ready after {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One run of the load through a fault.
pub struct Run {
    history: Arc<History>,
    load: Load,
    timeline: Timeline,
    extra: serde_json::Map<String, serde_json::Value>,
    name: &'static str,
}

impl Run {
    /// Starts the load against `stack`'s gateway.
    pub async fn start(ctx: &Ctx, name: &'static str, stack: &Stack) -> anyhow::Result<Self> {
        let subs = submitters(stack, ctx.submitters).await;
        let history = History::new();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(ctx.submitters * 2)
            .build()?;
        let seed = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into()?) >> 8;
        let load = Load::start(
            ctx.load.clone(),
            http,
            format!("{}/v1/packages", stack.base_url),
            subs,
            history.clone(),
            seed,
        );
        eprintln!(
            "chaos {name}: load started: {} packages/s from {} submitters, {} records each",
            ctx.load.rate, ctx.submitters, ctx.load.records
        );
        Ok(Self {
            history,
            load,
            timeline: Timeline::default(),
            extra: serde_json::Map::new(),
            name,
        })
    }

    /// The history so far.
    pub fn history(&self) -> &Arc<History> {
        &self.history
    }

    /// Changes the offered rate.
    pub fn set_rate(&self, rate: f64) {
        self.load.set_rate(rate);
    }

    /// Sleeps until `t` after the start of the load.
    pub async fn until(&self, t: Duration) {
        tokio::time::sleep_until(self.history.t0() + t).await;
    }

    /// Now, from the start of the load.
    pub fn now(&self) -> Duration {
        self.history.now()
    }

    /// Marks the injection (now).
    pub fn injected(&mut self, what: &str) {
        self.timeline.inject = Some(self.now());
        eprintln!(
            "chaos {}: {:>6.1} s: injected: {what}",
            self.name,
            self.now().as_secs_f64()
        );
    }

    /// Marks the heal (now).
    pub fn healed(&mut self, what: &str) {
        self.timeline.heal = Some(self.now());
        eprintln!(
            "chaos {}: {:>6.1} s: healed: {what}",
            self.name,
            self.now().as_secs_f64()
        );
    }

    /// Notes an event (time in the figures).
    pub fn event(&mut self, key: &str, what: &str) {
        eprintln!(
            "chaos {}: {:>6.1} s: {what}",
            self.name,
            self.now().as_secs_f64()
        );
        self.extra
            .insert(format!("{key}_at_ms"), json!(self.now().as_millis() as u64));
    }

    /// Adds a figure to the verdict.
    pub fn figure(&mut self, key: &str, value: serde_json::Value) {
        self.extra.insert(key.to_owned(), value);
    }

    /// Runs the load to `end`, stops new packages, drains, and checks.
    pub async fn finish(
        mut self,
        ctx: &Ctx,
        end: Duration,
        db_url: &str,
        blobs: &EvidenceStore,
    ) -> anyhow::Result<Verdict> {
        self.until(end).await;
        self.timeline.load_end = self.now();
        let sent = self.history.snapshot().len();
        eprintln!(
            "chaos {}: {:>6.1} s: load stopped ({sent} packages); draining",
            self.name,
            self.now().as_secs_f64()
        );
        self.load.finish(ctx.drain).await;
        eprintln!("chaos {}: checking PostgreSQL and S3", self.name);
        let mut v = check(
            &self.history,
            self.timeline,
            db_url,
            blobs,
            ctx.verify_blobs,
        )
        .await?;
        for (k, x) in self.extra {
            v.extra.insert(k, x);
        }
        if let Some(t) = self.timeline.inject {
            v.extra
                .insert("inject_at_ms".into(), json!(t.as_millis() as u64));
        }
        if let Some(t) = self.timeline.heal {
            v.extra
                .insert("heal_at_ms".into(), json!(t.as_millis() as u64));
        }
        v.extra
            .insert("load_secs".into(), json!(self.timeline.load_end.as_secs()));
        Ok(v)
    }
}

/// Stops the stack and removes what it made on the shared servers (the
/// bucket on the shared S3, when `shared_bucket`).
pub async fn stop_stack(stack: Stack, shared_bucket: bool) {
    if shared_bucket && let Err(e) = stack.remove_bucket().await {
        eprintln!("chaos: cannot delete bucket {}: {e}", stack.bucket);
    }
    stack.finish().await;
}

/// Times of the default timeline.
fn times(ctx: &Ctx, fault: Duration) -> (Duration, Duration, Duration) {
    let inject = ctx.warmup;
    let heal = inject + fault;
    (inject, heal, heal + ctx.after)
}

/// Runs a blocking call (a server's scripts) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

// --- the scenarios -----------------------------------------------------------------------

async fn ingest_kill(ctx: &Ctx) -> anyhow::Result<Verdict> {
    let mut stack = start_stack(ctx, "ingest-kill", StackOptions::default()).await?;
    let outcome = async {
        let second = stack.spawn_ingest("ingest-b", &[]);
        wait_ready(second, Duration::from_secs(60)).await?;
        let mut run = Run::start(ctx, "ingest-kill", &stack).await?;
        let (inject, heal, end) = times(ctx, ctx.fault);
        // Each kill comes after two seconds of as much load as the
        // submitters can send, so that the victim holds deliveries.
        let burst = ctx.load.rate * 10.0;
        run.until(inject.saturating_sub(Duration::from_secs(2)))
            .await;
        run.set_rate(burst);
        run.until(inject).await;
        stack.process("ingest").kill();
        let first_kill = run.now();
        run.injected("ingest killed (SIGKILL) under a burst; ingest-b takes over");
        // The survivor is the healing: recovery is measured from the kill.
        run.healed("ingest-b alone");
        tokio::time::sleep(Duration::from_secs(1)).await;
        run.set_rate(ctx.load.rate);
        run.until(heal).await;
        let third = stack.spawn_ingest("ingest-c", &[]);
        wait_ready(third, Duration::from_secs(60)).await?;
        run.event("replacement_ready", "replacement ingest-c ready");
        run.set_rate(burst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        stack.process("ingest-b").kill();
        let second_kill = run.now();
        run.event(
            "second_kill",
            "ingest-b killed (SIGKILL) under a burst; ingest-c alone",
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        run.set_rate(ctx.load.rate);
        let end = end.max(run.now() + ctx.after);
        // What the clients had under way at each kill (the victim held a
        // share of it).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let history = run.history().clone();
        let mut v = run
            .finish(ctx, end, &stack.ingest_db_url, &stack.evidence)
            .await?;
        v.extra.insert(
            "in_flight_at_kills".into(),
            json!([
                history.in_flight_at(first_kill),
                history.in_flight_at(second_kill)
            ]),
        );
        Ok(v)
    }
    .await;
    stop_stack(stack, true).await;
    outcome
}

/// The number of daily partitions of `records`.
async fn partitions(stack: &Stack) -> i64 {
    stack
        .query("SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'records'::regclass")
        .await[0]["n"]
        .as_i64()
        .unwrap_or(0)
}

async fn new_days(ctx: &Ctx) -> anyhow::Result<Verdict> {
    let stack = start_stack(ctx, "new-days", StackOptions::default()).await?;
    let outcome = async {
        let before = partitions(&stack).await;
        let mut run = Run::start(ctx, "new-days", &stack).await?;
        let (inject, heal, end) = times(ctx, ctx.fault);
        run.until(inject).await;
        run.set_rate(ctx.load.rate * 4.0);
        run.injected("rate x4; every 4 packages on a day with no partition yet");
        run.until(heal).await;
        run.set_rate(ctx.load.rate);
        run.healed("rate back to normal");
        let mut v = run
            .finish(ctx, end, &stack.ingest_db_url, &stack.evidence)
            .await?;
        let created = partitions(&stack).await - before;
        v.extra.insert("partitions_created".into(), json!(created));
        if ctx.load.record_days > 0 && created < 2 {
            v.fail(format!(
                "only {created} partitions created: the load did not reach new days"
            ));
        }
        Ok(v)
    }
    .await;
    stop_stack(stack, true).await;
    outcome
}

async fn broker_restart(ctx: &Ctx) -> anyhow::Result<Verdict> {
    eprintln!("chaos broker-restart: starting a private RabbitMQ node (~15 s)");
    let broker = Arc::new(blocking(DedicatedBroker::start).await?);
    let stack = start_stack(
        ctx,
        "broker-restart",
        StackOptions {
            amqp_uris: vec![broker.uri()],
            ..StackOptions::default()
        },
    )
    .await?;
    let outcome = async {
        let mut run = Run::start(ctx, "broker-restart", &stack).await?;
        let (inject, heal, end) = times(ctx, ctx.fault);
        run.until(inject).await;
        let b = broker.clone();
        blocking(move || b.stop_app()).await?;
        run.injected("rabbitmqctl stop_app");
        run.until(heal).await;
        let b = broker.clone();
        blocking(move || b.start_app()).await?;
        run.healed("rabbitmqctl start_app (serving again)");
        run.finish(ctx, end, &stack.ingest_db_url, &stack.evidence)
            .await
    }
    .await;
    stop_stack(stack, true).await;
    drop(broker);
    outcome
}

/// `(leader node, members)` of `queue` as the cluster reports it.
fn queue_leader(node: &DedicatedBroker, queue: &str) -> anyhow::Result<(String, String)> {
    let out = node.ctl(&[
        "list_queues",
        "name",
        "leader",
        "members",
        "--no-table-headers",
        "--quiet",
    ])?;
    for line in out.lines() {
        let mut cols = line.split('\t');
        if cols.next() == Some(queue) {
            let leader = cols.next().unwrap_or_default().trim().to_owned();
            let members = cols.next().unwrap_or_default().trim().to_owned();
            return Ok((leader, members));
        }
    }
    anyhow::bail!("queue {queue} not listed by {}: {out}", node.node_name())
}

async fn broker_cluster(ctx: &Ctx) -> anyhow::Result<Verdict> {
    eprintln!("chaos broker-cluster: starting a private 3-node RabbitMQ cluster (~1 min)");
    let nodes = Arc::new(blocking(|| DedicatedBroker::start_cluster(3)).await?);
    let stack = start_stack(
        ctx,
        "broker-cluster",
        StackOptions {
            amqp_uris: nodes.iter().map(DedicatedBroker::uri).collect(),
            ..StackOptions::default()
        },
    )
    .await?;
    let outcome = async {
        let queue = stack.topology.queue(rpc_contracts::ingest::QUEUE);
        let mut run = Run::start(ctx, "broker-cluster", &stack).await?;
        let (inject, heal, end) = times(ctx, ctx.fault);
        let (leader, members) = {
            let (n, q) = (nodes.clone(), queue.clone());
            blocking(move || queue_leader(&n[0], &q)).await?
        };
        let victim = nodes
            .iter()
            .position(|n| n.node_name() == leader)
            .ok_or_else(|| anyhow::anyhow!("the leader {leader:?} is none of our nodes"))?;
        run.figure("queue_members", json!(members));
        run.figure("leader_before", json!(leader));
        run.until(inject).await;
        nodes[victim].kill()?;
        run.injected(&format!("leader {leader} killed (SIGKILL)"));
        run.healed("the two other nodes carry on");
        // The new leader, as a surviving node sees it.
        let survivor = (victim + 1) % nodes.len();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let (n, q) = (nodes.clone(), queue.clone());
            if let Ok((l, _)) = blocking(move || queue_leader(&n[survivor], &q)).await
                && l != leader
                && !l.is_empty()
            {
                run.event("new_leader", &format!("new leader {l}"));
                run.figure("leader_after", json!(l));
                break;
            }
            if Instant::now() > until {
                run.figure("leader_after", json!(null));
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        run.until(heal).await;
        let n = nodes.clone();
        blocking(move || n[victim].restart()).await?;
        run.event("restarted", "killed node restarted and rejoined");
        let end = end.max(run.now() + ctx.after);
        run.finish(ctx, end, &stack.ingest_db_url, &stack.evidence)
            .await
    }
    .await;
    stop_stack(stack, true).await;
    drop(nodes);
    outcome
}

fn shared_broker_addr() -> anyhow::Result<SocketAddr> {
    let hp = amqp_uri().host_port();
    hp.replace("localhost", "127.0.0.1")
        .parse()
        .map_err(|e| anyhow::anyhow!("broker address {hp}: {e}"))
}

async fn broker_cut(ctx: &Ctx) -> anyhow::Result<Verdict> {
    let proxy = TcpProxy::start(shared_broker_addr()?).await?;
    let stack = start_stack(
        ctx,
        "broker-cut",
        StackOptions {
            service_amqp_uris: vec![proxy.uri("guest", "guest")],
            ..StackOptions::default()
        },
    )
    .await?;
    let outcome = async {
        let mut run = Run::start(ctx, "broker-cut", &stack).await?;
        let (inject, heal, end) = times(ctx, ctx.fault);
        run.until(inject).await;
        proxy.cut();
        run.injected("every service connection to the broker cut, new ones refused");
        run.until(heal).await;
        proxy.restore();
        run.healed("connections accepted again");
        run.finish(ctx, end, &stack.ingest_db_url, &stack.evidence)
            .await
    }
    .await;
    stop_stack(stack, true).await;
    outcome
}

/// What the services hold: open descriptors, threads, sockets to the
/// broker's `port` (summed), and the details of each.
struct Held {
    fds: u64,
    threads: u64,
    amqp_sockets: u64,
    each: serde_json::Value,
}

fn service_totals(stack: &mut Stack, port: u16) -> Held {
    let mut held = Held {
        fds: 0,
        threads: 0,
        amqp_sockets: 0,
        each: json!({}),
    };
    for name in stack.process_names() {
        let pid = stack.process(&name).id();
        if let Some(s) = proc_stats(pid) {
            let amqp = sockets_to(pid, port);
            held.fds += s.fds;
            held.threads += s.threads;
            held.amqp_sockets += amqp;
            held.each[name] = json!({ "fds": s.fds, "amqp_sockets": amqp, "kinds": fd_kinds(pid) });
        }
    }
    held
}

async fn broker_stall(ctx: &Ctx) -> anyhow::Result<Verdict> {
    let proxy = StallProxy::start(shared_broker_addr()?).await?;
    let via = BrokerUri::parse(&format!("amqp://guest:guest@{}/%2f", proxy.addr()))
        .map_err(anyhow::Error::msg)?;
    let mut stack = start_stack(
        ctx,
        "broker-stall",
        StackOptions {
            service_amqp_uris: vec![via],
            ..StackOptions::default()
        },
    )
    .await?;
    let outcome = async {
        let mut run = Run::start(ctx, "broker-stall", &stack).await?;
        // Two heartbeats (10 s each) and then some: the links must notice.
        // Two outages in a row: what the first one leaves behind may be
        // set-up done once; what grows again with the second is a leak.
        let fault = ctx.fault.max(Duration::from_secs(30));
        let gap = Duration::from_secs(10);
        let inject = ctx.warmup;
        let port = proxy.addr().port();
        let mut figures = Vec::new();
        let mut t = inject;
        let mut settled = vec![(service_totals(&mut stack, port), proxy.live())];
        let accepted0 = proxy.accepted();
        for cycle in 1..=2 {
            run.until(t).await;
            proxy.stall();
            if cycle == 1 {
                run.injected("every byte between the services and the broker stopped");
            } else {
                run.event("second_stall", "stalled again");
            }
            t += fault;
            run.until(t).await;
            let stalled = (service_totals(&mut stack, port), proxy.live());
            proxy.restore();
            if cycle == 2 {
                run.healed("bytes flow again");
            } else {
                run.event("first_restore", "bytes flow again (first outage over)");
            }
            t += gap;
            run.until(t).await;
            let after = (service_totals(&mut stack, port), proxy.live());
            let show = |(h, live): &(Held, usize)| {
                json!({ "fds": h.fds, "threads": h.threads, "amqp_sockets": h.amqp_sockets,
                        "broker_connections": live, "each": h.each })
            };
            figures.push(json!({ "cycle": cycle, "stalled": show(&stalled), "after": show(&after) }));
            settled.push(after);
        }
        let end = t + ctx.after;
        let mut v = run.finish(ctx, end, &stack.ingest_db_url, &stack.evidence).await?;
        // Once more after the load, everything idle.
        tokio::time::sleep(Duration::from_secs(5)).await;
        settled.push((service_totals(&mut stack, port), proxy.live()));
        let (h0, live0) = &settled[0];
        let (h3, live3) = &settled[3];
        v.extra.insert(
            "before".into(),
            json!({ "fds": h0.fds, "threads": h0.threads, "amqp_sockets": h0.amqp_sockets,
                    "broker_connections": live0, "each": h0.each }),
        );
        v.extra.insert(
            "idle_after".into(),
            json!({ "fds": h3.fds, "threads": h3.threads, "amqp_sockets": h3.amqp_sockets,
                    "broker_connections": live3, "each": h3.each }),
        );
        v.extra.insert("cycles".into(), json!(figures));
        v.extra.insert(
            "broker_connections_accepted".into(),
            json!(proxy.accepted() - accepted0),
        );
        let sockets: Vec<u64> = settled.iter().map(|(h, _)| h.amqp_sockets).collect();
        let live: Vec<usize> = settled.iter().map(|(_, l)| *l).collect();
        if sockets.iter().any(|n| *n > sockets[0]) || live.iter().any(|n| *n > live[0]) {
            v.fail(format!(
                "more broker connections after the stalls than before (services' sockets {sockets:?}, through the proxy {live:?}): a connection leak"
            ));
        }
        if h3.threads > h0.threads {
            v.notes.push(format!(
                "service threads {} before, {} idle after",
                h0.threads, h3.threads
            ));
        }
        Ok(v)
    }
    .await;
    stop_stack(stack, true).await;
    drop(proxy);
    outcome
}

/// Latency of the acknowledged attempts that started at or after `from`
/// and ended before `to`: how many, p50, p90 and max (ms).
struct Window {
    acks: usize,
    p50: Option<u64>,
    p90: Option<u64>,
    max: Option<u64>,
}

fn latency_within(acks: &[(Duration, Duration)], from: Duration, to: Duration) -> Window {
    let mut lat: Vec<u64> = acks
        .iter()
        .filter(|(ended, latency)| ended.saturating_sub(*latency) >= from && *ended < to)
        .map(|(_, l)| l.as_millis() as u64)
        .collect();
    lat.sort_unstable();
    let at = |q: f64| (!lat.is_empty()).then(|| lat[((lat.len() - 1) as f64 * q).round() as usize]);
    Window {
        acks: lat.len(),
        p50: at(0.5),
        p90: at(0.9),
        max: lat.last().copied(),
    }
}

impl Window {
    fn json(&self) -> serde_json::Value {
        json!({ "acks": self.acks, "p50_ms": self.p50, "p90_ms": self.p90, "max_ms": self.max })
    }
}

fn ms_of(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// `{min_ms, max_ms}` of a delay.
fn delay_json(d: &DelaySpec) -> serde_json::Value {
    json!({ "min_ms": ms_of(d.min), "max_ms": ms_of(d.max), "mean_ms": ms_of(d.mean()) })
}

/// The least number of times a submission's messages cross the proxy: the
/// request gateway → broker → ingest, the reply ingest → broker → gateway.
/// (A key lookup in the registry adds four more.)
const ONE_WAY_PASSES: u32 = 4;

async fn network_delay(ctx: &Ctx) -> anyhow::Result<Verdict> {
    let proxy = DelayProxy::start(shared_broker_addr()?).await?;
    let via = BrokerUri::parse(&format!("amqp://guest:guest@{}/%2f", proxy.addr()))
        .map_err(anyhow::Error::msg)?;
    let stack = start_stack(
        ctx,
        "network-delay",
        StackOptions {
            service_amqp_uris: vec![via],
            ..StackOptions::default()
        },
    )
    .await?;
    let outcome = async {
        let mut run = Run::start(ctx, "network-delay", &stack).await?;
        let below = ctx.delay;
        let (inject, below_end, _) = times(ctx, ctx.fault);
        run.figure("delay", delay_json(&below));
        run.until(inject).await;
        let (connections_before, accepted_before) = (proxy.live(), proxy.accepted());
        let s0 = proxy.stats();
        proxy.reset_max();
        proxy.set_delay(below);
        run.injected(&format!(
            "every chunk between the services and the broker delayed {}–{} ms each way",
            ms_of(below.min),
            ms_of(below.max)
        ));
        run.until(below_end).await;
        proxy.set_delay(DelaySpec::NONE);
        let mut above_window = None;
        if ctx.deadline_delay.is_some() {
            run.event("delay_removed", "delay removed (first phase over)");
        } else {
            run.healed("delay removed");
        }
        // What the first phase applied, per direction, once the chunks it
        // delayed have all been written.
        tokio::time::sleep(below.max + Duration::from_millis(50)).await;
        let below_applied = proxy.stats();
        let up = below_applied.up.since(&s0.up);
        let down = below_applied.down.since(&s0.down);
        let heal_at = if let Some(above) = ctx.deadline_delay {
            // Long enough for every submitter's attempt to meet the
            // deadline at least once.
            let from = below_end + Duration::from_secs(5);
            let to = from + ctx.fault.max(Duration::from_secs(15));
            run.until(from).await;
            let s1 = proxy.stats();
            proxy.reset_max();
            proxy.set_delay(above);
            run.event(
                "deadline_delay",
                &format!(
                    "delay raised to {}–{} ms each way (past the call deadline)",
                    ms_of(above.min),
                    ms_of(above.max)
                ),
            );
            run.figure("deadline_delay", delay_json(&above));
            run.until(to).await;
            proxy.set_delay(DelaySpec::NONE);
            run.healed("delay removed");
            tokio::time::sleep(above.max + Duration::from_millis(50)).await;
            let s2 = proxy.stats();
            run.figure(
                "deadline_delay_applied",
                json!({ "up": s2.up.since(&s1.up).json(), "down": s2.down.since(&s1.down).json() }),
            );
            above_window = Some((from, to));
            to
        } else {
            below_end
        };
        let end = heal_at + ctx.after;
        let history = run.history().clone();
        let mut v = run
            .finish(ctx, end, &stack.ingest_db_url, &stack.evidence)
            .await?;
        // The services' broker connections through the proxy: a delay is
        // no reason to reconnect.
        let reconnects = proxy.accepted() - accepted_before;
        v.extra.insert(
            "broker_connections".into(),
            json!({ "at_injection": connections_before, "at_end": proxy.live(),
                    "opened_since_injection": reconnects }),
        );
        if reconnects > 0 {
            v.notes.push(format!(
                "{reconnects} broker connections opened through the proxy after the injection (reconnects)"
            ));
        }

        // Latency before, under and after the delay below the deadlines.
        let acks = history.acks();
        let before = latency_within(&acks, inject / 2, inject);
        let during = latency_within(&acks, inject, below_end);
        let settle = Duration::from_secs(2);
        let after = latency_within(&acks, heal_at + settle, end);
        let (p50_before, p50_during) = (before.p50, during.p50);
        let mean_applied_ms = {
            let chunks = up.chunks + down.chunks;
            (chunks > 0)
                .then(|| (up.applied_us_sum + down.applied_us_sum) as f64 / chunks as f64 / 1000.0)
        };
        let rise = match (p50_before, p50_during) {
            (Some(b), Some(d)) => Some(d.saturating_sub(b)),
            _ => None,
        };
        v.extra.insert(
            "latency_by_phase".into(),
            json!({ "before": before.json(), "delayed": during.json(), "after": after.json() }),
        );
        v.extra.insert("latency_p50_rise_ms".into(), json!(rise));
        v.extra.insert(
            "delay_applied".into(),
            json!({ "up": up.json(), "down": down.json(),
                    "mean_ms": mean_applied_ms.map(|m| (m * 10.0).round() / 10.0) }),
        );
        if let (Some(r), Some(m)) = (rise, mean_applied_ms)
            && m > 0.0
        {
            v.extra.insert(
                "rise_in_one_way_delays".into(),
                json!((r as f64 / m * 10.0).round() / 10.0),
            );
        }

        // The delay was really applied: both directions carried delayed
        // chunks, and a submission under it cannot be faster than its
        // messages' passes through the proxy at the least delay.
        if up.chunks == 0 || down.chunks == 0 {
            v.fail(format!(
                "the proxy delayed {} chunks towards the broker and {} back: the delay was not applied both ways",
                up.chunks, down.chunks
            ));
        }
        let floor = ms_of(below.min * ONE_WAY_PASSES);
        match p50_during {
            None => v.fail("no submission started and was acknowledged under the delay"),
            Some(p) if p < floor => v.fail(format!(
                "p50 latency under the delay {p} ms is below {ONE_WAY_PASSES} × the least one-way delay ({floor} ms): the delay was not applied"
            )),
            Some(_) => {}
        }
        // No error except where the delay exceeded the deadline: a failed
        // attempt must overlap the second phase.
        let mut outside = BTreeMap::new();
        let mut during_above = BTreeMap::new();
        for s in history.snapshot() {
            for a in &s.attempts {
                if let Outcome::Failed { label, .. } = &a.outcome {
                    let overlaps = above_window.is_some_and(|(from, to)| a.started < to && a.ended > from);
                    let bucket = if overlaps { &mut during_above } else { &mut outside };
                    *bucket.entry(label.clone()).or_insert(0u64) += 1;
                }
            }
        }
        if !outside.is_empty() {
            v.fail(format!(
                "failed attempts while the delay stayed below the deadlines: {outside:?}"
            ));
        }
        if let Some((from, to)) = above_window {
            let above = latency_within(&acks, from, to);
            v.extra.insert(
                "deadline_phase".into(),
                json!({ "from_ms": ms_of(from), "to_ms": ms_of(to),
                        "errors": during_above, "latency": above.json() }),
            );
            if !during_above.keys().any(|k| k.starts_with("504")) {
                v.notes.push(
                    "no 504 while the delay exceeded the deadline (it was not exceeded after all)"
                        .into(),
                );
            }
        }
        Ok(v)
    }
    .await;
    stop_stack(stack, true).await;
    drop(proxy);
    outcome
}

async fn postgres_restart(ctx: &Ctx) -> anyhow::Result<Verdict> {
    eprintln!("chaos postgres-restart: starting a private PostgreSQL (initdb)");
    let pg = Arc::new(blocking(PrivatePostgres::start).await?);
    let stack = start_stack(
        ctx,
        "postgres-restart",
        StackOptions {
            ingest_database_server: Some(pg.url()),
            ..StackOptions::default()
        },
    )
    .await?;
    let outcome = async {
        let mut run = Run::start(ctx, "postgres-restart", &stack).await?;
        let (inject, heal, end) = times(ctx, ctx.fault);
        run.until(inject).await;
        let p = pg.clone();
        blocking(move || p.stop_immediate()).await?;
        run.injected("pg_ctl stop -m immediate");
        run.until(heal).await;
        let p = pg.clone();
        blocking(move || p.restart()).await?;
        run.healed("PostgreSQL started again (crash recovery done)");
        run.finish(ctx, end, &stack.ingest_db_url, &stack.evidence)
            .await
    }
    .await;
    stop_stack(stack, true).await;
    drop(pg);
    outcome
}

async fn s3_restart(ctx: &Ctx) -> anyhow::Result<Verdict> {
    let (key, secret) = s3_keys();
    let mut s3 = PrivateS3::start(&key, &secret, &log_dir(ctx, "s3-restart")).await?;
    let stack = start_stack(
        ctx,
        "s3-restart",
        StackOptions {
            s3_endpoint: Some(s3.endpoint()),
            ..StackOptions::default()
        },
    )
    .await?;
    let blobs = store_at(&s3.endpoint(), &stack.bucket);
    let outcome = async {
        let mut run = Run::start(ctx, "s3-restart", &stack).await?;
        let (inject, heal, end) = times(ctx, ctx.fault);
        run.until(inject).await;
        s3.kill();
        run.injected("s3s-fs killed (SIGKILL)");
        run.until(heal).await;
        s3.restart().await?;
        run.healed("s3s-fs restarted on the same port and folder");
        run.finish(ctx, end, &stack.ingest_db_url, &blobs).await
    }
    .await;
    stop_stack(stack, false).await;
    drop(s3);
    outcome
}

async fn vault_seal(ctx: &Ctx) -> anyhow::Result<Verdict> {
    let bao = PrivateBao::start(&ctx.repo).await?;
    let mut stack = start_stack(
        ctx,
        "vault-seal",
        StackOptions {
            vault: Some((bao.addr.clone(), bao.root.clone())),
            ..StackOptions::default()
        },
    )
    .await?;
    // Ingest's database login leased from the private OpenBao with a short
    // TTL, so that sealing it makes the lease run out mid-fault.
    let ttl_secs = (ctx.fault.as_secs() / 2).clamp(4, 10);
    let mount = format!(
        "chaos-db-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let outcome = async {
        bao.database_engine(
            &mount,
            &platform::testing::database_admin_url(),
            stack.service_role(),
            &format!("{ttl_secs}s"),
        )
        .await?;
        let leased = stack.spawn_ingest(
            "ingest-leased",
            &[
                ("TALLYHOUSE_DATABASE_VAULT_MOUNT", mount.clone()),
                ("TALLYHOUSE_DATABASE_VAULT_ROLE", "svc".into()),
            ],
        );
        wait_ready(leased, Duration::from_secs(60)).await?;
        // Only the instance with the leased login consumes from now on.
        stack.process("ingest").kill();
        let mut run = Run::start(ctx, "vault-seal", &stack).await?;
        run.figure("lease_ttl_secs", json!(ttl_secs));
        // Sealed for the lease and then as long again.
        let fault = ctx.fault.max(Duration::from_secs(2 * ttl_secs + 4));
        let (inject, heal, end) = times(ctx, fault);
        run.until(inject).await;
        bao.seal().await?;
        run.injected("OpenBao sealed");
        run.until(heal).await;
        bao.unseal().await?;
        run.healed("OpenBao unsealed");
        run.finish(ctx, end, &stack.ingest_db_url, &stack.evidence)
            .await
    }
    .await;
    stop_stack(stack, true).await;
    // Drops the leased logins it made on the shared PostgreSQL.
    if let Err(e) = bao.revoke_prefix(&mount).await {
        eprintln!("chaos vault-seal: revoking the leases under {mount}: {e}");
    }
    drop(bao);
    outcome
}
