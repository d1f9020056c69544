//! Health gates: consecutive successes, tolerated consecutive failures, a
//! deadline, then a soak during which health must hold.
//!
//! [`Gate`] is the pure state machine (unit-tested with a fake clock); the
//! probes — HTTP from the runner (`http.rs`), commands on the host — feed it.

use std::time::Duration;

use serde::Serialize;

/// Thresholds of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub interval: Duration,
    pub successes: u32,
    pub failures: u32,
    pub deadline: Duration,
    pub soak: Duration,
}

/// Where a gate stands after an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Keep probing.
    Pending,
    Passed,
    Failed(String),
}

/// The state of one check's gate. Time is passed in, so tests need no clock.
#[derive(Debug, Clone)]
pub struct Gate {
    policy: Policy,
    ok_in_a_row: u32,
    failed_in_a_row: u32,
    /// When the check first reached `successes` in a row.
    passed_at: Option<Duration>,
    pub attempts: u32,
}

impl Gate {
    pub fn new(policy: Policy) -> Gate {
        Gate {
            policy,
            ok_in_a_row: 0,
            failed_in_a_row: 0,
            passed_at: None,
            attempts: 0,
        }
    }

    /// Records one probe at `elapsed` since the gate started.
    pub fn observe(&mut self, ok: bool, detail: &str, elapsed: Duration) -> Progress {
        self.attempts += 1;
        if ok {
            self.ok_in_a_row += 1;
            self.failed_in_a_row = 0;
        } else {
            self.failed_in_a_row += 1;
            self.ok_in_a_row = 0;
        }
        let p = self.policy;
        match self.passed_at {
            None => {
                if self.ok_in_a_row >= p.successes {
                    self.passed_at = Some(elapsed);
                    if p.soak.is_zero() {
                        return Progress::Passed;
                    }
                } else if self.failed_in_a_row >= p.failures {
                    return Progress::Failed(format!(
                        "{} consecutive failures: {detail}",
                        self.failed_in_a_row
                    ));
                } else if elapsed >= p.deadline {
                    return Progress::Failed(format!(
                        "not healthy within the {}s deadline (last: {detail})",
                        p.deadline.as_secs()
                    ));
                }
                Progress::Pending
            }
            Some(at) => {
                if self.failed_in_a_row >= p.failures {
                    Progress::Failed(format!(
                        "healthy, then {} consecutive failures during the {}s soak: {detail}",
                        self.failed_in_a_row,
                        p.soak.as_secs()
                    ))
                } else if elapsed.saturating_sub(at) >= p.soak {
                    Progress::Passed
                } else {
                    Progress::Pending
                }
            }
        }
    }
}

/// The result of one check on one host, for the outcome record.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct CheckResult {
    pub app: String,
    /// The URL or the command.
    pub check: String,
    pub passed: bool,
    /// Cut short: the stage had already failed on other hosts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
    pub attempts: u32,
    pub seconds: f64,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(successes: u32, failures: u32, soak: u64) -> Policy {
        Policy {
            interval: Duration::from_secs(1),
            successes,
            failures,
            deadline: Duration::from_secs(10),
            soak: Duration::from_secs(soak),
        }
    }

    /// Feeds probes one second apart; returns the final progress and when.
    fn run(p: Policy, probes: &str) -> (Progress, usize) {
        let mut g = Gate::new(p);
        for (i, c) in probes.chars().enumerate() {
            let progress = g.observe(c == '+', "x", Duration::from_secs(i as u64));
            if progress != Progress::Pending {
                return (progress, i);
            }
        }
        (Progress::Pending, probes.len())
    }

    #[test]
    fn consecutive_successes_pass() {
        assert_eq!(run(policy(3, 3, 0), "+-+++"), (Progress::Passed, 4));
        assert_eq!(run(policy(1, 3, 0), "+"), (Progress::Passed, 0));
    }

    #[test]
    fn consecutive_failures_fail() {
        let (p, at) = run(policy(3, 2, 0), "+--");
        assert!(
            matches!(p, Progress::Failed(ref m) if m.starts_with("2 consecutive failures")),
            "{p:?}"
        );
        assert_eq!(at, 2);
    }

    #[test]
    fn deadline_fails_a_flapping_check() {
        let (p, at) = run(policy(3, 3, 0), "+-+-+-+-+-+-+-");
        assert!(
            matches!(p, Progress::Failed(ref m) if m.contains("deadline")),
            "{p:?}"
        );
        assert_eq!(at, 10);
    }

    #[test]
    fn soak_must_hold() {
        // Passes at t=1, must hold until t=1+3.
        assert_eq!(run(policy(2, 2, 3), "++-+++"), (Progress::Passed, 4));
        let (p, _) = run(policy(2, 2, 3), "++--");
        assert!(
            matches!(p, Progress::Failed(ref m) if m.contains("during the 3s soak")),
            "{p:?}"
        );
    }
}
