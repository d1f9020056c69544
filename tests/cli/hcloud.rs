//! Hosts from Hetzner Cloud: the real binary against the stand-in
//! (`hcloud_server.rs`, every exchange validated against Hetzner's
//! OpenAPI description), whose servers point at the real sshd test hosts,
//! so a deploy through the inventory is a real deploy. Every test ends
//! with the stand-in clean (no request or answer outside the description).

use crate::common::Run;
use crate::deploy::DeployFleet;
use crate::hcloud_server::HcloudServer;
use crate::hosts::USER;

const TOKEN: &str = "hc-test-token-3f9a1c";

/// One canary client `alpha` on the test host `alpha-1`, its hosts selected
/// by `client=alpha` (port, user and deploy root of the test host), and a
/// stand-in with the server `alpha-1` pointing at it and a `beta-1` the
/// selector must leave out.
fn fleet() -> (DeployFleet, HcloudServer) {
    crate::leakscan::secret("the Hetzner Cloud test token", TOKEN);
    let d = alpha_on_hcloud();
    d.fleet.commit("alpha's hosts from Hetzner Cloud");
    (
        d,
        servers(TOKEN, &[("alpha-1", "alpha"), ("beta-1", "beta")]),
    )
}

/// [`fleet`]'s fleet, not committed: alpha's hosts are `client=alpha` in
/// Hetzner Cloud (with the test host's port, user and deploy root) and
/// `alpha-1`'s key is pinned under its server name.
pub fn alpha_on_hcloud() -> DeployFleet {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    let host = d.hosts.host("alpha-1");
    let path = "clients/alpha.yaml";
    let text = d.fleet.read(path);
    let (head, rest) = text.split_once("hosts:\n").unwrap();
    let vars = &rest[rest.find("vars:").unwrap()..];
    d.fleet.write(
        path,
        &format!(
            "{head}hosts:\n  hcloud:\n    label_selector: client=alpha\n    port: {}\n    user: {USER}\n    deploy_root: {}\n{vars}",
            host.port,
            host.deploy_root.display()
        ),
    );
    let known = d.fleet.read("pipelines/known_hosts");
    d.fleet.write(
        "pipelines/known_hosts",
        &format!("{known}alpha-1 {}\n", host.host_key_pub),
    );
    d
}

/// A stand-in with these (server, `client` label) servers, all pointing
/// at the loopback test hosts.
pub fn servers(token: &str, servers: &[(&str, &str)]) -> HcloudServer {
    let hcloud = HcloudServer::start(token);
    for (name, client) in servers {
        hcloud.add_server(name, &[("client", client)]);
        hcloud.point_at(name, "127.0.0.1");
    }
    hcloud
}

fn env(hcloud: &HcloudServer) -> Vec<(&'static str, String)> {
    vec![
        ("HCLOUD_TOKEN", TOKEN.into()),
        ("HCLOUD_ENDPOINT", hcloud.url()),
    ]
}

fn run(d: &DeployFleet, args: &[&str], env: &[(&str, String)]) -> Run {
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    let mut all: Vec<(&str, &str)> = vec![("FLEETGATE_SSH_KEY", key.as_str())];
    all.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
    d.fleet.run_env(args, &all)
}

fn deploy(d: &DeployFleet, env: &[(&str, String)]) -> Run {
    run(
        d,
        &[
            "deploy", "--stage", "canary", "--rev", "HEAD", "--format", "json",
        ],
        env,
    )
}

fn plan(d: &DeployFleet, env: &[(&str, String)], format: &str) -> Run {
    run(
        d,
        &[
            "plan", "--base", "HEAD~1", "--head", "HEAD", "--format", format,
        ],
        env,
    )
}

/// A var of alpha changed and committed: a change the plan reads alpha for.
fn touch(d: &DeployFleet, note: &str) {
    d.set("alpha", "note", note);
    d.fleet.commit(note);
}

#[test]
fn deploys_to_the_servers_the_selector_resolves_and_plans_a_new_one_as_a_change() {
    let (d, hcloud) = fleet();
    let out = deploy(&d, &env(&hcloud));
    out.code(0);
    let json = out.json();
    let hosts: Vec<&str> = json["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["alpha-1"], "beta-1 is not alpha's");
    assert_eq!(
        d.serving("alpha-1").as_deref().map(|s| s.starts_with("ok")),
        Some(true)
    );
    let asked: Vec<_> = hcloud
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/servers")
        .collect();
    assert_eq!(asked.len(), 1, "resolved once per command: {asked:?}");
    assert_eq!(asked[0].query("label_selector"), Some("client=alpha"));
    assert_eq!(asked[0].query("per_page"), Some("50"));
    assert_eq!(
        asked[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );

    // status reads the same inventory.
    run(&d, &["status", "--format", "json"], &env(&hcloud)).code(0);

    // A server added between two runs: the next plan names it.
    hcloud.add_server("alpha-2", &[("client", "alpha")]);
    hcloud.point_at("alpha-2", "127.0.0.1");
    touch(&d, "second");
    let json = plan(&d, &env(&hcloud), "json");
    json.code(0);
    let inv = &json.json()["inventory"][0];
    assert_eq!(inv["client"], "alpha");
    assert_eq!(inv["label_selector"], "client=alpha");
    assert_eq!(inv["hosts"], serde_json::json!(["alpha-1", "alpha-2"]));
    assert_eq!(inv["last_deployed"], serde_json::json!(["alpha-1"]));
    assert_eq!(inv["added"], serde_json::json!(["alpha-2"]));
    let text = plan(&d, &env(&hcloud), "text");
    text.code(0);
    assert!(
        text.stdout.contains(
            "alpha (`client=alpha`): alpha-1, alpha-2\n  + alpha-2 (since the last deploy)"
        ),
        "{}",
        text.stdout
    );
    let md = plan(&d, &env(&hcloud), "markdown");
    assert!(
        md.stdout.contains("**Hetzner Cloud hosts**"),
        "{}",
        md.stdout
    );
    assert!(
        md.stdout.contains("- + alpha-2 (since the last deploy)"),
        "{}",
        md.stdout
    );
    hcloud.assert_clean();
}

#[test]
fn more_than_one_page_of_servers() {
    let (d, hcloud) = fleet();
    for i in 2..=120 {
        hcloud.add_server(&format!("alpha-{i:03}"), &[("client", "alpha")]);
    }
    touch(&d, "pages");
    let out = plan(&d, &env(&hcloud), "json");
    out.code(0);
    let hosts = out.json()["inventory"][0]["hosts"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(hosts, 120);
    let pages: Vec<String> = hcloud
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/servers")
        .map(|r| r.query("page").unwrap_or("-").to_string())
        .collect();
    assert_eq!(pages, ["1", "2", "3"]);
    hcloud.assert_clean();
}

#[test]
fn without_a_token_check_and_plan_go_on_and_the_commands_that_act_stop() {
    let (d, hcloud) = fleet();
    touch(&d, "no token");
    let none = [("HCLOUD_ENDPOINT", hcloud.url())];
    run(&d, &["check"], &none).code(0);
    let out = plan(&d, &none, "json");
    out.code(0);
    let inv = &out.json()["inventory"][0];
    assert_eq!(inv["hosts"], serde_json::Value::Null);
    assert_eq!(inv["not_resolved"], "HCLOUD_TOKEN is not set");
    let text = plan(&d, &none, "text");
    assert!(
        text.stdout
            .contains("alpha (`client=alpha`): not resolved: HCLOUD_TOKEN is not set"),
        "{}",
        text.stdout
    );
    assert!(text.stderr.contains("were not resolved"), "{}", text.stderr);
    for args in [
        &["deploy", "--stage", "canary", "--rev", "HEAD"][..],
        &["status"][..],
        &["rollback", "--client", "alpha"][..],
    ] {
        let out = run(&d, args, &none);
        out.code(2);
        assert!(
            out.stderr.contains("HCLOUD_TOKEN is not set"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("clients/alpha.yaml"), "{}", out.stderr);
    }
    assert!(
        hcloud.requests().is_empty(),
        "nothing asked without a token"
    );
    hcloud.assert_clean();
}

#[test]
fn a_selector_that_selects_nothing_is_invalid_for_a_client_with_apps() {
    let (d, hcloud) = fleet();
    hcloud.remove_server("alpha-1");
    let out = deploy(&d, &env(&hcloud));
    out.code(2);
    assert!(
        out.stderr.contains(
            "clients/alpha.yaml: hosts.hcloud.label_selector `client=alpha` selects no server"
        ),
        "{}",
        out.stderr
    );
    hcloud.assert_clean();
}

#[test]
fn a_refused_token_is_exit_3_naming_the_variable_never_its_value() {
    let (d, hcloud) = fleet();
    let wrong = "hc-wrong-token-77d2e1";
    crate::leakscan::secret("a wrong Hetzner Cloud token", wrong);
    let env = [
        ("HCLOUD_TOKEN", wrong.to_string()),
        ("HCLOUD_ENDPOINT", hcloud.url()),
    ];
    for out in [deploy(&d, &env), {
        touch(&d, "401");
        plan(&d, &env, "text")
    }] {
        out.code(3);
        assert!(
            out.stderr.contains("refused HCLOUD_TOKEN"),
            "{}",
            out.stderr
        );
        assert!(!out.all().contains(wrong) && !out.all().contains(TOKEN));
    }
    assert_eq!(hcloud.requests().len(), 2, "a refused token is not retried");
    hcloud.assert_clean();
}

#[test]
fn rate_limits_and_server_errors_are_waited_out() {
    let (d, hcloud) = fleet();
    touch(&d, "busy API");
    // 429 with RateLimit-Reset a second ahead, then the answer.
    hcloud.rate_limit_next(1, 1);
    let out = plan(&d, &env(&hcloud), "json");
    out.code(0);
    assert_eq!(
        out.json()["inventory"][0]["hosts"],
        serde_json::json!(["alpha-1"])
    );
    let statuses: Vec<u16> = hcloud.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200]);
    assert!(
        out.stderr.contains("429 rate_limit_exceeded"),
        "{}",
        out.stderr
    );

    // Two 503s, then the answer.
    hcloud.fail_next(503, 2);
    plan(&d, &env(&hcloud), "json").code(0);
    let statuses: Vec<u16> = hcloud.requests().iter().skip(2).map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 200]);

    // Always 502: bounded, exit 3.
    hcloud.fail_next(502, 5);
    let out = plan(&d, &env(&hcloud), "text");
    out.code(3);
    assert!(out.stderr.contains("(after 5 tries)"), "{}", out.stderr);
    hcloud.assert_clean();
}

/// The median wall time of `n` runs of `f` (each must succeed), seconds.
fn median(n: usize, mut f: impl FnMut() -> Run) -> f64 {
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let t = std::time::Instant::now();
            f().code(0);
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[n / 2]
}

/// `benches/inventory.sh`: numbers, not assertions. The same `plan` (one
/// client changed) without a token (no inventory: the baseline), with a
/// selector resolving to one page of servers, and to 500 servers over 10
/// pages; then a real one-host deploy through the inventory. Inventory's
/// cost is each time minus the baseline.
#[test]
#[ignore = "a benchmark: benches/inventory.sh runs it"]
fn bench_inventory() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let (d, hcloud) = fleet();
    touch(&d, "bench");
    let none = [("HCLOUD_ENDPOINT", hcloud.url())];
    let t0 = median(runs, || plan(&d, &none, "json"));
    let t1 = median(runs, || plan(&d, &env(&hcloud), "json"));
    for i in 2..=50 {
        hcloud.add_server(&format!("alpha-{i:03}"), &[("client", "alpha")]);
    }
    let t50 = median(runs, || plan(&d, &env(&hcloud), "json"));
    for i in 51..=500 {
        hcloud.add_server(&format!("alpha-{i:03}"), &[("client", "alpha")]);
    }
    let before = hcloud.requests().len();
    let t500 = median(runs, || plan(&d, &env(&hcloud), "json"));
    let pages = (hcloud.requests().len() - before) / runs;
    assert_eq!(pages, 10);
    for i in 2..=500 {
        hcloud.remove_server(&format!("alpha-{i:03}"));
    }
    let mut n = 0;
    let deploy_time = median(3, || {
        n += 1;
        touch(&d, &format!("deploy-{n}"));
        deploy(&d, &env(&hcloud))
    });
    let one_page = (t1 - t0).max(1e-4);
    let ten_pages = (t500 - t0).max(1e-4);
    let full_page = (t50 - t0).max(1e-4);
    println!("inventory bench (debug build, stand-in on loopback, medians of {runs} runs):");
    println!("  plan without inventory (baseline): {:.1} ms", t0 * 1e3);
    println!(
        "  plan, 1 server (1 page):           {:.1} ms  → inventory {:.1} ms",
        t1 * 1e3,
        one_page * 1e3
    );
    println!(
        "  plan, 500 servers (10 pages):      {:.1} ms  → inventory {:.1} ms",
        t500 * 1e3,
        ten_pages * 1e3
    );
    println!(
        "  plan, 50 servers (1 full page):    {:.1} ms  → inventory {:.1} ms",
        t50 * 1e3,
        full_page * 1e3
    );
    println!(
        "  500 servers (10 pages) / 1 full page of 50: {:.2}×; / 1 page of 1 server: {:.2}×",
        ten_pages / full_page,
        ten_pages / one_page
    );
    println!(
        "  1-host deploy through inventory:   {:.1} ms (median of 3)",
        deploy_time * 1e3
    );
    println!(
        "  one full page (50 servers, what a 50-host client needs) / that deploy: {:.1} %",
        100.0 * full_page / deploy_time
    );
    hcloud.assert_clean();
}

/// A Hetzner server is trusted by a key under its server name only: an
/// address line (the next server's address, once this one is gone) does
/// not pin it. Refused before any host is contacted, listed as unpinned,
/// trusted through `hosts trust` into the work tree, then deployed once
/// that is committed.
#[test]
fn an_unpinned_server_is_refused_then_trusted_through_hosts_trust() {
    let (d, hcloud) = fleet();
    let host = d.hosts.host("alpha-1");
    d.fleet.write(
        "pipelines/known_hosts",
        &format!("[127.0.0.1]:{} {}\n", host.port, host.host_key_pub),
    );
    d.fleet.commit("alpha-1 pinned by its address only");

    let refused = deploy(&d, &env(&hcloud));
    refused.code(2);
    assert!(
        refused
            .stderr
            .contains("no key pinned for the Hetzner server(s) alpha/alpha-1 (127.0.0.1)"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("hosts trust"), "{}", refused.stderr);
    assert_eq!(d.serving("alpha-1"), None, "nothing deployed");

    let listed = run(&d, &["hosts", "--format", "json"], &env(&hcloud));
    listed.code(0);
    let rows = listed.json();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "alpha-1")
        .unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(
        (row["client"].as_str(), row["pinned"].as_bool()),
        (Some("alpha"), Some(false)),
        "{row}"
    );

    let trusted = run(&d, &["hosts", "trust", "--client", "alpha"], &env(&hcloud));
    trusted.code(0);
    let known = d.fleet.read("pipelines/known_hosts");
    let key = host.host_key_pub.trim();
    assert!(
        known.lines().any(|l| l == format!("alpha-1 {key}")),
        "{known}"
    );
    d.fleet.commit("trust alpha-1 (reviewed)");
    deploy(&d, &env(&hcloud)).code(0);
    assert_eq!(
        d.serving("alpha-1").as_deref().map(|s| s.starts_with("ok")),
        Some(true)
    );
    hcloud.assert_clean();
}
