//! Running scripts on hosts. [`Remote`] is the one seam: [`SshHost`] drives
//! the system OpenSSH through the `openssh` crate (one multiplexed master per
//! host, strict host keys), [`LocalHost`] runs the same scripts with the local
//! `sh` (unit tests of the scripts, no network).
//!
//! Scripts travel on the remote `sh -s`'s stdin, never in a command line, so
//! file contents and secrets are not visible in process lists.

use std::path::PathBuf;
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

/// Feeds `script` to a child's stdin, streams its stdout by line, collects
/// stderr, then waits: shared by the SSH and the local transport.
async fn drive<W, O, E>(
    stdin: Option<W>,
    stdout: Option<O>,
    stderr: Option<E>,
    script: &str,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> std::io::Result<(String, String)>
where
    W: tokio::io::AsyncWrite + Unpin,
    O: tokio::io::AsyncRead + Unpin,
    E: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let feed = async {
        if let Some(mut stdin) = stdin {
            stdin.write_all(script.as_bytes()).await?;
            stdin.shutdown().await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let read_out = async {
        let mut all = String::new();
        if let Some(out) = stdout {
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Some(line) = lines.next_line().await? {
                on_line(&line);
                all.push_str(&line);
                all.push('\n');
            }
        }
        Ok::<_, std::io::Error>(all)
    };
    let read_err = async {
        let mut buf = Vec::new();
        if let Some(mut err) = stderr {
            err.read_to_end(&mut buf).await?;
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    let (fed, out, err) = tokio::join!(feed, read_out, read_err);
    // A script that exits early closes stdin: its exit status says why.
    let _ = fed;
    Ok((out?, err?))
}

/// How fleetgate connects: options shared by every host of a run.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// `pipelines/known_hosts` of the commit being deployed, written to a file.
    pub known_hosts: PathBuf,
    /// A private key (`FLEETGATE_SSH_KEY`); `None`: the ssh agent.
    pub key: Option<PathBuf>,
    /// A short directory for control sockets (Unix sockets stop at ~108 bytes).
    pub control_dir: PathBuf,
    /// An ssh_config file fleetgate writes (operator options); also keeps the
    /// runner's own ~/.ssh/config out of the way.
    pub config_file: PathBuf,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

/// A host reached over one multiplexed OpenSSH master connection.
pub struct SshHost {
    name: String,
    session: openssh::Session,
    timeout: Duration,
}

impl SshHost {
    pub async fn connect(host: &Host, opts: &SshOptions) -> Result<SshHost, RemoteError> {
        let mut b = openssh::SessionBuilder::default();
        b.user(host.user.clone())
            .port(host.port)
            .known_hosts_check(openssh::KnownHosts::Strict)
            .user_known_hosts_file(&opts.known_hosts)
            .control_directory(&opts.control_dir)
            .config_file(&opts.config_file)
            .connect_timeout(opts.connect_timeout)
            .server_alive_interval(Duration::from_secs(15));
        if let Some(key) = &opts.key {
            b.keyfile(key);
        }
        let session = b.connect_mux(&host.address).await.map_err(|e| {
            let message = error_chain(&e);
            RemoteError::Connect {
                host: host.name.clone(),
                address: format!("{}@{}:{}", host.user, host.address, host.port),
                hint: connect_hint(&message),
                message,
            }
        })?;
        Ok(SshHost {
            name: host.name.clone(),
            session,
            timeout: opts.command_timeout,
        })
    }

    /// Ends the master connection (ControlPersist would otherwise keep it).
    pub async fn close(self) {
        if let Err(e) = self.session.close().await {
            tracing::debug!(
                "{}: closing the ssh connection: {}",
                self.name,
                error_chain(&e)
            );
        }
    }
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
        "the host's key is missing from pipelines/known_hosts or differs from it; verify the host out of band, then update pipelines/known_hosts in a reviewed commit"
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
            let mut child = self
                .session
                .command("sh")
                .arg("-s")
                .stdin(openssh::Stdio::piped())
                .stdout(openssh::Stdio::piped())
                .stderr(openssh::Stdio::piped())
                .spawn()
                .await
                .map_err(|e| err(&e))?;
            let (stdout, stderr) = drive(
                child.stdin().take(),
                child.stdout().take(),
                child.stderr().take(),
                script,
                on_line,
            )
            .await
            .map_err(|e| err(&e))?;
            let status = child.wait().await.map_err(|e| err(&e))?;
            Ok(RemoteOutput {
                status: status.code(),
                stdout,
                stderr,
            })
        };
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
        let mut child = tokio::process::Command::new("sh")
            .arg("-s")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(err)?;
        let (stdout, stderr) = drive(
            child.stdin.take(),
            child.stdout.take(),
            child.stderr.take(),
            script,
            on_line,
        )
        .await
        .map_err(err)?;
        let status = child.wait().await.map_err(err)?;
        Ok(RemoteOutput {
            status: status.code(),
            stdout,
            stderr,
        })
    }
}
