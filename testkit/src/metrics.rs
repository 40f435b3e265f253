//! What a node reports over HTTP: its plain GET answers and its Prometheus metrics, read until
//! one reaches a value within a deadline.

use anyhow::{Result, anyhow};

use crate::deadline::{WAIT, wait_for};
use crate::http::http_get;
use crate::node::Node;

impl Node {
    /// GET `path`; returns status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.addr, path).await
    }

    /// The value of a metric line starting with `prefix` (name plus labels).
    pub async fn metric(&self, prefix: &str) -> Result<u64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("metric {prefix} not found"))
    }

    pub async fn wait_metric(&self, prefix: &str, at_least: u64) -> Result<u64> {
        wait_for(&format!("{prefix} >= {at_least}"), WAIT, || async {
            self.metric(prefix).await.ok().filter(|v| *v >= at_least)
        })
        .await
    }
}
