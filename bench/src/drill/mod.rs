//! The drill workload (`--workload drill`, run by `scripts/chaos.sh`): every client holds one
//! connection and, whenever it ends, comes back as a browser should: a fresh URL from imclient
//! with `since=<epoch>:<seq>`, at once after 4003 `moved`, after the browser client's backoff
//! otherwise (`backoff.rs`).
//! Meanwhile messages flow to random clients and to a few channels. It owns the record of what
//! each client lived through (every welcome with its node, `recovered` and `reason`; every
//! close; every refused attempt), the `seq` check across each client's connections, and the
//! delivery timeline (10 ms buckets per group of clients, a group being the node a client was
//! first on).
//!
//! The tool does not break anything itself: once every client is connected it prints
//! `drill: ready` on stderr, and the script breaks something and appends `<name> <unix ms>`
//! lines to `--drill-marks` as it goes. Both run on one machine, so the wall clock is a shared
//! time base. At the end the tool reads the marks and prints one JSON line with the figures
//! relative to them: how long the clients of `--drill-node` took to be back on another node
//! and what their welcome said, whether the other clients were disturbed, who was moved and
//! how they resumed, when deliveries came back after an `up` mark.
//!
//! With `--drill-load N`, N of the clients are ones whose home is `--drill-node` and the rest
//! ones whose home is another node (`placement.rs`), so that one node can hold most of the
//! clients (drill 6: a storm of reconnects). With `--procs N` the tool runs as N processes
//! that each hold their share of the clients and send their share of the messages, and one
//! report is merged from theirs (`shards.rs`; the figures of a storm, `storm.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use futures_util::StreamExt as _;
use imclient::ImClient;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use super::backoff::{Backoff, Rng};
use super::{Args, MAX_IN_FLIGHT, chan_name, lock, now_ns, open_ws, wire};
use record::{Event, Log, Welcome};
use report::Window;
use timeline::Timeline;

mod placement;
mod record;
mod report;
pub mod shards;
mod storm;
mod timeline;

/// An attempt without a welcome in this time counts as failed. Short: during a drill a client
/// that waits long on a dead address would hide how quickly it could have come back.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the first connections may take before the drill starts anyway (the report then
/// shows fewer clients placed than asked for).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the clients keep reading after the last send, so what was sent last is counted.
const DRAIN: Duration = Duration::from_secs(2);
/// How long the clients get to hand in their records after the end.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Examples of seq errors kept for the report.
const MAX_SAMPLES: usize = 10;

fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// What the clients share.
struct Drill {
    im: ImClient,
    nodes: Vec<String>,
    /// Client ids by client number (this process's and the others').
    ids: Vec<String>,
    gate: Semaphore,
    timeline: Timeline,
    /// Clients that got their first welcome.
    placed: AtomicUsize,
    /// Failed attempts by kind.
    failures: Mutex<BTreeMap<String, u64>>,
    first_failure: Mutex<Option<String>>,
    seq_samples: Mutex<Vec<String>>,
}

/// `s` percent-encoded for a query string: the epoch is opaque, so nothing is assumed of it.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A failed attempt, by kind: the HTTP status of a refused upgrade, or the error's text.
fn failure_kind(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    if let Some(rest) = text.split("upgrade refused: HTTP/1.1 ").nth(1) {
        let status: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let code = rest
            .split("\"error\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default();
        return format!("http {status} {code}").trim_end().to_owned();
    }
    if text.contains("Connection refused") {
        return "tcp refused".into();
    }
    text.chars().take(60).collect()
}

impl Drill {
    /// One attempt of client `i`: a fresh URL (with `since` when resuming), the upgrade and
    /// the welcome.
    async fn connect(
        &self,
        i: usize,
        n: usize,
        resume: Option<&(String, u64)>,
    ) -> Result<(wire::Socket, Welcome)> {
        let mut url = self.im.prev_connect_server(&self.ids[i], Value::Null)?;
        if let Some((epoch, seq)) = resume {
            url.push_str("&since=");
            url.push_str(&encode(&format!("{epoch}:{seq}")));
        }
        // Spread over source addresses by attempt too, so reconnects do not pile on one.
        let mut ws = open_ws(&url, i.wrapping_add(n.wrapping_mul(7))).await?;
        let mut first = None;
        ws.read(|text| {
            first = serde_json::from_slice::<Value>(text).ok();
            wire::Flow::Stop
        })
        .await?;
        let p = first
            .as_ref()
            .map(|f| &f["payload"])
            .filter(|p| p["event"] == "welcome")
            .context("the first frame was not a welcome")?;
        let node = p["node"].as_str().unwrap_or_default();
        Ok((
            ws,
            Welcome {
                node: self
                    .nodes
                    .iter()
                    .position(|n| n == node)
                    .unwrap_or(self.nodes.len()),
                epoch: p["epoch"].as_str().unwrap_or_default().to_owned(),
                seq: p["seq"].as_u64().context("a welcome without seq")?,
                recovered: p["recovered"].as_bool(),
                reason: p["reason"].as_str().map(str::to_owned),
            },
        ))
    }

    /// Counts a failed attempt; returns its kind.
    fn failure(&self, e: &anyhow::Error) -> String {
        let kind = failure_kind(e);
        *lock(&self.failures).entry(kind.clone()).or_default() += 1;
        lock(&self.first_failure).get_or_insert_with(|| format!("{e:#}"));
        kind
    }

    /// Client `i`: connected, and reconnecting whenever that ends, until `stop`.
    async fn client(self: Arc<Self>, i: usize, mut stop: watch::Receiver<bool>) -> Log {
        let mut log = Log::default();
        let mut backoff = Backoff::new(now_ns() ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        // The stream to resume: epoch of the last welcome, last seq processed.
        let mut resume: Option<(String, u64)> = None;
        let mut n = 0usize;
        while !*stop.borrow() {
            n += 1;
            let attempt = async {
                let _permit = self.gate.acquire().await?;
                tokio::time::timeout(CONNECT_TIMEOUT, self.connect(i, n, resume.as_ref()))
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("no welcome within {CONNECT_TIMEOUT:?}")))
            };
            let opened = tokio::select! {
                r = attempt => r,
                _ = stop.changed() => break,
            };
            let (mut ws, welcome) = match opened {
                Ok(open) => open,
                Err(e) => {
                    let kind = self.failure(&e);
                    log.events.push(Event::Failed { at: now_ms(), kind });
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next(false)) => {}
                        _ = stop.changed() => break,
                    }
                    continue;
                }
            };
            // Where this connection's envelopes must continue from: after `recovered: true`
            // from what this client processed last (the replay comes first), otherwise from
            // the welcome's seq (a new stream, or one the client was told it cannot fill).
            let mut last = match (&resume, welcome.recovered) {
                (Some((epoch, seq)), Some(true)) => {
                    if *epoch != welcome.epoch {
                        log.epoch_mismatch += 1;
                    }
                    *seq
                }
                _ => welcome.seq,
            };
            if log.start_node.is_none() {
                log.start_node = Some(welcome.node);
                self.placed.fetch_add(1, Relaxed);
            }
            backoff.welcomed();
            let group = log.start_node.unwrap_or(welcome.node);
            let epoch = welcome.epoch.clone();
            log.events.push(Event::Welcome {
                at: now_ms(),
                welcome,
            });
            let (timeline, samples) = (&self.timeline, &self.seq_samples);
            let mut on_text = |text: &[u8]| {
                // System frames (pong, missed) carry no seq; every envelope does.
                if let Some(seq) = wire::seq_of(text) {
                    let at = now_ms();
                    let channel = wire::find_str(text, "\"type\":\"channel\"");
                    timeline.add(group, channel, at);
                    log.deliveries += 1;
                    if !channel {
                        log.deliveries_private += 1;
                        log.private_sent.extend(wire::sent_at(text));
                    }
                    if seq != last + 1 {
                        if seq > last {
                            log.gaps += 1;
                            log.missing += seq - last - 1;
                        } else {
                            log.duplicates += 1;
                        }
                        let mut s = lock(samples);
                        if s.len() < MAX_SAMPLES {
                            s.push(format!("c{i} at {at}: seq {seq} after {last}"));
                        }
                    }
                    last = last.max(seq);
                } else if wire::find_str(text, "\"event\":\"missed\"") {
                    // Rare: parsed in full.
                    let frame = serde_json::from_slice::<Value>(text).unwrap_or_default();
                    log.events.push(Event::Missed {
                        at: now_ms(),
                        reason: frame["payload"]["reason"].as_str().map(str::to_owned),
                    });
                }
                wire::Flow::Continue
            };
            let ended = tokio::select! {
                r = ws.read(&mut on_text) => Some(r),
                _ = stop.changed() => None,
            };
            resume = Some((epoch, last));
            let Some(read) = ended else { break };
            let code = match read {
                Ok(_) => ws.close_code(),
                Err(_) => None,
            };
            log.events.push(Event::Closed { at: now_ms(), code });
            // 4003 `moved`: the protocol says come back at once; anything else backs off.
            let wait = backoff.next(code == Some(4003));
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => break,
                }
            }
        }
        log
    }
}

/// How a send ended.
struct Sent {
    /// Every receiver's node took it (a channel message: at least one node did).
    taken: bool,
    /// Nodes that took it.
    nodes: u64,
    /// Private receivers whose node took it.
    receivers_taken: u64,
    /// The message's send time (`t`, ns), which names it.
    t: u64,
    /// The node that took a private message.
    node: Option<String>,
    /// The receiver of a private message (its client number, the index of its log).
    receiver: Option<usize>,
}

/// The `<name> <unix ms>` lines the script wrote, in order.
fn read_marks(path: Option<&std::path::Path>) -> Result<Vec<(String, u64)>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, ms) = l
                .trim()
                .split_once(' ')
                .with_context(|| format!("mark line {l:?} is not `<name> <unix ms>`"))?;
            let ms = ms
                .trim()
                .parse::<u64>()
                .with_context(|| format!("mark line {l:?}: bad time"))?;
            Ok((name.to_owned(), ms))
        })
        .collect()
}

/// Runs the drill workload and prints its report.
pub async fn run(args: &Args, im: ImClient) -> Result<()> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.chan_percent <= 100, "--chan-percent is 0 to 100");
    let chans = args.chans.clamp(1, args.clients);
    let nodes: Vec<String> = im.nodes().iter().map(|n| n.as_str().to_owned()).collect();
    let drill_node = match &args.drill_node {
        Some(n) => Some(
            nodes
                .iter()
                .position(|m| m == n.trim_end_matches('/'))
                .with_context(|| format!("--drill-node {n} is not in the node list"))?,
        ),
        None => None,
    };

    let ids = placement::client_ids(&nodes, args.clients, drill_node, args.drill_load)?;
    // This process's clients: all, or its shard's share; each shard sends its share of the
    // rate, its private messages to its own clients (whose records it holds).
    let (lo, hi) = args
        .shard
        .map_or((0, args.clients), |s| s.range(args.clients));
    let mine = hi - lo;
    ensure!(
        mine > 0,
        "a shard without clients: fewer --clients than --procs"
    );
    let rate = args.rate as f64 / args.shard.map_or(1, |s| s.count) as f64;
    let mut control = args.shard.map(|_| super::shard::Control::new());
    // Memberships are durable: set them up before anyone connects.
    placement::join_round_robin(&im, &ids[lo..hi], lo, chans).await?;

    let origin_ms = now_ms();
    let run_for = Duration::from_secs_f64(args.duration.max(0.0));
    let drill = Arc::new(Drill {
        im,
        gate: Semaphore::new(args.connect_concurrency.max(1)),
        timeline: Timeline::new(
            origin_ms,
            READY_TIMEOUT + run_for + DRAIN + Duration::from_secs(5),
            nodes.len() + 1,
        ),
        nodes,
        ids,
        placed: AtomicUsize::new(0),
        failures: Mutex::new(BTreeMap::new()),
        first_failure: Mutex::new(None),
        seq_samples: Mutex::new(Vec::new()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let clients: Vec<_> = (lo..hi)
        .map(|i| tokio::spawn(drill.clone().client(i, stop_rx.clone())))
        .collect();

    let ready_by = Instant::now() + READY_TIMEOUT;
    while drill.placed.load(Relaxed) < mine && Instant::now() < ready_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let placed = drill.placed.load(Relaxed);
    // A shard reports its clients and waits for the others: the coordinator says ready.
    if let (Some(control), Some(shard)) = (&mut control, args.shard) {
        eprintln!(
            "drill shard {}/{}: {placed} of {mine} clients connected in {} ms",
            shard.index,
            shard.count,
            now_ms() - origin_ms
        );
        control.connected(placed).await?;
    }
    let ready_ms = now_ms();
    if control.is_none() {
        eprintln!(
            "drill: ready: {placed} of {} clients connected in {} ms; sending for {:.1} s",
            args.clients,
            ready_ms - origin_ms,
            run_for.as_secs_f64()
        );
    }

    // Messages at a fixed rate, topped up every 10 ms, as in the other workloads. Sends that
    // fail (Redis down) are counted and not retried: the figures are about deliveries.
    let pad = "x".repeat(args.payload_bytes.saturating_sub(30));
    let started = Instant::now();
    let mut sends = futures_util::stream::FuturesUnordered::new();
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let mut rng = Rng::new(now_ns());
    let (mut created, mut sent_private, mut sent_chan, mut send_errors) = (0u64, 0u64, 0u64, 0u64);
    let mut first_send_error: Option<String> = None;
    let mut not_taken = 0u64;
    // Private receivers whose home node took the message: each is owed one delivery.
    let mut private_taken = 0u64;
    // Channel sends by how many nodes took them.
    let mut chan_taken_by: BTreeMap<u64, u64> = BTreeMap::new();
    // The private messages a node took: send time (`t`, ns) and that node.
    let mut taken_private: Vec<(u64, String, Option<usize>)> = Vec::new();
    // When sends ended, on the timeline's grid: group 0 taken by a node, group 1 not, group 2
    // failed.
    let send_ok = Timeline::new(
        origin_ms,
        READY_TIMEOUT + run_for + DRAIN + Duration::from_secs(5),
        3,
    );
    let mut tally = |(to_chan, done): (bool, Result<Sent>)| match done {
        Ok(sent) => {
            send_ok.add(usize::from(!sent.taken), false, now_ms());
            not_taken += u64::from(!sent.taken);
            if to_chan {
                sent_chan += 1;
                *chan_taken_by.entry(sent.nodes).or_default() += 1;
            } else {
                sent_private += 1;
                private_taken += sent.receivers_taken;
                if sent.receivers_taken > 0 {
                    taken_private.push((sent.t, sent.node.unwrap_or_default(), sent.receiver));
                }
            }
        }
        Err(e) => {
            send_ok.add(2, false, now_ms());
            send_errors += 1;
            first_send_error.get_or_insert(format!("{e:#}"));
        }
    };
    loop {
        let elapsed = started.elapsed();
        if elapsed >= run_for {
            break;
        }
        let due = (elapsed.as_secs_f64() * rate).ceil() as u64;
        while created < due && sends.len() < MAX_IN_FLIGHT {
            created += 1;
            let to_chan = rng.below(100) < args.chan_percent;
            let to = if to_chan {
                rng.below(chans as u64) as usize
            } else {
                lo + rng.below(mine as u64) as usize
            };
            let t = now_ns();
            let payload = json!({ "t": t, "p": pad });
            let drill = drill.clone();
            sends.push(async move {
                // Whether a node took it: a PUBLISH nobody was subscribed to is lost silently.
                let done = if to_chan {
                    drill
                        .im
                        .send_chan_message("bench", &chan_name(to), &payload, false)
                        .await
                        .map(|r| Sent {
                            taken: r.nodes > 0,
                            nodes: r.nodes,
                            receivers_taken: 0,
                            t,
                            node: None,
                            receiver: None,
                        })
                } else {
                    drill
                        .im
                        .send_message("bench", [drill.ids[to].clone()], &payload, false)
                        .await
                        .map(|r| Sent {
                            taken: r.unreachable().next().is_none(),
                            nodes: r.nodes.iter().filter(|n| n.taken).count() as u64,
                            receivers_taken: r
                                .nodes
                                .iter()
                                .filter(|n| n.taken)
                                .map(|n| n.receivers.len() as u64)
                                .sum(),
                            t,
                            node: r
                                .nodes
                                .iter()
                                .find(|n| n.taken)
                                .map(|n| n.node.as_str().to_owned()),
                            receiver: Some(to - lo),
                        })
                };
                (to_chan, done.map_err(anyhow::Error::from))
            });
        }
        tokio::select! {
            _ = interval.tick() => {}
            Some(done) = sends.next(), if !sends.is_empty() => tally(done),
        }
    }
    let end_ms = now_ms();
    // Sends still under way (Redis down at the end) are not waited for past the drain.
    let drain_until = tokio::time::Instant::now() + DRAIN;
    while let Ok(Some(done)) = tokio::time::timeout_at(drain_until, sends.next()).await {
        tally(done);
    }
    tokio::time::sleep_until(drain_until).await;
    let _ = stop_tx.send(true);
    let finish_by = tokio::time::Instant::now() + FINISH_TIMEOUT;
    // By client number (`None`: its task did not finish), to find a receiver's log.
    let mut by_client: Vec<Option<Log>> = Vec::with_capacity(clients.len());
    for c in clients {
        by_client.push(
            tokio::time::timeout_at(finish_by, c)
                .await
                .ok()
                .and_then(Result::ok),
        );
    }
    let unfinished = by_client.iter().filter(|l| l.is_none()).count();
    let marks = read_marks(args.drill_marks.as_deref())?;
    let receivers: Vec<Option<&Log>> = by_client.iter().map(Option::as_ref).collect();
    let lost = report::lost_private(
        &taken_private,
        &receivers,
        marks.first().map(|(_, t)| *t),
        drill_node,
    );
    let logs: Vec<Log> = by_client.into_iter().flatten().collect();
    let mut report = report::report(
        &drill,
        &logs,
        &Window {
            ready_ms,
            end_ms,
            drill_node,
            marks: &marks,
            raw: args.shard.is_some(),
        },
    );
    if let Value::Object(r) = &mut report {
        r.insert("clients".into(), mine.into());
        r.insert("clients_unfinished".into(), unfinished.into());
        r.insert("connect_ms".into(), (ready_ms - origin_ms).into());
        r.insert("duration_secs".into(), run_for.as_secs_f64().into());
        r.insert("rate_target".into(), args.rate.into());
        r.insert("sent_private".into(), sent_private.into());
        r.insert("sent_chan".into(), sent_chan.into());
        r.insert("send_errors".into(), send_errors.into());
        r.insert("sends_not_taken".into(), not_taken.into());
        r.insert("first_send_error".into(), first_send_error.into());
        // Each taken private receiver is owed one delivery: with no client disconnected, fewer
        // private deliveries than this are messages a node took and lost.
        r.insert("private_taken".into(), private_taken.into());
        r.insert(
            "chan_sends_taken_by_nodes".into(),
            chan_taken_by
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(*v)))
                .collect::<serde_json::Map<String, Value>>()
                .into(),
        );
        r.insert("private_lost".into(), lost);
        if let Some(down) = marks.iter().find(|(n, _)| n == "down").map(|(_, t)| *t) {
            let dropped = send_ok.occupied(|g, _| g == 1);
            let failed = send_ok.occupied(|g, _| g == 2);
            r.insert(
                "last_send_error_after_down_ms".into(),
                send_ok.last_after(&failed, down).into(),
            );
            r.insert(
                "last_send_not_taken_after_down_ms".into(),
                send_ok.last_after(&dropped, down).into(),
            );
        }
        if let Some(up) = marks.iter().find(|(n, _)| n == "up").map(|(_, t)| *t) {
            let taken = send_ok.occupied(|g, _| g == 0);
            let dropped = send_ok.occupied(|g, _| g == 1);
            r.insert(
                "first_send_taken_after_up_ms".into(),
                send_ok.first_after(&taken, up).into(),
            );
            // Redis is back, the PUBLISH succeeds, but the node has not subscribed again yet.
            r.insert(
                "last_send_not_taken_after_up_ms".into(),
                send_ok.last_after(&dropped, up).into(),
            );
        }
    }
    println!("{report}");
    Ok(())
}
