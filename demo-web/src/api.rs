//! The business API the page calls. It owns users, rooms and what was said, and decides who
//! may talk; imclient carries what it decides to the browsers. Errors are JSON
//! `{"error": "<code>", "message": "..."}` with a status; the message is a sentence the page
//! shows as it is. Every answer is `Cache-Control: no-store` (main.rs): a browser that reused
//! an old `/api/me` on back/forward showed the sign-in form to someone signed in.

use std::sync::Arc;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use imclient::ImClient;
use serde::Deserialize;
use serde_json::json;

use crate::history::{Conversation, History, Mark, Message};
use crate::rooms::{self, ROOMS};
use crate::sends::{MAX_KEY_CHARS, Sends, Sent};
use crate::storage::StorageError;
use crate::users::{SESSION_SECS, User, Users, clean_name};

/// The session cookie.
pub const COOKIE: &str = "demo_session";
/// Longest message text, in characters.
pub const MAX_TEXT_CHARS: usize = 1000;

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The IM.
    pub im: ImClient,
    /// Users and sessions.
    pub users: Users,
    /// What was said, rooms and private.
    pub history: History,
    /// Recent sends by retry key.
    pub sends: Arc<Sends<Sent>>,
}

/// Registers the API routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/prev-connect-imserver", web::get().to(connect_url))
        .route("/api/signin", web::post().to(sign_in))
        .route("/api/signout", web::post().to(sign_out))
        .route("/api/me", web::get().to(me))
        .route("/api/online", web::get().to(online))
        .route("/api/messages", web::post().to(send_private))
        .route("/api/chats", web::get().to(chats))
        .route("/api/chats/{peer}/messages", web::get().to(chat_history))
        .route("/api/chats/{peer}/received", web::post().to(received))
        .route("/api/rooms", web::get().to(rooms))
        .route("/api/rooms/{room}/join", web::post().to(join))
        .route("/api/rooms/{room}/leave", web::post().to(leave))
        .route("/api/rooms/{room}/messages", web::get().to(room_history))
        .route("/api/rooms/{room}/messages", web::post().to(send_room));
}

/// Longest request body, in bytes: far above the longest message (1000 characters, each
/// escaped as `\uXXXX\uXXXX` at worst), so only a body that is no message at all hits it.
pub const MAX_BODY_BYTES: usize = 32 * 1024;

/// Why a request was refused; rendered as JSON `{"error": "<code>", "message": "<text>"}`
/// with its status, like the nodes' handshake errors (docs/PROTOCOL.md). The page shows the
/// message; scripts can match on the code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No session cookie, or an unknown one.
    #[error("You are signed out. Please sign in again.")]
    SignedOut,
    /// Bad input.
    #[error("{message}")]
    BadRequest {
        /// Machine-readable reason.
        code: &'static str,
        /// What to do about it.
        message: String,
    },
    /// Input over a size limit.
    #[error("{message}")]
    TooLarge {
        /// Machine-readable reason.
        code: &'static str,
        /// What to do about it.
        message: String,
    },
    /// A body that is not declared as JSON.
    #[error("Send the body as JSON, with content-type: application/json.")]
    NotJson,
    /// Not allowed for this user.
    #[error("{message}")]
    Forbidden {
        /// Machine-readable reason.
        code: &'static str,
        /// What to do about it.
        message: String,
    },
    /// No such room, user or path.
    #[error("{message}")]
    NotFound {
        /// Machine-readable reason.
        code: &'static str,
        /// What is missing.
        message: String,
    },
    /// imclient failed (Redis away).
    #[error("The chat server is unavailable right now; please try again in a moment.")]
    Im(#[from] imclient::Error),
    /// The history or the sessions could not be read or written (Redis away).
    #[error("The chat server cannot reach its storage right now; please try again in a moment.")]
    Storage(#[from] StorageError),
}

impl ApiError {
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The machine-readable reason, the `error` field of the answer.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::SignedOut => "signed_out",
            ApiError::BadRequest { code, .. }
            | ApiError::TooLarge { code, .. }
            | ApiError::Forbidden { code, .. }
            | ApiError::NotFound { code, .. } => code,
            ApiError::NotJson => "not_json",
            ApiError::Im(_) | ApiError::Storage(_) => "unavailable",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::SignedOut => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Im(_) | ApiError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Im(e) => tracing::warn!(error = %e, "imclient call failed"),
            ApiError::Storage(e) => tracing::warn!(error = %e, "storage call failed"),
            _ => {}
        }
        HttpResponse::build(self.status_code())
            .json(json!({ "error": self.code(), "message": self.to_string() }))
    }
}

/// Body limit and errors of the JSON extractor: actix answers those in plain text by itself,
/// which the page (and any script) would have to special-case.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_BODY_BYTES)
        .error_handler(|err, _req| json_error(&err).into())
}

fn json_error(err: &JsonPayloadError) -> ApiError {
    match err {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError::TooLarge {
                code: "body_too_large",
                message: format!("The request body is larger than {MAX_BODY_BYTES} bytes."),
            }
        }
        JsonPayloadError::ContentType => ApiError::NotJson,
        // Valid JSON of the wrong shape: serde names the field (and where it is).
        JsonPayloadError::Deserialize(e) if e.is_data() => {
            let code = if e.to_string().starts_with("missing field") {
                "missing_field"
            } else {
                "invalid_field"
            };
            ApiError::bad(code, e.to_string())
        }
        JsonPayloadError::Deserialize(e) => {
            ApiError::bad("invalid_json", format!("The body is not valid JSON: {e}."))
        }
        other => ApiError::bad("invalid_body", other.to_string()),
    }
}

/// The answer to a path that is no page or API call: JSON like every other refusal.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::NotFound {
        code: "not_found",
        message: format!("There is no {} {} here.", req.method(), req.path()),
    }
    .error_response()
}

type ApiResult = Result<HttpResponse, ApiError>;

fn session_of(req: &HttpRequest) -> Option<String> {
    req.cookie(COOKIE).map(|c| c.value().to_owned())
}

async fn signed_in(req: &HttpRequest, state: &AppState) -> Result<(String, User), ApiError> {
    let token = session_of(req).unwrap_or_default();
    match state.users.by_session(&token).await? {
        Some(user) => Ok((token, user)),
        None => Err(ApiError::SignedOut),
    }
}

fn room_of(name: &str) -> Result<&'static str, ApiError> {
    rooms::find(name).ok_or_else(|| ApiError::NotFound {
        code: "unknown_room",
        message: format!(
            "There is no room called \"{name}\"; the rooms are {}.",
            ROOMS.join(", ")
        ),
    })
}

fn text_of(text: &str) -> Result<String, ApiError> {
    let text = text.trim();
    let chars = text.chars().count();
    if text.is_empty() {
        Err(ApiError::bad("text_empty", "Type a message first."))
    } else if chars > MAX_TEXT_CHARS {
        Err(ApiError::TooLarge {
            code: "text_too_long",
            message: format!(
                "Messages can be at most {MAX_TEXT_CHARS} characters; this one has {chars}."
            ),
        })
    } else {
        Ok(text.to_owned())
    }
}

/// The optional `retry_key` of a send: a page that sends again with the same key (it never got
/// the answer) gets the first send's id instead of sending a second message.
fn retry_key_of(key: Option<&str>) -> Result<Option<&str>, ApiError> {
    match key {
        Some(k) if k.is_empty() || k.chars().count() > MAX_KEY_CHARS => Err(ApiError::bad(
            "invalid_retry_key",
            format!("retry_key must be 1 to {MAX_KEY_CHARS} characters."),
        )),
        k => Ok(k),
    }
}

#[derive(Debug, Deserialize)]
struct SignIn {
    name: String,
}

async fn sign_in(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<SignIn>,
) -> ApiResult {
    let name = clean_name(&body.name).map_err(|e| ApiError::bad(e.code(), e.to_string()))?;
    let (token, user) = state
        .users
        .sign_in(name, session_of(&req).as_deref())
        .await?;
    let cookie = Cookie::build(COOKIE, token)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(
            SESSION_SECS as i64,
        ))
        .finish();
    Ok(HttpResponse::Ok().cookie(cookie).json(user))
}

async fn sign_out(req: HttpRequest, state: web::Data<AppState>) -> ApiResult {
    let (token, user) = signed_in(&req, &state).await?;
    state.users.sign_out(&token).await?;
    // The business ends the session, so its sockets go too: the IM reports it offline.
    state.im.force_offline(&user.id).await?;
    let mut gone = Cookie::build(COOKIE, "").path("/").finish();
    gone.make_removal();
    Ok(HttpResponse::Ok()
        .cookie(gone)
        .json(json!({ "signed_out": user.id })))
}

/// Who this browser is signed in as; 204 when nobody, which is an answer rather than an error:
/// every signed-out page load asks, and a 401 would show up in the console each time.
async fn me(req: HttpRequest, state: web::Data<AppState>) -> ApiResult {
    let user = match signed_in(&req, &state).await {
        Ok((_, user)) => user,
        Err(ApiError::SignedOut) => return Ok(HttpResponse::NoContent().finish()),
        Err(e) => return Err(e),
    };
    let node = state.im.home_node(&user.id)?.to_string();
    Ok(HttpResponse::Ok().json(json!({ "id": user.id, "name": user.name, "node": node })))
}

async fn connect_url(req: HttpRequest, state: web::Data<AppState>) -> ApiResult {
    let (_, user) = signed_in(&req, &state).await?;
    let url = state
        .im
        .prev_connect_server(&user.id, json!({ "name": user.name }))?;
    Ok(HttpResponse::Ok().json(json!({ "url": url })))
}

async fn online(req: HttpRequest, state: web::Data<AppState>) -> ApiResult {
    signed_in(&req, &state).await?;
    let ids = state.im.online_clients().await?;
    let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    let list: Vec<User> = state
        .users
        .by_ids(&ids)
        .await?
        .into_iter()
        .flatten()
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

async fn user_of(state: &AppState, id: &str) -> Result<User, ApiError> {
    state
        .users
        .by_id(id)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "unknown_user",
            message: format!("There is nobody with the id \"{id}\"."),
        })
}

#[derive(Debug, Deserialize)]
struct Private {
    to: String,
    text: String,
    #[serde(default)]
    retry_key: Option<String>,
}

/// Sends a private message and keeps it in the conversation's history. The answer's `status`
/// is `sent` when the receiver is online and their node took it (the receipts tell the rest),
/// and `stored` when not: the message waits in the history for the receiver's next visit.
async fn send_private(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Private>,
) -> ApiResult {
    let (_, user) = signed_in(&req, &state).await?;
    let text = text_of(&body.text)?;
    let to = user_of(&state, &body.to).await?;
    // The page has no conversation with oneself to show it in: refused rather than lost.
    if to.id == user.id {
        return Err(ApiError::bad(
            "self_message",
            "You cannot send a private message to yourself.",
        ));
    }
    let key = retry_key_of(body.retry_key.as_deref())?;
    let payload = json!({ "kind": "chat", "text": text, "from_name": user.name, "to": to.id });
    let (shared, sender, receiver, payload, text) = (&state, &user, &to.id, &payload, &text);
    let sent = state
        .sends
        .once(&user.id, key, |id| async move {
            let report = shared
                .im
                .send_message_with_id(&id, &sender.id, [receiver], payload, true)
                .await?;
            // Kept after the push, so that a failed push (Redis away) is retried whole by
            // the page under the same id rather than half done.
            let message = Message::sent_now(report.message_id.clone(), sender, text);
            shared
                .history
                .record(Conversation::Private(&sender.id, receiver), &message)
                .await?;
            // Nobody to push to (no running home node, or no connection there): it waits in
            // the history. Otherwise the receipts say what became of it.
            let stored =
                report.unreachable().next().is_some() || !shared.im.has_online(receiver).await?;
            Ok::<_, ApiError>(Sent {
                id: report.message_id,
                stored,
            })
        })
        .await?;
    let status = if sent.stored { "stored" } else { "sent" };
    Ok(HttpResponse::Ok().json(json!({ "id": sent.id, "status": status })))
}

/// The user's private conversations, most recent first: the other person, when the last
/// message was sent and how many of theirs are unread.
async fn chats(req: HttpRequest, state: web::Data<AppState>) -> ApiResult {
    let (_, user) = signed_in(&req, &state).await?;
    let chats = state.history.chats(&user.id).await?;
    let peers: Vec<&str> = chats.iter().map(|c| c.peer.as_str()).collect();
    let people = state.users.by_ids(&peers).await?;
    let list: Vec<_> = chats
        .iter()
        .zip(people)
        .map(|(chat, person)| {
            let name = person.map_or_else(|| chat.peer.clone(), |p| p.name);
            json!({ "peer": chat.peer, "name": name, "last_ts": chat.last_ts, "unread": chat.unread })
        })
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

/// A private conversation's kept messages, oldest first; the user's own carry `status`:
/// `delivered` once the other person's page received them, else `stored`. Loading it counts
/// as seeing it; messages it hands over for the first time (kept while the user was away)
/// are announced to their sender's pages, whose marks then say delivered.
async fn chat_history(
    req: HttpRequest,
    state: web::Data<AppState>,
    peer: web::Path<String>,
) -> ApiResult {
    let (_, user) = signed_in(&req, &state).await?;
    let peer = user_of(&state, &peer).await?;
    let messages = state
        .history
        .recent(Conversation::Private(&user.id, &peer.id))
        .await?;
    let had = state
        .history
        .mark_of(&user.id, &peer.id, Mark::Received)
        .await?;
    if let Some(last) = messages.last() {
        state
            .history
            .mark(&user.id, &peer.id, Mark::Seen, &last.id)
            .await?;
    }
    let handed: Vec<&str> = messages
        .iter()
        .filter(|m| m.from == peer.id && had.as_deref().is_none_or(|h| m.id.as_str() > h))
        .map(|m| m.id.as_str())
        .collect();
    if !handed.is_empty() {
        let note = json!({ "kind": "delivered", "by": user.id, "ids": handed });
        // Only news for the sender's open pages; the history says the same on their next load.
        if let Err(e) = state
            .im
            .send_message("demo-web", [&peer.id], &note, false)
            .await
        {
            tracing::warn!(error = %e, to = %peer.id, "cannot tell the sender their messages were delivered");
        }
    }
    let got = state
        .history
        .mark_of(&peer.id, &user.id, Mark::Received)
        .await?;
    let list: Vec<_> = messages
        .into_iter()
        .map(|m| {
            let mut item = json!(m);
            if m.from == user.id {
                let delivered = got.as_deref().is_some_and(|g| m.id.as_str() <= g);
                item["status"] = json!(if delivered { "delivered" } else { "stored" });
            }
            item
        })
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

#[derive(Debug, Deserialize)]
struct Received {
    id: String,
    /// Whether the page showed it too (the conversation was open).
    #[serde(default)]
    seen: bool,
}

/// The page received a private message from `peer` through its socket (and showed it, with
/// `seen`): the sender's mark says delivered after a reload too, and it is not unread.
async fn received(
    req: HttpRequest,
    state: web::Data<AppState>,
    peer: web::Path<String>,
    body: web::Json<Received>,
) -> ApiResult {
    let (_, user) = signed_in(&req, &state).await?;
    let peer = user_of(&state, &peer).await?;
    let id_chars = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if !(1..=64).contains(&body.id.len()) || !body.id.chars().all(id_chars) {
        return Err(ApiError::bad("invalid_id", "That is not a message id."));
    }
    let mark = if body.seen {
        Mark::Seen
    } else {
        Mark::Received
    };
    state
        .history
        .mark(&user.id, &peer.id, mark, &body.id)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "received": body.id })))
}

async fn rooms(req: HttpRequest, state: web::Data<AppState>) -> ApiResult {
    let (_, user) = signed_in(&req, &state).await?;
    let mine = state.im.client_chans(&user.id).await?;
    let mut list = Vec::new();
    for room in ROOMS {
        let online = state.im.chan_online(room).await?;
        let joined = mine.iter().any(|c| c.as_str() == room);
        list.push(json!({ "name": room, "online": online, "joined": joined }));
    }
    Ok(HttpResponse::Ok().json(list))
}

async fn join(req: HttpRequest, state: web::Data<AppState>, room: web::Path<String>) -> ApiResult {
    let (_, user) = signed_in(&req, &state).await?;
    let room = room_of(&room)?;
    state.im.join_chan(&user.id, room).await?;
    Ok(HttpResponse::Ok().json(json!({ "joined": room })))
}

async fn leave(req: HttpRequest, state: web::Data<AppState>, room: web::Path<String>) -> ApiResult {
    let (_, user) = signed_in(&req, &state).await?;
    let room = room_of(&room)?;
    state.im.leave_chan(&user.id, room).await?;
    Ok(HttpResponse::Ok().json(json!({ "left": room })))
}

async fn room_history(
    req: HttpRequest,
    state: web::Data<AppState>,
    room: web::Path<String>,
) -> ApiResult {
    signed_in(&req, &state).await?;
    let room = room_of(&room)?;
    Ok(HttpResponse::Ok().json(state.history.recent(Conversation::Room(room)).await?))
}

#[derive(Debug, Deserialize)]
struct RoomText {
    text: String,
    #[serde(default)]
    retry_key: Option<String>,
}

async fn send_room(
    req: HttpRequest,
    state: web::Data<AppState>,
    room: web::Path<String>,
    body: web::Json<RoomText>,
) -> ApiResult {
    let (_, user) = signed_in(&req, &state).await?;
    let room = room_of(&room)?;
    let text = text_of(&body.text)?;
    if !state
        .im
        .client_chans(&user.id)
        .await?
        .iter()
        .any(|c| c.as_str() == room)
    {
        return Err(ApiError::Forbidden {
            code: "not_a_member",
            message: format!("Join #{room} before writing in it."),
        });
    }
    let key = retry_key_of(body.retry_key.as_deref())?;
    // The key comes back to the sender's pages with the push, which may overtake the answer
    // to this request: the page then knows the push is the message it shows as pending.
    let payload = json!({
        "kind": "chat", "text": text, "from_name": user.name, "room": room, "retry_key": key,
    });
    let (shared, sender, payload, text) = (&state, &user, &payload, &text);
    let sent = state
        .sends
        .once(&user.id, key, |id| async move {
            let report = shared
                .im
                .send_chan_message_with_id(&id, &sender.id, room, payload, false)
                .await?;
            let message = Message::sent_now(report.message_id.clone(), sender, text);
            shared
                .history
                .record(Conversation::Room(room), &message)
                .await?;
            Ok::<_, ApiError>(Sent {
                id: report.message_id,
                stored: false,
            })
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "id": sent.id })))
}
