//! The channel index: the local members of each channel (online or inside their recovery
//! window), which channel topics the subscriber holds, acknowledged by Redis, and whether the
//! node's own topics are subscribed.
//!
//! Locking: a channel shard is taken after an entry's lock, never before; fan-out copies a
//! channel's members under the shard lock and releases it before locking each member.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use imclient::{ChanName, ClientId};
use tokio::sync::Notify;

use super::entry::ClientEntry;
use super::index::{SHARDS, lock, shard_of};
use crate::memory::shrink_if_sparse;

/// A channel's local members.
type Members = HashMap<ClientId, Arc<ClientEntry>>;

/// The channel index and the subscriber's acknowledged topics.
#[derive(Debug)]
pub(super) struct ChanIndex {
    shards: Box<[Mutex<HashMap<ChanName, Members>>]>,
    /// Channel topics the subscriber holds, acknowledged by Redis and not being dropped.
    subscribed: Mutex<HashSet<ChanName>>,
    /// Whether the node's own topic and the broadcast topic are subscribed.
    base_subscribed: AtomicBool,
    /// Notified when the node's own topics are subscribed.
    base_up: Notify,
}

impl ChanIndex {
    pub(super) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            subscribed: Mutex::new(HashSet::new()),
            base_subscribed: AtomicBool::new(false),
            base_up: Notify::new(),
        }
    }

    /// Adds `entry` to `chan`; returns whether it is the channel's first local member.
    pub(super) fn add(&self, chan: &ChanName, entry: &Arc<ClientEntry>) -> bool {
        let mut shard = lock(&self.shards[shard_of(chan)]);
        let members = shard.entry(chan.clone()).or_default();
        let first = members.is_empty();
        members.insert(entry.id.clone(), entry.clone());
        first
    }

    /// Removes `entry` (only this entry: a newer entry of the same client may have joined
    /// since) from `chan`. `None` when the channel has no local member; else whether it was
    /// the last.
    pub(super) fn remove(&self, chan: &ChanName, entry: &Arc<ClientEntry>) -> Option<bool> {
        let mut shard = lock(&self.shards[shard_of(chan)]);
        let members = shard.get_mut(chan)?;
        if members
            .get(&entry.id)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            members.remove(&entry.id);
        }
        let last = members.is_empty();
        if last {
            shard.remove(chan);
        }
        Some(last)
    }

    /// A copy of the local members of `chan`, taken under the shard lock and released.
    pub(super) fn members(&self, chan: &ChanName) -> Option<Vec<Arc<ClientEntry>>> {
        lock(&self.shards[shard_of(chan)])
            .get(chan)
            .map(|members| members.values().cloned().collect())
    }

    /// How many local members `chan` has.
    pub(super) fn count(&self, chan: &ChanName) -> u64 {
        lock(&self.shards[shard_of(chan)])
            .get(chan)
            .map_or(0, |m| m.len() as u64)
    }

    /// Every channel with at least one local member.
    pub(super) fn names(&self) -> Vec<ChanName> {
        self.shards
            .iter()
            .flat_map(|s| lock(s).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Removes `chan` with all its members, returned.
    pub(super) fn take(&self, chan: &ChanName) -> Vec<Arc<ClientEntry>> {
        lock(&self.shards[shard_of(chan)])
            .remove(chan)
            .map(|m| m.into_values().collect())
            .unwrap_or_default()
    }

    /// Gives back the room of shards that emptied after a peak.
    pub(super) fn shrink(&self) {
        for shard in self.shards.iter() {
            shrink_if_sparse(&mut lock(shard));
        }
    }

    /// The channel topics acknowledged by Redis.
    pub(super) fn subscribed(&self) -> MutexGuard<'_, HashSet<ChanName>> {
        lock(&self.subscribed)
    }

    /// Whether the node's own topics are subscribed.
    pub(super) fn base(&self) -> bool {
        self.base_subscribed.load(Relaxed)
    }

    /// Records that the node's own topics are subscribed (or lost, with every channel topic).
    pub(super) fn set_base(&self, up: bool) {
        self.base_subscribed.store(up, Relaxed);
        if up {
            self.base_up.notify_waiters();
        } else {
            self.subscribed().clear();
        }
    }

    /// Completes once the node's own topics are subscribed.
    pub(super) async fn base_up(&self) {
        loop {
            let up = self.base_up.notified();
            tokio::pin!(up);
            up.as_mut().enable();
            if self.base() {
                return;
            }
            up.await;
        }
    }
}
