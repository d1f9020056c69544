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
