//! The HTTP port against slow and idle clients, through a real in-process server on
//! 127.0.0.1 and raw TCP: a half-sent header line and a webhook whose body stops arriving are
//! closed after their timeouts; past the connection cap new connections wait until a held one
//! goes; and connections still open at shutdown do not keep the database open. `/metrics`
//! needs the configured bearer token, and without one is open in development mode and served
//! to loopback peers in production mode.

mod linkedup_common;

use std::path::Path;
use std::time::Duration;

use linkedup_common::data_dir;
use linkedup_server::auth::AuthConfig;
use linkedup_server::config::{AuthSource, HttpLimits, TlsSource};
use linkedup_server::linkedup::{self, LinkedUpConfig};
use linkedup_server::secret::Secret;
use linkedup_server::transport::tls::{CertifiedKey, DEV_CERT_FILE, DEV_KEY_FILE};
use linkedup_server::{RunningServer, Server, ServerConfig};
use query_engine::engine::{Engine, EngineConfig};
use query_engine::functions::Functions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A safety net against a hung test, not a timing assertion.
const HANG: Duration = Duration::from_secs(30);
/// How long a request past the cap is watched for an answer it must not get.
const UNSERVED_WATCH: Duration = Duration::from_millis(500);

/// A LinkedUp server (functions and webhook route) with `http` limits.
async fn start(dir: &Path, http: HttpLimits) -> RunningServer {
    let mut config = ServerConfig::for_tests(dir);
    config.http = http;
    start_with(config).await
}

async fn start_with(config: ServerConfig) -> RunningServer {
    let app = LinkedUpConfig::default();
    let mut functions = Functions::new();
    linkedup::register(&mut functions, &app);
    Server::start_with_routes(
        config,
        linkedup_schema::schema(),
        functions,
        linkedup::http_routes(&app),
    )
    .await
    .unwrap()
}

async fn connect(server: &RunningServer, sent: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.http_addr()).await.unwrap();
    stream.write_all(sent.as_bytes()).await.unwrap();
    stream
}

/// Everything the server sends until it closes the connection (a reset counts as closed).
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(HANG, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&got).into_owned()
}

const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_slow_webhook_bodies_are_closed() {
    let dir = data_dir();
    let server = start(
        dir.path(),
        HttpLimits {
            header_read_timeout: Duration::from_millis(300),
            body_read_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        },
    )
    .await;

    let mut half_header = connect(&server, "GET /health HTTP/1.1\r\nHo").await;
    assert_eq!(until_closed(&mut half_header).await, "");

    let mut slow_body = connect(
        &server,
        "POST /webhooks/stream HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{",
    )
    .await;
    let answer = until_closed(&mut slow_body).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // An idle keep-alive connection goes the same way once it has been answered.
    let mut idle = connect(&server, "GET /health HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert!(until_closed(&mut idle).await.starts_with("HTTP/1.1 200"));

    let live = "GET /health/live HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    let answer = until_closed(&mut connect(&server, live).await).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_for_a_held_one_to_go() {
    let dir = data_dir();
    let server = start(
        dir.path(),
        HttpLimits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(600),
            ..HttpLimits::default()
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect(&server, "GET /health HTTP/1.1\r\nHo").await);
    }
    // Both held ones are being served, so the third is not, however long it waits.
    let mut third = connect(&server, HEALTH).await;
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(UNSERVED_WATCH, third.read(&mut buf)).await;
    assert!(early.is_err(), "a connection past the cap was served");
    drop(held.remove(0));
    let answer = until_closed(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_held_open_does_not_keep_the_database_open_after_shutdown() {
    let dir = data_dir();
    let server = start(
        dir.path(),
        HttpLimits {
            header_read_timeout: Duration::from_secs(600),
            ..HttpLimits::default()
        },
    )
    .await;
    let _held = connect(&server, "GET /health HTTP/1.1\r\nHo").await;
    let db = dir.path().join(linkedup_server::config::DATABASE_FILE);
    server.shutdown().await;
    let config = EngineConfig {
        run_scheduler: false,
        ..EngineConfig::default()
    };
    let reopened = Engine::open(&db, linkedup_schema::schema(), Functions::new(), config);
    assert!(reopened.is_ok(), "{:?}", reopened.err());
}

const METRICS_TOKEN: &str = "s3cret-metrics-token";

/// `GET /metrics` with an `Authorization` header if given: the whole answer.
async fn get_metrics(server: &RunningServer, authorization: Option<&str>) -> String {
    let authorization = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: test\r\n{authorization}Connection: close\r\n\r\n");
    until_closed(&mut connect(server, &request).await).await
}

fn is_metrics(answer: &str) -> bool {
    answer.starts_with("HTTP/1.1 200") && answer.contains("\nserver_uptime_seconds ")
}

fn is_bearer_challenge(answer: &str) -> bool {
    answer.starts_with("HTTP/1.1 401")
        && answer
            .to_ascii_lowercase()
            .contains("\r\nwww-authenticate: bearer")
        && !answer.contains("server_uptime_seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_configured_bearer_token() {
    let dir = data_dir();
    let mut config = ServerConfig::for_tests(dir.path());
    config.metrics_token = Some(Secret::new(METRICS_TOKEN));
    let server = start_with(config).await;

    let missing = get_metrics(&server, None).await;
    assert!(is_bearer_challenge(&missing), "{missing}");
    let wrong = get_metrics(&server, Some("Bearer s3cret-metrics-toke")).await;
    assert!(is_bearer_challenge(&wrong), "{wrong}");
    let right = get_metrics(&server, Some(&format!("Bearer {METRICS_TOKEN}"))).await;
    assert!(is_metrics(&right), "{right}");
    // The two refusals are counted by reason.
    for line in [
        "http_metrics_refused_total{reason=\"no_token\"} 1",
        "http_metrics_refused_total{reason=\"wrong_token\"} 1",
    ] {
        assert!(right.contains(line), "{line} missing from {right}");
    }
    // The rest of the port is not behind the token.
    let health = until_closed(&mut connect(&server, HEALTH).await).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    server.shutdown().await;
}

/// Production mode: certificate files and WorkOS auth.
fn production(dir: &Path) -> ServerConfig {
    let certs = dir.join("certs");
    CertifiedKey::load_or_generate_dev(&certs).unwrap();
    let mut config = ServerConfig::for_tests(dir.join("data"));
    config.tls = TlsSource::Files {
        cert: certs.join(DEV_CERT_FILE),
        key: certs.join(DEV_KEY_FILE),
    };
    // Nothing listens on port 9: the key fetch at start fails, which is only logged.
    config.auth = AuthSource::WorkOs(AuthConfig::new(
        "https://issuer.test",
        "client_test",
        "http://127.0.0.1:9/jwks",
    ));
    assert!(!config.is_development());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_metrics_are_open_in_development_and_served_to_loopback_in_production() {
    let dir = data_dir();
    let development = start_with(ServerConfig::for_tests(dir.path().join("dev"))).await;
    let answer = get_metrics(&development, None).await;
    assert!(is_metrics(&answer), "{answer}");
    development.shutdown().await;

    // The test can only connect from loopback; the refusal of other peers is
    // `metrics_access`'s unit tests'.
    let production = start_with(production(&dir.path().join("prod"))).await;
    assert!(!production.is_development());
    let answer = get_metrics(&production, None).await;
    assert!(is_metrics(&answer), "{answer}");
    production.shutdown().await;
}
