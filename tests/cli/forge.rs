//! The forge integration: the sticky plan comment, commit statuses, the
//! comments on merged pull requests, and approvals from comments, the Run
//! button and GitHub environment reviews. The real binary runs as in a CI
//! job (the job's environment variables and event payload file) against
//! `forge_server`, a stand-in that validates every request against the
//! published API description; the hosts, Git remote and deploys are real.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::common::Run;
use crate::deploy::DeployFleet;
use crate::forge_server::{Flavor, ForgeServer};
use crate::run::Pipeline;

const TOKEN: &str = "fgt_9f3c1e7a5b2d4c6e8a0b1c2d3e4f5a6b";
const BOT: &str = "fleetgate-bot";
const RUN_NUMBER: &str = "7";
const RUN_ID: u64 = 4242;

/// A CI job's view of the forge: the stand-in plus the variables the forge
/// sets for a job.
pub struct Ci {
    pub server: ForgeServer,
    flavor: Flavor,
    dir: tempfile::TempDir,
    token: String,
}

impl Ci {
    pub fn start(flavor: Flavor) -> Ci {
        Ci::with(
            ForgeServer::start(flavor, "hosting", "fleet", TOKEN, BOT),
            flavor,
        )
    }

    /// The stand-in over TLS, with the certificate of `tls`.
    pub fn start_tls(flavor: Flavor, tls: std::sync::Arc<rustls::ServerConfig>) -> Ci {
        Ci::with(
            ForgeServer::start_tls(flavor, "hosting", "fleet", TOKEN, BOT, tls),
            flavor,
        )
    }

    fn with(server: ForgeServer, flavor: Flavor) -> Ci {
        crate::leakscan::secret("the forge token", TOKEN);
        Ci {
            server,
            flavor,
            dir: tempfile::tempdir().unwrap(),
            token: TOKEN.into(),
        }
    }

    /// The job environment for `event` (name, payload).
    pub fn env(&self, event: &str, payload: Value, actor: &str) -> Vec<(String, String)> {
        let path = self.dir.path().join(format!("{event}.json"));
        std::fs::write(&path, payload.to_string()).unwrap();
        let mut env = vec![
            ("GITHUB_SERVER_URL", self.server.url()),
            ("GITHUB_API_URL", self.server.api_url()),
            ("GITHUB_REPOSITORY", "hosting/fleet".to_string()),
            ("GITHUB_TOKEN", self.token.clone()),
            ("GITHUB_EVENT_NAME", event.to_string()),
            ("GITHUB_EVENT_PATH", path.display().to_string()),
            ("GITHUB_RUN_ID", RUN_ID.to_string()),
            ("GITHUB_RUN_NUMBER", RUN_NUMBER.to_string()),
            ("GITHUB_ACTOR", actor.to_string()),
            ("GITHUB_OUTPUT", self.outputs().display().to_string()),
        ];
        match self.flavor {
            // Forgejo sets GITHUB_ACTIONS too; its own marker wins.
            Flavor::Forgejo => {
                env.push(("GITHUB_ACTIONS", "true".into()));
                env.push(("FORGEJO_ACTIONS", "true".into()));
            }
            Flavor::Github => env.push(("GITHUB_ACTIONS", "true".into())),
        }
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn outputs(&self) -> PathBuf {
        self.dir.path().join("github_output")
    }

    fn run_url(&self) -> String {
        let page = match self.flavor {
            Flavor::Forgejo => RUN_NUMBER.to_string(),
            Flavor::Github => RUN_ID.to_string(),
        };
        format!("{}/hosting/fleet/actions/runs/{page}", self.server.url())
    }

    /// Nothing fleetgate sent was refused by the API description.
    #[track_caller]
    pub fn assert_valid(&self) {
        assert_eq!(self.server.rejected(), Vec::<String>::new());
    }
}

impl Drop for Ci {
    fn drop(&mut self) {
        // Step outputs are written by fleetgate: scanned like its stdout.
        if let Ok(outputs) = std::fs::read(self.outputs()) {
            crate::leakscan::capture("github-output", &outputs);
        }
    }
}

pub fn pr_event(number: u64, base: &str, head: &str) -> Value {
    json!({
        "action": "synchronize",
        "number": number,
        "pull_request": {"number": number, "base": {"sha": base}, "head": {"sha": head}},
    })
}

fn comment_event(number: u64, comment_id: u64, user: &str, body: &str, at: &str) -> Value {
    json!({
        "action": "created",
        "issue": {"number": number, "pull_request": {"url": "x"}},
        "comment": {"id": comment_id, "body": body, "user": {"login": user}, "created_at": at},
        "sender": {"login": user},
    })
}

fn push_event(before: &str, after: &str) -> Value {
    json!({"ref": "refs/heads/main", "before": before, "after": after})
}

pub fn envs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The token is in no output, whatever happened.
#[track_caller]
pub fn no_token(run: &Run) -> &Run {
    assert!(
        !run.all().contains(TOKEN),
        "the token leaked:\n{}",
        run.all()
    );
    run
}

#[test]
fn plan_comment_is_created_once_then_edited_with_statuses_on_the_head() {
    let ci = Ci::start(Flavor::Forgejo);
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let base = d.fleet.git(&["rev-parse", "HEAD"]);
    d.set("alpha", "version", "\"2\"");
    let head = d.fleet.commit("alpha: version 2");
    ci.server.add_pull(12, &head, &base, false, None);
    let env = ci.env("pull_request", pr_event(12, &base, &head), "dev");

    let args = |head: &str| {
        vec![
            "plan".to_string(),
            "--base".into(),
            base.clone(),
            "--head".into(),
            head.to_string(),
            "--comment".into(),
            "-v".into(),
        ]
    };
    let run = d.fleet.run_env(
        &args(&head).iter().map(String::as_str).collect::<Vec<_>>(),
        &envs(&env),
    );
    no_token(run.code(0));
    // stdout is still the plan (the job log the comment links to).
    assert!(run.stdout.contains("alpha"), "{}", run.stdout);
    let comments = ci.server.comments(12);
    assert_eq!(comments.len(), 1, "{comments:?}");
    let first = &comments[0];
    assert_eq!(first.user, BOT);
    assert!(first.body.starts_with("<!-- fleetgate:plan -->"));
    assert!(
        first
            .body
            .contains("| Client | Stage | Hosts | App | Action | Changes |")
    );
    assert!(first.body.contains("| alpha | canary |"), "{}", first.body);
    assert!(first.body.contains("<details><summary><b>alpha</b>"));
    assert!(first.body.contains("**After merge**"));
    assert!(first.body.contains("- **canary** (alpha): on merge"));
    let hash1 = d.fleet.plan_json(&base, &head)["plan_hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(first.body.contains(&format!("Plan hash: `{hash1}`")));
    let statuses = ci.server.statuses(&head);
    let seen: Vec<(&str, &str)> = statuses
        .iter()
        .map(|s| (s.context.as_str(), s.state.as_str()))
        .collect();
    assert_eq!(
        seen,
        [("fleetgate/plan", "pending"), ("fleetgate/plan", "success")]
    );
    assert!(statuses.iter().all(|s| s.target_url == ci.run_url()));

    // The next push to the pull request: the same comment, edited.
    d.set("alpha", "version", "\"3\"");
    let head2 = d.fleet.commit("alpha: version 3");
    let env = ci.env("pull_request", pr_event(12, &base, &head2), "dev");
    let run = d.fleet.run_env(
        &args(&head2).iter().map(String::as_str).collect::<Vec<_>>(),
        &envs(&env),
    );
    no_token(run.code(0));
    let comments = ci.server.comments(12);
    assert_eq!(comments.len(), 1, "a second comment: {comments:?}");
    assert_eq!(comments[0].id, first.id);
    let hash2 = d.fleet.plan_json(&base, &head2)["plan_hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(hash1, hash2);
    assert!(comments[0].body.contains(&format!("Plan hash: `{hash2}`")));
    assert!(!comments[0].body.contains(&hash1));
    assert!(
        ci.server
            .requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.path.contains("/issues/comments/"))
    );
    ci.assert_valid();
}

#[test]
fn an_oversized_plan_is_shortened_per_client_and_keeps_the_summary() {
    // GitHub refuses comments over 65536 characters (the stand-in too).
    let ci = Ci::start(Flavor::Github);
    let d = DeployFleet::new(
        &[
            ("alpha", "canary", &["alpha-1"]),
            ("beta", "canary", &["beta-1"]),
        ],
        "",
    );
    let base = d.fleet.git(&["rev-parse", "HEAD"]);
    // alpha's rendered file grows by ~90 000 characters; beta's changes a bit.
    let long: Vec<String> = (0..1500)
        .map(|i| format!("line {i:04} of a very long generated note, padded out"))
        .collect();
    d.set("alpha", "note", &format!("\"{}\"", long.join("\\n")));
    d.set("beta", "version", "\"2\"");
    let head = d.fleet.commit("alpha: a long note; beta: version 2");
    ci.server.add_pull(5, &head, &base, false, None);
    let env = ci.env("pull_request", pr_event(5, &base, &head), "dev");
    let run = d.fleet.run_env(
        &["plan", "--base", &base, "--head", &head, "--comment"],
        &envs(&env),
    );
    no_token(run.code(0));
    // The whole plan is in the job log.
    assert!(run.stdout.contains("line 1499 of a very long"));
    let comments = ci.server.comments(5);
    assert_eq!(comments.len(), 1);
    let body = &comments[0].body;
    assert!(body.chars().count() <= 65_536, "{}", body.len());
    // The summary table is whole: both clients' rows.
    assert!(body.contains("| alpha | canary |"), "{body}");
    assert!(body.contains("| beta | canary |"), "{body}");
    // alpha's diff gave way to a pointer at the job log; beta's is there.
    assert!(body.contains("is too long for a comment: see [the job log]("));
    assert!(body.contains(&ci.run_url()));
    assert!(!body.contains("line 1499 of a very long"));
    assert!(body.contains("+version=2"), "{body}");
    assert!(body.contains("Plan hash: `"));
    ci.assert_valid();
}

/// The record has no approval (none yet, or an empty list).
fn no_approvals(note: &Value) -> bool {
    note["approvals"].as_array().is_none_or(Vec::is_empty)
}

/// Statuses of one commit as (context, state), in the order they were set.
pub fn statuses(ci: &Ci, sha: &str) -> Vec<(String, String)> {
    ci.server
        .statuses(sha)
        .into_iter()
        .map(|s| (s.context, s.state))
        .collect()
}

pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Pushes the work tree to main as the merge of pull request `number`, then
/// runs the pipeline for it as the deploy workflow does.
fn merge_and_run(ci: &Ci, p: &Pipeline, number: u64, base: &str, message: &str) -> (String, Run) {
    let head = p.push(message);
    ci.server.add_pull(number, &head, base, true, Some(&head));
    let env = ci.env("push", push_event(base, &head), "dev");
    let run = p.fleet_run_env(
        &["run", "--base", base, "--head", &head, "--comment"],
        &envs(&env),
    );
    (head, run)
}

#[test]
fn a_rollout_reports_statuses_waits_is_approved_by_comment_and_a_failure_is_explained() {
    let ci = Ci::start(Flavor::Forgejo);
    let p = Pipeline::new();
    let c0 = p.head();
    p.d.set("alpha", "version", "\"2\"")
        .set("beta", "version", "\"2\"");
    let (c1, run) = merge_and_run(&ci, &p, 3, &c0, "web: version 2");
    no_token(run.code(4));
    assert_eq!(
        statuses(&ci, &c1),
        pairs(&[
            ("fleetgate/canary", "pending"),
            ("fleetgate/canary", "success"),
            ("fleetgate/production", "pending"),
        ])
    );
    let waiting = ci.server.statuses(&c1).pop().unwrap();
    assert_eq!(waiting.description, "waits for an approval by alice, bob");
    // The merged pull request says canary passed and how to approve.
    let comments = ci.server.comments(3);
    assert_eq!(comments.len(), 1, "{comments:?}");
    let plan_hash = p.remote_note(&c1)["plan_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let body = &comments[0].body;
    assert!(body.contains("**canary** passed on 1 host(s)"), "{body}");
    assert!(body.contains("alpha-1"), "{body}");
    assert!(body.contains(&format!("/fleetgate approve {}", &plan_hash[..12])));
    assert!(body.contains("@alice, @bob"));
    assert!(body.contains("promote"));

    // mallory is not an approver: not counted, and told so on the PR.
    let c = ci.server.add_comment(3, "mallory", "/fleetgate approve");
    let env = ci.env(
        "issue_comment",
        comment_event(3, c.id, "mallory", &c.body, &c.created_at),
        "mallory",
    );
    let refused = p.fleet_run_env(&["approve", "--from-ci"], &envs(&env));
    no_token(refused.code(1));
    assert!(refused.stdout.is_empty());
    let reply = ci.server.comments(3).pop().unwrap();
    assert_eq!(reply.user, BOT);
    assert!(
        reply.body.contains("@mallory") && reply.body.contains("not counted"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("not an approver"), "{}", reply.body);
    assert!(no_approvals(&p.remote_note(&c1)));

    // An edited comment approves nothing, even alice's (only a new comment
    // is an approval given after the plan; the workflow's `types: [created]`
    // is not filtered by every runner).
    let c = ci.server.add_comment(3, "alice", "/fleetgate approve");
    let mut edited = comment_event(3, c.id, "alice", &c.body, &c.created_at);
    edited["action"] = json!("edited");
    let env = ci.env("issue_comment", edited, "alice");
    let ignored = p.fleet_run_env(&["approve", "--from-ci", "--format", "json"], &envs(&env));
    no_token(ignored.code(0));
    assert_eq!(ignored.json()["counted"], false, "{}", ignored.all());
    assert!(
        ignored.json()["why"]
            .as_str()
            .is_some_and(|w| w.contains("edited")),
        "{}",
        ignored.all()
    );
    assert!(no_approvals(&p.remote_note(&c1)));

    // alice is: counted for the current plan, from the merged PR's commit.
    let c = ci.server.add_comment(
        3,
        "alice",
        &format!("/fleetgate approve {}", &plan_hash[..12]),
    );
    let env = ci.env(
        "issue_comment",
        comment_event(3, c.id, "alice", &c.body, &c.created_at),
        "alice",
    );
    let approved = p.fleet_run_env(&["approve", "--from-ci", "--format", "json"], &envs(&env));
    no_token(approved.code(0));
    let a = approved.json();
    assert_eq!(
        (a["by"].as_str(), a["source"].as_str(), a["rev"].as_str()),
        (Some("alice"), Some("comment"), Some(c1.as_str()))
    );
    assert_eq!(a["plan_hash"], plan_hash.as_str());
    let outputs = std::fs::read_to_string(ci.outputs()).unwrap();
    assert!(outputs.contains(&format!("rev={c1}\n")), "{outputs}");
    let recorded = &p.remote_note(&c1)["approvals"][0];
    assert_eq!(recorded["by"], "alice");
    assert_eq!(recorded["at"], c.created_at.as_str());

    // The promote job resumes the run (base from the record).
    let env = ci.env("issue_comment", json!({}), "alice");
    let promoted = p.fleet_run_env(&["run", "--head", &c1, "--comment"], &envs(&env));
    no_token(promoted.code(0));
    assert!(p.serving("beta-1").contains("version=2"));
    assert_eq!(
        statuses(&ci, &c1)[3..],
        pairs(&[
            ("fleetgate/canary", "success"),
            ("fleetgate/production", "pending"),
            ("fleetgate/production", "success"),
        ])[..]
    );

    // A broken change: canary fails, is rolled back, the change reverted,
    // and the merged PR is told.
    p.d.set("alpha", "health", "bad")
        .set("beta", "version", "\"3\"");
    let (c2, failed) = merge_and_run(&ci, &p, 4, &c1, "web: version 3, alpha broken");
    no_token(failed.code(1));
    assert_eq!(
        statuses(&ci, &c2),
        pairs(&[
            ("fleetgate/canary", "pending"),
            ("fleetgate/canary", "failure"),
        ])
    );
    let revert = p.remote_note(&c2)["revert"]["commit"]
        .as_str()
        .unwrap()
        .to_string();
    let told = ci.server.comments(4);
    assert_eq!(told.len(), 1, "{told:?}");
    let body = &told[0].body;
    assert!(body.contains("failed in **canary**"), "{body}");
    assert!(body.contains("Failed gate: `web:"), "{body}");
    assert!(body.contains("`alpha-1` (alpha)"), "{body}");
    assert!(
        body.contains(&format!("reverted on the branch by {revert}")),
        "{body}"
    );
    assert!(p.serving("alpha-1").contains("version=2"));
    ci.assert_valid();
}

#[test]
fn approvals_count_only_for_the_current_plan_and_only_from_approvers() {
    let ci = Ci::start(Flavor::Forgejo);
    let p = Pipeline::new();
    let c0 = p.head();
    p.d.set("alpha", "version", "\"2\"")
        .set("beta", "version", "\"2\"");
    let c1 = p.push("web: version 2");
    ci.server.add_pull(8, &c1, &c0, true, Some(&c1));
    p.run(&c0, &c1, &[]).code(4);
    let first = p.remote_note(&c1)["plan_hash"]
        .as_str()
        .unwrap()
        .to_string();
    // alice copies the hash now, and comments a while later...
    let early = ci.server.add_comment(8, "alice", "/fleetgate approve");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // ...after the plan of c1 changed (the run was made again from c1
    // itself: only beta is left, a different plan).
    p.run(&c1, &c1, &[]).code(4);
    let second = p.remote_note(&c1)["plan_hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first, second);

    // The hash named is the old plan's: not counted.
    let c = ci
        .server
        .add_comment(8, "alice", &format!("/fleetgate approve {}", &first[..12]));
    let env = ci.env(
        "issue_comment",
        comment_event(8, c.id, "alice", &c.body, &c.created_at),
        "alice",
    );
    let stale = p.fleet_run_env(&["approve", "--from-ci"], &envs(&env));
    no_token(stale.code(1));
    assert!(
        ci.server
            .comments(8)
            .last()
            .unwrap()
            .body
            .contains("the plan of")
    );
    // No hash, but given before the plan changed: not counted either.
    let env = ci.env(
        "issue_comment",
        comment_event(8, early.id, "alice", &early.body, &early.created_at),
        "alice",
    );
    let late = p.fleet_run_env(&["approve", "--from-ci"], &envs(&env));
    no_token(late.code(1));
    assert!(
        late.stderr.contains("it was for an earlier plan"),
        "{}",
        late.stderr
    );
    assert!(no_approvals(&p.remote_note(&c1)));

    // The Run button: the actor is checked against the approvers.
    let dispatch = |actor: &str, sender: &str| {
        let env = ci.env(
            "workflow_dispatch",
            json!({"inputs": {"rev": c1}, "sender": {"login": sender}}),
            actor,
        );
        p.fleet_run_env(&["approve", "--from-ci", "--format", "json"], &envs(&env))
    };
    let refused = dispatch("mallory", "mallory");
    no_token(refused.code(1));
    assert!(
        refused.stderr.contains("`mallory` is not an approver"),
        "{}",
        refused.stderr
    );
    // An actor the event's sender contradicts is not believed.
    no_token(dispatch("alice", "mallory").code(1));
    assert!(no_approvals(&p.remote_note(&c1)));
    let ok = dispatch("bob", "bob");
    no_token(ok.code(0));
    assert_eq!(ok.json()["source"], "dispatch");
    assert_eq!(ok.json()["plan_hash"], second.as_str());
    p.run(&c1, &c1, &[]).code(0);
    ci.assert_valid();
}

#[test]
fn github_environment_review_is_read_back_and_checked() {
    let ci = Ci::start(Flavor::Github);
    let p = Pipeline::new();
    let c0 = p.head();
    p.d.set("beta", "version", "\"2\"");
    let (c1, run) = merge_and_run(&ci, &p, 21, &c0, "beta: version 2");
    no_token(run.code(4));
    let env = ci.env("push", push_event(&c0, &c1), "dev");
    let waiting = &ci.server.comments(21)[0].body;
    assert!(waiting.contains("Review deployments"), "{waiting}");

    // carol may approve the environment on GitHub but is no approver here.
    ci.server
        .add_run_approval(RUN_ID, "carol", "production", "approved", "lgtm");
    let approve = || {
        p.fleet_run_env(
            &[
                "approve",
                "--from-ci",
                "--environment",
                "production",
                "--rev",
                &c1,
                "--format",
                "json",
            ],
            &envs(&env),
        )
    };
    let refused = approve();
    no_token(refused.code(1));
    assert!(
        refused.stderr.contains("carol approved production"),
        "{}",
        refused.stderr
    );
    ci.server
        .add_run_approval(RUN_ID, "alice", "production", "approved", "");
    let ok = approve();
    no_token(ok.code(0));
    assert_eq!(ok.json()["by"], "alice");
    assert_eq!(ok.json()["source"], "environment");
    assert!(ci.server.requests().iter().any(|r| {
        r.path
            .ends_with(&format!("/actions/runs/{RUN_ID}/approvals"))
            && r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))
    }));
    let promoted = p.fleet_run_env(&["run", "--head", &c1, "--comment"], &envs(&env));
    no_token(promoted.code(0));
    assert!(p.serving("beta-1").contains("version=2"));
    assert_eq!(
        statuses(&ci, &c1).last().unwrap(),
        &("fleetgate/production".to_string(), "success".to_string())
    );
    ci.assert_valid();
}

/// A small plan to comment: one client, one change.
fn small_change() -> (DeployFleet, String, String) {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let base = d.fleet.git(&["rev-parse", "HEAD"]);
    d.set("alpha", "version", "\"2\"");
    let head = d.fleet.commit("alpha: version 2");
    (d, base, head)
}

#[test]
fn server_errors_and_rate_limits_are_retried() {
    for flavor in [Flavor::Forgejo, Flavor::Github] {
        let ci = Ci::start(flavor);
        let (d, base, head) = small_change();
        ci.server.add_pull(2, &head, &base, false, None);
        ci.server.fail_next(502, 1);
        ci.server.rate_limit_next(1);
        let env = ci.env("pull_request", pr_event(2, &base, &head), "dev");
        let run = d.fleet.run_env(
            &["plan", "--base", &base, "--head", &head, "--comment"],
            &envs(&env),
        );
        no_token(run.code(0));
        assert!(run.stderr.contains("502"), "{}", run.stderr);
        assert!(run.stderr.contains("retrying"), "{}", run.stderr);
        let codes: Vec<u16> = ci.server.requests().iter().map(|r| r.status).collect();
        assert_eq!(
            codes[..2],
            [502, if flavor == Flavor::Github { 403 } else { 429 }]
        );
        assert_eq!(ci.server.comments(2).len(), 1, "{flavor:?}");
        ci.assert_valid();
    }
}

#[test]
fn a_refused_token_is_exit_3_with_a_hint_and_never_printed() {
    for flavor in [Flavor::Forgejo, Flavor::Github] {
        let mut ci = Ci::start(flavor);
        ci.token = "fgt_wrong_0000000000000000000000000000".into();
        let (d, base, head) = small_change();
        ci.server.add_pull(2, &head, &base, false, None);
        let env = ci.env("pull_request", pr_event(2, &base, &head), "dev");
        let run = d.fleet.run_env(
            &["plan", "--base", &base, "--head", &head, "--comment", "-vv"],
            &envs(&env),
        );
        run.code(3);
        assert!(!run.all().contains(&ci.token), "{}", run.all());
        assert!(run.stderr.contains("refused the token"), "{}", run.stderr);
        assert!(
            run.stderr.contains("hint: check GITHUB_TOKEN"),
            "{}",
            run.stderr
        );
        // Nothing was posted.
        assert!(ci.server.comments(2).is_empty());
        ci.assert_valid();
    }
}

#[test]
fn comment_outside_ci_is_an_error_not_a_no_op() {
    let (d, base, head) = small_change();
    let run = d
        .fleet
        .run(&["plan", "--base", &base, "--head", &head, "--comment"]);
    run.code(2);
    assert!(
        run.stderr.contains("plan --comment needs a forge"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
    let run = d.fleet.run(&["approve", "--from-ci"]);
    run.code(2);
    assert!(
        run.stderr.contains("approve --from-ci needs a forge"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_plan_comment_names_changed_secrets_but_never_their_values() {
    let ci = Ci::start(Flavor::Forgejo);
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let (old, new) = ("Tok-old-5d1c9e2f", "Tok-new-8a7b6c5d");
    d.with_secret(&["alpha"], old);
    let base = d.fleet.commit("web gets a token");
    d.fleet
        .sops_set("secrets/clients/alpha.sops.yaml", "api_token", new);
    let head = d.fleet.commit("alpha: rotate the token");
    ci.server.add_pull(9, &head, &base, false, None);
    let env = ci.env("pull_request", pr_event(9, &base, &head), "dev");
    let run = d.fleet.run_env(
        &["plan", "--base", &base, "--head", &head, "--comment", "-vv"],
        &envs(&env),
    );
    no_token(run.code(0));
    let body = &ci.server.comments(9)[0].body;
    assert!(body.contains("api_token"), "{body}");
    for secret in [old, new] {
        assert!(!body.contains(secret), "a secret in the comment:\n{body}");
        assert!(!run.all().contains(secret), "a secret in the log");
        assert!(
            ci.server
                .requests()
                .iter()
                .all(|r| !r.body.contains(secret)),
            "a secret sent to the forge"
        );
    }
    ci.assert_valid();
}

#[test]
fn a_pull_request_that_does_not_plan_gets_the_reason_in_its_comment() {
    let ci = Ci::start(Flavor::Forgejo);
    let (d, base, _) = small_change();
    d.fleet
        .edit("clients/alpha.yaml", "group: canary", "group: [canary");
    let head = d.fleet.commit("alpha: broken YAML");
    ci.server.add_pull(6, &head, &base, false, None);
    let env = ci.env("pull_request", pr_event(6, &base, &head), "dev");
    let run = d.fleet.run_env(
        &["plan", "--base", &base, "--head", &head, "--comment"],
        &envs(&env),
    );
    no_token(run.code(2));
    let body = &ci.server.comments(6)[0].body;
    assert!(
        body.contains("fleetgate could not plan this change"),
        "{body}"
    );
    assert!(body.contains("clients/alpha.yaml"), "{body}");
    assert_eq!(
        statuses(&ci, &head),
        pairs(&[("fleetgate/plan", "pending"), ("fleetgate/plan", "failure")])
    );
    ci.assert_valid();
}

/// `env` with `name` set to `value`.
fn with(mut env: Vec<(String, String)>, name: &str, value: &str) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != name);
    env.push((name.to_string(), value.to_string()));
    env
}

#[test]
fn malformed_ci_input_is_exit_2_naming_it_and_nothing_is_sent() {
    let ci = Ci::start(Flavor::Forgejo);
    let (d, base, head) = small_change();
    ci.server.add_pull(2, &head, &base, true, Some(&head));
    let plan = ["plan", "--base", &base, "--head", &head, "--comment"];
    let pr = ci.env("pull_request", pr_event(2, &base, &head), "dev");
    let mut bad_pr = pr_event(2, &base, &head);
    bad_pr["pull_request"]["number"] = json!("2/../../../admin");
    let at = "yesterday";
    let cases = [
        (
            &plan[..],
            with(pr.clone(), "GITHUB_REPOSITORY", "hosting/fleet/../../admin"),
            "GITHUB_REPOSITORY is \"hosting/fleet/../../admin\": expected OWNER/NAME".to_string(),
        ),
        (
            &plan[..],
            with(
                pr.clone(),
                "GITHUB_SERVER_URL",
                &format!("{}/?x=1", ci.server.url()),
            ),
            format!(
                "GITHUB_SERVER_URL is \"{}/?x=1\": a query (`?…`) does not belong in it",
                ci.server.url()
            ),
        ),
        (
            &plan[..],
            ci.env("pull_request", bad_pr, "dev"),
            "pull_request.number is \"2/../../../admin\": expected a positive whole number"
                .to_string(),
        ),
        (
            &["approve", "--from-ci"][..],
            ci.env(
                "issue_comment",
                comment_event(2, 77, "alice", "/fleetgate approve", at),
                "alice",
            ),
            "comment.created_at is \"yesterday\": expected an RFC 3339 time".to_string(),
        ),
    ];
    for (args, env, expect) in cases {
        let run = d.fleet.run_env(args, &envs(&env));
        no_token(run.code(2));
        assert!(run.stderr.contains(&expect), "{expect}\n{}", run.stderr);
        if expect.starts_with("pull_request") || expect.starts_with("comment") {
            assert!(run.stderr.contains("GITHUB_EVENT_PATH="), "{}", run.stderr);
        }
        assert_eq!(
            ci.server
                .requests()
                .iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect::<Vec<_>>(),
            Vec::<String>::new(),
            "{args:?}: no request reaches the forge"
        );
    }
    assert!(ci.server.comments(2).is_empty());
}
