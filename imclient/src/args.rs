//! Command-line flags with `IM_*` environment fallbacks for building an [`ImClient`]
//! (feature `clap`), so every backend reads the same settings the same way.

use crate::client::ImClient;
use crate::error::Result;
use crate::options::ImClientOptions;
use crate::store::RedisTimeouts;
use crate::token::{KeyAlgorithm, TokenError, TokenIssuer, resolve_secret};

/// Flags to flatten into a backend's own clap config.
///
/// ```
/// use clap::Parser;
/// #[derive(Parser)]
/// struct Config {
///     #[command(flatten)]
///     im: imclient::ImClientArgs,
/// }
/// let config = Config::parse_from(["app", "--dev", "--nodes", "ws://a:1,ws://b:2"]);
/// assert_eq!(config.im.options().unwrap().nodes.len(), 2);
/// ```
#[derive(Debug, Clone, clap::Args)]
pub struct ImClientArgs {
    /// Redis URL shared with the nodes: one server's, or a Redis Cluster's seeds
    /// (redis+cluster://host1:7000,host2:7000).
    #[arg(long, env = "IM_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// The imserver nodes as browsers reach them, comma separated.
    #[arg(
        long,
        env = "IM_NODES",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:6001"
    )]
    pub nodes: Vec<String>,
    /// Secret shared with the nodes (at least 16 bytes). Required unless --dev.
    #[arg(long, env = "IM_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Dev mode: allows the built-in secret that `imserver --dev` uses.
    #[arg(long, env = "IM_DEV", default_value_t = false)]
    pub dev: bool,
    /// Prefix of every Redis name, as the nodes use.
    #[arg(long, env = "IM_KEY_PREFIX", default_value = "im")]
    pub key_prefix: String,
    /// A PEM private key (Ed25519 or RSA) to sign tokens with instead of the secret; the
    /// nodes hold its public half (`imserver --token-key`).
    #[arg(long, env = "IM_TOKEN_PRIVATE_KEY")]
    pub token_private_key: Option<std::path::PathBuf>,
    /// The key id put in tokens signed with --token-private-key, for rotation.
    #[arg(long, env = "IM_TOKEN_KEY_ID")]
    pub token_key_id: Option<String>,

    /// Longest wait for a connection to Redis to open, in milliseconds (the nodes' setting of
    /// the same name).
    #[arg(long, env = "IM_REDIS_CONNECT_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_connect_timeout_ms: u64,

    /// Longest wait for each Redis reply, in milliseconds; at least 500.
    #[arg(long, env = "IM_REDIS_RESPONSE_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_response_timeout_ms: u64,
}

impl ImClientArgs {
    /// The options these flags describe. Refuses a missing secret, or the dev secret, outside
    /// dev mode.
    pub fn options(&self) -> Result<ImClientOptions> {
        let options = match &self.token_private_key {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    TokenError::BadKey(format!("cannot read {}: {e}", path.display()))
                })?;
                // An Ed25519 key signs EdDSA tokens, an RSA key RS256 ones.
                let mut issuer = TokenIssuer::from_pem(KeyAlgorithm::EdDsa, &pem)
                    .or_else(|_| TokenIssuer::from_pem(KeyAlgorithm::Rs256, &pem))?;
                if let Some(kid) = &self.token_key_id {
                    issuer = issuer.with_key_id(kid);
                }
                ImClientOptions::new(&self.redis_url, self.nodes.clone(), "").signing_key(issuer)
            }
            None => {
                let secret = resolve_secret(self.token_secret.as_deref(), self.dev)?;
                ImClientOptions::new(&self.redis_url, self.nodes.clone(), secret)
            }
        };
        Ok(options
            .key_prefix(&self.key_prefix)
            .redis_timeouts(RedisTimeouts {
                connect: std::time::Duration::from_millis(self.redis_connect_timeout_ms),
                response: std::time::Duration::from_millis(self.redis_response_timeout_ms),
            }))
    }

    /// Builds the client.
    pub fn client(&self) -> Result<ImClient> {
        ImClient::new(self.options()?)
    }
}
