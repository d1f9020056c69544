//! Puts the commit a binary was built from into `fleetgate --version`:
//! `fleetgate 0.1.0 (abc123def456 2026-11-29)`, the commit's first 12 hex
//! digits and its commit date (not the build's: the same commit builds the
//! same string). It asks `git`, but only when the manifest is the top of its
//! work tree — a source tarball unpacked inside some other repository must
//! not claim that repository's commit. Otherwise `FLEETGATE_COMMIT` (set by
//! whoever builds from a tarball), otherwise `unknown`.
//!
//! Re-runs only when the checked-out commit can have moved: the work tree's
//! HEAD, the branch it names (loose or packed) and `FLEETGATE_COMMIT`, so an
//! edit to a source file does not re-run it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FLEETGATE_COMMIT");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let version = std::env::var("CARGO_PKG_VERSION").expect("set by cargo");

    let from_git = git_commit(&manifest);
    let build = match from_git {
        Some((commit, date)) => format!("{} {date}", short(&commit)),
        None => match std::env::var("FLEETGATE_COMMIT") {
            Ok(commit) if is_hex(commit.trim()) => short(commit.trim()).to_string(),
            _ => "unknown".to_string(),
        },
    };
    println!("cargo:rustc-env=FLEETGATE_VERSION_LINE={version} ({build})");
}

/// The commit checked out in `manifest`'s work tree and its commit date
/// (YYYY-MM-DD), when `manifest` is the top of a Git work tree; also prints
/// what to watch for a change of commit.
fn git_commit(manifest: &Path) -> Option<(String, String)> {
    let top = git(manifest, &["rev-parse", "--show-toplevel"])?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(Path::new(&top), manifest) {
        return None;
    }
    // HEAD is per work tree; the branch ref and packed-refs live in the
    // common directory: `--git-path` resolves both (also in a linked work
    // tree). A path that does not exist is not watched: cargo would re-run
    // the script on every build.
    let mut watch = vec!["HEAD".to_string()];
    if git(manifest, &["rev-parse", "--git-path", "packed-refs"])
        .is_some_and(|p| manifest.join(p).exists())
    {
        watch.push("packed-refs".to_string());
    }
    if let Some(branch) = git(manifest, &["symbolic-ref", "-q", "HEAD"]) {
        watch.push(branch);
    }
    for name in &watch {
        let Some(path) = git(manifest, &["rev-parse", "--git-path", name]) else {
            continue;
        };
        // A branch only in packed-refs gets a loose file on its next
        // commit: then its directory changes.
        let path = manifest.join(path);
        if let Some(existing) = path.ancestors().find(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", existing.display());
        }
    }
    let line = git(manifest, &["log", "-1", "--format=%H %cs", "HEAD"])?;
    let (commit, date) = line.split_once(' ')?;
    is_hex(commit).then(|| (commit.to_string(), date.to_string()))
}

/// `git ARGS` in `dir`, its trimmed stdout when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status
        .success()
        .then(|| text.trim().to_string())
        .filter(|t| !t.is_empty())
}

fn is_hex(s: &str) -> bool {
    s.len() >= 7 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}
