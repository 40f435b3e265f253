//! The imserver binary: parse the config, set up logging, raise the open-file limit, bind,
//! print one ready line, and serve until SIGINT or SIGTERM.

use std::io::Write as _;
use std::net::TcpListener;

use anyhow::Context as _;
use clap::Parser as _;
use imserver::{Config, server};
use tracing_subscriber::EnvFilter;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    config.validate()?;
    raise_open_file_limit();

    let listener = TcpListener::bind(config.listen)
        .with_context(|| format!("cannot bind {}", config.listen))?;
    let node = server::node_id(&config, &listener)?;
    // One machine-readable line on stdout so scripts and tests learn the bound port.
    let ready =
        serde_json::json!({ "event": "ready", "node": node, "listen": listener.local_addr()? });
    writeln!(std::io::stdout(), "{ready}")?;
    std::io::stdout().flush()?;

    server::run(config, listener, shutdown_signal()).await?;
    Ok(())
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

/// Each socket is a file: raise the soft limit to the hard one.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}
