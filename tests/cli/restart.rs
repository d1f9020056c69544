//! A deploy restarts exactly the apps whose rendered files changed: a client
//! with two `command`-runtime apps on a real sshd host, where only `web2`
//! changes — `web`'s server keeps its process (pid and start count), and
//! still counts as running the new commit in the outcome, the deployed ref
//! and `status`; a rollback or a failing change of `web2` leaves it alone too.

use std::path::PathBuf;

use crate::common::Run;
use crate::deploy::DeployFleet;
use crate::hosts::http_get;

const HOST: &str = "alpha-1";

struct TwoApps {
    d: DeployFleet,
}

impl TwoApps {
    /// `web` (the deploy tests' app, on port ssh+1000) and `web2`, a copy on
    /// port ssh+2000; each start also counts itself in `<app>/starts`.
    fn new() -> TwoApps {
        let d = DeployFleet::new(&[("alpha", "canary", &[HOST])], "");
        let f = &d.fleet;
        for name in ["app.yaml", "start.sh.j2", "health.j2"] {
            let text = f.read(&format!("pipelines/apps/web/{name}"));
            f.write(
                &format!("pipelines/apps/web2/{name}"),
                &text.replace("host.port + 1000", "host.port + 2000"),
            );
        }
        for app in ["web", "web2"] {
            let start = format!("pipelines/apps/{app}/start.sh.j2");
            let text = f.read(&start);
            f.write(&start, &format!("echo start >> ../../starts\n{text}"));
        }
        f.edit("clients/alpha.yaml", "apps: [web]", "apps: [web, web2]");
        f.commit("two apps");
        TwoApps { d }
    }

    fn app_dir(&self, app: &str) -> PathBuf {
        self.d.hosts.host(HOST).deploy_root.join("alpha").join(app)
    }

    /// The pid of the app's server, and how many times it was started.
    fn process(&self, app: &str) -> (String, usize) {
        let dir = self.app_dir(app);
        let pid = std::fs::read_to_string(dir.join("web.pid")).unwrap();
        let starts = std::fs::read_to_string(dir.join("starts")).unwrap();
        (pid.trim().to_string(), starts.lines().count())
    }

    fn alive(&self, app: &str) -> bool {
        std::path::Path::new("/proc")
            .join(self.process(app).0)
            .exists()
    }

    fn serving2(&self) -> Option<String> {
        http_get(self.d.hosts.host(HOST).port + 2000, "/health")
    }

    fn fleetgate(&self, args: &[&str]) -> Run {
        let key = self.d.hosts.client_key.to_str().unwrap().to_string();
        self.d.fleet.run_env(args, &[("FLEETGATE_SSH_KEY", &key)])
    }

    fn deployed(&self) -> String {
        self.d
            .fleet
            .git(&["rev-parse", "refs/fleetgate/deployed/canary/alpha"])
    }

    /// `status --format json`: per app, the commit it runs and its release.
    fn status(&self) -> Vec<(String, String, String)> {
        let run = self.fleetgate(&["status", "--drift", "--format", "json"]);
        run.code(0);
        let json = run.json();
        assert_eq!(json["orphans"], serde_json::json!([]), "{json:#}");
        json["apps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                assert_eq!(row["drift"], serde_json::json!([]), "{row:#}");
                let release = row["release"].as_str().unwrap();
                (
                    row["app"].as_str().unwrap().to_string(),
                    row["rev"].as_str().unwrap().to_string(),
                    release.rsplit('/').next().unwrap().to_string(),
                )
            })
            .collect()
    }
}

fn row(app: &str, rev: &str, release: &str) -> (String, String, String) {
    (app.to_string(), rev.to_string(), release.to_string())
}

#[test]
fn an_unchanged_app_is_not_restarted_when_a_sibling_changes() {
    let t = TwoApps::new();
    let rev1 = t.d.fleet.git(&["rev-parse", "HEAD"]);
    t.d.deploy("canary").code(0);
    let web = t.process("web");
    assert_eq!(web.1, 1);
    assert!(t.alive("web"));
    let web2 = t.process("web2");

    // Only web2's template changes.
    t.d.fleet
        .edit("pipelines/apps/web2/health.j2", "note=", "web2=2\nnote=");
    let rev2 = t.d.fleet.commit("web2 2");
    let run = t.d.deploy("canary");
    run.code(0);
    assert_eq!(t.process("web"), web, "web's server was restarted");
    let host = &run.json()["hosts"][0];
    assert_eq!(host["status"], "deployed", "{host:#}");
    assert_eq!(host["switched"], serde_json::json!(["web2"]));
    assert_eq!(host["runs"]["web"]["release"], rev2.as_str(), "{host:#}");
    assert_eq!(host["runs"]["web2"]["release"], rev2.as_str(), "{host:#}");
    assert!(
        run.stderr.contains("alpha-1 web unchanged ✓"),
        "{}",
        run.stderr
    );
    for step in ["upload", "switch", "start"] {
        assert!(
            !run.stderr.contains(&format!("alpha-1 web {step}")),
            "web was not to {step}:\n{}",
            run.stderr
        );
    }
    assert!(t.alive("web"));
    let now2 = t.process("web2");
    assert_ne!(now2.0, web2.0);
    assert_eq!(now2.1, 2);
    assert!(t.serving2().unwrap().contains("web2=2"));
    assert_eq!(t.deployed(), rev2);
    assert_eq!(
        t.status(),
        [row("web", &rev2, &rev1), row("web2", &rev2, &rev2)]
    );

    // Back to rev1 by hand: web2 goes back, web stays as it is.
    let run = t.fleetgate(&["rollback", "--client", "alpha"]);
    run.code(0);
    assert!(!t.serving2().unwrap().contains("web2=2"), "{}", run.stderr);
    assert_eq!(t.process("web"), web, "web's server was restarted");
    assert_eq!(t.process("web2").1, 3);
    assert_eq!(
        t.status(),
        [row("web", &rev1, &rev1), row("web2", &rev1, &rev1)]
    );

    // A broken web2: rolled back, web untouched, the deployed ref stays.
    let deployed = t.deployed();
    t.d.fleet.write("pipelines/apps/web2/health.j2", "sick\n");
    t.d.fleet.commit("web2 broken");
    let run = t.d.deploy("canary");
    run.code(1);
    let host = &run.json()["hosts"][0];
    assert_eq!(host["status"], "rolled_back", "{host:#}");
    assert_eq!(host["switched"], serde_json::json!(["web2"]));
    assert_eq!(t.process("web"), web, "web's server was restarted");
    assert!(t.alive("web"));
    assert_eq!(t.deployed(), deployed);
    assert_eq!(
        t.status(),
        [row("web", &rev1, &rev1), row("web2", &rev1, &rev1)]
    );
}
