//! `fleetgate completions <shell>`: the shell completion script for every
//! command and flag, generated from the clap types (`clap_complete`).

use clap::{Args, CommandFactory};

use crate::cli::Cli;
use crate::error::{ExitCode, Result};
use crate::printer;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell the script is for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn run(args: &CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "fleetgate", &mut script);
    printer::data(&String::from_utf8_lossy(&script));
    Ok(ExitCode::Ok)
}
