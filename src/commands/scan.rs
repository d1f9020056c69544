//! `fleetgate scan --rev REV [--clients a,b]`: the image gate on its own —
//! every image the clients would run, pinned (validation) and scanned by
//! trivy against the policy. `run` calls the same gate before its first stage.
//!
//! `scan --deployed [--stage S] [--verify] [--issues]`: the same gate on
//! what runs — the images of the commit each client's deployed record
//! names (or, with `--verify`, the commit each app's `state.json` says it
//! runs on each host), against HEAD's policy and trivyignore, and with
//! `--issues` one forge issue per blocked image repository kept current.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;

use super::{Context, ForgeOpt};
use crate::config::{self, Fleet, Selection};
use crate::core::records::Records;
use crate::core::rev::CommitId;
use crate::error::{Error, ExitCode, Message, Result};
use crate::forge::{self, issues};
use crate::inventory;
use crate::printer;
use crate::repo::Repo;
use crate::report::{self, Format};
use crate::rollout;
use crate::scan::{self, ScanReport, Target, pin::ImageRef};
use crate::store::GitRepo;

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// The commit whose images are scanned.
    #[arg(
        long,
        value_name = "REV",
        required_unless_present = "deployed",
        conflicts_with = "deployed"
    )]
    pub rev: Option<String>,
    /// Only the images of these clients (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub clients: Vec<String>,
    /// Scan what runs: per stage and client, the images of the commit its
    /// deployed record names (fetched from the remote), against HEAD's
    /// policy and trivyignore; trivy's DB is updated when due.
    #[arg(long)]
    pub deployed: bool,
    /// With --deployed: only this stage's clients.
    #[arg(long, value_name = "STAGE", requires = "deployed")]
    pub stage: Option<String>,
    /// With --deployed: ask each host which commit each app runs (its
    /// state.json) and scan that, saying where hosts and records disagree.
    #[arg(long, requires = "deployed")]
    pub verify: bool,
    /// With --deployed, in CI: keep one forge issue per blocked image
    /// repository (opened, edited while it stays, closed when it is gone);
    /// the exit code is still the verdict.
    #[arg(long, requires = "deployed", conflicts_with_all = ["stage", "clients"])]
    pub issues: bool,
    /// The remote that holds the deployed records (--deployed).
    #[arg(long, default_value = "origin", value_name = "NAME")]
    pub remote: String,
    #[command(flatten)]
    pub forge: ForgeOpt,
    /// Output format on stdout (markdown: for the merge-request comment).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub opts: super::ScanOpts,
}

pub fn run(ctx: &Context, args: &ScanArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    if args.deployed {
        return deployed(&repo, args);
    }
    let rev = repo.resolve(args.rev.as_deref().unwrap_or("HEAD"))?;
    let snap = repo.snapshot(rev)?;
    let selection = if args.clients.is_empty() {
        Selection::All
    } else {
        Selection::Only(args.clients.iter().cloned().collect())
    };
    let files = config::load(&snap, selection)?;
    for c in &args.clients {
        if !files.all_clients.contains(c) {
            return Err(Error::Usage(
                format!("client `{c}` does not exist at {}", snap.label()).into(),
            ));
        }
    }
    let (fleet, problems) = config::validate(&files);
    if !problems.is_empty() {
        return Err(Error::Invalid {
            at: snap.label(),
            problems,
        });
    }
    let clients: Vec<String> = fleet.clients.keys().cloned().collect();
    let report = scan::gate_fleet(&fleet, &clients, &args.opts.settings())?;
    printer::data(&report::scan(&report, args.format));
    Ok(verdict(&report))
}

fn verdict(report: &ScanReport) -> ExitCode {
    if report.passed {
        ExitCode::Ok
    } else {
        ExitCode::Blocked
    }
}

/// The fleet at `rev`, validated, with `clients` only.
fn fleet_at(repo: &Repo, rev: CommitId, clients: &BTreeSet<String>) -> Result<Fleet> {
    let snap = repo.snapshot(rev)?;
    let files = config::load(&snap, Selection::Only(clients.clone()))?;
    let (fleet, problems) = config::validate(&files);
    if !problems.is_empty() {
        return Err(Error::Invalid {
            at: snap.label(),
            problems,
        });
    }
    Ok(fleet)
}

/// One app running somewhere: `place` is the stage (from the records) or
/// the host (asked with --verify).
struct Running {
    place: String,
    client: String,
    app: String,
    rev: CommitId,
}

fn deployed(repo: &Repo, args: &ScanArgs) -> Result<ExitCode> {
    // Outside CI --issues is an error before any work, never a no-op.
    let forge = match args.issues {
        true => {
            let env = forge::Env::from_env(args.forge.forge, "scan --issues")?;
            Some((forge::connect(&env)?, env.run_url.clone()))
        }
        false => None,
    };
    let head = repo.resolve("HEAD")?;
    let snap = repo.snapshot(head)?;
    let files = config::load(&snap, Selection::All)?;
    let (now, problems) = config::validate(&files);
    if !problems.is_empty() {
        return Err(Error::Invalid {
            at: snap.label(),
            problems,
        });
    }
    let stages: Vec<String> = match &args.stage {
        Some(s) if now.pipeline.stages.iter().any(|st| &st.name == s) => vec![s.clone()],
        Some(s) => {
            return Err(Error::Usage(
                format!("stage `{s}` does not exist at {}", snap.label()).into(),
            ));
        }
        None => now.pipeline.stages.iter().map(|s| s.name.clone()).collect(),
    };
    let git = GitRepo::maybe_remote(repo, &args.remote);
    crate::ports::GitStore::fetch_records(&git)?;
    let clock = crate::rt::SystemClock;
    let records = Records::new(&git, &clock);
    let mut recorded = Vec::new();
    for stage in &stages {
        for (client, rev) in records.deployed_clients(stage)? {
            if args.clients.is_empty() || args.clients.contains(&client) {
                recorded.push((stage.clone(), client, rev));
            }
        }
    }
    if recorded.is_empty() {
        printer::people(&format!(
            "no deployed records (refs/fleetgate/deployed/…) for {}: nothing runs that fleetgate deployed",
            stages.join(", ")
        ));
    }
    tracing::info!(
        "scan --deployed: {} client(s) with a deployed record",
        recorded.len()
    );
    let running = if args.verify {
        ask_hosts(repo, &recorded)?
    } else {
        let mut running = Vec::new();
        for (stage, client, rev) in &recorded {
            let fleet = fleet_at(repo, *rev, &[client.clone()].into())?;
            for app in fleet
                .clients
                .get(client)
                .map(|c| &c.apps)
                .into_iter()
                .flatten()
            {
                running.push(Running {
                    place: stage.clone(),
                    client: client.clone(),
                    app: app.clone(),
                    rev: *rev,
                });
            }
        }
        running
    };
    let targets = targets_of(repo, &running)?;
    let mut settings = args.opts.settings();
    if settings.trivy.skip_db_update {
        printer::people(
            "scan --deployed ignores --skip-db-update: it scans with trivy's DB as fresh as trivy keeps it",
        );
        settings.trivy.skip_db_update = false;
    }
    let report = scan::gate_targets(&targets, &now.pipeline.scan, &now.ignores, &settings)?;
    printer::data(&report::scan(&report, args.format));
    if !report.passed && args.issues {
        // The scheduled check's webhooks (`notify:`).
        let blocked: Vec<&str> = report
            .images
            .iter()
            .filter(|i| !i.verdict.blocking.is_empty())
            .map(|i| i.verdict.image.as_str())
            .collect();
        let clients: BTreeSet<String> = running.iter().map(|r| r.client.clone()).collect();
        crate::notify::send(
            &now.pipeline.notify,
            &crate::core::events::Event::check_failed(
                "scan",
                &format!(
                    "{} blocking finding(s) in what runs: {}",
                    report.blocking(),
                    blocked.join(", ")
                ),
                &clients.into_iter().collect::<Vec<_>>(),
            ),
        );
    }
    if let Some((forge, run_url)) = forge {
        let gone = format!(
            "The scheduled `fleetgate scan --deployed` finds nothing blocking in this image any more{}.",
            run_url.map(|u| format!(" ({u})")).unwrap_or_default()
        );
        for line in issues::keep(&*forge, "scan", &scan_issues(&report), &gone)? {
            printer::people(&format!("{} issue {line}", forge.name()));
        }
    }
    Ok(verdict(&report))
}

/// Asks every host of every recorded client which commit each app runs.
fn ask_hosts(repo: &Repo, recorded: &[(String, String, CommitId)]) -> Result<Vec<Running>> {
    let inventory = inventory::for_command()?;
    let mut running = Vec::new();
    let mut unreachable = Vec::new();
    for (stage, client_name, rev) in recorded {
        let fleet = fleet_at(repo, *rev, &[client_name.clone()].into())?;
        let Some(client) = fleet.clients.get(client_name) else {
            continue;
        };
        let known = rollout::known_hosts(&repo.snapshot(*rev)?)?;
        let hosts = inventory::hosts(&inventory, client)?;
        let targets: Vec<_> = hosts.into_iter().map(|h| (&**client, h)).collect();
        let inspected = rollout::inspect_hosts(&known, &fleet.pipeline.ssh_options, &targets)?;
        for ((_, host), result) in targets.iter().zip(inspected) {
            let map = match result {
                Ok(map) => map,
                Err(e) => {
                    unreachable.push(format!("{}: {e}", host.name));
                    continue;
                }
            };
            for app in &client.apps {
                let runs = map
                    .get(app)
                    .and_then(|i| i.state.as_ref())
                    .map(|s| s.runs().to_string());
                let Some(runs) = runs else {
                    printer::people(&format!(
                        "{}: {client_name}/{app} runs nothing, the record of {stage}/{client_name} says {}",
                        host.name,
                        rev.short()
                    ));
                    continue;
                };
                let id = repo.resolve(&runs).map_err(|_| {
                    Error::Host(
                        Message::from(format!(
                            "{}: {client_name}/{app} runs {runs}, which is not in this repository",
                            host.name
                        ))
                        .hint("fetch the branch it was deployed from (fetch-depth: 0)"),
                    )
                })?;
                if id != *rev {
                    printer::people(&format!(
                        "{}: {client_name}/{app} runs {}, the record of {stage}/{client_name} says {}",
                        host.name,
                        id.short(),
                        rev.short()
                    ));
                }
                running.push(Running {
                    place: host.name.clone(),
                    client: client_name.clone(),
                    app: app.clone(),
                    rev: id,
                });
            }
        }
    }
    if !unreachable.is_empty() {
        return Err(Error::Host(
            Message::from(format!(
                "could not ask every host what it runs:\n{}",
                unreachable.join("\n")
            ))
            .hint("an unscanned host may run anything: run again once it is back, or leave out --verify"),
        ));
    }
    Ok(running)
}

/// The distinct images (by digest) of what runs, each with where it runs
/// (`place: client/app @rev`).
fn targets_of(repo: &Repo, running: &[Running]) -> Result<Vec<Target>> {
    let mut by_rev: BTreeMap<CommitId, BTreeSet<String>> = BTreeMap::new();
    for r in running {
        by_rev.entry(r.rev).or_default().insert(r.client.clone());
    }
    let mut fleets = BTreeMap::new();
    for (rev, clients) in by_rev {
        fleets.insert(rev, fleet_at(repo, rev, &clients)?);
    }
    let mut by_digest: BTreeMap<String, Target> = BTreeMap::new();
    for r in running {
        let Some(app) = fleets[&r.rev].apps.get(&r.app) else {
            continue;
        };
        for image in app.images.values() {
            by_digest
                .entry(image.digest.clone())
                .or_insert_with(|| Target {
                    image: image.clone(),
                    used_by: Vec::new(),
                })
                .used_by
                .push(format!(
                    "{}: {}/{} @{}",
                    r.place,
                    r.client,
                    r.app,
                    r.rev.short()
                ));
        }
    }
    let mut out: Vec<Target> = by_digest.into_values().collect();
    for t in &mut out {
        t.used_by.sort();
        t.used_by.dedup();
    }
    out.sort_by_key(|t| t.image.to_string());
    Ok(out)
}

/// One issue per image repository with a blocked image: key
/// `scan:<repository>`, its findings as the scan report's markdown.
pub fn scan_issues(report: &ScanReport) -> BTreeMap<String, issues::Open> {
    let mut by_repo: BTreeMap<String, Vec<scan::ImageResult>> = BTreeMap::new();
    for image in report.images.iter().filter(|i| !i.verdict.passed()) {
        let repository = ImageRef::parse_pinned(&image.verdict.image)
            .map(|r| r.repository)
            .unwrap_or_else(|_| image.verdict.image.clone());
        by_repo.entry(repository).or_default().push(image.clone());
    }
    by_repo
        .into_iter()
        .map(|(repository, images)| {
            let findings: usize = images.iter().map(|i| i.verdict.blocking.len()).sum();
            let runs: Vec<String> = images
                .iter()
                .flat_map(|i| {
                    let short = scan::pin::ImageRef::parse_pinned(&i.verdict.image)
                        .map(|r| scan::short(&r))
                        .unwrap_or_else(|_| i.verdict.image.clone());
                    i.used_by
                        .iter()
                        .map(move |u| format!("- `{short}` runs on {u}"))
                })
                .collect();
            let one = ScanReport {
                passed: false,
                images,
                ..report.clone()
            };
            let body = format!(
                "The scheduled scan of what the hosts run finds {findings} blocking finding(s) in `{repository}`.\n\n{}\n\n**Where it runs**\n\n{}\n\nFix it by deploying an image with the fixed versions, or accept a finding in `pipelines/trivyignore.yaml` (with `expires` and `reason`). This issue is kept by fleetgate: edited while the finding stays, closed when it is gone.\n",
                report::scan(&one, Format::Markdown).trim_end(),
                runs.join("\n")
            );
            (
                format!("scan:{repository}"),
                issues::Open {
                    title: format!("fleetgate scan: {repository} is blocked by {findings} finding(s)"),
                    body,
                },
            )
        })
        .collect()
}
