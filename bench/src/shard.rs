//! Several processes of the tool as one (`--procs N`): one process's open-file limit caps the
//! connections it can hold (about 20,000 on the benchmark machine, and the hard limit cannot be
//! raised without root), so for more the tool runs itself N times (`--shard I/N`), each opening
//! its share of the clients, and merges their reports.
//!
//! The coordinator (the process started with `--procs N`) and its shards talk over the shards'
//! stdin and stdout, a line each way at a time:
//!
//! - shard: `connected <n>` once its share has connected (or failed to);
//! - coordinator: `go <connected in all>` once every shard has, after it has read the nodes'
//!   RSS (so memory per connection is "after connecting minus before", per node);
//! - a shard that sends (every shard its own clients' private messages; shard 0 the channel
//!   messages and broadcasts, which reach every shard's clients) prints its report when done;
//! - coordinator, to the shards that do not send: `stop <messages sent>` once the sender's
//!   report is in, so they know how many deliveries to wait for; then they print theirs.
//!
//! Each report carries its latency histogram as `[value, count]` pairs of its recorded
//! buckets (exact at the histogram's precision), which the coordinator adds up. The merged
//! report has the fields of a one-process report, with the figures over all shards, plus
//! `procs`, per-node connections and RSS, and the delivery rate up to the last delivery.
//!
//! The drill workload starts its shards with [`spawn`] too, and merges their reports its own
//! way (`drill/shards.rs`).

use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::{Args, Workload, cpu_secs, nodes_sum, now_ns, rss_kib};

/// Shard `index` of `count`.
#[derive(Debug, Clone, Copy)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The client ids this shard opens: [lo, hi) of `clients`.
    pub fn range(self, clients: usize) -> (usize, usize) {
        (
            clients * self.index / self.count,
            clients * (self.index + 1) / self.count,
        )
    }
}

/// Parses `I/N`.
pub fn parse_shard(s: &str) -> Result<Shard, String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N")?;
    let index: usize = i.parse().map_err(|e| format!("{e}"))?;
    let count: usize = n.parse().map_err(|e| format!("{e}"))?;
    if count == 0 || index >= count {
        return Err(format!("shard {index} of {count}"));
    }
    Ok(Shard { index, count })
}

/// A shard's side of the conversation with the coordinator.
pub struct Control {
    /// Lines from stdin, read by a thread of their own (tokio's stdin needs a feature that
    /// would change the tokio the nodes are built with when both are built together).
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Control {
    pub fn new() -> Self {
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { lines }
    }

    /// Says `connected` of this shard are connected; returns how many are in all, once the
    /// coordinator says go.
    pub async fn connected(&mut self, connected: usize) -> Result<u64> {
        say(&format!("connected {connected}"))?;
        self.expect("go").await
    }

    /// Waits for the coordinator's stop; returns the messages the sender sent.
    pub async fn stopped(&mut self) -> Result<u64> {
        self.expect("stop").await
    }

    async fn expect(&mut self, word: &str) -> Result<u64> {
        let line = self
            .lines
            .recv()
            .await
            .with_context(|| format!("stdin closed before {word}"))?;
        line.strip_prefix(word)
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("expected `{word} <n>` from the coordinator, got {line:?}"))
    }
}

/// Prints a line for the coordinator.
fn say(line: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// The recorded buckets of `hist` as `[value, count]` pairs: recording each value again with
/// its count into a histogram of the same bounds and precision gives the same histogram.
pub fn hist_to_json(hist: &Histogram<u64>) -> Value {
    hist.iter_recorded()
        .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
        .collect()
}

/// Adds the `[value, count]` pairs of `hist_to_json` to `into`.
fn hist_add_json(into: &mut Histogram<u64>, pairs: &Value) -> Result<()> {
    for pair in pairs.as_array().context("latency_hist is not an array")? {
        let (v, n) = (pair[0].as_u64(), pair[1].as_u64());
        let (Some(v), Some(n)) = (v, n) else {
            bail!("bad latency_hist entry {pair}");
        };
        into.record_n(v, n)?;
    }
    Ok(())
}

/// One shard process.
pub struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    pub index: usize,
}

impl Proc {
    pub async fn line(&mut self) -> Result<String> {
        match self.stdout.next_line().await? {
            Some(line) => Ok(line),
            None => {
                let status = self.child.wait().await?;
                bail!(
                    "imbench shard {} ended ({status}) before its report",
                    self.index
                )
            }
        }
    }

    pub async fn tell(&mut self, line: &str) -> Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// The shard's `connected <n>`: how many of its clients connected.
    pub async fn connected(&mut self) -> Result<u64> {
        let line = self.line().await?;
        line.strip_prefix("connected ")
            .and_then(|n| n.parse().ok())
            .with_context(|| {
                format!(
                    "shard {}: expected `connected <n>`, got {line:?}",
                    self.index
                )
            })
    }

    /// Waits for the shard to exit.
    pub async fn wait(&mut self) -> Result<()> {
        self.child.wait().await?;
        Ok(())
    }

    pub async fn report(&mut self) -> Result<Value> {
        let line = self.line().await?;
        serde_json::from_str(&line)
            .with_context(|| format!("shard {}: not a report: {line:?}", self.index))
    }
}

/// Per-node RSS in KiB, in the order of --node-pid.
pub(crate) fn rss_per_node(pids: &[u32]) -> Vec<Option<u64>> {
    pids.iter().map(|p| rss_kib(&p.to_string())).collect()
}

/// The arguments this process was started with, without `--procs`.
fn passthrough() -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let s = a.to_string_lossy();
        if s == "--procs" {
            args.next();
        } else if !s.starts_with("--procs=") {
            out.push(a);
        }
    }
    out
}

/// Starts `args.procs` shards of this tool (this process's arguments, with `--shard I/N` and a
/// shared `--run-id`), their stdin and stdout piped.
pub fn spawn(args: &Args) -> Result<Vec<Proc>> {
    let exe = std::env::current_exe()?;
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{}", now_ns() % 1_000_000_007));
    let mut procs = Vec::with_capacity(args.procs);
    for index in 0..args.procs {
        let mut child = tokio::process::Command::new(&exe)
            .args(passthrough())
            .arg("--shard")
            .arg(format!("{index}/{}", args.procs))
            .arg("--run-id")
            .arg(&run_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting an imbench shard")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        procs.push(Proc {
            child,
            stdin,
            stdout,
            index,
        });
    }
    Ok(procs)
}

/// Runs `args.procs` shards of this tool and prints their merged report.
pub async fn coordinate(args: &Args) -> Result<()> {
    ensure!(
        args.shard.is_none(),
        "--procs and --shard do not go together"
    );
    ensure!(
        matches!(
            args.workload,
            Workload::Private | Workload::Channel | Workload::Broadcast
        ),
        "--procs runs the private, channel and broadcast workloads (and the drill)"
    );
    ensure!(args.clients >= args.procs, "fewer clients than --procs");
    let rss_before = rss_per_node(&args.node_pid);
    let mut procs = spawn(args)?;
    let started = Instant::now();
    // Every shard connected (in parallel: each waits for go after saying so).
    let mut total = 0u64;
    for p in &mut procs {
        total += p.connected().await?;
    }
    let connect_wall_secs = started.elapsed().as_secs_f64();
    let rss_connected = rss_per_node(&args.node_pid);
    let node_cpu_before = nodes_sum(&args.node_pid, cpu_secs);
    // For scripts that sample the servers around the sending alone (scripts/bench-run.sh).
    eprintln!("imbench: sending");
    for p in &mut procs {
        p.tell(&format!("go {total}")).await?;
    }
    let mut reports = Vec::with_capacity(procs.len());
    if matches!(args.workload, Workload::Private) {
        for p in &mut procs {
            reports.push(p.report().await?);
        }
    } else {
        let first = procs[0].report().await?;
        let sent = first["sent"].as_u64().unwrap_or(0);
        reports.push(first);
        for p in procs.iter_mut().skip(1) {
            p.tell(&format!("stop {sent}")).await?;
        }
        for p in procs.iter_mut().skip(1) {
            reports.push(p.report().await?);
        }
    }
    let node_cpu = nodes_sum(&args.node_pid, cpu_secs)
        .zip(node_cpu_before)
        .map(|(a, b)| a - b);
    let rss_load = rss_per_node(&args.node_pid);
    for p in &mut procs {
        p.wait().await?;
    }
    let merged = merge(
        args,
        &reports,
        &Nodes {
            rss_before,
            rss_connected,
            rss_load,
            cpu_secs: node_cpu,
        },
        connect_wall_secs,
    )?;
    #[allow(clippy::print_stdout)]
    {
        println!("{merged}");
    }
    Ok(())
}

/// What the coordinator read of the nodes.
struct Nodes {
    rss_before: Vec<Option<u64>>,
    rss_connected: Vec<Option<u64>>,
    rss_load: Vec<Option<u64>>,
    /// Node CPU from go until every shard's report was in.
    cpu_secs: Option<f64>,
}

fn sum_u64(reports: &[Value], key: &str) -> u64 {
    reports.iter().filter_map(|r| r[key].as_u64()).sum()
}

fn max_f64(reports: &[Value], key: &str) -> f64 {
    reports
        .iter()
        .filter_map(|r| r[key].as_f64())
        .fold(0.0, f64::max)
}

fn sum_f64(reports: &[Value], key: &str) -> f64 {
    reports.iter().filter_map(|r| r[key].as_f64()).sum()
}

/// Sums of per-node vectors; None when any is missing.
fn total(v: &[Option<u64>]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.iter().map(|x| x.map(|k| k as f64)).sum()
}

/// One report from the shards' reports (see the module doc).
fn merge(args: &Args, reports: &[Value], nodes: &Nodes, connect_wall_secs: f64) -> Result<Value> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for r in reports {
        hist_add_json(&mut hist, &r["latency_hist"])?;
    }
    let connected = sum_u64(reports, "clients");
    let received = sum_u64(reports, "deliveries_received");
    let expected = sum_u64(reports, "deliveries_expected");
    let sent = sum_u64(reports, "sent");
    let senders: Vec<Value> = reports
        .iter()
        .filter(|r| r["sender"].as_bool() == Some(true))
        .cloned()
        .collect();
    let send_secs = max_f64(&senders, "send_secs");
    let first_send = senders
        .iter()
        .filter_map(|r| r["first_send_ns"].as_u64())
        .min()
        .unwrap_or(0);
    let last_delivery = reports
        .iter()
        .filter_map(|r| r["last_delivery_ns"].as_u64())
        .max()
        .unwrap_or(0);
    // From the first send to the last delivery: with a saturated server deliveries go on after
    // sending ends, and deliveries_per_sec (over the sending time, as one process reports it)
    // overstates what it kept up.
    let span = (last_delivery > first_send).then(|| (last_delivery - first_send) as f64 / 1e9);
    let connect_secs = max_f64(reports, "connect_secs");
    let mut per_node = vec![0u64; args.node_pid.len()];
    for r in reports {
        if let Some(v) = r["clients_per_node"].as_array() {
            for (n, c) in v.iter().enumerate() {
                if let (Some(slot), Some(c)) = (per_node.get_mut(n), c.as_u64()) {
                    *slot += c;
                }
            }
        }
    }
    let conn_bytes_per_node: Vec<Option<f64>> = (0..args.node_pid.len())
        .map(|n| {
            let (b, a) = (nodes.rss_before[n]?, nodes.rss_connected[n]?);
            Some((a as f64 - b as f64) * 1024.0 / per_node[n].max(1) as f64)
        })
        .collect();
    let rss_before = total(&nodes.rss_before);
    let rss_connected = total(&nodes.rss_connected);
    let tool_cpu = sum_f64(reports, "tool_cpu_secs");
    let first = |key: &str| {
        reports
            .iter()
            .map(|r| &r[key])
            .find(|v| !v.is_null())
            .cloned()
    };
    let mut report = json!({
        "server": reports.first().map(|r| r["server"].clone()),
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "procs": reports.len(),
        "clients": connected,
        "connect_errors": sum_u64(reports, "connect_errors"),
        "first_connect_error": first("first_connect_error"),
        "connect_secs": connect_secs,
        "connects_per_sec": connected as f64 / connect_secs.max(1e-9),
        "connect_wall_secs": connect_wall_secs,
        "rate_target": args.rate,
        "sent": sent,
        "send_errors": sum_u64(reports, "send_errors"),
        "pusher_batch": reports.first().map(|r| r["pusher_batch"].clone()),
        "first_send_error": first("first_send_error"),
        "send_rate": sent as f64 / send_secs.max(1e-9),
        "deliveries_expected": expected,
        "deliveries_received": received,
        "loss": expected.saturating_sub(received),
        "extra": received.saturating_sub(expected),
        "deliveries_per_sec": received as f64 / send_secs.max(1e-9),
        "delivery_span_secs": span,
        "deliveries_per_sec_to_last": span.map(|s| received as f64 / s),
        "latency_us": { "p50": hist.value_at_quantile(0.5), "p90": hist.value_at_quantile(0.9),
                        "p99": hist.value_at_quantile(0.99), "max": hist.max() },
        "node_clients": per_node,
        "node_rss_before_kib": nodes.rss_before,
        "node_rss_connected_kib": nodes.rss_connected,
        "node_rss_end_kib": nodes.rss_load,
        "node_rss_conn_bytes_per_node": conn_bytes_per_node,
        "node_rss_conn_bytes": rss_before.zip(rss_connected)
            .map(|(b, a)| (a - b) * 1024.0 / connected.max(1) as f64),
        "node_rss_idle_kib": rss_connected,
        "node_rss_load_kib": total(&nodes.rss_load),
        "node_rss_per_conn_bytes": rss_connected.map(|r| r * 1024.0 / connected.max(1) as f64),
        "node_cpu_secs": nodes.cpu_secs,
        "node_cpu_us_per_delivery": nodes.cpu_secs.map(|c| c * 1e6 / received.max(1) as f64),
        "tool_cpu_secs": tool_cpu,
        "tool_cpu_us_per_delivery": tool_cpu * 1e6 / received.max(1) as f64,
    });
    // Each shard's own figures, to see how evenly the work was spread.
    let shards: Vec<Value> = reports
        .iter()
        .map(|r| {
            json!({
                "clients": r["clients"], "connect_secs": r["connect_secs"],
                "received": r["deliveries_received"], "sent": r["sent"],
                "p99_us": r["latency_us"]["p99"], "tool_cpu_secs": r["tool_cpu_secs"],
            })
        })
        .collect();
    if let Some(obj) = report.as_object_mut() {
        obj.insert("shards".into(), shards.into());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_clients_once() {
        for (clients, n) in [(10, 3), (60_000, 4), (7, 7), (2_000, 2)] {
            let mut next = 0;
            for index in 0..n {
                let (lo, hi) = Shard { index, count: n }.range(clients);
                assert_eq!(lo, next);
                next = hi;
            }
            assert_eq!(next, clients);
        }
        assert!(parse_shard("2/2").is_err());
        assert!(parse_shard("1/2").is_ok());
    }

    #[test]
    fn histograms_merge_exactly() {
        let mut a = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut b = a.clone();
        let mut both = a.clone();
        for v in [1u64, 7, 999, 1_234, 56_789, 1_000_001, 59_999_999] {
            a.record(v).unwrap();
            both.record(v).unwrap();
        }
        for v in [3u64, 7, 2_000, 77_777, 3_000_000] {
            b.record_n(v, 5).unwrap();
            both.record_n(v, 5).unwrap();
        }
        let mut merged = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for h in [&a, &b] {
            let text = serde_json::to_string(&hist_to_json(h)).unwrap();
            hist_add_json(&mut merged, &serde_json::from_str(&text).unwrap()).unwrap();
        }
        assert_eq!(merged, both);
        for q in [0.5, 0.9, 0.99, 1.0] {
            assert_eq!(merged.value_at_quantile(q), both.value_at_quantile(q));
        }
        assert_eq!(merged.max(), both.max());
    }
}
