//! The broker: one Redis subscriber connection that receives every command for this node (its
//! own topic, the broadcast topic, and the topics of channels with local members) and hands it
//! to the hub. It subscribes to a channel's topic when the channel gets its first local member
//! and unsubscribes when the last one goes. A lost connection is re-established and
//! re-subscribed with backoff; WebSocket clients stay connected meanwhile. Each envelope's way
//! from Redis to its receivers' queues is timed here, once per envelope, for the latency
//! histogram: the broker is the one task that sees both ends.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use imclient::contract::{
    CloseCode, Deliver, EnvelopeBody, Fanout, Kind, NodeAnnouncement, NodeCommand, ReceiptPayload,
    ReceiptResult, ReceiptStatus, Receipts, RecoveryRefusal, SystemEvent, envelope_body,
    system_frame,
};
use imclient::keys::Keys;
use imclient::store::{Store, Subscriber};
use imclient::{ChanName, ClientId, NodeId, new_message_id, now_ms};
use serde_json::value::to_raw_value;
use tokio::sync::watch;

use crate::health::Health;
use crate::hub::{ChanOp, Hub, Reach};
use crate::metrics::{DeliveryKind, DropReason, Metrics};
use crate::nodeset::NodeSet;
use crate::work::HubWork;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the subscriber connection is pinged.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a ping may take before the connection is presumed dead.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// How many messages already arrived the broker handles before it looks at anything else.
const DRAIN_AT_ONCE: usize = 64;
/// How long a join acknowledgement waits in Redis for the call that asked for it.
const ACK_TTL_MS: i64 = 30_000;

/// What the broker and the publisher work on.
#[derive(Debug, Clone)]
pub struct Broker {
    /// This node.
    pub id: NodeId,
    /// Redis names.
    pub keys: Keys,
    /// Where commands are delivered.
    pub hub: Arc<Hub>,
    /// Topics to change, joins to acknowledge, commands to publish.
    pub work: Arc<HubWork>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The live node set, for deliveries that come before a handover.
    pub nodes: Arc<NodeSet>,
    /// Where the subscriber says whether it is up.
    pub health: Arc<Health>,
}

/// Runs the subscriber until `stop` turns true.
pub async fn run(broker: Broker, store: Store, mut stop: watch::Receiver<bool>) {
    let topic = broker.keys.node_topic(&broker.id);
    let mut backoff = MIN_BACKOFF;
    let mut connected_before = false;
    loop {
        let nodeset = broker.keys.nodeset_topic();
        let fixed = [
            topic.clone(),
            broker.keys.broadcast_topic(),
            nodeset.clone(),
        ];
        let attempt = async {
            let Some(opened) = store.subscribe().await else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "the store has no address to subscribe at",
                )));
            };
            let (mut sink, stream) = opened?;
            sink.subscribe(&fixed).await?;
            redis::RedisResult::Ok((sink, stream))
        };
        let subscribed = tokio::select! {
            r = attempt => r,
            _ = stop.changed() => return,
        };
        let (mut sink, mut messages) = match subscribed {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(node = %broker.id, error = %e, ?backoff, "cannot subscribe to Redis; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let mut chans: HashSet<ChanName> = HashSet::new();
        if connected_before {
            broker.metrics.redis_reconnects.fetch_add(1, Relaxed);
            // Join and leave controls sent while we were away are lost: read memberships again.
            broker.hub.resync_memberships();
        }
        broker.work.topics.mark_all(broker.hub.chans());
        let reconnected = connected_before;
        // After an outage, every topic is subscribed again before clients are told what they
        // may have missed: from then on nothing more can go missing.
        if reconnected && let Err(e) = reconcile(&broker, &mut sink, &mut chans).await {
            tracing::warn!(node = %broker.id, error = %e, "cannot subscribe to channel topics again");
            continue;
        }
        connected_before = true;
        backoff = MIN_BACKOFF;
        broker.health.set_redis_up(true);
        broker.hub.set_base_subscribed(true);
        if reconnected {
            broker.hub.mark_missed(&system_frame(&SystemEvent::Missed {
                reason: RecoveryRefusal::RedisOutage,
            }));
        }
        tracing::info!(node = %broker.id, %topic, "subscribed");
        // A connection that dies without a reset (a partition) never ends the stream by
        // itself; an unanswered ping tells.
        let mut health =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        'serving: loop {
            tokio::select! {
                msg = messages.next() => {
                    // What has already arrived behind this message is handled before the other
                    // branches are polled again: polling them (the stop signal, the topic
                    // changes, the health tick) for every message was about 2% of a private
                    // delivery's instructions, and at a high rate Redis delivers several
                    // messages per read. Bounded, so that they still get their turn.
                    let mut next = msg;
                    let mut handled = 0;
                    loop {
                        let Some(msg) = next else { break 'serving };
                        if msg.get_channel_name() == nodeset {
                            announced(&broker, msg.get_payload_bytes());
                            broker.work.nodeset.notify_one();
                        } else {
                            handle(&broker, &store, msg.get_payload_bytes());
                        }
                        handled += 1;
                        if handled == DRAIN_AT_ONCE {
                            break;
                        }
                        match messages.next().now_or_never() {
                            Some(more) => next = more,
                            None => break,
                        }
                    }
                }
                _ = broker.work.topics.wait() => {
                    if let Err(e) = reconcile(&broker, &mut sink, &mut chans).await {
                        tracing::warn!(node = %broker.id, error = %e, "cannot change channel subscriptions");
                        break;
                    }
                    settle_join_acks(&broker);
                }
                _ = health.tick() => {
                    let ping = tokio::time::timeout(PING_TIMEOUT, sink.ping()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        tracing::warn!(node = %broker.id, "Redis subscriber did not answer a ping");
                        break;
                    }
                    let held = tokio::time::timeout(PING_TIMEOUT, sink.holds(&topic)).await;
                    if matches!(held, Ok(Ok(false))) {
                        tracing::warn!(node = %broker.id, %topic, "Redis Cluster no longer holds this broker's subscription");
                        break;
                    }
                }
                _ = stop.changed() => { broker.health.set_redis_up(false); return }
            }
        }
        broker.health.set_redis_up(false);
        broker.hub.set_base_subscribed(false);
        broker.metrics.chan_topics.store(0, Relaxed);
        tracing::warn!(node = %broker.id, "lost the Redis subscriber connection; reconnecting");
    }
}

/// Subscribes to the topics of channels that gained local members and unsubscribes from those
/// that lost their last one. On failure the channels are marked again for the next connection.
async fn reconcile(
    broker: &Broker,
    sink: &mut Subscriber,
    subscribed: &mut HashSet<ChanName>,
) -> redis::RedisResult<()> {
    let changed = broker.work.topics.take();
    let (mut add, mut remove) = (Vec::new(), Vec::new());
    for chan in &changed {
        match (broker.hub.chan_count(chan) > 0, subscribed.contains(chan)) {
            (true, false) => add.push(chan.clone()),
            (false, true) => remove.push(chan.clone()),
            _ => {}
        }
    }
    let topics = |chans: &[ChanName]| {
        chans
            .iter()
            .map(|c| broker.keys.chan_topic(c))
            .collect::<Vec<_>>()
    };
    let result = async {
        if !add.is_empty() {
            sink.subscribe(&topics(&add)).await?;
            subscribed.extend(add.iter().cloned());
            // Acknowledged by Redis: a message published from now on arrives here.
            broker.hub.topics_subscribed(&add);
        }
        if !remove.is_empty() {
            // Before the command: a member that joins meanwhile must wait for the topic to be
            // subscribed again, not count on this one.
            broker.hub.topics_unsubscribing(&remove);
            sink.unsubscribe(&topics(&remove)).await?;
            for chan in &remove {
                subscribed.remove(chan);
            }
        }
        redis::RedisResult::Ok(())
    }
    .await;
    broker
        .metrics
        .chan_topics
        .store(subscribed.len() as u64, Relaxed);
    if result.is_err() {
        broker.work.topics.mark_all(changed);
    }
    result
}

/// Handles one command from the node topic. Malformed commands are counted and dropped.
pub fn handle(broker: &Broker, store: &Store, bytes: &[u8]) {
    // Taken before parsing: the latency covers all the node does with an envelope.
    let received = Instant::now();
    broker.metrics.commands_in.fetch_add(1, Relaxed);
    // One UTF-8 check over the whole command, then the `&str` reader, which checks no string
    // again: the slice reader checks each string on its own, and that was about 5% of a private
    // delivery's instructions in the node (docs/DESIGN.md, "Counting instructions").
    let parsed = std::str::from_utf8(bytes)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str::<NodeCommand<'_>>(text).map_err(|e| e.to_string()));
    let command = match parsed {
        Ok(c) => c,
        Err(e) => {
            broker.metrics.dropped(DropReason::Malformed, 1);
            tracing::warn!(node = %broker.id, error = %e, len = bytes.len(), "dropping malformed command");
            return;
        }
    };
    match command {
        NodeCommand::Deliver(d) => deliver(broker, store, &d, received),
        NodeCommand::Receipts(r) => receipts(broker, &r),
        NodeCommand::Kick(k) => {
            let n = broker.hub.kick(&k.client, CloseCode::Kicked);
            tracing::info!(node = %broker.id, client = %k.client, connections = n, "force offline");
        }
        NodeCommand::Chan(f) => {
            let Some(chan) = &f.chan else {
                broker.metrics.dropped(DropReason::Malformed, 1);
                return;
            };
            let body = fanout_body(&f, Kind::Channel);
            let exclude = f.from.as_ref().filter(|_| f.exclude_sender);
            broker.hub.fanout_chan(chan, &body, exclude);
            broker
                .metrics
                .delivered(DeliveryKind::Channel, received.elapsed());
        }
        NodeCommand::Broadcast(f) => {
            let body = fanout_body(&f, Kind::Broadcast);
            let exclude = f.from.as_ref().filter(|_| f.exclude_sender);
            broker.hub.broadcast(&body, exclude);
            broker
                .metrics
                .delivered(DeliveryKind::Broadcast, received.elapsed());
        }
        NodeCommand::Join(m) => {
            broker.hub.apply(&m.client, ChanOp::Join(m.chan.clone()));
            if broker.keys.is_sharded() {
                broker.hub.resync_client(&m.client);
            }
            if let Some(ack) = m.ack {
                broker.work.join_acks.push(m.client, m.chan, ack);
                settle_join_acks(broker);
            }
        }
        NodeCommand::Leave(m) => {
            broker.hub.apply(&m.client, ChanOp::Leave(m.chan.clone()));
            if broker.keys.is_sharded() {
                broker.hub.resync_client(&m.client);
            }
            // Applied: the acknowledgement goes out at once (the client is no member).
            if let Some(ack) = m.ack {
                broker.work.join_acks.push(m.client, m.chan, ack);
                settle_join_acks(broker);
            }
        }
        NodeCommand::ChanDeleted(d) => broker.hub.chan_deleted(&d.chan),
        // Only what a node writes: envelopes that start with their id, frames with their seq (a
        // frame is built by splicing `seq` in at the start of an envelope).
        NodeCommand::Handover(h) if !h.frames.iter().all(|f| f.get().starts_with("{\"seq\":")) => {
            broker.metrics.dropped(DropReason::Malformed, 1);
        }
        NodeCommand::Forward(f) if imclient::contract::envelope_id(f.envelope.get()).is_none() => {
            broker.metrics.dropped(DropReason::Malformed, 1);
        }
        NodeCommand::Handover(h) => {
            tracing::debug!(node = %broker.id, client = %h.client, seq = h.seq, frames = h.frames.len(), "taking over a client's stream");
            broker.hub.take_over(h);
        }
        NodeCommand::Forward(f) => {
            // Passed on by the node the client left: it is expected here whatever this node
            // has seen of the node set yet.
            broker.hub.deliver(
                std::slice::from_ref(&f.client),
                f.envelope.get(),
                |_| true,
                |_, _| {},
            );
            broker
                .metrics
                .delivered(DeliveryKind::Direct, received.elapsed());
        }
    }
}

/// Moves the joins that have taken effect (see [`crate::hub::Hub::join_settled`]) to the
/// acknowledgements that [`run_join_acks`] sends.
fn settle_join_acks(broker: &Broker) {
    let settled = broker
        .work
        .join_acks
        .take_settled(|client, chan| broker.hub.join_settled(client, chan));
    if settled.is_empty() {
        return;
    }
    broker
        .work
        .outgoing
        .push(settled.into_iter().flat_map(|(client, ack)| {
            let key = broker.keys.ack(&ack);
            let mut push = redis::cmd("RPUSH");
            push.arg(&key).arg(client.as_str());
            let mut expire = redis::cmd("PEXPIRE");
            expire.arg(&key).arg(ACK_TTL_MS);
            [push, expire]
        }));
}

/// Sends the node's background commands (receipts for senders on other nodes, join
/// acknowledgements), pipelined in batches on one connection, in the order they were queued,
/// until `stop` turns true.
pub async fn run_publisher(broker: Broker, store: Store, mut stop: watch::Receiver<bool>) {
    const BATCH: usize = 1000;
    loop {
        tokio::select! {
            _ = broker.work.outgoing.wait() => {}
            _ = stop.changed() => return,
        }
        let mut cmds = broker.work.outgoing.take().into_iter().peekable();
        while cmds.peek().is_some() {
            let mut pipe = redis::pipe();
            for cmd in cmds.by_ref().take(BATCH) {
                pipe.add_command(cmd).ignore();
            }
            send(&broker, &store, &pipe).await;
        }
    }
}

/// Sends `pipe` on a pooled connection; a failure is logged and the batch is lost (receipts
/// and acknowledgements are best effort).
async fn send(broker: &Broker, store: &Store, pipe: &redis::Pipeline) {
    let sent = async {
        let mut conn = store.get().await.map_err(|e| e.to_string())?;
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    if let Err(error) = sent.await {
        tracing::warn!(node = %broker.id, %error, "cannot send receipts or join acknowledgements");
    }
}

/// A node announced a change of the live set. One that leaves and hands its clients over is
/// taken out of the set here and now, before any message routed to its winners can be handled
/// (they come after the announcement on this connection): their deliveries are kept until the
/// streams arrive. The follower reads the leases for the rest.
fn announced(broker: &Broker, bytes: &[u8]) {
    let Ok(announcement) = serde_json::from_slice::<NodeAnnouncement>(bytes) else {
        return;
    };
    if let Some(run) = announcement.handing_over
        && !announcement.live
        && broker.nodes.leaving(&broker.id, &announcement.node, run)
    {
        tracing::info!(node = %broker.id, leaving = %announcement.node, "a node is leaving and handing its clients over");
    }
}

fn fanout_body(f: &Fanout<'_>, kind: Kind) -> String {
    envelope_body(&EnvelopeBody {
        id: &f.id,
        kind,
        from: f.from.as_ref(),
        chan: f.chan.as_ref(),
        payload: f.payload,
        ts: f.ts,
    })
}

fn deliver(broker: &Broker, store: &Store, d: &Deliver<'_>, received: Instant) {
    let body = envelope_body(&EnvelopeBody {
        id: &d.id,
        kind: d.kind,
        from: d.from.as_ref(),
        chan: None,
        payload: d.payload,
        ts: d.ts,
    });
    let want_receipts = d.receipt_node.is_some() && d.from.is_some();
    let mut results = Vec::new();
    let expected = |client: &ClientId| broker.nodes.expects_handover(&broker.id, client);
    broker.hub.deliver(&d.to, &body, expected, |client, reach| {
        if want_receipts {
            let status = match reach {
                Reach::Delivered => ReceiptStatus::Delivered,
                Reach::Buffered => ReceiptStatus::Buffered,
                Reach::Offline => ReceiptStatus::Offline,
            };
            results.push(ReceiptResult {
                client: client.clone(),
                status,
            });
        }
    });
    // Before the receipts: they are the sender's business, not the receivers' latency.
    broker
        .metrics
        .delivered(DeliveryKind::Direct, received.elapsed());
    let (Some(receipt_node), Some(sender)) = (&d.receipt_node, &d.from) else {
        return;
    };
    let cmd = NodeCommand::Receipts(Receipts {
        to: sender.clone(),
        message_id: d.id.clone(),
        results,
    });
    let Ok(text) = serde_json::to_string(&cmd) else {
        return;
    };
    if *receipt_node == broker.id {
        // The sender lives here too: no round trip through Redis.
        handle(broker, store, text.as_bytes());
        return;
    }
    // Sent by the publisher task with the others, in order, pipelined: one task per message
    // would pile up under load, as the join acknowledgements did.
    broker
        .work
        .outgoing
        .publish(&broker.keys.node_topic(receipt_node), text);
}

fn receipts(broker: &Broker, r: &Receipts) {
    for result in &r.results {
        let payload = ReceiptPayload {
            message_id: r.message_id.clone(),
            receiver: result.client.clone(),
            status: result.status,
        };
        let Ok(raw) = to_raw_value(&payload) else {
            continue;
        };
        let id = new_message_id();
        let body = envelope_body(&EnvelopeBody {
            id: &id,
            kind: Kind::Receipt,
            from: None,
            chan: None,
            payload: &raw,
            ts: now_ms(),
        });
        broker
            .hub
            .deliver(std::slice::from_ref(&r.to), &body, |_| false, |_, _| {});
    }
}
