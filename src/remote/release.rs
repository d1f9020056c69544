//! The host layout of design.md §2, and the shell scripts that read and change
//! it, built as data (pure): a deploy can be printed and tested before it runs.
//!
//! ```text
//! <deploy_root>/<client>/<app>/releases/<rev>/   rendered files (never edited after upload)
//! <deploy_root>/<client>/<app>/current           symlink to the live release
//! <deploy_root>/<client>/<app>/state.json        {"rev","files","deployed_at","previous","history","revs"}
//! ```
//!
//! A release is named by the commit it was uploaded at, and stays live for
//! as long as later commits render the app the same: `revs` in `state.json`
//! names the commits it ran.
//!
//! Architecture Invariant: every interpolated value goes through
//! `shell::quote`; file contents travel in the script on the shell's
//! stdin, never in a command line: as the format of its `printf` builtin
//! (never a program: `PATH=`), or base64-encoded in quoted
//! here-documents.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::shell::quote;

/// Releases kept per app (the live and the previous one are never pruned).
pub const KEEP_RELEASES: usize = 5;

/// Commits remembered per app in `State::revs`.
pub const KEEP_REVS: usize = 10;

/// Where one app of one client lives on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppDir {
    pub deploy_root: String,
    pub client: String,
    pub app: String,
}

impl AppDir {
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.deploy_root, self.client, self.app)
    }

    pub fn release(&self, rev: &str) -> String {
        format!("{}/releases/{rev}", self.path())
    }
}

/// One rendered file of a release. Its content may hold secrets: `Debug`
/// shows only the path, size and hash.
#[derive(Clone, PartialEq, Eq)]
pub struct ReleaseFile {
    pub path: String,
    pub content: Vec<u8>,
    pub sha256: String,
    /// Holds a secret value: written 0600 instead of 0644.
    pub secret: bool,
}

impl std::fmt::Debug for ReleaseFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReleaseFile({}, {} bytes, {})",
            self.path,
            self.content.len(),
            crate::core::rev::short(&self.sha256)
        )
    }
}

impl ReleaseFile {
    pub fn new(path: String, content: Vec<u8>, secret: bool) -> ReleaseFile {
        use sha2::{Digest, Sha256};
        let sha256 = hex::encode(Sha256::digest(&content));
        ReleaseFile {
            path,
            content,
            sha256,
            secret,
        }
    }
}

/// `state.json` of an app on a host. `rev`, `previous` and `history` name
/// releases (directories under `releases/`); `revs` names commits, which a
/// release outlives when later commits render the app the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub rev: String,
    pub files: BTreeMap<String, String>,
    pub deployed_at: String,
    pub previous: Option<String>,
    /// Revs that were live before, newest last (rollback walks back along it).
    #[serde(default)]
    pub history: Vec<String>,
    /// The commits this app was deployed at, newest last, across releases:
    /// a switch adds its rev, and a deploy that finds the live release
    /// already gated with exactly its rendered files adds its commit without
    /// touching the release. The last one is the commit the app runs.
    /// (Absent from state written before it existed: then `rev` is that
    /// commit and `previous` the one before.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revs: Vec<String>,
    /// A blue_green app: the slot the release runs in, and its port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<SlotState>,
}

/// One of the two slots of a blue_green app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    Blue,
    Green,
}

impl Slot {
    pub fn index(self) -> usize {
        match self {
            Slot::Blue => 0,
            Slot::Green => 1,
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::Blue => Slot::Green,
            Slot::Green => Slot::Blue,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }
}

/// Where a blue_green release runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    pub name: Slot,
    pub port: u16,
}

impl State {
    /// The newest commit whose rendering of this app the live files are.
    pub fn runs(&self) -> &str {
        self.revs.last().unwrap_or(&self.rev)
    }

    /// The commit the app was deployed at before [`State::runs`]: what
    /// `rollback` goes back to.
    pub fn previous_run(&self) -> Option<&str> {
        if self.revs.is_empty() {
            self.previous.as_deref()
        } else {
            self.revs.iter().rev().nth(1).map(String::as_str)
        }
    }

    /// `revs`, or what state written before it existed implies.
    pub fn ran(&self) -> Vec<String> {
        if self.revs.is_empty() {
            self.previous.iter().chain([&self.rev]).cloned().collect()
        } else {
            self.revs.clone()
        }
    }

    /// `revs` with `commit` added as the newest (kept to [`KEEP_REVS`]).
    pub fn ran_then(&self, commit: &str) -> Vec<String> {
        let mut revs = self.ran();
        if revs.last().map(String::as_str) != Some(commit) {
            revs.push(commit.to_string());
        }
        let keep_from = revs.len().saturating_sub(KEEP_REVS);
        revs.drain(..keep_from);
        revs
    }
}

/// What is on a host for one app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspected {
    pub state: Option<State>,
    /// Files under `current/` and their sha256, as the host computes them.
    pub sums: BTreeMap<String, String>,
    /// The host did not hash the live files (`sums` is empty): its
    /// `state.json` records other files than the deploy's
    /// ([`inspect_for_deploy_script`]), so they are not what it deploys.
    pub unhashed: bool,
    pub releases: Vec<String>,
    /// The release `current` points to.
    pub current: Option<String>,
    /// The release whose start last finished (`started`, written by the
    /// start script on success): a switch whose start never finished is
    /// not live.
    pub started: Option<String>,
    /// The release whose health gates last passed on this host (`gated`,
    /// written only after the verdict, removed by every start): a release
    /// that started but was never judged — its run killed before the
    /// verdict — is not live either.
    pub gated: Option<String>,
}

/// Shell functions of [`inspect_script`], builtins only: `fg_q` appends
/// its argument, quoted, to `$fg_files`; `fg_walk` does so for every
/// regular file under a directory (not through symlinks), as
/// `find -type f` would, without running it; `fg_sums` prints the
/// `sha256sum` of every such file under a directory (one program, none
/// when there are no files); `fg_cat` prints a file and keeps its lines,
/// joined, in `$fg_v`.
const INSPECT_FUNCTIONS: &str = r#"fg_sq="'"
fg_q() { fg_s=$1; fg_r=; while :; do case $fg_s in *"$fg_sq"*) fg_r="$fg_r${fg_s%%"$fg_sq"*}'\''"; fg_s=${fg_s#*"$fg_sq"} ;; *) break ;; esac; done; fg_files="$fg_files '$fg_r$fg_s'"; }
fg_walk() { for fg_f in "$1"/* "$1"/.[!.]* "$1"/..?*; do if [ -L "$fg_f" ]; then continue; elif [ -d "$fg_f" ]; then fg_walk "$fg_f"; elif [ -f "$fg_f" ]; then fg_q "$fg_f"; fi; done; }
fg_sums() { (cd "$1" && fg_files= && fg_walk . && if [ -n "$fg_files" ]; then eval "sha256sum -- $fg_files"; fi); }
fg_cat() { fg_v=; if [ -f "$1" ]; then while IFS= read -r fg_l || [ -n "$fg_l" ]; do printf '%s\n' "$fg_l"; fg_v=$fg_v$fg_l; done < "$1"; fi; }
"#;

/// A script that prints, for each app, its state, the hashes of the live
/// files and the releases on disk. Shell builtins but for one `sha256sum`
/// of an app's live files (and a `readlink` of a `current` that names no
/// directory).
pub fn inspect_script(dirs: &[&AppDir]) -> String {
    let apps: Vec<(&AppDir, Option<&[ReleaseFile]>)> = dirs.iter().map(|d| (*d, None)).collect();
    inspect_for_deploy_script(&apps)
}

/// [`inspect_script`] for a deploy: an app given the files it is about to
/// deploy has its live files hashed only when its `state.json` records
/// exactly those files (the only case in which they can be live already:
/// a deploy that finds them so changes nothing), or records none (a state
/// a rollback wrote). Otherwise it prints
/// `@@unhashed` instead of hashes, and the deploy replaces the files
/// whatever they hold, with no `sha256sum` run to learn what that is.
pub fn inspect_for_deploy_script(apps: &[(&AppDir, Option<&[ReleaseFile]>)]) -> String {
    let mut s = String::from("set -u\n");
    s.push_str(INSPECT_FUNCTIONS);
    for (d, desired) in apps {
        let path = quote(&d.path());
        let _ = writeln!(s, "echo {}", quote(&format!("@@app {}", d.app)));
        let _ = writeln!(
            s,
            "echo @@state; fg_cat {path}/state.json; fg_state=$fg_v; echo"
        );
        let _ = writeln!(
            s,
            "echo @@current; if [ -L {path}/current ]; then if cd -P {path}/current 2>/dev/null; then echo \"releases/${{PWD##*/}}\"; cd /; else readlink {path}/current 2>/dev/null; fi; fi; echo"
        );
        let _ = writeln!(s, "echo @@started; fg_cat {path}/started; echo");
        let _ = writeln!(s, "echo @@gated; fg_cat {path}/gated; echo");
        let hash = format!("if [ -d {path}/current ]; then fg_sums {path}/current; fi");
        match desired {
            None => {
                let _ = writeln!(s, "echo @@sums; {hash}");
            }
            Some(files) => {
                // `state.json` is one line of serde_json: its `files` map
                // reads exactly so when it records these files.
                let files: BTreeMap<&str, &str> = files
                    .iter()
                    .map(|f| (f.path.as_str(), f.sha256.as_str()))
                    .collect();
                let recorded = format!(
                    "\"files\":{}",
                    serde_json::to_string(&files).expect("strings serialise")
                );
                // `$fg_state`: what `fg_cat` read of `state.json` above.
                let _ = writeln!(
                    s,
                    "case $fg_state in *{}*|*'\"files\":{{}}'*) echo @@sums; {hash} ;; *) echo @@unhashed ;; esac",
                    quote(&recorded)
                );
            }
        }
        let _ = writeln!(
            s,
            "echo @@releases; for fg_r in {path}/releases/*; do if [ -e \"$fg_r\" ]; then printf '%s\\n' \"${{fg_r##*/}}\"; fi; done"
        );
        // A quadlet app's live files are its unit directory's: a hand edit
        // there is drift, and the next deploy installs the release again.
        let _ = writeln!(s, "{}", super::quadlet::inspect_snippet(&quadlet_marker(d)));
    }
    s
}

/// Parses what [`inspect_script`] printed.
pub fn parse_inspect(out: &str) -> Result<BTreeMap<String, Inspected>, String> {
    let mut apps: BTreeMap<String, Inspected> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut section = "";
    for line in out.lines() {
        if let Some(app) = line.strip_prefix("@@app ") {
            current = Some(app.to_string());
            apps.entry(app.to_string()).or_default();
            section = "";
            continue;
        }
        if matches!(
            line,
            "@@state" | "@@current" | "@@started" | "@@gated" | "@@sums" | "@@releases"
        ) {
            section = line;
            continue;
        }
        if line == "@@unhashed" {
            section = "";
            if let Some(app) = &current {
                apps.get_mut(app).expect("inserted above").unhashed = true;
            }
            continue;
        }
        if line == "@@quadlet" {
            section = "@@sums";
            if let Some(app) = &current {
                let entry = apps.get_mut(app).expect("inserted above");
                entry.sums.clear();
                entry.unhashed = false;
            }
            continue;
        }
        let Some(app) = &current else {
            return Err(format!("unexpected output before any app: {line:?}"));
        };
        let entry = apps.get_mut(app).expect("inserted above");
        match section {
            "@@state" if !line.trim().is_empty() => {
                let state: State = serde_json::from_str(line)
                    .map_err(|e| format!("state.json of {app} is not fleetgate's: {e}"))?;
                entry.state = Some(state);
            }
            "@@current" if !line.trim().is_empty() => {
                let target = line.trim();
                entry.current = Some(
                    target
                        .strip_prefix("releases/")
                        .unwrap_or(target)
                        .to_string(),
                );
            }
            "@@started" if !line.trim().is_empty() => {
                entry.started = Some(line.trim().to_string());
            }
            "@@gated" if !line.trim().is_empty() => {
                entry.gated = Some(line.trim().to_string());
            }
            "@@sums" => {
                let (hash, path) = line
                    .split_once("  ")
                    .ok_or_else(|| format!("unexpected sha256sum line for {app}: {line:?}"))?;
                entry
                    .sums
                    .insert(path.trim_start_matches("./").to_string(), hash.to_string());
            }
            "@@releases" if !line.starts_with('.') => entry.releases.push(line.to_string()),
            _ => {}
        }
    }
    Ok(apps)
}

/// A unique marker no base64 text can contain.
const EOF: &str = "FLEETGATE_EOF";

/// Uploads `files` as release `rev`: one tar stream, printed by the
/// shell's `printf` builtin (base64 in a quoted here-document when mostly
/// binary), unpacked by one `tar` (files 0644,
/// secret ones 0600, directories 0750, as the archive says) and verified
/// by one `sha256sum` on the host; an upload that fails on the host (the
/// unpacking or the check) leaves nothing of itself (an `EXIT` trap).
/// A new release unpacks where it stays: nothing points at it before the
/// switch. The same release again (a repair: `current` may point at it)
/// unpacks beside it and replaces it with two renames once verified.
/// Contains the file contents (secrets included): never log it.
pub fn upload_script(dir: &AppDir, rev: &str, files: &[ReleaseFile]) -> String {
    upload(dir, rev, files, false)
}

/// [`upload_script`], and the switch to it staged for
/// [`switch_staged_script`]: the same archive holds `releases/.next/current`,
/// the link `current` becomes (no `ln` to run).
pub fn upload_staged_script(dir: &AppDir, rev: &str, files: &[ReleaseFile]) -> String {
    upload(dir, rev, files, true)
}

fn upload(dir: &AppDir, rev: &str, files: &[ReleaseFile], stage: bool) -> String {
    use base64::Engine as _;
    let app = dir.path();
    let releases = quote(&format!("{app}/releases"));
    let release = quote(&dir.release(rev));
    let beside = quote(&format!("{app}/releases/.{rev}.upload"));
    let old = quote(&format!("{app}/releases/.{rev}.old"));
    let link = format!("releases/{rev}");
    let mut s = String::new();
    let _ = writeln!(s, "set -eu\numask 077");
    let _ = writeln!(s, "[ -d {releases} ] || mkdir -p {releases}");
    let _ = writeln!(
        s,
        "if [ -e {beside} ] || [ -L {beside} ]; then rm -rf {beside}; fi"
    );
    let staged = quote(&format!("{app}/releases/.next/current"));
    if stage {
        // A link an earlier upload staged and no switch took (its run
        // killed in between) is not this release's.
        let _ = writeln!(
            s,
            "if [ -e {staged} ] || [ -L {staged} ]; then rm -f {staged}; fi"
        );
    }
    let _ = writeln!(
        s,
        "if [ -e {release} ] || [ -L {release} ]; then fg_into={beside}; mkdir -m 0750 {beside}; else fg_into={releases}; fi"
    );
    // Whatever fails from here (the unpacking, the check), nothing of this
    // upload stays: no partial release, no staged link.
    let _ = writeln!(
        s,
        "trap 'cd /; rm -rf \"$fg_into\"/{} \"$fg_into\"/.next/current' EXIT",
        quote(rev).replace('\'', "'\\''")
    );
    match tar_of(rev, files, stage.then_some(link.as_str())) {
        Some(tar) => {
            // The archive's modes as they are (0600 stays 0600: a umask
            // can only take bits away). Written by the shell's own
            // `printf` (no program to decode it) unless escaping makes a
            // large archive much longer than base64 would (mostly binary
            // content: 4 bytes of script per byte); a small one's headers
            // are mostly NULs, cheaper to read than a `base64` to start.
            let _ = writeln!(s, "umask 022");
            let escaped = printf_format(&tar);
            if escaped.len() <= 2 * tar.len().div_ceil(3) * 4 + (64 << 10) {
                // Only the builtin (`PATH=` finds no program): the archive
                // may hold secrets, which must never be a program's
                // argument (visible in `ps`). A shell without one (mksh,
                // posh) is refused by name.
                let _ = writeln!(
                    s,
                    "if ! PATH= printf ''; then echo \"fleetgate: the host's sh has no printf builtin (dash, bash, BusyBox ash and ksh93 have one)\" >&2; exit 1; fi"
                );
                let _ = writeln!(
                    s,
                    "PATH= printf {} | tar -x -m -o -f - -C \"$fg_into\"",
                    quote(&escaped)
                );
            } else {
                let encoded = base64::engine::general_purpose::STANDARD.encode(tar);
                let _ = writeln!(s, "base64 -d <<'{EOF}' | tar -x -m -o -f - -C \"$fg_into\"");
                push_lines(&mut s, &encoded);
                let _ = writeln!(s, "{EOF}");
            }
            let _ = writeln!(s, "umask 077");
        }
        // A path no tar header holds: one file at a time.
        None => {
            let _ = writeln!(s, "mkdir -m 0750 \"$fg_into\"/{}", quote(rev));
            for f in files {
                upload_one(&mut s, rev, f);
            }
            if stage {
                let _ = writeln!(
                    s,
                    "mkdir -p \"$fg_into/.next\"\nln -sfn {} \"$fg_into/.next/current\"",
                    quote(&link)
                );
            }
        }
    }
    // Options GNU and BusyBox (Alpine) `sha256sum` share: none but `-c`.
    // Its per-file lines are kept and shown only when it fails: on stderr
    // they would open the message of any later step that fails.
    let _ = writeln!(
        s,
        "cd \"$fg_into\"/{}\nif ! fg_checked=$(sha256sum -c - 2>&1 <<'{EOF}'",
        quote(rev)
    );
    for f in files {
        let _ = writeln!(s, "{}  {}", f.sha256, f.path);
    }
    let _ = writeln!(
        s,
        "{EOF}\n); then\nprintf '%s\\n' \"$fg_checked\" >&2\nexit 1\nfi\ncd /\ntrap - EXIT"
    );
    // A repair: the release it replaces steps aside, then goes.
    let mut swap = format!(
        "if [ -e {old} ]; then rm -rf {old}; fi\nmv -T {release} {old}\nmv -T {beside}/{} {release}\n",
        quote(rev)
    );
    if stage {
        let _ = writeln!(
            swap,
            "mkdir -p {releases}/.next\nmv -fT {beside}/.next/current {releases}/.next/current"
        );
    }
    let _ = writeln!(
        s,
        "if [ \"$fg_into\" = {beside} ]; then\n{swap}rm -rf {old} {beside}\nfi"
    );
    s
}

/// `bytes` as a `printf` format that prints exactly them: printable ASCII
/// and newlines as they are (`%` and `\` doubled), every other byte (NUL
/// included) as a three-digit octal escape, which dash, bash and BusyBox
/// read alike (never more than three digits, so a digit after one is its
/// own). ASCII only: the script stays text whatever the files hold.
fn printf_format(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        match b {
            b'%' => s.push_str("%%"),
            b'\\' => s.push_str("\\\\"),
            b'\n' | b' '..=b'~' => s.push(b as char),
            _ => {
                for c in [b'\\', b'0' + (b >> 6), b'0' + (b >> 3 & 7), b'0' + (b & 7)] {
                    s.push(c as char);
                }
            }
        }
    }
    s
}

/// Base64 text in lines of 76.
fn push_lines(s: &mut String, encoded: &str) {
    for chunk in encoded.as_bytes().chunks(76) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        s.push('\n');
    }
}

/// One file the old way (a path too long for a tar header): its own
/// `base64 -d` and `chmod`, into `$fg_into/<rev>/`.
fn upload_one(s: &mut String, rev: &str, f: &ReleaseFile) {
    use base64::Engine as _;
    let target = format!("\"$fg_into\"/{}", quote(&format!("{rev}/{}", f.path)));
    if let Some((parent, _)) = f.path.rsplit_once('/') {
        let _ = writeln!(
            s,
            "mkdir -p -m 0750 \"$fg_into\"/{}",
            quote(&format!("{rev}/{parent}"))
        );
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(&f.content);
    let _ = writeln!(s, "base64 -d > {target} <<'{EOF}'");
    push_lines(s, &encoded);
    let _ = writeln!(s, "{EOF}");
    let _ = writeln!(
        s,
        "chmod {} {target}",
        if f.secret { "0600" } else { "0644" },
    );
}

/// `files` as a ustar archive under `root` (a directory 0750, made by
/// the archive), each directory (0750) before what it holds, files 0644
/// or 0600 (secret), owner 0, mtime 0 (`tar -m` unpacks them as of now);
/// with `link`, also `.next/` (0700) and `.next/current`, a symlink to
/// `link` (its text is relative to the app's directory, where it ends up). `None` when a path does not fit a ustar header or is not a
/// plain relative path.
fn tar_of(root: &str, files: &[ReleaseFile], link: Option<&str>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    tar_header(&mut out, &format!("{root}/"), 0o750, 0, b'5', "")?;
    for f in files {
        let parts: Vec<&str> = f.path.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\n'))
        {
            return None;
        }
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            if dirs.insert(d.clone()) {
                tar_header(&mut out, &format!("{root}/{d}/"), 0o750, 0, b'5', "")?;
            }
        }
        tar_header(
            &mut out,
            &format!("{root}/{}", f.path),
            if f.secret { 0o600 } else { 0o644 },
            f.content.len() as u64,
            b'0',
            "",
        )?;
        out.extend_from_slice(&f.content);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    if let Some(link) = link {
        tar_header(&mut out, ".next/", 0o700, 0, b'5', "")?;
        tar_header(&mut out, ".next/current", 0o777, 0, b'2', link)?;
    }
    out.resize(out.len() + 1024, 0);
    Some(out)
}

fn tar_header(
    out: &mut Vec<u8>,
    path: &str,
    mode: u32,
    size: u64,
    kind: u8,
    link: &str,
) -> Option<()> {
    let mut h = [0u8; 512];
    let bytes = path.as_bytes();
    // name (100) and, for a longer path, prefix (155) split at a `/`.
    let (prefix, name) = if bytes.len() <= 100 {
        (&[][..], bytes)
    } else {
        let cut = (bytes.len().saturating_sub(101)..bytes.len().min(156))
            .find(|&i| bytes[i] == b'/' && bytes.len() - i - 1 <= 100 && i <= 155)?;
        (&bytes[..cut], &bytes[cut + 1..])
    };
    if name.is_empty() || size >= 0o77777777777 || link.len() > 100 {
        return None;
    }
    h[..name.len()].copy_from_slice(name);
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let text = format!("{v:0width$o}", width = len - 1);
        h[at..at + len - 1].copy_from_slice(text.as_bytes());
    };
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 0);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    out.extend_from_slice(&h);
    Some(())
}

/// Points `current` at release `rev` atomically (symlink + rename) and writes
/// `state.json` the same way.
pub fn switch_script(dir: &AppDir, rev: &str, state: &State) -> String {
    let app = dir.path();
    let mut s = String::from("set -eu\numask 077\n");
    let _ = writeln!(s, "[ -d {} ]", quote(&dir.release(rev)));
    let _ = writeln!(
        s,
        "ln -sfn {} {}",
        quote(&format!("releases/{rev}")),
        quote(&format!("{app}/.current.new"))
    );
    let _ = writeln!(
        s,
        "mv -T {} {}",
        quote(&format!("{app}/.current.new")),
        quote(&format!("{app}/current"))
    );
    write_state(&mut s, dir, state);
    s
}

/// [`switch_script`] after [`upload_staged_script`] of the same `rev` in
/// the same script: `releases/.next/current` (the link it staged) and
/// `releases/.next/state.json` move into place with one `mv`, each a
/// rename.
pub fn switch_staged_script(dir: &AppDir, rev: &str, state: &State) -> String {
    let app = dir.path();
    let next = format!("{app}/releases/.next");
    let json = serde_json::to_string(state).expect("state serialises");
    let mut s = String::from("set -eu\numask 077\n");
    let _ = writeln!(s, "[ -d {} ]", quote(&dir.release(rev)));
    let _ = writeln!(s, "[ -L {} ]", quote(&format!("{next}/current")));
    let _ = writeln!(
        s,
        "printf '%s\\n' {} > {}",
        quote(&json),
        quote(&format!("{next}/state.json"))
    );
    let _ = writeln!(
        s,
        "mv -f {} {} {}/",
        quote(&format!("{next}/current")),
        quote(&format!("{next}/state.json")),
        quote(&app)
    );
    s
}

/// Rewrites `state.json` of an app left on its release (`state.rev`),
/// which must still be the one `current` points to: only what it records
/// changes, nothing is uploaded, switched or restarted.
pub fn record_script(dir: &AppDir, state: &State) -> String {
    let mut s = String::from("set -eu\numask 077\n");
    // `current` and `releases/<rev>` are the same directory (`cd -P` and
    // `pwd -P` are builtins: no `readlink`).
    let _ = writeln!(
        s,
        "[ -L {current} ] && [ \"$(cd -P {current} && pwd -P)\" = \"$(cd -P {release} && pwd -P)\" ]",
        current = quote(&format!("{}/current", dir.path())),
        release = quote(&dir.release(&state.rev))
    );
    write_state(&mut s, dir, state);
    s
}

/// Writes `state.json` atomically (a temp file and a rename).
fn write_state(s: &mut String, dir: &AppDir, state: &State) {
    let app = dir.path();
    let json = serde_json::to_string(state).expect("state serialises");
    // One line of JSON, quoted, through `printf` (a builtin).
    let _ = writeln!(
        s,
        "printf '%s\\n' {} > {}",
        quote(&json),
        quote(&format!("{app}/.state.json.new"))
    );
    let _ = writeln!(
        s,
        "mv -T {} {}",
        quote(&format!("{app}/.state.json.new")),
        quote(&format!("{app}/state.json"))
    );
}

/// How an app is (re)started on its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// `<command> -p <project> up -d --remove-orphans` in the release dir
    /// (`docker compose`, `docker-compose`, `podman compose`, …).
    Compose { command: String, project: String },
    /// `commands.start` in the release dir; `commands.stop` first, in the
    /// release being replaced.
    Command { start: String, stop: Option<String> },
    /// Podman Quadlet: the release installed as the app's unit directory,
    /// systemd reloaded, its units restarted (`remote::quadlet`).
    Quadlet(super::quadlet::Units),
}

/// Where a quadlet app's live units were installed (a line: the directory).
pub fn quadlet_marker(dir: &AppDir) -> String {
    format!("{}/quadlet", dir.path())
}

/// Runs the app's runtime for release `rev`; `replacing` is the release that
/// was live before, if any.
pub fn start_script(dir: &AppDir, rev: &str, start: &Start, replacing: Option<&str>) -> String {
    let mut s = String::from("set -eu\n");
    let app = dir.path();
    // Not live until its start finishes and its gates pass (see
    // `Inspected::started` and `Inspected::gated`): emptied, which every
    // reader takes as absent (a redirection: no `rm` to run).
    for marker in ["started", "gated"] {
        let _ = writeln!(
            s,
            "if [ -e {m} ]; then : > {m}; fi",
            m = quote(&format!("{app}/{marker}"))
        );
    }
    // An app deployed again is no longer a removed one.
    let _ = writeln!(
        s,
        "if [ -e {m} ]; then rm -f {m}; fi",
        m = quote(&format!("{app}/removed_at"))
    );
    // It ran blue/green before: its live slot stops first.
    let _ = writeln!(
        s,
        "if [ -f {slot} ]; then\n{}\nrm -f {slot}\nfi",
        stop_live_slot(dir, start, None),
        slot = quote(&format!("{app}/slot"))
    );
    match start {
        Start::Compose { command, project } => {
            let _ = writeln!(s, "cd {}", quote(&dir.release(rev)));
            let _ = writeln!(s, "{command} -p {} up -d --remove-orphans", quote(project));
        }
        Start::Quadlet(units) => {
            let _ = writeln!(s, "cd {}", quote(&dir.release(rev)));
            s.push_str(&units.install_script(&dir.release(rev), &quadlet_marker(dir)));
        }
        Start::Command { start, stop } => {
            if let (Some(stop), Some(old)) = (stop, replacing.filter(|old| *old != rev)) {
                let old_dir = quote(&dir.release(old));
                let _ = writeln!(
                    s,
                    "if [ -d {old_dir} ]; then (cd {old_dir} && {stop}) || echo 'fleetgate: stop of the previous release failed' >&2; fi"
                );
            }
            let _ = writeln!(s, "cd {}", quote(&dir.release(rev)));
            // A subshell: an `exit` in the operator's command ends only it.
            let _ = writeln!(s, "( {start}\n)");
        }
    }
    // Written in place: removed above, so a reader finds it absent, empty
    // (not started) or whole.
    let _ = writeln!(
        s,
        "printf '%s\\n' {} > {}",
        quote(rev),
        quote(&format!("{app}/started"))
    );
    s
}

/// The environment a slot's commands run with: `FLEETGATE_SLOT`, `FLEETGATE_PORT`.
fn slot_env(slot: Slot, port: u16) -> String {
    format!(
        "FLEETGATE_SLOT={}; FLEETGATE_PORT={port}; export FLEETGATE_SLOT FLEETGATE_PORT",
        slot.name()
    )
}

/// The compose project of one slot of an app.
pub fn slot_project(project: &str, slot: Slot) -> String {
    format!("{project}-{}", slot.name())
}

/// Stops the slot named in the app's `slot` file (`<slot> <port>`, written
/// by [`switch_slot_script`]), best effort, in its live release.
fn stop_live_slot(dir: &AppDir, start: &Start, stop: Option<&str>) -> String {
    let path = quote(&dir.path());
    let body = match (start, command_stop(start, stop)) {
        (Start::Compose { command, project }, _) => {
            format!("{command} -p {}-\"$fg_slot\" down", quote(project))
        }
        (Start::Command { .. }, Some(stop)) => stop.to_string(),
        (Start::Command { .. } | Start::Quadlet(_), None) => "true".to_string(),
        (Start::Quadlet(_), Some(stop)) => stop.to_string(),
    };
    format!(
        "read -r fg_slot fg_port < {path}/slot || true\nif [ -n \"${{fg_slot:-}}\" ] && [ -d {path}/current ]; then (cd {path}/current && FLEETGATE_SLOT=$fg_slot FLEETGATE_PORT=$fg_port && export FLEETGATE_SLOT FLEETGATE_PORT && {body}\n) || echo 'fleetgate: stopping the live slot failed' >&2; fi"
    )
}

/// Starts release `rev` in `slot` beside the live one: the compose project
/// `<project>-<slot>`, or `commands.start`, with `FLEETGATE_SLOT` and
/// `FLEETGATE_PORT` set. Touches neither `current` nor the markers: the
/// live release goes on serving until [`switch_slot_script`].
pub fn start_slot_script(dir: &AppDir, rev: &str, start: &Start, slot: Slot, port: u16) -> String {
    let mut s = String::from("set -eu\n");
    let _ = writeln!(
        s,
        "cd {}\n{}",
        quote(&dir.release(rev)),
        slot_env(slot, port)
    );
    match start {
        Start::Compose { command, project } => {
            let _ = writeln!(
                s,
                "{command} -p {} up -d --remove-orphans",
                quote(&slot_project(project, slot))
            );
        }
        Start::Command { start, .. } => {
            let _ = writeln!(s, "( {start}\n)");
        }
        // Refused by `check` (`strategy: blue_green` with `runtime: quadlet`).
        Start::Quadlet(_) => {
            let _ = writeln!(
                s,
                "echo 'fleetgate: a quadlet app has no blue/green slots' >&2; exit 1"
            );
        }
    }
    s
}

/// Stops `slot` running release `rev` (best effort when the release is
/// gone): `down` of its compose project, or `commands.stop` with its
/// `FLEETGATE_PORT`. `plain`: the app ran without slots (`recreate`)
/// before its first blue/green deploy; its own project stops.
pub fn stop_slot_script(
    dir: &AppDir,
    rev: &str,
    start: &Start,
    stop: Option<&str>,
    slot: Option<SlotState>,
) -> String {
    let mut s = String::from("set -u\n");
    let release = quote(&dir.release(rev));
    let _ = writeln!(s, "[ -d {release} ] || exit 0\ncd {release}");
    match slot {
        Some(sl) => {
            let _ = writeln!(s, "{}", slot_env(sl.name, sl.port));
        }
        // The app's own project (it ran `recreate`): its commands see the
        // variables set, and empty.
        None => {
            let _ = writeln!(
                s,
                "FLEETGATE_SLOT=; FLEETGATE_PORT=; export FLEETGATE_SLOT FLEETGATE_PORT"
            );
        }
    }
    match (start, command_stop(start, stop)) {
        (Start::Compose { command, project }, _) => {
            let project = match slot {
                Some(sl) => slot_project(project, sl.name),
                None => project.clone(),
            };
            let _ = writeln!(s, "{command} -p {} down", quote(&project));
        }
        (Start::Command { .. } | Start::Quadlet(_), Some(stop)) => {
            let _ = writeln!(s, "( {stop}\n)");
        }
        (Start::Command { .. } | Start::Quadlet(_), None) => {}
    }
    s
}

/// Lines of logs a failed app's report keeps (and the default asks for).
pub const LOG_LINES: usize = crate::core::outcome::LOG_LINES;

/// Bytes of log output a host sends at most per app (its last ones).
pub const LOG_BYTES_SENT: usize = 64 * 1024;

/// The last line of [`logs_script`]'s output: the logs command's exit status.
const LOGS_EXIT: &str = "@@fleetgate-logs-exit ";

/// Prints the last log lines of release `rev` of an app that failed, run
/// in that release (`slot`: its blue/green slot, with `FLEETGATE_SLOT` and
/// `FLEETGATE_PORT` set; else both set and empty): `logs`
/// (`commands.logs`), else, for compose and podman, `<command> -p
/// <project> logs --tail 100` of its project (a slot's:
/// `<project>-<slot>`; no `--no-color`: podman-compose refuses it, and
/// the runner strips escape sequences anyway). `None`: a command app
/// without `commands.logs`.
/// Its own output and stderr both count, bounded on the host to their
/// last [`LOG_BYTES_SENT`] bytes (the runner keeps the last lines, and
/// counts those it cuts); the last line is the command's exit status
/// ([`parse_logs`]).
pub fn logs_script(
    dir: &AppDir,
    rev: &str,
    start: &Start,
    logs: Option<&str>,
    slot: Option<SlotState>,
) -> Option<String> {
    let command = match (logs, start) {
        (Some(logs), _) => logs.to_string(),
        (None, Start::Compose { command, project }) => {
            let project = match slot {
                Some(sl) => slot_project(project, sl.name),
                None => project.clone(),
            };
            format!("{command} -p {} logs --tail {LOG_LINES}", quote(&project))
        }
        (None, Start::Quadlet(units)) => units.logs_command(),
        (None, Start::Command { .. }) => return None,
    };
    let env = match slot {
        Some(sl) => slot_env(sl.name, sl.port),
        None => "FLEETGATE_SLOT=; FLEETGATE_PORT=; export FLEETGATE_SLOT FLEETGATE_PORT".into(),
    };
    // Within LOGS_TIMEOUT_SECS where the host has `timeout` (coreutils,
    // busybox): a command that follows its logs must not hold the host.
    Some(format!(
        "set -u\n{env}\nfg_timeout=\nif command -v timeout >/dev/null 2>&1; then fg_timeout='timeout {LOGS_TIMEOUT_SECS}'; fi\n{{ cd {} && $fg_timeout sh -c {} 2>&1 </dev/null; printf '\\n{LOGS_EXIT}%s\\n' \"$?\"; }} 2>&1 | tail -c {LOG_BYTES_SENT}\n",
        quote(&dir.release(rev)),
        quote(&command),
    ))
}

/// How long a logs command may run on the host (see [`logs_script`]).
pub const LOGS_TIMEOUT_SECS: u64 = if cfg!(test) { 1 } else { 30 };

/// The exit status of a command `timeout` stopped.
pub const TIMED_OUT: i32 = 124;

/// [`logs_script`]'s output: the logs (their first line cut short when the
/// host cut them by size: `(text, cut)`), and the command's exit status
/// when the output says it.
pub fn parse_logs(out: &str) -> (String, bool, Option<i32>) {
    let trimmed = out.trim_end_matches('\n');
    let (body, status) = match trimmed.rsplit_once('\n') {
        Some((body, last)) if last.starts_with(LOGS_EXIT) => {
            (body, last[LOGS_EXIT.len()..].trim().parse().ok())
        }
        _ if trimmed.starts_with(LOGS_EXIT) => ("", trimmed[LOGS_EXIT.len()..].trim().parse().ok()),
        _ => (trimmed, None),
    };
    // The echo's own newline: the logs end where the command's output ended.
    let body = body.strip_suffix('\n').unwrap_or(body);
    (body.to_string(), out.len() >= LOG_BYTES_SENT, status)
}

/// A command app's stop: its `commands.stop`, else `stop`.
fn command_stop<'a>(start: &'a Start, stop: Option<&'a str>) -> Option<&'a str> {
    match start {
        Start::Command { stop: own, .. } => own.as_deref().or(stop),
        Start::Compose { .. } | Start::Quadlet(_) => stop,
    }
}

/// Makes release `rev`, running in `slot`, the live one: `current`,
/// `state.json`, the `slot` file and the `started` marker (its start
/// finished before its gate); `gated` comes after the checks through the
/// proxy, as for any release.
pub fn switch_slot_script(dir: &AppDir, rev: &str, state: &State, slot: SlotState) -> String {
    let app = dir.path();
    let mut s = switch_script(dir, rev, state);
    let _ = writeln!(
        s,
        "rm -f {gated}\necho {} > {tmp}\nmv -f {tmp} {slot}\necho {} > {started_tmp}\nmv -f {started_tmp} {started}",
        quote(&format!("{} {}", slot.name.name(), slot.port)),
        quote(rev),
        gated = quote(&format!("{app}/gated")),
        tmp = quote(&format!("{app}/.slot.new")),
        slot = quote(&format!("{app}/slot")),
        started_tmp = quote(&format!("{app}/.started.new")),
        started = quote(&format!("{app}/started")),
    );
    s
}

/// A check command run in release `rev` (a new slot, not yet `current`).
pub fn check_in_release_script(dir: &AppDir, rev: &str, command: &str) -> String {
    format!("cd {}\n{command}\n", quote(&dir.release(rev)))
}

/// Records that release `rev` of each app passed its health gates on this
/// host: written only after the verdict, and only over a finished start of
/// that same release (a start in between removed it).
pub fn gated_script(dirs: &[(&AppDir, &str)]) -> String {
    let mut s = String::from("set -eu\n");
    for (dir, rev) in dirs {
        let app = dir.path();
        let _ = writeln!(
            s,
            "fg_started=\n{{ read -r fg_started < {}; }} 2>/dev/null || true\n[ \"$fg_started\" = {} ]",
            quote(&format!("{app}/started")),
            quote(rev)
        );
        // Written in place: every start removes it first, so a reader finds
        // it absent, empty (not gated) or whole.
        let _ = writeln!(
            s,
            "printf '%s\\n' {} > {}",
            quote(rev),
            quote(&format!("{app}/gated"))
        );
    }
    s
}

/// Removes all but the newest [`KEEP_RELEASES`] releases, never one in
/// `keep`: a glob loop ranks them by mtime with `[ -nt ]` (builtins), one
/// `rm -rf` removes them all.
pub fn prune_script(dir: &AppDir, keep: &[&str]) -> String {
    let releases = quote(&format!("{}/releases", dir.path()));
    let mut s = format!(
        "set -eu\ncd {releases}\nset --\nfor r in *; do\n  if [ ! -e \"$r\" ] && [ ! -L \"$r\" ]; then continue; fi\n  case \"$r\" in\n"
    );
    for k in keep {
        let _ = writeln!(s, "    {}) continue ;;", quote(k));
    }
    let _ = write!(
        s,
        "  esac\n  n=0\n  for o in *; do if [ \"$o\" -nt \"$r\" ]; then n=$((n + 1)); fi; done\n  if [ \"$n\" -ge {KEEP_RELEASES} ]; then set -- \"$@\" \"$r\"; fi\ndone\nif [ $# -gt 0 ]; then rm -rf -- \"$@\"; fi\n"
    );
    s
}

/// A script that runs `command` (a health check) in the live release.
pub fn check_script(dir: &AppDir, command: &str) -> String {
    format!("cd {}/current\n{command}\n", quote(&dir.path()))
}

/// An app's `commands.pre_snapshot`, run before its host's snapshot: in
/// its live release (`current`) if it has one, else in its directory.
pub fn pre_snapshot_script(dir: &AppDir, command: &str) -> String {
    let path = quote(&dir.path());
    format!(
        "set -eu\nif [ -d {path}/current ]; then cd {path}/current; else mkdir -p {path} && cd {path}; fi\n{command}\n"
    )
}

/// What a backup command prints to name the backup it made:
/// `FLEETGATE_BACKUP_ID=<id>` on a line of its own.
pub const BACKUP_ID_LINE: &str = "FLEETGATE_BACKUP_ID=";

/// An app's `commands.backup`, run before its first change in its live
/// release (an app without one has nothing to back up: the executor does
/// not run it). Its stdout names the backup ([`parse_backup_id`]).
pub fn backup_script(dir: &AppDir, command: &str) -> String {
    format!("set -eu\ncd {}/current\n{command}\n", quote(&dir.path()))
}

/// The backup id a backup command printed: its last
/// `FLEETGATE_BACKUP_ID=<id>` line, the id 1 to 128 of `A-Z a-z 0-9 . _ : -`.
/// None, or a malformed one, is a failed backup.
pub fn parse_backup_id(stdout: &str) -> Result<String, String> {
    let Some(line) = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with(BACKUP_ID_LINE))
    else {
        return Err(format!(
            "the backup command printed no `{BACKUP_ID_LINE}<id>` line: fleetgate cannot tell which backup to restore"
        ));
    };
    let id = line.trim()[BACKUP_ID_LINE.len()..].to_string();
    if is_backup_id(&id) {
        Ok(id)
    } else {
        Err(format!(
            "the backup command printed `{BACKUP_ID_LINE}` with no valid id (1 to 128 letters, digits, `.`, `_`, `:`, `-`)"
        ))
    }
}

/// Whether `id` can be a backup id (what [`parse_backup_id`] accepts, and
/// `restore --backup` takes).
pub fn is_backup_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// An app's `commands.restore`, run in its live release with
/// `FLEETGATE_BACKUP_ID` set to the backup to put back (`restore --app`).
pub fn restore_script(dir: &AppDir, command: &str, id: &str) -> String {
    let path = quote(&dir.path());
    format!(
        "set -eu\nif [ ! -d {path}/current ]; then echo {} >&2; exit 1; fi\ncd {path}/current\nFLEETGATE_BACKUP_ID={}\nexport FLEETGATE_BACKUP_ID\n{command}\n",
        quote(&format!("{}: no live release to restore into", dir.app)),
        quote(id)
    )
}

/// Takes down a first deploy that failed: there is no release to go back
/// to, so its runtime is stopped (`stop`: `commands.stop`, for the command
/// runtime) and the app is left with nothing live. The stop is best effort
/// (`|| true`): a stop that fails must not keep `current` pointing at the
/// failed release, which the next run would take for live.
pub fn teardown_script(dir: &AppDir, start: &Start, stop: Option<&str>) -> String {
    let path = quote(&dir.path());
    let mut s = String::from("set -u\n");
    // A blue_green app: its live slot (the other one was stopped after its drain).
    let _ = writeln!(
        s,
        "if [ -f {path}/slot ]; then\n{}\nrm -f {path}/slot\nrm -f {path}/current {path}/state.json\nfi",
        stop_live_slot(dir, start, stop)
    );
    match (start, stop) {
        (Start::Compose { command, project }, _) => {
            let _ = writeln!(
                s,
                "if [ -d {path}/current ]; then (cd {path}/current && {command} -p {} down) || true; fi",
                quote(project)
            );
        }
        (Start::Quadlet(units), _) => {
            let _ = writeln!(s, "({})", units.teardown_script(&quadlet_marker(dir)));
        }
        (Start::Command { .. }, Some(stop)) => {
            let _ = writeln!(
                s,
                "if [ -d {path}/current ]; then (cd {path}/current && {stop}) || true; fi"
            );
        }
        (Start::Command { .. }, None) => {}
    }
    let _ = writeln!(s, "rm -f {path}/current {path}/state.json");
    // When: its releases are kept for the pipeline's `removal.keep_releases`
    // from now (see `prune_removed_script`).
    let _ = writeln!(s, "date -u +%s > {path}/removed_at");
    s
}

/// Deletes the `releases/` of the client's apps removed from this host
/// more than `keep` ago (`removed_at`, written by the teardown), silently:
/// it runs with every inspect of the client's host. Everything else in the
/// app's directory — data — stays.
pub fn prune_removed_script(client_dir: &str, keep: std::time::Duration) -> String {
    let dir = quote(client_dir);
    let secs = keep.as_secs();
    format!(
        "now=\nfor f in {dir}/*/removed_at; do\n  [ -f \"$f\" ] && [ -e \"${{f%/removed_at}}/releases\" ] || continue\n  at=\n  {{ read -r at < \"$f\"; }} 2>/dev/null || true\n  [ -n \"$now\" ] || now=$(date -u +%s)\n  case \"$at\" in ''|*[!0-9]*) continue ;; esac\n  if [ $((now - at)) -ge {secs} ]; then rm -rf -- \"${{f%/removed_at}}/releases\"; fi\ndone\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_apps_keep_their_releases_until_the_retention_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let client = tmp.path().join("it's $(here)/alpha");
        for (app, removed_at) in [("old", Some("1000")), ("new", None), ("live", None)] {
            let d = client.join(app);
            std::fs::create_dir_all(d.join("releases/r1")).unwrap();
            std::fs::write(d.join("data.db"), "keep\n").unwrap();
            if let Some(at) = removed_at {
                std::fs::write(d.join("removed_at"), at).unwrap();
            }
        }
        // `new` is taken down now: its teardown notes when.
        let new = AppDir {
            deploy_root: tmp.path().join("it's $(here)").to_str().unwrap().into(),
            client: "alpha".into(),
            app: "new".into(),
        };
        let cmd = Start::Command {
            start: "true".into(),
            stop: None,
        };
        assert!(sh(&teardown_script(&new, &cmd, None)).status.success());
        assert!(client.join("new/removed_at").exists());
        let keep = std::time::Duration::from_secs(30 * 24 * 3600);
        let out = sh(&prune_removed_script(client.to_str().unwrap(), keep));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "silent: it runs inside the inspect");
        // Removed long ago: releases gone, data kept. Just removed, or live: kept.
        assert!(!client.join("old/releases").exists());
        assert!(client.join("old/data.db").exists());
        assert!(client.join("new/releases/r1").exists());
        assert!(client.join("live/releases/r1").exists());
        // Deployed again, an app is no longer a removed one.
        let again = start_script(&new, "r2", &cmd, None);
        assert!(again.contains("removed_at"), "{again}");
    }

    #[test]
    fn a_backup_names_its_id_and_a_restore_gets_it() {
        assert_eq!(
            parse_backup_id(
                "saved\nFLEETGATE_BACKUP_ID=old\nFLEETGATE_BACKUP_ID=4f2a9c1e\r\ndone\n"
            ),
            Ok("4f2a9c1e".to_string()),
            "the last id line counts"
        );
        assert!(parse_backup_id("snapshot 4f2a saved\n").is_err());
        for bad in ["", "a b", "$(x)", "x;y", &"a".repeat(129)] {
            assert!(
                parse_backup_id(&format!("FLEETGATE_BACKUP_ID={bad}\n")).is_err(),
                "{bad:?}"
            );
        }
        assert!(is_backup_id("2026-11-30T03:00:00.1_x") && !is_backup_id("a/b"));
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(&tmp.path().join("it's $(here)"));
        let out = sh(&restore_script(
            &d,
            "echo \"got $FLEETGATE_BACKUP_ID\"",
            "a'b",
        ));
        assert!(
            !out.status.success(),
            "no live release: nothing to restore into"
        );
        std::fs::create_dir_all(std::path::Path::new(&d.release("r1"))).unwrap();
        std::os::unix::fs::symlink("releases/r1", format!("{}/current", d.path())).unwrap();
        let out = sh(&backup_script(&d, "pwd; echo FLEETGATE_BACKUP_ID=x1"));
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("/current"), "{stdout}");
        assert_eq!(parse_backup_id(&stdout), Ok("x1".into()));
        let out = sh(&restore_script(
            &d,
            "echo \"got $FLEETGATE_BACKUP_ID\"",
            "a'b",
        ));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "got a'b\n");
        assert!(
            !sh(&backup_script(&d, "false; echo FLEETGATE_BACKUP_ID=x"))
                .status
                .success()
        );
    }

    #[test]
    fn logs_run_in_the_failed_release_bounded_with_their_exit_status() {
        let tmp = tempfile::tempdir().unwrap();
        let d = AppDir {
            deploy_root: tmp.path().join("it's $(here)").to_str().unwrap().into(),
            client: "alpha".into(),
            app: "web".into(),
        };
        std::fs::create_dir_all(d.release("r1")).unwrap();
        let log: String = (1..=300).map(|i| format!("line {i}\n")).collect();
        std::fs::write(format!("{}/app.log", d.release("r1")), log).unwrap();
        let cmd = Start::Command {
            start: "true".into(),
            stop: None,
        };
        let run = |logs: &str, slot| {
            let out = sh(&logs_script(&d, "r1", &cmd, Some(logs), slot).unwrap());
            assert!(out.status.success(), "{out:?}");
            parse_logs(&String::from_utf8(out.stdout).unwrap())
        };
        // A command app without `commands.logs` has none.
        assert_eq!(logs_script(&d, "r1", &cmd, None, None), None);
        // In the release, in its slot; stderr counts; a failing command says so.
        let green = SlotState {
            name: Slot::Green,
            port: 8081,
        };
        let (body, cut, status) = run(
            "tail -n 50 app.log; echo \"slot=$FLEETGATE_SLOT port=$FLEETGATE_PORT\" >&2; exit 3",
            Some(green),
        );
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(
            (lines.len(), lines[0], lines[50]),
            (51, "line 251", "slot=green port=8081")
        );
        assert_eq!((cut, status), (false, Some(3)));
        // No newline at the end, nothing at all, or a release that is gone.
        assert_eq!(run("printf 'a\\nb'", None), ("a\nb".into(), false, Some(0)));
        assert_eq!(run("true", None), (String::new(), false, Some(0)));
        let gone = logs_script(&d, "r2", &cmd, Some("echo never"), None).unwrap();
        let (body, _, status) = parse_logs(&String::from_utf8_lossy(&sh(&gone).stdout));
        assert!(
            !body.contains("never") && status.is_some_and(|s| s != 0),
            "{body}"
        );
        // A huge output: only its end leaves the host.
        let (body, cut, status) = run("yes 0123456789 | head -n 100000", None);
        assert!(cut && body.len() < LOG_BYTES_SENT && body.ends_with("\n0123456789"));
        assert_eq!(status, Some(0));
        // compose and podman: their project's (a slot's) logs, every value quoted.
        let compose = Start::Compose {
            command: "docker compose".into(),
            project: "alpha-web".into(),
        };
        let script = logs_script(&d, "r1", &compose, None, Some(green)).unwrap();
        assert!(
            script.contains("docker compose -p alpha-web-green logs --tail 100")
                && script.contains(&quote(&d.release("r1"))),
            "{script}"
        );
        let own = logs_script(&d, "r1", &compose, Some("tail app.log"), None).unwrap();
        assert!(own.contains("sh -c 'tail app.log'") && !own.contains(" logs --tail"));
        // A command that follows its logs is stopped.
        let started = std::time::Instant::now();
        let (body, _, status) = run("echo following; sleep 30", None);
        assert_eq!((body.as_str(), status), ("following", Some(TIMED_OUT)));
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    fn dir(root: &std::path::Path) -> AppDir {
        AppDir {
            deploy_root: root.to_str().unwrap().to_string(),
            client: "alpha".into(),
            app: "whoami".into(),
        }
    }

    use crate::remote::shell::{sh, sh_with};

    #[test]
    fn upload_switch_inspect_prune_on_a_real_shell() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path());
        let mut revs = Vec::new();
        for i in 0..7 {
            let rev = format!("{i:040x}");
            let files = vec![
                ReleaseFile::new("compose.yaml".into(), format!("v{i}\n").into_bytes(), false),
                ReleaseFile::new(
                    "conf/app.env".into(),
                    b"TOKEN=s3cr'et $(x)\n".to_vec(),
                    true,
                ),
            ];
            let out = sh(&upload_script(&d, &rev, &files));
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let state = State {
                rev: rev.clone(),
                files: files
                    .iter()
                    .map(|f| (f.path.clone(), f.sha256.clone()))
                    .collect(),
                deployed_at: "2026-11-23T00:00:00Z".into(),
                previous: revs.last().cloned(),
                history: revs.clone(),
                revs: Vec::new(),
                slot: None,
            };
            assert!(sh(&switch_script(&d, &rev, &state)).status.success());
            let keep: Vec<&str> = [Some(rev.as_str()), revs.last().map(String::as_str)]
                .into_iter()
                .flatten()
                .collect();
            assert!(sh(&prune_script(&d, &keep)).status.success());
            revs.push(rev);
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        let release = tmp.path().join("alpha/whoami/current");
        assert_eq!(
            std::fs::read_to_string(release.join("compose.yaml")).unwrap(),
            "v6\n"
        );
        assert_eq!(
            std::fs::read_to_string(release.join("conf/app.env")).unwrap(),
            "TOKEN=s3cr'et $(x)\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(release.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!((mode("compose.yaml"), mode("conf/app.env")), (0o644, 0o600));

        let out = sh(&inspect_script(&[&d]));
        let inspected = parse_inspect(&String::from_utf8(out.stdout).unwrap()).unwrap();
        let app = &inspected["whoami"];
        assert_eq!(app.state.as_ref().unwrap().rev, revs[6]);
        assert_eq!(
            app.state.as_ref().unwrap().previous.as_deref(),
            Some(revs[5].as_str())
        );
        assert_eq!(
            app.sums.keys().collect::<Vec<_>>(),
            ["compose.yaml", "conf/app.env"]
        );
        assert_eq!(app.releases.len(), KEEP_RELEASES, "{:?}", app.releases);
        assert!(app.releases.contains(&revs[6]) && app.releases.contains(&revs[5]));

        // A corrupted upload never becomes a release.
        let mut bad = ReleaseFile::new("x".into(), b"a".to_vec(), false);
        bad.sha256 = "0".repeat(64);
        let out = sh(&upload_script(&d, &"f".repeat(40), &[bad]));
        assert!(!out.status.success());
        assert!(
            !tmp.path()
                .join("alpha/whoami/releases")
                .join("f".repeat(40))
                .exists()
        );
    }

    #[test]
    fn state_names_releases_and_revs_the_commits_an_app_ran() {
        // Written before `revs` existed: the release is the commit.
        let old: State = serde_json::from_str(
            r#"{"rev":"b","files":{},"deployed_at":"t","previous":"a","history":["a"]}"#,
        )
        .unwrap();
        assert_eq!((old.runs(), old.previous_run()), ("b", Some("a")));
        assert_eq!(old.ran_then("c"), ["a", "b", "c"]);
        assert_eq!(old.ran_then("b"), ["a", "b"], "a re-run adds nothing");
        // Left on release a through eleven later commits: the oldest drop out.
        let mut kept = State {
            rev: "a".into(),
            revs: vec!["a".into()],
            ..old
        };
        for i in 0..11 {
            kept.revs = kept.ran_then(&format!("c{i}"));
        }
        assert_eq!(kept.revs.len(), KEEP_REVS);
        assert_eq!((kept.runs(), kept.previous_run()), ("c10", Some("c9")));
        assert!(
            !serde_json::to_string(&State {
                revs: Vec::new(),
                ..kept
            })
            .unwrap()
            .contains("revs")
        );

        let out = "@@app web\n@@state\n\n@@current\nreleases/a\n\n@@started\na\n";
        assert_eq!(
            parse_inspect(out).unwrap()["web"].current.as_deref(),
            Some("a")
        );
    }

    #[test]
    fn start_scripts() {
        let d = AppDir {
            deploy_root: "/opt/fleetgate".into(),
            client: "alpha".into(),
            app: "whoami".into(),
        };
        let compose = Start::Compose {
            command: "docker compose".into(),
            project: "alpha-whoami".into(),
        };
        assert!(
            start_script(&d, "abc", &compose, None).contains(
                "cd /opt/fleetgate/alpha/whoami/releases/abc\ndocker compose -p alpha-whoami up -d --remove-orphans\n"
            )
        );
        let cmd = Start::Command {
            start: "./start.sh".into(),
            stop: Some("./stop.sh".into()),
        };
        let s = start_script(&d, "new", &cmd, Some("old"));
        assert!(
            s.contains("cd /opt/fleetgate/alpha/whoami/releases/old && ./stop.sh"),
            "{s}"
        );
        assert!(
            s.contains("cd /opt/fleetgate/alpha/whoami/releases/new\n( ./start.sh\n)\n"),
            "{s}"
        );
    }

    #[test]
    fn a_staged_switch_moves_link_and_state_and_inspect_hashes_only_what_may_be_live() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path());
        let app = tmp.path().join("alpha/whoami");
        let files_of = |i: usize| {
            vec![
                ReleaseFile::new("app.conf".into(), format!("v{i}\n").into_bytes(), false),
                ReleaseFile::new("conf/app.env".into(), b"TOKEN=s3cr'et\n".to_vec(), true),
                // A path no ustar header holds: one file at a time.
                ReleaseFile::new(format!("{}/x", "d".repeat(120)), b"long\n".to_vec(), false),
            ]
        };
        for i in 0..3 {
            let rev = format!("{i:040x}");
            let files = if i == 1 {
                files_of(i)
            } else {
                files_of(i)[..2].to_vec()
            };
            let state = deploy_staged(&d, &rev, &files);
            // `current` is the relative link a plain switch makes.
            assert_eq!(
                std::fs::read_link(app.join("current")).unwrap(),
                std::path::PathBuf::from(format!("releases/{rev}"))
            );
            let written: State =
                serde_json::from_str(&std::fs::read_to_string(app.join("state.json")).unwrap())
                    .unwrap();
            assert_eq!(written, state);
            assert_eq!(
                std::fs::read_dir(app.join("releases/.next"))
                    .unwrap()
                    .count(),
                0
            );
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &str| {
                std::fs::metadata(app.join("current").join(p))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!((mode("app.conf"), mode("conf/app.env")), (0o644, 0o600));
            assert_eq!(mode("conf"), 0o750);
        }
        let live = files_of(2)[..2].to_vec();
        let inspect = |desired: &[ReleaseFile]| {
            let out = sh(&inspect_for_deploy_script(&[(&d, Some(desired))]));
            parse_inspect(&String::from_utf8(out.stdout).unwrap()).unwrap()["whoami"].clone()
        };
        // The files its state records: hashed, and they are the live ones.
        let now = inspect(&live);
        assert!(!now.unhashed);
        assert_eq!(now.sums, expected_sums(&live));
        // Other files: not hashed (nothing runs to learn what is there).
        let now = inspect(&files_of(3)[..2]);
        assert!(now.unhashed);
        assert!(now.sums.is_empty());
        assert_eq!(now.current.as_deref(), Some(format!("{:040x}", 2).as_str()));
        // A hand edit of a live file shows: hashed, and not the same.
        std::fs::write(app.join("current/app.conf"), "edited\n").unwrap();
        let now = inspect(&live);
        assert!(!now.unhashed);
        assert_ne!(now.sums, expected_sums(&live));
        // The repair: the same release again, unpacked beside the live one
        // and swapped in; nothing of the swap is left.
        deploy_staged(&d, &format!("{:040x}", 2), &live);
        assert_eq!(
            std::fs::read_to_string(app.join("current/app.conf")).unwrap(),
            "v2\n"
        );
        assert_eq!(inspect(&live).sums, expected_sums(&live));
        let mut left: Vec<String> = std::fs::read_dir(app.join("releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        left.sort();
        assert_eq!(left, [".next"]);
        // An upload that fails on the host leaves nothing of itself behind,
        // neither the release nor a staged link: one whose files fail the
        // check, one whose archive does not unpack (as a full disk would).
        let mut bad = ReleaseFile::new("x".into(), b"a".to_vec(), false);
        bad.sha256 = "0".repeat(64);
        let out = sh(&upload_staged_script(&d, &"e".repeat(40), &[bad]));
        assert!(!out.status.success());
        // Which file failed is in its words.
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("x: FAILED"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // (The archive cut inside a file's data: the release directory and
        // a file are made, then tar fails.)
        let unpacking = upload_staged_script(&d, &"e".repeat(40), &live);
        let format = unpacking.find("PATH= printf '").unwrap() + "PATH= printf '".len();
        let end = format + unpacking[format..].find("' | tar -x").unwrap();
        // Just after the first byte of the first file's data ("v2\n").
        let cut = format + unpacking[format..end].find("v2\n").unwrap() + 1;
        let broken = format!("{}{}", &unpacking[..cut], &unpacking[end..]);
        let out = sh(&broken);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Unexpected EOF"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!app.join("releases").join("e".repeat(40)).exists());
        assert!(
            std::fs::symlink_metadata(app.join("releases/.next/current")).is_err(),
            "no staged link left"
        );
        assert_eq!(
            std::fs::read_link(app.join("current")).unwrap(),
            std::path::PathBuf::from(format!("releases/{:040x}", 2)),
            "the live release untouched"
        );
        // A state a rollback wrote records no files: hashed, as it may be live.
        let mut state: State =
            serde_json::from_str(&std::fs::read_to_string(app.join("state.json")).unwrap())
                .unwrap();
        state.files.clear();
        std::fs::write(
            app.join("state.json"),
            serde_json::to_string(&state).unwrap() + "\n",
        )
        .unwrap();
        let now = inspect(&live);
        assert!(!now.unhashed);
        assert_eq!(now.sums, expected_sums(&live));
    }

    #[test]
    fn an_upload_writes_every_byte_as_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path());
        let app = tmp.path().join("alpha/whoami");
        // Every byte value; what printf and the shell read specially (`%`,
        // `\`, `'`, a digit after an escaped byte, `$(…)`); text that is
        // not UTF-8; an empty file.
        let mut every: Vec<u8> = (0..=255u8).collect();
        every.extend_from_slice(b"\x005%d%%s\\0\\n\\\\'x'\x007`id`\xff\xfe\n");
        every.extend_from_slice(format!("$(touch {}/pwned)", tmp.path().display()).as_bytes());
        let text = "name = caf\u{e9} %s 100% \\ 'q' \"d\"\n\tend"
            .repeat(50)
            .into_bytes();
        let files = vec![
            ReleaseFile::new("every".into(), every.clone(), false),
            ReleaseFile::new("conf/text".into(), text.clone(), true),
            ReleaseFile::new("empty".into(), Vec::new(), false),
        ];
        let rev = "a".repeat(40);
        // Written by the shell's printf: no program decodes it.
        let script = upload_staged_script(&d, &rev, &files);
        assert!(script.contains("PATH= printf '") && !script.contains("base64"));
        assert!(script.is_ascii());
        // Silent when it works: a later step's failure shows its own words.
        let out = sh(&format!(
            "({})",
            upload_staged_script(&d, &"f".repeat(40), &files)
        ));
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stderr), "");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "");
        deploy_staged(&d, &rev, &files);
        let current = app.join("current");
        assert_eq!(std::fs::read(current.join("every")).unwrap(), every);
        assert_eq!(std::fs::read(current.join("conf/text")).unwrap(), text);
        assert_eq!(std::fs::read(current.join("empty")).unwrap(), b"");
        assert!(!tmp.path().join("pwned").exists());
        // The same bytes from the other shells a host's `sh` may be, and
        // their switch (BusyBox: Alpine's `sh`, `tar`, `sha256sum`, `mv`).
        for (i, shell) in [&["bash"][..], &["busybox", "sh"][..]].iter().enumerate() {
            let rev = format!("{i}").repeat(40);
            deploy_staged_with(shell, &d, &rev, &files);
            assert_eq!(
                std::fs::read_link(app.join("current")).unwrap(),
                std::path::PathBuf::from(format!("releases/{rev}")),
                "{shell:?}"
            );
            let release = app.join("releases").join(&rev);
            assert_eq!(
                std::fs::read(release.join("every")).unwrap(),
                every,
                "{shell:?}"
            );
            assert_eq!(
                std::fs::read(release.join("conf/text")).unwrap(),
                text,
                "{shell:?}"
            );
        }
        // A shell whose printf is a program (bash with its builtin off, as
        // mksh's is): refused by name, the secrets never an argument, and
        // nothing of the upload left.
        let rev = "c".repeat(40);
        let out = sh_with(
            &["bash"],
            &format!(
                "enable -n printf\n({})",
                upload_staged_script(&d, &rev, &files)
            ),
        );
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("the host's sh has no printf builtin"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!app.join("releases").join(&rev).exists());
        assert!(std::fs::symlink_metadata(app.join("releases/.next/current")).is_err());
        // Mostly binary content would grow past base64 escaped: base64.
        let mut x = 1u32;
        let binary: Vec<u8> = (0..100_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 16) as u8 | 0x80
            })
            .collect();
        let files = vec![ReleaseFile::new("blob".into(), binary.clone(), false)];
        let rev = "b".repeat(40);
        assert!(upload_staged_script(&d, &rev, &files).contains("base64 -d"));
        deploy_staged(&d, &rev, &files);
        assert_eq!(std::fs::read(current.join("blob")).unwrap(), binary);
    }

    /// A staged upload and switch of `files` as `rev`, as a deploy runs
    /// them (one script): the state it wrote.
    fn deploy_staged(d: &AppDir, rev: &str, files: &[ReleaseFile]) -> State {
        deploy_staged_with(&["sh"], d, rev, files)
    }

    /// [`deploy_staged`] with `shell` (a program and its arguments before
    /// `-s`) as the host's `sh`.
    fn deploy_staged_with(shell: &[&str], d: &AppDir, rev: &str, files: &[ReleaseFile]) -> State {
        let state = State {
            rev: rev.to_string(),
            files: expected_sums(files),
            deployed_at: "2026-11-30T00:00:00Z".into(),
            previous: None,
            history: Vec::new(),
            revs: Vec::new(),
            slot: None,
        };
        let script = upload_staged_script(d, rev, files) + &switch_staged_script(d, rev, &state);
        let out = sh_with(shell, &format!("(\n{script}\n)"));
        assert!(
            out.status.success(),
            "{shell:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        state
    }

    fn expected_sums(files: &[ReleaseFile]) -> BTreeMap<String, String> {
        files
            .iter()
            .map(|f| (f.path.clone(), f.sha256.clone()))
            .collect()
    }

    #[test]
    fn a_release_is_started_only_once_its_start_finished() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path());
        let release = tmp.path().join("alpha/whoami/releases/r1");
        std::fs::create_dir_all(&release).unwrap();
        let started = tmp.path().join("alpha/whoami/started");
        let cmd = |start: &str| Start::Command {
            start: start.into(),
            stop: None,
        };
        assert!(
            sh(&start_script(&d, "r1", &cmd("exit 0"), None))
                .status
                .success()
        );
        assert_eq!(std::fs::read_to_string(&started).unwrap(), "r1\n");
        // A failing start leaves the marker empty (emptied, not removed:
        // no `rm` to run), which reads as not started: the next deploy
        // starts it again.
        assert!(
            !sh(&start_script(&d, "r1", &cmd("exit 3"), None))
                .status
                .success()
        );
        assert_eq!(std::fs::read_to_string(&started).unwrap(), "");
        let out = sh(&inspect_script(&[&d]));
        let inspected = parse_inspect(&String::from_utf8(out.stdout).unwrap()).unwrap();
        assert_eq!(inspected["whoami"].started, None);
    }

    #[test]
    fn teardown_stops_a_first_deploy_and_leaves_nothing_live() {
        let tmp = tempfile::tempdir().unwrap();
        // A deploy root that only survives quoting.
        let root = tmp.path().join("it's $(here)");
        let d = dir(&root);
        let app = root.join("alpha/whoami");
        let live = |rev: &str| {
            std::fs::create_dir_all(app.join("releases").join(rev)).unwrap();
            let _ = std::fs::remove_file(app.join("current"));
            std::os::unix::fs::symlink(format!("releases/{rev}"), app.join("current")).unwrap();
            std::fs::write(app.join("state.json"), "{}").unwrap();
        };
        let gone = || !app.join("current").exists() && !app.join("state.json").exists();

        // Compose: `down` in the live release, for its project.
        live("r1");
        let compose = Start::Compose {
            command: "sh -c 'echo \"$@\" > ../../down' sh".into(),
            project: "alpha-whoami".into(),
        };
        let out = sh(&teardown_script(&d, &compose, None));
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read_to_string(app.join("down")).unwrap(),
            "-p alpha-whoami down\n"
        );
        assert!(gone());
        assert!(app.join("releases/r1").is_dir(), "releases stay for prune");

        // Command: its stop runs in the live release; a failing stop does
        // not keep the failed release live.
        let cmd = Start::Command {
            start: "./start.sh".into(),
            stop: None,
        };
        live("r2");
        let out = sh(&teardown_script(&d, &cmd, Some("pwd -P > ../../stopped")));
        assert!(out.status.success(), "{out:?}");
        assert!(
            std::fs::read_to_string(app.join("stopped"))
                .unwrap()
                .trim_end()
                .ends_with("releases/r2")
        );
        assert!(gone());
        live("r3");
        assert!(
            sh(&teardown_script(&d, &cmd, Some("exit 7")))
                .status
                .success()
        );
        assert!(gone());

        // Nothing to stop and nothing there: still done.
        assert!(sh(&teardown_script(&d, &cmd, None)).status.success());
        assert!(gone());
    }
}

/// Runs several scripts in one remote command, each in a subshell; a marker
/// line `@@<nonce> <i> begin <t>`, `@@<nonce> <i> done <t>` or
/// `@@<nonce> <i> fail <code> <t>` on stdout says where it is, so progress
/// streams while the host works and one round trip does it all. `<t>` is
/// the host's monotonic clock in seconds (`/proc/uptime`, read with the
/// `read` builtin: no program runs; `date +%s.%N` where there is no /proc;
/// empty when neither tells), so a step's time is measured on the host,
/// not from when its markers arrive. Stops at the first failing script.
pub fn steps_script(nonce: &str, scripts: &[&str]) -> String {
    let nonce = quote(nonce);
    let mut s = String::from(
        "fg_now() { fg_t=; if [ -r /proc/uptime ]; then read -r fg_t fg_idle < /proc/uptime || fg_t=; else fg_t=$(date +%s.%N 2>/dev/null) || fg_t=; fi; case $fg_t in *[!0-9.]*) fg_t= ;; esac; }\n",
    );
    for (i, script) in scripts.iter().enumerate() {
        let _ = writeln!(s, "fg_now; echo @@{nonce} {i} begin \"$fg_t\"");
        // Not `( … ) || …`: inside an `||` list the shell ignores `set -e`,
        // so a failing line would not stop the script.
        let _ = writeln!(
            s,
            "(\n{script}\n)\nrc=$?\nfg_now\nif [ $rc -ne 0 ]; then echo @@{nonce} {i} fail \"$rc\" \"$fg_t\"; exit $rc; fi"
        );
        let _ = writeln!(s, "echo @@{nonce} {i} done \"$fg_t\"");
    }
    s
}

/// A marker printed by [`steps_script`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEvent {
    Begin(usize),
    Done(usize),
    Fail(usize),
}

/// A marker of [`steps_script`]: its event, and the host's monotonic clock
/// when it was printed (seconds; `None` when the host gave none).
pub fn parse_step_marker(nonce: &str, line: &str) -> Option<(StepEvent, Option<f64>)> {
    let rest = line
        .strip_prefix("@@")?
        .strip_prefix(nonce)?
        .strip_prefix(' ')?;
    let mut parts = rest.split_whitespace();
    let i: usize = parts.next()?.parse().ok()?;
    let event = match parts.next()? {
        "begin" => StepEvent::Begin(i),
        "done" => StepEvent::Done(i),
        "fail" => {
            parts.next()?;
            StepEvent::Fail(i)
        }
        _ => return None,
    };
    let at = parts
        .next()
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t >= 0.0);
    Some((event, at))
}

#[cfg(test)]
mod steps_tests {
    use super::*;

    #[test]
    fn markers_stream_and_stop_at_the_first_failure() {
        // The second script fails on a middle line under `set -e`.
        let script = steps_script(
            "n1",
            &[
                "echo one",
                "set -e\necho two\nfalse\necho after",
                "echo three",
            ],
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(!stdout.contains("after"), "{stdout}");
        let events: Vec<StepEvent> = stdout
            .lines()
            .filter_map(|l| parse_step_marker("n1", l))
            .map(|(e, at)| {
                assert!(at.is_some(), "a host timestamp on every marker: {stdout}");
                e
            })
            .collect();
        assert_eq!(
            events,
            [
                StepEvent::Begin(0),
                StepEvent::Done(0),
                StepEvent::Begin(1),
                StepEvent::Fail(1)
            ]
        );
        assert_eq!(
            parse_step_marker("n1", "@@n2 0 begin"),
            None,
            "another nonce is app output"
        );
    }

    #[test]
    fn markers_carry_the_host_clock_when_it_gives_one() {
        assert_eq!(
            parse_step_marker("n1", "@@n1 2 begin 1234.56"),
            Some((StepEvent::Begin(2), Some(1234.56)))
        );
        assert_eq!(
            parse_step_marker("n1", "@@n1 2 done 1234.86"),
            Some((StepEvent::Done(2), Some(1234.86)))
        );
        assert_eq!(
            parse_step_marker("n1", "@@n1 3 fail 7 99.5"),
            Some((StepEvent::Fail(3), Some(99.5)))
        );
        // A host without a clock: the markers still count, without a time.
        assert_eq!(
            parse_step_marker("n1", "@@n1 0 begin "),
            Some((StepEvent::Begin(0), None))
        );
        assert_eq!(
            parse_step_marker("n1", "@@n1 0 fail 1 "),
            Some((StepEvent::Fail(0), None))
        );
        assert_eq!(
            parse_step_marker("n1", "@@n1 0 done x"),
            Some((StepEvent::Done(0), None))
        );
        assert_eq!(parse_step_marker("n1", "@@n1 0 fail"), None);
        assert_eq!(parse_step_marker("n1", "@@n1 0 start 1.0"), None);
    }
}

/// What a host carries under one deploy root, as [`listing_script`] prints
/// it: each client dir, its app dirs, and the rev each app's `state.json`
/// says is live (`None`: no state, or not fleetgate's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub clients: BTreeMap<String, BTreeMap<String, Option<String>>>,
}

/// What a host keeps under its deploy root that the repo does not put
/// there: an app dir of an app its client no longer has, or the dir of a
/// client that is not (or no longer) on the host (`app: None` when it holds
/// no app dir).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Orphan {
    pub client: String,
    pub app: Option<String>,
    pub current_rev: Option<String>,
}

/// A script that lists `deploy_root`'s client dirs, their app dirs, and
/// each app's `state.json` on one line. Hidden dirs are not listed.
pub fn listing_script(deploy_root: &str) -> String {
    format!(
        r#"set -u
root={}
[ -d "$root" ] || exit 0
for c in "$root"/*/; do
  [ -d "$c" ] || continue
  c=${{c%/}}
  printf '@@client %s\n' "${{c##*/}}"
  for a in "$c"/*/; do
    [ -d "$a" ] || continue
    a=${{a%/}}
    printf '@@app %s\n' "${{a##*/}}"
    if [ -f "$a/state.json" ]; then tr '\n' ' ' < "$a/state.json"; fi
    echo
  done
done
"#,
        quote(deploy_root)
    )
}

/// Parses what [`listing_script`] printed.
pub fn parse_listing(out: &str) -> Result<Listing, String> {
    let mut listing = Listing::default();
    let mut client: Option<String> = None;
    let mut app: Option<String> = None;
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("@@client ") {
            listing.clients.entry(name.to_string()).or_default();
            (client, app) = (Some(name.to_string()), None);
        } else if let Some(name) = line.strip_prefix("@@app ") {
            let c = client
                .as_ref()
                .ok_or_else(|| format!("an app dir before any client dir: {line:?}"))?;
            listing
                .clients
                .get_mut(c)
                .expect("inserted above")
                .insert(name.to_string(), None);
            app = Some(name.to_string());
        } else if let (Some(c), Some(a)) = (&client, app.take()) {
            // The state line right after its app; an unreadable state still
            // leaves the dir listed.
            let rev = serde_json::from_str::<State>(line).ok().map(|s| s.rev);
            listing
                .clients
                .get_mut(c)
                .expect("inserted above")
                .insert(a, rev);
        } else if !line.trim().is_empty() {
            return Err(format!(
                "unexpected line in the deploy root listing: {line:?}"
            ));
        }
    }
    Ok(listing)
}

impl Listing {
    /// What is here that `expected` (each client the repo puts under this
    /// deploy root, with its apps) does not name.
    pub fn orphans(
        &self,
        expected: &BTreeMap<String, std::collections::BTreeSet<String>>,
    ) -> Vec<Orphan> {
        let mut out = Vec::new();
        for (client, apps) in &self.clients {
            let wanted = expected.get(client);
            if wanted.is_none() && apps.is_empty() {
                out.push(Orphan {
                    client: client.clone(),
                    app: None,
                    current_rev: None,
                });
            }
            for (app, rev) in apps {
                if !wanted.is_some_and(|w| w.contains(app)) {
                    out.push(Orphan {
                        client: client.clone(),
                        app: Some(app.clone()),
                        current_rev: rev.clone(),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod listing_tests {
    use super::*;

    #[test]
    fn parse_and_compare() {
        let state = |rev: &str| {
            format!(
                r#"{{"rev": "{rev}", "files": {{}}, "deployed_at": "2026-11-23T00:00:00Z", "previous": null}}"#
            )
        };
        let out = format!(
            "@@client alpha\n@@app web\n{}\n@@app old\n{}\n@@client beta\n@@app web\n{}\n@@client gone\n@@app api\n\n@@client empty\n@@client ours\n@@app web\nnot json\n",
            state("a1"),
            state("a0"),
            state("b1")
        );
        let listing = parse_listing(&out).unwrap();
        assert_eq!(listing.clients["alpha"]["web"].as_deref(), Some("a1"));
        assert_eq!(listing.clients["gone"]["api"], None);
        assert_eq!(
            listing.clients["ours"]["web"], None,
            "not fleetgate's state"
        );
        assert!(listing.clients["empty"].is_empty());

        let expected: BTreeMap<String, std::collections::BTreeSet<String>> = [
            ("alpha", &["web"][..]),
            ("beta", &["web"]),
            ("ours", &["web"]),
        ]
        .into_iter()
        .map(|(c, apps)| (c.to_string(), apps.iter().map(|a| a.to_string()).collect()))
        .collect();
        let o = |client: &str, app: Option<&str>, rev: Option<&str>| Orphan {
            client: client.into(),
            app: app.map(Into::into),
            current_rev: rev.map(Into::into),
        };
        assert_eq!(
            listing.orphans(&expected),
            [
                o("alpha", Some("old"), Some("a0")),
                o("empty", None, None),
                o("gone", Some("api"), None),
            ]
        );
        assert_eq!(parse_listing("").unwrap(), Listing::default());
        assert!(parse_listing("@@app web\n").is_err());
        assert!(parse_listing("stray\n").is_err());
    }

    #[test]
    fn listing_on_a_real_shell() {
        let tmp = tempfile::tempdir().unwrap();
        // A deploy root whose name a shell would expand, split or run.
        let root = tmp.path().join("r o'$(touch pwned)*");
        for dir in ["alpha/web/releases/r1", "alpha/old", "stray", ".hidden/x"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(
            root.join("alpha/web/state.json"),
            "{\n  \"rev\": \"r1\",\n  \"files\": {},\n  \"deployed_at\": \"t\",\n  \"previous\": null\n}\n",
        )
        .unwrap();
        std::fs::write(root.join("alpha/file"), "not a dir").unwrap();
        let out = std::process::Command::new("sh")
            .current_dir(tmp.path())
            .arg("-c")
            .arg(listing_script(root.to_str().unwrap()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = parse_listing(&String::from_utf8(out.stdout).unwrap()).unwrap();
        assert_eq!(
            format!("{:?}", listing.clients),
            r#"{"alpha": {"old": None, "web": Some("r1")}, "stray": {}}"#
        );
        assert!(!tmp.path().join("pwned").exists());
        // A host with nothing deployed yet.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(listing_script(tmp.path().join("none").to_str().unwrap()))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            parse_listing(&String::from_utf8(out.stdout).unwrap()).unwrap(),
            Listing::default()
        );
    }
}
