//! One pipeline at a time per repository: `refs/fleetgate/lock` on the
//! remote, a parentless commit whose message is the holder's JSON. Taken
//! with compare-and-swap (create only if absent, replace only the value
//! read), renewed between stages, released by deleting it with the same
//! check. A lock past its expiry is taken over with a warning, so a killed
//! CI job never blocks the fleet for good.

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use git2::Oid;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::origin::{Origin, Pushed, Update};
use crate::repo::Repo;

pub const LOCK_REF: &str = "refs/fleetgate/lock";

#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// Who this run is: the CI run and actor when there is one.
pub fn this_run() -> (String, String) {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let run_id = env("GITHUB_RUN_ID")
        .unwrap_or_else(|| format!("local-{}-{}", std::process::id(), Utc::now().timestamp()));
    let user = env("GITHUB_ACTOR")
        .or_else(|| env("USER"))
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    (run_id, format!("{user}@{host}"))
}

pub struct Lock<'o> {
    repo: &'o Repo,
    origin: &'o Origin,
    ours: Oid,
    holder: Holder,
    ttl: Duration,
    released: bool,
}

fn now_s(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn write(repo: &Repo, holder: &Holder) -> Result<Oid> {
    let git = repo.git();
    let sig = crate::record::signature(repo)?;
    let tree = git
        .treebuilder(None)
        .and_then(|t| t.write())
        .map_err(|e| Error::git("write the lock's tree", e))?;
    let tree = git
        .find_tree(tree)
        .map_err(|e| Error::git("read the lock's tree", e))?;
    let text = serde_json::to_string_pretty(holder).expect("a holder serialises");
    git.commit(None, &sig, &sig, &text, &tree, &[])
        .map_err(|e| Error::git("write the lock", e))
}

/// The lock on the remote now: its object and holder.
fn read(repo: &Repo, origin: &Origin) -> Result<Option<(Oid, Option<Holder>)>> {
    let Some(oid) = origin.remote_ref(LOCK_REF)? else {
        return Ok(None);
    };
    if repo.git().find_commit(oid).is_err() {
        origin.fetch_ref(LOCK_REF)?;
    }
    let holder = repo
        .git()
        .find_commit(oid)
        .ok()
        .and_then(|c| serde_json::from_str(c.message().unwrap_or("")).ok());
    Ok(Some((oid, holder)))
}

/// Takes the lock, waiting up to `wait` for another run to release it.
pub fn acquire<'o>(
    repo: &'o Repo,
    origin: &'o Origin,
    run_id: &str,
    holder: &str,
    ttl: Duration,
    wait: Duration,
) -> Result<Lock<'o>> {
    let deadline = Instant::now() + wait;
    let started = Utc::now();
    let mut told = false;
    loop {
        let now = Utc::now();
        let ours = Holder {
            run_id: run_id.to_string(),
            holder: holder.to_string(),
            started_at: now_s(started),
            expires_at: now_s(now + chrono::Duration::from_std(ttl).unwrap_or_default()),
        };
        let current = read(repo, origin)?;
        let expected = match &current {
            None => None,
            Some((_, Some(h))) if !h.expired(now) => {
                if Instant::now() >= deadline {
                    return Err(Error::Remote(format!(
                        "another pipeline run holds the lock: {}\n  hint: wait for it (--lock-wait), or if that job is dead, the lock is taken over once it expires; `git push {} :{LOCK_REF}` removes it by hand",
                        h.describe(),
                        origin.name
                    )));
                }
                if !told {
                    tracing::info!("waiting for the pipeline lock: held by {}", h.describe());
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(500).min(deadline - Instant::now()));
                continue;
            }
            Some((oid, Some(h))) => {
                tracing::warn!(
                    "taking over an expired pipeline lock: held by {}",
                    h.describe()
                );
                Some(*oid)
            }
            Some((oid, None)) => {
                tracing::warn!("taking over an unreadable pipeline lock ({oid})");
                Some(*oid)
            }
        };
        let new = write(repo, &ours)?;
        let update = Update {
            name: LOCK_REF.into(),
            new: Some(new),
            expected,
        };
        match origin.push_leased(&[update])? {
            Pushed::Yes => {
                tracing::info!(
                    "pipeline lock taken: run {} by {}, expires {}",
                    ours.run_id,
                    ours.holder,
                    ours.expires_at
                );
                return Ok(Lock {
                    repo,
                    origin,
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
        holder.expires_at =
            now_s(Utc::now() + chrono::Duration::from_std(self.ttl).unwrap_or_default());
        let new = write(self.repo, &holder)?;
        let update = Update {
            name: LOCK_REF.into(),
            new: Some(new),
            expected: Some(self.ours),
        };
        match self.origin.push_leased(&[update])? {
            Pushed::Yes => {
                self.ours = new;
                self.holder = holder;
                Ok(())
            }
            Pushed::Rejected(_) => Err(Error::Remote(
                "lost the pipeline lock: another run took it over after it expired\n  hint: raise --lock-expiry above the longest stage".into(),
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
        match self.origin.push_leased(&[update]) {
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
