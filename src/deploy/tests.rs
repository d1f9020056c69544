//! The executor end to end on local "hosts" (`LocalHost`: the real scripts
//! on the local `sh`), through `run_stage` as `deploy` calls it.

use std::time::Duration;

use super::*;
use crate::config::{Host, RollbackPolicy};
use crate::gates::health::Policy;
use crate::remote::RemoteError;
use crate::remote::release::{AppDir, ReleaseFile, Start};
use crate::remote::ssh::LocalHost;
use crate::secrets::Masker;

struct Local;

impl Connector for Local {
    type Host = LocalHost;
    async fn connect(&self, host: &Host) -> Result<LocalHost, RemoteError> {
        if host.address == "unreachable" {
            return Err(RemoteError::Connect {
                host: host.name.clone(),
                address: host.address.clone(),
                message: "Connection refused".into(),
                hint: "",
            });
        }
        Ok(LocalHost {
            name: host.name.clone(),
        })
    }
    async fn close(&self, _: LocalHost) {}
}

const POLICY: Policy = Policy {
    interval: Duration::from_millis(10),
    successes: 1,
    failures: 1,
    deadline: Duration::from_secs(2),
    soak: Duration::ZERO,
};

/// A host whose app is healthy iff its `version` file is not "bad".
fn target(root: &std::path::Path, host: &str, version: &str, freeze: bool) -> Target {
    Target {
        client: "alpha".into(),
        host: Host {
            name: host.into(),
            address: if host.contains("down") {
                "unreachable".into()
            } else {
                "127.0.0.1".into()
            },
            port: 22,
            user: "deploy".into(),
            deploy_root: root.join(host).to_str().unwrap().into(),
        },
        apps: vec![AppJob {
            name: "web".into(),
            dir: AppDir {
                deploy_root: root.join(host).to_str().unwrap().into(),
                client: "alpha".into(),
                app: "web".into(),
            },
            files: vec![ReleaseFile::new(
                "version".into(),
                format!("{version}\n").into_bytes(),
                false,
            )],
            start: Start::Command {
                start: "cp version ../../started".into(),
                stop: None,
            },
            stop: None,
            checks: vec![CheckSpec::Command {
                command: "! grep -q bad version".into(),
                policy: POLICY,
            }],
            rollback: if freeze {
                RollbackPolicy::Freeze
            } else {
                RollbackPolicy::Safe
            },
        }],
        masker: Masker::default(),
    }
}

fn plan(rev: &str, targets: Vec<Target>, max_failures: usize) -> StagePlan {
    StagePlan {
        stage: "canary".into(),
        rev: rev.repeat(40),
        parallelism: 2,
        max_failures,
        rollback: true,
        targets,
    }
}

fn live(root: &std::path::Path, host: &str) -> String {
    std::fs::read_to_string(root.join(host).join("alpha/web/current/version")).unwrap_or_default()
}

fn run(p: &StagePlan) -> StageOutcome {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_stage(p, &Local, Duration::ZERO))
}

#[test]
fn deploy_noop_failure_and_rollback() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let o = run(&plan("a", vec![target(root, "h1", "v1", false)], 0));
    assert!(o.passed);
    assert_eq!(o.hosts[0].status, HostStatus::Deployed);
    assert_eq!(live(root, "h1"), "v1\n");

    let o = run(&plan("a", vec![target(root, "h1", "v1", false)], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Unchanged, "{o:#?}");

    let o = run(&plan("b", vec![target(root, "h1", "bad", false)], 0));
    assert!(!o.passed && o.rolled_back);
    assert_eq!(o.hosts[0].status, HostStatus::RolledBack, "{o:#?}");
    assert_eq!(
        o.hosts[0].failure.as_ref().unwrap().kind,
        FailureKind::Health
    );
    assert_eq!(live(root, "h1"), "v1\n");
    assert!(o.hosts[0].rollback_checks.iter().all(|c| c.passed));
}

#[test]
fn a_release_started_but_never_judged_is_judged_again() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let o = run(&plan("a", vec![target(root, "h1", "v1", false)], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Deployed);
    let gated = root.join("h1/alpha/web/gated");
    assert_eq!(
        std::fs::read_to_string(&gated).unwrap(),
        format!("{}\n", "a".repeat(40))
    );
    assert_eq!(o.hosts[0].runs["web"], Runs::Release("a".repeat(40)));

    // As if killed between its start and its verdict: started, not gated.
    std::fs::remove_file(&gated).unwrap();
    let o = run(&plan("a", vec![target(root, "h1", "v1", false)], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Deployed, "{o:#?}");
    assert!(!o.hosts[0].checks.is_empty(), "its gates ran");
    assert!(gated.exists());

    // A broken release killed before its verdict is rolled back on the
    // next deploy, and the release it goes back to is gated again.
    let o = run(&plan("b", vec![target(root, "h1", "bad", false)], 0));
    assert_eq!(o.hosts[0].status, HostStatus::RolledBack);
    assert_eq!(o.hosts[0].runs["web"], Runs::Release("a".repeat(40)));
    assert_eq!(
        std::fs::read_to_string(&gated).unwrap(),
        format!("{}\n", "a".repeat(40))
    );
}

#[test]
fn freeze_apps_stay_and_untouched_hosts_stay_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    run(&plan("a", vec![target(root, "h1", "v1", true)], 0));
    let o = run(&plan("b", vec![target(root, "h1", "bad", true)], 0));
    assert_eq!(o.hosts[0].status, HostStatus::Failed);
    assert_eq!(o.frozen(), ["alpha/web@h1"]);
    assert_eq!(live(root, "h1"), "bad\n");

    // One parallel slot: the unreachable host fails first, the next never starts.
    let mut p = plan(
        "c",
        vec![
            target(root, "h0-down", "v1", false),
            target(root, "h2", "v1", false),
        ],
        0,
    );
    p.parallelism = 1;
    let o = run(&p);
    assert_eq!(o.hosts[0].status, HostStatus::Failed);
    assert_eq!(o.hosts[1].status, HostStatus::NotStarted);
    assert!(!root.join("h2").exists());
    assert_eq!(o.hosts[0].runs["web"], Runs::AsBefore);
    assert_eq!(
        crate::pipeline::verdict(&o),
        crate::pipeline::StageVerdict::InfraFailed
    );
}
