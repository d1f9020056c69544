//! The scan policy, pure: findings + `scan:` + `pipelines/trivyignore.yaml`
//! + today → what blocks, what is accepted, which acceptances expired.

use chrono::NaiveDate;
use serde::Serialize;

use super::pin::ImageRef;
use super::trivy::Finding;
use crate::config::{IgnoreEntry, ScanPolicy, Severity};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counts {
    pub critical: usize,
    pub high: usize,
    pub medium: usize,
    pub low: usize,
    pub unknown: usize,
}

impl Counts {
    fn add(&mut self, s: Severity) {
        match s {
            Severity::Critical => self.critical += 1,
            Severity::High => self.high += 1,
            Severity::Medium => self.medium += 1,
            Severity::Low => self.low += 1,
            Severity::Unknown => self.unknown += 1,
        }
    }
}

/// A finding that blocks, and why it was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Blocking {
    #[serde(flatten)]
    pub finding: Finding,
    /// The acceptance that would have covered it, had it not expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_ignore: Option<NaiveDate>,
}

/// A finding accepted by a trivyignore entry still in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Accepted {
    pub id: String,
    pub package: String,
    pub expires: NaiveDate,
    pub reason: String,
}

/// The policy's verdict on one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ImageVerdict {
    pub image: String,
    pub counts: Counts,
    pub blocking: Vec<Blocking>,
    pub accepted: Vec<Accepted>,
    /// Findings at a failing severity with no fixed version, not blocking
    /// because of `ignore_unfixed`.
    pub unfixed: usize,
}

impl ImageVerdict {
    pub fn passed(&self) -> bool {
        self.blocking.is_empty()
    }
}

/// Does `entry` cover `finding` in `image`?
fn covers(entry: &IgnoreEntry, image: &ImageRef, finding: &Finding) -> bool {
    entry.id == finding.id
        && entry
            .package
            .as_deref()
            .is_none_or(|p| p == finding.package)
        && entry.image.as_deref().is_none_or(|i| {
            i == image.repository
                || i == format!("{}:{}", image.repository, image.tag)
                || i == image.to_string()
        })
}

/// An entry applies through its `expires` day, and no longer.
pub fn expired(entry: &IgnoreEntry, today: NaiveDate) -> bool {
    today > entry.expires
}

pub fn evaluate(
    image: &ImageRef,
    findings: &[Finding],
    policy: &ScanPolicy,
    ignores: &[IgnoreEntry],
    today: NaiveDate,
) -> ImageVerdict {
    let mut v = ImageVerdict {
        image: image.to_string(),
        counts: Counts::default(),
        blocking: Vec::new(),
        accepted: Vec::new(),
        unfixed: 0,
    };
    for f in findings {
        v.counts.add(f.severity);
        if !policy.fail_on.contains(&f.severity) {
            continue;
        }
        if policy.ignore_unfixed && f.fixed.is_none() {
            v.unfixed += 1;
            continue;
        }
        let entries: Vec<&IgnoreEntry> = ignores.iter().filter(|e| covers(e, image, f)).collect();
        if let Some(e) = entries.iter().find(|e| !expired(e, today)) {
            v.accepted.push(Accepted {
                id: f.id.clone(),
                package: f.package.clone(),
                expires: e.expires,
                reason: e.reason.clone(),
            });
            continue;
        }
        v.blocking.push(Blocking {
            finding: f.clone(),
            expired_ignore: entries.iter().map(|e| e.expires).max(),
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageRef {
        ImageRef::parse_pinned(&format!("reg.example/app:1.0@sha256:{}", "a".repeat(64))).unwrap()
    }

    fn finding(id: &str, package: &str, sev: Severity, fixed: Option<&str>) -> Finding {
        Finding {
            id: id.into(),
            package: package.into(),
            installed: "1".into(),
            fixed: fixed.map(str::to_string),
            severity: sev,
            title: None,
        }
    }

    fn entry(id: &str, expires: &str) -> IgnoreEntry {
        IgnoreEntry {
            id: id.into(),
            image: None,
            package: None,
            expires: NaiveDate::parse_from_str(expires, "%Y-%m-%d").unwrap(),
            reason: "because".into(),
            line: None,
        }
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn policy(ignore_unfixed: bool) -> ScanPolicy {
        ScanPolicy {
            fail_on: vec![Severity::Critical, Severity::High],
            ignore_unfixed,
        }
    }

    #[test]
    fn severities_unfixed_and_counts() {
        let f = [
            finding("C1", "openssl", Severity::Critical, Some("9")),
            finding("H1", "expat", Severity::High, None),
            finding("M1", "zlib", Severity::Medium, Some("9")),
        ];
        let v = evaluate(&image(), &f, &policy(false), &[], day("2026-11-23"));
        assert_eq!(v.blocking.len(), 2);
        assert_eq!(
            v.counts,
            Counts {
                critical: 1,
                high: 1,
                medium: 1,
                ..Counts::default()
            }
        );
        let v = evaluate(&image(), &f, &policy(true), &[], day("2026-11-23"));
        assert_eq!(v.blocking.len(), 1);
        assert_eq!(v.unfixed, 1);
    }

    #[test]
    fn an_entry_applies_through_its_last_day_and_only_where_it_says() {
        let f = [finding("C1", "openssl", Severity::Critical, Some("9"))];
        let e = entry("C1", "2026-11-23");
        let on_the_day = evaluate(
            &image(),
            &f,
            &policy(false),
            std::slice::from_ref(&e),
            day("2026-11-23"),
        );
        assert!(on_the_day.passed());
        assert_eq!(on_the_day.accepted[0].reason, "because");
        let after = evaluate(
            &image(),
            &f,
            &policy(false),
            std::slice::from_ref(&e),
            day("2026-11-24"),
        );
        assert!(!after.passed());
        assert_eq!(after.blocking[0].expired_ignore, Some(day("2026-11-23")));

        let mut other_pkg = e.clone();
        other_pkg.package = Some("libssl3".into());
        assert!(
            !evaluate(
                &image(),
                &f,
                &policy(false),
                &[other_pkg],
                day("2026-11-01")
            )
            .passed()
        );
        for (i, applies) in [
            ("reg.example/app", true),
            ("reg.example/app:1.0", true),
            ("reg.example/other", false),
        ] {
            let mut scoped = e.clone();
            scoped.image = Some(i.into());
            let v = evaluate(&image(), &f, &policy(false), &[scoped], day("2026-11-01"));
            assert_eq!(v.passed(), applies, "{i}");
        }
    }
}
