//! The desired state of a fleet at one snapshot: validate, decrypt, render.
//!
//! Pure apart from CPU: takes the bytes `config::load` read. Clients render in
//! parallel on every core; each secrets file decrypts once per content, however
//! many commits and clients share it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::config::{self, Client, Fleet, FleetFiles};
use crate::error::Diagnostic;
use crate::par;
use crate::render::{ClientSecrets, DesiredClient, Renderer, Reuse, SecretView};
use crate::secrets::{Keyring, SecretMap, SopsFile};

/// Decrypted files, by content: the base and head of a plan usually share
/// most of them.
#[derive(Default)]
pub struct DecryptCache {
    done: Mutex<HashMap<[u8; 32], Decrypted>>,
}

type Decrypted = Result<Arc<SecretMap>, Diagnostic>;

impl DecryptCache {
    fn decrypt(&self, file: &SopsFile, keyring: &Keyring) -> Result<Arc<SecretMap>, Diagnostic> {
        let mut h = Sha256::new();
        h.update(file.path.as_bytes());
        h.update(b"\0");
        h.update(file.text().as_bytes());
        let key: [u8; 32] = h.finalize().into();
        if let Some(hit) = self.done.lock().expect("cache lock").get(&key) {
            return hit.clone();
        }
        let result = file.decrypt(keyring).map(Arc::new);
        self.done
            .lock()
            .expect("cache lock")
            .insert(key, result.clone());
        result
    }
}

/// A fleet at one snapshot, validated and rendered.
pub struct Desired {
    pub fleet: Fleet,
    pub clients: BTreeMap<String, DesiredClient>,
}

/// A snapshot ready to render clients one by one: validated, templates
/// compiled, shared secrets decrypted. Holds none of the files it was
/// prepared from (a secrets file is decrypted from its parsed `SopsFile`):
/// a plan lets both sides' files go before it renders.
pub struct Prepared<'a> {
    pub fleet: Fleet,
    renderer: Renderer,
    shared: Option<Arc<SecretMap>>,
    keyring: &'a Keyring,
    cache: &'a DecryptCache,
}

/// Prepares `files` for rendering. Returns every problem found so far beside
/// the valid parts: callers may render the valid clients (to find more
/// problems) but must not act on a snapshot that has any.
pub fn prepare<'a>(
    files: &FleetFiles,
    keyring: &'a Keyring,
    cache: &'a DecryptCache,
) -> (Prepared<'a>, Vec<Diagnostic>) {
    prepare_reusing(files, keyring, cache, None)
}

/// Like [`prepare`], reusing the clients of `prior` (a snapshot prepared
/// without any problem) whose files did not change (see
/// `config::validate_reusing`).
pub fn prepare_reusing<'a>(
    files: &FleetFiles,
    keyring: &'a Keyring,
    cache: &'a DecryptCache,
    prior: Option<config::Clean>,
) -> (Prepared<'a>, Vec<Diagnostic>) {
    let (fleet, mut problems) = config::validate_reusing(files, prior);
    let (renderer, template_problems) = Renderer::new(&fleet);
    problems.extend(template_problems);
    let shared = match (&fleet.shared_secrets, keyring.can_decrypt()) {
        (Some(f), true) => match cache.decrypt(f, keyring) {
            Ok(s) => Some(s),
            Err(d) => {
                problems.push(d);
                None
            }
        },
        _ => None,
    };
    if keyring.can_decrypt() {
        problems.extend(undecryptable_secrets_of_invalid_clients(
            files, &fleet, keyring, cache,
        ));
    }
    let prepared = Prepared {
        fleet,
        renderer,
        shared,
        keyring,
        cache,
    };
    (prepared, problems)
}

impl Prepared<'_> {
    /// Renders one valid client; `None` when the snapshot has no such client.
    pub fn render(
        &self,
        client: &str,
        view: SecretView,
        rev: &str,
    ) -> Option<Result<DesiredClient, Vec<Diagnostic>>> {
        self.render_reusing(client, view, rev, None)
    }

    /// [`Prepared::render`], taking from `reuse` what renders the same
    /// (see [`Reuse`]).
    pub fn render_reusing(
        &self,
        client: &str,
        view: SecretView,
        rev: &str,
        reuse: Option<&Reuse>,
    ) -> Option<Result<DesiredClient, Vec<Diagnostic>>> {
        let client = self.fleet.clients.get(client)?;
        Some(
            client_secrets(
                &self.fleet,
                client,
                self.shared.as_deref(),
                self.keyring,
                self.cache,
            )
            .and_then(|secrets| {
                self.renderer
                    .render_client(&self.fleet, client, &secrets, view, rev, reuse)
            }),
        )
    }
}

/// Everything a snapshot's selected clients would run.
pub fn compute(
    files: &FleetFiles,
    keyring: &Keyring,
    cache: &DecryptCache,
    view: SecretView,
    rev: &str,
) -> Result<Desired, Vec<Diagnostic>> {
    let (prepared, mut problems) = prepare(files, keyring, cache);
    let names: Vec<&String> = prepared.fleet.clients.keys().collect();
    let rendered = par::map(&names, |name| {
        prepared.render(name, view, rev).expect("a listed client")
    });
    let mut desired = BTreeMap::new();
    for r in rendered {
        match r {
            Ok(d) => {
                desired.insert(d.name.clone(), d);
            }
            Err(p) => problems.extend(p),
        }
    }
    problems.extend(route_conflicts(&desired));
    if !problems.is_empty() {
        return Err(collapse_repeats(problems));
    }
    Ok(Desired {
        fleet: prepared.fleet,
        clients: desired,
    })
}

/// Clients that did not validate are not rendered; their secrets files are
/// still decrypted, so one `check` reports every problem.
fn undecryptable_secrets_of_invalid_clients(
    files: &FleetFiles,
    fleet: &Fleet,
    keyring: &Keyring,
    cache: &DecryptCache,
) -> Vec<Diagnostic> {
    files
        .client_secrets
        .iter()
        .filter(|c| files.selection.contains(c) && files.all_clients.contains(c))
        .filter(|c| !fleet.clients.contains_key(*c))
        .filter_map(|c| {
            let path = config::client_secrets_file(c);
            let bytes = files.files.get(&path)?;
            // Shape problems were reported by validation already.
            let file = SopsFile::parse(&path, bytes).ok()?;
            cache.decrypt(&file, keyring).err()
        })
        .collect()
}

/// The client's secrets merged over the shared ones, decrypted when a key is
/// configured.
fn client_secrets(
    fleet: &Fleet,
    client: &Client,
    shared: Option<&SecretMap>,
    keyring: &Keyring,
    cache: &DecryptCache,
) -> Result<ClientSecrets, Vec<Diagnostic>> {
    let mut origin = BTreeMap::new();
    if let Some(f) = &fleet.shared_secrets {
        for key in f.keys.keys() {
            origin.insert(key.clone(), f.path.clone());
        }
    }
    if let Some(f) = &client.secrets {
        for key in f.keys.keys() {
            origin.insert(key.clone(), f.path.clone());
        }
    }
    if !keyring.can_decrypt() {
        return Ok(ClientSecrets {
            values: None,
            origin,
        });
    }
    let own = match &client.secrets {
        Some(f) => Some(cache.decrypt(f, keyring).map_err(|d| vec![d])?),
        None => None,
    };
    if fleet.shared_secrets.is_some() && shared.is_none() {
        // The shared file did not decrypt: reported once, not for every client.
        return Err(Vec::new());
    }
    let mut merged = BTreeMap::new();
    for map in [shared, own.as_deref()].into_iter().flatten() {
        merged.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let values = merged
        .into_iter()
        .map(|(k, v)| {
            let digest = keyring.digest(&k, &v);
            (k, (v, digest))
        })
        .collect();
    Ok(ClientSecrets {
        values: Some(values),
        origin,
    })
}

/// A broken shared template fails the same way for every client that uses
/// it: report it once, with how often it happened.
pub fn collapse_repeats(problems: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut out: Vec<(Diagnostic, usize)> = Vec::new();
    let mut index: HashMap<(String, Option<String>, Option<u32>, String), usize> = HashMap::new();
    for d in problems {
        let base = d
            .message
            .split(" (rendering for ")
            .next()
            .unwrap_or_default()
            .to_string();
        let key = (d.file.clone(), d.field.clone(), d.line, base);
        match index.get(&key) {
            Some(&i) => out[i].1 += 1,
            None => {
                index.insert(key, out.len());
                out.push((d, 0));
            }
        }
    }
    out.into_iter()
        .map(|(mut d, more)| {
            if more > 0 {
                d.message = format!("{} and {more} more", d.message.trim_end_matches(')'));
                d.message.push(')');
            }
            d
        })
        .collect()
}

/// Routes that cannot all be served: two apps claiming the same host name
/// and path on one host, or two clients with routes on one machine (each
/// client's proxy would listen on the same port). One host is one address
/// and SSH port; Hetzner clients are resolved only at deploy time.
pub fn route_conflicts(clients: &BTreeMap<String, DesiredClient>) -> Vec<Diagnostic> {
    use std::collections::btree_map::Entry;
    let mut problems = Vec::new();
    // (address, port) → (client, host) with routes.
    let mut machines: BTreeMap<(String, u16), (String, String)> = BTreeMap::new();
    for c in clients.values() {
        for host in &c.hosts {
            // (name, path) → app
            let mut claimed: BTreeMap<(String, String), &str> = BTreeMap::new();
            let mut any = false;
            for (app, d) in &c.apps {
                for r in d.routes.get(&host.name).into_iter().flatten() {
                    any = true;
                    let path = r.path.clone().unwrap_or_else(|| "/".into());
                    for h in &r.hosts {
                        match claimed.entry((h.clone(), path.clone())) {
                            Entry::Vacant(v) => {
                                v.insert(app);
                            }
                            Entry::Occupied(o) if *o.get() != app.as_str() => problems.push(
                                Diagnostic::new(
                                    format!("{}/{app}/app.yaml", crate::config::APPS_DIR),
                                    format!(
                                        "`{h}{path}` is routed by both `{}` and `{app}` on host {} of client {}",
                                        o.get(),
                                        host.name,
                                        c.name
                                    ),
                                )
                                .field("routes")
                                .hint("one app per host name and path on a host: change one route's host name or path, or run the apps on different hosts"),
                            ),
                            Entry::Occupied(_) => {}
                        }
                    }
                }
            }
            if !any || host.address.starts_with("(hcloud") {
                continue;
            }
            let key = (host.address.clone(), host.port);
            match machines.get(&key) {
                Some((other, other_host)) if other != &c.name => problems.push(
                    Diagnostic::new(
                        crate::config::client_file(&c.name),
                        format!(
                            "host {} is the same machine ({}:{}) as host {other_host} of client {other}, and both have routes",
                            host.name, key.0, key.1
                        ),
                    )
                    .field("hosts")
                    .hint("each client runs its own proxy on its hosts: give the clients different hosts, or drop the routes of one"),
                ),
                _ => {
                    machines.insert(key, (c.name.clone(), host.name.clone()));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Host;
    use crate::render::{DesiredApp, RenderedRoute};

    /// A route of `names` at `path` to port 8080.
    fn route(names: &[&str], path: Option<&str>) -> RenderedRoute {
        RenderedRoute {
            hosts: names.iter().map(|n| n.to_string()).collect(),
            path: path.map(str::to_string),
            service: None,
            port: 8080,
            health: None,
            directives: Vec::new(),
        }
    }

    fn host(name: &str, address: &str, port: u16) -> Host {
        Host {
            name: name.into(),
            address: address.into(),
            port,
            user: "deploy".into(),
            deploy_root: "/opt/fleetgate".into(),
        }
    }

    /// An app with `routes` on every host in `hosts`.
    fn app(hosts: &[Host], routes: &[RenderedRoute]) -> DesiredApp {
        DesiredApp {
            images: BTreeMap::new(),
            files: BTreeMap::new(),
            health: BTreeMap::new(),
            secrets: BTreeMap::new(),
            exposed: Vec::new(),
            routes: hosts
                .iter()
                .map(|h| (h.name.clone(), routes.to_vec()))
                .collect(),
            green: None,
        }
    }

    fn client(name: &str, hosts: Vec<Host>, apps: Vec<(&str, DesiredApp)>) -> DesiredClient {
        DesiredClient {
            name: name.into(),
            group: "canary".into(),
            hosts,
            apps: apps.into_iter().map(|(n, a)| (n.to_string(), a)).collect(),
        }
    }

    fn conflicts(clients: Vec<DesiredClient>) -> Vec<String> {
        let clients = clients.into_iter().map(|c| (c.name.clone(), c)).collect();
        route_conflicts(&clients)
            .iter()
            .map(crate::config::validate::testing::render)
            .collect()
    }

    #[test]
    fn one_app_may_route_a_name_and_path_twice() {
        let hosts = vec![host("alpha-1", "203.0.113.10", 22)];
        let web = app(
            &hosts,
            &[
                route(&["a.example.org"], None),
                route(&["a.example.org"], Some("/")),
            ],
        );
        assert_eq!(
            conflicts(vec![client("alpha", hosts, vec![("web", web)])]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn two_apps_routing_one_name_and_path_on_a_host() {
        let hosts = vec![
            host("alpha-1", "203.0.113.10", 22),
            host("alpha-2", "203.0.113.11", 22),
        ];
        // On alpha-1 both claim a.example.org/; on alpha-2 only web runs.
        let mut api = app(
            &hosts[..1],
            &[route(&["b.example.org", "a.example.org"], None)],
        );
        api.routes.insert("alpha-2".into(), Vec::new());
        let web = app(&hosts, &[route(&["a.example.org"], Some("/"))]);
        assert_eq!(
            conflicts(vec![client(
                "alpha",
                hosts,
                vec![("api", api), ("web", web)]
            )]),
            [
                "pipelines/apps/web/app.yaml routes: `a.example.org/` is routed by both `api` and `web` on host alpha-1 of client alpha"
            ]
        );
    }

    #[test]
    fn other_paths_and_other_names_are_fine() {
        let hosts = vec![host("alpha-1", "203.0.113.10", 22)];
        let web = app(&hosts, &[route(&["a.example.org"], None)]);
        let api = app(
            &hosts,
            &[
                route(&["a.example.org"], Some("/api")),
                route(&["b.example.org"], None),
            ],
        );
        assert_eq!(
            conflicts(vec![client(
                "alpha",
                hosts,
                vec![("api", api), ("web", web)]
            )]),
            Vec::<String>::new()
        );
    }

    /// Each client runs its own proxy on its hosts: two clients with
    /// routes on one machine (address and SSH port) would both listen on
    /// its HTTP port.
    #[test]
    fn two_clients_with_routes_on_one_machine() {
        let on = |name: &str, address: &str, port: u16, routed: bool| {
            let hosts = vec![host(&format!("{name}-1"), address, port)];
            let routes = if routed {
                vec![route(&[&format!("{name}.example.org")], None)]
            } else {
                Vec::new()
            };
            let web = app(&hosts, &routes);
            client(name, hosts, vec![("web", web)])
        };
        assert_eq!(
            conflicts(vec![
                on("alpha", "203.0.113.10", 22, true),
                on("beta", "203.0.113.10", 22, true),
            ]),
            [
                "clients/beta.yaml hosts: host beta-1 is the same machine (203.0.113.10:22) as host alpha-1 of client alpha, and both have routes"
            ]
        );
        // Another SSH port is another machine (a forwarded port, a VM).
        assert_eq!(
            conflicts(vec![
                on("alpha", "203.0.113.10", 22, true),
                on("beta", "203.0.113.10", 2222, true),
            ]),
            Vec::<String>::new()
        );
        // Only one of them has routes: one proxy.
        assert_eq!(
            conflicts(vec![
                on("alpha", "203.0.113.10", 22, true),
                on("beta", "203.0.113.10", 22, false),
            ]),
            Vec::<String>::new()
        );
        assert_eq!(
            conflicts(vec![
                on("alpha", "203.0.113.10", 22, false),
                on("beta", "203.0.113.10", 22, true),
            ]),
            Vec::<String>::new()
        );
    }

    /// Hetzner clients render for one placeholder host until deploy time:
    /// two of them are not one machine.
    #[test]
    fn hcloud_placeholder_hosts_are_not_machines() {
        let on = |name: &str| {
            let hosts = vec![host("hcloud", "(hcloud: env=prod)", 22)];
            let web = app(&hosts, &[route(&[&format!("{name}.example.org")], None)]);
            client(name, hosts, vec![("web", web)])
        };
        assert_eq!(
            conflicts(vec![on("alpha"), on("beta")]),
            Vec::<String>::new()
        );
    }
}
