//! `fleetgate status [--format json] [--drift]`: what each host runs, and with
//! `--drift` whether its files still match what the repo renders for that rev.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use serde::Serialize;

use super::Context;
use crate::config::{self, Selection};
use crate::desired::{self, DecryptCache};
use crate::error::{Error, ExitCode, Result};
use crate::inventory::{self, Inventory};
use crate::printer;
use crate::remote::release::{self, AppDir};
use crate::render::SecretView;
use crate::repo::{CommitId, Repo};
use crate::report::OutcomeFormat;
use crate::rollout;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The commit whose inventory (clients, hosts, known_hosts) to use.
    #[arg(long, value_name = "REV", default_value = "HEAD")]
    pub rev: String,
    /// Only these clients (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub clients: Vec<String>,
    /// Compare each host's live files with what the repo renders for its live rev.
    #[arg(long)]
    pub drift: bool,
    /// With --drift, in CI: keep one forge issue for drift (opened, edited
    /// while it stays, closed when every host matches); the exit code is
    /// still the verdict.
    #[arg(long, requires = "drift", conflicts_with = "clients")]
    pub issues: bool,
    /// The remote that holds the deployed records (--issues: the commit
    /// each client's converge command redeploys).
    #[arg(long, default_value = "origin", value_name = "NAME")]
    pub remote: String,
    #[command(flatten)]
    pub forge: super::ForgeOpt,
    /// Output format on stdout (json: `{apps, orphans}`).
    #[arg(long, value_enum, default_value_t = OutcomeFormat::Text)]
    pub format: OutcomeFormat,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    pub client: String,
    pub app: String,
    pub host: String,
    /// `None`: never deployed (or the host could not be reached: see `error`).
    pub rev: Option<String>,
    pub release: Option<String>,
    pub deployed_at: Option<String>,
    pub previous: Option<String>,
    /// A blue_green app: the slot it runs in (`blue` or `green`) and its port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<release::SlotState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Vec<Drift>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub path: String,
    /// `modified`, `missing` or `extra`.
    pub change: &'static str,
}

pub fn run(ctx: &Context, args: &StatusArgs) -> Result<ExitCode> {
    // Outside CI --issues is an error before any work, never a no-op.
    let forge = match args.issues {
        true => {
            let env = crate::forge::Env::from_env(args.forge.forge, "status --issues")?;
            Some((crate::forge::connect(&env)?, env.run_url.clone()))
        }
        false => None,
    };
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let rev = repo.resolve(&args.rev)?;
    let snap = repo.snapshot(rev)?;
    let files = config::load(&snap, Selection::All)?;
    let (fleet, problems) = config::validate(&files);
    if !problems.is_empty() {
        return Err(Error::Invalid {
            at: snap.label(),
            problems,
        });
    }
    let known_hosts = rollout::known_hosts(&snap)?;
    let inventory = inventory::for_command()?;
    let mut targets = Vec::new();
    for client in fleet.clients.values() {
        if !args.clients.is_empty() && !args.clients.contains(&client.name) {
            continue;
        }
        let hosts = inventory::hosts(&inventory, client)?;
        targets.extend(hosts.into_iter().map(|h| (&**client, h)));
    }
    let inspected = rollout::inspect_hosts(&known_hosts, &fleet.pipeline.ssh_options, &targets)?;
    let mut rows = Vec::new();
    let mut live_sums = BTreeMap::new();
    for ((client, host), result) in targets.iter().zip(inspected) {
        for app in &client.apps {
            let dir = AppDir {
                deploy_root: host.deploy_root.clone(),
                client: client.name.clone(),
                app: app.clone(),
            };
            let mut row = AppStatus {
                client: client.name.clone(),
                app: app.clone(),
                host: host.name.clone(),
                rev: None,
                release: None,
                deployed_at: None,
                previous: None,
                slot: None,
                drift: None,
                error: None,
            };
            match &result {
                Ok(map) => {
                    let found = map.get(app).cloned().unwrap_or_default();
                    // The commit it runs, and the release holding its files
                    // (uploaded at an earlier commit when it was kept).
                    if let Some(state) = &found.state {
                        row.rev = Some(state.runs().to_string());
                        row.release = Some(dir.release(&state.rev));
                        row.deployed_at = Some(state.deployed_at.clone());
                        row.previous = state.previous_run().map(str::to_string);
                        row.slot = state.slot;
                    }
                    live_sums.insert(
                        (client.name.clone(), host.name.clone(), app.clone()),
                        found.sums,
                    );
                }
                Err(e) => row.error = Some(e.clone()),
            }
            rows.push(row);
        }
    }
    let mut orphans = None;
    let mut unlisted = false;
    if args.drift {
        compute_drift(ctx, &repo, &mut rows, &live_sums)?;
        let (found, failed) = find_orphans(&fleet, &inventory, &targets, &known_hosts)?;
        (orphans, unlisted) = (Some(found), failed);
    }
    printer::data(&render(&rows, orphans.as_deref(), args.format, args.drift));
    // An unreachable host may hide anything: that answer wins.
    let unreachable = unlisted || rows.iter().any(|r| r.error.is_some());
    let drifted = rows
        .iter()
        .any(|r| r.drift.as_ref().is_some_and(|d| !d.is_empty()))
        || orphans.as_ref().is_some_and(|o| !o.is_empty());
    if drifted && args.issues {
        // The scheduled check's webhooks (`notify:`): what drifted, where.
        let clients: BTreeSet<String> = rows
            .iter()
            .filter(|r| r.drift.as_ref().is_some_and(|d| !d.is_empty()))
            .map(|r| r.client.clone())
            .collect();
        let apps = rows
            .iter()
            .filter(|r| r.drift.as_ref().is_some_and(|d| !d.is_empty()))
            .count();
        let orphaned = orphans.as_ref().map_or(0, Vec::len);
        crate::notify::send(
            &fleet.pipeline.notify,
            &crate::core::events::Event::check_failed(
                "drift",
                &format!(
                    "{apps} app(s) on their hosts differ from what the repo renders; {orphaned} orphan(s)"
                ),
                &clients.into_iter().collect::<Vec<_>>(),
            ),
        );
    }
    if let Some((forge, run_url)) = forge {
        let mut desired = BTreeMap::new();
        if drifted {
            let git = crate::store::GitRepo::maybe_remote(&repo, &args.remote);
            crate::ports::GitStore::fetch_records(&git)?;
            let clock = crate::rt::SystemClock;
            let records = crate::core::records::Records::new(&git, &clock);
            let mut converge = Vec::new();
            let drifted_clients: BTreeSet<&str> = rows
                .iter()
                .filter(|r| r.drift.as_ref().is_some_and(|d| !d.is_empty()))
                .map(|r| r.client.as_str())
                .collect();
            for name in drifted_clients {
                let Some((_, stage)) = fleet
                    .clients
                    .get(name)
                    .and_then(|c| fleet.stage_of_group(&c.group))
                else {
                    continue;
                };
                let recorded = records.deployed(&stage.name, name)?;
                converge.push(Converge {
                    stage: stage.name.clone(),
                    client: name.to_string(),
                    rev: recorded.map(|r| r.to_string()),
                });
            }
            desired.insert(
                "drift".to_string(),
                drift_issue(&rows, orphans.as_deref().unwrap_or_default(), &converge),
            );
        }
        if unreachable && !drifted {
            printer::people(
                "a host could not be reached or listed: the drift issue is left as it is",
            );
        } else {
            let gone = format!(
                "The scheduled `fleetgate status --drift` finds every host as the repo renders it, and no orphans{}.",
                run_url.map(|u| format!(" ({u})")).unwrap_or_default()
            );
            for line in crate::forge::issues::keep(&*forge, "drift", &desired, &gone)? {
                printer::people(&format!("{} issue {line}", forge.name()));
            }
        }
    }
    Ok(if unreachable {
        ExitCode::Infra
    } else if drifted {
        ExitCode::Blocked
    } else {
        ExitCode::Ok
    })
}

/// How to put one drifted client back: redeploy what its stage recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converge {
    pub stage: String,
    pub client: String,
    /// The commit of `refs/fleetgate/deployed/<stage>/<client>`.
    pub rev: Option<String>,
}

/// The drift issue: per host and app what differs, the orphans, the
/// hosts that could not be asked, and per client the command that
/// converges it.
pub fn drift_issue(
    rows: &[AppStatus],
    orphans: &[OrphanRow],
    converge: &[Converge],
) -> crate::forge::issues::Open {
    let mut body = String::from(
        "The scheduled `fleetgate status --drift` finds hosts that differ from what the repo renders for the commit they run.\n",
    );
    let drifted: Vec<&AppStatus> = rows
        .iter()
        .filter(|r| r.drift.as_ref().is_some_and(|d| !d.is_empty()))
        .collect();
    let hosts: BTreeSet<&str> = drifted
        .iter()
        .map(|r| r.host.as_str())
        .chain(orphans.iter().map(|o| o.host.as_str()))
        .collect();
    if !drifted.is_empty() {
        body.push_str("\n| host | client | app | runs | differs |\n|---|---|---|---|---|\n");
        for r in &drifted {
            let what: Vec<String> = r
                .drift
                .iter()
                .flatten()
                .map(|d| format!("{} {}", d.change, code(&d.path)))
                .collect();
            body.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.host,
                r.client,
                r.app,
                r.rev.as_deref().map_or("-", crate::report::short),
                what.join(", ")
            ));
        }
    }
    if !orphans.is_empty() {
        body.push_str("\n**Orphans** (kept on a host, not in the repo):\n\n");
        for o in orphans {
            body.push_str(&format!(
                "- {}: {}{}\n",
                o.host,
                code(&format!(
                    "{}{}",
                    o.orphan.client,
                    o.orphan
                        .app
                        .as_deref()
                        .map(|a| format!("/{a}"))
                        .unwrap_or_default()
                )),
                o.orphan
                    .current_rev
                    .as_deref()
                    .map(|r| format!(" (ran {})", crate::report::short(r)))
                    .unwrap_or_default()
            ));
        }
    }
    let errors: Vec<&AppStatus> = rows.iter().filter(|r| r.error.is_some()).collect();
    if !errors.is_empty() {
        body.push_str("\n**Not compared** (may hide more):\n\n");
        for r in errors {
            body.push_str(&format!(
                "- {} {}/{}: {}\n",
                r.host,
                r.client,
                r.app,
                code(r.error.as_deref().unwrap_or_default())
            ));
        }
    }
    if !converge.is_empty() {
        body.push_str("\n**To converge** (redeploys the recorded commit; a drift repair restarts the app):\n\n```sh\n");
        for c in converge {
            match &c.rev {
                Some(rev) => body.push_str(&format!(
                    "fleetgate deploy --stage {} --rev {rev} --clients {}\n",
                    c.stage, c.client
                )),
                None => body.push_str(&format!(
                    "# {}/{}: no deployed record; deploy the commit it should run\n",
                    c.stage, c.client
                )),
            }
        }
        body.push_str("```\n");
    }
    body.push_str("\nThis issue is kept by fleetgate: edited while the drift stays, closed when every host matches.\n");
    crate::forge::issues::Open {
        title: format!("fleetgate: drift on {} host(s)", hosts.len()),
        body,
    }
}

/// Text a host gave (file and dir names, errors) as inline code in the
/// issue: its backticks and line breaks cannot end the span, and `|`
/// cannot end a table cell.
fn code(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| match c {
            '`' => '\'',
            '|' => '¦',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    format!("`{clean}`")
}

/// An app or client dir a host keeps that the repo does not put there.
#[derive(Debug, Clone, Serialize)]
pub struct OrphanRow {
    pub host: String,
    #[serde(flatten)]
    pub orphan: release::Orphan,
}

/// Lists the deploy root of every host in `targets` and compares it with
/// what the whole fleet (not only `--clients`) puts there: hosts that share
/// a deploy root (two clients on one machine) are listed once. Also says
/// whether a host could not be listed.
fn find_orphans(
    fleet: &config::Fleet,
    inventory: &dyn Inventory,
    targets: &[(&config::Client, config::Host)],
    known_hosts: &[u8],
) -> Result<(Vec<OrphanRow>, bool)> {
    type Place = (String, u16, String);
    let place = |h: &config::Host| (h.address.clone(), h.port, h.deploy_root.clone());
    let wanted: std::collections::BTreeSet<Place> = targets.iter().map(|(_, h)| place(h)).collect();
    let mut expected: BTreeMap<Place, (config::Host, BTreeMap<String, BTreeSet<String>>)> =
        BTreeMap::new();
    for client in fleet.clients.values() {
        // Every client's hosts, to know what a shared deploy root holds;
        // one that cannot be resolved cannot be compared with.
        for host in inventory.resolve(client)? {
            if !wanted.contains(&place(&host)) {
                continue;
            }
            let (_, apps) = expected
                .entry(place(&host))
                .or_insert_with(|| (host.clone(), BTreeMap::new()));
            apps.entry(client.name.clone())
                .or_default()
                .extend(client.apps.iter().cloned());
        }
    }
    let hosts: Vec<config::Host> = expected.values().map(|(h, _)| h.clone()).collect();
    let listed = rollout::list_deploy_roots(known_hosts, &fleet.pipeline.ssh_options, &hosts)?;
    let (mut rows, mut failed) = (Vec::new(), false);
    for ((host, apps), listing) in expected.values().zip(listed) {
        match listing {
            Ok(listing) => rows.extend(listing.orphans(apps).into_iter().map(|orphan| OrphanRow {
                host: host.name.clone(),
                orphan,
            })),
            Err(e) => {
                tracing::warn!("{}: {e}", host.name);
                failed = true;
            }
        }
    }
    Ok((rows, failed))
}

type LiveSums = BTreeMap<(String, String, String), BTreeMap<String, String>>;

/// Renders each live rev once and compares its files with the hosts' hashes.
fn compute_drift(
    ctx: &Context,
    repo: &Repo,
    rows: &mut [AppStatus],
    live: &LiveSums,
) -> Result<()> {
    let mut by_rev: BTreeMap<String, Option<desired::Desired>> = BTreeMap::new();
    let cache = DecryptCache::default();
    for rev in rows.iter().filter_map(|r| r.rev.clone()) {
        if by_rev.contains_key(&rev) {
            continue;
        }
        let rendered = match repo.resolve(&rev) {
            Ok(id) => Some(render_rev(ctx, repo, id, &cache)?),
            Err(_) => None,
        };
        by_rev.insert(rev, rendered);
    }
    for row in rows.iter_mut() {
        let Some(rev) = &row.rev else { continue };
        let Some(Some(d)) = by_rev.get(rev) else {
            row.error = Some(format!(
                "rev {rev} is not in this repository: cannot compare"
            ));
            continue;
        };
        let desired: BTreeMap<String, String> = d
            .clients
            .get(&row.client)
            .and_then(|c| c.apps.get(&row.app))
            .and_then(|a| match (&a.green, row.slot) {
                // A blue_green app's files are its live slot's.
                (Some(green), Some(s)) if s.name == release::Slot::Green => {
                    green.files.get(&row.host)
                }
                _ => a.files.get(&row.host),
            })
            .map(|files| {
                files
                    .iter()
                    .map(|(p, content)| {
                        (
                            p.clone(),
                            release::ReleaseFile::new(
                                p.clone(),
                                content.clone().into_bytes(),
                                false,
                            )
                            .sha256,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let empty = BTreeMap::new();
        let host = live
            .get(&(row.client.clone(), row.host.clone(), row.app.clone()))
            .unwrap_or(&empty);
        let mut drift = Vec::new();
        for (path, sha) in &desired {
            match host.get(path) {
                None => drift.push(Drift {
                    path: path.clone(),
                    change: "missing",
                }),
                Some(h) if h != sha => drift.push(Drift {
                    path: path.clone(),
                    change: "modified",
                }),
                _ => {}
            }
        }
        for path in host.keys().filter(|p| !desired.contains_key(*p)) {
            drift.push(Drift {
                path: path.clone(),
                change: "extra",
            });
        }
        row.drift = Some(drift);
    }
    Ok(())
}

fn render_rev(
    ctx: &Context,
    repo: &Repo,
    id: CommitId,
    cache: &DecryptCache,
) -> Result<desired::Desired> {
    let snap = repo.snapshot(id)?;
    let files = config::load(&snap, Selection::All)?;
    desired::compute(
        &files,
        &ctx.keyring,
        cache,
        SecretView::Real,
        &id.to_string(),
    )
    .map_err(|problems| Error::Invalid {
        at: snap.label(),
        problems,
    })
}

fn render(
    rows: &[AppStatus],
    orphans: Option<&[OrphanRow]>,
    format: OutcomeFormat,
    drift: bool,
) -> String {
    if format == OutcomeFormat::Json {
        #[derive(Serialize)]
        struct Status<'a> {
            apps: &'a [AppStatus],
            #[serde(skip_serializing_if = "Option::is_none")]
            orphans: Option<&'a [OrphanRow]>,
        }
        let mut s = serde_json::to_string_pretty(&Status {
            apps: rows,
            orphans,
        })
        .expect("rows serialise");
        s.push('\n');
        return s;
    }
    let short = |s: &Option<String>| {
        s.as_deref()
            .map_or("-".to_string(), |r| crate::report::short(r).to_string())
    };
    let mut out = String::new();
    let mut table = vec![vec![
        "client".to_string(),
        "app".into(),
        "host".into(),
        "rev".into(),
        "deployed_at".into(),
        "previous".into(),
        if drift { "drift".into() } else { String::new() },
    ]];
    for r in rows {
        let drift_cell = match (&r.error, &r.drift) {
            (Some(e), _) => format!("error: {e}"),
            (None, Some(d)) if d.is_empty() => "none".into(),
            (None, Some(d)) => d
                .iter()
                .map(|x| format!("{} {}", x.change, x.path))
                .collect::<Vec<_>>()
                .join(", "),
            (None, None) => String::new(),
        };
        table.push(vec![
            r.client.clone(),
            r.app.clone(),
            r.host.clone(),
            short(&r.rev),
            r.deployed_at.clone().unwrap_or_else(|| "-".into()),
            short(&r.previous),
            drift_cell,
        ]);
    }
    for o in orphans.unwrap_or_default() {
        table.push(vec![
            o.orphan.client.clone(),
            o.orphan.app.clone().unwrap_or_else(|| "-".into()),
            o.host.clone(),
            short(&o.orphan.current_rev),
            "-".into(),
            "-".into(),
            "orphan: not in the repo".into(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            table
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in table {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host: &str, drift: Option<Vec<Drift>>, error: Option<&str>) -> AppStatus {
        AppStatus {
            client: "alpha".into(),
            app: "web".into(),
            host: host.into(),
            rev: Some("2840cb168ae2d80890c93d83a662acdbd8352eec".into()),
            release: None,
            deployed_at: None,
            previous: None,
            slot: None,
            drift,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn the_drift_issue_lists_what_differs_and_how_to_converge() {
        let rows = [
            row(
                "alpha-1",
                Some(vec![Drift {
                    path: "a`b|c\nd".into(),
                    change: "modified",
                }]),
                None,
            ),
            row("alpha-2", Some(vec![]), None),
            row("alpha-3", None, Some("unreachable")),
        ];
        let orphans = [OrphanRow {
            host: "alpha-2".into(),
            orphan: release::Orphan {
                client: "ghost".into(),
                app: None,
                current_rev: None,
            },
        }];
        let converge = [
            Converge {
                stage: "canary".into(),
                client: "alpha".into(),
                rev: Some("2840cb168ae2d80890c93d83a662acdbd8352eec".into()),
            },
            Converge {
                stage: "canary".into(),
                client: "beta".into(),
                rev: None,
            },
        ];
        let issue = drift_issue(&rows, &orphans, &converge);
        assert_eq!(issue.title, "fleetgate: drift on 2 host(s)");
        let body = &issue.body;
        // A host's file name cannot end the code span, the cell or the row.
        assert!(
            body.contains("| alpha-1 | alpha | web | 2840cb168ae2 | modified `a'b¦c d` |"),
            "{body}"
        );
        assert!(!body.contains("| alpha-2 | alpha | web |"), "{body}");
        assert!(body.contains("- alpha-2: `ghost`\n"), "{body}");
        assert!(
            body.contains("- alpha-3 alpha/web: `unreachable`"),
            "{body}"
        );
        assert!(
            body.contains(
                "fleetgate deploy --stage canary --rev 2840cb168ae2d80890c93d83a662acdbd8352eec --clients alpha\n"
            ),
            "{body}"
        );
        assert!(body.contains("# canary/beta: no deployed record"), "{body}");
    }
}
