//! The drill over several processes (`--workload drill --procs N`): one process's open-file
//! limit caps the clients it holds, and a storm drill needs more. The coordinator starts N
//! shards of the tool (`shard.rs` starts them and carries the lines): each holds clients
//! `[clients*I/N, clients*(I+1)/N)`, says `connected <n>` once they are, and on `go` sends its
//! share of the rate (its private messages to its own clients, so each shard can tell which of
//! them were lost) and follows its clients through the drill. Once every shard is connected
//! the coordinator prints `drill: ready` on stderr, which is what `scripts/chaos.sh` waits for.
//!
//! The merged report has the fields of a one-process report: counts are summed, times named
//! `*_ms` and gaps are the largest of the shards' (the earliest for `first`), maps of counts
//! are added up, and the victims' return times and the failed attempts (which each shard lists
//! raw) are put together before the percentiles and the storm's figures are taken. A shard
//! sees only its own clients' deliveries, so the pauses between deliveries are each shard's
//! worst: an upper bound on the pause of all clients together.

use std::time::Instant;

use anyhow::{Result, ensure};
use serde_json::{Value, json};

use super::storm::{self, quantile};
use crate::{Args, shard};

/// Runs `args.procs` shards of the drill and prints their merged report.
pub async fn coordinate(args: &Args) -> Result<()> {
    ensure!(
        args.shard.is_none(),
        "--procs and --shard do not go together"
    );
    ensure!(args.clients >= args.procs, "fewer clients than --procs");
    let started = Instant::now();
    let mut procs = shard::spawn(args)?;
    let mut placed = 0u64;
    for p in &mut procs {
        placed += p.connected().await?;
    }
    eprintln!(
        "drill: ready: {placed} of {} clients connected in {} ms ({} processes); sending for {:.1} s",
        args.clients,
        started.elapsed().as_millis(),
        args.procs,
        args.duration
    );
    for p in &mut procs {
        p.tell(&format!("go {placed}")).await?;
    }
    let mut reports = Vec::with_capacity(procs.len());
    for p in &mut procs {
        reports.push(p.report().await?);
    }
    for p in &mut procs {
        p.wait().await?;
    }
    #[allow(clippy::print_stdout)]
    {
        println!("{}", merge(args, &reports));
    }
    Ok(())
}

/// One report from the shards' (see the module doc).
fn merge(args: &Args, reports: &[Value]) -> Value {
    let mut out = reports.first().cloned().unwrap_or(Value::Null);
    for r in reports.iter().skip(1) {
        merge_value("", &mut out, r);
    }
    let shards: Vec<Value> = reports
        .iter()
        .map(|r| json!({ "clients": r["clients"], "placed": r["placed"], "connect_ms": r["connect_ms"] }))
        .collect();
    let Value::Object(o) = &mut out else {
        return out;
    };
    o.insert("procs".into(), reports.len().into());
    o.insert("shards".into(), shards.into());
    o.insert("rate_target".into(), args.rate.into());
    o.insert("duration_secs".into(), args.duration.into());
    if let Some(Value::Object(a)) = o.get_mut("action") {
        let mut back: Vec<u64> = a
            .remove("back_list")
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        back.sort_unstable();
        let failed: Vec<(u64, String)> = a
            .remove("failed_list")
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        for (k, q) in [
            ("back_ms_p50", 0.5),
            ("back_ms_p90", 0.9),
            ("back_ms_p99", 0.99),
        ] {
            a.insert(k.into(), quantile(&back, q).into());
        }
        let moved = a.get("moved").and_then(Value::as_u64).unwrap_or(0);
        a.insert(
            "moved_fraction".into(),
            (moved as f64 / args.clients.max(1) as f64).into(),
        );
        a.insert("storm".into(), storm::figures(&back, &failed));
    }
    out
}

/// Adds `b` into `a`, field by field (see the module doc); `key` is the name of the field.
fn merge_value(key: &str, a: &mut Value, b: &Value) {
    match (a, b) {
        // The same in every shard (relative times of the marks, the node list): the first's.
        (_, _) if key == "marks" || key == "nodes" => {}
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(x) => merge_value(k, x, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => a.extend(b.iter().cloned()),
        (a @ Value::Null, b) => *a = b.clone(),
        (Value::Number(x), Value::Number(y)) => {
            let timed = key.ends_with("_ms") || key.contains("gap") || key.contains("max");
            let merged = match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) if timed && key.contains("first") => json!(x.min(y)),
                (Some(x), Some(y)) if timed => json!(x.max(y)),
                (Some(x), Some(y)) => json!(x + y),
                _ => {
                    let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
                    if timed { json!(x.max(y)) } else { json!(x + y) }
                }
            };
            if let Value::Number(n) = merged {
                *x = n;
            }
        }
        // Strings and booleans: the first shard's.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_times_take_the_worst() {
        let mut a = json!({ "placed": 3, "connect_ms": 900, "codes": { "4003": 2 },
            "marks": { "kill": 100 }, "action": { "back_ms_max": 40, "sent_first_ms": 7,
            "victims": 2 }, "first": null });
        let b = json!({ "placed": 4, "connect_ms": 800, "codes": { "4003": 1, "none": 5 },
            "marks": { "kill": 98 }, "action": { "back_ms_max": 70, "sent_first_ms": 3,
            "victims": 1 }, "first": "e" });
        merge_value("", &mut a, &b);
        assert_eq!(
            a,
            json!({ "placed": 7, "connect_ms": 900, "codes": { "4003": 3, "none": 5 },
                "marks": { "kill": 100 }, "action": { "back_ms_max": 70, "sent_first_ms": 3,
                "victims": 3 }, "first": "e" })
        );
    }
}
