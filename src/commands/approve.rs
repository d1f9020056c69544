//! `fleetgate approve --rev REV [--by USER]`: records an approval for the
//! plan `run` computed for REV (the plan hash in REV's record). Only a
//! stage's approvers count; an approval is for that exact plan.

use clap::Args;
use serde_json::Value;

use super::Context;
use crate::config::{self, Selection};
use crate::error::{Error, ExitCode, Result};
use crate::origin::Origin;
use crate::pipeline::{self, Approval};
use crate::record::Records;
use crate::repo::Repo;

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The head commit of the run waiting for approval.
    #[arg(long, value_name = "REV")]
    pub rev: String,
    /// Who approves (a forge user name; default: GITHUB_ACTOR).
    #[arg(long, value_name = "USER", env = "GITHUB_ACTOR")]
    pub by: Option<String>,
    /// The plan hash the approver reviewed; refused if the plan changed since.
    #[arg(long, value_name = "HASH")]
    pub plan: Option<String>,
    /// The remote that holds the records.
    #[arg(long, env = "FLEETGATE_REMOTE", default_value = "origin")]
    pub remote: String,
}

pub fn run(ctx: &Context, args: &ApproveArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let origin = Origin::new(&repo, &args.remote)?;
    let rev = repo.resolve(&args.rev)?;
    let by =
        args.by.clone().filter(|b| !b.is_empty()).ok_or_else(|| {
            Error::Usage("who approves? pass --by USER (or set GITHUB_ACTOR)".into())
        })?;
    let snap = repo.snapshot(rev)?;
    let (fleet, _) = config::validate(&config::load(&snap, Selection::Only(Default::default()))?);
    let stages = super::run::approval_stages(&fleet);
    if stages.is_empty() {
        return Err(Error::Usage(format!(
            "no stage of {} at {} needs an approval",
            config::PIPELINE,
            rev.short()
        )));
    }
    let mine: Vec<&str> = stages
        .iter()
        .filter(|(_, approvers)| approvers.contains(&by))
        .map(|(s, _)| *s)
        .collect();
    if mine.is_empty() {
        let who: Vec<String> = stages
            .iter()
            .map(|(s, a)| format!("{s}: {}", a.join(", ")))
            .collect();
        return Err(Error::Usage(format!(
            "`{by}` is not an approver, so this approval would not count\n  hint: the approvers are set in {} (`approval.approvers`): {}",
            config::PIPELINE,
            who.join("; ")
        )));
    }
    let records = Records::new(&repo, Some(&origin));
    let note = records.read(rev)?;
    let Some(plan_hash) = note
        .as_ref()
        .and_then(|n| n.get("plan_hash"))
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Err(Error::Usage(format!(
            "no run has planned {} yet, so there is no plan to approve\n  hint: `fleetgate run --base BASE --head {}` plans it and waits for this approval",
            rev.short(),
            rev
        )));
    };
    if let Some(seen) = &args.plan
        && !plan_hash.starts_with(seen.as_str())
    {
        return Err(Error::Usage(format!(
            "the plan of {} changed: you reviewed {seen}, it is now {}\n  hint: review the new plan, then approve it",
            rev.short(),
            &plan_hash[..12]
        )));
    }
    let approval = Approval {
        by: by.clone(),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        plan_hash: plan_hash.clone(),
        source: "cli".into(),
    };
    records.update(rev, &[], |n| pipeline::add_approval(n, &approval))?;
    tracing::info!(
        "{by} approved plan {} of {} for stage(s) {}",
        &plan_hash[..12],
        rev.short(),
        mine.join(", ")
    );
    println!(
        "{}",
        serde_json::to_string(&approval).expect("an approval serialises")
    );
    Ok(ExitCode::Ok)
}
