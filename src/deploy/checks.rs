//! The health checks of one host after its switch (or its rollback): every
//! check runs concurrently, each probed on its interval and fed to its
//! [`Gate`] until the gate passes or fails. Kept apart from the executor
//! because it is the one loop that waits on time rather than on the host.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::exec::secs;
use super::{AppJob, CheckSpec, Target};
use crate::gates::health::{CheckResult, Gate, Policy, Progress};
use crate::gates::http::Prober;
use crate::remote::Remote;
use crate::remote::release;
use crate::remote::release::AppDir;

/// The checks of one app to run: its own, or those of a blue/green slot
/// (`release`: the release its command checks run in, when it is not
/// `current` yet).
#[derive(Debug, Clone)]
pub(super) struct Gated<'a> {
    pub name: &'a str,
    pub dir: &'a AppDir,
    pub checks: Vec<CheckSpec>,
    pub release: Option<&'a str>,
}

impl<'a> Gated<'a> {
    pub fn of(app: &'a AppJob) -> Gated<'a> {
        Gated {
            name: &app.name,
            dir: &app.dir,
            checks: app.checks.clone(),
            release: None,
        }
    }

    pub fn all(apps: &[&'a AppJob]) -> Vec<Gated<'a>> {
        apps.iter().map(|a| Gated::of(a)).collect()
    }
}

/// Runs every check of `apps` on this host concurrently, each to its verdict.
pub(super) async fn run_checks<R: Remote, P: Prober>(
    remote: &R,
    prober: &P,
    target: &Target,
    apps: &[Gated<'_>],
    soak: Duration,
    stop: Option<&AtomicBool>,
) -> Vec<CheckResult> {
    let prober = &prober.round();
    // One failed check fails the host: its other checks stop waiting.
    let host_failed = &AtomicBool::new(false);
    let futures = apps.iter().flat_map(|app| {
        app.checks.iter().map(move |check| async move {
            let started = Instant::now();
            let (label, policy) = match check {
                CheckSpec::Http {
                    url, policy, via, ..
                } => match via {
                    Some(_) => (format!("{url} (through the proxy)"), *policy),
                    None => (url.clone(), *policy),
                },
                CheckSpec::Command { command, policy } => (command.clone(), *policy),
            };
            let policy = Policy { soak, ..policy };
            let mut gate = Gate::new(policy);
            let mut cancelled = false;
            let (passed, detail) = loop {
                let probe_started = Instant::now();
                let (ok, detail) = match check {
                    CheckSpec::Http {
                        url,
                        via,
                        expect_status,
                        expect_body,
                        timeout,
                        ..
                    } => {
                        prober
                            .get(
                                url,
                                via.as_ref().map(|(a, p)| (a.as_str(), *p)),
                                *expect_status,
                                expect_body.as_deref(),
                                *timeout,
                            )
                            .await
                    }
                    CheckSpec::Command { command, .. } => {
                        let script = match app.release {
                            Some(rev) => release::check_in_release_script(app.dir, rev, command),
                            None => release::check_script(app.dir, command),
                        };
                        match remote.run(&script).await {
                            Ok(out) if out.success() => (true, "exit 0".to_string()),
                            Ok(out) => (
                                false,
                                format!(
                                    "exit {}: {}",
                                    out.status.map_or("by signal".into(), |c| c.to_string()),
                                    target.masker.mask(&out.tail())
                                ),
                            ),
                            Err(e) => (false, target.masker.mask(&e.to_string())),
                        }
                    }
                };
                match gate.observe(ok, &detail, started.elapsed()) {
                    Progress::Pending => {}
                    Progress::Passed => break (true, detail),
                    Progress::Failed(why) => {
                        host_failed.store(true, Ordering::SeqCst);
                        break (false, why);
                    }
                }
                // This host or the stage failed: the host is rolled back
                // anyway, so waiting out its gates (and soak) only delays it.
                if host_failed.load(Ordering::SeqCst) {
                    cancelled = true;
                    break (
                        false,
                        "cancelled: another check of this host failed".to_string(),
                    );
                }
                if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                    cancelled = true;
                    break (
                        false,
                        "cancelled: the stage failed on other hosts".to_string(),
                    );
                }
                tokio::time::sleep(policy.interval.saturating_sub(probe_started.elapsed())).await;
            };
            tracing::debug!(
                "{} {} check {label}: {}",
                target.host.name,
                app.name,
                if passed { "passed" } else { "failed" }
            );
            CheckResult {
                app: app.name.to_string(),
                check: label,
                passed,
                cancelled,
                attempts: gate.attempts,
                seconds: secs(started),
                detail,
            }
        })
    });
    futures_util::future::join_all(futures).await
}
