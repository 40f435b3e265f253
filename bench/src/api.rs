//! The api-send workload: what a private send costs sent through the node's HTTP API
//! (`POST /api/v1/send`) against imclient's `send_message` called from this process. Receivers
//! are connected as in the private workload, so every message is really delivered; then
//! `--messages` sends go out with `--concurrency` in flight, one way per run (`--send-via`).
//! The sending runs on a thread of its own with its own runtime (and, for imclient, its own
//! client and Redis connection), so that thread's CPU is what the caller spends on its calls,
//! apart from the readers'. Node CPU is taken from the first send until the last delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use clap::ValueEnum;
use hdrhistogram::Histogram;
use imclient::{ImClient, ImClientArgs};
use tokio::sync::Semaphore;

use crate::pusher::{Conn, exchange};
use crate::{
    Args, CONNECT_TIMEOUT, LATENCY_SHARDS, Stats, connect_im, cpu_secs, lock, nodes_sum, now_ns,
};

/// How the api-send workload sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SendVia {
    /// imclient's `send_message`, called from this process (what a Rust backend does).
    Imclient,
    /// `POST /api/v1/send` to the node's API (`--api-addr`), over keep-alive connections.
    Http,
}

/// Sends made before the measured ones, so that connecting to Redis or to the API is not
/// counted as the cost of a call.
const WARM_UP_SENDS: u64 = 64;

/// What the sending thread measured.
struct Sent {
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    /// CPU (user + system) of the sending thread over the measured calls.
    cpu_secs: f64,
    /// Call latency, µs.
    latency: Histogram<u64>,
}

/// The sending side's settings, moved to its thread.
struct Plan {
    via: SendVia,
    im: ImClientArgs,
    api_addr: Option<std::net::SocketAddr>,
    api_key: String,
    messages: u64,
    concurrency: usize,
    /// Calls per second in all; 0 for no pacing.
    call_rate: u64,
    receivers: Vec<u64>,
    pad: String,
}

/// Runs the api-send workload and returns its report.
pub async fn run(args: &Args, im: ImClient) -> Result<serde_json::Value> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.messages > 0, "--messages must be at least 1");
    if args.send_via == SendVia::Http && args.api_addr.is_none() {
        bail!("--send-via http needs --api-addr, the node's --api-listen address");
    }
    let stats = Arc::new(Stats {
        received: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        latency: (0..LATENCY_SHARDS)
            .map(|_| Histogram::new_with_bounds(1, 60_000_000, 3).map(std::sync::Mutex::new))
            .collect::<Result<_, _>>()?,
    });
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (im, stats, gate) = (im.clone(), stats.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            tokio::time::timeout(CONNECT_TIMEOUT, connect_im(&im, i, stats))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no connection in {CONNECT_TIMEOUT:?}")))
        }));
    }
    let mut receivers = Vec::with_capacity(args.clients);
    let mut first_connect_error = None;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await? {
            Ok(_) => receivers.push(i as u64),
            Err(e) => {
                first_connect_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    if receivers.is_empty() {
        bail!(
            "no receiver connected: {}",
            first_connect_error.unwrap_or_default()
        );
    }
    let connected = receivers.len();

    let plan = Plan {
        via: args.send_via,
        im: args.im.clone(),
        api_addr: args.api_addr,
        api_key: args.api_key.clone().unwrap_or_default(),
        messages: args.messages,
        concurrency: args.concurrency.max(1),
        call_rate: args.call_rate,
        receivers,
        pad: "x".repeat(args.payload_bytes.saturating_sub(30)),
    };
    // The thread says when its warm-up is over, so node CPU is read from the measured calls on.
    let (warm_tx, warm_rx) = tokio::sync::oneshot::channel::<()>();
    let node_pids = args.node_pid.clone();
    let node_cpu_before = Arc::new(std::sync::Mutex::new(None));
    let before = node_cpu_before.clone();
    let sender = std::thread::Builder::new()
        .name("imbench-send".into())
        .spawn(move || -> Result<Sent> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(send_all(plan, move || {
                *lock(&before) = nodes_sum(&node_pids, cpu_secs);
                let _ = warm_tx.send(());
            }))
        })?;
    // Warm-up deliveries arrive as well; they are counted apart from the measured ones.
    warm_rx
        .await
        .context("the sending thread ended in its warm-up")?;
    let sent = tokio::task::spawn_blocking(move || sender.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the sending thread panicked"))??;
    let drain_end = Instant::now() + Duration::from_secs_f64(args.drain_secs);
    while stats.received.load(Relaxed) < WARM_UP_SENDS + sent.calls && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let node_cpu = nodes_sum(&args.node_pid, cpu_secs)
        .zip(*lock(&node_cpu_before))
        .map(|(a, b)| a - b);
    // Every warm-up send succeeded (else the thread failed): its deliveries are not counted.
    let received = stats.received.load(Relaxed).saturating_sub(WARM_UP_SENDS);
    let mut delivery = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for shard in &stats.latency {
        delivery.add(&*lock(shard))?;
    }
    let per_call = |secs: f64| secs * 1e6 / sent.calls.max(1) as f64;
    Ok(serde_json::json!({
        "server": "imserver",
        "workload": "api-send",
        "send_via": format!("{:?}", args.send_via).to_lowercase(),
        "clients": connected,
        "connect_errors": args.clients - connected,
        "first_connect_error": first_connect_error,
        "concurrency": args.concurrency.max(1),
        "calls": sent.calls,
        "send_errors": sent.errors,
        "first_send_error": sent.first_error,
        "send_secs": sent.secs,
        "calls_per_sec": sent.calls as f64 / sent.secs,
        "call_latency_us": { "p50": sent.latency.value_at_quantile(0.5),
                             "p99": sent.latency.value_at_quantile(0.99),
                             "max": sent.latency.max() },
        "caller_cpu_secs": sent.cpu_secs,
        "caller_cpu_us_per_call": per_call(sent.cpu_secs),
        "deliveries_expected": sent.calls,
        "deliveries_received": received,
        "loss": sent.calls.saturating_sub(received),
        "delivery_latency_us": { "p50": delivery.value_at_quantile(0.5),
                                 "p99": delivery.value_at_quantile(0.99) },
        "node_cpu_secs": node_cpu,
        "node_cpu_us_per_call": node_cpu.map(per_call),
    }))
}

/// Sends the warm-up, calls `warmed`, then the measured calls: `concurrency` workers, each one
/// call at a time (each with its own HTTP connection), until `messages` are sent.
async fn send_all(plan: Plan, warmed: impl FnOnce()) -> Result<Sent> {
    let plan = Arc::new(plan);
    let im = match plan.via {
        SendVia::Imclient => Some(plan.im.client()?),
        SendVia::Http => None,
    };
    let mut conns = Vec::with_capacity(plan.concurrency);
    if let Some(addr) = plan.api_addr.filter(|_| plan.via == SendVia::Http) {
        for k in 0..plan.concurrency {
            conns.push(Some(Conn::new(crate::open_tcp(addr, k).await?)));
        }
    } else {
        conns.resize_with(plan.concurrency, || None);
    }
    let mut workers: Vec<Worker> = conns
        .into_iter()
        .enumerate()
        .map(|(k, conn)| Worker {
            plan: plan.clone(),
            im: im.clone(),
            conn,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (k as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D),
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
            errors: 0,
            first_error: None,
        })
        .collect();
    let warm_up = AtomicU64::new(0);
    let unpaced = Pace::new(0);
    futures_util::future::join_all(
        workers
            .iter_mut()
            .map(|w| w.run(&warm_up, WARM_UP_SENDS, &unpaced)),
    )
    .await;
    if let Some(e) = workers.iter().find_map(|w| w.first_error.clone()) {
        bail!("a warm-up send failed: {e}");
    }
    for w in &mut workers {
        w.latency.reset();
    }
    warmed();
    let next = AtomicU64::new(0);
    let cpu_before = thread_cpu_secs().context("no /proc/thread-self/stat")?;
    let pace = Pace::new(plan.call_rate);
    let started = pace.start;
    futures_util::future::join_all(
        workers
            .iter_mut()
            .map(|w| w.run(&next, plan.messages, &pace)),
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    let cpu_secs = thread_cpu_secs().context("no /proc/thread-self/stat")? - cpu_before;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut errors, mut first_error) = (0, None);
    for w in &workers {
        latency.add(&w.latency)?;
        errors += w.errors;
        if first_error.is_none() {
            first_error.clone_from(&w.first_error);
        }
    }
    Ok(Sent {
        calls: plan.messages - errors,
        errors,
        first_error,
        secs,
        cpu_secs,
        latency,
    })
}

/// When each call is due: the n-th call of the run at `start + n / rate`, whichever sender
/// makes it, so the senders together keep the rate.
struct Pace {
    start: Instant,
    /// Calls per second; 0 for as fast as the senders go.
    rate: u64,
}

impl Pace {
    fn new(rate: u64) -> Self {
        Self {
            start: Instant::now(),
            rate,
        }
    }

    async fn wait_turn(&self, n: u64) {
        if self.rate > 0 {
            let due = self.start + Duration::from_secs_f64(n as f64 / self.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// One of the `concurrency` senders.
struct Worker {
    plan: Arc<Plan>,
    im: Option<ImClient>,
    conn: Option<Conn>,
    rng: u64,
    latency: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Worker {
    /// Sends one call at a time while `next` (shared with the other workers) is below `until`,
    /// each when `pace` says it is due.
    async fn run(&mut self, next: &AtomicU64, until: u64, pace: &Pace) {
        loop {
            let n = next.fetch_add(1, Relaxed);
            if n >= until {
                break;
            }
            pace.wait_turn(n).await;
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let receivers = &self.plan.receivers;
            let to = format!(
                "c{}",
                receivers[(self.rng % receivers.len() as u64) as usize]
            );
            let payload = serde_json::json!({ "t": now_ns(), "p": self.plan.pad });
            let started = Instant::now();
            match self.send(&to, &payload).await {
                Ok(()) => {
                    let micros = started.elapsed().as_micros() as u64;
                    let _ = self.latency.record(micros.max(1));
                }
                Err(e) => {
                    self.errors += 1;
                    self.first_error.get_or_insert(format!("{e:#}"));
                }
            }
        }
    }

    async fn send(&mut self, to: &str, payload: &serde_json::Value) -> Result<()> {
        if let Some(im) = &self.im {
            im.send_message("bench", [to], payload, false).await?;
            return Ok(());
        }
        let conn = self.conn.as_mut().context("no API connection")?;
        let body = serde_json::json!({ "sender": "bench", "receivers": [to], "payload": payload })
            .to_string();
        let request = format!(
            "POST /api/v1/send HTTP/1.1\r\nHost: imserver\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.plan.api_key,
            body.len()
        );
        if !exchange(conn, request.as_bytes()).await? {
            bail!("the node closed the API connection after an answer");
        }
        Ok(())
    }
}

/// CPU seconds (user + system) of the calling thread, from /proc.
fn thread_cpu_secs() -> Option<f64> {
    cpu_secs("thread-self")
}
