//! The Git half of a failure: after the hosts are back on their previous
//! release, a `git revert` of the failing commits goes on top of the
//! branch, so Git and the fleet agree again. Never a force push, never a
//! history rewrite: when the branch moved, the revert is redone on the new
//! tip; when that conflicts, a human decides.

use git2::Oid;

pub use crate::core::outcome::{FailedGate, RevertOutcome};
use crate::error::{Error, Message, Result};
use crate::origin::{Origin, Pushed};
use crate::repo::{CommitId, Repo};

/// The commits `base..head`, newest first.
pub fn failing_commits(repo: &Repo, base: CommitId, head: CommitId) -> Result<Vec<Oid>> {
    let git = repo.git();
    let mut walk = git.revwalk().map_err(|e| Error::git("walk history", e))?;
    walk.push(head.oid())
        .map_err(|e| Error::git("walk history", e))?;
    walk.hide(base.oid())
        .map_err(|e| Error::git("walk history", e))?;
    walk.collect::<std::result::Result<Vec<Oid>, _>>()
        .map_err(|e| Error::git("walk history", e))
}

/// The revert's message; `commits` is newest first and never empty (an
/// empty range is `NothingToRevert`, decided before).
fn message(
    repo: &Repo,
    commits: &[Oid],
    base: CommitId,
    head: CommitId,
    gate: &FailedGate,
) -> String {
    let git = repo.git();
    let subject = match commits {
        [one] => {
            let summary = git
                .find_commit(*one)
                .ok()
                .and_then(|c| c.summary().ok().flatten().map(str::to_string))
                .unwrap_or_default();
            format!("Revert \"{summary}\"")
        }
        many => format!(
            "Revert {} commits ({}..{})",
            many.len(),
            base.short(),
            head.short()
        ),
    };
    let mut body = format!(
        "{subject}\n\nfleetgate reverted this: the {} stage failed its gates.\n{} on {}: {} failed: {}\nThe hosts were rolled back to the release they ran before; this commit\nputs Git back in line with them.\n\n",
        gate.stage, gate.client, gate.host, gate.check, gate.detail
    );
    for c in commits {
        body.push_str(&format!("This reverts commit {c}.\n"));
    }
    body.push('\n');
    for c in commits {
        body.push_str(&format!("Fleetgate-Reverts: {c}\n"));
    }
    body.push_str(&format!("Fleetgate-Failed-Gate: {}\n", gate.trailer()));
    body
}

/// Reverts `base..head` on top of `branch` on the remote and pushes it.
pub fn revert(
    repo: &Repo,
    origin: &Origin,
    branch: &str,
    base: CommitId,
    head: CommitId,
    gate: &FailedGate,
) -> Result<RevertOutcome> {
    let git = repo.git();
    let commits = failing_commits(repo, base, head)?;
    let reverts: Vec<String> = commits.iter().map(Oid::to_string).collect();
    let nothing = |tip: Oid, why: String| RevertOutcome::NothingToRevert {
        tip: tip.to_string(),
        failed_gate: gate.trailer(),
        why,
    };
    if commits.is_empty() {
        let tip = origin.fetch_branch(branch)?;
        return Ok(nothing(
            tip,
            format!(
                "{}..{} holds no commit (the run's base is its head)",
                base.short(),
                head.short()
            ),
        ));
    }
    let tree_of = |oid: Oid| {
        git.find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(|e| Error::git(format!("read {oid}"), e))
    };
    let sig = repo.signature()?;
    let text = message(repo, &commits, base, head, gate);
    for attempt in 1..=5 {
        let tip = origin.fetch_branch(branch)?;
        let contains = tip == head.oid()
            || git
                .graph_descendant_of(tip, head.oid())
                .map_err(|e| Error::git("compare history", e))?;
        if !contains {
            return Ok(RevertOutcome::NotOnBranch {
                tip: tip.to_string(),
                failed_gate: gate.trailer(),
            });
        }
        // Three-way: what head changed relative to base, taken back out of tip.
        let mut index = git
            .merge_trees(
                &tree_of(head.oid())?,
                &tree_of(tip)?,
                &tree_of(base.oid())?,
                None,
            )
            .map_err(|e| Error::git("merge trees for the revert", e))?;
        if index.has_conflicts() {
            let mut paths: Vec<String> = index
                .conflicts()
                .map_err(|e| Error::git("read conflicts", e))?
                .filter_map(|c| c.ok())
                .filter_map(|c| c.our.or(c.their).or(c.ancestor))
                .map(|e| String::from_utf8_lossy(&e.path).into_owned())
                .collect();
            paths.sort();
            paths.dedup();
            return Ok(RevertOutcome::Conflict {
                tip: tip.to_string(),
                reverts,
                paths,
                failed_gate: gate.trailer(),
            });
        }
        let tree = index
            .write_tree_to(git)
            .and_then(|t| git.find_tree(t))
            .map_err(|e| Error::git("write the revert's tree", e))?;
        if tree.id() == tree_of(tip)?.id() {
            return Ok(nothing(
                tip,
                format!(
                    "{} no longer has the changes of {}..{} (already reverted)",
                    branch,
                    base.short(),
                    head.short()
                ),
            ));
        }
        let parent = git
            .find_commit(tip)
            .map_err(|e| Error::git("read the branch tip", e))?;
        let commit = git
            .commit(None, &sig, &sig, &text, &tree, &[&parent])
            .map_err(|e| Error::git("write the revert commit", e))?;
        match origin.push_branch(commit, branch)? {
            Pushed::Yes => {
                return Ok(RevertOutcome::Pushed {
                    commit: commit.to_string(),
                    onto: tip.to_string(),
                    reverts,
                    failed_gate: gate.trailer(),
                });
            }
            Pushed::Rejected(why) => tracing::warn!(
                "{branch} moved while reverting ({why}); redoing the revert on the new tip (attempt {attempt}/5)"
            ),
        }
    }
    Err(Error::Remote(
        Message::from(format!(
            "could not push the revert to {branch}: it keeps moving"
        ))
        .hint(format!(
            "the hosts are rolled back; revert {} by hand",
            head.short()
        )),
    ))
}
