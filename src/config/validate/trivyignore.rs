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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::testing::{assert_outcome, files};

    /// `fixture`: `pipelines/trivyignore.yaml` (or other `//- path` files);
    /// `expect`: the problems, or the valid entries.
    fn check(fixture: &str, expect: &[&str]) {
        let mut problems = Vec::new();
        let entries = validate(&files(TRIVYIGNORE, "", fixture), &mut problems);
        let summary = entries
            .iter()
            .map(|e| {
                format!(
                    "{} image={:?} package={:?} until {} line={:?}: {}",
                    e.id, e.image, e.package, e.expires, e.line, e.reason
                )
            })
            .collect();
        assert_outcome(fixture, &problems, summary, expect);
    }

    #[test]
    fn entries() {
        check("//- pipelines/pipeline.yaml\nstages: []", &[]);
        check("ignore: []", &[]);
        check(
            r#"
            ignore:
              - id: " CVE-2024-1234 "
                expires: 2025-01-31
                reason: " not reachable: we never parse TIFF "
              - id: GHSA-xxxx-yyyy-zzzz
                image: registry.example.org/whoami:1.4.0
                package: libtiff
                expires: "2000-01-01"
                reason: no fix yet
            "#,
            &[
                r#"CVE-2024-1234 image=None package=None until 2025-01-31 line=Some(2): not reachable: we never parse TIFF"#,
                // Expired entries stay: the scan reports them.
                r#"GHSA-xxxx-yyyy-zzzz image=Some("registry.example.org/whoami:1.4.0") package=Some("libtiff") until 2000-01-01 line=Some(5): no fix yet"#,
            ],
        );
    }

    #[test]
    fn every_entry_has_an_id_an_expiry_and_a_reason() {
        check(
            r#"
            ignore:
              - {id: CVE-1, reason: x}
              - {id: CVE-2, expires: 31.01.2025, reason: x}
              - {id: CVE-3, expires: 2025-02-30, reason: x}
              - {id: CVE-4, expires: 2025-01-31}
              - {id: CVE-5, expires: 2025-01-31, reason: "  "}
              - {id: "", expires: 2025-01-31, reason: x}
              - {id: "  ", expires: 2025-01-31, reason: x}
            "#,
            &[
                "pipelines/trivyignore.yaml:2 ignore[0].expires: `CVE-1` has no expiry date",
                "pipelines/trivyignore.yaml:3 ignore[1].expires: `31.01.2025` is not a date",
                "pipelines/trivyignore.yaml:4 ignore[2].expires: `2025-02-30` is not a date",
                "pipelines/trivyignore.yaml:5 ignore[3].reason: `CVE-4` has no reason",
                "pipelines/trivyignore.yaml:6 ignore[4].reason: `CVE-5` has no reason",
                "pipelines/trivyignore.yaml:7 ignore[5].id: the id is empty",
                "pipelines/trivyignore.yaml:8 ignore[6].id: the id is empty",
            ],
        );
        check(
            "ignore:\n  - {id: CVE-1, until: 2025-01-31, reason: x}",
            &["pipelines/trivyignore.yaml:2 ignore[0].until: unknown field `until`"],
        );
        check(
            "ignore:\n  - {expires: 2025-01-31, reason: x}",
            &["pipelines/trivyignore.yaml:2 ignore[0]: missing field `id`"],
        );
    }
}
