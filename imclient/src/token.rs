//! Connect tokens: short-lived JWTs that name the client, its home node and its metadata.
//!
//! imclient signs them ([`TokenIssuer`]); imserver checks them ([`TokenVerifier`]). A node also
//! refuses a token issued for another node and a token it has already accepted once.
//!
//! Signed with a secret shared by backends and nodes (HS256), or with a private key only the
//! backends hold (EdDSA or RS256), the nodes holding the public key. Keys rotate by key id
//! (`kid` in the token header): a node accepts every key it is given, so during an overlap it
//! takes tokens signed with the old key and with the new one, and once the old key is removed
//! its tokens are refused as signed by an unknown key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

pub use crate::error::{KeyKind, TokenError};
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

/// The signature algorithm of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    Hs256,
    /// Ed25519 signatures.
    EdDsa,
    /// RSA PKCS#1 v1.5 with SHA-256.
    Rs256,
}

impl KeyAlgorithm {
    /// The kind of key a token of algorithm `alg` is checked with.
    fn kind_of(alg: Algorithm) -> KeyKind {
        match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyKind::Secret,
            _ => KeyKind::PublicKey,
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            KeyAlgorithm::Hs256 => Algorithm::HS256,
            KeyAlgorithm::EdDsa => Algorithm::EdDSA,
            KeyAlgorithm::Rs256 => Algorithm::RS256,
        }
    }
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
    header: Header,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("alg", &self.header.alg)
            .field("kid", &self.header.kid)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// An HS256 issuer for `secret`, which must be at least 16 bytes.
    pub fn new(secret: &[u8]) -> Result<Self, TokenError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(TokenError::WeakSecret);
        }
        Ok(Self {
            key: EncodingKey::from_secret(secret),
            header: Header::new(Algorithm::HS256),
        })
    }

    /// An issuer signing with a PEM private key (PKCS#8 Ed25519 for EdDSA, PKCS#1 or PKCS#8
    /// RSA for RS256). The nodes then hold only the public key.
    ///
    /// ```
    /// use imclient::token::{KeyAlgorithm, TokenIssuer};
    /// let pem = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIP3VnQ85jmIYsXuJhUbPUbjhvYO3tGAT115nMZE9clqf\n-----END PRIVATE KEY-----\n";
    /// let issuer = TokenIssuer::from_pem(KeyAlgorithm::EdDsa, pem).unwrap().with_key_id("2026-11");
    /// ```
    pub fn from_pem(alg: KeyAlgorithm, private_pem: &[u8]) -> Result<Self, TokenError> {
        let key = match alg {
            KeyAlgorithm::Hs256 => return Self::new(private_pem),
            KeyAlgorithm::EdDsa => EncodingKey::from_ed_pem(private_pem),
            KeyAlgorithm::Rs256 => EncodingKey::from_rsa_pem(private_pem),
        }
        .map_err(|e| TokenError::BadKey(e.to_string()))?;
        Ok(Self {
            key,
            header: Header::new(alg.jwt()),
        })
    }

    /// Names the key in every token's header (`kid`), so nodes can hold several during a
    /// rotation.
    pub fn with_key_id(mut self, kid: impl Into<String>) -> Self {
        self.header.kid = Some(kid.into());
        self
    }

    /// Signs `claims` as a JWT.
    pub fn sign(&self, claims: &ConnectClaims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&self.header, claims, &self.key)
            .map_err(|e| TokenError::Signing(e.to_string()))
    }
}

/// One key a verifier accepts.
#[derive(Clone)]
struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// Checks connect tokens: signature, expiry and node. Replay is the node's job (it remembers
/// the ids it accepted); see imserver's admission module.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Vec<VerifyKey>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Expiry is checked with no leeway: tokens are short-lived and fetched just before connecting.
fn validation(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub", "iat", "jti"]);
    validation
}

impl TokenVerifier {
    /// A verifier for the HS256 `secret`.
    pub fn new(secret: &[u8]) -> Result<Self, TokenError> {
        Self::empty().with_secret(None, secret)
    }

    /// A verifier that accepts nothing yet: add keys.
    pub fn empty() -> Self {
        Self { keys: Vec::new() }
    }

    /// Also accepts tokens signed with the HS256 `secret` (named `kid`, when given).
    pub fn with_secret(mut self, kid: Option<&str>, secret: &[u8]) -> Result<Self, TokenError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(TokenError::WeakSecret);
        }
        self.keys.push(VerifyKey {
            kid: kid.map(str::to_owned),
            key: DecodingKey::from_secret(secret),
            validation: validation(Algorithm::HS256),
        });
        Ok(self)
    }

    /// Also accepts tokens signed with the private half of the PEM public key `pem` (named
    /// `kid`, when given); Ed25519 keys verify EdDSA tokens, RSA keys RS256 tokens.
    pub fn with_public_pem(mut self, kid: Option<&str>, pem: &[u8]) -> Result<Self, TokenError> {
        let (key, alg) = match DecodingKey::from_ed_pem(pem) {
            Ok(key) => (key, Algorithm::EdDSA),
            Err(_) => (
                DecodingKey::from_rsa_pem(pem).map_err(|e| TokenError::BadKey(e.to_string()))?,
                Algorithm::RS256,
            ),
        };
        self.keys.push(VerifyKey {
            kid: kid.map(str::to_owned),
            key,
            validation: validation(alg),
        });
        Ok(self)
    }

    /// How many keys it accepts.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Verifies `token` and that it names `node`. A token with a key id is checked against
    /// the key of that id only; one without, against every key of its algorithm.
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
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let candidates: Vec<&VerifyKey> = self
            .keys
            .iter()
            .filter(|k| k.validation.algorithms.contains(&header.alg))
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .collect();
        let bad_signature = TokenError::BadSignature(KeyAlgorithm::kind_of(header.alg));
        if candidates.is_empty() {
            return Err(match header.kid {
                Some(kid) => TokenError::UnknownKey(kid),
                None => bad_signature,
            });
        }
        let mut error = bad_signature.clone();
        for key in candidates {
            match jsonwebtoken::decode::<ConnectClaims>(token, &key.key, &key.validation) {
                Ok(data) => {
                    let claims = data.claims;
                    if &claims.node != node {
                        return Err(TokenError::WrongNode {
                            expected: claims.node.to_string(),
                        });
                    }
                    return Ok(claims);
                }
                Err(e) => {
                    error = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::InvalidSignature => bad_signature.clone(),
                        _ => TokenError::Malformed(e.to_string()),
                    };
                }
            }
        }
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED1: &[u8] = include_bytes!("../tests/keys/ed1.pem");
    const ED1_PUB: &[u8] = include_bytes!("../tests/keys/ed1.pub.pem");
    const ED2: &[u8] = include_bytes!("../tests/keys/ed2.pem");
    const ED2_PUB: &[u8] = include_bytes!("../tests/keys/ed2.pub.pem");
    const ED3: &[u8] = include_bytes!("../tests/keys/ed3.pem");
    const RSA1: &[u8] = include_bytes!("../tests/keys/rsa1.pem");
    const RSA1_PUB: &[u8] = include_bytes!("../tests/keys/rsa1.pub.pem");

    fn node() -> NodeId {
        NodeId::new("ws://n1").expect("node")
    }

    fn token(issuer: &TokenIssuer) -> String {
        let claims = ConnectClaims::new(
            ClientId::new("alice").expect("id"),
            node(),
            serde_json::Value::Null,
            Duration::from_secs(30),
        );
        issuer.sign(&claims).expect("signs")
    }

    #[test]
    fn eddsa_and_rs256_tokens_verify_with_the_public_key_alone() {
        let ed = TokenIssuer::from_pem(KeyAlgorithm::EdDsa, ED1).expect("ed key");
        let rsa = TokenIssuer::from_pem(KeyAlgorithm::Rs256, RSA1).expect("rsa key");
        let v = TokenVerifier::empty()
            .with_public_pem(None, ED1_PUB)
            .and_then(|v| v.with_public_pem(None, RSA1_PUB))
            .expect("keys");
        assert_eq!(
            v.verify(&token(&ed), &node()).map(|c| c.sub.to_string()),
            Ok("alice".into())
        );
        assert!(v.verify(&token(&rsa), &node()).is_ok());
        // Another Ed25519 key, and a secret the node does not hold.
        let forged = TokenIssuer::from_pem(KeyAlgorithm::EdDsa, ED2).expect("ed key");
        assert_eq!(
            v.verify(&token(&forged), &node()).err(),
            Some(TokenError::BadSignature(KeyKind::PublicKey))
        );
        let hs = TokenIssuer::new(b"a-long-random-secret-of-32-bytes").expect("secret");
        assert_eq!(
            v.verify(&token(&hs), &node()).err(),
            Some(TokenError::BadSignature(KeyKind::Secret))
        );
    }

    #[test]
    fn during_a_rotation_both_keys_verify_and_a_retired_one_does_not() {
        let old = TokenIssuer::from_pem(KeyAlgorithm::EdDsa, ED1)
            .expect("key")
            .with_key_id("k1");
        let new = TokenIssuer::from_pem(KeyAlgorithm::EdDsa, ED2)
            .expect("key")
            .with_key_id("k2");
        let overlap = TokenVerifier::empty()
            .with_public_pem(Some("k1"), ED1_PUB)
            .and_then(|v| v.with_public_pem(Some("k2"), ED2_PUB))
            .expect("keys");
        assert!(overlap.verify(&token(&old), &node()).is_ok());
        assert!(overlap.verify(&token(&new), &node()).is_ok());
        // k1 retired.
        let after = TokenVerifier::empty()
            .with_public_pem(Some("k2"), ED2_PUB)
            .expect("key");
        assert_eq!(
            after.verify(&token(&old), &node()).err(),
            Some(TokenError::UnknownKey("k1".into()))
        );
        // A key id the node holds, signed by another key: the signature tells.
        let impostor = TokenIssuer::from_pem(KeyAlgorithm::EdDsa, ED3)
            .expect("key")
            .with_key_id("k2");
        assert_eq!(
            after.verify(&token(&impostor), &node()).err(),
            Some(TokenError::BadSignature(KeyKind::PublicKey))
        );
        // Two HS256 secrets without key ids: both accepted during the overlap.
        let (s1, s2) = (b"first-secret-0123456789", b"second-secret-0123456789");
        let both = TokenVerifier::new(s1)
            .and_then(|v| v.with_secret(None, s2))
            .expect("secrets");
        assert!(
            both.verify(&token(&TokenIssuer::new(s1).expect("s")), &node())
                .is_ok()
        );
        assert!(
            both.verify(&token(&TokenIssuer::new(s2).expect("s")), &node())
                .is_ok()
        );
    }

    #[test]
    fn a_bad_key_is_a_clear_error() {
        assert!(matches!(
            TokenIssuer::from_pem(KeyAlgorithm::EdDsa, b"not a key"),
            Err(TokenError::BadKey(_))
        ));
        assert!(matches!(
            TokenVerifier::empty().with_public_pem(None, b"not a key"),
            Err(TokenError::BadKey(_))
        ));
    }
}
