//! Webhooks and the events pull route, end to end: real nodes posting to a real receiver
//! (tests/webhook_receiver.py) that verifies every request with the Standard Webhooks reference
//! library, never with our own code; receivers and nodes killed mid-run; real Redis.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use imtestkit::{Cluster, NodeOpts, PREFIX, Redis, SECRET, WAIT, free_port, wait_for};
use serde_json::{Value, json};

/// The rotation's old and new secrets; receivers know only the new one.
const OLD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_SECRET: &str = "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY";
const API_KEY: &str = "webhook-test-api-key-0123456789";
/// Deadline for deliveries that wait for a claim or a retry after a receiver came back.
const SLOW_WAIT: Duration = Duration::from_secs(60);

/// Fails with the command that installs the reference library when it is missing.
fn require_reference_library() -> Result<()> {
    let ok = Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success());
    ensure!(
        ok,
        "the standardwebhooks Python package is missing: run `pip install standardwebhooks`, or \
         scripts/test.sh, which installs it (ensure_python_package standardwebhooks in \
         scripts/lib.sh)"
    );
    Ok(())
}

/// A running tests/webhook_receiver.py.
struct Receiver {
    port: u16,
    out: PathBuf,
    child: Option<Child>,
}

impl Receiver {
    /// Starts a receiver writing to `out`, on `port` (0: a free one), with extra flags.
    fn start(out: &Path, port: u16, extra: &[&str]) -> Result<Self> {
        require_reference_library()?;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhook_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--out")
            .arg(out)
            .args(["--port", &port.to_string(), "--secret", NEW_SECRET])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start python3 for the webhook receiver")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let ready: Value = serde_json::from_str(&line)
            .with_context(|| format!("the receiver did not start: {line:?}"))?;
        let port = ready["port"].as_u64().context("no port")? as u16;
        Ok(Self {
            port,
            out: out.to_owned(),
            child: Some(child),
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Every line written so far: verified events, or `error` / `redirected` lines.
    fn lines(&self) -> Vec<Value> {
        read_lines(&self.out)
    }

    /// Waits for the receiver to exit by itself (it was told to die).
    async fn wait_exit(&mut self) -> Result<()> {
        let child = self.child.as_mut().context("not running")?;
        wait_for("the receiver to exit", WAIT, || {
            let exited = child.try_wait().ok().flatten().is_some();
            async move { exited.then_some(()) }
        })
        .await?;
        self.child = None;
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A file for a receiver's lines, fresh for this test, removed after it.
struct OutFile(PathBuf);

impl std::ops::Deref for OutFile {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn out_file(name: &str) -> OutFile {
    let path = std::env::temp_dir().join(format!(
        "imtest-webhooks-{name}-{}-{}.jsonl",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_file(&path);
    OutFile(path)
}

/// Node flags posting to `url`, signing with both secrets of a rotation, retrying fast.
fn webhook_opts(url: &str) -> NodeOpts {
    NodeOpts::default()
        .arg("--webhook-url", url)
        .arg("--webhook-secret", format!("{OLD_SECRET},{NEW_SECRET}"))
        .arg("--webhook-retry-ms", 100)
        .arg("--webhook-timeout-ms", 1000)
}

/// Connects each client and closes it again: an online and an offline event apiece (each
/// written before the next step, as a node coalesces a connect and close it sees together).
async fn come_and_go(cluster: &Cluster, clients: &[String]) -> Result<()> {
    for client in clients {
        let mut ws = cluster.connect(client).await?;
        wait_online(cluster, client, true).await?;
        ws.stream.close(None).await?;
        ws.closed().await?;
        wait_online(cluster, client, false).await?;
    }
    Ok(())
}

async fn wait_online(cluster: &Cluster, client: &str, online: bool) -> Result<()> {
    wait_for(&format!("{client} online: {online}"), WAIT, || async {
        (cluster.im.has_online(client).await.ok()? == online).then_some(())
    })
    .await
}

/// The ids of every event in the stream now.
async fn stream_ids(redis: &Redis) -> Result<BTreeSet<String>> {
    let mut conn = redis.conn().await?;
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(imclient::keys::Keys::new(PREFIX).events())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    Ok(entries.into_iter().map(|(id, _)| id).collect())
}

/// Event ids the receiver verified, with how often each came.
fn received(lines: &[Value]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for line in lines {
        if let Some(id) = line["id"].as_str() {
            *seen.entry(id.to_owned()).or_default() += 1;
        }
    }
    seen
}

/// Waits until every event of the stream (at least `at_least` of them) reached the receiver;
/// fails on a request that did not verify. Returns (events, deliveries, duplicates).
async fn wait_all_delivered(
    redis: &Redis,
    out: &Path,
    at_least: usize,
    deadline: Duration,
) -> Result<(usize, usize, usize)> {
    wait_for(
        "every event of the stream verified by the receiver",
        deadline,
        || async {
            let lines = read_lines(out);
            if let Some(bad) = lines.iter().find(|l| l.get("error").is_some()) {
                panic!("a delivery did not verify: {bad}");
            }
            let ids = stream_ids(redis).await.ok()?;
            let seen = received(&lines);
            let deliveries: usize = seen.values().sum();
            (ids.len() >= at_least && ids.iter().all(|id| seen.contains_key(id)))
                .then(|| (ids.len(), deliveries, deliveries - seen.len()))
        },
    )
    .await
}

fn clients(base: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{base}{i}")).collect()
}

#[tokio::test]
async fn online_and_offline_events_arrive_signed_with_every_secret_of_a_rotation() -> Result<()> {
    let out = out_file("signed");
    // The receiver knows only the new secret: the old one's signature is there too, unused.
    let receiver = Receiver::start(&out, 0, &[])?;
    let cluster = Cluster::start(1, webhook_opts(&receiver.url())).await?;
    come_and_go(&cluster, &["alice".to_owned()]).await?;
    wait_all_delivered(&cluster.redis, &out, 2, WAIT).await?;
    let lines = receiver.lines();
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l["kind"].as_str()).collect();
    assert_eq!(kinds, ["online", "offline"], "{lines:?}");
    let online = &lines[0];
    assert_eq!(online["type"], "presence");
    assert_eq!(online["client"], "alice");
    assert_eq!(online["node"], cluster.nodes[0].id.as_str());
    assert_eq!(online["meta"], json!({ "name": "alice" }));
    assert_eq!(online["conns"], 1);
    assert!(
        online["at"]
            .as_u64()
            .is_some_and(|at| at > 1_700_000_000_000)
    );
    assert!(
        online["webhook_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("msg_"))
    );
    assert!(cluster.nodes[0].metric("im_webhook_posted_total").await? >= 2);
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_dies_mid_run_and_comes_back_loses_nothing() -> Result<()> {
    let out = out_file("dies");
    // Dies on its second request, after recording it but before answering: that batch must
    // come again.
    let mut receiver = Receiver::start(&out, 0, &["--die-after", "2"])?;
    let port = receiver.port;
    let cluster =
        Cluster::start(1, webhook_opts(&receiver.url()).arg("--webhook-batch", 2)).await?;
    come_and_go(&cluster, &clients("dies", 5)).await?;
    receiver.wait_exit().await?;
    let node = &cluster.nodes[0];
    node.wait_metric("im_webhook_failed_total", 2).await?;
    let _back = Receiver::start(&out, port, &[])?;
    let (events, deliveries, duplicates) =
        wait_all_delivered(&cluster.redis, &out, 10, SLOW_WAIT).await?;
    // The batch the receiver died on came twice: at least once, and the receiver sees it.
    assert!(
        duplicates >= 1,
        "{deliveries} deliveries of {events} events"
    );
    let retried = node.metric("im_webhook_retried_total").await?;
    assert!(retried >= 1);
    eprintln!(
        "webhook drill, receiver killed: events {events}, posted {}, retried {retried}, \
         deliveries {deliveries}, duplicates {duplicates}, lost 0",
        node.metric("im_webhook_posted_total").await?
    );
    Ok(())
}

#[tokio::test]
async fn a_node_killed_with_unacknowledged_deliveries_has_them_claimed_by_another() -> Result<()> {
    let out = out_file("claimed");
    // Nothing listens yet: every post fails and stays pending in the group.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let opts = webhook_opts(&url)
        .arg("--webhook-claim-idle-ms", 2000)
        .arg("--webhook-max-attempts", 100);
    let mut cluster = Cluster::start(2, opts).await?;
    let on_0: Vec<String> = (0..3)
        .map(|i| cluster.client_on(0, &format!("claim{i}-")))
        .collect();
    let on_1: Vec<String> = (0..3)
        .map(|i| cluster.client_on(1, &format!("claim{i}-")))
        .collect();
    come_and_go(&cluster, &on_0).await?;
    come_and_go(&cluster, &on_1).await?;
    // A node holding deliveries it has not acknowledged.
    let key = imclient::keys::Keys::new(PREFIX).events();
    let victim = wait_for(
        "a node holding pending webhook deliveries",
        WAIT,
        || async {
            let mut conn = cluster.redis.conn().await.ok()?;
            let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
                .arg(&key)
                .arg("webhooks")
                .query_async(&mut conn)
                .await
                .ok()?;
            let redis::streams::StreamPendingReply::Data(data) = pending else {
                return None;
            };
            cluster.nodes.iter().position(|n| {
                data.consumers
                    .iter()
                    .any(|c| c.name == n.id && c.pending > 0)
            })
        },
    )
    .await?;
    let victim_id = cluster.nodes[victim].id.clone();
    cluster.nodes[victim].signal("KILL");
    cluster.nodes[victim].wait_exit(WAIT).await.ok();
    let _receiver = Receiver::start(&out, port, &[])?;
    let (events, deliveries, duplicates) =
        wait_all_delivered(&cluster.redis, &out, 12, SLOW_WAIT).await?;
    let survivor = &cluster.nodes[1 - victim];
    let mut conn = cluster.redis.conn().await?;
    let left: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&key)
        .arg("webhooks")
        .arg("-")
        .arg("+")
        .arg(1000)
        .arg(&victim_id)
        .query_async(&mut conn)
        .await?;
    assert!(left.is_empty(), "the dead node still holds {left:?}");
    eprintln!(
        "webhook drill, node killed: events {events}, posted by the survivor {}, retried {}, \
         deliveries {deliveries}, duplicates {duplicates}, lost 0",
        survivor.metric("im_webhook_posted_total").await?,
        survivor.metric("im_webhook_retried_total").await?
    );
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_always_fails_gets_the_batch_dead_lettered_and_replayable() -> Result<()> {
    let out = out_file("failing");
    let failing = Receiver::start(&out, 0, &["--status", "500"])?;
    let opts = webhook_opts(&failing.url()).arg("--webhook-max-attempts", 2);
    let cluster = Cluster::start(1, opts).await?;
    come_and_go(&cluster, &clients("dead", 2)).await?;
    let node = &cluster.nodes[0];
    node.wait_metric("im_webhook_dead_lettered_total", 4)
        .await?;
    let ids = stream_ids(&cluster.redis).await?;
    // Each event is in a dead-lettered body, as it was signed.
    let mut conn = cluster.redis.conn().await?;
    let dead: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(imclient::keys::Keys::new(PREFIX).webhook_dead_letters())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    let mut lettered = BTreeSet::new();
    for (_, fields) in &dead {
        let body: Value = serde_json::from_str(&fields["body"])?;
        for event in body["events"].as_array().context("no events")? {
            lettered.insert(event["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(lettered, ids);
    assert!(node.metric("im_webhook_failed_total").await? >= 2);
    assert_eq!(node.metric("im_webhook_posted_total").await?, 0);
    drop(failing);

    // The operator's replay, to a receiver that works now.
    let replayed_out = out_file("replayed");
    let working = Receiver::start(&replayed_out, 0, &[])?;
    let replay = Command::new(imtestkit::imserver_bin()?)
        .arg("webhook-replay")
        .args(["--redis-url", &cluster.redis.url(), "--key-prefix", PREFIX])
        .args(["--webhook-url", &working.url()])
        .args(["--webhook-secret", NEW_SECRET])
        .env("IM_TOKEN_SECRET", SECRET)
        .output()?;
    let line: Value = serde_json::from_slice(&replay.stdout)
        .with_context(|| String::from_utf8_lossy(&replay.stderr).into_owned())?;
    ensure!(replay.status.success(), "replay failed: {line}");
    assert_eq!(line["replayed"].as_u64(), Some(dead.len() as u64));
    assert_eq!(line["left"], 0);
    let seen: BTreeSet<String> = received(&working.lines()).into_keys().collect();
    assert_eq!(seen, ids);
    Ok(())
}

#[tokio::test]
async fn a_redirect_is_never_followed() -> Result<()> {
    let elsewhere_out = out_file("elsewhere");
    let elsewhere = Receiver::start(&elsewhere_out, 0, &[])?;
    let out = out_file("redirecting");
    let redirecting = Receiver::start(&out, 0, &["--redirect-to", &elsewhere.url()])?;
    let opts = webhook_opts(&redirecting.url()).arg("--webhook-max-attempts", 2);
    let cluster = Cluster::start(1, opts).await?;
    come_and_go(&cluster, &["redirected".to_owned()]).await?;
    let node = &cluster.nodes[0];
    node.wait_metric("im_webhook_failed_total", 2).await?;
    ensure!(
        redirecting
            .lines()
            .iter()
            .any(|l| l.get("redirected").is_some())
    );
    // Each failure was counted after the 307 came back: a followed redirect would have reached
    // the other receiver before it.
    assert!(elsewhere.lines().is_empty(), "{:?}", elsewhere.lines());
    assert_eq!(node.metric("im_webhook_posted_total").await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_never_answers_in_time_is_retried_then_dead_lettered() -> Result<()> {
    let out = out_file("slow");
    let slow = Receiver::start(&out, 0, &["--delay-ms", "5000"])?;
    let opts = NodeOpts::default()
        .arg("--webhook-url", slow.url())
        .arg("--webhook-secret", NEW_SECRET)
        .arg("--webhook-retry-ms", 100)
        .arg("--webhook-timeout-ms", 300)
        .arg("--webhook-max-attempts", 2);
    let cluster = Cluster::start(1, opts).await?;
    come_and_go(&cluster, &["slow".to_owned()]).await?;
    let node = &cluster.nodes[0];
    // Both events, in one or two batches: each batch timed out twice.
    node.wait_metric("im_webhook_dead_lettered_total", 2)
        .await?;
    assert!(node.metric("im_webhook_failed_total").await? >= 2);
    assert!(node.metric("im_webhook_retried_total").await? >= 1);
    assert_eq!(node.metric("im_webhook_posted_total").await?, 0);
    // The receiver did get them (and verified them): it was only too slow to say so.
    assert!(!received(&slow.lines()).is_empty());
    Ok(())
}

#[tokio::test]
async fn a_node_waiting_to_retry_keeps_its_batch_from_the_other_nodes() -> Result<()> {
    let out = out_file("patient");
    let failing = Receiver::start(&out, 0, &["--status", "503"])?;
    // Every wait between attempts (750 ms or more) is longer than the claim idle time.
    let opts = NodeOpts::default()
        .arg("--webhook-url", failing.url())
        .arg("--webhook-secret", NEW_SECRET)
        .arg("--webhook-timeout-ms", 300)
        .arg("--webhook-claim-idle-ms", 600)
        .arg("--webhook-retry-ms", 1500)
        .arg("--webhook-max-attempts", 3);
    let cluster = Cluster::start(2, opts).await?;
    // One event: one batch, read by one of the nodes.
    let _ws = cluster.connect("patient").await?;
    wait_online(&cluster, "patient", true).await?;
    let total = || async {
        let mut sum = 0;
        for node in &cluster.nodes {
            sum += node.metric("im_webhook_dead_lettered_total").await.ok()?;
        }
        (sum >= 1).then_some(())
    };
    wait_for("the batch dead-lettered", SLOW_WAIT, total).await?;
    let mut failed = Vec::new();
    for node in &cluster.nodes {
        failed.push(node.metric("im_webhook_failed_total").await?);
    }
    failed.sort_unstable();
    // All three attempts by the node that read it; none by the other.
    assert_eq!(failed, [0, 3]);
    Ok(())
}

/// `POST /api/v1/events` with `params`; the status and the JSON answer.
async fn pull(api: SocketAddr, params: Value) -> Result<(u16, Value)> {
    let auth = format!("Bearer {API_KEY}");
    let answer = imtestkit::http_request_within(
        api,
        "POST",
        "/api/v1/events",
        &[("Authorization", &auth)],
        &params.to_string(),
        Duration::from_secs(40),
    )
    .await?;
    Ok((
        answer.status,
        serde_json::from_str(&answer.body).unwrap_or(Value::Null),
    ))
}

#[tokio::test]
async fn the_pull_route_answers_events_after_an_id_and_long_polls() -> Result<()> {
    let opts = NodeOpts::default()
        .arg("--api-listen", "127.0.0.1:0")
        .arg("--api-key", API_KEY);
    let cluster = Cluster::start(1, opts).await?;
    let api = cluster.nodes[0].api.context("no API address")?;

    // From now on: nothing yet, and where "now" is.
    let (status, now) = pull(api, json!({ "after": null, "wait_ms": 0 })).await?;
    assert_eq!(status, 200, "{now}");
    assert_eq!(now["events"], json!([]));
    let start = now["last_id"].as_str().context("no last_id")?.to_owned();

    // A long poll waits for the first event.
    let poll = tokio::spawn(async move {
        let asked = Instant::now();
        pull(api, json!({ "after": start, "wait_ms": 20000 }))
            .await
            .map(|answer| (answer, asked.elapsed()))
    });
    let mut ws = cluster.connect("puller").await?;
    let ((status, page), took) = poll.await??;
    assert_eq!(status, 200, "{page}");
    assert!(
        took < Duration::from_secs(15),
        "the long poll took {took:?}"
    );
    let event = &page["events"][0];
    assert_eq!(
        (event["kind"].as_str(), event["client"].as_str()),
        (Some("online"), Some("puller"))
    );
    assert_eq!(event["meta"], json!({ "name": "puller" }));
    let online_id = event["id"].as_str().context("no id")?.to_owned();
    assert_eq!(page["last_id"], online_id.as_str());

    // After a given id: what came after it, here the offline event; and nothing after that.
    ws.stream.close(None).await?;
    ws.closed().await?;
    let (_, after) = pull(api, json!({ "after": online_id, "wait_ms": 10000 })).await?;
    let offline = &after["events"][0];
    assert_eq!(offline["kind"], "offline");
    let last = after["last_id"].as_str().context("no last_id")?.to_owned();
    let (_, empty) = pull(api, json!({ "after": last, "wait_ms": 100, "limit": 5 })).await?;
    assert_eq!(empty, json!({ "events": [], "last_id": last }));

    // From the beginning, limited.
    let (_, first) = pull(api, json!({ "after": "0-0", "limit": 1 })).await?;
    assert_eq!(first["events"][0]["id"], online_id.as_str());
    let (status, refused) = pull(api, json!({ "after": "$" })).await?;
    assert_eq!((status, refused["field"].as_str()), (400, Some("after")));
    Ok(())
}

#[test]
fn the_receiver_refuses_what_the_reference_library_cannot_verify() -> Result<()> {
    // Guards the guard: a receiver that accepted everything would make every test above pass.
    require_reference_library()?;
    let script = r#"
import sys
from standardwebhooks import Webhook, WebhookVerificationError
hook = Webhook(sys.argv[1])
try:
    hook.verify(b'{"type":"presence","events":[]}', {"webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"})
except WebhookVerificationError:
    sys.exit(0)
sys.exit(1)
"#;
    let status = Command::new("python3")
        .args(["-c", script, NEW_SECRET])
        .status()?;
    if !status.success() {
        bail!("the reference library accepted a forged request");
    }
    Ok(())
}
