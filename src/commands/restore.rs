//! `fleetgate restore --client X --host Y [--snapshot ID] --approved-by
//! USER`: rebuild a Hetzner server from a snapshot fleetgate took before a
//! deploy (default: the newest of that server), wait for it, then run the
//! health checks of the client's apps on it again.
//!
//! `fleetgate restore --client X --app A [--host H] [--backup ID]
//! --approved-by USER`: put back the backup an app's `commands.backup`
//! made before a change — its `commands.restore`, run on each host of the
//! client (or H) in the live release with `FLEETGATE_BACKUP_ID` set
//! (default: the newest backup the run records hold for that app on that
//! host) — then its health checks again.
//!
//! Approval, the simplest faithful rule: a restore replaces a whole
//! server, or an app's data, so it is gated like production —
//! `--approved-by USER` must be one of the approvers of the client's stage,
//! or, when that stage needs none, of the last stage that needs one
//! (production). A pipeline with no approvers needs none. Without
//! `--approved-by` where one is needed: exit 4 (waiting for an approval);
//! someone who is not an approver: exit 1.

use std::time::Duration;

use clap::Args;

use super::Context;
use crate::config::Hosts;
use crate::core::record::RunRecord;
use crate::core::records::Records;
use crate::deploy::snapshot;
use crate::error::{Error, ExitCode, Message, Result};
use crate::inventory::{self, Inventory};
use crate::origin::Origin;
use crate::printer;
use crate::remote::release;
use crate::repo::{CommitId, Repo};
use crate::report;
use crate::rollout;
use crate::rt::SystemClock;
use crate::store::GitRepo;

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The client whose server is restored (its hosts come from Hetzner Cloud).
    #[arg(long, value_name = "NAME")]
    pub client: String,
    /// The server to rebuild (its name, as `fleetgate hosts` lists it); with --app, the only host to restore on.
    #[arg(long, value_name = "SERVER", required_unless_present = "app")]
    pub host: Option<String>,
    /// The snapshot (image id) to rebuild from (default: the newest fleetgate took of that server).
    #[arg(long, value_name = "ID", conflicts_with = "app")]
    pub snapshot: Option<u64>,
    /// Restore this app's data instead: run its `commands.restore` with a backup `commands.backup` made.
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
    /// The backup id to put back (default: the newest the run records hold for the app on each host).
    #[arg(long, value_name = "ID", requires = "app")]
    pub backup: Option<String>,
    /// The remote that holds the run records (--app without --backup reads them).
    #[arg(long, env = "FLEETGATE_REMOTE", default_value = "origin")]
    pub remote: String,
    /// Who approved the restore: one of the approvers of the client's stage (or of production).
    #[arg(long, value_name = "USER")]
    pub approved_by: Option<String>,
    /// Output format of the health re-check's report on stdout.
    #[arg(long, value_enum, default_value_t = report::OutcomeFormat::Text)]
    pub format: report::OutcomeFormat,
}

/// How long a rebuild may take.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub fn run(ctx: &Context, args: &RestoreArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let head = repo.resolve("HEAD")?;
    let snap = repo.snapshot(head)?;
    let fleet = super::one_client(&snap, &args.client)?;
    let client = &fleet.clients[&args.client];
    let (_, stage) = fleet
        .stage_of_group(&client.group)
        .ok_or_else(|| Error::Usage(format!("client `{}` is in no stage", client.name).into()))?;
    let stage = stage.clone();
    let approvers = stage
        .approval
        .as_ref()
        .or_else(|| {
            fleet
                .pipeline
                .stages
                .iter()
                .rev()
                .find_map(|s| s.approval.as_ref())
        })
        .map(|a| a.approvers.clone());
    let what = match (&args.app, &args.host) {
        (Some(app), _) => format!("restoring `{app}`'s data replaces it"),
        (None, Some(host)) => format!("restoring `{host}` replaces the whole server"),
        (None, None) => unreachable!("clap: --host unless --app"),
    };
    if let Some(approvers) = &approvers {
        match &args.approved_by {
            None => {
                printer::people(&format!(
                    "{what}: it needs --approved-by one of {}\n",
                    approvers.join(", ")
                ));
                return Ok(ExitCode::Waiting);
            }
            Some(by) if !approvers.contains(by) => {
                printer::people(&format!(
                    "`{by}` is not an approver (approvers: {}): restore refused\n",
                    approvers.join(", ")
                ));
                return Ok(ExitCode::Blocked);
            }
            Some(by) => tracing::info!("restore approved by {by}"),
        }
    }
    if let Some(app) = &args.app {
        return restore_app(ctx, args, &repo, head, &fleet, &stage.name, app);
    }
    let host = args.host.as_deref().unwrap_or_default();
    if !matches!(client.hosts, Hosts::Hcloud { .. }) {
        return Err(Error::Usage(
            Message::from(format!(
                "client `{}` has static hosts: only Hetzner Cloud servers have snapshots to restore",
                client.name
            ))
            .hint("restore a static host with your provider's tools"),
        ));
    }
    let inventory = inventory::for_command()?;
    let hosts = inventory::hosts(&inventory, client)?;
    if !hosts.iter().any(|h| h.name == host) {
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(Error::Usage(
            Message::from(format!(
                "`{}` is not one of `{}`'s servers",
                host, client.name
            ))
            .hint(format!("its servers are: {}", names.join(", "))),
        ));
    }
    let server = inventory
        .server_id(host)
        .expect("a server the inventory resolved");
    let cloud = inventory.cloud().expect("Hetzner hosts were resolved");
    let images = cloud.snapshots(server, &snapshot::selector(&client.name))?;
    let image = match args.snapshot {
        Some(id) => images.iter().find(|i| i.id == id).ok_or_else(|| {
            Error::Usage(
                Message::from(format!(
                    "snapshot {id} is not one fleetgate took of `{}` for `{}`",
                    host, client.name
                ))
                .hint(format!(
                    "fleetgate's snapshots of it: {}",
                    if images.is_empty() {
                        "none".to_string()
                    } else {
                        images
                            .iter()
                            .map(|i| i.id.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )),
            )
        })?,
        None => images
            .last()
            .ok_or_else(|| Error::Usage(format!("fleetgate has no snapshot of `{host}`").into()))?,
    };
    printer::people(&format!(
        "rebuilding `{}` from snapshot {} (taken {})\n",
        host, image.id, image.created
    ));
    let action = cloud.rebuild(server, image.id)?;
    cloud.wait(
        action,
        &format!("the rebuild of `{host}` from snapshot {}", image.id),
        Duration::from_secs(1),
        REBUILD_TIMEOUT,
    )?;
    // The checks of the commit the snapshot was taken before, if this
    // clone has it; else HEAD's.
    let rev = image
        .labels
        .get(snapshot::LABEL_REV)
        .and_then(|r| repo.resolve(r).ok())
        .unwrap_or(head);
    let outcome = rollout::check_host(
        &ctx.keyring,
        &repo,
        &inventory,
        rev,
        &stage.name,
        &client.name,
        host,
        None,
    )?;
    printer::data(&report::outcome_with(
        &outcome,
        args.format,
        printer::paint(),
    ));
    Ok(crate::core::verdict::verdict(&outcome).exit_code())
}

/// `restore --app`: the app's `commands.restore` on each host of the
/// client (or `--host`), with `--backup` or the newest backup the run
/// records hold for it there; then the health checks of the commit that
/// backup was recorded on (if this clone has it), else HEAD's.
fn restore_app(
    ctx: &Context,
    args: &RestoreArgs,
    repo: &Repo,
    head: CommitId,
    fleet: &crate::config::Fleet,
    stage: &str,
    app: &str,
) -> Result<ExitCode> {
    let client = &fleet.clients[&args.client];
    if !client.apps.iter().any(|a| a == app) {
        return Err(Error::Usage(
            Message::from(format!("client `{}` has no app `{app}`", client.name))
                .hint(format!("its apps are: {}", client.apps.join(", "))),
        ));
    }
    let Some(command) = fleet.apps.get(app).and_then(|a| a.commands.restore.clone()) else {
        return Err(Error::Usage(
            Message::from(format!("app `{app}` has no `commands.restore`"))
                .hint("add commands: { restore: \"...\" } to its app.yaml: run in the live release with FLEETGATE_BACKUP_ID set"),
        ));
    };
    if let Some(id) = &args.backup
        && !release::is_backup_id(id)
    {
        return Err(Error::Usage(
            Message::from(format!("`{id}` is not a backup id")).hint(
                "1 to 128 letters, digits, `.`, `_`, `:`, `-`, as the backup command printed it",
            ),
        ));
    }
    let inventory = inventory::for_command()?;
    let mut hosts: Vec<String> = inventory::hosts(&inventory, client)?
        .into_iter()
        .map(|h| h.name)
        .collect();
    if let Some(host) = &args.host {
        if !hosts.contains(host) {
            return Err(Error::Usage(
                Message::from(format!("`{host}` is not one of `{}`'s hosts", client.name))
                    .hint(format!("its hosts are: {}", hosts.join(", "))),
            ));
        }
        hosts.retain(|h| h == host);
    }
    if args.backup.is_some() && hosts.len() > 1 {
        return Err(Error::Usage(
            Message::from(format!(
                "a backup id is one host's backup, and `{}` has {} hosts",
                client.name,
                hosts.len()
            ))
            .hint("add --host, or leave --backup out for each host's newest"),
        ));
    }
    // Per host: the backup id, and the commit whose record holds it.
    let mut chosen: Vec<(String, String, Option<CommitId>)> = Vec::new();
    let history = if args.backup.is_some() && hosts.len() == 1 {
        None
    } else {
        Some(records(repo, &args.remote)?)
    };
    for host in &hosts {
        let found = history.as_ref().and_then(|h| {
            h.iter()
                .find_map(|(commit, r)| Some((r.backup_of(&client.name, host, app)?, *commit)))
        });
        match (&args.backup, found) {
            (Some(id), _) => chosen.push((host.clone(), id.clone(), None)),
            (None, Some((id, commit))) => chosen.push((host.clone(), id.to_string(), Some(commit))),
            (None, None) => {
                return Err(Error::Usage(
                    Message::from(format!(
                        "the run records hold no backup of `{app}` on `{host}`"
                    ))
                    .hint("name one with --backup ID (and --host)"),
                ));
            }
        }
    }
    let mut hosts_out = Vec::new();
    let mut outcome = None;
    for (host, id, commit) in chosen {
        printer::people(&format!("restoring `{app}` on `{host}` from backup {id}\n"));
        let rev = commit
            .and_then(|c| repo.resolve(&c.to_string()).ok())
            .unwrap_or(head);
        let job = crate::deploy::RestoreJob {
            app: app.to_string(),
            command: command.clone(),
            ids: [(host.clone(), id)].into(),
        };
        let o = rollout::check_host(
            &ctx.keyring,
            repo,
            &inventory,
            rev,
            stage,
            &client.name,
            &host,
            Some(&job),
        )?;
        hosts_out.extend(o.hosts.iter().cloned());
        outcome.get_or_insert(o);
    }
    let mut outcome = outcome.expect("a client has a host");
    outcome.failed_hosts = hosts_out.iter().filter(|h| h.failure.is_some()).count();
    outcome.passed = outcome.failed_hosts == 0;
    outcome.hosts = hosts_out;
    printer::data(&report::outcome_with(
        &outcome,
        args.format,
        printer::paint(),
    ));
    Ok(crate::core::verdict::verdict(&outcome).exit_code())
}

/// Every run record on `remote` (or this clone's, without one), newest
/// commit first; a note that is not a record stops the restore (exit 3)
/// rather than hide a newer backup.
fn records(repo: &Repo, remote: &str) -> Result<Vec<(CommitId, RunRecord)>> {
    let git = GitRepo {
        repo,
        origin: Origin::optional(repo, remote),
    };
    Records::new(&git, &SystemClock)
        .history()?
        .into_iter()
        .map(|(noted, record)| Ok((noted.commit, record?)))
        .collect()
}
