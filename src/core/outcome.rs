//! What a stage did, host by host: the outcome `deploy` prints, `run`
//! records in the run record and the verdict is read from. Plain data,
//! read back from every run record schema 1 ever wrote (fields added since
//! default to what an old note meant).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::gates::health::CheckResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// New release live and healthy.
    Deployed,
    /// Already live and verified: nothing done.
    Unchanged,
    /// Failed; not rolled back (policy off, or a `freeze` app).
    Failed,
    /// Switched back to the previous release.
    RolledBack,
    /// Not started: the stage had already failed.
    NotStarted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The host could not be reached or a command could not run.
    Infra,
    /// A remote command failed (upload, switch, runtime).
    Command,
    /// A health gate failed.
    Health,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub step: String,
    pub ok: bool,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostOutcome {
    pub client: String,
    pub host: String,
    pub status: HostStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    pub steps: Vec<StepRecord>,
    pub checks: Vec<CheckResult>,
    /// Apps switched to the new release (what a rollback undoes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub switched: Vec<String>,
    /// Apps left on the failed release because they are `rollback: freeze`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frozen: Vec<String>,
    /// Health after a rollback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback_checks: Vec<CheckResult>,
    /// Why a rollback that was needed did not happen (or not all of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_failure: Option<Failure>,
    /// What each app of this host runs after the stage, as far as fleetgate
    /// knows: the report never says "rolled back" for a host it could not
    /// reach.
    /// (Absent from records written before it existed.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runs: BTreeMap<String, Runs>,
    /// The Hetzner snapshot taken before this host's first change (its
    /// image id): what `fleetgate restore` puts the server back on.
    /// (Absent from records written before it existed.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<u64>,
    /// A frozen app on a snapshotted server: the command that puts the
    /// whole server back on that snapshot (`restore_command`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
    /// Per app, the backup its `commands.backup` made before the app's
    /// first change on this host.
    /// (Absent from records written before it existed.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backups: BTreeMap<String, Backup>,
    /// The last log lines of each app that failed its start or its health
    /// gate on this host, fetched before anything stopped it: masked,
    /// control characters out, at most `LOG_LINES` lines and `LOG_BYTES`
    /// bytes each. (Absent from records written before it existed.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub logs: BTreeMap<String, String>,
    pub seconds: f64,
}

/// One app's backup before its first change on a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    /// What the backup command printed as `FLEETGATE_BACKUP_ID=<id>`.
    pub id: String,
    pub seconds: f64,
    /// The app is frozen on the failed release: the command that puts this
    /// backup back (`backup_restore_command`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
}

/// The command that puts backup `id` of `app` back on `host` of `client`
/// (`commands.restore`). Names are validated names and an id is letters,
/// digits and `._:-` (`remote::release::is_backup_id`): no quoting needed.
pub fn backup_restore_command(client: &str, app: &str, host: &str, id: &str) -> String {
    format!("fleetgate restore --client {client} --app {app} --host {host} --backup {id}")
}

/// Lines of an app's logs a host's outcome keeps.
pub const LOG_LINES: usize = 100;

/// Bytes of an app's logs a host's outcome keeps, its notes included.
pub const LOG_BYTES: usize = 8 * 1024;

/// The command that rebuilds `host` of `client` from snapshot `image`.
/// Client and host names are validated names (letters, digits, `-`, `.`,
/// `_`), so the words need no quoting.
pub fn restore_command(client: &str, host: &str, image: u64) -> String {
    format!("fleetgate restore --client {client} --host {host} --snapshot {image}")
}

impl HostOutcome {
    /// A host's outcome before anything happened to it: no steps, checks,
    /// failure or rollback yet.
    pub fn new(
        client: &str,
        host: &str,
        status: HostStatus,
        runs: BTreeMap<String, Runs>,
    ) -> HostOutcome {
        HostOutcome {
            client: client.to_string(),
            host: host.to_string(),
            status,
            failure: None,
            steps: Vec::new(),
            checks: Vec::new(),
            switched: Vec::new(),
            frozen: Vec::new(),
            rollback_checks: Vec::new(),
            rollback_failure: None,
            runs,
            snapshot: None,
            restore: None,
            backups: BTreeMap::new(),
            logs: BTreeMap::new(),
            seconds: 0.0,
        }
    }
}

/// What an app on a host runs after a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runs {
    /// This release (full rev), live.
    Release(String),
    /// Not touched by this stage: whatever it ran before.
    AsBefore,
    /// A first deploy taken down again: nothing.
    Nothing,
    /// The host was lost during a change and could not be put back: it may
    /// run the new release, un-gated.
    Unknown,
}

impl Runs {
    pub fn describe(&self) -> String {
        match self {
            Runs::Release(rev) => crate::core::rev::short(rev).to_string(),
            Runs::AsBefore => "as before".into(),
            Runs::Nothing => "nothing".into(),
            Runs::Unknown => "UNKNOWN".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub step: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageOutcome {
    pub stage: String,
    pub rev: String,
    pub passed: bool,
    /// Stopped by SIGTERM/SIGINT before every host was started.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    pub failed_hosts: usize,
    pub max_failures: usize,
    pub rolled_back: bool,
    pub hosts: Vec<HostOutcome>,
}

impl StageOutcome {
    /// Apps left frozen on a failed release, as `client/app@host`.
    pub fn frozen(&self) -> Vec<String> {
        self.hosts
            .iter()
            .flat_map(|h| {
                h.frozen
                    .iter()
                    .map(move |a| format!("{}/{a}@{}", h.client, h.host))
            })
            .collect()
    }

    /// Frozen hosts with a snapshot from before the change: (the frozen
    /// apps as `frozen` words them, the snapshot, the restore command).
    pub fn restores(&self) -> Vec<(String, u64, String)> {
        self.hosts
            .iter()
            .filter(|h| !h.frozen.is_empty())
            .filter_map(|h| {
                let apps: Vec<String> = h
                    .frozen
                    .iter()
                    .map(|a| format!("{}/{a}@{}", h.client, h.host))
                    .collect();
                Some((apps.join(", "), h.snapshot?, h.restore.clone()?))
            })
            .collect()
    }

    /// Frozen apps with a backup from before the change: (the app as
    /// `frozen` words it, the backup id, the restore command).
    pub fn backup_restores(&self) -> Vec<(String, String, String)> {
        self.hosts
            .iter()
            .flat_map(|h| {
                h.frozen.iter().filter_map(move |a| {
                    let b = h.backups.get(a)?;
                    Some((
                        format!("{}/{a}@{}", h.client, h.host),
                        b.id.clone(),
                        b.restore.clone()?,
                    ))
                })
            })
            .collect()
    }

    /// Hosts that may run something nobody gated: lost during a change
    /// and not put back.
    pub fn lost(&self) -> Vec<&HostOutcome> {
        self.hosts
            .iter()
            .filter(|h| h.runs.values().any(|r| *r == Runs::Unknown))
            .collect()
    }

    /// Hosts that failed (tolerated or not), rolled back or not.
    pub fn failed(&self) -> impl Iterator<Item = &HostOutcome> {
        self.hosts.iter().filter(|h| h.failure.is_some())
    }
}

/// The gate that failed, for the message and the `Fleetgate-Failed-Gate` trailer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedGate {
    pub stage: String,
    pub client: String,
    pub host: String,
    /// `<app>:<check>` for a health check, `<app>:<step>` for a failed step.
    pub check: String,
    pub detail: String,
}

impl FailedGate {
    /// The first host failure of a stage that was the change's fault (a
    /// health gate or a remote command), not the infrastructure's.
    pub fn of(outcome: &StageOutcome) -> Option<FailedGate> {
        outcome.hosts.iter().find_map(|h| {
            let f = h.failure.as_ref()?;
            if f.kind == FailureKind::Infra {
                return None;
            }
            let app = f.app.clone().unwrap_or_else(|| "-".into());
            let check = match f.kind {
                FailureKind::Health => h
                    .checks
                    .iter()
                    .find(|c| !c.passed && !c.cancelled)
                    .map(|c| format!("{}:{}", c.app, c.check))
                    .unwrap_or_else(|| format!("{app}:health")),
                _ => format!("{app}:{}", f.step),
            };
            let detail: String = f
                .message
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            Some(FailedGate {
                stage: outcome.stage.clone(),
                client: h.client.clone(),
                host: h.host.clone(),
                check,
                detail,
            })
        })
    }

    pub fn trailer(&self) -> String {
        format!("{}/{}/{}", self.stage, self.client, self.check)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RevertOutcome {
    /// The revert commit is on the branch.
    Pushed {
        commit: String,
        onto: String,
        reverts: Vec<String>,
        failed_gate: String,
    },
    /// Commits pushed after the failing ones touch the same lines.
    Conflict {
        tip: String,
        reverts: Vec<String>,
        paths: Vec<String>,
        failed_gate: String,
    },
    /// The branch no longer contains the failing commit (history was rewritten).
    NotOnBranch { tip: String, failed_gate: String },
    /// No commit to take out: `base..head` is empty (a run of one commit
    /// against itself), or the branch no longer has the changes (already
    /// reverted). Nothing is pushed, not even an empty commit.
    NothingToRevert {
        tip: String,
        failed_gate: String,
        why: String,
    },
}
