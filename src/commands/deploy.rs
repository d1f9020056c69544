//! `fleetgate deploy --stage NAME --rev REV [--clients a,b]`: one stage to real
//! servers, proven healthy, or put back as it was.

use clap::Args;

use super::Context;
use crate::config::{self, Selection, Webhook};
use crate::core::events::Event;
use crate::core::records::Records;
use crate::core::verdict;
use crate::error::{ExitCode, Result};
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
}

pub fn run(ctx: &Context, args: &DeployArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let rev = repo.resolve(&args.rev)?;
    // SIGTERM/SIGINT as in `run`: no new host starts, the ones in flight
    // finish or roll back, the stage is recorded, exit 3.
    crate::interrupt::install();
    let git = GitRepo::maybe_remote(&repo, &args.remote);
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
    )?;
    for moved in records.record_stage(rev, &outcome, &[])?.0 {
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
