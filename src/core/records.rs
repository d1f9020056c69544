//! What the fleet really runs, recorded in Git (design.md §3), read and
//! changed through the [`GitStore`] port:
//! `refs/fleetgate/deployed/<stage>/<client>` points at the commit a client
//! last passed its gates with in that stage, and `refs/notes/fleetgate`
//! holds one [`RunRecord`] per head commit.
//!
//! Every change is a read-modify-write of the remote's records: fetch,
//! edit, push with the values just read as expected; when another runner
//! got there first, fetch again and re-apply the edit. A record that is not
//! fleetgate's is an error, never "no record": an update would overwrite it.

use std::time::Duration;

use crate::core::outcome::{HostStatus, StageOutcome};
use crate::core::record::RunRecord;
use crate::core::rev::CommitId;
use crate::core::shard::{Reported, Shard};
use crate::core::verdict::StageVerdict;
use crate::error::{Error, Message, Result};
use crate::ports::{Clock, GitStore, Noted, Pushed, Update};

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

/// The deployed refs a stage's outcome moves (its passed clients) and
/// deletes (those of them in `gone`, taken down).
fn stage_refs(outcome: &StageOutcome, gone: &[String]) -> (Vec<String>, Vec<String>) {
    let passed = passed_clients(outcome);
    let refs = |taken_down: bool| -> Vec<String> {
        passed
            .iter()
            .filter(|c| gone.contains(c) == taken_down)
            .map(|c| deployed_ref(&outcome.stage, c))
            .collect()
    };
    (refs(false), refs(true))
}

/// The records of one repository, on its remote when it has one.
pub struct Records<'a> {
    git: &'a dyn GitStore,
    clock: &'a dyn Clock,
}

impl<'a> Records<'a> {
    pub fn new(git: &'a dyn GitStore, clock: &'a dyn Clock) -> Records<'a> {
        Records { git, clock }
    }

    /// The record on `rev` as the remote has it now.
    pub fn read(&self, rev: CommitId) -> Result<Option<RunRecord>> {
        self.git.fetch_records()?;
        self.local(rev)
    }

    /// Every record as the remote has it now, newest commit first
    /// ([`GitStore::noted`]); a note that is not a record comes back as its
    /// error, so one bad note hides no other.
    pub fn history(&self) -> Result<Vec<(Noted, Result<RunRecord>)>> {
        self.git.fetch_records()?;
        let mut out = Vec::new();
        for noted in self.git.noted()? {
            match self.local(noted.commit) {
                Ok(Some(record)) => out.push((noted, Ok(record))),
                Ok(None) => {}
                Err(e) => out.push((noted, Err(e))),
            }
        }
        Ok(out)
    }

    /// Where `stage` last passed for `client` (after a read or update).
    pub fn deployed(&self, stage: &str, client: &str) -> Result<Option<CommitId>> {
        self.git.ref_target(&deployed_ref(stage, client))
    }

    fn local(&self, rev: CommitId) -> Result<Option<RunRecord>> {
        self.record_in(self.git.ref_target(NOTES_REF)?, rev)
    }

    /// The record on `rev` in the notes commit `notes` (None: no notes).
    fn record_in(&self, notes: Option<CommitId>, rev: CommitId) -> Result<Option<RunRecord>> {
        let Some(text) = self.git.note_in(notes, rev)? else {
            return Ok(None);
        };
        RunRecord::parse(&text).map(Some).map_err(|why| {
            Error::Record(Message::from(format!("the run record on {rev} ({NOTES_REF}) is not fleetgate's: {why}")).hint(format!("look at it with `git notes --ref=fleetgate show {rev}`; fleetgate will not overwrite it (its approvals would be lost): repair it, or remove it with `git notes --ref=fleetgate remove {rev}` and push {NOTES_REF}")))
        })
    }

    /// Applies `edit` to the record on `rev` and points `refs` at `rev`, on
    /// the remote too; retried on a fresh read when another runner pushed
    /// first.
    pub fn update(
        &self,
        rev: CommitId,
        refs: &[String],
        edit: impl Fn(&mut RunRecord),
    ) -> Result<RunRecord> {
        self.update_refs(rev, refs, &[], edit)
    }

    /// Like [`Records::update`], also deleting `gone` (the deployed refs of
    /// clients taken down), in the same push.
    pub fn update_refs(
        &self,
        rev: CommitId,
        refs: &[String],
        gone: &[String],
        edit: impl Fn(&mut RunRecord),
    ) -> Result<RunRecord> {
        for attempt in 1..=ATTEMPTS {
            let backoff = Duration::from_millis(100 * u64::from(attempt));
            self.git.fetch_records()?;
            // Everything below is read once and built on what was read:
            // another fleetgate in this same clone may fetch or write the
            // local refs meanwhile, and the push's leases (or, without a
            // remote, the local swap) catch any of it.
            let notes_before = self.git.ref_target(NOTES_REF)?;
            let mut updates = Vec::new();
            for name in refs {
                updates.push(Update {
                    name: name.clone(),
                    new: Some(rev),
                    expected: self.git.ref_target(name)?,
                });
            }
            for name in gone {
                if let Some(expected) = self.git.ref_target(name)? {
                    updates.push(Update {
                        name: name.clone(),
                        new: None,
                        expected: Some(expected),
                    });
                }
            }
            let mut record = self
                .record_in(notes_before, rev)?
                .unwrap_or_else(|| RunRecord::new(&rev.to_string()));
            edit(&mut record);
            let notes = self.git.note_commit(notes_before, rev, &record.to_json())?;
            let remote = self.git.remote_name().is_some();
            if remote {
                updates.push(Update {
                    name: NOTES_REF.into(),
                    new: Some(notes),
                    expected: notes_before,
                });
                if let Pushed::Rejected(why) = self.git.push_leased(&updates)? {
                    tracing::warn!(
                        "records moved on the remote meanwhile ({why}); re-reading and merging (attempt {attempt}/{ATTEMPTS})"
                    );
                    self.clock.sleep(backoff);
                    continue;
                }
                updates.pop();
            }
            // This clone's copy. With a remote it is a cache (every read
            // fetches first): one another process moved meanwhile is left
            // as it made it. Without a remote it is the record: retried.
            if !self.git.swap_ref(NOTES_REF, notes, notes_before)? && !remote {
                tracing::debug!("records moved in this clone meanwhile; re-reading");
                self.clock.sleep(backoff);
                continue;
            }
            for u in &updates {
                match u.new {
                    Some(_) => self.git.set_ref(&u.name, rev)?,
                    None => self.git.delete_ref(&u.name)?,
                }
            }
            return Ok(record);
        }
        Err(Error::Remote(Message::from(format!("could not push fleetgate's records for {} after {ATTEMPTS} attempts: other runners keep updating them", rev.short())).hint("is a second pipeline running outside the lock?")))
    }

    /// Stores a stage's outcome and moves the refs of the clients that
    /// passed — or deletes them, for clients in `gone` (taken down: their
    /// file is gone); returns the refs moved or deleted and the record.
    pub fn record_stage(
        &self,
        rev: CommitId,
        outcome: &StageOutcome,
        gone: &[String],
    ) -> Result<(Vec<String>, RunRecord)> {
        let (moved, deleted) = stage_refs(outcome, gone);
        let record = self.update_refs(rev, &moved, &deleted, |r| r.record_stage(outcome))?;
        Ok(([moved, deleted].concat(), record))
    }

    /// A shard's outcome of a stage into the record
    /// (`RunRecord::report_shard`), moving no ref; what the report made of
    /// the stage, and the record.
    pub fn report_shard(
        &self,
        rev: CommitId,
        shard: Shard,
        run_id: &str,
        outcome: &StageOutcome,
        verdict: StageVerdict,
    ) -> Result<(Reported, RunRecord)> {
        let got = std::cell::RefCell::new(None);
        let record = self.update(rev, &[], |r| {
            *got.borrow_mut() = Some(r.report_shard(shard, run_id, outcome, verdict));
        })?;
        let reported = got.into_inner().expect("the edit ran");
        Ok((reported, record))
    }

    /// The refs of a sharded stage's passed clients, by the stage's outcome
    /// merged from every shard (moved by the shard that decided it, once).
    pub fn move_passed(
        &self,
        rev: CommitId,
        stage: &str,
        gone: &[String],
    ) -> Result<(Vec<String>, RunRecord)> {
        let merged = self
            .read(rev)?
            .and_then(|r| r.stages.get(stage).cloned())
            .ok_or_else(|| {
                Error::Record(
                    format!("the record on {} has no stage `{stage}`", rev.short()).into(),
                )
            })?;
        let (moved, deleted) = stage_refs(&merged, gone);
        let record = self.update_refs(rev, &moved, &deleted, |_| {})?;
        Ok(([moved, deleted].concat(), record))
    }

    /// The clients with a deployed ref for `stage`, and where it points.
    pub fn deployed_clients(&self, stage: &str) -> Result<Vec<(String, CommitId)>> {
        let prefix = deployed_ref(stage, "");
        Ok(self
            .git
            .refs_under(&prefix)?
            .into_iter()
            .filter_map(|(name, id)| Some((name.strip_prefix(&prefix)?.to_string(), id)))
            .collect())
    }
}
