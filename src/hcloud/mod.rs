//! The Hetzner Cloud API (edge): a small reqwest client over the one trust
//! store (`tls::config`), for the inventory (servers by label selector, a
//! private network by name). Snapshots and restores will add their calls
//! here, over the same [`call`].
//!
//! Not the `hcloud` crate: it hides response headers (so `RateLimit-Reset`
//! could not be honoured), its strict enums fail a whole server list on a
//! value Hetzner adds, and it adds h2, uuid and reqwest features to the
//! whole binary. `api.rs` reads only the fields fleetgate needs.
//!
//! Where and as whom: `HCLOUD_TOKEN` and `HCLOUD_ENDPOINT` (default the
//! public API), as the official `hcloud` CLI reads them. The token lives
//! in a `forge::Token` (prints `***`) and every message is scrubbed of it.
//!
//! Failures ([`call`], over a [`Transport`] and a [`Waiter`] the unit tests
//! fake): 401/403 at once, naming `HCLOUD_TOKEN`; 429 waits until
//! `RateLimit-Reset` (at most [`Policy::max_wait`]) and tries again; 5xx
//! and unanswered requests back off and try again; all bounded by
//! [`Policy::tries`], then [`Error::Cloud`] (exit 3).

pub mod api;

use std::time::Duration;

use crate::deploy::snapshot::{self, SnapshotJob, Snapshotter, Started};
use crate::error::{Error, Message, Result};
use crate::forge::Token;
use crate::inventory::selector::Selector;

pub const TOKEN_VAR: &str = "HCLOUD_TOKEN";
pub const ENDPOINT_VAR: &str = "HCLOUD_ENDPOINT";
pub const DEFAULT_ENDPOINT: &str = "https://api.hetzner.cloud/v1";
/// Hetzner's largest page.
pub const PER_PAGE: u32 = 50;
/// More pages than any project has servers for (50 × 1000): a `next_page`
/// that never ends is the API's fault, not a reason to loop for ever.
const MAX_PAGES: u32 = 1000;

/// Where the API is and the token for it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Checked: http(s), no user info, query or fragment; no trailing `/`.
    pub endpoint: String,
    pub token: Token,
}

impl Settings {
    /// From `HCLOUD_TOKEN` / `HCLOUD_ENDPOINT`; None without a token (an
    /// empty one counts as none). An endpoint that is not an http(s) base
    /// URL is exit 2 naming the variable.
    pub fn from_env() -> Result<Option<Settings>> {
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Settings::new(var(TOKEN_VAR), var(ENDPOINT_VAR))
    }

    pub fn new(token: Option<String>, endpoint: Option<String>) -> Result<Option<Settings>> {
        let endpoint = match endpoint {
            None => DEFAULT_ENDPOINT.to_string(),
            Some(value) => crate::forge::env::url(value.trim()).map_err(|why| {
                Error::Usage(
                    Message::from(format!(
                        "{ENDPOINT_VAR} is {}: {why}",
                        crate::forge::env::shown(&value)
                    ))
                    .hint(format!("leave it unset for {DEFAULT_ENDPOINT}")),
                )
            })?,
        };
        Ok(token.map(|t| Settings {
            endpoint,
            token: Token::new(t.trim().to_string()),
        }))
    }
}

/// One answer of the API, as [`call`] needs it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// `RateLimit-Reset`: when the limit resets, Unix seconds.
    pub reset: Option<u64>,
    pub body: Vec<u8>,
}

/// An HTTP method fleetgate uses on the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// Sends one request (path under the endpoint, query pairs, a JSON body);
/// Err: no answer (connection refused, timeout, TLS), in words, token
/// scrubbed.
pub trait Transport {
    fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&str>,
    ) -> Result<Response, Unanswered>;
}

/// A request that got no answer; `retry` false for what trying again
/// cannot fix (an untrusted certificate).
#[derive(Debug, Clone)]
pub struct Unanswered {
    pub why: Message,
    pub retry: bool,
}

/// The wall clock and waiting, for [`call`]'s waits.
pub trait Waiter {
    fn now_unix(&self) -> u64;
    fn sleep(&self, d: Duration);
}

pub struct SystemWaiter;

impl Waiter for SystemWaiter {
    fn now_unix(&self) -> u64 {
        u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// How hard [`call`] tries.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Tries in all, the first included.
    pub tries: u32,
    /// The longest wait for a rate limit to reset.
    pub max_wait: Duration,
    /// The first backoff after a 5xx or no answer; doubled each time.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            tries: 5,
            max_wait: Duration::from_secs(60),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

/// GET `path` until it answers 2xx, as [`Policy`] allows: the body.
#[cfg(test)]
pub fn call(
    transport: &dyn Transport,
    waiter: &dyn Waiter,
    policy: &Policy,
    token: &Token,
    path: &str,
    query: &[(&str, String)],
) -> Result<Vec<u8>> {
    send(
        transport,
        waiter,
        policy,
        token,
        Method::Get,
        path,
        query,
        None,
    )
}

/// One request until it answers 2xx, as [`Policy`] allows: the body. A
/// POST is tried again only after a 429 (the API did not act on it): after
/// a 5xx or no answer it may have started an action, and a second
/// `create_image` would be a second snapshot.
#[allow(clippy::too_many_arguments)]
pub fn send(
    transport: &dyn Transport,
    waiter: &dyn Waiter,
    policy: &Policy,
    token: &Token,
    method: Method,
    path: &str,
    query: &[(&str, String)],
    body: Option<&str>,
) -> Result<Vec<u8>> {
    let what = format!("{} {path}", method.as_str());
    let once = method == Method::Post;
    let mut backoff = policy.backoff;
    let mut last = String::new();
    let tries = policy.tries.max(1);
    for attempt in 1..=tries {
        let wait = match transport.send(method, path, query, body) {
            Err(e) if !e.retry => {
                return Err(Error::Cloud(Message {
                    text: token.scrub(&format!("Hetzner Cloud ({what}): {}", e.why.text)),
                    hint: e.why.hint.map(|h| token.scrub(&h)),
                }));
            }
            Err(e) if once => {
                return Err(Error::Cloud(Message::from(token.scrub(&format!(
                    "Hetzner Cloud ({what}): no answer: {}; not sent again (it may have been carried out)",
                    e.why.text
                )))));
            }
            Err(e) => {
                last = format!("no answer: {}", token.scrub(&e.why.text));
                backoff
            }
            Ok(r) if (200..300).contains(&r.status) => return Ok(r.body),
            Ok(r) if matches!(r.status, 401 | 403) => {
                return Err(Error::Cloud(
                    Message::from(format!(
                        "Hetzner Cloud refused {TOKEN_VAR} ({what}): {}",
                        token.scrub(&status_words(&r))
                    ))
                    .hint(format!(
                        "set {TOKEN_VAR} to an API token of the project the servers are in (Cloud Console → Security → API tokens); read-only is enough for the inventory"
                    )),
                ));
            }
            Ok(r) if r.status == 429 => {
                last = token.scrub(&status_words(&r));
                let until_reset = r
                    .reset
                    .map(|reset| Duration::from_secs(reset.saturating_sub(waiter.now_unix())));
                // A reset now or past (clocks differ by a second): a short
                // pause rather than a burst.
                until_reset
                    .unwrap_or(backoff)
                    .clamp(Duration::from_millis(200), policy.max_wait)
            }
            Ok(r) if r.status >= 500 && once => {
                return Err(Error::Cloud(Message::from(format!(
                    "Hetzner Cloud ({what}): {}; not sent again (it may have been carried out)",
                    token.scrub(&status_words(&r))
                ))));
            }
            Ok(r) if r.status >= 500 => {
                last = token.scrub(&status_words(&r));
                backoff
            }
            Ok(r) => {
                return Err(Error::Cloud(Message::from(format!(
                    "Hetzner Cloud refused {what}: {}",
                    token.scrub(&status_words(&r))
                ))));
            }
        };
        if attempt < tries {
            tracing::warn!(
                "Hetzner Cloud ({what}): {last}; trying again in {:.1} s ({attempt} of {tries} tries)",
                wait.as_secs_f64()
            );
            waiter.sleep(wait);
            backoff = (backoff * 2).min(policy.max_backoff);
        }
    }
    Err(Error::Cloud(
        Message::from(format!(
            "Hetzner Cloud ({what}): {last} (after {tries} tries)"
        ))
        .hint("see status.hetzner.com; run again later"),
    ))
}

/// `429 rate_limit_exceeded: limit of 3600 requests per hour reached`.
fn status_words(r: &Response) -> String {
    let detail = serde_json::from_slice::<api::ErrorBody>(&r.body)
        .ok()
        .map(|b| format!(" {}: {}", b.error.code, b.error.message))
        .unwrap_or_default();
    format!("{}{detail}", r.status)
}

/// The API client: the inventory's queries over [`call`].
pub struct Client {
    transport: Box<dyn Transport>,
    waiter: Box<dyn Waiter>,
    policy: Policy,
    token: Token,
}

impl Client {
    /// Over reqwest, the real waiter and the default policy.
    pub fn connect(settings: &Settings) -> Result<Client> {
        Ok(Client::over(
            Box::new(Http::new(settings)?),
            Box::new(SystemWaiter),
            Policy::default(),
            settings.token.clone(),
        ))
    }

    pub fn over(
        transport: Box<dyn Transport>,
        waiter: Box<dyn Waiter>,
        policy: Policy,
        token: Token,
    ) -> Client {
        Client {
            transport,
            waiter,
            policy,
            token,
        }
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T> {
        self.request(Method::Get, path, query, None)
    }

    fn request<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        let body = body.map(|b| b.to_string());
        let got = send(
            &*self.transport,
            &*self.waiter,
            &self.policy,
            &self.token,
            method,
            path,
            query,
            body.as_deref(),
        )?;
        serde_json::from_slice(&got).map_err(|e| {
            Error::Cloud(Message::from(format!(
                "Hetzner Cloud ({} {path}): an answer fleetgate cannot read: {e}",
                method.as_str()
            )))
        })
    }

    /// Every server `selector` selects, all pages; each one checked against
    /// the selector here too: an API (or a proxy) that dropped the
    /// selector must never hand the whole project to a deploy.
    pub fn servers(&self, selector: &Selector) -> Result<Vec<api::Server>> {
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let got: api::ServersPage = self.get(
                "/servers",
                &[
                    ("label_selector", selector.to_string()),
                    ("page", page.to_string()),
                    ("per_page", PER_PAGE.to_string()),
                ],
            )?;
            let before = got.servers.len();
            let matching: Vec<api::Server> = got
                .servers
                .into_iter()
                .filter(|s| selector.matches(&s.labels))
                .collect();
            if matching.len() != before {
                tracing::warn!(
                    "Hetzner Cloud answered {} server(s) that `{selector}` does not select (page {page}): left out",
                    before - matching.len()
                );
            }
            out.extend(matching);
            match api::Meta::next_page(&got.meta) {
                Some(next) if next > page && next <= MAX_PAGES => page = next,
                _ => break,
            }
        }
        Ok(out)
    }

    /// Starts a snapshot of server `server`: the new image's id and the
    /// action creating it (wait for it with [`Client::wait`]).
    pub fn create_snapshot(
        &self,
        server: u64,
        description: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<(u64, u64)> {
        let got: api::CreatedImage = self.request(
            Method::Post,
            &format!("/servers/{server}/actions/create_image"),
            &[],
            Some(&serde_json::json!({
                "type": "snapshot",
                "description": description,
                "labels": labels,
            })),
        )?;
        Ok((got.image.id, got.action.id))
    }

    /// Rebuilds server `server` from image `image`: the action's id.
    pub fn rebuild(&self, server: u64, image: u64) -> Result<u64> {
        let got: api::ActionEnvelope = self.request(
            Method::Post,
            &format!("/servers/{server}/actions/rebuild"),
            &[],
            Some(&serde_json::json!({ "image": image.to_string() })),
        )?;
        Ok(got.action.id)
    }

    /// Whether action `id` is done: Ok(true) on `success`, Ok(false) while
    /// it runs; `error` is [`Error::Cloud`] (exit 3) naming it and `what`
    /// it was for.
    pub fn action_done(&self, id: u64, what: &str) -> Result<bool> {
        let got: api::ActionEnvelope = self.get(&format!("/actions/{id}"), &[])?;
        match got.action.status.as_str() {
            "success" => Ok(true),
            "error" => {
                let (code, message) = got
                    .action
                    .error
                    .map(|e| (e.code, e.message))
                    .unwrap_or_default();
                Err(Error::Cloud(
                    Message::from(self.token.scrub(&format!(
                        "Hetzner Cloud: {what} failed (action {id}): {code}: {message}"
                    )))
                    .hint(
                        "see the server's actions in the Cloud Console; run again once it is idle",
                    ),
                ))
            }
            _ => Ok(false),
        }
    }

    /// Polls action `id` every `every` until it succeeds; an action that
    /// ends in `error`, or is still running after `timeout`, is
    /// [`Error::Cloud`] (exit 3) naming it and what it was for.
    pub fn wait(&self, id: u64, what: &str, every: Duration, timeout: Duration) -> Result<()> {
        let mut waited = Duration::ZERO;
        while !self.action_done(id, what)? {
            if waited >= timeout {
                return Err(Error::Cloud(
                    Message::from(format!(
                        "Hetzner Cloud: {what} did not finish within {} s (action {id} still running)",
                        timeout.as_secs(),
                    ))
                    .hint("Hetzner may still finish it: look at the server's actions in the Cloud Console before running again"),
                ));
            }
            self.waiter.sleep(every);
            waited += every;
        }
        Ok(())
    }

    /// The snapshots `selector` selects that were made from server
    /// `server`, all pages, oldest first.
    pub fn snapshots(&self, server: u64, selector: &str) -> Result<Vec<api::Image>> {
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let got: api::ImagesPage = self.get(
                "/images",
                &[
                    ("type", "snapshot".to_string()),
                    ("label_selector", selector.to_string()),
                    ("page", page.to_string()),
                    ("per_page", PER_PAGE.to_string()),
                ],
            )?;
            out.extend(
                got.images
                    .into_iter()
                    .filter(|i| i.created_from.as_ref().is_some_and(|c| c.id == server)),
            );
            match api::Meta::next_page(&got.meta) {
                Some(next) if next > page && next <= MAX_PAGES => page = next,
                _ => break,
            }
        }
        out.sort_by(|a, b| (&a.created, a.id).cmp(&(&b.created, b.id)));
        Ok(out)
    }

    /// Deletes image `id`.
    pub fn delete_image(&self, id: u64) -> Result<()> {
        send(
            &*self.transport,
            &*self.waiter,
            &self.policy,
            &self.token,
            Method::Delete,
            &format!("/images/{id}"),
            &[],
            None,
        )
        .map(drop)
    }

    /// The id of the private network `name`, if it exists.
    pub fn network_id(&self, name: &str) -> Result<Option<u64>> {
        let got: api::NetworksPage = self.get("/networks", &[("name", name.to_string())])?;
        Ok(got
            .networks
            .into_iter()
            .find(|n| n.name == name)
            .map(|n| n.id))
    }
}

/// The deploy's [`Snapshotter`]: snapshots over a [`Client`], servers
/// found by name among those the inventory resolved.
pub struct Snapshots<'a> {
    pub client: &'a Client,
    /// Server name → id, as the inventory resolved them.
    pub ids: std::collections::BTreeMap<String, u64>,
    /// How often an action is polled, and for how long at most.
    pub every: Duration,
    pub timeout: Duration,
}

impl Snapshots<'_> {
    fn id(&self, job: &SnapshotJob) -> std::result::Result<u64, String> {
        self.ids.get(&job.server).copied().ok_or_else(|| {
            format!(
                "server `{}` is not among the Hetzner Cloud servers resolved for this deploy",
                job.server
            )
        })
    }
}

impl Snapshotter for Snapshots<'_> {
    fn start(&self, job: &SnapshotJob) -> std::result::Result<Started, String> {
        let server = self.id(job)?;
        let (image, action) = self
            .client
            .create_snapshot(server, &job.description, &job.labels)
            .map_err(|e| e.to_string())?;
        Ok(Started { image, action })
    }

    fn done(&self, job: &SnapshotJob, started: Started) -> std::result::Result<bool, String> {
        self.client
            .action_done(
                started.action,
                &format!("the snapshot of `{}` (image {})", job.server, started.image),
            )
            .map_err(|e| e.to_string())
    }

    fn keep(&self, job: &SnapshotJob, image: u64) -> Vec<u64> {
        // fleetgate's snapshots of this client made from this server, the
        // newest `keep` kept. A failed clean-up is a warning: the snapshot
        // the deploy needs exists.
        let Ok(server) = self.id(job) else {
            return Vec::new();
        };
        let client = job
            .labels
            .get(snapshot::LABEL_CLIENT)
            .cloned()
            .unwrap_or_default();
        let mut deleted = Vec::new();
        match self.client.snapshots(server, &snapshot::selector(&client)) {
            Ok(images) => {
                let ids: Vec<u64> = images
                    .iter()
                    .map(|i| i.id)
                    .filter(|&i| i != image)
                    .chain([image])
                    .collect();
                for old in snapshot::to_delete(&ids, job.keep) {
                    match self.client.delete_image(old) {
                        Ok(()) => deleted.push(old),
                        Err(e) => tracing::warn!(
                            "{}: could not delete old snapshot {old}: {e}",
                            job.server
                        ),
                    }
                }
            }
            Err(e) => tracing::warn!("{}: could not list old snapshots: {e}", job.server),
        }
        deleted
    }

    fn pacing(&self) -> (Duration, Duration) {
        (self.every, self.timeout)
    }
}

/// reqwest over `tls::config`, on its own current-thread runtime.
struct Http {
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
    endpoint: String,
    auth: String,
    token: Token,
}

impl Http {
    fn new(settings: &Settings) -> Result<Http> {
        let client = crate::tls::api_client(Error::Cloud)?;
        Ok(Http {
            client,
            rt: crate::rt::runtime()?,
            endpoint: settings.endpoint.trim_end_matches('/').to_string(),
            auth: format!("Bearer {}", settings.token.expose()),
            token: settings.token.clone(),
        })
    }
}

impl Transport for Http {
    fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&str>,
    ) -> Result<Response, Unanswered> {
        let url = format!("{}{path}", self.endpoint);
        let m = match method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut request = self
            .client
            .request(m, &url)
            .query(query)
            .header("authorization", &self.auth)
            .header("accept", "application/json");
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let rt = &self.rt;
        let run = move || {
            rt.block_on(async {
                let resp = request.send().await?;
                let status = resp.status().as_u16();
                let reset = resp
                    .headers()
                    .get("ratelimit-reset")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok());
                let body = resp.bytes().await?.to_vec();
                Ok::<_, reqwest::Error>(Response {
                    status,
                    reset,
                    body,
                })
            })
        };
        // Inside another runtime (a deploy's snapshot), block on ours on a
        // thread of its own: tokio refuses nested `block_on`.
        let result = if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| s.spawn(run).join())
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        } else {
            run()
        };
        result.map_err(|e| match crate::tls::certificate_problem(&e) {
            Some(why) => Unanswered { why, retry: false },
            None => Unanswered {
                why: self.token.scrub(&crate::tls::describe(e)).into(),
                retry: true,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    use super::*;

    /// Answers from a script; records what was asked.
    #[derive(Default, Clone)]
    struct Scripted {
        answers: Rc<RefCell<VecDeque<Result<Response, Unanswered>>>>,
        asked: Rc<RefCell<Vec<String>>>,
    }

    impl Transport for Scripted {
        fn send(
            &self,
            method: Method,
            path: &str,
            query: &[(&str, String)],
            body: Option<&str>,
        ) -> Result<Response, Unanswered> {
            let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let prefix = match method {
                Method::Get => String::new(),
                m => format!("{} ", m.as_str()),
            };
            let body = body.map(|b| format!(" {b}")).unwrap_or_default();
            self.asked
                .borrow_mut()
                .push(format!("{prefix}{path}?{}{body}", q.join("&")));
            self.answers
                .borrow_mut()
                .pop_front()
                .expect("a scripted answer")
        }
    }

    /// A clock that moves only when slept.
    #[derive(Default, Clone)]
    struct FakeWaiter {
        now: Rc<RefCell<u64>>,
        slept: Rc<RefCell<Vec<Duration>>>,
    }

    impl Waiter for FakeWaiter {
        fn now_unix(&self) -> u64 {
            *self.now.borrow()
        }
        fn sleep(&self, d: Duration) {
            *self.now.borrow_mut() += d.as_secs();
            self.slept.borrow_mut().push(d);
        }
    }

    const TOKEN: &str = "hc-secret-token-123";

    fn ok(body: &str) -> Result<Response, Unanswered> {
        Ok(Response {
            status: 200,
            reset: None,
            body: body.as_bytes().to_vec(),
        })
    }

    fn status(code: u16, reset: Option<u64>) -> Result<Response, Unanswered> {
        Ok(Response {
            status: code,
            reset,
            body: format!(
                r#"{{"error": {{"code": "c{code}", "message": "token {TOKEN} went wrong"}}}}"#
            )
            .into_bytes(),
        })
    }

    fn refused() -> Result<Response, Unanswered> {
        Err(Unanswered {
            why: "connection refused".into(),
            retry: true,
        })
    }

    /// A name, the answers in order, what comes of them, the sleeps (ms).
    type Case = (
        &'static str,
        Vec<Result<Response, Unanswered>>,
        Result<(), &'static str>,
        Vec<u64>,
    );

    /// Each script: what [`call`] returns (Ok or the words of its error)
    /// and how long it slept in between.
    #[test]
    fn the_retry_policy() {
        let t0 = 1_000_000;
        let cases: Vec<Case> = vec![
            ("at once", vec![ok("{}")], Ok(()), vec![]),
            (
                "401: at once, naming the variable",
                vec![status(401, None)],
                Err("refused HCLOUD_TOKEN (GET /servers): 401 c401"),
                vec![],
            ),
            (
                "403 too",
                vec![status(403, None)],
                Err("refused HCLOUD_TOKEN"),
                vec![],
            ),
            (
                "429: until RateLimit-Reset",
                vec![status(429, Some(t0 + 7)), ok("{}")],
                Ok(()),
                vec![7_000],
            ),
            (
                "429: a far reset is capped",
                vec![status(429, Some(t0 + 3600)), ok("{}")],
                Ok(()),
                vec![60_000],
            ),
            (
                "429: a reset already past is a short pause",
                vec![status(429, Some(t0 - 5)), ok("{}")],
                Ok(()),
                vec![200],
            ),
            (
                "5xx and no answer: backoff, doubled",
                vec![status(502, None), refused(), status(503, None), ok("{}")],
                Ok(()),
                vec![500, 1_000, 2_000],
            ),
            (
                "bounded: five tries",
                vec![
                    status(503, None),
                    status(503, None),
                    status(503, None),
                    status(503, None),
                    status(503, None),
                ],
                Err("503 c503: token *** went wrong (after 5 tries)"),
                vec![500, 1_000, 2_000, 4_000],
            ),
            (
                "429 every time: bounded too",
                (0..5).map(|_| status(429, Some(t0 + 1))).collect(),
                Err("429 c429"),
                vec![1_000, 200, 200, 200],
            ),
            (
                "another 4xx: not retried",
                vec![status(422, None)],
                Err("refused GET /servers: 422"),
                vec![],
            ),
            (
                "an untrusted certificate: not retried",
                vec![Err(Unanswered {
                    why: "its TLS certificate is not trusted".into(),
                    retry: false,
                })],
                Err("not trusted"),
                vec![],
            ),
        ];
        for (name, script, expect, sleeps) in cases {
            let transport = Scripted::default();
            *transport.answers.borrow_mut() = script.into();
            let waiter = FakeWaiter::default();
            *waiter.now.borrow_mut() = t0;
            let got = call(
                &transport,
                &waiter,
                &Policy::default(),
                &Token::new(TOKEN.into()),
                "/servers",
                &[],
            );
            match (&got, expect) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(want)) => {
                    let text = e.to_string();
                    assert!(text.contains(want), "{name}: {text}");
                    assert!(!text.contains(TOKEN), "{name}: the token printed: {text}");
                    assert_eq!(e.exit_code(), crate::error::ExitCode::Infra, "{name}");
                }
                _ => panic!("{name}: {got:?}"),
            }
            let slept: Vec<u64> = waiter
                .slept
                .borrow()
                .iter()
                .map(|d| d.as_millis() as u64)
                .collect();
            assert_eq!(slept, sleeps, "{name}");
            assert!(transport.answers.borrow().is_empty(), "{name}: tries left");
        }
    }

    fn page(names: &[(&str, &str)], next: Option<u32>) -> Result<Response, Unanswered> {
        let servers: Vec<serde_json::Value> = names
            .iter()
            .enumerate()
            .map(|(i, (n, client))| {
                serde_json::json!({"id": i, "name": n, "status": "running", "labels": {"client": client},
                    "public_net": {"ipv4": {"ip": "192.0.2.1"}}, "private_net": []})
            })
            .collect();
        ok(
            &serde_json::json!({"servers": servers, "meta": {"pagination": {"next_page": next}}})
                .to_string(),
        )
    }

    #[test]
    fn servers_are_read_page_by_page_and_checked_against_the_selector() {
        let transport = Scripted::default();
        *transport.answers.borrow_mut() = vec![
            page(&[("a-1", "alpha"), ("b-1", "beta")], Some(2)),
            page(&[("a-2", "alpha")], None),
        ]
        .into();
        let client = Client::over(
            Box::new(transport.clone()),
            Box::new(FakeWaiter::default()),
            Policy::default(),
            Token::new(TOKEN.into()),
        );
        let servers = client
            .servers(&Selector::parse("client=alpha").unwrap())
            .unwrap();
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        // b-1: answered by an API that ignored the selector; never deployed to.
        assert_eq!(names, ["a-1", "a-2"]);
        assert_eq!(
            *transport.asked.borrow(),
            [
                "/servers?label_selector=client=alpha&page=1&per_page=50",
                "/servers?label_selector=client=alpha&page=2&per_page=50"
            ]
        );
    }

    fn client_over(answers: Vec<Result<Response, Unanswered>>) -> (Client, Scripted, FakeWaiter) {
        let transport = Scripted::default();
        *transport.answers.borrow_mut() = answers.into();
        let waiter = FakeWaiter::default();
        let client = Client::over(
            Box::new(transport.clone()),
            Box::new(waiter.clone()),
            Policy::default(),
            Token::new(TOKEN.into()),
        );
        (client, transport, waiter)
    }

    fn action(status: &str) -> Result<Response, Unanswered> {
        ok(&serde_json::json!({"action": {"id": 9, "status": status,
            "error": if status == "error" { serde_json::json!({"code": "image_create_failed", "message": "disk busy"}) } else { serde_json::Value::Null }}}).to_string())
    }

    #[test]
    fn a_snapshot_is_created_and_waited_for_and_an_error_or_a_timeout_is_exit_3() {
        let created = ok(
            r#"{"image": {"id": 77, "created": "2026-01-01T00:00:00+00:00"}, "action": {"id": 9, "status": "running"}}"#,
        );
        let (client, transport, waiter) = client_over(vec![
            created,
            action("running"),
            action("running"),
            action("success"),
        ]);
        let labels = [("fleetgate/client".to_string(), "alpha".to_string())].into();
        assert_eq!(
            client.create_snapshot(5, "before", &labels).unwrap(),
            (77, 9)
        );
        let every = Duration::from_secs(1);
        client
            .wait(9, "the snapshot", every, Duration::from_secs(60))
            .unwrap();
        assert_eq!(waiter.slept.borrow().len(), 2);
        assert_eq!(
            transport.asked.borrow()[0],
            r#"POST /servers/5/actions/create_image? {"type":"snapshot","description":"before","labels":{"fleetgate/client":"alpha"}}"#
        );

        let (client, ..) = client_over(vec![action("error")]);
        let e = client
            .wait(9, "the snapshot", every, Duration::from_secs(60))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("the snapshot failed (action 9): image_create_failed: disk busy"),
            "{e}"
        );
        assert_eq!(e.exit_code(), crate::error::ExitCode::Infra);

        let (client, ..) = client_over((0..4).map(|_| action("running")).collect());
        let e = client
            .wait(9, "the snapshot", every, Duration::from_secs(3))
            .unwrap_err();
        assert!(e.to_string().contains("did not finish within 3 s"), "{e}");
        assert_eq!(e.exit_code(), crate::error::ExitCode::Infra);
    }

    #[test]
    fn a_post_is_not_sent_again_after_a_5xx_but_is_after_a_429() {
        let (client, transport, _) = client_over(vec![status(503, None)]);
        let e = client.rebuild(5, 77).unwrap_err();
        assert!(e.to_string().contains("not sent again"), "{e}");
        assert_eq!(transport.asked.borrow().len(), 1);
        let (client, transport, _) = client_over(vec![status(429, Some(1)), action("running")]);
        assert_eq!(client.rebuild(5, 77).unwrap(), 9);
        assert_eq!(transport.asked.borrow().len(), 2);
    }

    #[test]
    fn snapshots_are_those_of_the_server_oldest_first() {
        let page = ok(r#"{"images": [
            {"id": 3, "created": "2026-01-03T00:00:00+00:00", "created_from": {"id": 5, "name": "a"}},
            {"id": 1, "created": "2026-01-01T00:00:00+00:00", "created_from": {"id": 5, "name": "a"}},
            {"id": 2, "created": "2026-01-02T00:00:00+00:00", "created_from": {"id": 6, "name": "b"}}
        ], "meta": {"pagination": {"next_page": null}}}"#);
        let (client, transport, _) = client_over(vec![page, ok("")]);
        let ids: Vec<u64> = client
            .snapshots(5, "fleetgate/client=alpha")
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, [1, 3]);
        client.delete_image(1).unwrap();
        assert_eq!(
            *transport.asked.borrow(),
            [
                "/images?type=snapshot&label_selector=fleetgate/client=alpha&page=1&per_page=50",
                "DELETE /images/1?"
            ]
        );
    }

    #[test]
    fn the_endpoint_is_checked_like_a_forge_url() {
        let s = Settings::new(Some("t".into()), None).unwrap().unwrap();
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert!(Settings::new(None, None).unwrap().is_none());
        for bad in [
            "ftp://x/v1",
            "https://user:hunter2@x/v1",
            "https://x/v1?a=1",
            "not a url",
        ] {
            let e = Settings::new(Some("t".into()), Some(bad.into())).unwrap_err();
            assert!(e.to_string().contains("HCLOUD_ENDPOINT is"), "{bad}: {e}");
            assert_eq!(e.exit_code(), crate::error::ExitCode::Invalid);
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let local = Settings::new(Some("t".into()), Some("http://127.0.0.1:8080/v1".into()))
            .unwrap()
            .unwrap();
        assert_eq!(local.endpoint, "http://127.0.0.1:8080/v1");
    }
}
