//! What a benchmark hands back: a table for people (and optionally more
//! tables under it) and a flat map of named figures for machines, printed
//! as the tables followed by one JSON line (always the last line of stdout).

use serde_json::{Map, Value};

/// A benchmark's results.
#[derive(Debug, Default)]
pub struct Report {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
    figures: Map<String, Value>,
    more: Vec<(String, Report)>,
}

impl Report {
    /// An empty report whose table has `headers`.
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// Adds a table row (one cell per header).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    /// Adds a line printed under the table.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Adds a table printed under the main one (and its notes), with its
    /// own title; `table`'s figures are ignored (set them on `self`).
    pub fn add_table(&mut self, title: impl Into<String>, table: Report) {
        self.more.push((title.into(), table));
    }

    /// Sets figure `name` in the JSON line.
    pub fn figure(&mut self, name: impl Into<String>, value: impl Into<Value>) {
        self.figures.insert(name.into(), value.into());
    }

    /// The table, aligned, numbers to the right.
    pub fn table(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.headers[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect();
            format!("| {} |", padded.join(" | "))
        };
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        let mut out = String::new();
        out.push_str(&line(&self.headers));
        out.push('\n');
        out.push_str(&format!("|-{}-|", rule.join("-|-")));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }

    /// Prints the title, table and notes, then the figures as one JSON line.
    pub fn print(&self) {
        println!("{}", self.title);
        println!();
        print!("{}", self.table());
        for note in &self.notes {
            println!("{note}");
        }
        for (title, table) in &self.more {
            println!();
            println!("{title}");
            println!();
            print!("{}", table.table());
            for note in &table.notes {
                println!("{note}");
            }
        }
        println!("{}", Value::Object(self.figures.clone()));
    }
}

/// `value` rounded to `decimals` places, as a JSON number (null if not finite).
pub fn rounded(value: f64, decimals: i32) -> Value {
    let scale = 10f64.powi(decimals);
    serde_json::Number::from_f64((value * scale).round() / scale).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut r = Report::new("t", &["a", "long header"]);
        r.row(vec!["12345".into(), "1".into()]);
        assert_eq!(
            r.table(),
            "|     a | long header |\n|-------|-------------|\n| 12345 |           1 |\n"
        );
    }

    #[test]
    fn rounding() {
        assert_eq!(rounded(1.23456, 2), serde_json::json!(1.23));
        assert_eq!(rounded(f64::NAN, 2), Value::Null);
    }
}
