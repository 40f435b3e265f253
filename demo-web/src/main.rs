//! demo-web: a small business backend on imclient. For now it signs users in by name, hands
//! out connect URLs, sends private messages with receipts and lists who is online; the page
//! shows what the socket receives. (The full chat demo grows from here.)

use std::net::SocketAddr;

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use clap::Parser;
use imclient::{ImClient, ImClientArgs};
use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// Configuration of the demo backend.
#[derive(Debug, Parser)]
#[command(name = "demo-web", about = "Example business backend for imserver")]
struct Config {
    /// Address to serve the API and page on.
    #[arg(long, env = "IM_WEB_LISTEN", default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    #[command(flatten)]
    im: ImClientArgs,
}

#[derive(Debug, Deserialize)]
struct Who {
    client: String,
}

#[derive(Debug, Deserialize)]
struct Send {
    from: String,
    to: String,
    text: String,
}

fn bad_request(e: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::BadRequest().json(serde_json::json!({ "error": e.to_string() }))
}

async fn connect_url(im: web::Data<ImClient>, who: web::Query<Who>) -> HttpResponse {
    match im.prev_connect_server(&who.client, serde_json::json!({ "name": who.client })) {
        Ok(url) => HttpResponse::Ok().json(serde_json::json!({ "url": url })),
        Err(e) => bad_request(e),
    }
}

async fn send(im: web::Data<ImClient>, body: web::Json<Send>) -> HttpResponse {
    if body.text.trim().is_empty() || body.text.len() > 2000 {
        return bad_request("text must be 1 to 2000 bytes");
    }
    let payload = serde_json::json!({ "text": body.text });
    match im
        .send_message(&body.from, [&body.to], &payload, true)
        .await
    {
        Ok(report) => HttpResponse::Ok().json(serde_json::json!({ "id": report.message_id })),
        Err(imclient::Error::ClientId { .. }) => {
            bad_request("from and to must be 1 to 128 characters")
        }
        Err(e) => {
            HttpResponse::ServiceUnavailable().json(serde_json::json!({ "error": e.to_string() }))
        }
    }
}

async fn online(im: web::Data<ImClient>) -> HttpResponse {
    match im.online_clients().await {
        Ok(list) => HttpResponse::Ok().json(list),
        Err(e) => {
            HttpResponse::ServiceUnavailable().json(serde_json::json!({ "error": e.to_string() }))
        }
    }
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("../static/index.html"))
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let im = config.im.client().context("cannot build the imclient")?;
    tracing::info!(listen = %config.listen, "demo-web serving");
    HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(im.clone()))
            .route("/", web::get().to(page))
            .route("/prev-connect-imserver", web::get().to(connect_url))
            .route("/send", web::post().to(send))
            .route("/online", web::get().to(online))
    })
    .bind(config.listen)
    .with_context(|| format!("cannot bind {}", config.listen))?
    .run()
    .await?;
    Ok(())
}
