//! Receipts: the platform's signed acknowledgement of a stored package, a
//! compact JWS (ES256) any JOSE library can verify against the platform's
//! JWKS (`GET /v1/keys`).
//!
//! Header `{"typ":"tallyhouse-receipt+jwt","alg":"ES256","kid":<RFC 7638
//! thumbprint>}`; payload `{"iss":"tallyhouse","iat":…,"package_id":…,
//! "submitter_id":…,"sha256":…,"size":…,"records":…,"received_at":…}`.
//! Receipts never expire: they carry no `exp` and verification reads no
//! clock.

use crate::keys::{KeyError, PublicKey, SigningKey};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use rpc_contracts::{KeyId, SubmitterId};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use time::{OffsetDateTime, UtcOffset};
use uuid::Uuid;

/// The `iss` of every receipt.
pub const RECEIPT_ISSUER: &str = "tallyhouse";
/// The `typ` header of every receipt (RFC 8725 §3.11 explicit typing).
pub const RECEIPT_TYPE: &str = "tallyhouse-receipt+jwt";

/// What a receipt attests: these exact bytes (`sha256`, `size`) were
/// received from `submitter_id` as package `package_id` with `records`
/// records, at `received_at`, with a valid signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptClaims {
    /// The package id from the body.
    pub package_id: Uuid,
    /// The submitter, from the body and the signing key's registration.
    pub submitter_id: SubmitterId,
    /// SHA-256 of the exact body bytes, 64 lowercase hex digits.
    pub sha256: String,
    /// The body's size in bytes.
    pub size: u64,
    /// The number of records in the package.
    pub records: u64,
    /// When the platform received the package: RFC 3339 in UTC on the
    /// wire, to microsecond precision (what PostgreSQL keeps).
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

/// The JWS payload: the claims plus `iss` and `iat`.
#[derive(Serialize, Deserialize)]
struct Payload {
    iss: String,
    iat: i64,
    #[serde(flatten)]
    claims: ReceiptClaims,
}

/// Why a receipt could not be made or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The receipt key could not be read.
    #[error("receipt key: {0}")]
    Key(#[from] KeyError),
    /// The claims are not valid (bad `sha256`, date out of range, wrong
    /// `iss`, missing members…).
    #[error("invalid receipt claims: {0}")]
    InvalidClaims(String),
    /// Signing failed (not expected with a valid key).
    #[error("signing the receipt failed: {0}")]
    Signing(String),
    /// The token is not a well-formed compact JWS receipt.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// The header names another algorithm than ES256.
    #[error("receipt algorithm must be ES256, got {0}")]
    WrongAlgorithm(String),
    /// No key with the header's `kid` among the given keys.
    #[error("unknown receipt key id {0:?}")]
    UnknownKey(String),
    /// The key with that `kid` is not a usable ES256 public key, or the
    /// `kid` is given twice.
    #[error("unusable receipt key {kid:?}: {reason}")]
    BadKey {
        /// The key id.
        kid: String,
        /// What is wrong with the JWK.
        reason: String,
    },
    /// The signature does not verify.
    #[error("the receipt signature does not verify")]
    InvalidSignature,
}

/// The platform's receipt signing key, parsed once.
///
/// Receipts are compact JWS made here rather than with
/// `jsonwebtoken::encode`, which re-parses the PKCS#8 key (and re-derives
/// its public point) on every call: that cost about as much as the
/// signature itself (see docs/benchmarks.md, "ingest"). The bytes are the
/// same: the header JSON is serialised once from `jsonwebtoken`'s
/// [`Header`], the payload with `serde_json`, both base64url without
/// padding, and the signature is the fixed-size `r‖s` of ES256.
pub struct ReceiptSigner {
    key_pair: EcdsaKeyPair,
    rng: SystemRandom,
    public: PublicKey,
    /// `base64url(header JSON) + "."`, the start of every receipt.
    header_b64: String,
}

impl ReceiptSigner {
    /// Reads the receipt key from an unencrypted P-256 private key PEM
    /// (PKCS#8 `PRIVATE KEY`, or SEC1 `EC PRIVATE KEY`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, ReceiptError> {
        Self::from_signing_key(&SigningKey::from_pkcs8_pem(pem)?)
    }

    /// Uses `key` as the receipt key.
    pub fn from_signing_key(key: &SigningKey) -> Result<Self, ReceiptError> {
        let der = key.to_pkcs8_der();
        let key_pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).map_err(|e| {
                ReceiptError::Key(KeyError::Malformed(format!(
                    "aws-lc-rs refused the key: {e}"
                )))
            })?;
        let public = key.public_key();
        let header = receipt_header(&public.key_id());
        let header_json = serde_json::to_vec(&header)
            .map_err(|e| ReceiptError::Signing(format!("cannot encode the header: {e}")))?;
        let mut header_b64 = URL_SAFE_NO_PAD.encode(header_json);
        header_b64.push('.');
        Ok(Self {
            key_pair,
            rng: SystemRandom::new(),
            public,
            header_b64,
        })
    }

    /// A fresh random receipt key (tests and local runs).
    pub fn generate() -> Self {
        Self::from_signing_key(&SigningKey::generate()).expect("a generated P-256 key is valid")
    }

    /// The receipt key's id (RFC 7638 thumbprint), the `kid` of its receipts.
    pub fn key_id(&self) -> KeyId {
        self.public.key_id()
    }

    /// The receipt key's public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The public JWK to publish in the JWKS: `kty`, `crv`, `x`, `y`, `kid`,
    /// `use` "sig", `alg` "ES256".
    pub fn jwk(&self) -> serde_json::Value {
        let mut jwk = self.public.jwk();
        if let Some(members) = jwk.as_object_mut() {
            members.insert("kid".into(), self.key_id().as_str().into());
            members.insert("use".into(), "sig".into());
            members.insert("alg".into(), "ES256".into());
        }
        jwk
    }

    /// Signs a receipt. `received_at` is written in UTC, truncated to whole
    /// microseconds; `iat` is its whole seconds (no clock is read).
    pub fn sign(&self, claims: &ReceiptClaims) -> Result<String, ReceiptError> {
        check_sha256(&claims.sha256)?;
        let utc = claims.received_at.to_offset(UtcOffset::UTC);
        let received_at = utc
            .replace_nanosecond(utc.microsecond() * 1_000)
            .map_err(|e| ReceiptError::InvalidClaims(e.to_string()))?;
        let payload = Payload {
            iss: RECEIPT_ISSUER.to_owned(),
            iat: received_at.unix_timestamp(),
            claims: ReceiptClaims {
                received_at,
                ..claims.clone()
            },
        };
        let payload_json =
            serde_json::to_vec(&payload).map_err(|e| ReceiptError::InvalidClaims(e.to_string()))?;
        // header.payload.signature, each part base64url without padding.
        let payload_len = base64::encoded_len(payload_json.len(), false).unwrap_or(0);
        let mut token = String::with_capacity(self.header_b64.len() + payload_len + 1 + 86);
        token.push_str(&self.header_b64);
        URL_SAFE_NO_PAD.encode_string(&payload_json, &mut token);
        let signature = self
            .key_pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|e| ReceiptError::Signing(e.to_string()))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

/// The JOSE header of every receipt made with the key `kid`.
fn receipt_header(kid: &KeyId) -> Header {
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some(RECEIPT_TYPE.to_owned());
    header.kid = Some(kid.as_str().to_owned());
    header
}

impl fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiptSigner")
            .field("key_id", &self.public.key_id().as_str())
            .finish_non_exhaustive()
    }
}

/// Verifies a receipt against the given public JWKs (the `keys` of the
/// platform's JWKS) and returns its claims.
///
/// The algorithm is pinned to ES256 (never read from the header), `typ` must
/// be [`RECEIPT_TYPE`], the key is chosen by `kid` among `jwks` only (`jku`,
/// `jwk`, `x5u`, `x5c` headers are ignored), `crit` is refused, `iss` must be
/// [`RECEIPT_ISSUER`], and an `aud` claim is refused. No expiry is checked:
/// receipts are evidence and stay valid; no clock is read.
pub fn verify_receipt(
    token: &str,
    jwks: &[serde_json::Value],
) -> Result<ReceiptClaims, ReceiptError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    if header.alg != Algorithm::ES256 {
        return Err(ReceiptError::WrongAlgorithm(format!("{:?}", header.alg)));
    }
    if header.typ.as_deref() != Some(RECEIPT_TYPE) {
        return Err(ReceiptError::Malformed(format!(
            "typ must be {RECEIPT_TYPE:?}, got {:?}",
            header.typ
        )));
    }
    if header.crit.is_some() {
        return Err(ReceiptError::Malformed(
            "no critical header extension is understood".into(),
        ));
    }
    let kid = header
        .kid
        .ok_or_else(|| ReceiptError::Malformed("no kid in the header".into()))?;
    let key = decoding_key(&kid, jwks)?;

    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims = HashSet::from(["iss".to_owned()]);
    validation.set_issuer(&[RECEIPT_ISSUER]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = true; // with no audience set, any `aud` is refused

    let data =
        jsonwebtoken::decode::<Payload>(token, &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => ReceiptError::InvalidSignature,
            ErrorKind::InvalidAlgorithm => ReceiptError::WrongAlgorithm(e.to_string()),
            ErrorKind::InvalidIssuer
            | ErrorKind::InvalidAudience
            | ErrorKind::MissingRequiredClaim(_)
            | ErrorKind::Json(_) => ReceiptError::InvalidClaims(e.to_string()),
            _ => ReceiptError::Malformed(e.to_string()),
        })?;
    check_sha256(&data.claims.claims.sha256)?;
    Ok(data.claims.claims)
}

/// The decoding key for `kid`: exactly one JWK with that `kid`, an EC P-256
/// public key, `alg` ES256 and `use` "sig" when those are given.
fn decoding_key(kid: &str, jwks: &[serde_json::Value]) -> Result<DecodingKey, ReceiptError> {
    let mut matching = jwks
        .iter()
        .filter(|jwk| jwk.get("kid").and_then(serde_json::Value::as_str) == Some(kid));
    let jwk = matching
        .next()
        .ok_or_else(|| ReceiptError::UnknownKey(kid.chars().take(64).collect()))?;
    let bad = |reason: String| ReceiptError::BadKey {
        kid: kid.to_owned(),
        reason,
    };
    if matching.next().is_some() {
        return Err(bad("the kid appears more than once in the key set".into()));
    }
    for (member, expected) in [("alg", "ES256"), ("use", "sig")] {
        if let Some(value) = jwk.get(member)
            && value.as_str() != Some(expected)
        {
            return Err(bad(format!("{member} is {value}, expected {expected:?}")));
        }
    }
    if jwk.get("d").is_some() {
        return Err(bad("the key set holds a private key".into()));
    }
    let public = PublicKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
    let (x, y) = public.coordinates_b64();
    DecodingKey::from_ec_components(&x, &y).map_err(|e| bad(e.to_string()))
}

fn check_sha256(sha256: &str) -> Result<(), ReceiptError> {
    let ok = sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ReceiptError::InvalidClaims(
            "sha256 must be 64 lowercase hex digits".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::{Value, json};
    use time::macros::datetime;

    fn test_key_pem() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/receipt-test-key.pem"
        ))
        .unwrap()
    }

    fn test_signer() -> ReceiptSigner {
        ReceiptSigner::from_pkcs8_pem(&test_key_pem()).unwrap()
    }

    /// `jsonwebtoken`'s own signing with the test key, to make tokens
    /// with headers or payloads the signer would not write.
    fn jwt_encode(header: &Header, payload: &impl Serialize) -> String {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(test_key_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(header, payload, &key).unwrap()
    }

    fn claims() -> ReceiptClaims {
        ReceiptClaims {
            package_id: Uuid::parse_str("0b6f9a52-3c1e-4d7a-9f2b-5e8c1a7d4f30").unwrap(),
            submitter_id: SubmitterId::parse("acme-betting").unwrap(),
            sha256: "cefaa28d0ab3542525d48989672326700c46b41d6bed89761dfa06ca576f40e9".into(),
            size: 693,
            records: 4,
            received_at: datetime!(2025-03-01 12:00:06.123456 UTC),
        }
    }

    fn part(token: &str, index: usize) -> Value {
        let bytes = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(index).unwrap())
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// `token` with its header or payload replaced, signature kept.
    fn replace_part(token: &str, index: usize, value: &Value) -> String {
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[index] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap());
        parts.join(".")
    }

    #[test]
    fn a_receipt_round_trips() {
        let signer = test_signer();
        let token = signer.sign(&claims()).unwrap();
        assert_eq!(verify_receipt(&token, &[signer.jwk()]).unwrap(), claims());
    }

    #[test]
    fn header_and_payload_are_byte_for_byte_what_jsonwebtoken_writes() {
        let signer = test_signer();
        let token = signer.sign(&claims()).unwrap();
        let payload: Payload = serde_json::from_value(part(&token, 1)).unwrap();
        let reference = jwt_encode(&receipt_header(&signer.key_id()), &payload);
        let head = |t: &str| t.rsplit_once('.').unwrap().0.to_owned();
        assert_eq!(head(&token), head(&reference));
        // Signing is randomised, so the signatures differ; both verify.
        assert_eq!(
            verify_receipt(&reference, &[signer.jwk()]).unwrap(),
            claims()
        );
    }

    #[test]
    fn the_committed_receipt_vector_verifies() {
        // Made with Python's `cryptography`, not this crate (testdata/README.md).
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
        let token = std::fs::read_to_string(format!("{dir}/receipt.jwt")).unwrap();
        let jwks: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{dir}/receipt-jwks.json")).unwrap(),
        )
        .unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(verify_receipt(token.trim(), keys).unwrap(), claims());
        assert_eq!(keys[0], test_signer().jwk());
    }

    #[test]
    fn the_wire_format_is_pinned() {
        let signer = test_signer();
        let token = signer.sign(&claims()).unwrap();
        insta::assert_json_snapshot!("receipt_header", part(&token, 0));
        insta::assert_json_snapshot!("receipt_payload", part(&token, 1));
        insta::assert_json_snapshot!("receipt_jwk", signer.jwk());
        assert_eq!(part(&token, 0)["kid"], signer.key_id().as_str());
        // ES256 signatures are r‖s, 64 bytes.
        let signature = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(2).unwrap())
            .unwrap();
        assert_eq!(signature.len(), 64);
    }

    #[test]
    fn received_at_is_utc_to_the_microsecond() {
        let signer = ReceiptSigner::generate();
        let mut input = claims();
        input.received_at = datetime!(2025-03-01 14:00:06.123456789 +02:00);
        let token = signer.sign(&input).unwrap();
        assert_eq!(
            part(&token, 1)["received_at"],
            "2025-03-01T12:00:06.123456Z"
        );
        assert_eq!(part(&token, 1)["iat"], 1_740_830_406);
        let out = verify_receipt(&token, &[signer.jwk()]).unwrap();
        assert_eq!(out.received_at, datetime!(2025-03-01 12:00:06.123456 UTC));
    }

    #[test]
    fn the_key_is_chosen_by_kid_among_the_given_keys() {
        let old = ReceiptSigner::generate();
        let new = ReceiptSigner::generate();
        let jwks = [old.jwk(), new.jwk()];
        for signer in [&old, &new] {
            let token = signer.sign(&claims()).unwrap();
            assert_eq!(verify_receipt(&token, &jwks).unwrap(), claims());
        }
        let stranger = ReceiptSigner::generate().sign(&claims()).unwrap();
        assert!(matches!(
            verify_receipt(&stranger, &jwks),
            Err(ReceiptError::UnknownKey(_))
        ));
        assert!(matches!(
            verify_receipt(&stranger, &[]),
            Err(ReceiptError::UnknownKey(_))
        ));
        // Signed by `new` but claiming `old`'s kid.
        let token = new.sign(&claims()).unwrap();
        let mut header = part(&token, 0);
        header["kid"] = old.key_id().as_str().into();
        let relabelled = replace_part(&token, 0, &header);
        assert_eq!(
            verify_receipt(&relabelled, &jwks),
            Err(ReceiptError::InvalidSignature)
        );
    }

    #[test]
    fn tampered_receipts_are_refused() {
        let signer = test_signer();
        let jwks = [signer.jwk()];
        let token = signer.sign(&claims()).unwrap();

        let mut payload = part(&token, 1);
        payload["records"] = json!(5);
        assert_eq!(
            verify_receipt(&replace_part(&token, 1, &payload), &jwks),
            Err(ReceiptError::InvalidSignature)
        );

        // Every single-character change of the signing input or signature.
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in (0..token.len()).step_by(3) {
            let mut bytes = token.clone().into_bytes();
            if bytes[i] == b'.' {
                continue;
            }
            let pos = alphabet.iter().position(|&c| c == bytes[i]).unwrap();
            bytes[i] = alphabet[(pos + 1) % 64];
            let tampered = String::from_utf8(bytes).unwrap();
            assert!(verify_receipt(&tampered, &jwks).is_err(), "char {i}");
        }
    }

    #[test]
    fn other_algorithms_are_refused() {
        let signer = test_signer();
        let jwks = [signer.jwk()];
        let token = signer.sign(&claims()).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let kid = signer.key_id();

        // alg none, unsigned.
        let header = json!({"alg": "none", "typ": RECEIPT_TYPE, "kid": kid.as_str()});
        let none = format!(
            "{}.{payload}.",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap())
        );
        assert!(verify_receipt(&none, &jwks).is_err());

        // HS256 keyed with the public key's bytes (algorithm confusion).
        let mut hs_header = Header::new(Algorithm::HS256);
        hs_header.typ = Some(RECEIPT_TYPE.into());
        hs_header.kid = Some(kid.as_str().into());
        let secret = signer.public_key().to_spki_pem();
        let hs = jsonwebtoken::encode(
            &hs_header,
            &part(&token, 1),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            verify_receipt(&hs, &jwks),
            Err(ReceiptError::WrongAlgorithm(_))
        ));

        // ES384 in the header over the ES256 signature.
        let mut header = part(&token, 0);
        header["alg"] = "ES384".into();
        assert!(matches!(
            verify_receipt(&replace_part(&token, 0, &header), &jwks),
            Err(ReceiptError::WrongAlgorithm(_))
        ));
    }

    #[test]
    fn headers_and_claims_are_checked() {
        let signer = test_signer();
        let jwks = [signer.jwk()];
        let token = signer.sign(&claims()).unwrap();
        let header = part(&token, 0);

        let mut other_typ = header.clone();
        other_typ["typ"] = "JWT".into();
        let mut with_crit = header.clone();
        with_crit["crit"] = json!(["exp"]);
        let mut no_kid = header.clone();
        no_kid.as_object_mut().unwrap().remove("kid");
        for (case, header) in [("typ", other_typ), ("crit", with_crit), ("kid", no_kid)] {
            // Re-sign honestly so only the header rule can fail.
            let encoded = jwt_encode(
                &serde_json::from_value::<Header>(header).unwrap(),
                &part(&token, 1),
            );
            assert!(
                matches!(
                    verify_receipt(&encoded, &jwks),
                    Err(ReceiptError::Malformed(_))
                ),
                "{case}"
            );
        }

        let signer_header = receipt_header(&signer.key_id());
        let honest = |payload: Value| jwt_encode(&signer_header, &payload);
        let mut wrong_iss = part(&token, 1);
        wrong_iss["iss"] = "someone-else".into();
        let mut no_iss = part(&token, 1);
        no_iss.as_object_mut().unwrap().remove("iss");
        let mut with_aud = part(&token, 1);
        with_aud["aud"] = "x".into();
        let mut bad_sha = part(&token, 1);
        bad_sha["sha256"] = "CEFA".into();
        let mut no_records = part(&token, 1);
        no_records.as_object_mut().unwrap().remove("records");
        let mut with_exp = part(&token, 1);
        with_exp["exp"] = 1.into(); // long past: receipts do not expire
        for (case, payload, ok) in [
            ("iss", wrong_iss, false),
            ("no iss", no_iss, false),
            ("aud", with_aud, false),
            ("sha256", bad_sha, false),
            ("records", no_records, false),
            ("exp ignored", with_exp, true),
        ] {
            let result = verify_receipt(&honest(payload), &jwks);
            assert_eq!(result.is_ok(), ok, "{case}: {result:?}");
            if !ok {
                assert!(
                    matches!(result, Err(ReceiptError::InvalidClaims(_))),
                    "{case}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn unusable_jwks_are_refused() {
        let signer = test_signer();
        let token = signer.sign(&claims()).unwrap();
        let kid = signer.key_id();
        let mut wrong_alg = signer.jwk();
        wrong_alg["alg"] = "RS256".into();
        let mut wrong_use = signer.jwk();
        wrong_use["use"] = "enc".into();
        let mut wrong_curve = signer.jwk();
        wrong_curve["crv"] = "P-384".into();
        let mut private = signer.jwk();
        private["d"] = "AAAA".into();
        let cases = [
            ("alg", vec![wrong_alg]),
            ("use", vec![wrong_use]),
            ("crv", vec![wrong_curve]),
            ("private", vec![private]),
            ("twice", vec![signer.jwk(), signer.jwk()]),
        ];
        for (case, jwks) in cases {
            let result = verify_receipt(&token, &jwks);
            assert!(
                matches!(&result, Err(ReceiptError::BadKey { kid: k, .. }) if k == kid.as_str()),
                "{case}: {result:?}"
            );
        }
        // A JWK without alg and use is fine.
        let mut bare = signer.jwk();
        bare.as_object_mut().unwrap().remove("alg");
        bare.as_object_mut().unwrap().remove("use");
        assert!(verify_receipt(&token, &[bare]).is_ok());
    }

    #[test]
    fn signing_refuses_bad_claims() {
        let signer = ReceiptSigner::generate();
        let mut bad = claims();
        bad.sha256 = "xyz".into();
        assert!(matches!(
            signer.sign(&bad),
            Err(ReceiptError::InvalidClaims(_))
        ));
        let mut far = claims();
        far.received_at = datetime!(-0001-01-01 0:00 UTC);
        assert!(matches!(
            signer.sign(&far),
            Err(ReceiptError::InvalidClaims(_))
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        let jwks = [ReceiptSigner::generate().jwk()];
        for token in ["", "a", "a.b", "a.b.c", "a.b.c.d", "..", "eyJ9.e30.AA"] {
            assert!(
                matches!(
                    verify_receipt(token, &jwks),
                    Err(ReceiptError::Malformed(_))
                ),
                "{token:?}"
            );
        }
    }
}
