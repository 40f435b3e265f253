//! Starting and stopping a node: wire the node state, start the broker and the presence writer,
//! serve HTTP on the given listener, and on shutdown run the steps in order — stop accepting,
//! give up the lease, hand every client to the live node that wins it (closing its sockets with
//! 4003) and pass on what still arrives for them for the grace period, or close them with 1001
//! when no other node is live; then clear this node's presence (emitting offline events for
//! those that did not move), stop the broker — bounded by the shutdown timeout.

use std::future::Future;
use std::net::TcpListener;

use actix_http::{HttpService, Protocol};
use actix_service::{IntoServiceFactory as _, ServiceFactoryExt as _, fn_service, map_config};
use actix_tls::accept::rustls_0_23::Acceptor;
use actix_web::dev::AppConfig;
use actix_web::{App, web};
use imclient::NodeId;
use imclient::contract::CloseCode;
use imclient::store::Store;
use tokio::sync::watch;
use tokio::time::timeout;

use crate::config::Config;
use crate::early_answer::Answering;
use crate::error::Result;
use crate::node::Node;
use crate::tasks::{bad_requests, broker, follower, membership, presence, sweeper, webhook};
use crate::{handshake, route, tls};
use actix_tls::accept::rustls_0_23::TlsStream;
use tokio::net::TcpStream;

/// The node id for `config` once bound to `listener`: `--node`, or `ws://<bound address>`.
pub fn node_id(config: &Config, listener: &TcpListener) -> Result<NodeId> {
    let scheme = if config.tls_cert.is_some() {
        "wss"
    } else {
        "ws"
    };
    let id = match &config.node {
        Some(node) => node.clone(),
        None => format!("{scheme}://{}", listener.local_addr()?),
    };
    Ok(NodeId::new(id)?)
}

/// Serves a node on `listener` until `shutdown` completes, then shuts down gracefully.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    run_with_api(config, listener, None, shutdown).await
}

/// [`run`], serving the HTTP API on `api` too when given (`--api-listen`). The API stops
/// first at shutdown, so that no call is made while sessions close.
pub async fn run_with_api(
    config: Config,
    listener: TcpListener,
    api: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let verifier = config.validate()?;
    let id = node_id(&config, &listener)?;
    let store = Store::open_with(&config.redis_url, config.redis_timeouts())
        .map_err(crate::error::Error::Store)?;
    let node = Node::new(&config, id, verifier, store.clone())?;
    let api = api
        .map(|api| crate::api::start(&config, node.id(), api, node.metrics().clone()))
        .transpose()?;
    let api_metrics = api.as_ref().map(crate::api::ApiServer::metrics);
    let (stop_tx, stop_rx) = watch::channel(false);

    let commands = broker::Broker {
        id: node.id().clone(),
        keys: node.keys().clone(),
        hub: node.hub().clone(),
        work: node.work().clone(),
        metrics: node.metrics().clone(),
        nodes: node.nodes().clone(),
        health: node.health().clone(),
    };
    let broker = tokio::spawn(broker::run(
        commands.clone(),
        store.clone(),
        stop_rx.clone(),
    ));
    let writing = presence::Presence {
        id: node.id().clone(),
        epoch: node.epoch().to_owned(),
        keys: node.keys().clone(),
        hub: node.hub().clone(),
        work: node.work().clone(),
        nodes: node.nodes().clone(),
        metrics: node.metrics().clone(),
        health: node.health().clone(),
        lease: node.lease(),
        events_maxlen: node.events_maxlen(),
    };
    let (release_tx, release_rx) = watch::channel(false);
    let (released_tx, mut released_rx) = watch::channel(false);
    let writer = tokio::spawn(presence::run(
        writing.clone(),
        store.clone(),
        stop_rx.clone(),
        presence::Release {
            asked: release_rx,
            done: released_tx,
        },
    ));
    let loader = tokio::spawn(membership::run(
        membership::Loader {
            node: node.id().clone(),
            keys: node.keys().clone(),
            hub: node.hub().clone(),
            work: node.work().clone(),
            metrics: node.metrics().clone(),
            fault_delay: node.limits().fault_membership_delay,
        },
        store.clone(),
        stop_rx.clone(),
    ));
    let sweeper = tokio::spawn(sweeper::run(
        sweeper::Sweeper {
            node: node.id().clone(),
            hub: node.hub().clone(),
            admission: node.admission().clone(),
            metrics: node.metrics().clone(),
        },
        stop_rx.clone(),
    ));
    // Ends with the others at `stop`; it holds nothing to wait for.
    tokio::spawn(bad_requests::run(
        node.id().clone(),
        node.metrics().clone(),
        stop_rx.clone(),
    ));
    let acker = tokio::spawn(broker::run_publisher(
        commands,
        store.clone(),
        stop_rx.clone(),
    ));
    let following = follower::Follower {
        node: node.id().clone(),
        keys: node.keys().clone(),
        nodes: node.nodes().clone(),
        hub: node.hub().clone(),
        work: node.work().clone(),
        metrics: node.metrics().clone(),
        health: node.health().clone(),
    };
    let follower = tokio::spawn(follower::run(
        following.clone(),
        store.clone(),
        stop_rx.clone(),
    ));
    let webhooks = webhook::Settings::from_config(&config)?;
    if let Some(settings) = &webhooks {
        if !settings.signed() {
            tracing::warn!(node = %node.id(), "DEV MODE: webhooks are posted unsigned; give --webhook-secret");
        }
        // Before serving, so that the first client's events are the group's; when Redis is
        // not there yet, the sender creates it once it is.
        let created = timeout(
            std::time::Duration::from_secs(2),
            webhook::create_group(node.keys(), &store),
        )
        .await;
        if !matches!(created, Ok(Ok(()))) {
            tracing::warn!(node = %node.id(), "cannot create the webhook consumer group yet; events before it exists are not posted");
        }
    }
    let webhooks = webhooks.map(|settings| {
        tokio::spawn(webhook::run(
            webhook::Webhook {
                node: node.id().clone(),
                keys: node.keys().clone(),
                metrics: node.metrics().clone(),
                settings: std::sync::Arc::new(settings),
            },
            store.clone(),
            stop_rx.clone(),
        ))
    });

    // actix-server with actix-http's HTTP/1 service, as actix-web's HttpServer builds it, plus
    // an upgrade service: WebSocket upgrades go to `handshake` with the socket itself; every
    // other request goes to the actix-web routes. With TLS, rustls sits under both.
    let certs = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::Certs::load(cert, key)?),
        _ => None,
    };
    let tls = certs.as_ref().map(|c| c.server_config()).transpose()?;
    let reloader = tokio::spawn(tls::reload_on_hangup(
        node.id().clone(),
        certs,
        stop_rx.clone(),
    ));
    let mut http = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(1)
        .backlog(4096);
    if let Some(workers) = config.workers {
        http = http.workers(workers);
    }
    let app_node = node.clone();
    let app = move || {
        let api_metrics = api_metrics.clone();
        App::new()
            .app_data(web::Data::new(app_node.clone()))
            .configure(move |cfg| {
                if let Some(metrics) = api_metrics {
                    cfg.app_data(web::Data::from(metrics));
                }
            })
            .configure(route::configure)
            .into_factory()
            .map_err(|e: actix_web::Error| e.error_response())
    };
    let ws_node = node.clone();
    let head_timeout = std::time::Duration::from_millis(config.request_head_timeout_ms);
    // Both pipelines wrap the connection in `Answering` for its HTTP phase, so the answers
    // actix-http writes by itself carry JSON bodies too.
    let http = match &tls {
        Some(server_config) => {
            let server_config = server_config.clone();
            http.listen("imserver", listener, move || {
                let ws_node = ws_node.clone();
                let answer_metrics = ws_node.metrics().clone();
                let upgrade = fn_service(move |(req, framed)| {
                    handshake::upgrade::<Answering<TlsStream<TcpStream>>>(
                        ws_node.clone(),
                        req,
                        framed,
                    )
                });
                let service = HttpService::build()
                    .client_request_timeout(head_timeout)
                    .upgrade(upgrade)
                    .finish(map_config(app(), |_| AppConfig::default()));
                Acceptor::new(server_config.clone())
                    .map_init_err(|_| ())
                    .map_err(|e| tracing::debug!(error = ?e, "TLS handshake failed"))
                    .and_then(fn_service(move |io: TlsStream<TcpStream>| {
                        let metrics = answer_metrics.clone();
                        async move {
                            let peer = io.get_ref().0.peer_addr().ok();
                            Ok::<_, ()>((Answering::new(io, metrics), Protocol::Http1, peer))
                        }
                    }))
                    .and_then(
                        service.map_err(|e| tracing::debug!(error = ?e, "HTTP dispatch failed")),
                    )
            })?
        }
        None => http.listen("imserver", listener, move || {
            let ws_node = ws_node.clone();
            let answer_metrics = ws_node.metrics().clone();
            let upgrade = fn_service(move |(req, framed)| {
                handshake::upgrade::<Answering<TcpStream>>(ws_node.clone(), req, framed)
            });
            let service = HttpService::build()
                .client_request_timeout(head_timeout)
                .upgrade(upgrade)
                .finish(map_config(app(), |_| AppConfig::default()));
            fn_service(move |io: TcpStream| {
                let metrics = answer_metrics.clone();
                async move {
                    let peer = io.peer_addr().ok();
                    Ok((Answering::new(io, metrics), Protocol::Http1, peer))
                }
            })
            .and_then(service)
        })?,
    }
    .run();
    let handle = http.handle();
    let serving = tokio::spawn(http);
    tracing::info!(node = %node.id(), epoch = node.epoch(), "node started");

    tokio::select! {
        _ = shutdown => {}
        r = serving => {
            // The HTTP server only stops by itself on a fatal error.
            let _ = stop_tx.send(true);
            return Ok(r.map_err(std::io::Error::other)??);
        }
    }

    let deadline = tokio::time::Instant::now() + config.shutdown_timeout();
    tracing::info!(node = %node.id(), connections = node.hub().connections(), "shutting down");
    if let Some(api) = &api {
        api.stop(config.shutdown_timeout() / 4).await;
    }
    // New sockets are refused (503, fetch a fresh URL) from now on; the listener keeps
    // answering until the grace is over, so that a client sent here by a backend that has not
    // seen the change yet learns it at once instead of waiting in the accept queue.
    node.health().begin_shutdown();
    // The lease goes first, so that backends route this node's clients to the nodes that win
    // them while they are being handed over; those nodes keep what arrives until the streams do.
    let _ = release_tx.send(true);
    let released = timeout(
        config.shutdown_timeout() / 4,
        released_rx.wait_for(|done| *done),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let moved = if released {
        match follower::leave(&following, &store).await {
            Ok(moved) => moved,
            Err(e) => {
                tracing::warn!(node = %node.id(), error = %e, "cannot read the live node set; closing sessions without handing them over");
                0
            }
        }
    } else {
        tracing::warn!(node = %node.id(), "cannot give up the lease; closing sessions without handing them over");
        0
    };
    let handed_at = tokio::time::Instant::now();
    // Whoever was not handed over (no other node is live, or it connected meanwhile).
    node.hub().close_all(CloseCode::GoingAway);
    if timeout(config.shutdown_timeout() / 2, node.hub().wait_empty())
        .await
        .is_err()
    {
        tracing::warn!(node = %node.id(), left = node.hub().connections(), "sessions did not close in time");
    }
    if moved > 0 {
        // Backends that have not seen the change yet, and channel topics not yet subscribed at
        // the new homes, still bring messages here: they are passed on meanwhile.
        tracing::info!(node = %node.id(), clients = moved, grace_ms = config.shutdown_grace_ms, "handed clients over; passing on what arrives for them");
        tokio::time::sleep_until((handed_at + config.shutdown_grace()).min(deadline)).await;
    }
    handle.pause().await;
    let _ = stop_tx.send(true);
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if timeout(left, writer).await.is_err() {
        tracing::warn!(node = %node.id(), "the presence writer did not finish in time");
    }
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    match timeout(left, presence::clear(&writing, &store)).await {
        Ok(Ok(n)) => tracing::info!(node = %node.id(), clients = n, "presence cleared"),
        Ok(Err(e)) => {
            tracing::warn!(node = %node.id(), error = %e, "cannot clear presence; peers will purge it when the lease expires")
        }
        Err(_) => tracing::warn!(node = %node.id(), "clearing presence timed out"),
    }
    let _ = broker.await;
    let _ = loader.await;
    let _ = sweeper.await;
    let _ = reloader.await;
    let _ = acker.await;
    let _ = follower.await;
    if let Some(webhooks) = webhooks {
        let _ = webhooks.await;
    }
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let _ = timeout(left, handle.stop(true)).await;
    tracing::info!(node = %node.id(), "stopped");
    Ok(())
}
