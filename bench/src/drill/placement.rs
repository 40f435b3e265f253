//! Which client ids the drill uses, and so where its clients live. By default client `i` is
//! `c<i>` and the rendezvous hash spreads them evenly. With `--drill-load N` the first N ids
//! whose home (among all the configured nodes) is `--drill-node` and the first others whose
//! home is another node are interleaved, so that one node holds N clients and the others the
//! rest, and every process of a sharded run holds its share of both.

use anyhow::{Context as _, Result, ensure};
use imclient::{ImClient, NodeId, node::home_node};

use super::super::chan_name;

/// How many ids may be tried per id wanted before giving up (a node list where the drill node
/// almost never wins).
const TRIES_PER_ID: usize = 64;

/// The ids of clients `0..clients`: `c<i>`, or with `load` that many homed on node `on`.
pub fn client_ids(
    nodes: &[String],
    clients: usize,
    on: Option<usize>,
    load: Option<usize>,
) -> Result<Vec<String>> {
    let Some(load) = load else {
        return Ok((0..clients).map(|i| format!("c{i}")).collect());
    };
    let on = on.context("--drill-load needs --drill-node")?;
    ensure!(load <= clients, "--drill-load is more than --clients");
    let ids: Vec<NodeId> = nodes
        .iter()
        .map(|n| NodeId::new(n.as_str()))
        .collect::<Result<_, _>>()?;
    let (mut homed, mut others) = (Vec::with_capacity(load), Vec::new());
    let mut k = 0usize;
    while homed.len() < load || others.len() < clients - load {
        ensure!(
            k < clients * TRIES_PER_ID,
            "no {load} of {k} client ids have their home on the drill node"
        );
        let id = format!("c{k}");
        k += 1;
        let home = home_node(&ids, &id).context("no nodes")?;
        if *home == ids[on] {
            if homed.len() < load {
                homed.push(id);
            }
        } else if others.len() < clients - load {
            others.push(id);
        }
    }
    // Client i is homed on the drill node when i * load / clients steps up: evenly spread.
    let (mut homed, mut others) = (homed.into_iter(), others.into_iter());
    Ok((0..clients)
        .map(|i| {
            if (i + 1) * load / clients > i * load / clients {
                homed.next()
            } else {
                others.next()
            }
            .unwrap_or_default()
        })
        .collect())
}

/// Makes client `lo + j` (of `ids`, the ids of clients `lo..`) a member of channel
/// `(lo + j) % chans`.
pub async fn join_round_robin(
    im: &ImClient,
    ids: &[String],
    lo: usize,
    chans: usize,
) -> Result<()> {
    for g in 0..chans {
        let members: Vec<String> = ids
            .iter()
            .enumerate()
            .filter(|(j, _)| (lo + j) % chans == g)
            .map(|(_, id)| id.clone())
            .collect();
        if !members.is_empty() {
            im.join_chan_many(&members, &chan_name(g)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_lands_on_the_drill_node_spread_over_the_client_numbers() {
        let nodes: Vec<String> = ["ws://127.0.0.1:1", "ws://127.0.0.1:2", "ws://127.0.0.1:3"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let node_ids: Vec<NodeId> = nodes.iter().map(|n| NodeId::new(n).unwrap()).collect();
        let ids = client_ids(&nodes, 1_000, Some(1), Some(900)).unwrap();
        let on = |range: std::ops::Range<usize>| {
            ids[range]
                .iter()
                .filter(|id| *home_node(&node_ids, id).unwrap() == node_ids[1])
                .count()
        };
        assert_eq!(on(0..1_000), 900);
        // Each half (a shard of two) holds its share.
        assert_eq!(on(0..500), 450);
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), 1_000);
        assert_eq!(
            client_ids(&nodes, 3, None, None).unwrap(),
            ["c0", "c1", "c2"]
        );
    }
}
