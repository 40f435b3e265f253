//! The hub: this node's registry of clients (those with open connections, and those inside
//! their recovery window) and of local channel members by channel. The broker delivers through
//! it, sessions register and unregister in it, the presence writer, the membership loader, the
//! subscriber and the recovery sweeper read it.
//!
//! A client new to the node is not *ready* until its channels are loaded and the topics of all
//! of them are subscribed (acknowledged by Redis): until then its connections are held, queueing
//! what arrives behind a welcome that is not sent yet. So a welcome means that everything sent
//! to the client from then on reaches the socket.
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use imclient::contract::{
    self, CloseCode, Forward, Handover, NodeCommand, PresenceRecord, RecoveryRefusal, ResumeFrom,
};
use imclient::token::ConnectClaims;
use imclient::{ChanName, ClientId, now_ms};
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

use crate::metrics::{DropReason, Metrics};
use crate::outbox::{self, Frame, Outbox};
use crate::pending::Pending;
use crate::recovery::{RecoveryBuffer, RecoveryLimits, Resume};

const SHARDS: usize = 64;
/// How long a node passes on what arrives for a client it handed over, and how long the new
/// home drops the second copy of an envelope that came both ways. Backends follow a node-set
/// change within a second; a channel topic is subscribed at the new home within moments of
/// the handover.
pub const FORWARD_FOR: Duration = Duration::from_secs(10);

/// Gives back most of a map's room once it holds far fewer entries than it has room for: maps
/// keep their peak size otherwise, and a node's peak (every client of a busy hour) is far above
/// its usual load.
pub fn shrink_if_sparse<K: Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to_fit();
    }
}

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

/// One client on this node: online, or inside its recovery window.
#[derive(Debug)]
pub struct ClientEntry {
    id: ClientId,
    inner: Mutex<ClientInner>,
}

/// Where an entry stands in a move between nodes.
#[derive(Debug, Default)]
enum Move {
    #[default]
    Settled,
    /// The client's home is now another node, whose topic is `topic`, and its stream was
    /// handed over: what still arrives here for it (from backends that have not seen the
    /// change yet, or on this node's channel topics) is passed on there until `until`.
    Forwarding { topic: String, until: Instant },
    /// The client was just taken over from another node, or is expected to be (`awaiting`:
    /// deliveries came before its stream did). Until `until`, an envelope that arrives twice
    /// (directly and passed on by the old node) is pushed once.
    TakingOver {
        seen: HashSet<Box<str>>,
        until: Instant,
        awaiting: bool,
    },
}

#[derive(Debug)]
struct ClientInner {
    /// Names this entry's sequence stream: `<node epoch>-<n>`. A new entry (after the window
    /// ran out) starts a new stream, so an old `since` cannot be mistaken for a position in it.
    /// A stream handed over by another node keeps that node's name.
    stream: String,
    conns: Vec<ConnHandle>,
    /// Metadata from the token of the connection that brought the client online.
    meta: serde_json::Value,
    /// When the client came online, ms since the Unix epoch.
    since: u64,
    /// Last sequence number assigned; strictly increasing for the entry's life.
    seq: u64,
    /// Channels loaded and their topics subscribed: connections get their welcome at once.
    ready: bool,
    /// The channels this client is a member of, as far as this node knows.
    chans: HashSet<ChanName>,
    /// While its channels are being loaded from Redis: the membership changes that arrived
    /// since the load began, replayed on top of what the load reads.
    sync_log: Option<Vec<ChanOp>>,
    /// Bumped each time a load begins; a load result for an older generation is ignored.
    sync_gen: u64,
    /// The recent envelopes, for clients that come back.
    buffer: RecoveryBuffer,
    /// Since when the client has had no connection: its recovery window is open.
    detached: Option<Instant>,
    /// Kicked by the business: no recovery window when its connections are gone.
    kicked: bool,
    /// Removed from the hub: nothing may be added any more.
    gone: bool,
    /// Moving to another node, or just arrived from one.
    moving: Move,
    /// The last `seq` given out before the node lost its Redis subscription: a resume from
    /// there or earlier cannot be whole, whatever the buffer holds.
    lost_after: Option<u64>,
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

/// What a welcome frame says about the connection it opens.
#[derive(Debug, Clone)]
pub struct WelcomeInfo {
    /// The connection id.
    pub conn: ConnId,
    /// The client's sequence stream.
    pub epoch: String,
    /// The last sequence number given out before this connection.
    pub seq: u64,
    /// Whether the resume asked for was served (None when none was asked for).
    pub recovered: Option<bool>,
    /// Why not, when it was not.
    pub reason: Option<RecoveryRefusal>,
}

/// How far a message got to one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Queued to at least one connection.
    Delivered,
    /// Kept in the buffer of a client inside its recovery window.
    Buffered,
    /// The client is not on this node.
    Offline,
}

/// What a sweep of the recovery buffers did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Swept {
    /// Windows that ran out.
    pub expired: u64,
    /// Windows ended early because the node held too many bytes.
    pub evicted: u64,
    /// Online clients whose buffers were cut because the node still held too many bytes.
    pub trimmed: u64,
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
    /// Live joins whose callers wait to hear that they took effect.
    pub join_acks: JoinAcks,
    /// A node announced that it started, stopped or was purged.
    pub nodeset: Notify,
    /// Redis commands the node sends in the background: receipts for senders on other nodes,
    /// join acknowledgements.
    pub outgoing: Outgoing,
}

/// Redis commands waiting for the publisher task, in order; bounded, the oldest dropped past
/// the bound (receipts and acknowledgements are best effort: a lost one leaves a sender
/// without a status, or a join waiting out its timeout).
#[derive(Debug, Default)]
pub struct Outgoing {
    queue: Mutex<std::collections::VecDeque<redis::Cmd>>,
    wake: Notify,
    /// Publish with SPUBLISH (a Redis Cluster); set once at start.
    sharded: AtomicBool,
}

impl Outgoing {
    /// Commands waiting at most.
    const MAX: usize = 100_000;

    /// Queues commands to send in this order.
    pub fn push(&self, cmds: impl IntoIterator<Item = redis::Cmd>) {
        let mut queue = lock(&self.queue);
        for cmd in cmds {
            if queue.len() >= Self::MAX {
                queue.pop_front();
            }
            queue.push_back(cmd);
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Publishes on sharded topics from now on (the node runs on a Redis Cluster).
    pub fn set_sharded(&self, sharded: bool) {
        self.sharded.store(sharded, Relaxed);
    }

    /// Queues a publish of `payload` on `topic`.
    pub fn publish(&self, topic: &str, payload: String) {
        self.push([imclient::store::publish(
            self.sharded.load(Relaxed),
            topic,
            payload,
        )]);
    }

    /// Takes everything queued, oldest first.
    pub fn take(&self) -> Vec<redis::Cmd> {
        std::mem::take(&mut *lock(&self.queue)).into()
    }

    /// Waits until something is queued.
    pub async fn wait(&self) {
        self.wake.notified().await;
    }
}

/// Live joins waiting to take effect before they are acknowledged; bounded, past the bound
/// the oldest are dropped (their callers stop waiting at their timeout).
#[derive(Debug, Default)]
pub struct JoinAcks {
    waiting: Mutex<std::collections::VecDeque<(ClientId, ChanName, String)>>,
}

impl JoinAcks {
    /// Joins waiting at most.
    const MAX: usize = 100_000;

    /// Records a join of `client` to `chan` acknowledged to the list named `ack`.
    pub fn push(&self, client: ClientId, chan: ChanName, ack: String) {
        let mut waiting = lock(&self.waiting);
        if waiting.len() >= Self::MAX {
            waiting.pop_front();
        }
        waiting.push_back((client, chan, ack));
    }

    /// Takes the joins for which `settled` holds: (client, ack list name).
    pub fn take_settled(
        &self,
        settled: impl Fn(&ClientId, &ChanName) -> bool,
    ) -> Vec<(ClientId, String)> {
        let mut done = Vec::new();
        lock(&self.waiting).retain(|(client, chan, ack)| {
            if settled(client, chan) {
                done.push((client.clone(), ack.clone()));
                false
            } else {
                true
            }
        });
        done
    }
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
    /// Numbers the entries' sequence streams.
    next_stream: AtomicU64,
    /// This node process's epoch, the first part of every stream name.
    node_epoch: String,
    connections: AtomicU64,
    max_per_client: usize,
    max_total: usize,
    queue_capacity: usize,
    recovery: RecoveryLimits,
    /// Woken when the buffers hold more than the node's bound.
    pressure: Notify,
    /// Channel topics the subscriber holds, acknowledged by Redis and not being dropped.
    subscribed: Mutex<HashSet<ChanName>>,
    /// Whether the node's own topic and the broadcast topic are subscribed.
    base_subscribed: AtomicBool,
    /// Notified when the node's own topics are subscribed.
    base_up: Notify,
    /// Clients closed because their home became another node, until the presence writer
    /// records them as moved rather than offline.
    moved: Mutex<HashSet<ClientId>>,
    /// Notified whenever a client's stream was taken over from another node.
    handed: Notify,
    metrics: Arc<Metrics>,
    work: Arc<HubWork>,
    sessions: Arc<Sessions>,
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
    /// An empty hub with these limits, for the node process whose epoch is `node_epoch`.
    pub fn new(
        limits: HubLimits,
        node_epoch: String,
        metrics: Arc<Metrics>,
        work: Arc<HubWork>,
    ) -> Self {
        Self {
            clients: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            chans: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_conn: AtomicU64::new(1),
            next_stream: AtomicU64::new(1),
            node_epoch,
            connections: AtomicU64::new(0),
            max_per_client: limits.max_per_client,
            max_total: limits.max_total,
            queue_capacity: limits.queue_capacity,
            recovery: limits.recovery,
            pressure: Notify::new(),
            subscribed: Mutex::new(HashSet::new()),
            base_subscribed: AtomicBool::new(false),
            base_up: Notify::new(),
            moved: Mutex::new(HashSet::new()),
            handed: Notify::new(),
            metrics,
            work,
            sessions: Arc::default(),
        }
    }

    fn entry(&self, client: &ClientId) -> Option<Arc<ClientEntry>> {
        lock(&self.clients[shard_of(client)]).get(client).cloned()
    }

    /// A new entry with a fresh stream of this node, not ready (its channels are to be loaded);
    /// `detached`: created without a connection, its recovery window open from then.
    fn new_entry(
        &self,
        client: &ClientId,
        meta: serde_json::Value,
        detached: Option<Instant>,
    ) -> Arc<ClientEntry> {
        let stream = self.next_stream.fetch_add(1, Relaxed);
        Arc::new(ClientEntry {
            id: client.clone(),
            inner: Mutex::new(ClientInner {
                stream: format!("{}-{stream}", self.node_epoch),
                conns: Vec::new(),
                meta,
                since: now_ms(),
                seq: 0,
                ready: false,
                chans: HashSet::new(),
                sync_log: Some(Vec::new()),
                sync_gen: 1,
                buffer: RecoveryBuffer::default(),
                detached,
                kicked: false,
                gone: false,
                moving: Move::Settled,
                lost_after: None,
            }),
        })
    }

    /// Hands `client` over to its new home, whose topic is `topic`: queues its stream and
    /// buffer there (on the ordered publisher queue, so before anything passed on later), asks
    /// its connections to close with 4003, and from then on passes on what arrives for it
    /// instead of pushing it, for [`FORWARD_FOR`]; then the entry goes. Returns false when the
    /// client is not here or was already handed over.
    pub fn hand_over(&self, client: &ClientId, topic: String) -> bool {
        let Some(entry) = self.entry(client) else {
            return false;
        };
        let mut inner = entry.lock();
        if inner.gone || matches!(inner.moving, Move::Forwarding { .. }) {
            return false;
        }
        let frames = inner.buffer.frames();
        let handover = NodeCommand::Handover(Handover {
            client: client.clone(),
            stream: inner.stream.clone(),
            seq: inner.seq,
            first: inner.buffer.first_seq().unwrap_or(inner.seq + 1),
            frames: frames
                .iter()
                .filter_map(|f| {
                    let text = std::str::from_utf8(f).ok()?;
                    RawValue::from_string(text.to_owned()).ok()
                })
                .collect(),
        });
        if let Ok(text) = serde_json::to_string(&handover) {
            self.work.outgoing.publish(&topic, text);
        }
        let freed = inner.buffer.clear();
        self.account(-(freed as isize));
        if inner.detached.take().is_some() {
            self.metrics.recovery_windows.fetch_sub(1, Relaxed);
        }
        inner.moving = Move::Forwarding {
            topic,
            until: Instant::now() + FORWARD_FOR,
        };
        for conn in &inner.conns {
            conn.outbox.request_close(CloseCode::Moved);
        }
        drop(inner);
        self.metrics.handovers_sent.fetch_add(1, Relaxed);
        self.work.presence.mark(client);
        true
    }

    /// Takes over a client's stream handed over by the node it left: its window opens here
    /// with that stream, its `seq` and its buffer, so that it resumes here as it would have
    /// there. Deliveries that arrived for it first (see [`Hub::hold`]) are numbered after
    /// the handed-over ones. A client that already connected here afresh keeps its own stream.
    pub fn take_over(&self, handover: Handover) {
        if !self.recovery.enabled() {
            return;
        }
        let now = Instant::now();
        let client = handover.client;
        let (entry, created) = {
            let mut shard = lock(&self.clients[shard_of(&client)]);
            match shard.get(&client) {
                Some(entry) => (entry.clone(), false),
                None => {
                    let entry = self.new_entry(&client, serde_json::Value::Null, Some(now));
                    shard.insert(client.clone(), entry.clone());
                    (entry, true)
                }
            }
        };
        if created {
            self.metrics.recovery_windows.fetch_add(1, Relaxed);
            self.work.memberships.mark(&client);
        }
        let mut inner = entry.lock();
        // A client this node was itself handing away (its home moved here and back): it comes
        // back as a window, with the stream it is handed.
        let returning = matches!(inner.moving, Move::Forwarding { .. }) && inner.conns.is_empty();
        if returning && inner.detached.is_none() && !inner.gone {
            inner.detached = Some(now);
            self.metrics.recovery_windows.fetch_add(1, Relaxed);
        }
        let awaiting = created
            || returning
            || matches!(inner.moving, Move::TakingOver { awaiting: true, .. })
                && inner.conns.is_empty();
        let mut seen: HashSet<Box<str>> = match std::mem::take(&mut inner.moving) {
            Move::TakingOver { seen, .. } => seen,
            _ => HashSet::new(),
        };
        if awaiting && !inner.gone {
            // What arrived before the stream did, to number after it: pushed again below,
            // so not counted as seen yet.
            seen.clear();
            let early: Vec<String> = inner
                .buffer
                .frames()
                .iter()
                .filter_map(|f| contract::unframe(std::str::from_utf8(f).ok()?))
                .collect();
            let freed = inner.buffer.clear();
            self.account(-(freed as isize));
            inner.stream = handover.stream;
            inner.seq = handover.first.saturating_sub(1);
            for frame in handover.frames {
                if let Some(id) = contract::envelope_id(frame.get()) {
                    seen.insert(id.into());
                }
                let frame = Bytes::from(String::from(Box::<str>::from(frame)));
                inner.seq += 1;
                let seq = inner.seq;
                let delta = inner.buffer.push(seq, frame, now, &self.recovery, false);
                self.account(delta);
            }
            inner.seq = inner.seq.max(handover.seq);
            inner.moving = Move::TakingOver {
                seen,
                until: now + FORWARD_FOR,
                awaiting: false,
            };
            for body in early {
                self.push_locked(&client, &mut inner, &body, now);
            }
        } else {
            inner.moving = Move::TakingOver {
                seen,
                until: now + FORWARD_FOR,
                awaiting: false,
            };
        }
        drop(inner);
        self.metrics.handovers_taken.fetch_add(1, Relaxed);
        self.handed.notify_waiters();
    }

    /// Keeps an envelope for a client that is not here yet but is being handed over by the
    /// node it left: its entry opens now, awaiting the stream (see [`Hub::take_over`]).
    pub fn hold(&self, client: &ClientId, body: &str) -> Reach {
        if !self.recovery.enabled() {
            return Reach::Offline;
        }
        let now = Instant::now();
        let entry = {
            let mut shard = lock(&self.clients[shard_of(client)]);
            match shard.get(client) {
                Some(entry) => entry.clone(),
                None => {
                    let entry = self.new_entry(client, serde_json::Value::Null, Some(now));
                    entry.lock().moving = Move::TakingOver {
                        seen: HashSet::new(),
                        until: now + FORWARD_FOR,
                        awaiting: true,
                    };
                    shard.insert(client.clone(), entry.clone());
                    self.metrics.recovery_windows.fetch_add(1, Relaxed);
                    self.work.memberships.mark(client);
                    entry
                }
            }
        };
        self.push(&entry, body, now)
    }

    /// Waits, up to `wait`, until `client`'s entry here carries `stream` (handed over by the
    /// node it left). Returns whether it does.
    pub async fn await_stream(&self, client: &ClientId, stream: &str, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let handed = self.handed.notified();
            tokio::pin!(handed);
            handed.as_mut().enable();
            if self
                .entry(client)
                .is_some_and(|e| e.lock().stream == stream)
            {
                return true;
            }
            if tokio::time::timeout_at(deadline, handed).await.is_err() {
                return false;
            }
        }
    }

    /// Open connections on this node.
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
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
        self.sessions.live.load(Relaxed)
    }

    /// Completes when the recovery buffers hold more than the node's bound.
    pub async fn pressure(&self) {
        self.pressure.notified().await;
    }

    fn account(&self, delta: isize) {
        if delta >= 0 {
            let total = self.metrics.recovery_bytes.fetch_add(delta as u64, Relaxed) + delta as u64;
            if total > self.recovery.node_max_bytes as u64 {
                self.pressure.notify_one();
            }
        } else {
            self.metrics
                .recovery_bytes
                .fetch_sub(delta.unsigned_abs() as u64, Relaxed);
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
        let (outbox, new_client, came_online, resumed) = {
            let mut shard = lock(&self.clients[shard_of(&claims.sub)]);
            let mut new_client = false;
            let entry = shard
                .entry(claims.sub.clone())
                .or_insert_with(|| {
                    new_client = true;
                    self.new_entry(&claims.sub, claims.meta.clone(), None)
                })
                .clone();
            let mut inner = entry.lock();
            if matches!(inner.moving, Move::Forwarding { .. }) {
                // Handed away, and back before the forwarding ended (its new home went away
                // again): it is this node's again, and what arrives for it is pushed here.
                inner.moving = Move::Settled;
            }
            if inner.conns.len() >= self.max_per_client {
                drop(inner);
                if new_client {
                    shard.remove(&claims.sub);
                }
                return Err(Refusal::ClientLimit(self.max_per_client));
            }
            let resume = since.map(|since| {
                crate::recovery::resume(
                    since,
                    &self.node_epoch,
                    &inner.stream,
                    inner.seq,
                    &inner.buffer,
                )
            });
            let resume = match (resume, since.and_then(ResumeFrom::parse), inner.lost_after) {
                (Some(Resume::Replay(_)), Some(from), Some(lost)) if from.seq <= lost => {
                    Some(Resume::Refused(RecoveryRefusal::RedisOutage))
                }
                (resume, _, _) => resume,
            };
            let (replay, recovered, reason) = match resume {
                None => (Vec::new(), None, None),
                Some(Resume::Replay(frames)) => (frames, Some(true), None),
                Some(Resume::Refused(reason)) => (Vec::new(), Some(false), Some(reason)),
            };
            let info = WelcomeInfo {
                conn: id,
                epoch: inner.stream.clone(),
                seq: inner.seq,
                recovered,
                reason,
            };
            // Room for the replay on top of the usual queue.
            let outbox = Arc::new(Outbox::new(self.queue_capacity + replay.len()));
            let welcome = Frame::text(welcome(&info));
            if inner.ready {
                // A new outbox always has room for one frame.
                let _ = outbox.send(welcome);
            } else {
                outbox.hold(welcome);
            }
            for frame in replay {
                let _ = outbox.send(Frame::text(frame));
            }
            let came_online = inner.conns.is_empty();
            if inner.detached.take().is_some() {
                self.metrics.recovery_windows.fetch_sub(1, Relaxed);
                self.work.chan_counts.mark_all(inner.chans.iter().cloned());
            }
            if came_online {
                inner.meta = claims.meta.clone();
                inner.since = now_ms();
                inner.kicked = false;
            }
            inner.conns.push(ConnHandle {
                id,
                outbox: outbox.clone(),
            });
            (
                outbox,
                new_client,
                came_online,
                recovered.map(|r| (r, reason)),
            )
        };
        if let Some((recovered, reason)) = resumed {
            self.metrics.resumed(recovered, reason);
        }
        if came_online {
            self.metrics.clients.fetch_add(1, Relaxed);
        }
        if new_client {
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

    /// Removes a connection. Idempotent. When it was the client's last, the client's recovery
    /// window opens (its buffer and channels stay); without recovery, or when it was kicked,
    /// the client leaves the hub and its local channel memberships with it.
    pub fn unregister(&self, client: &ClientId, id: ConnId) {
        let (removed, went_offline, left) = {
            let mut shard = lock(&self.clients[shard_of(client)]);
            let Some(entry) = shard.get(client).cloned() else {
                return;
            };
            let mut inner = entry.lock();
            let before = inner.conns.len();
            inner.conns.retain(|c| c.id != id);
            let removed = inner.conns.len() < before;
            let went_offline = removed && inner.conns.is_empty();
            let forwarding = matches!(inner.moving, Move::Forwarding { .. });
            let left = if !inner.conns.is_empty() || inner.detached.is_some() || forwarding {
                // A handed-over entry stays, passing deliveries on, until the sweeper ends it.
                None
            } else if self.recovery.enabled() && !inner.kicked && inner.ready {
                inner.detached = Some(Instant::now());
                self.metrics.recovery_windows.fetch_add(1, Relaxed);
                self.work.chan_counts.mark_all(inner.chans.iter().cloned());
                None
            } else {
                let chans = self.remove_locked(&mut inner);
                drop(inner);
                shard.remove(client);
                Some((entry, chans))
            };
            (removed, went_offline, left)
        };
        if let Some((entry, chans)) = left {
            for chan in chans {
                self.chan_remove(&chan, &entry);
            }
        }
        if went_offline {
            self.metrics.clients.fetch_sub(1, Relaxed);
        }
        if removed {
            self.metrics.connections.fetch_sub(1, Relaxed);
            self.connections.fetch_sub(1, Relaxed);
            self.work.presence.mark(client);
        }
    }

    /// Marks an entry removed and frees its buffer; returns its channels, which the caller
    /// leaves once the entry lock is released.
    fn remove_locked(&self, inner: &mut ClientInner) -> HashSet<ChanName> {
        inner.gone = true;
        let freed = inner.buffer.clear();
        self.account(-(freed as isize));
        std::mem::take(&mut inner.chans)
    }

    /// Ends the recovery window of `entry` if it is still open: the client leaves the hub.
    /// Returns whether it did.
    fn end_window(&self, entry: &Arc<ClientEntry>) -> bool {
        let chans = {
            let mut shard = lock(&self.clients[shard_of(&entry.id)]);
            if !shard.get(&entry.id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
                return false;
            }
            let mut inner = entry.lock();
            if !inner.conns.is_empty() || inner.detached.is_none() {
                return false;
            }
            inner.detached = None;
            let chans = self.remove_locked(&mut inner);
            drop(inner);
            shard.remove(&entry.id);
            chans
        };
        self.metrics.recovery_windows.fetch_sub(1, Relaxed);
        for chan in chans {
            self.chan_remove(&chan, entry);
        }
        true
    }

    /// Removes a handed-over entry once it stopped passing deliveries on.
    fn end_forwarding(&self, entry: &Arc<ClientEntry>) {
        let chans = {
            let mut shard = lock(&self.clients[shard_of(&entry.id)]);
            if !shard.get(&entry.id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
                return;
            }
            let mut inner = entry.lock();
            if !inner.conns.is_empty() {
                return;
            }
            let chans = self.remove_locked(&mut inner);
            drop(inner);
            shard.remove(&entry.id);
            chans
        };
        for chan in chans {
            self.chan_remove(&chan, entry);
        }
    }

    /// Ends recovery windows that ran out and trims envelopes past their age; then, while the
    /// buffers hold more than the node's bound, ends the oldest windows first, and as a last
    /// resort halves the buffers of online clients.
    pub fn sweep(&self, now: Instant) -> Swept {
        let mut swept = Swept::default();
        let mut expired = Vec::new();
        let mut windows = Vec::new();
        let mut online = Vec::new();
        let mut forwarded = Vec::new();
        for shard in self.chans.iter() {
            shrink_if_sparse(&mut lock(shard));
        }
        for shard in self.clients.iter() {
            let entries: Vec<Arc<ClientEntry>> = {
                let mut shard = lock(shard);
                shrink_if_sparse(&mut shard);
                shard.values().cloned().collect()
            };
            for entry in entries {
                let mut inner = entry.lock();
                match &inner.moving {
                    Move::Forwarding { until, .. } => {
                        if now > *until && inner.conns.is_empty() {
                            drop(inner);
                            forwarded.push(entry);
                        }
                        continue;
                    }
                    Move::TakingOver { until, .. } if now > *until => {
                        inner.moving = Move::Settled;
                    }
                    _ => {}
                }
                let connected = inner.detached.is_none();
                let freed = inner
                    .buffer
                    .trim_age(now, self.recovery.max_age_for(connected));
                self.account(-(freed as isize));
                match inner.detached {
                    Some(at) if now.saturating_duration_since(at) >= self.recovery.window => {
                        drop(inner);
                        expired.push(entry);
                    }
                    Some(at) => {
                        drop(inner);
                        windows.push((at, entry));
                    }
                    None if inner.buffer.bytes() > 0 => {
                        drop(inner);
                        online.push(entry);
                    }
                    None => {}
                }
            }
        }
        for entry in &expired {
            if self.end_window(entry) {
                swept.expired += 1;
            }
        }
        for entry in &forwarded {
            self.end_forwarding(entry);
        }
        let over =
            || self.metrics.recovery_bytes.load(Relaxed) > self.recovery.node_max_bytes as u64;
        windows.sort_by_key(|(at, _)| *at);
        for (_, entry) in &windows {
            if !over() {
                break;
            }
            if self.end_window(entry) {
                swept.evicted += 1;
            }
        }
        while over() && !online.is_empty() {
            online.retain(|entry| {
                let freed = entry.lock().buffer.halve();
                self.account(-(freed as isize));
                freed > 0
            });
            swept.trimmed += 1;
        }
        swept
    }

    /// Records that the subscriber holds the node's own and the broadcast topic (or lost
    /// them); clients waiting for that become ready.
    pub fn set_base_subscribed(&self, up: bool) {
        self.base_subscribed.store(up, Relaxed);
        if !up {
            lock(&self.subscribed).clear();
            return;
        }
        self.base_up.notify_waiters();
        for shard in self.clients.iter() {
            let entries: Vec<Arc<ClientEntry>> = lock(shard).values().cloned().collect();
            for entry in entries {
                let mut inner = entry.lock();
                self.check_ready(&entry, &mut inner);
            }
        }
    }

    /// Completes once the node's own topics (its command topic, the broadcast topic) are
    /// subscribed: from then on what backends send to this node reaches it.
    pub async fn base_subscribed(&self) {
        loop {
            let up = self.base_up.notified();
            tokio::pin!(up);
            up.as_mut().enable();
            if self.base_subscribed.load(Relaxed) {
                return;
            }
            up.await;
        }
    }

    /// Records that Redis acknowledged the subscription to these channels' topics; members
    /// waiting for them become ready.
    pub fn topics_subscribed(&self, chans: &[ChanName]) {
        lock(&self.subscribed).extend(chans.iter().cloned());
        for chan in chans {
            let members: Vec<Arc<ClientEntry>> = match lock(&self.chans[shard_of(chan)]).get(chan) {
                Some(members) => members.values().cloned().collect(),
                None => continue,
            };
            for entry in members {
                let mut inner = entry.lock();
                self.check_ready(&entry, &mut inner);
            }
        }
    }

    /// Records that these topics are being dropped: from now on nobody counts on them.
    pub fn topics_unsubscribing(&self, chans: &[ChanName]) {
        let mut subscribed = lock(&self.subscribed);
        for chan in chans {
            subscribed.remove(chan);
        }
    }

    /// Whether a channel message published now reaches every local member of `chan`.
    fn topic_subscribed(&self, chan: &ChanName) -> bool {
        lock(&self.subscribed).contains(chan)
    }

    /// Whether a join of `client` to `chan` has taken effect: the client is not here (it will
    /// load its channels when it connects), no longer a member, or the topic is subscribed.
    pub fn join_settled(&self, client: &ClientId, chan: &ChanName) -> bool {
        let Some(entry) = self.entry(client) else {
            return true;
        };
        let member = entry.lock().chans.contains(chan);
        !member || self.topic_subscribed(chan)
    }

    /// Makes the entry ready, releasing its held connections, once its channels are loaded
    /// and every topic it needs is subscribed.
    fn check_ready(&self, entry: &ClientEntry, inner: &mut ClientInner) {
        if inner.ready || inner.gone || inner.sync_log.is_some() {
            return;
        }
        if !self.base_subscribed.load(Relaxed) {
            return;
        }
        {
            let subscribed = lock(&self.subscribed);
            if !inner.chans.iter().all(|c| subscribed.contains(c)) {
                return;
            }
        }
        inner.ready = true;
        for conn in &inner.conns {
            conn.outbox.release();
        }
        // Presence says online only from now on: whoever reacts to it can count on delivery.
        self.work.presence.mark(&entry.id);
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
        self.check_ready(entry, &mut inner);
    }

    /// Starts a new load of `client`'s channels, if it is here: on a Redis Cluster a join or
    /// leave is published after its script, so two racing changes of one client may arrive in
    /// the other order than they were stored; a load begun after a change arrived reads every
    /// change that arrived so far, and the last load wins.
    pub fn resync_client(&self, client: &ClientId) {
        let Some(entry) = self.entry(client) else {
            return;
        };
        {
            let mut inner = entry.lock();
            if inner.gone {
                return;
            }
            inner.sync_gen += 1;
            inner.sync_log = Some(Vec::new());
        }
        self.work.memberships.mark(client);
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
            let reach = match self.entry(client) {
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
        let now = Instant::now();
        let mut reached = 0;
        for entry in entries {
            if exclude == Some(&entry.id) {
                continue;
            }
            if self.push(&entry, body, now) == Reach::Delivered {
                reached += 1;
            }
        }
        reached
    }

    /// Gives the envelope the client's next sequence number, keeps it in the client's
    /// recovery buffer and queues it to each connection.
    fn push(&self, entry: &ClientEntry, body: &str, now: Instant) -> Reach {
        let mut inner = entry.lock();
        self.push_locked(&entry.id, &mut inner, body, now)
    }

    fn push_locked(
        &self,
        client: &ClientId,
        inner: &mut ClientInner,
        body: &str,
        now: Instant,
    ) -> Reach {
        if inner.gone {
            return Reach::Offline;
        }
        match &mut inner.moving {
            Move::Settled => {}
            Move::Forwarding { topic, until } => {
                if now > *until {
                    return Reach::Offline;
                }
                let Ok(envelope) = serde_json::from_str::<&RawValue>(body) else {
                    return Reach::Offline;
                };
                let Ok(text) = serde_json::to_string(&NodeCommand::Forward(Forward {
                    client: client.clone(),
                    envelope,
                })) else {
                    return Reach::Offline;
                };
                self.work.outgoing.publish(topic, text);
                self.metrics.forwarded.fetch_add(1, Relaxed);
                return Reach::Buffered;
            }
            Move::TakingOver { seen, until, .. } => {
                if now > *until {
                    inner.moving = Move::Settled;
                } else if let Some(id) = contract::envelope_id(body)
                    && !seen.insert(id.into())
                {
                    // Already pushed: it came both ways during the move.
                    return if inner.conns.is_empty() {
                        Reach::Buffered
                    } else {
                        Reach::Delivered
                    };
                }
            }
        }
        inner.seq += 1;
        let seq = inner.seq;
        let frame = Bytes::from(contract::frame(seq, body));
        if self.recovery.enabled() {
            let online = !inner.conns.is_empty();
            let delta = inner
                .buffer
                .push(seq, frame.clone(), now, &self.recovery, online);
            self.account(delta);
        }
        let Some((last, others)) = inner.conns.split_last() else {
            return Reach::Buffered;
        };
        for conn in others {
            self.send(conn, Frame::text(frame.clone()));
        }
        self.send(last, Frame::text(frame));
        Reach::Delivered
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

    /// Asks every connection of `client` to close with `code`, and ends its recovery window:
    /// a kicked client has nothing to resume. Returns how many connections it had.
    pub fn kick(&self, client: &ClientId, code: CloseCode) -> usize {
        let Some(entry) = self.entry(client) else {
            return 0;
        };
        let mut inner = entry.lock();
        inner.kicked = true;
        for conn in &inner.conns {
            conn.outbox.request_close(code);
        }
        let n = inner.conns.len();
        drop(inner);
        self.end_window(&entry);
        n
    }

    /// Tells every client that envelopes for it may never have reached the node (`frame`, a
    /// `missed` system frame, goes to each connection) and marks every stream, so that a resume
    /// from before now is refused: the node's Redis subscription was lost, and what was
    /// published meanwhile went to no one.
    pub fn mark_missed(&self, frame: &str) {
        let frame = Bytes::from(frame.to_owned());
        for shard in self.clients.iter() {
            let entries: Vec<Arc<ClientEntry>> = lock(shard).values().cloned().collect();
            for entry in entries {
                let mut inner = entry.lock();
                inner.lost_after = Some(inner.seq);
                for conn in &inner.conns {
                    self.send(conn, Frame::text(frame.clone()));
                }
            }
        }
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

    /// What the presence hash should hold for `client`: `None` when it has no connection, or
    /// its connections have not had their welcome yet.
    pub fn presence_of(&self, client: &ClientId) -> Option<PresenceRecord> {
        let entry = self.entry(client)?;
        let inner = entry.lock();
        if inner.conns.is_empty() || !inner.ready {
            return None;
        }
        Some(PresenceRecord {
            conns: u32::try_from(inner.conns.len()).unwrap_or(u32::MAX),
            meta: inner.meta.clone(),
            since: inner.since,
        })
    }

    /// Every client on the node: online, or inside its recovery window.
    pub fn clients(&self) -> Vec<ClientId> {
        self.clients
            .iter()
            .flat_map(|s| lock(s).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// How many local clients are members of `chan`, online or inside their recovery window:
    /// while there is one, the node keeps the channel's topic.
    pub fn chan_count(&self, chan: &ChanName) -> u64 {
        lock(&self.chans[shard_of(chan)])
            .get(chan)
            .map_or(0, |m| m.len() as u64)
    }

    /// How many members of `chan` are online here (have a connection).
    pub fn chan_online(&self, chan: &ChanName) -> u64 {
        let members: Vec<Arc<ClientEntry>> = match lock(&self.chans[shard_of(chan)]).get(chan) {
            Some(members) => members.values().cloned().collect(),
            None => return 0,
        };
        members
            .iter()
            .filter(|e| !e.lock().conns.is_empty())
            .count() as u64
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
