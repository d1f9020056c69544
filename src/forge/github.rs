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

use super::rest::{self, Rest};
use super::{
    Comment, Env, EnvApproval, Forge, Method, Pull, Request, Response, Status, Token, Transport,
};
use crate::error::{Error, Result};

/// "Body is too long (maximum is 65536 characters)".
const COMMENT_LIMIT: usize = 65_536;
const PER_PAGE: usize = 100;

pub struct Github {
    rest: Rest,
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
                let headers = rest::headers(resp.headers());
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
        let rt = crate::rt::runtime()?;
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
                Error::Forge(
                    format!(
                        "set up the GitHub client: {}",
                        env.token.scrub(&describe(&e))
                    )
                    .into(),
                )
            })?;
        let http = Http {
            octo,
            rt,
            api,
            token: env.token.clone(),
        };
        Ok(Github {
            rest: Rest::new("GitHub", Box::new(http), env),
        })
    }
}

impl Forge for Github {
    fn name(&self) -> &'static str {
        self.rest.name
    }

    fn comment_limit(&self) -> usize {
        COMMENT_LIMIT
    }

    fn comments(&self, issue: u64) -> Result<Vec<Comment>> {
        let mut all = Vec::new();
        for page in 1.. {
            let path = format!(
                "{}/issues/{issue}/comments?per_page={PER_PAGE}&page={page}",
                self.rest.repo
            );
            let batch = self.rest.list(path)?;
            let full = batch.len() == PER_PAGE;
            all.extend(batch.iter().map(rest::comment));
            if !full {
                break;
            }
        }
        Ok(all)
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
        let path = format!("{}/commits/{sha}/pulls", self.rest.repo);
        let merged: Vec<Pull> = self
            .rest
            .list(path)?
            .iter()
            .map(rest::pull)
            .filter(|p| p.merged)
            .collect();
        // The merge (or squash) commit first; after a rebase merge, the pull
        // request that brought the commit in.
        Ok(merged
            .iter()
            .find(|p| p.merge_commit_sha.as_deref() == Some(sha))
            .or(merged.first())
            .cloned())
    }

    fn environment_approvals(&self, run_id: u64) -> Result<Vec<EnvApproval>> {
        let path = format!("{}/actions/runs/{run_id}/approvals", self.rest.repo);
        Ok(self
            .rest
            .list(path)?
            .iter()
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
