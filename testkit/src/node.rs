//! An imserver node as a process of its own: started on port 0 against a test Redis, known by
//! the ready line it prints, signalled and killed like a deployed one.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::deadline::{WAIT, wait_for};
use crate::redis_server::Redis;
use crate::{PREFIX, SECRET, free_port};

/// A running imserver process.
#[derive(Debug)]
pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    /// The HTTP API listener's address, when the node was started with --api-listen.
    pub api: Option<SocketAddr>,
    child: Option<Child>,
}

/// Where the imserver binary is: `IM_TEST_IMSERVER` when set, else in cargo's target directory
/// next to the running test's (target/<profile>/deps/<test> -> target/<profile>/imserver), where
/// cargo builds it for imserver's own tests and for `cargo test --workspace`. A test of another
/// crate run on its own (`cargo test -p imclient`) may find it missing, or older than imserver's
/// or imclient's sources: the first call then builds it with the cargo running the test, so a
/// node is never tested stale.
pub fn imserver_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_imserver().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn locate_imserver() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("IM_TEST_IMSERVER") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("a test binary lives in target/<profile>/deps")?;
    let bin = profile_dir.join("imserver");
    // Cargo sets both when it runs a test; for imserver's own tests it built the binary already.
    let cargo = std::env::var_os("CARGO");
    let package = std::env::var("CARGO_PKG_NAME").unwrap_or_default();
    if let Some(cargo) = cargo.filter(|_| package != "imserver")
        && is_stale(&bin)
    {
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(name) => name,
        };
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "imserver", "--bin", "imserver"])
            .args(["--profile", profile])
            .status()
            .context("cannot run cargo to build imserver")?;
        ensure!(
            status.success(),
            "cargo could not build imserver for this test"
        );
    }
    ensure!(
        bin.exists(),
        "no imserver binary at {}: build it with `cargo build -p imserver` or name one in \
         IM_TEST_IMSERVER",
        bin.display()
    );
    Ok(bin)
}

/// Whether `bin` is missing or older than a source file of the node (its crate or imclient's).
/// Only then is it rebuilt: a plain `cargo build -p imserver` selects other features of shared
/// dependencies than a workspace test run does, and would rebuild the node for nothing.
fn is_stale(bin: &Path) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return true;
    };
    let Some(root) = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|dir| {
            dir.ancestors()
                .find(|d| d.join("imserver/Cargo.toml").exists())
                .map(Path::to_path_buf)
        })
    else {
        return false;
    };
    let newest = [
        "imserver/src",
        "imserver/Cargo.toml",
        "imclient/src",
        "imclient/Cargo.toml",
        "Cargo.lock",
    ]
    .iter()
    .filter_map(|p| newest_mtime(&root.join(p)))
    .max();
    newest.is_some_and(|newest| newest > built)
}

/// The latest modification time of a file, or of any file under a directory.
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| newest_mtime(&entry.path()))
        .max()
}

/// Settings of a test node; tight timings so tests finish fast.
#[derive(Clone, Debug, Default)]
pub struct NodeOpts {
    pub args: Vec<String>,
    /// The open-file limit (soft and hard) to run the node under.
    pub nofile: Option<u64>,
    /// Run with the node's default log filter and send its log to this file.
    pub log_file: Option<std::path::PathBuf>,
    /// Give the node no token secret (it checks tokens with --token-key public keys only).
    pub without_secret: bool,
    /// The node serves TLS: its plain /healthz cannot be read, so only the ready line is
    /// waited for.
    pub tls: bool,
    /// Environment variables set for the node, after the harness's own (so `RUST_LOG` here
    /// overrides the default filter of `log_file`).
    pub env: Vec<(String, String)>,
}

impl NodeOpts {
    pub fn arg(mut self, k: &str, v: impl ToString) -> Self {
        self.args.push(k.to_owned());
        self.args.push(v.to_string());
        self
    }
}

impl Node {
    /// A node on a port of its own. The port comes from below the kernel's ephemeral range (see
    /// `free_port`) rather than the kernel's pick, so that a test can restart the node on its
    /// address: a port from inside that range can meanwhile become an outgoing connection's.
    pub async fn start(redis: &Redis, opts: NodeOpts) -> Result<Self> {
        Self::start_at(redis, opts, &format!("127.0.0.1:{}", free_port())).await
    }

    pub async fn start_at(redis: &Redis, opts: NodeOpts, listen: &str) -> Result<Self> {
        let mut cmd = match opts.nofile {
            // A shell lowers the limit and execs the node: the node cannot raise it again.
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(imserver_bin()?);
                sh
            }
            None => Command::new(imserver_bin()?),
        };
        cmd.args([
            "--listen",
            listen,
            "--redis-url",
            &redis.url(),
            "--key-prefix",
            PREFIX,
        ])
        .args(["--lease-ms", "1500", "--workers", "1"])
        .args(&opts.args)
        .stdout(Stdio::piped());
        if opts.without_secret {
            cmd.env_remove("IM_TOKEN_SECRET");
        } else {
            cmd.env("IM_TOKEN_SECRET", SECRET);
        }
        match &opts.log_file {
            Some(path) => {
                cmd.env_remove("RUST_LOG")
                    .stderr(std::fs::File::create(path)?);
            }
            None => {
                cmd.env(
                    "RUST_LOG",
                    std::env::var("IM_TEST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stderr(Stdio::piped());
            }
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().context("cannot start imserver")?;
        if let Some(stderr) = child.stderr.take() {
            // Through eprintln!, which the test harness captures: a passing test does not show
            // the warnings its nodes are expected to log (an outage it causes, a peer it
            // kills); a failing one shows them with its own output.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                }
            });
        }
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        let ready: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("ready line: {line:?}"))?;
        let id = ready["node"]
            .as_str()
            .ok_or_else(|| anyhow!("no node in {line}"))?
            .to_owned();
        let addr: SocketAddr = ready["listen"]
            .as_str()
            .ok_or_else(|| anyhow!("no listen"))?
            .parse()?;
        let api = ready["api"].as_str().map(str::parse).transpose()?;
        let node = Self {
            id,
            addr,
            api,
            child: Some(child),
        };
        if !opts.tls {
            wait_for("node healthy", WAIT, || async {
                (node.get("/healthz").await.ok()?.0 == 200).then_some(())
            })
            .await?;
        }
        Ok(node)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit, returning whether it exited successfully.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Result<bool> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > end {
                let _ = child.kill();
                bail!("node did not exit within {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))
}
