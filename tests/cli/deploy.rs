//! `fleetgate deploy` against real sshd hosts on loopback, with a
//! `command`-runtime app that really serves HTTP (python3's http.server),
//! serving its release's version on /health.

use std::path::Path;

use crate::common::{Fleet, Run};
use crate::hosts::{TestHosts, USER, http_get};

const APP: &str = r#"runtime: command
files:
  start.sh: start.sh.j2
  health: health.j2
commands:
  start: "sh start.sh"
health:
  - http: "http://127.0.0.1:{{ host.port + 1000 }}/health"
    expect_status: 200
    expect_body: "ok"
    interval: 200ms
    timeout: 1s
    successes: 2
    failures: 10
    deadline: 15s
  - command: "test -s health"
rollback: safe
"#;

/// Serves the release directory on port ssh+1000; replaces the previous server.
const START: &str = r#"pid=../../web.pid
if [ -f "$pid" ]; then kill "$(cat "$pid")" 2>/dev/null || true; sleep 0.2; fi
echo "start $(date +%s.%N) {{ host.name }}" >> {{ client.vars.window_log }}
sleep {{ client.vars.start_delay }}
echo "end $(date +%s.%N) {{ host.name }}" >> {{ client.vars.window_log }}
setsid nohup python3 -m http.server {{ host.port + 1000 }} --bind 127.0.0.1 >../../web.log 2>&1 </dev/null &
echo $! > "$pid"
"#;

const HEALTH: &str =
    "{{ client.vars.health }}\nversion={{ client.vars.version }}\nnote={{ client.vars.note }}\n";

/// A fleet with one app `web` and one client per group, on the test hosts.
pub struct DeployFleet {
    pub fleet: Fleet,
    pub hosts: TestHosts,
}

impl DeployFleet {
    /// `clients`: (client, group, hosts).
    pub fn new(clients: &[(&str, &str, &[&str])], production: &str) -> DeployFleet {
        let names: Vec<&str> = clients
            .iter()
            .flat_map(|(_, _, h)| h.iter().copied())
            .collect();
        let hosts = TestHosts::start(&names);
        let fleet = Fleet::empty();
        // A stage per group in use (a stage nobody is in is a warning).
        let mut stages = String::from("stages:\n");
        for group in ["canary", "production"] {
            if clients.iter().any(|(_, g, _)| *g == group) {
                stages.push_str(&format!("  - name: {group}\n    group: {group}\n"));
                if group == "production" {
                    stages.push_str(production);
                }
            }
        }
        fleet.write(
            "pipelines/pipeline.yaml",
            &format!(
                "{stages}on_failure:\n  rollback: true\n  revert: false\nssh:\n  options:\n    KexAlgorithms: curve25519-sha256\n"
            ),
        );
        fleet.write("pipelines/apps/web/app.yaml", APP);
        fleet.write("pipelines/apps/web/start.sh.j2", START);
        fleet.write("pipelines/apps/web/health.j2", HEALTH);
        fleet.write("pipelines/known_hosts", &hosts.known_hosts());
        // The hosts' user appends to it (see START).
        let windows = hosts.dir.join("windows.log");
        std::fs::write(&windows, "").unwrap();
        std::fs::set_permissions(
            &windows,
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .unwrap();
        let d = DeployFleet { fleet, hosts };
        for (client, group, hs) in clients {
            d.write_client(client, group, hs, "1", "ok");
        }
        d.fleet.commit("fleet");
        d
    }

    pub fn write_client(
        &self,
        client: &str,
        group: &str,
        hs: &[&str],
        version: &str,
        health: &str,
    ) {
        let mut yaml =
            format!("domain: {client}.example.org\ngroup: {group}\napps: [web]\nhosts:\n");
        for h in hs {
            let host = self.hosts.host(h);
            yaml.push_str(&format!(
                "  - name: {h}\n    address: 127.0.0.1\n    port: {}\n    user: {USER}\n    deploy_root: {}\n",
                host.port,
                host.deploy_root.display()
            ));
        }
        yaml.push_str(&format!(
            "vars:\n  version: \"{version}\"\n  health: {health}\n  note: plain\n  start_delay: 0\n  window_log: {}\n",
            self.hosts.dir.join("windows.log").display()
        ));
        self.fleet.write(&format!("clients/{client}.yaml"), &yaml);
    }

    pub fn set(&self, client: &str, key: &str, value: &str) -> &DeployFleet {
        let path = format!("clients/{client}.yaml");
        let text = self.fleet.read(&path);
        let mut out = String::new();
        for line in text.lines() {
            if line.trim_start().starts_with(&format!("{key}:")) {
                out.push_str(&format!("  {key}: {value}\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        self.fleet.write(&path, &out);
        self
    }

    pub fn deploy(&self, stage: &str) -> Run {
        let key = self.hosts.client_key.to_str().unwrap().to_string();
        self.fleet.run_env(
            &[
                "deploy", "--stage", stage, "--rev", "HEAD", "--format", "json",
            ],
            &[("FLEETGATE_SSH_KEY", &key)],
        )
    }

    /// What the app on `host` serves on /health now.
    pub fn serving(&self, host: &str) -> Option<String> {
        http_get(self.hosts.host(host).port + 1000, "/health")
    }

    pub fn state(&self, host: &str, client: &str) -> serde_json::Value {
        let p = self
            .hosts
            .host(host)
            .deploy_root
            .join(client)
            .join("web/state.json");
        serde_json::from_str(
            &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .unwrap()
    }
}

fn statuses(run: &Run) -> Vec<(String, String)> {
    run.json()["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_string(),
                h["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn s(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[test]
fn first_deploy_upgrade_and_noop() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let rev1 = d.fleet.git(&["rev-parse", "HEAD"]);
    let run = d.deploy("canary");
    run.code(0);
    assert_eq!(statuses(&run), [s("alpha-1", "deployed")]);
    assert!(d.serving("alpha-1").unwrap().contains("version=1"));
    // Progress: one line per host per step, as it happens.
    for step in [
        "alpha-1 connect ✓",
        "alpha-1 web upload ✓",
        "alpha-1 web switch ✓",
        "alpha-1 web start ✓",
        "alpha-1 health ✓",
    ] {
        assert!(
            run.stderr.contains(step),
            "missing {step:?}:\n{}",
            run.stderr
        );
    }
    let state = d.state("alpha-1", "alpha");
    assert_eq!(state["rev"], rev1.as_str());
    assert_eq!(state["previous"], serde_json::Value::Null);
    let app = d.hosts.host("alpha-1").deploy_root.join("alpha/web");
    assert_eq!(
        std::fs::read_link(app.join("current")).unwrap(),
        Path::new("releases").join(&rev1)
    );
    // Git records what the fleet runs: the client's deployed ref, and the
    // stage's outcome in a note on the commit.
    assert_eq!(
        d.fleet
            .git(&["rev-parse", "refs/fleetgate/deployed/canary/alpha"]),
        rev1
    );
    let note: serde_json::Value =
        serde_json::from_str(&d.fleet.git(&["notes", "--ref", "fleetgate", "show", &rev1]))
            .unwrap();
    assert_eq!(note["stages"]["canary"]["hosts"][0]["status"], "deployed");

    d.set("alpha", "version", "\"2\"");
    let rev2 = d.fleet.commit("web 2");
    d.deploy("canary").code(0);
    assert!(d.serving("alpha-1").unwrap().contains("version=2"));
    let state = d.state("alpha-1", "alpha");
    assert_eq!(
        (
            state["rev"].as_str().unwrap(),
            state["previous"].as_str().unwrap()
        ),
        (rev2.as_str(), rev1.as_str())
    );
    assert_eq!(state["files"]["health"].as_str().unwrap().len(), 64);

    let run = d.deploy("canary");
    run.code(0);
    assert_eq!(statuses(&run), [s("alpha-1", "unchanged")]);
    assert!(
        !run.stderr.contains("upload"),
        "a no-op uploads nothing:\n{}",
        run.stderr
    );
}

#[test]
fn health_failure_rolls_back_to_the_old_version() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.deploy("canary").code(0);
    d.set("alpha", "version", "\"2\"")
        .set("alpha", "health", "sick");
    d.fleet.commit("web 2, broken");
    let run = d.deploy("canary");
    run.code(1);
    assert_eq!(statuses(&run), [s("alpha-1", "rolled_back")]);
    let host = &run.json()["hosts"][0];
    assert_eq!(host["failure"]["kind"], "health");
    assert!(
        host["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("body lacks \"ok\""),
        "{host:#}"
    );
    assert!(
        host["rollback_checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["passed"] == true),
        "{host:#}"
    );
    // The old version serves again, and Git still says the old rev is deployed.
    assert!(d.serving("alpha-1").unwrap().contains("version=1"));
    assert_eq!(
        d.fleet
            .git(&["rev-parse", "refs/fleetgate/deployed/canary/alpha"]),
        d.fleet.git(&["rev-parse", "HEAD~1"])
    );
    let note: serde_json::Value =
        serde_json::from_str(
            &d.fleet
                .git(&["notes", "--ref", "fleetgate", "show", "HEAD"]),
        )
        .unwrap();
    assert_eq!(
        note["stages"]["canary"]["hosts"][0]["status"],
        "rolled_back"
    );
}

#[test]
fn freeze_app_is_not_rolled_back() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.fleet.edit(
        "pipelines/apps/web/app.yaml",
        "rollback: safe",
        "rollback: freeze",
    );
    d.fleet.commit("web migrates data");
    d.deploy("canary").code(0);
    d.set("alpha", "version", "\"2\"")
        .set("alpha", "health", "sick");
    d.fleet.commit("web 2, broken");
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    let run = d.fleet.run_env(
        &["deploy", "--stage", "canary", "--rev", "HEAD"],
        &[("FLEETGATE_SSH_KEY", &key)],
    );
    run.code(1);
    assert!(
        run.stdout
            .contains("FROZEN: alpha/web@alpha-1 stays on the failed release"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("rollback: freeze"), "{}", run.stderr);
    assert!(d.serving("alpha-1").unwrap().contains("version=2"));
}

#[test]
fn unreachable_host_stops_the_wave_and_untouched_hosts_stay_untouched() {
    let mut d = DeployFleet::new(
        &[("beta", "production", &["beta-1", "beta-2", "beta-3"])],
        "    parallelism: 1\n    max_failures: 0\n",
    );
    d.hosts.stop("beta-1");
    let run = d.deploy("production");
    run.code(3);
    assert_eq!(
        statuses(&run),
        [
            s("beta-1", "failed"),
            s("beta-2", "not_started"),
            s("beta-3", "not_started")
        ]
    );
    let failure = &run.json()["hosts"][0]["failure"];
    assert_eq!(failure["step"], "connect");
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{failure:#}"
    );
    for h in ["beta-2", "beta-3"] {
        let root = &d.hosts.host(h).deploy_root;
        assert_eq!(
            std::fs::read_dir(root).unwrap().count(),
            0,
            "{h} was touched"
        );
    }
}

#[test]
fn parallelism_is_respected() {
    let d = DeployFleet::new(
        &[("beta", "production", &["b-1", "b-2", "b-3", "b-4"])],
        "    parallelism: 2\n",
    );
    d.set("beta", "start_delay", "0.6");
    d.fleet.commit("slow start");
    d.deploy("production").code(0);
    // Each host logged when its start command began and ended.
    let log = std::fs::read_to_string(d.hosts.dir.join("windows.log")).unwrap();
    let mut events: Vec<(f64, i32)> = log
        .lines()
        .map(|l| {
            let mut parts = l.split_whitespace();
            let kind = parts.next().unwrap();
            let t: f64 = parts.next().unwrap().parse().unwrap();
            (t, if kind == "start" { 1 } else { -1 })
        })
        .collect();
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut now, mut max) = (0, 0);
    for (_, delta) in events {
        now += delta;
        max = max.max(now);
    }
    assert_eq!(max, 2, "at most 2 hosts at once, and 2 did overlap:\n{log}");
}

#[test]
fn host_key_mismatch_is_refused() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    // Pin some other key for the host.
    let other = TestHosts::start(&["other"]);
    d.fleet.write(
        "pipelines/known_hosts",
        &format!("alpha-1 {}\n", other.host("other").host_key_pub),
    );
    d.fleet.commit("wrong host key");
    let run = d.deploy("canary");
    run.code(3);
    let failure = &run.json()["hosts"][0]["failure"];
    let message = failure["message"].as_str().unwrap();
    assert!(
        message.contains("Host key verification failed"),
        "{message}"
    );
    assert!(message.contains("pipelines/known_hosts"), "{message}");
    assert_eq!(
        std::fs::read_dir(&d.hosts.host("alpha-1").deploy_root)
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn shell_in_a_var_deploys_literally() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let marker = d.hosts.dir.join("pwned");
    let evil = format!(
        "$(touch {}) `touch {}` ';touch {};'",
        marker.display(),
        marker.display(),
        marker.display()
    );
    d.set("alpha", "note", &serde_json::to_string(&evil).unwrap());
    d.fleet.commit("a note with shell in it");
    d.deploy("canary").code(0);
    assert!(
        d.serving("alpha-1")
            .unwrap()
            .contains(&format!("note={evil}"))
    );
    assert!(!marker.exists(), "a var was executed as shell");
}

impl DeployFleet {
    fn fleetgate(&self, args: &[&str]) -> Run {
        let key = self.hosts.client_key.to_str().unwrap().to_string();
        self.fleet.run_env(args, &[("FLEETGATE_SSH_KEY", &key)])
    }
}

#[test]
fn status_shows_live_revs_and_drift() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let rev = d.fleet.git(&["rev-parse", "HEAD"]);
    d.deploy("canary").code(0);
    let run = d.fleetgate(&["status", "--drift", "--format", "json"]);
    run.code(0);
    let row = &run.json()["apps"][0];
    assert_eq!(
        (
            row["client"].as_str(),
            row["app"].as_str(),
            row["host"].as_str()
        ),
        (Some("alpha"), Some("web"), Some("alpha-1"))
    );
    assert_eq!(row["rev"], rev.as_str());
    assert_eq!(row["drift"], serde_json::json!([]));

    // Someone edits a file on the server by hand.
    let live = d
        .hosts
        .host("alpha-1")
        .deploy_root
        .join("alpha/web/current/health");
    std::fs::write(&live, "ok\nhand-edited\n").unwrap();
    let run = d.fleetgate(&["status", "--drift"]);
    run.code(1);
    assert!(run.stdout.contains("modified health"), "{}", run.stdout);
}

#[test]
fn manual_rollback_goes_back_to_the_previous_release() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let rev1 = d.fleet.git(&["rev-parse", "HEAD"]);
    d.deploy("canary").code(0);
    d.set("alpha", "version", "\"2\"");
    d.fleet.commit("web 2");
    d.deploy("canary").code(0);
    assert!(d.serving("alpha-1").unwrap().contains("version=2"));
    let run = d.fleetgate(&["rollback", "--client", "alpha"]);
    run.code(0);
    assert!(
        d.serving("alpha-1").unwrap().contains("version=1"),
        "{}",
        run.stderr
    );
    assert_eq!(d.state("alpha-1", "alpha")["rev"], rev1.as_str());
}

#[test]
fn compose_app_on_a_real_runtime_pulls_by_digest_and_rolls_back() {
    let docker = crate::docker::Docker::start();
    let v1 = docker.build_and_push("web", "1.0", "image 1\n");
    let v2 = docker.build_and_push("web", "2.0", "image 2\n");
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.fleet.write(
        "pipelines/apps/web/app.yaml",
        &format!(
            r#"runtime: compose
images:
  web: {v1}
files:
  docker-compose.yml: compose.yml.j2
  health: health.j2
health:
  - http: "http://127.0.0.1:{{{{ host.port + 1000 }}}}/health"
    expect_body: "ok"
    interval: 200ms
    successes: 2
    failures: 3
    deadline: 20s
"#
        ),
    );
    d.fleet.write(
        "pipelines/apps/web/compose.yml.j2",
        r#"services:
  web:
    image: {{ app.images.web }}
    network_mode: host
    stop_signal: SIGKILL
    command: ["/bin/busybox", "httpd", "-f", "-p", "127.0.0.1:{{ host.port + 1000 }}", "-h", "/www"]
    volumes: ["./health:/www/health:ro"]
"#,
    );
    d.fleet.remove("pipelines/apps/web/start.sh.j2");
    d.fleet.edit(
        "pipelines/pipeline.yaml",
        "on_failure:",
        &format!(
            "runtimes:\n  compose: \"{}\"\non_failure:",
            docker.compose_command()
        ),
    );
    d.fleet.commit("web as a compose app");
    let port = d.hosts.host("alpha-1").port + 1000;
    let image = || http_get(port, "/image");

    let run = d.deploy("canary");
    run.code(0);
    assert_eq!(image().as_deref(), Some("image 1\n"));

    // A new image whose release is unhealthy: rolled back to the old container.
    d.fleet.edit("pipelines/apps/web/app.yaml", &v1, &v2);
    d.set("alpha", "health", "sick");
    d.fleet.commit("web 2.0, unhealthy");
    let run = d.deploy("canary");
    run.code(1);
    assert_eq!(statuses(&run), [s("alpha-1", "rolled_back")]);
    assert_eq!(image().as_deref(), Some("image 1\n"));

    d.set("alpha", "health", "ok");
    d.fleet.commit("web 2.0, healthy");
    d.deploy("canary").code(0);
    assert_eq!(image().as_deref(), Some("image 2\n"));
    let ps = docker.docker(&["ps", "--format", "{{.Names}} {{.Image}}"]);
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.contains("alpha-web_web_1"), "{ps}");
}

impl DeployFleet {
    /// Gives `web` a secret `api_token` = `token` for `clients` (written to
    /// app.env); its start prints the file to stdout and stderr, and exits 7
    /// when the client's `health` var is `fail-start`.
    pub fn with_secret(&self, clients: &[&str], token: &str) {
        self.fleet.write(
            "secrets/.sops.yaml",
            &std::fs::read_to_string(crate::common::source_root().join("secrets/.sops.yaml"))
                .unwrap(),
        );
        for client in clients {
            self.fleet.sops_encrypt(
                &format!("secrets/clients/{client}.sops.yaml"),
                &format!("api_token: {token}\n"),
            );
        }
        self.fleet.edit(
            "pipelines/apps/web/app.yaml",
            "files:\n",
            "secrets: [api_token]\nfiles:\n  app.env: app.env.j2\n",
        );
        self.fleet.write(
            "pipelines/apps/web/app.env.j2",
            "API_TOKEN={{ secrets.api_token }}\n",
        );
        // The start command prints the token, then fails: its output reaches the log.
        self.fleet.edit("pipelines/apps/web/start.sh.j2", "pid=../../web.pid", "cat app.env; cat app.env >&2\n{% if client.vars.health == \"fail-start\" %}exit 7\n{% endif %}pid=../../web.pid");
    }
}

#[test]
fn secrets_reach_the_host_file_only() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let token = "Tok-3f9a71c2-never-print-me";
    d.with_secret(&["alpha"], token);
    d.fleet.commit("web gets a token");
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    let run = d.fleet.run_env(
        &["deploy", "--stage", "canary", "--rev", "HEAD", "-vv"],
        &[("FLEETGATE_SSH_KEY", &key)],
    );
    run.code(0);
    assert!(
        !run.all().contains(token),
        "deploy printed the secret:\n{}",
        run.all()
    );
    assert!(
        run.stderr.contains("API_TOKEN=••••"),
        "remote output is logged, masked:\n{}",
        run.stderr
    );
    let env = d
        .hosts
        .host("alpha-1")
        .deploy_root
        .join("alpha/web/current/app.env");
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        format!("API_TOKEN={token}\n")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&env).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let health = env.with_file_name("health");
    assert_eq!(
        std::fs::metadata(&health).unwrap().permissions().mode() & 0o777,
        0o644
    );

    // A failing start: the error names host, step and the masked stderr tail.
    d.set("alpha", "health", "fail-start");
    d.fleet.commit("start fails");
    let run = d.fleet.run_env(
        &[
            "deploy", "--stage", "canary", "--rev", "HEAD", "--format", "json",
        ],
        &[("FLEETGATE_SSH_KEY", &key)],
    );
    run.code(1);
    let failure = &run.json()["hosts"][0]["failure"];
    assert_eq!(failure["step"], "start");
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .starts_with("exit 7: API_TOKEN=••••"),
        "{failure:#}"
    );
    assert!(!run.all().contains(token));
}

#[test]
fn a_terminal_gets_a_progress_bar() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let bin = crate::common::BIN;
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    // `script` gives fleetgate a pseudo-terminal, as a person at a shell has.
    let run = d.fleet.run_env_program(
        "script",
        &[
            "-qec",
            &format!("{bin} deploy --stage canary --rev HEAD"),
            "/dev/null",
        ],
        &[("FLEETGATE_SSH_KEY", &key), ("TERM", "xterm")],
    );
    run.code(0);
    assert!(
        run.stdout.contains("deploy canary ["),
        "no bar drawn:\n{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("/1 hosts"),
        "no bar drawn:\n{}",
        run.stdout
    );
    // The log lines still come through, whole.
    assert!(
        run.stdout.contains("alpha-1 web upload ✓"),
        "{}",
        run.stdout
    );
    // Off a terminal (CI logs), no bar: just the lines.
    d.set("alpha", "version", "\"2\"");
    d.fleet.commit("web 2");
    let run = d.deploy("canary");
    run.code(0);
    assert!(!run.stderr.contains("hosts ["), "{}", run.stderr);
    assert!(
        !run.stderr.contains('\u{1b}'),
        "no escape codes in CI logs:\n{}",
        run.stderr
    );
}

#[test]
fn a_refused_deploy_key_is_exit_3_with_a_hint() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let other = d.hosts.dir.join("not-authorized");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success());
    let run = d.fleet.run_env(
        &[
            "deploy", "--stage", "canary", "--rev", "HEAD", "--format", "json",
        ],
        &[("FLEETGATE_SSH_KEY", other.to_str().unwrap())],
    );
    run.code(3);
    let message = run.json()["hosts"][0]["failure"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("Permission denied"), "{message}");
    assert!(
        message.contains("hint: the deploy key was refused"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_dir(&d.hosts.host("alpha-1").deploy_root)
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn once_the_stage_failed_other_hosts_stop_waiting_out_their_soak() {
    let d = DeployFleet::new(
        &[
            ("alpha", "canary", &["alpha-1"]),
            ("gamma", "canary", &["gamma-1"]),
        ],
        "",
    );
    d.deploy("canary").code(0);
    d.fleet.edit(
        "pipelines/pipeline.yaml",
        "    group: canary\n",
        "    group: canary\n    soak: 10m\n    parallelism: 2\n",
    );
    d.fleet.commit("a long soak");
    d.set("alpha", "health", "bad");
    d.set("alpha", "version", "\"2\"")
        .set("gamma", "version", "\"2\"");
    d.fleet.commit("alpha breaks");
    let run = d.deploy("canary");
    run.code(1);
    let hosts = run.json()["hosts"].as_array().unwrap().clone();
    let gamma = hosts.iter().find(|h| h["host"] == "gamma-1").unwrap();
    // gamma-1 was healthy and soaking: its gate is cut short, it is rolled
    // back with the stage, and it is not counted as a failure of its own.
    assert_eq!(gamma["status"], "rolled_back");
    assert!(gamma.get("failure").is_none(), "{gamma}");
    assert!(
        gamma["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["cancelled"] == true),
        "{gamma}"
    );
    assert_eq!(run.json()["failed_hosts"], 1);
    assert!(d.serving("gamma-1").unwrap().contains("version=1"));
}

/// `ssh.options` are checked before anything connects: a command in a
/// refused option never runs on the runner, and no host is touched.
#[test]
fn a_refused_ssh_option_never_runs() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let marker = d.hosts.dir.join("known-hosts-command-ran");
    let pipeline = d.fleet.read("pipelines/pipeline.yaml");
    d.fleet.write(
        "pipelines/pipeline.yaml",
        &format!(
            "{pipeline}    KnownHostsCommand: /usr/bin/touch {}\n",
            marker.display()
        ),
    );
    d.fleet.commit("an ssh option that runs a command");
    let run = d.deploy("canary");
    run.code(2);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("pipelines/pipeline.yaml:")
                && l.contains(": ssh.options.KnownHostsCommand: ")),
        "{}",
        run.stderr
    );
    assert!(!marker.exists(), "the option's command ran");
    assert!(!run.stderr.contains("connect"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_dir(&d.hosts.host("alpha-1").deploy_root)
            .unwrap()
            .count(),
        0
    );
}

/// A template that is a symlink is refused before anything connects (it
/// would otherwise ship the link's target path as the file).
#[test]
fn a_symlinked_template_is_refused_and_nothing_deployed() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let start = d.fleet.read("pipelines/apps/web/start.sh.j2");
    d.fleet.write("pipelines/apps/web/start.real.j2", &start);
    d.fleet.remove("pipelines/apps/web/start.sh.j2");
    crate::check::symlink(&d.fleet, "start.real.j2", "pipelines/apps/web/start.sh.j2");
    d.fleet.commit("start.sh.j2 is a link");
    let run = d.deploy("canary");
    run.code(2);
    assert!(
        run.stderr.contains(
            "pipelines/apps/web/start.sh.j2: is a symlink; fleet files must be regular files"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_dir(&d.hosts.host("alpha-1").deploy_root)
            .unwrap()
            .count(),
        0
    );
}

/// The ssh master connected to `port`: its pid and fleetgate's control
/// directory it lives in (`/tmp/fgXXXXXX`), from its command line
/// (`ssh … -S <dir>/.ssh-connectionXXXX/master -M … -p <port> …`).
fn ssh_master(port: u16) -> Option<(u32, std::path::PathBuf)> {
    let port = port.to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ssh = args
            .first()
            .is_some_and(|a| a == "ssh" || a.ends_with("/ssh"));
        let master = args.iter().any(|a| a == "-M");
        let ours = args.windows(2).any(|w| w[0] == "-p" && w[1] == port);
        if ssh && master && ours && alive(pid) {
            let socket = args.windows(2).find(|w| w[0] == "-S")?[1].clone();
            let dir = Path::new(&socket).parent()?.parent()?.to_path_buf();
            return Some((pid, dir));
        }
    }
    None
}

/// Running, and not a zombie waiting for a parent that may never reap it.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| !s[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Polls `done` every 50 ms for up to `limit`; false if it never held.
fn eventually(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    done()
}

impl DeployFleet {
    /// Starts `deploy --stage canary`, SIGKILLs it once `host` switched (its
    /// start step then sleeps `start_delay` on the host, over the master), and
    /// returns that master's pid and control directory.
    fn kill_while_connected(&self, host: &str) -> (u32, std::path::PathBuf) {
        use std::io::BufRead;
        let key = self.hosts.client_key.to_str().unwrap().to_string();
        let mut child = self
            .fleet
            .command(crate::common::BIN)
            .env("SOPS_AGE_KEY_FILE", crate::common::test_key())
            .env("FLEETGATE_SSH_KEY", &key)
            .args(["deploy", "--stage", "canary", "--rev", "HEAD"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn fleetgate deploy");
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let want = format!("{host} web switch");
        let mut seen = String::new();
        let mut line = String::new();
        while !seen.contains(&want) {
            line.clear();
            let n = stderr.read_line(&mut line).unwrap();
            assert!(n > 0, "deploy ended before {want:?}:\n{seen}");
            seen.push_str(&line);
        }
        let port = self.hosts.host(host).port;
        let mut master = None;
        assert!(
            eventually(std::time::Duration::from_secs(10), || {
                master = ssh_master(port);
                master.is_some()
            }) || master.is_some(),
            "no ssh master for {host}:\n{seen}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let master = master.or_else(|| ssh_master(port)).unwrap();
        assert!(alive(master.0), "killing fleetgate took its master along");
        master
    }
}

/// A fleetgate killed with SIGKILL cannot close its ssh masters: they exit
/// by themselves shortly after their last remote command, and the next
/// fleetgate stops any still running and removes their directories.
#[test]
fn ssh_masters_of_a_killed_deploy_do_not_outlive_it() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.set("alpha", "start_delay", "3");
    d.fleet.commit("a slow start");

    // The next run, at once: it stops the orphan and removes its directory.
    let (master, dir) = d.kill_while_connected("alpha-1");
    assert!(dir.exists(), "{}", dir.display());
    d.deploy("canary").code(0);
    assert!(
        eventually(std::time::Duration::from_secs(10), || !alive(master)),
        "the killed run's ssh master {master} is still running"
    );
    assert!(!dir.exists(), "{} is still there", dir.display());

    // No next run: the orphan exits by itself, soon after its last command.
    d.set("alpha", "version", "\"2\"");
    d.fleet.commit("web 2");
    let (master, dir) = d.kill_while_connected("alpha-1");
    assert!(
        eventually(std::time::Duration::from_secs(60), || !alive(master)),
        "the killed run's ssh master {master} is still running a minute later"
    );
    d.fleetgate(&["status"]);
    assert!(!dir.exists(), "{} is still there", dir.display());
}
