//! Identifiers that refuse to exist when invalid: they check themselves on
//! construction and on deserialization.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A submitter's id: 1 to 64 of `a-z`, `0-9`, `-`, `_`, `.`, starting with a
/// letter or digit (e.g. `acme-betting`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SubmitterId(String);

impl SubmitterId {
    /// Checks and wraps `s`.
    pub fn parse(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
        if first_ok && rest_ok && s.len() <= 64 {
            Ok(Self(s))
        } else {
            Err(format!(
                "invalid submitter id {s:?}: 1 to 64 of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SubmitterId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl From<SubmitterId> for String {
    fn from(id: SubmitterId) -> String {
        id.0
    }
}

impl fmt::Display for SubmitterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key id: the RFC 7638 JWK SHA-256 thumbprint of the public key,
/// base64url without padding (43 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

impl KeyId {
    /// Checks and wraps `s`.
    pub fn parse(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        let ok = s.len() == 43
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(Self(s))
        } else {
            Err("invalid key id: expected a 43-character base64url JWK thumbprint".to_owned())
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> String {
        id.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submitter_ids_are_checked_on_deserialize() {
        for good in ["acme", "acme-betting", "a1.b_c", "9lives"] {
            assert!(
                serde_json::from_str::<SubmitterId>(&format!("\"{good}\"")).is_ok(),
                "{good}"
            );
        }
        let long = "x".repeat(65);
        for bad in ["", "Acme", "-acme", "ac me", "acme/../x", long.as_str()] {
            assert!(
                serde_json::from_str::<SubmitterId>(&format!("\"{bad}\"")).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn key_ids_are_43_base64url_characters() {
        let good = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        assert!(KeyId::parse(good).is_ok());
        assert!(KeyId::parse(&good[1..]).is_err());
        assert!(KeyId::parse(good.replace('-', "+")).is_err());
    }
}
