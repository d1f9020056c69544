//! The image gate: every image a change would run is pinned (`pin.rs`, at
//! validation) and passes the scan policy (`policy.rs`) on trivy's findings
//! (`trivy.rs`). Each distinct digest is scanned once, a few at a time, and
//! its findings cached per digest and trivy DB version.

pub mod pin;
pub mod policy;
pub mod trivy;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use chrono::NaiveDate;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::{self, Fleet, IgnoreEntry, ScanPolicy};
use crate::error::{Error, Result};
use pin::ImageRef;
use policy::ImageVerdict;
use trivy::{Finding, Image, ScanError, Scanner};

/// One distinct image and who would run it.
#[derive(Debug, Clone)]
pub struct Target {
    pub image: ImageRef,
    /// `client/app`, sorted.
    pub used_by: Vec<String>,
}

/// The distinct images (by digest) that `clients` of `fleet` run.
pub fn images_in_play(fleet: &Fleet, clients: &[String]) -> Vec<Target> {
    let mut by_digest: BTreeMap<String, Target> = BTreeMap::new();
    for c in clients {
        let Some(client) = fleet.clients.get(c) else {
            continue;
        };
        for app in &client.apps {
            let Some(a) = fleet.apps.get(app) else {
                continue;
            };
            for image in a.images.values() {
                by_digest
                    .entry(image.digest.clone())
                    .or_insert_with(|| Target {
                        image: image.clone(),
                        used_by: Vec::new(),
                    })
                    .used_by
                    .push(format!("{c}/{app}"));
            }
        }
    }
    let mut out: Vec<Target> = by_digest.into_values().collect();
    for t in &mut out {
        t.used_by.sort();
        t.used_by.dedup();
    }
    out.sort_by_key(|a| a.image.to_string());
    out
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Images scanned at once.
    pub concurrency: usize,
    /// fleetgate's scan cache (`<dir>/scan/…`); None: no cache.
    pub cache_dir: Option<PathBuf>,
    /// `docker save` archives named `<digest hex>.tar`, scanned instead of
    /// pulling (air-gapped runners).
    pub archives: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ImageResult {
    #[serde(flatten)]
    pub verdict: ImageVerdict,
    pub used_by: Vec<String>,
    /// Findings came from the cache (same digest, same DB).
    pub cached: bool,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ScanReport {
    pub passed: bool,
    /// The trivy DB the findings come from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<String>,
    pub fail_on: Vec<crate::config::Severity>,
    pub ignore_unfixed: bool,
    pub images: Vec<ImageResult>,
    /// Entries of pipelines/trivyignore.yaml past their date: they no
    /// longer accept anything.
    pub expired_ignores: Vec<IgnoreEntry>,
}

impl ScanReport {
    pub fn blocking(&self) -> usize {
        self.images.iter().map(|i| i.verdict.blocking.len()).sum()
    }
}

#[derive(Serialize, serde::Deserialize)]
struct CacheEntry {
    image: String,
    db: String,
    findings: Vec<Finding>,
}

fn cache_path(dir: &std::path::Path, db: &str, image: &ImageRef) -> PathBuf {
    let db_key = hex::encode(&Sha256::digest(db.as_bytes())[..8]);
    let digest = image.digest.trim_start_matches("sha256:");
    dir.join("scan").join(db_key).join(format!("{digest}.json"))
}

fn read_cache(dir: &std::path::Path, db: &str, image: &ImageRef) -> Option<Vec<Finding>> {
    let bytes = std::fs::read(cache_path(dir, db, image)).ok()?;
    let entry: CacheEntry = serde_json::from_slice(&bytes).ok()?;
    (entry.db == db).then_some(entry.findings)
}

fn write_cache(dir: &std::path::Path, db: &str, image: &ImageRef, findings: &[Finding]) {
    let path = cache_path(dir, db, image);
    let entry = CacheEntry {
        image: image.to_string(),
        db: db.to_string(),
        findings: findings.to_vec(),
    };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(path.parent().expect("a cache path has a parent"))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(
            &tmp,
            serde_json::to_vec(&entry).expect("findings serialise"),
        )?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        tracing::warn!("could not write the scan cache {}: {e}", path.display());
    }
}

/// Scans every target (cached ones are not rescanned) and applies the policy.
/// Any scanner failure is an error: an image that was not scanned never passes.
pub async fn gate<S: Scanner>(
    targets: &[Target],
    scanner: &S,
    policy: &ScanPolicy,
    ignores: &[IgnoreEntry],
    today: NaiveDate,
    opts: &Options,
) -> Result<ScanReport, ScanError> {
    let db = scanner.db_version();
    let permits = Semaphore::new(opts.concurrency.max(1));
    let results = futures_util::future::join_all(targets.iter().map(|t| {
        let (permits, db) = (&permits, &db);
        async move {
            let shown = short(&t.image);
            if let (Some(dir), Some(db)) = (&opts.cache_dir, db)
                && let Some(findings) = read_cache(dir, db, &t.image)
            {
                tracing::info!("scan {shown}: cached ({} finding(s))", findings.len());
                return Ok((t, findings, true, 0.0));
            }
            let _permit = permits.acquire().await.expect("never closed");
            // Timed from the start of its own scan, not the wait for a slot.
            let started = Instant::now();
            let archive = opts.archives.as_ref().and_then(|dir| {
                let p = dir.join(format!(
                    "{}.tar",
                    t.image.digest.trim_start_matches("sha256:")
                ));
                p.exists().then_some(p)
            });
            tracing::info!(
                "scan {shown}: trivy{} …",
                if archive.is_some() { " (archive)" } else { "" }
            );
            let image = Image {
                reference: t.image.to_string(),
                archive,
            };
            let json = scanner.scan(&image).await?;
            let findings = trivy::parse_report(&json)
                .map_err(|e| ScanError::new(format!("scanning {}: {e}", t.image)))?;
            tracing::info!(
                "scan {shown}: {} finding(s) {:.2}s",
                findings.len(),
                started.elapsed().as_secs_f64()
            );
            // Keyed by the DB trivy used (it may have updated it just now).
            if let (Some(dir), Some(db)) = (&opts.cache_dir, scanner.db_version()) {
                write_cache(dir, &db, &t.image, &findings);
            }
            let seconds = (started.elapsed().as_secs_f64() * 100.0).round() / 100.0;
            Ok::<_, ScanError>((t, findings, false, seconds))
        }
    }))
    .await;
    let mut images = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok((t, findings, cached, seconds)) => {
                let verdict = policy::evaluate(&t.image, &findings, policy, ignores, today);
                images.push(ImageResult {
                    verdict,
                    used_by: t.used_by.clone(),
                    cached,
                    seconds,
                });
            }
            Err(e) => errors.push(e.0),
        }
    }
    if !errors.is_empty() {
        // One message for every image that failed; each hint once.
        let mut hints: Vec<String> = errors.iter().filter_map(|m| m.hint.clone()).collect();
        hints.dedup();
        let texts: Vec<String> = errors.into_iter().map(|m| m.text).collect();
        let mut e = ScanError::new(texts.join("\n"));
        if !hints.is_empty() {
            e = e.hint(&hints.join("; "));
        }
        return Err(e);
    }
    let expired_ignores: Vec<IgnoreEntry> = ignores
        .iter()
        .filter(|e| policy::expired(e, today))
        .cloned()
        .collect();
    Ok(ScanReport {
        passed: images.iter().all(|i| i.verdict.passed()),
        db: scanner.db_version().or(db),
        fail_on: policy.fail_on.clone(),
        ignore_unfixed: policy.ignore_unfixed,
        images,
        expired_ignores,
    })
}

/// `repo:tag@sha256:0123456789ab` — enough to tell images apart in logs.
pub fn short(image: &ImageRef) -> String {
    let hex = image.digest.trim_start_matches("sha256:");
    format!(
        "{}:{}@{}",
        image.repository,
        image.tag,
        crate::core::rev::short(hex)
    )
}

/// `$XDG_CACHE_HOME`, else `~/.cache`: where trivy and fleetgate keep caches.
pub fn cache_home() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
}

/// How trivy runs and where results are cached, for [`gate_fleet`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub trivy: trivy::Trivy,
    pub options: Options,
}

/// The image gate for `clients` of a validated fleet, with the real trivy.
pub fn gate_fleet(fleet: &Fleet, clients: &[String], settings: &Settings) -> Result<ScanReport> {
    let targets = images_in_play(fleet, clients);
    tracing::info!(
        "scan: {} distinct image(s) of {} client(s), {} at a time",
        targets.len(),
        clients.len(),
        settings.options.concurrency.max(1)
    );
    gate_targets(&targets, &fleet.pipeline.scan, &fleet.ignores, settings)
}

/// The image gate for any targets (`scan --deployed`: the images the
/// hosts run, from several commits) against one policy and its ignore
/// entries, with the real trivy.
pub fn gate_targets(
    targets: &[Target],
    policy: &ScanPolicy,
    ignores: &[IgnoreEntry],
    settings: &Settings,
) -> Result<ScanReport> {
    let (trivy, options) = (&settings.trivy, &settings.options);
    let today = chrono::Utc::now().date_naive();
    let runtime = crate::rt::runtime()?;
    let report = runtime
        .block_on(gate(targets, trivy, policy, ignores, today, options))
        .map_err(|e| Error::Scan(e.0))?;
    for e in &report.expired_ignores {
        tracing::warn!(
            "{}: `{}` expired on {}: it no longer accepts anything",
            config::TRIVYIGNORE,
            e.id,
            e.expires
        );
    }
    Ok(report)
}
