//! `clients/<client>.yaml`: the name (the file's stem), domain, group (one a
//! stage picks), apps (that exist, once each), hosts (`hosts.rs`), vars
//! usable in templates, and every secret its apps declare provided by the
//! client's or the shared secrets file.

use std::collections::{BTreeMap, BTreeSet};

use super::hosts::{self, is_address};
use super::{Check, NAME_HINT, is_ident, is_name};
use crate::config::model::{App, Client, Pipeline};
use crate::config::raw::S;
use crate::config::{
    APPS_DIR, FleetFiles, PIPELINE, SHARED_SECRETS, client_file, client_secrets_file, raw, yaml,
};
use crate::error::Diagnostic;
use crate::secrets::SopsFile;

pub(super) fn validate(
    files: &FleetFiles,
    name: &str,
    pipeline: Option<&Pipeline>,
    apps: &BTreeMap<String, App>,
    invalid_apps: &BTreeSet<String>,
    shared: Option<&SopsFile>,
    problems: &mut Vec<Diagnostic>,
) -> Option<Client> {
    let file = client_file(name);
    if !is_name(name) {
        problems.push(
            Diagnostic::new(
                &file,
                format!("client `{name}` is not a valid name (the file name is the client's name)"),
            )
            .hint(NAME_HINT),
        );
        return None;
    }
    let secrets = if files.client_secrets.contains(name) {
        let path = client_secrets_file(name);
        files.files.get(&path).and_then(|bytes| {
            SopsFile::parse(&path, bytes)
                .map_err(|p| problems.extend(p))
                .ok()
        })
    } else {
        None
    };
    let bytes = files.files.get(&file)?;
    let raw: raw::Client = match yaml::parse(&file, bytes) {
        Ok(r) => r,
        Err(d) => {
            problems.push(d);
            return None;
        }
    };
    let before = problems.len();
    let mut c = Check {
        file: &file,
        problems,
    };
    if !is_address(&raw.domain.value) || raw.domain.value.contains(':') {
        c.at(
            "domain",
            &raw.domain,
            format!("`{}` is not a domain name", raw.domain.value),
            "e.g. `alpha.example.org`",
        );
    }
    c.name("group", &raw.group, "group");
    if let Some(p) = pipeline {
        group_is_picked(&mut c, &raw.group, p);
    }
    let mut app_names = Vec::with_capacity(raw.apps.len());
    for (i, a) in raw.apps.iter().enumerate() {
        // Named only in a problem: not formatted for every client's apps.
        let field = || format!("apps[{i}]");
        if invalid_apps.contains(&a.value) {
            // Already reported in the app's own file.
        } else if !apps.contains_key(&a.value) {
            let known: Vec<&str> = apps.keys().map(String::as_str).collect();
            c.at(
                &field(),
                a,
                format!("app `{}` does not exist", a.value),
                &format!(
                    "define {APPS_DIR}/{}/app.yaml, or use one of: {}",
                    a.value,
                    known.join(", ")
                ),
            );
        } else if app_names.contains(&a.value) {
            c.at(
                &field(),
                a,
                format!("app `{}` is listed twice", a.value),
                "",
            );
        } else {
            app_names.push(a.value.clone());
        }
    }
    let hosts = hosts::validate(&mut c, &raw.hosts);
    for key in raw.vars.keys() {
        if !is_ident(key) {
            c.plain(
                &format!("vars.{key}"),
                format!("variable `{key}` is not usable in templates"),
                "variable names are letters, digits and `_` (templates write client.vars.<name>)",
            );
        }
    }
    // Every secret an app declares must come from the client's or the shared file.
    for app in app_names.iter().filter_map(|a| apps.get(a)) {
        for key in &app.secrets {
            let provided = secrets.as_ref().is_some_and(|s| s.keys.contains_key(key))
                || shared.is_some_and(|s| s.keys.contains_key(key));
            if !provided {
                c.plain(
                    "apps",
                    format!(
                        "app `{}` needs secret `{key}`, which neither {} nor {SHARED_SECRETS} provides",
                        app.name,
                        client_secrets_file(name)
                    ),
                    &format!("add it: `cd secrets && sops edit clients/{name}.sops.yaml`"),
                );
            }
        }
    }
    let hosts = hosts.filter(|_| problems.len() == before)?;
    // The parsed map keeps room for more entries than it has (a few
    // hundred bytes per client, most of a client with a var or two):
    // moved into one of its size, in the same order.
    let mut vars = serde_json::Map::with_capacity(raw.vars.len());
    vars.extend(raw.vars);
    // Moved, not copied: a fleet holds one of these per client.
    Some(Client {
        name: name.to_string(),
        domain: raw.domain.value,
        group: raw.group.value,
        apps: app_names,
        hosts,
        vars,
        secrets: secrets.map(Box::new),
    })
}

/// A client's group must be one a stage picks. Also checked by `fleet` for
/// clients not validated in full, when the pipeline changes under them.
pub(super) fn group_is_picked(c: &mut Check, group: &S<String>, p: &Pipeline) {
    if !p.stages.iter().any(|s| s.group == group.value) {
        let groups: Vec<&str> = p.stages.iter().map(|s| s.group.as_str()).collect();
        c.at(
            "group",
            group,
            format!(
                "group `{}` is not picked by any stage of {PIPELINE}",
                group.value
            ),
            &format!("use one of: {}", groups.join(", ")),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::model::{Client, Hosts};
    use crate::config::validate::testing::{assert_outcome, files, sops};
    use crate::config::validate::validate;

    /// One stage (`canary`) and two apps: `web`, and `db`, which needs a
    /// `db_password`.
    const BASE: &str = r#"
        //- pipelines/pipeline.yaml
        stages: [{name: canary, group: canary}]
        //- pipelines/apps/web/app.yaml
        runtime: compose
        //- pipelines/apps/db/app.yaml
        runtime: compose
        secrets: [db_password]
    "#;

    /// `fixture`: `clients/alpha.yaml` (or `//- path` files added to
    /// [`BASE`]); `expect`: the problems, or the valid clients.
    fn check(fixture: &str, expect: &[&str]) {
        let (fleet, problems) = validate(&files("clients/alpha.yaml", BASE, fixture));
        let summary = fleet.clients.values().map(|c| summary(c)).collect();
        assert_outcome(fixture, &problems, summary, expect);
    }

    fn summary(c: &Client) -> String {
        let hosts = match &c.hosts {
            Hosts::Static(h) => h
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            Hosts::Hcloud { label_selector, .. } => format!("hcloud {label_selector}"),
        };
        format!(
            "client {}: domain={} group={} apps={:?} hosts={hosts} vars={} secrets={:?}",
            c.name,
            c.domain,
            c.group,
            c.apps,
            serde_json::Value::Object(c.vars.clone()),
            c.secrets
                .as_ref()
                .map(|s| s.keys.keys().collect::<Vec<_>>())
        )
    }

    const HOSTS: &str = "hosts: [{name: alpha-1, address: 203.0.113.10}]";

    #[test]
    fn valid_clients() {
        check(
            &format!("domain: alpha.example.org\ngroup: canary\napps: [web]\n{HOSTS}"),
            &[
                r#"client alpha: domain=alpha.example.org group=canary apps=["web"] hosts=alpha-1 vars={} secrets=None"#,
            ],
        );
        check(
            &format!(
                r#"
                domain: alpha.example.org
                group: canary
                apps: [web, db]
                {HOSTS}
                vars: {{port: 8080, _x1: [a]}}
                //- secrets/clients/alpha.sops.yaml
                {}
                "#,
                sops(&["db_password"]).replace('\n', "\n                ")
            ),
            &[
                r#"client alpha: domain=alpha.example.org group=canary apps=["web", "db"] hosts=alpha-1 vars={"port":8080,"_x1":["a"]} secrets=Some(["db_password"])"#,
            ],
        );
    }

    #[test]
    fn file_name_and_keys() {
        check(
            &format!("//- clients/Alpha.yaml\ndomain: a.org\ngroup: canary\napps: []\n{HOSTS}"),
            &[
                "clients/Alpha.yaml: client `Alpha` is not a valid name (the file name is the client's name)",
            ],
        );
        check(
            &format!("domain: a.org\ngroup: canary\napps: []\n{HOSTS}\nenv: prod"),
            &["clients/alpha.yaml:5 env: unknown field `env`"],
        );
        check(
            &format!("domain: a.org\ngroup: canary\n{HOSTS}"),
            &["clients/alpha.yaml:3: missing field `apps`"],
        );
        check(
            "domain: a.org\ngroup: canary\napps: []\nhosts: alpha-1",
            &["clients/alpha.yaml:4 hosts: a list of hosts or `{hcloud: {label_selector: ...}}`"],
        );
    }

    #[test]
    fn domain_and_group() {
        check(
            &format!("domain: alpha example.org\ngroup: Canary\napps: []\n{HOSTS}"),
            &[
                "clients/alpha.yaml:1 domain: `alpha example.org` is not a domain name",
                "clients/alpha.yaml:2 group: group `Canary` is not a valid name",
                "clients/alpha.yaml:2 group: group `Canary` is not picked by any stage",
            ],
        );
        check(
            &format!("domain: \"[::1]:80\"\ngroup: production\napps: []\n{HOSTS}"),
            &[
                "clients/alpha.yaml:1 domain: `[::1]:80` is not a domain name",
                "clients/alpha.yaml:2 group: group `production` is not picked by any stage of pipelines/pipeline.yaml",
            ],
        );
        check(
            &format!("domain: -alpha.org\ngroup: canary\napps: []\n{HOSTS}"),
            &["clients/alpha.yaml:1 domain: `-alpha.org` is not a domain name"],
        );
    }

    #[test]
    fn apps_exist_once() {
        check(
            &format!(
                r#"
                domain: a.org
                group: canary
                apps: [web, nope, web, broken]
                {HOSTS}
                //- pipelines/apps/broken/app.yaml
                runtime: docker
                "#
            ),
            &[
                // The broken app is reported in its own file, not again here.
                "pipelines/apps/broken/app.yaml:1 runtime.value: unknown variant `docker`",
                "clients/alpha.yaml:3 apps[1]: app `nope` does not exist",
                "clients/alpha.yaml:3 apps[2]: app `web` is listed twice",
            ],
        );
    }

    #[test]
    fn vars_are_usable_in_templates() {
        check(
            &format!(
                "domain: a.org\ngroup: canary\napps: []\n{HOSTS}\nvars: {{my-port: 1, ok: 2, 1st: 3}}"
            ),
            &[
                "clients/alpha.yaml vars.my-port: variable `my-port` is not usable in templates",
                "clients/alpha.yaml vars.1st: variable `1st` is not usable in templates",
            ],
        );
    }

    #[test]
    fn declared_secrets_are_provided() {
        let client = format!("domain: a.org\ngroup: canary\napps: [db]\n{HOSTS}");
        check(
            &client,
            &[
                "clients/alpha.yaml apps: app `db` needs secret `db_password`, which neither secrets/clients/alpha.sops.yaml nor secrets/shared.sops.yaml provides",
            ],
        );
        check(
            &format!(
                "{client}\n//- secrets/clients/alpha.sops.yaml\n{}",
                sops(&["other"])
            ),
            &["clients/alpha.yaml apps: app `db` needs secret `db_password`"],
        );
        check(
            &format!(
                "{client}\n//- secrets/shared.sops.yaml\n{}",
                sops(&["db_password"])
            ),
            &[
                r#"client alpha: domain=a.org group=canary apps=["db"] hosts=alpha-1 vars={} secrets=None"#,
            ],
        );
        // A secrets file that does not parse is reported, and provides nothing.
        check(
            &format!(
                "{client}\n//- secrets/clients/alpha.sops.yaml\ndb_password: plain\nsops: {{}}"
            ),
            &[
                "secrets/clients/alpha.sops.yaml:1 db_password: secret `db_password` is not encrypted",
                "clients/alpha.yaml apps: app `db` needs secret `db_password`",
            ],
        );
    }
}
