//! The quick-start example (examples/quickstart.rs), run against a real Redis
//! and node: a browser asks the example backend for its URL, connects, and receives what
//! another user sends through the backend.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

#[path = "../examples/quickstart.rs"]
mod quickstart;

use anyhow::Result;
use imtestkit::{Cluster, NodeOpts, Ws};
use serde_json::json;

#[actix_web::test]
async fn the_quick_start_backend_hands_out_urls_and_sends() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let app = actix_web::test::init_service(
        actix_web::App::new()
            .app_data(actix_web::web::Data::new(c.im.clone()))
            .configure(quickstart::routes),
    )
    .await;
    let req = actix_web::test::TestRequest::get()
        .uri("/connect-url?user=bob")
        .to_request();
    let answer: serde_json::Value = actix_web::test::call_and_read_body_json(&app, req).await;
    let mut bob = Ws::connect(answer["url"].as_str().unwrap()).await?;

    let req = actix_web::test::TestRequest::post()
        .uri("/send")
        .set_json(json!({ "from": "alice", "to": "bob", "text": "hi Bob" }))
        .to_request();
    let sent: serde_json::Value = actix_web::test::call_and_read_body_json(&app, req).await;
    assert_eq!(sent["taken"], true);
    let env = bob.next_message().await?;
    assert_eq!(env.payload, json!({ "text": "hi Bob" }));
    assert_eq!(env.id.as_deref(), sent["id"].as_str());
    Ok(())
}
