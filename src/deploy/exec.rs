//! The executor: carries out a [`StagePlan`] over a [`Connector`] — hosts in
//! waves, each host's changes in one round trip of steps, its health gates,
//! and the rollback of every host that needs it — recording every step as it
//! happens. All of the stage's I/O goes through the connector's [`Remote`]s,
//! which is what lets the same code run on local and real sshd hosts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::checks::{Gated, run_checks};
use super::{
    AppJob, Backup, CheckSpec, Failure, FailureKind, HostOutcome, HostStatus, Runs, SlotJob,
    StageOutcome, StagePlan, StepRecord, Target,
};
use crate::config::{Host, RollbackPolicy};
use crate::gates::http::Prober;
use crate::remote::proxy;
use crate::remote::release::{self, AppDir, Inspected, ReleaseFile, Slot, SlotState, State};
use crate::remote::{Remote, RemoteError, RemoteOutput};
use crate::secrets::Masker;

use super::snapshot::Snapshotter;

/// Opens and closes connections to hosts.
pub trait Connector: Sync {
    type Host: Remote;
    fn connect(&self, host: &Host) -> impl Future<Output = Result<Self::Host, RemoteError>> + Send;
    fn close(&self, host: Self::Host) -> impl Future<Output = ()> + Send;

    /// The waits before each try to reconnect to a host that dropped, to
    /// roll it back: one that just dropped may be back in a moment (a
    /// restarted sshd, a network blip), so three tries, ~3 s in all.
    fn reconnect_waits(&self) -> [Duration; 3] {
        [
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(2),
        ]
    }
}

/// What a host had before the switch, per app: enough to switch back.
#[derive(Debug, Clone)]
struct Switched {
    app: String,
    before: Option<State>,
    /// A blue_green app: its slots.
    slots: Option<SlotSwitch>,
}

/// The slots of a blue_green app's switch: switching back is the same
/// switch in reverse.
#[derive(Debug, Clone, Copy)]
struct SlotSwitch {
    /// What ran before (see `NewSlot::old`).
    old: Option<Option<SlotState>>,
    new: SlotState,
    /// The old one was stopped after its drain: a switch back starts it again.
    old_stopped: bool,
    drain: Duration,
}

/// An app left on its live release, which this stage's commit renders the
/// same: its state before the stage, and once recorded, after it.
#[derive(Debug, Clone)]
struct Kept {
    app: String,
    before: State,
    after: State,
}

struct HostRun {
    outcome: HostOutcome,
    switched: Vec<Switched>,
    kept: Vec<Kept>,
    /// The host's proxy was given a new config (a rollback puts back the one before).
    proxy_applied: bool,
}

/// Every app of `target` as this stage leaves it when it touches nothing.
fn untouched(target: &Target) -> BTreeMap<String, Runs> {
    target
        .apps
        .iter()
        .map(|a| (a.name.clone(), Runs::AsBefore))
        .collect()
}

pub(super) fn secs(since: Instant) -> f64 {
    hundredths(since.elapsed().as_secs_f64())
}

/// Seconds as every step time shows them.
fn hundredths(seconds: f64) -> f64 {
    (seconds * 100.0).round() / 100.0
}

/// Logs one line per host per step, as it happens.
fn log_step(host: &str, app: Option<&str>, step: &str, ok: bool, seconds: f64) {
    let mark = if ok { "✓" } else { "✗" };
    match app {
        Some(app) => tracing::info!("{host} {app} {step} {mark} {seconds:.2}s"),
        None => tracing::info!("{host} {step} {mark} {seconds:.2}s"),
    }
}

struct Recorder<'a> {
    host: &'a str,
    steps: Vec<StepRecord>,
}

impl Recorder<'_> {
    fn record(&mut self, app: Option<&str>, step: &str, ok: bool, started: Instant) {
        self.record_secs(app, step, ok, secs(started));
    }

    fn record_secs(&mut self, app: Option<&str>, step: &str, ok: bool, seconds: f64) {
        log_step(self.host, app, step, ok, seconds);
        self.steps.push(StepRecord {
            app: app.map(str::to_string),
            step: step.to_string(),
            ok,
            seconds,
        });
    }
}

/// Runs `script`; a non-zero exit is a `Command` failure with the stderr tail.
async fn run_step<R: Remote>(
    remote: &R,
    rec: &mut Recorder<'_>,
    masker: &Masker,
    app: Option<&str>,
    step: &str,
    script: &str,
) -> Result<RemoteOutput, Failure> {
    let started = Instant::now();
    let result = remote.run(script).await;
    let ok = matches!(&result, Ok(out) if out.success());
    rec.record(app, step, ok, started);
    match result {
        Ok(out) if out.success() => {
            let text = format!("{}{}", out.stdout, out.stderr);
            // What the app's own commands print goes to the run log; the
            // inspect listing is fleetgate's and would only be noise.
            if step != "inspect" && !text.trim().is_empty() {
                tracing::debug!("{} {}: {}", rec.host, step, masker.mask(text.trim_end()));
            }
            Ok(out)
        }
        Ok(out) => Err(Failure::from_run(app, step, Ok(&out), masker, "\0")),
        Err(e) => Err(Failure::from_run(app, step, Err(&e), masker, "\0")),
    }
}

impl Failure {
    /// A remote command that exited non-zero (`Command`, with the masked
    /// stderr tail without lines containing `marker`), or could not run at
    /// all (`Infra`).
    fn from_run(
        app: Option<&str>,
        step: &str,
        result: Result<&RemoteOutput, &RemoteError>,
        masker: &Masker,
        marker: &str,
    ) -> Failure {
        let (kind, message) = match result {
            Ok(out) => (
                FailureKind::Command,
                format!(
                    "exit {}: {}",
                    out.status
                        .map_or("by signal".to_string(), |c| c.to_string()),
                    masker.mask(&out.tail_without(marker))
                ),
            ),
            Err(e) => (FailureKind::Infra, masker.mask(&e.to_string())),
        };
        Failure {
            kind,
            app: app.map(str::to_string),
            step: step.to_string(),
            message,
        }
    }
}

/// One step of a host's work, run as part of one remote command.
struct Step {
    /// The app it is for; `None`: the host's (its proxy).
    app: Option<String>,
    step: &'static str,
    script: String,
}

impl Step {
    fn new(app: &str, step: &'static str, script: String) -> Step {
        Step {
            app: Some(app.to_string()),
            step,
            script,
        }
    }

    fn host(step: &'static str, script: String) -> Step {
        Step {
            app: None,
            step,
            script,
        }
    }

    fn app(&self) -> String {
        self.app.clone().unwrap_or_default()
    }
}

/// Runs `steps` in one remote command, logging each step as its end marker
/// arrives. Returns the indices of the steps that completed, and the failure
/// that stopped the rest, if any.
async fn run_steps<R: Remote>(
    remote: &R,
    rec: &mut Recorder<'_>,
    masker: &Masker,
    steps: &[Step],
) -> (Vec<usize>, Option<Failure>) {
    if steps.is_empty() {
        return (Vec::new(), None);
    }
    // Markers carry a per-run nonce so an app's output cannot fake them.
    let nonce = format!("fg{:x}{:x}", std::process::id(), now_nanos());
    let scripts: Vec<&str> = steps.iter().map(|s| s.script.as_str()).collect();
    let script = release::steps_script(&nonce, &scripts);
    let mut done = Vec::new();
    // The step under way: its index, when its begin marker arrived, and
    // the host's clock then.
    let mut current: Option<(usize, Instant, Option<f64>)> = None;
    let mut failed_at = None;
    let host = rec.host;
    let result = {
        let (done, current, failed_at) = (&mut done, &mut current, &mut failed_at);
        let rec = &mut *rec;
        // Measured on the host when both markers carry its clock; else
        // from when they arrived.
        let mut end = |current: &mut Option<(usize, Instant, Option<f64>)>,
                       i: usize,
                       ok: bool,
                       at: Option<f64>| {
            let seconds = match current.take() {
                // (A difference of two `/proc/uptime` readings is not
                // hundredths, in binary.)
                Some((_, _, Some(begin))) if at.is_some_and(|end| end >= begin) => {
                    hundredths(at.unwrap_or(begin) - begin)
                }
                Some((_, started, _)) => secs(started),
                None => 0.0,
            };
            rec.record_secs(steps[i].app.as_deref(), steps[i].step, ok, seconds);
        };
        remote
            .run_lines(
                &script,
                &mut |line| match release::parse_step_marker(&nonce, line) {
                    Some((release::StepEvent::Begin(i), at)) => {
                        *current = Some((i, Instant::now(), at));
                    }
                    Some((release::StepEvent::Done(i), at)) => {
                        end(current, i, true, at);
                        done.push(i);
                    }
                    Some((release::StepEvent::Fail(i), at)) => {
                        end(current, i, false, at);
                        *failed_at = Some(i);
                    }
                    None => tracing::debug!("{host}: {}", masker.mask(line)),
                },
            )
            .await
    };
    // A step that began but neither finished nor failed was cut off.
    let interrupted = current.map(|(i, started, _)| {
        rec.record(steps[i].app.as_deref(), steps[i].step, false, started);
        i
    });
    let at = failed_at
        .or(interrupted)
        .unwrap_or(done.len().min(steps.len() - 1));
    let failure = match result {
        Ok(out) if out.success() && done.len() == steps.len() => {
            if !out.stderr.trim().is_empty() {
                tracing::debug!("{host}: {}", masker.mask(out.stderr.trim_end()));
            }
            None
        }
        Ok(out) => Some(Failure::from_run(
            steps[at].app.as_deref(),
            steps[at].step,
            Ok(&out),
            masker,
            &nonce,
        )),
        Err(e) => Some(Failure::from_run(
            steps[at].app.as_deref(),
            steps[at].step,
            Err(&e),
            masker,
            &nonce,
        )),
    };
    (done, failure)
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An app's `commands.backup` in its live release: the backup it names
/// (`FLEETGATE_BACKUP_ID=<id>`), or the failure — a non-zero exit, or no
/// valid id — that stops the host before its first change.
async fn run_backup<R: Remote>(
    remote: &R,
    rec: &mut Recorder<'_>,
    masker: &Masker,
    app: &AppJob,
    command: &str,
) -> Result<Backup, Failure> {
    let started = Instant::now();
    let result = remote.run(&release::backup_script(&app.dir, command)).await;
    let id = match &result {
        Ok(out) if out.success() => Some(release::parse_backup_id(&out.stdout)),
        _ => None,
    };
    rec.record(
        Some(&app.name),
        "backup",
        matches!(id, Some(Ok(_))),
        started,
    );
    match (result, id) {
        (Ok(_), Some(Ok(id))) => Ok(Backup {
            id,
            seconds: secs(started),
            restore: None,
        }),
        (Ok(out), Some(Err(why))) => {
            let text = format!("{}{}", out.stdout, out.stderr);
            tracing::debug!("{} backup: {}", rec.host, masker.mask(text.trim_end()));
            Err(Failure {
                kind: FailureKind::Command,
                app: Some(app.name.clone()),
                step: "backup".into(),
                message: masker.mask(&why),
            })
        }
        (Ok(out), _) => Err(Failure::from_run(
            Some(&app.name),
            "backup",
            Ok(&out),
            masker,
            "\0",
        )),
        (Err(e), _) => Err(Failure::from_run(
            Some(&app.name),
            "backup",
            Err(&e),
            masker,
            "\0",
        )),
    }
}

/// Deploys every app of `target` to its host, then runs its health gates.
/// A host's snapshot: asked for, waited for on the deploy's runtime (the
/// other hosts of the wave go on meanwhile), then the retention.
async fn take_snapshot(
    snapshots: &dyn Snapshotter,
    job: &super::snapshot::SnapshotJob,
) -> Result<super::snapshot::Taken, String> {
    let started = snapshots.start(job)?;
    let (every, timeout) = snapshots.pacing();
    let mut waited = Duration::ZERO;
    while !snapshots.done(job, started)? {
        if waited >= timeout {
            return Err(format!(
                "Hetzner Cloud: the snapshot of `{}` (image {}) did not finish within {} s (action {} still running); Hetzner may still finish it: look at the server's actions in the Cloud Console before running again",
                job.server,
                started.image,
                timeout.as_secs(),
                started.action
            ));
        }
        tokio::time::sleep(every).await;
        waited += every;
    }
    let deleted = snapshots.keep(job, started.image);
    Ok(super::snapshot::Taken {
        image: started.image,
        deleted,
    })
}

async fn deploy_host<R: Remote, P: Prober>(
    plan: &StagePlan,
    target: &Target,
    remote: &R,
    prober: &P,
    snapshots: &dyn Snapshotter,
    soak: Duration,
    stop: &AtomicBool,
) -> HostRun {
    let started = Instant::now();
    let mut rec = Recorder {
        host: &target.host.name,
        steps: Vec::new(),
    };
    let mut switched: Vec<Switched> = Vec::new();
    let mut checks = Vec::new();
    let mut changed = Vec::new();
    let mut runs = untouched(target);
    let mut kept: Vec<Kept> = Vec::new();
    let mut removed = 0;
    let mut snapshot = None;
    let mut backups = BTreeMap::new();
    let mut proxy_applied = false;
    let mut logs = BTreeMap::new();
    let proxy = target.proxy();
    let result: Result<bool, Failure> = async {
        // A plain app's live files are hashed only when its state records
        // the files it deploys; a blue_green one's live slot is not known
        // yet, and a quadlet one's live files are its units.
        let apps: Vec<(&AppDir, Option<&[ReleaseFile]>)> = target
            .apps
            .iter()
            .map(|a| {
                let plain =
                    a.blue_green.is_none() && !matches!(a.start, release::Start::Quadlet(_));
                (&a.dir, plain.then_some(a.files.as_slice()))
            })
            .collect();
        let mut inspect = format!(
            "{}{}",
            release::inspect_for_deploy_script(&apps),
            release::prune_removed_script(
                &format!("{}/{}", target.host.deploy_root, target.client),
                plan.keep_removed
            )
        );
        if let Some(p) = proxy {
            inspect.push_str(&proxy::inspect_script(&p.settings, &p.dir));
        }
        let out = run_step(remote, &mut rec, &target.masker, None, "inspect", &inspect).await?;
        // The proxy's line is the host's, not an app's.
        let (proxy_lines, app_lines): (Vec<&str>, Vec<&str>) =
            out.stdout.lines().partition(|l| l.starts_with("@@proxy "));
        let proxy_now = proxy_lines.first().and_then(|l| proxy::parse_inspect(l));
        let inspected =
            release::parse_inspect(&app_lines.join("\n")).map_err(|message| Failure {
                kind: FailureKind::Command,
                app: None,
                step: "inspect".into(),
                message,
            })?;
        // Every change of every app in one round trip: upload, switch,
        // start and prune per app (a blue_green app: upload and start in
        // its new slot), streaming a progress line per step.
        let mut steps: Vec<Step> = Vec::new();
        let mut before = BTreeMap::new();
        let mut slots: Vec<NewSlot> = Vec::new();
        // What the proxy routes to once this host is deployed.
        let mut routes: Vec<proxy::Route> = Vec::new();
        // Removals first: a removed app may hold a port a new one needs.
        for r in &target.removals {
            steps.push(Step::new(
                &r.app,
                "remove",
                release::teardown_script(&r.dir, &r.start, r.stop.as_deref()),
            ));
        }
        for app in &target.apps {
            let now = inspected.get(&app.name).cloned().unwrap_or_default();
            let live_slot = now.state.as_ref().and_then(|s| s.slot);
            // The files this app runs when it needs no change.
            let (files, app_routes) = match &app.blue_green {
                Some(bg) => {
                    let live = &bg.slots[live_slot.map_or(0, |s| s.name.index())];
                    (&live.files, &live.routes)
                }
                None => (&app.files, &app.routes),
            };
            if let Some(state) = live_release(&now, files) {
                rec.record(Some(&app.name), "unchanged", true, Instant::now());
                runs.insert(app.name.clone(), Runs::Release(plan.rev.clone()));
                routes.extend(app_routes.iter().cloned());
                // Recorded in its state once the host passed.
                if state.runs() != plan.rev {
                    let mut after = state.clone();
                    after.revs = state.ran_then(&plan.rev);
                    kept.push(Kept {
                        app: app.name.clone(),
                        before: state.clone(),
                        after,
                    });
                }
                continue;
            }
            let back_to = before_rev(now.state.as_ref(), &plan.rev);
            let replacing = now.state.as_ref().map(|s| s.rev.clone());
            let keep: Vec<&str> = [Some(plan.rev.as_str()), replacing.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            let name = app.name.as_str();
            let Some(bg) = &app.blue_green else {
                let state = next_state(back_to.as_ref(), &plan.rev, &app.files);
                routes.extend(app.routes.iter().cloned());
                steps.push(Step::new(
                    name,
                    "upload",
                    release::upload_staged_script(&app.dir, &plan.rev, &app.files),
                ));
                steps.push(Step::new(
                    name,
                    "switch",
                    release::switch_staged_script(&app.dir, &plan.rev, &state),
                ));
                steps.push(Step::new(
                    name,
                    "start",
                    release::start_script(&app.dir, &plan.rev, &app.start, replacing.as_deref()),
                ));
                steps.push(Step::new(
                    name,
                    "prune",
                    release::prune_script(&app.dir, &keep),
                ));
                before.insert(name, back_to);
                changed.push(app);
                continue;
            };
            // Blue/green: the new release starts in the slot the live one
            // does not use. What runs now — a slot, or the app's own
            // project before its first blue/green deploy — stops after
            // the switch and the drain. The same commit again (a repair)
            // is started over in its own slot: its release directory is
            // the live one.
            let running = now.state.is_some() && now.current.is_some();
            let same = running && now.current.as_deref() == Some(plan.rev.as_str());
            let new_name = match (live_slot, same) {
                (Some(s), true) => s.name,
                (Some(s), false) => s.name.other(),
                (None, _) => Slot::Blue,
            };
            let job = &bg.slots[new_name.index()];
            let new = SlotState {
                name: new_name,
                port: job.port,
            };
            let old = (running && !same).then_some(live_slot);
            // A repair goes back, if it must, to the release before, in
            // the other slot (stopped after its drain).
            let back = live_slot.filter(|_| same && back_to.is_some()).map(|s| {
                let name = s.name.other();
                SlotState {
                    name,
                    port: bg.slots[name.index()].port,
                }
            });
            let mut state = next_state(back_to.as_ref(), &plan.rev, &job.files);
            state.slot = Some(new);
            routes.extend(job.routes.iter().cloned());
            steps.push(Step::new(
                name,
                "upload",
                release::upload_script(&app.dir, &plan.rev, &job.files),
            ));
            steps.push(Step::new(
                name,
                "start slot",
                release::start_slot_script(&app.dir, &plan.rev, &app.start, new_name, job.port),
            ));
            slots.push(NewSlot {
                app,
                job,
                new,
                old,
                repair: same,
                back,
                replacing,
                state,
                back_to,
                drain: bg.drain,
            });
        }
        // Quadlet apps' new unit files, validated by the host's Quadlet
        // before anything on the host changes: a rejection stops the host
        // with nothing restarted.
        let quadlet_checks: Vec<Step> = changed
            .iter()
            .filter_map(|app| match &app.start {
                release::Start::Quadlet(units) => Some(Step::new(
                    &app.name,
                    "quadlet check",
                    units.check_script(&app.name, &app.files),
                )),
                _ => None,
            })
            .collect();
        steps.splice(0..0, quadlet_checks);
        // The host's proxy config, decided before anything changes, and
        // validated on the host first: an invalid one stops the host
        // before any app is touched.
        routes.sort();
        let proxy_change = proxy.and_then(|p| {
            let config = proxy::render(&p.settings, &p.dir, &routes);
            let sha = ReleaseFile::new(String::new(), config.clone().into_bytes(), false).sha256;
            (proxy_now != Some((Some(sha), true))).then_some((p, config))
        });
        if let Some((p, config)) = &proxy_change {
            steps.insert(
                0,
                Step::host(
                    "proxy check",
                    proxy::check_script(&p.settings, &p.dir, config),
                ),
            );
            // Without a blue/green app the switch is now; with one, after its gate.
            if slots.is_empty() {
                steps.push(Step::host(
                    "proxy",
                    proxy::apply_script(&p.settings, &p.dir),
                ));
            }
        }
        // The first change of each app that wants a backup: its backup,
        // before the snapshot and before anything on the host changes. A
        // backup that fails, or names no backup, leaves the host untouched.
        for app in changed
            .iter()
            .copied()
            .chain(slots.iter().map(|n| n.app))
            .filter(|a| a.backup.is_some())
        {
            if inspected
                .get(&app.name)
                .and_then(|i| i.current.as_ref())
                .is_none()
            {
                tracing::info!(
                    "{} {}: no live release yet, nothing to back up",
                    target.host.name,
                    app.name
                );
                continue;
            }
            let command = app.backup.as_deref().unwrap_or_default();
            let backup = run_backup(remote, &mut rec, &target.masker, app, command).await?;
            tracing::info!(
                "{} {}: backup {} taken",
                target.host.name,
                app.name,
                backup.id
            );
            backups.insert(app.name.clone(), backup);
        }
        // The first change of this host: its snapshot first, if it needs
        // one; a snapshot that fails leaves the host untouched.
        if let Some(job) = target.snapshot.as_ref().filter(|_| !steps.is_empty()) {
            for (app, command) in &job.pre {
                let Some(dir) = target.apps.iter().find(|a| &a.name == app).map(|a| &a.dir) else {
                    continue;
                };
                run_step(
                    remote,
                    &mut rec,
                    &target.masker,
                    Some(app),
                    "pre_snapshot",
                    &release::pre_snapshot_script(dir, command),
                )
                .await?;
            }
            let started = Instant::now();
            match take_snapshot(snapshots, job).await {
                Ok(taken) => {
                    rec.record(None, "snapshot", true, started);
                    tracing::info!(
                        "{}: snapshot {} taken{}",
                        target.host.name,
                        taken.image,
                        if taken.deleted.is_empty() {
                            String::new()
                        } else {
                            format!(", older ones deleted: {:?}", taken.deleted)
                        }
                    );
                    snapshot = Some(taken.image);
                }
                Err(why) => {
                    rec.record(None, "snapshot", false, started);
                    return Err(Failure {
                        kind: FailureKind::Infra,
                        app: None,
                        step: "snapshot".into(),
                        message: target.masker.mask(&why),
                    });
                }
            }
        }
        // Nothing to check (no health check, no new slot): the release is
        // live once it started, so `gated` rides in the same round trip,
        // run only if every step before it passed.
        let gate_now = slots.is_empty()
            && !changed.is_empty()
            && Gated::all(&changed).iter().all(|g| g.checks.is_empty());
        if gate_now {
            let gated: Vec<(&AppDir, &str)> = changed
                .iter()
                .map(|a| (&a.dir, plan.rev.as_str()))
                .collect();
            let record = record_script(target, kept.iter().map(|k| (k.app.as_str(), &k.after)));
            steps.push(Step::host("gated", release::gated_script(&gated) + &record));
        }
        let (done, failure) = run_steps(remote, &mut rec, &target.masker, &steps).await;
        for step in done
            .iter()
            .map(|&i| &steps[i])
            .filter(|s| s.step == "remove")
        {
            runs.insert(step.app(), Runs::Nothing);
            removed += 1;
        }
        proxy_applied |= proxy_began(&steps, &done, failure.as_ref());
        // A switch cut off by a lost connection may have happened on the
        // host all the same: it counts as switched, so it is put back (a
        // switch back to the state it has is harmless).
        let cut_off = failure
            .as_ref()
            .filter(|f| f.kind == FailureKind::Infra && f.step == "switch")
            .and_then(|f| f.app.clone());
        for app in done
            .iter()
            .map(|&i| &steps[i])
            .filter(|s| s.step == "switch")
            .map(Step::app)
            .chain(cut_off)
        {
            runs.insert(
                app.clone(),
                match failure.as_ref().map(|f| f.kind) {
                    // Lost mid-change: no telling what it runs.
                    Some(FailureKind::Infra) => Runs::Unknown,
                    _ => Runs::Release(plan.rev.clone()),
                },
            );
            switched.push(Switched {
                before: before.get(app.as_str()).cloned().flatten(),
                app,
                slots: None,
            });
        }
        if let Some(f) = failure {
            // An app whose start failed: its logs, before its slot stops
            // (or the rollback restarts the release before it).
            if f.kind == FailureKind::Command && (f.step == "start" || f.step == "start slot") {
                let failed: Vec<(&AppJob, Option<SlotState>)> = target
                    .apps
                    .iter()
                    .filter(|a| f.app.as_deref() == Some(a.name.as_str()))
                    .map(|a| (a, new_slot_of(&slots, &a.name)))
                    .collect();
                logs = fetch_logs(remote, &mut rec, target, &plan.rev, &failed).await;
            }
            // New slots that started (or began to) stop again; the live
            // ones never stopped serving. A slot whose start never began
            // is left alone: it may be the live one (the same commit
            // started again in its own slot).
            let begun: Vec<&str> = steps
                .iter()
                .enumerate()
                .filter(|(i, s)| {
                    s.step == "start slot"
                        && (done.contains(i) || (f.step == s.step && f.app == s.app))
                })
                .filter_map(|(_, s)| s.app.as_deref())
                .collect();
            slots.retain(|n| begun.contains(&n.app.name.as_str()));
            stop_new_slots(remote, &mut rec, target, &plan.rev, &slots).await;
            return Err(f);
        }
        if gate_now {
            return Ok(true);
        }
        if !slots.is_empty() {
            // Each new slot's gate, on the slot directly, before any user
            // reaches it: the app's checks (those not through the proxy)
            // and its routes' health paths.
            let gates: Vec<Gated> = slots
                .iter()
                .map(|n| Gated {
                    name: &n.app.name,
                    dir: &n.app.dir,
                    checks: slot_gate(&target.host.address, n.job),
                    release: Some(&plan.rev),
                })
                .collect();
            let gate_started = Instant::now();
            let results =
                run_checks(remote, prober, target, &gates, Duration::ZERO, Some(stop)).await;
            let failed = results.iter().find(|r| !r.passed && !r.cancelled).cloned();
            rec.record(None, "slot health", failed.is_none(), gate_started);
            checks.extend(results);
            if let Some(f) = failed {
                let failed = failed_apps(target, &checks, &slots);
                logs = fetch_logs(remote, &mut rec, target, &plan.rev, &failed).await;
                stop_new_slots(remote, &mut rec, target, &plan.rev, &slots).await;
                return Err(Failure {
                    kind: FailureKind::Health,
                    app: Some(f.app.clone()),
                    step: "health".into(),
                    message: format!("{}: {}", f.check, f.detail),
                });
            }
            if stop.load(Ordering::SeqCst) {
                stop_new_slots(remote, &mut rec, target, &plan.rev, &slots).await;
                return Err(Failure {
                    kind: FailureKind::Health,
                    app: None,
                    step: "health".into(),
                    message: "cancelled: the stage failed on other hosts".into(),
                });
            }
            // The switch: `current` and the proxy, in one round trip.
            let mut steps = Vec::new();
            for n in &slots {
                steps.push(Step::new(
                    &n.app.name,
                    "switch",
                    release::switch_slot_script(&n.app.dir, &plan.rev, &n.state, n.new),
                ));
            }
            if let Some((p, _)) = &proxy_change {
                steps.push(Step::host(
                    "proxy",
                    proxy::apply_script(&p.settings, &p.dir),
                ));
            }
            for n in &slots {
                let keep: Vec<&str> = [Some(plan.rev.as_str()), n.replacing.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                steps.push(Step::new(
                    &n.app.name,
                    "prune",
                    release::prune_script(&n.app.dir, &keep),
                ));
            }
            let (done, failure) = run_steps(remote, &mut rec, &target.masker, &steps).await;
            proxy_applied |= proxy_began(&steps, &done, failure.as_ref());
            let cut_off = failure
                .as_ref()
                .filter(|f| f.kind == FailureKind::Infra && f.step == "switch")
                .and_then(|f| f.app.clone());
            let switched_apps: Vec<String> = done
                .iter()
                .map(|&i| &steps[i])
                .filter(|s| s.step == "switch")
                .map(Step::app)
                .chain(cut_off)
                .collect();
            for n in &slots {
                if !switched_apps.contains(&n.app.name) {
                    continue;
                }
                runs.insert(
                    n.app.name.clone(),
                    match failure.as_ref().map(|f| f.kind) {
                        Some(FailureKind::Infra) => Runs::Unknown,
                        _ => Runs::Release(plan.rev.clone()),
                    },
                );
                switched.push(Switched {
                    app: n.app.name.clone(),
                    before: n.back_to.clone(),
                    slots: Some(SlotSwitch {
                        old: n.old.or(n.back.map(Some)),
                        new: n.new,
                        old_stopped: n.old.is_none() && n.back.is_some(),
                        drain: n.drain,
                    }),
                });
            }
            if let Some(f) = failure {
                return Err(f);
            }
        }
        let switched_at = Instant::now();
        let record = record_script(target, kept.iter().map(|k| (k.app.as_str(), &k.after)));
        if changed.is_empty() && slots.is_empty() {
            if !record.is_empty() {
                run_step(remote, &mut rec, &target.masker, None, "record", &record).await?;
            }
            return Ok(removed > 0 || proxy_applied);
        }
        // The checks after the switch, through the proxy as users see it:
        // every changed app's, and each new slot's (now live).
        let mut gates = Gated::all(&changed);
        gates.extend(slots.iter().map(|n| Gated {
            name: &n.app.name,
            dir: &n.app.dir,
            checks: n.job.checks.clone(),
            release: None,
        }));
        let health_started = Instant::now();
        let results = run_checks(remote, prober, target, &gates, soak, Some(stop)).await;
        // A check cut short because the stage failed elsewhere is not this
        // host's failure (the stage rolls it back all the same).
        let failed = results.iter().find(|r| !r.passed && !r.cancelled).cloned();
        if !results.is_empty() {
            rec.record(None, "health", failed.is_none(), health_started);
        }
        checks.extend(results);
        if let Some(f) = failed {
            // Before the rollback (in `run_stage`) restarts what ran before.
            let failed = failed_apps(target, &checks, &slots);
            logs = fetch_logs(remote, &mut rec, target, &plan.rev, &failed).await;
            return Err(Failure {
                kind: FailureKind::Health,
                app: Some(f.app.clone()),
                step: "health".into(),
                message: format!("{}: {}", f.check, f.detail),
            });
        }
        // Only now is the release live for the next run (`live_release`): a
        // run killed before this line leaves it to be judged again.
        let gated: Vec<(&AppDir, &str)> = changed
            .iter()
            .map(|a| &a.dir)
            .chain(slots.iter().map(|n| &n.app.dir))
            .map(|d| (d, plan.rev.as_str()))
            .collect();
        if let Err(f) = run_step(
            remote,
            &mut rec,
            &target.masker,
            None,
            "gated",
            &(release::gated_script(&gated) + &record),
        )
        .await
        {
            if f.kind == FailureKind::Infra {
                for app in changed
                    .iter()
                    .map(|a| &a.name)
                    .chain(slots.iter().map(|n| &n.app.name))
                {
                    runs.insert(app.clone(), Runs::Unknown);
                }
            }
            return Err(f);
        }
        // The old slots served what was in flight at the switch; after
        // their drain they stop. Best effort: the new ones serve.
        stop_old_slots(remote, &mut rec, target, &slots, &mut switched, switched_at).await;
        Ok(true)
    }
    .await;
    if result.is_err() {
        // The host failed: the kept apps stay recorded at what they ran.
        for k in &kept {
            runs.insert(k.app.clone(), Runs::Release(k.before.runs().to_string()));
        }
    }
    let (status, failure) = match result {
        Ok(true) => (HostStatus::Deployed, None),
        Ok(false) => (HostStatus::Unchanged, None),
        Err(f) => {
            tracing::error!(
                "{} {}{} failed: {}",
                target.host.name,
                f.app
                    .as_deref()
                    .map(|a| format!("{a} "))
                    .unwrap_or_default(),
                f.step,
                f.message
            );
            (HostStatus::Failed, Some(f))
        }
    };
    HostRun {
        outcome: HostOutcome {
            client: target.client.clone(),
            host: target.host.name.clone(),
            status,
            failure,
            steps: rec.steps,
            checks,
            switched: switched.iter().map(|s| s.app.clone()).collect(),
            frozen: Vec::new(),
            rollback_checks: Vec::new(),
            rollback_failure: None,
            runs,
            snapshot,
            restore: None,
            backups,
            logs,
            seconds: secs(started),
        },
        switched,
        kept,
        proxy_applied,
    }
}

/// The new slot `app` started in on this host, if it is a blue_green one.
fn new_slot_of(slots: &[NewSlot<'_>], app: &str) -> Option<SlotState> {
    slots.iter().find(|n| n.app.name == app).map(|n| n.new)
}

/// The apps with a check that failed (not one cancelled), each with the
/// slot it was started in.
fn failed_apps<'a>(
    target: &'a Target,
    checks: &[crate::gates::health::CheckResult],
    slots: &[NewSlot<'_>],
) -> Vec<(&'a AppJob, Option<SlotState>)> {
    target
        .apps
        .iter()
        .filter(|a| {
            checks
                .iter()
                .any(|c| c.app == a.name && !c.passed && !c.cancelled)
        })
        .map(|a| (a, new_slot_of(slots, &a.name)))
        .collect()
}

/// The last log lines of each of `failed` (release `rev`, in its slot),
/// one `logs` step per app; best effort: a fetch that fails is said in
/// the text, never a failure of the host. A command app without
/// `commands.logs` has none.
async fn fetch_logs<R: Remote>(
    remote: &R,
    rec: &mut Recorder<'_>,
    target: &Target,
    rev: &str,
    failed: &[(&AppJob, Option<SlotState>)],
) -> BTreeMap<String, String> {
    let mut logs = BTreeMap::new();
    for (app, slot) in failed {
        let Some(script) =
            release::logs_script(&app.dir, rev, &app.start, app.logs.as_deref(), *slot)
        else {
            tracing::info!(
                "{} {}: no logs to show: a `command` app needs `commands.logs` for them",
                target.host.name,
                app.name
            );
            continue;
        };
        let started = Instant::now();
        // The host stops the command (`release::logs_script`); this is for
        // a host without `timeout`.
        let limit = Duration::from_secs(release::LOGS_TIMEOUT_SECS + 15);
        let result = tokio::time::timeout(limit, remote.run(&script))
            .await
            .unwrap_or_else(|_| {
                Err(RemoteError::Timeout {
                    host: target.host.name.clone(),
                    seconds: limit.as_secs(),
                })
            });
        let (text, ok) = match result {
            Ok(out) => {
                let (body, cut, status) = release::parse_logs(&out.stdout);
                let mut text = bound_logs(&body, cut, &target.masker);
                if text.trim().is_empty() {
                    text = "(fleetgate: the logs command printed nothing)".into();
                }
                match status {
                    Some(0) => {}
                    Some(release::TIMED_OUT) => {
                        let _ = write!(
                            text,
                            "\n(fleetgate: the logs command did not finish within {} s)",
                            release::LOGS_TIMEOUT_SECS
                        );
                    }
                    Some(code) => {
                        let _ = write!(text, "\n(fleetgate: the logs command exited {code})");
                    }
                    None => text.push_str("\n(fleetgate: the logs command did not finish)"),
                }
                (text.trim_start_matches('\n').to_string(), status == Some(0))
            }
            Err(e) => (
                format!(
                    "(fleetgate: could not fetch the logs: {})",
                    bound_logs(&e.to_string(), false, &target.masker)
                ),
                false,
            ),
        };
        rec.record(Some(&app.name), "logs", ok, started);
        let total = text.lines().count();
        let shown = total.min(crate::report::LOG_LINES_SHOWN);
        tracing::info!(
            "{} {} logs ({}):\n{}",
            target.host.name,
            app.name,
            if shown < total {
                format!(
                    "its last {shown} of {total} lines; `--format json` and the run record have them all"
                )
            } else {
                format!("{total} line{}", plural(total))
            },
            last_lines(&text, shown)
                .lines()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        logs.insert(app.name.clone(), text);
    }
    logs
}

/// The last `n` lines of `text`.
pub(crate) fn last_lines(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let mut at = text.len();
    for _ in 0..n {
        match text[..at].rfind('\n') {
            Some(i) => at = i,
            None => return text,
        }
    }
    &text[at + 1..]
}

/// An app's logs as a report keeps them: escape sequences and control
/// characters other than newline and tab out, secret values masked, the
/// last [`crate::core::outcome::LOG_LINES`] lines within
/// [`crate::core::outcome::LOG_BYTES`] bytes, cut at a line boundary and
/// said. `first_cut`: the host cut the output by size, so its first line
/// is partial (and may hold part of a secret value): it goes too.
pub(super) fn bound_logs(raw: &str, first_cut: bool, masker: &Masker) -> String {
    use crate::core::outcome::{LOG_BYTES, LOG_LINES};
    let clean = masker.mask(&without_control(raw));
    let mut lines: Vec<&str> = clean.lines().collect();
    let mut cut = 0;
    if first_cut && !lines.is_empty() {
        lines.remove(0);
        cut += 1;
    }
    if lines.len() > LOG_LINES {
        cut += lines.len() - LOG_LINES;
        lines.drain(..lines.len() - LOG_LINES);
    }
    // Room for the note and the ones `fetch_logs` may add.
    let budget = LOG_BYTES - 128;
    let mut size: usize = lines.iter().map(|l| l.len() + 1).sum();
    while size > budget && lines.len() > 1 {
        size -= lines[0].len() + 1;
        lines.remove(0);
        cut += 1;
    }
    let mut body = lines.join("\n");
    if body.len() > budget {
        // One line longer than the budget: its end.
        let mut from = body.len() - (budget - 3);
        while !body.is_char_boundary(from) {
            from += 1;
        }
        body = format!("…{}", &body[from..]);
    }
    match (first_cut, cut) {
        // The host sent only the end of a longer output: how much came
        // before is unknown.
        (true, _) => format!("(… earlier lines cut)\n{body}"),
        (false, 0) => body,
        (false, n) => format!("(… {n} earlier line{} cut)\n{body}", plural(n)),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `text` without ANSI escape sequences (CSI, OSC and two-character ones)
/// and control characters other than newline and tab; `\r\n` is a newline.
fn without_control(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC (a title, a link): up to BEL or ST.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether the host's `proxy` step ran: done, or failed (a failed reload
/// may follow the install of the new config, so the one it replaced is
/// put back all the same; without one, the rollback's restore is a no-op).
fn proxy_began(steps: &[Step], done: &[usize], failure: Option<&Failure>) -> bool {
    done.iter().any(|&i| steps[i].step == "proxy")
        || failure.is_some_and(|f| f.app.is_none() && f.step == "proxy")
}

/// A blue_green app's new slot on one host, between its start and its switch.
struct NewSlot<'a> {
    app: &'a AppJob,
    job: &'a SlotJob,
    new: SlotState,
    /// What runs now and stops after the switch: `Some(Some(slot))`, or
    /// `Some(None)` for the app's own project (it ran `recreate` before);
    /// `None`: nothing.
    old: Option<Option<SlotState>>,
    /// The same commit started again in the live slot (a repair): never
    /// stopped by a failed gate, it is the one that serves.
    repair: bool,
    /// A repair (the same commit started again in its own slot): the
    /// stopped slot the release before it ran in, where a rollback starts
    /// it again.
    back: Option<SlotState>,
    /// The release live now (`None`: a first deploy).
    replacing: Option<String>,
    state: State,
    back_to: Option<State>,
    drain: Duration,
}

/// The gate of a new slot, on its port directly: the slot's checks that do
/// not go through the proxy (it still routes to the live slot), and its
/// routes' `health` paths.
fn slot_gate(address: &str, job: &SlotJob) -> Vec<CheckSpec> {
    let address = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    job.checks
        .iter()
        .filter(|c| !matches!(c, CheckSpec::Http { via: Some(_), .. }))
        .cloned()
        .chain(job.health.iter().map(|path| CheckSpec::Http {
            url: format!("http://{address}:{}{path}", job.port),
            via: None,
            expect_status: 200,
            expect_body: None,
            timeout: Duration::from_secs(2),
            policy: SLOT_HEALTH,
        }))
        .collect()
}

/// A route's `health` path: passes once, within a minute.
const SLOT_HEALTH: crate::gates::health::Policy = crate::gates::health::Policy {
    interval: Duration::from_millis(500),
    successes: 1,
    failures: 120,
    deadline: Duration::from_secs(60),
    soak: Duration::ZERO,
};

/// Stops the new slots of a host that failed before its switch (best
/// effort: each is tried, and the live ones never stopped serving).
async fn stop_new_slots<R: Remote>(
    remote: &R,
    rec: &mut Recorder<'_>,
    target: &Target,
    rev: &str,
    slots: &[NewSlot<'_>],
) {
    for n in slots.iter().filter(|n| !n.repair) {
        let script = release::stop_slot_script(
            &n.app.dir,
            rev,
            &n.app.start,
            n.app.stop.as_deref(),
            Some(n.new),
        );
        if let Err(f) = run_step(
            remote,
            rec,
            &target.masker,
            Some(&n.app.name),
            "stop new slot",
            &script,
        )
        .await
        {
            tracing::warn!(
                "{} {}: the new slot did not stop: {}",
                target.host.name,
                n.app.name,
                f.message
            );
        }
    }
}

/// After the drain (counted from the switch), stops what ran before each
/// new slot. A stop that fails is said, not a failure of the host.
async fn stop_old_slots<R: Remote>(
    remote: &R,
    rec: &mut Recorder<'_>,
    target: &Target,
    slots: &[NewSlot<'_>],
    switched: &mut [Switched],
    switched_at: Instant,
) {
    for n in slots {
        let (Some(old), Some(rev)) = (n.old, n.replacing.as_deref()) else {
            continue;
        };
        let wait = n.drain.saturating_sub(switched_at.elapsed());
        if !wait.is_zero() {
            tracing::info!(
                "{} {}: draining the old slot for {:.1}s",
                target.host.name,
                n.app.name,
                wait.as_secs_f64()
            );
            tokio::time::sleep(wait).await;
        }
        let script =
            release::stop_slot_script(&n.app.dir, rev, &n.app.start, n.app.stop.as_deref(), old);
        match run_step(
            remote,
            rec,
            &target.masker,
            Some(&n.app.name),
            "stop old slot",
            &script,
        )
        .await
        {
            Ok(_) => {
                if let Some(sw) = switched.iter_mut().find(|s| s.app == n.app.name)
                    && let Some(sl) = &mut sw.slots
                {
                    sl.old_stopped = true;
                }
            }
            Err(f) => tracing::warn!(
                "{} {}: the old slot did not stop (it serves nothing now): {}",
                target.host.name,
                n.app.name,
                f.message
            ),
        }
    }
}

/// One script recording each app's `state` without touching its release.
fn record_script<'a>(
    target: &Target,
    states: impl Iterator<Item = (&'a str, &'a State)>,
) -> String {
    states
        .filter_map(|(name, state)| {
            let app = target.apps.iter().find(|a| a.name == name)?;
            Some(release::record_script(&app.dir, state))
        })
        .collect()
}

/// The state of the app's live release when it needs no change to run
/// `files`: `current` points to it, its start finished, its gates passed on
/// this host, and its files hash as `files` on the host. Whatever commit it
/// was uploaded at: a release is kept, not restarted, for as long as later
/// commits render it the same.
fn live_release<'a>(now: &'a Inspected, files: &[ReleaseFile]) -> Option<&'a State> {
    let desired: BTreeMap<&str, &str> = files
        .iter()
        .map(|f| (f.path.as_str(), f.sha256.as_str()))
        .collect();
    let live: BTreeMap<&str, &str> = now
        .sums
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let state = now.state.as_ref().filter(|_| !now.unhashed)?;
    // `current` too: a run killed between the switch and the write of
    // `state.json` leaves `current` on a release that never started.
    let release = Some(state.rev.as_str());
    (now.current.as_deref() == release
        && now.started.as_deref() == release
        && now.gated.as_deref() == release
        && desired == live)
        .then_some(state)
}

/// What a failed deploy of `rev` goes back to: the state before it. A host
/// whose state already names `rev` (a run killed after the switch, before
/// its start finished) goes back to that state's previous release.
fn before_rev(now: Option<&State>, rev: &str) -> Option<State> {
    match now {
        Some(s) if s.rev == rev => s.previous.as_ref().map(|p| {
            let mut history = s.history.clone();
            if history.last() == Some(p) {
                history.pop();
            }
            let mut revs = s.revs.clone();
            if revs.last().map(String::as_str) == Some(rev) {
                revs.pop();
            }
            State {
                rev: p.clone(),
                files: BTreeMap::new(),
                deployed_at: s.deployed_at.clone(),
                previous: history.last().cloned(),
                history,
                revs,
                slot: None,
            }
        }),
        other => other.cloned(),
    }
}

fn next_state(before: Option<&State>, rev: &str, files: &[ReleaseFile]) -> State {
    let mut history = before.map(|s| s.history.clone()).unwrap_or_default();
    if let Some(b) = before
        && b.rev != rev
    {
        history.push(b.rev.clone());
    }
    let keep_from = history.len().saturating_sub(release::KEEP_RELEASES);
    history.drain(..keep_from);
    State {
        rev: rev.to_string(),
        files: files
            .iter()
            .map(|f| (f.path.clone(), f.sha256.clone()))
            .collect(),
        deployed_at: now_rfc3339(),
        previous: before.map(|b| b.rev.clone()).filter(|p| p != rev),
        history,
        revs: before.map_or_else(|| vec![rev.to_string()], |b| b.ran_then(rev)),
        slot: None,
    }
}

/// Puts the switched apps of one host back on the release they had before.
/// The host is `RolledBack` only when every switched app is back and
/// healthy; otherwise it stays `Failed`, with why in `rollback_failure` and
/// what each app now runs in `runs`.
async fn rollback_host<R: Remote, P: Prober>(
    target: &Target,
    remote: &R,
    prober: &P,
    run: &mut HostRun,
    failed_rev: &str,
) {
    let host = &target.host.name;
    let mut rec = Recorder {
        host,
        steps: Vec::new(),
    };
    let mut restored = Vec::new();
    let mut failures = Vec::new();
    // New slots to stop once the traffic is back on the old ones.
    let mut stop_after: Vec<(&AppJob, SlotState, Duration)> = Vec::new();
    for sw in &run.switched {
        let Some(app) = target.apps.iter().find(|a| a.name == sw.app) else {
            continue;
        };
        if app.rollback == RollbackPolicy::Freeze {
            tracing::error!(
                "{host} {}: rollback: freeze — left on the failed release; a human must decide (data may have been migrated)",
                app.name
            );
            run.outcome.frozen.push(app.name.clone());
            continue;
        }
        // Per app, one round trip: a failing app does not stop the others.
        let name = app.name.as_str();
        let slot_back = match (&sw.before, sw.slots, &app.blue_green) {
            (Some(before), Some(sl), Some(bg)) => match sl.old {
                Some(Some(old)) => Some((before, sl, old, bg)),
                _ => None,
            },
            _ => None,
        };
        let steps = match (&sw.before, slot_back) {
            // Blue/green: the same switch in reverse. The old slot runs
            // again (started anew if its drain was over), passes its gate
            // on its port, then takes the traffic back; the failed one
            // stops after the drain.
            (_, Some((before, sl, old, bg))) => {
                if sl.old_stopped {
                    let start = [Step::new(
                        name,
                        "restart old slot",
                        release::start_slot_script(
                            &app.dir,
                            &before.rev,
                            &app.start,
                            old.name,
                            old.port,
                        ),
                    )];
                    if let (_, Some(f)) = run_steps(remote, &mut rec, &target.masker, &start).await
                    {
                        run.outcome.runs.insert(app.name.clone(), Runs::Unknown);
                        failures.push(f);
                        continue;
                    }
                }
                let gate = [Gated {
                    name,
                    dir: &app.dir,
                    checks: slot_gate(&target.host.address, &bg.slots[old.name.index()]),
                    release: Some(&before.rev),
                }];
                let started = Instant::now();
                let results = run_checks(remote, prober, target, &gate, Duration::ZERO, None).await;
                let healthy = results.iter().all(|c| c.passed);
                rec.record(Some(name), "old slot health", healthy, started);
                run.outcome.rollback_checks.extend(results);
                let mut back = before.clone();
                back.deployed_at = now_rfc3339();
                back.previous = back.history.pop();
                back.slot = Some(old);
                stop_after.push((app, sl.new, sl.drain));
                vec![Step::new(
                    name,
                    "rollback",
                    release::switch_slot_script(&app.dir, &before.rev, &back, old),
                )]
            }
            (Some(before), None) => {
                let mut back = before.clone();
                back.deployed_at = now_rfc3339();
                back.previous = back.history.pop();
                vec![
                    Step::new(
                        name,
                        "rollback",
                        release::switch_script(&app.dir, &before.rev, &back),
                    ),
                    // Replacing the failed release: its processes are stopped
                    // first (a blue_green one's slot, when the app ran
                    // without slots before).
                    Step::new(
                        name,
                        "restart",
                        release::start_script(&app.dir, &before.rev, &app.start, Some(failed_rev)),
                    ),
                ]
            }
            // A first deploy: nothing to go back to, so take it down.
            (None, _) => vec![Step::new(
                name,
                "remove",
                release::teardown_script(&app.dir, &app.start, app.stop.as_deref()),
            )],
        };
        let (_, failure) = run_steps(remote, &mut rec, &target.masker, &steps).await;
        match (failure, &sw.before) {
            (Some(f), _) => {
                run.outcome.runs.insert(app.name.clone(), Runs::Unknown);
                failures.push(f);
            }
            (None, Some(before)) => {
                run.outcome
                    .runs
                    .insert(app.name.clone(), Runs::Release(before.rev.clone()));
                restored.push((app, before.rev.as_str()));
            }
            (None, None) => {
                run.outcome.runs.insert(app.name.clone(), Runs::Nothing);
            }
        }
    }
    // The proxy config this deploy replaced comes back.
    if run.proxy_applied
        && let Some(p) = target.proxy()
    {
        let script = proxy::restore_script(&p.settings, &p.dir);
        if let Err(f) = run_step(
            remote,
            &mut rec,
            &target.masker,
            None,
            "proxy rollback",
            &script,
        )
        .await
        {
            failures.push(f);
        }
    }
    if let Some(drain) = stop_after.iter().map(|(_, _, d)| *d).max() {
        tokio::time::sleep(drain).await;
    }
    for (app, new, _) in &stop_after {
        let script = release::stop_slot_script(
            &app.dir,
            failed_rev,
            &app.start,
            app.stop.as_deref(),
            Some(*new),
        );
        if let Err(f) = run_step(
            remote,
            &mut rec,
            &target.masker,
            Some(&app.name),
            "stop new slot",
            &script,
        )
        .await
        {
            tracing::warn!(
                "{host} {}: the failed slot did not stop: {}",
                app.name,
                f.message
            );
        }
    }
    // The host goes back to the commit it ran: so do the records of the
    // apps this stage left on their release (their release was never
    // touched; only what they record changes back).
    let recorded = run
        .outcome
        .failure
        .as_ref()
        .is_none_or(|f| f.step == "gated");
    if recorded && !run.kept.is_empty() {
        let script = record_script(target, run.kept.iter().map(|k| (k.app.as_str(), &k.before)));
        match run_step(remote, &mut rec, &target.masker, None, "record", &script).await {
            Ok(_) => {
                for k in &run.kept {
                    run.outcome
                        .runs
                        .insert(k.app.clone(), Runs::Release(k.before.runs().to_string()));
                }
            }
            Err(f) => failures.push(f),
        }
    }
    if !restored.is_empty() {
        let started = Instant::now();
        // A blue_green app is checked as the slot it is back in.
        let gates: Vec<Gated> = restored
            .iter()
            .map(|(a, _)| {
                let slot = stop_after
                    .iter()
                    .find(|(s, _, _)| s.name == a.name)
                    .and_then(|(_, new, _)| {
                        a.blue_green
                            .as_ref()
                            .map(|bg| &bg.slots[new.name.other().index()])
                    });
                Gated {
                    checks: slot.map_or_else(|| a.checks.clone(), |s| s.checks.clone()),
                    ..Gated::of(a)
                }
            })
            .collect();
        let results = run_checks(remote, prober, target, &gates, Duration::ZERO, None).await;
        let healthy = results.iter().all(|c| c.passed);
        run.outcome.rollback_checks.extend(results);
        rec.record(None, "health after rollback", healthy, started);
        if healthy {
            // The previous release passed its gates again: live for the next
            // run. Unhealthy, it is judged again by the next deploy of it.
            let gated: Vec<(&AppDir, &str)> =
                restored.iter().map(|(a, rev)| (&a.dir, *rev)).collect();
            if let Err(f) = run_step(
                remote,
                &mut rec,
                &target.masker,
                None,
                "gated",
                &release::gated_script(&gated),
            )
            .await
            {
                failures.push(f);
            }
        }
    }
    run.outcome.steps.extend(rec.steps);
    if failures.is_empty() && run.outcome.frozen.is_empty() {
        run.outcome.status = HostStatus::RolledBack;
    } else {
        run.outcome.status = HostStatus::Failed;
        run.outcome.rollback_failure = failures.into_iter().next();
    }
}

/// Runs one stage: hosts in waves of at most `parallelism`; once more than
/// `max_failures` hosts failed, no new host starts; on failure, with
/// `rollback`, every switched host goes back to its previous release.
pub async fn run_stage<C: Connector, P: Prober>(
    plan: &StagePlan,
    connector: &C,
    prober: &P,
    snapshots: &dyn Snapshotter,
    soak: Duration,
) -> StageOutcome {
    let _bar = crate::progress::hosts(plan.targets.len(), &format!("deploy {}", plan.stage));
    let permits = Semaphore::new(plan.parallelism.max(1));
    let failed = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let runs = futures_util::future::join_all(plan.targets.iter().map(|target| {
        let (permits, failed, stop) = (&permits, &failed, &stop);
        async move {
            let _permit = permits.acquire().await.expect("semaphore is never closed");
            if stop.load(Ordering::SeqCst) {
                return (not_started(target, "the stage already failed"), None);
            }
            if crate::interrupt::requested() {
                return (not_started(target, "interrupted"), None);
            }
            let started = Instant::now();
            let (run, remote) = match connector.connect(&target.host).await {
                Ok(remote) => {
                    let mut rec = Recorder {
                        host: &target.host.name,
                        steps: Vec::new(),
                    };
                    rec.record(None, "connect", true, started);
                    let mut run =
                        deploy_host(plan, target, &remote, prober, snapshots, soak, stop).await;
                    run.outcome.steps.splice(0..0, rec.steps);
                    (run, Some(remote))
                }
                Err(e) => {
                    log_step(&target.host.name, None, "connect", false, secs(started));
                    tracing::error!("{e}");
                    (connect_failed(target, &e, started), None)
                }
            };
            crate::progress::host_done();
            if run.outcome.status == HostStatus::Failed
                && failed.fetch_add(1, Ordering::SeqCst) + 1 > plan.max_failures
            {
                stop.store(true, Ordering::SeqCst);
            }
            (run, remote)
        }
    }))
    .await;
    let failed_hosts = failed.load(Ordering::SeqCst);
    let too_many = failed_hosts > plan.max_failures;
    // Interrupted: hosts that finished keep their healthy release; the stage
    // is incomplete, so it has not passed.
    let interrupted = !too_many
        && runs
            .iter()
            .any(|(r, _)| r.outcome.status == HostStatus::NotStarted);
    let passed = !too_many && !interrupted;
    // Roll back every host that needs it at once, and close every
    // connection concurrently (each close is a round trip of its own).
    let finished = futures_util::future::join_all(plan.targets.iter().zip(runs).map(
        |(target, (mut run, remote))| async move {
            let needs_rollback = plan.rollback
                && !run.switched.is_empty()
                && (too_many || run.outcome.status == HostStatus::Failed);
            // A connection that failed mid-change is not trusted with the
            // rollback: a fresh one is (the host may be back).
            let lost = run
                .outcome
                .failure
                .as_ref()
                .is_some_and(|f| f.kind == FailureKind::Infra);
            let remote = match remote {
                Some(r) if lost && needs_rollback => {
                    connector.close(r).await;
                    None
                }
                other => other,
            };
            let remote = match remote {
                Some(r) => Some(r),
                None if needs_rollback => match reconnect(connector, &target.host).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::error!("{}: could not roll back: {e}", target.host.name);
                        run.outcome.rollback_failure = Some(Failure {
                            kind: FailureKind::Infra,
                            app: None,
                            step: "rollback".into(),
                            message: target.masker.mask(&e.to_string()),
                        });
                        None
                    }
                },
                None => None,
            };
            if let Some(r) = remote {
                if needs_rollback {
                    rollback_host(target, &r, prober, &mut run, &plan.rev).await;
                }
                connector.close(r).await;
            }
            run.outcome
        },
    ))
    .await;
    let mut hosts: Vec<HostOutcome> = finished;
    for h in &mut hosts {
        if let (false, Some(image)) = (h.frozen.is_empty(), h.snapshot) {
            h.restore = Some(crate::core::outcome::restore_command(
                &h.client, &h.host, image,
            ));
        }
        // A frozen app backed up before the change: how to put it back.
        for app in &h.frozen {
            if let Some(b) = h.backups.get_mut(app) {
                b.restore = Some(crate::core::outcome::backup_restore_command(
                    &h.client, app, &h.host, &b.id,
                ));
            }
        }
    }
    let rolled_back = hosts.iter().any(|h| h.status == HostStatus::RolledBack);
    StageOutcome {
        stage: plan.stage.clone(),
        rev: plan.rev.clone(),
        passed,
        interrupted,
        failed_hosts,
        max_failures: plan.max_failures,
        rolled_back,
        hosts,
    }
}

/// A connection for a rollback, tried after each of the connector's
/// [`Connector::reconnect_waits`].
async fn reconnect<C: Connector>(connector: &C, host: &Host) -> Result<C::Host, RemoteError> {
    let mut last = None;
    for wait in connector.reconnect_waits() {
        tokio::time::sleep(wait).await;
        match connector.connect(host).await {
            Ok(r) => return Ok(r),
            Err(e) => {
                tracing::warn!("{}: reconnecting to roll back: {e}", host.name);
                last = Some(e);
            }
        }
    }
    Err(last.expect("tried at least once"))
}

fn not_started(target: &Target, why: &str) -> HostRun {
    tracing::info!("{} not started: {why}", target.host.name);
    HostRun {
        outcome: HostOutcome::new(
            &target.client,
            &target.host.name,
            HostStatus::NotStarted,
            untouched(target),
        ),
        switched: Vec::new(),
        kept: Vec::new(),
        proxy_applied: false,
    }
}

fn connect_failed(target: &Target, e: &RemoteError, started: Instant) -> HostRun {
    let mut message = e.to_string();
    if let RemoteError::Connect { hint, .. } = e {
        message = format!("{message}\n  hint: {hint}");
    }
    HostRun {
        outcome: HostOutcome {
            failure: Some(Failure {
                kind: FailureKind::Infra,
                app: None,
                step: "connect".into(),
                message,
            }),
            steps: vec![StepRecord {
                app: None,
                step: "connect".into(),
                ok: false,
                seconds: secs(started),
            }],
            seconds: secs(started),
            ..HostOutcome::new(
                &target.client,
                &target.host.name,
                HostStatus::Failed,
                untouched(target),
            )
        },
        switched: Vec::new(),
        kept: Vec::new(),
        proxy_applied: false,
    }
}

/// `restore --app`: one app's `commands.restore`, run on each host with
/// the backup id of that host, before the health checks.
#[derive(Debug, Clone)]
pub struct RestoreJob {
    pub app: String,
    pub command: String,
    /// Host name → the backup id to put back there.
    pub ids: BTreeMap<String, String>,
}

/// Only the health checks of every app of each target, nothing uploaded or
/// switched (`restore`'s re-check of a rebuilt server): each host
/// `unchanged` when its checks pass, else failed at `health` as a deploy's
/// gate would be.
pub async fn check_stage<C: Connector, P: Prober>(
    plan: &StagePlan,
    connector: &C,
    prober: &P,
) -> StageOutcome {
    checks_after(plan, connector, prober, None).await
}

/// `restore --app`: on each target, the app's `commands.restore` with
/// that host's backup id (`FLEETGATE_BACKUP_ID`) in its live release, then
/// the health checks as [`check_stage`] runs them. A restore that fails
/// fails its host at step `restore`, its checks not run.
pub async fn restore_stage<C: Connector, P: Prober>(
    plan: &StagePlan,
    connector: &C,
    prober: &P,
    job: &RestoreJob,
) -> StageOutcome {
    checks_after(plan, connector, prober, Some(job)).await
}

async fn checks_after<C: Connector, P: Prober>(
    plan: &StagePlan,
    connector: &C,
    prober: &P,
    restore: Option<&RestoreJob>,
) -> StageOutcome {
    let mut hosts = Vec::new();
    for target in &plan.targets {
        let started = Instant::now();
        let remote = match connector.connect(&target.host).await {
            Ok(r) => r,
            Err(e) => {
                hosts.push(connect_failed(target, &e, started).outcome);
                continue;
            }
        };
        let mut rec = Recorder {
            host: &target.host.name,
            steps: Vec::new(),
        };
        if let Some(job) = restore {
            let script = match (
                target.apps.iter().find(|a| a.name == job.app),
                job.ids.get(&target.host.name),
            ) {
                (Some(app), Some(id)) => Ok(release::restore_script(&app.dir, &job.command, id)),
                _ => Err(Failure {
                    kind: FailureKind::Command,
                    app: Some(job.app.clone()),
                    step: "restore".into(),
                    message: format!(
                        "no app `{}` or no backup id for host `{}`",
                        job.app, target.host.name
                    ),
                }),
            };
            let result = match script {
                Ok(script) => run_step(
                    &remote,
                    &mut rec,
                    &target.masker,
                    Some(&job.app),
                    "restore",
                    &script,
                )
                .await
                .map(|_| ()),
                Err(f) => Err(f),
            };
            if let Err(f) = result {
                connector.close(remote).await;
                tracing::error!(
                    "{} {} restore failed: {}",
                    target.host.name,
                    job.app,
                    f.message
                );
                hosts.push(HostOutcome {
                    failure: Some(f),
                    steps: rec.steps,
                    seconds: secs(started),
                    ..HostOutcome::new(
                        &target.client,
                        &target.host.name,
                        HostStatus::Failed,
                        untouched(target),
                    )
                });
                continue;
            }
        }
        let apps: Vec<&AppJob> = target.apps.iter().collect();
        let checks = run_checks(
            &remote,
            prober,
            target,
            &Gated::all(&apps),
            Duration::ZERO,
            None,
        )
        .await;
        connector.close(remote).await;
        let failed = checks.iter().find(|c| !c.passed).cloned();
        rec.record(None, "health", failed.is_none(), started);
        let status = if failed.is_some() {
            HostStatus::Failed
        } else {
            HostStatus::Unchanged
        };
        hosts.push(HostOutcome {
            failure: failed.map(|f| Failure {
                kind: FailureKind::Health,
                app: Some(f.app.clone()),
                step: "health".into(),
                message: format!("{}: {}", f.check, f.detail),
            }),
            steps: rec.steps,
            checks,
            seconds: secs(started),
            ..HostOutcome::new(&target.client, &target.host.name, status, untouched(target))
        });
    }
    let failed_hosts = hosts.iter().filter(|h| h.failure.is_some()).count();
    StageOutcome {
        stage: plan.stage.clone(),
        rev: plan.rev.clone(),
        passed: failed_hosts == 0,
        interrupted: false,
        failed_hosts,
        max_failures: 0,
        rolled_back: false,
        hosts,
    }
}

#[cfg(test)]
mod step_timing_tests {
    use super::*;
    use crate::remote::RemoteError;

    /// A host that sends nothing until its script ends, then all its
    /// output at once: the markers arrive in one burst.
    struct Buffered;

    impl Remote for Buffered {
        async fn run_lines(
            &self,
            script: &str,
            on_line: &mut (dyn FnMut(&str) + Send),
        ) -> Result<RemoteOutput, RemoteError> {
            let out = crate::remote::shell::sh(script);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            for line in stdout.lines() {
                on_line(line);
            }
            Ok(RemoteOutput {
                status: out.status.code(),
                stdout,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    #[tokio::test]
    async fn step_times_are_the_hosts_even_when_the_markers_arrive_in_one_burst() {
        // Linux: the host's clock is /proc/uptime (a test that cannot
        // read it fails rather than passing without checking anything).
        assert!(std::path::Path::new("/proc/uptime").exists());
        let mut rec = Recorder {
            host: "h1",
            steps: Vec::new(),
        };
        let steps = [
            Step::new("web", "upload", "sleep 0.3".into()),
            Step::new("web", "switch", "true".into()),
        ];
        let (done, failure) = run_steps(&Buffered, &mut rec, &Masker::default(), &steps).await;
        assert_eq!(done, [0, 1]);
        assert!(failure.is_none(), "{failure:?}");
        let secs: Vec<f64> = rec.steps.iter().map(|s| s.seconds).collect();
        // /proc/uptime counts hundredths; the arrival gap would be ~0.
        assert!((0.25..1.5).contains(&secs[0]), "{secs:?}");
        assert!(secs[1] < 0.1, "{secs:?}");
        // Shown as hundredths (not 0.30000000001862645 in the JSON).
        for s in &secs {
            assert!(s.to_string().len() <= 4, "{secs:?}");
        }
    }

    #[tokio::test]
    async fn a_failed_step_is_timed_on_the_host_too() {
        // Linux: the host's clock is /proc/uptime (a test that cannot
        // read it fails rather than passing without checking anything).
        assert!(std::path::Path::new("/proc/uptime").exists());
        let mut rec = Recorder {
            host: "h1",
            steps: Vec::new(),
        };
        let steps = [Step::new("web", "start", "sleep 0.3\nexit 3".into())];
        let (done, failure) = run_steps(&Buffered, &mut rec, &Masker::default(), &steps).await;
        assert!(done.is_empty());
        assert!(failure.is_some());
        assert!(!rec.steps[0].ok);
        assert!(
            (0.25..1.5).contains(&rec.steps[0].seconds),
            "{:?}",
            rec.steps
        );
    }
}
