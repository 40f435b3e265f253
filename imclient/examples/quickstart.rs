//! A complete minimal business backend on imclient, with actix-web:
//!
//! - `GET /connect-url?user=alice` answers the URL alice's browser opens (its home node, with a
//!   fresh single-use token). A real backend takes the user from its own session instead.
//! - `POST /send` with `{"from":"alice","to":"bob","text":"hi"}` pushes a message to bob's
//!   sockets and answers the message id and whether bob's node took it.
//! - A task reads online/offline events and logs them.
//!
//! Run it next to a node (`cargo run -p imserver -- --dev` and a redis-server on 6379):
//!
//! ```sh
//! cargo run -p imclient --example quickstart   # then open ws URLs from /connect-url
//! ```
//!
//! The test suite runs this same code against a real Redis and node (tests/quickstart.rs).

use actix_web::{App, HttpResponse, HttpServer, web};
use imclient::{EventsFrom, ImClient, ImClientOptions};
use serde::Deserialize;

/// The routes, for the server below and for the test.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/connect-url", web::get().to(connect_url))
        .route("/send", web::post().to(send));
}

#[derive(Deserialize)]
struct Who {
    user: String,
}

async fn connect_url(im: web::Data<ImClient>, who: web::Query<Who>) -> HttpResponse {
    match im.prev_connect_server(&who.user, serde_json::json!({ "name": who.user })) {
        Ok(url) => HttpResponse::Ok().json(serde_json::json!({ "url": url })),
        Err(e) => HttpResponse::BadRequest().json(serde_json::json!({ "error": e.to_string() })),
    }
}

#[derive(Deserialize)]
struct Send {
    from: String,
    to: String,
    text: String,
}

async fn send(im: web::Data<ImClient>, body: web::Json<Send>) -> HttpResponse {
    let payload = serde_json::json!({ "text": body.text });
    match im
        .send_message(&body.from, [&body.to], &payload, true)
        .await
    {
        Ok(report) => HttpResponse::Ok().json(serde_json::json!({
            "id": report.message_id,
            "taken": report.unreachable().next().is_none(),
        })),
        Err(e) => HttpResponse::BadRequest().json(serde_json::json!({ "error": e.to_string() })),
    }
}

/// Logs online/offline events until the stream ends.
pub async fn log_events(im: ImClient) -> imclient::Result<()> {
    let mut events = im.events(EventsFrom::Now).await?;
    loop {
        let (_, event) = events.next().await?;
        tracing::info!(client = %event.client, kind = ?event.kind, node = %event.node, "presence");
    }
}

#[allow(dead_code)] // the test uses the routes, not main
#[actix_web::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().init();
    let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_owned());
    let im = ImClient::new(ImClientOptions::new(
        env("IM_REDIS_URL", "redis://127.0.0.1:6379"),
        env("IM_NODES", "ws://127.0.0.1:6001").split(','),
        env("IM_TOKEN_SECRET", imclient::token::DEV_SECRET),
    ))
    .map_err(std::io::Error::other)?;
    tokio::spawn(log_events(im.clone()));
    let data = web::Data::new(im);
    HttpServer::new(move || App::new().app_data(data.clone()).configure(routes))
        .bind(("127.0.0.1", 8000))?
        .run()
        .await
}
