//! Background work the hub asks for: coalesced sets of clients and channels whose Redis state
//! may differ from the node's (presence, online counts, topic subscriptions, memberships to
//! load), the joins waiting to be acknowledged, and the queue of Redis commands the publisher
//! task sends in order. Plain in-memory state: the tasks that drain it live in `tasks`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use imclient::{ChanName, ClientId};
use tokio::sync::Notify;

use crate::pending::Pending;

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
    /// join acknowledgements, handovers and forwarded envelopes.
    pub outgoing: Outgoing,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Redis commands waiting for the publisher task, in order; bounded, the oldest dropped past
/// the bound (receipts and acknowledgements are best effort: a lost one leaves a sender
/// without a status, or a join waiting out its timeout).
#[derive(Debug, Default)]
pub struct Outgoing {
    queue: Mutex<VecDeque<redis::Cmd>>,
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
    waiting: Mutex<VecDeque<(ClientId, ChanName, String)>>,
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
