//! The business API the page calls. It owns users and rooms and decides who may talk; imclient
//! carries what it decides to the browsers. Errors are JSON `{"error": "..."}` with a status.

use std::sync::Arc;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use imclient::ImClient;
use serde::Deserialize;
use serde_json::json;

use crate::rooms::{ROOMS, RoomMessage, Rooms};
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

fn error(status: StatusCode, message: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message.to_string() }))
}

fn im_error(e: imclient::Error) -> HttpResponse {
    tracing::warn!(error = %e, "imclient call failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("messaging is unavailable: {e}"),
    )
}

fn signed_in(req: &HttpRequest, state: &AppState) -> Result<(String, User), HttpResponse> {
    let token = req
        .cookie(COOKIE)
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    state
        .users
        .by_session(&token)
        .map(|user| (token, user))
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "sign in first"))
}

fn room_of(name: &str) -> Result<&'static str, HttpResponse> {
    Rooms::find(name).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("no room {name:?}; rooms are {}", ROOMS.join(", ")),
        )
    })
}

fn text_of(text: &str) -> Result<String, HttpResponse> {
    let text = text.trim();
    if text.is_empty() {
        Err(error(StatusCode::BAD_REQUEST, "text is empty"))
    } else if text.chars().count() > MAX_TEXT_CHARS {
        Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("text is longer than {MAX_TEXT_CHARS} characters"),
        ))
    } else {
        Ok(text.to_owned())
    }
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(response) => return response,
        }
    };
}

#[derive(Debug, Deserialize)]
struct SignIn {
    name: String,
}

async fn sign_in(state: web::Data<AppState>, body: web::Json<SignIn>) -> HttpResponse {
    let name = match clean_name(&body.name) {
        Ok(name) => name,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (token, user) = state.users.sign_in(name);
    let cookie = Cookie::build(COOKIE, token)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    HttpResponse::Ok().cookie(cookie).json(user)
}

async fn sign_out(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let (token, user) = tri!(signed_in(&req, &state));
    state.users.sign_out(&token);
    // The business ends the session, so its sockets go too: the IM reports it offline.
    if let Err(e) = state.im.force_offline(&user.id).await {
        return im_error(e);
    }
    let mut gone = Cookie::build(COOKIE, "").path("/").finish();
    gone.make_removal();
    HttpResponse::Ok()
        .cookie(gone)
        .json(json!({ "signed_out": user.id }))
}

async fn me(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let (_, user) = tri!(signed_in(&req, &state));
    let node = state
        .im
        .home_node(&user.id)
        .map(|n| n.to_string())
        .unwrap_or_default();
    HttpResponse::Ok().json(json!({ "id": user.id, "name": user.name, "node": node }))
}

async fn connect_url(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let (_, user) = tri!(signed_in(&req, &state));
    match state
        .im
        .prev_connect_server(&user.id, json!({ "name": user.name }))
    {
        Ok(url) => HttpResponse::Ok().json(json!({ "url": url })),
        Err(e) => im_error(e),
    }
}

async fn online(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    tri!(signed_in(&req, &state));
    match state.im.online_clients().await {
        Ok(ids) => {
            let list: Vec<User> = ids
                .iter()
                .filter_map(|id| state.users.by_id(id.as_str()))
                .collect();
            HttpResponse::Ok().json(list)
        }
        Err(e) => im_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct Private {
    to: String,
    text: String,
}

async fn send_private(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Private>,
) -> HttpResponse {
    let (_, user) = tri!(signed_in(&req, &state));
    let text = tri!(text_of(&body.text));
    let Some(to) = state.users.by_id(&body.to) else {
        return error(StatusCode::NOT_FOUND, format!("no user {:?}", body.to));
    };
    let payload = json!({ "kind": "chat", "text": text, "from_name": user.name, "to": to.id });
    match state
        .im
        .send_message(&user.id, [&to.id], &payload, true)
        .await
    {
        Ok(report) => HttpResponse::Ok().json(json!({ "id": report.message_id })),
        Err(e) => im_error(e),
    }
}

async fn rooms(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let (_, user) = tri!(signed_in(&req, &state));
    let mine = match state.im.client_chans(&user.id).await {
        Ok(chans) => chans,
        Err(e) => return im_error(e),
    };
    let mut list = Vec::new();
    for room in ROOMS {
        let online = match state.im.chan_online(room).await {
            Ok(n) => n,
            Err(e) => return im_error(e),
        };
        let joined = mine.iter().any(|c| c.as_str() == room);
        list.push(json!({ "name": room, "online": online, "joined": joined }));
    }
    HttpResponse::Ok().json(list)
}

async fn join(
    req: HttpRequest,
    state: web::Data<AppState>,
    room: web::Path<String>,
) -> HttpResponse {
    let (_, user) = tri!(signed_in(&req, &state));
    let room = tri!(room_of(&room));
    match state.im.join_chan(&user.id, room).await {
        Ok(()) => HttpResponse::Ok().json(json!({ "joined": room })),
        Err(e) => im_error(e),
    }
}

async fn leave(
    req: HttpRequest,
    state: web::Data<AppState>,
    room: web::Path<String>,
) -> HttpResponse {
    let (_, user) = tri!(signed_in(&req, &state));
    let room = tri!(room_of(&room));
    match state.im.leave_chan(&user.id, room).await {
        Ok(()) => HttpResponse::Ok().json(json!({ "left": room })),
        Err(e) => im_error(e),
    }
}

async fn room_history(
    req: HttpRequest,
    state: web::Data<AppState>,
    room: web::Path<String>,
) -> HttpResponse {
    tri!(signed_in(&req, &state));
    let room = tri!(room_of(&room));
    HttpResponse::Ok().json(state.rooms.recent(room))
}

#[derive(Debug, Deserialize)]
struct RoomText {
    text: String,
}

async fn send_room(
    req: HttpRequest,
    state: web::Data<AppState>,
    room: web::Path<String>,
    body: web::Json<RoomText>,
) -> HttpResponse {
    let (_, user) = tri!(signed_in(&req, &state));
    let room = tri!(room_of(&room));
    let text = tri!(text_of(&body.text));
    match state.im.client_chans(&user.id).await {
        Ok(chans) if chans.iter().any(|c| c.as_str() == room) => {}
        Ok(_) => {
            return error(
                StatusCode::FORBIDDEN,
                format!("join {room} before writing to it"),
            );
        }
        Err(e) => return im_error(e),
    }
    let payload = json!({ "kind": "chat", "text": text, "from_name": user.name, "room": room });
    match state
        .im
        .send_chan_message(&user.id, room, &payload, false)
        .await
    {
        Ok(report) => {
            state.rooms.record(
                room,
                RoomMessage {
                    id: report.message_id.clone(),
                    from: user.id,
                    from_name: user.name,
                    text,
                    ts: imclient::now_ms(),
                },
            );
            HttpResponse::Ok().json(json!({ "id": report.message_id }))
        }
        Err(e) => im_error(e),
    }
}
