//! Connect tokens: short-lived HS256 JWTs that name the client, its home node and its metadata.
//!
//! imclient signs them ([`TokenIssuer`]); imserver checks them ([`TokenVerifier`]). A node also
//! refuses a token issued for another node and a token it has already accepted once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::ids::{ClientId, NodeId};

/// Shortest secret accepted for signing, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// The secret of dev mode (`imserver --dev`, `ImClientArgs` with `--dev`). Never accepted
/// outside dev mode.
pub const DEV_SECRET: &str = "imserver-dev-secret-do-not-use-in-production";

/// Picks the token secret from a configured one and the dev flag: the configured secret when
/// it is set, the built-in [`DEV_SECRET`] in dev mode, and an error otherwise (no secret, the
/// dev secret outside dev mode, or one shorter than [`MIN_SECRET_BYTES`]).
///
/// ```
/// use imclient::token::{resolve_secret, DEV_SECRET, TokenError};
/// assert_eq!(resolve_secret(None, true).unwrap(), DEV_SECRET);
/// assert!(matches!(resolve_secret(None, false), Err(TokenError::NoSecret)));
/// assert!(matches!(resolve_secret(Some(DEV_SECRET), false), Err(TokenError::DevSecret)));
/// ```
pub fn resolve_secret(configured: Option<&str>, dev: bool) -> Result<String, TokenError> {
    let secret = match (configured, dev) {
        (Some(s), false) if s == DEV_SECRET => return Err(TokenError::DevSecret),
        (Some(s), _) if !s.is_empty() => s.to_owned(),
        (_, true) => DEV_SECRET.to_owned(),
        (_, false) => return Err(TokenError::NoSecret),
    };
    if secret.len() < MIN_SECRET_BYTES {
        return Err(TokenError::WeakSecret);
    }
    Ok(secret)
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
    /// The signature does not match the node's secret.
    #[error("token signature is invalid: the backend and the node must share IM_TOKEN_SECRET")]
    BadSignature,
    /// The token's expiry has passed.
    #[error("token expired: fetch a fresh connect URL just before connecting")]
    Expired,
    /// The token names another node.
    #[error("token is for node {expected}, not this one: connect to the URL it came with")]
    WrongNode {
        /// The node the token was issued for.
        expected: String,
    },
    /// The token was already used once on this node.
    #[error("token already used: tokens are single use, fetch a fresh connect URL")]
    Replayed,
    /// The token was issued before this node started, so the node cannot tell whether it was used.
    #[error("token predates this node's start: fetch a fresh connect URL")]
    Stale,
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
}

impl TokenError {
    /// Short machine-readable code, used in HTTP refusals and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::WrongNode { .. } => "token_wrong_node",
            TokenError::Replayed => "token_replayed",
            TokenError::Stale => "token_stale",
            TokenError::WeakSecret => "token_weak_secret",
            TokenError::NoSecret => "token_no_secret",
            TokenError::DevSecret => "token_dev_secret",
            TokenError::Signing(_) => "token_signing",
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

/// The claims of a connect token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectClaims {
    /// The client id (JWT subject).
    pub sub: ClientId,
    /// The home node the token is valid on.
    pub node: NodeId,
    /// Business metadata echoed in online/offline events (e.g. a display name).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub meta: serde_json::Value,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// Unique token id; a node accepts each once.
    pub jti: String,
}

impl ConnectClaims {
    /// Claims for `client` on `node`, valid for `ttl` from now, with a fresh unique id.
    ///
    /// ```
    /// use std::time::Duration;
    /// use imclient::{token::ConnectClaims, ClientId, NodeId};
    /// let c = ConnectClaims::new(
    ///     ClientId::new("alice").unwrap(),
    ///     NodeId::new("ws://127.0.0.1:6001").unwrap(),
    ///     serde_json::json!({"name": "Alice"}),
    ///     Duration::from_secs(60),
    /// );
    /// assert_eq!(c.exp - c.iat, 60);
    /// ```
    pub fn new(sub: ClientId, node: NodeId, meta: serde_json::Value, ttl: Duration) -> Self {
        let iat = unix_secs(SystemTime::now());
        Self {
            sub,
            node,
            meta,
            iat,
            exp: iat + ttl.as_secs().max(1),
            jti: uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}

/// Seconds since the Unix epoch (0 for times before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs connect tokens.
///
/// ```
/// use std::time::Duration;
/// use imclient::{token::{ConnectClaims, TokenIssuer}, ClientId, NodeId};
/// let issuer = TokenIssuer::new(b"a-long-random-secret-of-32-bytes").unwrap();
/// let claims = ConnectClaims::new(
///     ClientId::new("alice").unwrap(), NodeId::new("ws://n1").unwrap(),
///     serde_json::Value::Null, Duration::from_secs(30));
/// let token = issuer.sign(&claims).unwrap();
/// assert_eq!(token.split('.').count(), 3);
/// ```
#[derive(Clone)]
pub struct TokenIssuer {
    key: EncodingKey,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenIssuer { key: <redacted> }")
    }
}

impl TokenIssuer {
    /// An issuer for `secret`, which must be at least 16 bytes.
    pub fn new(secret: &[u8]) -> Result<Self, TokenError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(TokenError::WeakSecret);
        }
        Ok(Self {
            key: EncodingKey::from_secret(secret),
        })
    }

    /// Signs `claims` as an HS256 JWT.
    pub fn sign(&self, claims: &ConnectClaims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.key)
            .map_err(|e| TokenError::Signing(e.to_string()))
    }
}

/// Checks connect tokens: signature, expiry and node. Replay is the node's job (it remembers
/// the ids it accepted); see imserver's admission module.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVerifier { key: <redacted> }")
    }
}

impl TokenVerifier {
    /// A verifier for `secret`. Expiry is checked with no leeway: tokens are short-lived and
    /// fetched just before connecting.
    pub fn new(secret: &[u8]) -> Result<Self, TokenError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(TokenError::WeakSecret);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "iat", "jti"]);
        Ok(Self {
            key: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// Verifies `token` and that it names `node`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use imclient::{token::*, ClientId, NodeId};
    /// let secret = b"a-long-random-secret-of-32-bytes";
    /// let node = NodeId::new("ws://n1").unwrap();
    /// let claims = ConnectClaims::new(ClientId::new("a").unwrap(), node.clone(),
    ///     serde_json::Value::Null, Duration::from_secs(30));
    /// let token = TokenIssuer::new(secret).unwrap().sign(&claims).unwrap();
    /// let v = TokenVerifier::new(secret).unwrap();
    /// assert_eq!(v.verify(&token, &node).unwrap().sub.as_str(), "a");
    /// let other = NodeId::new("ws://n2").unwrap();
    /// assert!(matches!(v.verify(&token, &other), Err(TokenError::WrongNode { .. })));
    /// ```
    pub fn verify(&self, token: &str, node: &NodeId) -> Result<ConnectClaims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let data = jsonwebtoken::decode::<ConnectClaims>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed(e.to_string()),
            })?;
        let claims = data.claims;
        if &claims.node != node {
            return Err(TokenError::WrongNode {
                expected: claims.node.to_string(),
            });
        }
        Ok(claims)
    }
}
