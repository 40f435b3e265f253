//! The node's configuration: flags with `IM_*` environment fallbacks and local-use defaults.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

mod secrets;

pub use imclient::token::DEV_SECRET;
use imclient::token::{TokenVerifier, resolve_secret};
pub use secrets::{ApiKey, MIN_API_KEY_BYTES, MIN_WEBHOOK_SECRET_BYTES, WebhookSecret};

/// Configuration of one imserver node.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "imserver",
    version,
    about = "Push node of the imserver cluster",
    after_help = "`imserver webhook-replay <the same flags>` posts the webhook batches of the \
                  dead-letter stream again (docs/OPERATIONS.md)."
)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port.
    #[arg(long, env = "IM_LISTEN", default_value = "127.0.0.1:6001")]
    pub listen: SocketAddr,

    /// This node's address exactly as it appears in the node list given to imclient
    /// (e.g. ws://127.0.0.1:6001). Default: ws://<listen address as bound>, wss:// with TLS.
    #[arg(long, env = "IM_NODE")]
    pub node: Option<String>,

    /// Every node's address, comma-separated, exactly as imclient is given them (this node's
    /// among them). With it the node follows the live node set: clients whose home is another
    /// live node are closed with 4003 (moved) and refused. Without it, the node serves whoever
    /// its tokens name.
    #[arg(long, env = "IM_NODES", value_delimiter = ',')]
    pub nodes: Vec<String>,

    /// PEM certificate chain: the node serves wss:// itself (and https:// for /healthz and
    /// /metrics). Reloaded, with --tls-key, on SIGHUP without dropping connections.
    #[arg(long, env = "IM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "IM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Redis URL: one server's (redis://, rediss://) or a Redis Cluster's seeds
    /// (redis+cluster://host1:7000,host2:7000).
    #[arg(long, env = "IM_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Longest wait for a connection to Redis to open, in milliseconds.
    #[arg(long, env = "IM_REDIS_CONNECT_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_connect_timeout_ms: u64,

    /// Longest wait for each Redis reply, in milliseconds; at least 500 (blocking reads wait
    /// up to 250 ms for data). A node learns of a hung Redis within it.
    #[arg(long, env = "IM_REDIS_RESPONSE_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_response_timeout_ms: u64,

    /// Secret shared with imclient to check connect tokens (at least 16 bytes). Required
    /// unless --dev or --token-key.
    #[arg(long, env = "IM_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// A second HS256 secret accepted while rotating the shared secret: backends move to the
    /// new --token-secret, then this one is removed.
    #[arg(long, env = "IM_TOKEN_SECRET_PREVIOUS", hide_env_values = true)]
    pub token_secret_previous: Option<String>,

    /// A public key tokens may be signed with, as KEY_ID=PATH to a PEM Ed25519 (EdDSA) or RSA
    /// (RS256) public key; repeat the flag (or comma-separate IM_TOKEN_KEYS) to accept several
    /// during a rotation. With keys, the node needs no secret: backends sign with the private
    /// halves, which the nodes never hold.
    #[arg(long = "token-key", env = "IM_TOKEN_KEYS", value_delimiter = ',')]
    pub token_keys: Vec<String>,

    /// Dev mode: allows the built-in secret. Never in production. Listens on loopback only,
    /// unless --dev-public says otherwise.
    #[arg(long, env = "IM_DEV", default_value_t = false)]
    pub dev: bool,

    /// Lets a dev-mode node listen on a non-loopback address, where anyone who knows the
    /// built-in secret can sign tokens for it.
    #[arg(long, env = "IM_DEV_PUBLIC", default_value_t = false)]
    pub dev_public: bool,

    /// Prefix of every Redis name; must match imclient's.
    #[arg(long, env = "IM_KEY_PREFIX", default_value = "im")]
    pub key_prefix: String,

    /// How often the node pings each connection, in milliseconds.
    #[arg(long, env = "IM_HEARTBEAT_INTERVAL_MS", default_value_t = 15_000)]
    pub heartbeat_interval_ms: u64,

    /// Close a connection silent for this long, in milliseconds. At least twice the interval.
    #[arg(long, env = "IM_HEARTBEAT_TIMEOUT_MS", default_value_t = 30_000)]
    pub heartbeat_timeout_ms: u64,

    /// Frames queued per connection before it is closed as a slow consumer.
    #[arg(long, env = "IM_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,

    /// Open connections allowed per client id on this node.
    #[arg(long, env = "IM_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 8)]
    pub max_connections_per_client: usize,

    /// Open connections allowed on this node.
    #[arg(long, env = "IM_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Connections one IP address may hold open on this node; 0: no limit (the default, as
    /// many users can share an address behind a NAT).
    #[arg(long, env = "IM_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: u32,

    /// Connection attempts one IP address may make per second; 0: no limit.
    #[arg(long, env = "IM_MAX_CONNECTS_PER_IP_PER_SEC", default_value_t = 0)]
    pub max_connects_per_ip_per_sec: u32,

    /// How long a new connection may take to send its whole request head, in milliseconds;
    /// slower ones get 408 `request_timeout` (the defence against slowloris). actix-http keeps
    /// time on a clock it updates every 500 ms, so the real deadline can be that much shorter.
    #[arg(long, env = "IM_REQUEST_HEAD_TIMEOUT_MS", default_value_t = 5000)]
    pub request_head_timeout_ms: u64,

    /// Largest frame a client may send, in bytes (only small control frames are allowed).
    #[arg(long, env = "IM_MAX_INBOUND_FRAME_BYTES", default_value_t = 1024)]
    pub max_inbound_frame_bytes: usize,

    /// Lifetime of this node's lease in Redis, in milliseconds; renewed every third of it.
    /// A dead node's clients are reported offline within about this long.
    #[arg(long, env = "IM_LEASE_MS", default_value_t = 10_000)]
    pub lease_ms: u64,

    /// Approximate cap on the online/offline event stream length.
    #[arg(long, env = "IM_EVENTS_MAXLEN", default_value_t = 100_000)]
    pub events_maxlen: u64,

    /// Longest a graceful shutdown may take, in milliseconds.
    #[arg(long, env = "IM_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,

    /// How long a stopping node passes on what still arrives for the clients it handed to
    /// other nodes, in milliseconds (a rolling restart loses nothing sent meanwhile). Spent
    /// only when it handed some over; must be under half of --shutdown-timeout-ms.
    #[arg(long, env = "IM_SHUTDOWN_GRACE_MS", default_value_t = 3_000)]
    pub shutdown_grace_ms: u64,

    /// Origins whose pages may connect besides the node's own, comma-separated (e.g.
    /// https://chat.example.com). A WebSocket request with an `Origin` header that is neither
    /// listed nor the node's own (by its `Host` header) is refused (403 `origin_not_allowed`);
    /// requests without one (apps, servers) are not browsers and are let through. Empty: only
    /// the node's own origin, or every origin with --dev.
    #[arg(long, env = "IM_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// How long a client's recent envelopes and channel subscriptions are kept after its last
    /// connection closes, in milliseconds, so that it can resume (`since`) without losing
    /// anything. 0 turns recovery off.
    #[arg(long, env = "IM_RECOVERY_WINDOW_MS", default_value_t = 120_000)]
    pub recovery_window_ms: u64,

    /// Envelopes kept per client for recovery.
    #[arg(long, env = "IM_RECOVERY_MAX_ENVELOPES", default_value_t = 512)]
    pub recovery_max_envelopes: usize,

    /// Oldest envelope kept for recovery, in milliseconds.
    #[arg(long, env = "IM_RECOVERY_MAX_AGE_MS", default_value_t = 120_000)]
    pub recovery_max_age_ms: u64,

    /// Bytes of envelopes kept per client for recovery.
    #[arg(long, env = "IM_RECOVERY_CLIENT_MAX_BYTES", default_value_t = 256 * 1024)]
    pub recovery_client_max_bytes: usize,

    /// Bytes of envelopes kept by the whole node for recovery; past it, the oldest recovery
    /// windows end first.
    #[arg(long, env = "IM_RECOVERY_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub recovery_max_bytes: usize,

    /// Fault injection for tests: hold each channel-membership load result this long before
    /// applying it, widening the window in which membership changes race a connect.
    #[arg(
        long,
        env = "IM_FAULT_MEMBERSHIP_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    pub fault_membership_delay_ms: u64,

    /// Log lines as text (coloured only on a terminal) or as one JSON object per line, for
    /// log shippers.
    #[arg(long, env = "IM_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// HTTP worker threads: they accept connections, read requests and run WebSocket
    /// handshakes. Default: one per core.
    #[arg(long, env = "IM_WORKERS")]
    pub workers: Option<usize>,

    /// Address of the HTTP API listener (docs/API.md), e.g. 10.0.0.5:7001 on an internal
    /// network. Off unless set. Needs --api-key (except in --dev).
    #[arg(long, env = "IM_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,

    /// A key callers of the HTTP API must send (`Authorization: Bearer <key>`), at least 16
    /// bytes; repeat the flag (or comma-separate IM_API_KEYS) to accept several while rotating.
    #[arg(
        long = "api-key",
        env = "IM_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<ApiKey>,

    /// HTTP API requests one key may make per second, on average; 0: no limit.
    #[arg(long, env = "IM_API_RATE", default_value_t = 1000)]
    pub api_rate: u32,

    /// HTTP API requests one key may make at once above --api-rate.
    #[arg(long, env = "IM_API_BURST", default_value_t = 2000)]
    pub api_burst: u32,

    /// Largest HTTP API request body, in bytes; larger ones get 413.
    #[arg(long, env = "IM_API_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub api_max_body_bytes: usize,

    /// Most calls one HTTP API batch may carry; more get 413.
    #[arg(long, env = "IM_API_MAX_BATCH", default_value_t = 100)]
    pub api_max_batch: usize,

    /// Longest an HTTP API call may wait on Redis, in milliseconds; past it the call is
    /// answered 503. Above imclient's join acknowledgement wait (2 s).
    #[arg(long, env = "IM_API_TIMEOUT_MS", default_value_t = 5000)]
    pub api_timeout_ms: u64,

    /// URL the node posts online/offline events to, signed as Standard Webhooks 1.0 says
    /// (docs/API.md, "Webhooks"). Off unless set. Needs --webhook-secret (except in --dev).
    #[arg(long, env = "IM_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// A secret to sign webhooks with, `whsec_` and the base64 of at least 16 random bytes;
    /// repeat the flag (or comma-separate IM_WEBHOOK_SECRETS) while rotating: every post is
    /// signed with each.
    #[arg(
        long = "webhook-secret",
        env = "IM_WEBHOOK_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub webhook_secrets: Vec<WebhookSecret>,

    /// Longest one webhook post may take, connecting included, in milliseconds; past it the
    /// post counts as failed and is retried.
    #[arg(long, env = "IM_WEBHOOK_TIMEOUT_MS", default_value_t = 5000)]
    pub webhook_timeout_ms: u64,

    /// Posts of one batch before it goes to the dead-letter stream.
    #[arg(long, env = "IM_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    pub webhook_max_attempts: u32,

    /// Most events in one webhook post.
    #[arg(long, env = "IM_WEBHOOK_BATCH", default_value_t = 100)]
    pub webhook_batch: usize,

    /// Wait before the first retry of a webhook post, in milliseconds; doubled at each retry
    /// (up to a minute), with jitter.
    #[arg(long, env = "IM_WEBHOOK_RETRY_MS", default_value_t = 500)]
    pub webhook_retry_ms: u64,

    /// How long a webhook batch may stay unacknowledged by the node that read it before
    /// another node claims it, in milliseconds (that node died). Above --webhook-timeout-ms.
    #[arg(long, env = "IM_WEBHOOK_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub webhook_claim_idle_ms: u64,

    /// Threads of the runtime that runs the sessions of `ws://` connections together with
    /// the Redis subscriber that feeds them. Default: one per core. 0 keeps each session on
    /// the HTTP worker that accepted it and the subscriber on a thread of its own: more CPU
    /// per delivery, but a lower private-message p99 on a saturated machine.
    #[arg(long, env = "IM_SESSION_THREADS")]
    pub session_threads: Option<usize>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration that must not run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No usable token secret: missing, the dev secret outside dev mode, or too short.
    #[error(transparent)]
    Secret(#[from] imclient::token::TokenError),
    /// A shutdown grace that leaves the rest of the shutdown no time.
    #[error(
        "shutdown grace ({grace} ms) must be under half of the shutdown timeout ({timeout} ms)"
    )]
    ShutdownGrace {
        /// Grace in ms.
        grace: u64,
        /// Timeout in ms.
        timeout: u64,
    },
    /// Heartbeat settings that would close healthy connections.
    #[error("heartbeat timeout ({timeout} ms) must be at least twice the interval ({interval} ms)")]
    Heartbeat {
        /// Interval in ms.
        interval: u64,
        /// Timeout in ms.
        timeout: u64,
    },
    /// A zero limit.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// Redis timeouts that cannot work.
    #[error("--redis-connect-timeout-ms / --redis-response-timeout-ms: {0}")]
    RedisTimeouts(String),
    /// A key prefix that could collide with another app's.
    #[error("--key-prefix: {0}")]
    KeyPrefix(String),
    /// A token key that cannot be used.
    #[error("--token-key: {0}")]
    TokenKey(String),
    /// A node list that cannot be used.
    #[error("--nodes: {0}")]
    Nodes(String),
    /// HTTP API settings that cannot be served safely.
    #[error("--api-listen: {0}")]
    Api(String),
    /// Webhook settings that cannot be used.
    #[error("--webhook-url: {0}")]
    Webhook(String),
    /// A webhook secret that does not decode.
    #[error("--webhook-secret: {0}")]
    WebhookSecret(String),
    /// Dev mode on a public address.
    #[error(
        "--dev listens on loopback only ({0} is not): anyone could sign tokens with the built-in \
         secret; set a real --token-secret, or add --dev-public if you really mean it"
    )]
    DevPublic(SocketAddr),
    /// Too few open files for a node at all.
    #[error(
        "the open-file limit ({limit}) leaves no room for connections ({reserved} are needed \
         for the node itself); raise it (ulimit -n, LimitNOFILE=)"
    )]
    TooFewFiles {
        /// The limit in force.
        limit: u64,
        /// Files the node needs besides connections.
        reserved: u64,
    },
}

/// Files a node needs besides its connections: Redis connections, listeners, the runtime's
/// own descriptors, logs; generous on purpose.
pub const RESERVED_FILES: u64 = 128;

impl Config {
    /// Checks the settings and returns the token verifier they describe.
    pub fn validate(&self) -> Result<TokenVerifier, ConfigError> {
        let verifier = self.verifier()?;
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_timeout_ms < 2 * self.heartbeat_interval_ms
        {
            return Err(ConfigError::Heartbeat {
                interval: self.heartbeat_interval_ms,
                timeout: self.heartbeat_timeout_ms,
            });
        }
        for (name, value) in [
            ("queue-capacity", self.queue_capacity),
            (
                "max-connections-per-client",
                self.max_connections_per_client,
            ),
            ("max-connections", self.max_connections),
            ("max-inbound-frame-bytes", self.max_inbound_frame_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        imclient::keys::check_prefix(&self.key_prefix).map_err(ConfigError::KeyPrefix)?;
        self.redis_timeouts()
            .check()
            .map_err(ConfigError::RedisTimeouts)?;
        if self.dev && !self.dev_public && !self.listen.ip().is_loopback() {
            return Err(ConfigError::DevPublic(self.listen));
        }
        self.check_api()?;
        self.check_webhooks()?;
        if self.lease_ms < 300 {
            return Err(ConfigError::Zero("lease-ms (at least 300)"));
        }
        if self.shutdown_grace_ms * 2 >= self.shutdown_timeout_ms {
            return Err(ConfigError::ShutdownGrace {
                grace: self.shutdown_grace_ms,
                timeout: self.shutdown_timeout_ms,
            });
        }
        Ok(verifier)
    }

    /// The keys tokens are checked with: the public keys of --token-key, the secret (required
    /// when there are no keys, unless --dev) and the previous secret.
    fn verifier(&self) -> Result<TokenVerifier, ConfigError> {
        let mut verifier = TokenVerifier::empty();
        for entry in &self.token_keys {
            let (kid, path) = entry
                .split_once('=')
                .filter(|(kid, path)| !kid.is_empty() && !path.is_empty())
                .ok_or_else(|| ConfigError::TokenKey(format!("{entry:?} is not KEY_ID=PATH")))?;
            let pem = std::fs::read(path)
                .map_err(|e| ConfigError::TokenKey(format!("cannot read {path}: {e}")))?;
            verifier = verifier.with_public_pem(Some(kid), &pem)?;
        }
        if verifier.key_count() == 0 || self.token_secret.is_some() || self.dev {
            let secret = resolve_secret(self.token_secret.as_deref(), self.dev)?;
            verifier = verifier.with_secret(None, secret.as_bytes())?;
        }
        if let Some(previous) = &self.token_secret_previous {
            verifier = verifier.with_secret(None, previous.as_bytes())?;
        }
        Ok(verifier)
    }

    /// Fits `--max-connections` under the open-file limit, so that a full node answers
    /// `503 node_full` instead of failing to accept (which hangs new clients and `/healthz`).
    /// Returns the connection cap it had to lower from, if it did.
    pub fn fit_open_files(&mut self, limit: u64) -> Result<Option<usize>, ConfigError> {
        let room = limit.saturating_sub(RESERVED_FILES);
        if room < 16 {
            return Err(ConfigError::TooFewFiles {
                limit,
                reserved: RESERVED_FILES,
            });
        }
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        if self.max_connections <= room {
            return Ok(None);
        }
        let asked = self.max_connections;
        self.max_connections = room;
        Ok(Some(asked))
    }

    /// How long to wait on Redis.
    pub fn redis_timeouts(&self) -> imclient::store::RedisTimeouts {
        imclient::store::RedisTimeouts {
            connect: Duration::from_millis(self.redis_connect_timeout_ms),
            response: Duration::from_millis(self.redis_response_timeout_ms),
        }
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// The heartbeat timeout.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }

    /// The lease lifetime.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// The recovery bounds.
    pub fn recovery(&self) -> crate::recovery::RecoveryLimits {
        crate::recovery::RecoveryLimits {
            window: Duration::from_millis(self.recovery_window_ms),
            max_envelopes: self.recovery_max_envelopes,
            max_age: Duration::from_millis(self.recovery_max_age_ms),
            online_max_age: self.heartbeat_timeout() + self.heartbeat_interval(),
            client_max_bytes: self.recovery_client_max_bytes,
            node_max_bytes: self.recovery_max_bytes,
        }
    }

    /// The shutdown bound.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// How long a stopping node forwards for the clients it handed over.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests;
