//! Plain HTTP routes: `/healthz`, `/metrics`, and `/ws` requests that are not upgrades.
//! WebSocket upgrades are served by [`handshake`], which takes the socket.

use actix_web::{HttpResponse, web};

use crate::api::metrics::ApiMetrics;
use crate::handshake;
use crate::metrics::NodeState;
use crate::node::Node;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(ws))
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics));
}

/// `/ws` without a WebSocket upgrade (upgrades never reach the routes: see [`handshake`]).
async fn ws(node: web::Data<Node>) -> HttpResponse {
    let refused = handshake::not_websocket("expected a WebSocket upgrade request");
    refused.record(&node);
    HttpResponse::BadRequest()
        .content_type("application/json")
        .body(refused.body())
}

async fn healthz(node: web::Data<Node>) -> HttpResponse {
    let up = node.redis_up();
    let status = if node.shutting_down() {
        "shutting_down"
    } else if !up {
        "degraded"
    } else if !node.leased() {
        // Backends do not send clients here before the lease: not ready for a proxy either.
        "starting"
    } else if node.hub().full() {
        // New clients would be refused with 503 node_full.
        "full"
    } else {
        "ok"
    };
    let body = serde_json::json!({
        "status": status,
        "node": node.id(),
        "epoch": node.epoch(),
        "redis": if up { "up" } else { "down" },
        "connections": node.hub().connections(),
        "max_connections": node.hub().max_connections(),
    });
    if status == "ok" {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// The node's metrics, and the HTTP API's when it is on.
async fn metrics(node: web::Data<Node>, api: Option<web::Data<ApiMetrics>>) -> HttpResponse {
    node.metrics().session_tasks.store(
        node.hub().session_tasks(),
        std::sync::atomic::Ordering::Relaxed,
    );
    let state = NodeState {
        redis_up: node.redis_up(),
        leased: node.health().holds_lease(),
        max_connections: node.hub().max_connections() as u64,
    };
    let mut body = node.metrics().render_with(node.id().as_str(), state);
    if let Some(api) = api {
        body.push_str(&api.render(node.id().as_str()));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}
