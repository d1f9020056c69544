//! Which forge, where, as whom: read from the CI job's environment.
//!
//! Forgejo Actions sets the `GITHUB_*` names too, so the kind is decided by
//! `--forge` / `FLEETGATE_FORGE`, then Forgejo's own markers
//! (`FORGEJO_ACTIONS`, `GITEA_ACTIONS`), then `GITHUB_ACTIONS`. Outside a
//! CI job this is an error, never a silent no-op (design.md §4).

use std::path::PathBuf;

use clap::ValueEnum;
use serde_json::Value;

use super::Token;
use crate::error::{Error, Message, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Forgejo,
    Github,
}

/// The forge of this CI job.
#[derive(Debug, Clone)]
pub struct Env {
    pub kind: Kind,
    /// API base, no trailing slash (`https://codeberg.org/api/v1`,
    /// `https://api.github.com`).
    pub api: String,
    pub owner: String,
    pub repo: String,
    pub token: Token,
    /// Which variable the token came from, for hints.
    pub token_var: &'static str,
    /// `GITHUB_EVENT_NAME`: pull_request, push, issue_comment, workflow_dispatch…
    pub event_name: Option<String>,
    /// The event payload (`GITHUB_EVENT_PATH`), parsed.
    pub event: Value,
    /// `GITHUB_RUN_ID`: the workflow run (GitHub's environment reviews hang on it).
    pub run_id: Option<u64>,
    /// The page of this job's run, for links from comments and statuses.
    pub run_url: Option<String>,
    /// `GITHUB_ACTOR`: who started the run.
    pub actor: Option<String>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn truthy(name: &str) -> bool {
    var(name).is_some_and(|v| v == "true" || v == "1")
}

impl Env {
    /// Reads the job's environment. `why` names the option that needs the
    /// forge, for the error outside CI.
    pub fn from_env(forced: Option<Kind>, why: &str) -> Result<Env> {
        let outside = |missing: &str| {
            Error::Usage(Message::from(format!("{why} needs a forge, but {missing} is not set")).hint(format!("this runs in a Forgejo or GitHub Actions job, which sets GITHUB_REPOSITORY, GITHUB_SERVER_URL and GITHUB_EVENT_PATH; give the job a token in GITHUB_TOKEN (or FORGEJO_TOKEN). Outside CI, leave {why} out")))
        };
        let kind = match forced {
            Some(k) => k,
            None if truthy("FORGEJO_ACTIONS") || truthy("GITEA_ACTIONS") => Kind::Forgejo,
            None if truthy("GITHUB_ACTIONS") => Kind::Github,
            None => {
                return Err(outside(
                    "FORGEJO_ACTIONS or GITHUB_ACTIONS (or --forge forgejo|github)",
                ));
            }
        };
        let repository = var("GITHUB_REPOSITORY").ok_or_else(|| outside("GITHUB_REPOSITORY"))?;
        let Some((owner, repo)) = repository.split_once('/') else {
            return Err(Error::Usage(
                format!("GITHUB_REPOSITORY is `{repository}`, expected OWNER/NAME").into(),
            ));
        };
        let server = var("GITHUB_SERVER_URL")
            .or_else(|| (kind == Kind::Github).then(|| "https://github.com".to_string()))
            .ok_or_else(|| outside("GITHUB_SERVER_URL"))?;
        let server = server.trim_end_matches('/').to_string();
        let api = var("FLEETGATE_FORGE_URL")
            .or_else(|| var("GITHUB_API_URL"))
            .unwrap_or_else(|| match kind {
                Kind::Forgejo => format!("{server}/api/v1"),
                Kind::Github => "https://api.github.com".to_string(),
            })
            .trim_end_matches('/')
            .to_string();
        let (token, token_var) = match kind {
            Kind::Forgejo => var("FORGEJO_TOKEN")
                .map(|t| (t, "FORGEJO_TOKEN"))
                .or_else(|| var("GITHUB_TOKEN").map(|t| (t, "GITHUB_TOKEN"))),
            Kind::Github => var("GITHUB_TOKEN").map(|t| (t, "GITHUB_TOKEN")),
        }
        .ok_or_else(|| outside("GITHUB_TOKEN (or FORGEJO_TOKEN)"))?;
        let event = match var("GITHUB_EVENT_PATH") {
            None => Value::Null,
            Some(path) => {
                let path = PathBuf::from(path);
                let text = std::fs::read(&path).map_err(|source| Error::Io {
                    action: "read",
                    path: format!("{} (GITHUB_EVENT_PATH)", path.display()),
                    source,
                })?;
                serde_json::from_slice(&text).map_err(|e| {
                    Error::Usage(
                        format!(
                            "{} (GITHUB_EVENT_PATH): not a JSON event payload: {e}",
                            path.display()
                        )
                        .into(),
                    )
                })?
            }
        };
        let run_id = var("GITHUB_RUN_ID").and_then(|v| v.parse().ok());
        // Forgejo's run pages are numbered per repository (GITHUB_RUN_NUMBER);
        // GitHub's by the global run id.
        let run_page = match kind {
            Kind::Forgejo => var("GITHUB_RUN_NUMBER").or_else(|| var("GITHUB_RUN_ID")),
            Kind::Github => var("GITHUB_RUN_ID"),
        };
        let run_url = run_page.map(|n| format!("{server}/{owner}/{repo}/actions/runs/{n}"));
        Ok(Env {
            kind,
            api,
            owner: owner.to_string(),
            repo: repo.to_string(),
            token: Token::new(token),
            token_var,
            event_name: var("GITHUB_EVENT_NAME"),
            event,
            run_id,
            run_url,
            actor: var("GITHUB_ACTOR"),
        })
    }

    /// The pull request of a `pull_request` event.
    pub fn pull_request_number(&self) -> Option<u64> {
        self.event
            .pointer("/pull_request/number")
            .or_else(|| self.event.get("number"))
            .and_then(Value::as_u64)
    }
}
