//! `fleetgate scan --rev REV [--clients a,b]`: the image gate on its own —
//! every image the clients would run, pinned (validation) and scanned by
//! trivy against the policy. `run` calls the same gate before its first stage.

use clap::Args;

use super::Context;
use crate::config::{self, Selection};
use crate::error::{Error, ExitCode, Result};
use crate::printer;
use crate::repo::Repo;
use crate::report::{self, Format};
use crate::scan;

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// The commit whose images are scanned.
    #[arg(long, value_name = "REV")]
    pub rev: String,
    /// Only the images of these clients (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub clients: Vec<String>,
    /// Output format on stdout (markdown: for the merge-request comment).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub opts: super::ScanOpts,
}

pub fn run(ctx: &Context, args: &ScanArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let rev = repo.resolve(&args.rev)?;
    let snap = repo.snapshot(rev)?;
    let selection = if args.clients.is_empty() {
        Selection::All
    } else {
        Selection::Only(args.clients.iter().cloned().collect())
    };
    let files = config::load(&snap, selection)?;
    for c in &args.clients {
        if !files.all_clients.contains(c) {
            return Err(Error::Usage(
                format!("client `{c}` does not exist at {}", snap.label()).into(),
            ));
        }
    }
    let (fleet, problems) = config::validate(&files);
    if !problems.is_empty() {
        return Err(Error::Invalid {
            at: snap.label(),
            problems,
        });
    }
    let clients: Vec<String> = fleet.clients.keys().cloned().collect();
    let report = scan::gate_fleet(&fleet, &clients, &args.opts.settings())?;
    printer::data(&report::scan(&report, args.format));
    Ok(if report.passed {
        ExitCode::Ok
    } else {
        ExitCode::Blocked
    })
}
