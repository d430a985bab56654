//! The contended-transfer benchmark SpacetimeDB publishes as "keynote-2": 100,000 accounts with
//! equal balances, `transfer(from, to, amount)` refusing when `from` lacks the amount, `from`
//! and `to` drawn by Zipf(α) over the ids. Runs the engine in process, the engine behind a real
//! server over QUIC through the client SDK (the server is this binary re-executed as a separate
//! process), and a PostgreSQL peer (a throwaway cluster driven by pgbench); verifies every run,
//! prints a table and writes JSON + Markdown to `benches/results/transfer-<timestamp>.{json,md}`.
//! Run: `cargo run --release -p linkedup-benches --bin transfer -- --help`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::{Parser, Subcommand, ValueEnum};
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use linkedup_benches::fanout::procstat::ProcWatch;
use linkedup_benches::fanout::server_metrics::{self, ServerCounters};
use linkedup_benches::pg::PgCluster;
use linkedup_benches::report::{
    self, counters, fmt_rate, fmt_us, latency_histogram, CommitterFigures, Latency, Machine, Table,
};
use linkedup_benches::transfer::quic::{QuicServer, ServeOptions};
use linkedup_benches::transfer::{
    cpu_us_per_transfer, functions, read_balances, schema, seed_accounts, thread_cpu_ns, Outcome,
    TransferClient, Zipf, CPU_GROUPS, INSUFFICIENT,
};
use query_engine::engine::{Engine, EngineConfig};
use query_engine::error::FunctionError;
use query_engine::obj;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Longest a single server-counter scrape may take (runs on a blocking thread).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most calls in flight the serving process allows per connection.
const MAX_SERVER_CALLS_PER_CONNECTION: usize = 10_000;

#[derive(Parser, Debug, Clone, Serialize)]
#[command(
    about = "Contended transfers (SpacetimeDB keynote-2 workload): engine in process and over QUIC vs PostgreSQL"
)]
struct Args {
    #[command(subcommand)]
    #[serde(skip)]
    command: Option<Command>,
    /// Which systems to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "in-process,quic,pg")]
    modes: Vec<Mode>,
    /// Number of accounts.
    #[arg(long, default_value_t = 100_000)]
    accounts: usize,
    /// Starting balance of every account.
    #[arg(long, default_value_t = 10_000_000)]
    initial_balance: i64,
    /// Transfer amounts are uniform in 1..=max_amount.
    #[arg(long, default_value_t = 100)]
    max_amount: i64,
    /// Zipf exponents for choosing accounts (0 = uniform), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1.01,1.5")]
    alpha: Vec<f64>,
    /// Concurrent client counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,64")]
    clients: Vec<usize>,
    /// Calls each engine client (in process or over QUIC) keeps in flight, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    depth: Vec<usize>,
    /// QUIC connections the clients are spread over (client i uses connection i mod n; never
    /// more connections than clients).
    #[arg(long, default_value_t = 8)]
    quic_connections: usize,
    /// Seconds of warm-up before each measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Seconds measured per cell.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Accounts inserted per seeding transaction.
    #[arg(long, default_value_t = 2_000)]
    seed_batch: usize,
    /// Directory for the engine's temporary databases (default: the system temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Do not write results files.
    #[arg(long)]
    no_save: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    /// The engine in this process.
    InProcess,
    /// A server process, called over QUIC through the client SDK.
    Quic,
    /// PostgreSQL driven by pgbench.
    Pg,
}

#[derive(Subcommand, Debug, Clone)]
enum Command {
    /// Internal: serve the transfer schema over QUIC (started by the harness itself).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        accounts: usize,
        #[arg(long)]
        initial_balance: i64,
        #[arg(long)]
        seed_batch: usize,
        #[arg(long)]
        max_concurrent_calls: u32,
    },
}

// ----- in-process target -----

#[derive(Clone)]
struct InProcess {
    engine: Engine,
    /// Account number to document id.
    ids: Arc<Vec<String>>,
}

impl TransferClient for InProcess {
    fn transfer(
        &self,
        from: usize,
        to: usize,
        amount: i64,
    ) -> impl std::future::Future<Output = Result<Outcome, FunctionError>> + Send {
        let args = obj! {
            "from" => self.ids[from].clone(),
            "to" => self.ids[to].clone(),
            "amount" => amount,
        };
        let engine = self.engine.clone();
        async move {
            match engine.mutation("transfer", args, None).await {
                Ok(c) => Ok(Outcome::Done { ts: c.ts }),
                Err(e) if e.code == "VALIDATION_ERROR" && e.message == INSUFFICIENT => {
                    Ok(Outcome::Refused)
                }
                Err(e) => Err(e),
            }
        }
    }
}

impl InProcess {
    /// Opens a fresh database in `dir` and seeds the accounts in large transactions.
    async fn seed(dir: &Path, args: &Args) -> anyhow::Result<InProcess> {
        let config = EngineConfig {
            run_scheduler: false,
            ..EngineConfig::default()
        };
        let engine = Engine::open(&dir.join("transfer.redb"), schema(), functions(), config)
            .context("opening the engine")?;
        let ids = seed_accounts(
            &engine,
            args.accounts,
            args.initial_balance,
            args.seed_batch,
        )
        .await?;
        Ok(InProcess {
            engine,
            ids: Arc::new(ids),
        })
    }
}

// ----- driving one cell -----

/// One acknowledged transfer, for the replay check.
#[derive(Clone, Copy)]
struct Ack {
    ts: u64,
    from: u32,
    to: u32,
    amount: i64,
}

struct ClientStats {
    hist: Histogram<u64>,
    measured: u64,
    refused: u64,
    errors: BTreeMap<String, u64>,
    acks: Vec<Ack>,
}

/// One client: keeps `depth` calls in flight from warm-up start to the end of the window,
/// then drains. Latency and throughput count calls completing inside the window.
async fn client_loop<C: TransferClient>(
    client: C,
    zipf: Arc<Zipf>,
    depth: usize,
    max_amount: i64,
    seed: u64,
    window: (Instant, Instant),
) -> ClientStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats = ClientStats {
        hist: latency_histogram(),
        measured: 0,
        refused: 0,
        errors: BTreeMap::new(),
        acks: Vec::new(),
    };
    let mut inflight = FuturesUnordered::new();
    loop {
        while inflight.len() < depth.max(1) && Instant::now() < window.1 {
            let (from, to) = zipf.pair(&mut rng);
            let amount = rng.gen_range(1..=max_amount.max(1));
            let c = client.clone();
            inflight.push(async move {
                let t0 = Instant::now();
                let r = c.transfer(from, to, amount).await;
                (t0, Instant::now(), from, to, amount, r)
            });
        }
        let Some((t0, t1, from, to, amount, r)) = inflight.next().await else {
            break;
        };
        let in_window = t1 >= window.0 && t1 < window.1;
        match r {
            Ok(Outcome::Done { ts }) => {
                stats.acks.push(Ack {
                    ts,
                    from: from as u32,
                    to: to as u32,
                    amount,
                });
                if in_window {
                    stats.measured += 1;
                    let _ = stats
                        .hist
                        .record(t1.duration_since(t0).as_micros().max(1) as u64);
                }
            }
            Ok(Outcome::Refused) => stats.refused += 1,
            Err(e) => *stats.errors.entry(e.code).or_default() += 1,
        }
    }
    stats
}

/// What all the clients of one cell did.
struct Driven {
    hist: Histogram<u64>,
    measured: u64,
    refused: u64,
    errors: BTreeMap<String, u64>,
    acks: Vec<Ack>,
}

/// Starts `clients` client loops; client `c` calls through `targets[c % targets.len()]`.
fn spawn_clients<C: TransferClient>(
    targets: &[C],
    args: &Args,
    clients: usize,
    depth: usize,
    alpha: f64,
    window: (Instant, Instant),
) -> Vec<tokio::task::JoinHandle<ClientStats>> {
    let zipf = Arc::new(Zipf::new(args.accounts, alpha));
    (0..clients)
        .map(|c| {
            tokio::spawn(client_loop(
                targets[c % targets.len()].clone(),
                zipf.clone(),
                depth,
                args.max_amount,
                args.seed.wrapping_mul(1_000_003).wrapping_add(c as u64),
                window,
            ))
        })
        .collect()
}

async fn gather(tasks: Vec<tokio::task::JoinHandle<ClientStats>>) -> anyhow::Result<Driven> {
    let mut d = Driven {
        hist: latency_histogram(),
        measured: 0,
        refused: 0,
        errors: BTreeMap::new(),
        acks: Vec::new(),
    };
    for t in tasks {
        let s = t.await?;
        d.hist.add(&s.hist)?;
        d.measured += s.measured;
        d.refused += s.refused;
        for (k, n) in s.errors {
            *d.errors.entry(k).or_insert(0) += n;
        }
        d.acks.extend(s.acks);
    }
    Ok(d)
}

fn window(args: &Args) -> (Instant, Instant) {
    let start = Instant::now();
    (
        start + Duration::from_secs_f64(args.warmup_secs),
        start + Duration::from_secs_f64(args.warmup_secs + args.secs),
    )
}

#[derive(Debug, Serialize, Clone)]
struct Verification {
    total_preserved: bool,
    no_negative: bool,
    /// Replaying acknowledged transfers in commit order from the initial balances gives the
    /// final balances (engine only).
    replay_matches: Option<bool>,
    accounts_changed: usize,
}

impl Verification {
    fn ok(&self) -> bool {
        self.total_preserved && self.no_negative && self.replay_matches != Some(false)
    }
}

/// CPU use over the measured window, in cores (1.0 = one core busy).
#[derive(Debug, Serialize, Clone, Copy)]
struct Cpu {
    /// The server process (QUIC mode); `None` in process, where server and clients share one.
    server_cores: Option<f64>,
    /// This process: the clients (and, in process, the engine too).
    harness_cores: f64,
    /// CPU µs per transfer measured, by thread group of the engine's process (committer,
    /// subscription worker, tokio runtime, other); in process the runtime includes the
    /// clients.
    engine_us_per_transfer: [f64; 5],
}

#[derive(Debug, Serialize, Clone)]
struct Cell {
    system: String,
    clients: usize,
    depth: usize,
    /// QUIC connections the clients were spread over (QUIC mode only).
    connections: Option<usize>,
    alpha: f64,
    transfers_per_sec: f64,
    latency: Latency,
    acknowledged: u64,
    refused: u64,
    errors: BTreeMap<String, u64>,
    committer: Option<CommitterFigures>,
    cpu: Option<Cpu>,
    verification: Verification,
    /// `/proc/loadavg` when the cell ended.
    load_average: String,
}

const IN_PROCESS: &str = "engine (in-process)";
const OVER_QUIC: &str = "engine (QUIC)";

async fn engine_cell(
    args: &Args,
    clients: usize,
    depth: usize,
    alpha: f64,
) -> anyhow::Result<Cell> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base)?;
    let target = InProcess::seed(dir.path(), args).await?;
    let window = window(args);
    let tasks = spawn_clients(
        std::slice::from_ref(&target),
        args,
        clients,
        depth,
        alpha,
        window,
    );
    let harness = ProcWatch::new(std::process::id(), false);
    tokio::time::sleep_until(window.0.into()).await;
    let before = counters(target.engine.metrics());
    let (harness_mark, threads_before) = (harness.mark(), thread_cpu_ns(std::process::id()));
    tokio::time::sleep_until(window.1.into()).await;
    let after = counters(target.engine.metrics());
    let threads_after = thread_cpu_ns(std::process::id());
    let harness_cores = harness.since(harness_mark).cpu_cores;
    let mut d = gather(tasks).await?;
    let finals = read_balances(&target.engine, &target.ids).await?;
    let verification = verify(&finals, args, &mut d.acks);
    target.engine.shutdown();
    Ok(Cell {
        system: IN_PROCESS.into(),
        clients,
        depth,
        connections: None,
        alpha,
        transfers_per_sec: d.measured as f64 / args.secs,
        latency: Latency::of(&d.hist),
        acknowledged: d.acks.len() as u64,
        refused: d.refused,
        errors: d.errors,
        committer: Some(CommitterFigures::between(before, after, args.secs)),
        cpu: Some(Cpu {
            server_cores: None,
            harness_cores,
            engine_us_per_transfer: cpu_us_per_transfer(threads_before, threads_after, d.measured),
        }),
        verification,
        load_average: report::load_average(),
    })
}

/// The server's counters now, read over HTTP on a blocking thread.
async fn scrape(addr: std::net::SocketAddr) -> Option<server_metrics::Scrape> {
    let task = tokio::task::spawn_blocking(move || server_metrics::scrape(addr));
    tokio::time::timeout(SCRAPE_TIMEOUT, task)
        .await
        .ok()?
        .ok()
        .flatten()
}

fn committer_from(c: &ServerCounters) -> CommitterFigures {
    CommitterFigures {
        commits: c.commits as u64,
        batches: c.commit_batches as u64,
        mean_batch_txns: c.mean_batch_txns,
        fsyncs_per_sec: c.fsyncs_per_sec,
        mean_batch_write_us: c.mean_batch_write_ms * 1e3,
        conflicts: c.conflicts as u64,
        reexecutions: c.reexecutions as u64,
    }
}

/// The same workload through the client SDK against a server process over QUIC.
async fn quic_cell(args: &Args, clients: usize, depth: usize, alpha: f64) -> anyhow::Result<Cell> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base)?;
    let connections = args.quic_connections.clamp(1, clients.max(1));
    let per_connection = clients.div_ceil(connections) * depth.max(1);
    let opts = ServeOptions {
        dir: dir.path().to_path_buf(),
        accounts: args.accounts,
        initial_balance: args.initial_balance,
        seed_batch: args.seed_batch,
        max_concurrent_calls: per_connection.clamp(64, MAX_SERVER_CALLS_PER_CONNECTION) as u32,
    };
    let server = tokio::task::block_in_place(|| QuicServer::start(&opts))?;
    let targets = server.connect(connections).await?;
    let window = window(args);
    let tasks = spawn_clients(&targets, args, clients, depth, alpha, window);
    let harness = ProcWatch::new(std::process::id(), false);
    let served = ProcWatch::new(server.pid(), false);
    tokio::time::sleep_until(window.0.into()).await;
    let before = scrape(server.http_addr).await;
    let (harness_mark, served_mark) = (harness.mark(), served.mark());
    let threads_before = thread_cpu_ns(server.pid());
    tokio::time::sleep_until(window.1.into()).await;
    let threads_after = thread_cpu_ns(server.pid());
    let after = scrape(server.http_addr).await;
    let server_cores = served.since(served_mark).cpu_cores;
    let harness_cores = harness.since(harness_mark).cpu_cores;
    let mut d = gather(tasks).await?;
    let cpu = Cpu {
        server_cores: Some(server_cores),
        harness_cores,
        engine_us_per_transfer: cpu_us_per_transfer(threads_before, threads_after, d.measured),
    };
    for t in &targets {
        t.client.close().await;
    }
    drop(targets);
    let ids = server.ids.clone();
    let engine = tokio::task::block_in_place(|| server.stop_and_open())?;
    let finals = read_balances(&engine, &ids).await?;
    let verification = verify(&finals, args, &mut d.acks);
    engine.shutdown();
    Ok(Cell {
        system: OVER_QUIC.into(),
        clients,
        depth,
        connections: Some(connections),
        alpha,
        transfers_per_sec: d.measured as f64 / args.secs,
        latency: Latency::of(&d.hist),
        acknowledged: d.acks.len() as u64,
        refused: d.refused,
        errors: d.errors,
        committer: match (before, after) {
            (Some(b), Some(a)) => Some(committer_from(&ServerCounters::between(&b, &a))),
            _ => None,
        },
        cpu: Some(cpu),
        verification,
        load_average: report::load_average(),
    })
}

/// Checks the final balances against the initial state and the acknowledged transfers.
fn verify(finals: &[i64], args: &Args, acks: &mut [Ack]) -> Verification {
    let total: i128 = finals.iter().map(|b| *b as i128).sum();
    let expected = args.initial_balance as i128 * args.accounts as i128;
    acks.sort_by_key(|a| a.ts);
    let unique_ts = acks.windows(2).all(|w| w[0].ts < w[1].ts);
    let mut replay = vec![args.initial_balance; args.accounts];
    let mut replay_ok = unique_ts;
    for a in acks.iter() {
        let (f, t) = (a.from as usize, a.to as usize);
        if replay[f] < a.amount {
            replay_ok = false;
        }
        replay[f] -= a.amount;
        replay[t] += a.amount;
    }
    Verification {
        total_preserved: total == expected,
        no_negative: finals.iter().all(|b| *b >= 0),
        replay_matches: Some(replay_ok && replay == finals),
        accounts_changed: finals
            .iter()
            .filter(|b| **b != args.initial_balance)
            .count(),
    }
}

// ----- PostgreSQL peer -----

const PG_SETUP: &str = r#"
DROP TABLE IF EXISTS accounts;
CREATE TABLE accounts (id integer PRIMARY KEY, balance bigint NOT NULL);
CREATE OR REPLACE FUNCTION transfer(p_from integer, p_to integer, p_amount bigint)
RETURNS boolean AS $$
DECLARE
  from_balance bigint;
BEGIN
  -- Lock both rows in id order so concurrent transfers cannot deadlock.
  IF p_from < p_to THEN
    SELECT balance INTO from_balance FROM accounts WHERE id = p_from FOR UPDATE;
    PERFORM 1 FROM accounts WHERE id = p_to FOR UPDATE;
  ELSE
    PERFORM 1 FROM accounts WHERE id = p_to FOR UPDATE;
    SELECT balance INTO from_balance FROM accounts WHERE id = p_from FOR UPDATE;
  END IF;
  IF from_balance IS NULL THEN
    RAISE EXCEPTION 'no such account';
  END IF;
  IF from_balance < p_amount THEN
    RETURN false; -- refused: insufficient funds
  END IF;
  UPDATE accounts SET balance = balance - p_amount WHERE id = p_from;
  UPDATE accounts SET balance = balance + p_amount WHERE id = p_to;
  RETURN true;
END
$$ LANGUAGE plpgsql;
"#;

/// The pgbench script: the same pair choice as `Zipf::pair`.
fn pgbench_script(args: &Args, alpha: f64) -> String {
    let hi = args.accounts - 1;
    let draw = if alpha <= 0.0 {
        format!("random(0, {hi})")
    } else {
        // pgbench accepts parameters in [1.001, 1000].
        format!("random_zipfian(0, {hi}, {alpha})")
    };
    format!(
        "\\set from {draw}\n\\set to {draw}\n\\if :to = :from\n\\set to {draw}\n\\endif\n\\if :to = :from\n\\set to {draw}\n\\endif\n\\if :to = :from\n\\set to (:from + 1) % {n}\n\\endif\n\\set amount random(1, {max})\nSELECT transfer(:from, :to, :amount);\n",
        n = args.accounts,
        max = args.max_amount.max(1)
    )
}

async fn pg_seed(pg: &PgCluster, args: &Args) -> anyhow::Result<()> {
    let client = pg.connect().await?;
    client.batch_execute(PG_SETUP).await?;
    client
        .execute(
            "INSERT INTO accounts SELECT g, $1 FROM generate_series(0, $2 - 1) g",
            &[&args.initial_balance, &(args.accounts as i32)],
        )
        .await?;
    // Separate statements: VACUUM cannot run inside the implicit transaction of a batch.
    client.batch_execute("VACUUM ANALYZE accounts").await?;
    client.batch_execute("CHECKPOINT").await?;
    Ok(())
}

async fn pg_cell(pg: &PgCluster, args: &Args, clients: usize, alpha: f64) -> anyhow::Result<Cell> {
    if alpha > 0.0 && !(1.001..=1000.0).contains(&alpha) {
        bail!("pgbench's random_zipfian needs 1.001 <= alpha <= 1000 (got {alpha})");
    }
    pg_seed(pg, args).await?;
    let work = tempfile::tempdir()?;
    let script = work.path().join("transfer.sql");
    std::fs::write(&script, pgbench_script(args, alpha))?;
    let prefix = work.path().join("tx");
    let total_secs = (args.warmup_secs + args.secs).ceil() as u64 + 1;
    let out = pg
        .pgbench()
        .args(["-n", "-M", "prepared"])
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(
            clients
                .min(std::thread::available_parallelism().map_or(1, |n| n.get()))
                .to_string(),
        )
        .arg("-T")
        .arg(total_secs.to_string())
        .arg("-f")
        .arg(&script)
        .arg("-l")
        .arg(format!("--log-prefix={}", prefix.display()))
        .current_dir(work.path())
        .output()
        .context("running pgbench")?;
    if !out.status.success() {
        bail!(
            "pgbench failed: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            pg.log_tail(20)
        );
    }
    // Per-transaction log lines: client_id transaction_no latency_us script_no epoch_s epoch_us.
    let mut done: Vec<(u64, u64)> = Vec::new();
    let mut failed = 0u64;
    for entry in std::fs::read_dir(work.path())? {
        let path = entry?.path();
        let is_log = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("tx."));
        if !is_log {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                continue;
            }
            match (
                f[2].parse::<u64>(),
                f[4].parse::<u64>(),
                f[5].parse::<u64>(),
            ) {
                (Ok(lat), Ok(s), Ok(us)) => done.push((s * 1_000_000 + us, lat)),
                _ => failed += 1,
            }
        }
    }
    ensure!(!done.is_empty(), "pgbench logged no transactions");
    let first = done.iter().map(|d| d.0).min().unwrap_or(0);
    let w0 = first + (args.warmup_secs * 1e6) as u64;
    let w1 = w0 + (args.secs * 1e6) as u64;
    let last = done.iter().map(|d| d.0).max().unwrap_or(0);
    ensure!(last >= w1, "pgbench ended before the measured window did");
    let mut hist = latency_histogram();
    let mut measured = 0u64;
    for (t, lat) in &done {
        if *t >= w0 && *t < w1 {
            measured += 1;
            hist.record((*lat).max(1))?;
        }
    }
    let client = pg.connect().await?;
    let row = client
        .query_one(
            "SELECT sum(balance)::bigint, min(balance), count(*) FILTER (WHERE balance <> $1) FROM accounts",
            &[&args.initial_balance],
        )
        .await?;
    let (sum, min, changed): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let mut errors = BTreeMap::new();
    if failed > 0 {
        errors.insert("pgbench_failed".to_string(), failed);
    }
    Ok(Cell {
        system: "PostgreSQL 15 (pgbench)".into(),
        clients,
        depth: 1,
        connections: None,
        alpha,
        transfers_per_sec: measured as f64 / args.secs,
        latency: Latency::of(&hist),
        acknowledged: done.len() as u64,
        refused: 0,
        errors,
        committer: None,
        cpu: None,
        verification: Verification {
            total_preserved: sum as i128 == args.initial_balance as i128 * args.accounts as i128,
            no_negative: min >= 0,
            replay_matches: None,
            accounts_changed: changed as usize,
        },
        load_average: report::load_average(),
    })
}

// ----- main -----

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(Command::Serve {
        dir,
        accounts,
        initial_balance,
        seed_batch,
        max_concurrent_calls,
    }) = args.command.clone()
    {
        return rt.block_on(linkedup_benches::transfer::quic::serve(ServeOptions {
            dir,
            accounts,
            initial_balance,
            seed_batch,
            max_concurrent_calls,
        }));
    }
    ensure!(args.accounts >= 2, "need at least two accounts");
    let machine = Machine::detect();
    rt.block_on(run(args, machine))
}

fn describe(c: &Cell) -> String {
    let m = c
        .committer
        .map(|m| {
            format!(
                ", {:.1} txns/batch, {:.0} fsyncs/s, {} conflicts re-executed",
                m.mean_batch_txns, m.fsyncs_per_sec, m.reexecutions
            )
        })
        .unwrap_or_default();
    let cpu = c
        .cpu
        .map(|cpu| match cpu.server_cores {
            Some(s) => format!(
                ", CPU server {s:.2} + clients {:.2} cores, server µs/transfer {}",
                cpu.harness_cores,
                per_group(&cpu.engine_us_per_transfer)
            ),
            None => format!(
                ", CPU {:.2} cores, µs/transfer {}",
                cpu.harness_cores,
                per_group(&cpu.engine_us_per_transfer)
            ),
        })
        .unwrap_or_default();
    let conns = c
        .connections
        .map(|n| format!(" conns={n}"))
        .unwrap_or_default();
    format!(
        "{} c={} d={}{conns} α={}: {} transfers/s, p50 {}, p99 {}{m}{cpu}; refused {}, errors {:?}, verified {} (load {})",
        c.system,
        c.clients,
        c.depth,
        c.alpha,
        fmt_rate(c.transfers_per_sec),
        fmt_us(c.latency.p50_us),
        fmt_us(c.latency.p99_us),
        c.refused,
        c.errors,
        if c.verification.ok() { "ok" } else { "FAILED" },
        c.load_average
    )
}

fn per_group(us: &[f64; 5]) -> String {
    CPU_GROUPS
        .iter()
        .zip(us)
        .map(|(g, u)| format!("{g} {u:.0}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

async fn run(args: Args, machine: Machine) -> anyhow::Result<()> {
    let mut pg_note = None;
    let pg = if !args.modes.contains(&Mode::Pg) {
        None
    } else {
        match PgCluster::start(&[("shared_buffers", "256MB"), ("max_wal_size", "4GB")]) {
            Ok(pg) => Some(pg),
            Err(e) => {
                eprintln!("PostgreSQL peer skipped: {e:#}");
                pg_note = Some(format!("PostgreSQL peer skipped: {e:#}"));
                None
            }
        }
    };
    // Engine and PostgreSQL cells of the same (clients, α) run back to back, so that load from
    // elsewhere on the machine skews both alike.
    let mut cells = Vec::new();
    for &clients in &args.clients {
        for &alpha in &args.alpha {
            for &depth in &args.depth {
                if args.modes.contains(&Mode::InProcess) {
                    let c = engine_cell(&args, clients, depth, alpha).await?;
                    eprintln!("{}", describe(&c));
                    cells.push(c);
                }
                if args.modes.contains(&Mode::Quic) {
                    let c = quic_cell(&args, clients, depth, alpha).await?;
                    eprintln!("{}", describe(&c));
                    cells.push(c);
                }
            }
            if let Some(pg) = &pg {
                let c = pg_cell(pg, &args, clients, alpha).await?;
                eprintln!("{}", describe(&c));
                cells.push(c);
            }
        }
    }
    if let Some(pg) = pg {
        pg.stop()?;
    }
    finish(&args, &machine, &cells, pg_note)
}

fn finish(
    args: &Args,
    machine: &Machine,
    cells: &[Cell],
    pg_note: Option<String>,
) -> anyhow::Result<()> {
    let mut headers = vec!["system".to_string(), "clients".into(), "depth".into()];
    for a in &args.alpha {
        headers.push(format!("α={a} transfers/s"));
        headers.push(format!("α={a} p50"));
        headers.push(format!("α={a} p99"));
    }
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut table = Table::new(&header_refs);
    let mut metrics = Table::new(&[
        "system",
        "clients",
        "depth",
        "α",
        "txns/batch",
        "fsyncs/s",
        "conflicts",
        "re-executions",
        "refused",
        "errors",
        "verified",
        "server CPU (cores)",
        "client CPU (cores)",
        "engine CPU µs/transfer (committer / applier / subscriptions / runtime / other)",
    ]);
    let mut rows: Vec<(String, usize, usize)> = Vec::new();
    for c in cells {
        let key = (c.system.clone(), c.clients, c.depth);
        if !rows.contains(&key) {
            rows.push(key);
        }
    }
    for (system, clients, depth) in &rows {
        let mut row = vec![system.clone(), clients.to_string(), depth.to_string()];
        for a in &args.alpha {
            match cells.iter().find(|c| {
                &c.system == system && c.clients == *clients && c.depth == *depth && c.alpha == *a
            }) {
                Some(c) => {
                    row.push(fmt_rate(c.transfers_per_sec));
                    row.push(fmt_us(c.latency.p50_us));
                    row.push(fmt_us(c.latency.p99_us));
                }
                None => row.extend(["-".to_string(), "-".into(), "-".into()]),
            }
        }
        table.row(row);
    }
    for c in cells {
        let errors = if c.errors.is_empty() {
            "0".to_string()
        } else {
            format!("{:?}", c.errors)
        };
        let verified = if c.verification.ok() { "ok" } else { "FAILED" };
        match &c.committer {
            Some(m) => metrics.row(vec![
                c.system.clone(),
                c.clients.to_string(),
                c.depth.to_string(),
                c.alpha.to_string(),
                format!("{:.1}", m.mean_batch_txns),
                format!("{:.0}", m.fsyncs_per_sec),
                m.conflicts.to_string(),
                m.reexecutions.to_string(),
                c.refused.to_string(),
                errors,
                verified.to_string(),
                c.cpu
                    .and_then(|x| x.server_cores)
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or_else(|| "-".into()),
                c.cpu
                    .map(|x| format!("{:.2}", x.harness_cores))
                    .unwrap_or_else(|| "-".into()),
                c.cpu
                    .map(|x| {
                        x.engine_us_per_transfer
                            .iter()
                            .map(|u| format!("{u:.0}"))
                            .collect::<Vec<_>>()
                            .join(" / ")
                    })
                    .unwrap_or_else(|| "-".into()),
            ]),
            None => continue,
        }
    }
    let targets = target_lines(args, cells);
    println!(
        "\nContended transfers (keynote-2), {} accounts, durable commits:\n{}",
        args.accounts,
        table.text()
    );
    println!(
        "Engine committer figures (measured window):\n{}",
        metrics.text()
    );
    for t in &targets {
        println!("{t}");
    }
    let pg_verified: Vec<String> = cells
        .iter()
        .filter(|c| is_pg(c))
        .map(|c| {
            format!(
                "PostgreSQL c={} α={}: total preserved {}, none negative {}, {} accounts changed",
                c.clients,
                c.alpha,
                c.verification.total_preserved,
                c.verification.no_negative,
                c.verification.accounts_changed
            )
        })
        .collect();
    for l in &pg_verified {
        println!("{l}");
    }
    if cells.iter().any(|c| !c.verification.ok()) {
        eprintln!("VERIFICATION FAILED for at least one cell");
    }
    if args.no_save {
        return Ok(());
    }
    let json = serde_json::json!({
        "benchmark": "transfer (SpacetimeDB keynote-2 workload)",
        "machine": machine,
        "load_average_at_end": report::load_average(),
        "parameters": args,
        "cells": cells,
        "targets": targets,
        "postgres_note": pg_note,
    });
    let md = format!(
        "# Contended transfers (SpacetimeDB keynote-2 workload)\n\n{}- parameters: {} accounts × {} initial balance, amounts 1..={}, {} s measured after {} s warm-up per cell, durable commits (engine: fsync per batch; PostgreSQL: fsync=on, synchronous_commit=on)\n- engine (QUIC): a server process (this binary re-executed as `serve`, development mode, TLS 1.3 on 127.0.0.1) called through the Rust client SDK, the clients spread over up to {} QUIC connections; server and clients share the machine's cores\n{}\n## Throughput and latency\n\n{}\n## Engine committer (measured window)\n\n{}\n## Targets\n\n{}\n\n## PostgreSQL verification\n\n{}\n",
        machine.markdown(),
        args.accounts,
        args.initial_balance,
        args.max_amount,
        args.secs,
        args.warmup_secs,
        args.quic_connections,
        pg_note.map(|n| format!("- {n}\n")).unwrap_or_default(),
        table.markdown(),
        metrics.markdown(),
        targets.iter().map(|t| format!("- {t}")).collect::<Vec<_>>().join("\n"),
        pg_verified.iter().map(|t| format!("- {t}")).collect::<Vec<_>>().join("\n"),
    );
    let (j, m) = report::write_results("transfer", &json, &md)?;
    println!("wrote {} and {}", j.display(), m.display());
    Ok(())
}

/// The issue's targets, checked at the largest client count with the deepest pipeline, for
/// the engine in process and over QUIC.
fn target_lines(args: &Args, cells: &[Cell]) -> Vec<String> {
    let Some(&clients) = args.clients.iter().max() else {
        return Vec::new();
    };
    let depth = args.depth.iter().copied().max().unwrap_or(1);
    let rate = |system: &str, a: f64| {
        cells
            .iter()
            .find(|c| {
                c.system == system && c.clients == clients && c.depth == depth && c.alpha == a
            })
            .map(|c| c.transfers_per_sec)
    };
    let pg = |a: f64| {
        cells
            .iter()
            .find(|c| is_pg(c) && c.clients == clients && c.alpha == a)
            .map(|c| c.transfers_per_sec)
    };
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut out = Vec::new();
    for system in [IN_PROCESS, OVER_QUIC] {
        if let Some(e0) = rate(system, 0.0) {
            out.push(format!(
                "{system} α=0, {clients} clients × {depth} in flight: {} transfers/s (target ≥ 20,000: {})",
                fmt_rate(e0),
                mark(e0 >= 20_000.0)
            ));
            if let Some(e15) = rate(system, 1.5) {
                out.push(format!(
                    "{system} α=1.5 / α=0: {:.0} % (target ≥ 70 %: {})",
                    100.0 * e15 / e0,
                    mark(e15 >= 0.7 * e0)
                ));
            }
        }
        if let (Some(e15), Some(p15)) = (rate(system, 1.5), pg(1.5)) {
            out.push(format!(
                "{system} / PostgreSQL at α=1.5, {clients} clients: {:.1}× (target ≥ 4×: {})",
                e15 / p15,
                mark(e15 >= 4.0 * p15)
            ));
        }
    }
    out
}

fn is_pg(c: &Cell) -> bool {
    c.system.starts_with("PostgreSQL")
}
