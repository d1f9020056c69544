//! One pipeline at a time per repository: `refs/fleetgate/lock` on the
//! remote, a parentless commit whose message is the holder's JSON. Taken
//! with compare-and-swap (create only if absent, replace only the value
//! read), renewed between stages, released by deleting it with the same
//! check. A lock past its expiry is taken over with a warning, so a killed
//! CI job never blocks the fleet for good. Released by `Drop` too: a panic
//! or an early return never leaves it until it expires.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::core::rev::CommitId;
use crate::error::{Error, Message, Result};
use crate::ports::{Clock, GitStore, Pushed, Update, rfc3339};

pub const LOCK_REF: &str = "refs/fleetgate/lock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub run_id: String,
    pub holder: String,
    pub started_at: String,
    pub expires_at: String,
}

impl Holder {
    fn expired(&self, now: DateTime<Utc>) -> bool {
        DateTime::parse_from_rfc3339(&self.expires_at)
            .map(|t| t.with_timezone(&Utc) <= now)
            .unwrap_or(true)
    }

    fn describe(&self) -> String {
        format!(
            "{} (run {}) since {}, expiring {}",
            self.holder, self.run_id, self.started_at, self.expires_at
        )
    }
}

pub struct Lock<'a> {
    git: &'a dyn GitStore,
    clock: &'a dyn Clock,
    ours: CommitId,
    holder: Holder,
    ttl: Duration,
    released: bool,
}

fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(d).unwrap_or_default()
}

fn write(git: &dyn GitStore, holder: &Holder) -> Result<CommitId> {
    git.lock_object(&serde_json::to_string_pretty(holder).expect("a holder serialises"))
}

/// The lock on the remote now: its object and holder (None: unreadable).
fn read(git: &dyn GitStore) -> Result<Option<(CommitId, Option<Holder>)>> {
    let Some(id) = git.remote_ref(LOCK_REF)? else {
        return Ok(None);
    };
    let holder = git
        .lock_text(id)?
        .and_then(|text| serde_json::from_str(&text).ok());
    Ok(Some((id, holder)))
}

/// Takes the lock, waiting up to `wait` for another run to release it.
pub fn acquire<'a>(
    git: &'a dyn GitStore,
    clock: &'a dyn Clock,
    run_id: &str,
    holder: &str,
    ttl: Duration,
    wait: Duration,
) -> Result<Lock<'a>> {
    let started = clock.now();
    let deadline = plus(started, wait);
    let mut told = false;
    loop {
        let now = clock.now();
        let ours = Holder {
            run_id: run_id.to_string(),
            holder: holder.to_string(),
            started_at: rfc3339(started),
            expires_at: rfc3339(plus(now, ttl)),
        };
        let expected = match read(git)? {
            None => None,
            Some((_, Some(h))) if !h.expired(now) => {
                if now >= deadline {
                    return Err(Error::Remote(Message::from(format!("another pipeline run holds the lock: {}", h.describe())).hint(format!("wait for it (--lock-wait), or if that job is dead, the lock is taken over once it expires; `git push {} :{LOCK_REF}` removes it by hand", git.remote_name().unwrap_or("origin")))));
                }
                if !told {
                    tracing::info!("waiting for the pipeline lock: held by {}", h.describe());
                    told = true;
                }
                let left = (deadline - now).to_std().unwrap_or_default();
                clock.sleep(Duration::from_millis(500).min(left));
                continue;
            }
            Some((id, Some(h))) => {
                tracing::warn!(
                    "taking over an expired pipeline lock: held by {}",
                    h.describe()
                );
                Some(id)
            }
            Some((id, None)) => {
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
                tracing::info!(
                    "pipeline lock taken: run {} by {}, expires {}",
                    ours.run_id,
                    ours.holder,
                    ours.expires_at
                );
                return Ok(Lock {
                    git,
                    clock,
                    ours: new,
                    holder: ours,
                    ttl,
                    released: false,
                });
            }
            Pushed::Rejected(_) => continue,
        }
    }
}

impl Lock<'_> {
    /// Pushes the expiry forward; an error when another run took the lock.
    pub fn renew(&mut self) -> Result<()> {
        let mut holder = self.holder.clone();
        holder.expires_at = rfc3339(plus(self.clock.now(), self.ttl));
        let new = write(self.git, &holder)?;
        let update = Update {
            name: LOCK_REF.into(),
            new: Some(new),
            expected: Some(self.ours),
        };
        match self.git.push_leased(&[update])? {
            Pushed::Yes => {
                self.ours = new;
                self.holder = holder;
                Ok(())
            }
            Pushed::Rejected(_) => Err(Error::Remote(
                Message::from("lost the pipeline lock: another run took it over after it expired")
                    .hint("raise --lock-expiry above the longest stage"),
            )),
        }
    }

    /// Deletes the lock if it is still ours.
    pub fn release(mut self) {
        self.release_once();
    }

    fn release_once(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let update = Update {
            name: LOCK_REF.into(),
            new: None,
            expected: Some(self.ours),
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
