//! The business API the page calls. It owns users and rooms and decides who may talk; imclient
//! carries what it decides to the browsers. Errors are JSON `{"error": "<code>", "message": "..."}`
//! with a status.

use std::sync::Arc;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use imclient::ImClient;
use serde::Deserialize;
use serde_json::json;

use crate::rooms::{ROOMS, RoomMessage, Rooms};
use crate::sends::{MAX_KEY_CHARS, Sends};
use crate::users::{User, Users, clean_name};

/// The session cookie.
pub const COOKIE: &str = "demo_session";
/// Longest message text, in characters.
pub const MAX_TEXT_CHARS: usize = 1000;

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The IM.
    pub im: ImClient,
    /// Signed-in users.
    pub users: Arc<Users>,
    /// Rooms and their history.
    pub rooms: Arc<Rooms>,
    /// Recent sends by retry key.
    pub sends: Arc<Sends>,
}

/// Registers the API routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/prev-connect-imserver", web::get().to(connect_url))
        .route("/api/signin", web::post().to(sign_in))
        .route("/api/signout", web::post().to(sign_out))
        .route("/api/me", web::get().to(me))
        .route("/api/online", web::get().to(online))
        .route("/api/messages", web::post().to(send_private))
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
    #[error("sign in first")]
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
    #[error("send the body as JSON, with content-type: application/json")]
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
    #[error("messaging is unavailable: {0}")]
    Im(#[from] imclient::Error),
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
            ApiError::Im(_) => "unavailable",
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
            ApiError::Im(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Im(e) = self {
            tracing::warn!(error = %e, "imclient call failed");
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
                message: format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
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
            ApiError::bad("invalid_json", format!("the body is not valid JSON: {e}"))
        }
        other => ApiError::bad("invalid_body", other.to_string()),
    }
}

/// The answer to a path that is no page or API call: JSON like every other refusal.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::NotFound {
        code: "not_found",
        message: format!("no {} {}", req.method(), req.path()),
    }
    .error_response()
}

type ApiResult = Result<HttpResponse, ApiError>;

fn signed_in(req: &HttpRequest, state: &AppState) -> Result<(String, User), ApiError> {
    let token = req
        .cookie(COOKIE)
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    state
        .users
        .by_session(&token)
        .map(|user| (token, user))
        .ok_or(ApiError::SignedOut)
}

fn room_of(name: &str) -> Result<&'static str, ApiError> {
    Rooms::find(name).ok_or_else(|| ApiError::NotFound {
        code: "unknown_room",
        message: format!("no room {name:?}; rooms are {}", ROOMS.join(", ")),
    })
}

fn text_of(text: &str) -> Result<String, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        Err(ApiError::bad("text_empty", "text is empty"))
    } else if text.chars().count() > MAX_TEXT_CHARS {
        Err(ApiError::TooLarge {
            code: "text_too_long",
            message: format!("text is longer than {MAX_TEXT_CHARS} characters"),
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
            format!("retry_key must be 1 to {MAX_KEY_CHARS} characters"),
        )),
        k => Ok(k),
    }
}

#[derive(Debug, Deserialize)]
struct SignIn {
    name: String,
}

async fn sign_in(state: web::Data<AppState>, body: web::Json<SignIn>) -> ApiResult {
    let name = clean_name(&body.name).map_err(|e| ApiError::bad(e.code(), e.to_string()))?;
    let (token, user) = state.users.sign_in(name);
    let cookie = Cookie::build(COOKIE, token)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    Ok(HttpResponse::Ok().cookie(cookie).json(user))
}

async fn sign_out(req: HttpRequest, state: web::Data<AppState>) -> ApiResult {
    let (token, user) = signed_in(&req, &state)?;
    state.users.sign_out(&token);
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
    let user = match signed_in(&req, &state) {
        Ok((_, user)) => user,
        Err(ApiError::SignedOut) => return Ok(HttpResponse::NoContent().finish()),
        Err(e) => return Err(e),
    };
    let node = state.im.home_node(&user.id)?.to_string();
    Ok(HttpResponse::Ok().json(json!({ "id": user.id, "name": user.name, "node": node })))
}

async fn connect_url(req: HttpRequest, state: web::Data<AppState>) -> ApiResult {
    let (_, user) = signed_in(&req, &state)?;
    let url = state
        .im
        .prev_connect_server(&user.id, json!({ "name": user.name }))?;
    Ok(HttpResponse::Ok().json(json!({ "url": url })))
}

async fn online(req: HttpRequest, state: web::Data<AppState>) -> ApiResult {
    signed_in(&req, &state)?;
    let ids = state.im.online_clients().await?;
    let list: Vec<User> = ids
        .iter()
        .filter_map(|id| state.users.by_id(id.as_str()))
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

#[derive(Debug, Deserialize)]
struct Private {
    to: String,
    text: String,
    #[serde(default)]
    retry_key: Option<String>,
}

async fn send_private(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Private>,
) -> ApiResult {
    let (_, user) = signed_in(&req, &state)?;
    let text = text_of(&body.text)?;
    let to = state
        .users
        .by_id(&body.to)
        .ok_or_else(|| ApiError::NotFound {
            code: "unknown_user",
            message: format!("no user {:?}", body.to),
        })?;
    // The page has no conversation with oneself to show it in: refused rather than lost.
    if to.id == user.id {
        return Err(ApiError::bad(
            "self_message",
            "you cannot send a private message to yourself",
        ));
    }
    let key = retry_key_of(body.retry_key.as_deref())?;
    let payload = json!({ "kind": "chat", "text": text, "from_name": user.name, "to": to.id });
    let (im, sender, receiver, payload) = (&state.im, &user.id, &to.id, &payload);
    let id = state
        .sends
        .once(&user.id, key, |id| async move {
            let report = im
                .send_message_with_id(&id, sender, [receiver], payload, true)
                .await?;
            Ok::<_, ApiError>(report.message_id)
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "id": id })))
}

async fn rooms(req: HttpRequest, state: web::Data<AppState>) -> ApiResult {
    let (_, user) = signed_in(&req, &state)?;
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
    let (_, user) = signed_in(&req, &state)?;
    let room = room_of(&room)?;
    state.im.join_chan(&user.id, room).await?;
    Ok(HttpResponse::Ok().json(json!({ "joined": room })))
}

async fn leave(req: HttpRequest, state: web::Data<AppState>, room: web::Path<String>) -> ApiResult {
    let (_, user) = signed_in(&req, &state)?;
    let room = room_of(&room)?;
    state.im.leave_chan(&user.id, room).await?;
    Ok(HttpResponse::Ok().json(json!({ "left": room })))
}

async fn room_history(
    req: HttpRequest,
    state: web::Data<AppState>,
    room: web::Path<String>,
) -> ApiResult {
    signed_in(&req, &state)?;
    let room = room_of(&room)?;
    Ok(HttpResponse::Ok().json(state.rooms.recent(room)))
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
    let (_, user) = signed_in(&req, &state)?;
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
            message: format!("join {room} before writing to it"),
        });
    }
    let key = retry_key_of(body.retry_key.as_deref())?;
    // The key comes back to the sender's pages with the push, which may overtake the answer
    // to this request: the page then knows the push is the message it shows as pending.
    let payload = json!({
        "kind": "chat", "text": text, "from_name": user.name, "room": room, "retry_key": key,
    });
    let (shared, sender, payload, text) = (&state, &user, &payload, &text);
    let id = state
        .sends
        .once(&user.id, key, |id| async move {
            let report = shared
                .im
                .send_chan_message_with_id(&id, &sender.id, room, payload, false)
                .await?;
            let message = RoomMessage {
                id: report.message_id.clone(),
                from: sender.id.clone(),
                from_name: sender.name.clone(),
                text: text.clone(),
                ts: imclient::now_ms(),
            };
            shared.rooms.record(room, message);
            Ok::<_, ApiError>(report.message_id)
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "id": id })))
}
