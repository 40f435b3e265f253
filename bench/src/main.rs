//! imbench: opens many WebSocket connections to imserver nodes (each URL from
//! `prev_connect_server`), drives traffic through imclient at a fixed rate for a fixed time,
//! records delivery latency in an HDR histogram, reads the nodes' RSS and CPU from /proc, and
//! prints one JSON line per run. With `--pusher-addr` it drives a Pusher-protocol peer
//! (Sockudo) through the same workloads instead, for side-by-side figures (`pusher.rs`).
//! `--workload churn` (imserver only) has clients come and go at random for the whole run
//! instead, for soak tests (`churn.rs`, `scripts/soak.sh`). `--workload drill` holds every
//! client connected, reconnecting as a browser should, while `scripts/chaos.sh` kills nodes
//! or Redis, and reports what the clients saw (`drill/`).
//! `--workload api-send` measures a private send through the node's HTTP API against imclient
//! called directly (`api.rs`, `scripts/bench-api.sh`).
//! With `--floor-addr` it drives imfloor, the floor a delivery is measured against, through
//! the private, channel and small-channels workloads, its messages on one feed connection
//! (`feeder.rs`, `scripts/bench-floor.sh`).
//! `--procs N` runs the tool as N processes (one process's open-file limit caps its
//! connections), each opening its share of the clients, and merges their reports, latency
//! histograms included, into one line (`shard.rs`; the drill merges its own, `drill/shards.rs`).

#![allow(clippy::print_stdout)] // the report is the one JSON line on stdout

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use imclient::{ImClient, ImClientArgs};
use tokio::net::TcpSocket;

mod api;
mod backoff;
mod churn;
mod drill;
mod feeder;
mod pusher;
mod shard;
mod steady;
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
    /// Broadcasts to every online client of every node (imserver only): `--rate` per second
    /// for `--duration` seconds; the latency's max is the time until the last client had one.
    Broadcast,
    /// Clients connect, stay a random time, disconnect and come back, for the whole run,
    /// while messages go to random clients and to `--chans` channels (a soak test).
    Churn,
    /// Every client stays connected and reconnects (with `since`) whenever its connection
    /// ends, while messages go to random clients and to `--chans` channels; reports what the
    /// clients saw around the `--drill-marks` (`scripts/chaos.sh`).
    Drill,
    /// `--messages` private messages to random connected clients at `--concurrency` in flight,
    /// sent one way per run (`--send-via`): through imclient from this process, or through the
    /// node's HTTP API; reports calls/s, call latency, the caller's and the nodes' CPU per call.
    ApiSend,
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
    /// Drive a Pusher-protocol peer (e.g. Sockudo) instead of imserver: its nodes' addresses.
    /// Connections and publishes are spread over them round robin.
    #[arg(long, value_delimiter = ',')]
    pusher_addr: Vec<std::net::SocketAddr>,
    /// Drive imfloor (the floor: the leanest server writing imserver's frames) at this address
    /// instead of imserver: clients connect to it, messages go to it on one feed connection.
    #[arg(long, conflicts_with = "pusher_addr")]
    floor_addr: Option<std::net::SocketAddr>,
    /// The peer's app id.
    #[arg(long, default_value = "bench")]
    pusher_app: String,
    /// The peer's app key.
    #[arg(long, default_value = "bench-key")]
    pusher_key: String,
    /// The peer's app secret.
    #[arg(long, default_value = "bench-secret")]
    pusher_secret: String,
    /// HTTP connections the peer's events are published over (one request at a time on each).
    #[arg(long, default_value_t = 64)]
    pusher_conns: usize,
    /// Events per publish to the peer: 1 uses its events API (one event per request), more
    /// its batch_events API (Pusher allows up to 10).
    #[arg(long, default_value_t = 1)]
    pusher_batch: usize,
    /// Churn: how long a client stays connected, MIN,MAX seconds (uniform).
    #[arg(long, value_delimiter = ',', default_values_t = [0.5, 10.0])]
    stay_secs: Vec<f64>,
    /// Churn: how long a client stays away between connections, MIN,MAX seconds (uniform).
    #[arg(long, value_delimiter = ',', default_values_t = [0.05, 2.0])]
    away_secs: Vec<f64>,
    /// Churn: percentage of disconnects that are clean (close frame, then the server's); the
    /// rest are half TCP closes without a close frame and half TCP resets.
    #[arg(long, default_value_t = 50)]
    clean_close_percent: u64,
    /// Churn: channels; client i is a member of channel i % chans.
    #[arg(long, default_value_t = 8)]
    chans: usize,
    /// Churn: percentage of the messages that go to a channel (the rest to one client each).
    #[arg(long, default_value_t = 10)]
    chan_percent: u64,
    /// Drill: the file the script appends `<name> <unix ms>` lines to as it breaks things;
    /// read at the end, the figures are relative to the first line.
    #[arg(long)]
    drill_marks: Option<std::path::PathBuf>,
    /// Drill: the node the action is aimed at (e.g. the one killed): its clients at the first
    /// mark are followed to their new node.
    #[arg(long)]
    drill_node: Option<String>,
    /// Drill: how many of the clients have their home on `--drill-node` (the rest on the other
    /// nodes), instead of an even spread: one node loaded for a storm of reconnects.
    #[arg(long)]
    drill_load: Option<usize>,
    /// Api-send: how the messages are sent.
    #[arg(long, value_enum, default_value = "imclient")]
    send_via: api::SendVia,
    /// Api-send: messages to send (after a warm-up of 64 that is not measured).
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Api-send: calls in flight at once (each HTTP call on its own keep-alive connection).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Api-send: calls per second in all, spread over the `--concurrency` senders (0: as fast
    /// as they go). Both ways at the same rate, so that neither is measured at a load where
    /// batching makes its calls cheaper than the other's.
    #[arg(long, default_value_t = 0)]
    call_rate: u64,
    /// Api-send: the node's API address (its `--api-listen`), for `--send-via http`.
    #[arg(long)]
    api_addr: Option<std::net::SocketAddr>,
    /// Api-send: the API key (one of the node's `--api-key`).
    #[arg(long, env = "IM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// How long to wait for the last deliveries after sending ends, seconds.
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,
    /// Run as this many processes of this tool, each opening its share of `--clients` (client
    /// ids do not collide), and print one report merged from theirs (latency histograms
    /// merged; node RSS per node before and after connecting). For more connections than one
    /// process's open-file limit allows. Private, channel, broadcast and drill workloads only
    /// (the drill's shards each send their share of the messages; `drill/shards.rs`).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Internal (set by `--procs`): this process is shard I of N; it opens clients
    /// [clients*I/N, clients*(I+1)/N) and takes its start and stop from stdin.
    #[arg(long, value_parser = shard::parse_shard, hide = true)]
    shard: Option<shard::Shard>,
    /// Tag of this run's channel names; the shards of one run share it (default: random).
    #[arg(long, hide = true)]
    run_id: Option<String>,
}

/// A connection (with its handshake and subscriptions) that takes longer than this is counted
/// as a connect error instead of holding up the run.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What is being measured.
enum Target {
    /// imserver nodes, driven through imclient.
    Im(ImClient),
    /// A Pusher-protocol peer, driven through its HTTP API (the publisher knows the peer).
    Peer(Box<pusher::Publisher>),
    /// imfloor, driven through its feed.
    Floor(Box<feeder::Feed>),
}

/// Sends in flight at once towards imserver (imclient pipelines them over its Redis
/// connections); far above what the rates of the benchmark set keep in flight, so only a
/// stalled server reaches it.
const MAX_IN_FLIGHT: usize = 10_000;

/// Shared counters and latency histograms of the readers.
struct Stats {
    received: AtomicU64,
    /// When the last delivery arrived, ns since the epoch.
    last_delivery_ns: AtomicU64,
    /// Sharded so thousands of reader tasks rarely contend.
    latency: Vec<Mutex<Histogram<u64>>>,
}

const LATENCY_SHARDS: usize = 16;

/// The name of benchmark channel `g`; unique to this run, so runs sharing a Redis do not see
/// each other's memberships.
fn chan_name(g: usize) -> String {
    format!("{}{g}", chan_prefix())
}

/// The peer's stand-in for a private message to `client`: a channel only that client subscribes
/// to (Pusher has no addressing by user for server-sent events).
fn private_chan(client: u64) -> String {
    format!("{}c{client}", chan_prefix())
}

/// What this run's channel names start with. Only characters Pusher allows in channel names
/// (`[A-Za-z0-9_\-=@,.;]`), so both servers get the same names.
fn chan_prefix() -> &'static str {
    PREFIX.get_or_init(|| format!("bench-{}-", now_ns() % 1_000_000_007))
}

static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

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

/// A TCP connection to `target` from a source address spread over 127.0.0.x (by `i`), so a
/// bigger machine is not capped by one source address's ephemeral ports.
async fn open_tcp(target: std::net::SocketAddr, i: usize) -> Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if target.ip().is_loopback() {
        socket.bind(std::net::SocketAddr::from((
            [127, 0, 0, (2 + i % 250) as u8],
            0,
        )))?;
    }
    let tcp = socket.connect(target).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Makes client `i` (of `clients`) a member of channel `i % chans`.
async fn join_round_robin(im: &ImClient, clients: usize, chans: usize) -> Result<()> {
    for g in 0..chans {
        let members: Vec<String> = (g..clients)
            .step_by(chans)
            .map(|i| format!("c{i}"))
            .collect();
        im.join_chan_many(&members, &chan_name(g)).await?;
    }
    Ok(())
}

/// Opens a WebSocket to a `ws://` connect URL, from the source address `spread` picks.
async fn open_ws(url: &str, spread: usize) -> Result<wire::Socket> {
    let rest = url.strip_prefix("ws://").context("only ws:// URLs")?;
    let (host, path) = rest.split_once('/').context("no path in the connect URL")?;
    let target = tokio::net::lookup_host(host)
        .await?
        .next()
        .context("no address")?;
    wire::Socket::upgrade(open_tcp(target, spread).await?, host, &format!("/{path}")).await
}

/// Reads client `i`'s deliveries into `stats` until its socket ends, in a task of its own.
fn read_deliveries(mut ws: wire::Socket, i: usize, stats: Arc<Stats>) {
    tokio::spawn(async move {
        let shard = &stats.latency[i % LATENCY_SHARDS];
        let _ = ws
            .read(|text| {
                record(&stats, shard, text);
                wire::Flow::Continue
            })
            .await;
    });
}

/// Connects client `i` to its home node and starts reading; returns the connect URL.
async fn connect_im(im: &ImClient, i: usize, stats: Arc<Stats>) -> Result<String> {
    let url = im.prev_connect_server(&format!("c{i}"), serde_json::Value::Null)?;
    let mut ws = open_ws(&url, i).await?;
    let mut welcomed = false;
    ws.read(|text| {
        welcomed = wire::find_str(text, "welcome");
        wire::Flow::Stop
    })
    .await?;
    if !welcomed {
        bail!("the first frame was not a welcome");
    }
    read_deliveries(ws, i, stats);
    Ok(url)
}

/// Connects client `i` to the peer, subscribes it to its channels and starts reading; returns
/// the node's address.
async fn connect_peer(
    peer: &pusher::Peer,
    i: usize,
    channels: Vec<String>,
    stats: Arc<Stats>,
) -> Result<String> {
    let addr = peer.node(i);
    let mut ws = pusher::subscribe(peer, addr, open_tcp(addr, i).await?, &channels).await?;
    tokio::spawn(async move {
        let shard = &stats.latency[i % LATENCY_SHARDS];
        let _ = ws
            .read(|text| pusher::pong_or(text, |text| record(&stats, shard, text)))
            .await;
    });
    Ok(addr.to_string())
}

/// Counts a delivery and records its latency, if `text` carries a send time.
fn record(stats: &Stats, shard: &Mutex<Histogram<u64>>, text: &[u8]) {
    if let Some(t) = wire::sent_at(text) {
        let now = now_ns();
        let micros = now.saturating_sub(t) / 1000;
        stats.received.fetch_add(1, Relaxed);
        stats.last_delivery_ns.fetch_max(now, Relaxed);
        let _ = lock(shard).record(micros.max(1));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    if let Some(id) = &args.run_id {
        let _ = PREFIX.set(format!("bench-{id}-"));
    }
    if args.procs > 1 {
        if let Workload::Drill = args.workload {
            return drill::shards::coordinate(&args).await;
        }
        return shard::coordinate(&args).await;
    }
    let peer_mode = !args.pusher_addr.is_empty();
    if args.shard.is_some()
        && !matches!(
            args.workload,
            Workload::Private | Workload::Channel | Workload::Broadcast | Workload::Drill
        )
    {
        bail!("several processes run the private, channel, broadcast and drill workloads only");
    }
    if (peer_mode || args.floor_addr.is_some()) && matches!(args.workload, Workload::Broadcast) {
        bail!("the broadcast workload runs against imserver only");
    }
    let target = if let Some(addr) = args.floor_addr {
        Target::Floor(Box::new(feeder::Feed::connect(addr).await?))
    } else if peer_mode {
        let peer = pusher::Peer {
            addrs: args.pusher_addr.clone(),
            app_id: args.pusher_app.clone(),
            key: args.pusher_key.clone(),
            secret: args.pusher_secret.clone(),
        };
        Target::Peer(Box::new(pusher::Publisher::new(peer, args.pusher_conns)))
    } else {
        Target::Im(args.im.client()?)
    };
    if let Workload::Churn = args.workload {
        let Target::Im(im) = target else {
            bail!("the churn workload runs against imserver only");
        };
        return churn::run(&args, im).await;
    }
    if let Workload::Drill = args.workload {
        let Target::Im(im) = target else {
            bail!("the drill workload runs against imserver only");
        };
        return drill::run(&args, im).await;
    }
    if let Workload::ApiSend = args.workload {
        let Target::Im(im) = target else {
            bail!("the api-send workload runs against imserver only");
        };
        println!("{}", api::run(&args, im).await?);
        return Ok(());
    }
    let report = steady::run(&args, target).await?;
    println!("{report}");
    Ok(())
}
