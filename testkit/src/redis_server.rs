//! A private redis-server on a free port (plain, with credentials, or TLS only), or a whole Redis
//! Cluster when the run asks for one, and the Redis-side figures tests check.

use std::io::{Read as _, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::deadline::WAIT;
use crate::port::free_port;
use crate::redis_cluster;

/// Which Redis the messaging suites run against: one server, or with `IM_TEST_REDIS=cluster`
/// a Redis Cluster of three masters with a replica each (scripts/test.sh runs both).
pub fn cluster_wanted() -> bool {
    std::env::var("IM_TEST_REDIS").is_ok_and(|v| v == "cluster")
}

/// A redis-server owned by one test, or a whole Redis Cluster (see [`cluster_wanted`]).
#[derive(Debug)]
pub struct Redis {
    pub port: u16,
    /// Set when this is a cluster; `port` then is its first master's.
    pub cluster: Option<redis_cluster::RedisCluster>,
    child: Option<Child>,
    dir: std::path::PathBuf,
    /// Credentials clients must give: (user, password); an empty user is the default one.
    auth: Option<(String, String)>,
    /// TLS only, with a self-signed certificate in `dir`.
    tls: bool,
}

impl Redis {
    /// One redis-server, or a cluster when the run asks for one.
    pub fn start() -> Result<Self> {
        if cluster_wanted() {
            return Self::start_cluster();
        }
        Self::launch(None, false)
    }

    /// One redis-server, whatever the run asks for: for tests of one server's outages.
    pub fn start_single() -> Result<Self> {
        Self::launch(None, false)
    }

    /// A Redis Cluster: three masters, one replica each.
    pub fn start_cluster() -> Result<Self> {
        let cluster = redis_cluster::RedisCluster::start()?;
        let port = cluster
            .master_ports()?
            .first()
            .copied()
            .context("no master")?;
        Ok(Self {
            port,
            cluster: Some(cluster),
            child: None,
            dir: std::env::temp_dir().join(format!("imtest-unused-{port}")),
            auth: None,
            tls: false,
        })
    }

    /// A redis-server that wants credentials: the default user's `password`, or with `user`
    /// an ACL user of its own (the default user then is off).
    pub fn start_with_auth(user: Option<&str>, password: &str) -> Result<Self> {
        Self::launch(
            Some((user.unwrap_or_default().to_owned(), password.to_owned())),
            false,
        )
    }

    /// A redis-server that speaks TLS only (`rediss://`), with a self-signed certificate.
    pub fn start_tls() -> Result<Self> {
        Self::launch(None, true)
    }

    fn launch(auth: Option<(String, String)>, tls: bool) -> Result<Self> {
        // Another test's server may take the free port before this one binds it: then try
        // another port (see `spawn`).
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("imtest-redis-{port}-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            if tls {
                let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
                std::fs::write(dir.join("tls.crt"), made.cert.pem())?;
                std::fs::write(dir.join("tls.key"), made.key_pair.serialize_pem())?;
            }
            let mut redis = Self {
                port,
                cluster: None,
                child: None,
                dir,
                auth: auth.clone(),
                tls,
            };
            match redis.spawn() {
                Ok(()) => return Ok(redis),
                // Dropped: killed and its directory removed.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    fn spawn(&mut self) -> Result<()> {
        let mut auth_args = Vec::new();
        match &self.auth {
            Some((user, password)) if user.is_empty() => {
                auth_args.extend(["--requirepass".to_owned(), password.clone()]);
            }
            Some((user, password)) => {
                // One argument per word: redis-server joins them into config lines.
                auth_args
                    .extend(["--user", "default", "off", "--user", user, "on"].map(String::from));
                auth_args.extend([
                    format!(">{password}"),
                    "~*".into(),
                    "&*".into(),
                    "+@all".into(),
                ]);
            }
            None => {}
        }
        let (port, tls_port) = if self.tls {
            ("0".to_owned(), self.port.to_string())
        } else {
            (self.port.to_string(), "0".to_owned())
        };
        if self.tls {
            let file = |name: &str| self.dir.join(name).to_string_lossy().into_owned();
            auth_args.extend([
                "--tls-port".to_owned(),
                tls_port,
                "--tls-cert-file".to_owned(),
                file("tls.crt"),
                "--tls-key-file".to_owned(),
                file("tls.key"),
                "--tls-ca-cert-file".to_owned(),
                file("tls.crt"),
                "--tls-auth-clients".to_owned(),
                "no".to_owned(),
            ]);
        }
        // `answered_by_own_process` reads this start's log, not the last one's.
        let _ = std::fs::remove_file(self.dir.join("redis.log"));
        let child = Command::new("redis-server")
            .args(&auth_args)
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server: run scripts/test.sh, which installs it")?;
        self.child = Some(child);
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            if self.ping() {
                if self.answered_by_own_process() {
                    return Ok(());
                }
                self.kill();
                bail!("port {} is served by another process", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("redis-server did not answer on port {}", self.port)
    }

    /// Whether the server that answered on the port is this one's process, not another test's
    /// that took the port first (this one then fails to bind and exits).
    fn answered_by_own_process(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        if self.auth.is_none() && !self.tls {
            return crate::cluster_view::served_by(self.port, child.id());
        }
        // Without a plain connection to ask, its log says whether it is listening: it ends
        // with an error instead when the port was taken.
        let log = self.dir.join("redis.log");
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            if !matches!(child.try_wait(), Ok(None)) {
                return false;
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Ready to accept connections") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls {
            // Listening is enough: the handshake is the client's job.
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 7];
        // Without credentials a protected server answers -NOAUTH: it is up all the same.
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && (&buf == b"+PONG\r\n" || buf.starts_with(b"-NOAUTH"))
    }

    pub fn url(&self) -> String {
        if let Some(cluster) = &self.cluster {
            return format!("redis+cluster://{}", cluster.addrs().join(","));
        }
        if self.tls {
            // The certificate is self-signed: encrypted, but not verified.
            return format!("rediss://127.0.0.1:{}/#insecure", self.port);
        }
        match &self.auth {
            Some((user, password)) => {
                format!("redis://{user}:{password}@127.0.0.1:{}", self.port)
            }
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Kills redis-server (SIGKILL): an outage that loses everything, since it keeps nothing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops redis-server in its tracks (SIGSTOP): connections stay open and nothing answers,
    /// as on a machine too loaded to run it, until [`Redis::resume`].
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused redis-server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        if self.cluster.is_some() {
            bail!("restarting a whole cluster is not a harness operation; use start_single()");
        }
        self.kill();
        self.spawn()
    }

    /// A plain connection for assertions (to the whole cluster when this is one).
    pub async fn conn(&self) -> Result<imclient::store::SharedConn> {
        Ok(imclient::store::Store::open(&self.url())?
            .get()
            .await?
            .detach())
    }

    /// A connection to one server: this one, or the cluster node on `port`.
    async fn server_conn(&self, port: u16) -> Result<redis::aio::MultiplexedConnection> {
        let url = match &self.cluster {
            Some(_) => format!("redis://127.0.0.1:{port}"),
            None => self.url(),
        };
        Ok(redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?)
    }

    /// How often Redis ran PUBLISH and SPUBLISH, over every master.
    pub async fn publish_calls(&self) -> Result<u64> {
        let ports = match &self.cluster {
            Some(cluster) => cluster.master_ports()?,
            None => vec![self.port],
        };
        let mut total = 0;
        for port in ports {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut self.server_conn(port).await?)
                .await?;
            total += info
                .lines()
                .filter(|l| l.starts_with("cmdstat_publish:") || l.starts_with("cmdstat_spublish:"))
                .filter_map(|l| l.split("calls=").nth(1))
                .filter_map(|v| v.split(',').next())
                .filter_map(|v| v.parse::<u64>().ok())
                .sum::<u64>();
        }
        Ok(total)
    }

    /// How many subscribers `topic` has (on its shard, on a cluster).
    pub async fn subscribers(&self, topic: &str) -> Result<u64> {
        let (port, command) = match &self.cluster {
            Some(cluster) => (
                cluster.master_of_slot(redis_cluster::RedisCluster::slot_of(topic))?,
                "SHARDNUMSUB",
            ),
            None => (self.port, "NUMSUB"),
        };
        let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg(command)
            .arg(topic)
            .query_async(&mut self.server_conn(port).await?)
            .await?;
        Ok(counts.first().map_or(0, |(_, n)| *n))
    }

    /// Publishes on a topic as a backend would: PUBLISH, or SPUBLISH on a cluster.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl redis::ToRedisArgs + Send + Sync,
    ) -> Result<i64> {
        let mut conn = self.conn().await?;
        Ok(
            imclient::store::publish(self.cluster.is_some(), topic, payload)
                .query_async(&mut conn)
                .await?,
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server whose port another server holds already is not taken for this one: the
    /// answer to its ping comes from the other's process, and the start fails (a fresh start
    /// then tries another port). Before, the other server's answer counted, and a cluster test
    /// ran against a stranger's data.
    #[test]
    fn a_port_another_server_holds_is_not_taken_for_this_ones() -> Result<()> {
        let first = Redis::start_single()?;
        let dir = std::env::temp_dir().join(format!("imtest-redis-clash-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut second = Redis {
            port: first.port,
            cluster: None,
            child: None,
            dir,
            auth: None,
            tls: false,
        };
        let Err(e) = second.spawn() else {
            bail!("started on a port the first server holds");
        };
        assert!(e.to_string().contains("another process"), "{e}");
        Ok(())
    }
}
