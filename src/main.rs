//! fleetgate: parse arguments, set up logging and keys, run one command, map
//! its outcome to an exit code (design.md §4). stdout carries data only;
//! everything for people goes to stderr.

mod cli;
mod commands;
mod config;
mod desired;
mod error;
mod plan;
mod render;
mod repo;
mod report;
mod scan;
mod secrets;

use clap::Parser;

use crate::cli::{Cli, Command, LogFormat};
use crate::error::{Error, ExitCode};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.verbose);
    let code = match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            report_error(cli.log_format, &err);
            err.exit_code()
        }
    };
    std::process::ExitCode::from(code as u8)
}

fn run(cli: &Cli) -> Result<ExitCode, Error> {
    let keyring = secrets::Keyring::from_env()?;
    // SAFETY: no other thread exists yet; rops reads its keys from the
    // environment on every decryption, so they must be there before any
    // render thread starts.
    unsafe { keyring.bridge_to_rops() };
    let ctx = commands::Context {
        repo: cli.repo.clone(),
        log_format: cli.log_format,
        keyring,
    };
    match &cli.command {
        Command::Check(args) => commands::check::run(&ctx, args),
        Command::Plan(args) => commands::plan::run(&ctx, args),
    }
}

fn init_logging(format: LogFormat, verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLEETGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("fleetgate={level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Human => builder
            .without_time()
            .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .compact()
            .init(),
    }
}

fn report_error(format: LogFormat, err: &Error) {
    if let Error::Invalid { problems, .. } = err {
        for d in problems {
            match format {
                LogFormat::Human => eprintln!("{d}"),
                LogFormat::Json => tracing::error!(
                    file = %d.file,
                    field = d.field.as_deref().unwrap_or(""),
                    line = d.line.unwrap_or(0),
                    hint = d.hint.as_deref().unwrap_or(""),
                    "{}", d.message
                ),
            }
        }
    }
    match format {
        LogFormat::Human => eprintln!("error: {err}"),
        LogFormat::Json => tracing::error!(exit_code = err.exit_code() as u8, "{err}"),
    }
}
