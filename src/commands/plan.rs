//! `fleetgate plan --base A --head B`: what would change, for whom, and how.

use clap::Args;

use super::Context;
use crate::config;
use crate::desired::{self, DecryptCache};
use crate::error::{Error, ExitCode, Result};
use crate::plan::{self, Affected, Plan, Side};
use crate::repo::{CommitId, Repo};
use crate::report::{self, Format};
use crate::secrets::Keyring;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The commit the fleet runs now (e.g. the deployed commit, or the merge base).
    #[arg(long, value_name = "REV")]
    pub base: String,
    /// The commit to plan for.
    #[arg(long, value_name = "REV")]
    pub head: String,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(ctx: &Context, args: &PlanArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let base = repo.resolve(&args.base)?;
    let head = repo.resolve(&args.head)?;
    let plan = build(&repo, base, head, &ctx.keyring)?;
    let out = match args.format {
        Format::Text => report::text(&plan),
        Format::Markdown => report::markdown(&plan),
        Format::Json => report::json(&plan),
    };
    print!("{out}");
    Ok(ExitCode::Ok)
}

/// Renders both commits (only the clients the change can touch) and compares.
pub fn build(repo: &Repo, base: CommitId, head: CommitId, keyring: &Keyring) -> Result<Plan> {
    let changed = repo.changed_paths(base, head)?;
    let affected = Affected::from_paths(&changed);
    tracing::info!(
        "planning {}..{}: {} paths changed, {}",
        base.short(),
        head.short(),
        changed.len(),
        if affected.all {
            "an app or shared secrets changed: rendering every client".to_string()
        } else {
            format!("rendering {} client(s)", affected.clients.len())
        }
    );
    if !keyring.can_decrypt() {
        tracing::warn!(
            "no age identity configured: secret values are not compared, only key names"
        );
    }
    let cache = DecryptCache::default();
    let (snap_b, snap_h) = (repo.snapshot(base)?, repo.snapshot(head)?);
    let files_b = config::load(&snap_b, affected.selection())?;
    let files_h = config::load(&snap_h, affected.selection())?;
    let invalid = |label: String, problems| Error::Invalid {
        at: label,
        problems,
    };
    // Head first: its problems are the ones the author of the change can fix.
    let (prepared_h, problems) = desired::prepare(&files_h, keyring, &cache);
    if !problems.is_empty() {
        return Err(invalid(snap_h.label(), desired::collapse_repeats(problems)));
    }
    let (prepared_b, problems) = desired::prepare(&files_b, keyring, &cache);
    if !problems.is_empty() {
        return Err(invalid(snap_b.label(), desired::collapse_repeats(problems)));
    }
    let plan = plan::compare(
        &Side {
            rev: base.to_string(),
            label: snap_b.label(),
            prepared: &prepared_b,
        },
        &Side {
            rev: head.to_string(),
            label: snap_h.label(),
            prepared: &prepared_h,
        },
        &changed,
        keyring.can_decrypt(),
        &head.to_string(),
    )?;
    tracing::info!(
        "plan {}: {} client(s) change, {} unaffected",
        &plan.plan_hash[..12],
        plan.clients.len(),
        plan.unaffected
    );
    Ok(plan)
}
