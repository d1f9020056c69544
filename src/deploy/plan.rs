//! The stage plan: every host, file, command and check of one stage, built
//! in full from the renders of one commit before anything runs, so a stage
//! can be printed and tested as data and [`super::run_stage`] only carries
//! it out.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Strategy;
use crate::config::{Host, RollbackPolicy};
use crate::gates::health::Policy;
use crate::remote::proxy::{ProxyDir, Route, Settings};
use crate::remote::release::{AppDir, ReleaseFile, Start};
use crate::secrets::Masker;

/// Everything one stage will do, decided before anything runs.
#[derive(Debug)]
pub struct StagePlan {
    pub stage: String,
    pub rev: String,
    pub parallelism: usize,
    pub max_failures: usize,
    pub rollback: bool,
    pub targets: Vec<Target>,
    /// How long removed apps' releases stay on a host.
    pub keep_removed: Duration,
}

/// One host of one client, and the releases it gets.
#[derive(Debug)]
pub struct Target {
    pub client: String,
    pub host: Host,
    pub apps: Vec<AppJob>,
    /// Apps this host runs for the client that the commit no longer gives it
    /// (removed from the client, the host removed from the client, or the
    /// client file deleted): stopped and taken out of `current`, their
    /// releases and data kept.
    pub removals: Vec<Removal>,
    /// The secret values this host's files hold: masked out of any output.
    pub masker: Masker,
    /// A Hetzner snapshot to take before the host's first change
    /// (`snapshot.rs`; filled in by `rollout.rs`, which knows the servers).
    pub snapshot: Option<super::snapshot::SnapshotJob>,
    /// The pipeline's proxy on this host, when it runs one.
    pub proxy: Option<ProxyJob>,
}

/// The reverse proxy of one host: how it is run, and where its config lives.
#[derive(Debug, Clone)]
pub struct ProxyJob {
    pub settings: Settings,
    pub dir: ProxyDir,
}

impl Target {
    /// Whether this host's proxy is fleetgate's business in this stage:
    /// the pipeline runs one and an app of the host has routes, or an app
    /// taken off it may have had some.
    pub fn proxy(&self) -> Option<&ProxyJob> {
        self.proxy
            .as_ref()
            .filter(|_| !self.removals.is_empty() || self.apps.iter().any(|a| !a.routes.is_empty()))
    }
}

/// One app to take off a host, described by the commit that deployed it.
#[derive(Debug, Clone)]
pub struct Removal {
    pub app: String,
    pub dir: AppDir,
    pub start: Start,
    pub stop: Option<String>,
}

/// How `app` of `client` is started (and so stopped) on `host` under
/// `fleet`'s runtimes.
pub fn start_of(
    fleet: &crate::config::Fleet,
    client: &crate::config::Client,
    app: &crate::config::App,
    host: &Host,
) -> Start {
    use crate::config::Runtime;
    match app.runtime {
        Runtime::Quadlet => Start::Quadlet(quadlet_units(client, app, host)),
        Runtime::Compose | Runtime::Podman => Start::Compose {
            command: if app.runtime == Runtime::Compose {
                fleet.pipeline.runtimes.compose.clone()
            } else {
                fleet.pipeline.runtimes.podman.clone()
            },
            project: format!("{}-{}", client.name, app.name),
        },
        Runtime::Command => Start::Command {
            start: app.commands.start.clone().unwrap_or_default(),
            stop: app.commands.stop.clone(),
        },
    }
}

/// A quadlet app's units on `host`: its `quadlet.scope`, else rootful
/// for root and rootless for any other login user; its unit directory
/// `<quadlet.dir or the scope's>/<client>-<app>`.
pub fn quadlet_units(
    client: &crate::config::Client,
    app: &crate::config::App,
    host: &Host,
) -> crate::remote::quadlet::Units {
    use crate::config::QuadletScope;
    use crate::remote::quadlet::{Scope, Units, default_base};
    let q = app.quadlet.clone().unwrap_or(crate::config::QuadletApp {
        units: Vec::new(),
        scope: None,
        dir: None,
    });
    let scope = match q.scope {
        Some(QuadletScope::System) => Scope::System,
        Some(QuadletScope::User) => Scope::User,
        None if host.user == "root" => Scope::System,
        None => Scope::User,
    };
    let base = q.dir.as_deref().unwrap_or(default_base(scope));
    Units {
        scope,
        dir: format!(
            "{}/{}-{}",
            base.trim_end_matches('/'),
            client.name,
            app.name
        ),
        units: q.units,
    }
}

#[derive(Debug)]
pub struct AppJob {
    pub name: String,
    pub dir: AppDir,
    pub files: Vec<ReleaseFile>,
    pub start: Start,
    /// How to stop it when a first deploy is rolled back (nothing to go back to).
    pub stop: Option<String>,
    pub checks: Vec<CheckSpec>,
    pub rollback: RollbackPolicy,
    /// Its routes (a blue_green app's: its blue slot's).
    pub routes: Vec<Route>,
    /// `strategy: blue_green`: the two slots, each rendered with its port.
    pub blue_green: Option<BlueGreen>,
    /// `commands.backup`, when this stage backs the app up before its
    /// first change ([`backup_of`]).
    pub backup: Option<String>,
    /// `commands.logs`: prints its last log lines when it fails (compose
    /// and podman have a default, see `release::logs_script`).
    pub logs: Option<String>,
}

/// The backup command `app` runs before its first change in `stage`:
/// its `commands.backup`, when the stage says `backup: before_deploy`, or
/// says nothing and the app is `rollback: freeze` (a frozen app has no
/// release to go back to); never with `backup: never`.
pub fn backup_of(stage: &crate::config::Stage, app: &crate::config::App) -> Option<String> {
    use crate::config::SnapshotPolicy;
    let wanted = match stage.backup {
        Some(SnapshotPolicy::BeforeDeploy) => true,
        Some(SnapshotPolicy::Never) => false,
        None => app.rollback == RollbackPolicy::Freeze,
    };
    app.commands.backup.clone().filter(|_| wanted)
}

/// A blue_green app on one host.
#[derive(Debug)]
pub struct BlueGreen {
    pub drain: Duration,
    /// [blue, green].
    pub slots: [SlotJob; 2],
}

/// One slot of a blue_green app (or the only render of any other).
#[derive(Debug)]
pub struct SlotJob {
    /// Its host port (0 for an app without slots).
    pub port: u16,
    pub files: Vec<ReleaseFile>,
    pub checks: Vec<CheckSpec>,
    pub routes: Vec<Route>,
    /// Its routes' `health` paths, probed on the slot's port before the switch.
    pub health: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum CheckSpec {
    Http {
        url: String,
        /// Through the host's proxy: its address and port (`route: true`).
        via: Option<(String, u16)>,
        expect_status: u16,
        expect_body: Option<String>,
        timeout: Duration,
        policy: Policy,
    },
    Command {
        command: String,
        policy: Policy,
    },
}

/// Builds a stage's plan from the renders of one commit: `real` (files for
/// hosts) and `masked` (to tell which files hold secrets: those that differ).
pub fn build_stage_plan(
    fleet: &crate::config::Fleet,
    stage: &crate::config::Stage,
    real: &BTreeMap<String, crate::render::DesiredClient>,
    masked: &BTreeMap<String, crate::render::DesiredClient>,
    clients: &[String],
    rev: &str,
) -> StagePlan {
    let mut targets = Vec::new();
    for name in clients {
        let (Some(client), Some(real_c), Some(masked_c)) =
            (fleet.clients.get(name), real.get(name), masked.get(name))
        else {
            continue;
        };
        for host in &real_c.hosts {
            let mut apps = Vec::new();
            let mut secret_values = Vec::new();
            for app_name in &client.apps {
                let (Some(app), Some(r), Some(m)) = (
                    fleet.apps.get(app_name),
                    real_c.apps.get(app_name),
                    masked_c.apps.get(app_name),
                ) else {
                    continue;
                };
                secret_values.extend(r.exposed.iter().map(|s| s.expose().to_string()));
                let via = fleet
                    .pipeline
                    .proxy
                    .as_ref()
                    .map(|p| (host.address.clone(), p.http_port, p.https_port));
                let variant =
                    |real: &crate::render::Slot, masked: &crate::render::Slot, port: u16| SlotJob {
                        port,
                        files: release_files(real, masked, &host.name),
                        checks: checks_of(app, real, &host.name, via.as_ref()),
                        routes: proxy_routes(&app.name, real, &host.name),
                        health: real
                            .routes
                            .get(&host.name)
                            .into_iter()
                            .flatten()
                            .filter_map(|r| r.health.clone())
                            .collect(),
                    };
                let (real_blue, masked_blue) = (r.blue(), m.blue());
                let sole = variant(&real_blue, &masked_blue, 0);
                let blue_green = match (&app.strategy, &r.green, &m.green) {
                    (Strategy::BlueGreen { drain, .. }, Some(rg), Some(mg)) => {
                        let ports = rg.ports.get(&host.name).copied().unwrap_or_default();
                        Some(BlueGreen {
                            drain: *drain,
                            slots: [
                                SlotJob {
                                    port: ports[0],
                                    ..variant(&real_blue, &masked_blue, ports[0])
                                },
                                variant(rg, mg, ports[1]),
                            ],
                        })
                    }
                    _ => None,
                };
                let start = start_of(fleet, client, app, host);
                let mut checks = sole.checks;
                // A quadlet app's gate wants its units active, besides its checks.
                if let Start::Quadlet(units) = &start {
                    checks.push(CheckSpec::Command {
                        command: units.is_active_command(),
                        policy: COMMAND_CHECK,
                    });
                }
                apps.push(AppJob {
                    name: app.name.clone(),
                    dir: AppDir {
                        deploy_root: host.deploy_root.clone(),
                        client: client.name.clone(),
                        app: app.name.clone(),
                    },
                    files: sole.files,
                    stop: app.commands.stop.clone(),
                    start,
                    checks,
                    rollback: app.rollback,
                    routes: sole.routes,
                    blue_green,
                    backup: backup_of(stage, app),
                    logs: app.commands.logs.clone(),
                });
            }
            let proxy = fleet.pipeline.proxy.as_ref().map(|settings| ProxyJob {
                settings: settings.clone(),
                dir: ProxyDir {
                    deploy_root: host.deploy_root.clone(),
                    client: client.name.clone(),
                },
            });
            targets.push(Target {
                client: client.name.clone(),
                host: host.clone(),
                apps,
                removals: Vec::new(),
                masker: Masker::new(secret_values),
                snapshot: None,
                proxy,
            });
        }
    }
    StagePlan {
        stage: stage.name.clone(),
        rev: rev.to_string(),
        parallelism: stage.parallelism as usize,
        max_failures: stage.max_failures as usize,
        rollback: fleet.pipeline.on_failure.rollback,
        targets,
        keep_removed: fleet.pipeline.keep_removed_releases,
    }
}

/// One slot's files for `host`: those that render differently with the
/// masks hold secrets.
fn release_files(
    real: &crate::render::Slot,
    masked: &crate::render::Slot,
    host: &str,
) -> Vec<ReleaseFile> {
    let empty = BTreeMap::new();
    let masked_files = masked.files.get(host).unwrap_or(&empty);
    real.files
        .get(host)
        .into_iter()
        .flatten()
        .map(|(path, content)| {
            let secret = masked_files.get(path) != Some(content);
            ReleaseFile::new(path.clone(), content.clone().into_bytes(), secret)
        })
        .collect()
}

/// The routes of one slot for `host`, as the proxy config takes them.
fn proxy_routes(app: &str, real: &crate::render::Slot, host: &str) -> Vec<Route> {
    real.routes
        .get(host)
        .into_iter()
        .flatten()
        .map(|r| Route {
            app: app.to_string(),
            hosts: r.hosts.clone(),
            path: r.path.clone(),
            upstream_port: r.port,
            directives: r.directives.clone(),
        })
        .collect()
}

/// One slot's health checks for `host`; `via`: the host's address and the
/// proxy's HTTP and HTTPS ports, for `route: true` checks.
fn checks_of(
    app: &crate::config::App,
    real: &crate::render::Slot,
    host: &str,
    via: Option<&(String, u16, u16)>,
) -> Vec<CheckSpec> {
    use crate::config::HealthCheck;
    use crate::render::RenderedCheck;
    let rendered = real.health.get(host).cloned().unwrap_or_default();
    app.health
        .iter()
        .zip(rendered)
        .map(|(spec, rendered)| match (spec, rendered) {
            (HealthCheck::Http(h), RenderedCheck::Http { url }) => CheckSpec::Http {
                via: via.filter(|_| h.route).map(|(address, http, https)| {
                    let port = if url.to_ascii_lowercase().starts_with("https://") {
                        *https
                    } else {
                        *http
                    };
                    (address.clone(), port)
                }),
                url,
                expect_status: h.expect_status,
                expect_body: h.expect_body.clone(),
                timeout: h.timeout,
                policy: Policy {
                    interval: h.interval,
                    successes: h.successes,
                    failures: h.failures,
                    deadline: h.deadline,
                    soak: Duration::ZERO,
                },
            },
            (_, RenderedCheck::Command { command }) | (_, RenderedCheck::Http { url: command }) => {
                CheckSpec::Command {
                    command,
                    policy: COMMAND_CHECK,
                }
            }
        })
        .collect()
}

/// Command checks have no thresholds of their own in app.yaml.
const COMMAND_CHECK: Policy = Policy {
    interval: Duration::from_secs(1),
    successes: 1,
    failures: 3,
    deadline: Duration::from_secs(60),
    soak: Duration::ZERO,
};
