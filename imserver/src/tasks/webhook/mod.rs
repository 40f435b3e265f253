//! Webhooks: every node reads the online/offline event stream through one consumer group, so
//! that across the nodes each event is posted once (at least once under faults), in batches,
//! signed as Standard Webhooks 1.0 says. A batch is acknowledged in the group once the receiver
//! answers 2xx; a failed post is retried with backoff and jitter, and after the last attempt the
//! batch goes to the dead-letter stream and is acknowledged. Batches a node read and never
//! acknowledged (it died) are claimed by the others once idle for `--webhook-claim-idle-ms`;
//! while a node waits to retry a batch it keeps claiming it for itself, so that it is not taken
//! from a node that is merely patient.
//!
//! The parts: [`post`] (body, signatures, the HTTP request, backoff) and [`replay`] (posting
//! the dead-lettered batches again, for an operator).

pub mod post;
pub mod replay;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use imclient::keys::Keys;
use imclient::store::Store;
use imclient::{EventEntry, NodeId};
use redis::AsyncCommands as _;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamInfoGroupsReply,
    StreamReadOptions, StreamReadReply,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;

pub use post::{Poster, Settings};

/// The consumer group every node reads the events stream through. A consumer is a node, named
/// by its node id.
pub const GROUP: &str = "webhooks";
/// How long one blocking read waits, in milliseconds: below the pooled connection's response
/// timeout (500 ms at the least, `imclient::store::MIN_REDIS_RESPONSE_TIMEOUT`), and short enough to claim and measure the lag about once a second.
const BLOCK_MS: usize = 250;
/// How often idle batches of other nodes are looked for, and the lag measured.
const CLAIM_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between retries while Redis is failing.
const MAX_REDIS_BACKOFF: Duration = Duration::from_secs(2);

/// What the webhook sender works on.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// This node: its consumer name in the group.
    pub node: NodeId,
    /// Where the events stream and the dead-letter stream are.
    pub keys: Keys,
    /// Where posts, failures, retries, dead letters and the lag are counted.
    pub metrics: Arc<Metrics>,
    /// The receiver and the limits.
    pub settings: Arc<Settings>,
}

/// Where the reading stands.
#[derive(Debug)]
struct Cursor {
    /// Whether the group is known to exist (it is created, from "now", at first).
    group_ready: bool,
    /// While this node's own unacknowledged entries (from before a restart under the same
    /// node id) are read again: after which id. `None` once done.
    own_pending: Option<String>,
    /// Where the next XAUTOCLAIM starts.
    claim_from: String,
    /// When idle entries were last looked for.
    claimed_at: Option<Instant>,
}

/// Runs the webhook sender until `stop` turns true. A post under way at that moment is
/// abandoned: its batch stays unacknowledged and is posted again by a node that claims it.
pub async fn run(hook: Webhook, store: Store, mut stop: watch::Receiver<bool>) {
    let poster = match Poster::new(&hook.settings) {
        Ok(poster) => poster,
        Err(e) => {
            tracing::error!(node = %hook.node, error = %e, "cannot build the webhook HTTP client; no webhooks are sent");
            return;
        }
    };
    let mut cursor = Cursor {
        group_ready: false,
        own_pending: Some("0".to_owned()),
        claim_from: "0-0".to_owned(),
        claimed_at: None,
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        let step = hook.step(&store, &poster, &mut cursor);
        let result = tokio::select! {
            r = step => r,
            _ = stop.changed() => return,
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                // The group may be gone with the stream (Redis restarted empty): create it again.
                cursor.group_ready = false;
                tracing::warn!(node = %hook.node, error = %e, "webhook sender cannot read or acknowledge events; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_REDIS_BACKOFF);
            }
        }
    }
}

impl Webhook {
    /// One read (own pending entries, idle entries of others, or new ones) and its delivery.
    async fn step(
        &self,
        store: &Store,
        poster: &Poster,
        cursor: &mut Cursor,
    ) -> imclient::Result<()> {
        let key = self.keys.events();
        let consumer = self.node.as_str();
        let batch = self.settings.batch;
        if !cursor.group_ready {
            create_group(&self.keys, store).await?;
            cursor.group_ready = true;
        }
        let mut conn = store.get().await?;
        let entries: Vec<StreamId> = if let Some(from) = cursor.own_pending.clone() {
            let opts = StreamReadOptions::default()
                .group(GROUP, consumer)
                .count(batch);
            let reply: Option<StreamReadReply> =
                conn.xread_options(&[&key], &[from.as_str()], &opts).await?;
            let entries = ids_of(reply);
            cursor.own_pending = entries.last().map(|e| e.id.clone());
            entries
        } else if cursor
            .claimed_at
            .is_none_or(|at| at.elapsed() >= CLAIM_EVERY)
        {
            cursor.claimed_at = Some(Instant::now());
            self.measure_lag(&mut conn, &key).await;
            let idle = self.settings.claim_idle.as_millis() as u64;
            let reply: StreamAutoClaimReply = conn
                .xautoclaim_options(
                    &key,
                    GROUP,
                    consumer,
                    idle,
                    cursor.claim_from.as_str(),
                    StreamAutoClaimOptions::default().count(batch),
                )
                .await?;
            cursor.claim_from = reply.next_stream_id;
            if !reply.claimed.is_empty() {
                tracing::info!(node = %self.node, events = reply.claimed.len(), "claimed webhook events another node read and did not acknowledge");
            }
            reply.claimed
        } else {
            let opts = StreamReadOptions::default()
                .group(GROUP, consumer)
                .count(batch)
                .block(BLOCK_MS);
            let reply: Option<StreamReadReply> = conn.xread_options(&[&key], &[">"], &opts).await?;
            ids_of(reply)
        };
        drop(conn);
        if entries.is_empty() {
            return Ok(());
        }
        self.deliver(store, poster, entries).await
    }

    /// Posts one batch until the receiver acknowledges it or the attempts run out, then
    /// acknowledges it in the group (after dead-lettering it, in the second case).
    async fn deliver(
        &self,
        store: &Store,
        poster: &Poster,
        entries: Vec<StreamId>,
    ) -> imclient::Result<()> {
        let key = self.keys.events();
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let mut events = Vec::with_capacity(entries.len());
        for entry in entries {
            // An entry trimmed away while pending comes back without fields: nothing to post.
            if entry.map.is_empty() {
                continue;
            }
            match EventEntry::from_stream(&key, entry.id, &entry.map) {
                Ok(event) => events.push(event),
                Err(e) => {
                    tracing::warn!(node = %self.node, error = %e, "not posting a malformed event")
                }
            }
        }
        if events.is_empty() {
            return self.ack(store, &ids).await;
        }
        let id = post::message_id(&events);
        let body = post::body(&events)?;
        let settings = &*self.settings;
        let mut reason = String::new();
        for attempt in 1..=settings.max_attempts {
            if attempt > 1 {
                self.wait_keeping(store, &ids, post::retry_delay(settings.retry, attempt - 1))
                    .await;
                self.metrics.webhook_retried.fetch_add(1, Relaxed);
            }
            match poster.post(settings, &id, &body).await {
                Ok(()) => {
                    self.metrics
                        .webhook_posted
                        .fetch_add(events.len() as u64, Relaxed);
                    tracing::debug!(node = %self.node, webhook_id = %id, events = events.len(), attempt, "webhook posted");
                    return self.ack(store, &ids).await;
                }
                Err(why) => {
                    self.metrics.webhook_failed.fetch_add(1, Relaxed);
                    tracing::warn!(node = %self.node, webhook_id = %id, attempt, max_attempts = settings.max_attempts, reason = %why, "webhook post failed");
                    reason = why;
                }
            }
        }
        self.dead_letter(store, &id, &body, &ids, events.len(), &reason)
            .await
    }

    /// Acknowledges `ids` in the group: they are done.
    async fn ack(&self, store: &Store, ids: &[String]) -> imclient::Result<()> {
        let mut conn = store.get().await?;
        let _: i64 = conn.xack(self.keys.events(), GROUP, ids).await?;
        Ok(())
    }

    /// Waits `delay` before a retry, claiming `ids` again at least every third of the claim
    /// idle time and at the end, so that they never look abandoned to the other nodes (a
    /// retry may wait up to a minute, longer than the 30 s default).
    async fn wait_keeping(&self, store: &Store, ids: &[String], delay: Duration) {
        let end = Instant::now() + delay;
        let step = (self.settings.claim_idle / 3).max(Duration::from_millis(10));
        loop {
            let left = end.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(step)).await;
            self.keep(store, ids).await;
            if left <= step {
                return;
            }
        }
    }

    /// Claims `ids` again for this node, which resets their idle time: a batch being retried
    /// is not taken over by another node. Failing is harmless (at worst both post it).
    async fn keep(&self, store: &Store, ids: &[String]) {
        let kept = async {
            let mut conn = store.get().await?;
            let _: redis::Value = redis::cmd("XCLAIM")
                .arg(self.keys.events())
                .arg(GROUP)
                .arg(self.node.as_str())
                .arg(0)
                .arg(ids)
                .arg("JUSTID")
                .query_async(&mut conn)
                .await?;
            Ok::<(), imclient::Error>(())
        };
        if let Err(e) = kept.await {
            tracing::debug!(node = %self.node, error = %e, "cannot keep a webhook batch claimed");
        }
    }

    /// Moves a batch the receiver never acknowledged to the dead-letter stream and
    /// acknowledges it, in one transaction (both keys carry the prefix's hash tag).
    async fn dead_letter(
        &self,
        store: &Store,
        id: &str,
        body: &[u8],
        ids: &[String],
        events: usize,
        reason: &str,
    ) -> imclient::Result<()> {
        let mut conn = store.get().await?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XADD")
            .arg(self.keys.webhook_dead_letters())
            .arg("*")
            .arg(replay::ID_FIELD)
            .arg(id)
            .arg(replay::BODY_FIELD)
            .arg(body)
            .arg("events")
            .arg(events)
            .arg("node")
            .arg(self.node.as_str())
            .arg("error")
            .arg(reason)
            .ignore()
            .cmd("XACK")
            .arg(self.keys.events())
            .arg(GROUP)
            .arg(ids)
            .ignore();
        let () = pipe.query_async(&mut conn).await?;
        self.metrics
            .webhook_dead_lettered
            .fetch_add(events as u64, Relaxed);
        tracing::error!(
            node = %self.node,
            webhook_id = %id,
            events,
            reason,
            "webhook batch dead-lettered after the last attempt; replay it with `imserver webhook-replay`"
        );
        Ok(())
    }

    /// Sets the lag gauge: entries of the stream the group has not acknowledged, read (pending)
    /// or not (Redis's `lag`, unknown after some trims: then counted as none).
    async fn measure_lag(&self, conn: &mut imclient::store::Conn, key: &str) {
        let info: redis::RedisResult<StreamInfoGroupsReply> = conn.xinfo_groups(key).await;
        match info {
            Ok(info) => {
                if let Some(group) = info.groups.iter().find(|g| g.name == GROUP) {
                    let lag = group.pending + group.lag.unwrap_or(0);
                    self.metrics.webhook_lag.store(lag as u64, Relaxed);
                }
            }
            Err(e) => tracing::debug!(node = %self.node, error = %e, "cannot read the webhook lag"),
        }
    }
}

/// Creates the group if it does not exist, from "now": a new deployment does not post the
/// stream's whole history. The node calls it before it serves, so that no client's event
/// comes before the group; the sender calls it again after a Redis error (the stream and its
/// group are gone when Redis restarted empty).
pub async fn create_group(keys: &Keys, store: &Store) -> imclient::Result<()> {
    let mut conn = store.get().await?;
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys.events())
        .arg(GROUP)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => Ok(other?),
    }
}

fn ids_of(reply: Option<StreamReadReply>) -> Vec<StreamId> {
    reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .collect()
}
