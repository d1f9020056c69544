//! `fleetgate plan --base A --head B`: what would change, for whom, and how.

use clap::Args;

use super::Context;
use crate::config;
use crate::config::Selection;
use crate::error::{Error, ExitCode, Message, Result};
use crate::forge::{
    self, State,
    notify::{self, Reporter},
};
use crate::plan::Plan;
use crate::printer;
use crate::repo::Repo;
use crate::report::{self, Format};
use crate::rollout;

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
    /// Also run the scan gate on the images of the changed clients; its
    /// summary goes into the comment, its verdict into `fleetgate/scan`
    /// (exit 1 if it blocks).
    #[arg(long)]
    pub scan: bool,
    /// On a pull-request event in CI: create or update the one plan comment
    /// of the pull request, and set the `fleetgate/plan` commit status.
    #[arg(long)]
    pub comment: bool,
    #[command(flatten)]
    pub scan_opts: super::ScanOpts,
    #[command(flatten)]
    pub forge: super::ForgeOpt,
}

pub fn run(ctx: &Context, args: &PlanArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    // The null commit (a branch's first push): a plan from nothing.
    let base = match args.base.trim_start_matches('0').is_empty() && !args.base.is_empty() {
        true => None,
        false => Some(repo.resolve(&args.base)?),
    };
    let head = repo.resolve(&args.head)?;
    // Outside CI, --comment is an error before any work, not a no-op.
    let pull_request = match args.comment {
        false => None,
        true => {
            let reporter =
                Reporter::connect(args.forge.forge, "plan --comment", &head.to_string())?;
            let Some(pr) = reporter.env.pull_request_number() else {
                return Err(Error::Usage(Message::from(format!("plan --comment needs a pull_request event, and this is {}", reporter
                        .env
                        .event_name
                        .as_deref()
                        .unwrap_or("no event (GITHUB_EVENT_NAME is unset)"))).hint("run it from the workflow `on: pull_request`; on pushes, `run --comment` reports instead")));
            };
            // The first call also checks the token, before any work.
            reporter.status("plan", State::Pending, "planning")?;
            Some((reporter, pr))
        }
    };
    let inventory = crate::inventory::for_command()?;
    let planned = rollout::plan(&repo, base, head, &ctx.keyring, &inventory).and_then(|plan| {
        // The pipeline (and, to scan, every app and client) at head, read once.
        let fleet = if args.scan || args.comment {
            let selection = match args.scan {
                true => Selection::All,
                false => Selection::Only(Default::default()),
            };
            let snap = repo.snapshot(head)?;
            Some(config::validate(&config::load(&snap, selection)?).0)
        } else {
            None
        };
        let scan = match (&fleet, args.scan) {
            (Some(fleet), true) => Some(scan_plan(
                fleet,
                &plan,
                &args.scan_opts,
                pull_request.as_ref(),
            )?),
            _ => None,
        };
        Ok((plan, fleet, scan))
    });
    let (plan, fleet, scan) = match planned {
        Ok(p) => p,
        Err(e) => {
            if let Some((reporter, pr)) = &pull_request {
                tell_failure(reporter, *pr, &e);
            }
            return Err(e);
        }
    };
    match args.format {
        Format::Text => printer::data(&report::text_with(&plan, printer::paint())),
        Format::Markdown => printer::data(&report::markdown(&plan)),
        // Streamed: a 10,000-client plan is megabytes of JSON.
        Format::Json => printer::data_with(|w| report::write_json(w, &plan)),
    }
    // The plan is this command's data; the scan's table is for people.
    if let Some(scan) = &scan {
        printer::people(&report::scan(scan, Format::Text));
    }
    let blocked = scan.as_ref().is_some_and(|s| !s.passed);
    if let Some((reporter, pr)) = &pull_request {
        let stages = fleet.as_ref().map_or(&[][..], |f| &f.pipeline.stages[..]);
        let after = notify::after_merge(stages, &plan, reporter.env.kind);
        let body = report::plan_comment(
            &plan,
            scan.as_ref(),
            forge::PLAN_MARKER,
            &after,
            reporter.forge.comment_limit(),
            reporter.env.run_url.as_deref(),
        );
        let (id, created) =
            forge::upsert_comment(&*reporter.forge, *pr, forge::PLAN_MARKER, &body)?;
        tracing::info!(
            "{} the plan comment ({id}) on pull request #{pr}",
            if created { "posted" } else { "updated" }
        );
        reporter.status(
            "plan",
            State::Success,
            &format!(
                "{} client(s) change, plan {}",
                plan.clients.len(),
                crate::report::short(&plan.plan_hash)
            ),
        )?;
    }
    // The process ends next, and gives its memory back at once: freeing a
    // large plan one client at a time would only delay the exit.
    std::mem::forget(plan);
    Ok(if blocked {
        ExitCode::Blocked
    } else {
        ExitCode::Ok
    })
}

/// The scan gate for the images the plan's clients would run at head.
fn scan_plan(
    fleet: &config::Fleet,
    plan: &Plan,
    opts: &super::ScanOpts,
    pull_request: Option<&(Reporter, u64)>,
) -> Result<crate::scan::ScanReport> {
    let changed: Vec<String> = plan.clients.iter().map(|c| c.name.clone()).collect();
    if let Some((r, _)) = pull_request {
        r.status("scan", State::Pending, "scanning the images of this change")?;
    }
    let report = crate::scan::gate_fleet(fleet, &changed, &opts.settings());
    if let Some((r, _)) = pull_request {
        match &report {
            Ok(s) if s.passed => r.status(
                "scan",
                State::Success,
                &format!("{} image(s) pass the policy", s.images.len()),
            )?,
            Ok(s) => r.status(
                "scan",
                State::Failure,
                &format!("{} blocking finding(s)", s.blocking()),
            )?,
            Err(e) => r.status("scan", State::Error, &e.headline())?,
        }
    }
    report
}

/// A plan that could not be made: the comment says why (errors never carry
/// secret values), the status fails.
fn tell_failure(reporter: &Reporter, pr: u64, e: &Error) {
    reporter.try_status("plan", notify::error_state(e), &e.headline());
    let body = format!(
        "{}\n### fleetgate could not plan this change\n\n```\n{}\n```\n\nDetails: {}.\n",
        forge::PLAN_MARKER,
        e.detailed(),
        reporter.log_link()
    );
    let body = forge::clip(&body, reporter.forge.comment_limit());
    if let Err(err) = forge::upsert_comment(&*reporter.forge, pr, forge::PLAN_MARKER, &body) {
        tracing::error!("could not update the plan comment: {err}");
    }
}
