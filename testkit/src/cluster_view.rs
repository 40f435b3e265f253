//! What one node of a Redis Cluster says about it: CLUSTER SLOTS and CLUSTER NODES read into a
//! [`View`], and CLUSTER INFO and INFO sections as fields.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, anyhow, bail};

use crate::resp::{Resp, command};

/// One node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    /// CLUSTER SLOTS, sorted by slot.
    pub(crate) slots: Vec<SlotRange>,
    /// CLUSTER NODES, sorted by id.
    pub(crate) nodes: Vec<NodeLine>,
}

/// Who serves a range of slots. Without the replicas: CLUSTER SLOTS leaves out a replica
/// until it has a replication offset above 0, which in an idle cluster takes the master's
/// first replication ping (10 s); CLUSTER NODES shows the pairs at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub(crate) start: u16,
    pub(crate) end: u16,
    pub(crate) master: u16,
}

/// A line of CLUSTER NODES.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NodeLine {
    pub(crate) id: String,
    pub(crate) port: u16,
    /// Without `myself`, which differs from node to node.
    pub(crate) flags: BTreeSet<String>,
    /// The id of the master this node replicates, `-` for a master.
    pub(crate) master_id: String,
    pub(crate) connected: bool,
}

impl NodeLine {
    pub(crate) fn is_master(&self) -> bool {
        self.flags.contains("master")
    }

    /// `fail` or `fail?`: a node that is, or is suspected to be, down.
    pub(crate) fn failing(&self) -> bool {
        self.flags.iter().any(|f| f.starts_with("fail"))
    }
}

pub(crate) fn view_of(port: u16) -> Result<View> {
    let mut nodes = cluster_nodes(port)?;
    nodes.sort();
    Ok(View {
        slots: cluster_slots(port)?,
        nodes,
    })
}

pub(crate) fn master_in(slots: &[SlotRange], slot: u16) -> Result<u16> {
    slots
        .iter()
        .find(|r| (r.start..=r.end).contains(&slot))
        .map(|r| r.master)
        .ok_or_else(|| anyhow!("no master serves slot {slot}"))
}

pub(crate) fn cluster_info(port: u16) -> Result<BTreeMap<String, String>> {
    Ok(fields(&command(port, &["CLUSTER", "INFO"])?.text()?))
}

pub(crate) fn info(port: u16, section: &str) -> Result<BTreeMap<String, String>> {
    Ok(fields(&command(port, &["INFO", section])?.text()?))
}

/// Whether the server answering on `port` is process `pid`, not another that took the port
/// first (a server started on a taken port fails to bind and exits, while the other answers).
pub(crate) fn served_by(port: u16, pid: u32) -> bool {
    info(port, "server").is_ok_and(|i| i.get("process_id") == Some(&pid.to_string()))
}

fn fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// CLUSTER NODES: `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slots>…`.
fn cluster_nodes(port: u16) -> Result<Vec<NodeLine>> {
    let text = command(port, &["CLUSTER", "NODES"])?.text()?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                bail!("bad CLUSTER NODES line {line:?}");
            }
            let addr = f[1].split('@').next().unwrap_or_default();
            let port = addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| anyhow!("no port in {line:?}"))?;
            Ok(NodeLine {
                id: f[0].to_owned(),
                port,
                flags: f[2]
                    .split(',')
                    .filter(|&flag| flag != "myself")
                    .map(str::to_owned)
                    .collect(),
                master_id: f[3].to_owned(),
                connected: f[7] == "connected",
            })
        })
        .collect()
}

/// CLUSTER SLOTS: `[start, end, [ip, port, id, …], replica…]` per range, sorted by start; the
/// replicas are left out (see `SlotRange`).
fn cluster_slots(port: u16) -> Result<Vec<SlotRange>> {
    let Resp::Array(entries) = command(port, &["CLUSTER", "SLOTS"])? else {
        bail!("CLUSTER SLOTS on {port} is not an array");
    };
    let mut ranges = entries
        .iter()
        .map(|entry| {
            let Resp::Array(parts) = entry else {
                bail!("bad CLUSTER SLOTS entry {entry:?}");
            };
            let num = |i: usize| match parts.get(i) {
                Some(Resp::Int(n)) => u16::try_from(*n).ok(),
                _ => None,
            };
            let node_port = |node: &Resp| match node {
                Resp::Array(n) => match n.get(1) {
                    Some(Resp::Int(p)) => u16::try_from(*p).ok(),
                    _ => None,
                },
                _ => None,
            };
            let bad = || anyhow!("bad CLUSTER SLOTS entry {entry:?}");
            Ok(SlotRange {
                start: num(0).ok_or_else(bad)?,
                end: num(1).ok_or_else(bad)?,
                master: parts.get(2).and_then(node_port).ok_or_else(bad)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    ranges.sort_by_key(|r| r.start);
    Ok(ranges)
}
