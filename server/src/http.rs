//! The HTTP port (axum): `GET /health` (readiness, JSON: 503 with a reason while the server
//! starts, has index work pending or drains), `GET /health/live` (liveness: 200 whenever the
//! process answers), `GET /metrics` (Prometheus text: server, subscription and engine
//! metrics, to whom `MetricsAccess` allows) and, in development mode, the dev issuer's JWKS.
//! Until the engine is open every other path answers 503 (`starting_router`). The
//! application's own routes (webhooks) come from an `AppRoutes` given to
//! `Server::start_with_routes`, built once the engine is open from an `HttpContext`, and are
//! merged into `router`; the server itself knows none of them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use query_engine::engine::Engine;
use query_engine::subscriptions::SubscriptionManager;
use tokio::sync::watch;

use crate::auth::{jwks_router, DevIssuer};
use crate::log_limit::LogLimit;
use crate::metrics::ServerMetrics;
use crate::metrics_access::{self, MetricsAccess};

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
    /// Who may read `/metrics`.
    pub metrics_access: Arc<MetricsAccess>,
    /// Refusals of `/metrics` are logged at a bounded rate: they come at the requester's pace.
    pub metrics_refusals_logged: Mutex<LogLimit>,
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
        .route(LIVE_PATH, get(live))
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Some(issuer) = dev_issuer {
        app = app.merge(jwks_router(issuer));
    }
    app.merge(app_routes(context))
}

const LIVE_PATH: &str = "/health/live";

/// What the HTTP port answers while the engine opens: alive, not ready. `Connection: close`,
/// so a prober's next request reaches the full routes once they are up.
pub(crate) fn starting_router() -> Router {
    let starting = || async {
        let body = serde_json::json!({ "status": "starting", "reason": "opening the database" });
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONNECTION, "close")],
            Json(body),
        )
    };
    Router::new().route(LIVE_PATH, get(live)).fallback(starting)
}

/// Liveness: the process answers. Readiness is `/health`.
async fn live() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "alive" }))
}

/// Readiness: 200 "ok" once the engine is open; 503 while draining. Index backfills and
/// purges pending are reported (`indexWorkPending`) but do not make the server unready: on
/// a single node that would take the only server out of its load balancer for a whole
/// backfill, when only queries on the new index wait for it (they fail with "still
/// backfilling"), and for good if a backfill stopped.
async fn health(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let index_work = state.engine.index_work_pending();
    let (status, reason) = if state.draining.load(Ordering::Relaxed) {
        ("draining", Some("shutting down".to_string()))
    } else {
        ("ok", None)
    };
    let code = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": status,
        "reason": reason,
        "version": state.version,
        "mode": if state.development { "development" } else { "production" },
        "durable": state.durable,
        "uptimeSecs": state.started.elapsed().as_secs(),
        "connections": state.metrics.connections_open.load(Ordering::Relaxed),
        "ts": state.engine.snapshot().ts,
        "pendingCommits": state.subscriptions.pending_commits(),
        "indexWorkPending": index_work,
    });
    (code, Json(body))
}

/// `ConnectInfo` is the peer address the accept loop (`http_serve`) puts on every request.
async fn metrics(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    use std::fmt::Write;
    if let Err(refusal) = state.metrics_access.check(peer.ip(), &headers) {
        state
            .metrics
            .count(&metrics_access::REFUSED, refusal.label());
        if let Some(earlier) = state.metrics_refusals_logged.lock().note(Instant::now()) {
            tracing::warn!(
                %peer,
                reason = refusal.label(),
                refused_since_last_line = earlier,
                "/metrics request refused"
            );
        }
        return refusal.into_response();
    }
    let mut out = String::with_capacity(16 * 1024);
    state.metrics.render(&mut out);
    let _ = writeln!(
        out,
        "# HELP server_uptime_seconds Seconds since the server started\n# TYPE server_uptime_seconds gauge\nserver_uptime_seconds {}",
        state.started.elapsed().as_secs()
    );
    state.subscriptions.render_metrics(&mut out);
    state.engine.metrics().render(&mut out);
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], out).into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use query_engine::engine::EngineConfig;
    use query_engine::functions::Functions;
    use query_engine::obj;
    use query_engine::schema::{v, SchemaDefinition, TableDefinition};
    use query_engine::subscriptions::SubscriptionConfig;
    use query_engine::value::Value;

    use super::*;

    /// A safety net against a hung test, not a timing assertion.
    const HANG: Duration = Duration::from_secs(60);

    #[test]
    fn health_reports_index_work_without_turning_unready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let table = TableDefinition::new("t", v::object([("a", v::int64())]));
        let config = EngineConfig {
            run_scheduler: false,
            ..EngineConfig::default()
        };
        let open = |table: TableDefinition| {
            let schema = SchemaDefinition::new().table(table);
            Engine::open(&path, schema, Functions::new(), config.clone()).unwrap()
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // Opened outside the runtime, the engine starts no backfill: the index stays pending.
        let engine = open(table.clone());
        rt.block_on(engine.transact(|ctx| ctx.insert("t", obj! {"a" => 1}).map(Value::from)))
            .unwrap();
        assert!(engine.close(HANG));
        let engine = open(table.index("by_a", &["a"]));
        assert_eq!(engine.index_work_pending(), 1);

        let (status, body) = rt.block_on(async {
            let state = Arc::new(HttpState {
                subscriptions: SubscriptionManager::new(
                    engine.clone(),
                    SubscriptionConfig::default(),
                ),
                engine: engine.clone(),
                metrics: Arc::default(),
                started: Instant::now(),
                development: true,
                version: "test".into(),
                draining: Arc::default(),
                stopping: watch::channel(false).1,
                durable: true,
                body_read_timeout: HANG,
                metrics_access: Arc::new(MetricsAccess::Open),
                metrics_refusals_logged: Default::default(),
            });
            let response = health(State(state)).await.into_response();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        });
        // Ready, with the index work reported: queries on other indexes are served.
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "ok", "{body}");
        assert_eq!(body["indexWorkPending"], 1, "{body}");
    }
}
