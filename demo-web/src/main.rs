//! demo-web: a small but honest business backend on imclient. It signs users in by display
//! name, owns the rooms, decides who may write where, and keeps sessions and the last
//! messages of each conversation in the deployment's Redis, so a restart loses nothing;
//! imclient carries its decisions to the browsers through imserver.
//! The page (static/) and the browser client script (static/imclient.js) are served from here.

mod api;
mod history;
mod presence_feed;
mod rooms;
mod sends;
mod storage;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::http::header::{CACHE_CONTROL, HeaderValue};
use actix_web::middleware::DefaultHeaders;
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use clap::Parser;
use imclient::ImClientArgs;
use tracing_subscriber::EnvFilter;

use crate::api::AppState;
use crate::history::History;
use crate::storage::Storage;
use crate::users::Users;

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

/// One static file, compiled in so the binary runs from anywhere.
fn asset(
    content_type: &'static str,
    body: &'static str,
) -> impl Fn() -> std::future::Ready<HttpResponse> + Clone {
    // Asked again on every load (a new build must not meet an old script), but kept for
    // back/forward; API answers are never stored (the default header below).
    move || {
        std::future::ready(
            HttpResponse::Ok()
                .content_type(content_type)
                .insert_header((CACHE_CONTROL, "no-cache"))
                .body(body),
        )
    }
}

fn favicon() -> impl Fn() -> std::future::Ready<HttpResponse> + Clone {
    asset("image/svg+xml", include_str!("../static/favicon.svg"))
}

/// The page's scripts, in the order index.html loads them: the browser client, then the page's
/// parts, then app.js, which starts it.
const SCRIPTS: [(&str, &str); 7] = [
    ("/imclient.js", include_str!("../static/imclient.js")),
    ("/page.js", include_str!("../static/page.js")),
    (
        "/conversation.js",
        include_str!("../static/conversation.js"),
    ),
    ("/online.js", include_str!("../static/online.js")),
    ("/rooms.js", include_str!("../static/rooms.js")),
    ("/outbox.js", include_str!("../static/outbox.js")),
    ("/app.js", include_str!("../static/app.js")),
];

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let im = config.im.client().context("cannot build the imclient")?;
    let storage = Storage::from(&im);
    let state = AppState {
        im: im.clone(),
        users: Users::new(storage.clone()),
        history: History::new(storage),
        sends: Arc::default(),
    };
    let consumer = format!("demo-web-{}", config.listen);
    tokio::spawn(presence_feed::run(im, state.users.clone(), consumer));

    tracing::info!(listen = %config.listen, "demo-web serving");
    HttpServer::new(move || {
        let app = App::new()
            .wrap(DefaultHeaders::new().add((CACHE_CONTROL, HeaderValue::from_static("no-store"))))
            .app_data(web::Data::new(state.clone()))
            .app_data(api::json_config())
            .configure(api::configure)
            .default_service(web::to(api::not_found));
        SCRIPTS
            .iter()
            .fold(app, |app, (path, body)| {
                app.route(
                    path,
                    web::get().to(asset("text/javascript; charset=utf-8", body)),
                )
            })
            .route(
                "/",
                web::get().to(asset(
                    "text/html; charset=utf-8",
                    include_str!("../static/index.html"),
                )),
            )
            .route("/favicon.svg", web::get().to(favicon()))
            // Browsers that ignore the page's icon link still ask for this.
            .route("/favicon.ico", web::get().to(favicon()))
            .route(
                "/style.css",
                web::get().to(asset(
                    "text/css; charset=utf-8",
                    include_str!("../static/style.css"),
                )),
            )
    })
    .bind(config.listen)
    .with_context(|| format!("cannot bind {}", config.listen))?
    .run()
    .await?;
    Ok(())
}
