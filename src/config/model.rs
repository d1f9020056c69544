//! The validated fleet: names checked, defaults applied, references resolved.
//!
//! `validate` turns [`FleetFiles`] into a [`Fleet`] or into every problem it
//! found, each naming file, field and line. Types here are what the rest of
//! fleetgate works with; nothing downstream re-checks what is checked here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use super::raw::{self, S};
use super::{
    APPS_DIR, CLIENT_SECRETS_DIR, FleetFiles, KNOWN_HOSTS, PIPELINE, SHARED_SECRETS, Selection,
    TRIVYIGNORE, client_file, client_secrets_file, duration, yaml,
};
use crate::error::Diagnostic;
use crate::scan::pin::ImageRef;
use crate::secrets::SopsFile;

pub use raw::{RollbackPolicy, Runtime};

#[derive(Debug)]
pub struct Fleet {
    pub pipeline: Pipeline,
    pub apps: BTreeMap<String, App>,
    /// The selected clients (see [`Selection`]).
    pub clients: BTreeMap<String, Client>,
    /// Every client that has a file, selected or not.
    pub all_clients: super::Names,
    pub shared_secrets: Option<SopsFile>,
    /// `pipelines/trivyignore.yaml`, validated (expired entries included:
    /// the scan reports them).
    pub ignores: Vec<IgnoreEntry>,
}

/// One accepted finding: `id` (a CVE or GHSA id), optionally only in one
/// image (repository, `repository:tag`, or the full pinned reference) and/or
/// one package; until `expires` (the last day it applies), for `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct IgnoreEntry {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    pub expires: chrono::NaiveDate,
    pub reason: String,
    #[serde(skip)]
    pub line: Option<u32>,
}

#[derive(Debug)]
pub struct Pipeline {
    pub stages: Vec<Stage>,
    pub scan: ScanPolicy,
    pub on_failure: OnFailure,
    pub runtimes: RuntimeCommands,
    /// `ssh_config` options (`KexAlgorithms` → `curve25519-sha256`), by
    /// canonical name; only those `ssh_options::ALLOWED`.
    pub ssh_options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    pub group: String,
    pub soak: Duration,
    pub approval: Option<Approval>,
    pub parallelism: u32,
    pub max_failures: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub approvers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "UNKNOWN" => Severity::Unknown,
            "LOW" => Severity::Low,
            "MEDIUM" => Severity::Medium,
            "HIGH" => Severity::High,
            "CRITICAL" => Severity::Critical,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ScanPolicy {
    pub fail_on: Vec<Severity>,
    pub ignore_unfixed: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct OnFailure {
    pub rollback: bool,
    pub revert: bool,
}

/// The command each container runtime is driven with on the hosts.
#[derive(Debug, Clone)]
pub struct RuntimeCommands {
    pub compose: String,
    pub podman: String,
}

#[derive(Debug)]
pub struct App {
    pub name: String,
    pub runtime: Runtime,
    pub images: BTreeMap<String, ImageRef>,
    /// Release-relative destination → template name (`<app>/<file>`).
    pub files: BTreeMap<String, String>,
    /// Template name → source.
    pub templates: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub commands: Commands,
    pub health: Vec<HealthCheck>,
    pub rollback: RollbackPolicy,
}

#[derive(Debug, Clone, Default)]
pub struct Commands {
    pub start: Option<String>,
    pub stop: Option<String>,
}

#[derive(Debug, Clone)]
pub enum HealthCheck {
    Http(HttpCheck),
    /// A shell command run on the host in the release directory (a template).
    Command(String),
}

#[derive(Debug, Clone)]
pub struct HttpCheck {
    /// A template: rendered per host.
    pub url: String,
    pub expect_status: u16,
    pub expect_body: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub successes: u32,
    pub failures: u32,
    pub deadline: Duration,
}

#[derive(Debug)]
pub struct Client {
    pub name: String,
    pub domain: String,
    pub group: String,
    pub apps: Vec<String>,
    pub hosts: Hosts,
    pub vars: serde_json::Map<String, serde_json::Value>,
    pub secrets: Option<SopsFile>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hosts {
    Static(Vec<Host>),
    /// Resolved against the Hetzner Cloud API at deploy time.
    Hcloud {
        label_selector: String,
        user: String,
        port: u16,
        deploy_root: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub deploy_root: String,
}

pub const DEFAULT_USER: &str = "deploy";
pub const DEFAULT_DEPLOY_ROOT: &str = "/opt/fleetgate";

impl Fleet {
    pub fn stage_of_group(&self, group: &str) -> Option<(usize, &Stage)> {
        self.pipeline
            .stages
            .iter()
            .enumerate()
            .find(|(_, s)| s.group == group)
    }
}

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
    let pipeline = validate_pipeline(files, &mut problems);
    let (apps, invalid_apps) = validate_apps(files, &mut problems);
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
        let client = validate_client(
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
    if files.selection == Selection::All {
        whole_fleet_checks(files, pipeline.as_ref(), &clients, &mut problems);
    }
    let ignores = validate_ignores(files, &mut problems);
    let fleet = Fleet {
        pipeline: pipeline.unwrap_or_else(Pipeline::empty),
        apps,
        clients,
        all_clients: files.all_clients.clone(),
        shared_secrets,
        ignores,
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
        }
    }
}

/// `pipelines/trivyignore.yaml` (optional): every entry needs an id, an
/// expiry date and a reason; an accepted risk without an end is refused.
fn validate_ignores(files: &FleetFiles, problems: &mut Vec<Diagnostic>) -> Vec<IgnoreEntry> {
    let Some(bytes) = files.files.get(TRIVYIGNORE) else {
        return Vec::new();
    };
    let raw: raw::TrivyIgnore = match yaml::parse(TRIVYIGNORE, bytes) {
        Ok(r) => r,
        Err(d) => {
            problems.push(d);
            return Vec::new();
        }
    };
    let mut c = Check {
        file: TRIVYIGNORE,
        problems,
    };
    let mut out = Vec::new();
    for (i, e) in raw.ignore.iter().enumerate() {
        let at = |f: &str| format!("ignore[{i}].{f}");
        let line = yaml::line_of(&e.id.referenced);
        if e.id.value.trim().is_empty() {
            c.at(
                &at("id"),
                &e.id,
                "the id is empty",
                "the finding's id as trivy reports it, e.g. CVE-2024-1234",
            );
        }
        let expires = match &e.expires {
            None => {
                c.at(
                    &at("expires"),
                    &e.id,
                    format!("`{}` has no expiry date", e.id.value),
                    "every accepted finding expires: add `expires: YYYY-MM-DD` (the last day it is accepted), then look again",
                );
                None
            }
            Some(d) => match chrono::NaiveDate::parse_from_str(d.value.trim(), "%Y-%m-%d") {
                Ok(date) => Some(date),
                Err(_) => {
                    c.at(
                        &at("expires"),
                        d,
                        format!("`{}` is not a date", d.value),
                        "write it as YYYY-MM-DD",
                    );
                    None
                }
            },
        };
        let reason = match &e.reason {
            Some(r) if !r.value.trim().is_empty() => Some(r.value.trim().to_string()),
            _ => {
                c.at(
                    &at("reason"),
                    &e.id,
                    format!("`{}` has no reason", e.id.value),
                    "say why the finding is accepted (not reachable, no fix yet, …): reviewers and the next person read it",
                );
                None
            }
        };
        if let (Some(expires), Some(reason)) = (expires, reason) {
            out.push(IgnoreEntry {
                id: e.id.value.trim().to_string(),
                image: e.image.as_ref().map(|s| s.value.trim().to_string()),
                package: e.package.as_ref().map(|s| s.value.trim().to_string()),
                expires,
                reason,
                line,
            });
        }
    }
    out
}

fn validate_pipeline(files: &FleetFiles, problems: &mut Vec<Diagnostic>) -> Option<Pipeline> {
    let Some(bytes) = files.files.get(PIPELINE) else {
        problems.push(
            Diagnostic::new(PIPELINE, format!("is missing from the {}", files.label)).hint(
                "every fleet repository has pipelines/pipeline.yaml; see ../shared/design.md §1",
            ),
        );
        return None;
    };
    let raw: raw::Pipeline = match yaml::parse(PIPELINE, bytes) {
        Ok(r) => r,
        Err(d) => {
            problems.push(d);
            return None;
        }
    };
    let mut c = Check {
        file: PIPELINE,
        problems,
    };
    if raw.stages.is_empty() {
        c.plain(
            "stages",
            "no stages are defined",
            "define at least one stage, e.g. `canary`",
        );
    }
    let mut stages = Vec::new();
    let mut names = BTreeSet::new();
    let mut groups = BTreeSet::new();
    for (i, s) in raw.stages.iter().enumerate() {
        let f = |k: &str| format!("stages[{i}].{k}");
        c.name(&f("name"), &s.name, "stage");
        c.name(&f("group"), &s.group, "group");
        if !names.insert(s.name.value.clone()) {
            c.at(
                &f("name"),
                &s.name,
                format!("stage `{}` is defined twice", s.name.value),
                "give each stage its own name",
            );
        }
        if !groups.insert(s.group.value.clone()) {
            c.at(
                &f("group"),
                &s.group,
                format!("group `{}` is picked by two stages", s.group.value),
                "a group's clients belong to exactly one stage",
            );
        }
        let soak = match &s.soak {
            Some(t) => c.duration(&f("soak"), &t.value, Duration::ZERO),
            None => Duration::ZERO,
        };
        let approval = match &s.approval {
            Some(a) if a.required => {
                if a.approvers.is_empty() {
                    c.plain(
                        &f("approval.approvers"),
                        "approval is required but nobody is listed as an approver",
                        "list the forge user names whose approval counts",
                    );
                }
                for (j, who) in a.approvers.iter().enumerate() {
                    let ok = !who.value.is_empty()
                        && who
                            .value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                    if !ok {
                        c.at(
                            &f(&format!("approval.approvers[{j}]")),
                            who,
                            format!("`{}` is not a forge user name", who.value),
                            "user names are letters, digits, `-`, `_` and `.`",
                        );
                    }
                }
                Some(Approval {
                    approvers: a.approvers.iter().map(|a| a.value.clone()).collect(),
                })
            }
            _ => None,
        };
        let parallelism = match &s.parallelism {
            Some(p) if p.value == 0 => {
                c.at(&f("parallelism"), p, "parallelism must be at least 1", "");
                1
            }
            Some(p) => p.value,
            None => 1,
        };
        stages.push(Stage {
            name: s.name.value.clone(),
            group: s.group.value.clone(),
            soak,
            approval,
            parallelism,
            max_failures: s.max_failures.unwrap_or(0),
        });
    }
    let mut fail_on = Vec::new();
    let mut ignore_unfixed = false;
    if let Some(scan) = &raw.scan {
        ignore_unfixed = scan.ignore_unfixed;
        for (i, sev) in scan.fail_on.iter().enumerate() {
            match Severity::parse(&sev.value) {
                Some(s) => fail_on.push(s),
                None => c.at(
                    &format!("scan.fail_on[{i}]"),
                    sev,
                    format!("`{}` is not a severity", sev.value),
                    "use CRITICAL, HIGH, MEDIUM, LOW or UNKNOWN",
                ),
            }
        }
    } else {
        fail_on = vec![Severity::Critical, Severity::High];
    }
    let on_failure = raw.on_failure.as_ref().map_or(
        OnFailure {
            rollback: true,
            revert: false,
        },
        |o| OnFailure {
            rollback: o.rollback,
            revert: o.revert,
        },
    );
    let runtimes = RuntimeCommands {
        compose: raw
            .runtimes
            .as_ref()
            .and_then(|r| r.compose.clone())
            .unwrap_or_else(|| "docker compose".into()),
        podman: raw
            .runtimes
            .as_ref()
            .and_then(|r| r.podman.clone())
            .unwrap_or_else(|| "podman compose".into()),
    };
    let mut ssh_options = BTreeMap::new();
    if let Some(ssh) = &raw.ssh {
        for (key, value) in &ssh.options {
            match super::ssh_options::check(key, &value.value) {
                Ok(name) => {
                    if ssh_options
                        .insert(name.to_string(), value.value.clone())
                        .is_some()
                    {
                        c.at(
                            &format!("ssh.options.{key}"),
                            value,
                            format!("`{name}` is set twice"),
                            "option names are case-insensitive: keep one",
                        );
                    }
                }
                Err(r) => c.at(&format!("ssh.options.{key}"), value, r.message, &r.hint),
            }
        }
    }
    // Kept even when a field is wrong: clients are still checked against the
    // stages; the problems already make the fleet invalid.
    Some(Pipeline {
        stages,
        scan: ScanPolicy {
            fail_on,
            ignore_unfixed,
        },
        on_failure,
        runtimes,
        ssh_options,
    })
}

/// The valid apps, and the names of apps that exist but did not validate (so
/// clients using them are not told the app does not exist).
fn validate_apps(
    files: &FleetFiles,
    problems: &mut Vec<Diagnostic>,
) -> (BTreeMap<String, App>, BTreeSet<String>) {
    let mut apps = BTreeMap::new();
    let mut invalid = BTreeSet::new();
    let app_dirs: BTreeSet<&str> = files
        .files
        .keys()
        .filter_map(|p| p.strip_prefix(&format!("{APPS_DIR}/")))
        .filter_map(|rest| rest.split_once('/').map(|(app, _)| app))
        .collect();
    for name in app_dirs {
        let file = format!("{APPS_DIR}/{name}/app.yaml");
        if !is_name(name) {
            problems.push(
                Diagnostic::new(
                    format!("{APPS_DIR}/{name}"),
                    format!("app `{name}` is not a valid name"),
                )
                .hint(NAME_HINT),
            );
            continue;
        }
        let Some(bytes) = files.files.get(&file) else {
            problems.push(
                Diagnostic::new(&file, "is missing")
                    .hint("every directory under pipelines/apps/ is an app and needs an app.yaml"),
            );
            continue;
        };
        let app = yaml::parse::<raw::App>(&file, bytes)
            .map_err(|d| problems.push(d))
            .ok()
            .and_then(|raw| validate_app(files, name, &file, raw, problems));
        match app {
            Some(app) => {
                apps.insert(name.to_string(), app);
            }
            None => {
                invalid.insert(name.to_string());
            }
        }
    }
    (apps, invalid)
}

fn validate_app(
    files: &FleetFiles,
    name: &str,
    file: &str,
    raw: raw::App,
    problems: &mut Vec<Diagnostic>,
) -> Option<App> {
    let before = problems.len();
    let mut c = Check { file, problems };
    let mut images = BTreeMap::new();
    for (key, reference) in &raw.images {
        let field = format!("images.{key}");
        if !is_ident(key) {
            c.at(
                &field,
                reference,
                format!("image name `{key}` is not usable in templates"),
                "image names are letters, digits and `_` (templates write app.images.<name>)",
            );
        }
        match ImageRef::parse_pinned(&reference.value) {
            Ok(r) => {
                images.insert(key.clone(), r);
            }
            Err(e) => c.at(&field, reference, e.message, &e.hint),
        }
    }
    let mut templates = BTreeMap::new();
    let mut out_files = BTreeMap::new();
    for (dest, template) in &raw.files {
        let field = format!("files.{dest}");
        if !is_release_path(dest) {
            c.at(
                &field,
                template,
                format!("destination `{dest}` is not a plain relative path"),
                "write a path inside the release directory: no leading `/`, no `..`, no empty parts",
            );
            continue;
        }
        if dest == "state.json" || dest == "current" || dest.starts_with("releases/") {
            c.at(
                &field,
                template,
                format!("destination `{dest}` is reserved by fleetgate"),
                "pick another file name",
            );
            continue;
        }
        if !is_release_path(&template.value) {
            c.at(
                &field,
                template,
                format!("template `{}` is not a plain relative path", template.value),
                "templates live in the app's directory",
            );
            continue;
        }
        let source_path = format!("{APPS_DIR}/{name}/{}", template.value);
        match files.files.get(&source_path) {
            Some(bytes) => match String::from_utf8(bytes.clone()) {
                Ok(text) => {
                    let tname = format!("{name}/{}", template.value);
                    templates.insert(tname.clone(), text);
                    out_files.insert(dest.clone(), tname);
                }
                Err(_) => c.at(
                    &field,
                    template,
                    format!("template {source_path} is not UTF-8 text"),
                    "",
                ),
            },
            // A symlink is reported as such by `load`, not as missing.
            None if files.problems.iter().any(|d| d.file == source_path) => {}
            None => c.at(
                &field,
                template,
                format!("template `{}` does not exist", template.value),
                &format!("create {source_path} or fix the name"),
            ),
        }
    }
    let mut secrets = Vec::new();
    for (i, key) in raw.secrets.iter().enumerate() {
        if !is_ident(&key.value) {
            c.at(
                &format!("secrets[{i}]"),
                key,
                format!("secret key `{}` is not a valid name", key.value),
                "secret keys are letters, digits and `_`",
            );
        } else if secrets.contains(&key.value) {
            c.at(
                &format!("secrets[{i}]"),
                key,
                format!("secret `{}` is listed twice", key.value),
                "",
            );
        } else {
            secrets.push(key.value.clone());
        }
    }
    let commands = raw
        .commands
        .as_ref()
        .map_or_else(Commands::default, |cm| Commands {
            start: cm.start.clone(),
            stop: cm.stop.clone(),
        });
    if raw.runtime.value == Runtime::Command && commands.start.is_none() {
        c.at(
            "commands.start",
            &raw.runtime,
            "runtime `command` needs `commands.start`",
            "add commands: { start: \"./start.sh\" }, run in the release directory",
        );
    }
    let mut health = Vec::new();
    for (i, h) in raw.health.iter().enumerate() {
        let f = |k: &str| format!("health[{i}].{k}");
        let v = &h.value;
        match (&v.http, &v.command) {
            (Some(url), None) => {
                if !may_be_http_url(url) {
                    c.at(
                        &f("http"),
                        h,
                        format!("`{url}` is not an http:// or https:// URL"),
                        HTTP_URL_HINT,
                    );
                }
                health.push(HealthCheck::Http(HttpCheck {
                    url: url.clone(),
                    expect_status: v.expect_status.unwrap_or(200),
                    expect_body: v.expect_body.clone(),
                    interval: v.interval.as_ref().map_or(Duration::from_secs(1), |t| {
                        c.duration(&f("interval"), t, Duration::from_secs(1))
                    }),
                    timeout: v.timeout.as_ref().map_or(Duration::from_secs(2), |t| {
                        c.duration(&f("timeout"), t, Duration::from_secs(2))
                    }),
                    successes: v.successes.unwrap_or(1).max(1),
                    failures: v.failures.unwrap_or(3).max(1),
                    deadline: v.deadline.as_ref().map_or(Duration::from_secs(60), |t| {
                        c.duration(&f("deadline"), t, Duration::from_secs(60))
                    }),
                }));
                if v.successes == Some(0) || v.failures == Some(0) {
                    c.at(
                        &format!("health[{i}]"),
                        h,
                        "successes and failures must be at least 1",
                        "",
                    );
                }
            }
            (None, Some(cmd)) => {
                let http_only = [
                    ("expect_status", v.expect_status.is_some()),
                    ("expect_body", v.expect_body.is_some()),
                    ("interval", v.interval.is_some()),
                    ("timeout", v.timeout.is_some()),
                    ("successes", v.successes.is_some()),
                    ("failures", v.failures.is_some()),
                    ("deadline", v.deadline.is_some()),
                ];
                for (key, set) in http_only {
                    if set {
                        c.at(
                            &f(key),
                            h,
                            format!("`{key}` applies to http checks only"),
                            "command checks pass when the command exits 0",
                        );
                    }
                }
                health.push(HealthCheck::Command(cmd.clone()));
            }
            _ => c.at(
                &format!("health[{i}]"),
                h,
                "a health check needs exactly one of `http` and `command`",
                "write `- http: \"http://...\"` or `- command: \"...\"`",
            ),
        }
    }
    (problems.len() == before).then(|| App {
        name: name.to_string(),
        runtime: raw.runtime.value,
        images,
        files: out_files,
        templates,
        secrets,
        commands,
        health,
        rollback: raw.rollback.unwrap_or(RollbackPolicy::Safe),
    })
}

pub const HTTP_URL_HINT: &str = "http checks GET a URL from the runner: write `http://…` or `https://…` (file:// and other schemes are refused)";

/// Whether a health check's URL template can still render to `http://…` or
/// `https://…`: the literal text before its first tag is checked here, the
/// rendered URL again by `render.rs` (a templated scheme).
pub fn may_be_http_url(template: &str) -> bool {
    let literal = template.split('{').next().unwrap_or_default();
    let literal = literal.to_ascii_lowercase();
    ["http://", "https://"]
        .iter()
        .any(|scheme| literal.starts_with(scheme) || scheme.starts_with(&literal))
}

/// A path inside a release directory: relative, no `..`, no empty parts.
pub fn is_release_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !p.chars().any(|c| c.is_control())
}

fn is_address(a: &str) -> bool {
    !a.is_empty()
        && !a.starts_with('-')
        && a.len() <= 253
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

fn is_user(u: &str) -> bool {
    let mut b = u.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
        && u.len() <= 32
}

fn is_deploy_root(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && p[1..]
            .trim_end_matches('/')
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
}

fn validate_client(
    files: &FleetFiles,
    name: &str,
    pipeline: Option<&Pipeline>,
    apps: &BTreeMap<String, App>,
    invalid_apps: &BTreeSet<String>,
    shared: Option<&SopsFile>,
    problems: &mut Vec<Diagnostic>,
) -> Option<Client> {
    let file = client_file(name);
    if !is_name(name) {
        problems.push(
            Diagnostic::new(
                &file,
                format!("client `{name}` is not a valid name (the file name is the client's name)"),
            )
            .hint(NAME_HINT),
        );
        return None;
    }
    let secrets = if files.client_secrets.contains(name) {
        let path = client_secrets_file(name);
        files.files.get(&path).and_then(|bytes| {
            SopsFile::parse(&path, bytes)
                .map_err(|p| problems.extend(p))
                .ok()
        })
    } else {
        None
    };
    let bytes = files.files.get(&file)?;
    let raw: raw::Client = match yaml::parse(&file, bytes) {
        Ok(r) => r,
        Err(d) => {
            problems.push(d);
            return None;
        }
    };
    let before = problems.len();
    let mut c = Check {
        file: &file,
        problems,
    };
    if !is_address(&raw.domain.value) || raw.domain.value.contains(':') {
        c.at(
            "domain",
            &raw.domain,
            format!("`{}` is not a domain name", raw.domain.value),
            "e.g. `alpha.example.org`",
        );
    }
    c.name("group", &raw.group, "group");
    if let Some(p) = pipeline
        && !p.stages.iter().any(|s| s.group == raw.group.value)
    {
        let groups: Vec<&str> = p.stages.iter().map(|s| s.group.as_str()).collect();
        c.at(
            "group",
            &raw.group,
            format!(
                "group `{}` is not picked by any stage of {PIPELINE}",
                raw.group.value
            ),
            &format!("use one of: {}", groups.join(", ")),
        );
    }
    let mut app_names = Vec::new();
    for (i, a) in raw.apps.iter().enumerate() {
        let field = format!("apps[{i}]");
        if invalid_apps.contains(&a.value) {
            // Already reported in the app's own file.
        } else if !apps.contains_key(&a.value) {
            let known: Vec<&str> = apps.keys().map(String::as_str).collect();
            c.at(
                &field,
                a,
                format!("app `{}` does not exist", a.value),
                &format!(
                    "define {APPS_DIR}/{}/app.yaml, or use one of: {}",
                    a.value,
                    known.join(", ")
                ),
            );
        } else if app_names.contains(&a.value) {
            c.at(&field, a, format!("app `{}` is listed twice", a.value), "");
        } else {
            app_names.push(a.value.clone());
        }
    }
    let hosts = match &raw.hosts {
        raw::Hosts::Static(list) => {
            if list.is_empty() {
                c.plain(
                    "hosts",
                    "no hosts are listed",
                    "list at least one host, or use `hosts: {hcloud: {label_selector: ...}}`",
                );
            }
            let mut seen = BTreeSet::new();
            let mut hosts = Vec::new();
            for (i, h) in list.iter().enumerate() {
                let f = |k: &str| format!("hosts[{i}].{k}");
                c.name(&f("name"), &h.name, "host");
                if !seen.insert(h.name.value.clone()) {
                    c.at(
                        &f("name"),
                        &h.name,
                        format!("host `{}` is listed twice", h.name.value),
                        "",
                    );
                }
                if !is_address(&h.address.value) {
                    c.at(
                        &f("address"),
                        &h.address,
                        format!("`{}` is not a host address", h.address.value),
                        "write an IP address or a DNS name",
                    );
                }
                if h.port == Some(0) {
                    c.plain(&f("port"), "port 0 is not a port", "");
                }
                let user = h
                    .user
                    .as_ref()
                    .map_or(DEFAULT_USER.to_string(), |u| u.value.clone());
                if let Some(u) = &h.user
                    && !is_user(&u.value)
                {
                    c.at(
                        &f("user"),
                        u,
                        format!("`{}` is not a user name", u.value),
                        "lowercase letters, digits, `_` and `-`",
                    );
                }
                let deploy_root = h
                    .deploy_root
                    .as_ref()
                    .map_or(DEFAULT_DEPLOY_ROOT.to_string(), |d| {
                        d.value.trim_end_matches('/').to_string()
                    });
                if let Some(d) = &h.deploy_root
                    && !is_deploy_root(&d.value)
                {
                    c.at(
                        &f("deploy_root"),
                        d,
                        format!("`{}` is not an absolute, plain path", d.value),
                        "e.g. /opt/fleetgate: letters, digits, `.`, `_`, `-`, no `..`",
                    );
                }
                hosts.push(Host {
                    name: h.name.value.clone(),
                    address: h.address.value.clone(),
                    port: h.port.unwrap_or(22),
                    user,
                    deploy_root,
                });
            }
            Hosts::Static(hosts)
        }
        raw::Hosts::Hcloud(h) => {
            let hc = &h.hcloud;
            if hc.label_selector.value.trim().is_empty() {
                c.at(
                    "hosts.hcloud.label_selector",
                    &hc.label_selector,
                    "label selector is empty",
                    "e.g. `client=alpha`",
                );
            }
            Hosts::Hcloud {
                label_selector: hc.label_selector.value.clone(),
                user: hc
                    .user
                    .as_ref()
                    .map_or(DEFAULT_USER.to_string(), |u| u.value.clone()),
                port: hc.port.unwrap_or(22),
                deploy_root: hc
                    .deploy_root
                    .as_ref()
                    .map_or(DEFAULT_DEPLOY_ROOT.to_string(), |d| d.value.clone()),
            }
        }
    };
    for key in raw.vars.keys() {
        if !is_ident(key) {
            c.plain(
                &format!("vars.{key}"),
                format!("variable `{key}` is not usable in templates"),
                "variable names are letters, digits and `_` (templates write client.vars.<name>)",
            );
        }
    }
    // Every secret an app declares must come from the client's or the shared file.
    for app in app_names.iter().filter_map(|a| apps.get(a)) {
        for key in &app.secrets {
            let provided = secrets.as_ref().is_some_and(|s| s.keys.contains_key(key))
                || shared.is_some_and(|s| s.keys.contains_key(key));
            if !provided {
                c.plain(
                    "apps",
                    format!(
                        "app `{}` needs secret `{key}`, which neither {} nor {SHARED_SECRETS} provides",
                        app.name,
                        client_secrets_file(name)
                    ),
                    &format!("add it: `cd secrets && sops edit clients/{name}.sops.yaml`"),
                );
            }
        }
    }
    (problems.len() == before).then(|| Client {
        name: name.to_string(),
        domain: raw.domain.value.clone(),
        group: raw.group.value.clone(),
        apps: app_names,
        hosts,
        vars: raw.vars.clone(),
        secrets,
    })
}

/// Checks that need every client: stages without clients, host names used
/// twice, secrets files of clients that do not exist.
fn whole_fleet_checks(
    files: &FleetFiles,
    pipeline: Option<&Pipeline>,
    clients: &BTreeMap<String, Client>,
    problems: &mut Vec<Diagnostic>,
) {
    for orphan in files
        .client_secrets
        .iter()
        .filter(|c| !files.all_clients.contains(c))
    {
        problems.push(
            Diagnostic::new(client_secrets_file(orphan), format!("belongs to no client: {} does not exist", client_file(orphan)))
                .hint(format!("remove it, or add the client; secrets of removed clients must not linger in {CLIENT_SECRETS_DIR}/")),
        );
    }
    if let Some(p) = pipeline
        && files.problems.is_empty()
        && clients.len() == files.all_clients.len()
    {
        for (i, stage) in p.stages.iter().enumerate() {
            if !clients.values().any(|c| c.group == stage.group) {
                problems.push(
                    Diagnostic::new(
                        PIPELINE,
                        format!(
                            "stage `{}` picks group `{}`, which no client is in",
                            stage.name, stage.group
                        ),
                    )
                    .field(format!("stages[{i}].group"))
                    .hint(format!(
                        "set `group: {}` in a client, or remove the stage",
                        stage.group
                    )),
                );
            }
        }
    }
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for client in clients.values() {
        if let Hosts::Static(hosts) = &client.hosts {
            for (i, h) in hosts.iter().enumerate() {
                if let Some(other) = owner.insert(&h.name, &client.name)
                    && other != client.name
                {
                    problems.push(
                        Diagnostic::new(
                            client_file(&client.name),
                            format!("host `{}` is also a host of client `{other}`", h.name),
                        )
                        .field(format!("hosts[{i}].name"))
                        .hint(
                            "host names are unique across the fleet; progress and records use them",
                        ),
                    );
                }
            }
        }
    }
}

/// Every static host needs its key pinned in `pipelines/known_hosts`: deploy
/// refuses hosts without one, so `check` says so first. (Not part of
/// `validate`: a plan may show a host whose key is not pinned yet.)
pub fn known_hosts_checks(
    files: &FleetFiles,
    clients: &BTreeMap<String, Client>,
    problems: &mut Vec<Diagnostic>,
) {
    let static_hosts: Vec<(&Client, usize, &Host)> = clients
        .values()
        .filter_map(|c| match &c.hosts {
            Hosts::Static(hosts) => Some(hosts.iter().enumerate().map(move |(i, h)| (c, i, h))),
            Hosts::Hcloud { .. } => None,
        })
        .flatten()
        .collect();
    if static_hosts.is_empty() {
        return;
    }
    let Some(bytes) = files.files.get(KNOWN_HOSTS) else {
        problems.push(
            Diagnostic::new(KNOWN_HOSTS, "is missing; every host's SSH key must be pinned")
                .hint("add `ssh-keyscan -p PORT HOST` lines, verified out of band; fleetgate never trusts a key on first use"),
        );
        return;
    };
    let text = String::from_utf8_lossy(bytes);
    let mut patterns = BTreeSet::new();
    let mut hashed = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (hosts, rest) = match fields.first() {
            Some(m) if m.starts_with('@') => (fields.get(1), &fields[fields.len().min(2)..]),
            Some(_) => (fields.first(), &fields[1..]),
            None => continue,
        };
        if rest.len() < 2 {
            problems.push(
                Diagnostic::new(
                    KNOWN_HOSTS,
                    "is not a known_hosts line (expected `HOST KEYTYPE KEY`)",
                )
                .line(u32::try_from(i + 1).ok())
                .hint("write lines as ssh-keyscan prints them"),
            );
            continue;
        }
        for pattern in hosts.map(|h| h.split(',')).into_iter().flatten() {
            hashed |= pattern.starts_with("|1|");
            patterns.insert(pattern.to_string());
        }
    }
    if hashed {
        // Hashed entries cannot be matched here; deploy still checks strictly.
        return;
    }
    for (client, i, host) in static_hosts {
        let wanted = if host.port == 22 {
            host.address.clone()
        } else {
            format!("[{}]:{}", host.address, host.port)
        };
        if !patterns.contains(&wanted) {
            problems.push(
                Diagnostic::new(client_file(&client.name), format!("host `{}` ({wanted}) has no key in {KNOWN_HOSTS}", host.name))
                    .field(format!("hosts[{i}]"))
                    .hint(format!("pin it: `ssh-keyscan -p {} {} >> {KNOWN_HOSTS}`, after verifying the key out of band", host.port, host.address)),
            );
        }
    }
}
