//! `fleetgate hosts [--clients a,b] [--rev REV]`: every resolved host, and
//! whether its key is pinned in `pipelines/known_hosts`; `fleetgate hosts
//! trust [--client X]`: fetch the keys of unpinned hosts and append them to
//! the work tree's `pipelines/known_hosts` as `<name> <type> <key>` lines —
//! never committed: trust is a merge request a human approves, never first
//! use at deploy time. A pinned host whose key changed is reported, never
//! rewritten. Glue: the format and the decisions are `known_hosts`'s, the
//! key fetch `remote::ssh::keyscan`.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::Context;
use crate::config::{self, Client, Host, Hosts, KNOWN_HOSTS, Selection};
use crate::error::{Error, ExitCode, Message, Result};
use crate::inventory::{self, Inventory};
use crate::known_hosts::{Key, KnownHosts, Pin, Trust};
use crate::printer;
use crate::repo::{Repo, Snapshot};
use crate::report::OutcomeFormat;

#[derive(Debug, Args)]
pub struct HostsArgs {
    #[command(subcommand)]
    pub action: Option<HostsAction>,
    /// Only these clients (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub clients: Vec<String>,
    /// The commit whose clients and known_hosts to read (default: the work tree).
    #[arg(long, value_name = "REV")]
    pub rev: Option<String>,
    /// Output format on stdout (json: a list of hosts).
    #[arg(long, value_enum, default_value_t = OutcomeFormat::Text, global = true)]
    pub format: OutcomeFormat,
}

#[derive(Debug, Subcommand)]
pub enum HostsAction {
    /// Fetch the keys of unpinned hosts (ssh-keyscan) and append them to the
    /// work tree's pipelines/known_hosts, for a reviewed commit. Hosts pinned
    /// by address get their pinned keys copied to name lines; a changed key
    /// is reported and left alone.
    Trust(TrustArgs),
}

#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Only this client's hosts.
    #[arg(long, value_name = "NAME")]
    pub client: Option<String>,
    /// How long to wait for each host to answer.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::duration::parse, default_value = "5s")]
    pub timeout: Duration,
}

/// One host, as `hosts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRow {
    pub client: String,
    /// The server name: what its key is pinned by (`HostKeyAlias`).
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub pinned: bool,
    /// `name`, `address` (the form before `HostKeyAlias`, deprecated), or
    /// null when unpinned.
    pub pinned_by: Option<&'static str>,
}

/// What `hosts trust` did for one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrustRow {
    pub client: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    /// `added` (keys fetched), `migrated` (address-pinned keys copied to
    /// name lines), `pinned` (unchanged), `changed` (the host offers none of
    /// its pinned keys; not rewritten) or `unreachable`.
    pub result: &'static str,
    /// The keys added, or for `changed` the keys the host offers.
    pub keys: Vec<KeyRow>,
    /// `changed`: the keys pinned for it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pinned_keys: Vec<KeyRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRow {
    #[serde(rename = "type")]
    pub kind: String,
    pub fingerprint: String,
}

impl From<&Key> for KeyRow {
    fn from(k: &Key) -> KeyRow {
        KeyRow {
            kind: k.kind.clone(),
            fingerprint: k.fingerprint(),
        }
    }
}

pub fn run(ctx: &Context, args: &HostsArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let inventory = inventory::for_command()?;
    match &args.action {
        None => list(&repo, args, &inventory),
        Some(HostsAction::Trust(t)) => {
            if args.rev.is_some() {
                return Err(Error::usage(
                    "`hosts trust` writes the work tree's pipelines/known_hosts: --rev does not apply",
                ));
            }
            let only: Vec<String> = t.client.iter().cloned().collect();
            trust(&repo, &only, t.timeout, args.format, &inventory)
        }
    }
}

/// The fleet at `snap`, its pinned keys (none when the file is missing),
/// and each wanted client's hosts or why they could not be resolved.
struct Resolved<'a> {
    known: KnownHosts,
    /// The file as it is (None: missing).
    text: Option<String>,
    hosts: Vec<(&'a Client, Result<Vec<Host>>)>,
}

fn resolve<'a>(
    snap: &Snapshot<'_>,
    fleet: &'a config::Fleet,
    only: &[String],
    inventory: &dyn Inventory,
) -> Result<Resolved<'a>> {
    for c in only {
        if !fleet.clients.contains_key(c) {
            return Err(Error::Usage(
                Message::from(format!("client `{c}` does not exist at {}", snap.label())).hint(
                    format!(
                        "clients are: {}",
                        fleet.clients.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ),
            ));
        }
    }
    let text = snap
        .read(KNOWN_HOSTS)?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let known = KnownHosts::parse(text.as_deref().unwrap_or_default());
    let hosts = fleet
        .clients
        .values()
        .filter(|c| only.is_empty() || only.contains(&c.name))
        .map(|c| (&**c, inventory::hosts(inventory, c)))
        .collect();
    Ok(Resolved { known, text, hosts })
}

fn load_fleet(snap: &Snapshot<'_>) -> Result<config::Fleet> {
    let files = config::load(snap, Selection::All)?;
    let (fleet, problems) = config::validate(&files);
    if !problems.is_empty() {
        return Err(Error::Invalid {
            at: snap.label(),
            problems,
        });
    }
    Ok(fleet)
}

/// A static host may still be pinned by address; a cloud server may not
/// (its address is the next server's once it is gone).
fn by_address(client: &Client) -> bool {
    matches!(client.hosts, Hosts::Static(_))
}

/// A client whose hosts could not be resolved: named on stderr, with the
/// error's own exit code (no token or no match: 2; the API unreachable: 3).
fn unresolved(client: &Client, why: &Error) -> ExitCode {
    tracing::error!("client `{}`: hosts not resolved: {why}", client.name);
    why.exit_code()
}

fn list(repo: &Repo, args: &HostsArgs, inventory: &dyn Inventory) -> Result<ExitCode> {
    let snap = match &args.rev {
        Some(rev) => repo.snapshot(repo.resolve(rev)?)?,
        None => repo.worktree()?,
    };
    let fleet = load_fleet(&snap)?;
    let r = resolve(&snap, &fleet, &args.clients, inventory)?;
    let mut code = ExitCode::Ok;
    let mut rows = Vec::new();
    for (client, hosts) in &r.hosts {
        let hosts = match hosts {
            Ok(h) => h,
            Err(why) => {
                code = unresolved(client, why);
                continue;
            }
        };
        for h in hosts {
            let pin = r.known.pin(h, by_address(client));
            rows.push(HostRow {
                client: client.name.clone(),
                name: h.name.clone(),
                address: h.address.clone(),
                port: h.port,
                user: h.user.clone(),
                pinned: pin != Pin::None,
                pinned_by: match pin {
                    Pin::Name => Some("name"),
                    Pin::Address => Some("address"),
                    Pin::None => None,
                },
            });
        }
    }
    if r.known.hashed {
        tracing::warn!(
            "{KNOWN_HOSTS} has hashed names (`|1|…`), which cannot be matched here: hosts they pin show as unpinned"
        );
    }
    if rows.iter().any(|r| r.pinned_by == Some("address")) {
        tracing::warn!(
            "hosts pinned by address are deprecated: `fleetgate hosts trust` copies their keys to name lines"
        );
    }
    printer::data(&match args.format {
        OutcomeFormat::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&rows).expect("host rows serialise")
        ),
        OutcomeFormat::Text => table(
            ["CLIENT", "HOST", "ADDRESS", "KEY"],
            rows.iter().map(|r| {
                [
                    r.client.clone(),
                    r.name.clone(),
                    format!("{}@{}:{}", r.user, r.address, r.port),
                    match r.pinned_by {
                        Some("name") => "pinned".into(),
                        Some(_) => "pinned (by address: deprecated, run `hosts trust`)".into(),
                        None => "unpinned".into(),
                    },
                ]
            }),
        ),
    });
    Ok(code)
}

/// Columns padded to their widest cell.
fn table<const N: usize>(head: [&str; N], rows: impl Iterator<Item = [String; N]>) -> String {
    let rows: Vec<[String; N]> = std::iter::once(head.map(str::to_string))
        .chain(rows)
        .collect();
    let mut widths = [0; N];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn trust(
    repo: &Repo,
    only: &[String],
    timeout: Duration,
    format: OutcomeFormat,
    inventory: &dyn Inventory,
) -> Result<ExitCode> {
    let workdir = repo.workdir().ok_or_else(|| {
        Error::usage("`hosts trust` writes pipelines/known_hosts in a work tree, and this repository has none (bare)")
    })?;
    let snap = repo.worktree()?;
    let fleet = load_fleet(&snap)?;
    let r = resolve(&snap, &fleet, only, inventory)?;
    if !r.known.malformed.is_empty() {
        return Err(Error::Usage(
            Message::from(format!(
                "{KNOWN_HOSTS} has lines that are not known_hosts lines ({})",
                r.known
                    .malformed
                    .iter()
                    .map(|l| format!("line {l}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .hint("fix them first (`fleetgate check` names them): nothing was written"),
        ));
    }
    let mut code = ExitCode::Ok;
    let mut targets: Vec<(&Client, Host)> = Vec::new();
    for (client, hosts) in &r.hosts {
        match hosts {
            Ok(h) => targets.extend(h.iter().map(|h| (*client, h.clone()))),
            Err(why) => code = unresolved(client, why),
        }
    }
    // Every host is asked, pinned ones too: a changed key is worth saying.
    // A host pinned by address needs nothing fetched: its reviewed keys are
    // copied.
    let runtime = crate::rt::runtime()?;
    let offered: Vec<std::result::Result<Vec<Key>, String>> = runtime.block_on(
        futures_util::future::join_all(targets.iter().map(|(client, h)| async {
            if r.known.pin(h, by_address(client)) == Pin::Address {
                return Ok(Vec::new());
            }
            crate::remote::ssh::keyscan(&h.address, h.port, timeout).await
        })),
    );
    let mut rows = Vec::new();
    let mut added = String::new();
    for ((client, host), offered) in targets.iter().zip(offered) {
        let mut row = TrustRow {
            client: client.name.clone(),
            name: host.name.clone(),
            address: host.address.clone(),
            port: host.port,
            result: "unreachable",
            keys: Vec::new(),
            pinned_keys: Vec::new(),
            error: None,
        };
        let offered = match offered {
            Ok(keys) => keys,
            Err(why) => {
                tracing::error!(
                    "{}/{}: could not fetch its host keys from {}: {why}",
                    client.name,
                    host.name,
                    crate::known_hosts::address_pattern(&host.address, host.port)
                );
                row.error = Some(why);
                rows.push(row);
                code = worst(code, ExitCode::Infra);
                continue;
            }
        };
        match crate::known_hosts::decide(&r.known, host, by_address(client), &offered) {
            Trust::Pinned => row.result = "pinned",
            Trust::Changed { pinned, offered } => {
                tracing::error!(
                    "{}/{}: offers none of the keys pinned for it (a rebuilt server, or another one at its address): not rewritten",
                    client.name,
                    host.name
                );
                row.result = "changed";
                row.keys = offered.iter().map(KeyRow::from).collect();
                row.pinned_keys = pinned.iter().map(KeyRow::from).collect();
                code = worst(code, ExitCode::Blocked);
            }
            Trust::Add { keys, migrated } => {
                row.result = if migrated { "migrated" } else { "added" };
                row.keys = keys.iter().map(KeyRow::from).collect();
                added.push_str(&crate::known_hosts::lines_for(
                    &client.name,
                    host,
                    &keys,
                    migrated,
                ));
            }
        }
        rows.push(row);
    }
    if !added.is_empty() {
        let text = crate::known_hosts::append(r.text.as_deref().unwrap_or_default(), &added);
        write_atomically(&workdir.join(KNOWN_HOSTS), &text)?;
    }
    printer::data(&match format {
        OutcomeFormat::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&rows).expect("trust rows serialise")
        ),
        OutcomeFormat::Text => trust_text(&rows),
    });
    let n = rows
        .iter()
        .filter(|r| r.result == "added" || r.result == "migrated")
        .count();
    if n > 0 {
        tracing::info!(
            "{KNOWN_HOSTS}: keys of {n} host(s) added, not committed. Compare the fingerprints with the servers' (the provider's console, `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` there), then commit the file in a merge request: trust is a reviewed merge, never first use at deploy time"
        );
    } else {
        tracing::info!("{KNOWN_HOSTS}: nothing to add");
    }
    if rows.iter().any(|r| r.result == "changed") {
        tracing::warn!(
            "a changed key is never replaced by fleetgate: verify the server out of band, remove its old lines from {KNOWN_HOSTS} by hand, then run `fleetgate hosts trust` again"
        );
    }
    Ok(code)
}

/// The worse of two exit codes: infrastructure over a blocked gate.
fn worst(a: ExitCode, b: ExitCode) -> ExitCode {
    let rank = |c: ExitCode| match c {
        ExitCode::Ok => 0,
        ExitCode::Blocked => 1,
        ExitCode::Waiting => 2,
        ExitCode::Invalid => 3,
        ExitCode::Infra => 4,
    };
    if rank(b) > rank(a) { b } else { a }
}

fn trust_text(rows: &[TrustRow]) -> String {
    let keys = |k: &[KeyRow]| {
        k.iter()
            .map(|k| format!("{} {}", k.kind, k.fingerprint))
            .collect::<Vec<_>>()
            .join(", ")
    };
    table(
        ["CLIENT", "HOST", "ADDRESS", "RESULT"],
        rows.iter().map(|r| {
            [
                r.client.clone(),
                r.name.clone(),
                crate::known_hosts::address_pattern(&r.address, r.port),
                match r.result {
                    "added" => format!("added: {}", keys(&r.keys)),
                    "migrated" => {
                        format!("migrated (copied from its address line): {}", keys(&r.keys))
                    }
                    "changed" => format!(
                        "CHANGED, not rewritten: pinned {}; offers {}",
                        keys(&r.pinned_keys),
                        keys(&r.keys)
                    ),
                    "unreachable" => {
                        format!("unreachable: {}", r.error.as_deref().unwrap_or_default())
                    }
                    other => other.to_string(),
                },
            ]
        }),
    )
}

/// Replaces `path` with `text` at once (a temporary file renamed over it),
/// keeping its mode: a crash leaves the old file or the new one, never half.
fn write_atomically(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    let io = |action: &'static str| {
        move |source| Error::Io {
            action,
            path: path.display().to_string(),
            source,
        }
    };
    let dir = path.parent().expect("a file in the work tree");
    std::fs::create_dir_all(dir).map_err(io("create"))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".known_hosts.")
        .tempfile_in(dir)
        .map_err(io("write"))?;
    tmp.write_all(text.as_bytes()).map_err(io("write"))?;
    tmp.as_file().sync_all().map_err(io("write"))?;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions())
        .unwrap_or_else(|_| std::os::unix::fs::PermissionsExt::from_mode(0o644));
    std::fs::set_permissions(tmp.path(), mode).map_err(io("write"))?;
    tmp.persist(path).map_err(|e| io("write")(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_every_column_but_the_last() {
        let t = table(
            ["A", "BB"],
            [["xyz".to_string(), "1".to_string()]].into_iter(),
        );
        assert_eq!(t, "A    BB\nxyz  1\n");
    }

    #[test]
    fn the_worst_exit_code_wins() {
        assert_eq!(worst(ExitCode::Ok, ExitCode::Blocked), ExitCode::Blocked);
        assert_eq!(worst(ExitCode::Infra, ExitCode::Blocked), ExitCode::Infra);
        assert_eq!(
            worst(ExitCode::Blocked, ExitCode::Invalid),
            ExitCode::Invalid
        );
    }

    #[test]
    fn a_write_replaces_the_file_and_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pipelines/known_hosts");
        write_atomically(&p, "a\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomically(&p, "a\nb\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\nb\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let left: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
    }
}
