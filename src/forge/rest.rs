//! What Forgejo's and GitHub's REST APIs share: the same paths and bodies
//! for comments, commit statuses and single pull requests, and the same
//! JSON field names in their answers. Each forge wraps a [`Rest`] around its
//! own [`Transport`] and adds what differs (paging, finding the merged pull
//! request of a commit, environment reviews).

use serde_json::{Value, json};

use super::{Comment, Issue, Method, Pull, Request, Status, Token, Transport, call, clip};
use crate::error::{Error, Message, Result};

pub struct Rest {
    /// "Forgejo" or "GitHub", for messages.
    pub name: &'static str,
    transport: Box<dyn Transport>,
    /// `/repos/OWNER/NAME`.
    pub repo: String,
    token: Token,
    token_var: &'static str,
}

impl Rest {
    pub fn new(name: &'static str, transport: Box<dyn Transport>, env: &super::Env) -> Rest {
        Rest {
            name,
            transport,
            repo: format!("/repos/{}/{}", env.owner, env.repo),
            token: env.token.clone(),
            token_var: env.token_var,
        }
    }

    /// The JSON answer, or `None` for a 404.
    pub fn call(
        &self,
        method: Method,
        path: String,
        body: Option<&Value>,
    ) -> Result<Option<Value>> {
        let req = Request { method, path, body };
        match call(
            self.name,
            &self.token,
            self.token_var,
            &*self.transport,
            &req,
        )? {
            None => Ok(None),
            Some(resp) if resp.body.is_empty() => Ok(Some(Value::Null)),
            Some(resp) => resp.json().map(Some),
        }
    }

    /// The JSON answer; a 404 is an error (the repository is not visible).
    pub fn must(&self, method: Method, path: String, body: Option<&Value>) -> Result<Value> {
        let what = path.clone();
        self.call(method, path, body)?.ok_or_else(|| {
            Error::Forge(
                Message::from(format!("{} answered 404 to {what}", self.name)).hint(format!(
                    "check GITHUB_REPOSITORY and that {} can see the repository",
                    self.token_var
                )),
            )
        })
    }

    pub fn list(&self, path: String) -> Result<Vec<Value>> {
        Ok(match self.must(Method::Get, path, None)? {
            Value::Array(items) => items,
            _ => Vec::new(),
        })
    }

    pub fn create_comment(&self, issue: u64, body: &str) -> Result<Comment> {
        let v = self.must(
            Method::Post,
            format!("{}/issues/{issue}/comments", self.repo),
            Some(&json!({ "body": body })),
        )?;
        Ok(comment(&v))
    }

    pub fn edit_comment(&self, id: u64, body: &str) -> Result<()> {
        self.must(
            Method::Patch,
            format!("{}/issues/comments/{id}", self.repo),
            Some(&json!({ "body": body })),
        )?;
        Ok(())
    }

    pub fn create_issue(&self, title: &str, body: &str) -> Result<Issue> {
        let v = self.must(
            Method::Post,
            format!("{}/issues", self.repo),
            Some(&json!({ "title": title, "body": body })),
        )?;
        Ok(issue(&v))
    }

    pub fn edit_issue(&self, number: u64, title: &str, body: &str) -> Result<()> {
        self.must(
            Method::Patch,
            format!("{}/issues/{number}", self.repo),
            Some(&json!({ "title": title, "body": body })),
        )?;
        Ok(())
    }

    /// The comment first: a closed issue says why it was closed.
    pub fn close_issue(&self, number: u64, comment: &str) -> Result<()> {
        self.create_comment(number, comment)?;
        self.must(
            Method::Patch,
            format!("{}/issues/{number}", self.repo),
            Some(&json!({ "state": "closed" })),
        )?;
        Ok(())
    }

    /// The open issues of every page of `path` (which ends in `page=`),
    /// up to `pages` pages; pull requests left out (both APIs may list
    /// them with the issues). Paged until an empty page: a forge may cap
    /// the page size below what was asked (Forgejo's MAX_RESPONSE_ITEMS).
    pub fn open_issues(&self, path: &str, pages: u32) -> Result<Vec<Issue>> {
        let mut all = Vec::new();
        for page in 1..=pages {
            let batch = self.list(format!("{path}{page}"))?;
            if batch.is_empty() {
                break;
            }
            all.extend(
                batch
                    .iter()
                    .filter(|v| v.get("pull_request").is_none_or(Value::is_null))
                    .map(issue),
            );
        }
        Ok(all)
    }

    pub fn set_status(&self, sha: &str, status: &Status) -> Result<()> {
        let mut body = json!({
            "context": status.context,
            "state": status.state.as_str(),
            // GitHub refuses more than 140 characters.
            "description": clip(&status.description, 140),
        });
        if let Some(url) = &status.target_url {
            body["target_url"] = json!(url);
        }
        self.must(
            Method::Post,
            format!("{}/statuses/{sha}", self.repo),
            Some(&body),
        )?;
        Ok(())
    }

    pub fn pull(&self, number: u64) -> Result<Option<Pull>> {
        self.call(Method::Get, format!("{}/pulls/{number}", self.repo), None)?
            .map(|v| self.pull_of(&v))
            .transpose()
    }

    /// Pull requests of a list answer.
    pub fn pulls(&self, path: String) -> Result<Vec<Pull>> {
        self.list(path)?.iter().map(|v| self.pull_of(v)).collect()
    }

    /// A pull request of an answer. Its merge commit is resolved in the
    /// clone (an approval by comment is for it): anything but a commit id
    /// (`main~3`, `HEAD`) is refused, never handed to Git.
    fn pull_of(&self, v: &Value) -> Result<Pull> {
        let p = pull(v);
        match &p.merge_commit_sha {
            Some(sha) if !commit_id(sha) => Err(Error::Forge(
                format!(
                    "{} answered pull request #{} with merge_commit_sha {}, which is not a commit id",
                    self.name,
                    p.number,
                    serde_json::to_string(&clip(sha, 80)).unwrap_or_default()
                )
                .into(),
            )),
            _ => Ok(p),
        }
    }
}

/// A full commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
fn commit_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.chars().all(|c| c.is_ascii_hexdigit())
}

pub fn comment(v: &Value) -> Comment {
    Comment {
        id: v["id"].as_u64().unwrap_or_default(),
        body: v["body"].as_str().unwrap_or_default().to_string(),
    }
}

fn issue(v: &Value) -> Issue {
    Issue {
        number: v["number"].as_u64().unwrap_or_default(),
        title: v["title"].as_str().unwrap_or_default().to_string(),
        body: v["body"].as_str().unwrap_or_default().to_string(),
    }
}

fn pull(v: &Value) -> Pull {
    Pull {
        number: v["number"].as_u64().unwrap_or_default(),
        // GitHub's list endpoints leave `merged` out; `merged_at` says it.
        merged: v["merged"].as_bool().unwrap_or(false) || !v["merged_at"].is_null(),
        // Forgejo answers "" (and GitHub null) before a merge.
        merge_commit_sha: v["merge_commit_sha"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    }
}

/// The headers of an HTTP answer as `(lower-case name, value)`.
pub fn headers(map: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExitCode;
    use crate::forge::{Kind, Response, Unanswered};

    /// Answers every request with one JSON body.
    struct Answer(String);

    impl Transport for Answer {
        fn send(&self, _: &Request<'_>) -> std::result::Result<Response, Unanswered> {
            Ok(Response {
                status: 200,
                headers: Vec::new(),
                body: self.0.as_bytes().to_vec(),
            })
        }
    }

    fn rest(body: &str) -> Rest {
        let env = super::super::Env {
            kind: Kind::Forgejo,
            api: "http://forge.invalid/api/v1".into(),
            owner: "hosting".into(),
            repo: "fleet".into(),
            token: Token::new("fake-token-not-secret".into()),
            token_var: "FORGEJO_TOKEN",
            event_name: None,
            event: Value::Null,
            run_id: None,
            run_url: None,
            actor: None,
        };
        Rest::new("Forgejo", Box::new(Answer(body.to_string())), &env)
    }

    #[test]
    fn a_merge_commit_is_a_commit_id_or_the_answer_is_refused() {
        let sha = "3f9c2a1b7d0e4c6e8a0b1c2d3e4f5a6b7c8d9e0f";
        let ok: &[(&str, Option<&str>)] = &[
            (
                r#"{"number": 3, "merged": true, "merge_commit_sha": "3f9c2a1b7d0e4c6e8a0b1c2d3e4f5a6b7c8d9e0f"}"#,
                Some(sha),
            ),
            (
                r#"{"number": 3, "merged": false, "merge_commit_sha": null}"#,
                None,
            ),
            (
                r#"{"number": 3, "merged": false, "merge_commit_sha": ""}"#,
                None,
            ),
        ];
        for (body, merge) in ok {
            let pull = rest(body).pull(3).unwrap().unwrap();
            assert_eq!(pull.merge_commit_sha.as_deref(), *merge, "{body}");
        }
        for body in [
            r#"{"number": 3, "merged": true, "merge_commit_sha": "HEAD~3"}"#,
            r#"{"number": 3, "merged": true, "merge_commit_sha": "3f9c2a1"}"#,
        ] {
            let e = rest(body).pull(3).unwrap_err();
            assert_eq!(e.exit_code(), ExitCode::Infra, "{e}");
            assert!(
                e.to_string()
                    .starts_with("Forgejo answered pull request #3 with merge_commit_sha \"")
                    && e.to_string().ends_with("which is not a commit id"),
                "{e}"
            );
            let listed = rest(&format!("[{body}]"))
                .pulls("/repos/hosting/fleet/pulls".into())
                .unwrap_err();
            assert_eq!(listed.exit_code(), ExitCode::Infra);
        }
    }
}
