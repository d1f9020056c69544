//! A local stand-in for the Hetzner Cloud API, for integration tests of
//! fleetgate's Hetzner inventory, snapshots and restores. The real API cannot
//! be reached from the tests (and would cost money); the emulator on PyPI
//! ignores labels and lacks `create_image`.
//!
//! It keeps state (servers, private networks, images, actions) and checks
//! every exchange against the OpenAPI 3.0.3 description
//! `shared/api/hcloud-openapi.json`, read at run time (third-party data: it
//! stays in `shared/`, never copied here; the stand-in panics without it):
//!
//! - requests: the route and method; an operation the stand-in does not
//!   implement (501: fleetgate should not call it); path parameters; every
//!   query parameter declared, its type, its enum (arrays repeated, as
//!   `status=running&status=off`), and Hetzner's documented limits the
//!   description leaves in prose (`page` ≥ 1, `per_page` 1 to 50, a
//!   `label_selector` that parses); the body: present when required, JSON,
//!   and valid against its schema (`$ref`, `type`, `nullable`, `properties`,
//!   `required`, `additionalProperties`, `enum`, `items`, `allOf`, `oneOf`,
//!   `anyOf`, `pattern`, `format`, `maximum`), plus label keys (Hetzner's
//!   rule; the description only constrains values);
//! - responses: each one the stand-in produces is checked against the
//!   schema the description gives for its status (or `default`), so the
//!   stand-in cannot drift from the real shapes unnoticed.
//!
//! Deliberately stricter than the real API, which ignores what it does not
//! know: a query parameter or body property the description does not declare
//! is refused, as a typo fleetgate would otherwise never notice.
//!
//! Every refused request and every invalid response is a *violation*:
//! [`HcloudServer::violations`]. A test that ends with violations fails:
//! the stand-in panics when dropped (unless the test is already failing), and
//! [`HcloudServer::assert_clean`] says so earlier. Tests that provoke them on
//! purpose take them with [`HcloudServer::take_violations`]. Answers the real
//! API gives to valid requests (401 without a token, 404 for an absent
//! server, injected 429 and 5xx) are not violations.
//!
//! Label selectors are matched by fleetgate's own parser
//! (`src/inventory/selector.rs`, included below), so the semantics exist
//! once; the selector's unit tests pin them to Hetzner's documentation.
//!
//! A test, in short:
//!
//! ```ignore
//! let hcloud = HcloudServer::start(TOKEN);
//! hcloud.add_server("alpha-1", &[("client", "alpha"), ("role", "app")]);
//! hcloud.point_at("alpha-1", "127.0.0.1"); // a TestHosts sshd; port: in the client file
//! hcloud.rate_limit_next(1, 2); // the first request: 429, RateLimit-Reset in 2 s
//! hcloud.next_actions(&[Outcome::Error("image_create_failed".into(), "disk busy".into())]);
//! // run fleetgate with HCLOUD_ENDPOINT=hcloud.url(), HCLOUD_TOKEN=TOKEN, then:
//! assert_eq!(hcloud.snapshots().len(), 1);
//! assert!(hcloud.requests().iter().any(|r| r.path.ends_with("/create_image")));
//! hcloud.assert_clean(); // also checked when `hcloud` is dropped
//! ```
//!
//! HTTP (`http_stub.rs`, shared with the forge stand-in): HTTP/1.1 on
//! `std::net::TcpListener` under `/v1`, one thread per connection, one request
//! per connection (`Connection: close`), bodies by `Content-Length` or chunked,
//! up to 16 MiB. Auth: `Authorization: Bearer <token>`.

use std::collections::{BTreeMap, VecDeque};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::http_stub::{
    self, HttpRequest, Loopback, Reply, Resp, parse_query, pct_decode, query_value,
};

#[path = "../../src/inventory/selector.rs"]
mod selector;

use selector::Selector;

/// One request as received, and the status it was answered with.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    /// Without the query, e.g. `/v1/servers`.
    pub path: String,
    /// Decoded, in order.
    pub query: Vec<(String, String)>,
    /// The body as sent (empty: none).
    pub body: String,
    pub status: u16,
    pub authorization: Option<String>,
}

impl Logged {
    pub fn query(&self, name: &str) -> Option<&str> {
        query_value(&self.query, name)
    }
    /// The body as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A `POST /servers/{id}/actions/rebuild` the stand-in accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebuild {
    pub server: u64,
    pub server_name: String,
    pub image: u64,
    pub action: u64,
}

/// A snapshot as the tests see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub id: u64,
    /// The server it was taken of.
    pub server: Option<u64>,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    /// `creating` while its action runs, then `available`.
    pub status: String,
    pub created: String,
}

/// How an action ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// `status: error` with this error code and message.
    Error(String, String),
    /// Stays `running` for good.
    Never,
}

pub struct HcloudServer {
    shared: Arc<Shared>,
    http: Loopback,
}

struct Shared {
    state: Mutex<State>,
}

impl HcloudServer {
    /// Serves an empty project (one system image, `ubuntu-24.04`) whose only
    /// valid API token is `token`.
    pub fn start(token: &str) -> HcloudServer {
        let api = api(); // fail here, not in a connection thread
        let listener = http_stub::bind("hcloud");
        let mut state = State {
            token: token.to_string(),
            next_id: 1000,
            servers: BTreeMap::new(),
            networks: BTreeMap::new(),
            images: BTreeMap::new(),
            actions: BTreeMap::new(),
            rebuilds: Vec::new(),
            action_polls: 1,
            outcomes: VecDeque::new(),
            fail: None,
            rate_limited: None,
            used: 0,
            read_only: false,
            log: Vec::new(),
            violations: Vec::new(),
        };
        let ubuntu = Image {
            id: SYSTEM_IMAGE,
            kind: "system",
            name: Some("ubuntu-24.04".into()),
            description: "Ubuntu 24.04".into(),
            status: "available".into(),
            labels: BTreeMap::new(),
            created: "2024-04-25T12:00:00Z".into(),
            created_from: None,
        };
        state.images.insert(ubuntu.id, ubuntu);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
        });
        let serving = Arc::clone(&shared);
        let http = Loopback::serve(listener, move |stream| connection(&serving, api, stream));
        HcloudServer { shared, http }
    }

    /// The API endpoint, `http://127.0.0.1:PORT/v1` (`HCLOUD_ENDPOINT`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.http.port(), api().base_path)
    }

    /// A running server with these labels, a public IPv4 of its own in
    /// 198.18.0.0/15 (RFC 2544: reaches nothing) and a public IPv6 /64.
    /// Returns its id.
    pub fn add_server(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut st = self.lock();
        assert!(
            st.servers.values().all(|s| s.name != name),
            "server {name} exists"
        );
        let id = st.id();
        let server = Server {
            id,
            name: name.to_string(),
            labels: pairs(labels),
            status: "running".into(),
            created: now(),
            ipv4: Some(format!("198.18.{}.{}", id / 256 % 256, id % 256)),
            ipv6: Some(format!("2001:db8:{id:x}::/64")),
            private: Vec::new(),
            image: Some(SYSTEM_IMAGE),
        };
        st.servers.insert(id, server);
        id
    }

    pub fn remove_server(&self, name: &str) {
        let id = self.server_id(name);
        self.lock().servers.remove(&id);
    }

    pub fn server_id(&self, name: &str) -> u64 {
        self.lock()
            .servers
            .values()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name}"))
            .id
    }

    pub fn set_labels(&self, server: &str, labels: &[(&str, &str)]) {
        self.edit(server, |s| s.labels = pairs(labels));
    }

    /// Points the server's public IPv4 at `ip` (e.g. `127.0.0.1`, where the
    /// test sshd hosts listen; their port is the client file's `port:`).
    pub fn point_at(&self, server: &str, ip: &str) {
        self.set_public_net(server, Some(ip), None);
    }

    /// The server's public IPv4 address and IPv6 network (`2001:db8::/64`);
    /// `None`: it has none (Hetzner allows servers without either).
    pub fn set_public_net(&self, server: &str, ipv4: Option<&str>, ipv6: Option<&str>) {
        self.edit(server, |s| {
            s.ipv4 = ipv4.map(str::to_string);
            s.ipv6 = ipv6.map(str::to_string);
        });
    }

    /// `running`, `off`, ... (the enum of the description).
    pub fn set_status(&self, server: &str, status: &str) {
        self.edit(server, |s| s.status = status.to_string());
    }

    /// A private network; returns its id.
    pub fn add_network(&self, name: &str, ip_range: &str) -> u64 {
        let mut st = self.lock();
        let id = st.id();
        st.networks.insert(
            id,
            Network {
                id,
                name: name.to_string(),
                ip_range: ip_range.to_string(),
                created: now(),
            },
        );
        id
    }

    /// Attaches `server` to the network named `network` with address `ip`.
    pub fn attach(&self, server: &str, network: &str, ip: &str) {
        let net = {
            let st = self.lock();
            let found = st.networks.values().find(|n| n.name == network);
            found.unwrap_or_else(|| panic!("no network {network}")).id
        };
        self.edit(server, |s| s.private.push((net, ip.to_string())));
    }

    /// A snapshot of `server` taken earlier (available), e.g. to test
    /// retention; returns its id.
    pub fn add_snapshot(&self, server: &str, labels: &[(&str, &str)], created: &str) -> u64 {
        let server = self.server_id(server);
        let mut st = self.lock();
        let id = st.id();
        let name = st.servers[&server].name.clone();
        st.images.insert(
            id,
            Image {
                id,
                kind: "snapshot",
                name: None,
                description: String::new(),
                status: "available".into(),
                labels: pairs(labels),
                created: created.to_string(),
                created_from: Some((server, name)),
            },
        );
        id
    }

    /// Every snapshot in the project, oldest id first.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let st = self.lock();
        let snapshots = st.images.values().filter(|i| i.kind == "snapshot");
        snapshots
            .map(|i| Snapshot {
                id: i.id,
                server: i.created_from.as_ref().map(|(id, _)| *id),
                description: i.description.clone(),
                labels: i.labels.clone(),
                status: i.status.clone(),
                created: i.created.clone(),
            })
            .collect()
    }

    /// Every rebuild asked for, in order.
    pub fn rebuilds(&self) -> Vec<Rebuild> {
        self.lock().rebuilds.clone()
    }

    /// Actions answer `running` to their first `polls` `GET /actions/{id}`
    /// (default 1), then their outcome.
    pub fn action_polls(&self, polls: u32) {
        self.lock().action_polls = polls;
    }

    /// The next actions created end with these outcomes, in order (then
    /// `Success` again).
    pub fn next_actions(&self, outcomes: &[Outcome]) {
        self.lock().outcomes.extend(outcomes.iter().cloned());
    }

    /// The next `count` requests are refused with 429 and
    /// `RateLimit-Remaining: 0`, `RateLimit-Reset` `reset_in` seconds ahead.
    pub fn rate_limit_next(&self, count: usize, reset_in: u64) {
        self.lock().rate_limited = (count > 0).then_some((count, reset_in));
    }

    /// The next `count` requests fail with `status` (5xx) and Hetzner's
    /// error body, touching nothing.
    pub fn fail_next(&self, status: u16, count: usize) {
        self.lock().fail = (count > 0).then_some((status, count));
    }

    /// The token can read but not write: POST and DELETE answer 403
    /// `forbidden`, as for a read-only token.
    pub fn read_only(&self) {
        self.lock().read_only = true;
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// Requests refused by validation and responses that did not validate,
    /// each `METHOD /target: what`.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// The violations so far, which then no longer fail the test.
    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().violations)
    }

    /// Panics listing the violations, if there are any.
    pub fn assert_clean(&self) {
        let violations = self.violations();
        assert!(
            violations.is_empty(),
            "the hcloud stand-in saw {} invalid exchange(s):\n{}",
            violations.len(),
            violations.join("\n")
        );
    }

    fn edit(&self, server: &str, f: impl FnOnce(&mut Server)) {
        let id = self.server_id(server);
        f(self.lock().servers.get_mut(&id).unwrap());
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

impl Drop for HcloudServer {
    fn drop(&mut self) {
        // What fleetgate sent, for the leak scan; not the Authorization
        // header, which carries the token by design.
        let (sent, violations) = {
            let st = self.lock();
            let sent: String = st
                .log
                .iter()
                .map(|r| format!("{} {} -> {}\n{}\n", r.method, r.path, r.status, r.body))
                .collect();
            (sent, st.violations.clone())
        };
        crate::leakscan::capture("hcloud-requests", sent.as_bytes());
        self.http.stop();
        if !violations.is_empty() && !thread::panicking() {
            panic!(
                "the hcloud stand-in saw {} invalid exchange(s):\n{}",
                violations.len(),
                violations.join("\n")
            );
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        http_stub::lock(&self.state)
    }
}

fn pairs(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// The description and the schema checks

const OPENAPI: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/api/hcloud-openapi.json"
);

/// A matched path: its template, its path item, its path parameters.
type Route<'a> = (&'a str, &'a Map<String, Value>, BTreeMap<String, String>);

struct Api {
    /// "/v1", from the first of `servers`.
    base_path: String,
    paths: Map<String, Value>,
    schemas: Map<String, Value>,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let text = std::fs::read_to_string(OPENAPI)
            .unwrap_or_else(|e| panic!("{OPENAPI}: {e} (the hcloud stand-in needs it)"));
        let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{OPENAPI}: {e}"));
        let object = |v: &Value| v.as_object().cloned().unwrap_or_default();
        let url = doc["servers"][0]["url"].as_str().unwrap_or("");
        let base_path = url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
            .unwrap_or_default();
        Api {
            base_path: base_path.trim_end_matches('/').to_string(),
            paths: object(&doc["paths"]),
            schemas: object(&doc["components"]["schemas"]),
        }
    })
}

/// Patterns of the description, as code (no regex engine here). A pattern
/// not listed is a violation, never a silent pass.
fn pattern_holds(pattern: &str, s: &str) -> Option<bool> {
    Some(match pattern {
        // labels: a value (the same rule as the selector's).
        r"^(()|[a-z0-9A-Z]|([a-z0-9A-Z][a-z0-9A-Z\._-]{0,61}[a-z0-9A-Z]))$" => {
            selector::check_value(s).is_ok()
        }
        // location, datacenter and network zone names.
        r"^[a-z0-9]+(-?[a-z0-9]*)*$" => {
            s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        }
        _ => return None,
    })
}

impl Api {
    /// The template matching `path` (below the base path), its path item
    /// and its parameters; literal segments win over `{params}`.
    fn route(&self, path: &str) -> Option<Route<'_>> {
        let segs: Vec<&str> = path.split('/').skip(1).collect();
        let mut best = None;
        'templates: for (template, item) in &self.paths {
            let tsegs: Vec<&str> = template.split('/').skip(1).collect();
            let Some(item) = item.as_object().filter(|_| tsegs.len() == segs.len()) else {
                continue;
            };
            let (mut literals, mut params) = (0, BTreeMap::new());
            for (t, s) in tsegs.iter().zip(&segs) {
                if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    params.insert(name.to_string(), pct_decode(s, false));
                } else if t == s {
                    literals += 1;
                } else {
                    continue 'templates;
                }
            }
            if best.as_ref().is_none_or(|(n, _)| literals > *n) {
                best = Some((literals, (template.as_str(), item, params)));
            }
        }
        best.map(|(_, route)| route)
    }

    fn resolve<'a>(&'a self, mut schema: &'a Value) -> Result<&'a Value, String> {
        for _ in 0..32 {
            let Some(r) = schema.get("$ref").and_then(Value::as_str) else {
                return Ok(schema);
            };
            let name = r.trim_start_matches("#/components/schemas/");
            schema = self
                .schemas
                .get(name)
                .ok_or_else(|| format!("the description has no schema {r}"))?;
        }
        Err("a $ref loop".into())
    }

    /// `schema` with its `allOf` members merged in: properties and required
    /// names together, so that a property of one member is not "undeclared"
    /// for another.
    fn flatten(&self, schema: &Value) -> Result<Value, String> {
        let schema = self.resolve(schema)?;
        let Some(all) = schema.get("allOf").and_then(Value::as_array) else {
            return Ok(schema.clone());
        };
        let mut merged = schema.as_object().cloned().unwrap_or_default();
        merged.remove("allOf");
        for member in all {
            let Value::Object(member) = self.flatten(member)? else {
                continue;
            };
            for (key, value) in member {
                match (key.as_str(), merged.get_mut(&key)) {
                    ("properties", Some(Value::Object(mine))) => {
                        mine.extend(value.as_object().cloned().unwrap_or_default());
                    }
                    ("required", Some(Value::Array(mine))) => {
                        mine.extend(value.as_array().cloned().unwrap_or_default());
                    }
                    (_, None) => {
                        merged.insert(key, value);
                    }
                    _ => {}
                }
            }
        }
        Ok(Value::Object(merged))
    }

    /// Checks `value` (at JSON path `at`) against `schema`.
    fn check(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let s = self.flatten(schema)?;
        if value.is_null() && s["nullable"] == true {
            return Ok(());
        }
        for (key, need) in [("oneOf", 1..=1), ("anyOf", 1..=usize::MAX)] {
            if let Some(options) = s.get(key).and_then(Value::as_array) {
                let holding = options
                    .iter()
                    .filter(|o| self.check(o, value, at).is_ok())
                    .count();
                if !need.contains(&holding) {
                    return Err(format!(
                        "{at}: {holding} of the {} schemas of {key} hold",
                        options.len()
                    ));
                }
            }
        }
        let fail = |why: String| Err(format!("{at}: {why}"));
        if let Some(ty) = s.get("type").and_then(Value::as_str)
            && !type_ok(ty, value)
        {
            return fail(format!("expected {ty}, got {}", brief(value)));
        }
        if value.is_null() && s.get("properties").is_some() {
            return fail("null where an object is expected".into());
        }
        if let Some(allowed) = s.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            return fail(format!("{} is not one of {}", brief(value), json!(allowed)));
        }
        if let Some(text) = value.as_str() {
            if let Some(p) = s.get("pattern").and_then(Value::as_str) {
                match pattern_holds(p, text) {
                    Some(true) => {}
                    Some(false) => return fail(format!("{text:?} does not match {p}")),
                    None => return fail(format!("the stand-in cannot check pattern {p}")),
                }
            }
            let bad_format = match s.get("format").and_then(Value::as_str) {
                Some("date-time") => chrono::DateTime::parse_from_rfc3339(text).is_err(),
                Some("decimal") => text.parse::<f64>().is_err(),
                _ => false,
            };
            if bad_format {
                return fail(format!("{text:?} is not a {}", s["format"]));
            }
        }
        if let Some(n) = value.as_f64() {
            let max = s.get("maximum").and_then(Value::as_f64);
            let min = s.get("minimum").and_then(Value::as_f64);
            let int32 = s["format"] == "int32"
                && value.as_i64().and_then(|i| i32::try_from(i).ok()).is_none();
            if max.is_some_and(|m| n > m) || min.is_some_and(|m| n < m) || int32 {
                return fail(format!("{n} is out of range"));
            }
        }
        if let Some(object) = value.as_object() {
            let properties = s.get("properties").and_then(Value::as_object);
            for name in s["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap_or("");
                if !object.contains_key(name) {
                    return fail(format!("required property {name:?} is missing"));
                }
            }
            for (name, v) in object {
                let at = format!("{at}.{name}");
                match (
                    properties.and_then(|p| p.get(name)),
                    s.get("additionalProperties"),
                ) {
                    (Some(property), _) => self.check(property, v, &at)?,
                    (None, Some(Value::Object(extra))) => {
                        self.check(&Value::Object(extra.clone()), v, &at)?;
                    }
                    // Free-form objects (`details`) declare nothing.
                    (None, None | Some(Value::Bool(true))) if properties.is_none() => {}
                    (None, _) => return Err(format!("{at}: not in the schema")),
                }
            }
        }
        if let (Some(items), Some(schema)) = (value.as_array(), s.get("items")) {
            for (i, item) in items.iter().enumerate() {
                self.check(schema, item, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }

    /// Checks the query against the declared parameters of `op`, and the
    /// limits Hetzner documents in prose.
    fn check_query(&self, op: &Value, query: &[(String, String)]) -> Result<(), Box<Answer>> {
        let declared: Vec<&Value> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "query")
            .collect();
        for (name, value) in query {
            let invalid = |why: String| Answer::invalid(400, "invalid_input", name, why);
            let Some(p) = declared.iter().find(|p| p["name"] == name.as_str()) else {
                return Err(invalid(format!(
                    "query parameter {name:?} is not declared for this operation"
                )));
            };
            let schema = self.resolve(&p["schema"]).map_err(&invalid)?;
            let item = if schema["type"] == "array" {
                &schema["items"]
            } else {
                if query.iter().filter(|(n, _)| n == name).count() > 1 {
                    return Err(invalid(format!("{name} given more than once")));
                }
                schema
            };
            let typed = match item["type"].as_str() {
                Some("integer") => value.parse::<i64>().map(Value::from).ok(),
                Some("boolean") => value.parse::<bool>().map(Value::from).ok(),
                _ => Some(Value::from(value.as_str())),
            };
            let Some(typed) = typed else {
                return Err(invalid(format!("{name}={value:?} is not {}", item["type"])));
            };
            self.check(item, &typed, name)
                .map_err(|why| invalid(format!("{name}={value:?}: {why}")))?;
            // Limits Hetzner documents in prose (https://docs.hetzner.cloud/,
            // "Pagination", "Label Selector").
            let range = match name.as_str() {
                "page" => Some((1..=i64::MAX, "pages start at 1")),
                "per_page" => Some((1..=50, "per_page is 1 to 50")),
                _ => None,
            };
            if let Some((range, why)) = range
                && !typed.as_i64().is_some_and(|n| range.contains(&n))
            {
                return Err(invalid(format!("{name}={value}: {why}")));
            }
            if name == "label_selector" {
                Selector::parse(value)
                    .map_err(|e| invalid(format!("label_selector={value:?}: {e}")))?;
            }
        }
        Ok(())
    }

    /// Checks the body against the request body of `op`; returns it parsed.
    fn check_body(&self, op: &Value, req: &HttpRequest) -> Result<Option<Value>, Box<Answer>> {
        let invalid = |code, why: String| Answer::invalid(400, code, "body", why);
        let refuse = |why: &str| Err(invalid("invalid_input", why.to_string()));
        let Some(declared) = op.get("requestBody") else {
            if !req.body.is_empty() {
                return refuse("a body on an operation that takes none");
            }
            return Ok(None);
        };
        if req.body.is_empty() {
            if declared["required"] == true {
                return refuse("the request body is required");
            }
            return Ok(None);
        }
        let content_type = req.header("content-type").unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        let Some(schema) = declared["content"].get(media.to_ascii_lowercase()) else {
            return refuse(&format!(
                "Content-Type {content_type:?}, not one the operation takes"
            ));
        };
        let body: Value = serde_json::from_slice(&req.body)
            .map_err(|e| invalid("json_error", format!("the body is not JSON: {e}")))?;
        self.check(&schema["schema"], &body, "body")
            .map_err(|why| invalid("invalid_input", why))?;
        // The description constrains label values only; Hetzner checks keys.
        if let Some(labels) = body.get("labels").and_then(Value::as_object) {
            for key in labels.keys() {
                selector::check_key(key).map_err(|why| invalid("invalid_input", why))?;
            }
        }
        Ok(Some(body))
    }

    /// Checks a response the stand-in produced against what `op` declares
    /// for its status.
    fn check_response(&self, op: &Value, resp: &Resp) -> Result<(), String> {
        let declared = op["responses"]
            .get(resp.status.to_string())
            .or_else(|| op["responses"].get("default"))
            .ok_or_else(|| format!("status {} is not declared", resp.status))?;
        let Some(content) = declared.get("content").and_then(Value::as_object) else {
            return match resp.body.is_empty() {
                true => Ok(()),
                false => Err(format!("a body on a {} that has none", resp.status)),
            };
        };
        let schema = content
            .get(resp.content_type.split(';').next().unwrap_or(""))
            .ok_or_else(|| format!("Content-Type {} is not declared", resp.content_type))?;
        let body: Value =
            serde_json::from_slice(&resp.body).map_err(|e| format!("the body is not JSON: {e}"))?;
        self.check(&schema["schema"], &body, "response")
    }
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => true,
    }
}

/// A JSON value shortened for a message.
fn brief(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

// ---------------------------------------------------------------------------
// State and endpoints

/// The image every server starts from.
const SYSTEM_IMAGE: u64 = 161_547_269;

struct Server {
    id: u64,
    name: String,
    labels: BTreeMap<String, String>,
    status: String,
    created: String,
    ipv4: Option<String>,
    ipv6: Option<String>,
    /// (network id, address)
    private: Vec<(u64, String)>,
    image: Option<u64>,
}

struct Network {
    id: u64,
    name: String,
    ip_range: String,
    created: String,
}

struct Image {
    id: u64,
    /// `system` or `snapshot`.
    kind: &'static str,
    name: Option<String>,
    description: String,
    status: String,
    labels: BTreeMap<String, String>,
    created: String,
    created_from: Option<(u64, String)>,
}

struct Action {
    id: u64,
    command: &'static str,
    status: &'static str,
    started: String,
    finished: Option<String>,
    /// (id, type): the server first.
    resources: Vec<(u64, &'static str)>,
    polls_left: u32,
    outcome: Outcome,
}

struct State {
    token: String,
    next_id: u64,
    servers: BTreeMap<u64, Server>,
    networks: BTreeMap<u64, Network>,
    images: BTreeMap<u64, Image>,
    actions: BTreeMap<u64, Action>,
    rebuilds: Vec<Rebuild>,
    action_polls: u32,
    outcomes: VecDeque<Outcome>,
    fail: Option<(u16, usize)>,
    rate_limited: Option<(usize, u64)>,
    /// Requests counted against the hourly limit.
    used: u32,
    read_only: bool,
    log: Vec<Logged>,
    violations: Vec<String>,
}

/// Hetzner's limit: 3600 requests an hour, one more each second.
const RATE_LIMIT: u32 = 3600;

/// The operations the stand-in implements.
#[derive(Clone, Copy)]
enum Endpoint {
    ListServers,
    GetServer,
    CreateImage,
    Rebuild,
    ListImages,
    GetImage,
    DeleteImage,
    GetAction,
    ListNetworks,
}

impl Endpoint {
    fn of(method: &str, template: &str) -> Option<Endpoint> {
        Some(match (method, template) {
            ("GET", "/servers") => Endpoint::ListServers,
            ("GET", "/servers/{id}") => Endpoint::GetServer,
            ("POST", "/servers/{id}/actions/create_image") => Endpoint::CreateImage,
            ("POST", "/servers/{id}/actions/rebuild") => Endpoint::Rebuild,
            ("GET", "/images") => Endpoint::ListImages,
            ("GET", "/images/{id}") => Endpoint::GetImage,
            ("DELETE", "/images/{id}") => Endpoint::DeleteImage,
            ("GET", "/actions/{id}") => Endpoint::GetAction,
            ("GET", "/networks") => Endpoint::ListNetworks,
            _ => return None,
        })
    }
}

/// A non-2xx answer: Hetzner's error body, and whether the request was
/// invalid (a violation) or answered as the real API would.
struct Answer {
    status: u16,
    code: &'static str,
    message: String,
    details: Value,
    headers: Vec<(String, String)>,
    invalid: bool,
}

impl Answer {
    fn invalid(status: u16, code: &'static str, field: &str, why: String) -> Box<Answer> {
        let details = json!({ "fields": [{ "name": field, "messages": [why] }] });
        Box::new(Answer {
            status,
            code,
            message: why,
            details,
            headers: Vec::new(),
            invalid: true,
        })
    }
    fn error(status: u16, code: &'static str, message: String) -> Box<Answer> {
        Box::new(Answer {
            status,
            code,
            message,
            details: json!({}),
            headers: Vec::new(),
            invalid: false,
        })
    }
    fn not_found(what: &str, id: u64) -> Box<Answer> {
        Answer::error(404, "not_found", format!("{what} with ID '{id}' not found"))
    }
    fn resp(&self) -> Resp {
        let body = json!({ "error": { "code": self.code, "message": self.message, "details": self.details } });
        Resp {
            headers: self.headers.clone(),
            ..Resp::json(self.status, JSON, body)
        }
    }
}

/// What the endpoints need of a validated request.
struct Call<'a> {
    id: u64,
    query: &'a [(String, String)],
    body: Option<Value>,
}

impl Call<'_> {
    fn query(&self, name: &str) -> Option<&str> {
        query_value(self.query, name)
    }
    fn all(&self, name: &str) -> Vec<&str> {
        let matching = self.query.iter().filter(|(k, _)| k == name);
        matching.map(|(_, v)| v.as_str()).collect()
    }
    fn selector(&self) -> Option<Selector> {
        self.query("label_selector")
            .filter(|s| !s.trim().is_empty())
            .and_then(|s| Selector::parse(s).ok())
    }
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Answers one request, checks the answer, logs both.
    fn serve(&mut self, api: &Api, req: &HttpRequest) -> Resp {
        let (path, raw_query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        let query = parse_query(raw_query);
        let route = path
            .strip_prefix(api.base_path.as_str())
            .and_then(|rel| api.route(rel));
        let op = route
            .as_ref()
            .and_then(|(_, item, _)| item.get(&req.method.to_ascii_lowercase()));
        let mut resp = match self.answer(api, req, &query) {
            Ok(resp) => resp,
            Err(answer) => {
                if answer.invalid {
                    self.violations
                        .push(format!("{} {}: {}", req.method, req.target, answer.message));
                }
                answer.resp()
            }
        };
        if let Some(op) = op
            && let Err(why) = api.check_response(op, &resp)
        {
            self.violations.push(format!(
                "{} {}: the stand-in's {} response: {why}",
                req.method, req.target, resp.status
            ));
        }
        self.used = self.used.saturating_add(1).min(RATE_LIMIT);
        if !resp.headers.iter().any(|(k, _)| k.starts_with("RateLimit")) {
            let remaining = RATE_LIMIT - self.used;
            resp.headers
                .extend(rate_limit_headers(remaining, u64::from(self.used)));
        }
        self.log.push(Logged {
            method: req.method.clone(),
            path: path.to_string(),
            query,
            body: String::from_utf8_lossy(&req.body).into_owned(),
            status: resp.status,
            authorization: req.header("authorization").map(str::to_string),
        });
        resp
    }

    fn answer(
        &mut self,
        api: &Api,
        req: &HttpRequest,
        query: &[(String, String)],
    ) -> Result<Resp, Box<Answer>> {
        // Injected failures come first: the API in trouble.
        if let Some((status, count)) = self.fail {
            self.fail = (count > 1).then_some((status, count - 1));
            let code = match status {
                503 => "unavailable",
                504 => "timeout",
                _ => "server_error",
            };
            return Err(Answer::error(status, code, format!("injected {status}")));
        }
        if let Some((count, reset_in)) = self.rate_limited {
            self.rate_limited = (count > 1).then_some((count - 1, reset_in));
            let mut answer = Answer::error(
                429,
                "rate_limit_exceeded",
                "limit of 3600 requests per hour reached".into(),
            );
            answer.headers = rate_limit_headers(0, reset_in);
            return Err(answer);
        }
        let token = req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        if token != Some(self.token.as_str()) {
            return Err(Answer::error(
                401,
                "unauthorized",
                "unable to authenticate".into(),
            ));
        }
        let (path, _) = req.target.split_once('?').unwrap_or((&req.target, ""));
        let Some((template, item, params)) = path
            .strip_prefix(api.base_path.as_str())
            .and_then(|rel| api.route(rel))
        else {
            let why = format!("no such path in {OPENAPI}");
            return Err(Answer::invalid(404, "not_found", "path", why));
        };
        let Some(op) = item.get(&req.method.to_ascii_lowercase()) else {
            let why = format!("{template} has no {} in the description", req.method);
            return Err(Answer::invalid(405, "method_not_allowed", "method", why));
        };
        let Some(endpoint) = Endpoint::of(&req.method, template) else {
            let why = format!("the stand-in does not implement {} {template}", req.method);
            return Err(Answer::invalid(501, "not_implemented", "path", why));
        };
        let id = match params.get("id") {
            None => 0,
            Some(id) => {
                let schema = api
                    .resolve(&op["parameters"][0]["schema"])
                    .map_err(|why| Answer::invalid(500, "server_error", "id", why))?;
                let parsed = id
                    .parse::<u64>()
                    .ok()
                    .filter(|n| api.check(schema, &json!(n), "id").is_ok());
                parsed.ok_or_else(|| {
                    Answer::invalid(400, "invalid_input", "id", format!("{id:?} is not an ID"))
                })?
            }
        };
        api.check_query(op, query)?;
        let body = api.check_body(op, req)?;
        if self.read_only && req.method != "GET" {
            return Err(Answer::error(
                403,
                "forbidden",
                "insufficient permissions for this request: read-only token".into(),
            ));
        }
        self.endpoint(endpoint, Call { id, query, body })
    }

    fn endpoint(&mut self, endpoint: Endpoint, call: Call) -> Result<Resp, Box<Answer>> {
        match endpoint {
            Endpoint::ListServers => {
                let selector = call.selector();
                let statuses = call.all("status");
                let servers = self.servers.values().filter(|s| {
                    selector.as_ref().is_none_or(|sel| sel.matches(&s.labels))
                        && call.query("name").is_none_or(|n| n == s.name)
                        && (statuses.is_empty() || statuses.contains(&s.status.as_str()))
                });
                let mut rows: Vec<(u64, String, String, Value)> = servers
                    .map(|s| (s.id, s.name.clone(), s.created.clone(), self.server_json(s)))
                    .collect();
                sort(&mut rows, &call.all("sort"));
                Ok(page("servers", rows, &call))
            }
            Endpoint::GetServer => {
                let server = self.server(call.id)?;
                Ok(Resp::json(
                    200,
                    JSON,
                    json!({ "server": self.server_json(server) }),
                ))
            }
            Endpoint::CreateImage => {
                let server = self.server(call.id)?;
                let body = call.body.unwrap_or_default();
                if body.get("type").is_some_and(|t| t != "snapshot") {
                    let why = "the stand-in makes snapshots only (backups need backups enabled)";
                    return Err(Answer::invalid(400, "invalid_input", "type", why.into()));
                }
                let (server_id, name) = (server.id, server.name.clone());
                let id = self.id();
                let labels = body["labels"].as_object().map(|l| {
                    l.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                });
                let image = Image {
                    id,
                    kind: "snapshot",
                    name: None,
                    description: body["description"].as_str().unwrap_or("").to_string(),
                    status: "creating".into(),
                    labels: labels.unwrap_or_default(),
                    created: now(),
                    created_from: Some((server_id, name)),
                };
                self.images.insert(id, image);
                let action =
                    self.new_action("create_image", vec![(server_id, "server"), (id, "image")]);
                let json = json!({ "image": self.image_json(&self.images[&id]), "action": self.action_json(action) });
                Ok(Resp::json(201, JSON, json))
            }
            Endpoint::Rebuild => {
                let server = self.server(call.id)?.id;
                let wanted = call
                    .body
                    .as_ref()
                    .and_then(|b| b["image"].as_str())
                    .unwrap_or("");
                let image = self
                    .images
                    .values()
                    .find(|i| i.id.to_string() == wanted || i.name.as_deref() == Some(wanted));
                let Some(image) = image.map(|i| i.id) else {
                    let why = format!("image {wanted:?} not found");
                    return Err(Answer::error(400, "invalid_input", why));
                };
                let action = self.new_action("rebuild_server", vec![(server, "server")]);
                let s = self.servers.get_mut(&server).unwrap();
                s.status = "rebuilding".into();
                self.rebuilds.push(Rebuild {
                    server,
                    server_name: s.name.clone(),
                    image,
                    action,
                });
                let json = json!({ "action": self.action_json(action), "root_password": null });
                Ok(Resp::json(201, JSON, json))
            }
            Endpoint::ListImages => {
                let selector = call.selector();
                let (types, statuses) = (call.all("type"), call.all("status"));
                let images = self.images.values().filter(|i| {
                    selector.as_ref().is_none_or(|sel| sel.matches(&i.labels))
                        && (types.is_empty() || types.contains(&i.kind))
                        && (statuses.is_empty() || statuses.contains(&i.status.as_str()))
                        && call
                            .query("name")
                            .is_none_or(|n| i.name.as_deref() == Some(n))
                        && call.query("architecture").is_none_or(|a| a == "x86")
                });
                let mut rows: Vec<(u64, String, String, Value)> = images
                    .map(|i| {
                        let name = i.name.clone().unwrap_or_default();
                        (i.id, name, i.created.clone(), self.image_json(i))
                    })
                    .collect();
                sort(&mut rows, &call.all("sort"));
                Ok(page("images", rows, &call))
            }
            Endpoint::GetImage => {
                let image = self
                    .images
                    .get(&call.id)
                    .ok_or(Answer::not_found("image", call.id))?;
                Ok(Resp::json(
                    200,
                    JSON,
                    json!({ "image": self.image_json(image) }),
                ))
            }
            Endpoint::DeleteImage => {
                let image = self
                    .images
                    .get(&call.id)
                    .ok_or(Answer::not_found("image", call.id))?;
                if image.kind == "system" {
                    let why = "system images cannot be deleted".to_string();
                    return Err(Answer::invalid(403, "forbidden", "id", why));
                }
                self.images.remove(&call.id);
                Ok(Resp {
                    status: 204,
                    headers: Vec::new(),
                    content_type: JSON,
                    body: Vec::new(),
                })
            }
            Endpoint::GetAction => {
                if !self.actions.contains_key(&call.id) {
                    return Err(Answer::not_found("action", call.id));
                }
                self.poll(call.id);
                Ok(Resp::json(
                    200,
                    JSON,
                    json!({ "action": self.action_json(call.id) }),
                ))
            }
            Endpoint::ListNetworks => {
                let networks = self
                    .networks
                    .values()
                    .filter(|n| call.query("name").is_none_or(|name| name == n.name))
                    // Networks carry no labels here: a selector matches them
                    // as it matches an unlabelled resource.
                    .filter(|_| call.selector().is_none_or(|s| s.matches(&BTreeMap::new())));
                let mut rows: Vec<(u64, String, String, Value)> = networks
                    .map(|n| {
                        (
                            n.id,
                            n.name.clone(),
                            n.created.clone(),
                            self.network_json(n),
                        )
                    })
                    .collect();
                sort(&mut rows, &call.all("sort"));
                Ok(page("networks", rows, &call))
            }
        }
    }

    fn server(&self, id: u64) -> Result<&Server, Box<Answer>> {
        self.servers.get(&id).ok_or(Answer::not_found("server", id))
    }

    fn new_action(&mut self, command: &'static str, resources: Vec<(u64, &'static str)>) -> u64 {
        let id = self.id();
        let outcome = self.outcomes.pop_front().unwrap_or(Outcome::Success);
        let action = Action {
            id,
            command,
            status: "running",
            started: now(),
            finished: None,
            resources,
            polls_left: self.action_polls,
            outcome,
        };
        self.actions.insert(id, action);
        id
    }

    /// One `GET /actions/{id}`: a running action moves towards its outcome,
    /// and its resources with it.
    fn poll(&mut self, id: u64) {
        let action = self.actions.get_mut(&id).unwrap();
        if action.status != "running" || action.outcome == Outcome::Never {
            return;
        }
        if action.polls_left > 0 {
            action.polls_left -= 1;
            return;
        }
        let ok = action.outcome == Outcome::Success;
        action.status = if ok { "success" } else { "error" };
        action.finished = Some(now());
        let resources = action.resources.clone();
        for (rid, kind) in resources {
            match kind {
                // A failed snapshot is gone, as on Hetzner.
                "image" if ok => self.images.get_mut(&rid).unwrap().status = "available".into(),
                "image" => drop(self.images.remove(&rid)),
                _ => {}
            }
        }
        if self.actions[&id].command == "rebuild_server" {
            let rebuilt = self
                .rebuilds
                .iter()
                .find(|r| r.action == id)
                .map(|r| r.image);
            if let Some(server) = self.servers.get_mut(&resources_server(&self.actions[&id])) {
                server.status = "running".into();
                if ok {
                    server.image = rebuilt;
                }
            }
        }
    }

    fn server_json(&self, s: &Server) -> Value {
        let location = json!({
            "id": 1, "name": "fsn1", "description": "Falkenstein DC Park 1", "country": "DE",
            "city": "Falkenstein", "latitude": 50.47612, "longitude": 12.370071, "network_zone": "eu-central",
        });
        let price = |net: &str| json!({ "net": net, "gross": net });
        let private_net: Vec<Value> = s
            .private
            .iter()
            .map(|(network, ip)| {
                json!({ "network": network, "ip": ip, "alias_ips": [], "mac_address": format!("86:00:00:00:{:02x}:{:02x}", network % 256, s.id % 256) })
            })
            .collect();
        json!({
            "id": s.id, "name": s.name, "status": s.status, "created": s.created,
            "public_net": {
                "ipv4": s.ipv4.as_ref().map(|ip| json!({ "id": s.id + 500_000, "ip": ip, "blocked": false, "dns_ptr": format!("static.{ip}.clients.your-server.de") })),
                "ipv6": s.ipv6.as_ref().map(|ip| json!({ "id": s.id + 600_000, "ip": ip, "blocked": false, "dns_ptr": [] })),
                "floating_ips": [], "firewalls": [],
            },
            "private_net": private_net,
            "server_type": {
                "id": 104, "name": "cx22", "description": "CX22", "cores": 2, "memory": 4.0, "disk": 40,
                "deprecated": false, "deprecation": null, "storage_type": "local", "cpu_type": "shared",
                "architecture": "x86", "locations": [{ "id": 1, "name": "fsn1", "deprecation": null }],
                "prices": [{ "location": "fsn1", "price_hourly": price("0.0060"), "price_monthly": price("3.7900"),
                    "included_traffic": 21_990_232_555_520_u64, "price_per_tb_traffic": price("1.0000") }],
            },
            "datacenter": {
                "id": 4, "name": "fsn1-dc14", "description": "Falkenstein 1 virtual DC 14", "location": location,
                "server_types": { "supported": [104], "available": [104], "available_for_migration": [104] },
            },
            "location": location,
            "image": s.image.and_then(|i| self.images.get(&i)).map(|i| self.image_json(i)),
            "iso": null, "rescue_enabled": false, "locked": false, "backup_window": null,
            "outgoing_traffic": 0, "ingoing_traffic": 0, "included_traffic": 21_990_232_555_520_u64,
            "protection": { "delete": false, "rebuild": false }, "labels": s.labels,
            "volumes": [], "load_balancers": [], "primary_disk_size": 40, "placement_group": null,
        })
    }

    fn image_json(&self, i: &Image) -> Value {
        let snapshot = i.kind == "snapshot";
        json!({
            "id": i.id, "type": i.kind, "status": i.status, "name": i.name, "description": i.description,
            "image_size": (snapshot && i.status == "available").then_some(0.42),
            "disk_size": if snapshot { 40 } else { 5 }, "created": i.created,
            "created_from": i.created_from.as_ref().map(|(id, name)| json!({ "id": id, "name": name })),
            "bound_to": null, "os_flavor": "ubuntu", "os_version": "24.04", "rapid_deploy": !snapshot,
            "protection": { "delete": false }, "deprecated": null, "deleted": null,
            "labels": i.labels, "architecture": "x86",
        })
    }

    fn action_json(&self, id: u64) -> Value {
        let a = &self.actions[&id];
        let error = match &a.outcome {
            Outcome::Error(code, message) if a.status == "error" => {
                json!({ "code": code, "message": message })
            }
            _ => Value::Null,
        };
        let resources: Vec<Value> = a
            .resources
            .iter()
            .map(|(id, kind)| json!({ "id": id, "type": kind }))
            .collect();
        json!({
            "id": a.id, "command": a.command, "status": a.status,
            "progress": if a.status == "running" { 0 } else { 100 },
            "started": a.started, "finished": a.finished, "resources": resources, "error": error,
        })
    }

    fn network_json(&self, n: &Network) -> Value {
        let servers: Vec<u64> = self
            .servers
            .values()
            .filter(|s| s.private.iter().any(|(net, _)| *net == n.id))
            .map(|s| s.id)
            .collect();
        let gateway = n.ip_range.split('/').next().unwrap_or("").to_string();
        json!({
            "id": n.id, "name": n.name, "ip_range": n.ip_range,
            "subnets": [{ "type": "cloud", "ip_range": n.ip_range, "network_zone": "eu-central", "gateway": gateway, "vswitch_id": null }],
            "routes": [], "servers": servers, "protection": { "delete": false }, "labels": {},
            "created": n.created, "expose_routes_to_vswitch": false, "load_balancers": [],
        })
    }
}

fn resources_server(a: &Action) -> u64 {
    a.resources
        .iter()
        .find(|(_, k)| *k == "server")
        .map_or(0, |(id, _)| *id)
}

/// Sorts rows of (id, name, created, json) by Hetzner's `sort` values
/// (`id`, `name:desc`, ...), the first most significant; by id otherwise.
fn sort(rows: &mut [(u64, String, String, Value)], keys: &[&str]) {
    rows.sort_by(|a, b| {
        for key in keys {
            let (field, dir) = key.split_once(':').unwrap_or((key, "asc"));
            let order = match field {
                "name" => a.1.cmp(&b.1),
                "created" => a.2.cmp(&b.2),
                _ => a.0.cmp(&b.0),
            };
            let order = if dir == "desc" {
                order.reverse()
            } else {
                order
            };
            if order.is_ne() {
                return order;
            }
        }
        a.0.cmp(&b.0)
    });
}

/// One page of `rows` under `key`, with `meta.pagination`.
fn page(key: &str, rows: Vec<(u64, String, String, Value)>, call: &Call) -> Resp {
    let number = |name, default| {
        call.query(name)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(default)
    };
    let (page, per_page) = (number("page", 1), number("per_page", 25));
    let total = rows.len();
    let last = total.div_ceil(per_page).max(1);
    let items: Vec<Value> = rows
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|row| row.3)
        .collect();
    let pagination = json!({
        "page": page, "per_page": per_page,
        "previous_page": (page > 1).then(|| page - 1),
        "next_page": (page < last).then(|| page + 1),
        "last_page": last, "total_entries": total,
    });
    Resp::json(
        200,
        JSON,
        json!({ key: items, "meta": { "pagination": pagination } }),
    )
}

fn rate_limit_headers(remaining: u32, reset_in: u64) -> Vec<(String, String)> {
    let reset = chrono::Utc::now().timestamp() as u64 + reset_in;
    vec![
        ("RateLimit-Limit".into(), RATE_LIMIT.to_string()),
        ("RateLimit-Remaining".into(), remaining.to_string()),
        ("RateLimit-Reset".into(), reset.to_string()),
    ]
}

/// Now, RFC 3339 UTC ("2026-11-23T12:00:00Z"), as Hetzner writes times.
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

// ---------------------------------------------------------------------------
// HTTP

/// JSON as Hetzner types it.
const JSON: &str = "application/json";

/// Hetzner's bodies are small JSON documents.
const MAX_BODY: usize = 16 << 20;

fn connection(shared: &Shared, api: &Api, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    http_stub::exchange(stream, MAX_BODY, |req| match req {
        Ok(req) => shared.lock().serve(api, &req),
        Err(e) => {
            shared
                .lock()
                .violations
                .push(format!("malformed HTTP request: {e}"));
            Answer::invalid(400, "invalid_input", "request", e.to_string()).resp()
        }
    })
}

// ---------------------------------------------------------------------------
// Self-tests, over reqwest as fleetgate's client will call

const TOKEN: &str = "hc-t0ken-for-tests";

impl Reply {
    fn error(&self) -> (u16, String) {
        let code = self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string();
        (self.status, code)
    }
    /// `key` of each element of the array `list`.
    fn each(&self, list: &str, key: &str) -> Vec<Value> {
        let json = self.json();
        let items = json[list]
            .as_array()
            .unwrap_or_else(|| panic!("no {list}: {json}"));
        items.iter().map(|v| v[key].clone()).collect()
    }
    fn names(&self, list: &str) -> Vec<String> {
        let names = self.each(list, "name");
        names
            .iter()
            .map(|n| n.as_str().unwrap_or("").to_string())
            .collect()
    }
    fn pagination(&self) -> Value {
        self.json()["meta"]["pagination"].clone()
    }
}

/// One request to `path` (below the API's base, with or without a query),
/// `query` encoded by reqwest, with a Bearer token unless `headers` hold an
/// Authorization.
fn send(
    server: &HcloudServer,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    rt.unwrap().block_on(async {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let url = format!("{}{path}", server.url());
        let mut req = reqwest::Client::new().request(method, url).query(query);
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        {
            req = req.bearer_auth(TOKEN);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.body(body.to_string());
        }
        let resp = req.send().await.expect("the stand-in answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().iter();
        let headers = headers.map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()));
        let headers = headers.collect();
        let body = resp.text().await.unwrap();
        Reply {
            status,
            headers,
            body,
        }
    })
}

fn get(server: &HcloudServer, path: &str, query: &[(&str, &str)]) -> Reply {
    send(server, "GET", path, query, &[], None)
}

fn post(server: &HcloudServer, path: &str, body: Value) -> Reply {
    let json = [("Content-Type", "application/json")];
    send(server, "POST", path, &[], &json, Some(&body.to_string()))
}

/// `GET /actions/{id}` until the action is no longer running (10 polls).
fn wait(server: &HcloudServer, action: &Value) -> Value {
    let path = format!("/actions/{}", action["id"]);
    for _ in 0..10 {
        let action = get(server, &path, &[]).json()["action"].clone();
        if action["status"] != "running" {
            return action;
        }
    }
    panic!("action {} still running after 10 polls", action["id"]);
}

#[test]
fn lists_servers_by_label_selector() {
    let server = HcloudServer::start(TOKEN);
    let fleet: [(&str, &[(&str, &str)]); 5] = [
        ("alpha-1", &[("client", "alpha"), ("role", "app")]),
        ("alpha-2", &[("client", "alpha"), ("role", "db")]),
        (
            "alpha-3",
            &[("client", "alpha"), ("role", "app"), ("frozen", "")],
        ),
        ("beta-1", &[("client", "beta"), ("role", "app")]),
        ("tools", &[]),
    ];
    for (name, labels) in fleet {
        server.add_server(name, labels);
    }
    server.set_status("alpha-2", "off");
    for (selector, expect) in [
        ("client=alpha", &["alpha-1", "alpha-2", "alpha-3"][..]),
        ("client==alpha,role=app", &["alpha-1", "alpha-3"]),
        ("client=alpha,!frozen", &["alpha-1", "alpha-2"]),
        ("role in (app,db),client!=alpha", &["beta-1"]),
        ("role notin (app)", &["alpha-2", "tools"]),
        ("frozen", &["alpha-3"]),
        ("client=gamma", &[]),
    ] {
        let reply = get(&server, "/servers", &[("label_selector", selector)]);
        assert_eq!(reply.status, 200, "{selector}: {}", reply.body);
        assert_eq!(reply.names("servers"), expect, "{selector}");
    }
    let off = get(
        &server,
        "/servers",
        &[("status", "off"), ("status", "starting")],
    );
    assert_eq!(off.names("servers"), ["alpha-2"]);
    assert_eq!(
        get(&server, "/servers", &[("name", "beta-1")]).names("servers"),
        ["beta-1"]
    );
    let sorted = get(&server, "/servers", &[("sort", "name:desc")]);
    assert_eq!(sorted.names("servers")[..2], ["tools", "beta-1"]);
    let one = get(
        &server,
        &format!("/servers/{}", server.server_id("beta-1")),
        &[],
    );
    assert_eq!(
        one.json()["server"]["labels"],
        json!({"client": "beta", "role": "app"})
    );

    // Every request was valid, and so was every response (drop checks too).
    server.assert_clean();
    let log = server.requests();
    assert_eq!(log.len(), 11);
    let selector = log[3].query("label_selector");
    assert_eq!(
        (log[3].path.as_str(), selector),
        ("/v1/servers", Some("role in (app,db),client!=alpha"))
    );
    let statuses: Vec<&str> = log[7].query.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(statuses, ["off", "starting"]);
}

#[test]
fn pages_over_120_servers() {
    let server = HcloudServer::start(TOKEN);
    for i in 1..=120 {
        let client = if i % 2 == 0 { "alpha" } else { "beta" };
        server.add_server(&format!("s-{i:03}"), &[("client", client)]);
    }
    let mut seen = Vec::new();
    for (page, size, previous, next) in [
        (1, 50, None, Some(2)),
        (2, 50, Some(1), Some(3)),
        (3, 20, Some(2), None),
    ] {
        let reply = get(
            &server,
            "/servers",
            &[("per_page", "50"), ("page", &page.to_string())],
        );
        let names = reply.names("servers");
        assert_eq!(names.len(), size, "page {page}");
        let expect = json!({ "page": page, "per_page": 50, "previous_page": previous,
            "next_page": next, "last_page": 3, "total_entries": 120 });
        assert_eq!(reply.pagination(), expect);
        seen.extend(names);
    }
    let expected: Vec<String> = (1..=120).map(|i| format!("s-{i:03}")).collect();
    assert_eq!(seen, expected);

    // Hetzner's default page size is 25.
    let first = get(&server, "/servers", &[]);
    assert_eq!(
        (
            first.names("servers").len(),
            &first.pagination()["last_page"]
        ),
        (25, &json!(5))
    );
    // Filtered, then paged.
    let query = [
        ("label_selector", "client=alpha"),
        ("per_page", "50"),
        ("page", "2"),
    ];
    let alpha = get(&server, "/servers", &query);
    let names = alpha.names("servers");
    assert_eq!((names.len(), names[0].as_str()), (10, "s-102"));
    assert_eq!(alpha.pagination()["total_entries"], 60);
    // Past the end: empty, no next page.
    let past = get(&server, "/servers", &[("per_page", "50"), ("page", "9")]);
    assert_eq!(
        (past.names("servers").len(), &past.pagination()["next_page"]),
        (0, &Value::Null)
    );
    server.assert_clean();
}

#[test]
fn refuses_what_the_description_does_not_declare() {
    let server = HcloudServer::start(TOKEN);
    let id = server.add_server("alpha-1", &[("client", "alpha")]);
    let image = format!("POST /servers/{id}/actions/create_image");
    let rebuild = format!("POST /servers/{id}/actions/rebuild");
    // (request, JSON body, "status code: reason")
    let cases: [(&str, Option<&str>, &str); 26] = [
        (
            "GET /servers?per_page=51",
            None,
            "400 invalid_input: per_page is 1 to 50",
        ),
        (
            "GET /servers?per_page=0",
            None,
            "400 invalid_input: per_page is 1 to 50",
        ),
        (
            "GET /servers?page=0",
            None,
            "400 invalid_input: pages start at 1",
        ),
        (
            "GET /servers?per_page=ten",
            None,
            r#"400 invalid_input: per_page="ten" is not"#,
        ),
        (
            "GET /servers?limit=10",
            None,
            r#"400 invalid_input: "limit" is not declared"#,
        ),
        (
            "GET /servers?status=bogus",
            None,
            "400 invalid_input: is not one of",
        ),
        (
            "GET /servers?status=running,off",
            None,
            "400 invalid_input: is not one of",
        ),
        (
            "GET /servers?name=a&name=b",
            None,
            "400 invalid_input: name given more than once",
        ),
        (
            "GET /servers?label_selector=role+in+(a",
            None,
            "400 invalid_input: no `)` closes",
        ),
        (
            "GET /images?type=snapshots",
            None,
            "400 invalid_input: is not one of",
        ),
        (
            "GET /servers/abc",
            None,
            r#"400 invalid_input: "abc" is not an ID"#,
        ),
        (
            "GET /servers",
            Some("{}"),
            "400 invalid_input: a body on an operation that takes none",
        ),
        (
            &rebuild,
            Some("{}"),
            r#"400 invalid_input: required property "image" is missing"#,
        ),
        (
            &rebuild,
            Some(r#"{"image":42}"#),
            "400 invalid_input: body.image: expected string",
        ),
        (
            &image,
            None,
            "400 invalid_input: the request body is required",
        ),
        (
            &image,
            Some(r#"{"type":"image"}"#),
            "400 invalid_input: body.type: \"image\" is not one",
        ),
        (
            &image,
            Some(r#"{"name":"x"}"#),
            "400 invalid_input: body.name: not in the schema",
        ),
        (
            &image,
            Some(r#"{"labels":{"at":"12:00"}}"#),
            "400 invalid_input: \"12:00\" does not match",
        ),
        (
            &image,
            Some(r#"{"labels":{"-x":"y"}}"#),
            "400 invalid_input: `-x` is not a label key",
        ),
        (
            &image,
            Some(r#"{"labels":{"a":1}}"#),
            "400 invalid_input: body.labels.a: expected string",
        ),
        (
            &image,
            Some(r#"{"type":"backup"}"#),
            "400 invalid_input: snapshots only",
        ),
        (&image, Some("{"), "400 json_error: the body is not JSON"),
        (
            "DELETE /images/161547269",
            None,
            "403 forbidden: system images cannot be deleted",
        ),
        ("GET /no/such/thing", None, "404 not_found: no such path"),
        (
            "PATCH /servers/1",
            None,
            "405 method_not_allowed: /servers/{id} has no PATCH",
        ),
        (
            "POST /servers",
            Some("{}"),
            "501 not_implemented: does not implement POST /servers",
        ),
    ];
    for (i, (request, body, expect)) in cases.iter().enumerate() {
        let (method, path) = request.split_once(' ').unwrap();
        let headers = [("Content-Type", "application/json")];
        let reply = send(
            &server,
            method,
            path,
            &[],
            &headers[..body.iter().count()],
            *body,
        );
        let (status, rest) = expect.split_once(' ').unwrap();
        let (code, reason) = rest.split_once(": ").unwrap();
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert_eq!(
            reply.error(),
            (status.parse().unwrap(), code.to_string()),
            "{request}"
        );
        assert!(message.contains(reason), "{request}: {message}");
        let violations = server.violations();
        assert_eq!(violations.len(), i + 1, "{request}: {violations:?}");
        let prefix = format!("{method} /v1{path}");
        assert!(
            violations[i].starts_with(&prefix) && violations[i].contains(reason),
            "{}",
            violations[i]
        );
    }
    let text = [("Content-Type", "text/plain")];
    let plain = send(&server, "POST", &image[5..], &[], &text, Some("{}"));
    assert_eq!(plain.error(), (400, "invalid_input".to_string()));
    // Nothing was done, and every refusal was itself a valid error response.
    assert!(server.snapshots().is_empty() && server.rebuilds().is_empty());
    let violations = server.take_violations();
    assert_eq!(violations.len(), cases.len() + 1);
    assert!(
        !violations.iter().any(|v| v.contains("the stand-in's")),
        "{violations:?}"
    );
    server.assert_clean();
}

/// A test using the stand-in fails when fleetgate sent anything invalid,
/// even if the test itself never looks.
#[test]
#[should_panic(
    expected = "the hcloud stand-in saw 1 invalid exchange(s):\nGET /v1/servers?per_page=51: per_page=51: per_page is 1 to 50"
)]
fn an_invalid_request_fails_the_test_using_the_stand_in() {
    let server = HcloudServer::start(TOKEN);
    assert_eq!(get(&server, "/servers", &[("per_page", "51")]).status, 400);
}

#[test]
#[should_panic(expected = r#"body.labels.at: "12:00" does not match"#)]
fn assert_clean_names_each_violation() {
    let server = HcloudServer::start(TOKEN);
    let id = server.add_server("alpha-1", &[]);
    post(
        &server,
        &format!("/servers/{id}/actions/create_image"),
        json!({ "labels": { "at": "12:00" } }),
    );
    server.assert_clean();
}

#[test]
fn snapshot_wait_delete_and_rebuild() {
    let server = HcloudServer::start(TOKEN);
    let id = server.add_server("alpha-1", &[("client", "alpha")]);
    server.add_server("beta-1", &[("client", "beta")]);
    let labels = [("fleetgate/client", "alpha")];
    let older = server.add_snapshot("alpha-1", &labels, "2026-01-01T00:00:00Z");
    let labels = json!({ "fleetgate/client": "alpha", "fleetgate/rev": "0123456789ab",
        "fleetgate/run": "20260102T030405Z-42" });
    let body =
        json!({ "type": "snapshot", "description": "before 0123456789ab", "labels": labels });
    let created = post(
        &server,
        &format!("/servers/{id}/actions/create_image"),
        body,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let (image, action) = (&created.json()["image"], &created.json()["action"]);
    assert_eq!(
        (&image["status"], &image["type"]),
        (&json!("creating"), &json!("snapshot"))
    );
    assert_eq!(
        image["created_from"],
        json!({ "id": id, "name": "alpha-1" })
    );
    assert_eq!(
        (&action["status"], &action["command"]),
        (&json!("running"), &json!("create_image"))
    );
    let resources = json!([{ "id": id, "type": "server" }, { "id": image["id"], "type": "image" }]);
    assert_eq!(action["resources"], resources);
    let done = wait(&server, action);
    assert_eq!(
        (&done["status"], &done["progress"]),
        (&json!("success"), &json!(100))
    );
    assert_eq!(done["error"], Value::Null);
    // One poll answered `running` (the default), the next `success`.
    let log = server.requests();
    assert_eq!(
        log.iter()
            .filter(|r| r.path.starts_with("/v1/actions/"))
            .count(),
        2
    );
    assert_eq!(log[0].json()["labels"]["fleetgate/rev"], "0123456789ab");
    let image_id = image["id"].as_u64().unwrap();
    let fetched = get(&server, &format!("/images/{image_id}"), &[]);
    assert_eq!(fetched.json()["image"]["status"], "available");

    // fleetgate's snapshots of alpha, newest first; the system image is not one.
    let query = [
        ("type", "snapshot"),
        ("label_selector", "fleetgate/client=alpha"),
        ("sort", "created:desc"),
    ];
    let mine = get(&server, "/images", &query);
    assert_eq!(mine.each("images", "id"), [json!(image_id), json!(older)]);
    assert_eq!(
        get(&server, "/images", &[]).each("images", "type"),
        ["snapshot", "snapshot", "system"]
    );
    let deleted = send(
        &server,
        "DELETE",
        &format!("/images/{older}"),
        &[],
        &[],
        None,
    );
    assert_eq!((deleted.status, deleted.body.as_str()), (204, ""));
    let again = send(
        &server,
        "DELETE",
        &format!("/images/{older}"),
        &[],
        &[],
        None,
    );
    assert_eq!(again.error(), (404, "not_found".to_string()));
    let snapshots = server.snapshots();
    let s = &snapshots[0];
    assert_eq!((snapshots.len(), s.id, s.server), (1, image_id, Some(id)));
    assert_eq!(
        (s.status.as_str(), s.description.as_str()),
        ("available", "before 0123456789ab")
    );
    assert_eq!(s.labels["fleetgate/run"], "20260102T030405Z-42");
    assert!(s.created.ends_with('Z'));

    // A restore: the server rebuilt from the snapshot, named by its id.
    let body = json!({ "image": image_id.to_string() });
    let rebuild = post(&server, &format!("/servers/{id}/actions/rebuild"), body);
    assert_eq!(rebuild.status, 201, "{}", rebuild.body);
    assert_eq!(rebuild.json()["root_password"], Value::Null);
    let rebuilding = get(&server, &format!("/servers/{id}"), &[]).json();
    assert_eq!(rebuilding["server"]["status"], "rebuilding");
    let action = rebuild.json()["action"].clone();
    assert_eq!(wait(&server, &action)["status"], "success");
    let rebuilt = get(&server, &format!("/servers/{id}"), &[]).json()["server"].clone();
    assert_eq!(
        (&rebuilt["status"], &rebuilt["image"]["id"]),
        (&json!("running"), &json!(image_id))
    );
    let action = action["id"].as_u64().unwrap();
    let server_name = "alpha-1".to_string();
    assert_eq!(
        server.rebuilds(),
        [Rebuild {
            server: id,
            server_name,
            image: image_id,
            action
        }]
    );
    let missing = post(
        &server,
        &format!("/servers/{id}/actions/rebuild"),
        json!({ "image": "9" }),
    );
    assert_eq!(missing.error(), (400, "invalid_input".to_string()));
    server.assert_clean();
}

#[test]
fn faults_as_hetzner_answers_them() {
    let server = HcloudServer::start(TOKEN);
    let id = server.add_server("alpha-1", &[]);
    // Without a token, with another, another scheme: 401 in Hetzner's shape.
    for auth in ["", "Bearer nope", &format!("token {TOKEN}")] {
        let reply = send(
            &server,
            "GET",
            "/servers",
            &[],
            &[("Authorization", auth)],
            None,
        );
        assert_eq!(reply.error(), (401, "unauthorized".to_string()), "{auth}");
    }

    server.rate_limit_next(2, 7);
    for _ in 0..2 {
        let limited = get(&server, "/servers", &[]);
        assert_eq!(limited.error(), (429, "rate_limit_exceeded".to_string()));
        let remaining = limited.header("ratelimit-remaining");
        assert_eq!(
            (limited.header("RateLimit-Limit"), remaining),
            (Some("3600"), Some("0"))
        );
        let reset: i64 = limited.header("RateLimit-Reset").unwrap().parse().unwrap();
        assert!(
            (reset - chrono::Utc::now().timestamp() - 7).abs() <= 1,
            "{reset}"
        );
    }
    let ok = get(&server, "/servers", &[]);
    let remaining: u32 = ok.header("RateLimit-Remaining").unwrap().parse().unwrap();
    assert!(
        ok.status == 200 && (3500..3600).contains(&remaining),
        "{remaining}"
    );

    server.fail_next(503, 1);
    assert_eq!(
        get(&server, "/servers", &[]).error(),
        (503, "unavailable".to_string())
    );
    server.fail_next(500, 2);
    assert_eq!(
        get(&server, "/servers", &[]).error(),
        (500, "server_error".to_string())
    );
    assert_eq!(get(&server, "/servers", &[]).status, 500);
    assert_eq!(get(&server, "/servers", &[]).status, 200);

    // An action that fails, then one that never finishes.
    server.action_polls(0);
    let message = "image creation failed: disk busy";
    let failure = Outcome::Error("image_create_failed".into(), message.into());
    server.next_actions(&[failure, Outcome::Never]);
    let path = format!("/servers/{id}/actions/create_image");
    let failing = post(&server, &path, json!({ "type": "snapshot" })).json();
    let failed = wait(&server, &failing["action"]);
    assert_eq!(failed["status"], "error");
    assert_eq!(
        failed["error"],
        json!({ "code": "image_create_failed", "message": message })
    );
    assert!(server.snapshots().is_empty(), "a failed snapshot is gone");
    let hanging = post(&server, &path, json!({ "type": "snapshot" })).json();
    for _ in 0..5 {
        let action = get(
            &server,
            &format!("/actions/{}", hanging["action"]["id"]),
            &[],
        )
        .json();
        let action = &action["action"];
        assert_eq!(
            (&action["status"], &action["finished"]),
            (&json!("running"), &Value::Null)
        );
    }
    assert_eq!(server.snapshots()[0].status, "creating");

    // A read-only token reads but does not write.
    server.read_only();
    let forbidden = post(&server, &path, json!({ "type": "snapshot" }));
    assert_eq!(forbidden.error(), (403, "forbidden".to_string()));
    assert_eq!(get(&server, "/servers", &[]).status, 200);
    assert_eq!(
        get(&server, "/actions/1", &[]).error(),
        (404, "not_found".to_string())
    );
    // All of the above are answers, not violations.
    server.assert_clean();
    let log = server.requests();
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        (log[3].status, log[3].authorization.as_deref()),
        (429, Some(bearer.as_str()))
    );
}

#[test]
fn servers_come_and_go_and_move() {
    let server = HcloudServer::start(TOKEN);
    let alpha = |s: &HcloudServer| {
        get(s, "/servers", &[("label_selector", "client=alpha")]).names("servers")
    };
    server.add_server("alpha-1", &[("client", "alpha")]);
    assert_eq!(alpha(&server), ["alpha-1"]);
    server.add_server("alpha-2", &[("client", "alpha")]);
    assert_eq!(alpha(&server), ["alpha-1", "alpha-2"]);
    server.remove_server("alpha-1");
    server.set_labels("alpha-2", &[("client", "beta")]);
    assert!(alpha(&server).is_empty());
    server.set_labels("alpha-2", &[("client", "alpha")]);

    // Addresses: the public IPv4 pointed at loopback, none, a private one.
    server.point_at("alpha-2", "127.0.0.1");
    let net = server.add_network("backend", "10.0.0.0/16");
    server.attach("alpha-2", "backend", "10.0.1.5");
    let s = get(&server, "/servers", &[]).json()["servers"][0].clone();
    let public = &s["public_net"];
    assert_eq!(
        (&public["ipv4"]["ip"], &public["ipv6"]),
        (&json!("127.0.0.1"), &Value::Null)
    );
    let private = &s["private_net"][0];
    assert_eq!(
        (&private["network"], &private["ip"]),
        (&json!(net), &json!("10.0.1.5"))
    );
    let networks = get(&server, "/networks", &[("name", "backend")]);
    assert_eq!(networks.each("networks", "id"), [json!(net)]);
    let members = &networks.json()["networks"][0]["servers"];
    assert_eq!(members, &json!([server.server_id("alpha-2")]));
    server.set_public_net("alpha-2", None, Some("2001:db8:1::/64"));
    let s = get(&server, "/servers", &[]).json()["servers"][0].clone();
    let public = &s["public_net"];
    assert_eq!(
        (&public["ipv4"], &public["ipv6"]["ip"]),
        (&Value::Null, &json!("2001:db8:1::/64"))
    );
    server.assert_clean();
}

/// The response check is not vacuous: a server missing a required field,
/// with a label value Hetzner forbids or a field the description does not
/// have, is caught.
#[test]
fn responses_are_checked_too() {
    let server = HcloudServer::start(TOKEN);
    let id = server.add_server("alpha-1", &[("client", "alpha")]);
    let op = &api().paths["/servers/{id}"]["get"];
    let valid = get(&server, &format!("/servers/{id}"), &[]).json();
    let check = |body: Value| api().check_response(op, &Resp::json(200, JSON, body));
    assert_eq!(check(valid.clone()), Ok(()));
    let edited = |pointer: &str, value: Option<Value>| {
        let mut body = valid.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let object = body.pointer_mut(parent).unwrap().as_object_mut().unwrap();
        match value {
            Some(v) => drop(object.insert(key.to_string(), v)),
            None => drop(object.remove(key)),
        }
        check(body).unwrap_err()
    };
    let s = "response.server";
    for (pointer, value, expect) in [
        (
            "/server/labels",
            None,
            format!("{s}: required property \"labels\" is missing"),
        ),
        (
            "/server/labels/client",
            Some(json!("al pha")),
            format!("{s}.labels.client: \"al pha\" does not match"),
        ),
        (
            "/server/color",
            Some(json!("red")),
            format!("{s}.color: not in the schema"),
        ),
        (
            "/server/status",
            Some(json!("asleep")),
            format!("{s}.status: \"asleep\" is not one of"),
        ),
        (
            "/server/created",
            Some(json!("today")),
            format!("{s}.created: \"today\" is not a \"date-time\""),
        ),
        (
            "/server/public_net/ipv4/blocked",
            Some(Value::Null),
            format!("{s}.public_net.ipv4.blocked: expected boolean, got null"),
        ),
        // allOf + nullable: the image may be null, not half an image.
        (
            "/server/image/os_flavor",
            None,
            format!("{s}.image: required property \"os_flavor\" is missing"),
        ),
    ] {
        assert!(
            edited(pointer, value).starts_with(&expect),
            "{pointer}: {expect}"
        );
    }
    // A 204 has no body; any other status is Hetzner's error body (`default`).
    let delete = &api().paths["/images/{id}"]["delete"];
    let no_body = api().check_response(delete, &Resp::json(204, JSON, json!({})));
    assert_eq!(no_body.unwrap_err(), "a body on a 204 that has none");
    let conflict = Answer::error(409, "conflict", "busy".into()).resp();
    assert_eq!(api().check_response(delete, &conflict), Ok(()));
    assert_eq!(pattern_holds("^[a-z]+$", "abc"), None);
    server.assert_clean();
}
