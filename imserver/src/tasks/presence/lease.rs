//! The node's lease (`{p}:lease:{node}`): its renewal, and the keeper task that renews it every
//! third of its lifetime on a connection of its own.
//!
//! Why a connection and a task of its own: the presence writer's pooled connections are checked
//! at every checkout, and on a Redis Cluster that check is a PING to every master. While any
//! master is failing over, every checkout waits for it (up to the 3 s cluster bound), so a
//! renewal made by the writer missed its turn whichever master failed, and a lease shorter
//! than the failover lapsed: backends and peers could count the node dead and move its
//! clients. The keeper's connection is its own (`Store::connect_own`): no check at checkout,
//! and on a cluster a renewal that the cluster cannot take fails within moments instead of
//! being retried by redis-rs after 1.28 s or more; the keeper tries again every 100 ms, so the
//! lease is renewed as soon as the cluster takes commands again. What no connection helps: a
//! cluster left at `cluster-require-full-coverage yes` refuses every command while a failed
//! master's slots are unserved (docs/DESIGN.md, "Leases through a failover").
//!
//! The writer takes the lease the first time (after purging what a previous run left) and
//! gives it up when the node stops; the keeper renews it in between. They share a gate: the
//! keeper holds it across each renewal, and the writer takes it to give the lease up, so that
//! no renewal can follow the release and take the lease back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use imclient::store::{Connection, SharedConn, Store};
use tokio::sync::{Mutex, Notify, watch};
use tokio::time::Instant;

use super::Presence;

/// First wait before renewing again after a failed renewal; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(50);
/// Longest wait between renewals while they fail: the lease must be renewed as soon as the
/// cluster takes commands again (a failover takes seconds; a renewal fails within moments).
const RETRY_MAX: Duration = Duration::from_millis(100);

/// What the writer and the keeper share.
#[derive(Debug, Default)]
pub(super) struct LeaseShared {
    /// A tokio mutex: the keeper holds it across a renewal's round trip, so that the writer,
    /// which takes it to give the lease up, waits for a renewal in flight.
    gate: Mutex<Gate>,
    /// A renewal found that the lease had lapsed: the writer announces the node again,
    /// re-reads its presence and later tells its clients `missed`.
    lapsed: AtomicBool,
    /// Wakes the writer when `lapsed` turns true.
    pub(super) woken: Notify,
}

#[derive(Debug, Default)]
struct Gate {
    /// The lease was given up: it is never renewed again.
    released: bool,
}

impl LeaseShared {
    /// Whether a renewal found the lease lapsed since the last call (which clears it).
    pub(super) fn take_lapsed(&self) -> bool {
        self.lapsed.swap(false, Relaxed)
    }

    /// Puts back a lapse whose handling failed, for the writer's next step.
    pub(super) fn restore_lapsed(&self) {
        self.lapsed.store(true, Relaxed);
    }

    /// Runs `release` (giving the lease up) with the gate held, after marking the lease given
    /// up: a renewal in flight finishes first, and none starts after.
    pub(super) async fn release<F: std::future::Future<Output = redis::RedisResult<()>>>(
        &self,
        release: F,
    ) -> redis::RedisResult<()> {
        let mut gate = self.gate.lock().await;
        gate.released = true;
        release.await
    }
}

/// Renews the lease on `conn` (and puts the node in the `nodes` set); returns whether it had
/// lapsed: Redis held another run's value or none. Records the renewal in the node's health.
pub(super) async fn renew<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    presence: &Presence,
    started: bool,
) -> redis::RedisResult<bool> {
    let lease = presence.lease;
    let sent = Instant::now();
    let (previous, _): (Option<String>, i64) = redis::pipe()
        .cmd("SET")
        .arg(presence.keys.lease(presence.id()))
        .arg(presence.epoch())
        .arg("PX")
        .arg(lease.as_millis() as u64)
        .arg("GET")
        .sadd(presence.keys.nodes(), presence.id().as_str())
        .query_async(conn)
        .await?;
    presence.health.lease_renewed(sent.into_std(), lease);
    let lapsed = started && previous.as_deref() != Some(presence.epoch());
    if lapsed {
        presence.metrics.lease_lapses.fetch_add(1, Relaxed);
        tracing::warn!(node = %presence.id(), "lease had lapsed; rewriting presence");
    }
    Ok(lapsed)
}

/// Renews the lease every third of its lifetime, from one lifetime's third after the writer
/// took it, until the writer gives it up or `stop` turns true. A failed renewal is tried again
/// after 50 ms, then every 100 ms.
pub(super) async fn keep(
    presence: Presence,
    store: Store,
    shared: Arc<LeaseShared>,
    mut stop: watch::Receiver<bool>,
) {
    // Opened now rather than at the first renewal: opening a cluster connection waits for
    // every master (a failing one up to the connect timeout), an open one does not.
    let mut own: Option<SharedConn> = tokio::select! {
        opened = store.connect_own() => opened.ok(),
        _ = stop.changed() => return,
    };
    let every = presence.lease / 3;
    let mut next = Instant::now() + every;
    let mut retry = RETRY_MIN;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => return,
        }
        let gate = shared.gate.lock().await;
        // Stopped before this task saw the change: the node is clearing its presence.
        if gate.released || *stop.borrow() {
            return;
        }
        let sent = Instant::now();
        let renewed = async {
            let mut conn = match &own {
                Some(conn) => conn.clone(),
                None => store.connect_own().await.map_err(super::pool_error)?,
            };
            own = Some(conn.clone());
            let renewed = renew(&mut conn, &presence, true).await;
            // A cluster connection repairs itself; one server's may be broken.
            if renewed.is_err() && matches!(conn, Connection::Single(_)) {
                own = None;
            }
            renewed
        };
        let renewed = tokio::select! {
            r = renewed => r,
            _ = stop.changed() => return,
        };
        drop(gate);
        match renewed {
            Ok(lapsed) => {
                let took_ms = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX);
                tracing::debug!(node = %presence.id(), took_ms, "lease renewed");
                next = Instant::now() + every;
                retry = RETRY_MIN;
                if lapsed {
                    shared.lapsed.store(true, Relaxed);
                    shared.woken.notify_one();
                }
            }
            Err(e) => {
                presence.metrics.presence_errors.fetch_add(1, Relaxed);
                // Once per run of failures: they come every 100 ms through a failover.
                if retry == RETRY_MIN {
                    tracing::warn!(node = %presence.id(), error = %e, "lease renewal failed; retrying every 100 ms");
                } else {
                    tracing::debug!(node = %presence.id(), error = %e, "lease renewal failed again");
                }
                next = Instant::now() + retry;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}
