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

/// `status --drift --issues`: one issue for drift, listing per host what
/// differs and the command that converges it; edited while it stays (no
/// second issue), closed once the command was run and the orphan removed.
#[test]
fn drift_keeps_one_issue_with_the_command_that_converges() {
    use crate::forge::{Ci, envs, no_token};
    use crate::forge_server::Flavor;
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    // The scheduled check's webhook hears the drift too.
    let hook = crate::notify::Receiver::new(&[], 200);
    d.fleet.edit(
        "pipelines/pipeline.yaml",
        "on_failure:",
        &format!(
            "notify:\n  - url: {}\n    events: [check_failed]\non_failure:",
            hook.url("/drift")
        ),
    );
    d.fleet.commit("drift alerts to a webhook");
    let rev = d.fleet.git(&["rev-parse", "HEAD"]);
    d.deploy("canary").code(0);
    let ci = Ci::start(Flavor::Github);
    let env = ci.env("schedule", json!({"schedule": "17 5 * * 1"}), "dev");
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    let issues = |code: i32| {
        let mut all = envs(&env);
        all.push(("FLEETGATE_SSH_KEY", &key));
        let run = d.fleet.run_env(&["status", "--drift", "--issues"], &all);
        no_token(run.code(code));
        run
    };
    issues(0);
    assert!(ci.server.issues().is_empty());

    // Someone edits a file on the server by hand.
    let root = d.hosts.host("alpha-1").deploy_root.clone();
    std::fs::write(root.join("alpha/web/current/health"), "ok\nhand-edited\n").unwrap();
    issues(1);
    let open = ci.server.issues();
    assert_eq!(open.len(), 1, "{open:?}");
    let body = &open[0].body;
    assert!(body.starts_with("<!-- fleetgate:drift -->"), "{body}");
    assert!(body.contains("| alpha-1 | alpha | web |"), "{body}");
    assert!(body.contains("modified `health`"), "{body}");
    let converge = format!("fleetgate deploy --stage canary --rev {rev} --clients alpha");
    assert!(body.contains(&converge), "{body}");
    assert_eq!(open[0].title, "fleetgate: drift on 1 host(s)");
    let events = hook.json_events("/drift");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "check_failed");
    assert_eq!(events[0]["clients"], json!(["alpha"]));
    assert!(
        events[0]["summary"]
            .as_str()
            .unwrap()
            .starts_with("drift: 1 app(s) on their hosts differ"),
        "{}",
        events[0]
    );

    // An orphan too: the same issue, edited.
    std::fs::create_dir_all(root.join("ghost")).unwrap();
    issues(1);
    let open = ci.server.issues();
    assert_eq!(open.len(), 1, "{open:?}");
    assert!(
        open[0].body.contains("- alpha-1: `ghost`"),
        "{}",
        open[0].body
    );
    let again = issues(1);
    assert!(again.stderr.contains("is up to date"), "{}", again.stderr);
    // The forge is down (after its retries): the issue is not up to date,
    // so the job must fail: exit 3, not the verdict.
    ci.server.fail_next(502, 5);
    let down = issues(3);
    assert!(down.stderr.contains("502"), "{}", down.stderr);

    // The command from the issue repairs the file; the orphan is removed.
    let args: Vec<&str> = converge.split(' ').skip(1).collect();
    d.fleet
        .run_env(&args, &[("FLEETGATE_SSH_KEY", &key)])
        .code(0);
    std::fs::remove_dir(root.join("ghost")).unwrap();
    let gone = issues(0);
    assert!(gone.stderr.contains("closed #"), "{}", gone.stderr);
    let issue = &ci.server.issues()[0];
    assert!(!issue.open, "{issue:?}");
    assert!(
        ci.server.comments(issue.number)[0]
            .body
            .contains("finds every host as the repo renders it"),
    );

    // Outside CI --issues is an error; without --drift it is refused.
    let outside = d.fleet.run_env(
        &["status", "--drift", "--issues"],
        &[("FLEETGATE_SSH_KEY", &key)],
    );
    outside.code(2);
    d.fleet.run_env(&["status", "--issues"], &[]).code(2);
    ci.assert_valid();
}
