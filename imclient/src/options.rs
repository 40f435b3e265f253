//! [`ImClientOptions`]: what an [`ImClient`](crate::ImClient) is built from (the Redis, the node
//! list, the token secret or signing key) and the defaults of everything else.

use std::time::Duration;

use deadpool_redis::Pool;

use crate::store::RedisTimeouts;
use crate::token::TokenIssuer;

/// Default lifetime of a connect token: long enough to open a socket, short enough that a
/// leaked URL is soon useless.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Default largest payload, in bytes of JSON.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Default key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "im";
/// Default longest wait of a join for the home node's acknowledgement.
pub const DEFAULT_JOIN_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Where imclient gets its Redis connections.
#[derive(Clone)]
pub enum RedisSource {
    /// Build a pool from this URL: one server's (`redis://127.0.0.1:6379`) or a Redis
    /// Cluster's (`redis+cluster://10.0.0.1:7000,10.0.0.2:7000`, see [`crate::store`]).
    Url(String),
    /// Use a pool the application already has.
    Pool(Pool),
    /// Use a Redis Cluster pool the application already has.
    ClusterPool(deadpool_redis::cluster::Pool),
}

impl std::fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisSource::Url(url) => f.debug_tuple("Url").field(url).finish(),
            RedisSource::Pool(_) => f.write_str("Pool(..)"),
            RedisSource::ClusterPool(_) => f.write_str("ClusterPool(..)"),
        }
    }
}

/// Options for [`ImClient::new`](crate::ImClient::new).
///
/// ```
/// use std::time::Duration;
/// use imclient::ImClientOptions;
/// let opts = ImClientOptions::new(
///     "redis://127.0.0.1:6379",
///     ["ws://127.0.0.1:6001", "ws://127.0.0.1:6002"],
///     "a-long-random-secret-of-32-bytes",
/// )
/// .token_ttl(Duration::from_secs(30))
/// .key_prefix("chat");
/// ```
#[derive(Clone)]
pub struct ImClientOptions {
    /// Redis to talk to. No default.
    pub redis: RedisSource,
    /// Node addresses as browsers reach them; the same list every node and backend uses.
    pub nodes: Vec<String>,
    /// Secret shared with the nodes (IM_TOKEN_SECRET); at least 16 bytes.
    pub token_secret: Vec<u8>,
    /// Lifetime of connect tokens. Default [`DEFAULT_TOKEN_TTL`].
    pub token_ttl: Duration,
    /// Prefix of every Redis name, so several apps can share one Redis. Default `im`.
    pub key_prefix: String,
    /// Largest payload accepted, in bytes of JSON. Default [`DEFAULT_MAX_PAYLOAD_BYTES`].
    pub max_payload_bytes: usize,
    /// Longest a join of an online client waits for its home node to say the channel reaches
    /// it. Default [`DEFAULT_JOIN_ACK_TIMEOUT`].
    pub join_ack_timeout: Duration,
    /// Signs tokens instead of the shared secret, e.g. with a private key whose public half
    /// the nodes hold. Default: HS256 with `token_secret`.
    pub signing_key: Option<TokenIssuer>,
    /// How long to wait for a Redis connection to open and for each reply, when imclient
    /// builds the pool from a URL. Default [`RedisTimeouts::default`] (2 s and 2 s).
    pub redis_timeouts: RedisTimeouts,
}

impl std::fmt::Debug for ImClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImClientOptions")
            .field("redis", &self.redis)
            .field("nodes", &self.nodes)
            .field("token_ttl", &self.token_ttl)
            .field("key_prefix", &self.key_prefix)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("join_ack_timeout", &self.join_ack_timeout)
            .field("redis_timeouts", &self.redis_timeouts)
            .finish_non_exhaustive()
    }
}

impl ImClientOptions {
    /// Options with a Redis URL, the node list and the token secret; the rest defaulted.
    pub fn new<N: Into<String>>(
        redis_url: impl Into<String>,
        nodes: impl IntoIterator<Item = N>,
        token_secret: impl AsRef<[u8]>,
    ) -> Self {
        Self {
            redis: RedisSource::Url(redis_url.into()),
            nodes: nodes.into_iter().map(Into::into).collect(),
            token_secret: token_secret.as_ref().to_vec(),
            token_ttl: DEFAULT_TOKEN_TTL,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            join_ack_timeout: DEFAULT_JOIN_ACK_TIMEOUT,
            signing_key: None,
            redis_timeouts: RedisTimeouts::default(),
        }
    }

    /// Sets how long to wait for a Redis connection to open and for each reply (when the pool
    /// is built from a URL). The reply timeout must be at least 500 ms.
    ///
    /// ```
    /// use std::time::Duration;
    /// use imclient::{ImClientOptions, store::RedisTimeouts};
    /// let opts = ImClientOptions::new("redis://127.0.0.1", ["ws://a:1"], "a-long-random-secret-of-32-bytes")
    ///     .redis_timeouts(RedisTimeouts { connect: Duration::from_secs(1), response: Duration::from_secs(5) });
    /// assert!(imclient::ImClient::new(opts).is_ok());
    /// ```
    pub fn redis_timeouts(mut self, timeouts: RedisTimeouts) -> Self {
        self.redis_timeouts = timeouts;
        self
    }

    /// Signs connect tokens with `issuer` (e.g. an EdDSA private key, named by a key id for
    /// rotation) instead of the shared secret, which may then be empty.
    ///
    /// ```
    /// use imclient::{ImClientOptions, token::{KeyAlgorithm, TokenIssuer}};
    /// let pem = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIP3VnQ85jmIYsXuJhUbPUbjhvYO3tGAT115nMZE9clqf\n-----END PRIVATE KEY-----\n";
    /// let key = TokenIssuer::from_pem(KeyAlgorithm::EdDsa, pem).unwrap().with_key_id("2026-11");
    /// let opts = ImClientOptions::new("redis://127.0.0.1", ["ws://a:1"], "").signing_key(key);
    /// assert!(imclient::ImClient::new(opts).is_ok());
    /// ```
    pub fn signing_key(mut self, issuer: TokenIssuer) -> Self {
        self.signing_key = Some(issuer);
        self
    }

    /// Uses an existing deadpool-redis pool instead of the URL.
    pub fn pool(mut self, pool: Pool) -> Self {
        self.redis = RedisSource::Pool(pool);
        self
    }

    /// Uses an existing deadpool-redis cluster pool instead of the URL.
    pub fn cluster_pool(mut self, pool: deadpool_redis::cluster::Pool) -> Self {
        self.redis = RedisSource::ClusterPool(pool);
        self
    }

    /// Sets the connect token lifetime.
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// Sets the Redis key prefix.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets the largest accepted payload.
    pub fn max_payload_bytes(mut self, limit: usize) -> Self {
        self.max_payload_bytes = limit;
        self
    }

    /// Sets how long a join of an online client waits for its home node's acknowledgement.
    pub fn join_ack_timeout(mut self, timeout: Duration) -> Self {
        self.join_ack_timeout = timeout;
        self
    }
}
