//! imfloor: the floor a node's delivery and idle connection are measured against
//! (`imbench::floor`; docs/BENCHMARKS.md, "Floor"). Binds, prints one JSON ready line in the
//! node's shape (`event`, `node`, `listen`, plus `threads`), and serves until killed.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "imfloor",
    about = "The leanest server that writes imserver's frames, driven by `imbench --floor-addr`"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Threads writing frames. Default: one per core, as imserver's session threads.
    #[arg(long)]
    threads: Option<usize>,
}

/// The listen backlog: actix-server's default, as the node has.
const BACKLOG: i32 = 2048;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let threads = args
        .threads
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(args.listen),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&args.listen.into())
        .with_context(|| format!("cannot bind {}", args.listen))?;
    socket.listen(BACKLOG)?;
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr()?;
    let ready = serde_json::json!({
        "event": "ready", "node": format!("ws://{addr}/"), "listen": addr, "threads": threads,
    });
    writeln!(std::io::stdout(), "{ready}")?;
    std::io::stdout().flush()?;
    imbench::floor::run(listener, threads)?;
    Ok(())
}
