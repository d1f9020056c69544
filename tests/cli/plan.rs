//! `fleetgate plan`: exact per-client plans between two commits.

use crate::common::{Fleet, example_secret_values, filters, plan_clients};

const WHOAMI_IMAGE: &str = "docker.io/traefik/whoami:v1.11.0@sha256:200689790a0a0ea48ca45992e0450bc26ccab5307375b41c84dfc4f2475937ab";
const WHOAMI_NEXT: &str = "docker.io/traefik/whoami:v1.11.1@sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn apps(plan: &serde_json::Value, client: &str) -> Vec<(String, String)> {
    let c = plan["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == client)
        .unwrap_or_else(|| panic!("{client} not in plan: {plan:#}"));
    c["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[test]
fn one_client_file_changed() {
    let fleet = Fleet::example();
    fleet.edit(
        "clients/alpha.yaml",
        "whoami_port: 8080",
        "whoami_port: 8090",
    );
    fleet.commit("alpha: move whoami to 8090");
    let plan = fleet.plan_json("HEAD~1", "HEAD");
    assert_eq!(plan_clients(&plan), ["alpha"]);
    assert_eq!(plan["unaffected"], 2);
    let alpha = &plan["clients"][0];
    assert_eq!(alpha["stage"], "canary");
    assert_eq!(alpha["hosts"], serde_json::json!(["alpha-1"]));
    assert_eq!(alpha["reasons"], serde_json::json!(["clients/alpha.yaml"]));
    assert_eq!(apps(&plan, "alpha"), [pair("whoami", "update")]);
    // The route moves with it: the routes file says the new port.
    let routes = &alpha["apps"][0]["files"][0];
    assert_eq!(routes["path"], ".fleetgate/routes");
    let diff = routes["diff"].as_str().unwrap();
    assert!(
        diff.contains(
            "\n-whoami.alpha.example.org/ -> 127.0.0.1:8080 service web health /health\n"
        ),
        "{diff}"
    );
    assert!(
        diff.contains("\n+whoami.alpha.example.org/ -> 127.0.0.1:8090"),
        "{diff}"
    );
    let file = &alpha["apps"][0]["files"][1];
    assert_eq!(file["path"], "compose.yaml");
    let diff = file["diff"].as_str().unwrap();
    assert!(diff.contains("\n-    ports: [\"8080:8080\"]\n"), "{diff}");
    assert!(diff.contains("\n+    ports: [\"8090:8090\"]\n"), "{diff}");

    let text = fleet.run(&["plan", "--base", "HEAD~1", "--head", "HEAD"]);
    text.code(0);
    let markdown = fleet.run(&[
        "plan", "--base", "HEAD~1", "--head", "HEAD", "--format", "markdown",
    ]);
    markdown.code(0);
    insta::with_settings!({filters => filters()}, {
        insta::assert_snapshot!("one_client_text", text.stdout);
        insta::assert_snapshot!("one_client_markdown", markdown.stdout);
    });
}

#[test]
fn shared_template_change_marks_only_clients_whose_output_changes() {
    let fleet = Fleet::example();
    // whoami is used by all three clients, but this line renders only for canary clients.
    fleet.edit(
        "pipelines/apps/whoami/app.env.j2",
        "API_TOKEN=",
        "{% if client.group == \"canary\" %}WHOAMI_VERBOSE=1\n{% endif %}API_TOKEN=",
    );
    fleet.commit("whoami: verbose on canaries");
    let plan = fleet.plan_json("HEAD~1", "HEAD");
    assert_eq!(plan_clients(&plan), ["alpha"]);
    assert_eq!(plan["unaffected"], 2);
    assert_eq!(
        plan["clients"][0]["reasons"],
        serde_json::json!(["pipelines/apps/whoami/app.env.j2"])
    );

    // A change to an app only some clients run: only those.
    fleet.edit(
        "pipelines/apps/zitadel/zitadel.env.j2",
        "ZITADEL_EXTERNALPORT=443",
        "ZITADEL_EXTERNALPORT=8443",
    );
    fleet.commit("zitadel: external port");
    let plan = fleet.plan_json("HEAD~1", "HEAD");
    assert_eq!(plan_clients(&plan), ["beta"]);
    assert_eq!(apps(&plan, "beta"), [pair("zitadel", "update")]);
}

#[test]
fn image_bump_touches_every_client_running_it() {
    let fleet = Fleet::example();
    fleet.edit("pipelines/apps/whoami/app.yaml", WHOAMI_IMAGE, WHOAMI_NEXT);
    fleet.commit("whoami 1.11.1");
    let plan = fleet.plan_json("HEAD~1", "HEAD");
    // Sorted by stage order (canary first), then name.
    assert_eq!(plan_clients(&plan), ["alpha", "beta", "gamma"]);
    for client in plan["clients"].as_array().unwrap() {
        let whoami = &client["apps"][0];
        assert_eq!(whoami["name"], "whoami");
        assert_eq!(
            whoami["images"],
            serde_json::json!([{"name": "web", "from": WHOAMI_IMAGE, "to": WHOAMI_NEXT}])
        );
    }
    // gamma's two hosts render compose.yaml differently (it names the host):
    // one diff per host, each saying which host it is for.
    let gamma: Vec<(&str, &serde_json::Value)> = plan["clients"][2]["apps"][0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap(), &f["hosts"]))
        .collect();
    assert_eq!(
        gamma,
        [
            ("compose.yaml", &serde_json::json!(["gamma-1"])),
            ("compose.yaml", &serde_json::json!(["gamma-2"]))
        ]
    );
}

#[test]
fn rotated_secret_is_named_and_its_value_appears_nowhere() {
    let fleet = Fleet::example();
    let before = example_secret_values(&fleet);
    let rotated = "Rotated-Beta-Token-7f3a9c";
    fleet.sops_set("secrets/clients/beta.sops.yaml", "api_token", rotated);
    fleet.commit("beta: rotate api token");
    let plan = fleet.plan_json("HEAD~1", "HEAD");
    assert_eq!(plan_clients(&plan), ["beta"]);
    assert_eq!(plan["secrets_compared"], true);
    let whoami = &plan["clients"][0]["apps"][0];
    assert_eq!(whoami["secrets_changed"], serde_json::json!(["api_token"]));
    let diff = whoami["files"][0]["diff"].as_str().unwrap();
    // The reviewer sees that it changed (masked, with a keyed fingerprint) ...
    let minus = diff.lines().find(|l| l.starts_with("-API_TOKEN=")).unwrap();
    let plus = diff.lines().find(|l| l.starts_with("+API_TOKEN=")).unwrap();
    assert!(
        minus.starts_with("-API_TOKEN=••••") && plus.starts_with("+API_TOKEN=••••"),
        "{diff}"
    );
    assert_ne!(minus[1..], plus[1..]);

    // ... and no byte of any output carries a value: every format, every log.
    for args in [
        vec!["plan", "--base", "HEAD~1", "--head", "HEAD"],
        vec![
            "plan", "--base", "HEAD~1", "--head", "HEAD", "--format", "markdown",
        ],
        vec![
            "plan", "--base", "HEAD~1", "--head", "HEAD", "--format", "json",
        ],
        vec![
            "plan",
            "--base",
            "HEAD~1",
            "--head",
            "HEAD",
            "-vv",
            "--log-format",
            "json",
        ],
        vec!["plan", "--base", "HEAD~1", "--head", "HEAD", "-vv"],
    ] {
        let run = fleet.run(&args);
        run.code(0);
        for secret in before.iter().map(String::as_str).chain([rotated]) {
            assert!(
                !run.all().contains(secret),
                "{args:?} printed a secret value"
            );
        }
    }
}

/// Pins host `name`'s key in the fleet's known_hosts, as an operator adding
/// a host must (every command refuses a host without one).
fn pin(fleet: &Fleet, name: &str) {
    let known = fleet.read("pipelines/known_hosts");
    fleet.write(
        "pipelines/known_hosts",
        &format!(
            "{known}{name} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIulpxsP7LMTnHHQLwYU2WEkTUY79ISya74au5cyCV8m\n"
        ),
    );
}

/// Gives client beta a second host, `beta-2` at 203.0.113.21 (not pinned).
fn add_beta_2(fleet: &Fleet) {
    fleet.edit(
        "clients/beta.yaml",
        "    deploy_root: /opt/fleetgate\n",
        "    deploy_root: /opt/fleetgate\n  - name: beta-2\n    address: 203.0.113.21\n",
    );
}

#[test]
fn client_added_and_removed() {
    let fleet = Fleet::example();
    fleet.write(
        "clients/delta.yaml",
        "domain: delta.example.org\ngroup: production\napps: [whoami]\nhosts:\n  - name: delta-1\n    address: 203.0.113.40\nvars:\n  whoami_port: 8080\n",
    );
    fleet.sops_encrypt(
        "secrets/clients/delta.sops.yaml",
        "api_token: delta-token\n",
    );
    pin(&fleet, "delta-1");
    fleet.commit("add delta");
    let plan = fleet.plan_json("HEAD~1", "HEAD");
    assert_eq!(plan_clients(&plan), ["delta"]);
    assert_eq!(apps(&plan, "delta"), [pair("whoami", "add")]);
    assert_eq!(plan["unaffected"], 3);
    let files: Vec<&str> = plan["clients"][0]["apps"][0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, [".fleetgate/routes", "app.env", "compose.yaml"]);
    assert!(
        plan["clients"][0]["apps"][0]["files"][0]["diff"]
            .as_str()
            .unwrap()
            .starts_with("--- /dev/null\n")
    );

    fleet
        .remove("clients/delta.yaml")
        .remove("secrets/clients/delta.sops.yaml");
    fleet.commit("remove delta");
    let plan = fleet.plan_json("HEAD~1", "HEAD");
    assert_eq!(plan_clients(&plan), ["delta"]);
    assert_eq!(plan["clients"][0]["stage"], "production");
    assert_eq!(plan["clients"][0]["hosts"], serde_json::json!([]));
    assert_eq!(apps(&plan, "delta"), [pair("whoami", "remove")]);
}

#[test]
fn host_added() {
    let fleet = Fleet::example();
    add_beta_2(&fleet);
    pin(&fleet, "beta-2");
    fleet.commit("beta: second host");
    let plan = fleet.plan_json("HEAD~1", "HEAD");
    assert_eq!(plan_clients(&plan), ["beta"]);
    let beta = &plan["clients"][0];
    assert_eq!(beta["hosts"], serde_json::json!(["beta-1", "beta-2"]));
    assert_eq!(beta["hosts_added"], serde_json::json!(["beta-2"]));
    // Every app gets its files on the new host, and only there.
    for app in beta["apps"].as_array().unwrap() {
        assert_eq!(app["action"], "update");
        for f in app["files"].as_array().unwrap() {
            assert_eq!(f["hosts"], serde_json::json!(["beta-2"]), "{f:#}");
        }
    }
}

/// A plan checks pinned keys where its change can break them: a host it
/// adds must be pinned; a client whose hosts and known_hosts are the same
/// at both commits keeps its verdict, unread (check checks every host).
#[test]
fn a_plan_checks_the_pins_its_change_can_move() {
    let fleet = Fleet::example();
    add_beta_2(&fleet);
    fleet.commit("beta: second host, not pinned");
    let refused = fleet.run(&["plan", "--base", "HEAD~1", "--head", "HEAD"]);
    refused.code(2);
    assert!(
        refused.stderr.contains("clients/beta.yaml")
            && refused
                .stderr
                .contains("host `beta-2` (203.0.113.21) has no key in pipelines/known_hosts"),
        "{}",
        refused.stderr
    );
    // The next change leaves beta's hosts and known_hosts alone: the plan
    // shows it; `check` (and deploy) still refuse the unpinned host.
    fleet.edit(
        "clients/beta.yaml",
        "whoami_port: 8080",
        "whoami_port: 8081",
    );
    fleet.commit("beta: port 8081");
    let plan = fleet.plan_json("HEAD~1", "HEAD");
    assert_eq!(plan_clients(&plan), ["beta"]);
    let check = fleet.run(&["check"]);
    check.code(2);
    assert!(check.stderr.contains("host `beta-2`"), "{}", check.stderr);
    // Pinning it is a change to known_hosts: every client is checked.
    pin(&fleet, "beta-2");
    fleet.commit("pin beta-2");
    fleet.plan_json("HEAD~1", "HEAD");
}

#[test]
fn no_op_commit_is_an_empty_plan() {
    let fleet = Fleet::example();
    fleet.write("README.md", "# our fleet\n");
    fleet.commit("docs only");
    let run = fleet.run(&[
        "plan", "--base", "HEAD~1", "--head", "HEAD", "--format", "json",
    ]);
    run.code(0);
    let plan = run.json();
    assert_eq!(plan["clients"], serde_json::json!([]));
    assert_eq!(plan["unaffected"], 3);
    let text = fleet.run(&["plan", "--base", "HEAD~1", "--head", "HEAD"]);
    text.code(0);
    assert!(
        text.stdout.contains(": 0 clients change, 3 unaffected"),
        "{}",
        text.stdout
    );
}

#[test]
fn revert_commit_plans_back_to_the_earlier_state() {
    let fleet = Fleet::example();
    fleet.edit("pipelines/apps/whoami/app.yaml", WHOAMI_IMAGE, WHOAMI_NEXT);
    fleet.commit("whoami 1.11.1");
    fleet.git(&["revert", "--no-edit", "HEAD"]);
    let forward = fleet.plan_json("HEAD~2", "HEAD~1");
    let back = fleet.plan_json("HEAD~1", "HEAD");
    assert_eq!(plan_clients(&back), ["alpha", "beta", "gamma"]);
    for (f, b) in forward["clients"]
        .as_array()
        .unwrap()
        .iter()
        .zip(back["clients"].as_array().unwrap())
    {
        assert_eq!(
            f["apps"][0]["images"][0]["from"],
            b["apps"][0]["images"][0]["to"]
        );
        assert_eq!(
            f["apps"][0]["images"][0]["to"],
            b["apps"][0]["images"][0]["from"]
        );
    }
    // Across the change and its revert, nothing changes at all.
    let net = fleet.plan_json("HEAD~2", "HEAD");
    assert_eq!(net["clients"], serde_json::json!([]));
}

#[test]
fn without_a_key_plan_names_changed_secret_files_and_keys() {
    let fleet = Fleet::example();
    fleet.sops_set(
        "secrets/clients/gamma.sops.yaml",
        "api_token",
        "gamma-rotated",
    );
    fleet.sops_set(
        "secrets/clients/gamma.sops.yaml",
        "backup_token",
        "gamma-backup",
    );
    fleet.commit("gamma: rotate token, add backup token");
    let fleet = fleet.without_key();
    let run = fleet.run(&[
        "plan", "--base", "HEAD~1", "--head", "HEAD", "--format", "json",
    ]);
    run.code(0);
    let plan = run.json();
    assert_eq!(plan["secrets_compared"], false);
    assert_eq!(plan_clients(&plan), ["gamma"]);
    assert_eq!(
        plan["clients"][0]["reasons"],
        serde_json::json!(["secrets/clients/gamma.sops.yaml"])
    );
    // Without values, every declared key of a changed file may have changed;
    // backup_token is declared by no app, so nothing gamma runs depends on it.
    assert_eq!(
        apps(&plan, "gamma"),
        [
            pair("authentik", "update"),
            pair("nextcloud", "update"),
            pair("whoami", "update")
        ]
    );
    assert_eq!(
        plan["clients"][0]["apps"][0]["secrets_changed"],
        serde_json::json!(["authentik_db_password", "authentik_secret_key"])
    );
    assert_eq!(
        plan["clients"][0]["apps"][1]["secrets_changed"],
        serde_json::json!(["nextcloud_admin_password", "nextcloud_db_password"])
    );
    assert_eq!(
        plan["clients"][0]["apps"][2]["secrets_changed"],
        serde_json::json!(["api_token"])
    );
    assert!(
        run.stderr.contains("secret values are not compared"),
        "{}",
        run.stderr
    );
    let md = fleet.run(&[
        "plan", "--base", "HEAD~1", "--head", "HEAD", "--format", "markdown",
    ]);
    assert!(
        md.stdout
            .contains("secret values were not compared (no decryption key in this job)"),
        "{}",
        md.stdout
    );
    assert!(!md.all().contains("gamma-rotated"));
}

#[test]
fn plan_hash_is_stable_and_follows_the_plan() {
    let fleet = Fleet::example();
    fleet.edit(
        "clients/alpha.yaml",
        "whoami_port: 8080",
        "whoami_port: 8090",
    );
    fleet.commit("alpha port");
    let a = fleet.plan_json("HEAD~1", "HEAD");
    let b = fleet.plan_json("HEAD~1", "HEAD");
    assert_eq!(a["plan_hash"], b["plan_hash"]);
    assert_eq!(a["plan_hash"].as_str().unwrap().len(), 64);
    // Another clone (another machine) computes the same hash.
    let other = Fleet::empty();
    other.git(&[
        "fetch",
        "-q",
        fleet.root.to_str().unwrap(),
        "main:refs/heads/copy",
    ]);
    let c = other.plan_json("copy~1", "copy");
    assert_eq!(a["plan_hash"], c["plan_hash"]);

    fleet.edit(
        "clients/alpha.yaml",
        "whoami_port: 8090",
        "whoami_port: 8091",
    );
    fleet.commit("alpha port again");
    let d = fleet.plan_json("HEAD~2", "HEAD");
    assert_ne!(a["plan_hash"], d["plan_hash"]);
}

#[test]
fn plan_reads_commits_and_leaves_the_work_tree_alone() {
    let fleet = Fleet::example();
    fleet.edit(
        "clients/alpha.yaml",
        "whoami_port: 8080",
        "whoami_port: 8090",
    );
    fleet.commit("alpha port");
    // An uncommitted, broken edit does not affect planning committed revisions.
    fleet.write("clients/beta.yaml", "not: [valid");
    let plan = fleet.plan_json("HEAD~1", "HEAD");
    assert_eq!(plan_clients(&plan), ["alpha"]);
    assert_eq!(fleet.git(&["status", "--porcelain"]), "M clients/beta.yaml");
}

#[test]
fn bad_revisions_and_broken_heads_are_exit_2() {
    let fleet = Fleet::example();
    let run = fleet.run(&["plan", "--base", "HEAD", "--head", "nope"]);
    run.code(2);
    assert!(
        run.stderr.contains("resolve revision `nope`"),
        "{}",
        run.stderr
    );

    fleet.edit(
        "clients/alpha.yaml",
        "group: canary",
        "group: canary\nextra: 1",
    );
    let head = fleet.commit("broken alpha");
    let run = fleet.run(&["plan", "--base", "HEAD~1", "--head", "HEAD"]);
    run.code(2);
    assert!(
        run.stderr
            .contains("clients/alpha.yaml:4: extra: unknown field `extra`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("the fleet at commit {}", &head[..12])),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout, "", "no plan is printed for a broken head");
}

#[test]
fn markdown_comment_for_a_many_sided_change() {
    let fleet = Fleet::example();
    fleet.edit("pipelines/apps/whoami/app.yaml", WHOAMI_IMAGE, WHOAMI_NEXT);
    add_beta_2(&fleet);
    fleet.sops_set(
        "secrets/clients/gamma.sops.yaml",
        "nextcloud_admin_password",
        "Rotated-Admin-9",
    );
    pin(&fleet, "beta-2");
    fleet.commit("whoami 1.11.1, beta-2, rotate gamma's nextcloud admin");
    let run = fleet.run(&[
        "plan", "--base", "HEAD~1", "--head", "HEAD", "--format", "markdown",
    ]);
    run.code(0);
    assert!(!run.all().contains("Rotated-Admin-9"));
    insta::with_settings!({filters => filters()}, {
        insta::assert_snapshot!("many_sided_markdown", run.stdout);
    });
}

/// A template replaced by a symlink: without the refusal, the plan would show
/// (and a deploy would ship) the link's target path as the file's content.
#[test]
fn a_symlinked_template_is_refused_not_planned() {
    let fleet = Fleet::example();
    fleet.remove("pipelines/apps/whoami/app.env.j2");
    crate::check::symlink(
        &fleet,
        "compose.yaml.j2",
        "pipelines/apps/whoami/app.env.j2",
    );
    fleet.commit("app.env.j2 is a link");
    let run = fleet.run(&["plan", "--base", "HEAD~1", "--head", "HEAD"]);
    run.code(2);
    assert!(
        run.stderr.contains(
            "pipelines/apps/whoami/app.env.j2: is a symlink; fleet files must be regular files"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout, "", "no plan is printed");
}

/// A route is part of the release: its rendered form is the release file
/// `.fleetgate/routes`, so a changed host name is planned like a changed
/// file, for the clients whose routes change only.
#[test]
fn a_changed_route_host_name_is_a_change_of_the_routes_file() {
    let fleet = Fleet::example();
    // The example's whoami route, its host name from a client var.
    fleet
        .edit(
            "pipelines/apps/whoami/app.yaml",
            "hosts: [\"whoami.{{ client.domain }}\"]",
            "hosts: [\"{{ client.vars.whoami_host }}\"]",
        )
        .edit(
            "pipelines/apps/whoami/app.yaml",
            "https://whoami.{{ client.domain }}/health",
            "https://{{ client.vars.whoami_host }}/health",
        );
    for client in ["alpha", "beta", "gamma"] {
        fleet.edit(
            &format!("clients/{client}.yaml"),
            "  whoami_port: 8080",
            &format!("  whoami_port: 8080\n  whoami_host: whoami.{client}.example.org"),
        );
    }
    fleet.commit("whoami behind the proxy");
    fleet.edit(
        "clients/alpha.yaml",
        "whoami_host: whoami.alpha.example.org",
        "whoami_host: who.alpha.example.org",
    );
    fleet.commit("alpha: whoami at who.");

    let plan = fleet.plan_json("HEAD~1", "HEAD");
    assert_eq!(plan_clients(&plan), ["alpha"]);
    assert_eq!(plan["unaffected"], 2);
    assert_eq!(apps(&plan, "alpha"), [pair("whoami", "update")]);
    let files = plan["clients"][0]["apps"][0]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{files:#?}");
    let routes = &files[0];
    assert_eq!(routes["path"], ".fleetgate/routes");
    let diff = routes["diff"].as_str().unwrap();
    assert!(
        diff.contains(
            "\n-whoami.alpha.example.org/ -> 127.0.0.1:8080 service web health /health\n"
        ),
        "{diff}"
    );
    assert!(
        diff.contains("\n+who.alpha.example.org/ -> 127.0.0.1:8080 service web health /health\n"),
        "{diff}"
    );

    let text = fleet.run(&["plan", "--base", "HEAD~1", "--head", "HEAD"]);
    text.code(0);
    for expected in [
        ".fleetgate/routes",
        "-whoami.alpha.example.org/ -> 127.0.0.1:8080",
        "+who.alpha.example.org/ -> 127.0.0.1:8080",
    ] {
        assert!(
            text.stdout.contains(expected),
            "no {expected}:\n{}",
            text.stdout
        );
    }
}
