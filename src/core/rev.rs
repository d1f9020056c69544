//! A commit of the fleet repository, by id: plain bytes here, so the core
//! names commits without naming Git (`repo.rs` converts to and from git2).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId(pub [u8; 20]);

impl CommitId {
    /// From 40 hex digits (what `git rev-parse` prints); None otherwise.
    pub fn from_hex(hex: &str) -> Option<CommitId> {
        let bytes = hex::decode(hex).ok()?;
        Some(CommitId(bytes.try_into().ok()?))
    }

    /// The first 12 hex digits, for people.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The first 12 characters of a commit id or hash, as shown to people.
pub fn short(sha: &str) -> &str {
    // Hashes and revs may come from a note or a forge payload: whatever they
    // hold (short, non-ASCII), shortening never panics.
    sha.char_indices().nth(12).map_or(sha, |(i, _)| &sha[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_both_ways() {
        let hex = "0123456789abcdef0123456789abcdef01234567";
        let id = CommitId::from_hex(hex).unwrap();
        assert_eq!(id.to_string(), hex);
        assert_eq!(id.short(), "0123456789ab");
        assert_eq!(CommitId::from_hex("0123"), None);
        assert_eq!(CommitId::from_hex(&"g".repeat(40)), None);
    }
}
