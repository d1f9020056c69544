//! `fleetgate approve`: records an approval for the plan `run` computed for
//! a commit (the plan hash in its record). Only a stage's approvers count,
//! and an approval is for that exact plan.
//!
//! Where approvals come from:
//! - `--rev REV --by USER`: a person at a terminal (source `cli`);
//! - `--from-ci`, on an `issue_comment` event: a `/fleetgate approve [HASH]`
//!   comment on the merged pull request (source `comment`); who and when
//!   are the comment's, the commit is the pull request's merge commit;
//! - `--from-ci`, on a `workflow_dispatch` event: the promote workflow's Run
//!   button (source `dispatch`); who is the run's actor, checked against the
//!   approvers and against the event's sender;
//! - `--from-ci --environment NAME` (GitHub): the reviews of the run's
//!   pending environment deployment, read back from the API (source
//!   `environment`).
//!
//! A refusal is a verdict (exit 1), answered on the forge where it came from.

use std::io::Write as _;

use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::Context;
use crate::config::{self, Selection};
use crate::core::approval::{ApprovalStages, Claim, Verdict};
use crate::core::engine;
use crate::core::record::Approval;
use crate::error::{Error, ExitCode, Message, Result};
use crate::forge::{self, Env, Forge};
use crate::printer;
use crate::repo::{CommitId, Repo};
use crate::report::OutcomeFormat;
use crate::rt::SystemClock;
use crate::store::GitRepo;

/// The comment command.
const COMMAND: &str = "/fleetgate approve";

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The head commit of the run waiting for approval (with --from-ci: from
    /// the event when it names one).
    #[arg(long, value_name = "REV", required_unless_present = "from_ci")]
    pub rev: Option<String>,
    /// Who approves (a forge user name; default: GITHUB_ACTOR). Ignored with
    /// --from-ci, where the forge says who.
    #[arg(long, value_name = "USER", env = "GITHUB_ACTOR")]
    pub by: Option<String>,
    /// The plan hash (or a prefix) the approver reviewed; refused if the
    /// plan changed since.
    #[arg(long, value_name = "HASH")]
    pub plan: Option<String>,
    /// Take the approval from the CI event: a `/fleetgate approve` comment,
    /// a workflow_dispatch run, or (with --environment) a GitHub
    /// environment review. Writes `rev=` and `plan=` to GITHUB_OUTPUT.
    #[arg(long)]
    pub from_ci: bool,
    /// GitHub: the environment whose approved deployment review of this
    /// workflow run counts as the approval.
    #[arg(long, value_name = "NAME", requires = "from_ci")]
    pub environment: Option<String>,
    /// The remote that holds the records.
    #[arg(long, env = "FLEETGATE_REMOTE", default_value = "origin")]
    pub remote: String,
    /// Output format on stdout (json: whether the approval counted, for
    /// what, or why not).
    #[arg(long, value_enum, default_value_t = OutcomeFormat::Text)]
    pub format: OutcomeFormat,
    #[command(flatten)]
    pub forge: super::ForgeOpt,
}

/// `approve --format json`: the approval as recorded, or why it was not.
#[derive(Debug, Default, Serialize)]
pub struct ApproveReport {
    /// Recorded, and counting for `stages` (exit 0).
    pub counted: bool,
    /// The head commit approved; null when the event named none.
    pub rev: Option<String>,
    pub by: Option<String>,
    /// RFC 3339, when counted.
    pub at: Option<String>,
    pub plan_hash: Option<String>,
    /// `cli`, `comment`, `dispatch` or `environment`.
    pub source: Option<String>,
    /// The stages it lets through, when counted.
    pub stages: Vec<String>,
    /// Why it does not count (exit 1), or why there was nothing to
    /// approve (exit 0).
    pub why: Option<String>,
    pub hint: Option<String>,
}

pub fn run(ctx: &Context, args: &ApproveArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    if args.from_ci {
        // Outside CI this is an error before anything else.
        let env = Env::from_env(args.forge.forge, "approve --from-ci")?;
        let forge = forge::connect(&env)?;
        let git = GitRepo::with_remote(&repo, &args.remote)?;
        return from_ci(&env, &*forge, args, &repo, &git);
    }
    let git = GitRepo::with_remote(&repo, &args.remote)?;
    let rev = repo.resolve(args.rev.as_deref().expect("clap requires --rev"))?;
    let by =
        args.by.clone().filter(|b| !b.is_empty()).ok_or_else(|| {
            Error::Usage("who approves? pass --by USER (or set GITHUB_ACTOR)".into())
        })?;
    let claim = Claim {
        rev,
        by,
        plan: args.plan.clone(),
        given_at: None,
        source: "cli",
    };
    let stages = approval_stages_at(&repo, rev)?;
    match engine::approve(&git, &SystemClock, &claim, &stages)? {
        Verdict::Counted { approval, stages } => {
            print_approval(args.format, rev, &approval, &stages);
            Ok(ExitCode::Ok)
        }
        Verdict::Refused { why, hint } => {
            tracing::error!("{}", with_hint(&why, hint.as_deref()));
            print_report(
                args.format,
                ApproveReport {
                    rev: Some(rev.to_string()),
                    by: Some(claim.by.clone()),
                    why: Some(why),
                    hint,
                    ..ApproveReport::default()
                },
            );
            Ok(ExitCode::Blocked)
        }
    }
}

/// The stages of the pipeline at `rev` that need an approval, with their
/// approvers.
fn approval_stages_at(repo: &Repo, rev: CommitId) -> Result<ApprovalStages> {
    let snap = repo.snapshot(rev)?;
    let (fleet, _) = config::validate(&config::load(&snap, Selection::Only(Default::default()))?);
    Ok(engine::approval_stages(&fleet))
}

/// A refusal as the log shows it: the reason, then its hint.
fn with_hint(why: &str, hint: Option<&str>) -> String {
    match hint {
        Some(h) => format!("{why}\n  hint: {h}"),
        None => why.to_string(),
    }
}

/// A counted approval on stdout: a line for people, or the report.
fn print_approval(format: OutcomeFormat, rev: CommitId, approval: &Approval, stages: &[String]) {
    match format {
        OutcomeFormat::Text => printer::data(&format!(
            "approved: plan {} of {} by {} ({}), for {}\n",
            crate::report::short(&approval.plan_hash),
            rev.short(),
            approval.by,
            approval.source,
            stages.join(", ")
        )),
        OutcomeFormat::Json => print_report(
            format,
            ApproveReport {
                counted: true,
                rev: Some(rev.to_string()),
                by: Some(approval.by.clone()),
                at: Some(approval.at.clone()),
                plan_hash: Some(approval.plan_hash.clone()),
                source: Some(approval.source.clone()),
                stages: stages.to_vec(),
                ..ApproveReport::default()
            },
        ),
    }
}

/// The report on stdout with `--format json` (the log on stderr has said
/// why, for people).
/// An event that carries no approval (exit 0): why, on stderr and in the report.
fn nothing_to_do(format: OutcomeFormat, why: String) -> ExitCode {
    tracing::info!("{why}");
    print_report(
        format,
        ApproveReport {
            why: Some(why),
            ..ApproveReport::default()
        },
    );
    ExitCode::Ok
}

fn print_report(format: OutcomeFormat, report: ApproveReport) {
    if format == OutcomeFormat::Json {
        printer::data(&format!(
            "{}\n",
            serde_json::to_string(&report).expect("a report serialises")
        ));
    }
}

fn from_ci(
    env: &Env,
    forge: &dyn Forge,
    args: &ApproveArgs,
    repo: &Repo,
    git: &GitRepo,
) -> Result<ExitCode> {
    let event = env.event_name.clone().unwrap_or_default();
    // Where to answer a comment, if the approval came from one.
    let mut reply_to: Option<u64> = None;
    // The approval stages at the claimed commit, once read.
    let mut stages = None;
    let claim = if let Some(environment) = &args.environment {
        let rev = repo.resolve(args.rev.as_deref().ok_or_else(|| {
            Error::Usage("--environment needs --rev: the commit the deployment is for".into())
        })?)?;
        let run_id = env.run_id.ok_or_else(|| {
            Error::Usage(Message::from(
                "--environment needs GITHUB_RUN_ID: the run whose deployment was reviewed",
            ))
        })?;
        let reviews = forge.environment_approvals(run_id)?;
        let at_rev = approval_stages_at(repo, rev)?;
        let approvers = at_rev
            .iter()
            .find(|(s, _)| s == environment)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| {
                Error::Usage(
                    format!(
                        "stage `{environment}` of {} at {} needs no approval",
                        config::PIPELINE,
                        rev.short()
                    )
                    .into(),
                )
            })?;
        stages = Some(at_rev);
        let Some(review) = reviews.iter().find(|r| {
            r.approved
                && r.environments.iter().any(|e| e == environment)
                && approvers.contains(&r.user)
        }) else {
            let seen: Vec<String> = reviews
                .iter()
                .map(|r| {
                    format!(
                        "{} {} {}",
                        r.user,
                        if r.approved { "approved" } else { "rejected" },
                        r.environments.join(",")
                    )
                })
                .collect();
            let why = format!(
                "no approved review of environment `{environment}` by an approver ({}) on run {run_id}; reviews: {}",
                approvers.join(", "),
                if seen.is_empty() {
                    "none".into()
                } else {
                    seen.join("; ")
                }
            );
            tracing::error!("{why}");
            print_report(
                args.format,
                ApproveReport {
                    rev: Some(rev.to_string()),
                    why: Some(why),
                    ..ApproveReport::default()
                },
            );
            return Ok(ExitCode::Blocked);
        };
        Claim {
            rev,
            by: review.user.clone(),
            plan: args.plan.clone(),
            given_at: None,
            source: "environment",
        }
    } else if event == "issue_comment" {
        let e = &env.event;
        // Only a comment as written counts: an edited one would let anyone
        // who can edit it (its author later, an admin) turn an old comment
        // into an approval after the plan was reviewed. The workflow filters
        // `types: [created]`; act and some forges do not, so check it here.
        let action = e["action"].as_str().unwrap_or("created");
        if action != "created" {
            return Ok(nothing_to_do(
                args.format,
                format!("the comment was {action}, not created: only a new comment approves"),
            ));
        }
        let body = e["comment"]["body"].as_str().unwrap_or_default().trim();
        let Some(rest) = body.strip_prefix(COMMAND) else {
            return Ok(nothing_to_do(
                args.format,
                format!("the comment is not `{COMMAND}`: nothing to do"),
            ));
        };
        // `/fleetgate approve 3f9c2a1b7d0e`: the plan reviewed, if named
        // (hex, at least 7 characters); other words are just words.
        let hash = rest
            .split_whitespace()
            .next()
            .filter(|w| w.chars().all(|c| c.is_ascii_hexdigit()))
            .map(str::to_lowercase);
        let number = e["issue"]["number"]
            .as_u64()
            .ok_or_else(|| Error::Usage("the issue_comment event has no issue.number".into()))?;
        let user = e["comment"]["user"]["login"].as_str().unwrap_or_default();
        // GitHub marks a pull request's issue with `issue.pull_request`;
        // Forgejo sets that too, and `is_pull`.
        if e["issue"]["pull_request"].is_null() && e["is_pull"] != json!(true) {
            return refuse(
                forge,
                args.format,
                None,
                Some(number),
                user,
                "approvals are given on the merged pull request of the change, not on an issue",
                None,
            );
        }
        reply_to = Some(number);
        if hash.as_ref().is_some_and(|h| h.len() < 7) {
            return refuse(
                forge,
                args.format,
                None,
                reply_to,
                user,
                "name at least 7 characters of the plan hash, or none",
                None,
            );
        }
        let pull = forge
            .pull(number)?
            .ok_or_else(|| Error::Forge(format!("pull request #{number} is gone").into()))?;
        let Some(sha) = pull.merge_commit_sha.filter(|_| pull.merged) else {
            return refuse(
                forge,
                args.format,
                None,
                reply_to,
                user,
                &format!(
                    "#{number} is not merged yet: an approval is for a plan the pipeline has made, after the merge"
                ),
                None,
            );
        };
        let rev = repo.resolve(&sha).map_err(|_| {
            Error::Usage(
                Message::from(format!(
                    "the merge commit {sha} of #{number} is not in this clone"
                ))
                .hint("check out the branch with full history (fetch-depth: 0)"),
            )
        })?;
        Claim {
            rev,
            by: user.to_string(),
            plan: hash,
            given_at: e["comment"]["created_at"].as_str().map(str::to_string),
            source: "comment",
        }
    } else if event == "workflow_dispatch" {
        let e = &env.event;
        let actor = env.actor.clone().unwrap_or_default();
        // The actor is checked, not trusted: the forge's payload must say
        // the same person started the run.
        let sender = e["sender"]["login"].as_str().unwrap_or_default();
        if actor.is_empty() || (!sender.is_empty() && sender != actor) {
            let why = format!(
                "who started this run? GITHUB_ACTOR is `{actor}`, the event's sender `{sender}`: not counted"
            );
            tracing::error!("{why}");
            print_report(
                args.format,
                ApproveReport {
                    by: Some(actor).filter(|a| !a.is_empty()),
                    why: Some(why),
                    ..ApproveReport::default()
                },
            );
            return Ok(ExitCode::Blocked);
        }
        let rev = args
            .rev
            .clone()
            .or_else(|| e["inputs"]["rev"].as_str().map(str::to_string))
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                Error::Usage(Message::from(
                    "the workflow_dispatch has no `rev` input: which commit is approved?",
                ))
            })?;
        Claim {
            rev: repo.resolve(&rev)?,
            by: actor,
            plan: args
                .plan
                .clone()
                .or_else(|| e["inputs"]["plan"].as_str().map(str::to_string))
                .filter(|p| !p.is_empty()),
            given_at: None,
            source: "dispatch",
        }
    } else {
        return Err(Error::Usage(format!(
            "approve --from-ci takes an issue_comment or workflow_dispatch event (or --environment on GitHub), and this is `{event}`"
        ).into()));
    };
    let stages = match stages {
        Some(s) => s,
        None => approval_stages_at(repo, claim.rev)?,
    };
    match engine::approve(git, &SystemClock, &claim, &stages)? {
        Verdict::Counted { approval, stages } => {
            print_approval(args.format, claim.rev, &approval, &stages);
            write_outputs(claim.rev, &approval.plan_hash)?;
            if let Some(number) = reply_to {
                let body = format!(
                    "Approval by @{} counted: plan `{}` of {} for {}. The promote job deploys it now{}.",
                    approval.by,
                    crate::report::short(&approval.plan_hash),
                    claim.rev.short(),
                    stages.join(", "),
                    env.run_url
                        .as_deref()
                        .map(|u| format!(": {u}"))
                        .unwrap_or_default()
                );
                forge.create_comment(number, &body)?;
            }
            Ok(ExitCode::Ok)
        }
        Verdict::Refused { why, hint } => refuse(
            forge,
            args.format,
            Some(claim.rev),
            reply_to,
            &claim.by,
            &why,
            hint.as_deref(),
        ),
    }
}

/// Logs why an approval does not count (and reports it with `--format
/// json`), and answers the comment it came from so the person sees it
/// where they asked.
fn refuse(
    forge: &dyn forge::Forge,
    format: OutcomeFormat,
    rev: Option<CommitId>,
    reply_to: Option<u64>,
    who: &str,
    why: &str,
    hint: Option<&str>,
) -> Result<ExitCode> {
    tracing::error!("{}", with_hint(why, hint));
    print_report(
        format,
        ApproveReport {
            rev: rev.map(|r| r.to_string()),
            by: Some(who.to_string()).filter(|w| !w.is_empty()),
            why: Some(why.to_string()),
            hint: hint.map(str::to_string),
            ..ApproveReport::default()
        },
    );
    if let Some(number) = reply_to {
        let hint = hint.map(|h| format!("\n\n{h}")).unwrap_or_default();
        forge.create_comment(
            number,
            &format!("@{who}: your approval was **not counted**: {why}.{hint}"),
        )?;
    }
    Ok(ExitCode::Blocked)
}

/// Step outputs for the workflow's next step (`steps.<id>.outputs.rev`).
fn write_outputs(rev: CommitId, plan_hash: &str) -> Result<()> {
    let Some(path) = std::env::var_os("GITHUB_OUTPUT").filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let io = |source| Error::Io {
        action: "write",
        path: format!("{} (GITHUB_OUTPUT)", std::path::Path::new(&path).display()),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .map_err(io)?;
    writeln!(f, "rev={rev}\nplan={plan_hash}").map_err(io)
}
