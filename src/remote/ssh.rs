//! Running scripts on hosts. [`Remote`] is the one seam: [`SshHost`] drives
//! the system OpenSSH through the `openssh` crate (one multiplexed master per
//! host, strict host keys), [`LocalHost`] runs the same scripts with the local
//! `sh` (unit tests of the scripts, no network), and `Dropping` wraps a
//! host whose connection drops mid-script (unit tests of lost hosts).
//!
//! Host keys: a host pinned by name in `pipelines/known_hosts` is connected
//! to with `HostKeyAlias=<name>` (its own ssh_config), so ssh looks its key
//! up by name whatever the address and port; a host pinned only by address
//! (the form before issue 15) is looked up by address, as before.
//! [`keyscan`] fetches the keys a host offers, for `hosts trust`.
//!
//! Scripts travel on the remote `sh -s`'s stdin, never in a command line, so
//! file contents and secrets are not visible in process lists. One such
//! shell stays open per host and runs every script of a deploy, each in a
//! subshell ([`Shell`]): one SSH session per host, not one per script.

use std::path::{Path, PathBuf};
#[cfg(test)]
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::config::Host;

/// What a script printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOutput {
    /// Exit status; `None` when killed by a signal.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl RemoteOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// The last lines of stderr (or stdout when stderr is empty), for messages.
    pub fn tail(&self) -> String {
        self.tail_without("\0")
    }

    /// Like [`RemoteOutput::tail`], leaving out fleetgate's own marker lines
    /// (those containing `marker`).
    pub fn tail_without(&self, marker: &str) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text
            .trim_end()
            .lines()
            .filter(|l| !l.contains(marker))
            .collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

/// Why a host could not run a script at all.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    #[error("connect to {host} ({address}): {message}")]
    Connect {
        host: String,
        address: String,
        message: String,
        hint: &'static str,
    },
    #[error("run a command on {host}: {message}")]
    Run { host: String, message: String },
    #[error("a command on {host} did not finish within {seconds}s")]
    Timeout { host: String, seconds: u64 },
}

/// A host that runs shell scripts.
pub trait Remote: Send + Sync {
    /// Runs `script` with `sh -s`, handing each stdout line to `on_line` as
    /// it arrives (for progress), and returns everything it printed.
    fn run_lines(
        &self,
        script: &str,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> impl Future<Output = Result<RemoteOutput, RemoteError>> + Send;

    fn run(&self, script: &str) -> impl Future<Output = Result<RemoteOutput, RemoteError>> + Send {
        async move { self.run_lines(script, &mut |_| {}).await }
    }
}

/// One `sh -s` kept open on a host for every script fleetgate runs there:
/// one SSH session per host instead of one per script (each session costs
/// the host a channel, a login shell and a `sh`). Each script runs in a
/// subshell of it, stdin from `/dev/null` (a command that reads stdin must
/// not eat the scripts after it), followed by an end marker on stdout
/// (with the subshell's exit status) and one on stderr: a line holding
/// `marker`, a random token no script prints. The script is quoted and
/// `eval`ed in the subshell, so a syntax error fails it (status 2) and the
/// shell goes on. A shell that ends before its markers (killed, or its
/// connection gone) shows as [`Ran::Ended`]: the caller takes the exit
/// status from the session. Output a script leaves running in the
/// background (a job that keeps its stdout) reaches the next script's.
pub(crate) struct Shell {
    stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    stdout: tokio::io::BufReader<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>>,
    stderr: tokio::io::BufReader<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>>,
    marker: String,
}

/// How a script on a [`Shell`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ran {
    /// Both end markers arrived: the shell is ready for the next script.
    Done {
        status: Option<i32>,
        stdout: String,
        stderr: String,
    },
    /// The shell ended before its markers (the script ended it, or the
    /// connection went): what it printed until then.
    Ended { stdout: String, stderr: String },
}

impl Shell {
    pub(crate) fn new(
        stdin: impl tokio::io::AsyncWrite + Send + 'static,
        stdout: impl tokio::io::AsyncRead + Send + 'static,
        stderr: impl tokio::io::AsyncRead + Send + 'static,
    ) -> Shell {
        Shell {
            stdin: Box::pin(stdin),
            stdout: tokio::io::BufReader::new(Box::pin(stdout)),
            stderr: tokio::io::BufReader::new(Box::pin(stderr)),
            marker: format!(
                "@@fgend-{:x}-{:x}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ),
        }
    }

    /// Runs `script` in a subshell, handing each stdout line to `on_line`.
    pub(crate) async fn run(
        &mut self,
        script: &str,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> std::io::Result<Ran> {
        let marker = self.marker.as_str();
        // Quoted and `eval`ed: whatever the script holds (an unclosed quote
        // or here-document in an operator's command), the shell reads the
        // whole of it and the markers; a syntax error fails the subshell
        // (status 2), not the shell's reading of the scripts after it.
        let wrapped = format!(
            "(eval {}) </dev/null\nprintf '%s %s\\n' {marker} \"$?\"\nprintf '%s\\n' {marker} >&2\n",
            super::shell::quote(script)
        );
        let stdin = &mut self.stdin;
        let feed = async {
            stdin.write_all(wrapped.as_bytes()).await?;
            stdin.flush().await
        };
        let mut ignore = |_: &str| {};
        let read_out = read_to_marker(&mut self.stdout, marker, on_line);
        let read_err = read_to_marker(&mut self.stderr, marker, &mut ignore);
        let (fed, out, err) = tokio::join!(feed, read_out, read_err);
        let ((stdout, end), (stderr, err_end)) = (out?, err?);
        match end {
            Some(end) if err_end.is_some() => Ok(Ran::Done {
                status: end.trim().parse::<i32>().ok(),
                stdout,
                stderr,
            }),
            // A shell that ended early closed its stdin: how it ended says
            // why, not the failed write.
            _ => {
                let _ = fed;
                Ok(Ran::Ended { stdout, stderr })
            }
        }
    }
}

/// Reads `from` line by line up to the line holding `marker`, handing
/// each line before it to `on_line`. Returns those lines (each ended by a
/// newline; a last one without is the text before the marker on its line)
/// and what follows the marker on its line; `None`: the stream ended first.
async fn read_to_marker(
    from: &mut (impl tokio::io::AsyncBufRead + Unpin),
    marker: &str,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> std::io::Result<(String, Option<String>)> {
    use tokio::io::AsyncBufReadExt;
    let mut all = String::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if from.read_until(b'\n', &mut buf).await? == 0 {
            return Ok((all, None));
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.strip_suffix('\n').unwrap_or(&text);
        let (line, end) = match line.find(marker) {
            Some(at) => (&line[..at], Some(&line[at + marker.len()..])),
            None => (line, None),
        };
        if end.is_none() || !line.is_empty() {
            on_line(line);
            all.push_str(line);
            all.push('\n');
        }
        if let Some(end) = end {
            return Ok((all, Some(end.to_string())));
        }
    }
}

/// How fleetgate connects: options shared by every host of a run.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// `pipelines/known_hosts` of the commit being deployed, written to a file.
    pub known_hosts: PathBuf,
    /// The names it pins keys for: those hosts are connected to with
    /// `HostKeyAlias=<name>`.
    pub pinned_names: std::collections::BTreeSet<String>,
    /// A private key (`FLEETGATE_SSH_KEY`); `None`: the ssh agent.
    pub key: Option<PathBuf>,
    /// A short directory for control sockets (Unix sockets stop at ~108 bytes).
    pub control_dir: PathBuf,
    /// An ssh_config file fleetgate writes (operator options); also keeps the
    /// runner's own ~/.ssh/config out of the way.
    pub config_file: PathBuf,
    /// `None` when `ssh.options` sets `ConnectTimeout`: a `-o` on the command
    /// line would silently win over the config file.
    pub connect_timeout: Option<Duration>,
    /// `None` when `ssh.options` sets `ServerAliveInterval` (as above).
    pub server_alive_interval: Option<Duration>,
    pub command_timeout: Duration,
}

/// How long a master outlives its last client. fleetgate holds one client
/// connection open for as long as it uses a host (`SshHost::hold`), so this
/// is only ever reached once fleetgate is gone, killed (SIGKILL, OOM, a
/// cancelled CI job) before it could close the master: with
/// `ControlPersist=yes` such a master would stay logged in to the host for
/// good. Short, since nothing legitimate waits on it.
pub const ORPHAN_MASTER_EXIT: Duration = Duration::from_secs(10);

/// A host reached over one multiplexed OpenSSH master connection.
pub struct SshHost {
    name: String,
    session: std::sync::Arc<openssh::Session>,
    /// Shells open on the host, idle ([`Shell`]): a script takes one (or
    /// opens one when none is idle: checks may run side by side) and puts
    /// it back when it ended well.
    shells: std::sync::Mutex<Vec<(Shell, openssh::Child<std::sync::Arc<openssh::Session>>)>>,
    /// A client connection to the master's control socket, held while the
    /// host is in use: the master counts it as in use and does not start its
    /// `ORPHAN_MASTER_EXIT` countdown; the kernel closes it when fleetgate
    /// dies, however it dies.
    hold: std::os::unix::net::UnixStream,
    timeout: Duration,
}

impl SshHost {
    pub async fn connect(host: &Host, opts: &SshOptions) -> Result<SshHost, RemoteError> {
        let config_file = host_config(host, opts).map_err(|message| RemoteError::Connect {
            host: host.name.clone(),
            address: format!("{}@{}:{}", host.user, host.address, host.port),
            message,
            hint: "see the message above",
        })?;
        let mut b = openssh::SessionBuilder::default();
        b.user(host.user.clone())
            .port(host.port)
            .known_hosts_check(openssh::KnownHosts::Strict)
            .user_known_hosts_file(&opts.known_hosts)
            .control_directory(&opts.control_dir)
            .control_persist(openssh::ControlPersist::IdleFor(
                std::num::NonZeroUsize::new(ORPHAN_MASTER_EXIT.as_secs() as usize)
                    .expect("a bound of whole seconds"),
            ))
            .config_file(&config_file);
        if let Some(t) = opts.connect_timeout {
            b.connect_timeout(t);
        }
        if let Some(t) = opts.server_alive_interval {
            b.server_alive_interval(t);
        }
        if let Some(key) = &opts.key {
            b.keyfile(key);
        }
        let (session, hold) =
            launch_master(b, host.address.clone())
                .await
                .map_err(|(message, hint)| RemoteError::Connect {
                    host: host.name.clone(),
                    address: format!("{}@{}:{}", host.user, host.address, host.port),
                    hint: hint.unwrap_or_else(|| connect_hint(&message)),
                    message,
                })?;
        Ok(SshHost {
            name: host.name.clone(),
            session: std::sync::Arc::new(session),
            shells: Default::default(),
            hold,
            timeout: opts.command_timeout,
        })
    }

    /// Ends the master connection now rather than `ORPHAN_MASTER_EXIT` later.
    pub async fn close(self) {
        let SshHost {
            name,
            session,
            shells,
            hold,
            ..
        } = self;
        // Their stdin closes: each shell ends as the connection does.
        drop(shells);
        drop(hold);
        match std::sync::Arc::try_unwrap(session) {
            Ok(session) => {
                if let Err(e) = session.close().await {
                    tracing::debug!("{name}: closing the ssh connection: {}", error_chain(&e));
                }
            }
            // Not reached: every shell was dropped above. The master ends
            // on its own `ORPHAN_MASTER_EXIT` after.
            Err(_) => tracing::debug!("{name}: the ssh connection is still in use"),
        }
    }
}

/// Starts a host's ssh master (`ssh -M -f`, which returns once it has
/// logged in) off the runtime's thread, and takes the hold on it there too.
/// `openssh`'s `connect_mux` forks and execs `ssh` synchronously in its first
/// poll (std's spawn waits for the exec), then awaits its exit. On the single
/// runtime thread, with the fleet's ssh processes busy with key exchanges on
/// the same cores, those spawns queued up and the hosts of a wave started
/// seconds apart (the last of 200 some 11 s after the first), and masters
/// that had logged in waited for the thread longer than
/// `ORPHAN_MASTER_EXIT`, and were gone. See [`crate::rt::off_runtime`].
async fn launch_master(
    builder: openssh::SessionBuilder,
    address: String,
) -> Result<(openssh::Session, std::os::unix::net::UnixStream), (String, Option<&'static str>)> {
    crate::rt::off_runtime(async move {
        let session = builder
            .connect_mux(&address)
            .await
            .map_err(|e| (error_chain(&e), None))?;
        // At once: the master's idle countdown runs until a client holds it.
        let hold =
            std::os::unix::net::UnixStream::connect(session.control_socket()).map_err(|e| {
                (
                    format!("the ssh master's control socket: {e}"),
                    Some("see the ssh message above"),
                )
            })?;
        Ok((session, hold))
    })
    .await
    .unwrap_or_else(|e| Err((format!("starting the ssh master: {e}"), None)))
}

/// The ssh_config `host` is connected with: for a host pinned by name, the
/// shared one with `HostKeyAlias=<name>` first (the first value of an
/// option wins; operators cannot set it: `config/ssh_options.rs`).
fn host_config(host: &Host, opts: &SshOptions) -> Result<PathBuf, String> {
    if !opts.pinned_names.contains(&host.name) {
        return Ok(opts.config_file.clone());
    }
    // Names are validated (static) or a cloud provider's host names; this
    // keeps anything else out of a config line and a file name.
    if host.name.is_empty()
        || !host
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err(format!(
            "`{}` cannot be a HostKeyAlias (letters, digits, `-`, `.`, `_`)",
            host.name
        ));
    }
    let shared = std::fs::read_to_string(&opts.config_file)
        .map_err(|e| format!("read {}: {e}", opts.config_file.display()))?;
    let path = opts.control_dir.join(format!("ssh_config.{}", host.name));
    std::fs::write(
        &path,
        format!(
            "# its key is pinned by name in pipelines/known_hosts\nHostKeyAlias {}\n{shared}",
            host.name
        ),
    )
    .map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// The keys `address:port` offers (`ssh-keyscan -t ed25519,ecdsa,rsa`),
/// for `hosts trust`: never trusted here, only shown and written for a
/// reviewed commit. Empty output is an error (unreachable, or no sshd).
pub async fn keyscan(
    address: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<crate::known_hosts::Key>, String> {
    // ssh-keyscan takes IPv6 addresses bare.
    let bare = address.trim_start_matches('[').trim_end_matches(']');
    let child = tokio::process::Command::new("ssh-keyscan")
        .arg("-T")
        .arg(timeout.as_secs().max(1).to_string())
        .arg("-p")
        .arg(port.to_string())
        .arg("-t")
        .arg(crate::known_hosts::SCAN_TYPES)
        .arg("--")
        .arg(bare)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn ssh-keyscan: {e} (it comes with the OpenSSH client)"))?;
    // ssh-keyscan's -T bounds each read, not the whole scan of three types.
    let out = tokio::time::timeout(timeout * 4, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "ssh-keyscan did not finish within {}s",
                timeout.as_secs() * 4
            )
        })?
        .map_err(|e| format!("wait for ssh-keyscan: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let keys = crate::known_hosts::parse_keyscan(&stdout);
    if keys.is_empty() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        return Err(match (out.status.success(), why.is_empty()) {
            (_, false) => format!("ssh-keyscan: {}", why.join("; ")),
            (true, true) => "no host key offered (unreachable, or no sshd there)".into(),
            (false, true) => format!("ssh-keyscan exited with {}", out.status),
        });
    }
    Ok(keys)
}

/// The file in a control directory naming the fleetgate process that owns
/// it: `<pid> <start time in clock ticks since boot>` (a pid alone may have
/// been reused by the time someone looks).
const OWNER_FILE: &str = "owner";

/// Marks `dir` as this process's control directory, for
/// [`remove_stale_control_dirs`] of a later fleetgate.
pub fn mark_control_dir(dir: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    let start = process_start(pid).unwrap_or_default();
    std::fs::write(dir.join(OWNER_FILE), format!("{pid} {start}\n"))
}

/// Field 22 of `/proc/<pid>/stat`, the start time: with the pid, it names
/// one process for the machine's uptime. `None` when there is no such
/// process, or only its zombie (dead, not yet reaped by its parent).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    if rest.next()? == "Z" {
        return None;
    }
    rest.nth(18)?.parse().ok()
}

/// Removes the control directories under `parent` (fleetgate's
/// `/tmp/fgXXXXXX`) whose owner is gone, after telling any master still
/// listening there to exit: what a fleetgate killed before it could clean
/// up left behind. Directories without an owner file (not fleetgate's, or
/// one still being set up) and those of live processes are left alone.
/// Returns the directories removed.
pub fn remove_stale_control_dirs(parent: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(me) = std::fs::metadata("/proc/self") else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let ours = entry.file_name().to_str().is_some_and(|n| {
            n.len() == 8 && n.starts_with("fg") && n[2..].bytes().all(|b| b.is_ascii_alphanumeric())
        });
        // symlink_metadata: a link planted in /tmp is not followed.
        let owned =
            std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir() && m.uid() == me.uid());
        if !ours || !owned {
            continue;
        }
        let Ok(owner) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let mut words = owner.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(pid)), Some(Ok(start))) = (words.next(), words.next()) else {
            continue;
        };
        let alive = u32::try_from(pid)
            .ok()
            .and_then(process_start)
            .is_some_and(|s| s == start);
        if alive {
            continue;
        }
        for socket in master_sockets(&dir) {
            stop_master(&socket);
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(
                    "removed {}, left by fleetgate process {pid}, which is gone",
                    dir.display()
                );
                removed.push(dir);
            }
            Err(e) => tracing::debug!("removing stale {}: {e}", dir.display()),
        }
    }
    removed
}

/// The control sockets the `openssh` crate makes in a control directory:
/// `.ssh-connectionXXXXXX/master`.
fn master_sockets(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".ssh-connection")
        })
        .map(|e| e.path().join("master"))
        .filter(|p| p.exists())
        .collect()
}

/// `ssh -O exit`: the master ends its connection and exits at once, running
/// remote commands or not. Bounded: a master that does not answer is left to
/// its `ORPHAN_MASTER_EXIT`.
fn stop_master(socket: &Path) {
    let child = std::process::Command::new("ssh")
        .args(["-F", "/dev/null", "-O", "exit", "-S"])
        .arg(socket)
        .arg("fleetgate-stale-master")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out.trim().replace('\n', "; ")
}

fn connect_hint(message: &str) -> &'static str {
    if message.contains("Host key verification failed")
        || message.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    {
        "the host's key is missing from pipelines/known_hosts or differs from it: `fleetgate hosts` shows which hosts are pinned, `fleetgate hosts trust` fetches unpinned ones' keys for a reviewed commit (a changed key needs its old line removed by hand, after verifying the host out of band)"
    } else if message.contains("Permission denied") {
        "the deploy key was refused: check FLEETGATE_SSH_KEY (or the ssh agent) and the host's authorized_keys"
    } else if message.contains("Connection refused")
        || message.contains("timed out")
        || message.contains("No route")
    {
        "the host is unreachable: check its address and port, and that sshd runs"
    } else {
        "see the ssh message above"
    }
}

impl SshHost {
    /// Opens a new `sh -s` on the host: the login shell `exec`s it (one
    /// process fewer on the host than a login shell waiting for it).
    async fn open_shell(
        &self,
    ) -> Result<(Shell, openssh::Child<std::sync::Arc<openssh::Session>>), openssh::Error> {
        let mut child = self
            .session
            .clone()
            .arc_command("exec")
            .arg("sh")
            .arg("-s")
            .stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped())
            .spawn()
            .await?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (
            child.stdin().take(),
            child.stdout().take(),
            child.stderr().take(),
        ) else {
            unreachable!("all three are piped")
        };
        Ok((Shell::new(stdin, stdout, stderr), child))
    }
}

impl Remote for SshHost {
    async fn run_lines(
        &self,
        script: &str,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<RemoteOutput, RemoteError> {
        let run = async {
            let err = |e: &dyn std::error::Error| RemoteError::Run {
                host: self.name.clone(),
                message: error_chain(e),
            };
            let mut idle = self.shells.lock().expect("not poisoned").pop();
            loop {
                let reused = idle.is_some();
                let (mut shell, child) = match idle.take() {
                    Some(open) => open,
                    None => self.open_shell().await.map_err(|e| err(&e))?,
                };
                match shell.run(script, on_line).await.map_err(|e| err(&e))? {
                    Ran::Done {
                        status,
                        stdout,
                        stderr,
                    } => {
                        self.shells
                            .lock()
                            .expect("not poisoned")
                            .push((shell, child));
                        return Ok(RemoteOutput {
                            status,
                            stdout,
                            stderr,
                        });
                    }
                    // A shell that died while idle (killed on the host):
                    // the script never ran there, so it runs on a new one.
                    Ran::Ended { stdout, stderr }
                        if reused && stdout.is_empty() && stderr.is_empty() =>
                    {
                        tracing::debug!("{}: an idle shell had ended; opening another", self.name);
                        continue;
                    }
                    Ran::Ended { stdout, stderr } => {
                        drop(shell);
                        let status = child.wait().await.map_err(|e| err(&e))?;
                        return Ok(RemoteOutput {
                            status: status.code(),
                            stdout,
                            stderr,
                        });
                    }
                }
            }
        };
        // Cut off: the shell is dropped with the future (its channel closes;
        // what the script started on the host may still run there).
        tokio::time::timeout(self.timeout, run)
            .await
            .unwrap_or_else(|_| {
                Err(RemoteError::Timeout {
                    host: self.name.clone(),
                    seconds: self.timeout.as_secs(),
                })
            })
    }
}

/// Connects with the system OpenSSH, strict host keys from the commit's
/// `pipelines/known_hosts`.
pub struct SshConnector {
    _dir: tempfile::TempDir,
    opts: SshOptions,
}

impl SshConnector {
    pub fn new(
        known_hosts: &[u8],
        options: &std::collections::BTreeMap<String, String>,
    ) -> crate::error::Result<SshConnector> {
        let io = |path: &str, source| crate::error::Error::Io {
            action: "write",
            path: path.to_string(),
            source,
        };
        // What a killed fleetgate left: its masters and their directories.
        remove_stale_control_dirs(std::path::Path::new("/tmp"));
        // Short: control sockets live here, and Unix socket paths stop at ~108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("fg")
            .tempdir_in("/tmp")
            .map_err(|e| io("/tmp", e))?;
        mark_control_dir(dir.path()).map_err(|e| io("/tmp", e))?;
        let known = dir.path().join("known_hosts");
        std::fs::write(&known, known_hosts).map_err(|e| io("known_hosts", e))?;
        let config = dir.path().join("ssh_config");
        let mut text = String::from(
            "# written by fleetgate from pipelines/pipeline.yaml `ssh.options`;\n# the runner's ~/.ssh/config does not apply\n",
        );
        for (k, v) in options {
            text.push_str(&format!("{k} {v}\n"));
        }
        std::fs::write(&config, text).map_err(|e| io("ssh_config", e))?;
        let key = std::env::var_os("FLEETGATE_SSH_KEY")
            .filter(|k| !k.is_empty())
            .map(PathBuf::from);
        let pinned_names =
            crate::known_hosts::KnownHosts::parse(&String::from_utf8_lossy(known_hosts))
                .entries
                .into_iter()
                .filter(|e| e.marker.as_deref() != Some("@revoked"))
                .flat_map(|e| e.patterns)
                .collect();
        let opts = SshOptions {
            known_hosts: known,
            pinned_names,
            key,
            control_dir: dir.path().to_path_buf(),
            config_file: config,
            connect_timeout: (!options.contains_key("ConnectTimeout"))
                .then_some(Duration::from_secs(10)),
            server_alive_interval: (!options.contains_key("ServerAliveInterval"))
                .then_some(Duration::from_secs(15)),
            command_timeout: Duration::from_secs(600),
        };
        Ok(SshConnector { _dir: dir, opts })
    }
}

impl crate::deploy::Connector for SshConnector {
    type Host = SshHost;

    async fn connect(&self, host: &Host) -> Result<SshHost, RemoteError> {
        SshHost::connect(host, &self.opts).await
    }

    async fn close(&self, host: SshHost) {
        host.close().await;
    }
}

/// Runs scripts with the local `sh`: the same scripts, no SSH.
#[cfg(test)]
#[derive(Debug, Clone)]
pub struct LocalHost {
    pub name: String,
}

#[cfg(test)]
impl Remote for LocalHost {
    async fn run_lines(
        &self,
        script: &str,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<RemoteOutput, RemoteError> {
        let err = |e: std::io::Error| RemoteError::Run {
            host: self.name.clone(),
            message: e.to_string(),
        };
        // A shell of its own per script, driven as an `SshHost` drives
        // its shells: the same wrapper, markers and stdin.
        let mut child = tokio::process::Command::new("sh")
            .arg("-s")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(err)?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three are piped")
        };
        let mut shell = Shell::new(stdin, stdout, stderr);
        let ran = shell.run(script, on_line).await.map_err(err)?;
        drop(shell);
        let ended = child.wait().await.map_err(err)?;
        Ok(match ran {
            Ran::Done {
                status,
                stdout,
                stderr,
            } => RemoteOutput {
                status,
                stdout,
                stderr,
            },
            Ran::Ended { stdout, stderr } => RemoteOutput {
                status: ended.code(),
                stdout,
                stderr,
            },
        })
    }
}

/// A connection that drops the way one does when its OpenSSH master dies:
/// once a line of a script's output contains `at`, the rest of that output
/// never arrives and the call fails with [`RemoteError::Run`], as does every
/// later call on it, at once. The script itself runs to its end — the host
/// carried on, only the connection is gone — so what a fresh connection
/// finds there is what really happened. Without `at`, it never drops.
#[cfg(test)]
pub struct Dropping<R> {
    name: String,
    inner: R,
    at: Option<String>,
    dropped: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
impl<R: Remote> Dropping<R> {
    pub fn new(name: &str, inner: R, at: Option<&str>) -> Dropping<R> {
        Dropping {
            name: name.to_string(),
            inner,
            at: at.map(str::to_string),
            dropped: Default::default(),
        }
    }

    fn lost(&self) -> RemoteError {
        RemoteError::Run {
            host: self.name.clone(),
            message: "the ssh master is gone: connection to the host lost".into(),
        }
    }
}

#[cfg(test)]
impl<R: Remote> Remote for Dropping<R> {
    async fn run_lines(
        &self,
        script: &str,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<RemoteOutput, RemoteError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.dropped.load(SeqCst) {
            return Err(self.lost());
        }
        let (at, dropped) = (self.at.as_deref(), &self.dropped);
        let out = self
            .inner
            .run_lines(script, &mut |line| {
                if dropped.load(SeqCst) {
                    return;
                }
                on_line(line);
                if at.is_some_and(|at| line.contains(at)) {
                    dropped.store(true, SeqCst);
                }
            })
            .await;
        if self.dropped.load(SeqCst) {
            return Err(self.lost());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One local `sh -s` kept open, as `SshHost` keeps one per host.
    fn local_shell() -> (Shell, tokio::process::Child) {
        let mut child = tokio::process::Command::new("sh")
            .arg("-s")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let shell = Shell::new(
            child.stdin.take().unwrap(),
            child.stdout.take().unwrap(),
            child.stderr.take().unwrap(),
        );
        (shell, child)
    }

    fn done(status: i32, stdout: &str, stderr: &str) -> Ran {
        Ran::Done {
            status: Some(status),
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    #[tokio::test]
    async fn one_shell_runs_script_after_script_each_on_its_own() {
        let (mut shell, mut child) = local_shell();
        let mut lines = Vec::new();
        let ran = shell
            .run("x=1; cd /; echo one; echo two >&2", &mut |l| {
                lines.push(l.to_string())
            })
            .await
            .unwrap();
        assert_eq!(ran, done(0, "one\n", "two\n"));
        assert_eq!(lines, ["one"]);
        // Nothing of the script before is left: variables, cwd, options.
        let ran = shell
            .run(
                "set -e; echo \"x=${x-unset}\"; false; echo never",
                &mut |_| {},
            )
            .await
            .unwrap();
        assert_eq!(ran, done(1, "x=unset\n", ""));
        // `exit` ends the script, not the shell.
        let ran = shell.run("exit 7", &mut |_| {}).await.unwrap();
        assert_eq!(ran, done(7, "", ""));
        // A last line without a newline, on both streams.
        let ran = shell
            .run("printf 'a\\nb'; printf 'warn' >&2", &mut |_| {})
            .await
            .unwrap();
        assert_eq!(ran, done(0, "a\nb\n", "warn\n"));
        // A command that reads stdin reads nothing: the scripts after it
        // stay the shell's.
        let ran = shell
            .run("cat; echo \"read: $(wc -c)\"", &mut |_| {})
            .await
            .unwrap();
        assert_eq!(ran, done(0, "read: 0\n", ""));
        let ran = shell.run("echo still here", &mut |_| {}).await.unwrap();
        assert_eq!(ran, done(0, "still here\n", ""));
        drop(shell);
        assert!(child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn a_syntax_error_fails_its_script_and_the_shell_goes_on() {
        let (mut shell, mut child) = local_shell();
        // (A here-document without its end line ends where the script does.)
        let ran = shell.run("cat <<EOF\nno end", &mut |_| {}).await.unwrap();
        assert!(matches!(ran, Ran::Done { .. }), "{ran:?}");
        for broken in ["echo \"unclosed", "echo $(", "if then fi"] {
            let ran = shell.run(broken, &mut |_| {}).await.unwrap();
            let Ran::Done { status, stderr, .. } = &ran else {
                panic!("{broken:?}: {ran:?}")
            };
            assert_eq!(*status, Some(2), "{broken:?}: {ran:?}");
            assert!(
                stderr.to_lowercase().contains("syntax error"),
                "{broken:?}: {stderr}"
            );
        }
        let ran = shell.run("echo fine", &mut |_| {}).await.unwrap();
        assert_eq!(ran, done(0, "fine\n", ""));
        drop(shell);
        assert!(child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn a_script_that_ends_the_shell_is_told_apart() {
        // The host's own shell killed: ended, and said so by the session.
        let (mut shell, mut child) = local_shell();
        let ran = shell
            .run("echo bye; kill -9 $$", &mut |_| {})
            .await
            .unwrap();
        assert!(matches!(ran, Ran::Ended { .. }), "{ran:?}");
        assert!(!child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn a_faked_end_marker_is_only_a_line() {
        let (mut shell, _child) = local_shell();
        let ran = shell
            .run(
                "echo '@@fgend-1-2 0'; echo '@@fgend-1-2' >&2; exit 3",
                &mut |_| {},
            )
            .await
            .unwrap();
        assert_eq!(ran, done(3, "@@fgend-1-2 0\n", "@@fgend-1-2\n"));
    }

    #[test]
    fn only_control_dirs_whose_owner_is_gone_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        let dir = |name: &str, owner: Option<String>| {
            let d = parent.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::create_dir(d.join(".ssh-connectionXYZ")).unwrap();
            if let Some(o) = owner {
                std::fs::write(d.join(OWNER_FILE), o).unwrap();
            }
            d
        };
        let me = std::process::id();
        let started = process_start(me).unwrap();
        // This pid with another start time: a process that is gone, its
        // pid since reused (by this test).
        let reused = dir("fgAAAAAA", Some(format!("{me} {}\n", started + 1)));
        let gone = dir("fgBBBBBB", Some(format!("{} 1\n", u32::MAX)));
        let live = dir("fgCCCCCC", Some(format!("{me} {started}\n")));
        let unmarked = dir("fgDDDDDD", None);
        let garbled = dir("fgEEEEEE", Some("not a pid".into()));
        let not_ours = dir("fg-FFFFFF", Some(format!("{} 1\n", u32::MAX)));
        let mut removed = remove_stale_control_dirs(parent.path());
        removed.sort();
        assert_eq!(removed, [reused.clone(), gone.clone()]);
        assert!(!reused.exists() && !gone.exists());
        for kept in [live, unmarked, garbled, not_ours] {
            assert!(kept.exists(), "{}", kept.display());
        }
    }

    #[test]
    fn a_marked_control_dir_names_this_process() {
        let parent = tempfile::tempdir().unwrap();
        let d = parent.path().join("fgGGGGGG");
        std::fs::create_dir(&d).unwrap();
        mark_control_dir(&d).unwrap();
        assert!(remove_stale_control_dirs(parent.path()).is_empty());
        assert!(d.exists());
    }
}
