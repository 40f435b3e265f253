//! The client index: which clients this node holds, by id, in shards of std mutexes so that
//! connects, disconnects and deliveries of different clients rarely meet on one lock. A
//! shard's lock is taken before an entry's when both are held.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hash};
use std::sync::{Arc, Mutex, MutexGuard};

use imclient::ClientId;

use super::entry::ClientEntry;
use crate::memory::shrink_if_sparse;

/// Shards of the client and channel maps.
pub(super) const SHARDS: usize = 64;

/// One shard of the client map, hashed with foldhash's keyed hasher: std's SipHash, twice per
/// delivery (once for the shard, once in it), was about 1.5% of a private delivery's
/// instructions in the node (docs/DESIGN.md, "Counting instructions").
pub(super) type Shard = HashMap<ClientId, Arc<ClientEntry>, foldhash::fast::RandomState>;

/// The shard `key` lives in. A fixed seed, as std's unkeyed `DefaultHasher` had before: the
/// choice only spreads locks; the maps inside are keyed per process.
pub(super) fn shard_of<K: Hash>(key: &K) -> usize {
    (foldhash::fast::FixedState::default().hash_one(key) as usize) % SHARDS
}

/// Locks `m`; a panic while holding a lock leaves plain data behind, so keep serving.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sharded map of clients.
#[derive(Debug)]
pub(super) struct ClientIndex {
    shards: Box<[Mutex<Shard>]>,
}

impl ClientIndex {
    pub(super) fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
        }
    }

    /// The entry of `client`, if it is here.
    pub(super) fn get(&self, client: &ClientId) -> Option<Arc<ClientEntry>> {
        lock(&self.shards[shard_of(client)]).get(client).cloned()
    }

    /// The shard of `client`, locked: for changes that must not race a connect or a removal.
    pub(super) fn shard(&self, client: &ClientId) -> MutexGuard<'_, Shard> {
        lock(&self.shards[shard_of(client)])
    }

    /// Removes `entry` if it is still the one indexed under its id (a newer entry of the
    /// same client may have taken its place). Returns whether it did; `and` runs first, under
    /// the shard's lock, and may veto the removal by returning `None`.
    pub(super) fn remove_if<T>(
        &self,
        entry: &Arc<ClientEntry>,
        and: impl FnOnce() -> Option<T>,
    ) -> Option<T> {
        let mut shard = self.shard(&entry.id);
        if !shard.get(&entry.id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            return None;
        }
        let done = and()?;
        shard.remove(&entry.id);
        Some(done)
    }

    /// Every entry, one shard at a time: each shard's lock is released before the next is
    /// taken and before the caller locks any entry.
    pub(super) fn each_shard(&self) -> impl Iterator<Item = Vec<Arc<ClientEntry>>> + '_ {
        self.shards
            .iter()
            .map(|shard| lock(shard).values().cloned().collect())
    }

    /// Every client id.
    pub(super) fn ids(&self) -> Vec<ClientId> {
        self.shards
            .iter()
            .flat_map(|s| lock(s).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Gives back the room of shards that emptied after a peak.
    pub(super) fn shrink(&self) {
        for shard in self.shards.iter() {
            shrink_if_sparse(&mut lock(shard));
        }
    }
}
