//! Git, through git2: resolve revisions, read files of any commit straight from
//! the object database, and list the paths two commits differ in.
//!
//! Architecture Invariant: nothing here touches the work tree or the index of
//! the repository, except `Snapshot::WorkTree`, which only reads files.

use std::path::{Path, PathBuf};

use git2::{Oid, Repository};

use crate::error::{Diagnostic, Error, Message, Result};

/// Git's file mode of a symbolic link.
const SYMLINK_MODE: i32 = 0o120000;

/// Why a symlink in the fleet is refused. Its target is not what reviewers
/// see: in a commit a link is only its target's path (which would be shipped
/// as the file's content), in a work tree it is whatever it points to on the
/// machine that reads it.
pub fn symlink_refused(path: &str) -> Diagnostic {
    Diagnostic::new(path, "is a symlink; fleet files must be regular files").hint(
        "replace the link with a copy of what it points to (`cp --remove-destination TARGET LINK`) and commit that",
    )
}

/// An opened fleet repository.
pub struct Repo {
    git: Repository,
    display: String,
}

/// A resolved commit.
pub use crate::core::rev::CommitId;

impl From<Oid> for CommitId {
    fn from(oid: Oid) -> CommitId {
        let mut bytes = [0; 20];
        bytes.copy_from_slice(oid.as_bytes());
        CommitId(bytes)
    }
}

impl CommitId {
    /// The same id, for git2.
    pub fn oid(self) -> Oid {
        Oid::from_bytes(&self.0).expect("20 bytes are an object id")
    }
}

impl Repo {
    /// Who commits fleetgate's notes, reverts and locks.
    pub fn signature(&self) -> Result<git2::Signature<'static>> {
        self.git()
            .signature()
            .or_else(|_| git2::Signature::now("fleetgate", "fleetgate@localhost"))
            .map_err(|e| Error::git("make a signature", e))
    }

    /// Opens the repository at `path`, or the one around the working directory.
    pub fn discover(path: Option<&Path>) -> Result<Repo> {
        // Like git itself, trust the local object database on read instead of
        // re-hashing every object (most of a large plan's time otherwise).
        git2::opts::strict_hash_verification(false);
        // Keep large trees (`clients/` of a big fleet) in libgit2's object
        // cache: the diff, the listing and every lookup reuse one parse.
        // SAFETY: process-wide libgit2 settings, written while the process is
        // single-threaded and before any repository is opened.
        unsafe {
            let _ = git2::opts::set_cache_object_limit(git2::ObjectType::Tree, 16 << 20);
            let _ = git2::opts::set_cache_max_size(512 << 20);
        }
        let start = match path {
            Some(p) => p.to_path_buf(),
            None => std::env::current_dir().map_err(|source| Error::Io {
                action: "read",
                path: ".".into(),
                source,
            })?,
        };
        let git = Repository::discover(&start).map_err(|e| Error::NoRepository {
            path: start.display().to_string(),
            message: e.message().to_string(),
        })?;
        let display = git
            .workdir()
            .unwrap_or_else(|| git.path())
            .display()
            .to_string();
        Ok(Repo { git, display })
    }

    /// Another handle on the same repository, for another thread
    /// (`Repository` is not `Sync`; libgit2's settings are already made).
    pub fn reopen(&self) -> Result<Repo> {
        let git = Repository::open(self.git.path()).map_err(|e| Error::NoRepository {
            path: self.display.clone(),
            message: e.message().to_string(),
        })?;
        Ok(Repo {
            git,
            display: self.display.clone(),
        })
    }

    pub fn git(&self) -> &Repository {
        &self.git
    }

    pub fn workdir(&self) -> Option<PathBuf> {
        self.git.workdir().map(Path::to_path_buf)
    }

    /// Resolves a revision (`HEAD~1`, a branch, a sha) to a commit.
    pub fn resolve(&self, rev: &str) -> Result<CommitId> {
        let bad = |message: String| Error::BadRevision {
            rev: rev.to_string(),
            repo: self.display.clone(),
            message,
        };
        let object = self
            .git
            .revparse_single(rev)
            .map_err(|e| bad(e.message().to_string()))?;
        let commit = object
            .peel_to_commit()
            .map_err(|e| bad(format!("not a commit: {}", e.message())))?;
        Ok(commit.id().into())
    }

    /// The files of one commit.
    pub fn snapshot(&self, commit: CommitId) -> Result<Snapshot<'_>> {
        let tree = self
            .git
            .find_commit(commit.oid())
            .and_then(|c| c.tree())
            .map_err(|e| Error::git(format!("tree of {commit}"), e))?;
        Ok(Snapshot::Commit {
            repo: &self.git,
            tree,
            id: commit,
        })
    }

    /// The files as they are on disk.
    pub fn worktree(&self) -> Result<Snapshot<'static>> {
        let root = self.workdir().ok_or_else(|| {
            Error::Usage(
                Message::from(format!("{} is a bare repository", self.display))
                    .hint("pass --rev to check a commit"),
            )
        })?;
        Ok(Snapshot::WorkTree { root })
    }

    /// Repository-relative paths that differ between two commits (both sides of
    /// a rename). Compares trees only: cost follows the size of the change.
    pub fn changed_paths(&self, base: CommitId, head: CommitId) -> Result<Vec<String>> {
        let tree = |c: CommitId| {
            self.git
                .find_commit(c.oid())
                .and_then(|c| c.tree())
                .map_err(|e| Error::git(format!("tree of {c}"), e))
        };
        let (a, b) = (tree(base)?, tree(head)?);
        let diff = self
            .git
            .diff_tree_to_tree(Some(&a), Some(&b), None)
            .map_err(|e| Error::git("diff", e))?;
        let mut paths = Vec::new();
        for delta in diff.deltas() {
            for file in [delta.old_file(), delta.new_file()] {
                if let Some(p) = file.path().and_then(Path::to_str) {
                    paths.push(p.to_string());
                }
            }
        }
        paths.sort();
        paths.dedup();
        Ok(paths)
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
    /// A symbolic link (never followed: see [`symlink_refused`]).
    pub is_symlink: bool,
    /// The object id, for entries of a commit.
    id: Option<Oid>,
}

/// One entry of a directory, as [`Snapshot::visit`] passes it.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    pub name: &'a str,
    pub is_dir: bool,
    pub is_symlink: bool,
    id: Option<Oid>,
}

impl EntryRef<'_> {
    pub fn to_entry(self) -> Entry {
        Entry {
            name: self.name.to_string(),
            is_dir: self.is_dir,
            is_symlink: self.is_symlink,
            id: self.id,
        }
    }
}

/// Blobs read at one commit that another commit may read again (the two
/// sides of a plan share most client files): by object id, each taken out
/// by the first read that finds it.
#[derive(Default)]
pub struct SharedBlobs {
    /// Keep what is read (the first side); else only take.
    pub keep: bool,
    blobs: std::collections::HashMap<Oid, Vec<u8>>,
}

impl SharedBlobs {
    /// For the first side: keeps what it reads.
    pub fn keeping() -> SharedBlobs {
        SharedBlobs {
            keep: true,
            blobs: Default::default(),
        }
    }
}

/// Read-only view of the fleet files at one commit, or in the work tree.
pub enum Snapshot<'r> {
    Commit {
        repo: &'r Repository,
        tree: git2::Tree<'r>,
        id: CommitId,
    },
    WorkTree {
        root: PathBuf,
    },
}

impl Snapshot<'_> {
    /// What this snapshot is, for messages: `commit 1a2b3c4d5e6f` or `work tree`.
    pub fn label(&self) -> String {
        match self {
            Snapshot::Commit { id, .. } => format!("commit {}", id.short()),
            Snapshot::WorkTree { .. } => "work tree".into(),
        }
    }

    /// `Error::Invalid` naming `path`, a symlink.
    fn refuse_symlink(&self, path: &str) -> Error {
        Error::Invalid {
            at: self.label(),
            problems: vec![symlink_refused(path)],
        }
    }

    /// The first symlink on `path` (a directory on the way, or the file
    /// itself): a Git tree does not follow links, a work tree would.
    fn symlink_on(&self, path: &str) -> Option<String> {
        let mut prefix = String::new();
        for part in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            let link = match self {
                Snapshot::Commit { tree, .. } => tree
                    .get_path(Path::new(&prefix))
                    .is_ok_and(|e| e.filemode() == SYMLINK_MODE),
                Snapshot::WorkTree { root } => std::fs::symlink_metadata(root.join(&prefix))
                    .is_ok_and(|m| m.file_type().is_symlink()),
            };
            if link {
                return Some(prefix);
            }
        }
        None
    }

    /// The content of a file, `None` when it does not exist. A symlink, or a
    /// file under a symlinked directory, is `Error::Invalid` naming the link.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Snapshot::Commit { repo, tree, id } => {
                let entry = match tree.get_path(Path::new(path)) {
                    Ok(e) => e,
                    Err(e) if e.code() == git2::ErrorCode::NotFound => {
                        return match self.symlink_on(path) {
                            Some(link) => Err(self.refuse_symlink(&link)),
                            None => Ok(None),
                        };
                    }
                    Err(e) => return Err(Error::git(format!("{path} at {id}"), e)),
                };
                if entry.filemode() == SYMLINK_MODE {
                    return Err(self.refuse_symlink(path));
                }
                if entry.kind() != Some(git2::ObjectType::Blob) {
                    return Ok(None);
                }
                let blob = repo
                    .find_blob(entry.id())
                    .map_err(|e| Error::git(format!("{path} at {id}"), e))?;
                Ok(Some(blob.content().to_vec()))
            }
            Snapshot::WorkTree { root } => {
                if let Some(link) = self.symlink_on(path) {
                    return Err(self.refuse_symlink(&link));
                }
                read_worktree_file(root, path)
            }
        }
    }

    /// [`Snapshot::read`], through `shared`: a file whose blob the other
    /// side of a plan read already (the same `pipelines/known_hosts`, the
    /// same pipeline) is taken from there, not inflated again.
    pub fn read_shared(&self, path: &str, shared: &mut SharedBlobs) -> Result<Option<Vec<u8>>> {
        let Snapshot::Commit { tree, id, .. } = self else {
            return self.read(path);
        };
        let entry = match tree.get_path(Path::new(path)) {
            Ok(e) => e,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return self.read(path),
            Err(e) => return Err(Error::git(format!("{path} at {id}"), e)),
        };
        if entry.filemode() == SYMLINK_MODE || entry.kind() != Some(git2::ObjectType::Blob) {
            return self.read(path);
        }
        let found = Entry {
            name: String::new(),
            is_dir: false,
            is_symlink: false,
            id: Some(entry.id()),
        };
        let mut read = self.read_entries_shared(&[(path, &found)], shared);
        read.pop().expect("one entry, one result")
    }

    /// Reads a file found by [`Snapshot::list`] in `dir`. For a commit this
    /// goes straight to the blob: no second walk through a large directory
    /// tree (which libgit2 would inflate and parse again for every lookup).
    /// `path` is the entry's path, for messages and the work tree.
    pub fn read_entry(&self, path: &str, entry: &Entry) -> Result<Option<Vec<u8>>> {
        if entry.is_symlink {
            return Err(self.refuse_symlink(path));
        }
        match (self, entry.id) {
            (Snapshot::Commit { repo, id, .. }, Some(oid)) => {
                let blob = repo
                    .find_blob(oid)
                    .map_err(|e| Error::git(format!("{path} at {id}"), e))?;
                Ok(Some(blob.content().to_vec()))
            }
            _ => self.read(path),
        }
    }

    /// [`Snapshot::read_entry`] for many entries at once, in their order,
    /// through `shared`: a blob with the same id is the same content, read
    /// once for both sides. The blobs of a commit that `shared` does not
    /// hold are read on
    /// every core (each thread with its own handle: `Repository` is not
    /// `Sync`) — a large fleet's client files, inflated one by one, were
    /// most of a plan's reading.
    pub fn read_entries_shared(
        &self,
        entries: &[(&str, &Entry)],
        shared: &mut SharedBlobs,
    ) -> Vec<Result<Option<Vec<u8>>>> {
        let Snapshot::Commit { repo, id, .. } = self else {
            return entries
                .iter()
                .map(|(path, entry)| self.read_entry(path, entry))
                .collect();
        };
        let mut out: Vec<Option<Result<Option<Vec<u8>>>>> = std::iter::repeat_with(|| None)
            .take(entries.len())
            .collect();
        let mut todo = Vec::new();
        for (i, (path, entry)) in entries.iter().enumerate() {
            match (entry.id, entry.is_symlink) {
                (Some(oid), false) => match shared.blobs.remove(&oid) {
                    Some(bytes) => out[i] = Some(Ok(Some(bytes))),
                    None => todo.push((i, oid)),
                },
                _ => out[i] = Some(self.read_entry(path, entry)),
            }
        }
        let oids: Vec<Oid> = todo.iter().map(|(_, oid)| *oid).collect();
        for ((i, oid), bytes) in todo.into_iter().zip(read_blobs(repo, &oids)) {
            let bytes = bytes.map_err(|e| Error::git(format!("{} at {id}", entries[i].0), e));
            if shared.keep
                && let Ok(bytes) = &bytes
            {
                shared.blobs.insert(oid, bytes.clone());
            }
            out[i] = Some(bytes.map(Some));
        }
        out.into_iter()
            .map(|r| r.expect("every entry is read"))
            .collect()
    }

    /// Entries directly under `dir`, sorted by name. Empty when `dir` does not
    /// exist; `Error::Invalid` when it is (or lies under) a symlink.
    pub fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        self.visit(dir, |entry| out.push(entry.to_entry()))?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Calls `f` with each entry of `dir` (none when it does not exist), in
    /// no particular order, without copying them: a fleet's clients
    /// directory may hold 50,000.
    pub fn visit(&self, dir: &str, mut f: impl FnMut(EntryRef<'_>)) -> Result<()> {
        if let Some(link) = self.symlink_on(dir) {
            return Err(self.refuse_symlink(&link));
        }
        match self {
            Snapshot::Commit { repo, tree, id } => {
                let sub = match tree.get_path(Path::new(dir)) {
                    Ok(e) => e,
                    Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(()),
                    Err(e) => return Err(Error::git(format!("{dir} at {id}"), e)),
                };
                let Ok(sub) = sub.to_object(repo).and_then(|o| o.peel_to_tree()) else {
                    return Ok(());
                };
                for entry in sub.iter() {
                    if let Ok(name) = entry.name() {
                        f(EntryRef {
                            name,
                            is_dir: entry.kind() == Some(git2::ObjectType::Tree),
                            is_symlink: entry.filemode() == SYMLINK_MODE,
                            id: Some(entry.id()),
                        });
                    }
                }
            }
            Snapshot::WorkTree { root } => {
                let rd = match std::fs::read_dir(root.join(dir)) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(source) => {
                        return Err(Error::Io {
                            action: "list",
                            path: dir.to_string(),
                            source,
                        });
                    }
                };
                for entry in rd.flatten() {
                    // DirEntry::file_type does not follow links.
                    let kind = entry.file_type().ok();
                    f(EntryRef {
                        name: &entry.file_name().to_string_lossy(),
                        is_dir: kind.is_some_and(|t| t.is_dir()),
                        is_symlink: kind.is_some_and(|t| t.is_symlink()),
                        id: None,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Fewer blobs than this per thread are read on the calling thread: opening
/// another handle costs about as much as reading a few hundred.
const BLOBS_PER_THREAD: usize = 512;

/// The contents of `blobs`, in order.
fn read_blobs(repo: &Repository, blobs: &[Oid]) -> Vec<Result<Vec<u8>, git2::Error>> {
    let read = |repo: &Repository, part: &[Oid]| -> Vec<_> {
        part.iter()
            .map(|oid| repo.find_blob(*oid).map(|b| b.content().to_vec()))
            .collect()
    };
    let threads = crate::par::cores()
        .min(blobs.len() / BLOBS_PER_THREAD)
        .max(1);
    if threads == 1 {
        return read(repo, blobs);
    }
    let chunk = blobs.len().div_ceil(threads);
    let path = repo.path();
    let parts: Vec<Option<Vec<_>>> = std::thread::scope(|s| {
        let handles: Vec<_> = blobs
            .chunks(chunk)
            .map(|part| s.spawn(move || Some(read(&Repository::open(path).ok()?, part))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reading thread panicked"))
            .collect()
    });
    // A part whose thread could not open the repository is read here.
    blobs
        .chunks(chunk)
        .zip(parts)
        .flat_map(|(part, read_there)| read_there.unwrap_or_else(|| read(repo, part)))
        .collect()
}

fn read_worktree_file(root: &Path, path: &str) -> Result<Option<Vec<u8>>> {
    match std::fs::read(root.join(path)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::IsADirectory =>
        {
            Ok(None)
        }
        Err(source) => Err(Error::Io {
            action: "read",
            path: path.to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Enough blobs for the reading threads (two parts on two cores), with
    /// one blob listed twice: every content comes back in the order asked,
    /// as one thread reading them all gives it.
    #[test]
    fn blobs_read_on_threads_come_back_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(tmp.path()).unwrap();
        let mut blobs: Vec<Oid> = (0..BLOBS_PER_THREAD * 2 + 7)
            .map(|i| repo.blob(format!("blob {i}\n").as_bytes()).unwrap())
            .collect();
        blobs.push(blobs[3]);
        let read = read_blobs(&repo, &blobs);
        assert_eq!(read.len(), blobs.len());
        for (i, content) in read.iter().enumerate() {
            let want = format!("blob {}\n", if i == blobs.len() - 1 { 3 } else { i });
            assert_eq!(content.as_deref().unwrap(), want.as_bytes());
        }
    }
}
