//! The errors of imclient: [`Error`], what any imclient operation can fail with, and
//! [`TokenError`], why a connect token cannot be signed or was refused (its public path is
//! `imclient::token::TokenError`). Modules import their errors from here and this one imports
//! none of them, so no import circle runs through the errors.

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

/// Why a token was refused. The HTTP status imserver answers with is [`TokenError::http_status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was given.
    #[error("no token: open the URL returned by prev_connect_server, which carries ?token=")]
    Missing,
    /// Not a JWT, or its claims are not ours.
    #[error("malformed token: {0}; fetch a fresh connect URL")]
    Malformed(String),
    /// The signature does not match any key the node holds for the token's algorithm. Which
    /// setting must agree follows from the algorithm: the shared secret for HS256, the
    /// public keys for EdDSA and RS256.
    #[error("token signature is invalid: {}", .0.advice())]
    BadSignature(KeyKind),
    /// The token's expiry has passed.
    #[error("token expired: fetch a fresh connect URL just before connecting")]
    Expired,
    /// The token names another node.
    #[error("token is for node {expected}, not this one: connect to the URL it came with")]
    WrongNode {
        /// The node the token was issued for.
        expected: String,
    },
    /// The token was already used once.
    #[error("token already used: tokens are single use, fetch a fresh connect URL")]
    Replayed,
    /// The secret is too short to sign with.
    #[error("token secret is shorter than 16 bytes: use a long random secret")]
    WeakSecret,
    /// No secret is configured outside dev mode.
    #[error(
        "no token secret: set IM_TOKEN_SECRET (or --token-secret), or pass --dev for local use"
    )]
    NoSecret,
    /// The built-in dev secret outside dev mode.
    #[error("the built-in dev secret is only allowed with --dev: set IM_TOKEN_SECRET")]
    DevSecret,
    /// Signing failed.
    #[error("cannot sign token: {0}")]
    Signing(String),
    /// The token names a key id the node does not hold (a retired key, or a key not rolled
    /// out to this node yet).
    #[error(
        "token is signed with key {0:?}, which this node does not accept: fetch a fresh connect URL"
    )]
    UnknownKey(String),
    /// A key could not be read.
    #[error("cannot use this key: {0}; give a PEM Ed25519 or RSA key")]
    BadKey(String),
}

/// The kind of key a token's signature is checked with, named in a refusal so that the
/// operator knows which setting the backend and the node disagree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A secret shared by backends and nodes (HS256).
    Secret,
    /// A key pair: backends sign with the private half, nodes hold the public one (EdDSA, RS256).
    PublicKey,
}

impl KeyKind {
    /// What must agree for a signature of this kind to verify.
    ///
    /// ```
    /// use imclient::token::KeyKind;
    /// assert!(KeyKind::Secret.advice().contains("IM_TOKEN_SECRET"));
    /// assert!(KeyKind::PublicKey.advice().contains("IM_TOKEN_KEYS"));
    /// ```
    pub fn advice(self) -> &'static str {
        match self {
            KeyKind::Secret => {
                "the backend and the node must share IM_TOKEN_SECRET (the node also accepts \
                 IM_TOKEN_SECRET_PREVIOUS during a rotation)"
            }
            KeyKind::PublicKey => {
                "the backend must sign with the private half of a public key the node holds in \
                 IM_TOKEN_KEYS (--token-key), under the same key id"
            }
        }
    }
}

impl TokenError {
    /// Short machine-readable code, used in HTTP refusals and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::BadSignature(_) => "token_bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::WrongNode { .. } => "token_wrong_node",
            TokenError::Replayed => "token_replayed",
            TokenError::WeakSecret => "token_weak_secret",
            TokenError::NoSecret => "token_no_secret",
            TokenError::DevSecret => "token_dev_secret",
            TokenError::Signing(_) => "token_signing",
            TokenError::UnknownKey(_) => "token_unknown_key",
            TokenError::BadKey(_) => "token_bad_key",
        }
    }

    /// The HTTP status a node answers with: 403 for a token meant for another node, 401 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            TokenError::WrongNode { .. } => 403,
            _ => 401,
        }
    }
}
