//! The LinkedUp server under test: either a `linkedup-server` child process started on a
//! throwaway data directory with free loopback ports (killed when dropped), or a server that
//! is already running. Either way the harness ends up with a `Target`: where to connect, the
//! certificate fingerprint to pin, and the development issuer that mints its tokens.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkedup_client::{fingerprint_from_pem, parse_fingerprint};
use linkedup_server::auth::{DevClaims, DevIssuer};
use linkedup_server::config::{DEV_AUDIENCE, DEV_ISSUER};

/// Longest wait for a started server to print its banner.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Lifetime of minted tokens: longer than any run.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
/// The development issuer's key file in a server's data directory.
const KEY_FILE_NAME: &str = "dev-issuer-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(
        "server binary {0} not found: build it with `cargo build --release -p linkedup-server`"
    )]
    NoBinary(PathBuf),
    #[error("starting {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the server exited before it was ready: {0}")]
    Exited(String),
    #[error("the server printed no banner within {0:?}")]
    Timeout(Duration),
    #[error("choosing a free port: {0}")]
    Port(std::io::Error),
    #[error("{0}")]
    Tls(String),
    #[error("no development issuer key at {0} (pass the running server's --data-dir)")]
    NoIssuerKey(PathBuf),
    #[error("development issuer: {0}")]
    Issuer(String),
    #[error("creating the data directory: {0}")]
    DataDir(std::io::Error),
}

/// Where the clients go and how they sign in.
#[derive(Clone)]
pub struct Target {
    /// `host:port` of the QUIC endpoint.
    pub addr: String,
    pub fingerprint: [u8; 32],
    pub issuer: Arc<DevIssuer>,
    /// The HTTP port, for `/metrics` (optional).
    pub http: Option<std::net::SocketAddr>,
}

impl Target {
    /// A running server: its address, its fingerprint (64 hex digits) and the directory
    /// holding its development issuer key (its `--data-dir`).
    pub fn existing(
        addr: &str,
        fingerprint: &str,
        token_dir: &Path,
        http: Option<std::net::SocketAddr>,
    ) -> Result<Self, TargetError> {
        let fingerprint =
            parse_fingerprint(fingerprint).map_err(|e| TargetError::Tls(e.to_string()))?;
        let key = token_dir.join(KEY_FILE_NAME);
        if !key.exists() {
            return Err(TargetError::NoIssuerKey(key));
        }
        let issuer = DevIssuer::load_or_generate(token_dir, DEV_ISSUER, DEV_AUDIENCE)
            .map_err(|e| TargetError::Issuer(e.to_string()))?;
        Ok(Target {
            addr: addr.to_string(),
            fingerprint,
            issuer: Arc::new(issuer),
            http,
        })
    }

    /// A token for `subject`.
    pub fn token(&self, subject: &str) -> String {
        self.issuer.mint(DevClaims {
            ttl: TOKEN_TTL,
            ..DevClaims::new(subject)
        })
    }
}

/// A `linkedup-server` child process on a temporary data directory.
pub struct ServerProcess {
    child: Child,
    pid: u32,
    _data_dir: tempfile::TempDir,
    pub target: Target,
}

fn free_udp_port() -> Result<u16, TargetError> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(TargetError::Port)
}

fn free_tcp_port() -> Result<u16, TargetError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(TargetError::Port)
}

/// `target/release/linkedup-server` of this workspace.
pub fn default_server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("release")
        .join("linkedup-server")
}

impl ServerProcess {
    /// Starts `binary` in development mode with `extra_args` (e.g. `--max-subscriptions`),
    /// waits for its banner, then loads its certificate and issuer key from the data dir.
    pub fn start(binary: &Path, extra_args: &[String]) -> Result<Self, TargetError> {
        if !binary.exists() {
            return Err(TargetError::NoBinary(binary.to_path_buf()));
        }
        let data_dir = tempfile::Builder::new()
            .prefix("fanout-server-")
            .tempdir()
            .map_err(TargetError::DataDir)?;
        // Made before the server starts, so both load the same key.
        let issuer = DevIssuer::load_or_generate(data_dir.path(), DEV_ISSUER, DEV_AUDIENCE)
            .map_err(|e| TargetError::Issuer(e.to_string()))?;
        let quic = format!("127.0.0.1:{}", free_udp_port()?);
        let http_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
        let http = http_addr.to_string();
        let mut child = Command::new(binary)
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--listen", &quic, "--http-listen", &http])
            // Every client of the harness connects from 127.0.0.1: the per-address caps (256
            // connections, 64 MiB of inbound frames by default) would hold most of them back;
            // the server-wide limits still hold.
            .args(["--max-connections-per-address", "10000"])
            .args(["--max-inbound-frame-bytes-per-address", "1073741824"])
            .args(extra_args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| TargetError::Spawn {
                path: binary.to_path_buf(),
                source,
            })?;
        let pid = child.id();
        let stdout = child.stdout.take();
        // Read the banner on a thread so that a silent server cannot block us past the timeout.
        let (tx, rx) = std::sync::mpsc::channel::<Result<String, String>>();
        std::thread::spawn(move || {
            let Some(stdout) = stdout else {
                let _ = tx.send(Err("no stdout".into()));
                return;
            };
            let mut banner = String::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        let done = l.contains("TLS certificate");
                        banner.push_str(&l);
                        banner.push('\n');
                        if done {
                            let _ = tx.send(Ok(banner.clone()));
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
            let _ = tx.send(Err(format!("stdout closed; printed:\n{banner}")));
        });
        let started = Instant::now();
        let mut process = ServerProcess {
            child,
            pid,
            target: Target {
                addr: quic,
                fingerprint: [0; 32],
                issuer: Arc::new(issuer),
                http: Some(http_addr),
            },
            _data_dir: data_dir,
        };
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(TargetError::Exited(status.to_string()));
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok(_banner)) => break,
                Ok(Err(e)) => return Err(TargetError::Exited(e)),
                Err(_) if started.elapsed() > START_TIMEOUT => {
                    return Err(TargetError::Timeout(START_TIMEOUT))
                }
                Err(_) => {}
            }
        }
        let pem = std::fs::read(process._data_dir.path().join("dev-cert.pem"))
            .map_err(|e| TargetError::Tls(format!("reading dev-cert.pem: {e}")))?;
        process.target.fingerprint =
            fingerprint_from_pem(&pem).map_err(|e| TargetError::Tls(e.to_string()))?;
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stops the server (SIGTERM through `kill`, then SIGKILL if it lingers).
    pub fn stop(mut self) {
        self.stop_child();
    }

    fn stop_child(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop_child();
    }
}
