//! `pipelines/apps/<app>/app.yaml`: runtime and its commands, pinned images,
//! files and the templates they come from, declared secrets, rollback policy;
//! health checks are in `health.rs`.

use std::collections::{BTreeMap, BTreeSet};

use super::{Check, NAME_HINT, health, is_ident, is_name};
use crate::config::model::{App, Commands, HealthCheck, RollbackPolicy, Runtime};
use crate::config::{APPS_DIR, FleetFiles, raw, yaml};
use crate::error::Diagnostic;
use crate::scan::pin::ImageRef;

/// The valid apps, and the names of apps that exist but did not validate (so
/// clients using them are not told the app does not exist).
pub(super) fn validate_all(
    files: &FleetFiles,
    problems: &mut Vec<Diagnostic>,
) -> (BTreeMap<String, App>, BTreeSet<String>) {
    let mut apps = BTreeMap::new();
    let mut invalid = BTreeSet::new();
    let app_dirs: BTreeSet<&str> = files
        .files
        .keys()
        .filter_map(|p| p.strip_prefix(&format!("{APPS_DIR}/")))
        .filter_map(|rest| rest.split_once('/').map(|(app, _)| app))
        .collect();
    for name in app_dirs {
        let file = format!("{APPS_DIR}/{name}/app.yaml");
        if !is_name(name) {
            problems.push(
                Diagnostic::new(
                    format!("{APPS_DIR}/{name}"),
                    format!("app `{name}` is not a valid name"),
                )
                .hint(NAME_HINT),
            );
            continue;
        }
        let Some(bytes) = files.files.get(&file) else {
            problems.push(
                Diagnostic::new(&file, "is missing")
                    .hint("every directory under pipelines/apps/ is an app and needs an app.yaml"),
            );
            continue;
        };
        let app = yaml::parse::<raw::App>(&file, bytes)
            .map_err(|d| problems.push(d))
            .ok()
            .and_then(|raw| validate_app(files, name, &file, raw, problems));
        match app {
            Some(app) => {
                apps.insert(name.to_string(), app);
            }
            None => {
                invalid.insert(name.to_string());
            }
        }
    }
    (apps, invalid)
}

fn validate_app(
    files: &FleetFiles,
    name: &str,
    file: &str,
    raw: raw::App,
    problems: &mut Vec<Diagnostic>,
) -> Option<App> {
    let before = problems.len();
    let mut c = Check { file, problems };
    let mut images = BTreeMap::new();
    for (key, reference) in &raw.images {
        let field = format!("images.{key}");
        if !is_ident(key) {
            c.at(
                &field,
                reference,
                format!("image name `{key}` is not usable in templates"),
                "image names are letters, digits and `_` (templates write app.images.<name>)",
            );
        }
        match ImageRef::parse_pinned(&reference.value) {
            Ok(r) => {
                images.insert(key.clone(), r);
            }
            Err(e) => c.at(&field, reference, e.message, &e.hint),
        }
    }
    let mut templates = BTreeMap::new();
    let mut out_files = BTreeMap::new();
    for (dest, template) in &raw.files {
        let field = format!("files.{dest}");
        if !is_release_path(dest) {
            c.at(
                &field,
                template,
                format!("destination `{dest}` is not a plain relative path"),
                "write a path inside the release directory: no leading `/`, no `..`, no empty parts",
            );
            continue;
        }
        if dest == "state.json" || dest == "current" || dest.starts_with("releases/") {
            c.at(
                &field,
                template,
                format!("destination `{dest}` is reserved by fleetgate"),
                "pick another file name",
            );
            continue;
        }
        if !is_release_path(&template.value) {
            c.at(
                &field,
                template,
                format!("template `{}` is not a plain relative path", template.value),
                "templates live in the app's directory",
            );
            continue;
        }
        let source_path = format!("{APPS_DIR}/{name}/{}", template.value);
        match files.files.get(&source_path) {
            Some(bytes) => match String::from_utf8(bytes.clone()) {
                Ok(text) => {
                    let tname = format!("{name}/{}", template.value);
                    templates.insert(tname.clone(), text);
                    out_files.insert(dest.clone(), tname);
                }
                Err(_) => c.at(
                    &field,
                    template,
                    format!("template {source_path} is not UTF-8 text"),
                    "",
                ),
            },
            // A symlink is reported as such by `load`, not as missing.
            None if files.problems.iter().any(|d| d.file == source_path) => {}
            None => c.at(
                &field,
                template,
                format!("template `{}` does not exist", template.value),
                &format!("create {source_path} or fix the name"),
            ),
        }
    }
    let mut secrets = Vec::new();
    for (i, key) in raw.secrets.iter().enumerate() {
        if !is_ident(&key.value) {
            c.at(
                &format!("secrets[{i}]"),
                key,
                format!("secret key `{}` is not a valid name", key.value),
                "secret keys are letters, digits and `_`",
            );
        } else if secrets.contains(&key.value) {
            c.at(
                &format!("secrets[{i}]"),
                key,
                format!("secret `{}` is listed twice", key.value),
                "",
            );
        } else {
            secrets.push(key.value.clone());
        }
    }
    let commands = raw
        .commands
        .as_ref()
        .map_or_else(Commands::default, |cm| Commands {
            start: cm.start.clone(),
            stop: cm.stop.clone(),
        });
    if raw.runtime.value == Runtime::Command && commands.start.is_none() {
        c.at(
            "commands.start",
            &raw.runtime,
            "runtime `command` needs `commands.start`",
            "add commands: { start: \"./start.sh\" }, run in the release directory",
        );
    }
    let health: Vec<HealthCheck> = raw
        .health
        .iter()
        .enumerate()
        .filter_map(|(i, h)| health::validate(&mut c, i, h))
        .collect();
    (problems.len() == before).then(|| App {
        name: name.to_string(),
        runtime: raw.runtime.value,
        images,
        files: out_files,
        templates,
        secrets,
        commands,
        health,
        rollback: raw.rollback.unwrap_or(RollbackPolicy::Safe),
    })
}

/// A path inside a release directory: relative, no `..`, no empty parts.
pub(super) fn is_release_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !p.chars().any(|c| c.is_control())
}
