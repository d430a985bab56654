//! In-process reactive fan-out: R "rooms" × S subscribers each, open-loop inserts into random
//! rooms at increasing rates, commit→delivery latency for every (commit, subscriber) pair, and the
//! cost per commit with many idle subscriptions present vs absent.
//!
//! `cargo run --release -p linkedup-benches --bin reactive -- --help`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use linkedup_benches::report::{
    fmt_rate, fmt_us, latency_histogram, load_average, write_results, Latency, Machine, Table,
};
use linkedup_benches::thread_cpu::{cpu_us_per_unit, thread_cpu_ns, CPU_GROUPS};
use parking_lot::Mutex;
use query_engine::engine::{Engine, EngineConfig};
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::{v, SchemaDefinition, TableDefinition};
use query_engine::subscriptions::{SubscriptionConfig, SubscriptionManager};
use query_engine::value::Value;
use rand::Rng;

#[derive(Parser, Debug, Clone)]
#[command(about = "In-process reactive fan-out benchmark")]
struct Args {
    /// Rooms (each gets its own subscribed query).
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Subscribers per room.
    #[arg(long, default_value_t = 5)]
    subscribers: usize,
    /// Commit rates to try, per second (open loop).
    #[arg(long, value_delimiter = ',', default_value = "5000,10000,20000,30000")]
    rates: Vec<u64>,
    /// Seconds per rate step (after a 1 s warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Idle subscriptions for the idle comparison (0 to skip it).
    #[arg(long, default_value_t = 50_000)]
    idle: usize,
    /// Rate used for the idle comparison.
    #[arg(long, default_value_t = 10_000)]
    idle_rate: u64,
    /// Rounds of the idle comparison. Each round measures one step without and one with the
    /// idle subscriptions on the same warm engine, in alternating order (ABBA...), so neither
    /// side gets the engine's first seconds or the machine's drift to itself.
    #[arg(long, default_value_t = 3)]
    idle_rounds: usize,
    /// Threads re-running the executions of one pass (default: the engine's).
    #[arg(long)]
    rerun_threads: Option<usize>,
    /// Most mutations in flight before the driver counts itself as behind.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Writes each step's (commit timestamp µs, commit→delivery µs, commit→notify µs) lines
    /// here, one per delivered (commit, subscriber) pair, to see how latency moves over time
    /// (each step overwrites the file).
    #[arg(long)]
    latency_dump: Option<std::path::PathBuf>,
}

/// Unmeasured seconds at the idle comparison's rate before its first round.
const IDLE_SETTLE_SECONDS: u64 = 5;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn schema() -> SchemaDefinition {
    SchemaDefinition::new().table(
        TableDefinition::new(
            "events",
            v::object([
                ("room", v::string()),
                ("seq", v::int64()),
                ("body", v::string()),
            ]),
        )
        .index("by_room_seq", &["room", "seq"]),
    )
}

#[derive(serde::Deserialize)]
struct Room {
    room: String,
}

fn functions() -> Functions {
    let mut f = Functions::new();
    f.mutation(
        "post",
        Visibility::Public,
        v::object([
            ("room", v::string()),
            ("seq", v::int64()),
            ("body", v::string()),
        ]),
        v::string(),
        |ctx, a: Value| ctx.insert("events", a),
    );
    f.query(
        "tail",
        Visibility::Public,
        v::object([("room", v::string())]),
        v::any(),
        |ctx, a: Room| {
            Ok(Value::Array(
                ctx.query("events", "by_room_seq")
                    .eq("room", a.room)
                    .desc()
                    .take(5)?,
            ))
        },
    );
    f
}

struct Step {
    target: u64,
    achieved: f64,
    behind: u64,
    /// Commit → first transition at or after the commit, per (commit, subscriber of its room).
    latency: Latency,
    /// Commit timestamp → the committer's notice (batch write, fsync, snapshot publish).
    commit_to_notify: Latency,
    /// Notice → transition in the subscriber's hands (re-run, diff, outbox, task wake-up).
    notify_to_delivery: Latency,
    /// Transitions received.
    deliveries: u64,
    /// (commit, subscriber) pairs with no transition at or after the commit (an unchanged
    /// re-run sends nothing; should be ~0).
    undelivered: u64,
    /// CPU µs per commit, per thread group (`CPU_GROUPS`).
    cpu_us_per_commit: [f64; 5],
    /// Executions re-run during the step.
    reruns: u64,
    /// Subscription threads' CPU µs per re-run (the worker's efficiency, whatever the
    /// coalescing).
    cpu_us_per_rerun: f64,
}

/// What one subscriber saw: (transition end timestamp, wall-clock µs when it was taken).
/// Only its own consumer task writes here during a step, so the lock is uncontended.
type Seen = Arc<Mutex<Vec<(u64, u64)>>>;

struct Rig {
    engine: Engine,
    mgr: SubscriptionManager,
    /// Per room: the commit timestamps of the inserts into it during the measured step.
    commits: Arc<Vec<Mutex<Vec<u64>>>>,
    /// Per subscriber: its room and what it saw.
    seen: Vec<(usize, Seen)>,
    /// (batch timestamp, wall-clock µs) of every commit notice.
    notices: Arc<Mutex<Vec<(u64, u64)>>>,
    /// The next `seq` to insert, across all steps: each insert must rank first in its room
    /// (the query shows the 5 highest), so every commit changes its subscribers' result. A
    /// per-step counter made a new step's first inserts rank below the previous step's and
    /// change nothing, which showed up as late "deliveries".
    seq: AtomicU64,
}

impl Rig {
    fn reset(&self) {
        for c in self.commits.iter() {
            c.lock().clear();
        }
        for (_, s) in &self.seen {
            s.lock().clear();
        }
        self.notices.lock().clear();
    }

    fn caught_up(&self) -> bool {
        self.seen.iter().all(|(room, seen)| {
            let last_commit = self.commits[*room].lock().iter().copied().max();
            let last_seen = seen.lock().last().map(|(end, _)| *end);
            match (last_commit, last_seen) {
                (None, _) => true,
                (Some(c), Some(s)) => s >= c,
                (Some(_), None) => false,
            }
        })
    }

    /// Joins commits with notices and deliveries: each commit counts once per subscriber of
    /// its room, delivered by the first transition whose end timestamp covers it.
    fn latencies(
        &self,
        dump_to: Option<&std::path::Path>,
    ) -> anyhow::Result<(Latency, Latency, Latency, u64, u64)> {
        let (mut total, mut to_notify, mut to_delivery) = (
            latency_histogram(),
            latency_histogram(),
            latency_histogram(),
        );
        let mut notices = self.notices.lock().clone();
        notices.sort_unstable();
        let mut commits: Vec<Vec<u64>> = self
            .commits
            .iter()
            .map(|c| {
                let mut v = c.lock().clone();
                v.sort_unstable();
                v
            })
            .collect();
        let notified_at = |ts: u64| {
            let i = notices.partition_point(|(n, _)| *n < ts);
            notices.get(i).map(|(_, at)| *at)
        };
        for room in commits.iter_mut() {
            for &c in room.iter() {
                if let Some(at) = notified_at(c) {
                    let _ = to_notify.record(at.saturating_sub(c).max(1));
                }
            }
        }
        let mut dump: Vec<(u64, u64, u64)> = Vec::new();
        let (mut deliveries, mut undelivered) = (0u64, 0u64);
        for (room, seen) in &self.seen {
            let seen = seen.lock();
            deliveries += seen.len() as u64;
            for &c in &commits[*room] {
                let i = seen.partition_point(|(end, _)| *end < c);
                match seen.get(i) {
                    Some(&(_, at)) => {
                        let _ = total.record(at.saturating_sub(c).max(1));
                        dump.push((
                            c,
                            at.saturating_sub(c),
                            notified_at(c).unwrap_or(0).saturating_sub(c),
                        ));
                        if let Some(n) = notified_at(c) {
                            let _ = to_delivery.record(at.saturating_sub(n).max(1));
                        }
                    }
                    None => undelivered += 1,
                }
            }
        }
        if let Some(path) = dump_to {
            let mut out = String::new();
            for (c, l, n) in &dump {
                out.push_str(&format!("{c} {l} {n}\n"));
            }
            std::fs::write(path, out).with_context(|| format!("write {}", path.display()))?;
        }
        Ok((
            Latency::of(&total),
            Latency::of(&to_notify),
            Latency::of(&to_delivery),
            deliveries,
            undelivered,
        ))
    }
}

async fn rig(dir: &std::path::Path, args: &Args) -> anyhow::Result<Rig> {
    let engine = Engine::open(
        &dir.join("db.redb"),
        schema(),
        functions(),
        EngineConfig::default(),
    )
    .context("open engine")?;
    let mut config = SubscriptionConfig::default();
    if let Some(n) = args.rerun_threads {
        config.rerun_threads = n;
    }
    let mgr = SubscriptionManager::new(engine.clone(), config);
    let notices: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    {
        let notices = notices.clone();
        engine.on_commit(move |n| notices.lock().push((n.ts, now_us())));
    }
    let mut seen = Vec::new();
    for room in 0..args.rooms {
        for _ in 0..args.subscribers {
            let s = mgr.connect(None).await;
            s.subscribe(1, "tail", obj! {"room" => format!("r{room}")})
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mine: Seen = Arc::default();
            seen.push((room, mine.clone()));
            // The client side does as little as it can: note when each transition arrived.
            tokio::spawn(async move {
                while let Some(t) = s.next_transition().await {
                    if t.updates.is_empty() || t.start_ts == 0 {
                        continue;
                    }
                    let at = now_us();
                    mine.lock().push((t.end_ts, at));
                }
            });
        }
    }
    Ok(Rig {
        engine,
        mgr,
        commits: Arc::new((0..args.rooms).map(|_| Mutex::new(Vec::new())).collect()),
        seen,
        notices,
        seq: AtomicU64::new(0),
    })
}

/// Subscribes `idle` queries on rooms nobody writes to, 64 per session like a client watching
/// many quiet things. Dropping the sessions ends them.
async fn attach_idle(
    mgr: &SubscriptionManager,
    idle: usize,
) -> anyhow::Result<Vec<query_engine::subscriptions::ClientSession>> {
    let mut sessions = Vec::new();
    for i in 0..idle {
        if i % 64 == 0 {
            sessions.push(mgr.connect(None).await);
        }
        let s = sessions.last().context("session")?;
        s.subscribe(
            (i % 64) as u32,
            "tail",
            obj! {"room" => format!("idle-{i}")},
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(sessions)
}

/// Waits until the worker has released every execution beyond `executions` (closed sessions
/// are dropped on its next pass).
async fn await_executions(mgr: &SubscriptionManager, executions: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while mgr.metrics().executions.load(Ordering::Relaxed) > executions {
        anyhow::ensure!(
            Instant::now() < deadline,
            "idle subscriptions were not released within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn drive(rig: &Rig, args: &Args, rate: u64, seconds: u64) -> anyhow::Result<Step> {
    let mut done: u64 = 0;
    let mut behind: u64 = 0;
    rig.reset();
    let cpu_before = thread_cpu_ns(std::process::id());
    let reruns_before = rig.mgr.metrics().reruns.load(Ordering::Relaxed);
    let start = Instant::now();
    let tick = Duration::from_millis(1);
    let mut issued: u64 = 0;
    let total = rate * seconds;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // The mutations in flight are polled by this task itself rather than spawned one task
    // each: the load generator should cost as little as it can of the two cores it shares
    // with what it measures (at 20,000/s this cut runtime + driver CPU by ~3 µs a commit).
    // This task runs on the main thread, so its CPU shows under "other".
    let mut in_flight = FuturesUnordered::new();
    while issued < total || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                if let Ok::<(usize, u64), _>((room, ts)) = r {
                    rig.commits[room].lock().push(ts);
                    done += 1;
                }
            }
            _ = interval.tick(), if issued < total => {
                let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                while issued < due {
                    issued += 1;
                    if in_flight.len() >= args.max_in_flight {
                        behind += 1;
                        continue;
                    }
                    let room = rand::thread_rng().gen_range(0..args.rooms);
                    let s = rig.seq.fetch_add(1, Ordering::Relaxed) as i64;
                    let e = rig.engine.clone();
                    in_flight.push(async move {
                        e.mutation(
                            "post",
                            obj! {"room" => format!("r{room}"), "seq" => s, "body" => "hello"},
                            None,
                        )
                        .await
                        .map(|c| (room, c.ts))
                    });
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Let the last transitions land: every subscriber has seen its room's last commit (or
    // 10 s passed; what is still missing then counts as undelivered).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rig.caught_up() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu_after = thread_cpu_ns(std::process::id());
    let reruns = rig.mgr.metrics().reruns.load(Ordering::Relaxed) - reruns_before;
    let cpu_us_per_rerun = cpu_us_per_unit(cpu_before, cpu_after, reruns)[2];
    let cpu_us_per_commit = cpu_us_per_unit(cpu_before, cpu_after, done);
    let (latency, commit_to_notify, notify_to_delivery, deliveries, undelivered) =
        rig.latencies(args.latency_dump.as_deref())?;
    Ok(Step {
        target: rate,
        achieved: done as f64 / elapsed,
        behind,
        latency,
        commit_to_notify,
        notify_to_delivery,
        deliveries,
        undelivered,
        cpu_us_per_commit,
        reruns,
        cpu_us_per_rerun,
    })
}

fn step_row(s: &Step) -> Vec<String> {
    vec![
        fmt_rate(s.target as f64),
        fmt_rate(s.achieved),
        s.behind.to_string(),
        s.deliveries.to_string(),
        s.undelivered.to_string(),
        fmt_us(s.latency.p50_us),
        fmt_us(s.latency.p99_us),
        fmt_us(s.latency.max_us),
        fmt_us(s.commit_to_notify.p50_us),
        fmt_us(s.commit_to_notify.p99_us),
        fmt_us(s.notify_to_delivery.p50_us),
        fmt_us(s.notify_to_delivery.p99_us),
        s.cpu_us_per_commit
            .iter()
            .map(|c| format!("{c:.1}"))
            .collect::<Vec<_>>()
            .join(" / "),
        s.reruns.to_string(),
        format!("{:.1}", s.cpu_us_per_rerun),
    ]
}

/// Medians over the rounds of commit→delivery p99 and subscription CPU per commit, without
/// and with the idle subscriptions, and the change.
fn idle_summary(rows: &[(usize, usize, Step)], idle: usize) -> String {
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
    let arm = |n: usize, f: fn(&Step) -> f64| {
        median(rows.iter().filter(|r| r.1 == n).map(|r| f(&r.2)).collect())
    };
    let p99 = |s: &Step| s.latency.p99_us as f64;
    let cpu = |s: &Step| s.cpu_us_per_commit[2];
    let (p0, p1) = (arm(0, p99), arm(idle, p99));
    let (c0, c1) = (arm(0, cpu), arm(idle, cpu));
    format!(
        "Median over the rounds: commit→delivery p99 {} without, {} with {idle} idle \
         subscriptions ({:+.1} %); subscription threads' CPU {c0:.1} / {c1:.1} µs per commit \
         ({:+.1} %).",
        fmt_us(p0 as u64),
        fmt_us(p1 as u64),
        (p1 / p0 - 1.0) * 100.0,
        (c1 / c0 - 1.0) * 100.0,
    )
}

fn step_json(s: &Step) -> serde_json::Value {
    serde_json::json!({
        "target": s.target,
        "sustained": s.achieved,
        "behind": s.behind,
        "deliveries": s.deliveries,
        "undelivered": s.undelivered,
        "latency": s.latency,
        "commitToNotify": s.commit_to_notify,
        "notifyToDelivery": s.notify_to_delivery,
        "reruns": s.reruns,
        "subscriptionsCpuMicrosPerRerun": s.cpu_us_per_rerun,
        "cpuMicrosPerCommit": CPU_GROUPS.iter().zip(s.cpu_us_per_commit).map(|(g, c)| (g.to_string(), serde_json::json!(c))).collect::<serde_json::Map<_, _>>(),
    })
}

const STEP_HEADERS: &[&str] = &[
    "target commits/s",
    "sustained commits/s",
    "behind",
    "transitions",
    "undelivered",
    "commit→delivery p50",
    "p99",
    "max",
    "commit→notify p50",
    "p99",
    "notify→delivery p50",
    "p99",
    "CPU µs/commit: committer / applier / subscriptions / runtime / other",
    "re-runs",
    "subscriptions CPU µs/re-run",
];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let machine = Machine::detect();
        let dir = tempfile::tempdir()?;
        println!("setting up {} rooms × {} subscribers ...", args.rooms, args.subscribers);
        let r = rig(dir.path(), &args).await?;
        let mut steps = Vec::new();
        let mut table = Table::new(STEP_HEADERS);
        for &rate in &args.rates {
            drive(&r, &args, rate, 1).await?;
            let s = drive(&r, &args, rate, args.seconds).await?;
            table.row(step_row(&s));
            println!("{}", table.text());
            steps.push(s);
        }
        let mut idle_rows = Vec::new();
        if args.idle > 0 {
            let executions = r.mgr.metrics().executions.load(Ordering::Relaxed);
            // The last rate step may have left the engine behind (applier backlog, a
            // checkpoint); settle at the comparison's rate before the first arm.
            drive(&r, &args, args.idle_rate, IDLE_SETTLE_SECONDS).await?;
            for round in 0..args.idle_rounds {
                let order = if round % 2 == 0 { [0, args.idle] } else { [args.idle, 0] };
                for idle in order {
                    let sessions = attach_idle(&r.mgr, idle).await?;
                    drive(&r, &args, args.idle_rate, 1).await?;
                    let s = drive(&r, &args, args.idle_rate, args.seconds).await?;
                    idle_rows.push((round + 1, idle, s));
                    drop(sessions);
                    await_executions(&r.mgr, executions).await?;
                }
            }
        }
        let m = r.engine.metrics();
        let batches = m.batches.load(Ordering::Relaxed).max(1);
        let commits = m.commits.load(Ordering::Relaxed);
        drop(r);
        let mut idle_headers = vec!["round", "idle subscriptions"];
        idle_headers.extend_from_slice(STEP_HEADERS);
        let mut idle_table = Table::new(&idle_headers);
        for (round, idle, s) in &idle_rows {
            let mut row = vec![round.to_string(), idle.to_string()];
            row.extend(step_row(s));
            idle_table.row(row);
        }
        // (summary, terminal text, Markdown) of the idle comparison.
        let (idle_summary, idle_text, idle_md) = if idle_rows.is_empty() {
            let none = "No idle-subscription comparison (--idle 0).".to_string();
            (none.clone(), none.clone(), none)
        } else {
            let summary = idle_summary(&idle_rows, args.idle);
            let text = format!("{}\n{summary}", idle_table.text());
            let md = format!(
                "Idle subscriptions at {} commits/s, measured on the same warm engine, without \
                 and with them in alternating order:\n\n{}\n\n{summary}",
                args.idle_rate,
                idle_table.markdown()
            );
            (summary, text, md)
        };
        let load_after = load_average();
        println!("\n{}\n{}", table.text(), idle_text);
        println!("commit batches: {} for {} commits ({:.1} per batch)", batches, commits, commits as f64 / batches as f64);
        println!("load average at start {}, at end {}", machine.load_average, load_after);
        let json = serde_json::json!({
            "benchmark": "reactive-inprocess",
            "machine": machine,
            "loadAverageAtEnd": load_after,
            "parameters": { "rooms": args.rooms, "subscribers": args.subscribers, "seconds": args.seconds, "idle": args.idle, "idleRate": args.idle_rate, "rerunThreads": args.rerun_threads },
            "steps": steps.iter().map(step_json).collect::<Vec<_>>(),
            "idle": idle_rows.iter().map(|(r, i, s)| serde_json::json!({"round": r, "idle": i, "step": step_json(s)})).collect::<Vec<_>>(),
            "idleSummary": idle_summary,
        });
        let md = format!(
            "# Reactive fan-out (in-process)\n\n{}- load average at end: {}\n\n{} rooms × {} subscribers, {} s per step, durable commits. \
             Latency runs from each commit's timestamp (assigned by the committer before the WAL \
             write and fsync) to the first transition covering it, once per subscriber of the \
             commit's room; commit→notify is the committer's part, notify→delivery the \
             subscription worker's and the client task's.\n\n{}\n\n{}\n",
            machine.markdown(), load_after, args.rooms, args.subscribers, args.seconds, table.markdown(), idle_md
        );
        let (j, m) = write_results("reactive", &json, &md)?;
        println!("wrote {} and {}", j.display(), m.display());
        Ok(())
    })
}
