//! A branch's first push and a force-push: the forge sends a null or
//! unknown `before`, and `run` rolls the fleet out from what each stage last
//! deployed, or from nothing — through canary, approval and production like
//! any change (issue 13). Real sshd hosts, a real bare remote.

use crate::run::Pipeline;

const ZERO: &str = "0000000000000000000000000000000000000000";

#[test]
fn a_first_push_with_a_null_base_goes_through_canary_approval_and_production() {
    let p = Pipeline::undeployed(
        &[
            ("alpha", "canary", &["alpha-1"]),
            ("beta", "production", &["beta-1"]),
        ],
        "    approval:\n      required: true\n      approvers: [alice, bob]\n",
    );
    let head = p.head();
    let run = p.run(ZERO, &head, &[]);
    run.code(4);
    assert!(
        run.stderr.contains("null commit")
            && run
                .stderr
                .contains("compared with nothing (never deployed)"),
        "{}",
        run.stderr
    );
    assert!(p.serving("alpha-1").contains("version=1"));
    assert_eq!(p.serving("beta-1"), "", "production waits");
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/canary/alpha"),
        Some(head.clone())
    );
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/production/beta"),
        None
    );
    let note = p.remote_note(&head);
    assert!(note.get("base").is_none(), "{note}");
    assert_eq!(note["waiting"], "production");

    p.fleet_run(&["approve", "--rev", &head, "--by", "alice"])
        .code(0);
    // The promote job resumes without --base: still from nothing.
    p.fleet_run(&["run", "--head", &head]).code(0);
    assert!(p.serving("beta-1").contains("version=1"));
    assert_eq!(
        p.remote_ref("refs/fleetgate/deployed/production/beta"),
        Some(head)
    );
}

#[test]
fn a_force_push_with_an_unknown_base_compares_with_what_each_stage_runs() {
    let p = Pipeline::new();
    p.d.set("alpha", "version", "\"2\"");
    let head = p.push("alpha: version 2");
    // A commit this clone never had (the branch was rewritten).
    let gone = "1234567890abcdef1234567890abcdef12345678";
    let run = p.run(gone, &head, &[]);
    // alpha changed against what canary runs; beta renders as it runs.
    run.code(0);
    assert!(run.stderr.contains("not in this clone"), "{}", run.stderr);
    assert!(p.serving("alpha-1").contains("version=2"));
    assert!(
        !run.stderr.contains("beta-1 web upload"),
        "beta is not redeployed: {}",
        run.stderr
    );
    assert!(p.serving("beta-1").contains("version=1"));
}

#[test]
fn plan_with_a_null_base_plans_every_client_as_added() {
    let p = Pipeline::undeployed(&[("alpha", "canary", &["alpha-1"])], "");
    let head = p.head();
    let plan = p.fleet_run(&["plan", "--base", ZERO, "--head", &head, "--format", "json"]);
    plan.code(0);
    let json = plan.json();
    assert_eq!(json["base"], ZERO);
    assert_eq!(json["clients"][0]["name"], "alpha");
    assert_eq!(json["clients"][0]["apps"][0]["action"], "add");
}
