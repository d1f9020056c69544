//! One validation: `check --rev`, `plan`, `run` and `deploy` accept and
//! reject the same commits, with the same words, although a plan reads only
//! what its change touches (and every client's group and host names when the
//! change can break a rule over the whole fleet).

use crate::common::Run;
use crate::run::Pipeline;

/// What each command says of `head` (planned and run from `base`).
fn verdicts(p: &Pipeline, base: &str, head: &str) -> Vec<(&'static str, Run)> {
    vec![
        ("check", p.fleet_run(&["check", "--rev", head])),
        (
            "plan",
            p.fleet_run(&["plan", "--base", base, "--head", head]),
        ),
        ("run", p.run(base, head, &[])),
        (
            "deploy",
            p.fleet_run(&["deploy", "--stage", "canary", "--rev", head]),
        ),
    ]
}

#[track_caller]
fn all_say(verdicts: &[(&str, Run)], code: i32, text: &str) {
    for (command, run) in verdicts {
        assert!(
            run.code == code && run.stderr.contains(text),
            "{command}: expected exit {code} and {text:?}, got exit {}\nstdout:\n{}\nstderr:\n{}",
            run.code,
            run.stdout,
            run.stderr
        );
    }
}

#[test]
fn the_last_production_client_offboarded_is_a_warning_everywhere() {
    // No approval in production: the verdicts are about the commit, not
    // about waiting for someone.
    let p = Pipeline::with_production(
        &[
            ("alpha", "canary", &["alpha-1"]),
            ("beta", "production", &["beta-1"]),
        ],
        "",
    );
    let base = p.head();
    p.d.fleet.remove("clients/beta.yaml");
    let head = p.push("offboard beta, the last production client");
    all_say(
        &verdicts(&p, &base, &head),
        0,
        "pipelines/pipeline.yaml: stages[1].group: stage `production` picks group `production`, which no client is in",
    );
}

#[test]
fn a_host_name_taken_by_a_one_client_change_is_refused_everywhere() {
    let p = Pipeline::new();
    let base = p.head();
    p.d.fleet
        .edit("clients/beta.yaml", "name: beta-1", "name: alpha-1");
    let head = p.push("beta-1 renamed to a name alpha has");
    let verdicts = verdicts(&p, &base, &head);
    all_say(
        &verdicts,
        2,
        "clients/beta.yaml: hosts[0].name: host `alpha-1` is also a host of client `alpha`",
    );
    // Nothing else: the same problems, not just one of them.
    for (command, run) in &verdicts {
        assert!(
            run.stderr.contains("has 1 problem"),
            "{command}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_host_whose_key_is_not_pinned_is_refused_everywhere_before_any_connection() {
    let p = Pipeline::with(&[("alpha", "canary", &["alpha-1"])]);
    let base = p.head();
    // A second host for alpha, its key never pinned in known_hosts.
    p.d.fleet.edit(
        "clients/alpha.yaml",
        "vars:\n",
        "  - name: alpha-9\n    address: 127.0.0.1\n    port: 2\n    user: fleetgate-test\nvars:\n",
    );
    let head = p.push("alpha: a host with no pinned key");
    all_say(&verdicts(&p, &base, &head), 2, "pipelines/known_hosts");
}
