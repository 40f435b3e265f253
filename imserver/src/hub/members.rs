//! Channel membership as the hub applies it: live joins and leaves, loads of a client's
//! channels from Redis (with the changes recorded meanwhile replayed on top), deleted
//! channels, topic subscriptions acknowledged by Redis, and the readiness they lead to: a
//! client is ready once its channels are loaded and every topic it needs is subscribed.

use std::sync::Arc;

use imclient::{ChanName, ClientId};

use super::Hub;
use super::entry::{ClientEntry, ClientInner};
use super::sync_log::ChanOp;

impl Hub {
    /// Applies `op` with the entry's lock held (lock order: entry, then channel shard).
    fn apply_locked(&self, entry: &Arc<ClientEntry>, inner: &mut ClientInner, op: &ChanOp) {
        match op {
            ChanOp::Join(chan) => {
                if inner.chans.insert(chan.clone()) {
                    self.chan_add(chan, entry);
                }
            }
            ChanOp::Leave(chan) => {
                if inner.chans.remove(chan) {
                    self.chan_remove(chan, entry);
                }
            }
        }
    }

    /// Applies a membership change for a local client; ignored for a client that is not here
    /// (its channels are read from Redis when it connects).
    pub fn apply(&self, client: &ClientId, op: ChanOp) {
        let Some(entry) = self.clients.get(client) else {
            return;
        };
        let mut inner = entry.lock();
        if inner.gone {
            return;
        }
        inner.sync.record(&op);
        self.apply_locked(&entry, &mut inner, &op);
    }

    /// For the membership loader: the entry and load generation of `client`, if a load is
    /// due. The read from Redis must be sent after this call.
    pub fn sync_ticket(&self, client: &ClientId) -> Option<(Arc<ClientEntry>, u64)> {
        let entry = self.clients.get(client)?;
        let inner = entry.lock();
        if inner.gone {
            return None;
        }
        let generation = inner.sync.ticket()?;
        drop(inner);
        Some((entry, generation))
    }

    /// Sets a client's channels to what Redis held (`stored`) plus the changes recorded since
    /// the load began. Ignored if the client left or a newer load began.
    pub fn finish_sync(&self, entry: &Arc<ClientEntry>, generation: u64, stored: Vec<ChanName>) {
        let mut inner = entry.lock();
        if inner.gone {
            return;
        }
        let Some(target) = inner.sync.finish(generation, stored) else {
            return;
        };
        let current: Vec<ChanName> = inner.chans.iter().cloned().collect();
        for chan in current.into_iter().filter(|c| !target.contains(c)) {
            self.apply_locked(entry, &mut inner, &ChanOp::Leave(chan));
        }
        for chan in target {
            self.apply_locked(entry, &mut inner, &ChanOp::Join(chan));
        }
        self.check_ready(entry, &mut inner);
    }

    /// Starts a new load of `client`'s channels, if it is here: on a Redis Cluster a join or
    /// leave is published after its script, so two racing changes of one client may arrive in
    /// the other order than they were stored; a load begun after a change arrived reads every
    /// change that arrived so far, and the last load wins.
    pub fn resync_client(&self, client: &ClientId) {
        let Some(entry) = self.clients.get(client) else {
            return;
        };
        {
            let mut inner = entry.lock();
            if inner.gone {
                return;
            }
            inner.sync.begin();
        }
        self.work.memberships.mark(client);
    }

    /// Starts a new load of every local client's channels (after a Redis outage, when
    /// membership changes may have been missed).
    pub fn resync_memberships(&self) {
        let mut all = Vec::new();
        for entries in self.clients.each_shard() {
            for entry in entries {
                entry.lock().sync.begin();
                all.push(entry.id.clone());
            }
        }
        self.work.memberships.mark_all(all);
    }

    /// Drops a deleted channel for every local member.
    pub fn chan_deleted(&self, chan: &ChanName) {
        for entry in self.chans.take(chan) {
            let mut inner = entry.lock();
            inner.chans.remove(chan);
            inner.sync.record(&ChanOp::Leave(chan.clone()));
        }
        self.work.topics.mark(chan);
        self.work.chan_counts.mark(chan);
    }

    /// Records that the subscriber holds the node's own and the broadcast topic (or lost
    /// them); clients waiting for that become ready.
    pub fn set_base_subscribed(&self, up: bool) {
        self.chans.set_base(up);
        if !up {
            return;
        }
        for entries in self.clients.each_shard() {
            for entry in entries {
                let mut inner = entry.lock();
                self.check_ready(&entry, &mut inner);
            }
        }
    }

    /// Completes once the node's own topics (its command topic, the broadcast topic) are
    /// subscribed: from then on what backends send to this node reaches it.
    pub async fn base_subscribed(&self) {
        self.chans.base_up().await;
    }

    /// Records that Redis acknowledged the subscription to these channels' topics; members
    /// waiting for them become ready.
    pub fn topics_subscribed(&self, chans: &[ChanName]) {
        self.chans.subscribed().extend(chans.iter().cloned());
        for chan in chans {
            let Some(members) = self.chans.members(chan) else {
                continue;
            };
            for entry in members {
                let mut inner = entry.lock();
                self.check_ready(&entry, &mut inner);
            }
        }
    }

    /// Records that these topics are being dropped: from now on nobody counts on them.
    pub fn topics_unsubscribing(&self, chans: &[ChanName]) {
        let mut subscribed = self.chans.subscribed();
        for chan in chans {
            subscribed.remove(chan);
        }
    }

    /// Whether a join of `client` to `chan` has taken effect: the client is not here (it will
    /// load its channels when it connects), no longer a member, or the topic is subscribed.
    pub fn join_settled(&self, client: &ClientId, chan: &ChanName) -> bool {
        let Some(entry) = self.clients.get(client) else {
            return true;
        };
        let member = entry.lock().chans.contains(chan);
        !member || self.chans.subscribed().contains(chan)
    }

    /// Makes the entry ready, releasing its held connections, once its channels are loaded
    /// and every topic it needs is subscribed.
    fn check_ready(&self, entry: &ClientEntry, inner: &mut ClientInner) {
        let ready = inner.make_ready(self.chans.base(), &self.chans.subscribed());
        if ready {
            // Presence says online only from now on: whoever reacts to it can count on
            // delivery.
            self.work.presence.mark(&entry.id);
        }
    }

    pub(super) fn chan_add(&self, chan: &ChanName, entry: &Arc<ClientEntry>) {
        if self.chans.add(chan, entry) {
            self.work.topics.mark(chan);
        }
        self.work.chan_counts.mark(chan);
    }

    pub(super) fn chan_remove(&self, chan: &ChanName, entry: &Arc<ClientEntry>) {
        let Some(last) = self.chans.remove(chan, entry) else {
            return;
        };
        if last {
            self.work.topics.mark(chan);
        }
        self.work.chan_counts.mark(chan);
    }

    /// How many local clients are members of `chan`, online or inside their recovery window:
    /// while there is one, the node keeps the channel's topic.
    pub fn chan_count(&self, chan: &ChanName) -> u64 {
        self.chans.count(chan)
    }

    /// How many members of `chan` are online here (have a connection).
    pub fn chan_online(&self, chan: &ChanName) -> u64 {
        self.chans.members(chan).map_or(0, |members| {
            members
                .iter()
                .filter(|e| !e.lock().conns.is_empty())
                .count() as u64
        })
    }

    /// Every channel with at least one local member.
    pub fn chans(&self) -> Vec<ChanName> {
        self.chans.names()
    }

    /// The channels `client` is a member of here (empty when it is not here).
    pub fn client_chans(&self, client: &ClientId) -> Vec<ChanName> {
        self.clients
            .get(client)
            .map(|e| e.lock().chans.iter().cloned().collect())
            .unwrap_or_default()
    }
}
