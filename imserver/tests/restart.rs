//! Planned stops: a node that gets SIGTERM gives up its lease, hands each client to the node
//! that wins it among the others and closes it with 4003, so a rolling restart loses nothing;
//! a node that starts again takes its clients back the same way, and one that starts after
//! dying does not keep its returning clients waiting for streams nobody holds. Counts of who is
//! online never count a moved client twice.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use imclient::ImClient;
use imclient::contract::CloseCode;
use imtestkit::moves::{Log, Resume, delivered, differences, follow, received};
use imtestkit::{Frame, Listed, Redis, WAIT, Ws, wait_for, with_since};
use serde_json::json;
use tokio::sync::watch;

/// Longest a client may take from its node's close to the welcome of its new home: well under
/// the 2 s a node would wait for a stream that does not come.
const PROMPT: Duration = Duration::from_millis(1000);

/// Connects `client` with a fresh URL from imclient (resuming from `since` when given), again
/// after a refusal, as the browser client does: a node that is stopping refuses new sockets,
/// and imclient may name it for a moment more.
async fn connect_as_a_browser(
    im: &ImClient,
    client: &str,
    since: Option<(&str, u64)>,
) -> Result<Ws> {
    wait_for(&format!("a node to accept {client}"), WAIT, || async {
        let url = im.prev_connect_server(client, json!(null)).ok()?;
        let url = match since {
            Some((epoch, seq)) => with_since(&url, epoch, seq),
            None => url,
        };
        Ws::connect(&url).await.ok()
    })
    .await
}

/// Follows `client` from `ws` on, reconnecting at once (resuming from the last seq it saw)
/// whenever it is closed.
async fn read_client(
    im: Arc<ImClient>,
    client: String,
    ws: Ws,
    log: Log,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    let name = client.clone();
    follow(client, ws, log, stop, move |_, epoch, seq| {
        let (im, client) = (im.clone(), name.clone());
        async move { connect_as_a_browser(&im, &client, Some((&epoch, seq))).await }
    })
    .await
}

/// Waits until `more` envelopes beyond what has arrived so far have arrived.
async fn flow(log: &Log, more: usize, what: &str) -> Result<()> {
    let before = delivered(log);
    wait_for(what, WAIT * 2, || async {
        (delivered(log) >= before + more).then_some(())
    })
    .await
}

/// Three nodes restarted one at a time (SIGTERM, then started again on the same address)
/// while private and channel messages flow: every client is closed with 4003 only, resumes
/// with `recovered: true` each time, promptly, and has every message exactly once, in order
/// (a message in flight during a move may land a place or two late), with consecutive
/// seqs; the channel's online count ends at its member count.
#[tokio::test]
async fn a_rolling_restart_of_three_nodes_loses_nothing() -> Result<()> {
    let redis = Redis::start()?;
    let listed = Listed::new(3);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(listed.start(&redis, i).await?);
    }
    let im = Arc::new(listed.client(&redis).await?);
    // Four clients homed at each node.
    let clients: Vec<String> = (0..3)
        .flat_map(|i| {
            (0..)
                .map(|n| format!("r{n}"))
                .filter(|c| listed.home_among_all(c) == listed.ids[i])
                .take(4)
                .collect::<Vec<_>>()
        })
        .collect();

    let log: Log = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers = Vec::new();
    for client in &clients {
        let ws = connect_as_a_browser(&im, client, None).await?;
        readers.push(tokio::spawn(read_client(
            im.clone(),
            client.clone(),
            ws,
            log.clone(),
            stop_rx.clone(),
        )));
    }
    im.join_chan_many(&clients, "room").await?;

    let sending = Arc::new(AtomicBool::new(true));
    let sender = {
        let (im, clients, sending) = (im.clone(), clients.clone(), sending.clone());
        tokio::spawn(async move {
            let mut sent: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            let mut chan = Vec::new();
            let mut round = 0u64;
            while sending.load(Relaxed) {
                for client in &clients {
                    im.send_message("backend", [client], &json!({ "n": round }), false)
                        .await
                        .context("sending")?;
                    sent.entry(client.clone()).or_default().push(round);
                }
                im.send_chan_message("backend", "room", &json!({ "k": round }), false)
                    .await?;
                chan.push(round);
                round += 1;
                // Pacing, not synchronisation: a steady flow across the restarts.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok((sent, chan))
        })
    };
    flow(&log, 200, "messages flow").await?;

    for (i, node) in nodes.iter_mut().enumerate() {
        let homed: Vec<&String> = clients
            .iter()
            .filter(|c| listed.home_among_all(c) == listed.ids[i])
            .collect();
        let resumed = |log: &Log| -> usize {
            let log = received(log);
            homed.iter().map(|c| log[*c].resumes.len()).sum()
        };
        let before = resumed(&log);
        node.signal("TERM");
        ensure!(node.wait_exit(WAIT).await?, "node {i} did not stop cleanly");
        ensure!(
            resumed(&log) >= before + homed.len(),
            "node {i}'s clients had not all moved when it stopped"
        );
        flow(&log, 200, &format!("messages flow while node {i} is down")).await?;
        *node = listed.start(&redis, i).await?;
        wait_for(&format!("node {i}'s clients back on it"), WAIT, || async {
            let log = received(&log);
            homed
                .iter()
                .all(|c| {
                    log[*c]
                        .resumes
                        .last()
                        .is_some_and(|r| r.node == listed.ids[i])
                })
                .then_some(())
        })
        .await?;
        flow(
            &log,
            200,
            &format!("messages flow after node {i} came back"),
        )
        .await?;
    }

    sending.store(false, Relaxed);
    let (sent, chan) = sender.await??;
    wait_for("every message arrived", WAIT, || async {
        let log = received(&log);
        clients
            .iter()
            .all(|c| log[c].private.len() >= sent[c].len() && log[c].chan.len() >= chan.len())
            .then_some(())
    })
    .await
    .inspect_err(|_| {
        let log = received(&log);
        for c in &clients {
            eprintln!("{c}: {}", log[c].shortfall(&sent[c], &chan));
        }
    })?;
    let online = wait_for("the room counts each member once", WAIT, || async {
        let online = im.chan_online("room").await.ok()?;
        (online == clients.len() as u64).then_some(online)
    })
    .await;
    let _ = stop_tx.send(true);
    for reader in readers {
        reader.await??;
    }
    if online.is_err() {
        bail!("the room shows {} online", im.chan_online("room").await?);
    }

    let log = received(&log);
    for c in &clients {
        let r = &log[c];
        for (kind, got, sent) in [
            ("private", &r.private, &sent[c]),
            ("channel", &r.chan, &chan),
        ] {
            let mut sorted = got.clone();
            sorted.sort_unstable();
            assert_eq!(
                &sorted,
                sent,
                "{c}: {kind} messages, once each: {}",
                differences(got, sent)
            );
            // In order, but for a message in flight during a move: one passed on by the old
            // node can land just after the next one or two, which reached the new home
            // directly.
            assert!(
                got.iter().enumerate().all(|(i, n)| {
                    let want = sent.iter().position(|m| m == n).unwrap_or(usize::MAX);
                    i.abs_diff(want) <= 2
                }),
                "{c}: {kind} messages out of order: {}",
                differences(got, sent)
            );
        }
        let first = r.seqs[0];
        let consecutive: Vec<u64> = (first..first + r.seqs.len() as u64).collect();
        assert_eq!(r.seqs, consecutive, "{c}: seqs run on across the restarts");
        assert!(
            r.closes
                .iter()
                .all(|&code| code == Some(CloseCode::Moved.code())),
            "{c}: closed only with 4003: {:?}",
            r.closes
        );
        // Moved away from its home and back: two resumes; a client whose second choice was
        // restarted too moved once more.
        assert!(r.resumes.len() >= 2, "{c}: {:?}", r.resumes);
        for Resume {
            node,
            recovered,
            after: took,
        } in &r.resumes
        {
            assert_eq!(*recovered, Some(true), "{c} at {node}: {:?}", r.resumes);
            assert!(*took < PROMPT, "{c} took {took:?} to resume at {node}");
        }
    }
    Ok(())
}

/// A node that died (kill -9) and starts again at once, while its lease still stands: its
/// clients come back to it resuming streams that died with it, and are told so at once
/// (`recovered: false`) instead of after waiting for a handover that nobody will send.
#[tokio::test]
async fn a_node_restarted_after_dying_welcomes_its_clients_without_waiting() -> Result<()> {
    let redis = Redis::start()?;
    let listed = Listed::new(2);
    let mut a = listed.start(&redis, 0).await?;
    let _b = listed.start(&redis, 1).await?;
    let im = listed.client(&redis).await?;
    let client = listed.client_homed_at("phoenix", 0);
    let mut ws = connect_as_a_browser(&im, &client, None).await?;
    im.send_message("backend", [&client], &json!({ "n": 1 }), false)
        .await?;
    let seen = ws.next_message().await?.seq.unwrap();
    let epoch = ws.epoch();
    wait_for("the client is online", WAIT, || async {
        im.has_online(&client).await.ok()?.then_some(())
    })
    .await?;

    a.signal("KILL");
    let _ = a.wait_exit(WAIT).await?;
    // Closed, or reset: the process is gone.
    if let Ok(Frame::Envelope(env)) = ws.read(WAIT).await {
        bail!("expected the socket to end, got {env:?}");
    }
    let _a = listed.start(&redis, 0).await?;
    listed.wait_routed(&im, &client, 0).await?;
    let url = with_since(&im.prev_connect_server(&client, json!(null))?, &epoch, seen);
    let started = Instant::now();
    let ws = Ws::connect(&url).await?;
    let took = started.elapsed();
    assert_eq!(ws.recovered(), Some(false));
    assert_eq!(ws.reason().as_deref(), Some("epoch_changed"));
    assert!(took < PROMPT, "the welcome took {took:?}");
    Ok(())
}

/// A room of two members, one of which moves when its home comes back: the room shows two
/// online as soon as the mover is online at its new home, not three until the old node's
/// forwarding ends; the online count and the online list do not count it twice either.
#[tokio::test]
async fn a_moved_client_is_not_counted_twice() -> Result<()> {
    let redis = Redis::start()?;
    let listed = Listed::new(2);
    let a = listed.start(&redis, 0).await?;
    let im = listed.client(&redis).await?;
    let stays = listed.client_homed_at("stays", 0);
    let mover = listed.client_homed_at("mover", 1);
    im.join_chan_many([&stays, &mover], "room").await?;
    let _stays_ws = connect_as_a_browser(&im, &stays, None).await?;
    let mut mover_ws = connect_as_a_browser(&im, &mover, None).await?;
    wait_for("the room shows two online", WAIT, || async {
        (im.chan_online("room").await.ok()? == 2).then_some(())
    })
    .await?;

    let b = listed.start(&redis, 1).await?;
    assert_eq!(mover_ws.closed().await?, Some(CloseCode::Moved.code()));
    listed.wait_routed(&im, &mover, 1).await?;
    let mover_ws = connect_as_a_browser(&im, &mover, None).await?;
    assert_eq!(mover_ws.welcome.payload["node"], json!(listed.ids[1]));
    // The new home counts the mover once it is ready there.
    let count_at = |node: &str| {
        let key = im.keys().chan_online(&imclient::NodeId::new(node).unwrap());
        let redis = &redis;
        async move {
            let mut conn = redis.conn().await?;
            let n: Option<u64> = redis::cmd("HGET")
                .arg(key)
                .arg("room")
                .query_async(&mut conn)
                .await?;
            anyhow::Ok(n)
        }
    };
    wait_for("the new home counts the mover", WAIT, || async {
        (count_at(&b.id).await.ok()? == Some(1)).then_some(())
    })
    .await?;
    // Well within the old node's 10 s of forwarding: its count has dropped by then.
    let settled = Duration::from_secs(2);
    let counts = wait_for("the room shows two online", settled, || async {
        let online = im.chan_online("room").await.ok()?;
        let listed_online = im
            .chans()
            .await
            .ok()?
            .into_iter()
            .find(|c| c.chan.as_str() == "room")?
            .online;
        (online == 2 && listed_online == 2).then_some(())
    })
    .await;
    if counts.is_err() {
        bail!(
            "the room shows {} online (node a counts {:?}) {settled:?} after the mover came online at its new home",
            im.chan_online("room").await?,
            count_at(&a.id).await?
        );
    }
    assert_eq!(im.online_count().await?, 2);
    assert_eq!(im.online_clients().await?.len(), 2);
    assert!(im.has_online(&mover).await?);
    Ok(())
}

/// A stopping node's clients are moved, not reported offline and online again; one that does
/// not reach its new home by the end of the stopping node's grace is reported offline.
#[tokio::test]
async fn a_stopping_nodes_clients_move_without_presence_events() -> Result<()> {
    use imclient::{EventKind, EventsFrom};
    let redis = Redis::start()?;
    let listed = Listed::new(2);
    let mut a = listed.start(&redis, 0).await?;
    let _b = listed.start(&redis, 1).await?;
    let im = listed.client(&redis).await?;
    let mut on_a = (0..)
        .map(|i| format!("s{i}"))
        .filter(|c| listed.home_among_all(c) == listed.ids[0]);
    let (mover, leaver) = (on_a.next().unwrap(), on_a.next().unwrap());
    let mut wm = connect_as_a_browser(&im, &mover, None).await?;
    let mut wl = connect_as_a_browser(&im, &leaver, None).await?;
    wait_for("both online", WAIT, || async {
        (im.online_count().await.ok()? == 2).then_some(())
    })
    .await?;
    let mut events = im.events(EventsFrom::Now).await?;

    a.signal("TERM");
    for ws in [&mut wm, &mut wl] {
        assert_eq!(ws.closed().await?, Some(CloseCode::Moved.code()));
    }
    // The mover reconnects to its new home at once; the leaver does not come back.
    let moved = connect_as_a_browser(&im, &mover, Some((&wm.epoch(), wm.welcome_seq()))).await?;
    assert_eq!(moved.welcome.payload["node"], json!(listed.ids[1]));
    assert_eq!(moved.recovered(), Some(true));
    ensure!(a.wait_exit(WAIT).await?, "node a did not stop cleanly");
    // The leaver was reported offline when the stopping node ended; nothing about the mover.
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, ev) = tokio::time::timeout_at(end, events.next()).await??;
        assert_ne!(ev.client.as_str(), mover, "the move was reported: {ev:?}");
        if ev.client.as_str() == leaver {
            assert_eq!(ev.kind, EventKind::Offline);
            break;
        }
    }
    assert!(im.has_online(&mover).await?);
    assert!(!im.has_online(&leaver).await?);
    Ok(())
}
