//! Channels: durable membership, one publish per channel message, live joins and leaves,
//! subscriptions that follow local members, and a connect/join race.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};

use anyhow::{Result, anyhow};
use imclient::contract::Kind;
use imclient::{ImClient, ImClientOptions};
use imtestkit::{Cluster, NodeOpts, WAIT, Ws, wait_for};
use serde_json::json;

/// Waits until `chan` has `online` members online and its topic has `nodes` subscribers.
async fn settled(c: &Cluster, chan: &str, online: u64, nodes: u64) -> Result<()> {
    let topic = c.im.keys().chan_topic(&imclient::ChanName::new(chan)?);
    wait_for(
        &format!("{chan}: {online} online on {nodes} nodes"),
        WAIT,
        || {
            let topic = topic.clone();
            async move {
                let subs = c.redis.subscribers(&topic).await.ok()?;
                let got = c.im.chan_online(chan).await.ok()?;
                (got == online && subs == nodes).then_some(())
            }
        },
    )
    .await?;
    Ok(())
}

/// Sends a private marker and checks it is the next thing `ws` receives: nothing else (no
/// duplicate, no message it should not get) came before it.
async fn next_is_marker(c: &Cluster, ws: &mut Ws, client: &str) -> Result<()> {
    let marker = format!("marker-{client}");
    c.im.send_message("test", [client], &marker, false).await?;
    let env = ws.next_message().await?;
    if env.payload != json!(marker) {
        return Err(anyhow!("{client} got {:?} before its marker", env.payload));
    }
    Ok(())
}

#[tokio::test]
async fn members_on_two_nodes_each_receive_a_channel_message_once() -> Result<()> {
    let c = Cluster::start(2, NodeOpts::default()).await?;
    let members = [
        c.client_on(0, "m"),
        c.client_on(0, "n"),
        c.client_on(1, "o"),
        c.client_on(1, "p"),
    ];
    let outsider = c.client_on(0, "x");
    for m in &members {
        c.im.join_chan(m, "room").await?;
    }
    let mut sockets = Vec::new();
    for m in &members {
        sockets.push((m.clone(), c.connect(m).await?));
    }
    let mut out = c.connect(&outsider).await?;
    settled(&c, "room", 4, 2).await?;

    let report =
        c.im.send_chan_message(&members[0], "room", &json!({"text": "hello room"}), false)
            .await?;
    assert_eq!(report.nodes, 2, "one publish reaches both nodes");
    for (name, ws) in &mut sockets {
        let env = ws.next_message().await?;
        assert_eq!(env.kind, Kind::Channel);
        assert_eq!(env.chan.as_ref().map(|c| c.as_str()), Some("room"));
        assert_eq!(
            env.from.as_ref().map(|f| f.as_str()),
            Some(members[0].as_str())
        );
        assert_eq!(env.payload, json!({"text": "hello room"}));
        assert_eq!(env.id.as_deref(), Some(report.message_id.as_str()));
        next_is_marker(&c, ws, name).await?;
    }
    next_is_marker(&c, &mut out, &outsider).await?;
    Ok(())
}

#[tokio::test]
async fn broadcast_reaches_every_online_client_on_both_nodes_once() -> Result<()> {
    let c = Cluster::start(2, NodeOpts::default()).await?;
    let names = [
        c.client_on(0, "a"),
        c.client_on(1, "b"),
        c.client_on(1, "c"),
    ];
    let mut sockets = Vec::new();
    for n in &names {
        sockets.push((n.clone(), c.connect(n).await?));
    }
    let report =
        c.im.broadcast("system", &json!("maintenance at 22:00"))
            .await?;
    assert_eq!(report.nodes, 2);
    for (name, ws) in &mut sockets {
        let env = ws.next_message().await?;
        assert_eq!(env.kind, Kind::Broadcast);
        assert_eq!(env.payload, json!("maintenance at 22:00"));
        next_is_marker(&c, ws, name).await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_sender_can_be_left_out() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    c.im.join_chan_many(["speaker", "listener"], "talk").await?;
    let mut speaker = c.connect("speaker").await?;
    let mut listener = c.connect("listener").await?;
    settled(&c, "talk", 2, 1).await?;
    c.im.send_chan_message("speaker", "talk", &"only for others", true)
        .await?;
    assert_eq!(
        listener.next_message().await?.payload,
        json!("only for others")
    );
    next_is_marker(&c, &mut speaker, "speaker").await?;
    c.im.send_chan_message("speaker", "talk", &"for all", false)
        .await?;
    assert_eq!(speaker.next_message().await?.payload, json!("for all"));
    Ok(())
}

#[tokio::test]
async fn join_while_offline_then_connect_then_receive() -> Result<()> {
    let c = Cluster::start(2, NodeOpts::default()).await?;
    let who = c.client_on(1, "late");
    c.im.join_chan(&who, "news").await?;
    assert!(!c.im.has_online(&who).await?);
    assert_eq!(
        c.im.chan_clients("news")
            .await?
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>(),
        vec![who.as_str()]
    );
    let mut ws = c.connect(&who).await?;
    settled(&c, "news", 1, 1).await?;
    c.im.send_chan_message("editor", "news", &"extra!", false)
        .await?;
    assert_eq!(ws.next_message().await?.payload, json!("extra!"));
    Ok(())
}

#[tokio::test]
async fn join_while_online_takes_effect_without_reconnecting_and_leave_stops_at_once() -> Result<()>
{
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let mut ws = c.connect("zoe").await?;
    c.im.join_chan("zoe", "live").await?;
    settled(&c, "live", 1, 1).await?;
    c.im.send_chan_message("host", "live", &"welcome", false)
        .await?;
    assert_eq!(ws.next_message().await?.payload, json!("welcome"));

    // The leave control and the next channel message reach the node in publish order, so the
    // message right after leave_chan returns is already not delivered.
    c.im.leave_chan("zoe", "live").await?;
    c.im.send_chan_message("host", "live", &"after leave", false)
        .await?;
    next_is_marker(&c, &mut ws, "zoe").await?;
    assert!(c.im.client_chans("zoe").await?.is_empty());
    // Idempotent both ways.
    c.im.leave_chan("zoe", "live").await?;
    c.im.join_chan("zoe", "again").await?;
    c.im.join_chan("zoe", "again").await?;
    assert_eq!(c.im.chan_clients("again").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_client_with_two_connections_receives_once_per_connection() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    c.im.join_chan("duo", "pair").await?;
    let mut a = c.connect("duo").await?;
    let mut b = c.connect("duo").await?;
    settled(&c, "pair", 1, 1).await?;
    c.im.send_chan_message("x", "pair", &"both", false).await?;
    let (ea, eb) = (a.next_message().await?, b.next_message().await?);
    assert_eq!(ea, eb);
    // One marker per client goes to both connections; it must be next on each.
    c.im.send_message("test", ["duo"], &"m", false).await?;
    assert_eq!(a.next_message().await?.payload, json!("m"));
    assert_eq!(b.next_message().await?.payload, json!("m"));
    Ok(())
}

#[tokio::test]
async fn topic_subscription_follows_local_members_and_chan_online_follows_connections() -> Result<()>
{
    // Without recovery windows, a member's subscription ends with its last connection.
    let c = Cluster::start(2, NodeOpts::default().arg("--recovery-window-ms", 0)).await?;
    let (a, b, d) = (
        c.client_on(0, "a"),
        c.client_on(0, "b"),
        c.client_on(1, "d"),
    );
    c.im.join_chan_many([&a, &b, &d], "topic").await?;
    assert_eq!(c.im.chan_online("topic").await?, 0);
    let wa = c.connect(&a).await?;
    let wb = c.connect(&b).await?;
    let wd = c.connect(&d).await?;
    settled(&c, "topic", 3, 2).await?;
    assert_eq!(c.nodes[0].metric("im_chan_topics").await?, 1);

    let chans = c.im.chans().await?;
    assert_eq!(chans.len(), 1);
    assert_eq!(
        (chans[0].chan.as_str(), chans[0].members, chans[0].online),
        ("topic", 3, 3)
    );
    assert_eq!(
        c.im.client_chans(&a)
            .await?
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>(),
        ["topic"]
    );

    c.im.leave_chan(&a, "topic").await?;
    settled(&c, "topic", 2, 2).await?;
    drop(wb);
    settled(&c, "topic", 1, 1).await?;
    wait_for("node 0 unsubscribed", WAIT, || async {
        (c.nodes[0].metric("im_chan_topics").await.ok()? == 0).then_some(())
    })
    .await?;
    drop(wd);
    settled(&c, "topic", 0, 0).await?;
    assert_eq!(
        c.im.chan_member_count("topic").await?,
        2,
        "membership outlives connections"
    );
    drop(wa);

    assert_eq!(c.im.delete_chan("topic").await?, 2);
    assert!(c.im.chans().await?.is_empty());
    assert!(c.im.client_chans(&b).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn deleting_a_channel_stops_delivery_to_online_members() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    c.im.join_chan("m1", "doomed").await?;
    let mut ws = c.connect("m1").await?;
    settled(&c, "doomed", 1, 1).await?;
    c.im.delete_chan("doomed").await?;
    settled(&c, "doomed", 0, 0).await?;
    c.im.send_chan_message("x", "doomed", &"anyone?", false)
        .await?;
    next_is_marker(&c, &mut ws, "m1").await?;
    Ok(())
}

/// Joins and leaves race with a client connecting and disconnecting in a loop; the connection
/// that stays open was opened while membership changes were still in flight. Once things
/// settle, what it receives must match its durable membership.
#[tokio::test]
async fn membership_survives_races_between_joins_and_connects() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let chans: Vec<String> = (0..8).map(|i| format!("race{i}")).collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

    // One task per channel, each a sequence of joins and leaves: the last one decides.
    let mut ops = Vec::new();
    for (k, chan) in chans.iter().enumerate() {
        let (im, chan) = (c.im.clone(), chan.clone());
        ops.push(tokio::spawn(async move {
            let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ ((k as u64 + 1) * 0x9E37_79B9);
            let mut member = false;
            for _ in 0..60 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                member = rng & 0x100 != 0;
                if member {
                    im.join_chan("racer", &chan).await?;
                } else {
                    im.leave_chan("racer", &chan).await?;
                }
            }
            anyhow::Ok((chan, member))
        }));
    }
    // Meanwhile the client connects again and again, keeping only its newest socket.
    let churn = {
        let (im, done) = (c.im.clone(), done.clone());
        tokio::spawn(async move {
            let mut current = None;
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || n == 0 {
                // Close before reconnecting, so the node forgets the client and loads its
                // channels again on every connect.
                drop(current.take());
                let url = im.prev_connect_server("racer", serde_json::Value::Null)?;
                current = Some(Ws::connect(&url).await?);
                n += 1;
            }
            anyhow::Ok((current, n))
        })
    };
    let mut last = std::collections::HashMap::new();
    for op in ops {
        let (chan, member) = op.await??;
        last.insert(chan, member);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ws, connects) = churn.await??;
    let mut ws = ws.ok_or_else(|| anyhow!("no socket"))?;
    eprintln!(
        "{connects} connects raced {} membership changes",
        60 * chans.len()
    );

    let durable: HashSet<String> =
        c.im.client_chans("racer")
            .await?
            .into_iter()
            .map(|c| c.to_string())
            .collect();
    for chan in &chans {
        let member = last[chan];
        assert_eq!(durable.contains(chan), member, "durable state of {chan}");
        settled(&c, chan, u64::from(member), u64::from(member)).await?;
        c.im.send_chan_message("x", chan, &chan, false).await?;
        if member {
            assert_eq!(ws.next_message().await?.payload, json!(chan));
        }
        next_is_marker(&c, &mut ws, "racer").await?;
    }
    Ok(())
}

/// Connects clients `j0..jN` and, right after each welcome, joins (or leaves) its channel
/// `solo{i}`: the node has registered the client and is loading its channels, so the change's
/// control can arrive between that read and its result.
async fn connect_then(c: &Cluster, n: usize, join: bool) -> Result<Vec<Ws>> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let im = c.im.clone();
        tasks.push(tokio::spawn(async move {
            let client = format!("j{i}");
            let ws =
                Ws::connect(&im.prev_connect_server(&client, serde_json::Value::Null)?).await?;
            let chan = format!("solo{i}");
            if join {
                im.join_chan(&client, &chan).await?;
            } else {
                im.leave_chan(&client, &chan).await?;
            }
            anyhow::Ok(ws)
        }));
    }
    let mut sockets = Vec::new();
    for t in tasks {
        sockets.push(t.await??);
    }
    Ok(sockets)
}

/// A hundred clients connect and, as soon as they are welcomed, join a channel of their own
/// (then, in a second round, leave it): each connect's channel load races one membership
/// change that nothing later corrects. Every client must end up with its durable membership.
#[tokio::test]
async fn a_membership_change_racing_the_connect_is_never_lost() -> Result<()> {
    const N: usize = 100;
    // Each load result is held 300 ms before it is applied, so the change the client makes
    // right after its welcome arrives while the load is in flight, every time.
    // Without recovery windows: every connect of round 2 loads its channels again.
    let c = Cluster::start(
        1,
        NodeOpts::default()
            .arg("--fault-membership-delay-ms", 300)
            .arg("--recovery-window-ms", 0),
    )
    .await?;
    let node = &c.nodes[0];

    // Round 1: each client joins its own channel right after its welcome.
    let sockets = connect_then(&c, N, true).await?;
    // Judge only once every load has been applied.
    node.wait_metric("im_membership_loads_total", N as u64)
        .await?;
    wait_for("every racing join took effect", WAIT, || async {
        (node.metric("im_chan_topics").await.ok()? == N as u64).then_some(())
    })
    .await?;
    let chans = c.im.chans().await?;
    assert_eq!(chans.len(), N);
    assert!(
        chans.iter().all(|ch| ch.online == 1 || ch.online == 0),
        "{chans:?}"
    );
    wait_for("every channel counts its member online", WAIT, || async {
        c.im.chans()
            .await
            .ok()?
            .iter()
            .all(|ch| ch.online == 1)
            .then_some(())
    })
    .await?;
    drop(sockets);
    wait_for("all gone", WAIT, || async {
        (node.metric("im_connections").await.ok()? == 0).then_some(())
    })
    .await?;

    // Round 2: each client leaves its channel right after its welcome.
    let sockets = connect_then(&c, N, false).await?;
    assert!(c.im.chans().await?.is_empty(), "every leave is durable");
    node.wait_metric("im_membership_loads_total", 2 * N as u64)
        .await?;
    wait_for("every racing leave took effect", WAIT, || async {
        (node.metric("im_chan_topics").await.ok()? == 0).then_some(())
    })
    .await?;
    drop(sockets);
    Ok(())
}

/// The commands `im` sent to the server on `port` while `f` ran, bracketed by a marker:
/// `bracket` makes `im` send it (a PING on one server; on a cluster, where a PING goes to any
/// shard, a publish to an empty channel whose topic lives on the monitored shard), and
/// `is_marker` recognises it in MONITOR's output.
async fn commands_sent<F, Fut, B, BFut>(
    port: u16,
    bracket: B,
    is_marker: impl Fn(&str) -> bool,
    f: F,
) -> Result<Vec<String>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
    B: Fn() -> BFut,
    BFut: std::future::Future<Output = Result<()>>,
{
    let mut monitor = std::net::TcpStream::connect(("127.0.0.1", port))?;
    monitor.write_all(b"MONITOR\r\n")?;
    let mut lines = BufReader::new(monitor.try_clone()?);
    let mut ok = String::new();
    lines.read_line(&mut ok)?;
    bracket().await?;
    f().await?;
    bracket().await?;
    let mut addr: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        lines.read_line(&mut line)?;
        // 1732500000.123456 [0 127.0.0.1:54321] "PUBLISH" "topic" "..."
        let Some((who, rest)) = line
            .split_once("] ")
            .and_then(|(head, rest)| Some((head.rsplit(' ').next()?.to_owned(), rest)))
        else {
            continue;
        };
        let cmd = rest.split('"').nth(1).unwrap_or_default().to_uppercase();
        let marker = is_marker(rest);
        match &addr {
            None if marker => addr = Some(who),
            Some(a) if *a == who && marker => return Ok(seen),
            Some(a) if *a == who => seen.push(cmd),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_channel_message_costs_the_same_redis_commands_for_10000_members_as_for_2() -> Result<()>
{
    let c = Cluster::start(2, NodeOpts::default()).await?;
    // The sender gets a one-connection pool so MONITOR can tell its commands apart.
    let options = ImClientOptions::new(
        c.redis.url(),
        c.nodes.iter().map(|n| n.id.clone()),
        imtestkit::SECRET,
    )
    .key_prefix(imtestkit::PREFIX);
    let sender = ImClient::new(match &c.redis.cluster {
        Some(cluster) => options.cluster_pool(
            deadpool_redis::cluster::Config::from_urls(
                cluster
                    .addrs()
                    .iter()
                    .map(|a| format!("redis://{a}"))
                    .collect::<Vec<_>>(),
            )
            .builder()?
            .max_size(1)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()?,
        ),
        None => options.pool(
            deadpool_redis::Config::from_url(c.redis.url())
                .builder()?
                .max_size(1)
                .runtime(deadpool_redis::Runtime::Tokio1)
                .build()?,
        ),
    })?;
    let (a, b) = (c.client_on(0, "a"), c.client_on(1, "b"));
    c.im.join_chan_many([&a, &b], "small").await?;
    let big: Vec<String> = (0..10_000)
        .map(|i| format!("member{i}"))
        .chain([a.clone(), b.clone()])
        .collect();
    c.im.join_chan_many(&big, "big").await?;
    assert_eq!(c.im.chan_member_count("big").await?, 10_002);
    let mut wa = c.connect(&a).await?;
    let mut wb = c.connect(&b).await?;
    settled(&c, "small", 2, 2).await?;
    settled(&c, "big", 2, 2).await?;

    let sent = async |chan: &str, text: &str| -> Result<Vec<String>> {
        let topic = sender.keys().chan_topic(&imclient::ChanName::new(chan)?);
        let Some(cluster) = &c.redis.cluster else {
            let ping = || async { Ok(sender.ping().await?) };
            let is_ping = |rest: &str| rest.starts_with("\"PING\"") || rest.starts_with("\"ping\"");
            return commands_sent(c.redis.port, ping, is_ping, || async {
                sender.send_chan_message("s", chan, &text, false).await?;
                Ok(())
            })
            .await;
        };
        let slot = imtestkit::redis_cluster::RedisCluster::slot_of(&topic);
        let probe = (0..)
            .map(|i| format!("probe{i}"))
            .find(|p| {
                let t = sender
                    .keys()
                    .chan_topic(&imclient::ChanName::new(p).unwrap());
                imtestkit::redis_cluster::RedisCluster::slot_of(&t) == slot
            })
            .unwrap();
        let probe_topic = sender.keys().chan_topic(&imclient::ChanName::new(&probe)?);
        let publish_probe = || async {
            sender
                .send_chan_message("s", &probe, &"probe", false)
                .await?;
            Ok(())
        };
        let is_probe = |rest: &str| rest.contains(&format!("\"{probe_topic}\""));
        commands_sent(
            cluster.master_of_slot(slot)?,
            publish_probe,
            is_probe,
            || async {
                sender.send_chan_message("s", chan, &text, false).await?;
                Ok(())
            },
        )
        .await
    };
    let small = sent("small", "to two").await?;
    let large = sent("big", "to ten thousand").await?;
    let publish = if c.redis.cluster.is_some() {
        "SPUBLISH"
    } else {
        "PUBLISH"
    };
    assert_eq!(small, [publish], "one publish and nothing else");
    assert_eq!(large, small, "the same commands whatever the member count");
    for ws in [&mut wa, &mut wb] {
        assert_eq!(ws.next_message().await?.payload, json!("to two"));
        assert_eq!(ws.next_message().await?.payload, json!("to ten thousand"));
    }
    Ok(())
}
