//! What an operator (or their scripts) gets from the command line itself:
//! `check --format json`, colour only where a person looks, shell
//! completions, the man page, and help that documents every flag and the
//! exit codes. No hosts needed.

use serde_json::Value;

use crate::common::Fleet;

#[test]
fn check_reports_as_json_what_a_program_reads() {
    let f = Fleet::example();
    let ok = f.run(&["check", "--format", "json"]);
    ok.code(0);
    let v = ok.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["at"], "work tree");
    assert_eq!(v["rev"], Value::Null);
    assert_eq!(
        v["counts"],
        serde_json::json!({"clients": 3, "hosts": 4, "apps": 3, "stages": 2})
    );
    assert_eq!(v["secrets_decrypted"], true);
    assert_eq!(v["problems"], serde_json::json!([]));
    assert_eq!(v["error"], Value::Null);
    let head = f.git(&["rev-parse", "HEAD"]);
    let at_head = f.run(&["check", "--rev", "HEAD", "--format", "json"]);
    at_head.code(0);
    assert_eq!(at_head.json()["rev"], head.as_str());

    // Two problems at once: each with file, field, line, message (and
    // every key present, null when unknown); stderr says them for people.
    f.edit(
        "clients/alpha.yaml",
        "group: canary",
        "group: canary\nport: 22",
    );
    f.write(
        "clients/zeta.yaml",
        "domain: z.example.org\ngroup: canary\napps: [whoami]\nhosts:\n  - name: zeta-1\n    address: 192.0.2.1\n    port: 70000\n",
    );
    let bad = f.run(&["check", "--format", "json"]);
    bad.code(2);
    let v = bad.json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["counts"], Value::Null);
    let problems = v["problems"].as_array().unwrap();
    let find = |file: &str| {
        problems
            .iter()
            .find(|p| p["file"] == file)
            .unwrap_or_else(|| panic!("no problem in {file}: {v:#}"))
    };
    let port = find("clients/zeta.yaml");
    assert_eq!(port["field"], "hosts[0].port");
    assert_eq!(port["line"], 7);
    assert!(
        port["message"].is_string() && port["hint"].is_string(),
        "{port}"
    );
    let unknown = find("clients/alpha.yaml");
    assert!(
        unknown["message"].as_str().unwrap().contains("port"),
        "{unknown}"
    );
    assert!(unknown["line"].is_u64(), "{unknown}");
    for p in problems {
        for key in ["file", "field", "line", "message", "hint"] {
            assert!(p.get(key).is_some(), "{key} missing in {p}");
        }
    }
    assert!(
        bad.stderr.contains("clients/zeta.yaml:7: hosts[0].port"),
        "{}",
        bad.stderr
    );

    // Not a fleet it could read at all: still one JSON object, exit 2.
    let nowhere = f.run(&["check", "--rev", "no-such-branch", "--format", "json"]);
    nowhere.code(2);
    let v = nowhere.json();
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap().contains("no-such-branch"),
        "{v}"
    );
    // Text stays as it was: the summary on stdout, problems on stderr only.
    let text = f.run(&["check"]);
    text.code(2);
    assert_eq!(text.stdout, "");
}
