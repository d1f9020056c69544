//! desired(base) vs desired(head) → [`Plan`]: pure, serialisable, hashed.
//!
//! A client is in the plan iff something it would run changes: a rendered
//! file, an image, a secret value, its host list. Which clients to render at
//! all is decided first from the changed paths (`affected`), so the cost of a
//! plan follows the size of the change, not the size of the fleet.
//!
//! Architecture Invariant: the plan only ever holds masked renders; a secret
//! value cannot reach it (see `render::SecretView::Masked`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{self, APPS_DIR, CLIENT_SECRETS_DIR, CLIENTS_DIR, SHARED_SECRETS, Selection};
use crate::desired::Prepared;
use crate::error::Error;
use crate::render::SecretView;
use crate::render::{DesiredApp, DesiredClient, Reuse};

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub schema: u32,
    pub base: String,
    pub head: String,
    pub plan_hash: String,
    /// Were secret values decrypted and compared? Without a key only key
    /// names are compared.
    pub secrets_compared: bool,
    pub clients: Vec<ClientPlan>,
    pub unaffected: usize,
    /// The Hetzner Cloud clients the plan reads: the servers their
    /// selectors resolve to now, against the last deploy's. Not in the
    /// plan hash: it depends on the moment and on `HCLOUD_TOKEN`, not on
    /// the change approved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<ResolvedHosts>,
}

/// A Hetzner client's servers now, against the host list its last deploy
/// in its stage recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedHosts {
    pub client: String,
    pub label_selector: String,
    /// Server names, sorted; None when not resolved (`not_resolved` says why).
    pub hosts: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_resolved: Option<String>,
    /// What the last deploy recorded; None: no deploy recorded in this clone.
    pub last_deployed: Option<Vec<String>>,
    /// Servers now that the last deploy did not have (every one without a
    /// recorded deploy), and the reverse.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

impl ResolvedHosts {
    /// Compares `now` (Err: why not resolved) with `last`.
    pub fn new(
        client: &str,
        label_selector: &str,
        now: Result<Vec<String>, String>,
        last: Option<Vec<String>>,
    ) -> ResolvedHosts {
        let (hosts, not_resolved) = match now {
            Ok(mut h) => {
                h.sort();
                (Some(h), None)
            }
            Err(why) => (None, Some(why)),
        };
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        if let Some(now) = &hosts {
            let before = last.clone().unwrap_or_default();
            added = now
                .iter()
                .filter(|h| !before.contains(h))
                .cloned()
                .collect();
            removed = before
                .iter()
                .filter(|h| !now.contains(h))
                .cloned()
                .collect();
        }
        ResolvedHosts {
            client: client.to_string(),
            label_selector: label_selector.to_string(),
            hosts,
            not_resolved,
            last_deployed: last,
            added,
            removed,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientPlan {
    pub name: String,
    pub stage: String,
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts_added: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts_removed: Vec<String>,
    /// Hosts whose address, port, user or deploy root changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts_changed: Vec<String>,
    pub reasons: Vec<String>,
    pub apps: Vec<AppPlan>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Add,
    Update,
    Remove,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Update => "update",
            Action::Remove => "remove",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AppPlan {
    pub name: String,
    pub action: Action,
    pub files: Vec<FileDiff>,
    pub images: Vec<ImageChange>,
    pub secrets_changed: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileDiff {
    pub path: String,
    /// The hosts this diff applies to (files can render differently per host).
    pub hosts: Vec<String>,
    /// Unified diff; secrets appear as `••••` and a short keyed fingerprint.
    pub diff: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageChange {
    pub name: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// Which clients a change can touch, from the changed paths alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affected {
    /// A change to something every client may use (an app, shared secrets).
    pub all: bool,
    pub clients: BTreeSet<String>,
}

impl Affected {
    pub fn from_paths(paths: &[String]) -> Affected {
        let mut all = false;
        let mut clients = BTreeSet::new();
        for p in paths {
            if p.starts_with(&format!("{APPS_DIR}/")) || p == SHARED_SECRETS {
                all = true;
            } else if let Some(name) = p
                .strip_prefix(&format!("{CLIENTS_DIR}/"))
                .and_then(|r| r.strip_suffix(".yaml"))
                .filter(|n| !n.contains('/'))
            {
                clients.insert(name.to_string());
            } else if let Some(name) = p
                .strip_prefix(&format!("{CLIENT_SECRETS_DIR}/"))
                .and_then(|r| r.strip_suffix(".sops.yaml"))
                .filter(|n| !n.contains('/'))
            {
                clients.insert(name.to_string());
            }
        }
        Affected { all, clients }
    }

    /// Must every client file at head be read (for its group and host names)
    /// to check the rules over the whole fleet? Only when the change can break
    /// one: the pipeline changed, or a client the change touches was added,
    /// removed, or changed its group or host names. Otherwise those rules
    /// hold at head as they held at base, which was held to them the same way.
    pub fn needs_every_client(
        &self,
        changed: &[String],
        base: &config::FleetFiles,
        head: &config::FleetFiles,
    ) -> bool {
        let outline = |files: &config::FleetFiles, name: &str| {
            let bytes = files.files.get(&config::client_file(name))?;
            config::validate::outline(bytes).map(|(group, hosts)| (group.value, hosts))
        };
        self.all
            || changed.iter().any(|p| p == config::PIPELINE)
            || self
                .clients
                .iter()
                .any(|c| outline(base, c) != outline(head, c))
    }

    pub fn selection(&self) -> Selection {
        if self.all {
            Selection::All
        } else {
            Selection::Only(self.clients.clone())
        }
    }
}

/// One side of a plan: a snapshot ready to render.
pub struct Side<'a> {
    pub rev: String,
    /// `commit 1a2b…`, for messages.
    pub label: String,
    pub prepared: &'a Prepared<'a>,
}

/// Renders each client at both sides and compares it right away, on every
/// core, keeping only what changed: memory follows the plan, not the fleet.
/// `changed` are the paths the commits differ in; `render_rev` is what
/// `release.rev` renders as on both sides.
pub fn compare(
    base: &Side,
    head: &Side,
    changed: &[String],
    secrets_compared: bool,
    render_rev: &str,
) -> Result<Plan, Error> {
    let names: Vec<&String> = base
        .prepared
        .fleet
        .clients
        .keys()
        .chain(head.prepared.fleet.clients.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let render = |side: &Side, name: &str| {
        side.prepared
            .render(name, SecretView::Masked, render_rev)
            .transpose()
    };
    let inputs = ChangedInputs::of(changed);
    let (same_apps, same_templates) = inputs.same_app_files(changed, base, head);
    let results = crate::par::map(&names, |name| {
        if inputs.same_at_both(name, base, head) {
            // Both sides render the same: once (at head, for its problems).
            return match render(head, name) {
                Ok(_) => Ok(None),
                Err(p) => Err((false, p)),
            };
        }
        let h = render(head, name);
        // Base takes from head what renders the same (a client whose own
        // inputs are the same: its unchanged apps, its unchanged templates).
        let b = match &h {
            Ok(Some(prior)) if inputs.own_inputs_same(name, base, head) => {
                let reuse = Reuse {
                    prior,
                    apps: &same_apps,
                    templates: &same_templates,
                };
                base.prepared
                    .render_reusing(name, SecretView::Masked, render_rev, Some(&reuse))
                    .transpose()
            }
            _ => render(base, name),
        };
        match (b, h) {
            (Ok(b), Ok(h)) => Ok(compare_client(
                name,
                b.as_ref(),
                h.as_ref(),
                base,
                head,
                changed,
                secrets_compared,
            )),
            (Err(p), _) => Err((true, p)),
            (_, Err(p)) => Err((false, p)),
        }
    });
    let (mut base_problems, mut head_problems) = (Vec::new(), Vec::new());
    // Collected where the results were (the same size): a fleet's worth of
    // client plans is not copied.
    let mut clients: Vec<ClientPlan> = results
        .into_iter()
        .filter_map(|r| match r {
            Ok(cp) => cp,
            Err((true, p)) => {
                base_problems.extend(p);
                None
            }
            Err((false, p)) => {
                head_problems.extend(p);
                None
            }
        })
        .collect();
    clients.shrink_to_fit();
    for (side, problems) in [(head, head_problems), (base, base_problems)] {
        if !problems.is_empty() {
            return Err(Error::Invalid {
                at: side.label.clone(),
                problems: crate::desired::collapse_repeats(problems),
            });
        }
    }
    let stage_index = |stage: &str| {
        head.prepared
            .fleet
            .pipeline
            .stages
            .iter()
            .position(|s| s.name == stage)
            .unwrap_or(usize::MAX)
    };
    // In place (a stable sort would take a scratch copy of the clients at
    // the plan's peak): no two clients share a name, so the order is the
    // same.
    clients.sort_unstable_by(|a, b| {
        (stage_index(&a.stage), &a.name).cmp(&(stage_index(&b.stage), &b.name))
    });
    let everyone = base
        .prepared
        .fleet
        .all_clients
        .union_len(&head.prepared.fleet.all_clients);
    let mut plan = Plan {
        schema: SCHEMA,
        base: base.rev.clone(),
        head: head.rev.clone(),
        plan_hash: String::new(),
        secrets_compared,
        unaffected: everyone - clients.len(),
        clients,
        inventory: Vec::new(),
    };
    plan.plan_hash = plan_hash(&plan);
    Ok(plan)
}

/// What a change touches of the inputs clients render from, by path: a
/// client file or secrets file touches its client, an app directory the
/// clients of that app, anything else under `pipelines/` or `secrets/` (the
/// pipeline, shared secrets, known hosts) every client. Git's changed paths
/// compare blob ids: an untouched input is the same blob at both commits.
struct ChangedInputs<'a> {
    clients: BTreeSet<&'a str>,
    apps: BTreeSet<&'a str>,
    shared: bool,
}

impl<'a> ChangedInputs<'a> {
    fn of(changed: &'a [String]) -> ChangedInputs<'a> {
        let mut inputs = ChangedInputs {
            clients: BTreeSet::new(),
            apps: BTreeSet::new(),
            shared: false,
        };
        for p in changed {
            let client = p
                .strip_prefix(CLIENTS_DIR)
                .and_then(|r| r.strip_prefix('/'))
                .and_then(|r| r.strip_suffix(".yaml"))
                .or_else(|| {
                    p.strip_prefix(CLIENT_SECRETS_DIR)
                        .and_then(|r| r.strip_prefix('/'))
                        .and_then(|r| r.strip_suffix(".sops.yaml"))
                })
                .filter(|n| !n.contains('/'));
            let app = p
                .strip_prefix(APPS_DIR)
                .and_then(|r| r.strip_prefix('/'))
                .and_then(|r| r.split_once('/'))
                .map(|(app, _)| app);
            if let Some(c) = client {
                inputs.clients.insert(c);
            } else if let Some(a) = app {
                inputs.apps.insert(a);
            } else if p.starts_with("pipelines/") || p.starts_with("secrets/") {
                inputs.shared = true;
            }
        }
        inputs
    }

    /// Does `name` exist at both sides with its own files, the pipeline and
    /// the shared secrets the same? Then only its apps may render
    /// differently.
    fn own_inputs_same(&self, name: &str, base: &Side, head: &Side) -> bool {
        !self.shared
            && !self.clients.contains(name)
            && base.prepared.fleet.clients.contains_key(name)
            && head.prepared.fleet.clients.contains_key(name)
    }

    /// The apps whose `app.yaml` is the same blob at both sides, and the
    /// file templates whose source is (and that pull in no other template):
    /// for such a client, what renders the same at both sides.
    fn same_app_files(
        &self,
        changed: &[String],
        base: &Side,
        head: &Side,
    ) -> (BTreeSet<String>, BTreeSet<String>) {
        let changed: BTreeSet<&str> = changed.iter().map(String::as_str).collect();
        let (mut apps, mut templates) = (BTreeSet::new(), BTreeSet::new());
        for (name, app) in &head.prepared.fleet.apps {
            let Some(before) = base.prepared.fleet.apps.get(name) else {
                continue;
            };
            if changed.contains(format!("{APPS_DIR}/{name}/app.yaml").as_str()) {
                continue;
            }
            apps.insert(name.clone());
            for (template, source) in &app.templates {
                if !changed.contains(format!("{APPS_DIR}/{template}").as_str())
                    && before.templates.get(template) == Some(source)
                    && crate::render::pulls_in_no_other_template(source)
                {
                    templates.insert(template.clone());
                }
            }
        }
        (apps, templates)
    }

    /// Does `name` exist at both sides with every input it renders from
    /// (its files, its apps' directories, the pipeline, the shared secrets)
    /// the same? Then it renders the same at both: the same bytes, rendered
    /// with the same `release.rev`.
    fn same_at_both(&self, name: &str, base: &Side, head: &Side) -> bool {
        let (Some(b), Some(h)) = (
            base.prepared.fleet.clients.get(name),
            head.prepared.fleet.clients.get(name),
        ) else {
            return false;
        };
        !self.shared
            && !self.clients.contains(name)
            && !b
                .apps
                .iter()
                .chain(&h.apps)
                .any(|a| self.apps.contains(a.as_str()))
    }
}

/// sha256 of the canonical JSON of everything but `plan_hash` and `base`: the
/// same change planned from another base (a re-run) keeps its approvals.
///
/// Streamed into the hash, without a copy of the plan: the bytes are those
/// the hash has always been taken of, the plan as a `serde_json::Value`
/// with those three keys removed — and that removal (`Map::remove` under
/// `preserve_order` swaps the last key into the hole) leaves the other keys
/// in the orders of [`Hashed`] and [`HashedWithInventory`].
pub fn plan_hash(plan: &Plan) -> String {
    let mut hasher = HashWriter(Sha256::new());
    let written = if plan.inventory.is_empty() {
        serde_json::to_writer(
            &mut hasher,
            &Hashed {
                schema: plan.schema,
                clients: &plan.clients,
                head: &plan.head,
                unaffected: plan.unaffected,
                secrets_compared: plan.secrets_compared,
            },
        )
    } else {
        serde_json::to_writer(
            &mut hasher,
            &HashedWithInventory {
                schema: plan.schema,
                unaffected: plan.unaffected,
                head: &plan.head,
                clients: &plan.clients,
                secrets_compared: plan.secrets_compared,
            },
        )
    };
    written.expect("a plan serialises");
    hex::encode(hasher.0.finalize())
}

/// The hashed fields of a plan without inventory, in the hashed order.
#[derive(Serialize)]
struct Hashed<'a> {
    schema: u32,
    clients: &'a [ClientPlan],
    head: &'a str,
    unaffected: usize,
    secrets_compared: bool,
}

/// The hashed fields of a plan with an inventory, in the hashed order.
#[derive(Serialize)]
struct HashedWithInventory<'a> {
    schema: u32,
    unaffected: usize,
    head: &'a str,
    clients: &'a [ClientPlan],
    secrets_compared: bool,
}

struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn compare_client<'a>(
    name: &str,
    b: Option<&'a DesiredClient>,
    h: Option<&'a DesiredClient>,
    base: &Side,
    head: &Side,
    changed: &[String],
    secrets_compared: bool,
) -> Option<ClientPlan> {
    let empty = BTreeMap::new();
    let b_apps = b.map_or(&empty, |c| &c.apps);
    let h_apps = h.map_or(&empty, |c| &c.apps);
    let app_names: BTreeSet<&String> = b_apps.keys().chain(h_apps.keys()).collect();
    let mut apps = Vec::new();
    for app in &app_names {
        let (ba, ha) = (b_apps.get(*app), h_apps.get(*app));
        let action = match (ba, ha) {
            (None, Some(_)) => Action::Add,
            (Some(_), None) => Action::Remove,
            _ => Action::Update,
        };
        let files = file_diffs(ba, ha);
        let images = image_changes(ba, ha);
        let secrets_changed = secret_changes(ba, ha, secrets_compared, changed);
        if action == Action::Update
            && files.is_empty()
            && images.is_empty()
            && secrets_changed.is_empty()
        {
            continue;
        }
        apps.push(AppPlan {
            name: app.to_string(),
            action,
            files,
            images,
            secrets_changed,
        });
    }
    let host_names = |c: Option<&'a DesiredClient>| -> BTreeMap<&'a str, &'a config::Host> {
        c.map(|c| c.hosts.iter().map(|h| (h.name.as_str(), h)).collect())
            .unwrap_or_default()
    };
    let (bh, hh) = (host_names(b), host_names(h));
    let hosts_added: Vec<String> = hh
        .keys()
        .filter(|k| !bh.contains_key(*k))
        .map(|k| k.to_string())
        .collect();
    let hosts_removed: Vec<String> = bh
        .keys()
        .filter(|k| !hh.contains_key(*k))
        .map(|k| k.to_string())
        .collect();
    let hosts_changed: Vec<String> = hh
        .iter()
        .filter(|(k, v)| bh.get(*k).is_some_and(|old| old != *v))
        .map(|(k, _)| k.to_string())
        .collect();
    // A plan holds one of these per changed client, as long as the plan
    // lives: no vector keeps room to grow.
    apps.shrink_to_fit();
    if apps.is_empty()
        && hosts_added.is_empty()
        && hosts_removed.is_empty()
        && hosts_changed.is_empty()
    {
        return None;
    }
    let group = h.or(b).map(|c| c.group.clone()).unwrap_or_default();
    let stage = head
        .prepared
        .fleet
        .stage_of_group(&group)
        .or_else(|| base.prepared.fleet.stage_of_group(&group))
        .map_or_else(|| format!("(group {group})"), |(_, s)| s.name.clone());
    let used_apps: BTreeSet<&str> = app_names.iter().map(|a| a.as_str()).collect();
    let (own, own_secrets) = (config::client_file(name), config::client_secrets_file(name));
    let mut reasons: Vec<String> = changed
        .iter()
        .filter(|p| {
            **p == own
                || **p == own_secrets
                || **p == SHARED_SECRETS
                || p.strip_prefix(APPS_DIR)
                    .and_then(|r| r.strip_prefix('/'))
                    .and_then(|r| r.split_once('/'))
                    .is_some_and(|(app, _)| used_apps.contains(app))
        })
        .cloned()
        .collect();
    reasons.shrink_to_fit();
    Some(ClientPlan {
        name: name.to_string(),
        stage,
        hosts: h
            .map(|c| c.hosts.iter().map(|h| h.name.clone()).collect())
            .unwrap_or_default(),
        hosts_added,
        hosts_removed,
        hosts_changed,
        reasons,
        apps,
    })
}

/// Per file path, one diff per distinct (old, new) pair, naming its hosts.
fn file_diffs(b: Option<&DesiredApp>, h: Option<&DesiredApp>) -> Vec<FileDiff> {
    let empty = BTreeMap::new();
    let b_files = b.map_or(&empty, |a| &a.files);
    let h_files = h.map_or(&empty, |a| &a.files);
    let hosts: BTreeSet<&String> = b_files.keys().chain(h_files.keys()).collect();
    // path → (old, new) → hosts
    type Pairs<'a> = BTreeMap<(Option<&'a str>, Option<&'a str>), Vec<String>>;
    let mut by_path: BTreeMap<&str, Pairs> = BTreeMap::new();
    for host in hosts {
        let bf = b_files.get(host);
        let hf = h_files.get(host);
        let paths: BTreeSet<&String> = bf
            .iter()
            .flat_map(|m| m.keys())
            .chain(hf.iter().flat_map(|m| m.keys()))
            .collect();
        for path in paths {
            let old = bf.and_then(|m| m.get(path)).map(String::as_str);
            let new = hf.and_then(|m| m.get(path)).map(String::as_str);
            if old != new {
                by_path
                    .entry(path)
                    .or_default()
                    .entry((old, new))
                    .or_default()
                    .push(host.clone());
            }
        }
    }
    let mut out = Vec::with_capacity(by_path.values().map(BTreeMap::len).sum());
    for (path, pairs) in by_path {
        for ((old, new), mut hosts) in pairs {
            hosts.shrink_to_fit();
            let mut diff = unified_diff(path, old, new);
            diff.shrink_to_fit();
            out.push(FileDiff {
                path: path.to_string(),
                hosts,
                diff,
            });
        }
    }
    // By path, then in host order (not by content).
    out.sort_by(|a, b| (&a.path, &a.hosts).cmp(&(&b.path, &b.hosts)));
    out
}

pub fn unified_diff(path: &str, old: Option<&str>, new: Option<&str>) -> String {
    let (a, b) = (
        old.map_or("/dev/null".to_string(), |_| format!("a/{path}")),
        new.map_or("/dev/null".to_string(), |_| format!("b/{path}")),
    );
    similar::TextDiff::from_lines(old.unwrap_or(""), new.unwrap_or(""))
        .unified_diff()
        .context_radius(3)
        .header(&a, &b)
        .to_string()
}

fn image_changes(b: Option<&DesiredApp>, h: Option<&DesiredApp>) -> Vec<ImageChange> {
    let empty = BTreeMap::new();
    let bi = b.map_or(&empty, |a| &a.images);
    let hi = h.map_or(&empty, |a| &a.images);
    let names: BTreeSet<&String> = bi.keys().chain(hi.keys()).collect();
    names
        .into_iter()
        .filter(|n| bi.get(*n) != hi.get(*n))
        .map(|n| ImageChange {
            name: n.clone(),
            from: bi.get(n).map(ToString::to_string),
            to: hi.get(n).map(ToString::to_string),
        })
        .collect()
}

/// Keys whose value changed (compared by keyed digest), or that were added or
/// removed. Without a key, keys of a changed secrets file count as changed:
/// the plan cannot tell, and says so.
fn secret_changes(
    b: Option<&DesiredApp>,
    h: Option<&DesiredApp>,
    compared: bool,
    changed: &[String],
) -> Vec<String> {
    let empty = BTreeMap::new();
    let bs = b.map_or(&empty, |a| &a.secrets);
    let hs = h.map_or(&empty, |a| &a.secrets);
    let (Some(_), Some(_)) = (b, h) else {
        // An added or removed app: its files say everything.
        return Vec::new();
    };
    let keys: BTreeSet<&String> = bs.keys().chain(hs.keys()).collect();
    keys.into_iter()
        .filter(|k| match (bs.get(*k), hs.get(*k)) {
            (Some(x), Some(y)) if compared => x.digest != y.digest,
            (Some(x), Some(y)) => x.origin != y.origin || changed.contains(&y.origin),
            _ => true,
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affected_follows_paths() {
        let check = |paths: &[&str], all: bool, clients: &[&str]| {
            let paths: Vec<String> = paths.iter().map(|s| s.to_string()).collect();
            let a = Affected::from_paths(&paths);
            assert_eq!(a.all, all, "{paths:?}");
            assert_eq!(
                a.clients.iter().map(String::as_str).collect::<Vec<_>>(),
                clients,
                "{paths:?}"
            );
        };
        check(&["clients/alpha.yaml"], false, &["alpha"]);
        check(
            &["secrets/clients/beta.sops.yaml", "README.md"],
            false,
            &["beta"],
        );
        check(&["pipelines/apps/whoami/compose.yaml.j2"], true, &[]);
        check(&["secrets/shared.sops.yaml"], true, &[]);
        check(&["src/main.rs", "pipelines/pipeline.yaml"], false, &[]);
        check(&["clients/nested/x.yaml"], false, &[]);
    }

    /// The hash as it was first defined: the plan as a JSON value, three
    /// keys removed.
    fn plan_hash_of_value(plan: &Plan) -> String {
        let mut value = serde_json::to_value(plan).expect("a plan serialises");
        if let Some(obj) = value.as_object_mut() {
            obj.remove("plan_hash");
            obj.remove("base");
            obj.remove("inventory");
        }
        let bytes = serde_json::to_vec(&value).expect("a plan serialises");
        hex::encode(Sha256::digest(&bytes))
    }

    #[test]
    fn plan_hash_is_the_hash_of_the_plan_as_a_value_without_three_keys() {
        let mut plan = Plan {
            schema: SCHEMA,
            base: "b".repeat(40),
            head: "h".repeat(40),
            plan_hash: "x".into(),
            secrets_compared: true,
            clients: vec![ClientPlan {
                name: "alpha".into(),
                stage: "canary".into(),
                hosts: vec!["alpha-1".into()],
                hosts_added: Vec::new(),
                hosts_removed: vec!["alpha-0".into()],
                hosts_changed: Vec::new(),
                reasons: vec!["clients/alpha.yaml".into()],
                apps: vec![AppPlan {
                    name: "web".into(),
                    action: Action::Update,
                    files: vec![FileDiff {
                        path: "a.env".into(),
                        hosts: vec!["alpha-1".into()],
                        diff: unified_diff("a.env", Some("A=1\n"), Some("A=\"2\" ü\n")),
                    }],
                    images: vec![ImageChange {
                        name: "web".into(),
                        from: None,
                        to: Some("web:2".into()),
                    }],
                    secrets_changed: vec!["pw".into()],
                }],
            }],
            unaffected: 7,
            inventory: Vec::new(),
        };
        assert_eq!(plan_hash(&plan), plan_hash_of_value(&plan));
        plan.secrets_compared = false;
        plan.clients.clear();
        assert_eq!(plan_hash(&plan), plan_hash_of_value(&plan));
        plan.inventory.push(ResolvedHosts::new(
            "beta",
            "env=prod",
            Ok(vec!["s1".into()]),
            None,
        ));
        let with_inventory = plan_hash(&plan);
        assert_eq!(with_inventory, plan_hash_of_value(&plan));
        // The inventory itself is not hashed.
        plan.inventory[0].hosts = None;
        assert_eq!(plan_hash(&plan), with_inventory);
    }

    #[test]
    fn diff_of_added_file_is_against_dev_null() {
        let d = unified_diff("app.env", None, Some("A=1\n"));
        assert!(d.starts_with("--- /dev/null\n+++ b/app.env\n"), "{d}");
        assert!(d.contains("+A=1"), "{d}");
    }
}

#[cfg(test)]
mod every_client_tests {
    use super::*;
    use crate::config::FleetFiles;

    const ALPHA: &str = "domain: alpha.org\ngroup: canary\napps: [web]\nhosts: [{name: alpha-1, address: 203.0.113.10}]\n";

    /// `base`, `head`: the text of `clients/alpha.yaml` at each side (`None`:
    /// no such file); `expect`: whether the plan of that change must read
    /// every client to check the rules over the whole fleet.
    #[test]
    fn every_client_is_read_when_a_change_can_break_a_fleet_rule() {
        let check = |paths: &[&str], base: Option<&str>, head: Option<&str>, expect: bool| {
            let side = |text: Option<&str>| {
                FleetFiles::in_memory(
                    &text
                        .map(|t| ("clients/alpha.yaml".to_string(), t.to_string()))
                        .into_iter()
                        .collect::<Vec<_>>(),
                )
            };
            let paths: Vec<String> = paths.iter().map(|s| s.to_string()).collect();
            let got =
                Affected::from_paths(&paths).needs_every_client(&paths, &side(base), &side(head));
            assert_eq!(got, expect, "{paths:?}: {base:?} → {head:?}");
        };
        let c = &["clients/alpha.yaml"][..];
        // What a client runs: no fleet rule can break.
        check(
            c,
            Some(ALPHA),
            Some(&ALPHA.replace("[web]", "[web, api]")),
            false,
        );
        check(
            c,
            Some(ALPHA),
            Some(&format!("{ALPHA}vars: {{port: 8081}}\n")),
            false,
        );
        check(
            c,
            Some(ALPHA),
            Some(&ALPHA.replace("203.0.113.10", "203.0.113.11")),
            false,
        );
        // Its group or host names: a stage may empty, a name may clash.
        check(
            c,
            Some(ALPHA),
            Some(&ALPHA.replace("group: canary", "group: production")),
            true,
        );
        check(
            c,
            Some(ALPHA),
            Some(&ALPHA.replace("alpha-1", "beta-1")),
            true,
        );
        check(
            c,
            Some(ALPHA),
            Some(&ALPHA.replace("}]", "}, {name: alpha-2, address: 203.0.113.11}]")),
            true,
        );
        // Added or removed.
        check(c, None, Some(ALPHA), true);
        check(c, Some(ALPHA), None, true);
        // Unreadable at head: its own validation says why; the rules are
        // checked without it, as `check` does.
        check(c, Some(ALPHA), Some("group: [\n"), true);
        // The pipeline: a group may lose its stage, a stage its clients.
        check(&["pipelines/pipeline.yaml"], Some(ALPHA), Some(ALPHA), true);
        check(&["README.md"], Some(ALPHA), Some(ALPHA), false);
        check(
            &["secrets/clients/alpha.sops.yaml"],
            Some(ALPHA),
            Some(ALPHA),
            false,
        );
        // Every client is read in full anyway.
        check(
            &["pipelines/apps/web/app.yaml"],
            Some(ALPHA),
            Some(ALPHA),
            true,
        );
    }
}

#[cfg(test)]
mod same_inputs_tests {
    use super::*;
    use crate::config::FleetFiles;
    use crate::desired::{DecryptCache, prepare, prepare_reusing};
    use crate::render::Reuse;
    use crate::secrets::Keyring;

    /// Two clients: alpha runs `web`, beta runs `api`; `web_template` is
    /// web's only template.
    fn fleet(web_template: &str) -> FleetFiles {
        let files = [
            (
                "pipelines/pipeline.yaml",
                "stages: [{name: canary, group: canary}]\n",
            ),
            (
                "pipelines/apps/web/app.yaml",
                "runtime: compose\nfiles: {a.env: a.env.j2}\n",
            ),
            ("pipelines/apps/web/a.env.j2", web_template),
            (
                "pipelines/apps/api/app.yaml",
                "runtime: compose\nfiles: {b.env: b.env.j2}\n",
            ),
            ("pipelines/apps/api/b.env.j2", "B={{ client.name }}\n"),
            (
                "clients/alpha.yaml",
                "domain: alpha.org\ngroup: canary\napps: [web]\nhosts: [{name: alpha-1, address: 203.0.113.10}]\n",
            ),
            (
                "clients/beta.yaml",
                "domain: beta.org\ngroup: canary\napps: [api]\nhosts: [{name: beta-1, address: 203.0.113.11}]\n",
            ),
        ];
        FleetFiles::in_memory(
            &files
                .iter()
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    /// A side of a test plan: `commit <rev>`.
    fn side<'a>(rev: &str, prepared: &'a Prepared<'a>) -> Side<'a> {
        Side {
            rev: rev.to_string(),
            label: format!("commit {rev}"),
            prepared,
        }
    }

    fn paths(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// alpha's file is the same blob at both sides, so base reuses head's
    /// validated client; its app's template changed, so it is still
    /// rendered at both sides and compared. beta's inputs are all the
    /// same: rendered once, not in the plan.
    #[test]
    fn a_client_whose_file_is_the_same_is_still_rendered_when_its_template_changed() {
        // Without secrets in the fleet, a configured key changes nothing.
        let keyring = Keyring::from_env().expect("a keyring");
        let cache = DecryptCache::default();
        let (files_b, files_h) = (fleet("A=1\n"), fleet("A={{ client.name }}\n"));
        let (prepared_h, problems) = prepare(&files_h, &keyring, &cache);
        assert!(problems.is_empty(), "{problems:?}");
        let (prepared_b, problems) = prepare_reusing(
            &files_b,
            &keyring,
            &cache,
            Some(config::Clean::new(&files_h, &prepared_h.fleet)),
        );
        assert!(problems.is_empty(), "{problems:?}");
        let (base, head) = (side("b", &prepared_b), side("h", &prepared_h));
        let changed = paths(&["pipelines/apps/web/a.env.j2"]);
        let inputs = ChangedInputs::of(&changed);
        assert!(!inputs.same_at_both("alpha", &base, &head));
        assert!(inputs.same_at_both("beta", &base, &head));

        let plan = compare(&base, &head, &changed, false, "h").expect("a plan");
        assert_eq!(plan.unaffected, 1);
        let [alpha] = &plan.clients[..] else {
            panic!("{:?}", plan.clients)
        };
        assert_eq!(alpha.name, "alpha");
        assert_eq!(alpha.reasons, changed);
        let [web] = &alpha.apps[..] else {
            panic!("{:?}", alpha.apps)
        };
        assert_eq!((web.name.as_str(), web.action), ("web", Action::Update));
        assert_eq!(web.files.len(), 1);
        assert!(
            web.files[0].diff.contains("-A=1\n+A=alpha\n"),
            "{}",
            web.files[0].diff
        );
    }

    /// Base renders with what it takes from head exactly as it renders on
    /// its own: a changed template, a template that includes a changed one,
    /// a changed app.yaml, a blue_green app (lent whole or not at all).
    #[test]
    fn base_renders_the_same_with_what_it_takes_from_head() {
        let fleet = |changes: &[(&str, &str)]| {
            let mut files: BTreeMap<&str, &str> = [
                (
                    "pipelines/pipeline.yaml",
                    "stages: [{name: canary, group: canary}]\nproxy: {kind: caddy}\n",
                ),
                (
                    "pipelines/apps/web/app.yaml",
                    "runtime: compose\nfiles: {a.env: a.env.j2, b.conf: b.conf.j2, c.txt: c.j2}\n\
                     routes: [{hosts: [\"{{ client.domain }}\"], port: \"{{ client.vars.port }}\"}]\n\
                     health: [{http: \"http://{{ host.address }}/health\"}]\n",
                ),
                ("pipelines/apps/web/a.env.j2", "A={{ client.name }}-{{ host.name }}\n"),
                ("pipelines/apps/web/b.conf.j2", "B=1\n"),
                (
                    "pipelines/apps/web/c.j2",
                    "C={% include \"web/b.conf.j2\" %}",
                ),
                (
                    "pipelines/apps/api/app.yaml",
                    "runtime: compose\nfiles: {x: x.j2}\nstrategy: blue_green\nslot_ports: [9000, 9001]\n",
                ),
                ("pipelines/apps/api/x.j2", "PORT={{ release.port }}\n"),
                (
                    "clients/alpha.yaml",
                    "domain: alpha.org\ngroup: canary\napps: [web, api]\nvars: {port: 8080}\n\
                     hosts: [{name: alpha-1, address: 203.0.113.10}, {name: alpha-2, address: 203.0.113.11}]\n",
                ),
            ]
            .into();
            files.extend(changes.iter().copied());
            FleetFiles::in_memory(
                &files
                    .iter()
                    .map(|(p, t)| (p.to_string(), t.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        let keyring = Keyring::from_env().expect("a keyring");
        let cache = DecryptCache::default();
        let files_b = fleet(&[]);
        let (prepared_b, problems) = prepare(&files_b, &keyring, &cache);
        assert!(problems.is_empty(), "{problems:?}");
        for (path, text) in [
            ("pipelines/apps/web/b.conf.j2", "B=2\n"),
            ("pipelines/apps/web/a.env.j2", "A={{ host.address }}\n"),
            (
                "pipelines/apps/web/app.yaml",
                "runtime: compose\nfiles: {a.env: a.env.j2, b.conf: b.conf.j2, c.txt: c.j2}\n",
            ),
            ("pipelines/apps/api/x.j2", "PORT={{ release.port }}!\n"),
        ] {
            let files_h = fleet(&[(path, text)]);
            let (prepared_h, problems) = prepare(&files_h, &keyring, &cache);
            assert!(problems.is_empty(), "{path}: {problems:?}");
            let (base, head) = (side("b", &prepared_b), side("h", &prepared_h));
            let changed = paths(&[path]);
            let inputs = ChangedInputs::of(&changed);
            assert!(inputs.own_inputs_same("alpha", &base, &head), "{path}");
            let (apps, templates) = inputs.same_app_files(&changed, &base, &head);
            let render = |reuse: Option<&Reuse>| {
                prepared_b
                    .render_reusing("alpha", SecretView::Masked, "h", reuse)
                    .expect("a client")
                    .expect("renders")
            };
            let prior = prepared_h
                .render("alpha", SecretView::Masked, "h")
                .expect("a client")
                .expect("renders");
            let reuse = Reuse {
                prior: &prior,
                apps: &apps,
                templates: &templates,
            };
            assert_eq!(render(Some(&reuse)), render(None), "{path}");
            // What is lent is taken, not rendered again: head's render with
            // every file marked shows which files came from it.
            let mut marked = prior.clone();
            for app in marked.apps.values_mut() {
                for files in app.files.values_mut() {
                    for text in files.values_mut() {
                        *text = "LENT".into();
                    }
                }
            }
            let lent = render(Some(&Reuse {
                prior: &marked,
                apps: &apps,
                templates: &templates,
            }));
            let web = &lent.apps["web"].files["alpha-1"];
            assert_eq!(
                web["a.env"] == "LENT",
                templates.contains("web/a.env.j2"),
                "{path}"
            );
            assert_ne!(web["c.txt"], "LENT", "{path}");
            assert!(
                !templates.contains("web/c.j2"),
                "it includes another template"
            );
            // Lent only by an app whose app.yaml is the same.
            assert_eq!(
                templates.contains("web/a.env.j2"),
                !path.ends_with("/a.env.j2") && !path.ends_with("web/app.yaml"),
                "{path}"
            );
        }
    }

    /// Which changed paths make a client render at both sides.
    #[test]
    fn inputs_that_change_every_client_or_one() {
        let keyring = Keyring::from_env().expect("a keyring");
        let cache = DecryptCache::default();
        let files = fleet("A=1\n");
        let (prepared, _) = prepare(&files, &keyring, &cache);
        let side = Side {
            rev: "x".into(),
            label: "commit x".into(),
            prepared: &prepared,
        };
        let check = |changed: &[&str], alpha: bool, beta: bool| {
            let changed = paths(changed);
            let inputs = ChangedInputs::of(&changed);
            assert_eq!(
                (
                    inputs.same_at_both("alpha", &side, &side),
                    inputs.same_at_both("beta", &side, &side)
                ),
                (alpha, beta),
                "{changed:?}"
            );
        };
        check(&[], true, true);
        check(&["README.md"], true, true);
        check(&["clients/alpha.yaml"], false, true);
        check(&["secrets/clients/beta.sops.yaml"], true, false);
        check(&["pipelines/apps/api/b.env.j2"], true, false);
        check(&["pipelines/apps/web/app.yaml"], false, true);
        check(&["pipelines/pipeline.yaml"], false, false);
        check(&["secrets/shared.sops.yaml"], false, false);
        check(&["pipelines/known_hosts"], false, false);
        check(&["clients/gamma.yaml"], true, true);
        // Not a client or app of this fleet's layout: read as shared.
        check(&["pipelines/apps/web"], false, false);
        // A client absent on one side always renders at both.
        let empty = FleetFiles::in_memory(&[]);
        let (none, _) = prepare(&empty, &keyring, &cache);
        let nothing = Side {
            rev: "y".into(),
            label: "commit y".into(),
            prepared: &none,
        };
        assert!(!ChangedInputs::of(&[]).same_at_both("alpha", &nothing, &side));
    }
}
