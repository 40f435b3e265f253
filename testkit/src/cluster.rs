//! A test deployment: one Redis, some nodes and an imclient that knows them; or nodes planned on
//! free ports and listed up front, for tests of the live node set.

use anyhow::Result;
use imclient::{ImClient, ImClientOptions};

use crate::deadline::{WAIT, wait_for};
use crate::node::{Node, NodeOpts};
use crate::redis_server::Redis;
use crate::ws::Ws;
use crate::{PREFIX, SECRET, free_port};

/// A test cluster: one Redis, some nodes, and an ImClient that knows them.
/// Fields drop in order: nodes stop before their Redis does.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub im: ImClient,
    pub redis: Redis,
}

impl Cluster {
    pub async fn start(n: usize, opts: NodeOpts) -> Result<Self> {
        Self::start_on(Redis::start()?, n, opts).await
    }

    /// A cluster on a Redis the caller started.
    pub async fn start_on(redis: Redis, n: usize, opts: NodeOpts) -> Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..n {
            nodes.push(Node::start(&redis, opts.clone()).await?);
        }
        let im = client_for(&redis, &nodes)?;
        Ok(Self { nodes, im, redis })
    }

    /// A client id whose home is node `idx`.
    pub fn client_on(&self, idx: usize, base: &str) -> String {
        (0..)
            .map(|i| format!("{base}{i}"))
            .find(|c| {
                self.im
                    .home_node(c)
                    .is_ok_and(|home| home.as_str() == self.nodes[idx].id)
            })
            .expect("every node is some client's home")
    }

    pub async fn connect(&self, client: &str) -> Result<Ws> {
        Ws::connect(
            &self
                .im
                .prev_connect_server(client, serde_json::json!({ "name": client }))?,
        )
        .await
    }
}

pub fn client_for(redis: &Redis, nodes: &[Node]) -> Result<ImClient> {
    Ok(ImClient::new(
        ImClientOptions::new(redis.url(), nodes.iter().map(|n| n.id.clone()), SECRET)
            .key_prefix(PREFIX),
    )?)
}

/// Nodes planned on free ports and all listed up front (`--nodes`), started one at a time: for
/// tests of the live node set.
#[derive(Debug)]
pub struct Listed {
    pub ports: Vec<u16>,
    /// Their addresses, as the node list and imclient have them.
    pub ids: Vec<String>,
}

impl Listed {
    pub fn new(n: usize) -> Self {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let ids = ports
            .iter()
            .map(|p| format!("ws://127.0.0.1:{p}"))
            .collect();
        Self { ports, ids }
    }

    /// Starts node `i` with the list.
    pub async fn start(&self, redis: &Redis, i: usize) -> Result<Node> {
        let opts = NodeOpts::default().arg("--nodes", self.ids.join(","));
        Node::start_at(redis, opts, &format!("127.0.0.1:{}", self.ports[i])).await
    }

    /// An imclient with the whole list, knowing which of them are live.
    pub async fn client(&self, redis: &Redis) -> Result<ImClient> {
        let im = ImClient::new(
            ImClientOptions::new(redis.url(), self.ids.clone(), SECRET).key_prefix(PREFIX),
        )?;
        im.refresh_nodes().await?;
        Ok(im)
    }

    /// The first of `prefix0`, `prefix1`, … whose home among all the listed nodes is node `i`.
    pub fn client_homed_at(&self, prefix: &str, i: usize) -> String {
        (0..)
            .map(|n| format!("{prefix}{n}"))
            .find(|c| self.home_among_all(c) == self.ids[i])
            .expect("every listed node is some client's home")
    }

    /// Waits until `im` sends `client` to node `i` (it follows the live set).
    pub async fn wait_routed(&self, im: &ImClient, client: &str, i: usize) -> Result<()> {
        wait_for(
            &format!("imclient routes {client} to node {i}"),
            WAIT,
            || async { (im.home_node(client).ok()?.as_str() == self.ids[i]).then_some(()) },
        )
        .await
    }

    /// The home of `client` among all the listed nodes, live or not.
    pub fn home_among_all(&self, client: &str) -> &str {
        let all: Vec<imclient::NodeId> = self
            .ids
            .iter()
            .map(|n| imclient::NodeId::new(n).expect("listed ids are ws:// addresses"))
            .collect();
        let home = imclient::node::home_node(&all, client)
            .expect("the list is not empty")
            .clone();
        self.ids
            .iter()
            .find(|id| **id == home.as_str())
            .expect("the home is one of the listed nodes")
    }
}
