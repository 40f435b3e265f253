//! Presence in Redis: this node's hash of online clients, its per-channel online counts, its
//! lease, the online/offline event stream, and the purge of dead nodes.
//!
//! Sessions never wait on Redis. The hub marks a client dirty when its connections change; one
//! writer task compares the hub with what it last wrote and writes the difference, with an
//! event when a client comes or goes. Marks coalesce (a set, not a queue), so memory is bounded
//! by the number of clients and a Redis outage only delays the writes. The writer takes the
//! lease, and the lease keeper (`lease`) renews it on a connection of its own; when a renewal
//! finds the lease had lapsed (Redis restarted, or a peer purged us) the writer re-reads the
//! hash and rewrites what differs. Every third of the lease the writer also checks the peers'
//! leases and purges the presence of a node whose lease expired, emitting offline events for
//! its clients.
//!
//! When the node stops, the writer gives up the lease when asked ([`Release`]), through the
//! gate it shares with the keeper so that no renewal can take it back, and announces that the
//! node is handing its clients over; it goes on writing their moves until it is stopped, and
//! then settles the moves still open.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use imclient::contract::PresenceRecord;
use imclient::keys::Keys;
use imclient::store::Store;
use imclient::{ChanName, ClientId, EVENT_FIELD, EventKind, NodeId};
use redis::AsyncCommands;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::nodeset::NodeSet;
use crate::work::HubWork;
use lease::LeaseShared;

mod lease;
mod purge;

pub use purge::clear;
use purge::{announce, emit_offline, event, json, pool_error, purge, release, xadd};

/// Clients written per pipeline.
const BATCH: usize = 512;
/// Longest wait between retries while Redis is failing.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long after a lapsed lease is renewed every backend has read the live set again: the
/// announcement makes them read it at once, and they read it every second anyway. Messages
/// they routed elsewhere until then are lost; the node's clients are told after it.
const LAPSE_SETTLES: Duration = Duration::from_millis(1250);

/// How long a moved client's presence waits for its new home to claim it before the client
/// counts as gone.
const MOVE_GRACE: Duration = Duration::from_secs(10);

/// A client coming online here: its presence entry, and its `online` event unless it is a
/// client another node moved here (that node left a `moving` marker, claimed here), which was
/// online all along. KEYS: presence hash, moving marker, events. ARGV: client, record, event
/// JSON, stream cap, the event field name.
const ONLINE_SCRIPT: &str = r"
local moved = redis.call('GETDEL', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if not moved then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', ARGV[5], ARGV[3])
end
return moved and 1 or 0
";

/// What the presence writer works on.
#[derive(Debug, Clone)]
pub struct Presence {
    /// This node.
    pub id: NodeId,
    /// This process run's id, the lease's value.
    pub epoch: String,
    /// Redis names.
    pub keys: Keys,
    /// What is online here.
    pub hub: Arc<Hub>,
    /// Which clients and channels are dirty.
    pub work: Arc<HubWork>,
    /// The live node set: where a moved client went.
    pub nodes: Arc<NodeSet>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where taking the lease is recorded.
    pub health: Arc<Health>,
    /// Lease lifetime.
    pub lease: Duration,
    /// Event stream cap.
    pub events_maxlen: u64,
}

impl Presence {
    fn id(&self) -> &NodeId {
        &self.id
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }
}

/// How the node asks the writer to give up its lease when it stops, and learns that it did.
#[derive(Debug)]
pub struct Release {
    /// Turns true when the node stops.
    pub asked: watch::Receiver<bool>,
    /// Turned true once the lease is given up (or was never taken).
    pub done: watch::Sender<bool>,
}

impl Release {
    async fn asked(&mut self) {
        if self.asked.wait_for(|asked| *asked).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The writer's view of Redis.
struct Writer {
    presence: Presence,
    store: Store,
    /// What this node's presence hash holds, as last written or read.
    written: HashMap<ClientId, PresenceRecord>,
    /// What this node's channel count hash holds, as last written or read.
    written_chans: HashMap<ChanName, u64>,
    started: bool,
    /// When to look for dead peers next (every third of the lease).
    next_purge: Instant,
    /// What the writer shares with the lease keeper, which renews the lease once the writer
    /// has taken it (see [`lease`]).
    lease: Arc<LeaseShared>,
    /// Handed to the lease keeper when the writer starts it.
    stop: watch::Receiver<bool>,
    /// Clients this node moved to another node, with their last record, until the new home
    /// claims them or the grace period ends.
    moves: HashMap<ClientId, (Instant, PresenceRecord)>,
    /// When to tell every client `missed` after a lapsed lease (see [`LAPSE_SETTLES`]).
    missed_due: Option<Instant>,
    release: Release,
    /// The lease was given up: the node is stopping, and never takes it again.
    released: bool,
}

/// Runs the presence writer until `stop` turns true, giving up the lease when `release` asks.
/// Then the caller runs [`clear`].
pub async fn run(
    presence: Presence,
    store: Store,
    mut stop: watch::Receiver<bool>,
    release: Release,
) {
    let mut writer = Writer {
        presence,
        store,
        written: HashMap::new(),
        written_chans: HashMap::new(),
        started: false,
        next_purge: Instant::now(),
        lease: Arc::default(),
        stop: stop.clone(),
        moves: HashMap::new(),
        missed_due: None,
        release,
        released: false,
    };
    // The lease makes backends route to this node: not before it can hear them.
    tokio::select! {
        _ = writer.presence.hub.base_subscribed() => {}
        _ = writer.release.asked() => {
            writer.released = true;
            let _ = writer.release.done.send(true);
            return;
        }
        _ = stop.changed() => return,
    }
    let mut backoff = Duration::from_millis(50);
    loop {
        match writer.step().await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                writer
                    .presence
                    .metrics
                    .presence_errors
                    .fetch_add(1, Relaxed);
                tracing::warn!(node = %writer.presence.id(), error = %e, "presence write failed; retrying");
                // Woken early by a release only when it is new: once asked, `asked()` is ready
                // at once, and without backoff a stop during an outage was a loop of failed
                // writes and warnings until the shutdown deadline.
                let newly_asked = !writer.released && !*writer.release.asked.borrow();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = writer.release.asked(), if newly_asked => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        tokio::select! {
            _ = writer.presence.work.presence.wait() => {}
            _ = writer.presence.work.chan_counts.wait() => {}
            _ = tokio::time::sleep_until(writer.next_purge), if !writer.released => {}
            _ = writer.lease.woken.notified(), if !writer.released => {}
            _ = tokio::time::sleep_until(writer.missed_due.unwrap_or(writer.next_purge)), if writer.missed_due.is_some() => {}
            _ = tokio::time::sleep(MOVE_GRACE), if !writer.moves.is_empty() => {}
            _ = writer.release.asked(), if !writer.released => {}
            _ = stop.changed() => break,
        }
    }
    if writer.released
        && let Err(e) = writer.finish().await
    {
        tracing::warn!(node = %writer.presence.id(), error = %e, "cannot write the last moves");
    }
}

impl Writer {
    fn keys(&self) -> &Keys {
        &self.presence.keys
    }

    async fn step(&mut self) -> redis::RedisResult<()> {
        if self.missed_due.is_some_and(|due| Instant::now() >= due) {
            self.missed_due = None;
            self.presence
                .hub
                .mark_missed(&imclient::contract::system_frame(
                    &imclient::contract::SystemEvent::Missed {
                        reason: imclient::contract::RecoveryRefusal::RedisOutage,
                    },
                ));
        }
        let mut conn = self.store.get().await.map_err(pool_error)?;
        if !self.released && *self.release.asked.borrow() {
            if self.started {
                // Through the gate: a renewal in flight ends first, and none follows.
                let shared = self.lease.clone();
                shared
                    .release(release(
                        &mut conn,
                        &self.presence.keys,
                        &self.presence.id,
                        &self.presence.epoch,
                    ))
                    .await?;
                tracing::info!(node = %self.presence.id(), "lease given up");
            }
            self.released = true;
            let _ = self.release.done.send(true);
        }
        if !self.started && !self.released {
            // Whatever this node's hash holds is from a previous run: those clients are gone.
            let stale = purge(&mut conn, self.keys(), self.presence.id(), true).await?;
            self.presence
                .nodes
                .set_orphans(stale.iter().flatten().map(|(client, _)| client.clone()));
            emit_offline(
                &mut conn,
                self.keys(),
                self.presence.id(),
                stale,
                self.presence.events_maxlen,
            )
            .await?;
            self.written.clear();
            self.written_chans.clear();
            lease::renew(&mut conn, &self.presence, false).await?;
            announce(&mut conn, self.keys(), self.presence.id(), true).await?;
            self.started = true;
            self.presence.health.set_leased();
            tokio::spawn(lease::keep(
                self.presence.clone(),
                self.store.clone(),
                self.lease.clone(),
                self.stop.clone(),
            ));
            self.presence
                .work
                .presence
                .mark_all(self.presence.hub.clients());
            self.presence
                .work
                .chan_counts
                .mark_all(self.presence.hub.chans());
        }
        if !self.released && self.lease.take_lapsed() {
            // While the lease was gone, backends sent this node's clients' messages to
            // another node, which had no such client: say we are back at once, and once
            // every backend has read that, tell the clients that something may be missing.
            let announced = announce(&mut conn, self.keys(), self.presence.id(), true).await;
            if let Err(e) = announced {
                self.lease.restore_lapsed();
                return Err(e);
            }
            self.missed_due = Some(Instant::now() + LAPSE_SETTLES);
            if let Err(e) = self.resync(&mut conn).await {
                self.lease.restore_lapsed();
                return Err(e);
            }
        }
        if !self.released && Instant::now() >= self.next_purge {
            self.purge_dead_peers(&mut conn).await?;
            self.next_purge = Instant::now() + self.presence.lease / 3;
        }
        self.flush(&mut conn).await?;
        self.settle_moves(&mut conn, false).await?;
        self.flush_chans(&mut conn).await
    }

    /// The last writes of a node that stops: what changed since the last step, then every
    /// move still open is settled now (the node will not be there at the end of its grace).
    async fn finish(&mut self) -> redis::RedisResult<()> {
        let mut conn = self.store.get().await.map_err(pool_error)?;
        self.flush(&mut conn).await?;
        self.settle_moves(&mut conn, true).await?;
        self.flush_chans(&mut conn).await
    }

    /// Moved clients whose grace period ended (every one, when `all`): if their new home never
    /// claimed them and they are not online there, they really went offline.
    async fn settle_moves(
        &mut self,
        conn: &mut imclient::store::Conn,
        all: bool,
    ) -> redis::RedisResult<()> {
        let now = Instant::now();
        let due: Vec<ClientId> = self
            .moves
            .iter()
            .filter(|(_, (at, _))| all || now.duration_since(*at) >= MOVE_GRACE)
            .map(|(c, _)| c.clone())
            .collect();
        for client in due {
            let Some((_, record)) = self.moves.get(&client).cloned() else {
                continue;
            };
            // Moves happen only once the live set is known, so the home is too.
            let home = self
                .presence
                .nodes
                .home_of(&client)
                .unwrap_or_else(|| self.presence.id().clone());
            let (unclaimed, online_there): (Option<String>, bool) = redis::pipe()
                .cmd("GETDEL")
                .arg(self.keys().moving(&client))
                .hexists(self.keys().presence(&home), client.as_str())
                .query_async(conn)
                .await?;
            if unclaimed.is_some() && !online_there {
                let mut gone = record;
                gone.conns = 0;
                let mut pipe = redis::pipe();
                xadd(
                    &mut pipe,
                    self.keys(),
                    &event(EventKind::Offline, &client, self.presence.id(), &gone),
                    self.presence.events_maxlen,
                );
                pipe.query_async::<()>(conn).await?;
            }
            self.moves.remove(&client);
        }
        Ok(())
    }

    /// Re-reads this node's hash and marks every client whose entry may differ.
    async fn resync(&mut self, conn: &mut imclient::store::Conn) -> redis::RedisResult<()> {
        let stored: HashMap<String, String> = conn
            .hgetall(self.keys().presence(self.presence.id()))
            .await?;
        self.written = stored
            .into_iter()
            .filter_map(|(k, v)| Some((ClientId::new(k).ok()?, serde_json::from_str(&v).ok()?)))
            .collect();
        let mut all: Vec<ClientId> = self.written.keys().cloned().collect();
        all.extend(self.presence.hub.clients());
        self.presence.work.presence.mark_all(all);
        let counts: HashMap<String, u64> = conn
            .hgetall(self.keys().chan_online(self.presence.id()))
            .await?;
        self.written_chans = counts
            .into_iter()
            .filter_map(|(k, v)| Some((ChanName::new(k).ok()?, v)))
            .collect();
        let mut chans: Vec<ChanName> = self.written_chans.keys().cloned().collect();
        chans.extend(self.presence.hub.chans());
        self.presence.work.chan_counts.mark_all(chans);
        Ok(())
    }

    async fn purge_dead_peers(
        &mut self,
        conn: &mut imclient::store::Conn,
    ) -> redis::RedisResult<()> {
        let peers: Vec<String> = conn.smembers(self.keys().nodes()).await?;
        for peer in peers {
            let Ok(peer) = NodeId::new(peer) else {
                continue;
            };
            if &peer == self.presence.id() {
                continue;
            }
            let entries = purge(conn, self.keys(), &peer, false).await?;
            if let Some(entries) = entries {
                tracing::info!(node = %self.presence.id(), dead = %peer, clients = entries.len(), "purged presence of a dead node");
                self.presence.metrics.nodes_purged.fetch_add(1, Relaxed);
                announce(conn, self.keys(), &peer, false).await?;
                emit_offline(
                    conn,
                    self.keys(),
                    &peer,
                    Some(entries),
                    self.presence.events_maxlen,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Writes the difference between the hub and the hash for every dirty client.
    async fn flush(&mut self, conn: &mut imclient::store::Conn) -> redis::RedisResult<()> {
        let dirty: Vec<ClientId> = self.presence.work.presence.take();
        for (i, chunk) in dirty.chunks(BATCH).enumerate() {
            let mut pipe = redis::pipe();
            let mut changes = Vec::new();
            let hash = self.keys().presence(self.presence.id());
            for client in chunk {
                let desired = self.presence.hub.presence_of(client);
                let moved = desired.is_none() && self.presence.hub.take_moved(client);
                let current = self.written.get(client);
                let event = match (&desired, current) {
                    (Some(d), Some(c)) if d.conns == c.conns => continue,
                    (Some(d), Some(_)) => {
                        pipe.hset(&hash, client.as_str(), json(d)).ignore();
                        None
                    }
                    (Some(d), None) => {
                        // Online here: the script leaves out the event for a client another
                        // node moved here.
                        let ev = event(EventKind::Online, client, self.presence.id(), d);
                        pipe.cmd("EVAL")
                            .arg(ONLINE_SCRIPT)
                            .arg(3)
                            .arg(&hash)
                            .arg(self.keys().moving(client))
                            .arg(self.keys().events())
                            .arg(client.as_str())
                            .arg(json(d))
                            .arg(json(&ev))
                            .arg(self.presence.events_maxlen)
                            .arg(EVENT_FIELD)
                            .ignore();
                        None
                    }
                    (None, Some(c)) if moved => {
                        // Moved to its new home: not offline, unless it never arrives there.
                        pipe.hdel(&hash, client.as_str()).ignore();
                        pipe.cmd("SET")
                            .arg(self.keys().moving(client))
                            .arg(self.presence.id().as_str())
                            .arg("PX")
                            .arg(2 * MOVE_GRACE.as_millis() as u64)
                            .ignore();
                        self.moves
                            .insert(client.clone(), (Instant::now(), c.clone()));
                        None
                    }
                    (None, Some(c)) => {
                        pipe.hdel(&hash, client.as_str()).ignore();
                        let mut gone = c.clone();
                        gone.conns = 0;
                        Some(event(EventKind::Offline, client, self.presence.id(), &gone))
                    }
                    (None, None) => continue,
                };
                if let Some(ev) = event {
                    xadd(&mut pipe, self.keys(), &ev, self.presence.events_maxlen);
                }
                changes.push((client.clone(), desired));
            }
            if changes.is_empty() {
                continue;
            }
            if let Err(e) = pipe.query_async::<()>(conn).await {
                // Nothing of this batch or later ones was applied for sure: try them again.
                self.presence
                    .work
                    .presence
                    .mark_all(dirty[i * BATCH..].iter().cloned());
                return Err(e);
            }
            for (client, desired) in changes {
                match desired {
                    Some(record) => self.written.insert(client, record),
                    None => self.written.remove(&client),
                };
            }
            crate::memory::shrink_if_sparse(&mut self.written);
            self.presence
                .metrics
                .presence_entries
                .store(self.written.len() as u64, Relaxed);
        }
        Ok(())
    }

    /// Writes the local online count of every dirty channel.
    async fn flush_chans(&mut self, conn: &mut imclient::store::Conn) -> redis::RedisResult<()> {
        let dirty = self.presence.work.chan_counts.take();
        let hash = self.keys().chan_online(self.presence.id());
        for (i, chunk) in dirty.chunks(BATCH).enumerate() {
            let mut pipe = redis::pipe();
            let mut changes = Vec::new();
            for chan in chunk {
                let desired = self.presence.hub.chan_online(chan);
                let current = self.written_chans.get(chan).copied();
                match (desired, current) {
                    (0, None) => continue,
                    (0, Some(_)) => pipe.hdel(&hash, chan.as_str()).ignore(),
                    (n, Some(c)) if n == c => continue,
                    (n, _) => pipe.hset(&hash, chan.as_str(), n).ignore(),
                };
                changes.push((chan.clone(), desired));
            }
            if changes.is_empty() {
                continue;
            }
            if let Err(e) = pipe.query_async::<()>(conn).await {
                self.presence
                    .work
                    .chan_counts
                    .mark_all(dirty[i * BATCH..].iter().cloned());
                return Err(e);
            }
            for (chan, n) in changes {
                if n == 0 {
                    self.written_chans.remove(&chan);
                } else {
                    self.written_chans.insert(chan, n);
                }
            }
        }
        Ok(())
    }
}
