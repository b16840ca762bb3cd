//! Access-token verification, done in the gateway itself: no RPC per request
//! for the signature.
//!
//! The rules (RFC 8725, JWT best current practices):
//! - exactly one algorithm, ES256, pinned here; the header's `alg` is only
//!   compared with it, never used to choose;
//! - `kid` only selects among the keys this gateway already holds (fetched
//!   from the auth service); an unknown `kid` fails here, and the caller
//!   may prompt one shared, rate-limited fetch from auth before trying
//!   again (`access.rs`, `KeyFetches`); `jku`/`x5u`/`jwk`/`x5c` in the
//!   header are ignored;
//! - `iss`, `aud`, `exp`, `nbf`, `iat`, `sub` and `jti` are required; `exp`
//!   and `nbf` are checked against the `now` the caller passes, with a leeway
//!   of at most [`MAX_LEEWAY_SECS`].
//!
//! Whether a valid token was revoked is a separate question, answered by the
//! auth service through a short cache (see `access.rs`).

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rpc_contracts::auth::{AccessClaims, MAX_LEEWAY_SECS, TOKEN_LIFETIME_SECS};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Why a token was refused. The client always gets the same generic
/// `invalid_token` answer; the reason goes to the logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, or a header/claims that do not decode.
    #[error("malformed token")]
    Malformed,
    /// The header's `alg` is not ES256.
    #[error("algorithm not accepted")]
    Algorithm,
    /// No `kid`, or one this gateway does not know.
    #[error("unknown key id")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// Another issuer.
    #[error("wrong issuer")]
    Issuer,
    /// Another audience.
    #[error("wrong audience")]
    Audience,
    /// Past `exp` (plus leeway).
    #[error("expired")]
    Expired,
    /// Before `nbf` (minus leeway).
    #[error("not yet valid")]
    NotYetValid,
    /// Claims that cannot be right: issued in the future, or a lifetime
    /// longer than a token's.
    #[error("implausible times")]
    Times,
}

impl TokenError {
    /// A stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Algorithm => "algorithm",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Signature => "signature",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Times => "times",
        }
    }
}

/// The keys the gateway trusts, by `kid`; replaced as a whole when the auth
/// service's JWKS is fetched again.
#[derive(Clone, Default)]
pub struct TokenKeys {
    keys: Arc<RwLock<Arc<HashMap<String, DecodingKey>>>>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kids", &self.kids())
            .finish()
    }
}

impl TokenKeys {
    /// Replaces the trusted keys with the EC P-256 signing keys of `jwks`
    /// (JWK objects). Keys without a `kid`, of another type or curve, or
    /// for another use are skipped. Answers how many were kept.
    pub fn replace(&self, jwks: &[serde_json::Value]) -> usize {
        let mut map = HashMap::new();
        for jwk in jwks {
            let Some(kid) = jwk.get("kid").and_then(|k| k.as_str()) else {
                continue;
            };
            let is = |field: &str, want: &str| {
                jwk.get(field)
                    .and_then(|v| v.as_str())
                    .is_none_or(|v| v == want)
            };
            if !(is("kty", "EC") && is("crv", "P-256") && is("use", "sig") && is("alg", "ES256")) {
                continue;
            }
            // Only keys that parse as real curve points are kept.
            if evidence::PublicKey::from_jwk(jwk).is_err() {
                continue;
            }
            let (Some(x), Some(y)) = (
                jwk.get("x").and_then(|v| v.as_str()),
                jwk.get("y").and_then(|v| v.as_str()),
            ) else {
                continue;
            };
            if let Ok(key) = DecodingKey::from_ec_components(x, y) {
                map.insert(kid.to_owned(), key);
            }
        }
        let kept = map.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        kept
    }

    /// The `kid`s held, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<_> = self.snapshot().keys().cloned().collect();
        kids.sort();
        kids
    }

    fn snapshot(&self) -> Arc<HashMap<String, DecodingKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Verifies access tokens against [`TokenKeys`].
#[derive(Clone)]
pub struct TokenVerifier {
    keys: TokenKeys,
    issuer: String,
    audience: String,
    leeway_secs: i64,
    /// SHA-256 of a token whose signature verified → its `kid` and claims:
    /// a token is sent with every request of a session, and its ES256
    /// verification is most of what an authenticated request costs. The
    /// claim checks (issuer, audience, times) still run on every request,
    /// and a hit counts only while its key is still published.
    verified: moka::sync::Cache<[u8; 32], Arc<(String, AccessClaims)>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish_non_exhaustive()
    }
}

/// How long a verified signature is remembered.
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl TokenVerifier {
    /// A verifier for tokens of `issuer` meant for `audience`; the leeway is
    /// capped at [`MAX_LEEWAY_SECS`].
    pub fn new(keys: TokenKeys, issuer: &str, audience: &str, leeway_secs: u64) -> Self {
        Self {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway_secs: leeway_secs.min(MAX_LEEWAY_SECS) as i64,
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(VERIFIED_TTL)
                .build(),
        }
    }

    /// The keys it trusts.
    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// Verifies `token` at Unix time `now` (seconds) and answers its claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<AccessClaims, TokenError> {
        let digest = evidence::sha256(token.as_bytes());
        if let Some(hit) = self.verified.get(&digest)
            && self.keys.snapshot().contains_key(hit.0.as_str())
        {
            return self.check_claims(hit.1.clone(), now);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::ES256 {
            return Err(TokenError::Algorithm);
        }
        let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
        let keys = self.keys.snapshot();
        let key = keys.get(kid).ok_or(TokenError::UnknownKey)?;

        // The signature and the claims' shape are checked by jsonwebtoken
        // with the one algorithm pinned; the times, issuer and audience
        // below, against the caller's clock.
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => TokenError::Signature,
                ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
                _ => TokenError::Malformed,
            }
        })?;
        self.verified
            .insert(digest, Arc::new((kid.to_owned(), data.claims.clone())));
        self.check_claims(data.claims, now)
    }

    /// The checks of a verified token's claims against the caller's clock.
    fn check_claims(&self, claims: AccessClaims, now: i64) -> Result<AccessClaims, TokenError> {
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer);
        }
        if claims.aud != self.audience {
            return Err(TokenError::Audience);
        }
        if now >= claims.exp.saturating_add(self.leeway_secs) {
            return Err(TokenError::Expired);
        }
        if now < claims.nbf.saturating_sub(self.leeway_secs) {
            return Err(TokenError::NotYetValid);
        }
        let lifetime = claims.exp.saturating_sub(claims.iat);
        if claims.iat > now.saturating_add(self.leeway_secs)
            || lifetime <= 0
            || lifetime > TOKEN_LIFETIME_SECS as i64
            || claims.nbf < claims.iat.saturating_sub(self.leeway_secs)
        {
            return Err(TokenError::Times);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use evidence::SigningKey;
    use jsonwebtoken::{EncodingKey, Header};
    use rpc_contracts::auth::Role;

    const NOW: i64 = 1_790_000_000;

    struct Fixture {
        key: SigningKey,
        kid: String,
        verifier: TokenVerifier,
    }

    fn fixture() -> Fixture {
        let key = SigningKey::generate();
        let public = key.public_key();
        let kid = public.key_id().to_string();
        let mut jwk = public.jwk();
        jwk["kid"] = kid.clone().into();
        jwk["alg"] = "ES256".into();
        jwk["use"] = "sig".into();
        let keys = TokenKeys::default();
        assert_eq!(keys.replace(&[jwk]), 1);
        Fixture {
            verifier: TokenVerifier::new(keys, "iss-1", "aud-1", 60),
            key,
            kid,
        }
    }

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: "iss-1".into(),
            aud: "aud-1".into(),
            sub: "alice".into(),
            roles: vec![Role::Analyst],
            iat: NOW,
            nbf: NOW,
            exp: NOW + TOKEN_LIFETIME_SECS as i64,
            jti: uuid::Uuid::new_v4(),
            ver: 1,
        }
    }

    fn sign(f: &Fixture, claims: &AccessClaims) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(f.kid.clone());
        let enc = EncodingKey::from_ec_pem(f.key.to_pkcs8_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &enc).unwrap()
    }

    #[test]
    fn a_good_token_verifies_over_its_whole_day_and_not_after() {
        let f = fixture();
        let c = claims();
        let token = sign(&f, &c);
        assert_eq!(f.verifier.verify(&token, NOW).unwrap(), c);
        assert!(f.verifier.verify(&token, c.exp + 59).is_ok());
        assert_eq!(
            f.verifier.verify(&token, c.exp + 60),
            Err(TokenError::Expired)
        );
        assert!(f.verifier.verify(&token, NOW - 59).is_ok());
        assert_eq!(
            f.verifier.verify(&token, NOW - 61),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn a_remembered_signature_still_meets_the_clock_and_needs_its_key_published() {
        let f = fixture();
        let c = claims();
        let token = sign(&f, &c);
        assert_eq!(f.verifier.verify(&token, NOW).unwrap(), c);
        assert_eq!(
            f.verifier
                .verified
                .get(&evidence::sha256(token.as_bytes()))
                .map(|h| h.1.clone()),
            Some(c.clone())
        );
        // Served from memory: the times are still checked against `now`.
        assert_eq!(f.verifier.verify(&token, NOW).unwrap(), c);
        assert_eq!(
            f.verifier.verify(&token, c.exp + 60),
            Err(TokenError::Expired)
        );
        // Other claims under the remembered signature are not the remembered token.
        let mut other_claims = c.clone();
        other_claims.roles = vec![Role::Admin];
        let (head, rest) = token.split_once('.').unwrap();
        let signature = rest.split_once('.').unwrap().1;
        let forged = format!(
            "{head}.{}.{signature}",
            B64.encode(serde_json::to_vec(&other_claims).unwrap())
        );
        assert_eq!(f.verifier.verify(&forged, NOW), Err(TokenError::Signature));
        // Once its key is withdrawn, the remembered token is refused too.
        let other = SigningKey::generate().public_key();
        let mut jwk = other.jwk();
        jwk["kid"] = other.key_id().to_string().into();
        jwk["alg"] = "ES256".into();
        jwk["use"] = "sig".into();
        assert_eq!(f.verifier.keys.replace(&[jwk]), 1);
        assert_eq!(f.verifier.verify(&token, NOW), Err(TokenError::UnknownKey));
    }

    #[test]
    fn the_leeway_is_capped_at_sixty_seconds() {
        let f = fixture();
        let verifier = TokenVerifier::new(f.verifier.keys.clone(), "iss-1", "aud-1", 3600);
        let c = claims();
        let token = sign(&f, &c);
        assert_eq!(
            verifier.verify(&token, c.exp + 61),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn wrong_issuer_audience_and_lifetime_are_refused() {
        let f = fixture();
        let mut c = claims();
        c.iss = "other".into();
        assert_eq!(
            f.verifier.verify(&sign(&f, &c), NOW),
            Err(TokenError::Issuer)
        );
        let mut c = claims();
        c.aud = "other".into();
        assert_eq!(
            f.verifier.verify(&sign(&f, &c), NOW),
            Err(TokenError::Audience)
        );
        let mut c = claims();
        c.exp = NOW + 2 * TOKEN_LIFETIME_SECS as i64;
        assert_eq!(
            f.verifier.verify(&sign(&f, &c), NOW),
            Err(TokenError::Times)
        );
    }

    #[test]
    fn alg_none_and_hs256_with_the_public_key_are_refused() {
        let f = fixture();
        let c = claims();
        let body = B64.encode(serde_json::to_vec(&c).unwrap());
        let none = format!(
            "{}.{body}.",
            B64.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#, f.kid))
        );
        assert_eq!(f.verifier.verify(&none, NOW), Err(TokenError::Malformed));

        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(f.kid.clone());
        let secret = f.key.public_key().to_spki_pem();
        let hs = jsonwebtoken::encode(&header, &c, &EncodingKey::from_secret(secret.as_bytes()))
            .unwrap();
        assert_eq!(f.verifier.verify(&hs, NOW), Err(TokenError::Algorithm));
    }

    #[test]
    fn unknown_kid_and_tampered_claims_are_refused() {
        let f = fixture();
        let c = claims();
        let token = sign(&f, &c);
        let mut other = Header::new(Algorithm::ES256);
        other.kid = Some("not-a-known-kid".into());
        let enc = EncodingKey::from_ec_pem(f.key.to_pkcs8_pem().as_bytes()).unwrap();
        let t = jsonwebtoken::encode(&other, &c, &enc).unwrap();
        assert_eq!(f.verifier.verify(&t, NOW), Err(TokenError::UnknownKey));

        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut tampered = c.clone();
        tampered.roles = vec![Role::Admin];
        parts[1] = B64.encode(serde_json::to_vec(&tampered).unwrap());
        assert_eq!(
            f.verifier.verify(&parts.join("."), NOW),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn a_token_signed_by_another_key_with_a_known_kid_is_refused() {
        let f = fixture();
        let impostor = Fixture {
            key: SigningKey::generate(),
            kid: f.kid.clone(),
            verifier: f.verifier.clone(),
        };
        assert_eq!(
            f.verifier.verify(&sign(&impostor, &claims()), NOW),
            Err(TokenError::Signature)
        );
    }
}
