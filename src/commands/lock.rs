//! `fleetgate lock` (who holds the pipeline lock, until when) and `fleetgate
//! lock release --reason TEXT` (remove it, logged on
//! `refs/fleetgate/lock-log`). Glue: the policy is `core::lock`'s.

use clap::{Args, Subcommand};
use serde_json::json;

use super::Context;
use crate::core::lock::{self, Held, Holder, LOG_REF, Released};
use crate::error::{Error, ExitCode, Result};
use crate::ports::Clock;
use crate::printer;
use crate::repo::Repo;
use crate::report::OutcomeFormat;
use crate::rt::SystemClock;
use crate::store::GitRepo;

#[derive(Debug, Args)]
pub struct LockArgs {
    #[command(subcommand)]
    pub action: Option<LockAction>,
    /// The remote that holds the lock.
    #[arg(
        long,
        env = "FLEETGATE_REMOTE",
        default_value = "origin",
        global = true
    )]
    pub remote: String,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = OutcomeFormat::Text, global = true)]
    pub format: OutcomeFormat,
}

#[derive(Debug, Subcommand)]
pub enum LockAction {
    /// Remove the lock (a dead run's), logged with who and why on
    /// refs/fleetgate/lock-log. A live run that loses it stops.
    Release(ReleaseArgs),
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Why (kept in the lock log).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Who releases it (default: GITHUB_ACTOR, else USER).
    #[arg(long, value_name = "USER")]
    pub by: Option<String>,
    /// Only if this run holds it (a cancelled job's cleanup step passes its
    /// own GITHUB_RUN_ID, so it never removes a newer run's lock).
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
}

pub fn run(ctx: &Context, args: &LockArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let git = GitRepo::with_remote(&repo, &args.remote)?;
    let clock = SystemClock;
    match &args.action {
        None => show(&git, &clock, args.format),
        Some(LockAction::Release(r)) => release(&git, &clock, r, args.format),
    }
}

fn show(git: &GitRepo, clock: &dyn Clock, format: OutcomeFormat) -> Result<ExitCode> {
    let held = lock::read(git)?;
    let now = clock.now();
    let text = match (&held, format) {
        (None, OutcomeFormat::Json) => json!({"held": false}).to_string(),
        (Some(h), OutcomeFormat::Json) => held_json(h, now).to_string(),
        (None, OutcomeFormat::Text) => "free: no run holds the pipeline lock".into(),
        (Some(Held { id, holder: None }), OutcomeFormat::Text) => {
            format!("held by an unreadable lock ({id}): the next run takes it over")
        }
        (
            Some(Held {
                holder: Some(h), ..
            }),
            OutcomeFormat::Text,
        ) => {
            let when = match h.expired(now) {
                true => "expired: the next run takes it over".to_string(),
                false => format!("{}s left", seconds_left(h, now)),
            };
            let mut text = format!(
                "held by {}\nrun:     {}\nsince:   {}\nexpires: {} ({when})",
                h.holder, h.run_id, h.started_at, h.expires_at
            );
            if let Some(url) = &h.run_url {
                text.push_str(&format!("\nci run:  {url}"));
            }
            if !h.shards.is_empty() {
                let shards: Vec<String> = h.shards.iter().map(u32::to_string).collect();
                text.push_str(&format!(
                    "\nshards:  {} (of one sharded run)",
                    shards.join(", ")
                ));
            }
            text
        }
    };
    printer::data(&format!("{text}\n"));
    Ok(ExitCode::Ok)
}

fn seconds_left(h: &Holder, now: chrono::DateTime<chrono::Utc>) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&h.expires_at)
        .map(|t| (t.with_timezone(&chrono::Utc) - now).num_seconds())
        .unwrap_or(0)
}

fn held_json(h: &Held, now: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
    match &h.holder {
        None => json!({"held": true, "lock": h.id.to_string(), "readable": false, "expired": true}),
        Some(holder) => json!({
            "held": true,
            "lock": h.id.to_string(),
            "readable": true,
            "run_id": holder.run_id,
            "holder": holder.holder,
            "run_url": holder.run_url,
            "started_at": holder.started_at,
            "expires_at": holder.expires_at,
            "expired": holder.expired(now),
            "shards": holder.shards,
        }),
    }
}

fn release(
    git: &GitRepo,
    clock: &dyn Clock,
    args: &ReleaseArgs,
    format: OutcomeFormat,
) -> Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let by = args
        .by
        .clone()
        .or_else(|| env("GITHUB_ACTOR"))
        .or_else(|| env("USER"))
        .ok_or_else(|| Error::Usage("who releases the lock? pass --by USER".into()))?;
    if args.reason.trim().is_empty() {
        return Err(Error::Usage(
            "--reason is empty: say why the lock goes (it is kept in the lock log)".into(),
        ));
    }
    let out = lock::release(git, clock, &by, &args.reason, args.run_id.as_deref())?;
    let (code, text, value) = match &out {
        Released::Nothing => (
            ExitCode::Ok,
            "nothing to release: no run holds the pipeline lock".to_string(),
            json!({"released": false, "held": false}),
        ),
        Released::NotThatRun { holder } => {
            let whose = holder
                .as_ref()
                .map(|h| format!("run {} of {}", h.run_id, h.holder))
                .unwrap_or_else(|| "an unreadable lock".into());
            (
                ExitCode::Blocked,
                format!(
                    "not released: {whose} holds the pipeline lock, not run {}",
                    args.run_id.as_deref().unwrap_or_default()
                ),
                json!({"released": false, "held": true, "holder": holder}),
            )
        }
        Released::Yes { removal, log } => {
            let whose = removal
                .released
                .as_ref()
                .map(|h| format!("run {} of {}", h.run_id, h.holder))
                .unwrap_or_else(|| format!("an unreadable lock ({})", removal.lock));
            tracing::warn!(
                "released the pipeline lock of {whose}: {} (by {})",
                removal.reason,
                removal.by
            );
            (
                ExitCode::Ok,
                format!("released the lock of {whose}; logged as {log} on {LOG_REF}"),
                json!({"released": true, "log": log.to_string(), "removal": removal}),
            )
        }
    };
    match format {
        OutcomeFormat::Text => printer::data(&format!("{text}\n")),
        OutcomeFormat::Json => printer::data(&format!("{value}\n")),
    }
    Ok(code)
}
