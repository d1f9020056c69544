//! One forge issue per problem, kept up to date by the scheduled checks
//! (`scan --deployed --issues`, `status --drift --issues`): opened when a
//! problem appears, edited while it stays, closed when it is gone.
//!
//! An issue is fleetgate's when its body carries `<!-- fleetgate:<key> -->`;
//! the key names the problem (`scan:<image repository>`, `drift`). What to
//! do ([`sync`]) is pure and table-tested; [`apply`] does it on a forge.

use std::collections::BTreeMap;

use super::{Forge, Issue, clip};
use crate::error::Result;

/// What the latest check says about one problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub title: String,
    /// Without the marker: [`sync`] puts it first.
    pub body: String,
}

/// What to do on the forge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create {
        key: String,
        title: String,
        body: String,
    },
    Edit {
        key: String,
        number: u64,
        title: String,
        body: String,
    },
    Close {
        key: String,
        number: u64,
        comment: String,
    },
    /// Already says what it should.
    Leave { key: String, number: u64 },
}

/// The hidden marker of `key`, first line of the issue's body.
pub fn marker(key: &str) -> String {
    format!("<!-- fleetgate:{key} -->")
}

/// The key of an issue fleetgate opened, from its body's marker.
pub fn key_of(body: &str) -> Option<&str> {
    let start = body.find("<!-- fleetgate:")? + "<!-- fleetgate:".len();
    let len = body[start..].find(" -->")?;
    let key = &body[start..start + len];
    (!key.is_empty() && !key.contains(char::is_whitespace)).then_some(key)
}

/// Whether `key` is one of `scope`'s: `scope` itself or `scope:…`.
fn in_scope(key: &str, scope: &str) -> bool {
    key == scope
        || key
            .strip_prefix(scope)
            .is_some_and(|rest| rest.starts_with(':'))
}

/// The actions that make the open issues of `scope` say `desired`: an
/// issue per desired key (created, edited when its title or body differ,
/// else left), every other open issue of the scope closed with `gone` as
/// its comment — and a second issue of one key (opened by hand, or by a
/// run that died half-way) closed as a duplicate of the oldest. Issues of
/// other scopes and without a marker are never touched. Bodies are cut to
/// `limit` characters.
pub fn sync(
    scope: &str,
    desired: &BTreeMap<String, Open>,
    open: &[Issue],
    gone: &str,
    limit: usize,
) -> Vec<Action> {
    let mut ours: BTreeMap<&str, Vec<&Issue>> = BTreeMap::new();
    for issue in open {
        if let Some(key) = key_of(&issue.body).filter(|k| in_scope(k, scope)) {
            ours.entry(key).or_default().push(issue);
        }
    }
    for list in ours.values_mut() {
        list.sort_by_key(|i| i.number);
    }
    let mut actions = Vec::new();
    for (key, want) in desired {
        let body = clip(&format!("{}\n{}", marker(key), want.body), limit);
        let existing = ours.remove(key.as_str()).unwrap_or_default();
        match existing.split_first() {
            None => actions.push(Action::Create {
                key: key.clone(),
                title: want.title.clone(),
                body,
            }),
            Some((first, rest)) => {
                if first.title == want.title && first.body == body {
                    actions.push(Action::Leave {
                        key: key.clone(),
                        number: first.number,
                    });
                } else {
                    actions.push(Action::Edit {
                        key: key.clone(),
                        number: first.number,
                        title: want.title.clone(),
                        body,
                    });
                }
                actions.extend(rest.iter().map(|dup| Action::Close {
                    key: key.clone(),
                    number: dup.number,
                    comment: format!("A duplicate of #{}.", first.number),
                }));
            }
        }
    }
    for (key, list) in ours {
        actions.extend(list.into_iter().map(|i| Action::Close {
            key: key.to_string(),
            number: i.number,
            comment: gone.to_string(),
        }));
    }
    actions
}

/// Does `actions` on the forge, in order; stops at the first failure.
/// Returns one line per action, for the log.
pub fn apply(forge: &dyn Forge, actions: &[Action]) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for a in actions {
        done.push(match a {
            Action::Create { key, title, body } => {
                let issue = forge.create_issue(title, body)?;
                format!("{key}: opened #{}", issue.number)
            }
            Action::Edit {
                key,
                number,
                title,
                body,
            } => {
                forge.edit_issue(*number, title, body)?;
                format!("{key}: updated #{number}")
            }
            Action::Close {
                key,
                number,
                comment,
            } => {
                forge.close_issue(*number, comment)?;
                format!("{key}: closed #{number}")
            }
            Action::Leave { key, number } => format!("{key}: #{number} is up to date"),
        });
    }
    Ok(done)
}

/// [`sync`] against the forge's open issues, then [`apply`].
pub fn keep(
    forge: &dyn Forge,
    scope: &str,
    desired: &BTreeMap<String, Open>,
    gone: &str,
) -> Result<Vec<String>> {
    let open = forge.open_issues()?;
    let actions = sync(scope, desired, &open, gone, forge.comment_limit());
    apply(forge, &actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(number: u64, title: &str, body: &str) -> Issue {
        Issue {
            number,
            title: title.into(),
            body: body.into(),
        }
    }

    fn want(pairs: &[(&str, &str, &str)]) -> BTreeMap<String, Open> {
        pairs
            .iter()
            .map(|(k, t, b)| {
                (
                    k.to_string(),
                    Open {
                        title: t.to_string(),
                        body: b.to_string(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn markers_and_keys() {
        assert_eq!(marker("scan:nginx"), "<!-- fleetgate:scan:nginx -->");
        for (body, key) in [
            ("<!-- fleetgate:drift -->\nx", Some("drift")),
            ("text\n<!-- fleetgate:scan:a/b -->", Some("scan:a/b")),
            ("<!-- fleetgate: -->", None),
            ("<!-- fleetgate:a b -->", None),
            ("<!-- fleetgate:drift", None),
            ("no marker", None),
        ] {
            assert_eq!(key_of(body), key, "{body}");
        }
        assert!(in_scope("scan:x", "scan") && in_scope("drift", "drift"));
        assert!(!in_scope("scanner", "scan") && !in_scope("drift", "scan"));
    }

    #[test]
    fn the_issues_of_a_scope_follow_what_the_check_found() {
        let m = |k: &str, b: &str| format!("{}\n{b}", marker(k));
        let gone = "gone";
        // (case, desired, open issues, expected actions)
        type Case = (
            &'static str,
            BTreeMap<String, Open>,
            Vec<Issue>,
            Vec<Action>,
        );
        let cases: Vec<Case> = vec![
            ("nothing, nothing open", want(&[]), vec![], vec![]),
            (
                "a new problem opens an issue",
                want(&[("scan:a", "A blocked", "why")]),
                vec![],
                vec![Action::Create {
                    key: "scan:a".into(),
                    title: "A blocked".into(),
                    body: m("scan:a", "why"),
                }],
            ),
            (
                "unchanged: left alone (no duplicate)",
                want(&[("scan:a", "A blocked", "why")]),
                vec![issue(3, "A blocked", &m("scan:a", "why"))],
                vec![Action::Leave {
                    key: "scan:a".into(),
                    number: 3,
                }],
            ),
            (
                "still there, says more: edited",
                want(&[("scan:a", "A blocked", "why and more")]),
                vec![issue(3, "A blocked", &m("scan:a", "why"))],
                vec![Action::Edit {
                    key: "scan:a".into(),
                    number: 3,
                    title: "A blocked".into(),
                    body: m("scan:a", "why and more"),
                }],
            ),
            (
                "gone: closed; other scopes and people's issues untouched",
                want(&[]),
                vec![
                    issue(3, "A blocked", &m("scan:a", "why")),
                    issue(4, "drift", &m("drift", "d")),
                    issue(5, "mine", "a person's issue about scan:a"),
                ],
                vec![Action::Close {
                    key: "scan:a".into(),
                    number: 3,
                    comment: gone.into(),
                }],
            ),
            (
                "a duplicate is closed pointing at the oldest",
                want(&[("scan:a", "A blocked", "why")]),
                vec![
                    issue(9, "A blocked", &m("scan:a", "why")),
                    issue(3, "A blocked", &m("scan:a", "why")),
                ],
                vec![
                    Action::Leave {
                        key: "scan:a".into(),
                        number: 3,
                    },
                    Action::Close {
                        key: "scan:a".into(),
                        number: 9,
                        comment: "A duplicate of #3.".into(),
                    },
                ],
            ),
        ];
        for (case, desired, open, expected) in cases {
            assert_eq!(
                sync("scan", &desired, &open, gone, 1000),
                expected,
                "{case}"
            );
        }
        // The drift scope is one key.
        let drift = sync(
            "drift",
            &want(&[]),
            &[issue(4, "drift", &m("drift", "d"))],
            gone,
            1000,
        );
        assert_eq!(drift.len(), 1);
        // Bodies are cut to the forge's limit, marker first.
        let long = sync(
            "drift",
            &want(&[("drift", "t", &"x".repeat(50))]),
            &[],
            gone,
            40,
        );
        let Action::Create { body, .. } = &long[0] else {
            panic!("{long:?}")
        };
        assert_eq!(body.chars().count(), 40);
        assert!(body.starts_with("<!-- fleetgate:drift -->"));
    }

    #[test]
    fn apply_stops_at_the_first_failure_like_the_forge() {
        use crate::fakes::FakeForge;
        let forge = FakeForge::default();
        let desired = want(&[("scan:a", "A", "why"), ("scan:b", "B", "why")]);
        let done = keep(&forge, "scan", &desired, "gone").unwrap();
        assert_eq!(done, ["scan:a: opened #1", "scan:b: opened #2"]);
        // A second run with the same findings changes nothing.
        let again = keep(&forge, "scan", &desired, "gone").unwrap();
        assert_eq!(
            again,
            ["scan:a: #1 is up to date", "scan:b: #2 is up to date"]
        );
        // b is gone: closed with a comment.
        let done = keep(&forge, "scan", &want(&[("scan:a", "A", "why")]), "gone").unwrap();
        assert_eq!(done, ["scan:a: #1 is up to date", "scan:b: closed #2"]);
        assert_eq!(forge.open_issues().unwrap().len(), 1);
        // The forge answers 502: an error, as the real one gives after its retries.
        forge.fail_issues.set(true);
        let e = keep(&forge, "scan", &want(&[]), "gone").unwrap_err();
        assert_eq!(e.exit_code(), crate::error::ExitCode::Infra);
    }
}
