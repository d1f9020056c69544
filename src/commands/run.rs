//! `fleetgate run --base A --head B`: the whole pipeline (`core::engine`)
//! on the real repository, remote, hosts and forge. Glue: resolve the
//! revisions, build the ports, print what the engine returns. Also the
//! real [`LockKeeper`]: a thread that renews the pipeline lock with its own
//! handle on the repository while the engine blocks in a stage's deploy.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use clap::Args;

use super::Context;
use crate::config;
use crate::core::engine::{self, Ports, RunRequest};
use crate::core::lock::Lease;
use crate::core::shard::Shard;
use crate::error::{Error, ExitCode, Result};
use crate::forge::notify::Reporter;
use crate::ports::{Clock, LockKeeper};
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
    /// A lock not renewed for this long is taken over (a killed job's). A
    /// live run renews it every quarter of this (at most every 30 s).
    #[arg(long, value_name = "DURATION", value_parser = config::duration::parse, default_value = "2m")]
    pub lock_expiry: Duration,
    /// Output format of the run report on stdout (json: the run record).
    #[arg(long, value_enum, default_value_t = OutcomeFormat::Text)]
    pub format: OutcomeFormat,
    /// Deploy only the I-th of N stable slices of each stage's hosts (a CI
    /// matrix of N jobs, one run id); the stage is decided once every shard
    /// reported.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// How long a shard waits for the other shards to report on a stage
    /// before the stage fails (exit 3).
    #[arg(long, value_name = "DURATION", value_parser = config::duration::parse, default_value = "30m")]
    pub shard_timeout: Duration,
    /// In CI: commit statuses for scan and each stage on HEAD, and a comment
    /// on the merged pull request when a stage waits or fails.
    #[arg(long)]
    pub comment: bool,
    #[command(flatten)]
    pub scan: super::ScanOpts,
    #[command(flatten)]
    pub forge: super::ForgeOpt,
}

pub fn run(ctx: &Context, args: &RunArgs) -> Result<ExitCode> {
    if let Some(shard) = args.shard {
        super::shared_run_id(shard)?;
    }
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
            args.forge.forge,
            "run --comment",
            &head.to_string(),
        )?),
        false => None,
    };
    crate::interrupt::install();
    let (run_id, holder, run_url) = this_run(&clock)?;
    let settings = args.scan.settings();
    let inventory = crate::inventory::for_command()?;
    let rollout = Live {
        repo: &repo,
        keyring: &ctx.keyring,
        scan: &settings,
        inventory: &inventory,
    };
    let keeper = Keeper::new(&repo, &args.remote);
    let ports = Ports {
        git: &git,
        rollout: &rollout,
        clock: &clock,
        reporter: reporter.as_ref(),
        keeper: Some(&keeper),
        notifier: Some(&crate::notify::Webhooks),
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
        run_url,
        shard: args.shard.unwrap_or(Shard::ALL),
        shard_timeout: args.shard_timeout,
    };
    let out = engine::run(&ports, &request);
    keeper.stop();
    let out = out?;
    match args.format {
        OutcomeFormat::Json => printer::data(&format!("{}\n", out.record.to_json())),
        OutcomeFormat::Text => {
            let mut text = String::new();
            if let Some(scan) = &out.scan {
                text.push_str(&report::scan(scan, report::Format::Text));
            }
            for o in &out.outcomes {
                text.push_str(&report::outcome_with(
                    o,
                    OutcomeFormat::Text,
                    printer::paint(),
                ));
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

/// Who this run is, for the lock: the CI run, its page and actor when there
/// is one.
fn this_run(clock: &dyn Clock) -> Result<(String, String, Option<String>)> {
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
    let run_url = crate::forge::env::run_page()?;
    Ok((run_id, format!("{user}@{host}"), run_url))
}

/// Renews the lock from a thread of its own. The thread opens its own
/// repository handle and remote (`GitStore` is not `Sync`) and shares only
/// the [`Lease`] with the engine, so their renewals never race.
struct Keeper<'r> {
    repo: &'r Repo,
    remote: String,
    running: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

impl<'r> Keeper<'r> {
    fn new(repo: &'r Repo, remote: &str) -> Keeper<'r> {
        Keeper {
            repo,
            remote: remote.to_string(),
            running: Mutex::new(None),
        }
    }

    /// Stops the thread and waits for it: no renewal after the run.
    fn stop(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((stop, thread)) = running {
            drop(stop);
            let _ = thread.join();
        }
    }
}

impl LockKeeper for Keeper<'_> {
    fn keep(&self, lease: Arc<Lease>) {
        let repo = match self.repo.reopen() {
            Ok(repo) => repo,
            Err(e) => {
                tracing::warn!("the pipeline lock is renewed between steps only: {e}");
                return;
            }
        };
        let remote = self.remote.clone();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let git = match GitRepo::with_remote(&repo, &remote) {
                Ok(git) => git,
                Err(e) => {
                    tracing::warn!("the pipeline lock is renewed between steps only: {e}");
                    return;
                }
            };
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(lease.every()) {
                if lease.done() {
                    break;
                }
                match lease.renew(&git, &SystemClock) {
                    Ok(()) => tracing::debug!(
                        "pipeline lock renewed: expires {}",
                        lease.holder().expires_at
                    ),
                    Err(e) if lease.done() => {
                        tracing::error!("{}", e.headline());
                        break;
                    }
                    // The remote may be back by the next renewal: the
                    // expiry leaves room for three misses.
                    Err(e) => tracing::warn!("could not renew the pipeline lock: {}", e.headline()),
                }
            }
        });
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some((stop, thread));
    }
}
