//! `fleetgate check [--rev REV]`: validate the whole fleet, report every problem.

use clap::Args;

use super::Context;
use crate::config::{self, Selection};
use crate::desired::{self, DecryptCache};
use crate::error::{Error, ExitCode, Result};
use crate::printer;
use crate::render::SecretView;
use crate::repo::Repo;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Check this commit instead of the work tree.
    #[arg(long, value_name = "REV")]
    pub rev: Option<String>,
}

pub fn run(ctx: &Context, args: &CheckArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let (snap, rev) = match &args.rev {
        Some(rev) => {
            let id = repo.resolve(rev)?;
            (repo.snapshot(id)?, id.to_string())
        }
        None => (repo.worktree()?, "worktree".to_string()),
    };
    tracing::info!("checking the fleet at {}", snap.label());
    let files = config::load(&snap, Selection::All)?;
    if !ctx.keyring.can_decrypt() {
        tracing::warn!(
            "no age identity configured (SOPS_AGE_KEY / SOPS_AGE_KEY_FILE): secret values are not decrypted, only their key names are checked"
        );
    }
    let cache = DecryptCache::default();
    let invalid = |problems| Error::Invalid {
        at: snap.label(),
        problems,
    };
    let d = desired::compute(&files, &ctx.keyring, &cache, SecretView::Masked, &rev)
        .map_err(invalid)?;
    d.fleet.log_warnings();
    let mut problems = Vec::new();
    config::known_hosts_checks(&files, &d.fleet.clients, &mut problems);
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    let hosts: usize = d.clients.values().map(|c| c.hosts.len()).sum();
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    printer::data(&format!(
        "ok: {}, {}, {}, {} at {}{}\n",
        plural(d.clients.len(), "client"),
        plural(hosts, "host"),
        plural(d.fleet.apps.len(), "app"),
        plural(d.fleet.pipeline.stages.len(), "stage"),
        snap.label(),
        if ctx.keyring.can_decrypt() {
            ""
        } else {
            " (secrets not decrypted)"
        }
    ));
    Ok(ExitCode::Ok)
}
