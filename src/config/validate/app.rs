//! `pipelines/apps/<app>/app.yaml`: runtime and its commands, pinned images,
//! files and the templates they come from, declared secrets, rollback policy;
//! health checks are in `health.rs`.

use std::collections::{BTreeMap, BTreeSet};

use super::{Check, NAME_HINT, health, is_ident, is_name};
use crate::config::model::{
    App, Commands, DEFAULT_DRAIN, HealthCheck, RollbackPolicy, Route, Runtime, Strategy,
};
use crate::config::raw::S;
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
        if dest == "state.json"
            || dest == "current"
            || dest.starts_with("releases/")
            || dest.starts_with(".fleetgate/")
        {
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
            backup: cm.backup.as_ref().map(|b| b.value.clone()),
            restore: cm.restore.clone(),
            logs: cm.logs.clone(),
        });
    // A backup fleetgate cannot put back is half a feature: the failure
    // report names `fleetgate restore --app`, which runs `commands.restore`.
    if let Some(backup) = raw.commands.as_ref().and_then(|cm| cm.backup.as_ref())
        && commands.restore.is_none()
    {
        c.at(
            "commands.backup",
            backup,
            "`commands.backup` needs `commands.restore`",
            "add commands: { restore: \"...\" }: run in the live release with FLEETGATE_BACKUP_ID set, by `fleetgate restore --app`",
        );
    }
    let snapshot_keep = super::stages::snapshot_keep(&mut c, "snapshot_keep", &raw.snapshot_keep);
    if raw.runtime.value == Runtime::Command && commands.start.is_none() {
        c.at(
            "commands.start",
            &raw.runtime,
            "runtime `command` needs `commands.start`",
            "add commands: { start: \"./start.sh\" }, run in the release directory",
        );
    }
    if let Some(cm) = &raw.commands
        && cm.logs.as_deref().is_some_and(|l| l.trim().is_empty())
    {
        c.at(
            "commands.logs",
            &raw.runtime,
            "`commands.logs` is empty",
            "leave it out (compose and podman apps get `logs --tail 100` of their project), or write a command that prints the app's last log lines, e.g. \"tail -n 100 app.log\"",
        );
    }
    let health: Vec<HealthCheck> = raw
        .health
        .iter()
        .enumerate()
        .filter_map(|(i, h)| health::validate(&mut c, i, h))
        .collect();
    let routes = routes(&mut c, &raw);
    let strategy = strategy(&mut c, &raw, &templates);
    let quadlet = super::quadlet::validate(&mut c, &raw, &out_files, &strategy);
    if matches!(strategy, Strategy::BlueGreen { .. }) {
        for (i, r) in routes.iter().enumerate() {
            if r.port.is_some() {
                c.at(
                    &format!("routes[{i}].port"),
                    &raw.routes[i],
                    "a blue_green app's routes go to the live slot: leave out `port`",
                    "the proxy is pointed at `slot_ports` of the slot that passed its gate",
                );
            }
        }
    } else {
        for (i, r) in routes.iter().enumerate() {
            if r.port.is_none() {
                c.at(
                    &format!("routes[{i}]"),
                    &raw.routes[i],
                    "a route needs `port`: where the app listens on the host",
                    "write port: 8080 (or a template, e.g. \"{{ client.vars.web_port }}\")",
                );
            }
        }
    }
    for (i, h) in health.iter().enumerate() {
        if let HealthCheck::Http(h) = h
            && h.route
            && routes.is_empty()
        {
            c.at(
                &format!("health[{i}].route"),
                &raw.health[i],
                "`route: true` needs a route: this app has no `routes`",
                "add routes: [{hosts: [...], port: N}], or drop `route: true`",
            );
        }
    }
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
        routes,
        strategy,
        quadlet,
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

/// `routes:`: host names (templates), an optional path prefix, the service
/// behind it, its port, an optional health path.
fn routes(c: &mut Check, raw: &raw::App) -> Vec<Route> {
    let mut out = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let f = |k: &str| format!("routes[{i}].{k}");
        let v = &r.value;
        if v.hosts.is_empty() {
            c.at(
                &f("hosts"),
                r,
                "a route needs at least one host name",
                "write hosts: [\"{{ client.domain }}\"]",
            );
        }
        for (j, h) in v.hosts.iter().enumerate() {
            if h.value.trim().is_empty() {
                c.at(&format!("{}[{j}]", f("hosts")), h, "an empty host name", "");
            }
        }
        let mut path_ok = |field: &str, p: &S<String>| {
            if !is_route_path(&p.value) {
                c.at(
                    field,
                    p,
                    format!("`{}` is not a path prefix", p.value),
                    "write an absolute path of letters, digits and `/-._~`, e.g. /api (no query, spaces or braces)",
                );
            }
        };
        if let Some(p) = &v.path {
            path_ok(&f("path"), p);
        }
        if let Some(p) = &v.health
            && (!p.value.starts_with('/') || p.value.chars().any(|ch| ch.is_whitespace()))
        {
            c.at(
                &f("health"),
                p,
                format!("`{}` is not a path", p.value),
                "write the path the gate GETs on the app's port, e.g. /health",
            );
        }
        if let Some(s) = &v.service {
            c.name(&f("service"), s, "service");
        }
        out.push(Route {
            hosts: v.hosts.iter().map(|h| h.value.trim().to_string()).collect(),
            path: v
                .path
                .as_ref()
                .map(|p| p.value.clone())
                .filter(|p| p != "/"),
            service: v.service.as_ref().map(|s| s.value.clone()),
            port: v.port.as_ref().map(|p| p.value.0.clone()),
            health: v.health.as_ref().map(|p| p.value.clone()),
            directives: v.proxy_directives.iter().map(|d| d.value.clone()).collect(),
        });
    }
    // Two routes of one app claiming the same names and path: one of them
    // would never be reached.
    let mut seen = BTreeMap::new();
    for (i, r) in out.iter().enumerate() {
        // An empty name is reported above; a name listed twice in one route
        // is one route (rendering drops the repeat).
        let names: BTreeSet<&String> = r.hosts.iter().filter(|h| !h.is_empty()).collect();
        for h in names {
            let key = (h.clone(), r.path.clone().unwrap_or_else(|| "/".into()));
            if let Some(first) = seen.insert(key.clone(), i) {
                c.at(
                    &format!("routes[{i}].hosts"),
                    &raw.routes[i],
                    format!("`{}{}` is also routed by routes[{first}]", key.0, key.1),
                    "one route per host name and path",
                );
            }
        }
    }
    out
}

/// A path prefix a proxy config can hold without quoting.
pub(crate) fn is_route_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains("//")
        && p.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "/-._~".contains(ch))
}

/// `strategy`, `drain` and `slot_ports`. blue_green runs two releases side
/// by side: refused for stateful apps (`rollback: freeze`, or a template
/// that declares volumes), whose two releases would share their data.
fn strategy(c: &mut Check, raw: &raw::App, templates: &BTreeMap<String, String>) -> Strategy {
    let blue_green = raw
        .strategy
        .as_ref()
        .filter(|s| s.value == raw::Strategy::BlueGreen);
    let Some(s) = blue_green else {
        if let Some(d) = &raw.drain {
            c.at(
                "drain",
                d,
                "`drain` applies to `strategy: blue_green` only",
                "",
            );
        }
        if let Some(p) = &raw.slot_ports {
            c.at(
                "slot_ports",
                p,
                "`slot_ports` applies to `strategy: blue_green` only",
                "",
            );
        }
        return Strategy::Recreate;
    };
    let stateful = "blue/green runs the old and the new release side by side: that is safe only for a stateless app";
    if raw.rollback == Some(RollbackPolicy::Freeze) {
        c.at(
            "strategy",
            s,
            "`strategy: blue_green` refused: the app is `rollback: freeze` (stateful)",
            stateful,
        );
    }
    for (name, source) in templates {
        if let Some(line) = declares_volumes(source) {
            c.at(
                "strategy",
                s,
                format!(
                    "`strategy: blue_green` refused: template {name} declares volumes (line {line}), so the app keeps state"
                ),
                stateful,
            );
        }
    }
    let drain = match &raw.drain {
        Some(d) => c.duration("drain", &d.value, DEFAULT_DRAIN),
        None => DEFAULT_DRAIN,
    };
    let ports: Vec<String> = raw
        .slot_ports
        .as_ref()
        .map(|p| p.value.iter().map(|p| p.value.0.clone()).collect())
        .unwrap_or_default();
    let slot_ports = match (ports.as_slice(), &raw.slot_ports) {
        ([a, b], Some(p)) => {
            if a == b {
                c.at(
                    "slot_ports",
                    p,
                    "the two slots have the same port",
                    "give each slot its own port",
                );
            }
            [a.clone(), b.clone()]
        }
        (_, Some(p)) => {
            c.at(
                "slot_ports",
                p,
                format!(
                    "`slot_ports` lists {} ports; blue/green needs two",
                    ports.len()
                ),
                "write slot_ports: [8080, 8081] (the blue and the green slot's host port)",
            );
            [String::new(), String::new()]
        }
        (_, None) => {
            c.at(
                "slot_ports",
                s,
                "`strategy: blue_green` needs `slot_ports`",
                "write slot_ports: [8080, 8081]: the host port of each slot, `{{ release.port }}` in templates",
            );
            [String::new(), String::new()]
        }
    };
    Strategy::BlueGreen { slot_ports, drain }
}

/// The line of a volume that keeps state in a template (a compose file's):
/// a top-level `volumes:` (named volumes), or a service volume that is not
/// read-only (short syntax without `:ro`, long syntax without
/// `read_only: true`). A read-only bind of a rendered config file keeps
/// nothing.
fn declares_volumes(source: &str) -> Option<usize> {
    let lines: Vec<&str> = source.lines().collect();
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(rest) = t.strip_prefix("volumes:") else {
            continue;
        };
        let indent = indent_of(line);
        if indent == 0 {
            return Some(i + 1);
        }
        let rest = rest.trim();
        if let Some(inline) = rest.strip_prefix('[') {
            let inner = inline.trim_end().trim_end_matches(']');
            if inner
                .split(',')
                .any(|e| !e.trim().is_empty() && !read_only(e))
            {
                return Some(i + 1);
            }
            continue;
        }
        // A block list: items `- …` at this indentation or deeper, each
        // with its continuation lines.
        let mut j = i + 1;
        while j < lines.len() {
            let lj = lines[j];
            let tj = lj.trim_start();
            if tj.is_empty() || tj.starts_with('#') {
                j += 1;
                continue;
            }
            let ind = indent_of(lj);
            if ind < indent || (ind == indent && !tj.starts_with("- ")) {
                break;
            }
            let Some(item) = tj.strip_prefix("- ") else {
                j += 1;
                continue;
            };
            let mut k = j + 1;
            let mut long_read_only = item.trim() == "read_only: true";
            while k < lines.len() {
                let lk = lines[k];
                let tk = lk.trim_start();
                if !tk.is_empty() && indent_of(lk) <= ind {
                    break;
                }
                long_read_only |= tk == "read_only: true";
                k += 1;
            }
            let long = item.contains(": ") || item.trim_end().ends_with(':');
            if (long && !long_read_only) || (!long && !read_only(item)) {
                return Some(j + 1);
            }
            j = k;
        }
    }
    None
}

/// A short-syntax volume mounted read-only (`./app.env:/etc/app.env:ro`).
fn read_only(entry: &str) -> bool {
    let e = entry.trim().trim_matches(['"', '\'']);
    let mode = e.rsplit(':').next().unwrap_or_default();
    e.matches(':').count() >= 2 && mode.split(',').any(|m| m == "ro")
}

#[cfg(test)]
mod tests {
    #[test]
    fn volumes_that_keep_state_are_found_read_only_binds_are_not() {
        use super::declares_volumes;
        for (compose, line) in [
            // Named volumes.
            (
                "services:\n  db:\n    image: x\nvolumes:\n  data: {}\n",
                Some(4),
            ),
            // A writable bind, block and inline.
            (
                "services:\n  web:\n    volumes:\n      - ./data:/data\n",
                Some(4),
            ),
            (
                "services:\n  web:\n    volumes: [\"./data:/data\"]\n",
                Some(3),
            ),
            (
                "services:\n  web:\n    volumes:\n    - data:/var/lib/x:rw\n",
                Some(4),
            ),
            // Long syntax, writable.
            (
                "services:\n  web:\n    volumes:\n      - type: bind\n        source: ./d\n        target: /d\n",
                Some(4),
            ),
            // Read-only binds of rendered files: stateless.
            (
                "services:\n  web:\n    volumes: [\"./app.env:/etc/app.env:ro\"]\n",
                None,
            ),
            (
                "services:\n  web:\n    volumes:\n      - ./a:/a:ro\n      - './b:/b:ro,z'\n    ports: [\"8080:80\"]\n",
                None,
            ),
            (
                "services:\n  web:\n    volumes:\n      - type: bind\n        source: ./a\n        target: /a\n        read_only: true\n",
                None,
            ),
            ("services:\n  web:\n    image: x\n", None),
        ] {
            assert_eq!(declares_volumes(compose), line, "{compose}");
        }
    }

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
        if app.commands.backup.is_some() || app.commands.restore.is_some() {
            out.push(format!(
                "  backup={:?} restore={:?}",
                app.commands.backup, app.commands.restore
            ));
        }
        if app.snapshot.is_some()
            || app.snapshot_keep.is_some()
            || app.commands.pre_snapshot.is_some()
        {
            out.push(format!(
                "  snapshot={:?} keep={:?} pre_snapshot={:?}",
                app.snapshot, app.snapshot_keep, app.commands.pre_snapshot
            ));
        }
        if let Some(logs) = &app.commands.logs {
            out.push(format!("  logs={logs:?}"));
        }
        out.extend(app.images.iter().map(|(k, r)| format!("  image {k}: {r}")));
        out.extend(app.routes.iter().map(|r| {
            format!(
                "  route hosts={:?} path={:?} service={:?} port={:?} health={:?} directives={:?}",
                r.hosts, r.path, r.service, r.port, r.health, r.directives
            )
        }));
        out.extend(
            app.files
                .iter()
                .map(|(dest, t)| format!("  file {dest}: {t} ({} bytes)", app.templates[t].len())),
        );
        if let Strategy::BlueGreen { slot_ports, drain } = &app.strategy {
            out.push(format!(
                "  blue_green slot_ports={slot_ports:?} drain={drain:?}"
            ));
        }
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
    fn backup_commands() {
        check(
            "runtime: compose\nrollback: freeze\ncommands: {backup: ./backup.sh, restore: ./restore.sh}",
            &[
                r#"app web: runtime=Compose rollback=Freeze start=None stop=None secrets=[] health=0"#,
                r#"  backup=Some("./backup.sh") restore=Some("./restore.sh")"#,
            ],
        );
        // A restore alone is allowed (ids from elsewhere); a backup alone is not.
        check(
            "runtime: compose\ncommands: {restore: ./restore.sh}",
            &[
                r#"app web: runtime=Compose rollback=Safe start=None stop=None secrets=[] health=0"#,
                r#"  backup=None restore=Some("./restore.sh")"#,
            ],
        );
        check(
            "runtime: compose\ncommands:\n  backup: ./backup.sh",
            &[
                "pipelines/apps/web/app.yaml:3 commands.backup: `commands.backup` needs `commands.restore`",
            ],
        );
    }

    #[test]
    fn a_logs_command_for_any_runtime() {
        check(
            "runtime: command\ncommands: {start: ./start.sh, logs: tail -n 50 app.log}",
            &[
                r#"app web: runtime=Command rollback=Safe start=Some("./start.sh") stop=None secrets=[] health=0"#,
                r#"  logs="tail -n 50 app.log""#,
            ],
        );
        check(
            "runtime: compose\ncommands: {logs: docker compose logs --tail 20 web}",
            &[
                r#"app web: runtime=Compose rollback=Safe start=None stop=None secrets=[] health=0"#,
                r#"  logs="docker compose logs --tail 20 web""#,
            ],
        );
        check(
            "runtime: podman\ncommands: {logs: \" \"}",
            &["pipelines/apps/web/app.yaml:1 commands.logs: `commands.logs` is empty"],
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

    #[test]
    fn routes_of_a_recreate_app() {
        check(
            r#"
            runtime: compose
            routes:
              - hosts: ["{{ client.domain }}", " www.{{ client.domain }} "]
                port: 8080
              - hosts: [api.example.org]
                path: /api
                service: api
                port: "{{ client.vars.api_port }}"
                health: /health
                proxy_directives: ["client_max_body_size 10G;"]
              - hosts: [root.example.org]
                path: /
                port: 8081
            health:
              - {http: "http://{{ client.domain }}/health", route: true}
            "#,
            &[
                "app web: runtime=Compose rollback=Safe start=None stop=None secrets=[] health=1",
                r#"  route hosts=["{{ client.domain }}", "www.{{ client.domain }}"] path=None service=None port=Some("8080") health=None directives=[]"#,
                r#"  route hosts=["api.example.org"] path=Some("/api") service=Some("api") port=Some("{{ client.vars.api_port }}") health=Some("/health") directives=["client_max_body_size 10G;"]"#,
                // `path: /` is the same as no path.
                r#"  route hosts=["root.example.org"] path=None service=None port=Some("8081") health=None directives=[]"#,
            ],
        );
    }

    #[test]
    fn route_fields() {
        check(
            r#"
            runtime: compose
            routes:
              - {hosts: [], port: 1}
              - {hosts: ["", "  "], port: 1}
              - {hosts: [a.example.org], path: api, port: 1}
              - {hosts: [a.example.org], path: "/a//b", port: 1}
              - {hosts: [a.example.org], path: "/a b", port: 1}
              - {hosts: [a.example.org], path: "/{{ x }}", port: 1}
              - {hosts: [b.example.org], health: health, port: 1}
              - {hosts: [c.example.org], health: "/he alth", port: 1}
              - {hosts: [d.example.org], service: Web_1, port: 1}
            "#,
            &[
                "pipelines/apps/web/app.yaml:3 routes[0].hosts: a route needs at least one host name",
                "pipelines/apps/web/app.yaml:4 routes[1].hosts[0]: an empty host name",
                "pipelines/apps/web/app.yaml:4 routes[1].hosts[1]: an empty host name",
                "pipelines/apps/web/app.yaml:5 routes[2].path: `api` is not a path prefix",
                "pipelines/apps/web/app.yaml:6 routes[3].path: `/a//b` is not a path prefix",
                "pipelines/apps/web/app.yaml:7 routes[4].path: `/a b` is not a path prefix",
                "pipelines/apps/web/app.yaml:8 routes[5].path: `/{{ x }}` is not a path prefix",
                "pipelines/apps/web/app.yaml:9 routes[6].health: `health` is not a path",
                "pipelines/apps/web/app.yaml:10 routes[7].health: `/he alth` is not a path",
                "pipelines/apps/web/app.yaml:11 routes[8].service: service `Web_1` is not a valid name",
            ],
        );
        check(
            "runtime: compose\nroutes: [{hosts: [a.example.org], port: 1, tls: on}]",
            &["pipelines/apps/web/app.yaml:2 routes[0].value.tls: unknown field `tls`"],
        );
        check(
            "runtime: compose\nroutes: [{port: 1}]",
            &["pipelines/apps/web/app.yaml:2 routes[0].value: missing field `hosts`"],
        );
        check(
            "runtime: compose\nroutes: [{hosts: [a.example.org], port: [1]}]",
            &[
                "pipelines/apps/web/app.yaml:2 routes[0].value.port.value: invalid type: sequence, expected a port number or a template",
            ],
        );
    }

    /// One app routing the same host name and path twice: one route would
    /// never be reached. Another path, or another name, is fine.
    #[test]
    fn one_app_routes_a_name_and_path_once() {
        check(
            r#"
            runtime: compose
            routes:
              - {hosts: [a.example.org, b.example.org], port: 1}
              - {hosts: [a.example.org], path: /api, port: 2}
              - {hosts: [c.example.org, b.example.org], path: /, port: 3}
              - {hosts: [d.example.org, d.example.org], port: 4}
            "#,
            &[
                "pipelines/apps/web/app.yaml:5 routes[2].hosts: `b.example.org/` is also routed by routes[0]",
            ],
        );
    }

    #[test]
    fn a_recreate_route_needs_a_port_and_a_blue_green_route_has_none() {
        check(
            "runtime: compose\nroutes: [{hosts: [a.example.org]}]",
            &[
                "pipelines/apps/web/app.yaml:2 routes[0]: a route needs `port`: where the app listens on the host",
            ],
        );
        check(
            "runtime: compose\nstrategy: recreate\nroutes:\n  - {hosts: [a.example.org]}",
            &[
                "pipelines/apps/web/app.yaml:4 routes[0]: a route needs `port`: where the app listens on the host",
            ],
        );
        check(
            r#"
            runtime: compose
            strategy: blue_green
            slot_ports: [8080, 8081]
            routes:
              - {hosts: [a.example.org]}
              - {hosts: [b.example.org], port: 8080}
            "#,
            &[
                "pipelines/apps/web/app.yaml:6 routes[1].port: a blue_green app's routes go to the live slot: leave out `port`",
            ],
        );
    }

    #[test]
    fn blue_green() {
        check(
            r#"
            runtime: compose
            strategy: blue_green
            slot_ports: [8080, "{{ client.vars.green_port }}"]
            routes: [{hosts: [a.example.org], health: /health}]
            "#,
            &[
                "app web: runtime=Compose rollback=Safe start=None stop=None secrets=[] health=0",
                r#"  route hosts=["a.example.org"] path=None service=None port=None health=Some("/health") directives=[]"#,
                r#"  blue_green slot_ports=["8080", "{{ client.vars.green_port }}"] drain=10s"#,
            ],
        );
        check(
            "runtime: command\ncommands: {start: ./start.sh}\nstrategy: blue_green\nslot_ports: [1, 2]\ndrain: 1m30s",
            &[
                r#"app web: runtime=Command rollback=Safe start=Some("./start.sh") stop=None secrets=[] health=0"#,
                r#"  blue_green slot_ports=["1", "2"] drain=90s"#,
            ],
        );
        // Explicitly `recreate`: the default.
        check(
            "runtime: compose\nstrategy: recreate",
            &["app web: runtime=Compose rollback=Safe start=None stop=None secrets=[] health=0"],
        );
        check(
            "runtime: compose\nstrategy: canary",
            &["pipelines/apps/web/app.yaml:2 strategy.value: unknown variant `canary`"],
        );
    }

    #[test]
    fn blue_green_needs_two_distinct_slot_ports() {
        check(
            "runtime: compose\nstrategy: blue_green",
            &[
                "pipelines/apps/web/app.yaml:2 slot_ports: `strategy: blue_green` needs `slot_ports`",
            ],
        );
        check(
            "runtime: compose\nstrategy: blue_green\nslot_ports: [8080]",
            &[
                "pipelines/apps/web/app.yaml:3 slot_ports: `slot_ports` lists 1 ports; blue/green needs two",
            ],
        );
        check(
            "runtime: compose\nstrategy: blue_green\nslot_ports: [1, 2, 3]",
            &[
                "pipelines/apps/web/app.yaml:3 slot_ports: `slot_ports` lists 3 ports; blue/green needs two",
            ],
        );
        check(
            "runtime: compose\nstrategy: blue_green\nslot_ports: []",
            &[
                "pipelines/apps/web/app.yaml:3 slot_ports: `slot_ports` lists 0 ports; blue/green needs two",
            ],
        );
        check(
            "runtime: compose\nstrategy: blue_green\nslot_ports: [8080, \"8080\"]",
            &["pipelines/apps/web/app.yaml:3 slot_ports: the two slots have the same port"],
        );
        check(
            "runtime: compose\nstrategy: blue_green\nslot_ports: [1, 2]\ndrain: soon",
            &["pipelines/apps/web/app.yaml drain: `soon` is not a duration"],
        );
    }

    #[test]
    fn drain_and_slot_ports_are_for_blue_green_only() {
        check(
            "runtime: compose\ndrain: 10s\nslot_ports: [1, 2]",
            &[
                "pipelines/apps/web/app.yaml:2 drain: `drain` applies to `strategy: blue_green` only",
                "pipelines/apps/web/app.yaml:3 slot_ports: `slot_ports` applies to `strategy: blue_green` only",
            ],
        );
        check(
            "runtime: compose\nstrategy: recreate\ndrain: 10s",
            &[
                "pipelines/apps/web/app.yaml:3 drain: `drain` applies to `strategy: blue_green` only",
            ],
        );
    }

    /// Two releases side by side would share a stateful app's data.
    #[test]
    fn blue_green_is_refused_for_stateful_apps() {
        check(
            "runtime: compose\nrollback: freeze\nstrategy: blue_green\nslot_ports: [1, 2]",
            &[
                "pipelines/apps/web/app.yaml:3 strategy: `strategy: blue_green` refused: the app is `rollback: freeze` (stateful)",
            ],
        );
        check(
            r#"
            runtime: compose
            files: {compose.yaml: compose.yaml.j2, a.env: a.env.j2}
            strategy: blue_green
            slot_ports: [1, 2]
            //- pipelines/apps/web/compose.yaml.j2
            services:
              db:
                volumes:
                  - data:/var/lib/postgresql/data
            volumes:
              data: {}
            //- pipelines/apps/web/a.env.j2
            # volumes: none
            A=1
            "#,
            &[
                "pipelines/apps/web/app.yaml:3 strategy: `strategy: blue_green` refused: template web/compose.yaml.j2 declares volumes (line 4), so the app keeps state",
            ],
        );
        // Safe and without volumes: allowed.
        check(
            r#"
            runtime: compose
            files: {compose.yaml: compose.yaml.j2}
            rollback: safe
            strategy: blue_green
            slot_ports: [1, 2]
            //- pipelines/apps/web/compose.yaml.j2
            services:
              web: {ports: ["{{ release.port }}:80"]}
            "#,
            &[
                "app web: runtime=Compose rollback=Safe start=None stop=None secrets=[] health=0",
                "  file compose.yaml: web/compose.yaml.j2 (52 bytes)",
                r#"  blue_green slot_ports=["1", "2"] drain=10s"#,
            ],
        );
    }

    #[test]
    fn a_route_check_needs_routes() {
        check(
            "runtime: compose\nhealth:\n  - {command: \"true\"}\n  - {http: \"http://a.example.org/\", route: true}",
            &[
                "pipelines/apps/web/app.yaml:4 health[1].route: `route: true` needs a route: this app has no `routes`",
            ],
        );
        check(
            "runtime: compose\nhealth: [{http: \"http://a.example.org/\", route: false}]",
            &["app web: runtime=Compose rollback=Safe start=None stop=None secrets=[] health=1"],
        );
    }

    #[test]
    fn fleetgate_directory_is_reserved() {
        check(
            "runtime: compose\nfiles: {.fleetgate/routes: a.j2}\n//- pipelines/apps/web/a.j2\na",
            &[
                "pipelines/apps/web/app.yaml:2 files..fleetgate/routes: destination `.fleetgate/routes` is reserved by fleetgate",
            ],
        );
        check(
            "runtime: compose\nfiles: {.fleetgate/x/y: a.j2}\n//- pipelines/apps/web/a.j2\na",
            &[
                "pipelines/apps/web/app.yaml:2 files..fleetgate/x/y: destination `.fleetgate/x/y` is reserved by fleetgate",
            ],
        );
    }

    /// Routes are served by the pipeline's proxy: without `proxy:`, an app
    /// with routes is refused (checked with the whole fleet).
    #[test]
    fn routes_need_a_proxy_in_the_pipeline() {
        let app = "runtime: compose\nroutes: [{hosts: [a.example.org], port: 1}]";
        let problems = |pipeline: &str| {
            let fixture = format!("{app}\n//- pipelines/pipeline.yaml\n{pipeline}");
            let (_, problems) = crate::config::validate::validate(&files(APP, "", &fixture));
            problems
                .iter()
                .map(crate::config::validate::testing::render)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            problems("stages: [{name: a, group: a}]"),
            ["pipelines/apps/web/app.yaml:2 routes: has `routes` but the pipeline runs no proxy"]
        );
        assert_eq!(
            problems("stages: [{name: a, group: a}]\nproxy: {kind: caddy}"),
            Vec::<String>::new()
        );
    }
}
