//! SOPS files encrypted for age recipients: read their key names without a
//! key, decrypt them with one, and keep the values out of every output.
//!
//! Architecture Invariant: a secret value leaves this module only inside
//! [`Secret`], whose `Debug` and `Display` print `••••`. The one way to the
//! value is [`Secret::expose`], called by the renderer when it writes the files
//! a host receives. Errors from rops are classified, never printed: some of
//! them would quote decrypted bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use rops::cryptography::cipher::AES256GCM;
use rops::cryptography::hasher::SHA512;
use rops::file::RopsFile;
use rops::file::format::YamlFileFormat;
use rops::file::state::EncryptedFile;
use sha2::{Digest, Sha256};

use crate::config::yaml;
use crate::error::{Diagnostic, Error, Message, Result};

/// What a masked value looks like wherever a person could read it.
pub const MASK: &str = "••••";

/// A decrypted value. Printing it prints [`MASK`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value itself: only for content that goes to a host.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

/// Replaces secret values in text that may reach a log: remote output, and
/// errors of renders with the real values. Holds the values, never prints
/// them.
#[derive(Clone, Default)]
pub struct Masker(Vec<String>);

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} values)", self.0.len())
    }
}

impl Masker {
    pub fn new(mut values: Vec<String>) -> Masker {
        values.retain(|v| !v.is_empty());
        // Longest first, so a value containing another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Masker(values)
    }

    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.0 {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), MASK);
            }
        }
        out
    }
}

/// The age identities this process may decrypt with, and the key its secret
/// fingerprints are made with.
pub struct Keyring {
    identities: Vec<String>,
    sources: Vec<String>,
    fingerprint_key: [u8; 32],
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("identities", &self.identities.len())
            .field("sources", &self.sources)
            .finish()
    }
}

impl Keyring {
    /// Reads identities the way sops does: `SOPS_AGE_KEY` (one or more
    /// identities), `SOPS_AGE_KEY_FILE` (a file as `age-keygen` writes it,
    /// comments included), else `$XDG_CONFIG_HOME/sops/age/keys.txt`.
    pub fn from_env() -> Result<Keyring> {
        let mut identities = Vec::new();
        let mut sources = Vec::new();
        if let Ok(inline) = std::env::var("SOPS_AGE_KEY")
            && !inline.trim().is_empty()
        {
            identities.extend(parse_identities("SOPS_AGE_KEY", &inline)?);
            sources.push("SOPS_AGE_KEY".to_string());
        }
        let file = match std::env::var_os("SOPS_AGE_KEY_FILE").filter(|f| !f.is_empty()) {
            Some(f) => Some((PathBuf::from(f), true)),
            None => default_key_file().map(|f| (f, false)),
        };
        if let Some((path, explicit)) = file {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let label = path.display().to_string();
                    identities.extend(parse_identities(&label, &text)?);
                    sources.push(label);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
                Err(source) => {
                    return Err(Error::Io {
                        action: "read",
                        path: format!("{} (SOPS_AGE_KEY_FILE)", path.display()),
                        source,
                    });
                }
            }
        }
        identities.sort();
        identities.dedup();
        let mut h = Sha256::new();
        h.update(b"fleetgate secret fingerprint v1\n");
        for id in &identities {
            h.update(id.as_bytes());
            h.update(b"\n");
        }
        Ok(Keyring {
            identities,
            sources,
            fingerprint_key: h.finalize().into(),
        })
    }

    pub fn can_decrypt(&self) -> bool {
        !self.identities.is_empty()
    }

    /// Where the identities came from, for messages.
    pub fn sources(&self) -> String {
        if self.sources.is_empty() {
            "none: set SOPS_AGE_KEY or SOPS_AGE_KEY_FILE".into()
        } else {
            self.sources.join(", ")
        }
    }

    /// Hands the identities to rops, which reads only `ROPS_AGE` and a key
    /// file of its own (whose parser refuses `#` comment lines).
    ///
    /// # Safety
    /// Sets process environment variables: call before any other thread exists.
    pub unsafe fn bridge_to_rops(&self) {
        // SAFETY: the caller guarantees the process is still single-threaded.
        unsafe {
            std::env::set_var("ROPS_AGE", self.identities.join(","));
            // An empty file that exists: rops then reads no key file of its own.
            std::env::set_var("ROPS_AGE_KEY_FILE", "/dev/null");
        }
    }

    /// A keyed digest of one secret. Two plans made with the same identities
    /// agree on it; without the identities it cannot be brute-forced offline.
    pub fn digest(&self, key: &str, value: &Secret) -> [u8; 32] {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.fingerprint_key)
            .expect("HMAC accepts keys of any length");
        mac.update(key.as_bytes());
        mac.update(b"\0");
        mac.update(value.expose().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

fn default_key_file() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("sops/age/keys.txt"))
}

/// Identities from text as `age-keygen` writes it: `#` comments and blank
/// lines skipped, every other line an `AGE-SECRET-KEY-1…` identity.
fn parse_identities(source: &str, text: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        for part in line.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if age::x25519::Identity::from_str(part).is_err() {
                return Err(Error::Usage(
                    Message::from(format!(
                        "read age identities from {source}: line {} is not an age identity",
                        i + 1
                    ))
                    .hint("expected AGE-SECRET-KEY-1… lines as written by `age-keygen`"),
                ));
            }
            out.push(part.to_string());
        }
    }
    Ok(out)
}

/// One key of a SOPS file, as stored (still encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub line: Option<u32>,
    /// The `ENC[...]` string: equal ciphertexts mean equal values; different
    /// ones mean nothing (sops re-encrypts every value on each edit).
    pub ciphertext: String,
}

/// A SOPS YAML file, parsed but not decrypted.
#[derive(Debug, Clone)]
pub struct SopsFile {
    pub path: String,
    pub keys: BTreeMap<String, StoredKey>,
    text: String,
}

/// Decrypted secrets of one file.
pub type SecretMap = BTreeMap<String, Secret>;

impl SopsFile {
    /// Reads key names and checks the shape fleetgate supports: a flat map of
    /// encrypted scalars plus the `sops` metadata. Needs no key.
    pub fn parse(path: &str, bytes: &[u8]) -> Result<SopsFile, Vec<Diagnostic>> {
        let doc: BTreeMap<String, yaml::S<serde_json::Value>> =
            yaml::parse_redacted(path, bytes).map_err(|d| vec![d])?;
        let mut problems = Vec::new();
        let mut keys = BTreeMap::new();
        if !doc.contains_key("sops") {
            problems.push(
                Diagnostic::new(path, "not encrypted: the file has no `sops` metadata").hint(
                    format!(
                        "encrypt it: `cd secrets && sops encrypt --in-place {}`",
                        path.trim_start_matches("secrets/")
                    ),
                ),
            );
        }
        for (key, value) in &doc {
            if key == "sops" {
                continue;
            }
            let line = yaml::line_of(&value.referenced);
            let d = |msg: String| Diagnostic::new(path, msg).field(key.clone()).line(line);
            if !is_secret_key(key) {
                problems.push(d(format!("secret key `{key}` is not a valid name")).hint(
                    "secret keys are letters, digits and `_`, starting with a letter or `_`, so templates can write secrets.<key>",
                ));
                continue;
            }
            match &value.value {
                serde_json::Value::String(s) if s.starts_with("ENC[") => {
                    if s.starts_with("ENC[AES256_GCM,data:,") {
                        problems.push(d(format!("secret `{key}` is empty")).hint(
                            "give it a value, or remove the key (empty values cannot be decrypted reliably and are refused)",
                        ));
                    }
                    keys.insert(
                        key.clone(),
                        StoredKey {
                            line,
                            ciphertext: s.clone(),
                        },
                    );
                }
                serde_json::Value::String(s) if s.is_empty() => {
                    problems.push(d(format!("secret `{key}` is empty")).hint(
                        "give it a value, or remove the key (empty values cannot be decrypted reliably and are refused)",
                    ));
                }
                serde_json::Value::Object(_) | serde_json::Value::Array(_) => problems.push(
                    d(format!("secret `{key}` is a nested structure"))
                        .hint("keep secrets files flat: one `key: value` per secret"),
                ),
                _ => problems.push(d(format!("secret `{key}` is not encrypted")).hint(
                    "re-encrypt the file with `sops encrypt --in-place`; never commit plain values",
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(SopsFile {
            path: path.to_string(),
            keys,
            text: String::from_utf8_lossy(bytes).into_owned(),
        })
    }

    /// The file as read (a file that is not UTF-8 does not parse).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Decrypts with the identities handed to rops by [`Keyring::bridge_to_rops`].
    pub fn decrypt(&self, keyring: &Keyring) -> Result<SecretMap, Diagnostic> {
        let fail = |message: String, hint: String| Diagnostic::new(&self.path, message).hint(hint);
        if !keyring.can_decrypt() {
            return Err(fail(
                "cannot decrypt: no age identity is configured".into(),
                "set SOPS_AGE_KEY_FILE to the CI key's file, or SOPS_AGE_KEY to the key".into(),
            ));
        }
        let file =
            RopsFile::<EncryptedFile<AES256GCM, SHA512>, YamlFileFormat>::from_str(&self.text)
                .map_err(|_| {
                    fail(
                        "not a SOPS file fleetgate can read (metadata missing or malformed)".into(),
                        "re-encrypt it with `sops encrypt --in-place` (sops 3.x, age recipients)"
                            .into(),
                    )
                })?;
        let decrypted = file.decrypt::<YamlFileFormat>().map_err(|e| {
            // Classified by message prefix; the message itself is never shown.
            let text = e.to_string();
            if text.starts_with("invalid MAC") {
                fail(
                    "message authentication failed: the file was changed after it was encrypted".into(),
                    "restore it from Git history or re-create it with `sops`; never edit ciphertext by hand".into(),
                )
            } else if text.starts_with("unable to decrypt map value") {
                fail(
                    "a value does not decrypt: its ciphertext was altered or moved to another key".into(),
                    "restore it from Git history or re-create it with `sops`".into(),
                )
            } else if text.starts_with("unable to decrypt file metadata") {
                fail(
                    format!(
                        "cannot decrypt: none of the configured age identities ({}) is a recipient of this file",
                        keyring.sources()
                    ),
                    "use the key whose public half is in secrets/.sops.yaml, or add this key as a recipient with `sops updatekeys`".into(),
                )
            } else {
                fail(
                    "cannot decrypt: the SOPS structure is malformed".into(),
                    "re-encrypt it with `sops encrypt --in-place`".into(),
                )
            }
        })?;
        let map = serde_json::to_value(decrypted.into_inner_map()).map_err(|_| {
            fail(
                "decrypted content is not a map of scalars".into(),
                "keep secrets files flat: one `key: value` per secret".into(),
            )
        })?;
        let mut out = SecretMap::new();
        if let serde_json::Value::Object(map) = map {
            for (k, v) in map {
                let value = match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Bool(b) => b.to_string(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => {
                        return Err(fail(
                            format!("secret `{k}` is not a scalar"),
                            "keep secrets files flat: one `key: value` per secret".into(),
                        ));
                    }
                };
                out.insert(k, Secret::new(value));
            }
        }
        Ok(out)
    }
}

fn is_secret_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && key.len() <= 128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_its_value() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s} {s:?} {:?}", Some(&s)), "•••• •••• Some(••••)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn identities_skip_comments_like_age_keygen_files() {
        let text = "# created: 2026-11-23T06:55:09Z\n# public key: age1xyz\nAGE-SECRET-KEY-1EU6997ESPL3R9TXRAYMZYN3VC2KHE5FDSQD8VKZCJX42AJY8G4KQKK4D5W\n\n";
        assert_eq!(parse_identities("f", text).unwrap().len(), 1);
        let err = parse_identities("f", "# c\nnot-a-key\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2 is not an age identity"), "{err}");
        assert!(
            !err.contains("not-a-key"),
            "the bad line may be a secret: {err}"
        );
    }

    #[test]
    fn sops_shape_checks() {
        let ok = "a: ENC[AES256_GCM,data:abc,iv:x,tag:y,type:str]\nsops:\n  version: 3.11.0\n";
        let f = SopsFile::parse("s.yaml", ok.as_bytes()).unwrap();
        assert_eq!(f.keys.keys().collect::<Vec<_>>(), ["a"]);

        let check = |text: &str, fragment: &str| {
            let errs = SopsFile::parse("s.yaml", text.as_bytes()).unwrap_err();
            let all = errs
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n");
            assert!(all.contains(fragment), "{all}");
        };
        check("a: plain\nsops: {}\n", "secret `a` is not encrypted");
        check(
            "a: ENC[AES256_GCM,data:,iv:x,tag:y,type:str]\nsops: {}\n",
            "secret `a` is empty",
        );
        check("a: ENC[x]\n", "no `sops` metadata");
        check("a-b: ENC[x]\nsops: {}\n", "not a valid name");
        check("a:\n  b: ENC[x]\nsops: {}\n", "nested");
    }
}
