//! The channel index, the subscription log, joins, loads and fan-out.

use super::super::chans::ChanIndex;
use super::super::sync_log::SyncLog;
use super::*;

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
