//! One pipeline at a time per repository: `refs/fleetgate/lock` on the
//! remote, a parentless commit whose message is the holder's JSON. Taken
//! with compare-and-swap (create only if absent, replace only the value
//! read), released by deleting it with the same check.
//!
//! The expiry is short (minutes) and the lock is renewed while its run
//! lives — by the engine at every safe point and, during one long call (a
//! stage's deploy), by a [`LockKeeper`](crate::ports::LockKeeper) on another
//! thread — so a run killed by its CI (SIGKILL, a removed container) blocks
//! the fleet only until its lock expires. Whoever renews shares one
//! [`Lease`]: when a renewal or a check finds the lock gone or replaced, the
//! lease is lost and the run stops before its next change on the remote.
//!
//! `lock release` removes a lock by hand, in one atomic push with an entry
//! on `refs/fleetgate/lock-log` saying whose lock it was, who removed it and
//! why. Released by `Drop` too: a panic or an early return never leaves it
//! until it expires.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::core::rev::CommitId;
use crate::error::{Error, Message, Result};
use crate::ports::{Clock, GitStore, Pushed, Update, rfc3339};

pub const LOCK_REF: &str = "refs/fleetgate/lock";
/// One commit per lock removed by hand (`lock release`), newest first.
pub const LOG_REF: &str = "refs/fleetgate/lock-log";

/// Renewals never further apart than this, however long the expiry.
const RENEW_AT_MOST: Duration = Duration::from_secs(30);
/// How often a rejected push of `lock release` is re-read and retried.
const ATTEMPTS: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub run_id: String,
    pub holder: String,
    /// The CI run's page, when the holder runs in CI (absent in locks
    /// written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_url: Option<String>,
    pub started_at: String,
    pub expires_at: String,
    /// A sharded run (`run --shard I/N`): the shards of `run_id` that hold
    /// it together, each renewing it; the last one out deletes it. Empty
    /// for a run on one runner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<u32>,
}

impl Holder {
    /// Past its expiry (an unreadable time counts as expired: nobody can
    /// renew what nobody can read).
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        DateTime::parse_from_rfc3339(&self.expires_at)
            .map(|t| t.with_timezone(&Utc) <= now)
            .unwrap_or(true)
    }

    pub fn describe(&self) -> String {
        let url = match &self.run_url {
            Some(u) => format!(" {u}"),
            None => String::new(),
        };
        let shards = match self.shards.as_slice() {
            [] => String::new(),
            many => format!(
                ", shards {}",
                many.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!(
            "{} (run {}{url}{shards}) since {}, expiring {}",
            self.holder, self.run_id, self.started_at, self.expires_at
        )
    }

    /// Whether the shard `index` of `run_id` holds this lock.
    fn held_by_shard(&self, run_id: &str, index: u32) -> bool {
        self.run_id == run_id && self.shards.contains(&index)
    }
}

/// Who takes the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    pub run_id: String,
    pub holder: String,
    pub run_url: Option<String>,
    /// The shard's index in a sharded run: the lock is shared with the
    /// other shards of `run_id` (None: one runner, the lock is its own).
    pub shard: Option<u32>,
}

/// The lock on the remote now: its object and holder (None: unreadable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: CommitId,
    pub holder: Option<Holder>,
}

fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(d).unwrap_or_default()
}

fn write(git: &dyn GitStore, holder: &Holder) -> Result<CommitId> {
    git.lock_object(&serde_json::to_string_pretty(holder).expect("a holder serialises"))
}

/// The lock on the remote now, None when free.
pub fn read(git: &dyn GitStore) -> Result<Option<Held>> {
    let mut unread = None;
    loop {
        let Some(id) = git.remote_ref(LOCK_REF)? else {
            return Ok(None);
        };
        match git.lock_text(id)? {
            Some(text) => {
                return Ok(Some(Held {
                    id,
                    holder: serde_json::from_str(&text).ok(),
                }));
            }
            // The ref moved between reading it and fetching the object it
            // named (another shard renewing or joining): read it again.
            // The same object twice unreadable is unreadable.
            None if unread.is_none_or(|(seen, tries)| seen != id && tries < ATTEMPTS) => {
                unread = Some((id, unread.map_or(1, |(_, tries)| tries + 1)));
            }
            None => return Ok(Some(Held { id, holder: None })),
        }
    }
}

/// The state every renewer of one lock shares (the engine's thread and a
/// keeper's): which object is ours, and whether the lock is still ours.
/// The mutex is held across a renewal's push, so renewals and the release
/// never race each other with stale leases.
pub struct Lease {
    ttl: Duration,
    state: Mutex<State>,
}

struct State {
    ours: CommitId,
    holder: Holder,
    renewed: DateTime<Utc>,
    /// Why the lock is no longer ours, once a renewal or a check found so.
    lost: Option<String>,
    released: bool,
    /// Shared by the shards of one run: this shard's index. Another shard
    /// moves the lock object when it renews, so each renewal re-reads it.
    shard: Option<u32>,
}

impl Lease {
    fn state(&self) -> MutexGuard<'_, State> {
        // A renewer that panicked left the state whole (each write is one
        // assignment): keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How often to renew: a quarter of the expiry, at most 30 s, so three
    /// renewals in a row can fail (a slow remote) before it expires.
    pub fn every(&self) -> Duration {
        (self.ttl / 4).clamp(Duration::from_millis(100), RENEW_AT_MOST)
    }

    /// Released or lost: nothing left to renew.
    pub fn done(&self) -> bool {
        let s = self.state();
        s.released || s.lost.is_some()
    }

    pub fn holder(&self) -> Holder {
        self.state().holder.clone()
    }

    /// The error of a lost lock, if it is lost.
    pub fn check(&self) -> Result<()> {
        match &self.state().lost {
            Some(why) => Err(lost(why)),
            None => Ok(()),
        }
    }

    /// Pushes the expiry forward if the remote still has our lock; when it
    /// does not, the lease is lost (for every renewer) and this errs. A
    /// failure to reach the remote errs without losing the lease: the next
    /// renewal tries again.
    pub fn renew(&self, git: &dyn GitStore, clock: &dyn Clock) -> Result<()> {
        let mut s = self.state();
        if s.released {
            return Ok(());
        }
        if let Some(why) = &s.lost {
            return Err(lost(why));
        }
        let now = clock.now();
        if let Some(index) = s.shard {
            let until = rfc3339(plus(now, self.ttl));
            return shared_edit(git, &mut s, index, |h| {
                // Never shorten another shard's renewal.
                if h.expires_at < until {
                    h.expires_at = until.clone();
                }
                true
            })
            .map(|_| s.renewed = now);
        }
        let mut holder = s.holder.clone();
        holder.expires_at = rfc3339(plus(now, self.ttl));
        let new = write(git, &holder)?;
        let update = Update {
            name: LOCK_REF.into(),
            new: Some(new),
            expected: Some(s.ours),
        };
        match git.push_leased(&[update])? {
            Pushed::Yes => {
                s.ours = new;
                s.holder = holder;
                s.renewed = now;
                Ok(())
            }
            Pushed::Rejected(_) => {
                let why = taken_by(git);
                s.lost = Some(why.clone());
                Err(lost(&why))
            }
        }
    }

    /// Whether the remote still has our lock, without renewing it.
    fn confirm(&self, git: &dyn GitStore) -> Result<()> {
        let (ours, shard) = {
            let s = self.state();
            if let Some(why) = &s.lost {
                return Err(lost(why));
            }
            (s.ours, s.shard)
        };
        if let Some(index) = shard {
            // Ours while this shard is among the holders, whoever renewed.
            let mut s = self.state();
            return match read(git)? {
                Some(Held {
                    id,
                    holder: Some(h),
                }) if h.held_by_shard(&s.holder.run_id, index) => {
                    s.ours = id;
                    s.holder = h;
                    Ok(())
                }
                _ if s.released => Ok(()),
                _ => {
                    let why = taken_by(git);
                    s.lost = Some(why.clone());
                    Err(lost(&why))
                }
            };
        }
        if git.remote_ref(LOCK_REF)? == Some(ours) {
            return Ok(());
        }
        let mut s = self.state();
        // A renewal may have moved it meanwhile (the keeper's thread).
        if s.ours != ours || s.released {
            return Ok(());
        }
        let why = taken_by(git);
        s.lost = Some(why.clone());
        Err(lost(&why))
    }
}

/// Edits the lock a sharded run's shards hold together: re-read, `edit`
/// (false: delete it), pushed against what was read; redone when another
/// shard moved it meanwhile. Lost when shard `index` is no longer among
/// the holders. Returns the new object (None: deleted).
fn shared_edit(
    git: &dyn GitStore,
    s: &mut State,
    index: u32,
    edit: impl Fn(&mut Holder) -> bool,
) -> Result<Option<CommitId>> {
    for _ in 0..ATTEMPTS {
        let (id, mut holder) = match read(git)? {
            Some(Held {
                id,
                holder: Some(h),
            }) if h.held_by_shard(&s.holder.run_id, index) => (id, h),
            _ => {
                let why = taken_by(git);
                s.lost = Some(why.clone());
                return Err(lost(&why));
            }
        };
        let new = match edit(&mut holder) {
            true => Some(write(git, &holder)?),
            false => None,
        };
        let update = Update {
            name: LOCK_REF.into(),
            new,
            expected: Some(id),
        };
        if let Pushed::Yes = git.push_leased(&[update])? {
            if let Some(new) = new {
                s.ours = new;
            }
            s.holder = holder;
            return Ok(new);
        }
    }
    Err(Error::Remote(
        format!("the pipeline lock kept moving under {ATTEMPTS} attempts to update it (other shards renewing)").into(),
    ))
}

/// Who has the lock now, for the error of the run that lost it.
fn taken_by(git: &dyn GitStore) -> String {
    match read(git) {
        Ok(None) => "it was removed (`fleetgate lock release`?)".into(),
        Ok(Some(Held {
            holder: Some(h), ..
        })) => format!("run {} of {} holds it now", h.run_id, h.holder),
        Ok(Some(Held { id, holder: None })) => format!("it is now {id}, unreadable"),
        Err(e) => format!("it changed on the remote ({e})"),
    }
}

fn lost(why: &str) -> Error {
    Error::Remote(
        Message::from(format!("lost the pipeline lock: {why}; this run stops before changing anything more on the remote"))
            .hint("the run that holds the lock converges the fleet (hosts this run deployed are redeployed or found up to date). If renewals failed, check the runner's access to the remote, or raise --lock-expiry"),
    )
}

/// The pipeline lock, held: renewed through [`Lock::keep_alive`] and by
/// whoever holds its [`Lease`], released on drop.
pub struct Lock<'a> {
    git: &'a dyn GitStore,
    clock: &'a dyn Clock,
    lease: Arc<Lease>,
}

/// Takes the lock, waiting up to `wait` for another run to release it or
/// for its lock to expire.
pub fn acquire<'a>(
    git: &'a dyn GitStore,
    clock: &'a dyn Clock,
    who: &Claimant,
    ttl: Duration,
    wait: Duration,
) -> Result<Lock<'a>> {
    let started = clock.now();
    let deadline = plus(started, wait);
    let mut told = false;
    loop {
        let now = clock.now();
        let mut ours = Holder {
            run_id: who.run_id.clone(),
            holder: who.holder.clone(),
            run_url: who.run_url.clone(),
            started_at: rfc3339(started),
            expires_at: rfc3339(plus(now, ttl)),
            shards: who.shard.into_iter().collect(),
        };
        let expected = match read(git)? {
            None => None,
            // Another shard of this run holds it: join it.
            Some(Held {
                id,
                holder: Some(h),
            }) if !h.expired(now)
                && who.shard.is_some()
                && h.run_id == who.run_id
                && !h.shards.is_empty() =>
            {
                let mut joined = h.clone();
                joined.shards.extend(who.shard);
                joined.shards.sort_unstable();
                joined.shards.dedup();
                if joined.expires_at < ours.expires_at {
                    joined.expires_at = ours.expires_at.clone();
                }
                ours = joined;
                Some(id)
            }
            Some(Held {
                holder: Some(h), ..
            }) if !h.expired(now) => {
                if now >= deadline {
                    return Err(Error::Remote(Message::from(format!("another pipeline run holds the lock: {}", h.describe())).hint("wait for it (--lock-wait); a dead run's lock expires by itself within its --lock-expiry. `fleetgate lock` shows it, `fleetgate lock release --reason WHY` removes it")));
                }
                if !told {
                    tracing::info!("waiting for the pipeline lock: held by {}", h.describe());
                    told = true;
                }
                let left = (deadline - now).to_std().unwrap_or_default();
                clock.sleep(Duration::from_millis(500).min(left));
                continue;
            }
            Some(Held {
                id,
                holder: Some(h),
            }) => {
                tracing::warn!(
                    "taking over an expired pipeline lock: held by {} (waited {}s)",
                    h.describe(),
                    (now - started).num_seconds()
                );
                Some(id)
            }
            Some(Held { id, holder: None }) => {
                tracing::warn!("taking over an unreadable pipeline lock ({id})");
                Some(id)
            }
        };
        let new = write(git, &ours)?;
        let update = Update {
            name: LOCK_REF.into(),
            new: Some(new),
            expected,
        };
        match git.push_leased(&[update])? {
            Pushed::Yes => {
                match who.shard {
                    Some(index) => tracing::info!(
                        "pipeline lock taken by shard {index} of run {} (held by shards {:?}), expires {}",
                        ours.run_id,
                        ours.shards,
                        ours.expires_at
                    ),
                    None => tracing::info!(
                        "pipeline lock taken: run {} by {}, expires {}",
                        ours.run_id,
                        ours.holder,
                        ours.expires_at
                    ),
                }
                let lease = Lease {
                    ttl,
                    state: Mutex::new(State {
                        ours: new,
                        holder: ours,
                        renewed: now,
                        lost: None,
                        released: false,
                        shard: who.shard,
                    }),
                };
                return Ok(Lock {
                    git,
                    clock,
                    lease: Arc::new(lease),
                });
            }
            Pushed::Rejected(_) => continue,
        }
    }
}

impl Lock<'_> {
    /// The shared state, for a keeper renewing from another thread.
    pub fn lease(&self) -> Arc<Lease> {
        self.lease.clone()
    }

    /// Called before every change on the remote and between long steps:
    /// renews the lock when a renewal is due, else checks that the remote
    /// still has it. An error when it is lost.
    pub fn keep_alive(&self) -> Result<()> {
        self.lease.check()?;
        let due = {
            let s = self.lease.state();
            let since = (self.clock.now() - s.renewed).to_std().unwrap_or_default();
            since >= self.lease.every()
        };
        match due {
            true => self.lease.renew(self.git, self.clock),
            false => self.lease.confirm(self.git),
        }
    }

    /// Deletes the lock if it is still ours.
    pub fn release(mut self) {
        self.release_once();
    }

    fn release_once(&mut self) {
        let mut s = self.lease.state();
        if std::mem::replace(&mut s.released, true) || s.lost.is_some() {
            return;
        }
        if let Some(index) = s.shard {
            // Leave the holders; the last shard out deletes the lock.
            match shared_edit(self.git, &mut s, index, |h| {
                h.shards.retain(|i| *i != index);
                !h.shards.is_empty()
            }) {
                Ok(None) => tracing::info!("pipeline lock released (the last shard out)"),
                Ok(Some(_)) => tracing::info!(
                    "shard {index} left the pipeline lock; shards {:?} still hold it",
                    s.holder.shards
                ),
                Err(e) => tracing::warn!(
                    "shard {index} could not leave the pipeline lock (it expires by itself): {}",
                    e.headline()
                ),
            }
            return;
        }
        let update = Update {
            name: LOCK_REF.into(),
            new: None,
            expected: Some(s.ours),
        };
        match self.git.push_leased(&[update]) {
            Ok(Pushed::Yes) => tracing::info!("pipeline lock released"),
            Ok(Pushed::Rejected(_)) => {
                tracing::warn!("the pipeline lock was taken over by another run; left as it is")
            }
            Err(e) => {
                tracing::warn!("could not release the pipeline lock (it expires by itself): {e}")
            }
        }
    }
}

/// Every way out of a run releases the lock: an early `?` return and a
/// panic unwinding through the run too, not only the normal end.
impl Drop for Lock<'_> {
    fn drop(&mut self) {
        self.release_once();
    }
}

/// One entry of `refs/fleetgate/lock-log`: a lock removed by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// The lock as it was (None: unreadable).
    pub released: Option<Holder>,
    /// The lock object removed.
    pub lock: String,
    pub by: String,
    pub reason: String,
    pub at: String,
}

/// What `lock release` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// Removed, and logged as `log` on [`LOG_REF`].
    Yes { removal: Removal, log: CommitId },
    /// There was no lock.
    Nothing,
    /// Only a given run's lock was to go, and another run holds it.
    NotThatRun { holder: Option<Holder> },
}

/// Removes the lock (only `run_id`'s, when given) and logs who and why on
/// [`LOG_REF`], both in one atomic push that expects the lock just read:
/// a lock renewed or taken meanwhile is read again, never removed unseen.
pub fn release(
    git: &dyn GitStore,
    clock: &dyn Clock,
    by: &str,
    reason: &str,
    run_id: Option<&str>,
) -> Result<Released> {
    for attempt in 1..=ATTEMPTS {
        let Some(held) = read(git)? else {
            return Ok(Released::Nothing);
        };
        if let Some(want) = run_id
            && held.holder.as_ref().map(|h| h.run_id.as_str()) != Some(want)
        {
            return Ok(Released::NotThatRun {
                holder: held.holder,
            });
        }
        git.fetch_records()?;
        let tip = git.ref_target(LOG_REF)?;
        let removal = Removal {
            released: held.holder.clone(),
            lock: held.id.to_string(),
            by: by.to_string(),
            reason: reason.to_string(),
            at: rfc3339(clock.now()),
        };
        let text = serde_json::to_string_pretty(&removal).expect("a removal serialises");
        let log = git.log_object(&format!("lock released by {by}: {reason}\n\n{text}"), tip)?;
        let updates = [
            Update {
                name: LOCK_REF.into(),
                new: None,
                expected: Some(held.id),
            },
            Update {
                name: LOG_REF.into(),
                new: Some(log),
                expected: tip,
            },
        ];
        match git.push_leased(&updates)? {
            Pushed::Yes => return Ok(Released::Yes { removal, log }),
            Pushed::Rejected(why) => {
                tracing::warn!(
                    "the lock or its log moved meanwhile ({why}); reading again (attempt {attempt}/{ATTEMPTS})"
                );
                clock.sleep(Duration::from_millis(100 * u64::from(attempt)));
            }
        }
    }
    Err(Error::Remote(
        Message::from(format!(
            "could not release the pipeline lock after {ATTEMPTS} attempts: it keeps changing"
        ))
        .hint("a live run is renewing it: `fleetgate lock` shows which"),
    ))
}

#[cfg(test)]
#[path = "lock_tests.rs"]
mod tests;
