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
use crate::ports::{GitStore, Noted, Pushed, Update, Written};
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

    fn note(&self, rev: CommitId) -> Result<Option<String>> {
        match self.repo.git().find_note(Some(NOTES_REF), rev.oid()) {
            // Not UTF-8: lossy, so the record parser refuses it by content.
            Ok(note) => Ok(Some(
                String::from_utf8_lossy(note.message_bytes()).into_owned(),
            )),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(Error::git(format!("read the note on {rev}"), e)),
        }
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

    fn write_note(&self, rev: CommitId, text: &str) -> Result<Written> {
        let sig = self.repo.signature()?;
        match self
            .repo
            .git()
            .note(&sig, &sig, Some(NOTES_REF), rev.oid(), text, true)
        {
            Ok(_) => Ok(Written::Yes),
            // Another fleetgate in this same clone is writing a note now.
            Err(e) if e.code() == git2::ErrorCode::Locked => Ok(Written::Busy),
            Err(e) => Err(Error::git(format!("write the note on {rev}"), e)),
        }
    }

    fn set_ref(&self, name: &str, rev: CommitId) -> Result<()> {
        self.repo
            .git()
            .reference(name, rev.oid(), true, "fleetgate: gates passed")
            .map(|_| ())
            .map_err(|e| Error::git(format!("update {name}"), e))
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
