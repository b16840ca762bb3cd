//! The raw baselines the end-to-end figures are printed beside, each doing
//! one part of ingest's work with the libraries alone (none of our store,
//! evidence-store or handler code):
//!
//! * **COPY**: the same records into the same `records` table with
//!   tokio-postgres' `BinaryCopyInWriter`, one transaction per package, one
//!   connection per concurrent writer.
//! * **S3 PUT**: the same bytes with aws-sdk-s3's `put_object` (with the
//!   body's SHA-256 sent along, as ingest sends it).
//! * **verify**: ECDSA P-256/SHA-256 verification of the same packages'
//!   signatures with the RustCrypto `p256` crate and with aws-lc-rs (what
//!   ingest uses, through `evidence::PublicKey::verify`), on one thread and
//!   on every core.

use super::workload::{Idle, Signed, Submitter};
use crate::cpu::thread_cpu_time;
use crate::load::CallFn;
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine as _;
use evidence::Record;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_postgres::NoTls;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, Type};

/// The columns ingest copies, with their types.
const COPY_STATEMENT: &str =
    "COPY records (submitter_id, ts, series, value, labels, package_id, ordinal) FROM STDIN BINARY";
const COPY_TYPES: [Type; 7] = [
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::FLOAT8,
    Type::JSONB,
    Type::UUID,
    Type::INT4,
];

/// Connections to the time-series database, one per concurrent writer.
pub struct CopyWriters {
    clients: Vec<Mutex<tokio_postgres::Client>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl CopyWriters {
    /// Opens `n` connections to `url`.
    pub async fn connect(url: &str, n: usize) -> anyhow::Result<Self> {
        let mut clients = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
            tasks.push(tokio::spawn(async move {
                let _ = connection.await;
            }));
            clients.push(Mutex::new(client));
        }
        Ok(Self { clients, tasks })
    }

    /// Creates the daily partitions `records` rows between `from` and `to`
    /// fall into (as ingest does before its first COPY into a day).
    pub async fn ensure_partitions(
        &self,
        from: time::OffsetDateTime,
        to: time::OffsetDateTime,
    ) -> anyhow::Result<()> {
        let client = self.clients[0].lock().await;
        client
            .execute("SELECT tallyhouse_ensure_partitions($1, $2)", &[&from, &to])
            .await?;
        Ok(())
    }

    /// Closes the connections.
    pub fn close(self) {
        drop(self.clients);
        for t in self.tasks {
            t.abort();
        }
    }
}

/// One COPY call: an idle writer copies submitter `i`'s records (with a
/// fresh package id) in a transaction of its own and commits.
pub fn copy_call(
    writers: Arc<CopyWriters>,
    records: Arc<Vec<(String, Vec<Record>)>>,
    idle: Arc<Idle>,
) -> CallFn {
    Arc::new(move || {
        let (writers, records, idle) = (writers.clone(), records.clone(), idle.clone());
        Box::pin(async move {
            let busy = idle.take().ok_or("more calls in flight than writers")?;
            let (submitter, rows) = &records[busy.index % records.len()];
            let mut client = writers.clients[busy.index].lock().await;
            copy_package(&mut client, submitter, rows)
                .await
                .map_err(|e| format!("COPY: {e}"))
        })
    })
}

async fn copy_package(
    client: &mut tokio_postgres::Client,
    submitter: &str,
    rows: &[Record],
) -> Result<(), tokio_postgres::Error> {
    let package_id = uuid::Uuid::new_v4();
    let tx = client.transaction().await?;
    let sink = tx.copy_in(COPY_STATEMENT).await?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    futures_util::pin_mut!(writer);
    for (ordinal, r) in rows.iter().enumerate() {
        let ordinal = ordinal as i32;
        writer
            .as_mut()
            .write(&[
                &submitter,
                &r.ts,
                &r.series,
                &r.value,
                &Json(&r.labels),
                &package_id,
                &ordinal,
            ])
            .await?;
    }
    writer.finish().await?;
    tx.commit().await
}

/// One S3 PUT: a package's bytes (one per submitter, taken in turn) under a
/// fresh key in `bucket`, with their SHA-256.
pub fn put_call(
    client: aws_sdk_s3::Client,
    bucket: String,
    bodies: Arc<Vec<(bytes::Bytes, String)>>,
) -> CallFn {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Arc::new(move || {
        let (client, bucket, bodies) = (client.clone(), bucket.clone(), bodies.clone());
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % bodies.len();
        Box::pin(async move {
            let (body, sha256_b64) = &bodies[i];
            client
                .put_object()
                .bucket(bucket)
                .key(format!("bench-put/{}", uuid::Uuid::new_v4()))
                .content_type("application/json")
                .content_length(body.len() as i64)
                .checksum_sha256(sha256_b64)
                .body(ByteStream::from(body.clone()))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| format!("PUT: {}", aws_sdk_s3::error::DisplayErrorContext(e)))
        })
    })
}

/// A body and its SHA-256 as the `x-amz-checksum-sha256` header wants it.
pub fn put_body(bytes: &[u8]) -> (bytes::Bytes, String) {
    let sha = evidence::sha256(bytes);
    (
        bytes::Bytes::copy_from_slice(bytes),
        base64::engine::general_purpose::STANDARD.encode(sha),
    )
}

/// A P-256 verification backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The RustCrypto `p256` crate (pure Rust).
    P256,
    /// aws-lc-rs (AWS-LC's assembly), through `evidence::PublicKey::verify`
    /// exactly as ingest calls it.
    AwsLc,
}

impl Backend {
    /// Both, in report order.
    pub const ALL: [Backend; 2] = [Backend::P256, Backend::AwsLc];

    /// Name in reports and figure names.
    pub fn name(self) -> &'static str {
        match self {
            Self::P256 => "p256",
            Self::AwsLc => "aws-lc-rs",
        }
    }

    /// Name in figure names.
    pub fn key(self) -> &'static str {
        match self {
            Self::P256 => "p256",
            Self::AwsLc => "aws_lc_rs",
        }
    }
}

/// What one verification run measured.
#[derive(Debug, Clone, Copy)]
pub struct VerifyRate {
    /// Verifications that succeeded.
    pub count: u64,
    /// Wall time of the run.
    pub wall: Duration,
    /// CPU time of the verifying threads, together.
    pub cpu: Duration,
}

impl VerifyRate {
    /// Verifications per second of wall time (all threads together).
    pub fn per_sec(&self) -> f64 {
        self.count as f64 / self.wall.as_secs_f64()
    }

    /// Verifications per second of CPU time: what one core does.
    pub fn per_cpu_sec(&self) -> f64 {
        self.count as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
}

/// One package to verify, with its key in each backend's form.
struct VerifyCase {
    body: Vec<u8>,
    der: Vec<u8>,
    aws: evidence::PublicKey,
    p256: p256::ecdsa::VerifyingKey,
}

/// Verifies `packages` (each signed by the submitter of the same index)
/// round robin with `backend` on `threads` threads for `duration`.
/// Each verification decodes the DER signature and hashes the whole body,
/// as ingest's does. Fails if any signature does not verify.
pub async fn verify_rate(
    backend: Backend,
    submitters: &[Submitter],
    packages: &[Signed],
    threads: usize,
    duration: Duration,
) -> anyhow::Result<VerifyRate> {
    let mut cases = Vec::new();
    for (who, p) in submitters.iter().zip(packages) {
        let aws = who.key.public_key();
        let p256 = p256::ecdsa::VerifyingKey::from_sec1_bytes(aws.sec1_uncompressed())?;
        cases.push(VerifyCase {
            body: p.bytes.clone(),
            der: p.signature.clone(),
            aws,
            p256,
        });
    }
    anyhow::ensure!(!cases.is_empty(), "no packages to verify");
    let cases = Arc::new(cases);
    let started = Instant::now();
    let deadline = started + duration;
    let mut handles = Vec::new();
    for t in 0..threads {
        let cases = cases.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            verify_until(backend, &cases, t, deadline)
        }));
    }
    let mut total = VerifyRate {
        count: 0,
        wall: Duration::ZERO,
        cpu: Duration::ZERO,
    };
    for h in handles {
        let (count, cpu) = h.await??;
        total.count += count;
        total.cpu += cpu;
    }
    total.wall = started.elapsed();
    Ok(total)
}

fn verify_until(
    backend: Backend,
    cases: &[VerifyCase],
    start: usize,
    deadline: Instant,
) -> anyhow::Result<(u64, Duration)> {
    use p256::ecdsa::signature::Verifier as _;
    let cpu = thread_cpu_time();
    let mut count = 0u64;
    let mut i = start;
    while Instant::now() < deadline {
        let c = &cases[i % cases.len()];
        let ok = match backend {
            Backend::P256 => p256::ecdsa::Signature::from_der(&c.der)
                .is_ok_and(|sig| c.p256.verify(&c.body, &sig).is_ok()),
            Backend::AwsLc => c.aws.verify(&c.body, &c.der).is_ok(),
        };
        anyhow::ensure!(ok, "{} refused a valid signature", backend.name());
        count += 1;
        i += 1;
    }
    Ok((count, thread_cpu_time().saturating_sub(cpu)))
}
