//! `fleetgate deploy --stage NAME --rev REV [--clients a,b]`: one stage to real
//! servers, proven healthy, or put back as it was.

use clap::Args;

use super::Context;
use crate::config::{self, Selection, Webhook};
use crate::core::events::Event;
use crate::core::records::Records;
use crate::core::shard::{Reported, Shard, ShardVerdict};
use crate::core::verdict;
use crate::error::{Error, ExitCode, Message, Result};
use crate::ports::GitStore;
use crate::printer;
use crate::repo::{CommitId, Repo};
use crate::report;
use crate::rollout;
use crate::rt::SystemClock;
use crate::store::GitRepo;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The stage of pipelines/pipeline.yaml to deploy.
    #[arg(long)]
    pub stage: String,
    /// The commit to deploy.
    #[arg(long, value_name = "REV")]
    pub rev: String,
    /// Only these clients of the stage (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub clients: Vec<String>,
    /// Output format of the final report on stdout.
    #[arg(long, value_enum, default_value_t = report::OutcomeFormat::Text)]
    pub format: report::OutcomeFormat,
    /// The remote the records are pushed to, when the repository has it.
    #[arg(long, env = "FLEETGATE_REMOTE", default_value = "origin")]
    pub remote: String,
    /// Deploy only the I-th of N stable slices of the stage's hosts; the
    /// shard that reports last moves the passed clients' refs.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
}

pub fn run(ctx: &Context, args: &DeployArgs) -> Result<ExitCode> {
    let shard = args.shard.unwrap_or(Shard::ALL);
    let run_id = super::shared_run_id(shard)?;
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let rev = repo.resolve(&args.rev)?;
    // SIGTERM/SIGINT as in `run`: no new host starts, the ones in flight
    // finish or roll back, the stage is recorded, exit 3.
    crate::interrupt::install();
    let git = GitRepo::maybe_remote(&repo, &args.remote);
    if shard.count > 1 && git.remote_name().is_none() {
        return Err(Error::Usage(
            Message::from(format!(
                "--shard {shard} needs the remote the shards share their records on, and this repository has no remote `{}`",
                args.remote
            ))
            .hint("clone the fleet from the remote the other shards push to (--remote NAME)"),
        ));
    }
    let records = Records::new(&git, &SystemClock);
    // A record that could not be written afterwards (corrupt) stops the
    // deploy before any host is touched, not after.
    records.read(rev)?;
    // Removals are `run`'s: it knows each client's last deployed commit.
    let inventory = crate::inventory::for_command()?;
    let outcome = rollout::deploy_stage(
        &ctx.keyring,
        &repo,
        &inventory,
        rev,
        &args.stage,
        &args.clients,
        &Default::default(),
        shard,
    )?;
    let moved = match shard.count {
        1 => records.record_stage(rev, &outcome, &[])?.0,
        _ => {
            let verdict = verdict::verdict(&outcome);
            match records
                .report_shard(rev, shard, &run_id, &outcome, verdict)?
                .0
            {
                Reported::Decided(ShardVerdict::Passed) => {
                    records.move_passed(rev, &args.stage, &[])?.0
                }
                Reported::Decided(v) | Reported::AlreadyDecided(v) => {
                    tracing::info!(
                        "stage {}: every shard reported: {}",
                        args.stage,
                        v.describe()
                    );
                    Vec::new()
                }
                Reported::Waiting { missing } => {
                    tracing::info!(
                        "stage {}: shard {shard} reported; the refs move when shard(s) {missing:?} have",
                        args.stage
                    );
                    Vec::new()
                }
            }
        }
    };
    for moved in moved {
        tracing::info!("{moved} → {}", rev.short());
    }
    // The webhooks of `notify:` at this commit; never the deploy's outcome.
    if let Some(event) = Event::of_stage(&outcome) {
        match webhooks(&repo, rev) {
            Ok(hooks) => crate::notify::send(&hooks, &event),
            Err(e) => tracing::warn!("notify: {}: nothing sent", e.headline()),
        }
    }
    printer::data(&report::outcome_with(
        &outcome,
        args.format,
        printer::paint(),
    ));
    Ok(verdict::verdict(&outcome).exit_code())
}

/// `notify:` of the pipeline at `rev` (validated already by the deploy).
fn webhooks(repo: &Repo, rev: CommitId) -> Result<Vec<Webhook>> {
    let snap = repo.snapshot(rev)?;
    let files = config::load(&snap, Selection::Only(Default::default()))?;
    Ok(config::validate(&files).0.pipeline.notify)
}
