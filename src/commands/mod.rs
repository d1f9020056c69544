//! One file per subcommand: its clap args and `run`. Glue only: the policy is
//! in the modules they call.

pub mod approve;
pub mod check;
pub mod completions;
pub mod deploy;
pub mod history;
pub mod hosts;
pub mod lock;
pub mod man;
pub mod plan;
pub mod restore;
pub mod rollback;
pub mod run;
pub mod scan;
pub mod status;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::scan::trivy::Trivy;
use crate::secrets::Keyring;

/// What every command gets from `main`.
pub struct Context {
    pub repo: Option<PathBuf>,
    pub keyring: Keyring,
}

/// `--forge`, on the commands that talk to a forge (`plan --comment`,
/// `run --comment`, `approve --from-ci`, `scan --issues`, `status
/// --issues`) and nowhere else.
#[derive(Debug, Clone, Args)]
pub struct ForgeOpt {
    /// The forge for --comment, --from-ci and --issues (default: the CI job's:
    /// forgejo when FORGEJO_ACTIONS or GITEA_ACTIONS is set, github when
    /// GITHUB_ACTIONS is).
    #[arg(long, value_enum, env = "FLEETGATE_FORGE", value_name = "KIND")]
    pub forge: Option<crate::forge::Kind>,
}

/// How trivy is run and where results are cached (`scan`, `plan --scan`
/// and `run` take the same options).
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
    pub fn settings(&self) -> crate::scan::Settings {
        let cache_dir = if self.no_scan_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(|| crate::scan::cache_home().map(|c| c.join("fleetgate")))
        };
        crate::scan::Settings {
            trivy: Trivy {
                bin: self.trivy.clone(),
                cache_dir: self.trivy_cache_dir.clone(),
                timeout: self.scan_timeout,
                skip_db_update: self.skip_db_update,
                db_repository: self.trivy_db_repository.clone(),
            },
            options: crate::scan::Options {
                concurrency: self.scan_concurrency,
                cache_dir,
                archives: self.image_archives.clone(),
            },
        }
    }
}

/// One client's fleet at `snap` (its file and what it names), validated;
/// a client the commit does not have is invalid input. For the commands
/// that act on one client by hand (`rollback`, `restore`).
pub fn one_client(
    snap: &crate::repo::Snapshot<'_>,
    name: &str,
) -> crate::error::Result<crate::config::Fleet> {
    use crate::error::Error;
    let files = crate::config::load(
        snap,
        crate::config::Selection::Only([name.to_string()].into()),
    )?;
    let (fleet, problems) = crate::config::validate(&files);
    if !problems.is_empty() {
        return Err(Error::Invalid {
            at: snap.label(),
            problems,
        });
    }
    if !fleet.clients.contains_key(name) {
        return Err(Error::Usage(
            format!("client `{name}` does not exist at {}", snap.label()).into(),
        ));
    }
    Ok(fleet)
}

/// The run id every shard of a sharded run shares: the CI run's.
pub(crate) fn shared_run_id(shard: crate::core::shard::Shard) -> crate::error::Result<String> {
    match std::env::var("GITHUB_RUN_ID") {
        Ok(id) if !id.trim().is_empty() => Ok(id),
        _ if shard.count == 1 => Ok(String::new()),
        _ => Err(crate::error::Error::Usage(
            crate::error::Message::from(format!(
                "--shard {shard} needs the run id every shard of the run shares, and GITHUB_RUN_ID is not set"
            ))
            .hint("Forgejo and GitHub Actions set it for every job of a matrix; by hand, export GITHUB_RUN_ID=<one id for all shards>"),
        )),
    }
}
