//! Smoke test of the load tool: a small run against a real node must connect everyone and
//! lose nothing, in each workload, and print one JSON report.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use imtestkit::{Cluster, NodeOpts};

fn run_imbench(c: &Cluster, args: &[&str]) -> Result<serde_json::Value> {
    let nodes: Vec<&str> = c.nodes.iter().map(|n| n.id.as_str()).collect();
    let pids: Vec<String> = c.nodes.iter().map(|n| n.pid().to_string()).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_imbench"))
        .args([
            "--redis-url",
            &c.redis.url(),
            "--nodes",
            &nodes.join(","),
            "--key-prefix",
            imtestkit::PREFIX,
        ])
        .args(["--node-pid", &pids.join(",")])
        .args(args)
        .env("IM_TOKEN_SECRET", imtestkit::SECRET)
        .output()
        .context("cannot run imbench")?;
    ensure!(
        out.status.success(),
        "imbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout)?;
    Ok(serde_json::from_str(line.trim())?)
}

#[tokio::test]
async fn imbench_reports_every_delivery_in_each_workload() -> Result<()> {
    let c = Cluster::start(2, NodeOpts::default()).await?;
    for workload in ["private", "channel", "small-channels"] {
        let report = run_imbench(
            &c,
            &[
                "--workload",
                workload,
                "--clients",
                "60",
                "--rate",
                "200",
                "--duration",
                "0.5",
            ],
        )?;
        assert_eq!(report["clients"], 60, "{workload}: {report}");
        assert!(
            report["sent"].as_u64().unwrap_or(0) > 0,
            "{workload}: {report}"
        );
        assert_eq!(report["loss"], 0, "{workload}: {report}");
        assert_eq!(report["extra"], 0, "{workload}: {report}");
        assert_eq!(
            report["deliveries_expected"], report["deliveries_received"],
            "{workload}: {report}"
        );
        assert!(
            report["latency_us"]["p50"].as_u64().unwrap_or(0) > 0,
            "{workload}: {report}"
        );
        assert!(
            report["node_rss_idle_kib"].as_f64().unwrap_or(0.0) > 0.0,
            "{workload}: {report}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn imbench_churn_reconnects_and_sees_every_connection_in_order() -> Result<()> {
    let c = Cluster::start(2, NodeOpts::default()).await?;
    let report = run_imbench(
        &c,
        &[
            "--workload",
            "churn",
            "--clients",
            "40",
            "--rate",
            "100",
            "--duration",
            "3",
            "--stay-secs",
            "0.2,1",
            "--away-secs",
            "0.05,0.3",
            "--chans",
            "3",
            "--chan-percent",
            "30",
        ],
    )?;
    let n = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(n("connect_errors"), 0, "{report}");
    // Each client comes back a few times in 3 s.
    assert!(n("connects") > 80, "{report}");
    assert_eq!(n("disconnects"), n("connects"), "{report}");
    assert!(n("clean_closes") > 0 && n("tcp_resets") > 0, "{report}");
    assert_eq!(n("server_closes"), 0, "{report}");
    assert!(n("sent_private") > 0 && n("sent_chan") > 0, "{report}");
    assert_eq!(n("send_errors"), 0, "{report}");
    assert!(n("deliveries_received") > 0, "{report}");
    for k in [
        "duplicates",
        "out_of_order",
        "gaps",
        "no_seq",
        "clients_unfinished",
    ] {
        assert_eq!(n(k), 0, "{k}: {report}");
    }
    Ok(())
}

#[tokio::test]
async fn imbench_api_send_delivers_every_message_both_ways() -> Result<()> {
    const KEY: &str = "smoke-api-key-0123456789";
    let opts = NodeOpts::default()
        .arg("--api-listen", "127.0.0.1:0")
        .arg("--api-key", KEY)
        .arg("--api-rate", 0);
    let c = Cluster::start(1, opts).await?;
    let api = c.nodes[0].api.context("the node printed no API address")?;
    for via in ["imclient", "http"] {
        let report = run_imbench(
            &c,
            &[
                "--workload",
                "api-send",
                "--send-via",
                via,
                "--api-addr",
                &api.to_string(),
                "--api-key",
                KEY,
                "--clients",
                "20",
                "--messages",
                "300",
                "--concurrency",
                "4",
            ],
        )?;
        let n = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
        assert_eq!(n("clients"), 20, "{via}: {report}");
        assert_eq!(n("calls"), 300, "{via}: {report}");
        assert_eq!(n("send_errors"), 0, "{via}: {report}");
        assert_eq!(n("deliveries_received"), 300, "{via}: {report}");
        assert_eq!(n("loss"), 0, "{via}: {report}");
        assert!(
            report["call_latency_us"]["p99"].as_u64().unwrap_or(0) > 0,
            "{via}: {report}"
        );
        assert!(
            report["node_cpu_us_per_call"].as_f64().is_some(),
            "{via}: {report}"
        );
    }
    Ok(())
}
