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
        serde_json::json!({"clients": 3, "hosts": 4, "apps": 4, "stages": 2})
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

/// Colour reaches a person's terminal only: `--color always` colours the
/// plan's diff; a pipe (the tests' stdout), NO_COLOR and CI keep it plain;
/// JSON and markdown never carry it.
#[test]
fn colour_only_where_asked_and_never_in_json_or_markdown() {
    let f = Fleet::example();
    let base = f.git(&["rev-parse", "HEAD"]);
    f.edit(
        "clients/alpha.yaml",
        "whoami_port: 8080",
        "whoami_port: 8081",
    );
    let head = f.commit("alpha: port 8081");
    let plan = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["plan", "--base", &base, "--head", &head];
        args.extend_from_slice(extra);
        let run = f.run_env(&args, env);
        run.code(0);
        run
    };
    let coloured = plan(&["--color", "always"], &[]);
    for want in ["\u{1b}[31m-", "\u{1b}[32m+", "\u{1b}[0m"] {
        assert!(
            coloured.stdout.contains(want),
            "{want:?} in\n{}",
            coloured.stdout
        );
    }
    let piped = plan(&[], &[]);
    assert!(!piped.stdout.contains('\u{1b}'), "{}", piped.stdout);
    // Without its styles, the coloured plan is the plain one.
    let mut stripped = String::new();
    let mut rest = coloured.stdout.as_str();
    while let Some(at) = rest.find('\u{1b}') {
        stripped.push_str(&rest[..at]);
        rest = &rest[at + rest[at..].find('m').unwrap() + 1..];
    }
    stripped.push_str(rest);
    assert_eq!(stripped, piped.stdout);
    // CLICOLOR_FORCE colours a pipe unless NO_COLOR (set by the test env)
    // says no; CI keeps auto plain, --color always still colours.
    let forced = plan(&[], &[("NO_COLOR", ""), ("CLICOLOR_FORCE", "1")]);
    assert!(forced.stdout.contains('\u{1b}'), "{}", forced.stdout);
    let no_color = plan(&[], &[("CLICOLOR_FORCE", "1")]);
    assert!(!no_color.stdout.contains('\u{1b}'), "{}", no_color.stdout);
    let ci = plan(&["--color", "never"], &[("NO_COLOR", ""), ("CI", "true")]);
    assert!(!ci.stdout.contains('\u{1b}'));
    let ci_always = plan(&["--color", "always"], &[("CI", "true")]);
    assert!(ci_always.stdout.contains('\u{1b}'));
    for format in ["json", "markdown"] {
        let run = plan(&["--color", "always", "--format", format], &[]);
        assert!(!run.stdout.contains('\u{1b}'), "{format}:\n{}", run.stdout);
    }
    let bad = f.run(&[
        "plan",
        "--base",
        &base,
        "--head",
        &head,
        "--color",
        "sometimes",
    ]);
    bad.code(2);
    assert!(bad.stderr.contains("--color"), "{}", bad.stderr);
}

/// The commands `fleetgate --help` lists.
fn commands(f: &Fleet) -> Vec<String> {
    let help = f.run(&["--help"]);
    help.code(0);
    let listed: Vec<String> = help
        .stdout
        .split("Commands:\n")
        .nth(1)
        .expect("a Commands: section")
        .lines()
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .filter(|c| c != "help")
        .collect();
    for c in ["check", "history", "completions", "man"] {
        assert!(listed.iter().any(|l| l == c), "{c} in {listed:?}");
    }
    listed
}

#[test]
fn completions_cover_every_command() {
    let f = Fleet::example();
    let bash = f.run(&["completions", "bash"]);
    bash.code(0);
    assert!(
        bash.stdout.contains("complete -F _fleetgate"),
        "{}",
        bash.stdout
    );
    for c in commands(&f) {
        assert!(
            bash.stdout.contains(&format!("fleetgate__{c})"))
                || bash.stdout.contains(&format!("fleetgate,{c})")),
            "bash completion has no `{c}`"
        );
    }
    // The flags of a command, too.
    assert!(
        bash.stdout.contains("--client --limit --format"),
        "history's flags"
    );
    for shell in ["zsh", "fish"] {
        let run = f.run(&["completions", shell]);
        run.code(0);
        assert!(run.stdout.contains("history"), "{shell}");
    }
    // Outside any repository, and without keys: it only describes the CLI.
    let elsewhere = f.run(&["--repo", "/nonexistent", "completions", "bash"]);
    elsewhere.code(0);
    let bad = f.run(&["completions", "tcsh"]);
    bad.code(2);
    assert!(bad.stderr.contains("possible values"), "{}", bad.stderr);
}

#[test]
fn the_man_page_has_every_command_and_the_exit_codes() {
    let f = Fleet::example();
    let man = f.run(&["man"]);
    man.code(0);
    let page = &man.stdout;
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{page}");
    assert!(page.contains(".TH fleetgate 1"), "{page}");
    for c in commands(&f) {
        assert!(
            page.contains(&format!(".SS \"fleetgate {c}\"")),
            "no section for {c}"
        );
    }
    assert!(page.contains(".SS \"fleetgate lock release\""));
    let exit = page
        .split(".SH \"EXIT STATUS\"\n")
        .nth(1)
        .expect("an EXIT STATUS section");
    for (code, words) in [
        (0, "done; every gate passed"),
        (1, "a gate blocked"),
        (2, "invalid input"),
        (3, "infrastructure"),
        (4, "waiting for an approval"),
    ] {
        assert!(
            exit.contains(&format!(".TP\n\\fB{code}\\fR\n{words}")),
            "{code} in\n{exit}"
        );
    }
    // A page man can render, when it is installed.
    if std::process::Command::new("groff")
        .arg("-v")
        .output()
        .is_ok()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleetgate.1");
        std::fs::write(&path, page).unwrap();
        let out = std::process::Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn help_has_the_exit_codes_and_forge_only_where_it_means_something() {
    let f = Fleet::example();
    for flag in ["--help", "-h"] {
        let help = f.run(&[flag]);
        help.code(0);
        for line in [
            "Exit codes:",
            "  0  done; every gate passed (or nothing to do)",
            "  1  a gate blocked, or a deploy failed and was handled",
            "  2  invalid input: arguments, YAML, templates",
            "  3  infrastructure: a host, the forge, the registry",
            "  4  waiting for an approval",
        ] {
            assert!(
                help.stdout.contains(line),
                "{flag}: {line:?} in\n{}",
                help.stdout
            );
        }
        assert!(!help.stdout.contains("--forge"), "{}", help.stdout);
    }
    // scan and status since issue 17: their --issues talks to the forge.
    for c in ["plan", "run", "approve", "scan", "status"] {
        let help = f.run(&[c, "--help"]);
        assert!(
            help.stdout.contains("--forge <KIND>"),
            "{c}:\n{}",
            help.stdout
        );
    }
    for c in ["check", "deploy", "rollback", "history", "lock"] {
        let help = f.run(&[c, "--help"]);
        assert!(!help.stdout.contains("--forge"), "{c}:\n{}", help.stdout);
    }
    // Bad input names the flag; the CI's FLEETGATE_FORGE bothers no other command.
    let refused = f.run(&["check", "--forge", "github"]);
    refused.code(2);
    assert!(refused.stderr.contains("--forge"), "{}", refused.stderr);
    f.run_env(&["check"], &[("FLEETGATE_FORGE", "github")])
        .code(0);
    let bad = f.run(&[
        "plan", "--base", "HEAD", "--head", "HEAD", "--forge", "gitlab",
    ]);
    bad.code(2);
    assert!(
        bad.stderr.contains("--forge") && bad.stderr.contains("forgejo"),
        "{}",
        bad.stderr
    );
}
