//! What a node reports over HTTP: its plain GET answers and its Prometheus metrics, read until
//! one reaches a value within a deadline.

use std::io::{Read as _, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::deadline::{WAIT, wait_for};
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

pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || -> Result<(u16, String)> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("bad response"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    })
    .await?
}
