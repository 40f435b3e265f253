//! Replaying the dead-letter stream: `imserver webhook-replay`, with the node's flags, posts
//! each dead-lettered batch again (same `webhook-id`, signed anew), oldest first, and deletes
//! it once the receiver answers 2xx. It stops at the first failure, so that a receiver still
//! down is not hammered; what is left stays for the next replay.

use imclient::store::Store;
use redis::AsyncCommands as _;
use redis::streams::StreamRangeReply;

use super::post::{Poster, Settings};
use crate::config::{Config, ConfigError};

/// The dead-letter entry field holding the batch's `webhook-id`.
pub const ID_FIELD: &str = "webhook-id";
/// The dead-letter entry field holding the batch's body, exactly as it was signed.
pub const BODY_FIELD: &str = "body";
/// Entries read per round.
const PAGE: usize = 100;

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Replayed {
    /// Batches the receiver acknowledged, now deleted from the dead-letter stream.
    pub replayed: u64,
    /// Batches left in the dead-letter stream.
    pub left: u64,
    /// Why the replay stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No webhook settings, or unusable ones.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Redis cannot be reached.
    #[error(transparent)]
    Redis(#[from] imclient::Error),
    /// A Redis command failed.
    #[error("Redis command failed: {0}")]
    Command(#[from] redis::RedisError),
    /// The HTTP client cannot be built.
    #[error("cannot build the webhook HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Posts the dead-lettered batches of `config`'s key prefix to its `--webhook-url`.
pub async fn replay(config: &Config) -> Result<Replayed, ReplayError> {
    config.validate()?;
    let settings = Settings::from_config(config)?.ok_or_else(|| {
        ConfigError::Webhook("webhook-replay needs --webhook-url (and its secrets)".into())
    })?;
    let poster = Poster::new(&settings)?;
    let store = Store::open_with(&config.redis_url, config.redis_timeouts())?;
    let keys = imclient::keys::Keys::new(&config.key_prefix).sharded(store.is_cluster());
    let key = keys.webhook_dead_letters();
    let mut done = Replayed::default();
    let mut after = "-".to_owned();
    'pages: loop {
        let mut conn = store.get().await?;
        let page: StreamRangeReply = conn.xrange_count(&key, &after, "+", PAGE).await?;
        drop(conn);
        if page.ids.is_empty() {
            break;
        }
        for entry in page.ids {
            after = format!("({}", entry.id);
            let id: Option<String> = entry.get(ID_FIELD);
            let body: Option<Vec<u8>> = entry.get(BODY_FIELD);
            let (Some(id), Some(body)) = (id, body) else {
                tracing::warn!(%key, entry = %entry.id, "skipping a dead-letter entry without a webhook id or body");
                continue;
            };
            match poster.post(&settings, &id, &body).await {
                Ok(()) => {
                    let mut conn = store.get().await?;
                    let _: i64 = conn.xdel(&key, &[&entry.id]).await?;
                    done.replayed += 1;
                    tracing::info!(webhook_id = %id, "dead-lettered webhook batch replayed");
                }
                Err(why) => {
                    done.stopped = Some(format!("webhook {id}: {why}"));
                    break 'pages;
                }
            }
        }
    }
    let mut conn = store.get().await?;
    done.left = conn.xlen(&key).await?;
    Ok(done)
}
