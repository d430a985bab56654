//! Reactive fan-out over QUIC, side by side with PostgreSQL LISTEN/NOTIFY (issue 8): M
//! meetings × S subscribers as real SDK clients of a `linkedup-server` process, open-loop
//! transcript writes through `transcripts.ingestChunk`, commit→delivery and send→delivery
//! latency of every delivered chunk, and the scenarios: the seed's load, a ramp to the highest
//! sustainable rate, a subscriber that stops reading, idle subscriptions beside the load, and a
//! reconnect storm. Then the same load on a throwaway PostgreSQL cluster.
//!
//! `cargo build --release -p linkedup-server && cargo run --release -p linkedup-benches --bin fanout -- --help`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use linkedup_benches::fanout::linkedup::{FleetPlan, LinkedUpFleet};
use linkedup_benches::fanout::postgres::{PgFleet, PgPlan};
use linkedup_benches::fanout::procstat::ProcWatch;
use linkedup_benches::fanout::ramp::Bisect;
use linkedup_benches::fanout::server::{default_server_binary, ServerProcess, Target};
use linkedup_benches::fanout::{
    run_step, settle, wait_current, FanoutSystem, StepPlan, StepResult,
};
use linkedup_benches::pg::PgCluster;
use linkedup_benches::report::{fmt_rate, fmt_us, utc_timestamp, write_results, Machine, Table};
use serde::Serialize;

/// Longest wait for the server to go idle after a step, before the next one starts.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug, Clone, Serialize)]
#[command(about = "Reactive fan-out over QUIC vs PostgreSQL LISTEN/NOTIFY")]
struct Args {
    /// Use a running server at this QUIC address instead of starting one (needs
    /// --fingerprint and --token-dir).
    #[arg(long)]
    server: Option<String>,
    /// SHA-256 of the running server's certificate (64 hex digits).
    #[arg(long)]
    fingerprint: Option<String>,
    /// The running server's --data-dir (its development issuer key mints the tokens).
    #[arg(long)]
    token_dir: Option<PathBuf>,
    /// The running server's HTTP address, for its /metrics (optional).
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
    /// The server binary to start [default: target/release/linkedup-server].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Start the server with --no-fsync (not durable; for comparison only).
    #[arg(long)]
    no_fsync: bool,
    /// Meetings.
    #[arg(long, default_value_t = 1000)]
    meetings: usize,
    /// Subscribers per meeting.
    #[arg(long, default_value_t = 5)]
    subscribers: usize,
    /// Producer users per meeting (each its own connection). The per-user ingest limit is
    /// 1,200 calls a minute, so a meeting takes about 18 × producers writes/s at most.
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// Client connections the subscribers are spread over.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Worker threads of the harness's own runtime (clients, subscribers, driver, and the
    /// PostgreSQL peer's listeners). Default: half the cores, at least one, so that the
    /// server under test keeps the rest; on the 2-core machine one thread took ~15 % less
    /// CPU per write than two (fewer wake-ups and steals across threads).
    #[arg(long)]
    harness_threads: Option<usize>,
    /// Stream window (`limit`); a subscriber re-subscribes when its window fills [default:
    /// the SDK's live window, `DEFAULT_STREAM_LIMIT`].
    #[arg(long, default_value_t = linkedup_client::transcripts::DEFAULT_STREAM_LIMIT as usize)]
    window: usize,
    /// Write rate of the seed load, writes/s (all meetings together).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Write rate of the stalled-reader, idle and storm scenarios [default: --rate]. Run them
    /// below saturation: an overloaded baseline hides what the scenario changes. When it
    /// differs from --rate, a baseline step at this rate runs first (both systems).
    #[arg(long)]
    scenario_rate: Option<f64>,
    /// Seconds of unmeasured writes at the start of each step.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Measured seconds per step.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Commit→delivery p99 limit for a sustainable step, ms.
    #[arg(long, default_value_t = 25)]
    p99_ms: u64,
    /// Chunk text length, bytes.
    #[arg(long, default_value_t = 100)]
    text_bytes: usize,
    /// Most writes in flight; a write due with this many outstanding is skipped (step fails).
    #[arg(long, default_value_t = 20_000)]
    max_in_flight: usize,
    /// Search for the highest sustainable rate (both systems).
    #[arg(long)]
    ramp: bool,
    /// Ramp ceiling, writes/s.
    #[arg(long, default_value_t = 40_000)]
    ramp_max: u64,
    /// Most ramp steps per system.
    #[arg(long, default_value_t = 6)]
    ramp_steps: usize,
    /// Idle subscriptions for the idle scenario (0 skips it).
    #[arg(long, default_value_t = 50_000)]
    idle: usize,
    /// Clients in the reconnect storm (0 skips it).
    #[arg(long, default_value_t = 1000)]
    storm: usize,
    /// Skip the stalled-subscriber scenario.
    #[arg(long)]
    no_slow: bool,
    /// Skip the PostgreSQL peer.
    #[arg(long)]
    no_pg: bool,
    /// PostgreSQL writer connections.
    #[arg(long, default_value_t = 64)]
    pg_writers: usize,
    /// PostgreSQL listener connections (each LISTENs to a slice of the meetings).
    #[arg(long, default_value_t = 32)]
    pg_listeners: usize,
}

fn bar() -> ProgressBar {
    let b = ProgressBar::new(0);
    b.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:40}] {pos}/{len} writes ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b
}

#[derive(Serialize)]
struct Scenario {
    name: String,
    step: StepResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Serialize, Default)]
struct RampOutcome {
    system: String,
    best_rate: u64,
    ceiling_passed: bool,
    steps: Vec<StepResult>,
}

#[derive(Serialize, Default)]
struct Storm {
    clients: usize,
    reconnect_and_catch_up_ms: u64,
    still_behind: u64,
    reconnected: u64,
}

struct Runner {
    args: Args,
    bar: ProgressBar,
    next_write: u64,
}

impl Runner {
    /// A line above the progress bar, or on stderr when the bar is hidden (not a terminal).
    fn say(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    fn plan(&self, rate: f64) -> StepPlan {
        StepPlan {
            rate,
            warmup: Duration::from_secs(self.args.warmup),
            measure: Duration::from_secs(self.args.seconds),
            meetings: self.args.meetings,
            producers: self.args.producers,
            max_in_flight: self.args.max_in_flight,
            text_bytes: self.args.text_bytes,
            drain_timeout: Duration::from_secs(20),
            p99_limit_us: self.args.p99_ms * 1000,
        }
    }

    async fn step(&mut self, system: &dyn FanoutSystem, label: &str, rate: f64) -> StepResult {
        self.bar
            .set_message(format!("{} {label}", short(system.name())));
        let first = self.next_write;
        self.next_write += 1 << 32;
        let r = run_step(system, &self.plan(rate), first, Some(&self.bar)).await;
        if r.lagging_subscribers > 0 {
            // Let an overloaded step's backlog clear so it does not spill into the next one.
            let (behind, waited) = wait_current(system, Duration::from_secs(120)).await;
            self.say(format!(
                "  backlog: {behind} subscribers still behind after a further {:.1} s",
                waited.as_secs_f64()
            ));
        }
        let (idle, settled, cores) = settle(system, SETTLE_TIMEOUT).await;
        if !idle {
            self.say(format!(
                "  the server was still busy {:.0} s after the step ({cores:.2} cores)",
                settled.as_secs_f64()
            ));
        }
        self.say(format!(
            "{:<26} {:>8}/s → {:>8}/s  commit→delivery p99 {:>9}  {}",
            format!("{} {label}", short(system.name())),
            fmt_rate(rate),
            fmt_rate(r.achieved_rate),
            fmt_us(r.figures.commit_to_delivery.p99_us),
            r.verdict
        ));
        r
    }

    async fn ramp(&mut self, system: &dyn FanoutSystem, ceiling: u64) -> RampOutcome {
        let mut b = Bisect::new(ceiling, (ceiling / 40).max(100), self.args.ramp_steps);
        let mut start = Some((self.args.rate as u64).min(ceiling));
        let mut steps = Vec::new();
        while let Some(rate) = b.next(start.take()) {
            let r = self.step(system, "ramp", rate as f64).await;
            b.record(rate, r.sustainable);
            steps.push(r);
        }
        RampOutcome {
            system: system.name().to_string(),
            best_rate: b.best(),
            ceiling_passed: b.ceiling_passed(),
            steps,
        }
    }
}

/// CPU time per acknowledged write, server and harness: on a small machine they share, their
/// sum bounds the sustainable rate (cores ÷ sum), whatever the latency figures say.
fn cpu_per_write(r: &StepResult) -> String {
    if r.achieved_rate <= 0.0 {
        return "-".into();
    }
    let us = |cores: f64| cores * 1e6 / r.achieved_rate;
    match r.server {
        Some(s) => format!("{:.0} + {:.0}", us(s.cpu_cores), us(r.harness.cpu_cores)),
        None => format!("- + {:.0}", us(r.harness.cpu_cores)),
    }
}

fn short(name: &str) -> &str {
    name.split(' ').next().unwrap_or(name)
}

fn max_seq(args: &Args) -> usize {
    let per_step = (args.warmup + args.seconds) as f64;
    let mut writes = args.rate * per_step * 5.0;
    if args.ramp {
        writes += args.ramp_max as f64 * per_step * args.ramp_steps as f64;
    }
    (writes / args.meetings.max(1) as f64 * 1.2) as usize + 1_000
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args
        .harness_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() / 2))
        .max(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the harness's runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.subscribers + args.producers > 50 {
        bail!("subscribers + producers per meeting must be at most 50 (meeting invitees)");
    }
    let machine = Machine::detect();
    let mut runner = Runner {
        args: args.clone(),
        bar: bar(),
        next_write: 0,
    };
    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut ramps: Vec<RampOutcome> = Vec::new();
    let mut storm = None;

    // --- LinkedUp over QUIC ---------------------------------------------------------------
    let subs_per_conn = (args.meetings * args.subscribers).div_ceil(args.connections.max(1))
        + args.idle.div_ceil(args.connections.max(1))
        + 1_000;
    // The server binary is built separately: its age tells which commit it really runs.
    let mut server_built: Option<String> = None;
    let (process, target) = match &args.server {
        Some(addr) => {
            let (Some(fp), Some(dir)) = (&args.fingerprint, &args.token_dir) else {
                bail!("--server needs --fingerprint and --token-dir");
            };
            (None, Target::existing(addr, fp, dir, args.http)?)
        }
        None => {
            let bin = args
                .server_bin
                .clone()
                .unwrap_or_else(default_server_binary);
            let mut extra = vec![
                "--max-subscriptions".to_string(),
                subs_per_conn.to_string(),
                "--max-connections".to_string(),
                "20000".to_string(),
            ];
            if args.no_fsync {
                extra.push("--no-fsync".into());
            }
            server_built = std::fs::metadata(&bin)
                .and_then(|m| m.modified())
                .map(|t| utc_timestamp(t, true))
                .ok();
            let p = ServerProcess::start(&bin, &extra).context("starting linkedup-server")?;
            let t = p.target.clone();
            (Some(p), t)
        }
    };
    let watch = process.as_ref().map(|p| ProcWatch::new(p.pid(), false));
    eprintln!(
        "setting up {} meetings × {} subscribers ({} producers each, {} subscriber connections, {} storm clients) on {}",
        args.meetings, args.subscribers, args.producers, args.connections, args.storm, target.addr
    );
    let setup_started = std::time::Instant::now();
    let mut fleet = LinkedUpFleet::setup(
        target,
        FleetPlan {
            meetings: args.meetings,
            subscribers: args.subscribers,
            producers: args.producers,
            connections: args.connections,
            window: args.window,
            storm_clients: args.storm,
            max_seq: max_seq(&args),
        },
        watch,
    )
    .await
    .context("setting up the LinkedUp fleet")?;
    eprintln!("setup took {:.1} s", setup_started.elapsed().as_secs_f64());

    let seed = runner.step(&fleet, "seed load", args.rate).await;
    let mut baseline_p99 = seed.figures.commit_to_delivery.p99_us;
    scenarios.push(Scenario {
        name: "seed load".into(),
        step: seed,
        note: None,
    });
    if args.ramp {
        let ceiling = args
            .ramp_max
            .min((per_user_ingest_ceiling() * (args.producers * args.meetings) as f64) as u64);
        ramps.push(runner.ramp(&fleet, ceiling).await);
    }
    let scenario_rate = args.scenario_rate.unwrap_or(args.rate);
    if scenario_rate != args.rate {
        let base = runner.step(&fleet, "baseline", scenario_rate).await;
        baseline_p99 = base.figures.commit_to_delivery.p99_us;
        scenarios.push(Scenario {
            name: "baseline at the scenario rate".into(),
            step: base,
            note: None,
        });
    }
    if !args.no_slow {
        match fleet.connect_stalled().await {
            Ok(stalled) => {
                let r = runner.step(&fleet, "stalled reader", scenario_rate).await;
                let note = format!(
                    "one extra connection subscribed to {} meeting streams stopped reading; others' p99 {} (without it {})",
                    fleet.meeting_ids().len().min(
                        (args.meetings * args.subscribers).div_ceil(args.connections.max(1))
                    ),
                    fmt_us(r.figures.commit_to_delivery.p99_us),
                    fmt_us(baseline_p99)
                );
                scenarios.push(Scenario {
                    name: "one subscriber stops reading".into(),
                    step: r,
                    note: Some(note),
                });
                stalled.close();
            }
            Err(e) => eprintln!("stalled-subscriber scenario skipped: {e}"),
        }
    }
    if args.idle > 0 {
        let started = std::time::Instant::now();
        fleet
            .add_idle(args.idle)
            .await
            .context("adding idle subscriptions")?;
        let took = started.elapsed();
        let r = runner.step(&fleet, "idle subs", scenario_rate).await;
        let note = format!(
            "{} idle subscriptions (subscribed in {:.1} s); results delivered to them during the step: {}",
            fleet.idle_subscriptions(),
            took.as_secs_f64(),
            fleet.recorder().idle_wakeups()
        );
        scenarios.push(Scenario {
            name: format!("{} idle subscriptions beside the load", args.idle),
            step: r,
            note: Some(note),
        });
    }
    if args.storm > 0 {
        fleet.start_storm_subscribers();
        let (behind, _) = wait_current(&fleet, Duration::from_secs(120)).await;
        if behind > 0 {
            bail!("{behind} storm subscribers did not catch up before the storm");
        }
        let plan_delay = Duration::from_secs(args.warmup) + Duration::from_secs(args.seconds) / 3;
        let label = format!("storm of {}", args.storm);
        let fleet_ref = &fleet;
        let (r, s) = tokio::join!(runner.step(fleet_ref, &label, scenario_rate), async move {
            tokio::time::sleep(plan_delay).await;
            fleet_ref.reconnect_storm(Duration::from_secs(60)).await
        });
        storm = Some(Storm {
            clients: args.storm,
            reconnect_and_catch_up_ms: s.0.as_millis() as u64,
            still_behind: s.1,
            reconnected: s.2,
        });
        scenarios.push(Scenario {
            name: format!("reconnect storm of {}", args.storm),
            step: r,
            note: Some(format!(
                "all {} clients dropped at once; {} reconnected; all current after {} ({} still behind)",
                args.storm,
                s.2,
                fmt_us(s.0.as_micros() as u64),
                s.1
            )),
        });
    }
    let total_anomalies = fleet.recorder().anomalies();
    let duplicate_writes = fleet.recorder().duplicate_writes();
    fleet.shutdown().await;
    if let Some(p) = process {
        p.stop();
    }

    // --- PostgreSQL LISTEN/NOTIFY ------------------------------------------------------------
    let mut pg_seed: Option<StepResult> = None;
    let mut pg_extra: Vec<StepResult> = Vec::new();
    let mut pg_error: Option<String> = None;
    if !args.no_pg {
        match run_pg(&mut runner, &args, &mut ramps, &mut pg_extra).await {
            Ok(r) => pg_seed = Some(r),
            Err(e) => {
                eprintln!("PostgreSQL peer failed: {e:#}");
                pg_error = Some(format!("{e:#}"));
            }
        }
    }
    runner.bar.finish_and_clear();

    // --- Report ------------------------------------------------------------------------------
    let mut table = Table::new(&[
        "scenario",
        "system",
        "target/s",
        "writes/s",
        "deliveries/s",
        "commit→delivery p50",
        "p99",
        "max",
        "send→delivery p99",
        "mutation p99",
        "server CPU",
        "memory MiB",
        "harness CPU",
        "CPU µs/write (server + harness)",
        "threads waiting for a core (server + harness)",
        "fsyncs/s",
        "txns/batch",
        "batch write",
        "re-executed",
        "UDP drops",
        "datagrams/write",
        "missed/dup/reorder",
        "verdict",
    ]);
    let mut add_row = |name: &str, r: &StepResult| {
        table.row(vec![
            name.to_string(),
            short(&r.system).to_string(),
            fmt_rate(r.target_rate),
            fmt_rate(r.achieved_rate),
            fmt_rate(r.deliveries_per_sec),
            fmt_us(r.figures.commit_to_delivery.p50_us),
            fmt_us(r.figures.commit_to_delivery.p99_us),
            fmt_us(r.figures.commit_to_delivery.max_us),
            fmt_us(r.figures.send_to_delivery.p99_us),
            fmt_us(r.figures.mutation.p99_us),
            r.server
                .map(|s| format!("{:.2} cores", s.cpu_cores))
                .unwrap_or_else(|| "-".into()),
            r.server
                .map(|s| format!("{:.0}", s.rss_mib))
                .unwrap_or_else(|| "-".into()),
            format!("{:.2} cores", r.harness.cpu_cores),
            cpu_per_write(r),
            format!(
                "{} + {:.2}",
                r.server
                    .map(|s| format!("{:.2}", s.run_queue_threads))
                    .unwrap_or_else(|| "-".into()),
                r.harness.run_queue_threads
            ),
            r.server_counters
                .map(|c| format!("{:.0}", c.fsyncs_per_sec))
                .unwrap_or_else(|| "-".into()),
            r.server_counters
                .map(|c| format!("{:.1}", c.mean_batch_txns))
                .unwrap_or_else(|| "-".into()),
            r.server_counters
                .map(|c| format!("{:.2} ms", c.mean_batch_write_ms))
                .unwrap_or_else(|| "-".into()),
            r.server_counters
                .filter(|c| c.commits > 0.0)
                .map(|c| format!("{:.0} %", 100.0 * c.reexecutions / c.commits))
                .unwrap_or_else(|| "-".into()),
            r.udp_drops
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
            r.udp_datagrams_per_write
                .map(|d| format!("{d:.1}"))
                .unwrap_or_else(|| "-".into()),
            format!(
                "{}/{}/{}",
                r.anomalies.missed, r.anomalies.duplicates, r.anomalies.out_of_order
            ),
            r.verdict.clone(),
        ]);
    };
    for s in &scenarios {
        add_row(&s.name, &s.step);
    }
    if let Some(r) = &pg_seed {
        add_row("seed load", r);
    }
    for r in &pg_extra {
        add_row("baseline at the scenario rate", r);
    }
    for ramp in &ramps {
        for r in &ramp.steps {
            add_row("ramp step", r);
        }
    }
    let mut summary = String::new();
    if let Some(pg) = &pg_seed {
        let ours = &scenarios[0].step;
        summary.push_str(&format!(
            "Seed load at {}/s: LinkedUp commit→delivery p99 {} vs PostgreSQL {}; send→delivery p99 {} vs {}.\n",
            fmt_rate(args.rate),
            fmt_us(ours.figures.commit_to_delivery.p99_us),
            fmt_us(pg.figures.commit_to_delivery.p99_us),
            fmt_us(ours.figures.send_to_delivery.p99_us),
            fmt_us(pg.figures.send_to_delivery.p99_us),
        ));
    }
    if ramps.len() == 2 {
        let (ours, pg) = (&ramps[0], &ramps[1]);
        let ratio = ours.best_rate as f64 / pg.best_rate.max(1) as f64;
        summary.push_str(&format!(
            "Highest sustainable rate (p99 ≤ {} ms, nothing behind, no errors): LinkedUp {}/s{}, PostgreSQL {}/s{}; ratio {:.2}×.\n",
            args.p99_ms,
            fmt_rate(ours.best_rate as f64),
            if ours.ceiling_passed { " (ceiling passed)" } else { "" },
            fmt_rate(pg.best_rate as f64),
            if pg.ceiling_passed { " (ceiling passed)" } else { "" },
            ratio
        ));
    } else {
        for r in &ramps {
            summary.push_str(&format!(
                "Highest sustainable rate, {}: {}/s.\n",
                r.system,
                fmt_rate(r.best_rate as f64)
            ));
        }
    }
    summary.push_str(&format!(
        "LinkedUp anomalies over the whole run: missed {}, duplicate {}, out of order {}; sequences acknowledged twice: {}.\n",
        total_anomalies.missed, total_anomalies.duplicates, total_anomalies.out_of_order, duplicate_writes
    ));
    for s in &scenarios {
        if let Some(n) = &s.note {
            summary.push_str(&format!("{}: {n}.\n", s.name));
        }
    }
    if let Some(e) = &pg_error {
        summary.push_str(&format!("PostgreSQL peer failed: {e}\n"));
    }
    println!("\n{}", table.text());
    println!("{summary}");

    let params = format!(
        "{} meetings × {} subscribers, {} producers per meeting, {} subscriber connections, window {}, \
         {} s warm-up + {} s measured per step (each started once the server has gone idle after the last, waiting up to {} s), chunk text {} B, durable commits{}; PostgreSQL: {} writer and {} listener connections, synchronous_commit = on.",
        args.meetings,
        args.subscribers,
        args.producers,
        args.connections,
        args.window,
        args.warmup,
        args.seconds,
        SETTLE_TIMEOUT.as_secs(),
        args.text_bytes,
        if args.no_fsync { " OFF (--no-fsync)" } else { "" },
        args.pg_writers,
        args.pg_listeners
    );
    let built = server_built
        .as_deref()
        .map(|t| format!("- server binary built: {t} (it may predate the commit above)\n"))
        .unwrap_or_default();
    let markdown = format!(
        "# Reactive fan-out over QUIC vs PostgreSQL LISTEN/NOTIFY\n\n{}{built}\n{params}\n\n{}\n{}",
        machine.markdown(),
        table.markdown(),
        summary
            .lines()
            .map(|l| format!("- {l}\n"))
            .collect::<String>()
    );
    let json = serde_json::json!({
        "benchmark": "fanout",
        "machine": machine,
        "server_binary_built": server_built,
        "parameters": args,
        "scenarios": scenarios,
        "postgres_seed": pg_seed,
        "postgres_scenario_rate": pg_extra,
        "postgres_error": pg_error,
        "ramps": ramps,
        "storm": storm,
        "anomalies": total_anomalies,
        "duplicate_writes": duplicate_writes,
    });
    let (j, m) = write_results("fanout", &json, &markdown)?;
    println!("results: {} and {}", j.display(), m.display());
    Ok(())
}

async fn run_pg(
    runner: &mut Runner,
    args: &Args,
    ramps: &mut Vec<RampOutcome>,
    pg_extra: &mut Vec<StepResult>,
) -> anyhow::Result<StepResult> {
    let cluster = PgCluster::start(&[]).context("starting PostgreSQL")?;
    let fleet = PgFleet::setup(
        &cluster,
        PgPlan {
            meetings: args.meetings,
            subscribers: args.subscribers,
            writer_connections: args.pg_writers,
            listener_connections: args.pg_listeners,
            max_seq: max_seq(args),
        },
    )
    .await
    .context("setting up the PostgreSQL peer")?;
    let seed = runner.step(&fleet, "seed load", args.rate).await;
    if args.ramp {
        ramps.push(runner.ramp(&fleet, args.ramp_max).await);
    }
    if let Some(rate) = args.scenario_rate.filter(|r| *r != args.rate) {
        pg_extra.push(runner.step(&fleet, "baseline", rate).await);
    }
    fleet.shutdown().await;
    cluster.stop()?;
    Ok(seed)
}

/// Writes/s one producer can sustain under the server's default per-user ingest limit, with a
/// tenth spare (the window is counted in whole buckets).
fn per_user_ingest_ceiling() -> f64 {
    let limit = linkedup_server::linkedup::RateLimitConfig::default().transcripts_ingest;
    0.9 * limit.max as f64 * 1_000.0 / limit.window_ms.max(1) as f64
}
