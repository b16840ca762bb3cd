//! The submitters and their packages: realistic packages from
//! `evidence::generate`, signed with each submitter's own key ahead of the
//! measured window, and the end-to-end call that POSTs one of them to the
//! gateway.

use crate::load::CallFn;
use base64::Engine as _;
use evidence::SigningKey;
use evidence::generate::{PackageSpec, generate_package};
use rpc_contracts::{KeyId, SubmitterId};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A registered submitter with its signing key.
pub struct Submitter {
    /// The submitter's id.
    pub id: SubmitterId,
    /// Its registered key.
    pub key: SigningKey,
    /// The key's id, sent in `Tallyhouse-Key-Id`.
    pub key_id: KeyId,
}

/// A package ready to send: its bytes and the signature header.
pub struct Signed {
    /// The exact body.
    pub bytes: Vec<u8>,
    /// DER signature over `bytes`.
    pub signature: Vec<u8>,
}

impl Signed {
    /// The `Tallyhouse-Signature` header value.
    pub fn header(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.signature)
    }
}

/// Generates and signs a fresh package of `records` records for `who`;
/// `seed` makes it unique (its package id comes from the seed).
pub fn make_package(who: &Submitter, records: usize, seed: u64) -> Signed {
    let spec = PackageSpec::new(
        who.id.clone(),
        "local",
        records,
        platform::clock::now(),
        seed,
    );
    let bytes = generate_package(&spec).bytes;
    let signature = who.key.sign(&bytes);
    Signed { bytes, signature }
}

/// Packages generated ahead of the measured window, per submitter, so that
/// generating and signing them (milliseconds each at 10,000 records) does
/// not compete with the services for the cores while they are measured.
pub struct Pools {
    submitters: Arc<Vec<Submitter>>,
    records: usize,
    queues: Vec<Mutex<VecDeque<Signed>>>,
    next_seed: Arc<AtomicU64>,
    /// Packages taken so far.
    taken: AtomicU64,
    /// `taken` at the last [`Pools::prepare_slice`], if any.
    taken_at_last_slice: Mutex<Option<u64>>,
    /// Packages that had to be made inside a measured call because the
    /// pool ran dry.
    made_late: AtomicU64,
}

impl Pools {
    /// Empty pools for packages of `records` records from each submitter.
    pub fn new(submitters: Arc<Vec<Submitter>>, records: usize, next_seed: Arc<AtomicU64>) -> Self {
        let queues = submitters.iter().map(|_| Mutex::default()).collect();
        Self {
            submitters,
            records,
            queues,
            next_seed,
            taken: AtomicU64::new(0),
            taken_at_last_slice: Mutex::new(None),
            made_late: AtomicU64::new(0),
        }
    }

    /// Before a slice (warm-up and measured window) with `used`
    /// submitters: fills their pools with what the previous slice took,
    /// plus half again and two packages each, or with `first_guess`
    /// packages in all before the first slice.
    pub async fn prepare_slice(
        self: &Arc<Self>,
        used: usize,
        first_guess: usize,
    ) -> anyhow::Result<()> {
        let taken = self.taken.load(Ordering::Relaxed);
        let last = self
            .taken_at_last_slice
            .lock()
            .expect("pool lock")
            .replace(taken);
        let total = match last {
            Some(last) => (taken - last) as usize * 3 / 2,
            None => first_guess,
        };
        self.top_up(used, total.div_ceil(used.max(1)) + 2).await
    }

    /// Fills the pools of the first `used` submitters up to `per_submitter`
    /// packages each, on every core.
    pub async fn top_up(self: &Arc<Self>, used: usize, per_submitter: usize) -> anyhow::Result<()> {
        let mut wanted: Vec<usize> = Vec::new();
        for (i, q) in self.queues.iter().take(used).enumerate() {
            let have = q.lock().expect("pool lock").len();
            wanted.extend(std::iter::repeat_n(i, per_submitter.saturating_sub(have)));
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let chunk = wanted.len().div_ceil(threads);
        let mut tasks = Vec::new();
        for part in wanted.chunks(chunk) {
            let part = part.to_vec();
            let pools = self.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                for i in part {
                    let seed = pools.next_seed.fetch_add(1, Ordering::Relaxed);
                    let signed = make_package(&pools.submitters[i], pools.records, seed);
                    pools.queues[i].lock().expect("pool lock").push_back(signed);
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        Ok(())
    }

    /// A package of submitter `i`: from the pool, else made now (counted).
    async fn take(self: &Arc<Self>, i: usize) -> Signed {
        self.taken.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = self.queues[i].lock().expect("pool lock").pop_front() {
            return p;
        }
        self.made_late.fetch_add(1, Ordering::Relaxed);
        let pools = self.clone();
        let made = tokio::task::spawn_blocking(move || {
            let seed = pools.next_seed.fetch_add(1, Ordering::Relaxed);
            make_package(&pools.submitters[i], pools.records, seed)
        })
        .await;
        match made {
            Ok(p) => p,
            // The blocking pool is gone only at shutdown.
            Err(_) => make_package(
                &self.submitters[i],
                self.records,
                self.next_seed.fetch_add(1, Ordering::Relaxed),
            ),
        }
    }

    /// Packages made inside measured calls so far.
    pub fn made_late(&self) -> u64 {
        self.made_late.load(Ordering::Relaxed)
    }

    /// Drops every prepared package (frees the memory between points)
    /// and forgets the last slice's consumption.
    pub fn clear(&self) {
        for q in &self.queues {
            q.lock().expect("pool lock").clear();
        }
        *self.taken_at_last_slice.lock().expect("pool lock") = None;
    }
}

/// Hands each concurrent call a submitter no other call is using, so that
/// `n` calls in flight are `n` distinct submitters each sending one
/// package after the other.
pub struct Idle(Mutex<Vec<usize>>);

impl Idle {
    /// Submitters `0..n`, all idle.
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Self(Mutex::new((0..n).rev().collect())))
    }

    /// Takes an idle submitter until the guard drops.
    pub fn take(self: &Arc<Self>) -> Option<Busy> {
        let i = self.0.lock().expect("idle lock").pop()?;
        Some(Busy {
            idle: self.clone(),
            index: i,
        })
    }
}

/// A submitter in use; idle again when dropped.
pub struct Busy {
    idle: Arc<Idle>,
    /// The submitter's index.
    pub index: usize,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.idle.0.lock().expect("idle lock").push(self.index);
    }
}

/// One end-to-end submission: an idle submitter POSTs its next package to
/// the gateway, which must answer 201 (a new package stored).
pub fn submit_call(
    http: reqwest::Client,
    url: String,
    pools: Arc<Pools>,
    submitters: Arc<Vec<Submitter>>,
    idle: Arc<Idle>,
) -> CallFn {
    let url = Arc::new(url);
    Arc::new(move || {
        let (http, url, pools, submitters, idle) = (
            http.clone(),
            url.clone(),
            pools.clone(),
            submitters.clone(),
            idle.clone(),
        );
        Box::pin(async move {
            let busy = idle.take().ok_or("more calls in flight than submitters")?;
            let package = pools.take(busy.index).await;
            let who = &submitters[busy.index];
            let resp = http
                .post(url.as_str())
                .header("content-type", "application/json")
                .header("tallyhouse-key-id", who.key_id.as_str())
                .header("tallyhouse-signature", package.header())
                .body(package.bytes)
                .send()
                .await
                .map_err(|e| format!("POST: {e}"))?;
            let status = resp.status();
            if status.as_u16() == 201 {
                // Read the receipt, as a client would.
                resp.bytes()
                    .await
                    .map_err(|e| format!("reading the receipt: {e}"))?;
                Ok(())
            } else {
                let body = resp.text().await.unwrap_or_default();
                Err(format!(
                    "HTTP {status}: {}",
                    body.chars().take(300).collect::<String>()
                ))
            }
        })
    })
}
