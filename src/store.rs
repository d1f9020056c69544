//! The [`GitStore`] port over the real fleet repository: git2 for this
//! clone's refs, notes and objects, the `git` CLI (`origin.rs`) for the
//! remote. The policy of reading and changing records, the lock and the
//! revert decision live in `core`; this module only moves bytes.

use git2::Oid;

use crate::core::outcome::{FailedGate, RevertOutcome};
use crate::core::records::NOTES_REF;
use crate::core::rev::CommitId;
use crate::error::{Error, Message, Result};
use crate::origin::Origin;
use crate::ports::{GitStore, Noted, Pushed, Update};
use crate::repo::Repo;

/// A clone of the fleet repository, and its remote when it has one.
pub struct GitRepo<'r> {
    pub repo: &'r Repo,
    pub origin: Option<Origin>,
}

impl<'r> GitRepo<'r> {
    /// With the remote `remote`: an error naming it when it is missing.
    pub fn with_remote(repo: &'r Repo, remote: &str) -> Result<GitRepo<'r>> {
        Ok(GitRepo {
            repo,
            origin: Some(Origin::new(repo, remote)?),
        })
    }

    /// With the remote `remote` when the repository has it (`deploy`).
    pub fn maybe_remote(repo: &'r Repo, remote: &str) -> GitRepo<'r> {
        let origin = Origin::optional(repo, remote);
        if origin.is_none() {
            tracing::info!("no remote `{remote}`: records stay in this repository");
        }
        GitRepo { repo, origin }
    }

    fn origin(&self) -> Result<&Origin> {
        self.origin.as_ref().ok_or_else(|| {
            Error::Usage(
                Message::from("this needs the fleet repository's remote, and it has none")
                    .hint("pass --remote NAME or `git remote add origin URL`"),
            )
        })
    }
}

impl GitStore for GitRepo<'_> {
    fn remote_name(&self) -> Option<&str> {
        self.origin.as_ref().map(|o| o.name.as_str())
    }

    fn fetch_records(&self) -> Result<()> {
        match &self.origin {
            Some(origin) => origin.fetch_records(),
            None => Ok(()),
        }
    }

    fn ref_target(&self, name: &str) -> Result<Option<CommitId>> {
        match self.repo.git().refname_to_id(name) {
            Ok(oid) => Ok(Some(oid.into())),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(Error::git(format!("read {name}"), e)),
        }
    }

    fn refs_under(&self, prefix: &str) -> Result<Vec<(String, CommitId)>> {
        let refs = self
            .repo
            .git()
            .references_glob(&format!("{prefix}*"))
            .map_err(|e| Error::git(format!("list {prefix}"), e))?;
        let mut out = Vec::new();
        for r in refs {
            let r = r.map_err(|e| Error::git(format!("list {prefix}"), e))?;
            if let (Ok(name), Some(target)) = (r.name(), r.target()) {
                out.push((name.to_string(), target.into()));
            }
        }
        Ok(out)
    }

    fn delete_ref(&self, name: &str) -> Result<()> {
        match self.repo.git().find_reference(name) {
            Ok(mut r) => r
                .delete()
                .map_err(|e| Error::git(format!("delete {name}"), e)),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(()),
            Err(e) => Err(Error::git(format!("read {name}"), e)),
        }
    }

    fn note_in(&self, notes: Option<CommitId>, rev: CommitId) -> Result<Option<String>> {
        let Some(notes) = notes else {
            return Ok(None);
        };
        let git = self.repo.git();
        let what = || format!("read the note on {rev}");
        let tree = git
            .find_commit(notes.oid())
            .and_then(|c| c.tree())
            .map_err(|e| Error::git(what(), e))?;
        let Some(blob) =
            note_blob(git, &tree, &rev.to_string()).map_err(|e| Error::git(what(), e))?
        else {
            return Ok(None);
        };
        let blob = git.find_blob(blob).map_err(|e| Error::git(what(), e))?;
        // Not UTF-8: lossy, so the record parser refuses it by content.
        Ok(Some(String::from_utf8_lossy(blob.content()).into_owned()))
    }

    fn noted(&self) -> Result<Vec<Noted>> {
        let git = self.repo.git();
        let what = "list the run records";
        let notes = match git.notes(Some(NOTES_REF)) {
            Ok(notes) => notes,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::git(what, e)),
        };
        let mut ids = std::collections::HashSet::new();
        for note in notes {
            ids.insert(note.map_err(|e| Error::git(what, e))?.1);
        }
        // Tests (and fast pushes) commit within one second: the topology,
        // not the clock, says which run came later.
        let mut walk = git.revwalk().map_err(|e| Error::git(what, e))?;
        walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::TIME)
            .map_err(|e| Error::git(what, e))?;
        let mut missing = Vec::new();
        for id in &ids {
            match git.find_commit(*id) {
                Ok(_) => walk.push(*id).map_err(|e| Error::git(what, e))?,
                Err(_) => missing.push(*id),
            }
        }
        let mut left = ids.len() - missing.len();
        let mut out = Vec::new();
        for id in walk {
            if left == 0 {
                break;
            }
            let id = id.map_err(|e| Error::git(what, e))?;
            if ids.contains(&id) {
                left -= 1;
                let subject = git.find_commit(id).ok().map(|c| {
                    String::from_utf8_lossy(c.summary_bytes().unwrap_or_default()).into_owned()
                });
                out.push(Noted {
                    commit: id.into(),
                    subject,
                });
            }
        }
        missing.sort();
        out.extend(missing.into_iter().map(|id| Noted {
            commit: id.into(),
            subject: None,
        }));
        Ok(out)
    }

    fn note_commit(&self, parent: Option<CommitId>, rev: CommitId, text: &str) -> Result<CommitId> {
        // libgit2 writes notes only onto a ref (keeping git's fan-out):
        // a ref of this process's own, started at `parent`, then dropped.
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let scratch = format!("refs/fleetgate-scratch/notes-{}-{seq}", std::process::id());
        let git = self.repo.git();
        let sig = self.repo.signature()?;
        let written = (|| {
            if let Some(parent) = parent {
                git.reference(&scratch, parent.oid(), true, "fleetgate: records")?;
            }
            git.note(&sig, &sig, Some(&scratch), rev.oid(), text, true)?;
            git.refname_to_id(&scratch)
        })();
        if let Ok(mut r) = git.find_reference(&scratch) {
            let _ = r.delete();
        }
        written
            .map(CommitId::from)
            .map_err(|e| Error::git(format!("write the note on {rev}"), e))
    }

    fn set_ref(&self, name: &str, rev: CommitId) -> Result<()> {
        self.repo
            .git()
            .reference(name, rev.oid(), true, "fleetgate: gates passed")
            .map(|_| ())
            .map_err(|e| Error::git(format!("update {name}"), e))
    }

    fn swap_ref(&self, name: &str, new: CommitId, expected: Option<CommitId>) -> Result<bool> {
        let git = self.repo.git();
        let set = match expected {
            Some(old) => {
                git.reference_matching(name, new.oid(), true, old.oid(), "fleetgate: records")
            }
            None => git.reference(name, new.oid(), false, "fleetgate: records"),
        };
        match set {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.code(),
                    git2::ErrorCode::Modified | git2::ErrorCode::Locked | git2::ErrorCode::Exists
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::git(format!("update {name}"), e)),
        }
    }

    fn push_leased(&self, updates: &[Update]) -> Result<Pushed> {
        match &self.origin {
            Some(origin) => origin.push_leased(updates),
            None => Ok(Pushed::Yes),
        }
    }

    fn remote_ref(&self, name: &str) -> Result<Option<CommitId>> {
        self.origin()?.remote_ref(name)
    }

    fn lock_text(&self, id: CommitId) -> Result<Option<String>> {
        let git = self.repo.git();
        if git.find_commit(id.oid()).is_err() {
            self.origin()?.fetch_ref(crate::core::lock::LOCK_REF)?;
        }
        Ok(git
            .find_commit(id.oid())
            .ok()
            .and_then(|c| c.message().ok().map(str::to_string)))
    }

    fn lock_object(&self, text: &str) -> Result<CommitId> {
        let git = self.repo.git();
        let sig = self.repo.signature()?;
        let tree = git
            .treebuilder(None)
            .and_then(|t| t.write())
            .and_then(|t| git.find_tree(t))
            .map_err(|e| Error::git("write the lock's tree", e))?;
        let id: Oid = git
            .commit(None, &sig, &sig, text, &tree, &[])
            .map_err(|e| Error::git("write the lock", e))?;
        Ok(id.into())
    }

    fn log_object(&self, text: &str, parent: Option<CommitId>) -> Result<CommitId> {
        let git = self.repo.git();
        let sig = self.repo.signature()?;
        let tree = git
            .treebuilder(None)
            .and_then(|t| t.write())
            .and_then(|t| git.find_tree(t))
            .map_err(|e| Error::git("write a log entry's tree", e))?;
        let parent = match parent {
            Some(p) => Some(
                git.find_commit(p.oid())
                    .map_err(|e| Error::git(format!("read the log entry {p}"), e))?,
            ),
            None => None,
        };
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let id: Oid = git
            .commit(None, &sig, &sig, text, &tree, &parents)
            .map_err(|e| Error::git("write a log entry", e))?;
        Ok(id.into())
    }

    fn revert(
        &self,
        branch: &str,
        base: CommitId,
        head: CommitId,
        gate: &FailedGate,
    ) -> Result<RevertOutcome> {
        crate::revert::revert(self.repo, self.origin()?, branch, base, head, gate)
    }
}

/// The note on the object `hex` in a notes tree: at the top, or under
/// git's fan-out directories (`ab/cdef…`, as `git notes` writes them once
/// there are many).
fn note_blob(
    git: &git2::Repository,
    tree: &git2::Tree,
    hex: &str,
) -> std::result::Result<Option<Oid>, git2::Error> {
    if let Some(entry) = tree.get_name(hex) {
        return Ok(Some(entry.id()));
    }
    if let Some(entry) = tree.get_name(hex.get(..2).unwrap_or_default())
        && hex.len() > 2
        && entry.kind() == Some(git2::ObjectType::Tree)
    {
        let sub = git.find_tree(entry.id())?;
        return note_blob(git, &sub, &hex[2..]);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare() -> (tempfile::TempDir, Repo) {
        let tmp = tempfile::tempdir().unwrap();
        git2::Repository::init_bare(tmp.path()).unwrap();
        let repo = Repo::discover(Some(tmp.path())).unwrap();
        (tmp, repo)
    }

    fn commit(git: &git2::Repository, message: &str) -> CommitId {
        let sig = git2::Signature::now("t", "t@localhost").unwrap();
        let tree = git.treebuilder(None).unwrap().write().unwrap();
        let tree = git.find_tree(tree).unwrap();
        git.commit(None, &sig, &sig, message, &tree, &[])
            .unwrap()
            .into()
    }

    /// A notes commit is built on the one the caller read, whatever this
    /// clone's notes ref holds by then, and moves no ref (another process
    /// in the clone may be fetching or writing it).
    #[test]
    fn a_notes_commit_builds_on_what_was_read_and_moves_no_ref() {
        let (_tmp, repo) = bare();
        let store = GitRepo {
            repo: &repo,
            origin: None,
        };
        let git = repo.git();
        let (a, b) = (commit(git, "a"), commit(git, "b"));
        let first = store.note_commit(None, a, "on a").unwrap();
        assert_eq!(store.ref_target(NOTES_REF).unwrap(), None);
        // Another process moves the clone's notes ref meanwhile.
        let other = store.note_commit(None, b, "someone else's").unwrap();
        assert!(store.swap_ref(NOTES_REF, other, None).unwrap());
        let second = store.note_commit(Some(first), b, "on b").unwrap();
        assert_eq!(
            store.note_in(Some(second), a).unwrap().as_deref(),
            Some("on a")
        );
        assert_eq!(
            store.note_in(Some(second), b).unwrap().as_deref(),
            Some("on b")
        );
        let parents: Vec<Oid> = git
            .find_commit(second.oid())
            .unwrap()
            .parent_ids()
            .collect();
        assert_eq!(parents, [first.oid()]);
        assert_eq!(store.ref_target(NOTES_REF).unwrap(), Some(other));
        assert!(
            store
                .refs_under("refs/fleetgate-scratch/")
                .unwrap()
                .is_empty()
        );
        // The swap is a compare-and-swap: from the wrong value it fails.
        assert!(!store.swap_ref(NOTES_REF, second, Some(first)).unwrap());
        assert!(!store.swap_ref(NOTES_REF, second, None).unwrap());
        assert!(store.swap_ref(NOTES_REF, second, Some(other)).unwrap());
        assert_eq!(store.ref_target(NOTES_REF).unwrap(), Some(second));
    }

    /// Notes under git's fan-out directories (`ab/cdef…`) are read, and
    /// replaced where they are.
    #[test]
    fn notes_in_fan_out_directories_are_read_and_replaced() {
        let (_tmp, repo) = bare();
        let store = GitRepo {
            repo: &repo,
            origin: None,
        };
        let git = repo.git();
        let a = commit(git, "a");
        let hex = a.to_string();
        let blob = git.blob(b"fanned out").unwrap();
        let mut inner = git.treebuilder(None).unwrap();
        inner.insert(&hex[2..], blob, 0o100644).unwrap();
        let inner = inner.write().unwrap();
        let mut top = git.treebuilder(None).unwrap();
        top.insert(&hex[..2], inner, 0o040000).unwrap();
        let top = git.find_tree(top.write().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@localhost").unwrap();
        let notes: CommitId = git
            .commit(None, &sig, &sig, "notes", &top, &[])
            .unwrap()
            .into();
        assert_eq!(
            store.note_in(Some(notes), a).unwrap().as_deref(),
            Some("fanned out")
        );
        let b = commit(git, "b");
        assert_eq!(store.note_in(Some(notes), b).unwrap(), None);
        let replaced = store.note_commit(Some(notes), a, "replaced").unwrap();
        assert_eq!(
            store.note_in(Some(replaced), a).unwrap().as_deref(),
            Some("replaced")
        );
        let tree = git.find_commit(replaced.oid()).unwrap().tree().unwrap();
        assert_eq!(
            tree.len(),
            1,
            "no second copy at the top: {:?}",
            tree.iter()
                .map(|e| e.name().unwrap().to_string())
                .collect::<Vec<_>>()
        );
    }
}
