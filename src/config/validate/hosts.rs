//! A client's `hosts:`: a static list (names, addresses, ports, users,
//! deploy roots, defaults) or the Hetzner Cloud form (`{hcloud: {…}}`: a
//! label selector in Hetzner's syntax, parsed here so that `check` refuses
//! one the API would; the network whose address to use; port, user and
//! deploy root as for static hosts).

use std::collections::BTreeSet;

use super::Check;
use crate::config::model::{DEFAULT_DEPLOY_ROOT, DEFAULT_USER, Host, Hosts, Network};
use crate::config::raw::{self, S};
use crate::inventory::selector::Selector;

/// The hosts, or `None` where they cannot be built (the problems say why).
pub(super) fn validate(c: &mut Check, hosts: &raw::Hosts) -> Option<Hosts> {
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
            let mut hosts = Vec::with_capacity(list.len());
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
                let (port, user, deploy_root) = login(c, &f(""), h.port, &h.user, &h.deploy_root);
                hosts.push(Host {
                    name: h.name.value.clone(),
                    address: h.address.value.clone(),
                    port,
                    user,
                    deploy_root,
                });
            }
            Some(Hosts::Static(hosts))
        }
        raw::Hosts::Hcloud(h) => {
            let hc = &h.hcloud;
            let field = "hosts.hcloud.label_selector";
            let label_selector = Selector::parse(&hc.label_selector.value)
                .map_err(|e| {
                    c.at(
                        field,
                        &hc.label_selector,
                        format!("invalid label selector: {e}"),
                        SELECTOR_HINT,
                    );
                })
                .ok();
            let network = match &hc.network {
                None | Some(raw::Network::Public) => Network::PublicIpv4,
                Some(raw::Network::PublicIpv6) => Network::PublicIpv6,
                Some(raw::Network::Private(name)) => {
                    if name.value.trim().is_empty() || name.value.chars().any(char::is_control) {
                        c.at(
                            "hosts.hcloud.network.private",
                            name,
                            format!("`{}` is not a network name", name.value),
                            "the name of a private network of the project, as `hcloud network list` shows it",
                        );
                    }
                    Network::Private(name.value.clone())
                }
            };
            let (port, user, deploy_root) =
                login(c, "hosts.hcloud.", hc.port, &hc.user, &hc.deploy_root);
            Some(Hosts::Hcloud {
                label_selector: label_selector?,
                network,
                user,
                port,
                deploy_root,
            })
        }
    }
}

const SELECTOR_HINT: &str = "Hetzner's syntax: `k=v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, joined by `,` (and), e.g. `client=alpha,role=app`";

/// Port, user and deploy root of a host (`prefix` is where they are
/// written, e.g. `hosts[0].`), with their defaults.
fn login(
    c: &mut Check,
    prefix: &str,
    port: Option<u16>,
    user: &Option<S<String>>,
    deploy_root: &Option<S<String>>,
) -> (u16, String, String) {
    if port == Some(0) {
        c.plain(&format!("{prefix}port"), "port 0 is not a port", "");
    }
    if let Some(u) = user
        && !is_user(&u.value)
    {
        c.at(
            &format!("{prefix}user"),
            u,
            format!("`{}` is not a user name", u.value),
            "lowercase letters, digits, `_` and `-`",
        );
    }
    if let Some(d) = deploy_root
        && !is_deploy_root(&d.value)
    {
        c.at(
            &format!("{prefix}deploy_root"),
            d,
            format!("`{}` is not an absolute, plain path", d.value),
            "e.g. /opt/fleetgate: letters, digits, `.`, `_`, `-`, no `..`",
        );
    }
    (
        port.unwrap_or(22),
        user.as_ref()
            .map_or(DEFAULT_USER.to_string(), |u| u.value.clone()),
        deploy_root
            .as_ref()
            .map_or(DEFAULT_DEPLOY_ROOT.to_string(), |d| {
                d.value.trim_end_matches('/').to_string()
            }),
    )
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

#[cfg(test)]
mod tests {
    use crate::config::model::Hosts;
    use crate::config::validate::testing::{assert_outcome, files, trim_indent};
    use crate::config::validate::validate;

    /// `hosts`: the `hosts:` value of `clients/alpha.yaml` (YAML at column
    /// 0, from line 5); `expect`: the problems, or the hosts with defaults.
    fn check(hosts: &str, expect: &[&str]) {
        let fixture = format!(
            "domain: a.org\ngroup: canary\napps: []\nhosts:\n{}\n\
             //- pipelines/pipeline.yaml\nstages: [{{name: canary, group: canary}}]",
            trim_indent(hosts)
                .lines()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let (fleet, problems) = validate(&files("clients/alpha.yaml", "", &fixture));
        let summary = fleet
            .clients
            .values()
            .flat_map(|c| match &c.hosts {
                Hosts::Static(hosts) => hosts
                    .iter()
                    .map(|h| {
                        format!(
                            "{}: {}@{} port {} in {}",
                            h.name, h.user, h.address, h.port, h.deploy_root
                        )
                    })
                    .collect(),
                Hosts::Hcloud {
                    label_selector,
                    network,
                    user,
                    port,
                    deploy_root,
                } => vec![format!(
                    "hcloud {label_selector} over {network:?}: {user} port {port} in {deploy_root}"
                )],
            })
            .collect();
        assert_outcome(&fixture, &problems, summary, expect);
    }

    #[test]
    fn static_hosts() {
        check(
            r#"
            - {name: alpha-1, address: 203.0.113.10}
            - {name: alpha-2, address: "[2001:db8::1]", port: 2222, user: ops_1, deploy_root: /srv/fleet-gate/}
            - {name: "3", address: host-3.example.org, deploy_root: /opt/a.b_c}
            "#,
            &[
                "alpha-1: deploy@203.0.113.10 port 22 in /opt/fleetgate",
                "alpha-2: ops_1@[2001:db8::1] port 2222 in /srv/fleet-gate",
                "3: deploy@host-3.example.org port 22 in /opt/a.b_c",
            ],
        );
        check("[]", &["clients/alpha.yaml hosts: no hosts are listed"]);
        check(
            r#"
            - {name: Alpha, address: 203.0.113.10}
            - {name: b, address: 203.0.113.11}
            - {name: b, address: 203.0.113.12}
            "#,
            &[
                "clients/alpha.yaml:5 hosts[0].name: host `Alpha` is not a valid name",
                "clients/alpha.yaml:7 hosts[2].name: host `b` is listed twice",
            ],
        );
        check(
            "- {name: a, addr: 203.0.113.10}",
            &["clients/alpha.yaml:5 hosts[0].addr: unknown field `addr`"],
        );
    }

    /// Address, user and deploy root reach a remote shell and ssh's command
    /// line: anything that could read as an option or a second word is refused.
    #[test]
    fn static_host_fields() {
        check(
            r#"
            - {name: a, address: "-oProxyCommand=x"}
            - {name: b, address: "host name"}
            - {name: c, address: ""}
            - {name: d, address: 203.0.113.10, port: 0}
            "#,
            &[
                "clients/alpha.yaml:5 hosts[0].address: `-oProxyCommand=x` is not a host address",
                "clients/alpha.yaml:6 hosts[1].address: `host name` is not a host address",
                "clients/alpha.yaml:7 hosts[2].address: `` is not a host address",
                "clients/alpha.yaml hosts[3].port: port 0 is not a port",
            ],
        );
        check(
            "- {name: a, address: 203.0.113.10, port: 70000}",
            &["clients/alpha.yaml:5 hosts[0].port: invalid u16"],
        );
        check(
            &format!(
                r#"
                - {{name: a, address: 203.0.113.10, user: Root}}
                - {{name: b, address: 203.0.113.10, user: -x}}
                - {{name: c, address: 203.0.113.10, user: {}}}
                - {{name: d, address: 203.0.113.10, user: "a b"}}
                "#,
                "u".repeat(33)
            ),
            &[
                "clients/alpha.yaml:5 hosts[0].user: `Root` is not a user name",
                "clients/alpha.yaml:6 hosts[1].user: `-x` is not a user name",
                "clients/alpha.yaml:7 hosts[2].user: is not a user name",
                "clients/alpha.yaml:8 hosts[3].user: `a b` is not a user name",
            ],
        );
        check(
            r#"
            - {name: a, address: 203.0.113.10, deploy_root: opt/fleetgate}
            - {name: b, address: 203.0.113.10, deploy_root: /}
            - {name: c, address: 203.0.113.10, deploy_root: /opt/../etc}
            - {name: d, address: 203.0.113.10, deploy_root: /opt/my dir}
            - {name: e, address: 203.0.113.10, deploy_root: /opt/$HOME}
            - {name: f, address: 203.0.113.10, deploy_root: //opt}
            "#,
            &[
                "clients/alpha.yaml:5 hosts[0].deploy_root: `opt/fleetgate` is not an absolute, plain path",
                "clients/alpha.yaml:6 hosts[1].deploy_root: `/` is not an absolute, plain path",
                "clients/alpha.yaml:7 hosts[2].deploy_root: `/opt/../etc` is not an absolute, plain path",
                "clients/alpha.yaml:8 hosts[3].deploy_root: `/opt/my dir` is not an absolute, plain path",
                "clients/alpha.yaml:9 hosts[4].deploy_root: `/opt/$HOME` is not an absolute, plain path",
                "clients/alpha.yaml:10 hosts[5].deploy_root: `//opt` is not an absolute, plain path",
            ],
        );
    }

    #[test]
    fn hcloud_hosts() {
        check(
            "{hcloud: {label_selector: client=alpha}}",
            &["hcloud client=alpha over PublicIpv4: deploy port 22 in /opt/fleetgate"],
        );
        check(
            "{hcloud: {label_selector: client=alpha, user: ops, port: 2222, deploy_root: /srv/f/}}",
            &["hcloud client=alpha over PublicIpv4: ops port 2222 in /srv/f"],
        );
        check(
            "{hcloud: {labels: client=alpha}}",
            &["clients/alpha.yaml:5 hosts.hcloud.labels: unknown field `labels`"],
        );
        check(
            "{aws: {}}",
            &["clients/alpha.yaml:5 hosts.aws: unknown field `aws`"],
        );
    }

    /// The selector is parsed as the API would: the problem names the part
    /// at fault. Valid ones are kept in their canonical form.
    #[test]
    fn hcloud_label_selector() {
        for (selector, expect) in [
            (
                r#""client == alpha, role in (app, db), !frozen""#,
                "hcloud client=alpha,role in (app,db),!frozen over PublicIpv4: deploy port 22 in /opt/fleetgate",
            ),
            (
                r#""example.com/tier notin (edge),client!=beta""#,
                "hcloud example.com/tier notin (edge),client!=beta over PublicIpv4: deploy port 22 in /opt/fleetgate",
            ),
            (
                r#"" ""#,
                "clients/alpha.yaml:5 hosts.hcloud.label_selector: invalid label selector: the selector is empty",
            ),
            (
                r#""client=alpha,role in (app,db""#,
                "clients/alpha.yaml:5 hosts.hcloud.label_selector: invalid label selector: `role in (app,db`: no `)` closes the list of values",
            ),
            (
                r#""client=al pha""#,
                "clients/alpha.yaml:5 hosts.hcloud.label_selector: invalid label selector: `client=al pha`: `al pha` is not a label value",
            ),
            (
                r#""client=alpha,,role=app""#,
                "clients/alpha.yaml:5 hosts.hcloud.label_selector: invalid label selector: `client=alpha,,role=app`: an empty requirement",
            ),
            (
                r#""client:alpha""#,
                "clients/alpha.yaml:5 hosts.hcloud.label_selector: invalid label selector: `client:alpha`: `client:alpha` is not a label key",
            ),
            (
                r#""role in app""#,
                "clients/alpha.yaml:5 hosts.hcloud.label_selector: invalid label selector: `role in app`: the values of `in` go in parentheses",
            ),
        ] {
            check(
                &format!("{{hcloud: {{label_selector: {selector}}}}}"),
                &[expect],
            );
        }
    }

    #[test]
    fn hcloud_network_and_login() {
        let hcloud = |more: &str| format!("hcloud:\n  label_selector: client=alpha\n{more}");
        for (more, expect) in [
            (
                "  network: public",
                "hcloud client=alpha over PublicIpv4: deploy port 22 in /opt/fleetgate",
            ),
            (
                "  network: public-ipv6",
                "hcloud client=alpha over PublicIpv6: deploy port 22 in /opt/fleetgate",
            ),
            (
                "  network: {private: backend-net}",
                r#"hcloud client=alpha over Private("backend-net"): deploy port 22 in /opt/fleetgate"#,
            ),
            (
                "  network:\n    private: backend",
                r#"hcloud client=alpha over Private("backend"): deploy port 22 in /opt/fleetgate"#,
            ),
            (
                "  network: private",
                "clients/alpha.yaml:7 hosts.hcloud.network: invalid value: string \"private\", expected `public`, `public-ipv6` or `{private: <network name>}`",
            ),
            (
                "  network: ipv6",
                "clients/alpha.yaml:7 hosts.hcloud.network: invalid value: string \"ipv6\"",
            ),
            (
                "  network: [public]",
                "clients/alpha.yaml:7 hosts.hcloud.network: invalid type: sequence, expected `public`",
            ),
            (
                "  network: {private: \"\"}",
                "clients/alpha.yaml:7 hosts.hcloud.network.private: `` is not a network name",
            ),
            (
                "  network: {public: x}",
                "clients/alpha.yaml:7 hosts.hcloud.network.public: unknown field `public`, expected one of private",
            ),
        ] {
            check(&hcloud(more), &[expect]);
        }
        // Port, user and deploy root are checked as for static hosts.
        check(
            &hcloud("  port: 0\n  user: Root\n  deploy_root: /opt/../etc"),
            &[
                "clients/alpha.yaml hosts.hcloud.port: port 0 is not a port",
                "clients/alpha.yaml:8 hosts.hcloud.user: `Root` is not a user name",
                "clients/alpha.yaml:9 hosts.hcloud.deploy_root: `/opt/../etc` is not an absolute, plain path",
            ],
        );
        // Every problem at once, the selector's too.
        check(
            "{hcloud: {label_selector: \"!\", user: \"-x\"}}",
            &[
                "clients/alpha.yaml:5 hosts.hcloud.label_selector: invalid label selector: `!`: a label key is missing",
                "clients/alpha.yaml:5 hosts.hcloud.user: `-x` is not a user name",
            ],
        );
    }
}
