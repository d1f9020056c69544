//! The pipeline lock against real sshd hosts and a real bare remote: a
//! killed run blocks the next one only for the short expiry, a live run's
//! lock is renewed through a deploy longer than its expiry, `fleetgate
//! lock` shows the holder, `lock release` removes a dead run's lock with
//! who and why in Git, and a run whose lock was taken over stops before it
//! records anything more.

use std::time::{Duration, Instant};

use crate::run::{Pipeline, git_in};

/// alpha (canary, alpha-1) at version 1, and a pushed version 2 whose start
/// takes `start_delay` seconds on the host: (base, head).
fn slow_change(start_delay: &str) -> (Pipeline, String, String) {
    let p = Pipeline::with(&[("alpha", "canary", &["alpha-1"])]);
    let c0 = p.head();
    p.d.set("alpha", "version", "\"2\"")
        .set("alpha", "start_delay", start_delay);
    let c1 = p.push("alpha: version 2, slow start");
    (p, c0, c1)
}

/// The seconds `run` says it waited before taking over an expired lock.
fn waited(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("taking over an expired pipeline lock"))
        .unwrap_or_else(|| panic!("no takeover:\n{stderr}"));
    let n = line.rsplit("(waited ").next().unwrap();
    n.trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or_else(|_| panic!("{line}"))
}

#[test]
fn a_killed_runs_lock_blocks_the_next_run_only_for_the_short_expiry() {
    let (p, c0, c1) = slow_change("3");
    let killed = p.spawn_run(&c0, &c1, &["--lock-expiry", "6s"]);
    killed.wait_for("alpha-1 web switch");
    killed.signal("-KILL");
    killed.finish();
    assert!(
        p.remote_ref("refs/fleetgate/lock").is_some(),
        "a killed run cannot release"
    );
    // The next run, with the default --lock-wait, waits for the lock to
    // expire (at most 6 s after the killed run's last renewal), takes it
    // over with a warning, and converges.
    let start = Instant::now();
    let next = p.run(&c0, &c1, &[]);
    let took = start.elapsed();
    next.code(0);
    let waited = waited(&next.stderr);
    eprintln!(
        "the next run waited {waited}s for a SIGKILLed run's lock (--lock-expiry 6s); {took:?} in all"
    );
    assert!(waited <= 10, "waited {waited}s:\n{}", next.stderr);
    assert!(p.serving("alpha-1").contains("version=2"));
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/canary/alpha"),
        Some(c1)
    );
    assert_eq!(p.remote_ref("refs/fleetgate/lock"), None);
}

#[test]
fn lock_shows_the_holder_whose_lock_outlives_its_expiry_while_it_deploys() {
    let (p, c0, c1) = slow_change("12");
    let ci = [
        ("GITHUB_RUN_ID", "4242"),
        ("GITHUB_SERVER_URL", "https://forge.example"),
        ("GITHUB_REPOSITORY", "ops/fleet"),
        ("GITHUB_ACTOR", "ci-bot"),
    ];
    let run = p.spawn_run_env(&c0, &c1, &["--lock-expiry", "4s"], &ci);
    run.wait_for("alpha-1 web switch");
    let shown = p.fleet_run(&["lock"]);
    shown.code(0);
    for want in [
        "held by ci-bot@",
        "run:     4242",
        "ci run:  https://forge.example/ops/fleet/actions/runs/4242",
        "expires: ",
    ] {
        assert!(shown.stdout.contains(want), "{want:?}:\n{}", shown.stdout);
    }
    let json: serde_json::Value =
        serde_json::from_str(&p.fleet_run(&["lock", "--format", "json"]).stdout).unwrap();
    assert_eq!(json["held"], true);
    assert_eq!(json["run_id"], "4242");
    assert_eq!(json["expired"], false);
    assert_eq!(json["shards"], serde_json::json!([]), "one runner");
    // The start takes 12 s, three times the expiry: the run's keeper renews
    // the lock meanwhile, so another run still finds it held.
    std::thread::sleep(Duration::from_secs(6));
    let second = p.run(&c0, &c1, &["--lock-wait", "1s"]);
    second.code(3);
    assert!(
        second
            .stderr
            .contains("another pipeline run holds the lock")
            && second.stderr.contains("actions/runs/4242"),
        "{}",
        second.stderr
    );
    run.finish().code(0);
    let shown = p.fleet_run(&["lock"]);
    shown.code(0);
    assert!(shown.stdout.contains("free"), "{}", shown.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&p.fleet_run(&["lock", "--format", "json"]).stdout).unwrap();
    assert_eq!(json["held"], false);
}

#[test]
fn lock_release_removes_a_dead_runs_lock_and_git_says_who_and_why() {
    let (p, c0, c1) = slow_change("3");
    let killed = p.spawn_run(&c0, &c1, &[]);
    killed.wait_for("alpha-1 web switch");
    killed.signal("-KILL");
    killed.finish();
    // Default expiry: held for two more minutes, unless released.
    let blocked = p.run(&c0, &c1, &["--lock-wait", "1s"]);
    blocked.code(3);
    let released = p.fleet_run(&[
        "lock",
        "release",
        "--reason",
        "job cancelled",
        "--by",
        "alice",
    ]);
    released.code(0);
    assert!(
        released.stdout.contains("released the lock of run local-"),
        "{}",
        released.stdout
    );
    assert_eq!(p.remote_ref("refs/fleetgate/lock"), None);
    p.fleet_run(&["lock", "release", "--reason", "again", "--by", "alice"])
        .code(0)
        .stdout
        .contains("nothing to release")
        .then_some(())
        .expect("nothing left to release");
    // Anyone can read who removed it and why, from any clone.
    let other = p.clone_remote("lock-log-reader");
    git_in(
        &other,
        &[
            "fetch",
            "-q",
            "origin",
            "refs/fleetgate/lock-log:refs/fleetgate/lock-log",
        ],
    );
    let log = git_in(&other, &["log", "--format=%B", "refs/fleetgate/lock-log"]);
    assert!(
        log.starts_with("lock released by alice: job cancelled"),
        "{log}"
    );
    let body: serde_json::Value = serde_json::from_str(log.split_once("\n\n").unwrap().1).unwrap();
    assert_eq!(body["by"], "alice");
    assert_eq!(body["reason"], "job cancelled");
    assert!(
        body["released"]["run_id"]
            .as_str()
            .unwrap()
            .starts_with("local-")
    );
    // The next run goes at once, and converges.
    p.run(&c0, &c1, &["--lock-wait", "1s"]).code(0);
    assert!(p.serving("alpha-1").contains("version=2"));
}

#[test]
fn a_run_whose_lock_is_taken_over_mid_stage_stops_before_it_records() {
    let (p, c0, c1) = slow_change("4");
    let run = p.spawn_run(&c0, &c1, &[]);
    run.wait_for("alpha-1 web switch");
    // Another process replaces the lock while the stage runs.
    let other = p.clone_remote("thief");
    let tree = git_in(&other, &["hash-object", "-t", "tree", "-w", "/dev/null"]);
    let thief = git_in(
        &other,
        &[
            "commit-tree",
            &tree,
            "-m",
            r#"{"run_id": "thief", "holder": "x@y", "started_at": "2026-01-01T00:00:00Z", "expires_at": "2099-01-01T00:00:00Z"}"#,
        ],
    );
    git_in(
        &other,
        &[
            "push",
            "-q",
            "--force",
            "origin",
            &format!("{thief}:refs/fleetgate/lock"),
        ],
    );
    let run = run.finish();
    run.code(3);
    assert!(
        run.stderr.contains("lost the pipeline lock")
            && run.stderr.contains("run thief of x@y holds it now"),
        "{}",
        run.stderr
    );
    // Nothing recorded after the takeover: no stage outcome, no moved ref,
    // and the other lock left as it is.
    let note = p.remote_note(&c1);
    assert!(
        note["stages"].as_object().is_none_or(|s| s.is_empty()),
        "{note}"
    );
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/canary/alpha"),
        Some(c0)
    );
    assert_eq!(p.remote_ref("refs/fleetgate/lock"), Some(thief));
}
