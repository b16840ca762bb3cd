//! Access tokens: compact JWS (ES256) carrying [`AccessClaims`], header
//! `{"typ":"JWT","alg":"ES256","kid":<RFC 7638 thumbprint>}`. Made the way
//! `evidence::ReceiptSigner` makes receipts: the key is parsed once at
//! start-up into an aws-lc-rs key pair and the header is encoded once; each
//! token is one payload encoding and one signature.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use evidence::{PublicKey, SigningKey};
use jsonwebtoken::{Algorithm, Header};
use rpc_contracts::KeyId;
use rpc_contracts::auth::{AccessClaims, JwkSet, Role, TOKEN_LIFETIME_SECS};
use std::fmt;
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

/// The token signing key of this deployment, parsed once, with the issuer
/// and audience it writes into every token.
pub struct TokenSigner {
    key_pair: EcdsaKeyPair,
    rng: SystemRandom,
    public: PublicKey,
    previous: Vec<PublicKey>,
    /// `base64url(header JSON) + "."`, the start of every token.
    header_b64: String,
    issuer: String,
    audience: String,
}

impl TokenSigner {
    /// Reads the signing key from an unencrypted P-256 private key PEM
    /// (PKCS#8 `PRIVATE KEY`, or SEC1 `EC PRIVATE KEY`).
    pub fn from_pem(pem: &str, issuer: &str, audience: &str) -> Result<Self, TokenError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| TokenError::Key(e.to_string()))?;
        Self::from_signing_key(&key, issuer, audience)
    }

    /// Uses `key` as the signing key.
    pub fn from_signing_key(
        key: &SigningKey,
        issuer: &str,
        audience: &str,
    ) -> Result<Self, TokenError> {
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
            previous: Vec::new(),
            header_b64,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// A fresh random key (tests).
    pub fn generate(issuer: &str, audience: &str) -> Self {
        Self::from_signing_key(&SigningKey::generate(), issuer, audience)
            .expect("a generated P-256 key is valid")
    }

    /// Also publishes these public keys (SPKI PEM blocks, concatenated) in
    /// the JWKS: previous signing keys whose tokens may still be alive
    /// after a rotation.
    pub fn with_previous_keys(mut self, pems: &str) -> Result<Self, TokenError> {
        for block in pem_blocks(pems, "PUBLIC KEY") {
            let key = PublicKey::from_spki_pem(&block)
                .map_err(|e| TokenError::Key(format!("previous public key: {e}")))?;
            if key != self.public && !self.previous.contains(&key) {
                self.previous.push(key);
            }
        }
        Ok(self)
    }

    /// The signing key's id (RFC 7638 thumbprint), the `kid` of its tokens.
    pub fn key_id(&self) -> KeyId {
        self.public.key_id()
    }

    /// The `iss` of every token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of every token.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The public keys that verify tokens: the current one first, then the
    /// previous ones. Each JWK has `kty`, `crv`, `x`, `y`, `kid`, `use`
    /// "sig" and `alg` "ES256".
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: std::iter::once(&self.public)
                .chain(&self.previous)
                .map(public_jwk)
                .collect(),
        }
    }

    /// Signs a token for `sub` issued at `now` (whole seconds), valid
    /// [`TOKEN_LIFETIME_SECS`], with a fresh `jti`.
    pub fn issue(
        &self,
        sub: &str,
        roles: &[Role],
        version: u64,
        now: OffsetDateTime,
    ) -> Result<(String, AccessClaims), TokenError> {
        let iat = now.unix_timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
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
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 90);
        token.push_str(&self.header_b64);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self
            .key_pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok((token, claims))
    }
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("key_id", &self.public.key_id().as_str())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

fn public_jwk(key: &PublicKey) -> serde_json::Value {
    let mut jwk = key.jwk();
    if let Some(members) = jwk.as_object_mut() {
        members.insert("kid".into(), key.key_id().as_str().into());
        members.insert("use".into(), "sig".into());
        members.insert("alg".into(), "ES256".into());
    }
    jwk
}

/// The PEM blocks labelled `label` in `text`, each with its armour.
fn pem_blocks(text: &str, label: &str) -> Vec<String> {
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
            serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": signer.key_id().as_str()})
        );
        let jwks = signer.jwks();
        assert_eq!(jwks.keys.len(), 1);
        let jwk = &jwks.keys[0];
        assert_eq!(jwk["kid"], signer.key_id().as_str());
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
        let key = SigningKey::generate();
        let signer = TokenSigner::from_pem(&key.to_pkcs8_pem(), "i", "a").unwrap();
        assert_eq!(signer.key_id(), key.public_key().key_id());
        let old = SigningKey::generate().public_key();
        let older = SigningKey::generate().public_key();
        let pems = format!(
            "{}\n{}{}",
            old.to_spki_pem(),
            older.to_spki_pem(),
            key.public_key().to_spki_pem()
        );
        let signer = signer.with_previous_keys(&pems).unwrap();
        let kids: Vec<String> = signer
            .jwks()
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
        assert!(
            signer
                .with_previous_keys("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .is_err()
        );
    }
}
