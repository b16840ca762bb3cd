//! What each cargo-fuzz target checks, and the seed inputs made by code.
//!
//! Every target feeds arbitrary bytes to code that reads untrusted input and
//! asserts that it neither panics nor accepts something it must refuse; where
//! two implementations read the same thing (aws-lc-rs and RustCrypto `p256`
//! for DER signatures), they must agree.
//!
//! This file is also compiled into `services/evidence/tests/bad_input` (with
//! `#[path]`), which runs every committed seed (`fuzz/seeds/<target>/`) and
//! every kept crash (`fuzz/regressions/<target>/`) through the same checks in
//! plain `cargo test`, and checks that the seeds are what [`seeds`] makes.
//! So it uses only crates the `evidence` crate depends on.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use evidence::generate::{PackageSpec, generate_package};
use evidence::{PublicKey, SigningKey};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rpc_contracts::SubmitterId;
use rpc_contracts::auth::AccessClaims;
use std::sync::LazyLock;

/// A target's check: panics on a finding.
pub type Check = fn(&[u8]);

/// The fuzz targets by name (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: [(&str, Check); 4] = [
    ("package", package),
    ("signature", signature),
    ("key", key),
    ("jwt", jwt),
];

const SUBMITTER_KEY_PEM: &str =
    include_str!("../../services/evidence/testdata/submitter-test-key.pem");
const RECEIPT_JWKS: &str = include_str!("../../services/evidence/testdata/receipt-jwks.json");

/// The fixed TEST-ONLY submitter key: signatures in the seeds are made with
/// it, and verified against its public half.
static SUBMITTER: LazyLock<(SigningKey, PublicKey)> = LazyLock::new(|| {
    let key = SigningKey::from_pkcs8_pem(SUBMITTER_KEY_PEM).expect("the test key parses");
    let public = key.public_key();
    (key, public)
});

/// The same public key as RustCrypto sees it, for the differential check.
static SUBMITTER_P256: LazyLock<p256::ecdsa::VerifyingKey> = LazyLock::new(|| {
    p256::ecdsa::VerifyingKey::from_sec1_bytes(SUBMITTER.1.sec1_uncompressed())
        .expect("a valid point")
});

/// The access-token key, as the gateway builds it from a JWK
/// (`DecodingKey::from_ec_components`), and its `kid`.
static ACCESS_KEY: LazyLock<(String, DecodingKey)> = LazyLock::new(|| {
    let jwk = SUBMITTER.1.jwk();
    let coordinate = |name: &str| jwk[name].as_str().expect("x and y").to_owned();
    let key = DecodingKey::from_ec_components(&coordinate("x"), &coordinate("y"))
        .expect("valid components");
    (SUBMITTER.1.key_id().as_str().to_owned(), key)
});

static RECEIPT_KEYS: LazyLock<Vec<serde_json::Value>> = LazyLock::new(|| {
    let jwks: serde_json::Value = serde_json::from_str(RECEIPT_JWKS).expect("valid JSON");
    jwks["keys"].as_array().expect("a key list").clone()
});

/// `package`: [`evidence::parse_package`] over arbitrary bytes. An accepted
/// package satisfies every rule of `docs/package-format.md`; a refusal
/// names a JSON pointer and keeps its message short.
pub fn package(data: &[u8]) {
    match evidence::parse_package(data) {
        Ok(package) => {
            assert!(data.len() <= evidence::MAX_PACKAGE_BYTES);
            assert!((1..=evidence::MAX_RECORDS).contains(&package.records.len()));
            assert!(!package.package_id.is_nil());
            assert!(
                !package.audience.is_empty()
                    && package.audience.len() <= evidence::MAX_AUDIENCE_CHARS
                    && package.audience.bytes().all(|b| b.is_ascii_graphic())
            );
            for record in &package.records {
                assert!(evidence::is_valid_series(&record.series), "{record:?}");
                assert!(record.value.is_finite(), "{record:?}");
                assert!(record.labels.len() <= evidence::MAX_LABELS);
                for (k, v) in &record.labels {
                    assert!(evidence::is_valid_label_key(k), "{k:?}");
                    assert!(!v.is_empty(), "{k:?}");
                    assert!(v.chars().count() <= evidence::MAX_LABEL_VALUE_CHARS);
                    assert!(!v.chars().any(char::is_control), "{v:?}");
                }
            }
            // No hidden state: the same bytes parse the same way.
            assert_eq!(evidence::parse_package(data).as_ref(), Ok(&package));
            let _ = package.check_audience("local");
        }
        Err(e) => {
            let pointer = e.pointer();
            assert!(
                pointer.is_empty() || pointer.starts_with('/'),
                "{pointer:?}"
            );
            if let evidence::PackageError::Invalid { message, .. } = &e {
                assert!(message.chars().count() <= 301, "{} chars", message.len());
            }
        }
    }
}

/// `signature`: the input is `[n] ‖ n bytes of DER signature ‖ body`,
/// verified with the fixed submitter key by [`PublicKey::verify`] and by
/// [`PublicKey::verify_and_hash`] (what ingest calls): both agree, with
/// each other and with RustCrypto `p256` (strict DER, high-S accepted too),
/// and a success hashes the body. The whole input is also tried as a
/// `Tallyhouse-Signature` header value.
pub fn signature(data: &[u8]) {
    let (_, public) = &*SUBMITTER;
    if let Some((&n, rest)) = data.split_first() {
        let n = usize::from(n).min(rest.len());
        let (der, body) = rest.split_at(n);
        let verified = public.verify(body, der);
        let hashed = public.verify_and_hash(body, der);
        assert_eq!(verified.is_ok(), hashed.is_ok(), "{verified:?} {hashed:?}");
        if let Ok(digest) = hashed {
            assert_eq!(digest, evidence::sha256(body));
        }
        let rust_crypto = p256::ecdsa::Signature::from_der(der).is_ok_and(|sig| {
            use p256::ecdsa::signature::Verifier as _;
            SUBMITTER_P256.verify(body, &sig).is_ok()
        });
        assert_eq!(verified.is_ok(), rust_crypto, "aws-lc-rs and p256 disagree");
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(der) = evidence::decode_signature_header(text)
    {
        assert!(der.len() <= 72 && der.first() == Some(&0x30), "{der:?}");
        // Canonical base64: the header is the encoding of what it decodes to.
        assert_eq!(STANDARD.encode(&der), text.trim_matches([' ', '\t']));
        let _ = public.verify(b"", &der);
    }
}

/// `key`: every reader of keys over arbitrary bytes and text: SPKI PEM and
/// DER, SEC1 points, JWKs, and private keys (PKCS#8 and SEC1, PEM and DER).
/// A key that is accepted round-trips through every form with the same id.
pub fn key(data: &[u8]) {
    fn round_trips(key: &PublicKey) {
        let id = key.key_id();
        for again in [
            PublicKey::from_spki_der(&key.to_spki_der()),
            PublicKey::from_spki_pem(&key.to_spki_pem()),
            PublicKey::from_jwk(&key.jwk()),
            PublicKey::from_sec1_bytes(key.sec1_uncompressed()),
        ] {
            let again = again.expect("an accepted key reads back");
            assert_eq!(&again, key);
            assert_eq!(again.key_id(), id);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(public) = PublicKey::from_spki_pem(text) {
            round_trips(&public);
        }
        if let Ok(jwk) = serde_json::from_str::<serde_json::Value>(text)
            && let Ok(public) = PublicKey::from_jwk(&jwk)
        {
            round_trips(&public);
        }
        if let Ok(private) = SigningKey::from_pkcs8_pem(text) {
            round_trips(&private.public_key());
        }
    }
    if let Ok(public) = PublicKey::from_spki_der(data) {
        round_trips(&public);
    }
    if let Ok(public) = PublicKey::from_sec1_bytes(data) {
        round_trips(&public);
    }
    for private in [
        SigningKey::from_pkcs8_der(data),
        SigningKey::from_sec1_der(data),
    ]
    .into_iter()
    .flatten()
    {
        round_trips(&private.public_key());
    }
}

/// `jwt`: the input as a compact JWS, read the way the gateway reads access
/// tokens (`services/gateway/src/token.rs`: header decoded, `alg` pinned to
/// ES256 and only compared, `kid` looked up among known keys, then
/// `jsonwebtoken::decode::<AccessClaims>` with ES256 pinned) and as a
/// receipt by [`evidence::verify_receipt`]. Only tokens signed with the
/// fixed keys can pass, so an accepted one is checked for its shape.
pub fn jwt(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    if let Ok(header) = jsonwebtoken::decode_header(token.as_ref())
        && header.alg == Algorithm::ES256
        && header.kid.as_deref() == Some(ACCESS_KEY.0.as_str())
    {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        if let Ok(data) =
            jsonwebtoken::decode::<AccessClaims>(token.as_ref(), &ACCESS_KEY.1, &validation)
        {
            assert_eq!(data.header.alg, Algorithm::ES256);
            assert_eq!(token.matches('.').count(), 2);
        }
    }
    if let Ok(claims) = evidence::verify_receipt(&token, &RECEIPT_KEYS) {
        assert_eq!(claims.sha256.len(), 64);
        assert!(
            claims
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }
}

/// One seed input of a target.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The target it seeds.
    pub target: &'static str,
    /// Its file name under `fuzz/seeds/<target>/`.
    pub name: &'static str,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// The seed corpus, deterministic: the same bytes on every run (RFC 6979
/// signatures, a seeded package generator, the evidence crate's test
/// vectors). `cargo run --example make_seeds` in `fuzz/` writes them.
pub fn seeds() -> Vec<Seed> {
    const TESTDATA_PACKAGE: &[u8] = include_bytes!("../../services/evidence/testdata/package.json");
    const TESTDATA_SIG: &str =
        include_str!("../../services/evidence/testdata/package.json.sig.b64");
    const TESTDATA_RECEIPT: &str = include_str!("../../services/evidence/testdata/receipt.jwt");
    const HANDMADE: &str = r#"{"records":[{"series":"a.b_c.9","ts":"2025-03-01T13:00:00.123456789+01:00","value":-1.5e-300,"labels":{"k":"\u20ac \ud83d\ude00","z_9":"x~/y"}},{"value":1E2,"ts":"2025-03-01T12:00:00Z","series":"x"}],"created_at":"2025-03-01T12:00:05+05:30","audience":"local","submitter_id":"9lives","package_id":"0B6F9A52-3C1E-4D7A-9F2B-5E8C1A7D4F30","schema":"tallyhouse.package.v1"}"#;
    const DUPLICATE: &str =
        r#"{"schema":"tallyhouse.package.v1","schema":"tallyhouse.package.v1"}"#;

    let (signing, public) = &*SUBMITTER;
    let mut out = Vec::new();
    let mut add = |target, name, bytes: Vec<u8>| {
        out.push(Seed {
            target,
            name,
            bytes,
        })
    };

    let created_at = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("a time");
    let spec = PackageSpec::new(
        SubmitterId::parse("acme-betting").expect("an id"),
        "local",
        6,
        created_at,
        7,
    );
    let generated = generate_package(&spec).bytes;
    add("package", "generated-6-records.json", generated.clone());
    add("package", "testdata.json", TESTDATA_PACKAGE.to_vec());
    add(
        "package",
        "handmade-edges.json",
        HANDMADE.as_bytes().to_vec(),
    );
    add(
        "package",
        "duplicate-member.json",
        DUPLICATE.as_bytes().to_vec(),
    );

    let framed = |der: &[u8], body: &[u8]| {
        let mut v = vec![u8::try_from(der.len()).expect("a DER signature is short")];
        v.extend_from_slice(der);
        v.extend_from_slice(body);
        v
    };
    let testdata_der = STANDARD.decode(TESTDATA_SIG.trim()).expect("base64");
    add(
        "signature",
        "openssl-testdata.bin",
        framed(&testdata_der, TESTDATA_PACKAGE),
    );
    let body = br#"{"schema":"tallyhouse.package.v1"}"#;
    let low = signing.sign(body);
    add("signature", "low-s.bin", framed(&low, body));
    let sig = p256::ecdsa::Signature::from_der(&low).expect("DER");
    let (r, s) = sig.split_scalars();
    let other_s = p256::ecdsa::Signature::from_scalars(r, -*s).expect("a signature");
    add(
        "signature",
        "other-s.bin",
        framed(other_s.to_der().as_bytes(), body),
    );
    add(
        "signature",
        "header.txt",
        TESTDATA_SIG.trim().as_bytes().to_vec(),
    );

    add("key", "spki.pem", public.to_spki_pem().into_bytes());
    add("key", "spki.der", public.to_spki_der());
    add("key", "jwk.json", public.jwk().to_string().into_bytes());
    add(
        "key",
        "sec1-uncompressed.bin",
        public.sec1_uncompressed().to_vec(),
    );
    let mut compressed = vec![2 + (public.sec1_uncompressed()[64] & 1)];
    compressed.extend_from_slice(&public.sec1_uncompressed()[1..33]);
    add("key", "sec1-compressed.bin", compressed);
    add(
        "key",
        "sec1-private.pem",
        SUBMITTER_KEY_PEM.as_bytes().to_vec(),
    );
    add(
        "key",
        "pkcs8-private.pem",
        signing.to_pkcs8_pem().into_bytes(),
    );
    add(
        "key",
        "p384.pub.pem",
        include_bytes!("../../services/evidence/testdata/p384.pub.pem").to_vec(),
    );

    add(
        "jwt",
        "receipt.jwt",
        TESTDATA_RECEIPT.trim().as_bytes().to_vec(),
    );
    let claims = serde_json::json!({
        "iss": rpc_contracts::auth::DEFAULT_TOKEN_ISSUER,
        "aud": rpc_contracts::auth::DEFAULT_TOKEN_AUDIENCE,
        "sub": "alice",
        "roles": ["analyst"],
        "iat": 1_790_000_000,
        "nbf": 1_790_000_000,
        "exp": 1_790_086_400,
        "jti": "0b6f9a52-3c1e-4d7a-9f2b-5e8c1a7d4f30",
        "ver": 1,
    });
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": public.key_id().as_str()});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let fixed = p256::ecdsa::Signature::from_der(&signing.sign(signing_input.as_bytes()))
        .expect("DER")
        .to_bytes();
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(fixed));
    add("jwt", "access-token.jwt", token.into_bytes());
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    add("jwt", "alg-none.jwt", none.into_bytes());
    out
}
