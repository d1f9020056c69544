//! The fleet files as written: serde types that mirror the YAML one to one.
//!
//! Nothing here decides anything: no defaults beyond "absent", no name rules.
//! `model.rs` validates these into the types the rest of fleetgate uses.
//! Every struct denies unknown keys, so a typo is an error, not a silent no-op.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A value with the place it was written.
pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub stages: Vec<Stage>,
    #[serde(default)]
    pub scan: Option<Scan>,
    #[serde(default)]
    pub on_failure: Option<OnFailure>,
    /// Per-runtime command overrides, e.g. `compose: "docker-compose"`.
    #[serde(default)]
    pub runtimes: Option<Runtimes>,
    /// OpenSSH client options for every host, e.g. `KexAlgorithms: curve25519-sha256`.
    #[serde(default)]
    pub ssh: Option<Ssh>,
    /// What becomes of an app taken off a host.
    #[serde(default)]
    pub removal: Option<Removal>,
    /// The reverse proxy on every host, in front of the apps' `routes`.
    #[serde(default)]
    pub proxy: Option<S<Proxy>>,
    /// Webhooks told about stages passed, waiting, failed, reverted, frozen.
    #[serde(default)]
    pub notify: Vec<S<Notify>>,
}

/// One entry of `notify:` in `pipeline.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// The webhook's URL, for an endpoint whose URL is no secret.
    #[serde(default)]
    pub url: Option<S<String>>,
    /// The environment variable holding the URL (a CI secret).
    #[serde(default)]
    pub url_env: Option<S<String>>,
    #[serde(default)]
    pub format: Option<S<NotifyFormat>>,
    /// Only these events (default: all).
    #[serde(default)]
    pub events: Option<Vec<S<String>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    Json,
    Slack,
}

/// `proxy:` in `pipeline.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    pub kind: S<ProxyKind>,
    #[serde(default)]
    pub http_port: Option<S<u16>>,
    #[serde(default)]
    pub https_port: Option<S<u16>>,
    /// `auto` (Caddy's automatic HTTPS) or `off` (plain HTTP).
    #[serde(default)]
    pub tls: Option<S<ProxyTls>>,
    /// Starts the proxy when nothing answers on `http_port`.
    #[serde(default)]
    pub start: Option<S<String>>,
    /// Replaces the graceful reload.
    #[serde(default)]
    pub reload: Option<S<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyKind {
    Caddy,
    Nginx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyTls {
    Auto,
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Removal {
    /// How long a removed app's releases stay on the host (`30d`).
    #[serde(default)]
    pub keep_releases: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    #[serde(default)]
    pub options: BTreeMap<String, S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: S<String>,
    pub group: S<String>,
    #[serde(default)]
    pub soak: Option<S<String>>,
    #[serde(default)]
    pub approval: Option<Approval>,
    #[serde(default)]
    pub parallelism: Option<S<u32>>,
    #[serde(default)]
    pub max_failures: Option<u32>,
    /// `before_deploy` or `never`: a Hetzner snapshot of each server
    /// before its first change.
    #[serde(default)]
    pub snapshot: Option<SnapshotPolicy>,
    #[serde(default)]
    pub snapshot_keep: Option<S<u32>>,
    /// `before_deploy` or `never`: the apps' `commands.backup` before
    /// their first change (default: only `rollback: freeze` apps').
    #[serde(default)]
    pub backup: Option<SnapshotPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotPolicy {
    BeforeDeploy,
    Never,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub approvers: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scan {
    #[serde(default)]
    pub fail_on: Vec<S<String>>,
    #[serde(default)]
    pub ignore_unfixed: bool,
}

/// `pipelines/trivyignore.yaml`: accepted findings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrivyIgnore {
    #[serde(default)]
    pub ignore: Vec<IgnoreEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IgnoreEntry {
    pub id: S<String>,
    #[serde(default)]
    pub image: Option<S<String>>,
    #[serde(default)]
    pub package: Option<S<String>>,
    /// Mandatory; optional here so the error can say why.
    #[serde(default)]
    pub expires: Option<S<String>>,
    #[serde(default)]
    pub reason: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnFailure {
    #[serde(default)]
    pub rollback: bool,
    #[serde(default)]
    pub revert: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtimes {
    #[serde(default)]
    pub compose: Option<String>,
    #[serde(default)]
    pub podman: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub runtime: S<Runtime>,
    #[serde(default)]
    pub images: BTreeMap<String, S<String>>,
    #[serde(default)]
    pub files: BTreeMap<String, S<String>>,
    #[serde(default)]
    pub secrets: Vec<S<String>>,
    #[serde(default)]
    pub commands: Option<Commands>,
    #[serde(default)]
    pub health: Vec<S<Health>>,
    #[serde(default)]
    pub rollback: Option<RollbackPolicy>,
    #[serde(default)]
    pub snapshot: Option<SnapshotPolicy>,
    #[serde(default)]
    pub snapshot_keep: Option<S<u32>>,
    /// Where the host's proxy sends which public host names and paths.
    #[serde(default)]
    pub routes: Vec<S<Route>>,
    /// `recreate` (the default) or `blue_green`.
    #[serde(default)]
    pub strategy: Option<S<Strategy>>,
    /// blue_green: how long the old slot keeps running after the switch.
    #[serde(default)]
    pub drain: Option<S<String>>,
    /// blue_green: the host ports of the two slots (`{{ release.port }}`).
    #[serde(default)]
    pub slot_ports: Option<S<Vec<S<Port>>>>,
    /// runtime quadlet: the systemd units restarted on a change
    /// (`[authentik-pod.service]`); default: the services Quadlet generates
    /// for the app's `.container`, `.pod` and `.kube` files.
    #[serde(default)]
    pub units: Option<S<Vec<S<String>>>>,
    /// runtime quadlet: where its unit files go, and for which systemd.
    #[serde(default)]
    pub quadlet: Option<S<Quadlet>>,
}

/// `quadlet:` of an app: `{scope: system|user, dir: PATH}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quadlet {
    /// `system` (rootful: /etc/containers/systemd, `systemctl`) or `user`
    /// (rootless: ~/.config/containers/systemd, `systemctl --user`);
    /// default: `system` when the host's user is root, else `user`.
    #[serde(default)]
    pub scope: Option<QuadletScope>,
    /// The directory the app's `<client>-<app>/` unit directory goes in
    /// (absolute, or `~/…` in the login user's home).
    #[serde(default)]
    pub dir: Option<S<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuadletScope {
    System,
    User,
}

/// One route of an app: `{hosts, path, service, port, health}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub hosts: Vec<S<String>>,
    #[serde(default)]
    pub path: Option<S<String>>,
    #[serde(default)]
    pub service: Option<S<String>>,
    #[serde(default)]
    pub port: Option<S<Port>>,
    #[serde(default)]
    pub health: Option<S<String>>,
    /// Lines in the proxy's own syntax for this route (`client_max_body_size 10G;`).
    #[serde(default)]
    pub proxy_directives: Vec<S<String>>,
}

/// A port as written: a number, or a template rendering to one
/// (`"{{ client.vars.web_port }}"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port(pub String);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Port;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port number or a template rendering to one")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Port, E> {
                Ok(Port(n.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Port, E> {
                Ok(Port(n.to_string()))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Port, E> {
                Ok(Port(s.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Recreate,
    BlueGreen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Compose,
    Podman,
    Command,
    /// Podman Quadlet unit files, run by systemd.
    Quadlet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RollbackPolicy {
    Safe,
    Freeze,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commands {
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub stop: Option<String>,
    /// Run on the host before its snapshot (a dump, `fsfreeze`).
    #[serde(default)]
    pub pre_snapshot: Option<String>,
    /// Run on the host in the live release before the app's first change;
    /// prints `FLEETGATE_BACKUP_ID=<id>`.
    #[serde(default)]
    pub backup: Option<S<String>>,
    /// Puts a backup back (`fleetgate restore --app`): run in the live
    /// release with `FLEETGATE_BACKUP_ID` set.
    #[serde(default)]
    pub restore: Option<String>,
    /// Prints the app's last log lines, in its release (a failed host's report).
    #[serde(default)]
    pub logs: Option<String>,
}

/// One health check: exactly one of `http` and `command`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    #[serde(default)]
    pub http: Option<String>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub expect_status: Option<u16>,
    #[serde(default)]
    pub expect_body: Option<String>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub successes: Option<u32>,
    #[serde(default)]
    pub failures: Option<u32>,
    #[serde(default)]
    pub deadline: Option<String>,
    /// Sent through the host's proxy with the URL's host name (a route of the app).
    #[serde(default)]
    pub route: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    pub domain: S<String>,
    pub group: S<String>,
    pub apps: Vec<S<String>>,
    pub hosts: Hosts,
    #[serde(default)]
    pub vars: serde_json::Map<String, serde_json::Value>,
}

/// What the rules over the whole fleet need of a client file, read without
/// validating the rest: other keys are ignored here, not denied.
#[derive(Debug, Deserialize)]
pub struct ClientOutline {
    pub group: S<String>,
    pub hosts: Hosts,
}

/// `hosts:` is either a list of static hosts or `{hcloud: {...}}`.
///
/// Written by hand instead of `#[serde(untagged)]`, which would buffer the
/// value and lose both the field path and the line of any error inside it.
#[derive(Debug)]
pub enum Hosts {
    Static(Vec<Host>),
    Hcloud(Box<HcloudHosts>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub name: S<String>,
    pub address: S<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub user: Option<S<String>>,
    #[serde(default)]
    pub deploy_root: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HcloudHosts {
    pub hcloud: Hcloud,
}

/// `hosts: {hcloud: {...}}`: the servers of a Hetzner Cloud project whose
/// labels match `label_selector` (Hetzner's syntax), reached at the address
/// `network` names, with `port`, `user` and `deploy_root` as for static hosts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hcloud {
    pub label_selector: S<String>,
    #[serde(default)]
    pub network: Option<Network>,
    #[serde(default)]
    pub user: Option<S<String>>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub deploy_root: Option<S<String>>,
}

/// `hosts.hcloud.network`: which of a server's addresses fleetgate connects
/// to. `public` (the default: its public IPv4), `public-ipv6` (the first
/// address of its public /64, `::1`), or `{private: <network name>}` (its
/// address on that private network, for a runner inside it). A map for the
/// private form, so that no network name can be mistaken for a keyword.
#[derive(Debug)]
pub enum Network {
    Public,
    PublicIpv6,
    Private(S<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivateNetwork {
    private: S<String>,
}

/// By hand, so that a mistake reads as the three forms, not as serde's enum
/// representation.
impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Network;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`public`, `public-ipv6` or `{private: <network name>}`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Network, E> {
                match s {
                    "public" => Ok(Network::Public),
                    "public-ipv6" => Ok(Network::PublicIpv6),
                    _ => Err(E::invalid_value(de::Unexpected::Str(s), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Network, A::Error> {
                PrivateNetwork::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|p| Network::Private(p.private))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Hosts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Hosts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of hosts or `{hcloud: {label_selector: ...}}`")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Hosts, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Hosts::Static)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Hosts, A::Error> {
                HcloudHosts::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|h| Hosts::Hcloud(Box::new(h)))
            }
        }
        d.deserialize_any(V)
    }
}
