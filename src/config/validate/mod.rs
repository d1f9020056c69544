//! Validation: the fleet files as written (`raw`) → the types of `model`, or
//! every problem found, each naming file, field and line.
//!
//! One module per file kind, each with its table of `check(fixture,
//! expect)` cases: `pipeline` (with `stages`), `app` (with `health`),
//! `client` (with `hosts`), `fleet` (checks that need every client),
//! `known_hosts`, `trivyignore`. This module holds what they share (name
//! rules, [`Check`]) and [`validate`], which runs them in order; `testing`
//! the fixtures.

mod app;
mod client;
mod fleet;
mod health;
mod hosts;
mod known_hosts;
mod pipeline;
mod stages;
#[cfg(test)]
pub(crate) mod testing;
mod trivyignore;

use std::collections::BTreeMap;
use std::time::Duration;

use super::model::{Fleet, OnFailure, Pipeline, RuntimeCommands, ScanPolicy};
use super::raw::S;
use super::{APPS_DIR, FleetFiles, SHARED_SECRETS, Selection, duration, yaml};
use crate::error::Diagnostic;
use crate::secrets::SopsFile;

pub use fleet::outline;
pub use health::HTTP_URL_HINT;
pub use known_hosts::known_hosts_checks;

/// Is `name` a valid client, app, host, stage or group name?
pub fn is_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

const NAME_HINT: &str = "names are lowercase letters, digits and `-`, start with a letter or digit, at most 63 characters";

fn is_ident(name: &str) -> bool {
    let mut b = name.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Collects problems for one file.
struct Check<'a> {
    file: &'a str,
    problems: &'a mut Vec<Diagnostic>,
}

impl Check<'_> {
    fn at<T>(&mut self, field: &str, spanned: &S<T>, message: impl Into<String>, hint: &str) {
        let mut d = Diagnostic::new(self.file, message)
            .field(field)
            .line(yaml::line_of(&spanned.referenced));
        if !hint.is_empty() {
            d = d.hint(hint);
        }
        self.problems.push(d);
    }

    fn plain(&mut self, field: &str, message: impl Into<String>, hint: &str) {
        let mut d = Diagnostic::new(self.file, message).field(field);
        if !hint.is_empty() {
            d = d.hint(hint);
        }
        self.problems.push(d);
    }

    fn name(&mut self, field: &str, value: &S<String>, what: &str) {
        if !is_name(&value.value) {
            self.at(
                field,
                value,
                format!("{what} `{}` is not a valid name", value.value),
                NAME_HINT,
            );
        }
    }

    fn duration(&mut self, field: &str, text: &str, default: Duration) -> Duration {
        match duration::parse(text) {
            Ok(d) => d,
            Err(e) => {
                self.plain(
                    field,
                    e,
                    "write durations like `500ms`, `30s`, `2m` or `1h30m`",
                );
                default
            }
        }
    }
}

/// Validates everything in `files`. Returns the parts that are valid and every
/// problem found: callers go on with the valid parts (to find more problems)
/// but must not act on a fleet that has any.
pub fn validate(files: &FleetFiles) -> (Fleet, Vec<Diagnostic>) {
    let mut problems = files.problems.clone();
    let pipeline = pipeline::validate(files, &mut problems);
    let (apps, invalid_apps) = app::validate_all(files, &mut problems);
    let shared_secrets = files.files.get(SHARED_SECRETS).and_then(|bytes| {
        SopsFile::parse(SHARED_SECRETS, bytes)
            .map_err(|p| problems.extend(p))
            .ok()
    });
    let mut clients = BTreeMap::new();
    let selected: Vec<&String> = match &files.selection {
        Selection::All => files.all_clients.iter().collect(),
        Selection::Only(set) => set
            .iter()
            .filter(|c| files.all_clients.contains(c))
            .collect(),
    };
    // Clients validate independently: in parallel, on every core.
    let validated = crate::par::map(&selected, |name| {
        let mut problems = Vec::new();
        let client = client::validate(
            files,
            name,
            pipeline.as_ref(),
            &apps,
            &invalid_apps,
            shared_secrets.as_ref(),
            &mut problems,
        );
        (client, problems)
    });
    for (client, client_problems) in validated {
        problems.extend(client_problems);
        if let Some(client) = client {
            clients.insert(client.name.clone(), client);
        }
    }
    let mut warnings = Vec::new();
    fleet::checks(
        files,
        pipeline.as_ref(),
        &clients,
        &mut problems,
        &mut warnings,
    );
    let ignores = trivyignore::validate(files, &mut problems);
    if let Some(p) = &pipeline
        && p.proxy.is_none()
    {
        for app in apps.values().filter(|a| !a.routes.is_empty()) {
            let file = format!("{APPS_DIR}/{}/app.yaml", app.name);
            // The model keeps no places: the first route's line, from the
            // file read again (it parsed when its app validated).
            let line = files
                .files
                .get(&file)
                .and_then(|bytes| yaml::parse::<super::raw::App>(&file, bytes).ok())
                .and_then(|raw| {
                    raw.routes
                        .first()
                        .and_then(|r| yaml::line_of(&r.referenced))
                });
            problems.push(
                Diagnostic::new(&file, "has `routes` but the pipeline runs no proxy")
                    .field("routes")
                    .line(line)
                    .hint("add proxy: {kind: caddy, http_port: 80} to pipelines/pipeline.yaml"),
            );
        }
    }
    let fleet = Fleet {
        pipeline: pipeline.unwrap_or_else(Pipeline::empty),
        apps,
        clients,
        all_clients: files.all_clients.clone(),
        shared_secrets,
        ignores,
        warnings,
    };
    (fleet, problems)
}

impl Pipeline {
    /// Stands in for a pipeline that did not validate, so the rest of the
    /// fleet can still be checked.
    fn empty() -> Pipeline {
        Pipeline {
            stages: Vec::new(),
            scan: ScanPolicy {
                fail_on: Vec::new(),
                ignore_unfixed: false,
            },
            on_failure: OnFailure {
                rollback: false,
                revert: false,
            },
            runtimes: RuntimeCommands {
                compose: String::new(),
                podman: String::new(),
            },
            ssh_options: BTreeMap::new(),
            keep_removed_releases: crate::config::KEEP_REMOVED_RELEASES,
            proxy: None,
            notify: Vec::new(),
        }
    }
}
