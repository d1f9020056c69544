//! A host's reverse proxy (Caddy or nginx) as data (pure): the config file
//! rendered from every route of every app the host runs, and the shell
//! scripts that validate, install, reload (or start), restore and inspect it.
//!
//! ```text
//! <deploy_root>/<client>/.proxy/Caddyfile | nginx.conf     the live config
//! <deploy_root>/<client>/.proxy/<config>.next              the candidate (check_script)
//! <deploy_root>/<client>/.proxy/<config>.previous          the config it replaced
//! <deploy_root>/<client>/.proxy/{admin.sock,caddy.pid,nginx.pid,proxy.log,error.log,data/,config/,tmp/}
//! ```
//!
//! Everything the proxy writes lives in that dot directory (never taken for
//! an app or an orphan): the scripts run as an unprivileged user.
//!
//! Architecture Invariant: every interpolated value goes through
//! `shell::quote`; the config travels base64-encoded inside a quoted
//! here-document on the script's stdin, never in a command line.
//!
//! Host names and paths are validated by the config layer before they reach
//! [`render`]; render still escapes every value for the syntax it lands in
//! (a quoted Caddyfile or nginx token), so a space, `{`, `;` or `"` cannot
//! add a directive, and debug builds assert the values are plain.
//!
//! Caddy 2.6.2: it has no `persist_config` global option (2.7 added it), so
//! its scripts point `XDG_CONFIG_HOME` (the autosaved config) and
//! `XDG_DATA_HOME` into the proxy directory; its admin endpoint is a unix
//! socket there (`admin unix/<dir>/admin.sock`), which `caddy reload`
//! finds from the config it is given. The Caddyfile substitutes `{$VAR}`
//! anywhere in the file before it is parsed, quoted tokens included: braces
//! in a route's host or path are written percent-encoded.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::shell::quote;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Caddy,
    Nginx,
}

/// `Auto`: Caddy's automatic HTTPS; nginx supports only `Off` (the config
/// layer refuses `Auto` for nginx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    Auto,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub kind: Kind,
    pub http_port: u16,
    pub https_port: u16,
    pub tls: Tls,
    /// The operator's command that starts the proxy when nothing listens on
    /// `http_port` (run in the proxy dir); default: fleetgate starts it.
    pub start: Option<String>,
    /// The operator's command replacing the default graceful reload (run
    /// in the proxy dir).
    pub reload: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub app: String,
    pub hosts: Vec<String>,
    /// A path prefix: `/app` matches `/app` and `/app/…`; `None` is `/`.
    pub path: Option<String>,
    pub upstream_port: u16,
    /// The operator's own directives for this route (`proxy_directives:`,
    /// in the proxy's syntax), written as they are inside its
    /// `handle`/`location` block: the proxy's own validation judges them.
    pub directives: Vec<String>,
}

/// `<deploy_root>/<client>/.proxy` (a dot directory: never taken for an app
/// or an orphan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyDir {
    pub deploy_root: String,
    pub client: String,
}

impl ProxyDir {
    pub fn path(&self) -> String {
        format!("{}/{}/.proxy", self.deploy_root, self.client)
    }

    /// The live config file: `.proxy/Caddyfile` or `.proxy/nginx.conf`.
    pub fn config(&self, kind: Kind) -> String {
        format!("{}/{}", self.path(), file_name(kind))
    }
}

pub fn file_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Caddy => "Caddyfile",
        Kind::Nginx => "nginx.conf",
    }
}

/// A unique marker no base64 text can contain.
const EOF: &str = "FLEETGATE_EOF";

/// What a route's host name or path may hold (the config layer's rule is
/// stricter): anything else is escaped, and asserted against in debug builds.
fn plain(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(plain_byte)
}

/// A path prefix without its trailing `/` (`""` for the root).
fn prefix(path: Option<&str>) -> String {
    let p = path.unwrap_or("/").trim_end_matches('/');
    if p.is_empty() || p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

/// Where one host name and path prefix go: the prefix, the upstream port,
/// the operator's directives.
type Target<'a> = (String, u16, &'a [String]);

/// Host name → its routes (path prefix, upstream port), longest prefix
/// first; host names sorted.
fn by_host(routes: &[Route]) -> BTreeMap<&str, Vec<Target<'_>>> {
    let mut hosts: BTreeMap<&str, Vec<Target<'_>>> = BTreeMap::new();
    for r in routes {
        debug_assert!(
            r.path.as_deref().is_none_or(plain),
            "route path {:?} of {} not validated",
            r.path,
            r.app
        );
        for h in &r.hosts {
            debug_assert!(plain(h), "host name {h:?} of {} not validated", r.app);
            hosts.entry(h.as_str()).or_default().push((
                prefix(r.path.as_deref()),
                r.upstream_port,
                &r.directives,
            ));
        }
    }
    for list in hosts.values_mut() {
        list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.cmp(b)));
        list.dedup();
    }
    hosts
}

/// One Caddyfile token: bare when plain, else quoted (`"` and `\` escaped).
fn caddy_word(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| plain_byte(b) || b == b':') {
        return s.to_string();
    }
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/' | b'*' | b'~' | b'%')
}

/// A route's value for the Caddyfile: braces percent-encoded (no `{$VAR}`
/// substitution, no placeholder), then one token.
fn caddy_route_word(s: &str) -> String {
    caddy_word(&s.replace('{', "%7B").replace('}', "%7D"))
}

/// One nginx token: bare when plain, else double-quoted (`"` and `\`
/// escaped).
fn nginx_word(s: &str) -> String {
    if plain(s) {
        return s.to_string();
    }
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The operator's directives of a route, one per line at `indent`.
fn own(directives: &[String], indent: &str) -> String {
    directives
        .iter()
        .flat_map(|d| d.lines())
        .map(|l| format!("{indent}{}\n", l.trim()))
        .collect()
}

/// The whole config file of one host, deterministic (same input → same
/// bytes), from every route of every app the host runs.
pub fn render(settings: &Settings, dir: &ProxyDir, routes: &[Route]) -> String {
    match settings.kind {
        Kind::Caddy => render_caddy(settings, dir, routes),
        Kind::Nginx => render_nginx(settings, dir, routes),
    }
}

fn render_caddy(settings: &Settings, dir: &ProxyDir, routes: &[Route]) -> String {
    let d = dir.path();
    let mut s =
        String::from("# Written by fleetgate: do not edit (the next deploy replaces it).\n");
    let _ = writeln!(s, "{{");
    let _ = writeln!(s, "\tadmin {}", caddy_word(&format!("unix/{d}/admin.sock")));
    let _ = writeln!(s, "\thttp_port {}", settings.http_port);
    let _ = writeln!(s, "\thttps_port {}", settings.https_port);
    let _ = writeln!(
        s,
        "\tstorage file_system {}",
        caddy_word(&format!("{d}/data"))
    );
    let _ = writeln!(s, "\tskip_install_trust");
    let _ = writeln!(s, "}}");
    for (host, list) in by_host(routes) {
        let address = match settings.tls {
            Tls::Off => format!("http://{host}"),
            Tls::Auto => host.to_string(),
        };
        let _ = writeln!(s, "\n{} {{", caddy_route_word(&address));
        let mut root = None;
        for (path, port, directives) in &list {
            if path.is_empty() {
                root = root.or(Some((*port, *directives)));
                continue;
            }
            for m in [path.clone(), format!("{path}/*")] {
                let _ = writeln!(
                    s,
                    "\thandle {} {{\n{}\t\treverse_proxy 127.0.0.1:{port}\n\t}}",
                    caddy_route_word(&m),
                    own(directives, "\t\t")
                );
            }
        }
        match root {
            Some((port, directives)) => {
                let _ = writeln!(
                    s,
                    "\thandle {{\n{}\t\treverse_proxy 127.0.0.1:{port}\n\t}}",
                    own(directives, "\t\t")
                );
            }
            None => {
                let _ = writeln!(s, "\thandle {{\n\t\trespond 404\n\t}}");
            }
        }
        let _ = writeln!(s, "}}");
    }
    // Every other host name: 404 (and a listener even with no route).
    let _ = writeln!(s, "\nhttp:// {{\n\trespond 404\n}}");
    s
}

fn render_nginx(settings: &Settings, dir: &ProxyDir, routes: &[Route]) -> String {
    let d = dir.path();
    let w = |rel: &str| nginx_word(&format!("{d}/{rel}"));
    let hosts = by_host(routes);
    let mut s =
        String::from("# Written by fleetgate: do not edit (the next deploy replaces it).\n");
    let _ = writeln!(s, "pid {};", w("nginx.pid"));
    let _ = writeln!(s, "error_log {} warn;", w("error.log"));
    let _ = writeln!(s, "worker_processes 1;");
    let _ = writeln!(s, "events {{\n\tworker_connections 1024;\n}}");
    let _ = writeln!(s, "http {{");
    let _ = writeln!(s, "\taccess_log off;");
    for (directive, rel) in [
        ("client_body_temp_path", "tmp/client_body"),
        ("proxy_temp_path", "tmp/proxy"),
        ("fastcgi_temp_path", "tmp/fastcgi"),
        ("uwsgi_temp_path", "tmp/uwsgi"),
        ("scgi_temp_path", "tmp/scgi"),
    ] {
        let _ = writeln!(s, "\t{directive} {};", w(rel));
    }
    let _ = writeln!(s, "\tserver_names_hash_bucket_size 128;");
    let _ = writeln!(s, "\tproxy_http_version 1.1;");
    let _ = writeln!(s, "\tproxy_set_header Host $host;");
    let _ = writeln!(
        s,
        "\tproxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
    );
    let _ = writeln!(s, "\tproxy_set_header X-Forwarded-Proto $scheme;");
    // Upstream keep-alive: HTTP/1.1 without `Connection: close`.
    let _ = writeln!(s, "\tproxy_set_header Connection \"\";");
    let ports: std::collections::BTreeSet<u16> =
        hosts.values().flatten().map(|(_, port, _)| *port).collect();
    for port in &ports {
        let _ = writeln!(
            s,
            "\tupstream fleetgate_{port} {{\n\t\tserver 127.0.0.1:{port};\n\t\tkeepalive 16;\n\t}}"
        );
    }
    let listen = settings.http_port;
    let _ = writeln!(
        s,
        "\tserver {{\n\t\tlisten {listen} default_server;\n\t\tserver_name _;\n\t\treturn 404;\n\t}}"
    );
    for (host, list) in &hosts {
        let _ = writeln!(
            s,
            "\tserver {{\n\t\tlisten {listen};\n\t\tserver_name {};",
            nginx_word(host)
        );
        let mut root = None;
        for (path, port, directives) in list {
            if path.is_empty() {
                root = root.or(Some((*port, *directives)));
                continue;
            }
            let _ = writeln!(
                s,
                "\t\tlocation = {} {{\n{}\t\t\tproxy_pass http://fleetgate_{port};\n\t\t}}",
                nginx_word(path),
                own(directives, "\t\t\t")
            );
            let _ = writeln!(
                s,
                "\t\tlocation {} {{\n{}\t\t\tproxy_pass http://fleetgate_{port};\n\t\t}}",
                nginx_word(&format!("{path}/")),
                own(directives, "\t\t\t")
            );
        }
        match root {
            Some((port, directives)) => {
                let _ = writeln!(
                    s,
                    "\t\tlocation / {{\n{}\t\t\tproxy_pass http://fleetgate_{port};\n\t\t}}",
                    own(directives, "\t\t\t")
                );
            }
            None => {
                let _ = writeln!(s, "\t\tlocation / {{\n\t\t\treturn 404;\n\t\t}}");
            }
        }
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// The shell preamble every script shares: where things are, the proxy's
/// environment, `validate FILE`, `probe` (0: something answers on
/// `http_port`, 1: nothing, 2: cannot tell).
fn preamble(settings: &Settings, dir: &ProxyDir) -> String {
    let mut s = String::from("set -u\numask 077\n");
    let _ = writeln!(s, "d={}", quote(&dir.path()));
    let _ = writeln!(s, "live={}", quote(&dir.config(settings.kind)));
    let _ = writeln!(s, "port={}", settings.http_port);
    match settings.kind {
        Kind::Caddy => {
            // Caddy 2.6 has no `persist_config off`: its autosave and data
            // stay in the proxy dir.
            let _ = writeln!(
                s,
                "XDG_CONFIG_HOME=\"$d/config\" XDG_DATA_HOME=\"$d/data\"\nexport XDG_CONFIG_HOME XDG_DATA_HOME"
            );
            let _ = writeln!(
                s,
                "validate() {{ caddy validate --adapter caddyfile --config \"$1\" 2>&1; }}"
            );
        }
        Kind::Nginx => {
            let _ = writeln!(
                s,
                "nginx=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)"
            );
            let _ = writeln!(
                s,
                "validate() {{ \"$nginx\" -t -q -p \"$d/\" -e \"$d/error.log\" -c \"$1\" 2>&1; }}"
            );
        }
    }
    let _ = writeln!(
        s,
        r#"probe() {{
  if command -v ss >/dev/null 2>&1; then
    [ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]
  elif command -v bash >/dev/null 2>&1; then
    bash -c "</dev/tcp/127.0.0.1/$port" 2>/dev/null
  else
    return 2
  fi
}}"#
    );
    s
}

/// `check FILE`: validates, the validator's output on stderr when invalid.
const CHECK: &str = r#"check() {
  if ! out=$(validate "$1"); then
    printf '%s\n' "$out" >&2
    echo "fleetgate: the proxy config $1 is invalid" >&2
    return 1
  fi
}
"#;

/// Reloads a running proxy, else starts it and waits (≤ 10 s) for the port:
/// prints `@@proxy reloaded` or `@@proxy started`.
fn activate(settings: &Settings) -> String {
    let (reload, start) = match settings.kind {
        Kind::Caddy => (
            "caddy reload --adapter caddyfile --config \"$live\"".to_string(),
            "caddy start --adapter caddyfile --config \"$live\" --pidfile \"$d/caddy.pid\""
                .to_string(),
        ),
        Kind::Nginx => (
            "\"$nginx\" -p \"$d/\" -e \"$d/error.log\" -c \"$live\" -s reload".to_string(),
            "\"$nginx\" -p \"$d/\" -e \"$d/error.log\" -c \"$live\"".to_string(),
        ),
    };
    // The operator's commands run in a subshell: an `exit` ends only them.
    let reload = settings
        .reload
        .as_ref()
        .map_or(reload, |r| format!("( {r}\n)"));
    let start = settings
        .start
        .as_ref()
        .map_or(start, |c| format!("( {c}\n)"));
    format!(
        r#"cd "$d" || exit 1
probe; state=$?
if [ "$state" = 0 ]; then
  if ! out=$( {reload} 2>&1 </dev/null); then
    printf '%s\n' "$out" >&2
    echo "fleetgate: the proxy reload failed" >&2
    exit 1
  fi
  echo '@@proxy reloaded'
  exit 0
fi
# Daemonised: no descriptor of this session left open, output to the log.
if ! {start} </dev/null >>"$d/proxy.log" 2>&1; then
  tail -n 20 "$d/proxy.log" >&2
  echo "fleetgate: the proxy start failed (log: $d/proxy.log)" >&2
  exit 1
fi
if [ "$state" = 1 ]; then
  i=0
  until probe; do
    i=$((i + 1))
    if [ "$i" -ge 50 ]; then
      tail -n 20 "$d/proxy.log" >&2
      echo "fleetgate: the proxy started but nothing answers on port $port after 10 s" >&2
      exit 1
    fi
    sleep 0.2
  done
fi
echo '@@proxy started'
"#
    )
}

/// Writes `content` as the candidate `<config>.next` and validates it with
/// the proxy binary: non-zero with the validator's output on stderr when
/// invalid (the candidate removed), the live config untouched. Nothing is
/// reloaded or started.
pub fn check_script(settings: &Settings, dir: &ProxyDir, content: &str) -> String {
    use base64::Engine as _;
    let mut s = preamble(settings, dir);
    s.push_str(CHECK);
    let _ = writeln!(s, "mkdir -p \"$d\" \"$d/tmp\" \"$d/data\" || exit 1");
    let _ = writeln!(s, "base64 -d > \"$live.next.tmp\" <<'{EOF}' || exit 1");
    let encoded = base64::engine::general_purpose::STANDARD.encode(content.as_bytes());
    for chunk in encoded.as_bytes().chunks(76) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        s.push('\n');
    }
    let _ = writeln!(s, "{EOF}");
    let _ = writeln!(s, "mv -f \"$live.next.tmp\" \"$live.next\" || exit 1");
    let _ = writeln!(
        s,
        "if ! check \"$live.next\"; then rm -f \"$live.next\"; exit 1; fi"
    );
    s
}

/// Installs the validated candidate (re-validated) as the live config,
/// keeping the one it replaces as `<config>.previous`, then reloads a
/// running proxy or starts an idle one. Never restarts a running proxy.
/// Prints only `@@proxy reloaded` or `@@proxy started` on success.
/// `<config>.previous` is this apply's alone: an older one is removed
/// first, so [`restore_script`] never puts back a config from before an
/// apply that replaced nothing (a proxy started again on the config it had).
pub fn apply_script(settings: &Settings, dir: &ProxyDir) -> String {
    let mut s = preamble(settings, dir);
    s.push_str(CHECK);
    s.push_str(
        r#"if [ ! -f "$live.next" ]; then
  echo "fleetgate: no candidate proxy config $live.next (the check runs first)" >&2
  exit 1
fi
rm -f "$live.previous" || exit 1
check "$live.next" || exit 1
mkdir -p "$d/tmp" "$d/data" || exit 1
if [ -f "$live" ] && cmp -s "$live.next" "$live"; then
  rm -f "$live.next"
else
  if [ -f "$live" ]; then cp -p "$live" "$live.previous" || exit 1; fi
  mv -f "$live.next" "$live" || exit 1
fi
"#,
    );
    s.push_str(&activate(settings));
    s
}

/// Puts `<config>.previous` back as the live config and reloads (the
/// rollback of a failed deploy); a no-op (exit 0) when there is no previous.
pub fn restore_script(settings: &Settings, dir: &ProxyDir) -> String {
    let mut s = preamble(settings, dir);
    s.push_str(
        r#"[ -f "$live.previous" ] || exit 0
mv -f "$live.previous" "$live" || exit 1
"#,
    );
    s.push_str(&activate(settings));
    s
}

/// Prints `@@proxy <sha256 of the live config|-> <listening|idle>`.
pub fn inspect_script(settings: &Settings, dir: &ProxyDir) -> String {
    let mut s = preamble(settings, dir);
    s.push_str(
        r#"sum=-
if [ -f "$live" ]; then sum=$(sha256sum < "$live" | cut -d' ' -f1); fi
if probe; then state=listening; else state=idle; fi
echo "@@proxy $sum $state"
"#,
    );
    s
}

/// Parses [`inspect_script`]'s line: (the live config's sha256, listening).
pub fn parse_inspect(line: &str) -> Option<(Option<String>, bool)> {
    let mut words = line.trim().strip_prefix("@@proxy ")?.split(' ');
    let (sum, state) = (words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    let sum = match sum {
        "-" => None,
        s if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => Some(s.to_string()),
        _ => return None,
    };
    let listening = match state {
        "listening" => true,
        "idle" => false,
        _ => return None,
    };
    Some((sum, listening))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::path::Path;
    use std::process::{Command, Output};
    use std::time::Duration;

    fn settings(kind: Kind, http_port: u16, https_port: u16) -> Settings {
        Settings {
            kind,
            http_port,
            https_port,
            tls: Tls::Off,
            start: None,
            reload: None,
        }
    }

    fn route(app: &str, hosts: &[&str], path: Option<&str>, port: u16) -> Route {
        Route {
            app: app.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path: path.map(str::to_string),
            upstream_port: port,
            directives: Vec::new(),
        }
    }

    fn dir(root: &str) -> ProxyDir {
        ProxyDir {
            deploy_root: root.into(),
            client: "alpha".into(),
        }
    }

    use crate::remote::shell::sh;

    fn text(out: &Output) -> String {
        format!(
            "status {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn routes() -> Vec<Route> {
        vec![
            route("web", &["b.example.org", "a.example.org"], None, 9000),
            route("api", &["a.example.org"], Some("/api"), 9001),
            route("docs", &["a.example.org"], Some("/api/docs/"), 9002),
        ]
    }

    #[test]
    fn caddy_render_groups_hosts_and_orders_paths() {
        let got = render(
            &settings(Kind::Caddy, 8080, 8443),
            &dir("/srv/fg"),
            &routes(),
        );
        let want = "# Written by fleetgate: do not edit (the next deploy replaces it).
{
\tadmin unix//srv/fg/alpha/.proxy/admin.sock
\thttp_port 8080
\thttps_port 8443
\tstorage file_system /srv/fg/alpha/.proxy/data
\tskip_install_trust
}

http://a.example.org {
\thandle /api/docs {
\t\treverse_proxy 127.0.0.1:9002
\t}
\thandle /api/docs/* {
\t\treverse_proxy 127.0.0.1:9002
\t}
\thandle /api {
\t\treverse_proxy 127.0.0.1:9001
\t}
\thandle /api/* {
\t\treverse_proxy 127.0.0.1:9001
\t}
\thandle {
\t\treverse_proxy 127.0.0.1:9000
\t}
}

http://b.example.org {
\thandle {
\t\treverse_proxy 127.0.0.1:9000
\t}
}

http:// {
\trespond 404
}
";
        assert_eq!(got, want);
        // Deterministic: the order of the routes does not matter.
        let mut reversed = routes();
        reversed.reverse();
        assert_eq!(
            render(
                &settings(Kind::Caddy, 8080, 8443),
                &dir("/srv/fg"),
                &reversed
            ),
            got
        );
        // Tls::Auto: bare site addresses (automatic HTTPS); the catch-all
        // stays plain HTTP.
        let auto = Settings {
            tls: Tls::Auto,
            ..settings(Kind::Caddy, 8080, 8443)
        };
        let got = render(&auto, &dir("/srv/fg"), &routes());
        assert!(got.contains("\na.example.org {\n"), "{got}");
        assert!(got.contains("\nb.example.org {\n"), "{got}");
        assert!(!got.contains("http://a."), "{got}");
        assert!(got.ends_with("\nhttp:// {\n\trespond 404\n}\n"), "{got}");
        // No route at all: the catch-all alone; a host without `/`: 404.
        let empty = render(&settings(Kind::Caddy, 8080, 8443), &dir("/srv/fg"), &[]);
        assert!(
            empty.ends_with("}\n\nhttp:// {\n\trespond 404\n}\n"),
            "{empty}"
        );
        let only = render(
            &settings(Kind::Caddy, 8080, 8443),
            &dir("/srv/fg"),
            &[route("api", &["c.example.org"], Some("/api"), 9001)],
        );
        assert!(
            only.contains("\thandle {\n\t\trespond 404\n\t}\n}"),
            "{only}"
        );
    }

    #[test]
    fn nginx_render_groups_hosts_and_orders_paths() {
        let got = render(
            &settings(Kind::Nginx, 8080, 8443),
            &dir("/srv/fg"),
            &routes(),
        );
        let want = "# Written by fleetgate: do not edit (the next deploy replaces it).
pid /srv/fg/alpha/.proxy/nginx.pid;
error_log /srv/fg/alpha/.proxy/error.log warn;
worker_processes 1;
events {
\tworker_connections 1024;
}
http {
\taccess_log off;
\tclient_body_temp_path /srv/fg/alpha/.proxy/tmp/client_body;
\tproxy_temp_path /srv/fg/alpha/.proxy/tmp/proxy;
\tfastcgi_temp_path /srv/fg/alpha/.proxy/tmp/fastcgi;
\tuwsgi_temp_path /srv/fg/alpha/.proxy/tmp/uwsgi;
\tscgi_temp_path /srv/fg/alpha/.proxy/tmp/scgi;
\tserver_names_hash_bucket_size 128;
\tproxy_http_version 1.1;
\tproxy_set_header Host $host;
\tproxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
\tproxy_set_header X-Forwarded-Proto $scheme;
\tproxy_set_header Connection \"\";
\tupstream fleetgate_9000 {
\t\tserver 127.0.0.1:9000;
\t\tkeepalive 16;
\t}
\tupstream fleetgate_9001 {
\t\tserver 127.0.0.1:9001;
\t\tkeepalive 16;
\t}
\tupstream fleetgate_9002 {
\t\tserver 127.0.0.1:9002;
\t\tkeepalive 16;
\t}
\tserver {
\t\tlisten 8080 default_server;
\t\tserver_name _;
\t\treturn 404;
\t}
\tserver {
\t\tlisten 8080;
\t\tserver_name a.example.org;
\t\tlocation = /api/docs {
\t\t\tproxy_pass http://fleetgate_9002;
\t\t}
\t\tlocation /api/docs/ {
\t\t\tproxy_pass http://fleetgate_9002;
\t\t}
\t\tlocation = /api {
\t\t\tproxy_pass http://fleetgate_9001;
\t\t}
\t\tlocation /api/ {
\t\t\tproxy_pass http://fleetgate_9001;
\t\t}
\t\tlocation / {
\t\t\tproxy_pass http://fleetgate_9000;
\t\t}
\t}
\tserver {
\t\tlisten 8080;
\t\tserver_name b.example.org;
\t\tlocation / {
\t\t\tproxy_pass http://fleetgate_9000;
\t\t}
\t}
}
";
        assert_eq!(got, want);
        let mut reversed = routes();
        reversed.reverse();
        assert_eq!(
            render(
                &settings(Kind::Nginx, 8080, 8443),
                &dir("/srv/fg"),
                &reversed
            ),
            got
        );
        let only = render(
            &settings(Kind::Nginx, 8080, 8443),
            &dir("/srv/fg"),
            &[route("api", &["c.example.org"], Some("/api"), 9001)],
        );
        assert!(
            only.contains("\t\tlocation / {\n\t\t\treturn 404;\n\t\t}\n\t}\n}\n"),
            "{only}"
        );
    }

    #[test]
    fn values_are_escaped_for_their_syntax() {
        assert_eq!(caddy_word("/srv/fg"), "/srv/fg");
        assert_eq!(caddy_word("/a b/x\"y"), "\"/a b/x\\\"y\"");
        assert_eq!(caddy_word("a\\"), "\"a\\\\\"");
        assert_eq!(caddy_route_word("/{$HOME}"), "\"/%7B$HOME%7D\"");
        assert_eq!(nginx_word("/a b;c{d}"), "\"/a b;c{d}\"");
        assert_eq!(nginx_word("x\"y\\"), "\"x\\\"y\\\\\"");
        assert_eq!(prefix(None), "");
        assert_eq!(prefix(Some("/")), "");
        assert_eq!(prefix(Some("/app/")), "/app");
        assert_eq!(prefix(Some("app")), "/app");
    }

    #[test]
    fn hostile_values_stay_one_token_for_the_real_validators() {
        // Inputs are validated upstream (render asserts it in debug builds);
        // the escaping alone still keeps such a value in its place.
        let hostile = "/x\" ; } respond 200 { return 200 pwned; # {$HOME}";
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir(tmp.path().to_str().unwrap());
        for kind in [Kind::Caddy, Kind::Nginx] {
            let s = settings(kind, free_port(), free_port());
            let base = render(
                &s,
                &dir,
                &[route("a", &["a.example.org"], Some("/PLACE"), 9001)],
            );
            let word = match kind {
                Kind::Caddy => caddy_route_word(hostile),
                Kind::Nginx => nginx_word(hostile),
            };
            let (bare, escaped) = match kind {
                Kind::Caddy => ("handle /PLACE {", format!("handle {word} {{")),
                Kind::Nginx => ("location = /PLACE {", format!("location = {word} {{")),
            };
            assert!(base.contains(bare), "{base}");
            let content = base.replacen(bare, &escaped, 1);
            let out = sh(&check_script(&s, &dir, &content));
            assert!(out.status.success(), "{content}\n{}", text(&out));
            // Unescaped, either validator refuses it (a lone `;`, or a
            // `handle` without its block); Caddy's JSON has it as one path.
            if kind == Kind::Caddy {
                let out = Command::new("caddy")
                    .args(["adapt", "--adapter", "caddyfile", "--config"])
                    .arg(format!("{}.next", dir.config(kind)))
                    .output()
                    .unwrap();
                let json = String::from_utf8_lossy(&out.stdout);
                assert!(
                    json.contains(
                        r#"["/x\" ; %7D respond 200 %7B return 200 pwned; # %7B$HOME%7D"]"#
                    ),
                    "{json}"
                );
                assert_eq!(json.matches("static_response").count(), 2, "{json}");
            }
        }
    }

    #[test]
    fn inspect_lines() {
        let sum = "a".repeat(64);
        assert_eq!(
            parse_inspect(&format!("@@proxy {sum} listening")),
            Some((Some(sum.clone()), true))
        );
        assert_eq!(parse_inspect("@@proxy - idle"), Some((None, false)));
        assert_eq!(parse_inspect("@@proxy - busy"), None);
        assert_eq!(parse_inspect("@@proxy xyz idle"), None);
        assert_eq!(parse_inspect("@@proxy - idle extra"), None);
        assert_eq!(parse_inspect("hello"), None);
    }

    /// A tiny upstream: answers every request with `body`, then closes.
    fn upstream(body: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        port
    }

    /// GET `path` with `Host: host` from the proxy: (status, body).
    fn get(port: u16, host: &str, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        if let Err(e) = stream.read_to_string(&mut out) {
            panic!("GET {path} (Host: {host}) on port {port}: {e} after {out:?}");
        }
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {out:?}"));
        let body = out
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        (status, body)
    }

    /// Stops the proxy a test started (by the pid it wrote), even when the
    /// test fails.
    struct Running(std::path::PathBuf);

    impl Running {
        fn pid(&self) -> String {
            std::fs::read_to_string(&self.0).unwrap().trim().to_string()
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.0) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }

    fn apply(settings: &Settings, dir: &ProxyDir, routes: &[Route]) -> Output {
        let check = sh(&check_script(settings, dir, &render(settings, dir, routes)));
        assert!(check.status.success(), "{}", text(&check));
        assert!(
            check.stdout.is_empty() && check.stderr.is_empty(),
            "{}",
            text(&check)
        );
        sh(&apply_script(settings, dir))
    }

    fn live_proxy(kind: Kind) {
        // The proxy binaries must be there: the test command installs them.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("deploy root 'q' \"$(touch pwned)\"");
        std::fs::create_dir_all(&root).unwrap();
        let dir = dir(root.to_str().unwrap());
        let settings = settings(kind, free_port(), free_port());
        let pidfile = Path::new(&dir.path()).join(match kind {
            Kind::Caddy => "caddy.pid",
            Kind::Nginx => "nginx.pid",
        });
        let running = Running(pidfile);
        let (a, b) = (upstream("app-a"), upstream("app-b"));
        let port = settings.http_port;

        // Nothing yet: inspect says so; restore is a no-op.
        let out = sh(&inspect_script(&settings, &dir));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "@@proxy - idle\n");
        let out = sh(&restore_script(&settings, &dir));
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "{}",
            text(&out)
        );
        // The apply needs a checked candidate.
        let out = sh(&apply_script(&settings, &dir));
        assert!(!out.status.success(), "{}", text(&out));

        // First apply: started.
        let first = vec![route("a", &["a.example.org"], None, a)];
        let out = apply(&settings, &dir, &first);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "@@proxy started\n",
            "{}",
            text(&out)
        );
        assert!(out.stderr.is_empty(), "{}", text(&out));
        assert_eq!(get(port, "a.example.org", "/x"), (200, "app-a".into()));
        assert_eq!(get(port, "unknown.example.org", "/").0, 404);
        let pid = running.pid();
        let out = sh(&inspect_script(&settings, &dir));
        let (sum, listening) = parse_inspect(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        assert!(listening);
        assert_eq!(sum.unwrap().len(), 64);

        // New routes: reloaded, same process.
        let second = vec![
            route("a", &["a.example.org"], None, a),
            route("b", &["a.example.org", "b.example.org"], Some("/b"), b),
        ];
        let out = apply(&settings, &dir, &second);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "@@proxy reloaded\n",
            "{}",
            text(&out)
        );
        assert!(out.stderr.is_empty(), "{}", text(&out));
        // nginx's reload returns once signalled: its old worker may still
        // answer a request or two with the old config.
        wait_for(|| {
            get(port, "b.example.org", "/b/x") == (200, "app-b".into())
                && get(port, "a.example.org", "/b") == (200, "app-b".into())
                && get(port, "a.example.org", "/bx") == (200, "app-a".into())
                && get(port, "b.example.org", "/").0 == 404
        });
        assert_eq!(running.pid(), pid, "the proxy was restarted");
        let live = std::fs::read_to_string(dir.config(kind)).unwrap();
        assert_eq!(live, render(&settings, &dir, &second));

        // An invalid candidate: refused with the validator's words, nothing
        // changed.
        let out = sh(&check_script(&settings, &dir, "garbage { ;"));
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is invalid"),
            "{}",
            text(&out)
        );
        assert!(out.stderr.len() > 60, "no validator output: {}", text(&out));
        assert_eq!(std::fs::read_to_string(dir.config(kind)).unwrap(), live);
        let out = sh(&apply_script(&settings, &dir));
        assert!(!out.status.success(), "{}", text(&out));
        assert_eq!(std::fs::read_to_string(dir.config(kind)).unwrap(), live);
        // (An old nginx worker may still take a connection for a moment
        // after the reload above: the new config must win, and stay.)
        wait_for(|| get(port, "b.example.org", "/b/") == (200, "app-b".into()));
        assert_eq!(running.pid(), pid);

        // Restore: the previous config back, reloaded.
        let out = sh(&restore_script(&settings, &dir));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "@@proxy reloaded\n",
            "{}",
            text(&out)
        );
        assert_eq!(
            std::fs::read_to_string(dir.config(kind)).unwrap(),
            render(&settings, &dir, &first)
        );
        wait_for(|| {
            get(port, "b.example.org", "/b/x").0 == 404
                && get(port, "a.example.org", "/b") == (200, "app-a".into())
        });
        assert_eq!(running.pid(), pid);
        // Nothing left to restore.
        let out = sh(&restore_script(&settings, &dir));
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "{}",
            text(&out)
        );

        // Every path stayed inside the proxy dir; nothing was injected.
        assert!(!Path::new("pwned").exists());
        assert!(!tmp.path().join("pwned").exists());
        for f in std::fs::read_dir(&root).unwrap() {
            assert_eq!(f.unwrap().file_name(), "alpha");
        }
        drop(running);
    }

    fn wait_for(mut ok: impl FnMut() -> bool) {
        for _ in 0..50 {
            if ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out");
    }

    #[test]
    fn caddy_starts_reloads_refuses_and_restores() {
        live_proxy(Kind::Caddy);
    }

    #[test]
    fn nginx_starts_reloads_refuses_and_restores() {
        live_proxy(Kind::Nginx);
    }

    #[test]
    fn tls_auto_caddyfile_validates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir(tmp.path().to_str().unwrap());
        let auto = Settings {
            tls: Tls::Auto,
            ..settings(Kind::Caddy, free_port(), free_port())
        };
        for routes in [routes(), vec![]] {
            let out = sh(&check_script(&auto, &dir, &render(&auto, &dir, &routes)));
            assert!(out.status.success(), "{}", text(&out));
        }
    }

    #[test]
    fn operator_commands_run_in_the_proxy_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("a b");
        let dir = dir(root.to_str().unwrap());
        // A port nothing listens on: the operator's start runs, and the
        // wait for the port fails after its bound.
        let s = Settings {
            start: Some("pwd > started; exit 0".into()),
            reload: Some("pwd > reloaded".into()),
            ..settings(Kind::Nginx, free_port(), free_port())
        };
        let out = sh(&check_script(&s, &dir, &render(&s, &dir, &[])));
        assert!(out.status.success(), "{}", text(&out));
        let begun = std::time::Instant::now();
        let out = sh(&apply_script(&s, &dir));
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("nothing answers"),
            "{}",
            text(&out)
        );
        assert!(begun.elapsed() < Duration::from_secs(15));
        let started = std::fs::read_to_string(Path::new(&dir.path()).join("started")).unwrap();
        assert_eq!(started.trim(), dir.path());
        // Something listens: the operator's reload runs instead.
        let listener = TcpListener::bind(("0.0.0.0", s.http_port)).unwrap();
        let out = sh(&check_script(&s, &dir, &render(&s, &dir, &[])));
        assert!(out.status.success(), "{}", text(&out));
        let out = sh(&apply_script(&s, &dir));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "@@proxy reloaded\n",
            "{}",
            text(&out)
        );
        let reloaded = std::fs::read_to_string(Path::new(&dir.path()).join("reloaded")).unwrap();
        assert_eq!(reloaded.trim(), dir.path());
        drop(listener);
    }

    #[test]
    fn scripts_carry_values_quoted_and_content_encoded() {
        let dir = dir("/srv/it's $(touch x) `id`");
        let s = settings(Kind::Caddy, 8080, 8443);
        let content = "x \"$(touch /tmp/fleetgate-proxy-pwned)\" 'q'\nFLEETGATE_EOF\n";
        let script = check_script(&s, &dir, content);
        assert!(script.contains(&format!("d={}\n", quote(&dir.path()))));
        assert!(!script.contains("touch /tmp/fleetgate-proxy-pwned"));
        for script in [
            script,
            apply_script(&s, &dir),
            restore_script(&s, &dir),
            inspect_script(&s, &dir),
        ] {
            assert!(!script.contains("$(touch x)\n"), "{script}");
            assert_eq!(script.matches("$(touch x)").count(), 2, "{script}");
        }
        // On a real shell: the odd dir is created as named, the content
        // arrives byte for byte, nothing ran.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("it's $(touch x) `id`");
        let dir = ProxyDir {
            deploy_root: root.to_str().unwrap().into(),
            client: "c\"l".into(),
        };
        let _ = sh(&check_script(&s, &dir, content));
        let candidate = format!("{}.next", dir.config(Kind::Caddy));
        // Invalid for caddy: removed after the check, so write it again
        // through the check's own first half.
        assert!(!Path::new(&candidate).exists());
        let script = check_script(&s, &dir, content);
        let upto = script.find("if ! check").unwrap();
        let out = sh(&script[..upto]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(std::fs::read_to_string(&candidate).unwrap(), content);
        assert!(!Path::new("/tmp/fleetgate-proxy-pwned").exists());
        assert!(!Path::new("x").exists());
    }
}
