//! Load shedding at admission, through the engine: while the queue of mutations stands, a
//! client's mutation (`run_mutation_with_id`) is refused as overloaded having applied nothing,
//! an internal one (`mutation`) still waits and runs, and once the queue has drained client
//! calls are admitted again. A call refused so never ran, and its mutation's failure recorder
//! records nothing of it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use query_engine::admission::OVERLOADED;
use query_engine::engine::{Engine, EngineConfig};
use query_engine::error::{codes, FunctionResult};
use query_engine::functions::{FunctionKind, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;

use common::Named;

/// Bound on any wait, so a bug hangs nothing; never asserted on.
const EVENTUALLY: Duration = Duration::from_secs(15);
/// Client calls queued behind the blocked one.
const CLIENTS: u64 = 5;
/// Set when the mutation holding the only commit slot may finish.
static GATE_OPEN: AtomicBool = AtomicBool::new(false);
/// Set once that mutation runs, i.e. holds the slot.
static HOLDING: AtomicBool = AtomicBool::new(false);

fn open(dir: &std::path::Path) -> Engine {
    let mut f = common::functions();
    // Holds its commit slot until the gate opens, then creates the counter `name`.
    f.mutation(
        "gatedCreate",
        Visibility::Public,
        v::object([("name", v::string())]),
        v::string(),
        |ctx, a: Named| {
            HOLDING.store(true, Ordering::SeqCst);
            let started = Instant::now();
            while !GATE_OPEN.load(Ordering::SeqCst) && started.elapsed() < EVENTUALLY {
                std::thread::sleep(Duration::from_millis(2));
            }
            ctx.insert("counters", obj! { "name" => a.name, "value" => 0i64 })
        },
    );
    let config = EngineConfig {
        max_pending_commits: 1,
        // No scheduler or sweeper: nothing else takes the slot or joins the queue.
        run_scheduler: false,
        ..EngineConfig::default()
    };
    Engine::open(&dir.join("db.redb"), common::schema(), f, config).expect("open engine")
}

async fn client_call(engine: &Engine, name: &str, counter: &str) -> FunctionResult<Value> {
    let def = engine.public_function(name, FunctionKind::Mutation)?;
    engine
        .run_mutation_with_id(def, obj! { "name" => counter }, None, None)
        .await
        .map(|o| o.committed.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_queue_sheds_client_mutations_and_applies_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    for name in ["c", "failures of nobody"] {
        engine
            .mutation("createCounter", obj! { "name" => name }, None)
            .await
            .unwrap();
    }

    // One client call takes the only slot and holds it.
    let holder = tokio::spawn({
        let e = engine.clone();
        async move { client_call(&e, "gatedCreate", "held").await }
    });
    // Only then the others: started together, some could take the slot before it does.
    let started = Instant::now();
    while !HOLDING.load(Ordering::SeqCst) && started.elapsed() < EVENTUALLY {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // `decrement` records its failures: a call refused before it ran must record nothing.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let e = engine.clone();
            tokio::spawn(async move { client_call(&e, "decrement", "c").await })
        })
        .collect();
    let internal = tokio::spawn({
        let e = engine.clone();
        async move {
            e.mutation("increment", obj! { "name" => "c" }, None)
                .await
                .map(|c| c.value)
        }
    });
    // Everyone else queues behind it for longer than the standing-queue interval.
    let queued = &engine.metrics().admission_queued;
    let started = Instant::now();
    while queued.load(Ordering::Relaxed) < CLIENTS + 1 && started.elapsed() < EVENTUALLY {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(queued.load(Ordering::Relaxed), CLIENTS + 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    GATE_OPEN.store(true, Ordering::SeqCst);

    assert!(holder.await.unwrap().unwrap().as_str().is_some());
    for c in clients {
        let e = c.await.unwrap().unwrap_err();
        assert_eq!(e.code, codes::RATE_LIMITED);
        assert_eq!(
            e.data.get_path("reason").and_then(Value::as_str),
            Some(OVERLOADED)
        );
        assert!(e.data.get_path("retryAfterMs").and_then(Value::as_i64) > Some(0));
    }
    assert_eq!(internal.await.unwrap().unwrap(), Value::Int64(1));
    assert_eq!(
        engine.metrics().admission_refused.load(Ordering::Relaxed),
        CLIENTS
    );
    assert_eq!(queued.load(Ordering::Relaxed), 0);

    // The refused calls applied nothing; the queue has drained, so a client call runs again.
    assert_eq!(
        client_call(&engine, "increment", "c").await.unwrap(),
        Value::Int64(2)
    );
    let failures = engine
        .query("getCounter", obj! { "name" => "failures of nobody" }, None)
        .await
        .unwrap();
    assert_eq!(failures.value.get_path("value"), Some(&Value::Int64(0)));
}
