//! The opaque cursor of `ListPackages`: base64url (no padding) of a small
//! JSON object holding the position of the last row served — its
//! `(received_at, submitter_id, package_id)`, the list's sort key — and the
//! filters the list was asked with. A cursor is only valid with the filters
//! it was made for: with others it would silently skip or repeat rows.
//!
//! Times are whole microseconds since the Unix epoch (PostgreSQL's precision),
//! so a position compares exactly with the stored rows.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// The longest cursor accepted, in characters (real ones are ~200).
pub const MAX_CURSOR_CHARS: usize = 1024;

/// The filters of a list, as compared between a cursor and a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filters {
    /// `submitter_id`.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub submitter_id: Option<String>,
    /// `from`, in microseconds.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub from_us: Option<i64>,
    /// `to`, in microseconds.
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub to_us: Option<i64>,
}

/// A position in the list: the sort key of the last row served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Its `received_at` (microsecond precision).
    pub received_at: OffsetDateTime,
    /// Its submitter.
    pub submitter_id: String,
    /// Its id.
    pub package_id: Uuid,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    /// Format version.
    v: u8,
    r: i64,
    s: String,
    p: Uuid,
    f: Filters,
}

const VERSION: u8 = 1;

/// Microseconds since the Unix epoch, rounded up (see `docs/storage.md`:
/// with rows stored at microsecond precision, `x >= t` and `x < t` mean the
/// same with `t` rounded up to the next microsecond).
pub fn micros_ceil(t: OffsetDateTime) -> i64 {
    let nanos = t.unix_timestamp_nanos();
    // Within OffsetDateTime's range this fits an i64 of microseconds.
    (nanos.div_euclid(1000) + i128::from(nanos.rem_euclid(1000) != 0)) as i64
}

/// The time at `micros` microseconds since the Unix epoch.
pub fn from_micros(micros: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()
}

/// Encodes a position for a list with `filters`.
pub fn encode(position: &Position, filters: &Filters) -> String {
    let wire = Wire {
        v: VERSION,
        r: micros_ceil(position.received_at),
        s: position.submitter_id.clone(),
        p: position.package_id,
        f: filters.clone(),
    };
    // Serialising plain strings and numbers cannot fail.
    let json = serde_json::to_vec(&wire).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Decodes a cursor made by [`encode`] for a list with `filters`; the error
/// says what is wrong (the caller prefixes the field name).
pub fn decode(cursor: &str, filters: &Filters) -> Result<Position, String> {
    if cursor.len() > MAX_CURSOR_CHARS {
        return Err(format!("longer than {MAX_CURSOR_CHARS} characters"));
    }
    let not_ours = || "not a cursor of this list (pass next_cursor back unchanged)".to_owned();
    let json = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| not_ours())?;
    let wire: Wire = serde_json::from_slice(&json).map_err(|_| not_ours())?;
    if wire.v != VERSION {
        return Err(not_ours());
    }
    if &wire.f != filters {
        return Err(
            "made for other filters (submitter_id, from, to); start again without a cursor".into(),
        );
    }
    let received_at = from_micros(wire.r).ok_or_else(not_ours)?;
    Ok(Position {
        received_at,
        submitter_id: wire.s,
        package_id: wire.p,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn filters() -> Filters {
        Filters {
            submitter_id: Some("acme".into()),
            from_us: Some(1),
            to_us: None,
        }
    }

    #[test]
    fn a_cursor_round_trips_with_its_filters_only() {
        let position = Position {
            received_at: datetime!(2026-03-01 09:00:00.123456 UTC),
            submitter_id: "acme".into(),
            package_id: Uuid::new_v4(),
        };
        let cursor = encode(&position, &filters());
        assert!(
            cursor
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(decode(&cursor, &filters()).unwrap(), position);
        let other = Filters {
            submitter_id: None,
            ..filters()
        };
        assert!(
            decode(&cursor, &other)
                .unwrap_err()
                .contains("other filters")
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let long = "A".repeat(MAX_CURSOR_CHARS + 1);
        for bad in ["", "%%%", "e30", "bm90IGpzb24", long.as_str()] {
            assert!(decode(bad, &filters()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn microseconds_round_up() {
        let t = datetime!(1970-01-01 00:00:00.000001500 UTC);
        assert_eq!(micros_ceil(t), 2);
        assert_eq!(micros_ceil(datetime!(1970-01-01 00:00:00.000002 UTC)), 2);
        assert_eq!(micros_ceil(datetime!(1969-12-31 23:59:59.9999995 UTC)), 0);
        assert_eq!(
            from_micros(2),
            Some(datetime!(1970-01-01 00:00:00.000002 UTC))
        );
    }
}
