//! Routes through a real reverse proxy (Caddy and nginx from Debian) on a
//! real sshd host, with the load generator (`load.rs`) sending requests
//! through it during deploys: blue/green switches, a failed blue/green
//! deploy and a rollback lose no request; `recreate` does, and the same
//! harness sees it.

use std::time::Duration;

use crate::common::{Fleet, Run, free_port};
use crate::hosts::{TestHosts, USER};
use crate::load::{Load, Report};

pub const HOST: &str = "web.alpha.example.org";

/// Serves its release directory (python3's http.server) on the slot's port
/// (`$FLEETGATE_PORT`), or on the app's one port without slots.
const START: &str = r#"port=${FLEETGATE_PORT:-{{ client.vars.blue }}}
pid=../../web-${FLEETGATE_SLOT:-plain}.pid
if [ -f "$pid" ]; then kill "$(cat "$pid")" 2>/dev/null || true; sleep 0.3; fi
setsid nohup python3 serve.py "$port" >../../web-${FLEETGATE_SLOT:-plain}.log 2>&1 </dev/null &
echo $! > "$pid"
"#;

/// The app: files of its release over HTTP/1.1 keep-alive, threaded, with a
/// listen queue that does not overflow under the tests' load (python's
/// `-m http.server` keeps 5, and a dropped SYN waits a second).
const SERVE: &str = r#"import http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True
Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

const STOP: &str = r#"pid=../../web-${FLEETGATE_SLOT:-plain}.pid
if [ -f "$pid" ]; then kill "$(cat "$pid")" 2>/dev/null || true; rm -f "$pid"; fi
"#;

fn app(strategy: &str) -> String {
    let (strategy, port) = match strategy {
        "blue_green" => (
            "strategy: blue_green\ndrain: 2s\nslot_ports: [\"{{ client.vars.blue }}\", \"{{ client.vars.green }}\"]\n",
            "",
        ),
        _ => ("", "    port: \"{{ client.vars.blue }}\"\n"),
    };
    format!(
        r#"runtime: command
{strategy}files:
  start.sh: start.sh.j2
  stop.sh: stop.sh.j2
  serve.py: serve.py.j2
  version: version.j2
  health: health.j2
commands:
  start: "sh start.sh"
  stop: "sh stop.sh"
routes:
  - hosts: ["web.{{{{ client.domain }}}}"]
{port}    health: /health
    service: web
health:
  - http: "http://web.{{{{ client.domain }}}}/{{{{ client.vars.probe }}}}"
    route: true
    expect_body: "v"
    interval: 200ms
    successes: 2
    failures: 25
    deadline: 20s
  - command: "grep -q ok health"
rollback: safe
"#
    )
}

pub struct ProxyFleet {
    pub fleet: Fleet,
    pub hosts: TestHosts,
    pub http_port: u16,
    pub ports: [u16; 2],
}

impl ProxyFleet {
    pub fn new(kind: &str, strategy: &str) -> ProxyFleet {
        let hosts = TestHosts::start(&["a1"]);
        let fleet = Fleet::empty();
        let http_port = free_port();
        let ports = [free_port(), free_port()];
        fleet.write(
            "pipelines/pipeline.yaml",
            &format!(
                "stages:\n  - name: canary\n    group: canary\non_failure:\n  rollback: true\n  revert: false\nssh:\n  options:\n    KexAlgorithms: curve25519-sha256\nproxy:\n  kind: {kind}\n  http_port: {http_port}\n  tls: off\n"
            ),
        );
        fleet.write("pipelines/apps/web/app.yaml", &app(strategy));
        fleet.write("pipelines/apps/web/start.sh.j2", START);
        fleet.write("pipelines/apps/web/stop.sh.j2", STOP);
        fleet.write("pipelines/apps/web/serve.py.j2", SERVE);
        fleet.write(
            "pipelines/apps/web/version.j2",
            "{{ client.vars.version }}\n",
        );
        fleet.write("pipelines/apps/web/health.j2", "{{ client.vars.health }}\n");
        fleet.write("pipelines/known_hosts", &hosts.known_hosts());
        let p = ProxyFleet {
            fleet,
            hosts,
            http_port,
            ports,
        };
        p.client("v1", "ok");
        p.fleet.commit("web v1 behind the proxy");
        p
    }

    pub fn client(&self, version: &str, health: &str) {
        self.client_expecting(version, health, "version");
    }

    /// `probe`: the file the check through the proxy GETs.
    pub fn client_expecting(&self, version: &str, health: &str, probe: &str) {
        let host = self.hosts.host("a1");
        self.fleet.write(
            "clients/alpha.yaml",
            &format!(
                "domain: alpha.example.org\ngroup: canary\napps: [web]\nhosts:\n  - name: a1\n    address: 127.0.0.1\n    port: {}\n    user: {USER}\n    deploy_root: {}\nvars:\n  version: {version}\n  health: {health}\n  probe: {probe}\n  blue: {}\n  green: {}\n",
                host.port,
                host.deploy_root.display(),
                self.ports[0],
                self.ports[1]
            ),
        );
    }

    pub fn fleetgate(&self, args: &[&str]) -> Run {
        let key = self.hosts.client_key.to_str().unwrap().to_string();
        self.fleet.run_env(args, &[("FLEETGATE_SSH_KEY", &key)])
    }

    pub fn deploy(&self) -> Run {
        self.fleetgate(&[
            "deploy", "--stage", "canary", "--rev", "HEAD", "--format", "json",
        ])
    }

    /// GET `path` through the proxy with `Host: host`: (status, body).
    pub fn get(&self, host: &str, path: &str) -> Option<(u16, String)> {
        proxy_get(self.http_port, host, path)
    }

    pub fn state(&self) -> serde_json::Value {
        let p = self
            .hosts
            .host("a1")
            .deploy_root
            .join("alpha/web/state.json");
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    }

    pub fn proxy_dir(&self) -> std::path::PathBuf {
        self.hosts.host("a1").deploy_root.join("alpha/.proxy")
    }

    /// Runs `f` (a deploy) under load through the proxy; the report, and
    /// when `f` returned (since the load started).
    pub fn under_load<T>(&self, f: impl FnOnce() -> T) -> (T, Report, Duration) {
        let load = Load::start(self.http_port, HOST, "/version", 4);
        std::thread::sleep(Duration::from_millis(300));
        let out = f();
        let done = load.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        (out, load.stop(), done)
    }
}

impl Drop for ProxyFleet {
    /// The proxy and the app's servers run as the hosts' user, outside sshd:
    /// stopped here, whatever the test did.
    fn drop(&mut self) {
        let dir = self.proxy_dir();
        if dir.join("nginx.pid").exists() {
            let _ = std::process::Command::new("nginx")
                .arg("-p")
                .arg(format!("{}/", dir.display()))
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .args(["-s", "quit"])
                .output();
        }
        for pidfile in [dir.join("caddy.pid")]
            .into_iter()
            .chain(["blue", "green", "plain"].map(|s| {
                self.hosts
                    .host("a1")
                    .deploy_root
                    .join(format!("alpha/web/web-{s}.pid"))
            }))
        {
            if let Ok(pid) = std::fs::read_to_string(&pidfile) {
                let _ = std::process::Command::new("kill").arg(pid.trim()).output();
            }
        }
    }
}

/// One HTTP/1.0 GET to 127.0.0.1:port with a Host header.
pub fn proxy_get(port: u16, host: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())?;
    Some((status, body))
}

/// No request failed. A request on a kept-alive connection the proxy
/// closed before answering (its graceful reload closes idle connections)
/// is sent again once, as HTTP clients do (RFC 9112 §9.3.1): counted in
/// `retries`, at most once per worker (4) and proxy reload.
fn no_failures(what: &str, report: &Report, reloads: usize) {
    assert!(
        report.failures().is_empty() && report.total() > 50 && report.retries <= 4 * reloads,
        "{what}: {}\nfirst failures: {:?}",
        report.summary(),
        report.failures().iter().take(5).collect::<Vec<_>>()
    );
    eprintln!("{what}: {}", report.summary());
}

fn versions(report: &Report) -> Vec<String> {
    report.versions().into_iter().map(|(v, _, _)| v).collect()
}

/// A blue/green deploy, a failed one and a rollback, each under load:
/// no request fails, and after each switch every answer is the new version.
fn blue_green_loses_no_request(kind: &str) {
    let p = ProxyFleet::new(kind, "blue_green");
    let v1 = p.fleet.git(&["rev-parse", "HEAD"]).trim().to_string();

    // First deploy: nothing listened on the proxy's port, so fleetgate
    // started the proxy with the rendered config.
    let run = p.deploy();
    run.code(0);
    assert!(run.stderr.contains("proxy"), "{}", run.stderr);
    assert_eq!(p.get(HOST, "/version"), Some((200, "v1".into())));
    assert_eq!(
        p.get("other.example.org", "/version").map(|(s, _)| s),
        Some(404)
    );
    assert_eq!(p.state()["slot"]["name"], "blue");

    // v2: starts in green, gated on it, switched; blue stops after its drain.
    p.client("v2", "ok");
    p.fleet.commit("web v2");
    let (run, report, done) = p.under_load(|| p.deploy());
    run.code(0);
    no_failures("blue/green deploy", &report, 1);
    assert_eq!(versions(&report), ["v1", "v2"], "{}", report.summary());
    report.all_after(done, "v2").unwrap();
    assert_eq!(p.state()["slot"]["name"], "green");
    assert!(
        crate::hosts::http_get(p.ports[0], "/version").is_none(),
        "blue stopped after the drain"
    );

    // v3 fails its gate on the new slot: stopped; green never stopped serving.
    p.client("v3", "sick");
    p.fleet.commit("web v3, sick");
    let (run, report, _) = p.under_load(|| p.deploy());
    run.code(1);
    no_failures("failed blue/green deploy", &report, 1);
    assert_eq!(versions(&report), ["v2"], "{}", report.summary());
    let host = &run.json()["hosts"][0];
    assert_eq!(host["status"], "failed", "{host}");
    assert!(
        host["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("grep -q ok health"),
        "{host}"
    );
    assert_eq!(p.state()["slot"]["name"], "green");
    assert!(
        crate::hosts::http_get(p.ports[0], "/version").is_none(),
        "the failed slot was stopped"
    );

    // v4 passes its gate on the slot, but not the check through the proxy
    // after the switch: the stage rolls it back, the same switch in
    // reverse (green had not stopped yet).
    p.client_expecting("v4", "ok", "missing");
    p.fleet.commit("web v4, wrong through the proxy");
    let (run, report, done) = p.under_load(|| p.deploy());
    run.code(1);
    no_failures(
        "switched back after a failed check through the proxy",
        &report,
        2,
    );
    // v4 served between the switch and the switch back, then v2 again.
    assert_eq!(versions(&report), ["v2", "v4"], "{}", report.summary());
    report.all_after(done, "v2").unwrap();
    let host = &run.json()["hosts"][0];
    assert_eq!(host["status"], "rolled_back", "{host}");
    assert_eq!(p.state()["slot"]["name"], "green");
    assert!(
        crate::hosts::http_get(p.ports[0], "/version").is_none(),
        "the failed slot was stopped after the switch back"
    );

    // Rollback to v1: the same switch, to blue.
    let (run, report, done) = p.under_load(|| {
        p.fleetgate(&[
            "rollback", "--client", "alpha", "--to", &v1, "--format", "json",
        ])
    });
    run.code(0);
    no_failures("rollback", &report, 1);
    assert_eq!(versions(&report), ["v2", "v1"], "{}", report.summary());
    report.all_after(done, "v1").unwrap();
    assert_eq!(p.state()["slot"]["name"], "blue");
}

#[test]
fn blue_green_behind_caddy_loses_no_request() {
    blue_green_loses_no_request("caddy");
}

#[test]
fn blue_green_behind_nginx_loses_no_request() {
    blue_green_loses_no_request("nginx");
}

/// The same deploy with `strategy: recreate`: the app is stopped and
/// started in place, and the load sees requests fail — the harness can see
/// what blue/green avoids.
#[test]
fn recreate_loses_requests_and_the_harness_sees_them() {
    let p = ProxyFleet::new("caddy", "recreate");
    p.deploy().code(0);
    assert_eq!(p.get(HOST, "/version"), Some((200, "v1".into())));
    p.client("v2", "ok");
    p.fleet.commit("web v2");
    let (run, report, done) = p.under_load(|| p.deploy());
    run.code(0);
    eprintln!("recreate: {}", report.summary());
    assert!(
        !report.failures().is_empty(),
        "recreate stops the app in place; no failure seen: {}",
        report.summary()
    );
    report.all_after(done, "v2").unwrap();
}

/// nginx: a route change deploys and the proxy answers for the new name;
/// a config nginx refuses is refused on the host before anything changes,
/// and nothing is reloaded.
#[test]
fn nginx_route_changes_and_an_invalid_config_is_refused_on_the_host() {
    let p = ProxyFleet::new("nginx", "recreate");
    p.deploy().code(0);
    assert_eq!(p.get(HOST, "/version"), Some((200, "v1".into())));
    let pid = std::fs::read_to_string(p.proxy_dir().join("nginx.pid")).unwrap();

    p.fleet
        .edit(
            "pipelines/apps/web/app.yaml",
            "hosts: [\"web.",
            "hosts: [\"app.",
        )
        .edit("pipelines/apps/web/app.yaml", "http://web.", "http://app.");
    p.fleet.commit("web is app.alpha.example.org now");
    let plan = p.fleet.run(&["plan", "--base", "HEAD~1", "--head", "HEAD"]);
    plan.code(0);
    assert!(plan.stdout.contains(".fleetgate/routes"), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("+app.alpha.example.org/"),
        "{}",
        plan.stdout
    );
    let run = p.deploy();
    run.code(0);
    assert_eq!(
        p.get("app.alpha.example.org", "/version"),
        Some((200, "v1".into()))
    );
    assert_eq!(p.get(HOST, "/version").map(|(s, _)| s), Some(404));
    assert_eq!(
        std::fs::read_to_string(p.proxy_dir().join("nginx.pid")).unwrap(),
        pid,
        "reloaded, never restarted"
    );

    // A directive nginx does not know: `nginx -t` refuses it on the host.
    let releases = || {
        std::fs::read_dir(p.hosts.host("a1").deploy_root.join("alpha/web/releases"))
            .unwrap()
            .count()
    };
    let before = releases();
    let live = std::fs::read_to_string(p.proxy_dir().join("nginx.conf")).unwrap();
    p.fleet.edit(
        "pipelines/apps/web/app.yaml",
        "    service: web\n",
        "    service: web\n    proxy_directives: [\"no_such_directive on;\"]\n",
    );
    p.client("v2", "ok");
    p.fleet.commit("web v2 with a directive nginx refuses");
    let run = p.deploy();
    run.code(1);
    let host = &run.json()["hosts"][0];
    assert_eq!(host["failure"]["step"], "proxy check", "{host}");
    assert!(
        host["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_directive"),
        "{host}"
    );
    assert_eq!(releases(), before, "nothing uploaded");
    assert_eq!(
        std::fs::read_to_string(p.proxy_dir().join("nginx.conf")).unwrap(),
        live,
        "the live config is untouched"
    );
    assert_eq!(
        p.get("app.alpha.example.org", "/version"),
        Some((200, "v1".into())),
        "the old release still serves through the old config"
    );
}

/// A compose app on a real dockerd (images pulled by digest from the
/// loopback registry) switches blue/green behind Caddy: two compose
/// projects side by side, no request lost, the old project gone after.
#[test]
fn compose_blue_green_behind_caddy_loses_no_request() {
    let docker = crate::docker::Docker::start();
    let v1 = docker.build_and_push("web", "1.0", "image 1\n");
    let v2 = docker.build_and_push("web", "2.0", "image 2\n");
    let p = ProxyFleet::new("caddy", "blue_green");
    p.fleet.write(
        "pipelines/apps/web/app.yaml",
        &format!(
            r#"runtime: compose
strategy: blue_green
drain: 1s
slot_ports: ["{{{{ client.vars.blue }}}}", "{{{{ client.vars.green }}}}"]
images:
  web: {v1}
files:
  docker-compose.yml: compose.yml.j2
routes:
  - hosts: ["web.{{{{ client.domain }}}}"]
    health: /image
health:
  - http: "http://web.{{{{ client.domain }}}}/image"
    route: true
    interval: 200ms
    successes: 2
    failures: 5
    deadline: 20s
"#
        ),
    );
    p.fleet.write(
        "pipelines/apps/web/compose.yml.j2",
        r#"services:
  web:
    image: {{ app.images.web }}
    network_mode: host
    stop_signal: SIGKILL
    command: ["/bin/busybox", "httpd", "-f", "-p", "127.0.0.1:{{ release.port }}", "-h", "/www"]
"#,
    );
    p.fleet.edit(
        "pipelines/pipeline.yaml",
        "proxy:",
        &format!(
            "runtimes:\n  compose: \"{}\"\nproxy:",
            docker.compose_command()
        ),
    );
    p.fleet.commit("web as a blue/green compose app");
    p.deploy().code(0);
    assert_eq!(p.get(HOST, "/image"), Some((200, "image 1".into())));

    p.fleet.edit("pipelines/apps/web/app.yaml", &v1, &v2);
    p.fleet.commit("web 2.0");
    let load = Load::start(p.http_port, HOST, "/image", 4);
    std::thread::sleep(Duration::from_millis(300));
    p.deploy().code(0);
    let done = load.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    no_failures("compose blue/green deploy", &report, 1);
    assert_eq!(
        versions(&report),
        ["image 1", "image 2"],
        "{}",
        report.summary()
    );
    report.all_after(done, "image 2").unwrap();
    let ps = docker.docker(&["ps", "--format", "{{.Names}}"]);
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.contains("alpha-web-green_web_1"), "{ps}");
    assert!(
        !ps.contains("alpha-web-blue"),
        "the old slot's project is down: {ps}"
    );
}
