//! wss:// without a proxy: the node serves TLS itself with a certificate from PEM files,
//! imclient hands out wss:// URLs for it, and SIGHUP swaps the certificate for new connections
//! while open ones carry on. (A reload that fails keeps the previous pair: see tls.rs.)

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::sync::Arc;

use anyhow::{Result, anyhow};
use futures_util::StreamExt as _;
use imclient::contract::Kind;
use imclient::{ImClient, ImClientOptions};
use imtestkit::{NodeOpts, Redis, WAIT, wait_for};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A self-signed certificate for 127.0.0.1, written as PEM files; its DER for the client.
fn certificate(
    dir: &std::path::Path,
    name: &str,
) -> Result<(CertificateDer<'static>, String, String)> {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, made.cert.pem())?;
    std::fs::write(&key, made.key_pair.serialize_pem())?;
    Ok((
        made.cert.der().clone(),
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    ))
}

/// Opens `url` (wss://) trusting only `root`; the socket and the certificate the node showed.
async fn connect(
    url: &str,
    root: &CertificateDer<'static>,
) -> Result<(
    WebSocketStream<TlsStream<TcpStream>>,
    CertificateDer<'static>,
)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = url.trim_start_matches("wss://").split('/').next().unwrap();
    let tcp = TcpStream::connect(host).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    let shown = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned();
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await?;
    Ok((ws, shown.ok_or_else(|| anyhow!("no certificate shown"))?))
}

async fn next_envelope(
    ws: &mut WebSocketStream<TlsStream<TcpStream>>,
) -> Result<imclient::contract::Envelope> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await? {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(_)) => {}
            other => return Err(anyhow!("socket ended: {other:?}")),
        }
    }
}

#[tokio::test]
async fn the_node_serves_wss_itself_and_swaps_its_certificate_on_sighup() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("imtest-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (first, cert, key) = certificate(&dir, "node")?;
    let redis = Redis::start()?;
    let opts = NodeOpts {
        tls: true,
        ..NodeOpts::default()
    }
    .arg("--tls-cert", &cert)
    .arg("--tls-key", &key);
    let node = imtestkit::Node::start(&redis, opts).await?;
    assert!(node.id.starts_with("wss://"), "{}", node.id);
    let im = ImClient::new(
        ImClientOptions::new(redis.url(), [node.id.as_str()], imtestkit::SECRET)
            .key_prefix(imtestkit::PREFIX),
    )?;
    let url = im.prev_connect_server("secure", json!(null))?;
    assert!(url.starts_with("wss://"), "{url}");

    let (mut ws, shown) = connect(&url, &first).await?;
    assert_eq!(shown, first);
    let welcome = next_envelope(&mut ws).await?;
    assert_eq!(
        (welcome.kind, welcome.payload["event"].as_str()),
        (Kind::System, Some("welcome"))
    );
    im.send_message("backend", ["secure"], &"over TLS", false)
        .await?;
    assert_eq!(next_envelope(&mut ws).await?.payload, json!("over TLS"));

    // A plain WebSocket to a TLS port gets nowhere.
    assert!(
        imtestkit::Ws::connect(&url.replacen("wss://", "ws://", 1))
            .await
            .is_err()
    );

    // New files and SIGHUP: new connections see the new certificate.
    let (second, _, _) = certificate(&dir, "node")?;
    node.signal("HUP");
    wait_for("the new certificate", WAIT, || async {
        let url = im.prev_connect_server("secure-2", json!(null)).ok()?;
        let (_, shown) = connect(&url, &second).await.ok()?;
        (shown == second).then_some(())
    })
    .await?;
    // The connection opened before the swap carries on.
    im.send_message("backend", ["secure"], &"after the swap", false)
        .await?;
    assert_eq!(
        next_envelope(&mut ws).await?.payload,
        json!("after the swap")
    );

    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
