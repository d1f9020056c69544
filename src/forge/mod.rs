//! The forge: where people look. Pull-request comments, commit statuses,
//! and who approved what. One [`Forge`] trait; Forgejo (its own REST API,
//! `/api/v1`, over reqwest) and GitHub (through octocrab, behind the
//! `github` cargo feature so a fast local build can leave it out).
//!
//! Everything here is I/O at the edge. What to say is decided by the
//! commands (`report::comment`, `notify`); this module only says it, with
//! retries on 5xx and rate limits, and turns 401/403 into an exit-3 error
//! with a hint about the token. The token lives in [`Token`], whose `Debug`
//! and `Display` print `***`, and every message that comes back from the
//! forge is scrubbed of it before it can reach a log.

pub mod env;
pub mod forgejo;
#[cfg(feature = "github")]
pub mod github;
pub mod issues;
pub mod notify;
mod rest;

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Message, Result};

pub use env::{Env, Kind};

/// The marker that makes the plan comment sticky: one per pull request,
/// found again and edited on the next push.
pub const PLAN_MARKER: &str = "<!-- fleetgate:plan -->";

/// A secret API token. Never printed: `{:?}` and `{}` give `***`.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn new(value: String) -> Self {
        Token(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the token replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.is_empty() {
            text.to_string()
        } else {
            text.replace(&self.0, "***")
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub id: u64,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    pub number: u64,
    pub merged: bool,
    pub merge_commit_sha: Option<String>,
}

/// An open issue of the repository (pull requests are not issues here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub number: u64,
    pub title: String,
    pub body: String,
}

/// A commit status's state; the forge's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Success,
    Failure,
    Error,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Success => "success",
            State::Failure => "failure",
            State::Error => "error",
        }
    }
}

/// One commit status: `context` is `fleetgate/plan`, `fleetgate/scan` or
/// `fleetgate/<stage>`.
#[derive(Debug, Clone)]
pub struct Status {
    pub context: String,
    pub state: State,
    /// Short: GitHub refuses more than 140 characters (cut here).
    pub description: String,
    pub target_url: Option<String>,
}

/// A reviewed deployment of a GitHub environment (the "Review deployments"
/// button), read back from the workflow run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvApproval {
    pub user: String,
    pub environments: Vec<String>,
    pub approved: bool,
}

/// What fleetgate does on a forge. Implementations only translate to the
/// forge's endpoints; retries, error mapping and scrubbing are in [`call`].
pub trait Forge {
    /// "Forgejo" or "GitHub", for messages.
    fn name(&self) -> &'static str;
    /// The largest comment body the forge takes, in characters.
    fn comment_limit(&self) -> usize;
    /// Every comment of an issue or pull request, oldest first.
    fn comments(&self, issue: u64) -> Result<Vec<Comment>>;
    fn create_comment(&self, issue: u64, body: &str) -> Result<Comment>;
    fn edit_comment(&self, id: u64, body: &str) -> Result<()>;
    fn set_status(&self, sha: &str, status: &Status) -> Result<()>;
    fn pull(&self, number: u64) -> Result<Option<Pull>>;
    /// The merged pull request whose merge produced `sha`, if any.
    fn merged_pull_of(&self, sha: &str) -> Result<Option<Pull>>;
    /// Who reviewed the environment deployments of a workflow run.
    fn environment_approvals(&self, run_id: u64) -> Result<Vec<EnvApproval>>;
    /// The open issues of the repository (not pull requests), in the
    /// forge's order; the scheduled checks find theirs by the marker in
    /// the body.
    fn open_issues(&self) -> Result<Vec<Issue>>;
    fn create_issue(&self, title: &str, body: &str) -> Result<Issue>;
    fn edit_issue(&self, number: u64, title: &str, body: &str) -> Result<()>;
    /// Comments `comment` on the issue, then closes it.
    fn close_issue(&self, number: u64, comment: &str) -> Result<()>;
}

/// Connects to the forge the environment names.
pub fn connect(env: &Env) -> Result<Box<dyn Forge>> {
    match env.kind {
        Kind::Forgejo => Ok(Box::new(forgejo::Forgejo::new(env)?)),
        #[cfg(feature = "github")]
        Kind::Github => Ok(Box::new(github::Github::new(env)?)),
        #[cfg(not(feature = "github"))]
        Kind::Github => Err(Error::Usage(
            Message::from("this fleetgate was built without GitHub support")
                .hint("build with the default features (`--features github`)"),
        )),
    }
}

/// Creates the comment carrying `marker` on `issue`, or edits it if it is
/// there already: one comment per pull request, kept current.
pub fn upsert_comment(
    forge: &dyn Forge,
    issue: u64,
    marker: &str,
    body: &str,
) -> Result<(u64, bool)> {
    let existing = forge
        .comments(issue)?
        .into_iter()
        .find(|c| c.body.contains(marker));
    match existing {
        Some(c) => {
            forge.edit_comment(c.id, body)?;
            Ok((c.id, false))
        }
        None => Ok((forge.create_comment(issue, body)?.id, true)),
    }
}

// ---------------------------------------------------------------------------
// The one request path both implementations share.

/// A request relative to the API base.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: Method,
    /// Path and query, e.g. `/repos/o/r/issues/3/comments?page=2`.
    pub path: String,
    pub body: Option<&'a Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
        }
    }
}

/// What came back, whatever the HTTP client.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Lower-case header names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::Forge(
                format!(
                    "the forge answered {} with a body that is not JSON: {e}",
                    self.status
                )
                .into(),
            )
        })
    }
}

/// Sends one request: the HTTP client of an implementation.
pub trait Transport {
    /// `Err` is a transport failure (connect, TLS, timeout), already scrubbed.
    fn send(&self, req: &Request<'_>) -> std::result::Result<Response, Unanswered>;
}

/// Why a request got no answer, and whether trying again can help: a
/// refused connection or a timeout can pass, an untrusted certificate
/// cannot.
#[derive(Debug)]
pub struct Unanswered {
    pub why: Message,
    pub retry: bool,
}

impl From<String> for Unanswered {
    fn from(why: String) -> Unanswered {
        Unanswered {
            why: why.into(),
            retry: true,
        }
    }
}

/// How many times a request is tried, and the first pause (doubled each
/// time, or what the forge asks for with Retry-After, up to `MAX_PAUSE`).
const ATTEMPTS: u32 = 5;
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// Sends `req` through `transport`, retrying 5xx, rate limits and transport
/// failures with backoff; a 2xx comes back, 404 comes back as `None`
/// (callers decide what absence means), anything else is an error.
pub fn call(
    forge: &str,
    token: &Token,
    token_var: &str,
    transport: &dyn Transport,
    req: &Request<'_>,
) -> Result<Option<Response>> {
    let what = format!("{} {}", req.method.as_str(), req.path);
    let mut pause = FIRST_PAUSE;
    for attempt in 1..=ATTEMPTS {
        let last = attempt == ATTEMPTS;
        let retry_in = match transport.send(req) {
            Err(Unanswered { why, retry }) => {
                let e = token.scrub(&why.text);
                if !retry {
                    // Reached, but not to be talked to (its certificate).
                    return Err(Error::Forge(Message {
                        text: format!("{forge} ({what}): {e}"),
                        hint: why.hint,
                    }));
                }
                if last {
                    return Err(Error::Forge(Message {
                        text: format!("{forge} could not be reached ({what}): {e}"),
                        hint: why.hint,
                    }));
                }
                tracing::warn!("{forge}: {what}: {e}; retrying in {pause:?}");
                pause
            }
            Ok(resp) => match classify(&resp) {
                Class::Ok => return Ok(Some(resp)),
                Class::NotFound => return Ok(None),
                Class::Retry(asked) => {
                    let wait = asked.unwrap_or(pause);
                    if wait > MAX_PAUSE {
                        return Err(Error::Forge(
                            Message::from(format!(
                                "{forge} rate-limits this token ({what}: {}) for another {}s",
                                resp.status,
                                wait.as_secs()
                            ))
                            .hint("wait, or use a token with its own quota"),
                        ));
                    }
                    if last {
                        return Err(Error::Forge(
                            format!(
                                "{forge} failed {what} {ATTEMPTS} times; last answer {}: {}",
                                resp.status,
                                token.scrub(&message(&resp))
                            )
                            .into(),
                        ));
                    }
                    tracing::warn!(
                        "{forge}: {what}: {} {}; retrying in {wait:?} (attempt {attempt} of {ATTEMPTS})",
                        resp.status,
                        token.scrub(&message(&resp))
                    );
                    wait
                }
                Class::Auth => {
                    return Err(Error::Forge(
                        Message::from(format!(
                            "{forge} refused the token ({what}: {} {})",
                            resp.status,
                            token.scrub(&message(&resp))
                        ))
                        .hint(auth_hint(forge, token_var)),
                    ));
                }
                Class::Fail => {
                    return Err(Error::Forge(
                        format!(
                            "{forge} refused {what}: {} {}",
                            resp.status,
                            token.scrub(&message(&resp))
                        )
                        .into(),
                    ));
                }
            },
        };
        std::thread::sleep(retry_in);
        pause = (pause * 2).min(MAX_PAUSE);
    }
    unreachable!("the last attempt returns")
}

enum Class {
    Ok,
    NotFound,
    /// With the pause the forge asked for, if it did.
    Retry(Option<Duration>),
    Auth,
    Fail,
}

fn classify(resp: &Response) -> Class {
    let asked = || {
        if let Some(secs) = resp
            .header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
        {
            return Some(Duration::from_secs(secs));
        }
        let reset = resp.header("x-ratelimit-reset")?.parse::<i64>().ok()?;
        let now = chrono::Utc::now().timestamp();
        Some(Duration::from_secs((reset - now).max(1) as u64))
    };
    match resp.status {
        200..=299 => Class::Ok,
        404 => Class::NotFound,
        429 => Class::Retry(asked()),
        // GitHub's primary rate limit is a 403 with no requests left; its
        // secondary one says so in the message.
        403 if resp.header("x-ratelimit-remaining") == Some("0")
            || message(resp).to_lowercase().contains("rate limit") =>
        {
            Class::Retry(asked())
        }
        401 | 403 => Class::Auth,
        500..=599 => Class::Retry(asked()),
        _ => Class::Fail,
    }
}

/// The forge's own words: the JSON `message` (plus validation errors), or
/// the start of the body.
fn message(resp: &Response) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(&resp.body) {
        let mut text = v
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(errors) = v.get("errors").and_then(Value::as_array) {
            for e in errors {
                if let Some(m) = e.get("message").and_then(Value::as_str) {
                    text.push_str(&format!("; {m}"));
                }
            }
        }
        if !text.is_empty() {
            return text;
        }
    }
    let text = String::from_utf8_lossy(&resp.body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.chars().take(200).collect()
}

fn auth_hint(forge: &str, token_var: &str) -> String {
    if forge == "GitHub" {
        format!(
            "check {token_var}: the job needs `permissions: {{pull-requests: write, issues: write, statuses: write, actions: read}}`, and tokens of workflows triggered from forks are read-only"
        )
    } else {
        format!(
            "check {token_var}: a Forgejo token needs the scopes write:issue (comments) and write:repository (commit statuses); the automatic token of a job started from a fork is read-only"
        )
    }
}

/// `text` cut to `max` characters, with an ellipsis when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_never_prints() {
        let t = Token::new("s3cr3t-token".into());
        assert_eq!(format!("{t} {t:?}"), "*** ***");
        assert_eq!(t.scrub("bad s3cr3t-token here"), "bad *** here");
    }

    #[test]
    fn rate_limits_and_server_errors_retry_auth_does_not() {
        let resp = |status, headers: &[(&str, &str)], body: &str| Response {
            status,
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        };
        assert!(matches!(classify(&resp(502, &[], "")), Class::Retry(None)));
        assert!(matches!(
            classify(&resp(429, &[("retry-after", "3")], "")),
            Class::Retry(Some(d)) if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify(&resp(403, &[("x-ratelimit-remaining", "0")], "{}")),
            Class::Retry(_)
        ));
        assert!(matches!(
            classify(&resp(
                403,
                &[],
                r#"{"message":"Resource not accessible by integration"}"#
            )),
            Class::Auth
        ));
        assert!(matches!(classify(&resp(401, &[], "")), Class::Auth));
        assert!(matches!(classify(&resp(422, &[], "")), Class::Fail));
        assert!(matches!(classify(&resp(404, &[], "")), Class::NotFound));
    }
}
