//! `fleetgate scan --rev REV [--clients a,b]`: the image gate on its own —
//! every image the clients would run, pinned (validation) and scanned by
//! trivy against the policy. `run` calls the same gate before its first stage.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::Context;
use crate::config::{self, Selection};
use crate::error::{Error, ExitCode, Result};
use crate::printer;
use crate::repo::Repo;
use crate::report::{self, Format};
use crate::scan::{self, trivy::Trivy};

/// How trivy is run and where results are cached (shared by `scan` and `run`).
#[derive(Debug, Clone, Args)]
pub struct ScanOpts {
    /// The trivy binary.
    #[arg(
        long,
        env = "FLEETGATE_TRIVY",
        default_value = "trivy",
        value_name = "PATH"
    )]
    pub trivy: PathBuf,
    /// Trivy's cache dir (its DB is `<dir>/db`); default: trivy's own.
    #[arg(long, env = "FLEETGATE_TRIVY_CACHE_DIR", value_name = "DIR")]
    pub trivy_cache_dir: Option<PathBuf>,
    /// Where trivy downloads its DB from (a mirror of ghcr.io/aquasecurity/trivy-db).
    #[arg(long, env = "FLEETGATE_TRIVY_DB_REPOSITORY", value_name = "REPO")]
    pub trivy_db_repository: Option<String>,
    /// Use trivy's DB as it is (no download).
    #[arg(long, env = "FLEETGATE_TRIVY_SKIP_DB_UPDATE")]
    pub skip_db_update: bool,
    /// fleetgate's cache (scan results per image digest and DB version);
    /// default: $XDG_CACHE_HOME/fleetgate or ~/.cache/fleetgate.
    #[arg(long, env = "FLEETGATE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the scan cache.
    #[arg(long)]
    pub no_scan_cache: bool,
    /// Images scanned at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub scan_concurrency: usize,
    /// A scan of one image taking longer is killed (exit 3).
    #[arg(long, value_name = "DURATION", value_parser = crate::config::duration::parse, default_value = "5m")]
    pub scan_timeout: Duration,
    /// A directory of `docker save` archives named `<digest hex>.tar`:
    /// images found there are scanned from the archive instead of pulled.
    #[arg(long, env = "FLEETGATE_IMAGE_ARCHIVES", value_name = "DIR")]
    pub image_archives: Option<PathBuf>,
}

impl ScanOpts {
    /// The options as the scanner takes them.
    pub fn settings(&self) -> scan::Settings {
        let cache_dir = if self.no_scan_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(|| scan::cache_home().map(|c| c.join("fleetgate")))
        };
        scan::Settings {
            trivy: Trivy {
                bin: self.trivy.clone(),
                cache_dir: self.trivy_cache_dir.clone(),
                timeout: self.scan_timeout,
                skip_db_update: self.skip_db_update,
                db_repository: self.trivy_db_repository.clone(),
            },
            options: scan::Options {
                concurrency: self.scan_concurrency,
                cache_dir,
                archives: self.image_archives.clone(),
            },
        }
    }
}

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
    pub opts: ScanOpts,
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
