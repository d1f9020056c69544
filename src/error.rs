//! User-facing errors and the exit codes they map to.
//!
//! Exit codes are API (design.md §4). Every error a user can see is a variant
//! here, and `Error::exit_code` is the one `match` that turns them into codes.
//! Messages are lowercase fragments that read after "failed to"/"error:"; a
//! `hint:` line says what to do. No variant ever carries a secret value.

use std::fmt;

use serde::Serialize;

/// The process exit codes of design.md §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Done; every gate passed, or nothing to do.
    Ok = 0,
    /// A gate blocked, or a failed deploy was handled.
    Blocked = 1,
    /// Invalid input: arguments, YAML, templates, secrets, unpinned images.
    Invalid = 2,
    /// Infrastructure: a host, the forge, the registry or trivy failed.
    Infra = 3,
    /// Waiting for an approval.
    Waiting = 4,
}

/// One problem found in a fleet repository, located as precisely as we know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Repository-relative path of the file.
    pub file: String,
    /// Field path inside the file, such as `hosts[1].port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// 1-based line, when the parser knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(file: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.into(),
            field: None,
            line: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        if !field.is_empty() && field != "." {
            self.field = Some(field);
        }
        self
    }

    pub fn line(mut self, line: Option<u32>) -> Self {
        self.line = line.filter(|l| *l > 0);
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Everything that can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the fleet at {at} has {} problem{}", .problems.len(), if .problems.len() == 1 { "" } else { "s" })]
    Invalid {
        at: String,
        problems: Vec<Diagnostic>,
    },

    #[error(
        "resolve revision `{rev}`: {message}\n  hint: pass a commit id, branch or tag that exists in {repo}"
    )]
    BadRevision {
        rev: String,
        repo: String,
        message: String,
    },

    #[error(
        "open repository {path}: {message}\n  hint: run inside a Git repository or pass --repo DIR"
    )]
    NoRepository { path: String, message: String },

    #[error("{0}")]
    Usage(Message),

    #[error("read Git object database ({what}): {source}")]
    Git {
        what: String,
        #[source]
        source: git2::Error,
    },

    /// The fleet repository's remote (fetch/push through the git CLI), or
    /// the pipeline lock held by another run.
    #[error("{0}")]
    Remote(Message),

    /// A host could not be reached or read (outside a stage, whose
    /// unreachable hosts are part of its outcome).
    #[error("{0}")]
    Host(Message),

    /// A run record (a note under `refs/notes/fleetgate`) that cannot be
    /// read as one: never treated as "no record", never overwritten.
    #[error("{0}")]
    Record(Message),

    /// The forge (Forgejo, GitHub) could not be reached, refused the token,
    /// or refused a request. The message is scrubbed of the token.
    #[error("{0}")]
    Forge(Message),

    /// The image scanner could not run (missing, crashed, timed out, no DB):
    /// never treated as a pass.
    #[error("{0}")]
    Scan(Message),

    /// The Hetzner Cloud API could not be reached, refused the token
    /// (`HCLOUD_TOKEN`, never printed), or kept failing after retries.
    #[error("{0}")]
    Cloud(Message),

    /// A local file or process: `action` says what was being done
    /// (`read`, `write`, `create`, `run`), `path` what it was done to.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// An error's words: what went wrong, and what to do about it, kept apart
/// so a forge comment or status can show either without parsing text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub text: String,
    pub hint: Option<String>,
}

impl Message {
    pub fn hint(mut self, hint: impl Into<String>) -> Message {
        self.hint = Some(hint.into());
        self
    }
}

impl From<String> for Message {
    fn from(text: String) -> Message {
        Message { text, hint: None }
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Message {
        Message::from(text.to_string())
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Invalid { .. }
            | Error::BadRevision { .. }
            | Error::NoRepository { .. }
            | Error::Usage(_) => ExitCode::Invalid,
            Error::Git { .. }
            | Error::Io { .. }
            | Error::Remote(_)
            | Error::Record(_)
            | Error::Host(_)
            | Error::Forge(_)
            | Error::Scan(_)
            | Error::Cloud(_) => ExitCode::Infra,
        }
    }

    /// The whole story as the human log tells it: each problem of an
    /// invalid fleet, then the error. For places other than stderr (the
    /// pull-request comment). Carries no secret, like every message here.
    pub fn detailed(&self) -> String {
        let mut out = String::new();
        if let Error::Invalid { problems, .. } = self {
            for d in problems {
                out.push_str(&format!("{d}\n"));
            }
        }
        out.push_str(&format!("error: {self}"));
        out
    }

    pub fn usage(text: impl Into<String>) -> Self {
        Error::Usage(Message::from(text.into()))
    }

    /// What went wrong, without the hint: one line for a commit status.
    pub fn headline(&self) -> String {
        let text = match self {
            Error::Usage(m)
            | Error::Remote(m)
            | Error::Host(m)
            | Error::Record(m)
            | Error::Forge(m)
            | Error::Scan(m)
            | Error::Cloud(m) => m.text.clone(),
            other => other.to_string(),
        };
        text.lines().next().unwrap_or_default().to_string()
    }

    pub fn git(what: impl Into<String>, source: git2::Error) -> Self {
        Error::Git {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
