//! The fleet repository: which files make it up, how they are read from a
//! snapshot, and how they become a validated [`Fleet`].
//!
//! Reading (`load`) is the only I/O; `validate` is a pure function of the bytes
//! read, so the same fleet validates the same way from a commit or a work tree.

pub mod duration;
pub mod model;
pub mod raw;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};

pub use model::*;

use crate::error::{Diagnostic, Result};
use crate::repo::Snapshot;

pub const PIPELINE: &str = "pipelines/pipeline.yaml";
pub const APPS_DIR: &str = "pipelines/apps";
pub const CLIENTS_DIR: &str = "clients";
pub const SHARED_SECRETS: &str = "secrets/shared.sops.yaml";
pub const CLIENT_SECRETS_DIR: &str = "secrets/clients";

pub fn client_file(name: &str) -> String {
    format!("{CLIENTS_DIR}/{name}.yaml")
}

pub fn client_secrets_file(name: &str) -> String {
    format!("{CLIENT_SECRETS_DIR}/{name}.sops.yaml")
}

/// Which clients to read: all of them (`check`), or only those a change can
/// touch (`plan`, so its cost follows the change, not the fleet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Only(BTreeSet<String>),
}

impl Selection {
    pub fn contains(&self, client: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::Only(set) => set.contains(client),
        }
    }
}

/// The bytes of the fleet files at one snapshot.
#[derive(Debug)]
pub struct FleetFiles {
    /// `commit 1a2b…` or `work tree`, for messages.
    pub label: String,
    pub files: BTreeMap<String, Vec<u8>>,
    /// Every client that has a file, selected or not.
    pub all_clients: BTreeSet<String>,
    /// Client-secrets files that exist (by client name).
    pub client_secrets: BTreeSet<String>,
    pub selection: Selection,
    /// Problems found while listing (stray files).
    pub problems: Vec<Diagnostic>,
}

/// The clients that have a file at `snap`, and files in `clients/` that are
/// not client files.
pub fn list_clients(snap: &Snapshot) -> Result<(BTreeSet<String>, Vec<Diagnostic>)> {
    let mut names = BTreeSet::new();
    let mut problems = Vec::new();
    for (entry, is_dir) in snap.list(CLIENTS_DIR)? {
        match entry.strip_suffix(".yaml") {
            Some(stem) if !is_dir => {
                names.insert(stem.to_string());
            }
            _ if entry.starts_with('.') || entry.eq_ignore_ascii_case("README.md") => {}
            _ => problems.push(
                Diagnostic::new(format!("{CLIENTS_DIR}/{entry}"), "is not a client file")
                    .hint("client files are clients/<name>.yaml; move other files elsewhere"),
            ),
        }
    }
    Ok((names, problems))
}

/// Reads the pipeline, every app, the shared secrets, and the selected
/// clients' files with their secrets.
pub fn load(snap: &Snapshot, selection: Selection) -> Result<FleetFiles> {
    let mut files = BTreeMap::new();
    let (all_clients, problems) = list_clients(snap)?;
    let read = |path: String, files: &mut BTreeMap<String, Vec<u8>>| -> Result<()> {
        if let Some(bytes) = snap.read(&path)? {
            files.insert(path, bytes);
        }
        Ok(())
    };
    read(PIPELINE.to_string(), &mut files)?;
    read(SHARED_SECRETS.to_string(), &mut files)?;
    for (app, is_dir) in snap.list(APPS_DIR)? {
        if is_dir {
            read_tree(snap, &format!("{APPS_DIR}/{app}"), &mut files)?;
        }
    }
    let mut client_secrets = BTreeSet::new();
    for (entry, _) in snap.list(CLIENT_SECRETS_DIR)? {
        if let Some(stem) = entry.strip_suffix(".sops.yaml") {
            client_secrets.insert(stem.to_string());
        }
    }
    for client in &all_clients {
        if selection.contains(client) {
            read(client_file(client), &mut files)?;
            if client_secrets.contains(client) {
                read(client_secrets_file(client), &mut files)?;
            }
        }
    }
    Ok(FleetFiles {
        label: snap.label(),
        files,
        all_clients,
        client_secrets,
        selection,
        problems,
    })
}

fn read_tree(snap: &Snapshot, dir: &str, files: &mut BTreeMap<String, Vec<u8>>) -> Result<()> {
    for (entry, is_dir) in snap.list(dir)? {
        let path = format!("{dir}/{entry}");
        if is_dir {
            read_tree(snap, &path, files)?;
        } else if let Some(bytes) = snap.read(&path)? {
            files.insert(path, bytes);
        }
    }
    Ok(())
}
