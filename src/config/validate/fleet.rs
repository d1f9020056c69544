//! Checks that need every client, run only when all of them are read
//! (`check`, not a pruned `plan`): stages without clients, host names used
//! twice, secrets files of clients that do not exist.

use std::collections::BTreeMap;

use crate::config::model::{Client, Hosts, Pipeline};
use crate::config::{CLIENT_SECRETS_DIR, FleetFiles, PIPELINE, client_file, client_secrets_file};
use crate::error::Diagnostic;

pub(super) fn checks(
    files: &FleetFiles,
    pipeline: Option<&Pipeline>,
    clients: &BTreeMap<String, Client>,
    problems: &mut Vec<Diagnostic>,
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
    if let Some(p) = pipeline
        && files.problems.is_empty()
        && clients.len() == files.all_clients.len()
    {
        for (i, stage) in p.stages.iter().enumerate() {
            if !clients.values().any(|c| c.group == stage.group) {
                problems.push(
                    Diagnostic::new(
                        PIPELINE,
                        format!(
                            "stage `{}` picks group `{}`, which no client is in",
                            stage.name, stage.group
                        ),
                    )
                    .field(format!("stages[{i}].group"))
                    .hint(format!(
                        "set `group: {}` in a client, or remove the stage",
                        stage.group
                    )),
                );
            }
        }
    }
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for client in clients.values() {
        if let Hosts::Static(hosts) = &client.hosts {
            for (i, h) in hosts.iter().enumerate() {
                if let Some(other) = owner.insert(&h.name, &client.name)
                    && other != client.name
                {
                    problems.push(
                        Diagnostic::new(
                            client_file(&client.name),
                            format!("host `{}` is also a host of client `{other}`", h.name),
                        )
                        .field(format!("hosts[{i}].name"))
                        .hint(
                            "host names are unique across the fleet; progress and records use them",
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::{assert_outcome, files, sops};
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
    /// `expect`: the problems, or the clients of a valid fleet.
    fn check(fixture: &str, expect: &[&str]) {
        check_files(fixture, files("clients/beta.yaml", BASE, fixture), expect);
    }

    fn check_files(fixture: &str, files: FleetFiles, expect: &[&str]) {
        let (fleet, problems) = validate(&files);
        let summary = fleet
            .clients
            .values()
            .map(|c| format!("{}: {}", c.group, c.name))
            .collect();
        assert_outcome(fixture, &problems, summary, expect);
    }

    const BETA: &str = r#"
        domain: beta.org
        group: production
        apps: [web]
        hosts: [{name: beta-1, address: 203.0.113.20}]
    "#;

    #[test]
    fn every_stage_has_clients() {
        check(BETA, &["canary: alpha", "production: beta"]);
        check(
            "",
            &[
                "pipelines/pipeline.yaml stages[1].group: stage `production` picks group `production`, which no client is in",
            ],
        );
        // Not while a client is invalid: it may be the one in that group.
        check(
            "domain: beta.org\ngroup: production\napps: [nope]\nhosts: [{name: beta-1, address: 203.0.113.20}]",
            &["clients/beta.yaml:3 apps[0]: app `nope` does not exist"],
        );
        // Nor when only some clients were read (a plan of one change).
        let mut files = files("clients/beta.yaml", BASE, "");
        files.selection = Selection::Only(["alpha".to_string()].into());
        check_files("(alpha only)", files, &["canary: alpha"]);
    }

    #[test]
    fn host_names_are_unique_across_the_fleet() {
        check(
            &BETA.replace("beta-1", "alpha-1"),
            &["clients/beta.yaml hosts[0].name: host `alpha-1` is also a host of client `alpha`"],
        );
    }

    #[test]
    fn secrets_of_clients_that_do_not_exist() {
        check(
            &format!(
                "{BETA}\n//- secrets/clients/gamma.sops.yaml\n{}",
                sops(&["x"])
            ),
            &[
                "secrets/clients/gamma.sops.yaml: belongs to no client: clients/gamma.yaml does not exist",
            ],
        );
    }
}
