//! Collaborative-notes throughput, in process: `notes.applyOperation` mutations per second for
//! many meetings with a few editors each, on durable commits (fsync) by default. Every editor
//! is a `NoteEditor` in a closed loop: make an edit, send it, then catch up through
//! `notes.opsSince` (remote ops applied, its own op as the ack) before the next edit, so each
//! edit is transformed past whatever its meeting's other editors committed meanwhile.
//! Prints a table and writes JSON + Markdown to `benches/results/notes-<timestamp>.{json,md}`.
//! Run: `cargo run --release -p linkedup-benches --bin notes -- --help`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::stream::{self, StreamExt, TryStreamExt};
use linkedup_benches::report::{
    self, counters, fmt_rate, fmt_us, latency_histogram, CommitterFigures, Latency, Machine, Table,
};
use linkedup_client::note_editor::NoteEditor;
use linkedup_schema::ot::TextOperation;
use linkedup_server::linkedup::notes::fns;
use linkedup_server::linkedup::{self, LinkedUpConfig};
use query_engine::engine::{Engine, EngineConfig};
use query_engine::functions::Functions;
use query_engine::identity::Identity;
use query_engine::json::{from_value, to_value};
use query_engine::obj;
use query_engine::value::Value;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Parser, Debug, Clone, Serialize)]
#[command(about = "Note-edit mutations per second (many meetings, a few editors each)")]
struct Args {
    /// Meetings, each with its own note.
    #[arg(long, default_value_t = 1_000)]
    meetings: usize,
    /// Editors per meeting (the host plus invited participants).
    #[arg(long, default_value_t = 3)]
    editors: usize,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Disable fsync (not the default; only to separate fsync cost from the rest).
    #[arg(long)]
    no_fsync: bool,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Directory for the temporary database (default: the system temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Do not write results files.
    #[arg(long)]
    no_save: bool,
}

/// Concurrent calls while setting up users and meetings.
const SETUP_PARALLELISM: usize = 64;
/// Catch-up queries an editor may need before it sees its own op (it is committed before the
/// mutation returns, so one normally suffices).
const MAX_CATCH_UP_QUERIES: usize = 100;

const WORDS: &[&str] = &[
    "meeting ",
    "notes ",
    "action ",
    "👍🏽 ",
    "会议 ",
    "café ",
    "e\u{301} ",
    "- ",
    "Q3 ",
];

fn ident(subject: String) -> Identity {
    Identity {
        issuer: "https://bench.local".into(),
        email: Some(format!("{subject}@bench.local")),
        subject,
        org_id: None,
        org_role: None,
        roles: Vec::new(),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    sequence: i64,
    op: TextOperation,
    client_id: String,
}

/// An insert of a word at a random place, or now and then a short delete.
fn random_edit(rng: &mut StdRng, text: &str) -> TextOperation {
    let len = text.chars().count() as u64;
    let at = rng.gen_range(0..=len);
    if len > 20 && rng.gen_bool(0.2) {
        let n = rng.gen_range(1..=(len - at).clamp(1, 5)).min(len - at);
        return TextOperation::new()
            .retain(at)
            .delete(n)
            .retain(len - at - n);
    }
    let word = WORDS[rng.gen_range(0..WORDS.len())];
    TextOperation::new()
        .retain(at)
        .insert(word)
        .retain(len - at)
}

struct Progress {
    /// Edits committed while measuring.
    edits: AtomicU64,
    /// Catch-up queries run while measuring.
    queries: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
}

/// One editor's closed loop until `stop`. Returns its edit latencies (µs) while measuring.
async fn editor_loop(
    engine: Engine,
    who: Identity,
    meeting: String,
    client_id: String,
    seed: u64,
    progress: Arc<Progress>,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hist = latency_histogram();
    let mut ed = NoteEditor::new(String::new(), 0);
    while !progress.stop.load(Ordering::Relaxed) {
        let op = random_edit(&mut rng, ed.text());
        let Some(out) = ed.apply_local(op)? else {
            continue;
        };
        let args = obj! {
            "meetingId" => meeting.as_str(),
            "baseVersion" => out.base_version as i64,
            "op" => to_value(&out.op)?,
            "clientId" => client_id.as_str(),
            "clientSeq" => out.client_seq as i64,
        };
        let t0 = Instant::now();
        engine
            .mutation(fns::APPLY_OPERATION, args, Some(&who))
            .await
            .map_err(|e| anyhow::anyhow!("applyOperation: {e}"))?;
        let measuring = progress.measuring.load(Ordering::Relaxed);
        if measuring {
            hist.record(t0.elapsed().as_micros().max(1) as u64)?;
            progress.edits.fetch_add(1, Ordering::Relaxed);
        }
        // Catch up to (and including) our own op.
        let mut acked = false;
        for _ in 0..MAX_CATCH_UP_QUERIES {
            let ops = engine
                .query(
                    fns::OPS_SINCE,
                    obj! { "meetingId" => meeting.as_str(), "version" => ed.version() as i64 },
                    Some(&who),
                )
                .await
                .map_err(|e| anyhow::anyhow!("opsSince: {e}"))?
                .value;
            if measuring {
                progress.queries.fetch_add(1, Ordering::Relaxed);
            }
            for e in from_value::<Vec<Entry>>(&ops)? {
                if e.client_id == client_id {
                    if ed.server_ack(e.sequence as u64)?.is_some() {
                        bail!("an editor with one op in flight had a buffer");
                    }
                    acked = true;
                } else {
                    ed.apply_remote(e.op, e.sequence as u64)?;
                }
            }
            if acked {
                break;
            }
            tokio::task::yield_now().await;
        }
        if !acked {
            bail!("{client_id}: own op not visible after {MAX_CATCH_UP_QUERIES} queries");
        }
    }
    Ok(hist)
}

async fn call(engine: &Engine, name: &str, args: Value, who: &Identity) -> anyhow::Result<Value> {
    engine
        .mutation(name, args, Some(who))
        .await
        .map(|c| c.value)
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

/// Creates the users and started meetings; returns (meeting id, editors) per meeting.
async fn setup(engine: &Engine, args: &Args) -> anyhow::Result<Vec<(String, Vec<Identity>)>> {
    let people: Vec<Vec<Identity>> = (0..args.meetings)
        .map(|m| {
            (0..args.editors)
                .map(|e| ident(format!("m{m}-e{e}")))
                .collect()
        })
        .collect();
    stream::iter(people.into_iter().map(|editors| {
        let engine = engine.clone();
        async move {
            let mut ids = Vec::new();
            for who in &editors {
                let u = call(&engine, "users.ensure", obj! {}, who).await?;
                let id = u
                    .get_path("_id")
                    .and_then(Value::as_str)
                    .context("user without _id")?;
                ids.push(Value::from(id));
            }
            let invitees: Vec<Value> = ids[1..].to_vec();
            let meeting = call(
                &engine,
                "meetings.schedule",
                obj! { "title" => "bench", "inviteeIds" => invitees },
                &editors[0],
            )
            .await?;
            let meeting = meeting.as_str().context("meeting id")?.to_string();
            call(
                &engine,
                "meetings.start",
                obj! { "meetingId" => meeting.as_str() },
                &editors[0],
            )
            .await?;
            anyhow::Ok((meeting, editors))
        }
    }))
    .buffer_unordered(SETUP_PARALLELISM)
    .try_collect()
    .await
}

#[derive(Serialize)]
struct Results {
    args: Args,
    machine: Machine,
    editors_total: usize,
    edits_per_sec: f64,
    catch_up_queries_per_sec: f64,
    edit_latency: Latency,
    committer: CommitterFigures,
    final_versions_total: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.editors == 0 || args.meetings == 0 {
        bail!("need at least one meeting and one editor");
    }
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let mut functions = Functions::new();
    linkedup::register(&mut functions, &LinkedUpConfig::default());
    let mut config = EngineConfig::default();
    config.committer.durable = !args.no_fsync;
    config.run_scheduler = false;
    let engine = Engine::open(
        &dir.path().join("notes.redb"),
        linkedup_schema::schema(),
        functions,
        config,
    )?;

    let t = Instant::now();
    let meetings = setup(&engine, &args).await?;
    eprintln!(
        "set up {} meetings with {} editors each in {:.1} s",
        meetings.len(),
        args.editors,
        t.elapsed().as_secs_f64()
    );

    let progress = Arc::new(Progress {
        edits: AtomicU64::new(0),
        queries: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let mut tasks = Vec::new();
    for (m, (meeting, editors)) in meetings.iter().enumerate() {
        for (e, who) in editors.iter().enumerate() {
            tasks.push(tokio::spawn(editor_loop(
                engine.clone(),
                who.clone(),
                meeting.clone(),
                format!("bench-{m}-{e}"),
                args.seed ^ ((m * 64 + e) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                progress.clone(),
            )));
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_secs)).await;
    let before = counters(engine.metrics());
    progress.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.secs)).await;
    progress.measuring.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let after = counters(engine.metrics());
    progress.stop.store(true, Ordering::Relaxed);
    let mut hist = latency_histogram();
    for t in tasks {
        hist.add(t.await??)?;
    }

    // Every note is where its editors left it.
    let mut versions_total = 0;
    for (meeting, editors) in &meetings {
        let n = engine
            .query(
                fns::GET,
                obj! { "meetingId" => meeting.as_str() },
                Some(&editors[0]),
            )
            .await
            .map_err(|e| anyhow::anyhow!("notes.get: {e}"))?
            .value;
        versions_total += n.get_path("version").and_then(Value::as_i64).unwrap_or(0);
    }

    let edits = progress.edits.load(Ordering::Relaxed);
    let results = Results {
        editors_total: meetings.len() * args.editors,
        edits_per_sec: edits as f64 / secs,
        catch_up_queries_per_sec: progress.queries.load(Ordering::Relaxed) as f64 / secs,
        edit_latency: Latency::of(&hist),
        committer: CommitterFigures::between(before, after, secs),
        final_versions_total: versions_total,
        machine: Machine::detect(),
        args: args.clone(),
    };
    let mut table = Table::new(&[
        "meetings × editors",
        "fsync",
        "edits/s",
        "opsSince/s",
        "p50",
        "p99",
        "max",
        "txns/batch",
        "fsyncs/s",
        "re-executions",
    ]);
    table.row(vec![
        format!("{} × {}", args.meetings, args.editors),
        if args.no_fsync { "off" } else { "on" }.into(),
        fmt_rate(results.edits_per_sec),
        fmt_rate(results.catch_up_queries_per_sec),
        fmt_us(results.edit_latency.p50_us),
        fmt_us(results.edit_latency.p99_us),
        fmt_us(results.edit_latency.max_us),
        format!("{:.1}", results.committer.mean_batch_txns),
        fmt_rate(results.committer.fsyncs_per_sec),
        results.committer.reexecutions.to_string(),
    ]);
    println!("{}", table.text());
    println!(
        "{} edits measured over {secs:.1} s; {} versions in all notes at the end",
        edits, versions_total
    );
    if !args.no_save {
        let md = format!(
            "# Notes: applyOperation throughput\n\n{}\n{}\n",
            results.machine.markdown(),
            table.markdown()
        );
        let (j, m) = report::write_results("notes", &serde_json::to_value(&results)?, &md)?;
        eprintln!("wrote {} and {}", j.display(), m.display());
    }
    Ok(())
}
