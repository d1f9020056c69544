//! Which forge, where, as whom: read from the CI job's environment.
//!
//! Forgejo Actions sets the `GITHUB_*` names too, so the kind is decided by
//! `--forge` / `FLEETGATE_FORGE`, then Forgejo's own markers
//! (`FORGEJO_ACTIONS`, `GITEA_ACTIONS`), then `GITHUB_ACTIONS`. Outside a
//! CI job this is an error, never a silent no-op (design.md §4).

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde_json::Value;

use super::Token;
use crate::error::{Error, Message, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Forgejo,
    Github,
}

/// The forge of this CI job.
#[derive(Debug, Clone)]
pub struct Env {
    pub kind: Kind,
    /// API base, no trailing slash (`https://codeberg.org/api/v1`,
    /// `https://api.github.com`).
    pub api: String,
    pub owner: String,
    pub repo: String,
    pub token: Token,
    /// Which variable the token came from, for hints.
    pub token_var: &'static str,
    /// `GITHUB_EVENT_NAME`: pull_request, push, issue_comment, workflow_dispatch…
    pub event_name: Option<String>,
    /// The event payload (`GITHUB_EVENT_PATH`), parsed.
    pub event: Value,
    /// `GITHUB_RUN_ID`: the workflow run (GitHub's environment reviews hang on it).
    pub run_id: Option<u64>,
    /// The page of this job's run, for links from comments and statuses.
    pub run_url: Option<String>,
    /// `GITHUB_ACTOR`: who started the run.
    pub actor: Option<String>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Env {
    /// Reads the job's environment. `why` names the option that needs the
    /// forge, for the error outside CI.
    pub fn from_env(forced: Option<Kind>, why: &str) -> Result<Env> {
        Env::from_vars(forced, why, &var)
    }

    /// [`Env::from_env`] over any source of variables (`var` gives a set,
    /// non-blank value). Every value that ends up in a URL, a link or a
    /// record is checked here, before any request: a malformed one is
    /// invalid input naming the variable (and the payload's field).
    fn from_vars(
        forced: Option<Kind>,
        why: &str,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Env> {
        let truthy = |name: &str| var(name).is_some_and(|v| v == "true" || v == "1");
        let outside = |missing: &str| {
            Error::Usage(Message::from(format!("{why} needs a forge, but {missing} is not set")).hint(format!("this runs in a Forgejo or GitHub Actions job, which sets GITHUB_REPOSITORY, GITHUB_SERVER_URL and GITHUB_EVENT_PATH; give the job a token in GITHUB_TOKEN (or FORGEJO_TOKEN). Outside CI, leave {why} out")))
        };
        let kind = match forced {
            Some(k) => k,
            None if truthy("FORGEJO_ACTIONS") || truthy("GITEA_ACTIONS") => Kind::Forgejo,
            None if truthy("GITHUB_ACTIONS") => Kind::Github,
            None => {
                return Err(outside(
                    "FORGEJO_ACTIONS or GITHUB_ACTIONS (or --forge forgejo|github)",
                ));
            }
        };
        let repository = var("GITHUB_REPOSITORY").ok_or_else(|| outside("GITHUB_REPOSITORY"))?;
        let (owner, repo) = repository_parts(&repository)
            .map_err(|e| invalid("GITHUB_REPOSITORY", &repository, e))?;
        let server = match var("GITHUB_SERVER_URL") {
            Some(url) => checked_url("GITHUB_SERVER_URL", &url)?,
            None if kind == Kind::Github => "https://github.com".to_string(),
            None => return Err(outside("GITHUB_SERVER_URL")),
        };
        let api = match ["FLEETGATE_FORGE_URL", "GITHUB_API_URL"]
            .into_iter()
            .find_map(|name| var(name).map(|v| (name, v)))
        {
            Some((name, url)) => checked_url(name, &url)?,
            None => match kind {
                Kind::Forgejo => format!("{server}/api/v1"),
                Kind::Github => "https://api.github.com".to_string(),
            },
        };
        let (token, token_var) = match kind {
            Kind::Forgejo => var("FORGEJO_TOKEN")
                .map(|t| (t, "FORGEJO_TOKEN"))
                .or_else(|| var("GITHUB_TOKEN").map(|t| (t, "GITHUB_TOKEN"))),
            Kind::Github => var("GITHUB_TOKEN").map(|t| (t, "GITHUB_TOKEN")),
        }
        .ok_or_else(|| outside("GITHUB_TOKEN (or FORGEJO_TOKEN)"))?;
        let event = match var("GITHUB_EVENT_PATH") {
            None => Value::Null,
            Some(path) => read_event(&PathBuf::from(path))?,
        };
        let event_name = checked("GITHUB_EVENT_NAME", var, event_name)?;
        let actor = checked("GITHUB_ACTOR", var, login)?;
        let run_id = checked("GITHUB_RUN_ID", var, number)?;
        let run_number = checked("GITHUB_RUN_NUMBER", var, number)?;
        let run_url = run_url(
            &server,
            &format!("{owner}/{repo}"),
            kind,
            run_number,
            run_id,
        );
        Ok(Env {
            kind,
            api,
            owner: owner.to_string(),
            repo: repo.to_string(),
            token: Token::new(token),
            token_var,
            event_name,
            event,
            run_id,
            run_url,
            actor,
        })
    }

    /// The pull request of a `pull_request` event.
    pub fn pull_request_number(&self) -> Option<u64> {
        self.event
            .pointer("/pull_request/number")
            .or_else(|| self.event.get("number"))
            .and_then(Value::as_u64)
    }
}

/// The page of this CI run (`<server>/<owner>/<name>/actions/runs/<n>`),
/// from the runner's variables checked as [`Env::from_env`] checks them;
/// None outside CI. Forgejo numbers its run pages per repository
/// (`GITHUB_RUN_NUMBER`), GitHub by the global run id.
pub fn run_page() -> Result<Option<String>> {
    run_page_from(&var)
}

fn run_page_from(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>> {
    let server = checked("GITHUB_SERVER_URL", var, url)?;
    let repo = checked("GITHUB_REPOSITORY", var, |v| {
        repository_parts(v).map(|_| v.to_string())
    })?;
    let truthy = |name: &str| var(name).is_some_and(|v| v == "true" || v == "1");
    let kind = match truthy("FORGEJO_ACTIONS") || truthy("GITEA_ACTIONS") {
        true => Kind::Forgejo,
        false => Kind::Github,
    };
    let run_number = checked("GITHUB_RUN_NUMBER", var, number)?;
    let run_id = checked("GITHUB_RUN_ID", var, number)?;
    Ok(match (server, repo) {
        (Some(server), Some(repo)) => run_url(&server, &repo, kind, run_number, run_id),
        _ => None,
    })
}

/// A run's page on its forge: Forgejo numbers run pages per repository
/// (`GITHUB_RUN_NUMBER`, else the id), GitHub by the global run id.
fn run_url(
    server: &str,
    repository: &str,
    kind: Kind,
    run_number: Option<u64>,
    run_id: Option<u64>,
) -> Option<String> {
    let page = match kind {
        Kind::Forgejo => run_number.or(run_id),
        Kind::Github => run_id,
    };
    page.map(|n| format!("{server}/{repository}/actions/runs/{n}"))
}

/// `NAME is "VALUE": WHY`, exit 2, with where the value comes from.
fn invalid(name: &str, value: &str, why: impl std::fmt::Display) -> Error {
    Error::Usage(
        Message::from(format!("{name} is {}: {why}", shown(value))).hint(format!(
            "the CI job sets {name}; check the workflow's `env:` and the runner's environment"
        )),
    )
}

/// A value for a message: quoted, escaped, clipped; a URL's user name and
/// password are never shown.
pub(crate) fn shown(value: &str) -> String {
    let value = match value.split_once("://") {
        Some((scheme, rest)) if rest.split('/').next().is_some_and(|a| a.contains('@')) => {
            let after = rest.split_once('@').map_or("", |(_, h)| h);
            format!("{scheme}://…@{after}")
        }
        _ => value.to_string(),
    };
    format!("{:?}", super::clip(&value, 120))
}

/// An optional variable, checked by `check` when set.
fn checked<T>(
    name: &str,
    var: &dyn Fn(&str) -> Option<String>,
    check: fn(&str) -> std::result::Result<T, &'static str>,
) -> Result<Option<T>> {
    var(name)
        .map(|v| check(&v).map_err(|why| invalid(name, &v, why)))
        .transpose()
}

fn checked_url(name: &str, value: &str) -> Result<String> {
    url(value).map_err(|why| invalid(name, value, why))
}

/// A name of an owner or repository, as both forges allow them.
fn name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `OWNER/NAME`.
fn repository_parts(value: &str) -> std::result::Result<(&str, &str), &'static str> {
    match value.split_once('/') {
        Some((owner, repo)) if name(owner) && name(repo) => Ok((owner, repo)),
        _ => Err(
            "expected OWNER/NAME, each of letters, digits, '-', '_' and '.' (no '..', no other '/')",
        ),
    }
}

/// An http(s) base URL: scheme, host, optional port and path; no user
/// name or password, query or fragment. Its path is checked as written,
/// segment by segment: a URL parser would resolve `..` and decode `%2e`
/// into something else than what was written. No trailing slash.
pub(crate) fn url(value: &str) -> std::result::Result<String, &'static str> {
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err("a URL holds no spaces, backslashes or control characters");
    }
    let Some((_, rest)) = value.split_once("://") else {
        return Err("expected an http:// or https:// URL");
    };
    let parsed = reqwest::Url::parse(value).map_err(|_| "not a URL")?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("the scheme must be http or https");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("it names no host");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() || rest.contains('@') {
        return Err(
            "a user name or password does not belong in it (the token has a variable of its own)",
        );
    }
    if value.contains('?') {
        return Err("a query (`?…`) does not belong in it");
    }
    if value.contains('#') {
        return Err("a fragment (`#…`) does not belong in it");
    }
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
    };
    if !path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .all(segment_ok)
    {
        return Err(
            "its path may hold letters, digits, '-', '_', '.' and '~' between single slashes (no '..' or '%')",
        );
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// A user's login: GitHub's and Forgejo's characters, and GitHub's `[bot]`
/// suffix of apps.
fn login(value: &str) -> std::result::Result<String, &'static str> {
    let bare = value.strip_suffix("[bot]").unwrap_or(value);
    if name(bare) {
        Ok(value.to_string())
    } else {
        Err("expected a login: letters, digits, '-', '_' and '.'")
    }
}

/// A positive whole number (run ids and numbers).
fn number(value: &str) -> std::result::Result<u64, &'static str> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or("expected a positive whole number")
}

/// An event's name: `pull_request`, `issue_comment`, …
fn event_name(value: &str) -> std::result::Result<String, &'static str> {
    if !value.is_empty()
        && value.len() <= 64
        && value.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    {
        Ok(value.to_string())
    } else {
        Err("expected an event name such as pull_request or issue_comment")
    }
}

fn read_event(path: &Path) -> Result<Value> {
    let bad = |why: String| {
        Error::Usage(
            Message::from(format!("GITHUB_EVENT_PATH={}: {why}", path.display())).hint(
                "the CI job writes the event that started it there; check the workflow's `env:`",
            ),
        )
    };
    let text = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let event: Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not a JSON event payload: {e}")))?;
    check_event(&event).map_err(bad)?;
    Ok(event)
}

/// What a field of the event payload must look like.
#[derive(Clone, Copy)]
enum Shape {
    Object,
    /// An object, or null (`issue.pull_request` of a plain issue).
    ObjectOrNull,
    Bool,
    /// A positive whole number (pull request and issue numbers).
    Number,
    /// Any string (a comment's body).
    Text,
    Login,
    /// An RFC 3339 time: a comment written before a plan changed must be
    /// told apart from one written after.
    Time,
    /// A Git revision as a person types it: a commit id, branch or tag,
    /// `HEAD~1`; empty means none.
    Rev,
    /// (A prefix of) a plan hash; empty means none.
    Hex,
}

/// Every field of the payload fleetgate reads (here and in the commands),
/// checked when present: absent ones are each reader's to miss.
const EVENT_FIELDS: &[(&str, Shape)] = &[
    ("/pull_request", Shape::Object),
    ("/pull_request/number", Shape::Number),
    ("/number", Shape::Number),
    ("/issue", Shape::Object),
    ("/issue/number", Shape::Number),
    ("/issue/pull_request", Shape::ObjectOrNull),
    ("/is_pull", Shape::Bool),
    ("/comment", Shape::Object),
    ("/comment/body", Shape::Text),
    ("/comment/user", Shape::Object),
    ("/comment/user/login", Shape::Login),
    ("/comment/created_at", Shape::Time),
    ("/sender", Shape::Object),
    ("/sender/login", Shape::Login),
    ("/inputs", Shape::Object),
    ("/inputs/rev", Shape::Rev),
    ("/inputs/plan", Shape::Hex),
];

/// The first field of `event` that is not what fleetgate expects, named by
/// its path (`pull_request.number is "7/../x": expected …`).
fn check_event(event: &Value) -> std::result::Result<(), String> {
    if !event.is_object() {
        return Err("expected a JSON object".into());
    }
    for (pointer, shape) in EVENT_FIELDS {
        let Some(v) = event.pointer(pointer) else {
            continue;
        };
        let str_ok = |ok: fn(&str) -> bool| v.as_str().is_some_and(ok);
        let (fine, expected) = match shape {
            Shape::Object => (v.is_object(), "an object"),
            Shape::ObjectOrNull => (v.is_object() || v.is_null(), "an object or null"),
            Shape::Bool => (v.is_boolean(), "true or false"),
            Shape::Number => (v.as_u64().is_some_and(|n| n > 0), "a positive whole number"),
            Shape::Text => (v.is_string(), "a string"),
            Shape::Login => (
                str_ok(|s| login(s).is_ok()),
                "a login: letters, digits, '-', '_' and '.'",
            ),
            Shape::Time => (
                str_ok(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()),
                "an RFC 3339 time such as 2025-01-31T12:00:00Z",
            ),
            Shape::Rev => (
                str_ok(|s| {
                    s.len() <= 255
                        && !s.starts_with('-')
                        && s.chars().all(|c| {
                            c.is_ascii_alphanumeric()
                                || matches!(c, '-' | '_' | '.' | '/' | '~' | '^')
                        })
                }),
                "a commit, branch or tag: letters, digits, '-', '_', '.', '/', '~', '^'",
            ),
            Shape::Hex => (
                str_ok(|s| s.len() <= 64 && s.chars().all(|c| c.is_ascii_hexdigit())),
                "a plan hash (hexadecimal) or nothing",
            ),
        };
        if !fine {
            let field = pointer.trim_start_matches('/').replace('/', ".");
            let seen = super::clip(&v.to_string(), 80);
            return Err(format!("{field} is {seen}: expected {expected}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::error::ExitCode;

    /// The environment of a Forgejo job, with `changes` (an empty value
    /// unsets the variable).
    fn forgejo(changes: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut vars: BTreeMap<String, String> = [
            ("FORGEJO_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", "hosting/fleet"),
            ("GITHUB_SERVER_URL", "https://forge.example"),
            ("GITHUB_TOKEN", "t0ken-not-secret"),
            ("GITHUB_RUN_NUMBER", "7"),
            ("GITHUB_RUN_ID", "4242"),
            ("GITHUB_ACTOR", "alice"),
            ("GITHUB_EVENT_NAME", "pull_request"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in changes {
            vars.insert(k.to_string(), v.to_string());
        }
        vars
    }

    /// What the job's environment gives: `api owner/repo run_url`, or the
    /// error's first line (every error here is exit 2).
    fn read(vars: &BTreeMap<String, String>) -> std::result::Result<String, String> {
        let var = |k: &str| vars.get(k).filter(|v| !v.trim().is_empty()).cloned();
        match Env::from_vars(None, "plan --comment", &var) {
            Ok(env) => Ok(format!(
                "{} {}/{} {}",
                env.api,
                env.owner,
                env.repo,
                env.run_url.unwrap_or_default()
            )),
            Err(e) => {
                assert_eq!(e.exit_code(), ExitCode::Invalid, "{e}");
                Err(e.to_string().lines().next().unwrap().to_string())
            }
        }
    }

    /// The run page recorded with the lock (`run`) is the one the forge
    /// links, from the same checked variables; malformed ones are refused.
    #[test]
    fn the_run_page_of_the_lock_is_checked_as_the_forge_environment_is() {
        let page = |changes: &[(&str, &str)]| {
            let vars = forgejo(changes);
            let var = |k: &str| vars.get(k).filter(|v| !v.trim().is_empty()).cloned();
            run_page_from(&var).map_err(|e| {
                assert_eq!(e.exit_code(), ExitCode::Invalid, "{e}");
                e.to_string().lines().next().unwrap().to_string()
            })
        };
        assert_eq!(
            page(&[]),
            Ok(Some(
                "https://forge.example/hosting/fleet/actions/runs/7".into()
            ))
        );
        assert_eq!(
            page(&[("FORGEJO_ACTIONS", "")]),
            Ok(Some(
                "https://forge.example/hosting/fleet/actions/runs/4242".into()
            ))
        );
        assert_eq!(page(&[("GITHUB_SERVER_URL", "")]), Ok(None));
        for (name, value) in [
            ("GITHUB_REPOSITORY", "hosting/fleet/../../admin"),
            ("GITHUB_SERVER_URL", "https://forge.example/?x=1"),
            ("GITHUB_RUN_NUMBER", "7; rm"),
        ] {
            let err = page(&[(name, value)]).unwrap_err();
            assert!(err.starts_with(name), "{name}: {err}");
        }
    }

    #[test]
    fn well_formed_environments_give_the_api_repository_and_run_page() {
        let ok: &[(&[(&str, &str)], &str)] = &[
            (
                &[],
                "https://forge.example/api/v1 hosting/fleet https://forge.example/hosting/fleet/actions/runs/7",
            ),
            (
                &[
                    ("GITHUB_SERVER_URL", "http://127.0.0.1:3000/"),
                    ("GITHUB_REPOSITORY", "my-org_2/fleet.config-v1"),
                ],
                "http://127.0.0.1:3000/api/v1 my-org_2/fleet.config-v1 http://127.0.0.1:3000/my-org_2/fleet.config-v1/actions/runs/7",
            ),
            (
                &[("GITHUB_SERVER_URL", "https://git.example/forgejo")],
                "https://git.example/forgejo/api/v1 hosting/fleet https://git.example/forgejo/hosting/fleet/actions/runs/7",
            ),
            (
                &[
                    ("FORGEJO_ACTIONS", ""),
                    ("GITHUB_ACTIONS", "true"),
                    ("GITHUB_SERVER_URL", ""),
                ],
                "https://api.github.com hosting/fleet https://github.com/hosting/fleet/actions/runs/4242",
            ),
            (
                &[
                    ("FORGEJO_ACTIONS", ""),
                    ("GITHUB_ACTIONS", "true"),
                    ("GITHUB_SERVER_URL", "https://ghe.example"),
                    ("GITHUB_API_URL", "https://ghe.example/api/v3"),
                    ("GITHUB_ACTOR", "dependabot[bot]"),
                ],
                "https://ghe.example/api/v3 hosting/fleet https://ghe.example/hosting/fleet/actions/runs/4242",
            ),
            // The override wins; the variable it overrides is not used.
            (
                &[
                    ("FLEETGATE_FORGE_URL", "https://[::1]:8443/api/v1"),
                    ("GITHUB_API_URL", "not a url"),
                ],
                "https://[::1]:8443/api/v1 hosting/fleet https://forge.example/hosting/fleet/actions/runs/7",
            ),
        ];
        for (changes, expect) in ok {
            assert_eq!(
                read(&forgejo(changes)).as_deref(),
                Ok(*expect),
                "{changes:?}"
            );
        }
    }

    #[test]
    fn malformed_variables_are_refused_naming_the_variable() {
        // (variable, value, what the error says after `VARIABLE is "VALUE":`)
        let bad = [
            (
                "GITHUB_REPOSITORY",
                "owner/repo/../../admin",
                "expected OWNER/NAME",
            ),
            ("GITHUB_REPOSITORY", "owner", "expected OWNER/NAME"),
            (
                "GITHUB_REPOSITORY",
                "owner/repo/issues",
                "expected OWNER/NAME",
            ),
            ("GITHUB_REPOSITORY", "owner/repo/", "expected OWNER/NAME"),
            ("GITHUB_REPOSITORY", "/repo", "expected OWNER/NAME"),
            ("GITHUB_REPOSITORY", "owner/", "expected OWNER/NAME"),
            ("GITHUB_REPOSITORY", "own er/repo", "expected OWNER/NAME"),
            ("GITHUB_REPOSITORY", "owner/re?po", "expected OWNER/NAME"),
            ("GITHUB_REPOSITORY", "owner/re#po", "expected OWNER/NAME"),
            ("GITHUB_REPOSITORY", "owner/%2e%2e", "expected OWNER/NAME"),
            ("GITHUB_REPOSITORY", "../repo", "expected OWNER/NAME"),
            ("GITHUB_REPOSITORY", "owner/..", "expected OWNER/NAME"),
            ("GITHUB_REPOSITORY", "owner/a..b", "expected OWNER/NAME"),
            ("GITHUB_REPOSITORY", "owner/repo\n", "expected OWNER/NAME"),
            (
                "GITHUB_SERVER_URL",
                "ftp://forge.example",
                "the scheme must be http or https",
            ),
            (
                "GITHUB_SERVER_URL",
                "forge.example",
                "expected an http:// or https:// URL",
            ),
            (
                "GITHUB_SERVER_URL",
                "javascript:alert(1)",
                "expected an http:// or https:// URL",
            ),
            ("GITHUB_SERVER_URL", "https://", "not a URL"),
            ("GITHUB_SERVER_URL", "https://forge.example/?x=1", "a query"),
            (
                "GITHUB_SERVER_URL",
                "https://forge.example/#top",
                "a fragment",
            ),
            (
                "GITHUB_SERVER_URL",
                "https://forge.example/a/../admin",
                "its path may hold",
            ),
            (
                "GITHUB_SERVER_URL",
                "https://forge.example/%2e%2e/admin",
                "its path may hold",
            ),
            (
                "GITHUB_SERVER_URL",
                "https://forge.example//x",
                "its path may hold",
            ),
            (
                "GITHUB_SERVER_URL",
                "https://forge.example\\evil",
                "a URL holds no spaces",
            ),
            (
                "GITHUB_SERVER_URL",
                "https://forge example",
                "a URL holds no spaces",
            ),
            (
                "GITHUB_SERVER_URL",
                "https://bot@forge.example",
                "a user name or password",
            ),
            (
                "GITHUB_API_URL",
                "https://forge.example/api/v1?token=x",
                "a query",
            ),
            (
                "FLEETGATE_FORGE_URL",
                "file:///etc/passwd",
                "the scheme must be http or https",
            ),
            ("GITHUB_RUN_ID", "12abc", "expected a positive whole number"),
            ("GITHUB_RUN_NUMBER", "0", "expected a positive whole number"),
            (
                "GITHUB_RUN_NUMBER",
                "7/../../admin",
                "expected a positive whole number",
            ),
            ("GITHUB_ACTOR", "alice bob", "expected a login"),
            (
                "GITHUB_EVENT_NAME",
                "pull_request; rm -rf /",
                "expected an event name",
            ),
        ];
        for (var, value, why) in bad {
            let got = read(&forgejo(&[(var, value)])).expect_err(value);
            assert!(
                got.starts_with(&format!("{var} is ")),
                "{var}={value}: {got}"
            );
            assert!(got.contains(why), "{var}={value}: {got}");
        }
    }

    #[test]
    fn a_password_in_a_url_is_never_shown() {
        let got = read(&forgejo(&[(
            "GITHUB_SERVER_URL",
            "https://bot:hunter2-secret@forge.example/",
        )]))
        .unwrap_err();
        assert!(!got.contains("hunter2"), "{got}");
        assert!(
            got.starts_with("GITHUB_SERVER_URL is \"https://…@forge.example/\""),
            "{got}"
        );
    }

    /// The payload's verdict: ok, or the error's words.
    fn event(payload: Value) -> std::result::Result<(), String> {
        check_event(&payload)
    }

    #[test]
    fn event_payloads_are_checked_field_by_field() {
        let sha = "3f9c2a1b7d0e4c6e8a0b1c2d3e4f5a6b7c8d9e0f";
        let ok = [
            json!({"action": "synchronize", "number": 12,
                   "pull_request": {"number": 12, "head": {"sha": sha}}}),
            json!({"action": "created",
                   "issue": {"number": 12, "pull_request": {"url": "x"}},
                   "comment": {"id": 5, "body": "/fleetgate approve 3f9c2a1\n\nthanks ✓",
                               "user": {"login": "alice"}, "created_at": "2025-01-31T12:00:00Z"},
                   "sender": {"login": "alice"}}),
            // Forgejo: a plain issue has a null pull_request, and is_pull.
            json!({"issue": {"number": 3, "pull_request": null}, "is_pull": false,
                   "comment": {"body": "hi", "user": {"login": "bob.smith"},
                               "created_at": "2025-01-31T13:00:00+01:00"}}),
            json!({"inputs": {"rev": sha, "plan": "3F9C2A1B"}, "sender": {"login": "carol"}}),
            json!({"inputs": {"rev": "release/v2~1", "plan": ""}}),
            json!({"ref": "refs/heads/main", "before": sha, "after": sha}),
        ];
        for payload in ok {
            assert_eq!(event(payload.clone()), Ok(()), "{payload}");
        }
        let bad = [
            (json!([]), "expected a JSON object"),
            (
                json!({"number": "12/../x"}),
                "number is \"12/../x\": expected a positive whole number",
            ),
            (
                json!({"pull_request": 12}),
                "pull_request is 12: expected an object",
            ),
            (
                json!({"pull_request": {"number": -1}}),
                "pull_request.number is -1: expected a positive whole number",
            ),
            (
                json!({"pull_request": {"number": 1.5}}),
                "pull_request.number is 1.5: expected a positive whole number",
            ),
            (
                json!({"pull_request": {"number": 0}}),
                "pull_request.number is 0: expected a positive whole number",
            ),
            (
                json!({"issue": {"number": "3"}}),
                "issue.number is \"3\": expected a positive whole number",
            ),
            (
                json!({"issue": {"number": 3, "pull_request": "yes"}}),
                "issue.pull_request is \"yes\": expected an object or null",
            ),
            (
                json!({"is_pull": "true"}),
                "is_pull is \"true\": expected true or false",
            ),
            (
                json!({"comment": {"body": 7}}),
                "comment.body is 7: expected a string",
            ),
            (
                json!({"comment": {"user": {"login": "bad user"}}}),
                "comment.user.login is \"bad user\": expected a login",
            ),
            (
                json!({"comment": {"created_at": "yesterday"}}),
                "comment.created_at is \"yesterday\": expected an RFC 3339 time",
            ),
            (
                json!({"sender": {"login": "x/../y"}}),
                "sender.login is \"x/../y\": expected a login",
            ),
            (
                json!({"inputs": {"rev": "--upload-pack=evil"}}),
                "inputs.rev is \"--upload-pack=evil\": expected a commit, branch or tag",
            ),
            (
                json!({"inputs": {"rev": "main branch"}}),
                "inputs.rev is \"main branch\": expected a commit, branch or tag",
            ),
            (
                json!({"inputs": {"rev": "HEAD:secrets.yaml"}}),
                "inputs.rev is \"HEAD:secrets.yaml\": expected a commit, branch or tag",
            ),
            (
                json!({"inputs": {"plan": "xyz"}}),
                "inputs.plan is \"xyz\": expected a plan hash",
            ),
        ];
        for (payload, expect) in bad {
            let got = event(payload.clone()).expect_err(&payload.to_string());
            assert!(got.starts_with(expect), "{payload}: {got}");
        }
    }

    #[test]
    fn the_event_file_is_named_with_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let missing = dir.path().join("gone.json").display().to_string();
        let cases = [
            (
                missing.clone(),
                format!("GITHUB_EVENT_PATH={missing}: cannot read it"),
            ),
            (
                file("half.json", "{\"number\": 1"),
                format!(
                    "GITHUB_EVENT_PATH={}/half.json: not a JSON event payload",
                    dir.path().display()
                ),
            ),
            (
                file("bad.json", r#"{"pull_request": {"number": "1; DROP"}}"#),
                format!(
                    "GITHUB_EVENT_PATH={}/bad.json: pull_request.number is \"1; DROP\": expected a positive whole number",
                    dir.path().display()
                ),
            ),
        ];
        for (path, expect) in cases {
            let got = read(&forgejo(&[("GITHUB_EVENT_PATH", &path)])).unwrap_err();
            assert!(got.starts_with(&expect), "{got}");
        }
        let good = file(
            "pr.json",
            r#"{"number": 12, "pull_request": {"number": 12}}"#,
        );
        let vars = forgejo(&[("GITHUB_EVENT_PATH", &good)]);
        let var = |k: &str| vars.get(k).cloned();
        let env = Env::from_vars(None, "plan --comment", &var).unwrap();
        assert_eq!(env.pull_request_number(), Some(12));
    }
}
