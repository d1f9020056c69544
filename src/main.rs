//! fleetgate: parse arguments, set up logging and keys, run one command, map
//! its outcome to an exit code (design.md §4). stdout carries data only;
//! everything for people goes to stderr.

mod cli;
mod commands;
mod config;
mod core;
mod deploy;
mod desired;
mod error;
#[cfg(test)]
mod fakes;
mod forge;
mod gates;
mod hcloud;
mod interrupt;
mod inventory;
mod known_hosts;
mod notify;
mod origin;
mod par;
mod plan;
mod ports;
mod printer;
mod progress;
mod remote;
mod render;
mod repo;
mod report;
mod revert;
mod rollout;
mod rt;
mod scan;
mod secrets;
mod store;
mod tls;

use clap::Parser;

use crate::cli::{Cli, Command, LogFormat};
use crate::error::{Error, ExitCode};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    printer::init(cli.color);
    // What documents the command line needs no repository, key or log.
    let documents = match &cli.command {
        Command::Completions(args) => Some(commands::completions::run(args)),
        Command::Man(args) => Some(commands::man::run(args)),
        _ => None,
    };
    if let Some(code) = documents {
        return std::process::ExitCode::from(code.map_or(2, |c| c as u8));
    }
    init_logging(cli.log_format, cli.verbose);
    progress::enable(cli.log_format == LogFormat::Human);
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
    // The CA files every HTTPS client will trust, checked before anything
    // is done: a bad FLEETGATE_CA_FILE stops any command at the start.
    tls::init()?;
    let ctx = commands::Context {
        repo: cli.repo.clone(),
        keyring,
    };
    match &cli.command {
        Command::Check(args) => commands::check::run(&ctx, args),
        Command::Plan(args) => commands::plan::run(&ctx, args),
        Command::Deploy(args) => commands::deploy::run(&ctx, args),
        Command::Status(args) => commands::status::run(&ctx, args),
        Command::Rollback(args) => commands::rollback::run(&ctx, args),
        Command::Restore(args) => commands::restore::run(&ctx, args),
        Command::Run(args) => commands::run::run(&ctx, args),
        Command::Scan(args) => commands::scan::run(&ctx, args),
        Command::Approve(args) => commands::approve::run(&ctx, args),
        Command::Lock(args) => commands::lock::run(&ctx, args),
        Command::History(args) => commands::history::run(&ctx, args),
        Command::Hosts(args) => commands::hosts::run(&ctx, args),
        Command::Completions(args) => commands::completions::run(args),
        Command::Man(args) => commands::man::run(args),
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
        .with_writer(|| progress::Stderr)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Human => builder.event_format(HumanFormat).init(),
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

/// Human log lines: `warning: …`, `error: …`, plain text for info, no
/// timestamps (CI adds its own), readable without colour.
struct HumanFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for HumanFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let prefix = match *event.metadata().level() {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            tracing::Level::INFO => "",
            tracing::Level::DEBUG => "debug: ",
            tracing::Level::TRACE => "trace: ",
        };
        write!(writer, "{prefix}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
