//! How results are printed: aligned tables and `field  value` records for
//! people (the default), pretty JSON of the contract types with `--json`.
//! Results go to stdout, errors to stderr.

use crate::error::CliError;
use serde::Serialize;
use std::io::Write as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Where and how to print.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Machine-readable output.
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON, or `human()` as text.
    pub fn print<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        let mut text = if self.json {
            match serde_json::to_string_pretty(value) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tallyhouse: error: cannot encode the result as JSON: {e}");
                    return;
                }
            }
        } else {
            human()
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        // A closed pipe (`| head`) is the reader's choice, not an error.
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }

    /// Prints one line of compact JSON on stdout (JSON Lines, for
    /// commands that report item by item).
    pub fn json_line<T: Serialize>(&self, value: &T) {
        match serde_json::to_string(value) {
            Ok(line) => self.text(&line),
            Err(e) => eprintln!("tallyhouse: error: cannot encode the result as JSON: {e}"),
        }
    }

    /// Prints `text` on stdout, ending it with a newline if it has none.
    pub fn text(&self, text: &str) {
        let mut text = text.to_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }

    /// A remark for people on stderr (what was written where); nothing
    /// with `--json`, whose result already says it all.
    pub fn note(&self, text: &str) {
        if !self.json {
            eprintln!("{text}");
        }
    }

    /// Reports a failure on stderr: the RPC error as JSON with `--json`
    /// (`{"error": {"code", "message", "retryable"}}`), else one line.
    pub fn error(&self, err: &CliError) {
        match err {
            CliError::Rpc(e) if self.json => {
                let body = serde_json::json!({ "error": e });
                eprintln!("{body}");
            }
            _ => eprintln!("tallyhouse: error: {err}"),
        }
    }
}

/// An RFC 3339 timestamp.
pub fn time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// An optional timestamp, `-` when absent.
pub fn time_or_dash(t: Option<OffsetDateTime>) -> String {
    t.map_or_else(|| "-".to_owned(), time)
}

/// A left-aligned table with a header row, columns two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `field  value` lines, fields aligned.
pub fn record(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(f, v)| format!("{f:<width$}  {v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_trim_line_ends() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["acme".into(), "Acme Ltd".into()],
                vec!["b".into(), "-".into()],
            ],
        );
        assert_eq!(t, "ID    NAME\nacme  Acme Ltd\nb     -\n");
        assert_eq!(table(&["ID", "NAME"], &[]), "ID  NAME\n");
    }

    #[test]
    fn records_align_fields() {
        let r = record(&[("key_id", "abc".into()), ("revoked_at", "-".into())]);
        assert_eq!(r, "key_id      abc\nrevoked_at  -\n");
    }
}
