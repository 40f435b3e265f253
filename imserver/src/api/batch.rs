//! `batch`: many calls in one request, made in order and answered one reply per item, so a
//! caller knows exactly which went out. After an item finds Redis unavailable the rest are not
//! attempted (each would wait out the timeout too) and say so.

use actix_web::HttpResponse;
use actix_web::http::header::RETRY_AFTER;
use serde_json::{Map, Value, json};

use super::ApiState;
use super::errors::{ApiError, REDIS_RETRY_AFTER_SECS};
use super::methods::{Method, call};
use super::params::Params;

/// `{requests: [{method, params}]}` → `{replies: [{status, result} | {status, error, message,
/// field?}]}`, 200 whatever the items' statuses.
pub async fn run(state: &ApiState, body: Value) -> Result<HttpResponse, ApiError> {
    let p = Params::new(body, &["requests"])?;
    p.payload("requests")?;
    let Some(Value::Array(requests)) = p.into_fields().remove("requests") else {
        return Err(ApiError::bad_field(
            "invalid_type",
            "requests",
            "requests must be an array of {\"method\": ..., \"params\": {...}}",
        ));
    };
    if requests.len() > state.max_batch {
        return Err(ApiError::new(
            413,
            "batch_too_large",
            format!(
                "the batch holds {} calls, over the limit of {} (--api-max-batch); split it",
                requests.len(),
                state.max_batch
            ),
        )
        .at("requests"));
    }
    let mut replies = Vec::with_capacity(requests.len());
    let mut redis_down = false;
    for item in requests {
        let (name, answer) = match item_call(item) {
            Err(e) => ("unknown", Err(e)),
            Ok((method, _)) if redis_down => (method.name(), Err(not_attempted())),
            Ok((method, params)) => (method.name(), call(state, method, params).await),
        };
        let reply = match answer {
            Ok(result) => json!({ "status": 200, "result": result }),
            Err(e) => {
                redis_down |= e.status == 503;
                let mut body = e.body();
                if let Value::Object(fields) = &mut body {
                    fields.insert("status".into(), json!(e.status));
                }
                body
            }
        };
        let status = reply["status"].as_u64().and_then(|s| u16::try_from(s).ok());
        state.metrics.batch_item(name, status.unwrap_or(500));
        replies.push(reply);
    }
    let mut answer = HttpResponse::Ok();
    if redis_down {
        answer.insert_header((RETRY_AFTER, REDIS_RETRY_AFTER_SECS.to_string()));
    }
    Ok(answer.json(json!({ "replies": replies })))
}

/// An item's method and params.
fn item_call(item: Value) -> Result<(Method, Value), ApiError> {
    let p = Params::new(item, &["method", "params"])?;
    let name = p.opt_string("method")?.ok_or_else(|| {
        ApiError::bad_field("missing_field", "method", "every batch item needs a method")
    })?;
    let method = Method::from_name(&name).ok_or_else(|| {
        ApiError::bad_field(
            "unknown_method",
            "method",
            format!("no API method {name:?}; see docs/API.md"),
        )
    })?;
    let mut fields: Map<String, Value> = p.into_fields();
    Ok((method, fields.remove("params").unwrap_or(Value::Null)))
}

fn not_attempted() -> ApiError {
    let mut e = ApiError::new(
        503,
        "not_attempted",
        "not attempted: an earlier item of this batch found Redis unavailable; retry this one",
    );
    e.retry_after = Some(REDIS_RETRY_AFTER_SECS);
    e
}
