//! Forgejo (and Gitea): its own REST API under `/api/v1`, not GitHub's.
//! reqwest with rustls and the trust store of [`crate::tls`]; `Authorization:
//! token …` as the swagger asks.

use super::rest::{self, Rest};
use super::{
    Comment, Env, EnvApproval, Forge, Issue, Method, Pull, Request, Response, Status, Token,
    Transport, Unanswered,
};
use crate::error::{Error, Message, Result};

/// Forgejo states no comment size limit; its database column may be 64 KiB
/// (MySQL TEXT), so we stay under GitHub's 65536 characters on both.
const COMMENT_LIMIT: usize = 65_536;
/// Pages of closed pull requests searched for the one that merged a commit.
const PULL_PAGES: u32 = 3;
const PAGE: usize = 50;
/// Pages of open issues looked through for fleetgate's own.
const ISSUE_PAGES: u32 = 20;

pub struct Forgejo {
    rest: Rest,
}

struct Http {
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
    api: String,
    auth: String,
    token: Token,
}

impl Transport for Http {
    fn send(&self, req: &Request<'_>) -> std::result::Result<Response, Unanswered> {
        let url = format!("{}{}", self.api, req.path);
        let method = match req.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Patch => reqwest::Method::PATCH,
        };
        let mut builder = self
            .client
            .request(method, &url)
            .header("authorization", &self.auth)
            .header("accept", "application/json");
        if let Some(body) = req.body {
            builder = builder.json(body);
        }
        self.rt
            .block_on(async {
                let resp = builder.send().await?;
                let status = resp.status().as_u16();
                let headers = rest::headers(resp.headers());
                let body = resp.bytes().await?.to_vec();
                Ok::<_, reqwest::Error>(Response {
                    status,
                    headers,
                    body,
                })
            })
            .map_err(|e| unanswered(e, &self.token))
    }
}

/// A failed request in words: an untrusted certificate (not retried), or
/// reqwest's error with its causes (connection refused, timeout…).
fn unanswered(e: reqwest::Error, token: &Token) -> Unanswered {
    match crate::tls::certificate_problem(&e) {
        Some(why) => Unanswered { why, retry: false },
        None => token.scrub(&crate::tls::describe(e)).into(),
    }
}

impl Forgejo {
    pub fn new(env: &Env) -> Result<Self> {
        let client = crate::tls::api_client(Error::Forge)?;
        let http = Http {
            client,
            rt: crate::rt::runtime()?,
            api: env.api.clone(),
            auth: format!("token {}", env.token.expose()),
            token: env.token.clone(),
        };
        Ok(Forgejo {
            rest: Rest::new("Forgejo", Box::new(http), env),
        })
    }
}

impl Forge for Forgejo {
    fn name(&self) -> &'static str {
        self.rest.name
    }

    fn comment_limit(&self) -> usize {
        COMMENT_LIMIT
    }

    fn comments(&self, issue: u64) -> Result<Vec<Comment>> {
        // Not paginated in Forgejo's API: one answer has them all.
        let path = format!("{}/issues/{issue}/comments", self.rest.repo);
        Ok(self.rest.list(path)?.iter().map(rest::comment).collect())
    }

    fn create_comment(&self, issue: u64, body: &str) -> Result<Comment> {
        self.rest.create_comment(issue, body)
    }

    fn edit_comment(&self, id: u64, body: &str) -> Result<()> {
        self.rest.edit_comment(id, body)
    }

    fn set_status(&self, sha: &str, status: &Status) -> Result<()> {
        self.rest.set_status(sha, status)
    }

    fn pull(&self, number: u64) -> Result<Option<Pull>> {
        self.rest.pull(number)
    }

    fn merged_pull_of(&self, sha: &str) -> Result<Option<Pull>> {
        // Forgejo has no "pull requests of a commit" endpoint: look through
        // the most recently updated closed ones for the merge commit.
        for page in 1..=PULL_PAGES {
            let path = format!(
                "{}/pulls?state=closed&sort=recentupdate&page={page}&limit={PAGE}",
                self.rest.repo
            );
            let pulls = self.rest.pulls(path)?;
            if let Some(p) = pulls
                .iter()
                .find(|p| p.merged && p.merge_commit_sha.as_deref() == Some(sha))
            {
                return Ok(Some(p.clone()));
            }
            if pulls.len() < PAGE {
                break;
            }
        }
        Ok(None)
    }

    fn environment_approvals(&self, _run_id: u64) -> Result<Vec<EnvApproval>> {
        Err(Error::Usage(Message::from("Forgejo has no environment reviews").hint("approve with a `/fleetgate approve` comment on the merged pull request or the promote workflow's Run button")))
    }

    fn open_issues(&self) -> Result<Vec<Issue>> {
        let path = format!(
            "{}/issues?state=open&type=issues&limit={PAGE}&page=",
            self.rest.repo
        );
        self.rest.open_issues(&path, ISSUE_PAGES)
    }

    fn create_issue(&self, title: &str, body: &str) -> Result<Issue> {
        self.rest.create_issue(title, body)
    }

    fn edit_issue(&self, number: u64, title: &str, body: &str) -> Result<()> {
        self.rest.edit_issue(number, title, body)
    }

    fn close_issue(&self, number: u64, comment: &str) -> Result<()> {
        self.rest.close_issue(number, comment)
    }
}
