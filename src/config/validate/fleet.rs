//! Rules over the whole fleet: stages without clients (a warning), host
//! names used twice, a client's group no stage picks (for clients not
//! validated in full), secrets files of clients that do not exist.
//!
//! They need every client's group and host names, not every client validated:
//! a plan reads every client file for that outline only when its change can
//! break one of these rules (`plan::Affected`), so `check`, `plan`, `deploy`
//! and `run` agree on every commit while a plan's cost follows its change.
//! The secrets rule needs only the listings, read at every commit.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::Check;
use super::client::group_is_picked;
use crate::config::model::{Client, Hosts, Pipeline};
use crate::config::{
    CLIENT_SECRETS_DIR, FleetFiles, PIPELINE, client_file, client_secrets_file, raw, yaml,
};
use crate::error::Diagnostic;

/// What the rules need of one client: a validated client's own strings
/// (a whole fleet's worth is not copied), or what its outline parsed.
struct Outline<'a> {
    group: Cow<'a, str>,
    hosts: Vec<Cow<'a, str>>,
}

impl<'a> Outline<'a> {
    fn of(client: &'a Client) -> Outline<'a> {
        Outline {
            group: Cow::Borrowed(&client.group),
            hosts: match &client.hosts {
                Hosts::Static(hosts) => hosts.iter().map(|h| Cow::Borrowed(&*h.name)).collect(),
                Hosts::Hcloud { .. } => Vec::new(),
            },
        }
    }
}

/// The group and host names of a client file, if it parses that far: a file
/// that does not is reported by its own validation (every `check`, and every
/// plan whose change touches it).
pub fn outline(bytes: &[u8]) -> Option<(raw::S<String>, Vec<String>)> {
    let o: raw::ClientOutline = yaml::parse("", bytes).ok()?;
    let hosts = match &o.hosts {
        raw::Hosts::Static(list) => list.iter().map(|h| h.name.value.clone()).collect(),
        raw::Hosts::Hcloud(_) => Vec::new(),
    };
    Some((o.group, hosts))
}

pub(super) fn checks(
    files: &FleetFiles,
    pipeline: Option<&Pipeline>,
    clients: &BTreeMap<String, std::sync::Arc<Client>>,
    problems: &mut Vec<Diagnostic>,
    warnings: &mut Vec<Diagnostic>,
) {
    for orphan in files
        .client_secrets
        .iter()
        .filter(|c| !files.all_clients.contains(c))
    {
        problems.push(
            Diagnostic::new(client_secrets_file(orphan), format!("belongs to no client: {} does not exist", client_file(orphan)))
                .hint(format!("remove it, or add the client; secrets of removed clients must not linger in {CLIENT_SECRETS_DIR}/")),
        );
    }
    if !files.every_client {
        return;
    }
    // Validated clients as validated; the others from their outline; an
    // invalid one not at all (its own problems say why). In name order, as
    // the listing gives them (unique): a list, not a map, a whole fleet long.
    let unread = |name: &str| !clients.contains_key(name) && !files.selection.contains(name);
    let to_outline: Vec<&str> = files.all_clients.iter().filter(|n| unread(n)).collect();
    // A plan may outline a whole large fleet: parse on every core.
    let mut parsed = crate::par::map(&to_outline, |name| {
        files.files.get(&client_file(name)).and_then(|b| outline(b))
    })
    .into_iter();
    let outlines: Vec<(&str, Option<Outline>)> = files
        .all_clients
        .iter()
        .map(|name| {
            let o = if let Some(client) = clients.get(name) {
                Some(Outline::of(client))
            } else if files.selection.contains(name) {
                None
            } else {
                let file = client_file(name);
                let parsed = parsed.next().expect("every unread client is outlined");
                parsed.map(|(group, hosts)| {
                    if let Some(p) = pipeline {
                        group_is_picked(
                            &mut Check {
                                file: &file,
                                problems: &mut *problems,
                            },
                            &group,
                            p,
                        );
                    }
                    Outline {
                        group: Cow::Owned(group.value),
                        hosts: hosts.into_iter().map(Cow::Owned).collect(),
                    }
                })
            };
            (name, o)
        })
        .collect();
    let complete = files.problems.is_empty() && outlines.iter().all(|(_, o)| o.is_some());
    if let Some(p) = pipeline
        && complete
    {
        for (i, stage) in p.stages.iter().enumerate() {
            if !outlines
                .iter()
                .filter_map(|(_, o)| o.as_ref())
                .any(|c| c.group == stage.group)
            {
                warnings.push(
                    Diagnostic::new(
                        PIPELINE,
                        format!(
                            "stage `{}` picks group `{}`, which no client is in",
                            stage.name, stage.group
                        ),
                    )
                    .field(format!("stages[{i}].group"))
                    .hint(format!(
                        "its clients were offboarded? set `group: {}` in a client, or remove the stage",
                        stage.group
                    )),
                );
            }
        }
    }
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, o) in &outlines {
        let Some(o) = o else { continue };
        for (i, h) in o.hosts.iter().enumerate() {
            if let Some(other) = owner.insert(h.as_ref(), name)
                && other != *name
            {
                problems.push(
                    Diagnostic::new(
                        client_file(name),
                        format!("host `{h}` is also a host of client `{other}`"),
                    )
                    .field(format!("hosts[{i}].name"))
                    .hint("host names are unique across the fleet; progress and records use them"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::{assert_outcome, files, render, sops};
    use crate::config::validate::validate;
    use crate::config::{FleetFiles, Selection};

    const BASE: &str = r#"
        //- pipelines/pipeline.yaml
        stages:
          - {name: canary, group: canary}
          - {name: production, group: production}
        //- pipelines/apps/web/app.yaml
        runtime: compose
        //- clients/alpha.yaml
        domain: alpha.org
        group: canary
        apps: [web]
        hosts: [{name: alpha-1, address: 203.0.113.10}]
    "#;

    /// `fixture`: files added to [`BASE`] (one stage without a client yet);
    /// `expect`: the problems, or the clients of a valid fleet and the
    /// warnings (`warning: …`).
    fn check(fixture: &str, expect: &[&str]) {
        check_files(fixture, files("clients/beta.yaml", BASE, fixture), expect);
    }

    fn check_files(fixture: &str, files: FleetFiles, expect: &[&str]) {
        let (fleet, problems) = validate(&files);
        let summary = fleet
            .clients
            .values()
            .map(|c| format!("{}: {}", c.group, c.name))
            .chain(
                fleet
                    .warnings
                    .iter()
                    .map(|w| format!("warning: {}", render(w))),
            )
            .collect();
        assert_outcome(fixture, &problems, summary, expect);
    }

    /// The same fleet validated as `check` reads it (every client in full)
    /// and as plans read it when their change can break a rule over the
    /// whole fleet (a few clients in full, the others' outline): the same
    /// problems and warnings, whichever clients the change touched.
    /// `expect`: the problems, or the warnings.
    fn check_every_way(fixture: &str, expect: &[&str]) {
        let all = files("clients/beta.yaml", BASE, fixture);
        let mut ways = vec![("all".to_string(), all)];
        for only in [&[][..], &["alpha"], &["beta"], &["alpha", "beta"]] {
            let mut f = files("clients/beta.yaml", BASE, fixture);
            f.selection = Selection::Only(only.iter().map(|c| c.to_string()).collect());
            ways.push((format!("only {only:?}"), f));
        }
        for (way, files) in ways {
            let (fleet, problems) = validate(&files);
            let warnings = fleet
                .warnings
                .iter()
                .map(|w| format!("warning: {}", render(w)));
            assert_outcome(
                &format!("({way})\n{fixture}"),
                &problems,
                warnings.collect(),
                expect,
            );
        }
    }

    const BETA: &str = r#"
        domain: beta.org
        group: production
        apps: [web]
        hosts: [{name: beta-1, address: 203.0.113.20}]
    "#;

    #[test]
    fn a_stage_without_clients_is_a_warning() {
        check(BETA, &["canary: alpha", "production: beta"]);
        // The last production client offboarded: nobody is stuck.
        check(
            "",
            &[
                "canary: alpha",
                "warning: pipelines/pipeline.yaml stages[1].group: stage `production` picks group `production`, which no client is in",
            ],
        );
        check_every_way(
            "",
            &[
                "warning: pipelines/pipeline.yaml stages[1].group: stage `production` picks group `production`, which no client is in",
            ],
        );
        check_every_way(BETA, &[]);
        // Not while a client is invalid: it may be the one in that group.
        check(
            "domain: beta.org\ngroup: production\napps: [nope]\nhosts: [{name: beta-1, address: 203.0.113.20}]",
            &["clients/beta.yaml:3 apps[0]: app `nope` does not exist"],
        );
        // Nor when only some clients were read: a plan whose change cannot
        // empty a stage (`plan::Affected::needs_every_client`).
        let mut files = files("clients/beta.yaml", BASE, "");
        files.selection = Selection::Only(["alpha".to_string()].into());
        files.every_client = false;
        check_files("(alpha only)", files, &["canary: alpha"]);
    }

    #[test]
    fn host_names_are_unique_across_the_fleet() {
        let twice =
            &["clients/beta.yaml hosts[0].name: host `alpha-1` is also a host of client `alpha`"];
        check(&BETA.replace("beta-1", "alpha-1"), twice);
        check_every_way(&BETA.replace("beta-1", "alpha-1"), twice);
        check_every_way(
            "domain: beta.org\ngroup: production\napps: [web]\nhosts: [{name: beta-1, address: 203.0.113.20}, {name: alpha-1, address: 203.0.113.21}]",
            &["clients/beta.yaml hosts[1].name: host `alpha-1` is also a host of client `alpha`"],
        );
        // Hetzner Cloud hosts are named when resolved, not here.
        check_every_way(
            "domain: beta.org\ngroup: production\napps: [web]\nhosts: {hcloud: {label_selector: client=beta}}",
            &[],
        );
    }

    #[test]
    fn a_group_no_stage_picks() {
        // The pipeline changed under a client the change did not touch: the
        // outline finds it, with the line a full validation gives.
        check_every_way(
            &BETA.replace("group: production", "group: staging"),
            &[
                "clients/beta.yaml:2 group: group `staging` is not picked by any stage of pipelines/pipeline.yaml",
            ],
        );
    }

    #[test]
    fn secrets_of_clients_that_do_not_exist() {
        let orphan = format!(
            "{BETA}\n//- secrets/clients/gamma.sops.yaml\n{}",
            sops(&["x"])
        );
        let expect = &[
            "secrets/clients/gamma.sops.yaml: belongs to no client: clients/gamma.yaml does not exist",
        ];
        check(&orphan, expect);
        // The listings alone say so: every plan does too.
        let mut files = files("clients/beta.yaml", BASE, &orphan);
        files.selection = Selection::Only(Default::default());
        files.every_client = false;
        check_files("(none, no outlines)", files, expect);
    }
}
