//! The demo backend against a real Redis and node: two people sign in, one opens the socket
//! the backend hands out, and a private message sent through the API reaches it with the id
//! the API answered; a message to someone offline is kept, and a restart of demo-web loses
//! neither sessions nor conversations. (The page itself is tested in a browser: tests/browser.)

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, anyhow};
use imtestkit::{Cluster, NodeOpts, Redis, WAIT, Ws, free_port, http_get, http_request, wait_for};
use serde_json::json;

/// A running demo-web process, stopped when dropped.
struct DemoWeb {
    addr: SocketAddr,
    child: Child,
}

impl DemoWeb {
    async fn start(c: &Cluster) -> Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        Self::start_on(c, addr).await
    }

    async fn start_on(c: &Cluster, addr: SocketAddr) -> Result<Self> {
        let nodes: Vec<&str> = c.nodes.iter().map(|n| n.id.as_str()).collect();
        let child = Command::new(env!("CARGO_BIN_EXE_demo-web"))
            .arg("--listen")
            .arg(addr.to_string())
            .env("IM_REDIS_URL", c.redis.url())
            .env("IM_NODES", nodes.join(","))
            .env("IM_TOKEN_SECRET", imtestkit::SECRET)
            .env("IM_KEY_PREFIX", imtestkit::PREFIX)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start demo-web")?;
        let web = Self { addr, child };
        wait_for("demo-web serving its page", WAIT, || async {
            (http_get(web.addr, "/").await.ok()?.0 == 200).then_some(())
        })
        .await?;
        Ok(web)
    }

    /// Signs `name` in; returns the session cookie and the user's id.
    async fn sign_in(&self, name: &str) -> Result<(String, String)> {
        let answer = http_request(
            self.addr,
            "POST",
            "/api/signin",
            &[],
            Some(&json!({ "name": name })),
        )
        .await?;
        let cookie = answer
            .cookie("demo_session")
            .ok_or_else(|| anyhow!("no session cookie: {answer:?}"))?;
        let id = answer.json()?["id"]
            .as_str()
            .ok_or_else(|| anyhow!("no id: {}", answer.body))?
            .to_owned();
        Ok((format!("demo_session={cookie}"), id))
    }
}

impl Drop for DemoWeb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_private_message_sent_through_the_api_reaches_the_receivers_socket() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let web = DemoWeb::start(&c).await?;
    let (ann, _) = web.sign_in("Ann").await?;
    let (bob, bob_id) = web.sign_in("Bob").await?;

    let answer = http_request(
        web.addr,
        "GET",
        "/prev-connect-imserver",
        &[("Cookie", &bob)],
        None,
    )
    .await?;
    let url = answer.json()?["url"]
        .as_str()
        .ok_or_else(|| anyhow!("no url: {}", answer.body))?
        .to_owned();
    let mut socket = Ws::connect(&url).await?;

    let sent = http_request(
        web.addr,
        "POST",
        "/api/messages",
        &[("Cookie", &ann)],
        Some(&json!({ "to": bob_id, "text": "hi Bob" })),
    )
    .await?;
    assert_eq!(sent.status, 200, "{}", sent.body);
    // Presence broadcasts (Bob's own coming online among them) may come first.
    let got = loop {
        let env = socket.next_message().await?;
        if env.payload["kind"] == "chat" {
            break env;
        }
    };
    assert_eq!(got.payload["text"], "hi Bob");
    assert_eq!(got.payload["from_name"], "Ann");
    assert_eq!(got.id.as_deref(), sent.json()?["id"].as_str());
    Ok(())
}

/// The page is several scripts: every one index.html names is served, as JavaScript (one it
/// names and demo-web does not serve would leave the page without its functions).
#[tokio::test]
async fn every_script_the_page_loads_is_served() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let web = DemoWeb::start(&c).await?;
    let (status, page) = http_get(web.addr, "/").await?;
    assert_eq!(status, 200);
    let scripts: Vec<&str> = page
        .split("<script src=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(scripts.contains(&"/app.js"), "{scripts:?}");
    assert!(scripts.contains(&"/imclient.js"), "{scripts:?}");
    for script in scripts {
        let answer = http_request(web.addr, "GET", script, &[], None).await?;
        assert_eq!(answer.status, 200, "{script}");
        let content_type = answer
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.as_str());
        assert_eq!(
            content_type,
            Some("text/javascript; charset=utf-8"),
            "{script}"
        );
        assert!(answer.body.contains("'use strict';"), "{script}");
    }
    Ok(())
}

async fn get(web: &DemoWeb, path: &str, cookie: &str) -> Result<imtestkit::HttpAnswer> {
    http_request(web.addr, "GET", path, &[("Cookie", cookie)], None).await
}

#[tokio::test]
async fn a_message_to_someone_offline_is_kept_and_a_restart_loses_nothing() -> Result<()> {
    kept_for_later_across_a_restart(Cluster::start(1, NodeOpts::default()).await?).await
}

/// The same on a Redis Cluster, whose key slots refuse a multi-key command spanning two.
#[tokio::test]
async fn on_a_redis_cluster_a_message_to_someone_offline_is_kept_and_a_restart_loses_nothing()
-> Result<()> {
    let c = Cluster::start_on(Redis::start_cluster()?, 1, NodeOpts::default()).await?;
    kept_for_later_across_a_restart(c).await
}

async fn kept_for_later_across_a_restart(c: Cluster) -> Result<()> {
    let web = DemoWeb::start(&c).await?;
    let (ann, ann_id) = web.sign_in("Ann").await?;
    let (bob, bob_id) = web.sign_in("Bob").await?;

    // Bob has no socket open: the message is kept for him, and the answer says so.
    let sent = http_request(
        web.addr,
        "POST",
        "/api/messages",
        &[("Cookie", &ann)],
        Some(&json!({ "to": bob_id, "text": "see you at nine" })),
    )
    .await?;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(sent.json()?["status"], "stored", "{}", sent.body);
    let id = sent.json()?["id"].clone();

    let addr = web.addr;
    drop(web);
    let web = DemoWeb::start_on(&c, addr).await?;

    let me = get(&web, "/api/me", &bob).await?;
    assert_eq!(me.status, 200, "Bob is still signed in: {}", me.body);
    assert_eq!(me.json()?["id"], bob_id.as_str());
    assert!(
        me.headers
            .iter()
            .any(|(k, v)| k == "cache-control" && v == "no-store"),
        "API answers must not be cached: {:?}",
        me.headers
    );

    let chats = get(&web, "/api/chats", &bob).await?.json()?;
    assert_eq!(chats[0]["peer"], ann_id.as_str(), "{chats}");
    assert_eq!(chats[0]["name"], "Ann", "{chats}");
    assert_eq!(chats[0]["unread"], 1, "{chats}");
    let history = get(&web, &format!("/api/chats/{ann_id}/messages"), &bob)
        .await?
        .json()?;
    assert_eq!(history[0]["text"], "see you at nine", "{history}");
    assert_eq!(history[0]["id"], id, "{history}");

    // Bob has now seen it: Ann's copy says delivered, and Bob has nothing unread.
    let mine = get(&web, &format!("/api/chats/{bob_id}/messages"), &ann)
        .await?
        .json()?;
    assert_eq!(mine[0]["status"], "delivered", "{mine}");
    let chats = get(&web, "/api/chats", &bob).await?.json()?;
    assert_eq!(chats[0]["unread"], 0, "{chats}");
    Ok(())
}
