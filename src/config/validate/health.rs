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
