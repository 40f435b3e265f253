//! Counters, gauges and the delivery latency histogram of one node, rendered in Prometheus
//! text form on /metrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use imclient::contract::{CloseCode, RecoveryRefusal};

mod latency;

pub use latency::DeliveryKind;
use latency::Latency;

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

/// The refusal codes of the WebSocket handshake (the `error` of the JSON a refused client
/// gets), each counted under its own `reason` label. A fixed list, so that the series are few
/// and all present from the start; a code not listed counts as `other`.
pub const REFUSAL_REASONS: [&str; 19] = [
    "not_found",
    "not_websocket",
    "unsupported_version",
    "shutting_down",
    "origin_not_allowed",
    "ip_rate_limit",
    "ip_connection_limit",
    "token_missing",
    "token_malformed",
    "token_bad_signature",
    "token_expired",
    "token_wrong_node",
    "token_replayed",
    "redis_unavailable",
    "token_unknown_key",
    "client_moved",
    "client_connection_limit",
    "node_full",
    "other",
];

/// What the node is, as opposed to what it counts: rendered beside the counters.
#[derive(Debug, Clone, Copy)]
pub struct NodeState {
    /// Whether the Redis subscriber is connected.
    pub redis_up: bool,
    /// Whether the node holds its lease now (renewed within the lease's lifetime).
    pub leased: bool,
    /// The connection cap in force (`--max-connections`, lowered to the open-file limit).
    pub max_connections: u64,
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
    /// Connections refused at the handshake, by reason (in [`REFUSAL_REASONS`] order).
    refused: [AtomicU64; REFUSAL_REASONS.len()],
    /// Requests actix-http answered itself (400, 408, 431), before any handler: malformed,
    /// too slow or too large. Counted here and summarised in the log, never one line each.
    pub bad_requests: AtomicU64,
    /// Times the Redis subscriber connection was re-established.
    pub redis_reconnects: AtomicU64,
    /// Presence writes that failed and were retried.
    pub presence_errors: AtomicU64,
    /// Dead nodes whose presence this node purged.
    pub nodes_purged: AtomicU64,
    /// Renewals that found this node's lease had lapsed: backends and peers may have counted
    /// the node dead meanwhile.
    pub lease_lapses: AtomicU64,
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
    /// From an envelope read off Redis to its frames queued, by [`DeliveryKind`].
    delivery_latency: [Latency; 3],
}

/// Writes one metric of one series: its help, its type and its value for `node`.
fn single(out: &mut String, node: &str, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {value}"
    );
}

/// Writes a counter family: its help and type, then one series per `(label value, count)`.
fn family<L: std::fmt::Display>(
    out: &mut String,
    node: &str,
    name: &str,
    help: &str,
    label: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, count) in series {
        let _ = writeln!(out, "{name}{{node=\"{node}\",{label}=\"{value}\"}} {count}");
    }
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

    /// Counts a handshake refused with `code` (one of [`REFUSAL_REASONS`], else `other`).
    pub fn refused(&self, code: &str) {
        let i = REFUSAL_REASONS
            .iter()
            .position(|r| *r == code)
            .unwrap_or(REFUSAL_REASONS.len() - 1);
        self.refused[i].fetch_add(1, Relaxed);
    }

    /// Handshakes refused with `code` so far.
    pub fn refusals(&self, code: &str) -> u64 {
        REFUSAL_REASONS
            .iter()
            .position(|r| *r == code)
            .map_or(0, |i| self.refused[i].load(Relaxed))
    }

    /// Records that an envelope of `kind` read off Redis `took` this long to be queued to
    /// every local receiver.
    pub fn delivered(&self, kind: DeliveryKind, took: Duration) {
        self.delivery_latency[kind as usize].observe(took);
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

    /// Renders every metric in Prometheus text exposition format, with the node's `state`.
    pub fn render_with(&self, node: &str, state: NodeState) -> String {
        let mut out = self.render(node, state.redis_up);
        single(
            &mut out,
            node,
            "im_max_connections",
            "gauge",
            "The connection cap in force: --max-connections, or less when the open-file limit is lower.",
            state.max_connections,
        );
        single(
            &mut out,
            node,
            "im_leased",
            "gauge",
            "1 while the node holds its lease (renewed within --lease-ms): backends route clients to it.",
            u64::from(state.leased),
        );
        out
    }

    /// Renders every metric in Prometheus text exposition format.
    pub fn render(&self, node: &str, redis_up: bool) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            single(&mut out, node, name, kind, help, value)
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
            "im_lease_lapses_total",
            "counter",
            "Renewals that found this node's lease had lapsed (backends may have counted it dead meanwhile).",
            self.lease_lapses.load(Relaxed),
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
        family(
            &mut out,
            node,
            "im_drops_total",
            "Undelivered items by reason.",
            "reason",
            DropReason::ALL.map(|r| (r.label(), self.drops(r))),
        );
        family(
            &mut out,
            node,
            "im_resumes_total",
            "Connects that asked to resume, by result.",
            "result",
            std::iter::once(("recovered", self.resumes_recovered.load(Relaxed))).chain(
                RecoveryRefusal::ALL
                    .iter()
                    .zip(&self.resumes_refused)
                    .map(|(r, n)| (r.as_str(), n.load(Relaxed))),
            ),
        );
        family(
            &mut out,
            node,
            "im_handshakes_refused_total",
            "Connections refused at the handshake, by the refusal's code.",
            "reason",
            REFUSAL_REASONS
                .iter()
                .zip(&self.refused)
                .map(|(r, n)| (*r, n.load(Relaxed))),
        );
        let _ = writeln!(
            out,
            "# HELP im_delivery_latency_seconds From an envelope read off Redis to its frames queued to every local receiver (not yet written to their sockets).\n# TYPE im_delivery_latency_seconds histogram"
        );
        for kind in DeliveryKind::ALL {
            self.delivery_latency[kind as usize].render(
                &mut out,
                "im_delivery_latency_seconds",
                &format!("node=\"{node}\",kind=\"{}\"", kind.label()),
            );
        }
        family(
            &mut out,
            node,
            "im_closes_total",
            "Connections closed by the node, by close code.",
            "code",
            CloseCode::ALL.map(|c| (c.code(), self.closes(c))),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start} in {text}"))
    }

    #[test]
    fn latencies_land_in_the_first_bucket_whose_bound_they_do_not_exceed_and_render_cumulated() {
        let m = Metrics::default();
        for us in [10, 25, 26, 900, 2_000_000] {
            m.delivered(DeliveryKind::Channel, Duration::from_micros(us));
        }
        let text = m.render("n", true);
        let series = |le: &str| {
            line(
                &text,
                &format!(
                    "im_delivery_latency_seconds_bucket{{node=\"n\",kind=\"channel\",le=\"{le}\"}}"
                ),
            )
            .rsplit(' ')
            .next()
            .map(str::to_owned)
        };
        assert_eq!(series("0.000025").as_deref(), Some("2"));
        assert_eq!(series("0.00005").as_deref(), Some("3"));
        assert_eq!(series("0.001").as_deref(), Some("4"));
        assert_eq!(series("1").as_deref(), Some("4"));
        assert_eq!(series("+Inf").as_deref(), Some("5"));
        assert_eq!(
            line(
                &text,
                "im_delivery_latency_seconds_count{node=\"n\",kind=\"channel\"}"
            ),
            "im_delivery_latency_seconds_count{node=\"n\",kind=\"channel\"} 5"
        );
        assert_eq!(
            line(
                &text,
                "im_delivery_latency_seconds_sum{node=\"n\",kind=\"channel\"}"
            ),
            "im_delivery_latency_seconds_sum{node=\"n\",kind=\"channel\"} 2.000961"
        );
        assert!(text.contains("im_delivery_latency_seconds_count{node=\"n\",kind=\"direct\"} 0"));
    }

    #[test]
    fn refusals_are_counted_by_their_code_and_unknown_codes_as_other() {
        let m = Metrics::default();
        m.refused("token_expired");
        m.refused("token_expired");
        m.refused("something_new");
        let text = m.render("n", true);
        assert!(
            text.contains("im_handshakes_refused_total{node=\"n\",reason=\"token_expired\"} 2")
        );
        assert!(text.contains("im_handshakes_refused_total{node=\"n\",reason=\"other\"} 1"));
        assert!(text.contains("im_handshakes_refused_total{node=\"n\",reason=\"node_full\"} 0"));
        assert_eq!(m.refusals("token_expired"), 2);
    }
}
