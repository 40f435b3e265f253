//! The error type of every imclient operation.

use crate::token::TokenError;

/// Result of an imclient operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in an imclient call. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The options given to [`crate::ImClient::new`] cannot work.
    #[error("invalid imclient options: {0}")]
    Options(String),

    /// A client id was empty, too long or held control characters.
    #[error("invalid client id {id:?}: {reason}; use 1 to 128 bytes without control characters")]
    ClientId {
        /// The rejected id.
        id: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A channel name was empty, too long or held characters that are not allowed.
    #[error(
        "invalid channel name {name:?}: {reason}; use 1 to 128 bytes without whitespace, control characters or braces"
    )]
    ChanName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A node address was empty or too long.
    #[error("invalid node address {0:?}: use 1 to 256 bytes, e.g. ws://127.0.0.1:6001")]
    NodeId(String),

    /// The node list is empty, so no client has a home node.
    #[error("the node list is empty: give ImClientOptions at least one node address")]
    NoNodes,

    /// The payload could not be serialized to JSON.
    #[error("payload is not serializable to JSON: {0}")]
    Payload(#[from] serde_json::Error),

    /// The serialized payload is larger than the configured limit.
    #[error(
        "payload is {size} bytes, over the {limit}-byte limit; send a link or raise max_payload_bytes"
    )]
    PayloadTooLarge {
        /// Serialized size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A message named no receiver.
    #[error("a message needs at least one receiver")]
    NoReceivers,

    /// A caller-chosen message id is not usable.
    #[error(
        "invalid message id {0:?}: use 1 to 64 ASCII letters, digits, '-' or '_', e.g. from new_message_id"
    )]
    InvalidMessageId(String),

    /// Signing a connect token failed.
    #[error(transparent)]
    Token(#[from] TokenError),

    /// Could not take a connection from the Redis pool (Redis down or pool exhausted).
    #[error("cannot reach Redis: {0}; check that Redis is running and the URL is right")]
    Pool(#[from] deadpool_redis::PoolError),

    /// The pool could not be built from the URL.
    #[error("cannot build the Redis pool: {0}; check the Redis URL")]
    CreatePool(#[from] deadpool_redis::CreatePoolError),

    /// A Redis command failed.
    #[error("Redis command failed: {0}")]
    Redis(#[from] redis::RedisError),

    /// Something stored in Redis under our prefix is not what we wrote there.
    #[error("malformed data in Redis at {key}: {reason}; another app may share the key prefix")]
    Malformed {
        /// The Redis key holding the bad data.
        key: String,
        /// What was wrong with it.
        reason: String,
    },
}
