//! The node: one cheap-to-clone handle to everything a node owns (its id, hub, admission,
//! metrics, Redis names and health), shared by routes, sessions and background tasks.

use std::sync::Arc;
use std::time::Duration;

use imclient::NodeId;
use imclient::keys::Keys;
use imclient::link::Link;
use imclient::store::Store;
use imclient::token::TokenVerifier;

use crate::admission::Admission;
use crate::config::{Config, ConfigError};
use crate::health::Health;
use crate::hub::{Hub, HubLimits};
use crate::ip_limit::IpLimits;
use crate::metrics::Metrics;
use crate::nodeset::NodeSet;
use crate::work::HubWork;

/// Settings a session needs, copied out of the config.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Ping interval.
    pub heartbeat_interval: Duration,
    /// Close after this long without hearing from the client.
    pub heartbeat_timeout: Duration,
    /// Largest inbound frame, bytes.
    pub max_inbound_frame_bytes: usize,
    /// Fault injection: delay before a membership load result is applied.
    pub fault_membership_delay: Duration,
}

#[derive(Debug)]
struct Shared {
    id: NodeId,
    /// Unique per process run; tells clients and peers that the node restarted.
    epoch: String,
    keys: Keys,
    /// The Redis connection handshakes share (the used-token marker, the live set when this
    /// node's view is in doubt).
    link: Link,
    hub: Arc<Hub>,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    work: Arc<HubWork>,
    limits: SessionLimits,
    lease: Duration,
    events_maxlen: u64,
    /// Origins allowed to connect besides the node's own; empty: the node's own only, unless
    /// `any_origin`.
    allowed_origins: Vec<String>,
    /// Dev mode with no list: every origin may connect (a local demo serves its page from
    /// another port).
    any_origin: bool,
    /// The configured nodes and which are live.
    nodes: Arc<NodeSet>,
    /// Per source address limits.
    ip_limits: Arc<IpLimits>,
    health: Arc<Health>,
    /// Where `ws://` sessions run: the runtime the node was started on, when it has worker
    /// threads of its own (the binary's). Otherwise sessions stay on the HTTP worker that
    /// accepted them.
    sessions: Option<tokio::runtime::Handle>,
}

/// Handle to the node's shared state.
#[derive(Debug, Clone)]
pub struct Node(Arc<Shared>);

impl Node {
    /// Builds the node for `config`, known to the cluster as `id`, checking tokens with
    /// `verifier`, its handshakes reaching Redis through `store`.
    pub fn new(
        config: &Config,
        id: NodeId,
        verifier: TokenVerifier,
        store: Store,
    ) -> crate::error::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let work = Arc::new(HubWork::default());
        let sharded = imclient::store::cluster_seeds(&config.redis_url).is_some();
        work.outgoing.set_sharded(sharded);
        let epoch = uuid::Uuid::new_v4().simple().to_string();
        let configured = config
            .nodes
            .iter()
            .map(|n| NodeId::new(n.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Nodes(e.to_string()))?;
        if !configured.is_empty() && !configured.contains(&id) {
            return Err(ConfigError::Nodes(format!(
                "it does not list this node ({id}): give this node's address exactly as in the list"
            ))
            .into());
        }
        let hub = Arc::new(Hub::new(
            HubLimits {
                max_per_client: config.max_connections_per_client,
                max_total: config.max_connections,
                queue_capacity: config.queue_capacity,
                recovery: config.recovery(),
            },
            epoch.clone(),
            metrics.clone(),
            work.clone(),
        ));
        let sessions = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        Ok(Self(Arc::new(Shared {
            sessions,
            admission: Arc::new(Admission::new(verifier, id.clone())?),
            id,
            epoch,
            keys: Keys::new(config.key_prefix.clone()).sharded(sharded),
            link: Link::new(store),
            hub,
            metrics,
            work,
            limits: SessionLimits {
                heartbeat_interval: config.heartbeat_interval(),
                heartbeat_timeout: config.heartbeat_timeout(),
                max_inbound_frame_bytes: config.max_inbound_frame_bytes,
                fault_membership_delay: Duration::from_millis(config.fault_membership_delay_ms),
            },
            lease: config.lease(),
            events_maxlen: config.events_maxlen,
            allowed_origins: config
                .allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
            any_origin: config.dev && config.allowed_origins.iter().all(|o| o.trim().is_empty()),
            nodes: Arc::new(NodeSet::new(configured)),
            ip_limits: Arc::new(IpLimits::new(
                config.max_connections_per_ip,
                config.max_connects_per_ip_per_sec,
            )),
            health: Arc::default(),
        })))
    }

    /// This node's id (its address in the node list).
    pub fn id(&self) -> &NodeId {
        &self.0.id
    }

    /// This process run's id.
    pub fn epoch(&self) -> &str {
        &self.0.epoch
    }

    /// Redis names.
    pub fn keys(&self) -> &Keys {
        &self.0.keys
    }

    /// The Redis connection handshakes share.
    pub fn link(&self) -> &Link {
        &self.0.link
    }

    /// The runtime `ws://` sessions run on, if not the accepting HTTP worker's.
    pub fn session_runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.0.sessions.as_ref()
    }

    /// The connection registry.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.0.hub
    }

    /// Token checks.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.0.admission
    }

    /// Counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    /// Background work the hub asks for.
    pub fn work(&self) -> &Arc<HubWork> {
        &self.0.work
    }

    /// Health flags.
    pub fn health(&self) -> &Arc<Health> {
        &self.0.health
    }

    /// Per-session settings.
    pub fn limits(&self) -> &SessionLimits {
        &self.0.limits
    }

    /// Lease lifetime.
    pub fn lease(&self) -> Duration {
        self.0.lease
    }

    /// Event stream cap.
    pub fn events_maxlen(&self) -> u64 {
        self.0.events_maxlen
    }

    /// Per source address limits.
    pub fn ip_limits(&self) -> &Arc<IpLimits> {
        &self.0.ip_limits
    }

    /// The live node set.
    pub fn nodes(&self) -> &Arc<NodeSet> {
        &self.0.nodes
    }

    /// Whether a WebSocket request with this `Origin` header, sent to this `Host`, may
    /// connect: one without an Origin (not a browser), a page of the node's own origin, a page
    /// of a listed origin, or any page in dev mode without a list.
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        self.0.any_origin
            || self.0.allowed_origins.contains(&origin)
            || host.is_some_and(|host| same_origin(&origin, host))
    }

    /// Whether the Redis subscriber is up.
    pub fn redis_up(&self) -> bool {
        self.0.health.redis_up()
    }

    /// Whether the node has taken its lease (and announced itself) since it started.
    pub fn leased(&self) -> bool {
        self.0.health.leased()
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.0.health.shutting_down()
    }
}

/// Whether the page origin `origin` (lowercase `scheme://host[:port]`) is the origin of a
/// request sent with the `Host` header `host`. A port left out is the scheme's default, on
/// both sides: a proxy that passes `Host` without its port (nginx's `$host`) is in front of
/// the default port, or must pass the port (`$http_host`).
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" | "ws" => "80",
        "https" | "wss" => "443",
        _ => return false,
    };
    let split = |authority: &str| -> (String, String) {
        let authority = authority.to_ascii_lowercase();
        // An IPv6 literal is bracketed: its colons are not the port's.
        let port_at = authority
            .rfind(':')
            .filter(|&i| !authority[i..].contains(']'));
        match port_at {
            Some(i) => (authority[..i].to_owned(), authority[i + 1..].to_owned()),
            None => (authority, default_port.to_owned()),
        }
    };
    split(authority) == split(host.trim())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn same_origin_compares_host_and_port_with_the_scheme_default() {
        assert!(same_origin("http://127.0.0.1:6001", "127.0.0.1:6001"));
        assert!(same_origin("https://chat.example.com", "Chat.Example.com"));
        assert!(same_origin(
            "https://chat.example.com",
            "chat.example.com:443"
        ));
        assert!(same_origin("http://[::1]:8080", "[::1]:8080"));
        assert!(!same_origin("http://127.0.0.1:5000", "127.0.0.1:6001"));
        assert!(!same_origin("http://127.0.0.1:8080", "127.0.0.1"));
        assert!(!same_origin("https://evil.example.net", "chat.example.com"));
        assert!(!same_origin("null", "chat.example.com"));
    }

    #[test]
    fn a_node_list_without_this_node_is_refused() {
        let config = Config::try_parse_from(["imserver", "--dev", "--nodes", "ws://a:1,ws://b:2"])
            .expect("parses");
        let verifier = config.validate().expect("valid");
        let id = NodeId::new("ws://c:3").expect("id");
        let store = Store::open("redis://127.0.0.1:1").expect("a URL");
        let err = Node::new(&config, id, verifier, store)
            .expect_err("c is not in the list")
            .to_string();
        assert!(err.contains("does not list this node (ws://c:3)"), "{err}");
    }
}
