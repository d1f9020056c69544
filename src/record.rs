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
        let sig = signature(self.repo)?;
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
            match write_note(self.repo, &sig, rev, &note) {
                Ok(_) => {}
                // Another fleetgate in this same clone is writing a note
                // right now (git's ref lock): the same race as a rejected
                // push, re-read and retried the same way.
                Err(e) if e.code() == git2::ErrorCode::Locked => {
                    tracing::debug!("notes ref locked by another process; retrying");
                    std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
                    continue;
                }
                Err(e) => return Err(Error::git(format!("write the note on {rev}"), e)),
            }
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

/// The run record on `rev`. A note that is not a JSON object is an error,
/// not "no record": reading it as none would drop its approvals, and the
/// next update would overwrite it.
pub fn read_note(repo: &Repo, rev: CommitId) -> Result<Option<Value>> {
    let note = match repo.git().find_note(Some(NOTES_REF), rev.0) {
        Ok(note) => note,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(Error::git(format!("read the note on {rev}"), e)),
    };
    let corrupt = |why: String| {
        Error::Record(format!(
            "the run record on {rev} ({NOTES_REF}) is not fleetgate's: {why}\n  hint: look at it with `git notes --ref=fleetgate show {rev}`; fleetgate will not overwrite it (its approvals would be lost): repair it, or remove it with `git notes --ref=fleetgate remove {rev}` and push {NOTES_REF}"
        ))
    };
    let text = note
        .message()
        .map_err(|_| corrupt("it is not UTF-8".into()))?;
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v.is_object() => {
            // The parts a run decides on are read leniently further on
            // (`pipeline::approvals`): check their shape here, once.
            if let Some(a) = v.get("approvals")
                && let Err(e) = serde_json::from_value::<Vec<crate::pipeline::Approval>>(a.clone())
            {
                return Err(corrupt(format!(
                    "`approvals` is not a list of approvals: {e}"
                )));
            }
            for key in ["base", "plan_hash", "head", "waiting"] {
                if v.get(key).is_some_and(|x| !x.is_string()) {
                    return Err(corrupt(format!("`{key}` is not a string")));
                }
            }
            if v.get("stages").is_some_and(|x| !x.is_object()) {
                return Err(corrupt("`stages` is not an object".into()));
            }
            Ok(Some(v))
        }
        Ok(_) => Err(corrupt("it is not a JSON object".into())),
        // The position only: the text itself is not ours to print.
        Err(e) => Err(corrupt(format!(
            "invalid JSON at line {} column {}",
            e.line(),
            e.column()
        ))),
    }
}

/// Who commits fleetgate's notes, reverts and locks.
pub fn signature(repo: &Repo) -> Result<git2::Signature<'static>> {
    repo.git()
        .signature()
        .or_else(|_| git2::Signature::now("fleetgate", "fleetgate@localhost"))
        .map_err(|e| Error::git("make a signature", e))
}

fn write_note(
    repo: &Repo,
    sig: &git2::Signature,
    rev: CommitId,
    note: &Value,
) -> std::result::Result<Oid, git2::Error> {
    let text = serde_json::to_string_pretty(note).expect("a note serialises");
    repo.git()
        .note(sig, sig, Some(NOTES_REF), rev.0, &text, true)
}
