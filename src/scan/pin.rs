//! Image references and the pinning rule: every image names a tag *and* an
//! `@sha256:` digest. The tag says what it is to a reader; the digest says what
//! runs. Pure: no registry is asked anything here.

use std::fmt;

use serde::Serialize;

/// A pinned image reference: `[registry/]repository:tag@sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct ImageRef {
    pub repository: String,
    pub tag: String,
    /// `sha256:<64 lowercase hex>`
    pub digest: String,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}@{}", self.repository, self.tag, self.digest)
    }
}

impl From<ImageRef> for String {
    fn from(r: ImageRef) -> String {
        r.to_string()
    }
}

/// Why a reference is refused, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinError {
    pub message: String,
    pub hint: String,
}

fn refuse(message: impl Into<String>, hint: impl Into<String>) -> PinError {
    PinError {
        message: message.into(),
        hint: hint.into(),
    }
}

const DIGEST_HINT: &str = "pin the digest the tag points to today, e.g. `docker buildx imagetools inspect IMAGE:TAG` or `skopeo inspect docker://IMAGE:TAG`, and write IMAGE:TAG@sha256:<digest>";

impl ImageRef {
    /// Parses `reference` and enforces the pinning rule.
    pub fn parse_pinned(reference: &str) -> Result<ImageRef, PinError> {
        let reference = reference.trim();
        if reference.is_empty() {
            return Err(refuse("image reference is empty", DIGEST_HINT));
        }
        if reference.chars().any(char::is_whitespace) {
            return Err(refuse(
                format!("image `{reference}` contains whitespace"),
                "write the reference on its own, without spaces",
            ));
        }
        let (name_tag, digest) = match reference.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (reference, None),
        };
        // The tag is after the last ':' that follows the last '/', so a
        // registry port (`host:5000/app`) is not mistaken for a tag.
        let slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match name_tag[slash..].rfind(':') {
            Some(i) => (&name_tag[..slash + i], Some(&name_tag[slash + i + 1..])),
            None => (name_tag, None),
        };
        check_repository(repository, reference)?;
        let Some(digest) = digest else {
            return Err(match tag {
                Some("latest") => refuse(
                    format!("image `{reference}` uses the moving tag `:latest` and no digest"),
                    DIGEST_HINT,
                ),
                Some(_) => refuse(
                    format!("image `{reference}` is pinned by tag only; a tag can be moved"),
                    DIGEST_HINT,
                ),
                None => refuse(
                    format!("image `{reference}` has neither tag nor digest"),
                    DIGEST_HINT,
                ),
            });
        };
        let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
            refuse(
                format!("image `{reference}` has digest `{digest}`, which is not sha256"),
                "write the digest as @sha256:<64 hex>",
            )
        })?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(refuse(
                format!(
                    "image `{reference}` has a malformed digest: expected 64 lowercase hex digits after `sha256:`, found {}",
                    hex.len()
                ),
                "copy the full digest; it is exactly 64 characters",
            ));
        }
        let tag = match tag {
            None | Some("") => {
                return Err(refuse(
                    format!("image `{reference}` is pinned by digest but names no tag"),
                    "write IMAGE:TAG@sha256:<digest>, so readers and the plan see which version it is",
                ));
            }
            Some("latest") => {
                return Err(refuse(
                    format!("image `{reference}` uses the tag `:latest`"),
                    "name the version the digest belongs to, e.g. `:1.4.0`",
                ));
            }
            Some(t) => t,
        };
        let tag_ok = tag.len() <= 128
            && tag
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !tag_ok {
            return Err(refuse(
                format!("image `{reference}` has a malformed tag `{tag}`"),
                "tags are letters, digits, `_`, `.` and `-`, at most 128 characters",
            ));
        }
        Ok(ImageRef {
            repository: repository.to_string(),
            tag: tag.to_string(),
            digest: digest.to_string(),
        })
    }
}

fn check_repository(repository: &str, reference: &str) -> Result<(), PinError> {
    let bad = || {
        refuse(
            format!("image `{reference}` has a malformed repository name `{repository}`"),
            "repositories are lowercase path components, optionally after a registry host[:port]",
        )
    };
    if repository.is_empty() {
        return Err(bad());
    }
    let parts: Vec<&str> = repository.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let is_registry = i == 0
            && parts.len() > 1
            && (part.contains('.') || part.contains(':') || *part == "localhost");
        let ok = if is_registry {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        } else {
            !part.is_empty()
                && part
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && part.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
        };
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:200689790a0a0ea48ca45992e0450bc26ccab5307375b41c84dfc4f2475937ab";

    fn check(input: &str, expect: Result<(&str, &str), &str>) {
        let got = ImageRef::parse_pinned(input);
        match (got, expect) {
            (Ok(r), Ok((repo, tag))) => {
                assert_eq!(
                    (r.repository.as_str(), r.tag.as_str(), r.digest.as_str()),
                    (repo, tag, D)
                );
                assert_eq!(r.to_string(), input);
            }
            (Err(e), Err(fragment)) => assert!(
                e.message.contains(fragment),
                "{input}: `{}` does not contain `{fragment}`",
                e.message
            ),
            (got, expect) => panic!("{input}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn pinned_references() {
        check(
            &format!("traefik/whoami:v1.11.0@{D}"),
            Ok(("traefik/whoami", "v1.11.0")),
        );
        check(
            &format!("nextcloud:31.0.2-apache@{D}"),
            Ok(("nextcloud", "31.0.2-apache")),
        );
        check(
            &format!("registry.example.org:5000/team/app:1.0@{D}"),
            Ok(("registry.example.org:5000/team/app", "1.0")),
        );
        check(&format!("localhost/app:1@{D}"), Ok(("localhost/app", "1")));
    }

    #[test]
    fn refused_references() {
        check("nextcloud:31", Err("pinned by tag only"));
        check("nextcloud:latest", Err("moving tag `:latest`"));
        check("nextcloud", Err("neither tag nor digest"));
        check(&format!("nextcloud@{D}"), Err("names no tag"));
        check(&format!("nextcloud:latest@{D}"), Err("`:latest`"));
        check("nextcloud:31@sha256:abc", Err("malformed digest"));
        check(
            &format!(
                "nextcloud:31@{}",
                D.to_uppercase().replace("SHA256", "sha256")
            ),
            Err("malformed digest"),
        );
        check("nextcloud:31@md5:abc", Err("not sha256"));
        check(&format!("Nextcloud:31@{D}"), Err("malformed repository"));
        check(&format!("nextcloud:-31@{D}"), Err("malformed tag"));
        check("", Err("empty"));
        check(&format!("next cloud:31@{D}"), Err("whitespace"));
    }
}
