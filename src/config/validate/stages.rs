//! The `stages:` of `pipelines/pipeline.yaml`, in order: names and groups
//! (each used once), soak, approval (required, by whom), parallelism and
//! tolerated failures.

use std::collections::BTreeSet;
use std::time::Duration;

use super::Check;
use crate::config::model::{Approval, Stage};
use crate::config::raw;

/// `snapshot_keep` (a stage's or an app's): at least 1, since it counts
/// the snapshot just taken.
pub(super) fn snapshot_keep(c: &mut Check, field: &str, keep: &Option<raw::S<u32>>) -> Option<u32> {
    match keep {
        Some(k) if k.value == 0 => {
            c.at(
                field,
                k,
                "snapshot_keep must be at least 1",
                "it counts the snapshot taken before this deploy; leave it out for 3",
            );
            None
        }
        Some(k) => Some(k.value),
        None => None,
    }
}

pub(super) fn validate(c: &mut Check, list: &[raw::Stage]) -> Vec<Stage> {
    if list.is_empty() {
        c.plain(
            "stages",
            "no stages are defined",
            "define at least one stage, e.g. `canary`",
        );
    }
    let mut stages = Vec::new();
    let mut names = BTreeSet::new();
    let mut groups = BTreeSet::new();
    for (i, s) in list.iter().enumerate() {
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
            snapshot: s.snapshot,
            snapshot_keep: snapshot_keep(c, &f("snapshot_keep"), &s.snapshot_keep),
            backup: s.backup,
        });
    }
    stages
}

#[cfg(test)]
mod tests {
    use crate::config::PIPELINE;
    use crate::config::validate::pipeline;
    use crate::config::validate::testing::{assert_outcome, files, trim_indent};

    /// `stages`: the list under `stages:` (YAML at column 0, from line 2);
    /// `expect`: the problems, or each stage with its defaults filled in.
    fn check(stages: &str, expect: &[&str]) {
        let fixture = format!("stages:\n{}", trim_indent(stages));
        let mut problems = Vec::new();
        let pipeline = pipeline::validate(&files(PIPELINE, "", &fixture), &mut problems);
        let summary = pipeline
            .iter()
            .flat_map(|p| &p.stages)
            .map(|s| {
                let approval = s
                    .approval
                    .as_ref()
                    .map_or("-".to_string(), |a| a.approvers.join(","));
                let mut line = format!(
                    "{}: group={} soak={:?} approvers={approval} parallelism={} max_failures={}",
                    s.name, s.group, s.soak, s.parallelism, s.max_failures
                );
                if s.snapshot.is_some() || s.snapshot_keep.is_some() {
                    line += &format!(" snapshot={:?} keep={:?}", s.snapshot, s.snapshot_keep);
                }
                if let Some(b) = s.backup {
                    line += &format!(" backup={b:?}");
                }
                line
            })
            .collect();
        assert_outcome(&fixture, &problems, summary, expect);
    }

    #[test]
    fn names_and_groups() {
        let long = "a".repeat(63);
        check(
            &format!(
                "- {{name: {long}, group: 0-{}}}\n- {{name: '0', group: 9-z}}",
                &long[2..]
            ),
            &[
                &format!(
                    "{long}: group=0-{} soak=0ns approvers=- parallelism=1 max_failures=0",
                    &long[2..]
                ),
                "0: group=9-z soak=0ns approvers=- parallelism=1 max_failures=0",
            ],
        );
        check(
            &format!("- {{name: a{long}, group: a}}"),
            &[&format!(
                "pipelines/pipeline.yaml:2 stages[0].name: stage `a{long}` is not a valid name"
            )],
        );
        check(
            r#"
            - {name: Canary, group: canary}
            - {name: prod, group: prod_1}
            - {name: -x, group: x}
            - {name: "", group: "a b"}
            - {name: ok, group: ""}
            - {name: cAnary, group: ok}
            "#,
            &[
                "pipelines/pipeline.yaml:2 stages[0].name: stage `Canary` is not a valid name",
                "pipelines/pipeline.yaml:3 stages[1].group: group `prod_1` is not a valid name",
                "pipelines/pipeline.yaml:4 stages[2].name: stage `-x` is not a valid name",
                "pipelines/pipeline.yaml:5 stages[3].name: stage `` is not a valid name",
                "pipelines/pipeline.yaml:5 stages[3].group: group `a b` is not a valid name",
                "pipelines/pipeline.yaml:6 stages[4].group: group `` is not a valid name",
                "pipelines/pipeline.yaml:7 stages[5].name: stage `cAnary` is not a valid name",
            ],
        );
        check(
            r#"
            - {name: canary, group: canary}
            - {name: canary, group: prod}
            - {name: late, group: canary}
            "#,
            &[
                "pipelines/pipeline.yaml:3 stages[1].name: stage `canary` is defined twice",
                "pipelines/pipeline.yaml:4 stages[2].group: group `canary` is picked by two stages",
            ],
        );
        check(
            "- {name: a}",
            &["pipelines/pipeline.yaml:2 stages[0]: missing field `group`"],
        );
        check(
            "- {name: a, group: a, sok: 30s}",
            &["pipelines/pipeline.yaml:2 stages[0].sok: unknown field `sok`"],
        );
    }

    #[test]
    fn soak_is_a_duration() {
        check(
            "- {name: a, group: a, soak: 1m30s}",
            &["a: group=a soak=90s approvers=- parallelism=1 max_failures=0"],
        );
        check(
            "- {name: a, group: a, soak: '30'}\n- {name: b, group: b, soak: soon}\n- {name: c, group: c, soak: 30sec}",
            &[
                "pipelines/pipeline.yaml stages[0].soak: `30` has a number without a unit",
                "pipelines/pipeline.yaml stages[1].soak: `soon` is not a duration",
                "pipelines/pipeline.yaml stages[2].soak: unknown unit `sec`",
            ],
        );
    }

    #[test]
    fn approvals() {
        check(
            r#"
            - {name: a, group: a, approval: {required: true, approvers: [alice, bob.smith, c_d-1]}}
            - {name: b, group: b, approval: {approvers: ["not read unless required"]}}
            "#,
            &[
                "a: group=a soak=0ns approvers=alice,bob.smith,c_d-1 parallelism=1 max_failures=0",
                "b: group=b soak=0ns approvers=- parallelism=1 max_failures=0",
            ],
        );
        check(
            "- {name: a, group: a, approval: {required: true}}",
            &[
                "pipelines/pipeline.yaml stages[0].approval.approvers: nobody is listed as an approver",
            ],
        );
        check(
            r#"
            - name: a
              group: a
              approval:
                required: true
                approvers: [alice, "bob smith", "", "eve@example.org"]
            "#,
            &[
                "pipelines/pipeline.yaml:6 stages[0].approval.approvers[1]: `bob smith` is not a forge user name",
                "pipelines/pipeline.yaml:6 stages[0].approval.approvers[2]: `` is not a forge user name",
                "pipelines/pipeline.yaml:6 stages[0].approval.approvers[3]: `eve@example.org` is not a forge user name",
            ],
        );
        check(
            "- {name: a, group: a, approval: {required: true, who: [alice]}}",
            &["pipelines/pipeline.yaml:2 stages[0].approval.who: unknown field `who`"],
        );
    }

    #[test]
    fn parallelism_and_max_failures() {
        check(
            "- {name: a, group: a, parallelism: 10, max_failures: 2}",
            &["a: group=a soak=0ns approvers=- parallelism=10 max_failures=2"],
        );
        check(
            "- {name: a, group: a, parallelism: 0}",
            &["pipelines/pipeline.yaml:2 stages[0].parallelism: parallelism must be at least 1"],
        );
        check(
            "- {name: a, group: a, parallelism: -1}",
            &["pipelines/pipeline.yaml:2 stages[0].parallelism.value: invalid u32"],
        );
        check(
            "- {name: a, group: a, max_failures: many}",
            &["pipelines/pipeline.yaml:2 stages[0].max_failures: invalid u32"],
        );
    }

    #[test]
    fn snapshot_keys() {
        check(
            "- {name: a, group: a, snapshot: before_deploy, snapshot_keep: 5}\n- {name: b, group: b, snapshot: never}",
            &[
                "a: group=a soak=0ns approvers=- parallelism=1 max_failures=0 snapshot=Some(BeforeDeploy) keep=Some(5)",
                "b: group=b soak=0ns approvers=- parallelism=1 max_failures=0 snapshot=Some(Never) keep=None",
            ],
        );
        check(
            "- {name: a, group: a, snapshot: always}",
            &["pipelines/pipeline.yaml:2 stages[0].snapshot: unknown variant `always`"],
        );
        check(
            "- {name: a, group: a, snapshot_keep: 0}",
            &[
                "pipelines/pipeline.yaml:2 stages[0].snapshot_keep: snapshot_keep must be at least 1",
            ],
        );
    }

    #[test]
    fn backup_key() {
        check(
            "- {name: a, group: a, backup: before_deploy}\n- {name: b, group: b, backup: never}\n- {name: c, group: c}",
            &[
                "a: group=a soak=0ns approvers=- parallelism=1 max_failures=0 backup=BeforeDeploy",
                "b: group=b soak=0ns approvers=- parallelism=1 max_failures=0 backup=Never",
                "c: group=c soak=0ns approvers=- parallelism=1 max_failures=0",
            ],
        );
        check(
            "- {name: a, group: a, backup: always}",
            &["pipelines/pipeline.yaml:2 stages[0].backup: unknown variant `always`"],
        );
    }
}
