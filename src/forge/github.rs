//! GitHub through octocrab (default features off: hyper + rustls with ring,
//! no OpenSSL, no aws-lc). Behind the `github` cargo feature and this one
//! module, so octocrab's generic code is compiled here and nowhere else.
//!
//! octocrab is used as GitHub's HTTP client (auth, user agent, base URI);
//! its raw `_get`/`_post`/`_patch` give us the status and headers, so
//! retries and rate limits are handled in one place for both forges
//! ([`super::call`]).

use std::time::Duration;

use octocrab::Octocrab;
use serde_json::{Value, json};

use super::forgejo::{comment, pull, status_body};
use super::{
    Comment, Env, EnvApproval, Forge, Method, Pull, Request, Response, Status, Token, Transport,
    call,
};
use crate::error::{Error, Result};

/// "Body is too long (maximum is 65536 characters)".
const COMMENT_LIMIT: usize = 65_536;
const PER_PAGE: usize = 100;

pub struct Github {
    http: Http,
    repo: String,
    token: Token,
    token_var: &'static str,
}

struct Http {
    octo: Octocrab,
    rt: tokio::runtime::Runtime,
    api: String,
    token: Token,
}

impl Transport for Http {
    fn send(&self, req: &Request<'_>) -> std::result::Result<Response, String> {
        let uri = format!("{}{}", self.api, req.path);
        self.rt
            .block_on(async {
                let resp = match req.method {
                    Method::Get => self.octo._get(uri).await?,
                    Method::Post => self.octo._post(uri, req.body).await?,
                    Method::Patch => self.octo._patch(uri, req.body).await?,
                };
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
                let body = self.octo.body_to_string(resp).await?.into_bytes();
                Ok::<_, octocrab::Error>(Response {
                    status,
                    headers,
                    body,
                })
            })
            .map_err(|e| self.token.scrub(&describe(&e)))
    }
}

fn describe(e: &octocrab::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

impl Github {
    pub fn new(env: &Env) -> Result<Self> {
        let rt = crate::commands::runtime()?;
        let api = env.api.clone();
        // hyper's client wants to be built inside a runtime.
        let octo = rt
            .block_on(async {
                Octocrab::builder()
                    .base_uri(api.as_str())?
                    .personal_token(env.token.expose().to_string())
                    .set_connect_timeout(Some(Duration::from_secs(10)))
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .build()
            })
            .map_err(|e| {
                Error::Forge(format!(
                    "set up the GitHub client: {}",
                    env.token.scrub(&describe(&e))
                ))
            })?;
        Ok(Github {
            http: Http {
                octo,
                rt,
                api,
                token: env.token.clone(),
            },
            repo: format!("/repos/{}/{}", env.owner, env.repo),
            token: env.token.clone(),
            token_var: env.token_var,
        })
    }

    fn call(&self, method: Method, path: String, body: Option<&Value>) -> Result<Option<Value>> {
        let req = Request { method, path, body };
        match call("GitHub", &self.token, self.token_var, &self.http, &req)? {
            None => Ok(None),
            Some(resp) if resp.body.is_empty() => Ok(Some(Value::Null)),
            Some(resp) => resp.json().map(Some),
        }
    }

    fn must(&self, method: Method, path: String, body: Option<&Value>) -> Result<Value> {
        let what = path.clone();
        self.call(method, path, body)?.ok_or_else(|| {
            Error::Forge(format!(
                "GitHub answered 404 to {what}\n  hint: check GITHUB_REPOSITORY and the job's `permissions:`"
            ))
        })
    }
}

impl Forge for Github {
    fn name(&self) -> &'static str {
        "GitHub"
    }

    fn comment_limit(&self) -> usize {
        COMMENT_LIMIT
    }

    fn comments(&self, issue: u64) -> Result<Vec<Comment>> {
        let mut all = Vec::new();
        for page in 1.. {
            let v = self.must(
                Method::Get,
                format!(
                    "{}/issues/{issue}/comments?per_page={PER_PAGE}&page={page}",
                    self.repo
                ),
                None,
            )?;
            let batch: Vec<Comment> = v
                .as_array()
                .map(|a| a.iter().map(comment).collect())
                .unwrap_or_default();
            let full = batch.len() == PER_PAGE;
            all.extend(batch);
            if !full {
                break;
            }
        }
        Ok(all)
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
        let v = self.must(
            Method::Get,
            format!("{}/commits/{sha}/pulls", self.repo),
            None,
        )?;
        // The list endpoint leaves `merged` out; `merged_at` says it. The
        // merge (or squash) commit first; after a rebase merge, the pull
        // request that brought the commit in.
        let merged: Vec<&Value> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| !p["merged_at"].is_null())
            .collect();
        let found = merged
            .iter()
            .find(|p| p["merge_commit_sha"].as_str() == Some(sha))
            .or(merged.first());
        Ok(found.map(|p| Pull {
            merged: true,
            ..pull(p)
        }))
    }

    fn environment_approvals(&self, run_id: u64) -> Result<Vec<EnvApproval>> {
        let v = self.must(
            Method::Get,
            format!("{}/actions/runs/{run_id}/approvals", self.repo),
            None,
        )?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|a| EnvApproval {
                user: a["user"]["login"].as_str().unwrap_or_default().to_string(),
                environments: a["environments"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["name"].as_str().map(str::to_string))
                    .collect(),
                approved: a["state"].as_str() == Some("approved"),
            })
            .collect())
    }
}
