//! Server startup and shutdown: loads or makes the certificate, binds the HTTP port (which
//! answers "starting" until the rest is up), sets up the token verifier (development issuer or
//! WorkOS), opens the engine, binds the QUIC endpoint; on shutdown says draining for the
//! pre-stop window, stops accepting, drains in-flight calls, closes connections, stops the engine.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use query_engine::engine::{Engine, OpenError};
use query_engine::functions::Functions;
use query_engine::schema::SchemaDefinition;
use query_engine::subscriptions::{SubscriptionConfig, SubscriptionManager};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{DevClaims, DevIssuer, DevIssuerError, JwksError, TokenVerifier, JWKS_PATH};
use crate::config::{AuthSource, ServerConfig, TlsSource};
use crate::http::{self, AppRoutes, HttpState};
use crate::http_serve;
use crate::metrics::ServerMetrics;
use crate::metrics_access::MetricsAccess;
use crate::transport::tls::{pinned_client_config, CertFingerprint, CertifiedKey, TlsError};
use crate::transport::{self, BindError, Shared};

/// The server build, announced in `Connected` and `/health`.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Bound on the HTTP port's graceful stop: requests under way get this long to finish, then
/// their connections are dropped.
const HTTP_STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("creating {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("binding the HTTP port on {addr}: {source}")]
    BindHttp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    BindQuic(#[from] BindError),
    #[error("development token issuer: {0}")]
    DevIssuer(#[from] DevIssuerError),
    #[error("token verifier: {0}")]
    Verifier(#[from] JwksError),
    #[error("opening the database: {0}")]
    Engine(#[from] OpenError),
    #[error("a startup task failed: {0}")]
    Task(String),
}

/// Starts servers; see `Server::start`.
pub struct Server;

impl Server {
    /// Starts a server with `schema` and `functions` as configured, returning once both ports
    /// are listening. Must run inside a tokio runtime (the engine's scheduler and the
    /// connection tasks are spawned onto it).
    pub async fn start(
        config: ServerConfig,
        schema: SchemaDefinition,
        functions: Functions,
    ) -> Result<RunningServer, StartError> {
        Self::start_with_routes(config, schema, functions, Box::new(|_| axum::Router::new())).await
    }

    /// `start`, with the application's own HTTP routes (e.g. webhooks) on the HTTP port.
    pub async fn start_with_routes(
        config: ServerConfig,
        schema: SchemaDefinition,
        functions: Functions,
        app_routes: AppRoutes,
    ) -> Result<RunningServer, StartError> {
        let create_dir = |path: &PathBuf| {
            crate::files::create_private_dir(path).map_err(|source| StartError::CreateDir {
                path: path.clone(),
                source,
            })
        };
        warn_of_development_mode_off_loopback(&config);
        if !config.engine.committer.durable {
            tracing::warn!(
                "commits are not fsynced (--no-fsync): a crash or power loss loses \
                 acknowledged writes"
            );
        }
        create_dir(&config.data_dir)?;
        if let Some(parent) = config.database_path.parent() {
            if !parent.as_os_str().is_empty() {
                create_dir(&parent.to_path_buf())?;
            }
        }
        let cert = match &config.tls {
            TlsSource::SelfSigned { dir } => CertifiedKey::load_or_generate_dev(dir)?,
            TlsSource::Files { cert, key } => CertifiedKey::load(cert, key)?,
        };
        let fingerprint = cert.fingerprint();

        let http_listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| StartError::BindHttp {
                addr: config.http_listen,
                source,
            })?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|source| StartError::BindHttp {
                addr: config.http_listen,
                source,
            })?;
        // Served from now on, so /health tells a prober the server is starting (503) while the
        // database opens; the full routes replace these once it is up.
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (routes_tx, routes_rx) = watch::channel(http::starting_router());
        let http_task = tokio::spawn(http_serve::serve(
            http_listener,
            routes_rx,
            config.http.clone(),
            shutdown_rx.clone(),
            HTTP_STOP_TIMEOUT,
        ));
        let stop_http = StopHttpIfStartFails(Some(&shutdown_tx));

        let (verifier, dev_issuer) = match &config.auth {
            AuthSource::Development {
                key_dir,
                issuer,
                audience,
            } => {
                let (dir, iss, aud) = (key_dir.clone(), issuer.clone(), audience.clone());
                // Generating an RSA key takes a while on first start: keep it off the reactor.
                let issuer = tokio::task::spawn_blocking(move || {
                    DevIssuer::load_or_generate(&dir, iss, aud)
                })
                .await
                .map_err(|e| StartError::Task(e.to_string()))??;
                let issuer = Arc::new(issuer);
                let jwks_url = format!("http://{}{JWKS_PATH}", loopback_for(http_addr));
                let verifier = TokenVerifier::new(issuer.auth_config(jwks_url))?;
                (verifier, Some(issuer))
            }
            AuthSource::WorkOs(auth) => (TokenVerifier::new(auth.clone())?, None),
        };
        let verifier = Arc::new(verifier);

        // A replay of a long log takes a while: keep it off the reactor, which serves /health.
        let (path, engine_config) = (config.database_path.clone(), config.engine.clone());
        let engine = tokio::task::spawn_blocking(move || {
            Engine::open(&path, schema, functions, engine_config)
        })
        .await
        .map_err(|e| StartError::Task(e.to_string()))??;
        let subscriptions = SubscriptionManager::new(
            engine.clone(),
            SubscriptionConfig {
                max_subscriptions_per_client: config.limits.max_subscriptions as usize,
                ..SubscriptionConfig::default()
            },
        );
        let endpoint = transport::bind(config.quic_listen, &cert, &config.limits)?;
        let quic_addr = endpoint.local_addr().map_err(|source| BindError::Io {
            addr: config.quic_listen,
            source,
        })?;

        let metrics = Arc::new(ServerMetrics::default());
        let development = config.is_development();
        let shared = Arc::new(Shared {
            engine: engine.clone(),
            subscriptions: subscriptions.clone(),
            verifier: verifier.clone(),
            metrics: metrics.clone(),
            limits: config.limits.clone(),
            shutdown: shutdown_rx.clone(),
            drain_timeout: config.drain_timeout,
            server_version: SERVER_VERSION.to_string(),
        });
        let quic_task = tokio::spawn(transport::accept_loop(endpoint, shared));

        let draining = Arc::new(AtomicBool::new(false));
        let metrics_access = Arc::new(MetricsAccess::new(
            config.metrics_token.as_ref(),
            development,
        ));
        let app = http::router(
            Arc::new(HttpState {
                engine: engine.clone(),
                subscriptions,
                metrics: metrics.clone(),
                started: Instant::now(),
                development,
                version: SERVER_VERSION.to_string(),
                draining: draining.clone(),
                stopping: shutdown_rx.clone(),
                durable: config.engine.committer.durable,
                body_read_timeout: config.http.body_read_timeout,
                metrics_access: metrics_access.clone(),
                metrics_refusals_logged: Default::default(),
            }),
            dev_issuer.clone(),
            app_routes,
        );
        let _starting = routes_tx.send_replace(app);
        stop_http.disarm();

        if let AuthSource::WorkOs(_) = &config.auth {
            // Warm the key cache so the first Authenticate does not pay for the fetch; a
            // failure here is retried on demand.
            let verifier = verifier.clone();
            tokio::spawn(async move {
                if let Err(e) = verifier.jwks().refresh().await {
                    tracing::warn!(error = %e, "could not fetch the JWKS yet");
                }
            });
        }
        tracing::info!(%quic_addr, %http_addr, %fingerprint, development,
            metrics = %metrics_access, "server started");
        Ok(RunningServer {
            quic_addr,
            http_addr,
            fingerprint,
            dev_issuer,
            development,
            engine,
            metrics,
            metrics_access,
            shutdown_tx,
            draining,
            pre_stop: config.pre_stop,
            quic_task,
            http_task,
        })
    }
}

/// Stops the HTTP port when dropped before `disarm`: a start that fails after binding it
/// leaves nothing listening.
struct StopHttpIfStartFails<'a>(Option<&'a watch::Sender<bool>>);

impl StopHttpIfStartFails<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for StopHttpIfStartFails<'_> {
    fn drop(&mut self) {
        if let Some(shutdown) = self.0 {
            let _ = shutdown.send(true);
        }
    }
}

/// Configuration resolution refuses these unless opted into (`--allow-dev-auth`,
/// `--allow-dev-tls`); one that was, or built in code, is logged.
fn warn_of_development_mode_off_loopback(config: &ServerConfig) {
    if config.is_loopback_only() {
        return;
    }
    let (quic, http) = (config.quic_listen, config.http_listen);
    if let AuthSource::Development { key_dir, .. } = &config.auth {
        tracing::warn!(%quic, %http, key_dir = %key_dir.display(),
            "the development token issuer is on and the server listens beyond loopback: \
             anyone with a copy of the key directory can mint tokens it accepts");
    }
    if let TlsSource::SelfSigned { .. } = &config.tls {
        tracing::warn!(%quic, %http, "serving the self-signed development certificate beyond loopback");
    }
}

/// An address clients on this machine can reach `addr` at (wildcards become loopback).
fn loopback_for(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Longest `shutdown` waits for the database file to be released.
const ENGINE_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A started server. Call `shutdown` to stop it gracefully.
pub struct RunningServer {
    quic_addr: SocketAddr,
    http_addr: SocketAddr,
    fingerprint: CertFingerprint,
    dev_issuer: Option<Arc<DevIssuer>>,
    development: bool,
    engine: Engine,
    metrics: Arc<ServerMetrics>,
    metrics_access: Arc<MetricsAccess>,
    shutdown_tx: watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    pre_stop: Duration,
    quic_task: JoinHandle<()>,
    http_task: JoinHandle<()>,
}

impl RunningServer {
    /// The UDP address the QUIC endpoint listens on (the real port when 0 was asked for).
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// Where clients on this machine reach the QUIC endpoint (wildcards become loopback).
    pub fn quic_connect_addr(&self) -> SocketAddr {
        loopback_for(self.quic_addr)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// SHA-256 of the server certificate, for clients to pin.
    pub fn cert_fingerprint(&self) -> CertFingerprint {
        self.fingerprint
    }

    /// A quinn client configuration trusting exactly this server's certificate.
    pub fn pinned_client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        pinned_client_config(self.fingerprint)
    }

    /// The development token issuer, when the server runs one.
    pub fn dev_issuer(&self) -> Option<&Arc<DevIssuer>> {
        self.dev_issuer.as_ref()
    }

    /// A development access token for `claims`; `None` unless the server runs the dev issuer.
    pub fn mint_dev_token(&self, claims: DevClaims) -> Option<String> {
        self.dev_issuer.as_ref().map(|issuer| issuer.mint(claims))
    }

    pub fn is_development(&self) -> bool {
        self.development
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn metrics(&self) -> &Arc<ServerMetrics> {
        &self.metrics
    }

    /// Who may read `/metrics` (its `Display` is one line for a banner, without the token).
    pub fn metrics_access(&self) -> &MetricsAccess {
        &self.metrics_access
    }

    /// Says draining on `/health` (503) for the pre-stop window while both ports still serve,
    /// then stops accepting connections, lets in-flight calls finish (up to the drain
    /// timeout), closes every connection with a fatal `INTERNAL` "server shutting down", stops
    /// the HTTP port, then the engine's background work.
    pub async fn shutdown(self) {
        self.draining.store(true, Ordering::Relaxed);
        if !self.pre_stop.is_zero() {
            tracing::info!(pre_stop = ?self.pre_stop, "draining: /health answers 503 before the ports close");
            tokio::time::sleep(self.pre_stop).await;
        }
        tracing::info!("shutting down");
        let _ = self.shutdown_tx.send(true);
        if let Err(e) = self.quic_task.await {
            tracing::error!(error = %e, "QUIC accept loop failed");
        }
        // It stops its connections itself, within HTTP_STOP_TIMEOUT.
        if let Err(e) = self.http_task.await {
            tracing::error!(error = %e, "HTTP accept loop failed");
        }
        drop(self.metrics);
        // Connection tasks and the subscription worker let go of the engine as they finish;
        // then the database file is closed and can be reopened (e.g. by a restart in-process).
        let engine = self.engine;
        let closed = tokio::task::spawn_blocking(move || engine.close(ENGINE_CLOSE_TIMEOUT))
            .await
            .unwrap_or(false);
        if !closed {
            tracing::warn!("the database was still open after shutdown");
        }
        tracing::info!("shutdown complete");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_data_directory_is_private_to_the_server_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("new").join("data");
        let server = Server::start(
            ServerConfig::for_tests(&data),
            SchemaDefinition::new(),
            Functions::new(),
        )
        .await
        .unwrap();
        for created in [&data, &dir.path().join("new")] {
            let mode = std::fs::metadata(created).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", created.display());
        }
        server.shutdown().await;
    }
}
