//! `runtime: quadlet` on a real systemd host: a Debian 13 guest (systemd
//! 257, podman 5.4 with Quadlet, OpenSSH) booted with systemd-nspawn by
//! `tests/quadlet/` (its root filesystem built once and cached, see
//! `rootfs.sh`), reached over real SSH. Each test boots its own guest (own
//! machine name, port and cgroup), so they run side by side. A guest that
//! cannot boot fails the test: nothing here is skipped.
//!
//! The app is an identity provider's shape: a pod of a server (busybox
//! httpd serving its version) and a worker, an env file holding a secret.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::common::{Fleet, Run, free_port, source_root};

fn harness(script: &str) -> PathBuf {
    source_root().join("tests/quadlet").join(script)
}

/// The cached root filesystem and the guests' login key (built on first use).
fn rootfs() -> (PathBuf, PathBuf) {
    static ONCE: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(harness("rootfs.sh"))
            .output()
            .expect("run tests/quadlet/rootfs.sh");
        assert!(
            out.status.success(),
            "tests/quadlet/rootfs.sh failed (the quadlet tests need root, debootstrap, systemd-nspawn and socat; it installs them from Debian's packages):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let root = PathBuf::from(lines.next().expect("rootfs path"));
        let key = PathBuf::from(lines.next().expect("key path"));
        eprintln!(
            "quadlet: root filesystem {} ready in {:.1}s",
            root.display(),
            started.elapsed().as_secs_f64()
        );
        (root, key)
    })
    .clone()
}

/// One booted guest; powered off when dropped.
pub struct Guest {
    pub name: String,
    pub port: u16,
    pub key: PathBuf,
    pub host_key_pub: String,
    state: tempfile::TempDir,
}

impl Guest {
    pub fn boot(name: &str) -> Guest {
        let (root, key) = rootfs();
        let state = tempfile::Builder::new().prefix("fgq-").tempdir().unwrap();
        let port = free_port();
        // Unique across test processes: machine and cgroup names derive from it.
        let name = format!("{name}-{}", std::process::id());
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(harness("up.sh"))
            .args([&name, &port.to_string()])
            .arg(state.path())
            .output()
            .expect("run tests/quadlet/up.sh");
        let guest = Guest {
            name,
            port,
            key,
            host_key_pub: std::fs::read_to_string(root.join("etc/ssh/ssh_host_ed25519_key.pub"))
                .unwrap()
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
            state,
        };
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ready"),
            "the quadlet guest did not boot:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "quadlet: guest {} up in {:.1}s",
            guest.name,
            started.elapsed().as_secs_f64()
        );
        guest
    }

    /// Runs `script` as `user` on the guest: (success, stdout + stderr).
    pub fn ssh(&self, user: &str, script: &str) -> (bool, String) {
        let out = Command::new("ssh")
            .args(["-p", &self.port.to_string(), "-i"])
            .arg(&self.key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
                &format!("{user}@127.0.0.1"),
                script,
            ])
            .output()
            .expect("ssh");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    #[track_caller]
    pub fn ok(&self, user: &str, script: &str) -> String {
        let (ok, out) = self.ssh(user, script);
        assert!(ok, "{user}@guest: {script}: {out}");
        out
    }

    /// What the app serves on the guest's port 8080 (`None`: nothing).
    pub fn serving(&self, user: &str) -> Option<String> {
        let (ok, out) = self.ssh(user, "curl -fsS -m 3 http://127.0.0.1:8080/");
        ok.then(|| out.trim().to_string())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(harness("down.sh"))
            .arg(self.state.path())
            .status();
    }
}

const APP: &str = r#"runtime: quadlet
files:
  idp.pod: idp.pod.j2
  idp-server.container: idp-server.container.j2
  idp-worker.container: idp-worker.container.j2
  idp.env: idp.env.j2
secrets: [idp_secret_key]
health:
  - command: "curl -fsS -m 2 http://127.0.0.1:8080/health"
"#;

const POD: &str = "[Pod]\nPublishPort=127.0.0.1:8080:8080\n";

/// Serves `version=N` on /, and /health when the client's `healthy` is yes.
const SERVER: &str = r#"[Unit]
Description=idp server {{ client.vars.version }}
[Container]
Image=localhost/tiny:v1
Pod=idp.pod
EnvironmentFile=idp.env
Exec=/bin/sh -c "mkdir -p /tmp/w && echo version={{ client.vars.version }} > /tmp/w/index.html{% if client.vars.healthy == 'yes' %} && echo ok > /tmp/w/health{% endif %} && exec /bin/busybox httpd -f -p 8080 -h /tmp/w"
RunInit=true
[Service]
TimeoutStopSec=5
"#;

const WORKER: &str = r#"[Container]
Image=localhost/tiny:v1
Pod=idp.pod
EnvironmentFile=idp.env
Exec=/bin/sh -c "while :; do sleep 1; done"
RunInit=true
[Service]
TimeoutStopSec=5
"#;

const SECRET: &str = "idp-Sk-7d41c09e-never-print-me";

/// A fleet with client alpha running `idp` on `guest` as `user`.
pub struct QuadletFleet {
    pub fleet: Fleet,
    pub guest: Guest,
    pub user: String,
    _remote: tempfile::TempDir,
}

impl QuadletFleet {
    pub fn new(name: &str, user: &str) -> QuadletFleet {
        let guest = Guest::boot(name);
        let home = if user == "root" {
            "/root".to_string()
        } else {
            format!("/home/{user}")
        };
        // The image the units run, loaded into the user's podman (no registry).
        guest.ok(
            user,
            "podman import -q ~/tiny.tar localhost/tiny:v1 >/dev/null",
        );
        let fleet = Fleet::empty();
        fleet.write(
            "pipelines/pipeline.yaml",
            "stages:\n  - name: canary\n    group: canary\non_failure:\n  rollback: true\n  revert: false\n",
        );
        fleet.write("pipelines/apps/idp/app.yaml", APP);
        fleet.write("pipelines/apps/idp/idp.pod.j2", POD);
        fleet.write("pipelines/apps/idp/idp-server.container.j2", SERVER);
        fleet.write("pipelines/apps/idp/idp-worker.container.j2", WORKER);
        fleet.write(
            "pipelines/apps/idp/idp.env.j2",
            "IDP_SECRET_KEY={{ secrets.idp_secret_key }}\n",
        );
        fleet.write(
            "pipelines/known_hosts",
            &format!("alpha-1 {}\n", guest.host_key_pub),
        );
        fleet.write(
            "secrets/.sops.yaml",
            &std::fs::read_to_string(source_root().join("secrets/.sops.yaml")).unwrap(),
        );
        fleet.sops_encrypt(
            "secrets/clients/alpha.sops.yaml",
            &format!("idp_secret_key: {SECRET}\n"),
        );
        let q = QuadletFleet {
            fleet,
            user: user.to_string(),
            _remote: tempfile::tempdir().unwrap(),
            guest,
        };
        q.client(&["idp"], "1", "yes", &format!("{home}/fleetgate"));
        let remote = q._remote.path().join("remote.git");
        q.fleet.add_bare_origin(&remote);
        q
    }

    pub fn client(&self, apps: &[&str], version: &str, healthy: &str, deploy_root: &str) {
        self.fleet.write(
            "clients/alpha.yaml",
            &format!(
                "domain: alpha.example.org\ngroup: canary\napps: [{}]\nhosts:\n  - name: alpha-1\n    address: 127.0.0.1\n    port: {}\n    user: {}\n    deploy_root: {deploy_root}\nvars:\n  version: \"{version}\"\n  healthy: \"{healthy}\"\n",
                apps.join(", "),
                self.guest.port,
                self.user
            ),
        );
    }

    pub fn set(&self, key: &str, value: &str) {
        let text = self.fleet.read("clients/alpha.yaml");
        let out: String = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with(&format!("{key}:")) {
                    format!("  {key}: {value}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        self.fleet.write("clients/alpha.yaml", &out);
    }

    pub fn push(&self, message: &str) -> String {
        let sha = self.fleet.commit(message);
        self.fleet.git(&["push", "-q", "origin", "main"]);
        sha
    }

    /// `fleetgate run` from `base` to `head` (JSON report on stdout).
    pub fn run(&self, base: &str, head: &str) -> Run {
        let started = Instant::now();
        let run = self.fleetgate(&["run", "--base", base, "--head", head, "--format", "json"]);
        // Each step and its time, for the suite's log.
        for line in run
            .stderr
            .lines()
            .filter(|l| l.contains('✓') || l.contains('✗'))
        {
            eprintln!("quadlet: {line}");
        }
        eprintln!(
            "quadlet: run {}..{} in {:.1}s",
            &base[..7],
            &head[..7],
            started.elapsed().as_secs_f64()
        );
        run
    }

    pub fn fleetgate(&self, args: &[&str]) -> Run {
        let key = self.guest.key.to_str().unwrap().to_string();
        self.fleet.run_env(args, &[("FLEETGATE_SSH_KEY", &key)])
    }

    /// When the server container last started (podman's StartedAt).
    pub fn server_started(&self) -> String {
        self.guest.ok(
            &self.user,
            "podman inspect -f '{{.State.StartedAt}}' systemd-idp-server",
        )
    }
}

/// The `drift` of app idp in `status --drift --format json`.
fn drift_of(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) if m.get("app") == Some(&serde_json::json!("idp")) => {
            m.get("drift").cloned().unwrap_or_default()
        }
        serde_json::Value::Object(m) => m
            .values()
            .map(drift_of)
            .find(|d| !d.is_null())
            .unwrap_or_default(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(drift_of)
            .find(|d| !d.is_null())
            .unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

const NULL: &str = "0000000000000000000000000000000000000000";

#[test]
fn a_pod_is_deployed_upgraded_rolled_back_refused_drifted_and_removed() {
    let started = Instant::now();
    let q = QuadletFleet::new("root", "root");
    let g = &q.guest;
    let c1 = q.push("alpha: idp v1");
    let run = q.run(NULL, &c1);
    run.code(0);
    assert_eq!(g.serving("root").as_deref(), Some("version=1"));
    let dir = "/etc/containers/systemd/alpha-idp";
    // Installed as a copy of the release; the env file with its secret 0600.
    assert_eq!(
        g.ok("root", &format!("stat -c %a {dir}/idp.env")).trim(),
        "600"
    );
    let ps = g.ok("root", "podman ps --format '{{.Names}}' | sort");
    assert!(
        ps.contains("systemd-idp-server") && ps.contains("systemd-idp-worker"),
        "{ps}"
    );
    g.ok(
        "root",
        &format!("podman exec systemd-idp-worker sh -c 'test \"$IDP_SECRET_KEY\" = {SECRET}'"),
    );
    g.ok(
        "root",
        "systemctl is-active idp-pod.service idp-server.service idp-worker.service",
    );
    assert!(!run.all().contains(SECRET));

    // An upgrade: the new units installed, restarted, gated.
    q.set("version", "\"2\"");
    let c2 = q.push("alpha: idp v2");
    q.run(&c1, &c2).code(0);
    assert_eq!(g.serving("root").as_deref(), Some("version=2"));

    // A release whose gate fails: its units are rolled back, v2 serves again.
    q.set("version", "\"3\"");
    q.set("healthy", "\"no\"");
    let c3 = q.push("alpha: idp v3, unhealthy");
    let run = q.run(&c2, &c3);
    run.code(1);
    assert_eq!(g.serving("root").as_deref(), Some("version=2"));
    assert!(
        g.ok("root", &format!("cat {dir}/idp-server.container"))
            .contains("idp server 2")
    );
    let report = run.json();
    let host = &report["stages"]["canary"]["hosts"][0];
    assert_eq!(host["status"], "rolled_back", "{report:#}");
    // The failed app's units: `systemctl status` and their journal.
    let logs = host["logs"]["idp"].as_str().unwrap_or_default();
    assert!(
        logs.contains("idp-server.service - idp server 3") && logs.contains("Active: active"),
        "{logs}"
    );
    let all = run.all();
    assert!(
        all.contains("systemctl is-active"),
        "the built-in gate: {all}"
    );
    assert!(!all.contains(SECRET));

    // A unit file Quadlet rejects: the host fails before anything restarts.
    let before = q.server_started();
    q.set("healthy", "\"yes\"");
    q.fleet.edit(
        "pipelines/apps/idp/idp-server.container.j2",
        "RunInit=true\n",
        "RunInit=true\nBogusKey=1\n",
    );
    let c4 = q.push("alpha: idp with a unit Quadlet rejects");
    let run = q.run(&c3, &c4);
    run.code(1);
    let all = run.all();
    assert!(all.contains("quadlet check"), "{all}");
    assert!(
        all.contains("Quadlet rejects the unit files of idp"),
        "{all}"
    );
    assert!(all.contains("unsupported key 'BogusKey'"), "{all}");
    assert_eq!(q.server_started(), before, "nothing restarted");
    assert_eq!(g.serving("root").as_deref(), Some("version=2"));

    // A hand edit of an installed unit file is drift.
    q.fleet.edit(
        "pipelines/apps/idp/idp-server.container.j2",
        "RunInit=true\nBogusKey=1\n",
        "RunInit=true\n",
    );
    let c5 = q.push("alpha: idp fixed");
    q.run(&c4, &c5).code(0);
    assert_eq!(g.serving("root").as_deref(), Some("version=3"));
    let status = q.fleetgate(&["status", "--drift", "--format", "json"]);
    status.code(0);
    assert_eq!(drift_of(&status.json()), serde_json::json!([]));
    g.ok(
        "root",
        &format!("echo '# edited by hand' >> {dir}/idp-server.container"),
    );
    let status = q.fleetgate(&["status", "--drift", "--format", "json"]);
    assert_eq!(
        drift_of(&status.json()),
        serde_json::json!([{"path": "idp-server.container", "change": "modified"}]),
        "{}",
        status.all()
    );

    // By hand, back to the release before: its units, reinstalled (the
    // hand edit goes with them).
    q.fleetgate(&["rollback", "--client", "alpha"]).code(0);
    assert_eq!(g.serving("root").as_deref(), Some("version=2"));
    assert!(
        !g.ok("root", &format!("cat {dir}/idp-server.container"))
            .contains("edited by hand")
    );

    // Removal: units stopped, unit files gone, systemd reloaded; data kept.
    g.ok("root", "podman volume create idp-data >/dev/null");
    q.client(&[], "3", "yes", "/root/fleetgate");
    let c6 = q.push("alpha: idp goes");
    let run = q.run(&c5, &c6);
    run.code(0);
    assert!(run.all().contains("remove"), "{}", run.all());
    assert_eq!(g.serving("root"), None);
    g.ok("root", &format!("test ! -e {dir}"));
    let (active, _) = g.ssh("root", "systemctl is-active --quiet idp-pod.service");
    assert!(!active);
    let (known, out) = g.ssh("root", "systemctl cat idp-server.service");
    assert!(!known, "reloaded: the generated unit is gone: {out}");
    g.ok("root", "podman volume exists idp-data");
    eprintln!(
        "quadlet: rootful scenario in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn rootless_units_run_under_the_login_users_systemd() {
    let started = Instant::now();
    let q = QuadletFleet::new("fg", "fg");
    let g = &q.guest;
    let c1 = q.push("alpha: idp v1, rootless");
    q.run(NULL, &c1).code(0);
    assert_eq!(g.serving("fg").as_deref(), Some("version=1"));
    // The user's own Quadlet directory and manager; nothing of root's.
    let dir = "/home/fg/.config/containers/systemd/alpha-idp";
    assert_eq!(
        g.ok("root", &format!("stat -c '%U %a' {dir}/idp.env"))
            .trim(),
        "fg 600"
    );
    g.ok(
        "fg",
        "XDG_RUNTIME_DIR=/run/user/$(id -u) systemctl --user is-active idp-pod.service idp-server.service idp-worker.service",
    );
    g.ok("root", "test ! -e /etc/containers/systemd/alpha-idp");
    let ps = g.ok("fg", "podman ps --format '{{.Names}}'");
    assert!(ps.contains("systemd-idp-server"), "{ps}");

    // A failed gate rolls the user's units back too.
    q.set("version", "\"2\"");
    q.set("healthy", "\"no\"");
    let c2 = q.push("alpha: idp v2, unhealthy");
    q.run(&c1, &c2).code(1);
    assert_eq!(g.serving("fg").as_deref(), Some("version=1"));
    eprintln!(
        "quadlet: rootless scenario in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// `runtime: podman` is `podman compose` (with podman-compose, Debian's
/// provider) in the release directory, like `compose`.
#[test]
fn the_podman_runtime_runs_podman_compose() {
    let started = Instant::now();
    let q = QuadletFleet::new("compose", "root");
    let g = &q.guest;
    q.fleet.write(
        "pipelines/apps/web/app.yaml",
        "runtime: podman\nfiles:\n  compose.yaml: compose.yaml.j2\nhealth:\n  - command: \"curl -fsS -m 2 http://127.0.0.1:8080/health\"\n",
    );
    q.fleet.write(
        "pipelines/apps/web/compose.yaml.j2",
        r#"services:
  web:
    image: localhost/tiny:v1
    init: true
    ports: ["127.0.0.1:8080:8080"]
    command: ["/bin/sh", "-c", "mkdir -p /tmp/w && echo version={{ client.vars.version }} > /tmp/w/index.html{% if client.vars.healthy == 'yes' %} && echo ok > /tmp/w/health{% endif %} && exec /bin/busybox httpd -f -p 8080 -h /tmp/w"]
"#,
    );
    q.client(&["web"], "1", "yes", "/root/fleetgate");
    let c1 = q.push("alpha: web on podman compose");
    q.run(NULL, &c1).code(0);
    assert_eq!(g.serving("root").as_deref(), Some("version=1"));
    q.set("version", "\"2\"");
    let c2 = q.push("alpha: web v2");
    q.run(&c1, &c2).code(0);
    assert_eq!(g.serving("root").as_deref(), Some("version=2"));
    q.set("version", "\"3\"");
    q.set("healthy", "\"no\"");
    let c3 = q.push("alpha: web v3, unhealthy");
    let run = q.run(&c2, &c3);
    run.code(1);
    assert_eq!(g.serving("root").as_deref(), Some("version=2"));
    // The failed release's logs: `podman compose logs` of its project.
    let logs = run.json()["stages"]["canary"]["hosts"][0]["logs"]["web"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!logs.is_empty(), "{}", run.all());
    eprintln!(
        "quadlet: podman compose scenario in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
