//! Removal is deployed like any change (issue 13): an app taken off a
//! client, or a client file deleted, is stopped on its hosts in its stage,
//! behind the same approval; `current` goes, the releases and the app's data
//! stay, and a deleted client's deployed ref is deleted. Real sshd hosts, a
//! real bare remote.

use crate::run::Pipeline;

/// Every start also stops what it replaces, and the app can be stopped.
fn with_stop_command(p: &Pipeline) {
    p.d.fleet.edit(
        "pipelines/apps/web/app.yaml",
        "  start: \"sh start.sh\"\n",
        "  start: \"sh start.sh\"\n  stop: \"kill $(cat ../../web.pid)\"\n",
    );
}

#[test]
fn an_app_taken_off_a_client_is_stopped_and_its_data_kept() {
    let p = Pipeline::undeployed(&[("alpha", "canary", &["alpha-1"])], "");
    with_stop_command(&p);
    // A second app, web2, on port ssh+2000, the same kind as web.
    for name in ["app.yaml", "start.sh.j2", "health.j2"] {
        let text = p.d.fleet.read(&format!("pipelines/apps/web/{name}"));
        p.d.fleet.write(
            &format!("pipelines/apps/web2/{name}"),
            &text.replace("host.port + 1000", "host.port + 2000"),
        );
    }
    p.d.fleet
        .edit("clients/alpha.yaml", "apps: [web]", "apps: [web, web2]");
    let c1 = p.push("alpha: web and web2");
    p.run(&"0".repeat(40), &c1, &[]).code(0);
    let port2 = p.d.hosts.host("alpha-1").port + 2000;
    assert!(crate::hosts::http_get(port2, "/health").is_some());
    let dir = p.d.hosts.host("alpha-1").deploy_root.join("alpha/web2");
    std::fs::write(dir.join("data.db"), "precious\n").unwrap();

    p.d.fleet
        .edit("clients/alpha.yaml", "apps: [web, web2]", "apps: [web]");
    let c2 = p.push("alpha: web2 goes");
    let run = p.run(&c1, &c2, &[]);
    run.code(0);
    assert!(
        run.stderr.contains("alpha-1 web2 remove ✓"),
        "{}",
        run.stderr
    );
    assert_eq!(
        crate::hosts::http_get(port2, "/health"),
        None,
        "web2 stopped"
    );
    assert!(p.serving("alpha-1").contains("version=1"), "web untouched");
    assert!(!dir.join("current").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("data.db")).unwrap(),
        "precious\n"
    );
    assert!(dir.join("releases").join(&c1).exists(), "releases kept");
    assert!(
        dir.join("removed_at").exists(),
        "when, for the releases' retention"
    );
    let note = p.remote_note(&c2);
    assert_eq!(
        note["stages"]["canary"]["hosts"][0]["runs"]["web2"],
        "nothing"
    );
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/canary/alpha"),
        Some(c2)
    );
}

#[test]
fn a_deleted_client_is_taken_down_behind_production_approval() {
    let p = Pipeline::undeployed(
        &[
            ("alpha", "canary", &["alpha-1"]),
            ("beta", "production", &["beta-1"]),
        ],
        "    approval:\n      required: true\n      approvers: [alice, bob]\n",
    );
    with_stop_command(&p);
    let c1 = p.push("web: a stop command");
    let zero = "0".repeat(40);
    p.run(&zero, &c1, &[]).code(4);
    p.fleet_run(&["approve", "--rev", &c1, "--by", "alice"])
        .code(0);
    p.run(&zero, &c1, &[]).code(0);
    assert!(p.serving("beta-1").contains("version=1"));

    p.d.fleet.remove("clients/beta.yaml");
    let c2 = p.push("beta leaves");
    let run = p.run(&c1, &c2, &[]);
    // Production carries the removal out, so it waits for its approval.
    run.code(4);
    assert!(
        p.serving("beta-1").contains("version=1"),
        "not before approval"
    );
    p.fleet_run(&["approve", "--rev", &c2, "--by", "bob"])
        .code(0);
    let run = p.run(&c1, &c2, &[]);
    run.code(0);
    assert!(run.stderr.contains("beta-1 web remove ✓"), "{}", run.stderr);
    assert_eq!(p.serving("beta-1"), "", "beta's app is stopped");
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/production/beta"),
        None,
        "its ref is deleted"
    );
    let dir = p.d.hosts.host("beta-1").deploy_root.join("beta/web");
    assert!(dir.join("releases").exists(), "its releases stay");
    // Nothing left to do.
    let again = p.run(&c1, &c2, &[]);
    again.code(0);
    assert!(!again.stderr.contains("web remove"), "{}", again.stderr);
}

#[test]
fn a_host_taken_off_a_client_is_stopped_the_others_untouched() {
    let p = Pipeline::undeployed(&[("alpha", "canary", &["alpha-1", "alpha-2"])], "");
    with_stop_command(&p);
    let c1 = p.push("alpha on two hosts");
    p.run(&"0".repeat(40), &c1, &[]).code(0);
    assert!(p.serving("alpha-2").contains("version=1"));
    // alpha-2's entry is the last of the hosts list.
    let path = "clients/alpha.yaml";
    let text = p.d.fleet.read(path);
    let start = text.find("  - name: alpha-2").unwrap();
    let end = text[start..].find("vars:").unwrap() + start;
    p.d.fleet
        .write(path, &format!("{}{}", &text[..start], &text[end..]));
    let c2 = p.push("alpha leaves alpha-2");
    let run = p.run(&c1, &c2, &[]);
    run.code(0);
    assert!(
        run.stderr.contains("alpha-2 web remove ✓"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("alpha-1 web remove"), "{}", run.stderr);
    assert_eq!(p.serving("alpha-2"), "", "stopped");
    assert!(p.serving("alpha-1").contains("version=1"), "untouched");
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/canary/alpha"),
        Some(c2)
    );
}
