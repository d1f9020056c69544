//! What fleetgate tells people on the forge, and when: commit statuses for
//! plan, scan and each stage; the comment on the merged pull request when
//! production waits for an approval or a stage failed. The words are
//! composed here from the pipeline's own data; [`super::Forge`] sends them.
//!
//! A [`Reporter`] belongs to one command run. Its first status is sent
//! before anything deploys, so a refused token stops the run early (exit 3);
//! later failures to report are logged and remembered ([`Reporter::failed`])
//! rather than abandoning a rollout half-way.

use std::cell::Cell;
use std::fmt::Write;

use super::{Env, Forge, Kind, State, Status};
use crate::config::Stage;
use crate::deploy::{HostStatus, StageOutcome};
use crate::error::{Error, ExitCode, Result};
use crate::plan::Plan;
use crate::report::{self, OutcomeFormat};
use crate::revert::{FailedGate, RevertOutcome};

pub struct Reporter {
    pub env: Env,
    pub forge: Box<dyn Forge>,
    /// The commit the statuses are for.
    pub sha: String,
    failed: Cell<bool>,
}

impl Reporter {
    /// Reads the CI environment and connects; `why` names the option that
    /// asked for it (the error outside CI says so).
    pub fn connect(forced: Option<Kind>, why: &str, sha: &str) -> Result<Reporter> {
        let env = Env::from_env(forced, why)?;
        let forge = super::connect(&env)?;
        tracing::info!(
            "reporting to {} at {} ({}/{}){}",
            forge.name(),
            env.api,
            env.owner,
            env.repo,
            env.run_url
                .as_deref()
                .map(|u| format!(", run {u}"))
                .unwrap_or_default()
        );
        Ok(Reporter::new(env, forge, sha))
    }

    /// A reporter for `sha` over `forge` (the real one, or a double).
    pub fn new(env: Env, forge: Box<dyn Forge>, sha: &str) -> Reporter {
        Reporter {
            env,
            forge,
            sha: sha.to_string(),
            failed: Cell::new(false),
        }
    }

    /// Sets `fleetgate/<name>` on the commit; an error is returned.
    pub fn status(&self, name: &str, state: State, description: &str) -> Result<()> {
        tracing::debug!("status fleetgate/{name}: {} {description}", state.as_str());
        self.forge.set_status(
            &self.sha,
            &Status {
                context: format!("fleetgate/{name}"),
                state,
                description: description.to_string(),
                target_url: self.env.run_url.clone(),
            },
        )
    }

    /// Like [`Reporter::status`], but a failure is logged and remembered,
    /// not returned: the rollout goes on.
    pub fn try_status(&self, name: &str, state: State, description: &str) {
        if let Err(e) = self.status(name, state, description) {
            self.remember(&format!("set status fleetgate/{name}"), &e);
        }
    }

    /// Creates or edits the comment with `marker` on the pull request that
    /// merged this commit; logs when there is none (a direct push). Its
    /// page, when the run's page tells where the forge's pages are.
    pub fn try_comment_on_merged(&self, marker: &str, body: &str) -> Option<String> {
        let result = (|| {
            let Some(pull) = self.forge.merged_pull_of(&self.sha)? else {
                tracing::info!(
                    "{} came from no merged pull request: nobody to comment to",
                    report::short(&self.sha)
                );
                return Ok(None);
            };
            let body = format!("{marker}\n{body}");
            let body = super::clip(&body, self.forge.comment_limit());
            let (id, created) = super::upsert_comment(&*self.forge, pull.number, marker, &body)?;
            tracing::info!(
                "{} comment {id} on pull request #{}",
                if created { "posted" } else { "updated" },
                pull.number
            );
            Ok(self.comment_page(pull.number, id))
        })();
        result.unwrap_or_else(|e| {
            self.remember("comment on the merged pull request", &e);
            None
        })
    }

    /// `…/pulls/N#issuecomment-ID` (GitHub: `…/pull/N`), under the server
    /// of the run's page (`SERVER/OWNER/REPO/actions/runs/…`, checked by
    /// `forge::env`); None without a run page.
    pub fn comment_page(&self, pull: u64, id: u64) -> Option<String> {
        let repo = format!("/{}/{}", self.env.owner, self.env.repo);
        let run = self.env.run_url.as_deref()?;
        let (server, _) = run.split_once(&format!("{repo}/actions/runs/"))?;
        let pulls = match self.env.kind {
            Kind::Forgejo => "pulls",
            Kind::Github => "pull",
        };
        Some(format!("{server}{repo}/{pulls}/{pull}#issuecomment-{id}"))
    }

    fn remember(&self, what: &str, e: &crate::error::Error) {
        tracing::error!("could not {what} on {}: {e}", self.forge.name());
        self.failed.set(true);
    }

    /// Whether something could not be reported.
    pub fn failed(&self) -> bool {
        self.failed.get()
    }

    /// `[the job log](url)`, or plain words when the run URL is unknown.
    pub fn log_link(&self) -> String {
        match &self.env.run_url {
            Some(url) => format!("[the job log]({url})"),
            None => "the job log".into(),
        }
    }
}

/// The state of a status whose work stopped on `e`: invalid input is the
/// change's failure; anything else (unreachable, interrupted) an error.
pub fn error_state(e: &Error) -> State {
    match e.exit_code() {
        ExitCode::Invalid => State::Failure,
        _ => State::Error,
    }
}

/// `@alice, @bob`.
fn mentions(users: &[String]) -> String {
    users
        .iter()
        .map(|u| format!("@{u}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plan comment's last part: which stage deploys which clients after
/// the merge, and who approves and how.
pub fn after_merge(stages: &[Stage], plan: &Plan, kind: Kind) -> String {
    if plan.clients.is_empty() {
        return "Merging deploys nothing.\n".into();
    }
    let mut out = String::from("**After merge**, `fleetgate run` deploys stage by stage:\n\n");
    let mut first = true;
    for stage in stages {
        let clients: Vec<&str> = plan
            .clients
            .iter()
            .filter(|c| c.stage == stage.name)
            .map(|c| c.name.as_str())
            .collect();
        if clients.is_empty() {
            continue;
        }
        let when = match (&stage.approval, first) {
            (Some(a), _) => format!(
                "after an approval of plan `{}` by one of {}",
                crate::report::short(&plan.plan_hash),
                mentions(&a.approvers)
            ),
            (None, true) => "on merge".to_string(),
            (None, false) => "once the stages before it pass".to_string(),
        };
        let _ = writeln!(out, "- **{}** ({}): {when}", stage.name, clients.join(", "));
        first = false;
    }
    if stages.iter().any(|s| s.approval.is_some()) {
        out.push_str(match kind {
            Kind::Forgejo => "\nTo approve after merge: comment `/fleetgate approve` on this pull request, or run the promote workflow with the merge commit.\n",
            Kind::Github => "\nTo approve after merge: comment `/fleetgate approve` on this pull request, or approve the pending deployment of the environment.\n",
        });
    }
    out
}

pub fn waiting_marker(sha: &str) -> String {
    format!("<!-- fleetgate:waiting {sha} -->")
}

pub fn failed_marker(sha: &str) -> String {
    format!("<!-- fleetgate:failed {sha} -->")
}

/// How to approve a waiting stage, for comments and the log.
pub fn how_to_approve(kind: Kind, stage: &str, approvers: &[String], plan_hash: &str) -> String {
    let who = mentions(approvers);
    let mut out = format!(
        "**{stage}** waits for an approval of plan `{}` by one of {who}:\n\n",
        report::short(plan_hash)
    );
    let _ = writeln!(
        out,
        "- comment `/fleetgate approve {}` on this pull request, or",
        report::short(plan_hash)
    );
    match kind {
        Kind::Forgejo => {
            let _ = writeln!(
                out,
                "- run the **promote** workflow (Actions → promote → Run workflow) with `rev` set to the merge commit."
            );
        }
        Kind::Github => {
            let _ = writeln!(
                out,
                "- approve the pending `{stage}` deployment (Actions → this run → Review deployments)."
            );
        }
    }
    let _ = writeln!(
        out,
        "\nAn approval counts only for this plan: if the plan changes, approve again."
    );
    out
}

/// The comment when earlier stages passed and `stage` waits.
pub fn waiting_comment(
    kind: Kind,
    sha: &str,
    passed: &[StageOutcome],
    stage: &str,
    approvers: &[String],
    plan_hash: &str,
    log: &str,
) -> String {
    let mut out = format!(
        "### fleetgate: `{}` waits for approval\n\n",
        report::short(sha)
    );
    for o in passed {
        let _ = writeln!(
            out,
            "**{}** passed on {} host(s).\n\n```\n{}```\n",
            o.stage,
            o.hosts.len(),
            report::outcome(o, OutcomeFormat::Text)
        );
    }
    out.push_str(&how_to_approve(kind, stage, approvers, plan_hash));
    let _ = writeln!(out, "\nDetails: {log}.");
    out
}

/// The comment when a stage failed: the gate, the hosts rolled back, and
/// the revert commit or what stopped it.
pub fn failure_comment(
    sha: &str,
    outcome: &StageOutcome,
    gate: Option<&FailedGate>,
    revert: Option<&RevertOutcome>,
    log: &str,
) -> String {
    let mut out = format!(
        "### fleetgate: `{}` failed in **{}**\n\n",
        report::short(sha),
        outcome.stage
    );
    if let Some(g) = gate {
        let _ = writeln!(
            out,
            "Failed gate: `{}` of **{}** on `{}`: {}\n",
            g.check, g.client, g.host, g.detail
        );
    }
    let rolled: Vec<String> = outcome
        .hosts
        .iter()
        .filter(|h| h.status == HostStatus::RolledBack)
        .map(|h| format!("`{}` ({})", h.host, h.client))
        .collect();
    if rolled.is_empty() {
        let _ = writeln!(out, "No host was rolled back.\n");
    } else {
        let _ = writeln!(
            out,
            "Rolled back to their previous release: {}.\n",
            rolled.join(", ")
        );
    }
    let lost: Vec<String> = outcome
        .lost()
        .iter()
        .map(|h| format!("`{}` ({})", h.host, h.client))
        .collect();
    if !lost.is_empty() {
        let _ = writeln!(
            out,
            "**Not rolled back**, lost during the change: {}. They may run the new release without its gates passed: check them, then run again.\n",
            lost.join(", ")
        );
    }
    let frozen = outcome.frozen();
    if !frozen.is_empty() {
        let _ = writeln!(
            out,
            "Left on the failed release (`rollback: freeze`): {}. A human decides.\n",
            frozen.join(", ")
        );
    }
    for (apps, image, command) in outcome.restores() {
        let _ = writeln!(
            out,
            "Snapshot {image} was taken before {apps} changed. To put the whole server back on it (approval as for production):\n\n```\n{command}\n```\n"
        );
    }
    for (app, id, command) in outcome.backup_restores() {
        let _ = writeln!(
            out,
            "Backup {id} was taken before {app} changed. To put its data back (approval as for production):\n\n```\n{command}\n```\n"
        );
    }
    match revert {
        Some(RevertOutcome::Pushed { commit, .. }) => {
            let _ = writeln!(
                out,
                "The change is reverted on the branch by {commit}: Git and the fleet agree again."
            );
        }
        Some(RevertOutcome::Conflict { tip, paths, .. }) => {
            let _ = writeln!(
                out,
                "**Could not revert automatically**: later commits (branch at {}) touch {}. The hosts stay rolled back; revert by hand.",
                report::short(tip),
                paths
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Some(RevertOutcome::NothingToRevert { why, .. }) => {
            let _ = writeln!(out, "Nothing was reverted in Git: {why}.");
        }
        Some(RevertOutcome::NotOnBranch { tip, .. }) => {
            let _ = writeln!(
                out,
                "The commit is no longer on the branch (now {}): nothing reverted.",
                report::short(tip)
            );
        }
        None => {
            let _ = writeln!(out, "Nothing was reverted in Git.");
        }
    }
    // The logs once, in their own blocks below, not in the table's text.
    let mut table = outcome.clone();
    for h in &mut table.hosts {
        h.logs.clear();
    }
    let _ = writeln!(
        out,
        "\n```\n{}```\n",
        report::outcome(&table, OutcomeFormat::Text)
    );
    out.push_str(&logs_markdown(sha, outcome, log));
    let _ = writeln!(out, "Details: {log}.");
    out
}

/// Characters the failed apps' logs may take in a failure comment: every
/// app's at most `LOG_BYTES`, and all of them well within the forges'
/// 65 536 with the rest of the comment.
const LOGS_BUDGET: usize = 32 * 1024;

/// A collapsed block per failed host and app with its last log lines, as
/// many as fit in [`LOGS_BUDGET`]; the others are named, with where to
/// read them.
fn logs_markdown(sha: &str, outcome: &StageOutcome, log: &str) -> String {
    let mut out = String::new();
    let mut left = LOGS_BUDGET;
    for h in &outcome.hosts {
        for (app, text) in &h.logs {
            let lines = text.lines().count();
            let block = format!(
                "<details><summary>Last log lines of <code>{app}</code> on <code>{}</code> ({lines} line{})</summary>\n\n```text\n{}```\n\n</details>\n\n",
                h.host,
                if lines == 1 { "" } else { "s" },
                report::fence_safe(text)
            );
            let size = block.chars().count();
            if size <= left {
                left -= size;
                out.push_str(&block);
            } else {
                let _ = writeln!(
                    out,
                    "The last log lines of `{app}` on `{}` do not fit in this comment: see {log}, or the run record (`git notes --ref fleetgate show {sha}`).\n",
                    h.host
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::core::outcome::{
        Backup, HostOutcome, HostStatus, Runs, StageOutcome, backup_restore_command,
        restore_command,
    };

    /// A canary stage at 222… that failed on this one host.
    fn failed_canary(host: HostOutcome) -> StageOutcome {
        StageOutcome {
            stage: "canary".into(),
            rev: "2".repeat(40),
            passed: false,
            interrupted: false,
            failed_hosts: 1,
            max_failures: 0,
            rolled_back: false,
            hosts: vec![host],
        }
    }

    #[test]
    fn a_frozen_app_with_a_backup_names_the_backup_and_its_restore() {
        let mut host = HostOutcome::new(
            "alpha",
            "alpha-1",
            HostStatus::Failed,
            [("web".to_string(), Runs::Release("2".repeat(40)))].into(),
        );
        host.frozen = vec!["web".into()];
        host.backups.insert(
            "web".into(),
            Backup {
                id: "4f2a9c1e".into(),
                seconds: 1.0,
                restore: Some(backup_restore_command(
                    "alpha", "web", "alpha-1", "4f2a9c1e",
                )),
            },
        );
        let outcome = failed_canary(host);
        let body = super::failure_comment(&"2".repeat(40), &outcome, None, None, "http://log");
        assert!(
            body.contains("Backup 4f2a9c1e was taken before alpha/web@alpha-1 changed")
                && body.contains(
                    "```\nfleetgate restore --client alpha --app web --host alpha-1 --backup 4f2a9c1e\n```"
                ),
            "{body}"
        );
    }

    #[test]
    fn a_frozen_app_on_a_snapshotted_server_names_the_snapshot_and_the_restore() {
        let mut host = HostOutcome::new(
            "alpha",
            "alpha-1",
            HostStatus::Failed,
            [("web".to_string(), Runs::Release("2".repeat(40)))].into(),
        );
        host.frozen = vec!["web".into()];
        host.snapshot = Some(77);
        host.restore = Some(restore_command("alpha", "alpha-1", 77));
        let outcome = failed_canary(host);
        let body = super::failure_comment(&"2".repeat(40), &outcome, None, None, "http://log");
        assert!(
            body.contains("Snapshot 77 was taken before alpha/web@alpha-1 changed")
                && body.contains(
                    "```\nfleetgate restore --client alpha --host alpha-1 --snapshot 77\n```"
                ),
            "{body}"
        );
    }

    /// Each failed host's app logs in a collapsed block, fenced; the table
    /// does not repeat them; past the budget an app's logs are named, not
    /// shown, and the comment stays within the forges' limit.
    #[test]
    fn the_failure_comment_shows_the_failed_apps_logs_within_the_limit() {
        let failed = |host: &str, logs: &str| {
            let mut h = HostOutcome::new(
                "alpha",
                host,
                HostStatus::RolledBack,
                [("web".to_string(), Runs::AsBefore)].into(),
            );
            h.logs = [("web".to_string(), logs.to_string())].into();
            h
        };
        let outcome = |hosts| StageOutcome {
            stage: "canary".into(),
            rev: "2".repeat(40),
            passed: false,
            interrupted: false,
            failed_hosts: 1,
            max_failures: 0,
            rolled_back: true,
            hosts,
        };
        let sha = "2".repeat(40);
        let o = outcome(vec![failed(
            "alpha-1",
            "listening on :8080\n```\npanic: no db",
        )]);
        let body = super::failure_comment(&sha, &o, None, None, "http://log");
        assert!(
            body.contains(
                "<details><summary>Last log lines of <code>web</code> on <code>alpha-1</code> (3 lines)</summary>\n\n```text\nlistening on :8080\n`\u{200b}``\npanic: no db\n```\n\n</details>\n"
            ),
            "{body}"
        );
        assert_eq!(body.matches("panic: no db").count(), 1, "{body}");
        assert!(body.ends_with("Details: http://log.\n"), "{body}");

        // Twenty hosts with 8 KiB of logs each.
        let big: String = (0..100)
            .map(|i| format!("{i:02} {}\n", "z".repeat(76)))
            .collect();
        let hosts = (1..=20)
            .map(|i| failed(&format!("alpha-{i}"), &big))
            .collect();
        let body = super::failure_comment(&sha, &outcome(hosts), None, None, "http://log");
        assert!(body.chars().count() < 65_536, "{}", body.len());
        assert!(body.contains("on <code>alpha-1</code>"), "{body}");
        assert!(
            body.contains(&format!("The last log lines of `web` on `alpha-20` do not fit in this comment: see http://log, or the run record (`git notes --ref fleetgate show {sha}`).")),
            "{body}"
        );
    }
}
