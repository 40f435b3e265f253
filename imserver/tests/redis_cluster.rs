//! Nodes and imclient on a Redis Cluster: the message traffic spreads over the shards, and a
//! master failing over under a node costs no socket and loses nothing silently.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use anyhow::Result;
use imtestkit::redis_cluster::RedisCluster;
use imtestkit::{Cluster, Frame, NodeOpts, Redis, WAIT, wait_for};
use serde_json::json;

/// SPUBLISH calls per master.
async fn spublish_calls(redis: &Redis, ports: &[u16]) -> Result<Vec<u64>> {
    let mut calls = Vec::new();
    for port in ports {
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))?
            .get_multiplexed_async_connection()
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await?;
        calls.push(
            info.lines()
                .find(|l| l.starts_with("cmdstat_spublish:"))
                .and_then(|l| l.split("calls=").nth(1))
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        );
    }
    let _ = redis;
    Ok(calls)
}

#[tokio::test]
async fn channel_and_node_topics_spread_over_the_shards() -> Result<()> {
    let c = Cluster::start_on(Redis::start_cluster()?, 2, NodeOpts::default()).await?;
    let masters = c.redis.cluster.as_ref().unwrap().master_ports()?;
    assert_eq!(masters.len(), 3);
    let (a, b) = (c.client_on(0, "a"), c.client_on(1, "b"));
    let mut wa = c.connect(&a).await?;
    let mut wb = c.connect(&b).await?;
    let chans: Vec<String> = (0..12).map(|i| format!("room{i}")).collect();
    for chan in &chans {
        c.im.join_chan_many([&a, &b], chan).await?;
    }
    let before = spublish_calls(&c.redis, &masters).await?;
    for chan in &chans {
        let report = c.im.send_chan_message("s", chan, &chan, false).await?;
        assert_eq!(report.nodes, 2, "both nodes hold {chan}'s topic");
    }
    c.im.send_message("s", [&a, &b], &"private", false).await?;
    // Topics on different masters keep no order between them: compare as sets.
    let mut want: Vec<serde_json::Value> = chans.iter().map(|c| json!(c)).collect();
    want.push(json!("private"));
    want.sort_by_key(|v| v.to_string());
    for ws in [&mut wa, &mut wb] {
        let mut got = Vec::new();
        for _ in 0..want.len() {
            got.push(ws.next_message().await?.payload);
        }
        got.sort_by_key(|v| v.to_string());
        assert_eq!(got, want);
    }
    let after = spublish_calls(&c.redis, &masters).await?;
    let busy = before.iter().zip(&after).filter(|(b, a)| a > b).count();
    assert_eq!(
        busy, 3,
        "every master carried part of the traffic: {before:?} → {after:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_master_failover_keeps_sockets_open_and_tells_clients_what_they_may_have_missed()
-> Result<()> {
    let mut c = Cluster::start_on(Redis::start_cluster()?, 1, NodeOpts::default()).await?;
    let mut wa = c.connect("alice").await?;
    c.im.send_message("x", ["alice"], &"before", false).await?;
    assert_eq!(wa.next_message().await?.payload, json!("before"));

    // The master that serves the node's own topic fails; its replica takes over.
    let topic = c.im.keys().node_topic(&c.im.home_node("alice")?);
    let slot = RedisCluster::slot_of(&topic);
    c.redis
        .cluster
        .as_mut()
        .unwrap()
        .kill_master_of_slot(slot)?;

    // Sends fail loudly or are not taken until the node has subscribed again; then the message
    // arrives, after the node has told the client that something may be missing.
    wait_for("deliveries resume", WAIT, || async {
        let report = c.im.send_message("x", ["alice"], &"after", false).await;
        report.ok()?.nodes.iter().all(|n| n.taken).then_some(())
    })
    .await?;
    let (mut missed, mut after) = (false, false);
    while !(missed && after) {
        match wa.read(WAIT).await? {
            Frame::Envelope(env) if env.payload == json!("after") => after = true,
            Frame::Envelope(env) if env.payload["event"] == "missed" => {
                assert_eq!(env.payload["reason"], "redis_outage", "{env:?}");
                missed = true;
            }
            other => panic!("expected `missed` and the message, got {other:?}"),
        }
    }
    c.nodes[0]
        .wait_metric("im_redis_reconnects_total", 1)
        .await?;
    // Presence still answers through the new master.
    wait_for("presence readable", WAIT, || async {
        c.im.has_online("alice").await.ok()?.then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_join_that_arrives_after_a_newer_leave_is_undone_from_the_durable_sets() -> Result<()> {
    // On a cluster a join's control message is published after its script: a join and a leave
    // of one client racing from two backends may reach the node in the other order. Here the
    // late join is played by hand, after the client has left for good.
    let c = Cluster::start_on(Redis::start_cluster()?, 1, NodeOpts::default()).await?;
    let mut wa = c.connect("alice").await?;
    c.im.join_chan("alice", "room").await?;
    c.im.leave_chan("alice", "room").await?;
    let loads = c.nodes[0].metric("im_membership_loads_total").await?;
    let topic = c.im.keys().node_topic(&c.im.home_node("alice")?);
    let late = json!({"join": {"client": "alice", "chan": "room"}}).to_string();
    c.redis.publish(&topic, &late).await?;
    c.nodes[0]
        .wait_metric("im_membership_loads_total", loads + 1)
        .await?;
    let chan_topic = c.im.keys().chan_topic(&imclient::ChanName::new("room")?);
    wait_for("the node drops the channel again", WAIT, || async {
        (c.redis.subscribers(&chan_topic).await.ok()? == 0).then_some(())
    })
    .await?;
    c.im.send_chan_message("s", "room", &"not for alice", false)
        .await?;
    c.im.send_message("s", ["alice"], &"marker", false).await?;
    assert_eq!(wa.next_message().await?.payload, json!("marker"));
    Ok(())
}

#[tokio::test]
async fn a_slot_moved_to_another_master_is_followed_and_clients_told_what_they_may_have_missed()
-> Result<()> {
    let c = Cluster::start_on(Redis::start_cluster()?, 1, NodeOpts::default()).await?;
    let mut wa = c.connect("alice").await?;
    c.im.join_chan("alice", "room").await?;
    let report =
        c.im.send_chan_message("s", "room", &"before", false)
            .await?;
    assert_eq!(report.nodes, 1);
    assert_eq!(wa.next_message().await?.payload, json!("before"));

    // The channel topic's slot moves to another master; the old one drops its subscribers.
    let cluster = c.redis.cluster.as_ref().unwrap();
    let topic = c.im.keys().chan_topic(&imclient::ChanName::new("room")?);
    let slot = RedisCluster::slot_of(&topic);
    let from = cluster.master_of_slot(slot)?;
    let to = cluster
        .master_ports()?
        .into_iter()
        .find(|p| *p != from)
        .unwrap();
    cluster.move_slot(slot, to)?;

    wait_for("channel deliveries resume", WAIT, || async {
        let report =
            c.im.send_chan_message("s", "room", &"after", false)
                .await
                .ok()?;
        (report.nodes == 1).then_some(())
    })
    .await?;
    let (mut missed, mut after) = (false, false);
    while !(missed && after) {
        match wa.read(WAIT).await? {
            Frame::Envelope(env) if env.payload == json!("after") => after = true,
            Frame::Envelope(env) if env.payload["event"] == "missed" => missed = true,
            other => panic!("expected `missed` and the message, got {other:?}"),
        }
    }
    assert_eq!(
        c.redis.subscribers(&topic).await?,
        1,
        "subscribed on the new owner"
    );
    Ok(())
}

#[tokio::test]
async fn a_channel_message_sent_after_leave_chan_returns_does_not_reach_the_client() -> Result<()> {
    // On a cluster the leave (on the node's topic) and the channel message (on the channel's
    // topic) travel through two masters: leave_chan waits for the node to have applied it.
    let c = Cluster::start_on(Redis::start_cluster()?, 1, NodeOpts::default()).await?;
    let mut wa = c.connect("alice").await?;
    // A channel whose topic is on another master than the node's topic.
    let node_slot = RedisCluster::slot_of(&c.im.keys().node_topic(&c.im.home_node("alice")?));
    let cluster = c.redis.cluster.as_ref().unwrap();
    let node_master = cluster.master_of_slot(node_slot)?;
    let chan = cluster.chan_served_by(c.im.keys(), |master| master != node_master)?;
    for round in 0..20 {
        c.im.join_chan("alice", &chan).await?;
        c.im.leave_chan("alice", &chan).await?;
        c.im.send_chan_message("s", &chan, &format!("late {round}"), false)
            .await?;
        c.im.send_message("s", ["alice"], &format!("marker {round}"), false)
            .await?;
        let env = wa.next_message().await?;
        assert_eq!(
            env.payload,
            json!(format!("marker {round}")),
            "round {round}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_cluster_subscription_knows_which_topics_it_holds() -> Result<()> {
    // What a node checks its own topic with, every few seconds, on a cluster.
    let redis = Redis::start_cluster()?;
    let store = imclient::store::Store::open(&redis.url())?;
    let (mut subscriber, _messages) = store.subscribe().await.unwrap()?;
    let topics: Vec<String> = (0..5).map(|i| format!("held{i}")).collect();
    subscriber.subscribe(&topics).await?;
    for topic in &topics {
        assert!(subscriber.holds(topic).await?, "{topic}");
    }
    assert!(!subscriber.holds("not-held").await?);
    subscriber.unsubscribe(&topics[..1]).await?;
    assert!(!subscriber.holds(&topics[0]).await?);
    Ok(())
}
