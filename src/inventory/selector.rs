//! Hetzner Cloud label selectors and label rules, pure: the text of
//! `hosts.hcloud.label_selector` parsed into a [`Selector`] that decides
//! whether a set of labels matches.
//!
//! The syntax is Hetzner's ("Label Selector", docs.hetzner.cloud), which is
//! Kubernetes' equality- and set-based selector:
//!
//! | expression | matches labels where |
//! |---|---|
//! | `k=v`, `k==v` | `k` is `v` |
//! | `k!=v` | `k` is not `v` (absent counts as not `v`) |
//! | `k` | `k` is present |
//! | `!k` | `k` is absent |
//! | `k in (a,b)` | `k` is `a` or `b` |
//! | `k notin (a,b)` | `k` is neither `a` nor `b` (absent counts) |
//!
//! Requirements are joined by `,`, meaning "and". Spaces around keys,
//! operators and values are ignored.
//!
//! Label rules (docs.hetzner.cloud, "Labels"): a key is an optional prefix,
//! a DNS subdomain followed by `/`, and a name of at most 63 characters,
//! ASCII letters and digits at both ends and `-`, `_`, `.` between; a value
//! is empty or follows the same rule as a name. The selector refuses keys
//! and values no label can have: they would select nothing, silently.
//!
//! This file uses nothing outside `std`: the Hetzner Cloud stand-in of the
//! integration tests includes it (`#[path]`), so the inventory and the
//! stand-in share one definition of the semantics.

use std::collections::BTreeMap;
use std::fmt;

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub test: Test,
}

/// What a requirement asks of the value of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    Equals(String),
    NotEquals(String),
    Present,
    Absent,
    In(Vec<String>),
    NotIn(Vec<String>),
}

/// A malformed selector: the requirement at fault, as written, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    pub part: String,
    pub problem: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.part.is_empty() {
            f.write_str(&self.problem)
        } else {
            write!(f, "`{}`: {}", self.part, self.problem)
        }
    }
}

impl std::error::Error for SelectorError {}

pub const KEY_RULE: &str = "a label key is a name of at most 63 characters (ASCII letters and digits at both ends, `-`, `_`, `.` between), optionally after a DNS name and `/` (`example.com/role`)";
pub const VALUE_RULE: &str = "a label value is empty or at most 63 characters: ASCII letters and digits at both ends, `-`, `_`, `.` between";

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        if text.trim().is_empty() {
            return Err(SelectorError {
                part: String::new(),
                problem: "the selector is empty".into(),
            });
        }
        let requirements = split_requirements(text)?
            .into_iter()
            .map(|part| requirement(part, text))
            .collect::<Result<_, _>>()?;
        Ok(Selector { requirements })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key).map(String::as_str);
        match &self.test {
            Test::Equals(v) => value == Some(v.as_str()),
            Test::NotEquals(v) => value != Some(v.as_str()),
            Test::Present => value.is_some(),
            Test::Absent => value.is_none(),
            Test::In(set) => value.is_some_and(|v| set.iter().any(|s| s == v)),
            Test::NotIn(set) => !value.is_some_and(|v| set.iter().any(|s| s == v)),
        }
    }
}

/// The canonical text: `k=v`, `k!=v`, `k`, `!k`, `k in (a,b)`,
/// `k notin (a,b)`, joined by `,`. It parses back to the same selector.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let k = &r.key;
            match &r.test {
                Test::Equals(v) => write!(f, "{k}={v}")?,
                Test::NotEquals(v) => write!(f, "{k}!={v}")?,
                Test::Present => write!(f, "{k}")?,
                Test::Absent => write!(f, "!{k}")?,
                Test::In(set) => write!(f, "{k} in ({})", set.join(","))?,
                Test::NotIn(set) => write!(f, "{k} notin ({})", set.join(","))?,
            }
        }
        Ok(())
    }
}

/// The requirements of `text`: split at the commas outside parentheses.
fn split_requirements(text: &str) -> Result<Vec<&str>, SelectorError> {
    let unbalanced = |part: &str, problem: &str| SelectorError {
        part: part.trim().to_string(),
        problem: problem.into(),
    };
    let (mut parts, mut start, mut depth) = (Vec::new(), 0, 0u32);
    for (i, c) in text.char_indices() {
        match c {
            '(' if depth > 0 => {
                return Err(unbalanced(&text[start..], "a `(` inside a list of values"));
            }
            '(' => depth += 1,
            ')' if depth == 0 => {
                return Err(unbalanced(&text[start..=i], "a `)` that closes nothing"));
            }
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err(unbalanced(
            &text[start..],
            "no `)` closes the list of values",
        ));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn requirement(part: &str, whole: &str) -> Result<Requirement, SelectorError> {
    let written = part.trim();
    let fail = |problem: String| SelectorError {
        part: written.to_string(),
        problem,
    };
    if written.is_empty() {
        return Err(SelectorError {
            part: whole.trim().to_string(),
            problem: "an empty requirement: a `,` at either end or two in a row".into(),
        });
    }
    if let Some(key) = written.strip_prefix('!') {
        let key = key.trim();
        return check_key(key)
            .map(|()| Requirement {
                key: key.to_string(),
                test: Test::Absent,
            })
            .map_err(fail);
    }
    let key_end = written
        .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | '('))
        .unwrap_or(written.len());
    let (key, rest) = (&written[..key_end], written[key_end..].trim_start());
    check_key(key).map_err(fail)?;
    let value = |v: &str| {
        let v = v.trim();
        check_value(v).map(|()| v.to_string()).map_err(fail)
    };
    let test = if rest.is_empty() {
        Test::Present
    } else if let Some(v) = rest.strip_prefix("!=") {
        Test::NotEquals(value(v)?)
    } else if let Some(v) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        Test::Equals(value(v)?)
    } else if let Some(list) = keyword(rest, "in") {
        Test::In(values(list, "in").map_err(fail)?)
    } else if let Some(list) = keyword(rest, "notin") {
        Test::NotIn(values(list, "notin").map_err(fail)?)
    } else {
        return Err(fail(format!(
            "after the key `{key}` comes `=`, `==`, `!=`, `in (…)`, `notin (…)` or nothing"
        )));
    };
    Ok(Requirement {
        key: key.to_string(),
        test,
    })
}

/// `rest` without its leading `word`, if `word` stands alone there.
fn keyword<'a>(rest: &'a str, word: &str) -> Option<&'a str> {
    let after = rest.strip_prefix(word)?;
    after
        .starts_with(|c: char| c.is_whitespace() || c == '(')
        .then(|| after.trim_start())
}

/// The values of `(a, b)`.
fn values(list: &str, op: &str) -> Result<Vec<String>, String> {
    let inner = list
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| format!("the values of `{op}` go in parentheses: `{op} (a,b)`"))?;
    if inner.trim().is_empty() {
        return Err(format!("`{op} ()` lists no value"));
    }
    inner
        .split(',')
        .map(|v| {
            let v = v.trim();
            if v.is_empty() {
                return Err(format!("an empty value in the list of `{op}`"));
            }
            check_value(v).map(|()| v.to_string())
        })
        .collect()
}

/// Is `key` a label key Hetzner accepts? `Err` says why not.
pub fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let ok = prefix.is_none_or(is_dns_subdomain) && is_label_name(name);
    if ok {
        Ok(())
    } else if key.is_empty() {
        Err(format!("a label key is missing: {KEY_RULE}"))
    } else {
        Err(format!("`{key}` is not a label key: {KEY_RULE}"))
    }
}

/// Is `value` a label value Hetzner accepts? `Err` says why not.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!("`{value}` is not a label value: {VALUE_RULE}"))
    }
}

/// 1 to 63 characters: ASCII letters and digits at both ends, `-`, `_`,
/// `.` between.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(inner)
}

/// A DNS subdomain (RFC 1123, as Kubernetes checks label prefixes): at most
/// 253 characters, dot-separated labels of lowercase letters, digits and
/// `-`, each starting and ending with a letter or digit.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` parses to the canonical `expect`, or fails with `expect` as
    /// the error's text.
    fn check(text: &str, expect: &str) {
        let got = match Selector::parse(text) {
            Ok(s) => {
                let canonical = s.to_string();
                assert_eq!(
                    Selector::parse(&canonical).as_ref(),
                    Ok(&s),
                    "{canonical} does not parse back"
                );
                canonical
            }
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expect, "{text:?}");
    }

    #[test]
    fn parses_every_form() {
        for (text, expect) in [
            ("client=alpha", "client=alpha"),
            ("client==alpha", "client=alpha"),
            ("client!=alpha", "client!=alpha"),
            ("client", "client"),
            ("!client", "!client"),
            ("role in (app,db)", "role in (app,db)"),
            ("role notin (app,db)", "role notin (app,db)"),
            (
                " client = alpha , role in ( app , db ) ,! frozen ",
                "client=alpha,role in (app,db),!frozen",
            ),
            ("role in(app)", "role in (app)"),
            ("client=", "client="),
            ("client!=", "client!="),
            (
                "example.com/role=app,a.b-c/x_y.z=V-1",
                "example.com/role=app,a.b-c/x_y.z=V-1",
            ),
            ("in=notin", "in=notin"),
            ("in in (in)", "in in (in)"),
            (
                &format!("{}={}", "k".repeat(63), "v".repeat(63)),
                &format!("{}={}", "k".repeat(63), "v".repeat(63)),
            ),
        ] {
            check(text, expect);
        }
    }

    #[test]
    fn names_the_offending_part() {
        for (text, expect) in [
            ("", "error: the selector is empty"),
            (" ", "error: the selector is empty"),
            (
                "client=alpha,",
                "error: `client=alpha,`: an empty requirement: a `,` at either end or two in a row",
            ),
            (
                "a,,b",
                "error: `a,,b`: an empty requirement: a `,` at either end or two in a row",
            ),
            (
                "client=alpha,role in (app,db",
                "error: `role in (app,db`: no `)` closes the list of values",
            ),
            (
                "client=alpha,role)",
                "error: `role)`: a `)` that closes nothing",
            ),
            (
                "role in ((app))",
                "error: `role in ((app))`: a `(` inside a list of values",
            ),
            (
                "role in app,db",
                "error: `role in app`: the values of `in` go in parentheses: `in (a,b)`",
            ),
            ("role in ()", "error: `role in ()`: `in ()` lists no value"),
            (
                "role notin (a,,b)",
                "error: `role notin (a,,b)`: an empty value in the list of `notin`",
            ),
            (
                "role ~ a",
                "error: `role ~ a`: after the key `role` comes `=`, `==`, `!=`, `in (…)`, `notin (…)` or nothing",
            ),
            (
                "role inside (a)",
                "error: `role inside (a)`: after the key `role` comes `=`, `==`, `!=`, `in (…)`, `notin (…)` or nothing",
            ),
            (
                "role =~ a",
                "error: `role =~ a`: `~ a` is not a label value: a label value is empty or at most 63 characters: ASCII letters and digits at both ends, `-`, `_`, `.` between",
            ),
            (
                "client=al pha",
                "error: `client=al pha`: `al pha` is not a label value: a label value is empty or at most 63 characters: ASCII letters and digits at both ends, `-`, `_`, `.` between",
            ),
            (
                "=alpha",
                "error: `=alpha`: a label key is missing: a label key is a name of at most 63 characters (ASCII letters and digits at both ends, `-`, `_`, `.` between), optionally after a DNS name and `/` (`example.com/role`)",
            ),
            (
                "!",
                "error: `!`: a label key is missing: a label key is a name of at most 63 characters (ASCII letters and digits at both ends, `-`, `_`, `.` between), optionally after a DNS name and `/` (`example.com/role`)",
            ),
        ] {
            check(text, expect);
        }
        // Key and value rules, by the first words of the error.
        let key = |k: &str| format!("error: `{k}`: `{k}` is not a label key");
        for bad in [
            "-role",
            "role-",
            "_x",
            "r/s/t",
            "Example.com/role",
            "ex_ample.com/role",
            "-a.com/role",
            "a..com/role",
            "/role",
            "a.com/",
            "rôle",
            "a:b",
            "role>1",
        ] {
            let got = Selector::parse(bad).unwrap_err().to_string();
            assert!(got.starts_with(&key(bad)[7..]), "{bad}: {got}");
        }
        let long = "k".repeat(64);
        assert!(Selector::parse(&long).is_err());
        let value = |v: &str| format!("`{v}` is not a label value");
        for bad in [
            "-a",
            "a-",
            ".",
            "2024-01-01T00:00:00Z",
            "a/b",
            &"v".repeat(64),
        ] {
            let got = Selector::parse(&format!("k={bad}"))
                .unwrap_err()
                .to_string();
            assert!(got.contains(&value(bad)), "{bad}: {got}");
        }
    }

    #[test]
    fn matches_like_hetzner() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let alpha_app = labels(&[("client", "alpha"), ("role", "app"), ("empty", "")]);
        let beta_db = labels(&[("client", "beta"), ("role", "db"), ("frozen", "yes")]);
        let bare = labels(&[]);
        // selector → does it match alpha_app, beta_db, bare?
        for (selector, expect) in [
            ("client=alpha", [true, false, false]),
            ("client==beta", [false, true, false]),
            ("client!=alpha", [false, true, true]),
            ("client", [true, true, false]),
            ("!client", [false, false, true]),
            ("frozen", [false, true, false]),
            ("!frozen", [true, false, true]),
            ("role in (app,db)", [true, true, false]),
            ("role in (app)", [true, false, false]),
            ("role notin (app)", [false, true, true]),
            ("role notin (app,db)", [false, false, true]),
            ("client=alpha,role=app", [true, false, false]),
            ("client=alpha,role=db", [false, false, false]),
            ("client,!frozen", [true, false, false]),
            ("empty=", [true, false, false]),
            ("empty", [true, false, false]),
            ("empty!=", [false, true, true]),
            ("client in (alpha,beta),role!=db", [true, false, false]),
        ] {
            let s = Selector::parse(selector).unwrap();
            let got = [&alpha_app, &beta_db, &bare].map(|l| s.matches(l));
            assert_eq!(got, expect, "{selector}");
        }
    }

    #[test]
    fn label_rules() {
        for ok in ["a", "A9", "a-b_c.d", &"x".repeat(63)] {
            assert_eq!(check_value(ok), Ok(()), "{ok}");
            assert_eq!(check_key(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_value(""), Ok(()));
        assert!(check_key("").is_err());
        assert_eq!(check_key("fleetgate/client"), Ok(()));
        assert_eq!(check_key(&format!("{}/k", "a.".repeat(126) + "a")), Ok(()));
        assert!(check_key(&format!("{}/k", "a.".repeat(127) + "a")).is_err());
    }
}
