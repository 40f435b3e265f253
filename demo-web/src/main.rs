//! demo-web: a small business backend on imclient. For now it signs users in by name, hands
//! out connect URLs, sends private messages with receipts and lists who is online; the page
//! shows what the socket receives. (The full chat demo grows from here.)

use std::net::SocketAddr;

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use clap::Parser;
use imclient::{ImClient, ImClientOptions};
use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// The built-in secret of dev mode; the same one imserver uses with --dev.
const DEV_SECRET: &str = "imserver-dev-secret-do-not-use-in-production";

/// Configuration of the demo backend.
#[derive(Debug, Parser)]
#[command(name = "demo-web", about = "Example business backend for imserver")]
struct Config {
    /// Address to serve the API and page on.
    #[arg(long, env = "IM_WEB_LISTEN", default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// Redis URL.
    #[arg(long, env = "IM_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The imserver nodes as browsers reach them, comma separated.
    #[arg(
        long,
        env = "IM_NODES",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:6001"
    )]
    nodes: Vec<String>,
    /// Secret shared with the nodes.
    #[arg(long, env = "IM_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,
    /// Dev mode: use the built-in secret.
    #[arg(long, env = "IM_DEV", default_value_t = false)]
    dev: bool,
    /// Redis key prefix, as the nodes use.
    #[arg(long, env = "IM_KEY_PREFIX", default_value = "im")]
    key_prefix: String,
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
    let secret = match (config.token_secret, config.dev) {
        (Some(s), _) if !s.is_empty() => s,
        (_, true) => DEV_SECRET.to_owned(),
        _ => anyhow::bail!("no token secret: set IM_TOKEN_SECRET, or pass --dev for local use"),
    };
    let im = ImClient::new(
        ImClientOptions::new(config.redis_url, config.nodes, secret).key_prefix(config.key_prefix),
    )
    .context("cannot build the imclient")?;
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
