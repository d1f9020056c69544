//! `fleetgate rollback --client NAME [--to REV]`: put a client back on an
//! earlier commit by hand — the one its apps record running before, or REV.

use clap::Args;

use super::Context;
use crate::error::{Error, ExitCode, Message, Result};
use crate::inventory;
use crate::printer;
use crate::repo::Repo;
use crate::report;
use crate::rollout;

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The client to put back (all its hosts, in its stage).
    #[arg(long, value_name = "NAME")]
    pub client: String,
    /// The commit to go back to (default: the one the client's apps record running before).
    #[arg(long, value_name = "REV")]
    pub to: Option<String>,
    /// Output format of the final report on stdout.
    #[arg(long, value_enum, default_value_t = report::OutcomeFormat::Text)]
    pub format: report::OutcomeFormat,
}

pub fn run(ctx: &Context, args: &RollbackArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let head = repo.resolve("HEAD")?;
    let snap = repo.snapshot(head)?;
    let fleet = super::one_client(&snap, &args.client)?;
    let client = &fleet.clients[&args.client];
    let stage = fleet
        .stage_of_group(&client.group)
        .map(|(_, s)| s.name.clone())
        .ok_or_else(|| Error::Usage(format!("client `{}` is in no stage", client.name).into()))?;
    let inventory = inventory::for_command()?;
    let to = match &args.to {
        Some(rev) => repo.resolve(rev)?,
        None => {
            let hosts = inventory::hosts(&inventory, client)?;
            let known = rollout::known_hosts(&snap)?;
            let targets: Vec<_> = hosts.iter().map(|h| (&**client, h.clone())).collect();
            let inspected = rollout::inspect_hosts(&known, &fleet.pipeline.ssh_options, &targets)?;
            let mut previous = std::collections::BTreeSet::new();
            for ((_, host), result) in targets.iter().zip(inspected) {
                // Unreachable is the network's problem (3), not bad input.
                let map = result.map_err(|e| {
                    Error::Host(
                        Message::from(format!("{}: {e}", host.name))
                            .hint("once the host is back, run again; or pass --to REV"),
                    )
                })?;
                for app in &client.apps {
                    let prev = map
                        .get(app)
                        .and_then(|i| i.state.as_ref())
                        .and_then(|s| s.previous_run().map(str::to_string));
                    previous
                        .insert(prev.unwrap_or_else(|| format!("(none: {app} on {})", host.name)));
                }
            }
            match previous.into_iter().collect::<Vec<_>>().as_slice() {
                [one] if !one.starts_with('(') => repo.resolve(one)?,
                many => {
                    return Err(Error::Usage(
                        Message::from(format!(
                            "the hosts of `{}` do not agree on one previous release: {}",
                            client.name,
                            many.join(", ")
                        ))
                        .hint("pass --to REV"),
                    ));
                }
            }
        }
    };
    tracing::info!("rolling {} back to {}", client.name, to.short());
    let outcome = rollout::deploy_stage(
        &ctx.keyring,
        &repo,
        &inventory,
        to,
        &stage,
        std::slice::from_ref(&client.name),
        &Default::default(),
        crate::core::shard::Shard::ALL,
    )?;
    printer::data(&report::outcome_with(
        &outcome,
        args.format,
        printer::paint(),
    ));
    Ok(crate::core::verdict::verdict(&outcome).exit_code())
}
