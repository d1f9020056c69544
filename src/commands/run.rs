//! `fleetgate run --base A --head B`: the whole pipeline (`core::engine`)
//! on the real repository, remote, hosts and forge. Glue: resolve the
//! revisions, build the ports, print what the engine returns.

use std::time::Duration;

use clap::Args;

use super::Context;
use crate::config;
use crate::core::engine::{self, Ports, RunRequest};
use crate::error::{Error, ExitCode, Result};
use crate::forge::notify::Reporter;
use crate::ports::Clock;
use crate::printer;
use crate::repo::{CommitId, Repo};
use crate::report::{self, OutcomeFormat};
use crate::rollout::Live;
use crate::rt::SystemClock;
use crate::store::GitRepo;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The commit before the push (seeds clients that have no deployed ref
    /// yet). Default: the base recorded by the last run of HEAD (to resume
    /// it, e.g. after an approval).
    #[arg(long, value_name = "REV")]
    pub base: Option<String>,
    /// The commit to roll out.
    #[arg(long, value_name = "REV")]
    pub head: String,
    /// Poll this long for a pending approval instead of exiting 4 at once.
    #[arg(long, value_name = "DURATION", value_parser = config::duration::parse)]
    pub wait_approval: Option<Duration>,
    /// The remote that holds records, approvals, the lock and the branch.
    #[arg(long, env = "FLEETGATE_REMOTE", default_value = "origin")]
    pub remote: String,
    /// The branch a revert is pushed to.
    #[arg(long, env = "FLEETGATE_BRANCH", default_value = "main")]
    pub branch: String,
    /// How long to wait for another run's lock before giving up (exit 3).
    #[arg(long, value_name = "DURATION", value_parser = config::duration::parse, default_value = "10m")]
    pub lock_wait: Duration,
    /// A lock not renewed for this long is taken over (a killed job's).
    #[arg(long, value_name = "DURATION", value_parser = config::duration::parse, default_value = "1h")]
    pub lock_expiry: Duration,
    /// Output format of the run report on stdout (json: the run record).
    #[arg(long, value_enum, default_value_t = OutcomeFormat::Text)]
    pub format: OutcomeFormat,
    /// In CI: commit statuses for scan and each stage on HEAD, and a comment
    /// on the merged pull request when a stage waits or fails.
    #[arg(long)]
    pub comment: bool,
    #[command(flatten)]
    pub scan: super::ScanOpts,
}

pub fn run(ctx: &Context, args: &RunArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let git = GitRepo::with_remote(&repo, &args.remote)?;
    let clock = SystemClock;
    let head = repo.resolve(&args.head)?;
    let base = match &args.base {
        Some(base) => base_of_push(&repo, base)?,
        None => engine::recorded_base(&git, &clock, head)?,
    };
    // Outside CI, --comment is an error before anything runs.
    let reporter = match args.comment {
        true => Some(Reporter::connect(
            ctx.forge,
            "run --comment",
            &head.to_string(),
        )?),
        false => None,
    };
    crate::interrupt::install();
    let (run_id, holder) = this_run(&clock);
    let settings = args.scan.settings();
    let rollout = Live {
        repo: &repo,
        keyring: &ctx.keyring,
        scan: &settings,
    };
    let ports = Ports {
        git: &git,
        rollout: &rollout,
        clock: &clock,
        reporter: reporter.as_ref(),
    };
    let request = RunRequest {
        base,
        head,
        branch: args.branch.clone(),
        wait_approval: args.wait_approval.unwrap_or_default(),
        lock_wait: args.lock_wait,
        lock_expiry: args.lock_expiry,
        run_id,
        holder,
    };
    let out = engine::run(&ports, &request)?;
    match args.format {
        OutcomeFormat::Json => printer::data(&format!("{}\n", out.record.to_json())),
        OutcomeFormat::Text => {
            let mut text = String::new();
            if let Some(scan) = &out.scan {
                text.push_str(&report::scan(scan, report::Format::Text));
            }
            for o in &out.outcomes {
                text.push_str(&report::outcome(o, OutcomeFormat::Text));
            }
            printer::data(&text);
        }
    }
    Ok(out.code)
}

/// The commit before the push, as the forge sends it: the null id on a
/// branch's first push, and after a force-push possibly a commit this clone
/// never had. Either way there is no base: each client is compared with
/// what its stage last deployed, or with nothing.
fn base_of_push(repo: &Repo, base: &str) -> Result<Option<CommitId>> {
    if base.trim_start_matches('0').is_empty() && !base.is_empty() {
        tracing::info!("base {base} is the null commit (a first push): no base");
        return Ok(None);
    }
    match repo.resolve(base) {
        Ok(id) => Ok(Some(id)),
        Err(Error::BadRevision { .. }) if CommitId::from_hex(base).is_some() => {
            tracing::warn!(
                "base {base} is not in this clone (a force-push?): no base; each client is compared with what its stage last deployed"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Who this run is, for the lock: the CI run and actor when there is one.
fn this_run(clock: &dyn Clock) -> (String, String) {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let run_id = env("GITHUB_RUN_ID")
        .unwrap_or_else(|| format!("local-{}-{}", std::process::id(), clock.now().timestamp()));
    let user = env("GITHUB_ACTOR")
        .or_else(|| env("USER"))
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    (run_id, format!("{user}@{host}"))
}
