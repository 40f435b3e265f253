//! Counters and gauges of one node, rendered in Prometheus text form on /metrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use imclient::contract::{CloseCode, RecoveryRefusal};

/// Why a frame or message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The receiver had no connection on this node.
    Offline,
    /// The connection's queue was full (the connection is then closed as a slow consumer).
    QueueFull,
    /// A command on the node topic could not be parsed.
    Malformed,
}

impl DropReason {
    const ALL: [DropReason; 3] = [
        DropReason::Offline,
        DropReason::QueueFull,
        DropReason::Malformed,
    ];

    fn label(self) -> &'static str {
        match self {
            DropReason::Offline => "offline",
            DropReason::QueueFull => "queue_full",
            DropReason::Malformed => "malformed",
        }
    }
}

/// The node's metrics. All relaxed atomics: exact ordering between counters does not matter.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    /// Client ids with at least one open connection.
    pub clients: AtomicU64,
    /// Connections accepted since start.
    pub connections_opened: AtomicU64,
    /// Commands received from Redis.
    pub commands_in: AtomicU64,
    /// Frames queued to connections.
    pub deliveries: AtomicU64,
    /// Clients reached by channel messages.
    pub chan_deliveries: AtomicU64,
    /// Channel topics this node is subscribed to.
    pub chan_topics: AtomicU64,
    /// Clients whose channels were loaded from Redis.
    pub membership_loads: AtomicU64,
    drops: [AtomicU64; 3],
    closes: [AtomicU64; 8],
    /// Connections refused at the handshake (bad token, limits).
    pub refused: AtomicU64,
    /// Requests actix-http answered itself (400, 408, 431), before any handler: malformed,
    /// too slow or too large. Counted here and summarised in the log, never one line each.
    pub bad_requests: AtomicU64,
    /// Times the Redis subscriber connection was re-established.
    pub redis_reconnects: AtomicU64,
    /// Presence writes that failed and were retried.
    pub presence_errors: AtomicU64,
    /// Dead nodes whose presence this node purged.
    pub nodes_purged: AtomicU64,
    /// Entries of this node's presence hash, as last written.
    pub presence_entries: AtomicU64,
    /// Session tasks running (a connection's task lives on until its close frame is out).
    pub session_tasks: AtomicU64,
    /// Clients closed with 4003 because their home became another node.
    pub clients_moved: AtomicU64,
    /// Client streams handed over to their new home.
    pub handovers_sent: AtomicU64,
    /// Client streams taken over from the node a client left.
    pub handovers_taken: AtomicU64,
    /// Envelopes passed on to a handed-over client's new home.
    pub forwarded: AtomicU64,
    /// Bytes held in recovery buffers.
    pub recovery_bytes: AtomicU64,
    /// Clients inside their recovery window (no connection, buffer kept).
    pub recovery_windows: AtomicU64,
    /// Recovery windows that ran out.
    pub recovery_expired: AtomicU64,
    /// Recovery windows ended early because the node held too many bytes.
    pub recovery_evicted: AtomicU64,
    /// Resumes served.
    pub resumes_recovered: AtomicU64,
    /// Events a webhook receiver acknowledged (answered 2xx).
    pub webhook_posted: AtomicU64,
    /// Webhook posts that failed: an answer other than 2xx, a timeout, no connection.
    pub webhook_failed: AtomicU64,
    /// Webhook posts made again after a failure.
    pub webhook_retried: AtomicU64,
    /// Events moved to the webhook dead-letter stream after the last attempt.
    pub webhook_dead_lettered: AtomicU64,
    /// Events of the stream the webhook group has not acknowledged yet (read or not), as this
    /// node last saw it.
    pub webhook_lag: AtomicU64,
    /// Resumes refused, by reason (in [`RecoveryRefusal::ALL`] order).
    resumes_refused: [AtomicU64; 4],
}

impl Metrics {
    /// Counts `n` undelivered items for `reason`.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].fetch_add(n, Relaxed);
    }

    /// Undelivered items for `reason` so far.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Relaxed)
    }

    /// Counts a connection closed by the node with `code`.
    pub fn closed(&self, code: CloseCode) {
        if let Some(i) = CloseCode::ALL.iter().position(|c| *c == code) {
            self.closes[i].fetch_add(1, Relaxed);
        }
    }

    /// Connections closed with `code` so far.
    pub fn closes(&self, code: CloseCode) -> u64 {
        CloseCode::ALL
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.closes[i].load(Relaxed))
    }

    /// Counts a connect that asked to resume.
    pub fn resumed(&self, recovered: bool, reason: Option<RecoveryRefusal>) {
        if recovered {
            self.resumes_recovered.fetch_add(1, Relaxed);
        } else if let Some(i) =
            reason.and_then(|r| RecoveryRefusal::ALL.iter().position(|x| *x == r))
        {
            self.resumes_refused[i].fetch_add(1, Relaxed);
        }
    }

    /// Renders every metric in Prometheus text exposition format.
    pub fn render(&self, node: &str, redis_up: bool) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {value}"
            );
        };
        let (allocated, resident) = crate::memory::allocator_bytes();
        metric(
            "im_allocator_allocated_bytes",
            "gauge",
            "Bytes in live allocations, as the allocator counts them.",
            allocated,
        );
        metric(
            "im_allocator_resident_bytes",
            "gauge",
            "Bytes the allocator holds resident: live allocations, freed memory kept for reuse, bookkeeping.",
            resident,
        );
        metric(
            "im_connections",
            "gauge",
            "Open WebSocket connections.",
            self.connections.load(Relaxed),
        );
        metric(
            "im_clients",
            "gauge",
            "Clients with at least one open connection.",
            self.clients.load(Relaxed),
        );
        metric(
            "im_connections_opened_total",
            "counter",
            "Connections accepted.",
            self.connections_opened.load(Relaxed),
        );
        metric(
            "im_messages_in_total",
            "counter",
            "Commands received from Redis.",
            self.commands_in.load(Relaxed),
        );
        metric(
            "im_deliveries_total",
            "counter",
            "Frames queued to connections.",
            self.deliveries.load(Relaxed),
        );
        metric(
            "im_chan_deliveries_total",
            "counter",
            "Clients reached by channel messages.",
            self.chan_deliveries.load(Relaxed),
        );
        metric(
            "im_chan_topics",
            "gauge",
            "Channel topics subscribed (channels with local members).",
            self.chan_topics.load(Relaxed),
        );
        metric(
            "im_membership_loads_total",
            "counter",
            "Clients whose channels were loaded from Redis.",
            self.membership_loads.load(Relaxed),
        );
        metric(
            "im_handshakes_refused_total",
            "counter",
            "Connections refused at the handshake.",
            self.refused.load(Relaxed),
        );
        metric(
            "im_http_bad_requests_total",
            "counter",
            "Requests answered 400, 408 or 431 before any handler (malformed, too slow, too large).",
            self.bad_requests.load(Relaxed),
        );
        metric(
            "im_redis_reconnects_total",
            "counter",
            "Redis subscriber reconnections.",
            self.redis_reconnects.load(Relaxed),
        );
        metric(
            "im_presence_errors_total",
            "counter",
            "Presence writes that failed and were retried.",
            self.presence_errors.load(Relaxed),
        );
        metric(
            "im_nodes_purged_total",
            "counter",
            "Dead nodes whose presence was purged here.",
            self.nodes_purged.load(Relaxed),
        );
        metric(
            "im_redis_up",
            "gauge",
            "1 when the Redis subscriber is connected.",
            u64::from(redis_up),
        );
        metric(
            "im_presence_entries",
            "gauge",
            "Entries of this node's presence hash in Redis, as last written.",
            self.presence_entries.load(Relaxed),
        );
        metric(
            "im_session_tasks",
            "gauge",
            "Session tasks running, close frames included.",
            self.session_tasks.load(Relaxed),
        );
        metric(
            "im_clients_moved_total",
            "counter",
            "Clients closed with 4003 because their home became another node.",
            self.clients_moved.load(Relaxed),
        );
        metric(
            "im_handovers_sent_total",
            "counter",
            "Client streams handed over to their new home.",
            self.handovers_sent.load(Relaxed),
        );
        metric(
            "im_handovers_taken_total",
            "counter",
            "Client streams taken over from the node a client left.",
            self.handovers_taken.load(Relaxed),
        );
        metric(
            "im_forwarded_total",
            "counter",
            "Envelopes passed on to a handed-over client's new home.",
            self.forwarded.load(Relaxed),
        );
        metric(
            "im_recovery_bytes",
            "gauge",
            "Bytes held in recovery buffers.",
            self.recovery_bytes.load(Relaxed),
        );
        metric(
            "im_recovery_windows",
            "gauge",
            "Clients inside their recovery window (no connection, buffer kept).",
            self.recovery_windows.load(Relaxed),
        );
        metric(
            "im_recovery_expired_total",
            "counter",
            "Recovery windows that ran out.",
            self.recovery_expired.load(Relaxed),
        );
        metric(
            "im_recovery_evicted_total",
            "counter",
            "Recovery windows ended early because buffers held more than --recovery-max-bytes.",
            self.recovery_evicted.load(Relaxed),
        );
        metric(
            "im_webhook_posted_total",
            "counter",
            "Events a webhook receiver acknowledged with a 2xx answer.",
            self.webhook_posted.load(Relaxed),
        );
        metric(
            "im_webhook_failed_total",
            "counter",
            "Webhook posts that failed: not 2xx, timed out, or no connection.",
            self.webhook_failed.load(Relaxed),
        );
        metric(
            "im_webhook_retried_total",
            "counter",
            "Webhook posts made again after a failure.",
            self.webhook_retried.load(Relaxed),
        );
        metric(
            "im_webhook_dead_lettered_total",
            "counter",
            "Events moved to the webhook dead-letter stream after the last attempt.",
            self.webhook_dead_lettered.load(Relaxed),
        );
        metric(
            "im_webhook_lag",
            "gauge",
            "Events the webhook consumer group has not acknowledged yet, read or not.",
            self.webhook_lag.load(Relaxed),
        );
        metric(
            "im_slow_consumer_closes_total",
            "counter",
            "Connections closed for not reading fast enough.",
            self.closes(CloseCode::SlowConsumer),
        );
        let _ = writeln!(
            out,
            "# HELP im_drops_total Undelivered items by reason.\n# TYPE im_drops_total counter"
        );
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "im_drops_total{{node=\"{node}\",reason=\"{}\"}} {}",
                reason.label(),
                self.drops(reason)
            );
        }
        let _ = writeln!(
            out,
            "# HELP im_resumes_total Connects that asked to resume, by result.\n# TYPE im_resumes_total counter\nim_resumes_total{{node=\"{node}\",result=\"recovered\"}} {}",
            self.resumes_recovered.load(Relaxed)
        );
        for (i, reason) in RecoveryRefusal::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "im_resumes_total{{node=\"{node}\",result=\"{}\"}} {}",
                reason.as_str(),
                self.resumes_refused[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP im_closes_total Connections closed by the node, by close code.\n# TYPE im_closes_total counter"
        );
        for code in CloseCode::ALL {
            let _ = writeln!(
                out,
                "im_closes_total{{node=\"{node}\",code=\"{}\"}} {}",
                code.code(),
                self.closes(code)
            );
        }
        out
    }
}
