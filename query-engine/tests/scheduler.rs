//! Scheduler tests: scheduled mutations run once at or after their time and only if the
//! scheduling mutation committed; scheduled actions run and their failures are recorded; jobs
//! survive a restart; an action running at a crash is recorded failed, not re-run; crons repeat;
//! finished jobs are deleted once past their retention, pending ones never.

use std::path::Path;
use std::time::{Duration, Instant};

use query_engine::engine::{Engine, EngineConfig};
use query_engine::error::FunctionError;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::scheduler::{Cron, SCHEDULED_JOBS};
use query_engine::schema::{v, SchemaDefinition, TableDefinition};
use query_engine::value::Value;

/// Generous bound for "eventually": the scheduler polls every 100 ms.
const EVENTUALLY: Duration = Duration::from_secs(15);

fn schema() -> SchemaDefinition {
    SchemaDefinition::new().table(
        TableDefinition::new("events", v::object([("tag", v::string())])).index("by_tag", &["tag"]),
    )
}

#[derive(serde::Deserialize)]
struct Tagged {
    tag: String,
}

#[derive(serde::Deserialize)]
struct Later {
    tag: String,
    delay_ms: i64,
    function: String,
}

fn functions() -> Functions {
    let mut f = Functions::new();
    f.mutation(
        "record",
        Visibility::Internal,
        v::object([("tag", v::string())]),
        v::string(),
        |ctx, a: Tagged| ctx.insert("events", obj! {"tag" => a.tag}),
    );
    f.mutation(
        "scheduleLater",
        Visibility::Public,
        v::object([
            ("tag", v::string()),
            ("delay_ms", v::int64()),
            ("function", v::string()),
        ]),
        v::string(),
        |ctx, a: Later| ctx.schedule_after(a.delay_ms, &a.function, obj! {"tag" => a.tag}),
    );
    f.mutation(
        "scheduleThenFail",
        Visibility::Public,
        v::object([("tag", v::string())]),
        v::null(),
        |ctx, a: Tagged| -> Result<(), FunctionError> {
            ctx.schedule_after(0, "record", obj! {"tag" => a.tag})?;
            Err(FunctionError::validation("refused after scheduling"))
        },
    );
    f.action(
        "recordAction",
        Visibility::Internal,
        v::object([("tag", v::string())]),
        v::null(),
        |ctx, a: Tagged| async move {
            ctx.run_mutation("record", obj! {"tag" => a.tag}).await?;
            Ok(())
        },
    );
    f.action(
        "panickingAction",
        Visibility::Internal,
        v::object([("tag", v::string())]),
        v::null(),
        |_ctx, a: Tagged| async move {
            assert!(a.tag.is_empty(), "panicking as asked: {}", a.tag);
            Ok(())
        },
    );
    f.action(
        "failingAction",
        Visibility::Internal,
        v::object([("tag", v::string())]),
        v::null(),
        |_ctx, _a: Tagged| async move {
            Err::<(), _>(FunctionError::new("PROVIDER_ERROR", "provider said boom"))
        },
    );
    f
}

/// An engine with the test schema and `f` (the test's functions and more).
fn open_with_functions(dir: &Path, f: Functions) -> Engine {
    Engine::open(&dir.join("db.redb"), schema(), f, EngineConfig::default()).unwrap()
}

fn open_with(dir: &Path, config: EngineConfig) -> Engine {
    Engine::open(&dir.join("db.redb"), schema(), functions(), config).unwrap()
}

/// Reopens after a shutdown, retrying until the previous handle has released the file.
async fn reopen(dir: &Path) -> Engine {
    reopen_with(dir, EngineConfig::default()).await
}

async fn reopen_with(dir: &Path, config: EngineConfig) -> Engine {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        match Engine::open(&dir.join("db.redb"), schema(), functions(), config.clone()) {
            Ok(e) => return e,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen: {e}"),
        }
    }
}

async fn events(engine: &Engine, tag: &str) -> Vec<Value> {
    let tag = tag.to_string();
    let v = engine
        .read(move |ctx| {
            Ok(Value::Array(
                ctx.query("events", "by_tag")
                    .eq("tag", tag.clone())
                    .collect(1_000)?,
            ))
        })
        .await
        .unwrap();
    match v {
        Value::Array(a) => a,
        other => panic!("not an array: {other:?}"),
    }
}

async fn jobs(engine: &Engine) -> Vec<Value> {
    let v = engine
        .read(|ctx| ctx.full_table_scan(SCHEDULED_JOBS, 1_000).map(Value::Array))
        .await
        .unwrap();
    match v {
        Value::Array(a) => a,
        other => panic!("not an array: {other:?}"),
    }
}

async fn job(engine: &Engine, id: &str) -> Value {
    jobs(engine)
        .await
        .into_iter()
        .find(|j| j.get_path("_id").and_then(Value::as_str) == Some(id))
        .unwrap_or_else(|| panic!("no job {id}"))
}

fn str_of<'a>(doc: &'a Value, f: &str) -> &'a str {
    doc.get_path(f).and_then(Value::as_str).unwrap_or("")
}

fn i64_of(doc: &Value, f: &str) -> i64 {
    doc.get_path(f).and_then(Value::as_i64).unwrap()
}

/// Polls `check` until it returns `Some`, failing after `EVENTUALLY`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn schedule(engine: &Engine, tag: &str, delay_ms: i64, function: &str) -> String {
    engine
        .mutation(
            "scheduleLater",
            obj! {"tag" => tag, "delay_ms" => delay_ms, "function" => function},
            None,
        )
        .await
        .unwrap()
        .value
        .as_str()
        .unwrap()
        .to_string()
}

async fn job_in_final_state(engine: &Engine, id: &str) -> Value {
    eventually("job completion", || async {
        let j = job(engine, id).await;
        matches!(str_of(&j, "state"), "success" | "failed").then_some(j)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_mutation_runs_once_at_or_after_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with(dir.path(), EngineConfig::default());
    let id = schedule(&engine, "once", 200, "record").await;
    let j = job_in_final_state(&engine, &id).await;
    assert_eq!(str_of(&j, "state"), "success");
    let ev = events(&engine, "once").await;
    assert_eq!(ev.len(), 1);
    // The job ran no earlier than it was due, by the engine's own clock.
    assert!(i64_of(&ev[0], "_creationTime") >= i64_of(&j, "runAtMs"));
    assert!(i64_of(&j, "runAtMs") >= i64_of(&j, "createdAt") + 200);
    // A later job's completion shows the scheduler kept running; the first did not run again.
    let later = schedule(&engine, "later", 0, "record").await;
    job_in_final_state(&engine, &later).await;
    assert_eq!(events(&engine, "once").await.len(), 1);
    // Both runs are counted in the metrics (recorded just after the run commits).
    let metrics = engine.metrics().clone();
    eventually("two counted runs", || {
        let n = metrics.jobs("record", "success");
        async move { (n == 2).then_some(()) }
    })
    .await;
    assert_eq!(metrics.jobs("record", "failed"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_mutation_schedules_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with(dir.path(), EngineConfig::default());
    let e = engine
        .mutation("scheduleThenFail", obj! {"tag" => "never"}, None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "VALIDATION_ERROR");
    assert!(jobs(&engine).await.is_empty());
    let control = schedule(&engine, "control", 0, "record").await;
    job_in_final_state(&engine, &control).await;
    assert!(events(&engine, "never").await.is_empty());
    let all = jobs(&engine).await;
    assert_eq!(all.len(), 1, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_actions_run_and_failures_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with(dir.path(), EngineConfig::default());
    let ok = schedule(&engine, "from-action", 50, "recordAction").await;
    let bad = schedule(&engine, "bad", 50, "failingAction").await;
    let j = job_in_final_state(&engine, &ok).await;
    assert_eq!(str_of(&j, "state"), "success");
    assert_eq!(events(&engine, "from-action").await.len(), 1);
    let j = job_in_final_state(&engine, &bad).await;
    assert_eq!(str_of(&j, "state"), "failed");
    assert!(str_of(&j, "error").contains("boom"), "{j:?}");
    assert!(j.get_path("completedAtMs").is_some());
    let metrics = engine.metrics();
    assert_eq!(metrics.jobs("recordAction", "success"), 1);
    assert_eq!(metrics.jobs("failingAction", "failed"), 1);
    assert_eq!(metrics.jobs("failingAction", "success"), 0);
    let mut text = String::new();
    metrics.render(&mut text);
    assert!(text
        .contains("engine_scheduled_jobs_total{function=\"failingAction\",outcome=\"failed\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let engine = open_with(dir.path(), EngineConfig::default());
        let id = schedule(&engine, "after-restart", 300, "record").await;
        engine.shutdown();
        id
    };
    let engine = reopen(dir.path()).await;
    let j = job_in_final_state(&engine, &id).await;
    assert_eq!(str_of(&j, "state"), "success");
    assert_eq!(events(&engine, "after-restart").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_running_at_a_crash_is_failed_not_rerun() {
    let dir = tempfile::tempdir().unwrap();
    // More than one scheduler pass takes (64): recovery reads until none is left.
    const INTERRUPTED: usize = 100;
    let ids = {
        let engine = open_with(dir.path(), EngineConfig::default());
        // What the runner leaves behind when the process dies mid-action.
        let ids = engine
            .transact(|ctx| {
                let mut ids = Vec::new();
                for _ in 0..INTERRUPTED {
                    ids.push(Value::from(ctx.insert(
                        SCHEDULED_JOBS,
                        obj! {
                            "function" => "recordAction",
                            "kind" => "action",
                            "args" => obj! {"tag" => "interrupted"},
                            "runAtMs" => ctx.now_ms(),
                            "state" => "running",
                            "createdAt" => ctx.now_ms(),
                        },
                    )?));
                }
                Ok(Value::Array(ids))
            })
            .await
            .unwrap();
        engine.shutdown();
        ids.as_array().unwrap().to_vec()
    };
    let engine = reopen(dir.path()).await;
    for id in &ids {
        let j = job_in_final_state(&engine, id.as_str().unwrap()).await;
        assert_eq!(str_of(&j, "state"), "failed");
        assert!(str_of(&j, "error").contains("restart"), "{j:?}");
    }
    let control = schedule(&engine, "control", 0, "record").await;
    job_in_final_state(&engine, &control).await;
    assert!(events(&engine, "interrupted").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crons_run_repeatedly() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        crons: vec![Cron {
            name: "tick".into(),
            interval_ms: 100,
            function: "record".into(),
            args: obj! {"tag" => "tick"},
        }],
        ..EngineConfig::default()
    };
    let engine = open_with(dir.path(), config);
    eventually("three cron runs", || async {
        (events(&engine, "tick").await.len() >= 3).then_some(())
    })
    .await;
    let runs: Vec<Value> = jobs(&engine)
        .await
        .into_iter()
        .filter(|j| str_of(j, "function") == "record" && str_of(j, "state") == "success")
        .collect();
    assert!(runs.len() >= 3);
    // Due when they were scheduled, so kept for the retention like other jobs.
    assert!(runs.iter().all(|j| i64_of(j, "runAtMs") > 0), "{runs:?}");
}

/// Most scheduled actions run at once: a backlog waits, pending, and all of it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_actions_runs_a_bounded_number_at_a_time() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static RUNNING: AtomicUsize = AtomicUsize::new(0);
    static MOST: AtomicUsize = AtomicUsize::new(0);
    const BACKLOG: usize = 80;
    let dir = tempfile::tempdir().unwrap();
    let mut f = functions();
    f.action(
        "slowAction",
        Visibility::Internal,
        v::object([("tag", v::string())]),
        v::null(),
        |ctx, a: Tagged| async move {
            let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
            MOST.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            RUNNING.fetch_sub(1, Ordering::SeqCst);
            ctx.run_mutation("record", obj! {"tag" => a.tag}).await?;
            Ok(())
        },
    );
    let engine = open_with_functions(dir.path(), f);
    engine
        .transact(|ctx| {
            for _ in 0..BACKLOG {
                ctx.schedule_after(0, "slowAction", obj! {"tag" => "slow"})?;
            }
            Ok(Value::Null)
        })
        .await
        .unwrap();
    eventually("the whole backlog", || async {
        (events(&engine, "slow").await.len() == BACKLOG).then_some(())
    })
    .await;
    let most = MOST.load(Ordering::SeqCst);
    assert!((2..=32).contains(&most), "{most} actions ran at once");
}

/// A mutation job due behind a backlog of actions waiting for a slot runs at once: read with
/// them, it waited until all but 64 of the actions ahead of it had run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_job_does_not_wait_behind_a_backlog_of_actions() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static OPEN: AtomicBool = AtomicBool::new(false);
    const BACKLOG: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let mut f = functions();
    f.action(
        "heldAction",
        Visibility::Internal,
        v::object([]),
        v::null(),
        |_ctx, _a: Value| async move {
            while !OPEN.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(())
        },
    );
    let engine = open_with_functions(dir.path(), f);
    engine
        .transact(|ctx| {
            for _ in 0..BACKLOG {
                ctx.schedule_after(0, "heldAction", obj! {})?;
            }
            ctx.schedule_after(10, "record", obj! {"tag" => "behind"})?;
            Ok(Value::Null)
        })
        .await
        .unwrap();
    eventually("the mutation job behind the actions", || async {
        (events(&engine, "behind").await.len() == 1).then_some(())
    })
    .await;
    OPEN.store(true, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_deleted_after_their_retention_and_pending_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with(
        dir.path(),
        EngineConfig {
            finished_job_retention: Duration::from_secs(2),
            ..EngineConfig::default()
        },
    );
    let done = schedule(&engine, "a", 0, "record").await;
    let failed = schedule(&engine, "b", 0, "failingAction").await;
    let later = schedule(&engine, "c", 3_600_000, "record").await;
    assert_eq!(
        str_of(&job_in_final_state(&engine, &done).await, "state"),
        "success"
    );
    assert_eq!(
        str_of(&job_in_final_state(&engine, &failed).await, "state"),
        "failed"
    );
    eventually("finished jobs deleted", || async {
        let left: Vec<String> = jobs(&engine)
            .await
            .iter()
            .map(|j| str_of(j, "_id").to_string())
            .collect();
        (left == [later.clone()]).then_some(())
    })
    .await;
    // What the jobs did stays.
    assert_eq!(events(&engine, "a").await.len(), 1);
}

/// A cron's schedule survives a restart: one whose last run is more than an interval ago runs
/// at once, not an interval after the start (a server restarted more often than a cron's
/// interval never ran it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_cron_runs_soon_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hourly = |tag: &str| Cron {
        name: "hourly".into(),
        interval_ms: 3_600_000,
        function: "record".into(),
        args: obj! {"tag" => tag},
    };
    {
        let engine = open_with(dir.path(), EngineConfig::default());
        // Its last run, two hours ago.
        engine
            .transact(|ctx| {
                let two_hours_ago = ctx.now_ms() - 7_200_000;
                ctx.insert(
                    SCHEDULED_JOBS,
                    obj! {
                        "function" => "record", "kind" => "mutation",
                        "args" => obj! {"tag" => "before"}, "runAtMs" => two_hours_ago,
                        "state" => "success", "createdAt" => two_hours_ago,
                    },
                )
                .map(Value::from)
            })
            .await
            .unwrap();
        engine.shutdown();
    }
    let config = EngineConfig {
        crons: vec![hourly("overdue")],
        ..EngineConfig::default()
    };
    let engine = reopen_with(dir.path(), config).await;
    eventually("the overdue cron run", || async {
        (!events(&engine, "overdue").await.is_empty()).then_some(())
    })
    .await;
    engine.shutdown();
    drop(engine);

    // Just ran: after another restart it waits for its interval.
    let config = EngineConfig {
        crons: vec![hourly("again")],
        ..EngineConfig::default()
    };
    let engine = reopen_with(dir.path(), config).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(events(&engine, "again").await.is_empty());
}

/// A scheduled action that panics fails its job; it does not stay `running` until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_action_fails_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with(dir.path(), EngineConfig::default());
    let id = schedule(&engine, "boom", 0, "panickingAction").await;
    let j = job_in_final_state(&engine, &id).await;
    assert_eq!(str_of(&j, "state"), "failed");
    assert!(str_of(&j, "error").contains("panicked"), "{j:?}");
}
