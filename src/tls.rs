//! Whom fleetgate's HTTPS clients trust: one rustls config, built once per
//! process and shared by every client — the forge (Forgejo over reqwest,
//! GitHub over octocrab's hyper client) and the HTTP health checks. Its roots:
//!
//! - the web's (webpki-roots, compiled in), so a bare runner reaches
//!   codeberg.org or api.github.com;
//! - the system's, found as OpenSSL-based tools find them (`SSL_CERT_FILE`,
//!   `SSL_CERT_DIR`, else the distribution's bundle; rustls-native-certs,
//!   which reads them without OpenSSL);
//! - `FLEETGATE_CA_FILE`: a PEM file of one or more CA certificates, for a
//!   forge or an app behind a private CA.
//!
//! A CA file named by a variable that cannot be read, or holds no usable
//! certificate, is invalid input (exit 2) naming the variable and the path.
//! `main` checks those files ([`init`]) before any command starts, so such a
//! file stops a run before it changes anything; the system's store is read
//! once, when the first client is built ([`config`]). A certificate the server shows that
//! these roots do not vouch for is the forge's or host's problem (exit 3 on
//! the forge; a failed probe for a health check), worded by
//! [`certificate_problem`].
//!
//! rustls with ring, explicitly: no OpenSSL, no aws-lc, no process-wide
//! default provider to agree on.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use crate::error::{Error, Message, Result};

/// The variable naming extra CA certificates to trust.
pub const CA_FILE: &str = "FLEETGATE_CA_FILE";
const SSL_CERT_FILE: &str = "SSL_CERT_FILE";
const SSL_CERT_DIR: &str = "SSL_CERT_DIR";

/// The hint of an untrusted certificate.
pub const CA_HINT: &str = "if it is signed by a private CA, give that CA's certificate (PEM) in FLEETGATE_CA_FILE, or add it to the system's store (SSL_CERT_FILE)";

/// The certificates of `FLEETGATE_CA_FILE`, read and checked by [`init`].
static EXTRA: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Reads and checks the CA files the environment names — cheap, so every
/// command does it first. The system's store is read only when a client
/// needs the config.
pub fn init() -> Result<()> {
    if EXTRA.get().is_some() {
        return Ok(());
    }
    // rustls-native-certs takes an unreadable SSL_CERT_FILE or SSL_CERT_DIR,
    // or a file without certificates, as an empty store: named by the user,
    // they are errors.
    // The system's store is checked as far as its first certificate
    // (readable, PEM, not empty): all of it is read, as OpenSSL reads it,
    // only by a command that makes a request (a bundle's ~150 certificates
    // cost a plan half a millisecond).
    if let Some(path) = var(SSL_CERT_FILE) {
        read_ca_file(SSL_CERT_FILE, Path::new(&path), Some(1))?;
    }
    if let Some(dirs) = std::env::var_os(SSL_CERT_DIR) {
        for dir in std::env::split_paths(&dirs).filter(|d| !d.as_os_str().is_empty()) {
            std::fs::read_dir(&dir).map_err(|e| {
                Error::Usage(
                    Message::from(format!(
                        "{SSL_CERT_DIR}={}: cannot read it: {e}",
                        dir.display()
                    ))
                    .hint(format!(
                        "{SSL_CERT_DIR} names directories of CA certificates (as `openssl rehash` makes them); unset it to use the system's"
                    )),
                )
            })?;
        }
    }
    let extra = match var(CA_FILE) {
        None => Vec::new(),
        Some(path) => {
            let path = Path::new(&path);
            let certs = read_ca_file(CA_FILE, path, None)?;
            // Refused now, not when the first request needs them.
            add_all(&mut RootCertStore::empty(), CA_FILE, path, certs.clone())?;
            certs
        }
    };
    let _ = EXTRA.set(extra);
    Ok(())
}

/// The TLS config of every HTTPS client: built on the first call, the same
/// one afterwards.
pub fn config() -> Result<Arc<ClientConfig>> {
    if let Some(config) = CONFIG.get() {
        return Ok(Arc::clone(config));
    }
    init()?;
    let extra = EXTRA.get().cloned().unwrap_or_default();
    let config = Arc::new(client_config(roots(extra)));
    Ok(Arc::clone(CONFIG.get_or_init(|| config)))
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The web's roots, the system's, and `extra` (checked by [`init`]).
fn roots(extra: Vec<CertificateDer<'static>>) -> RootCertStore {
    let mut store = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        let errors: Vec<String> = native.errors.iter().map(ToString::to_string).collect();
        tracing::warn!(
            "some of the system's CA certificates could not be read (the others are trusted): {}",
            errors.join("; ")
        );
    }
    // The system's store holds what the distribution ships; a certificate
    // rustls cannot use as a root there is skipped, as OpenSSL would.
    let (_, skipped) = store.add_parsable_certificates(native.certs);
    if skipped > 0 {
        tracing::debug!("{skipped} of the system's CA certificates are not usable roots");
    }
    let (_, refused) = store.add_parsable_certificates(extra);
    debug_assert_eq!(refused, 0, "init checked them");
    store
}

fn client_config(roots: RootCertStore) -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls' default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The certificates of the PEM file at `path` (the first `up_to`; `None`:
/// all), named by `var`; an error when it cannot be read, is not PEM (as
/// far as it is read), or holds no certificate.
fn read_ca_file(
    var: &str,
    path: &Path,
    up_to: Option<usize>,
) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |what: String| {
        Error::Usage(
            Message::from(format!("{var}={}: {what}", path.display())).hint(format!(
                "{var} names a PEM file of the CA certificates to trust (several may follow each other: -----BEGIN CERTIFICATE----- …); unset it to trust {}",
                if var == CA_FILE {
                    "only the system's and the web's roots"
                } else {
                    "the system's default store"
                }
            )),
        )
    };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .take(up_to.unwrap_or(usize::MAX))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "holds no certificate (no -----BEGIN CERTIFICATE----- block)".into(),
        ));
    }
    Ok(certs)
}

/// Adds every certificate of a file the user named; one rustls cannot use
/// as a root is an error, not skipped: the user meant to trust it.
fn add_all(
    store: &mut RootCertStore,
    var: &str,
    path: &Path,
    certs: Vec<CertificateDer<'static>>,
) -> Result<()> {
    let count = certs.len();
    for (i, cert) in certs.into_iter().enumerate() {
        store.add(cert).map_err(|e| {
            Error::Usage(
                Message::from(format!(
                    "{var}={}: certificate {} of {count} is not a usable CA certificate: {e}",
                    path.display(),
                    i + 1
                ))
                .hint(format!("{var} must hold X.509 CA certificates in PEM")),
            )
        })?;
    }
    Ok(())
}

/// What a failed request says about the server's certificate, if that is
/// why it failed: the words for the user (`its TLS certificate is not
/// trusted: …`) and a hint. `e` is searched with its causes: rustls' error
/// sits inside the HTTP client's and an `io::Error`.
pub fn certificate_problem(e: &(dyn std::error::Error + 'static)) -> Option<Message> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(rustls::Error::InvalidCertificate(why)) = rustls_error(err) {
            return Some(untrusted(why));
        }
        cur = err.source();
    }
    None
}

/// `e` as rustls' error, also inside `io::Error`s — within each other, as
/// hyper's connectors nest them; `io::Error::source` skips the error it
/// wraps, so the chain of sources alone never reaches it.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let mut inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    loop {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        inner = inner.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

fn untrusted(why: &rustls::CertificateError) -> Message {
    use rustls::CertificateError as E;
    let text = |reason: &str| format!("its TLS certificate is not trusted: {reason}");
    match why {
        E::UnknownIssuer => {
            Message::from(text("signed by a CA fleetgate does not know")).hint(CA_HINT)
        }
        E::NotValidForName | E::NotValidForNameContext { .. } => {
            Message::from(text("it is not valid for this host name")).hint(
                "the URL must name the host as its certificate does (a DNS name or IP address it lists)",
            )
        }
        E::Expired | E::ExpiredContext { .. } => Message::from(text("it has expired")),
        E::NotValidYet | E::NotValidYetContext { .. } => {
            Message::from(text("it is not valid yet (check the runner's clock)"))
        }
        other => Message::from(text(&format!("{other:?}"))).hint(CA_HINT),
    }
}

/// The reqwest client of an API edge (Forgejo, Hetzner Cloud): the one
/// trust store, fleetgate's User-Agent, 10 s to connect and 60 s for a
/// whole request. `fail` makes the edge's own error of a client that
/// cannot be built.
pub fn api_client(fail: impl FnOnce(Message) -> Error) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls(config()?.as_ref().clone())
        .user_agent(concat!("fleetgate/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| fail(format!("set up the HTTP client: {}", describe(e)).into()))
}

/// A reqwest error with its causes (connection refused, TLS…), without the
/// URL (which may carry a query worth keeping out of logs): what the HTTP
/// edges (`forge::forgejo`, `hcloud`) say when a request had no answer.
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExitCode;

    /// Two self-signed CA certificates (EC P-256, made with `openssl req
    /// -x509 -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj
    /// "/CN=fleetgate test CA N" -addext basicConstraints=critical,CA:TRUE
    /// -days 36500`; their keys were thrown away).
    const CA_ONE: &str = "-----BEGIN CERTIFICATE-----
MIIBkjCCATmgAwIBAgIUdJdtmnshnezoD2P1c4guI9EMImAwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTZmxlZXRnYXRlIHRlc3QgQ0EgMTAgFw0yNjExMjkyMzE2MTNa
GA8yMTI2MTEwNTIzMTYxM1owHjEcMBoGA1UEAwwTZmxlZXRnYXRlIHRlc3QgQ0Eg
MTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABATmlFtBJ1qDMRCb9ra9q5wyDTZm
GYK8i7+f4y9auRJFi1UG5MtUX16z6XfB+QpoNnppw82EONK+z8h4uYGpBISjUzBR
MB0GA1UdDgQWBBRzbL9oN05KWzr5c3hNbWTtfbc74jAfBgNVHSMEGDAWgBRzbL9o
N05KWzr5c3hNbWTtfbc74jAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cA
MEQCIBRGfNAstYVpGU0MI673K0omSwtSP4Z+GrywXHlMlIMuAiBEGy6ETUzSVa6U
lVfu6brI6NMB3wTb/N2n2s/anhzwBg==
-----END CERTIFICATE-----
";
    const CA_TWO: &str = "-----BEGIN CERTIFICATE-----
MIIBkzCCATmgAwIBAgIUEp1tEKdE/YDTNRhLtURpfL4ObOswCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTZmxlZXRnYXRlIHRlc3QgQ0EgMjAgFw0yNjExMjkyMzE2MTNa
GA8yMTI2MTEwNTIzMTYxM1owHjEcMBoGA1UEAwwTZmxlZXRnYXRlIHRlc3QgQ0Eg
MjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABEEaKB4mH+4dvD/lTQV5BzlRSNSh
3W6ckpkrMLixMDw6BoQ3wCma4R3QDToeZkwClzUOEjIFu/Q2Ky4aX1zwlCOjUzBR
MB0GA1UdDgQWBBQx5hf2V3kRYIW5fW8iSsG6fvgtSTAfBgNVHSMEGDAWgBQx5hf2
V3kRYIW5fW8iSsG6fvgtSTAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gA
MEUCIQCiYxSw2OX91fvbKYHS4V5U0cgJwPQ4anFG2txPXMhB1wIgKabFiBkwDauw
Eca6/yHdIbUTaUwhnBQp8ozayrUz8Tg=
-----END CERTIFICATE-----
";

    /// Reads `text` as the CA file and adds it to an empty store: how many
    /// roots it adds, or the error's words (the temp dir shown as `DIR`).
    fn load(text: Option<&str>) -> std::result::Result<usize, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        let mut store = RootCertStore::empty();
        read_ca_file(CA_FILE, &path, None)
            .and_then(|certs| add_all(&mut store, CA_FILE, &path, certs))
            .map(|()| store.len())
            .map_err(|e| {
                assert_eq!(e.exit_code(), ExitCode::Invalid, "{e}");
                e.to_string()
                    .replace(&dir.path().display().to_string(), "DIR")
            })
    }

    #[test]
    fn the_system_store_is_checked_at_the_start_as_far_as_its_first_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        let broken = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        // A broken block after the first certificate: read (and warned
        // about) when a request needs the store, not at the start.
        std::fs::write(&path, format!("{CA_ONE}{broken}")).unwrap();
        assert_eq!(
            read_ca_file(SSL_CERT_FILE, &path, Some(1)).unwrap().len(),
            1
        );
        let all = read_ca_file(SSL_CERT_FILE, &path, None).unwrap_err();
        assert!(all.to_string().contains("not a PEM file"), "{all}");
        // Broken before it, or no certificate at all: refused at the start.
        std::fs::write(&path, format!("{broken}{CA_ONE}")).unwrap();
        let first = read_ca_file(SSL_CERT_FILE, &path, Some(1)).unwrap_err();
        assert!(first.to_string().contains("not a PEM file"), "{first}");
        std::fs::write(&path, "no certificates here\n").unwrap();
        let none = read_ca_file(SSL_CERT_FILE, &path, Some(1)).unwrap_err();
        assert!(none.to_string().contains("holds no certificate"), "{none}");
    }

    #[test]
    fn ca_files_load_every_certificate_or_name_the_variable_and_path() {
        let both = format!("{CA_ONE}{CA_TWO}");
        let with_key = format!(
            "# the CA of forge.internal\n{CA_ONE}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        );
        let ok: &[(&str, Option<&str>, usize)] = &[
            ("one certificate", Some(CA_ONE), 1),
            ("several, one after the other", Some(&both), 2),
            ("text and other blocks around it", Some(&with_key), 1),
        ];
        for (what, text, roots) in ok {
            assert_eq!(load(*text), Ok(*roots), "{what}");
        }
        let broken_base64 = CA_ONE.replace("MIIB", "M!IB");
        let not_a_cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let bad: &[(&str, Option<&str>, &str)] = &[
            (
                "missing",
                None,
                "FLEETGATE_CA_FILE=DIR/ca.pem: cannot read it: No such file or directory",
            ),
            (
                "empty",
                Some(""),
                "FLEETGATE_CA_FILE=DIR/ca.pem: holds no certificate",
            ),
            (
                "not PEM",
                Some("this is not a certificate\n"),
                "FLEETGATE_CA_FILE=DIR/ca.pem: holds no certificate",
            ),
            (
                "a key only",
                Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
                "FLEETGATE_CA_FILE=DIR/ca.pem: holds no certificate",
            ),
            (
                "broken base64",
                Some(&broken_base64),
                "FLEETGATE_CA_FILE=DIR/ca.pem: not a PEM file",
            ),
            (
                "PEM that is no certificate",
                Some(not_a_cert),
                "FLEETGATE_CA_FILE=DIR/ca.pem: certificate 1 of 1 is not a usable CA certificate",
            ),
        ];
        for (what, text, expect) in bad {
            let got = load(*text).expect_err(what);
            assert!(got.starts_with(expect), "{what}: {got}");
            assert!(got.contains("hint: FLEETGATE_CA_FILE"), "{what}: {got}");
        }
    }

    #[test]
    fn a_directory_is_not_a_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_ca_file(CA_FILE, dir.path(), None).unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::Invalid);
        assert!(
            e.to_string().starts_with(&format!(
                "FLEETGATE_CA_FILE={}: cannot read it",
                dir.path().display()
            )),
            "{e}"
        );
    }

    /// The error of a refused handshake as the HTTP clients nest it.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn untrusted_certificates_are_found_among_the_causes() {
        use rustls::CertificateError as C;
        let check = |why: C| {
            // As hyper-util and tokio-rustls nest it: io::Error(io::Error(rustls)).
            let io = std::io::Error::other(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(why),
            ));
            certificate_problem(&Wrapped(io)).map(|m| m.to_string())
        };
        assert_eq!(
            check(C::UnknownIssuer).as_deref(),
            Some(
                "its TLS certificate is not trusted: signed by a CA fleetgate does not know\n  hint: if it is signed by a private CA, give that CA's certificate (PEM) in FLEETGATE_CA_FILE, or add it to the system's store (SSL_CERT_FILE)"
            )
        );
        assert!(
            check(C::NotValidForName).unwrap().starts_with(
                "its TLS certificate is not trusted: it is not valid for this host name"
            )
        );
        assert_eq!(
            check(C::Expired).as_deref(),
            Some("its TLS certificate is not trusted: it has expired")
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(certificate_problem(&Wrapped(refused)).map(|m| m.text), None);
    }

    #[test]
    fn the_config_trusts_the_web_the_system_and_the_files() {
        let web = webpki_roots::TLS_SERVER_ROOTS.len();
        let without = roots(Vec::new()).len();
        assert!(
            without >= web && web > 100,
            "{without} roots, {web} of the web"
        );
        let certs: Vec<_> = CertificateDer::pem_slice_iter(format!("{CA_ONE}{CA_TWO}").as_bytes())
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        let store = roots(certs);
        assert_eq!(store.len(), without + 2);
        let config = client_config(store);
        assert!(config.crypto_provider().cipher_suites.len() > 1);
    }
}
