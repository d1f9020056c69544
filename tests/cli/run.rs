//! `fleetgate run` and `approve`: the whole pipeline against real sshd
//! hosts and a real bare Git remote. The runner's clone is the fleet repo;
//! other people's pushes come from a second clone.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{BIN, Run};
use crate::deploy::DeployFleet;

const PRODUCTION: &str = "    approval:\n      required: true\n      approvers: [alice, bob]\n";

pub struct Pipeline {
    pub d: DeployFleet,
    remote: PathBuf,
    pub key: String,
}

impl Pipeline {
    /// alpha (canary, alpha-1) and beta (production, beta-1), version 1
    /// deployed stage by stage, records on the remote.
    pub fn new() -> Pipeline {
        Pipeline::with(&[
            ("alpha", "canary", &["alpha-1"]),
            ("beta", "production", &["beta-1"]),
        ])
    }

    pub fn with(clients: &[(&str, &str, &[&str])]) -> Pipeline {
        Pipeline::with_production(clients, PRODUCTION)
    }

    /// Like `with`, with `production` as the production stage's extra keys
    /// ("" for none: no approval).
    pub fn with_production(clients: &[(&str, &str, &[&str])], production: &str) -> Pipeline {
        let p = Pipeline::undeployed(clients, production);
        for (_, group, _) in clients {
            p.fleet_run(&["deploy", "--stage", group, "--rev", "HEAD"])
                .code(0);
        }
        p
    }

    /// The fleet on the remote, never deployed: nothing runs on the hosts
    /// and no deployed ref exists (a new fleet before its first push's run).
    pub fn undeployed(clients: &[(&str, &str, &[&str])], production: &str) -> Pipeline {
        let d = DeployFleet::new(clients, production);
        d.fleet
            .edit("pipelines/pipeline.yaml", "revert: false", "revert: true");
        d.fleet.commit("fleet: revert on failure");
        let remote = d.hosts.dir.join("remote.git");
        d.fleet.add_bare_origin(&remote);
        d.fleet.git(&["push", "-q", "origin", "main"]);
        let key = d.hosts.client_key.to_str().unwrap().to_string();
        Pipeline { d, remote, key }
    }

    pub fn fleet_run(&self, args: &[&str]) -> Run {
        self.fleet_run_env(args, &[])
    }

    /// Like `fleet_run`, with more environment (a CI job's, say).
    pub fn fleet_run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut all = vec![("FLEETGATE_SSH_KEY", self.key.as_str())];
        all.extend_from_slice(env);
        self.d.fleet.run_env(args, &all)
    }

    pub fn head(&self) -> String {
        self.d.fleet.git(&["rev-parse", "HEAD"])
    }

    /// Commits the work tree and pushes it, as a merge to main would.
    pub fn push(&self, message: &str) -> String {
        let sha = self.d.fleet.commit(message);
        self.d.fleet.git(&["push", "-q", "origin", "main"]);
        sha
    }

    pub fn run(&self, base: &str, head: &str, extra: &[&str]) -> Run {
        let mut args = vec!["run", "--base", base, "--head", head, "--format", "json"];
        args.extend(extra);
        self.fleet_run(&args)
    }

    pub fn spawn_run(&self, base: &str, head: &str, extra: &[&str]) -> Spawned {
        self.spawn_run_env(base, head, extra, &[])
    }

    /// Like `spawn_run`, with more environment (a CI job's, say).
    pub fn spawn_run_env(
        &self,
        base: &str,
        head: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Spawned {
        let mut c = self.d.fleet.command(BIN);
        c.env("SOPS_AGE_KEY_FILE", crate::common::test_key())
            .env("FLEETGATE_SSH_KEY", &self.key)
            .envs(env.iter().copied())
            .args(["run", "--base", base, "--head", head, "--format", "json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Spawned::new(c.spawn().expect("spawn fleetgate run"))
    }

    /// `git ls-remote` of one ref on the remote.
    pub fn remote_ref(&self, name: &str) -> Option<String> {
        let out = self
            .d
            .fleet
            .git(&["ls-remote", self.remote.to_str().unwrap(), name]);
        out.split_whitespace().next().map(str::to_string)
    }

    /// The run record on `rev`, as the remote has it.
    pub fn remote_note(&self, rev: &str) -> serde_json::Value {
        let other = self.clone_remote("note-reader");
        let out = std::process::Command::new("git")
            .args(["-C", other.to_str().unwrap(), "fetch", "-q", "origin"])
            .arg("refs/notes/fleetgate:refs/notes/fleetgate")
            .status()
            .unwrap();
        assert!(out.success());
        let text = git_in(&other, &["notes", "--ref=fleetgate", "show", rev]);
        serde_json::from_str(&text).unwrap()
    }

    /// The run record on `rev` as the remote has it, as text (it may not
    /// be JSON).
    pub fn remote_note_text(&self, rev: &str) -> String {
        let other = self.clone_remote("note-text-reader");
        git_in(
            &other,
            &[
                "fetch",
                "-q",
                "origin",
                "refs/notes/fleetgate:refs/notes/fleetgate",
            ],
        );
        git_in(&other, &["notes", "--ref=fleetgate", "show", rev])
    }

    /// A second clone of the remote (another person or runner).
    pub fn clone_remote(&self, name: &str) -> PathBuf {
        let dir = self.d.hosts.dir.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        git_in(
            &self.d.hosts.dir,
            &["clone", "-q", self.remote.to_str().unwrap(), name],
        );
        git_in(&dir, &["config", "user.name", "Someone Else"]);
        git_in(&dir, &["config", "user.email", "else@example.org"]);
        dir
    }

    pub fn serving(&self, host: &str) -> String {
        self.d.serving(host).unwrap_or_default()
    }
}

#[track_caller]
pub fn git_in(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Someone Else")
        .env("GIT_AUTHOR_EMAIL", "else@example.org")
        .env("GIT_COMMITTER_NAME", "Someone Else")
        .env("GIT_COMMITTER_EMAIL", "else@example.org")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A running `fleetgate run` whose stderr is collected as it comes.
pub struct Spawned {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Spawned {
    pub fn new(mut child: Child) -> Spawned {
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Spawned {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    /// Waits until stderr contains `text` (panics after 60 s).
    #[track_caller]
    pub fn wait_for(&self, text: &str) {
        let start = Instant::now();
        while !self.stderr.lock().unwrap().contains(text) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "never saw {text:?}:\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Sends `sig` unless the process already exited.
    pub fn signal_if_running(&mut self, sig: &str) {
        if self.child.try_wait().unwrap().is_none() {
            // It may still exit in between: then there is nothing to stop.
            let _ = std::process::Command::new("kill")
                .args([sig, &self.child.id().to_string()])
                .status();
        }
    }

    pub fn finish(mut self) -> Run {
        let status = self.child.wait().unwrap();
        let mut stdout = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        self.reader.take().unwrap().join().unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        Run::new(status.code().unwrap_or(-1), stdout, stderr)
    }
}

#[test]
fn canary_then_approval_then_production_then_nothing_to_do() {
    let p = Pipeline::new();
    let c0 = p.head();
    p.d.set("alpha", "version", "\"2\"");
    p.d.set("beta", "version", "\"2\"");
    let c1 = p.push("web: version 2");

    // Canary deploys, production waits for an approval: exit 4.
    let run = p.run(&c0, &c1, &[]);
    run.code(4);
    assert!(p.serving("alpha-1").contains("version=2"));
    assert!(p.serving("beta-1").contains("version=1"));
    assert!(
        run.stderr
            .contains("stage production waits for an approval")
            && run.stderr.contains("alice, bob"),
        "{}",
        run.stderr
    );
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/canary/alpha"),
        Some(c1.clone())
    );
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/production/beta"),
        Some(c0.clone())
    );
    assert_eq!(p.remote_ref("refs/fleetgate/lock"), None, "lock released");
    let note = p.remote_note(&c1);
    assert_eq!(note["waiting"], "production");
    assert_eq!(note["stages"]["canary"]["passed"], true);
    let plan_hash = note["plan_hash"].as_str().unwrap().to_string();

    // Someone not listed cannot approve.
    let refused = p.fleet_run(&["approve", "--rev", &c1, "--by", "mallory"]);
    refused.code(1);
    assert!(
        refused.stderr.contains("`mallory` is not an approver")
            && refused.stderr.contains("production: alice, bob"),
        "{}",
        refused.stderr
    );
    // An approver can; the approval is for this exact plan.
    let approved = p.fleet_run(&["approve", "--rev", &c1, "--by", "alice", "--format", "json"]);
    approved.code(0);
    assert_eq!(approved.json()["plan_hash"], plan_hash.as_str());

    // Running again continues: production only, canary not redeployed.
    let run = p.run(&c0, &c1, &[]);
    run.code(0);
    assert!(p.serving("beta-1").contains("version=2"));
    assert!(
        run.stderr
            .contains("stage canary: all 1 client(s) already run")
            && run.stderr.contains("approved by alice"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("alpha-1 web upload"), "{}", run.stderr);
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/production/beta"),
        Some(c1.clone())
    );
    let note = p.remote_note(&c1);
    assert_eq!(note["stages"]["production"]["passed"], true);
    assert_eq!(note["approvals"][0]["by"], "alice");
    assert!(note.get("waiting").is_none());

    // A finished run again: nothing to do, nothing touched.
    let again = p.run(&c0, &c1, &[]);
    again.code(0);
    assert!(
        again
            .stderr
            .contains("stage production: all 1 client(s) already run"),
        "{}",
        again.stderr
    );
    assert!(!again.stderr.contains("upload"), "{}", again.stderr);
}

#[test]
fn an_approval_for_an_older_plan_does_not_count() {
    let p = Pipeline::new();
    let c0 = p.head();
    p.d.set("beta", "version", "\"2\"");
    let c1 = p.push("beta: version 2");
    p.run(&c0, &c1, &[]).code(4);
    p.fleet_run(&["approve", "--rev", &c1, "--by", "bob"])
        .code(0);
    // A new push before anyone ran the approved plan: a new plan to approve.
    p.d.set("beta", "version", "\"3\"");
    let c2 = p.push("beta: version 3");
    let run = p.run(&c1, &c2, &[]);
    run.code(4);
    assert!(p.serving("beta-1").contains("version=1"));
    // Approving c2 with the hash bob saw for c1 is refused, too.
    let old_hash = p.remote_note(&c1)["plan_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let stale = p.fleet_run(&["approve", "--rev", &c2, "--by", "bob", "--plan", &old_hash]);
    stale.code(1);
    assert!(stale.stderr.contains("the plan of"), "{}", stale.stderr);
    // Polling picks up an approval given while waiting.
    let waiting = p.spawn_run(&c1, &c2, &["--wait-approval", "60s"]);
    waiting.wait_for("waiting up to");
    p.fleet_run(&["approve", "--rev", &c2, "--by", "bob"])
        .code(0);
    let run = waiting.finish();
    run.code(0);
    assert!(p.serving("beta-1").contains("version=3"));
}

#[test]
fn canary_failure_rolls_back_reverts_and_never_touches_production() {
    let p = Pipeline::new();
    let c0 = p.head();
    p.d.set("alpha", "version", "\"2\"")
        .set("alpha", "health", "bad");
    p.d.set("beta", "version", "\"2\"");
    let c1 = p.push("web: version 2 (broken health)");
    let run = p.run(&c0, &c1, &[]);
    run.code(1);
    // The fleet first: canary back on version 1, production never touched.
    assert!(p.serving("alpha-1").contains("version=1"));
    assert!(p.serving("beta-1").contains("version=1"));
    assert!(!run.stderr.contains("beta-1"), "{}", run.stderr);
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/canary/alpha"),
        Some(c0.clone())
    );
    // Then Git: a revert of c1 on main, with the trailers.
    let tip = p.remote_ref("refs/heads/main").unwrap();
    let other = p.clone_remote("reader");
    assert_eq!(git_in(&other, &["rev-parse", "HEAD~1"]), c1);
    let message = git_in(&other, &["log", "-1", "--format=%B"]);
    assert!(
        message.starts_with("Revert \"web: version 2 (broken health)\""),
        "{message}"
    );
    assert!(
        message.contains(&format!("Fleetgate-Reverts: {c1}")),
        "{message}"
    );
    let gate = git_in(
        &other,
        &[
            "log",
            "-1",
            "--format=%(trailers:key=Fleetgate-Failed-Gate,valueonly)",
        ],
    );
    assert!(
        gate.starts_with("canary/alpha/web:http://127.0.0.1:"),
        "{gate}"
    );
    assert_eq!(
        git_in(&other, &["rev-parse", "HEAD^{tree}"]),
        git_in(&other, &["rev-parse", &format!("{c0}^{{tree}}")])
    );
    let note = p.remote_note(&c1);
    assert_eq!(note["revert"]["result"], "pushed");
    assert_eq!(note["revert"]["commit"], tip.as_str());
    assert_eq!(note["stages"]["canary"]["passed"], false);
    assert!(note["stages"].get("production").is_none());

    // The revert's own run (a push to main) has nothing to do.
    p.d.fleet
        .git(&["pull", "-q", "--ff-only", "origin", "main"]);
    let after = p.run(&c1, &tip, &[]);
    after.code(0);
    assert!(!after.stderr.contains("upload"), "{}", after.stderr);
}

#[test]
fn a_revert_goes_on_top_of_a_moved_branch_or_stops_on_a_conflict() {
    // Moved: someone pushed an unrelated commit after the failing one.
    let p = Pipeline::new();
    let c0 = p.head();
    p.d.set("alpha", "health", "bad");
    let c1 = p.push("alpha: broken health");
    let other = p.clone_remote("colleague");
    std::fs::write(other.join("NOTES.md"), "unrelated\n").unwrap();
    git_in(&other, &["add", "NOTES.md"]);
    git_in(&other, &["commit", "-q", "-m", "docs: notes"]);
    git_in(&other, &["push", "-q", "origin", "main"]);
    let c2 = git_in(&other, &["rev-parse", "HEAD"]);
    p.run(&c0, &c1, &[]).code(1);
    git_in(&other, &["pull", "-q", "--ff-only"]);
    assert_eq!(
        git_in(&other, &["rev-parse", "HEAD~1"]),
        c2,
        "revert on the new tip"
    );
    assert!(other.join("NOTES.md").exists(), "the later commit is kept");
    assert!(
        std::fs::read_to_string(other.join("clients/alpha.yaml"))
            .unwrap()
            .contains("health: ok")
    );

    // Conflict: the later commit edits the same line. Nothing is forced.
    let p = Pipeline::new();
    let c0 = p.head();
    p.d.set("alpha", "health", "bad");
    let c1 = p.push("alpha: broken health");
    let other = p.clone_remote("colleague");
    let path = other.join("clients/alpha.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("health: bad", "health: worse");
    std::fs::write(&path, text).unwrap();
    git_in(&other, &["commit", "-q", "-am", "alpha: worse"]);
    git_in(&other, &["push", "-q", "origin", "main"]);
    let c2 = git_in(&other, &["rev-parse", "HEAD"]);
    let run = p.run(&c0, &c1, &[]);
    run.code(1);
    assert!(
        run.stderr.contains("could not revert") && run.stderr.contains("clients/alpha.yaml"),
        "{}",
        run.stderr
    );
    assert_eq!(p.remote_ref("refs/heads/main"), Some(c2));
    assert!(p.serving("alpha-1").starts_with("ok\n"), "rolled back");
    assert_eq!(p.remote_note(&c1)["revert"]["result"], "conflict");
}

#[test]
fn a_human_git_revert_deploys_the_old_version() {
    let p = Pipeline::with(&[("alpha", "canary", &["alpha-1"])]);
    let c0 = p.head();
    p.d.set("alpha", "version", "\"2\"");
    let c1 = p.push("alpha: version 2");
    p.run(&c0, &c1, &[]).code(0);
    assert!(p.serving("alpha-1").contains("version=2"));
    p.d.fleet.git(&["revert", "--no-edit", &c1]);
    p.d.fleet.git(&["push", "-q", "origin", "main"]);
    let r = p.head();
    let run = p.run(&c1, &r, &[]);
    run.code(0);
    assert!(p.serving("alpha-1").contains("version=1"));
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/canary/alpha"),
        Some(r)
    );
}

#[test]
fn one_run_at_a_time_and_a_dead_runs_lock_is_taken_over() {
    let p = Pipeline::with(&[("alpha", "canary", &["alpha-1"])]);
    let c0 = p.head();
    p.d.set("alpha", "version", "\"2\"")
        .set("alpha", "start_delay", "3");
    let c1 = p.push("alpha: version 2, slow start");

    // Two at once: the second gives up after --lock-wait, naming the holder.
    let first = p.spawn_run(&c0, &c1, &[]);
    first.wait_for("pipeline lock taken");
    let second = p.run(&c0, &c1, &["--lock-wait", "1s"]);
    second.code(3);
    assert!(
        second
            .stderr
            .contains("another pipeline run holds the lock")
            && second.stderr.contains("(run local-"),
        "{}",
        second.stderr
    );
    first.finish().code(0);

    // A run killed mid-stage leaves its lock; the next run takes it over
    // once it expires, and converges.
    p.d.set("alpha", "version", "\"3\"");
    let c2 = p.push("alpha: version 3, slow start");
    let killed = p.spawn_run(&c1, &c2, &["--lock-expiry", "3s"]);
    killed.wait_for("alpha-1 web switch");
    killed.signal("-KILL");
    killed.finish();
    assert!(
        p.remote_ref("refs/fleetgate/lock").is_some(),
        "a killed run cannot release"
    );
    let rerun = p.run(&c1, &c2, &[]);
    rerun.code(0);
    assert!(
        rerun
            .stderr
            .contains("taking over an expired pipeline lock"),
        "{}",
        rerun.stderr
    );
    assert!(p.serving("alpha-1").contains("version=3"));
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/canary/alpha"),
        Some(c2)
    );
    assert_eq!(p.remote_ref("refs/fleetgate/lock"), None);
}

#[test]
fn sigterm_finishes_the_host_in_flight_records_and_releases_the_lock() {
    let p = Pipeline::with(&[("alpha", "canary", &["alpha-1", "alpha-2"])]);
    p.d.fleet.edit(
        "pipelines/pipeline.yaml",
        "    group: canary\n",
        "    group: canary\n    parallelism: 1\n",
    );
    let c0 = p.push("canary: one host at a time");
    p.d.set("alpha", "version", "\"2\"")
        .set("alpha", "start_delay", "2");
    let c1 = p.push("alpha: version 2, slow start");
    let run = p.spawn_run(&c0, &c1, &[]);
    run.wait_for("alpha-1 connect");
    run.signal("-TERM");
    let run = run.finish();
    run.code(3);
    assert!(run.stderr.contains("interrupted"), "{}", run.stderr);
    // The host in flight finished; the next one never started.
    assert!(p.serving("alpha-1").contains("version=2"));
    assert!(p.serving("alpha-2").contains("version=1"));
    let note = p.remote_note(&c1);
    assert_eq!(note["stages"]["canary"]["interrupted"], true);
    assert_eq!(p.remote_ref("refs/fleetgate/lock"), None);
    // Running again finishes the stage.
    p.run(&c0, &c1, &[]).code(0);
    assert!(p.serving("alpha-2").contains("version=2"));
}

#[test]
fn approvals_pushed_at_the_same_time_are_all_kept() {
    let p = Pipeline::new();
    let c0 = p.head();
    let people = ["alice", "bob", "carol", "dave"];
    p.d.fleet.edit(
        "pipelines/pipeline.yaml",
        "approvers: [alice, bob]",
        "approvers: [alice, bob, carol, dave]",
    );
    p.d.set("beta", "version", "\"2\"");
    let c1 = p.push("beta: version 2, two more approvers");
    p.run(&c0, &c1, &[]).code(4);
    // Four approvals at once from the same clone, as a runner serving
    // several comments would: they read the same record, the pushes that
    // lose the lease re-read and merge, and no process builds on a note
    // another one wrote in the clone but has not pushed.
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = people
            .into_iter()
            .map(|who| {
                let (p, c1) = (&p, &c1);
                s.spawn(move || p.fleet_run(&["approve", "--rev", c1, "--by", who]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &runs {
        r.code(0);
    }
    let mut by: Vec<String> = p.remote_note(&c1)["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["by"].as_str().unwrap().to_string())
        .collect();
    by.sort();
    assert_eq!(by, people);
}

#[test]
fn a_failed_run_never_prints_or_records_a_secret() {
    let p = Pipeline::new();
    let token = "Tok-9c1e44d0-not-in-git";
    p.d.with_secret(&["alpha", "beta"], token);
    let c0 = p.push("web gets a token");
    p.fleet_run(&["deploy", "--stage", "canary", "--rev", "HEAD"])
        .code(0);
    // The start prints the token and fails: a failed gate, rolled back, reverted.
    p.d.set("alpha", "health", "fail-start");
    let c1 = p.push("alpha: start fails");
    let run = p.run(&c0, &c1, &["-vv"]);
    run.code(1);
    assert!(!run.all().contains(token), "{}", run.all());
    assert!(run.stderr.contains("API_TOKEN=••••"), "{}", run.stderr);
    let note = p.remote_note(&c1);
    assert_eq!(note["revert"]["failed_gate"], "canary/alpha/web:start");
    assert!(!note.to_string().contains(token));
    let other = p.clone_remote("reader");
    let message = git_in(&other, &["log", "-1", "--format=%B"]);
    assert!(
        message.contains("Fleetgate-Failed-Gate: canary/alpha/web:start"),
        "{message}"
    );
    assert!(!message.contains(token), "{message}");
}
