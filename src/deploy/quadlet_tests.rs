//! The executor with a quadlet app, on a local "host" (`LocalHost`: the
//! real scripts on the local `sh`): Quadlet judges the candidate unit
//! files before anything on the host changes. (On a real systemd host:
//! `tests/cli/quadlet.rs`.)

use std::time::Duration;

use super::*;
use crate::config::{Host, RollbackPolicy};
use crate::gates::health::Policy;
use crate::gates::http::ScriptedProber;
use crate::remote::RemoteError;
use crate::remote::quadlet::{Scope, Units};
use crate::remote::release::{AppDir, ReleaseFile, Start};
use crate::remote::ssh::LocalHost;
use crate::secrets::Masker;

struct Local;

impl Connector for Local {
    type Host = LocalHost;
    async fn connect(&self, host: &Host) -> Result<LocalHost, RemoteError> {
        Ok(LocalHost {
            name: host.name.clone(),
        })
    }
    async fn close(&self, _: LocalHost) {}
}

fn app(root: &str, name: &str, files: Vec<ReleaseFile>, start: Start) -> AppJob {
    AppJob {
        name: name.into(),
        dir: AppDir {
            deploy_root: root.into(),
            client: "alpha".into(),
            app: name.into(),
        },
        files,
        start,
        stop: None,
        checks: vec![CheckSpec::Command {
            command: "true".into(),
            policy: Policy {
                interval: Duration::from_millis(10),
                successes: 1,
                failures: 1,
                deadline: Duration::from_secs(2),
                soak: Duration::ZERO,
            },
        }],
        rollback: RollbackPolicy::Safe,
        routes: Vec::new(),
        blue_green: None,
        backup: None,
        logs: None,
    }
}

#[test]
fn a_unit_file_quadlet_refuses_stops_the_host_before_anything_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap().to_string();
    // A command app first in the host's order, then the quadlet app: the
    // check still runs before either is touched. Where the machine has no
    // Quadlet the check fails for that; where it has one, for the key.
    let web = app(
        &root,
        "web",
        vec![ReleaseFile::new("v".into(), b"1\n".to_vec(), false)],
        Start::Command {
            start: "touch ../../web-started".into(),
            stop: None,
        },
    );
    let idp = app(
        &root,
        "idp",
        vec![
            ReleaseFile::new(
                "idp.container".into(),
                b"[Container]\nImage=localhost/x\nBogusKey=1\n".to_vec(),
                false,
            ),
            ReleaseFile::new("idp.env".into(), b"K=secret-value\n".to_vec(), true),
        ],
        Start::Quadlet(Units {
            scope: Scope::System,
            dir: format!("{root}/units/alpha-idp"),
            units: vec!["idp.service".into()],
        }),
    );
    let plan = StagePlan {
        stage: "canary".into(),
        rev: "a".repeat(40),
        parallelism: 1,
        max_failures: 0,
        rollback: true,
        targets: vec![Target {
            client: "alpha".into(),
            host: Host {
                name: "alpha-1".into(),
                address: "127.0.0.1".into(),
                port: 22,
                user: "root".into(),
                deploy_root: root.clone(),
            },
            apps: vec![web, idp],
            removals: Vec::new(),
            masker: Masker::new(vec!["secret-value".into()]),
            snapshot: None,
            proxy: None,
        }],
        keep_removed: crate::config::KEEP_REMOVED_RELEASES,
    };
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_stage(
            &plan,
            &Local,
            &ScriptedProber::default(),
            &super::snapshot::NoSnapshots,
            Duration::ZERO,
        ));
    assert!(!outcome.passed);
    let host = &outcome.hosts[0];
    let failure = host.failure.as_ref().expect("failed");
    assert_eq!(
        (failure.app.as_deref(), failure.step.as_str()),
        (Some("idp"), "quadlet check"),
        "{failure:?}"
    );
    assert!(
        failure.message.contains("Quadlet is not installed")
            || failure.message.contains("unsupported key 'BogusKey'"),
        "{}",
        failure.message
    );
    // Nothing uploaded, switched, started or installed; nothing to roll back.
    assert!(host.switched.is_empty());
    for path in ["alpha/web", "alpha/idp", "units", "alpha/web-started"] {
        assert!(!tmp.path().join(path).exists(), "{path} exists");
    }
    let steps: Vec<&str> = host.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(steps, ["connect", "inspect", "quadlet check"]);
}
