//! Nodes behind nginx as the single public entry point, as scripts/cluster.sh runs them (the
//! same configuration templates): node addresses point through nginx (`ws://<entry>/nK`), and
//! a client connects, is welcomed and receives through it.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result};
use imclient::{ImClient, ImClientOptions};
use imtestkit::{NodeOpts, Redis, WAIT, Ws, free_port, wait_for};
use serde_json::json;

/// An nginx process owned by the test.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn template(name: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/nginx")
        .join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Starts nginx on `port` with one location per (name, node port).
fn nginx(port: u16, nodes: &[(String, u16)]) -> Result<Nginx> {
    let dir = std::env::temp_dir().join(format!("imtest-nginx-{port}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tmp"))?;
    let mut locations = String::new();
    for (name, node_port) in nodes {
        locations.push_str(
            &template("node-location.template")?
                .replace("{NAME}", name)
                .replace("{NODE_PORT}", &node_port.to_string()),
        );
    }
    let conf = template("cluster.conf.template")?
        .replace("{DIR}", &dir.to_string_lossy())
        .replace("{PORT}", &port.to_string())
        .replace("{LOCATIONS}", &locations);
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let bin = ["nginx", "/usr/sbin/nginx"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("-v")
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
        .context("nginx is not installed: run scripts/test.sh, which installs it")?;
    let child = Command::new(bin)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        // One process: a killed master would leave its worker running, holding the test's files
        // (and whatever the test runner holds) open.
        .args(["-g", "daemon off; master_process off;"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log"))?)
        .spawn()?;
    Ok(Nginx { child, dir })
}

#[tokio::test]
async fn clients_connect_and_receive_through_nginx() -> Result<()> {
    let redis = Redis::start()?;
    let entry = free_port();
    let node_ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let ids: Vec<String> = (1..=2)
        .map(|i| format!("ws://127.0.0.1:{entry}/n{i}"))
        .collect();
    let mut nodes = Vec::new();
    for (i, port) in node_ports.iter().enumerate() {
        let opts = NodeOpts::default()
            .arg("--node", &ids[i])
            .arg("--nodes", ids.join(","));
        nodes.push(imtestkit::Node::start_at(&redis, opts, &format!("127.0.0.1:{port}")).await?);
    }
    let routes: Vec<(String, u16)> = node_ports
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("n{}", i + 1), *p))
        .collect();
    let _nginx = nginx(entry, &routes)?;
    wait_for("nginx listening", WAIT, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", entry))
            .await
            .ok()
    })
    .await?;

    let im = ImClient::new(
        ImClientOptions::new(redis.url(), ids.clone(), imtestkit::SECRET)
            .key_prefix(imtestkit::PREFIX),
    )?;
    im.refresh_nodes().await?;
    // One client per node, each through its own location.
    let both: Vec<imclient::NodeId> = ids
        .iter()
        .map(|n| imclient::NodeId::new(n).unwrap())
        .collect();
    for id in &ids {
        let client = (0..)
            .map(|i| format!("via{i}"))
            .find(|c| imclient::node::home_node(&both, c).unwrap().as_str() == id)
            .unwrap();
        let url = im.prev_connect_server(&client, json!(null))?;
        assert!(url.starts_with(&format!("{id}/ws?token=")), "{url}");
        let mut ws = Ws::connect(&url).await?;
        assert_eq!(ws.welcome.payload["node"], json!(id));
        im.send_message("backend", [&client], &"through nginx", false)
            .await?;
        assert_eq!(ws.next_message().await?.payload, json!("through nginx"));
    }
    // A page served through the same entry (as the demo is under scripts/cluster.sh) is of
    // the nodes' own origin: nginx passes Host with its port, and the node admits it.
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let url = im.prev_connect_server("page", json!(null))?;
        let mut req = url.into_client_request()?;
        req.headers_mut()
            .insert("origin", format!("http://127.0.0.1:{entry}").parse()?);
        tokio_tungstenite::connect_async(req).await?;
    }
    drop(nodes);
    Ok(())
}
