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
            pre_snapshot: cm.pre_snapshot.clone(),
        });
    let snapshot_keep = super::stages::snapshot_keep(&mut c, "snapshot_keep", &raw.snapshot_keep);
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
        snapshot: raw.snapshot,
        snapshot_keep,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::testing::{IMAGE, assert_outcome, files};

    const APP: &str = "pipelines/apps/web/app.yaml";

    /// `fixture`: `pipelines/apps/web/app.yaml` (or `//- path` files: other
    /// apps, templates); `expect`: the problems, or the valid apps.
    fn check(fixture: &str, expect: &[&str]) {
        check_files(fixture, files(APP, "", fixture), expect);
    }

    fn check_files(fixture: &str, files: FleetFiles, expect: &[&str]) {
        let mut problems = Vec::new();
        let (apps, _invalid) = validate_all(&files, &mut problems);
        let summary = apps.values().flat_map(summary).collect();
        assert_outcome(fixture, &problems, summary, expect);
    }

    fn summary(app: &App) -> Vec<String> {
        let mut out = vec![format!(
            "app {}: runtime={:?} rollback={:?} start={:?} stop={:?} secrets={:?} health={}",
            app.name,
            app.runtime,
            app.rollback,
            app.commands.start,
            app.commands.stop,
            app.secrets,
            app.health.len()
        )];
        if app.snapshot.is_some()
            || app.snapshot_keep.is_some()
            || app.commands.pre_snapshot.is_some()
        {
            out.push(format!(
                "  snapshot={:?} keep={:?} pre_snapshot={:?}",
                app.snapshot, app.snapshot_keep, app.commands.pre_snapshot
            ));
        }
        out.extend(app.images.iter().map(|(k, r)| format!("  image {k}: {r}")));
        out.extend(
            app.files
                .iter()
                .map(|(dest, t)| format!("  file {dest}: {t} ({} bytes)", app.templates[t].len())),
        );
        out
    }

    #[test]
    fn defaults() {
        check(
            "runtime: compose",
            &[r#"app web: runtime=Compose rollback=Safe start=None stop=None secrets=[] health=0"#],
        );
    }

    #[test]
    fn every_field_set() {
        check(
            &format!(
                r#"
                runtime: command
                images: {{web: "{IMAGE}", db_2: "{IMAGE}"}}
                files:
                  compose.yaml: compose.yaml.j2
                  conf/app.env: env/app.env.j2
                secrets: [admin_password, _token2]
                commands: {{start: ./start.sh, stop: ./stop.sh}}
                health: [{{command: "true"}}]
                rollback: freeze
                //- pipelines/apps/web/compose.yaml.j2
                services: {{}}
                //- pipelines/apps/web/env/app.env.j2
                A=1
                //- pipelines/apps/db/app.yaml
                runtime: podman
                "#
            ),
            &[
                "app db: runtime=Podman rollback=Safe start=None stop=None secrets=[] health=0",
                r#"app web: runtime=Command rollback=Freeze start=Some("./start.sh") stop=Some("./stop.sh") secrets=["admin_password", "_token2"] health=1"#,
                &format!("  image db_2: {IMAGE}"),
                &format!("  image web: {IMAGE}"),
                "  file compose.yaml: web/compose.yaml.j2 (13 bytes)",
                "  file conf/app.env: web/env/app.env.j2 (4 bytes)",
            ],
        );
    }

    #[test]
    fn directories_and_keys() {
        check(
            "//- pipelines/apps/Web/app.yaml\nruntime: compose",
            &["pipelines/apps/Web: app `Web` is not a valid name"],
        );
        check(
            "//- pipelines/apps/web/compose.yaml.j2\nx: 1",
            &["pipelines/apps/web/app.yaml: is missing"],
        );
        check(
            "runtime: compose\nimagez: {}",
            &["pipelines/apps/web/app.yaml:2 imagez: unknown field `imagez`"],
        );
        check(
            "images: {}",
            &["pipelines/apps/web/app.yaml:1: missing field `runtime`"],
        );
        check(
            "runtime: docker",
            &["pipelines/apps/web/app.yaml:1 runtime.value: unknown variant `docker`"],
        );
        check(
            "runtime: compose\nrollback: later",
            &["pipelines/apps/web/app.yaml:2 rollback: unknown variant `later`"],
        );
        check(
            "runtime: compose\ncommands: {start: x, restart: y}",
            &["pipelines/apps/web/app.yaml:2 commands.restart: unknown field `restart`"],
        );
    }

    #[test]
    fn images_are_pinned_and_named_for_templates() {
        check(
            &format!(
                r#"
                runtime: compose
                images:
                  web-1: "{IMAGE}"
                  tag_only: registry.example.org/whoami:1.4.0
                  latest: registry.example.org/whoami
                  empty: ""
                "#
            ),
            &[
                "pipelines/apps/web/app.yaml:6 images.empty: image reference is empty",
                "pipelines/apps/web/app.yaml:5 images.latest: registry.example.org/whoami",
                "pipelines/apps/web/app.yaml:4 images.tag_only: registry.example.org/whoami:1.4.0",
                "pipelines/apps/web/app.yaml:3 images.web-1: image name `web-1` is not usable in templates",
            ],
        );
    }

    #[test]
    fn files_and_templates() {
        check(
            r#"
            runtime: compose
            files:
              /etc/passwd: a.j2
              ../up: a.j2
              a//b: a.j2
              ./a: a.j2
              state.json: a.j2
              current: a.j2
              releases/x: a.j2
              ok: ../other/a.j2
              ok2: /a.j2
              ok3: missing.j2
              ok4: a.j2
            //- pipelines/apps/web/a.j2
            a
            "#,
            &[
                "pipelines/apps/web/app.yaml:4 files.../up: destination `../up` is not a plain relative path",
                "pipelines/apps/web/app.yaml:6 files../a: destination `./a` is not a plain relative path",
                "pipelines/apps/web/app.yaml:3 files./etc/passwd: destination `/etc/passwd` is not a plain relative path",
                "pipelines/apps/web/app.yaml:5 files.a//b: destination `a//b` is not a plain relative path",
                "pipelines/apps/web/app.yaml:8 files.current: destination `current` is reserved by fleetgate",
                "pipelines/apps/web/app.yaml:10 files.ok: template `../other/a.j2` is not a plain relative path",
                "pipelines/apps/web/app.yaml:11 files.ok2: template `/a.j2` is not a plain relative path",
                "pipelines/apps/web/app.yaml:12 files.ok3: template `missing.j2` does not exist",
                "pipelines/apps/web/app.yaml:9 files.releases/x: destination `releases/x` is reserved by fleetgate",
                "pipelines/apps/web/app.yaml:7 files.state.json: destination `state.json` is reserved by fleetgate",
            ],
        );
        // A template that is not text, and one `load` refused as a symlink
        // (reported there, not again as missing).
        let fixture = "runtime: compose\nfiles: {a: a.j2, b: b.j2}";
        let mut files = files(APP, "", fixture);
        files
            .files
            .insert("pipelines/apps/web/a.j2".into(), vec![0xff, 0xfe]);
        files
            .problems
            .push(crate::repo::symlink_refused("pipelines/apps/web/b.j2"));
        check_files(
            fixture,
            files,
            &[
                "pipelines/apps/web/app.yaml:2 files.a: template pipelines/apps/web/a.j2 is not UTF-8 text",
            ],
        );
    }

    #[test]
    fn secrets_are_declared_once_by_usable_names() {
        check(
            "runtime: compose\nsecrets: [admin-password, token, token, 1st]",
            &[
                "pipelines/apps/web/app.yaml:2 secrets[0]: secret key `admin-password` is not a valid name",
                "pipelines/apps/web/app.yaml:2 secrets[2]: secret `token` is listed twice",
                "pipelines/apps/web/app.yaml:2 secrets[3]: secret key `1st` is not a valid name",
            ],
        );
    }

    #[test]
    fn runtime_command_needs_a_start_command() {
        check(
            "runtime: command\ncommands: {stop: ./stop.sh}",
            &[
                "pipelines/apps/web/app.yaml:1 commands.start: runtime `command` needs `commands.start`",
            ],
        );
        check(
            "runtime: command",
            &[
                "pipelines/apps/web/app.yaml:1 commands.start: runtime `command` needs `commands.start`",
            ],
        );
        check(
            "runtime: podman\ncommands: {stop: ./stop.sh}",
            &[
                r#"app web: runtime=Podman rollback=Safe start=None stop=Some("./stop.sh") secrets=[] health=0"#,
            ],
        );
    }

    #[test]
    fn snapshot_keys() {
        check(
            "runtime: compose\nrollback: freeze\nsnapshot: before_deploy\nsnapshot_keep: 2\ncommands: {pre_snapshot: ./dump.sh}",
            &[
                r#"app web: runtime=Compose rollback=Freeze start=None stop=None secrets=[] health=0"#,
                r#"  snapshot=Some(BeforeDeploy) keep=Some(2) pre_snapshot=Some("./dump.sh")"#,
            ],
        );
        check(
            "runtime: compose\nsnapshot_keep: 0",
            &["pipelines/apps/web/app.yaml:2 snapshot_keep: snapshot_keep must be at least 1"],
        );
    }
}
