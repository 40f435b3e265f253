//! Moves between nodes. A client whose home became another node has its stream and buffer
//! handed over there (on the ordered publisher queue), its connections closed with 4003, and
//! what still arrives for it passed on for [`FORWARD_FOR`]. The new home takes the stream
//! over, numbering what reached it first after the handed-over envelopes, and pushes an
//! envelope that came both ways once.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use imclient::ClientId;
use imclient::contract::{self, CloseCode, Handover, NodeCommand};
use serde_json::value::RawValue;
use tokio::time::{Duration, Instant};

use super::Hub;
use super::entry::{ClientInner, Move, Reach, Tally};
use crate::recovery::RecoveryLimits;
use crate::work::Outgoing;

/// How long a node passes on what arrives for a client it handed over, and how long the new
/// home drops the second copy of an envelope that came both ways. Backends follow a node-set
/// change within a second; a channel topic is subscribed at the new home within moments of
/// the handover.
pub const FORWARD_FOR: Duration = Duration::from_secs(10);

/// What handing an entry over did.
#[derive(Debug)]
pub(super) struct HandedOver {
    /// The handover command for the new home, when it could be written.
    pub(super) command: Option<String>,
    /// Bytes freed from the buffer.
    pub(super) freed: usize,
    /// The entry's recovery window was open and is closed.
    pub(super) window_closed: bool,
}

impl ClientInner {
    /// Hands the entry over to the node whose topic is `topic`: its stream and buffer go into
    /// the command returned, its connections are asked to close with 4003, and from now on
    /// what arrives is passed on. `None` when it is gone or already handed over.
    pub(super) fn hand_over(
        &mut self,
        client: &ClientId,
        topic: String,
        now: Instant,
    ) -> Option<HandedOver> {
        if self.gone || matches!(self.moving.get(), Move::Forwarding { .. }) {
            return None;
        }
        let handover = NodeCommand::Handover(Handover {
            client: client.clone(),
            stream: self.stream.clone(),
            seq: self.seq,
            first: self.buffer.first_seq().unwrap_or(self.seq + 1),
            frames: self
                .buffer
                .frames()
                .iter()
                .filter_map(|f| {
                    let text = std::str::from_utf8(f).ok()?;
                    RawValue::from_string(text.to_owned()).ok()
                })
                .collect(),
        });
        let command = serde_json::to_string(&handover).ok();
        let freed = self.buffer.clear();
        let window_closed = self.detached.take().is_some();
        self.moving.set(Move::Forwarding {
            topic,
            until: now + FORWARD_FOR,
        });
        self.close_all(CloseCode::Moved);
        Some(HandedOver {
            command,
            freed,
            window_closed,
        })
    }

    /// Takes over the stream handed over by the node the client left. An entry that was just
    /// created for it (`created`), that this node was itself handing away (its home moved here
    /// and back) or that was awaiting the stream takes its stream, `seq` and buffer, and what
    /// reached it first is numbered after them; an entry whose client already connected here
    /// afresh keeps its own stream. Returns whether a recovery window opened.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn take_over(
        &mut self,
        client: &ClientId,
        handover: Handover,
        created: bool,
        now: Instant,
        limits: &RecoveryLimits,
        outgoing: &Outgoing,
        tally: &mut Tally,
    ) -> bool {
        let returning =
            matches!(self.moving.get(), Move::Forwarding { .. }) && self.conns.is_empty();
        let window_opened = returning && self.detached.is_none() && !self.gone;
        if window_opened {
            self.detached = Some(now);
        }
        let awaiting = created
            || returning
            || matches!(self.moving.get(), Move::TakingOver { awaiting: true, .. })
                && self.conns.is_empty();
        let mut seen: HashSet<Box<str>> = match self.moving.take() {
            Move::TakingOver { seen, .. } => seen,
            _ => HashSet::new(),
        };
        if !awaiting || self.gone {
            self.moving.set(Move::TakingOver {
                seen,
                until: now + FORWARD_FOR,
                awaiting: false,
            });
            return window_opened;
        }
        // What arrived before the stream did, to number after it: pushed again below, so not
        // counted as seen yet.
        seen.clear();
        let early: Vec<String> = self
            .buffer
            .frames()
            .iter()
            .filter_map(|f| contract::unframe(std::str::from_utf8(f).ok()?))
            .collect();
        tally.bytes -= self.buffer.clear() as isize;
        self.stream = handover.stream;
        self.seq = handover.first.saturating_sub(1);
        for frame in handover.frames {
            if let Some(id) = contract::envelope_id(frame.get()) {
                seen.insert(id.into());
            }
            let frame = Bytes::from(String::from(Box::<str>::from(frame)));
            self.seq += 1;
            tally.bytes += self.buffer.push(self.seq, frame, now, limits, false);
        }
        self.seq = self.seq.max(handover.seq);
        self.moving.set(Move::TakingOver {
            seen,
            until: now + FORWARD_FOR,
            awaiting: false,
        });
        for body in early {
            self.push(client, &body, now, limits, outgoing, tally);
        }
        window_opened
    }

    /// Marks a new entry as created for deliveries that came before its stream.
    pub(super) fn await_stream(&mut self, now: Instant) {
        self.moving.set(Move::TakingOver {
            seen: HashSet::new(),
            until: now + FORWARD_FOR,
            awaiting: true,
        });
    }
}

impl Hub {
    /// Hands `client` over to its new home, whose topic is `topic`: queues its stream and
    /// buffer there (on the ordered publisher queue, so before anything passed on later), asks
    /// its connections to close with 4003, and from then on passes on what arrives for it
    /// instead of pushing it, for [`FORWARD_FOR`]; then the entry goes. Returns false when the
    /// client is not here or was already handed over.
    pub fn hand_over(&self, client: &ClientId, topic: String) -> bool {
        let Some(entry) = self.clients.get(client) else {
            return false;
        };
        let mut inner = entry.lock();
        let Some(handed) = inner.hand_over(client, topic.clone(), Instant::now()) else {
            return false;
        };
        if let Some(command) = handed.command {
            // Under the entry's lock: before anything it passes on.
            self.work.outgoing.publish(&topic, command);
        }
        drop(inner);
        self.memory.free(handed.freed);
        if handed.window_closed {
            self.metrics.recovery_windows.fetch_sub(1, Relaxed);
        }
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
        let client = handover.client.clone();
        let (entry, created) = {
            let mut shard = self.clients.shard(&client);
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
        let mut tally = Tally::default();
        let window_opened = entry.lock().take_over(
            &client,
            handover,
            created,
            now,
            &self.recovery,
            &self.work.outgoing,
            &mut tally,
        );
        self.record(tally);
        if window_opened {
            self.metrics.recovery_windows.fetch_add(1, Relaxed);
        }
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
            let mut shard = self.clients.shard(client);
            match shard.get(client) {
                Some(entry) => entry.clone(),
                None => {
                    let entry = self.new_entry(client, serde_json::Value::Null, Some(now));
                    entry.lock().await_stream(now);
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
                .clients
                .get(client)
                .is_some_and(|e| e.lock().stream == stream)
            {
                return true;
            }
            if tokio::time::timeout_at(deadline, handed).await.is_err() {
                return false;
            }
        }
    }
}
