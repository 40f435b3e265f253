//! Planned moves: when a node is added (or comes back), the clients it wins are handed over by
//! the node that held them, stream and buffer included, and nothing sent to them meanwhile is
//! lost, duplicated or reordered.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use imclient::ImClient;
use imclient::contract::CloseCode;
use imtestkit::moves::{Log, delivered, follow, received};
use imtestkit::{Frame, Listed, Redis, WAIT, Ws, wait_for, with_since};
use serde_json::json;
use tokio::sync::watch;

/// Follows `client` from `ws` on, reconnecting (resuming from the last seq) when closed with
/// 4003, to the node imclient then names, which must be `new_home`.
async fn read_client(
    im: Arc<ImClient>,
    client: String,
    ws: Ws,
    new_home: String,
    log: Log,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    let name = client.clone();
    follow(client, ws, log, stop, move |code, epoch, seq| {
        let (im, client, new_home) = (im.clone(), name.clone(), new_home.clone());
        async move {
            if code != Some(CloseCode::Moved.code()) {
                bail!("{client} closed with {code:?}");
            }
            wait_for("imclient names the new home", WAIT, || async {
                (im.home_node(&client).ok()?.as_str() == new_home).then_some(())
            })
            .await?;
            let url = im.prev_connect_server(&client, json!(null))?;
            Ws::connect(&with_since(&url, &epoch, seq))
                .await
                .with_context(|| format!("{client} reconnecting to {url}"))
        }
    })
    .await
}

/// A second node joins while private and channel messages flow to the clients it wins: each
/// of them is closed with 4003, resumes at the new node with `recovered: true`, and has every
/// message exactly once with consecutive seqs; the clients that stay are not disturbed.
#[tokio::test]
async fn a_node_joining_takes_its_clients_over_without_losing_a_message() -> Result<()> {
    let redis = Redis::start()?;
    let listed = Listed::new(2);
    let (a_id, b_id) = (listed.ids[0].clone(), listed.ids[1].clone());
    let a = listed.start(&redis, 0).await?;
    let im = Arc::new(listed.client(&redis).await?);
    let clients: Vec<String> = (0..16).map(|i| format!("h{i}")).collect();
    let movers: Vec<&String> = clients
        .iter()
        .filter(|c| listed.home_among_all(c) == b_id)
        .collect();
    assert!(
        (3..=13).contains(&movers.len()),
        "{} of 16 would move",
        movers.len()
    );

    let log: Log = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers = Vec::new();
    for client in &clients {
        let ws = Ws::connect(&im.prev_connect_server(client, json!(null))?).await?;
        let new_home = if movers.contains(&client) {
            b_id.clone()
        } else {
            a_id.clone()
        };
        readers.push(tokio::spawn(read_client(
            im.clone(),
            client.clone(),
            ws,
            new_home,
            log.clone(),
            stop_rx.clone(),
        )));
    }
    im.join_chan_many(&clients, "room").await?;

    // Messages flow: one private message to every client and one channel message per round.
    let sending = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sender = {
        let (im, clients, sending) = (im.clone(), clients.clone(), sending.clone());
        tokio::spawn(async move {
            let mut sent: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            let mut chan = Vec::new();
            let mut round = 0u64;
            while sending.load(std::sync::atomic::Ordering::Relaxed) {
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
                // Pacing, not synchronisation: a steady flow across the move.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok((sent, chan))
        })
    };
    wait_for("messages flow", WAIT, || async {
        (delivered(&log) > 200).then_some(())
    })
    .await?;

    let b = listed.start(&redis, 1).await?;
    wait_for("every mover resumed at the new node", WAIT * 2, || async {
        let log = received(&log);
        movers
            .iter()
            .all(|c| log.get(*c).is_some_and(|r| !r.resumes.is_empty()))
            .then_some(())
    })
    .await?;
    // Some more flow after the move, then the end.
    let flowed = delivered(&log);
    wait_for("messages flow after the move", WAIT, || async {
        (delivered(&log) > flowed + 500).then_some(())
    })
    .await?;
    sending.store(false, std::sync::atomic::Ordering::Relaxed);
    let (sent, chan) = sender.await??;
    let expected = |c: &str| (sent[c].len(), chan.len());
    wait_for("every message arrived", WAIT, || async {
        let log = received(&log);
        clients
            .iter()
            .all(|c| {
                log.get(c)
                    .is_some_and(|r| (r.private.len(), r.chan.len()) >= expected(c))
            })
            .then_some(())
    })
    .await
    .inspect_err(|_| {
        let log = received(&log);
        for c in &clients {
            eprintln!("{c}: {}", log[c].shortfall(&sent[c], &chan));
        }
    })?;
    let _ = stop_tx.send(true);
    for reader in readers {
        reader.await??;
    }

    // Every mover's stream went over, and nobody else's.
    assert_eq!(
        a.metric("im_handovers_sent_total").await?,
        movers.len() as u64
    );
    assert_eq!(
        b.metric("im_handovers_taken_total").await?,
        movers.len() as u64
    );
    let log = received(&log);
    for c in &clients {
        let r = &log[c];
        let mut private = r.private.clone();
        private.sort_unstable();
        assert_eq!(private, sent[c], "{c}: private messages, exactly once");
        let mut got_chan = r.chan.clone();
        got_chan.sort_unstable();
        assert_eq!(got_chan, chan, "{c}: channel messages, exactly once");
        let first = r.seqs[0];
        let consecutive: Vec<u64> = (first..first + r.seqs.len() as u64).collect();
        assert_eq!(r.seqs, consecutive, "{c}: seqs run on across the move");
        if movers.contains(&c) {
            assert_eq!(r.closes, [Some(CloseCode::Moved.code())], "{c}");
            let recovered: Vec<_> = r.resumes.iter().map(|m| m.recovered).collect();
            assert_eq!(recovered, [Some(true)], "{c}: resumed at the new node");
        } else {
            assert!(r.closes.is_empty(), "{c} stayed put: {:?}", r.closes);
        }
    }
    Ok(())
}

/// A client that dropped off is inside its recovery window when its home moves: its stream
/// goes to the new node with what it missed, and what is sent after the move lands there too;
/// it resumes at the new node with everything, in order.
#[tokio::test]
async fn a_client_away_during_a_move_resumes_at_its_new_home() -> Result<()> {
    let redis = Redis::start()?;
    let listed = Listed::new(2);
    let a = listed.start(&redis, 0).await?;
    let im = listed.client(&redis).await?;
    let client = listed.client_homed_at("away", 1);
    let send = |n: u64| {
        let (im, client) = (&im, &client);
        async move {
            im.send_message("backend", [client], &json!({ "n": n }), false)
                .await
        }
    };
    let mut ws = Ws::connect(&im.prev_connect_server(&client, json!(null))?).await?;
    send(1).await?;
    let first = ws.next_message().await?;
    let (epoch, seen) = (ws.epoch(), first.seq.unwrap());
    drop(ws);
    wait_for("the client's window opened", WAIT, || async {
        (a.metric("im_recovery_windows").await.ok()? == 1).then_some(())
    })
    .await?;
    send(2).await?;
    send(3).await?;

    let b = listed.start(&redis, 1).await?;
    wait_for("the stream was handed over", WAIT, || async {
        (b.metric("im_handovers_taken_total").await.ok()? == 1).then_some(())
    })
    .await?;
    listed.wait_routed(&im, &client, 1).await?;
    send(4).await?;

    let url = im.prev_connect_server(&client, json!(null))?;
    assert!(url.starts_with(&listed.ids[1]), "{url}");
    let mut ws = Ws::connect(&with_since(&url, &epoch, seen)).await?;
    assert_eq!(ws.recovered(), Some(true), "{:?}", ws.reason());
    assert_eq!(ws.epoch(), epoch, "the stream runs on");
    for (n, seq) in [(2, seen + 1), (3, seen + 2), (4, seen + 3)] {
        let env = ws.next_message().await?;
        assert_eq!((env.payload["n"].as_u64(), env.seq), (Some(n), Some(seq)));
    }
    assert!(ws.silent_for(Duration::from_millis(200)).await);
    // The old node let the client go without opening another window.
    wait_for("the old node holds nothing for it", WAIT, || async {
        (a.metric("im_recovery_windows").await.ok()? == 0).then_some(())
    })
    .await?;
    Ok(())
}

/// A node added and stopped again at once: the clients it took come back to the node that
/// handed them over, which pushes to them again instead of passing their messages on to the
/// node that is gone.
/// Connects with a fresh URL, again after a refusal, as the browser client does: imclient may
/// follow a node's start or stop a moment before the nodes do, and the node then answers 421.
async fn connect_as_a_browser(im: &imclient::ImClient, client: &str) -> Result<Ws> {
    wait_for("a node to accept the client", WAIT, || async {
        Ws::connect(&im.prev_connect_server(client, json!(null)).ok()?)
            .await
            .ok()
    })
    .await
}

#[tokio::test]
async fn a_client_handed_away_and_back_at_once_gets_its_messages() -> Result<()> {
    let redis = Redis::start()?;
    let listed = Listed::new(2);
    let _a = listed.start(&redis, 0).await?;
    let im = listed.client(&redis).await?;
    let client = listed.client_homed_at("boomerang", 1);
    let mut ws = Ws::connect(&im.prev_connect_server(&client, json!(null))?).await?;

    let b = listed.start(&redis, 1).await?;
    assert!(
        matches!(ws.read(WAIT).await?, Frame::Closed(Some(code)) if code == CloseCode::Moved.code())
    );
    listed.wait_routed(&im, &client, 1).await?;
    let mut ws = connect_as_a_browser(&im, &client).await?;

    b.signal("TERM");
    assert!(matches!(ws.read(WAIT).await?, Frame::Closed(_)));
    listed.wait_routed(&im, &client, 0).await?;
    let mut ws = connect_as_a_browser(&im, &client).await?;
    im.send_message("backend", [&client], &"welcome back", false)
        .await?;
    assert_eq!(ws.next_message().await?.payload, json!("welcome back"));
    Ok(())
}
