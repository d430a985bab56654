//! The HTTP port (axum): `GET /health` (JSON status), `GET /metrics` (Prometheus text: server,
//! subscription and engine metrics) and, in development mode, the dev issuer's JWKS. The
//! application's own routes (webhooks) come from an `AppRoutes` given to
//! `Server::start_with_routes`, built once the engine is open from an `HttpContext`, and are
//! merged into `router`; the server itself knows none of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use query_engine::engine::Engine;
use query_engine::subscriptions::SubscriptionManager;
use tokio::sync::watch;

use crate::auth::{jwks_router, DevIssuer};
use crate::metrics::ServerMetrics;

/// What the HTTP handlers read.
pub(crate) struct HttpState {
    pub engine: Engine,
    pub subscriptions: SubscriptionManager,
    pub metrics: Arc<ServerMetrics>,
    pub started: Instant,
    pub development: bool,
    pub version: String,
    /// Set when shutdown begins, a pre-stop window before the ports close: `/health` then
    /// answers 503 so load balancers move away while requests are still served.
    pub draining: Arc<AtomicBool>,
    /// The server's shutdown signal: true once the ports close.
    pub stopping: watch::Receiver<bool>,
    /// Whether commits are fsynced (`--no-fsync` turns it off).
    pub durable: bool,
    /// `HttpLimits::body_read_timeout`, for the application's routes.
    pub body_read_timeout: Duration,
}

/// What the application's routes may use: the engine, the server metrics (calls they record
/// show in `/metrics`) and whether the server is shutting down.
#[derive(Clone)]
pub struct HttpContext {
    engine: Engine,
    metrics: Arc<ServerMetrics>,
    /// Becomes true when the ports close, after the pre-stop window.
    stopping: watch::Receiver<bool>,
    body_read_timeout: Duration,
}

impl HttpContext {
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn metrics(&self) -> &ServerMetrics {
        &self.metrics
    }

    /// How long a route may wait for a request's body (`HttpLimits::body_read_timeout`);
    /// past it the route should answer 408 and close the connection.
    pub fn body_read_timeout(&self) -> Duration {
        self.body_read_timeout
    }

    /// True once the ports are closing: a route should answer 503 rather than start work.
    /// During the pre-stop window before that, `/health` says draining but routes still serve.
    pub fn is_shutting_down(&self) -> bool {
        *self.stopping.borrow() || *self.engine.shutdown_signal().borrow()
    }
}

/// Builds the application's routes for the HTTP port; called once, when the server starts.
pub type AppRoutes = Box<dyn FnOnce(HttpContext) -> Router + Send>;

/// The HTTP application: the server's routes and the application's.
pub(crate) fn router(
    state: Arc<HttpState>,
    dev_issuer: Option<Arc<DevIssuer>>,
    app_routes: AppRoutes,
) -> Router {
    let context = HttpContext {
        engine: state.engine.clone(),
        metrics: state.metrics.clone(),
        stopping: state.stopping.clone(),
        body_read_timeout: state.body_read_timeout,
    };
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Some(issuer) = dev_issuer {
        app = app.merge(jwks_router(issuer));
    }
    app.merge(app_routes(context))
}

async fn health(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let draining = state.draining.load(Ordering::Relaxed);
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "status": if draining { "draining" } else { "ok" },
        "version": state.version,
        "mode": if state.development { "development" } else { "production" },
        "durable": state.durable,
        "uptimeSecs": state.started.elapsed().as_secs(),
        "connections": state.metrics.connections_open.load(Ordering::Relaxed),
        "ts": state.engine.snapshot().ts,
        "pendingCommits": state.subscriptions.pending_commits(),
    });
    (status, Json(body))
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    use std::fmt::Write;
    let mut out = String::with_capacity(16 * 1024);
    state.metrics.render(&mut out);
    let _ = writeln!(
        out,
        "# HELP server_uptime_seconds Seconds since the server started\n# TYPE server_uptime_seconds gauge\nserver_uptime_seconds {}",
        state.started.elapsed().as_secs()
    );
    state.subscriptions.render_metrics(&mut out);
    state.engine.metrics().render(&mut out);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
