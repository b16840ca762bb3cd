//! Properties of the wire types (proptest): for every kind of message that
//! crosses the bus, decode(encode(x)) = x with the MessagePack codec the
//! RPC layer uses, and from_json(to_json(x)) = x with JSON, the form people
//! see (the CLI's `--json`, snapshots, the audit trail's `detail`). The
//! validating ids accept on the wire exactly what their parsers accept.

use proptest::prelude::*;
use rpc_contracts::auth::{
    AccessClaims, AuditEntry, AuditRecord, LoginRequest, Password, Role, ThrottleEntry,
    ThrottleScope, TokenIdentity, User,
};
use rpc_contracts::ingest::{JwkSet, SubmitPackageRequest, SubmitPackageResponse};
use rpc_contracts::query::{
    Aggregate, ListPackagesRequest, PackageDetail, PackageSummary, RawChunk, SeriesPage,
    SeriesPoint, SeriesRequest,
};
use rpc_contracts::registry::{AddKeyRequest, KeyInfo};
use rpc_contracts::{Bytes, ErrorCode, KeyId, Reply, RpcError, SubmitterId, codec};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::fmt::Debug;
use time::{OffsetDateTime, UtcOffset};
use uuid::Uuid;

/// Both codecs give `x` back.
fn round_trips<T>(x: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let packed = codec::encode(x).map_err(TestCaseError::fail)?;
    prop_assert_eq!(
        &codec::decode::<T>(&packed).map_err(TestCaseError::fail)?,
        x
    );
    let text = serde_json::to_string(x).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: T =
        serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
    prop_assert_eq!(&back, x);
    Ok(())
}

/// A time RFC 3339 can write: years 1 to 9998, whole-minute offsets.
fn time() -> impl Strategy<Value = OffsetDateTime> {
    (
        -62_135_596_800i64..253_370_764_800,
        0..1_000_000_000u32,
        -(23 * 60 + 59)..=(23 * 60 + 59i32),
    )
        .prop_map(|(secs, nanos, offset_minutes)| {
            OffsetDateTime::from_unix_timestamp(secs)
                .unwrap()
                .replace_nanosecond(nanos)
                .unwrap()
                .to_offset(UtcOffset::from_whole_seconds(offset_minutes * 60).unwrap())
        })
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes)
}

fn submitter() -> impl Strategy<Value = SubmitterId> {
    "[a-z0-9][a-z0-9._-]{0,63}".prop_map(|s| SubmitterId::parse(s).unwrap())
}

fn key_id() -> impl Strategy<Value = KeyId> {
    "[A-Za-z0-9_-]{43}".prop_map(|s| KeyId::parse(s).unwrap())
}

fn roles() -> impl Strategy<Value = Vec<Role>> {
    prop::collection::vec(prop::sample::select(Role::ALL.to_vec()), 0..4)
}

fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

/// JSON values as the services put them in `detail` and in JWKs: objects
/// of strings, integers, finite numbers, booleans, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite_f64().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn rpc_error() -> impl Strategy<Value = RpcError> {
    (
        prop::sample::select(ErrorCode::ALL.to_vec()),
        text(),
        any::<bool>(),
    )
        .prop_map(|(code, message, retryable)| {
            RpcError::new(code, message).with_retryable(retryable)
        })
}

fn summary() -> impl Strategy<Value = PackageSummary> {
    (
        submitter(),
        uuid(),
        "[0-9a-f]{64}",
        any::<u64>(),
        any::<u64>(),
        time(),
        time(),
    )
        .prop_map(
            |(submitter_id, package_id, sha256, size, records, created_at, received_at)| {
                PackageSummary {
                    submitter_id,
                    package_id,
                    sha256,
                    size,
                    records,
                    created_at,
                    received_at,
                }
            },
        )
}

fn audit_record() -> impl Strategy<Value = AuditRecord> {
    (
        (
            prop::option::of(text()),
            text(),
            prop::option::of(text()),
            text(),
            prop::option::of(any::<u16>()),
            prop::option::of(submitter()),
            prop::option::of(time()),
        ),
        (
            prop::option::of(time()),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
            // `Some(null)` cannot round-trip through an `Option` (it reads
            // back as `None`); the services only ever put objects here.
            prop::option::of(json_object()),
        ),
    )
        .prop_map(
            |(
                (actor, action, endpoint, outcome, status, submitter_id, range_from),
                (range_to, rows, bytes, target, client_addr, trace_id, detail),
            )| AuditRecord {
                actor,
                action,
                endpoint,
                outcome,
                status,
                submitter_id,
                range_from,
                range_to,
                rows,
                bytes,
                target,
                client_addr,
                trace_id,
                detail,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn ingest_messages_round_trip(
        key_id in text(), signature in text(), body in bytes(),
        receipt in text(), created in any::<bool>(),
        keys in prop::collection::vec(json_object(), 0..3),
        error in rpc_error(),
    ) {
        round_trips(&SubmitPackageRequest { key_id, signature, body })?;
        let response = SubmitPackageResponse { receipt, created };
        round_trips(&response)?;
        round_trips(&Reply::Ok(response))?;
        round_trips(&Reply::<SubmitPackageResponse>::Error(error))?;
        round_trips(&JwkSet { keys })?;
    }

    #[test]
    fn auth_messages_round_trip(
        (iss, aud, sub) in (text(), text(), text()),
        roles in roles(),
        (iat, nbf, exp, ver) in (any::<i64>(), any::<i64>(), any::<i64>(), any::<u64>()),
        jti in uuid(),
        (username, password) in (text(), text()),
        (client_addr, trace_id) in (prop::option::of(text()), prop::option::of(text())),
        (issued_at, expires_at, other) in (time(), time(), time()),
        (disabled, failures, locked) in (any::<bool>(), any::<u32>(), any::<bool>()),
        blocked_until in prop::option::of(time()),
        record in audit_record(),
        id in any::<i64>(),
    ) {
        round_trips(&AccessClaims { iss, aud, sub: sub.clone(), roles: roles.clone(), iat, nbf, exp, jti, ver })?;
        round_trips(&LoginRequest {
            username: username.clone(),
            password: Password(password),
            client_addr,
            trace_id,
        })?;
        round_trips(&TokenIdentity { jti, sub, issued_at, expires_at, version: ver })?;
        round_trips(&User {
            username: username.clone(),
            roles,
            disabled,
            created_at: issued_at,
            password_changed_at: other,
        })?;
        round_trips(&ThrottleEntry {
            scope: if locked { ThrottleScope::Account } else { ThrottleScope::Address },
            key: username,
            failures,
            blocked_until,
            locked,
            last_failure_at: expires_at,
        })?;
        round_trips(&record)?;
        round_trips(&AuditEntry { id, at: other, record })?;
    }

    #[test]
    fn registry_and_query_messages_round_trip(
        submitter_id in submitter(),
        key_id in key_id(),
        pem in text(),
        (t1, t2, t3) in (time(), time(), time()),
        (o1, o2) in (prop::option::of(time()), prop::option::of(time())),
        summary in summary(),
        (cursor, limit) in (prop::option::of(text()), any::<u32>()),
        (series, bucket_secs) in (text(), any::<u64>()),
        agg in prop::sample::select(Aggregate::ALL.to_vec()),
        labels in prop::collection::btree_map(text(), text(), 0..4),
        points in prop::collection::vec((time(), finite_f64(), any::<u64>()), 0..4),
        chunk in bytes(),
        total_size in any::<u64>(),
    ) {
        round_trips(&AddKeyRequest {
            submitter_id: submitter_id.clone(),
            public_key_pem: pem.clone(),
            not_before: o1,
            not_after: o2,
        })?;
        round_trips(&KeyInfo {
            key_id: key_id.clone(),
            submitter_id: submitter_id.clone(),
            public_key_pem: pem.clone(),
            not_before: t1,
            not_after: o1,
            revoked_at: o2,
            created_at: t2,
        })?;
        round_trips(&ListPackagesRequest {
            submitter_id: Some(submitter_id.clone()),
            from: o1,
            to: o2,
            limit,
            cursor,
        })?;
        round_trips(&PackageDetail {
            summary: summary.clone(),
            audience: pem.clone(),
            key_id,
            signature: series.clone(),
            receipt: pem,
        })?;
        round_trips(&SeriesRequest {
            submitter_id,
            series,
            from: t1,
            to: t2,
            bucket_secs,
            agg,
            labels,
            after: o1,
            limit,
        })?;
        round_trips(&SeriesPage {
            points: points
                .into_iter()
                .map(|(bucket, value, count)| SeriesPoint { bucket, value, count })
                .collect(),
            next_cursor: Some(t3),
        })?;
        round_trips(&RawChunk { bytes: chunk, total_size })?;
    }

    /// A validating id decodes from the wire exactly when its parser
    /// accepts the text, in both codecs.
    #[test]
    fn ids_decode_exactly_when_they_parse(s in prop_oneof![
        "[a-z0-9][a-z0-9._-]{0,70}",
        "[A-Za-z0-9_+/=-]{40,46}",
        "\\PC{0,70}",
    ]) {
        let packed = codec::encode(&s).unwrap();
        let text = json!(s).to_string();
        let parsed = SubmitterId::parse(s.clone()).ok();
        prop_assert_eq!(codec::decode::<SubmitterId>(&packed).ok(), parsed.clone());
        prop_assert_eq!(serde_json::from_str::<SubmitterId>(&text).ok(), parsed);
        let parsed = KeyId::parse(s.clone()).ok();
        prop_assert_eq!(codec::decode::<KeyId>(&packed).ok(), parsed.clone());
        prop_assert_eq!(serde_json::from_str::<KeyId>(&text).ok(), parsed);
    }
}
