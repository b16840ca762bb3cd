//! The query calls: validation (every refusal names its field), keyset
//! pagination, and the conversion of rows to the contract types, on top of
//! [`Store`] and the evidence store.
//!
//! Series pages are windows of at most `limit` buckets: a page starts at the
//! first matching record after the cursor and ends `limit` buckets later (or
//! at `to`), so one page never aggregates more than its own time window
//! however long the range. Buckets without records are left out, so a page
//! may hold fewer than `limit` points and still have a next page.

use crate::cursor::{self, Filters, Position};
use crate::error::QueryError;
use crate::metrics::QueryMetrics;
use crate::store::{ListFilter, SeriesFilter, Store, SummaryRow};
use platform::rpc::{RpcServer, RpcServerBuilder};
use platform::s3::EvidenceStore;
use rpc_contracts::query::{
    self, GetPackageRequest, ListPackagesRequest, MAX_PACKAGE_PAGE, MAX_RAW_CHUNK, MAX_SERIES_PAGE,
    PackageDetail, PackagePage, PackageSummary, RawChunk, ReadRawRequest, SeriesPage, SeriesPoint,
    SeriesRequest,
};
use rpc_contracts::registry::{PingRequest, PingResponse};
use rpc_contracts::{Call, KeyId, RpcError, SubmitterId};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use time::OffsetDateTime;
use tracing::instrument;

/// The widest series bucket: 366 days, in seconds.
pub const MAX_BUCKET_SECS: u64 = 366 * 24 * 3600;

type Result<T> = std::result::Result<T, QueryError>;

/// The query service's state: the database, the evidence store, metrics.
#[derive(Clone)]
pub struct Query {
    store: Store,
    evidence: EvidenceStore,
    metrics: QueryMetrics,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("store", &self.store)
            .field("evidence", &self.evidence)
            .finish_non_exhaustive()
    }
}

impl Query {
    /// Handlers over `store` and `evidence`, counting into `metrics`.
    pub fn new(store: Store, evidence: EvidenceStore, metrics: QueryMetrics) -> Self {
        Self {
            store,
            evidence,
            metrics,
        }
    }

    /// A page of packages, newest received first.
    #[instrument(skip_all, fields(submitter_id = ?req.submitter_id, limit = req.limit))]
    pub async fn list_packages(&self, req: ListPackagesRequest) -> Result<PackagePage> {
        let limit = check_limit(req.limit, MAX_PACKAGE_PAGE)?;
        if let (Some(from), Some(to)) = (req.from, req.to)
            && from >= to
        {
            return Err(QueryError::bad("from", "must be earlier than to"));
        }
        // Rows are stored at microsecond precision: bounds rounded up to the
        // microsecond select the same rows, and compare exactly in a cursor.
        let from_us = req.from.map(cursor::micros_ceil);
        let to_us = req.to.map(cursor::micros_ceil);
        let filters = Filters {
            submitter_id: req.submitter_id.as_ref().map(|s| s.as_str().to_owned()),
            from_us,
            to_us,
        };
        let after = req
            .cursor
            .as_deref()
            .map(|c| cursor::decode(c, &filters).map_err(|m| QueryError::bad("cursor", m)))
            .transpose()?;
        let filter = ListFilter {
            submitter_id: filters.submitter_id.clone(),
            from: from_us.map(micros_time).transpose()?,
            to: to_us.map(micros_time).transpose()?,
        };
        let mut rows = self
            .store
            .list_packages(&filter, after.as_ref(), i64::from(limit) + 1)
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = match rows.last() {
            Some(last) if more => Some(cursor::encode(
                &Position {
                    received_at: last.received_at,
                    submitter_id: last.submitter_id.clone(),
                    package_id: last.package_id,
                },
                &filters,
            )),
            _ => None,
        };
        let packages = rows.into_iter().map(summary).collect::<Result<Vec<_>>>()?;
        self.metrics
            .rows(<query::ListPackages as Call>::METHOD, packages.len());
        Ok(PackagePage {
            packages,
            next_cursor,
        })
    }

    /// One package's metadata and receipt.
    #[instrument(skip_all, fields(submitter_id = %req.submitter_id, package_id = %req.package_id))]
    pub async fn get_package(&self, req: GetPackageRequest) -> Result<PackageDetail> {
        use base64::Engine as _;
        let row = self
            .store
            .package(req.submitter_id.as_str(), req.package_id)
            .await?
            .ok_or_else(|| QueryError::UnknownPackage {
                submitter_id: req.submitter_id.clone(),
                package_id: req.package_id,
            })?;
        let key_id = KeyId::parse(row.key_id).map_err(QueryError::Corrupt)?;
        let detail = PackageDetail {
            summary: summary(row.summary)?,
            audience: row.audience,
            key_id,
            // The header carried standard base64 of these DER bytes.
            signature: base64::engine::general_purpose::STANDARD.encode(&row.signature),
            receipt: row.receipt,
        };
        self.metrics.rows(<query::GetPackage as Call>::METHOD, 1);
        Ok(detail)
    }

    /// A chunk of a package's original bytes.
    #[instrument(skip_all, fields(submitter_id = %req.submitter_id, package_id = %req.package_id, offset = req.offset, max_len = req.max_len))]
    pub async fn read_raw(&self, req: ReadRawRequest) -> Result<RawChunk> {
        if !(1..=MAX_RAW_CHUNK).contains(&req.max_len) {
            return Err(QueryError::bad(
                "max_len",
                format!("must be 1 to {MAX_RAW_CHUNK}, not {}", req.max_len),
            ));
        }
        let row = self
            .store
            .blob(req.submitter_id.as_str(), req.package_id)
            .await?
            .ok_or_else(|| QueryError::UnknownPackage {
                submitter_id: req.submitter_id.clone(),
                package_id: req.package_id,
            })?;
        if row.expired {
            return Err(QueryError::EvidenceExpired {
                submitter_id: req.submitter_id.clone(),
                package_id: req.package_id,
            });
        }
        let total_size = u64::try_from(row.size_bytes)
            .map_err(|_| QueryError::Corrupt(format!("size_bytes {}", row.size_bytes)))?;
        if req.offset > total_size {
            return Err(QueryError::bad(
                "offset",
                format!(
                    "{} is past the end of the package ({total_size} bytes)",
                    req.offset
                ),
            ));
        }
        let len = u64::from(req.max_len).min(total_size - req.offset);
        if len == 0 {
            return Ok(RawChunk {
                bytes: Vec::new().into(),
                total_size,
            });
        }
        let lost = |detail: String| QueryError::EvidenceLost {
            submitter_id: req.submitter_id.clone(),
            package_id: req.package_id,
            blob_key: row.blob_key.clone(),
            detail,
        };
        let bytes = self
            .evidence
            .get_blob_range(&row.blob_key, req.offset, len)
            .await
            .map_err(QueryError::Storage)?
            .ok_or_else(|| lost("is missing from the evidence store".into()))?;
        if bytes.len() as u64 != len {
            return Err(lost(format!(
                "answered {} bytes at offset {}, the row promises {len} of {total_size}",
                bytes.len(),
                req.offset
            )));
        }
        self.metrics.raw_bytes(bytes.len());
        Ok(RawChunk {
            bytes: bytes.into(),
            total_size,
        })
    }

    /// A page of time-bucketed aggregates of one series.
    #[instrument(skip_all, fields(submitter_id = %req.submitter_id, series = %req.series, bucket_secs = req.bucket_secs, agg = req.agg.as_str()))]
    pub async fn series(&self, req: SeriesRequest) -> Result<SeriesPage> {
        let limit = check_limit(req.limit, MAX_SERIES_PAGE)?;
        if !evidence::is_valid_series(&req.series) {
            return Err(QueryError::bad(
                "series",
                format!(
                    "{:?} is not a series name: 1 to {} of a-z, 0-9, '_' in dot-separated segments, starting with a letter",
                    truncate(&req.series),
                    evidence::MAX_SERIES_CHARS
                ),
            ));
        }
        if !(1..=MAX_BUCKET_SECS).contains(&req.bucket_secs) {
            return Err(QueryError::bad(
                "bucket_secs",
                format!(
                    "must be 1 to {MAX_BUCKET_SECS} (366 days), not {}",
                    req.bucket_secs
                ),
            ));
        }
        if req.from >= req.to {
            return Err(QueryError::bad("from", "must be earlier than to"));
        }
        let labels = check_labels(&req.labels)?;
        let width = i128::from(req.bucket_secs) * 1_000_000;
        let from = i128::from(cursor::micros_ceil(req.from));
        let to = i128::from(cursor::micros_ceil(req.to));
        let start = match req.after {
            None => from,
            Some(after) => {
                let nanos = after.unix_timestamp_nanos();
                if nanos.rem_euclid(width * 1000) != 0 {
                    return Err(QueryError::bad(
                        "after",
                        "is not the start of a bucket of this width (pass next_cursor back unchanged)",
                    ));
                }
                from.max(nanos / 1000 + width)
            }
        };
        let empty = SeriesPage {
            points: Vec::new(),
            next_cursor: None,
        };
        if start >= to {
            return Ok(empty);
        }
        let filter = SeriesFilter {
            submitter_id: req.submitter_id.as_str().to_owned(),
            series: req.series.clone(),
            labels,
        };
        let Some(first) = self
            .store
            .first_record(&filter, micros_time(start)?, micros_time(to)?)
            .await?
        else {
            return Ok(empty);
        };
        // The window: from the first record's bucket, `limit` buckets wide.
        let first = first.unix_timestamp_nanos() / 1000;
        let window_start = first.div_euclid(width) * width;
        let window_end = to.min(window_start + i128::from(limit) * width);
        let rows = self
            .store
            .buckets(
                &filter,
                req.agg,
                req.bucket_secs,
                micros_time(first)?,
                micros_time(window_end)?,
                i64::from(limit),
            )
            .await?;
        let more = window_end < to
            && self
                .store
                .any_record(&filter, micros_time(window_end)?, micros_time(to)?)
                .await?;
        let next_cursor = if more {
            Some(micros_time(window_end - width)?)
        } else {
            None
        };
        let mut aggregated = 0u64;
        let points = rows
            .into_iter()
            .map(|r| {
                let count = u64::try_from(r.n)
                    .map_err(|_| QueryError::Corrupt(format!("bucket count {}", r.n)))?;
                aggregated += count;
                Ok(SeriesPoint {
                    bucket: r.bucket,
                    value: r.value,
                    count,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.metrics
            .rows(<query::Series as Call>::METHOD, points.len());
        self.metrics.records(aggregated);
        Ok(SeriesPage {
            points,
            next_cursor,
        })
    }
}

fn check_limit(limit: u32, max: u32) -> Result<u32> {
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(QueryError::bad(
            "limit",
            format!("must be 1 to {max}, not {limit}"),
        ))
    }
}

/// The label filter as a JSON object, `None` when empty; keys and values
/// follow the package format's rules (`docs/package-format.md`).
fn check_labels(labels: &BTreeMap<String, String>) -> Result<Option<serde_json::Value>> {
    if labels.is_empty() {
        return Ok(None);
    }
    if labels.len() > evidence::MAX_LABELS {
        return Err(QueryError::bad(
            "labels",
            format!(
                "at most {} labels, not {}",
                evidence::MAX_LABELS,
                labels.len()
            ),
        ));
    }
    for (key, value) in labels {
        if !evidence::is_valid_label_key(key) {
            return Err(QueryError::bad(
                "labels",
                format!(
                    "{:?} is not a label key: 1 to {} of a-z, 0-9, '_', starting with a letter",
                    truncate(key),
                    evidence::MAX_LABEL_KEY_CHARS
                ),
            ));
        }
        if value.is_empty()
            || value.chars().nth(evidence::MAX_LABEL_VALUE_CHARS).is_some()
            || value.chars().any(char::is_control)
        {
            return Err(QueryError::bad(
                "labels",
                format!(
                    "the value of {key} must be 1 to {} characters without control characters",
                    evidence::MAX_LABEL_VALUE_CHARS
                ),
            ));
        }
    }
    Ok(Some(serde_json::Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )))
}

/// At most 64 characters of a caller's string, to quote it in a message.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The time `micros` microseconds after the Unix epoch.
fn micros_time(micros: impl TryInto<i64>) -> Result<OffsetDateTime> {
    micros
        .try_into()
        .ok()
        .and_then(cursor::from_micros)
        .ok_or_else(|| QueryError::bad("to", "out of the supported time range"))
}

fn summary(row: SummaryRow) -> Result<PackageSummary> {
    Ok(PackageSummary {
        submitter_id: SubmitterId::parse(row.submitter_id).map_err(QueryError::Corrupt)?,
        package_id: row.package_id,
        sha256: hex::encode(&row.sha256),
        size: u64::try_from(row.size_bytes)
            .map_err(|_| QueryError::Corrupt(format!("size_bytes {}", row.size_bytes)))?,
        records: u64::try_from(row.record_count)
            .map_err(|_| QueryError::Corrupt(format!("record_count {}", row.record_count)))?,
        created_at: row.created_at,
        received_at: row.received_at,
    })
}

/// The RPC server of `query.v1`.
pub fn server(query: Query) -> RpcServer {
    let query = Arc::new(query);
    let builder = RpcServer::builder(query::QUEUE).on::<query::Ping, _, _>(
        |ctx, _req: PingRequest| async move {
            Ok(PingResponse {
                service: crate::SERVICE.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                instance: ctx.instance.to_string(),
            })
        },
    );
    let builder = serve::<query::ListPackages, _, _>(builder, &query, |q, req| async move {
        q.list_packages(req).await
    });
    let builder = serve::<query::GetPackage, _, _>(builder, &query, |q, req| async move {
        q.get_package(req).await
    });
    let builder =
        serve::<query::ReadRaw, _, _>(
            builder,
            &query,
            |q, req| async move { q.read_raw(req).await },
        );
    let builder =
        serve::<query::Series, _, _>(builder, &query, |q, req| async move { q.series(req).await });
    builder.build()
}

/// Registers `handler` for `C`, mapping its [`QueryError`] to the wire.
fn serve<C, F, Fut>(builder: RpcServerBuilder, query: &Arc<Query>, handler: F) -> RpcServerBuilder
where
    C: Call,
    F: Fn(Arc<Query>, C::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<C::Response>> + Send + 'static,
{
    let query = query.clone();
    let handler = Arc::new(handler);
    builder.on::<C, _, _>(move |_ctx, req| {
        let fut = handler(query.clone(), req);
        async move { fut.await.map_err(RpcError::from) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_labels_are_checked_and_name_their_field() {
        assert_eq!(check_limit(1, 10).unwrap(), 1);
        assert_eq!(check_limit(10, 10).unwrap(), 10);
        for bad in [0, 11] {
            let e = check_limit(bad, 10).unwrap_err().to_string();
            assert!(e.starts_with("limit: "), "{e}");
        }
        assert_eq!(check_labels(&BTreeMap::new()).unwrap(), None);
        let ok = BTreeMap::from([("game".to_owned(), "poker".to_owned())]);
        assert_eq!(
            check_labels(&ok).unwrap(),
            Some(serde_json::json!({"game": "poker"}))
        );
        let too_many: BTreeMap<_, _> = (0..=evidence::MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        for bad in [
            BTreeMap::from([("Game".to_owned(), "poker".to_owned())]),
            BTreeMap::from([("game".to_owned(), String::new())]),
            BTreeMap::from([("game".to_owned(), "a\u{7}".to_owned())]),
            BTreeMap::from([(
                "game".to_owned(),
                "x".repeat(evidence::MAX_LABEL_VALUE_CHARS + 1),
            )]),
            too_many,
        ] {
            let e = check_labels(&bad).unwrap_err().to_string();
            assert!(e.starts_with("labels: "), "{e}");
        }
    }
}
