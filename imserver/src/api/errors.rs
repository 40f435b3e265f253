//! The HTTP API's refusals: one error body shape for every one of them (the node's own,
//! `{"error": code, "message": what to do}`, plus `field` when one field is at fault), and the
//! mapping from `imclient::Error` to an HTTP status.

use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{ALLOW, RETRY_AFTER, WWW_AUTHENTICATE};
use serde_json::{Map, Value, json};

/// Seconds a caller is told to wait after Redis was unavailable: the node's own Redis
/// reconnects retry about this often.
pub const REDIS_RETRY_AFTER_SECS: u64 = 1;

/// A refused or failed API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable code, e.g. `invalid_client_id`.
    pub code: &'static str,
    /// What happened and what to do about it.
    pub message: String,
    /// The request field at fault, e.g. `receivers[2]`.
    pub field: Option<String>,
    /// Seconds to wait before retrying (`Retry-After`), for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error without a field.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// A 400 naming `field`.
    pub fn bad_field(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(400, code, message).at(field)
    }

    /// The same error, naming `field` (kept if one is already named).
    pub fn at(mut self, field: impl Into<String>) -> Self {
        if self.field.is_none() {
            self.field = Some(field.into());
        }
        self
    }

    /// 401: no key, or not one of the configured keys. The message never echoes the key.
    pub fn unauthorized() -> Self {
        Self::new(
            401,
            "unauthorized",
            "missing or wrong API key: send one of the node's --api-key values as \
             `Authorization: Bearer <key>`",
        )
    }

    /// 404 for a path or method name the API does not have.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            404,
            "not_found",
            format!("no API route {path:?}: calls are POST /api/v1/<method>, see docs/API.md"),
        )
    }

    /// 405 for a known route asked with another HTTP method.
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "method_not_allowed",
            format!("{method} is not allowed here: every API call is a POST with a JSON body"),
        )
    }

    /// 429: the key's request budget is spent for now.
    pub fn rate_limited(retry_after: Duration) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let mut e = Self::new(
            429,
            "rate_limited",
            "this API key sent more requests than --api-rate allows; retry after Retry-After \
             seconds, or batch sends",
        );
        e.retry_after = Some(secs.max(1));
        e
    }

    /// 503: Redis did not answer in time, or not at all.
    pub fn redis_unavailable(detail: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            503,
            "redis_unavailable",
            format!(
                "Redis is unavailable ({detail}); retry after Retry-After seconds. If this was \
                 a send, it may still have gone out: retry it with the same message_id so \
                 clients show it once"
            ),
        );
        e.retry_after = Some(REDIS_RETRY_AFTER_SECS);
        e
    }

    /// The JSON body: `{"error": code, "message": ..., "field": ...}`.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("error".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        if let Some(field) = &self.field {
            body.insert("field".into(), json!(field));
        }
        Value::Object(body)
    }

    /// The whole HTTP answer, with `Retry-After`, `Allow` or `WWW-Authenticate` as the status
    /// calls for.
    pub fn response(&self) -> HttpResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut answer = HttpResponse::build(status);
        if let Some(secs) = self.retry_after {
            answer.insert_header((RETRY_AFTER, secs.to_string()));
        }
        match self.status {
            405 => {
                answer.insert_header((ALLOW, "POST"));
            }
            401 => {
                answer.insert_header((WWW_AUTHENTICATE, "Bearer realm=\"imserver-api\""));
            }
            _ => {}
        }
        answer.json(self.body())
    }
}

impl From<imclient::Error> for ApiError {
    fn from(e: imclient::Error) -> Self {
        use imclient::Error as E;
        match &e {
            E::ClientId { .. } => Self::new(400, "invalid_client_id", e.to_string()),
            E::ChanName { .. } => Self::new(400, "invalid_chan", e.to_string()),
            E::InvalidMessageId(_) => {
                Self::bad_field("invalid_message_id", "message_id", e.to_string())
            }
            E::NoReceivers => Self::bad_field("no_receivers", "receivers", e.to_string()),
            E::Payload(_) => Self::bad_field("invalid_payload", "payload", e.to_string()),
            E::PayloadTooLarge { .. } => {
                Self::new(413, "payload_too_large", e.to_string()).at("payload")
            }
            E::Pool(_) => Self::redis_unavailable(&e),
            E::Redis(r)
                if r.is_io_error()
                    || r.is_connection_dropped()
                    || r.is_timeout()
                    || r.is_connection_refusal()
                    || r.is_cluster_error() =>
            {
                Self::redis_unavailable(&e)
            }
            _ => {
                tracing::warn!(error = %e, "HTTP API call failed");
                Self::new(500, "internal", e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_have_the_nodes_shape_and_name_the_field() {
        let e = ApiError::from(imclient::ClientId::new("").map(|_| ()).unwrap_err()).at("sender");
        assert_eq!(e.status, 400);
        assert_eq!(e.body()["error"], "invalid_client_id");
        assert_eq!(e.body()["field"], "sender");
        assert!(ApiError::unauthorized().body().get("field").is_none());
    }

    #[test]
    fn rate_limit_answers_round_the_wait_up() {
        let e = ApiError::rate_limited(Duration::from_millis(1200));
        assert_eq!(e.retry_after, Some(2));
        assert_eq!(ApiError::rate_limited(Duration::ZERO).retry_after, Some(1));
    }
}
