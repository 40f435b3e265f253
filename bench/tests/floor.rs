//! imfloor and imbench's floor mode end to end, at small scale: in each pattern every message
//! reaches every receiver, and the report carries the figures scripts/bench-floor.sh reads.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result, ensure};

/// A running imfloor, killed when dropped.
struct Floor {
    child: Child,
    addr: String,
}

impl Floor {
    /// Starts imfloor on a free port and waits for its ready line.
    fn start() -> Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_imfloor"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start imfloor")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        // Returns at the ready line, or at end of file if imfloor exits without one.
        BufReader::new(stdout).read_line(&mut line)?;
        let ready: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("not a ready line: {line:?}"))?;
        let addr = ready["listen"]
            .as_str()
            .context("no listen address in the ready line")?
            .to_owned();
        Ok(Self { child, addr })
    }

    fn run_imbench(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_imbench"))
            .args(["--floor-addr", &self.addr])
            .args(["--node-pid", &self.child.id().to_string()])
            .args(args)
            .output()
            .context("cannot run imbench")?;
        ensure!(
            out.status.success(),
            "imbench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_str(String::from_utf8(out.stdout)?.trim())?)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_floor_delivers_every_message_in_each_pattern() -> Result<()> {
    let floor = Floor::start()?;
    // One floor for all three: the clients of each run take over the slots of the run before.
    for (workload, receivers_per_message) in
        [("private", 1), ("channel", 50), ("small-channels", 10)]
    {
        let report = floor.run_imbench(&[
            "--workload",
            workload,
            "--clients",
            "50",
            "--chan-size",
            "10",
            "--rate",
            "200",
            "--duration",
            "1",
        ])?;
        let n = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
        assert_eq!(report["server"], "floor", "{workload}: {report}");
        assert_eq!(n("clients"), 50, "{workload}: {report}");
        assert_eq!(n("connect_errors"), 0, "{workload}: {report}");
        assert_eq!(n("send_errors"), 0, "{workload}: {report}");
        assert!(n("sent") >= 150, "{workload}: {report}");
        assert_eq!(
            n("deliveries_expected"),
            n("sent") * receivers_per_message,
            "{workload}: {report}"
        );
        assert_eq!(
            n("deliveries_received"),
            n("deliveries_expected"),
            "{workload}: {report}"
        );
        assert_eq!(n("extra"), 0, "{workload}: {report}");
        assert!(
            report["latency_us"]["p50"].as_u64().unwrap_or(0) > 0,
            "{workload}: {report}"
        );
        assert!(
            report["latency_us"]["p99"].as_u64().unwrap_or(0) > 0,
            "{workload}: {report}"
        );
        for figure in [
            "node_cpu_us_per_delivery",
            "node_rss_conn_bytes",
            "node_rss_idle_kib",
        ] {
            assert!(
                report[figure].as_f64().is_some(),
                "{workload}: no {figure}: {report}"
            );
        }
        assert!(
            report["node_rss_before_kib"][0].as_u64().unwrap_or(0) > 0,
            "{workload}: {report}"
        );
    }
    Ok(())
}
