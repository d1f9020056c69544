//! One trait per external system the pipeline talks to (jj's `Backend`):
//! the engine (`core::engine`) is written against these only, the real
//! systems sit behind them in their own modules, and `fakes.rs` holds an
//! in-memory double of each that fails like the real thing.
//!
//! | system | trait | real | double |
//! |---|---|---|---|
//! | the Git store (repo + remote) | [`GitStore`] | `store::GitRepo` (git2 + the git CLI) | `fakes::FakeGit` |
//! | the fleet at a commit: plan, render, scan, deploy | [`Rollout`] | `rollout::Live` | `fakes::FakeRollout` |
//! | the forge | [`crate::forge::Forge`] | Forgejo (reqwest), GitHub (octocrab) | `fakes::FakeForge` |
//! | hosts | [`crate::deploy::Connector`] / [`crate::remote::Remote`] | `remote::ssh` (OpenSSH) | `remote::ssh::LocalHost` |
//! | the image scanner | [`crate::scan::trivy::Scanner`] | `scan::trivy::Trivy` | the scan tests' fake scanner |
//! | the inventory | [`crate::inventory::Inventory`] | `inventory::Live` (static + `hcloud`) | `fakes::FakeInventory` |
//! | the clock (and signals) | [`Clock`] | `rt::SystemClock` | `fakes::FakeClock` |
//! | renewing the lock meanwhile | [`LockKeeper`] | `commands::run`'s thread | none: the engine's own renewals |
//! | webhooks (`notify:`) | [`Notifier`] | `notify::Webhooks` (reqwest) | `fakes::FakeNotifier` |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{Fleet, Webhook};
use crate::core::events::Event;
use crate::core::lock::Lease;
use crate::core::outcome::StageOutcome;
use crate::core::rev::CommitId;
use crate::core::shard::Shard;
use crate::error::Result;
use crate::plan::Plan;
use crate::revert::{FailedGate, RevertOutcome};
use crate::scan::ScanReport;

/// One ref to set on the remote: `new` (None deletes) if it still is
/// `expected` (None: must not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub name: String,
    pub new: Option<CommitId>,
    pub expected: Option<CommitId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    Yes,
    /// The remote moved meanwhile (a lease or fast-forward check failed):
    /// re-read and try again, never force.
    Rejected(String),
}

/// A commit that carries a run record, as this clone knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Noted {
    pub commit: CommitId,
    /// Its subject line; None when this clone does not have the commit.
    pub subject: Option<String>,
}

/// The fleet repository and its remote: fleetgate's records (notes,
/// deployed refs), the pipeline lock, and reverts on the branch.
pub trait GitStore {
    /// The remote's name, when there is one (`deploy` works without).
    fn remote_name(&self) -> Option<&str>;
    /// Replaces this clone's records (notes, deployed refs, lock) with the
    /// remote's; nothing without a remote.
    fn fetch_records(&self) -> Result<()>;
    /// A ref in this clone (after [`GitStore::fetch_records`]: the remote's).
    fn ref_target(&self, name: &str) -> Result<Option<CommitId>>;
    /// Every ref of this clone under `prefix` (`refs/fleetgate/deployed/canary/`).
    fn refs_under(&self, prefix: &str) -> Result<Vec<(String, CommitId)>>;
    /// Removes a ref of this clone (pushed as a deletion with a lease).
    fn delete_ref(&self, name: &str) -> Result<()>;
    /// The note on `rev` in the notes commit `notes` (None: there are no
    /// notes), as text.
    fn note_in(&self, notes: Option<CommitId>, rev: CommitId) -> Result<Option<String>>;
    /// The commits with a note in this clone, newest first: a commit
    /// before its ancestors, else by committer time; commits this clone
    /// does not have last.
    fn noted(&self) -> Result<Vec<Noted>>;
    /// A new notes commit on top of `parent` (None: the first) with
    /// `text` as the note on `rev`, in this clone; no ref moves. Built on
    /// the notes commit the caller read, never on whatever this clone's
    /// notes ref holds by now: other processes in the same clone fetch
    /// and write it at any time.
    fn note_commit(&self, parent: Option<CommitId>, rev: CommitId, text: &str) -> Result<CommitId>;
    /// Points a ref of this clone at `rev`.
    fn set_ref(&self, name: &str, rev: CommitId) -> Result<()>;
    /// Points a ref of this clone at `new` only if it still points at
    /// `expected` (None: does not exist); false when another process in
    /// this clone moved or holds it.
    fn swap_ref(&self, name: &str, new: CommitId, expected: Option<CommitId>) -> Result<bool>;
    /// Sets every update on the remote at once, each only if the remote
    /// still has its expected value; without a remote, nothing to do.
    fn push_leased(&self, updates: &[Update]) -> Result<Pushed>;
    /// A ref on the remote now, read there (not fetched).
    fn remote_ref(&self, name: &str) -> Result<Option<CommitId>>;
    /// The message of the lock object `id` on the remote's lock ref.
    fn lock_text(&self, id: CommitId) -> Result<Option<String>>;
    /// A new lock object holding `text`, in this clone (not pushed).
    fn lock_object(&self, text: &str) -> Result<CommitId>;
    /// A new commit holding `text` on top of `parent`, in this clone (not
    /// pushed): an entry of a log ref such as the lock's.
    fn log_object(&self, text: &str, parent: Option<CommitId>) -> Result<CommitId>;
    /// Reverts `base..head` on top of `branch` on the remote and pushes it
    /// (fast-forward only; redone on a moved tip; conflicts are an outcome).
    fn revert(
        &self,
        branch: &str,
        base: CommitId,
        head: CommitId,
        gate: &FailedGate,
    ) -> Result<RevertOutcome>;
}

/// The fleet as the repository describes it at a commit: planned,
/// validated, its images scanned, a stage of it deployed to the hosts.
pub trait Rollout {
    /// The plan `base..head` (both rendered and compared); without a base,
    /// head against nothing (every client added).
    fn plan(&self, base: Option<CommitId>, head: CommitId) -> Result<Plan>;
    /// The validated fleet at `rev` (stages, groups, clients, policies).
    fn fleet(&self, rev: CommitId) -> Result<Fleet>;
    /// The image gate for `clients` of `fleet`; None when they run no image.
    fn scan(&self, fleet: &Fleet, clients: &[String]) -> Result<Option<ScanReport>>;
    /// One stage for `clients` at `rev`: upload, switch, start, gates,
    /// rollback; and what `previous` (each client's last deployed commit in
    /// this stage) ran that `rev` no longer gives it is taken down.
    /// Unreachable hosts are part of the outcome, not an error. Only the
    /// hosts `shard` selects are touched (`Shard::ALL`: every host).
    fn deploy(
        &self,
        rev: CommitId,
        stage: &str,
        clients: &[String],
        previous: &BTreeMap<String, CommitId>,
        shard: Shard,
    ) -> Result<StageOutcome>;
}

/// Renews the pipeline lock while the engine blocks in one call that can
/// outlast the lock's expiry (a stage's deploy): the engine renews only
/// between its steps. Runs on its own thread, so it needs its own handle on
/// the remote (`GitStore` is not `Sync`).
pub trait LockKeeper {
    /// Renews `lease` every [`Lease::every`] until it is released or lost.
    fn keep(&self, lease: Arc<Lease>);
}

/// Tells the webhooks of `notify:` what happened. Never part of the
/// pipeline's outcome: the engine logs an `Err` and goes on, and the real
/// one retries, logs and answers `Ok` whatever the webhooks did.
pub trait Notifier {
    /// Sends `event` to each of `hooks` that wants it.
    fn notify(&self, hooks: &[Webhook], event: &Event) -> Result<()>;
}

/// Time, waiting, and whether a stop was asked for: the engine never reads
/// the system clock or sleeps by itself, so its tests run in milliseconds.
pub trait Clock {
    fn now(&self) -> DateTime<Utc>;
    fn sleep(&self, d: Duration);
    /// SIGTERM/SIGINT received.
    fn interrupted(&self) -> bool;
}

/// RFC 3339 to the second, as records and locks write times.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
