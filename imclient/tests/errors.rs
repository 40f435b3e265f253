//! Bad options and an unreachable Redis give clear, typed errors.

use std::net::TcpListener;

use imclient::{Error, ImClient, ImClientOptions};

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
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let im = ImClient::new(ImClientOptions::new(url, ["ws://a:1"], SECRET)).unwrap();
    let err = im.send_message("a", ["b"], &"hi", false).await.unwrap_err();
    assert!(matches!(err, Error::Pool(_)), "{err:?}");
    assert!(err.to_string().contains("cannot reach Redis"), "{err}");
    assert!(im.has_online("b").await.is_err());
    assert!(im.force_offline("b").await.is_err());
}
