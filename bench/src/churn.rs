//! The churn workload: every client connects, stays a random time, disconnects (a clean close,
//! a plain TCP close without a close frame, or a TCP reset), stays away a random time and
//! connects again with a fresh URL, for `--duration` seconds, while messages flow to random
//! clients and to a few channels. Each connection checks that its envelopes follow the
//! welcome's `seq` one by one (no duplicate, nothing out of order, no gap). At the end every
//! client disconnects and one JSON line reports what happened. For soak tests
//! (`scripts/soak.sh`): afterwards the node should hold no trace of any of it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use imclient::ImClient;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{
    Args, CONNECT_TIMEOUT, LATENCY_SHARDS, MAX_IN_FLIGHT, chan_name, cpu_secs, join_round_robin,
    lock, nodes_sum, now_ns, open_ws, rss_kib, wire,
};

/// How long a clean close waits for the server's close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the clients get, after the run, to finish their last disconnect (a connect under
/// way may take up to `CONNECT_TIMEOUT`); past it they are aborted and reported.
const FINISH_TIMEOUT: Duration = Duration::from_secs(45);
/// Extra wait after a failed connect, on top of the away time.
const ERROR_BACKOFF: Duration = Duration::from_millis(500);

/// What the workload is given.
struct Churn {
    im: ImClient,
    clients: usize,
    chans: usize,
    stay: (f64, f64),
    away: (f64, f64),
    clean_percent: u64,
    end: Instant,
    gate: Semaphore,
    counts: Counts,
    latency: Vec<Mutex<Histogram<u64>>>,
    first_connect_error: Mutex<Option<String>>,
    /// Close codes of the connections the server closed (0: a close frame without a code;
    /// connections that ended without a close frame are `read_errors` or `server_eof`).
    server_close_codes: Mutex<BTreeMap<u16, u64>>,
}

/// Counters over all clients.
#[derive(Default)]
struct Counts {
    connects: AtomicU64,
    connect_errors: AtomicU64,
    /// Disconnects the tool chose, by kind.
    clean_closes: AtomicU64,
    tcp_closes: AtomicU64,
    tcp_resets: AtomicU64,
    /// Clean closes whose close frame the server did not answer within `CLOSE_TIMEOUT`.
    close_unanswered: AtomicU64,
    /// Connections the server ended: with a close frame, without one, or with a read error.
    server_closes: AtomicU64,
    server_eof: AtomicU64,
    read_errors: AtomicU64,
    online: AtomicU64,
    peak_online: AtomicU64,
    deliveries: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    gaps: AtomicU64,
    missing: AtomicU64,
    /// Envelopes without a `seq` (all should have one; system frames are not counted).
    no_seq: AtomicU64,
    /// Connections that saw at least one duplicate, reordering or gap.
    bad_connections: AtomicU64,
}

/// The sequence check of one connection: envelopes must follow the welcome's `seq` one by one.
struct SeqCheck {
    last: u64,
    deliveries: u64,
    duplicates: u64,
    out_of_order: u64,
    gaps: u64,
    missing: u64,
    no_seq: u64,
}

impl SeqCheck {
    fn new(welcome_seq: u64) -> Self {
        Self {
            last: welcome_seq,
            deliveries: 0,
            duplicates: 0,
            out_of_order: 0,
            gaps: 0,
            missing: 0,
            no_seq: 0,
        }
    }

    /// Checks one text frame. System frames (pong) carry no top-level `seq` and no send time.
    fn frame(&mut self, text: &[u8]) -> Option<u64> {
        let sent = wire::sent_at(text);
        match wire::seq_of(text) {
            Some(seq) => {
                self.deliveries += 1;
                if seq == self.last + 1 {
                } else if seq > self.last {
                    self.gaps += 1;
                    self.missing += seq - self.last - 1;
                } else if seq == self.last {
                    self.duplicates += 1;
                } else {
                    self.out_of_order += 1;
                }
                self.last = self.last.max(seq);
            }
            None if sent.is_some() => {
                self.deliveries += 1;
                self.no_seq += 1;
            }
            None => {}
        }
        sent
    }

    fn add_to(&self, counts: &Counts) {
        counts.deliveries.fetch_add(self.deliveries, Relaxed);
        counts.duplicates.fetch_add(self.duplicates, Relaxed);
        counts.out_of_order.fetch_add(self.out_of_order, Relaxed);
        counts.gaps.fetch_add(self.gaps, Relaxed);
        counts.missing.fetch_add(self.missing, Relaxed);
        counts.no_seq.fetch_add(self.no_seq, Relaxed);
        if self.duplicates + self.out_of_order + self.gaps + self.no_seq > 0 {
            counts.bad_connections.fetch_add(1, Relaxed);
        }
    }
}

/// A small xorshift generator: the tool needs spread, not quality.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so neighbouring seeds start far apart; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in [lo, hi] seconds.
    fn secs(&mut self, (lo, hi): (f64, f64)) -> Duration {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64(lo + (hi - lo) * unit)
    }
}

/// A `MIN,MAX` range of seconds from the command line.
fn range(name: &str, v: &[f64]) -> Result<(f64, f64)> {
    match v {
        [lo, hi] if lo.is_finite() && hi.is_finite() && 0.0 <= *lo && lo <= hi => Ok((*lo, *hi)),
        _ => bail!("--{name} takes MIN,MAX seconds with 0 <= MIN <= MAX, got {v:?}"),
    }
}

/// Opens connection number `n` of client `i` and reads its welcome: the socket and the
/// welcome's `seq`.
async fn connect(im: &ImClient, i: usize, n: usize) -> Result<(wire::Socket, u64)> {
    let url = im.prev_connect_server(&format!("c{i}"), serde_json::Value::Null)?;
    // Spread over source addresses by connection too, so reconnects do not pile on one.
    let mut ws = open_ws(&url, i.wrapping_add(n.wrapping_mul(7))).await?;
    let mut welcome = None;
    ws.read(|text| {
        if wire::find_str(text, "welcome") {
            welcome = wire::seq_of(text);
        }
        wire::Flow::Stop
    })
    .await?;
    let seq = welcome.context("the first frame was not a welcome with a seq")?;
    Ok((ws, seq))
}

impl Churn {
    fn connect_error(&self, e: &anyhow::Error) {
        self.counts.connect_errors.fetch_add(1, Relaxed);
        lock(&self.first_connect_error).get_or_insert_with(|| format!("{e:#}"));
    }

    /// Client `i`: connect, stay, disconnect, stay away, until the end of the run.
    async fn client(self: Arc<Self>, i: usize) {
        let c = &*self;
        let mut rng = Rng::new(now_ns() ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let shard = &c.latency[i % LATENCY_SHARDS];
        // Start spread over the first away range, so not every client connects at once.
        let first = (Instant::now() + rng.secs(c.away)).min(c.end);
        tokio::time::sleep_until(first.into()).await;
        let mut n = 0usize;
        while Instant::now() < c.end {
            n += 1;
            let connected = {
                let Ok(_permit) = c.gate.acquire().await else {
                    return;
                };
                tokio::time::timeout(CONNECT_TIMEOUT, connect(&c.im, i, n)).await
            };
            let (mut ws, welcome_seq) = match connected {
                Ok(Ok(open)) => open,
                Ok(Err(e)) => {
                    c.connect_error(&e);
                    let retry = (Instant::now() + ERROR_BACKOFF + rng.secs(c.away)).min(c.end);
                    tokio::time::sleep_until(retry.into()).await;
                    continue;
                }
                Err(_) => {
                    c.connect_error(&anyhow::anyhow!("no connection in {CONNECT_TIMEOUT:?}"));
                    continue;
                }
            };
            c.counts.connects.fetch_add(1, Relaxed);
            let online = c.counts.online.fetch_add(1, Relaxed) + 1;
            c.counts.peak_online.fetch_max(online, Relaxed);

            let mut seqs = SeqCheck::new(welcome_seq);
            let mut on_text = |text: &[u8]| {
                if let Some(t) = seqs.frame(text) {
                    let micros = now_ns().saturating_sub(t) / 1000;
                    let _ = lock(shard).record(micros.max(1));
                }
                wire::Flow::Continue
            };
            let until = (Instant::now() + rng.secs(c.stay)).min(c.end);
            let read = tokio::time::timeout_at(until.into(), ws.read(&mut on_text)).await;
            match read {
                // Time to go: the tool disconnects, one of three ways.
                Err(_) => {
                    let kind = rng.below(100);
                    if kind < c.clean_percent {
                        c.counts.clean_closes.fetch_add(1, Relaxed);
                        let answered = async {
                            ws.send_close(1000).await?;
                            // Deliveries may still come before the server's close frame.
                            ws.read(&mut on_text).await?;
                            anyhow::Ok(ws.close_code().is_some())
                        };
                        if !matches!(
                            tokio::time::timeout(CLOSE_TIMEOUT, answered).await,
                            Ok(Ok(true))
                        ) {
                            c.counts.close_unanswered.fetch_add(1, Relaxed);
                        }
                    } else if kind < c.clean_percent + (100 - c.clean_percent) / 2 {
                        c.counts.tcp_closes.fetch_add(1, Relaxed);
                        drop(ws);
                    } else {
                        c.counts.tcp_resets.fetch_add(1, Relaxed);
                        ws.reset();
                    }
                }
                Ok(Ok(_)) => {
                    c.counts.server_closes.fetch_add(1, Relaxed);
                    match ws.close_code() {
                        Some(code) => *lock(&c.server_close_codes).entry(code).or_default() += 1,
                        None => {
                            c.counts.server_eof.fetch_add(1, Relaxed);
                        }
                    }
                }
                Ok(Err(_)) => {
                    c.counts.server_closes.fetch_add(1, Relaxed);
                    c.counts.read_errors.fetch_add(1, Relaxed);
                }
            }
            seqs.add_to(&c.counts);
            c.counts.online.fetch_sub(1, Relaxed);
            let back = (Instant::now() + rng.secs(c.away)).min(c.end);
            tokio::time::sleep_until(back.into()).await;
        }
    }
}

/// Runs the churn workload and prints its report.
pub async fn run(args: &Args, im: ImClient) -> Result<()> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    let stay = range("stay-secs", &args.stay_secs)?;
    let away = range("away-secs", &args.away_secs)?;
    ensure!(
        args.clean_close_percent <= 100 && args.chan_percent <= 100,
        "percentages are 0 to 100"
    );
    let chans = args.chans.min(args.clients);
    let me = std::process::id().to_string();
    let rss = || nodes_sum(&args.node_pid, |p| rss_kib(p).map(|v| v as f64));

    // Memberships are durable: set them up before anyone connects.
    join_round_robin(&im, args.clients, chans).await?;

    let rss_start = rss();
    let node_cpu_before = nodes_sum(&args.node_pid, cpu_secs);
    let tool_cpu_before = cpu_secs(&me).unwrap_or(0.0);
    let started = Instant::now();
    let run_for = Duration::from_secs_f64(args.duration.max(0.0));
    let churn = Arc::new(Churn {
        im,
        clients: args.clients,
        chans,
        stay,
        away,
        clean_percent: args.clean_close_percent,
        end: started + run_for,
        gate: Semaphore::new(args.connect_concurrency.max(1)),
        counts: Counts::default(),
        latency: (0..LATENCY_SHARDS)
            .map(|_| Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")))
            .collect(),
        first_connect_error: Mutex::new(None),
        server_close_codes: Mutex::new(BTreeMap::new()),
    });
    let mut clients = JoinSet::new();
    for i in 0..args.clients {
        clients.spawn(churn.clone().client(i));
    }

    // Messages at a fixed rate, topped up every 10 ms, as in the other workloads.
    let pad = "x".repeat(args.payload_bytes.saturating_sub(30));
    let mut sends = futures_util::stream::FuturesUnordered::new();
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let mut rng = Rng::new(now_ns());
    let (mut created, mut sent_private, mut sent_chan, mut send_errors) = (0u64, 0u64, 0u64, 0u64);
    let mut first_send_error: Option<String> = None;
    let mut rss_peak = rss_start;
    let mut next_report = Duration::from_secs(10);
    loop {
        let elapsed = started.elapsed();
        if elapsed >= run_for {
            break;
        }
        if elapsed >= next_report {
            next_report += Duration::from_secs(10);
            let r = rss();
            rss_peak = higher(rss_peak, r);
            let k = &churn.counts;
            eprintln!(
                "churn {:>4.0} s: online {}, connects {}, connect errors {}, sent {}, \
                 deliveries {}, node RSS {} KiB",
                elapsed.as_secs_f64(),
                k.online.load(Relaxed),
                k.connects.load(Relaxed),
                k.connect_errors.load(Relaxed),
                sent_private + sent_chan,
                k.deliveries.load(Relaxed),
                r.map_or("?".into(), |r| format!("{r:.0}")),
            );
        }
        let due = (elapsed.as_secs_f64() * args.rate as f64).ceil() as u64;
        while created < due && sends.len() < MAX_IN_FLIGHT {
            created += 1;
            let to_chan = rng.below(100) < args.chan_percent;
            let to = if to_chan {
                rng.below(chans as u64)
            } else {
                rng.below(args.clients as u64)
            };
            let payload = serde_json::json!({ "t": now_ns(), "p": pad });
            let churn = churn.clone();
            sends.push(async move {
                let done = if to_chan {
                    churn
                        .im
                        .send_chan_message("bench", &chan_name(to as usize), &payload, false)
                        .await
                        .map(drop)
                        .map_err(anyhow::Error::from)
                } else {
                    churn
                        .im
                        .send_message("bench", [format!("c{to}")], &payload, false)
                        .await
                        .map(drop)
                        .map_err(anyhow::Error::from)
                };
                (to_chan, done)
            });
        }
        tokio::select! {
            _ = interval.tick() => {}
            Some(done) = sends.next(), if !sends.is_empty() => {
                tally(done, &mut sent_private, &mut sent_chan, &mut send_errors, &mut first_send_error);
            }
        }
    }
    while let Some(done) = sends.next().await {
        tally(
            done,
            &mut sent_private,
            &mut sent_chan,
            &mut send_errors,
            &mut first_send_error,
        );
    }
    let send_secs = started.elapsed().as_secs_f64();
    rss_peak = higher(rss_peak, rss());

    // Every client disconnects by itself at the end; give them a bounded time to.
    let finish_by = tokio::time::Instant::now() + FINISH_TIMEOUT;
    let mut unfinished = 0usize;
    loop {
        match tokio::time::timeout_at(finish_by, clients.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                unfinished = clients.len();
                clients.abort_all();
                break;
            }
        }
    }
    let rss_end = rss();
    let node_cpu = nodes_sum(&args.node_pid, cpu_secs)
        .zip(node_cpu_before)
        .map(|(a, b)| a - b);
    let tool_cpu = cpu_secs(&me).unwrap_or(0.0) - tool_cpu_before;

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for shard in &churn.latency {
        hist.add(&*lock(shard))?;
    }
    let k = &churn.counts;
    let load = |a: &AtomicU64| a.load(Relaxed);
    let received = load(&k.deliveries);
    let close_codes: serde_json::Map<String, serde_json::Value> = lock(&churn.server_close_codes)
        .iter()
        .map(|(code, n)| (code.to_string(), (*n).into()))
        .collect();
    let mut report = serde_json::json!({
        "server": "imserver",
        "workload": "churn",
        "clients": churn.clients,
        "chans": churn.chans,
        "duration_secs": send_secs,
        "stay_secs": [stay.0, stay.1],
        "away_secs": [away.0, away.1],
        "connects": load(&k.connects),
        "connects_per_sec": load(&k.connects) as f64 / send_secs,
        "connect_errors": load(&k.connect_errors),
        "first_connect_error": lock(&churn.first_connect_error).clone(),
        "peak_online": load(&k.peak_online),
        "disconnects": load(&k.clean_closes) + load(&k.tcp_closes) + load(&k.tcp_resets)
            + load(&k.server_closes),
        "clean_closes": load(&k.clean_closes),
        "clean_closes_unanswered": load(&k.close_unanswered),
        "tcp_closes": load(&k.tcp_closes),
        "tcp_resets": load(&k.tcp_resets),
        "server_closes": load(&k.server_closes),
        "server_close_codes": close_codes,
        "server_eof": load(&k.server_eof),
        "read_errors": load(&k.read_errors),
        "clients_unfinished": unfinished,
    });
    // In two parts: one json! this long passes the macro recursion limit.
    let messages = serde_json::json!({
        "rate_target": args.rate,
        "sent": sent_private + sent_chan,
        "sent_private": sent_private,
        "sent_chan": sent_chan,
        "send_errors": send_errors,
        "first_send_error": first_send_error,
        "send_rate": (sent_private + sent_chan) as f64 / send_secs,
        "deliveries_received": received,
        "deliveries_per_sec": received as f64 / send_secs,
        "duplicates": load(&k.duplicates),
        "out_of_order": load(&k.out_of_order),
        "gaps": load(&k.gaps),
        "missing_in_gaps": load(&k.missing),
        "no_seq": load(&k.no_seq),
        "connections_with_seq_errors": load(&k.bad_connections),
        "latency_us": { "p50": hist.value_at_quantile(0.5), "p90": hist.value_at_quantile(0.9),
                        "p99": hist.value_at_quantile(0.99), "max": hist.max() },
        "node_rss_start_kib": rss_start,
        "node_rss_peak_kib": rss_peak,
        "node_rss_end_kib": rss_end,
        "node_cpu_secs": node_cpu,
        "tool_cpu_secs": tool_cpu,
    });
    if let (serde_json::Value::Object(report), serde_json::Value::Object(messages)) =
        (&mut report, messages)
    {
        report.extend(messages);
    }
    println!("{report}");
    Ok(())
}

/// The higher of two readings, either of which may be missing.
fn higher(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => a.or(b),
    }
}

/// Counts one finished send.
fn tally(
    (to_chan, done): (bool, Result<()>),
    sent_private: &mut u64,
    sent_chan: &mut u64,
    send_errors: &mut u64,
    first_send_error: &mut Option<String>,
) {
    match done {
        Ok(()) if to_chan => *sent_chan += 1,
        Ok(()) => *sent_private += 1,
        Err(e) => {
            *send_errors += 1;
            first_send_error.get_or_insert(format!("{e:#}"));
        }
    }
}
