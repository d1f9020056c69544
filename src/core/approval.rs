//! The approval policy, in one place: which approval counts for a stage
//! (one of its approvers, for this exact plan, not given before the plan
//! became what it is), and the verdict on one approval someone gives —
//! whichever way it came (`approve --by`, a comment, the Run button, a
//! GitHub environment review). A refusal is a verdict, not an error.

use chrono::DateTime;

use crate::core::record::{Approval, RunRecord};
use crate::core::rev::CommitId;
use crate::core::rev::short;
use crate::error::Result;

/// The first approval that counts for a stage: given for this exact plan,
/// by one of the stage's approvers.
pub fn counting<'r>(
    record: &'r RunRecord,
    plan_hash: &str,
    approvers: &[String],
) -> Option<&'r Approval> {
    record
        .approvals
        .iter()
        .find(|a| a.plan_hash == plan_hash && approvers.contains(&a.by))
}

/// Approvals recorded for an earlier plan, as `who (plan abc123…)`.
pub fn stale(record: &RunRecord, plan_hash: &str) -> Vec<String> {
    record
        .approvals
        .iter()
        .filter(|a| a.plan_hash != plan_hash)
        .map(|a| format!("{} (plan {})", a.by, short(&a.plan_hash)))
        .collect()
}

/// One approval to weigh.
#[derive(Debug, Clone)]
pub struct Claim {
    pub rev: CommitId,
    pub by: String,
    /// The plan hash (prefix) the approver named, if any.
    pub plan: Option<String>,
    /// When it was given (RFC 3339), if the forge says.
    pub given_at: Option<String>,
    /// `cli`, `comment`, `dispatch`, `environment`.
    pub source: &'static str,
}

/// The stages of a pipeline that need an approval, with their approvers.
pub type ApprovalStages = Vec<(String, Vec<String>)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Recorded: it counts for `stages`.
    Counted {
        approval: Approval,
        stages: Vec<String>,
    },
    Refused {
        why: String,
        hint: Option<String>,
    },
}

fn refused(why: String, hint: Option<String>) -> Result<Verdict> {
    Ok(Verdict::Refused { why, hint })
}

/// Weighs `claim` against the approval stages of the pipeline at its commit
/// and the run record of that commit (read only when the claim gets that
/// far). `now` (RFC 3339) is when it is given, unless the forge said when.
pub fn weigh(
    claim: &Claim,
    stages: &ApprovalStages,
    record: impl FnOnce() -> Result<Option<RunRecord>>,
    pipeline_file: &str,
    now: &str,
) -> Result<Verdict> {
    let (rev, by) = (claim.rev, &claim.by);
    if stages.is_empty() {
        return refused(
            format!(
                "no stage of {pipeline_file} at {} needs an approval",
                rev.short()
            ),
            None,
        );
    }
    let mine: Vec<String> = stages
        .iter()
        .filter(|(_, approvers)| approvers.contains(by))
        .map(|(s, _)| s.clone())
        .collect();
    if mine.is_empty() {
        let who: Vec<String> = stages
            .iter()
            .map(|(s, a)| format!("{s}: {}", a.join(", ")))
            .collect();
        return refused(
            format!("`{by}` is not an approver, so this approval does not count"),
            Some(format!(
                "the approvers are set in {pipeline_file} (`approval.approvers`): {}",
                who.join("; ")
            )),
        );
    }
    let record = record()?;
    let Some((record, plan_hash)) = record
        .as_ref()
        .and_then(|r| r.plan_hash.clone().map(|h| (r, h)))
    else {
        return refused(
            format!(
                "no run has planned {} yet, so there is no plan to approve",
                rev.short()
            ),
            Some(format!(
                "`fleetgate run --base BASE --head {rev}` plans it and waits for this approval"
            )),
        );
    };
    if let Some(seen) = &claim.plan
        && !plan_hash.starts_with(seen.as_str())
    {
        return refused(
            format!(
                "the plan of {} changed: the approval names {seen}, the plan is now {}",
                rev.short(),
                short(&plan_hash)
            ),
            Some("review the new plan, then approve it".into()),
        );
    }
    // Given before the current plan was made: it was for an earlier one.
    if let (Some(given), Some(planned)) = (&claim.given_at, record.planned_at.as_deref())
        && let (Ok(given), Ok(planned)) = (
            DateTime::parse_from_rfc3339(given),
            DateTime::parse_from_rfc3339(planned),
        )
        && given < planned
    {
        return refused(
            format!(
                "the approval was given at {given}, before the plan of {} became {} (at {planned}): it was for an earlier plan",
                rev.short(),
                short(&plan_hash)
            ),
            Some("review the new plan, then approve it again".into()),
        );
    }
    Ok(Verdict::Counted {
        approval: Approval {
            by: by.clone(),
            at: claim.given_at.clone().unwrap_or_else(|| now.to_string()),
            plan_hash,
            source: claim.source.into(),
        },
        stages: mine,
    })
}
