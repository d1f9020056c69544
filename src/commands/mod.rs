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
