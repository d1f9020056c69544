//! Forgejo (and Gitea): its own REST API under `/api/v1`, not GitHub's.
//! reqwest with rustls; `Authorization: token …` as the swagger asks.

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    Comment, Env, EnvApproval, Forge, Method, Pull, Request, Response, Status, Token, Transport,
    call, clip,
};
use crate::error::{Error, Result};

/// Forgejo states no comment size limit; its database column may be 64 KiB
/// (MySQL TEXT), so we stay under GitHub's 65536 characters on both.
const COMMENT_LIMIT: usize = 65_536;
/// Pages of closed pull requests searched for the one that merged a commit.
const PULL_PAGES: u32 = 3;
const PAGE: u32 = 50;

pub struct Forgejo {
    http: Http,
    repo: String,
    token: Token,
    token_var: &'static str,
}

struct Http {
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
    api: String,
    auth: String,
    token: Token,
}

impl Transport for Http {
    fn send(&self, req: &Request<'_>) -> std::result::Result<Response, String> {
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
                let headers = resp
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            v.to_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect();
                let body = resp.bytes().await?.to_vec();
                Ok::<_, reqwest::Error>(Response {
                    status,
                    headers,
                    body,
                })
            })
            .map_err(|e| self.token.scrub(&describe(e)))
    }
}

/// reqwest's error with its causes (connection refused, TLS…), without the
/// URL's query.
pub(super) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

impl Forgejo {
    pub fn new(env: &Env) -> Result<Self> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("fleetgate/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Forge(format!("set up the HTTP client: {}", describe(e))))?;
        Ok(Forgejo {
            http: Http {
                client,
                rt: crate::commands::runtime()?,
                api: env.api.clone(),
                auth: format!("token {}", env.token.expose()),
                token: env.token.clone(),
            },
            repo: format!("/repos/{}/{}", env.owner, env.repo),
            token: env.token.clone(),
            token_var: env.token_var,
        })
    }

    fn call(&self, method: Method, path: String, body: Option<&Value>) -> Result<Option<Value>> {
        let req = Request { method, path, body };
        match call("Forgejo", &self.token, self.token_var, &self.http, &req)? {
            None => Ok(None),
            Some(resp) if resp.body.is_empty() => Ok(Some(Value::Null)),
            Some(resp) => resp.json().map(Some),
        }
    }

    fn must(&self, method: Method, path: String, body: Option<&Value>) -> Result<Value> {
        let what = path.clone();
        self.call(method, path, body)?.ok_or_else(|| {
            Error::Forge(format!(
                "Forgejo answered 404 to {what}\n  hint: check GITHUB_REPOSITORY and that the token can see the repository"
            ))
        })
    }
}

pub(super) fn comment(v: &Value) -> Comment {
    Comment {
        id: v["id"].as_u64().unwrap_or_default(),
        user: v["user"]["login"].as_str().unwrap_or_default().to_string(),
        body: v["body"].as_str().unwrap_or_default().to_string(),
        created_at: v["created_at"].as_str().unwrap_or_default().to_string(),
    }
}

pub(super) fn pull(v: &Value) -> Pull {
    Pull {
        number: v["number"].as_u64().unwrap_or_default(),
        merged: v["merged"].as_bool().unwrap_or(false),
        merge_commit_sha: v["merge_commit_sha"].as_str().map(str::to_string),
        head_sha: v["head"]["sha"].as_str().unwrap_or_default().to_string(),
        html_url: v["html_url"].as_str().unwrap_or_default().to_string(),
    }
}

pub(super) fn status_body(status: &Status) -> Value {
    let mut body = json!({
        "context": status.context,
        "state": status.state.as_str(),
        "description": clip(&status.description, 140),
    });
    if let Some(url) = &status.target_url {
        body["target_url"] = json!(url);
    }
    body
}

impl Forge for Forgejo {
    fn name(&self) -> &'static str {
        "Forgejo"
    }

    fn comment_limit(&self) -> usize {
        COMMENT_LIMIT
    }

    fn comments(&self, issue: u64) -> Result<Vec<Comment>> {
        // Not paginated in Forgejo's API: one answer has them all.
        let v = self.must(
            Method::Get,
            format!("{}/issues/{issue}/comments", self.repo),
            None,
        )?;
        Ok(v.as_array()
            .map(|a| a.iter().map(comment).collect())
            .unwrap_or_default())
    }

    fn create_comment(&self, issue: u64, body: &str) -> Result<Comment> {
        let v = self.must(
            Method::Post,
            format!("{}/issues/{issue}/comments", self.repo),
            Some(&json!({ "body": body })),
        )?;
        Ok(comment(&v))
    }

    fn edit_comment(&self, id: u64, body: &str) -> Result<()> {
        self.must(
            Method::Patch,
            format!("{}/issues/comments/{id}", self.repo),
            Some(&json!({ "body": body })),
        )?;
        Ok(())
    }

    fn set_status(&self, sha: &str, status: &Status) -> Result<()> {
        self.must(
            Method::Post,
            format!("{}/statuses/{sha}", self.repo),
            Some(&status_body(status)),
        )?;
        Ok(())
    }

    fn pull(&self, number: u64) -> Result<Option<Pull>> {
        Ok(self
            .call(Method::Get, format!("{}/pulls/{number}", self.repo), None)?
            .map(|v| pull(&v)))
    }

    fn merged_pull_of(&self, sha: &str) -> Result<Option<Pull>> {
        // Forgejo has no "pull requests of a commit" endpoint: look through
        // the most recently updated closed ones for the merge commit.
        for page in 1..=PULL_PAGES {
            let v = self.must(
                Method::Get,
                format!(
                    "{}/pulls?state=closed&sort=recentupdate&page={page}&limit={PAGE}",
                    self.repo
                ),
                None,
            )?;
            let pulls: Vec<Pull> = v
                .as_array()
                .map(|a| a.iter().map(pull).collect())
                .unwrap_or_default();
            if let Some(p) = pulls
                .iter()
                .find(|p| p.merged && p.merge_commit_sha.as_deref() == Some(sha))
            {
                return Ok(Some(p.clone()));
            }
            if pulls.len() < PAGE as usize {
                break;
            }
        }
        Ok(None)
    }

    fn environment_approvals(&self, _run_id: u64) -> Result<Vec<EnvApproval>> {
        Err(Error::Usage(
            "Forgejo has no environment reviews\n  hint: approve with a `/fleetgate approve` comment on the merged pull request or the promote workflow's Run button".into(),
        ))
    }
}
