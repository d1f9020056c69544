//! `fleetgate run --base A --head B`: the whole pipeline. Plan, then each
//! stage in order: its clients (those whose deployed ref renders differently
//! from B), the approval gate, deploy with health gates, record. On a failed
//! gate the hosts are rolled back by the stage, then the change is reverted
//! in Git. One run at a time, by a lock on the remote.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};

use super::Context;
use crate::config::{self, Selection, Stage};
use crate::deploy::StageOutcome;
use crate::error::{Error, ExitCode, Result};
use crate::forge::{
    State,
    notify::{self, Reporter},
};
use crate::lock;
use crate::origin::Origin;
use crate::pipeline::{self, StageVerdict};
use crate::record::{self, Records};
use crate::repo::{CommitId, Repo};
use crate::report::{self, OutcomeFormat};
use crate::revert::{self, FailedGate, RevertOutcome};
use crate::scan::{self, ScanReport};

pub fn duration(text: &str) -> std::result::Result<Duration, String> {
    config::duration::parse(text)
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The commit before the push (seeds clients that have no deployed ref
    /// yet). Default: the base recorded by the last run of HEAD (to resume
    /// it, e.g. after an approval).
    #[arg(long, value_name = "REV")]
    pub base: Option<String>,
    /// The commit to roll out.
    #[arg(long, value_name = "REV")]
    pub head: String,
    /// Poll this long for a pending approval instead of exiting 4 at once.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub wait_approval: Option<Duration>,
    /// The remote that holds records, approvals, the lock and the branch.
    #[arg(long, env = "FLEETGATE_REMOTE", default_value = "origin")]
    pub remote: String,
    /// The branch a revert is pushed to.
    #[arg(long, env = "FLEETGATE_BRANCH", default_value = "main")]
    pub branch: String,
    /// How long to wait for another run's lock before giving up (exit 3).
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "10m")]
    pub lock_wait: Duration,
    /// A lock not renewed for this long is taken over (a killed job's).
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "1h")]
    pub lock_expiry: Duration,
    /// Output format of the run report on stdout (json: the run record).
    #[arg(long, value_enum, default_value_t = OutcomeFormat::Text)]
    pub format: OutcomeFormat,
    /// In CI: commit statuses for scan and each stage on HEAD, and a comment
    /// on the merged pull request when a stage waits or fails.
    #[arg(long)]
    pub comment: bool,
    #[command(flatten)]
    pub scan: super::scan::ScanOpts,
}

pub fn run(ctx: &Context, args: &RunArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let origin = Origin::new(&repo, &args.remote)?;
    let head = repo.resolve(&args.head)?;
    let base = match &args.base {
        Some(base) => repo.resolve(base)?,
        None => recorded_base(&repo, &origin, head)?,
    };
    // Outside CI, --comment is an error before anything runs.
    let reporter = match args.comment {
        true => Some(Reporter::connect(
            ctx.forge,
            "run --comment",
            &head.to_string(),
        )?),
        false => None,
    };
    let current = RefCell::new(None);
    crate::interrupt::install();
    let (run_id, holder) = lock::this_run();
    let mut lock = lock::acquire(
        &repo,
        &origin,
        &run_id,
        &holder,
        args.lock_expiry,
        args.lock_wait,
    )?;
    let result = Run {
        ctx,
        repo: &repo,
        origin: &origin,
        args,
        base,
        head,
        run_id,
        outcomes: Vec::new(),
        changed_since: HashMap::new(),
        scan: None,
        reporter: reporter.as_ref(),
        deployed: false,
        current: &current,
    }
    .go(&mut lock);
    lock.release();
    if let (Err(e), Some(r)) = (&result, &reporter) {
        // The status in progress errs; before any, the plan itself failed.
        let (name, state) = match current.borrow().clone() {
            Some(name) => (name, State::Error),
            None => ("plan".to_string(), notify::error_state(e)),
        };
        r.try_status(&name, state, &notify::first_line(e));
    }
    let (code, note, outcomes, scan) = result?;
    if let Some(r) = &reporter
        && r.failed()
        && code == ExitCode::Ok
    {
        return Err(Error::Forge(format!(
            "every stage passed, but {} could not be told everything (see above)",
            r.forge.name()
        )));
    }
    match args.format {
        OutcomeFormat::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&note).expect("a note serialises")
            )
        }
        OutcomeFormat::Text => {
            if let Some(scan) = &scan {
                print!("{}", report::scan(scan, report::Format::Text));
            }
            for o in &outcomes {
                print!("{}", report::outcome(o, OutcomeFormat::Text));
            }
        }
    }
    Ok(code)
}

struct Run<'a> {
    ctx: &'a Context,
    repo: &'a Repo,
    origin: &'a Origin,
    args: &'a RunArgs,
    base: CommitId,
    head: CommitId,
    run_id: String,
    outcomes: Vec<StageOutcome>,
    /// Per commit a deployed ref points at: the clients whose rendering
    /// differs at head (one plan per distinct commit, shared by stages).
    changed_since: HashMap<CommitId, Vec<String>>,
    scan: Option<ScanReport>,
    reporter: Option<&'a Reporter>,
    /// Whether a stage has started deploying: until then a failure to
    /// report stops the run (nothing is half-done); after, it is logged.
    deployed: bool,
    /// The status in progress, marked `error` if the run stops on an error.
    current: &'a RefCell<Option<String>>,
}

type Finished = (ExitCode, Value, Vec<StageOutcome>, Option<ScanReport>);

impl Run<'_> {
    fn records(&self) -> Records<'_> {
        Records::new(self.repo, Some(self.origin))
    }

    fn done(self, code: ExitCode, note: Value) -> Result<Finished> {
        Ok((code, note, self.outcomes, self.scan))
    }

    /// Stops on SIGTERM/SIGINT, saying so in the record however little was
    /// left to do: the next run knows this one did not finish.
    fn interrupted(self, before: &str) -> Result<Finished> {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let stage = before.to_string();
        let run_id = self.run_id.clone();
        let note = self.records().update(self.head, &[], |n| {
            n["interrupted"] = json!({"at": at, "before_stage": stage, "run_id": run_id});
        })?;
        tracing::warn!("interrupted before stage {before}: recorded; run again to finish");
        self.done(ExitCode::Infra, note)
    }

    /// Sets the commit status `fleetgate/<name>` when reporting to a forge.
    fn tell(&self, name: &str, state: State, description: &str) -> Result<()> {
        let Some(r) = self.reporter else {
            return Ok(());
        };
        *self.current.borrow_mut() = (state == State::Pending).then(|| name.to_string());
        if self.deployed {
            r.try_status(name, state, description);
            Ok(())
        } else {
            r.status(name, state, description)
        }
    }

    fn go(mut self, lock: &mut lock::Lock) -> Result<Finished> {
        let (base, head) = (self.base, self.head);
        let plan = super::plan::build(self.repo, base, head, &self.ctx.keyring)?;
        let plan_hash = plan.plan_hash.clone();
        self.changed_since
            .insert(base, plan.clients.iter().map(|c| c.name.clone()).collect());
        let run_id = self.run_id.clone();
        let mut note = self.records().update(head, &[], |note| {
            note["base"] = json!(base.to_string());
            // When the plan became what it is: an approval given before
            // that was for an earlier plan.
            if note["plan_hash"].as_str() != Some(plan_hash.as_str()) {
                note["planned_at"] =
                    json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            }
            note["plan_hash"] = json!(plan_hash);
            note["run_id"] = json!(run_id);
        })?;
        tracing::info!(
            "run {}..{}: plan {} ({} client(s) change)",
            base.short(),
            head.short(),
            crate::report::short(&plan_hash),
            plan.clients.len()
        );
        let snap = self.repo.snapshot(head)?;
        let (fleet, _) = config::validate(&config::load(&snap, Selection::All)?);
        // The image gate, before anything deploys: every image the
        // changed clients would run.
        let changed: Vec<String> = plan.clients.iter().map(|c| c.name.clone()).collect();
        if !scan::images_in_play(&fleet, &changed).is_empty() {
            self.tell("scan", State::Pending, "scanning the images of this change")?;
            let report = super::scan::gate(&fleet, &changed, &self.args.scan)?;
            match report.passed {
                true => self.tell(
                    "scan",
                    State::Success,
                    &format!("{} image(s) pass the policy", report.images.len()),
                )?,
                false => self.tell(
                    "scan",
                    State::Failure,
                    &format!(
                        "{} blocking finding(s); nothing deployed",
                        report.blocking()
                    ),
                )?,
            }
            let value = serde_json::to_value(&report).expect("a scan report serialises");
            note = self.records().update(head, &[], |n| {
                n["scan"] = value.clone();
            })?;
            if !report.passed {
                tracing::error!(
                    "scan blocked: {} finding(s) in the images of this change; nothing deployed",
                    report.blocking()
                );
                self.scan = Some(report);
                return self.done(ExitCode::Blocked, note);
            }
            tracing::info!("scan passed: {} image(s)", report.images.len());
            self.scan = Some(report);
        }
        let stages = fleet.pipeline.stages.clone();
        let on_failure = fleet.pipeline.on_failure;
        for stage in &stages {
            if crate::interrupt::requested() {
                return self.interrupted(&stage.name);
            }
            lock.renew()?;
            let group: Vec<String> = fleet
                .clients
                .values()
                .filter(|c| c.group == stage.group)
                .map(|c| c.name.clone())
                .collect();
            let pending = self.pending(stage, &group)?;
            if pending.is_empty() {
                self.tell(
                    &stage.name,
                    State::Success,
                    &format!("all {} client(s) run {}", group.len(), head.short()),
                )?;
                tracing::info!(
                    "stage {}: all {} client(s) already run {}",
                    stage.name,
                    group.len(),
                    head.short()
                );
                continue;
            }
            tracing::info!(
                "stage {}: {} of {} client(s) to deploy: {}",
                stage.name,
                pending.len(),
                group.len(),
                pending.join(", ")
            );
            let mut deploying = format!("deploying {} client(s)", pending.len());
            if let Some(approval) = &stage.approval {
                match self.approval(stage, &approval.approvers, &plan.plan_hash, lock)? {
                    Some(a) => {
                        tracing::info!(
                            "stage {}: approved by {} at {} (plan {})",
                            stage.name,
                            a.by,
                            a.at,
                            crate::report::short(&a.plan_hash)
                        );
                        deploying.push_str(&format!(", approved by {}", a.by));
                    }
                    None if crate::interrupt::requested() => {
                        return self.interrupted(&stage.name);
                    }
                    None => {
                        let name = stage.name.clone();
                        note = self.records().update(head, &[], |n| {
                            n["waiting"] = json!(name);
                        })?;
                        tracing::warn!(
                            "stage {} waits for an approval of plan {} by one of: {}\n  hint: fleetgate approve --rev {} --by USER, then run again (stages already done are not redeployed)",
                            stage.name,
                            crate::report::short(&plan.plan_hash),
                            approval.approvers.join(", "),
                            head
                        );
                        return self.done(ExitCode::Waiting, note);
                    }
                }
            }
            self.tell(&stage.name, State::Pending, &deploying)?;
            self.deployed = true;
            let outcome =
                super::deploy::deploy_stage(self.ctx, self.repo, head, &stage.name, &pending)?;
            let (moved, recorded) = record::record_stage(&self.records(), head, &outcome)?;
            note = recorded;
            for r in &moved {
                tracing::info!("{r} → {}", head.short());
            }
            let verdict = pipeline::verdict(&outcome);
            self.outcomes.push(outcome);
            let last = self.outcomes.last().expect("just pushed");
            let hosts = last.hosts.len();
            let tolerated: Vec<String> = last.failed().map(|h| h.host.clone()).collect();
            match verdict {
                StageVerdict::Passed if tolerated.is_empty() => {
                    self.tell(
                        &stage.name,
                        State::Success,
                        &format!("{hosts} host(s) deployed; every gate passed"),
                    )?;
                    continue;
                }
                StageVerdict::Passed => {
                    tracing::warn!(
                        "stage {}: {} failed host(s) tolerated (max_failures: {}): {}; their clients keep their deployed ref, so the next run tries them again",
                        stage.name,
                        tolerated.len(),
                        stage.max_failures,
                        tolerated.join(", ")
                    );
                    self.tell(
                        &stage.name,
                        State::Success,
                        &format!(
                            "{} of {hosts} host(s) deployed; {} failure(s) tolerated",
                            hosts - tolerated.len(),
                            tolerated.len()
                        ),
                    )?;
                    continue;
                }
                StageVerdict::Interrupted => {
                    self.tell(
                        &stage.name,
                        State::Error,
                        "interrupted; run again to finish",
                    )?;
                    tracing::warn!(
                        "stage {} interrupted: recorded; run again to finish",
                        stage.name
                    );
                    return self.done(ExitCode::Infra, note);
                }
                StageVerdict::InfraFailed => {
                    let lost: Vec<String> = last.lost().iter().map(|h| h.host.clone()).collect();
                    let (status, log) = if lost.is_empty() {
                        (
                            "hosts could not be reached; nothing reverted".to_string(),
                            "hosts could not be reached".to_string(),
                        )
                    } else {
                        (
                            format!(
                                "lost during the change, not rolled back: {}",
                                lost.join(", ")
                            ),
                            format!(
                                "{} lost during the change and could not be rolled back: it may run {} un-gated; check it, then run again",
                                lost.join(", "),
                                head.short()
                            ),
                        )
                    };
                    self.tell(&stage.name, State::Error, &status)?;
                    if !lost.is_empty() {
                        self.tell_failure(None, None);
                    }
                    tracing::error!(
                        "stage {} failed: {log}; nothing is reverted (not the change's fault)",
                        stage.name
                    );
                    return self.done(verdict.exit_code(), note);
                }
                StageVerdict::Frozen => {
                    self.tell(
                        &stage.name,
                        State::Failure,
                        "failed; `rollback: freeze` apps left on the failed release",
                    )?;
                    self.tell_failure(None, None);
                    let last = self.outcomes.last().expect("just pushed");
                    tracing::error!(
                        "stage {} failed with `rollback: freeze` apps left on the failed release ({}); not reverting: a human decides",
                        stage.name,
                        last.frozen().join(", ")
                    );
                    return self.done(ExitCode::Blocked, note);
                }
                StageVerdict::ChangeFailed => {
                    let gate = FailedGate::of(self.outcomes.last().expect("just pushed"))
                        .expect("a change failure names its gate");
                    tracing::error!(
                        "stage {} failed: {} on {}: {} failed: {}",
                        stage.name,
                        gate.client,
                        gate.host,
                        gate.check,
                        gate.detail
                    );
                    self.tell(
                        &stage.name,
                        State::Failure,
                        &format!("{} failed on {}; rolled back", gate.check, gate.host),
                    )?;
                    let mut reverted = None;
                    if on_failure.revert {
                        let (n, outcome) = self.revert(&gate)?;
                        note = n;
                        reverted = Some(outcome);
                    }
                    self.tell_failure(Some(&gate), reverted.as_ref());
                    return self.done(ExitCode::Blocked, note);
                }
            }
        }
        tracing::info!("run {}: every stage passed", head.short());
        self.done(ExitCode::Ok, note)
    }

    /// Clients of `group` whose deployed ref for the stage renders
    /// differently from head (no ref yet: compared with base).
    fn pending(&mut self, stage: &Stage, group: &[String]) -> Result<Vec<String>> {
        let git = self.repo.git();
        let mut by_rev: BTreeMap<String, (CommitId, Vec<String>)> = BTreeMap::new();
        for client in group {
            let from = git
                .refname_to_id(&record::deployed_ref(&stage.name, client))
                .map(CommitId)
                .unwrap_or(self.base);
            by_rev
                .entry(from.to_string())
                .or_insert_with(|| (from, Vec::new()))
                .1
                .push(client.clone());
        }
        let mut pending = Vec::new();
        for (from, clients) in by_rev.into_values() {
            if from == self.head {
                continue;
            }
            if !self.changed_since.contains_key(&from) {
                let plan = super::plan::build(self.repo, from, self.head, &self.ctx.keyring)?;
                let names = plan.clients.iter().map(|c| c.name.clone()).collect();
                self.changed_since.insert(from, names);
            }
            let changed = &self.changed_since[&from];
            pending.extend(clients.into_iter().filter(|c| changed.contains(c)));
        }
        pending.sort();
        Ok(pending)
    }

    /// The approval that counts for this stage, polling up to
    /// `--wait-approval` for one; the forge hears that the stage waits the
    /// first time none counts.
    fn approval(
        &self,
        stage: &Stage,
        approvers: &[String],
        plan_hash: &str,
        lock: &mut lock::Lock,
    ) -> Result<Option<pipeline::Approval>> {
        let deadline = Instant::now() + self.args.wait_approval.unwrap_or_default();
        let mut told = false;
        loop {
            let note = self.records().read(self.head)?.unwrap_or(Value::Null);
            if let Some(a) = pipeline::counting_approval(&note, plan_hash, approvers) {
                return Ok(Some(a));
            }
            let stale: Vec<String> = pipeline::approvals(&note)
                .into_iter()
                .filter(|a| a.plan_hash != plan_hash)
                .map(|a| format!("{} (plan {})", a.by, crate::report::short(&a.plan_hash)))
                .collect();
            if !told {
                if !stale.is_empty() {
                    tracing::warn!(
                        "approvals for an earlier plan do not count: {}",
                        stale.join(", ")
                    );
                }
                // Tell people as soon as the stage waits, not only when
                // `--wait-approval` gives up.
                self.tell_waiting(stage, approvers, plan_hash)?;
            }
            if Instant::now() >= deadline || crate::interrupt::requested() {
                return Ok(None);
            }
            if !told {
                tracing::info!(
                    "stage {}: waiting up to {:?} for an approval by one of: {}",
                    stage.name,
                    self.args.wait_approval.unwrap_or_default(),
                    approvers.join(", ")
                );
                told = true;
            }
            lock.renew()?;
            std::thread::sleep(Duration::from_secs(2).min(deadline - Instant::now()));
        }
    }

    /// The `fleetgate/<stage>` status and the comment on the merged pull
    /// request when a stage waits for an approval.
    fn tell_waiting(&self, stage: &Stage, approvers: &[String], plan_hash: &str) -> Result<()> {
        let Some(r) = self.reporter else {
            return Ok(());
        };
        self.tell(
            &stage.name,
            State::Pending,
            &format!("waits for an approval by {}", approvers.join(", ")),
        )?;
        let head = self.head.to_string();
        let body = notify::waiting_comment(
            r.env.kind,
            &head,
            &self.outcomes,
            &stage.name,
            approvers,
            plan_hash,
            &r.log_link(),
        );
        r.try_comment_on_merged(&notify::waiting_marker(&head), &body);
        Ok(())
    }

    /// The failure comment on the merged pull request.
    fn tell_failure(&self, gate: Option<&FailedGate>, revert: Option<&RevertOutcome>) {
        let (Some(r), Some(outcome)) = (self.reporter, self.outcomes.last()) else {
            return;
        };
        let sha = self.head.to_string();
        let body = notify::failure_comment(&sha, outcome, gate, revert, &r.log_link());
        r.try_comment_on_merged(&notify::failed_marker(&sha), &body);
    }

    /// Reverts base..head on the branch and records what happened.
    fn revert(&self, gate: &FailedGate) -> Result<(Value, RevertOutcome)> {
        let outcome = revert::revert(
            self.repo,
            self.origin,
            &self.args.branch,
            self.base,
            self.head,
            gate,
        )?;
        match &outcome {
            RevertOutcome::Pushed { commit, onto, .. } => tracing::info!(
                "reverted {}..{} on {} with {} (onto {}); the hosts already run the previous release",
                self.base.short(),
                self.head.short(),
                self.args.branch,
                crate::report::short(commit),
                crate::report::short(onto)
            ),
            RevertOutcome::Conflict { tip, paths, .. } => tracing::error!(
                "could not revert {}..{} on {} (now {}): {} conflict with later commits\n  hint: the hosts stay rolled back; revert by hand: git revert {}..{}",
                self.base.short(),
                self.head.short(),
                self.args.branch,
                crate::report::short(tip),
                paths.join(", "),
                self.base,
                self.head
            ),
            RevertOutcome::NothingToRevert { why, .. } => tracing::warn!(
                "nothing to revert on {}: {why}; the hosts already run the previous release",
                self.args.branch
            ),
            RevertOutcome::NotOnBranch { tip, .. } => tracing::error!(
                "{} is no longer on {} (now {}): nothing reverted\n  hint: the hosts stay rolled back; check the branch's history",
                self.head.short(),
                self.args.branch,
                crate::report::short(tip)
            ),
        }
        let value = serde_json::to_value(&outcome).expect("a revert serialises");
        let note = self.records().update(self.head, &[], |n| {
            n["revert"] = value.clone();
        })?;
        Ok((note, outcome))
    }
}

/// The stages that need an approval, with who may give it.
pub fn approval_stages(fleet: &config::Fleet) -> Vec<(&str, &[String])> {
    fleet
        .pipeline
        .stages
        .iter()
        .filter_map(|s| {
            s.approval
                .as_ref()
                .map(|a| (s.name.as_str(), a.approvers.as_slice()))
        })
        .collect()
}

/// The base the last run of `head` planned from (in its record).
fn recorded_base(repo: &Repo, origin: &Origin, head: CommitId) -> Result<CommitId> {
    let note = Records::new(repo, Some(origin)).read(head)?;
    let base = note
        .as_ref()
        .and_then(|n| n.get("base"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::Usage(format!(
                "no run has recorded a base for {}\n  hint: pass --base (the commit before the push)",
                head.short()
            ))
        })?;
    repo.resolve(base)
}
