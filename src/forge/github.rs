//! GitHub through octocrab, behind the `github` cargo feature and this one
//! module, so octocrab's generic code is compiled here and nowhere else.
//!
//! octocrab is used as GitHub's HTTP client (auth, user agent, base URI);
//! its raw `_get`/`_post`/`_patch` give us the status and headers, so
//! retries and rate limits are handled in one place for both forges
//! ([`super::call`]). Its own hyper client (octocrab's default features)
//! cannot be given roots: the one here is hyper-util + hyper-rustls over
//! the TLS config of [`crate::tls`], the same as Forgejo's and the health
//! checks' (ring; no OpenSSL, no aws-lc).

use std::sync::Arc;
use std::time::Duration;

use http::header::{ACCEPT, USER_AGENT};
use http::{HeaderValue, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use octocrab::service::middleware::auth_header::AuthHeaderLayer;
use octocrab::service::middleware::base_uri::BaseUriLayer;
use octocrab::service::middleware::extra_headers::ExtraHeadersLayer;
use octocrab::{AuthState, Octocrab, OctocrabBuilder};

use super::rest::{self, Rest};
use super::{
    Comment, Env, EnvApproval, Forge, Issue, Method, Pull, Request, Response, Status, Token,
    Transport, Unanswered,
};
use crate::error::{Error, Message, Result};

/// "Body is too long (maximum is 65536 characters)".
const COMMENT_LIMIT: usize = 65_536;
const PER_PAGE: usize = 100;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One request, from connecting to the last byte of the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Pages of open issues looked through for fleetgate's own.
const ISSUE_PAGES: u32 = 20;

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
    fn send(&self, req: &Request<'_>) -> std::result::Result<Response, Unanswered> {
        let uri = format!("{}{}", self.api, req.path);
        let answer = async {
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
        };
        match self
            .rt
            .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, answer).await })
        {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(match crate::tls::certificate_problem(&e) {
                Some(why) => Unanswered { why, retry: false },
                None => self.token.scrub(&describe(&e)).into(),
            }),
            Err(_) => Err(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()).into()),
        }
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
        let base: Uri = api.parse().map_err(|e| {
            Error::Usage(format!("the GitHub API URL `{api}` is not a URI: {e}").into())
        })?;
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", env.token.expose())).map_err(|_| {
                Error::Usage(
                    Message::from(format!(
                        "{} holds characters an HTTP header cannot carry",
                        env.token_var
                    ))
                    .hint("give the job's token as the forge issued it"),
                )
            })?;
        auth.set_sensitive(true);
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        // The scheme is the TLS layer's to decide: http:// stays plain (a
        // GitHub Enterprise test stand-in), https:// is verified.
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::config()?.as_ref().clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let headers = vec![
            (
                USER_AGENT,
                HeaderValue::from_static(concat!("fleetgate/", env!("CARGO_PKG_VERSION"))),
            ),
            (
                ACCEPT,
                HeaderValue::from_static("application/vnd.github+json"),
            ),
        ];
        // octocrab's client stack wants to be built inside a runtime.
        let octo = rt.block_on(async {
            let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
            let built = OctocrabBuilder::new_empty()
                .with_service(client)
                .with_layer(&ExtraHeadersLayer::new(Arc::new(headers)))
                .with_layer(&BaseUriLayer::new(base.clone()))
                // Only to the API's own host, should a redirect lead away.
                .with_layer(&AuthHeaderLayer::new(Some(auth), base.clone(), base))
                .with_auth(AuthState::None)
                .build();
            match built {
                Ok(octo) => octo,
                Err(never) => match never {},
            }
        });
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
            .pulls(path)?
            .into_iter()
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

    fn open_issues(&self) -> Result<Vec<Issue>> {
        let path = format!(
            "{}/issues?state=open&direction=asc&per_page={PER_PAGE}&page=",
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
