//! Submitter keys and package signatures: P-256 public keys from SPKI PEM,
//! RFC 7638 key ids, ECDSA P-256/SHA-256 verification over the exact body
//! bytes (aws-lc-rs), signing keys for submitters' tools (p256), SHA-256.
//!
//! Signatures are ASN.1 DER (what `openssl dgst -sha256 -sign` writes); the
//! HTTP header carries standard base64 of the DER. Both low-S and high-S
//! signatures verify: ECDSA is malleable, so nothing may be identified or
//! deduplicated by signature bytes.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ParsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::rand_core::OsRng;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::der::asn1::{BitStringRef, ContextSpecific, OctetStringRef};
use p256::pkcs8::der::{Decode, Reader, SliceReader, TagNumber};
use p256::pkcs8::{
    DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding, ObjectIdentifier,
    PrivateKeyInfo, SubjectPublicKeyInfoRef,
};
use rpc_contracts::KeyId;
use std::fmt;

/// `id-ecPublicKey` (RFC 5480).
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `prime256v1` / `secp256r1` / NIST P-256.
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// The largest DER ECDSA P-256 signature: SEQUENCE of two 33-byte INTEGERs.
const MAX_DER_SIGNATURE_BYTES: usize = 72;

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text holds no PEM block of the expected kind.
    #[error("expected a PEM block \"{expected}\", found {found}")]
    MissingPemBlock {
        /// The label(s) looked for.
        expected: &'static str,
        /// What was found instead.
        found: String,
    },
    /// The PEM is encrypted; only unencrypted keys are read.
    #[error(
        "encrypted private keys are not supported: decrypt it first (openssl pkey -in key.pem -out plain.pem)"
    )]
    Encrypted,
    /// The bytes are not a well-formed key structure.
    #[error("malformed key: {0}")]
    Malformed(String),
    /// The key is not an elliptic-curve key.
    #[error("unsupported key algorithm {0}: only ECDSA P-256 (prime256v1) keys are accepted")]
    UnsupportedAlgorithm(String),
    /// The key is an elliptic-curve key on another curve.
    #[error("unsupported curve {0}: only P-256 (prime256v1 / secp256r1) is accepted")]
    UnsupportedCurve(String),
    /// The public point is not a valid P-256 point.
    #[error("invalid P-256 public point")]
    InvalidPoint,
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature header is not standard base64 of a reasonable length.
    #[error("malformed signature header: {0}")]
    MalformedHeader(String),
    /// The bytes are not an ASN.1 DER ECDSA signature.
    #[error("the signature is not an ASN.1 DER ECDSA P-256 signature")]
    MalformedSignature,
    /// The signature does not verify for these bytes and this key.
    #[error("the signature does not verify for this body and key")]
    Mismatch,
}

/// A submitter's (or the platform's) P-256 public key, parsed once: the
/// uncompressed SEC1 point, aws-lc-rs's pre-parsed verification key and the
/// RFC 7638 key id.
#[derive(Clone)]
pub struct PublicKey {
    point: [u8; 65],
    verifier: ParsedPublicKey,
    key_id: KeyId,
}

impl PublicKey {
    /// Reads an SPKI PEM (`-----BEGIN PUBLIC KEY-----`, as `openssl ec
    /// -pubout` writes). Other curves and algorithms are refused by name.
    pub fn from_spki_pem(pem: &str) -> Result<Self, KeyError> {
        let (_, der) = pem_block(pem, &["PUBLIC KEY"], "PUBLIC KEY")?;
        Self::from_spki_der(&der)
    }

    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let spki = SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|e| KeyError::Malformed(format!("not a SubjectPublicKeyInfo: {e}")))?;
        check_ec_p256(spki.algorithm.oid, spki.algorithm.parameters_oid().ok())?;
        let point = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| KeyError::Malformed("public key bit string has unused bits".into()))?;
        Self::from_sec1_bytes(point)
    }

    /// Reads a SEC1 point (uncompressed `04‖x‖y` or compressed).
    pub fn from_sec1_bytes(point: &[u8]) -> Result<Self, KeyError> {
        let key = p256::PublicKey::from_sec1_bytes(point).map_err(|_| KeyError::InvalidPoint)?;
        Self::from_p256(&key)
    }

    /// Reads a public JWK (`kty` "EC", `crv` "P-256", `x`, `y` base64url of
    /// 32 bytes each). Other members (`kid`, `use`, `alg`) are not looked at.
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self, KeyError> {
        let member = |name: &str| jwk.get(name).and_then(serde_json::Value::as_str);
        match member("kty") {
            Some("EC") => {}
            Some(other) => return Err(KeyError::UnsupportedAlgorithm(format!("kty {other:?}"))),
            None => return Err(KeyError::Malformed("JWK without a string \"kty\"".into())),
        }
        match member("crv") {
            Some("P-256") => {}
            Some(other) => return Err(KeyError::UnsupportedCurve(format!("{other:?}"))),
            None => return Err(KeyError::Malformed("JWK without a string \"crv\"".into())),
        }
        let coordinate = |name: &str| -> Result<Vec<u8>, KeyError> {
            let text = member(name)
                .ok_or_else(|| KeyError::Malformed(format!("JWK without a string \"{name}\"")))?;
            let bytes = URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| KeyError::Malformed(format!("JWK \"{name}\" is not base64url")))?;
            if bytes.len() != 32 {
                return Err(KeyError::Malformed(format!(
                    "JWK \"{name}\" is not 32 bytes"
                )));
            }
            Ok(bytes)
        };
        let mut point = Vec::with_capacity(65);
        point.push(0x04);
        point.extend_from_slice(&coordinate("x")?);
        point.extend_from_slice(&coordinate("y")?);
        Self::from_sec1_bytes(&point)
    }

    fn from_p256(key: &p256::PublicKey) -> Result<Self, KeyError> {
        let encoded = key.to_encoded_point(false);
        let point: [u8; 65] = encoded
            .as_bytes()
            .try_into()
            .map_err(|_| KeyError::InvalidPoint)?;
        let verifier = ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .map_err(|_| KeyError::InvalidPoint)?;
        let key_id = thumbprint(&point);
        Ok(Self {
            point,
            verifier,
            key_id,
        })
    }

    /// The RFC 7638 JWK SHA-256 thumbprint, base64url without padding: the
    /// SHA-256 of `{"crv":"P-256","kty":"EC","x":"…","y":"…"}`.
    pub fn key_id(&self) -> KeyId {
        self.key_id.clone()
    }

    /// The uncompressed SEC1 point `04‖x‖y` (65 bytes).
    pub fn sec1_uncompressed(&self) -> &[u8; 65] {
        &self.point
    }

    /// The key as SPKI DER.
    pub fn to_spki_der(&self) -> Vec<u8> {
        self.p256()
            .to_public_key_der()
            .map(|doc| doc.into_vec())
            .unwrap_or_default()
    }

    /// The key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`, LF line endings),
    /// byte for byte what `openssl ec -pubout` writes.
    pub fn to_spki_pem(&self) -> String {
        self.p256()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// The public JWK: `{"kty":"EC","crv":"P-256","x":…,"y":…}`.
    pub fn jwk(&self) -> serde_json::Value {
        let (x, y) = self.coordinates_b64();
        serde_json::json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y })
    }

    /// Verifies an ASN.1 DER ECDSA P-256/SHA-256 signature over exactly
    /// `body`. Low-S and high-S forms both verify.
    pub fn verify(&self, body: &[u8], signature_der: &[u8]) -> Result<(), SignatureError> {
        if signature_der.len() < 8
            || signature_der.len() > MAX_DER_SIGNATURE_BYTES
            || signature_der[0] != 0x30
        {
            return Err(SignatureError::MalformedSignature);
        }
        self.verifier
            .verify_sig(body, signature_der)
            .map_err(|_| SignatureError::Mismatch)
    }

    /// Verifies like [`PublicKey::verify`] and returns the SHA-256 of
    /// `body`, reading it once: the digest is computed here and the signature
    /// checked against it, so a caller that also needs the body's hash (as
    /// its identity) does not hash it a second time.
    pub fn verify_and_hash(
        &self,
        body: &[u8],
        signature_der: &[u8],
    ) -> Result<[u8; 32], SignatureError> {
        if signature_der.len() < 8
            || signature_der.len() > MAX_DER_SIGNATURE_BYTES
            || signature_der[0] != 0x30
        {
            return Err(SignatureError::MalformedSignature);
        }
        let digest = digest::digest(&digest::SHA256, body);
        self.verifier
            .verify_digest_sig(&digest, signature_der)
            .map_err(|_| SignatureError::Mismatch)?;
        Ok(digest
            .as_ref()
            .try_into()
            .expect("a SHA-256 digest is 32 bytes"))
    }

    fn p256(&self) -> p256::PublicKey {
        // The point was validated on construction.
        p256::PublicKey::from_sec1_bytes(&self.point).expect("validated on construction")
    }

    /// The base64url (no padding) `x` and `y` coordinates.
    pub(crate) fn coordinates_b64(&self) -> (String, String) {
        (
            URL_SAFE_NO_PAD.encode(&self.point[1..33]),
            URL_SAFE_NO_PAD.encode(&self.point[33..65]),
        )
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.point == other.point
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("key_id", &self.key_id.as_str())
            .finish_non_exhaustive()
    }
}

/// RFC 7638 thumbprint of an uncompressed P-256 point.
fn thumbprint(point: &[u8; 65]) -> KeyId {
    let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
    let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
    // Members in lexicographic order, no whitespace (RFC 7638 §3.2).
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let digest = URL_SAFE_NO_PAD.encode(sha256(canonical.as_bytes()));
    KeyId::parse(digest).expect("a SHA-256 thumbprint is 43 base64url characters")
}

/// A P-256 signing key, for submitters' tools (the CLI) and tests. Signing
/// uses RFC 6979 deterministic nonces (p256).
#[derive(Clone)]
pub struct SigningKey {
    inner: p256::ecdsa::SigningKey,
}

impl SigningKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        Self {
            inner: p256::ecdsa::SigningKey::random(&mut OsRng),
        }
    }

    /// Reads an unencrypted private key PEM: PKCS#8 (`-----BEGIN PRIVATE
    /// KEY-----`, as `openssl genpkey` writes) or SEC1 (`-----BEGIN EC
    /// PRIVATE KEY-----`, as `openssl ecparam -genkey` writes, with or
    /// without its `EC PARAMETERS` block). Other curves are refused.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) = pem_block(
            pem,
            &["PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY"],
            "PRIVATE KEY or EC PRIVATE KEY",
        )?;
        match label {
            "PRIVATE KEY" => Self::from_pkcs8_der(&der),
            "EC PRIVATE KEY" => Self::from_sec1_der(&der),
            _ => Err(KeyError::Encrypted),
        }
    }

    /// Reads a DER PKCS#8 PrivateKeyInfo.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let info = PrivateKeyInfo::try_from(der)
            .map_err(|e| KeyError::Malformed(format!("not a PKCS#8 private key: {e}")))?;
        check_ec_p256(info.algorithm.oid, info.algorithm.parameters_oid().ok())?;
        let secret = p256::SecretKey::from_pkcs8_der(der)
            .map_err(|e| KeyError::Malformed(format!("invalid P-256 private key: {e}")))?;
        Ok(Self {
            inner: secret.into(),
        })
    }

    /// Reads a DER SEC1 ECPrivateKey (RFC 5915), checking its curve
    /// parameters when present.
    pub fn from_sec1_der(der: &[u8]) -> Result<Self, KeyError> {
        let curve = sec1_curve(der)?;
        if let Some(curve) = curve {
            check_ec_p256(OID_EC_PUBLIC_KEY, Some(curve))?;
        }
        let secret = p256::SecretKey::from_sec1_der(der)
            .map_err(|e| KeyError::Malformed(format!("invalid P-256 private key: {e}")))?;
        Ok(Self {
            inner: secret.into(),
        })
    }

    /// The key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, LF endings).
    /// This is secret material: write it only to a private file.
    pub fn to_pkcs8_pem(&self) -> String {
        p256::SecretKey::from(&self.inner)
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.as_str().to_owned())
            .unwrap_or_default()
    }

    /// The key as PKCS#8 DER (secret material).
    pub(crate) fn to_pkcs8_der(&self) -> Vec<u8> {
        p256::SecretKey::from(&self.inner)
            .to_pkcs8_der()
            .map(|doc| doc.as_bytes().to_vec())
            .unwrap_or_default()
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_p256(&p256::PublicKey::from(self.inner.verifying_key()))
            .expect("a signing key's public point is valid")
    }

    /// Signs exactly `body` (ECDSA P-256, SHA-256) and returns the ASN.1 DER
    /// signature; send `STANDARD` base64 of it in the signature header.
    pub fn sign(&self, body: &[u8]) -> Vec<u8> {
        let signature: p256::ecdsa::Signature = self.inner.sign(body);
        signature.to_der().as_bytes().to_vec()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.public_key().key_id().as_str())
            .finish_non_exhaustive()
    }
}

/// Decodes the signature header: standard base64 (RFC 4648 §4) with
/// padding, of an ASN.1 DER ECDSA signature. Surrounding spaces are ignored;
/// anything else that is not base64 is refused, as is a DER value that is not
/// a well-formed P-256 signature (r and s in 1..n).
pub fn decode_signature_header(header: &str) -> Result<Vec<u8>, SignatureError> {
    let text = header.trim_matches(|c| c == ' ' || c == '\t');
    if text.is_empty() {
        return Err(SignatureError::MalformedHeader("empty".into()));
    }
    // 72 DER bytes are 96 base64 characters.
    if text.len() > 96 {
        return Err(SignatureError::MalformedHeader(
            "longer than a base64 DER P-256 signature (96 characters)".into(),
        ));
    }
    let der = STANDARD.decode(text).map_err(|e| {
        SignatureError::MalformedHeader(format!("not standard base64 with padding ({e})"))
    })?;
    p256::ecdsa::Signature::from_der(&der).map_err(|_| SignatureError::MalformedSignature)?;
    Ok(der)
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// SHA-256 of `bytes` as 64 lowercase hex digits (what receipts carry).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha256(bytes))
}

/// Refuses anything but `id-ecPublicKey` on P-256, naming what it got.
fn check_ec_p256(
    algorithm: ObjectIdentifier,
    curve: Option<ObjectIdentifier>,
) -> Result<(), KeyError> {
    if algorithm != OID_EC_PUBLIC_KEY {
        return Err(KeyError::UnsupportedAlgorithm(algorithm_name(algorithm)));
    }
    match curve {
        Some(curve) if curve == OID_P256 => Ok(()),
        Some(curve) => Err(KeyError::UnsupportedCurve(curve_name(curve))),
        None => Err(KeyError::Malformed(
            "EC key without named-curve parameters".into(),
        )),
    }
}

fn algorithm_name(oid: ObjectIdentifier) -> String {
    let name = match oid.to_string().as_str() {
        "1.2.840.113549.1.1.1" => "RSA",
        "1.2.840.113549.1.1.10" => "RSA-PSS",
        "1.3.101.110" => "X25519",
        "1.3.101.111" => "X448",
        "1.3.101.112" => "Ed25519",
        "1.3.101.113" => "Ed448",
        "1.2.840.10040.4.1" => "DSA",
        _ => return format!("(OID {oid})"),
    };
    format!("{name} (OID {oid})")
}

fn curve_name(oid: ObjectIdentifier) -> String {
    let name = match oid.to_string().as_str() {
        "1.3.132.0.34" => "P-384 (secp384r1)",
        "1.3.132.0.35" => "P-521 (secp521r1)",
        "1.3.132.0.10" => "secp256k1",
        "1.2.840.10045.3.1.1" => "P-192 (prime192v1)",
        "1.3.132.0.33" => "P-224 (secp224r1)",
        "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1",
        _ => return format!("(OID {oid})"),
    };
    format!("{name} (OID {oid})")
}

/// The named curve of a SEC1 ECPrivateKey (RFC 5915 §3), if it names one:
/// `SEQUENCE { version 1, privateKey OCTET STRING, [0] parameters OPTIONAL,
/// [1] publicKey OPTIONAL }`.
fn sec1_curve(der: &[u8]) -> Result<Option<ObjectIdentifier>, KeyError> {
    let malformed =
        |e: p256::pkcs8::der::Error| KeyError::Malformed(format!("not a SEC1 EC private key: {e}"));
    let mut reader = SliceReader::new(der).map_err(malformed)?;
    let curve = reader
        .sequence(|seq| {
            let _version = u8::decode(seq)?;
            let _private_key = OctetStringRef::decode(seq)?;
            let parameters =
                ContextSpecific::<ObjectIdentifier>::decode_explicit(seq, TagNumber::N0)?;
            let _public_key =
                ContextSpecific::<BitStringRef<'_>>::decode_explicit(seq, TagNumber::N1)?;
            Ok(parameters.map(|p| p.value))
        })
        .map_err(malformed)?;
    reader.finish(curve).map_err(malformed)
}

/// Finds the first PEM block whose label is one of `wanted` (skipping
/// others, such as `EC PARAMETERS`) and decodes its base64 body. Tolerates
/// any line width and CRLF line endings; refuses PEM headers
/// (`Proc-Type: 4,ENCRYPTED`).
fn pem_block<'a>(
    text: &str,
    wanted: &[&'a str],
    expected: &'static str,
) -> Result<(&'a str, Vec<u8>), KeyError> {
    const BEGIN: &str = "-----BEGIN ";
    let mut found: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = &after[..label_end];
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(body_end) = body_start.find(&end_marker) else {
            return Err(KeyError::Malformed(format!(
                "PEM block \"{label}\" has no END line"
            )));
        };
        let body = &body_start[..body_end];
        rest = &body_start[body_end + end_marker.len()..];
        let Some(wanted_label) = wanted.iter().find(|w| **w == label) else {
            found.push(format!(
                "\"{}\"",
                label.chars().take(40).collect::<String>()
            ));
            continue;
        };
        if body.contains(':') {
            return Err(KeyError::Encrypted);
        }
        let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let der = STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| KeyError::Malformed(format!("PEM body is not base64 ({e})")))?;
        return Ok((wanted_label, der));
    }
    Err(KeyError::MissingPemBlock {
        expected,
        found: if found.is_empty() {
            "no PEM block".into()
        } else {
            found.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::elliptic_curve::scalar::IsHigh;

    const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");

    fn testdata(name: &str) -> String {
        std::fs::read_to_string(format!("{TESTDATA}/{name}")).unwrap()
    }

    fn submitter_public() -> PublicKey {
        PublicKey::from_spki_pem(&testdata("submitter-test-key.pub.pem")).unwrap()
    }

    #[test]
    fn the_key_id_is_the_rfc7638_thumbprint() {
        let key = submitter_public();
        let (x, y) = key.coordinates_b64();
        // Computed independently: the canonical JSON by hand, SHA-256 from
        // the sha2 crate (not aws-lc-rs).
        let canonical = format!("{{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"{x}\",\"y\":\"{y}\"}}");
        assert_eq!(
            canonical,
            r#"{"crv":"P-256","kty":"EC","x":"3JHr33KqfxXJyRfM6kMUyqo49TWvgpg7GFLnpK3Vv44","y":"olwpfPX97xVXFWR-XYBGRP9DsHX9VDmjUf516L7Vr6U"}"#
        );
        use sha2::Digest as _;
        let by_hand = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()));
        // The same value Python's `cryptography` gives for this file (see
        // testdata/README.md) and jsonwebtoken's own thumbprint.
        let expected = testdata("submitter-test-key.kid");
        assert_eq!(by_hand, expected.trim());
        assert_eq!(key.key_id().as_str(), expected.trim());
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk()).unwrap();
        assert_eq!(
            jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
                .unwrap(),
            expected.trim()
        );
    }

    #[test]
    fn spki_pem_round_trips_byte_for_byte_with_openssl() {
        let pem = testdata("submitter-test-key.pub.pem");
        let key = PublicKey::from_spki_pem(&pem).unwrap();
        assert_eq!(key.to_spki_pem(), pem);
        assert_eq!(PublicKey::from_spki_der(&key.to_spki_der()).unwrap(), key);
        assert_eq!(PublicKey::from_jwk(&key.jwk()).unwrap(), key);
    }

    #[test]
    fn other_curves_and_algorithms_are_refused_by_name() {
        let cases = [
            ("p384.pub.pem", "P-384"),
            ("secp256k1.pub.pem", "secp256k1"),
            ("ed25519.pub.pem", "Ed25519"),
        ];
        for (file, name) in cases {
            let err = PublicKey::from_spki_pem(&testdata(file)).unwrap_err();
            assert!(
                matches!(
                    err,
                    KeyError::UnsupportedCurve(_) | KeyError::UnsupportedAlgorithm(_)
                ),
                "{file}: {err:?}"
            );
            assert!(err.to_string().contains(name), "{file}: {err}");
        }
        let err = SigningKey::from_pkcs8_pem(&testdata("p384-test-key.pem")).unwrap_err();
        assert!(err.to_string().contains("P-384"), "{err}");
    }

    #[test]
    fn malformed_public_keys_are_refused() {
        let private = testdata("submitter-test-key.pem");
        assert!(matches!(
            PublicKey::from_spki_pem(&private),
            Err(KeyError::MissingPemBlock { .. })
        ));
        assert!(matches!(
            PublicKey::from_spki_pem("hello"),
            Err(KeyError::MissingPemBlock { .. })
        ));
        let broken = testdata("submitter-test-key.pub.pem").replace("MFkw", "MFkx");
        assert!(matches!(
            PublicKey::from_spki_pem(&broken),
            Err(KeyError::Malformed(_))
        ));
        // A point off the curve.
        let mut point = *submitter_public().sec1_uncompressed();
        point[64] ^= 1;
        assert_eq!(
            PublicKey::from_sec1_bytes(&point),
            Err(KeyError::InvalidPoint)
        );
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"});
        assert!(matches!(
            PublicKey::from_jwk(&jwk),
            Err(KeyError::UnsupportedCurve(_))
        ));
    }

    #[test]
    fn private_keys_load_from_openssl_sec1_and_pkcs8_pem() {
        // `openssl ecparam -genkey` output: EC PARAMETERS + EC PRIVATE KEY.
        let sec1 = SigningKey::from_pkcs8_pem(&testdata("submitter-test-key.pem")).unwrap();
        assert_eq!(sec1.public_key(), submitter_public());
        // PKCS#8, as `openssl genpkey` writes, and our own round trip.
        let pkcs8 = SigningKey::from_pkcs8_pem(&testdata("receipt-test-key.pem")).unwrap();
        let again = SigningKey::from_pkcs8_pem(&pkcs8.to_pkcs8_pem()).unwrap();
        assert_eq!(again.public_key(), pkcs8.public_key());
        assert_eq!(pkcs8.to_pkcs8_pem(), testdata("receipt-test-key.pem"));
        // CRLF line endings are fine.
        let crlf = testdata("submitter-test-key.pem").replace('\n', "\r\n");
        assert!(SigningKey::from_pkcs8_pem(&crlf).is_ok());
        assert!(matches!(
            SigningKey::from_pkcs8_pem(&testdata("submitter-test-key.pub.pem")),
            Err(KeyError::MissingPemBlock { .. })
        ));
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(
            SigningKey::from_pkcs8_pem(encrypted).unwrap_err(),
            KeyError::Encrypted
        );
        let debug = format!("{sec1:?}");
        assert!(
            debug.contains("key_id") && !debug.contains("inner"),
            "{debug}"
        );
    }

    #[test]
    fn the_openssl_test_vector_verifies() {
        let body = std::fs::read(format!("{TESTDATA}/package.json")).unwrap();
        let signature = decode_signature_header(&testdata("package.json.sig.b64")).unwrap();
        submitter_public().verify(&body, &signature).unwrap();
    }

    #[test]
    fn verify_and_hash_agrees_with_verify_and_returns_the_body_hash() {
        let body = std::fs::read(format!("{TESTDATA}/package.json")).unwrap();
        let signature = decode_signature_header(&testdata("package.json.sig.b64")).unwrap();
        let key = submitter_public();
        assert_eq!(key.verify_and_hash(&body, &signature), Ok(sha256(&body)));
        let mut flipped = body.clone();
        flipped[10] ^= 0x01;
        assert_eq!(
            key.verify_and_hash(&flipped, &signature),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            key.verify_and_hash(&body, b"\x30\x01"),
            Err(SignatureError::MalformedSignature)
        );
        let other = SigningKey::generate().sign(&body);
        assert_eq!(
            key.verify_and_hash(&body, &other),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_byte_flip_anywhere_in_the_body_fails() {
        let body = std::fs::read(format!("{TESTDATA}/package.json")).unwrap();
        let signature = decode_signature_header(&testdata("package.json.sig.b64")).unwrap();
        let key = submitter_public();
        for i in 0..body.len() {
            let mut flipped = body.clone();
            flipped[i] ^= 0x01;
            assert_eq!(
                key.verify(&flipped, &signature),
                Err(SignatureError::Mismatch),
                "byte {i}"
            );
        }
        let mut longer = body.clone();
        longer.push(b'\n');
        assert_eq!(
            key.verify(&longer, &signature),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            key.verify(&body[..body.len() - 1], &signature),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_byte_flip_in_the_signature_fails() {
        let body = b"{}";
        let key = SigningKey::generate();
        let signature = key.sign(body);
        for i in 0..signature.len() {
            let mut flipped = signature.clone();
            flipped[i] ^= 0x01;
            assert!(key.public_key().verify(body, &flipped).is_err(), "byte {i}");
        }
    }

    #[test]
    fn high_s_and_low_s_both_verify() {
        let key = SigningKey::generate();
        let public = key.public_key();
        let body = b"the same bytes";
        let signature = p256::ecdsa::Signature::from_der(&key.sign(body)).unwrap();
        let (r, s) = signature.split_scalars();
        let flipped = p256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        // Exactly one of the two is high-S.
        assert_ne!(bool::from(s.is_high()), bool::from(flipped.s().is_high()));
        for sig in [signature, flipped] {
            let der = sig.to_der().as_bytes().to_vec();
            public.verify(body, &der).unwrap();
            let header = STANDARD.encode(&der);
            assert_eq!(decode_signature_header(&header).unwrap(), der);
        }
    }

    #[test]
    fn the_wrong_key_fails() {
        let body = b"payload";
        let signature = SigningKey::generate().sign(body);
        assert_eq!(
            SigningKey::generate().public_key().verify(body, &signature),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn signature_headers_must_be_standard_base64_of_der() {
        // The openssl vector: 70 DER bytes, so its base64 ends in "==".
        let good = testdata("package.json.sig.b64");
        let der = STANDARD.decode(&good).unwrap();
        assert!(good.ends_with("=="));
        assert_eq!(decode_signature_header(&format!(" {good}\t")).unwrap(), der);
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode(&der);
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&der);
        let raw64 = STANDARD.encode([7u8; 64]);
        let bad: Vec<(&str, String)> = vec![
            ("empty", String::new()),
            ("spaces only", "   ".into()),
            ("inner space", format!("{} {}", &good[..10], &good[10..])),
            ("newline", format!("{}\n{}", &good[..10], &good[10..])),
            ("no padding", unpadded),
            ("junk characters", format!("{good}!")),
            ("too long", "A".repeat(200)),
            ("raw r||s instead of DER", raw64),
            (
                "DER with trailing bytes",
                STANDARD.encode([der.as_slice(), &[0]].concat()),
            ),
        ];
        for (name, header) in bad {
            assert!(
                decode_signature_header(&header).is_err(),
                "{name}: {header:?}"
            );
        }
        // This vector's base64 has a '/', so its URL-safe form differs.
        assert_ne!(url_safe, good);
        assert!(decode_signature_header(&url_safe).is_err());
        let key = SigningKey::generate().public_key();
        assert_eq!(
            key.verify(b"x", &[0u8; 64]),
            Err(SignatureError::MalformedSignature)
        );
        assert_eq!(
            key.verify(b"x", &[]),
            Err(SignatureError::MalformedSignature)
        );
    }

    #[test]
    fn sha256_hex_matches_a_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let body = std::fs::read(format!("{TESTDATA}/package.json")).unwrap();
        assert_eq!(sha256_hex(&body), testdata("package.json.sha256").trim());
    }
}
