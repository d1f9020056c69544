//! `pipelines/known_hosts`: every static host needs its key pinned there.
//! Deploy refuses hosts without one, so `check` says so first.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::model::{Client, Host, Hosts};
use crate::config::{FleetFiles, KNOWN_HOSTS, client_file};
use crate::error::Diagnostic;

/// Every static host needs its key pinned in `pipelines/known_hosts`: deploy
/// refuses hosts without one, so `check` says so first. (Not part of
/// `validate`: a plan may show a host whose key is not pinned yet.)
pub fn known_hosts_checks(
    files: &FleetFiles,
    clients: &BTreeMap<String, Client>,
    problems: &mut Vec<Diagnostic>,
) {
    let static_hosts: Vec<(&Client, usize, &Host)> = clients
        .values()
        .filter_map(|c| match &c.hosts {
            Hosts::Static(hosts) => Some(hosts.iter().enumerate().map(move |(i, h)| (c, i, h))),
            Hosts::Hcloud { .. } => None,
        })
        .flatten()
        .collect();
    if static_hosts.is_empty() {
        return;
    }
    let Some(bytes) = files.files.get(KNOWN_HOSTS) else {
        problems.push(
            Diagnostic::new(KNOWN_HOSTS, "is missing; every host's SSH key must be pinned")
                .hint("add `ssh-keyscan -p PORT HOST` lines, verified out of band; fleetgate never trusts a key on first use"),
        );
        return;
    };
    let text = String::from_utf8_lossy(bytes);
    let mut patterns = BTreeSet::new();
    let mut hashed = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (hosts, rest) = match fields.first() {
            Some(m) if m.starts_with('@') => (fields.get(1), &fields[fields.len().min(2)..]),
            Some(_) => (fields.first(), &fields[1..]),
            None => continue,
        };
        if rest.len() < 2 {
            problems.push(
                Diagnostic::new(
                    KNOWN_HOSTS,
                    "is not a known_hosts line (expected `HOST KEYTYPE KEY`)",
                )
                .line(u32::try_from(i + 1).ok())
                .hint("write lines as ssh-keyscan prints them"),
            );
            continue;
        }
        for pattern in hosts.map(|h| h.split(',')).into_iter().flatten() {
            hashed |= pattern.starts_with("|1|");
            patterns.insert(pattern.to_string());
        }
    }
    if hashed {
        // Hashed entries cannot be matched here; deploy still checks strictly.
        return;
    }
    for (client, i, host) in static_hosts {
        let wanted = if host.port == 22 {
            host.address.clone()
        } else {
            format!("[{}]:{}", host.address, host.port)
        };
        if !patterns.contains(&wanted) {
            problems.push(
                Diagnostic::new(client_file(&client.name), format!("host `{}` ({wanted}) has no key in {KNOWN_HOSTS}", host.name))
                    .field(format!("hosts[{i}]"))
                    .hint(format!("pin it: `ssh-keyscan -p {} {} >> {KNOWN_HOSTS}`, after verifying the key out of band", host.port, host.address)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::testing::{assert_outcome, files};
    use crate::config::validate::validate;

    const BASE: &str = r#"
        //- pipelines/pipeline.yaml
        stages: [{name: canary, group: canary}]
        //- clients/alpha.yaml
        domain: alpha.org
        group: canary
        apps: []
        hosts:
          - {name: alpha-1, address: 203.0.113.10}
          - {name: alpha-2, address: alpha-2.example.org, port: 2222}
    "#;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    /// `fixture`: `pipelines/known_hosts` (or `//- path` files over [`BASE`],
    /// whose two hosts are on ports 22 and 2222); `expect`: the problems.
    fn check(fixture: &str, expect: &[&str]) {
        let files = files(KNOWN_HOSTS, BASE, fixture);
        let (fleet, problems) = validate(&files);
        assert_eq!(problems, [], "the fleet itself is valid");
        let mut problems = Vec::new();
        known_hosts_checks(&files, &fleet.clients, &mut problems);
        assert_outcome(fixture, &problems, Vec::new(), expect);
    }

    #[test]
    fn every_static_host_is_pinned() {
        check(
            &format!("203.0.113.10 {KEY}\n[alpha-2.example.org]:2222 {KEY}"),
            &[],
        );
        // Comments, blank lines, several names per line, markers.
        check(
            &format!(
                "# pinned 2025-01-01\n\n203.0.113.9,203.0.113.10 {KEY}\n@cert-authority [alpha-2.example.org]:2222 {KEY}"
            ),
            &[],
        );
        check(
            &format!("203.0.113.10 {KEY}\nalpha-2.example.org {KEY}"),
            &[
                "clients/alpha.yaml hosts[1]: host `alpha-2` ([alpha-2.example.org]:2222) has no key in pipelines/known_hosts",
            ],
        );
        check(
            &format!("[203.0.113.10]:22 {KEY}\n[alpha-2.example.org]:2222 {KEY}"),
            &[
                "clients/alpha.yaml hosts[0]: host `alpha-1` (203.0.113.10) has no key in pipelines/known_hosts",
            ],
        );
    }

    #[test]
    fn the_file() {
        check(
            "//- secrets/.sops.yaml\ncreation_rules: []",
            &["pipelines/known_hosts: is missing; every host's SSH key must be pinned"],
        );
        check(
            &format!(
                "203.0.113.10 {KEY}\n203.0.113.11 ssh-ed25519\n[alpha-2.example.org]:2222 {KEY}"
            ),
            &["pipelines/known_hosts:2: is not a known_hosts line"],
        );
        // Hashed names cannot be matched here (deploy still checks strictly).
        check(&format!("|1|c2FsdA==|aGFzaA== {KEY}"), &[]);
        // Hetzner Cloud hosts are not known before deploy: nothing to pin yet.
        check(
            "//- clients/alpha.yaml\ndomain: alpha.org\ngroup: canary\napps: []\nhosts: {hcloud: {label_selector: c=a}}",
            &[],
        );
    }
}
