//! Where a client's hosts come from: the static list in its file, or (later)
//! the Hetzner Cloud API by label selector. One trait, so deploy, status and
//! rollback never care which.

pub mod selector;

use crate::config::{Client, Host, Hosts};

/// Resolves a client's hosts.
pub trait Inventory {
    fn hosts(&self, client: &Client) -> Result<Vec<Host>, String>;
}

/// Hosts listed in `clients/<name>.yaml`.
pub struct Static;

impl Inventory for Static {
    fn hosts(&self, client: &Client) -> Result<Vec<Host>, String> {
        match &client.hosts {
            Hosts::Static(hosts) => Ok(hosts.clone()),
            Hosts::Hcloud { label_selector, .. } => Err(format!(
                "client `{}` selects its hosts from Hetzner Cloud (`{label_selector}`), which this build cannot resolve yet; list its hosts in clients/{}.yaml",
                client.name, client.name
            )),
        }
    }
}
