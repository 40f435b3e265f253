//! Pushing private messages: to one client, across nodes, to several connections, receipts,
//! and malformed commands in Redis.

use std::collections::HashSet;

use anyhow::Result;
use imclient::contract::{Kind, ReceiptPayload, ReceiptStatus};
use imtestkit::{Cluster, NodeOpts, WAIT};
use serde_json::json;

#[tokio::test]
async fn push_to_one_client() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let mut bob = c.connect("bob").await?;
    assert_eq!(bob.welcome.payload["client"], "bob");

    let report =
        c.im.send_message("alice", ["bob"], &json!({"text": "hi"}), false)
            .await?;
    assert_eq!(report.nodes.len(), 1);
    assert!(report.nodes[0].taken);

    let env = bob.next_message().await?;
    assert_eq!(env.kind, Kind::Message);
    assert_eq!(env.payload, json!({"text": "hi"}));
    assert_eq!(env.from.as_ref().map(|f| f.as_str()), Some("alice"));
    assert_eq!(env.id.as_deref(), Some(report.message_id.as_str()));
    assert_eq!(env.seq, Some(1));

    c.im.send_message("alice", ["bob"], &"second", false)
        .await?;
    let env = bob.next_message().await?;
    assert_eq!(env.payload, json!("second"));
    assert_eq!(env.seq, Some(2), "sequence numbers increase per client");
    Ok(())
}

#[tokio::test]
async fn one_call_reaches_clients_on_two_nodes_with_one_publish_per_node() -> Result<()> {
    let c = Cluster::start(2, NodeOpts::default()).await?;
    let names = [
        c.client_on(0, "a"),
        c.client_on(0, "b"),
        c.client_on(1, "c"),
        c.client_on(1, "d"),
    ];
    let mut sockets = Vec::new();
    for n in &names {
        sockets.push(c.connect(n).await?);
    }
    let before = c.redis.publish_calls().await?;

    let report =
        c.im.send_message("server", &names, &json!({"n": 1}), false)
            .await?;
    assert_eq!(report.nodes.len(), 2, "grouped by home node");
    assert!(
        report
            .nodes
            .iter()
            .all(|n| n.taken && n.receivers.len() == 2)
    );
    assert_eq!(
        c.redis.publish_calls().await? - before,
        2,
        "one PUBLISH per node, not per receiver"
    );

    for ws in &mut sockets {
        let env = ws.next_message().await?;
        assert_eq!(env.payload, json!({"n": 1}));
        assert_eq!(env.id.as_deref(), Some(report.message_id.as_str()));
    }
    Ok(())
}

#[tokio::test]
async fn a_client_with_two_connections_receives_on_both() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let mut phone = c.connect("carol").await?;
    let mut laptop = c.connect("carol").await?;
    c.im.send_message("dave", ["carol"], &"to both", false)
        .await?;
    let (a, b) = (phone.next_message().await?, laptop.next_message().await?);
    assert_eq!(a.payload, json!("to both"));
    assert_eq!(a, b, "both connections get the same envelope, same seq");
    Ok(())
}

#[tokio::test]
async fn receipts_say_delivered_or_offline_per_receiver() -> Result<()> {
    let c = Cluster::start(2, NodeOpts::default()).await?;
    let sender = c.client_on(0, "sender");
    let online = c.client_on(1, "online");
    let offline_same_node = c.client_on(1, "offline");
    let mut s = c.connect(&sender).await?;
    let mut r = c.connect(&online).await?;

    let report =
        c.im.send_message(&sender, [&online, &offline_same_node], &"ping", true)
            .await?;
    assert_eq!(r.next_message().await?.payload, json!("ping"));

    let mut got = HashSet::new();
    for _ in 0..2 {
        let env = s.next_message().await?;
        assert_eq!(env.kind, Kind::Receipt);
        let receipt: ReceiptPayload = serde_json::from_value(env.payload)?;
        assert_eq!(receipt.message_id, report.message_id);
        got.insert((receipt.receiver.to_string(), receipt.status));
    }
    let want = HashSet::from([
        (online, ReceiptStatus::Delivered),
        (offline_same_node, ReceiptStatus::Offline),
    ]);
    assert_eq!(got, want);
    Ok(())
}

#[tokio::test]
async fn receivers_on_a_node_that_is_down_get_offline_receipts() -> Result<()> {
    let mut c = Cluster::start(2, NodeOpts::default()).await?;
    let sender = c.client_on(0, "s");
    let stranded = c.client_on(1, "x");
    let mut s = c.connect(&sender).await?;
    c.nodes[1].signal("KILL");
    c.nodes[1].wait_exit(WAIT).await.ok();

    let report =
        c.im.send_message(&sender, [&stranded], &"anyone?", true)
            .await?;
    assert_eq!(
        report.unreachable().map(|c| c.as_str()).collect::<Vec<_>>(),
        vec![stranded.as_str()]
    );
    let receipt: ReceiptPayload = serde_json::from_value(s.next_message().await?.payload)?;
    assert_eq!(receipt.status, ReceiptStatus::Offline);
    Ok(())
}

#[tokio::test]
async fn malformed_commands_in_redis_are_counted_and_skipped() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let mut bob = c.connect("bob").await?;
    let topic = c.im.keys().node_topic(&c.im.home_node("bob")?);
    for garbage in [
        "not json",
        r#"{"deliver":{"id":1}}"#,
        r#"{"explode":{}}"#,
        "",
        // Envelopes passed on between nodes: only what a node writes is pushed.
        r#"{"forward":{"client":"bob","envelope":{}}}"#,
        r#"{"forward":{"client":"bob","envelope":[1,2]}}"#,
        r#"{"handover":{"client":"bob","stream":"x-1","seq":1,"first":1,"frames":[{"a":1}]}}"#,
    ] {
        c.redis.publish(&topic, garbage).await?;
    }
    // Not UTF-8: in a field the node reads, and in the payload it passes on unread.
    let not_utf8: [&[u8]; 2] = [
        b"{\"kick\":{\"client\":\"b\xffob\"}}",
        b"{\"deliver\":{\"id\":\"m1\",\"kind\":\"message\",\"to\":[\"bob\"],\"ts\":1,\"payload\":\"\xc3(\"}}",
    ];
    for garbage in not_utf8 {
        c.redis.publish(&topic, garbage).await?;
    }
    c.nodes[0].wait_metric("im_drops_total{node=\"", 0).await?;
    let malformed = format!(
        "im_drops_total{{node=\"{}\",reason=\"malformed\"}}",
        c.nodes[0].id
    );
    c.nodes[0].wait_metric(&malformed, 9).await?;

    c.im.send_message("alice", ["bob"], &"still works", false)
        .await?;
    // The first frame bob gets is the real message, numbered right after his welcome.
    let env = bob.next_message().await?;
    assert_eq!(env.payload, json!("still works"));
    assert_eq!(env.seq, Some(bob.welcome_seq() + 1));
    Ok(())
}

/// Both thread layouts deliver: sessions on the session runtime (the default) and, with
/// `--session-threads 0`, on the HTTP worker that accepted them.
#[tokio::test]
async fn both_session_layouts_deliver_in_order() -> Result<()> {
    for threads in [1, 0] {
        let c = Cluster::start(1, NodeOpts::default().arg("--session-threads", threads)).await?;
        let mut bob = c.connect("bob").await?;
        for n in 1..=3 {
            c.im.send_message("alice", ["bob"], &n, false).await?;
        }
        for n in 1..=3 {
            let env = bob.next_message().await?;
            assert_eq!(env.payload, json!(n), "session threads {threads}");
            assert_eq!(env.seq, Some(n));
        }
    }
    Ok(())
}

/// A retried send under the caller's id reaches the client with that id both times, which is
/// what lets the client drop the second copy (its de-duplication is by id).
#[tokio::test]
async fn a_send_under_the_callers_id_carries_it_on_every_attempt() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let mut bob = c.connect("bob").await?;
    let id = imclient::new_message_id();
    for _ in 0..2 {
        let report =
            c.im.send_message_with_id(&id, "alice", ["bob"], &"once", false)
                .await?;
        assert_eq!(report.message_id, id);
        let env = bob.next_message().await?;
        assert_eq!(env.id.as_deref(), Some(id.as_str()));
    }
    c.im.join_chan("bob", "room:ids").await?;
    let report =
        c.im.send_chan_message_with_id(&id, "alice", "room:ids", &"in a room", false)
            .await?;
    assert_eq!(report.message_id, id);
    let env = bob.next_message().await?;
    assert_eq!(env.id.as_deref(), Some(id.as_str()));
    assert_eq!(env.payload, json!("in a room"));
    for bad in ["", "has space", "quote\"", &"x".repeat(65)] {
        let err =
            c.im.send_message_with_id(bad, "alice", ["bob"], &1, false)
                .await
                .unwrap_err();
        assert!(
            matches!(err, imclient::Error::InvalidMessageId(_)),
            "{bad:?}: {err}"
        );
    }
    Ok(())
}
