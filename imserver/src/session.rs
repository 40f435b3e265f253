//! One WebSocket connection, on the TCP stream it owns: a single loop over inbound frames, the
//! outbound queue, the heartbeat tick and close requests, with one exit: unregister, then close
//! once with a reason.
//!
//! Why the session owns the socket rather than going through an HTTP response body: queued
//! frames leave in one vectored write per batch, with one task wake per delivery instead of
//! two, and an idle connection holds no buffers at all (see docs/DESIGN.md, "Owning the
//! socket"). Frame parsing is actix-http's.

use std::collections::VecDeque;

use actix_ws::CloseReason;
use bytes::BytesMut;
use imclient::ClientId;
use imclient::contract::{ClientFrame, CloseCode, SystemEvent, system_frame};
use tokio::time::{Instant, timeout};

use crate::heartbeat::Heartbeat;
use crate::hub::Registration;
use crate::inbound::{Inbound, InboundMessage};
use crate::ip_limit::IpSlot;
use crate::node::Node;
use crate::outbox::{Frame, Outbox};
use crate::wire::Wire;

/// How long closing may take (the close frame, then the client's answer) before the socket is
/// dropped anyway.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// How the loop ended.
enum Exit {
    /// The node closes the connection with this code.
    Close(CloseCode),
    /// The client sent a close frame (with this reason, if any); answer it.
    ClientClosed(Option<CloseReason>),
    /// The connection is gone; nothing more can be sent.
    Lost,
}

/// Runs the connection until it closes. `early` holds bytes the client sent right behind its
/// handshake; `ip_slot` counts the connection against its address's limit until it ends.
///
/// Not an `async fn`: an `async fn` keeps its arguments in its future beside the locals they are
/// moved into, and this future is most of what an idle connection costs. For the same reason
/// nothing captured is moved into a local inside it: what an async block captures stays in its
/// future for its whole life. Nor is it instrumented with a span, entered and left at every poll
/// (0.3% of a private delivery's instructions), for the one event a session logs, which names
/// the node, client and connection itself (docs/DESIGN.md, "Counting instructions").
// Written out rather than as the `async fn` clippy suggests.
#[allow(clippy::manual_async_fn)]
pub fn run(
    node: Node,
    client: ClientId,
    mut wire: Wire,
    early: BytesMut,
    reg: Registration,
    ip_slot: Option<IpSlot>,
) -> impl Future<Output = ()> {
    let mut inbound = Inbound::new(early, node.limits().max_inbound_frame_bytes);
    async move {
        // Dropped with the future: the address's slot is held until the session ends.
        let _ = &ip_slot;
        let limits = node.limits();
        let outbox = &*reg.outbox;
        // Frames claimed from the outbox and not yet fully written.
        let mut in_flight = VecDeque::new();
        let mut heartbeat = Heartbeat::new(limits.heartbeat_interval);
        let mut last_heard = Instant::now();

        let exit = 'session: loop {
            // Messages the client pipelined behind its handshake, or left over from the last read.
            loop {
                match inbound.next_message() {
                    Ok(Some(msg)) => {
                        if let Some(exit) = answer(msg, outbox) {
                            break 'session exit;
                        }
                    }
                    Ok(None) => break,
                    Err(code) => break 'session Exit::Close(code),
                }
            }
            if let Some(code) = outbox.close_requested() {
                break Exit::Close(code);
            }
            // Write what is queued. A client that does not read blocks the write; stay
            // responsive to close requests meanwhile, and give up on a client that has not read
            // for as long as a silent one is given.
            while outbox.take_queued(&mut in_flight) {
                let stalled_since = Instant::now();
                loop {
                    tokio::select! {
                        biased;
                        _ = outbox.wait() => {
                            if let Some(code) = outbox.close_requested() {
                                break 'session Exit::Close(code);
                            }
                        }
                        _ = heartbeat.tick() => {
                            if stalled_since.elapsed() > limits.heartbeat_timeout {
                                break 'session Exit::Close(CloseCode::HeartbeatTimeout);
                            }
                            // This tick is the interval's ping too, sent after what is being
                            // written. Without it a busy session (a delivery being written at
                            // every other tick) skipped pings, and a client that only answers
                            // them was closed as silent: a tenth of 21,000 in the storm drill.
                            outbox.queue_control(Frame::ping());
                        }
                        sent = wire.write_frames(&mut in_flight) => {
                            if sent.is_err() {
                                break 'session Exit::Lost;
                            }
                            break;
                        }
                    }
                }
            }

            // All written: give the batch's room back, so that an idle connection holds no
            // queue (the outbox's queue took this one's room in the swap; the next frame
            // allocates it again).
            if in_flight.capacity() > 0 {
                in_flight = VecDeque::new();
            }
            tokio::select! {
                biased;
                // Frames were queued or a close was requested: both handled above.
                _ = outbox.wait() => {}
                read = wire.read_into(&mut inbound) => match read {
                    Ok(0) | Err(_) => break Exit::Lost,
                    Ok(_) => last_heard = Instant::now(),
                },
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > limits.heartbeat_timeout {
                        break Exit::Close(CloseCode::HeartbeatTimeout);
                    }
                    outbox.queue_control(Frame::ping());
                }
            }
        };

        node.hub().unregister(&client, reg.id);
        // What is left: the rest of a frame being written must go before anything else.
        in_flight.extend(outbox.shut());
        let (reason, answered) = match exit {
            Exit::Close(code) => {
                node.metrics().closed(code);
                tracing::debug!(
                    node = %node.id(),
                    client = %client,
                    conn = reg.id.0,
                    code = code.code(),
                    reason = code.reason(),
                    "closing"
                );
                let reason = CloseReason {
                    code: code.code().into(),
                    description: Some(code.reason().to_owned()),
                };
                (Some(reason), false)
            }
            // Echo the client's code, as RFC 6455 asks.
            Exit::ClientClosed(reason) => {
                let reason = reason.map(|r| CloseReason {
                    code: r.code,
                    description: None,
                });
                (reason, true)
            }
            Exit::Lost => return,
        };
        // Boxed: closing happens once, and inline its future would make every session's task
        // (what an idle connection costs) as large as the closing step needs.
        let _ = Box::pin(timeout(
            CLOSE_TIMEOUT,
            close(&mut wire, in_flight, reason, answered, inbound),
        ))
        .await;
    }
}

/// Answers one client message, queueing any reply; returns how the session ends, if it does.
fn answer(msg: InboundMessage, outbox: &Outbox) -> Option<Exit> {
    match msg {
        InboundMessage::Text(text) => match serde_json::from_slice::<ClientFrame>(&text) {
            Ok(ClientFrame::Ping) => {
                let pong = system_frame(&SystemEvent::Pong);
                outbox.queue_control(Frame::text(pong));
                None
            }
            Err(_) => Some(Exit::Close(CloseCode::PolicyViolation)),
        },
        InboundMessage::Ping(payload) => {
            outbox.queue_control(Frame::pong(payload.freeze()));
            None
        }
        InboundMessage::Pong => None,
        InboundMessage::Close(reason) => Some(Exit::ClientClosed(reason)),
    }
}

/// Writes what is still queued and the close frame. When the client closed first, both Close
/// frames have now been exchanged and the connection ends at once (RFC 6455 §5.5.1). Otherwise
/// the write side is shut (the client reads our Close, then the end of the stream) and the
/// client's Close or hang-up is awaited, so that unread input does not turn our close into a
/// reset that could destroy the Close frame on its way. A client that keeps sending anything
/// else is read and discarded, never buffered, until the caller's deadline.
async fn close(
    wire: &mut Wire,
    mut frames: VecDeque<Frame>,
    reason: Option<CloseReason>,
    answered: bool,
    mut inbound: Inbound,
) {
    frames.push_back(Frame::close(reason));
    if wire.write_frames(&mut frames).await.is_err() || answered {
        return;
    }
    wire.shutdown_write().await;
    // Parse what arrives until the client's Close; once it breaks the rules, just discard.
    let mut parsing = true;
    loop {
        if parsing {
            loop {
                match inbound.next_message() {
                    Ok(Some(InboundMessage::Close(_))) => return,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        parsing = false;
                        break;
                    }
                }
            }
        }
        if !parsing {
            // A fresh buffer for each read: what a rule breaker sends is dropped unread.
            inbound = Inbound::new(BytesMut::new(), 0);
        }
        match wire.read_into(&mut inbound).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use imclient::NodeId;
    use imclient::store::Store;
    use imclient::token::ConnectClaims;

    use super::*;
    use crate::config::Config;

    /// What an idle connection costs is mostly its session's task, and the task is as large as
    /// the session's future. It was 2,256 bytes (debug build) before the TLS write's slices,
    /// the closing step and the duplicated arguments of `async fn` were taken out of it, and 584
    /// before its span and the captures moved into locals were.
    #[tokio::test]
    async fn an_idle_session_task_stays_small() {
        let config = Config::try_parse_from(["imserver", "--dev"]).expect("parses");
        let verifier = config.validate().expect("valid");
        let id = NodeId::new("ws://127.0.0.1:1").expect("node id");
        let store = Store::open("redis://127.0.0.1:1").expect("a URL");
        let node = Node::new(&config, id.clone(), verifier, store).expect("node");
        let claims = ConnectClaims::new(
            ClientId::new("alice").expect("client id"),
            id,
            serde_json::Value::Null,
            std::time::Duration::from_secs(60),
        );
        let reg = node
            .hub()
            .register(&claims, None, |_| String::new())
            .expect("registered");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bound");
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connected");
        let session = run(
            node.clone(),
            claims.sub.clone(),
            Wire::Plain(tcp),
            BytesMut::new(),
            reg,
            None,
        );
        let size = std::mem::size_of_val(&session);
        assert!(size <= 576, "a session's future takes {size} bytes");
    }
}
