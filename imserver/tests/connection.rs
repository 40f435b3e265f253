//! One connection's life: token checks at the handshake, what a client may send, heartbeat,
//! limits, slow consumers, and a Redis outage under open sockets.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::time::{Duration, Instant};

use anyhow::Result;
use imclient::contract::CloseCode;
use imclient::token::{ConnectClaims, TokenIssuer};
use imclient::{ClientId, NodeId};
use imtestkit::{Cluster, Frame, NodeOpts, SECRET, WAIT, Ws, wait_for};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn url_with(node: &str, claims: &ConnectClaims, secret: &str) -> String {
    let token = TokenIssuer::new(secret.as_bytes())
        .unwrap()
        .sign(claims)
        .unwrap();
    NodeId::new(node).unwrap().connect_url(&token)
}

fn claims(node: &str, client: &str) -> ConnectClaims {
    ConnectClaims::new(
        ClientId::new(client).unwrap(),
        NodeId::new(node).unwrap(),
        json!(null),
        Duration::from_secs(60),
    )
}

/// Asserts the refusal's status and code; returns its message.
async fn assert_refused(url: &str, status: u16, code: &str) -> Result<String> {
    let (got, body) = Ws::refused(url).await?;
    assert_eq!(got, status, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(body["error"], code);
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    assert!(!message.is_empty(), "a reason is given");
    Ok(message)
}

#[tokio::test]
async fn bad_tokens_are_refused_with_a_reason() -> Result<()> {
    let c = Cluster::start(2, NodeOpts::default()).await?;
    let node = c.nodes[0].id.clone();

    let mut expired = claims(&node, "eve");
    expired.iat -= 120;
    expired.exp = expired.iat + 60;
    // Issued before the node started, too; expiry is checked first.
    assert_refused(&url_with(&node, &expired, SECRET), 401, "token_expired").await?;

    let url = url_with(&node, &claims(&node, "eve"), SECRET);
    let (head, sig) = url.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    assert_refused(
        &format!("{head}.{flipped}{}", &sig[1..]),
        401,
        "token_bad_signature",
    )
    .await?;
    let message = assert_refused(
        &url_with(&node, &claims(&node, "eve"), "some-other-secret-0123456789"),
        401,
        "token_bad_signature",
    )
    .await?;
    assert!(message.contains("IM_TOKEN_SECRET"), "{message}");

    // A token for node 1 presented to node 0.
    let other = c.nodes[1].id.clone();
    let wrong = url_with(&other, &claims(&other, "eve"), SECRET).replace(&other, &node);
    assert_refused(&wrong, 403, "token_wrong_node").await?;

    let once = url_with(&node, &claims(&node, "eve"), SECRET);
    let _ws = Ws::connect(&once).await?;
    assert_refused(&once, 401, "token_replayed").await?;

    assert_refused(&format!("{node}/ws"), 401, "token_missing").await?;
    assert_refused(&format!("{node}/ws?token=garbage"), 401, "token_malformed").await?;

    // Issued before the node started and never used: its use is recorded in Redis, so the
    // node needs no start time to go by.
    let mut early = claims(&node, "eve");
    early.iat -= 30;
    Ws::connect(&url_with(&node, &early, SECRET)).await?;
    // Each refusal counted under the code its client got, so that an operator sees which.
    for (reason, times) in [
        ("token_expired", 1),
        ("token_bad_signature", 2),
        ("token_wrong_node", 1),
        ("token_replayed", 1),
        ("token_missing", 1),
        ("token_malformed", 1),
        ("node_full", 0),
    ] {
        let series = format!("im_handshakes_refused_total{{node=\"{node}\",reason=\"{reason}\"}}");
        assert_eq!(c.nodes[0].metric(&series).await?, times, "{series}");
    }
    Ok(())
}

#[tokio::test]
async fn requests_that_are_not_upgrades_to_ws_are_refused_without_burning_the_token() -> Result<()>
{
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let node = c.nodes[0].id.clone();
    let url = url_with(&node, &claims(&node, "eve"), SECRET);

    // A WebSocket upgrade to another path.
    assert_refused(&url.replace("/ws?", "/chat?"), 404, "not_found").await?;
    // A plain GET of /ws with the token.
    let (status, body) = c.nodes[0].get(&url[node.len()..]).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not_websocket"), "{body}");
    // The token is still good.
    let mut ws = Ws::connect(&url).await?;
    ws.send(Message::text(r#"{"type":"ping"}"#)).await?;
    match ws.read(WAIT).await? {
        Frame::Envelope(env) => assert_eq!(env.payload["event"], "pong"),
        other => panic!("expected pong, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_frame_sent_right_behind_the_handshake_is_answered() -> Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let url = c.im.prev_connect_server("early", json!(null))?;
    let path = &url[c.nodes[0].id.len()..];
    // The handshake and a masked `{"type":"ping"}` text frame in one write, before any answer.
    let ping = br#"{"type":"ping"}"#;
    let mask = [1u8, 2, 3, 4];
    let mut bytes = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        c.nodes[0].addr
    )
    .into_bytes();
    bytes.extend_from_slice(&[0x81, 0x80 | ping.len() as u8]);
    bytes.extend_from_slice(&mask);
    bytes.extend(ping.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut tcp = tokio::net::TcpStream::connect(c.nodes[0].addr).await?;
    tcp.write_all(&bytes).await?;

    let mut seen = Vec::new();
    let pong = br#""event":"pong""#;
    let end = tokio::time::Instant::now() + WAIT;
    while !seen.windows(pong.len()).any(|w| w == pong) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(end, tcp.read(&mut chunk)).await??;
        assert!(
            n > 0,
            "closed before the pong: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    // RFC 6455's own example key and answer.
    assert!(
        text.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn only_small_control_frames_may_be_sent() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;

    let mut ws = c.connect("p").await?;
    ws.send(Message::text(r#"{"type":"ping"}"#)).await?;
    match ws.read(WAIT).await? {
        Frame::Envelope(env) => assert_eq!(env.payload["event"], "pong"),
        other => panic!("expected pong, got {other:?}"),
    }

    let mut ws = c.connect("q").await?;
    ws.send(Message::text(r#"{"type":"send","to":"bob"}"#))
        .await?;
    assert_eq!(ws.closed().await?, Some(CloseCode::PolicyViolation.code()));

    let mut ws = c.connect("r").await?;
    ws.send(Message::binary(vec![1u8, 2, 3])).await?;
    assert_eq!(ws.closed().await?, Some(CloseCode::PolicyViolation.code()));

    let mut ws = c.connect("s").await?;
    ws.send(Message::text("x".repeat(4096))).await?;
    assert_eq!(ws.closed().await?, Some(CloseCode::TooBig.code()));

    assert_eq!(
        c.nodes[0]
            .metric(&format!(
                "im_closes_total{{node=\"{}\",code=\"1008\"}}",
                c.nodes[0].id
            ))
            .await?,
        2
    );
    assert_eq!(
        c.nodes[0]
            .metric(&format!(
                "im_closes_total{{node=\"{}\",code=\"1009\"}}",
                c.nodes[0].id
            ))
            .await?,
        1
    );
    Ok(())
}

#[tokio::test]
async fn a_frame_announced_too_big_is_refused_at_once_without_being_buffered() -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let node = &c.nodes[0];
    let before = imtestkit::rss_kib(node.pid())?;
    // A text frame announcing 2^40 bytes (64-bit length), and one announcing 65,535 (16-bit).
    let mut huge = vec![0x81u8, 0xff];
    huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
    let mut long = vec![0x81u8, 0xfe];
    long.extend_from_slice(&u16::MAX.to_be_bytes());
    for (client, mut head) in [("huge", huge), ("long", long)] {
        head.extend_from_slice(&[1, 2, 3, 4]);
        let url = c.im.prev_connect_server(client, json!(null))?;
        let tcp = imtestkit::raw_upgrade(node.addr, &url).await?;
        let (mut rd, mut wr) = tcp.into_split();
        // Stream up to 64 MiB behind the header, as an attacker would.
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            if wr.write_all(&head).await.is_err() {
                return sent;
            }
            while sent < 64 << 20 && wr.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        let code = imtestkit::raw_read_close(&mut rd, WAIT).await?;
        assert_eq!(code, CloseCode::TooBig.code(), "{client}");
        writer.await?;
    }
    let after = imtestkit::rss_kib(node.pid())?;
    assert!(
        after < before + 16 * 1024,
        "node RSS grew from {before} KiB to {after} KiB"
    );
    assert_eq!(
        node.metric(&format!(
            "im_closes_total{{node=\"{}\",code=\"1009\"}}",
            node.id
        ))
        .await?,
        2
    );
    Ok(())
}

/// The raw answer to a handshake request for `url` with `version` as its
/// Sec-WebSocket-Version: status line, headers and body.
async fn raw_answer(addr: std::net::SocketAddr, url: &str, version: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let path = &url[url.find("/ws").unwrap()..];
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut answer = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut answer)).await??;
    Ok(answer)
}

#[tokio::test]
async fn another_websocket_version_gets_426_naming_the_one_served() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let url = c.im.prev_connect_server("old-client", json!(null))?;
    let answer = raw_answer(c.nodes[0].addr, &url, "8").await?;
    assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("sec-websocket-version: 13\r\n"),
        "{answer}"
    );
    let body: serde_json::Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1)?;
    assert_eq!(body["error"], "unsupported_version");
    // The token was not burnt: the same URL still connects with version 13.
    Ws::connect(&url).await?;
    Ok(())
}

#[tokio::test]
async fn only_allowed_origins_may_connect_when_a_list_is_set() -> Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let c = Cluster::start(
        1,
        NodeOpts::default().arg(
            "--allowed-origins",
            "https://chat.example.com,https://app.example.com",
        ),
    )
    .await?;
    let with_origin = |origin: &str| -> Result<_> {
        let url = c.im.prev_connect_server("browser", json!(null))?;
        let mut req = url.into_client_request()?;
        req.headers_mut().insert("origin", origin.parse()?);
        Ok(req)
    };
    match tokio_tungstenite::connect_async(with_origin("https://evil.example.net")?).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default())?;
            assert_eq!(body["error"], "origin_not_allowed");
        }
        other => panic!("a foreign origin connected: {:?}", other.map(|_| ())),
    }
    tokio_tungstenite::connect_async(with_origin("https://APP.example.com")?).await?;
    // Not a browser: no Origin header, nothing to check.
    c.connect("app").await?;
    Ok(())
}

/// Under an open-file limit of 400, a node asked for 10,000 connections lowers its cap to what
/// fits: the client past it is refused with 503 node_full at once, and /healthz answers that
/// the node is full instead of hanging.
#[tokio::test]
async fn a_node_short_of_open_files_refuses_instead_of_hanging() -> Result<()> {
    let c = Cluster::start(
        1,
        NodeOpts {
            nofile: Some(400),
            ..NodeOpts::default()
        }
        .arg("--max-connections", 10_000),
    )
    .await?;
    let node = &c.nodes[0];
    let (_, health) = node.get("/healthz").await?;
    let health: serde_json::Value = serde_json::from_str(&health)?;
    let cap = health["max_connections"].as_u64().unwrap();
    assert!(cap < 400, "cap {cap} does not fit 400 files");
    let mut open = Vec::new();
    for i in 0..cap {
        open.push(c.connect(&format!("f{i}")).await?);
    }
    let url = c.im.prev_connect_server("one-too-many", json!(null))?;
    assert_refused(&url, 503, "node_full").await?;
    let (status, health) = node.get("/healthz").await?;
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&health)?["status"],
        "full"
    );
    drop(open.pop());
    wait_for("room again", WAIT, || async {
        (node.get("/healthz").await.ok()?.0 == 200).then_some(())
    })
    .await?;
    Ok(())
}

/// Hundreds of bad requests (malformed HTTP, upgrades without a token, plain GETs, bad
/// versions) leave the log of a node at its default level as it was: at most one line each, and
/// here none, since each is the client's problem and answered as such.
/// Sends `request` on a new connection (then nothing more) and returns the whole answer.
async fn answer_to(addr: std::net::SocketAddr, request: &[u8]) -> Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    // The node may answer and close before it has read all of a request it refuses.
    let _ = tcp.write_all(request).await;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    // A node that refuses before reading everything may reset the connection after its answer.
    while let Ok(Ok(n)) = tokio::time::timeout(WAIT, tcp.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn assert_json_answer(answer: &str, status: u16, code: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{answer}"
    );
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer}"
    );
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"], code, "{answer}");
    assert!(!body["message"].as_str().unwrap_or_default().is_empty());
}

#[tokio::test]
async fn requests_refused_before_any_handler_still_get_a_json_reason() -> Result<()> {
    let c = Cluster::start(
        1,
        NodeOpts::default().arg("--request-head-timeout-ms", 1000),
    )
    .await?;
    let addr = c.nodes[0].addr;
    // Not valid HTTP: a header line without a colon.
    let answer = answer_to(addr, b"GET /ws HTTP/1.1\r\nHost x\r\n\r\n").await?;
    assert_json_answer(&answer, 400, "bad_request");
    // A head that stops half-way (slowloris): refused when the head timeout runs out.
    let started = Instant::now();
    let answer = answer_to(addr, b"GET /ws HTTP/1.1\r\nHost: x\r\n").await?;
    assert_json_answer(&answer, 408, "request_timeout");
    // actix-http measures the deadline on a clock it updates every 500 ms.
    assert!(started.elapsed() >= Duration::from_millis(450));
    // A head too large (a cookie over actix-http's 128 KiB head limit).
    let big = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n",
        "a".repeat(130 * 1024)
    );
    assert_json_answer(
        &answer_to(addr, big.as_bytes()).await?,
        431,
        "headers_too_large",
    );
    // The node's own answers are left as they are.
    let (status, body) = c.nodes[0].get("/healthz").await?;
    assert_eq!(status, 200, "{body}");
    c.connect("after").await?;
    Ok(())
}

#[tokio::test]
async fn bad_requests_do_not_fill_the_log() -> Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let log = std::env::temp_dir().join(format!("imtest-log-{}.txt", std::process::id()));
    let c = Cluster::start(
        1,
        NodeOpts {
            log_file: Some(log.clone()),
            ..NodeOpts::default()
        },
    )
    .await?;
    let node = &c.nodes[0];
    let lines_before = std::fs::read_to_string(&log)?.lines().count();
    let upgrade = |path: &str, version: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
        )
    };
    let requests = [
        "garbage\r\n\r\n".to_owned(),
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
        upgrade("/ws", "13"),
        upgrade("/ws?token=forged", "13"),
        upgrade("/ws", "8"),
        upgrade("/elsewhere", "13"),
    ];
    for request in &requests {
        for _ in 0..50 {
            let mut tcp = tokio::net::TcpStream::connect(node.addr).await?;
            tcp.write_all(request.as_bytes()).await?;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await?;
        }
    }
    // The node still works, and its log says what it said before.
    c.connect("after").await?;
    let text = std::fs::read_to_string(&log)?;
    let _ = std::fs::remove_file(&log);
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log file:\n{text}"
    );
    let new_lines: Vec<&str> = text.lines().skip(lines_before).collect();
    assert!(
        new_lines.len() <= 2,
        "300 bad requests wrote {} log lines:\n{}",
        new_lines.len(),
        new_lines.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn connections_per_ip_address_are_limited() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default().arg("--max-connections-per-ip", 3)).await?;
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(c.connect(&format!("ip{i}")).await?);
    }
    let url = c.im.prev_connect_server("ip3", json!(null))?;
    assert_refused(&url, 429, "ip_connection_limit").await?;
    drop(open.pop());
    // The slot frees once the node has seen the connection end; the token was not burnt.
    wait_for("a free slot", WAIT, || async {
        Ws::connect(&url).await.ok()
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn connection_attempts_per_ip_address_are_limited_per_second() -> Result<()> {
    let c = Cluster::start(
        1,
        NodeOpts::default().arg("--max-connects-per-ip-per-sec", 5),
    )
    .await?;
    // Twenty attempts at once: most of them land in the same second, whatever the machine's
    // load, so some are over the rate.
    let attempts = (0..20).map(|i| {
        let url = c.im.prev_connect_server(&format!("r{i}"), json!(null));
        async move {
            let url = url?;
            let result = tokio_tungstenite::connect_async(&url).await;
            anyhow::Ok((url, result))
        }
    });
    let mut refused = None;
    let mut open = Vec::new();
    for attempt in futures_util::future::join_all(attempts).await {
        match attempt? {
            (_, Ok((ws, _))) => open.push(ws),
            (url, Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                refused = Some((url, resp));
            }
            (_, Err(e)) => return Err(e.into()),
        }
    }
    let (url, resp) = refused.expect("an attempt over the rate is refused");
    assert!(open.len() >= 5, "{} attempts went through", open.len());
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value =
        serde_json::from_slice(resp.body().as_deref().unwrap_or_default())?;
    assert_eq!(body["error"], "ip_rate_limit");
    // A second later the same URL works: the refused attempt did not burn its token.
    wait_for("the next second", WAIT, || async {
        Ws::connect(&url).await.ok()
    })
    .await?;
    Ok(())
}

/// A node holding only public keys (k1, k2: a rotation's overlap) admits tokens signed with
/// either private key, refuses one signed with a retired key (k0) or with the old shared
/// secret, and the backend never shares a secret with it.
#[tokio::test]
async fn a_node_with_public_keys_only_admits_tokens_of_the_current_keys() -> Result<()> {
    use imclient::token::{KeyAlgorithm, TokenIssuer};
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../imclient/tests/keys");
    let key = |name: &str| keys.join(name).to_string_lossy().into_owned();
    let c = Cluster::start(
        1,
        NodeOpts {
            without_secret: true,
            ..NodeOpts::default()
        }
        .arg("--token-key", format!("k1={}", key("ed1.pub.pem")))
        .arg("--token-key", format!("k2={}", key("rsa1.pub.pem"))),
    )
    .await?;
    let node = c.nodes[0].id.clone();
    let backend = |private: &str, alg, kid: &str| -> Result<imclient::ImClient> {
        let issuer = TokenIssuer::from_pem(alg, &std::fs::read(key(private))?)?.with_key_id(kid);
        Ok(imclient::ImClient::new(
            imclient::ImClientOptions::new(c.redis.url(), [node.as_str()], "")
                .key_prefix(imtestkit::PREFIX)
                .signing_key(issuer),
        )?)
    };
    let ed = backend("ed1.pem", KeyAlgorithm::EdDsa, "k1")?;
    let rsa = backend("rsa1.pem", KeyAlgorithm::Rs256, "k2")?;
    let retired = backend("ed3.pem", KeyAlgorithm::EdDsa, "k0")?;
    let mut ws = Ws::connect(&ed.prev_connect_server("ed-user", json!(null))?).await?;
    Ws::connect(&rsa.prev_connect_server("rsa-user", json!(null))?).await?;
    assert_refused(
        &retired.prev_connect_server("old-user", json!(null))?,
        401,
        "token_unknown_key",
    )
    .await?;
    // Signed with a secret: the refusal names the secret's setting, which is what the backend
    // relies on.
    let message = assert_refused(
        &c.im.prev_connect_server("secret-user", json!(null))?,
        401,
        "token_bad_signature",
    )
    .await?;
    assert!(message.contains("IM_TOKEN_SECRET"), "{message}");
    // Signed with a private key whose public half the node does not hold, under a key id it
    // does: the refusal names the public keys' setting, for each kind of key.
    let forged_ed = backend("ed2.pem", KeyAlgorithm::EdDsa, "k1")?;
    let forged_rsa = backend("rsa2.pem", KeyAlgorithm::Rs256, "k2")?;
    for forged in [&forged_ed, &forged_rsa] {
        let message = assert_refused(
            &forged.prev_connect_server("forger", json!(null))?,
            401,
            "token_bad_signature",
        )
        .await?;
        assert!(
            message.contains("IM_TOKEN_KEYS") && !message.contains("IM_TOKEN_SECRET"),
            "{message}"
        );
    }
    // The node works as usual for a client admitted by public key.
    ed.send_message("backend", ["ed-user"], &"signed by k1", false)
        .await?;
    assert_eq!(ws.next_message().await?.payload, json!("signed by k1"));
    Ok(())
}

#[tokio::test]
async fn logs_can_be_json_lines_for_log_shippers() -> Result<()> {
    let log = std::env::temp_dir().join(format!("imtest-jsonlog-{}.txt", std::process::id()));
    let c = Cluster::start(
        1,
        NodeOpts {
            log_file: Some(log.clone()),
            ..NodeOpts::default()
        }
        .arg("--log-format", "json"),
    )
    .await?;
    c.connect("logged").await?;
    drop(c);
    let text = std::fs::read_to_string(&log)?;
    let _ = std::fs::remove_file(&log);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "node started" && l["level"] == "INFO"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn heartbeat_closes_a_silent_client_and_keeps_a_live_one() -> Result<()> {
    let opts = NodeOpts::default()
        .arg("--heartbeat-interval-ms", 100)
        .arg("--heartbeat-timeout-ms", 300);
    let c = Cluster::start(1, opts).await?;
    let mut silent = c.connect("silent").await?;
    let mut live = c.connect("live").await?;

    // `live` keeps reading, so its client library answers pings; `silent` reads nothing and
    // never answers. Read `live` for well past the timeout.
    let end = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < end {
        match tokio::time::timeout(end - Instant::now(), live.stream.next_frame()).await {
            Err(_) => break,
            Ok(r) => r?,
        }
    }
    let metric = format!(
        "im_closes_total{{node=\"{}\",code=\"4000\"}}",
        c.nodes[0].id
    );
    c.nodes[0].wait_metric(&metric, 1).await?;
    assert_eq!(
        silent.raw_close_code().await?,
        CloseCode::HeartbeatTimeout.code()
    );

    c.im.send_message("x", ["live"], &"still here", false)
        .await?;
    assert_eq!(live.next_message().await?.payload, json!("still here"));
    assert_eq!(
        c.nodes[0].metric(&metric).await?,
        1,
        "only the silent client timed out"
    );
    Ok(())
}

trait NextFrame {
    async fn next_frame(&mut self) -> Result<()>;
}

impl<S> NextFrame for S
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    async fn next_frame(&mut self) -> Result<()> {
        use futures_util::StreamExt;
        match self.next().await {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.into()),
            None => anyhow::bail!("closed"),
        }
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_even_with_room_in_its_queue() -> Result<()> {
    // A queue too big to fill: only the stalled write can end this connection.
    let opts = NodeOpts::default()
        .arg("--queue-capacity", 100_000)
        .arg("--heartbeat-interval-ms", 100)
        .arg("--heartbeat-timeout-ms", 300);
    let c = Cluster::start(1, opts).await?;
    let _stuck = c.connect("stuck").await?;
    // Far more than the socket buffers on both ends hold, then nothing more.
    let chunk = "z".repeat(32 * 1024);
    for _ in 0..600 {
        c.im.send_message("x", ["stuck"], &chunk, false).await?;
    }
    let metric = format!(
        "im_closes_total{{node=\"{}\",code=\"4000\"}}",
        c.nodes[0].id
    );
    c.nodes[0].wait_metric(&metric, 1).await?;
    wait_for("the connection to be gone", WAIT, || async {
        c.nodes[0]
            .metric("im_connections{")
            .await
            .ok()
            .filter(|n| *n == 0)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn connections_per_client_are_limited() -> Result<()> {
    let c = Cluster::start(
        1,
        NodeOpts::default().arg("--max-connections-per-client", 2),
    )
    .await?;
    let _a = c.connect("greedy").await?;
    let _b = c.connect("greedy").await?;
    let url = c.im.prev_connect_server("greedy", json!(null))?;
    assert_refused(&url, 429, "client_connection_limit").await?;
    Ok(())
}

#[tokio::test]
async fn redis_restart_keeps_sockets_open_and_pushes_resume() -> Result<()> {
    let mut c = Cluster::start(2, NodeOpts::default()).await?;
    let (a, b, away) = (
        c.client_on(0, "a"),
        c.client_on(1, "b"),
        c.client_on(0, "away"),
    );
    let mut wa = c.connect(&a).await?;
    let mut wb = c.connect(&b).await?;
    wait_for("presence written", WAIT, || async {
        c.im.has_online(&a).await.ok()?.then_some(())
    })
    .await?;
    // A client inside its recovery window during the outage.
    let url = c.im.prev_connect_server(&away, json!(null))?;
    let mut w = Ws::connect(&url).await?;
    c.im.send_message("x", [&away], &"before", false).await?;
    let seen = w.next_message().await?.seq.unwrap();
    let epoch = w.epoch();
    drop(w);
    c.nodes[0].wait_metric("im_recovery_windows", 1).await?;

    c.redis.kill();
    wait_for("healthz reports Redis down", WAIT, || async {
        let (status, body) = c.nodes[0].get("/healthz").await.ok()?;
        (status == 503 && body.contains("\"redis\":\"down\"")).then_some(())
    })
    .await?;
    let err = c.im.send_message("x", [&a], &"lost", false).await;
    assert!(err.is_err(), "a send during the outage fails loudly");
    c.redis.restart()?;

    for node in &c.nodes {
        node.wait_metric("im_redis_reconnects_total", 1).await?;
        wait_for("healthz ok", WAIT, || async {
            (node.get("/healthz").await.ok()?.0 == 200).then_some(())
        })
        .await?;
    }
    // Whatever was published while the nodes were not subscribed went to no one: every
    // connected client is told, and a resume from before the outage is refused.
    for ws in [&mut wa, &mut wb] {
        match ws.read(WAIT).await? {
            Frame::Envelope(env) => {
                assert_eq!(env.payload["event"], "missed", "{env:?}");
                assert_eq!(env.payload["reason"], "redis_outage", "{env:?}");
            }
            other => panic!("expected the missed event, got {other:?}"),
        }
    }
    let url = c.im.prev_connect_server(&away, json!(null))?;
    let w = Ws::connect(&imtestkit::with_since(&url, &epoch, seen)).await?;
    assert_eq!(w.recovered(), Some(false));
    assert_eq!(w.reason().as_deref(), Some("redis_outage"));
    c.im.send_message("x", [&a, &b], &"after", false).await?;
    assert_eq!(wa.next_message().await?.payload, json!("after"));
    assert_eq!(wb.next_message().await?.payload, json!("after"));
    // Redis lost everything; the nodes rewrite presence when they see their lease lapsed.
    wait_for("presence rewritten", WAIT, || async {
        (c.im.has_online(&a).await.ok()? && c.im.has_online(&b).await.ok()?).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn sighup_does_not_stop_a_node_without_tls() -> Result<()> {
    // `systemctl reload` sends SIGHUP; its default action would end the process.
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let mut ws = c.connect("steady").await?;
    c.nodes[0].signal("HUP");
    // The signal is queued when `kill` returns: a node it ended could not answer these.
    assert_eq!(c.nodes[0].get("/healthz").await?.0, 200);
    c.im.send_message("backend", ["steady"], &"still here", false)
        .await?;
    assert_eq!(ws.next_message().await?.payload, json!("still here"));
    Ok(())
}

/// Single use outlives the node: a token used once is refused after the node is killed and
/// back at once on the same address (the used ids are in Redis, not only in its memory).
#[tokio::test]
async fn a_used_token_is_refused_after_the_node_restarts_at_once() -> Result<()> {
    let mut c = Cluster::start(1, NodeOpts::default()).await?;
    let addr = c.nodes[0].addr;
    for round in 0..3 {
        let url = c.im.prev_connect_server("once", json!(null))?;
        drop(Ws::connect(&url).await?);
        c.nodes[0].signal("KILL");
        c.nodes[0].wait_exit(WAIT).await?;
        let down = Instant::now();
        c.nodes[0] =
            imtestkit::Node::start_at(&c.redis, NodeOpts::default(), &addr.to_string()).await?;
        eprintln!("round {round}: node back after {:?}", down.elapsed());
        assert_refused(&url, 401, "token_replayed").await?;
    }
    // A token issued before the restart and never used is still good.
    let unused = c.im.prev_connect_server("fresh", json!(null))?;
    c.nodes[0].signal("KILL");
    c.nodes[0].wait_exit(WAIT).await?;
    c.nodes[0] =
        imtestkit::Node::start_at(&c.redis, NodeOpts::default(), &addr.to_string()).await?;
    Ws::connect(&unused).await?;
    Ok(())
}

/// Two processes serving one node address (a replacement started before the old one stops,
/// behind the same proxy route) share what was used: a token used on one is refused by the
/// other.
#[tokio::test]
async fn a_token_used_on_one_process_is_refused_by_another_serving_the_same_node() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let id = c.nodes[0].id.clone();
    let replacement =
        imtestkit::Node::start(&c.redis, NodeOpts::default().arg("--node", &id)).await?;
    let url = c.im.prev_connect_server("blue-green", json!(null))?;
    drop(Ws::connect(&url).await?);
    // The same URL, sent to the replacement's port.
    let elsewhere = url.replacen(
        &c.nodes[0].addr.to_string(),
        &replacement.addr.to_string(),
        1,
    );
    assert_ne!(elsewhere, url);
    assert_refused(&elsewhere, 401, "token_replayed").await?;
    Ok(())
}

/// Without Redis a node cannot tell whether a token was used: it refuses with 503 and asks the
/// client to try again, and the same token connects once Redis is back.
#[tokio::test]
async fn with_redis_down_a_connect_is_refused_with_a_retryable_status() -> Result<()> {
    let mut c = Cluster::start(1, NodeOpts::default()).await?;
    let url = c.im.prev_connect_server("patient", json!(null))?;
    c.redis.kill();
    let message = assert_refused(&url, 503, "redis_unavailable").await?;
    assert!(message.contains("try again"), "{message}");
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            assert_eq!(
                resp.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()),
                Some("1")
            );
        }
        other => panic!("connected without Redis: {:?}", other.map(|_| ())),
    }
    c.redis.restart()?;
    wait_for("the token connects once Redis is back", WAIT, || async {
        Ws::connect(&url).await.ok().map(|_| ())
    })
    .await?;
    Ok(())
}

/// Malformed requests are answered 400 each, but written to the log as a count per interval,
/// even under a RUST_LOG that does not silence actix-http's dispatcher.
#[tokio::test]
async fn malformed_requests_are_counted_in_the_log_not_written_one_by_one() -> Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let log = std::env::temp_dir().join(format!("imtest-badlog-{}.txt", std::process::id()));
    let c = Cluster::start(
        1,
        NodeOpts {
            log_file: Some(log.clone()),
            env: vec![("RUST_LOG".into(), "info".into())],
            ..NodeOpts::default()
        },
    )
    .await?;
    let node = &c.nodes[0];
    let bytes_before = std::fs::metadata(&log)?.len();
    for _ in 0..1000 {
        let mut tcp = tokio::net::TcpStream::connect(node.addr).await?;
        tcp.write_all(b"garbage\r\n\r\n").await?;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await?;
        assert!(answer.starts_with(b"HTTP/1.1 400 "), "{answer:?}");
    }
    // The count comes in a summary line within the interval (10 s).
    let summary = wait_for(
        "the log says how many bad requests came",
        Duration::from_secs(20),
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            let total: u64 = text
                .lines()
                .filter(|l| l.contains("bad HTTP requests"))
                .filter_map(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("count="))
                        .and_then(|n| n.parse::<u64>().ok())
                })
                .sum();
            (total >= 1000).then_some(total)
        },
    )
    .await?;
    let grown = std::fs::metadata(&log)?.len() - bytes_before;
    let text = std::fs::read_to_string(&log)?;
    let _ = std::fs::remove_file(&log);
    assert_eq!(summary, 1000, "{text}");
    assert_eq!(node.metric("im_http_bad_requests_total").await?, 1000);
    assert!(
        grown < 2_000,
        "1,000 bad requests grew the log by {grown} bytes:\n{text}"
    );
    Ok(())
}

fn with_origin(
    url: &str,
    origin: &str,
) -> Result<tokio_tungstenite::tungstenite::http::Request<()>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = url.into_client_request()?;
    req.headers_mut().insert("origin", origin.parse()?);
    Ok(req)
}

/// With no --allowed-origins, a page of another origin may not connect (its user's browser would
/// otherwise let any site open a socket in their name with a URL it got hold of); a page served
/// from the node's own origin and a client without an Origin header may.
#[tokio::test]
async fn by_default_only_same_origin_pages_and_non_browsers_may_connect() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let url = c.im.prev_connect_server("browser", json!(null))?;
    match tokio_tungstenite::connect_async(with_origin(&url, "https://evil.example.net")?).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default())?;
            assert_eq!(body["error"], "origin_not_allowed");
            assert!(
                body["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("--allowed-origins"),
                "{body}"
            );
        }
        other => panic!("a foreign origin connected: {:?}", other.map(|_| ())),
    }
    // Refused before the token is checked: it is still good.
    let own = format!("http://{}", c.nodes[0].addr);
    tokio_tungstenite::connect_async(with_origin(&url, &own)?).await?;
    c.connect("app").await?;
    Ok(())
}

/// In dev mode any page may connect, as a local demo serves its page from another port.
#[tokio::test]
async fn in_dev_mode_any_origin_may_connect() -> Result<()> {
    let mut opts = NodeOpts::default();
    opts.args.push("--dev".into());
    let c = Cluster::start(1, opts).await?;
    let url = c.im.prev_connect_server("browser", json!(null))?;
    tokio_tungstenite::connect_async(with_origin(&url, "http://localhost:5000")?).await?;
    Ok(())
}

/// Redis stalls for a second (as on a loaded machine): within the default response timeout
/// (2 s) a connect and a send made meanwhile wait it out and succeed.
#[tokio::test]
async fn a_redis_stall_within_the_response_timeout_delays_but_fails_nothing() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    // Both sides hold a connection before the stall: what is tested is a reply's wait.
    c.connect("warm").await?;
    c.im.send_message("backend", ["warm"], &"warm", false)
        .await?;
    let url = c.im.prev_connect_server("stalled", json!(null))?;
    c.redis.pause();
    let stalled = Instant::now();
    let connect = tokio::spawn(async move { Ws::connect(&url).await.map(|_| ()) });
    let im = c.im.clone();
    let send = tokio::spawn(async move {
        im.send_message("backend", ["someone"], &"during a stall", false)
            .await
            .map(|_| ())
    });
    // The stall itself, not a wait for something to happen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.redis.resume();
    connect.await??;
    send.await??;
    eprintln!(
        "connect and send done {:?} after the stall began",
        stalled.elapsed()
    );
    Ok(())
}

/// The Redis timeouts are settings: a node and an imclient told to wait 500 ms give up within
/// a second's stall, the node answering its retryable 503.
#[tokio::test]
async fn the_redis_response_timeout_is_a_setting_of_nodes_and_imclient() -> Result<()> {
    use imclient::store::RedisTimeouts;
    let c = Cluster::start(
        1,
        NodeOpts::default().arg("--redis-response-timeout-ms", 500),
    )
    .await?;
    let impatient = imclient::ImClient::new(
        imclient::ImClientOptions::new(c.redis.url(), [c.nodes[0].id.as_str()], SECRET)
            .key_prefix(imtestkit::PREFIX)
            .redis_timeouts(RedisTimeouts {
                response: Duration::from_millis(500),
                ..RedisTimeouts::default()
            }),
    )?;
    c.connect("warm").await?;
    impatient
        .send_message("backend", ["warm"], &"warm", false)
        .await?;
    let url = impatient.prev_connect_server("stalled", json!(null))?;
    c.redis.pause();
    let send = impatient
        .send_message("backend", ["someone"], &"during a stall", false)
        .await;
    let refused = Ws::refused(&url).await;
    c.redis.resume();
    assert!(send.is_err(), "a send outlived its 500 ms timeout");
    let (status, body) = refused?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("redis_unavailable"), "{body}");
    // The refused attempt's write went through once Redis woke up; the retry of the same URL,
    // as the 503 asks, is not taken for a replay.
    Ws::connect(&url).await?;
    // The setting is checked: below 500 ms it cannot work with blocking reads.
    let err = imclient::ImClient::new(
        imclient::ImClientOptions::new(c.redis.url(), [c.nodes[0].id.as_str()], SECRET)
            .redis_timeouts(RedisTimeouts {
                response: Duration::from_millis(100),
                ..RedisTimeouts::default()
            }),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("at least 500 ms"), "{err}");
    Ok(())
}
