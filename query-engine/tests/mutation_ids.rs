//! Retried-mutation deduplication (`Engine::run_mutation_with_id`, protocol §12): a retry of a
//! committed run replays its result and applies nothing, also after a restart and for
//! concurrent duplicates; identities do not collide; failed runs leave no record; expired
//! records are ignored and swept; an oversized result is never applied twice.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use query_engine::engine::{Engine, EngineConfig};
use query_engine::error::{FunctionError, FunctionResult};
use query_engine::functions::{FunctionKind, Functions, Visibility};
use query_engine::identity::Identity;
use query_engine::mutation_ids::{MutationOutcome, MUTATION_IDS};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::{Object, Value};

use common::{identity, Named};

/// Bound on any wait for background work, so a bug hangs nothing; never asserted on.
const EVENTUALLY: Duration = Duration::from_secs(15);
/// Concurrent duplicates in the concurrency test.
const DUPLICATES: usize = 8;
/// Calls of `gatedIncrement` that have started; each waits until all duplicates have.
static GATED_ENTERED: AtomicUsize = AtomicUsize::new(0);

/// Adds one to the counter `name` (creating it at 1); returns the new value.
fn increment(ctx: &mut query_engine::context::Ctx<'_, '_>, name: &str) -> FunctionResult<i64> {
    let doc = ctx.query("counters", "by_name").eq("name", name).unique()?;
    match doc {
        None => {
            ctx.insert("counters", obj! { "name" => name, "value" => 1i64 })?;
            Ok(1)
        }
        Some(doc) => {
            let id = doc
                .get_path("_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let n = doc.get_path("value").and_then(Value::as_i64).unwrap_or(0) + 1;
            let mut changes = Object::new();
            changes.insert("value".into(), n.into());
            ctx.patch("counters", &id, changes)?;
            Ok(n)
        }
    }
}

fn functions() -> Functions {
    let mut f = Functions::new();
    f.mutation(
        "increment",
        Visibility::Public,
        v::object([("name", v::string())]),
        v::int64(),
        |ctx, a: Named| increment(ctx, &a.name),
    );
    // Writes, then fails: the run commits nothing.
    f.mutation(
        "incrementThenFail",
        Visibility::Public,
        v::object([("name", v::string())]),
        v::int64(),
        |ctx, a: Named| {
            increment(ctx, &a.name)?;
            Err::<i64, _>(FunctionError::new("APP_FAILED", "failed on purpose"))
        },
    );
    // Waits (bounded) until `DUPLICATES` calls have entered, so that all of them read the
    // mutation-id table before any commits; re-executions pass straight through.
    f.mutation(
        "gatedIncrement",
        Visibility::Public,
        v::object([("name", v::string())]),
        v::int64(),
        |ctx, a: Named| {
            GATED_ENTERED.fetch_add(1, Ordering::SeqCst);
            let deadline = Instant::now() + EVENTUALLY;
            while GATED_ENTERED.load(Ordering::SeqCst) < DUPLICATES && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            increment(ctx, &a.name)
        },
    );
    // Increments and returns a string of `len` bytes.
    f.mutation(
        "incrementBig",
        Visibility::Public,
        v::object([("name", v::string()), ("len", v::int64())]),
        v::string(),
        |ctx, a: Value| {
            let name = a.get_path("name").and_then(Value::as_str).unwrap_or("");
            increment(ctx, name)?;
            let len = a.get_path("len").and_then(Value::as_i64).unwrap_or(0);
            Ok("x".repeat(len.clamp(0, 1 << 20) as usize))
        },
    );
    f
}

fn config(adjust: impl FnOnce(&mut EngineConfig)) -> EngineConfig {
    let mut config = EngineConfig::default();
    config.committer.durable = false;
    config.run_scheduler = false;
    adjust(&mut config);
    config
}

fn open(dir: &Path, config: EngineConfig) -> Engine {
    Engine::open(&dir.join("db.redb"), common::schema(), functions(), config).expect("open engine")
}

async fn call(
    engine: &Engine,
    function: &str,
    args: Value,
    identity: Option<Identity>,
    mutation_id: &str,
) -> FunctionResult<MutationOutcome> {
    let def = engine.public_function(function, FunctionKind::Mutation)?;
    engine
        .run_mutation_with_id(def, args, identity, Some(mutation_id.to_string()))
        .await
}

async fn counter(engine: &Engine, name: &str) -> i64 {
    let name = name.to_string();
    engine
        .read(move |ctx| {
            Ok(ctx
                .query("counters", "by_name")
                .eq("name", name.as_str())
                .unique()?
                .and_then(|d| d.get_path("value").cloned())
                .unwrap_or(Value::Int64(0)))
        })
        .await
        .unwrap()
        .as_i64()
        .unwrap()
}

async fn records(engine: &Engine) -> usize {
    let all = engine
        .read(|ctx| ctx.full_table_scan(MUTATION_IDS, 1_000).map(Value::Array))
        .await
        .unwrap();
    match all {
        Value::Array(a) => a.len(),
        other => panic!("not an array: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_replays_the_result_and_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), config(|_| {}));
    let args = obj! { "name" => "a" };
    let alice = Some(identity("alice"));
    let first = call(&engine, "increment", args.clone(), alice.clone(), "m-1")
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_eq!(first.committed.value, Value::Int64(1));
    let retry = call(&engine, "increment", args.clone(), alice.clone(), "m-1")
        .await
        .unwrap();
    assert!(retry.replayed);
    assert_eq!(retry.committed.value, Value::Int64(1));
    // A timestamp whose snapshot reflects the mutation.
    assert!(retry.committed.ts >= first.committed.ts);
    assert_eq!(counter(&engine, "a").await, 1);
    assert_eq!(records(&engine).await, 1);

    // The same id from another identity, or anonymously, is another mutation.
    let bob = call(
        &engine,
        "increment",
        args.clone(),
        Some(identity("bob")),
        "m-1",
    )
    .await
    .unwrap();
    assert!(!bob.replayed);
    assert_eq!(bob.committed.value, Value::Int64(2));
    let anonymous = call(&engine, "increment", args.clone(), None, "m-1")
        .await
        .unwrap();
    assert!(!anonymous.replayed);
    assert_eq!(anonymous.committed.value, Value::Int64(3));
    // Without an id there is no deduplication.
    let def = engine
        .public_function("increment", FunctionKind::Mutation)
        .unwrap();
    for _ in 0..2 {
        engine
            .run_mutation_def(def.clone(), args.clone(), alice.clone())
            .await
            .unwrap();
    }
    assert_eq!(counter(&engine, "a").await, 5);
    assert_eq!(records(&engine).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_runs_leave_no_record_and_their_retry_runs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), config(|_| {}));
    let failed = call(
        &engine,
        "incrementThenFail",
        obj! { "name" => "a" },
        None,
        "m-1",
    )
    .await
    .unwrap_err();
    assert_eq!(failed.code, "APP_FAILED");
    let invalid = call(&engine, "increment", obj! { "name" => 5i64 }, None, "m-1")
        .await
        .unwrap_err();
    assert_eq!(invalid.code, "VALIDATION_ERROR");
    assert_eq!(records(&engine).await, 0);
    assert_eq!(counter(&engine, "a").await, 0);
    let retry = call(&engine, "increment", obj! { "name" => "a" }, None, "m-1")
        .await
        .unwrap();
    assert!(!retry.replayed);
    assert_eq!(retry.committed.value, Value::Int64(1));
    assert_eq!(counter(&engine, "a").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mutation_ids_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), config(|_| {}));
    for id in [String::new(), "x".repeat(129)] {
        let e = call(&engine, "increment", obj! { "name" => "a" }, None, &id)
            .await
            .unwrap_err();
        assert_eq!(e.code, "VALIDATION_ERROR", "{e:?}");
        assert_eq!(e.data.get_path("path"), Some(&Value::from("mutationId")));
    }
    assert_eq!(counter(&engine, "a").await, 0);
    let longest = "x".repeat(128);
    assert!(
        call(&engine, "increment", obj! { "name" => "a" }, None, &longest)
            .await
            .is_ok()
    );
}

/// All duplicates read "no record" on snapshots taken before any commits (the gate holds them
/// until every one has entered); the committer re-executes the losers, which then replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 10)]
async fn concurrent_duplicates_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(
        dir.path(),
        config(|c| c.limits.max_run_time = EVENTUALLY * 2),
    );
    let calls: Vec<_> = (0..DUPLICATES)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move {
                call(
                    &engine,
                    "gatedIncrement",
                    obj! { "name" => "a" },
                    Some(identity("alice")),
                    "m-1",
                )
                .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for c in calls {
        outcomes.push(c.await.unwrap().unwrap());
    }
    assert!(outcomes
        .iter()
        .all(|o| o.committed.value == Value::Int64(1)));
    assert_eq!(outcomes.iter().filter(|o| !o.replayed).count(), 1);
    assert_eq!(counter(&engine, "a").await, 1);
    assert_eq!(records(&engine).await, 1);
    // The duplicates were settled by the committer's conflict check and re-execution.
    assert!(
        engine
            .metrics()
            .reexecutions
            .load(std::sync::atomic::Ordering::Relaxed)
            >= (DUPLICATES - 1) as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let durable = || EngineConfig {
        run_scheduler: false,
        ..EngineConfig::default()
    };
    let args = obj! { "name" => "a" };
    let first = {
        let engine = open(dir.path(), durable());
        let first = call(
            &engine,
            "increment",
            args.clone(),
            Some(identity("alice")),
            "m-1",
        )
        .await
        .unwrap();
        common::close(engine, EVENTUALLY).await;
        first
    };
    let engine = open(dir.path(), durable());
    let retry = call(&engine, "increment", args, Some(identity("alice")), "m-1")
        .await
        .unwrap();
    assert!(retry.replayed);
    assert_eq!(retry.committed.value, first.committed.value);
    assert!(retry.committed.ts >= first.committed.ts);
    assert_eq!(counter(&engine, "a").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_result_is_not_replayed_and_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(
        dir.path(),
        config(|c| c.mutation_dedup.max_value_bytes = 100),
    );
    let args = obj! { "name" => "a", "len" => 200i64 };
    let first = call(&engine, "incrementBig", args.clone(), None, "m-1")
        .await
        .unwrap();
    assert_eq!(first.committed.value.as_str().map(str::len), Some(200));
    let retry = call(&engine, "incrementBig", args, None, "m-1")
        .await
        .unwrap_err();
    assert_eq!(retry.code, "CONFLICT");
    assert!(retry.message.contains("already applied"), "{retry:?}");
    assert_eq!(
        retry.data.get_path("alreadyApplied"),
        Some(&Value::Bool(true))
    );
    assert_eq!(counter(&engine, "a").await, 1);
    // A result within the limit is kept.
    let small = obj! { "name" => "a", "len" => 10i64 };
    call(&engine, "incrementBig", small.clone(), None, "m-2")
        .await
        .unwrap();
    let replay = call(&engine, "incrementBig", small, None, "m-2")
        .await
        .unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.committed.value, Value::from("x".repeat(10)));
    assert_eq!(counter(&engine, "a").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_record_is_ignored_then_swept() {
    let dir = tempfile::tempdir().unwrap();
    // A zero TTL: every record is expired as soon as it commits. No sweeper runs here.
    let engine = open(
        dir.path(),
        config(|c| c.mutation_dedup.ttl = Duration::ZERO),
    );
    let args = obj! { "name" => "a" };
    for expected in 1..=2 {
        let outcome = call(&engine, "increment", args.clone(), None, "m-1")
            .await
            .unwrap();
        assert!(!outcome.replayed);
        assert_eq!(outcome.committed.value, Value::Int64(expected));
    }
    // The retry replaced the expired record instead of adding a second.
    assert_eq!(records(&engine).await, 1);
    common::close(engine, EVENTUALLY).await;

    // With the engine's maintenance on, the sweeper deletes expired records.
    let engine = open(
        dir.path(),
        config(|c| {
            c.run_scheduler = true;
            c.mutation_dedup.ttl = Duration::ZERO;
            c.mutation_dedup.sweep_interval = Duration::from_millis(10);
        }),
    );
    for id in ["m-2", "m-3"] {
        call(&engine, "increment", args.clone(), None, id)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + EVENTUALLY;
    while records(&engine).await > 0 {
        assert!(Instant::now() < deadline, "expired records were not swept");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counter(&engine, "a").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_for_another_function_is_refused_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), config(|_| {}));
    let alice = Some(identity("alice"));
    call(
        &engine,
        "increment",
        obj! { "name" => "a" },
        alice.clone(),
        "m-1",
    )
    .await
    .unwrap();
    // A client bug: the same id for a different mutation. Replaying `increment`'s result
    // would silently drop this one; it is refused, and nothing is applied or recorded.
    let e = call(
        &engine,
        "incrementBig",
        obj! { "name" => "b", "len" => 3i64 },
        alice.clone(),
        "m-1",
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "VALIDATION_ERROR");
    assert_eq!(
        e.data.get_path("path").and_then(Value::as_str),
        Some("mutationId")
    );
    assert_eq!(
        e.data.get_path("usedFor").and_then(Value::as_str),
        Some("increment")
    );
    assert_eq!(counter(&engine, "b").await, 0);
    assert_eq!(records(&engine).await, 1);
    // The original's retry still replays.
    let retry = call(&engine, "increment", obj! { "name" => "a" }, alice, "m-1")
        .await
        .unwrap();
    assert!(retry.replayed);
    assert_eq!(counter(&engine, "a").await, 1);
}
