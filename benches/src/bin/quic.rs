//! Calls over the wire: the `linkedup-server` release binary runs as a child process (its own
//! runtime and threads, as in production; client and server still share this machine's cores)
//! with the LinkedUp functions, and SDK clients call it over QUIC on 127.0.0.1. Measures the
//! round trip of a point query (`users.me`, one index lookup) and of a durable mutation
//! (`profiles.update`, one document written, fsync on) from one client in sequence, then
//! calls/s with N concurrent clients on separate connections, each its own user.
//! Prints a table and writes JSON + Markdown to `benches/results/quic-<timestamp>.{json,md}`.
//! Run: `cargo run --release -p linkedup-benches --bin quic -- --help`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use linkedup_benches::report::{
    self, fmt_rate, fmt_us, latency_histogram, Latency, Machine, Table,
};
use linkedup_client::{fingerprint_from_pem, Client, ClientOptions, Trust, Value};
use linkedup_server::auth::{DevClaims, DevIssuer};
use linkedup_server::config::{DEV_AUDIENCE, DEV_ISSUER};
use query_engine::obj;
use serde::Serialize;

#[derive(Parser, Debug, Clone, Serialize)]
#[command(
    about = "Round-trip latency and calls/s over QUIC against a linkedup-server child process"
)]
struct Args {
    /// Sequential point queries measured from one client.
    #[arg(long, default_value_t = 10_000)]
    calls: u64,
    /// Sequential durable mutations measured from one client.
    #[arg(long, default_value_t = 2_000)]
    mutation_calls: u64,
    /// Concurrent clients (one connection and one user each) for the throughput runs.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds measured per throughput run.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Seconds of warm-up before each throughput run.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Start the server with --no-fsync (not the default; only to separate fsync cost).
    #[arg(long)]
    no_fsync: bool,
    /// The server binary (default: `linkedup-server` next to this one, built if missing).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Do not write results files.
    #[arg(long)]
    no_save: bool,
}

/// Longest wait for the child server to print its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Calls made before the sequential measurements, not recorded.
const SEQUENTIAL_WARMUP_CALLS: u64 = 500;
/// Largest `/metrics` response read.
const MAX_METRICS_BYTES: u64 = 4 << 20;

/// The server child process and where it listens; killed (by its pid) when dropped.
struct ServerProcess {
    child: Child,
    quic_addr: String,
    http_addr: String,
    data_dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.server_bin {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let dir = exe.parent().context("this binary has no directory")?;
    let bin = dir.join("linkedup-server");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "linkedup-server", "--bin", "linkedup-server"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        eprintln!("building the server: {cmd:?}");
        let status = cmd.status().context("running cargo build")?;
        if !status.success() || !bin.exists() {
            bail!("could not build {}", bin.display());
        }
    }
    Ok(bin)
}

fn start_server(bin: &Path, no_fsync: bool) -> anyhow::Result<ServerProcess> {
    let data_dir = tempfile::tempdir().context("creating the data directory")?;
    let mut cmd = Command::new(bin);
    cmd.arg("--data-dir")
        .arg(data_dir.path())
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if no_fsync {
        cmd.arg("--no-fsync");
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("child stdout")?;
    // Read the banner on a thread (with a deadline here), then keep draining stdout.
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(64);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.try_send(line).is_err() {
                // Nobody listens any more (or the banner is over): just drain.
            }
        }
    });
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let (mut quic_addr, mut http_addr) = (None, None);
    while quic_addr.is_none() || http_addr.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server did not print its addresses within {STARTUP_TIMEOUT:?}");
            }
        };
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("QUIC"), Some(addr)) => quic_addr = Some(addr.to_string()),
            (Some("HTTP"), Some(url)) => {
                http_addr = Some(url.trim_start_matches("http://").to_string())
            }
            _ => {}
        }
    }
    Ok(ServerProcess {
        child,
        quic_addr: quic_addr.unwrap_or_default(),
        http_addr: http_addr.unwrap_or_default(),
        data_dir,
    })
}

/// Signs in `subject` on its own connection and makes sure its user exists.
async fn connect(
    server: &ServerProcess,
    issuer: &DevIssuer,
    fingerprint: [u8; 32],
    subject: String,
) -> anyhow::Result<Client> {
    let mut claims = DevClaims::new(subject.clone());
    claims.org_id = Some("org_bench".into());
    claims.ttl = Duration::from_secs(6 * 3600);
    let options = ClientOptions::new(Trust::PinnedSha256(fingerprint))
        .with_token(issuer.mint(claims))
        .with_client_name("linkedup-bench-quic");
    let client = Client::connect(&server.quic_addr, options)
        .await
        .with_context(|| format!("connecting as {subject}"))?;
    let _: Value = client
        .mutation("users.ensure", &obj! { "displayName" => subject.as_str() })
        .await
        .map_err(|e| anyhow!("users.ensure: {e}"))?;
    Ok(client)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
enum Call {
    /// `users.me`: one index lookup.
    PointQuery,
    /// `profiles.update`: reads the caller's user and profile, writes the profile; durable.
    Mutation,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::PointQuery => "point query (users.me)",
            Call::Mutation => "durable mutation (profiles.update)",
        }
    }

    async fn run(self, client: &Client, n: u64) -> anyhow::Result<()> {
        match self {
            Call::PointQuery => {
                let _: Value = client
                    .query("users.me", &obj! {})
                    .await
                    .map_err(|e| anyhow!("users.me: {e}"))?;
            }
            Call::Mutation => {
                let bio = format!("bio {n}");
                let _: Value = client
                    .mutation("profiles.update", &obj! { "bio" => bio.as_str() })
                    .await
                    .map_err(|e| anyhow!("profiles.update: {e}"))?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize)]
struct Run {
    call: Call,
    clients: usize,
    calls: u64,
    secs: f64,
    calls_per_sec: f64,
    latency: Latency,
    /// CPU time per call (user + system) of the server process and of this (client) process.
    server_cpu_us_per_call: f64,
    client_cpu_us_per_call: f64,
    /// Server committer figures over the run (from `/metrics`), for mutations.
    #[serde(skip_serializing_if = "Option::is_none")]
    committer: Option<ServerCommitter>,
}

/// One client, one call at a time.
async fn sequential(
    client: &Client,
    call: Call,
    calls: u64,
    server: &ServerProcess,
) -> anyhow::Result<Run> {
    for n in 0..SEQUENTIAL_WARMUP_CALLS {
        call.run(client, n).await?;
    }
    let mut hist = latency_histogram();
    let before = scrape(server).ok();
    let cpu = Cpu::now(server);
    let started = Instant::now();
    for n in 0..calls {
        let t = Instant::now();
        call.run(client, n).await?;
        record(&mut hist, t.elapsed());
    }
    let secs = started.elapsed().as_secs_f64();
    let (server_cpu_us, client_cpu_us) = cpu.since(server);
    let committer = committer_between(before, scrape(server).ok(), secs, call);
    Ok(Run {
        call,
        clients: 1,
        calls,
        secs,
        calls_per_sec: calls as f64 / secs,
        latency: Latency::of(&hist),
        server_cpu_us_per_call: server_cpu_us / calls as f64,
        client_cpu_us_per_call: client_cpu_us / calls as f64,
        committer,
    })
}

const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const STOPPED: u8 = 2;

/// Every client in a closed loop (next call as soon as the last returns); only calls that start
/// and end inside the measured window count.
async fn concurrent(
    clients: &[Client],
    call: Call,
    args: &Args,
    server: &ServerProcess,
) -> anyhow::Result<Run> {
    let phase = Arc::new(AtomicU8::new(WARMING));
    let failed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(clients.len());
    for client in clients {
        let client = client.clone();
        let phase = phase.clone();
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = latency_histogram();
            let mut n = 0u64;
            loop {
                let at_start = phase.load(Ordering::Relaxed);
                if at_start == STOPPED {
                    return Ok::<_, anyhow::Error>(hist);
                }
                let t = Instant::now();
                if let Err(e) = call.run(&client, n).await {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                n += 1;
                if at_start == MEASURING && phase.load(Ordering::Relaxed) == MEASURING {
                    record(&mut hist, t.elapsed());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_secs)).await;
    let before = scrape(server).ok();
    let cpu = Cpu::now(server);
    phase.store(MEASURING, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.secs)).await;
    phase.store(STOPPED, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let (server_cpu_us, client_cpu_us) = cpu.since(server);
    let after = scrape(server).ok();
    let mut hist = latency_histogram();
    for t in tasks {
        let h = t.await.context("client task panicked")??;
        hist.add(&h).context("merging histograms")?;
    }
    if failed.load(Ordering::Relaxed) {
        bail!("a client failed");
    }
    Ok(Run {
        call,
        clients: clients.len(),
        calls: hist.len(),
        secs,
        calls_per_sec: hist.len() as f64 / secs,
        latency: Latency::of(&hist),
        server_cpu_us_per_call: server_cpu_us / hist.len().max(1) as f64,
        client_cpu_us_per_call: client_cpu_us / hist.len().max(1) as f64,
        committer: committer_between(before, after, secs, call),
    })
}

/// CPU time consumed so far by the server child and by this process, from `/proc/<pid>/stat`
/// (0 where unavailable).
struct Cpu {
    server_us: f64,
    client_us: f64,
}

impl Cpu {
    fn now(server: &ServerProcess) -> Cpu {
        Cpu {
            server_us: cpu_us(&server.child.id().to_string()),
            client_us: cpu_us("self"),
        }
    }

    /// (server, client) CPU µs since `self`.
    fn since(&self, server: &ServerProcess) -> (f64, f64) {
        let now = Cpu::now(server);
        (
            now.server_us - self.server_us,
            now.client_us - self.client_us,
        )
    }
}

/// utime + stime of `pid` in µs. Linux reports them in clock ticks of `CLK_TCK` (100 Hz on
/// every mainstream configuration), hence 10 ms resolution: fine over runs of seconds.
fn cpu_us(pid: &str) -> f64 {
    const US_PER_TICK: f64 = 10_000.0;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) * US_PER_TICK
}

fn record(hist: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    let _ = hist.record(us.min(hist.high()));
}

/// Engine counters read from the server's `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
struct ServerCounters {
    commits: f64,
    batches: f64,
    write_secs: f64,
}

#[derive(Clone, Copy, Debug, Serialize)]
struct ServerCommitter {
    commits_per_sec: f64,
    fsyncs_per_sec: f64,
    mean_batch_txns: f64,
    mean_batch_write_us: f64,
}

fn committer_between(
    before: Option<ServerCounters>,
    after: Option<ServerCounters>,
    secs: f64,
    call: Call,
) -> Option<ServerCommitter> {
    let (a, b) = (before?, after?);
    if call != Call::Mutation {
        return None;
    }
    let batches = (b.batches - a.batches).max(1.0);
    Some(ServerCommitter {
        commits_per_sec: (b.commits - a.commits) / secs,
        fsyncs_per_sec: (b.batches - a.batches) / secs,
        mean_batch_txns: (b.commits - a.commits) / batches,
        mean_batch_write_us: (b.write_secs - a.write_secs) * 1e6 / batches,
    })
}

/// `GET /metrics` over plain HTTP/1.0 on loopback, parsed for the committer counters.
fn scrape(server: &ServerProcess) -> anyhow::Result<ServerCounters> {
    let mut conn = std::net::TcpStream::connect(&server.http_addr)
        .with_context(|| format!("connecting to {}", server.http_addr))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        conn,
        "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n",
        server.http_addr
    )?;
    let mut body = String::new();
    conn.take(MAX_METRICS_BYTES).read_to_string(&mut body)?;
    let value = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Ok(ServerCounters {
        commits: value("engine_commits_total").context("engine_commits_total")?,
        batches: value("engine_commit_batches_total").context("engine_commit_batches_total")?,
        write_secs: value("engine_commit_write_seconds_sum").unwrap_or(0.0),
    })
}

#[derive(Serialize)]
struct Results {
    runs: Vec<Run>,
    server: &'static str,
    machine: Machine,
    args: Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.secs <= 0.0 || args.calls == 0 {
        bail!("--clients, --secs and --calls must be positive");
    }
    let machine = Machine::detect();
    let bin = server_binary(&args)?;
    let server = start_server(&bin, args.no_fsync)?;
    eprintln!(
        "server {} running as pid {} on {} (QUIC) / {} (HTTP)",
        bin.display(),
        server.child.id(),
        server.quic_addr,
        server.http_addr
    );
    let pem = std::fs::read(server.data_dir.path().join("dev-cert.pem"))
        .context("reading the server's development certificate")?;
    let fingerprint = fingerprint_from_pem(&pem).map_err(|e| anyhow!("{e}"))?;
    let issuer = DevIssuer::load_or_generate(server.data_dir.path(), DEV_ISSUER, DEV_AUDIENCE)
        .map_err(|e| anyhow!("loading the dev issuer key: {e}"))?;

    let mut runs = Vec::new();
    let solo = connect(&server, &issuer, fingerprint, "bench_solo".into()).await?;
    for (call, calls) in [
        (Call::PointQuery, args.calls),
        (Call::Mutation, args.mutation_calls),
    ] {
        eprintln!("{}: {calls} sequential calls", call.name());
        runs.push(sequential(&solo, call, calls, &server).await?);
    }
    solo.close().await;

    eprintln!("connecting {} clients", args.clients);
    let mut clients = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        clients.push(connect(&server, &issuer, fingerprint, format!("bench_{i}")).await?);
    }
    for call in [Call::PointQuery, Call::Mutation] {
        eprintln!(
            "{}: {} clients, {:.1} s (+{:.1} s warm-up)",
            call.name(),
            args.clients,
            args.secs,
            args.warmup_secs
        );
        runs.push(concurrent(&clients, call, &args, &server).await?);
    }
    for c in &clients {
        c.close().await;
    }
    drop(server);

    let mut table = Table::new(&[
        "call",
        "clients",
        "calls",
        "calls/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "server CPU/call",
        "client CPU/call",
        "txns/fsync",
    ]);
    for r in &runs {
        table.row(vec![
            r.call.name().into(),
            r.clients.to_string(),
            r.calls.to_string(),
            fmt_rate(r.calls_per_sec),
            fmt_us(r.latency.p50_us),
            fmt_us(r.latency.p99_us),
            fmt_us(r.latency.p999_us),
            fmt_us(r.latency.max_us),
            fmt_us(r.server_cpu_us_per_call.round() as u64),
            fmt_us(r.client_cpu_us_per_call.round() as u64),
            r.committer
                .map(|c| format!("{:.1}", c.mean_batch_txns))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{}", table.text());
    let results = Results {
        runs,
        server: "linkedup-server child process (LinkedUp functions), QUIC on 127.0.0.1",
        machine,
        args: args.clone(),
    };
    if !args.no_save {
        let md = format!(
            "# QUIC round trips and calls/s\n\n{}- server: `linkedup-server` as a child process \
             (fsync {}), clients in this process; both on the same cores\n\n{}",
            results.machine.markdown(),
            if args.no_fsync { "off" } else { "on" },
            table.markdown()
        );
        let (j, m) = report::write_results("quic", &serde_json::to_value(&results)?, &md)?;
        eprintln!("wrote {} and {}", j.display(), m.display());
    }
    Ok(())
}
