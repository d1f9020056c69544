//! What the fleet really runs, recorded in Git (design.md §3):
//! `refs/fleetgate/deployed/<stage>/<client>` points at the commit a client
//! last passed its gates with in that stage, and `refs/notes/fleetgate` holds
//! one JSON record per head commit with every stage's per-host outcome.
//!
//! Local only for now: pushing both to the remote (with expected old values)
//! comes with the pipeline (`run`).

use git2::Oid;
use serde_json::{Value, json};

use crate::deploy::{HostStatus, StageOutcome};
use crate::error::{Error, Result};
use crate::repo::{CommitId, Repo};

pub const NOTES_REF: &str = "refs/notes/fleetgate";

pub fn deployed_ref(stage: &str, client: &str) -> String {
    format!("refs/fleetgate/deployed/{stage}/{client}")
}

/// Clients whose every host passed (deployed, or already live and verified).
pub fn passed_clients(outcome: &StageOutcome) -> Vec<String> {
    let mut clients: Vec<String> = outcome.hosts.iter().map(|h| h.client.clone()).collect();
    clients.sort();
    clients.dedup();
    clients.retain(|c| {
        outcome
            .hosts
            .iter()
            .filter(|h| &h.client == c)
            .all(|h| matches!(h.status, HostStatus::Deployed | HostStatus::Unchanged))
    });
    clients
}

/// Moves the deployed refs of the clients that passed, and writes the
/// stage's outcome into the note on `rev`. Returns the refs moved.
pub fn record_stage(repo: &Repo, rev: CommitId, outcome: &StageOutcome) -> Result<Vec<String>> {
    let git = repo.git();
    let mut moved = Vec::new();
    if outcome.passed {
        for client in passed_clients(outcome) {
            let name = deployed_ref(&outcome.stage, &client);
            git.reference(
                &name,
                rev.0,
                true,
                &format!("fleetgate: {} passed {}", client, outcome.stage),
            )
            .map_err(|e| Error::git(format!("update {name}"), e))?;
            moved.push(name);
        }
    }
    let mut note = read_note(repo, rev)?
        .unwrap_or_else(|| json!({"schema": 1, "head": rev.to_string(), "stages": {}}));
    let stage = serde_json::to_value(outcome).expect("an outcome serialises");
    if !note["stages"].is_object() {
        note["stages"] = json!({});
    }
    note["stages"][&outcome.stage] = stage;
    write_note(repo, rev, &note)?;
    Ok(moved)
}

pub fn read_note(repo: &Repo, rev: CommitId) -> Result<Option<Value>> {
    match repo.git().find_note(Some(NOTES_REF), rev.0) {
        Ok(note) => Ok(note
            .message()
            .ok()
            .and_then(|m| serde_json::from_str(m).ok())),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
        Err(e) => Err(Error::git(format!("read the note on {rev}"), e)),
    }
}

fn write_note(repo: &Repo, rev: CommitId, note: &Value) -> Result<Oid> {
    let git = repo.git();
    let sig = git
        .signature()
        .or_else(|_| git2::Signature::now("fleetgate", "fleetgate@localhost"))
        .map_err(|e| Error::git("make a signature", e))?;
    let text = serde_json::to_string_pretty(note).expect("a note serialises");
    git.note(&sig, &sig, Some(NOTES_REF), rev.0, &text, true)
        .map_err(|e| Error::git(format!("write the note on {rev}"), e))
}
