//! The pipeline's decisions, as pure functions over the run record: which
//! approval counts, and what a stage's outcome means for the run. The
//! driving (Git, hosts, the lock) is in `commands/run.rs`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::deploy::StageOutcome;

/// One approval as recorded in the note on the head commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub by: String,
    /// RFC 3339.
    pub at: String,
    pub plan_hash: String,
    /// `cli` (`fleetgate approve`); the forge adds `comment`, `dispatch`, `environment`.
    pub source: String,
}

/// The approvals recorded in a note.
pub fn approvals(note: &Value) -> Vec<Approval> {
    note.get("approvals")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default()
}

/// The first approval that counts for a stage: given for this exact plan,
/// by one of the stage's approvers.
pub fn counting_approval(note: &Value, plan_hash: &str, approvers: &[String]) -> Option<Approval> {
    approvals(note)
        .into_iter()
        .find(|a| a.plan_hash == plan_hash && approvers.contains(&a.by))
}

/// Adds `approval` unless the same person already approved the same plan.
pub fn add_approval(note: &mut Value, approval: &Approval) {
    let mut list = approvals(note);
    if !list
        .iter()
        .any(|a| a.by == approval.by && a.plan_hash == approval.plan_hash)
    {
        list.push(approval.clone());
    }
    note["approvals"] = serde_json::to_value(list).expect("approvals serialise");
}

/// What a deployed stage means for the rest of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageVerdict {
    /// Every host passed: go on to the next stage.
    Passed,
    /// The change failed a gate (health or a remote command): roll back
    /// (done by the stage) and revert.
    ChangeFailed,
    /// Hosts could not be reached: not the change's fault, nothing to revert.
    InfraFailed,
    /// Stopped by a signal before every host was started.
    Interrupted,
    /// A `freeze` app was left on the failed release: a human decides.
    Frozen,
}

pub fn verdict(outcome: &StageOutcome) -> StageVerdict {
    if outcome.passed {
        StageVerdict::Passed
    } else if !outcome.frozen().is_empty() {
        StageVerdict::Frozen
    } else if outcome.interrupted {
        StageVerdict::Interrupted
    } else if crate::revert::FailedGate::of(outcome).is_some() {
        StageVerdict::ChangeFailed
    } else {
        StageVerdict::InfraFailed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn approval(by: &str, hash: &str) -> Approval {
        Approval {
            by: by.into(),
            at: "2026-11-23T10:00:00Z".into(),
            plan_hash: hash.into(),
            source: "cli".into(),
        }
    }

    #[test]
    fn only_an_approver_of_this_exact_plan_counts() {
        let mut note = json!({"approvals": []});
        add_approval(&mut note, &approval("mallory", "h2"));
        add_approval(&mut note, &approval("alice", "h1"));
        let approvers = vec!["alice".to_string(), "bob".to_string()];
        assert_eq!(counting_approval(&note, "h2", &approvers), None);
        assert_eq!(
            counting_approval(&note, "h1", &approvers).map(|a| a.by),
            Some("alice".to_string())
        );
        add_approval(&mut note, &approval("bob", "h2"));
        assert_eq!(
            counting_approval(&note, "h2", &approvers).map(|a| a.by),
            Some("bob".to_string())
        );
    }

    #[test]
    fn approving_twice_records_once() {
        let mut note = json!({});
        add_approval(&mut note, &approval("alice", "h1"));
        add_approval(&mut note, &approval("alice", "h1"));
        assert_eq!(approvals(&note).len(), 1);
    }
}
