//! What the auth service measures beyond the per-call RPC metrics the
//! runtime records: logins by outcome, lockouts started, Argon2id time, and
//! the waits for a hashing slot (the semaphore that bounds memory). Every
//! label value is known in advance: each series exists at 0 from start-up,
//! so that `increase()` sees the first login or lockout of a kind.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use rpc_contracts::auth::ThrottleScope;
use std::fmt::Write as _;
use std::time::Duration;

/// How a login ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum LoginOutcome {
    /// A token was issued.
    Success,
    /// Unknown user, wrong password or disabled user.
    InvalidCredentials,
    /// Refused unchecked: the account or the address was blocked.
    Throttled,
    /// The service could not decide (database down, no hashing slot in time).
    Error,
}

impl LoginOutcome {
    /// Every outcome.
    pub const ALL: [Self; 4] = [
        Self::Success,
        Self::InvalidCredentials,
        Self::Throttled,
        Self::Error,
    ];
}

impl EncodeLabelValue for LoginOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Success => "success",
            Self::InvalidCredentials => "invalid_credentials",
            Self::Throttled => "throttled",
            Self::Error => "error",
        })
    }
}

/// Label set of [`AuthMetrics::login`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: LoginOutcome,
}

/// Every throttle scope, whose lockouts are counted.
const SCOPES: [ThrottleScope; 2] = [ThrottleScope::Account, ThrottleScope::Address];

/// Label set of [`AuthMetrics::lockout`]: `account` or `address`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: &'static str,
}

/// An Argon2id operation.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum HashOperation {
    /// Making a new hash (user added, password set, rehash).
    Hash,
    /// Checking a password against a hash (logins, the current password).
    Verify,
}

impl HashOperation {
    /// Every operation.
    pub const ALL: [Self; 2] = [Self::Hash, Self::Verify];
}

impl EncodeLabelValue for HashOperation {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Hash => "hash",
            Self::Verify => "verify",
        })
    }
}

/// Label set of [`AuthMetrics::hashed`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: HashOperation,
}

fn hash_histogram() -> Histogram {
    // 5 ms to ~20 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// The auth service's own metrics, under `tallyhouse_auth_*`.
#[derive(Clone)]
pub struct AuthMetrics {
    logins: Family<OutcomeLabels, Counter>,
    lockouts: Family<ScopeLabels, Counter>,
    hash_seconds: Family<OperationLabels, Histogram, fn() -> Histogram>,
    slot_wait_seconds: Histogram,
    slots_waiting: Gauge,
}

impl std::fmt::Debug for AuthMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthMetrics").finish_non_exhaustive()
    }
}

impl Default for AuthMetrics {
    fn default() -> Self {
        Self {
            logins: Family::default(),
            lockouts: Family::default(),
            hash_seconds: Family::new_with_constructor(hash_histogram),
            // 0.1 ms to ~26 s.
            slot_wait_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 19)),
            slots_waiting: Gauge::default(),
        }
    }
}

impl AuthMetrics {
    /// Metrics registered in `registry`, every labelled series at 0.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        for outcome in LoginOutcome::ALL {
            let _ = m.logins.get_or_create(&OutcomeLabels { outcome });
        }
        for scope in SCOPES {
            let _ = m.lockouts.get_or_create(&ScopeLabels {
                scope: crate::throttle::scope_name(scope),
            });
        }
        for operation in HashOperation::ALL {
            let _ = m.hash_seconds.get_or_create(&OperationLabels { operation });
        }
        let sub = registry.sub_registry_with_prefix("tallyhouse");
        sub.register(
            "auth_logins",
            "Login attempts, by outcome (success, invalid_credentials, throttled, error)",
            m.logins.clone(),
        );
        sub.register(
            "auth_lockouts",
            "Lockouts started (an account or a client address reached its lockout threshold), by scope",
            m.lockouts.clone(),
        );
        sub.register_with_unit(
            "auth_argon2",
            "Time spent computing Argon2id, by operation (hash, verify)",
            Unit::Seconds,
            m.hash_seconds.clone(),
        );
        sub.register_with_unit(
            "auth_hash_slot_wait",
            "Time a request waited for a hashing slot (the semaphore bounding Argon2id memory)",
            Unit::Seconds,
            m.slot_wait_seconds.clone(),
        );
        sub.register(
            "auth_hash_slot_waiters",
            "Requests waiting for a hashing slot now",
            m.slots_waiting.clone(),
        );
        m
    }

    /// Counts one login attempt ending in `outcome`.
    pub fn login(&self, outcome: LoginOutcome) {
        self.logins.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts one lockout started on `scope`.
    pub fn lockout(&self, scope: ThrottleScope) {
        self.lockouts
            .get_or_create(&ScopeLabels {
                scope: crate::throttle::scope_name(scope),
            })
            .inc();
    }

    /// Records one Argon2id computation.
    pub fn hashed(&self, operation: HashOperation, took: Duration) {
        self.hash_seconds
            .get_or_create(&OperationLabels { operation })
            .observe(took.as_secs_f64());
    }

    /// Records the wait for one hashing slot.
    pub fn slot_waited(&self, took: Duration) {
        self.slot_wait_seconds.observe(took.as_secs_f64());
    }

    /// One more (or, with `-1`, one fewer) request waiting for a slot.
    pub fn slot_waiters(&self, delta: i64) {
        self.slots_waiting.inc_by(delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_labelled_series_is_there_at_zero_from_the_start() {
        let mut registry = Registry::default();
        let _m = AuthMetrics::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for expected in [
            "tallyhouse_auth_logins_total{outcome=\"success\"} 0",
            "tallyhouse_auth_logins_total{outcome=\"invalid_credentials\"} 0",
            "tallyhouse_auth_logins_total{outcome=\"throttled\"} 0",
            "tallyhouse_auth_logins_total{outcome=\"error\"} 0",
            "tallyhouse_auth_lockouts_total{scope=\"account\"} 0",
            "tallyhouse_auth_lockouts_total{scope=\"address\"} 0",
            "tallyhouse_auth_argon2_seconds_count{operation=\"hash\"} 0",
            "tallyhouse_auth_argon2_seconds_count{operation=\"verify\"} 0",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn names_carry_units_and_typed_labels() {
        let mut registry = Registry::default();
        let m = AuthMetrics::register(&mut registry);
        m.login(LoginOutcome::InvalidCredentials);
        m.login(LoginOutcome::Success);
        m.lockout(ThrottleScope::Account);
        m.hashed(HashOperation::Verify, Duration::from_millis(40));
        m.slot_waited(Duration::from_millis(3));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for expected in [
            "tallyhouse_auth_logins_total{outcome=\"invalid_credentials\"} 1",
            "tallyhouse_auth_logins_total{outcome=\"success\"} 1",
            "tallyhouse_auth_lockouts_total{scope=\"account\"} 1",
            "tallyhouse_auth_argon2_seconds_count{operation=\"verify\"} 1",
            "tallyhouse_auth_hash_slot_wait_seconds_count 1",
            "tallyhouse_auth_hash_slot_waiters 0",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }
}
