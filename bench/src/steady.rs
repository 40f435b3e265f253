//! The steady workloads (private, channel, small-channels, broadcast): connect every client,
//! send at a fixed rate for a fixed time, wait for the last deliveries, and report delivery
//! counts, latency percentiles and the nodes' CPU and memory, against imserver, the Pusher peer
//! or the floor. As a shard (`--shard`), only its share of the clients.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use crate::{
    Args, CONNECT_TIMEOUT, LATENCY_SHARDS, MAX_IN_FLIGHT, Stats, Target, Workload, chan_name,
    chan_prefix, connect_im, connect_peer, cpu_secs, feeder, lock, nodes_sum, now_ns, private_chan,
    rss_kib, shard,
};

/// Outcomes of the sends.
#[derive(Default)]
struct Tally {
    sent: u64,
    /// Deliveries the sent messages should make.
    expected: u64,
    send_errors: u64,
    first_send_error: Option<String>,
}

impl Tally {
    /// Counts a send of `messages` messages that should make `receivers` deliveries, or that
    /// failed.
    fn add(&mut self, done: Result<(u64, u64), (u64, anyhow::Error)>) {
        match done {
            Ok((messages, receivers)) => {
                self.sent += messages;
                self.expected += receivers;
            }
            Err((messages, e)) => {
                self.send_errors += messages;
                self.first_send_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
}

/// Sends `messages` (receiver: a client id or a channel number; deliveries expected; payload):
/// one each through imclient, or one publish of them all to the peer.
async fn send(
    target: &Target,
    workload: Workload,
    messages: Vec<(u64, u64, serde_json::Value)>,
) -> Result<()> {
    match target {
        Target::Im(im) => {
            for (to, _, payload) in messages {
                match workload {
                    Workload::Private | Workload::Churn | Workload::Drill | Workload::ApiSend => {
                        im.send_message("bench", [format!("c{to}")], &payload, false)
                            .await?;
                    }
                    Workload::Broadcast => {
                        im.broadcast("bench", &payload).await?;
                    }
                    _ => {
                        im.send_chan_message("bench", &chan_name(to as usize), &payload, false)
                            .await?;
                    }
                }
            }
        }
        Target::Peer(publisher) => {
            let events: Vec<(String, String)> = messages
                .into_iter()
                .map(|(to, _, payload)| {
                    let channel = match workload {
                        Workload::Private
                        | Workload::Churn
                        | Workload::Drill
                        | Workload::ApiSend => private_chan(to),
                        _ => chan_name(to as usize),
                    };
                    (channel, payload.to_string())
                })
                .collect();
            publisher.publish(&events).await?;
        }
        Target::Floor(feed) => feed.send(workload, messages).await?,
    }
    Ok(())
}

/// The private, channel, small-channels and broadcast workloads: connects, sends, reports. As
/// a shard (`--shard`), only its share of the clients, with its start and stop from stdin.
pub async fn run(args: &Args, target: Target) -> Result<serde_json::Value> {
    let peer_mode = !args.pusher_addr.is_empty();
    let target = Arc::new(target);
    let stats = Arc::new(Stats {
        received: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        latency: (0..LATENCY_SHARDS)
            .map(|_| Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")))
            .collect(),
    });
    let me = std::process::id().to_string();
    // Before connecting: what the connections add to the nodes' memory is the difference.
    let rss_before = shard::rss_per_node(&args.node_pid);
    // This process's clients: all, or its shard's share.
    let (lo, hi) = match args.shard {
        Some(s) => s.range(args.clients),
        None => (0, args.clients),
    };
    let mut control = args.shard.map(|_| shard::Control::new());

    // Memberships are durable: set them up before anyone connects.
    let groups = match args.workload {
        Workload::Private
        | Workload::Churn
        | Workload::Drill
        | Workload::ApiSend
        | Workload::Broadcast => 0,
        Workload::Channel => 1,
        Workload::SmallChannels => args.clients.div_ceil(args.chan_size.max(1)),
    };
    if let Target::Im(im) = &*target {
        for g in 0..groups {
            let members: Vec<String> = match args.workload {
                Workload::Channel => (lo..hi).map(|i| format!("c{i}")).collect(),
                _ => (g * args.chan_size..((g + 1) * args.chan_size).min(args.clients))
                    .map(|i| format!("c{i}"))
                    .collect(),
            };
            im.join_chan_many(&members, &chan_name(g)).await?;
        }
    }

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let mut tasks = Vec::with_capacity(hi - lo);
    for i in lo..hi {
        let (target, stats, gate) = (target.clone(), stats.clone(), gate.clone());
        // A peer subscribes each socket to the channels it belongs to.
        let channels = match args.workload {
            Workload::Private
            | Workload::Churn
            | Workload::Drill
            | Workload::ApiSend
            | Workload::Broadcast => {
                vec![private_chan(i as u64)]
            }
            Workload::Channel => vec![chan_name(0)],
            Workload::SmallChannels => vec![chan_name(i / args.chan_size.max(1))],
        };
        // The floor learns a client's channel from its connect path.
        let floor_chan = match args.workload {
            Workload::Channel => Some(0),
            Workload::SmallChannels => Some(i / args.chan_size.max(1)),
            _ => None,
        };
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            let connect = async {
                match &*target {
                    Target::Im(im) => connect_im(im, i, stats).await,
                    Target::Peer(publisher) => {
                        connect_peer(publisher.peer(), i, channels, stats).await
                    }
                    Target::Floor(feed) => feeder::connect(feed.addr(), i, floor_chan, stats).await,
                }
            };
            tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no connection in {CONNECT_TIMEOUT:?}")))
        }));
    }
    let mut connected = 0usize;
    let mut first_error = None;
    let mut online = vec![false; hi - lo];
    // Connections per node, in the order of --nodes (or --pusher-addr).
    let node_names: Vec<String> = if let Target::Floor(feed) = &*target {
        vec![feed.addr().to_string()]
    } else if peer_mode {
        args.pusher_addr.iter().map(ToString::to_string).collect()
    } else {
        args.im
            .nodes
            .iter()
            .map(|n| format!("{}/", n.trim_end_matches('/')))
            .collect()
    };
    let mut per_node = vec![0u64; node_names.len()];
    for (k, t) in tasks.into_iter().enumerate() {
        match t.await? {
            Ok(node) => {
                connected += 1;
                online[k] = true;
                if let Some(n) = node_names
                    .iter()
                    .position(|name| node == *name || node.starts_with(name))
                {
                    per_node[n] += 1;
                }
            }
            Err(e) => {
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // A shard says it is connected and waits for the others: the coordinator says go, with
    // how many are connected in all.
    let all_connected = match &mut control {
        Some(c) => c.connected(connected).await?,
        None => connected as u64,
    };
    // Who sends: the one process, or with shards every shard its own clients' private messages
    // and shard 0 the channel messages and broadcasts (each reaches every shard's clients).
    let sender = match args.shard {
        None => true,
        Some(s) => s.index == 0 || matches!(args.workload, Workload::Private),
    };
    // Channel messages reach only members whose channels the nodes have loaded: wait for it.
    if let (Target::Im(im), true, true) = (&*target, groups > 0, sender) {
        let ready_by = Instant::now() + Duration::from_secs(60);
        loop {
            let chans = im.chans().await?;
            let online: u64 = chans
                .iter()
                .filter(|c| c.chan.as_str().starts_with(chan_prefix()))
                .map(|c| c.online)
                .sum();
            if online >= all_connected {
                break;
            }
            if Instant::now() > ready_by {
                bail!(
                    "only {online} of {all_connected} members online in their channels after 60 s"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Deliveries are expected only to connected clients: a client that failed to connect is a
    // connect error in the report, not a loss. Connected members per channel (of this process):
    let members_online: Vec<u64> = match args.workload {
        Workload::Private | Workload::Churn | Workload::Drill | Workload::ApiSend => Vec::new(),
        Workload::Channel | Workload::Broadcast => vec![connected as u64],
        Workload::SmallChannels => online
            .chunks(args.chan_size.max(1))
            .map(|group| group.iter().filter(|&&o| o).count() as u64)
            .collect(),
    };
    let rss_idle = nodes_sum(&args.node_pid, |p| rss_kib(p).map(|v| v as f64));
    let node_cpu_before = nodes_sum(&args.node_pid, cpu_secs);
    let tool_cpu_before = cpu_secs(&me).unwrap_or(0.0);

    // Send at a fixed rate, topped up every 10 ms. Sends run concurrently in this one task, and
    // a slow one (the peer answers a channel publish only after its local fan-out) does not
    // hold up the ones after it. At most `max_in_flight` at once: past that the sender waits,
    // and the report's send_rate shows the rate the server took. The send time is stamped when
    // a send starts, so waiting for a free slot is not counted as delivery latency.
    let pad = "x".repeat(args.payload_bytes.saturating_sub(30));
    let max_in_flight = match &*target {
        Target::Im(_) => MAX_IN_FLIGHT,
        // One request at a time per connection: more would only queue inside the tool.
        Target::Peer(_) => args.pusher_conns.max(1),
        // One feed connection, one write at a time.
        Target::Floor(_) => 1,
    };
    let batch = match &*target {
        Target::Im(_) => 1,
        Target::Peer(_) => args.pusher_batch.max(1) as u64,
        // Every message due in one write: the node reads Redis's pub/sub in batches too.
        Target::Floor(_) => u64::MAX,
    };
    // A shard sending private messages sends its share of the rate, to its own clients.
    let rate = match args.workload {
        Workload::Private => args.rate as f64 * (hi - lo) as f64 / args.clients.max(1) as f64,
        _ => args.rate as f64,
    };
    let mut sends = futures_util::stream::FuturesUnordered::new();
    // For scripts that sample the servers around the sending alone (scripts/bench-run.sh).
    if args.shard.is_none() {
        eprintln!("imbench: sending");
    }
    let first_send_ns = now_ns();
    let send_start = Instant::now();
    let send_for = Duration::from_secs_f64(if sender { args.duration } else { 0.0 });
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let mut created = 0u64;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut tally = Tally::default();
    loop {
        let elapsed = send_start.elapsed();
        if elapsed >= send_for || connected == 0 {
            break;
        }
        // Rounded up: the first message goes at once, and a 1 s run at 10/s sends 10.
        let due = (elapsed.as_secs_f64() * rate).ceil() as u64;
        while created < due && sends.len() < max_in_flight {
            // One message per send, or up to --pusher-batch in one batch publish to the peer.
            let k = (due - created).min(batch);
            created += k;
            let messages: Vec<(u64, u64, serde_json::Value)> = (0..k)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    // Receiver: a client id (private) or a channel; and how many get it.
                    let (to, receivers) = match args.workload {
                        Workload::Private
                        | Workload::Churn
                        | Workload::Drill
                        | Workload::ApiSend => {
                            let k = rng % (hi - lo) as u64;
                            (lo as u64 + k, u64::from(online[k as usize]))
                        }
                        Workload::Channel | Workload::Broadcast => (0, members_online[0]),
                        Workload::SmallChannels => {
                            let g = rng % groups as u64;
                            (g, members_online[g as usize])
                        }
                    };
                    (
                        to,
                        receivers,
                        serde_json::json!({ "t": now_ns(), "p": pad }),
                    )
                })
                .collect();
            let (target, workload) = (target.clone(), args.workload);
            sends.push(async move {
                let receivers = messages.iter().map(|m| m.1).sum::<u64>();
                send(&target, workload, messages)
                    .await
                    .map(|()| (k, receivers))
                    .map_err(|e| (k, e))
            });
        }
        tokio::select! {
            _ = interval.tick() => {}
            Some(done) = sends.next(), if !sends.is_empty() => tally.add(done),
        }
    }
    while let Some(done) = sends.next().await {
        tally.add(done);
    }
    let Tally {
        sent,
        mut expected,
        send_errors,
        first_send_error,
    } = tally;
    let send_secs = send_start.elapsed().as_secs_f64();
    // A shard that did not send hears from the coordinator when the sender is done, and how
    // many messages it sent: each reaches every connected client of this shard too.
    if let (Some(c), false) = (&mut control, sender) {
        let sent_by_sender = c.stopped().await?;
        expected = sent_by_sender * members_online.first().copied().unwrap_or(0);
    }
    let drain_end = Instant::now() + Duration::from_secs_f64(args.drain_secs);
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
    let mut report = serde_json::json!({
        "server": match &*target {
            Target::Im(_) => "imserver",
            Target::Peer(_) => "peer",
            Target::Floor(_) => "floor",
        },
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "clients": connected,
        "connect_errors": (hi - lo) - connected,
        "first_connect_error": first_error,
        "connect_secs": connect_secs,
        "connects_per_sec": connected as f64 / connect_secs,
        "rate_target": args.rate,
        "sent": sent,
        "send_errors": send_errors,
        "pusher_batch": peer_mode.then_some(args.pusher_batch),
        "first_send_error": first_send_error,
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
        "node_rss_conn_bytes": rss_before
            .iter()
            .copied()
            .sum::<Option<u64>>()
            .zip(rss_idle)
            .map(|(b, a)| (a - b as f64) * 1024.0 / connected.max(1) as f64),
        "node_rss_before_kib": rss_before,
        "node_cpu_secs": node_cpu,
        "node_cpu_us_per_delivery": node_cpu.map(|c| c * 1e6 / received.max(1) as f64),
        "tool_cpu_secs": tool_cpu,
        "tool_cpu_us_per_delivery": tool_cpu * 1e6 / received.max(1) as f64,
    });
    // What the coordinator needs to merge the shards' reports.
    if let (Some(s), Some(obj)) = (args.shard, report.as_object_mut()) {
        obj.insert("shard".into(), s.index.into());
        obj.insert("sender".into(), sender.into());
        obj.insert("send_secs".into(), send_secs.into());
        obj.insert("first_send_ns".into(), first_send_ns.into());
        let last = stats.last_delivery_ns.load(Relaxed);
        obj.insert("last_delivery_ns".into(), last.into());
        obj.insert("clients_per_node".into(), per_node.into());
        obj.insert("latency_hist".into(), shard::hist_to_json(&hist));
    }
    Ok(report)
}
