//! HTTP health probes, sent from the runner. [`Prober`] is the seam: the
//! executor asks for one GET and gets back pass or fail and what was seen.
//! [`ReqwestProber`] is the real one (rustls, no OpenSSL; it trusts what
//! the forge clients trust, [`crate::tls`]); in unit tests,
//! `ScriptedProber` answers from a script — healthy, flapping, a 502, a
//! timeout — so the health gates and the rollbacks they cause are tested
//! without a server. Both word their verdicts through [`judge`] and
//! [`unreached`], so a test double cannot drift from what the real probe
//! reports.

use std::sync::Arc;
use std::time::Duration;

/// Sends the HTTP probes of health checks.
pub trait Prober: Sync {
    /// One GET of `url`: passes iff it answers `expect_status` within
    /// `timeout` with a body containing `expect_body`; the detail says what
    /// was seen.
    /// `via`: send it to this address and port instead of where the URL's
    /// host name resolves (a check through a host's proxy), keeping the
    /// URL's host name for the `Host` header and TLS.
    fn get(
        &self,
        url: &str,
        via: Option<(&str, u16)>,
        expect_status: u16,
        expect_body: Option<&str>,
        timeout: Duration,
    ) -> impl Future<Output = (bool, String)> + Send;

    /// A prober for one round of checks (a host's gates after its switch,
    /// or after its rollback) that shares no connection with another round:
    /// a rollback's checks must not ride a keep-alive connection opened to
    /// the release it replaced.
    fn round(&self) -> Self
    where
        Self: Sized;
}

/// Whether an answer passes, in the words of the check's detail.
pub fn judge(
    url: &str,
    status: u16,
    body: &str,
    expect_status: u16,
    expect_body: Option<&str>,
) -> (bool, String) {
    if status != expect_status {
        return (
            false,
            format!("GET {url}: status {status}, expected {expect_status}"),
        );
    }
    if let Some(needle) = expect_body
        && !body.contains(needle)
    {
        return (false, format!("GET {url}: body lacks {needle:?}"));
    }
    (true, format!("GET {url}: {status}"))
}

/// Why a request got no answer: `timed out`, `connection failed`,
/// `request failed`, or the untrusted certificate of an https:// URL.
pub fn unreached(url: &str, why: &str) -> (bool, String) {
    (false, format!("GET {url}: {why}"))
}

/// Probes with reqwest: one client per round, so connections are pooled
/// between the probes of one round only. Every round shares the one TLS
/// config of the process, read on the first probe: a stage without an HTTP
/// check never reads the system's CA store (about 150 files, ~20 ms).
#[derive(Debug, Clone, Default)]
pub struct ReqwestProber {
    /// This round's client, made on its first probe.
    client: std::sync::OnceLock<reqwest::Client>,
}

impl ReqwestProber {
    /// A prober trusting the roots of [`crate::tls::config`].
    pub fn new() -> ReqwestProber {
        ReqwestProber::default()
    }

    fn client(&self) -> Result<&reqwest::Client, String> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls()?.as_ref().clone())
            .build()
            .map_err(|_| "no HTTP client".to_string())?;
        Ok(self.client.get_or_init(|| client))
    }
}

/// The process's TLS config (checked at start-up by `tls::init`, so this
/// only reads the CA store).
fn tls() -> Result<Arc<rustls::ClientConfig>, String> {
    crate::tls::config().map_err(|e| e.to_string())
}

impl Prober for ReqwestProber {
    async fn get(
        &self,
        url: &str,
        via: Option<(&str, u16)>,
        expect_status: u16,
        expect_body: Option<&str>,
        timeout: Duration,
    ) -> (bool, String) {
        let sent = match via {
            None => match self.client() {
                Ok(client) => client.get(url).timeout(timeout).send().await,
                Err(why) => return unreached(url, &why),
            },
            Some((address, port)) => match self.via(url, address, port).await {
                Ok((client, target)) => client.get(target).timeout(timeout).send().await,
                Err(why) => return unreached(url, &why),
            },
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                if let Some(m) = crate::tls::certificate_problem(&e) {
                    let why = match m.hint {
                        Some(hint) => format!("{}; {hint}", m.text),
                        None => m.text,
                    };
                    return unreached(url, &why);
                }
                let why = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                return unreached(url, why);
            }
        };
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        judge(url, status, &body, expect_status, expect_body)
    }

    fn round(&self) -> ReqwestProber {
        ReqwestProber::new()
    }
}

impl ReqwestProber {
    /// A client that reaches `url`'s host name at `address:port`, and the
    /// URL with that port.
    async fn via(
        &self,
        url: &str,
        address: &str,
        port: u16,
    ) -> Result<(reqwest::Client, reqwest::Url), String> {
        let mut target = reqwest::Url::parse(url).map_err(|_| "not a URL".to_string())?;
        let name = target.host_str().ok_or("no host name")?.to_string();
        target
            .set_port(Some(port))
            .map_err(|()| "no port for this URL".to_string())?;
        let ip = match address.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(ip) => ip,
            Err(_) => tokio::net::lookup_host((address, port))
                .await
                .ok()
                .and_then(|mut a| a.next())
                .map(|a| a.ip())
                .ok_or_else(|| format!("{address} does not resolve"))?,
        };
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls()?.as_ref().clone())
            .resolve(&name, std::net::SocketAddr::new(ip, port))
            .build()
            .map_err(|_| "no HTTP client".to_string())?;
        Ok((client, target))
    }
}

#[cfg(test)]
pub use scripted::ScriptedProber;

#[cfg(test)]
mod scripted {
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::{Prober, judge, unreached};

    #[derive(Debug, Clone)]
    enum Answer {
        Serve(u16, String),
        /// No answer within the probe's timeout (it waits that long).
        Timeout,
        /// Nothing listening.
        Refused,
    }

    #[derive(Debug)]
    struct Script {
        answers: VecDeque<Answer>,
        last: Answer,
        probes: u32,
    }

    /// A stand-in for the apps' HTTP endpoints: each URL answers its script
    /// in order, then its last answer for good; a URL without a script is
    /// refused, like a port nothing listens on. Rounds share the scripts
    /// (they are the servers', not the connections').
    #[derive(Debug, Clone, Default)]
    pub struct ScriptedProber {
        scripts: Arc<Mutex<BTreeMap<String, Script>>>,
    }

    impl ScriptedProber {
        /// `script`: answers separated by spaces — `ok` (200, body "ok"), a
        /// status alone (`502`: that status, an empty body), `timeout`,
        /// `refused`.
        pub fn answer(&self, url: &str, script: &str) -> &ScriptedProber {
            let mut answers: VecDeque<Answer> = script
                .split_whitespace()
                .map(|word| match word {
                    "ok" => Answer::Serve(200, "ok".into()),
                    "timeout" => Answer::Timeout,
                    "refused" => Answer::Refused,
                    status => Answer::Serve(
                        status
                            .parse()
                            .unwrap_or_else(|_| panic!("not an answer: {word}")),
                        String::new(),
                    ),
                })
                .collect();
            let last = answers.back().cloned().unwrap_or(Answer::Refused);
            answers.pop_back();
            self.scripts.lock().unwrap().insert(
                url.to_string(),
                Script {
                    answers,
                    last,
                    probes: 0,
                },
            );
            self
        }

        /// How many times `url` was probed.
        pub fn probes(&self, url: &str) -> u32 {
            self.scripts
                .lock()
                .unwrap()
                .get(url)
                .map_or(0, |s| s.probes)
        }
    }

    impl Prober for ScriptedProber {
        async fn get(
            &self,
            url: &str,
            _via: Option<(&str, u16)>,
            expect_status: u16,
            expect_body: Option<&str>,
            timeout: Duration,
        ) -> (bool, String) {
            let answer = match self.scripts.lock().unwrap().get_mut(url) {
                Some(s) => {
                    s.probes += 1;
                    s.answers.pop_front().unwrap_or_else(|| s.last.clone())
                }
                None => Answer::Refused,
            };
            match answer {
                Answer::Serve(status, body) => {
                    judge(url, status, &body, expect_status, expect_body)
                }
                Answer::Timeout => {
                    tokio::time::sleep(timeout).await;
                    unreached(url, "timed out")
                }
                Answer::Refused => unreached(url, "connection failed"),
            }
        }

        fn round(&self) -> ScriptedProber {
            self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged_on_status_then_body() {
        let check =
            |status, body, expect_body| judge("http://h/health", status, body, 200, expect_body);
        assert_eq!(
            check(200, "", None),
            (true, "GET http://h/health: 200".into())
        );
        assert_eq!(
            check(502, "ok", Some("ok")),
            (
                false,
                "GET http://h/health: status 502, expected 200".into()
            )
        );
        assert_eq!(
            check(200, "starting", Some("ready")),
            (false, "GET http://h/health: body lacks \"ready\"".into())
        );
        assert!(check(200, "all ready", Some("ready")).0);
    }
}
