//! One stage of a deploy: waves with bounded parallelism, releases uploaded
//! and switched per host, health gates, and rollback when the stage fails.
//!
//! The input is data computed in full before anything runs ([`StagePlan`],
//! `plan.rs`); `exec.rs` carries it out and `checks.rs` runs the health
//! gates. The only I/O is through [`Connector`] and [`crate::remote::Remote`],
//! so the whole flow runs against local "hosts" in unit tests and real sshd
//! hosts in integration tests. The outcome types live in `core::outcome`
//! (plain data, read back from records) and are re-exported here.

mod checks;
mod exec;
mod plan;
#[cfg(test)]
mod tests;

pub use crate::core::outcome::{
    Failure, FailureKind, HostOutcome, HostStatus, Runs, StageOutcome, StepRecord,
};
pub use exec::{Connector, run_stage};
pub use plan::{AppJob, CheckSpec, StagePlan, Target, build_stage_plan};
