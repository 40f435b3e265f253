//! The error type of starting and running a node.

use crate::config::ConfigError;

/// Why a node could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unsafe or inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node address is not a valid node id.
    #[error("invalid node address: {0}")]
    Node(#[from] imclient::Error),
    /// The token secret cannot be used.
    #[error(transparent)]
    Token(#[from] imclient::token::TokenError),
    /// The Redis URL is invalid.
    #[error("invalid Redis URL: {0}")]
    Redis(#[from] redis::RedisError),
    /// The Redis pool could not be built.
    #[error("cannot build the Redis pool: {0}")]
    Pool(#[from] deadpool_redis::CreatePoolError),
    /// The Redis URL (one server's or a cluster's) cannot be used.
    #[error("cannot use the Redis URL: {0}")]
    Store(imclient::Error),
    /// The HTTP API's imclient cannot be built from the node's settings.
    #[error("cannot start the HTTP API: {0}")]
    Api(imclient::Error),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Binding or serving HTTP failed.
    #[error("HTTP server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Result of starting or running a node.
pub type Result<T, E = Error> = std::result::Result<T, E>;
