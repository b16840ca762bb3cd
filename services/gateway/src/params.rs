//! Query-string parameters, read strictly: each value parsed with a problem
//! naming the parameter, repeated parameters refused, unknown ones refused
//! (a typo must not silently widen a query).

use crate::problem::Problem;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The parameters of one request, consumed as the handler reads them.
#[derive(Debug)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
    trace_id: String,
}

impl Params {
    /// Parameters from the decoded pairs of a query string.
    pub(crate) fn new(pairs: Vec<(String, String)>, trace_id: &str) -> Self {
        Self {
            pairs,
            trace_id: trace_id.to_owned(),
        }
    }

    fn invalid(&self, field: &str, message: impl Into<String>) -> Problem {
        Problem::invalid_param(field, message, &self.trace_id)
    }

    /// The value of `name`, if given once; refuses it given twice.
    pub(crate) fn text(&mut self, name: &str) -> Result<Option<String>, Problem> {
        let mut found = None;
        let mut i = 0;
        while i < self.pairs.len() {
            if self.pairs[i].0 == name {
                let (_, value) = self.pairs.remove(i);
                if found.is_some() {
                    return Err(self.invalid(name, format!("`{name}` is given more than once")));
                }
                found = Some(value);
            } else {
                i += 1;
            }
        }
        Ok(found)
    }

    /// A required value.
    pub(crate) fn required(&mut self, name: &str) -> Result<String, Problem> {
        match self.text(name)? {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(self.invalid(name, format!("`{name}` is required"))),
        }
    }

    /// An RFC 3339 time.
    pub(crate) fn time(&mut self, name: &str) -> Result<Option<OffsetDateTime>, Problem> {
        match self.text(name)? {
            None => Ok(None),
            Some(v) => OffsetDateTime::parse(&v, &Rfc3339).map(Some).map_err(|_| {
                self.invalid(
                    name,
                    format!("`{name}` must be an RFC 3339 time, e.g. 2026-11-22T00:00:00Z"),
                )
            }),
        }
    }

    /// A whole number in `min..=max`, `default` when absent.
    pub(crate) fn number(
        &mut self,
        name: &str,
        min: u32,
        max: u32,
        default: u32,
    ) -> Result<u32, Problem> {
        match self.text(name)? {
            None => Ok(default),
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(self.invalid(
                    name,
                    format!("`{name}` must be a whole number from {min} to {max}"),
                )),
            },
        }
    }

    /// A value parsed with `FromStr`, the parse error as the message.
    pub(crate) fn parsed<T>(&mut self, name: &str) -> Result<Option<T>, Problem>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        match self.text(name)? {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|e| self.invalid(name, format!("`{name}`: {e}"))),
        }
    }

    /// Every `<prefix><key>=<value>` parameter, as a map of key to value.
    pub(crate) fn prefixed(&mut self, prefix: &str) -> Result<BTreeMap<String, String>, Problem> {
        let mut out = BTreeMap::new();
        let mut i = 0;
        while i < self.pairs.len() {
            if let Some(key) = self.pairs[i].0.strip_prefix(prefix) {
                let key = key.to_owned();
                let (name, value) = self.pairs.remove(i);
                if out.insert(key, value).is_some() {
                    return Err(self.invalid(&name, format!("`{name}` is given more than once")));
                }
            } else {
                i += 1;
            }
        }
        Ok(out)
    }

    /// Refuses any parameter the handler did not read.
    pub(crate) fn finish(self) -> Result<(), Problem> {
        match self.pairs.first() {
            None => Ok(()),
            Some((name, _)) => Err(self.invalid(name, format!("unknown parameter `{name}`"))),
        }
    }
}

/// A bucket width: seconds (`90`) or a number with a unit (`30s`, `5m`,
/// `1h`, `1d`).
pub(crate) fn parse_bucket(text: &str) -> Result<u64, String> {
    let err = || format!("{text:?} is not a bucket width (e.g. 60, 5m, 1h, 1d)");
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| err())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(err()),
    };
    n.checked_mul(scale).filter(|s| *s > 0).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            "t",
        )
    }

    #[test]
    fn values_are_read_once_and_leftovers_refused() {
        let mut p = params(&[("limit", "5"), ("from", "2026-11-22T00:00:00Z"), ("x", "1")]);
        assert_eq!(p.number("limit", 1, 10, 3).unwrap(), 5);
        assert!(p.time("from").unwrap().is_some());
        let e = p.finish().unwrap_err();
        assert_eq!(e.field(), Some("x"));
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(
            params(&[("limit", "0")])
                .number("limit", 1, 10, 3)
                .unwrap_err()
                .field(),
            Some("limit")
        );
        assert_eq!(
            params(&[("from", "yesterday")])
                .time("from")
                .unwrap_err()
                .field(),
            Some("from")
        );
        assert_eq!(
            params(&[("a", "1"), ("a", "2")])
                .text("a")
                .unwrap_err()
                .field(),
            Some("a")
        );
    }

    #[test]
    fn labels_are_collected_by_prefix() {
        let mut p = params(&[
            ("label.game", "slots"),
            ("label.channel", "web"),
            ("series", "x"),
        ]);
        let labels = p.prefixed("label.").unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["game"], "slots");
        assert_eq!(p.required("series").unwrap(), "x");
        p.finish().unwrap();
    }

    #[test]
    fn bucket_widths() {
        assert_eq!(parse_bucket("90"), Ok(90));
        assert_eq!(parse_bucket("5m"), Ok(300));
        assert_eq!(parse_bucket("1h"), Ok(3600));
        assert_eq!(parse_bucket("1d"), Ok(86_400));
        assert!(parse_bucket("0").is_err());
        assert!(parse_bucket("1w").is_err());
        assert!(parse_bucket("h").is_err());
    }
}
