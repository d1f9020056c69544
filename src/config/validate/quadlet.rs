//! `runtime: quadlet` in app.yaml: the unit files the app's `files:` must
//! hold, `units:` (the systemd units restarted and gated) and `quadlet:`
//! (scope and directory); what the other runtimes have that a quadlet app
//! cannot use.

use std::collections::BTreeMap;

use super::Check;
use crate::config::model::{QuadletApp, Runtime, Strategy};
use crate::config::raw;

/// The quadlet part of an app: `Some` for a valid quadlet app, `None` for
/// another runtime (whose `units:`/`quadlet:` are refused here) or a
/// problem (pushed to `c`).
pub(super) fn validate(
    c: &mut Check,
    raw: &raw::App,
    files: &BTreeMap<String, String>,
    strategy: &Strategy,
) -> Option<QuadletApp> {
    if raw.runtime.value != Runtime::Quadlet {
        if let Some(units) = &raw.units {
            c.at(
                "units",
                units,
                "`units` is for `runtime: quadlet` only",
                "leave it out: other runtimes are started by their project or commands",
            );
        }
        if let Some(q) = &raw.quadlet {
            c.at(
                "quadlet",
                q,
                "`quadlet` is for `runtime: quadlet` only",
                "leave it out, or write runtime: quadlet",
            );
        }
        return None;
    }
    let before = c.problems.len();
    let unit_files: Vec<&str> = files
        .keys()
        .map(String::as_str)
        .filter(|p| UNIT_EXTENSIONS.iter().any(|e| p.ends_with(e)))
        .collect();
    if unit_files.is_empty() {
        c.at(
            "files",
            &raw.runtime,
            "runtime `quadlet` needs at least one unit file in `files`",
            "add e.g. files: { app.container: app.container.j2 } (.container, .pod, .network, .volume, .kube)",
        );
    }
    if let Some(cm) = &raw.commands
        && (cm.start.is_some() || cm.stop.is_some())
    {
        c.at(
            "commands",
            &raw.runtime,
            "a quadlet app is started and stopped by systemd: `commands.start` and `commands.stop` are not used",
            "leave them out; `units:` names what is restarted",
        );
    }
    if matches!(strategy, Strategy::BlueGreen { .. }) {
        c.at(
            "strategy",
            &raw.runtime,
            "`strategy: blue_green` is not supported for `runtime: quadlet`",
            "leave it out (recreate: the units restart in place)",
        );
    }
    let units = match &raw.units {
        Some(units) => {
            if units.value.is_empty() {
                c.at(
                    "units",
                    units,
                    "`units` is empty",
                    "leave it out for every service the unit files generate, or name them",
                );
            }
            for (i, u) in units.value.iter().enumerate() {
                if !is_unit_name(&u.value) {
                    c.at(
                        &format!("units[{i}]"),
                        u,
                        format!("`{}` is not a systemd unit name", u.value),
                        "write the unit's full name, e.g. authentik-pod.service",
                    );
                }
            }
            units.value.iter().map(|u| u.value.clone()).collect()
        }
        None => default_units(unit_files.iter().copied()),
    };
    let (scope, dir) = match &raw.quadlet {
        Some(q) => (q.value.scope, q.value.dir.as_ref()),
        None => (None, None),
    };
    if let Some(d) = dir {
        let rest = d.value.strip_prefix("~/").or(d.value.strip_prefix('/'));
        if rest.is_none_or(|r| !super::app::is_release_path(r)) {
            c.at(
                "quadlet.dir",
                d,
                format!("`{}` is not an absolute path or one under `~/`", d.value),
                "write e.g. /etc/containers/systemd or ~/.config/containers/systemd",
            );
        }
    }
    (c.problems.len() == before).then(|| QuadletApp {
        units,
        scope,
        dir: dir.map(|d| d.value.clone()),
    })
}

/// The files Quadlet turns into units.
pub const UNIT_EXTENSIONS: [&str; 5] = [".container", ".pod", ".network", ".volume", ".kube"];

/// The services a deploy restarts when `units:` says nothing: Quadlet's
/// service of each `.container` (`X.service`), `.kube` (`X.service`) and
/// `.pod` (`X-pod.service`) — systemd starts a pod's containers, networks
/// and volumes with it. (A unit file's `ServiceName=` renames its service:
/// then `units:` must name it.)
pub fn default_units<'a>(paths: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut units: Vec<String> = paths
        .filter_map(|p| {
            let base = p.rsplit('/').next().unwrap_or(p);
            if let Some(stem) = base.strip_suffix(".pod") {
                Some(format!("{stem}-pod.service"))
            } else {
                base.strip_suffix(".container")
                    .or_else(|| base.strip_suffix(".kube"))
                    .map(|stem| format!("{stem}.service"))
            }
        })
        .collect();
    units.sort();
    units.dedup();
    units
}

/// A unit name systemd accepts: `name.type`, the name of letters, digits
/// and `:-_.\\@`, not starting with `-`.
pub fn is_unit_name(u: &str) -> bool {
    let types = [
        ".service", ".socket", ".target", ".timer", ".path", ".mount",
    ];
    types.iter().any(|t| u.len() > t.len() && u.ends_with(t))
        && u.len() <= 255
        && !u.starts_with('-')
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::testing::{assert_outcome, files};

    /// `fixture`: `pipelines/apps/idp/app.yaml` (and `//- path` templates);
    /// `expect`: the problems, or each valid app's quadlet part.
    fn check(fixture: &str, expect: &[&str]) {
        let mut problems = Vec::new();
        let (apps, _) = super::super::app::validate_all(
            &files("pipelines/apps/idp/app.yaml", "", fixture),
            &mut problems,
        );
        let summary = apps
            .values()
            .map(|a| format!("{}: {:?} {:?}", a.name, a.runtime, a.quadlet))
            .collect();
        assert_outcome(fixture, &problems, summary, expect);
    }

    const UNITS: &str = "//- pipelines/apps/idp/idp.pod.j2\n[Pod]\n//- pipelines/apps/idp/server.container.j2\n[Container]\n";

    #[test]
    fn quadlet_apps() {
        check(
            &format!(
                "runtime: quadlet\nfiles: {{idp.pod: idp.pod.j2, units/server.container: server.container.j2}}\n{UNITS}"
            ),
            &[
                r#"idp: Quadlet Some(QuadletApp { units: ["idp-pod.service", "server.service"], scope: None, dir: None })"#,
            ],
        );
        check(
            &format!(
                "runtime: quadlet\nfiles: {{idp.pod: idp.pod.j2}}\nunits: [idp-pod.service]\nquadlet: {{scope: user, dir: ~/units}}\n{UNITS}"
            ),
            &[
                r#"idp: Quadlet Some(QuadletApp { units: ["idp-pod.service"], scope: Some(User), dir: Some("~/units") })"#,
            ],
        );
        check("runtime: compose", &["idp: Compose None"]);
    }

    #[test]
    fn what_a_quadlet_app_cannot_have() {
        check(
            "runtime: quadlet",
            &[
                "pipelines/apps/idp/app.yaml:1 files: runtime `quadlet` needs at least one unit file",
            ],
        );
        check(
            &format!(
                "runtime: quadlet\nfiles: {{idp.pod: idp.pod.j2}}\nunits: [idp, \"a;b.service\"]\n{UNITS}"
            ),
            &[
                "pipelines/apps/idp/app.yaml:3 units[0]: `idp` is not a systemd unit name",
                "pipelines/apps/idp/app.yaml:3 units[1]: `a;b.service` is not a systemd unit name",
            ],
        );
        check(
            &format!(
                "runtime: quadlet\nfiles: {{idp.pod: idp.pod.j2}}\ncommands: {{start: x}}\nquadlet: {{dir: relative/dir}}\n{UNITS}"
            ),
            &[
                "pipelines/apps/idp/app.yaml:1 commands: a quadlet app is started and stopped by systemd",
                "pipelines/apps/idp/app.yaml:4 quadlet.dir: `relative/dir` is not an absolute path",
            ],
        );
        check(
            "runtime: compose\nunits: [a.service]\nquadlet: {scope: user}",
            &[
                "pipelines/apps/idp/app.yaml:2 units: `units` is for `runtime: quadlet` only",
                "pipelines/apps/idp/app.yaml:3 quadlet: `quadlet` is for `runtime: quadlet` only",
            ],
        );
    }

    #[test]
    fn default_units_are_the_long_running_services_quadlet_generates() {
        let files = [
            "authentik.pod",
            "units/server.container",
            "worker.container",
            "app.kube",
            "net.network",
            "data.volume",
            "authentik.env",
        ];
        assert_eq!(
            default_units(files.into_iter()),
            [
                "app.service",
                "authentik-pod.service",
                "server.service",
                "worker.service"
            ]
        );
    }

    #[test]
    fn unit_names() {
        for ok in [
            "a.service",
            "authentik-pod.service",
            "x@1.service",
            "t.timer",
        ] {
            assert!(is_unit_name(ok), "{ok}");
        }
        for bad in [
            "a",
            ".service",
            "-a.service",
            "a b.service",
            "a;rm.service",
            "a.container",
        ] {
            assert!(!is_unit_name(bad), "{bad}");
        }
    }
}
