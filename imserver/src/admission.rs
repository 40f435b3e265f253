//! Who may open a socket: token checks and the in-memory half of single use. Accepted token ids
//! are remembered here until they expire, so a replay to the same node run is refused with no
//! Redis round trip. The other half, which outlives a restart and holds across nodes, is the
//! used-token marker in Redis that the handshake sets once per connect (see `handshake`).

use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hash, RandomState};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use imclient::NodeId;
use imclient::token::{ConnectClaims, TokenError, TokenVerifier, unix_secs};

const SHARDS: usize = 16;

/// Checks connect tokens for one node.
#[derive(Debug)]
pub struct Admission {
    verifier: TokenVerifier,
    node: NodeId,
    /// Accepted token ids and their expiry (seconds). Sharded so concurrent handshakes on
    /// different workers rarely contend; std Mutex, never held across an await.
    used: Vec<Mutex<UsedTokens>>,
    /// Keys the hashes the ids are remembered by.
    hasher: RandomState,
}

impl Admission {
    /// Admission for `node`, checking signatures with `verifier`.
    pub fn new(verifier: TokenVerifier, node: NodeId) -> Result<Self, TokenError> {
        Ok(Self {
            verifier,
            node,
            used: (0..SHARDS)
                .map(|_| Mutex::new(UsedTokens::default()))
                .collect(),
            hasher: RandomState::new(),
        })
    }

    /// Checks `token` and marks it used in memory. Its use is recorded in Redis next (the
    /// handshake does it); when that cannot be done, [`Admission::forget`] it.
    pub fn admit(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        let claims = self.verifier.verify(token, &self.node)?;
        let now = unix_secs(SystemTime::now());
        let (id, mut used) = self.shard_of(&claims.jti);
        // Forget expired ids at most once a second: an expired token is refused anyway.
        if now > used.pruned_at {
            used.prune(now);
        }
        if used.ids.insert(id, claims.exp).is_some() {
            return Err(TokenError::Replayed);
        }
        Ok(claims)
    }

    /// Forgets that the token of `claims` was used: its use could not be recorded in Redis, so
    /// the connect was refused and the client may try the same token again.
    pub fn forget(&self, claims: &ConnectClaims) {
        let (id, mut used) = self.shard_of(&claims.jti);
        used.ids.remove(&id);
    }

    /// The keyed hash of `jti` and its locked shard.
    fn shard_of(&self, jti: &impl Hash) -> (u64, MutexGuard<'_, UsedTokens>) {
        let id = self.hasher.hash_one(jti);
        let shard = self.used[(id % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        (id, shard)
    }

    /// Forgets the ids of expired tokens (also when no token arrives to trigger it).
    pub fn prune(&self) {
        let now = unix_secs(SystemTime::now());
        for shard in &self.used {
            shard.lock().unwrap_or_else(|p| p.into_inner()).prune(now);
        }
    }
}

/// One shard of accepted token ids.
#[derive(Debug, Default)]
struct UsedTokens {
    /// A keyed 64-bit hash of the token id, to its expiry (seconds since the Unix epoch). A
    /// node accepting 1,600 connects a second holds a minute of them (the token lifetime):
    /// 16 bytes each instead of a 32-character string. Two ids that collide (about one chance
    /// in 10^10 per minute at that rate) make the second token be refused as replayed; the
    /// client fetches another.
    ids: HashMap<u64, u64>,
    /// When expired ids were last removed, seconds.
    pruned_at: u64,
}

impl UsedTokens {
    fn prune(&mut self, now: u64) {
        self.ids.retain(|_, exp| *exp >= now);
        crate::memory::shrink_if_sparse(&mut self.ids);
        self.pruned_at = now;
    }
}
