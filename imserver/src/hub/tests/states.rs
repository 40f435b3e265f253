//! The entry's states and their transitions: held, live, window, gone; resumes, kicks, limits.

use super::*;

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

/// Every client on the node has an entry, moving between nodes or not: it must stay within
/// jemalloc's 320-byte class (with the `Arc`'s two counts), where it was in the 384-byte one
/// while the move's state was inline.
#[test]
fn an_entry_fits_the_allocators_320_byte_class() {
    let size = std::mem::size_of::<ClientEntry>() + 2 * std::mem::size_of::<usize>();
    assert!(size <= 320, "an entry takes {size} bytes with its counts");
}
