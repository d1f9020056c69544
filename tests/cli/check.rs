//! `fleetgate check`: the example fleet passes; every broken fleet of the
//! corpus fails with exit 2, naming the file (and field and line where known).

use crate::common::{Fleet, example_secret_values, wrong_key};

#[test]
fn example_fleet_is_valid() {
    let fleet = Fleet::example();
    let run = fleet.run(&["check"]);
    run.code(0);
    assert_eq!(
        run.stdout,
        "ok: 3 clients, 4 hosts, 4 apps, 2 stages at work tree\n"
    );
    let run = fleet.run(&["check", "--rev", "HEAD"]);
    run.code(0);
    assert!(run.stdout.starts_with("ok: 3 clients"), "{}", run.stdout);
}

/// One broken fleet: what to do to the example, and what the user must see.
struct Broken {
    name: &'static str,
    break_it: fn(&Fleet),
    /// `file[:line]: [field: ]` prefix of the diagnostic.
    location: &'static str,
    message: &'static str,
}

const WHOAMI: &str = "pipelines/apps/whoami/app.yaml";
const DIGEST: &str = "sha256:200689790a0a0ea48ca45992e0450bc26ccab5307375b41c84dfc4f2475937ab";

/// Makes `rel` a symbolic link to `target`, as `ln -s target rel` would.
pub fn symlink(f: &Fleet, target: &str, rel: &str) {
    std::os::unix::fs::symlink(target, f.path(rel))
        .unwrap_or_else(|e| panic!("symlink {rel} -> {target}: {e}"));
}

fn corpus() -> Vec<Broken> {
    vec![
        Broken {
            name: "bad YAML",
            break_it: |f| {
                f.edit("clients/alpha.yaml", "apps: [whoami]", "apps: [whoami");
            },
            location: "clients/alpha.yaml:",
            message: "",
        },
        Broken {
            name: "unknown key",
            break_it: |f| {
                f.edit(
                    "clients/alpha.yaml",
                    "group: canary",
                    "group: canary\ngroops: [x]",
                );
            },
            location: "clients/alpha.yaml:4",
            message: "unknown field `groops`",
        },
        Broken {
            name: "unknown key deep in a list",
            break_it: |f| {
                f.edit(
                    "clients/gamma.yaml",
                    "    port: 2222",
                    "    port: 2222\n    prot: tcp",
                );
            },
            location: "clients/gamma.yaml:10: hosts[1].prot",
            message: "unknown field `prot`",
        },
        Broken {
            name: "wrong type with a field path",
            break_it: |f| {
                f.edit("clients/gamma.yaml", "port: 2222", "port: twentytwo");
            },
            location: "clients/gamma.yaml:9: hosts[1].port",
            message: "",
        },
        Broken {
            name: "unpinned image",
            break_it: |f| {
                f.edit(WHOAMI, &format!("v1.11.0@{DIGEST}"), "v1.11.0");
            },
            location: "pipelines/apps/whoami/app.yaml:6: images.web",
            message: "is pinned by tag only",
        },
        Broken {
            name: ":latest",
            break_it: |f| {
                f.edit(
                    WHOAMI,
                    &format!("v1.11.0@{DIGEST}"),
                    &format!("latest@{DIGEST}"),
                );
            },
            location: "pipelines/apps/whoami/app.yaml:6: images.web",
            message: "`:latest`",
        },
        Broken {
            name: "digest without tag",
            break_it: |f| {
                f.edit(WHOAMI, &format!(":v1.11.0@{DIGEST}"), &format!("@{DIGEST}"));
            },
            location: "pipelines/apps/whoami/app.yaml:6: images.web",
            message: "names no tag",
        },
        Broken {
            name: "missing app",
            break_it: |f| {
                f.edit(
                    "clients/alpha.yaml",
                    "apps: [whoami]",
                    "apps: [whoami, wordpress]",
                );
            },
            location: "clients/alpha.yaml:4: apps[1]",
            message: "app `wordpress` does not exist",
        },
        Broken {
            name: "bad name ../x",
            break_it: |f| {
                f.edit("clients/alpha.yaml", "name: alpha-1", "name: ../x");
            },
            location: "clients/alpha.yaml:6: hosts[0].name",
            message: "host `../x` is not a valid name",
        },
        Broken {
            name: "bad client file name",
            break_it: |f| {
                let text = f.read("clients/alpha.yaml");
                f.write("clients/Alpha_2.yaml", &text);
            },
            location: "clients/Alpha_2.yaml",
            message: "client `Alpha_2` is not a valid name",
        },
        Broken {
            name: "bad duration",
            break_it: |f| {
                f.edit("pipelines/pipeline.yaml", "soak: 30s", "soak: 30 seconds");
            },
            location: "pipelines/pipeline.yaml: stages[0].soak",
            message: "`30 seconds` is not a duration",
        },
        Broken {
            name: "undefined template variable",
            break_it: |f| {
                f.edit(
                    "pipelines/apps/whoami/app.env.j2",
                    "WHOAMI_NAME",
                    "LOG_LEVEL={{ client.vars.log_level }}\nWHOAMI_NAME",
                );
            },
            location: "pipelines/apps/whoami/app.env.j2:1",
            message: "undefined value",
        },
        Broken {
            name: "template syntax error",
            break_it: |f| {
                f.edit(
                    "pipelines/apps/whoami/compose.yaml.j2",
                    "{{ app.images.web }}",
                    "{{ app.images.web ",
                );
            },
            location: "pipelines/apps/whoami/compose.yaml.j2:5",
            message: "syntax error",
        },
        Broken {
            name: "template file missing",
            break_it: |f| {
                f.remove("pipelines/apps/whoami/app.env.j2");
            },
            location: "pipelines/apps/whoami/app.yaml:9: files.app.env",
            message: "template `app.env.j2` does not exist",
        },
        Broken {
            name: "group no stage picks",
            break_it: |f| {
                f.edit("clients/alpha.yaml", "group: canary", "group: canery");
            },
            location: "clients/alpha.yaml:3: group",
            message: "group `canery` is not picked by any stage",
        },
        Broken {
            name: "secret an app needs is missing",
            break_it: |f| {
                f.edit(
                    WHOAMI,
                    "secrets: [api_token]",
                    "secrets: [api_token, license_key]",
                );
            },
            location: "clients/alpha.yaml: apps",
            message: "app `whoami` needs secret `license_key`",
        },
        Broken {
            name: "health check with both http and command",
            break_it: |f| {
                f.edit(
                    WHOAMI,
                    "  - command: \"test -s compose.yaml\"",
                    "  - command: \"test -s compose.yaml\"\n    http: \"http://x\"",
                );
            },
            location: "pipelines/apps/whoami/app.yaml:34: health[2]",
            message: "exactly one of `http` and `command`",
        },
        Broken {
            name: "approval without approvers",
            break_it: |f| {
                f.edit(
                    "pipelines/pipeline.yaml",
                    "      approvers: [alice, bob]",
                    "      approvers: []",
                );
            },
            location: "pipelines/pipeline.yaml: stages[1].approval.approvers",
            message: "nobody is listed as an approver",
        },
        Broken {
            name: "an ssh option that would turn off host key checking",
            break_it: |f| {
                f.edit(
                    "pipelines/pipeline.yaml",
                    "on_failure:",
                    "ssh:\n  options:\n    StrictHostKeyChecking: \"no\"\non_failure:",
                );
            },
            location: "pipelines/pipeline.yaml:18: ssh.options.StrictHostKeyChecking",
            message: "is not an ssh option fleetgate allows",
        },
        Broken {
            name: "a health check that reads a file on the runner",
            break_it: |f| {
                f.edit(
                    WHOAMI,
                    "http://{{ host.address }}:{{ release.port }}/health",
                    "file:///etc/passwd",
                );
            },
            location: "pipelines/apps/whoami/app.yaml:21: health[0].http",
            message: "`file:///etc/passwd` is not an http:// or https:// URL",
        },
        Broken {
            name: "a health check whose scheme is templated",
            break_it: |f| {
                f.edit(
                    WHOAMI,
                    "http://{{ host.address }}",
                    "{{ 'fi' ~ 'le' }}:///etc/passwd#{{ host.address }}",
                );
            },
            location: "pipelines/apps/whoami/app.yaml: health[0].http",
            message: "is not an http:// or https:// URL (rendering for client",
        },
        Broken {
            name: "a template that is a symlink",
            break_it: |f| {
                f.remove("pipelines/apps/whoami/app.env.j2");
                symlink(f, "compose.yaml.j2", "pipelines/apps/whoami/app.env.j2");
            },
            location: "pipelines/apps/whoami/app.env.j2: ",
            message: "is a symlink; fleet files must be regular files",
        },
        Broken {
            name: "a client file that is a symlink inside the repository",
            break_it: |f| {
                let text = f.read("clients/alpha.yaml");
                f.write("docs/alpha.yaml", &text);
                f.remove("clients/alpha.yaml");
                symlink(f, "../docs/alpha.yaml", "clients/alpha.yaml");
            },
            location: "clients/alpha.yaml: ",
            message: "is a symlink; fleet files must be regular files",
        },
        Broken {
            name: "an app directory that is a symlink",
            break_it: |f| {
                std::fs::rename(f.path("pipelines/apps/whoami"), f.path("whoami")).unwrap();
                symlink(f, "../../whoami", "pipelines/apps/whoami");
            },
            location: "pipelines/apps/whoami: ",
            message: "is a symlink; fleet files must be regular files",
        },
        Broken {
            name: "a template that loops for hours",
            break_it: |f| {
                f.edit(
                    "pipelines/apps/whoami/app.env.j2",
                    "WHOAMI_NAME",
                    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}WHOAMI_NAME",
                );
            },
            location: "pipelines/apps/whoami/app.env.j2:1",
            message: "exceeded the render budget",
        },
        Broken {
            name: "a template that renders 100 MB at once",
            break_it: |f| {
                f.edit(
                    "pipelines/apps/whoami/app.env.j2",
                    "WHOAMI_NAME",
                    "{{ 'x' * 100000000 }}\nWHOAMI_NAME",
                );
            },
            location: "pipelines/apps/whoami/app.env.j2: ",
            message: "exceeded the render budget",
        },
        Broken {
            name: "a template that prints 100 MB in a loop",
            break_it: |f| {
                f.edit(
                    "pipelines/apps/whoami/app.env.j2",
                    "WHOAMI_NAME",
                    "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}\nWHOAMI_NAME",
                );
            },
            location: "pipelines/apps/whoami/app.env.j2: ",
            message: "exceeded the render budget",
        },
        Broken {
            name: "a host whose key is not pinned",
            break_it: |f| {
                f.edit("clients/alpha.yaml", "name: alpha-1", "name: alpha-9");
            },
            location: "clients/alpha.yaml: hosts[0]",
            message: "host `alpha-9` (203.0.113.10) has no key in pipelines/known_hosts",
        },
        Broken {
            name: "plain value in a secrets file",
            break_it: |f| {
                f.write(
                    "secrets/clients/alpha.sops.yaml",
                    "api_token: leaked-plaintext\n",
                );
            },
            location: "secrets/clients/alpha.sops.yaml",
            message: "no `sops` metadata",
        },
        Broken {
            name: "empty secret value",
            break_it: |f| {
                f.sops_encrypt("secrets/clients/alpha.sops.yaml", "api_token: \"\"\n");
            },
            location: "secrets/clients/alpha.sops.yaml:1: api_token",
            message: "secret `api_token` is empty",
        },
        Broken {
            name: "tampered sops value",
            break_it: |f| {
                let text = f.read("secrets/clients/beta.sops.yaml");
                // Flip one character of the first ciphertext.
                let start = text.find("data:").unwrap() + 5;
                let c = &text[start..start + 1];
                let flipped = if c == "A" { "B" } else { "A" };
                f.write(
                    "secrets/clients/beta.sops.yaml",
                    &format!("{}{flipped}{}", &text[..start], &text[start + 1..]),
                );
            },
            location: "secrets/clients/beta.sops.yaml",
            message: "",
        },
        Broken {
            name: "a removed sops value fails the MAC",
            break_it: |f| {
                let text = f.read("secrets/clients/beta.sops.yaml");
                let rest: Vec<&str> = text.lines().skip(1).collect();
                f.write("secrets/clients/beta.sops.yaml", &(rest.join("\n") + "\n"));
            },
            location: "secrets/clients/beta.sops.yaml",
            message: "message authentication failed",
        },
        Broken {
            name: "swapped sops values do not decrypt",
            break_it: |f| {
                // Swap two whole encrypted values: each decrypts, the MAC does not match.
                let text = f.read("secrets/clients/beta.sops.yaml");
                let lines: Vec<&str> = text.lines().collect();
                let (a, b) = (
                    lines[0].split_once(": ").unwrap(),
                    lines[1].split_once(": ").unwrap(),
                );
                let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                out[0] = format!("{}: {}", a.0, b.1);
                out[1] = format!("{}: {}", b.0, a.1);
                f.write("secrets/clients/beta.sops.yaml", &(out.join("\n") + "\n"));
            },
            location: "secrets/clients/beta.sops.yaml",
            message: "",
        },
        Broken {
            name: "secrets of a client that does not exist",
            break_it: |f| {
                let text = f.read("secrets/clients/alpha.sops.yaml");
                f.write("secrets/clients/delta.sops.yaml", &text);
            },
            location: "secrets/clients/delta.sops.yaml",
            message: "belongs to no client",
        },
    ]
}

#[test]
fn broken_fleets_exit_2_naming_the_file() {
    let mut failures = Vec::new();
    for case in corpus() {
        let fleet = Fleet::example();
        let secrets = example_secret_values(&fleet);
        (case.break_it)(&fleet);
        let run = fleet.run(&["check"]);
        let ok_code = run.code == 2;
        let line = run
            .stderr
            .lines()
            .find(|l| l.starts_with(case.location))
            .unwrap_or("");
        let ok_location = !line.is_empty();
        let ok_message = line.contains(case.message);
        let ok_summary = run.stderr.contains("error: the fleet at work tree has");
        let leaked: Vec<&String> = secrets
            .iter()
            .filter(|s| run.all().contains(s.as_str()))
            .collect();
        if !(ok_code && ok_location && ok_message && ok_summary && leaked.is_empty()) {
            failures.push(format!(
                "{}: exit {} (want 2), want a line starting {:?} containing {:?}, leaked {:?}\n{}",
                case.name, run.code, case.location, case.message, leaked, run.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn tampered_and_wrong_key_messages_say_what_happened() {
    let fleet = Fleet::example().with_key(&wrong_key());
    let run = fleet.run(&["check"]);
    run.code(2);
    assert!(
        run.stderr.contains(
            "secrets/shared.sops.yaml: cannot decrypt: none of the configured age identities"
        ),
        "{}",
        run.stderr
    );
    // Every file that cannot be decrypted is named, not just the first.
    for client in ["alpha", "beta", "gamma"] {
        assert!(
            run.stderr.contains(&format!(
                "secrets/clients/{client}.sops.yaml: cannot decrypt"
            )),
            "{}",
            run.stderr
        );
    }

    // Values are bound to their key: moved ciphertext does not decrypt.
    let fleet = Fleet::example();
    let text = fleet.read("secrets/clients/beta.sops.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let (a, b) = (
        lines[0].split_once(": ").unwrap(),
        lines[1].split_once(": ").unwrap(),
    );
    let mut swapped: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    swapped[0] = format!("{}: {}", a.0, b.1);
    swapped[1] = format!("{}: {}", b.0, a.1);
    fleet.write(
        "secrets/clients/beta.sops.yaml",
        &(swapped.join("\n") + "\n"),
    );
    let run = fleet.run(&["check"]);
    run.code(2);
    assert!(
        run.stderr
            .contains("secrets/clients/beta.sops.yaml: a value does not decrypt"),
        "{}",
        run.stderr
    );

    // A value removed after encryption: every other value decrypts, the MAC does not match.
    let fleet = Fleet::example();
    let text = fleet.read("secrets/clients/beta.sops.yaml");
    let rest: Vec<&str> = text.lines().skip(1).collect();
    fleet.write("secrets/clients/beta.sops.yaml", &(rest.join("\n") + "\n"));
    let run = fleet.run(&["check"]);
    run.code(2);
    assert!(
        run.stderr
            .contains("secrets/clients/beta.sops.yaml: message authentication failed"),
        "{}",
        run.stderr
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let fleet = Fleet::example();
    fleet.edit("clients/alpha.yaml", "group: canary", "group: canery");
    fleet.edit(
        "clients/beta.yaml",
        "apps: [whoami, zitadel]",
        "apps: [whoami, zitadell]",
    );
    fleet.edit("pipelines/pipeline.yaml", "soak: 30s", "soak: soon");
    let run = fleet.run(&["check"]);
    run.code(2);
    for expected in [
        "clients/alpha.yaml:3: group",
        "clients/beta.yaml:3: apps[1]",
        "pipelines/pipeline.yaml: stages[0].soak",
    ] {
        assert!(
            run.stderr.contains(expected),
            "missing {expected}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn without_a_key_check_still_validates_key_names() {
    let fleet = Fleet::example().without_key();
    let run = fleet.run(&["check"]);
    run.code(0);
    assert!(
        run.stdout.contains("(secrets not decrypted)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("warning: no age identity configured"),
        "{}",
        run.stderr
    );
}

#[test]
fn bad_revision_is_exit_2_naming_it() {
    let fleet = Fleet::example();
    let run = fleet.run(&["check", "--rev", "no-such-branch"]);
    run.code(2);
    assert!(
        run.stderr.contains("resolve revision `no-such-branch`"),
        "{}",
        run.stderr
    );
}

#[test]
fn check_of_a_commit_reads_the_commit_not_the_work_tree() {
    let fleet = Fleet::example();
    fleet.edit("clients/alpha.yaml", "group: canary", "group: canery");
    fleet.run(&["check"]).code(2);
    fleet.run(&["check", "--rev", "HEAD"]).code(0);
    // Nothing was checked out or changed.
    assert_eq!(
        fleet.git(&["status", "--porcelain"]),
        "M clients/alpha.yaml"
    );
}

#[test]
fn check_errors_read_well() {
    let fleet = Fleet::example();
    fleet.edit("clients/gamma.yaml", "port: 2222", "port: 70000");
    fleet.edit(
        "clients/alpha.yaml",
        "apps: [whoami]",
        "apps: [whoami, wordpress]",
    );
    fleet.edit(
        "pipelines/apps/whoami/app.yaml",
        "v1.11.0@sha256:200689790a0a0ea48ca45992e0450bc26ccab5307375b41c84dfc4f2475937ab",
        "latest",
    );
    let run = fleet.run(&["check"]);
    run.code(2);
    insta::assert_snapshot!("check_errors", run.stderr);
}

const PIPELINE: &str = "pipelines/pipeline.yaml";

/// `ssh.options` that would run a command on the runner, read another file,
/// reach another host or trust another host key: `check` and `plan` refuse
/// each, naming the file and the option, and say what is allowed.
#[test]
fn ssh_options_outside_the_allow_list_are_refused() {
    let mut failures = Vec::new();
    for (name, value) in [
        ("KnownHostsCommand", "/usr/bin/touch /tmp/fleetgate-pwned"),
        ("Match", "exec \"touch /tmp/fleetgate-pwned\""),
        ("ProxyJump", "bastion.example.org"),
        ("proxyjump", "bastion.example.org"),
        ("ProxyCommand", "nc %h %p"),
        ("LocalCommand", "touch /tmp/fleetgate-pwned"),
        ("PermitLocalCommand", "yes"),
        ("StrictHostKeyChecking", "no"),
        ("UserKnownHostsFile", "/dev/null"),
        ("Include", "/etc/ssh/ssh_config"),
    ] {
        let fleet = Fleet::example();
        fleet.edit(
            PIPELINE,
            "on_failure:",
            &format!(
                "ssh:\n  options:\n    {name}: '{}'\non_failure:",
                value.replace('\'', "''")
            ),
        );
        let want = format!("{PIPELINE}:18: ssh.options.{name}: ");
        let check = fleet.run(&["check"]);
        fleet.commit(&format!("ssh option {name}"));
        let plan = fleet.run(&["plan", "--base", "HEAD~1", "--head", "HEAD"]);
        for (what, run) in [("check", &check), ("plan", &plan)] {
            let named = run.stderr.lines().any(|l| l.starts_with(&want));
            let hinted = run.stderr.contains("hint: allowed: AddressFamily, Ciphers");
            if run.code != 2 || !named || !hinted || !run.stdout.is_empty() {
                failures.push(format!(
                    "{what} with {name}: exit {} (want 2), want a line starting {want:?} and the allowed list\n{}{}",
                    run.code, run.stdout, run.stderr
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn ssh_options_that_tune_the_connection_are_accepted_in_any_case() {
    let fleet = Fleet::example();
    fleet.edit(
        PIPELINE,
        "on_failure:",
        "ssh:\n  options:\n    kexalgorithms: curve25519-sha256\n    Ciphers: '^aes128-gcm@openssh.com'\n    ConnectTimeout: 5\n    ServerAliveCountMax: 2\n    RekeyLimit: 1G 1h\non_failure:",
    );
    fleet.run(&["check"]).code(0);
    // Twice under two spellings is one option set twice.
    fleet.edit(
        PIPELINE,
        "    ConnectTimeout: 5",
        "    ConnectTimeout: 5\n    connecttimeout: 7",
    );
    let run = fleet.run(&["check"]);
    run.code(2);
    assert!(
        run.stderr
            .contains("ssh.options.connecttimeout: `ConnectTimeout` is set twice"),
        "{}",
        run.stderr
    );
}

/// A symlink is refused the same way from the work tree (where `check`
/// would follow it) and from a commit (where it is only its target's path).
#[test]
fn a_symlinked_template_is_refused_in_the_work_tree_and_in_a_commit() {
    let fleet = Fleet::example();
    let outside = fleet.path("../outside.env");
    std::fs::write(&outside, fleet.read("pipelines/apps/whoami/app.env.j2")).unwrap();
    fleet.remove("pipelines/apps/whoami/app.env.j2");
    symlink(
        &fleet,
        outside.to_str().unwrap(),
        "pipelines/apps/whoami/app.env.j2",
    );
    let want = "pipelines/apps/whoami/app.env.j2: is a symlink; fleet files must be regular files";
    let run = fleet.run(&["check"]);
    run.code(2);
    assert!(run.stderr.contains(want), "{}", run.stderr);
    // Said once, not also as a missing template.
    assert!(!run.stderr.contains("does not exist"), "{}", run.stderr);
    fleet.commit("app.env.j2 is a link");
    let run = fleet.run(&["check", "--rev", "HEAD"]);
    run.code(2);
    assert!(run.stderr.contains(want), "{}", run.stderr);
    assert!(
        run.stderr.contains("error: the fleet at commit"),
        "{}",
        run.stderr
    );
}

/// Two apps of one client claiming the same host name and path on one host:
/// only one of them could be reached through the host's proxy. `check`
/// refuses the fleet naming both apps, in text and in JSON.
#[test]
fn two_apps_routing_one_host_name_are_refused() {
    let fleet = Fleet::example();
    // zitadel is stateful (`rollback: freeze`) but a recreate app may
    // route; on beta it shares its host with whoami (blue/green).
    let zitadel = "pipelines/apps/zitadel/app.yaml";
    fleet.edit(
        zitadel,
        "  - hosts: [\"id.{{ client.domain }}\"]\n",
        "  - hosts: [\"whoami.{{ client.domain }}\"]\n    path: /auth\n",
    );
    // Another path on the same name: fine.
    fleet.run(&["check"]).code(0);

    fleet.edit(zitadel, "    path: /auth\n", "");
    let run = fleet.run(&["check"]);
    run.code(2);
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("pipelines/apps/zitadel/app.yaml: routes:"))
        .unwrap_or_else(|| panic!("no route conflict named:\n{}", run.stderr));
    assert!(
        line.contains(
            "`whoami.beta.example.org/` is routed by both `whoami` and `zitadel` on host beta-1 of client beta"
        ),
        "{line}"
    );
    assert!(
        run.stderr.contains("error: the fleet at work tree has"),
        "{}",
        run.stderr
    );

    let json = fleet.run(&["check", "--format", "json"]);
    json.code(2);
    let v = json.json();
    assert_eq!(v["ok"], false);
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v:#}");
    let p = &problems[0];
    assert_eq!(p["file"], "pipelines/apps/zitadel/app.yaml");
    assert_eq!(p["field"], "routes");
    let message = p["message"].as_str().unwrap();
    assert!(
        message.contains("`whoami`") && message.contains("`zitadel`"),
        "{message}"
    );
    assert!(p["hint"].is_string(), "{p}");
}
