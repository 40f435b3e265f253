//! Session counting: how many sessions are running, close frames included, so that shutdown
//! can wait for the last one; and what a session gets when it registers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::sync::Notify;

use super::entry::ConnId;
use crate::outbox::Outbox;

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

impl Registration {
    pub(super) fn new(id: ConnId, outbox: Arc<Outbox>, live: LiveSession) -> Self {
        Self {
            id,
            outbox,
            _live: live,
        }
    }
}

/// How many sessions are running, close frames included.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    live: AtomicU64,
    /// Notified when the last session ends.
    ended: Notify,
}

impl Sessions {
    /// Sessions running.
    pub(super) fn live(&self) -> u64 {
        self.live.load(Relaxed)
    }

    /// Waits until every session has ended.
    pub(super) async fn wait_empty(&self) {
        loop {
            let notified = self.ended.notified();
            if self.live.load(Relaxed) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One live session; dropping it ends it.
#[derive(Debug)]
pub(super) struct LiveSession(Arc<Sessions>);

impl LiveSession {
    pub(super) fn start(sessions: &Arc<Sessions>) -> Self {
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
