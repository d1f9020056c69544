//! Real SSH hosts for tests: one `sshd` per host on loopback, with its own host
//! key, key-only auth as the `fleetgate-test` user (clean HOME, /bin/sh: no rc
//! files run per command), and its own deploy root. `scripts/setup.sh`
//! installs sshd and creates the user.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::common::free_port;

pub const USER: &str = "fleetgate-test";

pub struct TestHost {
    pub name: String,
    pub port: u16,
    pub deploy_root: PathBuf,
    pub host_key_pub: String,
    child: Option<Child>,
}

pub struct TestHosts {
    _tmp: TempDir,
    pub dir: PathBuf,
    pub hosts: Vec<TestHost>,
    pub client_key: PathBuf,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn uid_gid() -> (u32, u32) {
    let uid = run(Command::new("id").args(["-u", USER]));
    let gid = run(Command::new("id").args(["-g", USER]));
    (uid.trim().parse().unwrap(), gid.trim().parse().unwrap())
}

impl TestHosts {
    pub fn start(names: &[&str]) -> TestHosts {
        assert!(
            Path::new("/usr/sbin/sshd").exists()
                && Command::new("id")
                    .arg(USER)
                    .output()
                    .unwrap()
                    .status
                    .success(),
            "test hosts need sshd and the {USER} user: run scripts/setup.sh"
        );
        std::fs::create_dir_all("/run/sshd").unwrap();
        let tmp = tempfile::Builder::new().prefix("fgh-").tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let client_key = dir.join("client_key");
        run(Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "fleetgate-test",
                "-f",
            ])
            .arg(&client_key));
        // The deploy key is a secret the tests hand to fleetgate (by path).
        let private = std::fs::read_to_string(&client_key).unwrap();
        for line in private.lines().filter(|l| !l.starts_with("-----")) {
            crate::leakscan::secret("the test hosts' deploy key", line);
        }
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        let (uid, gid) = uid_gid();
        let mut hosts = TestHosts {
            _tmp: tmp,
            dir: dir.clone(),
            hosts: Vec::new(),
            client_key,
        };
        for name in names {
            let hdir = dir.join(name);
            std::fs::create_dir_all(&hdir).unwrap();
            let key = hdir.join("host_key");
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key));
            let deploy_root = hdir.join("deploy");
            std::fs::create_dir_all(&deploy_root).unwrap();
            std::os::unix::fs::chown(&deploy_root, Some(uid), Some(gid)).unwrap();
            let port = free_port();
            let config = hdir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {pid}\nAuthorizedKeysFile {authorized}\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                     AllowUsers {USER}\nSubsystem sftp internal-sftp\nLogLevel ERROR\n",
                    key = key.display(),
                    pid = hdir.join("sshd.pid").display(),
                    authorized = authorized.display(),
                ),
            )
            .unwrap();
            let host_key_pub = std::fs::read_to_string(key.with_extension("pub")).unwrap();
            let mut host = TestHost {
                name: name.to_string(),
                port,
                deploy_root,
                host_key_pub: host_key_pub
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" "),
                child: None,
            };
            host.child = Some(spawn_sshd(&config, &hdir));
            hosts.hosts.push(host);
        }
        for h in &hosts.hosts {
            wait_for_port(h.port);
        }
        hosts
    }

    pub fn host(&self, name: &str) -> &TestHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no test host {name}"))
    }

    /// `pipelines/known_hosts` lines pinning every host's key by its name
    /// (fleetgate connects with `HostKeyAlias=<name>`).
    pub fn known_hosts(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("{} {}\n", h.name, h.host_key_pub))
            .collect()
    }

    /// The same keys pinned by address, the form before `HostKeyAlias`
    /// (deprecated, still accepted for static hosts).
    pub fn known_hosts_by_address(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("[127.0.0.1]:{} {}\n", h.port, h.host_key_pub))
            .collect()
    }

    /// The server is rebuilt: a new host key, same port.
    pub fn rekey(&mut self, name: &str) {
        self.stop(name);
        let hdir = self.dir.join(name);
        let key = hdir.join("host_key");
        std::fs::remove_file(&key).unwrap();
        std::fs::remove_file(key.with_extension("pub")).unwrap();
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key));
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let h = self.hosts.iter_mut().find(|h| h.name == name).unwrap();
        h.host_key_pub = public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        self.restart(name);
    }

    /// The server moves: same key, another port (its address changed).
    pub fn move_port(&mut self, name: &str) {
        self.stop(name);
        let hdir = self.dir.join(name);
        let config = hdir.join("sshd_config");
        let port = free_port();
        let h = self.hosts.iter_mut().find(|h| h.name == name).unwrap();
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace(&format!("Port {}\n", h.port), &format!("Port {port}\n"));
        std::fs::write(&config, text).unwrap();
        h.port = port;
        self.restart(name);
    }

    /// Stops one host's sshd: it becomes unreachable.
    pub fn stop(&mut self, name: &str) {
        let h = self.hosts.iter_mut().find(|h| h.name == name).unwrap();
        if let Some(mut c) = h.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The host drops off the network: its sshd and every session it
    /// serves (and what they run) are killed, so open connections break
    /// too, not only new ones.
    pub fn lose(&mut self, name: &str) {
        let h = self.hosts.iter_mut().find(|h| h.name == name).unwrap();
        if let Some(mut c) = h.child.take() {
            // Frozen first, so it accepts (and forks) no new session while
            // its sessions are killed: a client reconnecting at once must
            // find the host gone, not a session that slipped through.
            let _ = Command::new("kill")
                .args(["-STOP", &c.id().to_string()])
                .status();
            for pid in descendants(c.id()) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a lost or stopped host's sshd again, same port and key.
    pub fn restart(&mut self, name: &str) {
        let dir = self.dir.clone();
        let h = self.hosts.iter_mut().find(|h| h.name == name).unwrap();
        assert!(h.child.is_none(), "{name} is running");
        let hdir = dir.join(name);
        h.child = Some(spawn_sshd(&hdir.join("sshd_config"), &hdir));
        wait_for_port(h.port);
    }
}

/// Every process below `pid`, from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The fields after the command name, which may hold spaces.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            parent_of.push((p, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parent_of {
            if pp == parent {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

fn spawn_sshd(config: &Path, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
    Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start sshd")
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sshd on port {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        // Bare remotes and second clones live here; the temp dir goes next.
        crate::leakscan::git_records_under(&self.dir);
        // Apps the tests started on the hosts leave pid files in their app dirs.
        for h in &self.hosts {
            for pid in find_pid_files(&h.deploy_root) {
                if let Ok(text) = std::fs::read_to_string(&pid) {
                    let _ = Command::new("kill").arg(text.trim()).status();
                }
            }
        }
        for h in &mut self.hosts {
            if let Some(mut c) = h.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn find_pid_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_symlink() {
            continue;
        }
        if p.is_dir() {
            out.extend(find_pid_files(&p));
        } else if p.extension().is_some_and(|x| x == "pid") {
            out.push(p);
        }
    }
    out
}

/// GET http://127.0.0.1:port/path with the system curl-less std: the body,
/// or None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}
