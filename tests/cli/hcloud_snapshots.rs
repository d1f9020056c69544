//! Snapshots before deploy and `restore`: the real binary against the
//! Hetzner Cloud stand-in (`hcloud_server.rs`), whose server `alpha-1`
//! points at a real sshd test host. Set up as `hcloud.rs`'s `fleet()`,
//! with alpha's app `web` made `rollback: freeze` (a snapshot by default).

use crate::common::Run;
use crate::deploy::DeployFleet;
use crate::hcloud_server::{HcloudServer, Outcome};

const TOKEN: &str = "hc-snap-token-7d21e0";

fn fleet() -> (DeployFleet, HcloudServer) {
    crate::leakscan::secret("the Hetzner Cloud test token (snapshots)", TOKEN);
    let d = crate::hcloud::alpha_on_hcloud();
    d.fleet.edit(
        "pipelines/apps/web/app.yaml",
        "rollback: safe",
        "rollback: freeze",
    );
    d.fleet
        .commit("alpha's hosts from Hetzner Cloud; web migrates data");
    let hcloud = crate::hcloud::servers(TOKEN, &[("alpha-1", "alpha"), ("beta-1", "beta")]);
    (d, hcloud)
}

fn run(d: &DeployFleet, hcloud: &HcloudServer, args: &[&str]) -> Run {
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    let url = hcloud.url();
    d.fleet.run_env(
        args,
        &[
            ("FLEETGATE_SSH_KEY", key.as_str()),
            ("HCLOUD_TOKEN", TOKEN),
            ("HCLOUD_ENDPOINT", url.as_str()),
            ("GITHUB_RUN_ID", ""),
        ],
    )
}

fn deploy(d: &DeployFleet, hcloud: &HcloudServer) -> Run {
    run(
        d,
        hcloud,
        &[
            "deploy", "--stage", "canary", "--rev", "HEAD", "--format", "json",
        ],
    )
}

fn no_token(out: &Run) {
    assert!(!out.stdout.contains(TOKEN) && !out.stderr.contains(TOKEN));
}

#[test]
fn a_freeze_app_is_snapshotted_before_each_change_and_the_newest_three_are_kept() {
    let (d, hcloud) = fleet();
    let alpha1 = hcloud.server_id("alpha-1");
    // Another client's snapshot and a hand-made one of the same server:
    // never fleetgate's to delete.
    hcloud.add_snapshot(
        "beta-1",
        &[("fleetgate/client", "beta")],
        "2020-01-01T00:00:00+00:00",
    );
    let manual = hcloud.add_snapshot(
        "alpha-1",
        &[("made", "by-hand")],
        "2020-01-01T00:00:00+00:00",
    );
    let mut images = Vec::new();
    for i in 1..=4 {
        if i > 1 {
            d.set("alpha", "note", &format!("change-{i}"));
            d.fleet.commit(&format!("change {i}"));
        }
        let out = deploy(&d, &hcloud);
        out.code(0);
        no_token(&out);
        let image = out.json()["hosts"][0]["snapshot"]
            .as_u64()
            .expect("a snapshot id");
        images.push(image);
        let ours: Vec<u64> = hcloud
            .snapshots()
            .iter()
            .filter(|s| s.server == Some(alpha1) && s.labels.contains_key("fleetgate/client"))
            .map(|s| s.id)
            .collect();
        let want: Vec<u64> = images[images.len().saturating_sub(3)..].to_vec();
        assert_eq!(ours, want, "deploy {i}: the newest three kept");
    }
    let last = hcloud
        .snapshots()
        .into_iter()
        .find(|s| s.id == images[3])
        .unwrap();
    assert_eq!(last.status, "available");
    assert_eq!(last.labels["fleetgate/client"], "alpha");
    let head = d.fleet.git(&["rev-parse", "HEAD"]);
    assert_eq!(last.labels["fleetgate/rev"], head.trim()[..12]);
    let run = &last.labels["fleetgate/run"];
    assert!(!run.is_empty() && !run.contains(':'), "{run}");
    assert!(hcloud.snapshots().iter().any(|s| s.id == manual));
    assert_eq!(hcloud.snapshots().len(), 3 + 2);

    // Nothing changes: no snapshot.
    let out = deploy(&d, &hcloud);
    out.code(0);
    assert!(out.json()["hosts"][0].get("snapshot").is_none());
    assert_eq!(hcloud.snapshots().len(), 5);
    hcloud.assert_clean();
}

#[test]
fn a_snapshot_that_fails_stops_the_host_before_any_change() {
    let (d, hcloud) = fleet();
    deploy(&d, &hcloud).code(0);
    let before = d.serving("alpha-1").unwrap();
    let state = d.state("alpha-1", "alpha");
    d.set("alpha", "version", "\"2\"");
    d.fleet.commit("web 2");
    hcloud.next_actions(&[Outcome::Error(
        "image_create_failed".into(),
        "disk busy".into(),
    )]);
    let out = deploy(&d, &hcloud);
    out.code(3);
    no_token(&out);
    let host = &out.json()["hosts"][0];
    assert_eq!(host["failure"]["step"], "snapshot", "{host}");
    assert!(
        host["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("disk busy"),
        "{host}"
    );
    assert_eq!(
        d.serving("alpha-1").unwrap(),
        before,
        "nothing changed on the host"
    );
    assert_eq!(d.state("alpha-1", "alpha"), state);
    assert_eq!(
        hcloud.snapshots().len(),
        1,
        "the failed one is gone, the first kept"
    );
    hcloud.assert_clean();
}

#[test]
fn a_failed_freeze_app_names_its_snapshot_and_the_restore_command() {
    let (d, hcloud) = fleet();
    deploy(&d, &hcloud).code(0);
    d.set("alpha", "version", "\"2\"")
        .set("alpha", "health", "sick");
    d.fleet.commit("web 2, broken");
    let out = run(
        &d,
        &hcloud,
        &["deploy", "--stage", "canary", "--rev", "HEAD"],
    );
    out.code(1);
    no_token(&out);
    let image = hcloud.snapshots().iter().map(|s| s.id).max().unwrap();
    let command = format!("fleetgate restore --client alpha --host alpha-1 --snapshot {image}");
    assert!(
        out.stdout.contains(&format!(
            "RESTORE: snapshot {image} was taken before alpha/web@alpha-1 changed"
        )) && out.stdout.contains(&command),
        "{}",
        out.stdout
    );
    // The JSON names both too: a second deploy of the same commit judges
    // the frozen release again, a change, so a new snapshot first.
    let out = deploy(&d, &hcloud);
    out.code(1);
    let host = &out.json()["hosts"][0];
    let image = host["snapshot"].as_u64().expect("a snapshot");
    assert_eq!(
        host["restore"],
        format!("fleetgate restore --client alpha --host alpha-1 --snapshot {image}")
    );
    hcloud.assert_clean();
}

#[test]
fn restore_rebuilds_the_server_from_its_newest_snapshot_behind_an_approval() {
    let (d, hcloud) = fleet();
    d.fleet.edit(
        "pipelines/pipeline.yaml",
        "group: canary\n",
        "group: canary\n    approval:\n      required: true\n      approvers: [alice]\n",
    );
    d.fleet.commit("canary needs alice");
    deploy(&d, &hcloud).code(0);
    d.set("alpha", "note", "second");
    d.fleet.commit("second");
    deploy(&d, &hcloud).code(0);
    let alpha1 = hcloud.server_id("alpha-1");
    let ids: Vec<u64> = hcloud.snapshots().iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 2);
    let restore = |extra: &[&str]| {
        let mut args = vec!["restore", "--client", "alpha", "--host", "alpha-1"];
        args.extend(extra);
        run(&d, &hcloud, &args)
    };

    // Not approved: waiting (4); not an approver: refused (1); nothing rebuilt.
    let out = restore(&[]);
    out.code(4);
    assert!(
        out.stderr.contains("--approved-by one of alice"),
        "{}",
        out.stderr
    );
    restore(&["--approved-by", "mallory"]).code(1);
    // Not fleetgate's snapshot of this server: refused (2).
    let other = hcloud.add_snapshot(
        "beta-1",
        &[("fleetgate/client", "alpha")],
        "2020-01-01T00:00:00+00:00",
    );
    restore(&["--approved-by", "alice", "--snapshot", &other.to_string()]).code(2);
    assert!(hcloud.rebuilds().is_empty());

    // The newest by default, then its health checked again.
    let out = restore(&["--approved-by", "alice", "--format", "json"]);
    out.code(0);
    no_token(&out);
    let rebuilds = hcloud.rebuilds();
    assert_eq!(rebuilds.len(), 1, "{rebuilds:?}");
    assert_eq!((rebuilds[0].server, rebuilds[0].image), (alpha1, ids[1]));
    let host = &out.json()["hosts"][0];
    assert_eq!(host["status"], "unchanged", "{host}");
    assert!(!host["checks"].as_array().unwrap().is_empty(), "{host}");

    // An older one by id.
    restore(&["--approved-by", "alice", "--snapshot", &ids[0].to_string()]).code(0);
    assert_eq!(hcloud.rebuilds().len(), 2);
    hcloud.assert_clean();
}
