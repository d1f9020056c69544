//! The executor end to end on local "hosts" (`LocalHost`: the real scripts
//! on the local `sh`), through `run_stage` as `deploy` calls it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::config::{Host, RollbackPolicy};
use crate::core::verdict::StageVerdict;
use crate::gates::health::Policy;
use crate::gates::http::{Prober, ScriptedProber};
use crate::remote::RemoteError;
use crate::remote::release::{AppDir, ReleaseFile, Start};
use crate::remote::ssh::{Dropping, LocalHost};
use crate::secrets::Masker;

struct Local;

impl Connector for Local {
    type Host = LocalHost;
    async fn connect(&self, host: &Host) -> Result<LocalHost, RemoteError> {
        if host.address == "unreachable" {
            return Err(RemoteError::Connect {
                host: host.name.clone(),
                address: host.address.clone(),
                message: "Connection refused".into(),
                hint: "",
            });
        }
        Ok(LocalHost {
            name: host.name.clone(),
        })
    }
    async fn close(&self, _: LocalHost) {}
}

const POLICY: Policy = Policy {
    interval: Duration::from_millis(10),
    successes: 1,
    failures: 1,
    deadline: Duration::from_secs(2),
    soak: Duration::ZERO,
};

/// A host whose app is healthy iff its `version` file is not "bad".
fn target(root: &std::path::Path, host: &str, version: &str, freeze: bool) -> Target {
    Target {
        client: "alpha".into(),
        host: Host {
            name: host.into(),
            address: if host.contains("down") {
                "unreachable".into()
            } else {
                "127.0.0.1".into()
            },
            port: 22,
            user: "deploy".into(),
            deploy_root: root.join(host).to_str().unwrap().into(),
        },
        apps: vec![AppJob {
            name: "web".into(),
            dir: AppDir {
                deploy_root: root.join(host).to_str().unwrap().into(),
                client: "alpha".into(),
                app: "web".into(),
            },
            files: vec![ReleaseFile::new(
                "version".into(),
                format!("{version}\n").into_bytes(),
                false,
            )],
            start: Start::Command {
                start: "cp version ../../started".into(),
                stop: None,
            },
            stop: None,
            checks: vec![CheckSpec::Command {
                command: "! grep -q bad version".into(),
                policy: POLICY,
            }],
            rollback: if freeze {
                RollbackPolicy::Freeze
            } else {
                RollbackPolicy::Safe
            },
            routes: Vec::new(),
            blue_green: None,
            backup: None,
            logs: None,
        }],
        removals: Vec::new(),
        masker: Masker::default(),
        snapshot: None,
        proxy: None,
    }
}

fn plan(rev: &str, targets: Vec<Target>, max_failures: usize) -> StagePlan {
    StagePlan {
        stage: "canary".into(),
        rev: rev.repeat(40),
        parallelism: 2,
        max_failures,
        rollback: true,
        targets,
        keep_removed: crate::config::KEEP_REMOVED_RELEASES,
    }
}

fn live(root: &std::path::Path, host: &str) -> String {
    std::fs::read_to_string(root.join(host).join("alpha/web/current/version")).unwrap_or_default()
}

fn run(p: &StagePlan) -> StageOutcome {
    run_with(p, &Local, &ScriptedProber::default(), Duration::ZERO)
}

fn run_with<C: Connector, P: Prober>(
    p: &StagePlan,
    connector: &C,
    prober: &P,
    soak: Duration,
) -> StageOutcome {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_stage(
            p,
            connector,
            prober,
            &super::snapshot::NoSnapshots,
            soak,
        ))
}

/// Thresholds of an HTTP check, probed every millisecond: the scripts, not
/// the clock, decide.
fn gates(successes: u32, failures: u32) -> Policy {
    Policy {
        interval: Duration::from_millis(1),
        successes,
        failures,
        deadline: Duration::from_secs(5),
        soak: Duration::ZERO,
    }
}

/// `t` gated by HTTP checks of `urls` instead of its command check.
fn http(mut t: Target, urls: &[&str], policy: Policy) -> Target {
    t.apps[0].checks = urls
        .iter()
        .map(|url| CheckSpec::Http {
            url: url.to_string(),
            via: None,
            expect_status: 200,
            expect_body: None,
            timeout: Duration::from_millis(30),
            policy,
        })
        .collect();
    t
}

fn verdict(o: &StageOutcome) -> crate::core::verdict::StageVerdict {
    crate::core::verdict::verdict(o)
}

#[test]
fn deploy_noop_failure_and_rollback() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let o = run(&plan("a", vec![target(root, "h1", "v1", false)], 0));
    assert!(o.passed);
    assert_eq!(o.hosts[0].status, HostStatus::Deployed);
    assert_eq!(live(root, "h1"), "v1\n");

    let o = run(&plan("a", vec![target(root, "h1", "v1", false)], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Unchanged, "{o:#?}");

    let o = run(&plan("b", vec![target(root, "h1", "bad", false)], 0));
    assert!(!o.passed && o.rolled_back);
    assert_eq!(o.hosts[0].status, HostStatus::RolledBack, "{o:#?}");
    assert_eq!(
        o.hosts[0].failure.as_ref().unwrap().kind,
        FailureKind::Health
    );
    assert_eq!(live(root, "h1"), "v1\n");
    assert!(o.hosts[0].rollback_checks.iter().all(|c| c.passed));
}

#[test]
fn a_release_started_but_never_judged_is_judged_again() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let o = run(&plan("a", vec![target(root, "h1", "v1", false)], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Deployed);
    let gated = root.join("h1/alpha/web/gated");
    assert_eq!(
        std::fs::read_to_string(&gated).unwrap(),
        format!("{}\n", "a".repeat(40))
    );
    assert_eq!(o.hosts[0].runs["web"], Runs::Release("a".repeat(40)));

    // As if killed between its start and its verdict: started, not gated.
    std::fs::remove_file(&gated).unwrap();
    let o = run(&plan("a", vec![target(root, "h1", "v1", false)], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Deployed, "{o:#?}");
    assert!(!o.hosts[0].checks.is_empty(), "its gates ran");
    assert!(gated.exists());

    // A broken release killed before its verdict is rolled back on the
    // next deploy, and the release it goes back to is gated again.
    let o = run(&plan("b", vec![target(root, "h1", "bad", false)], 0));
    assert_eq!(o.hosts[0].status, HostStatus::RolledBack);
    assert_eq!(o.hosts[0].runs["web"], Runs::Release("a".repeat(40)));
    assert_eq!(
        std::fs::read_to_string(&gated).unwrap(),
        format!("{}\n", "a".repeat(40))
    );
}

#[test]
fn freeze_apps_stay_and_untouched_hosts_stay_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    run(&plan("a", vec![target(root, "h1", "v1", true)], 0));
    let o = run(&plan("b", vec![target(root, "h1", "bad", true)], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Failed);
    assert_eq!(o.frozen(), ["alpha/web@h1"]);
    assert_eq!(live(root, "h1"), "bad\n");

    // One parallel slot: the unreachable host fails first, the next never starts.
    let mut p = plan(
        "c",
        vec![
            target(root, "h0-down", "v1", false),
            target(root, "h2", "v1", false),
        ],
        0,
    );
    p.parallelism = 1;
    let o = run(&p);
    assert_eq!(o.hosts[0].status, HostStatus::Failed);
    assert_eq!(o.hosts[1].status, HostStatus::NotStarted);
    assert!(!root.join("h2").exists());
    assert_eq!(o.hosts[0].runs["web"], Runs::AsBefore);
    assert_eq!(
        crate::core::verdict::verdict(&o),
        crate::core::verdict::StageVerdict::InfraFailed
    );
}

const H1: &str = "http://h1.test/health";
const H2: &str = "http://h2.test/health";

#[test]
fn an_http_check_passes_on_successes_in_a_row_however_it_flapped_before() {
    let tmp = tempfile::tempdir().unwrap();
    let prober = ScriptedProber::default();
    // Single 502s never reach `failures` (2) in a row; the third ok in a
    // row is the eighth probe.
    prober.answer(H1, "ok 502 ok ok 502 ok ok ok 502");
    let t = http(target(tmp.path(), "h1", "v1", false), &[H1], gates(3, 2));
    let o = run_with(&plan("a", vec![t], 0), &Local, &prober, Duration::ZERO);
    assert_eq!(o.hosts[0].status, HostStatus::Deployed, "{o:#?}");
    let check = &o.hosts[0].checks[0];
    assert!(check.passed);
    assert_eq!((check.attempts, prober.probes(H1)), (8, 8));
    assert_eq!(check.detail, format!("GET {H1}: 200"));
    assert_eq!(verdict(&o), StageVerdict::Passed);
}

#[test]
fn an_http_check_fails_on_failures_in_a_row_and_its_host_is_rolled_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let prober = ScriptedProber::default();
    // Release a: one ok. Release b: flaps, then two 502s in a row. After
    // the rollback: healthy again.
    prober.answer(H1, "ok  ok 502 ok 502 502  ok");
    let t = http(target(root, "h1", "v1", false), &[H1], gates(1, 2));
    let o = run_with(&plan("a", vec![t], 0), &Local, &prober, Duration::ZERO);
    assert_eq!(o.hosts[0].status, HostStatus::Deployed);
    let t = http(target(root, "h1", "v2", false), &[H1], gates(3, 2));
    let o = run_with(&plan("b", vec![t], 0), &Local, &prober, Duration::ZERO);
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::RolledBack, "{o:#?}");
    let failure = h.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::Health);
    assert_eq!(
        failure.message,
        format!("{H1}: 2 consecutive failures: GET {H1}: status 502, expected 200")
    );
    assert_eq!(h.checks[0].attempts, 5);
    assert!(!h.rollback_checks.is_empty() && h.rollback_checks.iter().all(|c| c.passed));
    assert_eq!(live(root, "h1"), "v1\n");
    assert_eq!(h.runs["web"], Runs::Release("a".repeat(40)));
    assert_eq!(verdict(&o), StageVerdict::ChangeFailed);
    let gate = crate::revert::FailedGate::of(&o).unwrap();
    assert_eq!(gate.check, format!("web:{H1}"));
}

#[test]
fn a_tolerated_failed_host_is_rolled_back_without_failing_the_stage() {
    // h1's new release answers 502 twice (then, rolled back, ok again); h2's
    // is healthy. The same failure with and without a host to spare.
    let stage = |max_failures| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let prober = ScriptedProber::default();
        prober.answer(H1, "ok  502 502  ok").answer(H2, "ok");
        let deploy = |rev, v1, v2| {
            let targets = vec![
                http(target(root, "h1", v1, false), &[H1], gates(1, 2)),
                http(target(root, "h2", v2, false), &[H2], gates(1, 2)),
            ];
            run_with(
                &plan(rev, targets, max_failures),
                &Local,
                &prober,
                Duration::ZERO,
            )
        };
        assert!(deploy("a", "v1", "v1").passed);
        let o = deploy("b", "v2", "v2");
        (o, live(root, "h1"), live(root, "h2"))
    };

    let (o, h1, h2) = stage(1);
    assert!(o.passed && o.rolled_back, "{o:#?}");
    assert_eq!(o.failed_hosts, 1);
    assert_eq!(o.hosts[0].status, HostStatus::RolledBack);
    assert_eq!(o.hosts[1].status, HostStatus::Deployed);
    assert_eq!((h1.as_str(), h2.as_str()), ("v1\n", "v2\n"));
    assert_eq!(verdict(&o), StageVerdict::Passed);

    let (o, h1, h2) = stage(0);
    assert!(!o.passed, "{o:#?}");
    assert_eq!(o.failed_hosts, 1);
    assert_eq!(o.hosts[0].status, HostStatus::RolledBack);
    assert_eq!(
        o.hosts[0].failure.as_ref().unwrap().kind,
        FailureKind::Health
    );
    // Healthy, but its stage failed: back as well, with no failure of its own.
    assert_eq!(o.hosts[1].status, HostStatus::RolledBack);
    assert_eq!(o.hosts[1].failure, None);
    assert_eq!((h1.as_str(), h2.as_str()), ("v1\n", "v1\n"));
    assert_eq!(verdict(&o), StageVerdict::ChangeFailed);
}

#[test]
fn a_failed_check_cancels_the_other_checks_of_its_host() {
    let tmp = tempfile::tempdir().unwrap();
    let prober = ScriptedProber::default();
    prober.answer(H1, "502").answer(H2, "ok");
    // H2 would need far more successes than H1 needs failures.
    let mut t = http(
        target(tmp.path(), "h1", "v1", false),
        &[H1, H2],
        gates(1, 2),
    );
    if let CheckSpec::Http { policy, .. } = &mut t.apps[0].checks[1] {
        policy.successes = 1000;
    }
    let o = run_with(&plan("a", vec![t], 0), &Local, &prober, Duration::ZERO);
    let checks = &o.hosts[0].checks;
    assert!(!checks[0].passed && !checks[0].cancelled, "{checks:#?}");
    assert!(!checks[1].passed && checks[1].cancelled, "{checks:#?}");
    assert_eq!(
        crate::revert::FailedGate::of(&o).unwrap().check,
        format!("web:{H1}"),
        "the cancelled check is not the failed gate"
    );
}

#[test]
fn a_check_that_times_out_or_is_refused_fails_like_a_bad_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let prober = ScriptedProber::default();
    prober.answer(H1, "timeout");
    let t = http(target(root, "h1", "v1", false), &[H1], gates(1, 2));
    let o = run_with(&plan("a", vec![t], 0), &Local, &prober, Duration::ZERO);
    let h = &o.hosts[0];
    assert_eq!(
        h.checks[0].detail,
        format!("2 consecutive failures: GET {H1}: timed out")
    );
    // Each probe waited out its 30 ms timeout.
    assert!(h.checks[0].seconds >= 0.06, "{:?}", h.checks[0]);
    // A first deploy has nothing to go back to: taken down.
    assert_eq!(h.status, HostStatus::RolledBack, "{o:#?}");
    assert_eq!(h.runs["web"], Runs::Nothing);
    assert_eq!(live(root, "h1"), "");

    // Nothing listening on the URL at all.
    let t = http(target(root, "h2", "v1", false), &[H2], gates(1, 2));
    let o = run_with(&plan("a", vec![t], 0), &Local, &prober, Duration::ZERO);
    assert_eq!(
        o.hosts[0].checks[0].detail,
        format!("2 consecutive failures: GET {H2}: connection failed")
    );
}

#[test]
fn health_must_hold_through_the_soak() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let soak = Duration::from_millis(100);
    let mut policy = gates(1, 2);
    policy.interval = Duration::from_millis(10);
    let prober = ScriptedProber::default();
    prober.answer(H1, "ok").answer(H2, "ok ok ok 502 502 ok");

    // Healthy at once, and probed on through the soak before it passes.
    let t = http(target(root, "h1", "v1", false), &[H1], policy);
    let o = run_with(&plan("a", vec![t], 0), &Local, &prober, soak);
    let check = &o.hosts[0].checks[0];
    assert_eq!(o.hosts[0].status, HostStatus::Deployed, "{o:#?}");
    assert!(check.passed && check.seconds >= 0.1, "{check:?}");
    assert!(check.attempts > 5, "{check:?}");

    // Healthy, then two failures in a row within the soak: failed, and
    // before the soak was over.
    let t = http(target(root, "h2", "v1", false), &[H2], policy);
    let o = run_with(&plan("a", vec![t], 0), &Local, &prober, soak);
    let check = &o.hosts[0].checks[0];
    assert!(!check.passed && check.detail.contains("soak"), "{check:?}");
    assert_eq!(check.attempts, 5);
    assert!(check.seconds < 0.1, "{check:?}");
    assert_eq!(o.hosts[0].status, HostStatus::RolledBack);
}

/// Connects like `Local`, except to `host`: its first connection drops
/// once a line of output contains `at`; after that the host is `back` (a
/// fresh connection works) or off the network (connecting fails).
struct Flaky {
    host: &'static str,
    at: &'static str,
    back: bool,
    connections: AtomicUsize,
}

impl Flaky {
    fn new(host: &'static str, at: &'static str, back: bool) -> Flaky {
        Flaky {
            host,
            at,
            back,
            connections: AtomicUsize::new(0),
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Connector for Flaky {
    type Host = Dropping<LocalHost>;

    async fn connect(&self, host: &Host) -> Result<Dropping<LocalHost>, RemoteError> {
        let local = Local.connect(host).await?;
        if host.name != self.host {
            return Ok(Dropping::new(&host.name, local, None));
        }
        let n = self.connections.fetch_add(1, Ordering::SeqCst);
        if n > 0 && !self.back {
            return Err(RemoteError::Connect {
                host: host.name.clone(),
                address: host.address.clone(),
                message: "Connection timed out".into(),
                hint: "",
            });
        }
        Ok(Dropping::new(
            &host.name,
            local,
            (n == 0).then_some(self.at),
        ))
    }

    async fn close(&self, _: Dropping<LocalHost>) {}

    fn reconnect_waits(&self) -> [Duration; 3] {
        [Duration::from_millis(1); 3]
    }
}

/// `t`, whose start says so on its output (where `Flaky` drops it).
fn says_starting(mut t: Target) -> Target {
    t.apps[0].start = Start::Command {
        start: "echo starting; cp version ../../started".into(),
        stop: None,
    };
    t
}

fn steps(h: &HostOutcome) -> Vec<(&str, bool)> {
    h.steps.iter().map(|s| (s.step.as_str(), s.ok)).collect()
}

/// v1 deployed on h1, then v2 over a connection that drops while v2 starts
/// (`back`: the host answers a new connection at once).
fn lost_during_start(root: &std::path::Path, back: bool) -> (Flaky, StageOutcome) {
    run(&plan("a", vec![target(root, "h1", "v1", false)], 0));
    let flaky = Flaky::new("h1", "starting", back);
    let t = says_starting(target(root, "h1", "v2", false));
    let o = run_with(
        &plan("b", vec![t], 0),
        &flaky,
        &ScriptedProber::default(),
        Duration::ZERO,
    );
    (flaky, o)
}

#[test]
fn a_host_lost_during_its_start_is_failed_and_runs_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (lost, o) = lost_during_start(root, false);
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Failed, "{o:#?}");
    let failure = h.failure.as_ref().unwrap();
    assert_eq!(
        (failure.kind, failure.app.as_deref(), failure.step.as_str()),
        (FailureKind::Infra, Some("web"), "start")
    );
    assert_eq!(
        steps(h),
        [
            ("connect", true),
            ("inspect", true),
            ("upload", true),
            ("switch", true),
            ("start", false)
        ]
    );
    // Its connection is not trusted with the rollback, and no fresh one
    // could be had: nobody knows what it runs.
    assert_eq!(lost.connections(), 4, "the first, then three tries");
    assert_eq!(h.runs["web"], Runs::Unknown);
    let rollback = h.rollback_failure.as_ref().unwrap();
    assert_eq!(
        (rollback.kind, rollback.step.as_str()),
        (FailureKind::Infra, "rollback")
    );
    assert!(!o.passed && !o.rolled_back);
    assert_eq!(o.lost().len(), 1);
    assert_eq!(verdict(&o), StageVerdict::InfraFailed);
    // It did carry on without us: "unknown" was the honest answer.
    assert_eq!(live(root, "h1"), "v2\n");

    // Back on the network, the next deploy judges it again and converges.
    let o = run(&plan("b", vec![target(root, "h1", "v2", false)], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Deployed, "{o:#?}");
    assert_eq!(o.hosts[0].runs["web"], Runs::Release("b".repeat(40)));
}

#[test]
fn a_lost_host_that_is_back_at_once_is_rolled_back_on_a_fresh_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (blip, o) = lost_during_start(root, true);
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::RolledBack, "{o:#?}");
    assert_eq!(h.failure.as_ref().unwrap().kind, FailureKind::Infra);
    assert_eq!(h.rollback_failure, None);
    // The dropped connection fails every call: the rollback ran on a new one.
    assert_eq!(blip.connections(), 2);
    assert_eq!(h.runs["web"], Runs::Release("a".repeat(40)));
    assert_eq!(live(root, "h1"), "v1\n");
    assert!(o.rolled_back && o.lost().is_empty());
    // Rolled back, yet the stage failed to reach a host, not on a gate.
    assert_eq!(verdict(&o), StageVerdict::InfraFailed);
}

#[test]
fn a_switch_cut_off_unreported_is_switched_back_all_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    run(&plan("a", vec![target(root, "h1", "v1", false)], 0));
    // Dropped as the switch begins (step 1: upload, switch, start, prune):
    // the host switches, fleetgate never hears that it did.
    let blip = Flaky::new("h1", " 1 begin", true);
    let t = target(root, "h1", "v2", false);
    let o = run_with(
        &plan("b", vec![t], 0),
        &blip,
        &ScriptedProber::default(),
        Duration::ZERO,
    );
    let h = &o.hosts[0];
    assert_eq!(h.failure.as_ref().unwrap().step, "switch", "{o:#?}");
    assert_eq!(h.switched, ["web"]);
    assert_eq!(h.status, HostStatus::RolledBack);
    assert_eq!(live(root, "h1"), "v1\n");
    assert_eq!(h.runs["web"], Runs::Release("a".repeat(40)));
}

/// `target` with a second app, `web2`: each app's start appends its version
/// to `<app>/starts`, so a restart shows.
fn two_apps(root: &std::path::Path, host: &str, web: &str, web2: &str) -> Target {
    let mut t = target(root, host, web, false);
    let mut second = target(root, host, web2, false).apps.remove(0);
    second.name = "web2".into();
    second.dir.app = "web2".into();
    t.apps.push(second);
    for app in &mut t.apps {
        app.start = Start::Command {
            start: "cat version >> ../../starts".into(),
            stop: None,
        };
    }
    t
}

fn starts(root: &std::path::Path, host: &str, app: &str) -> String {
    std::fs::read_to_string(root.join(host).join("alpha").join(app).join("starts"))
        .unwrap_or_default()
}

fn state(root: &std::path::Path, host: &str, app: &str) -> crate::remote::release::State {
    let p = root.join(host).join("alpha").join(app).join("state.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn app_steps<'a>(h: &'a HostOutcome, app: &str) -> Vec<&'a str> {
    h.steps
        .iter()
        .filter(|s| s.app.as_deref() == Some(app))
        .map(|s| s.step.as_str())
        .collect()
}

#[test]
fn an_app_rendered_the_same_stays_on_its_release_when_a_sibling_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b, d) = ("a".repeat(40), "b".repeat(40), "d".repeat(40));
    let o = run(&plan("a", vec![two_apps(root, "h1", "v1", "v1")], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Deployed, "{o:#?}");

    // Only web2 renders differently at b: web is neither uploaded, switched
    // nor started, and runs b all the same.
    let o = run(&plan("b", vec![two_apps(root, "h1", "v1", "v2")], 0));
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Deployed, "{o:#?}");
    assert_eq!(app_steps(h, "web"), ["unchanged"]);
    assert_eq!(app_steps(h, "web2"), ["upload", "switch", "start", "prune"]);
    assert_eq!(h.switched, ["web2"]);
    assert_eq!(
        (starts(root, "h1", "web"), starts(root, "h1", "web2")),
        ("v1\n".into(), "v1\nv2\n".into())
    );
    assert_eq!(h.runs["web"], Runs::Release(b.clone()));
    assert_eq!(h.runs["web2"], Runs::Release(b.clone()));
    assert!(
        h.checks.iter().all(|c| c.app == "web2"),
        "web is not gated again"
    );
    let web = state(root, "h1", "web");
    assert_eq!(
        (web.rev.as_str(), web.runs(), web.previous_run()),
        (a.as_str(), b.as_str(), Some(a.as_str()))
    );
    let web2 = state(root, "h1", "web2");
    assert_eq!(
        (web2.rev.as_str(), web2.runs(), web2.previous_run()),
        (b.as_str(), b.as_str(), Some(a.as_str()))
    );
    // (`.next`, where a deploy stages its switch, is not a release.)
    let releases = std::fs::read_dir(root.join("h1/alpha/web/releases"))
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(releases, 1, "no release of web at b");

    // The same again: nothing to do, nothing to record.
    let o = run(&plan("b", vec![two_apps(root, "h1", "v1", "v2")], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Unchanged, "{o:#?}");
    assert_eq!(
        steps(&o.hosts[0]),
        [
            ("connect", true),
            ("inspect", true),
            ("unchanged", true),
            ("unchanged", true)
        ]
    );

    // A commit that renders neither differently: both recorded, neither touched.
    let o = run(&plan("d", vec![two_apps(root, "h1", "v1", "v2")], 0));
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Unchanged, "{o:#?}");
    assert!(steps(h).contains(&("record", true)), "{o:#?}");
    assert_eq!(
        (h.runs["web"].clone(), h.runs["web2"].clone()),
        (Runs::Release(d.clone()), Runs::Release(d.clone()))
    );
    assert_eq!(state(root, "h1", "web2").runs(), d);
    assert_eq!(state(root, "h1", "web2").previous_run(), Some(b.as_str()));
    assert_eq!(
        (starts(root, "h1", "web"), starts(root, "h1", "web2")),
        ("v1\n".into(), "v1\nv2\n".into())
    );

    // web2 broken at c: rolled back, and web, never touched, stays recorded
    // at what the host runs.
    let o = run(&plan("c", vec![two_apps(root, "h1", "v1", "bad")], 0));
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::RolledBack, "{o:#?}");
    assert_eq!(h.switched, ["web2"]);
    assert_eq!(h.runs["web"], Runs::Release(d.clone()));
    assert_eq!(h.runs["web2"], Runs::Release(b.clone()));
    assert_eq!(starts(root, "h1", "web"), "v1\n");
    assert_eq!(state(root, "h1", "web").runs(), d);
    assert_eq!(state(root, "h1", "web").rev, a);
}

#[test]
fn a_host_rolled_back_for_its_stage_puts_back_what_its_kept_apps_record() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = "a".repeat(40);
    let deploy = |rev, h1: Target, h2: Target| run(&plan(rev, vec![h1, h2], 0));
    let o = deploy(
        "a",
        two_apps(root, "h1", "v1", "v1"),
        target(root, "h2", "v1", false),
    );
    assert!(o.passed, "{o:#?}");
    // h1 is healthy, h2 is not: the stage fails and h1 goes back too.
    let o = deploy(
        "b",
        two_apps(root, "h1", "v1", "v2"),
        target(root, "h2", "bad", false),
    );
    assert!(!o.passed);
    let h1 = &o.hosts[0];
    assert_eq!(h1.status, HostStatus::RolledBack, "{o:#?}");
    assert_eq!(h1.runs["web"], Runs::Release(a.clone()));
    assert_eq!(h1.runs["web2"], Runs::Release(a.clone()));
    assert_eq!(state(root, "h1", "web").runs(), a);
    assert_eq!(starts(root, "h1", "web"), "v1\n");
}

#[test]
fn a_kept_release_is_live_only_while_current_started_and_gated_name_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b) = ("a".repeat(40), "b".repeat(40));
    run(&plan("a", vec![two_apps(root, "h1", "v1", "v1")], 0));

    // As if killed between web's start and its verdict: judged again, even
    // though b renders it the same.
    std::fs::remove_file(root.join("h1/alpha/web/gated")).unwrap();
    let o = run(&plan("b", vec![two_apps(root, "h1", "v1", "v1")], 0));
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Deployed, "{o:#?}");
    assert_eq!(app_steps(h, "web"), ["upload", "switch", "start", "prune"]);
    assert_eq!(app_steps(h, "web2"), ["unchanged"]);
    assert_eq!(starts(root, "h1", "web"), "v1\nv1\n");
    assert_eq!(state(root, "h1", "web").rev, b);

    // As if killed inside a switch of web to c, after `current` moved and
    // before `state.json` was written: c's files are live but never
    // started, so c is not live.
    let app = root.join("h1/alpha/web");
    let c = "c".repeat(40);
    std::fs::create_dir_all(app.join("releases").join(&c)).unwrap();
    std::fs::write(app.join("releases").join(&c).join("version"), "v3\n").unwrap();
    std::fs::remove_file(app.join("current")).unwrap();
    std::os::unix::fs::symlink(format!("releases/{c}"), app.join("current")).unwrap();
    let o = run(&plan("c", vec![two_apps(root, "h1", "v3", "v1")], 0));
    let h = &o.hosts[0];
    assert_eq!(
        app_steps(h, "web"),
        ["upload", "switch", "start", "prune"],
        "{o:#?}"
    );
    assert_eq!(starts(root, "h1", "web"), "v1\nv1\nv3\n");
    let web = state(root, "h1", "web");
    assert_eq!(
        (web.rev.as_str(), web.previous.as_deref()),
        (c.as_str(), Some(b.as_str()))
    );
    assert_eq!(state(root, "h1", "web2").rev, a);
}

fn with_snapshot(mut t: Target, keep: u32, pre: Option<&str>) -> Target {
    t.snapshot = Some(super::snapshot::SnapshotJob {
        server: t.host.name.clone(),
        keep,
        pre: pre
            .map(|c| vec![("web".to_string(), c.to_string())])
            .unwrap_or_default(),
        description: "before".into(),
        labels: Default::default(),
    });
    t
}

fn run_snapshots(p: &StagePlan, snapshots: &crate::fakes::FakeSnapshots) -> StageOutcome {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_stage(
            p,
            &Local,
            &ScriptedProber::default(),
            snapshots,
            Duration::ZERO,
        ))
}

#[test]
fn a_snapshot_comes_before_the_first_change_and_only_then() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let snaps = crate::fakes::FakeSnapshots::default();
    let t = |v| {
        with_snapshot(
            target(root, "h1", v, true),
            2,
            Some("echo dumped > ../../dump"),
        )
    };
    let o = run_snapshots(&plan("a", vec![t("v1")], 0), &snaps);
    assert_eq!(o.hosts[0].status, HostStatus::Deployed, "{o:#?}");
    assert_eq!(o.hosts[0].snapshot, Some(1001));
    let order: Vec<&str> = o.hosts[0].steps.iter().map(|s| s.step.as_str()).collect();
    let at = |s| order.iter().position(|x| *x == s).unwrap();
    assert!(
        at("pre_snapshot") < at("snapshot") && at("snapshot") < at("upload"),
        "{order:?}"
    );
    assert!(
        root.join("h1/dump").exists(),
        "pre_snapshot ran on the host"
    );

    // Nothing changes: no snapshot.
    let o = run_snapshots(&plan("a", vec![t("v1")], 0), &snaps);
    assert_eq!(o.hosts[0].status, HostStatus::Unchanged);
    assert_eq!(o.hosts[0].snapshot, None);
    assert_eq!(snaps.jobs.borrow().len(), 1);

    // A failed snapshot: exit 3, the host untouched.
    snaps
        .fail
        .borrow_mut()
        .push_back("action 7 failed: disk busy".into());
    let o = run_snapshots(&plan("b", vec![t("v2")], 0), &snaps);
    assert_eq!(o.hosts[0].status, HostStatus::Failed);
    let f = o.hosts[0].failure.as_ref().unwrap();
    assert_eq!((f.kind, f.step.as_str()), (FailureKind::Infra, "snapshot"));
    assert!(f.message.contains("disk busy"));
    assert_eq!(verdict(&o), StageVerdict::InfraFailed);
    assert_eq!(live(root, "h1"), "v1\n", "nothing changed");
    assert!(o.hosts[0].switched.is_empty());

    // Retention: keep 2.
    for v in ["v3", "v4"] {
        run_snapshots(&plan(&v[1..], vec![t(v)], 0), &snaps);
    }
    let kept: Vec<u64> = snaps.images.borrow().iter().map(|(_, i)| *i).collect();
    assert_eq!(kept, [1002, 1003]);
}

/// A snapshot is waited for on the deploy's runtime: while one host's
/// action runs, the other hosts of the wave go on (they used to wait for
/// it, one snapshot after another).
#[test]
fn hosts_of_a_wave_do_not_wait_for_each_others_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let snaps = crate::fakes::FakeSnapshots::default();
    snaps.running_polls.set(3);
    let t = |h| with_snapshot(target(root, h, "v1", true), 2, None);
    let mut p = plan("a", vec![t("h1"), t("h2")], 0);
    p.parallelism = 2;
    let o = run_snapshots(&p, &snaps);
    assert!(
        o.hosts.iter().all(|h| h.status == HostStatus::Deployed),
        "{o:#?}"
    );
    let events = snaps.events.borrow();
    let first_done = events.iter().position(|e| e.starts_with("done")).unwrap();
    let starts = events.iter().filter(|e| e.starts_with("start")).count();
    assert_eq!(starts, 2, "{events:?}");
    assert!(
        events[..first_done]
            .iter()
            .filter(|e| e.starts_with("start"))
            .count()
            == 2,
        "both snapshots were asked for before either finished: {events:?}"
    );
}

// ---------------------------------------------------------------------------
// Blue/green slots and the host's proxy.

use super::plan::BlueGreen;
use crate::remote::proxy::{Kind, ProxyDir, Route, Settings, Tls};
use crate::remote::release::Slot;

const BLUE: u16 = 18101;
const GREEN: u16 = 18102;

fn slot_health(port: u16) -> String {
    format!("http://127.0.0.1:{port}/health")
}

fn route(port: u16, directives: &[&str]) -> Route {
    Route {
        app: "web".into(),
        hosts: vec!["web.example.org".into()],
        path: None,
        upstream_port: port,
        directives: directives.iter().map(|d| d.to_string()).collect(),
    }
}

/// `t` with `web` as a blue_green `command` app: each slot renders its own
/// `port` file beside `version`; its start appends `start <slot> <version>`
/// to `web/events` and writes `web/slot-<slot>-running` (its port), its stop
/// appends `stop <slot>` and removes that file. Its command check logs
/// `<release dir> <current>` to `web/gates` as it runs; each slot's route
/// `/health` is probed on the slot's port.
fn blue_green(mut t: Target, drain: Duration) -> Target {
    let app = &mut t.apps[0];
    let version = app.files[0].clone();
    app.start = Start::Command {
        start: "echo \"start $FLEETGATE_SLOT $(cat version)\" >> ../../events\n\
                echo \"$FLEETGATE_PORT\" > \"../../slot-$FLEETGATE_SLOT-running\""
            .into(),
        stop: Some(
            "echo \"stop $FLEETGATE_SLOT\" >> ../../events\n\
             rm -f \"../../slot-$FLEETGATE_SLOT-running\""
                .into(),
        ),
    };
    let check = CheckSpec::Command {
        command: "echo \"$(basename \"$(pwd -P)\") $(readlink ../../current || echo none)\" >> ../../gates\n\
                  ! grep -q bad version"
            .into(),
        policy: POLICY,
    };
    let slot = |port: u16| SlotJob {
        port,
        files: vec![
            version.clone(),
            ReleaseFile::new("port".into(), format!("{port}\n").into_bytes(), false),
        ],
        checks: vec![check.clone()],
        routes: vec![route(port, &[])],
        health: vec!["/health".into()],
    };
    let blue = slot(BLUE);
    app.files = blue.files.clone();
    app.checks = blue.checks.clone();
    app.routes = blue.routes.clone();
    app.blue_green = Some(BlueGreen {
        drain,
        slots: [blue, slot(GREEN)],
    });
    t
}

fn web_file(root: &std::path::Path, host: &str, name: &str) -> String {
    std::fs::read_to_string(root.join(host).join("alpha/web").join(name)).unwrap_or_default()
}

fn running(root: &std::path::Path, host: &str) -> (String, String) {
    (
        web_file(root, host, "slot-blue-running"),
        web_file(root, host, "slot-green-running"),
    )
}

fn current(root: &std::path::Path, host: &str) -> String {
    std::fs::read_link(root.join(host).join("alpha/web/current"))
        .map(|p| p.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn live_slot(root: &std::path::Path, host: &str) -> (Option<Slot>, String) {
    (
        state(root, host, "web").slot.map(|s| s.name),
        web_file(root, host, "slot"),
    )
}

/// A prober whose slot routes answer `/health` on both ports.
fn healthy_slots() -> ScriptedProber {
    let prober = ScriptedProber::default();
    prober
        .answer(&slot_health(BLUE), "ok")
        .answer(&slot_health(GREEN), "ok");
    prober
}

#[test]
fn blue_green_deploys_alternate_slots_and_switch_only_after_the_slot_gate() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b, c) = ("a".repeat(40), "b".repeat(40), "c".repeat(40));
    let prober = healthy_slots();
    let drain = Duration::from_millis(30);
    let deploy = |rev: &str, version: &str| {
        let t = blue_green(target(root, "h1", version, false), drain);
        run_with(&plan(rev, vec![t], 0), &Local, &prober, Duration::ZERO)
    };

    // First deploy: blue.
    let o = deploy("a", "v1");
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Deployed, "{o:#?}");
    assert_eq!(
        app_steps(h, "web"),
        ["upload", "start slot", "switch", "prune"],
        "{o:#?}"
    );
    assert_eq!(
        steps(h),
        [
            ("connect", true),
            ("inspect", true),
            ("upload", true),
            ("start slot", true),
            ("slot health", true),
            ("switch", true),
            ("prune", true),
            ("health", true),
            ("gated", true),
        ]
    );
    assert_eq!(running(root, "h1"), (format!("{BLUE}\n"), String::new()));
    assert_eq!(
        live_slot(root, "h1"),
        (Some(Slot::Blue), format!("blue {BLUE}\n"))
    );
    assert_eq!(state(root, "h1", "web").slot.unwrap().port, BLUE);
    assert_eq!(current(root, "h1"), format!("releases/{a}"));
    assert_eq!(h.runs["web"], Runs::Release(a.clone()));
    assert_eq!(web_file(root, "h1", "events"), "start blue v1\n");
    assert_eq!(web_file(root, "h1", "started"), format!("{a}\n"));
    assert_eq!(web_file(root, "h1", "gated"), format!("{a}\n"));
    // The slot gate ran in the new release, before `current` existed; the
    // check after the switch, in `current`.
    assert_eq!(
        web_file(root, "h1", "gates"),
        format!("{a} none\n{a} releases/{a}\n")
    );
    assert_eq!(
        (
            prober.probes(&slot_health(BLUE)),
            prober.probes(&slot_health(GREEN))
        ),
        (1, 0)
    );

    // The same again: nothing to do.
    let o = deploy("a", "v1");
    assert_eq!(o.hosts[0].status, HostStatus::Unchanged, "{o:#?}");
    assert_eq!(web_file(root, "h1", "events"), "start blue v1\n");

    // Next: green, gated while blue serves, then switched; blue stops
    // after its drain.
    std::fs::remove_file(root.join("h1/alpha/web/gates")).unwrap();
    let o = deploy("b", "v2");
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Deployed, "{o:#?}");
    assert_eq!(
        steps(h),
        [
            ("connect", true),
            ("inspect", true),
            ("upload", true),
            ("start slot", true),
            ("slot health", true),
            ("switch", true),
            ("prune", true),
            ("health", true),
            ("gated", true),
            ("stop old slot", true),
        ]
    );
    assert!(h.seconds >= drain.as_secs_f64(), "{h:#?}");
    assert_serving(root, Slot::Green, &b);
    assert_eq!(
        web_file(root, "h1", "events"),
        "start blue v1\nstart green v2\nstop blue\n"
    );
    assert_eq!(
        web_file(root, "h1", "gates"),
        format!("{b} releases/{a}\n{b} releases/{b}\n"),
        "`current` moved only after the slot gate"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("h1/alpha/web/current/port")).unwrap(),
        format!("{GREEN}\n"),
        "green's own render"
    );
    let s = state(root, "h1", "web");
    assert_eq!(
        (s.rev.as_str(), s.previous.as_deref()),
        (b.as_str(), Some(a.as_str()))
    );
    assert_eq!(h.runs["web"], Runs::Release(b.clone()));
    assert_eq!(prober.probes(&slot_health(GREEN)), 1);

    // The same again: green is live and needs nothing.
    let o = deploy("b", "v2");
    assert_eq!(o.hosts[0].status, HostStatus::Unchanged, "{o:#?}");

    // And back to blue.
    let o = deploy("c", "v3");
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Deployed, "{o:#?}");
    assert!(steps(h).contains(&("stop old slot", true)), "{o:#?}");
    assert_serving(root, Slot::Blue, &c);
    assert_eq!(
        web_file(root, "h1", "events"),
        "start blue v1\nstart green v2\nstop blue\nstart blue v3\nstop green\n"
    );
    assert_eq!(prober.probes(&slot_health(BLUE)), 2);
    assert_eq!(h.runs["web"], Runs::Release(c.clone()));
}

/// A slot gate that fails: the new slot stops, the live one serves on
/// untouched, nothing switched.
fn assert_failed_slot_gate(root: &std::path::Path, o: &StageOutcome, version: &str, check: &str) {
    let a = "a".repeat(40);
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Failed, "{o:#?}");
    let f = h.failure.as_ref().unwrap();
    assert_eq!(
        (f.kind, f.app.as_deref(), f.step.as_str()),
        (FailureKind::Health, Some("web"), "health"),
        "{o:#?}"
    );
    assert_eq!(
        steps(h),
        [
            ("connect", true),
            ("inspect", true),
            ("upload", true),
            ("start slot", true),
            ("slot health", false),
            ("stop new slot", true),
        ]
    );
    assert!(h.switched.is_empty(), "{o:#?}");
    assert!(
        h.rollback_checks.is_empty(),
        "no rollback: nothing switched"
    );
    assert_eq!(h.runs["web"], Runs::AsBefore);
    assert_serving(root, Slot::Blue, &a);
    let s = state(root, "h1", "web");
    assert_eq!((s.rev.as_str(), s.previous.as_deref()), (a.as_str(), None));
    assert_eq!(web_file(root, "h1", "gated"), format!("{a}\n"));
    assert_eq!(
        web_file(root, "h1", "events"),
        format!("start blue v1\nstart green {version}\nstop green\n")
    );
    assert!(!o.passed && !o.rolled_back);
    assert_eq!(verdict(o), StageVerdict::ChangeFailed);
    let gate = crate::revert::FailedGate::of(o).unwrap();
    assert_eq!(gate.check, format!("web:{check}"));
}

#[test]
fn a_failed_slot_gate_stops_the_new_slot_and_leaves_the_live_one_serving() {
    // A command check failing in the new release.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let prober = healthy_slots();
    let t = |v| blue_green(target(root, "h1", v, false), Duration::ZERO);
    let o = run_with(
        &plan("a", vec![t("v1")], 0),
        &Local,
        &prober,
        Duration::ZERO,
    );
    assert_eq!(o.hosts[0].status, HostStatus::Deployed, "{o:#?}");
    let o = run_with(
        &plan("b", vec![t("bad")], 0),
        &Local,
        &prober,
        Duration::ZERO,
    );
    let CheckSpec::Command { command, .. } = &t("v1").apps[0].checks[0] else {
        unreachable!()
    };
    assert_failed_slot_gate(root, &o, "bad", command);
    // The live release is still live for the next run of its commit.
    let o = run_with(
        &plan("a", vec![t("v1")], 0),
        &Local,
        &prober,
        Duration::ZERO,
    );
    assert_eq!(o.hosts[0].status, HostStatus::Unchanged, "{o:#?}");

    // An HTTP check on the new slot's port answering 502 (green only).
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let prober = healthy_slots();
    let url = format!("http://127.0.0.1:{GREEN}/ready");
    prober
        .answer(&format!("http://127.0.0.1:{BLUE}/ready"), "ok")
        .answer(&url, "502");
    let t = |v| {
        let mut t = blue_green(target(root, "h1", v, false), Duration::ZERO);
        let bg = t.apps[0].blue_green.as_mut().unwrap();
        for s in &mut bg.slots {
            s.checks.push(CheckSpec::Http {
                url: format!("http://127.0.0.1:{}/ready", s.port),
                via: None,
                expect_status: 200,
                expect_body: None,
                timeout: Duration::from_millis(30),
                policy: gates(1, 2),
            });
        }
        t
    };
    let o = run_with(
        &plan("a", vec![t("v1")], 0),
        &Local,
        &prober,
        Duration::ZERO,
    );
    assert_eq!(o.hosts[0].status, HostStatus::Deployed, "{o:#?}");
    let o = run_with(
        &plan("b", vec![t("v2")], 0),
        &Local,
        &prober,
        Duration::ZERO,
    );
    assert_failed_slot_gate(root, &o, "v2", &url);
    assert_eq!(prober.probes(&url), 2);
    assert_eq!(
        o.hosts[0].failure.as_ref().unwrap().message,
        format!("{url}: 2 consecutive failures: GET {url}: status 502, expected 200")
    );
}

#[test]
fn a_switched_blue_green_host_is_switched_back_when_its_stage_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b) = ("a".repeat(40), "b".repeat(40));
    let prober = healthy_slots();
    let deploy = |rev, v1, v2| {
        let targets = vec![
            blue_green(target(root, "h1", v1, false), Duration::ZERO),
            target(root, "h2", v2, false),
        ];
        // One at a time: h1 is done (blue stopped) before h2 fails.
        let mut p = plan(rev, targets, 0);
        p.parallelism = 1;
        run_with(&p, &Local, &prober, Duration::ZERO)
    };
    assert!(deploy("a", "v1", "v1").passed);
    let o = deploy("b", "v2", "bad");
    assert!(!o.passed && o.rolled_back, "{o:#?}");
    assert_eq!(o.hosts[1].status, HostStatus::RolledBack);
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::RolledBack, "{o:#?}");
    assert_eq!(h.failure, None);
    assert_eq!(h.rollback_failure, None);
    assert_eq!(h.switched, ["web"]);
    assert_eq!(
        steps(h),
        [
            ("connect", true),
            ("inspect", true),
            ("upload", true),
            ("start slot", true),
            ("slot health", true),
            ("switch", true),
            ("prune", true),
            ("health", true),
            ("gated", true),
            ("stop old slot", true),
            ("restart old slot", true),
            ("old slot health", true),
            ("rollback", true),
            ("stop new slot", true),
            ("health after rollback", true),
            ("gated", true),
        ]
    );
    assert!(!h.rollback_checks.is_empty() && h.rollback_checks.iter().all(|c| c.passed));
    assert_eq!(
        web_file(root, "h1", "events"),
        "start blue v1\nstart green v2\nstop blue\nstart blue v1\nstop green\n"
    );
    assert_serving(root, Slot::Blue, &a);
    assert_eq!(web_file(root, "h1", "started"), format!("{a}\n"));
    assert_eq!(web_file(root, "h1", "gated"), format!("{a}\n"));
    assert_eq!(h.runs["web"], Runs::Release(a.clone()));
    assert_eq!(state(root, "h1", "web").rev, a);
    assert!(root.join("h1/alpha/web/releases").join(&b).exists());
    assert_eq!(verdict(&o), StageVerdict::ChangeFailed);

    // Blue runs a again as if never left: its next deploy needs nothing.
    let o = run_with(
        &plan(
            "a",
            vec![blue_green(target(root, "h1", "v1", false), Duration::ZERO)],
            0,
        ),
        &Local,
        &prober,
        Duration::ZERO,
    );
    assert_eq!(o.hosts[0].status, HostStatus::Unchanged, "{o:#?}");
}

/// Connects like `Local`, and keeps every line of output of every script.
#[derive(Default)]
struct Recording {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

struct RecordingHost {
    local: LocalHost,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl crate::remote::Remote for RecordingHost {
    async fn run_lines(
        &self,
        script: &str,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<crate::remote::RemoteOutput, RemoteError> {
        let lines = &self.lines;
        self.local
            .run_lines(script, &mut |line| {
                lines.lock().unwrap().push(line.to_string());
                on_line(line);
            })
            .await
    }
}

impl Recording {
    /// The lines seen since the last call.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

impl Connector for Recording {
    type Host = RecordingHost;
    async fn connect(&self, host: &Host) -> Result<RecordingHost, RemoteError> {
        Ok(RecordingHost {
            local: Local.connect(host).await?,
            lines: self.lines.clone(),
        })
    }
    async fn close(&self, _: RecordingHost) {}
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `t` behind an nginx proxy on `port`, its `web` routed with `directives`
/// to `upstream` (`start`/`reload`: the operator's commands, if any).
fn proxied(
    mut t: Target,
    port: u16,
    upstream: u16,
    directives: &[&str],
    start: Option<&str>,
    reload: Option<&str>,
) -> Target {
    t.apps[0].routes = vec![route(upstream, directives)];
    if let Some(bg) = &mut t.apps[0].blue_green {
        for s in &mut bg.slots {
            s.routes = vec![route(s.port, directives)];
        }
    }
    t.proxy = Some(ProxyJob {
        settings: Settings {
            kind: Kind::Nginx,
            http_port: port,
            https_port: free_port(),
            tls: Tls::Off,
            start: start.map(str::to_string),
            reload: reload.map(str::to_string),
        },
        dir: ProxyDir {
            deploy_root: t.host.deploy_root.clone(),
            client: "alpha".into(),
        },
    });
    t
}

/// Stops the nginx a test started through its config, even when the test fails.
struct Nginx(ProxyDir);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nginx")
            .arg("-p")
            .arg(format!("{}/", self.0.path()))
            .arg("-c")
            .arg(self.0.config(Kind::Nginx))
            .arg("-s")
            .arg("quit")
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn listens(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn an_invalid_proxy_config_stops_the_host_before_any_app_changes() {
    for bg in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let port = free_port();
        let mut t = target(root, "h1", "v1", false);
        if bg {
            t = blue_green(t, Duration::ZERO);
        }
        let t = proxied(
            t,
            port,
            BLUE,
            &["this is not a directive;"],
            Some("touch started"),
            Some("touch reloaded"),
        );
        let dir = t.proxy.as_ref().unwrap().dir.clone();
        let o = run_with(
            &plan("a", vec![t], 0),
            &Local,
            &healthy_slots(),
            Duration::ZERO,
        );
        let h = &o.hosts[0];
        assert_eq!(h.status, HostStatus::Failed, "{o:#?}");
        let f = h.failure.as_ref().unwrap();
        assert_eq!(
            (f.kind, f.app.as_deref(), f.step.as_str()),
            (FailureKind::Command, None, "proxy check"),
            "{o:#?}"
        );
        assert!(f.message.contains("is invalid"), "{}", f.message);
        assert_eq!(
            steps(h),
            [("connect", true), ("inspect", true), ("proxy check", false)],
            "{o:#?}"
        );
        assert!(h.switched.is_empty());
        assert!(
            !root.join("h1/alpha/web/releases").exists(),
            "nothing uploaded"
        );
        assert!(!root.join("h1/alpha/web/current").exists());
        assert_eq!(web_file(root, "h1", "events"), "", "no slot started");
        let proxy_dir = std::path::Path::new(&dir.path()).to_path_buf();
        for file in ["nginx.conf", "nginx.conf.next", "started", "reloaded"] {
            assert!(!proxy_dir.join(file).exists(), "{file}");
        }
        assert!(!listens(port));
        assert_eq!(verdict(&o), StageVerdict::ChangeFailed);
    }
}

#[test]
fn a_proxy_config_is_applied_after_the_start_and_only_when_it_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let port = free_port();
    let rec = Recording::default();
    let t = |v: &str, upstream: u16| {
        proxied(
            target(root, "h1", v, false),
            port,
            upstream,
            &[],
            None,
            None,
        )
    };
    let dir = t("v1", 9).proxy.unwrap().dir;
    let _nginx = Nginx(dir.clone());
    let live = || std::fs::read_to_string(dir.config(Kind::Nginx)).unwrap();
    let proxy_lines = |rec: &Recording| -> Vec<String> {
        rec.take()
            .into_iter()
            .filter(|l| l == "@@proxy started" || l == "@@proxy reloaded")
            .collect()
    };
    let deploy = |rev: &str, v: &str, upstream: u16| {
        run_with(
            &plan(rev, vec![t(v, upstream)], 0),
            &rec,
            &ScriptedProber::default(),
            Duration::ZERO,
        )
    };

    // Nothing listens: the checked config is installed and nginx started,
    // after the app's start.
    let o = deploy("a", "v1", 9001);
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Deployed, "{o:#?}");
    assert_eq!(
        steps(h),
        [
            ("connect", true),
            ("inspect", true),
            ("proxy check", true),
            ("upload", true),
            ("switch", true),
            ("start", true),
            ("prune", true),
            ("proxy", true),
            ("health", true),
            ("gated", true),
        ]
    );
    assert_eq!(proxy_lines(&rec), ["@@proxy started"]);
    assert!(listens(port));
    let first = live();
    assert!(first.contains("server 127.0.0.1:9001;"), "{first}");

    // The app changes, its routes do not: the proxy is left alone.
    let o = deploy("b", "v2", 9001);
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Deployed, "{o:#?}");
    assert_eq!(app_steps(h, "web"), ["upload", "switch", "start", "prune"]);
    assert!(
        !steps(h).iter().any(|(s, _)| s.starts_with("proxy")),
        "{o:#?}"
    );
    assert_eq!(proxy_lines(&rec), Vec::<String>::new());
    assert_eq!(live(), first);

    // A route changes: reloaded.
    let o = deploy("c", "v3", 9002);
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Deployed, "{o:#?}");
    assert!(steps(h).contains(&("proxy", true)), "{o:#?}");
    assert_eq!(proxy_lines(&rec), ["@@proxy reloaded"]);
    let third = live();
    assert!(third.contains("server 127.0.0.1:9002;"), "{third}");

    // The proxy went down; the next deploy, with the routes it already
    // has, starts it again. Its release is broken: rolled back, the proxy
    // keeps the config it has (the one before the last change is not it).
    quit(&dir);
    assert!(!listens(port));
    let o = deploy("d", "bad", 9002);
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::RolledBack, "{o:#?}");
    assert!(steps(h).contains(&("proxy", true)), "{o:#?}");
    assert!(proxy_lines(&rec).contains(&"@@proxy started".to_string()));
    assert_eq!(live(), third, "the config of the release it runs");
    assert!(listens(port));
    assert_eq!(live_of(root), "v3\n");

    // A new route with a broken release: the app and the config it
    // replaced both come back.
    let o = deploy("e", "bad", 9003);
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::RolledBack, "{o:#?}");
    assert!(steps(h).contains(&("proxy", true)), "{o:#?}");
    assert!(steps(h).contains(&("proxy rollback", true)), "{o:#?}");
    assert_eq!(proxy_lines(&rec), ["@@proxy reloaded", "@@proxy reloaded"]);
    assert_eq!(live(), third);
    assert_eq!(live_of(root), "v3\n");
}

fn live_of(root: &std::path::Path) -> String {
    live(root, "h1")
}

fn quit(dir: &ProxyDir) {
    let status = std::process::Command::new("nginx")
        .arg("-p")
        .arg(format!("{}/", dir.path()))
        .arg("-c")
        .arg(dir.config(Kind::Nginx))
        .arg("-s")
        .arg("quit")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pid = std::path::Path::new(&dir.path()).join("nginx.pid");
    for _ in 0..100 {
        if !pid.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nginx did not quit");
}

#[test]
fn a_failed_proxy_check_stops_no_slot_when_a_blue_green_release_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = "a".repeat(40);
    let prober = healthy_slots();
    let t = blue_green(target(root, "h1", "v1", false), Duration::ZERO);
    let o = run_with(&plan("a", vec![t], 0), &Local, &prober, Duration::ZERO);
    assert_eq!(o.hosts[0].status, HostStatus::Deployed, "{o:#?}");
    // As if killed before its verdict: the same commit is started again in
    // its own (live) slot; this time the host's proxy config is invalid.
    std::fs::remove_file(root.join("h1/alpha/web/gated")).unwrap();
    let t = proxied(
        blue_green(target(root, "h1", "v1", false), Duration::ZERO),
        free_port(),
        BLUE,
        &["this is not a directive;"],
        Some("touch started"),
        Some("touch reloaded"),
    );
    let o = run_with(&plan("a", vec![t], 0), &Local, &prober, Duration::ZERO);
    let h = &o.hosts[0];
    assert_eq!(h.failure.as_ref().unwrap().step, "proxy check", "{o:#?}");
    assert_eq!(web_file(root, "h1", "events"), "start blue v1\n");
    assert_eq!(running(root, "h1"), (format!("{BLUE}\n"), String::new()));
    assert_eq!(current(root, "h1"), format!("releases/{a}"));
    assert_eq!(
        steps(h),
        [("connect", true), ("inspect", true), ("proxy check", false)],
        "{o:#?}"
    );
}

#[test]
fn a_failed_proxy_reload_puts_the_config_back_so_the_next_deploy_applies_it_again() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Something listens on the proxy's port: the operator's reload runs,
    // and fails once when `fail-reload` is in the proxy dir.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let reload = "if [ -f fail-reload ]; then rm fail-reload; exit 1; fi; touch reloaded";
    let t = |v: &str, upstream: u16| {
        proxied(
            target(root, "h1", v, false),
            port,
            upstream,
            &[],
            None,
            Some(reload),
        )
    };
    let dir = t("v1", 9).proxy.unwrap().dir;
    let live = || std::fs::read_to_string(dir.config(Kind::Nginx)).unwrap();
    let o = run(&plan("a", vec![t("v1", 9001)], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Deployed, "{o:#?}");
    let first = live();

    std::fs::write(std::path::Path::new(&dir.path()).join("fail-reload"), "").unwrap();
    let o = run(&plan("b", vec![t("v2", 9002)], 0));
    let h = &o.hosts[0];
    let f = h.failure.as_ref().unwrap();
    assert_eq!(
        (f.app.as_deref(), f.step.as_str()),
        (None, "proxy"),
        "{o:#?}"
    );
    assert_eq!(h.status, HostStatus::RolledBack, "{o:#?}");
    assert!(steps(h).contains(&("proxy rollback", true)), "{o:#?}");
    assert_eq!(live(), first, "the config the proxy runs");
    assert_eq!(live_of(root), "v1\n");

    // The same change again: the config is checked and applied again.
    let o = run(&plan("b", vec![t("v2", 9002)], 0));
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Deployed, "{o:#?}");
    assert!(steps(h).contains(&("proxy", true)), "{o:#?}");
    assert!(live().contains("server 127.0.0.1:9002;"));
    drop(listener);
}

#[test]
fn a_blue_green_switch_moves_the_proxy_with_it_and_a_rollback_moves_it_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b) = ("a".repeat(40), "b".repeat(40));
    // Something listens on the proxy's port: the operator's reload runs; it
    // logs the upstream of the config it loads and what `current` is then.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let reload = "grep -o 'server 127.0.0.1:[0-9]*' nginx.conf >> reloads\n\
                  readlink ../web/current >> reloads";
    let prober = healthy_slots();
    let deploy = |rev, v1, v2| {
        let h1 = proxied(
            blue_green(target(root, "h1", v1, false), Duration::ZERO),
            port,
            BLUE,
            &[],
            None,
            Some(reload),
        );
        let mut p = plan(rev, vec![h1, target(root, "h2", v2, false)], 0);
        p.parallelism = 1;
        run_with(&p, &Local, &prober, Duration::ZERO)
    };
    let reloads = || std::fs::read_to_string(root.join("h1/alpha/.proxy/reloads")).unwrap();

    let o = deploy("a", "v1", "v1");
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Deployed, "{o:#?}");
    assert_eq!(
        steps(h),
        [
            ("connect", true),
            ("inspect", true),
            ("proxy check", true),
            ("upload", true),
            ("start slot", true),
            ("slot health", true),
            ("switch", true),
            ("proxy", true),
            ("prune", true),
            ("health", true),
            ("gated", true),
        ]
    );
    assert_eq!(
        reloads(),
        format!("server 127.0.0.1:{BLUE}\nreleases/{a}\n")
    );

    // Green goes live with the proxy; the stage fails on h2, and both go
    // back to blue.
    let o = deploy("b", "v2", "bad");
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::RolledBack, "{o:#?}");
    let order: Vec<&str> = h.steps.iter().map(|s| s.step.as_str()).collect();
    let at = |s| order.iter().position(|x| *x == s).unwrap();
    assert!(
        at("slot health") < at("switch") && at("switch") < at("proxy"),
        "{order:?}"
    );
    assert!(
        at("rollback") < at("proxy rollback") && at("proxy rollback") < at("stop new slot"),
        "{order:?}"
    );
    assert!(h.steps.iter().all(|s| s.ok), "{o:#?}");
    assert_eq!(
        reloads(),
        format!(
            "server 127.0.0.1:{BLUE}\nreleases/{a}\n\
             server 127.0.0.1:{GREEN}\nreleases/{b}\n\
             server 127.0.0.1:{BLUE}\nreleases/{a}\n"
        )
    );
    assert_eq!(running(root, "h1"), (format!("{BLUE}\n"), String::new()));
    assert_eq!(current(root, "h1"), format!("releases/{a}"));
    drop(listener);
}

#[test]
fn a_blue_green_host_failing_through_the_proxy_goes_back_to_its_still_running_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = "a".repeat(40);
    // A check through the proxy: not part of the slot gate (the proxy
    // still routes to the live slot), judged after the switch.
    let url = "http://web.example.org/";
    let prober = healthy_slots();
    prober.answer(url, "ok 502 ok");
    let t = |v| {
        let mut t = blue_green(target(root, "h1", v, false), Duration::from_millis(1));
        for s in &mut t.apps[0].blue_green.as_mut().unwrap().slots {
            s.checks.push(CheckSpec::Http {
                url: url.into(),
                via: Some(("127.0.0.1".into(), 80)),
                expect_status: 200,
                expect_body: None,
                timeout: Duration::from_millis(30),
                policy: gates(1, 1),
            });
        }
        t
    };
    let o = run_with(
        &plan("a", vec![t("v1")], 0),
        &Local,
        &prober,
        Duration::ZERO,
    );
    assert_eq!(o.hosts[0].status, HostStatus::Deployed, "{o:#?}");
    assert_eq!(prober.probes(url), 1, "after the switch only");

    let o = run_with(
        &plan("b", vec![t("v2")], 0),
        &Local,
        &prober,
        Duration::ZERO,
    );
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::RolledBack, "{o:#?}");
    assert_eq!(h.failure.as_ref().unwrap().kind, FailureKind::Health);
    assert_eq!(
        steps(h),
        [
            ("connect", true),
            ("inspect", true),
            ("upload", true),
            ("start slot", true),
            ("slot health", true),
            ("switch", true),
            ("prune", true),
            ("health", false),
            ("old slot health", true),
            ("rollback", true),
            ("stop new slot", true),
            ("health after rollback", true),
            ("gated", true),
        ]
    );
    // Blue never stopped: it was not started again.
    assert_eq!(
        web_file(root, "h1", "events"),
        "start blue v1\nstart green v2\nstop green\n"
    );
    assert_serving(root, Slot::Blue, &a);
    assert_eq!(h.runs["web"], Runs::Release(a.clone()));
    assert_eq!(verdict(&o), StageVerdict::ChangeFailed);
}

#[test]
fn a_repaired_blue_green_release_that_fails_goes_back_to_the_release_before_in_its_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = "a".repeat(40);
    let url = "http://web.example.org/";
    let prober = healthy_slots();
    prober.answer(url, "ok ok 502 ok");
    let t = |v| {
        let mut t = blue_green(target(root, "h1", v, false), Duration::ZERO);
        for s in &mut t.apps[0].blue_green.as_mut().unwrap().slots {
            s.checks.push(CheckSpec::Http {
                url: url.into(),
                via: Some(("127.0.0.1".into(), 80)),
                expect_status: 200,
                expect_body: None,
                timeout: Duration::from_millis(30),
                policy: gates(1, 1),
            });
        }
        t
    };
    let deploy = |rev, v| run_with(&plan(rev, vec![t(v)], 0), &Local, &prober, Duration::ZERO);
    assert_eq!(deploy("a", "v1").hosts[0].status, HostStatus::Deployed);
    assert_eq!(deploy("b", "v2").hosts[0].status, HostStatus::Deployed);
    // As if killed before its verdict: b is started again in its own slot
    // (green), and fails through the proxy. It goes back to a, in blue,
    // where a ran (it used to be started without a slot: no
    // FLEETGATE_SLOT, the start failed, nothing ran).
    std::fs::remove_file(root.join("h1/alpha/web/gated")).unwrap();
    let o = deploy("b", "v2");
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::RolledBack, "{o:#?}");
    assert_eq!(h.rollback_failure, None);
    assert_eq!(
        steps(h),
        [
            ("connect", true),
            ("inspect", true),
            ("upload", true),
            ("start slot", true),
            ("slot health", true),
            ("switch", true),
            ("prune", true),
            ("health", false),
            ("restart old slot", true),
            ("old slot health", true),
            ("rollback", true),
            ("stop new slot", true),
            ("health after rollback", true),
            ("gated", true),
        ]
    );
    assert_eq!(
        web_file(root, "h1", "events"),
        "start blue v1\nstart green v2\nstop blue\nstart green v2\nstart blue v1\nstop green\n"
    );
    assert_serving(root, Slot::Blue, &a);
    assert_eq!(h.runs["web"], Runs::Release(a.clone()));
}

#[test]
fn an_app_turning_blue_green_starts_in_blue_and_stops_its_plain_run_after_the_drain() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = "a".repeat(40);
    let prober = healthy_slots();
    // One set of commands for both ways of running: `plain` without a slot.
    let start = Start::Command {
        start: "echo \"start ${FLEETGATE_SLOT:-plain} $(cat version)\" >> ../../events\n\
                touch \"../../running-${FLEETGATE_SLOT:-plain}\""
            .into(),
        stop: Some(
            "echo \"stop ${FLEETGATE_SLOT:-plain}\" >> ../../events\n\
             rm -f \"../../running-${FLEETGATE_SLOT:-plain}\""
                .into(),
        ),
    };
    let plain = |v| {
        let mut t = target(root, "h1", v, false);
        t.apps[0].start = start.clone();
        t
    };
    let bg = |v| {
        let mut t = blue_green(target(root, "h1", v, false), Duration::ZERO);
        t.apps[0].start = start.clone();
        t
    };
    let runs_in = || {
        let mut names: Vec<String> = std::fs::read_dir(root.join("h1/alpha/web"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("running-"))
            .collect();
        names.sort();
        names
    };
    let deploy = |rev, h1: Target, h2: &str| {
        let mut p = plan(rev, vec![h1, target(root, "h2", h2, false)], 0);
        p.parallelism = 1;
        run_with(&p, &Local, &prober, Duration::ZERO)
    };
    assert!(deploy("a", plain("v1"), "v1").passed);
    assert_eq!(runs_in(), ["running-plain"]);

    // Turned blue_green, and the stage fails on h2: back to running plain.
    let o = deploy("b", bg("v2"), "bad");
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::RolledBack, "{o:#?}");
    assert!(steps(h).contains(&("stop old slot", true)), "{o:#?}");
    assert_eq!(runs_in(), ["running-plain"], "{o:#?}");
    assert_eq!(current(root, "h1"), format!("releases/{a}"));
    assert_eq!(live_slot(root, "h1"), (None, String::new()));
    assert_eq!(h.runs["web"], Runs::Release(a.clone()));

    // And for good: blue, the plain run stopped after the drain.
    let o = deploy("b", bg("v2"), "v2");
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Deployed, "{o:#?}");
    assert!(steps(h).contains(&("stop old slot", true)), "{o:#?}");
    assert_eq!(runs_in(), ["running-blue"]);
    assert_eq!(
        live_slot(root, "h1"),
        (Some(Slot::Blue), format!("blue {BLUE}\n"))
    );
    let events = web_file(root, "h1", "events");
    assert!(events.ends_with("start blue v2\nstop plain\n"), "{events}");
}

#[test]
fn a_blue_green_app_taken_off_its_host_stops_its_live_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let prober = healthy_slots();
    let t = |rev, v| {
        let t = blue_green(target(root, "h1", v, false), Duration::ZERO);
        run_with(&plan(rev, vec![t], 0), &Local, &prober, Duration::ZERO)
    };
    assert!(t("a", "v1").passed);
    assert!(t("b", "v2").passed);
    assert_eq!(running(root, "h1"), (String::new(), format!("{GREEN}\n")));
    let mut gone = blue_green(target(root, "h1", "v2", false), Duration::ZERO);
    let app = gone.apps.remove(0);
    gone.removals.push(Removal {
        app: app.name.clone(),
        dir: app.dir.clone(),
        start: app.start.clone(),
        stop: app.stop.clone(),
    });
    let o = run_with(&plan("c", vec![gone], 0), &Local, &prober, Duration::ZERO);
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Deployed, "{o:#?}");
    assert_eq!(app_steps(h, "web"), ["remove"]);
    assert_eq!(running(root, "h1"), (String::new(), String::new()));
    assert!(web_file(root, "h1", "events").ends_with("stop green\n"));
    for f in ["current", "state.json", "slot"] {
        assert!(!root.join("h1/alpha/web").join(f).exists(), "{f}");
    }
    assert_eq!(h.runs["web"], Runs::Nothing);
}

/// Host h1's blue/green `web` serves from `slot` only, on release `rev`.
fn assert_serving(root: &std::path::Path, slot: Slot, rev: &str) {
    let (port, running_now) = match slot {
        Slot::Blue => (BLUE, (format!("{BLUE}\n"), String::new())),
        Slot::Green => (GREEN, (String::new(), format!("{GREEN}\n"))),
    };
    assert_eq!(running(root, "h1"), running_now);
    assert_eq!(current(root, "h1"), format!("releases/{rev}"));
    assert_eq!(
        live_slot(root, "h1"),
        (Some(slot), format!("{} {port}\n", slot.name()))
    );
}

/// `target`'s app with `commands.backup`: it notes each run in the app's
/// directory and names the backup after the live version.
fn with_backup(mut t: Target, command: &str) -> Target {
    t.apps[0].backup = Some(command.into());
    t
}

const BACKUP: &str = "cat version >> ../../backups.log; echo \"saving $(cat version)\"; echo FLEETGATE_BACKUP_ID=saved-$(cat version)";

fn backups_log(root: &std::path::Path, host: &str) -> String {
    std::fs::read_to_string(root.join(host).join("alpha/web/backups.log")).unwrap_or_default()
}

#[test]
fn a_backup_comes_before_an_apps_first_change_and_only_then() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let t = |v| with_backup(target(root, "h1", v, true), BACKUP);
    // A first deploy: no live release, nothing to back up.
    let o = run(&plan("a", vec![t("v1")], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Deployed, "{o:#?}");
    assert!(o.hosts[0].backups.is_empty());
    assert!(!app_steps(&o.hosts[0], "web").contains(&"backup"));
    // Nothing changes: no backup.
    let o = run(&plan("a", vec![t("v1")], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Unchanged);
    assert!(o.hosts[0].backups.is_empty());
    assert_eq!(backups_log(root, "h1"), "");
    // A change: the backup of what runs, before anything else.
    let o = run(&plan("b", vec![t("v2")], 0));
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Deployed, "{o:#?}");
    assert_eq!(
        app_steps(h, "web"),
        ["backup", "upload", "switch", "start", "prune"]
    );
    assert_eq!(h.backups["web"].id, "saved-v1");
    assert_eq!(
        h.backups["web"].restore, None,
        "deployed: nothing to restore"
    );
    assert_eq!(backups_log(root, "h1"), "v1\n");
    // A change that fails its gate: frozen, and the report knows how to
    // put the data back.
    let o = run(&plan("c", vec![t("bad")], 0));
    let h = &o.hosts[0];
    assert_eq!(h.frozen, ["web"], "{o:#?}");
    assert_eq!(h.backups["web"].id, "saved-v2");
    let command = "fleetgate restore --client alpha --app web --host h1 --backup saved-v2";
    assert_eq!(h.backups["web"].restore.as_deref(), Some(command));
    assert_eq!(
        o.backup_restores(),
        [("alpha/web@h1".into(), "saved-v2".into(), command.into())]
    );
    assert_eq!(verdict(&o), StageVerdict::Frozen);
    // Rolled back (a `safe` app): no restore command, the backup recorded.
    let o = run(&plan(
        "d",
        vec![with_backup(target(root, "h2", "v1", false), BACKUP)],
        0,
    ));
    assert_eq!(o.hosts[0].status, HostStatus::Deployed);
    let safe = with_backup(target(root, "h2", "bad", false), BACKUP);
    let o = run(&plan("e", vec![safe], 0));
    assert_eq!(o.hosts[0].status, HostStatus::RolledBack, "{o:#?}");
    assert_eq!(o.hosts[0].backups["web"].id, "saved-v1");
    assert!(o.backup_restores().is_empty());
}

#[test]
fn a_failed_backup_stops_the_host_before_anything_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let o = run(&plan("a", vec![target(root, "h1", "v1", true)], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Deployed);
    let before = state(root, "h1", "web");
    for (command, why) in [
        ("echo saving; exit 3", "exit 3"),
        (
            "echo saved, no id",
            "printed no `FLEETGATE_BACKUP_ID=<id>` line",
        ),
        ("echo FLEETGATE_BACKUP_ID='two words'", "no valid id"),
    ] {
        let t = with_backup(target(root, "h1", "v2", true), command);
        let o = run(&plan("b", vec![t], 0));
        let h = &o.hosts[0];
        assert_eq!(h.status, HostStatus::Failed, "{command}: {o:#?}");
        let f = h.failure.as_ref().unwrap();
        assert_eq!(
            (f.kind, f.app.as_deref(), f.step.as_str()),
            (FailureKind::Command, Some("web"), "backup"),
            "{command}"
        );
        assert!(f.message.contains(why), "{command}: {}", f.message);
        assert_eq!(app_steps(h, "web"), ["backup"], "{command}");
        assert!(h.backups.is_empty() && h.switched.is_empty() && h.frozen.is_empty());
        assert_eq!(verdict(&o), StageVerdict::ChangeFailed, "exit 1");
        // Untouched: the same release live, nothing uploaded.
        assert_eq!(live(root, "h1"), "v1\n");
        assert_eq!(state(root, "h1", "web").rev, before.rev);
        assert!(
            !root
                .join("h1/alpha/web/releases")
                .join("b".repeat(40))
                .exists()
        );
    }
}

#[test]
fn which_apps_are_backed_up_in_which_stage() {
    use crate::config::SnapshotPolicy::{BeforeDeploy, Never};
    let stage = |backup| crate::config::Stage {
        name: "production".into(),
        group: "prod".into(),
        soak: Duration::ZERO,
        approval: None,
        parallelism: 1,
        max_failures: 0,
        snapshot: None,
        snapshot_keep: None,
        backup,
    };
    let app = |rollback, backup: Option<&str>| crate::config::App {
        name: "db".into(),
        runtime: crate::config::Runtime::Compose,
        images: Default::default(),
        files: Default::default(),
        templates: Default::default(),
        secrets: Vec::new(),
        commands: crate::config::Commands {
            backup: backup.map(str::to_string),
            restore: backup.map(|_| "./restore.sh".to_string()),
            ..Default::default()
        },
        health: Vec::new(),
        rollback,
        snapshot: None,
        snapshot_keep: None,
        routes: Vec::new(),
        strategy: crate::config::Strategy::Recreate,
        quadlet: None,
    };
    use RollbackPolicy::{Freeze, Safe};
    // (stage's backup, app's rollback, has commands.backup, backed up)
    let cases = [
        (None, Freeze, true, true),
        (None, Safe, true, false),
        (None, Freeze, false, false),
        (Some(BeforeDeploy), Safe, true, true),
        (Some(BeforeDeploy), Freeze, false, false),
        (Some(Never), Freeze, true, false),
    ];
    for (policy, rollback, has, want) in cases {
        let a = app(rollback, has.then_some("./backup.sh"));
        assert_eq!(
            super::plan::backup_of(&stage(policy), &a).is_some(),
            want,
            "{policy:?} {rollback:?} {has}"
        );
    }
}

// The logs of a failed app.

/// `t` whose start appends `start <version>` to `web/events` (and fails
/// for a `version` "crash"), and whose `commands.logs` appends `logs` there
/// before printing the whole file.
fn logging(mut t: Target) -> Target {
    t.apps[0].start = Start::Command {
        start: "echo \"start $(cat version)\" >> ../../events\n! grep -q crash version".into(),
        stop: None,
    };
    t.apps[0].logs = Some("echo logs >> ../../events\ncat ../../events".into());
    t
}

#[test]
fn a_healthy_deploy_fetches_no_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let o = run(&plan(
        "a",
        vec![logging(target(root, "h1", "v1", false))],
        0,
    ));
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Deployed, "{o:#?}");
    assert!(h.logs.is_empty(), "{o:#?}");
    assert!(!steps(h).iter().any(|(s, _)| *s == "logs"), "{o:#?}");
    assert_eq!(web_file(root, "h1", "events"), "start v1\n");
    // Nor does one that fails without a `commands.logs` for its command app.
    let o = run(&plan("b", vec![target(root, "h1", "bad", false)], 0));
    assert_eq!(o.hosts[0].status, HostStatus::RolledBack, "{o:#?}");
    assert!(o.hosts[0].logs.is_empty(), "{o:#?}");
}

#[test]
fn a_failed_gate_reports_the_logs_of_the_failed_release_before_its_rollback() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    run(&plan(
        "a",
        vec![logging(target(root, "h1", "v1", false))],
        0,
    ));
    let o = run(&plan(
        "b",
        vec![logging(target(root, "h1", "bad", false))],
        0,
    ));
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::RolledBack, "{o:#?}");
    // Fetched after the failed gate and before the release before it restarted.
    assert_eq!(h.logs["web"], "start v1\nstart bad\nlogs", "{o:#?}");
    assert_eq!(
        web_file(root, "h1", "events"),
        "start v1\nstart bad\nlogs\nstart v1\n"
    );
    let order: Vec<&str> = app_steps(h, "web");
    assert_eq!(
        order,
        [
            "upload", "switch", "start", "prune", "logs", "rollback", "restart"
        ],
        "{o:#?}"
    );
    assert!(steps(h).contains(&("logs", true)));
    assert_eq!(live(root, "h1"), "v1\n");
}

#[test]
fn a_failed_start_reports_the_logs_too() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    run(&plan(
        "a",
        vec![logging(target(root, "h1", "v1", false))],
        0,
    ));
    let o = run(&plan(
        "b",
        vec![logging(target(root, "h1", "crash", false))],
        0,
    ));
    let h = &o.hosts[0];
    let f = h.failure.as_ref().unwrap();
    assert_eq!((f.kind, f.step.as_str()), (FailureKind::Command, "start"));
    assert_eq!(h.status, HostStatus::RolledBack, "{o:#?}");
    assert_eq!(h.logs["web"], "start v1\nstart crash\nlogs", "{o:#?}");
    assert_eq!(
        app_steps(h, "web"),
        ["upload", "switch", "start", "logs", "rollback", "restart"],
        "{o:#?}"
    );
}

#[test]
fn the_logs_of_a_failed_app_are_masked_clean_and_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let t = |v| {
        let mut t = logging(target(root, "h1", v, false));
        t.masker = Masker::new(vec!["hunter2-value".into()]);
        // 500 coloured lines holding the secret, CRLF, a bell; then the
        // command fails.
        t.apps[0].logs = Some(
            "i=0; while [ $i -lt 500 ]; do i=$((i+1)); printf '\\033[31mline %s token=hunter2-value\\033[0m\\r\\n' $i; done\nprintf '\\033]0;title\\007bell\\007 end\\n'\nexit 4"
                .into(),
        );
        t
    };
    run(&plan("a", vec![t("v1")], 0));
    let o = run(&plan("b", vec![t("bad")], 0));
    let h = &o.hosts[0];
    let logs = &h.logs["web"];
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.len(), 102, "{logs}");
    assert_eq!(lines[0], "(… 401 earlier lines cut)");
    assert_eq!(lines[1], format!("line 402 token={}", crate::secrets::MASK));
    assert_eq!(lines[100], "bell end");
    assert_eq!(lines[101], "(fleetgate: the logs command exited 4)");
    assert!(!logs.contains("hunter2") && !logs.chars().any(|c| c.is_control() && c != '\n'));
    assert!(logs.len() <= crate::core::outcome::LOG_BYTES);
    // Not healthy, but fetched: a logs command that fails is said, never
    // the host's failure.
    assert!(steps(h).contains(&("logs", false)), "{o:#?}");
    assert_eq!(h.failure.as_ref().unwrap().step, "health");
    assert_eq!(h.status, HostStatus::RolledBack);

    // Long lines: the last ones within the bytes, cut at a line boundary.
    let long: String = (1..=100)
        .map(|i| format!("{i:03} {}\n", "x".repeat(196)))
        .collect();
    let kept = super::exec::bound_logs(&long, false, &Masker::default());
    assert!(
        kept.len() <= crate::core::outcome::LOG_BYTES,
        "{}",
        kept.len()
    );
    let first = kept.lines().nth(1).unwrap();
    let cut: usize = kept.lines().next().unwrap()["(… ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(first, format!("{:03} {}", cut + 1, "x".repeat(196)));
    assert!(kept.ends_with(&format!("100 {}", "x".repeat(196))));
    // One line longer than all of it: its end. Cut by the host: its first
    // line goes (it may hold part of a secret value), how many before is unknown.
    let huge = super::exec::bound_logs(&"y".repeat(20_000), false, &Masker::default());
    assert!(huge.len() <= crate::core::outcome::LOG_BYTES && huge.starts_with('…'));
    assert_eq!(
        super::exec::bound_logs("ter2-value b\nc", true, &Masker::default()),
        "(… earlier lines cut)\nc"
    );
    assert_eq!(super::exec::last_lines("a\nb\nc", 2), "b\nc");
    assert_eq!(super::exec::last_lines("a\nb", 5), "a\nb");
    assert_eq!(super::exec::last_lines("a", 0), "");

    // A logs command that prints nothing says so.
    let quiet = |v| {
        let mut t = logging(target(root, "h2", v, false));
        t.apps[0].logs = Some("true".into());
        t
    };
    run(&plan("a", vec![quiet("v1")], 0));
    let o = run(&plan("b", vec![quiet("bad")], 0));
    assert_eq!(
        o.hosts[0].logs["web"],
        "(fleetgate: the logs command printed nothing)"
    );
}

#[test]
fn a_failed_slot_gate_reports_the_new_slots_logs_before_it_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let prober = healthy_slots();
    let t = |v| {
        let mut t = blue_green(target(root, "h1", v, false), Duration::ZERO);
        t.apps[0].logs = Some(
            "echo \"logs of $FLEETGATE_SLOT $FLEETGATE_PORT $(cat version)\"\ncat ../../events"
                .into(),
        );
        t
    };
    let deploy = |rev, v| run_with(&plan(rev, vec![t(v)], 0), &Local, &prober, Duration::ZERO);
    assert_eq!(deploy("a", "v1").hosts[0].status, HostStatus::Deployed);
    let o = deploy("b", "bad");
    let h = &o.hosts[0];
    assert_eq!(h.status, HostStatus::Failed, "{o:#?}");
    assert_eq!(
        h.logs["web"],
        format!("logs of green {GREEN} bad\nstart blue v1\nstart green bad"),
        "{o:#?}"
    );
    assert_eq!(
        steps(h)[3..],
        [
            ("start slot", true),
            ("slot health", false),
            ("logs", true),
            ("stop new slot", true)
        ]
    );
}

/// Connects the way `SshConnector` does: the master's spawn blocks its
/// thread (~200 ms here, like a fork and exec of `ssh` on a loaded machine),
/// then the wait for the login is awaited on the runtime's timer; the spawn
/// runs off the runtime thread (`rt::off_runtime`). Counts the spawns
/// blocking at once.
struct SlowSpawn {
    spawning: std::sync::Arc<AtomicUsize>,
    most: std::sync::Arc<AtomicUsize>,
}

impl Connector for SlowSpawn {
    type Host = LocalHost;
    async fn connect(&self, host: &Host) -> Result<LocalHost, RemoteError> {
        let (spawning, most) = (self.spawning.clone(), self.most.clone());
        crate::rt::off_runtime(async move {
            let now = spawning.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
            spawning.fetch_sub(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
        })
        .await
        .expect("the spawn did not panic");
        Local.connect(host).await
    }
    async fn close(&self, _: LocalHost) {}
}

/// Issue 18: the connections of a wave start together. Ten hosts whose
/// connects each block a thread for 200 ms, at parallelism 10: one after the
/// other they would take 2.5 s; together, about 0.25 s (the bound leaves a
/// wide margin for a loaded machine: a behaviour test, not a benchmark).
#[test]
fn connects_of_a_wave_overlap() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let targets = (0..10)
        .map(|i| target(root, &format!("h{i}"), "v1", false))
        .collect();
    let mut p = plan("a", targets, 0);
    p.parallelism = 10;
    let connector = SlowSpawn {
        spawning: std::sync::Arc::default(),
        most: std::sync::Arc::default(),
    };
    let o = run_with(&p, &connector, &ScriptedProber::default(), Duration::ZERO);
    let connects: f64 = o
        .hosts
        .iter()
        .flat_map(|h| &h.steps)
        .filter(|s| s.step == "connect")
        .map(|s| s.seconds)
        .fold(0.0, f64::max);
    assert!(
        o.hosts.iter().all(|h| h.status == HostStatus::Deployed),
        "{o:#?}"
    );
    // Every host's spawn was under way at once (one at a time: 1).
    assert_eq!(connector.most.load(Ordering::SeqCst), 10);
    assert!(
        connects < 1.0,
        "the slowest connect took {connects:.2} s: connects waited for each other"
    );
}
