//! The HTTP API: every imclient operation a backend needs, as `POST /api/v1/<method>` with a
//! JSON body, on a listener of its own (`--api-listen`) so that operators can keep it on an
//! internal network. It holds no business logic: each method makes the matching imclient call
//! through an `ImClient` built from the node's own settings. docs/API.md documents it.
//!
//! A request goes: path → key (401) → method (404) → HTTP method (405) → rate (429) → body
//! size (413) → JSON (400) → the call, bounded by `--api-timeout-ms` (503 on a Redis outage).
//! The parts: [`auth`] (keys and rate limits), [`params`] (reading fields, naming the bad one),
//! [`methods`] (the method table), [`connect`], [`sends`], [`channels`], [`presence`],
//! [`events`] (the pull route), [`batch`], [`errors`] (statuses and the error body), [`metrics`].

pub mod auth;
pub mod batch;
pub mod channels;
pub mod connect;
pub mod errors;
pub mod events;
pub mod methods;
pub mod metrics;
pub mod params;
pub mod presence;
pub mod sends;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_http::{HttpService, Protocol};
use actix_service::{IntoServiceFactory as _, ServiceFactoryExt as _, fn_service, map_config};
use actix_web::dev::AppConfig;
use actix_web::http::Method as HttpMethod;
use actix_web::http::header::{AUTHORIZATION, CONTENT_LENGTH};
use actix_web::{App, HttpRequest, HttpResponse, web};
use bytes::BytesMut;
use futures_util::StreamExt as _;
use imclient::token::resolve_secret;
use imclient::{ImClient, ImClientOptions, NodeId};
use serde_json::Value;
use tokio::net::TcpStream;

use crate::config::Config;
use crate::early_answer::Answering;

use self::auth::{ApiKeys, RateLimits};
use self::errors::ApiError;
use self::methods::Method;
use self::metrics::ApiMetrics;

/// Where every route lives.
pub const ROUTE_PREFIX: &str = "/api/v1/";

/// What an API worker's requests share. Each worker thread has an `ImClient` of its own, so
/// that the Redis connection its calls pipeline on is driven by the same thread: a call then
/// wakes no other thread on its way to Redis and back. Keys, rate limits and counters are
/// shared by every worker.
#[derive(Debug, Clone)]
pub struct ApiState {
    im: ImClient,
    keys: Arc<ApiKeys>,
    limits: Arc<RateLimits>,
    metrics: Arc<ApiMetrics>,
    /// Longest a call may take.
    timeout: Duration,
    max_body_bytes: usize,
    max_batch: usize,
    /// Whether the node holds a secret to sign connect tokens with (not with public keys only).
    can_sign: bool,
}

/// A running API listener.
#[derive(Debug)]
pub struct ApiServer {
    handle: actix_server::ServerHandle,
    metrics: Arc<ApiMetrics>,
}

impl ApiServer {
    /// The API's counters, for the node's `/metrics`.
    pub fn metrics(&self) -> Arc<ApiMetrics> {
        self.metrics.clone()
    }

    /// Stops accepting and waits, at most `within`, for calls under way to finish.
    pub async fn stop(&self, within: Duration) {
        if tokio::time::timeout(within, self.handle.stop(true))
            .await
            .is_err()
        {
            tracing::warn!("HTTP API calls still under way at shutdown were cut off");
        }
    }
}

/// The imclient the API calls through: the node's Redis and its timeouts, prefix and node
/// list (this node alone when the node has no `--nodes`), signing with the node's secret. Also
/// whether it can sign: a node with public keys only cannot.
pub fn client(config: &Config, node: &NodeId) -> imclient::Result<(ImClient, bool)> {
    let nodes: Vec<String> = if config.nodes.is_empty() {
        vec![node.to_string()]
    } else {
        config.nodes.iter().map(|n| n.trim().to_owned()).collect()
    };
    let (secret, can_sign) = match resolve_secret(config.token_secret.as_deref(), config.dev) {
        Ok(secret) => (secret, true),
        // ImClient wants some secret; a random one nothing accepts, never used (connect_url
        // answers 501 first).
        Err(_) => (
            format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
            false,
        ),
    };
    let im = ImClient::new(
        ImClientOptions::new(&config.redis_url, nodes, secret)
            .key_prefix(&config.key_prefix)
            .redis_timeouts(config.redis_timeouts()),
    )?;
    Ok((im, can_sign))
}

/// Serves the API on `listener` until stopped, for the node `node`.
pub fn start(
    config: &Config,
    node: &NodeId,
    listener: TcpListener,
    node_metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> crate::error::Result<ApiServer> {
    let (im, can_sign) = client(config, node).map_err(crate::error::Error::Api)?;
    let addr = listener.local_addr()?;
    let keys = ApiKeys::new(&config.api_keys);
    if keys.open() {
        tracing::warn!(api = %addr, "DEV MODE: the HTTP API takes calls without a key");
    }
    let metrics = Arc::new(ApiMetrics::default());
    let state = ApiState {
        im,
        limits: Arc::new(RateLimits::new(
            config.api_rate,
            config.api_burst,
            keys.count(),
        )),
        keys: Arc::new(keys),
        metrics: metrics.clone(),
        timeout: Duration::from_millis(config.api_timeout_ms),
        max_body_bytes: config.api_max_body_bytes,
        max_batch: config.api_max_batch,
        can_sign,
    };
    let (worker_config, worker_node) = (config.clone(), node.clone());
    let head_timeout = Duration::from_millis(config.request_head_timeout_ms);
    let mut http = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(1);
    if let Some(workers) = config.workers {
        http = http.workers(workers);
    }
    // The same HTTP/1 pipeline as the node's own listener, `Answering` included, so that the
    // answers actix-http writes by itself carry JSON bodies here too.
    let server = http
        .listen("imserver-api", listener, move || {
            // The first client was built from the same settings, so this cannot fail; should
            // it, the worker shares the first client's connection.
            let im = client(&worker_config, &worker_node)
                .map(|(im, _)| im)
                .unwrap_or_else(|_| state.im.clone());
            let state = web::Data::new(ApiState {
                im,
                ..state.clone()
            });
            let app = App::new()
                .app_data(state)
                .default_service(web::to(dispatch))
                .into_factory()
                .map_err(|e: actix_web::Error| e.error_response());
            let service = HttpService::build()
                .client_request_timeout(head_timeout)
                .finish(map_config(app, |_| AppConfig::default()));
            let node_metrics = node_metrics.clone();
            fn_service(move |io: TcpStream| {
                let metrics = node_metrics.clone();
                async move {
                    let peer = io.peer_addr().ok();
                    Ok((Answering::new(io, metrics), Protocol::Http1, peer))
                }
            })
            .and_then(service)
        })?
        .run();
    let handle = server.handle();
    tokio::spawn(server);
    tracing::info!(%addr, node = %node, "HTTP API listening");
    Ok(ApiServer { handle, metrics })
}

/// Every request: answered, counted by route and status, logged without its key.
async fn dispatch(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let (route, answer) = answer(&req, body, &state).await;
    let response = answer.unwrap_or_else(|e| e.response());
    let status = response.status().as_u16();
    state.metrics.request(route, status);
    tracing::debug!(route, status, "HTTP API call");
    response
}

async fn answer(
    req: &HttpRequest,
    body: web::Payload,
    state: &ApiState,
) -> (&'static str, Result<HttpResponse, ApiError>) {
    let Some(name) = req.path().strip_prefix(ROUTE_PREFIX) else {
        return ("unknown", Err(ApiError::not_found(req.path())));
    };
    let method = Method::from_name(name);
    let route = method.map_or("unknown", Method::name);
    let header = |name: &str| req.headers().get(name).map(|v| v.as_bytes());
    let slot = match state
        .keys
        .check(header(AUTHORIZATION.as_str()), header("x-api-key"))
    {
        Ok(slot) => slot,
        Err(e) => return (route, Err(e)),
    };
    let Some(method) = method else {
        return (route, Err(ApiError::not_found(req.path())));
    };
    if req.method() != HttpMethod::POST {
        return (
            route,
            Err(ApiError::method_not_allowed(req.method().as_str())),
        );
    }
    if let Err(e) = state.limits.take(slot) {
        return (route, Err(e));
    }
    let answer = async {
        let body = read_body(req, body, state).await?;
        if method == Method::Batch {
            return batch::run(state, body).await;
        }
        let result = methods::call(state, method, body).await?;
        Ok(HttpResponse::Ok().json(result))
    };
    (route, answer.await)
}

/// The body as JSON (`null` when empty), within the size limit and the timeout.
async fn read_body(
    req: &HttpRequest,
    mut body: web::Payload,
    state: &ApiState,
) -> Result<Value, ApiError> {
    let limit = state.max_body_bytes;
    let too_large = || {
        ApiError::new(
            413,
            "body_too_large",
            format!(
                "the request body is over {limit} bytes (--api-max-body-bytes); send less, or \
                 split a batch"
            ),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let read = async {
        let mut bytes = BytesMut::with_capacity(declared.unwrap_or(0));
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(400, "invalid_body", format!("cannot read the body: {e}"))
            })?;
            if bytes.len() + chunk.len() > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    let bytes = tokio::time::timeout(state.timeout, read)
        .await
        .map_err(|_| {
            ApiError::new(
                408,
                "body_timeout",
                "the request body did not arrive in time; send it at once",
            )
        })??;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            400,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
    })
}
