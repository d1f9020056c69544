//! In-memory doubles of the ports (`ports.rs`), for the engine's unit
//! tests: each fails the way the real system does — a push whose lease is
//! stale is rejected and changes nothing, a ref of the clone can be moved
//! by another process, a remote can be unreachable, a forge can answer
//! 502, a host can be lost mid-change (as its stage outcome says). Test
//! code only.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{self, Fleet, FleetFiles};
use crate::core::outcome::{
    FailedGate, Failure, FailureKind, HostOutcome, HostStatus, RevertOutcome, Runs, StageOutcome,
};
use crate::core::records::NOTES_REF;
use crate::core::rev::CommitId;
use crate::error::{Error, Message, Result};
use crate::forge::{Comment, EnvApproval, Forge, Pull, Status};
use crate::plan::{ClientPlan, Plan};
use crate::ports::{Clock, GitStore, Noted, Pushed, Rollout, Update};
use crate::scan::ScanReport;

/// What a test runs when a double reaches a point (a sleep, a deploy).
pub type Hook<T> = Box<dyn FnMut(T)>;

/// A commit id from a small number, for tests: `c(1)`, `c(2)`.
pub fn c(n: u8) -> CommitId {
    let mut bytes = [0; 20];
    bytes[0] = 0xc0;
    bytes[19] = n;
    CommitId(bytes)
}

/// An object in the fake repositories: a notes commit (its whole map), a
/// lock commit (its message) or a log entry (its message and parent).
#[derive(Debug, Clone)]
enum Object {
    Notes(BTreeMap<CommitId, String>),
    Lock(String),
    Log(String, Option<CommitId>),
}

/// The objects every clone and the remote share (ids are unique, so one
/// store serves all), and the remote's refs.
#[derive(Default)]
pub struct Remote {
    pub refs: BTreeMap<String, CommitId>,
    objects: HashMap<CommitId, Object>,
    next: u32,
    /// Reverts asked for: (branch, base, head, gate trailer).
    pub reverts: Vec<(String, CommitId, CommitId, String)>,
}

impl Remote {
    fn new_object(&mut self, o: Object) -> CommitId {
        self.next += 1;
        let mut bytes = [0; 20];
        bytes[0] = 0x0b;
        bytes[16..20].copy_from_slice(&self.next.to_be_bytes());
        let id = CommitId(bytes);
        self.objects.insert(id, o);
        id
    }
}

/// A clone of the fleet repository with (by default) a remote.
pub struct FakeGit {
    pub remote: Rc<RefCell<Remote>>,
    has_remote: bool,
    local: RefCell<BTreeMap<String, CommitId>>,
    /// Run once, right before the next push: another runner's write.
    pub before_push: RefCell<Vec<Box<dyn FnOnce()>>>,
    /// The next N swaps of a ref of this clone find it moved by another
    /// process in the same clone.
    pub busy_swaps: Cell<u32>,
    /// The remote cannot be reached.
    pub unreachable: Cell<bool>,
    /// The next N reads of a lock object find it gone, as the real store
    /// does when another runner moved the ref between `ls-remote` and the
    /// fetch of the object it named.
    pub lock_moved_under_reads: Cell<u32>,
    /// What a revert does (default: pushed on top of the branch).
    pub revert_result: RefCell<Option<RevertOutcome>>,
    pub pushes: Cell<u32>,
}

impl FakeGit {
    pub fn new() -> FakeGit {
        FakeGit::clone_of(Rc::new(RefCell::new(Remote::default())))
    }

    /// Another clone (another runner, another person) of the same remote.
    pub fn clone_of(remote: Rc<RefCell<Remote>>) -> FakeGit {
        FakeGit {
            remote,
            has_remote: true,
            local: RefCell::new(BTreeMap::new()),
            before_push: RefCell::new(Vec::new()),
            busy_swaps: Cell::new(0),
            unreachable: Cell::new(false),
            lock_moved_under_reads: Cell::new(0),
            revert_result: RefCell::new(None),
            pushes: Cell::new(0),
        }
    }

    /// A repository without a remote (`deploy` in a plain clone).
    pub fn without_remote() -> FakeGit {
        FakeGit {
            has_remote: false,
            ..FakeGit::new()
        }
    }

    fn reach(&self) -> Result<()> {
        match self.unreachable.get() {
            true => Err(Error::Remote(Message::from(
                "fetching fleetgate's records on remote `origin` failed: fatal: unable to access: Could not resolve host",
            ))),
            false => Ok(()),
        }
    }

    /// The record text on `rev` as the remote has it.
    pub fn remote_note(&self, rev: CommitId) -> Option<String> {
        let remote = self.remote.borrow();
        let notes = remote.refs.get(NOTES_REF)?;
        match remote.objects.get(notes)? {
            Object::Notes(map) => map.get(&rev).cloned(),
            Object::Lock(_) | Object::Log(..) => None,
        }
    }

    /// Writes `text` as the record on `rev`, straight on the remote (a
    /// person with git, or another tool).
    pub fn put_remote_note(&self, rev: CommitId, text: &str) {
        let mut remote = self.remote.borrow_mut();
        let mut map = match remote
            .refs
            .get(NOTES_REF)
            .and_then(|n| remote.objects.get(n))
        {
            Some(Object::Notes(map)) => map.clone(),
            _ => BTreeMap::new(),
        };
        map.insert(rev, text.to_string());
        let id = remote.new_object(Object::Notes(map));
        remote.refs.insert(NOTES_REF.into(), id);
    }

    /// Puts a lock held by someone else on the remote.
    pub fn put_remote_lock(&self, holder_json: &str) {
        let mut remote = self.remote.borrow_mut();
        let id = remote.new_object(Object::Lock(holder_json.to_string()));
        remote.refs.insert(crate::core::lock::LOCK_REF.into(), id);
    }

    /// The lock's text on the remote, None when there is no lock.
    pub fn remote_lock(&self) -> Option<String> {
        let remote = self.remote.borrow();
        let id = remote.refs.get(crate::core::lock::LOCK_REF)?;
        match remote.objects.get(id)? {
            Object::Lock(text) => Some(text.clone()),
            _ => None,
        }
    }

    /// The messages of the remote's lock log, newest first.
    pub fn lock_log(&self) -> Vec<String> {
        let remote = self.remote.borrow();
        let mut out = Vec::new();
        let mut next = remote.refs.get(crate::core::lock::LOG_REF).copied();
        while let Some(Object::Log(text, parent)) = next.and_then(|id| remote.objects.get(&id)) {
            out.push(text.clone());
            next = *parent;
        }
        out
    }
}

impl GitStore for FakeGit {
    fn remote_name(&self) -> Option<&str> {
        self.has_remote.then_some("origin")
    }

    fn fetch_records(&self) -> Result<()> {
        if !self.has_remote {
            return Ok(());
        }
        self.reach()?;
        let remote = self.remote.borrow();
        let mut local = self.local.borrow_mut();
        // `--prune` with the record refspecs: the remote's records replace ours.
        local.retain(|name, _| !name.starts_with("refs/fleetgate/") && name != NOTES_REF);
        for (name, id) in &remote.refs {
            if name.starts_with("refs/fleetgate/") || name == NOTES_REF {
                local.insert(name.clone(), *id);
            }
        }
        Ok(())
    }

    fn ref_target(&self, name: &str) -> Result<Option<CommitId>> {
        Ok(self.local.borrow().get(name).copied())
    }

    fn refs_under(&self, prefix: &str) -> Result<Vec<(String, CommitId)>> {
        Ok(self
            .local
            .borrow()
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, id)| (name.clone(), *id))
            .collect())
    }

    fn delete_ref(&self, name: &str) -> Result<()> {
        self.local.borrow_mut().remove(name);
        Ok(())
    }

    fn note_in(&self, notes: Option<CommitId>, rev: CommitId) -> Result<Option<String>> {
        let remote = self.remote.borrow();
        match notes.and_then(|n| remote.objects.get(&n)) {
            Some(Object::Notes(map)) => Ok(map.get(&rev).cloned()),
            _ => Ok(None),
        }
    }

    fn noted(&self) -> Result<Vec<Noted>> {
        let Some(notes) = self.local.borrow().get(NOTES_REF).copied() else {
            return Ok(Vec::new());
        };
        match self.remote.borrow().objects.get(&notes) {
            // The doubles' commits have no dates: newest is highest.
            Some(Object::Notes(map)) => Ok(map
                .keys()
                .rev()
                .map(|&commit| Noted {
                    commit,
                    subject: None,
                })
                .collect()),
            _ => Ok(Vec::new()),
        }
    }

    fn note_commit(&self, parent: Option<CommitId>, rev: CommitId, text: &str) -> Result<CommitId> {
        let mut remote = self.remote.borrow_mut();
        let mut map = match parent.and_then(|n| remote.objects.get(&n)) {
            Some(Object::Notes(map)) => map.clone(),
            _ => BTreeMap::new(),
        };
        map.insert(rev, text.to_string());
        Ok(remote.new_object(Object::Notes(map)))
    }

    fn set_ref(&self, name: &str, rev: CommitId) -> Result<()> {
        self.local.borrow_mut().insert(name.into(), rev);
        Ok(())
    }

    fn swap_ref(&self, name: &str, new: CommitId, expected: Option<CommitId>) -> Result<bool> {
        if self.busy_swaps.get() > 0 {
            self.busy_swaps.set(self.busy_swaps.get() - 1);
            return Ok(false);
        }
        let mut local = self.local.borrow_mut();
        if local.get(name).copied() != expected {
            return Ok(false);
        }
        local.insert(name.into(), new);
        Ok(true)
    }

    fn push_leased(&self, updates: &[Update]) -> Result<Pushed> {
        if !self.has_remote {
            return Ok(Pushed::Yes);
        }
        self.reach()?;
        let hooks: Vec<_> = self.before_push.borrow_mut().drain(..).collect();
        for hook in hooks {
            hook();
        }
        self.pushes.set(self.pushes.get() + 1);
        let mut remote = self.remote.borrow_mut();
        // Atomic: one stale lease and nothing changes.
        if let Some(u) = updates
            .iter()
            .find(|u| remote.refs.get(&u.name).copied() != u.expected)
        {
            return Ok(Pushed::Rejected(format!("{}: stale info", u.name)));
        }
        for u in updates {
            match u.new {
                Some(id) => remote.refs.insert(u.name.clone(), id),
                None => remote.refs.remove(&u.name),
            };
        }
        Ok(Pushed::Yes)
    }

    fn remote_ref(&self, name: &str) -> Result<Option<CommitId>> {
        self.reach()?;
        Ok(self.remote.borrow().refs.get(name).copied())
    }

    fn lock_text(&self, id: CommitId) -> Result<Option<String>> {
        if self.lock_moved_under_reads.get() > 0 {
            self.lock_moved_under_reads
                .set(self.lock_moved_under_reads.get() - 1);
            return Ok(None);
        }
        match self.remote.borrow().objects.get(&id) {
            Some(Object::Lock(text)) => Ok(Some(text.clone())),
            _ => Ok(None),
        }
    }

    fn lock_object(&self, text: &str) -> Result<CommitId> {
        Ok(self
            .remote
            .borrow_mut()
            .new_object(Object::Lock(text.to_string())))
    }

    fn log_object(&self, text: &str, parent: Option<CommitId>) -> Result<CommitId> {
        Ok(self
            .remote
            .borrow_mut()
            .new_object(Object::Log(text.to_string(), parent)))
    }

    fn revert(
        &self,
        branch: &str,
        base: CommitId,
        head: CommitId,
        gate: &FailedGate,
    ) -> Result<RevertOutcome> {
        self.reach()?;
        self.remote
            .borrow_mut()
            .reverts
            .push((branch.to_string(), base, head, gate.trailer()));
        Ok(self
            .revert_result
            .borrow()
            .clone()
            .unwrap_or_else(|| RevertOutcome::Pushed {
                commit: c(0xee).to_string(),
                onto: head.to_string(),
                reverts: vec![head.to_string()],
                failed_gate: gate.trailer(),
            }))
    }
}

/// A clock that moves only when the engine sleeps, and a signal a test can
/// raise (also from inside a sleep: "SIGTERM arrives while waiting").
pub struct FakeClock {
    pub now: Cell<DateTime<Utc>>,
    pub interrupted: Cell<bool>,
    /// Called after every sleep, with the time slept.
    pub on_sleep: RefCell<Option<Hook<Duration>>>,
    pub slept: Cell<Duration>,
}

impl FakeClock {
    pub fn new() -> FakeClock {
        FakeClock {
            now: Cell::new(
                DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
            interrupted: Cell::new(false),
            on_sleep: RefCell::new(None),
            slept: Cell::new(Duration::ZERO),
        }
    }

    pub fn advance(&self, d: Duration) {
        self.now
            .set(self.now.get() + chrono::Duration::from_std(d).unwrap());
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        self.now.get()
    }

    fn sleep(&self, d: Duration) {
        self.advance(d);
        self.slept.set(self.slept.get() + d);
        if let Some(hook) = self.on_sleep.borrow_mut().as_mut() {
            hook(d);
        }
    }

    fn interrupted(&self) -> bool {
        self.interrupted.get()
    }
}

/// How a host fares when a fake stage deploys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    Healthy,
    /// Its health gate fails; it is rolled back.
    Unhealthy,
    /// Unreachable from the start: untouched.
    Unreachable,
    /// Lost during the change and not rolled back.
    Lost,
    /// Its gate fails and its app is `rollback: freeze`.
    Frozen,
}

/// A small fleet's files: clients `alpha` (canary, on `canary_hosts`) and
/// `beta` (production, on beta-1; approvers alice and bob), app `web`;
/// `max_failures` of the canary stage as given.
pub fn fleet_files(canary_hosts: &[&str], max_failures: u32) -> Vec<(String, String)> {
    let mut hosts = String::new();
    let mut known = String::new();
    for (i, h) in canary_hosts.iter().enumerate() {
        hosts.push_str(&format!(
            "  - name: {h}\n    address: 127.0.0.1\n    port: {}\n",
            2201 + i
        ));
        known.push_str(&format!(
            "[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIulpxsP7LMTnHHQLwYU2WEkTUY79ISya74au5cyCV8m\n",
            2201 + i
        ));
    }
    known.push_str(
        "[127.0.0.1]:2301 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIISrbJ4+Nm044WabpwxZl4XMVrXp2FvjFXRc0MuNWwDZ\n",
    );
    let pipeline = format!(
        "stages:\n  - name: canary\n    group: canary\n    max_failures: {max_failures}\n  - name: production\n    group: production\n    approval:\n      required: true\n      approvers: [alice, bob]\non_failure:\n  rollback: true\n  revert: true\n"
    );
    let alpha = format!("domain: alpha.example.org\ngroup: canary\napps: [web]\nhosts:\n{hosts}");
    [
        (config::PIPELINE, pipeline.as_str()),
        (
            "pipelines/apps/web/app.yaml",
            "runtime: command\nimages:\n  web: registry.example.org/web:1.0@sha256:9f2a1c0d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f\nfiles:\n  start.sh: start.sh.j2\ncommands:\n  start: \"sh start.sh\"\n",
        ),
        ("pipelines/apps/web/start.sh.j2", "echo web\n"),
        (config::KNOWN_HOSTS, known.as_str()),
        ("clients/alpha.yaml", alpha.as_str()),
        (
            "clients/beta.yaml",
            "domain: beta.example.org\ngroup: production\napps: [web]\nhosts:\n  - name: beta-1\n    address: 127.0.0.1\n    port: 2301\n",
        ),
    ]
    .into_iter()
    .map(|(path, text)| (path.to_string(), text.to_string()))
    .collect()
}

/// `files` validated as a commit's would be; a problem fails the test.
pub fn validated(files: &[(String, String)]) -> Fleet {
    let (fleet, problems) = config::validate(&FleetFiles::in_memory(files));
    assert!(problems.is_empty(), "{problems:#?}");
    fleet
}

/// The fleet at every commit, plans by a rule, stages deployed by script.
pub struct FakeRollout {
    files: Vec<(String, String)>,
    pub fleet: Fleet,
    /// Per host, how it fares (default: healthy).
    pub hosts: RefCell<BTreeMap<String, Host>>,
    /// The plan hash of `base..head` (default: from both ids).
    pub plan_hashes: RefCell<BTreeMap<(CommitId, CommitId), String>>,
    /// Clients changed by `base..head` (default: every client).
    pub changed: RefCell<BTreeMap<(CommitId, CommitId), Vec<String>>>,
    /// The image gate's report (default: every image passes).
    pub scan: RefCell<Option<ScanReport>>,
    pub scans: Cell<u32>,
    /// The `previous` of every deploy (what each client last ran).
    pub previous: RefCell<Vec<BTreeMap<String, CommitId>>>,
    /// Per client, the apps every plan says it no longer runs.
    pub removed: RefCell<BTreeMap<String, Vec<String>>>,
    /// Every plan made: (base, head).
    pub plans: RefCell<Vec<(Option<CommitId>, CommitId)>>,
    /// Every stage deployed: (stage, rev, clients).
    pub deploys: RefCell<Vec<(String, CommitId, Vec<String>)>>,
    /// The next stage deployed is cut short by a signal: hosts not started.
    pub interrupt_stage: Cell<bool>,
    /// Run right before a stage deploys (e.g. a signal arrives).
    pub before_deploy: RefCell<Option<Hook<String>>>,
    /// Where the stage's hosts come from, as in `rollout::deploy_stage`.
    pub inventory: FakeInventory,
}

impl FakeRollout {
    /// The same fleet with `from` replaced by `to` in `path`.
    pub fn edited(files: Vec<(String, String)>, path: &str, from: &str, to: &str) -> FakeRollout {
        let files = files
            .into_iter()
            .map(|(p, t)| {
                let t = if p == path { t.replace(from, to) } else { t };
                (p, t)
            })
            .collect();
        FakeRollout::new(files)
    }

    pub fn new(files: Vec<(String, String)>) -> FakeRollout {
        FakeRollout {
            fleet: validated(&files),
            files,
            hosts: RefCell::new(BTreeMap::new()),
            plan_hashes: RefCell::new(BTreeMap::new()),
            changed: RefCell::new(BTreeMap::new()),
            scan: RefCell::new(None),
            scans: Cell::new(0),
            interrupt_stage: Cell::new(false),
            plans: RefCell::new(Vec::new()),
            removed: RefCell::new(BTreeMap::new()),
            previous: RefCell::new(Vec::new()),
            deploys: RefCell::new(Vec::new()),
            before_deploy: RefCell::new(None),
            inventory: FakeInventory::default(),
        }
    }

    pub fn host(&self, name: &str, how: Host) {
        self.hosts.borrow_mut().insert(name.into(), how);
    }

    /// The stages deployed so far, with their clients.
    pub fn deployed(&self) -> Vec<(String, Vec<String>)> {
        self.deploys
            .borrow()
            .iter()
            .map(|(s, _, c)| (s.clone(), c.clone()))
            .collect()
    }
}

fn host_outcome(client: &str, host: &str, how: Host, rev: &str) -> HostOutcome {
    let failure = |kind, step: &str| {
        Some(Failure {
            kind,
            app: Some("web".into()),
            step: step.into(),
            message: "http://127.0.0.1/health: 3 consecutive failures".into(),
        })
    };
    let (status, failure, runs, frozen) = match how {
        Host::Healthy => (
            HostStatus::Deployed,
            None,
            Runs::Release(rev.into()),
            vec![],
        ),
        Host::Unhealthy => (
            HostStatus::RolledBack,
            failure(FailureKind::Health, "health"),
            Runs::Release("previous".into()),
            vec![],
        ),
        Host::Unreachable => (
            HostStatus::Failed,
            failure(FailureKind::Infra, "connect"),
            Runs::AsBefore,
            vec![],
        ),
        Host::Lost => (
            HostStatus::Failed,
            failure(FailureKind::Infra, "start"),
            Runs::Unknown,
            vec![],
        ),
        Host::Frozen => (
            HostStatus::Failed,
            failure(FailureKind::Health, "health"),
            Runs::Release(rev.into()),
            vec!["web".to_string()],
        ),
    };
    HostOutcome {
        failure,
        switched: vec!["web".into()],
        frozen,
        seconds: 0.1,
        ..HostOutcome::new(client, host, status, [("web".to_string(), runs)].into())
    }
}

impl Rollout for FakeRollout {
    fn plan(&self, base: Option<CommitId>, head: CommitId) -> Result<Plan> {
        self.plans.borrow_mut().push((base, head));
        let all = || self.fleet.clients.keys().cloned().collect();
        let (changed, plan_hash) = match base {
            Some(base) => (
                self.changed
                    .borrow()
                    .get(&(base, head))
                    .cloned()
                    .unwrap_or_else(all),
                self.plan_hashes
                    .borrow()
                    .get(&(base, head))
                    .cloned()
                    .unwrap_or_else(|| {
                        format!("{:0<64}", format!("{}{}", base.short(), head.short()))
                    }),
            ),
            // From nothing: every client is added.
            None => (all(), format!("{:f<64}", head.short())),
        };
        Ok(Plan {
            schema: 1,
            base: base.map_or_else(|| "0".repeat(40), |b| b.to_string()),
            head: head.to_string(),
            plan_hash,
            secrets_compared: true,
            clients: changed
                .iter()
                .map(|name| ClientPlan {
                    name: name.clone(),
                    stage: String::new(),
                    hosts: Vec::new(),
                    hosts_added: Vec::new(),
                    hosts_removed: Vec::new(),
                    hosts_changed: Vec::new(),
                    reasons: vec![config::client_file(name)],
                    apps: self
                        .removed
                        .borrow()
                        .get(name)
                        .into_iter()
                        .flatten()
                        .map(|app| crate::plan::AppPlan {
                            name: app.clone(),
                            action: crate::plan::Action::Remove,
                            files: Vec::new(),
                            images: Vec::new(),
                            secrets_changed: Vec::new(),
                        })
                        .collect(),
                })
                .collect(),
            unaffected: self.fleet.clients.len().saturating_sub(changed.len()),
            inventory: Vec::new(),
        })
    }

    fn fleet(&self, _rev: CommitId) -> Result<Fleet> {
        Ok(validated(&self.files))
    }

    fn scan(&self, fleet: &Fleet, clients: &[String]) -> Result<Option<ScanReport>> {
        if crate::scan::images_in_play(fleet, clients).is_empty() {
            return Ok(None);
        }
        self.scans.set(self.scans.get() + 1);
        Ok(Some(self.scan.borrow().clone().unwrap_or(ScanReport {
            passed: true,
            db: None,
            fail_on: vec![config::Severity::Critical],
            ignore_unfixed: false,
            images: Vec::new(),
            expired_ignores: Vec::new(),
        })))
    }

    fn deploy(
        &self,
        rev: CommitId,
        stage: &str,
        clients: &[String],
        previous: &BTreeMap<String, CommitId>,
        shard: crate::core::shard::Shard,
    ) -> Result<StageOutcome> {
        self.previous.borrow_mut().push(previous.clone());
        if let Some(hook) = self.before_deploy.borrow_mut().as_mut() {
            hook(stage.to_string());
        }
        self.deploys
            .borrow_mut()
            .push((stage.to_string(), rev, clients.to_vec()));
        let st = self
            .fleet
            .pipeline
            .stages
            .iter()
            .find(|s| s.name == stage)
            .expect("a stage of the fleet");
        let mut hosts = Vec::new();
        for client in clients {
            let Some(c) = self.fleet.clients.get(client) else {
                // Gone from the fleet: its host takes it down.
                if !shard.selects(stage, client, &format!("{client}-1")) {
                    continue;
                }
                hosts.push(HostOutcome::new(
                    client,
                    &format!("{client}-1"),
                    HostStatus::Deployed,
                    [("web".to_string(), Runs::Nothing)].into(),
                ));
                continue;
            };
            // Resolved before anything is deployed, as the real one does: an
            // inventory that cannot answer stops the stage with nothing done.
            for h in crate::inventory::hosts(&self.inventory, c)? {
                if !shard.selects(stage, client, &h.name) {
                    continue;
                }
                let how = self
                    .hosts
                    .borrow()
                    .get(&h.name)
                    .copied()
                    .unwrap_or(Host::Healthy);
                hosts.push(host_outcome(client, &h.name, how, &rev.to_string()));
            }
        }
        let interrupted = self.interrupt_stage.replace(false);
        if interrupted {
            for h in hosts.iter_mut().skip(1) {
                h.status = HostStatus::NotStarted;
                h.runs = [("web".to_string(), Runs::AsBefore)].into();
            }
        }
        let failed_hosts = hosts.iter().filter(|h| h.failure.is_some()).count();
        let max_failures = st.max_failures as usize;
        Ok(StageOutcome {
            stage: stage.into(),
            rev: rev.to_string(),
            passed: failed_hosts <= max_failures && !interrupted,
            interrupted,
            failed_hosts,
            max_failures,
            rolled_back: hosts.iter().any(|h| h.status == HostStatus::RolledBack),
            hosts,
        })
    }
}

/// An inventory in memory: static clients from their file, Hetzner ones
/// from `servers` by selector text, failing as the real one does.
#[derive(Default)]
pub struct FakeInventory {
    /// Selector → the servers it selects (name, address), or how asking fails.
    pub servers: RefCell<BTreeMap<String, Answer>>,
    /// Without a token: every Hetzner client is unresolved (exit 2).
    pub no_token: Cell<bool>,
    /// Hetzner questions asked.
    pub asked: Cell<u32>,
}

/// The servers a selector selects (name, address), or how asking fails.
pub type Answer = std::result::Result<Vec<(String, String)>, Unresolvable>;

/// How the API fails after `hcloud::call`'s retries.
#[derive(Debug, Clone, Copy)]
pub enum Unresolvable {
    RateLimited,
    Unauthorized,
}

impl crate::inventory::Inventory for FakeInventory {
    fn resolve(&self, client: &config::Client) -> Result<Vec<config::Host>> {
        let config::Hosts::Hcloud {
            label_selector,
            port,
            user,
            deploy_root,
            ..
        } = &client.hosts
        else {
            let config::Hosts::Static(hosts) = &client.hosts else {
                unreachable!()
            };
            return Ok(hosts.clone());
        };
        if self.no_token.get() {
            return Err(Error::Usage(Message::from(format!(
                "client `{}` takes its hosts from Hetzner Cloud (`{label_selector}`), and HCLOUD_TOKEN is not set",
                client.name
            ))));
        }
        self.asked.set(self.asked.get() + 1);
        match self.servers.borrow().get(&label_selector.to_string()) {
            None => Ok(Vec::new()),
            Some(Err(Unresolvable::RateLimited)) => Err(Error::Cloud(Message::from(
                "Hetzner Cloud (GET /servers): 429 rate_limit_exceeded (after 5 tries)",
            ))),
            Some(Err(Unresolvable::Unauthorized)) => Err(Error::Cloud(Message::from(
                "Hetzner Cloud refused HCLOUD_TOKEN (GET /servers): 401 unauthorized",
            ))),
            Some(Ok(servers)) => Ok(servers
                .iter()
                .map(|(name, address)| config::Host {
                    name: name.clone(),
                    address: address.clone(),
                    port: *port,
                    user: user.clone(),
                    deploy_root: deploy_root.clone(),
                })
                .collect()),
        }
    }

    fn can_resolve(&self, client: &config::Client) -> bool {
        matches!(client.hosts, config::Hosts::Static(_)) || !self.no_token.get()
    }
}

/// `files` with alpha's hosts selected from Hetzner Cloud by `client=alpha`.
pub fn hcloud_alpha(files: Vec<(String, String)>) -> Vec<(String, String)> {
    files
        .into_iter()
        .map(|(p, t)| match p.as_str() {
            "clients/alpha.yaml" => {
                let head = t.split("hosts:").next().unwrap_or_default();
                let t = format!("{head}hosts:\n  hcloud:\n    label_selector: client=alpha\n");
                (p, t)
            }
            _ => (p, t),
        })
        .collect()
}

/// A forge that keeps what it is told, and can fail like a real one.
#[derive(Default)]
pub struct FakeForge {
    pub statuses: RefCell<Vec<(String, String, String)>>,
    pub comments: RefCell<Vec<Comment>>,
    /// The merged pull request of every commit (None: a direct push).
    pub merged: Option<u64>,
    /// Answer 502 to every status from the Nth on (0: never).
    pub fail_statuses_from: Cell<usize>,
    /// Issues: (number, title, body, open), and their comments.
    pub issues: RefCell<Vec<(u64, String, String, bool)>>,
    pub issue_comments: RefCell<Vec<(u64, String)>>,
    /// Answer 502 to every issue request.
    pub fail_issues: Cell<bool>,
}

impl FakeForge {
    fn issue_call(&self, what: &str) -> Result<()> {
        if self.fail_issues.get() {
            return Err(Error::Forge(Message::from(format!(
                "Forgejo answered 502 Bad Gateway to {what} (after 4 tries)"
            ))));
        }
        Ok(())
    }
}

impl Forge for FakeForge {
    fn name(&self) -> &'static str {
        "Forgejo"
    }

    fn comment_limit(&self) -> usize {
        65_536
    }

    fn comments(&self, _issue: u64) -> Result<Vec<Comment>> {
        Ok(self.comments.borrow().clone())
    }

    fn create_comment(&self, _issue: u64, body: &str) -> Result<Comment> {
        let mut comments = self.comments.borrow_mut();
        let c = Comment {
            id: comments.len() as u64 + 1,
            body: body.into(),
        };
        comments.push(c.clone());
        Ok(c)
    }

    fn edit_comment(&self, id: u64, body: &str) -> Result<()> {
        if let Some(c) = self.comments.borrow_mut().iter_mut().find(|c| c.id == id) {
            c.body = body.into();
        }
        Ok(())
    }

    fn set_status(&self, _sha: &str, status: &Status) -> Result<()> {
        let n = self.statuses.borrow().len() + 1;
        let from = self.fail_statuses_from.get();
        if from != 0 && n >= from {
            return Err(Error::Forge(Message::from(
                "Forgejo answered 502 Bad Gateway to POST /repos/o/r/statuses (after 4 tries)",
            )));
        }
        self.statuses.borrow_mut().push((
            status.context.clone(),
            status.state.as_str().to_string(),
            status.description.clone(),
        ));
        Ok(())
    }

    fn pull(&self, number: u64) -> Result<Option<Pull>> {
        Ok(Some(Pull {
            number,
            merged: true,
            merge_commit_sha: None,
        }))
    }

    fn merged_pull_of(&self, _sha: &str) -> Result<Option<Pull>> {
        Ok(self.merged.map(|number| Pull {
            number,
            merged: true,
            merge_commit_sha: None,
        }))
    }

    fn environment_approvals(&self, _run_id: u64) -> Result<Vec<EnvApproval>> {
        Ok(Vec::new())
    }

    fn open_issues(&self) -> Result<Vec<crate::forge::Issue>> {
        self.issue_call("GET /repos/o/r/issues")?;
        Ok(self
            .issues
            .borrow()
            .iter()
            .filter(|i| i.3)
            .map(|(number, title, body, _)| crate::forge::Issue {
                number: *number,
                title: title.clone(),
                body: body.clone(),
            })
            .collect())
    }

    fn create_issue(&self, title: &str, body: &str) -> Result<crate::forge::Issue> {
        self.issue_call("POST /repos/o/r/issues")?;
        let mut issues = self.issues.borrow_mut();
        let number = issues.len() as u64 + 1;
        issues.push((number, title.into(), body.into(), true));
        Ok(crate::forge::Issue {
            number,
            title: title.into(),
            body: body.into(),
        })
    }

    fn edit_issue(&self, number: u64, title: &str, body: &str) -> Result<()> {
        self.issue_call("PATCH /repos/o/r/issues/N")?;
        if let Some(i) = self.issues.borrow_mut().iter_mut().find(|i| i.0 == number) {
            (i.1, i.2) = (title.into(), body.into());
        }
        Ok(())
    }

    fn close_issue(&self, number: u64, comment: &str) -> Result<()> {
        self.issue_call("POST /repos/o/r/issues/N/comments")?;
        self.issue_comments
            .borrow_mut()
            .push((number, comment.into()));
        if let Some(i) = self.issues.borrow_mut().iter_mut().find(|i| i.0 == number) {
            i.3 = false;
        }
        Ok(())
    }
}

/// The deploy's snapshots in memory: each job taken gets the next image
/// id (from 1000) unless the script says it fails; the retention is
/// `deploy::snapshot::to_delete` over the images of the same server.
#[derive(Default)]
pub struct FakeSnapshots {
    /// Why the next snapshots fail, in order; empty: they succeed.
    pub fail: std::cell::RefCell<std::collections::VecDeque<String>>,
    /// (server, image) of every snapshot kept, oldest first.
    pub images: std::cell::RefCell<Vec<(String, u64)>>,
    /// Every job asked, in order.
    pub jobs: std::cell::RefCell<Vec<crate::deploy::snapshot::SnapshotJob>>,
    /// How many polls of each snapshot answer "still running".
    pub running_polls: std::cell::Cell<u32>,
    /// `start <server>` and `done <server>`, in the order they happened.
    pub events: std::cell::RefCell<Vec<String>>,
    polls: std::cell::RefCell<std::collections::BTreeMap<u64, u32>>,
}

impl crate::deploy::snapshot::Snapshotter for FakeSnapshots {
    fn start(
        &self,
        job: &crate::deploy::snapshot::SnapshotJob,
    ) -> std::result::Result<crate::deploy::snapshot::Started, String> {
        self.jobs.borrow_mut().push(job.clone());
        if let Some(why) = self.fail.borrow_mut().pop_front() {
            return Err(why);
        }
        let mut images = self.images.borrow_mut();
        let image = 1000 + images.len() as u64 + 1;
        images.push((job.server.clone(), image));
        self.events
            .borrow_mut()
            .push(format!("start {}", job.server));
        Ok(crate::deploy::snapshot::Started {
            image,
            action: image,
        })
    }

    fn done(
        &self,
        job: &crate::deploy::snapshot::SnapshotJob,
        started: crate::deploy::snapshot::Started,
    ) -> std::result::Result<bool, String> {
        let mut polls = self.polls.borrow_mut();
        let n = polls.entry(started.action).or_default();
        *n += 1;
        let done = *n > self.running_polls.get();
        if done {
            self.events
                .borrow_mut()
                .push(format!("done {}", job.server));
        }
        Ok(done)
    }

    fn pacing(&self) -> (std::time::Duration, std::time::Duration) {
        (
            std::time::Duration::from_millis(5),
            std::time::Duration::from_secs(60),
        )
    }

    fn keep(&self, job: &crate::deploy::snapshot::SnapshotJob, _: u64) -> Vec<u64> {
        let mut images = self.images.borrow_mut();
        let mine: Vec<u64> = images
            .iter()
            .filter(|(s, _)| *s == job.server)
            .map(|(_, i)| *i)
            .collect();
        let deleted = crate::deploy::snapshot::to_delete(&mine, job.keep);
        images.retain(|(_, i)| !deleted.contains(i));
        deleted
    }
}

/// The webhooks: records every event the engine sends (with the hooks it
/// was given), and can fail every send (`failing`) like a webhook that
/// never answers.
#[derive(Default)]
pub struct FakeNotifier {
    pub sent: RefCell<Vec<crate::core::events::Event>>,
    /// How many webhooks each send was given.
    pub hooks: RefCell<Vec<usize>>,
    pub failing: Cell<bool>,
}

impl FakeNotifier {
    /// The kinds of the events sent, in order, by their payload names.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.sent.borrow().iter().map(|e| e.kind.as_str()).collect()
    }
}

impl crate::ports::Notifier for FakeNotifier {
    fn notify(
        &self,
        hooks: &[crate::config::Webhook],
        event: &crate::core::events::Event,
    ) -> Result<()> {
        self.sent.borrow_mut().push(event.clone());
        self.hooks.borrow_mut().push(hooks.len());
        match self.failing.get() {
            true => Err(Error::Remote(
                "webhook #1 (hooks.example): 502, 3 tries".into(),
            )),
            false => Ok(()),
        }
    }
}
