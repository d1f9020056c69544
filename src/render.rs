//! minijinja: a validated fleet plus secrets → each client's desired files per
//! host and app.
//!
//! Undefined variables are errors (strict undefined), not empty strings. An
//! app's templates see only the secrets the app declares in `secrets:`.
//! Templates render either with the real values (files for a host) or with
//! masks (everything a person reads): [`SecretView`] decides, per render.
//!
//! Health checks never carry a secret: their text is logged, shown in
//! failures and written to the run record in Git. A check template that
//! could reach one is refused when it compiles ([`secret_use_in_check`]), and,
//! in case that reading missed a way, a check whose real rendering holds a
//! secret is refused when it renders ([`secret_in_rendered_check`]). Errors
//! of a render with the real values are masked before they leave.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::Serialize;

use crate::config::{APPS_DIR, App, Client, Fleet, HealthCheck, Host, Hosts};
use crate::error::Diagnostic;
use crate::scan::pin::ImageRef;
use crate::secrets::{MASK, Masker, Secret};

/// The secrets one client can use, merged: the client's file overrides the
/// shared one key by key.
#[derive(Debug, Clone, Default)]
pub struct ClientSecrets {
    /// Key → value and keyed digest, when the files were decrypted.
    pub values: Option<BTreeMap<String, (Secret, [u8; 32])>>,
    /// Key → where it comes from (file path), known without decrypting.
    pub origin: BTreeMap<String, String>,
}

/// How secret values appear in a render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretView {
    /// The values themselves: only for files that go to a host.
    Real,
    /// `••••` plus a short keyed fingerprint, so a reader sees *that* a value
    /// changed; plain `••••` when the values were not decrypted.
    Masked,
}

impl ClientSecrets {
    fn value(&self, key: &str, view: SecretView) -> Option<String> {
        if !self.origin.contains_key(key) {
            return None;
        }
        Some(match (&self.values, view) {
            (Some(values), SecretView::Real) => values.get(key)?.0.expose().to_string(),
            (Some(values), SecretView::Masked) => {
                format!("{MASK}{}", hex::encode(&values.get(key)?.1[..4]))
            }
            (None, _) => MASK.to_string(),
        })
    }
}

/// What a render of a client may take from another render of the same
/// client (the other side of a plan, rendered with the same `rev` and
/// view) instead of rendering it again: a template renders to the same text
/// from the same source and the same context. The caller vouches that the
/// client's inputs (its files, the shared secrets, the pipeline) are the
/// same blobs at both sides; `apps` and `templates` say what else is.
pub struct Reuse<'a> {
    pub prior: &'a DesiredClient,
    /// Apps whose `app.yaml` is the same blob at both sides: the same
    /// images, files, secrets, checks and routes.
    pub apps: &'a BTreeSet<String>,
    /// File templates whose source is the same blob at both sides and that
    /// pull in no other template (see [`pulls_in_no_other_template`]).
    pub templates: &'a BTreeSet<String>,
}

/// Whether a template's text alone (with its context) decides its output:
/// it includes, imports or extends no other template, and calls no
/// `debug()` (which prints the environment: the names of every template
/// compiled for the client). A plain scan for `debug`: a template that only
/// mentions the word is rendered again, which costs a render, not a change.
pub fn pulls_in_no_other_template(source: &str) -> bool {
    other_template_tag(source).is_none() && !source.contains("debug")
}

/// A client's desired state at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredClient {
    pub name: String,
    pub group: String,
    pub hosts: Vec<Host>,
    pub apps: BTreeMap<String, DesiredApp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredApp {
    pub images: BTreeMap<String, ImageRef>,
    /// Host → release-relative path → content.
    pub files: BTreeMap<String, BTreeMap<String, String>>,
    /// Host → rendered health checks, in app order.
    pub health: BTreeMap<String, Vec<RenderedCheck>>,
    /// Declared secret keys: where each comes from, and its keyed digest.
    pub secrets: BTreeMap<String, SecretState>,
    /// The declared secrets' values, in a `SecretView::Real` render only: to
    /// mask them out of anything a remote command prints.
    pub exposed: Vec<Secret>,
    /// Host → the app's routes, rendered.
    pub routes: BTreeMap<String, Vec<RenderedRoute>>,
    /// A blue_green app: `files`, `health` and `routes` above are its blue
    /// slot's; this is its green slot's, and each slot's port per host.
    pub green: Option<Box<Slot>>,
}

impl DesiredApp {
    /// Its only render, or a blue_green app's blue slot, as a [`Slot`].
    pub fn blue(&self) -> Slot {
        Slot {
            files: self.files.clone(),
            health: self.health.clone(),
            routes: self.routes.clone(),
            ports: BTreeMap::new(),
        }
    }
}

/// The other slot of a blue_green app, rendered with its `release.port`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slot {
    pub files: BTreeMap<String, BTreeMap<String, String>>,
    pub health: BTreeMap<String, Vec<RenderedCheck>>,
    pub routes: BTreeMap<String, Vec<RenderedRoute>>,
    /// Host → [blue, green] host ports.
    pub ports: BTreeMap<String, [u16; 2]>,
}

/// One route of an app for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedRoute {
    pub hosts: Vec<String>,
    /// A path prefix; `None`: `/`.
    pub path: Option<String>,
    pub service: Option<String>,
    /// The host port it goes to (a blue_green app's: its slot's).
    pub port: u16,
    pub health: Option<String>,
    pub directives: Vec<String>,
}

/// Where the rendered routes of an app go in its release: a route change is
/// a change of the release, shown in the plan like any file.
pub const ROUTES_FILE: &str = ".fleetgate/routes";

/// The text of [`ROUTES_FILE`]: one line per route and host name.
pub fn routes_file(app: &str, routes: &[RenderedRoute]) -> String {
    let mut out = format!(
        "# The routes of {app}, rendered by fleetgate: the host's proxy is configured from them.\n"
    );
    for r in routes {
        for h in &r.hosts {
            out.push_str(&format!(
                "{h}{} -> 127.0.0.1:{}{}{}\n",
                r.path.as_deref().unwrap_or("/"),
                r.port,
                r.service
                    .as_deref()
                    .map(|s| format!(" service {s}"))
                    .unwrap_or_default(),
                r.health
                    .as_deref()
                    .map(|p| format!(" health {p}"))
                    .unwrap_or_default(),
            ));
            for d in &r.directives {
                out.push_str(&format!("  {}\n", d.trim()));
            }
        }
    }
    out
}

/// A public host name a proxy can serve: DNS labels (lowercase letters,
/// digits, `-`), optionally one leading `*.` wildcard.
pub fn is_route_host(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretState {
    /// The file that provides the value.
    pub origin: String,
    /// Keyed digest of the value (`None`: not decrypted).
    pub digest: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderedCheck {
    Http { url: String },
    Command { command: String },
}

/// Compiled templates of every app of a fleet.
pub struct Renderer {
    env: Environment<'static>,
    /// Apps with a template that did not compile: never rendered.
    broken: std::collections::BTreeSet<String>,
    /// Templates that exceeded the render budget once: not run again for the
    /// next host or client (a 10,000-client fleet would spend the budget
    /// 10,000 times), each of those renders fails the same way at once.
    /// The value: how it failed, and on which line.
    over_budget: std::sync::Mutex<BTreeMap<String, (minijinja::ErrorKind, Option<usize>)>>,
    /// Each app's `app` context (name, images): the same for every client,
    /// built once.
    app_ctx: BTreeMap<String, Value>,
}

#[derive(Serialize)]
struct ClientCtx<'a> {
    name: &'a str,
    domain: &'a str,
    group: &'a str,
    vars: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct HostCtx<'a> {
    name: &'a str,
    address: &'a str,
    port: u16,
    user: &'a str,
}

#[derive(Serialize)]
struct AppCtx<'a> {
    name: &'a str,
    images: BTreeMap<&'a str, String>,
}

#[derive(Serialize)]
struct ReleaseCtx<'a> {
    rev: &'a str,
    dir: String,
    /// A blue_green app's slot port; absent (undefined) otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

/// The `app` of an app's templates.
fn app_ctx(app: &App) -> Value {
    to_value(AppCtx {
        name: &app.name,
        images: app
            .images
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_string()))
            .collect(),
    })
}

fn to_value<T: Serialize>(v: T) -> Value {
    Value::from(minijinja::value::Serde(v))
}

/// The work one render (one template, one host) may do, in minijinja fuel:
/// about one unit per instruction, plus one per 64 bytes produced. Templates
/// are untrusted input (merge-request plan jobs render them), and a nested
/// `range(100000)` loop would otherwise keep a runner busy for hours.
/// Measured (minijinja's `State::fuel_levels`): the example fleet's largest
/// render, zitadel.env.j2, uses 47; the test fleets' and the sandbox's are
/// as small. A loop over a thousand vhosts of twenty templated lines needs
/// some 100,000. 5,000,000 leaves room for that fifty times over and runs out
/// in about 0.1 s (debug build; less in release).
const RENDER_FUEL: u64 = 5_000_000;

/// The largest file one render may produce (the messages say 8 MiB). Fuel
/// alone would allow 300 MiB (a fuel unit pays for 64 bytes); a
/// configuration file is far smaller.
const RENDER_OUTPUT_LIMIT: usize = 8 << 20;

/// The output of one render, refusing to grow past [`RENDER_OUTPUT_LIMIT`].
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > RENDER_OUTPUT_LIMIT {
            return Err(std::io::Error::other("render output limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The host name of an http(s) URL, without port or credentials.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split_once(']').map(|(h, _)| &h[1..])?
    } else {
        host.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// The probe only speaks HTTP: anything else (`file://`, `ftp://`, a
/// templated scheme) is refused before a deploy, not tried during one.
fn is_http_url(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn health_template(app: &str, i: usize) -> String {
    format!("{app}/app.yaml#health[{i}]")
}

fn route_host_template(app: &str, i: usize, j: usize) -> String {
    format!("{app}/app.yaml#routes[{i}].hosts[{j}]")
}

fn route_port_template(app: &str, i: usize) -> String {
    format!("{app}/app.yaml#routes[{i}].port")
}

fn slot_port_template(app: &str, i: usize) -> String {
    format!("{app}/app.yaml#slot_ports[{i}]")
}

/// The templates of an app's routes and slot ports (name, source): they end
/// up in proxy configs, plans and logs, so like checks they must not reach a
/// secret.
fn route_templates(app: &App) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, r) in app.routes.iter().enumerate() {
        for (j, h) in r.hosts.iter().enumerate() {
            out.push((route_host_template(&app.name, i, j), h.clone()));
        }
        if let Some(p) = &r.port {
            out.push((route_port_template(&app.name, i), p.clone()));
        }
    }
    if let crate::config::Strategy::BlueGreen { slot_ports, .. } = &app.strategy {
        for (i, p) in slot_ports.iter().enumerate() {
            out.push((slot_port_template(&app.name, i), p.clone()));
        }
    }
    out
}

/// The file a template name points back to, for messages.
fn template_file(name: &str) -> String {
    match name.split_once("#") {
        Some((file, _)) => format!("{APPS_DIR}/{file}"),
        None => format!("{APPS_DIR}/{name}"),
    }
}

/// Why a render failed, when it ran out of its budget.
fn over_budget(kind: minijinja::ErrorKind) -> Option<&'static str> {
    match kind {
        minijinja::ErrorKind::OutOfFuel => Some("too much work: loops, filters or data"),
        // The one writer renders go to is `Bounded`: failing means full.
        minijinja::ErrorKind::WriteFailure => Some("output larger than 8 MiB"),
        _ => None,
    }
}

fn template_diag(name: &str, err: &minijinja::Error, context: &str) -> Diagnostic {
    let over_budget = over_budget(err.kind());
    let mut message = err.kind().to_string();
    if let Some(detail) = err.detail() {
        message = format!("{message}: {detail}");
    }
    if let Some(why) = over_budget {
        message = format!("exceeded the render budget ({why})");
    }
    if !context.is_empty() {
        message = format!("{message} (rendering for {context})");
    }
    let field = name
        .split_once('#')
        .map(|(_, f)| f.to_string())
        .unwrap_or_default();
    let hint = match err.kind() {
        minijinja::ErrorKind::UndefinedError => {
            "templates see client (name, domain, group, vars), host (name, address, port, user), app (name, images), secrets (the app's declared keys), release (rev, dir; port in a blue_green app's slot); define the variable in the client's `vars:` or fix the name"
        }
        _ if over_budget.is_some() => {
            "templates render for every client and host on every plan, merge requests included: keep loops small and files under 8 MiB"
        }
        _ => "fix the template syntax (minijinja, Jinja2-compatible)",
    };
    Diagnostic::new(template_file(name), message)
        .field(field)
        .line(err.line().and_then(|l| u32::try_from(l).ok()))
        .hint(hint)
}

/// Why a check must not carry a secret, and what to do instead.
const CHECK_SECRET_HINT: &str = "a check must not carry a secret: its text is logged and recorded (progress lines, failures, the run record in Git); put the secret in a rendered file on the host and have a command check read it, e.g. `curl -H @token.hdr …` or a script shipped in the release";

fn check_field(i: usize, check: &HealthCheck) -> String {
    match check {
        HealthCheck::Http(_) => format!("health[{i}].http"),
        HealthCheck::Command(_) => format!("health[{i}].command"),
    }
}

fn check_secret_diag(app: &str, i: usize, check: &HealthCheck, message: String) -> Diagnostic {
    Diagnostic::new(format!("{APPS_DIR}/{app}/app.yaml"), message)
        .field(check_field(i, check))
        .hint(CHECK_SECRET_HINT)
}

/// What in a check template could reach a secret, read from the template
/// rather than found by rendering it: `secrets` (directly, or through `set`,
/// `with`, a macro), `debug()` (prints the whole context), and another
/// template (`include`, `import`, `from`, `extends`), which sees the secrets.
fn secret_use_in_check(template: &minijinja::Template) -> Option<String> {
    let names = template.undeclared_variables(false);
    if names.contains("secrets") {
        return Some("it reads `secrets`".into());
    }
    if names.contains("debug") {
        return Some(
            "it calls `debug()`, which prints every value in scope, secrets included".into(),
        );
    }
    other_template_tag(template.source())
        .map(|tag| format!("it uses `{{% {tag} %}}`, and the other template sees the secrets"))
}

/// The first tag in `source` that pulls in another template. A plain scan of
/// the block tags: one inside `{% raw %}` or a comment is refused too, which
/// costs nothing a check needs.
fn other_template_tag(source: &str) -> Option<&'static str> {
    source.match_indices("{%").find_map(|(at, _)| {
        let rest = source[at + 2..].trim_start_matches(['-', '+']).trim_start();
        let word = rest
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or_default();
        ["include", "import", "from", "extends"]
            .into_iter()
            .find(|tag| *tag == word)
    })
}

/// Whether a check rendered with the real secret values carries one: it
/// holds a value (a secret pasted into a client var, say), or it renders
/// differently than with the masks (a way to the secrets the template
/// reading missed).
fn secret_in_rendered_check(
    real: &str,
    masked: Option<&str>,
    exposed: &[(&str, &Secret)],
) -> Option<String> {
    if let Some((key, _)) = exposed
        .iter()
        .find(|(_, v)| !v.expose().is_empty() && real.contains(v.expose()))
    {
        return Some(format!(
            "this check carries a secret: rendered with the real values, it contains the value of `{key}`"
        ));
    }
    (masked != Some(real)).then(|| {
        "this check carries a secret: it renders differently with the real values than masked"
            .into()
    })
}

fn mask_diag(masker: &Masker, d: Diagnostic) -> Diagnostic {
    Diagnostic {
        file: masker.mask(&d.file),
        field: d.field.map(|f| masker.mask(&f)),
        line: d.line,
        message: masker.mask(&d.message),
        hint: d.hint.map(|h| masker.mask(&h)),
    }
}

impl Renderer {
    /// Compiles every template (files and health checks) of every app. Apps
    /// whose templates do not compile are reported and left out.
    pub fn new(fleet: &Fleet) -> (Renderer, Vec<Diagnostic>) {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .build()
                .expect("default delimiters are valid"),
        );
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_fuel(Some(RENDER_FUEL));
        let mut problems = Vec::new();
        let mut refused = Vec::new();
        let mut broken = std::collections::BTreeSet::new();
        for app in fleet.apps.values() {
            let before = problems.len();
            for (name, source) in &app.templates {
                if let Err(e) = env.add_template_owned(name.clone(), source.clone()) {
                    problems.push(template_diag(name, &e, ""));
                }
            }
            for (i, check) in app.health.iter().enumerate() {
                let source = match check {
                    HealthCheck::Http(h) => h.url.clone(),
                    HealthCheck::Command(c) => c.clone(),
                };
                let name = health_template(&app.name, i);
                match env.add_template_owned(name.clone(), source) {
                    Err(e) => problems.push(template_diag(&name, &e, "")),
                    Ok(()) => {
                        let template = env.get_template(&name).expect("just added");
                        if let Some(why) = secret_use_in_check(&template) {
                            let message = format!("this check could carry a secret: {why}");
                            refused.push(check_secret_diag(&app.name, i, check, message));
                        }
                    }
                }
            }
            for (name, source) in route_templates(app) {
                match env.add_template_owned(name.clone(), source) {
                    Err(e) => problems.push(template_diag(&name, &e, "")),
                    Ok(()) => {
                        let template = env.get_template(&name).expect("just added");
                        if let Some(why) = secret_use_in_check(&template) {
                            let field = name.split_once('#').map(|(_, f)| f).unwrap_or_default();
                            refused.push(
                                Diagnostic::new(
                                    format!("{APPS_DIR}/{}/app.yaml", app.name),
                                    format!("this route could carry a secret: {why}"),
                                )
                                .field(field)
                                .hint("routes are written into proxy configs, plans and logs: build them from client, host and app values only"),
                            );
                        }
                    }
                }
            }
            if problems.len() > before {
                broken.insert(app.name.clone());
            }
        }
        // Not `broken`: such an app still renders, so a render with the real
        // values meets the second line of defence too.
        problems.extend(refused);
        let over_budget = Default::default();
        let app_ctx = fleet
            .apps
            .values()
            .map(|a| (a.name.clone(), app_ctx(a)))
            .collect();
        (
            Renderer {
                env,
                broken,
                over_budget,
                app_ctx,
            },
            problems,
        )
    }

    /// One template for one host, within the render budget.
    fn render_one(&self, name: &str, ctx: &Value) -> Result<String, minijinja::Error> {
        let spent = |kind| minijinja::Error::new(kind, "the render budget ran out before");
        if let Some((kind, _)) = self.over_budget.lock().expect("not poisoned").get(name) {
            return Err(spent(*kind));
        }
        let mut out = Bounded(Vec::new());
        let rendered = self
            .env
            .get_template(name)
            .and_then(|t| t.render_captured_to(ctx, &mut out));
        if let Err(e) = rendered {
            if over_budget(e.kind()).is_some() {
                self.over_budget
                    .lock()
                    .expect("not poisoned")
                    .insert(name.to_string(), (e.kind(), e.line()));
            }
            return Err(e);
        }
        // minijinja writes whole strings; the bytes are its output's UTF-8
        // (taken as they are: no copy).
        Ok(String::from_utf8(out.0)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// [`template_diag`], with the line a template first ran out of budget
    /// on for the renders [`Renderer::render_one`] then refused: the same
    /// problem, said once.
    fn diag(&self, name: &str, err: &minijinja::Error, context: &str) -> Diagnostic {
        let d = template_diag(name, err, context);
        match self.over_budget.lock().expect("not poisoned").get(name) {
            Some((_, line)) if d.line.is_none() => d.line(line.and_then(|l| u32::try_from(l).ok())),
            _ => d,
        }
    }

    /// A port template rendered for one host: a number in 1-65535.
    fn render_port(&self, name: &str, ctx: &Value, where_: &str) -> Result<u16, Diagnostic> {
        let text = self
            .render_one(name, ctx)
            .map_err(|e| self.diag(name, &e, where_))?;
        match text.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(Diagnostic::new(
                template_file(name),
                format!("`{}` is not a port (rendering for {where_})", text.trim()),
            )
            .field(
                name.split_once('#')
                    .map(|(_, f)| f.to_string())
                    .unwrap_or_default(),
            )
            .hint("a port is a number from 1 to 65535")),
        }
    }

    /// An app's routes for one host (rendered with masked secrets: they
    /// read none), `port` being a blue_green app's slot port.
    fn render_routes(
        &self,
        app: &App,
        ctx: &Value,
        port: Option<u16>,
        where_: &str,
        problems: &mut Vec<Diagnostic>,
    ) -> Vec<RenderedRoute> {
        let mut out = Vec::new();
        for (i, r) in app.routes.iter().enumerate() {
            let mut hosts = Vec::new();
            for j in 0..r.hosts.len() {
                let name = route_host_template(&app.name, i, j);
                match self.render_one(&name, ctx) {
                    Ok(h) if is_route_host(h.trim()) => hosts.push(h.trim().to_string()),
                    Ok(h) => problems.push(
                        Diagnostic::new(
                            template_file(&name),
                            format!("`{}` is not a host name (rendering for {where_})", h.trim()),
                        )
                        .field(format!("routes[{i}].hosts[{j}]"))
                        .hint("a route's host name is lowercase DNS labels (letters, digits, `-`), optionally starting with `*.`"),
                    ),
                    Err(e) => problems.push(self.diag(&name, &e, where_)),
                }
            }
            let port = match (&r.port, port) {
                (Some(_), _) => {
                    match self.render_port(&route_port_template(&app.name, i), ctx, where_) {
                        Ok(p) => p,
                        Err(d) => {
                            problems.push(d);
                            continue;
                        }
                    }
                }
                (None, Some(slot)) => slot,
                // Refused by validation: a route of a recreate app has a port.
                (None, None) => continue,
            };
            hosts.sort();
            hosts.dedup();
            out.push(RenderedRoute {
                hosts,
                path: r.path.clone(),
                service: r.service.clone(),
                port,
                health: r.health.clone(),
                directives: r.directives.clone(),
            });
        }
        out
    }

    /// The hosts a client renders for. Hetzner inventory is resolved at deploy
    /// time; until then the client renders for one placeholder host.
    pub fn hosts_of(client: &Client) -> Vec<Host> {
        match &client.hosts {
            Hosts::Static(hosts) => hosts.clone(),
            Hosts::Hcloud {
                label_selector,
                user,
                port,
                deploy_root,
                ..
            } => vec![Host {
                name: "hcloud".into(),
                address: format!("(hcloud: {label_selector})"),
                port: *port,
                user: user.clone(),
                deploy_root: deploy_root.clone(),
            }],
        }
    }

    /// Renders every app of `client` for every host, taking from `reuse`
    /// what renders the same (a plan's base side, after its head).
    pub fn render_client(
        &self,
        fleet: &Fleet,
        client: &Client,
        secrets: &ClientSecrets,
        view: SecretView,
        rev: &str,
        reuse: Option<&Reuse>,
    ) -> Result<DesiredClient, Vec<Diagnostic>> {
        let hosts = Self::hosts_of(client);
        let reuse = reuse.filter(|r| r.prior.hosts == hosts);
        let mut problems = Vec::new();
        let mut apps = BTreeMap::new();
        let client_ctx = to_value(ClientCtx {
            name: &client.name,
            domain: &client.domain,
            group: &client.group,
            vars: &client.vars,
        });
        let apps_to_render = client
            .apps
            .iter()
            .filter(|a| !self.broken.contains(*a))
            .filter_map(|a| fleet.apps.get(a));
        for app in apps_to_render {
            // The same app.yaml and client: its checks and routes render the
            // same, and so does each file whose template is the same.
            let lend = reuse
                .filter(|r| r.apps.contains(&app.name))
                .and_then(|r| Some((r.prior.apps.get(&app.name)?, r.templates)));
            if let Some((prior, templates)) = lend
                && app.files.values().all(|t| templates.contains(t))
            {
                apps.insert(app.name.clone(), prior.clone());
                continue;
            }
            let lend = lend.filter(|(prior, _)| prior.green.is_none());
            match self.render_app(client, &client_ctx, app, &hosts, secrets, view, rev, lend) {
                Ok(d) => {
                    apps.insert(app.name.clone(), d);
                }
                Err(p) => problems.extend(p),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(DesiredClient {
            name: client.name.clone(),
            group: client.group.clone(),
            hosts,
            apps,
        })
    }

    /// `lend`: the same app of the same client rendered for the other
    /// side of a plan, and the templates that render the same there.
    #[expect(clippy::too_many_arguments, reason = "one render's whole context")]
    fn render_app(
        &self,
        client: &Client,
        client_ctx: &Value,
        app: &App,
        hosts: &[Host],
        secrets: &ClientSecrets,
        view: SecretView,
        rev: &str,
        lend: Option<(&DesiredApp, &BTreeSet<String>)>,
    ) -> Result<DesiredApp, Vec<Diagnostic>> {
        let mut problems = Vec::new();
        let mut secret_ctx = BTreeMap::new();
        let mut masked_ctx = BTreeMap::new();
        let mut digests = BTreeMap::new();
        for key in &app.secrets {
            if let Some(v) = secrets.value(key, view) {
                secret_ctx.insert(key.as_str(), v);
            }
            if let Some(v) = secrets.value(key, SecretView::Masked) {
                masked_ctx.insert(key.as_str(), v);
            }
            let digest = secrets
                .values
                .as_ref()
                .and_then(|vals| vals.get(key))
                .map(|(_, d)| *d);
            if let Some(origin) = secrets.origin.get(key) {
                digests.insert(
                    key.clone(),
                    SecretState {
                        origin: origin.clone(),
                        digest,
                    },
                );
            }
        }
        // The values in this render's context, by key (none when masked).
        let exposed: Vec<(&str, &Secret)> = match (&secrets.values, view) {
            (Some(values), SecretView::Real) => app
                .secrets
                .iter()
                .filter_map(|k| values.get(k).map(|(v, _)| (k.as_str(), v)))
                .collect(),
            _ => Vec::new(),
        };
        let app_ctx = self
            .app_ctx
            .get(&app.name)
            .cloned()
            .unwrap_or_else(|| app_ctx(app));
        let secret_ctx = to_value(&secret_ctx);
        let masked_ctx = to_value(&masked_ctx);
        let blue_green = matches!(app.strategy, crate::config::Strategy::BlueGreen { .. });
        // [0]: the only render, or a blue_green app's blue slot; [1]: its green.
        let mut slots: [Slot; 2] = Default::default();
        // The checks' template names, for every host.
        let check_names: Vec<String> = (0..app.health.len())
            .map(|i| health_template(&app.name, i))
            .collect();
        for host in hosts {
            let ctx_with = |secrets: &Value, port: Option<u16>| {
                minijinja::context! {
                    client => client_ctx.clone(),
                    host => to_value(HostCtx {
                        name: &host.name,
                        address: &host.address,
                        port: host.port,
                        user: &host.user,
                    }),
                    app => app_ctx.clone(),
                    secrets => secrets.clone(),
                    release => to_value(ReleaseCtx {
                        rev,
                        dir: format!("{}/{}/{}/releases/{rev}", host.deploy_root, client.name, app.name),
                        port,
                    }),
                }
            };
            // Said only in problems: not formatted for every render.
            let where_ = || format!("client {} host {}", client.name, host.name);
            let ports: Vec<Option<u16>> = if blue_green {
                let ctx = ctx_with(&masked_ctx, None);
                let mut ports = Vec::new();
                for i in 0..2 {
                    let name = slot_port_template(&app.name, i);
                    match self.render_port(&name, &ctx, &where_()) {
                        Ok(p) => ports.push(Some(p)),
                        Err(d) => problems.push(d),
                    }
                }
                if ports.len() < 2 {
                    continue;
                }
                slots[1].ports.insert(
                    host.name.clone(),
                    [ports[0].unwrap_or_default(), ports[1].unwrap_or_default()],
                );
                ports
            } else {
                vec![None]
            };
            for (slot, port) in slots.iter_mut().zip(ports) {
                let ctx = ctx_with(&secret_ctx, port);
                let mut host_files = BTreeMap::new();
                let lent = lend.and_then(|(prior, templates)| {
                    Some((prior.files.get(&host.name)?, prior, templates))
                });
                for (dest, template) in &app.files {
                    if let Some((files, _, templates)) = lent
                        && templates.contains(template)
                        && let Some(text) = files.get(dest)
                    {
                        host_files.insert(dest.clone(), text.clone());
                        continue;
                    }
                    match self.render_one(template, &ctx) {
                        Ok(text) => {
                            host_files.insert(dest.clone(), text);
                        }
                        Err(e) => problems.push(self.diag(template, &e, &where_())),
                    }
                }
                if let Some((files, prior, _)) = lent {
                    // Rendered from app.yaml alone, which is the same.
                    if let Some(text) = files.get(ROUTES_FILE) {
                        host_files.insert(ROUTES_FILE.to_string(), text.clone());
                    }
                    let checks = prior.health.get(&host.name).cloned().unwrap_or_default();
                    let routes = prior.routes.get(&host.name).cloned().unwrap_or_default();
                    slot.files.insert(host.name.clone(), host_files);
                    slot.health.insert(host.name.clone(), checks);
                    slot.routes.insert(host.name.clone(), routes);
                    continue;
                }
                let routes = match app.routes.is_empty() {
                    true => Vec::new(),
                    false => self.render_routes(
                        app,
                        &ctx_with(&masked_ctx, port),
                        port,
                        &where_(),
                        &mut problems,
                    ),
                };
                if !routes.is_empty() {
                    host_files.insert(ROUTES_FILE.to_string(), routes_file(&app.name, &routes));
                }
                let mut checks = Vec::new();
                for (i, check) in app.health.iter().enumerate() {
                    let name = &check_names[i];
                    let text = match self.render_one(name, &ctx) {
                        Ok(text) => text,
                        Err(e) => {
                            problems.push(self.diag(name, &e, &where_()));
                            continue;
                        }
                    };
                    if view == SecretView::Real {
                        let masked = self.render_one(name, &ctx_with(&masked_ctx, port)).ok();
                        if let Some(why) =
                            secret_in_rendered_check(&text, masked.as_deref(), &exposed)
                        {
                            problems.push(check_secret_diag(&app.name, i, check, why));
                            continue;
                        }
                    }
                    if matches!(check, HealthCheck::Http(_)) && !is_http_url(&text) {
                        // Only a masked render may be quoted: a real one could hold a secret.
                        let shown = match view {
                            SecretView::Masked => format!("`{text}`"),
                            SecretView::Real => "the URL".into(),
                        };
                        problems.push(
                            Diagnostic::new(
                                template_file(name),
                                format!(
                                    "{shown} is not an http:// or https:// URL (rendering for {})",
                                    where_()
                                ),
                            )
                            .field(format!("health[{i}].http"))
                            .hint(crate::config::HTTP_URL_HINT),
                        );
                        continue;
                    }
                    if let HealthCheck::Http(h) = check
                        && h.route
                    {
                        let name_of = url_host(&text);
                        // Host names are case-insensitive; routes' are lowercase.
                        let lower = name_of.map(str::to_ascii_lowercase);
                        if !routes
                            .iter()
                            .any(|r| r.hosts.iter().any(|h| Some(h) == lower.as_ref()))
                        {
                            let shown = match view {
                                SecretView::Masked => format!("`{}`", name_of.unwrap_or_default()),
                                SecretView::Real => "its host name".into(),
                            };
                            problems.push(
                                Diagnostic::new(
                                    template_file(name),
                                    format!("`route: true`, but {shown} is none of the app's route host names (rendering for {})", where_()),
                                )
                                .field(format!("health[{i}].http"))
                                .hint("a check through the proxy GETs the public URL of one of the app's routes, e.g. http://{{ client.domain }}/health"),
                            );
                            continue;
                        }
                    }
                    checks.push(match check {
                        HealthCheck::Http(_) => RenderedCheck::Http { url: text },
                        HealthCheck::Command(_) => RenderedCheck::Command { command: text },
                    });
                }
                slot.files.insert(host.name.clone(), host_files);
                slot.health.insert(host.name.clone(), checks);
                slot.routes.insert(host.name.clone(), routes);
            }
        }
        if !problems.is_empty() {
            // One template error usually repeats for every host: say it once.
            problems.dedup_by(|a, b| a.file == b.file && a.line == b.line && a.field == b.field);
            // A template can fail on a real value and quote it (an include
            // named after it, a failed conversion): mask every word of it.
            let masker = Masker::new(
                exposed
                    .iter()
                    .map(|(_, v)| v.expose().to_string())
                    .collect(),
            );
            return Err(problems
                .into_iter()
                .map(|d| mask_diag(&masker, d))
                .collect());
        }
        let exposed = exposed.into_iter().map(|(_, v)| v.clone()).collect();
        let [blue, green] = slots;
        Ok(DesiredApp {
            images: app.images.clone(),
            files: blue.files,
            health: blue.health,
            routes: blue.routes,
            green: blue_green.then(|| Box::new(green)),
            secrets: digests,
            exposed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why `source`, as a check, is refused (`None`: it is not).
    fn refused(source: &str) -> Option<String> {
        let mut env = Environment::new();
        env.add_template("check", source).unwrap();
        secret_use_in_check(&env.get_template("check").unwrap())
    }

    #[test]
    fn a_template_lent_between_sides_is_one_whose_text_alone_decides() {
        assert!(pulls_in_no_other_template("x = {{ client.vars.x }}\n"));
        for other in [
            "{% include 'a.j2' %}",
            "{%- import 'm.j2' as m %}",
            "{% from 'm.j2' import f %}",
            "{% extends 'base.j2' %}",
            // `debug()` prints the names of every template compiled for the client.
            "{{ debug() }}",
        ] {
            assert!(!pulls_in_no_other_template(other), "{other}");
        }
    }

    #[test]
    fn check_templates_that_could_reach_a_secret_are_refused() {
        for ok in [
            "http://{{ host.address }}:{{ client.vars.port }}/health",
            "test -s compose.yaml",
            "curl -H @token.hdr http://{{ host.address }}/",
            "{% for i in range(2) %}{{ i }}{% endfor %}{{ release.rev }}",
            // Words, not tags or names: a check may say "secrets".
            "grep -q secrets.ok {{ app.name }}.log # include import",
        ] {
            assert_eq!(refused(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("http://x/?t={{ secrets.api_token }}", "`secrets`"),
            ("{{ secrets['api_token'] }}", "`secrets`"),
            ("{% set s = secrets %}{{ s.api_token }}", "`secrets`"),
            ("{% with s = secrets %}{{ s.x }}{% endwith %}", "`secrets`"),
            (
                "{% macro m() %}{{ secrets.x }}{% endmacro %}{{ m() }}",
                "`secrets`",
            ),
            (
                "{% if true %}{{ secrets | tojson }}{% endif %}",
                "`secrets`",
            ),
            ("{% set x %}{{ secrets.a }}{% endset %}{{ x }}", "`secrets`"),
            ("{{ debug() }}", "`debug()`"),
            ("{% include 'web/app.env.j2' %}", "include"),
            ("{%- include 'x' -%}", "include"),
            ("{%+ import 'x' as m %}", "import"),
            ("{% from 'x' import y %}{{ y }}", "from"),
            ("{% extends 'x' %}", "extends"),
        ] {
            let got = refused(bad).unwrap_or_else(|| panic!("{bad} was not refused"));
            assert!(got.contains(why), "{bad}: {got}");
        }
    }

    #[test]
    fn a_rendered_check_with_a_secret_is_caught() {
        let token = Secret::new("s3cr3t-value".into());
        let exposed = [("api_token", &token)];
        let check =
            |real: &str, masked: Option<&str>| secret_in_rendered_check(real, masked, &exposed);
        assert_eq!(check("http://h/health", Some("http://h/health")), None);
        let why = check("http://h/?t=s3cr3t-value", Some("http://h/?t=s3cr3t-value")).unwrap();
        assert!(
            why.contains("`api_token`") && !why.contains("s3cr3t"),
            "{why}"
        );
        assert!(check("http://h/?t=X", Some("http://h/?t=Y")).is_some());
        assert!(check("http://h/", None).is_some());
    }
    /// One fleet to render: client `alpha` (two hosts, a var and the
    /// secrets `admin_password` and `api_token` in its file) and app `web`,
    /// whose `app.yaml` and templates each case writes.
    const FLEET: &str = r#"
        //- pipelines/pipeline.yaml
        stages: [{name: canary, group: canary}]
        //- clients/alpha.yaml
        domain: alpha.example.org
        group: canary
        apps: [web]
        hosts:
          - {name: alpha-1, address: 203.0.113.10}
          - {name: alpha-2, address: 203.0.113.11, port: 2222, user: ops, deploy_root: /srv}
        vars: {port: 8080, scheme: file, big: "0123456789abcdef"}
    "#;

    const PASSWORD: &str = "s3cr3t-pw";

    /// How the case's secrets are known.
    #[derive(Clone, Copy)]
    enum View {
        Real,
        Masked,
        /// Key names only, no age key (`plan` without one).
        Undecrypted,
    }

    /// `fixture`: files over [`FLEET`] (by default `pipelines/apps/web/app.yaml`);
    /// `expect`: the problems (compile, then render), or per host the
    /// rendered files and checks.
    fn check(fixture: &str, view: View, expect: &[&str]) {
        use crate::config::validate::testing::{assert_outcome, files, sops, trim_indent};
        let fixture = format!(
            "{}\n//- secrets/clients/alpha.sops.yaml\n{}",
            trim_indent(fixture).trim_end(),
            sops(&["admin_password", "api_token"])
        );
        let files = files("pipelines/apps/web/app.yaml", FLEET, &fixture);
        let (fleet, problems) = crate::config::validate(&files);
        assert_eq!(problems, [], "the fleet itself is valid");
        let origin = "secrets/clients/alpha.sops.yaml".to_string();
        let secrets = ClientSecrets {
            values: match view {
                View::Undecrypted => None,
                View::Real | View::Masked => Some(
                    [("admin_password", PASSWORD), ("api_token", "t0ken")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), (Secret::new(v.into()), [7; 32])))
                        .collect(),
                ),
            },
            origin: [("admin_password", &origin), ("api_token", &origin)]
                .into_iter()
                .map(|(k, o)| (k.to_string(), o.clone()))
                .collect(),
        };
        let view = match view {
            View::Real => SecretView::Real,
            View::Masked | View::Undecrypted => SecretView::Masked,
        };
        let (renderer, mut problems) = Renderer::new(&fleet);
        let rendered = renderer.render_client(
            &fleet,
            &fleet.clients["alpha"],
            &secrets,
            view,
            "abc123",
            None,
        );
        let mut summary = Vec::new();
        match rendered {
            Err(p) => problems.extend(p),
            Ok(client) => {
                for (app, desired) in &client.apps {
                    summarize_slot(&mut summary, "", app, &desired.blue());
                    if let Some(green) = &desired.green {
                        summarize_slot(&mut summary, "green ", app, green);
                    }
                }
            }
        }
        for d in &problems {
            assert!(!format!("{d:?}").contains(PASSWORD), "a secret in {d:?}");
        }
        assert_outcome(&fixture, &problems, summary, expect);
    }

    /// A slot's files and checks per host (with `prefix`: which slot), then
    /// its routes and ports, when it has any.
    fn summarize_slot(summary: &mut Vec<String>, prefix: &str, app: &str, slot: &Slot) {
        for (host, files) in &slot.files {
            for (path, text) in files {
                summary.push(format!("{prefix}{host} {app}/{path}: {text}"));
            }
            for check in &slot.health[host] {
                summary.push(format!("{prefix}{host} {app} check: {check:?}"));
            }
            for r in slot.routes.get(host).into_iter().flatten() {
                summary.push(format!(
                    "{prefix}{host} {app} route: {:?} {} -> {}",
                    r.hosts,
                    r.path.as_deref().unwrap_or("/"),
                    r.port
                ));
            }
            if let Some([blue, green]) = slot.ports.get(host) {
                summary.push(format!(
                    "{prefix}{host} {app} ports: blue {blue} green {green}"
                ));
            }
        }
    }

    #[test]
    fn the_context_templates_see() {
        check(
            r#"
            runtime: compose
            images: {web: "registry.example.org/whoami:1.4.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
            files: {a.env: a.env.j2}
            //- pipelines/apps/web/a.env.j2
            {{ client.name }} {{ client.domain }} {{ client.group }} {{ client.vars.port }} {{ host.name }} {{ host.address }}:{{ host.port }} {{ host.user }} {{ app.name }} {{ app.images.web }} {{ release.rev }} {{ release.dir }}
            "#,
            View::Masked,
            &[
                "alpha-1 web/a.env: alpha alpha.example.org canary 8080 alpha-1 203.0.113.10:22 deploy web registry.example.org/whoami:1.4.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef abc123 /opt/fleetgate/alpha/web/releases/abc123\n",
                "alpha-2 web/a.env: alpha alpha.example.org canary 8080 alpha-2 203.0.113.11:2222 ops web registry.example.org/whoami:1.4.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef abc123 /srv/alpha/web/releases/abc123\n",
            ],
        );
    }

    #[test]
    fn undefined_values_and_syntax_errors_name_template_line_client_and_host() {
        // Said once, not once per host.
        check(
            "runtime: compose\nfiles: {a.env: a.env.j2}\n//- pipelines/apps/web/a.env.j2\nok\n{{ client.vars.nope }}",
            View::Masked,
            &[
                "pipelines/apps/web/a.env.j2:2: `client.vars.nope` is undefined (rendering for client alpha host alpha-1)",
            ],
        );
        check(
            "runtime: compose\nfiles: {a.env: a.env.j2}\n//- pipelines/apps/web/a.env.j2\n{{ secrets.admin_password }}",
            View::Masked,
            &[
                "pipelines/apps/web/a.env.j2:1: `secrets.admin_password` is undefined (rendering for client alpha host alpha-1)",
            ],
        );
        // A template that does not compile: the app is left out of renders.
        check(
            "runtime: compose\nfiles: {a.env: a.env.j2}\n//- pipelines/apps/web/a.env.j2\n\n{% if %}",
            View::Masked,
            &["pipelines/apps/web/a.env.j2:2: syntax error"],
        );
        check(
            "runtime: compose\nhealth: [{command: \"{{ nope }}\"}]",
            View::Masked,
            &[
                "pipelines/apps/web/app.yaml:1 health[0]: `nope` is undefined (rendering for client alpha host alpha-1)",
            ],
        );
    }

    #[test]
    fn secrets_real_masked_or_unknown() {
        let app = "runtime: compose\nsecrets: [admin_password]\nfiles: {a.env: a.env.j2}\n//- pipelines/apps/web/a.env.j2\npw={{ secrets.admin_password }}";
        check(
            app,
            View::Real,
            &[
                "alpha-1 web/a.env: pw=s3cr3t-pw\n",
                "alpha-2 web/a.env: pw=s3cr3t-pw\n",
            ],
        );
        check(
            app,
            View::Masked,
            &[
                "alpha-1 web/a.env: pw=••••07070707\n",
                "alpha-2 web/a.env: pw=••••07070707\n",
            ],
        );
        check(
            app,
            View::Undecrypted,
            &[
                "alpha-1 web/a.env: pw=••••\n",
                "alpha-2 web/a.env: pw=••••\n",
            ],
        );
        // Only the keys the app declares: `api_token` is the client's, not web's.
        check(
            "runtime: compose\nsecrets: [admin_password]\nfiles: {a.env: a.env.j2}\n//- pipelines/apps/web/a.env.j2\n{{ secrets.api_token }}",
            View::Real,
            &[
                "pipelines/apps/web/a.env.j2:1: `secrets.api_token` is undefined (rendering for client alpha host alpha-1)",
            ],
        );
        // A real render's errors are masked: this one would quote the value.
        check(
            "runtime: compose\nsecrets: [admin_password]\nfiles: {a.env: a.env.j2}\n//- pipelines/apps/web/a.env.j2\n{% include secrets.admin_password %}",
            View::Real,
            &["pipelines/apps/web/a.env.j2:1: ••••"],
        );
    }

    #[test]
    fn health_checks() {
        check(
            r#"
            runtime: compose
            health:
              - http: "http://{{ host.address }}:{{ client.vars.port }}/health"
              - command: "test -s {{ app.name }}.env"
            "#,
            View::Real,
            &[
                r#"alpha-1 web check: Http { url: "http://203.0.113.10:8080/health" }"#,
                r#"alpha-1 web check: Command { command: "test -s web.env" }"#,
                r#"alpha-2 web check: Http { url: "http://203.0.113.11:8080/health" }"#,
                r#"alpha-2 web check: Command { command: "test -s web.env" }"#,
            ],
        );
        // The scheme, once rendered: only a masked render is quoted.
        let file_url =
            "runtime: compose\nhealth: [{http: \"{{ client.vars.scheme }}:///etc/passwd\"}]";
        check(
            file_url,
            View::Masked,
            &[
                "pipelines/apps/web/app.yaml health[0].http: `file:///etc/passwd` is not an http:// or https:// URL (rendering for client alpha host alpha-1)",
            ],
        );
        check(
            file_url,
            View::Real,
            &[
                "pipelines/apps/web/app.yaml health[0].http: the URL is not an http:// or https:// URL (rendering for client alpha host alpha-1)",
            ],
        );
    }

    #[test]
    fn checks_never_carry_a_secret() {
        use crate::config::validate::testing::trim_indent;
        check(
            "runtime: compose\nsecrets: [admin_password]\nhealth: [{http: \"http://x/?p={{ secrets.admin_password }}\"}]",
            View::Masked,
            &[
                "pipelines/apps/web/app.yaml health[0].http: this check could carry a secret: it reads `secrets`",
            ],
        );
        // A value that reaches a check another way (here: pasted into a var)
        // is caught when rendered with the real values.
        check(
            &format!(
                "runtime: compose\nsecrets: [admin_password]\nhealth: [{{command: \"echo {{{{ client.vars.pw }}}}\"}}]\n//- clients/alpha.yaml\n{}",
                trim_indent(FLEET)
                    .split("//- clients/alpha.yaml\n")
                    .nth(1)
                    .unwrap()
                    .replace("vars: {", &format!("vars: {{pw: {PASSWORD}, "))
            ),
            View::Real,
            &[
                "pipelines/apps/web/app.yaml health[0].command: it contains the value of `admin_password`",
            ],
        );
    }

    #[test]
    fn the_render_budget() {
        // Too much work, then too much output; said once for both hosts (the
        // second host's render is refused without running). A full output
        // has no line: minijinja's write failure carries none.
        check(
            "runtime: compose\nfiles: {a: a.j2}\n//- pipelines/apps/web/a.j2\n{% for i in range(100000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
            View::Masked,
            &[
                "pipelines/apps/web/a.j2:1: exceeded the render budget (too much work: loops, filters or data) (rendering for client alpha host alpha-1)",
            ],
        );
        check(
            "runtime: compose\nfiles: {a: a.j2}\n//- pipelines/apps/web/a.j2\n{% for i in range(10000) %}{% for j in range(64) %}{{ client.vars.big }}{% endfor %}{% endfor %}",
            View::Masked,
            &[
                "pipelines/apps/web/a.j2: exceeded the render budget (output larger than 8 MiB) (rendering for client alpha host alpha-1)",
            ],
        );
    }

    /// [`FLEET`]'s pipeline with a proxy in front of the apps' routes.
    const PROXY: &str = "//- pipelines/pipeline.yaml\nstages: [{name: canary, group: canary}]\nproxy: {kind: caddy}";

    /// `check` with [`PROXY`] written after `app`.
    fn check_routed(app: &str, view: View, expect: &[&str]) {
        check(
            &format!("{}\n{PROXY}", trim_indent_of(app).trim_end()),
            view,
            expect,
        );
    }

    fn trim_indent_of(text: &str) -> String {
        crate::config::validate::testing::trim_indent(text)
    }

    #[test]
    fn routes_render_per_host_into_their_release_file() {
        check_routed(
            r#"
            runtime: compose
            routes:
              - hosts: ["{{ client.domain }}", "{{ host.name }}.{{ client.domain }}", "*.{{ client.name }}.example.net"]
                port: "{{ client.vars.port }}"
              - hosts: [api.example.org]
                path: /v1
                service: api
                port: 9000
                health: /healthz
                proxy_directives: ["  client_max_body_size 10G;  "]
            health:
              - {http: "https://{{ client.domain }}/health", route: true}
            "#,
            View::Real,
            &[
                "alpha-1 web/.fleetgate/routes: # The routes of web, rendered by fleetgate: the host's proxy is configured from them.\n\
                 *.alpha.example.net/ -> 127.0.0.1:8080\n\
                 alpha-1.alpha.example.org/ -> 127.0.0.1:8080\n\
                 alpha.example.org/ -> 127.0.0.1:8080\n\
                 api.example.org/v1 -> 127.0.0.1:9000 service api health /healthz\n  client_max_body_size 10G;\n",
                r#"alpha-1 web check: Http { url: "https://alpha.example.org/health" }"#,
                r#"alpha-1 web route: ["*.alpha.example.net", "alpha-1.alpha.example.org", "alpha.example.org"] / -> 8080"#,
                r#"alpha-1 web route: ["api.example.org"] /v1 -> 9000"#,
                "alpha-2 web/.fleetgate/routes: # The routes of web, rendered by fleetgate: the host's proxy is configured from them.\n\
                 *.alpha.example.net/ -> 127.0.0.1:8080\n\
                 alpha-2.alpha.example.org/ -> 127.0.0.1:8080\n\
                 alpha.example.org/ -> 127.0.0.1:8080\n\
                 api.example.org/v1 -> 127.0.0.1:9000 service api health /healthz\n  client_max_body_size 10G;\n",
                r#"alpha-2 web check: Http { url: "https://alpha.example.org/health" }"#,
                r#"alpha-2 web route: ["*.alpha.example.net", "alpha-2.alpha.example.org", "alpha.example.org"] / -> 8080"#,
                r#"alpha-2 web route: ["api.example.org"] /v1 -> 9000"#,
            ],
        );
        // Without routes: no routes file.
        check_routed(
            "runtime: compose\nfiles: {a: a.j2}\n//- pipelines/apps/web/a.j2\na",
            View::Masked,
            &["alpha-1 web/a: a\n", "alpha-2 web/a: a\n"],
        );
    }

    /// A blue_green app renders twice: `release.port` is each slot's port
    /// in its files, checks and routes.
    #[test]
    fn blue_green_renders_each_slot_with_its_port() {
        check_routed(
            r#"
            runtime: compose
            files: {a.env: a.env.j2}
            strategy: blue_green
            slot_ports: ["{{ client.vars.port }}", "{{ client.vars.port + 1 }}"]
            routes: [{hosts: ["{{ client.domain }}"], health: /health}]
            health:
              - http: "http://{{ host.address }}:{{ release.port }}/health"
            //- pipelines/apps/web/a.env.j2
            PORT={{ release.port }}
            "#,
            View::Masked,
            &[
                "alpha-1 web/.fleetgate/routes: # The routes of web, rendered by fleetgate: the host's proxy is configured from them.\nalpha.example.org/ -> 127.0.0.1:8080 health /health\n",
                "alpha-1 web/a.env: PORT=8080\n",
                r#"alpha-1 web check: Http { url: "http://203.0.113.10:8080/health" }"#,
                r#"alpha-1 web route: ["alpha.example.org"] / -> 8080"#,
                "alpha-2 web/.fleetgate/routes: # The routes of web, rendered by fleetgate: the host's proxy is configured from them.\nalpha.example.org/ -> 127.0.0.1:8080 health /health\n",
                "alpha-2 web/a.env: PORT=8080\n",
                r#"alpha-2 web check: Http { url: "http://203.0.113.11:8080/health" }"#,
                r#"alpha-2 web route: ["alpha.example.org"] / -> 8080"#,
                "green alpha-1 web/.fleetgate/routes: # The routes of web, rendered by fleetgate: the host's proxy is configured from them.\nalpha.example.org/ -> 127.0.0.1:8081 health /health\n",
                "green alpha-1 web/a.env: PORT=8081\n",
                r#"green alpha-1 web check: Http { url: "http://203.0.113.10:8081/health" }"#,
                r#"green alpha-1 web route: ["alpha.example.org"] / -> 8081"#,
                "green alpha-1 web ports: blue 8080 green 8081",
                "green alpha-2 web/.fleetgate/routes: # The routes of web, rendered by fleetgate: the host's proxy is configured from them.\nalpha.example.org/ -> 127.0.0.1:8081 health /health\n",
                "green alpha-2 web/a.env: PORT=8081\n",
                r#"green alpha-2 web check: Http { url: "http://203.0.113.11:8081/health" }"#,
                r#"green alpha-2 web route: ["alpha.example.org"] / -> 8081"#,
                "green alpha-2 web ports: blue 8080 green 8081",
            ],
        );
        // Without routes, too.
        check(
            "runtime: compose\nfiles: {a: a.j2}\nstrategy: blue_green\nslot_ports: [1, 2]\n//- pipelines/apps/web/a.j2\n{{ release.port }}",
            View::Masked,
            &[
                "alpha-1 web/a: 1\n",
                "alpha-2 web/a: 1\n",
                "green alpha-1 web/a: 2\n",
                "green alpha-1 web ports: blue 1 green 2",
                "green alpha-2 web/a: 2\n",
                "green alpha-2 web ports: blue 1 green 2",
            ],
        );
    }

    #[test]
    fn release_port_is_undefined_for_a_recreate_app() {
        check(
            "runtime: compose\nfiles: {a.env: a.env.j2}\n//- pipelines/apps/web/a.env.j2\nA=1\nPORT={{ release.port }}",
            View::Masked,
            &[
                "pipelines/apps/web/a.env.j2:2: `release.port` is undefined (rendering for client alpha host alpha-1)",
            ],
        );
        check(
            "runtime: compose\nhealth: [{command: \"curl -f localhost:{{ release.port }}\"}]",
            View::Masked,
            &[
                "pipelines/apps/web/app.yaml:1 health[0]: `release.port` is undefined (rendering for client alpha host alpha-1)",
            ],
        );
        check_routed(
            "runtime: compose\nroutes: [{hosts: [a.example.org], port: \"{{ release.port }}\"}]",
            View::Masked,
            &[
                "pipelines/apps/web/app.yaml:1 routes[0].port: `release.port` is undefined (rendering for client alpha host alpha-1)",
            ],
        );
        // A slot port cannot be its own slot's port.
        check(
            "runtime: compose\nstrategy: blue_green\nslot_ports: [1, \"{{ release.port }}\"]",
            View::Masked,
            &[
                "pipelines/apps/web/app.yaml:1 slot_ports[1]: `release.port` is undefined (rendering for client alpha host alpha-1)",
            ],
        );
    }

    #[test]
    fn the_undefined_hint_says_where_release_port_is_defined() {
        let e = minijinja::Error::new(minijinja::ErrorKind::UndefinedError, "x");
        let d = template_diag("web/a.env.j2", &e, "client alpha host alpha-1");
        let hint = d.hint.unwrap_or_default();
        assert!(hint.contains("port in a blue_green app's slot"), "{hint}");
    }

    /// Routes end up in proxy configs, plans and logs: like checks, their
    /// templates never read `secrets`.
    #[test]
    fn route_templates_never_read_secrets() {
        check_routed(
            "runtime: compose\nsecrets: [api_token]\nroutes: [{hosts: [a.example.org, \"{{ secrets.api_token }}.example.org\"], port: \"{{ secrets['api_token'] }}\"}]",
            View::Masked,
            &[
                "pipelines/apps/web/app.yaml routes[0].hosts[1]: this route could carry a secret: it reads `secrets`",
                "pipelines/apps/web/app.yaml routes[0].port: this route could carry a secret: it reads `secrets`",
                // The app still renders, routes always with masked values:
                // what they then say quotes the mask, never the value.
                "pipelines/apps/web/app.yaml routes[0].hosts[1]: `••••07070707.example.org` is not a host name (rendering for client alpha host alpha-1)",
                "pipelines/apps/web/app.yaml routes[0].port: `••••07070707` is not a port (rendering for client alpha host alpha-1)",
                "pipelines/apps/web/app.yaml routes[0].hosts[1]: `••••07070707.example.org` is not a host name (rendering for client alpha host alpha-2)",
                "pipelines/apps/web/app.yaml routes[0].port: `••••07070707` is not a port (rendering for client alpha host alpha-2)",
            ],
        );
        check(
            "runtime: compose\nsecrets: [api_token]\nstrategy: blue_green\nslot_ports: [1, \"{% set s = secrets %}{{ s.api_token }}\"]",
            View::Masked,
            &[
                "pipelines/apps/web/app.yaml slot_ports[1]: this route could carry a secret: it reads `secrets`",
                "pipelines/apps/web/app.yaml slot_ports[1]: `••••07070707` is not a port (rendering for client alpha host alpha-1)",
            ],
        );
    }

    #[test]
    fn route_host_names_and_ports_are_checked_once_rendered() {
        for (host, shown) in [
            ("{{ client.name | upper }}.example.org", "ALPHA.example.org"),
            (
                "{{ client.vars.scheme }}://example.org",
                "file://example.org",
            ),
            ("a_b.example.org", "a_b.example.org"),
            ("a.*.example.org", "a.*.example.org"),
            ("*.*.example.org", "*.*.example.org"),
            ("-a.example.org", "-a.example.org"),
            ("a..example.org", "a..example.org"),
            ("example.org.", "example.org."),
            ("{{ host.address }}:80", "203.0.113.10:80"),
            ("a.example.org/path", "a.example.org/path"),
        ] {
            check_routed(
                &format!(
                    "runtime: compose\nroutes: [{{hosts: [a.example.org, \"{host}\"], port: 1}}]"
                ),
                View::Masked,
                &[&format!(
                    "pipelines/apps/web/app.yaml routes[0].hosts[1]: `{shown}` is not a host name (rendering for client alpha host alpha-1)"
                )],
            );
        }
        // Lowercase DNS names, optionally one leading wildcard; spaces
        // around a rendered name do not count.
        check_routed(
            "runtime: compose\nroutes: [{hosts: [\"*.{{ client.domain }}\", \"x-1.{{ client.name }}.example.org \", \"localhost\"], port: 1}]",
            View::Masked,
            &[
                "alpha-1 web/.fleetgate/routes: # The routes of web, rendered by fleetgate: the host's proxy is configured from them.\n*.alpha.example.org/ -> 127.0.0.1:1\nlocalhost/ -> 127.0.0.1:1\nx-1.alpha.example.org/ -> 127.0.0.1:1\n",
                r#"alpha-1 web route: ["*.alpha.example.org", "localhost", "x-1.alpha.example.org"] / -> 1"#,
                "alpha-2 web/.fleetgate/routes: # The routes of web, rendered by fleetgate: the host's proxy is configured from them.\n*.alpha.example.org/ -> 127.0.0.1:1\nlocalhost/ -> 127.0.0.1:1\nx-1.alpha.example.org/ -> 127.0.0.1:1\n",
                r#"alpha-2 web route: ["*.alpha.example.org", "localhost", "x-1.alpha.example.org"] / -> 1"#,
            ],
        );
        for (port, shown) in [
            ("\"{{ client.vars.scheme }}\"", "file"),
            ("0", "0"),
            ("65536", "65536"),
            ("-1", "-1"),
            ("\"80 80\"", "80 80"),
        ] {
            check_routed(
                &format!("runtime: compose\nroutes: [{{hosts: [a.example.org], port: {port}}}]"),
                View::Masked,
                &[&format!(
                    "pipelines/apps/web/app.yaml routes[0].port: `{shown}` is not a port (rendering for client alpha host alpha-1)"
                )],
            );
        }
        check(
            "runtime: compose\nstrategy: blue_green\nslot_ports: [\"{{ client.vars.scheme }}\", 2]",
            View::Masked,
            &[
                "pipelines/apps/web/app.yaml slot_ports[0]: `file` is not a port (rendering for client alpha host alpha-1)",
            ],
        );
    }

    /// `route: true`: the URL's host name must be one of the app's routes'
    /// on that host (rendered, so a templated one is compared as rendered).
    #[test]
    fn a_route_check_goes_to_a_route_host() {
        check_routed(
            r#"
            runtime: compose
            routes: [{hosts: ["{{ host.name }}.example.org"], port: 1}]
            health:
              - {http: "http://{{ host.name }}.example.org:8443/health", route: true}
              - {http: "http://user@alpha-1.example.org/health", route: true}
            "#,
            View::Masked,
            &[
                "pipelines/apps/web/app.yaml health[1].http: `route: true`, but `alpha-1.example.org` is none of the app's route host names (rendering for client alpha host alpha-2)",
            ],
        );
        check_routed(
            "runtime: compose\nroutes: [{hosts: [a.example.org], port: 1}]\nhealth: [{http: \"http://{{ host.address }}/\", route: true}]",
            View::Real,
            &[
                "pipelines/apps/web/app.yaml health[0].http: `route: true`, but its host name is none of the app's route host names (rendering for client alpha host alpha-1)",
            ],
        );
    }
}
