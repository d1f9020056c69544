//! `fleetgate status --drift`: what hosts keep under their deploy root that
//! the repo does not name (orphans), on real sshd hosts.

use serde_json::json;

use crate::common::Run;
use crate::deploy::DeployFleet;

fn status(d: &DeployFleet, args: &[&str]) -> Run {
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    let mut all = vec!["status", "--drift"];
    all.extend(args);
    d.fleet.run_env(&all, &[("FLEETGATE_SSH_KEY", &key)])
}

#[test]
fn orphan_dirs_are_drift() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let rev = d.fleet.git(&["rev-parse", "HEAD"]);
    d.deploy("canary").code(0);
    let run = status(&d, &["--format", "json"]);
    run.code(0);
    assert_eq!(run.json()["orphans"], json!([]));

    // What a removed app leaves (its releases and state), and the dir of a
    // client that is not on this host.
    let root = &d.hosts.host("alpha-1").deploy_root;
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(root.join("alpha/web"))
        .arg(root.join("alpha/old-web"))
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::create_dir_all(root.join("ghost")).unwrap();
    let run = status(&d, &["--format", "json"]);
    run.code(1);
    assert_eq!(
        run.json()["orphans"],
        json!([
            {"host": "alpha-1", "client": "alpha", "app": "old-web", "current_rev": rev},
            {"host": "alpha-1", "client": "ghost", "app": null, "current_rev": null},
        ])
    );
    assert_eq!(
        run.json()["apps"][0]["drift"],
        json!([]),
        "the live app did not drift"
    );
    let run = status(&d, &[]);
    run.code(1);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("alpha") && l.contains("old-web"))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(
        line.contains("alpha-1") && line.contains("orphan: not in the repo"),
        "{line}"
    );

    // Without --drift, status only says what the repo names.
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    let run = d.fleet.run_env(
        &["status", "--format", "json"],
        &[("FLEETGATE_SSH_KEY", &key)],
    );
    run.code(0);
    assert!(run.json().get("orphans").is_none(), "{}", run.stdout);
}
