//! What the pipeline tells webhooks (`notify:` in `pipeline.yaml`): one
//! typed [`Event`] per thing that happened, built from the outcome data
//! only (outcomes carry no secret values), and its two payloads — generic
//! JSON and the Slack/Mattermost incoming-webhook `{"text"}`. Pure: the
//! engine decides which event fires, `notify/` sends it.
//!
//! The words never claim what did not happen: a failed stage is never a
//! success, a host is "rolled back" only when its outcome says so, and one
//! the change left in an unknown state is named as such.

use serde::Serialize;
use serde_json::{Value, json};

use crate::core::outcome::{
    FailedGate, HostOutcome, HostStatus, RevertOutcome, Runs, StageOutcome,
};
use crate::core::rev::short;
use crate::core::verdict::StageVerdict;

/// The payload schema version (`"schema": 1`).
pub const SCHEMA: u32 = 1;

/// The longest text of one field a payload carries (summaries, names):
/// a webhook is a notification, the job log has the rest.
pub const TEXT_LIMIT: usize = 1000;

/// The most hosts one payload lists (the count is in the summary).
pub const HOST_LIMIT: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A stage passed (its tolerated failures, if any, in the summary).
    StagePassed,
    /// A stage waits for an approval.
    WaitingApproval,
    /// A stage failed: each host rolled back, or not, or unknown.
    FailedRolledBack,
    /// The failed change was reverted on the branch.
    Reverted,
    /// A `rollback: freeze` app was left on the failed release.
    Frozen,
    /// A scheduled check (image scan, drift) found something.
    CheckFailed,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::StagePassed,
        EventKind::WaitingApproval,
        EventKind::FailedRolledBack,
        EventKind::Reverted,
        EventKind::Frozen,
        EventKind::CheckFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::StagePassed => "stage_passed",
            EventKind::WaitingApproval => "waiting_approval",
            EventKind::FailedRolledBack => "failed_rolled_back",
            EventKind::Reverted => "reverted",
            EventKind::Frozen => "frozen",
            EventKind::CheckFailed => "check_failed",
        }
    }

    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Whether it is good news (the Slack payload's mark).
    fn good(self) -> bool {
        self == EventKind::StagePassed
    }
}

/// One host as a notification lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostLine {
    pub client: String,
    pub host: String,
    /// `deployed`, `unchanged`, `rolled_back`, `not_rolled_back`, `frozen`,
    /// `unknown` (lost during the change: may run the new release), or
    /// `not_started`.
    pub status: String,
}

impl HostLine {
    pub fn of(h: &HostOutcome) -> HostLine {
        let status = if h.runs.values().any(|r| *r == Runs::Unknown) {
            "unknown"
        } else {
            match h.status {
                HostStatus::Deployed => "deployed",
                HostStatus::Unchanged => "unchanged",
                HostStatus::RolledBack => "rolled_back",
                HostStatus::NotStarted => "not_started",
                HostStatus::Failed if !h.frozen.is_empty() => "frozen",
                HostStatus::Failed => "not_rolled_back",
            }
        };
        HostLine {
            client: h.client.clone(),
            host: h.host.clone(),
            status: status.to_string(),
        }
    }
}

/// What happened, for the webhooks. Build it with the constructors; the
/// engine adds the comment URL when the forge comment was posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// One line that says exactly what happened.
    pub summary: String,
    pub stage: Option<String>,
    /// The full commit id.
    pub rev: Option<String>,
    pub clients: Vec<String>,
    pub hosts: Vec<HostLine>,
    /// The CI run's page.
    pub run_url: Option<String>,
    /// The forge comment about it (waiting, failure), when one was posted.
    pub comment_url: Option<String>,
    /// `reverted`: the revert commit.
    pub revert_commit: Option<String>,
}

fn clients_of(outcome: &StageOutcome) -> Vec<String> {
    let mut clients: Vec<String> = outcome.hosts.iter().map(|h| h.client.clone()).collect();
    clients.sort();
    clients.dedup();
    clients
}

fn names(hosts: &[&HostLine]) -> String {
    hosts
        .iter()
        .map(|h| h.host.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Event {
    fn about(kind: EventKind, outcome: &StageOutcome, summary: String) -> Event {
        Event {
            kind,
            summary,
            stage: Some(outcome.stage.clone()),
            rev: Some(outcome.rev.clone()),
            clients: clients_of(outcome),
            hosts: outcome.hosts.iter().map(HostLine::of).collect(),
            run_url: None,
            comment_url: None,
            revert_commit: None,
        }
    }

    /// A stage that passed (with `max_failures` failures tolerated, if any).
    pub fn stage_passed(outcome: &StageOutcome) -> Event {
        let deployed = outcome.hosts.iter().filter(|h| h.failure.is_none()).count();
        let tolerated: Vec<&str> = outcome
            .failed()
            .map(|h| h.host.as_str())
            .collect::<Vec<_>>();
        let mut summary = format!(
            "stage {} passed at {}: {deployed} of {} host(s) deployed, every gate passed",
            outcome.stage,
            short(&outcome.rev),
            outcome.hosts.len()
        );
        if !tolerated.is_empty() {
            summary = format!(
                "stage {} passed at {}: {deployed} of {} host(s) deployed; {} failure(s) tolerated (max_failures {}): {}",
                outcome.stage,
                short(&outcome.rev),
                outcome.hosts.len(),
                tolerated.len(),
                outcome.max_failures,
                tolerated.join(", ")
            );
        }
        Event::about(EventKind::StagePassed, outcome, summary)
    }

    /// A stage waiting for an approval of `plan_hash` by one of `approvers`.
    pub fn waiting_approval(
        stage: &str,
        rev: &str,
        clients: &[String],
        approvers: &[String],
        plan_hash: &str,
    ) -> Event {
        Event {
            kind: EventKind::WaitingApproval,
            summary: format!(
                "stage {stage} waits for an approval of plan {} at {} by one of: {}; nothing deployed in it yet",
                short(plan_hash),
                short(rev),
                approvers.join(", ")
            ),
            stage: Some(stage.to_string()),
            rev: Some(rev.to_string()),
            clients: clients.to_vec(),
            hosts: Vec::new(),
            run_url: None,
            comment_url: None,
            revert_commit: None,
        }
    }

    /// A stage that failed (a gate, or hosts that could not be reached):
    /// which hosts are rolled back, which are not, which are unknown; and
    /// what became of the revert, when one was tried.
    pub fn failed(
        outcome: &StageOutcome,
        gate: Option<&FailedGate>,
        revert: Option<&RevertOutcome>,
    ) -> Event {
        let mut event = Event::about(EventKind::FailedRolledBack, outcome, String::new());
        let with = |s: &str| {
            event
                .hosts
                .iter()
                .filter(|h| h.status == s)
                .collect::<Vec<_>>()
        };
        let (back, not_back, unknown) = (
            with("rolled_back"),
            with("not_rolled_back"),
            with("unknown"),
        );
        let why = match gate {
            Some(g) => format!("{} failed on {}: {}", g.check, g.host, g.detail),
            None => "hosts could not be reached".to_string(),
        };
        let mut state = Vec::new();
        if !back.is_empty() {
            state.push(format!("rolled back: {}", names(&back)));
        }
        if !not_back.is_empty() {
            state.push(format!("NOT rolled back: {}", names(&not_back)));
        }
        if !unknown.is_empty() {
            state.push(format!(
                "state UNKNOWN (lost during the change, may run it un-gated): {}",
                names(&unknown)
            ));
        }
        if state.is_empty() {
            state.push("no host was changed".to_string());
        }
        let revert = match revert {
            Some(RevertOutcome::Pushed { commit, .. }) => {
                format!("; reverted with {}", short(commit))
            }
            Some(RevertOutcome::Conflict { paths, .. }) => format!(
                "; the revert conflicts ({}): revert by hand",
                paths.join(", ")
            ),
            Some(RevertOutcome::NothingToRevert { .. }) => "; nothing to revert".to_string(),
            Some(RevertOutcome::NotOnBranch { .. }) => {
                "; not reverted: the commit is no longer on the branch".to_string()
            }
            None => String::new(),
        };
        event.summary = format!(
            "stage {} FAILED at {}: {why}; {}{revert}",
            outcome.stage,
            short(&outcome.rev),
            state.join("; ")
        );
        event
    }

    /// The revert of a failed change, pushed to `branch`.
    pub fn reverted(outcome: &StageOutcome, branch: &str, revert: &RevertOutcome) -> Option<Event> {
        let RevertOutcome::Pushed {
            commit,
            failed_gate,
            ..
        } = revert
        else {
            return None;
        };
        let mut event = Event::about(
            EventKind::Reverted,
            outcome,
            format!(
                "reverted {} on {branch} with {} after {failed_gate} failed; the hosts already run the previous release",
                short(&outcome.rev),
                short(commit)
            ),
        );
        event.revert_commit = Some(commit.clone());
        Some(event)
    }

    /// A stage that failed with `rollback: freeze` apps left on the failed
    /// release: not rolled back, not reverted.
    pub fn frozen(outcome: &StageOutcome) -> Event {
        let mut summary = format!(
            "stage {} FAILED at {}: `rollback: freeze` app(s) left on the failed release, NOT rolled back: {}; nothing reverted, a human decides",
            outcome.stage,
            short(&outcome.rev),
            outcome.frozen().join(", ")
        );
        for (apps, _, command) in outcome.restores() {
            summary.push_str(&format!("; to restore {apps}: {command}"));
        }
        Event::about(EventKind::Frozen, outcome, summary)
    }

    /// A scheduled check that found something: `check` names it (`scan`,
    /// `drift`), `summary` says what, `clients` are those concerned. For
    /// the scheduled checks' commands (`notify::send`).
    pub fn check_failed(check: &str, summary: &str, clients: &[String]) -> Event {
        Event {
            kind: EventKind::CheckFailed,
            summary: format!("{check}: {summary}"),
            stage: None,
            rev: None,
            clients: clients.to_vec(),
            hosts: Vec::new(),
            run_url: None,
            comment_url: None,
            revert_commit: None,
        }
    }

    /// What a stage outcome alone says (`deploy`: no approval, no revert):
    /// passed, failed, frozen; nothing for an interrupted stage.
    pub fn of_stage(outcome: &StageOutcome) -> Option<Event> {
        match crate::core::verdict::verdict(outcome) {
            StageVerdict::Passed => Some(Event::stage_passed(outcome)),
            StageVerdict::ChangeFailed => Some(Event::failed(
                outcome,
                FailedGate::of(outcome).as_ref(),
                None,
            )),
            StageVerdict::InfraFailed => Some(Event::failed(outcome, None, None)),
            StageVerdict::Frozen => Some(Event::frozen(outcome)),
            StageVerdict::Interrupted => None,
        }
    }

    pub fn with_run_url(mut self, url: Option<&str>) -> Event {
        self.run_url = url.map(str::to_string);
        self
    }

    pub fn with_comment_url(mut self, url: Option<String>) -> Event {
        self.comment_url = url;
        self
    }

    /// Every text passed through `mask` and clipped to [`TEXT_LIMIT`],
    /// at most [`HOST_LIMIT`] hosts: what a payload is built from.
    pub fn masked(&self, mask: &dyn Fn(&str) -> String) -> Event {
        let m = |s: &str| clip(&mask(s), TEXT_LIMIT);
        let mo = |s: &Option<String>| s.as_deref().map(m);
        Event {
            kind: self.kind,
            summary: m(&self.summary),
            stage: mo(&self.stage),
            rev: mo(&self.rev),
            clients: self.clients.iter().map(|c| m(c)).collect(),
            hosts: self
                .hosts
                .iter()
                .take(HOST_LIMIT)
                .map(|h| HostLine {
                    client: m(&h.client),
                    host: m(&h.host),
                    status: h.status.clone(),
                })
                .collect(),
            run_url: mo(&self.run_url),
            comment_url: mo(&self.comment_url),
            revert_commit: mo(&self.revert_commit),
        }
    }

    /// The generic JSON payload.
    pub fn json(&self) -> Value {
        let mut v = json!({
            "schema": SCHEMA,
            "event": self.kind,
            "summary": self.summary,
            "stage": self.stage,
            "rev": self.rev,
            "rev_short": self.rev.as_deref().map(short),
            "clients": self.clients,
            "hosts": self.hosts,
            "run_url": self.run_url,
            "comment_url": self.comment_url,
        });
        if let Some(commit) = &self.revert_commit {
            v["revert_commit"] = json!(commit);
        }
        v
    }

    /// The Slack (and Mattermost) incoming-webhook payload: `{"text"}` in
    /// mrkdwn, every text escaped.
    pub fn slack(&self) -> Value {
        let mark = match self.kind {
            k if k.good() => ":white_check_mark:",
            EventKind::WaitingApproval => ":hourglass:",
            EventKind::Reverted => ":leftwards_arrow_with_hook:",
            _ => ":x:",
        };
        let mut text = format!(
            "{mark} *fleetgate {}*: {}",
            self.kind.as_str(),
            escape(&self.summary)
        );
        for h in &self.hosts {
            text.push_str(&format!(
                "\n• {} ({}): {}",
                escape(&h.host),
                escape(&h.client),
                h.status
            ));
        }
        let mut links = Vec::new();
        if let Some(url) = &self.run_url {
            links.push(format!("<{}|run>", escape(url)));
        }
        if let Some(url) = &self.comment_url {
            links.push(format!("<{}|comment>", escape(url)));
        }
        if !links.is_empty() {
            text.push('\n');
            text.push_str(&links.join(" · "));
        }
        json!({ "text": text })
    }
}

/// Slack's mrkdwn control characters.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::outcome::{Failure, FailureKind};
    use std::collections::BTreeMap;

    const REV: &str = "0123456789abcdef0123456789abcdef01234567";

    fn host(client: &str, name: &str, status: HostStatus) -> HostOutcome {
        let mut h = HostOutcome::new(client, name, status, BTreeMap::new());
        if status != HostStatus::Deployed {
            h.failure = Some(Failure {
                kind: FailureKind::Health,
                app: Some("web".into()),
                step: "health".into(),
                message: "502".into(),
            });
        }
        h
    }

    fn stage(hosts: Vec<HostOutcome>) -> StageOutcome {
        StageOutcome {
            stage: "canary".into(),
            rev: REV.into(),
            passed: false,
            interrupted: false,
            failed_hosts: 0,
            max_failures: 0,
            rolled_back: true,
            hosts,
        }
    }

    #[test]
    fn names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            assert_eq!(json!(k), json!(k.as_str()));
        }
        assert_eq!(EventKind::parse("passed"), None);
    }

    #[test]
    fn a_failure_says_rolled_back_or_not_per_host() {
        let mut lost = host("b", "b-1", HostStatus::Failed);
        lost.runs.insert("web".into(), Runs::Unknown);
        let o = stage(vec![
            host("a", "a-1", HostStatus::RolledBack),
            host("a", "a-2", HostStatus::Failed),
            lost,
        ]);
        let gate = FailedGate::of(&o);
        let e = Event::failed(&o, gate.as_ref(), None);
        assert_eq!(e.kind, EventKind::FailedRolledBack);
        assert!(
            e.summary
                .starts_with("stage canary FAILED at 0123456789ab: web:health failed on a-1: 502;"),
            "{}",
            e.summary
        );
        assert!(
            e.summary
                .contains("; rolled back: a-1; NOT rolled back: a-2; state UNKNOWN"),
            "{}",
            e.summary
        );
        assert!(!e.summary.contains("passed"));
        let v = e.json();
        assert_eq!(v["event"], "failed_rolled_back");
        assert_eq!(v["schema"], 1);
        assert_eq!(v["rev"], REV);
        assert_eq!(v["rev_short"], "0123456789ab");
        assert_eq!(v["clients"], json!(["a", "b"]));
        assert_eq!(
            v["hosts"],
            json!([
                {"client": "a", "host": "a-1", "status": "rolled_back"},
                {"client": "a", "host": "a-2", "status": "not_rolled_back"},
                {"client": "b", "host": "b-1", "status": "unknown"},
            ])
        );
        assert_eq!(v["comment_url"], Value::Null);
    }

    #[test]
    fn passed_reverted_frozen_waiting() {
        let mut o = stage(vec![host("a", "a-1", HostStatus::Deployed)]);
        o.passed = true;
        let e = Event::stage_passed(&o).with_run_url(Some("https://f.example/o/r/actions/runs/3"));
        assert_eq!(
            e.summary,
            "stage canary passed at 0123456789ab: 1 of 1 host(s) deployed, every gate passed"
        );
        assert_eq!(e.json()["run_url"], "https://f.example/o/r/actions/runs/3");
        let revert = RevertOutcome::Pushed {
            commit: "fedcba9876543210fedcba9876543210fedcba98".into(),
            onto: REV.into(),
            reverts: vec![REV.into()],
            failed_gate: "canary/a/web:health".into(),
        };
        let r = Event::reverted(&o, "main", &revert).expect("pushed");
        assert_eq!(
            r.json()["revert_commit"],
            "fedcba9876543210fedcba9876543210fedcba98"
        );
        assert!(r.summary.starts_with(
            "reverted 0123456789ab on main with fedcba987654 after canary/a/web:health failed"
        ));
        let conflict = RevertOutcome::NothingToRevert {
            tip: REV.into(),
            failed_gate: "x".into(),
            why: "y".into(),
        };
        assert_eq!(Event::reverted(&o, "main", &conflict), None);
        let mut f = host("a", "a-1", HostStatus::Failed);
        f.frozen = vec!["db".into()];
        let e = Event::frozen(&stage(vec![f]));
        assert!(
            e.summary.contains("NOT rolled back: a/db@a-1"),
            "{}",
            e.summary
        );
        assert_eq!(e.hosts[0].status, "frozen");
        let w = Event::waiting_approval(
            "production",
            REV,
            &["a".into()],
            &["alice".into()],
            "abcdef0123456789",
        );
        assert_eq!(w.json()["event"], "waiting_approval");
        assert!(w.summary.contains("by one of: alice"));
    }

    #[test]
    fn slack_is_escaped_masked_and_linked() {
        let e = Event::check_failed("scan", "<script> & hunter2", &["a".into()])
            .with_run_url(Some("https://f.example/run/1"))
            .with_comment_url(Some("https://f.example/pr/2#c".into()));
        let e = e.masked(&|s: &str| s.replace("hunter2", "••••"));
        let v = e.slack();
        let text = v["text"].as_str().unwrap();
        assert_eq!(
            text,
            ":x: *fleetgate check_failed*: scan: &lt;script&gt; &amp; ••••\n<https://f.example/run/1|run> · <https://f.example/pr/2#c|comment>"
        );
        assert_eq!(v.as_object().unwrap().len(), 1);
        let long =
            Event::check_failed("scan", &"x".repeat(5000), &[]).masked(&|s: &str| s.to_string());
        assert_eq!(long.summary.chars().count(), TEXT_LIMIT);
    }
}
