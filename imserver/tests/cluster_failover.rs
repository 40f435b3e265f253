//! A Redis Cluster master failing over under running nodes: the failover of a master that holds
//! none of the app's keys must leave every node's lease live and move no client, and what a
//! node's topic took meanwhile reaches its client but for the moment of the shard's loss.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use imclient::NodeId;
use imtestkit::redis_cluster::RedisCluster;
use imtestkit::{Cluster, Frame, Listed, NodeOpts, PREFIX, Redis, WAIT, Ws, wait_for};
use serde_json::json;

/// How long after a shard's loss a message may be reported taken and still be lost.
const LOSS_WINDOW: Duration = Duration::from_millis(250);

/// How often the watcher reads the leases, as a backend would (every second), only closer.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// What the lease watcher saw: each lease's remaining lifetime in ms as last read, and the
/// first read that found one gone.
#[derive(Debug, Default)]
struct Seen {
    ttl: Vec<i64>,
    gone: Option<String>,
}

/// Reads the nodes' leases every 50 ms straight from the master that holds the app's keys
/// (which does not fail here), as every backend and peer reads them, until `done`.
async fn watch_leases(
    port: u16,
    leases: Vec<String>,
    seen: Arc<std::sync::Mutex<Seen>>,
    done: Arc<AtomicBool>,
) -> Result<()> {
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection()
        .await?;
    while !done.load(Relaxed) {
        let mut pipe = redis::pipe();
        for lease in &leases {
            pipe.cmd("PTTL").arg(lease);
        }
        // While the cluster counts a slot as unserved it answers CLUSTERDOWN: a backend then
        // keeps the live set it had, and so does this watcher.
        let Ok(ttls) = pipe.query_async::<Vec<i64>>(&mut conn).await else {
            tokio::time::sleep(WATCH_EVERY).await;
            continue;
        };
        {
            let mut seen = seen.lock().unwrap();
            if let Some(i) = ttls.iter().position(|t| *t < 0)
                && seen.gone.is_none()
            {
                seen.gone = Some(format!("{} (PTTL {})", leases[i], ttls[i]));
            }
            seen.ttl = ttls;
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
    Ok(())
}

/// A slot served by the master on `port`.
fn a_slot_of(cluster: &RedisCluster, port: u16) -> Result<u16> {
    (0..16384u16)
        .step_by(97)
        .find(|s| cluster.master_of_slot(*s).is_ok_and(|p| p == port))
        .ok_or_else(|| anyhow!("master {port} serves no slot"))
}

/// Lets every master serve its slots while another one's are unserved, as docs/OPERATIONS.md
/// recommends for the app: by default (`yes`) the whole cluster answers CLUSTERDOWN from the
/// moment a master is marked failed until its replica takes over, and no lease can be renewed
/// meanwhile.
async fn serve_partial_coverage(cluster: &RedisCluster) -> Result<()> {
    for addr in cluster.addrs() {
        let mut conn = redis::Client::open(format!("redis://{addr}"))?
            .get_multiplexed_async_connection()
            .await?;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-require-full-coverage")
            .arg("no")
            .query_async(&mut conn)
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_of_a_master_without_the_apps_keys_keeps_every_lease_and_moves_no_client()
-> Result<()> {
    let mut redis = Redis::start_cluster()?;
    let cluster = redis.cluster.as_ref().unwrap();
    serve_partial_coverage(cluster).await?;
    // The victim: a master holding neither the app's keys nor a node's topic (nodes planned
    // again until their topics leave one free), so every node keeps receiving throughout.
    let keys_master = cluster.master_of_slot(RedisCluster::slot_of(&format!("{{{PREFIX}}}")))?;
    let masters = cluster.master_ports()?;
    let (listed, victim) = loop {
        let listed = Listed::new(2);
        let mut topic_masters = Vec::new();
        for id in &listed.ids {
            let topic = format!("{PREFIX}:node:{id}");
            topic_masters.push(cluster.master_of_slot(RedisCluster::slot_of(&topic))?);
        }
        let free = masters
            .iter()
            .find(|m| **m != keys_master && !topic_masters.contains(m));
        if let Some(victim) = free {
            break (listed, *victim);
        }
    };
    let victim_slot = a_slot_of(cluster, victim)?;
    let nodes = [
        listed.start(&redis, 0).await?,
        listed.start(&redis, 1).await?,
    ];
    let im = listed.client(&redis).await?;
    assert_eq!(
        im.keys().node_topic(&NodeId::new(&listed.ids[0])?),
        format!("{PREFIX}:node:{}", listed.ids[0]),
        "the topic names planned above"
    );
    let clients = [
        listed.client_homed_at("near", 0),
        listed.client_homed_at("far", 1),
    ];
    let mut sockets = Vec::new();
    for client in &clients {
        let mut ws = Ws::connect(&im.prev_connect_server(client, json!(null))?).await?;
        im.send_message("s", [client], &"before", false).await?;
        assert_eq!(ws.next_message().await?.payload, json!("before"));
        sockets.push(ws);
    }

    let leases: Vec<String> = listed
        .ids
        .iter()
        .map(|id| im.keys().lease(&NodeId::new(id).unwrap()))
        .collect();
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_leases(
        keys_master,
        leases.clone(),
        seen.clone(),
        done.clone(),
    ));
    wait_for("the watcher reads the leases", WAIT, || async {
        (seen.lock().unwrap().ttl.len() == leases.len()).then_some(())
    })
    .await?;
    // The nodes renew on their own from a third of the lease after they took it: once each
    // lease is seen going up, both renew as they will through the failover.
    let first = seen.lock().unwrap().ttl.clone();
    wait_for("both nodes renewing their lease", WAIT, || async {
        let ttl = seen.lock().unwrap().ttl.clone();
        ttl.iter()
            .zip(&first)
            .all(|(now, then)| now > then)
            .then_some(())
    })
    .await?;

    // Blocks until the replica has taken over and the cluster agrees; the watcher and the
    // nodes run meanwhile.
    let cluster = redis.cluster.as_mut().unwrap();
    tokio::task::block_in_place(|| cluster.pause_master_of_slot(victim_slot))?;

    // A renewal after the failover puts a lease back to its full lifetime (1.5 s): once both
    // have been seen above 1.2 s, the nodes renewed since, and a lapse would have been found.
    wait_for(
        "both nodes renewed their lease after the failover",
        WAIT,
        || {
            let seen = seen.clone();
            async move {
                let ttl = seen.lock().unwrap().ttl.clone();
                ttl.iter().all(|t| *t > 1200).then_some(())
            }
        },
    )
    .await?;
    done.store(true, Relaxed);
    watcher.await??;
    let gone = seen.lock().unwrap().gone.clone();
    assert_eq!(
        gone, None,
        "a lease lapsed during the failover of master {victim}"
    );

    // Every client is still on its socket: a message reaches it there (perhaps after `missed`:
    // a node counts the loss of any shard as an outage), with no close before it.
    for (client, ws) in clients.iter().zip(&mut sockets) {
        wait_for("deliveries resume", WAIT, || async {
            let report = im.send_message("s", [client], &"after", false).await;
            report.ok()?.nodes.iter().all(|n| n.taken).then_some(())
        })
        .await?;
        loop {
            match ws.read(WAIT).await? {
                Frame::Envelope(env) if env.payload == json!("after") => break,
                Frame::Envelope(env) if env.payload["event"] == "missed" => {}
                other => panic!("{client}: expected the message, got {other:?}"),
            }
        }
    }
    for node in &nodes {
        assert_eq!(
            node.metric("im_clients_moved_total").await?,
            0,
            "{}",
            node.id
        );
        assert_eq!(
            node.metric("im_lease_lapses_total").await?,
            0,
            "{}",
            node.id
        );
    }
    Ok(())
}

/// The master of a channel's topic fails under a node whose own topic lives on a master that
/// does not: the node subscribes everything again, and every private message its own topic took
/// (each sender was told `taken`) reaches the client, but for those sent in the moment between
/// the shard's loss and the node dropping its subscription, which Redis still counts: the
/// window docs/API.md states, bounded here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_node_took_while_another_shard_failed_over_reaches_its_client() -> Result<()> {
    let mut c = Cluster::start_on(Redis::start_cluster()?, 1, NodeOpts::default()).await?;
    let cluster = c.redis.cluster.as_ref().unwrap();
    serve_partial_coverage(cluster).await?;
    let keys_master = cluster.master_of_slot(RedisCluster::slot_of(&format!("{{{PREFIX}}}")))?;
    let node_topic = c.im.keys().node_topic(&NodeId::new(&c.nodes[0].id)?);
    let topic_master = cluster.master_of_slot(RedisCluster::slot_of(&node_topic))?;
    let victim = cluster
        .master_ports()?
        .into_iter()
        .find(|m| *m != keys_master && *m != topic_master)
        .unwrap();
    // A channel whose topic the victim serves: the node must subscribe it again.
    let chan = cluster.chan_served_by(c.im.keys(), |master| master == victim)?;
    let mut ws = c.connect("alice").await?;
    c.im.join_chan("alice", &chan).await?;

    // Private messages every 5 ms through the failover; those a node took are recorded.
    let taken = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (im, taken, done) = (c.im.clone(), taken.clone(), done.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !done.load(Relaxed) {
                let report = im
                    .send_message("s", ["alice"], &json!({ "n": n }), false)
                    .await;
                if report.is_ok_and(|r| r.nodes.iter().all(|node| node.taken)) {
                    taken.lock().unwrap().push((n, Instant::now()));
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let slot = a_slot_of(c.redis.cluster.as_ref().unwrap(), victim)?;
    let cluster = c.redis.cluster.as_mut().unwrap();
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.kill_master_of_slot(slot))?;
    // Deliveries go on until the node has told the client `missed`: it subscribed again.
    let mut got = Vec::new();
    loop {
        match ws.read(WAIT).await? {
            Frame::Envelope(env) if env.payload["event"] == "missed" => break,
            Frame::Envelope(env) => got.extend(env.payload["n"].as_u64()),
            Frame::Closed(code) => panic!("closed with {code:?}"),
        }
    }
    done.store(true, Relaxed);
    sender.await?;
    c.im.send_message("s", ["alice"], &json!({ "n": "last" }), false)
        .await?;
    loop {
        match ws.read(WAIT).await? {
            Frame::Envelope(env) if env.payload["n"] == "last" => break,
            Frame::Envelope(env) => got.extend(env.payload["n"].as_u64()),
            Frame::Closed(code) => panic!("closed with {code:?}"),
        }
    }
    let taken = taken.lock().unwrap().clone();
    assert!(!taken.is_empty());
    // Taken and lost: only in the moment between the shard's loss and the node dropping its
    // subscription, when Redis still counts it (docs/API.md, "Sending").
    let lost: Vec<(u64, Duration)> = taken
        .iter()
        .filter(|(n, _)| !got.contains(n))
        .map(|(n, at)| (*n, at.saturating_duration_since(killed)))
        .collect();
    assert!(
        lost.iter().all(|(_, after)| *after <= LOSS_WINDOW),
        "taken by the node and never delivered, sent after the kill: {lost:?} ({} taken)",
        taken.len()
    );
    Ok(())
}
