//! What the validators' tables share: fleets written as text fixtures, and
//! diagnostics compared line by line with what a case expects.
//!
//! A fixture is rust-analyzer's: `//- path` starts a file; text before the
//! first header belongs to the file the module under test validates. Lines
//! count from the file's first line, so a case's expected line numbers are
//! the ones an operator would see in an editor.

use std::collections::BTreeMap;

use crate::config::{CLIENT_SECRETS_DIR, CLIENTS_DIR, FleetFiles, Names, Selection};
use crate::error::Diagnostic;

/// A pinned image reference for fixtures (`tag@sha256:…`).
pub(crate) const IMAGE: &str = "registry.example.org/whoami:1.4.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A secrets file in SOPS's shape (fleetgate reads key names without a key;
/// nothing here is decrypted), providing `keys`.
pub(crate) fn sops(keys: &[&str]) -> String {
    let mut text: String = keys
        .iter()
        .map(|k| format!("{k}: ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]\n"))
        .collect();
    text.push_str("sops:\n  version: 3.9.0\n");
    text
}

/// Removes the indentation every non-blank line shares, and a first empty
/// line, so fixtures can be indented like the code around them.
pub(crate) fn trim_indent(text: &str) -> String {
    let text = text.strip_prefix('\n').unwrap_or(text);
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The files of `base`, then those of `fixture` (replacing any of `base`'s
/// with the same path), as `config::load` would hand them over for the
/// whole fleet.
pub(crate) fn files(default_path: &str, base: &str, fixture: &str) -> FleetFiles {
    let mut files = BTreeMap::new();
    for text in [base, fixture] {
        files.extend(parse_fixture(default_path, &trim_indent(text)));
    }
    let stems = |dir: &str, suffix: &str| {
        files
            .keys()
            .filter_map(|p| p.strip_prefix(&format!("{dir}/"))?.strip_suffix(suffix))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let all_clients = Names::new(stems(CLIENTS_DIR, ".yaml"));
    let client_secrets = Names::new(stems(CLIENT_SECRETS_DIR, ".sops.yaml"));
    FleetFiles {
        label: "work tree".into(),
        files,
        all_clients,
        client_secrets,
        selection: Selection::All,
        every_client: true,
        problems: Vec::new(),
    }
}

fn parse_fixture(default_path: &str, text: &str) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut path = default_path.to_string();
    let mut content = String::new();
    let mut started = false;
    for line in text.lines() {
        if let Some(next) = line.strip_prefix("//- ") {
            if started || !content.trim().is_empty() {
                files.insert(path, std::mem::take(&mut content).into_bytes());
            }
            path = next.trim().to_string();
            started = true;
        } else {
            content.push_str(line);
            content.push('\n');
        }
    }
    if started || !content.trim().is_empty() {
        files.insert(path, content.into_bytes());
    }
    files
}

/// `file:line field: message`, leaving out what a diagnostic does not know.
pub(crate) fn render(d: &Diagnostic) -> String {
    let mut out = d.file.clone();
    if let Some(line) = d.line {
        out.push_str(&format!(":{line}"));
    }
    if let Some(field) = &d.field {
        out.push_str(&format!(" {field}"));
    }
    format!("{out}: {}", d.message)
}

/// Compares a case's outcome with `expect`. With problems, each expected
/// line is `file:line field: fragment`: the place must match exactly and the
/// message contain the fragment, in the order found. Without problems, the
/// validated value's `summary` must equal `expect` line for line.
pub(crate) fn assert_outcome(
    fixture: &str,
    problems: &[Diagnostic],
    summary: Vec<String>,
    expect: &[&str],
) {
    let (got, exact) = if problems.is_empty() {
        (summary, true)
    } else {
        (problems.iter().map(render).collect(), false)
    };
    let matches = |got: &String, want: &&str| {
        if exact {
            got == want
        } else {
            match (got.split_once(": "), want.split_once(": ")) {
                (Some((place, message)), Some((want_place, fragment))) => {
                    place == want_place && message.contains(fragment)
                }
                _ => got == want,
            }
        }
    };
    let ok = got.len() == expect.len() && got.iter().zip(expect).all(|(g, w)| matches(g, w));
    assert!(
        ok,
        "\nfixture:\n{}\nexpected{}:\n{}\ngot:\n{}\n",
        trim_indent(fixture),
        if exact { "" } else { " (fragments)" },
        expect.join("\n"),
        got.join("\n"),
    );
}
