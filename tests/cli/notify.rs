//! `notify:` webhooks: a real `fleetgate deploy` and `run` on real sshd
//! hosts, telling a local HTTP receiver that checks each payload's shape
//! (generic JSON and Slack's `{"text"}`), answers as scripted (500s, then
//! 200) and keeps every request. A webhook that fails never changes the
//! exit code; a URL from `url_env` never reaches the log.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::deploy::DeployFleet;
use crate::http_stub::{Loopback, Resp, bind, exchange, lock};
use crate::run::Pipeline;

/// One request the receiver got, and the status it answered.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    body: Value,
    answered: u16,
}

/// A webhook receiver on loopback: answers the `script`ed statuses in
/// order, then `then` for every later request.
pub(crate) struct Receiver {
    server: Loopback,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    pub(crate) fn new(script: &[u16], then: u16) -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let keep = Arc::clone(&got);
        let server = Loopback::serve(bind("webhook"), move |stream| {
            exchange(stream, 1 << 20, |req| {
                let req = req.expect("a readable request");
                assert_eq!(req.method, "POST", "a webhook is a POST");
                assert_eq!(
                    req.header("content-type"),
                    Some("application/json"),
                    "{}",
                    req.target
                );
                let body: Value = serde_json::from_slice(&req.body)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", req.body));
                let status = lock(&script).pop_front().unwrap_or(then);
                lock(&keep).push(Got {
                    path: req.target.clone(),
                    body,
                    answered: status,
                });
                Resp::json(status, "application/json", json!({}))
            })
        });
        Receiver { server, got }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.server.port())
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.server.port())
    }

    fn got(&self) -> Vec<Got> {
        lock(&self.got).clone()
    }

    /// The bodies received on `path`, checked for their format's shape.
    pub(crate) fn json_events(&self, path: &str) -> Vec<Value> {
        let got: Vec<Value> = self
            .got()
            .into_iter()
            .filter(|g| g.path == path)
            .map(|g| g.body)
            .collect();
        got.iter().for_each(json_shape);
        got
    }

    pub(crate) fn slack_texts(&self, path: &str) -> Vec<String> {
        self.got()
            .into_iter()
            .filter(|g| g.path == path)
            .map(|g| {
                let o = g.body.as_object().expect("an object");
                assert_eq!(o.len(), 1, "Slack's payload is {{\"text\"}} only: {o:?}");
                o["text"].as_str().expect("text is a string").to_string()
            })
            .collect()
    }
}

/// The generic payload: every key, each of its type.
fn json_shape(v: &Value) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort();
    let mut want = vec![
        "clients",
        "comment_url",
        "event",
        "hosts",
        "rev",
        "rev_short",
        "run_url",
        "schema",
        "stage",
        "summary",
    ];
    if o.contains_key("revert_commit") {
        want.push("revert_commit");
        want.sort();
    }
    assert_eq!(keys, want, "{v:#}");
    assert_eq!(v["schema"], 1);
    let event = v["event"].as_str().expect("event");
    assert!(
        [
            "stage_passed",
            "waiting_approval",
            "failed_rolled_back",
            "reverted",
            "frozen",
            "check_failed"
        ]
        .contains(&event),
        "{event}"
    );
    assert!(!v["summary"].as_str().expect("summary").is_empty());
    if event == "check_failed" {
        // A scheduled check is about the fleet, not one stage's commit.
        assert!(v["stage"].is_null() && v["rev"].is_null(), "{v:#}");
    } else {
        assert!(v["stage"].is_string());
        let rev = v["rev"].as_str().expect("rev");
        assert_eq!(rev.len(), 40);
        assert_eq!(v["rev_short"].as_str().unwrap(), &rev[..12]);
    }
    assert!(
        v["clients"]
            .as_array()
            .unwrap()
            .iter()
            .all(Value::is_string)
    );
    for h in v["hosts"].as_array().expect("hosts") {
        let h = h.as_object().unwrap();
        assert_eq!(h.len(), 3, "{h:?}");
        for k in ["client", "host", "status"] {
            assert!(h[k].is_string(), "{h:?}");
        }
    }
    assert!(v["run_url"].is_string() || v["run_url"].is_null());
    assert!(v["comment_url"].is_string() || v["comment_url"].is_null());
}

/// The secret part of the Slack-like URL the tests hand over in `url_env`.
const KEY_PATH: &str = "/services/T0FLEET/B0GATE/s3cr3t-webhook-key";

/// Adds `notify:` to the fleet's pipeline and commits it.
fn with_notify(d: &DeployFleet, notify: &str) {
    d.fleet.edit(
        "pipelines/pipeline.yaml",
        "on_failure:",
        &format!("notify:\n{notify}on_failure:"),
    );
    d.fleet.commit("notify");
}

fn deploy_env(d: &DeployFleet, env: &[(&str, &str)]) -> crate::common::Run {
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    let mut all = vec![("FLEETGATE_SSH_KEY", key.as_str())];
    all.extend_from_slice(env);
    d.fleet.run_env(
        &[
            "deploy", "--stage", "canary", "--rev", "HEAD", "--format", "json",
        ],
        &all,
    )
}

fn assert_no_key(stderr: &str) {
    assert!(
        !stderr.contains("s3cr3t") && !stderr.contains("/services/"),
        "the webhook's key reached the log:\n{stderr}"
    );
}

#[test]
fn a_passing_stage_and_a_rolled_back_release_in_json_and_slack() {
    let r = Receiver::new(&[], 200);
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    with_notify(
        &d,
        &format!(
            "  - url: \"{}\"\n    format: json\n  - url_env: FG_TEST_SLACK\n    format: slack\n",
            r.url("/hooks/json")
        ),
    );
    let slack = r.url(KEY_PATH);
    let env = [("FG_TEST_SLACK", slack.as_str())];
    let run = deploy_env(&d, &env);
    run.code(0);
    let rev1 = d.fleet.git(&["rev-parse", "HEAD"]);
    let events = r.json_events("/hooks/json");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["event"], "stage_passed");
    assert_eq!(events[0]["stage"], "canary");
    assert_eq!(events[0]["rev"], rev1.as_str());
    assert_eq!(events[0]["clients"], json!(["alpha"]));
    assert_eq!(
        events[0]["hosts"],
        json!([{"client": "alpha", "host": "alpha-1", "status": "deployed"}])
    );
    assert_eq!(events[0]["run_url"], Value::Null, "not in CI");
    let texts = r.slack_texts(KEY_PATH);
    assert_eq!(texts.len(), 1);
    assert!(
        texts[0]
            .starts_with(":white_check_mark: *fleetgate stage_passed*: stage canary passed at "),
        "{}",
        texts[0]
    );
    assert!(
        texts[0].contains("\n• alpha-1 (alpha): deployed"),
        "{}",
        texts[0]
    );
    assert!(
        run.stderr.contains(&format!(
            "notify: webhook #2 ({}): stage_passed sent",
            r.host()
        )),
        "{}",
        run.stderr
    );
    assert_no_key(&run.stderr);

    // An unhealthy release: failed and rolled back, never a success.
    d.set("alpha", "version", "\"2\"")
        .set("alpha", "health", "sick");
    d.fleet.commit("web 2, broken");
    let run = deploy_env(&d, &env);
    run.code(1);
    let events = r.json_events("/hooks/json");
    assert_eq!(events.len(), 2, "{events:#?}");
    let failed = &events[1];
    assert_eq!(failed["event"], "failed_rolled_back");
    let summary = failed["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("stage canary FAILED at ")
            && summary.contains("; rolled back: alpha-1"),
        "{summary}"
    );
    assert!(!summary.contains("passed"), "{summary}");
    assert_eq!(failed["hosts"][0]["status"], "rolled_back");
    let texts = r.slack_texts(KEY_PATH);
    assert!(
        texts[1].starts_with(":x: *fleetgate failed_rolled_back*: stage canary FAILED")
            && texts[1].contains("rolled back: alpha-1"),
        "{}",
        texts[1]
    );
    assert_no_key(&run.stderr);

    // The variable unset: a warning, the hook skipped, the deploy as before.
    d.set("alpha", "health", "ok");
    d.fleet.commit("web 2, fixed");
    let run = deploy_env(&d, &[]);
    run.code(0);
    assert!(
        run.stderr
            .contains("notify: webhook #2: $FG_TEST_SLACK is not set: skipped"),
        "{}",
        run.stderr
    );
    assert_eq!(r.slack_texts(KEY_PATH).len(), 2);
    assert_eq!(r.json_events("/hooks/json").len(), 3);
}

#[test]
fn a_webhook_is_tried_three_times_and_one_that_always_fails_changes_nothing() {
    let flaky = Receiver::new(&[500, 500], 200);
    let down = Receiver::new(&[], 500);
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    with_notify(
        &d,
        "  - url_env: FG_TEST_FLAKY\n  - url_env: FG_TEST_DOWN\n    format: slack\n    events: [stage_passed, failed_rolled_back]\n",
    );
    let (f, w) = (flaky.url(KEY_PATH), down.url(KEY_PATH));
    let env = [("FG_TEST_FLAKY", f.as_str()), ("FG_TEST_DOWN", w.as_str())];
    let run = deploy_env(&d, &env);
    run.code(0);
    let answered: Vec<u16> = flaky.got().iter().map(|g| g.answered).collect();
    assert_eq!(answered, [500, 500, 200]);
    // The same payload each time.
    let events = flaky.json_events(KEY_PATH);
    assert!(events.iter().all(|e| *e == events[0]), "{events:#?}");
    assert!(
        run.stderr.contains(&format!(
            "notify: webhook #1 ({}): stage_passed sent on try 3",
            flaky.host()
        )),
        "{}",
        run.stderr
    );
    assert_eq!(down.got().len(), 3, "three tries, no more");
    assert!(
        run.stderr.contains(&format!(
            "notify: webhook #2 ({}) failed: 500, 3 tries",
            down.host()
        )),
        "{}",
        run.stderr
    );
    assert_no_key(&run.stderr);
    // A failed release exits 1, as without a webhook.
    d.set("alpha", "version", "\"2\"")
        .set("alpha", "health", "sick");
    d.fleet.commit("web 2, broken");
    let run = deploy_env(&d, &env);
    run.code(1);
    assert_eq!(down.got().len(), 6);
    assert_no_key(&run.stderr);
}

#[test]
fn run_tells_canary_passed_then_production_waiting_with_the_run_page() {
    let r = Receiver::new(&[], 200);
    let p = Pipeline::new();
    let base = p.head();
    p.d.fleet.edit(
        "pipelines/pipeline.yaml",
        "on_failure:",
        &format!("notify:\n  - url: \"{}\"\non_failure:", r.url("/hook")),
    );
    p.d.set("alpha", "version", "\"2\"")
        .set("beta", "version", "\"2\"");
    let head = p.push("web 2 and notify");
    let ci = [
        ("GITHUB_SERVER_URL", "https://forge.example"),
        ("GITHUB_REPOSITORY", "ops/fleet"),
        ("GITHUB_RUN_ID", "77"),
    ];
    let run = p.fleet_run_env(
        &["run", "--base", &base, "--head", &head, "--format", "json"],
        &ci,
    );
    run.code(4);
    let events = r.json_events("/hook");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["stage_passed", "waiting_approval"], "{events:#?}");
    assert_eq!(events[0]["stage"], "canary");
    assert_eq!(events[1]["stage"], "production");
    assert_eq!(events[1]["clients"], json!(["beta"]));
    assert!(
        events[1]["summary"]
            .as_str()
            .unwrap()
            .contains("by one of: alice, bob"),
        "{:#}",
        events[1]
    );
    for e in &events {
        assert_eq!(e["rev"], head.as_str());
        assert_eq!(
            e["run_url"],
            "https://forge.example/ops/fleet/actions/runs/77"
        );
    }
}

#[test]
fn check_refuses_a_bad_webhook_naming_field_and_line_and_never_quotes_its_url() {
    let fleet = crate::common::Fleet::example();
    // The example's chat webhook is notify[0]; two more after it.
    fleet.edit(
        "pipelines/pipeline.yaml",
        "    format: slack\n",
        "    format: slack\n  - url: \"ftp://hooks.example/services/s3cr3t\"\n  - url_env: HOOK\n    events: [stage_passed, deployed]\n",
    );
    let run = fleet.run(&["check"]);
    run.code(2);
    for want in [
        "pipelines/pipeline.yaml:28: notify[1].url: is not an http:// or https:// URL with a host",
        "pipelines/pipeline.yaml:30: notify[2].events[1]: `deployed` is not an event",
    ] {
        assert!(run.stderr.contains(want), "{want}\n{}", run.stderr);
    }
    assert_no_key(&run.stderr);
    assert_no_key(&run.stdout);
    fleet.edit(
        "pipelines/pipeline.yaml",
        "  - url: \"ftp://hooks.example/services/s3cr3t\"\n",
        "",
    );
    fleet.edit("pipelines/pipeline.yaml", ", deployed]", "]");
    fleet.run(&["check"]).code(0);
}
