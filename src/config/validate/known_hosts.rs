//! `pipelines/known_hosts`: every static host needs its key pinned there,
//! by its name (fleetgate connects with `HostKeyAlias=<name>`) or, as before
//! issue 15, by its address (deprecated: a warning). Deploy refuses hosts
//! without one, so `check` says so first. The format is `crate::known_hosts`.

use std::collections::BTreeMap;

use crate::config::model::{Client, Host, Hosts};
use crate::config::{FleetFiles, KNOWN_HOSTS, client_file};
use crate::error::Diagnostic;
use crate::known_hosts::{Pin, Pinned, address_pattern};

/// Every static host needs its key pinned in `pipelines/known_hosts`: deploy
/// refuses hosts without one, so `check` says so first. (Not part of
/// `validate`: a plan may show a host whose key is not pinned yet.) Returns
/// the warnings: hosts pinned only by address, the form before
/// `HostKeyAlias`, which still works.
pub fn known_hosts_checks(
    files: &FleetFiles,
    clients: &BTreeMap<String, std::sync::Arc<Client>>,
    problems: &mut Vec<Diagnostic>,
) -> Vec<Diagnostic> {
    known_hosts_checks_of(
        files.files.get(KNOWN_HOSTS).map(Vec::as_slice),
        clients,
        problems,
    )
}

/// [`known_hosts_checks`] against `known_hosts`, the file's bytes (None:
/// there is none), read by the caller.
pub fn known_hosts_checks_of(
    known_hosts: Option<&[u8]>,
    clients: &BTreeMap<String, std::sync::Arc<Client>>,
    problems: &mut Vec<Diagnostic>,
) -> Vec<Diagnostic> {
    let mut warnings = Vec::new();
    let static_hosts: Vec<(&Client, usize, &Host)> = clients
        .values()
        .map(|c| &**c)
        .filter_map(|c| match &c.hosts {
            Hosts::Static(hosts) => Some(hosts.iter().enumerate().map(move |(i, h)| (c, i, h))),
            Hosts::Hcloud { .. } => None,
        })
        .flatten()
        .collect();
    if static_hosts.is_empty() {
        return warnings;
    }
    let Some(bytes) = known_hosts else {
        problems.push(
            Diagnostic::new(KNOWN_HOSTS, "is missing; every host's SSH key must be pinned")
                .hint("run `fleetgate hosts trust` and commit what it adds, after verifying the keys out of band; fleetgate never trusts a key on first use"),
        );
        return warnings;
    };
    // A few hosts to check (a plan of a few clients): only their lines.
    let wanted: Option<Vec<String>> = (static_hosts.len() <= 256).then(|| {
        static_hosts
            .iter()
            .flat_map(|(_, _, h)| [h.name.clone(), address_pattern(&h.address, h.port)])
            .collect()
    });
    let wanted: Option<Vec<&str>> = wanted.as_ref().map(|w| {
        let mut w: Vec<&str> = w.iter().map(String::as_str).collect();
        w.sort_unstable();
        w
    });
    // Almost always UTF-8: checked at full speed, not chunk by chunk.
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    };
    let known = Pinned::parse_for(&text, wanted.as_deref());
    for line in &known.malformed {
        problems.push(
            Diagnostic::new(
                KNOWN_HOSTS,
                "is not a known_hosts line (expected `NAME KEYTYPE KEY`)",
            )
            .line(u32::try_from(*line).ok())
            .hint("write lines as `fleetgate hosts trust` (or ssh-keyscan) prints them"),
        );
    }
    if known.hashed {
        // Hashed entries cannot be matched here; deploy still checks strictly.
        return warnings;
    }
    let mut by_address = Vec::new();
    for (client, i, host) in static_hosts {
        match known.pin(host, true) {
            Pin::Name => {}
            Pin::Address => by_address.push(format!("`{}`", host.name)),
            Pin::None => problems.push(
                Diagnostic::new(
                    client_file(&client.name),
                    format!(
                        "host `{}` ({}) has no key in {KNOWN_HOSTS}",
                        host.name,
                        address_pattern(&host.address, host.port)
                    ),
                )
                .field(format!("hosts[{i}]"))
                .hint(format!(
                    "pin it: `fleetgate hosts trust --client {}` adds `{} KEYTYPE KEY` lines, to verify out of band and commit for review",
                    client.name, host.name
                )),
            ),
        }
    }
    if !by_address.is_empty() {
        warnings.push(
            Diagnostic::new(
                KNOWN_HOSTS,
                format!(
                    "host(s) {} are pinned by address, not by name: deprecated (fleetgate connects with HostKeyAlias=<host name>)",
                    by_address.join(", ")
                ),
            )
            .hint("run `fleetgate hosts trust`: it copies their pinned keys to `NAME KEYTYPE KEY` lines; commit that, then remove the address lines"),
        );
    }
    warnings
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
    /// whose two hosts are on ports 22 and 2222); `expect`: the problems,
    /// then the warnings (`warning: …`).
    fn check(fixture: &str, expect: &[&str]) {
        let files = files(KNOWN_HOSTS, BASE, fixture);
        let (fleet, problems) = validate(&files);
        assert_eq!(problems, [], "the fleet itself is valid");
        let mut problems = Vec::new();
        let warnings = known_hosts_checks(&files, &fleet.clients, &mut problems);
        let warnings = warnings
            .iter()
            .map(|w| format!("warning: {}", w.message))
            .collect();
        assert_outcome(fixture, &problems, warnings, expect);
    }

    #[test]
    fn every_static_host_is_pinned_by_name() {
        check(&format!("alpha-1 {KEY}\nalpha-2 {KEY}"), &[]);
        // Comments, blank lines, several names per line, markers.
        check(
            &format!(
                "# pinned 2025-01-01\n\n203.0.113.9,alpha-1 {KEY}\n@cert-authority alpha-2 {KEY}"
            ),
            &[],
        );
        // The name form has no port; a revoked key pins nothing.
        check(
            &format!("alpha-1 {KEY}\n[alpha-2]:2222 {KEY}"),
            &[
                "clients/alpha.yaml hosts[1]: host `alpha-2` ([alpha-2.example.org]:2222) has no key in pipelines/known_hosts",
            ],
        );
        check(
            &format!("@revoked alpha-1 {KEY}\nalpha-2 {KEY}"),
            &[
                "clients/alpha.yaml hosts[0]: host `alpha-1` (203.0.113.10) has no key in pipelines/known_hosts",
            ],
        );
    }

    #[test]
    fn pinned_by_address_still_works_with_a_warning() {
        check(
            &format!("203.0.113.10 {KEY}\n[alpha-2.example.org]:2222 {KEY}"),
            &[
                "warning: host(s) `alpha-1`, `alpha-2` are pinned by address, not by name: deprecated (fleetgate connects with HostKeyAlias=<host name>)",
            ],
        );
        // Migrated halfway: only the host still pinned by address is named.
        check(
            &format!("alpha-1 {KEY}\n[alpha-2.example.org]:2222 {KEY}"),
            &[
                "warning: host(s) `alpha-2` are pinned by address, not by name: deprecated (fleetgate connects with HostKeyAlias=<host name>)",
            ],
        );
        // The address form is what ssh-keyscan prints: the port in brackets
        // unless it is 22.
        check(
            &format!("203.0.113.10 {KEY}\nalpha-2.example.org {KEY}"),
            &[
                "clients/alpha.yaml hosts[1]: host `alpha-2` ([alpha-2.example.org]:2222) has no key in pipelines/known_hosts",
            ],
        );
        check(
            &format!("[203.0.113.10]:22 {KEY}\nalpha-2 {KEY}"),
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
            &format!("alpha-1 {KEY}\nalpha-3 ssh-ed25519\nalpha-2 {KEY}"),
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
