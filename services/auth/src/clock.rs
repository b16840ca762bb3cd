//! The auth service's notion of "now", passed to the handlers rather than read
//! ambiently: production reads `platform::clock`, tests pin or move it.

use std::fmt;
use std::sync::Arc;
use time::OffsetDateTime;

/// A source of the current time, in UTC with microsecond precision (what
/// PostgreSQL stores), so a value read back equals the value written.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> OffsetDateTime + Send + Sync>);

impl Clock {
    /// The wall clock (through `platform::clock`, the one sanctioned reading).
    pub fn system() -> Self {
        Self::from_fn(platform::clock::now)
    }

    /// Always `at` (tests).
    pub fn fixed(at: OffsetDateTime) -> Self {
        Self::from_fn(move || at)
    }

    /// Whatever `now` answers (tests that move time).
    pub fn from_fn(now: impl Fn() -> OffsetDateTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// The current time, normalised like every stored time.
    pub fn now(&self) -> OffsetDateTime {
        to_stored_precision((self.0)())
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// `t` in UTC, truncated to microseconds: PostgreSQL's `timestamptz`
/// precision, so comparisons with stored values are exact.
pub fn to_stored_precision(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn times_are_utc_microseconds() {
        let t = datetime!(2026-03-01 12:00:00.123456789 +02:00);
        let n = to_stored_precision(t);
        assert_eq!(n, datetime!(2026-03-01 10:00:00.123456 UTC));
        assert_eq!(n.offset(), time::UtcOffset::UTC);
        assert_eq!(Clock::fixed(t).now(), n);
    }

    #[test]
    fn the_system_clock_is_after_2020() {
        assert!(Clock::system().now() > datetime!(2020-01-01 00:00 UTC));
    }
}
