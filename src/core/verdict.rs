//! What a deployed stage means, for `deploy`, `rollback` and `run` alike:
//! one outcome, one verdict, one exit code. Pure; table-tested.

use crate::core::outcome::StageOutcome;
use crate::error::ExitCode;

/// What a deployed stage means, for `deploy` and `run` alike: one outcome,
/// one verdict, one exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageVerdict {
    /// Every host passed, or no more than `max_failures` failed and each
    /// of those was handled (rolled back, or left as `on_failure` says):
    /// go on to the next stage. A tolerated host's client keeps its
    /// deployed ref, so the next run tries it again.
    Passed,
    /// The change failed a gate (health or a remote command): roll back
    /// (done by the stage) and revert.
    ChangeFailed,
    /// Hosts could not be reached, or were lost during a change and could
    /// not be put back: not the change's fault, nothing to revert; people
    /// must look at the hosts.
    InfraFailed,
    /// Stopped by a signal before every host was started.
    Interrupted,
    /// A `freeze` app was left on the failed release: a human decides.
    Frozen,
}

impl StageVerdict {
    /// design.md §4: a handled failure is 1, anything a human must check on
    /// the hosts or the network is 3.
    pub fn exit_code(self) -> ExitCode {
        match self {
            StageVerdict::Passed => ExitCode::Ok,
            StageVerdict::ChangeFailed | StageVerdict::Frozen => ExitCode::Blocked,
            StageVerdict::InfraFailed | StageVerdict::Interrupted => ExitCode::Infra,
        }
    }
}

/// The order matters: a host whose state is unknown outweighs everything
/// but an interruption (both exit 3), a frozen app outweighs tolerance.
pub fn verdict(outcome: &StageOutcome) -> StageVerdict {
    if outcome.interrupted {
        StageVerdict::Interrupted
    } else if !outcome.lost().is_empty() {
        StageVerdict::InfraFailed
    } else if !outcome.frozen().is_empty() {
        StageVerdict::Frozen
    } else if outcome.passed {
        StageVerdict::Passed
    } else if crate::core::outcome::FailedGate::of(outcome).is_some() {
        StageVerdict::ChangeFailed
    } else {
        StageVerdict::InfraFailed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::core::outcome::{Failure, FailureKind, HostOutcome, HostStatus, Runs};

    fn host(status: HostStatus, failure: Option<FailureKind>, runs: Runs) -> HostOutcome {
        HostOutcome {
            failure: failure.map(|kind| Failure {
                kind,
                app: Some("web".into()),
                step: "start".into(),
                message: "exit 1".into(),
            }),
            ..HostOutcome::new(
                "alpha",
                "alpha-1",
                status,
                [("web".to_string(), runs)].into(),
            )
        }
    }

    fn stage(hosts: Vec<HostOutcome>, max_failures: usize, interrupted: bool) -> StageOutcome {
        let failed_hosts = hosts
            .iter()
            .filter(|h| h.status == HostStatus::Failed || h.failure.is_some())
            .count();
        StageOutcome {
            stage: "canary".into(),
            rev: "a".repeat(40),
            passed: failed_hosts <= max_failures && !interrupted,
            interrupted,
            failed_hosts,
            max_failures,
            rolled_back: hosts.iter().any(|h| h.status == HostStatus::RolledBack),
            hosts,
        }
    }

    /// One outcome, one verdict, one exit code: the table `deploy`, `run`,
    /// the record and the forge all read.
    #[test]
    fn verdicts_and_their_exit_codes() {
        use HostStatus::*;
        let rev = || Runs::Release("a".repeat(40));
        let old = || Runs::Release("b".repeat(40));
        let cases: Vec<(&str, StageOutcome, StageVerdict, ExitCode)> = vec![
            (
                "all deployed",
                stage(vec![host(Deployed, None, rev())], 0, false),
                StageVerdict::Passed,
                ExitCode::Ok,
            ),
            (
                "health failed, rolled back",
                stage(
                    vec![host(RolledBack, Some(FailureKind::Health), old())],
                    0,
                    false,
                ),
                StageVerdict::ChangeFailed,
                ExitCode::Blocked,
            ),
            (
                "command failed, rolled back",
                stage(
                    vec![host(RolledBack, Some(FailureKind::Command), old())],
                    0,
                    false,
                ),
                StageVerdict::ChangeFailed,
                ExitCode::Blocked,
            ),
            (
                "failure tolerated",
                stage(
                    vec![
                        host(RolledBack, Some(FailureKind::Health), old()),
                        host(Deployed, None, rev()),
                    ],
                    1,
                    false,
                ),
                StageVerdict::Passed,
                ExitCode::Ok,
            ),
            (
                "unreachable, untouched",
                stage(
                    vec![host(Failed, Some(FailureKind::Infra), Runs::AsBefore)],
                    0,
                    false,
                ),
                StageVerdict::InfraFailed,
                ExitCode::Infra,
            ),
            (
                "unreachable, tolerated",
                stage(
                    vec![
                        host(Failed, Some(FailureKind::Infra), Runs::AsBefore),
                        host(Deployed, None, rev()),
                    ],
                    1,
                    false,
                ),
                StageVerdict::Passed,
                ExitCode::Ok,
            ),
            (
                "lost mid-change, even tolerated",
                stage(
                    vec![
                        host(Failed, Some(FailureKind::Infra), Runs::Unknown),
                        host(Deployed, None, rev()),
                    ],
                    1,
                    false,
                ),
                StageVerdict::InfraFailed,
                ExitCode::Infra,
            ),
            (
                "lost, then rolled back on a new connection",
                stage(
                    vec![host(RolledBack, Some(FailureKind::Infra), old())],
                    0,
                    false,
                ),
                StageVerdict::InfraFailed,
                ExitCode::Infra,
            ),
            (
                "interrupted",
                stage(
                    vec![
                        host(Deployed, None, rev()),
                        host(NotStarted, None, Runs::AsBefore),
                    ],
                    0,
                    true,
                ),
                StageVerdict::Interrupted,
                ExitCode::Infra,
            ),
        ];
        for (what, outcome, want, code) in cases {
            assert_eq!(verdict(&outcome), want, "{what}");
            assert_eq!(want.exit_code(), code, "{what}");
        }
        let mut frozen = stage(
            vec![host(Failed, Some(FailureKind::Health), rev())],
            1,
            false,
        );
        frozen.hosts[0].frozen.push("web".into());
        assert_eq!(
            verdict(&frozen),
            StageVerdict::Frozen,
            "frozen outweighs tolerance"
        );
        assert_eq!(StageVerdict::Frozen.exit_code(), ExitCode::Blocked);
    }
}
