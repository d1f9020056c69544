//! Trivy, the one external scanner: a subprocess (`tokio::process`) per
//! image, JSON out, parsed by a pure function. Trivy exits 0 with findings
//! (no `--exit-code`), so only the report decides; a non-zero exit, a crash,
//! a timeout or a missing binary is a `ScanError`, never a pass.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Severity;

/// One vulnerability in one package of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    pub package: String,
    pub installed: String,
    /// None: no fixed version exists (yet).
    pub fixed: Option<String>,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Report {
    #[serde(default)]
    results: Option<Vec<ReportResult>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReportResult {
    #[serde(default)]
    vulnerabilities: Option<Vec<Vuln>>,
}

#[derive(Deserialize)]
struct Vuln {
    #[serde(rename = "VulnerabilityID")]
    id: String,
    #[serde(rename = "PkgName")]
    package: String,
    #[serde(rename = "InstalledVersion", default)]
    installed: String,
    #[serde(rename = "FixedVersion", default)]
    fixed: Option<String>,
    #[serde(rename = "Severity", default)]
    severity: String,
    #[serde(rename = "Title", default)]
    title: Option<String>,
}

/// Trivy's JSON report (schema 2) → findings, sorted (most severe first)
/// and without duplicates (the same id in the same package).
pub fn parse_report(json: &str) -> Result<Vec<Finding>, String> {
    let report: Report =
        serde_json::from_str(json).map_err(|e| format!("trivy's report is not its JSON: {e}"))?;
    let mut out: Vec<Finding> = report
        .results
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| r.vulnerabilities.unwrap_or_default())
        .map(|v| Finding {
            id: v.id,
            package: v.package,
            installed: v.installed,
            fixed: v.fixed.filter(|f| !f.trim().is_empty()),
            severity: Severity::parse(&v.severity).unwrap_or(Severity::Unknown),
            title: v.title,
        })
        .collect();
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.id.cmp(&b.id))
            .then_with(|| a.package.cmp(&b.package))
    });
    out.dedup_by(|a, b| a.id == b.id && a.package == b.package);
    Ok(out)
}

/// What to scan: a pinned reference, pulled from its registry, or the same
/// image from a `docker save` archive.
#[derive(Debug, Clone)]
pub struct Image {
    pub reference: String,
    pub archive: Option<PathBuf>,
}

/// Why an image could not be scanned, and what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ScanError(pub crate::error::Message);

impl ScanError {
    pub fn new(text: String) -> ScanError {
        ScanError(text.into())
    }

    pub fn hint(self, hint: &str) -> ScanError {
        ScanError(self.0.hint(hint))
    }
}

/// The scanner behind the gate (trivy; tests of the gate's logic need no other).
pub trait Scanner: Sync {
    /// The vulnerability database's version, when known: results are cached
    /// per image digest and this.
    fn db_version(&self) -> Option<String>;
    /// Trivy's JSON report for `image`.
    fn scan(&self, image: &Image) -> impl Future<Output = Result<String, ScanError>> + Send;
}

#[derive(Debug, Clone)]
pub struct Trivy {
    pub bin: PathBuf,
    /// Trivy's own cache (its DB lives in `<dir>/db`); None: trivy's default.
    pub cache_dir: Option<PathBuf>,
    pub timeout: Duration,
    pub skip_db_update: bool,
    /// Where trivy downloads its DB from (a mirror), if not its default.
    pub db_repository: Option<String>,
}

impl Trivy {
    fn db_dir(&self) -> Option<PathBuf> {
        let cache = self
            .cache_dir
            .clone()
            .or_else(|| super::cache_home().map(|c| c.join("trivy")))?;
        Some(cache.join("db"))
    }
}

/// Up to 20 last lines of a process's stderr, for the error message.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(20);
    lines[start..].join("\n    ")
}

impl Scanner for Trivy {
    fn db_version(&self) -> Option<String> {
        let meta = std::fs::read(self.db_dir()?.join("metadata.json")).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&meta).ok()?;
        Some(format!(
            "v{}-{}",
            v.get("Version")?,
            v.get("UpdatedAt")?.as_str()?
        ))
    }

    async fn scan(&self, image: &Image) -> Result<String, ScanError> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        // No version check, no telemetry: a gate makes no calls it need not.
        cmd.args(["image", "--scanners", "vuln", "--format", "json", "--quiet"])
            .args(["--skip-version-check", "--disable-telemetry"])
            .args(["--timeout", &format!("{}s", self.timeout.as_secs().max(1))]);
        if let Some(dir) = &self.cache_dir {
            cmd.arg("--cache-dir").arg(dir);
        }
        if self.skip_db_update {
            cmd.arg("--skip-db-update");
        }
        if let Some(repo) = &self.db_repository {
            cmd.args(["--db-repository", repo]);
        }
        match &image.archive {
            Some(path) => {
                cmd.arg("--input").arg(path);
            }
            None => {
                cmd.args(["--image-src", "remote", &image.reference]);
            }
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            ScanError::new(format!(
                "could not run trivy (`{}`): {e}",
                self.bin.display()
            ))
            .hint("install it with scripts/setup.sh, or point --trivy / FLEETGATE_TRIVY at the binary")
        })?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return Err(ScanError::new(format!(
                    "trivy failed while scanning {}: {e}",
                    image.reference
                )));
            }
            Err(_) => {
                return Err(ScanError::new(format!(
                    "trivy did not finish scanning {} within {:?}: killed",
                    image.reference, self.timeout
                ))
                .hint("raise --scan-timeout, or check the registry and trivy's DB download"));
            }
        };
        if !out.status.success() {
            let code = out
                .status
                .code()
                .map_or_else(|| "a signal".to_string(), |c| format!("exit {c}"));
            return Err(ScanError::new(format!(
                "trivy failed on {} ({code}):\n    {}",
                image.reference,
                tail(&out.stderr)
            )));
        }
        String::from_utf8(out.stdout).map_err(|_| {
            ScanError::new(format!(
                "trivy's report on {} is not UTF-8",
                image.reference
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trivys_report() {
        let json = r#"{"SchemaVersion": 2, "ArtifactName": "x", "Results": [
          {"Target": "x (debian 12.5)", "Class": "os-pkgs", "Type": "debian", "Vulnerabilities": [
            {"VulnerabilityID": "CVE-2099-0003", "PkgName": "zlib1g", "InstalledVersion": "1:1.2.13", "FixedVersion": "1:99.0-1", "Status": "fixed", "Severity": "MEDIUM"},
            {"VulnerabilityID": "CVE-2099-0001", "PkgName": "openssl", "InstalledVersion": "3.0.11", "FixedVersion": "99.0.0-1", "Status": "fixed", "Severity": "CRITICAL", "Title": "made up"},
            {"VulnerabilityID": "CVE-2099-0001", "PkgName": "openssl", "InstalledVersion": "3.0.11", "FixedVersion": "99.0.0-1", "Severity": "CRITICAL"},
            {"VulnerabilityID": "CVE-2099-0002", "PkgName": "libexpat1", "InstalledVersion": "2.5.0", "Status": "affected", "Severity": "HIGH"},
            {"VulnerabilityID": "GHSA-xxxx", "PkgName": "lib", "InstalledVersion": "1", "FixedVersion": "", "Severity": "WEIRD"}
          ]},
          {"Target": "Python", "Class": "lang-pkgs"}
        ]}"#;
        let f = parse_report(json).unwrap();
        let ids: Vec<(&str, Severity, Option<&str>)> = f
            .iter()
            .map(|f| (f.id.as_str(), f.severity, f.fixed.as_deref()))
            .collect();
        assert_eq!(
            ids,
            [
                ("CVE-2099-0001", Severity::Critical, Some("99.0.0-1")),
                ("CVE-2099-0002", Severity::High, None),
                ("CVE-2099-0003", Severity::Medium, Some("1:99.0-1")),
                ("GHSA-xxxx", Severity::Unknown, None),
            ]
        );
        assert_eq!(parse_report(r#"{"SchemaVersion": 2}"#).unwrap(), []);
        assert!(parse_report("FATAL something").is_err());
    }
}
