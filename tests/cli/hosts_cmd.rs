//! `fleetgate hosts` and `fleetgate hosts trust` on real sshd hosts: keys
//! pinned by host name (`HostKeyAlias`), an unpinned host refused and then
//! trusted through a commit, a rebuilt server's new key refused and left
//! alone, a moved server still reached, hosts pinned by address (the form
//! before) still deployed and migrated.

use crate::common::Run;
use crate::deploy::DeployFleet;

const KNOWN: &str = "pipelines/known_hosts";

fn hosts(d: &DeployFleet, args: &[&str]) -> Run {
    let mut all = vec!["hosts"];
    all.extend_from_slice(args);
    d.fleet.run(&all)
}

/// (client, host, pinned_by) of `hosts --format json`.
fn pins(run: &Run) -> Vec<(String, String, Option<String>)> {
    run.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            assert_eq!(h["pinned"], h["pinned_by"].is_string(), "{h}");
            (
                h["client"].as_str().unwrap().to_string(),
                h["name"].as_str().unwrap().to_string(),
                h["pinned_by"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn row(client: &str, host: &str, by: Option<&str>) -> (String, String, Option<String>) {
    (client.into(), host.into(), by.map(str::to_string))
}

/// (host, result) of `hosts trust --format json`.
fn trusted(run: &Run) -> Vec<(String, String)> {
    run.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_string(),
                h["result"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn t(host: &str, result: &str) -> (String, String) {
    (host.into(), result.into())
}

#[test]
fn hosts_lists_every_host_pinned_by_name_by_address_or_not() {
    let d = DeployFleet::new(
        &[
            ("alpha", "canary", &["alpha-1"]),
            ("beta", "canary", &["beta-1", "beta-2"]),
        ],
        "",
    );
    let h = &d.hosts;
    let known = format!(
        "alpha-1 {}\n[127.0.0.1]:{} {}\n",
        h.host("alpha-1").host_key_pub,
        h.host("beta-1").port,
        h.host("beta-1").host_key_pub
    );
    d.fleet.write(KNOWN, &known);
    d.fleet.commit("beta-2 unpinned");
    let run = hosts(&d, &["--format", "json"]);
    run.code(0);
    assert_eq!(
        pins(&run),
        [
            row("alpha", "alpha-1", Some("name")),
            row("beta", "beta-1", Some("address")),
            row("beta", "beta-2", None),
        ]
    );
    let first = &run.json()[0];
    assert_eq!(first["address"], "127.0.0.1");
    assert_eq!(first["port"], h.host("alpha-1").port);
    assert_eq!(first["user"], crate::hosts::USER);

    let text = hosts(&d, &[]);
    text.code(0);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", text.stdout);
    assert!(lines[0].starts_with("CLIENT"), "{}", text.stdout);
    let port = h.host("alpha-1").port;
    assert!(
        lines[1].starts_with("alpha   alpha-1")
            && lines[1].contains(&format!("fleetgate-test@127.0.0.1:{port}"))
            && lines[1].ends_with("  pinned"),
        "{}",
        text.stdout
    );
    assert!(lines[2].contains("pinned (by address"), "{}", text.stdout);
    assert!(lines[3].ends_with("  unpinned"), "{}", text.stdout);
    assert!(text.stderr.contains("deprecated"), "{}", text.stderr);

    // --clients; the work tree (default) against a commit (--rev).
    d.fleet.write(KNOWN, "");
    let only = hosts(&d, &["--clients", "alpha", "--format", "json"]);
    assert_eq!(pins(only.code(0)), [row("alpha", "alpha-1", None)]);
    let at = hosts(
        &d,
        &["--clients", "alpha", "--rev", "HEAD", "--format", "json"],
    );
    assert_eq!(pins(at.code(0)), [row("alpha", "alpha-1", Some("name"))]);
    let unknown = hosts(&d, &["--clients", "nobody"]);
    assert!(
        unknown.code(2).stderr.contains("client `nobody`"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn an_unpinned_host_is_refused_then_trusted_through_a_commit_and_deployed() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.fleet.write(KNOWN, "# nobody pinned yet\n");
    let before = d.fleet.commit("alpha-1 not pinned");
    let refused = d.deploy("canary");
    refused.code(2);
    assert!(
        refused.stderr.contains("host `alpha-1`")
            && refused
                .stderr
                .contains("has no key in pipelines/known_hosts")
            && refused.stderr.contains("hosts trust"),
        "{}",
        refused.stderr
    );

    let run = hosts(&d, &["trust", "--format", "json"]);
    run.code(0);
    assert_eq!(trusted(&run), [t("alpha-1", "added")]);
    let key = &d.hosts.host("alpha-1").host_key_pub;
    let file = d.fleet.read(KNOWN);
    assert!(file.starts_with("# nobody pinned yet\n"), "{file}");
    assert!(file.contains(&format!("\nalpha-1 {key}\n")), "{file}");
    assert!(
        run.stderr.contains("not committed") && run.stderr.contains("merge request"),
        "{}",
        run.stderr
    );
    // Written, never committed.
    assert_eq!(d.fleet.git(&["rev-parse", "HEAD"]), before);
    assert_eq!(
        d.fleet.git(&["status", "--porcelain"]),
        "M pipelines/known_hosts"
    );
    // The fingerprint an operator compares with the server's.
    let fingerprint = run.json()[0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["type"] == "ssh-ed25519")
        .unwrap()["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let host_pub = d.hosts.dir.join("alpha-1/host_key.pub");
    let keygen = d
        .fleet
        .command("ssh-keygen")
        .arg("-lf")
        .arg(&host_pub)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&keygen.stdout).contains(&fingerprint));

    // Idempotent: a second trust adds nothing and says the host is pinned.
    let again = hosts(&d, &["trust"]);
    again.code(0);
    assert!(again.stdout.contains("pinned"), "{}", again.stdout);
    assert_eq!(d.fleet.read(KNOWN), file);

    d.fleet.commit("pin alpha-1 (reviewed)");
    let listed = hosts(&d, &["--format", "json"]);
    assert_eq!(
        pins(listed.code(0)),
        [row("alpha", "alpha-1", Some("name"))]
    );
    d.deploy("canary").code(0);
    assert!(d.serving("alpha-1").unwrap().contains("version=1"));
}

#[test]
fn a_rebuilt_server_with_a_new_key_is_refused_and_its_line_left_alone() {
    let mut d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.deploy("canary").code(0);
    d.hosts.rekey("alpha-1");
    d.set("alpha", "version", "\"2\"");
    d.fleet.commit("web 2");
    let refused = d.deploy("canary");
    refused.code(3);
    let message = refused.json()["hosts"][0]["failure"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("Host key verification failed"),
        "{message}"
    );

    let known = d.fleet.read(KNOWN);
    let run = hosts(&d, &["trust", "--format", "json"]);
    run.code(1);
    assert_eq!(trusted(&run), [t("alpha-1", "changed")]);
    assert_eq!(
        d.fleet.read(KNOWN),
        known,
        "a changed key is never rewritten"
    );
    assert_eq!(d.fleet.git(&["status", "--porcelain"]), "");
    assert!(
        run.stderr.contains("remove its old lines") && run.stderr.contains("by hand"),
        "{}",
        run.stderr
    );
    let text = hosts(&d, &["trust"]);
    text.code(1);
    assert!(
        text.stdout.contains("CHANGED, not rewritten"),
        "{}",
        text.stdout
    );

    // A human verified the new key and removed the old line: trusted again.
    d.fleet.write(KNOWN, "");
    hosts(&d, &["trust"]).code(0);
    d.fleet.commit("alpha-1 rebuilt: its new key (reviewed)");
    d.deploy("canary").code(0);
    assert!(d.serving("alpha-1").unwrap().contains("version=2"));
}

#[test]
fn a_server_pinned_by_name_is_reached_at_its_new_address() {
    let mut d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.deploy("canary").code(0);
    let known = d.fleet.read(KNOWN);
    d.hosts.move_port("alpha-1");
    d.write_client("alpha", "canary", &["alpha-1"], "2", "ok");
    d.fleet.commit("alpha-1 moved");
    assert_eq!(d.fleet.read(KNOWN), known, "no key changed");
    d.deploy("canary").code(0);
    assert!(d.serving("alpha-1").unwrap().contains("version=2"));
}

#[test]
fn hosts_pinned_by_address_still_deploy_and_trust_migrates_them() {
    let mut d = DeployFleet::new(&[("alpha", "canary", &["alpha-1", "alpha-2"])], "");
    d.fleet.write(KNOWN, &d.hosts.known_hosts_by_address());
    d.fleet.commit("pinned the old way");
    let check = d.fleet.run(&["check"]);
    check.code(0);
    assert!(
        check.stderr.contains("pinned by address")
            && check.stderr.contains("`alpha-1`, `alpha-2`")
            && check.stderr.contains("hosts trust"),
        "{}",
        check.stderr
    );
    let deployed = d.deploy("canary");
    deployed.code(0);
    assert!(
        deployed.stderr.contains("pinned by address"),
        "{}",
        deployed.stderr
    );

    // One host unreachable: trust copies the pinned keys anyway (nothing is
    // fetched to migrate), and the file says where each line came from.
    d.hosts.stop("alpha-2");
    let run = hosts(&d, &["trust", "--format", "json"]);
    run.code(0);
    assert_eq!(
        trusted(&run),
        [t("alpha-1", "migrated"), t("alpha-2", "migrated")]
    );
    let file = d.fleet.read(KNOWN);
    for h in ["alpha-1", "alpha-2"] {
        let key = &d.hosts.host(h).host_key_pub;
        assert!(file.contains(&format!("\n{h} {key}\n")), "{file}");
        assert!(
            file.contains(&format!("# alpha/{h}: copied from its address line")),
            "{file}"
        );
    }
    d.hosts.restart("alpha-2");
    d.fleet.commit("pin by name");
    let check = d.fleet.run(&["check"]);
    assert!(
        !check.code(0).stderr.contains("pinned by address"),
        "{}",
        check.stderr
    );
    // The address lines can go now: the names are what is checked.
    d.fleet.write(KNOWN, &d.hosts.known_hosts());
    d.set("alpha", "version", "\"2\"");
    d.fleet.commit("address lines removed");
    d.deploy("canary").code(0);
}

#[test]
fn an_unreachable_host_is_named_and_the_others_still_trusted() {
    let mut d = DeployFleet::new(
        &[
            ("alpha", "canary", &["alpha-1"]),
            ("beta", "canary", &["beta-1"]),
        ],
        "",
    );
    d.fleet.write(KNOWN, "");
    d.fleet.commit("nothing pinned");
    d.hosts.stop("beta-1");
    let run = hosts(&d, &["trust", "--timeout", "2s"]);
    run.code(3);
    assert!(
        run.stderr
            .contains("beta/beta-1: could not fetch its host keys"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("unreachable"), "{}", run.stdout);
    let file = d.fleet.read(KNOWN);
    assert!(file.contains("\nalpha-1 ssh-ed25519 "), "{file}");
    assert!(!file.contains("beta-1 "), "{file}");
    // --client: only that client's hosts are asked.
    d.hosts.restart("beta-1");
    let beta = hosts(&d, &["trust", "--client", "beta", "--format", "json"]);
    assert_eq!(trusted(beta.code(0)), [t("beta-1", "added")]);
    assert!(
        hosts(&d, &["trust", "--rev", "HEAD"])
            .code(2)
            .stderr
            .contains("--rev")
    );
}
