//! `fleetgate scan` and the scan gate of `run`, with the real trivy binary
//! against a fixture vulnerability database built in the test from
//! `tests/fixtures/trivy/vulndb.json` (made-up CVE-2099-* advisories for
//! Debian 12), and images built by `tests/fixtures/trivy/image.py`: pushed to
//! a loopback `docker-registry` and scanned by digest, or saved as archives.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Fleet, Run, source_root};
use crate::docker::Registry;

const VULNERABLE: &[&str] = &[
    "openssl=3.0.11-1~deb12u2",
    "libexpat1=2.5.0-1",
    "zlib1g=1:1.2.13.dfsg-1",
    "libgcrypt20=1.10.1-3",
];
const CLEAN: &[&str] = &["bash=5.2.15-2+b2"];

fn fixture(name: &str) -> PathBuf {
    source_root().join("tests/fixtures/trivy").join(name)
}

#[track_caller]
fn python(args: &[&str]) -> String {
    let out = Command::new("python3").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "python3 {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn which(bin: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{bin} is not on PATH: run scripts/setup.sh"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A fleet with two apps on one fixture registry: `vuln` (openssl and
/// friends with fixture CVEs) and `clean`; client alpha runs clean, beta
/// runs vuln. Trivy's DB is the fixture, in a cache dir of its own.
pub struct ScanFleet {
    fleet: Fleet,
    registry: Registry,
    dir: tempfile::TempDir,
    pub vuln: String,
    pub clean: String,
}

impl ScanFleet {
    pub fn new() -> ScanFleet {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::start_in(dir.path());
        let push = |name: &str, packages: &[&str]| {
            let mut args = vec![
                fixture("image.py").to_str().unwrap().to_string(),
                "push".into(),
                registry.addr.clone(),
                format!("fixture/{name}"),
                "1".into(),
            ];
            args.extend(packages.iter().map(|p| p.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let digest = python(&args);
            format!("{}/fixture/{name}:1@{digest}", registry.addr)
        };
        let vuln = push("vuln", VULNERABLE);
        let clean = push("clean", CLEAN);
        let s = ScanFleet {
            fleet: Fleet::empty(),
            registry,
            dir,
            vuln,
            clean,
        };
        s.build_db();
        s.pipeline("fail_on: [CRITICAL, HIGH]\n  ignore_unfixed: true");
        for (app, image) in [("vuln", s.vuln.clone()), ("clean", s.clean.clone())] {
            s.fleet.write(
                &format!("pipelines/apps/{app}/app.yaml"),
                &format!("runtime: compose\nimages:\n  main: {image}\nfiles:\n  compose.yaml: compose.yaml.j2\n"),
            );
            s.fleet.write(
                &format!("pipelines/apps/{app}/compose.yaml.j2"),
                "services:\n  main:\n    image: {{ app.images.main }}\n",
            );
        }
        for (client, app) in [("alpha", "clean"), ("beta", "vuln")] {
            s.fleet.write(
                &format!("clients/{client}.yaml"),
                &format!("domain: {client}.example.org\ngroup: canary\napps: [{app}]\nhosts:\n  - name: {client}-1\n    address: 192.0.2.1\n"),
            );
        }
        // Pinned, as every command that plans or deploys requires.
        s.fleet.write(
            "pipelines/known_hosts",
            "alpha-1,beta-1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIulpxsP7LMTnHHQLwYU2WEkTUY79ISya74au5cyCV8m\n",
        );
        s.fleet.commit("fleet with images");
        s
    }

    fn trivy_cache(&self) -> PathBuf {
        self.dir.path().join("trivy-cache")
    }

    /// (Re)builds the fixture DB: a new DB version.
    fn build_db(&self) {
        self.build_db_in(&self.trivy_cache());
    }

    /// The fixture DB in trivy cache dir `cache` (a workflow job's own).
    pub fn build_db_in(&self, cache: &Path) {
        python(&[
            fixture("build_db.py").to_str().unwrap(),
            fixture("vulndb.json").to_str().unwrap(),
            cache.to_str().unwrap(),
        ]);
    }

    /// Rebuilds the fixture DB with `extra` advisories for bash (in the
    /// clean image): a finding that appears after the image was deployed.
    fn build_db_with_bash(&self, ids: &[&str]) {
        let mut db: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("vulndb.json")).unwrap())
                .unwrap();
        for id in ids {
            db["advisories"]["debian 12"]["bash"][id] =
                serde_json::json!({"FixedVersion": "99.0-1"});
            db["vulnerabilities"][id] = serde_json::json!({
                "Title": "bash: made-up issue found after deploy", "Description": "fixture",
                "Severity": "CRITICAL", "VendorSeverity": {"debian": 4}
            });
        }
        let path = self.dir.path().join("vulndb-later.json");
        std::fs::write(&path, db.to_string()).unwrap();
        python(&[
            fixture("build_db.py").to_str().unwrap(),
            path.to_str().unwrap(),
            self.trivy_cache().to_str().unwrap(),
        ]);
    }

    fn pipeline(&self, scan: &str) {
        self.fleet.write(
            "pipelines/pipeline.yaml",
            &format!("stages:\n  - name: canary\n    group: canary\nscan:\n  {scan}\n"),
        );
    }

    /// A wrapper around the real trivy that counts its runs, then does `then`
    /// (default: exec trivy).
    fn wrapper(&self, then: &str) -> PathBuf {
        let path = self.dir.path().join("trivy-wrapper.sh");
        let real = which("trivy");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho run >> {count}\n{then}\nexec {real} \"$@\"\n",
                count = self.count_file().display(),
                real = real.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        path
    }

    fn count_file(&self) -> PathBuf {
        self.dir.path().join("trivy-runs")
    }

    fn trivy_runs(&self) -> usize {
        std::fs::read_to_string(self.count_file())
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn scan_with(&self, trivy: &Path, args: &[&str]) -> Run {
        let mut all = vec!["scan", "--rev", "HEAD"];
        all.extend(args);
        let cache = self.trivy_cache();
        self.fleet.run_env(
            &all,
            &[
                ("FLEETGATE_TRIVY", trivy.to_str().unwrap()),
                ("FLEETGATE_TRIVY_CACHE_DIR", cache.to_str().unwrap()),
            ],
        )
    }

    fn scan(&self, args: &[&str]) -> Run {
        self.scan_with(&self.wrapper(""), args)
    }
}

#[test]
fn a_clean_image_passes_and_a_critical_finding_blocks() {
    let s = ScanFleet::new();
    let clean = s.scan(&["--clients", "alpha"]);
    clean.code(0);
    assert!(clean.stdout.contains("verdict: pass"), "{}", clean.stdout);

    let run = s.scan(&["--clients", "beta"]);
    run.code(1);
    assert!(
        run.stdout
            .contains("CVE-2099-0001 openssl 3.0.11-1~deb12u2 → fixed in 99.0.0-1 (CRITICAL)"),
        "{}",
        run.stdout
    );
    // HIGH without a fix does not block with ignore_unfixed; the counts show it.
    assert!(!run.stdout.contains("CVE-2099-0002"), "{}", run.stdout);
    assert!(
        run.stdout.contains("blocked by 1 finding(s) in 1 image(s)"),
        "{}",
        run.stdout
    );

    let json = s.scan(&["--format", "json"]);
    json.code(1);
    let report = json.json();
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let vuln = images
        .iter()
        .find(|i| i["image"] == s.vuln.as_str())
        .unwrap();
    assert_eq!(vuln["counts"]["critical"], 1);
    assert_eq!(vuln["counts"]["high"], 1);
    assert_eq!(vuln["counts"]["medium"], 1);
    assert_eq!(vuln["counts"]["low"], 1);
    assert_eq!(vuln["unfixed"], 1);
    assert_eq!(vuln["blocking"][0]["id"], "CVE-2099-0001");
    assert_eq!(vuln["blocking"][0]["fixed"], "99.0.0-1");
    assert_eq!(vuln["used_by"][0], "beta/vuln");

    let md = s.scan(&["--format", "markdown"]);
    assert!(
        md.stdout
            .contains("| image | critical | high | medium | low | verdict |"),
        "{}",
        md.stdout
    );
    assert!(md.stdout.contains("**blocked**"), "{}", md.stdout);
}

#[test]
fn ignore_unfixed_and_ignore_entries_with_and_past_their_date() {
    let s = ScanFleet::new();
    // Without ignore_unfixed the unfixed HIGH blocks as well.
    s.pipeline("fail_on: [CRITICAL, HIGH]");
    s.fleet.commit("unfixed counts");
    let run = s.scan(&["--clients", "beta"]);
    run.code(1);
    assert!(
        run.stdout
            .contains("CVE-2099-0002 libexpat1 2.5.0-1 → no fix yet (HIGH)"),
        "{}",
        run.stdout
    );

    // Accepted until a future date: passes, and says until when and why.
    s.pipeline("fail_on: [CRITICAL, HIGH]\n  ignore_unfixed: true");
    s.fleet.write(
        "pipelines/trivyignore.yaml",
        "ignore:\n  - id: CVE-2099-0001\n    package: openssl\n    expires: 2099-12-31\n    reason: fixture, not reachable\n",
    );
    s.fleet.commit("accept CVE-2099-0001");
    let run = s.scan(&["--clients", "beta"]);
    run.code(0);
    assert!(
        run.stdout
            .contains("CVE-2099-0001 openssl accepted until 2099-12-31: fixture, not reachable"),
        "{}",
        run.stdout
    );

    // Expired: blocks again, and the report says the acceptance expired.
    s.fleet
        .edit("pipelines/trivyignore.yaml", "2099-12-31", "2020-01-01");
    s.fleet.commit("acceptance expired");
    let run = s.scan(&["--clients", "beta"]);
    run.code(1);
    assert!(
        run.stdout.contains("CVE-2099-0001 openssl 3.0.11-1~deb12u2 → fixed in 99.0.0-1 (CRITICAL) — its trivyignore entry expired on 2020-01-01"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            "expired: pipelines/trivyignore.yaml:2 `CVE-2099-0001` expired on 2020-01-01"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("expired on 2020-01-01"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_ignore_entry_without_expiry_or_reason_is_refused() {
    let s = ScanFleet::new();
    s.fleet.write(
        "pipelines/trivyignore.yaml",
        "ignore:\n  - id: CVE-2099-0001\n    reason: forever\n  - id: CVE-2099-0002\n    expires: soon\n",
    );
    s.fleet.commit("bad ignores");
    let runs_before = s.trivy_runs();
    for run in [s.scan(&[]), s.fleet.run(&["check"])] {
        run.code(2);
        for needle in [
            "pipelines/trivyignore.yaml:2: ignore[0].expires: `CVE-2099-0001` has no expiry date",
            "pipelines/trivyignore.yaml:5: ignore[1].expires: `soon` is not a date",
            "ignore[1].reason: `CVE-2099-0002` has no reason",
        ] {
            assert!(
                run.stderr.contains(needle),
                "missing {needle:?}:\n{}",
                run.stderr
            );
        }
    }
    assert_eq!(s.trivy_runs(), runs_before, "trivy never ran");
}

#[test]
fn trivy_missing_crashing_timing_out_or_without_db_is_exit_3() {
    let s = ScanFleet::new();
    let missing = s.scan_with(Path::new("/nonexistent/trivy"), &[]);
    missing.code(3);
    assert!(
        missing
            .stderr
            .contains("could not run trivy (`/nonexistent/trivy`)"),
        "{}",
        missing.stderr
    );

    let crash = s.scan_with(&s.wrapper("echo 'FATAL fixture crash' >&2; exit 2"), &[]);
    crash.code(3);
    assert!(
        crash.stderr.contains("(exit 2)") && crash.stderr.contains("FATAL fixture crash"),
        "{}",
        crash.stderr
    );

    let started = std::time::Instant::now();
    let slow = s.scan_with(&s.wrapper("sleep 30"), &["--scan-timeout", "1s"]);
    slow.code(3);
    assert!(
        slow.stderr.contains("did not finish scanning") && slow.stderr.contains("killed"),
        "{}",
        slow.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "killed at the timeout"
    );

    // No DB and none to download (no network here): trivy's own error, exit 3.
    std::fs::remove_dir_all(s.trivy_cache()).unwrap();
    let no_db = s.scan(&[]);
    no_db.code(3);
    assert!(
        no_db.stderr.contains("failed to download vulnerability DB"),
        "{}",
        no_db.stderr
    );
    assert!(!no_db.stdout.contains("pass"), "{}", no_db.stdout);
}

#[test]
fn results_are_cached_per_digest_and_db_version() {
    let s = ScanFleet::new();
    s.scan(&[]).code(1);
    assert_eq!(s.trivy_runs(), 2, "two distinct images");
    let again = s.scan(&[]);
    again.code(1);
    assert_eq!(s.trivy_runs(), 2, "nothing rescanned");
    assert!(again.stderr.contains("cached"), "{}", again.stderr);
    assert!(
        again.stdout.contains("CVE-2099-0001"),
        "the cached findings still block"
    );
    // A new DB: everything is scanned again.
    s.build_db();
    s.scan(&[]).code(1);
    assert_eq!(s.trivy_runs(), 4);
    s.scan(&["--no-scan-cache"]).code(1);
    assert_eq!(s.trivy_runs(), 6);
}

#[test]
fn an_image_archive_is_scanned_instead_of_pulling() {
    let s = ScanFleet::new();
    let archives = s.dir.path().join("archives");
    std::fs::create_dir_all(&archives).unwrap();
    let digest = s.vuln.rsplit_once("@sha256:").unwrap().1;
    let tar = archives.join(format!("{digest}.tar"));
    let mut args = vec![
        fixture("image.py").to_str().unwrap().to_string(),
        "archive".into(),
        tar.to_str().unwrap().into(),
        "fixture/vuln:1".into(),
    ];
    args.extend(VULNERABLE.iter().map(|p| p.to_string()));
    python(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // The registry is gone: only the archive can be scanned.
    let cache = s.trivy_cache();
    let ScanFleet {
        fleet, registry, ..
    } = s;
    drop(registry);
    let run = fleet.run_env(
        &[
            "scan",
            "--rev",
            "HEAD",
            "--clients",
            "beta",
            "--image-archives",
            archives.to_str().unwrap(),
        ],
        &[("FLEETGATE_TRIVY_CACHE_DIR", cache.to_str().unwrap())],
    );
    run.code(1);
    assert!(run.stderr.contains("(archive)"), "{}", run.stderr);
    assert!(
        run.stdout.contains("CVE-2099-0001 openssl"),
        "{}",
        run.stdout
    );
}

#[test]
fn an_unpinned_image_never_reaches_trivy() {
    let s = ScanFleet::new();
    let unpinned = s.vuln.split('@').next().unwrap().to_string();
    s.fleet
        .edit("pipelines/apps/vuln/app.yaml", &s.vuln, &unpinned);
    s.fleet.commit("unpinned");
    let run = s.scan(&[]);
    run.code(2);
    assert!(
        run.stderr.contains("pipelines/apps/vuln/app.yaml") && run.stderr.contains("images.main"),
        "{}",
        run.stderr
    );
    assert_eq!(s.trivy_runs(), 0);
}

#[test]
fn run_stops_before_the_first_stage_when_the_scan_blocks() {
    let s = ScanFleet::new();
    let p = crate::run::Pipeline::new();
    let c0 = p.head();
    // web now also ships the vulnerable image (pulled by digest on the host).
    p.d.fleet.edit(
        "pipelines/apps/web/app.yaml",
        "files:\n",
        &format!("images:\n  sidecar: {}\nfiles:\n", s.vuln),
    );
    p.d.set("alpha", "version", "\"2\"");
    let c1 = p.push("web: add a sidecar image");
    let wrapper = s.wrapper("");
    let run = p.d.fleet.run_env(
        &["run", "--base", &c0, "--head", &c1],
        &[
            ("FLEETGATE_SSH_KEY", p.d.hosts.client_key.to_str().unwrap()),
            ("FLEETGATE_TRIVY", wrapper.to_str().unwrap()),
            (
                "FLEETGATE_TRIVY_CACHE_DIR",
                s.trivy_cache().to_str().unwrap(),
            ),
        ],
    );
    run.code(1);
    assert!(run.stderr.contains("scan blocked"), "{}", run.stderr);
    assert!(
        run.stdout.contains("CVE-2099-0001 openssl"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stderr.contains("alpha-1 connect"),
        "no host was touched:\n{}",
        run.stderr
    );
    assert!(p.serving("alpha-1").contains("version=1"));
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/canary/alpha"),
        Some(c0)
    );
    assert_eq!(p.remote_note(&c1)["scan"]["passed"], false);
    assert_eq!(p.remote_ref("refs/fleetgate/lock"), None);
}

#[test]
fn plan_scan_comment_carries_the_scan_summary_and_sets_its_status() {
    use crate::forge::{Ci, envs, no_token, pairs, pr_event, statuses};
    use crate::forge_server::Flavor;
    let s = ScanFleet::new();
    let ci = Ci::start(Flavor::Forgejo);
    s.fleet
        .edit("clients/beta.yaml", "apps: [vuln]", "apps: [clean]");
    let base = s.fleet.commit("beta runs clean");
    // The pull request brings the vulnerable image to beta.
    s.fleet
        .edit("clients/beta.yaml", "apps: [clean]", "apps: [vuln]");
    let head = s.fleet.commit("beta runs vuln");
    ci.server.add_pull(4, &head, &base, false, None);
    let wrapper = s.wrapper("");
    let mut env = ci.env("pull_request", pr_event(4, &base, &head), "dev");
    env.push(("FLEETGATE_TRIVY".into(), wrapper.display().to_string()));
    env.push((
        "FLEETGATE_TRIVY_CACHE_DIR".into(),
        s.trivy_cache().display().to_string(),
    ));
    let run = s.fleet.run_env(
        &[
            "plan",
            "--base",
            &base,
            "--head",
            &head,
            "--scan",
            "--comment",
        ],
        &envs(&env),
    );
    // The scan blocks: exit 1, and the pull request shows why.
    no_token(run.code(1));
    let body = &ci.server.comments(4)[0].body;
    assert!(body.contains("| beta | canary |"), "{body}");
    assert!(body.contains("CVE-2099-0001"), "{body}");
    assert_eq!(
        statuses(&ci, &head),
        pairs(&[
            ("fleetgate/plan", "pending"),
            ("fleetgate/scan", "pending"),
            ("fleetgate/scan", "failure"),
            ("fleetgate/plan", "success"),
        ])
    );
    ci.assert_valid();
}

/// `scan --deployed`: what the records say runs (and with `--verify`, what
/// the hosts say), scanned with the current DB; a finding that appears
/// after the deploy blocks. With `--issues`, one issue per blocked image
/// repository: opened, left alone while unchanged (no duplicate), edited
/// when it changes, closed when it is gone.
#[test]
fn scan_deployed_finds_what_appeared_after_the_deploy_and_keeps_its_issue() {
    use crate::forge::{Ci, envs, no_token};
    use crate::forge_server::Flavor;
    let s = ScanFleet::new();
    let mut p = crate::run::Pipeline::with(&[("alpha", "canary", &["alpha-1"])]);
    let c0 = p.head();
    // web ships the clean image from now on; deployed to canary.
    p.d.fleet.edit(
        "pipelines/apps/web/app.yaml",
        "files:\n",
        &format!("images:\n  sidecar: {}\nfiles:\n", s.clean),
    );
    let c1 = p.push("web: a sidecar image");
    p.fleet_run(&["deploy", "--stage", "canary", "--rev", "HEAD"])
        .code(0);
    // A later commit, not deployed, brings the vulnerable image: what runs
    // is scanned, not what is on main.
    p.d.fleet.edit(
        "pipelines/apps/web/app.yaml",
        &format!("sidecar: {}", s.clean),
        &format!("sidecar: {}", s.vuln),
    );
    p.push("web: the vulnerable sidecar (not deployed)");
    let wrapper = s.wrapper("");
    let cache = s.trivy_cache();
    let trivy = [
        ("FLEETGATE_TRIVY", wrapper.to_str().unwrap()),
        ("FLEETGATE_TRIVY_CACHE_DIR", cache.to_str().unwrap()),
    ];
    let scan = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["scan", "--deployed"];
        args.extend(extra);
        let mut all = trivy.to_vec();
        all.extend_from_slice(env);
        p.fleet_run_env(&args, &all)
    };
    let clean = scan(&["--format", "json"], &[]);
    clean.code(0);
    let images = clean.json()["images"].as_array().unwrap().clone();
    assert_eq!(images.len(), 1, "{}", clean.stdout);
    assert_eq!(images[0]["image"], s.clean.as_str());
    let short = &c1[..12];
    assert_eq!(
        images[0]["used_by"][0],
        format!("canary: alpha/web @{short}").as_str()
    );

    // trivy's DB learns of a CVE in the deployed image.
    s.build_db_with_bash(&["CVE-2099-0005"]);
    let blocked = scan(&[], &[]);
    blocked.code(1);
    assert!(
        blocked.stdout.contains("CVE-2099-0005 bash"),
        "{}",
        blocked.stdout
    );
    // --stage: only that stage's records; an unknown stage is invalid.
    scan(&["--stage", "canary"], &[]).code(1);
    scan(&["--stage", "nope"], &[]).code(2);

    // --verify asks the host. The record is moved back to c0 (web had no
    // image then): the records alone pass, the host says what runs.
    p.d.fleet.git(&[
        "push",
        "-q",
        "-f",
        "origin",
        &format!("{c0}:refs/fleetgate/deployed/canary/alpha"),
    ]);
    scan(&[], &[]).code(0);
    let verified = scan(&["--verify"], &[]);
    verified.code(1);
    assert!(
        verified.stderr.contains(&format!(
            "alpha-1: alpha/web runs {short}, the record of canary/alpha says {}",
            &c0[..12]
        )),
        "{}",
        verified.stderr
    );
    assert!(
        verified
            .stdout
            .contains(&format!("alpha-1: alpha/web @{short}")),
        "{}",
        verified.stdout
    );
    p.d.fleet.git(&[
        "push",
        "-q",
        "-f",
        "origin",
        &format!("{c1}:refs/fleetgate/deployed/canary/alpha"),
    ]);

    // Outside CI, --issues is an error before any work.
    let outside = scan(&["--issues"], &[]);
    outside.code(2);
    assert!(
        outside.stderr.contains("scan --issues needs a forge"),
        "{}",
        outside.stderr
    );

    let ci = Ci::start(Flavor::Forgejo);
    let env = ci.env(
        "schedule",
        serde_json::json!({"schedule": "17 5 * * 1"}),
        "dev",
    );
    let issues = |code: i32| {
        let run = scan(&["--issues"], &envs(&env));
        no_token(run.code(code));
        run
    };
    let first = issues(1);
    let open: Vec<_> = ci.server.issues().into_iter().filter(|i| i.open).collect();
    assert_eq!(open.len(), 1, "{:?}", ci.server.issues());
    let repo = s
        .clean
        .split('@')
        .next()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0;
    assert!(
        open[0]
            .body
            .starts_with(&format!("<!-- fleetgate:scan:{repo} -->")),
        "{}",
        open[0].body
    );
    assert!(open[0].body.contains("CVE-2099-0005"), "{}", open[0].body);
    assert!(
        open[0]
            .body
            .contains(&format!("runs on canary: alpha/web @{short}")),
        "{}",
        open[0].body
    );
    assert!(open[0].title.contains("1 finding(s)"), "{}", open[0].title);
    assert!(
        first
            .stderr
            .contains(&format!("opened #{}", open[0].number)),
        "{}",
        first.stderr
    );
    // The same finding next week: the same issue, untouched.
    let again = issues(1);
    assert!(again.stderr.contains("is up to date"), "{}", again.stderr);
    assert_eq!(ci.server.issues().len(), 1);
    // A second finding: the issue is edited.
    s.build_db_with_bash(&["CVE-2099-0005", "CVE-2099-0006"]);
    issues(1);
    let issue = &ci.server.issues()[0];
    assert!(
        issue.open && issue.title.contains("2 finding(s)"),
        "{issue:?}"
    );
    assert!(issue.body.contains("CVE-2099-0006"), "{}", issue.body);
    // Both accepted in trivyignore.yaml (HEAD's): gone, the issue closed
    // with a comment; nothing opened.
    p.d.fleet.write(
        "pipelines/trivyignore.yaml",
        "ignore:\n  - id: CVE-2099-0005\n    expires: 2099-12-31\n    reason: fixture\n  - id: CVE-2099-0006\n    expires: 2099-12-31\n    reason: fixture\n",
    );
    p.push("accept the bash findings");
    let gone = issues(0);
    assert!(
        gone.stderr.contains(&format!("closed #{}", issue.number)),
        "{}",
        gone.stderr
    );
    let issue = &ci.server.issues()[0];
    assert!(!issue.open, "{issue:?}");
    let comments = ci.server.comments(issue.number);
    assert!(
        comments[0].body.contains("finds nothing blocking"),
        "{comments:?}"
    );
    assert_eq!(ci.server.issues().len(), 1);
    ci.assert_valid();

    // A host that cannot be asked may run anything: --verify is exit 3.
    p.d.hosts.stop("alpha-1");
    let lost = p.fleet_run_env(&["scan", "--deployed", "--verify"], &trivy);
    lost.code(3);
    assert!(
        lost.stderr
            .contains("could not ask every host what it runs"),
        "{}",
        lost.stderr
    );
}
