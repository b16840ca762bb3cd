//! When and how often to try a request again: the one retry loop of the
//! CLI's HTTP calls ([`RetryPolicy::run`]), bounded by a number of retries,
//! with exponential backoff and jitter, and at least what the server asked
//! for in `Retry-After` (capped). Which failures are worth another try is
//! the failure's to say ([`Retryable`]; the gateway's rules are in
//! `gateway.rs`). The schedule is pure arithmetic (the jitter is a
//! parameter); the loop sleeps on tokio's clock, so its tests pause it.

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// The first backoff step.
pub const BASE_DELAY: Duration = Duration::from_millis(500);
/// The longest backoff step.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured; a server asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// A failed attempt that may or may not be worth another one.
pub trait Retryable: fmt::Display {
    /// Whether the same request, sent again unchanged, is safe and may
    /// succeed.
    fn retryable(&self) -> bool;

    /// The wait the server asked for, if any.
    fn retry_after(&self) -> Option<Duration>;
}

/// A retry about to be made, for the caller to announce.
#[derive(Debug, Clone, Copy)]
pub struct NextTry<'a, E> {
    /// The failure of the attempt just made.
    pub error: &'a E,
    /// The wait before the next attempt.
    pub delay: Duration,
    /// The number of the next attempt (2 for the first retry).
    pub attempt: u32,
    /// The most attempts the policy allows.
    pub of: u32,
}

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

    /// Runs `attempt` until it succeeds, fails for good (a failure that is
    /// not [`Retryable::retryable`]), or the policy allows no more tries,
    /// waiting [`Self::delay`] between tries (fresh jitter each time) after
    /// telling `notice` about it. Returns the result and the number of
    /// attempts made.
    pub async fn run<T, E, F, Fut>(
        &self,
        mut attempt: F,
        mut notice: impl FnMut(NextTry<'_, E>),
    ) -> Result<(T, u32), (E, u32)>
    where
        E: Retryable,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match attempt().await {
                Ok(value) => return Ok((value, attempts)),
                Err(e) if !e.retryable() || !self.allows_another(attempts) => {
                    return Err((e, attempts));
                }
                Err(e) => {
                    let delay = self.delay(attempts, e.retry_after(), rand::random());
                    notice(NextTry {
                        error: &e,
                        delay,
                        attempt: attempts + 1,
                        of: self.retries.saturating_add(1),
                    });
                    tokio::time::sleep(delay).await;
                }
            }
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
    use crate::gateway::{AttemptError, Problem};
    use std::cell::RefCell;
    use tokio::time::Instant;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn answer(status: u16, retry_after: Option<u64>) -> AttemptError {
        AttemptError::Problem(Problem::from_parts(
            status,
            retry_after.map(Duration::from_secs),
            None,
            "{}",
        ))
    }

    /// Runs `policy` over a script of failures (then success), on the
    /// paused clock: the result, the attempts the script saw, the retries
    /// announced and the time the run took.
    async fn script(
        policy: RetryPolicy,
        failures: Vec<AttemptError>,
        forever: Option<AttemptError>,
    ) -> (Result<u32, u16>, u32, Vec<(u32, u32, Duration)>, Duration) {
        let started = Instant::now();
        let seen = RefCell::new(0u32);
        let mut left = failures.into_iter();
        let mut notices = Vec::new();
        let result = policy
            .run(
                || {
                    *seen.borrow_mut() += 1;
                    let next = left.next().or_else(|| forever.clone());
                    async move { next.map_or(Ok(()), Err) }
                },
                |next: NextTry<'_, AttemptError>| {
                    notices.push((next.attempt, next.of, next.delay));
                },
            )
            .await;
        let result = match result {
            Ok(((), attempts)) => Ok(attempts),
            Err((AttemptError::Problem(p), _)) => Err(p.status),
            Err((AttemptError::Transport(_), _)) => Err(0),
        };
        (result, seen.into_inner(), notices, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn server_errors_and_lost_answers_are_retried_until_one_gets_through() {
        let failures = vec![
            answer(500, None),
            answer(502, None),
            AttemptError::Transport("connection reset".into()),
            answer(504, None),
            answer(503, None),
            answer(408, None),
            answer(429, None),
        ];
        let (result, seen, notices, took) = script(RetryPolicy::new(7), failures, None).await;
        assert_eq!(result, Ok(8), "the eighth attempt succeeds");
        assert_eq!(seen, 8);
        let attempts: Vec<(u32, u32)> = notices.iter().map(|(a, of, _)| (*a, *of)).collect();
        assert_eq!(attempts, (2..=8).map(|a| (a, 8)).collect::<Vec<_>>());
        // Backoff of 0.5, 1, 2, 4, 8, 16, 30 s steps, each in its upper half.
        let announced: Duration = notices.iter().map(|(_, _, d)| *d).sum();
        // (tokio's timers round up to the millisecond.)
        assert!(
            took >= announced && took <= announced + ms(7),
            "it waits what it announces: {took:?} for {announced:?}"
        );
        assert!(took >= ms(30_750) && took <= ms(61_507), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_error_that_persists_ends_after_the_retries_allowed() {
        let (result, seen, notices, took) =
            script(RetryPolicy::new(3), vec![], Some(answer(500, None))).await;
        assert_eq!(result, Err(500));
        assert_eq!(seen, 4, "one attempt and three retries");
        assert_eq!(notices.len(), 3);
        assert!(took >= ms(1_750) && took <= ms(3_503), "{took:?}");
        let (result, seen, _, took) =
            script(RetryPolicy::new(0), vec![], Some(answer(503, None))).await;
        assert_eq!((result, seen, took), (Err(503), 1, Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_faults_are_final_at_once() {
        for status in [400, 401, 403, 404, 409, 413, 415, 422, 501, 505] {
            let (result, seen, notices, took) =
                script(RetryPolicy::new(5), vec![answer(status, None)], None).await;
            assert_eq!(result, Err(status));
            assert_eq!(seen, 1, "{status} is not retried");
            assert!(notices.is_empty() && took.is_zero(), "{status}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_for_up_to_its_cap() {
        let (result, _, notices, took) =
            script(RetryPolicy::new(5), vec![answer(503, Some(7))], None).await;
        assert_eq!(result, Ok(2));
        assert!(
            notices[0].2 >= Duration::from_secs(7) && took >= Duration::from_secs(7),
            "{notices:?}"
        );
        let (_, _, _, took) =
            script(RetryPolicy::new(5), vec![answer(500, Some(86_400))], None).await;
        assert!(
            took >= MAX_RETRY_AFTER && took <= MAX_RETRY_AFTER + MAX_RETRY_AFTER / 5 + ms(1),
            "{took:?}"
        );
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
