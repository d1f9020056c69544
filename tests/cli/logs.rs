//! The last log lines of a failed app in `deploy`'s report: its JSON, its
//! run log on stderr and the run record in Git — from a compose app's
//! containers on a real dockerd, and from a `command` app's `commands.logs`.

use crate::deploy::DeployFleet;

/// The logs `run` reports for `web` on the only host, its JSON and the
/// run record of `rev` in Git.
fn reported_logs(d: &DeployFleet, run: &crate::common::Run, rev: &str) -> (String, String) {
    let json = run.json();
    let host = &json["hosts"][0];
    assert_eq!(host["host"], "alpha-1", "{json:#}");
    let logs = host["logs"]["web"].as_str().unwrap_or_default().to_string();
    let note: serde_json::Value =
        serde_json::from_str(&d.fleet.git(&["notes", "--ref", "fleetgate", "show", rev])).unwrap();
    let recorded = note["stages"]["canary"]["hosts"][0]["logs"]["web"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (logs, recorded)
}

#[test]
fn a_compose_app_failing_its_gate_reports_its_containers_last_lines() {
    let docker = crate::docker::Docker::start();
    let v1 = docker.build_and_push("web", "1.0", "image 1\n");
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.fleet.write(
        "pipelines/apps/web/app.yaml",
        &format!(
            r#"runtime: compose
images:
  web: {v1}
files:
  docker-compose.yml: compose.yml.j2
  health: health.j2
health:
  - http: "http://127.0.0.1:{{{{ host.port + 1000 }}}}/health"
    expect_body: "ok"
    interval: 200ms
    successes: 1
    failures: 3
    deadline: 20s
"#
        ),
    );
    // The container says why it is sick on its stdout, then serves.
    d.fleet.write(
        "pipelines/apps/web/compose.yml.j2",
        r#"services:
  web:
    image: {{ app.images.web }}
    network_mode: host
    stop_signal: SIGKILL
    command: ["/bin/busybox", "sh", "-c", "echo 'web: cannot open /data/app.db (read-only file system)'; exec /bin/busybox httpd -f -p 127.0.0.1:{{ host.port + 1000 }} -h /www"]
    volumes: ["./health:/www/health:ro"]
"#,
    );
    d.fleet.remove("pipelines/apps/web/start.sh.j2");
    d.fleet.edit(
        "pipelines/pipeline.yaml",
        "on_failure:",
        &format!(
            "runtimes:\n  compose: \"{}\"\non_failure:",
            docker.compose_command()
        ),
    );
    d.set("alpha", "health", "sick");
    let rev = d.fleet.commit("web as a compose app, sick");

    let run = d.deploy("canary");
    run.code(1);
    let line = "web: cannot open /data/app.db (read-only file system)";
    let (logs, recorded) = reported_logs(&d, &run, &rev);
    assert!(logs.contains(line), "{logs}\n{}", run.stdout);
    assert!(!logs.contains('\u{1b}'), "no colour: {logs:?}");
    assert_eq!(recorded, logs, "the run record has them as reported");
    assert!(
        run.stderr.contains(line) && run.stderr.contains("alpha-1 web logs"),
        "{}",
        run.stderr
    );
    // Fetched before the failed first deploy was taken down.
    let steps: Vec<String> = run.json()["hosts"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}:{}", s["step"].as_str().unwrap(), s["ok"]))
        .collect();
    let at = |step: &str| steps.iter().position(|s| s.starts_with(step)).unwrap();
    assert!(at("logs:true") < at("remove:"), "{steps:?}");
}

#[test]
fn a_command_app_failing_its_gate_reports_its_commands_logs() {
    let d = DeployFleet::new(&[("alpha", "canary", &["alpha-1"])], "");
    d.fleet.edit(
        "pipelines/apps/web/app.yaml",
        "  start: \"sh start.sh\"\n",
        "  start: \"sh start.sh\"\n  logs: \"tail -n 50 app.log\"\n",
    );
    d.fleet.edit(
        "pipelines/apps/web/start.sh.j2",
        "pid=../../web.pid\n",
        "pid=../../web.pid\ni=0; while [ $i -lt 120 ]; do i=$((i+1)); echo \"boot line $i\"; done > app.log\necho 'web {{ client.vars.version }}: no database at db.internal:5432' >> app.log\n",
    );
    d.fleet.commit("web writes app.log");
    d.deploy("canary").code(0);

    d.set("alpha", "version", "\"2\"")
        .set("alpha", "health", "sick");
    let rev = d.fleet.commit("web 2, sick");
    let run = d.deploy("canary");
    run.code(1);
    let (logs, recorded) = reported_logs(&d, &run, &rev);
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.len(), 50, "{logs}");
    assert_eq!(
        (lines[0], lines[49]),
        ("boot line 72", "web 2: no database at db.internal:5432")
    );
    assert_eq!(recorded, logs);
    assert!(
        run.stderr
            .contains("web 2: no database at db.internal:5432"),
        "{}",
        run.stderr
    );
    assert_eq!(run.json()["hosts"][0]["status"], "rolled_back");
    // The text report shows its end, under the table.
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    let text = d.fleet.run_env(
        &["deploy", "--stage", "canary", "--rev", "HEAD"],
        &[("FLEETGATE_SSH_KEY", &key)],
    );
    text.code(1);
    assert!(
        text.stdout.contains(
            "logs of web on alpha-1 (its last 20 of 50 lines; `--format json` and the run record have them all):\n    boot line 102\n"
        ) && text.stdout.contains("    web 2: no database at db.internal:5432\n"),
        "{}",
        text.stdout
    );
}
