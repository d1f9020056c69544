//! One file per subcommand: its clap args and `run`. Glue only: the policy is
//! in the modules they call.

pub mod approve;
pub mod check;
pub mod deploy;
pub mod plan;
pub mod rollback;
pub mod run;
pub mod scan;
pub mod status;

use std::path::PathBuf;

use crate::secrets::Keyring;

/// What every command gets from `main`.
pub struct Context {
    pub repo: Option<PathBuf>,
    pub keyring: Keyring,
    /// `--forge`: overrides the forge the CI environment names.
    pub forge: Option<crate::forge::Kind>,
}

/// The commit's pinned host keys: every SSH connection checks against them.
pub fn known_hosts(snap: &crate::repo::Snapshot) -> crate::error::Result<Vec<u8>> {
    snap.read(crate::config::KNOWN_HOSTS)?.ok_or_else(|| {
        crate::error::Error::Usage(format!(
            "{} is missing at {}\n  hint: pin every host's SSH key there (ssh-keyscan, verified out of band); fleetgate never trusts a key on first use",
            crate::config::KNOWN_HOSTS,
            snap.label()
        ))
    })
}

/// The async runtime for commands that talk to hosts: one thread is plenty
/// for waiting on SSH and HTTP.
pub fn runtime() -> crate::error::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| crate::error::Error::Io {
            path: "tokio runtime".into(),
            source,
        })
}
