//! Where a client's hosts come from: the static list in its file, or the
//! Hetzner Cloud API by label selector. One trait, so deploy, run, status,
//! rollback, plan and removals never care which; one value per command
//! ([`for_command`]), which resolves each selector once and keeps the
//! answer for the rest of the command.

pub mod selector;

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::config::{self, Client, Fleet, Host, Hosts, Network};
use crate::error::{Error, Message, Result};
use crate::hcloud;

/// Resolves a client's hosts.
pub trait Inventory {
    /// Every host the client's config names or selects now; may be empty
    /// (see [`hosts`] for the rule that a client with apps has one).
    fn resolve(&self, client: &Client) -> Result<Vec<Host>>;
    /// Whether [`Inventory::resolve`] can answer for `client` at all: false
    /// for a Hetzner client without `HCLOUD_TOKEN` (`check` and `plan` say
    /// so and go on; the commands that act stop).
    fn can_resolve(&self, client: &Client) -> bool;
    /// The Hetzner Cloud API this inventory asks, if any (snapshots and
    /// restores use the same client, token and endpoint).
    fn cloud(&self) -> Option<&hcloud::Client> {
        None
    }
    /// The id of the Hetzner server named `name` it resolved, if any.
    fn server_id(&self, _name: &str) -> Option<u64> {
        None
    }
}

/// The client's hosts, at least one when it has apps: a selector that
/// matches no server would otherwise deploy nothing and say it passed.
pub fn hosts(inventory: &dyn Inventory, client: &Client) -> Result<Vec<Host>> {
    let hosts = inventory.resolve(client)?;
    if let Hosts::Hcloud { label_selector, .. } = &client.hosts
        && hosts.is_empty()
        && !client.apps.is_empty()
    {
        return Err(Error::Usage(
            Message::from(format!(
                "{}: hosts.hcloud.label_selector `{label_selector}` selects no server in Hetzner Cloud, and client `{}` has apps",
                config::client_file(&client.name),
                client.name
            ))
            .hint("label its servers to match (e.g. `hcloud server add-label NAME client=…`), or fix the selector"),
        ));
    }
    Ok(hosts)
}

/// Replaces each named client's host config by the hosts `inventory`
/// resolves now, so what is rendered and deployed is the real servers
/// (named by their server names) rather than the selector.
pub fn resolve_fleet(
    inventory: &dyn Inventory,
    fleet: &mut Fleet,
    clients: &[String],
) -> Result<()> {
    for name in clients {
        let Some(client) = fleet.clients.get(name) else {
            continue;
        };
        if matches!(client.hosts, Hosts::Hcloud { .. }) {
            let resolved = hosts(inventory, client)?;
            std::sync::Arc::make_mut(fleet.clients.get_mut(name).expect("just found")).hosts =
                Hosts::Static(resolved);
        }
    }
    Ok(())
}

/// The inventory of one command: static clients from their file, Hetzner
/// clients from the API (if `HCLOUD_TOKEN` is set), each selector and
/// network asked once.
pub struct Live {
    cloud: Option<hcloud::Client>,
    cache: Mutex<BTreeMap<Question, Vec<Server>>>,
    /// Every server resolved so far: name → id.
    ids: Mutex<BTreeMap<String, u64>>,
}

/// A selector and a network, as text: what one resolution answers.
type Question = (String, String);
/// A selected server's name and address.
type Server = (String, String);

/// The command's inventory, from the environment (`HCLOUD_TOKEN`,
/// `HCLOUD_ENDPOINT`; an endpoint that is not an http(s) URL is exit 2).
pub fn for_command() -> Result<Live> {
    let cloud = match hcloud::Settings::from_env()? {
        Some(settings) => Some(hcloud::Client::connect(&settings)?),
        None => None,
    };
    Ok(Live::over(cloud))
}

impl Live {
    pub fn over(cloud: Option<hcloud::Client>) -> Live {
        Live {
            cloud,
            cache: Mutex::new(BTreeMap::new()),
            ids: Mutex::new(BTreeMap::new()),
        }
    }

    fn servers(
        &self,
        client: &Client,
        selector: &selector::Selector,
        network: &Network,
    ) -> Result<Vec<(String, String)>> {
        let key = (selector.to_string(), format!("{network:?}"));
        if let Some(found) = self.cache.lock().expect("not poisoned").get(&key) {
            return Ok(found.clone());
        }
        let Some(cloud) = &self.cloud else {
            return Err(no_token(client, selector));
        };
        let private_id = match network {
            Network::Private(name) => cloud.network_id(name)?,
            _ => None,
        };
        let mut out = Vec::new();
        for server in cloud.servers(selector)? {
            let address = hcloud::api::address(&server, network, private_id).map_err(|why| {
                Error::Usage(
                    Message::from(format!(
                        "{}: server `{}` (selected by `{selector}`) has no address to connect to: {why}",
                        config::client_file(&client.name),
                        server.name
                    ))
                    .hint("pick the network its servers have (hosts.hcloud.network: `public`, `public-ipv6` or `{private: NAME}`)"),
                )
            })?;
            self.ids
                .lock()
                .expect("not poisoned")
                .insert(server.name.clone(), server.id);
            out.push((server.name, address));
        }
        out.sort();
        tracing::info!(
            "Hetzner Cloud: `{selector}` selects {} server(s){}",
            out.len(),
            if out.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    out.iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        self.cache
            .lock()
            .expect("not poisoned")
            .insert(key, out.clone());
        Ok(out)
    }
}

fn no_token(client: &Client, selector: &selector::Selector) -> Error {
    Error::Usage(
        Message::from(format!(
            "client `{}` takes its hosts from Hetzner Cloud (`{selector}` in {}), and {} is not set",
            client.name,
            config::client_file(&client.name),
            hcloud::TOKEN_VAR
        ))
        .hint(format!(
            "set {} to an API token of the project its servers are in (read-only is enough to resolve hosts)",
            hcloud::TOKEN_VAR
        )),
    )
}

impl Inventory for Live {
    fn resolve(&self, client: &Client) -> Result<Vec<Host>> {
        match &client.hosts {
            Hosts::Static(hosts) => Ok(hosts.clone()),
            Hosts::Hcloud {
                label_selector,
                network,
                user,
                port,
                deploy_root,
            } => Ok(self
                .servers(client, label_selector, network)?
                .into_iter()
                .map(|(name, address)| Host {
                    name,
                    address,
                    port: *port,
                    user: user.clone(),
                    deploy_root: deploy_root.clone(),
                })
                .collect()),
        }
    }

    fn can_resolve(&self, client: &Client) -> bool {
        matches!(client.hosts, Hosts::Static(_)) || self.cloud.is_some()
    }

    fn cloud(&self) -> Option<&hcloud::Client> {
        self.cloud.as_ref()
    }

    fn server_id(&self, name: &str) -> Option<u64> {
        self.ids.lock().expect("not poisoned").get(name).copied()
    }
}
