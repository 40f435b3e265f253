//! One WebSocket connection: a single loop over inbound frames, the outbound queue, the
//! heartbeat tick and close requests, with one exit: unregister, then close once with a reason.

use actix_ws::{AggregatedMessage, CloseReason, ProtocolError, Session};
use futures_util::StreamExt as _;
use imclient::ClientId;
use imclient::contract::{ClientFrame, CloseCode, SystemEvent, system_frame};
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tracing::Instrument as _;

use crate::hub::Registration;
use crate::node::Node;

/// How long the final close frame may take to queue before the socket is dropped anyway.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// How the loop ended.
enum Exit {
    /// The node closes the connection with this code.
    Close(CloseCode),
    /// The client closed or went away; answer its close if it sent one.
    ClientClosed,
}

/// Runs the connection until it closes, in a span with the node, client and connection ids.
pub async fn run(
    node: Node,
    client: ClientId,
    session: Session,
    stream: actix_ws::MessageStream,
    reg: Registration,
) {
    let span =
        tracing::debug_span!("session", node = %node.id(), client = %client, conn = reg.id.0);
    serve(node, client, session, stream, reg)
        .instrument(span)
        .await;
}

async fn serve(
    node: Node,
    client: ClientId,
    mut session: Session,
    stream: actix_ws::MessageStream,
    mut reg: Registration,
) {
    let limits = node.limits().clone();
    let mut inbound = stream
        .max_frame_size(limits.max_inbound_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(limits.max_inbound_frame_bytes);
    let mut heartbeat = interval_at(
        Instant::now() + limits.heartbeat_interval,
        limits.heartbeat_interval,
    );
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();

    // One close-request future for the whole session, so the loop does not register a new
    // waiter on every turn.
    let kill = reg.kill.clone();
    let killed = kill.wait();
    tokio::pin!(killed);

    let exit = loop {
        tokio::select! {
            biased;
            code = &mut killed => break Exit::Close(code),
            frame = reg.rx.recv() => {
                let Some(mut frame) = frame else { break Exit::Close(CloseCode::GoingAway) };
                // Write what is queued before going back to waiting. A client that does not
                // read blocks the write; stay responsive to close requests meanwhile.
                let stop = loop {
                    tokio::select! {
                        biased;
                        sent = session.text(frame) => if sent.is_err() { break Some(Exit::ClientClosed) },
                        code = &mut killed => break Some(Exit::Close(code)),
                    }
                    match reg.rx.try_recv() {
                        Ok(next) => frame = next,
                        Err(_) => break None,
                    }
                };
                if let Some(exit) = stop {
                    break exit;
                }
            }
            msg = inbound.next() => {
                last_heard = Instant::now();
                match msg {
                    None | Some(Ok(AggregatedMessage::Close(_))) => break Exit::ClientClosed,
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() { break Exit::ClientClosed }
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {}
                    Some(Ok(AggregatedMessage::Text(text))) => match serde_json::from_str::<ClientFrame>(&text) {
                        Ok(ClientFrame::Ping) => {
                            if session.text(system_frame(&SystemEvent::Pong)).await.is_err() {
                                break Exit::ClientClosed;
                            }
                        }
                        Err(_) => break Exit::Close(CloseCode::PolicyViolation),
                    },
                    Some(Ok(AggregatedMessage::Binary(_))) => break Exit::Close(CloseCode::PolicyViolation),
                    Some(Err(ProtocolError::Overflow)) => break Exit::Close(CloseCode::TooBig),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "protocol error");
                        break Exit::Close(CloseCode::PolicyViolation);
                    }
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > limits.heartbeat_timeout {
                    break Exit::Close(CloseCode::HeartbeatTimeout);
                }
                if session.ping(b"").await.is_err() { break Exit::ClientClosed }
            }
        }
    };

    node.hub().unregister(&client, reg.id);
    let reason = match exit {
        Exit::Close(code) => {
            node.metrics().closed(code);
            tracing::debug!(code = code.code(), reason = code.reason(), "closing");
            Some(CloseReason {
                code: code.code().into(),
                description: Some(code.reason().to_owned()),
            })
        }
        Exit::ClientClosed => None,
    };
    let _ = timeout(CLOSE_TIMEOUT, session.close(reason)).await;
}
