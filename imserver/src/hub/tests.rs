//! The hub's behaviour without Redis: the client entry's states and their transitions
//! (including the races a node meets: a delivery during a handover, a resume against a
//! window's expiry, a kick during a hold), delivery and sequence numbers, recovery, the channel
//! index and its subscription log, sweeping under memory pressure. What the hub asks of Redis
//! shows up in its work queues, which the tests read instead.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use imclient::contract::{CloseCode, Handover, RecoveryRefusal};
use imclient::token::ConnectClaims;
use imclient::{ChanName, ClientId, NodeId};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::chans::ChanIndex;
use super::sync_log::SyncLog;
use super::*;
use crate::outbox::Outbox;
use crate::recovery::RecoveryLimits;

fn recovery() -> RecoveryLimits {
    RecoveryLimits {
        window: Duration::from_secs(60),
        max_envelopes: 100,
        max_age: Duration::from_secs(600),
        online_max_age: Duration::from_secs(600),
        client_max_bytes: 1 << 20,
        node_max_bytes: 1 << 30,
    }
}

fn limits() -> HubLimits {
    HubLimits {
        max_per_client: 3,
        max_total: 100,
        queue_capacity: 16,
        recovery: recovery(),
    }
}

/// A hub of the node run "run", with its metrics and work queues.
fn hub_with(limits: HubLimits) -> (Hub, Arc<Metrics>, Arc<HubWork>) {
    let metrics = Arc::new(Metrics::default());
    let work = Arc::new(HubWork::default());
    let hub = Hub::new(limits, "run".into(), metrics.clone(), work.clone());
    hub.set_base_subscribed(true);
    (hub, metrics, work)
}

fn hub() -> (Hub, Arc<Metrics>, Arc<HubWork>) {
    hub_with(limits())
}

fn client(name: &str) -> ClientId {
    ClientId::new(name).expect("client id")
}

fn chan(name: &str) -> ChanName {
    ChanName::new(name).expect("channel name")
}

fn claims(name: &str) -> ConnectClaims {
    ConnectClaims::new(
        client(name),
        NodeId::new("ws://127.0.0.1:1").expect("node id"),
        Value::Null,
        Duration::from_secs(60),
    )
}

/// The welcome as the tests read it: the stream, the last seq and what the resume came to.
fn welcome(info: &WelcomeInfo) -> String {
    serde_json::json!({
        "welcome": info.epoch,
        "seq": info.seq,
        "recovered": info.recovered,
        "reason": info.reason.map(|r| format!("{r:?}")),
    })
    .to_string()
}

fn connect(hub: &Hub, name: &str, since: Option<&str>) -> Registration {
    hub.register(&claims(name), since, welcome)
        .expect("registered")
}

/// Finishes the load of `name`'s channels as if Redis held `stored`.
fn load(hub: &Hub, name: &str, stored: &[&str]) {
    let (entry, generation) = hub.sync_ticket(&client(name)).expect("a load is due");
    hub.finish_sync(&entry, generation, stored.iter().map(|c| chan(c)).collect());
}

/// A connected client whose channels are loaded (none): live.
fn live(hub: &Hub, name: &str) -> Registration {
    let reg = connect(hub, name, None);
    load(hub, name, &[]);
    reg
}

fn body(id: &str) -> String {
    format!(r#"{{"id":"{id}","type":"message","payload":"{id}"}}"#)
}

fn send(hub: &Hub, name: &str, id: &str) -> Reach {
    let mut reach = None;
    hub.deliver(
        &[client(name)],
        &body(id),
        |_| false,
        |_, r| reach = Some(r),
    );
    reach.expect("a result per receiver")
}

/// What the connection has been sent, as JSON, and takes it.
fn frames(outbox: &Outbox) -> Vec<Value> {
    let mut batch = VecDeque::new();
    if !outbox.take_queued(&mut batch) {
        return Vec::new();
    }
    batch
        .iter()
        .map(|f| serde_json::from_slice(f.payload()).expect("JSON frame"))
        .collect()
}

/// (seq, id) of the envelopes among `frames`.
fn envelopes(frames: &[Value]) -> Vec<(u64, String)> {
    frames
        .iter()
        .filter_map(|f| Some((f["seq"].as_u64()?, f["id"].as_str()?.to_owned())))
        .collect()
}

/// The stream a welcome among `frames` names.
fn stream(frames: &[Value]) -> String {
    frames
        .iter()
        .find_map(|f| f["welcome"].as_str())
        .expect("a welcome")
        .to_owned()
}

/// (topic, payload) of every publish the hub queued, and takes them.
fn published(work: &HubWork) -> Vec<(String, Value)> {
    work.outgoing
        .take()
        .iter()
        .filter_map(|cmd| {
            let args: Vec<&[u8]> = cmd
                .args_iter()
                .filter_map(|a| match a {
                    redis::Arg::Simple(b) => Some(b),
                    _ => None,
                })
                .collect();
            let topic = String::from_utf8_lossy(args.get(1)?).into_owned();
            Some((topic, serde_json::from_slice(args.get(2)?).ok()?))
        })
        .collect()
}

// --- The entry's states ---

#[test]
fn a_new_client_is_held_until_its_channels_are_loaded_and_their_topics_subscribed() {
    let (hub, _, work) = hub();
    let reg = connect(&hub, "ann", None);
    assert_eq!(hub.state_of(&client("ann")), Some(State::Held));
    assert_eq!(work.memberships.take(), vec![client("ann")]);
    load(&hub, "ann", &["room"]);
    assert_eq!(
        hub.state_of(&client("ann")),
        Some(State::Held),
        "topic not yet subscribed"
    );
    assert!(frames(&reg.outbox).is_empty(), "no welcome while held");
    hub.topics_subscribed(&[chan("room")]);
    assert_eq!(hub.state_of(&client("ann")), Some(State::Live));
    assert_eq!(frames(&reg.outbox).len(), 1, "the welcome");
}

#[test]
fn a_client_waits_for_the_nodes_own_topics_too() {
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::new(limits(), "run".into(), metrics, Arc::default());
    let reg = connect(&hub, "ann", None);
    load(&hub, "ann", &[]);
    assert_eq!(hub.state_of(&client("ann")), Some(State::Held));
    hub.set_base_subscribed(true);
    assert_eq!(hub.state_of(&client("ann")), Some(State::Live));
    assert_eq!(frames(&reg.outbox).len(), 1);
}

#[test]
fn what_arrives_for_a_held_client_queues_behind_its_welcome() {
    let (hub, _, _) = hub();
    let reg = connect(&hub, "ann", None);
    assert_eq!(send(&hub, "ann", "m1"), Reach::Delivered);
    load(&hub, "ann", &[]);
    let got = frames(&reg.outbox);
    assert!(got[0]["welcome"].is_string(), "welcome first: {got:?}");
    assert_eq!(envelopes(&got), vec![(1, "m1".into())]);
}

#[test]
fn every_connection_gets_each_envelope_with_the_clients_next_sequence_number() {
    let (hub, metrics, _) = hub();
    let phone = live(&hub, "ann");
    let laptop = connect(&hub, "ann", None);
    frames(&phone.outbox);
    frames(&laptop.outbox);
    send(&hub, "ann", "m1");
    send(&hub, "ann", "m2");
    let want = vec![(1, "m1".to_owned()), (2, "m2".to_owned())];
    assert_eq!(envelopes(&frames(&phone.outbox)), want);
    assert_eq!(envelopes(&frames(&laptop.outbox)), want);
    assert_eq!(metrics.deliveries.load(Relaxed), 4);
    assert_eq!(metrics.clients.load(Relaxed), 1);
    assert_eq!(metrics.connections.load(Relaxed), 2);
}

#[test]
fn a_client_not_here_is_reported_offline() {
    let (hub, metrics, _) = hub();
    assert_eq!(send(&hub, "nobody", "m1"), Reach::Offline);
    assert!(metrics.render("n", true).contains("reason=\"offline\"} 1"));
}

#[test]
fn the_last_connection_going_opens_the_recovery_window_and_it_keeps_what_arrives() {
    let (hub, metrics, work) = hub();
    let reg = live(&hub, "ann");
    work.presence.take();
    hub.unregister(&client("ann"), reg.id);
    assert_eq!(hub.state_of(&client("ann")), Some(State::Window));
    assert_eq!(metrics.recovery_windows.load(Relaxed), 1);
    assert_eq!(metrics.clients.load(Relaxed), 0);
    assert_eq!(work.presence.take(), vec![client("ann")]);
    assert_eq!(send(&hub, "ann", "m1"), Reach::Buffered);
    assert!(metrics.recovery_bytes.load(Relaxed) > 0);
    hub.unregister(&client("ann"), reg.id);
    assert_eq!(
        metrics.connections.load(Relaxed),
        0,
        "unregister is idempotent"
    );
}

#[test]
fn a_resume_inside_the_window_replays_what_was_missed_right_after_the_welcome() {
    let (hub, metrics, _) = hub();
    let reg = live(&hub, "ann");
    send(&hub, "ann", "m1");
    let epoch = stream(&frames(&reg.outbox));
    hub.unregister(&client("ann"), reg.id);
    send(&hub, "ann", "m2");
    send(&hub, "ann", "m3");
    let back = connect(&hub, "ann", Some(&format!("{epoch}:1")));
    let got = frames(&back.outbox);
    assert_eq!(got[0]["recovered"], true);
    assert_eq!(envelopes(&got), vec![(2, "m2".into()), (3, "m3".into())]);
    assert_eq!(hub.state_of(&client("ann")), Some(State::Live));
    assert_eq!(metrics.recovery_windows.load(Relaxed), 0);
}

#[test]
fn a_resume_of_another_node_run_is_refused_as_epoch_changed() {
    let (hub, _, _) = hub();
    let reg = connect(&hub, "ann", Some("otherrun-1:4"));
    load(&hub, "ann", &[]);
    let got = frames(&reg.outbox);
    assert_eq!(got[0]["recovered"], false);
    assert_eq!(
        got[0]["reason"],
        format!("{:?}", RecoveryRefusal::EpochChanged)
    );
}

#[test]
fn a_resume_after_the_window_ran_out_is_refused_as_too_old() {
    let (hub, metrics, _) = hub();
    let reg = live(&hub, "ann");
    let epoch = stream(&frames(&reg.outbox));
    hub.unregister(&client("ann"), reg.id);
    let swept = hub.sweep(Instant::now() + recovery().window);
    assert_eq!(swept.expired, 1);
    assert_eq!(hub.state_of(&client("ann")), None);
    assert_eq!(metrics.recovery_windows.load(Relaxed), 0);
    let back = connect(&hub, "ann", Some(&format!("{epoch}:0")));
    load(&hub, "ann", &[]);
    let got = frames(&back.outbox);
    assert_eq!(got[0]["recovered"], false);
    assert_eq!(got[0]["reason"], format!("{:?}", RecoveryRefusal::TooOld));
    assert_ne!(stream(&got), epoch, "a new entry starts a new stream");
}

#[test]
fn a_resume_that_beats_the_windows_expiry_keeps_the_client() {
    let (hub, _, _) = hub();
    let reg = live(&hub, "ann");
    send(&hub, "ann", "m1");
    let epoch = stream(&frames(&reg.outbox));
    hub.unregister(&client("ann"), reg.id);
    let back = connect(&hub, "ann", Some(&format!("{epoch}:1")));
    // The sweep that would have ended the window comes just after the client came back.
    let swept = hub.sweep(Instant::now() + recovery().window);
    assert_eq!(swept, Swept::default());
    assert_eq!(hub.state_of(&client("ann")), Some(State::Live));
    send(&hub, "ann", "m2");
    assert_eq!(envelopes(&frames(&back.outbox)), vec![(2, "m2".into())]);
}

#[test]
fn a_resume_from_before_a_lost_subscription_is_refused_even_with_the_buffer_whole() {
    let (hub, _, _) = hub();
    let reg = live(&hub, "ann");
    send(&hub, "ann", "m1");
    let epoch = stream(&frames(&reg.outbox));
    hub.mark_missed(r#"{"type":"system","payload":{"type":"missed"}}"#);
    assert_eq!(frames(&reg.outbox)[0]["type"], "system", "told at once");
    send(&hub, "ann", "m2");
    hub.unregister(&client("ann"), reg.id);
    let again = connect(&hub, "ann", Some(&format!("{epoch}:0")));
    let got = frames(&again.outbox);
    assert_eq!(
        got[0]["reason"],
        format!("{:?}", RecoveryRefusal::RedisOutage)
    );
    // Seen up to 1 when the subscription was lost: what came after may be missing.
    let seen_one = connect(&hub, "ann", Some(&format!("{epoch}:1")));
    assert_eq!(frames(&seen_one.outbox)[0]["recovered"], false);
    hub.unregister(&client("ann"), again.id);
    let later = connect(&hub, "ann", Some(&format!("{epoch}:2")));
    assert_eq!(
        frames(&later.outbox)[0]["recovered"],
        true,
        "after the outage is fine"
    );
}

#[test]
fn a_kicked_client_is_closed_and_gets_no_window() {
    let (hub, metrics, _) = hub();
    let reg = live(&hub, "ann");
    assert_eq!(hub.kick(&client("ann"), CloseCode::Kicked), 1);
    assert_eq!(reg.outbox.close_requested(), Some(CloseCode::Kicked));
    hub.unregister(&client("ann"), reg.id);
    assert_eq!(hub.state_of(&client("ann")), None);
    assert_eq!(metrics.recovery_windows.load(Relaxed), 0);
}

#[test]
fn a_kick_inside_the_window_ends_it() {
    let (hub, metrics, _) = hub();
    let reg = live(&hub, "ann");
    hub.unregister(&client("ann"), reg.id);
    assert_eq!(hub.kick(&client("ann"), CloseCode::Kicked), 0);
    assert_eq!(hub.state_of(&client("ann")), None);
    assert_eq!(metrics.recovery_windows.load(Relaxed), 0);
}

#[test]
fn a_kick_during_a_hold_closes_without_ever_sending_the_welcome() {
    let (hub, _, _) = hub();
    let reg = connect(&hub, "ann", None);
    send(&hub, "ann", "m1");
    hub.kick(&client("ann"), CloseCode::Kicked);
    assert_eq!(reg.outbox.close_requested(), Some(CloseCode::Kicked));
    hub.unregister(&client("ann"), reg.id);
    assert_eq!(hub.state_of(&client("ann")), None, "never ready: no window");
    assert!(reg.outbox.shut().is_empty(), "nothing was let out");
    assert!(
        hub.sync_ticket(&client("ann")).is_none(),
        "its load is void"
    );
}

#[test]
fn without_recovery_the_client_leaves_with_its_last_connection() {
    let mut limits = limits();
    limits.recovery.window = Duration::ZERO;
    let (hub, metrics, _) = hub_with(limits);
    let reg = live(&hub, "ann");
    hub.apply(&client("ann"), ChanOp::Join(chan("room")));
    hub.unregister(&client("ann"), reg.id);
    assert_eq!(hub.state_of(&client("ann")), None);
    assert_eq!(
        hub.chan_count(&chan("room")),
        0,
        "its memberships went with it"
    );
    assert_eq!(send(&hub, "ann", "m1"), Reach::Offline);
    assert_eq!(metrics.recovery_bytes.load(Relaxed), 0);
}

#[test]
fn a_full_queue_closes_the_connection_as_a_slow_consumer() {
    let mut limits = limits();
    limits.queue_capacity = 2;
    let (hub, metrics, _) = hub_with(limits);
    let reg = live(&hub, "ann");
    for id in ["m1", "m2", "m3", "m4"] {
        send(&hub, "ann", id);
    }
    assert_eq!(reg.outbox.close_requested(), Some(CloseCode::SlowConsumer));
    assert!(
        metrics
            .render("n", true)
            .contains("reason=\"queue_full\"} 2")
    );
}

#[test]
fn connections_past_the_client_or_node_limit_are_refused() {
    let mut limits = limits();
    limits.max_total = 4;
    let (hub, _, _) = hub_with(limits);
    let _ann: Vec<_> = (0..3).map(|_| connect(&hub, "ann", None)).collect();
    let refused = hub.register(&claims("ann"), None, welcome).map(|_| ());
    assert_eq!(refused, Err(Refusal::ClientLimit(3)));
    let _bob = connect(&hub, "bob", None);
    let refused = hub.register(&claims("cy"), None, welcome).map(|_| ());
    assert_eq!(refused, Err(Refusal::NodeLimit(4)));
    assert_eq!(hub.state_of(&client("cy")), None);
    assert_eq!(hub.connections(), 4);
}

#[test]
fn shutdown_waits_for_the_last_session() {
    let (hub, _, _) = hub();
    let reg = live(&hub, "ann");
    assert_eq!(hub.session_tasks(), 1);
    hub.close_all(CloseCode::GoingAway);
    assert_eq!(reg.outbox.close_requested(), Some(CloseCode::GoingAway));
    drop(reg);
    assert_eq!(hub.session_tasks(), 0);
}

#[test]
fn presence_says_online_only_once_the_client_is_ready() {
    let (hub, _, _) = hub();
    let reg = connect(&hub, "ann", None);
    assert!(hub.presence_of(&client("ann")).is_none());
    load(&hub, "ann", &[]);
    assert_eq!(hub.presence_of(&client("ann")).map(|p| p.conns), Some(1));
    hub.unregister(&client("ann"), reg.id);
    assert!(
        hub.presence_of(&client("ann")).is_none(),
        "inside its window: offline"
    );
}

// --- Moves between nodes ---

/// The handover command `old` sent for `name`, and the forwards after it.
fn handover_of(work: &HubWork) -> (Handover, Vec<Value>) {
    let mut sent = published(work).into_iter();
    let (topic, first) = sent.next().expect("a handover was published");
    assert_eq!(topic, "home-topic");
    let handover: Handover =
        serde_json::from_value(first["handover"].clone()).expect("a handover command");
    (handover, sent.map(|(_, v)| v).collect())
}

#[test]
fn a_handed_over_client_is_closed_with_4003_and_what_arrives_is_passed_on() {
    let (old, metrics, work) = hub();
    let reg = live(&old, "ann");
    send(&old, "ann", "m1");
    send(&old, "ann", "m2");
    assert!(old.hand_over(&client("ann"), "home-topic".into()));
    assert!(!old.hand_over(&client("ann"), "home-topic".into()), "once");
    assert_eq!(reg.outbox.close_requested(), Some(CloseCode::Moved));
    assert_eq!(old.state_of(&client("ann")), Some(State::Forwarding));
    assert_eq!(send(&old, "ann", "m3"), Reach::Buffered);
    let (handover, forwards) = handover_of(&work);
    assert_eq!(
        (handover.seq, handover.first, handover.frames.len()),
        (2, 1, 2)
    );
    assert_eq!(forwards.len(), 1);
    assert_eq!(forwards[0]["forward"]["envelope"]["id"], "m3");
    assert_eq!(
        metrics.recovery_bytes.load(Relaxed),
        0,
        "the buffer went with it"
    );
    assert_eq!(metrics.forwarded.load(Relaxed), 1);
    // Its connection ends; the entry stays, forwarding, until the sweeper ends it.
    old.unregister(&client("ann"), reg.id);
    assert_eq!(old.state_of(&client("ann")), Some(State::Forwarding));
    old.sweep(Instant::now() + FORWARD_FOR + Duration::from_secs(1));
    assert_eq!(old.state_of(&client("ann")), None);
}

#[test]
fn a_delivery_racing_a_handover_reaches_the_new_home_once_and_in_order() {
    let (old, _, old_work) = hub();
    let reg = live(&old, "ann");
    send(&old, "ann", "m1");
    send(&old, "ann", "m2");
    let epoch = stream(&frames(&reg.outbox));
    old.hand_over(&client("ann"), "home-topic".into());
    // m3 reaches the old node after the handover (passed on) and the new home directly,
    // before the stream does.
    send(&old, "ann", "m3");
    let (handover, forwards) = handover_of(&old_work);

    let (new, _, _) = hub();
    let mut reach = None;
    new.deliver(
        &[client("ann")],
        &body("m3"),
        |_| true,
        |_, r| reach = Some(r),
    );
    assert_eq!(reach, Some(Reach::Buffered));
    assert_eq!(new.state_of(&client("ann")), Some(State::AwaitingStream));
    new.take_over(handover);
    let forwarded = forwards[0]["forward"]["envelope"].to_string();
    new.deliver(&[client("ann")], &forwarded, |_| true, |_, _| {});

    let back = connect(&new, "ann", Some(&format!("{epoch}:0")));
    load(&new, "ann", &[]);
    let got = frames(&back.outbox);
    assert_eq!(stream(&got), epoch, "the stream moved with the client");
    assert_eq!(got[0]["recovered"], true);
    assert_eq!(
        envelopes(&got),
        vec![(1, "m1".into()), (2, "m2".into()), (3, "m3".into())]
    );
}

#[test]
fn a_client_that_connected_afresh_at_its_new_home_keeps_its_own_stream() {
    let (new, _, _) = hub();
    let reg = live(&new, "ann");
    let own = stream(&frames(&reg.outbox));
    new.take_over(Handover {
        client: client("ann"),
        stream: "oldrun-7".into(),
        seq: 5,
        first: 5,
        frames: vec![RawValue::from_string(r#"{"seq":5,"id":"m5"}"#.into()).expect("raw")],
    });
    send(&new, "ann", "m1");
    assert_eq!(envelopes(&frames(&reg.outbox)), vec![(1, "m1".into())]);
    let again = connect(&new, "ann", Some(&format!("{own}:1")));
    assert_eq!(frames(&again.outbox)[0]["recovered"], true);
}

#[test]
fn a_client_handed_away_that_comes_back_before_forwarding_ends_is_served_here_again() {
    let (hub, _, work) = hub();
    let reg = live(&hub, "ann");
    hub.hand_over(&client("ann"), "home-topic".into());
    hub.unregister(&client("ann"), reg.id);
    let back = connect(&hub, "ann", None);
    published(&work);
    assert_eq!(send(&hub, "ann", "m1"), Reach::Delivered);
    assert!(published(&work).is_empty(), "pushed here, not passed on");
    assert_eq!(envelopes(&frames(&back.outbox)), vec![(1, "m1".into())]);
}

#[tokio::test]
async fn a_connection_waiting_for_its_stream_hears_of_the_handover() {
    let (hub, _, _) = hub();
    let hub = Arc::new(hub);
    let waiting = {
        let hub = hub.clone();
        tokio::spawn(async move {
            hub.await_stream(&client("ann"), "oldrun-1", Duration::from_secs(10))
                .await
        })
    };
    tokio::task::yield_now().await;
    hub.take_over(Handover {
        client: client("ann"),
        stream: "oldrun-1".into(),
        seq: 0,
        first: 1,
        frames: Vec::new(),
    });
    assert!(waiting.await.expect("joined"));
    assert!(
        !hub.await_stream(&client("bob"), "x", Duration::from_millis(1))
            .await
    );
}

// --- Sweeping and memory ---

#[test]
fn under_memory_pressure_the_oldest_windows_end_first() {
    let mut limits = limits();
    limits.recovery.node_max_bytes = 1;
    let (hub, metrics, _) = hub_with(limits);
    let start = Instant::now();
    for name in ["old", "young"] {
        let reg = live(&hub, name);
        send(&hub, name, "m1");
        hub.unregister(&client(name), reg.id);
    }
    let swept = hub.sweep(start);
    assert_eq!(swept.evicted, 2, "both, oldest first, while over the bound");
    assert_eq!(metrics.recovery_bytes.load(Relaxed), 0);
    assert_eq!(metrics.recovery_windows.load(Relaxed), 0);
}

#[test]
fn online_buffers_are_halved_as_a_last_resort() {
    let mut limits = limits();
    limits.recovery.node_max_bytes = 1;
    let (hub, _, _) = hub_with(limits);
    let reg = live(&hub, "ann");
    for id in ["m1", "m2", "m3", "m4"] {
        send(&hub, "ann", id);
    }
    let swept = hub.sweep(Instant::now());
    assert!(swept.trimmed >= 1);
    assert_eq!(
        hub.state_of(&client("ann")),
        Some(State::Live),
        "still connected"
    );
    drop(reg);
}

#[test]
fn envelopes_past_their_age_are_trimmed() {
    let (hub, metrics, _) = hub();
    let _reg = live(&hub, "ann");
    send(&hub, "ann", "m1");
    assert!(metrics.recovery_bytes.load(Relaxed) > 0);
    hub.sweep(Instant::now() + recovery().max_age + Duration::from_secs(1));
    assert_eq!(metrics.recovery_bytes.load(Relaxed), 0);
}

// --- Channels ---

#[test]
fn a_channel_topic_is_wanted_with_its_first_member_and_dropped_with_its_last() {
    let (hub, _, work) = hub();
    let _ann = live(&hub, "ann");
    let _bob = live(&hub, "bob");
    work.topics.take();
    hub.apply(&client("ann"), ChanOp::Join(chan("room")));
    assert_eq!(work.topics.take(), vec![chan("room")]);
    hub.apply(&client("bob"), ChanOp::Join(chan("room")));
    assert!(work.topics.take().is_empty(), "not for the second member");
    assert_eq!(hub.chan_count(&chan("room")), 2);
    hub.apply(&client("ann"), ChanOp::Leave(chan("room")));
    hub.apply(&client("bob"), ChanOp::Leave(chan("room")));
    assert_eq!(work.topics.take(), vec![chan("room")]);
    assert_eq!(hub.chans(), Vec::<ChanName>::new());
}

#[test]
fn a_join_settles_once_the_topic_is_subscribed() {
    let (hub, _, _) = hub();
    let _ann = live(&hub, "ann");
    hub.apply(&client("ann"), ChanOp::Join(chan("room")));
    assert!(!hub.join_settled(&client("ann"), &chan("room")));
    hub.topics_subscribed(&[chan("room")]);
    assert!(hub.join_settled(&client("ann"), &chan("room")));
    hub.topics_unsubscribing(&[chan("room")]);
    assert!(!hub.join_settled(&client("ann"), &chan("room")));
    assert!(hub.join_settled(&client("nobody"), &chan("room")));
}

#[test]
fn changes_that_arrive_during_a_load_are_replayed_on_top_of_what_it_read() {
    let (hub, _, _) = hub();
    let _reg = connect(&hub, "ann", None);
    hub.apply(&client("ann"), ChanOp::Join(chan("new")));
    hub.apply(&client("ann"), ChanOp::Leave(chan("gone")));
    load(&hub, "ann", &["kept", "gone"]);
    let mut chans = hub.client_chans(&client("ann"));
    chans.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(chans, vec![chan("kept"), chan("new")]);
}

#[test]
fn a_load_older_than_the_latest_is_ignored() {
    let (hub, _, _) = hub();
    let _reg = live(&hub, "ann");
    hub.resync_client(&client("ann"));
    let (entry, stale) = hub.sync_ticket(&client("ann")).expect("due");
    hub.resync_client(&client("ann"));
    hub.finish_sync(&entry, stale, vec![chan("stale")]);
    assert!(hub.client_chans(&client("ann")).is_empty());
    load(&hub, "ann", &["fresh"]);
    assert_eq!(hub.client_chans(&client("ann")), vec![chan("fresh")]);
}

#[test]
fn a_deleted_channel_is_dropped_for_every_local_member() {
    let (hub, _, work) = hub();
    let _ann = live(&hub, "ann");
    hub.apply(&client("ann"), ChanOp::Join(chan("room")));
    work.topics.take();
    hub.chan_deleted(&chan("room"));
    assert!(hub.client_chans(&client("ann")).is_empty());
    assert_eq!(hub.chan_count(&chan("room")), 0);
    assert_eq!(work.topics.take(), vec![chan("room")]);
}

#[test]
fn a_channel_message_reaches_every_local_member_but_the_sender() {
    let (hub, metrics, _) = hub();
    let ann = live(&hub, "ann");
    let bob = live(&hub, "bob");
    let cy = live(&hub, "cy");
    hub.unregister(&client("cy"), cy.id);
    for name in ["ann", "bob", "cy"] {
        hub.apply(&client(name), ChanOp::Join(chan("room")));
    }
    frames(&ann.outbox);
    frames(&bob.outbox);
    let reached = hub.fanout_chan(&chan("room"), &body("c1"), Some(&client("ann")));
    assert_eq!(reached, 1, "bob; cy's window keeps it; ann sent it");
    assert!(frames(&ann.outbox).is_empty());
    assert_eq!(envelopes(&frames(&bob.outbox)), vec![(1, "c1".into())]);
    assert_eq!(hub.chan_online(&chan("room")), 2);
    assert_eq!(metrics.chan_deliveries.load(Relaxed), 1);
    assert_eq!(hub.broadcast(&body("b1"), None), 2);
}

#[test]
fn a_sync_log_records_only_while_a_load_runs() {
    let mut log = SyncLog::loading();
    log.record(&ChanOp::Join(chan("a")));
    let target = log.finish(1, vec![chan("b")]).expect("the latest load");
    assert_eq!(target, HashSet::from([chan("a"), chan("b")]));
    assert!(!log.loading_now());
    log.record(&ChanOp::Join(chan("c")));
    assert!(log.finish(1, Vec::new()).is_none(), "no load under way");
    log.begin();
    assert_eq!(log.ticket(), Some(2));
}

#[test]
fn the_channel_index_removes_only_the_entry_it_was_given() {
    let index = ChanIndex::new();
    let old = Arc::new(ClientEntry::new(
        client("ann"),
        "s-1".into(),
        Value::Null,
        None,
    ));
    let new = Arc::new(ClientEntry::new(
        client("ann"),
        "s-2".into(),
        Value::Null,
        None,
    ));
    assert!(index.add(&chan("room"), &old));
    assert!(!index.add(&chan("room"), &new), "same client, replaced");
    assert_eq!(
        index.remove(&chan("room"), &old),
        Some(false),
        "not the entry indexed"
    );
    assert_eq!(index.count(&chan("room")), 1);
    assert_eq!(index.remove(&chan("room"), &new), Some(true));
    assert_eq!(index.remove(&chan("room"), &new), None);
}
