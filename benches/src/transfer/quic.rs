//! The transfer workload over QUIC: a server process serving `accounts` and `transfer` (the
//! `transfer` binary re-executed with its hidden `serve` subcommand, so client and server CPU
//! are separate processes), and `QuicTransfer`, the SDK client that calls it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use linkedup_client::{
    fingerprint_hex, new_mutation_id, parse_fingerprint, CallKind, Client, ClientError,
    ClientOptions, Trust,
};
use linkedup_server::auth::DevClaims;
use linkedup_server::config::{ServerConfig, DATABASE_FILE};
use linkedup_server::server::Server;
use query_engine::engine::{Engine, EngineConfig};
use query_engine::error::{codes, FunctionError};
use query_engine::obj;
use query_engine::value::Value;

use super::{functions, schema, seed_accounts, Outcome, TransferClient, INSUFFICIENT};

/// First word of the line the serving process prints once it is ready.
const READY: &str = "TRANSFER-SERVER-READY";
/// File in the data directory listing the seeded account ids, one per line, in order.
const IDS_FILE: &str = "account-ids.txt";
/// Longest wait for the serving process to seed its accounts and print `READY`.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for the serving process to shut down after its stdin closes.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Lifetime of the token the serving process mints: longer than any run.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// What the serving process needs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub dir: PathBuf,
    pub accounts: usize,
    pub initial_balance: i64,
    pub seed_batch: usize,
    /// Calls in flight per connection the server allows (its default is 64).
    pub max_concurrent_calls: u32,
}

impl ServeOptions {
    fn to_args(&self) -> Vec<String> {
        vec![
            "serve".into(),
            "--dir".into(),
            self.dir.display().to_string(),
            "--accounts".into(),
            self.accounts.to_string(),
            "--initial-balance".into(),
            self.initial_balance.to_string(),
            "--seed-batch".into(),
            self.seed_batch.to_string(),
            "--max-concurrent-calls".into(),
            self.max_concurrent_calls.to_string(),
        ]
    }
}

/// The serving process's body: starts a development-mode server on 127.0.0.1 (OS-chosen
/// ports, fsync on) with the transfer schema, seeds the accounts, writes their ids to
/// `IDS_FILE`, prints `READY <quic> <http> <fingerprint> <token>` and serves until its stdin
/// closes; then shuts down so the database can be opened and checked.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let mut config = ServerConfig::for_tests(&opts.dir);
    config.engine = EngineConfig {
        run_scheduler: false,
        ..EngineConfig::default()
    };
    config.limits.max_concurrent_calls = opts.max_concurrent_calls.max(1);
    let server = Server::start(config, schema(), functions())
        .await
        .context("starting the server")?;
    let ids = seed_accounts(
        server.engine(),
        opts.accounts,
        opts.initial_balance,
        opts.seed_batch,
    )
    .await?;
    let mut listing = ids.join("\n");
    listing.push('\n');
    std::fs::write(opts.dir.join(IDS_FILE), listing).context("writing the account ids")?;
    let token = server
        .mint_dev_token(DevClaims {
            ttl: TOKEN_TTL,
            ..DevClaims::new("transfer-bench")
        })
        .context("the server runs no development issuer")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{READY} {} {} {} {token}",
            server.quic_connect_addr(),
            server.http_addr(),
            fingerprint_hex(&server.cert_fingerprint().0),
        )?;
        out.flush()?;
    }
    // Serve until the harness closes our stdin (or dies).
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut sink);
    })
    .await
    .context("waiting for stdin to close")?;
    server.shutdown().await;
    Ok(())
}

/// A serving process started by the harness, with its seeded accounts.
pub struct QuicServer {
    child: Child,
    stdin: Option<ChildStdin>,
    dir: PathBuf,
    pub quic_addr: String,
    pub http_addr: std::net::SocketAddr,
    pub fingerprint: [u8; 32],
    pub token: String,
    pub ids: Arc<Vec<String>>,
}

impl QuicServer {
    /// Re-executes this binary as `serve` on `opts.dir` and waits for it to be ready.
    pub fn start(opts: &ServeOptions) -> anyhow::Result<QuicServer> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let mut child = Command::new(&exe)
            .args(opts.to_args())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} serve", exe.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the server's stdout")?;
        // Read the banner on a thread so a silent server cannot block us past the timeout.
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(1);
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { return };
                if line.starts_with(READY) {
                    let _ = tx.send(line);
                    break;
                }
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = QuicServer {
            child,
            stdin,
            dir: opts.dir.clone(),
            quic_addr: String::new(),
            http_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            fingerprint: [0; 32],
            token: String::new(),
            ids: Arc::new(Vec::new()),
        };
        let started = Instant::now();
        let banner = loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!("the transfer server exited before it was ready ({status})");
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => break line,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    if started.elapsed() < START_TIMEOUT => {}
                Err(_) => bail!("the transfer server was not ready within {START_TIMEOUT:?}"),
            }
        };
        let words: Vec<&str> = banner.split_whitespace().collect();
        let [_, quic, http, fingerprint, token] = words[..] else {
            bail!("unexpected banner {banner:?}");
        };
        server.quic_addr = quic.to_string();
        server.http_addr = http.parse().context("the server's HTTP address")?;
        server.fingerprint =
            parse_fingerprint(fingerprint).map_err(|e| anyhow::anyhow!("fingerprint: {e}"))?;
        server.token = token.to_string();
        let listing =
            std::fs::read_to_string(opts.dir.join(IDS_FILE)).context("reading the account ids")?;
        let ids: Vec<String> = listing.lines().map(str::to_string).collect();
        if ids.len() != opts.accounts {
            bail!(
                "the server seeded {} accounts, not {}",
                ids.len(),
                opts.accounts
            );
        }
        server.ids = Arc::new(ids);
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `connections` clients, each on its own QUIC connection, signed in with the token.
    pub async fn connect(&self, connections: usize) -> anyhow::Result<Vec<QuicTransfer>> {
        let mut out = Vec::with_capacity(connections);
        for i in 0..connections.max(1) {
            let options = ClientOptions::new(Trust::PinnedSha256(self.fingerprint))
                .with_token(self.token.clone())
                .with_client_name(format!("transfer-bench-{i}"));
            let client = Client::connect(&self.quic_addr, options)
                .await
                .with_context(|| format!("connecting to {}", self.quic_addr))?;
            out.push(QuicTransfer {
                client,
                ids: self.ids.clone(),
            });
        }
        Ok(out)
    }

    /// Stops the server (closes its stdin; it shuts down gracefully, so every acknowledged
    /// commit is on disk), then opens its database in this process for verification.
    pub fn stop_and_open(mut self) -> anyhow::Result<Engine> {
        drop(self.stdin.take());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => bail!("the transfer server exited with {status}"),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => bail!("the transfer server did not stop within {STOP_TIMEOUT:?}"),
                Err(e) => bail!("waiting for the transfer server: {e}"),
            }
        }
        let config = EngineConfig {
            run_scheduler: false,
            ..EngineConfig::default()
        };
        Engine::open(&self.dir.join(DATABASE_FILE), schema(), functions(), config)
            .context("opening the server's database")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// One SDK client (one QUIC connection), shared by the logical clients assigned to it.
#[derive(Clone)]
pub struct QuicTransfer {
    pub client: Client,
    ids: Arc<Vec<String>>,
}

impl TransferClient for QuicTransfer {
    async fn transfer(
        &self,
        from: usize,
        to: usize,
        amount: i64,
    ) -> Result<Outcome, FunctionError> {
        let args = obj! {
            "from" => self.ids[from].as_str(),
            "to" => self.ids[to].as_str(),
            "amount" => amount,
        };
        let reply = self
            .client
            .call(
                CallKind::Mutation,
                "transfer",
                args,
                Some(new_mutation_id()),
            )
            .await;
        match reply {
            Ok(r) => Ok(Outcome::Done { ts: r.ts }),
            Err(ClientError::Function { code, message, .. })
                if code == codes::VALIDATION_ERROR && message == INSUFFICIENT =>
            {
                Ok(Outcome::Refused)
            }
            Err(ClientError::Function {
                code,
                message,
                data,
            }) => Err(FunctionError {
                code,
                message,
                data,
            }),
            Err(e) => Err(FunctionError {
                code: "TRANSPORT".into(),
                message: e.to_string(),
                data: Value::Null,
            }),
        }
    }
}
