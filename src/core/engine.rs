//! The pipeline's driver, over the ports: `run` (plan, the image gate, each
//! stage in order — its clients, the approval gate, deploy, record — and on
//! a failed gate the revert, all under the lock) and `approve` (weigh one
//! approval, record it). Every decision is here or in the pure modules it
//! calls (`approval`, `verdict`, `records`); every effect goes through
//! [`Ports`], so the whole pipeline runs against in-memory doubles in
//! milliseconds (`fakes.rs`) and against real hosts and remotes in the
//! integration tests.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::config::{self, Fleet, Stage, Webhook};
use crate::core::approval::{self, ApprovalStages, Claim, Verdict};
use crate::core::events::Event;
use crate::core::lock::{self, Claimant, Lock};
use crate::core::outcome::{FailedGate, RevertOutcome, StageOutcome};
use crate::core::record::{Approval, Interrupted, RunRecord};
use crate::core::records::Records;
use crate::core::rev::CommitId;
use crate::core::rev::short;
use crate::core::shard::{Reported, Shard, ShardVerdict};
use crate::core::verdict::{self, StageVerdict};
use crate::error::{Error, ExitCode, Message, Result};
use crate::forge::State;
use crate::forge::notify::{self, Reporter};
use crate::ports::{Clock, GitStore, LockKeeper, Notifier, Rollout, rfc3339};
use crate::scan::{self, ScanReport};

/// The systems a run works with.
pub struct Ports<'a> {
    pub git: &'a dyn GitStore,
    pub rollout: &'a dyn Rollout,
    pub clock: &'a dyn Clock,
    /// Statuses and comments on the forge (`run --comment`).
    pub reporter: Option<&'a Reporter>,
    /// Renews the lock during a stage's deploy (the real run's thread).
    pub keeper: Option<&'a dyn LockKeeper>,
    /// The webhooks of `notify:` (with or without a reporter).
    pub notifier: Option<&'a dyn Notifier>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The commit before the push; None: a first push (or a base this
    /// clone does not have): each client is compared with what its stage
    /// last deployed, or with nothing.
    pub base: Option<CommitId>,
    pub head: CommitId,
    /// The branch a revert is pushed to.
    pub branch: String,
    /// Poll this long for a pending approval (zero: exit 4 at once).
    pub wait_approval: Duration,
    pub lock_wait: Duration,
    pub lock_expiry: Duration,
    pub run_id: String,
    pub holder: String,
    /// The CI run's page, shown to whoever finds the lock held.
    pub run_url: Option<String>,
    /// This runner's slice of each stage's hosts (`run --shard I/N`);
    /// `Shard::ALL` on one runner.
    pub shard: Shard,
    /// How long a shard waits for the others to report on a stage before
    /// the stage fails (`--shard-timeout`).
    pub shard_timeout: Duration,
}

/// How a run ended: its exit code, the record as pushed, what it deployed.
#[derive(Debug)]
pub struct RunOutcome {
    pub code: ExitCode,
    pub record: RunRecord,
    pub outcomes: Vec<StageOutcome>,
    pub scan: Option<ScanReport>,
}

/// The base the last run of `head` planned from (in its record): `run`
/// without `--base` resumes it. A recorded plan without a base was a run
/// from nothing (a first push), resumed as one.
pub fn recorded_base(
    git: &dyn GitStore,
    clock: &dyn Clock,
    head: CommitId,
) -> Result<Option<CommitId>> {
    let record = Records::new(git, clock)
        .read(head)?
        .filter(|r| r.plan_hash.is_some())
        .ok_or_else(|| {
            Error::Usage(
                Message::from(format!("no run has recorded a base for {}", head.short()))
                    .hint("pass --base (the commit before the push)"),
            )
        })?;
    let Some(base) = record.base else {
        return Ok(None);
    };
    CommitId::from_hex(&base).map(Some).ok_or_else(|| {
        Error::Record(
            format!(
                "the run record on {head} names a base that is not a commit id: {}",
                short(&base)
            )
            .into(),
        )
    })
}

/// The whole pipeline for `req.base..req.head`, under the pipeline lock.
pub fn run(ports: &Ports, req: &RunRequest) -> Result<RunOutcome> {
    let current = RefCell::new(None);
    let who = Claimant {
        run_id: req.run_id.clone(),
        holder: req.holder.clone(),
        run_url: req.run_url.clone(),
        shard: (req.shard.count > 1).then_some(req.shard.index),
    };
    let lock = lock::acquire(ports.git, ports.clock, &who, req.lock_expiry, req.lock_wait)?;
    if let Some(keeper) = ports.keeper {
        keeper.keep(lock.lease());
    }
    let result = Run {
        ports,
        req,
        records: Records::new(ports.git, ports.clock),
        outcomes: Vec::new(),
        changed_since: HashMap::new(),
        fleets_at: HashMap::new(),
        scan: None,
        deployed: false,
        current: &current,
        lock: &lock,
        hooks: Vec::new(),
    }
    .go();
    lock.release();
    if let (Err(e), Some(r)) = (&result, ports.reporter) {
        // The status in progress errs; before any, the plan itself failed.
        let (name, state) = match current.borrow().clone() {
            Some(name) => (name, State::Error),
            None => ("plan".to_string(), notify::error_state(e)),
        };
        r.try_status(&name, state, &e.headline());
    }
    let outcome = result?;
    if let Some(r) = ports.reporter
        && r.failed()
        && outcome.code == ExitCode::Ok
    {
        return Err(Error::Forge(
            format!(
                "every stage passed, but {} could not be told everything (see above)",
                r.forge.name()
            )
            .into(),
        ));
    }
    Ok(outcome)
}

/// The clients a plan changes, each with the apps it no longer runs.
fn changes(plan: &crate::plan::Plan) -> BTreeMap<String, Vec<String>> {
    plan.clients
        .iter()
        .map(|c| {
            let removed = c
                .apps
                .iter()
                .filter(|a| a.action == crate::plan::Action::Remove)
                .map(|a| a.name.clone())
                .collect();
            (c.name.clone(), removed)
        })
        .collect()
}

/// The stages of `fleet` that need an approval, with who may give it.
pub fn approval_stages(fleet: &Fleet) -> ApprovalStages {
    fleet
        .pipeline
        .stages
        .iter()
        .filter_map(|s| {
            s.approval
                .as_ref()
                .map(|a| (s.name.clone(), a.approvers.clone()))
        })
        .collect()
}

/// Weighs one approval against the record of its commit and records it
/// when it counts.
pub fn approve(
    git: &dyn GitStore,
    clock: &dyn Clock,
    claim: &Claim,
    stages: &ApprovalStages,
) -> Result<Verdict> {
    let records = Records::new(git, clock);
    let verdict = approval::weigh(
        claim,
        stages,
        || records.read(claim.rev),
        config::PIPELINE,
        &rfc3339(clock.now()),
    )?;
    if let Verdict::Counted { approval, stages } = &verdict {
        records.update(claim.rev, &[], |r| r.add_approval(approval))?;
        tracing::info!(
            "{} approved plan {} of {} for stage(s) {} ({})",
            approval.by,
            short(&approval.plan_hash),
            claim.rev.short(),
            stages.join(", "),
            claim.source
        );
    }
    Ok(verdict)
}

/// A sharded stage, decided.
struct Decided {
    /// Every shard's hosts, as the record has them.
    merged: StageOutcome,
    verdict: ShardVerdict,
    /// The shard that decided (None: a record that does not say).
    by: Option<u32>,
    /// The shards that never reported, for a `TimedOut` stage.
    missing: String,
    record: RunRecord,
}

struct Run<'a> {
    ports: &'a Ports<'a>,
    req: &'a RunRequest,
    records: Records<'a>,
    outcomes: Vec<StageOutcome>,
    /// Per commit a deployed ref points at: the clients whose rendering
    /// differs at head (one plan per distinct commit, shared by stages).
    /// (and, per client, the apps it no longer runs there).
    changed_since: HashMap<Option<CommitId>, BTreeMap<String, Vec<String>>>,
    /// The fleet at a commit a client was last deployed with, read when
    /// it removes something (to know the removed apps' policy).
    fleets_at: HashMap<CommitId, Fleet>,
    scan: Option<ScanReport>,
    /// Whether a stage has started deploying: until then a failure to
    /// report stops the run (nothing is half-done); after, it is logged.
    deployed: bool,
    /// The status in progress, marked `error` if the run stops on an error.
    current: &'a RefCell<Option<String>>,
    /// Kept alive before every change on the remote: a run whose lock was
    /// taken over stops before it changes anything more.
    lock: &'a Lock<'a>,
    /// `notify:` of the fleet at head, once read.
    hooks: Vec<Webhook>,
}

impl Run<'_> {
    /// Tells the webhooks; a failure is logged, never the run's outcome.
    fn notify(&self, event: Event) {
        let Some(n) = self.ports.notifier else {
            return;
        };
        let event = event.with_run_url(self.req.run_url.as_deref());
        if let Err(e) = n.notify(&self.hooks, &event) {
            tracing::warn!(
                "notify: {} not sent: {}; the run goes on",
                event.kind.as_str(),
                e.headline()
            );
        }
    }

    fn done(self, code: ExitCode, record: RunRecord) -> Result<RunOutcome> {
        Ok(RunOutcome {
            code,
            record,
            outcomes: self.outcomes,
            scan: self.scan,
        })
    }

    /// Stops on SIGTERM/SIGINT, saying so in the record however little was
    /// left to do: the next run knows this one did not finish.
    fn interrupted(self, before: &str) -> Result<RunOutcome> {
        let interrupted = Interrupted {
            at: rfc3339(self.ports.clock.now()),
            before_stage: before.to_string(),
            run_id: self.req.run_id.clone(),
        };
        self.lock.keep_alive()?;
        let record = self.records.update(self.req.head, &[], |r| {
            r.interrupted = Some(interrupted.clone());
        })?;
        tracing::warn!("interrupted before stage {before}: recorded; run again to finish");
        self.done(ExitCode::Infra, record)
    }

    /// Sets the commit status `fleetgate/<name>` when reporting to a forge.
    fn tell(&self, name: &str, state: State, description: &str) -> Result<()> {
        let Some(r) = self.ports.reporter else {
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

    fn go(mut self) -> Result<RunOutcome> {
        let (base, head) = (self.req.base, self.req.head);
        let (rollout, clock) = (self.ports.rollout, self.ports.clock);
        let plan = rollout.plan(base, head)?;
        let plan_hash = plan.plan_hash.clone();
        self.changed_since.insert(base, changes(&plan));
        let (base_s, now) = (base.map(|b| b.to_string()), rfc3339(clock.now()));
        self.lock.keep_alive()?;
        let mut record = self.records.update(head, &[], |r| {
            r.plan(base_s.as_deref(), &plan_hash, &self.req.run_id, &now);
        })?;
        tracing::info!(
            "run {}..{}: plan {} ({} client(s) change)",
            base.map_or_else(|| "nothing".to_string(), |b| b.short()),
            head.short(),
            short(&plan_hash),
            plan.clients.len()
        );
        let fleet = rollout.fleet(head)?;
        self.hooks = fleet.pipeline.notify.clone();
        // The image gate, before anything deploys: every image the
        // changed clients would run.
        let changed: Vec<String> = plan.clients.iter().map(|c| c.name.clone()).collect();
        if !scan::images_in_play(&fleet, &changed).is_empty() {
            self.tell("scan", State::Pending, "scanning the images of this change")?;
            if let Some(report) = rollout.scan(&fleet, &changed)? {
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
                self.lock.keep_alive()?;
                record = self.records.update(head, &[], |r| {
                    r.scan = Some(report.clone());
                })?;
                if !report.passed {
                    tracing::error!(
                        "scan blocked: {} finding(s) in the images of this change; nothing deployed",
                        report.blocking()
                    );
                    self.scan = Some(report);
                    return self.done(ExitCode::Blocked, record);
                }
                tracing::info!("scan passed: {} image(s)", report.images.len());
                self.scan = Some(report);
            }
        }
        let on_failure = fleet.pipeline.on_failure;
        for stage in &fleet.pipeline.stages {
            if clock.interrupted() {
                return self.interrupted(&stage.name);
            }
            self.lock.keep_alive()?;
            let mut group: Vec<String> = fleet
                .clients
                .values()
                .filter(|c| c.group == stage.group)
                .map(|c| c.name.clone())
                .collect();
            // A client whose file is gone but whose ref this stage still
            // has is taken down here, behind the same gates.
            let deployed = self.records.deployed_clients(&stage.name)?;
            let gone: Vec<String> = deployed
                .iter()
                .filter(|(c, _)| !fleet.clients.contains_key(c))
                .map(|(c, _)| c.clone())
                .collect();
            group.extend(gone.iter().cloned());
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
            let freeze = self.freeze_removals(stage, &pending)?;
            let approvers: Option<Vec<String>> = match &stage.approval {
                Some(a) => Some(a.approvers.clone()),
                None if !freeze.is_empty() => {
                    let Some(like) = fleet
                        .pipeline
                        .stages
                        .iter()
                        .find_map(|s| s.approval.as_ref())
                    else {
                        tracing::error!(
                            "stage {} would remove `rollback: freeze` app(s) {}: that needs an approval, and no stage of {} has approvers\n  hint: give a stage `approval.approvers`, or set the app's rollback to safe first",
                            stage.name,
                            freeze.join(", "),
                            config::PIPELINE
                        );
                        return self.done(ExitCode::Blocked, record);
                    };
                    tracing::warn!(
                        "stage {} removes `rollback: freeze` app(s) {}: that needs an approval like production's",
                        stage.name,
                        freeze.join(", ")
                    );
                    Some(like.approvers.clone())
                }
                None => None,
            };
            if let Some(approvers) = &approvers {
                match self.approval(stage, approvers, &plan.plan_hash, &pending)? {
                    Some(a) => {
                        tracing::info!(
                            "stage {}: approved by {} at {} (plan {})",
                            stage.name,
                            a.by,
                            a.at,
                            short(&a.plan_hash)
                        );
                        deploying.push_str(&format!(", approved by {}", a.by));
                    }
                    None if clock.interrupted() => {
                        return self.interrupted(&stage.name);
                    }
                    None => {
                        let name = stage.name.clone();
                        self.lock.keep_alive()?;
                        record = self.records.update(head, &[], |r| {
                            r.waiting = Some(name.clone());
                        })?;
                        tracing::warn!(
                            "stage {} waits for an approval of plan {} by one of: {}\n  hint: fleetgate approve --rev {} --by USER, then run again (stages already done are not redeployed)",
                            stage.name,
                            short(&plan.plan_hash),
                            approvers.join(", "),
                            head
                        );
                        return self.done(ExitCode::Waiting, record);
                    }
                }
            }
            self.tell(&stage.name, State::Pending, &deploying)?;
            self.deployed = true;
            self.lock.keep_alive()?;
            // What each client ran: what it no longer gets is taken down.
            let previous: BTreeMap<String, CommitId> = deployed
                .into_iter()
                .filter(|(c, _)| pending.contains(c))
                .collect();
            let outcome = rollout.deploy(head, &stage.name, &pending, &previous, self.req.shard)?;
            if let Err(e) = self.lock.keep_alive() {
                tracing::warn!(
                    "stage {}: deployed, but its outcome is not recorded: the lock is no longer this run's; the run holding it finds these hosts up to date or deploys them again",
                    stage.name
                );
                return Err(e);
            }
            let verdict = match self.req.shard.count > 1 {
                true => {
                    let decided = self.sharded(stage, outcome, &gone, &previous)?;
                    record = decided.record;
                    self.outcomes.push(decided.merged);
                    match decided.by {
                        // This shard decided: it reports the stage (status,
                        // comment, webhooks, revert) for every shard.
                        Some(by) if by == self.req.shard.index => {}
                        None => {
                            tracing::warn!(
                                "stage {}: interrupted while waiting for the other shards; reported as interrupted, so they roll back; run again to finish",
                                stage.name
                            );
                            return self.done(ExitCode::Infra, record);
                        }
                        Some(by) => match decided.verdict {
                            ShardVerdict::Passed => {
                                tracing::info!(
                                    "stage {} passed on every shard (decided by shard {by}, which reports it)",
                                    stage.name
                                );
                                continue;
                            }
                            v => {
                                tracing::error!(
                                    "stage {} failed ({}): decided by shard {by}, which reports it and reverts when the change is at fault; this shard's hosts are rolled back",
                                    stage.name,
                                    v.describe()
                                );
                                return self.done(v.exit_code(), record);
                            }
                        },
                    }
                    if decided.verdict == ShardVerdict::TimedOut {
                        let why = format!(
                            "shard(s) {} did not report within {:?}",
                            decided.missing, self.req.shard_timeout
                        );
                        self.tell(&stage.name, State::Error, &why)?;
                        tracing::error!(
                            "stage {} failed: {why}; every shard's hosts are rolled back, nothing is reverted (not the change's fault)",
                            stage.name
                        );
                        return self.done(ExitCode::Infra, record);
                    }
                    if decided.verdict == ShardVerdict::Interrupted {
                        self.tell(
                            &stage.name,
                            State::Error,
                            "a shard was interrupted; run again to finish",
                        )?;
                        tracing::warn!(
                            "stage {}: a shard was interrupted: every shard's hosts are rolled back, nothing is reverted; run again to finish",
                            stage.name
                        );
                        return self.done(ExitCode::Infra, record);
                    }
                    verdict::verdict(self.outcomes.last().expect("just pushed"))
                }
                false => {
                    let (moved, recorded) = self.records.record_stage(head, &outcome, &gone)?;
                    record = recorded;
                    for r in &moved {
                        tracing::info!("{r} → {}", head.short());
                    }
                    let verdict = verdict::verdict(&outcome);
                    self.outcomes.push(outcome);
                    verdict
                }
            };
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
                    self.notify(Event::stage_passed(last));
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
                    let last = self.outcomes.last().expect("just pushed");
                    self.notify(Event::stage_passed(last));
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
                    return self.done(verdict.exit_code(), record);
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
                    let comment = match lost.is_empty() {
                        true => None,
                        false => self.tell_failure(None, None),
                    };
                    let last = self.outcomes.last().expect("just pushed");
                    self.notify(Event::failed(last, None, None).with_comment_url(comment));
                    tracing::error!(
                        "stage {} failed: {log}; nothing is reverted (not the change's fault)",
                        stage.name
                    );
                    return self.done(verdict.exit_code(), record);
                }
                StageVerdict::Frozen => {
                    self.tell(
                        &stage.name,
                        State::Failure,
                        "failed; `rollback: freeze` apps left on the failed release",
                    )?;
                    let comment = self.tell_failure(None, None);
                    let last = self.outcomes.last().expect("just pushed");
                    self.notify(Event::frozen(last).with_comment_url(comment));
                    tracing::error!(
                        "stage {} failed with `rollback: freeze` apps left on the failed release ({}); not reverting: a human decides",
                        stage.name,
                        last.frozen().join(", ")
                    );
                    return self.done(verdict.exit_code(), record);
                }
                StageVerdict::ChangeFailed => {
                    let gate = FailedGate::of(last).expect("a change failure names its gate");
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
                        let (r, outcome) = match self.revert(&gate) {
                            Ok(done) => done,
                            Err(e) => {
                                // The hosts are rolled back all the same:
                                // the webhooks hear the failure, then the
                                // run stops on the error.
                                let last = self.outcomes.last().expect("just pushed");
                                let mut event = Event::failed(last, Some(&gate), None);
                                event
                                    .summary
                                    .push_str("; the revert could not be done (see the job log)");
                                self.notify(event);
                                return Err(e);
                            }
                        };
                        record = r;
                        reverted = Some(outcome);
                    }
                    let comment = self.tell_failure(Some(&gate), reverted.as_ref());
                    let last = self.outcomes.last().expect("just pushed");
                    self.notify(
                        Event::failed(last, Some(&gate), reverted.as_ref())
                            .with_comment_url(comment.clone()),
                    );
                    if let Some(event) = reverted
                        .as_ref()
                        .and_then(|r| Event::reverted(last, &self.req.branch, r))
                    {
                        self.notify(event.with_comment_url(comment));
                    }
                    return self.done(verdict.exit_code(), record);
                }
            }
        }
        tracing::info!("run {}: every stage passed", head.short());
        self.done(ExitCode::Ok, record)
    }

    /// Clients of `group` whose deployed ref for the stage renders
    /// differently from head (no ref yet: compared with base, or with
    /// nothing when the run has none).
    fn pending(&mut self, stage: &Stage, group: &[String]) -> Result<Vec<String>> {
        let mut by_rev: BTreeMap<Option<CommitId>, Vec<String>> = BTreeMap::new();
        for client in group {
            let from = match self.records.deployed(&stage.name, client)? {
                Some(deployed) => Some(deployed),
                None => self.req.base,
            };
            by_rev.entry(from).or_default().push(client.clone());
        }
        let mut pending = Vec::new();
        for (from, clients) in by_rev {
            if from == Some(self.req.head) {
                continue;
            }
            if self.req.base.is_none() {
                tracing::info!(
                    "stage {}: {} compared with {}",
                    stage.name,
                    clients.join(", "),
                    from.map_or_else(
                        || "nothing (never deployed)".to_string(),
                        |c| format!("what it last deployed ({})", c.short())
                    )
                );
            }
            if !self.changed_since.contains_key(&from) {
                let plan = self.ports.rollout.plan(from, self.req.head)?;
                self.changed_since.insert(from, changes(&plan));
            }
            let changed = &self.changed_since[&from];
            pending.extend(clients.into_iter().filter(|c| changed.contains_key(c)));
        }
        pending.sort();
        Ok(pending)
    }

    /// The `rollback: freeze` apps (`client/app`) this stage would take off
    /// its hosts: their data may have been migrated, so their removal needs
    /// an approval like production's wherever it happens.
    fn freeze_removals(&mut self, stage: &Stage, pending: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for client in pending {
            let Some(from) = self.records.deployed(&stage.name, client)? else {
                continue;
            };
            let removed = self
                .changed_since
                .get(&Some(from))
                .and_then(|c| c.get(client))
                .cloned()
                .unwrap_or_default();
            if removed.is_empty() {
                continue;
            }
            if !self.fleets_at.contains_key(&from) {
                let fleet = self.ports.rollout.fleet(from)?;
                self.fleets_at.insert(from, fleet);
            }
            let was = &self.fleets_at[&from];
            out.extend(
                removed
                    .iter()
                    .filter(|a| {
                        was.apps.get(*a).is_some_and(|app| {
                            app.rollback == crate::config::RollbackPolicy::Freeze
                        })
                    })
                    .map(|a| format!("{client}/{a}")),
            );
        }
        Ok(out)
    }

    /// The approval that counts for this stage, polling up to
    /// `wait_approval` for one; the forge hears that the stage waits the
    /// first time none counts.
    fn approval(
        &self,
        stage: &Stage,
        approvers: &[String],
        plan_hash: &str,
        pending: &[String],
    ) -> Result<Option<Approval>> {
        let clock = self.ports.clock;
        let wait = chrono::Duration::from_std(self.req.wait_approval).unwrap_or_default();
        let deadline = clock.now() + wait;
        let mut told = false;
        loop {
            let record = self
                .records
                .read(self.req.head)?
                .unwrap_or_else(|| RunRecord::new(&self.req.head.to_string()));
            if let Some(a) = approval::counting(&record, plan_hash, approvers) {
                return Ok(Some(a.clone()));
            }
            if !told && self.req.shard.index == 1 {
                let stale = approval::stale(&record, plan_hash);
                if !stale.is_empty() {
                    tracing::warn!(
                        "approvals for an earlier plan do not count: {}",
                        stale.join(", ")
                    );
                }
                // Tell people as soon as the stage waits, not only when
                // `--wait-approval` gives up.
                let comment = self.tell_waiting(stage, approvers, plan_hash)?;
                self.notify(
                    Event::waiting_approval(
                        &stage.name,
                        &self.req.head.to_string(),
                        pending,
                        approvers,
                        plan_hash,
                    )
                    .with_comment_url(comment),
                );
            }
            let now = clock.now();
            if now >= deadline || clock.interrupted() {
                return Ok(None);
            }
            if !told {
                tracing::info!(
                    "stage {}: waiting up to {:?} for an approval by one of: {}",
                    stage.name,
                    self.req.wait_approval,
                    approvers.join(", ")
                );
                told = true;
            }
            self.lock.keep_alive()?;
            let left = (deadline - now).to_std().unwrap_or_default();
            clock.sleep(Duration::from_secs(2).min(left));
        }
    }

    /// A sharded stage after this shard deployed its hosts: its outcome
    /// reported into the record, the wait for the other shards (bounded by
    /// `shard_timeout`), and once the stage is decided, this shard's
    /// switched hosts rolled back if the stage failed (reported again), and
    /// the refs of the passed clients moved by the shard that decided.
    fn sharded(
        &self,
        stage: &Stage,
        own: StageOutcome,
        gone: &[String],
        previous: &BTreeMap<String, CommitId>,
    ) -> Result<Decided> {
        let (head, shard, clock) = (self.req.head, self.req.shard, self.ports.clock);
        let run_id = &self.req.run_id;
        let own_verdict = verdict::verdict(&own);
        self.lock.keep_alive()?;
        let (reported, mut record) =
            self.records
                .report_shard(head, shard, run_id, &own, own_verdict)?;
        let mut missing = String::new();
        let (verdict, by) = match reported {
            Reported::Decided(v) => (v, Some(shard.index)),
            Reported::AlreadyDecided(v) => (v, record.decided_by(&stage.name)),
            Reported::Waiting { missing: left } => {
                let list = |l: &[u32]| l.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
                tracing::info!(
                    "shard {shard}: stage {} {} on this shard's {} host(s); waiting up to {:?} for shard(s) {}",
                    stage.name,
                    ShardVerdict::from(own_verdict).describe(),
                    own.hosts.len(),
                    self.req.shard_timeout,
                    list(&left)
                );
                let deadline = clock.now()
                    + chrono::Duration::from_std(self.req.shard_timeout).unwrap_or_default();
                loop {
                    if clock.interrupted() {
                        // The stage cannot pass without this shard now: say
                        // so, so the others roll back instead of timing out.
                        let (reported, r) = self.records.report_shard(
                            head,
                            shard,
                            run_id,
                            &own,
                            StageVerdict::Interrupted,
                        )?;
                        record = r;
                        match reported {
                            Reported::Decided(v) => break (v, Some(shard.index)),
                            Reported::AlreadyDecided(v) => {
                                break (v, record.decided_by(&stage.name));
                            }
                            Reported::Waiting { .. } => break (ShardVerdict::Interrupted, None),
                        }
                    }
                    clock.sleep(Duration::from_secs(2));
                    self.lock.keep_alive()?;
                    record = self
                        .records
                        .read(head)?
                        .unwrap_or_else(|| RunRecord::new(&head.to_string()));
                    if let Some(set) = record.shards.get(&stage.name)
                        && &set.run_id == run_id
                        && let Some(v) = set.decided
                    {
                        break (v, set.decided_by);
                    }
                    if clock.now() >= deadline {
                        let left = record
                            .shards
                            .get(&stage.name)
                            .map(|s| s.missing())
                            .unwrap_or_default();
                        missing = list(&left);
                        let got = std::cell::Cell::new(None);
                        record = self.records.update(head, &[], |r| {
                            got.set(r.time_out_shards(&stage.name, shard, run_id));
                        })?;
                        match got.take() {
                            Some(Reported::AlreadyDecided(v)) => {
                                break (v, record.decided_by(&stage.name));
                            }
                            _ => break (ShardVerdict::TimedOut, Some(shard.index)),
                        }
                    }
                }
            }
        };
        tracing::info!(
            "shard {shard}: stage {} {} (decided by shard {})",
            stage.name,
            verdict.describe(),
            by.map_or_else(|| "?".to_string(), |i| i.to_string())
        );
        if verdict.rolls_back() {
            let switched = own
                .hosts
                .iter()
                .any(|h| h.status == crate::core::outcome::HostStatus::Deployed);
            if switched && clock.interrupted() {
                // A stopping run starts no host (`deploy::run_stage`).
                tracing::error!(
                    "shard {shard}: interrupted: this shard's hosts of stage {} stay on {} (not recorded as deployed: the next run deploys them again or finds them up to date)",
                    stage.name,
                    head.short()
                );
            } else if switched {
                let back = self.roll_back_shard(stage, own, previous)?;
                self.lock.keep_alive()?;
                record = self
                    .records
                    .report_shard(head, shard, run_id, &back, verdict::verdict(&back))?
                    .1;
            }
        } else if by == Some(shard.index) {
            self.lock.keep_alive()?;
            let (moved, recorded) = self.records.move_passed(head, &stage.name, gone)?;
            record = recorded;
            for r in &moved {
                tracing::info!("{r} → {}", head.short());
            }
        }
        let merged = record
            .stages
            .get(&stage.name)
            .cloned()
            .expect("a reported stage is in the record");
        Ok(Decided {
            merged,
            verdict,
            by,
            missing,
            record,
        })
    }

    /// This shard's hosts that passed, put back on what each client ran
    /// before (its deployed ref), because another shard failed the stage:
    /// `fleetgate rollback`'s way, a deploy of the earlier commit. A client
    /// deployed for the first time has nothing earlier: its hosts stay on
    /// head, said as an error (their status stays `deployed`).
    fn roll_back_shard(
        &self,
        stage: &Stage,
        mut own: StageOutcome,
        previous: &BTreeMap<String, CommitId>,
    ) -> Result<StageOutcome> {
        use crate::core::outcome::HostStatus;
        let head = self.req.head;
        let mut by_rev: BTreeMap<CommitId, Vec<String>> = BTreeMap::new();
        for h in own
            .hosts
            .iter()
            .filter(|h| h.status == HostStatus::Deployed)
        {
            match previous.get(&h.client) {
                Some(prev) => by_rev.entry(*prev).or_default().push(h.client.clone()),
                None => tracing::error!(
                    "{}: stage {} failed on another shard, and {} has no earlier release in it to go back to: left on {}",
                    h.host,
                    stage.name,
                    h.client,
                    head.short()
                ),
            }
        }
        for (prev, mut clients) in by_rev {
            clients.sort();
            clients.dedup();
            tracing::warn!(
                "shard {}: stage {} failed on another shard: rolling {} back to {}",
                self.req.shard,
                stage.name,
                clients.join(", "),
                prev.short()
            );
            // What head gave them and `prev` does not is taken down.
            let was: BTreeMap<String, CommitId> =
                clients.iter().map(|c| (c.clone(), head)).collect();
            self.lock.keep_alive()?;
            let back =
                self.ports
                    .rollout
                    .deploy(prev, &stage.name, &clients, &was, self.req.shard)?;
            for h in own
                .hosts
                .iter_mut()
                .filter(|h| h.status == HostStatus::Deployed && clients.contains(&h.client))
            {
                let Some(b) = back
                    .hosts
                    .iter()
                    .find(|b| b.client == h.client && b.host == h.host)
                else {
                    continue;
                };
                match b.status {
                    HostStatus::Deployed | HostStatus::Unchanged => {
                        h.status = HostStatus::RolledBack;
                        h.runs = b.runs.clone();
                        h.rollback_checks = b.checks.clone();
                    }
                    _ => {
                        h.rollback_failure = b.failure.clone();
                        h.runs = b.runs.clone();
                    }
                }
            }
        }
        own.rolled_back = own.hosts.iter().any(|h| h.status == HostStatus::RolledBack);
        Ok(own)
    }

    /// The `fleetgate/<stage>` status and the comment on the merged pull
    /// request when a stage waits for an approval; the comment's page.
    fn tell_waiting(
        &self,
        stage: &Stage,
        approvers: &[String],
        plan_hash: &str,
    ) -> Result<Option<String>> {
        let Some(r) = self.ports.reporter else {
            return Ok(None);
        };
        self.tell(
            &stage.name,
            State::Pending,
            &format!("waits for an approval by {}", approvers.join(", ")),
        )?;
        let head = self.req.head.to_string();
        let body = notify::waiting_comment(
            r.env.kind,
            &head,
            &self.outcomes,
            &stage.name,
            approvers,
            plan_hash,
            &r.log_link(),
        );
        Ok(r.try_comment_on_merged(&notify::waiting_marker(&head), &body))
    }

    /// The failure comment on the merged pull request; its page.
    fn tell_failure(
        &self,
        gate: Option<&FailedGate>,
        revert: Option<&RevertOutcome>,
    ) -> Option<String> {
        let (Some(r), Some(outcome)) = (self.ports.reporter, self.outcomes.last()) else {
            return None;
        };
        let sha = self.req.head.to_string();
        let body = notify::failure_comment(&sha, outcome, gate, revert, &r.log_link());
        r.try_comment_on_merged(&notify::failed_marker(&sha), &body)
    }

    /// Reverts base..head on the branch and records what happened. A run
    /// from nothing has no range that is the change's alone: nothing to
    /// revert (the hosts are rolled back all the same).
    fn revert(&self, gate: &FailedGate) -> Result<(RunRecord, RevertOutcome)> {
        let (head, branch) = (self.req.head, &self.req.branch);
        let outcome = match self.req.base {
            Some(base) => {
                self.lock.keep_alive()?;
                self.ports.git.revert(branch, base, head, gate)?
            }
            None => RevertOutcome::NothingToRevert {
                tip: head.to_string(),
                failed_gate: gate.trailer(),
                why: format!(
                    "the run of {} has no base (a first push): no range of commits is the change's alone",
                    head.short()
                ),
            },
        };
        let base = self
            .req
            .base
            .map_or_else(|| "nothing".to_string(), |b| b.to_string());
        match &outcome {
            RevertOutcome::Pushed { commit, onto, .. } => tracing::info!(
                "reverted {}..{} on {branch} with {} (onto {}); the hosts already run the previous release",
                short(&base),
                head.short(),
                short(commit),
                short(onto)
            ),
            RevertOutcome::Conflict { tip, paths, .. } => tracing::error!(
                "could not revert {}..{} on {branch} (now {}): {} conflict with later commits\n  hint: the hosts stay rolled back; revert by hand: git revert {base}..{head}",
                short(&base),
                head.short(),
                short(tip),
                paths.join(", "),
            ),
            RevertOutcome::NothingToRevert { why, .. } => tracing::warn!(
                "nothing to revert on {branch}: {why}; the hosts already run the previous release"
            ),
            RevertOutcome::NotOnBranch { tip, .. } => tracing::error!(
                "{} is no longer on {branch} (now {}): nothing reverted\n  hint: the hosts stay rolled back; check the branch's history",
                head.short(),
                short(tip)
            ),
        }
        self.lock.keep_alive()?;
        let record = self.records.update(head, &[], |r| {
            r.revert = Some(outcome.clone());
        })?;
        Ok((record, outcome))
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
