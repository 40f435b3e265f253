//! Who may open a socket: token checks and single use. The token names this node, so only this
//! node could accept it; remembering accepted token ids in memory until they expire is enough
//! to refuse a replay, with no Redis round trip on the connect path. Across a restart the
//! memory is gone, so tokens issued before this node started are refused as stale.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use imclient::NodeId;
use imclient::token::{ConnectClaims, TokenError, TokenVerifier, unix_secs};

const SHARDS: usize = 16;

/// Checks connect tokens for one node.
#[derive(Debug)]
pub struct Admission {
    verifier: TokenVerifier,
    node: NodeId,
    started_secs: u64,
    /// Accepted token ids and their expiry (seconds). Sharded so concurrent handshakes on
    /// different workers rarely contend; std Mutex, never held across an await.
    used: Vec<Mutex<UsedTokens>>,
}

impl Admission {
    /// Admission for `node`, checking signatures with `verifier`.
    pub fn new(verifier: TokenVerifier, node: NodeId) -> Result<Self, TokenError> {
        Ok(Self {
            verifier,
            node,
            started_secs: unix_secs(SystemTime::now()),
            used: (0..SHARDS)
                .map(|_| Mutex::new(UsedTokens::default()))
                .collect(),
        })
    }

    /// Checks `token` and marks it used.
    pub fn admit(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        let claims = self.verifier.verify(token, &self.node)?;
        // JWT times are whole seconds, so a token from the node's starting second may be
        // older than the node: let that second through.
        if claims.iat < self.started_secs.saturating_sub(1) {
            return Err(TokenError::Stale);
        }
        let now = unix_secs(SystemTime::now());
        let shard = &self.used[shard_of(&claims.jti)];
        let mut used = shard.lock().unwrap_or_else(|p| p.into_inner());
        // Forget expired ids at most once a second: an expired token is refused anyway.
        if now > used.pruned_at {
            used.ids.retain(|_, exp| *exp >= now);
            used.pruned_at = now;
        }
        if used.ids.insert(claims.jti.clone(), claims.exp).is_some() {
            return Err(TokenError::Replayed);
        }
        Ok(claims)
    }
}

/// One shard of accepted token ids.
#[derive(Debug, Default)]
struct UsedTokens {
    /// Token id to expiry, seconds since the Unix epoch.
    ids: HashMap<String, u64>,
    /// When expired ids were last removed, seconds.
    pruned_at: u64,
}

fn shard_of(jti: &str) -> usize {
    jti.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    }) % SHARDS
}
