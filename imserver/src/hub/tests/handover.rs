//! Moves between nodes: handing a client over, forwarding, taking a stream over.

use super::*;

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

#[test]
fn a_handed_over_client_stops_counting_online_in_its_channels_when_its_connection_ends() {
    let (old, _, work) = hub();
    let reg = connect(&old, "ann", None);
    load(&old, "ann", &["room"]);
    assert_eq!(old.chan_online(&chan("room")), 1);
    old.hand_over(&client("ann"), "home-topic".into());
    let _ = work.chan_counts.take();
    old.unregister(&client("ann"), reg.id);
    assert_eq!(old.state_of(&client("ann")), Some(State::Forwarding));
    assert_eq!(old.chan_online(&chan("room")), 0);
    assert_eq!(
        work.chan_counts.take(),
        vec![chan("room")],
        "the count is written again now, not when the forwarding ends"
    );
}

#[test]
fn a_client_registered_after_its_home_came_back_is_moved_there_by_its_handshake() {
    use crate::nodeset::NodeSet;
    use crate::tasks::follower::move_if_elsewhere;
    use imclient::NodeId;
    use imclient::keys::Keys;

    let node = |addr: &str| NodeId::new(addr).expect("node id");
    let (here, back) = (node("ws://127.0.0.1:1"), node("ws://127.0.0.1:2"));
    let nodes = NodeSet::new(vec![here.clone(), back.clone()]);
    let keys = Keys::new("im");
    // A client whose home is `back` while both are live.
    let name = (0..)
        .map(|i| format!("c{i}"))
        .find(|c| imclient::node::home_node(&[here.clone(), back.clone()], c) == Some(&back))
        .expect("some client is homed there");
    nodes.set_live(&here, vec![(here.clone(), None)]);
    let admitted_at = nodes.changes();
    assert!(
        nodes.owns(&here, &client(&name)),
        "admitted here while its home was down"
    );
    // Its home comes back after the admission, and the follower's pass over the clients
    // comes before the registration (it finds nobody to move).
    assert!(nodes.set_live(
        &here,
        vec![(here.clone(), None), (back.clone(), Some("run".into()))]
    ));
    let (hub, _, work) = hub();
    let reg = live(&hub, &name);
    assert_ne!(
        nodes.changes(),
        admitted_at,
        "the handshake sees the set changed"
    );
    assert!(move_if_elsewhere(
        &here,
        &nodes,
        &hub,
        &keys,
        &client(&name)
    ));
    assert_eq!(reg.outbox.close_requested(), Some(CloseCode::Moved));
    let (topic, command) = published(&work).into_iter().next().expect("a handover");
    assert_eq!(topic, keys.node_topic(&back));
    assert!(command.get("handover").is_some());
    // A client this node owns stays.
    let mine = (0..)
        .map(|i| format!("m{i}"))
        .find(|c| imclient::node::home_node(&[here.clone(), back.clone()], c) == Some(&here))
        .expect("some client is homed here");
    let stays = live(&hub, &mine);
    assert!(!move_if_elsewhere(
        &here,
        &nodes,
        &hub,
        &keys,
        &client(&mine)
    ));
    assert_eq!(stays.outbox.close_requested(), None);
}
