//! HTTP routes: the WebSocket handshake (`GET /ws?token=…`), `/healthz` and `/metrics`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use imclient::contract::{SystemEvent, system_frame};
use serde::Deserialize;

use crate::hub::Refusal;
use crate::node::Node;
use crate::session;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(ws))
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics));
}

#[derive(Debug, Deserialize)]
struct ConnectQuery {
    #[serde(default)]
    token: String,
}

fn refuse(node: &Node, status: StatusCode, code: &str, message: String) -> HttpResponse {
    node.metrics()
        .refused
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(node = %node.id(), %code, "refused connection");
    HttpResponse::build(status).json(serde_json::json!({ "error": code, "message": message }))
}

async fn ws(
    req: HttpRequest,
    body: web::Payload,
    query: web::Query<ConnectQuery>,
    node: web::Data<Node>,
) -> HttpResponse {
    let node = node.get_ref().clone();
    if node.shutting_down() {
        return refuse(
            &node,
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "node is shutting down; reconnect with a fresh URL".into(),
        );
    }
    // The handshake is checked first: it has no side effects, while admitting burns the token.
    let (response, session, stream) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(e) => {
            return refuse(
                &node,
                StatusCode::BAD_REQUEST,
                "not_websocket",
                e.to_string(),
            );
        }
    };
    let claims = match node.admission().admit(&query.token) {
        Ok(claims) => claims,
        Err(e) => {
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
            return refuse(&node, status, e.code(), e.to_string());
        }
    };
    let heartbeat_ms = node.limits().heartbeat_interval.as_millis() as u64;
    let welcome = |conn: crate::hub::ConnId| {
        system_frame(&SystemEvent::Welcome {
            client: claims.sub.clone(),
            node: node.id().clone(),
            conn: conn.0,
            epoch: node.epoch().to_owned(),
            heartbeat_ms,
        })
    };
    let reg = match node.hub().register(&claims, welcome) {
        Ok(reg) => reg,
        Err(r @ Refusal::ClientLimit(_)) => {
            return refuse(
                &node,
                StatusCode::TOO_MANY_REQUESTS,
                "client_connection_limit",
                r.to_string(),
            );
        }
        Err(r @ Refusal::NodeLimit(_)) => {
            return refuse(
                &node,
                StatusCode::SERVICE_UNAVAILABLE,
                "node_full",
                r.to_string(),
            );
        }
    };
    tracing::debug!(node = %node.id(), client = %claims.sub, conn = reg.id.0, "connected");
    actix_web::rt::spawn(session::run(node, claims.sub, session, stream, reg));
    response
}

async fn healthz(node: web::Data<Node>) -> HttpResponse {
    let up = node.redis_up();
    let status = if node.shutting_down() {
        "shutting_down"
    } else if up {
        "ok"
    } else {
        "degraded"
    };
    let body = serde_json::json!({
        "status": status,
        "node": node.id(),
        "epoch": node.epoch(),
        "redis": if up { "up" } else { "down" },
        "connections": node.hub().connections(),
    });
    if status == "ok" {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(node: web::Data<Node>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(node.metrics().render(node.id().as_str(), node.redis_up()))
}
