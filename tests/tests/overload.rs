//! A mutation the server sheds under load, through the SDK. `Client::mutation` waits the
//! error's `retryAfterMs` and retries under the same mutation id until it is admitted, and it
//! is applied once; with `max_overload_retries = 0` the caller gets the overloaded error and
//! nothing is applied.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkedup_client::Client;
use linkedup_server::{Server, ServerConfig};
use query_engine::functions::Visibility;
use query_engine::schema::v;
use query_engine::value::Value;
use serde_json::json;

/// Bound on any wait, so a bug hangs nothing; never asserted on.
const EVENTUALLY: Duration = Duration::from_secs(15);

async fn eventually(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < EVENTUALLY,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_mutations_are_retried_until_admitted() {
    let dir = common::data_dir();
    // `gated` holds the only commit slot until the gate opens.
    let gate = Arc::new(AtomicBool::new(false));
    let entered = Arc::new(AtomicBool::new(false));
    let mut functions = common::functions();
    {
        let (gate, entered) = (gate.clone(), entered.clone());
        functions.mutation(
            "gated",
            Visibility::Public,
            v::object([]),
            v::null(),
            move |_ctx, _args: Value| {
                entered.store(true, Ordering::SeqCst);
                let started = Instant::now();
                while !gate.load(Ordering::SeqCst) && started.elapsed() < EVENTUALLY {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(Value::Null)
            },
        );
    }
    let mut config = ServerConfig::for_tests(dir.path());
    config.engine.max_pending_commits = 1;
    // No scheduler or sweeper: nothing else takes the slot.
    config.engine.run_scheduler = false;
    config.engine.admission.max_wait = Duration::from_millis(20);
    config.engine.admission.target = Duration::from_millis(5);
    let server = Server::start(config, common::schema(), functions)
        .await
        .unwrap();
    let addr = common::addr(&server);
    let connect = |retries: u32| {
        let mut options = common::options(&server);
        options.max_overload_retries = retries;
        Client::connect(&addr, options)
    };
    let holder = connect(0).await.unwrap();
    let patient = connect(3).await.unwrap();
    let impatient = connect(0).await.unwrap();
    let refused = || {
        server
            .engine()
            .metrics()
            .admission_refused
            .load(Ordering::SeqCst)
    };
    let hold = |holder: Client| {
        entered.store(false, Ordering::SeqCst);
        gate.store(false, Ordering::SeqCst);
        tokio::spawn(async move { holder.mutation::<_, Value>("gated", &json!({})).await })
    };

    // Shed while the slot is held; the gate opens once it was, and the retry is admitted.
    let held = hold(holder.clone());
    eventually("the slot to be taken", || entered.load(Ordering::SeqCst)).await;
    let add = tokio::spawn(async move {
        patient
            .mutation::<_, i64>("counter:add", &json!({"name": "c", "by": 1}))
            .await
    });
    eventually("a refusal", || refused() >= 1).await;
    gate.store(true, Ordering::SeqCst);
    assert_eq!(add.await.unwrap().expect("admitted on a retry"), 1);
    held.await.unwrap().unwrap();

    // Without retries the caller sees the refusal, and nothing was applied.
    let held = hold(holder.clone());
    eventually("the slot to be taken", || entered.load(Ordering::SeqCst)).await;
    let before = refused();
    let err = impatient
        .mutation::<_, i64>("counter:add", &json!({"name": "c", "by": 1}))
        .await
        .expect_err("shed");
    assert!(err.is_overloaded(), "{err}");
    assert_eq!(refused(), before + 1);
    gate.store(true, Ordering::SeqCst);
    held.await.unwrap().unwrap();
    let n: i64 = holder
        .query("counter:get", &json!({"name": "c"}))
        .await
        .unwrap();
    assert_eq!(n, 1);
}
