//! `imserver healthcheck`, the containers' healthcheck: it asks the node at `IM_LISTEN` and
//! passes while the node serves clients (`ok`, or `full`: it refuses only new ones), and fails
//! when the node has lost Redis or is gone.

use std::process::{Command, Output};

use anyhow::Result;
use imtestkit::{Cluster, NodeOpts, WAIT, imserver_bin, wait_for};

/// Runs the healthcheck as a container runtime does: the node's settings in the environment.
fn healthcheck(listen: std::net::SocketAddr) -> Result<Output> {
    Ok(Command::new(imserver_bin()?)
        .arg("healthcheck")
        .env("IM_LISTEN", listen.to_string())
        .output()?)
}

#[tokio::test]
async fn the_healthcheck_passes_while_the_node_serves_even_full_and_fails_without_redis()
-> Result<()> {
    let mut c = Cluster::start(1, NodeOpts::default().arg("--max-connections", 1)).await?;
    let addr = c.nodes[0].addr;
    let ok = healthcheck(addr)?;
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("\"status\":\"ok\""));

    let client = c.client_on(0, "only");
    let _ws = c.connect(&client).await?;
    let full = healthcheck(addr)?;
    assert!(full.status.success(), "a full node still serves: {full:?}");
    assert!(String::from_utf8_lossy(&full.stdout).contains("\"status\":\"full\""));

    c.redis.kill();
    wait_for("healthz says Redis is down", WAIT, || async {
        let (status, body) = c.nodes[0].get("/healthz").await.ok()?;
        (status == 503 && body.contains("\"degraded\"")).then_some(())
    })
    .await?;
    let degraded = healthcheck(addr)?;
    assert!(!degraded.status.success(), "{degraded:?}");

    c.nodes[0].signal("KILL");
    c.nodes[0].wait_exit(WAIT).await?;
    let gone = healthcheck(addr)?;
    assert!(!gone.status.success(), "{gone:?}");
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no answer"));
    Ok(())
}
