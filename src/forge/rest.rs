//! What Forgejo's and GitHub's REST APIs share: the same paths and bodies
//! for comments, commit statuses and single pull requests, and the same
//! JSON field names in their answers. Each forge wraps a [`Rest`] around its
//! own [`Transport`] and adds what differs (paging, finding the merged pull
//! request of a commit, environment reviews).

use serde_json::{Value, json};

use super::{Comment, Method, Pull, Request, Status, Token, Transport, call, clip};
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
        Ok(self
            .call(Method::Get, format!("{}/pulls/{number}", self.repo), None)?
            .map(|v| pull(&v)))
    }
}

pub fn comment(v: &Value) -> Comment {
    Comment {
        id: v["id"].as_u64().unwrap_or_default(),
        body: v["body"].as_str().unwrap_or_default().to_string(),
    }
}

pub fn pull(v: &Value) -> Pull {
    Pull {
        number: v["number"].as_u64().unwrap_or_default(),
        // GitHub's list endpoints leave `merged` out; `merged_at` says it.
        merged: v["merged"].as_bool().unwrap_or(false) || !v["merged_at"].is_null(),
        merge_commit_sha: v["merge_commit_sha"].as_str().map(str::to_string),
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
