//! `pipelines/pipeline.yaml`: stages (names, groups, soak, approval,
//! parallelism, max_failures), the scan policy, the failure policy, runtime
//! commands and the `ssh.options` allow-list.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::Check;
use crate::config::model::{
    Approval, OnFailure, Pipeline, RuntimeCommands, ScanPolicy, Severity, Stage,
};
use crate::config::{FleetFiles, PIPELINE, raw, ssh_options, yaml};
use crate::error::Diagnostic;

pub(super) fn validate(files: &FleetFiles, problems: &mut Vec<Diagnostic>) -> Option<Pipeline> {
    let Some(bytes) = files.files.get(PIPELINE) else {
        problems.push(
            Diagnostic::new(PIPELINE, format!("is missing from the {}", files.label)).hint(
                "every fleet repository has pipelines/pipeline.yaml; see ../shared/design.md §1",
            ),
        );
        return None;
    };
    let raw: raw::Pipeline = match yaml::parse(PIPELINE, bytes) {
        Ok(r) => r,
        Err(d) => {
            problems.push(d);
            return None;
        }
    };
    let mut c = Check {
        file: PIPELINE,
        problems,
    };
    if raw.stages.is_empty() {
        c.plain(
            "stages",
            "no stages are defined",
            "define at least one stage, e.g. `canary`",
        );
    }
    let mut stages = Vec::new();
    let mut names = BTreeSet::new();
    let mut groups = BTreeSet::new();
    for (i, s) in raw.stages.iter().enumerate() {
        let f = |k: &str| format!("stages[{i}].{k}");
        c.name(&f("name"), &s.name, "stage");
        c.name(&f("group"), &s.group, "group");
        if !names.insert(s.name.value.clone()) {
            c.at(
                &f("name"),
                &s.name,
                format!("stage `{}` is defined twice", s.name.value),
                "give each stage its own name",
            );
        }
        if !groups.insert(s.group.value.clone()) {
            c.at(
                &f("group"),
                &s.group,
                format!("group `{}` is picked by two stages", s.group.value),
                "a group's clients belong to exactly one stage",
            );
        }
        let soak = match &s.soak {
            Some(t) => c.duration(&f("soak"), &t.value, Duration::ZERO),
            None => Duration::ZERO,
        };
        let approval = match &s.approval {
            Some(a) if a.required => {
                if a.approvers.is_empty() {
                    c.plain(
                        &f("approval.approvers"),
                        "approval is required but nobody is listed as an approver",
                        "list the forge user names whose approval counts",
                    );
                }
                for (j, who) in a.approvers.iter().enumerate() {
                    let ok = !who.value.is_empty()
                        && who
                            .value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                    if !ok {
                        c.at(
                            &f(&format!("approval.approvers[{j}]")),
                            who,
                            format!("`{}` is not a forge user name", who.value),
                            "user names are letters, digits, `-`, `_` and `.`",
                        );
                    }
                }
                Some(Approval {
                    approvers: a.approvers.iter().map(|a| a.value.clone()).collect(),
                })
            }
            _ => None,
        };
        let parallelism = match &s.parallelism {
            Some(p) if p.value == 0 => {
                c.at(&f("parallelism"), p, "parallelism must be at least 1", "");
                1
            }
            Some(p) => p.value,
            None => 1,
        };
        stages.push(Stage {
            name: s.name.value.clone(),
            group: s.group.value.clone(),
            soak,
            approval,
            parallelism,
            max_failures: s.max_failures.unwrap_or(0),
        });
    }
    let mut fail_on = Vec::new();
    let mut ignore_unfixed = false;
    if let Some(scan) = &raw.scan {
        ignore_unfixed = scan.ignore_unfixed;
        for (i, sev) in scan.fail_on.iter().enumerate() {
            match Severity::parse(&sev.value) {
                Some(s) => fail_on.push(s),
                None => c.at(
                    &format!("scan.fail_on[{i}]"),
                    sev,
                    format!("`{}` is not a severity", sev.value),
                    "use CRITICAL, HIGH, MEDIUM, LOW or UNKNOWN",
                ),
            }
        }
    } else {
        fail_on = vec![Severity::Critical, Severity::High];
    }
    let on_failure = raw.on_failure.as_ref().map_or(
        OnFailure {
            rollback: true,
            revert: false,
        },
        |o| OnFailure {
            rollback: o.rollback,
            revert: o.revert,
        },
    );
    let runtimes = RuntimeCommands {
        compose: raw
            .runtimes
            .as_ref()
            .and_then(|r| r.compose.clone())
            .unwrap_or_else(|| "docker compose".into()),
        podman: raw
            .runtimes
            .as_ref()
            .and_then(|r| r.podman.clone())
            .unwrap_or_else(|| "podman compose".into()),
    };
    let mut ssh_options = BTreeMap::new();
    if let Some(ssh) = &raw.ssh {
        for (key, value) in &ssh.options {
            match ssh_options::check(key, &value.value) {
                Ok(name) => {
                    if ssh_options
                        .insert(name.to_string(), value.value.clone())
                        .is_some()
                    {
                        c.at(
                            &format!("ssh.options.{key}"),
                            value,
                            format!("`{name}` is set twice"),
                            "option names are case-insensitive: keep one",
                        );
                    }
                }
                Err(r) => c.at(&format!("ssh.options.{key}"), value, r.message, &r.hint),
            }
        }
    }
    // Kept even when a field is wrong: clients are still checked against the
    // stages; the problems already make the fleet invalid.
    Some(Pipeline {
        stages,
        scan: ScanPolicy {
            fail_on,
            ignore_unfixed,
        },
        on_failure,
        runtimes,
        ssh_options,
    })
}
