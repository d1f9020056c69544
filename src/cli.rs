//! Command-line types only (clap). Behaviour lives in `commands/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands::{
    approve::ApproveArgs, check::CheckArgs, deploy::DeployArgs, plan::PlanArgs,
    rollback::RollbackArgs, run::RunArgs, scan::ScanArgs, status::StatusArgs,
};

/// GitOps pipeline engine for small hosting fleets.
///
/// Exit codes: 0 done, 1 a gate blocked or a failure was handled, 2 invalid
/// input, 3 infrastructure failure, 4 waiting for an approval.
#[derive(Debug, Parser)]
#[command(name = "fleetgate", version, about, long_about = None)]
pub struct Cli {
    /// The fleet repository (default: the Git repository around the working directory).
    #[arg(long, global = true, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// How progress and errors are written to stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// More detail on stderr (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// The forge for --comment and approvals from CI (default: from the CI
    /// environment: FORGEJO_ACTIONS / GITHUB_ACTIONS).
    #[arg(long, global = true, value_enum, env = "FLEETGATE_FORGE")]
    pub forge: Option<crate::forge::Kind>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the fleet repository (the work tree by default).
    Check(CheckArgs),
    /// Say exactly which clients, hosts and apps change between two commits.
    Plan(PlanArgs),
    /// The image gate: pinned images, scanned by trivy against the policy.
    Scan(ScanArgs),
    /// Deploy one stage: upload, switch, restart, health gates, rollback on failure.
    Deploy(DeployArgs),
    /// Record an approval for the current plan of a commit.
    Approve(ApproveArgs),
    /// The whole pipeline: plan, stages in order, approvals, records, revert on failure.
    Run(RunArgs),
    /// What each host runs; with --drift, whether its files still match the repo.
    Status(StatusArgs),
    /// Put a client back on its previous release (or --to REV) by hand.
    Rollback(RollbackArgs),
}
