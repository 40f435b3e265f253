//! The hub: this node's registry of clients (those with open connections, and those inside
//! their recovery window) and of local channel members. A thin facade over parts that each own
//! one thing: the sharded client [`index`], the per-client [`entry`] state machine (which owns
//! push-with-sequence and the recovery buffer), the channel index ([`chans`]) and each
//! client's subscription log ([`sync_log`]), changed through [`members`], moves between nodes ([`handover`]), window
//! sweeping and memory accounting ([`sweep`]), and session counting ([`sessions`]). The broker
//! delivers through it, sessions register and unregister in it, the presence writer, the
//! membership loader, the subscriber and the sweeper read it.
//!
//! A client new to the node is not *ready* until its channels are loaded and the topics of all
//! of them are subscribed (acknowledged by Redis): until then its connections are held, queueing
//! what arrives behind a welcome that is not sent yet. So a welcome means that everything sent
//! to the client from then on reaches the socket.
//!
//! Locking: clients and channels live in sharded maps of std Mutexes; each client entry has a
//! mutex of its own for its connections, sequence counter and channels. Lock order is client
//! shard, then client entry, then channel shard; fan-out copies a channel's member list under
//! the channel shard lock and releases it before locking each member. A connection's outbox
//! lock is taken last, under its client entry's, and never held while taking another. No lock
//! is held across an await.

mod chans;
mod entry;
mod handover;
mod index;
mod members;
mod sessions;
mod sweep;
mod sync_log;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use imclient::contract::{CloseCode, PresenceRecord};
use imclient::token::ConnectClaims;
use imclient::{ChanName, ClientId};
use tokio::sync::Notify;
use tokio::time::Instant;

pub use entry::{ClientEntry, ConnId, Reach, State, WelcomeInfo};
pub use handover::FORWARD_FOR;
pub use sessions::Registration;
pub use sweep::Swept;
pub use sync_log::ChanOp;

use chans::ChanIndex;
use entry::{Detached, Tally};
use index::{ClientIndex, lock};
use sessions::{LiveSession, Sessions};
use sweep::Memory;

use crate::metrics::{DropReason, Metrics};
use crate::recovery::RecoveryLimits;
use crate::work::HubWork;

/// Why a connection was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The client has the most connections allowed.
    #[error("too many connections for this client (limit {0}); close another tab or device")]
    ClientLimit(usize),
    /// The node has the most connections allowed.
    #[error("node is full (limit {0} connections); retry later")]
    NodeLimit(usize),
}

/// The settings a hub is built with.
#[derive(Debug, Clone)]
pub struct HubLimits {
    /// Connections per client.
    pub max_per_client: usize,
    /// Connections on the node.
    pub max_total: usize,
    /// Frames queued per connection.
    pub queue_capacity: usize,
    /// Recovery buffers and windows.
    pub recovery: RecoveryLimits,
}

/// The registry.
#[derive(Debug)]
pub struct Hub {
    clients: ClientIndex,
    chans: ChanIndex,
    next_conn: AtomicU64,
    /// Numbers the entries' sequence streams.
    next_stream: AtomicU64,
    /// This node process's epoch, the first part of every stream name.
    node_epoch: String,
    connections: AtomicU64,
    max_per_client: usize,
    max_total: usize,
    queue_capacity: usize,
    recovery: RecoveryLimits,
    /// The bytes recovery buffers hold, against the node's bound.
    memory: Memory,
    /// Clients closed because their home became another node, until the presence writer
    /// records them as moved rather than offline.
    moved: Mutex<HashSet<ClientId>>,
    /// Notified whenever a client's stream was taken over from another node.
    handed: Notify,
    metrics: Arc<Metrics>,
    work: Arc<HubWork>,
    sessions: Arc<Sessions>,
}

impl Hub {
    /// An empty hub with these limits, for the node process whose epoch is `node_epoch`.
    pub fn new(
        limits: HubLimits,
        node_epoch: String,
        metrics: Arc<Metrics>,
        work: Arc<HubWork>,
    ) -> Self {
        Self {
            clients: ClientIndex::new(),
            chans: ChanIndex::new(),
            next_conn: AtomicU64::new(1),
            next_stream: AtomicU64::new(1),
            node_epoch,
            connections: AtomicU64::new(0),
            max_per_client: limits.max_per_client,
            max_total: limits.max_total,
            queue_capacity: limits.queue_capacity,
            memory: Memory::new(limits.recovery.node_max_bytes, metrics.clone()),
            recovery: limits.recovery,
            moved: Mutex::new(HashSet::new()),
            handed: Notify::new(),
            metrics,
            work,
            sessions: Arc::default(),
        }
    }

    /// A new entry with a fresh stream of this node (see [`ClientEntry::new`]).
    fn new_entry(
        &self,
        client: &ClientId,
        meta: serde_json::Value,
        detached: Option<Instant>,
    ) -> Arc<ClientEntry> {
        let stream = self.next_stream.fetch_add(1, Relaxed);
        Arc::new(ClientEntry::new(
            client.clone(),
            format!("{}-{stream}", self.node_epoch),
            meta,
            detached,
        ))
    }

    /// Records what an entry's pushes and closes did.
    fn record(&self, tally: Tally) {
        if tally.sent > 0 {
            self.metrics.deliveries.fetch_add(tally.sent, Relaxed);
        }
        if tally.refused > 0 {
            self.metrics.dropped(DropReason::QueueFull, tally.refused);
        }
        if tally.forwarded > 0 {
            self.metrics.forwarded.fetch_add(tally.forwarded, Relaxed);
        }
        if self.recovery.enabled() {
            self.memory.account(tally.bytes);
        }
    }

    /// Registers a connection for the token's client; `since` is where it asks to resume.
    /// `welcome` builds the first frame. A client new to the node has its channels loaded
    /// from Redis, and its connection is held (the welcome not sent, deliveries queued behind
    /// it) until they are and their topics are subscribed; membership changes that arrive
    /// meanwhile are recorded and replayed on top of what the load reads. A resume that can
    /// be served queues the missed envelopes right behind the welcome, before any live one.
    pub fn register(
        &self,
        claims: &ConnectClaims,
        since: Option<&str>,
        welcome: impl FnOnce(&WelcomeInfo) -> String,
    ) -> Result<Registration, Refusal> {
        if self.full() {
            return Err(Refusal::NodeLimit(self.max_total));
        }
        let id = ConnId(self.next_conn.fetch_add(1, Relaxed));
        let (attached, new_client) = {
            let mut shard = self.clients.shard(&claims.sub);
            let mut new_client = false;
            let entry = shard
                .entry(claims.sub.clone())
                .or_insert_with(|| {
                    new_client = true;
                    self.new_entry(&claims.sub, claims.meta.clone(), None)
                })
                .clone();
            let mut inner = entry.lock();
            if inner.conns.len() >= self.max_per_client {
                drop(inner);
                if new_client {
                    shard.remove(&claims.sub);
                }
                return Err(Refusal::ClientLimit(self.max_per_client));
            }
            let attached = inner.attach(
                id,
                &claims.meta,
                since,
                &self.node_epoch,
                self.queue_capacity,
                welcome,
            );
            (attached, new_client)
        };
        if let Some(chans) = attached.window_closed {
            self.metrics.recovery_windows.fetch_sub(1, Relaxed);
            self.work.chan_counts.mark_all(chans);
        }
        if let Some((recovered, reason)) = attached.resumed {
            self.metrics.resumed(recovered, reason);
        }
        if attached.came_online {
            self.metrics.clients.fetch_add(1, Relaxed);
        }
        if new_client {
            self.work.memberships.mark(&claims.sub);
        }
        self.connections.fetch_add(1, Relaxed);
        self.metrics.connections.fetch_add(1, Relaxed);
        self.metrics.connections_opened.fetch_add(1, Relaxed);
        self.work.presence.mark(&claims.sub);
        Ok(Registration::new(
            id,
            attached.outbox,
            LiveSession::start(&self.sessions),
        ))
    }

    /// Removes a connection. Idempotent. When it was the client's last, the client's recovery
    /// window opens (its buffer and channels stay); without recovery, or when it was kicked,
    /// the client leaves the hub and its local channel memberships with it.
    pub fn unregister(&self, client: &ClientId, id: ConnId) {
        let (detached, entry) = {
            let mut shard = self.clients.shard(client);
            let Some(entry) = shard.get(client).cloned() else {
                return;
            };
            let detached = entry
                .lock()
                .detach(id, self.recovery.enabled(), Instant::now());
            if matches!(detached, Detached::Leaves { .. }) {
                shard.remove(client);
            }
            (detached, entry)
        };
        let went_offline = match detached {
            Detached::Unknown => return,
            Detached::Stays {
                went_offline,
                chans,
            } => {
                self.work.chan_counts.mark_all(chans);
                went_offline
            }
            Detached::WindowOpened(chans) => {
                self.metrics.recovery_windows.fetch_add(1, Relaxed);
                self.work.chan_counts.mark_all(chans);
                true
            }
            Detached::Leaves { freed, chans } => {
                self.memory.free(freed);
                for chan in chans {
                    self.chan_remove(&chan, &entry);
                }
                true
            }
        };
        if went_offline {
            self.metrics.clients.fetch_sub(1, Relaxed);
        }
        self.metrics.connections.fetch_sub(1, Relaxed);
        self.connections.fetch_sub(1, Relaxed);
        self.work.presence.mark(client);
    }

    /// Queues an envelope to every connection of each receiver (or keeps it for a receiver
    /// inside its recovery window) and reports how far it got to each. `body` is the shared
    /// envelope body.
    /// A receiver not here but `expected` (being handed over by the node it left) has the
    /// envelope kept for it (see [`Hub::hold`]).
    pub fn deliver(
        &self,
        to: &[ClientId],
        body: &str,
        expected: impl Fn(&ClientId) -> bool,
        mut result: impl FnMut(&ClientId, Reach),
    ) {
        let now = Instant::now();
        for client in to {
            let reach = match self.clients.get(client) {
                Some(entry) => self.push(&entry, body, now),
                None if expected(client) => self.hold(client, body),
                None => Reach::Offline,
            };
            if reach == Reach::Offline {
                self.metrics.dropped(DropReason::Offline, 1);
            }
            result(client, reach);
        }
    }

    /// Queues an envelope to every local member of `chan` but `exclude`; returns how many
    /// clients it reached.
    pub fn fanout_chan(&self, chan: &ChanName, body: &str, exclude: Option<&ClientId>) -> u64 {
        let Some(members) = self.chans.members(chan) else {
            return 0;
        };
        let reached = self.push_all(members, body, exclude);
        self.metrics.chan_deliveries.fetch_add(reached, Relaxed);
        reached
    }

    /// Queues an envelope to every local client but `exclude`; returns how many it reached.
    pub fn broadcast(&self, body: &str, exclude: Option<&ClientId>) -> u64 {
        self.clients
            .each_shard()
            .map(|entries| self.push_all(entries, body, exclude))
            .sum()
    }

    fn push_all(
        &self,
        entries: Vec<Arc<ClientEntry>>,
        body: &str,
        exclude: Option<&ClientId>,
    ) -> u64 {
        let now = Instant::now();
        let mut tally = Tally::default();
        let mut reached = 0;
        for entry in entries {
            if exclude == Some(&entry.id) {
                continue;
            }
            if self.push_into(&entry, body, now, &mut tally) == Reach::Delivered {
                reached += 1;
            }
        }
        self.record(tally);
        reached
    }

    /// Gives the envelope the client's next sequence number, keeps it in the client's
    /// recovery buffer and queues it to each connection (see the entry's `push`).
    fn push(&self, entry: &ClientEntry, body: &str, now: Instant) -> Reach {
        let mut tally = Tally::default();
        let reach = self.push_into(entry, body, now, &mut tally);
        self.record(tally);
        reach
    }

    /// Pushes to one entry, adding what it did to `tally`.
    fn push_into(&self, entry: &ClientEntry, body: &str, now: Instant, tally: &mut Tally) -> Reach {
        entry.lock().push(
            &entry.id,
            body,
            now,
            &self.recovery,
            &self.work.outgoing,
            tally,
        )
    }

    /// Asks every connection of `client` to close with `code`, and ends its recovery window:
    /// a kicked client has nothing to resume. Returns how many connections it had.
    pub fn kick(&self, client: &ClientId, code: CloseCode) -> usize {
        let Some(entry) = self.clients.get(client) else {
            return 0;
        };
        let n = entry.lock().kick(code);
        self.end_window(&entry);
        n
    }

    /// Tells every client that envelopes for it may never have reached the node (`frame`, a
    /// `missed` system frame, goes to each connection) and marks every stream, so that a resume
    /// from before now is refused: the node's Redis subscription was lost, and what was
    /// published meanwhile went to no one.
    pub fn mark_missed(&self, frame: &str) {
        let frame = Bytes::from(frame.to_owned());
        for entries in self.clients.each_shard() {
            let mut tally = Tally::default();
            for entry in entries {
                entry.lock().mark_missed(&frame, &mut tally);
            }
            self.record(tally);
        }
    }

    /// Asks every connection to close with `code`.
    pub fn close_all(&self, code: CloseCode) {
        for entries in self.clients.each_shard() {
            for entry in entries {
                entry.lock().close_all(code);
            }
        }
    }

    /// Waits until every session has ended, its close frame written (or given up on).
    pub async fn wait_empty(&self) {
        self.sessions.wait_empty().await;
    }

    /// What the presence hash should hold for `client`: `None` when it has no connection, or
    /// its connections have not had their welcome yet.
    pub fn presence_of(&self, client: &ClientId) -> Option<PresenceRecord> {
        self.clients.get(client)?.lock().presence()
    }

    /// Every client on the node: online, or inside its recovery window.
    pub fn clients(&self) -> Vec<ClientId> {
        self.clients.ids()
    }

    /// Where `client`'s entry stands, if it is here.
    pub fn state_of(&self, client: &ClientId) -> Option<State> {
        self.clients.get(client).map(|e| e.state())
    }

    /// Open connections on this node.
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    /// The most connections allowed on this node.
    pub fn max_connections(&self) -> usize {
        self.max_total
    }

    /// Whether a new connection would be refused for lack of room.
    pub fn full(&self) -> bool {
        self.connections.load(Relaxed) >= self.max_total as u64
    }

    /// The recovery settings.
    pub fn recovery(&self) -> &RecoveryLimits {
        &self.recovery
    }

    /// Session tasks running, close frames included.
    pub fn session_tasks(&self) -> u64 {
        self.sessions.live()
    }

    /// Records that `client` is being moved to its new home.
    pub fn mark_moved(&self, client: &ClientId) {
        lock(&self.moved).insert(client.clone());
    }

    /// Whether `client` left because it was moved (forgets it: asked once, by the presence
    /// writer when the client's entry goes).
    pub fn take_moved(&self, client: &ClientId) -> bool {
        lock(&self.moved).remove(client)
    }
}
