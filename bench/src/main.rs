//! imbench: opens many WebSocket connections to imserver nodes (each URL from
//! `prev_connect_server`), drives traffic through imclient at a fixed rate for a fixed time,
//! records delivery latency in an HDR histogram, reads the nodes' RSS and CPU from /proc, and
//! prints one JSON line per run.

#![allow(clippy::print_stdout)] // the report is the one JSON line on stdout

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use imclient::{ImClient, ImClientArgs};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

mod wire;

/// What traffic to drive.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Workload {
    /// Private messages to random connected clients.
    Private,
    /// One channel whose members are all the clients.
    Channel,
    /// Many small channels (`--chan-size` members each); each message to a random one.
    SmallChannels,
}

#[derive(Debug, Parser)]
#[command(name = "imbench", about = "Load generator for imserver")]
struct Args {
    #[command(flatten)]
    im: ImClientArgs,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Workload.
    #[arg(long, value_enum, default_value = "private")]
    workload: Workload,
    /// Messages sent per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to send, seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Payload size in bytes (padding added to the timestamp).
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Members per channel for the small-channels workload.
    #[arg(long, default_value_t = 10)]
    chan_size: usize,
    /// Pids of the nodes, to read RSS and CPU from /proc.
    #[arg(long, value_delimiter = ',')]
    node_pid: Vec<u32>,
}

/// Shared counters and latency histograms of the readers.
struct Stats {
    received: AtomicU64,
    /// Sharded so thousands of reader tasks rarely contend.
    latency: Vec<Mutex<Histogram<u64>>>,
}

const LATENCY_SHARDS: usize = 16;

/// The name of benchmark channel `g`; unique to this run, so runs sharing a Redis do not see
/// each other's memberships.
fn chan_name(g: usize) -> String {
    format!("{}{g}", chan_prefix())
}

/// What this run's channel names start with.
fn chan_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| format!("bench:{}:", now_ns() % 1_000_000_007))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Seconds of CPU (user + system) used by `pid`, from /proc.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Resident memory of `pid` in KiB, from /proc.
fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn nodes_sum(pids: &[u32], f: impl Fn(&str) -> Option<f64>) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| f(&p.to_string())).sum()
}

async fn connect(im: &ImClient, i: usize, stats: Arc<Stats>) -> Result<()> {
    let client = format!("c{i}");
    let url = im.prev_connect_server(&client, serde_json::Value::Null)?;
    let rest = url.strip_prefix("ws://").context("only ws:// URLs")?;
    let (host, path) = rest.split_once('/').context("no path in the connect URL")?;
    let target: std::net::SocketAddr = tokio::net::lookup_host(host)
        .await?
        .next()
        .context("no address")?;
    // Spread source addresses over 127.0.0.x so a bigger machine is not capped by one
    // source address's ephemeral ports.
    let socket = TcpSocket::new_v4()?;
    if target.ip().is_loopback() {
        socket.bind(std::net::SocketAddr::from((
            [127, 0, 0, (2 + i % 250) as u8],
            0,
        )))?;
    }
    let tcp = socket.connect(target).await?;
    tcp.set_nodelay(true)?;
    let mut ws = wire::Socket::upgrade(tcp, host, &format!("/{path}")).await?;
    let mut welcomed = false;
    ws.read(|text| {
        welcomed = wire::find_str(text, "welcome");
        wire::Flow::Stop
    })
    .await?;
    if !welcomed {
        bail!("the first frame was not a welcome");
    }
    tokio::spawn(async move {
        let shard = &stats.latency[i % LATENCY_SHARDS];
        let _ = ws
            .read(|text| {
                if let Some(t) = wire::sent_at(text) {
                    let micros = now_ns().saturating_sub(t) / 1000;
                    stats.received.fetch_add(1, Relaxed);
                    let _ = lock(shard).record(micros.max(1));
                }
                wire::Flow::Continue
            })
            .await;
    });
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let im = args.im.client()?;
    let stats = Arc::new(Stats {
        received: AtomicU64::new(0),
        latency: (0..LATENCY_SHARDS)
            .map(|_| Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")))
            .collect(),
    });
    let me = std::process::id().to_string();

    // Memberships are durable: set them up before anyone connects.
    let groups = match args.workload {
        Workload::Private => 0,
        Workload::Channel => 1,
        Workload::SmallChannels => args.clients.div_ceil(args.chan_size.max(1)),
    };
    for g in 0..groups {
        let members: Vec<String> = match args.workload {
            Workload::Channel => (0..args.clients).map(|i| format!("c{i}")).collect(),
            _ => (g * args.chan_size..((g + 1) * args.chan_size).min(args.clients))
                .map(|i| format!("c{i}"))
                .collect(),
        };
        im.join_chan_many(&members, &chan_name(g)).await?;
    }

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (im, stats, gate) = (im.clone(), stats.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            connect(&im, i, stats).await
        }));
    }
    let mut connected = 0usize;
    let mut first_error = None;
    for t in tasks {
        match t.await? {
            Ok(()) => connected += 1,
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Channel messages reach only members whose channels the nodes have loaded: wait for it.
    if groups > 0 {
        let ready_by = Instant::now() + Duration::from_secs(60);
        loop {
            let chans = im.chans().await?;
            let online: u64 = chans
                .iter()
                .filter(|c| c.chan.as_str().starts_with(chan_prefix()))
                .map(|c| c.online)
                .sum();
            if online >= connected as u64 {
                break;
            }
            if Instant::now() > ready_by {
                bail!("only {online} of {connected} members online in their channels after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let rss_idle = nodes_sum(&args.node_pid, |p| rss_kib(p).map(|v| v as f64));
    let node_cpu_before = nodes_sum(&args.node_pid, cpu_secs);
    let tool_cpu_before = cpu_secs(&me).unwrap_or(0.0);

    // Send at a fixed rate in 10 ms ticks.
    let pad = "x".repeat(args.payload_bytes.saturating_sub(30));
    let tick = Duration::from_millis(10);
    let per_tick = args.rate as f64 / 100.0;
    let send_start = Instant::now();
    let send_for = Duration::from_secs_f64(args.duration);
    let mut interval = tokio::time::interval(tick);
    let mut sent = 0u64;
    let mut owed = 0.0f64;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut send_errors = 0u64;
    let mut expected = 0u64;
    while send_start.elapsed() < send_for && connected > 0 {
        interval.tick().await;
        owed += per_tick;
        let n = owed as u64;
        owed -= n as f64;
        let batch: Vec<_> = (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let im = im.clone();
                let payload = serde_json::json!({ "t": now_ns(), "p": pad });
                let (workload, clients, chan_size) =
                    (args.workload, args.clients as u64, args.chan_size as u64);
                async move {
                    match workload {
                        Workload::Private => {
                            let to = format!("c{}", rng % clients);
                            im.send_message("bench", [to], &payload, false)
                                .await
                                .map(|_| 1)
                        }
                        Workload::Channel => im
                            .send_chan_message("bench", &chan_name(0), &payload, false)
                            .await
                            .map(|_| clients),
                        Workload::SmallChannels => {
                            let g = rng % groups as u64;
                            let members = chan_size.min(clients - g * chan_size);
                            im.send_chan_message("bench", &chan_name(g as usize), &payload, false)
                                .await
                                .map(|_| members)
                        }
                    }
                }
            })
            .collect();
        for r in futures_util::future::join_all(batch).await {
            match r {
                Ok(receivers) => {
                    sent += 1;
                    expected += receivers;
                }
                Err(_) => send_errors += 1,
            }
        }
    }
    let send_secs = send_start.elapsed().as_secs_f64();
    let drain_end = Instant::now() + Duration::from_secs(5);
    while stats.received.load(Relaxed) < expected && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received = stats.received.load(Relaxed);
    let rss_load = nodes_sum(&args.node_pid, |p| rss_kib(p).map(|v| v as f64));
    let node_cpu = nodes_sum(&args.node_pid, cpu_secs)
        .zip(node_cpu_before)
        .map(|(a, b)| a - b);
    let tool_cpu = cpu_secs(&me).unwrap_or(0.0) - tool_cpu_before;

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for shard in &stats.latency {
        hist.add(&*lock(shard))?;
    }
    let report = serde_json::json!({
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "clients": connected,
        "connect_errors": args.clients - connected,
        "first_connect_error": first_error,
        "connect_secs": connect_secs,
        "connects_per_sec": connected as f64 / connect_secs,
        "rate_target": args.rate,
        "sent": sent,
        "send_errors": send_errors,
        "send_rate": sent as f64 / send_secs,
        "deliveries_expected": expected,
        "deliveries_received": received,
        "loss": expected.saturating_sub(received),
        "extra": received.saturating_sub(expected),
        "deliveries_per_sec": received as f64 / send_secs,
        "latency_us": { "p50": hist.value_at_quantile(0.5), "p90": hist.value_at_quantile(0.9),
                        "p99": hist.value_at_quantile(0.99), "max": hist.max() },
        "node_rss_idle_kib": rss_idle,
        "node_rss_load_kib": rss_load,
        "node_rss_per_conn_bytes": rss_idle.map(|r| r * 1024.0 / connected.max(1) as f64),
        "node_cpu_secs": node_cpu,
        "node_cpu_us_per_delivery": node_cpu.map(|c| c * 1e6 / received.max(1) as f64),
        "tool_cpu_secs": tool_cpu,
        "tool_cpu_us_per_delivery": tool_cpu * 1e6 / received.max(1) as f64,
    });
    println!("{report}");
    Ok(())
}
