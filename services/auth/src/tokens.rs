//! Access tokens: compact JWS (ES256) carrying [`AccessClaims`], header
//! `{"typ":"JWT","alg":"ES256","kid":<RFC 7638 thumbprint>}`. Made the way
//! `evidence::ReceiptSigner` makes receipts: each key is parsed once into an
//! aws-lc-rs key pair with its header encoded once; each token is one
//! payload encoding and one signature.
//!
//! The keys rotate (docs/lifecycle.md, "Key rotation"): a [`TokenSigner`]
//! holds the key set of the `jwt_key` secret ([`evidence::rotation`]),
//! swapped whole when the secret is read again (`keys.rs`); a token is
//! signed by the key that signs at its `iat`, and the JWKS holds every key
//! published at that time.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use evidence::rotation::{KeyRing, KeySecret, KeySet};
use evidence::{PublicKey, SigningKey};
use jsonwebtoken::{Algorithm, Header};
use rpc_contracts::KeyId;
use rpc_contracts::auth::{AccessClaims, JwkSet, Role, TOKEN_LIFETIME_SECS};
use std::fmt;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// Why the signing key could not be used, or a token not made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The private key (or a previous public key) does not parse.
    #[error("token signing key: {0}")]
    Key(String),
    /// Encoding or signing failed (not expected with a valid key).
    #[error("signing an access token failed: {0}")]
    Signing(String),
}

/// One token signing key, parsed once.
pub struct TokenKey {
    key_pair: EcdsaKeyPair,
    rng: SystemRandom,
    public: PublicKey,
    /// `base64url(header JSON) + "."`, the start of every token.
    header_b64: String,
}

impl TokenKey {
    /// Parses `key` for signing.
    pub fn new(key: &SigningKey) -> Result<Self, TokenError> {
        // The normalised PKCS#8 document, as aws-lc-rs reads it.
        let der = pem_der(&key.to_pkcs8_pem())?;
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|e| TokenError::Key(format!("aws-lc-rs refused the key: {e}")))?;
        let public = key.public_key();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(public.key_id().as_str().to_owned());
        let header_json = serde_json::to_vec(&header)
            .map_err(|e| TokenError::Signing(format!("cannot encode the header: {e}")))?;
        let mut header_b64 = URL_SAFE_NO_PAD.encode(header_json);
        header_b64.push('.');
        Ok(Self {
            key_pair,
            rng: SystemRandom::new(),
            public,
            header_b64,
        })
    }

    /// Its id, the `kid` of its tokens.
    pub fn key_id(&self) -> KeyId {
        self.public.key_id()
    }
}

/// The token signing keys of this deployment (the `jwt_key` secret), with
/// the issuer and audience written into every token. Cheap to clone: the
/// clones share the key set, which [`TokenSigner::reload`] replaces.
#[derive(Clone)]
pub struct TokenSigner {
    keys: Arc<KeyRing<TokenKey>>,
    issuer: Arc<str>,
    audience: Arc<str>,
    /// Where the keys come from and go to (`keys.rs`); `None` for keys
    /// given directly (tests).
    pub(crate) vault: Option<platform::vault::Vault>,
    /// How far a rotation step's time may be from this service's clock.
    pub(crate) rotation_max_skew: time::Duration,
}

impl TokenSigner {
    /// One signing key, from an unencrypted P-256 private key PEM (PKCS#8
    /// `PRIVATE KEY`, or SEC1 `EC PRIVATE KEY`).
    pub fn from_pem(pem: &str, issuer: &str, audience: &str) -> Result<Self, TokenError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| TokenError::Key(e.to_string()))?;
        Self::from_signing_key(&key, issuer, audience)
    }

    /// `key` as the only signing key.
    pub fn from_signing_key(
        key: &SigningKey,
        issuer: &str,
        audience: &str,
    ) -> Result<Self, TokenError> {
        let set = KeySet::single(TokenKey::new(key)?, key.public_key(), None);
        Ok(Self::with_set(set, issuer, audience))
    }

    /// The keys of a `jwt_key` secret (see [`KeySecret`]).
    pub fn from_secret(
        secret: &KeySecret,
        issuer: &str,
        audience: &str,
    ) -> Result<Self, TokenError> {
        Ok(Self::with_set(key_set(secret)?, issuer, audience))
    }

    fn with_set(set: KeySet<TokenKey>, issuer: &str, audience: &str) -> Self {
        Self {
            keys: Arc::new(KeyRing::new(set)),
            issuer: issuer.into(),
            audience: audience.into(),
            vault: None,
            rotation_max_skew: time::Duration::minutes(5),
        }
    }

    /// A fresh random key (tests).
    pub fn generate(issuer: &str, audience: &str) -> Self {
        Self::from_signing_key(&SigningKey::generate(), issuer, audience)
            .expect("a generated P-256 key is valid")
    }

    /// Replaces the keys with those of `secret` (read again from Vault);
    /// answers whether they changed. A secret that does not parse changes
    /// nothing.
    pub fn reload(&self, secret: &KeySecret) -> Result<bool, TokenError> {
        Ok(self.keys.replace(key_set(secret)?))
    }

    /// The current key set.
    pub fn keys(&self) -> Arc<KeySet<TokenKey>> {
        self.keys.current()
    }

    /// The id (RFC 7638 thumbprint) of the key that signs at `now`.
    pub fn key_id(&self, now: OffsetDateTime) -> KeyId {
        self.keys().signing_key_id(now).clone()
    }

    /// The `iss` of every token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of every token.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The public keys that verify tokens at `now`: the active one first,
    /// the next one, then the previous ones still published. Each JWK has
    /// `kty`, `crv`, `x`, `y`, `kid`, `use` "sig" and `alg` "ES256".
    pub fn jwks(&self, now: OffsetDateTime) -> JwkSet {
        JwkSet {
            keys: self.keys().jwks(now),
        }
    }

    /// Signs a token for `sub` issued at `now` (whole seconds), valid
    /// [`TOKEN_LIFETIME_SECS`], with a fresh `jti`, with the key that signs
    /// at `now`.
    pub fn issue(
        &self,
        sub: &str,
        roles: &[Role],
        version: u64,
        now: OffsetDateTime,
    ) -> Result<(String, AccessClaims), TokenError> {
        let iat = now.unix_timestamp();
        let claims = AccessClaims {
            iss: self.issuer.to_string(),
            aud: self.audience.to_string(),
            sub: sub.to_owned(),
            roles: roles.to_vec(),
            iat,
            nbf: iat,
            exp: iat + TOKEN_LIFETIME_SECS as i64,
            jti: Uuid::new_v4(),
            ver: version,
        };
        let payload = serde_json::to_vec(&claims)
            .map_err(|e| TokenError::Signing(format!("cannot encode the claims: {e}")))?;
        let keys = self.keys();
        let key = keys.signer(now);
        let mut token = String::with_capacity(key.header_b64.len() + payload.len() * 4 / 3 + 90);
        token.push_str(&key.header_b64);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = key
            .key_pair
            .sign(&key.rng, token.as_bytes())
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok((token, claims))
    }
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("keys", &self.keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

fn key_set(secret: &KeySecret) -> Result<KeySet<TokenKey>, TokenError> {
    KeySet::from_secret(secret, TokenKey::new).map_err(|e| TokenError::Key(e.to_string()))
}

/// The DER inside a single-block PEM.
fn pem_der(pem: &str) -> Result<Vec<u8>, TokenError> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    STANDARD
        .decode(body)
        .map_err(|e| TokenError::Key(format!("the key's PEM body is not base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use rpc_contracts::auth::{DEFAULT_TOKEN_AUDIENCE, DEFAULT_TOKEN_ISSUER};
    use time::macros::datetime;

    fn part(token: &str, index: usize) -> serde_json::Value {
        let bytes = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(index).unwrap())
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn a_token_verifies_with_jsonwebtoken_against_the_published_key() {
        let signer = TokenSigner::generate(DEFAULT_TOKEN_ISSUER, DEFAULT_TOKEN_AUDIENCE);
        // A current time, so jsonwebtoken's own exp check passes.
        let now = platform::clock::now();
        let (token, claims) = signer
            .issue("alice", &[Role::Analyst, Role::Auditor], 3, now)
            .unwrap();
        let header = part(&token, 0);
        assert_eq!(
            header,
            serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": signer.key_id(now).as_str()})
        );
        let jwks = signer.jwks(now);
        assert_eq!(jwks.keys.len(), 1);
        let jwk = &jwks.keys[0];
        assert_eq!(jwk["kid"], signer.key_id(now).as_str());
        assert_eq!(
            (jwk["alg"].as_str(), jwk["use"].as_str()),
            (Some("ES256"), Some("sig"))
        );
        assert!(jwk.get("d").is_none(), "no private part is published");

        let key =
            DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
                .unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[DEFAULT_TOKEN_ISSUER]);
        validation.set_audience(&[DEFAULT_TOKEN_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        let decoded = jsonwebtoken::decode::<AccessClaims>(&token, &key, &validation).unwrap();
        assert_eq!(decoded.claims, claims);
        assert_eq!(claims.exp - claims.iat, 86_400);
        assert_eq!(claims.nbf, claims.iat);
        assert_eq!(claims.ver, 3);
        assert_eq!(claims.jti.get_version_num(), 4);
    }

    #[test]
    fn the_payload_holds_exactly_the_contract_claims() {
        let signer = TokenSigner::generate("iss-x", "aud-y");
        let (token, claims) = signer
            .issue(
                "bob",
                &[Role::Admin],
                1,
                datetime!(2026-03-01 09:00:00.75 UTC),
            )
            .unwrap();
        let payload = part(&token, 1);
        let mut names: Vec<&str> = payload
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "aud", "exp", "iat", "iss", "jti", "nbf", "roles", "sub", "ver"
            ]
        );
        assert_eq!(payload["iat"], 1_772_355_600);
        assert_eq!(payload["roles"], serde_json::json!(["admin"]));
        assert_eq!(
            serde_json::from_value::<AccessClaims>(payload).unwrap(),
            claims
        );
        // ES256 signatures are r‖s, 64 bytes.
        let signature = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(2).unwrap())
            .unwrap();
        assert_eq!(signature.len(), 64);
    }

    #[test]
    fn pem_keys_and_previous_keys_are_read() {
        let now = datetime!(2026-03-01 09:00 UTC);
        let key = SigningKey::generate();
        let signer = TokenSigner::from_pem(&key.to_pkcs8_pem(), "i", "a").unwrap();
        assert_eq!(signer.key_id(now), key.public_key().key_id());
        let old = SigningKey::generate().public_key();
        let older = SigningKey::generate().public_key();
        // The format before rotation: previous keys as PEM blocks.
        let secret: KeySecret = serde_json::from_value(serde_json::json!({
            "private_key_pem": key.to_pkcs8_pem(),
            "previous_public_keys_pem": format!(
                "{}\n{}{}",
                old.to_spki_pem(),
                older.to_spki_pem(),
                key.public_key().to_spki_pem()
            ),
        }))
        .unwrap();
        assert!(signer.reload(&secret).unwrap());
        let kids: Vec<String> = signer
            .jwks(now)
            .keys
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            kids,
            [
                key.public_key().key_id().to_string(),
                old.key_id().to_string(),
                older.key_id().to_string()
            ]
        );
        assert!(TokenSigner::from_pem("not a key", "i", "a").is_err());
        let bad: KeySecret = serde_json::from_value(serde_json::json!({
            "private_key_pem": key.to_pkcs8_pem(),
            "previous_public_keys_pem": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
        }))
        .unwrap();
        assert!(signer.reload(&bad).is_err());
        assert_eq!(
            signer.jwks(now).keys.len(),
            3,
            "a refused secret changes nothing"
        );
    }

    #[test]
    fn tokens_are_signed_by_the_key_that_signs_at_their_time() {
        let t0 = datetime!(2026-03-01 09:00 UTC);
        let active = SigningKey::generate();
        let next = SigningKey::generate();
        let mut secret = KeySecret::new(&active, Some(t0));
        secret.next_private_key_pem = Some(next.to_pkcs8_pem());
        secret.next_active_at = Some(t0 + time::Duration::minutes(10));
        let signer = TokenSigner::from_secret(&secret, "i", "a").unwrap();
        let kid_of = |token: &str| part(token, 0)["kid"].as_str().unwrap().to_owned();
        let (before, _) = signer.issue("alice", &[Role::Admin], 1, t0).unwrap();
        let at = t0 + time::Duration::minutes(10);
        let (after, _) = signer.issue("alice", &[Role::Admin], 1, at).unwrap();
        assert_eq!(kid_of(&before), active.public_key().key_id().as_str());
        assert_eq!(kid_of(&after), next.public_key().key_id().as_str());
        // Both are published from the start.
        assert_eq!(signer.jwks(t0).keys.len(), 2);
        // A clone shares the keys a reload replaces.
        let clone = signer.clone();
        signer.reload(&KeySecret::new(&next, Some(at))).unwrap();
        assert_eq!(clone.key_id(t0), next.public_key().key_id());
    }
}
