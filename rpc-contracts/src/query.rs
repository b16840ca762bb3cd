//! Calls served by the query service: read-only access to the stored
//! evidence (package metadata, the original bytes in chunks) and time-bucketed
//! aggregates of the records.
//!
//! Every call answers a bounded amount: lists and series come in pages with
//! a keyset cursor, raw bytes in chunks, so that the gateway can stream a
//! large answer without holding it.

use crate::registry::{PingRequest, PingResponse};
use crate::{Bytes, KeyId, ServiceQueue, SubmitterId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// The query queue, contract version 1.
pub const QUEUE: ServiceQueue = ServiceQueue::new("query.v1");

/// The largest page of [`ListPackages`].
pub const MAX_PACKAGE_PAGE: u32 = 1_000;
/// The largest page of [`Series`].
pub const MAX_SERIES_PAGE: u32 = 10_000;
/// The largest chunk of [`ReadRaw`] (1 MiB).
pub const MAX_RAW_CHUNK: u32 = 1024 * 1024;

define_call!(
    QUEUE,
    /// Liveness over the bus: proves a query instance consumes its queue.
    Ping, "query.v1.ping", PingRequest => PingResponse
);
define_call!(
    QUEUE,
    /// A page of packages, newest received first; `bad_request` for bad
    /// parameters or a cursor that does not decode.
    ListPackages, "query.v1.list_packages", ListPackagesRequest => PackagePage
);
define_call!(
    QUEUE,
    /// One package's metadata and receipt; `not_found` if it is not stored.
    GetPackage, "query.v1.get_package", GetPackageRequest => PackageDetail
);
define_call!(
    QUEUE,
    /// A chunk of a package's original bytes, read from the evidence store;
    /// `not_found` if the package is not stored.
    ReadRaw, "query.v1.read_raw", ReadRawRequest => RawChunk
);
define_call!(
    QUEUE,
    /// A page of time-bucketed aggregates of one series.
    Series, "query.v1.series", SeriesRequest => SeriesPage
);

/// Request of [`ListPackages`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListPackagesRequest {
    /// Only this submitter's packages.
    #[serde(default)]
    pub submitter_id: Option<SubmitterId>,
    /// Only packages received at or after this time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub from: Option<OffsetDateTime>,
    /// Only packages received before this time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub to: Option<OffsetDateTime>,
    /// At most this many (1 to [`MAX_PACKAGE_PAGE`]).
    pub limit: u32,
    /// The previous page's `next_cursor`.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// One package in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSummary {
    /// Its submitter.
    pub submitter_id: SubmitterId,
    /// Its id.
    pub package_id: Uuid,
    /// SHA-256 of the original bytes, lowercase hex.
    pub sha256: String,
    /// Size of the original bytes.
    pub size: u64,
    /// How many records it held.
    pub records: u64,
    /// Its `created_at`.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the platform received it.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

/// Response of [`ListPackages`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackagePage {
    /// Newest received first (ties by submitter and package id).
    pub packages: Vec<PackageSummary>,
    /// Pass as `cursor` for the next page; `None` at the end. Stable under
    /// concurrent inserts: a page never repeats or skips a row of the pages
    /// before it.
    pub next_cursor: Option<String>,
}

/// Request of [`GetPackage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetPackageRequest {
    /// The submitter.
    pub submitter_id: SubmitterId,
    /// The package.
    pub package_id: Uuid,
}

/// Response of [`GetPackage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageDetail {
    /// What a list shows.
    pub summary: PackageSummary,
    /// The audience it was signed for.
    pub audience: String,
    /// The key that signed it.
    pub key_id: KeyId,
    /// The signature as sent: base64 of the DER form.
    pub signature: String,
    /// The platform's receipt (compact JWS).
    pub receipt: String,
}

/// Request of [`ReadRaw`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRawRequest {
    /// The submitter.
    pub submitter_id: SubmitterId,
    /// The package.
    pub package_id: Uuid,
    /// Where to start, in bytes: at most the package's size (at the size,
    /// the chunk is empty); past it is `bad_request`.
    pub offset: u64,
    /// At most this many bytes (1 to [`MAX_RAW_CHUNK`]).
    pub max_len: u32,
}

/// Response of [`ReadRaw`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawChunk {
    /// The bytes from `offset`: `max_len` of them, fewer only at the end.
    pub bytes: Bytes,
    /// The size of the whole package.
    pub total_size: u64,
}

/// How the values in a bucket are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// Sum of the values.
    Sum,
    /// Mean of the values.
    Avg,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Number of records.
    Count,
}

impl Aggregate {
    /// Every aggregate.
    pub const ALL: [Aggregate; 5] = [
        Aggregate::Sum,
        Aggregate::Avg,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Count,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Aggregate::Sum => "sum",
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Count => "count",
        }
    }
}

impl std::str::FromStr for Aggregate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Aggregate::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                format!("unknown aggregate {s:?} (expected sum, avg, min, max or count)")
            })
    }
}

/// Request of [`Series`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesRequest {
    /// The submitter.
    pub submitter_id: SubmitterId,
    /// The series name, e.g. `bets.stake`.
    pub series: String,
    /// Start of the range (inclusive), record time.
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// End of the range (exclusive), record time.
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    /// Bucket width in seconds (1 s to 366 days); buckets are aligned on the
    /// Unix epoch (UTC).
    pub bucket_secs: u64,
    /// How values in a bucket are combined.
    pub agg: Aggregate,
    /// Only records carrying every one of these labels with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Only buckets starting after this one (the previous page's
    /// `next_cursor`).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub after: Option<OffsetDateTime>,
    /// At most this many buckets (1 to [`MAX_SERIES_PAGE`]).
    pub limit: u32,
}

/// One bucket of a series. Buckets without records are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// The bucket's start.
    #[serde(with = "time::serde::rfc3339")]
    pub bucket: OffsetDateTime,
    /// The aggregate.
    pub value: f64,
    /// How many records fell in the bucket.
    pub count: u64,
}

/// Response of [`Series`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesPage {
    /// In bucket order.
    pub points: Vec<SeriesPoint>,
    /// Pass as `after` for the next page; `None` at the end. A page covers
    /// at most `limit` buckets of time from the first matching record after
    /// `after`, and empty buckets are left out: a page may hold fewer than
    /// `limit` points and still have a next page (only `None` ends it).
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_cursor: Option<OffsetDateTime>,
}
