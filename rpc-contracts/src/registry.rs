//! Calls served by the registry service: submitters and their public keys.

use crate::{KeyId, ServiceQueue, SubmitterId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The registry's queue, contract version 1.
pub const QUEUE: ServiceQueue = ServiceQueue::new("registry.v1");

define_call!(
    QUEUE,
    /// Liveness over the bus: proves a registry instance consumes its queue.
    Ping, "registry.v1.ping", PingRequest => PingResponse
);
define_call!(
    QUEUE,
    /// Registers a submitter; repeating the same registration is a no-op,
    /// a different name for an existing id is `conflict`.
    AddSubmitter, "registry.v1.add_submitter", AddSubmitterRequest => Submitter
);
define_call!(
    QUEUE,
    /// Every submitter, by id.
    ListSubmitters, "registry.v1.list_submitters", ListSubmittersRequest => SubmitterList
);
define_call!(
    QUEUE,
    /// Adds a public key (SPKI PEM, P-256) to a submitter; answers its key id.
    /// Adding the same key to the same submitter again is a no-op.
    AddKey, "registry.v1.add_key", AddKeyRequest => KeyInfo
);
define_call!(
    QUEUE,
    /// A submitter's keys.
    ListKeys, "registry.v1.list_keys", ListKeysRequest => KeyList
);
define_call!(
    QUEUE,
    /// Revokes a key from a time on (now by default). Packages received
    /// before that time stay valid.
    RevokeKey, "registry.v1.revoke_key", RevokeKeyRequest => KeyInfo
);
define_call!(
    QUEUE,
    /// One key by id, with its owner and validity: what ingest verifies against.
    GetKey, "registry.v1.get_key", GetKeyRequest => KeyInfo
);

/// Request of [`Ping`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingRequest {}

/// Response of [`Ping`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {
    /// The answering service.
    pub service: String,
    /// Its version (the crate version it was built from).
    pub version: String,
    /// Which instance answered (process-unique id).
    pub instance: String,
}

/// Request of [`AddSubmitter`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddSubmitterRequest {
    /// The new submitter's id.
    pub submitter_id: SubmitterId,
    /// A display name.
    #[serde(default)]
    pub name: Option<String>,
}

/// A submitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitter {
    /// Its id.
    pub submitter_id: SubmitterId,
    /// Its display name.
    pub name: Option<String>,
    /// When it was registered.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Request of [`ListSubmitters`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSubmittersRequest {}

/// Response of [`ListSubmitters`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitterList {
    /// Ordered by id.
    pub submitters: Vec<Submitter>,
}

/// Request of [`AddKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddKeyRequest {
    /// The key's owner.
    pub submitter_id: SubmitterId,
    /// The public key, SPKI PEM as `openssl ec -pubout` writes it.
    pub public_key_pem: String,
    /// Start of validity (now by default).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
    /// End of validity (none by default).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
}

/// A registered key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// RFC 7638 JWK thumbprint of the key.
    pub key_id: KeyId,
    /// Its owner.
    pub submitter_id: SubmitterId,
    /// The public key, SPKI PEM.
    pub public_key_pem: String,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity, if any.
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    /// From when the key is revoked, if it is.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// When it was registered.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Request of [`ListKeys`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListKeysRequest {
    /// Whose keys.
    pub submitter_id: SubmitterId,
}

/// Response of [`ListKeys`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    /// Ordered by creation.
    pub keys: Vec<KeyInfo>,
}

/// Request of [`RevokeKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeKeyRequest {
    /// The key's owner (must match).
    pub submitter_id: SubmitterId,
    /// The key.
    pub key_id: KeyId,
    /// Effective time of the revocation (now by default).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub at: Option<OffsetDateTime>,
}

/// Request of [`GetKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetKeyRequest {
    /// The key.
    pub key_id: KeyId,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn wire_format_is_pinned() {
        insta::assert_json_snapshot!(PingRequest {}, @"{}");
        let resp = PingResponse {
            service: "registry".into(),
            version: "0.1.0".into(),
            instance: "registry-1".into(),
        };
        insta::assert_json_snapshot!(resp, @r#"
        {
          "service": "registry",
          "version": "0.1.0",
          "instance": "registry-1"
        }
        "#);
        let key = KeyInfo {
            key_id: KeyId::parse("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs").unwrap(),
            submitter_id: SubmitterId::parse("acme").unwrap(),
            public_key_pem: "-----BEGIN PUBLIC KEY-----\n...".into(),
            not_before: datetime!(2026-01-01 00:00 UTC),
            not_after: None,
            revoked_at: Some(datetime!(2026-06-01 12:00 UTC)),
            created_at: datetime!(2026-01-01 00:00 UTC),
        };
        insta::assert_json_snapshot!(key, @r#"
        {
          "key_id": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
          "submitter_id": "acme",
          "public_key_pem": "-----BEGIN PUBLIC KEY-----\n...",
          "not_before": "2026-01-01T00:00:00Z",
          "not_after": null,
          "revoked_at": "2026-06-01T12:00:00Z",
          "created_at": "2026-01-01T00:00:00Z"
        }
        "#);
        let back: KeyInfo = serde_json::from_str(&serde_json::to_string(&key).unwrap()).unwrap();
        assert_eq!(back, key);
        let req: AddKeyRequest =
            serde_json::from_str(r#"{"submitter_id":"acme","public_key_pem":"x"}"#).unwrap();
        assert_eq!(req.not_before, None);
    }

    #[test]
    fn invalid_ids_are_refused_at_the_boundary() {
        let err = serde_json::from_str::<ListKeysRequest>(r#"{"submitter_id":"../etc"}"#);
        assert!(err.is_err());
    }
}
