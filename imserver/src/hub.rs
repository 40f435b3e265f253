//! The hub: this node's registry of open connections by client, and of local channel members
//! by channel. The broker delivers through it, sessions register and unregister in it, the
//! presence writer, the membership loader and the subscriber read it.
//!
//! Locking: clients and channels live in sharded maps of std Mutexes; each client entry has a
//! mutex of its own for its connections, sequence counter and channels. Lock order is client
//! entry, then channel shard; fan-out copies a channel's member list under the channel shard
//! lock and releases it before locking each member. A connection's outbox lock is taken last,
//! under its client entry's, and never held while taking another. No lock is held across an
//! await.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use imclient::contract::{self, CloseCode, PresenceRecord};
use imclient::token::ConnectClaims;
use imclient::{ChanName, ClientId, now_ms};
use tokio::sync::Notify;

use crate::metrics::{DropReason, Metrics};
use crate::outbox::{self, Frame, Outbox};
use crate::pending::Pending;

const SHARDS: usize = 64;

/// Node-local connection id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// What the hub keeps per connection.
#[derive(Debug)]
struct ConnHandle {
    id: ConnId,
    outbox: Arc<Outbox>,
}

/// A membership change, as recorded while a client's channels are being loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChanOp {
    /// The client joined the channel.
    Join(ChanName),
    /// The client left the channel.
    Leave(ChanName),
}

/// One online client.
#[derive(Debug)]
pub struct ClientEntry {
    id: ClientId,
    meta: serde_json::Value,
    since: u64,
    inner: Mutex<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    conns: Vec<ConnHandle>,
    /// Last sequence number assigned; strictly increasing for the entry's life.
    seq: u64,
    /// The channels this client is a member of, as far as this node knows.
    chans: HashSet<ChanName>,
    /// While its channels are being loaded from Redis: the membership changes that arrived
    /// since the load began, replayed on top of what the load reads.
    sync_log: Option<Vec<ChanOp>>,
    /// Bumped each time a load begins; a load result for an older generation is ignored.
    sync_gen: u64,
    /// Removed from the hub: nothing may be added any more.
    gone: bool,
}

impl ClientEntry {
    fn lock(&self) -> MutexGuard<'_, ClientInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client id.
    pub fn id(&self) -> &ClientId {
        &self.id
    }
}

/// The receiving side a session gets when it registers.
#[derive(Debug)]
pub struct Registration {
    /// This connection's id.
    pub id: ConnId,
    /// Frames to write, in order (the welcome frame is first), and close requests.
    pub outbox: Arc<Outbox>,
    /// Counts the session as live until the registration is dropped, which the session does
    /// last, after its close frame: shutdown waits for that.
    _live: LiveSession,
}

/// How many sessions are running, close frames included.
#[derive(Debug, Default)]
struct Sessions {
    live: AtomicU64,
    /// Notified when the last session ends.
    ended: Notify,
}

/// One live session; dropping it ends it.
#[derive(Debug)]
struct LiveSession(Arc<Sessions>);

impl LiveSession {
    fn start(sessions: &Arc<Sessions>) -> Self {
        sessions.live.fetch_add(1, Relaxed);
        Self(sessions.clone())
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Relaxed) == 1 {
            self.0.ended.notify_waiters();
        }
    }
}

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

/// Background work the hub asks for.
#[derive(Debug, Default)]
pub struct HubWork {
    /// Clients whose presence record may differ from Redis.
    pub presence: Pending<ClientId>,
    /// Channels whose local online count may differ from Redis.
    pub chan_counts: Pending<ChanName>,
    /// Channels whose topic subscription may need to change.
    pub topics: Pending<ChanName>,
    /// Clients whose channels must be loaded from Redis.
    pub memberships: Pending<ClientId>,
}

/// One shard of the client map.
type ClientShard = Mutex<HashMap<ClientId, Arc<ClientEntry>>>;
/// A channel's local members.
type ChanMembers = HashMap<ClientId, Arc<ClientEntry>>;
/// One shard of the channel map.
type ChanShard = Mutex<HashMap<ChanName, ChanMembers>>;

/// The registry.
#[derive(Debug)]
pub struct Hub {
    clients: Box<[ClientShard]>,
    chans: Box<[ChanShard]>,
    next_conn: AtomicU64,
    connections: AtomicU64,
    max_per_client: usize,
    max_total: usize,
    queue_capacity: usize,
    metrics: Arc<Metrics>,
    work: Arc<HubWork>,
    sessions: Arc<Sessions>,
}

fn shard_of<K: Hash>(key: &K) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// An empty hub with these limits.
    pub fn new(
        max_per_client: usize,
        max_total: usize,
        queue_capacity: usize,
        metrics: Arc<Metrics>,
        work: Arc<HubWork>,
    ) -> Self {
        Self {
            clients: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            chans: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_conn: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            max_per_client,
            max_total,
            queue_capacity,
            metrics,
            work,
            sessions: Arc::default(),
        }
    }

    fn entry(&self, client: &ClientId) -> Option<Arc<ClientEntry>> {
        lock(&self.clients[shard_of(client)]).get(client).cloned()
    }

    /// Open connections on this node.
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    /// Registers a connection for the token's client. `welcome` builds the first frame from
    /// the new connection id; it is queued before any delivery can be. A client new to the
    /// node has its channels loaded from Redis; membership changes that arrive meanwhile are
    /// recorded and replayed on top of what the load reads.
    pub fn register(
        &self,
        claims: &ConnectClaims,
        welcome: impl FnOnce(ConnId) -> String,
    ) -> Result<Registration, Refusal> {
        if self.connections.load(Relaxed) >= self.max_total as u64 {
            return Err(Refusal::NodeLimit(self.max_total));
        }
        let id = ConnId(self.next_conn.fetch_add(1, Relaxed));
        let outbox = Arc::new(Outbox::new(self.queue_capacity));
        let new_client = {
            let mut shard = lock(&self.clients[shard_of(&claims.sub)]);
            let mut new_client = false;
            let entry = shard.entry(claims.sub.clone()).or_insert_with(|| {
                new_client = true;
                Arc::new(ClientEntry {
                    id: claims.sub.clone(),
                    meta: claims.meta.clone(),
                    since: now_ms(),
                    inner: Mutex::new(ClientInner {
                        conns: Vec::new(),
                        seq: 0,
                        chans: HashSet::new(),
                        sync_log: Some(Vec::new()),
                        sync_gen: 1,
                        gone: false,
                    }),
                })
            });
            let mut inner = entry.lock();
            if inner.conns.len() >= self.max_per_client {
                drop(inner);
                if new_client {
                    shard.remove(&claims.sub);
                }
                return Err(Refusal::ClientLimit(self.max_per_client));
            }
            // A new outbox always has room for one frame.
            let _ = outbox.send(Frame::text(welcome(id)));
            inner.conns.push(ConnHandle {
                id,
                outbox: outbox.clone(),
            });
            new_client
        };
        if new_client {
            self.metrics.clients.fetch_add(1, Relaxed);
            self.work.memberships.mark(&claims.sub);
        }
        self.connections.fetch_add(1, Relaxed);
        self.metrics.connections.fetch_add(1, Relaxed);
        self.metrics.connections_opened.fetch_add(1, Relaxed);
        self.work.presence.mark(&claims.sub);
        Ok(Registration {
            id,
            outbox,
            _live: LiveSession::start(&self.sessions),
        })
    }

    /// Removes a connection. Idempotent. When it was the client's last, the client leaves the
    /// hub and its local channel memberships with it.
    pub fn unregister(&self, client: &ClientId, id: ConnId) {
        let (removed, left) = {
            let mut shard = lock(&self.clients[shard_of(client)]);
            let Some(entry) = shard.get(client).cloned() else {
                return;
            };
            let mut inner = entry.lock();
            let before = inner.conns.len();
            inner.conns.retain(|c| c.id != id);
            let removed = inner.conns.len() < before;
            let left = if inner.conns.is_empty() {
                inner.gone = true;
                let chans = std::mem::take(&mut inner.chans);
                drop(inner);
                shard.remove(client);
                Some((entry, chans))
            } else {
                None
            };
            (removed, left)
        };
        if let Some((entry, chans)) = left {
            self.metrics.clients.fetch_sub(1, Relaxed);
            for chan in chans {
                self.chan_remove(&chan, &entry);
            }
        }
        if removed {
            self.metrics.connections.fetch_sub(1, Relaxed);
            self.connections.fetch_sub(1, Relaxed);
            self.work.presence.mark(client);
        }
    }

    fn chan_add(&self, chan: &ChanName, entry: &Arc<ClientEntry>) {
        let mut shard = lock(&self.chans[shard_of(chan)]);
        let members = shard.entry(chan.clone()).or_default();
        let first = members.is_empty();
        members.insert(entry.id.clone(), entry.clone());
        drop(shard);
        if first {
            self.work.topics.mark(chan);
        }
        self.work.chan_counts.mark(chan);
    }

    fn chan_remove(&self, chan: &ChanName, entry: &Arc<ClientEntry>) {
        let mut shard = lock(&self.chans[shard_of(chan)]);
        let Some(members) = shard.get_mut(chan) else {
            return;
        };
        // Only this entry: a newer entry of the same client may have joined since.
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
        drop(shard);
        if last {
            self.work.topics.mark(chan);
        }
        self.work.chan_counts.mark(chan);
    }

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
        let Some(entry) = self.entry(client) else {
            return;
        };
        let mut inner = entry.lock();
        if inner.gone {
            return;
        }
        if let Some(log) = inner.sync_log.as_mut() {
            log.push(op.clone());
        }
        self.apply_locked(&entry, &mut inner, &op);
    }

    /// For the membership loader: the entry and load generation of `client`, if a load is
    /// due. The read from Redis must be sent after this call.
    pub fn sync_ticket(&self, client: &ClientId) -> Option<(Arc<ClientEntry>, u64)> {
        let entry = self.entry(client)?;
        let inner = entry.lock();
        if inner.gone || inner.sync_log.is_none() {
            return None;
        }
        let generation = inner.sync_gen;
        drop(inner);
        Some((entry, generation))
    }

    /// Sets a client's channels to what Redis held (`stored`) plus the changes recorded since
    /// the load began. Ignored if the client left or a newer load began.
    pub fn finish_sync(&self, entry: &Arc<ClientEntry>, generation: u64, stored: Vec<ChanName>) {
        let mut inner = entry.lock();
        if inner.gone || inner.sync_gen != generation {
            return;
        }
        let Some(log) = inner.sync_log.take() else {
            return;
        };
        let mut target: HashSet<ChanName> = stored.into_iter().collect();
        for op in log {
            match op {
                ChanOp::Join(chan) => target.insert(chan),
                ChanOp::Leave(chan) => target.remove(&chan),
            };
        }
        let current: Vec<ChanName> = inner.chans.iter().cloned().collect();
        for chan in current.into_iter().filter(|c| !target.contains(c)) {
            self.apply_locked(entry, &mut inner, &ChanOp::Leave(chan));
        }
        for chan in target {
            self.apply_locked(entry, &mut inner, &ChanOp::Join(chan));
        }
    }

    /// Starts a new load of every local client's channels (after a Redis outage, when
    /// membership changes may have been missed).
    pub fn resync_memberships(&self) {
        let mut all = Vec::new();
        for shard in self.clients.iter() {
            for entry in lock(shard).values() {
                let mut inner = entry.lock();
                inner.sync_gen += 1;
                inner.sync_log = Some(Vec::new());
                all.push(entry.id.clone());
            }
        }
        self.work.memberships.mark_all(all);
    }

    /// Drops a deleted channel for every local member.
    pub fn chan_deleted(&self, chan: &ChanName) {
        let members = lock(&self.chans[shard_of(chan)])
            .remove(chan)
            .unwrap_or_default();
        for entry in members.into_values() {
            let mut inner = entry.lock();
            inner.chans.remove(chan);
            if let Some(log) = inner.sync_log.as_mut() {
                log.push(ChanOp::Leave(chan.clone()));
            }
        }
        self.work.topics.mark(chan);
        self.work.chan_counts.mark(chan);
    }

    /// Queues an envelope to every connection of each receiver and reports, per receiver,
    /// whether it had a connection. `body` is the shared envelope body.
    pub fn deliver(&self, to: &[ClientId], body: &str, mut result: impl FnMut(&ClientId, bool)) {
        for client in to {
            let delivered = self
                .entry(client)
                .is_some_and(|entry| self.push(&entry, body));
            if !delivered {
                self.metrics.dropped(DropReason::Offline, 1);
            }
            result(client, delivered);
        }
    }

    /// Queues an envelope to every local member of `chan` but `exclude`; returns how many
    /// clients it reached.
    pub fn fanout_chan(&self, chan: &ChanName, body: &str, exclude: Option<&ClientId>) -> u64 {
        let members: Vec<Arc<ClientEntry>> = match lock(&self.chans[shard_of(chan)]).get(chan) {
            Some(members) => members.values().cloned().collect(),
            None => return 0,
        };
        let reached = self.push_all(members, body, exclude);
        self.metrics.chan_deliveries.fetch_add(reached, Relaxed);
        reached
    }

    /// Queues an envelope to every local client but `exclude`; returns how many it reached.
    pub fn broadcast(&self, body: &str, exclude: Option<&ClientId>) -> u64 {
        let mut reached = 0;
        for shard in self.clients.iter() {
            let entries: Vec<Arc<ClientEntry>> = lock(shard).values().cloned().collect();
            reached += self.push_all(entries, body, exclude);
        }
        reached
    }

    fn push_all(
        &self,
        entries: Vec<Arc<ClientEntry>>,
        body: &str,
        exclude: Option<&ClientId>,
    ) -> u64 {
        let mut reached = 0;
        for entry in entries {
            if exclude == Some(&entry.id) {
                continue;
            }
            if self.push(&entry, body) {
                reached += 1;
            }
        }
        reached
    }

    /// Gives the envelope the client's next sequence number and queues it to each connection.
    fn push(&self, entry: &ClientEntry, body: &str) -> bool {
        let mut inner = entry.lock();
        if inner.gone || inner.conns.is_empty() {
            return false;
        }
        inner.seq += 1;
        let frame = Frame::text(contract::frame(inner.seq, body));
        // The last connection takes the frame itself: cloning a `Bytes` made from a `String`
        // allocates its shared header, which a client with one connection never needs.
        if let Some((last, others)) = inner.conns.split_last() {
            for conn in others {
                self.send(conn, frame.clone());
            }
            self.send(last, frame);
        }
        true
    }

    fn send(&self, conn: &ConnHandle, frame: Frame) {
        match conn.outbox.send(frame) {
            Ok(()) => {
                self.metrics.deliveries.fetch_add(1, Relaxed);
            }
            Err(outbox::Refused::Full) => {
                self.metrics.dropped(DropReason::QueueFull, 1);
                conn.outbox.request_close(CloseCode::SlowConsumer);
            }
            // The session is ending and will unregister.
            Err(outbox::Refused::Closed) => {}
        }
    }

    /// Asks every connection of `client` to close with `code`. Returns how many it had.
    pub fn kick(&self, client: &ClientId, code: CloseCode) -> usize {
        let Some(entry) = self.entry(client) else {
            return 0;
        };
        let inner = entry.lock();
        for conn in &inner.conns {
            conn.outbox.request_close(code);
        }
        inner.conns.len()
    }

    /// Asks every connection to close with `code`.
    pub fn close_all(&self, code: CloseCode) {
        for shard in self.clients.iter() {
            let entries: Vec<Arc<ClientEntry>> = lock(shard).values().cloned().collect();
            for entry in entries {
                for conn in &entry.lock().conns {
                    conn.outbox.request_close(code);
                }
            }
        }
    }

    /// Waits until every session has ended, its close frame written (or given up on).
    pub async fn wait_empty(&self) {
        loop {
            let notified = self.sessions.ended.notified();
            if self.sessions.live.load(Relaxed) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// What the presence hash should hold for `client`: `None` when it has no connection.
    pub fn presence_of(&self, client: &ClientId) -> Option<PresenceRecord> {
        let entry = self.entry(client)?;
        let conns = entry.lock().conns.len();
        Some(PresenceRecord {
            conns: u32::try_from(conns).unwrap_or(u32::MAX),
            meta: entry.meta.clone(),
            since: entry.since,
        })
    }

    /// Every client with a connection.
    pub fn clients(&self) -> Vec<ClientId> {
        self.clients
            .iter()
            .flat_map(|s| lock(s).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// How many local clients are members of `chan`.
    pub fn chan_count(&self, chan: &ChanName) -> u64 {
        lock(&self.chans[shard_of(chan)])
            .get(chan)
            .map_or(0, |m| m.len() as u64)
    }

    /// Every channel with at least one local member.
    pub fn chans(&self) -> Vec<ChanName> {
        self.chans
            .iter()
            .flat_map(|s| lock(s).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// The channels `client` is a member of here (empty when it is not here).
    pub fn client_chans(&self, client: &ClientId) -> Vec<ChanName> {
        self.entry(client)
            .map(|e| e.lock().chans.iter().cloned().collect())
            .unwrap_or_default()
    }
}
