//! A real container runtime for tests: Debian's dockerd with its own data
//! root and socket (no bridge, no iptables: containers use the host network on
//! loopback), Debian's `docker-registry` on loopback, and images built from
//! a busybox-static rootfs, pushed there and pinned by their registry digest.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::common::free_port;

pub struct Docker {
    _tmp: TempDir,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub registry: String,
    dockerd: Child,
    _registry: Registry,
}

/// Debian's `docker-registry` on a loopback port, storing under `dir`.
pub struct Registry {
    pub addr: String,
    child: Child,
}

impl Registry {
    pub fn start_in(dir: &Path) -> Registry {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        std::fs::write(
            dir.join("registry.yml"),
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("registry").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(dir.join("registry.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("start docker-registry (scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { addr, child }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Docker {
    pub fn start() -> Docker {
        for bin in [
            "/usr/sbin/dockerd",
            "/usr/bin/docker-compose",
            "/usr/bin/docker-registry",
            "/bin/busybox",
        ] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run scripts/setup.sh"
            );
        }
        // Short: dockerd's own sockets live under the exec root.
        let tmp = tempfile::Builder::new()
            .prefix("fgd")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let dockerd = Command::new("/usr/sbin/dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--bridge=none", "--iptables=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let registry_proc = Registry::start_in(&dir);
        let registry = registry_proc.addr.clone();
        let docker = Docker {
            _tmp: tmp,
            dir,
            socket,
            registry,
            dockerd,
            _registry: registry_proc,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !docker.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not start: {}",
                std::fs::read_to_string(docker.dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The hosts' deploy user drives compose through this socket.
        std::fs::set_permissions(
            &docker.socket,
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .unwrap();
        std::fs::set_permissions(
            &docker.dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        docker
    }

    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .expect("run docker")
    }

    /// The compose command hosts run (`runtimes.compose` in pipeline.yaml).
    pub fn compose_command(&self) -> String {
        format!(
            "env DOCKER_HOST=unix://{} docker-compose",
            self.socket.display()
        )
    }

    /// Builds an image that serves `/www` with busybox httpd, `/www/image`
    /// saying `content`; pushes it and returns `registry/name:tag@sha256:…`.
    /// The local copy is removed, so a deploy must pull it by digest.
    pub fn build_and_push(&self, name: &str, tag: &str, content: &str) -> String {
        let rootfs = self.dir.join(format!("rootfs-{name}-{tag}"));
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("www")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        std::fs::write(rootfs.join("www/image"), content).unwrap();
        let reference = format!("{}/{name}:{tag}", self.registry);
        let archive = self.dir.join(format!("{name}-{tag}.tar"));
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&archive)
            .arg(".")
            .status()
            .unwrap();
        assert!(tar.success(), "tar {}", rootfs.display());
        let import = Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .args(["import", archive.to_str().unwrap(), &reference])
            .output()
            .unwrap();
        assert!(
            import.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&import.stderr)
        );
        let push = self.docker(&["push", &reference]);
        assert!(
            push.status.success(),
            "docker push: {}",
            String::from_utf8_lossy(&push.stderr)
        );
        let out = String::from_utf8_lossy(&push.stdout).into_owned();
        let digest = out
            .split_whitespace()
            .skip_while(|w| *w != "digest:")
            .nth(1)
            .unwrap_or_else(|| panic!("no digest in push output: {out}"))
            .to_string();
        assert!(self.docker(&["rmi", &reference]).status.success());
        format!("{reference}@{digest}")
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = self.docker(&args);
        }
        let _ = Command::new("kill")
            .arg(self.dockerd.id().to_string())
            .status();
        let _ = self.dockerd.wait();
    }
}
