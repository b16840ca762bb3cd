//! The wall clock, read in one place. Deadlines inside a process use tokio's
//! monotonic `Instant` (which tests can pause); only values that cross a
//! process boundary, such as the absolute call deadline, use wall time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
#[allow(clippy::disallowed_methods)] // the one sanctioned reading of the wall clock
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// The current time, as a timestamp for records and receipts.
#[allow(clippy::disallowed_methods)] // the one sanctioned reading of the wall clock
pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
