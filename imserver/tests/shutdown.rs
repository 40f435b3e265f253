//! A graceful shutdown with a thousand clients does not wait for its timeout: every client is
//! told 1001 and the process exits; and a shutdown while Redis is down retries its last writes
//! with backoff, not in a loop. In a test binary of its own: it loads the machine, and the
//! closing timings must not run beside it.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::StreamExt as _;
use imclient::contract::CloseCode;
use imtestkit::{Cluster, NodeOpts, WAIT, Ws};
use serde_json::json;

/// Bounded by what would show a session that never ends: the node waits up to half its
/// shutdown timeout (5 s by default) for sessions to unregister. How fast a shutdown is, is a
/// benchmark's question; an 800 ms bound here failed on a loaded machine.
#[tokio::test]
async fn sigterm_with_a_thousand_clients_does_not_wait_for_its_timeout() -> Result<()> {
    const CLIENTS: usize = 1000;
    let mut c = Cluster::start(1, NodeOpts::default()).await?;
    let mut readers = Vec::new();
    for i in 0..CLIENTS {
        let ws = Ws::connect(&c.im.prev_connect_server(&format!("t{i}"), json!(null))?).await?;
        // Each client reads on (answering the Close, as a browser does) until the end.
        readers.push(tokio::spawn(async move {
            let mut stream = ws.stream;
            let mut code = None;
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(tokio_tungstenite::tungstenite::Message::Close(frame)) => {
                        code = frame.map(|f| u16::from(f.code));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            code
        }));
    }
    c.nodes[0].wait_metric("im_clients", CLIENTS as u64).await?;

    let started = Instant::now();
    c.nodes[0].signal("TERM");
    if !c.nodes[0].wait_exit(WAIT).await? {
        bail!("the node did not exit cleanly");
    }
    let took = started.elapsed();
    let mut going_away = 0;
    for reader in readers {
        if reader.await? == Some(CloseCode::GoingAway.code()) {
            going_away += 1;
        }
    }
    assert_eq!(going_away, CLIENTS, "every client was told 1001");
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    Ok(())
}

/// A node stopped while Redis is down keeps trying to write its last presence until its
/// shutdown deadline, with backoff: a warning per try, a handful in all. It used to retry in a
/// tight loop once the stop had asked it to give up its lease, about 57,000 warnings in a few
/// seconds when nodes and Redis were stopped together.
#[tokio::test]
async fn stopping_while_redis_is_down_logs_a_few_retries_not_a_flood() -> Result<()> {
    let log = std::env::temp_dir().join(format!("imtest-outage-log-{}.txt", std::process::id()));
    let mut c = Cluster::start(
        1,
        NodeOpts {
            log_file: Some(log.clone()),
            ..NodeOpts::default()
        }
        .arg("--shutdown-timeout-ms", 4000)
        .arg("--shutdown-grace-ms", 1000),
    )
    .await?;
    let client = c.client_on(0, "leaving");
    let _ws = c.connect(&client).await?;
    imtestkit::wait_for("presence written", WAIT, || async {
        c.im.has_online(&client).await.ok()?.then_some(())
    })
    .await?;
    c.redis.kill();
    c.nodes[0].signal("TERM");
    if !c.nodes[0].wait_exit(WAIT).await? {
        bail!("the node did not exit cleanly");
    }
    let text = std::fs::read_to_string(&log)?;
    let _ = std::fs::remove_file(&log);
    let retries = text
        .lines()
        .filter(|l| l.contains("presence write failed"))
        .count();
    // Backoff from 50 ms, doubling to 2 s, over the 4 s deadline: about seven tries.
    assert!(
        retries <= 20,
        "{retries} presence write warnings while stopping"
    );
    Ok(())
}
