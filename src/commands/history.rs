//! `fleetgate history [--client X] [--limit N]`: the runs recorded in Git
//! (`refs/notes/fleetgate` on the remote), newest first — commit, plan,
//! stages and their outcome, approvals, revert — so nobody reads notes by
//! hand. Glue: `core::records` reads them, `report` summarises and prints.

use clap::Args;

use super::Context;
use crate::config::{self, Selection};
use crate::core::records::{NOTES_REF, Records};
use crate::error::{ExitCode, Result};
use crate::origin::Origin;
use crate::ports::GitStore;
use crate::printer;
use crate::repo::{CommitId, Repo};
use crate::report::{self, OutcomeFormat};
use crate::rt::SystemClock;
use crate::store::GitRepo;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only runs whose stages deployed (or tried to deploy) this client.
    #[arg(long, value_name = "NAME")]
    pub client: Option<String>,
    /// At most this many runs (the newest).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub limit: Option<usize>,
    /// Output format on stdout (json: a list of runs, newest first).
    #[arg(long, value_enum, default_value_t = OutcomeFormat::Text)]
    pub format: OutcomeFormat,
    /// The remote that holds the records (without it: this clone's).
    #[arg(long, env = "FLEETGATE_REMOTE", default_value = "origin")]
    pub remote: String,
}

pub fn run(ctx: &Context, args: &HistoryArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    // Without the remote (a clone that never had one, as `deploy` allows):
    // the records this clone holds.
    let git = GitRepo {
        repo: &repo,
        origin: Origin::optional(&repo, &args.remote),
    };
    let records = Records::new(&git, &SystemClock).history()?;
    let mut unreadable = 0;
    let mut runs = Vec::new();
    for (noted, record) in records {
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                // The others are still worth showing; the exit code says
                // one is not.
                tracing::error!("{e}");
                unreadable += 1;
                continue;
            }
        };
        if let Some(client) = &args.client {
            let touched = record
                .stages
                .values()
                .any(|o| o.hosts.iter().any(|h| &h.client == client));
            if !touched {
                continue;
            }
        }
        if args.limit.is_some_and(|n| runs.len() >= n) {
            break;
        }
        let order = stage_order(&repo, noted.commit);
        runs.push(report::run_summary(
            &noted.commit.to_string(),
            &record,
            noted.subject.as_deref(),
            &order,
        ));
    }
    if runs.is_empty() && args.format == OutcomeFormat::Text {
        let whose = match &args.client {
            Some(c) => format!(" for client `{c}`"),
            None => String::new(),
        };
        printer::data(&format!(
            "no runs recorded{whose} ({NOTES_REF} on {})\n",
            git.remote_name().unwrap_or("this clone")
        ));
    } else {
        printer::data(&report::history(&runs, args.format, printer::paint()));
    }
    Ok(match unreadable {
        0 => ExitCode::Ok,
        _ => ExitCode::Infra,
    })
}

/// `--limit`: a count of runs, 1 or more.
fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("0 would show nothing: give 1 or more".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a number of runs")),
    }
}

/// The stages of the pipeline at `commit`, in order; none when this clone
/// lacks the commit or its pipeline does not read (the record's order then).
fn stage_order(repo: &Repo, commit: CommitId) -> Vec<String> {
    let Ok(snap) = repo.snapshot(commit) else {
        return Vec::new();
    };
    match config::load(&snap, Selection::Only(Default::default())) {
        Ok(files) => config::validate(&files)
            .0
            .pipeline
            .stages
            .iter()
            .map(|s| s.name.clone())
            .collect(),
        Err(_) => Vec::new(),
    }
}
