//! Which `pipeline.yaml` `ssh.options` fleetgate passes to OpenSSH: an
//! allow-list, pure, table-tested.
//!
//! ssh_config is a language that can run commands on the runner
//! (`KnownHostsCommand`, `Match exec`, `ProxyCommand`, `LocalCommand`,
//! `PKCS11Provider`…), read other files (`Include`), reach other hosts
//! (`ProxyJump`, forwardings) and trust keys fleetgate did not pin
//! (`StrictHostKeyChecking`, `UserKnownHostsFile`, `VerifyHostKeyDNS`,
//! `UpdateHostKeys`). A deny-list of that language misses the next option
//! OpenSSH adds; so only options that tune the one connection fleetgate opens
//! are accepted, and their values are plain words: nothing that could start
//! another config line, a comment, a quoted string or a `%`/`${}` expansion.

/// The options an operator may set, spelled as `ssh_config(5)` does.
pub const ALLOWED: [&str; 14] = [
    "AddressFamily",
    "Ciphers",
    "Compression",
    "ConnectionAttempts",
    "ConnectTimeout",
    "IdentitiesOnly",
    "IPQoS",
    "KexAlgorithms",
    "LogLevel",
    "MACs",
    "RekeyLimit",
    "ServerAliveCountMax",
    "ServerAliveInterval",
    "TCPKeepAlive",
];

/// Why an option was refused: the message and the hint of its diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub hint: String,
}

/// The option's canonical name when `name: value` may go into the
/// ssh_config fleetgate writes. OpenSSH matches names case-insensitively, so
/// `kexalgorithms` is `KexAlgorithms`.
pub fn check(name: &str, value: &str) -> Result<&'static str, Refusal> {
    let Some(canonical) = ALLOWED
        .iter()
        .find(|allowed| allowed.eq_ignore_ascii_case(name))
    else {
        return Err(Refusal {
            message: format!("`{name}` is not an ssh option fleetgate allows"),
            hint: format!(
                "allowed: {}; options that run commands, read other files, reach other hosts or change host-key checks are refused (host keys always come from pipelines/known_hosts)",
                ALLOWED.join(", ")
            ),
        });
    };
    if !is_plain_value(value) {
        return Err(Refusal {
            message: format!("`{value}` is not a plain value for `{canonical}`"),
            hint: "write words of letters, digits and `-_.,@+^:`, separated by single spaces (no quotes, `#`, `%`, `$`, `=` or line breaks)".into(),
        });
    }
    Ok(canonical)
}

/// Words of `[A-Za-z0-9-_.,@+^:]` separated by single spaces: enough for
/// algorithm lists (`+aes128-cbc`, `^curve25519-sha256`), numbers, `yes`/`no`
/// and `RekeyLimit 1G 1h`; too little to end the line, open a comment or a
/// quote, or expand anything.
fn is_plain_value(value: &str) -> bool {
    !value.is_empty()
        && value.split(' ').all(|word| {
            !word.is_empty()
                && word.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'-' | b'_' | b'.' | b',' | b'@' | b'+' | b'^' | b':')
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Ok(name)`: accepted as `name`; `Err(text)`: refused, the message
    /// containing `text`.
    fn expect(name: &str, value: &str, want: Result<&str, &str>) {
        match (check(name, value), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}: {value}"),
            (Err(r), Err(text)) => {
                assert!(r.message.contains(text), "{name}: {value}: {r:?}");
                assert!(!r.hint.is_empty(), "{name}: {value}: no hint");
            }
            (got, want) => panic!("{name}: {value}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn options_that_tune_the_connection_are_allowed() {
        for (name, value, canonical) in [
            ("KexAlgorithms", "curve25519-sha256", "KexAlgorithms"),
            ("kexalgorithms", "curve25519-sha256", "KexAlgorithms"),
            (
                "KEXALGORITHMS",
                "^sntrup761x25519-sha512@openssh.com",
                "KexAlgorithms",
            ),
            (
                "Ciphers",
                "+aes128-cbc,chacha20-poly1305@openssh.com",
                "Ciphers",
            ),
            ("MACs", "-hmac-sha1", "MACs"),
            ("ConnectTimeout", "5", "ConnectTimeout"),
            ("ConnectionAttempts", "3", "ConnectionAttempts"),
            ("ServerAliveInterval", "15", "ServerAliveInterval"),
            ("ServerAliveCountMax", "3", "ServerAliveCountMax"),
            ("TCPKeepAlive", "yes", "TCPKeepAlive"),
            ("tcpkeepalive", "no", "TCPKeepAlive"),
            ("Compression", "yes", "Compression"),
            ("IdentitiesOnly", "yes", "IdentitiesOnly"),
            ("RekeyLimit", "1G 1h", "RekeyLimit"),
            ("IPQoS", "af21 cs1", "IPQoS"),
            ("AddressFamily", "inet", "AddressFamily"),
            ("LogLevel", "ERROR", "LogLevel"),
        ] {
            expect(name, value, Ok(canonical));
        }
    }

    #[test]
    fn options_that_run_commands_reach_elsewhere_or_trust_keys_are_refused() {
        for (name, value) in [
            ("KnownHostsCommand", "/bin/touch /tmp/marker"),
            ("Match", "exec \"touch /tmp/marker\""),
            ("match", "all"),
            ("Host", "*"),
            ("Include", "/etc/ssh/ssh_config"),
            ("ProxyCommand", "nc %h %p"),
            ("ProxyJump", "bastion.example.org"),
            ("ProxyUseFdpass", "yes"),
            ("LocalCommand", "touch /tmp/marker"),
            ("PermitLocalCommand", "yes"),
            ("PKCS11Provider", "/tmp/evil.so"),
            ("SecurityKeyProvider", "/tmp/evil.so"),
            ("StrictHostKeyChecking", "no"),
            ("stricthostkeychecking", "no"),
            ("UserKnownHostsFile", "/dev/null"),
            ("GlobalKnownHostsFile", "/etc/ssh/ssh_known_hosts"),
            ("VerifyHostKeyDNS", "yes"),
            ("UpdateHostKeys", "yes"),
            ("HostKeyAlgorithms", "+ssh-rsa"),
            ("HostKeyAlias", "other"),
            ("CheckHostIP", "no"),
            ("ControlPath", "/tmp/x"),
            ("ControlMaster", "no"),
            ("ControlPersist", "yes"),
            ("LocalForward", "8080 localhost:80"),
            ("RemoteForward", "8080 localhost:80"),
            ("DynamicForward", "1080"),
            ("ForwardAgent", "yes"),
            ("IdentityFile", "/root/.ssh/id_ed25519"),
            ("IdentityAgent", "/tmp/agent.sock"),
            ("Hostname", "elsewhere.example.org"),
            ("SetEnv", "FOO=bar"),
            ("BatchMode", "no"),
            ("", "x"),
        ] {
            expect(name, value, Err("is not an ssh option fleetgate allows"));
        }
    }

    #[test]
    fn values_cannot_start_another_line_or_expand() {
        for value in [
            "curve25519-sha256\nKnownHostsCommand touch /tmp/marker",
            "curve25519-sha256\rMatch exec true",
            "curve25519-sha256 # comment",
            "\"curve25519-sha256\"",
            "'x'",
            "%h",
            "${HOME}",
            "a=b",
            "a\\b",
            "two  spaces",
            " leading",
            "trailing ",
            "tab\there",
            "",
        ] {
            expect("KexAlgorithms", value, Err("is not a plain value"));
        }
    }
}
