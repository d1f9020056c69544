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
pub(crate) mod quadlet;
mod stages;
#[cfg(test)]
pub(crate) mod testing;
mod trivyignore;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::model::{App, Client, Fleet, OnFailure, Pipeline, RuntimeCommands, ScanPolicy};
use super::raw::S;
use super::{
    APPS_DIR, FleetFiles, SHARED_SECRETS, Selection, client_file, client_secrets_file, duration,
    yaml,
};
use crate::error::Diagnostic;
use crate::secrets::SopsFile;

pub use fleet::outline;
pub use health::HTTP_URL_HINT;
pub use known_hosts::{known_hosts_checks, known_hosts_checks_of};

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
    validate_reusing(files, None)
}

/// A snapshot validated without any problem, whose clients another snapshot
/// (the other side of a plan) may reuse: see [`validate_reusing`].
#[derive(Clone, Copy)]
pub struct Clean<'a> {
    files: &'a FleetFiles,
    fleet: &'a Fleet,
}

impl<'a> Clean<'a> {
    /// `fleet` must be what [`validate`] made of `files` with no problem.
    pub fn new(files: &'a FleetFiles, fleet: &'a Fleet) -> Clean<'a> {
        Clean { files, fleet }
    }
}

/// What a client's validation reads besides its own files: the groups the
/// stages pick, each valid app and the secrets it declares, the invalid
/// apps, the keys of the shared secrets.
#[derive(PartialEq, Eq)]
struct ClientContext<'a> {
    groups: Option<Vec<&'a str>>,
    apps: Vec<(&'a str, &'a [String])>,
    invalid_apps: Vec<&'a str>,
    shared_keys: Option<Vec<&'a str>>,
}

impl<'a> ClientContext<'a> {
    fn of(
        pipeline: Option<&'a Pipeline>,
        apps: &'a BTreeMap<String, App>,
        invalid_apps: &'a BTreeSet<String>,
        shared: Option<&'a SopsFile>,
    ) -> ClientContext<'a> {
        ClientContext {
            groups: pipeline.map(|p| p.stages.iter().map(|s| s.group.as_str()).collect()),
            apps: apps
                .iter()
                .map(|(n, a)| (n.as_str(), a.secrets.as_slice()))
                .collect(),
            invalid_apps: invalid_apps.iter().map(String::as_str).collect(),
            shared_keys: shared.map(|s| s.keys.keys().map(String::as_str).collect()),
        }
    }
}

/// Like [`validate`], but a client whose own files (`clients/<name>.yaml`,
/// its secrets file) are byte for byte those of `prior`, in the same
/// context (see `ClientContext`), is not parsed again: validation is a pure
/// function of those, so it is `prior`'s client, problem-free. Only when
/// nothing else of `files` had a problem: then every problem is found as
/// `validate` finds it. A plan's base reuses its head: a change every
/// client sees (a template) leaves most client files as they were.
pub fn validate_reusing(files: &FleetFiles, prior: Option<Clean>) -> (Fleet, Vec<Diagnostic>) {
    let mut problems = files.problems.clone();
    let pipeline = pipeline::validate(files, &mut problems);
    let (apps, invalid_apps) = app::validate_all(files, &mut problems);
    let shared_secrets = files.files.get(SHARED_SECRETS).and_then(|bytes| {
        SopsFile::parse(SHARED_SECRETS, bytes)
            .map_err(|p| problems.extend(p))
            .ok()
    });
    let selected: Vec<&str> = match &files.selection {
        Selection::All => files.all_clients.iter().collect(),
        Selection::Only(set) => set
            .iter()
            .map(String::as_str)
            .filter(|c| files.all_clients.contains(c))
            .collect(),
    };
    let reusable = prior.filter(|prior| {
        problems.is_empty()
            && ClientContext::of(
                pipeline.as_ref(),
                &apps,
                &invalid_apps,
                shared_secrets.as_ref(),
            ) == ClientContext::of(
                Some(&prior.fleet.pipeline),
                &prior.fleet.apps,
                &BTreeSet::new(),
                prior.fleet.shared_secrets.as_ref(),
            )
    });
    let reuse = |name: &str| -> Option<std::sync::Arc<Client>> {
        let prior = reusable?;
        let client = prior.fleet.clients.get(name)?;
        let same = |path: &str| prior.files.files.get(path) == files.files.get(path);
        let file = client_file(name);
        (files.files.contains_key(&file)
            && same(&file)
            && prior.files.client_secrets.contains(name) == files.client_secrets.contains(name)
            && same(&client_secrets_file(name)))
        .then(|| client.clone())
    };
    // Clients validate independently: in parallel, on every core.
    let validated = crate::par::map(&selected, |name| {
        if let Some(client) = reuse(name) {
            return (Some(client), Vec::new());
        }
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
        (client.map(std::sync::Arc::new), problems)
    });
    // Built in bulk (full nodes: inserted one by one in order, a large
    // fleet's map would be half empty).
    let clients: BTreeMap<String, std::sync::Arc<Client>> = validated
        .into_iter()
        .filter_map(|(client, client_problems)| {
            problems.extend(client_problems);
            client.map(|c| (c.name.clone(), c))
        })
        .collect();
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

#[cfg(test)]
mod reuse_tests {
    use super::*;

    fn fleet(web: &str, alpha: &str) -> FleetFiles {
        FleetFiles::in_memory(&[
            (
                "pipelines/pipeline.yaml".to_string(),
                "stages: [{name: canary, group: canary}]\n".to_string(),
            ),
            ("pipelines/apps/web/app.yaml".to_string(), web.to_string()),
            ("clients/alpha.yaml".to_string(), alpha.to_string()),
        ])
    }

    const WEB: &str = "runtime: compose\n";
    const ALPHA: &str = "domain: alpha.org\ngroup: canary\napps: [web]\nhosts: [{name: alpha-1, address: 203.0.113.10}]\n";

    fn rendered(problems: &[Diagnostic]) -> Vec<String> {
        problems.iter().map(testing::render).collect()
    }

    /// A client file that is the same blob is reused only in the same
    /// context; otherwise it validates again, with the same problems as
    /// without reuse.
    #[test]
    fn a_client_is_reused_only_when_its_file_and_context_are_the_same() {
        let head = fleet(WEB, ALPHA);
        let (head_fleet, problems) = validate(&head);
        assert!(problems.is_empty(), "{problems:?}");
        let prior = Some(Clean::new(&head, &head_fleet));
        let check = |base: FleetFiles| {
            let (reused, got) = validate_reusing(&base, prior);
            let (fresh, expect) = validate(&base);
            assert_eq!(rendered(&got), rendered(&expect));
            assert_eq!(
                format!("{:?}", reused.clients),
                format!("{:?}", fresh.clients)
            );
            rendered(&got)
        };
        assert_eq!(check(fleet(WEB, ALPHA)), Vec::<String>::new());
        // The app now needs a secret the client does not provide.
        assert_eq!(
            check(fleet(&format!("{WEB}secrets: [pw]\n"), ALPHA)),
            [
                "clients/alpha.yaml apps: app `web` needs secret `pw`, which neither secrets/clients/alpha.sops.yaml nor secrets/shared.sops.yaml provides"
            ]
        );
        // The client's own file changed.
        let moved = ALPHA.replace("group: canary", "group: production");
        assert_eq!(check(fleet(WEB, &moved)).len(), 1);
    }
}
