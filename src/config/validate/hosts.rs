//! A client's `hosts:`: a static list (names, addresses, ports, users,
//! deploy roots, defaults) or the Hetzner Cloud form (`{hcloud: {…}}`).

use std::collections::BTreeSet;

use super::Check;
use crate::config::model::{DEFAULT_DEPLOY_ROOT, DEFAULT_USER, Host, Hosts};
use crate::config::raw;

pub(super) fn validate(c: &mut Check, hosts: &raw::Hosts) -> Hosts {
    match hosts {
        raw::Hosts::Static(list) => {
            if list.is_empty() {
                c.plain(
                    "hosts",
                    "no hosts are listed",
                    "list at least one host, or use `hosts: {hcloud: {label_selector: ...}}`",
                );
            }
            let mut seen = BTreeSet::new();
            let mut hosts = Vec::new();
            for (i, h) in list.iter().enumerate() {
                let f = |k: &str| format!("hosts[{i}].{k}");
                c.name(&f("name"), &h.name, "host");
                if !seen.insert(h.name.value.clone()) {
                    c.at(
                        &f("name"),
                        &h.name,
                        format!("host `{}` is listed twice", h.name.value),
                        "",
                    );
                }
                if !is_address(&h.address.value) {
                    c.at(
                        &f("address"),
                        &h.address,
                        format!("`{}` is not a host address", h.address.value),
                        "write an IP address or a DNS name",
                    );
                }
                if h.port == Some(0) {
                    c.plain(&f("port"), "port 0 is not a port", "");
                }
                let user = h
                    .user
                    .as_ref()
                    .map_or(DEFAULT_USER.to_string(), |u| u.value.clone());
                if let Some(u) = &h.user
                    && !is_user(&u.value)
                {
                    c.at(
                        &f("user"),
                        u,
                        format!("`{}` is not a user name", u.value),
                        "lowercase letters, digits, `_` and `-`",
                    );
                }
                let deploy_root = h
                    .deploy_root
                    .as_ref()
                    .map_or(DEFAULT_DEPLOY_ROOT.to_string(), |d| {
                        d.value.trim_end_matches('/').to_string()
                    });
                if let Some(d) = &h.deploy_root
                    && !is_deploy_root(&d.value)
                {
                    c.at(
                        &f("deploy_root"),
                        d,
                        format!("`{}` is not an absolute, plain path", d.value),
                        "e.g. /opt/fleetgate: letters, digits, `.`, `_`, `-`, no `..`",
                    );
                }
                hosts.push(Host {
                    name: h.name.value.clone(),
                    address: h.address.value.clone(),
                    port: h.port.unwrap_or(22),
                    user,
                    deploy_root,
                });
            }
            Hosts::Static(hosts)
        }
        raw::Hosts::Hcloud(h) => {
            let hc = &h.hcloud;
            if hc.label_selector.value.trim().is_empty() {
                c.at(
                    "hosts.hcloud.label_selector",
                    &hc.label_selector,
                    "label selector is empty",
                    "e.g. `client=alpha`",
                );
            }
            Hosts::Hcloud {
                label_selector: hc.label_selector.value.clone(),
                user: hc
                    .user
                    .as_ref()
                    .map_or(DEFAULT_USER.to_string(), |u| u.value.clone()),
                port: hc.port.unwrap_or(22),
                deploy_root: hc
                    .deploy_root
                    .as_ref()
                    .map_or(DEFAULT_DEPLOY_ROOT.to_string(), |d| d.value.clone()),
            }
        }
    }
}

pub(super) fn is_address(a: &str) -> bool {
    !a.is_empty()
        && !a.starts_with('-')
        && a.len() <= 253
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

fn is_user(u: &str) -> bool {
    let mut b = u.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
        && u.len() <= 32
}

fn is_deploy_root(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && p[1..]
            .trim_end_matches('/')
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
}
