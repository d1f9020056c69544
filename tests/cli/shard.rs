//! `run --shard I/N`: one run as three concurrent `fleetgate` processes,
//! each in its own clone of a real bare remote (as three jobs of a CI
//! matrix), on real sshd hosts. The slices (stage `canary`, 3 shards) are
//! part of the contract: alpha-1 is in shard 1; delta-1 and delta-2 in
//! shard 2; alpha-2, alpha-3 and gamma-1 in shard 3.

use crate::common::{BIN, Run};
use crate::run::{Pipeline, Spawned, git_in};

const CANARY: &[(&str, &str, &[&str])] = &[
    ("alpha", "canary", &["alpha-1", "alpha-2", "alpha-3"]),
    ("delta", "canary", &["delta-1", "delta-2"]),
    ("gamma", "canary", &["gamma-1"]),
];
const HOSTS: [&str; 6] = [
    "alpha-1", "alpha-2", "alpha-3", "delta-1", "delta-2", "gamma-1",
];

/// Runs `base..head` as shards 1, 2 and 3 of run `run_id` at once, each in
/// a fresh clone of the remote; their outcomes in shard order.
fn run_shards(p: &Pipeline, run_id: &str, base: &str, head: &str) -> Vec<Run> {
    let spawned: Vec<Spawned> = (1..=3)
        .map(|i| {
            let clone = p.clone_remote(&format!("shard-{run_id}-{i}"));
            let mut c = p.d.fleet.command(BIN);
            c.current_dir(&clone)
                .env("SOPS_AGE_KEY_FILE", crate::common::test_key())
                .env("FLEETGATE_SSH_KEY", &p.key)
                .env("GITHUB_RUN_ID", run_id)
                .args(["run", "--base", base, "--head", head, "--format", "json"])
                .args(["--shard", &format!("{i}/3"), "--shard-timeout", "2m"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            Spawned::new(c.spawn().expect("spawn fleetgate run --shard"))
        })
        .collect();
    spawned.into_iter().map(Spawned::finish).collect()
}

fn versions(p: &Pipeline) -> Vec<String> {
    HOSTS
        .iter()
        .map(|h| {
            let serving = p.serving(h);
            let v = serving
                .lines()
                .find_map(|l| l.strip_prefix("version="))
                .unwrap_or("none");
            format!("{h}={v}")
        })
        .collect()
}

#[test]
fn three_shards_deploy_their_slices_and_one_failing_gate_rolls_every_shard_back() {
    let p = Pipeline::with(CANARY);
    let c0 = p.head();
    assert!(versions(&p).iter().all(|v| v.ends_with("=1")));

    // Version 2, as three shards: each deploys its slice, the last to
    // report decides, every process exits 0.
    for client in ["alpha", "delta", "gamma"] {
        p.d.set(client, "version", "\"2\"");
    }
    let c1 = p.push("web: version 2");
    let runs = run_shards(&p, "501", &c0, &c1);
    for (i, run) in runs.iter().enumerate() {
        run.code(0);
        assert!(
            run.stderr.contains(&format!("(shard {}/3: ", i + 1)),
            "{}",
            run.stderr
        );
    }
    // each process deployed exactly its slice
    let slices = [
        vec!["alpha-1"],
        vec!["delta-1", "delta-2"],
        vec!["alpha-2", "alpha-3", "gamma-1"],
    ];
    for (run, mine) in runs.iter().zip(&slices) {
        for h in HOSTS {
            let touched = run.stderr.contains(&format!("{h} connect ✓"));
            assert_eq!(touched, mine.contains(&h), "{h}:\n{}", run.stderr);
        }
    }
    assert!(
        versions(&p).iter().all(|v| v.ends_with("=2")),
        "{:?}",
        versions(&p)
    );
    let note = p.remote_note(&c1);
    let set = &note["shards"]["canary"];
    assert_eq!(set["run_id"], "501");
    assert_eq!(set["decided"], "passed");
    assert_eq!(
        note["stages"]["canary"]["hosts"].as_array().unwrap().len(),
        6
    );
    for client in ["alpha", "delta", "gamma"] {
        assert_eq!(
            p.remote_ref(&format!("refs/fleetgate/deployed/canary/{client}")),
            Some(c1.clone()),
            "{client}"
        );
    }
    assert_eq!(
        p.remote_ref("refs/fleetgate/lock"),
        None,
        "the last shard out released it"
    );
    let decider = set["decided_by"].as_u64().unwrap() as usize;
    for (i, run) in runs.iter().enumerate() {
        let said =
            run.stderr.contains("decided by shard") && run.stderr.contains("which reports it");
        assert_eq!(said, i + 1 != decider, "shard {}:\n{}", i + 1, run.stderr);
    }

    // Version 3 with gamma's gate failing (shard 3): every shard's hosts go
    // back to version 2, one revert lands, every process exits 1.
    for client in ["alpha", "delta", "gamma"] {
        p.d.set(client, "version", "\"3\"");
    }
    p.d.set("gamma", "health", "bad");
    let c2 = p.push("web: version 3 (gamma's health broken)");
    let runs = run_shards(&p, "502", &c1, &c2);
    for run in &runs {
        run.code(1);
    }
    assert!(
        versions(&p).iter().all(|v| v.ends_with("=2")),
        "{:?}",
        versions(&p)
    );
    // shards 1 and 2 passed, then put their hosts back by a deploy of c1
    for run in &runs[..2] {
        assert!(
            run.stderr.contains("failed on another shard: rolling"),
            "{}",
            run.stderr
        );
    }
    let note = p.remote_note(&c2);
    assert_eq!(note["shards"]["canary"]["decided"], "change_failed");
    let statuses: Vec<String> = note["stages"]["canary"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            format!(
                "{}={}",
                h["host"].as_str().unwrap(),
                h["status"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        statuses.iter().all(|s| s.ends_with("=rolled_back")),
        "{statuses:?}"
    );
    // one revert of c2 on main, and the refs stay on c1
    let other = p.clone_remote("reader");
    let log = git_in(&other, &["log", "--format=%s", &format!("{c2}..HEAD")]);
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.starts_with("Revert \"web: version 3"), "{log}");
    assert_eq!(note["revert"]["result"], "pushed");
    for client in ["alpha", "delta", "gamma"] {
        assert_eq!(
            p.remote_ref(&format!("refs/fleetgate/deployed/canary/{client}")),
            Some(c1.clone()),
            "{client}"
        );
    }
    assert_eq!(p.remote_ref("refs/fleetgate/lock"), None);
}

#[test]
fn a_shard_without_a_shared_run_id_is_refused_before_anything_runs() {
    let p = Pipeline::with(&[("alpha", "canary", &["alpha-1"])]);
    let c0 = p.head();
    p.d.set("alpha", "version", "\"2\"");
    let c1 = p.push("web: version 2");
    let run = p.run(&c0, &c1, &["--shard", "1/2"]);
    run.code(2);
    assert!(
        run.stderr.contains("GITHUB_RUN_ID is not set"),
        "{}",
        run.stderr
    );
    let bad = p.run(&c0, &c1, &["--shard", "3/2"]);
    bad.code(2);
    assert!(
        bad.stderr.contains("shard 3 of 2 does not exist"),
        "{}",
        bad.stderr
    );
    assert!(p.serving("alpha-1").contains("version=1"));
    assert_eq!(p.remote_ref("refs/fleetgate/lock"), None);
}
