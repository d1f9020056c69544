//! Podman Quadlet on a host (`runtime: quadlet`), as shell scripts built as
//! data (pure), like `release.rs`'s: validating candidate unit files with
//! Quadlet itself, installing a release's files into the app's unit
//! directory and restarting its units, the gate's `is-active` command, the
//! failed units' status and journal, and taking an app down.
//!
//! ```text
//! /etc/containers/systemd/<client>-<app>/        rootful (`systemctl`)
//! ~/.config/containers/systemd/<client>-<app>/   rootless (`systemctl --user`)
//! <deploy_root>/<client>/<app>/quadlet           the directory the live units were installed in
//! ```
//!
//! The unit directory is a copy of the live release (unit files and what
//! they reference: an `EnvironmentFile=app.env` is relative to its unit
//! file, and stays 0600), so a hand edit there is the app's drift
//! (`release::inspect_script` hashes it instead of `current`).
//!
//! Architecture Invariant: every interpolated value goes through
//! `shell::quote`; unit files travel base64-encoded in quoted
//! here-documents, never in a command line.

use std::fmt::Write;

use super::release::ReleaseFile;
use super::shell::quote;

/// Which systemd runs the app's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Rootful: the system manager, `/etc/containers/systemd`.
    System,
    /// Rootless: the login user's manager (lingering), `~/.config/containers/systemd`.
    User,
}

/// One quadlet app on one host: its scope, unit directory and units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Units {
    pub scope: Scope,
    /// The app's unit directory: absolute, or `~/…` (the login user's home).
    pub dir: String,
    /// Restarted by a change, required `active` by the gate.
    pub units: Vec<String>,
}

/// Where Quadlet reads unit files, by scope.
pub fn default_base(scope: Scope) -> &'static str {
    match scope {
        Scope::System => "/etc/containers/systemd",
        Scope::User => "~/.config/containers/systemd",
    }
}

/// The files of a release Quadlet turns into units.
pub fn is_unit_file(path: &str) -> bool {
    crate::config::validate::quadlet::UNIT_EXTENSIONS
        .iter()
        .any(|e| path.ends_with(e))
}

/// A unique marker no base64 text can contain.
const EOF: &str = "FLEETGATE_EOF";

/// Where Quadlet's generator is installed (Debian, Fedora; Arch, openSUSE).
const QUADLET_BINARIES: &str = "/usr/libexec/podman/quadlet /usr/lib/podman/quadlet";

/// Lines of Quadlet's message a rejection reports, each cut to 400 bytes.
const MESSAGE_LINES: usize = 20;

impl Units {
    /// The unit directory as a shell word (`"$HOME"/…` for `~/…`).
    pub fn dir_word(&self) -> String {
        match self.dir.strip_prefix("~/") {
            Some(rest) => format!("\"$HOME\"/{}", quote(rest)),
            None => quote(&self.dir),
        }
    }

    /// `systemctl`, or `systemctl --user`.
    pub fn systemctl(&self) -> &'static str {
        match self.scope {
            Scope::System => "systemctl",
            Scope::User => "systemctl --user",
        }
    }

    fn journalctl(&self) -> &'static str {
        match self.scope {
            Scope::System => "journalctl",
            Scope::User => "journalctl --user",
        }
    }

    /// What `systemctl --user` needs in a non-login SSH session: the
    /// user's runtime directory (its manager's bus).
    pub fn env(&self) -> &'static str {
        match self.scope {
            Scope::System => "",
            Scope::User => ": \"${XDG_RUNTIME_DIR:=/run/user/$(id -u)}\"; export XDG_RUNTIME_DIR\n",
        }
    }

    fn unit_words(&self) -> String {
        self.units
            .iter()
            .map(|u| quote(u))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Validates the candidate unit files of `app` with the host's Quadlet
    /// (`quadlet -dryrun`, `-user` for rootless) in a temp directory,
    /// before anything on the host changes: a rejection exits 1 with
    /// Quadlet's message (its last lines, the temp path cut out).
    /// Contains the unit files' contents: never log it.
    pub fn check_script(&self, app: &str, files: &[ReleaseFile]) -> String {
        use base64::Engine as _;
        let mut s = String::from("set -eu\numask 077\n");
        let _ = writeln!(
            s,
            "fg_quadlet=\nfor fg_p in {QUADLET_BINARIES}; do if [ -x \"$fg_p\" ]; then fg_quadlet=$fg_p; break; fi; done\nif [ -z \"$fg_quadlet\" ]; then echo {} >&2; exit 1; fi",
            quote(
                "Quadlet is not installed on the host (/usr/libexec/podman/quadlet): runtime quadlet needs podman 4.4 or later"
            )
        );
        s.push_str("fg_qt=$(mktemp -d)\ntrap 'rm -rf \"$fg_qt\"' EXIT\n");
        for f in files.iter().filter(|f| is_unit_file(&f.path)) {
            if let Some((parent, _)) = f.path.rsplit_once('/') {
                let _ = writeln!(s, "mkdir -p \"$fg_qt\"/{}", quote(parent));
            }
            let encoded = base64::engine::general_purpose::STANDARD.encode(&f.content);
            let _ = writeln!(s, "base64 -d > \"$fg_qt\"/{} <<'{EOF}'", quote(&f.path));
            for chunk in encoded.as_bytes().chunks(76) {
                s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
                s.push('\n');
            }
            let _ = writeln!(s, "{EOF}");
        }
        let flag = match self.scope {
            Scope::System => "",
            Scope::User => " -user",
        };
        let _ = writeln!(
            s,
            "if ! fg_out=$(QUADLET_UNIT_DIRS=\"$fg_qt\" \"$fg_quadlet\" -dryrun{flag} 2>&1 >/dev/null); then\n  echo {} >&2\n  printf '%s\\n' \"$fg_out\" | grep -v 'Loading source unit file' | sed \"s|$fg_qt/||g\" | tail -n {MESSAGE_LINES} | cut -c1-400 >&2\n  exit 1\nfi",
            quote(&format!("Quadlet rejects the unit files of {app}:"))
        );
        s
    }

    /// Installs `release` (a directory) as the app's unit directory, notes
    /// where in `marker`, reloads systemd and restarts the units: the start
    /// of a quadlet app (`release::start_script`), and of its rollback.
    pub fn install_script(&self, release: &str, marker: &str) -> String {
        let mut s = String::from(self.env());
        let _ = writeln!(s, "fg_qd={}", self.dir_word());
        // A unit file the new release no longer has: its service is
        // stopped first (after the reload systemd no longer knows it).
        let _ = writeln!(
            s,
            "if [ -d \"$fg_qd\" ]; then (cd \"$fg_qd\" && find . -type f \\( -name '*.container' -o -name '*.kube' -o -name '*.pod' \\)) | while IFS= read -r fg_f; do\n  [ -e {release}/\"$fg_f\" ] && continue\n  fg_b=${{fg_f##*/}}\n  case $fg_b in *.pod) fg_u=\"${{fg_b%.pod}}-pod.service\" ;; *.container) fg_u=\"${{fg_b%.container}}.service\" ;; *) fg_u=\"${{fg_b%.kube}}.service\" ;; esac\n  {sc} stop \"$fg_u\" || true\ndone; fi",
            release = quote(release),
            sc = self.systemctl()
        );
        let _ = writeln!(
            s,
            "mkdir -p \"${{fg_qd%/*}}\"\nrm -rf \"$fg_qd\"\ncp -a {} \"$fg_qd\"\nprintf '%s\\n' \"$fg_qd\" > {}",
            quote(release),
            quote(marker)
        );
        let _ = writeln!(
            s,
            "{sc} daemon-reload\n{sc} restart {}",
            self.unit_words(),
            sc = self.systemctl()
        );
        s
    }

    /// Takes the app down (a removal, a failed first deploy): stops its
    /// units, removes its unit directory and `marker`, reloads. Best
    /// effort; volumes and images stay.
    pub fn teardown_script(&self, marker: &str) -> String {
        let mut s = String::from(self.env());
        let _ = writeln!(
            s,
            "{sc} stop {} || true\nfg_qd={}\nrm -rf \"$fg_qd\"\nrm -f {}\n{sc} daemon-reload || true",
            self.unit_words(),
            self.dir_word(),
            quote(marker),
            sc = self.systemctl()
        );
        s
    }

    /// The gate's built-in check: every unit `active`.
    pub fn is_active_command(&self) -> String {
        format!(
            "{}{} is-active --quiet {}",
            self.env().replace('\n', "; "),
            self.systemctl(),
            self.unit_words()
        )
    }

    /// The app's last log lines when it failed: the journal of each unit
    /// that is not active (of every unit when all are: a failed check of a
    /// running app), interleaved, then their `systemctl status` — last, so
    /// the report's last lines keep it.
    pub fn logs_command(&self) -> String {
        let mut s = String::from(self.env());
        let _ = write!(
            s,
            "fg_failed=\nfor fg_u in {units}; do {sc} is-active --quiet \"$fg_u\" || fg_failed=\"$fg_failed $fg_u\"; done\n[ -n \"$fg_failed\" ] || fg_failed={all}\nfg_j=\nfor fg_u in $fg_failed; do fg_j=\"$fg_j -u $fg_u\"; done\n{jc} --no-pager --lines={lines} $fg_j\nfor fg_u in $fg_failed; do {sc} status --no-pager --lines=0 \"$fg_u\"; done",
            units = self.unit_words(),
            all = quote(&self.units.join(" ")),
            sc = self.systemctl(),
            jc = self.journalctl(),
            lines = crate::core::outcome::LOG_LINES / 2,
        );
        s
    }
}

/// What `release::inspect_script` prints for an app with a unit directory:
/// `@@quadlet`, then the hashes of the files there (`marker` names it;
/// `fg_sums` is the inspect script's).
pub fn inspect_snippet(marker: &str) -> String {
    let marker = quote(marker);
    format!(
        "if [ -f {marker} ]; then echo @@quadlet; fg_qd=; {{ read -r fg_qd < {marker}; }} 2>/dev/null || true; if [ -n \"$fg_qd\" ] && [ -d \"$fg_qd\" ]; then fg_sums \"$fg_qd\"; fi; fi"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::shell::sh;

    fn units(scope: Scope, dir: &str) -> Units {
        Units {
            scope,
            dir: dir.into(),
            units: vec!["it's-pod.service".into(), "w.service".into()],
        }
    }

    #[test]
    fn values_are_quoted_and_user_scope_finds_its_manager() {
        let system = units(Scope::System, "/etc/containers/systemd/alpha-idp");
        assert_eq!(
            system.is_active_command(),
            "systemctl is-active --quiet 'it'\\''s-pod.service' w.service"
        );
        let user = units(Scope::User, "~/.config/containers/systemd/alpha-idp");
        assert_eq!(
            user.dir_word(),
            "\"$HOME\"/.config/containers/systemd/alpha-idp"
        );
        assert_eq!(
            user.is_active_command(),
            ": \"${XDG_RUNTIME_DIR:=/run/user/$(id -u)}\"; export XDG_RUNTIME_DIR; systemctl --user is-active --quiet 'it'\\''s-pod.service' w.service"
        );
        assert!(
            user.install_script("/r", "/m")
                .contains("systemctl --user restart")
        );
        assert!(
            user.logs_command()
                .contains("journalctl --user --no-pager --lines=50")
        );
    }

    #[test]
    fn install_copies_the_release_with_its_modes_and_teardown_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let release = tmp.path().join("rel");
        std::fs::create_dir_all(release.join("sub")).unwrap();
        std::fs::write(release.join("sub/a.container"), "[Container]\n").unwrap();
        std::fs::write(release.join("a.env"), "X=1\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            release.join("a.env"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let dir = tmp.path().join("etc/containers/systemd/alpha-idp");
        let u = units(Scope::System, dir.to_str().unwrap());
        let marker = tmp.path().join("quadlet");
        // systemctl is the host's business: a stand-in on PATH records it.
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(
            bin.join("systemctl"),
            "#!/bin/sh\necho \"$@\" >> \"$LOG\"\n",
        )
        .unwrap();
        std::fs::set_permissions(
            bin.join("systemctl"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let env = format!(
            "PATH={}:$PATH LOG={}\nexport PATH LOG\n",
            bin.display(),
            tmp.path().join("log").display()
        );
        let script = u.install_script(release.to_str().unwrap(), marker.to_str().unwrap());
        let out = sh(&format!("set -eu\n{env}{script}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::metadata(dir.join("a.env"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert!(dir.join("sub/a.container").exists());
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap().trim(),
            dir.to_str().unwrap()
        );
        let log = std::fs::read_to_string(tmp.path().join("log")).unwrap();
        assert_eq!(log, "daemon-reload\nrestart it's-pod.service w.service\n");
        // The next release drops a container: its service stops before the reload.
        std::fs::remove_file(release.join("sub/a.container")).unwrap();
        std::fs::write(tmp.path().join("log"), "").unwrap();
        let out = sh(&format!("set -eu\n{env}{script}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!dir.join("sub/a.container").exists());
        let log = std::fs::read_to_string(tmp.path().join("log")).unwrap();
        assert_eq!(
            log,
            "stop a.service\ndaemon-reload\nrestart it's-pod.service w.service\n"
        );
        let out = sh(&format!(
            "set -eu\n{env}{}",
            u.teardown_script(marker.to_str().unwrap())
        ));
        assert!(out.status.success());
        assert!(!dir.exists() && !marker.exists());
        let log = std::fs::read_to_string(tmp.path().join("log")).unwrap();
        assert!(
            log.ends_with("stop it's-pod.service w.service\ndaemon-reload\n"),
            "{log}"
        );
    }

    #[test]
    fn a_host_without_quadlet_is_told_so() {
        let u = units(Scope::System, "/nowhere");
        let files = [ReleaseFile::new(
            "a.container".into(),
            b"[Container]\n".to_vec(),
            false,
        )];
        let script = u.check_script("idp", &files);
        assert!(script.contains("base64 -d > \"$fg_qt\"/a.container"));
        if !std::path::Path::new("/usr/libexec/podman/quadlet").exists() {
            let out = sh(&script);
            assert!(!out.status.success());
            assert!(String::from_utf8_lossy(&out.stderr).contains("Quadlet is not installed"));
        }
    }
}
