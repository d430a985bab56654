//! The HTTP port's accept loop: each connection is served by its own task with hyper's
//! HTTP/1.1 connection builder on tokio's timer (so the header read timeout is on), at most
//! `HttpLimits::max_connections` at once, and every one of them is gone when `serve` returns.
//! The routes can be replaced while it runs (the server starts with "starting" answers). Each
//! request carries its connection's peer address as axum's `ConnectInfo<SocketAddr>`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service as _};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::HttpLimits;

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves the latest of `routes` on `listener` (each connection keeps the routes it was
/// accepted with) until `shutdown` turns true; then closes the listener, lets open
/// requests finish for up to `stop_timeout` and drops whatever is left. When it returns no
/// connection task holds the routes (and with them the engine) any more.
pub(crate) async fn serve(
    listener: TcpListener,
    routes: watch::Receiver<Router>,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
    stop_timeout: Duration,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = stopping(&mut shutdown) => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = joined {
                    if e.is_panic() {
                        tracing::error!(error = %e, "HTTP connection task panicked");
                    }
                }
            }
            accepted = accept_within(&listener, &slots) => match accepted {
                Ok((stream, peer, permit)) => {
                    let conn = serve_connection(
                        builder.clone(),
                        stream,
                        peer,
                        routes.borrow().clone(),
                        shutdown.clone(),
                        permit,
                    );
                    connections.spawn(conn);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
    drop(listener);
    let finished = tokio::time::timeout(stop_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "HTTP connections still open after the stop timeout; closing them"
        );
        connections.shutdown().await;
    }
}

/// Returns once the server is stopping (or whoever signals it is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// The next connection, once one of the `slots` is free: past the cap, clients wait in the
/// listen backlog and cost the process no file descriptor.
async fn accept_within(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> std::io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    // The semaphore is never closed.
    let permit = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(std::io::Error::other)?;
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, permit))
}

/// Serves one connection; on shutdown, finishes the request under way and closes.
async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let app = TowerToHyperService::new(app);
    let service = service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.call(request)
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stopping(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}
