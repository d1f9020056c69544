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
/// one-client plan lists every client (to count the unaffected ones). The
/// names are packed one after another in one string (50,000 clients: three
/// allocations, not 50,000). Cloning shares the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names(Arc<Packed>);

#[derive(Debug, Default, PartialEq, Eq)]
struct Packed {
    /// Every name, in order, one after another.
    text: String,
    /// Where each name ends in `text` (it starts where the one before ends).
    ends: Vec<usize>,
}

/// Builds [`Names`] from names in any order; in order (a commit's listing
/// almost always is) they are packed as they come.
#[derive(Debug, Default)]
pub struct NamesBuilder {
    packed: Packed,
    /// Every name so far came after the one before it.
    ascending: bool,
}

impl NamesBuilder {
    pub fn push(&mut self, name: &str) {
        let p = &mut self.packed;
        if p.ends.is_empty() {
            self.ascending = true;
        } else if self.ascending {
            let start = p.ends.len().checked_sub(2).map_or(0, |i| p.ends[i]);
            self.ascending = name > &p.text[start..];
        }
        p.text.push_str(name);
        p.ends.push(p.text.len());
    }

    pub fn build(self) -> Names {
        let NamesBuilder { packed, ascending } = self;
        if ascending || packed.ends.is_empty() {
            return Names(Arc::new(packed));
        }
        let unsorted = Names(Arc::new(packed));
        let mut names: Vec<&str> = unsorted.iter().collect();
        names.sort_unstable();
        names.dedup();
        let mut sorted = NamesBuilder::default();
        for name in names {
            sorted.push(name);
        }
        sorted.build()
    }
}

impl Names {
    #[cfg(test)]
    pub fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Names {
        let mut builder = NamesBuilder::default();
        for name in names {
            builder.push(name.as_ref());
        }
        builder.build()
    }

    fn len(&self) -> usize {
        self.0.ends.len()
    }

    fn get(&self, i: usize) -> &str {
        let start = i.checked_sub(1).map_or(0, |j| self.0.ends[j]);
        &self.0.text[start..self.0.ends[i]]
    }

    pub fn contains(&self, name: &str) -> bool {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid).cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// How many names are in `self`, `other` or both.
    pub fn union_len(&self, other: &Names) -> usize {
        let (mut a, mut b) = (self.iter().peekable(), other.iter().peekable());
        let mut n = 0;
        while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
            match x.cmp(y) {
                std::cmp::Ordering::Less => {
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    a.next();
                    b.next();
                }
            }
            n += 1;
        }
        n + a.count() + b.count()
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
    // Visited, not listed: a large fleet's clients are packed into one
    // list of names, and only the selected entries are kept.
    let mut all_clients = NamesBuilder::default();
    let mut chosen = Vec::new();
    let mut strays = Vec::new();
    refused(
        snap.visit(CLIENTS_DIR, |entry| {
            match entry.name.strip_suffix(".yaml") {
                Some(stem) if !entry.is_dir => {
                    if selection.contains(stem) {
                        chosen.push(entry.to_entry());
                    }
                    all_clients.push(stem);
                }
                _ if entry.name.starts_with('.')
                    || entry.name.eq_ignore_ascii_case("README.md") => {}
                _ => strays.push(entry.name.to_string()),
            }
        }),
        &mut problems,
    )?;
    // The selected client files, read at once (on every core when many).
    read_chosen(
        snap,
        CLIENTS_DIR,
        &chosen,
        shared,
        &mut files,
        &mut problems,
    )?;
    strays.sort_unstable();
    for name in strays {
        problems.push(
            Diagnostic::new(format!("{CLIENTS_DIR}/{name}"), "is not a client file")
                .hint("client files are clients/<name>.yaml; move other files elsewhere"),
        );
    }
    let mut client_secrets = NamesBuilder::default();
    let mut chosen = Vec::new();
    refused(
        snap.visit(CLIENT_SECRETS_DIR, |entry| {
            if let Some(stem) = entry.name.strip_suffix(".sops.yaml") {
                if selection.contains(stem) {
                    chosen.push(entry.to_entry());
                }
                client_secrets.push(stem);
            }
        }),
        &mut problems,
    )?;
    read_chosen(
        snap,
        CLIENT_SECRETS_DIR,
        &chosen,
        shared,
        &mut files,
        &mut problems,
    )?;
    Ok(FleetFiles {
        label: snap.label(),
        files: files.into_iter().collect(),
        all_clients: all_clients.build(),
        client_secrets: client_secrets.build(),
        every_client: selection == Selection::All,
        selection,
        problems,
    })
}

/// Reads the entries `chosen` of `dir` through `shared` (at once), into
/// `files`; a symlink among them is one more problem.
fn read_chosen(
    snap: &Snapshot,
    dir: &str,
    chosen: &[Entry],
    shared: &mut SharedBlobs,
    files: &mut Vec<(String, Vec<u8>)>,
    problems: &mut Vec<Diagnostic>,
) -> Result<()> {
    let paths: Vec<String> = chosen.iter().map(|e| format!("{dir}/{}", e.name)).collect();
    let entries: Vec<(&str, &Entry)> = paths.iter().map(String::as_str).zip(chosen).collect();
    let read = snap.read_entries_shared(&entries, shared);
    for (path, read) in paths.into_iter().zip(read) {
        if let Some(bytes) = refused(read, problems)? {
            files.push((path, bytes));
        }
    }
    Ok(())
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
            .filter_map(|(p, _)| p.strip_prefix("clients/")?.strip_suffix(".yaml"));
        let secrets = files.iter().filter_map(|(p, _)| {
            p.strip_prefix("secrets/clients/")?
                .strip_suffix(".sops.yaml")
        });
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
        Names::new(list)
    }

    #[test]
    fn names_search_and_union() {
        let a = names(&["b", "a", "c-1", "c", "a"]);
        assert!(a.contains("c-1") && a.contains("a") && !a.contains("d"));
        assert!(!a.contains("") && !a.contains("0") && !a.contains("z"));
        assert_eq!(a.iter().collect::<Vec<_>>(), ["a", "b", "c", "c-1"]);
        // In order, as a commit lists them: packed as they came, the same.
        assert_eq!(a, names(&["a", "b", "c", "c-1"]));
        assert_eq!(names(&[]).iter().count(), 0);
        assert!(!names(&[]).contains("a"));
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
