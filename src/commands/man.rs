//! `fleetgate man`: the manual page, roff for section 1, on stdout: the
//! global options, every command with its own options (as `--help` has
//! them, from the clap types through `clap_mangen`), and the exit codes.

use std::io::Write;

use clap::{Args, CommandFactory};

use crate::cli::{Cli, EXIT_CODES};
use crate::error::{ExitCode, Result};
use crate::printer;

#[derive(Debug, Args)]
pub struct ManArgs {}

pub fn run(_args: &ManArgs) -> Result<ExitCode> {
    printer::data(&page());
    Ok(ExitCode::Ok)
}

/// One part of a page, as `clap_mangen` renders it.
type Section = fn(&clap_mangen::Man, &mut dyn Write) -> std::io::Result<()>;

/// The whole page.
pub fn page() -> String {
    // Unbuilt, its commands do not carry the global options yet: they are
    // described once, at the top.
    let cli = Cli::command();
    let mut out = Vec::new();
    let top = clap_mangen::Man::new(cli.clone());
    // Not clap_mangen's SUBCOMMANDS: it points at a page per command, and
    // this is one page with every command in it.
    let sections: [Section; 5] = [
        clap_mangen::Man::render_title,
        clap_mangen::Man::render_name_section,
        clap_mangen::Man::render_synopsis_section,
        clap_mangen::Man::render_description_section,
        clap_mangen::Man::render_options_section,
    ];
    for render in sections {
        render(&top, &mut out).expect("writing to memory");
    }
    let mut page = String::from_utf8_lossy(&out).into_owned();
    page.push_str(".SH COMMANDS\n");
    for sub in cli.get_subcommands() {
        command(&mut page, sub, "fleetgate");
    }
    page.push_str(&exit_status());
    let mut out = Vec::new();
    top.render_version_section(&mut out)
        .expect("writing to memory");
    page.push_str(&String::from_utf8_lossy(&out));
    page
}

/// One command as a subsection: what it does, its synopsis and options;
/// then its own commands (`lock release`).
fn command(page: &mut String, sub: &clap::Command, parent: &str) {
    let name = format!("{parent} {}", sub.get_name());
    let cmd = sub
        .clone()
        .bin_name(&name)
        .disable_help_flag(true)
        .disable_help_subcommand(true);
    let man = clap_mangen::Man::new(cmd);
    let mut out = Vec::new();
    for render in [
        clap_mangen::Man::render_description_section,
        clap_mangen::Man::render_synopsis_section,
        clap_mangen::Man::render_options_section,
    ] {
        render(&man, &mut out).expect("writing to memory");
    }
    page.push_str(&format!(".SS \"{name}\"\n"));
    // Each part's heading becomes a paragraph break; the quote preamble
    // each render repeats is the page's already.
    let mut first = true;
    for line in String::from_utf8_lossy(&out).lines() {
        if line.starts_with(".ie \\n(.g") || line.starts_with(".el .ds Aq") {
            continue;
        }
        if line.starts_with(".SH ") {
            if !std::mem::take(&mut first) {
                page.push_str(".PP\n");
            }
            continue;
        }
        page.push_str(line);
        page.push('\n');
    }
    for nested in sub.get_subcommands() {
        command(page, nested, &name);
    }
}

/// `EXIT STATUS`, the table of `--help`.
fn exit_status() -> String {
    let mut s = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in EXIT_CODES {
        s.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", roff_text(meaning)));
    }
    s
}

/// Plain text as roff: a backslash is `\e`, a hyphen `\-` (so options copy
/// as typed), and a line cannot start a request.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    match escaped.starts_with(['.', '\'']) {
        true => format!("\\&{escaped}"),
        false => escaped,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_never_becomes_a_roff_request() {
        assert_eq!(super::roff_text(".SH x"), "\\&.SH x");
        assert_eq!(super::roff_text("'x"), "\\&'x");
        assert_eq!(super::roff_text("a\\b --run-id"), "a\\eb \\-\\-run\\-id");
    }
}
