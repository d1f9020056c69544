//! Where output goes, decided once: stdout carries data a program reads
//! (a plan, a report, JSON), stderr carries what people read — progress,
//! warnings, errors — through `tracing` (`main.rs` sets it up, `progress.rs`
//! keeps it above the progress bar). No other module prints.
//!
//! Also decided once, here: whether the text on stdout is coloured
//! (`--color`, [`color`]). Callers ask [`paint`] and hand it to the
//! `report::*_with` functions; JSON and markdown never take it.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::report::Paint;

/// `--color`: when the text on stdout carries colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set or this is a CI job
    /// (CLICOLOR_FORCE forces it).
    #[default]
    Auto,
    /// Always, even in a pipe or a CI log.
    Always,
    /// Never.
    Never,
}

static STDOUT_COLOR: AtomicBool = AtomicBool::new(false);

/// Decides colour for stdout from `choice`, whether stdout is a terminal and
/// the environment; before any output.
pub fn init(choice: ColorChoice) {
    let env = |key: &str| std::env::var(key).ok();
    let on = color(choice, std::io::stdout().is_terminal(), &env);
    STDOUT_COLOR.store(on, Ordering::Relaxed);
}

/// How text bound for stdout is coloured.
pub fn paint() -> Paint {
    Paint {
        color: STDOUT_COLOR.load(Ordering::Relaxed),
    }
}

/// Whether a stream gets colour: `always` and `never` are what they say;
/// `auto` colours a terminal only, and never when `NO_COLOR` (no-color.org)
/// or `CLICOLOR=0` asks for none, in a CI job (`CI`, `GITHUB_ACTIONS`,
/// `FORGEJO_ACTIONS`, `GITEA_ACTIONS`: their logs stay plain text) or on a
/// `TERM=dumb` terminal — unless `CLICOLOR_FORCE` (not `0`) forces it.
/// `NO_COLOR` wins over `CLICOLOR_FORCE`. Pure: `env` reads a variable.
pub fn color(choice: ColorChoice, terminal: bool, env: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |key: &str| env(key).is_some_and(|v| !v.is_empty());
    let yes = |key: &str| env(key).is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto if set("NO_COLOR") => false,
        ColorChoice::Auto if yes("CLICOLOR_FORCE") => true,
        ColorChoice::Auto => {
            let ci = ["CI", "GITHUB_ACTIONS", "FORGEJO_ACTIONS", "GITEA_ACTIONS"]
                .iter()
                .any(|k| yes(k));
            terminal
                && !ci
                && env("CLICOLOR").as_deref() != Some("0")
                && env("TERM").as_deref() != Some("dumb")
        }
    }
}

/// Data on stdout, as it is (the caller decides on a final newline). A
/// closed pipe (`fleetgate plan | head`) is not an error worth a panic.
pub fn data(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Data written to stdout as it is produced (through a buffer), for data
/// too large to build as one string first. A closed stdout (`| head`) is
/// not an error, as for [`data`].
pub fn data_with(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let _ = write(&mut out);
    let _ = out.flush();
}

/// A table or report for people, on stderr with the log (e.g. `plan
/// --scan`'s scan table: `plan`'s data is the plan). Above the progress
/// bar, like every log line.
pub fn people(text: &str) {
    let _ = crate::progress::Stderr.write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::{ColorChoice, color};

    /// (choice, stdout is a terminal, environment, colour).
    type Case = (
        ColorChoice,
        bool,
        &'static [(&'static str, &'static str)],
        bool,
    );

    #[test]
    fn when_text_is_coloured() {
        use ColorChoice::{Always, Auto, Never};
        #[rustfmt::skip]
        let table: &[Case] = &[
            // A person at a terminal.
            (Auto,   true,  &[],                                  true),
            // Piped or redirected: plain, for the next program.
            (Auto,   false, &[],                                  false),
            (Auto,   true,  &[("NO_COLOR", "1")],                 false),
            // An empty NO_COLOR does not count (no-color.org).
            (Auto,   true,  &[("NO_COLOR", "")],                  true),
            // CI logs stay plain, even where the runner fakes a terminal.
            (Auto,   true,  &[("CI", "true")],                    false),
            (Auto,   true,  &[("GITHUB_ACTIONS", "true")],        false),
            (Auto,   true,  &[("FORGEJO_ACTIONS", "true")],       false),
            (Auto,   true,  &[("GITEA_ACTIONS", "true")],         false),
            (Auto,   true,  &[("CI", "")],                        true),
            (Auto,   true,  &[("CI", "false")],                   true),
            (Auto,   true,  &[("TERM", "dumb")],                  false),
            (Auto,   true,  &[("CLICOLOR", "0")],                 false),
            // CLICOLOR_FORCE colours a pipe and a CI log, but not over NO_COLOR.
            (Auto,   false, &[("CLICOLOR_FORCE", "1")],           true),
            (Auto,   true,  &[("CI", "true"), ("CLICOLOR_FORCE", "1")], true),
            (Auto,   false, &[("CLICOLOR_FORCE", "0")],           false),
            (Auto,   true,  &[("NO_COLOR", "1"), ("CLICOLOR_FORCE", "1")], false),
            // --color always / never: whatever the stream and environment.
            (Always, false, &[("NO_COLOR", "1"), ("CI", "true")], true),
            (Never,  true,  &[("CLICOLOR_FORCE", "1")],           false),
            (Never,  true,  &[],                                  false),
        ];
        for (choice, terminal, env, want) in table {
            let lookup = |k: &str| {
                env.iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v.to_string())
            };
            assert_eq!(
                color(*choice, *terminal, &lookup),
                *want,
                "{choice:?}, terminal {terminal}, env {env:?}"
            );
        }
    }
}
