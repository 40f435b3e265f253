//! The HTTP API's counters, by route and status, appended to the node's `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Requests and batch items answered, by route (a method name, or `unknown`) and status.
/// Labels come from the fixed method list, so their number stays bounded.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    /// A std Mutex: one map update per request, never held across an await.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    batch_items: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl ApiMetrics {
    /// Counts a request to `route` answered with `status`.
    pub fn request(&self, route: &'static str, status: u16) {
        bump(&self.requests, route, status);
    }

    /// Counts a batch item calling `method` answered with `status`.
    pub fn batch_item(&self, method: &'static str, status: u16) {
        bump(&self.batch_items, method, status);
    }

    /// The counters in Prometheus text form, labelled with `node`.
    pub fn render(&self, node: &str) -> String {
        let mut out = String::new();
        for (name, help, counts) in [
            (
                "im_api_requests_total",
                "HTTP API requests, by route and status.",
                &self.requests,
            ),
            (
                "im_api_batch_items_total",
                "Calls inside HTTP API batches, by method and status.",
                &self.batch_items,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let counts = counts.lock().unwrap_or_else(|p| p.into_inner());
            for ((route, status), n) in counts.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{node}\",route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out
    }
}

fn bump(counts: &Mutex<BTreeMap<(&'static str, u16), u64>>, route: &'static str, status: u16) {
    *counts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((route, status))
        .or_default() += 1;
}
