//! Where output goes, decided once: stdout carries data a program reads
//! (a plan, a report, JSON), stderr carries what people read — progress,
//! warnings, errors — through `tracing` (`main.rs` sets it up, `progress.rs`
//! keeps it above the progress bar). No other module prints.

use std::io::Write;

/// Data on stdout, as it is (the caller decides on a final newline). A
/// closed pipe (`fleetgate plan | head`) is not an error worth a panic.
pub fn data(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// A table or report for people, on stderr with the log (e.g. `plan
/// --scan`'s scan table: `plan`'s data is the plan). Above the progress
/// bar, like every log line.
pub fn people(text: &str) {
    let _ = crate::progress::Stderr.write_all(text.as_bytes());
}
