//! One stage of a deploy: waves with bounded parallelism, releases uploaded
//! and switched per host, health gates, and rollback when the stage fails.
//!
//! The input is data computed in full before anything runs ([`StagePlan`],
//! `plan.rs`); `exec.rs` carries it out and `checks.rs` runs the health
//! gates. The only I/O is through [`Connector`] (hosts, as
//! [`crate::remote::Remote`]s) and [`crate::gates::http::Prober`] (HTTP checks
//! from the runner), so the whole flow runs against local "hosts" and
//! scripted endpoints in unit tests and real sshd hosts in integration tests;
//! nothing here names an SSH, HTTP, Git or process library. The outcome
//! types live in `core::outcome` (plain data, read back from records) and
//! are re-exported here.

mod checks;
mod exec;
mod plan;
#[cfg(test)]
mod quadlet_tests;
pub mod snapshot;
#[cfg(test)]
mod tests;

pub use crate::core::outcome::{
    Backup, Failure, FailureKind, HostOutcome, HostStatus, Runs, StageOutcome, StepRecord,
};
pub use exec::{Connector, RestoreJob, check_stage, restore_stage, run_stage};
pub use plan::{
    AppJob, CheckSpec, ProxyJob, Removal, SlotJob, StagePlan, Target, build_stage_plan, start_of,
};
