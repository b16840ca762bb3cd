//! The load generator: N submitters, each sending distinct signed packages
//! (`evidence::generate`) at a shared, paced rate, resending the SAME bytes
//! after a timeout, a connection error or a 5xx (honouring `Retry-After`, up
//! to a bound) until the package is acknowledged (201 or 200) or its
//! give-up deadline passes; and the history of every attempt, which the
//! checker later compares with what was stored.

use base64::Engine as _;
use evidence::SigningKey;
use evidence::generate::{PackageSpec, generate_package};
use rpc_contracts::{KeyId, SubmitterId};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A registered submitter with its signing key.
pub struct Submitter {
    /// Its id.
    pub id: SubmitterId,
    /// Its registered key.
    pub key: SigningKey,
    /// The key's id (`Tallyhouse-Key-Id`).
    pub key_id: KeyId,
}

/// How the load is shaped.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Packages per second offered, all submitters together (new packages;
    /// retries come on top, from the submitter whose package it is).
    pub rate: f64,
    /// Records per package.
    pub records: usize,
    /// Record times are spread over this many days before today: a
    /// package's records fall within one hour of one day, and every few
    /// packages move to a day no earlier package used, so partitions for
    /// never-seen days are created all through the run, concurrently and
    /// under the fault (0: every package reports the hour before now).
    pub record_days: u32,
    /// Bound on one HTTP attempt.
    pub attempt_timeout: Duration,
    /// A `Retry-After` longer than this is shortened to it.
    pub retry_after_cap: Duration,
    /// A package still not acknowledged this long after its first attempt
    /// is given up (counted, never silently dropped).
    pub give_up_after: Duration,
}

/// What one HTTP attempt ended with.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 201 (stored now) or 200 (stored before: the same bytes again).
    Stored(u16),
    /// Anything else: a label such as `503 unavailable`, `timeout`,
    /// `connect`; `retry` when the client resends.
    Failed { label: String, retry: bool },
}

/// One attempt, times from the start of the run.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub started: Duration,
    pub ended: Duration,
    pub outcome: Outcome,
}

/// One package's history.
#[derive(Debug, Clone)]
pub struct Sent {
    pub submitter_id: String,
    pub package_id: uuid::Uuid,
    pub sha256_hex: String,
    pub records: usize,
    pub attempts: Vec<Attempt>,
    /// Whether an attempt got 201 or 200.
    pub acked: bool,
    /// Given up (deadline) or refused for good (4xx) without an ack.
    pub gave_up: bool,
}

/// Every package sent and every attempt, in order of first attempt.
pub struct History {
    t0: Instant,
    sent: Mutex<Vec<Sent>>,
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            t0: Instant::now(),
            sent: Mutex::new(Vec::new()),
        })
    }

    /// Time since the start of the run.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// The run's start.
    pub fn t0(&self) -> Instant {
        self.t0
    }

    fn begin(&self, sent: Sent) -> usize {
        let mut all = self.sent.lock().expect("history lock");
        all.push(sent);
        all.len() - 1
    }

    fn record(&self, i: usize, attempt: Attempt) {
        let mut all = self.sent.lock().expect("history lock");
        let s = &mut all[i];
        if matches!(attempt.outcome, Outcome::Stored(_)) {
            s.acked = true;
        }
        s.attempts.push(attempt);
    }

    fn give_up(&self, i: usize) {
        self.sent.lock().expect("history lock")[i].gave_up = true;
    }

    /// A copy of everything so far.
    pub fn snapshot(&self) -> Vec<Sent> {
        self.sent.lock().expect("history lock").clone()
    }

    /// Packages not finished yet (neither acknowledged nor given up).
    pub fn outstanding(&self) -> usize {
        self.sent
            .lock()
            .expect("history lock")
            .iter()
            .filter(|s| !s.acked && !s.gave_up)
            .count()
    }

    /// (attempt end, latency) of every acknowledged attempt, by end time.
    pub fn acks(&self) -> Vec<(Duration, Duration)> {
        let mut acks: Vec<(Duration, Duration)> = self
            .sent
            .lock()
            .expect("history lock")
            .iter()
            .flat_map(|s| s.attempts.iter())
            .filter(|a| matches!(a.outcome, Outcome::Stored(_)))
            .map(|a| (a.ended, a.ended.saturating_sub(a.started)))
            .collect();
        acks.sort();
        acks
    }

    /// Attempts under way at `t` (started before, ended after).
    pub fn in_flight_at(&self, t: Duration) -> u64 {
        self.sent
            .lock()
            .expect("history lock")
            .iter()
            .flat_map(|s| s.attempts.iter())
            .filter(|a| a.started <= t && a.ended > t)
            .count() as u64
    }

    /// Failed attempts that ended in `[from, to)`.
    pub fn failures_between(&self, from: Duration, to: Duration) -> u64 {
        self.sent
            .lock()
            .expect("history lock")
            .iter()
            .flat_map(|s| s.attempts.iter())
            .filter(|a| {
                matches!(a.outcome, Outcome::Failed { .. }) && a.ended >= from && a.ended < to
            })
            .count() as u64
    }

    /// Failed attempts by label.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        let mut errors = BTreeMap::new();
        for s in self.sent.lock().expect("history lock").iter() {
            for a in &s.attempts {
                if let Outcome::Failed { label, .. } = &a.outcome {
                    *errors.entry(label.clone()).or_insert(0) += 1;
                }
            }
        }
        errors
    }
}

/// How far before now the records of package `seed` end: packages come
/// in groups of [`PACKAGES_PER_DAY`] consecutive seeds (sent at nearly the
/// same time, so they race for the same new day), each group a day further
/// back, cycling through `days` days. `days` = 0: now.
pub fn report_day(seed: u64, days: u32) -> time::Duration {
    if days == 0 {
        return time::Duration::ZERO;
    }
    let day = (seed / PACKAGES_PER_DAY) % u64::from(days);
    time::Duration::days(day as i64)
}

/// Consecutive packages that report the same day.
pub const PACKAGES_PER_DAY: u64 = 4;

/// Spaces new packages `1/rate` apart across all submitters: one submitter
/// at a time waits for the next slot (the others queue behind it, so no
/// slot is reserved far ahead); a slot missed (everyone busy retrying) is
/// skipped, not made up later in a burst.
struct Pacer {
    period_ns: AtomicU64,
    next: tokio::sync::Mutex<Instant>,
}

fn period_ns(rate: f64) -> u64 {
    (1e9 / rate.max(0.001)) as u64
}

impl Pacer {
    fn new(rate: f64) -> Self {
        Self {
            period_ns: AtomicU64::new(period_ns(rate)),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let mut next = self.next.lock().await;
        let slot = (*next).max(Instant::now());
        tokio::time::sleep_until(slot).await;
        *next = slot + Duration::from_nanos(self.period_ns.load(Ordering::Relaxed));
    }

    fn set_rate(&self, rate: f64) {
        self.period_ns.store(period_ns(rate), Ordering::Relaxed);
    }
}

/// A running load.
pub struct Load {
    stop_new: CancellationToken,
    stop_all: CancellationToken,
    pacer: Arc<Pacer>,
    tasks: JoinSet<()>,
    history: Arc<History>,
}

/// A small, fast pseudo-random generator for jitter (not for anything
/// secret).
fn jitter(bound: Duration) -> Duration {
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    bound.mul_f64((x % 1_000_000) as f64 / 1_000_000.0)
}

impl Load {
    /// Starts one task per submitter POSTing to `url` (the gateway's
    /// `/v1/packages`), recording into `history`.
    pub fn start(
        config: LoadConfig,
        http: reqwest::Client,
        url: String,
        submitters: Arc<Vec<Submitter>>,
        history: Arc<History>,
        first_seed: u64,
    ) -> Self {
        let stop_new = CancellationToken::new();
        let stop_all = CancellationToken::new();
        let pacer = Arc::new(Pacer::new(config.rate));
        let seeds = Arc::new(AtomicU64::new(first_seed));
        let url = Arc::new(url);
        let mut tasks = JoinSet::new();
        for i in 0..submitters.len() {
            let worker = Worker {
                config: config.clone(),
                http: http.clone(),
                url: url.clone(),
                submitters: submitters.clone(),
                index: i,
                history: history.clone(),
                pacer: pacer.clone(),
                seeds: seeds.clone(),
                stop_new: stop_new.clone(),
                stop_all: stop_all.clone(),
            };
            tasks.spawn(worker.run());
        }
        Self {
            stop_new,
            stop_all,
            pacer,
            tasks,
            history,
        }
    }

    /// Changes the offered rate from now on.
    pub fn set_rate(&self, rate: f64) {
        self.pacer.set_rate(rate);
    }

    /// Stops new packages and waits up to `drain` for the packages under way
    /// to finish; then stops retrying (what is still unacknowledged is
    /// given up) and waits for the last attempts to end.
    pub async fn finish(mut self, drain: Duration) {
        self.stop_new.cancel();
        let until = Instant::now() + drain;
        while self.history.outstanding() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop_all.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

struct Worker {
    config: LoadConfig,
    http: reqwest::Client,
    url: Arc<String>,
    submitters: Arc<Vec<Submitter>>,
    index: usize,
    history: Arc<History>,
    pacer: Arc<Pacer>,
    seeds: Arc<AtomicU64>,
    stop_new: CancellationToken,
    stop_all: CancellationToken,
}

impl Worker {
    async fn run(self) {
        let who = &self.submitters[self.index];
        loop {
            tokio::select! {
                () = self.stop_new.cancelled() => return,
                () = self.pacer.wait() => {}
            }
            let seed = self.seeds.fetch_add(1, Ordering::Relaxed);
            let now = platform::clock::now();
            let spec = PackageSpec::new(who.id.clone(), "local", self.config.records, now, seed)
                .records_ending(now - report_day(seed, self.config.record_days));
            let generated = generate_package(&spec);
            let signature =
                base64::engine::general_purpose::STANDARD.encode(who.key.sign(&generated.bytes));
            let body = bytes::Bytes::from(generated.bytes);
            let i = self.history.begin(Sent {
                submitter_id: who.id.as_str().to_owned(),
                package_id: generated.package_id,
                sha256_hex: evidence::keys::sha256_hex(&body),
                records: self.config.records,
                attempts: Vec::new(),
                acked: false,
                gave_up: false,
            });
            let deadline = Instant::now() + self.config.give_up_after;
            let mut backoff = Duration::from_millis(100);
            loop {
                let started = self.history.now();
                let (outcome, retry_after) = self.attempt(who, &signature, body.clone()).await;
                let ended = self.history.now();
                let (stored, retry) = match &outcome {
                    Outcome::Stored(_) => (true, false),
                    Outcome::Failed { retry, .. } => (false, *retry),
                };
                self.history.record(
                    i,
                    Attempt {
                        started,
                        ended,
                        outcome,
                    },
                );
                if stored {
                    break;
                }
                let wait = match retry_after {
                    Some(secs) => Duration::from_secs(secs).min(self.config.retry_after_cap),
                    None => {
                        let w = backoff;
                        backoff = (backoff * 2).min(self.config.retry_after_cap);
                        w
                    }
                };
                let wait = wait / 2 + jitter(wait / 2);
                if !retry || Instant::now() + wait > deadline || self.stop_all.is_cancelled() {
                    self.history.give_up(i);
                    break;
                }
                tokio::select! {
                    () = self.stop_all.cancelled() => {
                        self.history.give_up(i);
                        break;
                    }
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }

    /// One POST of the exact bytes: its outcome and any `Retry-After`.
    async fn attempt(
        &self,
        who: &Submitter,
        signature: &str,
        body: bytes::Bytes,
    ) -> (Outcome, Option<u64>) {
        let sent = self
            .http
            .post(self.url.as_str())
            .timeout(self.config.attempt_timeout)
            .header("content-type", "application/json")
            .header("tallyhouse-key-id", who.key_id.as_str())
            .header("tallyhouse-signature", signature)
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                let label = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect error"
                } else {
                    "connection error"
                };
                return (
                    Outcome::Failed {
                        label: label.into(),
                        retry: true,
                    },
                    None,
                );
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = match tokio::time::timeout(self.config.attempt_timeout, resp.bytes()).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) | Err(_) => {
                // The answer was cut: the package may or may not be stored.
                return (
                    Outcome::Failed {
                        label: format!("{status} body cut"),
                        retry: true,
                    },
                    None,
                );
            }
        };
        if status == 201 || status == 200 {
            return (Outcome::Stored(status), None);
        }
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "-".into());
        // Server-side and overload answers are retried with the same bytes;
        // any other refusal of a valid package is final (and a finding).
        let retry = status >= 500 || status == 429 || status == 408;
        (
            Outcome::Failed {
                label: format!("{status} {code}"),
                retry,
            },
            retry_after,
        )
    }
}
