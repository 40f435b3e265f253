//! Presence questions, answered from the per-node presence hashes the nodes keep in Redis.
//! "Is X online" is one HEXISTS on X's home node's hash; "how many of a channel's members are
//! online" is read from the per-channel counts each node keeps, never from a member list.

use std::collections::BTreeMap;

use redis::AsyncCommands;

use crate::client::ImClient;
use crate::error::Result;
use crate::ids::{ChanName, ClientId, NodeId};

/// Keys read per HSCAN round trip when listing large hashes.
const SCAN_COUNT: usize = 1000;

impl ImClient {
    /// Whether `client_id` has at least one open connection.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// if im.has_online("alice").await? { tracing::info!("alice is here"); }
    /// # Ok(()) }
    /// ```
    pub async fn has_online(&self, client_id: &str) -> Result<bool> {
        let node = self.home_node(client_id)?;
        let mut conn = self.conn().await?;
        Ok(conn.hexists(self.keys().presence(&node), client_id).await?)
    }

    /// Every online client, across all nodes (including nodes no longer in the node list that
    /// still hold connections).
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// for client in im.online_clients().await? { tracing::info!("{client}"); }
    /// # Ok(()) }
    /// ```
    pub async fn online_clients(&self) -> Result<Vec<ClientId>> {
        let mut out = Vec::new();
        let mut conn = self.conn().await?;
        for node in self.presence_nodes().await? {
            let key = self.keys().presence(&node);
            let mut cursor: u64 = 0;
            loop {
                let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                    .arg(&key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(&mut conn)
                    .await?;
                out.extend(
                    page.into_iter()
                        .filter_map(|(id, _)| ClientId::new(id).ok()),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// How many clients are online, across all nodes.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// tracing::info!("{} online", im.online_count().await?);
    /// # Ok(()) }
    /// ```
    pub async fn online_count(&self) -> Result<u64> {
        let nodes = self.presence_nodes().await?;
        if nodes.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.hlen(self.keys().presence(node));
        }
        let mut conn = self.conn().await?;
        let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
        Ok(counts.into_iter().sum())
    }

    /// How many members of `chan` are online now, from the counts each node keeps; no member
    /// list is read.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// tracing::info!("{} online in the lobby", im.chan_online("room:lobby").await?);
    /// # Ok(()) }
    /// ```
    pub async fn chan_online(&self, chan: &str) -> Result<u64> {
        let chan = ChanName::new(chan)?;
        let nodes = self.presence_nodes().await?;
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.hget(self.keys().chan_online(node), chan.as_str());
        }
        let mut conn = self.conn().await?;
        let counts: Vec<Option<u64>> = pipe.query_async(&mut conn).await?;
        Ok(counts.into_iter().flatten().sum())
    }

    /// How many members of each channel are online now, summed over the counts each node
    /// keeps; a channel that no node counts is absent.
    pub(crate) async fn online_by_chan(&self) -> Result<BTreeMap<String, u64>> {
        let nodes = self.presence_nodes().await?;
        let mut conn = self.conn().await?;
        let mut online: BTreeMap<String, u64> = BTreeMap::new();
        for node in &nodes {
            let counts: Vec<(String, u64)> = conn.hgetall(self.keys().chan_online(node)).await?;
            for (chan, n) in counts {
                *online.entry(chan).or_default() += n;
            }
        }
        Ok(online)
    }

    /// The nodes whose records may hold presence: the node list plus any node registered in
    /// Redis.
    async fn presence_nodes(&self) -> Result<Vec<NodeId>> {
        let mut conn = self.conn().await?;
        let registered: Vec<String> = conn.smembers(self.keys().nodes()).await?;
        let mut nodes: Vec<NodeId> = self.nodes().to_vec();
        nodes.extend(registered.into_iter().filter_map(|n| NodeId::new(n).ok()));
        nodes.sort();
        nodes.dedup();
        Ok(nodes)
    }
}
