//! The validated fleet: the types the rest of fleetgate works with, once
//! names are checked, defaults applied and references resolved.
//!
//! Only `validate/` builds them (see [`validate`]); nothing downstream
//! re-checks what is checked there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::raw;
use crate::inventory::selector::Selector;
use crate::scan::pin::ImageRef;
use crate::secrets::SopsFile;

pub use raw::{QuadletScope, RollbackPolicy, Runtime, SnapshotPolicy};
// The validators lived in this file before it was split; their public paths
// under `config::model` stay valid for code written against it.
pub use super::validate::{
    Clean, HTTP_URL_HINT, known_hosts_checks, known_hosts_checks_of, validate, validate_reusing,
};

#[derive(Debug)]
pub struct Fleet {
    pub pipeline: Pipeline,
    pub apps: BTreeMap<String, App>,
    /// The selected clients (see [`Selection`]). Shared: a plan's base
    /// side holds head's validated client when its files are the same.
    pub clients: BTreeMap<String, Arc<Client>>,
    /// Every client that has a file, selected or not.
    pub all_clients: super::Names,
    pub shared_secrets: Option<SopsFile>,
    /// `pipelines/trivyignore.yaml`, validated (expired entries included:
    /// the scan reports them).
    pub ignores: Vec<IgnoreEntry>,
    /// What is worth saying but must not stop anyone (a stage without
    /// clients while the last one is offboarded): every command that
    /// validates prints them, none refuses a commit for them.
    pub warnings: Vec<crate::error::Diagnostic>,
}

impl Fleet {
    /// Says the warnings, as every command that acts on a commit does.
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!("{w}");
        }
    }
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
    /// How long a removed app's releases stay on its host (`removal.keep_releases`).
    pub keep_removed_releases: Duration,
    /// The reverse proxy in front of the apps' routes (`proxy:`), if any.
    pub proxy: Option<crate::remote::proxy::Settings>,
    /// The webhooks told what happened (`notify:`), in the order written.
    pub notify: Vec<Webhook>,
}

/// One webhook of `notify:`. Its URL is a credential (a Slack webhook's
/// path is its key): never printed, only its host ([`Webhook::label`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Its place in `notify:`, from 1: how logs name it.
    pub number: usize,
    pub target: WebhookTarget,
    pub format: WebhookFormat,
    /// Only these events; empty: every event.
    pub events: Vec<crate::core::events::EventKind>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookTarget {
    /// `url:`, written in the file (an endpoint whose URL is no secret).
    Url(String),
    /// `url_env:`: the environment variable that holds it, read at run time.
    Env(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// `{"schema": 1, "event", "summary", …}`.
    Json,
    /// Slack's and Mattermost's incoming webhooks: `{"text"}`.
    Slack,
}

impl Webhook {
    pub fn wants(&self, kind: crate::core::events::EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }
}

/// `webhook #N (host)`: a URL's host only, never its path or query (where
/// a webhook's key is). `url` is an http(s) URL checked by `validate`, or
/// one read from the environment (anything: then its host may be none).
pub fn webhook_label(number: usize, url: &str) -> String {
    format!("webhook #{number} ({})", url_host(url).unwrap_or("?"))
}

/// The host (and port) of an `http://` or `https://` URL, without user
/// info; None for anything else.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    (!host.is_empty() && !authority.contains('@') && !host.contains(char::is_whitespace))
        .then_some(host)
}

/// Removed apps' releases are kept this long by default: long enough to
/// put an app back by hand after a mistaken removal.
pub const KEEP_REMOVED_RELEASES: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    pub group: String,
    pub soak: Duration,
    pub approval: Option<Approval>,
    pub parallelism: u32,
    pub max_failures: u32,
    /// As written; None: each app's own (or its default) decides.
    pub snapshot: Option<SnapshotPolicy>,
    /// As written; None: the app's, else [`DEFAULT_SNAPSHOT_KEEP`].
    pub snapshot_keep: Option<u32>,
    /// As written (`before_deploy` | `never`); None: only `rollback:
    /// freeze` apps run their `commands.backup` (`deploy::backup_of`).
    pub backup: Option<SnapshotPolicy>,
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
    /// As written; None: `before_deploy` for a `freeze` app on Hetzner
    /// servers (`deploy::snapshot::decide`).
    pub snapshot: Option<SnapshotPolicy>,
    pub snapshot_keep: Option<u32>,
    /// Where the host's proxy sends which host names and paths.
    pub routes: Vec<Route>,
    pub strategy: Strategy,
    /// runtime quadlet: its units and where they go.
    pub quadlet: Option<QuadletApp>,
}

/// How a quadlet app is installed and run (`remote::quadlet`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuadletApp {
    /// The units a change restarts and the gate wants `active`.
    pub units: Vec<String>,
    /// None: decided on the host (`system` for root, else `user`).
    pub scope: Option<QuadletScope>,
    /// The directory `<client>-<app>/` goes in; None: the scope's default.
    pub dir: Option<String>,
}

/// One route of an app, its templates unrendered.
#[derive(Debug, Clone)]
pub struct Route {
    /// Templates of the public host names.
    pub hosts: Vec<String>,
    /// A path prefix (`/` when absent).
    pub path: Option<String>,
    /// The compose service (or process) behind it: said in the plan and logs.
    pub service: Option<String>,
    /// A template of the host port; `None` for a blue_green app (the live slot's).
    pub port: Option<String>,
    /// A path the blue/green gate probes on the new slot directly.
    pub health: Option<String>,
    /// Lines in the proxy's syntax, inside the route's block.
    pub directives: Vec<String>,
}

/// How a new release replaces the live one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Stop and start in place (the runtime recreates what changed).
    Recreate,
    /// Start beside the live one in the other slot, gate it, switch the
    /// proxy, stop the old one after `drain`.
    BlueGreen {
        /// Templates of the two slots' host ports.
        slot_ports: [String; 2],
        drain: Duration,
    },
}

/// How long the old slot of a blue/green app serves after the switch.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

/// Snapshots kept per server when no `snapshot_keep` says otherwise.
pub const DEFAULT_SNAPSHOT_KEEP: u32 = 3;

#[derive(Debug, Clone, Default)]
pub struct Commands {
    pub start: Option<String>,
    pub stop: Option<String>,
    pub pre_snapshot: Option<String>,
    /// Backs the app's data up before its first change; prints
    /// `FLEETGATE_BACKUP_ID=<id>`. Always with `restore`.
    pub backup: Option<String>,
    /// Puts a backup back, `FLEETGATE_BACKUP_ID` in its environment.
    pub restore: Option<String>,
    /// Prints the app's last log lines (run in the release that failed);
    /// compose and podman apps have a default, command apps none.
    pub logs: Option<String>,
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
    /// Probe through the host's proxy, as a user would reach the app.
    pub route: bool,
}

#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    pub domain: String,
    pub group: String,
    pub apps: Vec<String>,
    pub hosts: Hosts,
    pub vars: serde_json::Map<String, serde_json::Value>,
    /// Boxed: a fleet holds one `Client` per client, and many have no
    /// secrets file.
    pub secrets: Option<Box<SopsFile>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hosts {
    Static(Vec<Host>),
    /// Resolved against the Hetzner Cloud API at deploy time.
    Hcloud {
        label_selector: Selector,
        network: Network,
        user: String,
        port: u16,
        deploy_root: String,
    },
}

/// Which address of a Hetzner Cloud server to connect to (`raw::Network`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    PublicIpv4,
    /// The first address of the server's public /64.
    PublicIpv6,
    /// Its address on the private network of this name.
    Private(String),
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
