//! Package format v1: parses the exact body bytes of a submitted package
//! into typed records in one pass, refusing anything outside the format with
//! a JSON pointer to the offending place (`/records/3/ts`).
//!
//! The parser is a hand-written serde visitor over `serde_json`'s slice
//! deserializer: no intermediate `serde_json::Value`, no per-record
//! allocation beyond the record's own `series` and `labels`, duplicate keys
//! detected at every level, unknown keys refused, limits enforced as soon as
//! they are crossed. The rules are specified in `docs/package-format.md`.

use rpc_contracts::SubmitterId;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::marker::PhantomData;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// The value of `schema` for this format.
pub const SCHEMA_V1: &str = "tallyhouse.package.v1";
/// The largest body accepted, in bytes (16 MiB).
pub const MAX_PACKAGE_BYTES: usize = 16 * 1024 * 1024;
/// The most records a package may hold (at least one is required).
pub const MAX_RECORDS: usize = 100_000;
/// The longest series name, in characters.
pub const MAX_SERIES_CHARS: usize = 128;
/// The most labels a record may carry.
pub const MAX_LABELS: usize = 32;
/// The longest label key, in characters.
pub const MAX_LABEL_KEY_CHARS: usize = 64;
/// The longest label value, in characters (Unicode scalar values).
pub const MAX_LABEL_VALUE_CHARS: usize = 256;
/// The longest audience, in characters.
pub const MAX_AUDIENCE_CHARS: usize = 128;

/// Longest error message returned (they may quote the input).
const MAX_MESSAGE_CHARS: usize = 300;
/// Longest unknown key or label key quoted in a pointer.
const MAX_POINTER_KEY_CHARS: usize = 128;

/// A parsed, valid package (format v1). Not serializable on purpose: the
/// evidence is the original bytes, never a re-encoding of this.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    /// The submitter's id for this package; with `submitter_id` it
    /// identifies the package.
    pub package_id: Uuid,
    /// Who submitted it; must match the signing key's owner.
    pub submitter_id: SubmitterId,
    /// The deployment the package is meant for (`local` for local runs);
    /// the receiver compares it with its own name ([`Package::check_audience`]).
    pub audience: String,
    /// When the submitter built the package.
    pub created_at: OffsetDateTime,
    /// The data points, in the order sent (1 to [`MAX_RECORDS`]).
    pub records: Vec<Record>,
}

/// One data point.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The series name, e.g. `bets.stake`.
    pub series: String,
    /// When the value was observed, with the offset the submitter gave.
    pub ts: OffsetDateTime,
    /// The value, always finite.
    pub value: f64,
    /// Dimensions, e.g. `{"currency": "EUR"}` (0 to [`MAX_LABELS`]).
    pub labels: BTreeMap<String, String>,
}

/// Why a package was refused: the caller's fault, answered as a 400 (or 413
/// for [`PackageError::TooLarge`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    /// The body is larger than [`MAX_PACKAGE_BYTES`].
    #[error("package too large: {size} bytes, at most {limit}")]
    TooLarge {
        /// The body's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is not a valid package; `pointer` (RFC 6901) names the
    /// offending place, `""` being the whole document.
    #[error("invalid package at {}: {message}", if pointer.is_empty() { "the document root" } else { pointer.as_str() })]
    Invalid {
        /// JSON pointer to the offending value or member.
        pointer: String,
        /// What is wrong with it.
        message: String,
    },
}

impl PackageError {
    /// The JSON pointer of the offending place (`""` for the whole body).
    pub fn pointer(&self) -> &str {
        match self {
            PackageError::TooLarge { .. } => "",
            PackageError::Invalid { pointer, .. } => pointer,
        }
    }

    fn invalid(pointer: String, message: impl fmt::Display) -> Self {
        let mut message = message.to_string();
        if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
            message.truncate(cut);
            message.push('…');
        }
        PackageError::Invalid { pointer, message }
    }
}

impl Package {
    /// Refuses the package unless its `audience` is `expected` (this
    /// deployment's name).
    pub fn check_audience(&self, expected: &str) -> Result<(), PackageError> {
        if self.audience == expected {
            Ok(())
        } else {
            Err(PackageError::invalid(
                "/audience".into(),
                format!(
                    "package is meant for {}, this is {}",
                    quote(&self.audience),
                    quote(expected)
                ),
            ))
        }
    }
}

/// Parses and validates a package body (UTF-8 JSON, format v1).
pub fn parse_package(bytes: &[u8]) -> Result<Package, PackageError> {
    if bytes.len() > MAX_PACKAGE_BYTES {
        return Err(PackageError::TooLarge {
            size: bytes.len(),
            limit: MAX_PACKAGE_BYTES,
        });
    }
    let failure = Failure::default();
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = PackageSeed { failure: &failure }
        .deserialize(&mut deserializer)
        .and_then(|package| deserializer.end().map(|()| package));
    parsed.map_err(|e| {
        failure
            .0
            .into_inner()
            .unwrap_or_else(|| PackageError::invalid(String::new(), e))
    })
}

/// Whether `name` is a valid series name: 1 to 128 characters, dot-separated
/// non-empty segments of `a-z`, `0-9`, `_`, the first character a letter.
pub fn is_valid_series(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_SERIES_CHARS
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'.'
        && !name.contains("..")
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// Whether `key` is a valid label key: 1 to 64 of `a-z`, `0-9`, `_`, the
/// first character a letter.
pub fn is_valid_label_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL_KEY_CHARS
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("label values must not be empty (leave the label out)".into());
    }
    if value.chars().nth(MAX_LABEL_VALUE_CHARS).is_some() {
        return Err(format!(
            "label value longer than {MAX_LABEL_VALUE_CHARS} characters"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err("label values must not contain control characters".into());
    }
    Ok(())
}

fn check_series(name: &str) -> Result<String, String> {
    if is_valid_series(name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "invalid series name {}: 1 to {MAX_SERIES_CHARS} characters, dot-separated non-empty segments of a-z, 0-9, '_', starting with a letter",
            quote(name)
        ))
    }
}

fn check_schema(schema: &str) -> Result<(), String> {
    if schema == SCHEMA_V1 {
        Ok(())
    } else {
        Err(format!(
            "unsupported schema {}, expected \"{SCHEMA_V1}\"",
            quote(schema)
        ))
    }
}

fn parse_package_id(text: &str) -> Result<Uuid, String> {
    let id = (text.len() == 36)
        .then(|| Uuid::try_parse(text).ok())
        .flatten()
        .ok_or_else(|| {
            format!(
                "invalid package id {}: expected a hyphenated UUID (8-4-4-4-12 hex digits)",
                quote(text)
            )
        })?;
    if id.is_nil() {
        return Err("the package id must not be the nil UUID".into());
    }
    Ok(id)
}

fn parse_submitter_id(text: &str) -> Result<SubmitterId, String> {
    if text.len() > 64 {
        return Err("invalid submitter id: longer than 64 characters".into());
    }
    SubmitterId::parse(text)
}

fn parse_audience(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= MAX_AUDIENCE_CHARS
        && text.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "invalid audience {}: 1 to {MAX_AUDIENCE_CHARS} printable ASCII characters without spaces",
            quote(text)
        ))
    }
}

fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        format!(
            "invalid date-time {}: expected RFC 3339, e.g. \"2025-03-01T12:00:00Z\" ({e})",
            quote(text)
        )
    })
}

/// `text` in double quotes, cut short if long.
fn quote(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// `key` as one JSON pointer reference token (RFC 6901 §4).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The first (innermost) failure, with its pointer. serde unwinds with a
/// bare error; the detailed one waits here.
#[derive(Default)]
struct Failure(RefCell<Option<PackageError>>);

impl Failure {
    /// Records a failure at `pointer` unless a deeper one was recorded
    /// already, and returns the error to unwind with.
    fn fail<E: de::Error>(
        &self,
        pointer: impl FnOnce() -> String,
        message: impl fmt::Display,
    ) -> E {
        self.record(pointer, message);
        E::custom("invalid package")
    }

    /// Passes on a nested error, recording it at `pointer` unless a deeper
    /// failure was recorded already (serde_json's own errors, such as a
    /// wrong type or a syntax error, arrive here first).
    fn note<E: de::Error>(&self, pointer: impl FnOnce() -> String, error: E) -> E {
        self.record(pointer, &error);
        error
    }

    fn record(&self, pointer: impl FnOnce() -> String, message: impl fmt::Display) {
        let mut slot = self.0.borrow_mut();
        if slot.is_none() {
            *slot = Some(PackageError::invalid(pointer(), message));
        }
    }
}

/// The pointer to member `key` under `base`, or to `base` itself when the
/// key is too long to quote.
fn member_pointer(base: &str, key: &str) -> String {
    if key.chars().nth(MAX_POINTER_KEY_CHARS).is_some() {
        base.to_owned()
    } else {
        format!("{base}/{}", escape(key))
    }
}

/// An object key: one of the known field names, or another one.
enum Key<F> {
    Known(F),
    Unknown(String),
}

trait FieldName: Sized {
    fn from_name(name: &str) -> Option<Self>;
}

struct KeySeed<F>(PhantomData<F>);

impl<'de, F: FieldName> DeserializeSeed<'de> for KeySeed<F> {
    type Value = Key<F>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<F: FieldName> Visitor<'_> for KeySeed<F> {
    type Value = Key<F>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(match F::from_name(name) {
            Some(field) => Key::Known(field),
            None => Key::Unknown(name.to_owned()),
        })
    }
}

/// A string value handed to `F` without being copied first.
struct StrWith<F>(F);

impl<'de, T, F: FnOnce(&str) -> Result<T, String>> DeserializeSeed<'de> for StrWith<F> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for StrWith<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.0)(text).map_err(E::custom)
    }
}

#[derive(Clone, Copy)]
enum TopField {
    Schema,
    PackageId,
    SubmitterId,
    Audience,
    CreatedAt,
    Records,
}

impl TopField {
    fn name(self) -> &'static str {
        match self {
            TopField::Schema => "schema",
            TopField::PackageId => "package_id",
            TopField::SubmitterId => "submitter_id",
            TopField::Audience => "audience",
            TopField::CreatedAt => "created_at",
            TopField::Records => "records",
        }
    }
}

impl FieldName for TopField {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "schema" => TopField::Schema,
            "package_id" => TopField::PackageId,
            "submitter_id" => TopField::SubmitterId,
            "audience" => TopField::Audience,
            "created_at" => TopField::CreatedAt,
            "records" => TopField::Records,
            _ => return None,
        })
    }
}

struct PackageSeed<'f> {
    failure: &'f Failure,
}

impl<'de> DeserializeSeed<'de> for PackageSeed<'_> {
    type Value = Package;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Package, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PackageSeed<'_> {
    type Value = Package;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a package object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Package, A::Error> {
        let failure = self.failure;
        let mut schema = None;
        let mut package_id = None;
        let mut submitter_id = None;
        let mut audience = None;
        let mut created_at = None;
        let mut records = None;
        while let Some(key) = map
            .next_key_seed(KeySeed::<TopField>(PhantomData))
            .map_err(|e| failure.note(String::new, e))?
        {
            let field = match key {
                Key::Known(field) => field,
                Key::Unknown(name) => {
                    return Err(failure.fail(
                        || member_pointer("", &name),
                        format!("unknown field {}", quote(&name)),
                    ));
                }
            };
            let pointer = || format!("/{}", field.name());
            let already = match field {
                TopField::Schema => schema.is_some(),
                TopField::PackageId => package_id.is_some(),
                TopField::SubmitterId => submitter_id.is_some(),
                TopField::Audience => audience.is_some(),
                TopField::CreatedAt => created_at.is_some(),
                TopField::Records => records.is_some(),
            };
            if already {
                return Err(failure.fail(pointer, format!("duplicate field \"{}\"", field.name())));
            }
            match field {
                TopField::Schema => {
                    schema = Some(
                        map.next_value_seed(StrWith(check_schema))
                            .map_err(|e| failure.note(pointer, e))?,
                    );
                }
                TopField::PackageId => {
                    package_id = Some(
                        map.next_value_seed(StrWith(parse_package_id))
                            .map_err(|e| failure.note(pointer, e))?,
                    );
                }
                TopField::SubmitterId => {
                    submitter_id = Some(
                        map.next_value_seed(StrWith(parse_submitter_id))
                            .map_err(|e| failure.note(pointer, e))?,
                    );
                }
                TopField::Audience => {
                    audience = Some(
                        map.next_value_seed(StrWith(parse_audience))
                            .map_err(|e| failure.note(pointer, e))?,
                    );
                }
                TopField::CreatedAt => {
                    created_at = Some(
                        map.next_value_seed(StrWith(parse_time))
                            .map_err(|e| failure.note(pointer, e))?,
                    );
                }
                TopField::Records => {
                    records = Some(
                        map.next_value_seed(RecordsSeed { failure })
                            .map_err(|e| failure.note(pointer, e))?,
                    );
                }
            }
        }
        let missing = |name: &str| -> A::Error {
            failure.fail(|| format!("/{name}"), format!("missing field \"{name}\""))
        };
        let () = schema.ok_or_else(|| missing("schema"))?;
        Ok(Package {
            package_id: package_id.ok_or_else(|| missing("package_id"))?,
            submitter_id: submitter_id.ok_or_else(|| missing("submitter_id"))?,
            audience: audience.ok_or_else(|| missing("audience"))?,
            created_at: created_at.ok_or_else(|| missing("created_at"))?,
            records: records.ok_or_else(|| missing("records"))?,
        })
    }
}

struct RecordsSeed<'f> {
    failure: &'f Failure,
}

impl<'de> DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = Vec<Record>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Record>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed<'_> {
    type Value = Vec<Record>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Record>, A::Error> {
        let failure = self.failure;
        let mut records = Vec::new();
        loop {
            let index = records.len();
            let seed = RecordSeed { index, failure };
            match seq
                .next_element_seed(seed)
                .map_err(|e| failure.note(|| format!("/records/{index}"), e))?
            {
                Some(record) => records.push(record),
                None => break,
            }
        }
        if records.is_empty() {
            return Err(failure.fail(|| "/records".into(), "a package holds at least one record"));
        }
        Ok(records)
    }
}

#[derive(Clone, Copy)]
enum RecordField {
    Series,
    Ts,
    Value,
    Labels,
}

impl RecordField {
    fn name(self) -> &'static str {
        match self {
            RecordField::Series => "series",
            RecordField::Ts => "ts",
            RecordField::Value => "value",
            RecordField::Labels => "labels",
        }
    }
}

impl FieldName for RecordField {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "series" => RecordField::Series,
            "ts" => RecordField::Ts,
            "value" => RecordField::Value,
            "labels" => RecordField::Labels,
            _ => return None,
        })
    }
}

struct RecordSeed<'f> {
    index: usize,
    failure: &'f Failure,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = Record;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Record, D::Error> {
        if self.index >= MAX_RECORDS {
            let index = self.index;
            return Err(self.failure.fail(
                || format!("/records/{index}"),
                format!("too many records: at most {MAX_RECORDS}"),
            ));
        }
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = Record;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        let Self { index, failure } = self;
        let base = || format!("/records/{index}");
        let mut series = None;
        let mut ts = None;
        let mut value = None;
        let mut labels = None;
        while let Some(key) = map
            .next_key_seed(KeySeed::<RecordField>(PhantomData))
            .map_err(|e| failure.note(base, e))?
        {
            let field = match key {
                Key::Known(field) => field,
                Key::Unknown(name) => {
                    return Err(failure.fail(
                        || member_pointer(&base(), &name),
                        format!("unknown field {}", quote(&name)),
                    ));
                }
            };
            let pointer = || format!("/records/{index}/{}", field.name());
            let already = match field {
                RecordField::Series => series.is_some(),
                RecordField::Ts => ts.is_some(),
                RecordField::Value => value.is_some(),
                RecordField::Labels => labels.is_some(),
            };
            if already {
                return Err(failure.fail(pointer, format!("duplicate field \"{}\"", field.name())));
            }
            match field {
                RecordField::Series => {
                    series = Some(
                        map.next_value_seed(StrWith(check_series))
                            .map_err(|e| failure.note(pointer, e))?,
                    );
                }
                RecordField::Ts => {
                    ts = Some(
                        map.next_value_seed(StrWith(parse_time))
                            .map_err(|e| failure.note(pointer, e))?,
                    );
                }
                RecordField::Value => {
                    let number: f64 = map.next_value().map_err(|e| failure.note(pointer, e))?;
                    if !number.is_finite() {
                        return Err(failure.fail(pointer, "the value must be a finite number"));
                    }
                    value = Some(number);
                }
                RecordField::Labels => {
                    labels = Some(
                        map.next_value_seed(LabelsSeed { index, failure })
                            .map_err(|e| failure.note(pointer, e))?,
                    );
                }
            }
        }
        let missing = |name: &str| -> A::Error {
            failure.fail(
                || format!("/records/{index}/{name}"),
                format!("missing field \"{name}\""),
            )
        };
        Ok(Record {
            series: series.ok_or_else(|| missing("series"))?,
            ts: ts.ok_or_else(|| missing("ts"))?,
            value: value.ok_or_else(|| missing("value"))?,
            labels: labels.unwrap_or_default(),
        })
    }
}

struct LabelsSeed<'f> {
    index: usize,
    failure: &'f Failure,
}

impl<'de> DeserializeSeed<'de> for LabelsSeed<'_> {
    type Value = BTreeMap<String, String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LabelsSeed<'_> {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of string labels")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Self { index, failure } = self;
        let base = || format!("/records/{index}/labels");
        let mut labels = BTreeMap::new();
        while let Some(key) = map
            .next_key::<String>()
            .map_err(|e| failure.note(base, e))?
        {
            if labels.len() == MAX_LABELS {
                return Err(failure.fail(base, format!("too many labels: at most {MAX_LABELS}")));
            }
            if !is_valid_label_key(&key) {
                return Err(failure.fail(
                    || member_pointer(&base(), &key),
                    format!(
                        "invalid label key {}: 1 to {MAX_LABEL_KEY_CHARS} of a-z, 0-9, '_', starting with a letter",
                        quote(&key)
                    ),
                ));
            }
            let slot = match labels.entry(key) {
                Entry::Occupied(taken) => {
                    let key = taken.key();
                    return Err(failure.fail(
                        || member_pointer(&base(), key),
                        format!("duplicate label {}", quote(key)),
                    ));
                }
                Entry::Vacant(slot) => slot,
            };
            let pointer = || member_pointer(&base(), slot.key());
            let value: String = map.next_value().map_err(|e| failure.note(pointer, e))?;
            if let Err(message) = check_label_value(&value) {
                return Err(failure.fail(pointer, message));
            }
            slot.insert(value);
        }
        Ok(labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use time::macros::datetime;

    fn valid() -> Value {
        json!({
            "schema": "tallyhouse.package.v1",
            "package_id": "0b6f9a52-3c1e-4d7a-9f2b-5e8c1a7d4f30",
            "submitter_id": "acme-betting",
            "audience": "local",
            "created_at": "2025-03-01T12:00:05Z",
            "records": [
                {"series": "bets.stake", "ts": "2025-03-01T11:59:58Z", "value": 12.5, "labels": {"currency": "EUR"}},
                {"series": "bets.count", "ts": "2025-03-01T11:59:59+01:00", "value": 3}
            ]
        })
    }

    fn parse_value(value: &Value) -> Result<Package, PackageError> {
        parse_package(&serde_json::to_vec(value).unwrap())
    }

    /// `valid()` with the value at `pointer` replaced (or removed for `None`).
    fn with(pointer: &str, new: Option<Value>) -> Vec<u8> {
        let mut doc = valid();
        let (parent, last) = pointer.rsplit_once('/').unwrap();
        let parent = doc.pointer_mut(parent).unwrap();
        match (parent, new) {
            (Value::Object(map), Some(v)) => {
                map.insert(last.replace("~1", "/").replace("~0", "~"), v);
            }
            (Value::Object(map), None) => {
                map.remove(last);
            }
            (Value::Array(items), Some(v)) => {
                let i: usize = last.parse().unwrap();
                if i == items.len() {
                    items.push(v);
                } else {
                    items[i] = v;
                }
            }
            (Value::Array(items), None) => {
                items.remove(last.parse().unwrap());
            }
            _ => unreachable!(),
        }
        serde_json::to_vec(&doc).unwrap()
    }

    #[test]
    fn a_valid_package_parses_into_typed_records() {
        let package = parse_value(&valid()).unwrap();
        assert_eq!(
            package.package_id,
            Uuid::parse_str("0b6f9a52-3c1e-4d7a-9f2b-5e8c1a7d4f30").unwrap()
        );
        assert_eq!(package.submitter_id.as_str(), "acme-betting");
        assert_eq!(package.audience, "local");
        assert_eq!(package.created_at, datetime!(2025-03-01 12:00:05 UTC));
        assert_eq!(
            package.records,
            vec![
                Record {
                    series: "bets.stake".into(),
                    ts: datetime!(2025-03-01 11:59:58 UTC),
                    value: 12.5,
                    labels: [("currency".to_owned(), "EUR".to_owned())].into(),
                },
                Record {
                    series: "bets.count".into(),
                    ts: datetime!(2025-03-01 11:59:59 +01:00),
                    value: 3.0,
                    labels: BTreeMap::new(),
                },
            ]
        );
        package.check_audience("local").unwrap();
        let err = package.check_audience("prod").unwrap_err();
        assert_eq!(err.pointer(), "/audience");
    }

    #[test]
    fn the_testdata_package_parses() {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/package.json"
        ))
        .unwrap();
        let package = parse_package(&body).unwrap();
        assert_eq!(package.records.len(), 4);
        assert_eq!(package.records[3].labels["note"], "café — ünïcode ok");
        assert_eq!(package.records[2].value, -0.0001);
        assert_eq!(package.records[3].value, 1500.0);
    }

    #[test]
    fn invalid_packages_name_the_offending_place() {
        let long = "a".repeat(129);
        let many_labels: serde_json::Map<String, Value> =
            (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
        let max_labels: serde_json::Map<String, Value> =
            (0..32).map(|i| (format!("k{i}"), json!("v"))).collect();
        let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
            // (case, body, pointer, part of the message)
            ("not JSON", b"hello".to_vec(), "", "expected value"),
            ("empty body", b"".to_vec(), "", "EOF"),
            ("an array", b"[]".to_vec(), "", "expected a package object"),
            ("trailing data", [serde_json::to_vec(&valid()).unwrap(), b"{}".to_vec()].concat(), "", "trailing"),
            ("a byte-order mark", [b"\xEF\xBB\xBF".to_vec(), serde_json::to_vec(&valid()).unwrap()].concat(), "", "expected value"),
            ("invalid UTF-8", with("/audience", Some(json!("loc@l"))).iter().map(|&b| if b == b'@' { 0xFF } else { b }).collect(), "/audience", "invalid unicode"),
            ("unknown top-level field", with("/extra", Some(json!(1))), "/extra", "unknown field"),
            ("unknown field with slash", with("/a~1b", Some(json!(1))), "/a~1b", "unknown field"),
            ("missing schema", with("/schema", None), "/schema", "missing field"),
            ("other schema", with("/schema", Some(json!("tallyhouse.package.v2"))), "/schema", "unsupported schema"),
            ("schema not a string", with("/schema", Some(json!(1))), "/schema", "expected a string"),
            ("missing package id", with("/package_id", None), "/package_id", "missing field"),
            ("package id not a UUID", with("/package_id", Some(json!("123"))), "/package_id", "UUID"),
            ("package id without hyphens", with("/package_id", Some(json!("0b6f9a523c1e4d7a9f2b5e8c1a7d4f30"))), "/package_id", "hyphenated"),
            ("package id in braces", with("/package_id", Some(json!("{0b6f9a52-3c1e-4d7a-9f2b-5e8c1a7d4f3}"))), "/package_id", "UUID"),
            ("nil package id", with("/package_id", Some(json!("00000000-0000-0000-0000-000000000000"))), "/package_id", "nil"),
            ("missing submitter", with("/submitter_id", None), "/submitter_id", "missing field"),
            ("uppercase submitter", with("/submitter_id", Some(json!("Acme"))), "/submitter_id", "invalid submitter id"),
            ("long submitter", with("/submitter_id", Some(json!("a".repeat(65)))), "/submitter_id", "64"),
            ("submitter null", with("/submitter_id", Some(Value::Null)), "/submitter_id", "null"),
            ("missing audience", with("/audience", None), "/audience", "missing field"),
            ("empty audience", with("/audience", Some(json!(""))), "/audience", "invalid audience"),
            ("audience with space", with("/audience", Some(json!("my prod"))), "/audience", "invalid audience"),
            ("missing created_at", with("/created_at", None), "/created_at", "missing field"),
            ("created_at without offset", with("/created_at", Some(json!("2025-03-01T12:00:05"))), "/created_at", "RFC 3339"),
            ("created_at as unix time", with("/created_at", Some(json!(1740830405))), "/created_at", "expected a string"),
            ("missing records", with("/records", None), "/records", "missing field"),
            ("no records", with("/records", Some(json!([]))), "/records", "at least one"),
            ("records not a list", with("/records", Some(json!({}))), "/records", "expected an array"),
            ("record not an object", with("/records/1", Some(json!(5))), "/records/1", "expected a record object"),
            ("record unknown field", with("/records/1/unit", Some(json!("EUR"))), "/records/1/unit", "unknown field"),
            ("record missing series", with("/records/1/series", None), "/records/1/series", "missing field"),
            ("record missing ts", with("/records/0/ts", None), "/records/0/ts", "missing field"),
            ("record missing value", with("/records/1/value", None), "/records/1/value", "missing field"),
            ("series empty", with("/records/1/series", Some(json!(""))), "/records/1/series", "invalid series"),
            ("series uppercase", with("/records/1/series", Some(json!("Bets.stake"))), "/records/1/series", "invalid series"),
            ("series starting with a digit", with("/records/1/series", Some(json!("1bets"))), "/records/1/series", "invalid series"),
            ("series with a dash", with("/records/1/series", Some(json!("bets-stake"))), "/records/1/series", "invalid series"),
            ("series with empty segment", with("/records/1/series", Some(json!("bets..stake"))), "/records/1/series", "invalid series"),
            ("series ending in a dot", with("/records/1/series", Some(json!("bets."))), "/records/1/series", "invalid series"),
            ("series too long", with("/records/1/series", Some(json!(long))), "/records/1/series", "invalid series"),
            ("ts not RFC 3339", with("/records/1/ts", Some(json!("yesterday"))), "/records/1/ts", "RFC 3339"),
            ("ts date only", with("/records/1/ts", Some(json!("2025-03-01"))), "/records/1/ts", "RFC 3339"),
            ("ts impossible date", with("/records/1/ts", Some(json!("2025-02-30T00:00:00Z"))), "/records/1/ts", "RFC 3339"),
            ("value a string", with("/records/1/value", Some(json!("3"))), "/records/1/value", "invalid type"),
            ("value null", with("/records/1/value", Some(Value::Null)), "/records/1/value", "invalid type"),
            ("value out of range", br#"{"schema":"tallyhouse.package.v1","records":[{"value":1e400}]}"#.to_vec(), "/records/0/value", "out of range"),
            ("value NaN literal", br#"{"records":[{"value":NaN}]}"#.to_vec(), "/records/0/value", "expected value"),
            ("value Infinity literal", br#"{"records":[{"value":-Infinity}]}"#.to_vec(), "/records/0/value", ""),
            ("labels not an object", with("/records/0/labels", Some(json!(["a"]))), "/records/0/labels", "expected an object"),
            ("labels null", with("/records/0/labels", Some(Value::Null)), "/records/0/labels", "invalid type"),
            ("label value a number", with("/records/0/labels/currency", Some(json!(1))), "/records/0/labels/currency", "invalid type"),
            ("label value nested", with("/records/0/labels/currency", Some(json!({"a": "b"}))), "/records/0/labels/currency", "invalid type"),
            ("label value empty", with("/records/0/labels/currency", Some(json!(""))), "/records/0/labels/currency", "empty"),
            ("label value too long", with("/records/0/labels/currency", Some(json!("é".repeat(257)))), "/records/0/labels/currency", "256"),
            ("label value with NUL", with("/records/0/labels/currency", Some(json!("E\u{0}R"))), "/records/0/labels/currency", "control"),
            ("label value with newline", with("/records/0/labels/currency", Some(json!("E\nR"))), "/records/0/labels/currency", "control"),
            ("label key uppercase", with("/records/0/labels/Currency", Some(json!("EUR"))), "/records/0/labels/Currency", "invalid label key"),
            ("label key with slash", with("/records/0/labels/a~1b", Some(json!("x"))), "/records/0/labels/a~1b", "invalid label key"),
            ("label key too long", with(&format!("/records/0/labels/{}", "k".repeat(65)), Some(json!("x"))), "/records/0/labels/kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk", "invalid label key"),
            ("label key far too long", with(&format!("/records/0/labels/{}", "k".repeat(200)), Some(json!("x"))), "/records/0/labels", "invalid label key"),
            ("too many labels", with("/records/1/labels", Some(Value::Object(many_labels))), "/records/1/labels", "at most 32"),
            ("32 labels are fine", with("/records/1/labels", Some(Value::Object(max_labels))), "", "__valid__"),
            ("syntax error inside a record", br#"{"records":[{"series":"a","ts" "x"}]}"#.to_vec(), "/records/0/ts", "expected `:`"),
            ("duplicate top-level field", br#"{"schema":"tallyhouse.package.v1","schema":"tallyhouse.package.v1"}"#.to_vec(), "/schema", "duplicate field"),
            ("duplicate records field", br#"{"records":[{"series":"a","ts":"2025-03-01T12:00:00Z","value":1}],"records":[]}"#.to_vec(), "/records", "duplicate field"),
            ("duplicate record field", br#"{"records":[{"value":1,"value":2}]}"#.to_vec(), "/records/0/value", "duplicate field"),
            ("duplicate label", br#"{"records":[{"labels":{"a":"1","a":"2"}}]}"#.to_vec(), "/records/0/labels/a", "duplicate label"),
        ];
        for (case, body, pointer, message) in cases {
            let result = parse_package(&body);
            if message == "__valid__" {
                assert!(result.is_ok(), "{case}: {result:?}");
                continue;
            }
            let err = result.expect_err(case);
            assert_eq!(err.pointer(), pointer, "{case}: {err}");
            assert!(err.to_string().contains(message), "{case}: {err}");
        }
    }

    #[test]
    fn the_record_limit_is_enforced_while_parsing() {
        let record = r#"{"series":"a","ts":"2025-03-01T12:00:00Z","value":1},"#;
        let mut body = String::from(
            r#"{"schema":"tallyhouse.package.v1","package_id":"0b6f9a52-3c1e-4d7a-9f2b-5e8c1a7d4f30","submitter_id":"acme","audience":"local","created_at":"2025-03-01T12:00:05Z","records":["#,
        );
        body.push_str(&record.repeat(MAX_RECORDS));
        let at_limit = format!("{}]}}", body.trim_end_matches(','));
        assert_eq!(
            parse_package(at_limit.as_bytes()).unwrap().records.len(),
            MAX_RECORDS
        );
        let over = format!("{body}{}]}}", record.trim_end_matches(','));
        let err = parse_package(over.as_bytes()).unwrap_err();
        assert_eq!(err.pointer(), format!("/records/{MAX_RECORDS}"));
    }

    #[test]
    fn oversized_bodies_are_refused_before_parsing() {
        let body = vec![b' '; MAX_PACKAGE_BYTES + 1];
        assert_eq!(
            parse_package(&body),
            Err(PackageError::TooLarge {
                size: MAX_PACKAGE_BYTES + 1,
                limit: MAX_PACKAGE_BYTES
            })
        );
    }

    #[test]
    fn messages_quoting_huge_input_stay_short() {
        let huge = "x".repeat(100_000);
        let body = with("/records/0/value", Some(json!(huge)));
        let err = parse_package(&body).unwrap_err();
        assert_eq!(err.pointer(), "/records/0/value");
        assert!(err.to_string().len() < 400, "{}", err.to_string().len());
        let body = with(&format!("/{huge}"), Some(json!(1)));
        let err = parse_package(&body).unwrap_err();
        assert_eq!(err.pointer(), "");
        assert!(err.to_string().len() < 400);
    }

    #[test]
    fn accepted_edge_values() {
        let cases = [
            ("/records/0/value", json!(-0.0)),
            ("/records/0/value", json!(1.7976931348623157e308)),
            ("/records/0/value", json!(-12)),
            ("/records/0/value", json!(18446744073709551615u64)),
            (
                "/records/0/ts",
                json!("2025-03-01T11:59:58.123456789+05:30"),
            ),
            ("/records/0/ts", json!("1970-01-01T00:00:00Z")),
            ("/records/0/series", json!("a")),
            ("/records/0/series", json!("a.b_c.9")),
            ("/records/0/series", json!("a".repeat(128))),
            ("/records/0/labels", json!({})),
            ("/records/0/labels/k", json!("é".repeat(256))),
            ("/package_id", json!("0B6F9A52-3C1E-4D7A-9F2B-5E8C1A7D4F30")),
            ("/audience", json!("https://tallyhouse.example/prod")),
        ];
        for (pointer, value) in cases {
            let body = with(pointer, Some(value.clone()));
            assert!(
                parse_package(&body).is_ok(),
                "{pointer} = {value}: {:?}",
                parse_package(&body)
            );
        }
        let escaped = br#"{"schema":"tallyhouse.package.v1","package_id":"0b6f9a52-3c1e-4d7a-9f2b-5e8c1a7d4f30","submitter_id":"acme","audience":"local","created_at":"2025-03-01T12:00:05Z","records":[{"series":"bets\u002estake","ts":"2025-03-01T12:00:00\u005a","value":1,"labels":{"\u0063ur":"\u20ac"}}]}"#;
        let package = parse_package(escaped).unwrap();
        assert_eq!(package.records[0].series, "bets.stake");
        assert_eq!(package.records[0].labels["cur"], "€");
    }

    #[test]
    fn values_parse_to_the_nearest_double() {
        // Decimal strings with 17 significant digits, as printed by
        // shortest-round-trip formatters, must come back bit for bit.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = f64::from_bits(state);
            if !x.is_finite() {
                continue;
            }
            for text in [format!("{x:e}"), format!("{x:.16e}")] {
                let body = with("/records/0/value", None);
                let body = String::from_utf8(body).unwrap().replacen(
                    r#""ts":"#,
                    &format!(r#""value":{text},"ts":"#),
                    1,
                );
                let parsed = parse_package(body.as_bytes()).unwrap().records[0].value;
                let exact: f64 = text.parse().unwrap();
                assert_eq!(parsed.to_bits(), exact.to_bits(), "{text}");
            }
        }
    }
}
