//! One client on this node, as a state machine. An entry is *held* (connected, its welcome
//! waiting for its channels to be loaded and subscribed), *live*, inside its recovery *window*
//! (no connection; its stream, buffer and channels stay), *forwarding* (handed over to its new
//! home, passing on what still arrives here) or *taking over* (just handed over from the node
//! it left, dropping what arrives twice); and *gone* once removed, when nothing may be added.
//!
//! The entry owns the client's sequence stream, its recovery buffer and its connections'
//! outboxes, so giving an envelope its sequence number, keeping it and queueing it happens
//! here, under the entry's lock. What the rest of the node must hear of (frames queued or
//! refused, bytes held, envelopes passed on) comes back in a [`Tally`] for the hub to record.
//! The moves between nodes are in `handover`; the membership bookkeeping in `chans`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use imclient::contract::{
    self, CloseCode, Forward, NodeCommand, PresenceRecord, RecoveryRefusal, ResumeFrom,
};
use imclient::{ChanName, ClientId, now_ms};
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::sync_log::SyncLog;
use crate::outbox::{self, Frame, Outbox};
use crate::recovery::{self, RecoveryBuffer, RecoveryLimits, Resume};
use crate::work::Outgoing;

/// Node-local connection id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// What the entry keeps per connection.
#[derive(Debug)]
pub(super) struct ConnHandle {
    pub(super) id: ConnId,
    pub(super) outbox: Arc<Outbox>,
}

/// How far a message got to one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Queued to at least one connection.
    Delivered,
    /// Kept in the buffer of a client inside its recovery window, or passed on to its new home.
    Buffered,
    /// The client is not on this node.
    Offline,
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

/// What pushing and closing did that the node counts: recorded by the hub once the entry is
/// done, so the entry itself touches no shared counter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tally {
    /// Frames queued to connections.
    pub(super) sent: u64,
    /// Frames refused because a connection's queue was full (that connection is asked to
    /// close as a slow consumer).
    pub(super) refused: u64,
    /// Change in the bytes recovery buffers hold.
    pub(super) bytes: isize,
    /// Envelopes passed on to the client's new home.
    pub(super) forwarded: u64,
}

/// Where an entry stands in a move between nodes.
#[derive(Debug, Default)]
pub(super) enum Move {
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

/// An entry's [`Move`], boxed when it is not `Settled`: most entries never move, and inline the
/// move's state (72 bytes) put every entry, moving or not, in a larger allocation class (384
/// bytes instead of 320; docs/DESIGN.md, "Memory per idle connection").
#[derive(Debug, Default)]
pub(super) struct Moving(Option<Box<Move>>);

/// What an entry that is not moving reads.
static SETTLED: Move = Move::Settled;

impl Moving {
    /// Where the entry stands in a move.
    pub(super) fn get(&self) -> &Move {
        self.0.as_deref().unwrap_or(&SETTLED)
    }

    /// The move under way, if any, to change in place.
    pub(super) fn get_mut(&mut self) -> Option<&mut Move> {
        self.0.as_deref_mut()
    }

    pub(super) fn set(&mut self, to: Move) {
        self.0 = match to {
            Move::Settled => None,
            to => Some(Box::new(to)),
        };
    }

    /// The move under way, leaving the entry settled.
    pub(super) fn take(&mut self) -> Move {
        self.0.take().map_or(Move::Settled, |m| *m)
    }
}

/// Where an entry stands, by name: for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connected; the welcome waits for the client's channels.
    Held,
    /// Connected and ready.
    Live,
    /// No connection; the recovery window is open.
    Window,
    /// Handed over; what arrives is passed on to the new home.
    Forwarding,
    /// Created for deliveries that came before the client's stream was handed over.
    AwaitingStream,
    /// Removed from the hub.
    Gone,
}

/// One client on this node: online, or inside its recovery window.
#[derive(Debug)]
pub struct ClientEntry {
    pub(super) id: ClientId,
    inner: Mutex<ClientInner>,
}

impl ClientEntry {
    /// A new entry with the stream named `stream`, not ready (its channels are to be loaded);
    /// `detached`: created without a connection, its recovery window open from then.
    pub(super) fn new(
        id: ClientId,
        stream: String,
        meta: serde_json::Value,
        detached: Option<Instant>,
    ) -> Self {
        Self {
            id,
            inner: Mutex::new(ClientInner {
                stream,
                conns: Vec::new(),
                meta,
                since: now_ms(),
                seq: 0,
                ready: false,
                chans: HashSet::new(),
                sync: SyncLog::loading(),
                buffer: RecoveryBuffer::default(),
                detached,
                kicked: false,
                gone: false,
                moving: Moving::default(),
                lost_after: None,
            }),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ClientInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client id.
    pub fn id(&self) -> &ClientId {
        &self.id
    }

    /// Where the entry stands now.
    pub fn state(&self) -> State {
        self.lock().state()
    }
}

/// The entry's state, behind its lock.
#[derive(Debug)]
pub(super) struct ClientInner {
    /// Names this entry's sequence stream: `<node epoch>-<n>`. A new entry (after the window
    /// ran out) starts a new stream, so an old `since` cannot be mistaken for a position in it.
    /// A stream handed over by another node keeps that node's name.
    pub(super) stream: String,
    pub(super) conns: Vec<ConnHandle>,
    /// Metadata from the token of the connection that brought the client online.
    pub(super) meta: serde_json::Value,
    /// When the client came online, ms since the Unix epoch.
    pub(super) since: u64,
    /// Last sequence number assigned; strictly increasing for the entry's life.
    pub(super) seq: u64,
    /// Channels loaded and their topics subscribed: connections get their welcome at once.
    pub(super) ready: bool,
    /// The channels this client is a member of, as far as this node knows.
    pub(super) chans: HashSet<ChanName>,
    /// The load of its channels from Redis, and the changes recorded while it runs.
    pub(super) sync: SyncLog,
    /// The recent envelopes, for clients that come back.
    pub(super) buffer: RecoveryBuffer,
    /// Since when the client has had no connection: its recovery window is open.
    pub(super) detached: Option<Instant>,
    /// Kicked by the business: no recovery window when its connections are gone.
    pub(super) kicked: bool,
    /// Removed from the hub: nothing may be added any more.
    pub(super) gone: bool,
    /// Moving to another node, or just arrived from one.
    pub(super) moving: Moving,
    /// The last `seq` given out before the node lost its Redis subscription: a resume from
    /// there or earlier cannot be whole, whatever the buffer holds.
    pub(super) lost_after: Option<u64>,
}

/// A connection attached to an entry.
#[derive(Debug)]
pub(super) struct Attached {
    pub(super) outbox: Arc<Outbox>,
    /// It is the client's first connection: the client came online.
    pub(super) came_online: bool,
    /// What the resume asked for came to: served, or refused and why.
    pub(super) resumed: Option<(bool, Option<RecoveryRefusal>)>,
    /// The recovery window that was open and is now closed: the channels whose online count
    /// changes with it.
    pub(super) window_closed: Option<Vec<ChanName>>,
}

/// What became of an entry when one of its connections went.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Detached {
    /// The connection was not there (already removed).
    Unknown,
    /// Other connections remain, or the entry stays as it was (a window already open, or
    /// forwarding until the sweeper ends it). A forwarding entry that lost its last
    /// connection names its channels: its client is no longer online here, though it stays a
    /// member until the forwarding ends.
    Stays {
        went_offline: bool,
        chans: Vec<ChanName>,
    },
    /// The last connection went and the recovery window opened: the channels whose online
    /// count changes.
    WindowOpened(Vec<ChanName>),
    /// The last connection went and the client leaves: the bytes freed and its channels,
    /// to leave once the entry lock is released.
    Leaves {
        freed: usize,
        chans: HashSet<ChanName>,
    },
}

impl ClientInner {
    pub(super) fn state(&self) -> State {
        if self.gone {
            State::Gone
        } else if matches!(self.moving.get(), Move::Forwarding { .. }) {
            State::Forwarding
        } else if !self.conns.is_empty() {
            if self.ready { State::Live } else { State::Held }
        } else if matches!(self.moving.get(), Move::TakingOver { awaiting: true, .. }) {
            State::AwaitingStream
        } else {
            State::Window
        }
    }

    /// Gives the envelope `body` the client's next sequence number, keeps it in the recovery
    /// buffer and queues it to each connection; while forwarding, passes it on to the new home
    /// instead; while taking over, pushes an envelope that came both ways once.
    pub(super) fn push(
        &mut self,
        client: &ClientId,
        body: &str,
        now: Instant,
        limits: &RecoveryLimits,
        outgoing: &Outgoing,
        tally: &mut Tally,
    ) -> Reach {
        if self.gone {
            return Reach::Offline;
        }
        match self.moving.get_mut() {
            None | Some(Move::Settled) => {}
            Some(Move::Forwarding { topic, until }) => {
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
                // Under the entry's lock, on the ordered queue: after the handover, and in
                // the order the envelopes arrived.
                outgoing.publish(topic, text);
                tally.forwarded += 1;
                return Reach::Buffered;
            }
            Some(Move::TakingOver { seen, until, .. }) => {
                if now > *until {
                    self.moving.set(Move::Settled);
                } else if let Some(id) = contract::envelope_id(body)
                    && !seen.insert(id.into())
                {
                    // Already pushed: it came both ways during the move.
                    return if self.conns.is_empty() {
                        Reach::Buffered
                    } else {
                        Reach::Delivered
                    };
                }
            }
        }
        self.seq += 1;
        let seq = self.seq;
        let frame = Bytes::from(contract::frame(seq, body));
        if limits.enabled() {
            let online = !self.conns.is_empty();
            tally.bytes += self.buffer.push(seq, frame.clone(), now, limits, online);
        }
        let Some((last, others)) = self.conns.split_last() else {
            return Reach::Buffered;
        };
        for conn in others {
            send(conn, Frame::text(frame.clone()), tally);
        }
        send(last, Frame::text(frame), tally);
        Reach::Delivered
    }

    /// Decides what a connection that asks to resume from `since` gets, on a node whose
    /// process epoch is `node_epoch`.
    pub(super) fn resume(&self, since: &str, node_epoch: &str) -> Resume {
        let resume = recovery::resume(since, node_epoch, &self.stream, self.seq, &self.buffer);
        match (resume, ResumeFrom::parse(since), self.lost_after) {
            (Resume::Replay(_), Some(from), Some(lost)) if from.seq <= lost => {
                Resume::Refused(RecoveryRefusal::RedisOutage)
            }
            (resume, _, _) => resume,
        }
    }

    /// Attaches connection `id`: its outbox gets the welcome first (held until the entry is
    /// ready), then what a resume from `since` replays, before any live envelope.
    pub(super) fn attach(
        &mut self,
        id: ConnId,
        meta: &serde_json::Value,
        since: Option<&str>,
        node_epoch: &str,
        queue_capacity: usize,
        welcome: impl FnOnce(&WelcomeInfo) -> String,
    ) -> Attached {
        if matches!(self.moving.get(), Move::Forwarding { .. }) {
            // Handed away, and back before the forwarding ended (its new home went away
            // again): it is this node's again, and what arrives for it is pushed here.
            self.moving.set(Move::Settled);
        }
        let (replay, recovered, reason) = match since.map(|s| self.resume(s, node_epoch)) {
            None => (Vec::new(), None, None),
            Some(Resume::Replay(frames)) => (frames, Some(true), None),
            Some(Resume::Refused(reason)) => (Vec::new(), Some(false), Some(reason)),
        };
        let info = WelcomeInfo {
            conn: id,
            epoch: self.stream.clone(),
            seq: self.seq,
            recovered,
            reason,
        };
        // Room for the replay on top of the usual queue.
        let outbox = Arc::new(Outbox::new(queue_capacity + replay.len()));
        let welcome = Frame::text(welcome(&info));
        if self.ready {
            // A new outbox always has room for one frame.
            let _ = outbox.send(welcome);
        } else {
            outbox.hold(welcome);
        }
        for frame in replay {
            let _ = outbox.send(Frame::text(frame));
        }
        let came_online = self.conns.is_empty();
        let window_closed = self
            .detached
            .take()
            .map(|_| self.chans.iter().cloned().collect());
        if came_online {
            self.meta = meta.clone();
            self.since = now_ms();
            self.kicked = false;
        }
        self.conns.push(ConnHandle {
            id,
            outbox: outbox.clone(),
        });
        Attached {
            outbox,
            came_online,
            resumed: recovered.map(|r| (r, reason)),
            window_closed,
        }
    }

    /// Detaches connection `id`. When it was the last, the recovery window opens (`recover`:
    /// the node keeps windows) unless the client was kicked or never became ready; otherwise
    /// the client leaves.
    pub(super) fn detach(&mut self, id: ConnId, recover: bool, now: Instant) -> Detached {
        let before = self.conns.len();
        self.conns.retain(|c| c.id != id);
        if self.conns.len() == before {
            return Detached::Unknown;
        }
        let went_offline = self.conns.is_empty();
        let forwarding = matches!(self.moving.get(), Move::Forwarding { .. });
        if !went_offline || self.detached.is_some() || forwarding {
            // A handed-over entry stays, passing deliveries on, until the sweeper ends it; its
            // client counts as online at its new home from now on, not here.
            let chans = if went_offline && forwarding {
                self.chans.iter().cloned().collect()
            } else {
                Vec::new()
            };
            Detached::Stays {
                went_offline,
                chans,
            }
        } else if recover && !self.kicked && self.ready {
            self.detached = Some(now);
            Detached::WindowOpened(self.chans.iter().cloned().collect())
        } else {
            let (freed, chans) = self.remove();
            Detached::Leaves { freed, chans }
        }
    }

    /// Marks the entry removed and frees its buffer; returns the bytes freed and its channels,
    /// which the caller leaves once the entry lock is released.
    pub(super) fn remove(&mut self) -> (usize, HashSet<ChanName>) {
        self.gone = true;
        let freed = self.buffer.clear();
        (freed, std::mem::take(&mut self.chans))
    }

    /// Ends the recovery window if it is still open (no connection came back meanwhile): the
    /// entry is removed. Returns the bytes freed and the channels to leave.
    pub(super) fn close_window(&mut self) -> Option<(usize, HashSet<ChanName>)> {
        if !self.conns.is_empty() || self.detached.is_none() {
            return None;
        }
        self.detached = None;
        Some(self.remove())
    }

    /// Asks every connection to close with `code`; a kicked client gets no recovery window.
    /// Returns how many connections it had.
    pub(super) fn kick(&mut self, code: CloseCode) -> usize {
        self.kicked = true;
        self.close_all(code);
        self.conns.len()
    }

    /// Asks every connection to close with `code`.
    pub(super) fn close_all(&self, code: CloseCode) {
        for conn in &self.conns {
            conn.outbox.request_close(code);
        }
    }

    /// Tells every connection that envelopes may have gone missing (`frame`, a `missed`
    /// system frame) and refuses a resume from before now.
    pub(super) fn mark_missed(&mut self, frame: &Bytes, tally: &mut Tally) {
        self.lost_after = Some(self.seq);
        for conn in &self.conns {
            send(conn, Frame::text(frame.clone()), tally);
        }
    }

    /// Makes the entry ready, releasing its held connections, once its channels are loaded,
    /// the node's own topics are subscribed (`base`) and every channel's topic is
    /// (`subscribed`). Returns whether it became ready now.
    pub(super) fn make_ready(&mut self, base: bool, subscribed: &HashSet<ChanName>) -> bool {
        if self.ready || self.gone || self.sync.loading_now() || !base {
            return false;
        }
        if !self.chans.iter().all(|c| subscribed.contains(c)) {
            return false;
        }
        self.ready = true;
        for conn in &self.conns {
            conn.outbox.release();
        }
        true
    }

    /// What the presence hash should hold: `None` when the client has no connection, or its
    /// connections have not had their welcome yet.
    pub(super) fn presence(&self) -> Option<PresenceRecord> {
        if self.conns.is_empty() || !self.ready {
            return None;
        }
        Some(PresenceRecord {
            conns: u32::try_from(self.conns.len()).unwrap_or(u32::MAX),
            meta: self.meta.clone(),
            since: self.since,
        })
    }
}

/// Queues `frame` on one connection; a full queue closes it as a slow consumer.
fn send(conn: &ConnHandle, frame: Frame, tally: &mut Tally) {
    match conn.outbox.send(frame) {
        Ok(()) => tally.sent += 1,
        Err(outbox::Refused::Full) => {
            tally.refused += 1;
            conn.outbox.request_close(CloseCode::SlowConsumer);
        }
        // The session is ending and will unregister.
        Err(outbox::Refused::Closed) => {}
    }
}
