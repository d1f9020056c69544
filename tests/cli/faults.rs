//! What a fault campaign found (issue 11): crashes between a start and its
//! health verdict, a lost host, a tolerated failure, a run of a commit
//! against itself, a corrupt record. Each on the real parts: sshd hosts on
//! loopback, a bare Git remote, the real binary killed with real signals.

use std::process::Stdio;

use crate::common::{BIN, Run};
use crate::deploy::DeployFleet;
use crate::run::{Pipeline, Spawned, git_in};

/// `fleetgate deploy --stage canary --rev HEAD --format text`, running.
fn spawn_deploy(d: &DeployFleet) -> Spawned {
    let mut c = d.fleet.command(BIN);
    c.env("SOPS_AGE_KEY_FILE", crate::common::test_key())
        .env("FLEETGATE_SSH_KEY", &d.hosts.client_key)
        .args(["deploy", "--stage", "canary", "--rev", "HEAD"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Spawned::new(c.spawn().expect("spawn fleetgate deploy"))
}

fn deploy_text(d: &DeployFleet) -> Run {
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    d.fleet.run_env(
        &["deploy", "--stage", "canary", "--rev", "HEAD"],
        &[("FLEETGATE_SSH_KEY", &key)],
    )
}

/// The report's "rolled back: HOSTS" line names alpha-1.
fn rolled_back_line(run: &Run) -> bool {
    run.stdout
        .lines()
        .any(|l| l.starts_with("rolled back:") && l.contains("alpha-1"))
}

#[test]
fn a_run_killed_before_the_health_verdict_is_judged_again_never_promoted() {
    let p = Pipeline::new();
    let c0 = p.head();
    p.d.set("alpha", "version", "\"2\"")
        .set("alpha", "health", "bad");
    p.d.set("beta", "version", "\"2\"");
    let c1 = p.push("web: version 2 (broken health)");
    // Killed after the canary started the broken release, before its
    // health gate could say so.
    let killed = p.spawn_run(&c0, &c1, &["--lock-expiry", "2s"]);
    killed.wait_for("alpha-1 web start ✓");
    killed.signal("-KILL");
    killed.finish();
    assert_eq!(p.d.state("alpha-1", "alpha")["rev"], c1.as_str());

    // The next run does not take "started" for "passed": it judges the
    // release again, rolls it back and reverts; production never sees it.
    let rerun = p.run(&c0, &c1, &[]);
    rerun.code(1);
    assert!(!rerun.stderr.contains("web unchanged"), "{}", rerun.stderr);
    assert!(
        rerun.stderr.contains("stage canary failed"),
        "{}",
        rerun.stderr
    );
    assert!(p.serving("alpha-1").contains("version=1"));
    assert!(p.serving("beta-1").contains("version=1"));
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/canary/alpha"),
        Some(c0.clone())
    );
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/production/beta"),
        Some(c0)
    );
    let note = p.remote_note(&c1);
    assert_eq!(note["revert"]["result"], "pushed");
    assert!(note["stages"].get("production").is_none());
    assert_eq!(p.remote_ref("refs/fleetgate/lock"), None);
}

#[test]
fn a_deploy_killed_before_the_verdict_is_gated_when_deployed_again() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.deploy("canary").code(0);
    d.set("alpha", "version", "\"2\"")
        .set("alpha", "health", "bad");
    d.fleet.commit("alpha: version 2 (broken health)");
    let killed = spawn_deploy(&d);
    killed.wait_for("alpha-1 web start ✓");
    killed.signal("-KILL");
    killed.finish();
    let again = d.deploy("canary");
    again.code(1);
    assert_eq!(again.json()["hosts"][0]["status"], "rolled_back");
    assert!(d.serving("alpha-1").unwrap().contains("version=1"));
}

#[test]
fn a_run_of_a_commit_against_itself_fails_cleanly_and_releases_the_lock() {
    let p = Pipeline::with(&[("alpha", "canary", &["alpha-1"])]);
    p.d.set("alpha", "health", "bad");
    let c1 = p.push("alpha: broken health");
    let run = p.run(&c1, &c1, &[]);
    run.code(1);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(run.stderr.contains("nothing to revert"), "{}", run.stderr);
    assert_eq!(p.remote_ref("refs/fleetgate/lock"), None);
    assert!(p.serving("alpha-1").starts_with("ok\n"), "rolled back");
    assert_eq!(p.remote_note(&c1)["revert"]["result"], "nothing_to_revert");
    assert_eq!(p.remote_ref("refs/heads/main"), Some(c1), "nothing pushed");
}

/// Version 2 of alpha being deployed to alpha-1, switched, its start still
/// running (3 s).
fn deploying_a_slow_start() -> (DeployFleet, Spawned) {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.deploy("canary").code(0);
    d.set("alpha", "version", "\"2\"")
        .set("alpha", "start_delay", "3");
    d.fleet.commit("alpha: version 2, slow start");
    let run = spawn_deploy(&d);
    run.wait_for("alpha-1 web switch ✓");
    (d, run)
}

#[test]
fn a_host_lost_during_start_is_exit_3_and_never_called_rolled_back() {
    let (mut d, run) = deploying_a_slow_start();
    d.hosts.lose("alpha-1");
    let run = run.finish();
    run.code(3);
    assert!(
        run.stdout.contains("NOT rolled back: alpha-1") && run.stdout.contains("UNKNOWN"),
        "{}",
        run.stdout
    );
    assert!(!rolled_back_line(&run), "{}", run.stdout);

    // Back on the network, the next deploy converges it.
    d.hosts.restart("alpha-1");
    let again = deploy_text(&d);
    again.code(0);
    assert!(d.serving("alpha-1").unwrap().contains("version=2"));
}

#[test]
fn a_lost_host_that_comes_back_at_once_is_rolled_back_on_a_fresh_connection() {
    let (mut d, run) = deploying_a_slow_start();
    // The connection drops, the host does not: its sshd is back before
    // fleetgate notices.
    d.hosts.lose("alpha-1");
    d.hosts.restart("alpha-1");
    let run = run.finish();
    run.code(3);
    assert!(rolled_back_line(&run), "{}", run.stdout);
    assert!(!run.stdout.contains("NOT rolled back"), "{}", run.stdout);
    assert!(d.serving("alpha-1").unwrap().contains("version=1"));
}

#[test]
fn a_tolerated_failure_is_one_verdict_for_deploy_and_run() {
    let p = Pipeline::with(&[
        ("alpha", "canary", &["alpha-1"]),
        ("gamma", "canary", &["gamma-1"]),
        ("beta", "production", &["beta-1"]),
    ]);
    p.d.fleet.edit(
        "pipelines/pipeline.yaml",
        "    group: canary\n",
        "    group: canary\n    max_failures: 1\n",
    );
    let c0 = p.push("canary: one failed host tolerated");
    let alpha_before = p.remote_ref("refs/fleetgate/deployed/canary/alpha");
    p.d.set("alpha", "version", "\"2\"")
        .set("alpha", "health", "bad");
    p.d.set("gamma", "version", "\"2\"");
    p.d.set("beta", "version", "\"2\"");
    let c1 = p.push("web: version 2 (alpha broken)");

    // deploy: the stage passed, with its failure tolerated: exit 0.
    let deploy = p.fleet_run(&["deploy", "--stage", "canary", "--rev", &c1]);
    deploy.code(0);
    assert!(
        deploy
            .stdout
            .contains("passed (1 of 2 hosts failed, 1 tolerated)")
            && deploy.stdout.contains("rolled back: alpha-1"),
        "{}",
        deploy.stdout
    );
    assert!(p.serving("alpha-1").contains("version=1"));
    assert!(p.serving("gamma-1").contains("version=2"));

    // run: the same outcome means the same: canary passed, production waits.
    let run = p.run(&c0, &c1, &[]);
    run.code(4);
    assert!(
        run.stderr
            .contains("1 failed host(s) tolerated (max_failures: 1): alpha-1"),
        "{}",
        run.stderr
    );
    let note = p.remote_note(&c1);
    assert_eq!(note["stages"]["canary"]["passed"], true);
    assert_eq!(note["waiting"], "production");
    // The tolerated client keeps its ref: the next run tries it again.
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/canary/alpha"),
        alpha_before
    );
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/canary/gamma"),
        Some(c1)
    );
}

#[test]
fn rollback_of_an_unreachable_host_is_exit_3() {
    let mut d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.deploy("canary").code(0);
    d.set("alpha", "version", "\"2\"");
    d.fleet.commit("alpha: version 2");
    d.deploy("canary").code(0);
    d.hosts.stop("alpha-1");
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    let run = d.fleet.run_env(
        &["rollback", "--client", "alpha"],
        &[("FLEETGATE_SSH_KEY", &key)],
    );
    run.code(3);
    assert!(run.stderr.contains("alpha-1"), "{}", run.stderr);
}

#[test]
fn sigterm_stops_a_deploy_gracefully_and_records_it() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1", "alpha-2"])], "");
    d.fleet.edit(
        "pipelines/pipeline.yaml",
        "    group: canary\n",
        "    group: canary\n    parallelism: 1\n",
    );
    d.fleet.commit("canary: one host at a time");
    d.deploy("canary").code(0);
    d.set("alpha", "version", "\"2\"")
        .set("alpha", "start_delay", "2");
    let c1 = d.fleet.commit("alpha: version 2, slow start");
    let run = spawn_deploy(&d);
    run.wait_for("alpha-1 connect");
    run.signal("-TERM");
    let run = run.finish();
    run.code(3);
    assert!(run.stdout.contains("INTERRUPTED"), "{}", run.stdout);
    // The host in flight finished; the next one never started.
    assert!(d.serving("alpha-1").unwrap().contains("version=2"));
    assert!(d.serving("alpha-2").unwrap().contains("version=1"));
    let note: serde_json::Value =
        serde_json::from_str(&d.fleet.git(&["notes", "--ref=fleetgate", "show", &c1])).unwrap();
    assert_eq!(note["stages"]["canary"]["interrupted"], true);
}

#[test]
fn sigterm_while_waiting_for_an_approval_is_recorded_as_interrupted() {
    let p = Pipeline::new();
    let c0 = p.head();
    p.d.set("beta", "version", "\"2\"");
    let c1 = p.push("beta: version 2");
    let run = p.spawn_run(&c0, &c1, &["--wait-approval", "60s"]);
    run.wait_for("waiting up to");
    run.signal("-TERM");
    let run = run.finish();
    run.code(3);
    let note = p.remote_note(&c1);
    assert_eq!(note["interrupted"]["before_stage"], "production");
    assert_eq!(p.remote_ref("refs/fleetgate/lock"), None);
    assert!(p.serving("beta-1").contains("version=1"));
}

#[test]
fn a_corrupt_run_record_is_an_error_and_is_never_overwritten() {
    let p = Pipeline::new();
    let c0 = p.head();
    p.d.set("beta", "version", "\"2\"");
    let c1 = p.push("beta: version 2");
    p.run(&c0, &c1, &[]).code(4);
    // Someone (or a broken tool) writes garbage over the record.
    let other = p.clone_remote("vandal");
    git_in(
        &other,
        &[
            "fetch",
            "-q",
            "origin",
            "refs/notes/fleetgate:refs/notes/fleetgate",
        ],
    );
    git_in(
        &other,
        &[
            "notes",
            "--ref=fleetgate",
            "add",
            "-f",
            "-m",
            "{\"approvals\": [tru",
            &c1,
        ],
    );
    git_in(&other, &["push", "-q", "origin", "refs/notes/fleetgate"]);

    for args in [
        vec!["approve", "--rev", c1.as_str(), "--by", "alice"],
        vec!["run", "--base", c0.as_str(), "--head", c1.as_str()],
        vec!["deploy", "--stage", "production", "--rev", c1.as_str()],
    ] {
        let run = p.fleet_run(&args);
        run.code(3);
        assert!(
            run.stderr.contains("refs/notes/fleetgate")
                && run.stderr.contains(&c1)
                && run.stderr.contains("will not overwrite it"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(p.remote_note_text(&c1), "{\"approvals\": [tru");
    assert_eq!(p.remote_ref("refs/fleetgate/lock"), None);
    assert!(p.serving("beta-1").contains("version=1"));
}

/// A small seeded generator (xorshift64*): the campaign is reproducible
/// from the seed it prints, with no crate for it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `version` of `client` in the fleet at `rev`.
fn version_at(p: &Pipeline, rev: &str, client: &str) -> String {
    let yaml =
        p.d.fleet
            .git(&["show", &format!("{rev}:clients/{client}.yaml")]);
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix("version:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no version in clients/{client}.yaml at {rev}"))
}

/// Runs `fleetgate run` until the pipeline settles: every stage passed, or
/// a failed gate was reverted and the revert's own run settled too.
/// Returns every output seen (for the leak check).
fn settle(p: &Pipeline, seed: u64, mut base: String, mut head: String) -> Vec<Run> {
    let mut seen = Vec::new();
    for _ in 0..6 {
        let run = p.run(&base, &head, &["--lock-expiry", "2s"]);
        let code = run.code;
        seen.push(run);
        match code {
            0 => return seen,
            1 => {
                // A failed gate: the revert is on main; its run comes next.
                p.d.fleet
                    .git(&["pull", "-q", "--ff-only", "origin", "main"]);
                let tip = p.head();
                assert_ne!(tip, head, "seed {seed}: a failed gate without a revert");
                (base, head) = (head, tip);
            }
            _ => panic!(
                "seed {seed}: run {base}..{head} did not settle (exit {code}):\n{}",
                seen.last().unwrap().stderr
            ),
        }
    }
    panic!("seed {seed}: the pipeline did not settle in 6 runs");
}

/// Issue 11's fault campaign, bounded and reproducible: rounds of a change
/// (now and then a broken one) whose `run` is killed (SIGKILL or SIGTERM)
/// at a random moment, then run again as CI would. After each round every
/// host runs exactly the release its deployed ref names, with its gates
/// passed, no lock is left, and no secret was printed or recorded.
/// `FLEETGATE_FAULT_SEED` replays a campaign; `FLEETGATE_FAULT_ROUNDS` sets
/// its length (default 5).
#[test]
fn fault_campaign_killing_run_at_random_moments() {
    let seed: u64 = std::env::var("FLEETGATE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let rounds: u64 = std::env::var("FLEETGATE_FAULT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    eprintln!(
        "fault campaign: seed {seed}, {rounds} rounds (FLEETGATE_FAULT_SEED={seed} replays it)"
    );
    let mut rng = Rng(seed);
    let clients: &[(&str, &str, &[&str])] = &[
        ("alpha", "canary", &["alpha-1", "alpha-2"]),
        ("beta", "production", &["beta-1"]),
    ];
    let p = Pipeline::with_production(clients, "");
    let token = "Tok-5e1f0c9a-fault-campaign";
    p.d.with_secret(&["alpha", "beta"], token);
    let before = p.head();
    let with_token = p.push("web gets a token");
    let mut outputs = settle(&p, seed, before, with_token);
    let mut base = p.head();
    for round in 0..rounds {
        let broken = rng.below(3) == 0;
        let version = format!("\"{}\"", round + 2);
        p.d.set("alpha", "version", &version).set(
            "alpha",
            "health",
            if broken { "bad" } else { "ok" },
        );
        p.d.set("beta", "version", &version);
        let head = p.push(&format!("round {round}: version {version}"));
        let delay = std::time::Duration::from_millis(rng.below(4000));
        let signal = if rng.below(2) == 0 { "-KILL" } else { "-TERM" };
        eprintln!(
            "fault campaign round {round}: broken={broken}, {signal} after {}ms",
            delay.as_millis()
        );
        let mut run = p.spawn_run(&base, &head, &["--lock-expiry", "2s"]);
        std::thread::sleep(delay);
        run.signal_if_running(signal);
        outputs.push(run.finish());
        outputs.extend(settle(&p, seed, base.clone(), head.clone()));
        base = p.head();

        for (client, stage, hosts) in clients {
            let deployed = p
                .remote_ref(&format!("refs/fleetgate/deployed/{stage}/{client}"))
                .unwrap_or_else(|| panic!("seed {seed}: no deployed ref for {client}"));
            let want = version_at(&p, &deployed, client);
            for host in *hosts {
                let dir = p.d.hosts.host(host).deploy_root.join(client).join("web");
                let state = p.d.state(host, client);
                assert_eq!(
                    state["rev"],
                    deployed.as_str(),
                    "seed {seed} round {round}: {host} runs another release than {stage}/{client} names"
                );
                assert_eq!(
                    std::fs::read_to_string(dir.join("gated"))
                        .unwrap_or_default()
                        .trim(),
                    deployed,
                    "seed {seed} round {round}: {host} runs {deployed} without its gates passed"
                );
                let serving = p.serving(host);
                assert!(
                    serving.starts_with("ok\n") && serving.contains(&format!("version={want}\n")),
                    "seed {seed} round {round}: {host} serves {serving:?}, its ref says version {want}"
                );
            }
        }
        assert_eq!(
            p.remote_ref("refs/fleetgate/lock"),
            None,
            "seed {seed} round {round}: a lock was left"
        );
    }
    for run in &outputs {
        assert!(
            !run.all().contains(token),
            "seed {seed}: a secret was printed"
        );
    }
    let notes = p.d.fleet.git(&["log", "-p", "refs/notes/fleetgate"]);
    assert!(!notes.contains(token), "seed {seed}: a secret was recorded");
}
