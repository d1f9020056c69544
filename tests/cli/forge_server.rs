//! A local stand-in for the Forgejo and GitHub REST APIs, for integration
//! tests of fleetgate's forge clients (reqwest to Forgejo, octocrab to
//! GitHub). The real APIs cannot be reached from the tests.
//!
//! It keeps the state those clients touch (issue comments, commit statuses,
//! pull requests, environment approvals) and, before touching it, validates
//! every request against the published description of the API:
//!
//! - Forgejo: the swagger 2.0 file `shared/api/forgejo-swagger.json`, read at
//!   run time. It is third-party data: it stays in `shared/` and must never be
//!   copied into this repository. When it is absent, `forgejo_fallback()`, a
//!   small hand-written description of the endpoints fleetgate uses, applies.
//! - GitHub: no description file is available here; `github_description()`
//!   transcribes the shapes documented on docs.github.com, one entry per
//!   operation with its page, in the same swagger form so one validator
//!   serves both.
//!
//! What is checked, in order: the route (no such path: 404; a path the API
//! has but not with this method: 405 on Forgejo, 404 on GitHub as GitHub
//! does); an operation the API has but the stand-in does not implement (501:
//! fleetgate should not call it); path parameter types; the query (every name
//! declared, types, enums, date-times); Content-Type and the JSON body against
//! its schema (`$ref`s resolved, required properties, types, enums, lengths).
//!
//! Deliberately stricter than the real servers: both ignore query parameters
//! and body properties they do not declare. A name fleetgate sends that the
//! API does not declare is a typo or a misunderstanding that the real server
//! would silently drop, so here it is refused (400 / 422) and the test fails.
//!
//! Every such refusal is recorded in [`ForgeServer::rejected`]; tests assert it
//! is empty. Authentication failures, injected failures (`fail_next`,
//! `rate_limit_next`) and answers that depend on state (404 for an absent
//! comment or pull request, or another repository) are answered as the real
//! API would but not recorded there: tests provoke them on purpose.
//!
//! Auth: `Authorization: token <T>` or `Bearer <T>` with the one valid
//! token, whose user is the bot; else 401 with each API's message.
//!
//! HTTP (`http_stub.rs`, shared with the Hetzner stand-in): HTTP/1.1 on
//! `std::net::TcpListener`, one thread per connection, one request per
//! connection answered with `Content-Length` and `Connection: close`; request
//! bodies by `Content-Length` or chunked, up to 256 MiB.
//! [`ForgeServer::start_tls`] serves the same over TLS (rustls, a
//! certificate the test made): a handshake the client gives up — it does
//! not trust the certificate — is recorded in
//! [`ForgeServer::handshake_failures`], and no request is read.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::http_stub::{
    self, HttpRequest, Loopback, Reply, Resp, parse_query, pct_decode, query_value,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Forgejo,
    Github,
}

#[derive(Clone, Debug)]
pub struct Comment {
    pub id: u64,
    pub issue: u64,
    pub user: String,
    pub body: String,
    pub created_at: String,
    pub updated_at: String,
}

/// An issue (not a pull request): open or closed, its comments are in
/// `comments` like a pull request's.
#[derive(Clone, Debug)]
pub struct Issue {
    pub number: u64,
    pub user: String,
    pub title: String,
    pub body: String,
    pub open: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug)]
pub struct Status {
    pub sha: String,
    pub context: String,
    pub state: String,
    pub description: String,
    pub target_url: String,
}

/// One request as received, and the status it was answered with.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    /// The request target: path and query.
    pub path: String,
    pub status: u16,
    pub authorization: Option<String>,
    pub body: String,
}

pub struct ForgeServer {
    shared: Arc<Shared>,
    http: Loopback,
}

struct Shared {
    state: Mutex<State>,
    api: &'static Api,
    /// Served over TLS with this config, when set.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl ForgeServer {
    /// Serves the API of `flavor` for repository `owner/repo`; `token` is the
    /// only valid token; its user is `bot` (comments created through the API
    /// are by `bot`).
    pub fn start(flavor: Flavor, owner: &str, repo: &str, token: &str, bot: &str) -> ForgeServer {
        let api = match flavor {
            Flavor::Forgejo => forgejo_api(),
            Flavor::Github => github_api(),
        };
        ForgeServer::start_with(api, flavor, owner, repo, token, bot, None)
    }

    /// [`ForgeServer::start`] over TLS: https://127.0.0.1:PORT with the
    /// certificate of `tls`.
    pub fn start_tls(
        flavor: Flavor,
        owner: &str,
        repo: &str,
        token: &str,
        bot: &str,
        tls: Arc<rustls::ServerConfig>,
    ) -> ForgeServer {
        let api = match flavor {
            Flavor::Forgejo => forgejo_api(),
            Flavor::Github => github_api(),
        };
        ForgeServer::start_with(api, flavor, owner, repo, token, bot, Some(tls))
    }

    fn start_with(
        api: &'static Api,
        flavor: Flavor,
        owner: &str,
        repo: &str,
        token: &str,
        bot: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> ForgeServer {
        let listener = http_stub::bind("forge");
        let port = listener.local_addr().unwrap().port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = State {
            flavor,
            base: format!("{scheme}://127.0.0.1:{port}"),
            owner: owner.to_string(),
            repo: repo.to_string(),
            token: token.to_string(),
            bot: bot.to_string(),
            users: vec![bot.to_string()],
            environments: Vec::new(),
            // Comment and status ids start far from issue numbers, so that a
            // client mixing the two up hits a 404 instead of passing by luck.
            next_id: 10_001,
            comments: Vec::new(),
            statuses: Vec::new(),
            pulls: BTreeMap::new(),
            issues: BTreeMap::new(),
            approvals: Vec::new(),
            releases: Vec::new(),
            fail: None,
            rate_limited: 0,
            log: Vec::new(),
            rejected: Vec::new(),
            handshake_failures: Vec::new(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            api,
            tls,
        });
        let serving = Arc::clone(&shared);
        let http = Loopback::serve(listener, move |stream| connection(&serving, stream));
        ForgeServer { shared, http }
    }

    /// http://127.0.0.1:PORT, or https:// over TLS (the web/server URL;
    /// GITHUB_SERVER_URL).
    pub fn url(&self) -> String {
        self.lock().base.clone()
    }

    /// The API base: Forgejo `url()+"/api/v1"`, GitHub `url()` (GitHub's API
    /// is at the root like https://api.github.com).
    pub fn api_url(&self) -> String {
        format!("{}{}", self.url(), self.shared.api.base_path)
    }

    /// A pull request. `merge_commit_sha` set + merged=true means merged.
    pub fn add_pull(
        &self,
        number: u64,
        head_sha: &str,
        base_sha: &str,
        merged: bool,
        merge_commit_sha: Option<&str>,
    ) {
        let pull = Pull {
            number,
            head_sha: head_sha.to_string(),
            base_sha: base_sha.to_string(),
            merged,
            merge_commit_sha: merge_commit_sha.map(str::to_string),
            created_at: now(),
        };
        self.lock().pulls.insert(number, pull);
    }

    /// A comment by a human (as the web UI would create it), created now.
    /// The issue then exists, as do the numbers given to `add_pull`.
    pub fn add_comment(&self, issue: u64, user: &str, body: &str) -> Comment {
        self.lock().new_comment(issue, user, body)
    }

    /// GitHub only: an environment deployment review on workflow run
    /// `run_id` (state "approved" or "rejected").
    pub fn add_run_approval(
        &self,
        run_id: u64,
        user: &str,
        environment: &str,
        state: &str,
        comment: &str,
    ) {
        let mut st = self.lock();
        assert_eq!(
            st.flavor,
            Flavor::Github,
            "run approvals exist on GitHub only"
        );
        st.approvals.push(Approval {
            run_id,
            user: user.to_string(),
            environment: environment.to_string(),
            state: state.to_string(),
            comment: comment.to_string(),
            at: now(),
        });
    }

    /// The next `count` requests (any endpoint) are answered with `status`
    /// and an HTML body, as a reverse proxy gives, without touching state.
    pub fn fail_next(&self, status: u16, count: usize) {
        self.lock().fail = (count > 0).then_some((status, count));
    }

    /// The next `count` requests hit the rate limit (GitHub: 403 with
    /// `x-ratelimit-remaining: 0`; Forgejo: 429), both with `Retry-After: 1`.
    pub fn rate_limit_next(&self, count: usize) {
        self.lock().rate_limited = count;
    }

    /// The comments on `issue`, in creation order.
    /// Every issue, open and closed, by number.
    pub fn issues(&self) -> Vec<Issue> {
        self.lock().issues.values().cloned().collect()
    }

    /// An issue opened by `user` (a person's, or an old one of the bot's).
    pub fn add_issue(&self, user: &str, title: &str, body: &str) -> Issue {
        let mut state = self.lock();
        state.new_issue(user, title, body)
    }

    pub fn comments(&self, issue: u64) -> Vec<Comment> {
        self.lock()
            .comments
            .iter()
            .filter(|c| c.issue == issue)
            .cloned()
            .collect()
    }

    /// Every status posted for `sha`, in creation order.
    pub fn statuses(&self, sha: &str) -> Vec<Status> {
        self.lock()
            .statuses
            .iter()
            .filter(|s| s.status.sha == sha)
            .map(|s| s.status.clone())
            .collect()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// Requests refused by validation, each "METHOD /path: reason".
    pub fn rejected(&self) -> Vec<String> {
        self.lock().rejected.clone()
    }

    /// TLS handshakes that failed, each as rustls words it (the client's
    /// alert, e.g. `received fatal alert: UnknownCA`).
    pub fn handshake_failures(&self) -> Vec<String> {
        self.lock().handshake_failures.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

impl Drop for ForgeServer {
    fn drop(&mut self) {
        // What fleetgate sent, for the leak scan; not the Authorization
        // header, which carries the token by design.
        let sent: String = self
            .lock()
            .log
            .iter()
            .map(|r| format!("{} {} -> {}\n{}\n", r.method, r.path, r.status, r.body))
            .collect();
        crate::leakscan::capture("forge-requests", sent.as_bytes());
        self.http.stop();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        http_stub::lock(&self.state)
    }
}

// ---------------------------------------------------------------------------
// API descriptions

const SWAGGER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/api/forgejo-swagger.json"
);

/// An API description in swagger 2.0 form (`basePath`, `paths`,
/// `definitions`): the Forgejo swagger, its fallback, or the GitHub table.
struct Api {
    /// "/api/v1" for Forgejo, "" for GitHub.
    base_path: String,
    paths: Map<String, Value>,
    definitions: Map<String, Value>,
    /// Where the description comes from, for rejection reasons.
    source: &'static str,
    /// Forgejo is written in Go, whose JSON decoder takes `null` for an
    /// optional field as "not given": accept it there. GitHub's table says
    /// explicitly which fields are nullable.
    null_is_absent: bool,
}

/// A matched path: its template, its path item, its path parameters.
type Route<'a> = (&'a str, &'a Map<String, Value>, BTreeMap<String, String>);

fn forgejo_api() -> &'static Api {
    static API: OnceLock<Option<Api>> = OnceLock::new();
    let swagger = API.get_or_init(|| {
        let text = std::fs::read_to_string(SWAGGER).ok()?;
        let doc = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{SWAGGER}: {e}"));
        Some(Api::new(doc, "the Forgejo swagger", true))
    });
    swagger.as_ref().unwrap_or_else(forgejo_fallback_api)
}

fn forgejo_fallback_api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        Api::new(
            forgejo_fallback(),
            "the stand-in's fallback Forgejo description",
            true,
        )
    })
}

fn github_api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| Api::new(github_description(), "the stand-in's GitHub table", false))
}

impl Api {
    fn new(doc: Value, source: &'static str, null_is_absent: bool) -> Api {
        let object = |key: &str| {
            doc.get(key)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let mut definitions = object("definitions");
        // Gap in the swagger: `CommitStatusState` is a bare string there, its
        // values only named in prose. These are Forgejo's constants
        // (modules/structs/commit_status.go), the same list the swagger gives
        // as the enum of the `state` query of GET .../statuses/{sha}.
        if let Some(def) = definitions.get_mut("CommitStatusState")
            && def.get("enum").is_none()
        {
            def["enum"] = json!(["pending", "success", "error", "failure", "warning"]);
        }
        let base_path = doc
            .get("basePath")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim_end_matches('/')
            .to_string();
        Api {
            base_path,
            paths: object("paths"),
            definitions,
            source,
            null_is_absent,
        }
    }

    /// The path template matching `path` (relative to the base path), its
    /// path item and its parameters. Where several match, literal segments
    /// win over `{params}`, position by position, as in Forgejo's router.
    fn route(&self, path: &str) -> Option<Route<'_>> {
        let segs: Vec<&str> = path.split('/').skip(1).collect();
        let mut best: Option<(Vec<u8>, Route)> = None;
        'templates: for (template, item) in &self.paths {
            let tsegs: Vec<&str> = template.split('/').skip(1).collect();
            let Some(item) = item.as_object().filter(|_| tsegs.len() == segs.len()) else {
                continue;
            };
            let (mut rank, mut params) = (Vec::new(), BTreeMap::new());
            for (t, s) in tsegs.iter().zip(&segs) {
                let rank_here = if !t.contains('{') {
                    if t != s {
                        continue 'templates;
                    }
                    2
                } else if let Some(name) = t
                    .strip_prefix('{')
                    .and_then(|t| t.strip_suffix('}'))
                    .filter(|n| !n.contains('{'))
                {
                    if s.is_empty() {
                        continue 'templates;
                    }
                    params.insert(name.to_string(), pct_decode(s, false));
                    0
                } else {
                    // A mixed segment such as `{index}.{diffType}`: its literal
                    // parts must appear. Only unimplemented operations have
                    // these, so their parameters are not needed.
                    let literals = t.split(['{', '}']).step_by(2).filter(|l| !l.is_empty());
                    if !literals.clone().all(|l| s.contains(l)) {
                        continue 'templates;
                    }
                    1
                };
                rank.push(rank_here);
            }
            if best.as_ref().is_none_or(|b| rank > b.0) {
                best = Some((rank, (template, item, params)));
            }
        }
        best.map(|(_, route)| route)
    }

    /// Checks path parameters, query and body against operation `op`;
    /// returns the parsed body, if the operation takes one.
    fn check(
        &self,
        flavor: Flavor,
        op: &Value,
        path_params: &BTreeMap<String, String>,
        query: &[(String, String)],
        req: &HttpRequest,
    ) -> Result<Option<Value>, Box<Refusal>> {
        let empty = Vec::new();
        let params = op
            .get("parameters")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        let declared = |kind: &'static str| params.iter().filter(move |p| p["in"] == kind);

        for p in declared("path") {
            let name = p["name"].as_str().unwrap_or("");
            let value = path_params.get(name).map(String::as_str).unwrap_or("");
            if let Err(why) = check_scalar(p, value) {
                // Forgejo's binding answers 422; GitHub's router just finds no
                // such resource.
                let status = if flavor == Flavor::Forgejo { 422 } else { 404 };
                return Err(Refusal::invalid(
                    status,
                    format!("path parameter {name}: {why}"),
                ));
            }
        }

        for (name, value) in query {
            let Some(p) = declared("query").find(|p| p["name"] == name.as_str()) else {
                return Err(Refusal::invalid(
                    400,
                    format!(
                        "query parameter {name:?} is not declared for this operation in {}",
                        self.source
                    ),
                ));
            };
            let repeats = query.iter().filter(|(n, _)| n == name).count();
            if repeats > 1 && p["type"] != "array" {
                return Err(Refusal::invalid(
                    400,
                    format!("query parameter {name} given {repeats} times"),
                ));
            }
            check_scalar(p, value).map_err(|why| {
                Refusal::invalid(400, format!("query parameter {name}={value:?}: {why}"))
            })?;
        }
        for p in declared("query").filter(|p| p["required"] == true) {
            if !query.iter().any(|(n, _)| p["name"] == n.as_str()) {
                return Err(Refusal::invalid(
                    400,
                    format!("missing required query parameter {}", p["name"]),
                ));
            }
        }

        if declared("formData").next().is_some() {
            return check_form(params, req).map(Some);
        }
        let Some(body_param) = declared("body").next() else {
            if !req.body.is_empty() {
                return Err(Refusal::invalid(
                    400,
                    "a request body on an operation that takes none".into(),
                ));
            }
            return Ok(None);
        };
        // GitHub answers unparsable JSON with 400 "Problems parsing JSON";
        // Forgejo's JSON binding with 422.
        let (bad_json, bad_message) = match flavor {
            Flavor::Forgejo => (422, None),
            Flavor::Github => (400, Some("Problems parsing JSON")),
        };
        let content_type = req.header("content-type").unwrap_or("");
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if !media_type.eq_ignore_ascii_case("application/json") {
            return Err(Refusal::invalid(
                bad_json,
                format!("Content-Type {content_type:?}, expected application/json"),
            )
            .message_opt(bad_message));
        }
        let body: Value = serde_json::from_slice(&req.body).map_err(|e| {
            Refusal::invalid(bad_json, format!("body is not JSON: {e}")).message_opt(bad_message)
        })?;
        if let Some(schema) = body_param.get("schema") {
            self.check_value(schema, &body, "body", "")?;
        }
        Ok(Some(body))
    }

    /// Checks `value` (at JSON path `at`) against `schema`; `resource` names
    /// the object for GitHub's 422 `errors` entries.
    fn check_value(
        &self,
        schema: &Value,
        value: &Value,
        at: &str,
        resource: &str,
    ) -> Result<(), Box<Refusal>> {
        let schema = self.resolve(schema)?;
        let fail = |why: String| Err(Refusal::invalid(422, format!("{at}: {why}")));
        let ok = match schema.get("type") {
            Some(Value::String(t)) => type_ok(t, value),
            Some(Value::Array(ts)) => ts.iter().any(|t| type_ok(t.as_str().unwrap_or(""), value)),
            _ => true,
        };
        if !ok {
            return fail(format!(
                "expected type {}, got {}",
                schema["type"],
                brief(value)
            ));
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !value.is_null()
            && !allowed.contains(value)
        {
            return fail(format!(
                "{} is not one of {}",
                brief(value),
                Value::Array(allowed.clone())
            ));
        }
        if let Some(s) = value.as_str() {
            if schema["format"] == "date-time" && chrono::DateTime::parse_from_rfc3339(s).is_err() {
                return fail(format!("{} is not an RFC 3339 date-time", brief(value)));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && s.chars().count() as u64 > max
            {
                let field = at.rsplit('.').next().unwrap_or(at);
                let message = format!("{field} is too long (maximum is {max} characters)");
                let error = json!([{ "resource": resource, "code": "custom", "field": field, "message": message }]);
                return Err(Refusal::invalid(
                    422,
                    format!("{at}: {} characters, more than {max}", s.chars().count()),
                )
                .message("Validation Failed")
                .errors(error));
            }
        }
        if let Some(object) = value.as_object() {
            let resource = schema
                .get("x-resource")
                .and_then(Value::as_str)
                .unwrap_or(resource);
            let properties = schema.get("properties").and_then(Value::as_object);
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for name in &required {
                if object
                    .get(*name)
                    .is_none_or(|v| v.is_null() && self.null_is_absent)
                {
                    return fail(format!("required property {name:?} is missing"));
                }
            }
            for (name, v) in object {
                let Some(property) = properties.and_then(|p| p.get(name)) else {
                    return fail(format!(
                        "property {name:?} is not in the schema ({})",
                        self.source
                    ));
                };
                if v.is_null() && self.null_is_absent && !required.contains(&name.as_str()) {
                    continue;
                }
                self.check_value(property, v, &format!("{at}.{name}"), resource)?;
            }
        }
        if let (Some(items), Some(item_schema)) = (value.as_array(), schema.get("items")) {
            for (i, item) in items.iter().enumerate() {
                self.check_value(item_schema, item, &format!("{at}[{i}]"), resource)?;
            }
        }
        Ok(())
    }

    /// Follows `$ref`s into `definitions`.
    fn resolve<'a>(&'a self, mut schema: &'a Value) -> Result<&'a Value, Box<Refusal>> {
        for _ in 0..32 {
            let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
                return Ok(schema);
            };
            let name = reference.trim_start_matches("#/definitions/");
            schema = self.definitions.get(name).ok_or_else(|| {
                Refusal::invalid(
                    500,
                    format!("{} has no definition {reference}", self.source),
                )
            })?;
        }
        Err(Refusal::invalid(500, format!("{}: $ref loop", self.source)))
    }
}

/// Checks a path or query value (a string) against a swagger parameter.
fn check_scalar(param: &Value, value: &str) -> Result<(), String> {
    let ty = if param["type"] == "array" {
        &param["items"]["type"]
    } else {
        &param["type"]
    };
    match ty.as_str() {
        Some("integer") if value.parse::<i64>().is_err() => return Err("not an integer".into()),
        Some("boolean") if value != "true" && value != "false" => {
            return Err("not a boolean".into());
        }
        _ => {}
    }
    if let Some(allowed) = param.get("enum").and_then(Value::as_array)
        && !allowed.iter().any(|a| a == value)
    {
        return Err(format!("not one of {}", Value::Array(allowed.clone())));
    }
    if param["format"] == "date-time" && chrono::DateTime::parse_from_rfc3339(value).is_err() {
        return Err("not an RFC 3339 date-time".into());
    }
    Ok(())
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => true,
    }
}

// Builders for the hand-written descriptions below.
fn path_param(name: &str, ty: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "type": ty })
}
fn query_param(name: &str, ty: &str) -> Value {
    json!({ "name": name, "in": "query", "type": ty })
}
fn date_param(name: &str) -> Value {
    json!({ "name": name, "in": "query", "type": "string", "format": "date-time" })
}
fn enum_param(name: &str, values: &[&str]) -> Value {
    json!({ "name": name, "in": "query", "type": "string", "enum": values })
}
fn body_param(definition: &str) -> Value {
    json!({ "name": "body", "in": "body", "required": true, "schema": { "$ref": format!("#/definitions/{definition}") } })
}
/// An operation on `/repos/{owner}/{repo}/...` with `more` parameters.
fn repo_op(more: Vec<Value>) -> Value {
    let mut parameters = vec![path_param("owner", "string"), path_param("repo", "string")];
    parameters.extend(more);
    json!({ "parameters": parameters })
}

/// FALLBACK, used only when the Forgejo swagger file is absent: the
/// operations fleetgate uses, transcribed from that swagger (Forgejo v7).
fn forgejo_fallback() -> Value {
    let paging = || {
        vec![
            query_param("page", "integer"),
            query_param("limit", "integer"),
        ]
    };
    let mut list_pulls = vec![
        enum_param("state", &["closed", "open", "all"]),
        enum_param(
            "sort",
            &[
                "oldest",
                "recentupdate",
                "leastupdate",
                "mostcomment",
                "leastcomment",
                "priority",
            ],
        ),
        query_param("milestone", "integer"),
        json!({ "name": "labels", "in": "query", "type": "array", "items": { "type": "integer" }, "collectionFormat": "multi" }),
    ];
    list_pulls.extend(paging());
    let mut list_issues = vec![
        enum_param("state", &["closed", "open", "all"]),
        query_param("labels", "string"),
        query_param("q", "string"),
        enum_param("type", &["issues", "pulls"]),
        query_param("milestones", "string"),
        date_param("since"),
        date_param("before"),
        query_param("created_by", "string"),
        query_param("assigned_by", "string"),
        query_param("mentioned_by", "string"),
    ];
    list_issues.extend(paging());
    let mut doc = json!({
        "basePath": "/api/v1",
        "paths": {
            "/repos/{owner}/{repo}/issues/{index}/comments": {
                "get": repo_op(vec![path_param("index", "integer"), date_param("since"), date_param("before")]),
                "post": repo_op(vec![path_param("index", "integer"), body_param("CreateIssueCommentOption")]),
            },
            "/repos/{owner}/{repo}/issues/comments/{id}": {
                "patch": repo_op(vec![path_param("id", "integer"), body_param("EditIssueCommentOption")]),
            },
            "/repos/{owner}/{repo}/statuses/{sha}": {
                "post": repo_op(vec![path_param("sha", "string"), body_param("CreateStatusOption")]),
            },
            "/repos/{owner}/{repo}/issues": {
                "get": repo_op(list_issues),
                "post": repo_op(vec![body_param("CreateIssueOption")]),
            },
            "/repos/{owner}/{repo}/issues/{index}": {
                "patch": repo_op(vec![path_param("index", "integer"), body_param("EditIssueOption")]),
            },
            "/repos/{owner}/{repo}/pulls": { "get": repo_op(list_pulls) },
            "/repos/{owner}/{repo}/pulls/{index}": { "get": repo_op(vec![path_param("index", "integer")]) },
        },
        "definitions": {
            "CreateIssueCommentOption": { "type": "object", "required": ["body"], "properties": {
                "body": { "type": "string" }, "updated_at": { "type": "string", "format": "date-time" } } },
            "EditIssueCommentOption": { "type": "object", "required": ["body"], "properties": {
                "body": { "type": "string" }, "updated_at": { "type": "string", "format": "date-time" } } },
            "CreateStatusOption": { "type": "object", "properties": {
                "context": { "type": "string" }, "description": { "type": "string" },
                "state": { "$ref": "#/definitions/CommitStatusState" }, "target_url": { "type": "string" } } },
            "CommitStatusState": { "type": "string", "enum": ["pending", "success", "error", "failure", "warning"] },
            "CreateIssueOption": { "type": "object", "required": ["title"], "properties": {
                "assignee": { "type": "string" }, "assignees": { "type": "array", "items": { "type": "string" } },
                "body": { "type": "string" }, "closed": { "type": "boolean" },
                "due_date": { "type": "string", "format": "date-time" },
                "labels": { "type": "array", "items": { "type": "integer", "format": "int64" } },
                "milestone": { "type": "integer", "format": "int64" }, "ref": { "type": "string" },
                "title": { "type": "string" } } },
            "EditIssueOption": { "type": "object", "properties": {
                "assignee": { "type": "string" }, "assignees": { "type": "array", "items": { "type": "string" } },
                "body": { "type": "string" }, "due_date": { "type": "string", "format": "date-time" },
                "milestone": { "type": "integer", "format": "int64" }, "ref": { "type": "string" },
                "state": { "type": "string" }, "title": { "type": "string" },
                "unset_due_date": { "type": "boolean" }, "updated_at": { "type": "string", "format": "date-time" } } },
        },
    });
    release_fallback(&mut doc);
    doc
}

/// GitHub's REST API (version 2022-11-28) as far as fleetgate uses it,
/// transcribed from docs.github.com. `x-resource` names the resource in
/// GitHub's 422 "errors" entries.
fn github_description() -> Value {
    let paging = || {
        vec![
            query_param("per_page", "integer"),
            query_param("page", "integer"),
        ]
    };
    let mut list_comments = vec![path_param("issue_number", "integer"), date_param("since")];
    list_comments.extend(paging());
    // octocrab 0.54's `associated_pull_requests` serializes its builder's
    // `target` (the sha, already in the path) as a query parameter too; GitHub
    // ignores it. Declared so that the client library's quirk is not blamed
    // on fleetgate.
    let mut commit_pulls = vec![
        path_param("commit_sha", "string"),
        query_param("target", "string"),
    ];
    commit_pulls.extend(paging());
    let mut list_issues = vec![
        query_param("milestone", "string"),
        enum_param("state", &["open", "closed", "all"]),
        query_param("assignee", "string"),
        query_param("type", "string"),
        query_param("creator", "string"),
        query_param("mentioned", "string"),
        query_param("labels", "string"),
        enum_param("sort", &["created", "updated", "comments"]),
        enum_param("direction", &["asc", "desc"]),
        date_param("since"),
    ];
    list_issues.extend(paging());
    json!({
        "basePath": "",
        "paths": {
            "/repos/{owner}/{repo}/issues/{issue_number}/comments": {
                // https://docs.github.com/en/rest/issues/comments#list-issue-comments
                "get": repo_op(list_comments),
                // https://docs.github.com/en/rest/issues/comments#create-an-issue-comment
                "post": repo_op(vec![path_param("issue_number", "integer"), body_param("IssueCommentBody")]),
            },
            "/repos/{owner}/{repo}/issues/comments/{comment_id}": {
                // https://docs.github.com/en/rest/issues/comments#update-an-issue-comment
                "patch": repo_op(vec![path_param("comment_id", "integer"), body_param("IssueCommentBody")]),
            },
            "/repos/{owner}/{repo}/statuses/{sha}": {
                // https://docs.github.com/en/rest/commits/statuses#create-a-commit-status
                "post": repo_op(vec![path_param("sha", "string"), body_param("StatusBody")]),
            },
            "/repos/{owner}/{repo}/commits/{commit_sha}/pulls": {
                // https://docs.github.com/en/rest/commits/commits#list-pull-requests-associated-with-a-commit
                "get": repo_op(commit_pulls),
            },
            "/repos/{owner}/{repo}/pulls/{pull_number}": {
                // https://docs.github.com/en/rest/pulls/pulls#get-a-pull-request
                "get": repo_op(vec![path_param("pull_number", "integer")]),
            },
            "/repos/{owner}/{repo}/issues": {
                // https://docs.github.com/en/rest/issues/issues#list-repository-issues
                "get": repo_op(list_issues),
                // https://docs.github.com/en/rest/issues/issues#create-an-issue
                "post": repo_op(vec![body_param("IssueCreateBody")]),
            },
            "/repos/{owner}/{repo}/issues/{issue_number}": {
                // https://docs.github.com/en/rest/issues/issues#update-an-issue
                "patch": repo_op(vec![path_param("issue_number", "integer"), body_param("IssueUpdateBody")]),
            },
            "/repos/{owner}/{repo}/actions/runs/{run_id}/approvals": {
                // https://docs.github.com/en/rest/actions/workflow-runs#get-the-review-history-for-a-workflow-run
                "get": repo_op(vec![path_param("run_id", "integer")]),
            },
        },
        "definitions": {
            // Comment bodies are limited to 65536 characters (GitHub answers
            // 422 "body is too long (maximum is 65536 characters)").
            "IssueCommentBody": { "type": "object", "x-resource": "IssueComment", "required": ["body"],
                "properties": { "body": { "type": "string", "maxLength": 65536 } } },
            // `description` is limited to 140 characters in practice (422
            // "description is too long (maximum is 140 characters)").
            "StatusBody": { "type": "object", "x-resource": "Status", "required": ["state"], "properties": {
                "state": { "type": "string", "enum": ["error", "failure", "pending", "success"] },
                "target_url": { "type": ["string", "null"] },
                "description": { "type": ["string", "null"], "maxLength": 140 },
                "context": { "type": "string" } } },
            // Issue bodies share the comments' limit (65536 characters).
            "IssueCreateBody": { "type": "object", "x-resource": "Issue", "required": ["title"], "properties": {
                "title": { "type": ["string", "integer"] },
                "body": { "type": "string", "maxLength": 65536 },
                "assignee": { "type": ["string", "null"] },
                "milestone": { "type": ["string", "integer", "null"] },
                "labels": { "type": "array" },
                "assignees": { "type": "array", "items": { "type": "string" } },
                "type": { "type": ["string", "null"] } } },
            "IssueUpdateBody": { "type": "object", "x-resource": "Issue", "properties": {
                "title": { "type": ["string", "integer", "null"] },
                "body": { "type": ["string", "null"], "maxLength": 65536 },
                "assignee": { "type": ["string", "null"] },
                "state": { "type": "string", "enum": ["open", "closed"] },
                "state_reason": { "type": ["string", "null"], "enum": ["completed", "not_planned", "duplicate", "reopened", null] },
                "milestone": { "type": ["string", "integer", "null"] },
                "labels": { "type": "array" },
                "assignees": { "type": "array", "items": { "type": "string" } },
                "type": { "type": ["string", "null"] } } },
        },
    })
}

// ---------------------------------------------------------------------------
// State and endpoints

struct Pull {
    number: u64,
    head_sha: String,
    base_sha: String,
    merged: bool,
    merge_commit_sha: Option<String>,
    created_at: String,
}

struct Approval {
    run_id: u64,
    user: String,
    environment: String,
    state: String,
    comment: String,
    at: String,
}

struct StoredStatus {
    id: u64,
    status: Status,
    created_at: String,
}

struct State {
    flavor: Flavor,
    /// http://127.0.0.1:PORT or https://…
    base: String,
    owner: String,
    repo: String,
    token: String,
    bot: String,
    /// User logins; a user's id is its position + 1 (the bot is 1).
    users: Vec<String>,
    environments: Vec<String>,
    next_id: u64,
    comments: Vec<Comment>,
    statuses: Vec<StoredStatus>,
    pulls: BTreeMap<u64, Pull>,
    issues: BTreeMap<u64, Issue>,
    approvals: Vec<Approval>,
    releases: Vec<StoredRelease>,
    fail: Option<(u16, usize)>,
    rate_limited: usize,
    log: Vec<Logged>,
    rejected: Vec<String>,
    handshake_failures: Vec<String>,
}

/// The operations the stand-in implements.
#[derive(Clone, Copy)]
enum Endpoint {
    ListComments,
    CreateComment,
    EditComment,
    CreateStatus,
    ListPulls,
    GetPull,
    CommitPulls,
    RunApprovals,
    ListIssues,
    CreateIssue,
    EditIssue,
    /// Releases and their assets (Forgejo): see the release block below.
    Release(ReleaseOp),
}

impl Endpoint {
    fn of(flavor: Flavor, method: &str, template: &str) -> Option<Endpoint> {
        let rest = template.strip_prefix("/repos/{owner}/{repo}")?;
        Some(match (flavor, method, rest) {
            (Flavor::Forgejo, "GET", "/issues/{index}/comments")
            | (Flavor::Github, "GET", "/issues/{issue_number}/comments") => Endpoint::ListComments,
            (Flavor::Forgejo, "POST", "/issues/{index}/comments")
            | (Flavor::Github, "POST", "/issues/{issue_number}/comments") => {
                Endpoint::CreateComment
            }
            (Flavor::Forgejo, "PATCH", "/issues/comments/{id}")
            | (Flavor::Github, "PATCH", "/issues/comments/{comment_id}") => Endpoint::EditComment,
            (_, "POST", "/statuses/{sha}") => Endpoint::CreateStatus,
            (Flavor::Forgejo, "GET", "/pulls") => Endpoint::ListPulls,
            (Flavor::Forgejo, "GET", "/pulls/{index}")
            | (Flavor::Github, "GET", "/pulls/{pull_number}") => Endpoint::GetPull,
            (Flavor::Github, "GET", "/commits/{commit_sha}/pulls") => Endpoint::CommitPulls,
            (Flavor::Github, "GET", "/actions/runs/{run_id}/approvals") => Endpoint::RunApprovals,
            (_, "GET", "/issues") => Endpoint::ListIssues,
            (_, "POST", "/issues") => Endpoint::CreateIssue,
            (Flavor::Forgejo, "PATCH", "/issues/{index}")
            | (Flavor::Github, "PATCH", "/issues/{issue_number}") => Endpoint::EditIssue,
            _ => return ReleaseOp::of(flavor, method, rest).map(Endpoint::Release),
        })
    }
}

/// A validated call: what the endpoints need of the request.
struct Call<'a> {
    /// The one path parameter besides owner and repo (issue number, id, sha).
    arg: &'a str,
    query: &'a [(String, String)],
    raw_query: &'a str,
    /// The request path without query, for `Link` headers.
    path: &'a str,
    body: Option<Value>,
    /// The request body as received (a multipart form's files).
    raw: &'a [u8],
}

impl Call<'_> {
    fn number(&self) -> u64 {
        self.arg.parse().unwrap_or(0)
    }
    fn query(&self, name: &str) -> Option<&str> {
        query_value(self.query, name)
    }
    fn field(&self, name: &str) -> Option<String> {
        self.body.as_ref()?.get(name)?.as_str().map(str::to_string)
    }
}

/// Why a request was refused.
struct Refusal {
    status: u16,
    /// For `rejected()`.
    reason: String,
    /// The response's message (the reason unless the real API says otherwise).
    message: String,
    /// GitHub's `errors` array.
    errors: Option<Value>,
    headers: Vec<(String, String)>,
    /// Counted in `rejected()`: a request fleetgate should never send.
    invalid: bool,
}

impl Refusal {
    fn invalid(status: u16, reason: String) -> Box<Refusal> {
        Box::new(Refusal {
            status,
            message: reason.clone(),
            reason,
            errors: None,
            headers: Vec::new(),
            invalid: true,
        })
    }
    /// An answer the real API gives to a valid request (auth, absent things).
    fn answer(status: u16, message: &str) -> Box<Refusal> {
        let mut refusal = Refusal::invalid(status, message.to_string());
        refusal.invalid = false;
        refusal
    }
    fn message(mut self: Box<Self>, message: &str) -> Box<Refusal> {
        self.message = message.to_string();
        self
    }
    fn message_opt(self: Box<Self>, message: Option<&str>) -> Box<Refusal> {
        match message {
            Some(m) => self.message(m),
            None => self,
        }
    }
    fn errors(mut self: Box<Self>, errors: Value) -> Box<Refusal> {
        self.errors = Some(errors);
        self
    }
    fn header(mut self: Box<Self>, name: &str, value: String) -> Box<Refusal> {
        self.headers.push((name.to_string(), value));
        self
    }
}

impl State {
    /// Answers one request and logs it.
    fn serve(&mut self, api: &Api, req: &HttpRequest) -> Resp {
        let resp = self.answer(api, req).unwrap_or_else(|refusal| {
            if refusal.invalid {
                self.rejected
                    .push(format!("{} {}: {}", req.method, req.target, refusal.reason));
            }
            self.error(&refusal)
        });
        self.log.push(Logged {
            method: req.method.clone(),
            path: req.target.clone(),
            status: resp.status,
            authorization: req.header("authorization").map(str::to_string),
            body: logged_body(req),
        });
        resp
    }

    fn answer(&mut self, api: &Api, req: &HttpRequest) -> Result<Resp, Box<Refusal>> {
        // Injected failures come first: a proxy or rate limiter in front.
        if let Some((status, count)) = self.fail {
            self.fail = (count > 1).then_some((status, count - 1));
            let text = format!("{status} {}", http_stub::reason(status));
            let body = format!(
                "<html>\r\n<head><title>{text}</title></head>\r\n<body>\r\n<center><h1>{text}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            );
            return Ok(Resp {
                status,
                headers: Vec::new(),
                content_type: "text/html",
                body: body.into(),
            });
        }
        if self.rate_limited > 0 {
            self.rate_limited -= 1;
            return Ok(self.rate_limit_response());
        }
        if self.flavor == Flavor::Github && req.header("user-agent").is_none_or(str::is_empty) {
            // https://docs.github.com/en/rest/using-the-rest-api/getting-started-with-the-rest-api#user-agent
            return Err(Refusal::invalid(403, "no User-Agent header".into()).message(
                "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.",
            ));
        }
        if let Some(download) = self.release_download(req) {
            return download;
        }
        self.authenticate(req)?;

        let (path, raw_query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        let not_found = |why: String| {
            Refusal::invalid(404, why).message(if self.flavor == Flavor::Github {
                "Not Found"
            } else {
                "not found"
            })
        };
        let rel = path
            .strip_prefix(api.base_path.as_str())
            .filter(|r| r.starts_with('/'));
        let Some((template, item, params)) = rel.and_then(|rel| api.route(rel)) else {
            return Err(not_found(format!("no such path in {}", api.source)));
        };
        let mut method = req.method.to_ascii_lowercase();
        // GitHub takes POST for PATCH ("PATCH is a relatively new and uncommon
        // HTTP verb, so resource endpoints also accept POST requests", REST v3
        // docs, "HTTP verbs"); octocrab 0.54's `update_comment` relies on it.
        if self.flavor == Flavor::Github && method == "post" && !item.contains_key("post") {
            method = "patch".into();
        }
        let Some(op) = item.get(&method) else {
            let allowed: Vec<String> = item
                .keys()
                .filter(|m| !m.starts_with('x') && *m != "parameters")
                .map(|m| m.to_uppercase())
                .collect();
            let why = format!(
                "{template} has no {} in {} (only {})",
                req.method,
                api.source,
                allowed.join(", ")
            );
            return Err(match self.flavor {
                Flavor::Forgejo => Refusal::invalid(405, why)
                    .message("Method Not Allowed")
                    .header("Allow", allowed.join(", ")),
                Flavor::Github => not_found(why),
            });
        };
        let Some(endpoint) = Endpoint::of(self.flavor, &method.to_ascii_uppercase(), template)
        else {
            return Err(Refusal::invalid(
                501,
                format!("the stand-in does not implement {} {template}", req.method),
            ));
        };
        let query = parse_query(raw_query);
        let body = api.check(self.flavor, op, &params, &query, req)?;

        let repo = (
            params.get("owner").map(String::as_str),
            params.get("repo").map(String::as_str),
        );
        if !matches!(repo, (Some(o), Some(r)) if o.eq_ignore_ascii_case(&self.owner) && r.eq_ignore_ascii_case(&self.repo))
        {
            return Err(self.not_found());
        }
        let arg = params
            .iter()
            .find(|(k, _)| *k != "owner" && *k != "repo")
            .map_or("", |(_, v)| v.as_str());
        self.endpoint(
            endpoint,
            Call {
                arg,
                query: &query,
                raw_query,
                path,
                body,
                raw: &req.body,
            },
        )
    }

    fn authenticate(&self, req: &HttpRequest) -> Result<(), Box<Refusal>> {
        let given = req
            .header("authorization")
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| {
                scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer")
            })
            .map(|(_, t)| t.trim());
        match (given, self.flavor) {
            (Some(t), _) if t == self.token => Ok(()),
            (None, Flavor::Forgejo) => Err(Refusal::answer(401, "token is required")),
            (Some(_), Flavor::Forgejo) => {
                Err(Refusal::answer(401, "user does not exist [uid: 0, name: ]"))
            }
            (None, Flavor::Github) => Err(Refusal::answer(401, "Requires authentication")),
            (Some(_), Flavor::Github) => Err(Refusal::answer(401, "Bad credentials")),
        }
    }

    fn endpoint(&mut self, endpoint: Endpoint, call: Call) -> Result<Resp, Box<Refusal>> {
        match endpoint {
            Endpoint::ListComments => {
                let issue = call.number();
                if !self.issue_exists(issue) {
                    return Err(self.not_found());
                }
                // Both APIs filter on the update time: `since` inclusive,
                // Forgejo's `before` exclusive.
                let since = call.query("since").and_then(parse_time);
                let before = call.query("before").and_then(parse_time);
                let list: Vec<Comment> = self
                    .comments
                    .iter()
                    .filter(|c| c.issue == issue)
                    .filter(|c| {
                        since.is_none_or(|s| parse_time(&c.updated_at).is_some_and(|u| u >= s))
                    })
                    .filter(|c| {
                        before.is_none_or(|b| parse_time(&c.updated_at).is_some_and(|u| u < b))
                    })
                    .cloned()
                    .collect();
                let items = list.iter().map(|c| self.comment_json(c)).collect();
                Ok(match self.flavor {
                    // Forgejo v7 declares no paging on this endpoint: all of them.
                    Flavor::Forgejo => Resp::json(200, JSON, Value::Array(items)),
                    Flavor::Github => self.paged(items, &call, "per_page", 100),
                })
            }
            Endpoint::CreateComment => {
                if !self.issue_exists(call.number()) {
                    return Err(self.not_found());
                }
                let (bot, body) = (self.bot.clone(), call.field("body").unwrap_or_default());
                let comment = self.new_comment(call.number(), &bot, &body);
                Ok(Resp::json(201, JSON, self.comment_json(&comment)))
            }
            Endpoint::EditComment => {
                let id = call.number();
                let Some(i) = self.comments.iter().position(|c| c.id == id) else {
                    return Err(self.not_found());
                };
                // Stricter than both servers, which let a repository writer
                // edit anyone's comment: fleetgate must only edit its own.
                if self.comments[i].user != self.bot {
                    let why = format!(
                        "comment {id} is by {}, not by the token's user {}",
                        self.comments[i].user, self.bot
                    );
                    return Err(Refusal::invalid(403, why));
                }
                let comment = &mut self.comments[i];
                comment.body = call.field("body").unwrap_or_default();
                comment.updated_at = now();
                let comment = comment.clone();
                Ok(Resp::json(200, JSON, self.comment_json(&comment)))
            }
            Endpoint::CreateStatus => {
                let sha = call.arg;
                if !(sha.len() == 40 || sha.len() == 64)
                    || !sha.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    // Statuses are attached to commits, named by their full sha.
                    return Err(
                        Refusal::invalid(422, format!("{sha:?} is not a full commit sha"))
                            .message(&format!("No commit found for SHA: {sha}")),
                    );
                }
                let status = Status {
                    sha: sha.to_string(),
                    context: call
                        .field("context")
                        .filter(|c| !c.is_empty())
                        .unwrap_or_else(|| "default".into()),
                    state: call.field("state").unwrap_or_default(),
                    description: call.field("description").unwrap_or_default(),
                    target_url: call.field("target_url").unwrap_or_default(),
                };
                let stored = StoredStatus {
                    id: self.next_id,
                    status,
                    created_at: now(),
                };
                self.next_id += 1;
                let json = self.status_json(&stored);
                self.statuses.push(stored);
                Ok(Resp::json(201, JSON, json))
            }
            Endpoint::ListPulls => {
                // Forgejo: `state` defaults to open; "closed" are the merged
                // ones here; newest first unless sorted oldest first.
                let state = call.query("state").unwrap_or("open");
                let mut numbers: Vec<u64> = self
                    .pulls
                    .values()
                    .filter(|p| state == "all" || (state == "closed") == p.merged)
                    .map(|p| p.number)
                    .collect();
                if !matches!(call.query("sort"), Some("oldest" | "leastupdate")) {
                    numbers.reverse();
                }
                let items = numbers.iter().map(|n| self.pull_json(*n)).collect();
                // Forgejo's default page size is 30, its maximum 50.
                Ok(self.paged(items, &call, "limit", 50))
            }
            Endpoint::GetPull => {
                if !self.pulls.contains_key(&call.number()) {
                    return Err(self.not_found());
                }
                Ok(Resp::json(200, JSON, self.pull_json(call.number())))
            }
            Endpoint::CommitPulls => {
                let sha = call.arg;
                let numbers: Vec<u64> = self
                    .pulls
                    .values()
                    .rev()
                    .filter(|p| p.head_sha == sha || p.merge_commit_sha.as_deref() == Some(sha))
                    .map(|p| p.number)
                    .collect();
                let items = numbers.iter().map(|n| self.pull_json(*n)).collect();
                Ok(self.paged(items, &call, "per_page", 100))
            }
            Endpoint::RunApprovals => {
                let run = call.number();
                let list: Vec<(String, String, String, String)> = self
                    .approvals
                    .iter()
                    .filter(|a| a.run_id == run)
                    .map(|a| {
                        (
                            a.user.clone(),
                            a.environment.clone(),
                            a.state.clone(),
                            a.comment.clone(),
                        )
                    })
                    .collect();
                let at = self
                    .approvals
                    .iter()
                    .find(|a| a.run_id == run)
                    .map(|a| a.at.clone())
                    .unwrap_or_else(now);
                let items = list
                    .iter()
                    .map(|(user, environment, state, comment)| {
                        let id = id_of(&mut self.environments, environment);
                        let (base, owner, repo) = (&self.base, &self.owner, &self.repo);
                        let env = json!({
                            "id": id, "node_id": format!("EN_{id}"), "name": environment,
                            "url": format!("{base}/repos/{owner}/{repo}/environments/{environment}"),
                            "html_url": format!("{base}/{owner}/{repo}/deployments/activity_log?environments_filter={environment}"),
                            "created_at": at, "updated_at": at,
                        });
                        json!({ "environments": [env], "state": state, "user": self.user_json(user), "comment": comment })
                    })
                    .collect();
                Ok(Resp::json(200, JSON, Value::Array(items)))
            }
            Endpoint::ListIssues => {
                let state = call.query("state").unwrap_or("open");
                let wanted = |open: bool| state == "all" || (state == "open") == open;
                let mut numbers: Vec<u64> = self
                    .issues
                    .values()
                    .filter(|i| wanted(i.open))
                    .map(|i| i.number)
                    .collect();
                // Both list pull requests with the issues unless Forgejo is
                // asked for `type=issues`; GitHub marks them `pull_request`.
                if call.query("type") != Some("issues") {
                    numbers.extend(
                        self.pulls
                            .values()
                            .filter(|p| wanted(!p.merged))
                            .map(|p| p.number),
                    );
                }
                numbers.sort();
                // Newest first unless GitHub is asked `direction=asc`.
                if call.query("direction") != Some("asc") {
                    numbers.reverse();
                }
                let items = numbers
                    .iter()
                    .map(|n| match self.issues.get(n).cloned() {
                        Some(issue) => self.issue_json(&issue),
                        None => self.pull_as_issue_json(*n),
                    })
                    .collect();
                Ok(match self.flavor {
                    Flavor::Forgejo => self.paged(items, &call, "limit", 50),
                    Flavor::Github => self.paged(items, &call, "per_page", 100),
                })
            }
            Endpoint::CreateIssue => {
                let title = call.field("title").unwrap_or_default();
                if title.trim().is_empty() {
                    return Err(Refusal::invalid(422, "an issue needs a title".into())
                        .message("title is required"));
                }
                let bot = self.bot.clone();
                let body = call.field("body").unwrap_or_default();
                let issue = self.new_issue(&bot, &title, &body);
                Ok(Resp::json(201, JSON, self.issue_json(&issue)))
            }
            Endpoint::EditIssue => {
                let number = call.number();
                let Some(issue) = self.issues.get(&number).cloned() else {
                    return Err(self.not_found());
                };
                // Stricter than both servers: fleetgate edits its own only.
                if issue.user != self.bot {
                    let why = format!(
                        "issue {number} is by {}, not by the token's user {}",
                        issue.user, self.bot
                    );
                    return Err(Refusal::invalid(403, why));
                }
                let open = match call.field("state").as_deref() {
                    None => issue.open,
                    Some("open") => true,
                    Some("closed") => false,
                    Some(other) => {
                        return Err(Refusal::invalid(
                            422,
                            format!("state {other:?} is neither open nor closed"),
                        ));
                    }
                };
                let stored = self.issues.get_mut(&number).expect("looked up");
                if let Some(title) = call.field("title") {
                    stored.title = title;
                }
                if let Some(body) = call.field("body") {
                    stored.body = body;
                }
                stored.open = open;
                stored.updated_at = now();
                let issue = stored.clone();
                // Forgejo answers 201 to an edit, GitHub 200.
                let code = if self.flavor == Flavor::Forgejo {
                    201
                } else {
                    200
                };
                Ok(Resp::json(code, JSON, self.issue_json(&issue)))
            }
            Endpoint::Release(op) => self.release_endpoint(op, call),
        }
    }

    fn issue_exists(&self, issue: u64) -> bool {
        self.pulls.contains_key(&issue)
            || self.issues.contains_key(&issue)
            || self.comments.iter().any(|c| c.issue == issue)
    }

    /// Issues and pull requests share their numbers, as on both forges.
    fn new_issue(&mut self, user: &str, title: &str, body: &str) -> Issue {
        let number = 1 + self
            .pulls
            .keys()
            .chain(self.issues.keys())
            .chain(self.comments.iter().map(|c| &c.issue))
            .max()
            .copied()
            .unwrap_or(0);
        let at = now();
        let issue = Issue {
            number,
            user: user.to_string(),
            title: title.to_string(),
            body: body.to_string(),
            open: true,
            created_at: at.clone(),
            updated_at: at,
        };
        self.issues.insert(number, issue.clone());
        issue
    }

    fn issue_json(&mut self, i: &Issue) -> Value {
        let (base, owner, repo, n) = (&self.base, &self.owner, &self.repo, i.number);
        let state = if i.open { "open" } else { "closed" };
        let closed_at = (!i.open).then(|| i.updated_at.clone());
        let comments = self.comments.iter().filter(|c| c.issue == n).count();
        let mut json = match self.flavor {
            // swagger definition `Issue`
            Flavor::Forgejo => json!({
                "id": 200_000 + n, "url": format!("{base}/api/v1/repos/{owner}/{repo}/issues/{n}"),
                "html_url": format!("{base}/{owner}/{repo}/issues/{n}"), "number": n, "user": null,
                "original_author": "", "original_author_id": 0, "title": i.title, "body": i.body, "ref": "",
                "assets": [], "labels": [], "milestone": null, "assignee": null, "assignees": null,
                "state": state, "is_locked": false, "comments": comments, "created_at": i.created_at,
                "updated_at": i.updated_at, "closed_at": closed_at, "due_date": null, "pull_request": null,
                "repository": { "id": 1, "name": repo, "owner": owner, "full_name": format!("{owner}/{repo}") },
                "pin_order": 0,
            }),
            // https://docs.github.com/en/rest/issues/issues#get-an-issue
            Flavor::Github => json!({
                "id": 200_000 + n, "node_id": format!("I_{n}"),
                "url": format!("{base}/repos/{owner}/{repo}/issues/{n}"),
                "repository_url": format!("{base}/repos/{owner}/{repo}"),
                "html_url": format!("{base}/{owner}/{repo}/issues/{n}"), "number": n, "state": state,
                "state_reason": if i.open { Value::Null } else { json!("completed") },
                "title": i.title, "body": i.body, "user": null, "labels": [], "assignee": null, "assignees": [],
                "milestone": null, "locked": false, "active_lock_reason": null, "comments": comments,
                "closed_at": closed_at, "created_at": i.created_at, "updated_at": i.updated_at,
                "closed_by": null, "author_association": "MEMBER",
            }),
        };
        json["user"] = self.user_json(&i.user);
        json
    }

    /// A pull request as the issue list shows it: with `pull_request`.
    fn pull_as_issue_json(&mut self, number: u64) -> Value {
        let p = &self.pulls[&number];
        let issue = Issue {
            number,
            user: "dev".into(),
            title: format!("Pull request {number}"),
            body: String::new(),
            open: !p.merged,
            created_at: p.created_at.clone(),
            updated_at: p.created_at.clone(),
        };
        let (merged, base, owner, repo) = (
            p.merged.then(|| p.created_at.clone()),
            self.base.clone(),
            self.owner.clone(),
            self.repo.clone(),
        );
        let mut json = self.issue_json(&issue);
        json["pull_request"] = match self.flavor {
            Flavor::Forgejo => json!({ "merged": merged.is_some(), "merged_at": merged }),
            Flavor::Github => json!({
                "url": format!("{base}/repos/{owner}/{repo}/pulls/{number}"),
                "html_url": format!("{base}/{owner}/{repo}/pull/{number}"), "merged_at": merged,
            }),
        };
        json
    }

    fn new_comment(&mut self, issue: u64, user: &str, body: &str) -> Comment {
        let at = now();
        let comment = Comment {
            id: self.next_id,
            issue,
            user: user.to_string(),
            body: body.to_string(),
            created_at: at.clone(),
            updated_at: at,
        };
        self.next_id += 1;
        self.comments.push(comment.clone());
        comment
    }

    /// One page of `items` per the request's `page` and `size` parameters,
    /// with the `Link` header both APIs send (absolute URLs: clients follow
    /// them as given). Default page size 30, at most `max`.
    fn paged(&self, items: Vec<Value>, call: &Call, size: &str, max: usize) -> Resp {
        let per_page = call
            .query(size)
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(30)
            .min(max);
        let page = call
            .query("page")
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(1usize);
        let last = items.len().div_ceil(per_page).max(1);
        let total = items.len();
        let chunk: Vec<Value> = items
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .collect();
        let link = |n: usize, rel: &str| {
            let mut query: Vec<&str> = call
                .raw_query
                .split('&')
                .filter(|kv| !kv.is_empty() && !kv.starts_with("page="))
                .collect();
            let page = format!("page={n}");
            query.push(&page);
            format!(
                "<{}{}?{}>; rel=\"{rel}\"",
                self.base,
                call.path,
                query.join("&")
            )
        };
        let mut links = Vec::new();
        if page < last {
            links.extend([link(page + 1, "next"), link(last, "last")]);
        }
        if page > 1 {
            links.extend([link(1, "first"), link(page - 1, "prev")]);
        }
        let mut resp = Resp::json(200, JSON, Value::Array(chunk));
        if !links.is_empty() {
            resp.headers.push(("Link".into(), links.join(", ")));
        }
        if self.flavor == Flavor::Forgejo {
            resp.headers
                .push(("X-Total-Count".into(), total.to_string()));
        }
        resp
    }

    fn user_json(&mut self, login: &str) -> Value {
        let id = id_of(&mut self.users, login);
        let base = &self.base;
        match self.flavor {
            // swagger definition `User`
            Flavor::Forgejo => json!({
                "id": id, "login": login, "login_name": "", "full_name": "", "email": format!("{login}@noreply.localhost"),
                "avatar_url": format!("{base}/avatars/{id}"), "language": "", "is_admin": false,
                "last_login": "0001-01-01T00:00:00Z", "created": "2024-01-01T00:00:00Z", "restricted": false,
                "active": true, "prohibit_login": false, "location": "", "website": "", "description": "",
                "visibility": "public", "followers_count": 0, "following_count": 0, "starred_repos_count": 0,
            }),
            // "simple-user" (https://docs.github.com/en/rest/users/users)
            Flavor::Github => {
                let url = format!("{base}/users/{login}");
                json!({
                    "login": login, "id": id, "node_id": format!("U_{id}"), "avatar_url": format!("{base}/avatars/u/{id}"),
                    "gravatar_id": "", "url": url, "html_url": format!("{base}/{login}"),
                    "followers_url": format!("{url}/followers"), "following_url": format!("{url}/following{{/other_user}}"),
                    "gists_url": format!("{url}/gists{{/gist_id}}"), "starred_url": format!("{url}/starred{{/owner}}{{/repo}}"),
                    "subscriptions_url": format!("{url}/subscriptions"), "organizations_url": format!("{url}/orgs"),
                    "repos_url": format!("{url}/repos"), "events_url": format!("{url}/events{{/privacy}}"),
                    "received_events_url": format!("{url}/received_events"), "type": "User", "site_admin": false,
                })
            }
        }
    }

    fn comment_json(&mut self, c: &Comment) -> Value {
        let (base, owner, repo, n, id) =
            (self.base.clone(), &self.owner, &self.repo, c.issue, c.id);
        let is_pull = self.pulls.contains_key(&n);
        let kind = if is_pull { "pulls" } else { "issues" };
        let mut json = match self.flavor {
            // swagger definition `Comment`
            Flavor::Forgejo => json!({
                "id": id, "html_url": format!("{base}/{owner}/{repo}/{kind}/{n}#issuecomment-{id}"),
                "pull_request_url": if is_pull { format!("{base}/{owner}/{repo}/pulls/{n}") } else { String::new() },
                "issue_url": if is_pull { String::new() } else { format!("{base}/{owner}/{repo}/issues/{n}") },
                "user": null, "original_author": "", "original_author_id": 0, "body": c.body, "assets": [],
                "created_at": c.created_at, "updated_at": c.updated_at,
            }),
            // https://docs.github.com/en/rest/issues/comments#get-an-issue-comment
            Flavor::Github => json!({
                "id": id, "node_id": format!("IC_{id}"), "url": format!("{base}/repos/{owner}/{repo}/issues/comments/{id}"),
                "html_url": format!("{base}/{owner}/{repo}/{}/{n}#issuecomment-{id}", if is_pull { "pull" } else { "issues" }),
                "body": c.body, "user": null, "created_at": c.created_at, "updated_at": c.updated_at,
                "issue_url": format!("{base}/repos/{owner}/{repo}/issues/{n}"), "author_association": "MEMBER",
            }),
        };
        json["user"] = self.user_json(&c.user);
        json
    }

    fn status_json(&mut self, s: &StoredStatus) -> Value {
        let (base, owner, repo, st) = (&self.base, &self.owner, &self.repo, &s.status);
        let url = format!("{base}/repos/{owner}/{repo}/statuses/{}", st.sha);
        let mut json = match self.flavor {
            // swagger definition `CommitStatus`
            Flavor::Forgejo => json!({
                "id": s.id, "status": st.state, "target_url": st.target_url, "description": st.description,
                "url": format!("{base}/api/v1/repos/{owner}/{repo}/statuses/{}", st.sha), "context": st.context,
                "creator": null, "created_at": s.created_at, "updated_at": s.created_at,
            }),
            // https://docs.github.com/en/rest/commits/statuses#create-a-commit-status (201)
            Flavor::Github => json!({
                "url": url, "avatar_url": null, "id": s.id, "node_id": format!("SC_{}", s.id), "state": st.state,
                "description": st.description, "target_url": st.target_url, "context": st.context,
                "created_at": s.created_at, "updated_at": s.created_at, "creator": null,
            }),
        };
        let bot = self.bot.clone();
        json["creator"] = self.user_json(&bot);
        json
    }

    fn pull_json(&mut self, number: u64) -> Value {
        let p = &self.pulls[&number];
        let (base, owner, repo) = (&self.base, &self.owner, &self.repo);
        let state = if p.merged { "closed" } else { "open" };
        let merged_at = p.merged.then(|| p.created_at.clone());
        let branch = format!("pr-{number}");
        let html_url = format!(
            "{base}/{owner}/{repo}/pull{}/{number}",
            if self.flavor == Flavor::Forgejo {
                "s"
            } else {
                ""
            }
        );
        let mut json = match self.flavor {
            // swagger definition `PullRequest`
            Flavor::Forgejo => json!({
                "id": 100_000 + number, "url": html_url, "number": number, "user": null,
                "title": format!("Pull request {number}"), "body": "", "labels": [], "milestone": null,
                "assignee": null, "assignees": null, "requested_reviewers": null, "state": state,
                "is_locked": false, "comments": 0, "html_url": html_url,
                "diff_url": format!("{html_url}.diff"), "patch_url": format!("{html_url}.patch"),
                "mergeable": !p.merged, "merged": p.merged, "merged_at": merged_at, "merge_commit_sha": p.merge_commit_sha,
                "merged_by": null, "allow_maintainer_edit": false,
                "base": { "label": "main", "ref": "main", "sha": p.base_sha, "repo_id": 1 },
                "head": { "label": branch, "ref": branch, "sha": p.head_sha, "repo_id": 1 },
                "merge_base": p.base_sha, "due_date": null, "created_at": p.created_at, "updated_at": p.created_at,
                "closed_at": merged_at, "pin_order": 0,
            }),
            // https://docs.github.com/en/rest/pulls/pulls#get-a-pull-request
            Flavor::Github => json!({
                "url": format!("{base}/repos/{owner}/{repo}/pulls/{number}"), "id": 100_000 + number,
                "node_id": format!("PR_{number}"), "html_url": html_url,
                "diff_url": format!("{html_url}.diff"), "patch_url": format!("{html_url}.patch"),
                "issue_url": format!("{base}/repos/{owner}/{repo}/issues/{number}"), "number": number,
                "state": state, "locked": false, "title": format!("Pull request {number}"), "user": null, "body": null,
                "labels": [], "milestone": null, "active_lock_reason": null, "created_at": p.created_at,
                "updated_at": p.created_at, "closed_at": merged_at, "merged_at": merged_at,
                "merge_commit_sha": p.merge_commit_sha, "assignee": null, "assignees": [], "requested_reviewers": [],
                "requested_teams": [],
                "head": { "label": format!("{owner}:{branch}"), "ref": branch, "sha": p.head_sha, "user": null, "repo": null },
                "base": { "label": format!("{owner}:main"), "ref": "main", "sha": p.base_sha, "user": null, "repo": null },
                "author_association": "MEMBER", "draft": false, "merged": p.merged, "mergeable": null,
                "merged_by": null, "comments": 0, "commits": 1,
            }),
        };
        json["user"] = self.user_json("dev");
        if self.flavor == Flavor::Github {
            let owner = self.owner.clone();
            json["head"]["user"] = self.user_json(&owner);
            json["base"]["user"] = self.user_json(&owner);
        }
        json
    }

    fn not_found(&self) -> Box<Refusal> {
        Refusal::answer(
            404,
            if self.flavor == Flavor::Github {
                "Not Found"
            } else {
                "not found"
            },
        )
    }

    fn error(&self, r: &Refusal) -> Resp {
        let body = match self.flavor {
            Flavor::Forgejo => {
                json!({ "message": r.message, "url": format!("{}/api/swagger", self.base) })
            }
            Flavor::Github => {
                let mut body = json!({ "message": r.message, "documentation_url": "https://docs.github.com/rest", "status": r.status.to_string() });
                if let Some(errors) = &r.errors {
                    body["errors"] = errors.clone();
                }
                body
            }
        };
        Resp {
            headers: r.headers.clone(),
            ..Resp::json(r.status, JSON, body)
        }
    }

    fn rate_limit_response(&self) -> Resp {
        match self.flavor {
            // https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api
            Flavor::Github => {
                let reset = chrono::Utc::now().timestamp() + 1;
                let headers = [
                    ("x-ratelimit-limit", "5000".to_string()),
                    ("x-ratelimit-remaining", "0".into()),
                    ("x-ratelimit-used", "5000".into()),
                    ("x-ratelimit-reset", reset.to_string()),
                    ("x-ratelimit-resource", "core".into()),
                    ("retry-after", "1".into()),
                ];
                let body = json!({
                    "message": "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include the request ID 0000:0000:0000000:0000000:00000000.",
                    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                    "status": "403",
                });
                Resp {
                    headers: headers
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                    ..Resp::json(403, JSON, body)
                }
            }
            // Forgejo has no rate limiter of its own: the proxy in front answers.
            Flavor::Forgejo => Resp {
                status: 429,
                headers: vec![("Retry-After".into(), "1".into())],
                content_type: "text/plain; charset=utf-8",
                body: "Too Many Requests\n".into(),
            },
        }
    }
}

/// The id of `name` in `list` (position + 1), adding it if new.
fn id_of(list: &mut Vec<String>, name: &str) -> u64 {
    let i = list.iter().position(|n| n == name).unwrap_or_else(|| {
        list.push(name.to_string());
        list.len() - 1
    });
    i as u64 + 1
}

/// Now, RFC 3339 UTC with seconds ("2026-11-23T12:00:00Z").
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(s).ok()
}

/// A JSON value shortened for a message (comment bodies can be long).
fn brief(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= 60 {
        s
    } else {
        format!("{}…", s.chars().take(60).collect::<String>())
    }
}

// ---------------------------------------------------------------------------
// HTTP

/// JSON as Forgejo and GitHub type it.
const JSON: &str = "application/json; charset=utf-8";

/// Release assets are binaries of tens of MiB (Forgejo's default
/// `[attachment] MAX_SIZE` is 2 GiB).
const MAX_BODY: usize = 256 << 20;

fn connection(shared: &Shared, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Some(config) = &shared.tls else {
        return exchange(shared, stream);
    };
    let Ok(conn) = rustls::ServerConnection::new(Arc::clone(config)) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, stream);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            // Closed without a word (a port probe) is no handshake.
            if e.kind() != io::ErrorKind::UnexpectedEof {
                shared.lock().handshake_failures.push(e.to_string());
            }
            return;
        }
    }
    exchange(shared, tls)
}

/// One request read from `stream` and answered.
fn exchange(shared: &Shared, stream: impl http_stub::Stream) {
    http_stub::exchange(stream, MAX_BODY, |req| match req {
        Ok(req) => shared.lock().serve(shared.api, &req),
        Err(e) => {
            let mut st = shared.lock();
            st.rejected.push(format!("malformed HTTP request: {e}"));
            Resp {
                status: 400,
                headers: Vec::new(),
                content_type: "text/plain",
                body: format!("{e}\n").into(),
            }
        }
    })
}

// ---------------------------------------------------------------------------
// Releases (Forgejo): what `scripts/release.sh publish` and `.forgejo/install.sh`
// use. Kept in one block: create, list, get (by id and by tag) a release, list
// and upload its assets (multipart/form-data, swagger `formData`), and the web
// route `/{owner}/{repo}/releases/download/{tag}/{name}` an asset's
// `browser_download_url` names and install.sh downloads from.
//
// As the real server: a second release for a tag is 409 "Release is has no
// Tag"; an asset's name is the `name` query parameter, else the file's name;
// two assets may have the same name (Forgejo does not refuse it; the download
// route then serves the first). Unlike it: there is no Git behind the
// stand-in, so every tag exists (Forgejo creates a missing tag at
// `target_commitish`); no draft/tag-only releases; the repository is public
// (downloads need no token); no attachment size or type limits; no
// `hide_archive_links` or archive download counts.

/// A release as the stand-in keeps it.
#[derive(Clone, Debug)]
pub struct PublishedRelease {
    pub id: u64,
    pub tag: String,
    pub name: String,
    pub body: String,
    pub target: String,
    pub draft: bool,
    pub prerelease: bool,
    pub created_at: String,
    pub assets: Vec<PublishedAsset>,
}

/// One asset (Forgejo: attachment) of a release.
#[derive(Clone, Debug)]
pub struct PublishedAsset {
    pub id: u64,
    pub name: String,
    pub bytes: Vec<u8>,
    pub downloads: u64,
    pub created_at: String,
}

type StoredRelease = PublishedRelease;

impl ForgeServer {
    /// Every release, oldest first, with its assets in upload order.
    pub fn releases(&self) -> Vec<PublishedRelease> {
        self.lock().releases.clone()
    }

    /// A release of `tag` with `assets`, as an earlier run or a person in the
    /// web UI left it; assets are added to an existing release of the tag.
    pub fn add_release(&self, tag: &str, assets: &[(&str, &[u8])]) {
        let mut st = self.lock();
        if !st.releases.iter().any(|r| r.tag == tag) {
            let id = st.take_id();
            st.releases.push(PublishedRelease {
                id,
                tag: tag.to_string(),
                name: tag.to_string(),
                body: String::new(),
                target: "main".into(),
                draft: false,
                prerelease: false,
                created_at: now(),
                assets: Vec::new(),
            });
        }
        for (name, bytes) in assets {
            let id = st.take_id();
            let release = st.releases.iter_mut().find(|r| r.tag == tag).unwrap();
            release.assets.push(PublishedAsset {
                id,
                name: name.to_string(),
                bytes: bytes.to_vec(),
                downloads: 0,
                created_at: now(),
            });
        }
    }
}

/// The release operations the stand-in implements.
#[derive(Clone, Copy, Debug)]
enum ReleaseOp {
    List,
    Create,
    Get,
    GetByTag,
    ListAssets,
    Upload,
}

impl ReleaseOp {
    fn of(flavor: Flavor, method: &str, rest: &str) -> Option<ReleaseOp> {
        if flavor != Flavor::Forgejo {
            return None;
        }
        Some(match (method, rest) {
            ("GET", "/releases") => ReleaseOp::List,
            ("POST", "/releases") => ReleaseOp::Create,
            ("GET", "/releases/{id}") => ReleaseOp::Get,
            ("GET", "/releases/tags/{tag}") => ReleaseOp::GetByTag,
            ("GET", "/releases/{id}/assets") => ReleaseOp::ListAssets,
            ("POST", "/releases/{id}/assets") => ReleaseOp::Upload,
            _ => return None,
        })
    }
}

impl State {
    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }

    fn release_endpoint(&mut self, op: ReleaseOp, call: Call) -> Result<Resp, Box<Refusal>> {
        match op {
            ReleaseOp::List => {
                let flag = |name: &str| call.query(name).map(|v| v == "true");
                let (draft, pre) = (flag("draft"), flag("pre-release"));
                // Newest first, as Forgejo lists them.
                let items = (0..self.releases.len())
                    .rev()
                    .filter(|&i| draft.is_none_or(|d| self.releases[i].draft == d))
                    .filter(|&i| pre.is_none_or(|p| self.releases[i].prerelease == p))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .map(|i| self.release_json(i))
                    .collect();
                Ok(self.paged(items, &call, "limit", 50))
            }
            ReleaseOp::Create => {
                let tag = call.field("tag_name").unwrap_or_default();
                if tag.trim().is_empty() {
                    return Err(Refusal::invalid(422, "tag_name is empty".into()));
                }
                if self.releases.iter().any(|r| r.tag == tag) {
                    // Forgejo's words (routers/api/v1/repo/release.go).
                    return Err(Refusal::answer(409, "Release is has no Tag"));
                }
                let flag = |name: &str| {
                    call.body
                        .as_ref()
                        .and_then(|b| b.get(name))
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                };
                let id = self.take_id();
                self.releases.push(PublishedRelease {
                    id,
                    name: call
                        .field("name")
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| tag.clone()),
                    tag,
                    body: call.field("body").unwrap_or_default(),
                    target: call
                        .field("target_commitish")
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| "main".into()),
                    draft: flag("draft"),
                    prerelease: flag("prerelease"),
                    created_at: now(),
                    assets: Vec::new(),
                });
                Ok(Resp::json(
                    201,
                    JSON,
                    self.release_json(self.releases.len() - 1),
                ))
            }
            ReleaseOp::Get | ReleaseOp::GetByTag | ReleaseOp::ListAssets => {
                let i = match op {
                    ReleaseOp::GetByTag => self.releases.iter().position(|r| r.tag == call.arg),
                    _ => self.release_index(&call),
                };
                let Some(i) = i else {
                    return Err(self.not_found());
                };
                Ok(match op {
                    ReleaseOp::ListAssets => {
                        let r = &self.releases[i];
                        let items = r.assets.iter().map(|a| self.asset_json(r, a)).collect();
                        Resp::json(200, JSON, Value::Array(items))
                    }
                    _ => Resp::json(200, JSON, self.release_json(i)),
                })
            }
            ReleaseOp::Upload => {
                let Some(i) = self.release_index(&call) else {
                    return Err(self.not_found());
                };
                let file = &call.body.as_ref().expect("a checked form")["attachment"];
                let (start, end) = (
                    file["start"].as_u64().unwrap_or(0) as usize,
                    file["end"].as_u64().unwrap_or(0) as usize,
                );
                let name = call
                    .query("name")
                    .filter(|n| !n.is_empty())
                    .or_else(|| file["filename"].as_str())
                    .unwrap_or_default()
                    .to_string();
                if name.is_empty() {
                    return Err(Refusal::answer(
                        400,
                        "Could not determine name of attachment.",
                    ));
                }
                let id = self.take_id();
                let asset = PublishedAsset {
                    id,
                    name,
                    bytes: call.raw[start..end].to_vec(),
                    downloads: 0,
                    created_at: now(),
                };
                self.releases[i].assets.push(asset);
                let r = &self.releases[i];
                Ok(Resp::json(
                    201,
                    JSON,
                    self.asset_json(r, r.assets.last().unwrap()),
                ))
            }
        }
    }

    fn release_index(&self, call: &Call) -> Option<usize> {
        self.releases.iter().position(|r| r.id == call.number())
    }

    /// swagger definition `Release`.
    fn release_json(&mut self, i: usize) -> Value {
        let author = {
            let bot = self.bot.clone();
            self.user_json(&bot)
        };
        let r = &self.releases[i];
        let (base, owner, repo, id, tag) = (&self.base, &self.owner, &self.repo, r.id, &r.tag);
        let assets: Vec<Value> = r.assets.iter().map(|a| self.asset_json(r, a)).collect();
        json!({
            "id": id, "tag_name": tag, "target_commitish": r.target, "name": r.name, "body": r.body,
            "url": format!("{base}/api/v1/repos/{owner}/{repo}/releases/{id}"),
            "html_url": format!("{base}/{owner}/{repo}/releases/tag/{tag}"),
            "tarball_url": format!("{base}/{owner}/{repo}/archive/{tag}.tar.gz"),
            "zipball_url": format!("{base}/{owner}/{repo}/archive/{tag}.zip"),
            "upload_url": format!("{base}/api/v1/repos/{owner}/{repo}/releases/{id}/assets"),
            "draft": r.draft, "prerelease": r.prerelease, "created_at": r.created_at,
            "published_at": r.created_at, "author": author, "assets": assets,
        })
    }

    /// swagger definition `Attachment`.
    fn asset_json(&self, r: &StoredRelease, a: &PublishedAsset) -> Value {
        let (base, owner, repo) = (&self.base, &self.owner, &self.repo);
        json!({
            "id": a.id, "name": a.name, "size": a.bytes.len(), "download_count": a.downloads,
            "created_at": a.created_at, "uuid": format!("00000000-0000-4000-8000-{:012x}", a.id),
            "browser_download_url": format!("{base}/{owner}/{repo}/releases/download/{}/{}", r.tag, a.name),
        })
    }

    /// `GET /{owner}/{repo}/releases/download/{tag}/{name}` (the web UI's
    /// route, outside the API): the first asset of that name, as bytes.
    fn release_download(&mut self, req: &HttpRequest) -> Option<Result<Resp, Box<Refusal>>> {
        let path = req.target.split('?').next().unwrap_or("");
        let segs: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|s| pct_decode(s, false))
            .collect();
        let [owner, repo, releases, download, tag, name] = segs.as_slice() else {
            return None;
        };
        if (releases.as_str(), download.as_str()) != ("releases", "download") {
            return None;
        }
        if req.method != "GET" && req.method != "HEAD" {
            return Some(Err(Refusal::invalid(
                405,
                format!("{} on a release download", req.method),
            )));
        }
        let ours = owner.eq_ignore_ascii_case(&self.owner) && repo.eq_ignore_ascii_case(&self.repo);
        let asset = self
            .releases
            .iter_mut()
            .filter(|r| ours && r.tag == *tag)
            .flat_map(|r| r.assets.iter_mut())
            .find(|a| a.name == *name);
        // The web UI answers an absent one with its HTML 404 page.
        let Some(asset) = asset else {
            return Some(Ok(Resp {
                status: 404,
                headers: Vec::new(),
                content_type: "text/html; charset=utf-8",
                body: b"<!DOCTYPE html><title>Page Not Found</title>\n".to_vec(),
            }));
        };
        asset.downloads += 1;
        Some(Ok(Resp {
            status: 200,
            headers: vec![(
                "Content-Disposition".into(),
                format!("attachment; filename=\"{}\"", asset.name),
            )],
            content_type: "application/octet-stream",
            body: asset.bytes.clone(),
        }))
    }
}

/// Checks a `multipart/form-data` body against the operation's `formData`
/// parameters: every part declared, required ones present, a `file` one
/// with a file name, none twice. Returns, per part, its file name, content
/// type and where its bytes are in the body (`start`, `end`).
fn check_form(params: &[Value], req: &HttpRequest) -> Result<Value, Box<Refusal>> {
    let content_type = req.header("content-type").unwrap_or("");
    let (media, rest) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !media.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(Refusal::invalid(
            400,
            format!("Content-Type {content_type:?}, expected multipart/form-data"),
        ));
    }
    let boundary = rest
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .next()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| Refusal::invalid(400, "multipart/form-data without a boundary".into()))?;
    let parts = parse_multipart(&req.body, boundary)
        .map_err(|why| Refusal::invalid(400, format!("multipart body: {why}")))?;
    let declared: Vec<&Value> = params.iter().filter(|p| p["in"] == "formData").collect();
    let mut form = Map::new();
    for part in parts {
        let Some(param) = declared.iter().find(|p| p["name"] == part.name.as_str()) else {
            return Err(Refusal::invalid(
                400,
                format!(
                    "form field {:?} is not declared for this operation",
                    part.name
                ),
            ));
        };
        if form.contains_key(&part.name) {
            return Err(Refusal::invalid(
                400,
                format!("form field {:?} given twice", part.name),
            ));
        }
        if param["type"] == "file" && part.filename.is_none() {
            return Err(Refusal::invalid(
                400,
                format!(
                    "form field {:?} is a file, but the part has no filename",
                    part.name
                ),
            ));
        }
        form.insert(
            part.name.clone(),
            json!({ "filename": part.filename, "content_type": part.content_type, "start": part.start, "end": part.end }),
        );
    }
    for p in declared.iter().filter(|p| p["required"] == true) {
        if !form.contains_key(p["name"].as_str().unwrap_or("")) {
            return Err(Refusal::invalid(
                400,
                format!("missing required form field {}", p["name"]),
            ));
        }
    }
    Ok(Value::Object(form))
}

struct FormPart {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    start: usize,
    end: usize,
}

/// RFC 7578: parts between `--boundary` lines, each with headers (a
/// `Content-Disposition: form-data; name=...` one), CRLF line ends.
fn parse_multipart(body: &[u8], boundary: &str) -> Result<Vec<FormPart>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let find = |from: usize, needle: &[u8]| {
        body.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|i| from + i)
    };
    let mut at = find(0, delimiter).ok_or("no opening boundary")? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        match body.get(at..at + 2) {
            Some(b"--") => return Ok(parts),
            Some(b"\r\n") => at += 2,
            _ => return Err("a boundary not followed by CRLF or --".into()),
        }
        let head_end = find(at, b"\r\n\r\n").ok_or("part headers without an end")?;
        let head =
            std::str::from_utf8(&body[at..head_end]).map_err(|_| "part headers not UTF-8")?;
        let (mut name, mut filename, mut content_type) = (None, None, None);
        for line in head.split("\r\n") {
            let (key, value) = line
                .split_once(':')
                .ok_or(format!("bad part header {line:?}"))?;
            if key.trim().eq_ignore_ascii_case("content-type") {
                content_type = Some(value.trim().to_string());
            } else if key.trim().eq_ignore_ascii_case("content-disposition") {
                let mut fields = value.split(';').map(str::trim);
                if fields.next() != Some("form-data") {
                    return Err(format!("Content-Disposition {value:?} is not form-data"));
                }
                for field in fields {
                    let (k, v) = field.split_once('=').unwrap_or((field, ""));
                    let v = v.trim_matches('"').to_string();
                    match k {
                        "name" => name = Some(v),
                        "filename" => filename = Some(v),
                        _ => {}
                    }
                }
            }
        }
        let start = head_end + 4;
        let mut closing = b"\r\n".to_vec();
        closing.extend_from_slice(delimiter);
        let end = find(start, &closing).ok_or("a part without a closing boundary")?;
        parts.push(FormPart {
            name: name.ok_or("a part without a name")?,
            filename,
            content_type,
            start,
            end,
        });
        at = end + closing.len();
    }
}

/// A request body for the log (and the leak scan): text as it is; a
/// multipart form part by part, binaries by size.
fn logged_body(req: &HttpRequest) -> String {
    let boundary = req
        .header("content-type")
        .filter(|ct| ct.to_ascii_lowercase().starts_with("multipart/form-data"))
        .and_then(|ct| {
            ct.split(';')
                .find_map(|p| p.trim().strip_prefix("boundary="))
        })
        .map(|b| b.trim_matches('"'));
    let Some(parts) = boundary.and_then(|b| parse_multipart(&req.body, b).ok()) else {
        return String::from_utf8_lossy(&req.body).into_owned();
    };
    parts
        .iter()
        .map(|p| {
            let bytes = &req.body[p.start..p.end];
            let content = match std::str::from_utf8(bytes) {
                Ok(text) if bytes.len() <= 64 << 10 => text.to_string(),
                _ => format!("<{} bytes>", bytes.len()),
            };
            format!(
                "[{} {:?}] {content}\n",
                p.name,
                p.filename.as_deref().unwrap_or("")
            )
        })
        .collect()
}

/// Adds the release operations to the fallback description, transcribed
/// from the swagger (the fallback test compares them).
fn release_fallback(doc: &mut Value) {
    let id = || json!({ "name": "id", "in": "path", "required": true, "type": "integer", "format": "int64" });
    let mut list = vec![
        json!({ "name": "draft", "in": "query", "type": "boolean" }),
        json!({ "name": "pre-release", "in": "query", "type": "boolean" }),
    ];
    list.extend([
        query_param("page", "integer"),
        query_param("limit", "integer"),
    ]);
    let create = json!({ "name": "body", "in": "body", "schema": { "$ref": "#/definitions/CreateReleaseOption" } });
    let upload = vec![
        id(),
        query_param("name", "string"),
        json!({ "name": "attachment", "in": "formData", "required": true, "type": "file" }),
    ];
    let paths = json!({
        "/repos/{owner}/{repo}/releases": { "get": repo_op(list), "post": repo_op(vec![create]) },
        "/repos/{owner}/{repo}/releases/{id}": { "get": repo_op(vec![id()]) },
        "/repos/{owner}/{repo}/releases/tags/{tag}": { "get": repo_op(vec![path_param("tag", "string")]) },
        "/repos/{owner}/{repo}/releases/{id}/assets": {
            "get": repo_op(vec![id()]),
            "post": json!({ "consumes": ["multipart/form-data"], "parameters": repo_op(upload)["parameters"] }),
        },
    });
    let definitions = json!({
        "CreateReleaseOption": { "type": "object", "required": ["tag_name"], "properties": {
            "body": { "type": "string" }, "draft": { "type": "boolean" }, "name": { "type": "string" },
            "prerelease": { "type": "boolean" }, "tag_name": { "type": "string" },
            "target_commitish": { "type": "string" } } },
    });
    for (key, more) in [("paths", paths), ("definitions", definitions)] {
        let target = doc[key].as_object_mut().expect("an object");
        target.extend(more.as_object().expect("an object").clone());
    }
}

// ---------------------------------------------------------------------------
// Self-tests, over a raw HTTP client

const OWNER: &str = "acme";
const REPO: &str = "fleet";
const TOKEN: &str = "t0ken";
const BOT: &str = "fleetbot";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

impl Reply {
    fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// One exchange; `target` is relative to the server root. A
/// `Transfer-Encoding: chunked` header sends the body in two chunks.
fn send(
    server: &ForgeServer,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if headers.contains(&("Transfer-Encoding", "chunked")) {
        let (a, b) = body.split_at(body.len() / 2);
        let (na, nb) = (a.len(), b.len());
        req.push_str(&format!(
            "\r\n{na:x};ext=1\r\n{a}\r\n{nb:x}\r\n{b}\r\n0\r\n\r\n"
        ));
    } else {
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    }
    let mut stream = TcpStream::connect(("127.0.0.1", server.http.port())).unwrap();
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1)?.parse().ok())
        .unwrap();
    let headers = lines.filter_map(|l| l.split_once(": "));
    let headers = headers
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// A call on the repository as fleetgate makes it: token, User-Agent, JSON
/// body (`""`: none). `path` is relative to `{api}/repos/acme/fleet`.
fn api(server: &ForgeServer, method: &str, path: &str, body: &str) -> Reply {
    let base = server.api_url().replace(&server.url(), "");
    let auth = format!("token {TOKEN}");
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("User-Agent", "fleetgate-test"),
    ];
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    send(
        server,
        method,
        &format!("{base}/repos/{OWNER}/{REPO}{path}"),
        &headers,
        body,
    )
}

fn status(server: &ForgeServer, method: &str, path: &str, body: &str) -> u16 {
    api(server, method, path, body).status
}

/// `key` of each element of a JSON array reply.
fn each(reply: &Reply, key: &str) -> Vec<Value> {
    let list = reply.json();
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|v| v[key].clone())
        .collect()
}

#[test]
fn forgejo_comment_create_list_edit() {
    let server = ForgeServer::start(Flavor::Forgejo, OWNER, REPO, TOKEN, BOT);
    server.add_pull(7, SHA, SHA, false, None);
    let human = server.add_comment(7, "alice", "/approve");

    let created = api(
        &server,
        "POST",
        "/issues/7/comments",
        r#"{"body":"plan: 2 hosts"}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_u64().unwrap();
    assert_eq!(created.json()["user"]["login"], BOT);

    let since = human.created_at.replace(':', "%3A");
    let listed = api(
        &server,
        "GET",
        &format!("/issues/7/comments?since={since}"),
        "",
    );
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(each(&listed, "body"), ["/approve", "plan: 2 hosts"]);

    // Chunked, as a streaming client may send it.
    let auth = format!("Bearer {TOKEN}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json; charset=utf-8"),
        ("Transfer-Encoding", "chunked"),
    ];
    let target = format!("/api/v1/repos/acme/fleet/issues/comments/{id}");
    let edited = send(
        &server,
        "PATCH",
        &target,
        &headers,
        r#"{"body":"plan: 3 hosts"}"#,
    );
    assert_eq!(edited.status, 200, "{}", edited.body);
    // Never someone else's comment.
    let foreign = format!("/issues/comments/{}", human.id);
    assert_eq!(status(&server, "PATCH", &foreign, r#"{"body":"x"}"#), 403);

    let comments = server.comments(7);
    let mine = &comments[1];
    assert_eq!(comments.len(), 2);
    assert_eq!(
        (mine.id, mine.issue, mine.user.as_str(), mine.body.as_str()),
        (id, 7, BOT, "plan: 3 hosts")
    );
    assert!(mine.updated_at >= mine.created_at);
    assert_eq!(server.rejected().len(), 1, "{:?}", server.rejected());
    let log = server.requests();
    let summary: Vec<_> = log.iter().map(|r| (r.method.as_str(), r.status)).collect();
    assert_eq!(
        summary,
        [("POST", 201), ("GET", 200), ("PATCH", 200), ("PATCH", 403)]
    );
    assert_eq!(log[2].authorization.as_deref(), Some(auth.as_str()));
    assert_eq!(
        (log[2].path.as_str(), log[2].body.as_str()),
        (target.as_str(), r#"{"body":"plan: 3 hosts"}"#)
    );
    assert!(log[1].path.ends_with(&format!("?since={since}")));
}

#[test]
fn forgejo_refuses_what_the_api_does_not_declare() {
    let server = ForgeServer::start(Flavor::Forgejo, OWNER, REPO, TOKEN, BOT);
    let statuses = format!("/statuses/{SHA}");
    let body = r#"{"state":"success","context":"fleetgate/plan","description":"ok","target_url":"http://ci/1"}"#;
    let ok = api(&server, "POST", &statuses, body);
    assert_eq!(
        (ok.status, ok.json()["status"].as_str()),
        (201, Some("success")),
        "{}",
        ok.body
    );

    let cases = [
        (
            "POST",
            statuses.as_str(),
            r#"{"state":"bogus"}"#,
            422,
            "not one of",
        ),
        (
            "POST",
            &statuses,
            r#"{"state":"success","colour":"red"}"#,
            422,
            r#""colour" is not in the schema"#,
        ),
        (
            "POST",
            &statuses,
            r#"{"state":"success"#,
            422,
            "body is not JSON",
        ),
        (
            "POST",
            "/issues/1/comments",
            "{}",
            422,
            r#"required property "body""#,
        ),
        ("GET", "/pulls?state=merged", "", 400, "not one of"),
        (
            "GET",
            "/pulls?per_page=50",
            "",
            400,
            r#""per_page" is not declared"#,
        ),
        ("GET", "/pulls/abc", "", 422, "not an integer"),
        ("GET", "/no/such/thing", "", 404, "no such path"),
        (
            "PUT",
            &statuses,
            r#"{"state":"success"}"#,
            405,
            "has no PUT",
        ),
    ];
    for (i, (method, path, body, expected, reason)) in cases.into_iter().enumerate() {
        let reply = api(&server, method, path, body);
        assert_eq!(reply.status, expected, "{method} {path}: {}", reply.body);
        let rejected = server.rejected();
        assert_eq!(rejected.len(), i + 1, "{rejected:?}");
        let prefix = format!("{method} /api/v1/repos/acme/fleet{path}: ");
        assert!(
            rejected[i].starts_with(&prefix) && rejected[i].contains(reason),
            "{}",
            rejected[i]
        );
    }

    // No token, a wrong one: 401, answered but not a validation failure.
    let pulls = "/api/v1/repos/acme/fleet/pulls";
    assert_eq!(
        send(&server, "GET", pulls, &[], "").message(),
        "token is required"
    );
    assert_eq!(
        send(
            &server,
            "GET",
            pulls,
            &[("Authorization", "token nope")],
            ""
        )
        .status,
        401
    );
    // Another repository: 404 as for a missing one, not a rejection either.
    let other = send(
        &server,
        "GET",
        "/api/v1/repos/acme/other/pulls",
        &[("Authorization", "token t0ken")],
        "",
    );
    assert_eq!(other.status, 404);
    assert_eq!(server.rejected().len(), cases.len());

    let posted = server.statuses(SHA);
    let s = &posted[0];
    assert_eq!(posted.len(), 1);
    let fields = [&s.sha, &s.state, &s.context, &s.description, &s.target_url];
    assert_eq!(
        fields,
        [SHA, "success", "fleetgate/plan", "ok", "http://ci/1"]
    );
}

#[test]
fn forgejo_lists_pulls_by_state_and_page() {
    let server = ForgeServer::start(Flavor::Forgejo, OWNER, REPO, TOKEN, BOT);
    for n in 1..=60 {
        let merge = format!("{n:040x}");
        server.add_pull(n, SHA, SHA, n % 2 == 0, (n % 2 == 0).then_some(&merge));
    }
    let page = api(
        &server,
        "GET",
        "/pulls?state=closed&sort=recentupdate&limit=20&page=1",
        "",
    );
    assert_eq!(page.status, 200, "{}", page.body);
    let numbers = each(&page, "number");
    assert_eq!(
        (numbers.len(), &numbers[0], &numbers[19]),
        (20, &json!(60), &json!(22))
    );
    assert_eq!(page.header("X-Total-Count"), Some("30"));
    assert!(
        page.header("Link")
            .unwrap()
            .contains("page=2>; rel=\"next\"")
    );
    let pull = api(&server, "GET", "/pulls/60", "").json();
    assert_eq!(
        (&pull["merged"], &pull["merge_commit_sha"]),
        (&json!(true), &json!(format!("{:040x}", 60)))
    );
    assert_eq!(
        each(&api(&server, "GET", "/pulls?limit=100", ""), "number").len(),
        30
    );
    assert_eq!(status(&server, "GET", "/pulls/61", ""), 404);
    assert!(server.rejected().is_empty(), "{:?}", server.rejected());
}

#[test]
fn github_pages_issue_comments() {
    let server = ForgeServer::start(Flavor::Github, OWNER, REPO, TOKEN, BOT);
    for i in 0..35 {
        server.add_comment(3, "alice", &format!("comment {i}"));
    }
    let first = api(&server, "GET", "/issues/3/comments", "");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(each(&first, "body").len(), 30);
    let link = first.header("link").expect("a Link header");
    let next = format!(
        "<{}/repos/acme/fleet/issues/3/comments?page=2>; rel=\"next\"",
        server.url()
    );
    assert!(
        link.starts_with(&next) && link.ends_with("page=2>; rel=\"last\""),
        "{link}"
    );

    let second = api(&server, "GET", "/issues/3/comments?per_page=30&page=2", "");
    let bodies = each(&second, "body");
    assert_eq!((bodies.len(), &bodies[4]), (5, &json!("comment 34")));
    assert!(!second.header("link").unwrap().contains("rel=\"next\""));
    assert_eq!(server.comments(3).len(), 35);
    assert!(server.rejected().is_empty(), "{:?}", server.rejected());
}

#[test]
fn github_limits_and_user_agent() {
    let server = ForgeServer::start(Flavor::Github, OWNER, REPO, TOKEN, BOT);
    server.add_pull(4, SHA, SHA, false, None);
    let too_long = api(
        &server,
        "POST",
        "/issues/4/comments",
        &json!({ "body": "x".repeat(65537) }).to_string(),
    );
    assert_eq!(too_long.status, 422);
    let error = json!({ "resource": "IssueComment", "code": "custom", "field": "body",
        "message": "body is too long (maximum is 65536 characters)" });
    assert_eq!(too_long.json()["errors"][0], error);
    let longest = api(
        &server,
        "POST",
        "/issues/4/comments",
        &json!({ "body": "x".repeat(65536) }).to_string(),
    );
    assert_eq!(longest.status, 201);
    // An edit, as PATCH and as the POST GitHub also takes for it.
    let edit = format!("/issues/comments/{}", longest.json()["id"]);
    assert_eq!(status(&server, "PATCH", &edit, r#"{"body":"a"}"#), 200);
    assert_eq!(status(&server, "POST", &edit, r#"{"body":"b"}"#), 200);
    assert_eq!(server.comments(4)[0].body, "b");

    let statuses = format!("/statuses/{SHA}");
    let description = json!({ "state": "pending", "description": "d".repeat(141) }).to_string();
    assert_eq!(status(&server, "POST", &statuses, &description), 422);
    let nulls = r#"{"state":"pending","description":null,"target_url":null,"context":"fleetgate"}"#;
    assert_eq!(status(&server, "POST", &statuses, nulls), 201);

    let comments = "/repos/acme/fleet/issues/4/comments";
    let auth = format!("Bearer {TOKEN}");
    let no_agent = send(&server, "GET", comments, &[("Authorization", &auth)], "");
    assert_eq!(no_agent.status, 403);
    assert!(no_agent.message().contains("User-Agent"));
    let bad = send(
        &server,
        "GET",
        comments,
        &[("Authorization", "Bearer nope"), ("User-Agent", "t")],
        "",
    );
    assert_eq!(
        (bad.status, bad.message().as_str()),
        (401, "Bad credentials")
    );
    // Wrong method on a known path: GitHub says 404.
    assert_eq!(status(&server, "DELETE", "/issues/4/comments", ""), 404);

    let rejected = server.rejected();
    assert_eq!(rejected.len(), 4, "{rejected:?}");
    assert!(
        rejected[0].contains("65537 characters") && rejected[2].contains("no User-Agent"),
        "{rejected:?}"
    );
}

#[test]
fn injected_failures_then_success() {
    let server = ForgeServer::start(Flavor::Forgejo, OWNER, REPO, TOKEN, BOT);
    server.fail_next(502, 1);
    let failed = api(&server, "GET", "/pulls", "");
    assert_eq!(failed.status, 502);
    assert!(failed.body.contains("<html>"));
    server.rate_limit_next(1);
    let limited = api(&server, "GET", "/pulls", "");
    assert_eq!(
        (limited.status, limited.header("retry-after")),
        (429, Some("1"))
    );
    assert_eq!(status(&server, "GET", "/pulls", ""), 200);

    let github = ForgeServer::start(Flavor::Github, OWNER, REPO, TOKEN, BOT);
    github.rate_limit_next(1);
    let limited = api(&github, "GET", "/pulls/1", "");
    assert_eq!(
        (limited.status, limited.header("x-ratelimit-remaining")),
        (403, Some("0"))
    );
    assert!(limited.message().starts_with("API rate limit exceeded"));
    assert_eq!(status(&github, "GET", "/pulls/1", ""), 404);
    assert!(server.rejected().is_empty() && github.rejected().is_empty());
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn github_commit_pulls_and_run_approvals() {
    let server = ForgeServer::start(Flavor::Github, OWNER, REPO, TOKEN, BOT);
    let merge = "fedcba9876543210fedcba9876543210fedcba98";
    server.add_pull(9, SHA, SHA, true, Some(merge));
    server.add_run_approval(77, "alice", "production", "approved", "ship it");

    // octocrab sends the sha again as `target`.
    let pulls = api(
        &server,
        "GET",
        &format!("/commits/{merge}/pulls?target={merge}"),
        "",
    );
    assert_eq!(pulls.status, 200, "{}", pulls.body);
    assert_eq!(
        (each(&pulls, "number"), each(&pulls, "merged")),
        (vec![json!(9)], vec![json!(true)])
    );
    let approvals = api(&server, "GET", "/actions/runs/77/approvals", "").json();
    let approval = &approvals[0];
    assert_eq!(
        (&approval["state"], &approval["user"]["login"]),
        (&json!("approved"), &json!("alice"))
    );
    assert_eq!(approval["environments"][0]["name"], "production");
    assert_eq!(
        api(&server, "GET", "/actions/runs/78/approvals", "").json(),
        json!([])
    );
    assert!(server.rejected().is_empty(), "{:?}", server.rejected());
}

#[test]
fn forgejo_swagger_is_used_when_present() {
    if !std::path::Path::new(SWAGGER).exists() {
        eprintln!("{SWAGGER} absent: the fallback description applies");
        return;
    }
    let server = ForgeServer::start(Flavor::Forgejo, OWNER, REPO, TOKEN, BOT);
    let files = api(&server, "GET", "/pulls/1/files", "");
    assert_eq!(files.status, 501, "{}", files.body);
    let expected = "does not implement GET /repos/{owner}/{repo}/pulls/{index}/files";
    assert!(server.rejected()[0].contains(expected));
    // Literal segments win (`issues/comments/{id}` over `issues/{index}/...`),
    // and `{index}.{diffType}` takes only a segment with a dot.
    assert_eq!(status(&server, "DELETE", "/issues/comments/5", ""), 501);
    assert_eq!(status(&server, "GET", "/pulls/1.diff", ""), 501);
    assert_eq!(status(&server, "GET", "/pulls/1", ""), 404);
    assert_eq!(server.rejected().len(), 3);
}

#[test]
fn forgejo_fallback_agrees_with_swagger() {
    // The fallback serves like the swagger for what fleetgate uses...
    let fallback = forgejo_fallback_api();
    let server = ForgeServer::start_with(fallback, Flavor::Forgejo, OWNER, REPO, TOKEN, BOT, None);
    server.add_pull(2, SHA, SHA, false, None);
    let statuses = format!("/statuses/{SHA}");
    assert_eq!(
        status(&server, "POST", &statuses, r#"{"state":"bogus"}"#),
        422
    );
    assert_eq!(
        status(&server, "POST", &statuses, r#"{"state":"failure"}"#),
        201
    );
    assert_eq!(
        status(&server, "POST", "/issues/2/comments", r#"{"body":"hi"}"#),
        201
    );
    assert_eq!(status(&server, "GET", "/pulls?state=all&limit=50", ""), 200);
    assert_eq!(status(&server, "GET", "/pulls/2/files", ""), 404);
    assert_eq!(server.rejected().len(), 2, "{:?}", server.rejected());

    // ...because it declares the same operations, parameters and bodies.
    if !std::path::Path::new(SWAGGER).exists() {
        return;
    }
    let swagger = forgejo_api();
    let shape = |api: &Api, op: &Value| {
        let params = op["parameters"].as_array().unwrap();
        let mut names: Vec<String> = params
            .iter()
            .map(|p| format!("{} {} {}", p["in"], p["name"], p["type"]))
            .collect();
        names.sort();
        let body = params
            .iter()
            .find(|p| p["in"] == "body")
            .map(|p| api.resolve(&p["schema"]).ok().cloned());
        let fields = body.flatten().map(|s| {
            (
                s["required"].clone(),
                s["properties"].as_object().unwrap().len(),
            )
        });
        (names, fields)
    };
    for (path, item) in &fallback.paths {
        for (method, op) in item.as_object().unwrap() {
            let theirs = &swagger.paths[path][method];
            assert_eq!(
                shape(fallback, op),
                shape(swagger, theirs),
                "{method} {path}"
            );
        }
    }
}

// Self-tests of the release block.

/// An asset upload as curl -F sends it.
fn upload(
    server: &ForgeServer,
    id: u64,
    query: &str,
    field: &str,
    file: &str,
    content: &str,
) -> Reply {
    let boundary = "------------------------5a6b7c8d9e0f";
    let auth = format!("token {TOKEN}");
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n{content}\r\n--{boundary}--\r\n"
    );
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", content_type.as_str()),
    ];
    let target = format!("/api/v1/repos/{OWNER}/{REPO}/releases/{id}/assets{query}");
    send(server, "POST", &target, &headers, &body)
}

#[test]
fn forgejo_release_create_upload_download() {
    let server = ForgeServer::start(Flavor::Forgejo, OWNER, REPO, TOKEN, BOT);
    assert_eq!(status(&server, "GET", "/releases/tags/v1.0.0", ""), 404);
    let created = api(
        &server,
        "POST",
        "/releases",
        r#"{"tag_name":"v1.0.0","name":"v1.0.0","draft":false}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_u64().unwrap();
    // A second release of the tag: 409, as Forgejo answers.
    assert_eq!(
        status(&server, "POST", "/releases", r#"{"tag_name":"v1.0.0"}"#),
        409
    );

    let sums = "0123  tool\n";
    let up = upload(
        &server,
        id,
        "?name=SHA256SUMS",
        "attachment",
        "sums.txt",
        sums,
    );
    assert_eq!(up.status, 201, "{}", up.body);
    assert_eq!(up.json()["name"], "SHA256SUMS");
    assert_eq!(up.json()["size"], sums.len());
    let url = up.json()["browser_download_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        url,
        format!(
            "{}/{OWNER}/{REPO}/releases/download/v1.0.0/SHA256SUMS",
            server.url()
        )
    );
    // Without `name`, the file's name.
    assert_eq!(
        upload(&server, id, "", "attachment", "tool", "bin").json()["name"],
        "tool"
    );

    let got = api(&server, "GET", "/releases/tags/v1.0.0", "").json();
    let names: Vec<&str> = got["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["SHA256SUMS", "tool"]);
    assert_eq!(
        api(&server, "GET", &format!("/releases/{id}/assets"), "")
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        api(&server, "GET", "/releases?limit=10", "").json()[0]["tag_name"],
        "v1.0.0"
    );

    let path = url.replace(&server.url(), "");
    let download = send(&server, "GET", &path, &[], "");
    assert_eq!((download.status, download.body.as_str()), (200, sums));
    let missing = path.replace("SHA256SUMS", "nope");
    assert_eq!(send(&server, "GET", &missing, &[], "").status, 404);
    assert_eq!(server.releases()[0].assets[0].downloads, 1);
    assert!(server.rejected().is_empty(), "{:?}", server.rejected());
}

#[test]
fn forgejo_release_refuses_what_the_api_does_not_declare() {
    let server = ForgeServer::start(Flavor::Forgejo, OWNER, REPO, TOKEN, BOT);
    server.add_release("v1.0.0", &[]);
    let id = server.releases()[0].id;
    // Not a field of CreateReleaseOption; the form field is `attachment`;
    // a JSON body where a form is declared; an unknown release.
    assert_eq!(
        status(
            &server,
            "POST",
            "/releases",
            r#"{"tag_name":"v2","files":[]}"#
        ),
        422
    );
    assert_eq!(upload(&server, id, "", "file", "x", "x").status, 400);
    assert_eq!(
        status(
            &server,
            "POST",
            &format!("/releases/{id}/assets"),
            r#"{"a":1}"#
        ),
        400
    );
    assert_eq!(upload(&server, 1, "", "attachment", "x", "x").status, 404);
    assert_eq!(server.rejected().len(), 3, "{:?}", server.rejected());
    assert!(server.releases()[0].assets.is_empty());
}

// Self-test of the issue endpoints (the scheduled checks' issues).

#[test]
fn issues_create_list_edit_close_on_both_forges() {
    for flavor in [Flavor::Forgejo, Flavor::Github] {
        let server = ForgeServer::start(flavor, OWNER, REPO, TOKEN, BOT);
        server.add_pull(2, SHA, SHA, false, None);
        let human = server.add_issue("alice", "a person's issue", "hello");
        assert_eq!(human.number, 3, "issues and pulls share their numbers");
        let created = api(
            &server,
            "POST",
            "/issues",
            r#"{"title":"blocked","body":"<!-- fleetgate:scan:x -->\nwhy"}"#,
        );
        assert_eq!(created.status, 201, "{flavor:?}: {}", created.body);
        let n = created.json()["number"].as_u64().unwrap();
        assert_eq!(n, 4);
        assert_eq!(created.json()["user"]["login"], BOT);
        // Forgejo leaves the pull request out when asked for issues only;
        // GitHub lists it, marked `pull_request`.
        let list = match flavor {
            Flavor::Forgejo => "/issues?state=open&type=issues&limit=50&page=1",
            Flavor::Github => "/issues?state=open&direction=asc&per_page=100&page=1",
        };
        let listed = api(&server, "GET", list, "");
        assert_eq!(listed.status, 200, "{}", listed.body);
        let numbers = each(&listed, "number");
        match flavor {
            Flavor::Forgejo => assert_eq!(numbers, [4, 3]),
            Flavor::Github => {
                assert_eq!(numbers, [2, 3, 4]);
                assert!(!listed.json()[0]["pull_request"].is_null());
            }
        }
        let edit = format!("/issues/{n}");
        let edited = if flavor == Flavor::Forgejo { 201 } else { 200 };
        assert_eq!(
            status(&server, "PATCH", &edit, r#"{"title":"t","body":"b"}"#),
            edited
        );
        assert_eq!(
            status(
                &server,
                "POST",
                &format!("/issues/{n}/comments"),
                r#"{"body":"gone"}"#
            ),
            201
        );
        assert_eq!(
            status(&server, "PATCH", &edit, r#"{"state":"closed"}"#),
            edited
        );
        let issue = &server.issues()[1];
        assert_eq!(
            (issue.title.as_str(), issue.body.as_str(), issue.open),
            ("t", "b", false)
        );
        // Refused: no title, a state that is not one, someone else's issue.
        assert_eq!(status(&server, "POST", "/issues", r#"{"body":"x"}"#), 422);
        assert_eq!(status(&server, "PATCH", &edit, r#"{"state":"bogus"}"#), 422);
        assert_eq!(
            status(&server, "PATCH", "/issues/3", r#"{"body":"x"}"#),
            403
        );
        assert_eq!(server.rejected().len(), 3, "{:?}", server.rejected());
    }
}
