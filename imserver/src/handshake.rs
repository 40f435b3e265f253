//! The WebSocket handshake on the raw connection. actix-http hands every upgrade request here
//! together with the socket itself, so an admitted connection leaves the HTTP dispatcher (and
//! its two 8 KiB buffers) behind and its session owns the TCP stream. Refusals are answered
//! here with the same JSON bodies as any other refusal, then the socket is closed.

use std::net::IpAddr;

use actix_codec::Framed;
use actix_http::{HttpMessage as _, Request, h1, ws};
use bytes::BytesMut;
use imclient::contract::{ResumeFrom, SystemEvent, system_frame};
use imclient::token::ConnectClaims;
use tokio::net::TcpStream;

use crate::hub::{Refusal, WelcomeInfo};
use crate::ip_limit::{IpRefusal, IpSlot};
use crate::node::Node;
use crate::session;
use crate::wire::Wire;

/// Why a handshake was refused: HTTP status, machine-readable code, human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// Stable code, e.g. `token_expired`.
    pub code: &'static str,
    /// What to do about it.
    pub message: String,
    /// A header the answer must carry (`Sec-WebSocket-Version` on a 426).
    pub header: Option<(&'static str, &'static str)>,
}

impl Refused {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            header: None,
        }
    }

    /// The refusal as a JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.code, "message": self.message }).to_string()
    }

    /// Counts (under its code) and logs the refusal.
    pub fn record(&self, node: &Node) {
        node.metrics().refused(self.code);
        tracing::debug!(node = %node.id(), code = self.code, "refused connection");
    }
}

/// The refusal for a request to `/ws` that is not a WebSocket upgrade.
pub fn not_websocket(reason: impl std::fmt::Display) -> Refused {
    Refused::new(400, "not_websocket", reason.to_string())
}

/// Serves one upgrade request: refuse it, or answer 101 and run the session on the socket.
/// Failures are the client's connection going away; they end only this connection.
pub async fn upgrade<T: Into<Wire>>(
    node: Node,
    req: Request,
    framed: Framed<T, h1::Codec>,
) -> Result<(), std::convert::Infallible> {
    if let Err(e) = serve(node, req, framed).await {
        tracing::debug!(error = %e, "handshake failed");
    }
    Ok(())
}

async fn serve<T: Into<Wire>>(
    node: Node,
    req: Request,
    framed: Framed<T, h1::Codec>,
) -> std::io::Result<()> {
    let parts = framed.into_parts();
    let mut io: Wire = parts.io.into();
    // Bytes the client sent after its request (frames it pipelined behind the handshake).
    let early: BytesMut = parts.read_buf;
    drop(parts.write_buf);
    let peer = io.tcp().peer_addr().map(|a| a.ip()).ok();
    let admitted = match admit(&node, &req, peer) {
        Ok((accept, claims, since, ip_slot)) => register(&node, &claims, since.as_deref())
            .await
            .map(|reg| (accept, claims.sub, reg, ip_slot)),
        Err(refused) => Err(refused),
    };
    match admitted {
        Err(refused) => {
            refused.record(&node);
            let body = refused.body();
            // One write: a client may read the body only as far as the first segment.
            let header = refused
                .header
                .map(|(name, value)| format!("{name}: {value}\r\n"))
                .unwrap_or_default();
            let response = format!(
                "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{header}connection: close\r\n\r\n{body}",
                refused.status,
                reason_phrase(refused.status),
                body.len()
            );
            io.write_raw(response.as_bytes()).await?;
            io.shutdown_write().await;
            Ok(())
        }
        Ok((accept, client, reg, ip_slot)) => {
            drop(req);
            // Frames are small and written as they come: Nagle would hold each behind the
            // previous one's ACK.
            let _ = io.tcp().set_nodelay(true);
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
            );
            if let Err(e) = io.write_raw(head.as_bytes()).await {
                node.hub().unregister(&client, reg.id);
                return Err(e);
            }
            tracing::debug!(node = %node.id(), client = %client, conn = reg.id.0, "connected");
            // The session runs as a task of its own and this handshake task ends: it is sized
            // for the whole HTTP dispatcher (about 2.4 KiB), and would stay that big for as
            // long as the connection lives.
            match (io, node.session_runtime().cloned()) {
                // On the runtime that also reads Redis for it: a delivery then wakes the
                // session without waking another runtime's thread (docs/DESIGN.md, "Where
                // sessions run"). The socket moves by leaving this worker's poller and joining
                // that runtime's. A TLS stream cannot be taken apart and rebuilt, so it stays.
                (Wire::Plain(tcp), Some(sessions)) => {
                    // Registered with that runtime from here, so what is spawned is the
                    // session itself, with no wrapper around it.
                    let moved = tcp.into_std().and_then(|tcp| {
                        let _runtime = sessions.enter();
                        TcpStream::from_std(tcp)
                    });
                    let tcp = match moved {
                        Ok(tcp) => tcp,
                        Err(e) => {
                            node.hub().unregister(&client, reg.id);
                            return Err(e);
                        }
                    };
                    sessions.spawn(session::run(
                        node,
                        client,
                        Wire::Plain(tcp),
                        early,
                        reg,
                        ip_slot,
                    ));
                }
                (io, _) => {
                    actix_rt::spawn(session::run(node, client, io, early, reg, ip_slot));
                }
            }
            Ok(())
        }
    }
}

/// Checks the request and registers the connection, or says why not. The handshake, the
/// origin and the address's limits are checked before the token, as admitting burns it.
fn admit(node: &Node, req: &Request, peer: Option<IpAddr>) -> Result<Admitted, Refused> {
    if req.path() != "/ws" {
        return Err(Refused::new(
            404,
            "not_found",
            "WebSocket connections are served at /ws",
        ));
    }
    if node.shutting_down() {
        return Err(Refused::new(
            503,
            "shutting_down",
            "node is shutting down; reconnect with a fresh URL",
        ));
    }
    ws::verify_handshake(req.head()).map_err(|e| match e {
        ws::HandshakeError::NoVersionHeader | ws::HandshakeError::UnsupportedVersion => Refused {
            header: Some(("sec-websocket-version", "13")),
            ..Refused::new(
                426,
                "unsupported_version",
                "only WebSocket version 13 (RFC 6455) is served",
            )
        },
        e => not_websocket(e),
    })?;
    let origin = req
        .headers()
        .get(actix_http::header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    if !node.origin_allowed(origin) {
        return Err(Refused::new(
            403,
            "origin_not_allowed",
            "this page's origin may not connect; add it to the node's --allowed-origins",
        ));
    }
    let accept = req
        .headers()
        .get(actix_http::header::SEC_WEBSOCKET_KEY)
        .map(|key| ws::hash_key(key.as_bytes()))
        .and_then(|accept| String::from_utf8(accept.to_vec()).ok())
        .ok_or_else(|| not_websocket("bad Sec-WebSocket-Key"))?;
    let ip_slot = match peer.map(|ip| node.ip_limits().admit(ip)) {
        Some(Err(e @ IpRefusal::Rate(_))) => {
            return Err(Refused {
                header: Some(("retry-after", "1")),
                ..Refused::new(429, "ip_rate_limit", e.to_string())
            });
        }
        Some(Err(e @ IpRefusal::Connections(_))) => {
            return Err(Refused::new(429, "ip_connection_limit", e.to_string()));
        }
        Some(Ok(slot)) => slot,
        None => None,
    };
    let query = ConnectQuery::parse(req.uri().query().unwrap_or_default());
    let claims = node
        .admission()
        .admit(&query.token)
        .map_err(|e| Refused::new(e.http_status(), e.code(), e.to_string()))?;
    if !node.nodes().owns(node.id(), &claims.sub) {
        // The backend that issued the token may have seen a change this node has not yet
        // (a peer that died, whose lease just ran out): read the set again now, so that the
        // client's next attempt finds it current.
        node.work().nodeset.notify_one();
        return Err(Refused::new(
            421,
            "client_moved",
            "this client's home is now another node; fetch a fresh connect URL",
        ));
    }
    Ok((accept, claims, query.since, ip_slot))
}

/// How long a connection that resumes a stream of another node waits for that node's
/// handover of it (the client was moved here, and its old node closed it right after queueing
/// the handover).
const HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Registers an admitted connection. One that resumes the stream of a client being handed
/// over here first waits for the stream to arrive.
async fn register(
    node: &Node,
    claims: &ConnectClaims,
    since: Option<&str>,
) -> Result<crate::hub::Registration, Refused> {
    let foreign = since
        .and_then(ResumeFrom::parse)
        .filter(|from| {
            from.epoch
                .split_once('-')
                .is_none_or(|(run, _)| run != node.epoch())
        })
        .map(|from| from.epoch);
    if let Some(stream) = foreign
        && node.nodes().expects_handover(node.id(), &claims.sub)
    {
        let arrived = node
            .hub()
            .await_stream(&claims.sub, &stream, HANDOVER_WAIT)
            .await;
        tracing::debug!(node = %node.id(), client = %claims.sub, arrived, "waited for a handover");
    }
    let heartbeat_ms = node.limits().heartbeat_interval.as_millis() as u64;
    let welcome = |info: &WelcomeInfo| {
        system_frame(&SystemEvent::Welcome {
            client: claims.sub.clone(),
            node: node.id().clone(),
            conn: info.conn.0,
            epoch: info.epoch.clone(),
            seq: info.seq,
            heartbeat_ms,
            recovered: info.recovered,
            reason: info.reason,
        })
    };
    node.hub()
        .register(claims, since, welcome)
        .map_err(|r| match r {
            Refusal::ClientLimit(_) => Refused::new(429, "client_connection_limit", r.to_string()),
            Refusal::NodeLimit(_) => Refused::new(503, "node_full", r.to_string()),
        })
}

/// An admitted connection: the `Sec-WebSocket-Accept` value, the token's claims, where it
/// asks to resume from and the slot it holds of its address's limit.
type Admitted = (String, ConnectClaims, Option<String>, Option<IpSlot>);

/// The connect URL's query: the token, and where the client asks to resume from.
#[derive(Debug, Default, serde::Deserialize)]
struct ConnectQuery {
    /// Percent-decoded; empty when absent.
    #[serde(default)]
    token: String,
    /// `<epoch>:<seq>`, when the client resumes.
    #[serde(default)]
    since: Option<String>,
}

impl ConnectQuery {
    /// Parses the query; an undecodable one reads as empty (and the token check refuses it).
    fn parse(query: &str) -> Self {
        serde_urlencoded::from_str(query).unwrap_or_default()
    }
}

fn reason_phrase(status: u16) -> &'static str {
    actix_http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_and_since_are_read_from_the_query_and_percent_decoded() {
        assert_eq!(ConnectQuery::parse("token=a.b.c").token, "a.b.c");
        assert_eq!(ConnectQuery::parse("x=1&token=a%2Bb").token, "a+b");
        assert_eq!(ConnectQuery::parse("").token, "");
        assert_eq!(ConnectQuery::parse("token").token, "");
        let q = ConnectQuery::parse("token=t&since=abc-1%3A42");
        assert_eq!(q.since.as_deref(), Some("abc-1:42"));
        assert_eq!(ConnectQuery::parse("token=t").since, None);
    }
}
