//! `pipelines/pipeline.yaml`: stages (names, groups, soak, approval,
//! parallelism, max_failures), the scan policy, the failure policy, runtime
//! commands, the `ssh.options` allow-list and the `notify:` webhooks.

use std::collections::BTreeMap;

use super::{Check, stages};
use crate::config::model::{
    OnFailure, Pipeline, RuntimeCommands, ScanPolicy, Severity, Webhook, WebhookFormat,
    WebhookTarget, url_host,
};
use crate::config::raw::S;
use crate::config::{FleetFiles, PIPELINE, raw, ssh_options, yaml};
use crate::core::events::EventKind;
use crate::error::Diagnostic;
use crate::remote::proxy::{Kind, Settings, Tls};

pub(super) fn validate(files: &FleetFiles, problems: &mut Vec<Diagnostic>) -> Option<Pipeline> {
    let Some(bytes) = files.files.get(PIPELINE) else {
        problems.push(
            Diagnostic::new(PIPELINE, format!("is missing from the {}", files.label)).hint(
                "every fleet repository has pipelines/pipeline.yaml; see ../shared/design.md §1",
            ),
        );
        return None;
    };
    let raw: raw::Pipeline = match yaml::parse(PIPELINE, bytes) {
        Ok(r) => r,
        Err(d) => {
            problems.push(d);
            return None;
        }
    };
    let mut c = Check {
        file: PIPELINE,
        problems,
    };
    let stages = stages::validate(&mut c, &raw.stages);
    let mut fail_on = Vec::new();
    let mut ignore_unfixed = false;
    if let Some(scan) = &raw.scan {
        ignore_unfixed = scan.ignore_unfixed;
        for (i, sev) in scan.fail_on.iter().enumerate() {
            match Severity::parse(&sev.value) {
                Some(s) => fail_on.push(s),
                None => c.at(
                    &format!("scan.fail_on[{i}]"),
                    sev,
                    format!("`{}` is not a severity", sev.value),
                    "use CRITICAL, HIGH, MEDIUM, LOW or UNKNOWN",
                ),
            }
        }
    } else {
        fail_on = vec![Severity::Critical, Severity::High];
    }
    let on_failure = raw.on_failure.as_ref().map_or(
        OnFailure {
            rollback: true,
            revert: false,
        },
        |o| OnFailure {
            rollback: o.rollback,
            revert: o.revert,
        },
    );
    let runtimes = RuntimeCommands {
        compose: raw
            .runtimes
            .as_ref()
            .and_then(|r| r.compose.clone())
            .unwrap_or_else(|| "docker compose".into()),
        podman: raw
            .runtimes
            .as_ref()
            .and_then(|r| r.podman.clone())
            .unwrap_or_else(|| "podman compose".into()),
    };
    let mut ssh_options = BTreeMap::new();
    if let Some(ssh) = &raw.ssh {
        for (key, value) in &ssh.options {
            match ssh_options::check(key, &value.value) {
                Ok(name) => {
                    if ssh_options
                        .insert(name.to_string(), value.value.clone())
                        .is_some()
                    {
                        c.at(
                            &format!("ssh.options.{key}"),
                            value,
                            format!("`{name}` is set twice"),
                            "option names are case-insensitive: keep one",
                        );
                    }
                }
                Err(r) => c.at(&format!("ssh.options.{key}"), value, r.message, &r.hint),
            }
        }
    }
    let keep_removed_releases = match raw
        .removal
        .as_ref()
        .and_then(|r| r.keep_releases.as_deref())
    {
        Some(text) => c.duration(
            "removal.keep_releases",
            text,
            crate::config::KEEP_REMOVED_RELEASES,
        ),
        None => crate::config::KEEP_REMOVED_RELEASES,
    };
    let proxy = raw.proxy.as_ref().map(|p| proxy(&mut c, p));
    let notify = raw
        .notify
        .iter()
        .enumerate()
        .filter_map(|(i, n)| webhook(&mut c, i, n))
        .collect();
    // Kept even when a field is wrong: clients are still checked against the
    // stages; the problems already make the fleet invalid.
    Some(Pipeline {
        stages,
        scan: ScanPolicy {
            fail_on,
            ignore_unfixed,
        },
        on_failure,
        runtimes,
        ssh_options,
        keep_removed_releases,
        proxy,
        notify,
    })
}

/// `notify[i]`: exactly one of `url` (http or https, with a host; no user
/// or password) and `url_env` (an environment variable's name), a format
/// (json by default) and known event names.
fn webhook(c: &mut Check, i: usize, n: &S<raw::Notify>) -> Option<Webhook> {
    let v = &n.value;
    let f = |k: &str| format!("notify[{i}].{k}");
    let target = match (&v.url, &v.url_env) {
        (Some(url), None) => {
            if url_host(&url.value).is_none() {
                // The URL may be a credential pasted here: never quoted.
                c.at(
                    &f("url"),
                    url,
                    "is not an http:// or https:// URL with a host",
                    "write `https://host/path`; a URL with a key in it (a Slack webhook) belongs in a CI secret: `url_env: NAME`",
                );
                return None;
            }
            WebhookTarget::Url(url.value.clone())
        }
        (None, Some(name)) => {
            let ok = !name.value.is_empty()
                && !name.value.starts_with(|ch: char| ch.is_ascii_digit())
                && name
                    .value
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
            if !ok {
                c.at(
                    &f("url_env"),
                    name,
                    format!("`{}` is not an environment variable's name", name.value),
                    "letters, digits and `_`, e.g. `SLACK_WEBHOOK_URL`",
                );
                return None;
            }
            WebhookTarget::Env(name.value.clone())
        }
        (Some(_), Some(name)) => {
            c.at(
                &f("url_env"),
                name,
                "`url` and `url_env` are both set",
                "keep one: `url_env` names the variable holding a secret URL",
            );
            return None;
        }
        (None, None) => {
            c.at(
                &format!("notify[{i}]"),
                n,
                "has neither `url` nor `url_env`",
                "`url_env: NAME` (a CI secret holding the URL) or `url: https://…`",
            );
            return None;
        }
    };
    let format = match v.format.as_ref().map(|f| f.value) {
        None | Some(raw::NotifyFormat::Json) => WebhookFormat::Json,
        Some(raw::NotifyFormat::Slack) => WebhookFormat::Slack,
    };
    let mut events = Vec::new();
    for (j, e) in v.events.iter().flatten().enumerate() {
        match EventKind::parse(&e.value) {
            Some(kind) => events.push(kind),
            None => c.at(
                &f(&format!("events[{j}]")),
                e,
                format!("`{}` is not an event", e.value),
                &format!("use {}", EventKind::ALL.map(EventKind::as_str).join(", ")),
            ),
        }
    }
    Some(Webhook {
        number: i + 1,
        target,
        format,
        events,
    })
}

/// `proxy:`: which proxy, its ports (80 and 443 by default), TLS (`auto`
/// for Caddy, `off` for nginx, which fleetgate gives no certificates).
fn proxy(c: &mut Check, p: &S<raw::Proxy>) -> Settings {
    let v = &p.value;
    let kind = match v.kind.value {
        raw::ProxyKind::Caddy => Kind::Caddy,
        raw::ProxyKind::Nginx => Kind::Nginx,
    };
    let tls = match (v.tls.as_ref().map(|t| t.value), kind) {
        (Some(raw::ProxyTls::Off), _) | (None, Kind::Nginx) => Tls::Off,
        (Some(raw::ProxyTls::Auto), Kind::Nginx) => {
            c.at(
                "proxy.tls",
                v.tls.as_ref().expect("matched Some"),
                "`tls: auto` needs `kind: caddy`",
                "fleetgate gives nginx no certificates: use `kind: caddy` for automatic HTTPS, or `tls: off`",
            );
            Tls::Off
        }
        (Some(raw::ProxyTls::Auto), Kind::Caddy) | (None, Kind::Caddy) => Tls::Auto,
    };
    let mut port = |field: &str, value: &Option<S<u16>>, default: u16| match value {
        Some(s) if s.value == 0 => {
            c.at(field, s, "port 0 is not a port", "write 1-65535");
            default
        }
        Some(s) => s.value,
        None => default,
    };
    let http_port = port("proxy.http_port", &v.http_port, 80);
    let https_port = port("proxy.https_port", &v.https_port, 443);
    if tls == Tls::Auto && http_port == https_port {
        let (message, hint) = (
            "`http_port` and `https_port` are the same port",
            "give them two ports",
        );
        // At the port written (the other is its default).
        match v.https_port.as_ref().or(v.http_port.as_ref()) {
            Some(written) => c.at("proxy.https_port", written, message, hint),
            None => c.at("proxy.https_port", p, message, hint),
        }
    }
    let command = |s: &Option<S<String>>| s.as_ref().map(|s| s.value.clone());
    Settings {
        kind,
        http_port,
        https_port,
        tls,
        start: command(&v.start),
        reload: command(&v.reload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::testing::{assert_outcome, files, trim_indent};

    /// `fixture`: the pipeline file (or `//- path` files); `expect`: the
    /// problems, or the validated pipeline in `summary`'s words.
    fn check(fixture: &str, expect: &[&str]) {
        let files = files(PIPELINE, "", fixture);
        let mut problems = Vec::new();
        let pipeline = validate(&files, &mut problems);
        let summary = pipeline.as_ref().map(summary).unwrap_or_default();
        assert_outcome(fixture, &problems, summary, expect);
    }

    fn summary(p: &Pipeline) -> Vec<String> {
        let mut out: Vec<String> = p
            .stages
            .iter()
            .map(|s| {
                let approval = s
                    .approval
                    .as_ref()
                    .map_or("-".to_string(), |a| a.approvers.join(","));
                format!(
                    "stage {}: group={} soak={:?} approvers={approval} parallelism={} max_failures={}",
                    s.name, s.group, s.soak, s.parallelism, s.max_failures
                )
            })
            .collect();
        out.push(format!(
            "scan: fail_on={:?} ignore_unfixed={}",
            p.scan.fail_on, p.scan.ignore_unfixed
        ));
        out.push(format!(
            "on_failure: rollback={} revert={}",
            p.on_failure.rollback, p.on_failure.revert
        ));
        out.push(format!(
            "runtimes: compose={:?} podman={:?}",
            p.runtimes.compose, p.runtimes.podman
        ));
        out.extend(p.ssh_options.iter().map(|(k, v)| format!("ssh: {k}={v}")));
        out.extend(p.notify.iter().map(|w| {
            format!(
                "notify #{}: {:?} {:?} events={:?}",
                w.number, w.target, w.format, w.events
            )
        }));
        out.extend(p.proxy.iter().map(|x| {
            format!(
                "proxy: {:?} http={} https={} tls={:?} start={:?} reload={:?}",
                x.kind, x.http_port, x.https_port, x.tls, x.start, x.reload
            )
        }));
        out
    }

    #[test]
    fn defaults() {
        check(
            "stages: [{name: canary, group: canary}]",
            &[
                "stage canary: group=canary soak=0ns approvers=- parallelism=1 max_failures=0",
                "scan: fail_on=[Critical, High] ignore_unfixed=false",
                "on_failure: rollback=true revert=false",
                r#"runtimes: compose="docker compose" podman="podman compose""#,
            ],
        );
    }

    #[test]
    fn every_field_set() {
        check(
            r#"
            stages:
              - name: canary
                group: canary
                soak: 1m30s
              - name: production-2
                group: prod
                approval: {required: true, approvers: [alice, bob.smith, c_d-1]}
                parallelism: 10
                max_failures: 2
              - name: "0"
                group: "9-z"
                approval: {required: false, approvers: [alice]}
            scan: {fail_on: [MEDIUM, UNKNOWN], ignore_unfixed: true}
            on_failure: {rollback: false, revert: true}
            runtimes: {compose: docker-compose, podman: podman-compose}
            ssh:
              options:
                kexalgorithms: curve25519-sha256
                ConnectTimeout: "5"
            "#,
            &[
                "stage canary: group=canary soak=90s approvers=- parallelism=1 max_failures=0",
                "stage production-2: group=prod soak=0ns approvers=alice,bob.smith,c_d-1 parallelism=10 max_failures=2",
                "stage 0: group=9-z soak=0ns approvers=- parallelism=1 max_failures=0",
                "scan: fail_on=[Medium, Unknown] ignore_unfixed=true",
                "on_failure: rollback=false revert=true",
                r#"runtimes: compose="docker-compose" podman="podman-compose""#,
                "ssh: ConnectTimeout=5",
                "ssh: KexAlgorithms=curve25519-sha256",
            ],
        );
        // A `scan:` section replaces the default list, even with none.
        check(
            "stages: [{name: a, group: a}]\nscan: {ignore_unfixed: true}",
            &[
                "stage a: group=a soak=0ns approvers=- parallelism=1 max_failures=0",
                "scan: fail_on=[] ignore_unfixed=true",
                "on_failure: rollback=true revert=false",
                r#"runtimes: compose="docker compose" podman="podman compose""#,
            ],
        );
    }

    #[test]
    fn file_and_keys() {
        check(
            "//- pipelines/apps/web/app.yaml\nruntime: compose",
            &["pipelines/pipeline.yaml: is missing from the work tree"],
        );
        check(
            "stages: []",
            &["pipelines/pipeline.yaml stages: no stages are defined"],
        );
        check(
            "stages: [{name: a, group: a}]\nstagez: []",
            &["pipelines/pipeline.yaml:2 stagez: unknown field `stagez`"],
        );
        check(
            "stages: [{name: a, group: a}]\non_failure: {rollback: true, retry: 3}",
            &["pipelines/pipeline.yaml:2 on_failure.retry: unknown field `retry`"],
        );
        check(
            "stages: [{name: a, group: a}]\nruntimes: {docker: x}",
            &["pipelines/pipeline.yaml:2 runtimes.docker: unknown field `docker`"],
        );
        check(
            "stages: [{name: a, group: a}]\nremoval: {keep_releases: forever}",
            &["pipelines/pipeline.yaml removal.keep_releases: `forever` is not a duration"],
        );
        check(
            "stages: [{name: a, group: a}]\nremoval: {keep: 3d}",
            &["pipelines/pipeline.yaml:2 removal.keep: unknown field `keep`"],
        );
    }

    #[test]
    fn scan_severities() {
        check(
            "stages: [{name: a, group: a}]\nscan:\n  fail_on: [CRITICAL, high, SEVERE]",
            &[
                "pipelines/pipeline.yaml:3 scan.fail_on[1]: `high` is not a severity",
                "pipelines/pipeline.yaml:3 scan.fail_on[2]: `SEVERE` is not a severity",
            ],
        );
    }

    /// The allow-list itself is table-tested in `config/ssh_options.rs`;
    /// here: that its refusals and duplicates become diagnostics.
    #[test]
    fn ssh_options() {
        check(
            r#"
            stages: [{name: a, group: a}]
            ssh:
              options:
                KexAlgorithms: curve25519-sha256
                ProxyCommand: nc %h %p
                ServerAliveInterval: "15 # x"
                kexalgorithms: sntrup761x25519-sha512@openssh.com
            "#,
            &[
                "pipelines/pipeline.yaml:5 ssh.options.ProxyCommand: `ProxyCommand` is not an ssh option fleetgate allows",
                "pipelines/pipeline.yaml:6 ssh.options.ServerAliveInterval: `15 # x` is not a plain value for `ServerAliveInterval`",
                "pipelines/pipeline.yaml:7 ssh.options.kexalgorithms: `KexAlgorithms` is set twice",
            ],
        );
        check(
            "stages: [{name: a, group: a}]\nssh: {config: x}",
            &["pipelines/pipeline.yaml:2 ssh.config: unknown field `config`"],
        );
    }

    /// `check` with `stages` written for the case, showing the proxy line only.
    fn check_proxy(proxy: &str, expect: &[&str]) {
        let fixture = format!("stages: [{{name: a, group: a}}]\n{}", trim_indent(proxy));
        let files = files(PIPELINE, "", &fixture);
        let mut problems = Vec::new();
        let pipeline = validate(&files, &mut problems);
        let summary = pipeline
            .as_ref()
            .map(summary)
            .unwrap_or_default()
            .into_iter()
            .filter(|l| l.starts_with("proxy:"))
            .collect();
        assert_outcome(&fixture, &problems, summary, expect);
    }

    #[test]
    fn proxy_defaults_and_every_field() {
        check_proxy(
            "proxy: {kind: caddy}",
            &["proxy: Caddy http=80 https=443 tls=Auto start=None reload=None"],
        );
        check_proxy(
            "proxy: {kind: nginx}",
            &["proxy: Nginx http=80 https=443 tls=Off start=None reload=None"],
        );
        check_proxy(
            r#"
            proxy:
              kind: caddy
              http_port: 8080
              https_port: 8443
              tls: off
              start: "caddy start --config Caddyfile"
              reload: "caddy reload --config Caddyfile"
            "#,
            &[
                r#"proxy: Caddy http=8080 https=8443 tls=Off start=Some("caddy start --config Caddyfile") reload=Some("caddy reload --config Caddyfile")"#,
            ],
        );
        check_proxy(
            "proxy: {kind: nginx, http_port: 8080, tls: off, reload: \"nginx -s reload\"}",
            &[
                r#"proxy: Nginx http=8080 https=443 tls=Off start=None reload=Some("nginx -s reload")"#,
            ],
        );
        // Without TLS the HTTPS port is unused: it may equal the HTTP port.
        check_proxy(
            "proxy: {kind: caddy, tls: off, http_port: 443}",
            &["proxy: Caddy http=443 https=443 tls=Off start=None reload=None"],
        );
        // No `proxy:`: none.
        check_proxy("", &[]);
    }

    #[test]
    fn proxy_refusals() {
        check_proxy(
            "proxy:\n  kind: nginx\n  tls: auto",
            &["pipelines/pipeline.yaml:4 proxy.tls: `tls: auto` needs `kind: caddy`"],
        );
        check_proxy(
            "proxy:\n  kind: caddy\n  http_port: 0\n  https_port: 0",
            &[
                "pipelines/pipeline.yaml:4 proxy.http_port: port 0 is not a port",
                "pipelines/pipeline.yaml:5 proxy.https_port: port 0 is not a port",
            ],
        );
        check_proxy(
            "proxy:\n  kind: caddy\n  http_port: 8443\n  https_port: 8443",
            &[
                "pipelines/pipeline.yaml:5 proxy.https_port: `http_port` and `https_port` are the same port",
            ],
        );
        check_proxy(
            "proxy:\n  kind: caddy\n  http_port: 443",
            &[
                "pipelines/pipeline.yaml:4 proxy.https_port: `http_port` and `https_port` are the same port",
            ],
        );
        check_proxy(
            "proxy: {kind: traefik}",
            &["pipelines/pipeline.yaml:2 proxy.value.kind.value: unknown variant `traefik`"],
        );
        check_proxy(
            "proxy: {kind: caddy, tls: on}",
            &["pipelines/pipeline.yaml:2 proxy.value.tls.value: unknown variant `on`"],
        );
        check_proxy(
            "proxy: {kind: caddy, http_port: 70000}",
            &["pipelines/pipeline.yaml:2 proxy.value.http_port.value: invalid u16"],
        );
        check_proxy(
            "proxy: {kind: caddy, config: /etc/caddy}",
            &["pipelines/pipeline.yaml:2 proxy.value.config: unknown field `config`"],
        );
        check_proxy(
            "proxy: {http_port: 80}",
            &["pipelines/pipeline.yaml:2 proxy.value: missing field `kind`"],
        );
    }

    /// `check` with `stages` written for the case, showing the notify lines only.
    fn check_notify(notify: &str, expect: &[&str]) {
        let fixture = format!("stages: [{{name: a, group: a}}]\n{}", trim_indent(notify));
        let files = files(PIPELINE, "", &fixture);
        let mut problems = Vec::new();
        let pipeline = validate(&files, &mut problems);
        let summary = pipeline
            .as_ref()
            .map(summary)
            .unwrap_or_default()
            .into_iter()
            .filter(|l| l.starts_with("notify"))
            .collect();
        assert_outcome(&fixture, &problems, summary, expect);
    }

    #[test]
    fn notify_webhooks() {
        check_notify(
            r#"
            notify:
              - url_env: SLACK_HOOK
                format: slack
              - url: "http://hooks.internal:8080/fleet?x=1"
                events: [failed_rolled_back, frozen]
            "#,
            &[
                r#"notify #1: Env("SLACK_HOOK") Slack events=[]"#,
                r#"notify #2: Url("http://hooks.internal:8080/fleet?x=1") Json events=[FailedRolledBack, Frozen]"#,
            ],
        );
        check_notify("", &[]);
    }

    #[test]
    fn notify_refusals() {
        check_notify(
            r#"
            notify:
              - url: "ftp://hooks.example/T000/B000/secretkey"
              - url: "https://user:pw@hooks.example/x"
              - url_env: "1BAD-NAME"
              - {url: "https://a.example", url_env: A}
              - {format: json}
              - url_env: A
                events: [stage_passed, deployed]
            "#,
            &[
                "pipelines/pipeline.yaml:3 notify[0].url: is not an http:// or https:// URL with a host",
                "pipelines/pipeline.yaml:4 notify[1].url: is not an http:// or https:// URL with a host",
                "pipelines/pipeline.yaml:5 notify[2].url_env: `1BAD-NAME` is not an environment variable's name",
                "pipelines/pipeline.yaml:6 notify[3].url_env: `url` and `url_env` are both set",
                "pipelines/pipeline.yaml:7 notify[4]: has neither `url` nor `url_env`",
                "pipelines/pipeline.yaml:9 notify[5].events[1]: `deployed` is not an event",
            ],
        );
        check_notify(
            "notify: [{url_env: A, format: teams}]",
            &["pipelines/pipeline.yaml:2 notify[0].value.format.value: unknown variant `teams`"],
        );
        check_notify(
            "notify: [{url_env: A, headers: {}}]",
            &["pipelines/pipeline.yaml:2 notify[0].value.headers: unknown field `headers`"],
        );
    }
}
