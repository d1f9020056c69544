//! Command-line types only (clap). Behaviour lives in `commands/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands::{
    approve::ApproveArgs, check::CheckArgs, completions::CompletionsArgs, deploy::DeployArgs,
    history::HistoryArgs, hosts::HostsArgs, lock::LockArgs, man::ManArgs, plan::PlanArgs,
    restore::RestoreArgs, rollback::RollbackArgs, run::RunArgs, scan::ScanArgs, status::StatusArgs,
};
use crate::printer::ColorChoice;

/// The exit codes (design.md §4) in README's words: the help's table and
/// the man page's EXIT STATUS. A test holds README's table to this one.
pub const EXIT_CODES: [(u8, &str); 5] = [
    (0, "done; every gate passed (or nothing to do)"),
    (
        1,
        "a gate blocked, or a deploy failed and was handled; `lock release --run-id` found another run's lock (left as it is)",
    ),
    (
        2,
        "invalid input: arguments, YAML, templates, secrets that do not decrypt or fail their MAC, unpinned images, unknown revisions; a CA file (`FLEETGATE_CA_FILE`, `SSL_CERT_FILE`) or a CI variable or event payload field that cannot be used",
    ),
    (
        3,
        "infrastructure: a host, the forge, the registry, trivy, the Git remote or object database could not be reached or read; the forge's TLS certificate is not trusted; a Hetzner Cloud snapshot or rebuild ended in `error` or did not finish in time; a host lost during a change could not be rolled back; a run record is corrupt; the pipeline lock is held by another run, or a run lost it (taken over or released) and stopped; a run or deploy was interrupted (SIGTERM/SIGINT)",
    ),
    (4, "waiting for an approval"),
];

/// `Exit codes:` and the table, each meaning wrapped under its code.
fn exit_code_help() -> String {
    let mut out = String::from("Exit codes:\n");
    for (code, meaning) in EXIT_CODES {
        let mut line = format!("  {code}  ");
        for word in meaning.split(' ') {
            if line.len() + word.len() > 79 && line.trim_end().len() > 4 {
                out.push_str(line.trim_end());
                out.push('\n');
                line = "     ".into();
            }
            line.push_str(word);
            line.push(' ');
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `fleetgate`: the global options and one command.
#[derive(Debug, Parser)]
#[command(name = "fleetgate", version = env!("FLEETGATE_VERSION_LINE"), about, long_about = None, after_help = exit_code_help())]
pub struct Cli {
    /// The fleet repository (default: the Git repository around the working directory).
    #[arg(long, global = true, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// How progress and errors are written to stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// More detail on stderr (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// When plan diffs and outcome tables on stdout are coloured (never JSON
    /// or markdown).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the fleet repository (the work tree by default).
    Check(CheckArgs),
    /// Say exactly which clients, hosts and apps change between two commits.
    Plan(PlanArgs),
    /// The image gate: pinned images, scanned by trivy against the policy.
    Scan(ScanArgs),
    /// Deploy one stage: upload, switch, restart, health gates, rollback on failure.
    Deploy(DeployArgs),
    /// Record an approval for the current plan of a commit.
    Approve(ApproveArgs),
    /// The whole pipeline: plan, stages in order, approvals, records, revert on failure.
    Run(RunArgs),
    /// What each host runs; with --drift, whether its files still match the repo.
    Status(StatusArgs),
    /// Put a client back on its previous release (or --to REV) by hand.
    Rollback(RollbackArgs),
    /// Rebuild a Hetzner server from a snapshot fleetgate took before a deploy, then re-check its health.
    Restore(RestoreArgs),
    /// Who holds the pipeline lock, until when; `lock release` removes it.
    Lock(LockArgs),
    /// The runs recorded in Git, newest first: commit, plan, stages, approvals, revert.
    History(HistoryArgs),
    /// Every host and whether its key is pinned; `hosts trust` pins unpinned ones for review.
    Hosts(HostsArgs),
    /// Print a shell completion script.
    ///
    /// bash: `fleetgate completions bash > /etc/bash_completion.d/fleetgate`;
    /// zsh: `fleetgate completions zsh > "${fpath[1]}/_fleetgate"`;
    /// fish: `fleetgate completions fish > ~/.config/fish/completions/fleetgate.fish`.
    Completions(CompletionsArgs),
    /// Print the manual page (roff): `fleetgate man | man -l -`.
    Man(ManArgs),
}

/// The help documents itself: every argument of every command says what it
/// is for, and the exit codes are README's.
#[cfg(test)]
mod help_tests {
    use clap::CommandFactory;

    use super::{Cli, EXIT_CODES};

    /// Every argument (flags, options, positionals) of `cmd` and of its
    /// commands: (command path, argument id, has help).
    fn arguments(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String, bool)>) {
        for arg in cmd.get_arguments() {
            let text = |h: Option<&clap::builder::StyledStr>| {
                h.is_some_and(|h| !h.to_string().trim().is_empty())
            };
            let documented = text(arg.get_help()) || text(arg.get_long_help());
            out.push((path.to_string(), arg.get_id().to_string(), documented));
        }
        for sub in cmd.get_subcommands() {
            arguments(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_of_every_command_has_help() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut all = Vec::new();
        arguments(&cmd, "fleetgate", &mut all);
        // Not vacuous: the commands' own arguments are in the walk.
        for (path, id) in [
            ("fleetgate rollback", "client"),
            ("fleetgate status", "format"),
            ("fleetgate history", "limit"),
            ("fleetgate lock release", "reason"),
            ("fleetgate completions", "shell"),
            ("fleetgate plan", "forge"),
        ] {
            assert!(
                all.iter().any(|(p, i, _)| p == path && i == id),
                "{path}: {id} not walked"
            );
        }
        let missing: Vec<String> = all
            .iter()
            .filter(|(_, _, documented)| !documented)
            .map(|(path, id, _)| format!("{path}: {id}"))
            .collect();
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
    }

    /// `--forge` only where a forge is talked to; the global options are
    /// the ones every command uses.
    #[test]
    fn forge_is_offered_only_by_the_commands_that_talk_to_one() {
        let mut cmd = Cli::command();
        cmd.build();
        let has = |name: &str, id: &str| {
            cmd.find_subcommand(name)
                .unwrap()
                .get_arguments()
                .any(|a| a.get_id() == id)
        };
        for name in ["plan", "run", "approve", "scan", "status"] {
            assert!(has(name, "forge"), "{name} --forge");
        }
        for name in ["check", "deploy", "rollback", "lock", "history", "hosts"] {
            assert!(!has(name, "forge"), "{name} offers --forge");
        }
        let globals: Vec<String> = cmd
            .get_arguments()
            .filter(|a| a.is_global_set())
            .map(|a| a.get_id().to_string())
            .collect();
        assert_eq!(globals, ["repo", "log_format", "verbose", "color"]);
    }

    #[test]
    fn the_help_shows_the_exit_codes_as_the_readme_has_them() {
        let long = Cli::command().render_long_help().to_string();
        let short = Cli::command().render_help().to_string();
        for help in [&long, &short] {
            assert!(
                help.contains("Exit codes:\n  0  done; every gate passed"),
                "{help}"
            );
            let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
            for (code, meaning) in EXIT_CODES {
                assert!(
                    flat.contains(&format!("{code} {meaning}")),
                    "{code}: {help}"
                );
            }
        }
        let readme = include_str!("../README.md");
        let table = readme
            .split("### Exit codes\n")
            .nth(1)
            .expect("README has ### Exit codes");
        let rows: Vec<(u8, &str)> = table
            .lines()
            .skip_while(|l| !l.starts_with("| 0 "))
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
                (cells[0].trim().parse().unwrap(), cells[1].trim())
            })
            .collect();
        assert_eq!(rows, EXIT_CODES, "README's table and the help's differ");
    }
}

/// Every `fleetgate` invocation in the CI workflows (and in the GitHub
/// examples of docs/github-actions.md) must parse with this very CLI: a
/// renamed flag breaks this test, not a production deploy.
#[cfg(test)]
mod workflow_tests {
    use std::path::Path;

    use clap::Parser;
    use serde_json::Value;

    use super::Cli;

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    /// The workflows' YAML documents: `.forgejo/workflows/*.yaml` and the
    /// ```yaml blocks of docs/github-actions.md that are workflows.
    fn workflows() -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let dir = root().join(".forgejo/workflows");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect(".forgejo/workflows exists")
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.strip_prefix(root()).unwrap().display().to_string();
            out.push((name.clone(), parse(&name, &text)));
        }
        let doc = std::fs::read_to_string(root().join("docs/github-actions.md")).unwrap();
        for (i, block) in doc.split("```yaml\n").skip(1).enumerate() {
            let text = block.split("```").next().unwrap();
            let name = format!("docs/github-actions.md yaml block {}", i + 1);
            let v = parse(&name, text);
            if v.get("jobs").is_some() {
                out.push((name, v));
            }
        }
        out
    }

    fn parse(name: &str, text: &str) -> Value {
        serde_saphyr::from_str::<Value>(text).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// The `run:` scripts of every step, with the step's env.
    fn scripts(wf: &Value) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for job in wf["jobs"].as_object().into_iter().flat_map(|j| j.values()) {
            for step in job["steps"].as_array().into_iter().flatten() {
                if let Some(run) = step["run"].as_str() {
                    out.push((run.to_string(), step["env"].clone()));
                }
            }
        }
        out
    }

    /// The argument vectors of the `fleetgate` commands in a shell script:
    /// continuation lines joined, `${{ … }}` and `$VAR` replaced by a
    /// placeholder, cut at the shell operators that end a command.
    fn invocations(script: &str) -> Vec<Vec<String>> {
        let joined = script.replace("\\\n", " ");
        let mut out = Vec::new();
        for line in joined.lines() {
            let mut line = line.to_string();
            while let Some(start) = line.find("${{") {
                let end = line[start..].find("}}").expect("closed expression") + start + 2;
                line.replace_range(start..end, "EXPR");
            }
            let mut rest = line.as_str();
            while let Some(at) = find_command(rest) {
                let cmd = &rest[at..];
                let end = ["&&", "||", ";", "|", ")", ">"]
                    .iter()
                    .filter_map(|op| cmd.find(op))
                    .min()
                    .unwrap_or(cmd.len());
                out.push(split(&cmd[..end]));
                rest = &cmd[end..];
            }
        }
        out
    }

    /// Where `fleetgate` starts a command (not `.forgejo/…`, not a word part).
    fn find_command(s: &str) -> Option<usize> {
        let mut from = 0;
        while let Some(i) = s[from..].find("fleetgate ") {
            let at = from + i;
            let before = s[..at].trim_end();
            if before.is_empty()
                || before.ends_with("&&")
                || before.ends_with("||")
                || before.ends_with(';')
                || before.ends_with("$(")
                || before.ends_with('|')
            {
                return Some(at);
            }
            from = at + 1;
        }
        None
    }

    fn split(cmd: &str) -> Vec<String> {
        let mut args = Vec::new();
        let mut cur = String::new();
        let mut quote: Option<char> = None;
        let mut any = false;
        for c in cmd.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => cur.push(c),
                (None, '"' | '\'') => {
                    quote = Some(c);
                    any = true;
                }
                (None, c) if c.is_whitespace() => {
                    if any || !cur.is_empty() {
                        args.push(std::mem::take(&mut cur));
                        any = false;
                    }
                }
                (None, c) => cur.push(c),
            }
        }
        if any || !cur.is_empty() {
            args.push(cur);
        }
        args.into_iter()
            .map(|a| {
                if a.starts_with('$') {
                    "VALUE".into()
                } else {
                    a
                }
            })
            .collect()
    }

    #[test]
    fn every_fleetgate_invocation_parses() {
        let mut seen = Vec::new();
        for (name, wf) in workflows() {
            for (script, _) in scripts(&wf) {
                for argv in invocations(&script) {
                    if let Err(e) = Cli::try_parse_from(&argv) {
                        panic!("{name}: `{}` does not parse:\n{e}", argv.join(" "));
                    }
                    seen.push((name.clone(), argv[1].clone()));
                }
            }
        }
        // Not vacuous: the commands each workflow is for are there.
        for (file, command) in [
            (".forgejo/workflows/plan.yaml", "check"),
            (".forgejo/workflows/plan.yaml", "plan"),
            (".forgejo/workflows/deploy.yaml", "run"),
            (".forgejo/workflows/promote.yaml", "approve"),
            (".forgejo/workflows/promote.yaml", "run"),
            (".forgejo/workflows/scheduled.yaml", "scan"),
            (".forgejo/workflows/scheduled.yaml", "status"),
        ] {
            assert!(
                seen.iter().any(|(f, c)| f == file && c == command),
                "{file} does not call `fleetgate {command}`: {seen:?}"
            );
        }
        assert!(
            seen.iter()
                .any(|(f, c)| f.starts_with("docs/") && c == "approve"),
            "docs/github-actions.md has no approve step: {seen:?}"
        );
    }

    #[test]
    fn the_plan_job_never_sees_the_age_key_and_deploys_do_not_overlap() {
        let all = workflows();
        let get = |n: &str| &all.iter().find(|(name, _)| name.ends_with(n)).unwrap().1;
        let plan = get("plan.yaml");
        assert!(plan["on"].get("pull_request").is_some());
        let text = serde_json::to_string(plan).unwrap();
        assert!(!text.contains("SOPS_AGE_KEY") && !text.contains("FLEETGATE_SSH_KEY"));
        assert!(
            scripts(plan)
                .iter()
                .flat_map(|(s, _)| invocations(s))
                .any(|a| a[1] == "plan" && a.iter().any(|x| x == "--comment"))
        );
        for name in ["deploy.yaml", "promote.yaml"] {
            let wf = get(name);
            assert_eq!(wf["concurrency"]["group"], "fleetgate-deploy", "{name}");
            assert_eq!(wf["concurrency"]["cancel-in-progress"], false, "{name}");
        }
        assert!(get("deploy.yaml")["on"]["push"]["branches"][0] == "main");
        let promote = get("promote.yaml");
        assert!(
            promote["on"]["workflow_dispatch"]["inputs"]
                .get("rev")
                .is_some()
        );
        assert!(promote["on"].get("issue_comment").is_some());
        // The scheduled checks: weekly and by hand, each keeping its issues.
        let scheduled = get("scheduled.yaml");
        assert_eq!(scheduled["on"]["schedule"][0]["cron"], "17 5 * * 1");
        assert!(scheduled["on"].get("workflow_dispatch").is_some());
        for command in ["scan", "status"] {
            assert!(
                scripts(scheduled)
                    .iter()
                    .flat_map(|(s, _)| invocations(s))
                    .any(|a| a[1] == command && a.iter().any(|x| x == "--issues")),
                "scheduled.yaml: {command} --issues"
            );
        }
        // Secrets only where needed: the age key only in steps that deploy
        // or render real files (`status --drift` compares their hashes).
        for (name, wf) in &all {
            for (script, env) in scripts(wf) {
                if env.get("SOPS_AGE_KEY").is_some() {
                    assert!(
                        invocations(&script).iter().any(|a| a[1] == "run"
                            || (a[1] == "status" && a.iter().any(|x| x == "--drift"))),
                        "{name}: the age key is given to a step that does not deploy"
                    );
                }
            }
        }
    }

    #[test]
    fn invocations_are_found_and_split_like_a_shell() {
        let found = invocations(
            "rc=0\nfleetgate run --base \"${{ github.event.before }}\" --head x --comment || rc=$?\nbash .forgejo/install.sh\nrev=$(fleetgate approve --from-ci)",
        );
        assert_eq!(
            found,
            vec![
                vec![
                    "fleetgate",
                    "run",
                    "--base",
                    "EXPR",
                    "--head",
                    "x",
                    "--comment"
                ],
                vec!["fleetgate", "approve", "--from-ci"],
            ]
        );
        assert!(Cli::try_parse_from(["fleetgate", "plan", "--bogus"]).is_err());
    }
}
