//! Secret values reach rendered files on hosts and nothing else: not through
//! a health check (whose text is logged and recorded), not through a
//! template error that only happens with the real values. Real hosts, a
//! real remote, real sops.

use crate::common::Run;
use crate::deploy::DeployFleet;
use crate::run::Pipeline;

const APP: &str = "pipelines/apps/web/app.yaml";
const TOKEN: &str = "Hc-Tok-5d2e8b91-never-print";
const HTTP_CHECK: &str = "/health\"";
const COMMAND_CHECK: &str = "command: \"test -s health\"";

/// Ways a check could carry a secret: (what, from, to, field refused).
fn secret_checks() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    vec![
        (
            "a secret in an http check's URL",
            HTTP_CHECK,
            "/health?token={{ secrets.api_token }}\"",
            "health[0].http",
        ),
        (
            "a secret in a command check",
            COMMAND_CHECK,
            "command: \"curl -sf -H 'X-Token: {{ secrets.api_token }}' http://127.0.0.1:1/\"",
            "health[1].command",
        ),
        (
            "the secrets through a variable",
            COMMAND_CHECK,
            "command: \"{% set s = secrets %}test -n '{{ s.api_token }}'\"",
            "health[1].command",
        ),
        (
            "a template that renders the secret, included",
            COMMAND_CHECK,
            "command: \"test -n '{% include 'web/app.env.j2' %}'\"",
            "health[1].command",
        ),
        (
            "debug(), which prints the whole context",
            COMMAND_CHECK,
            "command: \"test -n '{{ debug() }}'\"",
            "health[1].command",
        ),
    ]
}

#[track_caller]
fn no_token(what: &str, run: &Run) {
    assert!(
        !run.all().contains(TOKEN),
        "{what}: the secret was printed:\n{}",
        run.all()
    );
}

/// Whether `run` refused a check with the diagnostic every command gives
/// for `field`, without printing the secret.
fn refusal(run: &Run, field: &str) -> Result<(), String> {
    let prefix = format!("{APP}: {field}: ");
    let line = run.stderr.lines().find(|l| l.starts_with(&prefix));
    let hint = run
        .stderr
        .contains("a check must not carry a secret: its text is logged and recorded")
        && run.stderr.contains("curl -H @token.hdr");
    if run.all().contains(TOKEN) {
        return Err("the secret was printed".into());
    }
    if run.code != 2 {
        return Err(format!("exit {} (want 2)", run.code));
    }
    if !line.is_some_and(|l| l.contains("secret")) {
        return Err(format!("no line starting {prefix:?} about a secret"));
    }
    if !hint {
        return Err("no hint".into());
    }
    Ok(())
}

#[track_caller]
fn refused(what: &str, run: &Run, field: &str) {
    if let Err(e) = refusal(run, field) {
        panic!("{what}: {e}:\n{}", run.all());
    }
}

#[test]
fn a_health_check_with_a_secret_is_refused_by_check_plan_and_deploy() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.with_secret(&["alpha"], TOKEN);
    let good = d.fleet.commit("web gets a token");
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    let ssh = [("FLEETGATE_SSH_KEY", key.as_str())];
    let app = d.fleet.read(APP);
    let mut failures = Vec::new();
    for (what, from, to, field) in secret_checks() {
        d.fleet.write(APP, &app).edit(APP, from, to);
        d.fleet.commit(what);
        let plan = ["plan", "--base", &good, "--head", "HEAD"];
        for args in [&["check"][..], &["check", "--rev", "HEAD"], &plan] {
            if let Err(e) = refusal(&d.fleet.run(args), field) {
                failures.push(format!("{what}: {args:?}: {e}"));
            }
        }
        let run = d.fleet.run_env(
            &["deploy", "--stage", "canary", "--rev", "HEAD", "-vv"],
            &ssh,
        );
        if let Err(e) = refusal(&run, field) {
            failures.push(format!("{what}: deploy: {e}"));
        }
        let root = &d.hosts.host("alpha-1").deploy_root;
        if run.stderr.contains("alpha-1 web") || std::fs::read_dir(root).unwrap().count() > 0 {
            failures.push(format!("{what}: deploy contacted the host"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The same fleet without the secret in its checks deploys.
    d.fleet.write(APP, &app);
    d.fleet.commit("checks without secrets");
    d.fleet.run(&["check"]).code(0);
    let run = d
        .fleet
        .run_env(&["deploy", "--stage", "canary", "--rev", "HEAD"], &ssh);
    run.code(0);
    no_token("a clean deploy", &run);
}

#[test]
fn a_secret_value_pasted_into_a_check_is_refused_at_deploy() {
    // No `secrets.` in the check: the value came in through a client var, so
    // only the rendering with the real values can see it.
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.with_secret(&["alpha"], TOKEN);
    d.fleet.edit(
        "clients/alpha.yaml",
        "  note: plain\n",
        &format!("  note: plain\n  probe: {TOKEN}\n"),
    );
    d.fleet
        .edit(APP, HTTP_CHECK, "/health?t={{ client.vars.probe }}\"");
    d.fleet.commit("a token pasted into a var");
    let run = d.deploy("canary");
    assert_eq!(run.code, 2, "{}", run.all());
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with(&format!("{APP}: health[0].http: ")))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(
        line.contains("`api_token`"),
        "names the secret's key: {line}"
    );
    no_token("deploy", &run);
    assert_eq!(
        std::fs::read_dir(&d.hosts.host("alpha-1").deploy_root)
            .unwrap()
            .count(),
        0,
        "nothing is deployed"
    );
}

/// An env file whose include fails only with the real value: masked, the
/// value starts with `••••` and nothing is included.
const FAILS_WITH_REAL_VALUES: &str = "API_TOKEN={{ secrets.api_token }}\n{% if \"••••\" not in secrets.api_token %}{% include \"pw-\" ~ secrets.api_token %}{% endif %}\n";

#[test]
fn a_template_that_fails_only_with_the_real_values_does_not_print_them() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.with_secret(&["alpha"], TOKEN);
    d.fleet
        .write("pipelines/apps/web/app.env.j2", FAILS_WITH_REAL_VALUES);
    d.fleet.commit("an include named after a secret");
    // Masked, it renders: check and plan have nothing to say.
    d.fleet.run(&["check"]).code(0);
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    for args in [
        vec!["deploy", "--stage", "canary", "--rev", "HEAD"],
        vec![
            "deploy", "--stage", "canary", "--rev", "HEAD", "--format", "json",
        ],
        vec![
            "deploy",
            "--stage",
            "canary",
            "--rev",
            "HEAD",
            "-vv",
            "--log-format",
            "json",
        ],
    ] {
        let run = d.fleet.run_env(&args, &[("FLEETGATE_SSH_KEY", &key)]);
        assert_eq!(run.code, 2, "{args:?}: {}", run.all());
        no_token(&format!("{args:?}"), &run);
        assert!(
            run.stderr.contains("pipelines/apps/web/app.env.j2") && run.stderr.contains("pw-••••"),
            "{args:?}: the message names the template, masked:\n{}",
            run.stderr
        );
    }
    assert_eq!(
        std::fs::read_dir(&d.hosts.host("alpha-1").deploy_root)
            .unwrap()
            .count(),
        0,
        "nothing is deployed"
    );
}

#[test]
fn run_refuses_both_before_touching_a_host_or_the_records() {
    let p = Pipeline::with(&[("alpha", "canary", &["alpha-1"])]);
    let c0 = p.head();
    p.d.with_secret(&["alpha"], TOKEN);
    let c1 = p.push("web gets a token");
    p.run(&c0, &c1, &[]).code(0);
    let deployed = "refs/fleetgate/deployed/canary/alpha";
    assert_eq!(p.remote_ref(deployed), Some(c1.clone()));
    let serving = p.serving("alpha-1");

    // A check with a secret: the plan already refuses it.
    let app = p.d.fleet.read(APP);
    p.d.fleet
        .edit(APP, HTTP_CHECK, "/health?token={{ secrets.api_token }}\"");
    let c2 = p.push("a check with a secret");
    let run = p.run(&c1, &c2, &[]);
    refused("run", &run, "health[0].http");

    // A template that fails only with the real values: the deploy step
    // refuses it, masked.
    p.d.fleet.write(APP, &app);
    p.d.fleet
        .write("pipelines/apps/web/app.env.j2", FAILS_WITH_REAL_VALUES);
    let c3 = p.push("an include named after a secret");
    let run = p.run(&c1, &c3, &[]);
    assert_eq!(run.code, 2, "{}", run.all());
    no_token("run", &run);
    assert!(
        run.stderr.contains("pipelines/apps/web/app.env.j2"),
        "{}",
        run.stderr
    );

    assert_eq!(
        p.remote_ref(deployed),
        Some(c1),
        "nothing recorded as deployed"
    );
    assert_eq!(p.serving("alpha-1"), serving, "the host still runs c1");
    assert_eq!(p.remote_ref("refs/fleetgate/lock"), None, "lock released");
}
