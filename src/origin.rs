//! The fleet repository's remote, through the `git` CLI (git2 0.21 pushes
//! over https only with OpenSSL; the CLI also brings the runner's
//! credentials). Every push that replaces a value states the value it
//! expects (`--force-with-lease`), so concurrent runners never lose each
//! other's records: a rejected push is re-read and retried by the caller.

use std::path::PathBuf;
use std::process::{Command, Output};

use git2::Oid;

use crate::error::{Error, Message, Result};
use crate::repo::{CommitId, Repo};

/// Where fleetgate keeps its refs, on the remote and locally.
pub const RECORD_REFSPECS: [&str; 2] = [
    "+refs/fleetgate/*:refs/fleetgate/*",
    "+refs/notes/fleetgate*:refs/notes/fleetgate*",
];

/// How often a fetch that found a ref locked in this clone is tried.
const FETCH_ATTEMPTS: u64 = 6;

/// Whether git failed because another process holds a ref's lock file.
fn ref_lock_busy(out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.contains("cannot lock ref") || stderr.contains(".lock': File exists")
}

pub struct Origin {
    git_dir: PathBuf,
    pub name: String,
}

pub use crate::ports::{Pushed, Update};

impl Origin {
    /// The remote `name` of `repo`; an error naming it when it is not configured.
    pub fn new(repo: &Repo, name: &str) -> Result<Origin> {
        let origin = Origin {
            git_dir: repo.git().path().to_path_buf(),
            name: name.to_string(),
        };
        // Asked of libgit2, which reads the same config (no `git` process
        // for a `plan` that never talks to the remote).
        if repo.git().find_remote(name).is_err() {
            return Err(Error::Usage(Message::from(format!("the fleet repository has no remote `{name}`")).hint(format!("records, approvals, the lock and reverts live on the remote; pass --remote NAME or `git remote add {name} URL`"))));
        }
        Ok(origin)
    }

    /// The remote when one is configured (for commands that work without one).
    pub fn optional(repo: &Repo, name: &str) -> Option<Origin> {
        Origin::new(repo, name).ok()
    }

    fn git(&self, args: &[&str]) -> Result<Output> {
        Command::new("git")
            .arg("--git-dir")
            .arg(&self.git_dir)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .output()
            .map_err(|source| Error::Io {
                action: "run",
                path: "git (the git CLI talks to the remote)".into(),
                source,
            })
    }

    fn failed(&self, what: &str, out: &Output) -> Error {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Error::Remote(
            Message::from(format!(
                "{what} on remote `{}` failed: {}",
                self.name,
                tail.join("\n    ")
            ))
            .hint("check the runner's access to the remote (its URL, credentials, network)"),
        )
    }

    /// Replaces the local deployed refs, lock and notes with the remote's.
    pub fn fetch_records(&self) -> Result<()> {
        let mut args = vec![
            "fetch",
            "--quiet",
            "--no-tags",
            "--prune",
            "--no-write-fetch-head",
            &self.name,
        ];
        args.extend(RECORD_REFSPECS);
        // Another fleetgate in this clone fetching or writing a record at
        // the same moment holds a ref's lock file: git gives up at once
        // ("cannot lock ref"), so wait a moment and fetch again.
        for attempt in 1.. {
            let out = self.git(&args)?;
            if out.status.success() {
                return Ok(());
            }
            if attempt == FETCH_ATTEMPTS || !ref_lock_busy(&out) {
                return Err(self.failed("fetching fleetgate's records", &out));
            }
            tracing::debug!(
                "a record ref is locked by another process in this clone; fetching again"
            );
            std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
        }
        unreachable!("the last attempt returns")
    }

    /// Fetches `branch` and returns its tip.
    pub fn fetch_branch(&self, branch: &str) -> Result<Oid> {
        let tracking = format!("refs/remotes/{}/{branch}", self.name);
        let spec = format!("+refs/heads/{branch}:{tracking}");
        let out = self.git(&["fetch", "--quiet", "--no-tags", &self.name, &spec])?;
        if !out.status.success() {
            return Err(self.failed(&format!("fetching branch {branch}"), &out));
        }
        let out = self.git(&["rev-parse", "--verify", &tracking])?;
        let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Oid::from_str(&sha).map_err(|_| self.failed(&format!("reading {tracking}"), &out))
    }

    /// The value of `name` on the remote now (None: no such ref).
    pub fn remote_ref(&self, name: &str) -> Result<Option<CommitId>> {
        let out = self.git(&["ls-remote", &self.name, name])?;
        if !out.status.success() {
            return Err(self.failed(&format!("reading {name}"), &out));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .find(|l| l.split('\t').nth(1) == Some(name))
            .and_then(|l| CommitId::from_hex(l.split('\t').next()?)))
    }

    /// Fetches one object the remote has under `name` (for reading a lock).
    pub fn fetch_ref(&self, name: &str) -> Result<()> {
        let out = self.git(&["fetch", "--quiet", "--no-tags", &self.name, name])?;
        if !out.status.success() {
            return Err(self.failed(&format!("fetching {name}"), &out));
        }
        Ok(())
    }

    /// Sets every update at once (`--atomic`), each only if the remote still
    /// has its expected value.
    pub fn push_leased(&self, updates: &[Update]) -> Result<Pushed> {
        let mut args: Vec<String> = vec![
            "push".into(),
            "--porcelain".into(),
            "--atomic".into(),
            "--no-verify".into(),
            self.name.clone(),
        ];
        for u in updates {
            let expected = u.expected.map(|o| o.to_string()).unwrap_or_default();
            args.push(format!("--force-with-lease={}:{expected}", u.name));
        }
        for u in updates {
            let src = u.new.map(|o| o.to_string()).unwrap_or_default();
            args.push(format!("{src}:{}", u.name));
        }
        self.push(&args, "pushing fleetgate's records")
    }

    /// Pushes `commit` to `branch` as a fast-forward: never forced.
    pub fn push_branch(&self, commit: Oid, branch: &str) -> Result<Pushed> {
        let args: Vec<String> = vec![
            "push".into(),
            "--porcelain".into(),
            "--no-verify".into(),
            self.name.clone(),
            format!("{commit}:refs/heads/{branch}"),
        ];
        self.push(&args, &format!("pushing to {branch}"))
    }

    fn push(&self, args: &[String], what: &str) -> Result<Pushed> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.git(&args)?;
        if out.status.success() {
            return Ok(Pushed::Yes);
        }
        // Porcelain: `!\t<src>:<dst>\t[rejected] (<reason>)` per refused ref.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let rejected: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with('!'))
            .filter(|l| {
                [
                    "stale info",
                    "fetch first",
                    "non-fast-forward",
                    "atomic push failed",
                    "already exists",
                ]
                .iter()
                .any(|r| l.contains(r))
            })
            .collect();
        // Two pushes racing past the lease check: the remote's ref lock
        // catches the second ("cannot lock ref …: is at X but expected Y").
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(lost) = stderr.lines().find(|l| l.contains("cannot lock ref")) {
            return Ok(Pushed::Rejected(lost.trim().to_string()));
        }
        if rejected.is_empty() {
            return Err(self.failed(what, &out));
        }
        Ok(Pushed::Rejected(rejected.join("; ")))
    }
}
