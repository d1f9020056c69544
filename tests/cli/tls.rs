//! Private CAs: the forge stand-in and an app's health endpoint served over
//! TLS with certificates of a CA the test makes (the `openssl` CLI), which
//! fleetgate trusts only when `FLEETGATE_CA_FILE` or `SSL_CERT_FILE` names
//! it. Without it, the forge is exit 3 with a hint and the health check
//! fails with the reason; a CA file that cannot be used stops every command
//! with exit 2 before it does anything.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use crate::deploy::DeployFleet;
use crate::forge::{Ci, envs, no_token, pr_event};
use crate::forge_server::Flavor;

/// A private CA and a server certificate it signed for 127.0.0.1, in a
/// directory the hosts' user can read (the app on a test host serves with
/// them).
pub struct TestCa {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    /// The CA's certificate: what FLEETGATE_CA_FILE names.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the tests make their certificates with the openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let tmp = tempfile::Builder::new().prefix("fgca-").tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
        let subject = format!("/CN={name}");
        let mut ca = vec!["req", "-x509", "-nodes"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&dir, &ca);
        let mut csr = vec!["req", "-nodes"];
        csr.extend(ec);
        csr.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&dir, &csr);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        );
        std::fs::remove_file(dir.join("ca.key")).unwrap();
        // The app runs as the hosts' user: it reads the server's key.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for f in ["ca.pem", "server.pem", "server.key"] {
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        TestCa {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
            _tmp: tmp,
        }
    }

    /// A rustls server config presenting the server certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.key).unwrap();
        Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
        )
    }

    /// A PEM file holding `others`' CA certificates, then this one's.
    pub fn bundle(&self, others: &[&TestCa]) -> PathBuf {
        let mut pem = String::new();
        for ca in others.iter().copied().chain([self]) {
            pem.push_str(&std::fs::read_to_string(&ca.ca).unwrap());
        }
        let path = self.dir.join("bundle.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }
}

/// What `probe` finds within 5 seconds.
#[track_caller]
fn eventually<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(std::time::Instant::now() < until, "not within 5 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `env` plus `extra`.
fn plus(env: &[(String, String)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

#[test]
fn a_forge_behind_a_private_ca_is_trusted_through_fleetgate_ca_file_or_ssl_cert_file() {
    let ca = TestCa::new("fleetgate test private CA");
    let unrelated = TestCa::new("another CA");
    let bundle = ca.bundle(&[&unrelated]);
    let ca_file = ca.ca.display().to_string();
    for flavor in [Flavor::Forgejo, Flavor::Github] {
        let ci = Ci::start_tls(flavor, ca.server_config());
        assert!(ci.server.url().starts_with("https://127.0.0.1:"));
        let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
        let base = d.fleet.git(&["rev-parse", "HEAD"]);
        d.set("alpha", "version", "\"2\"");
        let head = d.fleet.commit("alpha: version 2");
        ci.server.add_pull(5, &head, &base, false, None);
        let env = ci.env("pull_request", pr_event(5, &base, &head), "dev");
        let plan = ["plan", "--base", &base, "--head", &head, "--comment"];

        // Not trusted: exit 3 at the first request, which is not retried.
        let run = d.fleet.run_env(&plan, &envs(&env));
        no_token(run.code(3));
        assert!(
            run.stderr
                .contains("error: Forgejo (POST /repos/hosting/fleet/statuses/")
                || run
                    .stderr
                    .contains("error: GitHub (POST /repos/hosting/fleet/statuses/"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains(
                "): its TLS certificate is not trusted: signed by a CA fleetgate does not know\n"
            ) && run
                .stderr
                .contains("hint: if it is signed by a private CA, give that CA's certificate (PEM) in FLEETGATE_CA_FILE"),
            "{flavor:?}: {}",
            run.stderr
        );
        assert!(ci.server.requests().is_empty(), "{flavor:?}");
        // The stand-in notes the client's alert on its own thread.
        let refused = eventually(|| Some(ci.server.handshake_failures()).filter(|f| !f.is_empty()));
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(
            ci.server.handshake_failures().len(),
            1,
            "{flavor:?}: tried once: {refused:?}"
        );
        assert!(refused[0].contains("UnknownCA"), "{refused:?}");

        // Several CAs in one file; the one that signed is among them.
        let bundle = bundle.display().to_string();
        let run = d
            .fleet
            .run_env(&plan, &envs(&plus(&env, &[("FLEETGATE_CA_FILE", &bundle)])));
        no_token(run.code(0));
        let comments = ci.server.comments(5);
        assert_eq!(comments.len(), 1, "{flavor:?}");
        assert!(comments[0].body.contains("| alpha | canary |"));
        let states: Vec<String> = ci
            .server
            .statuses(&head)
            .iter()
            .map(|s| s.state.clone())
            .collect();
        assert_eq!(states, ["pending", "success"], "{flavor:?}");

        // The system's store, as OpenSSL-based tools take it.
        let run = d
            .fleet
            .run_env(&plan, &envs(&plus(&env, &[("SSL_CERT_FILE", &ca_file)])));
        no_token(run.code(0));
        assert_eq!(ci.server.comments(5).len(), 1, "{flavor:?}: edited");
        assert_eq!(ci.server.statuses(&head).len(), 4, "{flavor:?}");
        assert_eq!(ci.server.handshake_failures().len(), 1, "{flavor:?}");
        ci.assert_valid();
    }
}

#[test]
fn a_ca_file_that_cannot_be_used_stops_any_command_before_it_does_anything() {
    let ca = TestCa::new("fleetgate test private CA");
    let ci = Ci::start_tls(Flavor::Forgejo, ca.server_config());
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let base = d.fleet.git(&["rev-parse", "HEAD"]);
    d.set("alpha", "version", "\"2\"");
    let head = d.fleet.commit("alpha: version 2");
    ci.server.add_pull(5, &head, &base, false, None);
    let env = ci.env("pull_request", pr_event(5, &base, &head), "dev");
    let missing = ca.dir.join("gone.pem").display().to_string();
    let key = ca.key.display().to_string();
    let ssh_key = d.hosts.client_key.display().to_string();
    let cases: [(&[&str], (&str, &str), String); 4] = [
        (
            &["deploy", "--stage", "canary", "--rev", "HEAD"],
            ("FLEETGATE_CA_FILE", &missing),
            format!(
                "error: FLEETGATE_CA_FILE={missing}: cannot read it: No such file or directory"
            ),
        ),
        (
            // A private key is PEM, but no certificate.
            &["deploy", "--stage", "canary", "--rev", "HEAD"],
            ("FLEETGATE_CA_FILE", &key),
            format!("error: FLEETGATE_CA_FILE={key}: holds no certificate"),
        ),
        (
            &["plan", "--base", &base, "--head", &head, "--comment"],
            ("FLEETGATE_CA_FILE", &key),
            format!("error: FLEETGATE_CA_FILE={key}: holds no certificate"),
        ),
        (
            &["deploy", "--stage", "canary", "--rev", "HEAD"],
            ("SSL_CERT_FILE", &missing),
            format!("error: SSL_CERT_FILE={missing}: cannot read it"),
        ),
    ];
    for (args, (var, value), expect) in cases {
        let env = plus(&env, &[(var, value), ("FLEETGATE_SSH_KEY", &ssh_key)]);
        let run = d.fleet.run_env(args, &envs(&env));
        no_token(run.code(2));
        assert!(run.stderr.contains(&expect), "{args:?}: {}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("hint: {var} names a PEM file"))
        );
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    // Nothing reached the host or the forge.
    let host = d.hosts.host("alpha-1");
    assert!(!host.deploy_root.join("alpha").exists());
    assert_eq!(d.serving("alpha-1"), None);
    assert!(ci.server.requests().is_empty());
    assert!(ci.server.handshake_failures().is_empty());
}

/// The web app of `deploy.rs`, serving HTTPS with the test CA's server
/// certificate (python3's http.server in an `ssl` context).
const HTTPS_APP: &str = r#"runtime: command
files:
  start.sh: start.sh.j2
  serve.py: serve.py.j2
  health: health.j2
commands:
  start: "sh start.sh"
health:
  - http: "https://127.0.0.1:{{ host.port + 1000 }}/health"
    expect_status: 200
    expect_body: "ok"
    interval: 200ms
    timeout: 1s
    successes: 2
    failures: 10
    deadline: 15s
rollback: safe
"#;

const SERVE: &str = r#"import http.server, ssl, sys
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

fn https_start(ca: &TestCa) -> String {
    format!(
        r#"pid=../../web.pid
if [ -f "$pid" ]; then kill "$(cat "$pid")" 2>/dev/null || true; sleep 0.2; fi
setsid nohup python3 serve.py {{{{ host.port + 1000 }}}} {} {} >../../web.log 2>&1 </dev/null &
echo $! > "$pid"
"#,
        ca.cert.display(),
        ca.key.display()
    )
}

/// Each host's status and the details of its checks, from `deploy --format
/// json`.
fn hosts(run: &crate::common::Run) -> Vec<(String, String)> {
    run.json()["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["status"].as_str().unwrap().to_string(), h.to_string()))
        .collect()
}

#[test]
fn https_health_checks_trust_the_private_ca() {
    let ca = TestCa::new("fleetgate test private CA");
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.fleet.write("pipelines/apps/web/app.yaml", HTTPS_APP);
    d.fleet.write("pipelines/apps/web/serve.py.j2", SERVE);
    d.fleet
        .write("pipelines/apps/web/start.sh.j2", &https_start(&ca));
    d.fleet.commit("web serves https");
    let key = d.hosts.client_key.display().to_string();
    let deploy = |extra: &[(&str, &str)]| {
        let mut env = vec![("FLEETGATE_SSH_KEY", key.as_str())];
        env.extend(extra);
        d.fleet.run_env(
            &[
                "deploy", "--stage", "canary", "--rev", "HEAD", "--format", "json",
            ],
            &env,
        )
    };

    // Not trusted: the check fails and says why; the stage fails (exit 1).
    let run = deploy(&[]);
    run.code(1);
    let seen = hosts(&run);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "rolled_back", "{seen:?}");
    assert!(
        seen[0].1.contains(
            "/health: its TLS certificate is not trusted: signed by a CA fleetgate does not know; if it is signed by a private CA, give that CA's certificate (PEM) in FLEETGATE_CA_FILE"
        ),
        "{seen:?}"
    );

    let ca_file = ca.ca.display().to_string();
    let run = deploy(&[("FLEETGATE_CA_FILE", &ca_file)]);
    run.code(0);
    assert_eq!(hosts(&run)[0].0, "deployed", "{}", run.stdout);

    d.set("alpha", "version", "\"2\"");
    d.fleet.commit("alpha: version 2");
    let run = deploy(&[("SSL_CERT_FILE", &ca_file)]);
    run.code(0);
    assert_eq!(hosts(&run)[0].0, "deployed", "{}", run.stdout);
    let state: Value = d.state("alpha-1", "alpha");
    assert!(
        state
            .to_string()
            .contains(&d.fleet.git(&["rev-parse", "HEAD"]))
    );
}
