//! The HTTP API (`--api-listen`), end to end: a real node with its API on a free port, real
//! HTTP requests with API keys, real WebSocket clients receiving what the API sent, and a real
//! Redis that is killed for the outage test.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use imclient::contract::Kind;
use imtestkit::{Cluster, NodeOpts, Redis, WAIT, Ws, http_request_text, wait_for};
use serde_json::{Value, json};

const KEY: &str = "first-api-key-0123456789";
const NEW_KEY: &str = "second-api-key-0123456789";

fn api_opts() -> NodeOpts {
    NodeOpts::default()
        .arg("--api-listen", "127.0.0.1:0")
        .arg("--api-key", format!("{KEY},{NEW_KEY}"))
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    /// The error body's code and field.
    fn error(&self) -> (String, Option<String>) {
        let body = self.json();
        (
            body["error"].as_str().unwrap_or_default().to_owned(),
            body["field"].as_str().map(str::to_owned),
        )
    }
}

/// One HTTP/1.1 request on a fresh connection.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Answer> {
    let answer = http_request_text(addr, method, path, headers, body).await?;
    let head = answer
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("\r\n");
    Ok(Answer {
        status: answer.status,
        head,
        body: answer.body,
    })
}

/// A backend calling the API with one key.
struct Api {
    addr: SocketAddr,
    key: String,
}

impl Api {
    fn of(cluster: &Cluster) -> Result<Self> {
        Ok(Self {
            addr: cluster.nodes[0]
                .api
                .context("the node has no API address")?,
            key: KEY.to_owned(),
        })
    }

    fn with_key(&self, key: &str) -> Self {
        Self {
            addr: self.addr,
            key: key.to_owned(),
        }
    }

    async fn raw(&self, method: &str, body: &str) -> Result<Answer> {
        let auth = format!("Bearer {}", self.key);
        request(
            self.addr,
            "POST",
            &format!("/api/v1/{method}"),
            &[("Authorization", &auth)],
            body,
        )
        .await
    }

    async fn call(&self, method: &str, params: Value) -> Result<Answer> {
        self.raw(method, &params.to_string()).await
    }

    /// A call that must succeed; its result.
    async fn ok(&self, method: &str, params: Value) -> Result<Value> {
        let answer = self.call(method, params).await?;
        ensure!(answer.status == 200, "{method} answered {answer:?}");
        Ok(answer.json())
    }

    /// A WebSocket connected with a URL from `connect_url`.
    async fn connect(&self, client: &str) -> Result<Ws> {
        let answer = self
            .ok(
                "connect_url",
                json!({ "client": client, "meta": { "name": client } }),
            )
            .await?;
        Ws::connect(answer["url"].as_str().context("no url")?).await
    }
}

#[tokio::test]
async fn keys_routes_and_bad_input_get_clear_answers() -> Result<()> {
    let cluster = Cluster::start(1, api_opts().arg("--api-max-body-bytes", 2048)).await?;
    let api = Api::of(&cluster)?;
    let node = &cluster.nodes[0];

    // No key, a wrong key: 401 with the node's error body.
    let answer = request(api.addr, "POST", "/api/v1/nodes", &[], "{}").await?;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(answer.error().0, "unauthorized");
    assert!(answer.header("www-authenticate").is_some());
    let answer = api
        .with_key("not-a-key-of-this-node")
        .call("nodes", json!({}))
        .await?;
    assert_eq!(answer.status, 401);
    assert!(
        !answer.body.contains("not-a-key"),
        "the key is echoed: {}",
        answer.body
    );

    // Both keys of a rotation work, in either header.
    let nodes = api.ok("nodes", json!({})).await?;
    assert_eq!(nodes["nodes"], json!([node.id]));
    assert_eq!(
        api.with_key(NEW_KEY).call("nodes", json!({})).await?.status,
        200
    );
    let answer = request(
        api.addr,
        "POST",
        "/api/v1/nodes",
        &[("X-Api-Key", NEW_KEY)],
        "",
    )
    .await?;
    assert_eq!(answer.status, 200, "{answer:?}");

    // Unknown routes, wrong HTTP method.
    let auth = format!("Bearer {KEY}");
    let answer = api.call("no_such_method", json!({})).await?;
    assert_eq!(
        (answer.status, answer.error().0.as_str()),
        (404, "not_found")
    );
    let answer = request(api.addr, "POST", "/elsewhere", &[], "{}").await?;
    assert_eq!(answer.status, 404);
    let answer = request(
        api.addr,
        "GET",
        "/api/v1/send",
        &[("Authorization", &auth)],
        "",
    )
    .await?;
    assert_eq!(answer.status, 405, "{answer:?}");
    assert_eq!(answer.header("allow").as_deref(), Some("POST"));

    // Malformed JSON, bad ids and names: 400 naming the field.
    let answer = api.raw("send", "{\"sender\": ").await?;
    assert_eq!(
        (answer.status, answer.error().0.as_str()),
        (400, "invalid_json")
    );
    let answer = api
        .call(
            "send",
            json!({ "sender": "", "receivers": ["bob"], "payload": 1 }),
        )
        .await?;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.error(),
        ("invalid_client_id".into(), Some("sender".into()))
    );
    let answer = api
        .call(
            "send",
            json!({ "sender": "a", "receivers": ["bob", "x\u{7}"], "payload": 1 }),
        )
        .await?;
    assert_eq!(
        answer.error(),
        ("invalid_client_id".into(), Some("receivers[1]".into()))
    );
    let answer = api
        .call("send", json!({ "sender": "a", "receivers": ["bob"] }))
        .await?;
    assert_eq!(
        answer.error(),
        ("missing_field".into(), Some("payload".into()))
    );
    let answer = api
        .call("join", json!({ "chan": "two words", "client": "bob" }))
        .await?;
    assert_eq!(answer.error(), ("invalid_chan".into(), Some("chan".into())));
    let answer = api
        .call(
            "send",
            json!({ "sender": "a", "receiver": ["bob"], "payload": 1 }),
        )
        .await?;
    assert_eq!(
        answer.error(),
        ("unknown_field".into(), Some("receiver".into()))
    );
    let answer = api
        .call(
            "send",
            json!({ "sender": "a", "receivers": ["b"], "payload": 1, "message_id": "no spaces" }),
        )
        .await?;
    assert_eq!(
        answer.error(),
        ("invalid_message_id".into(), Some("message_id".into()))
    );

    // Over the body limit: 413.
    let big = json!({ "sender": "a", "receivers": ["b"], "payload": "x".repeat(4096) });
    let answer = api.call("send", big).await?;
    assert_eq!(
        (answer.status, answer.error().0.as_str()),
        (413, "body_too_large")
    );

    // /metrics on the node's own listener counts by route and status.
    let (_, metrics) = node.get("/metrics").await?;
    let line = |route: &str, status: u16| {
        format!(
            "im_api_requests_total{{node=\"{}\",route=\"{route}\",status=\"{status}\"}}",
            node.id
        )
    };
    assert_eq!(node.metric(&line("nodes", 401)).await?, 2, "{metrics}");
    assert_eq!(node.metric(&line("nodes", 200)).await?, 3);
    assert_eq!(node.metric(&line("send", 400)).await?, 6);
    assert_eq!(node.metric(&line("send", 413)).await?, 1);
    assert_eq!(node.metric(&line("unknown", 404)).await?, 2);
    Ok(())
}

#[tokio::test]
async fn each_key_has_its_own_rate_limit() -> Result<()> {
    let opts = api_opts().arg("--api-rate", 1).arg("--api-burst", 2);
    let cluster = Cluster::start(1, opts).await?;
    let api = Api::of(&cluster)?;
    assert_eq!(api.call("nodes", json!({})).await?.status, 200);
    assert_eq!(api.call("nodes", json!({})).await?.status, 200);
    let answer = api.call("nodes", json!({})).await?;
    assert_eq!(
        (answer.status, answer.error().0.as_str()),
        (429, "rate_limited")
    );
    let wait: u64 = answer
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .context("no Retry-After")?;
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // The other key of the rotation has a budget of its own.
    assert_eq!(
        api.with_key(NEW_KEY).call("nodes", json!({})).await?.status,
        200
    );
    Ok(())
}

#[tokio::test]
async fn what_the_api_sends_reaches_websocket_clients() -> Result<()> {
    let cluster = Cluster::start(1, api_opts()).await?;
    let api = Api::of(&cluster)?;

    // A connect URL: the node, its expiry, and a socket that opens with it.
    let answer = api
        .ok(
            "connect_url",
            json!({ "client": "alice", "meta": { "name": "Alice" } }),
        )
        .await?;
    assert_eq!(answer["node"], json!(cluster.nodes[0].id));
    let now = imclient::now_ms() / 1000;
    let expires = answer["expires_at"].as_u64().context("no expires_at")?;
    assert!(
        expires > now && expires <= now + 61,
        "expires_at {expires}, now {now}"
    );
    let mut alice = Ws::connect(answer["url"].as_str().context("no url")?).await?;
    let mut bob = api.connect("bob").await?;

    // A private message under the caller's id, with a receipt for the sender.
    let sent = api
        .ok(
            "send",
            json!({ "sender": "alice", "receivers": ["bob"], "payload": { "text": "hi" },
                    "receipt": true, "message_id": "order-42-attempt" }),
        )
        .await?;
    assert_eq!(sent["message_id"], "order-42-attempt");
    assert_eq!(sent["nodes"][0]["taken"], true);
    assert_eq!(sent["unreachable"], json!([]));
    let got = bob.next_message().await?;
    assert_eq!(
        (got.kind, got.id.as_deref()),
        (Kind::Message, Some("order-42-attempt"))
    );
    assert_eq!(got.payload, json!({ "text": "hi" }));
    let receipt = alice.next_message().await?;
    assert_eq!(receipt.kind, Kind::Receipt);
    assert!(
        receipt.payload.to_string().contains("order-42-attempt"),
        "{receipt:?}"
    );

    // A channel: join through the API, then a channel message arrives.
    let joined = api
        .ok("join", json!({ "chan": "room:lobby", "client": "bob" }))
        .await?;
    assert_eq!(joined["clients"], 1);
    let sent = api
        .ok(
            "send_chan",
            json!({ "sender": "alice", "chan": "room:lobby", "payload": "to the room" }),
        )
        .await?;
    assert_eq!(sent["nodes"], 1);
    let got = bob.next_message().await?;
    assert_eq!(
        (got.kind, got.payload.clone()),
        (Kind::Channel, json!("to the room"))
    );
    assert_eq!(got.chan.as_ref().map(|c| c.as_str()), Some("room:lobby"));
    assert_eq!(got.id.as_deref(), sent["message_id"].as_str());

    // A broadcast reaches both.
    let sent = api
        .ok(
            "broadcast",
            json!({ "sender": "system", "payload": "everyone", "message_id": "notice-7" }),
        )
        .await?;
    assert_eq!(sent["message_id"], "notice-7");
    for ws in [&mut alice, &mut bob] {
        let got = ws.next_message().await?;
        assert_eq!(got.id.as_deref(), Some("notice-7"));
        assert_eq!(
            (got.kind, got.payload),
            (Kind::Broadcast, json!("everyone"))
        );
    }

    // Leaving, several at once: the channel reaches alice, no longer bob.
    api.ok("join", json!({ "chan": "room:lobby", "client": "alice" }))
        .await?;
    api.ok(
        "leave",
        json!({ "chan": "room:lobby", "clients": ["bob", "carol"] }),
    )
    .await?;
    api.ok(
        "send_chan",
        json!({ "sender": "system", "chan": "room:lobby", "payload": "after bob left" }),
    )
    .await?;
    assert_eq!(alice.next_message().await?.payload, json!("after bob left"));
    assert!(
        bob.silent_for(Duration::from_millis(300)).await,
        "bob still gets the channel"
    );

    // Presence.
    assert_eq!(
        api.ok("has_online", json!({ "client": "bob" })).await?["online"],
        true
    );
    assert_eq!(
        api.ok("has_online", json!({ "client": "carol" })).await?["online"],
        false
    );
    assert_eq!(api.ok("online_count", json!({})).await?["count"], 2);
    let online = api.ok("online", json!({})).await?;
    assert_eq!(
        online,
        json!({ "clients": ["alice", "bob"], "cursor": null })
    );

    // Kick: the socket closes with 4002 and the client is offline.
    assert_eq!(
        api.ok("kick", json!({ "client": "bob" })).await?["taken"],
        true
    );
    assert_eq!(bob.closed().await?, Some(4002));
    wait_for("bob offline", WAIT, || async {
        let online = api
            .ok("has_online", json!({ "client": "bob" }))
            .await
            .ok()?;
        (online["online"] == false).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn channel_lists_and_online_list_come_in_pages() -> Result<()> {
    let cluster = Cluster::start(1, api_opts()).await?;
    let api = Api::of(&cluster)?;
    let members: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    api.ok("join", json!({ "chan": "room:x", "clients": members }))
        .await?;
    api.ok("join", json!({ "chan": "room:y", "client": "m0" }))
        .await?;

    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    for _ in 0..100 {
        let page = api
            .ok(
                "chan_members",
                json!({ "chan": "room:x", "cursor": cursor }),
            )
            .await?;
        seen.extend(page["members"].as_array().cloned().unwrap_or_default());
        cursor = page["cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    seen.sort_by_key(|v| v.to_string());
    assert_eq!(json!(seen), json!(members));
    assert_eq!(
        api.ok("chan_member_count", json!({ "chan": "room:x" }))
            .await?["members"],
        5
    );
    assert_eq!(
        api.ok("client_chans", json!({ "client": "m0" })).await?["chans"],
        json!(["room:x", "room:y"])
    );
    assert_eq!(
        api.ok("chans", json!({})).await?["chans"],
        json!([{ "chan": "room:x", "members": 5, "online": 0 },
               { "chan": "room:y", "members": 1, "online": 0 }])
    );
    let bad = api
        .call("chan_members", json!({ "chan": "room:x", "cursor": "x" }))
        .await?;
    assert_eq!(
        bad.error(),
        ("invalid_cursor".into(), Some("cursor".into()))
    );

    // Leave many, then delete.
    api.ok(
        "leave",
        json!({ "chan": "room:x", "clients": ["m0", "m1"] }),
    )
    .await?;
    assert_eq!(
        api.ok("chan_member_count", json!({ "chan": "room:x" }))
            .await?["members"],
        3
    );
    assert_eq!(
        api.ok("delete_chan", json!({ "chan": "room:x" })).await?["members"],
        3
    );
    assert_eq!(
        api.ok("chans", json!({})).await?["chans"],
        json!([{ "chan": "room:y", "members": 1, "online": 0 }])
    );

    // Online clients, two to a page; a member online counts in chan_online.
    let _sockets = [
        api.connect("m0").await?,
        api.connect("m3").await?,
        api.connect("m4").await?,
    ];
    wait_for("m0 counted online in room:y", WAIT, || async {
        let online = api
            .ok("chan_online", json!({ "chan": "room:y" }))
            .await
            .ok()?;
        (online["online"] == 1).then_some(())
    })
    .await?;
    let first = api.ok("online", json!({ "limit": 2 })).await?;
    assert_eq!(first, json!({ "clients": ["m0", "m3"], "cursor": "m3" }));
    let second = api
        .ok("online", json!({ "limit": 2, "cursor": "m3" }))
        .await?;
    assert_eq!(second, json!({ "clients": ["m4"], "cursor": null }));
    Ok(())
}

#[tokio::test]
async fn a_batch_is_answered_per_item_and_a_bad_item_stops_nothing() -> Result<()> {
    let cluster = Cluster::start(1, api_opts().arg("--api-max-batch", 4)).await?;
    let api = Api::of(&cluster)?;
    let mut bob = api.connect("bob").await?;
    let send = |text: &str, to: &str| json!({ "method": "send", "params": { "sender": "a", "receivers": [to], "payload": text } });
    let answer = api
        .ok(
            "batch",
            json!({ "requests": [
                send("one", "bob"),
                send("two", ""),
                { "method": "no_such_method" },
                send("three", "bob"),
            ]}),
        )
        .await?;
    let replies = answer["replies"].as_array().context("no replies")?;
    let statuses: Vec<u64> = replies
        .iter()
        .filter_map(|r| r["status"].as_u64())
        .collect();
    assert_eq!(statuses, [200, 400, 400, 200], "{answer}");
    assert_eq!(replies[1]["error"], "invalid_client_id");
    assert_eq!(replies[1]["field"], "receivers[0]");
    assert_eq!(replies[2]["error"], "unknown_method");
    assert!(replies[0]["result"]["message_id"].is_string());
    assert_eq!(bob.next_message().await?.payload, json!("one"));
    assert_eq!(bob.next_message().await?.payload, json!("three"));

    let five: Vec<Value> = (0..5).map(|_| send("x", "bob")).collect();
    let answer = api.call("batch", json!({ "requests": five })).await?;
    assert_eq!(answer.status, 413);
    assert_eq!(
        answer.error(),
        ("batch_too_large".into(), Some("requests".into()))
    );
    assert!(
        bob.silent_for(Duration::from_millis(200)).await,
        "an over-limit batch sent something"
    );
    Ok(())
}

#[tokio::test]
async fn a_redis_outage_answers_503_with_retry_after_not_a_hang() -> Result<()> {
    let opts = api_opts().arg("--api-timeout-ms", 2000);
    let mut cluster = Cluster::start_on(Redis::start_single()?, 1, opts).await?;
    let api = Api::of(&cluster)?;
    api.ok(
        "send",
        json!({ "sender": "a", "receivers": ["b"], "payload": 1 }),
    )
    .await?;
    cluster.redis.kill();

    let started = Instant::now();
    let answer = api
        .call(
            "send",
            json!({ "sender": "a", "receivers": ["b"], "payload": 1 }),
        )
        .await?;
    assert_eq!(
        (answer.status, answer.error().0.as_str()),
        (503, "redis_unavailable"),
        "{answer:?}"
    );
    assert_eq!(answer.header("retry-after").as_deref(), Some("1"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    let send =
        json!({ "method": "send", "params": { "sender": "a", "receivers": ["b"], "payload": 1 } });
    let answer = api
        .call("batch", json!({ "requests": [send.clone(), send] }))
        .await?;
    assert_eq!(answer.status, 200);
    assert!(answer.header("retry-after").is_some());
    let replies = answer.json()["replies"].clone();
    assert_eq!(replies[0]["error"], "redis_unavailable", "{replies}");
    assert_eq!(replies[1]["error"], "not_attempted");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// A node that checks tokens with a public key only holds nothing to sign with: connect_url
/// says so plainly, and every other call works.
#[tokio::test]
async fn a_verify_only_node_answers_connect_url_with_501() -> Result<()> {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../imclient/tests/keys");
    let opts = NodeOpts {
        without_secret: true,
        ..api_opts()
    }
    .arg(
        "--token-key",
        format!("k1={}", keys.join("ed1.pub.pem").to_string_lossy()),
    );
    let mut cluster = Cluster::start(1, opts).await?;
    let api = Api::of(&cluster)?;
    let answer = api
        .call("connect_url", json!({ "client": "alice" }))
        .await?;
    assert_eq!(
        (answer.status, answer.error().0.as_str()),
        (501, "cannot_sign")
    );
    let sent = api
        .ok(
            "send",
            json!({ "sender": "a", "receivers": ["b"], "payload": 1 }),
        )
        .await?;
    assert!(sent["message_id"].is_string());

    // SIGTERM stops the API with the node, and the node exits cleanly.
    cluster.nodes[0].signal("TERM");
    assert!(
        cluster.nodes[0].wait_exit(WAIT).await?,
        "the node did not exit cleanly"
    );
    Ok(())
}
