//! Bad options, bad arguments and an unreachable or refusing Redis give clear, typed errors;
//! without Redis, routing keeps to the configured node list.

use anyhow::Result;
use imclient::{Error, ImClient, ImClientOptions};
use imtestkit::{Cluster, NodeOpts, Redis, free_port};
use serde_json::json;

const SECRET: &str = "a-long-random-secret-of-32-bytes";

#[test]
fn options_that_cannot_work_are_refused() {
    let none: [&str; 0] = [];
    assert!(matches!(
        ImClient::new(ImClientOptions::new("redis://127.0.0.1", none, SECRET)),
        Err(Error::NoNodes)
    ));
    let err = ImClient::new(ImClientOptions::new(
        "redis://127.0.0.1",
        ["ws://a:1"],
        "short",
    ))
    .unwrap_err();
    assert!(err.to_string().contains("16 bytes"), "{err}");
    let err = ImClient::new(ImClientOptions::new(
        "redis://127.0.0.1",
        ["ws://a b"],
        SECRET,
    ))
    .unwrap_err();
    assert!(matches!(err, Error::NodeId(_)), "{err}");
    let err = ImClient::new(
        ImClientOptions::new("redis://127.0.0.1", ["ws://a:1"], SECRET).key_prefix(""),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Options(_)), "{err}");
}

/// Two apps sharing a Redis must not be able to read each other's names: with prefixes `appA`
/// and `appA:chan`, app A's channel `node:ws://a:1` would be app B's node topic.
#[test]
fn key_prefixes_that_could_collide_are_refused() {
    let a = ImClient::new(
        ImClientOptions::new("redis://127.0.0.1", ["ws://a:1"], SECRET).key_prefix("appA"),
    )
    .unwrap();
    let err = ImClient::new(
        ImClientOptions::new("redis://127.0.0.1", ["ws://a:1"], SECRET).key_prefix("appA:chan"),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Options(_)), "{err}");
    assert!(err.to_string().contains("':'"), "{err}");
    // What the refused prefix would have collided with.
    let chan = imclient::ChanName::new("node:ws://a:1").unwrap();
    let b = imclient::keys::Keys::new("appA:chan");
    assert_eq!(
        a.keys().chan_topic(&chan),
        b.node_topic(&imclient::NodeId::new("ws://a:1").unwrap())
    );
}

#[test]
fn client_ids_are_validated() {
    let im = ImClient::new(ImClientOptions::new(
        "redis://127.0.0.1",
        ["ws://a:1"],
        SECRET,
    ))
    .unwrap();
    for bad in ["", "a\nb", &"x".repeat(129)] {
        let err = im
            .prev_connect_server(bad, serde_json::Value::Null)
            .unwrap_err();
        assert!(matches!(err, Error::ClientId { .. }), "{err}");
        assert!(
            err.to_string().contains("1 to 128 bytes"),
            "the message says what is allowed: {err}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_redis_is_reported_not_hidden() {
    // A port nobody listens on.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let im = ImClient::new(ImClientOptions::new(url, ["ws://a:1"], SECRET)).unwrap();
    let err = im.send_message("a", ["b"], &"hi", false).await.unwrap_err();
    assert!(matches!(err, Error::Pool(_)), "{err:?}");
    assert!(err.to_string().contains("cannot reach Redis"), "{err}");
    assert!(im.has_online("b").await.is_err());
    assert!(im.force_offline("b").await.is_err());
}

/// `--token-private-key`: an Ed25519 or RSA PEM key signs tokens; a missing or unusable file
/// is a clear error, not a panic.
#[cfg(feature = "clap")]
#[test]
fn a_private_key_flag_signs_with_that_key_or_says_why_not() {
    use clap::Parser;
    #[derive(Parser)]
    struct Config {
        #[command(flatten)]
        im: imclient::ImClientArgs,
    }
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    let with_key = |path: String| {
        Config::parse_from(["app", "--token-private-key", &path, "--token-key-id", "k1"])
            .im
            .client()
    };
    for key in ["ed1.pem", "rsa1.pem"] {
        let im = with_key(format!("{keys}/{key}")).unwrap();
        let url = im
            .prev_connect_server("alice", serde_json::json!(null))
            .unwrap();
        assert!(url.contains("token="), "{key}");
    }
    let err = with_key(format!("{keys}/missing.pem")).unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");
    let err = with_key(format!("{keys}/README.md")).unwrap_err();
    assert!(err.to_string().contains("PEM"), "{err}");
}

#[tokio::test]
async fn bad_sends_fail_with_clear_errors_before_touching_redis() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let big = "x".repeat(imclient::DEFAULT_MAX_PAYLOAD_BYTES + 1);
    let err =
        c.im.send_message("a", ["b"], &big, false)
            .await
            .unwrap_err();
    assert!(
        matches!(err, imclient::Error::PayloadTooLarge { .. }),
        "{err}"
    );
    let err =
        c.im.send_message("a", Vec::<String>::new(), &1, false)
            .await
            .unwrap_err();
    assert!(matches!(err, imclient::Error::NoReceivers), "{err}");
    let err = c.im.send_message("a", [""], &1, false).await.unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    Ok(())
}

#[tokio::test]
async fn bad_channel_names_are_refused_with_a_clear_error() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    for bad in ["", "two words", "tag{x}", &"c".repeat(129)] {
        let err = c.im.join_chan("a", bad).await.expect_err("refused");
        assert!(matches!(err, imclient::Error::ChanName { .. }), "{err}");
        assert!(err.to_string().contains("1 to 128 bytes"), "{err}");
        assert!(c.im.send_chan_message("a", bad, &1, false).await.is_err());
    }
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error() -> Result<()> {
    let redis = Redis::start_with_auth(None, "right")?;
    let url = redis.url().replace(":right@", ":wrong@");
    let im = imclient::ImClient::new(imclient::ImClientOptions::new(
        url,
        ["ws://127.0.0.1:1"],
        imtestkit::SECRET,
    ))?;
    let err = im.send_message("a", ["b"], &"x", false).await.unwrap_err();
    let text = err.to_string().to_lowercase();
    assert!(text.contains("pass") || text.contains("auth"), "{err}");
    Ok(())
}

#[tokio::test]
async fn without_redis_the_configured_list_is_used() -> Result<()> {
    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    let im = ImClient::new(ImClientOptions::new(
        nowhere,
        ["ws://127.0.0.1:1", "ws://127.0.0.1:2"],
        imtestkit::SECRET,
    ))?;
    assert!(im.refresh_nodes().await.is_err());
    assert_eq!(im.live_nodes().len(), 2);
    let url = im.prev_connect_server("alice", json!(null))?;
    assert!(url.starts_with(im.home_node("alice")?.as_str()));
    Ok(())
}
