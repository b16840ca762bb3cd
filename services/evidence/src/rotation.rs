//! Signing key rotation, without I/O: the Vault secret a rotated key lives
//! in ([`KeySecret`]), one rotation step as a function of that secret and
//! the time ([`step`]), and what a key set signs with and publishes at a
//! given time ([`KeySet`], swapped whole on reload in a [`KeyRing`]).
//!
//! The life of a key (docs/lifecycle.md, "Key rotation"): it is published
//! as `next` with the time it starts signing (`next_active_at`, some
//! minutes ahead, so every verifier has fetched it first); every instance
//! signs with it from that time on, by its own clock, without waiting for
//! anyone; the next step promotes it to the active key and keeps the key it
//! replaced in `previous_keys`, published until `publish_until` (the
//! tokens' lifetime plus leeway for access tokens; forever for receipt
//! keys, since receipts never expire); a step past `publish_until` drops
//! it. The services read and write the secret (KV v2, check-and-set on the
//! version read) and pass `now`.

use crate::keys::{KeyError, PublicKey, SigningKey};
use rpc_contracts::KeyId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::{Arc, RwLock};
use time::{Duration, OffsetDateTime};

/// A signing key's secret in Vault (KV v2), e.g. `jwt_key` or
/// `receipt_key`. Only `private_key_pem` is required: a secret written
/// before rotation existed is read as an active key of unknown age.
///
/// ```json
/// {
///   "private_key_pem": "-----BEGIN PRIVATE KEY-----…",
///   "active_since": "2026-03-01T12:00:00Z",
///   "next_private_key_pem": "-----BEGIN PRIVATE KEY-----…",
///   "next_active_at": "2026-05-30T12:10:00Z",
///   "previous_keys": [{"public_key_pem": "-----BEGIN PUBLIC KEY-----…",
///                      "retired_at": "2026-03-01T12:00:00Z",
///                      "publish_until": "2026-03-02T12:01:00Z"}]
/// }
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct KeySecret {
    /// The active key: PKCS#8 (or SEC1) PEM.
    pub private_key_pem: String,
    /// Since when the active key signs (absent: unknown; the first rotation
    /// step records its own time).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub active_since: Option<OffsetDateTime>,
    /// The next key, published now, signing from `next_active_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_private_key_pem: Option<String>,
    /// When the next key starts signing (required with it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub next_active_at: Option<OffsetDateTime>,
    /// Keys that signed before, still published for verification.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_keys: Vec<PreviousKey>,
    /// The format before rotation: SPKI PEM blocks of previous keys,
    /// published with no end. Read; a rotation step moves them into
    /// `previous_keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_public_keys_pem: Option<String>,
    /// Members this version does not know, kept as they are.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySecret")
            .field("active_since", &self.active_since)
            .field("next", &self.next_private_key_pem.is_some())
            .field("next_active_at", &self.next_active_at)
            .field("previous_keys", &self.previous_keys)
            .finish_non_exhaustive()
    }
}

/// A key that signed before, published until `publish_until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousKey {
    /// Its public half (SPKI PEM).
    pub public_key_pem: String,
    /// When it stopped being the active key in the secret.
    #[serde(with = "time::serde::rfc3339")]
    pub retired_at: OffsetDateTime,
    /// Until when it is published; `null`: forever (receipt keys).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub publish_until: Option<OffsetDateTime>,
}

/// Why a key secret cannot be used or rotated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// A key in the secret does not parse.
    #[error("{which}: {source}")]
    Key {
        /// Which key (`private_key_pem`, `next_private_key_pem`, `previous_keys[2]`...).
        which: String,
        /// Why.
        source: KeyError,
    },
    /// The members contradict each other.
    #[error("inconsistent key secret: {0}")]
    Inconsistent(String),
    /// The signer could not be made from a valid key (not expected).
    #[error("cannot use the key {kid}: {reason}")]
    Signer {
        /// The key's id.
        kid: String,
        /// Why.
        reason: String,
    },
}

fn key_error(which: impl Into<String>) -> impl FnOnce(KeyError) -> RotationError {
    let which = which.into();
    move |source| RotationError::Key { which, source }
}

/// A previous key, parsed.
#[derive(Debug, Clone)]
struct Previous {
    key: PublicKey,
    publish_until: Option<OffsetDateTime>,
    /// Read from the old `previous_public_keys_pem`.
    legacy: bool,
}

/// The keys of a secret, parsed and checked.
struct Parsed {
    active: SigningKey,
    next: Option<(SigningKey, OffsetDateTime)>,
    previous: Vec<Previous>,
}

impl KeySecret {
    /// A secret holding only `key` as the active key, active since `since`.
    pub fn new(key: &SigningKey, since: Option<OffsetDateTime>) -> Self {
        Self {
            private_key_pem: key.to_pkcs8_pem(),
            active_since: since,
            next_private_key_pem: None,
            next_active_at: None,
            previous_keys: Vec::new(),
            previous_public_keys_pem: None,
            other: serde_json::Map::new(),
        }
    }

    fn parse(&self) -> Result<Parsed, RotationError> {
        let active = SigningKey::from_pkcs8_pem(&self.private_key_pem)
            .map_err(key_error("private_key_pem"))?;
        let next = match (&self.next_private_key_pem, self.next_active_at) {
            (None, None) => None,
            (Some(pem), Some(at)) => {
                let key =
                    SigningKey::from_pkcs8_pem(pem).map_err(key_error("next_private_key_pem"))?;
                if key.public_key() == active.public_key() {
                    return Err(RotationError::Inconsistent(
                        "the next key is the active key".into(),
                    ));
                }
                Some((key, at))
            }
            (Some(_), None) => {
                return Err(RotationError::Inconsistent(
                    "next_private_key_pem without next_active_at".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(RotationError::Inconsistent(
                    "next_active_at without next_private_key_pem".into(),
                ));
            }
        };
        let mut previous = Vec::new();
        for (i, p) in self.previous_keys.iter().enumerate() {
            let key = PublicKey::from_spki_pem(&p.public_key_pem)
                .map_err(key_error(format!("previous_keys[{i}]")))?;
            previous.push(Previous {
                key,
                publish_until: p.publish_until,
                legacy: false,
            });
        }
        if let Some(pems) = &self.previous_public_keys_pem {
            for (i, block) in pem_blocks(pems, "PUBLIC KEY").iter().enumerate() {
                let key = PublicKey::from_spki_pem(block)
                    .map_err(key_error(format!("previous_public_keys_pem block {i}")))?;
                previous.push(Previous {
                    key,
                    publish_until: None,
                    legacy: true,
                });
            }
        }
        Ok(Parsed {
            active,
            next,
            previous,
        })
    }

    /// The id of the active key.
    pub fn active_key_id(&self) -> Result<KeyId, RotationError> {
        Ok(self.parse()?.active.public_key().key_id())
    }
}

/// What one rotation step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPolicy {
    /// A key is rotated once it has been active this long.
    pub rotate_after: Duration,
    /// A new key is published this long before it starts signing.
    pub activation_delay: Duration,
    /// How long a replaced key stays published after the step that
    /// replaced it: the tokens' lifetime plus leeway for access tokens;
    /// `None` (forever) for receipt keys.
    pub keep_replaced_for: Option<Duration>,
    /// Publish a next key now even if the active one is not due (not when
    /// the same step promoted one).
    pub force: bool,
}

/// One thing a rotation step did, for the job's report and the logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Change {
    /// The active key's age was unknown: counted from this step.
    Recorded {
        /// The active key.
        kid: KeyId,
        /// The time recorded as its start.
        #[serde(with = "time::serde::rfc3339")]
        active_since: OffsetDateTime,
    },
    /// Previous keys of the old format moved into `previous_keys`.
    Converted {
        /// The keys moved.
        kids: Vec<KeyId>,
    },
    /// The next key became the active key.
    Activated {
        /// The new active key.
        kid: KeyId,
        /// The key it replaced (now a previous key).
        replaced: KeyId,
        /// Until when the replaced key stays published (`None`: forever).
        #[serde(with = "time::serde::rfc3339::option")]
        replaced_until: Option<OffsetDateTime>,
    },
    /// A previous key is no longer published.
    Retired {
        /// The key.
        kid: KeyId,
    },
    /// A next key was made and published.
    Published {
        /// The new key.
        kid: KeyId,
        /// When it starts signing.
        #[serde(with = "time::serde::rfc3339")]
        active_at: OffsetDateTime,
        /// Why now: `due` or `forced`.
        reason: &'static str,
    },
}

/// The result of [`step`]: the secret to write (when `changes` is not
/// empty) and what changed.
#[derive(Debug, Clone)]
pub struct Step {
    /// The secret after the step.
    pub secret: KeySecret,
    /// What the step changed; empty: nothing to write.
    pub changes: Vec<Change>,
}

/// One rotation step as of `now`, idempotent: run twice with the same
/// `now`, the second changes nothing.
///
/// 1. `previous_public_keys_pem` (the old format) moves into
///    `previous_keys`, published as long as a replaced key is.
/// 2. A next key whose `next_active_at` has come becomes the active key;
///    the key it replaces is kept, published for `keep_replaced_for` from
///    `now` (every instance switched at `next_active_at` by its own clock;
///    counting from the later `now` covers one that switched late).
/// 3. Previous keys past `publish_until` are dropped.
/// 4. Without a next key: an active key of unknown age is recorded as
///    active since `now`; one active for `rotate_after` (or any, with
///    `force`, unless step 2 just promoted one) gets a next key from
///    `generate`, signing from `now + activation_delay`.
///
/// A secret with a key that does not parse, or a `next` without its time,
/// is refused whole: nothing is written over what cannot be read.
pub fn step(
    secret: &KeySecret,
    now: OffsetDateTime,
    policy: &RotationPolicy,
    generate: impl FnOnce() -> SigningKey,
) -> Result<Step, RotationError> {
    let parsed = secret.parse()?;
    let mut out = secret.clone();
    let mut changes = Vec::new();
    let replaced_until = policy.keep_replaced_for.map(|d| now + d);
    let active_kid = parsed.active.public_key().key_id();

    // 1. The old format.
    if out.previous_public_keys_pem.take().is_some() {
        let mut kids = Vec::new();
        for p in parsed.previous.iter().filter(|p| p.legacy) {
            let kid = p.key.key_id();
            let known = kid == active_kid
                || out.previous_keys.iter().any(|k| {
                    PublicKey::from_spki_pem(&k.public_key_pem).is_ok_and(|k| k.key_id() == kid)
                });
            if !known {
                out.previous_keys.push(PreviousKey {
                    public_key_pem: p.key.to_spki_pem(),
                    retired_at: now,
                    publish_until: replaced_until,
                });
                kids.push(kid);
            }
        }
        changes.push(Change::Converted { kids });
    }

    // 2. Promotion.
    let mut promoted = false;
    if let Some((next, at)) = &parsed.next
        && now >= *at
    {
        let kid = next.public_key().key_id();
        out.previous_keys.retain(|k| {
            PublicKey::from_spki_pem(&k.public_key_pem).map_or(true, |k| k.key_id() != kid)
        });
        out.previous_keys.push(PreviousKey {
            public_key_pem: parsed.active.public_key().to_spki_pem(),
            retired_at: now,
            publish_until: replaced_until,
        });
        out.private_key_pem = next.to_pkcs8_pem();
        out.active_since = Some(*at);
        out.next_private_key_pem = None;
        out.next_active_at = None;
        changes.push(Change::Activated {
            kid,
            replaced: active_kid.clone(),
            replaced_until,
        });
        promoted = true;
    }

    // 3. Retirement.
    let mut kept = Vec::with_capacity(out.previous_keys.len());
    for k in std::mem::take(&mut out.previous_keys) {
        match k.publish_until {
            Some(until) if until <= now => {
                let kid = PublicKey::from_spki_pem(&k.public_key_pem)
                    .map_err(key_error("previous key"))?
                    .key_id();
                changes.push(Change::Retired { kid });
            }
            _ => kept.push(k),
        }
    }
    out.previous_keys = kept;

    // 4. A next key when due.
    if out.next_private_key_pem.is_none() {
        match out.active_since {
            // (A promotion set it.)
            None => {
                out.active_since = Some(now);
                changes.push(Change::Recorded {
                    kid: active_kid,
                    active_since: now,
                });
            }
            Some(since) => {
                let due = now - since >= policy.rotate_after;
                let forced = policy.force && !promoted;
                if due || forced {
                    let key = generate();
                    let active_at = now + policy.activation_delay;
                    out.next_private_key_pem = Some(key.to_pkcs8_pem());
                    out.next_active_at = Some(active_at);
                    changes.push(Change::Published {
                        kid: key.public_key().key_id(),
                        active_at,
                        reason: if due { "due" } else { "forced" },
                    });
                }
            }
        }
    }
    Ok(Step {
        secret: out,
        changes,
    })
}

/// The keys of one secret as a service uses them: the signer of the active
/// key and of the next one, and the public keys to publish, each until when.
pub struct KeySet<S> {
    active: Arc<S>,
    active_kid: KeyId,
    active_since: Option<OffsetDateTime>,
    next: Option<(Arc<S>, KeyId, OffsetDateTime)>,
    /// Active first, then next, then the previous keys.
    published: Vec<(PublicKey, Option<OffsetDateTime>)>,
}

impl<S> fmt::Debug for KeySet<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("active", &self.active_kid.as_str())
            .field("active_since", &self.active_since)
            .field(
                "next",
                &self.next.as_ref().map(|(_, kid, at)| (kid.as_str(), at)),
            )
            .field("published", &self.published.len())
            .finish()
    }
}

impl<S> KeySet<S> {
    /// The keys of `secret`, with a signer made by `make` for the active
    /// and the next key.
    pub fn from_secret<E: fmt::Display>(
        secret: &KeySecret,
        make: impl Fn(&SigningKey) -> Result<S, E>,
    ) -> Result<Self, RotationError> {
        let parsed = secret.parse()?;
        let signer = |key: &SigningKey| {
            make(key).map(Arc::new).map_err(|e| RotationError::Signer {
                kid: key.public_key().key_id().to_string(),
                reason: e.to_string(),
            })
        };
        let active_public = parsed.active.public_key();
        let mut published = vec![(active_public.clone(), None)];
        let next = match &parsed.next {
            Some((key, at)) => {
                published.push((key.public_key(), None));
                Some((signer(key)?, key.public_key().key_id(), *at))
            }
            None => None,
        };
        for p in &parsed.previous {
            if !published.iter().any(|(k, _)| *k == p.key) {
                published.push((p.key.clone(), p.publish_until));
            }
        }
        Ok(Self {
            active: signer(&parsed.active)?,
            active_kid: active_public.key_id(),
            active_since: secret.active_since,
            next,
            published,
        })
    }

    /// One key, active since `since`, nothing else published.
    pub fn single(signer: S, public: PublicKey, since: Option<OffsetDateTime>) -> Self {
        Self {
            active: Arc::new(signer),
            active_kid: public.key_id(),
            active_since: since,
            next: None,
            published: vec![(public, None)],
        }
    }

    fn next_due(&self, now: OffsetDateTime) -> Option<&(Arc<S>, KeyId, OffsetDateTime)> {
        self.next.as_ref().filter(|(_, _, at)| now >= *at)
    }

    /// The signer to use at `now`: the next key's from its
    /// `next_active_at`, the active key's before.
    pub fn signer(&self, now: OffsetDateTime) -> &Arc<S> {
        self.next_due(now).map_or(&self.active, |(s, _, _)| s)
    }

    /// The id of the key that signs at `now`.
    pub fn signing_key_id(&self, now: OffsetDateTime) -> &KeyId {
        self.next_due(now)
            .map_or(&self.active_kid, |(_, kid, _)| kid)
    }

    /// Since when the key that signs at `now` has signed (`None`: unknown).
    pub fn signing_since(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        self.next_due(now)
            .map_or(self.active_since, |(_, _, at)| Some(*at))
    }

    /// The keys published at `now`: the active one, the next one, and the
    /// previous ones not past their `publish_until`.
    pub fn published(&self, now: OffsetDateTime) -> impl Iterator<Item = &PublicKey> {
        self.published
            .iter()
            .filter(move |(_, until)| until.is_none_or(|u| now < u))
            .map(|(k, _)| k)
    }

    /// [`KeySet::published`] as JWKs (`kty`, `crv`, `x`, `y`, `kid`, `use`
    /// "sig", `alg` "ES256").
    pub fn jwks(&self, now: OffsetDateTime) -> Vec<serde_json::Value> {
        self.published(now).map(published_jwk).collect()
    }
}

/// The JWK of a platform signing key: `kty`, `crv`, `x`, `y`, `kid`, `use`
/// "sig", `alg` "ES256".
pub fn published_jwk(key: &PublicKey) -> serde_json::Value {
    let mut jwk = key.jwk();
    if let Some(members) = jwk.as_object_mut() {
        members.insert("kid".into(), key.key_id().as_str().into());
        members.insert("use".into(), "sig".into());
        members.insert("alg".into(), "ES256".into());
    }
    jwk
}

/// A [`KeySet`] replaced whole when the secret is read again: readers take
/// the current set (an `Arc`) and never wait on a reload.
pub struct KeyRing<S> {
    current: RwLock<Arc<KeySet<S>>>,
}

impl<S> fmt::Debug for KeyRing<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyRing").field(&*self.current()).finish()
    }
}

impl<S> KeyRing<S> {
    /// A ring holding `set`.
    pub fn new(set: KeySet<S>) -> Self {
        Self {
            current: RwLock::new(Arc::new(set)),
        }
    }

    /// The current set.
    pub fn current(&self) -> Arc<KeySet<S>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `set` in place; answers whether the published keys or the
    /// next key's time changed (worth a log line).
    pub fn replace(&self, set: KeySet<S>) -> bool {
        let fingerprint = |s: &KeySet<S>| {
            (
                s.published
                    .iter()
                    .map(|(k, until)| (k.key_id(), *until))
                    .collect::<Vec<_>>(),
                s.next.as_ref().map(|(_, kid, at)| (kid.clone(), *at)),
                s.active_since,
            )
        };
        let set = Arc::new(set);
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = fingerprint(&current) != fingerprint(&set);
        *current = set;
        changed
    }
}

/// The PEM blocks labelled `label` in `text`, each with its armour.
pub fn pem_blocks(text: &str, label: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let Some(stop) = rest[start..].find(&end) else {
            break;
        };
        let stop = start + stop + end.len();
        blocks.push(rest[start..stop].to_owned());
        rest = &rest[stop..];
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    fn policy(keep: Option<Duration>) -> RotationPolicy {
        RotationPolicy {
            rotate_after: Duration::days(90),
            activation_delay: Duration::minutes(10),
            keep_replaced_for: keep,
            force: false,
        }
    }

    fn kid(key: &SigningKey) -> KeyId {
        key.public_key().key_id()
    }

    fn run(secret: &KeySecret, now: OffsetDateTime, p: &RotationPolicy) -> Step {
        step(secret, now, p, SigningKey::generate).unwrap()
    }

    fn kids(set: &KeySet<()>, now: OffsetDateTime) -> Vec<KeyId> {
        set.published(now).map(PublicKey::key_id).collect()
    }

    fn set(secret: &KeySecret) -> KeySet<()> {
        KeySet::from_secret(secret, |_| Ok::<_, String>(())).unwrap()
    }

    #[test]
    fn a_token_key_is_published_then_signs_then_is_kept_for_the_token_lifetime_then_retired() {
        let keep = Duration::seconds(86_400 + 60);
        let p = policy(Some(keep));
        let first = SigningKey::generate();
        let secret = KeySecret::new(&first, None);

        // First sight: the age is recorded, nothing else.
        let s1 = run(&secret, T0, &p);
        assert_eq!(
            s1.changes,
            [Change::Recorded {
                kid: kid(&first),
                active_since: T0
            }]
        );
        assert!(run(&s1.secret, T0, &p).changes.is_empty(), "idempotent");
        // Not due a day before 90 days.
        assert!(
            run(&s1.secret, T0 + Duration::days(89), &p)
                .changes
                .is_empty()
        );

        // Due: a next key is published, signing ten minutes later.
        let t1 = T0 + Duration::days(90);
        let s2 = run(&s1.secret, t1, &p);
        let [
            Change::Published {
                kid: next,
                active_at,
                reason,
            },
        ] = s2.changes.as_slice()
        else {
            panic!("{:?}", s2.changes);
        };
        assert_eq!((*active_at, *reason), (t1 + Duration::minutes(10), "due"));
        assert!(run(&s2.secret, t1, &p).changes.is_empty(), "idempotent");
        let keys = set(&s2.secret);
        assert_eq!(kids(&keys, t1), [kid(&first), next.clone()]);
        assert_eq!(keys.signing_key_id(t1), &kid(&first));
        // Every instance switches at next_active_at, before any promotion.
        assert_eq!(keys.signing_key_id(*active_at), next);
        assert_eq!(keys.signing_since(*active_at), Some(*active_at));

        // Not yet: a step before the time changes nothing.
        assert!(
            run(&s2.secret, t1 + Duration::minutes(9), &p)
                .changes
                .is_empty()
        );
        // Promotion.
        let t2 = t1 + Duration::minutes(11);
        let s3 = run(&s2.secret, t2, &p);
        assert_eq!(
            s3.changes,
            [Change::Activated {
                kid: next.clone(),
                replaced: kid(&first),
                replaced_until: Some(t2 + keep),
            }]
        );
        assert_eq!(s3.secret.active_since, Some(*active_at));
        assert!(s3.secret.next_private_key_pem.is_none());
        assert!(run(&s3.secret, t2, &p).changes.is_empty(), "idempotent");
        let keys = set(&s3.secret);
        assert_eq!(keys.signing_key_id(t2), next);
        assert_eq!(kids(&keys, t2), [next.clone(), kid(&first)]);
        // Instances stop publishing it at publish_until by their own clock.
        assert_eq!(kids(&keys, t2 + keep), std::slice::from_ref(next));

        // Retirement once its tokens have all expired.
        assert!(
            run(&s3.secret, t2 + keep - Duration::seconds(1), &p)
                .changes
                .is_empty()
        );
        let s4 = run(&s3.secret, t2 + keep, &p);
        assert_eq!(s4.changes, [Change::Retired { kid: kid(&first) }]);
        assert!(s4.secret.previous_keys.is_empty());
        assert!(
            run(&s4.secret, t2 + keep, &p).changes.is_empty(),
            "idempotent"
        );
    }

    #[test]
    fn a_receipt_key_is_never_retired() {
        let p = policy(None);
        let first = SigningKey::generate();
        let s = run(
            &KeySecret::new(&first, Some(T0)),
            T0 + Duration::days(90),
            &p,
        );
        let t = T0 + Duration::days(91);
        let s = run(&s.secret, t, &p);
        assert!(matches!(
            s.changes.as_slice(),
            [Change::Activated {
                replaced_until: None,
                ..
            }]
        ));
        let far = t + Duration::days(365 * 30);
        let later = run(&s.secret, far, &p);
        // Due again after 90 days; the first key stays.
        assert!(matches!(
            later.changes.as_slice(),
            [Change::Published { .. }]
        ));
        assert_eq!(later.secret.previous_keys.len(), 1);
        assert!(kids(&set(&later.secret), far).contains(&kid(&first)));
    }

    #[test]
    fn a_late_step_promotes_and_publishes_again_when_the_promoted_key_is_due() {
        let p = policy(Some(Duration::days(1)));
        let first = SigningKey::generate();
        let s = run(
            &KeySecret::new(&first, Some(T0)),
            T0 + Duration::days(90),
            &p,
        );
        // Ten days late: the promoted key signed from its time, not due yet.
        let s10 = run(&s.secret, T0 + Duration::days(100), &p);
        assert!(matches!(s10.changes.as_slice(), [Change::Activated { .. }]));
        // A year late: every instance has signed with it for a year, so it
        // is due at once.
        let late = T0 + Duration::days(455);
        let s = run(&s.secret, late, &p);
        assert!(
            matches!(
                s.changes.as_slice(),
                [
                    Change::Activated { .. },
                    Change::Published { reason: "due", .. }
                ]
            ),
            "{:?}",
            s.changes
        );
        assert!(run(&s.secret, late, &p).changes.is_empty());
    }

    #[test]
    fn force_publishes_a_key_that_is_not_due_once() {
        let p = RotationPolicy {
            force: true,
            ..policy(None)
        };
        let s = run(&KeySecret::new(&SigningKey::generate(), Some(T0)), T0, &p);
        assert!(matches!(
            s.changes.as_slice(),
            [Change::Published {
                reason: "forced",
                ..
            }]
        ));
        assert!(
            run(&s.secret, T0, &p).changes.is_empty(),
            "a next key is pending"
        );
    }

    #[test]
    fn the_old_format_is_read_and_converted() {
        let active = SigningKey::generate();
        let old = SigningKey::generate().public_key();
        let json = serde_json::json!({
            "private_key_pem": active.to_pkcs8_pem(),
            "previous_public_keys_pem": format!("{}\n{}", old.to_spki_pem(), active.public_key().to_spki_pem()),
            "comment": "kept",
        });
        let secret: KeySecret = serde_json::from_value(json).unwrap();
        assert_eq!(
            kids(&set(&secret), T0),
            [active.public_key().key_id(), old.key_id()]
        );
        let keep = Duration::days(1);
        let s = run(&secret, T0, &policy(Some(keep)));
        assert_eq!(
            s.changes,
            [
                Change::Converted {
                    kids: vec![old.key_id()]
                },
                Change::Recorded {
                    kid: kid(&active),
                    active_since: T0
                }
            ]
        );
        let written = serde_json::to_value(&s.secret).unwrap();
        assert!(written.get("previous_public_keys_pem").is_none());
        assert_eq!(written["comment"], "kept");
        assert_eq!(
            written["previous_keys"][0]["publish_until"],
            "2026-01-02T00:00:00Z"
        );
        // Round trip.
        let back: KeySecret = serde_json::from_value(written).unwrap();
        assert_eq!(back.previous_keys, s.secret.previous_keys);
        assert!(run(&back, T0, &policy(Some(keep))).changes.is_empty());
    }

    #[test]
    fn a_secret_that_cannot_be_read_is_refused_whole() {
        let key = SigningKey::generate();
        let mut s = KeySecret::new(&key, Some(T0));
        s.next_private_key_pem = Some(SigningKey::generate().to_pkcs8_pem());
        assert!(matches!(
            step(&s, T0, &policy(None), SigningKey::generate),
            Err(RotationError::Inconsistent(_))
        ));
        s.next_active_at = Some(T0);
        s.next_private_key_pem = Some("garbage".into());
        assert!(matches!(
            step(&s, T0, &policy(None), SigningKey::generate),
            Err(RotationError::Key { .. })
        ));
        s.next_private_key_pem = Some(key.to_pkcs8_pem());
        assert!(step(&s, T0, &policy(None), SigningKey::generate).is_err());
        let debug = format!("{s:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }

    #[test]
    fn a_ring_swaps_whole_sets() {
        let a = SigningKey::generate();
        let ring = KeyRing::new(set(&KeySecret::new(&a, Some(T0))));
        assert!(!ring.replace(set(&KeySecret::new(&a, Some(T0)))));
        let b = SigningKey::generate();
        assert!(ring.replace(set(&KeySecret::new(&b, Some(T0)))));
        assert_eq!(ring.current().signing_key_id(T0), &kid(&b));
    }
}
