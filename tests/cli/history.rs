//! `fleetgate history`: the runs recorded in Git, read back as an operator
//! (or a program) would — after real runs against sshd hosts and a bare
//! remote, from the runner's clone and from another clone; a repository
//! with no records, and one with a record that is not fleetgate's. Also
//! `approve --format`, which these runs need anyway.

use serde_json::Value;

use crate::common::{Fleet, source_root};
use crate::run::Pipeline;

/// The commits of a `history --format json` list, in order.
fn commits(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|r| r["commit"].as_str().unwrap().to_string())
        .collect()
}

/// The rows of the text table (without its header), by their first cell.
fn rows(text: &str) -> Vec<&str> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("commit") && header.contains("result"),
        "{text}"
    );
    lines.collect()
}

fn short(sha: &str) -> &str {
    &sha[..12]
}

#[test]
fn history_shows_real_runs_newest_first_in_text_and_json() {
    let p = Pipeline::new();
    // The set-up deployed both stages by hand (`deploy`): records too.
    let c0 = p.head();
    p.d.set("alpha", "version", "\"2\"");
    p.d.set("beta", "version", "\"2\"");
    let c1 = p.push("web: version 2");
    p.run(&c0, &c1, &[]).code(4);

    let waiting = p.fleet_run(&["history", "--format", "json"]);
    waiting.code(0);
    let list = waiting.json();
    assert_eq!(commits(&list), [c1.as_str(), c0.as_str()]);
    assert_eq!(list[0]["result"], "waiting");
    assert_eq!(list[0]["waiting"], "production");
    assert_eq!(list[0]["stages"][0]["stage"], "canary");
    assert_eq!(list[0]["stages"][0]["result"], "passed");
    let plan_hash = p.remote_note(&c1)["plan_hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(list[0]["plan_hash"], plan_hash.as_str());

    // approve --format json: refused, then counted; text for people.
    let refused = p.fleet_run(&[
        "approve", "--rev", &c1, "--by", "mallory", "--format", "json",
    ]);
    refused.code(1);
    let r = refused.json();
    assert_eq!(r["counted"], false);
    assert_eq!(
        (r["rev"].as_str(), r["by"].as_str()),
        (Some(c1.as_str()), Some("mallory"))
    );
    assert!(
        r["why"]
            .as_str()
            .unwrap()
            .contains("`mallory` is not an approver"),
        "{r}"
    );
    assert!(
        refused.stderr.contains("is not an approver"),
        "{}",
        refused.stderr
    );
    let alice = p.fleet_run(&["approve", "--rev", &c1, "--by", "alice"]);
    alice.code(0);
    assert_eq!(
        alice.stdout,
        format!(
            "approved: plan {} of {} by alice (cli), for production\n",
            short(&plan_hash),
            short(&c1)
        )
    );
    let bob = p.fleet_run(&["approve", "--rev", &c1, "--by", "bob", "--format", "json"]);
    bob.code(0);
    let b = bob.json();
    assert_eq!(b["counted"], true);
    assert_eq!(b["by"], "bob");
    assert_eq!(b["source"], "cli");
    assert_eq!(b["rev"], c1.as_str());
    assert_eq!(b["plan_hash"], plan_hash.as_str());
    assert_eq!(b["stages"], serde_json::json!(["production"]));
    assert!(b["at"].as_str().unwrap().ends_with('Z'), "{b}");
    p.run(&c0, &c1, &[]).code(0);

    // A broken canary: rolled back, reverted on main.
    p.d.set("alpha", "version", "\"3\"")
        .set("alpha", "health", "bad");
    let c2 = p.push("web: version 3 (broken health)");
    p.run(&c1, &c2, &[]).code(1);
    let revert = p.remote_ref("refs/heads/main").unwrap();

    let text = p.fleet_run(&["history"]);
    text.code(0);
    let table = rows(&text.stdout);
    assert_eq!(table.len(), 3, "{}", text.stdout);
    for (row, commit, words) in [
        (
            table[0],
            &c2,
            &["FAILED", "canary:FAILED", "web: version 3 (broken health)"][..],
        ),
        (
            table[1],
            &c1,
            &[
                "passed",
                "canary:passed production:passed",
                "alice, bob",
                "web: version 2",
            ][..],
        ),
        (
            table[2],
            &c0,
            &["passed", "canary:passed production:passed"][..],
        ),
    ] {
        assert!(row.starts_with(short(commit)), "{commit}:\n{}", text.stdout);
        for w in words {
            assert!(row.contains(w), "{w:?} in {row:?}");
        }
    }
    assert!(
        table[0].contains(&format!("pushed {}", short(&revert))),
        "{}",
        text.stdout
    );
    assert!(table[1].contains(short(&plan_hash)), "{}", text.stdout);
    assert!(
        !text.stdout.contains('\u{1b}'),
        "no colour in a pipe:\n{}",
        text.stdout
    );

    let json = p.fleet_run(&["history", "--format", "json"]);
    json.code(0);
    let list = json.json();
    assert_eq!(commits(&list), [c2.as_str(), c1.as_str(), c0.as_str()]);
    let failed = &list[0];
    assert_eq!(failed["result"], "failed");
    assert_eq!(failed["subject"], "web: version 3 (broken health)");
    assert_eq!(failed["base"], c1.as_str());
    assert_eq!(failed["clients"], serde_json::json!(["alpha"]));
    assert_eq!(failed["stages"][0]["result"], "failed");
    assert_eq!(failed["stages"][0]["rolled_back"], true);
    assert_eq!(failed["stages"][0]["hosts"][0]["status"], "rolled_back");
    assert!(
        failed["stages"][0]["failed_gate"]
            .as_str()
            .unwrap()
            .starts_with("canary/alpha/web:http://127.0.0.1:"),
        "{failed}"
    );
    assert_eq!(failed["revert"]["result"], "pushed");
    assert_eq!(failed["revert"]["commit"], revert.as_str());
    let passed = &list[1];
    assert_eq!(passed["result"], "passed");
    assert_eq!(passed["waiting"], Value::Null);
    let stages: Vec<&str> = passed["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["canary", "production"]);
    assert_eq!(passed["clients"], serde_json::json!(["alpha", "beta"]));
    let approvals: Vec<(&str, &str, bool)> = passed["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["by"].as_str().unwrap(),
                a["source"].as_str().unwrap(),
                a["current_plan"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(approvals, [("alice", "cli", true), ("bob", "cli", true)]);
    // Runs by hand (`deploy`) have no plan.
    assert_eq!(list[2]["plan_hash"], Value::Null);

    // --client: the runs that deployed it; --limit: the newest N.
    let beta = p.fleet_run(&["history", "--client", "beta", "--format", "json"]);
    beta.code(0);
    assert_eq!(commits(&beta.json()), [c1.as_str(), c0.as_str()]);
    let newest = p.fleet_run(&["history", "--client", "alpha", "--limit", "1"]);
    newest.code(0);
    let table = rows(&newest.stdout);
    assert_eq!(table.len(), 1, "{}", newest.stdout);
    assert!(table[0].starts_with(short(&c2)), "{}", newest.stdout);
    let two = p.fleet_run(&["history", "--limit", "2", "--format", "json"]);
    assert_eq!(commits(&two.json()), [c2.as_str(), c1.as_str()]);
    let nobody = p.fleet_run(&["history", "--client", "gamma"]);
    nobody.code(0);
    assert_eq!(
        nobody.stdout,
        "no runs recorded for client `gamma` (refs/notes/fleetgate on origin)\n"
    );

    // Records live on the remote: another clone reads the same history.
    let other = p.clone_remote("history-reader");
    let theirs = p.fleet_run(&[
        "--repo",
        other.to_str().unwrap(),
        "history",
        "--format",
        "json",
    ]);
    theirs.code(0);
    assert_eq!(
        commits(&theirs.json()),
        [c2.as_str(), c1.as_str(), c0.as_str()]
    );
}

#[test]
fn no_records_say_so_and_a_bad_record_hides_no_other() {
    let f = Fleet::example();
    let empty = f.run(&["history"]);
    empty.code(0);
    assert_eq!(
        empty.stdout,
        "no runs recorded (refs/notes/fleetgate on this clone)\n"
    );
    let json = f.run(&["history", "--format", "json"]);
    json.code(0);
    assert_eq!(json.stdout, "[]\n");
    assert_eq!(
        f.run(&["history", "--client", "alpha", "--format", "json"])
            .code(0)
            .stdout,
        "[]\n"
    );
    let zero = f.run(&["history", "--limit", "0"]);
    zero.code(2);
    assert!(
        zero.stderr.contains("--limit") && zero.stderr.contains("give 1 or more"),
        "{}",
        zero.stderr
    );

    // A record fleetgate wrote (on an older commit), and a note that is
    // not one on the newest.
    let good = f.git(&["rev-parse", "HEAD"]);
    let fixture = source_root().join("tests/fixtures/records/schema1-approved.json");
    f.git(&[
        "notes",
        "--ref=fleetgate",
        "add",
        "-F",
        fixture.to_str().unwrap(),
        &good,
    ]);
    let bad = f.commit("a later change");
    f.git(&[
        "notes",
        "--ref=fleetgate",
        "add",
        "-m",
        "{\"stages\": [",
        &bad,
    ]);
    let run = f.run(&["history", "--format", "json"]);
    run.code(3);
    let list = run.json();
    assert_eq!(commits(&list), [good.as_str()]);
    // The fixture's own ids: the record names its head, whatever commit
    // holds it.
    assert_eq!(list[0]["result"], "passed");
    assert_eq!(list[0]["subject"], "example fleet");
    assert_eq!(list[0]["approvals"][0]["by"], "bob");
    assert!(
        run.stderr.contains(&format!("the run record on {bad}"))
            && run.stderr.contains("refs/notes/fleetgate")
            && run.stderr.contains("git notes --ref=fleetgate show"),
        "{}",
        run.stderr
    );
    let text = f.run(&["history"]);
    text.code(3);
    assert_eq!(rows(&text.stdout).len(), 1, "{}", text.stdout);
}
