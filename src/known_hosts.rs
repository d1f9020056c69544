//! `pipelines/known_hosts` as data: which keys pin which host, and what
//! `hosts trust` adds. Pure: the file's text in, lines out; `remote/ssh.rs`
//! fetches keys, `commands/hosts.rs` reads and writes the file.
//!
//! A host is pinned by its **name** (`<name> <key-type> <key>`): fleetgate
//! connects with `HostKeyAlias=<name>`, so the address and port do not
//! matter, and a rebuilt server with a new key is refused. Static hosts may
//! still be pinned the way they were before, by address (`ADDRESS` on port
//! 22, `[ADDRESS]:PORT` otherwise): deprecated, `check` warns, and
//! `hosts trust` copies such keys to name lines. A host whose name is pinned
//! is checked by its name only.
//!
//! Patterns are matched literally (as `ssh-keyscan` writes them): wildcards
//! and negations are left to ssh, and hashed names (`|1|…`) cannot be
//! matched here at all.

use std::collections::{BTreeSet, HashMap, HashSet};

use base64::Engine as _;
use sha2::Digest as _;

use crate::config::Host;

/// The key types `hosts trust` asks for, in ssh-keyscan's `-t` words.
pub const SCAN_TYPES: &str = "ed25519,ecdsa,rsa";

/// One public key: its type (`ssh-ed25519`) and base64 blob.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub kind: String,
    pub blob: String,
}

impl Key {
    /// `SHA256:…`, as `ssh-keygen -l` and ssh's prompts show it: what an
    /// operator compares out of band (the console of the provider).
    pub fn fingerprint(&self) -> String {
        match base64::engine::general_purpose::STANDARD.decode(&self.blob) {
            Ok(bytes) => format!(
                "SHA256:{}",
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .encode(sha2::Sha256::digest(&bytes))
            ),
            Err(_) => "SHA256:?".into(),
        }
    }
}

/// One line of the file that pins keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based.
    pub line: usize,
    /// `@cert-authority` or `@revoked`.
    pub marker: Option<String>,
    pub patterns: Vec<String>,
    pub key: Key,
}

/// `pipelines/known_hosts`, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownHosts {
    pub entries: Vec<Entry>,
    /// Lines that are not known_hosts lines (1-based).
    pub malformed: Vec<usize>,
    /// Some names are hashed (`|1|…`): those cannot be matched here.
    pub hashed: bool,
    /// Pattern → the entries (indices into `entries`) that are not revoked
    /// and list it: `keys_for` is a lookup, not a scan (a check of 10,000
    /// hosts against 10,000 lines was quadratic).
    index: HashMap<String, Vec<usize>>,
}

/// How a host is pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// By its name: what fleetgate connects with (`HostKeyAlias`).
    Name,
    /// By its address only (a static host, the form before `HostKeyAlias`):
    /// still accepted, deprecated.
    Address,
    None,
}

/// The pattern ssh (and ssh-keyscan) use for an address without an alias.
pub fn address_pattern(address: &str, port: u16) -> String {
    if port == 22 {
        address.to_string()
    } else {
        format!("[{address}]:{port}")
    }
}

impl KnownHosts {
    pub fn parse(text: &str) -> KnownHosts {
        KnownHosts::parse_for(text, None)
    }

    /// Like [`KnownHosts::parse`], keeping only the lines that name one of
    /// `wanted` (host names and address patterns, sorted): a plan that
    /// reads a few clients does not build the whole file. Every line is
    /// still checked for its shape (`malformed`) and for hashed names.
    pub fn parse_for(text: &str, wanted: Option<&[&str]>) -> KnownHosts {
        let mut out = KnownHosts::default();
        for line in lines(text) {
            let (number, marker, hosts, kind, blob) = match line {
                Line::Malformed(number) => {
                    out.malformed.push(number);
                    continue;
                }
                Line::Entry {
                    number,
                    marker,
                    hosts,
                    kind,
                    blob,
                    hashed,
                } => {
                    out.hashed |= hashed;
                    (number, marker, hosts, kind, blob)
                }
            };
            if wanted.is_some_and(|w| !hosts.split(',').any(|p| w.binary_search(&p).is_ok())) {
                continue;
            }
            let marker = marker.map(str::to_string);
            let patterns: Vec<String> = hosts.split(',').map(str::to_string).collect();
            if marker.as_deref() != Some("@revoked") {
                for p in &patterns {
                    out.index
                        .entry(p.clone())
                        .or_default()
                        .push(out.entries.len());
                }
            }
            out.entries.push(Entry {
                line: number,
                marker,
                patterns,
                key: Key {
                    kind: kind.to_string(),
                    blob: blob.to_string(),
                },
            });
        }
        out
    }

    /// The keys pinned for `pattern` (literally), revoked ones left out.
    pub fn keys_for(&self, pattern: &str) -> BTreeSet<&Key> {
        self.index
            .get(pattern)
            .into_iter()
            .flatten()
            .map(|i| &self.entries[*i].key)
            .collect()
    }

    /// Whether `name` is pinned by name: fleetgate then connects with
    /// `HostKeyAlias=<name>`.
    pub fn names(&self, name: &str) -> bool {
        !self.keys_for(name).is_empty()
    }

    /// How `host` is pinned; `by_address`: whether the address form counts
    /// (static hosts: their addresses are the operator's own; a cloud
    /// server's address is reused by the next server).
    pub fn pin(&self, host: &Host, by_address: bool) -> Pin {
        if self.names(&host.name) {
            Pin::Name
        } else if by_address && !self.address_keys(host).is_empty() {
            Pin::Address
        } else {
            Pin::None
        }
    }

    /// The keys pinned for `host`'s address form.
    pub fn address_keys(&self, host: &Host) -> BTreeSet<&Key> {
        self.keys_for(&address_pattern(&host.address, host.port))
    }
}

/// How hosts are pinned, and nothing else: the patterns that have a key
/// (not revoked), borrowed from the file's text. What `check` needs of a
/// file of 10,000 lines, without a copy of each.
#[derive(Debug, Default)]
pub struct Pinned<'a> {
    patterns: HashSet<&'a str>,
    /// Lines that are not known_hosts lines (1-based).
    pub malformed: Vec<usize>,
    /// Some names are hashed (`|1|…`): those cannot be matched here.
    pub hashed: bool,
}

impl<'a> Pinned<'a> {
    /// `wanted` as in [`KnownHosts::parse_for`].
    pub fn parse_for(text: &'a str, wanted: Option<&[&str]>) -> Pinned<'a> {
        let mut out = Pinned::default();
        for line in lines(text) {
            match line {
                Line::Malformed(number) => out.malformed.push(number),
                Line::Entry {
                    marker,
                    hosts,
                    hashed,
                    ..
                } => {
                    out.hashed |= hashed;
                    if marker == Some("@revoked") {
                        continue;
                    }
                    for p in hosts.split(',') {
                        if wanted.is_none_or(|w| w.binary_search(&p).is_ok()) {
                            out.patterns.insert(p);
                        }
                    }
                }
            }
        }
        out
    }

    /// How `host` is pinned, as [`KnownHosts::pin`] says.
    pub fn pin(&self, host: &Host, by_address: bool) -> Pin {
        if self.patterns.contains(host.name.as_str()) {
            Pin::Name
        } else if by_address
            && self
                .patterns
                .contains(address_pattern(&host.address, host.port).as_str())
        {
            Pin::Address
        } else {
            Pin::None
        }
    }
}

/// One line of the file, split.
enum Line<'a> {
    Malformed(usize),
    Entry {
        /// 1-based.
        number: usize,
        marker: Option<&'a str>,
        hosts: &'a str,
        kind: &'a str,
        blob: &'a str,
        /// One of its names is hashed.
        hashed: bool,
    },
}

/// The lines of `text` that are not blank or comments.
fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    // Base64 has no `|`: a file without one (a memchr, not a substring
    // search) hashes no name, and its lines need not be searched for one.
    let maybe_hashed = text.as_bytes().contains(&b'|');
    text.lines().enumerate().filter_map(move |(i, line)| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let [first, second, third, fourth] = fields(line);
        let first = first.unwrap_or_default();
        let (marker, hosts, kind, blob) = match first.starts_with('@') {
            true => (Some(first), second, third, fourth),
            false => (None, Some(first), second, third),
        };
        let (Some(hosts), Some(kind), Some(blob)) = (hosts, kind, blob) else {
            return Some(Line::Malformed(i + 1));
        };
        Some(Line::Entry {
            number: i + 1,
            marker,
            hosts,
            kind,
            blob,
            hashed: maybe_hashed && hosts.split(',').any(|p| p.starts_with("|1|")),
        })
    })
}

/// The first four fields of `line`, as `split_whitespace` finds them;
/// byte by byte when the line is ASCII (all of a file `hosts trust` or
/// ssh-keyscan wrote), not char by char: a fleet's file has a line per host.
fn fields(line: &str) -> [Option<&str>; 4] {
    let mut out = [None; 4];
    if !line.is_ascii() {
        for (slot, field) in out.iter_mut().zip(line.split_whitespace()) {
            *slot = Some(field);
        }
        return out;
    }
    // `char::is_whitespace` of the ASCII bytes (vertical tab included).
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let bytes = line.as_bytes();
    let mut at = 0;
    for slot in &mut out {
        at += bytes[at..].iter().take_while(|b| space(b)).count();
        if at == bytes.len() {
            break;
        }
        let len = bytes[at..].iter().take_while(|b| !space(b)).count();
        *slot = Some(&line[at..at + len]);
        at += len;
    }
    out
}

/// What `hosts trust` does for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Pinned by name, and the server offers one of its pinned keys.
    Pinned,
    /// Pinned by name, and the server offers none of the pinned keys: a
    /// rebuilt server, or another one at its address. Left alone: a human
    /// removes the old lines once the new key is verified.
    Changed { pinned: Vec<Key>, offered: Vec<Key> },
    /// These keys get name lines: the server's (unpinned), or the keys its
    /// address was pinned with (migrated; nothing fetched).
    Add { keys: Vec<Key>, migrated: bool },
}

/// What to do for `host`, given how it is pinned and the keys it offers
/// (`None`: not fetched — only a host pinned by address needs none).
pub fn decide(known: &KnownHosts, host: &Host, by_address: bool, offered: &[Key]) -> Trust {
    match known.pin(host, by_address) {
        Pin::Name => {
            let pinned = known.keys_for(&host.name);
            if offered.iter().any(|k| pinned.contains(k)) {
                Trust::Pinned
            } else {
                Trust::Changed {
                    pinned: pinned.into_iter().cloned().collect(),
                    offered: offered.to_vec(),
                }
            }
        }
        Pin::Address => Trust::Add {
            keys: known.address_keys(host).into_iter().cloned().collect(),
            migrated: true,
        },
        Pin::None => Trust::Add {
            keys: offered.to_vec(),
            migrated: false,
        },
    }
}

/// `<name> <type> <key>` lines for `keys`, after a comment saying whose
/// they are, for the reviewer.
pub fn lines_for(client: &str, host: &Host, keys: &[Key], migrated: bool) -> String {
    let how = if migrated {
        format!(
            "copied from its address line ({})",
            address_pattern(&host.address, host.port)
        )
    } else {
        format!("fetched from {}", address_pattern(&host.address, host.port))
    };
    let mut out = format!(
        "# {client}/{}: {how} by `fleetgate hosts trust`\n",
        host.name
    );
    for k in keys {
        out.push_str(&format!("{} {} {}\n", host.name, k.kind, k.blob));
    }
    out
}

/// `text` with `added` after it, on a line of its own.
pub fn append(text: &str, added: &str) -> String {
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(added);
    out
}

/// The keys in ssh-keyscan's output (`HOST TYPE KEY` lines; its comments
/// go to stderr, but are skipped here too), each once, sorted.
pub fn parse_keyscan(stdout: &str) -> Vec<Key> {
    let mut keys = BTreeSet::new();
    for line in stdout.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [_, kind, blob, ..] = fields[..]
            && is_key_type(kind)
            && base64::engine::general_purpose::STANDARD
                .decode(blob)
                .is_ok()
        {
            keys.insert(Key {
                kind: kind.to_string(),
                blob: blob.to_string(),
            });
        }
    }
    keys.into_iter().collect()
}

fn is_key_type(kind: &str) -> bool {
    kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const ED2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIIulpxsP7LMTnHHQLwYU2WEkTUY79ISya74au5cyCV8m";

    fn host(name: &str, address: &str, port: u16) -> Host {
        Host {
            name: name.into(),
            address: address.into(),
            port,
            user: "deploy".into(),
            deploy_root: "/opt/fleetgate".into(),
        }
    }

    fn key(blob: &str) -> Key {
        Key {
            kind: "ssh-ed25519".into(),
            blob: blob.into(),
        }
    }

    /// `fixture`: the file; `expect`: how each of two hosts is pinned, as
    /// static hosts (the address form counts) and as cloud servers.
    fn check(fixture: &str, expect: [(Pin, Pin); 2]) {
        let known = KnownHosts::parse(fixture);
        let hosts = [
            host("alpha-1", "203.0.113.10", 22),
            host("alpha-2", "alpha-2.example.org", 2222),
        ];
        let got = [0, 1].map(|i| (known.pin(&hosts[i], true), known.pin(&hosts[i], false)));
        assert_eq!(got, expect, "{fixture}");
    }

    #[test]
    fn pins_by_name_and_by_address() {
        use Pin::*;
        check(
            &format!("alpha-1 ssh-ed25519 {ED}\nalpha-2 ssh-ed25519 {ED}"),
            [(Name, Name), (Name, Name)],
        );
        // The form before HostKeyAlias: static hosts only.
        check(
            &format!("203.0.113.10 ssh-ed25519 {ED}\n[alpha-2.example.org]:2222 ssh-ed25519 {ED}"),
            [(Address, None), (Address, None)],
        );
        // Several names per line, markers, comments; the port is part of the
        // address form and no part of the name form.
        check(
            &format!(
                "# c\n\n203.0.113.9,alpha-1 ssh-ed25519 {ED}\n@cert-authority alpha-2.example.org ssh-ed25519 {ED}"
            ),
            [(Name, Name), (None, None)],
        );
        check(
            &format!("[alpha-1]:22 ssh-ed25519 {ED}\nalpha-2:2222 ssh-ed25519 {ED}"),
            [(None, None), (None, None)],
        );
        // A revoked key pins nothing.
        check(
            &format!("@revoked alpha-1 ssh-ed25519 {ED}"),
            [(None, None), (None, None)],
        );
    }

    #[test]
    fn parses_lines_and_names_the_bad_ones() {
        let k = KnownHosts::parse(&format!(
            "a ssh-ed25519 {ED}\nb ssh-ed25519\n@revoked\n|1|c2FsdA==|aGFzaA== ssh-ed25519 {ED}\n"
        ));
        assert_eq!(k.malformed, [2, 3]);
        assert!(k.hashed);
        assert_eq!(k.entries.len(), 2);
        assert_eq!(k.entries[0].key, key(ED));
    }

    #[test]
    fn what_trust_does() {
        let h = host("alpha-1", "127.0.0.1", 2201);
        let named = KnownHosts::parse(&format!("alpha-1 ssh-ed25519 {ED}"));
        assert_eq!(
            decide(&named, &h, true, &[key(ED2), key(ED)]),
            Trust::Pinned
        );
        assert_eq!(
            decide(&named, &h, true, &[key(ED2)]),
            Trust::Changed {
                pinned: vec![key(ED)],
                offered: vec![key(ED2)]
            }
        );
        // Unreachable or offering nothing: not the pinned key either.
        assert!(matches!(
            decide(&named, &h, true, &[]),
            Trust::Changed { .. }
        ));
        let by_address = KnownHosts::parse(&format!("[127.0.0.1]:2201 ssh-ed25519 {ED}"));
        assert_eq!(
            decide(&by_address, &h, true, &[]),
            Trust::Add {
                keys: vec![key(ED)],
                migrated: true
            }
        );
        // A cloud server's address line is not trusted: its keys are fetched.
        assert_eq!(
            decide(&by_address, &h, false, &[key(ED2)]),
            Trust::Add {
                keys: vec![key(ED2)],
                migrated: false
            }
        );
    }

    #[test]
    fn lines_and_appending() {
        let h = host("alpha-1", "127.0.0.1", 2201);
        let lines = lines_for("alpha", &h, &[key(ED)], false);
        assert_eq!(
            lines,
            format!(
                "# alpha/alpha-1: fetched from [127.0.0.1]:2201 by `fleetgate hosts trust`\nalpha-1 ssh-ed25519 {ED}\n"
            )
        );
        assert_eq!(append("", "x\n"), "x\n");
        assert_eq!(append("a\n", "x\n"), "a\nx\n");
        assert_eq!(append("a", "x\n"), "a\nx\n");
        // What is appended pins the host by name.
        let after = KnownHosts::parse(&append("# old\n", &lines));
        assert_eq!(after.pin(&h, false), Pin::Name);
    }

    #[test]
    fn keyscan_output() {
        let out = format!(
            "# 127.0.0.1:2201 SSH-2.0-OpenSSH_9.2\n[127.0.0.1]:2201 ssh-ed25519 {ED}\n[127.0.0.1]:2201 ecdsa-sha2-nistp256 {ED2}\n[127.0.0.1]:2201 ssh-ed25519 {ED}\n[127.0.0.1]:2201 bogus {ED}\n[127.0.0.1]:2201 ssh-rsa not*base64\n"
        );
        let keys = parse_keyscan(&out);
        assert_eq!(
            keys,
            [
                Key {
                    kind: "ecdsa-sha2-nistp256".into(),
                    blob: ED2.into()
                },
                key(ED)
            ]
        );
        assert!(parse_keyscan("").is_empty());
    }

    #[test]
    fn fingerprints_as_ssh_keygen_prints_them() {
        // `ssh-keygen -lf` of this key.
        assert_eq!(
            key(ED).fingerprint(),
            "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU"
        );
        assert_eq!(key("not base64!").fingerprint(), "SHA256:?");
    }
}

#[cfg(test)]
mod parse_for_tests {
    use super::*;

    /// Only the wanted lines are kept, and they pin as in a whole parse;
    /// every line's shape and hashed names still count.
    #[test]
    fn a_parse_for_some_hosts_keeps_their_lines_and_checks_every_line() {
        let text = "web-1 ssh-ed25519 AAAA1\n\
                    [10.0.0.2]:2222,web-2 ssh-ed25519 AAAA2\n\
                    @revoked web-1 ssh-ed25519 AAAA9\n\
                    web-3 ssh-ed25519 AAAA3\n\
                    broken-line\n\
                    |1|abc= ssh-ed25519 AAAA4\n";
        let all = KnownHosts::parse(text);
        let wanted = ["[10.0.0.2]:2222", "web-1"];
        let some = KnownHosts::parse_for(text, Some(&wanted));
        for pattern in ["web-1", "web-2", "[10.0.0.2]:2222"] {
            assert_eq!(some.keys_for(pattern), all.keys_for(pattern), "{pattern}");
        }
        assert_eq!(
            all.keys_for("web-1").len(),
            1,
            "the revoked key is not pinned"
        );
        assert!(some.keys_for("web-3").is_empty() && !all.keys_for("web-3").is_empty());
        assert_eq!((some.malformed.clone(), some.hashed), (vec![5], true));
        assert_eq!((all.malformed, all.hashed), (vec![5], true));
        assert_eq!(some.entries.len(), 3);
    }

    /// Fields split as `split_whitespace` splits them, ASCII or not.
    #[test]
    fn fields_are_split_on_whitespace() {
        for line in [
            "a b c",
            "@revoked a\tb  c d e",
            "a\x0bb\x0cc",
            "a",
            "",
            "  a  ",
            "é b\u{a0}c d",
            "a\u{2003}b c",
        ] {
            let mut expect = [None; 4];
            for (slot, f) in expect.iter_mut().zip(line.split_whitespace()) {
                *slot = Some(f);
            }
            assert_eq!(fields(line), expect, "{line:?}");
        }
    }

    /// `Pinned` (borrowed, patterns only) pins every host as `KnownHosts`
    /// does, for the whole file and for a few wanted hosts.
    #[test]
    fn pinned_agrees_with_known_hosts() {
        let text = "web-1 ssh-ed25519 AAAA1\n\
                    [10.0.0.2]:2222,web-2 ssh-ed25519 AAAA2\n\
                    @revoked web-4 ssh-ed25519 AAAA9\n\
                    10.0.0.5 ssh-ed25519 AAAA5\n\
                    # a comment |1|\n\
                    broken-line\n";
        let host = |name: &str, address: &str, port: u16| Host {
            name: name.into(),
            address: address.into(),
            port,
            user: "deploy".into(),
            deploy_root: "/opt/fleetgate".into(),
        };
        let hosts = [
            host("web-1", "10.0.0.1", 22),
            host("web-2", "10.0.0.9", 22),
            host("web-3", "10.0.0.2", 2222),
            host("web-4", "10.0.0.4", 22),
            host("web-5", "10.0.0.5", 22),
            host("web-6", "10.0.0.5", 2222),
        ];
        let all = KnownHosts::parse(text);
        // web-3 and web-5: their names and address patterns, sorted.
        let wanted = ["10.0.0.5", "[10.0.0.2]:2222", "web-3", "web-5"];
        let cases = [
            (Pinned::parse_for(text, None), &hosts[..]),
            (
                Pinned::parse_for(text, Some(&wanted)),
                &[hosts[2].clone(), hosts[4].clone()][..],
            ),
        ];
        for (pinned, hosts) in cases {
            assert_eq!((pinned.malformed.clone(), pinned.hashed), (vec![6], false));
            for h in hosts {
                for by_address in [true, false] {
                    let expect = all.pin(h, by_address);
                    assert_eq!(pinned.pin(h, by_address), expect, "{} {by_address}", h.name);
                }
            }
        }
        assert_eq!(all.pin(&hosts[2], true), Pin::Address);
        assert_eq!(all.pin(&hosts[4], true), Pin::Address);
        let hashed = Pinned::parse_for("|1|abc= ssh-ed25519 AAAA4\n", None);
        assert!(hashed.hashed);
    }
}
