//! The drill workload (`--workload drill`, run by `scripts/chaos.sh`): every client holds one
//! connection and, whenever it ends, comes back as a browser should: a fresh URL from imclient
//! with `since=<epoch>:<seq>`, at once after 4003 `moved`, after a short backoff otherwise.
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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use futures_util::StreamExt as _;
use imclient::ImClient;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use super::{Args, MAX_IN_FLIGHT, chan_name, join_round_robin, lock, now_ns, open_ws, wire};

/// Resolution of the delivery timeline: a pause shorter than this is not seen.
const BUCKET_MS: u64 = 10;
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
/// Backoff before another attempt after a failure or a close other than 4003, in ms: a range,
/// so that a thousand clients of a dead node do not retry in lockstep.
const BACKOFF_MS: (u64, u64) = (200, 400);
/// Examples of seq errors kept for the report.
const MAX_SAMPLES: usize = 10;

fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// A small xorshift generator: backoff jitter and receivers need spread, not quality.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn backoff(&mut self) -> Duration {
        Duration::from_millis(BACKOFF_MS.0 + self.below(BACKOFF_MS.1 - BACKOFF_MS.0))
    }
}

/// Deliveries per 10 ms since `origin_ms`, per group and kind (private, channel). Atomic
/// counters, so thousands of readers record without a lock.
struct Timeline {
    origin_ms: u64,
    len: usize,
    counts: Vec<AtomicU32>,
}

impl Timeline {
    fn new(origin_ms: u64, span: Duration, groups: usize) -> Self {
        let len = (span.as_millis() as u64 / BUCKET_MS) as usize + 1;
        Self {
            origin_ms,
            len,
            counts: (0..groups * 2 * len).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn index(&self, at_ms: u64) -> usize {
        (at_ms.saturating_sub(self.origin_ms) / BUCKET_MS) as usize
    }

    fn add(&self, group: usize, channel: bool, at_ms: u64) {
        let i = self.index(at_ms);
        if i < self.len {
            let series = group * 2 + usize::from(channel);
            if let Some(c) = self.counts.get(series * self.len + i) {
                c.fetch_add(1, Relaxed);
            }
        }
    }

    /// Which buckets hold a delivery of any series `pick(group, channel)` selects.
    fn occupied(&self, pick: impl Fn(usize, bool) -> bool) -> Vec<bool> {
        let mut occ = vec![false; self.len];
        for (series, counts) in self.counts.chunks(self.len).enumerate() {
            if !pick(series / 2, series % 2 == 1) {
                continue;
            }
            for (o, c) in occ.iter_mut().zip(counts) {
                *o |= c.load(Relaxed) > 0;
            }
        }
        occ
    }

    /// The longest stretch without a delivery between `from_ms` and `to_ms` (a stretch at
    /// either end counts too), in ms.
    fn max_gap(&self, occ: &[bool], from_ms: u64, to_ms: u64) -> u64 {
        let (from, to) = (self.index(from_ms), self.index(to_ms).min(occ.len()));
        let mut last = from;
        let mut gap = 0;
        for (i, o) in occ.iter().enumerate().take(to).skip(from) {
            if *o {
                gap = gap.max(i - last);
                last = i;
            }
        }
        gap = gap.max(to.saturating_sub(last));
        gap as u64 * BUCKET_MS
    }

    /// The longest stretch without a delivery between `from_ms` and `to_ms` (a stretch at
    /// either end counts too) and how long after `from_ms` it ended, in ms; `None` when it
    /// lasted to `to_ms`.
    fn longest_gap(&self, occ: &[bool], from_ms: u64, to_ms: u64) -> (u64, Option<u64>) {
        let (from, to) = (self.index(from_ms), self.index(to_ms).min(occ.len()));
        let mut last = from;
        let mut best = (0, Some(0));
        for (i, o) in occ.iter().enumerate().take(to).skip(from) {
            if *o {
                if i - last > best.0 {
                    best = (i - last, Some(i - from));
                }
                last = i;
            }
        }
        if to.saturating_sub(last) > best.0 {
            best = (to - last, None);
        }
        (
            best.0 as u64 * BUCKET_MS,
            best.1.map(|k| k as u64 * BUCKET_MS),
        )
    }

    /// How long after `from_ms` the last delivery came, in ms.
    fn last_after(&self, occ: &[bool], from_ms: u64) -> Option<u64> {
        let from = self.index(from_ms);
        occ.iter()
            .skip(from)
            .rposition(|o| *o)
            .map(|k| k as u64 * BUCKET_MS)
    }

    /// How long after `from_ms` the first delivery came, in ms.
    fn first_after(&self, occ: &[bool], from_ms: u64) -> Option<u64> {
        let from = self.index(from_ms);
        occ.iter()
            .skip(from)
            .position(|o| *o)
            .map(|k| k as u64 * BUCKET_MS)
    }
}

/// What a welcome said.
#[derive(Debug, Clone)]
struct Welcome {
    /// Index into the node list (its length: a node not in the list).
    node: usize,
    epoch: String,
    seq: u64,
    recovered: Option<bool>,
    reason: Option<String>,
}

/// Something a client lived through, at a wall-clock time in ms.
#[derive(Debug)]
enum Event {
    Welcome {
        at: u64,
        welcome: Welcome,
    },
    /// The connection ended: the server's close code, `None` without a close frame.
    Closed {
        at: u64,
        code: Option<u16>,
    },
    /// An attempt that did not end in a welcome.
    Failed {
        at: u64,
    },
    /// A `missed` system frame: the node lost its Redis subscription for a while and what was
    /// published meanwhile may not have reached it.
    Missed {
        at: u64,
        reason: Option<String>,
    },
}

/// One client's record.
#[derive(Debug, Default)]
struct Log {
    /// The node of its first welcome: its delivery group.
    start_node: Option<usize>,
    events: Vec<Event>,
    deliveries: u64,
    /// Of the deliveries, the private messages (the rest went to channels).
    deliveries_private: u64,
    /// The send time (`t`, ns) of each private message delivered: it names the message.
    private_sent: Vec<u64>,
    gaps: u64,
    missing: u64,
    duplicates: u64,
    /// Welcomes that said `recovered: true` under another epoch than the one resumed.
    epoch_mismatch: u64,
}

impl Log {
    fn welcomes(&self) -> impl Iterator<Item = (u64, &Welcome)> {
        self.events.iter().filter_map(|e| match e {
            Event::Welcome { at, welcome } => Some((*at, welcome)),
            _ => None,
        })
    }

    /// The node of the last welcome at or before `t`.
    fn node_at(&self, t: u64) -> Option<usize> {
        self.welcomes()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map(|(_, w)| w.node)
    }

    fn first_welcome_after(&self, t: u64) -> Option<(u64, &Welcome)> {
        self.welcomes().find(|(at, _)| *at > t)
    }

    fn closes_from(&self, t: u64) -> impl Iterator<Item = (u64, Option<u16>)> {
        self.events.iter().filter_map(move |e| match e {
            Event::Closed { at, code } if *at >= t => Some((*at, *code)),
            _ => None,
        })
    }

    /// The `missed` frames, with their time and reason.
    fn missed(&self) -> impl Iterator<Item = (u64, Option<&str>)> {
        self.events.iter().filter_map(|e| match e {
            Event::Missed { at, reason } => Some((*at, reason.as_deref())),
            _ => None,
        })
    }
}

/// What the clients share.
struct Drill {
    im: ImClient,
    nodes: Vec<String>,
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
        let mut url = self.im.prev_connect_server(&format!("c{i}"), Value::Null)?;
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

    fn failure(&self, e: &anyhow::Error) {
        *lock(&self.failures).entry(failure_kind(e)).or_default() += 1;
        lock(&self.first_failure).get_or_insert_with(|| format!("{e:#}"));
    }

    /// Client `i`: connected, and reconnecting whenever that ends, until `stop`.
    async fn client(self: Arc<Self>, i: usize, mut stop: watch::Receiver<bool>) -> Log {
        let mut log = Log::default();
        let mut rng = Rng::new(now_ns() ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
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
                    log.events.push(Event::Failed { at: now_ms() });
                    self.failure(&e);
                    tokio::select! {
                        _ = tokio::time::sleep(rng.backoff()) => {}
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
            // 4003 `moved`: the protocol says come back at once; anything else waits a little.
            if code != Some(4003) {
                tokio::select! {
                    _ = tokio::time::sleep(rng.backoff()) => {}
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

/// The private messages a node took (`taken`: send time, node, receiver) that no client
/// received: how many, on which node, and when they were sent (ms after `t0`, the first mark,
/// when there is one; else the unix ms). Each message is named by its send time in ns.
/// `unannounced` counts those whose receiver was not told `missed` at or after the send: the
/// losses nobody learnt of.
fn lost_private(
    taken: &[(u64, String, Option<usize>)],
    logs: &[Option<&Log>],
    t0: Option<u64>,
) -> Value {
    let delivered: std::collections::HashSet<u64> = logs
        .iter()
        .flatten()
        .flat_map(|l| l.private_sent.iter().copied())
        .collect();
    let mut by_node = BTreeMap::new();
    let mut sent_ms = Vec::new();
    let mut unannounced = 0u64;
    for (t, node, receiver) in taken {
        if !delivered.contains(t) {
            count(&mut by_node, node.clone());
            let ms = t / 1_000_000;
            sent_ms.push(t0.map_or(ms as i64, |t0| ms as i64 - t0 as i64));
            let told = receiver
                .and_then(|r| logs.get(r).copied().flatten())
                .is_some_and(|log| log.missed().any(|(at, _)| at >= ms));
            unannounced += u64::from(!told);
        }
    }
    sent_ms.sort_unstable();
    json!({
        "count": sent_ms.len(),
        "unannounced": unannounced,
        "by_node": by_node,
        "sent_first_ms": sent_ms.first(),
        "sent_last_ms": sent_ms.last(),
        "sent_samples_ms": sent_ms.iter().step_by((sent_ms.len() / 10).max(1)).collect::<Vec<_>>(),
    })
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

fn count(map: &mut BTreeMap<String, u64>, key: impl Into<String>) {
    *map.entry(key.into()).or_default() += 1;
}

/// A close code as a report key: the code, or `none` for a connection that ended without one.
fn code_key(code: Option<u16>) -> String {
    code.map_or_else(|| "none".to_owned(), |c| c.to_string())
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

    // Memberships are durable: set them up before anyone connects.
    join_round_robin(&im, args.clients, chans).await?;

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
        placed: AtomicUsize::new(0),
        failures: Mutex::new(BTreeMap::new()),
        first_failure: Mutex::new(None),
        seq_samples: Mutex::new(Vec::new()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let clients: Vec<_> = (0..args.clients)
        .map(|i| tokio::spawn(drill.clone().client(i, stop_rx.clone())))
        .collect();

    let ready_by = Instant::now() + READY_TIMEOUT;
    while drill.placed.load(Relaxed) < args.clients && Instant::now() < ready_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_ms = now_ms();
    eprintln!(
        "drill: ready: {} of {} clients connected in {} ms; sending for {:.1} s",
        drill.placed.load(Relaxed),
        args.clients,
        ready_ms - origin_ms,
        run_for.as_secs_f64()
    );

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
        let due = (elapsed.as_secs_f64() * args.rate as f64).ceil() as u64;
        while created < due && sends.len() < MAX_IN_FLIGHT {
            created += 1;
            let to_chan = rng.below(100) < args.chan_percent;
            let to = rng.below(if to_chan { chans } else { args.clients } as u64);
            let t = now_ns();
            let payload = json!({ "t": t, "p": pad });
            let drill = drill.clone();
            sends.push(async move {
                // Whether a node took it: a PUBLISH nobody was subscribed to is lost silently.
                let done = if to_chan {
                    drill
                        .im
                        .send_chan_message("bench", &chan_name(to as usize), &payload, false)
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
                        .send_message("bench", [format!("c{to}")], &payload, false)
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
                            receiver: Some(to as usize),
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
    let lost = lost_private(&taken_private, &receivers, marks.first().map(|(_, t)| *t));
    let logs: Vec<Log> = by_client.into_iter().flatten().collect();
    let mut report = report(
        &drill,
        &logs,
        &Window {
            ready_ms,
            end_ms,
            drill_node,
            marks: &marks,
        },
    );
    if let Value::Object(r) = &mut report {
        r.insert("clients".into(), args.clients.into());
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

/// The times the figures are relative to.
struct Window<'a> {
    ready_ms: u64,
    end_ms: u64,
    drill_node: Option<usize>,
    marks: &'a [(String, u64)],
}

/// The figures, from the clients' records and the delivery timeline.
fn report(drill: &Drill, logs: &[Log], w: &Window<'_>) -> Value {
    let nodes = &drill.nodes;
    let name = |i: usize| nodes.get(i).cloned().unwrap_or_else(|| "other".into());
    let since_ready = |t: u64| t as i64 - w.ready_ms as i64;
    let tl = &drill.timeline;
    let all = tl.occupied(|_, _| true);

    let mut start_nodes = BTreeMap::new();
    let (mut welcomes, mut with_since, mut rec_true, mut rec_false) = (0u64, 0u64, 0u64, 0u64);
    let mut reasons = BTreeMap::new();
    let mut codes = BTreeMap::new();
    let (mut disconnects, mut disconnected_clients, mut failed) = (0u64, 0u64, 0u64);
    let (mut deliveries, mut gaps, mut missing, mut dups, mut bad, mut mismatch) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut deliveries_private = 0u64;
    let (mut missed, mut missed_clients) = (0u64, 0u64);
    let mut missed_reasons = BTreeMap::new();
    for log in logs {
        if let Some(n) = log.start_node {
            count(&mut start_nodes, name(n));
        }
        for (_, wl) in log.welcomes() {
            welcomes += 1;
            match wl.recovered {
                Some(true) => rec_true += 1,
                Some(false) => {
                    rec_false += 1;
                    count(&mut reasons, wl.reason.clone().unwrap_or_default());
                }
                None => {}
            }
            with_since += u64::from(wl.recovered.is_some());
        }
        let mut any = false;
        for (_, code) in log.closes_from(w.ready_ms) {
            disconnects += 1;
            any = true;
            count(&mut codes, code_key(code));
        }
        disconnected_clients += u64::from(any);
        failed += log
            .events
            .iter()
            .filter(|e| matches!(e, Event::Failed { .. }))
            .count() as u64;
        deliveries += log.deliveries;
        deliveries_private += log.deliveries_private;
        let mut any = false;
        for (_, reason) in log.missed() {
            missed += 1;
            any = true;
            count(&mut missed_reasons, reason.unwrap_or_default());
        }
        missed_clients += u64::from(any);
        gaps += log.gaps;
        missing += log.missing;
        dups += log.duplicates;
        mismatch += log.epoch_mismatch;
        bad += u64::from(log.gaps + log.duplicates + log.epoch_mismatch > 0);
    }
    let t0 = w.marks.first().map(|(_, t)| *t);
    let before_end = t0.unwrap_or(w.end_ms);

    let mut report = json!({
        "server": "imserver",
        "workload": "drill",
        "nodes": nodes,
        "placed": drill.placed.load(Relaxed),
        "start_nodes": start_nodes,
        "deliveries": deliveries,
        "deliveries_private": deliveries_private,
        "missed": { "total": missed, "clients": missed_clients, "reasons": missed_reasons },
        "welcomes": { "total": welcomes, "with_since": with_since, "recovered_true": rec_true,
                      "recovered_false": rec_false, "reasons": reasons },
        "disconnects": { "total": disconnects, "clients": disconnected_clients, "codes": codes },
        "attempts_failed": { "total": failed, "kinds": lock(&drill.failures).clone(),
                             "first": lock(&drill.first_failure).clone() },
        "seq": { "gaps": gaps, "missing": missing, "duplicates": dups,
                 "epoch_mismatch": mismatch, "clients_with_errors": bad,
                 "samples": lock(&drill.seq_samples).clone() },
        "max_gap_before_action_ms": tl.max_gap(&all, w.ready_ms, before_end),
        "marks": w.marks.iter().map(|(n, t)| (n.clone(), since_ready(*t).into()))
            .collect::<serde_json::Map<String, Value>>(),
    });
    if let Value::Object(r) = &mut report {
        if let Some(t0) = t0 {
            r.insert("action".into(), action(drill, logs, w, t0, &all));
        }
        let mark = |n: &str| w.marks.iter().find(|(m, _)| m == n).map(|(_, t)| *t);
        if let Some(up) = mark("up") {
            let private = tl.occupied(|_, channel| !channel);
            let channel = tl.occupied(|_, channel| channel);
            let first = tl.first_after(&all, up);
            r.insert(
                "resume".into(),
                json!({
                    "down_at_ms": mark("down").map(since_ready),
                    "up_at_ms": since_ready(up),
                    "first_delivery_ms": first,
                    "first_private_ms": tl.first_after(&private, up),
                    "first_channel_ms": tl.first_after(&channel, up),
                    // The pause as the clients saw it: from the last delivery before the
                    // outage to the first after it.
                    "max_gap_ms": tl.max_gap(&all, mark("down").unwrap_or(up), w.end_ms),
                }),
            );
        }
        if let Some(down) = mark("down") {
            r.insert("outage".into(), outage(drill, logs, w, down));
        }
        let restarts = restarts(logs, w);
        if !restarts.is_empty() {
            r.insert("restarts".into(), restarts.into());
        }
    }
    report
}

/// What the clients of each node (their first node) saw from the `down` mark on: when they
/// were told `missed`, and the longest pause in their private and their channel deliveries
/// with when it ended. In ms after `down`; `null` for a pause that lasted to the end of the
/// sending. A Redis Cluster shard lost under a node pauses only that node's deliveries, and
/// the pause of all clients together would hide it. The `*_resumed_ms` and `max_gap_ms` at
/// the top are the worst over the nodes whose clients were told `missed` (over all nodes when
/// none were).
fn outage(drill: &Drill, logs: &[Log], w: &Window<'_>, down: u64) -> Value {
    let tl = &drill.timeline;
    let groups = drill.nodes.len() + 1;
    let mut clients = vec![0u64; groups];
    let mut told = vec![0u64; groups];
    let mut first_told: Vec<Option<u64>> = vec![None; groups];
    let mut last_told: Vec<Option<u64>> = vec![None; groups];
    let mut missed_before = 0u64;
    for log in logs {
        let Some(g) = log.start_node else { continue };
        clients[g] += 1;
        missed_before += log.missed().filter(|(at, _)| *at < down).count() as u64;
        if let Some((at, _)) = log.missed().find(|(at, _)| *at >= down) {
            told[g] += 1;
            let since = at - down;
            first_told[g] = Some(first_told[g].map_or(since, |t| t.min(since)));
            last_told[g] = Some(last_told[g].map_or(since, |t| t.max(since)));
        }
    }
    let mut per_node = Vec::new();
    // (private resumed, channel resumed, max gap) of the nodes that count; None never resumed.
    let mut worst: (Option<Option<u64>>, Option<Option<u64>>, u64) = (None, None, 0);
    let any_told = told.iter().any(|t| *t > 0);
    let later = |a: Option<Option<u64>>, b: Option<u64>| match (a, b) {
        (None, b) => Some(b),
        (Some(None), _) | (_, None) => Some(None),
        (Some(Some(a)), Some(b)) => Some(Some(a.max(b))),
    };
    for g in 0..groups {
        if clients[g] == 0 {
            continue;
        }
        let private = tl.occupied(|h, channel| h == g && !channel);
        let channel = tl.occupied(|h, channel| h == g && channel);
        let both = tl.occupied(|h, _| h == g);
        let (p_gap, p_end) = tl.longest_gap(&private, down, w.end_ms);
        let (c_gap, c_end) = tl.longest_gap(&channel, down, w.end_ms);
        let (gap, _) = tl.longest_gap(&both, down, w.end_ms);
        if !any_told || told[g] > 0 {
            worst.0 = later(worst.0, p_end);
            worst.1 = later(worst.1, c_end);
            worst.2 = worst.2.max(gap);
        }
        per_node.push(json!({
            "node": drill.nodes.get(g).cloned().unwrap_or_else(|| "other".into()),
            "clients": clients[g],
            "missed_clients": told[g],
            "missed_first_ms": first_told[g],
            "missed_last_ms": last_told[g],
            "private_max_gap_ms": p_gap,
            "private_resumed_ms": p_end,
            "channel_max_gap_ms": c_gap,
            "channel_resumed_ms": c_end,
            "max_gap_ms": gap,
        }));
    }
    json!({
        "missed_clients": told.iter().sum::<u64>(),
        "missed_before_down": missed_before,
        "missed_first_ms": first_told.iter().flatten().min(),
        "missed_last_ms": last_told.iter().flatten().max(),
        "private_resumed_ms": worst.0.flatten(),
        "channel_resumed_ms": worst.1.flatten(),
        "private_never_resumed": matches!(worst.0, Some(None)),
        "channel_never_resumed": matches!(worst.1, Some(None)),
        "max_gap_ms": worst.2,
        "nodes": per_node,
    })
}

/// For each node restarted in place (marks `stop<k>`, `stopped<k>`, `started<k>`, `k` its
/// place in the node list): how long it took to stop and to start, and how soon the clients
/// it held when it got its signal were back on it: their first welcome from it after the old
/// process exited, in ms after that (the new one may welcome them before the script has
/// written its `started` mark).
fn restarts(logs: &[Log], w: &Window<'_>) -> Vec<Value> {
    let mark = |n: String| w.marks.iter().find(|(m, _)| *m == n).map(|(_, t)| *t);
    let mut out = Vec::new();
    for k in 0.. {
        let (Some(stop), Some(stopped), Some(started)) = (
            mark(format!("stop{k}")),
            mark(format!("stopped{k}")),
            mark(format!("started{k}")),
        ) else {
            break;
        };
        let back: Vec<u64> = logs
            .iter()
            .filter(|log| log.node_at(stop) == Some(k))
            .filter_map(|log| {
                log.welcomes()
                    .find(|(at, wl)| *at > stopped && wl.node == k)
                    .map(|(at, _)| at - stopped)
            })
            .collect();
        out.push(json!({
            "node": k,
            "stop_ms": stopped - stop,
            "start_ms": started - stopped,
            "clients": logs.iter().filter(|log| log.node_at(stop) == Some(k)).count(),
            "clients_back": back.len(),
            "back_ms_max": back.iter().max(),
        }));
    }
    out
}

/// The figures relative to the first mark `t0`, the action.
fn action(drill: &Drill, logs: &[Log], w: &Window<'_>, t0: u64, all: &[bool]) -> Value {
    let nodes = &drill.nodes;
    let name = |i: usize| nodes.get(i).cloned().unwrap_or_else(|| "other".into());
    let tl = &drill.timeline;
    let x = w.drill_node;

    // The clients of the drill node at t0 (victims) and the others.
    let (mut victims, mut back, mut v_true, mut v_false) = (0u64, Vec::new(), 0u64, 0u64);
    let mut v_reasons = BTreeMap::new();
    let mut v_on = BTreeMap::new();
    // Attempts of the victims that were refused or timed out after t0 (the dead node's
    // address, until imclient stops handing it out).
    let mut v_failed = 0u64;
    let (mut others, mut others_disconnected) = (0u64, 0u64);
    let mut others_codes = BTreeMap::new();
    // Moved: closed with 4003 after t0.
    let (mut moved, mut m_true, mut m_false, mut m_none, mut m_not_back) = (0u64, 0, 0, 0, 0);
    let mut m_reasons = BTreeMap::new();
    let mut m_to = BTreeMap::new();
    let mut clients_disconnected = 0u64;
    let (mut after_true, mut after_false) = (0u64, 0u64);
    let mut after_reasons = BTreeMap::new();
    for log in logs {
        let node = log.node_at(t0);
        let victim = x.is_some() && node == x;
        if victim {
            victims += 1;
            v_failed += log
                .events
                .iter()
                .filter(|e| matches!(e, Event::Failed { at } if *at > t0))
                .count() as u64;
            let came_back = log
                .welcomes()
                .find(|(at, wl)| *at > t0 && Some(wl.node) != x);
            if let Some((at, wl)) = came_back {
                back.push(at - t0);
                count(&mut v_on, name(wl.node));
                match wl.recovered {
                    Some(true) => v_true += 1,
                    _ => {
                        v_false += 1;
                        count(&mut v_reasons, wl.reason.clone().unwrap_or_default());
                    }
                }
            }
        } else if node.is_some() {
            others += 1;
            let mut any = false;
            for (_, code) in log.closes_from(w.ready_ms) {
                any = true;
                count(&mut others_codes, code_key(code));
            }
            others_disconnected += u64::from(any);
        }
        clients_disconnected += u64::from(log.closes_from(t0).next().is_some());
        if let Some((at, _)) = log.closes_from(t0).find(|(_, c)| *c == Some(4003)) {
            moved += 1;
            match log.first_welcome_after(at) {
                Some((_, wl)) => {
                    count(&mut m_to, name(wl.node));
                    match wl.recovered {
                        Some(true) => m_true += 1,
                        Some(false) => {
                            m_false += 1;
                            count(&mut m_reasons, wl.reason.clone().unwrap_or_default());
                        }
                        None => m_none += 1,
                    }
                }
                None => m_not_back += 1,
            }
        }
        for (_, wl) in log.welcomes().filter(|(at, _)| *at > t0) {
            match wl.recovered {
                Some(true) => after_true += 1,
                _ => {
                    after_false += 1;
                    count(&mut after_reasons, wl.reason.clone().unwrap_or_default());
                }
            }
        }
    }
    back.sort_unstable();
    let pct = |q: f64| -> Option<u64> {
        (!back.is_empty()).then(|| back[((back.len() - 1) as f64 * q).round() as usize])
    };
    let other_groups = tl.occupied(|g, _| Some(g) != x);
    // Every close after t0 to the client's next welcome: how long it was away.
    let mut away: Vec<u64> = logs
        .iter()
        .flat_map(|log| {
            log.closes_from(t0)
                .filter_map(|(at, _)| log.first_welcome_after(at).map(|(back, _)| back - at))
                .collect::<Vec<_>>()
        })
        .collect();
    away.sort_unstable();
    let away_pct = |q: f64| -> Option<u64> {
        (!away.is_empty()).then(|| away[((away.len() - 1) as f64 * q).round() as usize])
    };
    // The longest pause in the deliveries to one group of clients (those first on one node),
    // before and after t0: a pause of all clients together hides one group's.
    let groups: std::collections::BTreeSet<usize> =
        logs.iter().filter_map(|log| log.start_node).collect();
    let group_gap = |from: u64, to: u64| {
        groups
            .iter()
            .map(|&g| tl.max_gap(&tl.occupied(|h, _| h == g), from, to))
            .max()
            .unwrap_or(0)
    };
    json!({
        "mark": w.marks.first().map(|(n, _)| n.clone()),
        "at_ms": t0 as i64 - w.ready_ms as i64,
        "node": x.map(name),
        "victims": victims,
        "victims_back": back.len(),
        "back_ms_p50": pct(0.5),
        "back_ms_p90": pct(0.9),
        "back_ms_max": back.last(),
        "victims_back_on": v_on,
        "victims_recovered_true": v_true,
        "victims_recovered_false": v_false,
        "victims_reasons": v_reasons,
        "victims_failed_attempts": v_failed,
        "others": others,
        "others_disconnected": others_disconnected,
        "others_close_codes": others_codes,
        "others_max_gap_ms": tl.max_gap(&other_groups, t0, w.end_ms),
        "others_max_gap_before_ms": tl.max_gap(&other_groups, w.ready_ms, t0),
        "all_max_gap_ms": tl.max_gap(all, t0, w.end_ms),
        "group_max_gap_ms": group_gap(t0, w.end_ms),
        "group_max_gap_before_ms": group_gap(w.ready_ms, t0),
        "reconnects": away.len(),
        "reconnect_ms_p50": away_pct(0.5),
        "reconnect_ms_p90": away_pct(0.9),
        "reconnect_ms_max": away.last(),
        "clients_disconnected": clients_disconnected,
        "moved": moved,
        "moved_fraction": moved as f64 / logs.len().max(1) as f64,
        "moved_recovered_true": m_true,
        "moved_recovered_false": m_false,
        "moved_without_recovered": m_none,
        "moved_reasons": m_reasons,
        "moved_not_back": m_not_back,
        "moved_to": m_to,
        "welcomes_after": { "recovered_true": after_true, "recovered_false": after_false,
                            "reasons": after_reasons },
    })
}
