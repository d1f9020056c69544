//! What the fleet really runs, recorded in Git (design.md §3):
//! `refs/fleetgate/deployed/<stage>/<client>` points at the commit a client
//! last passed its gates with in that stage, and `refs/notes/fleetgate` holds
//! one JSON record per head commit: plan hash, every stage's per-host
//! outcome, approvals, the revert.
//!
//! With a remote, every change is a read-modify-write of the remote's
//! records: fetch, edit, push with the values just read as expected; when
//! another runner got there first, fetch again and re-apply the edit.

use std::time::Duration;

use git2::Oid;
use serde_json::{Value, json};

use crate::deploy::{HostStatus, StageOutcome};
use crate::error::{Error, Result};
use crate::origin::{Origin, Pushed, Update};
use crate::repo::{CommitId, Repo};

pub const NOTES_REF: &str = "refs/notes/fleetgate";

/// How often a rejected push is re-read and retried.
const ATTEMPTS: u32 = 8;

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

/// The deployed refs a stage's outcome moves to its rev: clients whose hosts
/// all run it and passed (a rolled-back host is `RolledBack`, so a failed
/// stage moves nothing it undid; an interrupted one keeps what finished).
pub fn moved_refs(outcome: &StageOutcome) -> Vec<String> {
    passed_clients(outcome)
        .iter()
        .map(|c| deployed_ref(&outcome.stage, c))
        .collect()
}

/// The records of one repository, pushed to `origin` when there is one.
pub struct Records<'r> {
    repo: &'r Repo,
    origin: Option<&'r Origin>,
}

impl<'r> Records<'r> {
    pub fn new(repo: &'r Repo, origin: Option<&'r Origin>) -> Records<'r> {
        Records { repo, origin }
    }

    /// The note on `rev` as the remote has it now.
    pub fn read(&self, rev: CommitId) -> Result<Option<Value>> {
        if let Some(origin) = self.origin {
            origin.fetch_records()?;
        }
        read_note(self.repo, rev)
    }

    /// Applies `edit` to the note on `rev` and points `refs` at `rev`, on the
    /// remote too; retried on a fresh read when another runner pushed first.
    pub fn update(
        &self,
        rev: CommitId,
        refs: &[String],
        edit: impl Fn(&mut Value),
    ) -> Result<Value> {
        for attempt in 1..=ATTEMPTS {
            if let Some(origin) = self.origin {
                origin.fetch_records()?;
            }
            let git = self.repo.git();
            let current = |name: &str| git.refname_to_id(name).ok();
            let notes_before = current(NOTES_REF);
            let mut updates: Vec<Update> = refs
                .iter()
                .map(|name| Update {
                    name: name.clone(),
                    new: Some(rev.0),
                    expected: current(name),
                })
                .collect();
            let mut note = read_note(self.repo, rev)?.unwrap_or_else(|| new_note(rev));
            edit(&mut note);
            write_note(self.repo, rev, &note)?;
            for u in &updates {
                git.reference(&u.name, rev.0, true, "fleetgate: gates passed")
                    .map_err(|e| Error::git(format!("update {}", u.name), e))?;
            }
            let Some(origin) = self.origin else {
                return Ok(note);
            };
            updates.push(Update {
                name: NOTES_REF.into(),
                new: current(NOTES_REF),
                expected: notes_before,
            });
            match origin.push_leased(&updates)? {
                Pushed::Yes => return Ok(note),
                Pushed::Rejected(why) => {
                    tracing::warn!(
                        "records moved on the remote meanwhile ({why}); re-reading and merging (attempt {attempt}/{ATTEMPTS})"
                    );
                    std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
                }
            }
        }
        Err(Error::Remote(format!(
            "could not push fleetgate's records for {} after {ATTEMPTS} attempts: other runners keep updating them\n  hint: is a second pipeline running outside the lock?",
            rev.short()
        )))
    }
}

fn new_note(rev: CommitId) -> Value {
    json!({"schema": 1, "head": rev.to_string(), "stages": {}, "approvals": []})
}

/// Stores a stage's outcome in the note and moves the refs of the clients
/// that passed; returns the refs moved and the note as pushed.
pub fn record_stage(
    records: &Records,
    rev: CommitId,
    outcome: &StageOutcome,
) -> Result<(Vec<String>, Value)> {
    let moved = moved_refs(outcome);
    let stage = serde_json::to_value(outcome).expect("an outcome serialises");
    let note = records.update(rev, &moved, |note| {
        if !note["stages"].is_object() {
            note["stages"] = json!({});
        }
        note["stages"][&outcome.stage] = stage.clone();
        // The stage ran: it no longer waits for anything.
        if note.get("waiting").and_then(Value::as_str) == Some(outcome.stage.as_str()) {
            note.as_object_mut()
                .expect("a note is an object")
                .remove("waiting");
        }
    })?;
    Ok((moved, note))
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

/// Who commits fleetgate's notes, reverts and locks.
pub fn signature(repo: &Repo) -> Result<git2::Signature<'static>> {
    repo.git()
        .signature()
        .or_else(|_| git2::Signature::now("fleetgate", "fleetgate@localhost"))
        .map_err(|e| Error::git("make a signature", e))
}

fn write_note(repo: &Repo, rev: CommitId, note: &Value) -> Result<Oid> {
    let sig = signature(repo)?;
    let text = serde_json::to_string_pretty(note).expect("a note serialises");
    repo.git()
        .note(&sig, &sig, Some(NOTES_REF), rev.0, &text, true)
        .map_err(|e| Error::git(format!("write the note on {rev}"), e))
}
