//! The secrets among the settings: API keys and webhook signing secrets. Neither shows in
//! `Debug` output, so a logged configuration leaks nothing, and each is checked here before
//! the node starts.

use super::{Config, ConfigError};

/// A key of the HTTP API. Its `Debug` never shows it, so a logged config does not leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key as given.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl std::str::FromStr for ApiKey {
    type Err = std::convert::Infallible;

    fn from_str(key: &str) -> Result<Self, Self::Err> {
        Ok(Self(key.trim().to_owned()))
    }
}

/// A webhook signing secret as given, `whsec_<base64>`. Its `Debug` never shows it, and it is
/// decoded by [`WebhookSecret::key`] rather than by clap, whose refusals repeat the value.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// The HMAC key: the bytes the base64 after `whsec_` stands for. The refusal never repeats
    /// the secret.
    pub fn key(&self) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        let how = "generate one with `echo whsec_$(openssl rand -base64 32)`";
        let encoded = self
            .0
            .strip_prefix("whsec_")
            .ok_or_else(|| format!("a webhook secret starts with whsec_; {how}"))?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| {
                format!("the part of a webhook secret after whsec_ is not base64; {how}")
            })?;
        if key.len() < MIN_WEBHOOK_SECRET_BYTES {
            return Err(format!(
                "a webhook secret must hold at least {MIN_WEBHOOK_SECRET_BYTES} bytes; {how}"
            ));
        }
        Ok(key)
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl std::str::FromStr for WebhookSecret {
    type Err = std::convert::Infallible;

    fn from_str(secret: &str) -> Result<Self, Self::Err> {
        Ok(Self(secret.trim().to_owned()))
    }
}

/// Shortest webhook secret accepted, in bytes once decoded (Standard Webhooks recommends 24
/// to 64).
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 16;

/// Shortest API key accepted, in bytes: too short to guess at the rate a listener answers.
pub const MIN_API_KEY_BYTES: usize = 16;

impl Config {
    /// Refuses an HTTP API anyone could call: no key outside dev mode, a short key, dev mode
    /// on a public address, or limits of zero.
    pub(super) fn check_api(&self) -> Result<(), ConfigError> {
        let Some(api) = self.api_listen else {
            return Ok(());
        };
        if self.api_keys.is_empty() && !self.dev {
            return Err(ConfigError::Api(
                "give at least one --api-key (IM_API_KEYS): without one anyone who reaches the \
                 listener could send messages and kick clients"
                    .into(),
            ));
        }
        if self
            .api_keys
            .iter()
            .any(|k| k.expose().len() < MIN_API_KEY_BYTES)
        {
            return Err(ConfigError::Api(format!(
                "every --api-key must be at least {MIN_API_KEY_BYTES} bytes; generate one with \
                 `openssl rand -hex 32`"
            )));
        }
        if self.dev && !self.dev_public && !api.ip().is_loopback() {
            return Err(ConfigError::DevPublic(api));
        }
        for (name, value) in [
            ("api-max-body-bytes", self.api_max_body_bytes),
            ("api-max-batch", self.api_max_batch),
            ("api-timeout-ms", self.api_timeout_ms as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.api_rate > 0 && self.api_burst == 0 {
            return Err(ConfigError::Zero("api-burst"));
        }
        Ok(())
    }

    /// Refuses webhooks nobody could trust or that could not work: unsigned outside dev mode,
    /// a URL that is not http(s), limits of zero, a claim that would take a batch from a node
    /// still posting it.
    pub(super) fn check_webhooks(&self) -> Result<(), ConfigError> {
        let Some(url) = &self.webhook_url else {
            return Ok(());
        };
        let bad = |why: String| Err(ConfigError::Webhook(why));
        if self.webhook_secrets.is_empty() && !self.dev {
            return bad(
                "give at least one --webhook-secret (IM_WEBHOOK_SECRETS): receivers \
                 cannot tell unsigned events from forged ones; generate one with \
                 `echo whsec_$(openssl rand -base64 32)`"
                    .into(),
            );
        }
        for secret in &self.webhook_secrets {
            secret.key().map_err(ConfigError::WebhookSecret)?;
        }
        match reqwest::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {}
            _ => return bad(format!("{url:?} is not an http:// or https:// URL")),
        }
        for (name, value) in [
            ("webhook-timeout-ms", self.webhook_timeout_ms),
            ("webhook-max-attempts", u64::from(self.webhook_max_attempts)),
            ("webhook-batch", self.webhook_batch as u64),
            ("webhook-retry-ms", self.webhook_retry_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.webhook_claim_idle_ms <= self.webhook_timeout_ms {
            return bad(format!(
                "--webhook-claim-idle-ms ({}) must be above --webhook-timeout-ms ({}), or a \
                 batch still being posted is claimed by another node",
                self.webhook_claim_idle_ms, self.webhook_timeout_ms
            ));
        }
        Ok(())
    }
}
