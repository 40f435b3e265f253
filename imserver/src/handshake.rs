//! The WebSocket handshake on the raw connection. actix-http hands every upgrade request here
//! together with the socket itself, so an admitted connection leaves the HTTP dispatcher (and
//! its two 8 KiB buffers) behind and its session owns the TCP stream. Refusals are answered
//! here with the same JSON bodies as any other refusal, then the socket is closed.
//!
//! A token is admitted in two steps: the checks this node can make alone (signature, expiry,
//! a replay to this run, all in memory), then one Redis round trip that records its use
//! (`SET NX` on its used-token marker, for its remaining lifetime), so that it is used once
//! across restarts and nodes. When this node's view of the live set says the client's home is
//! elsewhere, that round trip also reads the set, and Redis has the last word: a backend may
//! have seen a lapsed lease before this node did. Without Redis the connect is refused with
//! 503 `redis_unavailable` and `Retry-After`, the token left unused.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use actix_codec::Framed;
use actix_http::{HttpMessage as _, Request, h1, ws};
use bytes::BytesMut;
use imclient::contract::{ResumeFrom, SystemEvent, system_frame};
use imclient::node::{home_node, read_live};
use imclient::token::{ConnectClaims, TokenError, unix_secs};
use tokio::net::TcpStream;

use crate::hub::{Refusal, WelcomeInfo};
use crate::ip_limit::{IpRefusal, IpSlot};
use crate::node::Node;
use crate::session;
use crate::tasks::follower::move_if_elsewhere;
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
        Ok(admitted) => match confirm(&node, &admitted).await {
            Ok(()) => register(&node, &admitted.claims, admitted.since.as_deref())
                .await
                .map(|reg| {
                    (
                        admitted.accept,
                        admitted.claims.sub,
                        reg,
                        admitted.ip_slot,
                        admitted.view,
                    )
                }),
            Err(refused) => Err(refused),
        },
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
        Ok((accept, client, reg, ip_slot, view)) => {
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
            // Admitted under a live set that changed since (a node came back): the follower's
            // pass over the clients may have come before this registration, so the move it
            // would have made is made here. Its welcome is then followed by 4003.
            if node.nodes().changes() != view
                && move_if_elsewhere(node.id(), node.nodes(), node.hub(), node.keys(), &client)
            {
                node.metrics().clients_moved.fetch_add(1, Relaxed);
                tracing::debug!(node = %node.id(), client = %client, "moved a client the live set changed under");
            }
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
    let host = req
        .headers()
        .get(actix_http::header::HOST)
        .and_then(|h| h.to_str().ok());
    if !node.origin_allowed(origin, host) {
        return Err(Refused::new(
            403,
            "origin_not_allowed",
            "a page of another origin may not connect; add its origin to the node's \
             --allowed-origins (IM_ALLOWED_ORIGINS)",
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
        .map_err(token_refused)?;
    let view = node.nodes().changes();
    let home_elsewhere = !node.nodes().owns(node.id(), &claims.sub);
    Ok(Admitted {
        accept,
        claims,
        since: query.since,
        ip_slot,
        home_elsewhere,
        view,
    })
}

fn token_refused(e: TokenError) -> Refused {
    Refused::new(e.http_status(), e.code(), e.to_string())
}

fn client_moved() -> Refused {
    Refused::new(
        421,
        "client_moved",
        "this client's home is now another node; fetch a fresh connect URL",
    )
}

/// The second step of admission, against Redis: records the token's use (refusing a token used
/// before, by any node or an earlier run of this one) and, when this node's view says the
/// client's home is elsewhere, reads the live set to decide. One round trip, two when in doubt.
async fn confirm(node: &Node, admitted: &Admitted) -> Result<(), Refused> {
    let claims = &admitted.claims;
    let unavailable = |e: &dyn std::fmt::Display| {
        // Not used after all: the client may try the same URL again.
        node.admission().forget(claims);
        tracing::debug!(node = %node.id(), error = %e, "cannot record a token's use in Redis");
        Refused {
            header: Some(("retry-after", "1")),
            ..Refused::new(
                503,
                "redis_unavailable",
                "the node cannot reach Redis to check that this token was not used before; \
                 try again in a moment with the same URL",
            )
        }
    };
    // Kept as long as the token could be presented, and not a second more.
    let ttl = claims
        .exp
        .saturating_sub(unix_secs(std::time::SystemTime::now()))
        .max(1);
    // The marker names this node run. An attempt whose reply never came (a timeout, a
    // connection lost) may still have written it; the client then tries the same URL again,
    // and finding this run's own mark (while the token is not in memory, where an attempt of
    // this run that went through would have left it) means that attempt failed: admitted.
    // NX with GET, one round trip (Redis 7).
    let mut set = redis::cmd("SET");
    set.arg(node.keys().used_token(&claims.jti))
        .arg(node.epoch())
        .arg("NX")
        .arg("GET")
        .arg("EX")
        .arg(ttl);
    // A second try on a fresh connection when the shared one turns out broken: after a Redis
    // restart the first command finds the old connection dead, and the link replaces it.
    let mut retried = false;
    let (marked_by, mut conn) = loop {
        let mut conn = node.link().get().await.map_err(|e| unavailable(&e))?;
        match set.query_async::<Option<String>>(&mut conn).await {
            Ok(marked_by) => break (marked_by, conn),
            Err(e)
                if !retried
                    && !e.is_timeout()
                    && (e.is_io_error() || e.is_connection_dropped()) =>
            {
                retried = true;
            }
            Err(e) => return Err(unavailable(&e)),
        }
    };
    if marked_by.is_some_and(|run| run != node.epoch()) {
        return Err(token_refused(TokenError::Replayed));
    }
    if !admitted.home_elsewhere {
        return Ok(());
    }
    // This node's view is behind or the backend's is: the lease keys decide, this node live
    // among them as it is running. Either way the follower reads the set again now.
    node.work().nodeset.notify_one();
    let configured = node.nodes().configured();
    let live: Vec<_> = read_live(&mut conn, node.keys(), configured)
        .await
        .map_err(|e| unavailable(&e))?;
    let live: Vec<_> = configured
        .iter()
        .filter(|n| live.contains(n) || *n == node.id())
        .cloned()
        .collect();
    match home_node(&live, claims.sub.as_str()) {
        Some(home) if home == node.id() => {
            tracing::debug!(node = %node.id(), client = %claims.sub, "admitted a client this node's view had elsewhere");
            Ok(())
        }
        _ => Err(client_moved()),
    }
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

/// A connection that passed the checks this node makes alone.
struct Admitted {
    /// The `Sec-WebSocket-Accept` value.
    accept: String,
    claims: ConnectClaims,
    /// Where it asks to resume from.
    since: Option<String>,
    /// The slot it holds of its address's limit.
    ip_slot: Option<IpSlot>,
    /// This node's view of the live set has the client's home elsewhere.
    home_elsewhere: bool,
    /// The count of live-set changes that view was taken at.
    view: u64,
}

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
