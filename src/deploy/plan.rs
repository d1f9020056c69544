//! The stage plan: every host, file, command and check of one stage, built
//! in full from the renders of one commit before anything runs, so a stage
//! can be printed and tested as data and [`super::run_stage`] only carries
//! it out.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{Host, RollbackPolicy};
use crate::gates::health::Policy;
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
}

/// One app to take off a host, described by the commit that deployed it.
#[derive(Debug, Clone)]
pub struct Removal {
    pub app: String,
    pub dir: AppDir,
    pub start: Start,
    pub stop: Option<String>,
}

/// How `app` of `client` is started (and so stopped) under `fleet`'s
/// runtimes.
pub fn start_of(
    fleet: &crate::config::Fleet,
    client: &crate::config::Client,
    app: &crate::config::App,
) -> Start {
    use crate::config::Runtime;
    match app.runtime {
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
}

#[derive(Debug, Clone)]
pub enum CheckSpec {
    Http {
        url: String,
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
    use crate::config::HealthCheck;
    use crate::render::RenderedCheck;
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
                let empty = BTreeMap::new();
                let masked_files = m.files.get(&host.name).unwrap_or(&empty);
                let files = r
                    .files
                    .get(&host.name)
                    .into_iter()
                    .flatten()
                    .map(|(path, content)| {
                        let secret = masked_files.get(path) != Some(content);
                        ReleaseFile::new(path.clone(), content.clone().into_bytes(), secret)
                    })
                    .collect();
                let start = start_of(fleet, client, app);
                let rendered = r.health.get(&host.name).cloned().unwrap_or_default();
                let checks = app
                    .health
                    .iter()
                    .zip(rendered)
                    .map(|(spec, rendered)| match (spec, rendered) {
                        (HealthCheck::Http(h), RenderedCheck::Http { url }) => CheckSpec::Http {
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
                        (_, RenderedCheck::Command { command })
                        | (_, RenderedCheck::Http { url: command }) => CheckSpec::Command {
                            command,
                            policy: COMMAND_CHECK,
                        },
                    })
                    .collect();
                apps.push(AppJob {
                    name: app.name.clone(),
                    dir: AppDir {
                        deploy_root: host.deploy_root.clone(),
                        client: client.name.clone(),
                        app: app.name.clone(),
                    },
                    files,
                    stop: app.commands.stop.clone(),
                    start,
                    checks,
                    rollback: app.rollback,
                });
            }
            targets.push(Target {
                client: client.name.clone(),
                host: host.clone(),
                apps,
                removals: Vec::new(),
                masker: Masker::new(secret_values),
                snapshot: None,
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

/// Command checks have no thresholds of their own in app.yaml.
const COMMAND_CHECK: Policy = Policy {
    interval: Duration::from_secs(1),
    successes: 1,
    failures: 3,
    deadline: Duration::from_secs(60),
    soak: Duration::ZERO,
};
