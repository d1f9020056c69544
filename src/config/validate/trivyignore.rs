//! `pipelines/trivyignore.yaml` (optional): accepted findings. Every entry
//! needs an id, an expiry date and a reason; an accepted risk without an end
//! is refused. Expired entries are kept: the scan reports them.

use super::Check;
use crate::config::model::IgnoreEntry;
use crate::config::{FleetFiles, TRIVYIGNORE, raw, yaml};
use crate::error::Diagnostic;

pub(super) fn validate(files: &FleetFiles, problems: &mut Vec<Diagnostic>) -> Vec<IgnoreEntry> {
    let Some(bytes) = files.files.get(TRIVYIGNORE) else {
        return Vec::new();
    };
    let raw: raw::TrivyIgnore = match yaml::parse(TRIVYIGNORE, bytes) {
        Ok(r) => r,
        Err(d) => {
            problems.push(d);
            return Vec::new();
        }
    };
    let mut c = Check {
        file: TRIVYIGNORE,
        problems,
    };
    let mut out = Vec::new();
    for (i, e) in raw.ignore.iter().enumerate() {
        let at = |f: &str| format!("ignore[{i}].{f}");
        let line = yaml::line_of(&e.id.referenced);
        if e.id.value.trim().is_empty() {
            c.at(
                &at("id"),
                &e.id,
                "the id is empty",
                "the finding's id as trivy reports it, e.g. CVE-2024-1234",
            );
        }
        let expires = match &e.expires {
            None => {
                c.at(
                    &at("expires"),
                    &e.id,
                    format!("`{}` has no expiry date", e.id.value),
                    "every accepted finding expires: add `expires: YYYY-MM-DD` (the last day it is accepted), then look again",
                );
                None
            }
            Some(d) => match chrono::NaiveDate::parse_from_str(d.value.trim(), "%Y-%m-%d") {
                Ok(date) => Some(date),
                Err(_) => {
                    c.at(
                        &at("expires"),
                        d,
                        format!("`{}` is not a date", d.value),
                        "write it as YYYY-MM-DD",
                    );
                    None
                }
            },
        };
        let reason = match &e.reason {
            Some(r) if !r.value.trim().is_empty() => Some(r.value.trim().to_string()),
            _ => {
                c.at(
                    &at("reason"),
                    &e.id,
                    format!("`{}` has no reason", e.id.value),
                    "say why the finding is accepted (not reachable, no fix yet, …): reviewers and the next person read it",
                );
                None
            }
        };
        if let (Some(expires), Some(reason)) = (expires, reason) {
            out.push(IgnoreEntry {
                id: e.id.value.trim().to_string(),
                image: e.image.as_ref().map(|s| s.value.trim().to_string()),
                package: e.package.as_ref().map(|s| s.value.trim().to_string()),
                expires,
                reason,
                line,
            });
        }
    }
    out
}
