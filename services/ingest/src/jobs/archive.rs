//! Archive and restore: the `archive` job exports each partition past the
//! records retention to the archive bucket, reads the export back and checks
//! it against the partition's seal, records it, and only then detaches and
//! drops the partition; `restore` brings one back, checked against its
//! manifest and seal before it commits.
//!
//! An archive of partition `P` is three objects under `records/P/` in the
//! archive bucket (format [`FORMAT`], docs/lifecycle.md):
//!
//! - `records.csv.gz`: the rows as CSV (RFC 4180, UTF-8, a header line),
//!   gzip-compressed, in the seal's canonical order, one column per
//!   [`COLUMNS`] entry: `ts` as RFC 3339 UTC with microseconds, `value` as
//!   the shortest decimal that reads back as the same binary64 (`NaN`,
//!   `Infinity`, `-Infinity` for the non-finite), `labels` as canonical JSON.
//!   So the seal's digest can be recomputed from the file alone, and
//!   `gunzip | psql -c "COPY … FROM STDIN (FORMAT csv, HEADER)"` loads it.
//! - `schema.json`: the columns, their PostgreSQL types and meaning.
//! - `manifest.json`, written last: partition, range, row count, the seal's
//!   algorithm and digest, the data object's key, SHA-256 and size.
//!
//! Every step can be redone: an export overwrites the same keys with the
//! same bytes (gzip without a timestamp), a partition is dropped only by
//! `tallyhouse_drop_archived_partition`, which refuses one without a
//! verified archive row, and a restore is one transaction that commits only
//! when the restored rows match the seal.

use crate::jobs::partitions::{self, Partition};
use crate::jobs::seal::{self, Digest, SealRow};
use crate::jobs::{JobConfig, Report};
use anyhow::Context as _;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures_util::TryStreamExt as _;
use platform::s3::EvidenceStore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use sqlx::{Connection as _, PgConnection};
use std::io::Read;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use tokio::sync::mpsc;

/// The archive format's name, in every manifest.
pub const FORMAT: &str = "tallyhouse-archive-v1";

/// The columns of `records.csv.gz`, in order: name, PostgreSQL type, meaning.
pub const COLUMNS: [(&str, &str, &str); 7] = [
    (
        "submitter_id",
        "text",
        "the submitter whose package held the record",
    ),
    (
        "package_id",
        "uuid",
        "the package (see the packages catalogue)",
    ),
    (
        "ordinal",
        "integer",
        "the record's position in its package, from 0",
    ),
    (
        "ts",
        "timestamptz",
        "the record's time: RFC 3339, UTC, microseconds",
    ),
    ("series", "text", "the series name"),
    (
        "value",
        "double precision",
        "shortest decimal that reads back exactly; NaN, Infinity, -Infinity",
    ),
    (
        "labels",
        "jsonb",
        "the label set as canonical JSON (keys sorted, no whitespace)",
    ),
];

/// Rows sent from the database reader to the encoder at once.
const BATCH_ROWS: usize = 1_000;
/// Decompressed bytes sent to COPY at once during a restore.
const COPY_CHUNK: usize = 1 << 20;

/// The key prefix of `partition`'s archive.
pub fn prefix(partition: &str) -> String {
    format!("records/{partition}/")
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub partition: String,
    #[serde(with = "time::serde::rfc3339")]
    pub range_from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub range_to: OffsetDateTime,
    pub row_count: i64,
    pub seal: ManifestSeal,
    pub data: ManifestObject,
    pub schema_key: String,
    #[serde(with = "time::serde::rfc3339")]
    pub archived_at: OffsetDateTime,
    pub run_id: i64,
}

/// The seal the rows were checked against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestSeal {
    pub algorithm: String,
    /// Hex.
    pub digest: String,
}

/// The data object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestObject {
    pub key: String,
    /// SHA-256 of the stored (compressed) bytes, hex.
    pub sha256: String,
    pub bytes: u64,
    pub compression: String,
    pub media_type: String,
}

fn schema_json() -> serde_json::Value {
    json!({
        "format": FORMAT,
        "table": "records",
        "columns": COLUMNS.iter().map(|(name, ty, meaning)| json!({
            "name": name, "type": ty, "description": meaning,
        })).collect::<Vec<_>>(),
        "order": ["submitter_id (byte order)", "package_id", "ordinal"],
        "seal": seal::ALGORITHM,
        "csv": { "rfc": 4180, "encoding": "UTF-8", "header": true, "delimiter": ",", "quote": "\"" },
    })
}

/// The text of `ts` in the archive.
fn format_ts(ts: OffsetDateTime) -> String {
    let ts = ts.to_offset(time::UtcOffset::UTC);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    ts.format(&fmt).expect("a UTC time formats")
}

/// The text of `value` in the archive.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        // serde_json writes the shortest decimal that reads back exactly.
        serde_json::Number::from_f64(value)
            .expect("finite")
            .to_string()
    }
}

fn parse_value(s: &str) -> anyhow::Result<f64> {
    Ok(match s {
        "NaN" => f64::NAN,
        "Infinity" => f64::INFINITY,
        "-Infinity" => f64::NEG_INFINITY,
        _ => s.parse().with_context(|| format!("value {s:?}"))?,
    })
}

fn write_row(out: &mut csv::Writer<impl std::io::Write>, row: &SealRow) -> anyhow::Result<()> {
    let mut labels = Vec::with_capacity(64);
    seal::canonical_json(&row.labels, &mut labels);
    out.write_record([
        row.submitter_id.as_bytes(),
        row.package_id.hyphenated().to_string().as_bytes(),
        row.ordinal.to_string().as_bytes(),
        format_ts(row.ts).as_bytes(),
        row.series.as_bytes(),
        format_value(row.value).as_bytes(),
        &labels,
    ])?;
    Ok(())
}

fn parse_row(record: &csv::StringRecord) -> anyhow::Result<SealRow> {
    anyhow::ensure!(
        record.len() == COLUMNS.len(),
        "{} fields, expected {}",
        record.len(),
        COLUMNS.len()
    );
    Ok(SealRow {
        submitter_id: record[0].to_owned(),
        package_id: record[1].parse().context("package_id")?,
        ordinal: record[2].parse().context("ordinal")?,
        ts: OffsetDateTime::parse(&record[3], &Rfc3339).context("ts")?,
        series: record[4].to_owned(),
        value: parse_value(&record[5])?,
        labels: serde_json::from_str(&record[6]).context("labels")?,
    })
}

/// What an export or a read-back found.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    pub rows: i64,
    /// Parts uploaded (0 when read back).
    pub parts: u32,
    pub digest: [u8; 32],
    pub sha256: [u8; 32],
    pub bytes: u64,
}

/// Writes the rows of `p` to `key` as gzip-compressed CSV, streaming: the
/// database read, the encoding (on a blocking thread) and the multipart
/// upload overlap, and memory stays within a few parts.
async fn export(
    conn: &mut PgConnection,
    archive: &EvidenceStore,
    p: &Partition,
    key: &str,
    part_bytes: usize,
) -> anyhow::Result<Content> {
    let client = archive.client();
    let upload = client
        .create_multipart_upload()
        .bucket(archive.bucket())
        .key(key)
        .content_type("application/gzip")
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "starting the upload of {key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })?;
    let upload_id = upload
        .upload_id()
        .context("the S3 server answered no upload id")?
        .to_owned();
    let (row_tx, mut row_rx) = mpsc::channel::<Vec<SealRow>>(4);
    let (part_tx, mut part_rx) = mpsc::channel::<Vec<u8>>(2);
    let encoder = tokio::task::spawn_blocking(move || -> anyhow::Result<(i64, [u8; 32])> {
        let mut digest = Digest::default();
        let compressed = SharedBuf::default();
        let gz = flate2::GzBuilder::new().write(compressed.clone(), flate2::Compression::default());
        let mut out = csv::WriterBuilder::new().from_writer(gz);
        out.write_record(COLUMNS.iter().map(|c| c.0))?;
        while let Some(batch) = row_rx.blocking_recv() {
            for row in &batch {
                digest.update(row);
                write_row(&mut out, row)?;
            }
            out.flush()?;
            if compressed.len() >= part_bytes && part_tx.blocking_send(compressed.take()).is_err() {
                anyhow::bail!("the upload stopped");
            }
        }
        out.into_inner()
            .map_err(|e| anyhow::anyhow!("finishing the CSV: {}", e.error()))?
            .finish()?;
        let last = compressed.take();
        // The last part may be empty only when it is also the first.
        let _ = part_tx.blocking_send(last);
        Ok(digest.finish())
    });
    let read = async {
        let mut rows = sqlx::query(seal::ROWS)
            .bind(p.from())
            .bind(p.to())
            .fetch(&mut *conn);
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        while let Some(row) = rows.try_next().await? {
            batch.push(seal::decode(&row)?);
            if batch.len() == BATCH_ROWS {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                if row_tx.send(full).await.is_err() {
                    anyhow::bail!("the encoder stopped");
                }
            }
        }
        if !batch.is_empty() && row_tx.send(batch).await.is_err() {
            anyhow::bail!("the encoder stopped");
        }
        drop(row_tx);
        anyhow::Ok(())
    };
    let send = async {
        let mut sha = Sha256::new();
        let mut bytes = 0u64;
        let mut parts = Vec::new();
        let mut number = 0;
        while let Some(part) = part_rx.recv().await {
            if part.is_empty() && number > 0 {
                continue;
            }
            number += 1;
            sha.update(&part);
            bytes += part.len() as u64;
            let done = client
                .upload_part()
                .bucket(archive.bucket())
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(part))
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "uploading part {number} of {key}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                })?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(done.e_tag().map(str::to_owned))
                    .build(),
            );
        }
        anyhow::Ok((parts, <[u8; 32]>::from(sha.finalize()), bytes))
    };
    let (read, sent) = tokio::join!(read, send);
    let encoded = encoder.await.context("the encoder panicked");
    let result = (|| {
        read?;
        let (rows, digest) = encoded??;
        let (parts, sha256, bytes) = sent?;
        anyhow::Ok((rows, digest, parts, sha256, bytes))
    })();
    let (rows, digest, parts, sha256, bytes) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = client
                .abort_multipart_upload()
                .bucket(archive.bucket())
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
            return Err(e);
        }
    };
    let part_count = parts.len() as u32;
    client
        .complete_multipart_upload()
        .bucket(archive.bucket())
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "completing the upload of {key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })?;
    Ok(Content {
        rows,
        parts: part_count,
        digest,
        sha256,
        bytes,
    })
}

/// The compressor's output, taken a part at a time.
#[derive(Clone, Default)]
struct SharedBuf(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl SharedBuf {
    fn len(&self) -> usize {
        self.0.borrow().len()
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.borrow_mut())
    }
}

impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    sha: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A reader that also sends what passes through it (the decompressed CSV,
/// to COPY during a restore) in chunks.
struct Tee<R> {
    inner: R,
    to: Option<mpsc::Sender<Vec<u8>>>,
    buf: Vec<u8>,
}

impl<R> Tee<R> {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if let Some(to) = &self.to
            && !self.buf.is_empty()
        {
            let chunk =
                std::mem::replace(&mut self.buf, Vec::with_capacity(COPY_CHUNK + (1 << 16)));
            to.blocking_send(chunk)
                .map_err(|_| std::io::Error::other("the restore stopped"))?;
        }
        Ok(())
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.to.is_some() {
            self.buf.extend_from_slice(&buf[..n]);
            if self.buf.len() >= COPY_CHUNK {
                self.flush_chunk()?;
            }
        }
        Ok(n)
    }
}

/// Reads `key` back: the SHA-256 and size of the stored bytes, the rows'
/// count and seal digest; with `copy`, also sends the decompressed CSV there.
async fn read_back(
    archive: &EvidenceStore,
    key: &str,
    copy: Option<mpsc::Sender<Vec<u8>>>,
) -> anyhow::Result<Content> {
    let object = archive
        .client()
        .get_object()
        .bucket(archive.bucket())
        .key(key)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "reading {key} back: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })?;
    let body = tokio_util::io::SyncIoBridge::new(object.body.into_async_read());
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Content> {
        let hashing = Hashing {
            inner: body,
            sha: Sha256::new(),
            bytes: 0,
        };
        let tee = Tee {
            inner: flate2::read::GzDecoder::new(hashing),
            to: copy,
            buf: Vec::with_capacity(COPY_CHUNK + (1 << 16)),
        };
        let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(tee);
        let header: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
        let expected: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
        anyhow::ensure!(
            header == expected,
            "{key}: columns {header:?}, expected {expected:?}"
        );
        let mut digest = Digest::default();
        let mut record = csv::StringRecord::new();
        while reader.read_record(&mut record)? {
            let row = parse_row(&record).with_context(|| {
                format!("{key}: line {}", record.position().map_or(0, |p| p.line()))
            })?;
            digest.update(&row);
        }
        let mut tee = reader.into_inner();
        tee.flush_chunk()?;
        drop(tee.to.take());
        // Anything after the gzip stream is part of the object too.
        let mut hashing = tee.inner.into_inner();
        std::io::copy(&mut hashing, &mut std::io::sink())?;
        let (rows, digest) = digest.finish();
        Ok(Content {
            rows,
            parts: 0,
            digest,
            sha256: hashing.sha.finalize().into(),
            bytes: hashing.bytes,
        })
    })
    .await
    .context("the reader panicked")?
}

async fn put_json(
    archive: &EvidenceStore,
    key: &str,
    value: &impl Serialize,
) -> anyhow::Result<[u8; 32]> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    let sha: [u8; 32] = Sha256::digest(&bytes).into();
    archive
        .client()
        .put_object()
        .bucket(archive.bucket())
        .key(key)
        .content_type("application/json")
        .body(ByteStream::from(bytes))
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "writing {key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })?;
    Ok(sha)
}

async fn get_json<T: for<'de> Deserialize<'de>>(
    archive: &EvidenceStore,
    key: &str,
) -> anyhow::Result<(T, [u8; 32])> {
    let bytes = archive
        .get_blob(key)
        .await
        .map_err(|e| anyhow::anyhow!("reading {key}: {}", e.message))?
        .with_context(|| format!("{key} is not in the archive bucket"))?;
    let sha: [u8; 32] = Sha256::digest(&bytes).into();
    Ok((
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {key}"))?,
        sha,
    ))
}

/// A seal as stored.
struct SealLine {
    rows: i64,
    digest: Vec<u8>,
    algorithm: String,
}

async fn seal_of(conn: &mut PgConnection, partition: &str) -> anyhow::Result<Option<SealLine>> {
    let row: Option<(i64, Vec<u8>, String)> = sqlx::query_as(
        "SELECT row_count, digest, algorithm FROM partition_seals WHERE partition_name = $1",
    )
    .bind(partition)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(rows, digest, algorithm)| SealLine {
        rows,
        digest,
        algorithm,
    }))
}

/// Archives, verifies and drops one partition; answers what it did.
async fn archive_one(
    conn: &mut PgConnection,
    config: &JobConfig,
    run_id: i64,
    archive: &EvidenceStore,
    p: &Partition,
    now: OffsetDateTime,
) -> anyhow::Result<serde_json::Value> {
    // The seal is the reference: a partition is sealed before it is
    // archived (the seal job normally did it long ago).
    let sealed = match seal_of(conn, &p.name).await? {
        Some(s) => s,
        None => {
            let (rows, digest) = seal::compute(conn, p.from(), p.to()).await?;
            seal::insert(conn, p, rows, &digest, run_id).await?;
            tracing::info!(partition = %p.name, rows, "partition sealed before its archive");
            seal_of(conn, &p.name)
                .await?
                .context("the seal just written is not there")?
        }
    };
    anyhow::ensure!(
        sealed.algorithm == seal::ALGORITHM,
        "the seal of {} uses {}, this build computes {}",
        p.name,
        sealed.algorithm,
        seal::ALGORITHM
    );
    let prefix = prefix(&p.name);
    let data_key = format!("{prefix}records.csv.gz");
    let schema_key = format!("{prefix}schema.json");
    let manifest_key = format!("{prefix}manifest.json");
    let exported = export(conn, archive, p, &data_key, config.archive_part_bytes).await?;
    if exported.rows != sealed.rows || exported.digest.as_slice() != sealed.digest.as_slice() {
        tracing::error!(
            alert = "seal_mismatch",
            partition = %p.name,
            sealed_rows = sealed.rows,
            found_rows = exported.rows,
            "a partition due for archiving no longer matches its seal: not archived"
        );
        anyhow::bail!(
            "{}: the rows ({} rows) do not match the seal ({} rows): not archived",
            p.name,
            exported.rows,
            sealed.rows
        );
    }
    // Read back what the bucket holds, not what was sent.
    let stored = read_back(archive, &data_key, None).await?;
    anyhow::ensure!(
        (stored.rows, stored.digest, stored.sha256, stored.bytes)
            == (
                exported.rows,
                exported.digest,
                exported.sha256,
                exported.bytes
            ),
        "{data_key}: read back {} rows, {} bytes, SHA-256 {}; wrote {} rows, {} bytes, SHA-256 {}",
        stored.rows,
        stored.bytes,
        hex::encode(stored.sha256),
        exported.rows,
        exported.bytes,
        hex::encode(exported.sha256)
    );
    put_json(archive, &schema_key, &schema_json()).await?;
    let manifest = Manifest {
        format: FORMAT.into(),
        partition: p.name.clone(),
        range_from: p.from(),
        range_to: p.to(),
        row_count: stored.rows,
        seal: ManifestSeal {
            algorithm: seal::ALGORITHM.into(),
            digest: hex::encode(stored.digest),
        },
        data: ManifestObject {
            key: data_key.clone(),
            sha256: hex::encode(stored.sha256),
            bytes: stored.bytes,
            compression: "gzip".into(),
            media_type: "text/csv; charset=utf-8; header=present".into(),
        },
        schema_key: schema_key.clone(),
        archived_at: now,
        run_id,
    };
    let manifest_sha = put_json(archive, &manifest_key, &manifest).await?;
    let (read_manifest, read_sha) = get_json::<Manifest>(archive, &manifest_key).await?;
    anyhow::ensure!(
        read_manifest == manifest && read_sha == manifest_sha,
        "{manifest_key}: read back differs from what was written"
    );
    sqlx::query(
        "INSERT INTO partition_archives (partition_name, range_from, range_to, row_count, digest, algorithm,
             format, bucket, object_key, object_sha256, object_bytes, manifest_key, manifest_sha256, archived_at, run_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, clock_timestamp(), $14)
         ON CONFLICT (partition_name) DO NOTHING",
    )
    .bind(&p.name)
    .bind(p.from())
    .bind(p.to())
    .bind(stored.rows)
    .bind(stored.digest.as_slice())
    .bind(seal::ALGORITHM)
    .bind(FORMAT)
    .bind(archive.bucket())
    .bind(&data_key)
    .bind(stored.sha256.as_slice())
    .bind(stored.bytes as i64)
    .bind(&manifest_key)
    .bind(manifest_sha.as_slice())
    .bind(run_id)
    .execute(&mut *conn)
    .await?;
    tracing::info!(
        partition = %p.name,
        rows = stored.rows,
        bytes = stored.bytes,
        object = %data_key,
        sha256 = %hex::encode(stored.sha256),
        "partition archived and verified"
    );
    drop_partition(conn, &p.name).await?;
    Ok(json!({
        "partition": p.name,
        "rows": stored.rows,
        "bytes": stored.bytes,
        "parts": exported.parts,
        "sha256": hex::encode(stored.sha256),
        "manifest": manifest_key,
    }))
}

async fn drop_partition(conn: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    let dropped: bool = sqlx::query_scalar("SELECT tallyhouse_drop_archived_partition($1)")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .with_context(|| format!("dropping {name}"))?;
    if dropped {
        tracing::info!(partition = %name, "archived partition detached and dropped");
    }
    Ok(())
}

/// The `archive` job: exports, oldest first and at most
/// `archive_max_partitions`, the partitions whose day ended more than
/// `retention_days` before `now`, then drops them; finishes what a crashed
/// run left (archived but not dropped); drops restored partitions kept
/// longer than `restore_keep_days`.
pub async fn run_archive(
    conn: &mut PgConnection,
    config: &JobConfig,
    now: OffsetDateTime,
    run_id: i64,
    archive: &EvidenceStore,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        config.retention_days > config.record_max_age_days,
        "the retention ({} days) must exceed the record age limit ({} days): partitions are sealed, \
         then archived",
        config.retention_days,
        config.record_max_age_days
    );
    let cutoff = now - Duration::days(i64::from(config.retention_days));
    let states: std::collections::HashMap<String, (String, Option<OffsetDateTime>)> =
        sqlx::query_as::<_, (String, String, Option<OffsetDateTime>)>(
            "SELECT partition_name, state, restored_at FROM partition_archives",
        )
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(name, state, restored)| (name, (state, restored)))
        .collect();
    let present = partitions::list(conn).await?;
    let mut archived = Vec::new();
    let mut dropped = Vec::new();
    let mut failed = Vec::new();
    let keep = Duration::days(i64::from(config.restore_keep_days));
    let mut budget = config.archive_max_partitions as usize;
    for p in &present {
        match states.get(&p.name) {
            // A crash between the archive and the drop: finish it.
            Some((state, _)) if state == "archived" => {
                drop_partition(conn, &p.name).await?;
                dropped.push(json!(p.name));
            }
            Some((state, Some(restored_at)))
                if state == "restored" && *restored_at + keep <= now =>
            {
                drop_partition(conn, &p.name).await?;
                dropped.push(json!(p.name));
            }
            Some(_) => {}
            None if p.to() <= cutoff && budget > 0 => {
                budget -= 1;
                match archive_one(conn, config, run_id, archive, p, now).await {
                    Ok(done) => archived.push(done),
                    Err(e) => {
                        tracing::error!(partition = %p.name, error = %format!("{e:#}"), "archiving a partition failed");
                        failed.push(json!({ "partition": p.name, "error": format!("{e:#}") }));
                    }
                }
            }
            None => {}
        }
    }
    let pending = present
        .iter()
        .filter(|p| p.to() <= cutoff && !states.contains_key(&p.name))
        .count()
        .saturating_sub(archived.len() + failed.len());
    let mut report = Report::new(
        archived.len() as i64,
        json!({
            "archived": archived,
            "dropped": dropped,
            "failed": failed,
            "pending": pending,
            "cutoff": cutoff.unix_timestamp(),
        }),
    );
    if !failed.is_empty() {
        report.failed = Some(format!(
            "{} partition(s) could not be archived",
            failed.len()
        ));
    }
    Ok(report)
}

/// The `restore` job: brings `partition` back from its archive. The
/// manifest must match the archive's record, the data object its manifest
/// (SHA-256, size), the rows the seal (count and digest, computed from the
/// file while it streams into COPY, then again from the restored partition)
/// before the transaction commits.
pub async fn run_restore(
    conn: &mut PgConnection,
    run_id: i64,
    archive: &EvidenceStore,
    partition: &str,
) -> anyhow::Result<Report> {
    let day = partitions::day_of(partition)
        .with_context(|| format!("{partition:?} is not a partition name (records_pYYYYMMDD)"))?;
    let recorded: Option<(String, String, Vec<u8>, String)> = sqlx::query_as(
        "SELECT state, manifest_key, manifest_sha256, bucket FROM partition_archives WHERE partition_name = $1",
    )
    .bind(partition)
    .fetch_optional(&mut *conn)
    .await?;
    let (state, manifest_key, manifest_sha, bucket) =
        recorded.with_context(|| format!("{partition} was never archived"))?;
    anyhow::ensure!(
        state == "dropped",
        "{partition} is present (state {state}): nothing to restore"
    );
    anyhow::ensure!(
        bucket == archive.bucket(),
        "{partition} was archived to bucket {bucket}, this service writes {}",
        archive.bucket()
    );
    let sealed = seal_of(conn, partition)
        .await?
        .with_context(|| format!("{partition} has no seal"))?;
    let (manifest, read_sha) = get_json::<Manifest>(archive, &manifest_key).await?;
    anyhow::ensure!(
        read_sha.as_slice() == manifest_sha.as_slice(),
        "{manifest_key} changed since it was archived (SHA-256 {}, recorded {})",
        hex::encode(read_sha),
        hex::encode(&manifest_sha)
    );
    anyhow::ensure!(
        manifest.format == FORMAT && manifest.partition == partition,
        "{manifest_key} describes {} in format {}",
        manifest.partition,
        manifest.format
    );
    anyhow::ensure!(
        manifest.row_count == sealed.rows && manifest.seal.digest == hex::encode(&sealed.digest),
        "{manifest_key} does not match the seal of {partition}"
    );
    let p = Partition {
        name: partition.to_owned(),
        day,
        access_method: "heap".into(),
    };
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT tallyhouse_begin_restore($1, $2)")
        .bind(partition)
        .bind(run_id)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("preparing {partition}"))?;
    let (copy_tx, mut copy_rx) = mpsc::channel::<Vec<u8>>(2);
    let copied = {
        let mut copy = tx
            .copy_in_raw(
                "COPY records (submitter_id, package_id, ordinal, ts, series, value, labels) \
                 FROM STDIN WITH (FORMAT csv, HEADER true)",
            )
            .await?;
        let feed = async {
            while let Some(chunk) = copy_rx.recv().await {
                copy.send(chunk).await?;
            }
            anyhow::Ok(())
        };
        let (read, fed) = tokio::join!(read_back(archive, &manifest.data.key, Some(copy_tx)), feed);
        match (read, fed) {
            (Ok(read), Ok(())) => {
                let copied = copy.finish().await?;
                (read, copied)
            }
            // When COPY refused a chunk, the reader only saw the channel
            // close: the database's error is the one to report.
            (_, Err(e)) | (Err(e), Ok(())) => {
                let _ = copy.abort("the archive could not be read").await;
                return Err(e);
            }
        }
    };
    let (read, copied) = copied;
    anyhow::ensure!(
        hex::encode(read.sha256) == manifest.data.sha256 && read.bytes == manifest.data.bytes,
        "{}: SHA-256 {} and {} bytes, the manifest says {} and {}",
        manifest.data.key,
        hex::encode(read.sha256),
        read.bytes,
        manifest.data.sha256,
        manifest.data.bytes
    );
    anyhow::ensure!(
        read.rows == sealed.rows && read.digest.as_slice() == sealed.digest.as_slice(),
        "{}: {} rows with another digest than the seal's ({} rows)",
        manifest.data.key,
        read.rows,
        sealed.rows
    );
    anyhow::ensure!(
        copied == read.rows as u64,
        "COPY stored {copied} rows of {}",
        read.rows
    );
    // What the database now holds, read back as the seal job reads it.
    let (rows, digest) = seal::compute(&mut tx, p.from(), p.to()).await?;
    anyhow::ensure!(
        rows == sealed.rows && digest.as_slice() == sealed.digest.as_slice(),
        "the restored {partition} ({rows} rows) does not match its seal ({} rows): rolled back",
        sealed.rows
    );
    tx.commit().await?;
    tracing::info!(
        partition,
        rows,
        "partition restored and checked against its seal"
    );
    Ok(Report::new(
        1,
        json!({
            "restored": partition,
            "rows": rows,
            "digest": hex::encode(digest),
            "object": manifest.data.key,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use uuid::Uuid;

    fn row(value: f64, labels: serde_json::Value) -> SealRow {
        SealRow {
            submitter_id: "acme, \"ltd\"".into(),
            package_id: Uuid::from_u128(7),
            ordinal: 2,
            ts: datetime!(2026-03-01 12:00:00.000001 UTC),
            series: "bets\nstake".into(),
            value,
            labels,
        }
    }

    #[test]
    fn rows_round_trip_through_the_csv_exactly() {
        let rows = vec![
            row(0.1, json!({"b": "x,y", "a": "\"q\""})),
            row(1e300, json!({})),
            row(-5e-324, json!({"n": [1, 2]})),
            row(f64::INFINITY, json!({})),
            row(f64::NEG_INFINITY, json!({})),
            row(123_456_789.125, json!({"é": "ü"})),
        ];
        let mut out = csv::Writer::from_writer(Vec::new());
        out.write_record(COLUMNS.iter().map(|c| c.0)).unwrap();
        let mut written = Digest::default();
        for r in &rows {
            written.update(r);
            write_row(&mut out, r).unwrap();
        }
        let bytes = out.into_inner().unwrap();
        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        let mut read = Digest::default();
        let mut back = Vec::new();
        for record in reader.records() {
            let r = parse_row(&record.unwrap()).unwrap();
            read.update(&r);
            back.push(r);
        }
        assert_eq!(back.len(), rows.len());
        for (a, b) in rows.iter().zip(&back) {
            assert_eq!(a.value.to_bits(), b.value.to_bits());
            assert_eq!(a, b);
        }
        assert_eq!(read.finish(), written.finish());
        let nan = parse_value(&format_value(f64::NAN)).unwrap();
        assert!(nan.is_nan());
    }

    #[test]
    fn times_keep_their_microseconds_in_utc() {
        assert_eq!(
            format_ts(datetime!(2026-03-01 13:00:00.5 +01:00)),
            "2026-03-01T12:00:00.500000Z"
        );
        assert_eq!(format_value(12.5), "12.5");
        assert_eq!(format_value(1e300), "1e+300");
        assert!(parse_value("twelve").is_err());
    }

    #[test]
    fn the_schema_names_every_column_in_order() {
        let schema = schema_json();
        let names: Vec<&str> = schema["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "submitter_id",
                "package_id",
                "ordinal",
                "ts",
                "series",
                "value",
                "labels"
            ]
        );
    }
}
