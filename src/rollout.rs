//! The [`Rollout`] port over the real fleet: plans rendered from the
//! repository's commits, the validated fleet, the image gate with trivy,
//! and a stage deployed over SSH. Also what the commands share of it
//! (`plan`, `deploy_stage`, `known_hosts`), so no command calls another.

use std::collections::BTreeMap;

use crate::config::{self, Fleet, Selection};
use crate::core::outcome::StageOutcome;
use crate::core::shard::Shard;
use crate::deploy;
use crate::deploy::Connector;
use crate::desired::{self, DecryptCache};
use crate::error::{Error, Message, Result};
use crate::inventory::{self, Inventory};
use crate::plan::{self, Affected, Plan, Side};
use crate::ports::Rollout;
use crate::remote::Remote;
use crate::remote::release::{self, AppDir, Inspected};
use crate::remote::ssh::SshConnector;
use crate::render::{DesiredClient, SecretView};
use crate::repo::{CommitId, Repo};
use crate::scan::{self, ScanReport};
use crate::secrets::Keyring;

/// The fleet of one repository, with the keys and scanner settings of this
/// run.
pub struct Live<'a> {
    pub repo: &'a Repo,
    pub keyring: &'a Keyring,
    pub scan: &'a scan::Settings,
    /// The command's one inventory (`inventory::for_command`).
    pub inventory: &'a dyn Inventory,
}

impl Rollout for Live<'_> {
    fn plan(&self, base: Option<CommitId>, head: CommitId) -> Result<Plan> {
        let plan = plan(self.repo, base, head, self.keyring, self.inventory)?;
        // `plan` goes on without HCLOUD_TOKEN; a run, which deploys, stops
        // here, before the lock is taken or anything deployed.
        if let Some(r) = plan.inventory.iter().find(|r| r.hosts.is_none()) {
            return Err(Error::Usage(
                Message::from(format!(
                    "client `{}`: its Hetzner Cloud hosts (`{}`) were not resolved: {}",
                    r.client,
                    r.label_selector,
                    r.not_resolved.as_deref().unwrap_or("unknown")
                ))
                .hint(format!(
                    "set {} to an API token of the project its servers are in",
                    crate::hcloud::TOKEN_VAR
                )),
            ));
        }
        Ok(plan)
    }

    fn fleet(&self, rev: CommitId) -> Result<Fleet> {
        // Validated already by the plan of the same commit.
        let snap = self.repo.snapshot(rev)?;
        Ok(config::validate(&config::load(&snap, Selection::All)?).0)
    }

    fn scan(&self, fleet: &Fleet, clients: &[String]) -> Result<Option<ScanReport>> {
        if scan::images_in_play(fleet, clients).is_empty() {
            return Ok(None);
        }
        scan::gate_fleet(fleet, clients, self.scan).map(Some)
    }

    fn deploy(
        &self,
        rev: CommitId,
        stage: &str,
        clients: &[String],
        previous: &BTreeMap<String, CommitId>,
        shard: Shard,
    ) -> Result<StageOutcome> {
        deploy_stage(
            self.keyring,
            self.repo,
            self.inventory,
            rev,
            stage,
            clients,
            previous,
            shard,
        )
    }
}

/// The null commit id: what a forge sends as `before` on a branch's first
/// push, and the base of a plan made against nothing.
pub const NO_COMMIT: &str = "0000000000000000000000000000000000000000";

/// Renders both commits (only the clients the change can touch) and
/// compares; without a base, compares head with nothing (every client added).
pub fn plan(
    repo: &Repo,
    base: Option<CommitId>,
    head: CommitId,
    keyring: &Keyring,
    inventory: &dyn Inventory,
) -> Result<Plan> {
    let Some(base) = base else {
        return plan_from_nothing(repo, head, keyring, inventory);
    };
    let changed = repo.changed_paths(base, head)?;
    let affected = Affected::from_paths(&changed);
    tracing::info!(
        "planning {}..{}: {} paths changed, {}",
        base.short(),
        head.short(),
        changed.len(),
        if affected.all {
            "an app or shared secrets changed: rendering every client".to_string()
        } else {
            format!("rendering {} client(s)", affected.clients.len())
        }
    );
    if !keyring.can_decrypt() {
        tracing::warn!(
            "no age identity configured: secret values are not compared, only key names"
        );
    }
    let cache = DecryptCache::default();
    let (snap_b, snap_h) = (repo.snapshot(base)?, repo.snapshot(head)?);
    // Base keeps what it reads, head takes the blobs it shares with it.
    let mut shared = crate::repo::SharedBlobs::keeping();
    // Pinned keys are checked at head only, and only where the change can
    // move them (`pinned_keys`): neither side reads its known_hosts here
    // (5 MB at 50,000 hosts).
    let files_b = config::load_sharing(
        &snap_b,
        affected.selection(),
        &mut shared,
        config::KnownHostsFile::Skip,
    )?;
    shared.keep = false;
    let mut files_h = config::load_sharing(
        &snap_h,
        affected.selection(),
        &mut shared,
        config::KnownHostsFile::Skip,
    )?;
    drop(shared);
    // The same clients at both sides (most changes add or remove none):
    // one list of their names, not two a fleet long.
    if files_h.all_clients == files_b.all_clients {
        files_h.all_clients = files_b.all_clients.clone();
    }
    if files_h.client_secrets == files_b.client_secrets {
        files_h.client_secrets = files_b.client_secrets.clone();
    }
    if affected.needs_every_client(&changed, &files_b, &files_h) {
        tracing::info!("the change can break a rule over the whole fleet: reading every client");
        config::read_every_client(&snap_h, &mut files_h)?;
    }
    let invalid = |label: String, problems| Error::Invalid {
        at: label,
        problems,
    };
    // Head first: its problems are the ones the author of the change can fix.
    let (prepared_h, problems) = desired::prepare(&files_h, keyring, &cache);
    if !problems.is_empty() {
        return Err(invalid(snap_h.label(), desired::collapse_repeats(problems)));
    }
    prepared_h.fleet.log_warnings();
    // Head validated without a problem: base parses only the clients whose
    // files differ.
    let (prepared_b, problems_b) = desired::prepare_reusing(
        &files_b,
        keyring,
        &cache,
        Some(config::Clean::new(&files_h, &prepared_h.fleet)),
    );
    let mut problems = Vec::new();
    let base_fleet = problems_b.is_empty().then_some(&prepared_b.fleet);
    pinned_keys(
        &snap_h,
        &files_h,
        &prepared_h.fleet,
        base_fleet,
        &changed,
        &mut problems,
    )?;
    if !problems.is_empty() {
        return Err(invalid(snap_h.label(), desired::collapse_repeats(problems)));
    }
    if !problems_b.is_empty() {
        return Err(invalid(
            snap_b.label(),
            desired::collapse_repeats(problems_b),
        ));
    }
    // Both sides are validated: rendering reads none of their files (a
    // fleet's worth of client files and known hosts, twice), and the plan
    // is made in the room they leave.
    drop((files_b, files_h));
    let base_side = Side {
        rev: base.to_string(),
        label: snap_b.label(),
        prepared: &prepared_b,
    };
    let plan = compare_with_head(
        repo,
        inventory,
        &base_side,
        &snap_h,
        &prepared_h,
        head,
        &changed,
        keyring,
    )?;
    tracing::info!(
        "plan {}: {} client(s) change, {} unaffected",
        crate::report::short(&plan.plan_hash),
        plan.clients.len(),
        plan.unaffected
    );
    Ok(plan)
}

/// `check`'s rule that every static host's key is pinned in
/// `pipelines/known_hosts`, where a change can break it: for the clients
/// whose hosts differ from `base` (added clients, added or moved hosts;
/// every client read when `base` is None), and for every client when the
/// change touches `known_hosts` itself (a key removed for a client the
/// change does not otherwise touch). A client whose hosts and pinned keys
/// are the same at both commits keeps the verdict it had: its known_hosts
/// lines are not read again (deploy still connects with strict host keys,
/// and `check` still checks every line).
fn pinned_keys(
    snap: &crate::repo::Snapshot,
    files: &config::FleetFiles,
    fleet: &Fleet,
    base: Option<&Fleet>,
    changed: &[String],
    problems: &mut Vec<crate::error::Diagnostic>,
) -> Result<()> {
    let touched = changed.iter().any(|p| p == config::KNOWN_HOSTS);
    if touched && files.selection != Selection::All {
        let all = config::load(snap, Selection::All)?;
        let (every, _) = config::validate(&all);
        log_warnings(&config::known_hosts_checks(&all, &every.clients, problems));
        return Ok(());
    }
    let moved: BTreeMap<String, std::sync::Arc<crate::config::Client>> = fleet
        .clients
        .iter()
        .filter(|(name, client)| {
            touched
                || base.is_none_or(|base| {
                    base.clients
                        .get(*name)
                        .is_none_or(|was| was.hosts != client.hosts)
                })
        })
        .map(|(name, client)| (name.clone(), client.clone()))
        .collect();
    if moved.is_empty() {
        return Ok(());
    }
    let known_hosts = snap.read(config::KNOWN_HOSTS)?;
    log_warnings(&config::known_hosts_checks_of(
        known_hosts.as_deref(),
        &moved,
        problems,
    ));
    Ok(())
}

/// Says the pinned-key warnings (hosts pinned by address), as `check` does.
/// A Hetzner server is trusted only by a key pinned under its name: its
/// address is the next server's once it is gone, so an address line never
/// pins it (`check` sees no cloud server; this runs once they are resolved,
/// before any is contacted).
fn cloud_servers_pinned_by_name(
    files: &config::FleetFiles,
    fleet: &Fleet,
    cloud_clients: &[String],
) -> Result<()> {
    let known = crate::known_hosts::KnownHosts::parse(&String::from_utf8_lossy(
        files
            .files
            .get(config::KNOWN_HOSTS)
            .map(Vec::as_slice)
            .unwrap_or_default(),
    ));
    let unpinned: Vec<String> = cloud_clients
        .iter()
        .filter_map(|c| match &fleet.clients[c].hosts {
            config::Hosts::Static(hosts) => Some(hosts.iter().map(move |h| (c, h))),
            config::Hosts::Hcloud { .. } => None,
        })
        .flatten()
        .filter(|(_, h)| known.pin(h, false) != crate::known_hosts::Pin::Name)
        .map(|(c, h)| format!("{c}/{} ({})", h.name, h.address))
        .collect();
    if unpinned.is_empty() {
        return Ok(());
    }
    Err(Error::Usage(
        Message::from(format!(
            "{}: no key pinned for the Hetzner server(s) {} (a server is trusted by a `NAME KEYTYPE KEY` line under its server name only)",
            config::KNOWN_HOSTS,
            unpinned.join(", ")
        ))
        .hint("run `fleetgate hosts trust --client CLIENT`, verify the keys out of band, and merge them in a reviewed commit; fleetgate never trusts a key on first use"),
    ))
}

fn log_warnings(warnings: &[crate::error::Diagnostic]) {
    for w in warnings {
        tracing::warn!("{w}");
    }
}

/// Adds to `plan` what `client` ran at `prev` (the commit its stage last
/// deployed) that head no longer gives it: apps removed from the client,
/// hosts removed from its list, or everything when its file is gone.
/// Described by `prev`'s config (how each app was started, where). Returns
/// whether a host head no longer names is among them.
fn add_removals(
    repo: &Repo,
    inventory: &dyn Inventory,
    fleet: &Fleet,
    client: &str,
    prev: CommitId,
    plan: &mut deploy::StagePlan,
) -> Result<bool> {
    let snap = repo.snapshot(prev)?;
    let files = config::load(&snap, Selection::Only([client.to_string()].into()))?;
    let (was, _) = config::validate(&files);
    let Some(before) = was.clients.get(client) else {
        return Ok(false);
    };
    // Hetzner hosts as they are now: a server that left the selector (or
    // the project) is not taken down, it is no longer fleetgate's. A
    // selector that matches nothing any more has nothing to take down.
    let before_hosts = inventory.resolve(before)?;
    let now = fleet.clients.get(client);
    let now_hosts: Vec<String> = match now {
        Some(c) => inventory.resolve(c)?.into_iter().map(|h| h.name).collect(),
        None => Vec::new(),
    };
    let mut gone_host = false;
    for host in &before_hosts {
        let host_gone = !now_hosts.contains(&host.name);
        let removals: Vec<deploy::Removal> = before
            .apps
            .iter()
            .filter(|a| host_gone || now.is_some_and(|c| !c.apps.contains(a)))
            .filter_map(|a| was.apps.get(a))
            .map(|app| deploy::Removal {
                app: app.name.clone(),
                dir: AppDir {
                    deploy_root: host.deploy_root.clone(),
                    client: client.to_string(),
                    app: app.name.clone(),
                },
                start: deploy::start_of(&was, before, app, host),
                stop: app.commands.stop.clone(),
            })
            .collect();
        if removals.is_empty() {
            continue;
        }
        tracing::info!(
            "{} {}: to remove (not in {} any more): {}",
            host.name,
            client,
            if now.is_none() {
                "the fleet"
            } else {
                "the client"
            },
            removals
                .iter()
                .map(|r| r.app.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        gone_host |= host_gone;
        match plan
            .targets
            .iter_mut()
            .find(|t| t.client == client && t.host.name == host.name)
        {
            Some(t) => t.removals.extend(removals),
            None => plan.targets.push(deploy::Target {
                client: client.to_string(),
                host: host.clone(),
                apps: Vec::new(),
                removals,
                masker: Default::default(),
                snapshot: None,
                proxy: fleet
                    .pipeline
                    .proxy
                    .as_ref()
                    .map(|settings| deploy::ProxyJob {
                        settings: settings.clone(),
                        dir: crate::remote::proxy::ProxyDir {
                            deploy_root: host.deploy_root.clone(),
                            client: client.to_string(),
                        },
                    }),
            }),
        }
    }
    Ok(gone_host)
}

/// `base` compared with head (rendered with head's rev on both sides),
/// and head's Hetzner clients resolved (`Plan::inventory`).
#[expect(
    clippy::too_many_arguments,
    reason = "the two plan paths' shared tail; a struct would only rename them"
)]
fn compare_with_head(
    repo: &Repo,
    inventory: &dyn Inventory,
    base: &Side,
    snap_h: &crate::repo::Snapshot,
    prepared_h: &desired::Prepared,
    head: CommitId,
    changed: &[String],
    keyring: &Keyring,
) -> Result<Plan> {
    let mut plan = plan::compare(
        base,
        &Side {
            rev: head.to_string(),
            label: snap_h.label(),
            prepared: prepared_h,
        },
        changed,
        keyring.can_decrypt(),
        &head.to_string(),
    )?;
    plan.inventory = resolve_for_plan(repo, inventory, &prepared_h.fleet)?;
    Ok(plan)
}

/// Each Hetzner client of `fleet` (the clients the plan reads): its servers
/// now, against the host list its stage's last deploy recorded in this
/// clone. Without `HCLOUD_TOKEN` it says so instead (a warning too).
fn resolve_for_plan(
    repo: &Repo,
    inventory: &dyn Inventory,
    fleet: &Fleet,
) -> Result<Vec<plan::ResolvedHosts>> {
    let git = crate::store::GitRepo::maybe_remote(repo, "origin");
    let mut out = Vec::new();
    for client in fleet.clients.values() {
        let config::Hosts::Hcloud { label_selector, .. } = &client.hosts else {
            continue;
        };
        let now = match inventory.can_resolve(client) {
            true => Ok(inventory::hosts(inventory, client)?
                .into_iter()
                .map(|h| h.name)
                .collect()),
            false => {
                tracing::warn!(
                    "client `{}`: its Hetzner Cloud hosts (`{label_selector}`) were not resolved: {} is not set",
                    client.name,
                    crate::hcloud::TOKEN_VAR
                );
                Err(format!("{} is not set", crate::hcloud::TOKEN_VAR))
            }
        };
        let last = fleet
            .stage_of_group(&client.group)
            .map(|(_, stage)| last_deployed_hosts(&git, &stage.name, &client.name))
            .transpose()?
            .flatten();
        out.push(plan::ResolvedHosts::new(
            &client.name,
            &label_selector.to_string(),
            now,
            last,
        ));
    }
    Ok(out)
}

/// The hosts the record of `client`'s deployed commit in `stage` names, as
/// this clone has it; a note that is not a record is said, not fatal: the
/// plan only compares with it.
fn last_deployed_hosts(
    git: &dyn crate::ports::GitStore,
    stage: &str,
    client: &str,
) -> Result<Option<Vec<String>>> {
    let Some(rev) = git.ref_target(&crate::core::records::deployed_ref(stage, client))? else {
        return Ok(None);
    };
    let notes = git.ref_target(crate::core::records::NOTES_REF)?;
    let Some(text) = git.note_in(notes, rev)? else {
        return Ok(None);
    };
    match crate::core::record::RunRecord::parse(&text) {
        Ok(record) => Ok(record.hosts_of(client, stage)),
        Err(why) => {
            tracing::warn!("the run record on {rev}: {why}; hosts not compared with it");
            Ok(None)
        }
    }
}

/// Head against nothing: the same pipeline and apps without any client, so
/// every client of head is added (a first push, or a base this clone does
/// not have). Every client is rendered: nothing narrows the change.
fn plan_from_nothing(
    repo: &Repo,
    head: CommitId,
    keyring: &Keyring,
    inventory: &dyn Inventory,
) -> Result<Plan> {
    tracing::info!(
        "planning {} against nothing (no base): rendering every client",
        head.short()
    );
    let cache = DecryptCache::default();
    let snap_h = repo.snapshot(head)?;
    let files_h = config::load(&snap_h, Selection::All)?;
    let (prepared_h, problems) = desired::prepare(&files_h, keyring, &cache);
    if !problems.is_empty() {
        return Err(Error::Invalid {
            at: snap_h.label(),
            problems: desired::collapse_repeats(problems),
        });
    }
    let files_b = files_h.without_clients("nothing (no base)");
    let (prepared_b, problems) = desired::prepare(&files_b, keyring, &cache);
    if !problems.is_empty() {
        // Head is valid, so its pipeline and apps alone are too.
        return Err(Error::Invalid {
            at: files_b.label.clone(),
            problems: desired::collapse_repeats(problems),
        });
    }
    let changed: Vec<String> = files_h.files.keys().cloned().collect();
    let nothing = Side {
        rev: NO_COMMIT.to_string(),
        label: files_b.label.clone(),
        prepared: &prepared_b,
    };
    let plan = compare_with_head(
        repo,
        inventory,
        &nothing,
        &snap_h,
        &prepared_h,
        head,
        &changed,
        keyring,
    )?;
    tracing::info!(
        "plan {}: {} client(s) to roll out from nothing",
        crate::report::short(&plan.plan_hash),
        plan.clients.len()
    );
    Ok(plan)
}

/// Renders `rev`, builds the stage's plan and carries it out over SSH, on
/// the hosts `shard` selects.
#[allow(clippy::too_many_arguments)]
pub fn deploy_stage(
    keyring: &Keyring,
    repo: &Repo,
    inventory: &dyn Inventory,
    rev: CommitId,
    stage_name: &str,
    only: &[String],
    previous: &BTreeMap<String, CommitId>,
    shard: Shard,
) -> Result<StageOutcome> {
    stage_at(
        keyring, repo, inventory, rev, stage_name, only, previous, shard, None,
    )
}

/// One host of `client` checked without a deploy: with `restore` (`restore
/// --app`), that job's `commands.restore` first (with the host's backup
/// id); then the health checks `rev` gives its apps (`restore`'s re-check
/// of a rebuilt server runs only those). A stage outcome whose host is
/// `unchanged` or failed at the step that failed.
#[allow(clippy::too_many_arguments)]
pub fn check_host(
    keyring: &Keyring,
    repo: &Repo,
    inventory: &dyn Inventory,
    rev: CommitId,
    stage_name: &str,
    client: &str,
    host: &str,
    restore: Option<&deploy::RestoreJob>,
) -> Result<StageOutcome> {
    stage_at(
        keyring,
        repo,
        inventory,
        rev,
        stage_name,
        &[client.to_string()],
        &BTreeMap::new(),
        Shard::ALL,
        Some((host, restore)),
    )
}

#[allow(clippy::too_many_arguments)]
fn stage_at(
    keyring: &Keyring,
    repo: &Repo,
    inventory: &dyn Inventory,
    rev: CommitId,
    stage_name: &str,
    only: &[String],
    previous: &BTreeMap<String, CommitId>,
    shard: Shard,
    check_only: Option<(&str, Option<&deploy::RestoreJob>)>,
) -> Result<StageOutcome> {
    let snap = repo.snapshot(rev)?;
    let files = config::load(&snap, Selection::All)?;
    let invalid = |problems| Error::Invalid {
        at: snap.label(),
        problems,
    };
    let cache = DecryptCache::default();
    let rev_s = rev.to_string();
    // Validated, templates compiled and shared secrets decrypted once; then
    // only the stage's clients are rendered, masked and real.
    let (mut prepared, mut problems) = desired::prepare(&files, keyring, &cache);
    if problems.is_empty() {
        // `check`'s pinned-key rule, before any host is contacted.
        log_warnings(&config::known_hosts_checks(
            &files,
            &prepared.fleet.clients,
            &mut problems,
        ));
    }
    if !problems.is_empty() {
        return Err(invalid(desired::collapse_repeats(problems)));
    }
    prepared.fleet.log_warnings();
    let stage = prepared
        .fleet
        .pipeline
        .stages
        .iter()
        .find(|s| s.name == stage_name)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = prepared
                .fleet
                .pipeline
                .stages
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            Error::Usage(
                Message::from(format!(
                    "stage `{stage_name}` is not in {}",
                    config::PIPELINE
                ))
                .hint(format!("stages are: {}", names.join(", "))),
            )
        })?;
    let stage = &stage;
    for c in only {
        // A client whose file is gone is still deployed: to take it down.
        if !prepared.fleet.clients.contains_key(c) && !previous.contains_key(c) {
            return Err(Error::Usage(
                format!("client `{c}` does not exist at {}", snap.label()).into(),
            ));
        }
    }
    let clients: Vec<String> = prepared
        .fleet
        .clients
        .values()
        .filter(|c| c.group == stage.group && (only.is_empty() || only.contains(&c.name)))
        .map(|c| c.name.clone())
        .collect();
    // Hetzner clients' servers, resolved once, rendered and deployed as
    // the hosts they are.
    let cloud_clients: Vec<String> = clients
        .iter()
        .filter(|c| {
            matches!(
                prepared.fleet.clients[*c].hosts,
                config::Hosts::Hcloud { .. }
            )
        })
        .cloned()
        .collect();
    inventory::resolve_fleet(inventory, &mut prepared.fleet, &clients)?;
    cloud_servers_pinned_by_name(&files, &prepared.fleet, &cloud_clients)?;
    let fleet = &prepared.fleet;
    let uses_secrets = clients.iter().any(|c| {
        fleet.clients[c]
            .apps
            .iter()
            .any(|a| !fleet.apps[a].secrets.is_empty())
    });
    if uses_secrets && !keyring.can_decrypt() {
        return Err(Error::Usage(
            Message::from("deploying needs the secrets' values, and no age identity is configured")
                .hint("set SOPS_AGE_KEY_FILE (or SOPS_AGE_KEY) to the CI key"),
        ));
    }
    let render = |view| -> Result<BTreeMap<String, DesiredClient>> {
        let mut out = BTreeMap::new();
        for c in &clients {
            let d = prepared
                .render(c, view, &rev_s)
                .expect("a client of this fleet")
                .map_err(|p| invalid(desired::collapse_repeats(p)))?;
            out.insert(c.clone(), d);
        }
        Ok(out)
    };
    let (masked, real) = (render(SecretView::Masked)?, render(SecretView::Real)?);
    let mut plan = deploy::build_stage_plan(fleet, stage, &real, &masked, &clients, &rev_s);
    if let Some((host, restore)) = check_only {
        plan.targets.retain(|t| t.host.name == host);
        if plan.targets.is_empty() {
            return Err(Error::Usage(
                format!(
                    "host `{host}` is not one of {}'s hosts at {}",
                    only.join(", "),
                    snap.label()
                )
                .into(),
            ));
        }
        let connector = SshConnector::new(&known_hosts(&snap)?, &fleet.pipeline.ssh_options)?;
        let runtime = crate::rt::runtime()?;
        let prober = crate::gates::http::ReqwestProber::new();
        return Ok(runtime.block_on(async {
            match restore {
                Some(job) => deploy::restore_stage(&plan, &connector, &prober, job).await,
                None => deploy::check_stage(&plan, &connector, &prober).await,
            }
        }));
    }
    // Snapshots: decided per host now (`deploy::snapshot`), taken by the
    // executor before the host's first change.
    let run_label = run_label();
    let mut ids = BTreeMap::new();
    for target in &mut plan.targets {
        let Some(client) = fleet.clients.get(&target.client) else {
            continue;
        };
        let cloud = cloud_clients.contains(&target.client);
        let apps: Vec<&config::App> = client
            .apps
            .iter()
            .filter_map(|a| fleet.apps.get(a))
            .collect();
        target.snapshot = deploy::snapshot::job(
            stage,
            &apps,
            cloud,
            &target.client,
            &target.host.name,
            &rev_s,
            &run_label,
        );
        if target.snapshot.is_some() {
            let id = inventory.server_id(&target.host.name).ok_or_else(|| {
                Error::Cloud(Message::from(format!(
                    "server `{}` of client `{}` needs a snapshot, and its Hetzner Cloud id is unknown",
                    target.host.name, target.client
                )))
            })?;
            ids.insert(target.host.name.clone(), id);
        }
    }
    let mut known_hosts = known_hosts(&snap)?;
    for (client, prev) in previous {
        // A removed host may have left head's known_hosts with it: the
        // commit that deployed it pinned its key.
        if add_removals(repo, inventory, fleet, client, *prev, &mut plan)? {
            let prev_snap = repo.snapshot(*prev)?;
            known_hosts.push(b'\n');
            known_hosts.extend(self::known_hosts(&prev_snap)?);
        }
    }
    let of = plan.targets.len();
    plan.targets
        .retain(|t| shard.selects(&stage.name, &t.client, &t.host.name));
    let hosts: usize = plan.targets.len();
    let slice = match shard == Shard::ALL {
        true => String::new(),
        false => format!(" (shard {shard}: {hosts} of {of})"),
    };
    tracing::info!(
        "deploy {} to stage {}: {} client(s), {} host(s){slice}, {} at a time, {} failure(s) tolerated",
        rev.short(),
        stage.name,
        clients.len(),
        hosts,
        plan.parallelism,
        plan.max_failures
    );
    let connector = SshConnector::new(&known_hosts, &fleet.pipeline.ssh_options)?;
    let runtime = crate::rt::runtime()?;
    let prober = crate::gates::http::ReqwestProber::new();
    let snapshots: Box<dyn deploy::snapshot::Snapshotter + '_> = match inventory.cloud() {
        Some(client) if !ids.is_empty() => Box::new(crate::hcloud::Snapshots {
            client,
            ids,
            every: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(SNAPSHOT_TIMEOUT_SECS),
        }),
        _ => Box::new(deploy::snapshot::NoSnapshots),
    };
    Ok(runtime.block_on(deploy::run_stage(
        &plan,
        &connector,
        &prober,
        &*snapshots,
        stage.soak,
    )))
}

/// How long a snapshot may take: Hetzner's take minutes per 10 GB.
const SNAPSHOT_TIMEOUT_SECS: u64 = 30 * 60;

/// What names this run on its snapshots (`fleetgate/run`): the CI run
/// (`GITHUB_RUN_ID`, which Forgejo sets too) or, outside CI, the time it
/// started; made a valid label value by `deploy::snapshot::label_value`.
fn run_label() -> String {
    std::env::var("GITHUB_RUN_ID")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// The commit's pinned host keys: every SSH connection checks against them.
pub fn known_hosts(snap: &crate::repo::Snapshot) -> Result<Vec<u8>> {
    snap.read(config::KNOWN_HOSTS)?.ok_or_else(|| {
        Error::Usage(Message::from(format!("{} is missing at {}", config::KNOWN_HOSTS, snap.label())).hint("pin every host's SSH key there (ssh-keyscan, verified out of band); fleetgate never trusts a key on first use"))
    })
}

/// Connects to every host (16 at a time) and reads what its client's apps run.
pub fn inspect_hosts(
    known_hosts: &[u8],
    ssh_options: &BTreeMap<String, String>,
    targets: &[(&config::Client, config::Host)],
) -> Result<Vec<std::result::Result<BTreeMap<String, Inspected>, String>>> {
    let connector = SshConnector::new(known_hosts, ssh_options)?;
    let runtime = crate::rt::runtime()?;
    Ok(runtime.block_on(async {
        let limit = tokio::sync::Semaphore::new(16);
        futures_util::future::join_all(targets.iter().map(|(client, host)| {
            let (connector, limit) = (&connector, &limit);
            async move {
                let _permit = limit.acquire().await.expect("never closed");
                let remote = connector.connect(host).await.map_err(|e| e.to_string())?;
                let dirs: Vec<AppDir> = client
                    .apps
                    .iter()
                    .map(|app| AppDir {
                        deploy_root: host.deploy_root.clone(),
                        client: client.name.clone(),
                        app: app.clone(),
                    })
                    .collect();
                let refs: Vec<&AppDir> = dirs.iter().collect();
                let out = remote.run(&release::inspect_script(&refs)).await;
                connector.close(remote).await;
                let out = out.map_err(|e| e.to_string())?;
                if !out.success() {
                    return Err(format!("inspect failed: {}", out.tail()));
                }
                release::parse_inspect(&out.stdout)
            }
        }))
        .await
    }))
}

/// Connects to each host (16 at a time) and lists what its deploy root holds
/// (`status --drift`'s orphans).
pub fn list_deploy_roots(
    known_hosts: &[u8],
    ssh_options: &BTreeMap<String, String>,
    hosts: &[config::Host],
) -> Result<Vec<std::result::Result<release::Listing, String>>> {
    let connector = SshConnector::new(known_hosts, ssh_options)?;
    let runtime = crate::rt::runtime()?;
    Ok(runtime.block_on(async {
        let limit = tokio::sync::Semaphore::new(16);
        futures_util::future::join_all(hosts.iter().map(|host| {
            let (connector, limit) = (&connector, &limit);
            async move {
                let _permit = limit.acquire().await.expect("never closed");
                let remote = connector.connect(host).await.map_err(|e| e.to_string())?;
                let out = remote
                    .run(&release::listing_script(&host.deploy_root))
                    .await;
                connector.close(remote).await;
                let out = out.map_err(|e| e.to_string())?;
                if !out.success() {
                    return Err(format!("listing the deploy root failed: {}", out.tail()));
                }
                release::parse_listing(&out.stdout)
            }
        }))
        .await
    }))
}
