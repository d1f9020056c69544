//! POSIX shell quoting. Every value fleetgate interpolates into a remote
//! command goes through [`quote`]: names, paths, revs and vars can never
//! inject shell.

/// Quotes `s` for POSIX `sh` as one word: `'…'`, with `'` written `'\''`.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'/' | b'.' | b'_' | b'-' | b'=' | b':' | b'@' | b',')
        })
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `script` with the local `sh` (stdin), as a host would: for the
/// tests of the scripts built as data here and in `release`/`proxy`.
#[cfg(test)]
pub(crate) fn sh(script: &str) -> std::process::Output {
    sh_with(&["sh"], script)
}

/// [`sh`] with another shell (a program and its arguments before `-s`:
/// `["busybox", "sh"]`) as the host's `sh`.
#[cfg(test)]
pub(crate) fn sh_with(shell: &[&str], script: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(shell[0])
        .args(&shell[1..])
        .arg("-s")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting() {
        assert_eq!(quote("/opt/fleetgate/alpha"), "/opt/fleetgate/alpha");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("$(touch /tmp/pwned)"), "'$(touch /tmp/pwned)'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("`x`;rm -rf /"), "'`x`;rm -rf /'");
    }

    #[test]
    fn quoted_words_survive_a_real_shell() {
        for word in [
            "$(touch /tmp/fleetgate-pwned)",
            "it's",
            "a\nb",
            "`id`",
            "*",
            "~",
            "\\",
            "\"$HOME\"",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(word)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
        }
        assert!(!std::path::Path::new("/tmp/fleetgate-pwned").exists());
    }
}
