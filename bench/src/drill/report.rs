//! The drill's figures, from the clients' records and the delivery timeline, relative to the
//! marks the script wrote: the action (who was on the node it hit, how soon they were back),
//! an outage (`down`/`up`), restarts in place, and the private messages a node took and no
//! client received.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Value, json};

use super::record::{Event, Log};
use super::storm::{self, quantile};
use super::{Drill, lock};

/// The private messages a node took (`taken`: send time, node, receiver) that no client
/// received: how many, on which node, and when they were sent (ms after `t0`, the first mark,
/// when there is one; else the unix ms). Each message is named by its send time in ns.
/// `unannounced` counts those whose receiver was not told `missed` at or after the send: the
/// losses nobody learnt of. `to_others` counts those whose receiver was not on `drill_node` at
/// `t0`: a client the action did not touch.
pub fn lost_private(
    taken: &[(u64, String, Option<usize>)],
    logs: &[Option<&Log>],
    t0: Option<u64>,
    drill_node: Option<usize>,
) -> Value {
    let delivered: std::collections::HashSet<u64> = logs
        .iter()
        .flatten()
        .flat_map(|l| l.private_sent.iter().copied())
        .collect();
    let mut by_node = BTreeMap::new();
    let mut sent_ms = Vec::new();
    let (mut unannounced, mut to_others) = (0u64, 0u64);
    for (t, node, receiver) in taken {
        if !delivered.contains(t) {
            count(&mut by_node, node.clone());
            let ms = t / 1_000_000;
            sent_ms.push(t0.map_or(ms as i64, |t0| ms as i64 - t0 as i64));
            let log = receiver.and_then(|r| logs.get(r).copied().flatten());
            let told = log.is_some_and(|log| log.missed().any(|(at, _)| at >= ms));
            unannounced += u64::from(!told);
            let hit = log.is_some_and(|log| {
                drill_node.is_some() && log.node_at(t0.unwrap_or(u64::MAX)) == drill_node
            });
            to_others += u64::from(!hit);
        }
    }
    sent_ms.sort_unstable();
    json!({
        "count": sent_ms.len(),
        "unannounced": unannounced,
        "to_others": to_others,
        "by_node": by_node,
        "sent_first_ms": sent_ms.first(),
        "sent_last_ms": sent_ms.last(),
        "sent_samples_ms": sent_ms.iter().step_by((sent_ms.len() / 10).max(1)).collect::<Vec<_>>(),
    })
}

pub fn count(map: &mut BTreeMap<String, u64>, key: impl Into<String>) {
    *map.entry(key.into()).or_default() += 1;
}

/// A close code as a report key: the code, or `none` for a connection that ended without one.
fn code_key(code: Option<u16>) -> String {
    code.map_or_else(|| "none".to_owned(), |c| c.to_string())
}

/// The times the figures are relative to.
pub struct Window<'a> {
    /// Whether to add the raw lists the storm figures are made of (a shard's report, merged
    /// by the coordinator).
    pub raw: bool,
    pub ready_ms: u64,
    pub end_ms: u64,
    pub drill_node: Option<usize>,
    pub marks: &'a [(String, u64)],
}

/// The figures, from the clients' records and the delivery timeline.
pub fn report(drill: &Drill, logs: &[Log], w: &Window<'_>) -> Value {
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
                .filter(|e| matches!(e, Event::Failed { at, .. } if *at > t0))
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
    let pct = |q: f64| quantile(&back, q);
    // Every attempt that failed after t0, by any client: refusals by the live nodes come in
    // waves when a crowd comes back (`storm.rs`).
    let failed: Vec<(u64, String)> = logs
        .iter()
        .flat_map(|log| &log.events)
        .filter_map(|e| match e {
            Event::Failed { at, kind } if *at > t0 => Some((at - t0, kind.clone())),
            _ => None,
        })
        .collect();
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
    let away_pct = |q: f64| quantile(&away, q);
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
    let mut out = json!({
        "mark": w.marks.first().map(|(n, _)| n.clone()),
        "at_ms": t0 as i64 - w.ready_ms as i64,
        "node": x.map(name),
        "victims": victims,
        "victims_back": back.len(),
        "back_ms_p50": pct(0.5),
        "back_ms_p90": pct(0.9),
        "back_ms_p99": pct(0.99),
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
        "storm": storm::figures(&back, &failed),
    });
    if let (true, Value::Object(o)) = (w.raw, &mut out) {
        o.insert("back_list".into(), json!(back));
        o.insert("failed_list".into(), json!(failed));
    }
    out
}
