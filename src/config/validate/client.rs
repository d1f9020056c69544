//! `clients/<client>.yaml`: the name (the file's stem), domain, group (one a
//! stage picks), apps (that exist, once each), hosts (`hosts.rs`), vars
//! usable in templates, and every secret its apps declare provided by the
//! client's or the shared secrets file.

use std::collections::{BTreeMap, BTreeSet};

use super::hosts::{self, is_address};
use super::{Check, NAME_HINT, is_ident, is_name};
use crate::config::model::{App, Client, Pipeline};
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
    if let Some(p) = pipeline
        && !p.stages.iter().any(|s| s.group == raw.group.value)
    {
        let groups: Vec<&str> = p.stages.iter().map(|s| s.group.as_str()).collect();
        c.at(
            "group",
            &raw.group,
            format!(
                "group `{}` is not picked by any stage of {PIPELINE}",
                raw.group.value
            ),
            &format!("use one of: {}", groups.join(", ")),
        );
    }
    let mut app_names = Vec::new();
    for (i, a) in raw.apps.iter().enumerate() {
        let field = format!("apps[{i}]");
        if invalid_apps.contains(&a.value) {
            // Already reported in the app's own file.
        } else if !apps.contains_key(&a.value) {
            let known: Vec<&str> = apps.keys().map(String::as_str).collect();
            c.at(
                &field,
                a,
                format!("app `{}` does not exist", a.value),
                &format!(
                    "define {APPS_DIR}/{}/app.yaml, or use one of: {}",
                    a.value,
                    known.join(", ")
                ),
            );
        } else if app_names.contains(&a.value) {
            c.at(&field, a, format!("app `{}` is listed twice", a.value), "");
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
    (problems.len() == before).then(|| Client {
        name: name.to_string(),
        domain: raw.domain.value.clone(),
        group: raw.group.value.clone(),
        apps: app_names,
        hosts,
        vars: raw.vars.clone(),
        secrets,
    })
}
