//! The capture side of the suite-wide leak scan: everything fleetgate printed
//! and everything it wrote to Git during the tests, and every secret value
//! the tests gave it, collected in one directory for `scripts/leakscan.py`,
//! which `scripts/test.sh` runs after `cargo test`.
//!
//! Single assertions in tests check the outputs their authors thought of; the
//! scan checks every output of every test against every secret, so a leak in
//! a path nobody asserted on (a progress line, a note, a comment body) still
//! fails CI.
//!
//! Only fleetgate's own outputs and records go here. A test that reads a
//! rendered file from a host (where a secret belongs) must not capture it.
//!
//! Layout: `captures/<n>-<test>-<what>.txt`, one file per capture (unique by
//! a process-wide counter, so parallel tests never share a file), and
//! `secrets.jsonl`, one `{"key", "value"}` per registered value.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Values shorter than this are not registered: a 4-character value occurs
/// by chance in hashes, ports and timings, and would fail the scan for
/// nothing. Every value the suite uses for real is longer.
const MIN_SECRET_LEN: usize = 6;

/// `<target>/tmp/leakscan`, emptied once per run of the test binary: a scan
/// looks at one run, not at what earlier runs left.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("leakscan");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("captures"))
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        dir
    })
}

/// The running test's name (libtest names each test's thread after it), made
/// fit for a file name: a leak report then says which test printed it.
fn test_name() -> String {
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string();
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .chars()
        .take(100)
        .collect()
}

/// Saves one capture of fleetgate's output or records.
pub fn capture(what: &str, bytes: &[u8]) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    if bytes.is_empty() {
        return;
    }
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let path = dir()
        .join("captures")
        .join(format!("{n:06}-{}-{what}.txt", test_name()));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Registers a secret value the tests hand to fleetgate.
pub fn secret(key: &str, value: &str) {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    if value.chars().count() < MIN_SECRET_LEN {
        return;
    }
    let dir = dir();
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen
        .get_or_insert_with(HashSet::new)
        .insert(value.to_string())
    {
        return;
    }
    let line = serde_json::json!({"key": key, "value": value}).to_string();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("secrets.jsonl"))
        .expect("open secrets.jsonl");
    // Under the lock: one whole line per write, never interleaved.
    writeln!(f, "{line}").expect("write secrets.jsonl");
}

/// Registers every scalar of a plain secrets file as the tests wrote it
/// (before `sops` encrypts it).
pub fn secrets_of_yaml(file: &str, plain: &str) {
    match serde_saphyr::from_str::<serde_json::Value>(plain) {
        Ok(doc) => scalars(&format!("{file}:"), &doc),
        // Not YAML (a test of broken input): every `key: value` line still counts.
        Err(_) => {
            for line in plain.lines() {
                if let Some((k, v)) = line.split_once(':') {
                    secret(
                        &format!("{file}:{}", k.trim()),
                        v.trim().trim_matches('"').trim_matches('\''),
                    );
                }
            }
        }
    }
}

fn scalars(path: &str, v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                scalars(&format!("{path}{k}."), v);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                scalars(&format!("{path}{i}."), v);
            }
        }
        serde_json::Value::String(s) => secret(path.trim_end_matches('.'), s),
        serde_json::Value::Number(n) => secret(path.trim_end_matches('.'), &n.to_string()),
        serde_json::Value::Bool(_) | serde_json::Value::Null => {}
    }
}

/// Saves what fleetgate wrote into the Git repository at `repo` (a work tree
/// or a bare repository): every ref with its value, every commit message
/// (run records' lock commits, reverts and their trailers), and every version
/// of every run record note.
pub fn git_records(repo: &Path) {
    let git = |args: &[&str]| -> Vec<u8> {
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default()
    };
    let refs = git(&["for-each-ref", "--format=%(refname) %(objectname)"]);
    if refs.is_empty() {
        return;
    }
    let mut out = refs.clone();
    out.extend(git(&["log", "--all", "--format=commit %H%n%B"]));
    if String::from_utf8_lossy(&refs).contains("refs/notes/") {
        // -p over the notes refs: each note as added, changed and removed.
        out.extend(git(&[
            "log",
            "-p",
            "--no-ext-diff",
            "--format=notes commit %H",
            "--glob=refs/notes/*",
        ]));
    }
    capture("git", &out);
}

/// Saves the records of every Git repository directly under `dir` (the bare
/// remotes and second clones tests make next to their hosts).
pub fn git_records_under(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let bare = p.join("HEAD").is_file() && p.join("objects").is_dir();
        if p.is_dir() && (bare || p.join(".git").exists()) {
            git_records(&p);
        }
    }
}
