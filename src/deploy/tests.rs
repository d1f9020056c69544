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
    let releases = std::fs::read_dir(root.join("h1/alpha/web/releases"))
        .unwrap()
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
