//! Snapshots before deploy, as data: which hosts of a stage get a Hetzner
//! snapshot before their first change, how many are kept, and the labels
//! that mark a snapshot as fleetgate's (pure). Taking one is a
//! [`Snapshotter`]'s job: `rollout::CloudSnapshots` over `hcloud::Client`,
//! `fakes::FakeSnapshots` in tests.

use std::collections::BTreeMap;

use crate::config::{App, DEFAULT_SNAPSHOT_KEEP, RollbackPolicy, SnapshotPolicy, Stage};

pub const LABEL_CLIENT: &str = "fleetgate/client";
pub const LABEL_REV: &str = "fleetgate/rev";
pub const LABEL_RUN: &str = "fleetgate/run";

/// One host's snapshot, decided before the stage runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotJob {
    /// The server's name (the inventory knows its id).
    pub server: String,
    /// Snapshots of this server fleetgate keeps, the new one included.
    pub keep: u32,
    /// `commands.pre_snapshot` of the host's apps that have one: (app,
    /// command), run on the host first.
    pub pre: Vec<(String, String)>,
    pub description: String,
    pub labels: BTreeMap<String, String>,
}

/// What a snapshot did: the new image and the old ones deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub image: u64,
    pub deleted: Vec<u64>,
}

/// A snapshot asked for: its image, and the action that makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub image: u64,
    pub action: u64,
}

/// Takes snapshots of servers, in three short calls, so the deploy waits
/// for the action between polls without holding up the other hosts of its
/// wave (`deploy::exec` sleeps on its runtime, never inside a call).
/// Errors are why, in words (exit 3 for the stage: the host is not
/// changed). Called from inside the deploy's runtime: an implementation
/// that blocks on a runtime of its own must do so on another thread.
pub trait Snapshotter {
    /// Asks for the snapshot of `job.server`.
    fn start(&self, job: &SnapshotJob) -> Result<Started, String>;
    /// Whether the snapshot is done: Ok(true) done, Ok(false) still
    /// running, Err it failed.
    fn done(&self, job: &SnapshotJob, started: Started) -> Result<bool, String>;
    /// The retention once `image` is taken: fleetgate's snapshots of this
    /// client made from this server beyond the newest `job.keep` deleted;
    /// the ids deleted (a failed clean-up is a warning, not a failure).
    fn keep(&self, job: &SnapshotJob, image: u64) -> Vec<u64>;
    /// How often an action is polled, and for how long at most.
    fn pacing(&self) -> (std::time::Duration, std::time::Duration) {
        (
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(30 * 60),
        )
    }
}

/// For stages with no Hetzner server: never asked.
pub struct NoSnapshots;

impl Snapshotter for NoSnapshots {
    fn start(&self, job: &SnapshotJob) -> Result<Started, String> {
        Err(format!(
            "no Hetzner Cloud API to snapshot `{}` with",
            job.server
        ))
    }
    fn done(&self, _: &SnapshotJob, _: Started) -> Result<bool, String> {
        Ok(true)
    }
    fn keep(&self, _: &SnapshotJob, _: u64) -> Vec<u64> {
        Vec::new()
    }
}

/// How many snapshots `app` wants kept on a Hetzner server in `stage`, or
/// None when it wants none: the app's `snapshot` if written, else the
/// stage's, else `before_deploy` for a `rollback: freeze` app (a frozen
/// app has no release to go back to). Only Hetzner servers can be
/// snapshotted: `cloud` false is always None.
pub fn wants(stage: &Stage, app: &App, cloud: bool) -> Option<u32> {
    if !cloud {
        return None;
    }
    let policy = app
        .snapshot
        .or(stage.snapshot)
        .unwrap_or(match app.rollback {
            RollbackPolicy::Freeze => SnapshotPolicy::BeforeDeploy,
            RollbackPolicy::Safe => SnapshotPolicy::Never,
        });
    (policy == SnapshotPolicy::BeforeDeploy).then(|| {
        app.snapshot_keep
            .or(stage.snapshot_keep)
            .unwrap_or(DEFAULT_SNAPSHOT_KEEP)
    })
}

/// The snapshot job of one host of `client`, or None when none of its
/// `apps` wants one: kept as many as the most demanding app asks.
pub fn job(
    stage: &Stage,
    apps: &[&App],
    cloud: bool,
    client: &str,
    server: &str,
    rev: &str,
    run: &str,
) -> Option<SnapshotJob> {
    let keep = apps.iter().filter_map(|a| wants(stage, a, cloud)).max()?;
    let short: String = rev.chars().take(12).collect();
    let labels = [
        (LABEL_CLIENT, label_value(client)),
        (LABEL_REV, label_value(&short)),
        (LABEL_RUN, label_value(run)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Some(SnapshotJob {
        server: server.to_string(),
        keep,
        pre: apps
            .iter()
            .filter_map(|a| Some((a.name.clone(), a.commands.pre_snapshot.clone()?)))
            .collect(),
        description: format!(
            "fleetgate {client} {server} before {short} ({})",
            stage.name
        ),
        labels,
    })
}

/// `value` under Hetzner's label rules (`inventory::selector::check_value`):
/// at most 63 characters, letters, digits, `-`, `_` and `.`, starting and
/// ending with a letter or digit. Anything else becomes `-` (a timestamp's
/// `:` and `+` included); an empty result stays empty (a valid value).
pub fn label_value(value: &str) -> String {
    let mapped: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let cut: String = trimmed.chars().take(63).collect();
    cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The label selector of fleetgate's snapshots of `client`'s servers.
pub fn selector(client: &str) -> String {
    format!("{LABEL_CLIENT}={}", label_value(client))
}

/// Of a server's snapshots (oldest first), those to delete to keep `keep`.
pub fn to_delete(oldest_first: &[u64], keep: u32) -> Vec<u64> {
    let keep = usize::try_from(keep.max(1)).unwrap_or(usize::MAX);
    let n = oldest_first.len().saturating_sub(keep);
    oldest_first[..n].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::selector::check_value;

    fn stage(snapshot: Option<SnapshotPolicy>, keep: Option<u32>) -> Stage {
        Stage {
            name: "production".into(),
            group: "prod".into(),
            soak: std::time::Duration::ZERO,
            approval: None,
            parallelism: 1,
            max_failures: 0,
            snapshot,
            snapshot_keep: keep,
            backup: None,
        }
    }

    fn app(
        name: &str,
        rollback: RollbackPolicy,
        snapshot: Option<SnapshotPolicy>,
        keep: Option<u32>,
    ) -> App {
        App {
            name: name.into(),
            runtime: crate::config::Runtime::Compose,
            images: BTreeMap::new(),
            files: BTreeMap::new(),
            templates: BTreeMap::new(),
            secrets: Vec::new(),
            commands: Default::default(),
            health: Vec::new(),
            rollback,
            snapshot,
            snapshot_keep: keep,
            routes: Vec::new(),
            strategy: crate::config::Strategy::Recreate,
            quadlet: None,
        }
    }

    #[test]
    fn which_hosts_need_a_snapshot() {
        use RollbackPolicy::{Freeze, Safe};
        use SnapshotPolicy::{BeforeDeploy, Never};
        // (stage, app, on Hetzner, kept or none)
        let cases = [
            (
                "freeze on Hetzner: on by default",
                stage(None, None),
                app("db", Freeze, None, None),
                true,
                Some(3),
            ),
            (
                "freeze on a static host: nothing to snapshot",
                stage(None, None),
                app("db", Freeze, None, None),
                false,
                None,
            ),
            (
                "safe: off by default",
                stage(None, None),
                app("web", Safe, None, None),
                true,
                None,
            ),
            (
                "the stage turns it on",
                stage(Some(BeforeDeploy), Some(5)),
                app("web", Safe, None, None),
                true,
                Some(5),
            ),
            (
                "the stage turns it off",
                stage(Some(Never), None),
                app("db", Freeze, None, None),
                true,
                None,
            ),
            (
                "the app over the stage",
                stage(Some(Never), Some(5)),
                app("db", Freeze, Some(BeforeDeploy), Some(2)),
                true,
                Some(2),
            ),
            (
                "the app off over the stage",
                stage(Some(BeforeDeploy), None),
                app("web", Safe, Some(Never), None),
                true,
                None,
            ),
            (
                "the stage's keep for a default app",
                stage(None, Some(7)),
                app("db", Freeze, None, None),
                true,
                Some(7),
            ),
        ];
        for (name, s, a, cloud, want) in cases {
            assert_eq!(wants(&s, &a, cloud), want, "{name}");
        }
        let db = {
            let mut a = app("db", RollbackPolicy::Freeze, None, Some(4));
            a.commands.pre_snapshot = Some("./dump.sh".into());
            a
        };
        let web = app("web", RollbackPolicy::Safe, Some(BeforeDeploy), Some(6));
        let s = stage(None, None);
        let j = job(
            &s,
            &[&db, &web],
            true,
            "alpha",
            "alpha-1",
            "0123456789abcdef",
            "run 7:1",
        )
        .unwrap();
        assert_eq!(j.keep, 6, "the most any app keeps");
        assert_eq!(j.pre, [("db".to_string(), "./dump.sh".to_string())]);
        assert_eq!(j.labels["fleetgate/rev"], "0123456789ab");
        assert_eq!(j.labels["fleetgate/run"], "run-7-1");
        assert_eq!(j.labels["fleetgate/client"], "alpha");
        assert!(job(&s, &[&web], false, "alpha", "alpha-1", "r", "1").is_none());
        assert!(
            job(
                &s,
                &[&app("web", Safe, None, None)],
                true,
                "alpha",
                "a",
                "r",
                "1"
            )
            .is_none()
        );
    }

    #[test]
    fn label_values_follow_hetzners_rules() {
        let cases = [
            ("alpha", "alpha"),
            ("2026-11-30T00:43:21+00:00", "2026-11-30T00-43-21-00-00"),
            ("https://ci/run/7", "https---ci-run-7"),
            ("-x-", "x"),
            ("::", ""),
            ("ünïcode", "n-code"),
        ];
        for (raw, want) in cases {
            let got = label_value(raw);
            assert_eq!(got, want, "{raw}");
            assert_eq!(check_value(&got), Ok(()), "{raw}");
        }
        let long = label_value(&format!("{}-{}", "a".repeat(62), "b".repeat(10)));
        assert_eq!(long.len(), 62, "{long}");
        assert_eq!(check_value(&long), Ok(()));
        assert_eq!(label_value(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn retention_keeps_the_newest() {
        assert_eq!(to_delete(&[1, 2, 3, 4], 3), [1]);
        assert_eq!(to_delete(&[1, 2], 3), Vec::<u64>::new());
        assert_eq!(
            to_delete(&[1, 2, 3], 0),
            [1, 2],
            "the new one is always kept"
        );
        assert_eq!(
            crate::core::outcome::restore_command("alpha", "alpha-1", 42),
            "fleetgate restore --client alpha --host alpha-1 --snapshot 42"
        );
    }
}
