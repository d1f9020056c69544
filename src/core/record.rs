//! The run record (design.md §3): one JSON note per head commit under
//! `refs/notes/fleetgate` — plan hash, every stage's per-host outcome,
//! approvals, the scan, the revert. Typed here, so every edit is a method
//! and a malformed note is an error, never "no record".
//!
//! Schema 1, as every fleetgate since the first wrote it: fields added
//! later default to what their absence meant, and keys this version does
//! not know (a newer fleetgate's) are kept as they are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::outcome::RevertOutcome;
use crate::core::outcome::StageOutcome;
use crate::core::shard::{Reported, Shard, ShardEntry, ShardSet, merge_outcome};
use crate::core::verdict::StageVerdict;
use crate::scan::ScanReport;

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub schema: u32,
    /// The commit this record is about (the note's object).
    pub head: String,
    /// The commit before the push the run planned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_hash: Option<String>,
    /// When the plan became what it is: an approval given before it was
    /// for an earlier plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Per stage, its last outcome.
    #[serde(default)]
    pub stages: BTreeMap<String, StageOutcome>,
    #[serde(default)]
    pub approvals: Vec<Approval>,
    /// The stage that waits for an approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert: Option<RevertOutcome>,
    /// Set when a signal stopped the run between stages or while it waited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interrupted>,
    /// Per client, the host names its last deployed stage in this record
    /// ran on (for a Hetzner client: the servers its selector resolved
    /// to), so the next plan can show what the inventory changed.
    /// (Absent from records written before it existed.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resolved_hosts: BTreeMap<String, Vec<String>>,
    /// Per stage deployed in shards (`core::shard`), the shards of the run
    /// that reported and the stage's verdict once all did. Absent for a
    /// run that was not sharded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shards: BTreeMap<String, ShardSet>,
    /// Keys written by a newer fleetgate: kept, never dropped.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One approval: who, when, for which plan, from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub by: String,
    /// RFC 3339.
    pub at: String,
    pub plan_hash: String,
    /// `cli` (`fleetgate approve`); the forge adds `comment`, `dispatch`,
    /// `environment`.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interrupted {
    /// RFC 3339.
    pub at: String,
    pub before_stage: String,
    pub run_id: String,
}

impl RunRecord {
    pub fn new(head: &str) -> RunRecord {
        RunRecord {
            schema: SCHEMA,
            head: head.to_string(),
            base: None,
            plan_hash: None,
            planned_at: None,
            run_id: None,
            stages: BTreeMap::new(),
            approvals: Vec::new(),
            waiting: None,
            scan: None,
            revert: None,
            interrupted: None,
            resolved_hosts: BTreeMap::new(),
            shards: BTreeMap::new(),
            other: BTreeMap::new(),
        }
    }

    /// A note's text as a record; the error says what is wrong without
    /// quoting the note (the position only).
    pub fn parse(text: &str) -> Result<RunRecord, String> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("invalid JSON at line {} column {}", e.line(), e.column()))?;
        if !value.is_object() {
            return Err("it is not a JSON object".into());
        }
        serde_json::from_value(value).map_err(|e| format!("it is not a run record: {e}"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a run record serialises")
    }

    /// The plan this run carries out (`base` None: a run from nothing, a
    /// first push). `planned_at` moves only when the plan changed, so
    /// approvals given for an earlier plan stay visibly older.
    pub fn plan(&mut self, base: Option<&str>, plan_hash: &str, run_id: &str, now: &str) {
        self.base = base.map(str::to_string);
        if self.plan_hash.as_deref() != Some(plan_hash) {
            self.planned_at = Some(now.to_string());
        }
        self.plan_hash = Some(plan_hash.to_string());
        self.run_id = Some(run_id.to_string());
    }

    /// A stage's outcome; the stage ran, so it no longer waits.
    pub fn record_stage(&mut self, outcome: &StageOutcome) {
        if self.waiting.as_deref() == Some(outcome.stage.as_str()) {
            self.waiting = None;
        }
        self.stages.insert(outcome.stage.clone(), outcome.clone());
        let mut hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for h in &outcome.hosts {
            hosts
                .entry(h.client.clone())
                .or_default()
                .push(h.host.clone());
        }
        for (client, mut names) in hosts {
            names.sort();
            names.dedup();
            self.resolved_hosts.insert(client, names);
        }
    }

    /// `shard`'s outcome of a stage of run `run_id`: its hosts merged into
    /// the stage's outcome by (client, host), its verdict into the stage's
    /// `ShardSet`, which decides the stage when this report completes it.
    /// A set of another run (or another number of shards) is started
    /// afresh, with the stage's outcome; a shard that reports again
    /// replaces its earlier hosts. Called inside `Records::update`, so it
    /// is re-applied to the record read again when a push is rejected.
    /// (Not called by a command yet: `core::shard`.)
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn report_shard(
        &mut self,
        shard: Shard,
        run_id: &str,
        outcome: &StageOutcome,
        verdict: StageVerdict,
    ) -> Reported {
        let stage = outcome.stage.clone();
        let fresh = self
            .shards
            .get(&stage)
            .is_none_or(|set| set.run_id != run_id || set.count != shard.count);
        if fresh {
            self.shards
                .insert(stage.clone(), ShardSet::new(run_id, shard.count));
            self.stages.remove(&stage);
        }
        let set = self.shards.get_mut(&stage).expect("inserted above");
        let name = |client: &str, host: &str| format!("{client}/{host}");
        let earlier = set
            .reported
            .get(&shard.index)
            .map(|e| e.hosts.clone())
            .unwrap_or_default();
        let reported = set.report(
            shard,
            ShardEntry {
                verdict: verdict.into(),
                hosts: outcome
                    .hosts
                    .iter()
                    .map(|h| name(&h.client, &h.host))
                    .collect(),
                failed_hosts: outcome.failed_hosts,
                rolled_back: outcome.rolled_back,
            },
        );
        let set = set.clone();
        let mut merged = self.stages.remove(&stage).unwrap_or_else(|| StageOutcome {
            hosts: Vec::new(),
            ..outcome.clone()
        });
        merged
            .hosts
            .retain(|h| !earlier.contains(&name(&h.client, &h.host)));
        merge_outcome(&mut merged, outcome, &set);
        self.record_stage(&merged);
        reported
    }

    /// The shard that decided `stage` of a sharded run, once one did.
    pub fn decided_by(&self, stage: &str) -> Option<u32> {
        self.shards.get(stage).and_then(|s| s.decided_by)
    }

    /// A shard waiting on `stage` gave up on the shards that never
    /// reported: the stage fails (`ShardVerdict::TimedOut`), unless it was
    /// decided meanwhile. None: no shard of `run_id` reported on `stage`.
    pub fn time_out_shards(&mut self, stage: &str, shard: Shard, run_id: &str) -> Option<Reported> {
        let set = self.shards.get_mut(stage).filter(|s| s.run_id == run_id)?;
        let reported = set.time_out(shard);
        if let Some(outcome) = self.stages.get_mut(stage) {
            outcome.passed = false;
        }
        Some(reported)
    }

    /// The hosts `client` ran on in this record: `resolved_hosts`, else
    /// (a record written before it) its hosts in `stage`'s outcome.
    pub fn hosts_of(&self, client: &str, stage: &str) -> Option<Vec<String>> {
        if let Some(hosts) = self.resolved_hosts.get(client) {
            return Some(hosts.clone());
        }
        let outcome = self.stages.get(stage)?;
        let mut names: Vec<String> = outcome
            .hosts
            .iter()
            .filter(|h| h.client == client)
            .map(|h| h.host.clone())
            .collect();
        names.sort();
        names.dedup();
        (!names.is_empty()).then_some(names)
    }

    /// The backup `app` of `client` made on `host` in this run, if any
    /// (`restore --app`'s default, read from the newest record that has one).
    pub fn backup_of(&self, client: &str, host: &str, app: &str) -> Option<&str> {
        self.stages
            .values()
            .flat_map(|o| &o.hosts)
            .filter(|h| h.client == client && h.host == host)
            .find_map(|h| h.backups.get(app))
            .map(|b| b.id.as_str())
    }

    /// Adds `approval` unless the same person already approved the same plan.
    pub fn add_approval(&mut self, approval: &Approval) {
        if !self
            .approvals
            .iter()
            .any(|a| a.by == approval.by && a.plan_hash == approval.plan_hash)
        {
            self.approvals.push(approval.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExitCode;

    #[test]
    fn the_backup_an_app_made_on_a_host() {
        use crate::core::outcome::{Backup, HostOutcome, HostStatus};
        let mut record = RunRecord::new(&"a".repeat(40));
        assert_eq!(record.backup_of("alpha", "alpha-1", "web"), None);
        let mut host = HostOutcome::new("alpha", "alpha-1", HostStatus::Failed, Default::default());
        host.backups.insert(
            "web".into(),
            Backup {
                id: "4f2a".into(),
                seconds: 1.0,
                restore: None,
            },
        );
        let other = HostOutcome::new("alpha", "alpha-2", HostStatus::Deployed, Default::default());
        record.record_stage(&StageOutcome {
            stage: "canary".into(),
            rev: "a".repeat(40),
            passed: false,
            interrupted: false,
            failed_hosts: 1,
            max_failures: 0,
            rolled_back: false,
            hosts: vec![other, host],
        });
        assert_eq!(record.backup_of("alpha", "alpha-1", "web"), Some("4f2a"));
        assert_eq!(record.backup_of("alpha", "alpha-2", "web"), None);
        assert_eq!(record.backup_of("alpha", "alpha-1", "db"), None);
        // Read back from JSON, as `restore` reads it.
        let back = RunRecord::parse(&record.to_json()).unwrap();
        assert_eq!(back.backup_of("alpha", "alpha-1", "web"), Some("4f2a"));
    }

    /// Notes written by fleetgate before the record was typed (the sandbox
    /// demo run by the binary of commit 4b6e4b6): read, written back, the
    /// same JSON.
    #[test]
    fn reads_and_writes_back_every_schema_1_note() {
        for (name, text) in [
            (
                "approved",
                include_str!("../../tests/fixtures/records/schema1-approved.json"),
            ),
            (
                "reverted",
                include_str!("../../tests/fixtures/records/schema1-reverted.json"),
            ),
            (
                "blocked by the scan",
                include_str!("../../tests/fixtures/records/schema1-scan-blocked.json"),
            ),
        ] {
            let record = RunRecord::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let before: Value = serde_json::from_str(text).unwrap();
            let after: Value = serde_json::from_str(&record.to_json()).unwrap();
            assert_eq!(before, after, "{name}");
        }
    }

    #[test]
    fn keys_of_a_newer_fleetgate_are_kept() {
        let text =
            r#"{"schema": 1, "head": "abc", "stages": {}, "approvals": [], "mirrors": {"x": 1}}"#;
        let record = RunRecord::parse(text).unwrap();
        assert_eq!(record.other["mirrors"], serde_json::json!({"x": 1}));
        assert!(record.to_json().contains("\"mirrors\""));
    }

    #[test]
    fn what_is_not_a_record_says_why_without_quoting_it() {
        for (text, why) in [
            ("{\"approvals\": [tru", "invalid JSON at line 1"),
            ("[1, 2]", "not a JSON object"),
            (
                r#"{"schema": 1, "head": "a", "approvals": [{"by": 3}]}"#,
                "not a run record",
            ),
            (
                r#"{"schema": 1, "head": "a", "stages": []}"#,
                "not a run record",
            ),
            (r#"{"schema": 1, "head": 7}"#, "not a run record"),
        ] {
            let e = RunRecord::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
            assert!(!e.contains("tru,") && !e.contains("[1, 2]"), "{e}");
        }
    }

    #[test]
    fn the_hosts_a_client_ran_on_are_recorded_and_read_from_old_records_too() {
        let old = RunRecord::parse(include_str!(
            "../../tests/fixtures/records/schema1-approved.json"
        ))
        .unwrap();
        assert!(old.resolved_hosts.is_empty());
        let (stage, outcome) = old.stages.iter().next().expect("a stage");
        let client = outcome.hosts[0].client.clone();
        let from_old = old.hosts_of(&client, stage).expect("hosts in the outcome");
        assert!(from_old.contains(&outcome.hosts[0].host));
        let mut new = RunRecord::new("h");
        new.record_stage(outcome);
        assert_eq!(new.resolved_hosts[&client], from_old);
        assert_eq!(new.hosts_of(&client, "elsewhere"), Some(from_old));
        assert!(new.to_json().contains("\"resolved_hosts\""));
        assert_eq!(new.hosts_of("nobody", stage), None);
    }

    #[test]
    fn a_hosts_snapshot_and_restore_are_recorded_and_old_notes_have_none() {
        let old = RunRecord::parse(include_str!(
            "../../tests/fixtures/records/schema1-approved.json"
        ))
        .unwrap();
        let (_, outcome) = old.stages.iter().next().expect("a stage");
        assert!(
            outcome
                .hosts
                .iter()
                .all(|h| h.snapshot.is_none() && h.restore.is_none())
        );
        let mut outcome = outcome.clone();
        outcome.hosts[0].snapshot = Some(4242);
        outcome.hosts[0].restore =
            Some("fleetgate restore --client a --host b --snapshot 4242".into());
        let mut new = RunRecord::new("h");
        new.record_stage(&outcome);
        let back = RunRecord::parse(&new.to_json()).unwrap();
        let host = &back.stages[&outcome.stage].hosts[0];
        assert_eq!(host.snapshot, Some(4242));
        assert_eq!(host.restore.as_deref(), outcome.hosts[0].restore.as_deref());
    }

    #[test]
    fn planning_again_moves_planned_at_only_for_a_new_plan() {
        let mut r = RunRecord::new("h");
        r.plan(Some("b"), "p1", "run-1", "t1");
        r.plan(Some("b"), "p1", "run-2", "t2");
        assert_eq!(r.planned_at.as_deref(), Some("t1"));
        assert_eq!(r.run_id.as_deref(), Some("run-2"));
        r.plan(Some("b"), "p2", "run-3", "t3");
        assert_eq!(r.planned_at.as_deref(), Some("t3"));
    }

    fn shard_outcome(hosts: &[(&str, bool)]) -> (StageOutcome, StageVerdict) {
        use crate::core::outcome::{Failure, FailureKind, HostOutcome, HostStatus};
        let hosts: Vec<HostOutcome> = hosts
            .iter()
            .map(|(name, ok)| {
                let status = if *ok {
                    HostStatus::Deployed
                } else {
                    HostStatus::RolledBack
                };
                HostOutcome {
                    failure: (!ok).then(|| Failure {
                        kind: FailureKind::Health,
                        app: Some("web".into()),
                        step: "gate".into(),
                        message: "http 500".into(),
                    }),
                    ..HostOutcome::new("alpha", name, status, Default::default())
                }
            })
            .collect();
        let failed = hosts.iter().filter(|h| h.failure.is_some()).count();
        let outcome = StageOutcome {
            stage: "canary".into(),
            rev: "a".repeat(40),
            passed: failed == 0,
            interrupted: false,
            failed_hosts: failed,
            max_failures: 0,
            rolled_back: failed > 0,
            hosts,
        };
        let verdict = crate::core::verdict::verdict(&outcome);
        (outcome, verdict)
    }

    fn shard(index: u32) -> Shard {
        Shard { index, count: 3 }
    }

    #[test]
    fn the_shard_that_completes_the_set_decides_the_stage_and_the_hosts_merge() {
        use crate::core::shard::ShardVerdict;
        let mut record = RunRecord::new(&"a".repeat(40));
        let (one, v1) = shard_outcome(&[("alpha-1", true), ("alpha-4", true)]);
        let (two, v2) = shard_outcome(&[("alpha-2", true)]);
        let (three, v3) = shard_outcome(&[("alpha-3", true)]);
        // the order shards finish in is any
        assert_eq!(
            record.report_shard(shard(3), "42", &three, v3),
            Reported::Waiting {
                missing: vec![1, 2]
            }
        );
        assert_eq!(
            record.report_shard(shard(1), "42", &one, v1),
            Reported::Waiting { missing: vec![2] }
        );
        assert!(record.stages["canary"].passed);
        assert_eq!(
            record.report_shard(shard(2), "42", &two, v2),
            Reported::Decided(ShardVerdict::Passed)
        );
        let stage = &record.stages["canary"];
        let names: Vec<&str> = stage.hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(names, ["alpha-1", "alpha-2", "alpha-3", "alpha-4"]);
        assert!(stage.passed && !stage.rolled_back && stage.failed_hosts == 0);
        assert_eq!(
            record.resolved_hosts["alpha"],
            ["alpha-1", "alpha-2", "alpha-3", "alpha-4"]
        );
        assert_eq!(record.shards["canary"].decided_by, Some(2));
        // written and read back as it was; a record without shards has no key
        let again = RunRecord::parse(&record.to_json()).unwrap();
        assert_eq!(again, record);
        assert!(!RunRecord::new("b").to_json().contains("shards"));
        // a shard's job re-run after the decision: its hosts are replaced,
        // the decision stands
        let (two_again, v) = shard_outcome(&[("alpha-2", true)]);
        assert_eq!(
            record.report_shard(shard(2), "42", &two_again, v),
            Reported::AlreadyDecided(ShardVerdict::Passed)
        );
        assert_eq!(record.stages["canary"].hosts.len(), 4);
    }

    #[test]
    fn one_shards_failed_gate_fails_the_stage_for_every_shard() {
        use crate::core::shard::ShardVerdict;
        let mut record = RunRecord::new(&"a".repeat(40));
        let (one, v1) = shard_outcome(&[("alpha-1", true)]);
        let (two, v2) = shard_outcome(&[("alpha-2", false), ("alpha-5", true)]);
        let (three, v3) = shard_outcome(&[("alpha-3", true)]);
        assert_eq!(v2, StageVerdict::ChangeFailed);
        record.report_shard(shard(2), "42", &two, v2);
        assert!(!record.stages["canary"].passed);
        record.report_shard(shard(1), "42", &one, v1);
        let decided = record.report_shard(shard(3), "42", &three, v3);
        assert_eq!(decided, Reported::Decided(ShardVerdict::ChangeFailed));
        assert!(ShardVerdict::ChangeFailed.rolls_back());
        assert_eq!(ShardVerdict::ChangeFailed.exit_code(), ExitCode::Blocked);
        let stage = &record.stages["canary"];
        assert!(!stage.passed);
        assert_eq!(stage.failed_hosts, 1);
        assert_eq!(stage.hosts.len(), 4);
        assert_eq!(record.shards["canary"].decided_by, Some(3));
        assert_eq!(
            crate::core::outcome::FailedGate::of(stage).map(|g| g.host),
            Some("alpha-2".to_string())
        );
    }

    #[test]
    fn another_run_starts_the_set_afresh_and_a_missing_shard_times_out() {
        use crate::core::shard::ShardVerdict;
        let mut record = RunRecord::new(&"a".repeat(40));
        let (one, v1) = shard_outcome(&[("alpha-1", true)]);
        let (two, v2) = shard_outcome(&[("alpha-2", true)]);
        record.report_shard(shard(1), "41", &one, v1);
        record.report_shard(shard(2), "41", &two, v2);
        // run 42 of the same head: 41's reports do not count for it
        assert_eq!(
            record.report_shard(shard(1), "42", &one, v1),
            Reported::Waiting {
                missing: vec![2, 3]
            }
        );
        assert_eq!(record.stages["canary"].hosts.len(), 1);
        assert_eq!(record.time_out_shards("canary", shard(1), "41"), None);
        assert_eq!(
            record.time_out_shards("canary", shard(1), "42"),
            Some(Reported::Decided(ShardVerdict::TimedOut))
        );
        assert!(!record.stages["canary"].passed);
        // the late shard follows the decision
        assert_eq!(
            record.report_shard(shard(2), "42", &two, v2),
            Reported::AlreadyDecided(ShardVerdict::TimedOut)
        );
        assert_eq!(
            ShardVerdict::combine([
                ShardVerdict::Passed,
                ShardVerdict::ChangeFailed,
                ShardVerdict::InfraFailed
            ]),
            ShardVerdict::InfraFailed
        );
        assert_eq!(ShardVerdict::combine([]), ShardVerdict::Passed);
        assert!(ShardVerdict::TimedOut.rolls_back());
        assert_eq!(ShardVerdict::TimedOut.exit_code(), ExitCode::Infra);
    }
}
