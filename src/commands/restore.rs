//! `fleetgate restore --client X --host Y [--snapshot ID] --approved-by
//! USER`: rebuild a Hetzner server from a snapshot fleetgate took before a
//! deploy (default: the newest of that server), wait for it, then run the
//! health checks of the client's apps on it again.
//!
//! Approval, the simplest faithful rule: a restore replaces a whole
//! server, so it is gated like production — `--approved-by USER` must be
//! one of the approvers of the client's stage, or, when that stage needs
//! none, of the last stage that needs one (production). A pipeline with
//! no approvers needs none. Without `--approved-by` where one is needed:
//! exit 4 (waiting for an approval); someone who is not an approver: exit 1.

use std::time::Duration;

use clap::Args;

use super::Context;
use crate::config::Hosts;
use crate::deploy::snapshot;
use crate::error::{Error, ExitCode, Message, Result};
use crate::inventory::{self, Inventory};
use crate::printer;
use crate::repo::Repo;
use crate::report;
use crate::rollout;

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The client whose server is restored (its hosts come from Hetzner Cloud).
    #[arg(long, value_name = "NAME")]
    pub client: String,
    /// The server to rebuild (its name, as `fleetgate hosts` lists it).
    #[arg(long, value_name = "SERVER")]
    pub host: String,
    /// The snapshot (image id) to rebuild from (default: the newest fleetgate took of that server).
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<u64>,
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
    if let Some(approvers) = &approvers {
        match &args.approved_by {
            None => {
                printer::people(&format!(
                    "restoring `{}` replaces the whole server: it needs --approved-by one of {}\n",
                    args.host,
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
    if !hosts.iter().any(|h| h.name == args.host) {
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(Error::Usage(
            Message::from(format!(
                "`{}` is not one of `{}`'s servers",
                args.host, client.name
            ))
            .hint(format!("its servers are: {}", names.join(", "))),
        ));
    }
    let server = inventory
        .server_id(&args.host)
        .expect("a server the inventory resolved");
    let cloud = inventory.cloud().expect("Hetzner hosts were resolved");
    let images = cloud.snapshots(server, &snapshot::selector(&client.name))?;
    let image = match args.snapshot {
        Some(id) => images.iter().find(|i| i.id == id).ok_or_else(|| {
            Error::Usage(
                Message::from(format!(
                    "snapshot {id} is not one fleetgate took of `{}` for `{}`",
                    args.host, client.name
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
        None => images.last().ok_or_else(|| {
            Error::Usage(format!("fleetgate has no snapshot of `{}`", args.host).into())
        })?,
    };
    printer::people(&format!(
        "rebuilding `{}` from snapshot {} (taken {})\n",
        args.host, image.id, image.created
    ));
    let action = cloud.rebuild(server, image.id)?;
    cloud.wait(
        action,
        &format!("the rebuild of `{}` from snapshot {}", args.host, image.id),
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
    let outcome = rollout::recheck_host(
        &ctx.keyring,
        &repo,
        &inventory,
        rev,
        &stage.name,
        &client.name,
        &args.host,
    )?;
    printer::data(&report::outcome_with(
        &outcome,
        args.format,
        printer::paint(),
    ));
    Ok(crate::core::verdict::verdict(&outcome).exit_code())
}
