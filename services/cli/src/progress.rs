//! A progress bar on stderr for long batches (indicatif), shown only when
//! stderr is a terminal; lines printed while it runs go above it, so the
//! results on stdout and the notices on stderr stay whole.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

/// The bar, or nothing when stderr is not a terminal.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for `len` items; hidden unless stderr is a terminal.
    pub fn new(len: u64) -> Self {
        if !std::io::stderr().is_terminal() || len == 0 {
            return Self {
                bar: ProgressBar::hidden(),
            };
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{wide_bar}] {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar }
    }

    /// Prints `text` as a line on stdout, above the bar.
    pub fn out(&self, text: &str) {
        self.bar.suspend(|| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", text.trim_end_matches('\n')).and_then(|()| out.flush());
        });
    }

    /// Prints `text` as a line on stderr, above the bar.
    pub fn err(&self, text: &str) {
        self.bar.suspend(|| eprintln!("{text}"));
    }

    /// Shows what is being worked on.
    pub fn message(&self, text: String) {
        self.bar.set_message(text);
    }

    /// One more item done.
    pub fn inc(&self) {
        self.bar.inc(1);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
