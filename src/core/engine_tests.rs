//! The engine against the in-memory doubles (`fakes.rs`): every branch of
//! the approval and verdict policy, the lock, concurrent records, the
//! revert decision and the forge, in milliseconds. The real-part versions
//! of these are the integration tests in `tests/cli/` (run.rs, faults.rs,
//! forge.rs).

use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::core::approval::{Claim, Verdict};
use crate::core::outcome::RevertOutcome;
use crate::core::record::RunRecord;
use crate::core::records::{Records, deployed_ref};
use crate::fakes::{
    FakeClock, FakeForge, FakeGit, FakeNotifier, FakeRollout, Host, c, fleet_files,
};
use crate::forge::{Env, Forge, Kind, Token};
use crate::ports::{GitStore, Rollout};

struct World {
    git: FakeGit,
    rollout: FakeRollout,
    clock: FakeClock,
    notifier: FakeNotifier,
}

fn world() -> World {
    world_with(&["alpha-1"], 0)
}

fn world_with(canary_hosts: &[&str], max_failures: u32) -> World {
    World {
        git: FakeGit::new(),
        rollout: FakeRollout::new(fleet_files(canary_hosts, max_failures)),
        clock: FakeClock::new(),
        notifier: FakeNotifier::default(),
    }
}

fn request(base: CommitId, head: CommitId) -> RunRequest {
    RunRequest {
        base: Some(base),
        head,
        branch: "main".into(),
        wait_approval: Duration::ZERO,
        lock_wait: Duration::from_secs(600),
        lock_expiry: Duration::from_secs(3600),
        run_id: "run-1".into(),
        holder: "ci@runner".into(),
        run_url: None,
        shard: Shard::ALL,
        shard_timeout: Duration::from_secs(1800),
    }
}

impl World {
    /// alpha deployed to canary at c(2), as the doubles report it.
    fn canary_alpha(&self) -> StageOutcome {
        self.rollout
            .deploy(
                c(2),
                "canary",
                &["alpha".to_string()],
                &Default::default(),
                Shard::ALL,
            )
            .unwrap()
    }

    fn run(&self, base: CommitId, head: CommitId) -> Result<RunOutcome> {
        self.run_req(&request(base, head), None)
    }

    fn run_req(&self, req: &RunRequest, reporter: Option<&Reporter>) -> Result<RunOutcome> {
        let ports = Ports {
            git: &self.git,
            rollout: &self.rollout,
            clock: &self.clock,
            reporter,
            keeper: None,
            notifier: Some(&self.notifier),
        };
        run(&ports, req)
    }

    fn approve(&self, rev: CommitId, by: &str, plan: Option<&str>) -> Verdict {
        self.approve_claim(Claim {
            rev,
            by: by.into(),
            plan: plan.map(str::to_string),
            given_at: None,
            source: "cli",
        })
    }

    fn approve_claim(&self, claim: Claim) -> Verdict {
        let stages = approval_stages(&self.rollout.fleet);
        approve(&self.git, &self.clock, &claim, &stages).unwrap()
    }

    fn deployed(&self, stage: &str, client: &str) -> Option<CommitId> {
        self.git
            .remote
            .borrow()
            .refs
            .get(&deployed_ref(stage, client))
            .copied()
    }

    fn record(&self, rev: CommitId) -> RunRecord {
        RunRecord::parse(&self.git.remote_note(rev).expect("a record on the remote")).unwrap()
    }

    fn lock(&self) -> Option<CommitId> {
        self.git
            .remote
            .borrow()
            .refs
            .get(crate::core::lock::LOCK_REF)
            .copied()
    }

    /// The first rollout: both clients deployed at c(1) (what `Pipeline::new`
    /// does with `deploy` in the integration tests).
    fn first_rollout(&self) {
        for (stage, client) in [("canary", "alpha"), ("production", "beta")] {
            self.git
                .remote
                .borrow_mut()
                .refs
                .insert(deployed_ref(stage, client), c(1));
        }
    }
}

/// `by` approves c(2) at a terminal, naming no plan.
fn claim(by: &str) -> Claim {
    Claim {
        rev: c(2),
        by: by.into(),
        plan: None,
        given_at: None,
        source: "cli",
    }
}

fn plan_hash(w: &World, rev: CommitId) -> String {
    w.record(rev).plan_hash.unwrap()
}

#[test]
fn canary_deploys_production_waits_then_an_approval_lets_it_through() {
    let w = world();
    w.first_rollout();
    let out = w.run(c(1), c(2)).unwrap();
    assert_eq!(out.code, ExitCode::Waiting);
    assert_eq!(
        w.rollout.deployed(),
        [("canary".into(), vec!["alpha".into()])]
    );
    assert_eq!(w.deployed("canary", "alpha"), Some(c(2)));
    assert_eq!(w.deployed("production", "beta"), Some(c(1)));
    assert_eq!(w.record(c(2)).waiting.as_deref(), Some("production"));
    assert_eq!(w.lock(), None, "released");

    let hash = plan_hash(&w, c(2));
    assert!(matches!(
        w.approve(c(2), "alice", Some(&hash[..12])),
        Verdict::Counted { .. }
    ));
    let out = w.run(c(1), c(2)).unwrap();
    assert_eq!(out.code, ExitCode::Ok);
    // Canary is not redeployed; production is, once.
    assert_eq!(
        w.rollout.deployed(),
        [
            ("canary".into(), vec!["alpha".into()]),
            ("production".into(), vec!["beta".into()])
        ]
    );
    assert_eq!(w.deployed("production", "beta"), Some(c(2)));
    assert_eq!(w.record(c(2)).waiting, None);
    // Finished: nothing to do, nothing deployed.
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Ok);
    assert_eq!(w.rollout.deployed().len(), 2);
}

#[test]
fn every_refusal_of_the_approval_policy() {
    let w = world();
    w.first_rollout();
    // No plan yet.
    match w.approve(c(2), "alice", None) {
        Verdict::Refused { why, hint } => {
            assert!(why.contains("no run has planned"), "{why}");
            assert!(hint.unwrap().contains("fleetgate run"));
        }
        v => panic!("{v:?}"),
    }
    w.run(c(1), c(2)).unwrap();
    // Not an approver.
    match w.approve(c(2), "mallory", None) {
        Verdict::Refused { why, hint } => {
            assert!(why.contains("`mallory` is not an approver"), "{why}");
            assert!(hint.unwrap().contains("production: alice, bob"));
        }
        v => panic!("{v:?}"),
    }
    // A plan hash that is not this plan's.
    match w.approve(c(2), "bob", Some("deadbeef")) {
        Verdict::Refused { why, .. } => assert!(why.contains("changed"), "{why}"),
        v => panic!("{v:?}"),
    }
    // A comment written before the plan became what it is.
    let before = Claim {
        rev: c(2),
        by: "bob".into(),
        plan: None,
        given_at: Some("2026-11-29T09:00:00Z".into()),
        source: "comment",
    };
    match w.approve_claim(before) {
        Verdict::Refused { why, .. } => assert!(why.contains("earlier plan"), "{why}"),
        v => panic!("{v:?}"),
    }
    // Refusals record nothing; the stage still waits.
    assert!(w.record(c(2)).approvals.is_empty());
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Waiting);
    // A pipeline without approval stages refuses every approval.
    let stages = Vec::new();
    let claim = claim("alice");
    match approve(&w.git, &w.clock, &claim, &stages).unwrap() {
        Verdict::Refused { why, .. } => assert!(why.contains("needs an approval"), "{why}"),
        v => panic!("{v:?}"),
    }
}

#[test]
fn an_approval_for_an_earlier_plan_does_not_count() {
    let w = world();
    w.first_rollout();
    w.run(c(1), c(2)).unwrap();
    assert!(matches!(
        w.approve(c(2), "bob", None),
        Verdict::Counted { .. }
    ));
    // The same head planned again from another base: a new plan, so bob's
    // approval is stale and the stage waits again.
    w.rollout
        .plan_hashes
        .borrow_mut()
        .insert((c(9), c(2)), "f".repeat(64));
    let out = w.run(c(9), c(2)).unwrap();
    assert_eq!(out.code, ExitCode::Waiting);
    assert_eq!(approval::stale(&out.record, &"f".repeat(64)).len(), 1);
    assert_eq!(w.deployed("production", "beta"), Some(c(1)));
    // Approving twice records once.
    assert!(matches!(
        w.approve(c(2), "bob", None),
        Verdict::Counted { .. }
    ));
    assert!(matches!(
        w.approve(c(2), "bob", None),
        Verdict::Counted { .. }
    ));
    assert_eq!(w.record(c(2)).approvals.len(), 2, "one per plan");
}

#[test]
fn approvals_pushed_at_the_same_time_are_all_kept() {
    let w = world();
    w.first_rollout();
    w.run(c(1), c(2)).unwrap();
    // bob's clone reads the record, then alice's push lands before his:
    // his lease is stale, rejected, re-read, merged.
    let alice = Rc::new(FakeGit::clone_of(w.git.remote.clone()));
    let bob = FakeGit::clone_of(w.git.remote.clone());
    let (clock, stages) = (FakeClock::new(), approval_stages(&w.rollout.fleet));
    let other = alice.clone();
    let stages2 = stages.clone();
    bob.before_push.borrow_mut().push(Box::new(move || {
        let claim = claim("alice");
        approve(&*other, &FakeClock::new(), &claim, &stages2).unwrap();
    }));
    let claim = claim("bob");
    assert!(matches!(
        approve(&bob, &clock, &claim, &stages).unwrap(),
        Verdict::Counted { .. }
    ));
    let mut by: Vec<String> = w.record(c(2)).approvals.into_iter().map(|a| a.by).collect();
    by.sort();
    assert_eq!(by, ["alice", "bob"]);
    assert_eq!(bob.pushes.get(), 2, "rejected once, then pushed");
}

#[test]
fn records_moved_in_the_clone_meanwhile_are_re_read_without_a_remote_and_left_with_one() {
    let w = world();
    let outcome = w.canary_alpha();
    // Without a remote the clone's notes ref is the record: a swap that
    // finds it moved by another process is re-read and retried.
    let git = FakeGit::without_remote();
    git.busy_swaps.set(2);
    let records = Records::new(&git, &w.clock);
    let (moved, _) = records.record_stage(c(2), &outcome, &[]).unwrap();
    assert_eq!(git.ref_target(&moved[0]).unwrap(), Some(c(2)));
    assert!(records.read(c(2)).unwrap().unwrap().stages["canary"].passed);
    assert_eq!(w.clock.slept.get(), Duration::from_millis(100 + 200));
    // With one, the pushed record is what counts: the clone's copy another
    // process moved is left as it is (the next read fetches), no retry.
    let git = FakeGit::new();
    git.busy_swaps.set(1);
    let records = Records::new(&git, &w.clock);
    records.record_stage(c(2), &outcome, &[]).unwrap();
    assert_eq!(git.pushes.get(), 1);
    assert!(git.remote_note(c(2)).unwrap().contains("\"passed\""));
    assert!(records.read(c(2)).unwrap().unwrap().stages["canary"].passed);
}

#[test]
fn the_lock_waits_then_gives_up_or_takes_over_an_expired_one() {
    let w = world();
    w.first_rollout();
    w.git.put_remote_lock(
        r#"{"run_id": "other", "holder": "bob@laptop", "started_at": "2026-11-29T09:59:00Z", "expires_at": "2026-11-29T10:30:00Z"}"#,
    );
    // Held, not expired: wait up to lock_wait, then exit 3 naming the holder.
    let mut req = request(c(1), c(2));
    req.lock_wait = Duration::from_secs(60);
    let e = w.run_req(&req, None).unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Infra);
    assert!(e.to_string().contains("bob@laptop (run other)"), "{e}");
    assert!(w.clock.slept.get() >= Duration::from_secs(60));
    assert!(w.rollout.deployed().is_empty(), "nothing deployed");
    // Expired (the clock moved past it): taken over, and the run goes on.
    w.clock.advance(Duration::from_secs(3600));
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Waiting);
    assert_eq!(w.lock(), None);
    // An unreadable lock is taken over too.
    w.git.put_remote_lock("not json");
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Waiting);
}

#[test]
fn a_lock_taken_over_while_waiting_for_an_approval_stops_the_run() {
    let w = world();
    w.first_rollout();
    let mut req = request(c(1), c(2));
    req.wait_approval = Duration::from_secs(30);
    // While this run waits, another run takes the lock (as if this one's
    // had expired).
    let git = FakeGit::clone_of(w.git.remote.clone());
    *w.clock.on_sleep.borrow_mut() = Some(Box::new(move |_| {
        git.put_remote_lock(
            r#"{"run_id": "thief", "holder": "x", "started_at": "", "expires_at": ""}"#,
        );
    }));
    let e = w.run_req(&req, None).unwrap_err();
    assert!(e.to_string().contains("lost the pipeline lock"), "{e}");
    assert_eq!(e.exit_code(), ExitCode::Infra);
}

#[test]
fn an_approval_given_while_the_run_waits_is_picked_up() {
    let w = world();
    w.first_rollout();
    let mut req = request(c(1), c(2));
    req.wait_approval = Duration::from_secs(60);
    let alice = FakeGit::clone_of(w.git.remote.clone());
    let stages = approval_stages(&w.rollout.fleet);
    *w.clock.on_sleep.borrow_mut() = Some(Box::new(move |_| {
        let claim = claim("alice");
        approve(&alice, &FakeClock::new(), &claim, &stages).unwrap();
    }));
    let out = w.run_req(&req, None).unwrap();
    assert_eq!(out.code, ExitCode::Ok);
    assert_eq!(w.deployed("production", "beta"), Some(c(2)));
}

#[test]
fn a_failed_canary_is_reverted_and_production_never_touched() {
    let w = world();
    w.first_rollout();
    w.rollout.host("alpha-1", Host::Unhealthy);
    let out = w.run(c(1), c(2)).unwrap();
    assert_eq!(out.code, ExitCode::Blocked);
    assert_eq!(
        w.rollout.deployed(),
        [("canary".into(), vec!["alpha".into()])]
    );
    assert_eq!(w.deployed("canary", "alpha"), Some(c(1)), "not moved");
    let reverts = w.git.remote.borrow().reverts.clone();
    assert_eq!(reverts.len(), 1);
    assert_eq!((reverts[0].1, reverts[0].2), (c(1), c(2)));
    assert!(reverts[0].3.starts_with("canary/alpha/web:"), "{reverts:?}");
    assert!(matches!(
        w.record(c(2)).revert,
        Some(RevertOutcome::Pushed { .. })
    ));
}

#[test]
fn a_revert_that_conflicts_is_recorded_and_still_a_handled_failure() {
    let w = world();
    w.first_rollout();
    w.rollout.host("alpha-1", Host::Unhealthy);
    *w.git.revert_result.borrow_mut() = Some(RevertOutcome::Conflict {
        tip: c(3).to_string(),
        reverts: vec![c(2).to_string()],
        paths: vec!["clients/alpha.yaml".into()],
        failed_gate: "canary/alpha/web:health".into(),
    });
    let out = w.run(c(1), c(2)).unwrap();
    assert_eq!(out.code, ExitCode::Blocked);
    assert!(matches!(
        out.record.revert,
        Some(RevertOutcome::Conflict { .. })
    ));
}

#[test]
fn a_tolerated_failure_passes_the_stage_and_keeps_the_clients_ref() {
    let w = world_with(&["alpha-1", "alpha-2"], 1);
    w.first_rollout();
    w.rollout.host("alpha-2", Host::Unhealthy);
    let out = w.run(c(1), c(2)).unwrap();
    // Passed: on to production, which waits.
    assert_eq!(out.code, ExitCode::Waiting);
    assert!(out.record.stages["canary"].passed);
    assert_eq!(w.deployed("canary", "alpha"), Some(c(1)), "one host failed");
    assert!(w.git.remote.borrow().reverts.is_empty());
}

#[test]
fn hosts_that_cannot_be_reached_or_were_lost_are_exit_3_and_never_reverted() {
    for how in [Host::Unreachable, Host::Lost] {
        let w = world();
        w.first_rollout();
        w.rollout.host("alpha-1", how);
        let out = w.run(c(1), c(2)).unwrap();
        assert_eq!(out.code, ExitCode::Infra, "{how:?}");
        assert!(w.git.remote.borrow().reverts.is_empty(), "{how:?}");
        assert_eq!(w.rollout.deployed().len(), 1, "production not touched");
    }
    // Lost even within the tolerance: a host running something un-gated
    // stops the run.
    let w = world_with(&["alpha-1", "alpha-2"], 1);
    w.first_rollout();
    w.rollout.host("alpha-2", Host::Lost);
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Infra);
}

#[test]
fn a_stage_cut_short_by_a_signal_is_exit_3_and_recorded() {
    let w = world_with(&["alpha-1", "alpha-2"], 0);
    w.first_rollout();
    w.rollout.interrupt_stage.set(true);
    let out = w.run(c(1), c(2)).unwrap();
    assert_eq!(out.code, ExitCode::Infra);
    assert!(out.record.stages["canary"].interrupted);
    assert_eq!(w.rollout.deployed().len(), 1, "no later stage");
    assert!(w.git.remote.borrow().reverts.is_empty());
    // Run again: the stage is finished.
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Waiting);
}

#[test]
fn without_on_failure_revert_a_failed_gate_is_not_reverted() {
    let w = World {
        rollout: FakeRollout::edited(
            fleet_files(&["alpha-1"], 0),
            crate::config::PIPELINE,
            "revert: true",
            "revert: false",
        ),
        ..world()
    };
    w.first_rollout();
    w.rollout.host("alpha-1", Host::Unhealthy);
    let out = w.run(c(1), c(2)).unwrap();
    assert_eq!(out.code, ExitCode::Blocked);
    assert!(w.git.remote.borrow().reverts.is_empty());
    assert_eq!(out.record.revert, None);
}

#[test]
fn a_frozen_app_stops_the_run_without_a_revert() {
    let w = world_with(&["alpha-1"], 1);
    w.first_rollout();
    w.rollout.host("alpha-1", Host::Frozen);
    let out = w.run(c(1), c(2)).unwrap();
    assert_eq!(out.code, ExitCode::Blocked);
    assert!(w.git.remote.borrow().reverts.is_empty());
}

#[test]
fn a_signal_is_recorded_wherever_it_stops_the_run() {
    // While waiting for an approval.
    let w = world();
    w.first_rollout();
    let mut req = request(c(1), c(2));
    req.wait_approval = Duration::from_secs(60);
    let flag = Rc::new(std::cell::Cell::new(false));
    let raised = flag.clone();
    *w.clock.on_sleep.borrow_mut() = Some(Box::new(move |_| raised.set(true)));
    let clock = &w.clock;
    // The fake clock's flag follows the hook's.
    let out = {
        let ports = Ports {
            git: &w.git,
            rollout: &w.rollout,
            clock: &Signalled { clock, flag: &flag },
            reporter: None,
            keeper: None,
            notifier: None,
        };
        run(&ports, &req).unwrap()
    };
    assert_eq!(out.code, ExitCode::Infra);
    assert_eq!(out.record.interrupted.unwrap().before_stage, "production");
    assert_eq!(w.lock(), None);
    // Between stages: canary done, then the signal, before production.
    let w = world();
    w.first_rollout();
    let flag = Rc::new(std::cell::Cell::new(false));
    let raised = flag.clone();
    *w.rollout.before_deploy.borrow_mut() = Some(Box::new(move |_| raised.set(true)));
    let ports = Ports {
        git: &w.git,
        rollout: &w.rollout,
        clock: &Signalled {
            clock: &w.clock,
            flag: &flag,
        },
        reporter: None,
        keeper: None,
        notifier: None,
    };
    let out = run(&ports, &request(c(1), c(2))).unwrap();
    assert_eq!(out.code, ExitCode::Infra);
    assert_eq!(out.record.interrupted.unwrap().before_stage, "production");
    assert_eq!(w.deployed("canary", "alpha"), Some(c(2)), "canary finished");
}

/// A clock whose signal flag is shared with a test's hook.
struct Signalled<'a> {
    clock: &'a FakeClock,
    flag: &'a std::cell::Cell<bool>,
}

impl Clock for Signalled<'_> {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }
    fn sleep(&self, d: Duration) {
        self.clock.sleep(d)
    }
    fn interrupted(&self) -> bool {
        self.flag.get()
    }
}

#[test]
fn a_blocking_scan_stops_the_run_before_any_host() {
    let w = world();
    w.first_rollout();
    *w.rollout.scan.borrow_mut() = Some(crate::scan::ScanReport {
        passed: false,
        db: None,
        fail_on: vec![crate::config::Severity::Critical],
        ignore_unfixed: false,
        images: Vec::new(),
        expired_ignores: Vec::new(),
    });
    let out = w.run(c(1), c(2)).unwrap();
    assert_eq!(out.code, ExitCode::Blocked);
    assert!(w.rollout.deployed().is_empty(), "no host touched");
    assert_eq!(out.record.scan.map(|s| s.passed), Some(false));
    assert_eq!(w.lock(), None);
    // Clients that run no image are not scanned.
    let w = world();
    w.first_rollout();
    w.rollout
        .changed
        .borrow_mut()
        .insert((c(1), c(2)), Vec::new());
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Ok);
    assert_eq!(w.rollout.scans.get(), 0);
    assert!(w.rollout.deployed().is_empty(), "nothing changed");
}

#[test]
fn without_a_remote_records_stay_in_the_clone() {
    let w = world();
    let git = FakeGit::without_remote();
    let records = Records::new(&git, &w.clock);
    let outcome = w.canary_alpha();
    let (moved, record) = records.record_stage(c(2), &outcome, &[]).unwrap();
    assert_eq!(moved, [deployed_ref("canary", "alpha")]);
    assert!(record.stages["canary"].passed);
    assert_eq!(git.ref_target(&moved[0]).unwrap(), Some(c(2)));
    assert_eq!(git.pushes.get(), 0);
    assert!(git.remote.borrow().refs.is_empty(), "nothing pushed");
}

#[test]
fn a_corrupt_record_is_an_error_and_is_never_overwritten() {
    let w = world();
    w.first_rollout();
    w.git.put_remote_note(c(2), "{\"approvals\": [tru");
    let e = w.run(c(1), c(2)).unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Infra);
    assert!(e.to_string().contains("refs/notes/fleetgate"), "{e}");
    assert_eq!(w.git.remote_note(c(2)).unwrap(), "{\"approvals\": [tru");
    assert!(w.rollout.deployed().is_empty());
    assert_eq!(w.lock(), None, "released");
    let claim = claim("alice");
    let e = approve(&w.git, &w.clock, &claim, &approval_stages(&w.rollout.fleet)).unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Infra);
}

#[test]
fn an_unreachable_remote_is_exit_3_before_anything_runs() {
    let w = world();
    w.git.unreachable.set(true);
    let e = w.run(c(1), c(2)).unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Infra);
    assert!(w.rollout.deployed().is_empty());
}

#[test]
fn resuming_needs_a_recorded_base() {
    let w = world();
    let e = recorded_base(&w.git, &w.clock, c(2)).unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Invalid);
    w.first_rollout();
    w.run(c(1), c(2)).unwrap();
    assert_eq!(recorded_base(&w.git, &w.clock, c(2)).unwrap(), Some(c(1)));
}

#[test]
fn a_first_push_rolls_the_fleet_out_from_nothing_through_every_gate() {
    let w = world();
    // No deployed ref anywhere, no base: every client compared with nothing.
    let first = RunRequest {
        base: None,
        ..request(c(1), c(2))
    };
    let out = w.run_req(&first, None).unwrap();
    assert_eq!(out.code, ExitCode::Waiting);
    assert_eq!(
        w.rollout.deployed(),
        [("canary".into(), vec!["alpha".into()])]
    );
    assert_eq!(w.deployed("canary", "alpha"), Some(c(2)));
    assert_eq!(out.record.base, None);
    assert_eq!(w.rollout.plans.borrow()[0], (None, c(2)));
    // Resumed without --base after the approval: still from nothing.
    assert_eq!(recorded_base(&w.git, &w.clock, c(2)).unwrap(), None);
    assert!(matches!(
        w.approve(c(2), "alice", None),
        Verdict::Counted { .. }
    ));
    assert_eq!(w.run_req(&first, None).unwrap().code, ExitCode::Ok);
    assert_eq!(w.deployed("production", "beta"), Some(c(2)));
}

#[test]
fn without_a_base_a_deployed_client_is_compared_with_its_deployed_ref() {
    let w = world();
    // A force-push: the base is gone, but alpha's canary ref says what runs.
    w.git
        .remote
        .borrow_mut()
        .refs
        .insert(deployed_ref("canary", "alpha"), c(1));
    w.rollout
        .changed
        .borrow_mut()
        .insert((c(1), c(3)), Vec::new());
    let out = w
        .run_req(
            &RunRequest {
                base: None,
                ..request(c(1), c(3))
            },
            None,
        )
        .unwrap();
    // alpha renders the same as what it runs: not redeployed; beta was never
    // deployed: it waits for production's approval.
    assert_eq!(out.code, ExitCode::Waiting);
    assert!(w.rollout.deployed().is_empty());
    assert!(w.rollout.plans.borrow().contains(&(Some(c(1)), c(3))));
}

#[test]
fn a_failed_first_push_is_rolled_back_and_nothing_is_reverted() {
    let w = world();
    w.rollout.host("alpha-1", Host::Unhealthy);
    let out = w
        .run_req(
            &RunRequest {
                base: None,
                ..request(c(1), c(2))
            },
            None,
        )
        .unwrap();
    assert_eq!(out.code, ExitCode::Blocked);
    assert!(w.git.remote.borrow().reverts.is_empty());
    assert!(matches!(
        out.record.revert,
        Some(RevertOutcome::NothingToRevert { .. })
    ));
}

fn reporter(forge: Rc<FakeForge>, sha: CommitId) -> Reporter {
    let env = Env {
        kind: Kind::Forgejo,
        api: "http://forge.invalid/api/v1".into(),
        owner: "hosting".into(),
        repo: "fleet".into(),
        token: Token::new("fake-token-not-secret".into()),
        token_var: "FORGEJO_TOKEN",
        event_name: Some("push".into()),
        event: serde_json::Value::Null,
        run_id: None,
        run_url: Some("http://forge.invalid/hosting/fleet/actions/runs/7".into()),
        actor: None,
    };
    Reporter::new(env, Box::new(Shared(forge)), &sha.to_string())
}

/// The test keeps a handle on the forge the reporter owns.
struct Shared(Rc<FakeForge>);

impl Forge for Shared {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn comment_limit(&self) -> usize {
        self.0.comment_limit()
    }
    fn comments(&self, issue: u64) -> Result<Vec<crate::forge::Comment>> {
        self.0.comments(issue)
    }
    fn create_comment(&self, issue: u64, body: &str) -> Result<crate::forge::Comment> {
        self.0.create_comment(issue, body)
    }
    fn edit_comment(&self, id: u64, body: &str) -> Result<()> {
        self.0.edit_comment(id, body)
    }
    fn set_status(&self, sha: &str, status: &crate::forge::Status) -> Result<()> {
        self.0.set_status(sha, status)
    }
    fn pull(&self, number: u64) -> Result<Option<crate::forge::Pull>> {
        self.0.pull(number)
    }
    fn merged_pull_of(&self, sha: &str) -> Result<Option<crate::forge::Pull>> {
        self.0.merged_pull_of(sha)
    }
    fn environment_approvals(&self, run_id: u64) -> Result<Vec<crate::forge::EnvApproval>> {
        self.0.environment_approvals(run_id)
    }
    fn open_issues(&self) -> Result<Vec<crate::forge::Issue>> {
        self.0.open_issues()
    }
    fn create_issue(&self, title: &str, body: &str) -> Result<crate::forge::Issue> {
        self.0.create_issue(title, body)
    }
    fn edit_issue(&self, number: u64, title: &str, body: &str) -> Result<()> {
        self.0.edit_issue(number, title, body)
    }
    fn close_issue(&self, number: u64, comment: &str) -> Result<()> {
        self.0.close_issue(number, comment)
    }
}

#[test]
fn the_forge_hears_each_stage_and_the_waiting_comment() {
    let w = world();
    w.first_rollout();
    let forge = Rc::new(FakeForge {
        merged: Some(12),
        ..FakeForge::default()
    });
    let r = reporter(forge.clone(), c(2));
    let out = w.run_req(&request(c(1), c(2)), Some(&r)).unwrap();
    assert_eq!(out.code, ExitCode::Waiting);
    let statuses: Vec<(String, String)> = forge
        .statuses
        .borrow()
        .iter()
        .map(|(c, s, _)| (c.clone(), s.clone()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("fleetgate/scan".into(), "pending".into()),
            ("fleetgate/scan".into(), "success".into()),
            ("fleetgate/canary".into(), "pending".into()),
            ("fleetgate/canary".into(), "success".into()),
            ("fleetgate/production".into(), "pending".into()),
        ]
    );
    let comments = forge.comments.borrow();
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0].body.contains("waits for an approval"),
        "{}",
        comments[0].body
    );
    // The webhooks link the comment, under the run page's server.
    assert_eq!(w.notifier.kinds(), ["stage_passed", "waiting_approval"]);
    let sent = w.notifier.sent.borrow();
    assert_eq!(sent[0].comment_url, None);
    assert_eq!(
        sent[1].comment_url.as_deref(),
        Some("http://forge.invalid/hosting/fleet/pulls/12#issuecomment-1")
    );
}

#[test]
fn the_failure_event_links_the_failure_comment() {
    let w = world();
    w.first_rollout();
    w.rollout.host("alpha-1", Host::Unhealthy);
    let forge = Rc::new(FakeForge {
        merged: Some(12),
        ..FakeForge::default()
    });
    let r = reporter(forge.clone(), c(2));
    assert_eq!(
        w.run_req(&request(c(1), c(2)), Some(&r)).unwrap().code,
        ExitCode::Blocked
    );
    assert_eq!(w.notifier.kinds(), ["failed_rolled_back", "reverted"]);
    for e in w.notifier.sent.borrow().iter() {
        assert_eq!(
            e.comment_url.as_deref(),
            Some("http://forge.invalid/hosting/fleet/pulls/12#issuecomment-1"),
            "{e:?}"
        );
    }
    assert!(forge.comments.borrow()[0].body.contains("rolled back"));
}

#[test]
fn a_forge_that_fails_before_anything_deploys_stops_the_run_later_ones_do_not() {
    // The first status answers 502: nothing is deployed, exit 3.
    let w = world();
    w.first_rollout();
    let forge = Rc::new(FakeForge::default());
    forge.fail_statuses_from.set(1);
    let r = reporter(forge.clone(), c(2));
    let e = w.run_req(&request(c(1), c(2)), Some(&r)).unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Infra);
    assert!(w.rollout.deployed().is_empty());
    assert_eq!(w.lock(), None);
    // Once a stage deploys, a failure to report is logged and the rollout
    // goes on; a run that otherwise passed says the forge was not told
    // everything (exit 3).
    let w = world();
    w.first_rollout();
    w.run(c(1), c(2)).unwrap();
    assert!(matches!(
        w.approve(c(2), "alice", None),
        Verdict::Counted { .. }
    ));
    let forge = Rc::new(FakeForge::default());
    // scan pending, scan success, canary success, production pending; then
    // production's success fails.
    forge.fail_statuses_from.set(5);
    let r = reporter(forge.clone(), c(2));
    let e = w.run_req(&request(c(1), c(2)), Some(&r)).unwrap_err();
    assert!(
        e.to_string().contains("could not be told everything"),
        "{e}"
    );
    assert_eq!(
        w.deployed("production", "beta"),
        Some(c(2)),
        "deployed all the same"
    );
}

#[test]
fn a_lock_taken_over_during_a_deploy_stops_the_run_before_it_records() {
    let w = world();
    w.first_rollout();
    // While canary deploys, this run's lock expires and another run takes
    // it (its keeper could not reach the remote, say).
    let thief = FakeGit::clone_of(w.git.remote.clone());
    *w.rollout.before_deploy.borrow_mut() = Some(Box::new(move |_| {
        thief.put_remote_lock(
            r#"{"run_id": "next", "holder": "ci@other", "started_at": "", "expires_at": "2026-11-29T11:00:00Z"}"#,
        );
    }));
    let e = w.run(c(1), c(2)).unwrap_err();
    assert!(e.to_string().contains("lost the pipeline lock"), "{e}");
    assert!(e.to_string().contains("run next of ci@other"), "{e}");
    assert_eq!(e.exit_code(), ExitCode::Infra);
    assert_eq!(w.rollout.deployed().len(), 1, "canary deployed");
    // Nothing more on the remote: the stage is not recorded, its ref not
    // moved, the other run's lock left as it is.
    assert_eq!(w.deployed("canary", "alpha"), Some(c(1)));
    assert!(w.record(c(2)).stages.is_empty());
    assert!(w.git.remote_lock().unwrap().contains("\"next\""));
}

/// A keeper that keeps the lease it is given (the real one renews it from
/// a thread; `lock_tests.rs` renews one by hand).
#[derive(Default)]
struct Kept(std::cell::RefCell<Option<std::sync::Arc<crate::core::lock::Lease>>>);

impl crate::ports::LockKeeper for Kept {
    fn keep(&self, lease: std::sync::Arc<crate::core::lock::Lease>) {
        *self.0.borrow_mut() = Some(lease);
    }
}

#[test]
fn the_keeper_gets_the_runs_lease_and_it_ends_with_the_run() {
    let w = world();
    w.first_rollout();
    let kept = Kept::default();
    let ports = Ports {
        git: &w.git,
        rollout: &w.rollout,
        clock: &w.clock,
        reporter: None,
        keeper: Some(&kept),
        notifier: None,
    };
    let mut req = request(c(1), c(2));
    req.run_url = Some("https://forge.example/o/fleet/actions/runs/7".into());
    assert_eq!(run(&ports, &req).unwrap().code, ExitCode::Waiting);
    let lease = kept.0.borrow().clone().expect("a lease to keep");
    assert_eq!(lease.holder().run_url, req.run_url);
    assert!(lease.done(), "released: the keeper stops renewing");
    assert_eq!(w.lock(), None);
}

#[test]
fn a_deleted_client_is_taken_down_in_its_stage_behind_its_approval() {
    let w = world();
    w.first_rollout();
    // gamma ran in production (its ref says so); its file is gone at c(2).
    w.git
        .remote
        .borrow_mut()
        .refs
        .insert(deployed_ref("production", "gamma"), c(1));
    let mut changed: Vec<String> = w.rollout.fleet.clients.keys().cloned().collect();
    changed.push("gamma".into());
    w.rollout.changed.borrow_mut().insert((c(1), c(2)), changed);
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Waiting);
    assert!(matches!(
        w.approve(c(2), "alice", None),
        Verdict::Counted { .. }
    ));
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Ok);
    let deployed = w.rollout.deployed();
    assert_eq!(
        deployed.last().unwrap(),
        &(
            "production".to_string(),
            vec!["beta".to_string(), "gamma".to_string()]
        )
    );
    // Told what gamma ran, and its ref is gone; beta's moved.
    let previous = w.rollout.previous.borrow().last().unwrap().clone();
    assert_eq!(previous.get("gamma"), Some(&c(1)));
    assert_eq!(w.deployed("production", "gamma"), None);
    assert_eq!(w.deployed("production", "beta"), Some(c(2)));
}

/// c(1)..c(2) takes `web` off alpha (and changes nothing else).
fn alpha_drops_web(w: &World) {
    w.rollout
        .removed
        .borrow_mut()
        .insert("alpha".into(), vec!["web".into()]);
    w.rollout
        .changed
        .borrow_mut()
        .insert((c(1), c(2)), vec!["alpha".into()]);
}

/// The fake fleet with `web` marked `rollback: freeze`, and the pipeline
/// edited by `pipeline`.
fn freeze_world(pipeline: (&str, &str)) -> World {
    let files = fleet_files(&["alpha-1"], 0)
        .into_iter()
        .map(|(p, t)| match p.as_str() {
            "pipelines/apps/web/app.yaml" => (p, format!("{t}rollback: freeze\n")),
            crate::config::PIPELINE => (p, t.replace(pipeline.0, pipeline.1)),
            _ => (p, t),
        })
        .collect();
    World {
        rollout: FakeRollout::new(files),
        ..world()
    }
}

#[test]
fn removing_a_freeze_app_needs_an_approval_like_productions_in_any_stage() {
    let w = freeze_world(("", ""));
    w.first_rollout();
    // alpha (canary, no approval of its own) no longer runs web.
    alpha_drops_web(&w);
    let out = w.run(c(1), c(2)).unwrap();
    assert_eq!(out.code, ExitCode::Waiting);
    assert_eq!(out.record.waiting.as_deref(), Some("canary"));
    assert!(w.rollout.deployed().is_empty(), "nothing removed yet");
    // Production's approvers approve it.
    assert!(matches!(
        w.approve(c(2), "alice", None),
        Verdict::Counted { .. }
    ));
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Ok);
    assert_eq!(
        w.rollout.deployed(),
        [("canary".into(), vec!["alpha".into()])]
    );
}

#[test]
fn removing_a_freeze_app_without_any_approvers_is_refused() {
    let w = freeze_world((
        "    approval:\n      required: true\n      approvers: [alice, bob]\n",
        "",
    ));
    w.first_rollout();
    alpha_drops_web(&w);
    let out = w.run(c(1), c(2)).unwrap();
    assert_eq!(out.code, ExitCode::Blocked);
    assert!(w.rollout.deployed().is_empty());
    // A safe app's removal needs nothing more than its stage.
    let w = world();
    w.first_rollout();
    alpha_drops_web(&w);
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Ok);
    assert_eq!(
        w.rollout.deployed(),
        [("canary".into(), vec!["alpha".into()])]
    );
}

#[test]
fn history_reads_every_record_on_the_remote_and_a_bad_note_hides_no_other() {
    let w = world();
    w.first_rollout();
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Waiting);
    w.git.put_remote_note(c(3), "{\"approvals\": [tru");
    // A clone that never ran anything reads them from the remote.
    let other = FakeGit::clone_of(Rc::clone(&w.git.remote));
    let history = Records::new(&other, &w.clock).history().unwrap();
    let commits: Vec<CommitId> = history.iter().map(|(n, _)| n.commit).collect();
    assert_eq!(commits, [c(3), c(2)], "newest first");
    let e = history[0].1.as_ref().unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Infra);
    assert!(e.to_string().contains("refs/notes/fleetgate"), "{e}");
    let record = history[1].1.as_ref().unwrap();
    assert_eq!(record.waiting.as_deref(), Some("production"));
    assert!(record.stages["canary"].passed);
}

/// A world whose canary client takes its hosts from Hetzner Cloud.
fn hcloud_world() -> World {
    World {
        git: FakeGit::new(),
        rollout: FakeRollout::new(crate::fakes::hcloud_alpha(fleet_files(&["alpha-1"], 0))),
        clock: FakeClock::new(),
        notifier: FakeNotifier::default(),
    }
}

#[test]
fn a_stage_deploys_to_the_servers_the_inventory_resolves_and_records_them() {
    let w = hcloud_world();
    w.first_rollout();
    w.rollout.inventory.servers.borrow_mut().insert(
        "client=alpha".into(),
        Ok(vec![
            ("alpha-a".into(), "192.0.2.1".into()),
            ("alpha-b".into(), "192.0.2.2".into()),
        ]),
    );
    let out = w.run(c(1), c(2)).unwrap();
    assert_eq!(out.code, ExitCode::Waiting);
    let hosts: Vec<&str> = out.outcomes[0]
        .hosts
        .iter()
        .map(|h| h.host.as_str())
        .collect();
    assert_eq!(hosts, ["alpha-a", "alpha-b"]);
    assert_eq!(
        w.record(c(2)).resolved_hosts["alpha"],
        ["alpha-a", "alpha-b"]
    );
    assert_eq!(w.deployed("canary", "alpha"), Some(c(2)));
}

/// The inventory failing is never a passed stage: nothing deployed or
/// recorded as deployed, the lock released, and the exit code says whose
/// problem it is.
#[test]
fn an_inventory_that_cannot_answer_stops_the_stage_with_nothing_deployed() {
    use crate::fakes::Unresolvable;
    for (name, set_up, code, words) in [
        (
            "rate limit exhausted",
            Some(Err(Unresolvable::RateLimited)),
            ExitCode::Infra,
            "429",
        ),
        (
            "token refused",
            Some(Err(Unresolvable::Unauthorized)),
            ExitCode::Infra,
            "HCLOUD_TOKEN",
        ),
        (
            "no server selected",
            Some(Ok(Vec::new())),
            ExitCode::Invalid,
            "selects no server",
        ),
        (
            "no token",
            None,
            ExitCode::Invalid,
            "HCLOUD_TOKEN is not set",
        ),
    ] {
        let w = hcloud_world();
        w.first_rollout();
        match set_up {
            Some(answer) => {
                w.rollout
                    .inventory
                    .servers
                    .borrow_mut()
                    .insert("client=alpha".into(), answer);
            }
            None => w.rollout.inventory.no_token.set(true),
        }
        let e = w.run(c(1), c(2)).unwrap_err();
        assert_eq!(e.exit_code(), code, "{name}: {e}");
        assert!(e.to_string().contains(words), "{name}: {e}");
        assert_eq!(w.deployed("canary", "alpha"), Some(c(1)), "{name}");
        assert_eq!(w.lock(), None, "{name}: the lock is released");
        let stages = w
            .git
            .remote_note(c(2))
            .map(|n| RunRecord::parse(&n).unwrap().stages.len());
        assert!(matches!(stages, None | Some(0)), "{name}: {stages:?}");
    }
}

/// The events a run sends its webhooks, and that a webhook never decides
/// anything: the same run with a notifier that fails every send ends the
/// same way, with the same record.
#[test]
fn webhooks_hear_each_stage_and_never_change_the_outcome() {
    use crate::core::events::EventKind;
    let with_hook = |w: World| World {
        rollout: FakeRollout::edited(
            fleet_files(&["alpha-1"], 0),
            crate::config::PIPELINE,
            "on_failure:",
            "notify:\n  - url_env: HOOK\n    format: slack\non_failure:",
        ),
        ..w
    };
    // Canary passes, production waits: passed, then waiting (never a
    // success for production).
    let w = with_hook(world());
    w.first_rollout();
    let mut req = request(c(1), c(2));
    req.run_url = Some("https://forge.example/o/r/actions/runs/7".into());
    assert_eq!(w.run_req(&req, None).unwrap().code, ExitCode::Waiting);
    assert_eq!(w.notifier.kinds(), ["stage_passed", "waiting_approval"]);
    assert_eq!(
        *w.notifier.hooks.borrow(),
        [1, 1],
        "notify: of the fleet at head"
    );
    let sent = w.notifier.sent.borrow();
    assert_eq!(sent[0].stage.as_deref(), Some("canary"));
    assert_eq!(sent[0].clients, ["alpha"]);
    assert_eq!(sent[0].hosts[0].status, "deployed");
    assert_eq!(
        sent[0].run_url.as_deref(),
        Some("https://forge.example/o/r/actions/runs/7")
    );
    assert_eq!(sent[1].stage.as_deref(), Some("production"));
    assert_eq!(sent[1].clients, ["beta"]);
    assert!(
        sent[1].summary.contains("by one of: alice, bob"),
        "{}",
        sent[1].summary
    );
    drop(sent);
    // Approved: production passes.
    w.approve(c(2), "alice", None);
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Ok);
    assert_eq!(
        w.notifier.kinds(),
        ["stage_passed", "waiting_approval", "stage_passed"]
    );

    // A failed canary: failed and rolled back, then reverted; never passed.
    let run_failed = |failing: bool| {
        let w = world();
        w.first_rollout();
        w.rollout.host("alpha-1", Host::Unhealthy);
        w.notifier.failing.set(failing);
        let out = w.run(c(1), c(2)).unwrap();
        (w, out)
    };
    let (w, out) = run_failed(false);
    assert_eq!(w.notifier.kinds(), ["failed_rolled_back", "reverted"]);
    let sent = w.notifier.sent.borrow();
    assert!(
        sent[0].summary.starts_with("stage canary FAILED at ")
            && sent[0]
                .summary
                .contains("; rolled back: alpha-1; reverted with "),
        "{}",
        sent[0].summary
    );
    assert!(!sent.iter().any(|e| e.kind == EventKind::StagePassed));
    let Some(RevertOutcome::Pushed { commit, .. }) = &out.record.revert else {
        panic!("reverted: {:?}", out.record.revert)
    };
    assert_eq!(sent[1].revert_commit.as_ref(), Some(commit));
    drop(sent);
    // The same with every send failing: the same exit code and record.
    let (failing, out_failing) = run_failed(true);
    assert_eq!(failing.notifier.kinds(), ["failed_rolled_back", "reverted"]);
    assert_eq!(out_failing.code, out.code);
    assert_eq!(out_failing.code, ExitCode::Blocked);
    assert_eq!(out_failing.record.stages, out.record.stages);
    assert_eq!(failing.git.remote.borrow().reverts.len(), 1);

    // A frozen app: frozen, nothing else.
    let w = world_with(&["alpha-1"], 1);
    w.first_rollout();
    w.rollout.host("alpha-1", Host::Frozen);
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Blocked);
    assert_eq!(w.notifier.kinds(), ["frozen"]);
    assert_eq!(w.notifier.sent.borrow()[0].hosts[0].status, "frozen");

    // A lost host: failed, its state unknown, not rolled back.
    let w = world();
    w.first_rollout();
    w.rollout.host("alpha-1", Host::Lost);
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Infra);
    assert_eq!(w.notifier.kinds(), ["failed_rolled_back"]);
    let summary = w.notifier.sent.borrow()[0].summary.clone();
    assert!(summary.contains("state UNKNOWN"), "{summary}");
    assert!(!summary.contains("; rolled back"), "{summary}");

    // Passing stages with every send failing: exit 4, then 0, all the same.
    let w = world();
    w.first_rollout();
    w.notifier.failing.set(true);
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Waiting);
    w.approve(c(2), "bob", None);
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Ok);
    assert_eq!(
        w.notifier.kinds(),
        ["stage_passed", "waiting_approval", "stage_passed"]
    );
}

/// Shards of one run report on a stage from three runners: two of them
/// read the record before either pushed, so the later push is rejected,
/// re-read and its report re-applied on top of the other's. Exactly one
/// shard — the one whose push completed the set — decides the stage, and
/// the record holds every shard's hosts.
#[test]
fn the_last_of_three_racing_shards_decides_the_stage_once() {
    use crate::core::outcome::{HostOutcome, HostStatus, StageOutcome};
    use crate::core::shard::{Shard, ShardVerdict};
    use crate::core::verdict::StageVerdict;
    let remote = FakeGit::new().remote.clone();
    fn report(git: &FakeGit, index: u32, hosts: &[&str]) -> RunRecord {
        let shard = Shard { index, count: 3 };
        let o = StageOutcome {
            stage: "production".into(),
            rev: c(2).to_string(),
            passed: true,
            interrupted: false,
            failed_hosts: 0,
            max_failures: 0,
            rolled_back: false,
            hosts: hosts
                .iter()
                .map(|h| HostOutcome::new("web", h, HostStatus::Deployed, Default::default()))
                .collect(),
        };
        Records::new(git, &FakeClock::new())
            .update(c(2), &[], |r| {
                r.report_shard(shard, "42", &o, StageVerdict::Passed);
            })
            .unwrap()
    }
    let one = FakeGit::clone_of(remote.clone());
    let after_one = report(&one, 1, &["web-1", "web-4"]);
    assert_eq!(after_one.shards["production"].missing(), [2, 3]);
    // shard 3's runner has read the record; shard 2's push lands first
    let two = Rc::new(FakeGit::clone_of(remote.clone()));
    let three = FakeGit::clone_of(remote.clone());
    let other = two.clone();
    three.before_push.borrow_mut().push(Box::new(move || {
        let after_two = report(&other, 2, &["web-2"]);
        assert_eq!(after_two.shards["production"].missing(), [3]);
        assert_eq!(after_two.shards["production"].decided, None);
    }));
    let last = report(&three, 3, &["web-3"]);
    assert_eq!(three.pushes.get(), 2, "rejected once, then pushed");
    let set = &last.shards["production"];
    assert_eq!(set.decided, Some(ShardVerdict::Passed));
    assert_eq!(set.decided_by, Some(3));
    let hosts: Vec<&str> = last.stages["production"]
        .hosts
        .iter()
        .map(|h| h.host.as_str())
        .collect();
    assert_eq!(hosts, ["web-1", "web-2", "web-3", "web-4"]);
    // what every runner reads from the remote now
    let read = Records::new(&one, &FakeClock::new())
        .read(c(2))
        .unwrap()
        .unwrap();
    assert_eq!(read, last);
}

/// The canary hosts of the sharded runs below.
const SHARDED: [&str; 9] = [
    "alpha-1", "alpha-2", "alpha-3", "alpha-4", "alpha-5", "alpha-6", "alpha-7", "alpha-8",
    "alpha-9",
];

/// What each shard's run ended with: exit code, its stage deploys (stage,
/// rev, clients) and the kinds of the webhook events it sent.
type ShardEnds = Rc<RefCell<BTreeMap<u32, (ExitCode, Vec<(String, CommitId)>, Vec<&'static str>)>>>;

/// The shards `order` of an `count`-shard run of `base..head`, each as on
/// a runner of its own (its clone of `remote`, its clock, its rollout with
/// `unhealthy` canary hosts), started one after the other: each next shard
/// starts when the one before first waits for the others, so the first
/// reports first and the last completes the set.
#[allow(clippy::too_many_arguments)]
fn run_shards(
    remote: Rc<RefCell<crate::fakes::Remote>>,
    count: u32,
    order: Vec<u32>,
    unhealthy: &'static [&'static str],
    timeout: Duration,
    base: CommitId,
    head: CommitId,
    ends: ShardEnds,
) {
    let Some((&index, rest)) = order.split_first() else {
        return;
    };
    let git = FakeGit::clone_of(remote.clone());
    let rollout = FakeRollout::new(fleet_files(&SHARDED, 0));
    for h in unhealthy {
        rollout.host(h, Host::Unhealthy);
    }
    let clock = FakeClock::new();
    let mut next = Some((remote, rest.to_vec(), ends.clone()));
    *clock.on_sleep.borrow_mut() = Some(Box::new(move |_| {
        if let Some((remote, rest, ends)) = next.take() {
            run_shards(remote, count, rest, unhealthy, timeout, base, head, ends);
        }
    }));
    let notifier = FakeNotifier::default();
    let ports = Ports {
        git: &git,
        rollout: &rollout,
        clock: &clock,
        reporter: None,
        keeper: None,
        notifier: Some(&notifier),
    };
    let req = RunRequest {
        shard: Shard { index, count },
        shard_timeout: timeout,
        run_id: "77".into(),
        holder: format!("shard-{index}@runner"),
        ..request(base, head)
    };
    let out = run(&ports, &req).unwrap();
    let deploys = rollout
        .deploys
        .borrow()
        .iter()
        .map(|(s, rev, _)| (s.clone(), *rev))
        .collect();
    ends.borrow_mut()
        .insert(index, (out.code, deploys, notifier.kinds()));
}

/// A world whose canary client `alpha` (on `SHARDED`) runs c(2), deployed
/// by an unsharded run: what the sharded runs of c(2)..c(3) go back to.
fn sharded_world() -> World {
    let w = world_with(&SHARDED, 0);
    assert_eq!(w.run(c(1), c(2)).unwrap().code, ExitCode::Waiting);
    assert_eq!(w.deployed("canary", "alpha"), Some(c(2)));
    w
}

fn statuses(record: &RunRecord, stage: &str) -> Vec<(String, crate::core::outcome::HostStatus)> {
    record.stages[stage]
        .hosts
        .iter()
        .map(|h| (h.host.clone(), h.status))
        .collect()
}

#[test]
fn three_shards_deploy_a_stage_each_its_slice_and_decide_it_once() {
    use crate::core::outcome::HostStatus;
    let w = sharded_world();
    let ends: ShardEnds = Default::default();
    let long = Duration::from_secs(1800);
    run_shards(
        w.git.remote.clone(),
        3,
        vec![2, 3, 1],
        &[],
        long,
        c(2),
        c(3),
        ends.clone(),
    );
    let ends = ends.borrow();
    // every shard passed the canary and waits for production's approval
    for (i, (code, deploys, _)) in ends.iter() {
        assert_eq!(*code, ExitCode::Waiting, "shard {i}");
        assert_eq!(deploys, &[("canary".to_string(), c(3))], "shard {i}");
    }
    let record = w.record(c(3));
    let hosts = statuses(&record, "canary");
    let names: Vec<&str> = hosts.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(names, SHARDED, "every host once, from its one shard");
    assert!(hosts.iter().all(|(_, s)| *s == HostStatus::Deployed));
    assert!(record.stages["canary"].passed);
    let set = &record.shards["canary"];
    assert_eq!(
        (set.decided, set.decided_by),
        (Some(ShardVerdict::Passed), Some(1))
    );
    // the ref moved once every shard reported; the shared lock is gone
    assert_eq!(w.deployed("canary", "alpha"), Some(c(3)));
    assert_eq!(w.lock(), None);
    // the stage's news came once, from the shard that decided
    assert_eq!(ends[&1].2, ["stage_passed", "waiting_approval"]);
    assert_eq!(ends[&2].2, Vec::<&str>::new());
    assert_eq!(ends[&3].2, Vec::<&str>::new());
}

#[test]
fn a_shard_failing_its_gate_rolls_every_shard_back_and_reverts_once() {
    use crate::core::outcome::HostStatus;
    use crate::core::shard::slice_of;
    let w = sharded_world();
    // alpha-4 fails its gate; the shard holding it reports first
    let failing = slice_of("canary", "alpha", "alpha-4", 3);
    let mut order: Vec<u32> = vec![failing];
    order.extend((1..=3).filter(|i| *i != failing));
    let ends: ShardEnds = Default::default();
    let long = Duration::from_secs(1800);
    run_shards(
        w.git.remote.clone(),
        3,
        order.clone(),
        &["alpha-4"],
        long,
        c(2),
        c(3),
        ends.clone(),
    );
    let ends = ends.borrow();
    for (i, (code, deploys, _)) in ends.iter() {
        assert_eq!(
            *code,
            ExitCode::Blocked,
            "shard {i}: one verdict, one exit code"
        );
        // hosts that passed are put back on c(2) by a deploy of it (the
        // failing shard's own gate failure rolled back only that host here)
        assert_eq!(
            deploys,
            &[("canary".to_string(), c(3)), ("canary".to_string(), c(2))],
            "shard {i}"
        );
    }
    let record = w.record(c(3));
    let hosts = statuses(&record, "canary");
    assert_eq!(hosts.len(), 9);
    assert!(
        hosts.iter().all(|(_, s)| *s == HostStatus::RolledBack),
        "{hosts:?}"
    );
    assert!(!record.stages["canary"].passed);
    let decider = *order.last().unwrap();
    assert_eq!(record.shards["canary"].decided_by, Some(decider));
    // one revert, by the shard that decided; the ref stays on c(2)
    let reverts = w.git.remote.borrow().reverts.clone();
    assert_eq!(reverts.len(), 1, "{reverts:?}");
    assert_eq!((reverts[0].1, reverts[0].2), (c(2), c(3)));
    assert!(matches!(record.revert, Some(RevertOutcome::Pushed { .. })));
    assert_eq!(w.deployed("canary", "alpha"), Some(c(2)));
    assert_eq!(w.lock(), None);
    for (i, (_, _, kinds)) in ends.iter() {
        match *i == decider {
            true => assert_eq!(kinds, &["failed_rolled_back", "reverted"], "shard {i}"),
            false => assert!(kinds.is_empty(), "shard {i}: {kinds:?}"),
        }
    }
}

#[test]
fn a_shard_that_never_reports_fails_the_stage_after_the_timeout() {
    use crate::core::outcome::HostStatus;
    let w = sharded_world();
    let ends: ShardEnds = Default::default();
    let timeout = Duration::from_secs(60);
    // shard 3 of 3 never runs
    run_shards(
        w.git.remote.clone(),
        3,
        vec![1, 2],
        &[],
        timeout,
        c(2),
        c(3),
        ends.clone(),
    );
    let ends = ends.borrow();
    assert_eq!(ends.len(), 2);
    for (i, (code, _, _)) in ends.iter() {
        assert_eq!(*code, ExitCode::Infra, "shard {i}");
    }
    let record = w.record(c(3));
    let set = &record.shards["canary"];
    assert_eq!(set.decided, Some(ShardVerdict::TimedOut));
    assert_eq!(set.missing(), [3]);
    assert!(
        statuses(&record, "canary")
            .iter()
            .all(|(_, s)| *s == HostStatus::RolledBack)
    );
    // not the change's fault: nothing reverted, the ref stays
    assert!(w.git.remote.borrow().reverts.is_empty());
    assert_eq!(w.deployed("canary", "alpha"), Some(c(2)));
    assert_eq!(w.lock(), None);
}

/// A clock whose run is stopped (SIGTERM) at its first sleep.
struct StopsAtFirstSleep(FakeClock);

impl crate::ports::Clock for StopsAtFirstSleep {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.now()
    }
    fn sleep(&self, d: Duration) {
        self.0.sleep(d);
        self.0.interrupted.set(true);
    }
    fn interrupted(&self) -> bool {
        self.0.interrupted.get()
    }
}

/// A shard stopped (SIGTERM) while it waits for the others reports itself
/// interrupted: the stage can no longer pass, so the shard that completes
/// the set decides it `interrupted` and rolls its hosts back; no revert.
#[test]
fn a_shard_interrupted_while_waiting_makes_the_others_roll_back_without_a_revert() {
    use crate::core::outcome::HostStatus;
    let w = sharded_world();
    let remote = w.git.remote.clone();
    let run_one = |index: u32, clock: &dyn crate::ports::Clock| {
        let git = FakeGit::clone_of(remote.clone());
        let rollout = FakeRollout::new(fleet_files(&SHARDED, 0));
        let ports = Ports {
            git: &git,
            rollout: &rollout,
            clock,
            reporter: None,
            keeper: None,
            notifier: None,
        };
        let req = RunRequest {
            shard: Shard { index, count: 2 },
            run_id: "77".into(),
            ..request(c(2), c(3))
        };
        let out = run(&ports, &req).unwrap();
        let deploys: Vec<CommitId> = rollout.deploys.borrow().iter().map(|d| d.1).collect();
        (out, deploys)
    };
    let (stopped, deploys) = run_one(1, &StopsAtFirstSleep(FakeClock::new()));
    assert_eq!(stopped.code, ExitCode::Infra);
    assert_eq!(deploys, [c(3)], "no rollback started by a stopping run");
    let set = &w.record(c(3)).shards["canary"];
    assert_eq!(set.decided, None, "shard 2 has not reported");
    let (last, deploys) = run_one(2, &FakeClock::new());
    assert_eq!(last.code, ExitCode::Infra);
    assert_eq!(deploys, [c(3), c(2)], "shard 2 put its hosts back");
    let record = w.record(c(3));
    assert_eq!(
        record.shards["canary"].decided,
        Some(ShardVerdict::Interrupted)
    );
    assert_eq!(record.shards["canary"].decided_by, Some(2));
    let mine: Vec<(String, HostStatus)> = statuses(&record, "canary")
        .into_iter()
        .filter(|(h, _)| crate::core::shard::slice_of("canary", "alpha", h, 2) == 2)
        .collect();
    assert!(!mine.is_empty());
    assert!(
        mine.iter().all(|(_, s)| *s == HostStatus::RolledBack),
        "{mine:?}"
    );
    assert!(w.git.remote.borrow().reverts.is_empty());
    assert_eq!(w.deployed("canary", "alpha"), Some(c(2)));
    assert_eq!(w.lock(), None);
}
