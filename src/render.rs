//! minijinja: a validated fleet plus secrets → each client's desired files per
//! host and app.
//!
//! Undefined variables are errors (strict undefined), not empty strings. An
//! app's templates see only the secrets the app declares in `secrets:`.
//! Templates render either with the real values (files for a host) or with
//! masks (everything a person reads): [`SecretView`] decides, per render.

use std::collections::BTreeMap;

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::Serialize;

use crate::config::{APPS_DIR, App, Client, Fleet, HealthCheck, Host, Hosts};
use crate::error::Diagnostic;
use crate::scan::pin::ImageRef;
use crate::secrets::{MASK, Secret};

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

/// The probe only speaks HTTP: anything else (`file://`, `ftp://`, a
/// templated scheme) is refused before a deploy, not tried during one.
fn is_http_url(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn health_template(app: &str, i: usize) -> String {
    format!("{app}/app.yaml#health[{i}]")
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
            "templates see client (name, domain, group, vars), host (name, address, port, user), app (name, images), secrets (the app's declared keys), release (rev, dir); define the variable in the client's `vars:` or fix the name"
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
                if let Err(e) = env.add_template_owned(name.clone(), source) {
                    problems.push(template_diag(&name, &e, ""));
                }
            }
            if problems.len() > before {
                broken.insert(app.name.clone());
            }
        }
        let over_budget = Default::default();
        (
            Renderer {
                env,
                broken,
                over_budget,
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
        // minijinja writes whole strings; the bytes are its output's UTF-8.
        Ok(String::from_utf8_lossy(&out.0).into_owned())
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
            } => vec![Host {
                name: "hcloud".into(),
                address: format!("(hcloud: {label_selector})"),
                port: *port,
                user: user.clone(),
                deploy_root: deploy_root.clone(),
            }],
        }
    }

    /// Renders every app of `client` for every host.
    pub fn render_client(
        &self,
        fleet: &Fleet,
        client: &Client,
        secrets: &ClientSecrets,
        view: SecretView,
        rev: &str,
    ) -> Result<DesiredClient, Vec<Diagnostic>> {
        let hosts = Self::hosts_of(client);
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
            match self.render_app(client, &client_ctx, app, &hosts, secrets, view, rev) {
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
    ) -> Result<DesiredApp, Vec<Diagnostic>> {
        let mut problems = Vec::new();
        let mut secret_ctx = BTreeMap::new();
        let mut digests = BTreeMap::new();
        for key in &app.secrets {
            if let Some(v) = secrets.value(key, view) {
                secret_ctx.insert(key.as_str(), v);
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
        let app_ctx = to_value(AppCtx {
            name: &app.name,
            images: app
                .images
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_string()))
                .collect(),
        });
        let secret_ctx = to_value(&secret_ctx);
        let mut files = BTreeMap::new();
        let mut health = BTreeMap::new();
        for host in hosts {
            let ctx = minijinja::context! {
                client => client_ctx.clone(),
                host => to_value(HostCtx {
                    name: &host.name,
                    address: &host.address,
                    port: host.port,
                    user: &host.user,
                }),
                app => app_ctx.clone(),
                secrets => secret_ctx.clone(),
                release => to_value(ReleaseCtx {
                    rev,
                    dir: format!("{}/{}/{}/releases/{rev}", host.deploy_root, client.name, app.name),
                }),
            };
            let where_ = format!("client {} host {}", client.name, host.name);
            let mut host_files = BTreeMap::new();
            for (dest, template) in &app.files {
                match self.render_one(template, &ctx) {
                    Ok(text) => {
                        host_files.insert(dest.clone(), text);
                    }
                    Err(e) => problems.push(self.diag(template, &e, &where_)),
                }
            }
            let mut checks = Vec::new();
            for (i, check) in app.health.iter().enumerate() {
                let name = health_template(&app.name, i);
                match self.render_one(&name, &ctx) {
                    Ok(url) if matches!(check, HealthCheck::Http(_)) && !is_http_url(&url) => {
                        // Only a masked render may be quoted: a real one could hold a secret.
                        let shown = match view {
                            SecretView::Masked => format!("`{url}`"),
                            SecretView::Real => "the URL".into(),
                        };
                        problems.push(
                            Diagnostic::new(
                                template_file(&name),
                                format!(
                                    "{shown} is not an http:// or https:// URL (rendering for {where_})"
                                ),
                            )
                            .field(format!("health[{i}].http"))
                            .hint(crate::config::HTTP_URL_HINT),
                        );
                    }
                    Ok(text) => checks.push(match check {
                        HealthCheck::Http(_) => RenderedCheck::Http { url: text },
                        HealthCheck::Command(_) => RenderedCheck::Command { command: text },
                    }),
                    Err(e) => problems.push(self.diag(&name, &e, &where_)),
                }
            }
            files.insert(host.name.clone(), host_files);
            health.insert(host.name.clone(), checks);
        }
        if !problems.is_empty() {
            // One template error usually repeats for every host: say it once.
            problems.dedup_by(|a, b| a.file == b.file && a.line == b.line && a.field == b.field);
            return Err(problems);
        }
        let exposed = match (&secrets.values, view) {
            (Some(values), SecretView::Real) => app
                .secrets
                .iter()
                .filter_map(|k| values.get(k).map(|(v, _)| v.clone()))
                .collect(),
            _ => Vec::new(),
        };
        Ok(DesiredApp {
            images: app.images.clone(),
            files,
            health,
            secrets: digests,
            exposed,
        })
    }
}
