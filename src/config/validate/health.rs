//! An app's `health:` checks: exactly one of `http` and `command`; http
//! defaults (status 200, 1s interval, 2s timeout, 1 success, 3 failures, 60s
//! deadline), durations, and the http(s) scheme rule. Whether a check could
//! carry a secret is decided where templates compile (`render.rs`).

use std::time::Duration;

use super::Check;
use crate::config::model::{HealthCheck, HttpCheck};
use crate::config::raw::{self, S};

/// `health[i]` of an app; `None` when it is neither http nor command (the
/// problems are in `c` either way).
pub(super) fn validate(c: &mut Check, i: usize, h: &S<raw::Health>) -> Option<HealthCheck> {
    let f = |k: &str| format!("health[{i}].{k}");
    let v = &h.value;
    match (&v.http, &v.command) {
        (Some(url), None) => {
            if !may_be_http_url(url) {
                c.at(
                    &f("http"),
                    h,
                    format!("`{url}` is not an http:// or https:// URL"),
                    HTTP_URL_HINT,
                );
            }
            let check = HttpCheck {
                url: url.clone(),
                expect_status: v.expect_status.unwrap_or(200),
                expect_body: v.expect_body.clone(),
                interval: v.interval.as_ref().map_or(Duration::from_secs(1), |t| {
                    c.duration(&f("interval"), t, Duration::from_secs(1))
                }),
                timeout: v.timeout.as_ref().map_or(Duration::from_secs(2), |t| {
                    c.duration(&f("timeout"), t, Duration::from_secs(2))
                }),
                successes: v.successes.unwrap_or(1).max(1),
                failures: v.failures.unwrap_or(3).max(1),
                deadline: v.deadline.as_ref().map_or(Duration::from_secs(60), |t| {
                    c.duration(&f("deadline"), t, Duration::from_secs(60))
                }),
                route: v.route.unwrap_or(false),
            };
            if v.successes == Some(0) || v.failures == Some(0) {
                c.at(
                    &format!("health[{i}]"),
                    h,
                    "successes and failures must be at least 1",
                    "",
                );
            }
            Some(HealthCheck::Http(check))
        }
        (None, Some(cmd)) => {
            let http_only = [
                ("expect_status", v.expect_status.is_some()),
                ("expect_body", v.expect_body.is_some()),
                ("interval", v.interval.is_some()),
                ("timeout", v.timeout.is_some()),
                ("successes", v.successes.is_some()),
                ("failures", v.failures.is_some()),
                ("deadline", v.deadline.is_some()),
                ("route", v.route.is_some()),
            ];
            for (key, set) in http_only {
                if set {
                    c.at(
                        &f(key),
                        h,
                        format!("`{key}` applies to http checks only"),
                        "command checks pass when the command exits 0",
                    );
                }
            }
            Some(HealthCheck::Command(cmd.clone()))
        }
        _ => {
            c.at(
                &format!("health[{i}]"),
                h,
                "a health check needs exactly one of `http` and `command`",
                "write `- http: \"http://...\"` or `- command: \"...\"`",
            );
            None
        }
    }
}

pub const HTTP_URL_HINT: &str = "http checks GET a URL from the runner: write `http://…` or `https://…` (file:// and other schemes are refused)";

/// Whether a health check's URL template can still render to `http://…` or
/// `https://…`: the literal text before its first tag is checked here, the
/// rendered URL again by `render.rs` (a templated scheme).
pub(super) fn may_be_http_url(template: &str) -> bool {
    let literal = template.split('{').next().unwrap_or_default();
    let literal = literal.to_ascii_lowercase();
    ["http://", "https://"]
        .iter()
        .any(|scheme| literal.starts_with(scheme) || scheme.starts_with(&literal))
}

#[cfg(test)]
mod tests {
    use crate::config::model::HealthCheck;
    use crate::config::validate::app;
    use crate::config::validate::testing::{assert_outcome, files, trim_indent};

    /// `checks`: the `health:` list of an app (YAML, at column 0); `expect`:
    /// the problems, or each validated check with its defaults filled in.
    fn check(checks: &str, expect: &[&str]) {
        let fixture = format!("runtime: compose\nhealth:\n{}", trim_indent(checks));
        let files = files("pipelines/apps/web/app.yaml", "", &fixture);
        let mut problems = Vec::new();
        let (apps, _) = app::validate_all(&files, &mut problems);
        let summary = apps
            .values()
            .flat_map(|a| a.health.iter().map(summary))
            .collect();
        assert_outcome(&fixture, &problems, summary, expect);
    }

    fn summary(h: &HealthCheck) -> String {
        match h {
            HealthCheck::Http(c) => format!(
                "http {}: status={} body={:?} interval={:?} timeout={:?} successes={} failures={} deadline={:?}{}",
                c.url,
                c.expect_status,
                c.expect_body,
                c.interval,
                c.timeout,
                c.successes,
                c.failures,
                c.deadline,
                if c.route { " route" } else { "" }
            ),
            HealthCheck::Command(c) => format!("command: {c}"),
        }
    }

    #[test]
    fn defaults_and_every_field() {
        check(
            r#"
            - http: "http://{{ host.address }}:{{ client.vars.port }}/health"
            - command: "test -s compose.yaml"
            - http: "https://example.org/"
              expect_status: 204
              expect_body: ok
              interval: 500ms
              timeout: 3s
              successes: 3
              failures: 5
              deadline: 2m
            "#,
            &[
                "http http://{{ host.address }}:{{ client.vars.port }}/health: status=200 body=None interval=1s timeout=2s successes=1 failures=3 deadline=60s",
                "command: test -s compose.yaml",
                r#"http https://example.org/: status=204 body=Some("ok") interval=500ms timeout=3s successes=3 failures=5 deadline=120s"#,
            ],
        );
    }

    #[test]
    fn exactly_one_of_http_and_command() {
        check(
            r#"
            - {http: "http://x/", command: "true"}
            - {expect_status: 200}
            "#,
            &[
                "pipelines/apps/web/app.yaml:3 health[0]: exactly one of `http` and `command`",
                "pipelines/apps/web/app.yaml:4 health[1]: exactly one of `http` and `command`",
            ],
        );
        check(
            r#"
            - command: "true"
              expect_status: 200
              expect_body: ok
              interval: 1s
              timeout: 1s
              successes: 1
              failures: 1
              deadline: 1s
            "#,
            &[
                "pipelines/apps/web/app.yaml:3 health[0].expect_status: `expect_status` applies to http checks only",
                "pipelines/apps/web/app.yaml:3 health[0].expect_body: `expect_body` applies to http checks only",
                "pipelines/apps/web/app.yaml:3 health[0].interval: `interval` applies to http checks only",
                "pipelines/apps/web/app.yaml:3 health[0].timeout: `timeout` applies to http checks only",
                "pipelines/apps/web/app.yaml:3 health[0].successes: `successes` applies to http checks only",
                "pipelines/apps/web/app.yaml:3 health[0].failures: `failures` applies to http checks only",
                "pipelines/apps/web/app.yaml:3 health[0].deadline: `deadline` applies to http checks only",
            ],
        );
        check(
            "- {http: \"http://x/\", expect_code: 200}",
            &[
                "pipelines/apps/web/app.yaml:3 health[0].value.expect_code: unknown field `expect_code`",
            ],
        );
        check(
            "- {http: \"http://x/\", expect_status: 70000}",
            &["pipelines/apps/web/app.yaml:3 health[0].value.expect_status: invalid u16"],
        );
    }

    /// The literal text before the first tag must be able to start
    /// `http://` or `https://`; a templated scheme is checked again once
    /// rendered (`render.rs`).
    #[test]
    fn http_checks_are_http_or_https() {
        check(
            r#"
            - http: "HTTPS://example.org/"
            - http: "{{ client.vars.scheme }}://example.org/"
            - http: "ht{{ s }}://example.org/"
            - http: "http:/{{ s }}"
            "#,
            &[
                "http HTTPS://example.org/: status=200 body=None interval=1s timeout=2s successes=1 failures=3 deadline=60s",
                "http {{ client.vars.scheme }}://example.org/: status=200 body=None interval=1s timeout=2s successes=1 failures=3 deadline=60s",
                "http ht{{ s }}://example.org/: status=200 body=None interval=1s timeout=2s successes=1 failures=3 deadline=60s",
                "http http:/{{ s }}: status=200 body=None interval=1s timeout=2s successes=1 failures=3 deadline=60s",
            ],
        );
        check(
            r#"
            - http: "file:///etc/passwd"
            - http: "ftp://example.org/"
            - http: "example.org/health"
            - http: "htp{{ s }}://x/"
            - http: "httpx://x/"
            "#,
            &[
                "pipelines/apps/web/app.yaml:3 health[0].http: `file:///etc/passwd` is not an http:// or https:// URL",
                "pipelines/apps/web/app.yaml:4 health[1].http: `ftp://example.org/` is not an http:// or https:// URL",
                "pipelines/apps/web/app.yaml:5 health[2].http: `example.org/health` is not an http:// or https:// URL",
                "pipelines/apps/web/app.yaml:6 health[3].http: `htp{{ s }}://x/` is not an http:// or https:// URL",
                "pipelines/apps/web/app.yaml:7 health[4].http: `httpx://x/` is not an http:// or https:// URL",
            ],
        );
    }

    #[test]
    fn durations_and_counts() {
        check(
            r#"
            - http: "http://x/"
              interval: "1"
              timeout: fast
              deadline: 1x
            "#,
            &[
                "pipelines/apps/web/app.yaml health[0].interval: `1` has a number without a unit",
                "pipelines/apps/web/app.yaml health[0].timeout: `fast` is not a duration",
                "pipelines/apps/web/app.yaml health[0].deadline: `1x` has an unknown unit `x`",
            ],
        );
        check(
            "- {http: \"http://x/\", successes: 0}\n- {http: \"http://x/\", failures: 0}",
            &[
                "pipelines/apps/web/app.yaml:3 health[0]: successes and failures must be at least 1",
                "pipelines/apps/web/app.yaml:4 health[1]: successes and failures must be at least 1",
            ],
        );
    }

    /// `route: true`: the check goes through the host's proxy. Whether the
    /// app has routes is `app.rs`'s rule, whether the URL names one of them
    /// `render.rs`'s; here the key itself.
    #[test]
    fn route_checks() {
        let routes = "routes: [{hosts: [\"{{ client.domain }}\"], port: 8080}]";
        let check_routed = |checks: &str, expect: &[&str]| {
            check(&format!("{}\n{routes}", trim_indent(checks)), expect)
        };
        check_routed(
            r#"
            - {http: "https://{{ client.domain }}/health", route: true}
            - {http: "http://{{ host.address }}:8080/health", route: false}
            "#,
            &[
                "http https://{{ client.domain }}/health: status=200 body=None interval=1s timeout=2s successes=1 failures=3 deadline=60s route",
                "http http://{{ host.address }}:8080/health: status=200 body=None interval=1s timeout=2s successes=1 failures=3 deadline=60s",
            ],
        );
        check_routed(
            "- {command: \"true\", route: true}",
            &["pipelines/apps/web/app.yaml:3 health[0].route: `route` applies to http checks only"],
        );
        check_routed(
            "- {http: \"http://x/\", route: yes please}",
            &["pipelines/apps/web/app.yaml:3 health[0].value.route: invalid boolean"],
        );
    }
}
