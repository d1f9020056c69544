//! `fleetgate check [--rev REV] [--format text|json]`: validate the whole
//! fleet, report every problem.

use clap::Args;
use serde::Serialize;

use super::Context;
use crate::config::{self, Selection};
use crate::desired::{self, DecryptCache};
use crate::error::{Diagnostic, Error, ExitCode, Result};
use crate::printer;
use crate::render::SecretView;
use crate::repo::Repo;
use crate::report::OutcomeFormat;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Check this commit instead of the work tree.
    #[arg(long, value_name = "REV")]
    pub rev: Option<String>,
    /// Output format on stdout (json: the verdict with every problem and
    /// warning, also when the fleet is invalid).
    #[arg(long, value_enum, default_value_t = OutcomeFormat::Text)]
    pub format: OutcomeFormat,
}

/// `check --format json`: what was checked and what was found. Problems and
/// warnings are the diagnostics stderr shows (file, field, line, message,
/// hint).
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    /// The fleet is valid (exit 0).
    pub ok: bool,
    /// `work tree`, or `commit <short id>`; null when not even that was read.
    pub at: Option<String>,
    /// The commit checked (full id); null for the work tree.
    pub rev: Option<String>,
    /// What the fleet holds, when it is valid.
    pub counts: Option<Counts>,
    /// Secret values were decrypted (an age key was at hand); without,
    /// only their key names were checked.
    pub secrets_decrypted: bool,
    pub warnings: Vec<Problem>,
    /// Every problem that makes the fleet invalid (exit 2).
    pub problems: Vec<Problem>,
    /// Why the fleet could not be checked at all (no repository, an
    /// unknown revision, a read that failed); stderr has the details.
    pub error: Option<String>,
}

/// One diagnostic, every key present (null when unknown).
#[derive(Debug, Serialize)]
pub struct Problem {
    /// Repository-relative path of the file.
    pub file: String,
    /// Field path inside the file, such as `hosts[1].port`.
    pub field: Option<String>,
    /// 1-based line.
    pub line: Option<u32>,
    pub message: String,
    pub hint: Option<String>,
}

impl From<&Diagnostic> for Problem {
    fn from(d: &Diagnostic) -> Problem {
        Problem {
            file: d.file.clone(),
            field: d.field.clone(),
            line: d.line,
            message: d.message.clone(),
            hint: d.hint.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Counts {
    pub clients: usize,
    pub hosts: usize,
    pub apps: usize,
    pub stages: usize,
}

pub fn run(ctx: &Context, args: &CheckArgs) -> Result<ExitCode> {
    let mut report = CheckReport {
        secrets_decrypted: ctx.keyring.can_decrypt(),
        ..CheckReport::default()
    };
    let result = check(ctx, args, &mut report);
    match &result {
        Ok(()) => report.ok = true,
        Err(Error::Invalid { problems, .. }) => {
            report.problems = problems.iter().map(Problem::from).collect();
        }
        Err(e) => report.error = Some(e.headline()),
    }
    // JSON says how it ended whatever happened; text says only success
    // (stderr has the problems, as ever).
    match args.format {
        OutcomeFormat::Json => printer::data(&format!(
            "{}\n",
            serde_json::to_string_pretty(&report).expect("a check report serialises")
        )),
        OutcomeFormat::Text if report.ok => printer::data(&summary(&report)),
        OutcomeFormat::Text => {}
    }
    result.map(|()| ExitCode::Ok)
}

fn check(ctx: &Context, args: &CheckArgs, report: &mut CheckReport) -> Result<()> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let snap = match &args.rev {
        Some(rev) => {
            let id = repo.resolve(rev)?;
            report.rev = Some(id.to_string());
            repo.snapshot(id)?
        }
        None => repo.worktree()?,
    };
    let rev = report.rev.clone().unwrap_or_else(|| "worktree".into());
    report.at = Some(snap.label());
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
    report.warnings = d.fleet.warnings.iter().map(Problem::from).collect();
    let mut problems = Vec::new();
    let pinned_by_address = config::known_hosts_checks(&files, &d.fleet.clients, &mut problems);
    for w in &pinned_by_address {
        tracing::warn!("{w}");
    }
    report
        .warnings
        .extend(pinned_by_address.iter().map(Problem::from));
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    report.counts = Some(Counts {
        clients: d.clients.len(),
        hosts: d.clients.values().map(|c| c.hosts.len()).sum(),
        apps: d.fleet.apps.len(),
        stages: d.fleet.pipeline.stages.len(),
    });
    Ok(())
}

/// `ok: 3 clients, 4 hosts, 3 apps, 2 stages at work tree`.
fn summary(report: &CheckReport) -> String {
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let Some(c) = &report.counts else {
        return String::new();
    };
    format!(
        "ok: {}, {}, {}, {} at {}{}\n",
        plural(c.clients, "client"),
        plural(c.hosts, "host"),
        plural(c.apps, "app"),
        plural(c.stages, "stage"),
        report.at.as_deref().unwrap_or_default(),
        if report.secrets_decrypted {
            ""
        } else {
            " (secrets not decrypted)"
        }
    )
}
