//! When to try a request again: exponential backoff with jitter, at least
//! what the server asked for in `Retry-After`. Pure arithmetic (the jitter
//! is a parameter), so the schedule is tested without sleeping.

use std::time::Duration;

/// The first backoff step.
pub const BASE_DELAY: Duration = Duration::from_millis(500);
/// The longest backoff step.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured; a server asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// How many times to try again, and how long to wait in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub retries: u32,
    /// The first backoff step; each next one doubles, up to `max_delay`.
    pub base_delay: Duration,
    /// The longest backoff step.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// `retries` retries with the default backoff.
    pub fn new(retries: u32) -> Self {
        Self {
            retries,
            base_delay: BASE_DELAY,
            max_delay: MAX_DELAY,
        }
    }

    /// Whether another attempt is allowed after `failures` failed ones.
    pub fn allows_another(&self, failures: u32) -> bool {
        failures <= self.retries
    }

    /// The wait after the `failures`-th failed attempt (1 for the first).
    /// `jitter` in `[0, 1]` picks a point in the upper half of the step
    /// ("equal jitter": never zero, never in lock step with other
    /// clients); with a `Retry-After` the wait is at least that long (capped
    /// at [`MAX_RETRY_AFTER`]), plus up to a fifth of it.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let exponent = failures.saturating_sub(1).min(31);
        let step = self
            .base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let backoff = step / 2 + step.mul_f64(jitter / 2.0);
        match retry_after {
            Some(asked) => {
                let asked = asked.min(MAX_RETRY_AFTER);
                (asked + asked.mul_f64(jitter / 5.0)).max(backoff)
            }
            None => backoff,
        }
    }
}

/// Reads a `Retry-After` value given in seconds (the HTTP-date form is not
/// used by the gateway and is ignored).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_within_the_upper_half_of_each_step() {
        let p = RetryPolicy::new(10);
        let steps = [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000];
        for (i, step) in steps.into_iter().enumerate() {
            let failures = i as u32 + 1;
            assert_eq!(p.delay(failures, None, 0.0), ms(step / 2), "{failures}");
            assert_eq!(p.delay(failures, None, 1.0), ms(step), "{failures}");
            let mid = p.delay(failures, None, 0.5);
            assert!(mid > ms(step / 2) && mid < ms(step), "{failures}: {mid:?}");
        }
        // Far past the cap, and nonsense jitter, stay bounded.
        assert_eq!(p.delay(u32::MAX, None, 1.0), MAX_DELAY);
        assert_eq!(p.delay(3, None, f64::NAN), ms(1_000));
        assert_eq!(p.delay(3, None, 7.0), ms(2_000));
    }

    #[test]
    fn retry_after_is_a_floor_capped_and_jittered() {
        let p = RetryPolicy::new(5);
        let five = Duration::from_secs(5);
        assert_eq!(p.delay(1, Some(five), 0.0), five);
        assert_eq!(p.delay(1, Some(five), 1.0), Duration::from_secs(6));
        // A longer backoff wins over a short Retry-After.
        assert_eq!(p.delay(8, Some(Duration::from_secs(1)), 0.0), ms(15_000));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(86_400)), 0.0),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn the_number_of_attempts_is_one_plus_the_retries() {
        let p = RetryPolicy::new(2);
        assert!(p.allows_another(1));
        assert!(p.allows_another(2));
        assert!(!p.allows_another(3));
        assert!(!RetryPolicy::new(0).allows_another(1));
    }

    #[test]
    fn retry_after_seconds_parse_and_dates_do_not() {
        assert_eq!(parse_retry_after("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
