//! The login throttling policy: after a few failures an account (any
//! username string, known or not) or a client address waits a doubling
//! delay before its next attempt is considered; after more, it is locked
//! out for a while. Pure functions of the failure count and `now`; the
//! state lives in the `login_throttles` table (see `store.rs`), shared by
//! every instance.

use rpc_contracts::auth::ThrottleScope;
use time::{Duration, OffsetDateTime};

/// The policy of one scope (accounts, or client addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopePolicy {
    /// Failures answered without delay; the next ones wait (0: no delays).
    pub delay_after_failures: u32,
    /// The failure that starts a lockout (0: no lockouts). Every further
    /// failure, once a lockout has ended, starts another.
    pub lockout_after_failures: u32,
    /// How long a lockout lasts.
    pub lockout: Duration,
    /// Failures older than this are forgotten: the next failure counts as
    /// the first.
    pub failure_reset: Duration,
}

/// The whole policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Per username.
    pub account: ScopePolicy,
    /// Per client address (higher thresholds: addresses can be shared).
    pub address: ScopePolicy,
    /// The first delay; each further failure doubles it.
    pub delay_base: Duration,
    /// The longest delay.
    pub delay_max: Duration,
}

/// What a failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// No attempt is considered before this.
    pub until: OffsetDateTime,
    /// A lockout rather than a progressive delay.
    pub locked: bool,
}

impl ThrottlePolicy {
    /// The policy of `scope`.
    pub fn scope(&self, scope: ThrottleScope) -> &ScopePolicy {
        match scope {
            ThrottleScope::Account => &self.account,
            ThrottleScope::Address => &self.address,
        }
    }

    /// The block that the `failures`-th failure in a row, at `now`, puts on
    /// `scope`: nothing, a delay (`delay_base · 2^k`, capped at
    /// `delay_max`), or a lockout.
    pub fn block_after(
        &self,
        scope: ThrottleScope,
        failures: u32,
        now: OffsetDateTime,
    ) -> Option<Block> {
        let policy = self.scope(scope);
        if policy.lockout_after_failures > 0 && failures >= policy.lockout_after_failures {
            return Some(Block {
                until: now + policy.lockout,
                locked: true,
            });
        }
        if policy.delay_after_failures == 0 || failures <= policy.delay_after_failures {
            return None;
        }
        let doublings = (failures - policy.delay_after_failures - 1).min(40);
        let delay = self
            .delay_base
            .checked_mul(1_i32 << doublings.min(30))
            .unwrap_or(self.delay_max)
            .min(self.delay_max);
        if delay <= Duration::ZERO {
            return None;
        }
        Some(Block {
            until: now + delay,
            locked: false,
        })
    }

    /// Checks that the numbers make sense together.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [("account", &self.account), ("address", &self.address)] {
            if p.lockout_after_failures > 0
                && p.delay_after_failures > 0
                && p.lockout_after_failures <= p.delay_after_failures
            {
                return Err(format!(
                    "{name}: the lockout threshold ({}) must be above the delay threshold ({})",
                    p.lockout_after_failures, p.delay_after_failures
                ));
            }
            if p.lockout_after_failures > 0 && p.lockout <= Duration::ZERO {
                return Err(format!("{name}: a lockout must last at least a second"));
            }
            if p.failure_reset <= Duration::ZERO {
                return Err(format!("{name}: the failure reset must be positive"));
            }
        }
        if self.delay_max < self.delay_base {
            return Err("the longest delay must not be shorter than the first".into());
        }
        Ok(())
    }
}

/// Whole seconds until `until`, rounded up, at least 1: what a throttled
/// caller is told to wait.
pub fn retry_after_secs(until: OffsetDateTime, now: OffsetDateTime) -> u64 {
    let left = until - now;
    let whole = left.whole_seconds().max(0) as u64;
    let rounded = if left.subsec_nanoseconds() > 0 {
        whole + 1
    } else {
        whole
    };
    rounded.max(1)
}

/// The scope's name in the database and in metrics.
pub const fn scope_name(scope: ThrottleScope) -> &'static str {
    match scope {
        ThrottleScope::Account => "account",
        ThrottleScope::Address => "address",
    }
}

/// The scope named `name` in the database.
pub fn scope_from_name(name: &str) -> Option<ThrottleScope> {
    match name {
        "account" => Some(ThrottleScope::Account),
        "address" => Some(ThrottleScope::Address),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            account: ScopePolicy {
                delay_after_failures: 3,
                lockout_after_failures: 10,
                lockout: Duration::minutes(15),
                failure_reset: Duration::hours(12),
            },
            address: ScopePolicy {
                delay_after_failures: 20,
                lockout_after_failures: 100,
                lockout: Duration::minutes(15),
                failure_reset: Duration::hours(1),
            },
            delay_base: Duration::seconds(1),
            delay_max: Duration::seconds(60),
        }
    }

    #[test]
    fn delays_double_from_the_fourth_failure_then_the_tenth_locks() {
        let now = datetime!(2026-03-01 09:00 UTC);
        let p = policy();
        let delays: Vec<Option<(i64, bool)>> = (1..=11)
            .map(|n| {
                p.block_after(ThrottleScope::Account, n, now)
                    .map(|b| ((b.until - now).whole_seconds(), b.locked))
            })
            .collect();
        assert_eq!(
            delays,
            vec![
                None,
                None,
                None,
                Some((1, false)),
                Some((2, false)),
                Some((4, false)),
                Some((8, false)),
                Some((16, false)),
                Some((32, false)),
                Some((900, true)),
                Some((900, true)),
            ]
        );
    }

    #[test]
    fn delays_are_capped_and_addresses_have_their_own_thresholds() {
        let now = datetime!(2026-03-01 09:00 UTC);
        let mut p = policy();
        p.account.lockout_after_failures = 0;
        let far = p.block_after(ThrottleScope::Account, 1_000, now).unwrap();
        assert_eq!(far.until - now, Duration::seconds(60));
        assert!(!far.locked);
        assert_eq!(p.block_after(ThrottleScope::Address, 20, now), None);
        assert_eq!(
            p.block_after(ThrottleScope::Address, 21, now),
            Some(Block {
                until: now + Duration::seconds(1),
                locked: false
            })
        );
        assert!(
            p.block_after(ThrottleScope::Address, 100, now)
                .unwrap()
                .locked
        );
        p.address.delay_after_failures = 0;
        p.address.lockout_after_failures = 0;
        assert_eq!(p.block_after(ThrottleScope::Address, 5_000, now), None);
    }

    #[test]
    fn inconsistent_policies_are_refused() {
        assert!(policy().validate().is_ok());
        let mut p = policy();
        p.account.lockout_after_failures = 3;
        assert!(p.validate().unwrap_err().contains("account"));
        let mut p = policy();
        p.delay_max = Duration::milliseconds(10);
        assert!(p.validate().is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let now = datetime!(2026-03-01 09:00 UTC);
        assert_eq!(retry_after_secs(now + Duration::milliseconds(200), now), 1);
        assert_eq!(retry_after_secs(now + Duration::seconds(2), now), 2);
        assert_eq!(
            retry_after_secs(now + Duration::milliseconds(2_001), now),
            3
        );
        assert_eq!(retry_after_secs(now - Duration::seconds(5), now), 1);
        assert_eq!(
            scope_from_name(scope_name(ThrottleScope::Address)),
            Some(ThrottleScope::Address)
        );
    }
}
