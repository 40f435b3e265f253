//! One webhook post: the body, the Standard Webhooks 1.0 headers and signatures, the HTTP
//! request (bounded by the timeout, never following a redirect), and the wait between attempts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use imclient::EventEntry;
use serde::Serialize;
use sha2::Sha256;

use crate::config::{Config, ConfigError};

/// Longest wait between two attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// The body's `type`: the events are presence events.
const BODY_TYPE: &str = "presence";

/// The webhook settings of a node, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where events are posted.
    pub url: reqwest::Url,
    /// HMAC keys; every post carries one signature per key (several while rotating). Empty
    /// only in dev mode.
    keys: Vec<SigningKey>,
    /// Longest one post may take, connecting included.
    pub timeout: Duration,
    /// Posts of one batch before it is dead-lettered; at least 1.
    pub max_attempts: u32,
    /// Most events per post; at least 1.
    pub batch: usize,
    /// Wait before the first retry; doubled at each retry up to [`MAX_RETRY_DELAY`].
    pub retry: Duration,
    /// How long a batch may stay unacknowledged before another node claims it.
    pub claim_idle: Duration,
}

/// An HMAC key. Its `Debug` never shows it.
#[derive(Clone)]
struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl Settings {
    /// The webhook settings of `config`, `None` when `--webhook-url` is not set.
    pub fn from_config(config: &Config) -> Result<Option<Self>, ConfigError> {
        let Some(url) = &config.webhook_url else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(url)
            .map_err(|e| ConfigError::Webhook(format!("{url:?} is not a URL: {e}")))?;
        let keys = config
            .webhook_secrets
            .iter()
            .map(|s| s.key().map(SigningKey))
            .collect::<Result<_, _>>()
            .map_err(ConfigError::WebhookSecret)?;
        Ok(Some(Self {
            url,
            keys,
            timeout: Duration::from_millis(config.webhook_timeout_ms),
            max_attempts: config.webhook_max_attempts.max(1),
            batch: config.webhook_batch.max(1),
            retry: Duration::from_millis(config.webhook_retry_ms),
            claim_idle: Duration::from_millis(config.webhook_claim_idle_ms),
        }))
    }

    /// Whether posts are signed (not in dev mode without a secret).
    pub fn signed(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The `webhook-signature` header: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
    /// per key, space-separated; `None` without keys (dev mode).
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> Option<String> {
        let signed: Vec<String> = self
            .keys
            .iter()
            .filter_map(|key| {
                let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).ok()?;
                mac.update(format!("{id}.{timestamp}.").as_bytes());
                mac.update(body);
                let tag = mac.finalize().into_bytes();
                Some(format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode(tag)
                ))
            })
            .collect();
        (!signed.is_empty()).then(|| signed.join(" "))
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    events: &'a [EventEntry],
}

/// The JSON body of a post of `events`.
pub fn body(events: &[EventEntry]) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Body {
        kind: BODY_TYPE,
        events,
    })
}

/// The `webhook-id` of a batch: made of its first and last event ids, so it is the same at
/// every attempt, after a claim by another node and after a replay.
pub fn message_id(events: &[EventEntry]) -> String {
    let first = events.first().map_or("", |e| e.id.as_str());
    let last = events.last().map_or("", |e| e.id.as_str());
    format!("msg_{first}_{last}")
}

/// The wait after failed attempt `failed` (1 for the first): `retry` doubled per failure up
/// to a minute, of which a random half is taken off (jitter), so that nodes retrying the same
/// receiver do not come back in step.
pub fn retry_delay(retry: Duration, failed: u32) -> Duration {
    let full = retry
        .saturating_mul(1u32 << failed.saturating_sub(1).min(20))
        .min(MAX_RETRY_DELAY);
    // Random enough for jitter, and no extra dependency: a v4 UUID's random bits.
    let random = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
    full / 2 + (full / 2) * random / 1000
}

/// Posts batches to the receiver.
#[derive(Debug, Clone)]
pub struct Poster {
    http: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
}

impl Poster {
    /// A client that never follows redirects (a receiver must not send our signed events to
    /// another host) and gives up on a post after the timeout.
    pub fn new(settings: &Settings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("imserver-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            url: settings.url.clone(),
            timeout: settings.timeout,
        })
    }

    /// One attempt: posts `body` as message `id`, signed now. `Err` says why it failed, fit
    /// for a log line (never with the URL, whose query may hold a receiver's token).
    pub async fn post(&self, settings: &Settings, id: &str, body: &[u8]) -> Result<(), String> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut request = self
            .http
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .body(body.to_vec());
        if let Some(signature) = settings.signature(id, timestamp, body) {
            request = request.header("webhook-signature", signature);
        }
        match request.send().await {
            Ok(answer) if answer.status().is_success() => Ok(()),
            Ok(answer) if answer.status().is_redirection() => Err(format!(
                "answered {} (redirects are not followed: point --webhook-url at the final URL)",
                answer.status().as_u16()
            )),
            Ok(answer) => Err(format!("answered {}", answer.status().as_u16())),
            Err(e) if e.is_timeout() => {
                Err(format!("no answer within {} ms", self.timeout.as_millis()))
            }
            Err(e) => {
                // reqwest's own message is vague ("error sending request"): the causes say more.
                let e = e.without_url();
                let mut reason = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    reason.push_str(": ");
                    reason.push_str(&c.to_string());
                    cause = c.source();
                }
                Err(reason)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(secrets: &[&str]) -> Settings {
        let mut args = vec![
            "imserver",
            "--dev",
            "--webhook-url",
            "https://hooks.example.com/im",
        ];
        for s in secrets {
            args.extend(["--webhook-secret", s]);
        }
        let config = <Config as clap::Parser>::try_parse_from(args).expect("parses");
        Settings::from_config(&config)
            .expect("valid")
            .expect("webhooks on")
    }

    #[test]
    fn signs_as_the_standard_webhooks_reference_vector() {
        // The vector of the Standard Webhooks reference libraries' tests.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let s = settings(&[secret]);
        let sig = s.signature(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        // Two secrets: two signatures, the old one's first.
        let two = settings(&[secret, "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"]);
        let header = two.signature("m", 1, b"{}").expect("signed");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.starts_with(&s.signature("m", 1, b"{}").expect("signed")));
        assert_eq!(settings(&[]).signature("m", 1, b"{}"), None);
    }

    #[test]
    fn retries_wait_longer_each_time_within_the_cap() {
        let base = Duration::from_millis(100);
        for failed in 1..30 {
            let full = (base * 2u32.pow(failed.min(20) - 1)).min(MAX_RETRY_DELAY);
            let wait = retry_delay(base, failed);
            assert!(wait >= full / 2 && wait <= full, "{failed}: {wait:?}");
        }
    }
}
