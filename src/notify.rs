//! The webhooks of `notify:` in `pipeline.yaml` (edge): each
//! [`core::events::Event`](crate::core::events::Event) POSTed as JSON to
//! every webhook that wants it, in its format (generic JSON or Slack's
//! `{"text"}`), over reqwest with the one trust store (`tls::config`).
//!
//! A notification never changes a pipeline's outcome: each webhook gets up
//! to [`TRIES`] tries (5 s each; again after 0.5 s and 1 s on a 5xx, a 429
//! or no answer, never on another 4xx), and whatever happens is logged,
//! never returned. A webhook's URL is a credential (a Slack webhook's path
//! is its key): logs name it `webhook #N (host)`, never its path or query,
//! and every payload text is masked of the URLs before it is sent.
//!
//! **For scheduled checks** (scan, drift): build the event with
//! [`Event::check_failed`](crate::core::events::Event::check_failed) and
//! call [`send`] with the fleet's `pipeline.notify`:
//!
//! ```ignore
//! let event = Event::check_failed("scan", "3 blocking finding(s) in 2 image(s)", &clients);
//! crate::notify::send(&fleet.pipeline.notify, &event);
//! ```
//!
//! `send` fills in the CI run's page when the event has none.

use std::time::Duration;

use crate::config::{Webhook, WebhookFormat, WebhookTarget, url_host, webhook_label};
use crate::core::events::Event;
use crate::error::{Error, Result};
use crate::ports::Notifier;
use crate::secrets::Masker;

/// Tries per webhook and event.
pub const TRIES: usize = 3;
/// The wait before the second and the third try.
pub const BACKOFF: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(1)];
/// One try's budget, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The real [`Notifier`]: [`send`].
pub struct Webhooks;

impl Notifier for Webhooks {
    fn notify(&self, hooks: &[Webhook], event: &Event) -> Result<()> {
        send(hooks, event);
        Ok(())
    }
}

/// What one try came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Try {
    Delivered,
    /// Try again: a 5xx, a 429, no answer (the words say which).
    Again(String),
    /// Do not: any other status (a 4xx: the webhook refuses this payload).
    Refused(String),
}

/// The answer's status as a try's result.
fn judge(status: u16) -> Try {
    match status {
        200..=299 => Try::Delivered,
        429 | 500..=599 => Try::Again(status.to_string()),
        _ => Try::Refused(status.to_string()),
    }
}

/// Sends `event` to each of `hooks` that wants it; logs what happened.
/// Never fails: a webhook that cannot be told is a warning in the log.
pub fn send(hooks: &[Webhook], event: &Event) {
    let hooks: Vec<&Webhook> = hooks.iter().filter(|h| h.wants(event.kind)).collect();
    if hooks.is_empty() {
        return;
    }
    let mut targets = Vec::new();
    for hook in hooks {
        let url = match &hook.target {
            WebhookTarget::Url(url) => url.clone(),
            WebhookTarget::Env(name) => match std::env::var(name) {
                Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
                _ => {
                    tracing::warn!(
                        "notify: webhook #{}: ${name} is not set: skipped",
                        hook.number
                    );
                    continue;
                }
            },
        };
        if url_host(&url).is_none() {
            tracing::warn!(
                "notify: webhook #{}: the URL in ${} is not an http:// or https:// URL with a host: skipped",
                hook.number,
                match &hook.target {
                    WebhookTarget::Env(name) => name.as_str(),
                    WebhookTarget::Url(_) => "url",
                }
            );
            continue;
        }
        targets.push((hook, url));
    }
    if targets.is_empty() {
        return;
    }
    let masker = masker(targets.iter().map(|(_, url)| url.as_str()));
    let mut event = event.masked(&|s: &str| masker.mask(s));
    if event.run_url.is_none() {
        event.run_url = crate::forge::env::run_page().ok().flatten();
    }
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("notify: {}: nothing sent", e.headline());
            return;
        }
    };
    let run = || {
        let rt = match crate::rt::runtime() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::warn!("notify: {}: nothing sent", e.headline());
                return;
            }
        };
        for (hook, url) in &targets {
            let payload = match hook.format {
                WebhookFormat::Json => event.json(),
                WebhookFormat::Slack => event.slack(),
            };
            let label = webhook_label(hook.number, url);
            let (result, tries) = rt.block_on(deliver(&client, url, &payload));
            match result {
                Try::Delivered if tries == 1 => {
                    tracing::info!("notify: {label}: {} sent", event.kind.as_str())
                }
                Try::Delivered => tracing::info!(
                    "notify: {label}: {} sent on try {tries}",
                    event.kind.as_str()
                ),
                Try::Again(why) | Try::Refused(why) => tracing::warn!(
                    "notify: {label} failed: {}, {tries} tr{}; the pipeline goes on",
                    masker.mask(&why),
                    if tries == 1 { "y" } else { "ies" }
                ),
            }
        }
    };
    // Inside another runtime (tokio refuses a nested `block_on`), on a
    // thread of its own.
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(run);
        });
    } else {
        run();
    }
}

/// `tls::api_client`'s settings (the one trust store, the User-Agent),
/// with [`TIMEOUT`] per try and no redirects: a webhook's POST is never
/// replayed to another address (nor turned into a GET that "succeeds").
fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls(crate::tls::config()?.as_ref().clone())
        .user_agent(concat!("fleetgate/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| {
            Error::Remote(format!("set up the HTTP client: {}", crate::tls::describe(e)).into())
        })
}

/// Up to [`TRIES`] POSTs of `payload`: the last try's result and how many.
async fn deliver(client: &reqwest::Client, url: &str, payload: &serde_json::Value) -> (Try, usize) {
    let mut tries = 0;
    loop {
        tries += 1;
        let result = match client.post(url).json(payload).send().await {
            Ok(answer) => judge(answer.status().as_u16()),
            Err(e) => Try::Again(format!("no answer ({})", crate::tls::describe(e))),
        };
        match result {
            Try::Again(why) if tries < TRIES => {
                tracing::debug!("notify: try {tries} failed: {why}; again");
                tokio::time::sleep(BACKOFF[tries - 1]).await;
            }
            done => return (done, tries),
        }
    }
}

/// Masks each webhook URL, and its path and query alone, out of a text.
fn masker<'a>(urls: impl Iterator<Item = &'a str>) -> Masker {
    let mut values = Vec::new();
    for url in urls {
        values.push(url.to_string());
        if let Some(host) = url_host(url)
            && let Some((_, rest)) = url.split_once(host)
            && rest.len() > 1
        {
            values.push(rest.to_string());
        }
    }
    Masker::new(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_answers_are_tried_again() {
        assert_eq!(judge(200), Try::Delivered);
        assert_eq!(judge(204), Try::Delivered);
        assert_eq!(judge(500), Try::Again("500".into()));
        assert_eq!(judge(502), Try::Again("502".into()));
        assert_eq!(judge(429), Try::Again("429".into()));
        assert_eq!(judge(404), Try::Refused("404".into()));
        assert_eq!(judge(400), Try::Refused("400".into()));
        assert_eq!(judge(302), Try::Refused("302".into()));
    }

    #[test]
    fn urls_and_their_keys_are_masked() {
        let m = masker(["https://hooks.slack.com/services/T0/B0/key"].into_iter());
        assert_eq!(
            m.mask("a https://hooks.slack.com/services/T0/B0/key b /services/T0/B0/key"),
            "a •••• b ••••"
        );
    }
}
