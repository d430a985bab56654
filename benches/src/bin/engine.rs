//! Engine micro-benchmarks, in process: durable single-document insert mutations per second at
//! several writer counts (each writer a task looping `engine.mutation`), and point-query and
//! indexed-range-query latency. Prints a table and writes JSON + Markdown to
//! `benches/results/engine-<timestamp>.{json,md}`.
//! Run: `cargo run --release -p linkedup-benches --bin engine -- --help`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use linkedup_benches::report::{
    self, counters, fmt_rate, fmt_us, latency_histogram, CommitterFigures, Latency, Machine, Table,
};
use query_engine::engine::{Engine, EngineConfig};
use query_engine::error::FunctionError;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::{v, SchemaDefinition, TableDefinition};
use query_engine::value::Value;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Parser, Debug, Clone, Serialize)]
#[command(about = "Engine throughput and latency (durable inserts, point and range queries)")]
struct Args {
    /// Concurrent writer counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,512")]
    writers: Vec<usize>,
    /// Seconds of warm-up before each measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Seconds measured per writer count.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Bytes of payload per inserted document.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Seconds of point queries and of range queries each.
    #[arg(long, default_value_t = 3.0)]
    query_secs: f64,
    /// Concurrent query tasks.
    #[arg(long, default_value_t = 1)]
    query_tasks: usize,
    /// Disable fsync (not the default; only to separate fsync cost from the rest).
    #[arg(long)]
    no_fsync: bool,
    /// Directory for the temporary databases (default: the system temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Do not write results files.
    #[arg(long)]
    no_save: bool,
}

fn schema() -> SchemaDefinition {
    SchemaDefinition::new().table(
        TableDefinition::new(
            "items",
            v::object([
                ("writer", v::int64()),
                ("seq", v::int64()),
                ("payload", v::string()),
            ]),
        )
        .index("by_writer_seq", &["writer", "seq"]),
    )
}

#[derive(serde::Deserialize)]
struct Insert {
    writer: i64,
    seq: i64,
    payload: String,
}

#[derive(serde::Deserialize)]
struct Get {
    id: String,
}

#[derive(serde::Deserialize)]
struct Range {
    writer: i64,
    after: i64,
}

fn functions() -> Functions {
    let mut f = Functions::new();
    f.mutation(
        "insert",
        Visibility::Public,
        v::object([
            ("writer", v::int64()),
            ("seq", v::int64()),
            ("payload", v::string()),
        ]),
        v::id("items"),
        |ctx, a: Insert| {
            ctx.insert(
                "items",
                obj! {"writer" => a.writer, "seq" => a.seq, "payload" => a.payload},
            )
        },
    );
    f.query(
        "get",
        Visibility::Public,
        v::object([("id", v::id("items"))]),
        v::any(),
        |ctx, a: Get| {
            ctx.get("items", &a.id)?
                .ok_or_else(|| FunctionError::not_found("no such item"))
        },
    );
    f.query(
        "range",
        Visibility::Public,
        v::object([("writer", v::int64()), ("after", v::int64())]),
        v::any(),
        |ctx, a: Range| {
            Ok(Value::Array(
                ctx.query("items", "by_writer_seq")
                    .eq("writer", a.writer)
                    .gt("seq", a.after)
                    .take(10)?,
            ))
        },
    );
    f
}

#[derive(Debug, Serialize)]
struct WriteResult {
    writers: usize,
    mutations_per_sec: f64,
    latency: Latency,
    committer: CommitterFigures,
}

#[derive(Debug, Serialize)]
struct QueryResultFigures {
    kind: &'static str,
    queries_per_sec: f64,
    latency: Latency,
}

fn open(dir: &std::path::Path, durable: bool) -> anyhow::Result<Engine> {
    let mut config = EngineConfig {
        run_scheduler: false,
        ..EngineConfig::default()
    };
    config.committer.durable = durable;
    Engine::open(&dir.join("bench.redb"), schema(), functions(), config)
        .context("opening the engine")
}

/// Runs `writers` tasks inserting for warm-up + measurement; returns the figures and, per
/// writer, the ids and sequence numbers written (for the query benchmarks).
async fn write_run(
    engine: &Engine,
    args: &Args,
    writers: usize,
) -> anyhow::Result<(WriteResult, Vec<Vec<String>>)> {
    let payload = "x".repeat(args.payload_bytes);
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(args.warmup_secs);
    let end = warm_end + Duration::from_secs_f64(args.secs);
    let measured = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (engine, payload, measured) = (engine.clone(), payload.clone(), measured.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = latency_histogram();
            let mut ids = Vec::new();
            for seq in 0i64.. {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = engine
                    .mutation(
                        "insert",
                        obj! {"writer" => w as i64, "seq" => seq, "payload" => payload.clone()},
                        None,
                    )
                    .await?;
                let t1 = Instant::now();
                if t0 >= warm_end && t1 <= end {
                    hist.record(t1.duration_since(t0).as_micros().max(1) as u64)?;
                    measured.fetch_add(1, Ordering::Relaxed);
                }
                if let Value::String(id) = r.value {
                    ids.push(id);
                }
            }
            anyhow::Ok((hist, ids))
        }));
    }
    // Counter snapshots at the window's edges.
    tokio::time::sleep_until(warm_end.into()).await;
    let before = counters(engine.metrics());
    tokio::time::sleep_until(end.into()).await;
    let after = counters(engine.metrics());
    let mut hist = latency_histogram();
    let mut all_ids = Vec::new();
    for t in tasks {
        let (h, ids) = t.await??;
        hist.add(&h)?;
        all_ids.push(ids);
    }
    let secs = args.secs;
    Ok((
        WriteResult {
            writers,
            mutations_per_sec: measured.load(Ordering::Relaxed) as f64 / secs,
            latency: Latency::of(&hist),
            committer: CommitterFigures::between(before, after, secs),
        },
        all_ids,
    ))
}

async fn query_run(
    engine: &Engine,
    args: &Args,
    kind: &'static str,
    ids: Arc<Vec<Vec<String>>>,
) -> anyhow::Result<QueryResultFigures> {
    let end = Instant::now() + Duration::from_secs_f64(args.query_secs);
    let mut tasks = Vec::new();
    for t in 0..args.query_tasks {
        let (engine, ids) = (engine.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(t as u64);
            let mut hist = latency_histogram();
            let writers: Vec<usize> = (0..ids.len()).filter(|w| !ids[*w].is_empty()).collect();
            if writers.is_empty() {
                bail!("no documents to query");
            }
            while Instant::now() < end {
                let w = writers[rng.gen_range(0..writers.len())];
                let t0 = Instant::now();
                let r = if kind == "point" {
                    let id = &ids[w][rng.gen_range(0..ids[w].len())];
                    engine.query("get", obj! {"id" => id.clone()}, None).await?
                } else {
                    let after = rng.gen_range(0..ids[w].len()) as i64 - 1;
                    engine
                        .query("range", obj! {"writer" => w as i64, "after" => after}, None)
                        .await?
                };
                hist.record(t0.elapsed().as_micros().max(1) as u64)?;
                std::hint::black_box(r);
            }
            anyhow::Ok(hist)
        }));
    }
    let mut hist = latency_histogram();
    for t in tasks {
        hist.add(&t.await??)?;
    }
    Ok(QueryResultFigures {
        kind,
        queries_per_sec: hist.len() as f64 / args.query_secs,
        latency: Latency::of(&hist),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let machine = Machine::detect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args, machine))
}

async fn run(args: Args, machine: Machine) -> anyhow::Result<()> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let durable = !args.no_fsync;
    let mut writes = Vec::new();
    for (i, &w) in args.writers.iter().enumerate() {
        let dir = tempfile::tempdir_in(&base)?;
        let engine = open(dir.path(), durable)?;
        let (r, ids) = write_run(&engine, &args, w).await?;
        eprintln!(
            "{w:>4} writers: {} mutations/s, p50 {}, p99 {}, {:.1} txns/batch, {:.0} fsyncs/s, {} per batch write",
            fmt_rate(r.mutations_per_sec),
            fmt_us(r.latency.p50_us),
            fmt_us(r.latency.p99_us),
            r.committer.mean_batch_txns,
            r.committer.fsyncs_per_sec,
            fmt_us(r.committer.mean_batch_write_us as u64),
        );
        writes.push(r);
        engine.shutdown();
        drop(engine);
        if i + 1 < args.writers.len() {
            continue;
        }
        // The last database is reopened for the query benchmarks.
        let ids = Arc::new(ids);
        let docs: usize = ids.iter().map(Vec::len).sum();
        let engine = reopen(dir.path(), durable).await?;
        let point = query_run(&engine, &args, "point", ids.clone()).await?;
        let range = query_run(&engine, &args, "range", ids).await?;
        for q in [&point, &range] {
            eprintln!(
                "{} query over {docs} documents: {} queries/s, p50 {}, p99 {}",
                q.kind,
                fmt_rate(q.queries_per_sec),
                fmt_us(q.latency.p50_us),
                fmt_us(q.latency.p99_us)
            );
        }
        return finish(&args, &machine, writes, vec![point, range], docs);
    }
    finish(&args, &machine, writes, Vec::new(), 0)
}

async fn reopen(dir: &std::path::Path, durable: bool) -> anyhow::Result<Engine> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match open(dir, durable) {
            Ok(e) => return Ok(e),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn finish(
    args: &Args,
    machine: &Machine,
    writes: Vec<WriteResult>,
    queries: Vec<QueryResultFigures>,
    query_docs: usize,
) -> anyhow::Result<()> {
    let mut wt = Table::new(&[
        "writers",
        "mutations/s",
        "p50",
        "p99",
        "txns/batch",
        "fsyncs/s",
        "write+fsync/batch",
    ]);
    for r in &writes {
        wt.row(vec![
            r.writers.to_string(),
            fmt_rate(r.mutations_per_sec),
            fmt_us(r.latency.p50_us),
            fmt_us(r.latency.p99_us),
            format!("{:.1}", r.committer.mean_batch_txns),
            format!("{:.0}", r.committer.fsyncs_per_sec),
            fmt_us(r.committer.mean_batch_write_us as u64),
        ]);
    }
    let mut qt = Table::new(&["query", "queries/s", "p50", "p99", "p99.9"]);
    for q in &queries {
        qt.row(vec![
            q.kind.to_string(),
            fmt_rate(q.queries_per_sec),
            fmt_us(q.latency.p50_us),
            fmt_us(q.latency.p99_us),
            fmt_us(q.latency.p999_us),
        ]);
    }
    let durability = if args.no_fsync {
        "fsync off"
    } else {
        "durable (fsync per batch)"
    };
    println!(
        "\nDurable single-document inserts ({durability}):\n{}",
        wt.text()
    );
    println!(
        "Queries over {query_docs} documents, {} task(s):\n{}",
        args.query_tasks,
        qt.text()
    );
    if args.no_save {
        return Ok(());
    }
    let json = serde_json::json!({
        "benchmark": "engine",
        "machine": machine,
        "load_average_at_end": report::load_average(),
        "parameters": args,
        "writes": writes,
        "queries": queries,
        "query_documents": query_docs,
    });
    let md = format!(
        "# Engine benchmark\n\n{}\n- parameters: writers {:?}, {} s measured after {} s warm-up, {} B payload, {durability}; queries {} s, {} task(s)\n\n## Single-document insert mutations\n\n{}\n## Queries over {query_docs} documents\n\n{}",
        machine.markdown(),
        args.writers,
        args.secs,
        args.warmup_secs,
        args.payload_bytes,
        args.query_secs,
        args.query_tasks,
        wt.markdown(),
        qt.markdown()
    );
    let (j, m) = report::write_results("engine", &json, &md)?;
    println!("wrote {} and {}", j.display(), m.display());
    Ok(())
}
