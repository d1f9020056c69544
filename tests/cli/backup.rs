//! Backups before risky changes: `commands.backup` and `commands.restore`
//! with the real `restic` (Debian's) against a local repository on an sshd
//! test host. The app is `deploy.rs`'s `web`, made `rollback: freeze`, with
//! a data file in its app directory (`<app>/data`, outside the releases)
//! and a command check on it; its restic password comes from a secret,
//! rendered into a 0600 `restic.env`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::Run;
use crate::deploy::DeployFleet;
use crate::hosts::USER;

const PASSWORD: &str = "restic-pw-6c0e19d2-never-print-me";

/// The data a good release keeps; version 2's start "migrates" it badly.
const ROWS: &str = "rows: 1 2 3\n";

/// The backup of the app's data, named by restic's snapshot id.
const BACKUP: &str = r#"set -a; . ./restic.env; set +a; cd -P ../.. && restic backup --no-cache --json "$PWD/data" | sed -n 's/.*"message_type":"summary".*"snapshot_id":"\([0-9a-f]*\)".*/FLEETGATE_BACKUP_ID=\1/p'"#;

/// Puts the backup's data file back (`restic dump`, then a rename).
const RESTORE: &str = r#"set -a; . ./restic.env; set +a; cd -P ../.. && restic dump --no-cache "$FLEETGATE_BACKUP_ID" "$PWD/data" > data.restoring && mv data.restoring data"#;

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Client `alpha` in production (approvers: alice), `web` frozen and
/// backed up into `repo`, a restic repository the hosts' user owns.
fn fleet() -> (DeployFleet, PathBuf) {
    crate::leakscan::secret("the restic repository's password", PASSWORD);
    let d = DeployFleet::new(
        &[("alpha", "production", &["alpha-1"])],
        "    approval:\n      required: true\n      approvers: [alice]\n",
    );
    let repo = d.hosts.dir.join("restic");
    sh(Command::new("restic")
        .args(["init", "--no-cache", "--quiet", "-r"])
        .arg(&repo)
        .env("RESTIC_PASSWORD", PASSWORD));
    sh(Command::new("chown").args(["-R", USER]).arg(&repo));
    d.fleet.write(
        "secrets/.sops.yaml",
        &std::fs::read_to_string(crate::common::source_root().join("secrets/.sops.yaml")).unwrap(),
    );
    d.fleet.sops_encrypt(
        "secrets/clients/alpha.sops.yaml",
        &format!("restic_password: {PASSWORD}\n"),
    );
    d.fleet.write(
        "pipelines/apps/web/restic.env.j2",
        &format!(
            "RESTIC_REPOSITORY={}\nRESTIC_PASSWORD={{{{ secrets.restic_password }}}}\n",
            repo.display()
        ),
    );
    d.fleet
        .edit(
            "pipelines/apps/web/app.yaml",
            "rollback: safe",
            "rollback: freeze",
        )
        .edit(
            "pipelines/apps/web/app.yaml",
            "files:\n",
            "secrets: [restic_password]\nfiles:\n  restic.env: restic.env.j2\n",
        )
        .edit(
            "pipelines/apps/web/app.yaml",
            "commands:\n",
            &format!(
                "commands:\n  backup: {}\n  restore: {}\n",
                yaml_string(BACKUP),
                yaml_string(RESTORE)
            ),
        )
        .edit(
            "pipelines/apps/web/app.yaml",
            "  - command: \"test -s health\"\n",
            "  - command: \"test -s health\"\n  - command: \"grep -q 'rows: 1 2 3' ../../data\"\n",
        )
        .edit(
            "pipelines/apps/web/start.sh.j2",
            "pid=../../web.pid",
            "[ -f ../../data ] || printf 'rows: 1 2 3\\n' > ../../data\n{% if client.vars.version == \"2\" %}printf 'rows: migrated badly\\n' > ../../data\n{% endif %}pid=../../web.pid",
        );
    d.fleet
        .commit("web keeps data: frozen, backed up with restic");
    (d, repo)
}

/// A YAML double-quoted string.
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn app_dir(d: &DeployFleet) -> PathBuf {
    d.hosts.host("alpha-1").deploy_root.join("alpha/web")
}

fn data(d: &DeployFleet) -> String {
    std::fs::read_to_string(app_dir(d).join("data")).unwrap()
}

fn releases(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn fleetgate(d: &DeployFleet, args: &[&str]) -> Run {
    let key = d.hosts.client_key.to_str().unwrap().to_string();
    d.fleet.run_env(args, &[("FLEETGATE_SSH_KEY", &key)])
}

fn record(d: &DeployFleet) -> serde_json::Value {
    serde_json::from_str(
        &d.fleet
            .git(&["notes", "--ref", "fleetgate", "show", "HEAD"]),
    )
    .unwrap()
}

fn no_password(run: &Run) {
    assert!(!run.all().contains(PASSWORD), "{}", run.all());
}

#[test]
fn a_frozen_app_is_backed_up_before_its_change_and_restored_by_hand() {
    let (d, _repo) = fleet();
    // The first deploy: nothing live yet, nothing to back up.
    let first = d.deploy("production");
    first.code(0);
    assert!(first.json()["hosts"][0].get("backups").is_none());
    assert_eq!(data(&d), ROWS);
    let env = app_dir(&d).join("current/restic.env");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&env).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the password's file");

    // Version 2 migrates the data badly and fails its gate: frozen.
    d.set("alpha", "version", "\"2\"");
    d.fleet.commit("web 2: a migration");
    let out = fleetgate(&d, &["deploy", "--stage", "production", "--rev", "HEAD"]);
    out.code(1);
    no_password(&out);
    assert_eq!(data(&d), "rows: migrated badly\n");
    let host = &record(&d)["stages"]["production"]["hosts"][0];
    assert_eq!(host["frozen"], serde_json::json!(["web"]), "{host:#}");
    let id = host["backups"]["web"]["id"]
        .as_str()
        .expect("a backup id")
        .to_string();
    // restic 0.14's summary names the snapshot by its short id.
    assert!(
        id.len() >= 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let command =
        format!("fleetgate restore --client alpha --app web --host alpha-1 --backup {id}");
    assert_eq!(host["backups"]["web"]["restore"], command.as_str());
    assert!(
        out.stdout.contains(&format!(
            "RESTORE: backup {id} was taken before alpha/web@alpha-1 changed; to put its data back (approval as for production): {command}"
        )),
        "{}",
        out.stdout
    );
    let steps: Vec<&str> = host["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["app"] == "web")
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps[..2], ["backup", "upload"], "{steps:?}");

    // Damaged further by hand; restore needs production's approval.
    std::fs::write(app_dir(&d).join("data"), "garbage\n").unwrap();
    let restore = |by: Option<&str>| {
        let mut args = vec!["restore", "--client", "alpha", "--app", "web"];
        if let Some(by) = by {
            args.extend(["--approved-by", by]);
        }
        fleetgate(&d, &args)
    };
    restore(None).code(4);
    restore(Some("mallory")).code(1);
    assert_eq!(data(&d), "garbage\n", "nothing restored without approval");
    // The newest backup in the records, by default.
    let out = restore(Some("alice"));
    no_password(&out);
    out.code(0);
    assert!(
        out.stderr
            .contains(&format!("restoring `web` on `alpha-1` from backup {id}")),
        "{}",
        out.stderr
    );
    assert_eq!(data(&d), ROWS, "the data from before the change");

    // An id named by hand; one that is not restic's fails the host at `restore`.
    std::fs::write(app_dir(&d).join("data"), "garbage\n").unwrap();
    fleetgate(
        &d,
        &[
            "restore",
            "--client",
            "alpha",
            "--app",
            "web",
            "--backup",
            &id,
            "--approved-by",
            "alice",
        ],
    )
    .code(0);
    assert_eq!(data(&d), ROWS);
    let out = fleetgate(
        &d,
        &[
            "restore",
            "--client",
            "alpha",
            "--app",
            "web",
            "--backup",
            "deadbeef",
            "--approved-by",
            "alice",
            "--format",
            "json",
        ],
    );
    out.code(1);
    assert_eq!(out.json()["hosts"][0]["failure"]["step"], "restore");
    // Usage: a snapshot is a server's, not an app's.
    fleetgate(
        &d,
        &[
            "restore",
            "--client",
            "alpha",
            "--app",
            "web",
            "--snapshot",
            "7",
            "--approved-by",
            "alice",
        ],
    )
    .code(2);
}

#[test]
fn a_backup_that_fails_stops_the_host_before_anything_changes() {
    let (d, repo) = fleet();
    d.deploy("production").code(0);
    let before = releases(&app_dir(&d));
    let state = d.state("alpha-1", "alpha");
    // The repository is gone: restic fails, and prints no id.
    std::fs::remove_dir_all(&repo).unwrap();
    d.set("alpha", "version", "\"3\"");
    d.fleet.commit("web 3");
    let out = d.deploy("production");
    out.code(1);
    no_password(&out);
    let host = &out.json()["hosts"][0];
    assert_eq!(host["status"], "failed");
    assert_eq!(host["failure"]["step"], "backup", "{host:#}");
    assert_eq!(host["failure"]["app"], "web");
    assert!(host.get("backups").is_none());
    // Untouched: nothing uploaded, the same release live, the data as it was.
    assert_eq!(releases(&app_dir(&d)), before);
    assert_eq!(d.state("alpha-1", "alpha"), state);
    assert_eq!(data(&d), ROWS);
    assert!(d.serving("alpha-1").unwrap().contains("version=1"));
}
