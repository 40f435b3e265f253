//! The hub: this node's registry of open connections, by client. The broker delivers through
//! it, sessions register and unregister in it, the presence writer reads it. Sharded std
//! Mutexes, never held across an await, so delivery to one client never waits on another.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytestring::ByteString;
use imclient::contract::{self, CloseCode, PresenceRecord};
use imclient::token::ConnectClaims;
use imclient::{ClientId, now_ms};
use tokio::sync::{Notify, mpsc};

use crate::metrics::{DropReason, Metrics};
use crate::presence::PresenceQueue;

const SHARDS: usize = 64;

/// Node-local connection id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// Tells a session to close, from any thread, even when its queue is full.
#[derive(Debug, Default)]
pub struct Kill {
    code: OnceLock<CloseCode>,
    notify: Notify,
}

impl Kill {
    /// Asks the session to close with `code`; the first request wins.
    pub fn fire(&self, code: CloseCode) {
        if self.code.set(code).is_ok() {
            self.notify.notify_one();
        }
    }

    /// Waits until a close is requested. Cancel-safe.
    pub async fn wait(&self) -> CloseCode {
        loop {
            if let Some(code) = self.code.get() {
                return *code;
            }
            self.notify.notified().await;
        }
    }
}

/// What the hub keeps per connection.
#[derive(Debug)]
struct ConnHandle {
    id: ConnId,
    tx: mpsc::Sender<ByteString>,
    kill: Arc<Kill>,
}

/// What the hub keeps per client: its connections and its sequence counter.
#[derive(Debug)]
struct ClientSlot {
    conns: Vec<ConnHandle>,
    /// Last sequence number assigned; strictly increasing for the slot's life.
    seq: u64,
    meta: serde_json::Value,
    since: u64,
}

/// The receiving side a session gets when it registers.
#[derive(Debug)]
pub struct Registration {
    /// This connection's id.
    pub id: ConnId,
    /// Frames to write, in order. The welcome frame is first.
    pub rx: mpsc::Receiver<ByteString>,
    /// Fired when the node wants the connection closed.
    pub kill: Arc<Kill>,
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

/// The registry.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Mutex<HashMap<ClientId, ClientSlot>>]>,
    next_conn: AtomicU64,
    connections: AtomicU64,
    max_per_client: usize,
    max_total: usize,
    queue_capacity: usize,
    metrics: Arc<Metrics>,
    presence: Arc<PresenceQueue>,
    /// Notified when the last connection unregisters, for shutdown.
    emptied: Notify,
}

impl Hub {
    /// An empty hub with these limits.
    pub fn new(
        max_per_client: usize,
        max_total: usize,
        queue_capacity: usize,
        metrics: Arc<Metrics>,
        presence: Arc<PresenceQueue>,
    ) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_conn: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            max_per_client,
            max_total,
            queue_capacity,
            metrics,
            presence,
            emptied: Notify::new(),
        }
    }

    fn shard(&self, client: &ClientId) -> MutexGuard<'_, HashMap<ClientId, ClientSlot>> {
        let mut h = DefaultHasher::new();
        client.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        // A panic while holding a shard leaves plain data behind; keep serving.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open connections on this node.
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    /// Registers a connection for the token's client. `welcome` builds the first frame from
    /// the new connection id; it is queued before any delivery can be.
    pub fn register(
        &self,
        claims: &ConnectClaims,
        welcome: impl FnOnce(ConnId) -> String,
    ) -> Result<Registration, Refusal> {
        if self.connections.load(Relaxed) >= self.max_total as u64 {
            return Err(Refusal::NodeLimit(self.max_total));
        }
        let id = ConnId(self.next_conn.fetch_add(1, Relaxed));
        // One extra slot so the welcome frame never counts against the client's queue.
        let (tx, rx) = mpsc::channel(self.queue_capacity + 1);
        let kill = Arc::new(Kill::default());
        {
            let mut shard = self.shard(&claims.sub);
            let slot = shard
                .entry(claims.sub.clone())
                .or_insert_with(|| ClientSlot {
                    conns: Vec::new(),
                    seq: 0,
                    meta: claims.meta.clone(),
                    since: now_ms(),
                });
            if slot.conns.len() >= self.max_per_client {
                return Err(Refusal::ClientLimit(self.max_per_client));
            }
            if tx.try_send(ByteString::from(welcome(id))).is_err() {
                unreachable!("a new channel has room for the welcome frame");
            }
            if slot.conns.is_empty() {
                self.metrics.clients.fetch_add(1, Relaxed);
            }
            slot.conns.push(ConnHandle {
                id,
                tx,
                kill: kill.clone(),
            });
        }
        self.connections.fetch_add(1, Relaxed);
        self.metrics.connections.fetch_add(1, Relaxed);
        self.metrics.connections_opened.fetch_add(1, Relaxed);
        self.presence.mark(&claims.sub);
        Ok(Registration { id, rx, kill })
    }

    /// Removes a connection. Idempotent.
    pub fn unregister(&self, client: &ClientId, id: ConnId) {
        let removed = {
            let mut shard = self.shard(client);
            let Some(slot) = shard.get_mut(client) else {
                return;
            };
            let before = slot.conns.len();
            slot.conns.retain(|c| c.id != id);
            let removed = slot.conns.len() < before;
            if slot.conns.is_empty() {
                shard.remove(client);
                self.metrics.clients.fetch_sub(1, Relaxed);
            }
            removed
        };
        if removed {
            self.metrics.connections.fetch_sub(1, Relaxed);
            if self.connections.fetch_sub(1, Relaxed) == 1 {
                self.emptied.notify_waiters();
            }
            self.presence.mark(client);
        }
    }

    /// Queues an envelope to every connection of each receiver and reports, per receiver,
    /// whether it had a connection. `body` is the shared envelope body; each client's frame is
    /// it with the client's next sequence number in front.
    pub fn deliver(&self, to: &[ClientId], body: &str, mut result: impl FnMut(&ClientId, bool)) {
        for client in to {
            let delivered = {
                let mut shard = self.shard(client);
                match shard.get_mut(client) {
                    Some(slot) => {
                        slot.seq += 1;
                        let frame = ByteString::from(contract::frame(slot.seq, body));
                        for conn in &slot.conns {
                            self.queue(conn, frame.clone());
                        }
                        true
                    }
                    None => false,
                }
            };
            if !delivered {
                self.metrics.dropped(DropReason::Offline, 1);
            }
            result(client, delivered);
        }
    }

    fn queue(&self, conn: &ConnHandle, frame: ByteString) {
        match conn.tx.try_send(frame) {
            Ok(()) => {
                self.metrics.deliveries.fetch_add(1, Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.dropped(DropReason::QueueFull, 1);
                conn.kill.fire(CloseCode::SlowConsumer);
            }
            // The session is ending and will unregister.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Asks every connection of `client` to close with `code`. Returns how many it had.
    pub fn kick(&self, client: &ClientId, code: CloseCode) -> usize {
        let shard = self.shard(client);
        let Some(slot) = shard.get(client) else {
            return 0;
        };
        for conn in &slot.conns {
            conn.kill.fire(code);
        }
        slot.conns.len()
    }

    /// Asks every connection to close with `code`.
    pub fn close_all(&self, code: CloseCode) {
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for conn in shard.values().flat_map(|s| s.conns.iter()) {
                conn.kill.fire(code);
            }
        }
    }

    /// Waits until no connection is registered.
    pub async fn wait_empty(&self) {
        loop {
            let notified = self.emptied.notified();
            if self.connections() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// What the presence hash should hold for `client`: `None` when it has no connection.
    pub fn presence_of(&self, client: &ClientId) -> Option<PresenceRecord> {
        let shard = self.shard(client);
        shard.get(client).map(|slot| PresenceRecord {
            conns: u32::try_from(slot.conns.len()).unwrap_or(u32::MAX),
            meta: slot.meta.clone(),
            since: slot.since,
        })
    }

    /// Every client with a connection.
    pub fn clients(&self) -> Vec<ClientId> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(shard.keys().cloned());
        }
        out
    }
}
