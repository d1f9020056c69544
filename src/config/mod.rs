//! The fleet repository: which files make it up, how they are read from a
//! snapshot, and how they become a validated [`Fleet`].
//!
//! Reading (`load`) is the only I/O; `validate` is a pure function of the bytes
//! read, so the same fleet validates the same way from a commit or a work tree.

pub mod duration;
pub mod model;
pub mod raw;
pub mod ssh_options;
pub mod validate;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub use model::*;

use crate::error::{Diagnostic, Error, Result};
use crate::repo::{Entry, SharedBlobs, Snapshot, symlink_refused};

pub const PIPELINE: &str = "pipelines/pipeline.yaml";
pub const APPS_DIR: &str = "pipelines/apps";
pub const CLIENTS_DIR: &str = "clients";
pub const KNOWN_HOSTS: &str = "pipelines/known_hosts";
pub const TRIVYIGNORE: &str = "pipelines/trivyignore.yaml";
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
    pub all_clients: Names,
    /// Client-secrets files that exist (by client name).
    pub client_secrets: Names,
    pub selection: Selection,
    /// Every client file was read, in full or for its outline only
    /// ([`read_every_client`]): the rules over the whole fleet can run.
    pub every_client: bool,
    /// Problems found while listing (stray files).
    pub problems: Vec<Diagnostic>,
}

/// A sorted set of names (the clients of a snapshot), built in bulk and
/// searched by bisection: a large fleet's listing must stay cheap, since even a
/// one-client plan lists every client (to count the unaffected ones). Cloning
/// shares the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names(Arc<Vec<String>>);

impl Names {
    fn new(mut names: Vec<String>) -> Names {
        names.sort_unstable();
        names.dedup();
        Names(Arc::new(names))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.binary_search_by(|n| n.as_str().cmp(name)).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.0.iter()
    }

    /// How many names are in `self`, `other` or both.
    pub fn union_len(&self, other: &Names) -> usize {
        let (a, b) = (&self.0, &other.0);
        let (mut i, mut j, mut n) = (0, 0, 0);
        while i < a.len() && j < b.len() {
            match a[i].cmp(&b[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                }
            }
            n += 1;
        }
        n + (a.len() - i) + (b.len() - j)
    }
}

/// Reads the pipeline, every app, the shared secrets, and the selected
/// clients' files with their secrets.
pub fn load(snap: &Snapshot, selection: Selection) -> Result<FleetFiles> {
    load_sharing(
        snap,
        selection,
        &mut SharedBlobs::default(),
        KnownHostsFile::Read,
    )
}

/// Whether [`load_sharing`] reads `pipelines/known_hosts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownHostsFile {
    Read,
    /// A plan: both sides are loaded without it (5 MB at 50,000 hosts);
    /// head's is read only when the change can move a pinned key
    /// (`rollout::pinned_keys`).
    Skip,
}

/// [`load`], the client and client-secrets files read through `shared`:
/// the two sides of a plan read each blob they share once.
pub fn load_sharing(
    snap: &Snapshot,
    selection: Selection,
    shared: &mut SharedBlobs,
    known_hosts: KnownHostsFile,
) -> Result<FleetFiles> {
    // Collected, then made a map in bulk: inserted one by one (in order,
    // as they are listed) a large fleet's map would be half empty.
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in [PIPELINE, SHARED_SECRETS, KNOWN_HOSTS, TRIVYIGNORE] {
        if path == KNOWN_HOSTS && known_hosts == KnownHostsFile::Skip {
            continue;
        }
        if let Some(bytes) = refused(snap.read_shared(path, shared), &mut problems)? {
            files.push((path.to_string(), bytes));
        }
    }
    for app in refused(snap.list(APPS_DIR), &mut problems)? {
        let path = format!("{APPS_DIR}/{}", app.name);
        if app.is_symlink {
            problems.push(symlink_refused(&path));
        } else if app.is_dir {
            read_tree(snap, &path, &mut files, &mut problems)?;
        }
    }
    let mut all_clients = Vec::new();
    let listed = refused(snap.list(CLIENTS_DIR), &mut problems)?;
    // The selected client files, read at once (on every core when many).
    let selected = |entry: &Entry| {
        !entry.is_dir
            && entry
                .name
                .strip_suffix(".yaml")
                .is_some_and(|stem| selection.contains(stem))
    };
    let mut read = read_selected(snap, CLIENTS_DIR, &listed, selected, shared);
    // A path is formatted only for a file read or a problem: a one-client
    // plan lists thousands of clients.
    for mut entry in listed {
        match entry.name.strip_suffix(".yaml") {
            Some(stem) if !entry.is_dir => {
                if selection.contains(stem) {
                    let (path, read) = read.next().expect("read");
                    if let Some(bytes) = refused(read, &mut problems)? {
                        files.push((path, bytes));
                    }
                }
                entry.name.truncate(entry.name.len() - ".yaml".len());
                all_clients.push(entry.name);
            }
            _ if entry.name.starts_with('.') || entry.name.eq_ignore_ascii_case("README.md") => {}
            _ => problems.push(
                Diagnostic::new(
                    format!("{CLIENTS_DIR}/{}", entry.name),
                    "is not a client file",
                )
                .hint("client files are clients/<name>.yaml; move other files elsewhere"),
            ),
        }
    }
    let mut client_secrets = Vec::new();
    let listed = refused(snap.list(CLIENT_SECRETS_DIR), &mut problems)?;
    let selected = |entry: &Entry| {
        entry
            .name
            .strip_suffix(".sops.yaml")
            .is_some_and(|stem| selection.contains(stem))
    };
    let mut read = read_selected(snap, CLIENT_SECRETS_DIR, &listed, selected, shared);
    for mut entry in listed {
        if let Some(stem) = entry.name.strip_suffix(".sops.yaml") {
            if selection.contains(stem) {
                let (path, read) = read.next().expect("read");
                if let Some(bytes) = refused(read, &mut problems)? {
                    files.push((path, bytes));
                }
            }
            entry.name.truncate(entry.name.len() - ".sops.yaml".len());
            client_secrets.push(entry.name);
        }
    }
    Ok(FleetFiles {
        label: snap.label(),
        files: files.into_iter().collect(),
        all_clients: Names::new(all_clients),
        client_secrets: Names::new(client_secrets),
        every_client: selection == Selection::All,
        selection,
        problems,
    })
}

/// Files read at once: each one's path and what reading it gave.
type ReadFiles =
    std::iter::Zip<std::vec::IntoIter<String>, std::vec::IntoIter<Result<Option<Vec<u8>>>>>;

/// The `selected` entries of `dir`, read through `shared`, in their order.
fn read_selected(
    snap: &Snapshot,
    dir: &str,
    listed: &[Entry],
    selected: impl Fn(&Entry) -> bool,
    shared: &mut SharedBlobs,
) -> ReadFiles {
    let chosen: Vec<&Entry> = listed.iter().filter(|e| selected(e)).collect();
    let paths: Vec<String> = chosen.iter().map(|e| format!("{dir}/{}", e.name)).collect();
    let entries: Vec<(&str, &Entry)> = paths.iter().map(String::as_str).zip(chosen).collect();
    let read = snap.read_entries_shared(&entries, shared);
    paths.into_iter().zip(read)
}

impl FleetFiles {
    /// The same pipeline, apps and shared files without any client: a
    /// fleet as it is before its first client (a plan from nothing).
    pub fn without_clients(&self, label: &str) -> FleetFiles {
        FleetFiles {
            label: label.to_string(),
            files: self
                .files
                .iter()
                .filter(|(p, _)| {
                    !p.starts_with(&format!("{CLIENTS_DIR}/"))
                        && !p.starts_with(&format!("{CLIENT_SECRETS_DIR}/"))
                })
                .map(|(p, b)| (p.clone(), b.clone()))
                .collect(),
            all_clients: Names::default(),
            client_secrets: Names::default(),
            selection: Selection::Only(Default::default()),
            problems: Vec::new(),
            // Not a fleet of its own: the rules over every client are head's.
            every_client: false,
        }
    }
}

/// Reads the client files `load` left out, so the rules over the whole fleet
/// (a stage's clients, host names unique, a client's group picked) can be
/// checked against every client. Those clients are not validated in full:
/// only their group and host names are read (see `validate::fleet`).
pub fn read_every_client(snap: &Snapshot, files: &mut FleetFiles) -> Result<()> {
    if files.every_client {
        return Ok(());
    }
    for name in files.all_clients.clone().iter() {
        let path = client_file(name);
        if !files.files.contains_key(&path)
            && let Some(bytes) = refused(snap.read(&path), &mut files.problems)?
        {
            files.files.insert(path, bytes);
        }
    }
    files.every_client = true;
    Ok(())
}

#[cfg(test)]
impl FleetFiles {
    /// A whole fleet from `(path, text)` pairs, as `load` would read it.
    pub fn in_memory(files: &[(String, String)]) -> FleetFiles {
        let clients = files
            .iter()
            .filter_map(|(p, _)| p.strip_prefix("clients/")?.strip_suffix(".yaml"))
            .map(str::to_string)
            .collect();
        let secrets = files
            .iter()
            .filter_map(|(p, _)| {
                p.strip_prefix("secrets/clients/")?
                    .strip_suffix(".sops.yaml")
            })
            .map(str::to_string)
            .collect();
        FleetFiles {
            label: "commit in-memory".into(),
            files: files
                .iter()
                .map(|(p, t)| (p.clone(), t.clone().into_bytes()))
                .collect(),
            all_clients: Names::new(clients),
            client_secrets: Names::new(secrets),
            selection: Selection::All,
            every_client: true,
            problems: Vec::new(),
        }
    }
}

fn read_tree(
    snap: &Snapshot,
    dir: &str,
    files: &mut Vec<(String, Vec<u8>)>,
    problems: &mut Vec<Diagnostic>,
) -> Result<()> {
    for entry in snap.list(dir)? {
        let path = format!("{dir}/{}", entry.name);
        if entry.is_symlink {
            problems.push(symlink_refused(&path));
        } else if entry.is_dir {
            read_tree(snap, &path, files, problems)?;
        } else if let Some(bytes) = snap.read_entry(&path, &entry)? {
            files.push((path, bytes));
        }
    }
    Ok(())
}

/// A symlink where a fleet file or directory should be is one more problem
/// of the fleet, reported with the others; anything else that stops a read
/// stops `load`.
fn refused<T: Default>(read: Result<T>, problems: &mut Vec<Diagnostic>) -> Result<T> {
    match read {
        Err(Error::Invalid {
            problems: found, ..
        }) => {
            // A symlinked `pipelines/` stands in the way of four reads: say it once.
            for d in found {
                if !problems.contains(&d) {
                    problems.push(d);
                }
            }
            Ok(T::default())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Names {
        Names::new(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn names_search_and_union() {
        let a = names(&["b", "a", "c-1", "c"]);
        assert!(a.contains("c-1") && a.contains("a") && !a.contains("d"));
        assert_eq!(
            a.iter().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b", "c", "c-1"]
        );
        let check = |x: &[&str], y: &[&str], expect: usize| {
            assert_eq!(names(x).union_len(&names(y)), expect, "{x:?} ∪ {y:?}");
            assert_eq!(names(y).union_len(&names(x)), expect, "{y:?} ∪ {x:?}");
        };
        check(&["a", "b"], &["a", "b"], 2);
        check(&["a", "b"], &["b", "c"], 3);
        check(&[], &["a"], 1);
        check(&["a", "c", "e"], &["b", "d"], 5);
    }
}
