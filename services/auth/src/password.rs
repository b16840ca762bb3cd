//! Passwords: Argon2id at the OWASP parameters (m = 19,456 KiB, t = 2,
//! p = 1), stored as PHC strings. Every hash and verification runs on the
//! blocking pool and only while holding a [`HashSlot`] (a semaphore permit),
//! so a flood of logins queues instead of allocating 19 MiB per request.
//! Unknown users are checked against a dummy hash made at start-up, so a
//! login costs the same whether the name exists or not.

use crate::error::AuthError;
use crate::metrics::{AuthMetrics, HashOperation};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rpc_contracts::auth::Password;
use secrecy::{ExposeSecret as _, SecretString};
use std::sync::Arc;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// Memory cost in KiB (19 MiB, OWASP's Argon2id recommendation).
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
/// Passes over memory.
pub const ARGON2_ITERATIONS: u32 = 2;
/// Lanes.
pub const ARGON2_PARALLELISM: u32 = 1;
/// Shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted, in bytes (Argon2 takes any length; the bound
/// keeps requests small).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The outcome of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    /// The password matches (always `false` against the dummy hash).
    pub matches: bool,
    /// The stored hash uses other parameters than today's: rehash it.
    pub outdated: bool,
}

struct Inner {
    argon2: Argon2<'static>,
    slots: Semaphore,
    dummy_hash: String,
    metrics: AuthMetrics,
}

/// The password hasher of one auth instance.
#[derive(Clone)]
pub struct Passwords {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("slots_free", &self.inner.slots.available_permits())
            .finish_non_exhaustive()
    }
}

/// Argon2id with the service's parameters.
pub fn argon2() -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(
        ARGON2_MEMORY_KIB,
        ARGON2_ITERATIONS,
        ARGON2_PARALLELISM,
        None,
    )
    .map_err(|e| AuthError::Internal(format!("Argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

impl Passwords {
    /// A hasher allowing `slots` Argon2id computations at once; makes the
    /// dummy hash (one computation) before answering.
    pub async fn new(slots: usize, metrics: AuthMetrics) -> Result<Self, AuthError> {
        let argon2 = argon2()?;
        let dummy_password = SecretString::from(uuid::Uuid::new_v4().to_string());
        let hasher = argon2.clone();
        let dummy_hash =
            tokio::task::spawn_blocking(move || hash_with(&hasher, dummy_password.expose_secret()))
                .await
                .map_err(|e| AuthError::Internal(format!("hashing task: {e}")))??;
        Ok(Self {
            inner: Arc::new(Inner {
                argon2,
                slots: Semaphore::new(slots.max(1)),
                dummy_hash,
                metrics,
            }),
        })
    }

    /// Waits for a hashing slot until `deadline` (the caller's): past it,
    /// [`AuthError::Busy`].
    pub async fn slot(&self, deadline: Instant) -> Result<HashSlot<'_>, AuthError> {
        let metrics = &self.inner.metrics;
        let started = Instant::now();
        metrics.slot_waiters(1);
        let acquired = tokio::time::timeout_at(deadline, self.inner.slots.acquire()).await;
        metrics.slot_waiters(-1);
        metrics.slot_waited(started.elapsed());
        match acquired {
            Ok(Ok(permit)) => Ok(HashSlot {
                passwords: self,
                _permit: permit,
            }),
            Ok(Err(_closed)) => Err(AuthError::Busy("stopping")),
            Err(_elapsed) => Err(AuthError::Busy("no hashing slot before the deadline")),
        }
    }
}

/// Permission to run Argon2id: one of the semaphore's permits, released
/// when dropped.
pub struct HashSlot<'a> {
    passwords: &'a Passwords,
    _permit: SemaphorePermit<'a>,
}

impl HashSlot<'_> {
    /// A new PHC string for `password`, with a fresh random salt.
    pub async fn hash(&self, password: &Password) -> Result<String, AuthError> {
        let inner = &self.passwords.inner;
        let argon2 = inner.argon2.clone();
        let secret = SecretString::from(password.expose().to_owned());
        let started = std::time::Instant::now();
        let hash = tokio::task::spawn_blocking(move || hash_with(&argon2, secret.expose_secret()))
            .await
            .map_err(|e| AuthError::Internal(format!("hashing task: {e}")))??;
        inner.metrics.hashed(HashOperation::Hash, started.elapsed());
        Ok(hash)
    }

    /// Checks `password` against `stored`, or against the dummy hash when
    /// there is no stored hash (unknown user), which costs the same and
    /// never matches. A stored hash that does not parse counts as a
    /// mismatch (and is logged).
    pub async fn verify(
        &self,
        password: &Password,
        stored: Option<&str>,
    ) -> Result<Verification, AuthError> {
        let inner = &self.passwords.inner;
        let real = stored.is_some();
        let phc = stored.unwrap_or(&inner.dummy_hash).to_owned();
        let argon2 = inner.argon2.clone();
        let secret = SecretString::from(password.expose().to_owned());
        let started = std::time::Instant::now();
        let verification = tokio::task::spawn_blocking(move || {
            let parsed = match PasswordHash::new(&phc) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "a stored password hash does not parse");
                    return Verification {
                        matches: false,
                        outdated: true,
                    };
                }
            };
            let matches = argon2
                .verify_password(secret.expose_secret().as_bytes(), &parsed)
                .is_ok();
            Verification {
                matches,
                outdated: !uses_current_parameters(&parsed),
            }
        })
        .await
        .map_err(|e| AuthError::Internal(format!("verification task: {e}")))?;
        inner
            .metrics
            .hashed(HashOperation::Verify, started.elapsed());
        Ok(Verification {
            matches: real && verification.matches,
            outdated: verification.outdated,
        })
    }
}

fn hash_with(argon2: &Argon2<'_>, password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Internal(format!("Argon2id hashing failed: {e}")))
}

/// Whether `hash` is Argon2id v19 with today's m, t and p.
fn uses_current_parameters(hash: &PasswordHash<'_>) -> bool {
    let Ok(params) = Params::try_from(hash) else {
        return false;
    };
    hash.algorithm.as_str() == "argon2id"
        && hash.version == Some(0x13)
        && params.m_cost() == ARGON2_MEMORY_KIB
        && params.t_cost() == ARGON2_ITERATIONS
        && params.p_cost() == ARGON2_PARALLELISM
}

/// Checks a new password: at least [`MIN_PASSWORD_CHARS`] characters, at
/// most [`MAX_PASSWORD_BYTES`] bytes, not the username itself.
pub fn check_new_password(password: &Password, username: &str) -> Result<(), AuthError> {
    let text = password.expose();
    if text.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AuthError::Invalid(format!(
            "the password must have at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if text.len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::Invalid(format!(
            "the password must not be longer than {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    if text.trim().to_lowercase() == username {
        return Err(AuthError::Invalid(
            "the password must not be the username".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(s: &str) -> Password {
        Password(s.to_owned())
    }

    #[tokio::test]
    async fn hashes_are_argon2id_at_owasp_parameters_and_verify() {
        let passwords = Passwords::new(1, AuthMetrics::default()).await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let slot = passwords.slot(deadline).await.unwrap();
        let hash = slot.hash(&pw("correct horse battery")).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let ok = slot
            .verify(&pw("correct horse battery"), Some(&hash))
            .await
            .unwrap();
        assert_eq!(
            ok,
            Verification {
                matches: true,
                outdated: false
            }
        );
        let wrong = slot.verify(&pw("wrong horse battery"), Some(&hash)).await;
        assert!(!wrong.unwrap().matches);
        // No stored hash: the dummy is checked, and nothing ever matches.
        let unknown = slot.verify(&pw("correct horse battery"), None).await;
        assert!(!unknown.unwrap().matches);
        // Garbage in the database is a mismatch, not a crash.
        let garbage = slot.verify(&pw("x"), Some("not a hash")).await.unwrap();
        assert!(!garbage.matches && garbage.outdated);
    }

    #[tokio::test]
    async fn weaker_stored_hashes_are_flagged_for_rehash() {
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).unwrap(),
        );
        let hash = hash_with(&weak, "correct horse battery").unwrap();
        let passwords = Passwords::new(1, AuthMetrics::default()).await.unwrap();
        let slot = passwords
            .slot(Instant::now() + std::time::Duration::from_secs(60))
            .await
            .unwrap();
        let v = slot
            .verify(&pw("correct horse battery"), Some(&hash))
            .await
            .unwrap();
        assert_eq!(
            v,
            Verification {
                matches: true,
                outdated: true
            }
        );
    }

    #[tokio::test]
    async fn a_slot_is_refused_past_the_deadline_while_all_are_taken() {
        let passwords = Passwords::new(1, AuthMetrics::default()).await.unwrap();
        let far = Instant::now() + std::time::Duration::from_secs(60);
        let held = passwords.slot(far).await.unwrap();
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        assert!(matches!(
            passwords.slot(soon).await,
            Err(AuthError::Busy(_))
        ));
        drop(held);
        assert!(passwords.slot(far).await.is_ok());
    }

    #[test]
    fn new_passwords_are_checked() {
        assert!(check_new_password(&pw("twelve chars"), "alice").is_ok());
        assert!(check_new_password(&pw("short"), "alice").is_err());
        // Characters, not bytes: twelve accented letters pass.
        assert!(check_new_password(&pw("éééééééééééé"), "alice").is_ok());
        assert!(check_new_password(&pw("ééééé"), "alice").is_err());
        assert!(check_new_password(&pw(&"x".repeat(MAX_PASSWORD_BYTES + 1)), "alice").is_err());
        assert!(check_new_password(&pw("alice.example"), "alice.example").is_err());
    }
}
