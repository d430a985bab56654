//! In-process reactive fan-out: R "rooms" × S subscribers each, open-loop inserts into random
//! rooms at increasing rates, commit→delivery latency for every delivered transition, and the
//! cost per commit with many idle subscriptions present vs absent.
//!
//! `cargo run --release -p linkedup-benches --bin reactive -- --help`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use linkedup_benches::report::{
    fmt_rate, fmt_us, latency_histogram, write_results, Latency, Machine, Table,
};
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
    /// Most mutations in flight before the driver counts itself as behind.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
}

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
    latency: Latency,
    deliveries: u64,
}

struct Rig {
    engine: Engine,
    mgr: SubscriptionManager,
    hist: Arc<Mutex<Histogram<u64>>>,
    deliveries: Arc<AtomicU64>,
    _sessions: Vec<query_engine::subscriptions::ClientSession>,
}

async fn rig(dir: &std::path::Path, args: &Args, idle: usize) -> anyhow::Result<Rig> {
    let engine = Engine::open(
        &dir.join("db.redb"),
        schema(),
        functions(),
        EngineConfig::default(),
    )
    .context("open engine")?;
    let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
    let hist = Arc::new(Mutex::new(latency_histogram()));
    let deliveries = Arc::new(AtomicU64::new(0));
    let mut idle_sessions = Vec::new();
    for i in 0..idle {
        // 64 idle subscriptions per session, like a client watching many quiet things.
        if i % 64 == 0 {
            idle_sessions.push(mgr.connect(None).await);
        }
        let s = idle_sessions.last().context("session")?;
        s.subscribe(
            (i % 64) as u32,
            "tail",
            obj! {"room" => format!("idle-{i}")},
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    for room in 0..args.rooms {
        for _ in 0..args.subscribers {
            let s = mgr.connect(None).await;
            s.subscribe(1, "tail", obj! {"room" => format!("r{room}")})
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let (hist, deliveries) = (hist.clone(), deliveries.clone());
            tokio::spawn(async move {
                while let Some(t) = s.next_transition().await {
                    if t.updates.is_empty() || t.start_ts == 0 {
                        continue;
                    }
                    let lat = now_us().saturating_sub(t.end_ts).max(1);
                    let _ = hist.lock().record(lat);
                    deliveries.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    Ok(Rig {
        engine,
        mgr,
        hist,
        deliveries,
        _sessions: idle_sessions,
    })
}

async fn drive(rig: &Rig, args: &Args, rate: u64, seconds: u64, measure: bool) -> Step {
    let in_flight = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let behind = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    if measure {
        rig.hist.lock().reset();
        rig.deliveries.store(0, Ordering::Relaxed);
    }
    let start = Instant::now();
    let tick = Duration::from_millis(1);
    let mut issued: u64 = 0;
    let total = rate * seconds;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while issued < total {
        interval.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while issued < due {
            issued += 1;
            if in_flight.load(Ordering::Relaxed) as usize >= args.max_in_flight {
                behind.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let room = rand::thread_rng().gen_range(0..args.rooms);
            let s = seq.fetch_add(1, Ordering::Relaxed) as i64;
            let (e, inf, d) = (rig.engine.clone(), in_flight.clone(), done.clone());
            tokio::spawn(async move {
                let r = e
                    .mutation(
                        "post",
                        obj! {"room" => format!("r{room}"), "seq" => s, "body" => "hello"},
                        None,
                    )
                    .await;
                inf.fetch_sub(1, Ordering::Relaxed);
                if r.is_ok() {
                    d.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    while in_flight.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Let the last transitions land.
    while rig.mgr.pending_commits() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    Step {
        target: rate,
        achieved: done.load(Ordering::Relaxed) as f64 / elapsed,
        behind: behind.load(Ordering::Relaxed),
        latency: Latency::of(&rig.hist.lock()),
        deliveries: rig.deliveries.load(Ordering::Relaxed),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let machine = Machine::detect();
        let dir = tempfile::tempdir()?;
        println!("setting up {} rooms × {} subscribers ...", args.rooms, args.subscribers);
        let r = rig(dir.path(), &args, 0).await?;
        let mut steps = Vec::new();
        let mut table = Table::new(&["target commits/s", "sustained commits/s", "behind", "deliveries", "commit→delivery p50", "p99", "max"]);
        for &rate in &args.rates {
            drive(&r, &args, rate, 1, false).await;
            let s = drive(&r, &args, rate, args.seconds, true).await;
            table.row(vec![
                fmt_rate(s.target as f64),
                fmt_rate(s.achieved),
                s.behind.to_string(),
                s.deliveries.to_string(),
                fmt_us(s.latency.p50_us),
                fmt_us(s.latency.p99_us),
                fmt_us(s.latency.max_us),
            ]);
            println!("{}", table.text());
            steps.push(s);
        }
        let m = r.engine.metrics();
        let batches = m.batches.load(Ordering::Relaxed).max(1);
        let commits = m.commits.load(Ordering::Relaxed);
        drop(r);
        let mut idle_rows = Vec::new();
        if args.idle > 0 {
            for idle in [0, args.idle] {
                let d = tempfile::tempdir()?;
                let r = rig(d.path(), &args, idle).await?;
                drive(&r, &args, args.idle_rate, 1, false).await;
                let before = r.mgr.metrics().reruns.load(Ordering::Relaxed);
                let s = drive(&r, &args, args.idle_rate, args.seconds, true).await;
                let reruns = r.mgr.metrics().reruns.load(Ordering::Relaxed) - before;
                idle_rows.push((idle, s, reruns));
            }
        }
        let mut idle_table = Table::new(&["idle subscriptions", "sustained commits/s", "re-runs", "commit→delivery p50", "p99"]);
        for (idle, s, reruns) in &idle_rows {
            idle_table.row(vec![idle.to_string(), fmt_rate(s.achieved), reruns.to_string(), fmt_us(s.latency.p50_us), fmt_us(s.latency.p99_us)]);
        }
        println!("\n{}\n{}", table.text(), idle_table.text());
        println!("commit batches: {} for {} commits ({:.1} per batch)", batches, commits, commits as f64 / batches as f64);
        let json = serde_json::json!({
            "benchmark": "reactive-inprocess",
            "machine": machine,
            "parameters": { "rooms": args.rooms, "subscribers": args.subscribers, "seconds": args.seconds, "idle": args.idle, "idleRate": args.idle_rate },
            "steps": steps.iter().map(|s| serde_json::json!({"target": s.target, "sustained": s.achieved, "behind": s.behind, "deliveries": s.deliveries, "latency": s.latency})).collect::<Vec<_>>(),
            "idle": idle_rows.iter().map(|(i, s, r)| serde_json::json!({"idle": i, "sustained": s.achieved, "reruns": r, "latency": s.latency})).collect::<Vec<_>>(),
        });
        let md = format!(
            "# Reactive fan-out (in-process)\n\n{}\n\n{} rooms × {} subscribers, {} s per step, durable commits.\n\n{}\n\nIdle subscriptions at {} commits/s:\n\n{}\n",
            machine.markdown(), args.rooms, args.subscribers, args.seconds, table.markdown(), args.idle_rate, idle_table.markdown()
        );
        let (j, m) = write_results("reactive", &json, &md)?;
        println!("wrote {} and {}", j.display(), m.display());
        Ok(())
    })
}
