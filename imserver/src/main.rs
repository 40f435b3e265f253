//! The imserver binary: parse the config, set up logging, raise the open-file limit, bind,
//! print one ready line, and serve until SIGINT or SIGTERM.

use std::io::{IsTerminal as _, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use imserver::config::LogFormat;
use imserver::{Config, server};
use tracing_subscriber::EnvFilter;

/// jemalloc, for giving memory back after load (see `imserver::memory`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The log filter when RUST_LOG is not set.
const DEFAULT_LOG: &str = "info";
/// Added to every filter, RUST_LOG's too unless it names actix_http itself. actix-http's
/// dispatcher logs every malformed request at ERROR: anyone could fill the log with one line
/// per request. A malformed request is the client's problem, answered with 400; the node
/// counts them and logs the count once per interval (`tasks::bad_requests`).
const QUIET_DISPATCHER: &str = "actix_http::h1::dispatcher=off";

/// The subcommand that posts the dead-lettered webhook batches again.
const WEBHOOK_REPLAY: &str = "webhook-replay";

/// The subcommand a container runtime runs to ask whether the node serves.
const HEALTHCHECK: &str = "healthcheck";

/// How long the healthcheck waits for the node's answer.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> anyhow::Result<()> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == WEBHOOK_REPLAY) {
        args.remove(1);
        return webhook_replay(Config::parse_from(args));
    }
    if args.get(1).is_some_and(|a| a == HEALTHCHECK) {
        args.remove(1);
        return healthcheck(&Config::parse_from(args));
    }
    let config = Config::parse();
    // The system runtime has worker threads of its own: the broker and every `ws://` session
    // run there, so a delivery wakes a session on the thread that read it from Redis instead
    // of on another runtime's thread (docs/DESIGN.md, "Where sessions run").
    let threads = config
        .session_threads
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    if threads == 0 {
        // The earlier layout, kept selectable: sessions on the HTTP workers that accepted them.
        return actix_rt::System::new().block_on(serve(config));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("imserver-session")
        .enable_all()
        .build()
        .context("cannot start the session runtime")?;
    actix_rt::System::with_tokio_rt(|| runtime).block_on(serve(config))
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => logs.json().init(),
        // Colour codes only for a person at a terminal, never into files or log shippers.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    config.validate()?;
    if !imserver::memory::return_freed_memory_in_background() {
        tracing::warn!(
            "cannot start the allocator's purging threads: freed memory comes back only under load"
        );
    }
    if config.dev {
        tracing::warn!(
            listen = %config.listen,
            "DEV MODE: tokens signed with the built-in secret are accepted; never run this in production"
        );
    }
    let limit = raise_open_file_limit();
    if let Some(asked) = config.fit_open_files(limit)? {
        tracing::warn!(
            limit,
            asked,
            max_connections = config.max_connections,
            "the open-file limit is too low for --max-connections: the cap is lowered so that \
             a full node refuses with 503 node_full; raise the limit (ulimit -n, LimitNOFILE=)"
        );
    }

    let listener = TcpListener::bind(config.listen)
        .with_context(|| format!("cannot bind {}", config.listen))?;
    let node = server::node_id(&config, &listener)?;
    let api = config
        .api_listen
        .map(|addr| TcpListener::bind(addr).with_context(|| format!("cannot bind {addr}")))
        .transpose()?;
    // One machine-readable line on stdout so scripts and tests learn the bound ports.
    let mut ready =
        serde_json::json!({ "event": "ready", "node": node, "listen": listener.local_addr()? });
    if let Some(api) = &api {
        ready["api"] = serde_json::json!(api.local_addr()?);
    }
    writeln!(std::io::stdout(), "{ready}")?;
    std::io::stdout().flush()?;

    server::run_with_api(config, listener, api, shutdown_signal()).await?;
    Ok(())
}

/// `imserver webhook-replay <the node's flags>`: posts the dead-letter stream's batches to
/// `--webhook-url` again and prints one JSON line saying how many were replayed and are left;
/// fails when some are left.
fn webhook_replay(config: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let done = runtime.block_on(imserver::tasks::webhook::replay::replay(&config))?;
    let mut line = serde_json::to_value(&done)?;
    line["event"] = serde_json::json!(WEBHOOK_REPLAY);
    writeln!(std::io::stdout(), "{line}")?;
    if done.left > 0 {
        anyhow::bail!(
            "{} dead-lettered batches are left{}",
            done.left,
            done.stopped.map(|s| format!(" ({s})")).unwrap_or_default()
        );
    }
    Ok(())
}

/// The log filter for RUST_LOG's value (the default when unset or invalid), with actix-http's
/// per-request errors off unless it asks for them by name.
fn log_filter(rust_log: Option<&str>) -> EnvFilter {
    let spec = rust_log.filter(|s| !s.trim().is_empty());
    let filter = spec
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_LOG));
    if spec.is_some_and(|s| s.contains("actix_http")) {
        return filter;
    }
    match QUIET_DISPATCHER.parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// `imserver healthcheck <the node's flags>`: asks the node on this machine for `/healthz` at
/// its `--listen` address (loopback when it listens on every address; over TLS when it has a
/// certificate, not checked: it is this machine's own node), prints the answer and succeeds when
/// the node serves clients: `ok`, or `full` (refusing only new ones). A node starting, without
/// Redis or shutting down fails the check. Reads the same IM_* variables as the node, so that a
/// container's healthcheck needs no flags.
fn healthcheck(config: &Config) -> anyhow::Result<()> {
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{addr}/healthz");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let (status, body) = runtime
        .block_on(async {
            let answer = reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .timeout(HEALTHCHECK_TIMEOUT)
                .build()?
                .get(&url)
                .send()
                .await?;
            let status = answer.status();
            Ok::<_, reqwest::Error>((status, answer.text().await?))
        })
        .with_context(|| format!("no answer from {url}"))?;
    writeln!(std::io::stdout(), "{body}")?;
    let state = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["status"].as_str().map(str::to_owned));
    match state.as_deref() {
        Some("ok" | "full") => Ok(()),
        _ => anyhow::bail!("{url} answered {status}: the node does not serve"),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Each socket is a file: raise the soft limit to the hard one; returns the limit in force.
fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::info!(limit, "open-file limit");
            limit
        }
        Err(e) => {
            let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
            tracing::warn!(error = %e, soft, "cannot raise the open-file limit");
            soft
        }
    }
}
