//! Reactivity tests: exact invalidation, shared executions, consistent transitions, slow
//! clients, access revocation, and the property that what a subscriber sees equals a fresh
//! run of its query at the same timestamp.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use query_engine::committer::Committed;
use query_engine::diff::apply;
use query_engine::engine::{Engine, EngineConfig};
use query_engine::error::FunctionError;
use query_engine::functions::Visibility;
use query_engine::obj;
use query_engine::schema::v;
use query_engine::subscriptions::{
    ClientSession, FailureReport, QueryUpdate, SubscriptionConfig, SubscriptionManager, Transition,
};
use query_engine::value::Value;

/// A subscriber's view: current value (or error code) per query id.
#[derive(Default)]
struct View {
    values: HashMap<u32, Result<Value, String>>,
    ts: u64,
}

impl View {
    fn apply(&mut self, t: &Transition) {
        assert_eq!(t.start_ts, self.ts, "transitions are contiguous");
        assert!(t.end_ts >= t.start_ts);
        for u in &t.updates {
            match u {
                QueryUpdate::Updated { query_id, diff, .. } => {
                    let old = match self.values.get(query_id) {
                        Some(Ok(v)) => v.clone(),
                        _ => Value::Null,
                    };
                    let new = apply(&old, diff).expect("diff applies");
                    self.values.insert(*query_id, Ok(new));
                }
                QueryUpdate::Failed { query_id, error } => {
                    self.values.insert(*query_id, Err(error.code.clone()));
                }
                QueryUpdate::Removed { query_id } => {
                    self.values.remove(query_id);
                }
            }
        }
        self.ts = t.end_ts;
    }

    /// Applies transitions until the view is at `ts` or later (the session must have a
    /// subscription: one without is sent nothing).
    async fn catch_up(&mut self, s: &ClientSession, ts: u64) {
        s.sync_to(ts).await;
        while self.ts < ts {
            self.apply(&next_transition(s).await);
        }
    }

    /// Applies transitions until query `q` has a value or an error.
    async fn await_query(&mut self, s: &ClientSession, q: u32) {
        while !self.values.contains_key(&q) {
            self.apply(&next_transition(s).await);
        }
    }
}

/// A fast engine where "ann" is a member of topic "t".
async fn open_with_ann_in_t(dir: &std::path::Path) -> Engine {
    let engine = common::open_fast(dir);
    engine
        .mutation("addMember", obj! {"topic" => "t", "user" => "ann"}, None)
        .await
        .unwrap();
    engine
}

async fn next_transition(s: &ClientSession) -> Transition {
    tokio::time::timeout(Duration::from_secs(10), s.next_transition())
        .await
        .expect("transition within 10 s")
        .expect("session open")
}

async fn fresh(engine: &Engine, f: &str, args: Value, who: Option<&str>) -> Result<Value, String> {
    let id = who.map(common::identity);
    engine
        .query(f, args, id.as_ref())
        .await
        .map(|r| r.value)
        .map_err(|e| e.code)
}

/// Commits a note (`addNote`) and returns the commit.
async fn add_note(engine: &Engine, topic: impl Into<Value>, seq: i64, text: &str) -> Committed {
    engine
        .mutation(
            "addNote",
            obj! {"topic" => topic.into(), "seq" => seq, "text" => text},
            None,
        )
        .await
        .unwrap()
}

/// A fast engine in `dir` holding counter "a".
async fn with_counter_a(dir: &std::path::Path) -> Engine {
    let engine = common::open_fast(dir);
    engine
        .mutation("createCounter", obj! {"name" => "a"}, None)
        .await
        .unwrap();
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_flow_and_unrelated_writes_rerun_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open_fast(dir.path());
    let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
    let s = mgr.connect(None).await;
    let mut view = View::default();
    let args = obj! {"topic" => "t", "after" => 0i64, "limit" => 3i64};
    s.subscribe(1, "notesAfter", args.clone()).await.unwrap();
    let c = add_note(&engine, "t", 1i64, "a").await;
    view.catch_up(&s, c.ts).await;
    assert_eq!(
        view.values[&1],
        fresh(&engine, "notesAfter", args.clone(), None).await
    );
    assert_eq!(
        view.values[&1].as_ref().unwrap().as_array().unwrap().len(),
        1
    );

    // Writes to another topic, or beyond a full window, re-run nothing.
    for seq in 2..=3 {
        let c = add_note(&engine, "t", seq, "b").await;
        view.catch_up(&s, c.ts).await;
    }
    let before = mgr.metrics().reruns.load(Ordering::Relaxed);
    let c = add_note(&engine, "other", 1i64, "x").await;
    let c2 = add_note(&engine, "t", 99i64, "x").await;
    view.catch_up(&s, c.ts.max(c2.ts)).await;
    assert_eq!(
        mgr.metrics().reruns.load(Ordering::Relaxed),
        before,
        "no execution read those keys"
    );
    assert_eq!(
        view.values[&1],
        fresh(&engine, "notesAfter", args.clone(), None).await
    );

    // Unsubscribe sends Removed and frees the execution.
    s.unsubscribe(1).await;
    let t = s.next_transition().await.unwrap();
    assert!(matches!(
        t.updates[..],
        [QueryUpdate::Removed { query_id: 1 }]
    ));
    assert_eq!(mgr.metrics().executions.load(Ordering::Relaxed), 0);
}

/// Real-time order: a subscription made after a commit was acknowledged — to anyone — starts
/// at or after that commit, also while the worker is kept busy by other sessions' updates
/// (before, a subscribe handled ahead of the pending commit notices, or sent after an
/// acknowledgement that went out before the notice, started at an older snapshot: a user's
/// second device could be told their account did not exist yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_starts_at_or_after_every_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open_fast(dir.path());
    let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
    // Background load: a watcher of topic "busy" and a writer to it.
    let watcher = mgr.connect(None).await;
    for q in 0..64u32 {
        let args = obj! {"topic" => "busy", "after" => i64::from(q), "limit" => 8i64};
        watcher.subscribe(q, "notesAfter", args).await.unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (engine, stop) = (engine.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                add_note(&engine, "busy", seq % 100, "load").await;
            }
        })
    };
    let drain = tokio::spawn(async move { while watcher.next_transition().await.is_some() {} });
    for seq in 1..=300i64 {
        let c = add_note(&engine, "t", seq, "x").await;
        let s = mgr.connect(None).await;
        let args = obj! {"topic" => "t", "after" => seq - 1, "limit" => 1i64};
        s.subscribe(1, "notesAfter", args).await.unwrap();
        let mut view = View::default();
        view.await_query(&s, 1).await;
        assert!(
            view.ts >= c.ts,
            "started at {} before commit {}",
            view.ts,
            c.ts
        );
        let got = view.values[&1].as_ref().unwrap().as_array().unwrap().len();
        assert_eq!(
            got, 1,
            "note {seq} missing from a subscription made after its commit"
        );
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    drop(mgr);
    drain.abort();
}

/// Read-your-writes: a session with a subscription gets a transition reaching its own
/// mutation's commit even when the write changed none of its results; a session without
/// subscriptions gets nothing (nothing to bring up to date), and a query it subscribes
/// afterwards starts at or after that commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_reaches_the_commit_only_for_sessions_with_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open_fast(dir.path());
    let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
    let watching = mgr.connect(None).await;
    let idle = mgr.connect(None).await;
    let mut view = View::default();
    let args = obj! {"topic" => "quiet", "after" => 0i64, "limit" => 3i64};
    watching
        .subscribe(1, "notesAfter", args.clone())
        .await
        .unwrap();
    view.catch_up(&watching, engine.snapshot().ts).await;
    let c = add_note(&engine, "elsewhere", 1i64, "a").await;
    for s in [&watching, &idle] {
        s.sync_to(c.ts).await;
    }
    let t = tokio::time::timeout(Duration::from_secs(10), watching.next_transition())
        .await
        .expect("a transition within 10 s")
        .expect("session open");
    assert!(t.end_ts >= c.ts && t.updates.is_empty(), "{t:?}");
    view.apply(&t);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), idle.next_transition())
            .await
            .is_err(),
        "a session without subscriptions gets no transition"
    );
    idle.subscribe(1, "notesAfter", args).await.unwrap();
    let t = tokio::time::timeout(Duration::from_secs(10), idle.next_transition())
        .await
        .expect("the new query's first transition within 10 s")
        .expect("session open");
    assert!(t.end_ts >= c.ts && t.updates.len() == 1, "{t:?}");
}

/// A session dropped while its `Connect` still waits behind other work leaves nothing behind:
/// the worker registered it after dropping the closed id, and it and a subscription queued
/// with it stayed (re-run on every commit) for the life of the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_dropped_before_the_worker_saw_it_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open_fast(dir.path());
    let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
    let busy = mgr.connect(None).await;
    let held = tokio::spawn(async move {
        busy.subscribe(1, "gated", obj! {}).await.unwrap();
        busy
    });
    while !common::GATED_ENTERED.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The worker is inside `gated`: this session's Connect and Subscribe wait behind it.
    let args = obj! {"topic" => "t", "after" => 0i64, "limit" => 10i64};
    let gone = mgr.connect(None).await;
    let queued = tokio::time::timeout(
        Duration::from_millis(50),
        gone.subscribe(1, "notesAfter", args.clone()),
    )
    .await;
    assert!(queued.is_err(), "the worker answered while held");
    drop(gone);
    common::GATE_OPEN.store(true, Ordering::SeqCst);
    let _busy = held.await.unwrap();
    // Once a later session's subscription is answered, the worker has handled all before it.
    let later = mgr.connect(None).await;
    later.subscribe(1, "notesAfter", args).await.unwrap();
    assert_eq!(mgr.metrics().subscriptions.load(Ordering::Relaxed), 2);
}

/// A new identity (a refresh of the same user's token, most often) sends what changed in each
/// result, not every result in full again: nothing here, where all of them stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_identity_sends_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_ann_in_t(dir.path()).await;
    add_note(&engine, "t", 1i64, "a").await;
    let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
    let s = mgr.connect(Some(common::identity("ann"))).await;
    s.subscribe(1, "memberNotes", obj! {"topic" => "t"})
        .await
        .unwrap();
    let args = obj! {"topic" => "t", "after" => 0i64, "limit" => 10i64};
    s.subscribe(2, "notesAfter", args.clone()).await.unwrap();
    let mut view = View::default();
    while view.values.len() < 2 {
        view.apply(&next_transition(&s).await);
    }
    s.set_identity(Some(common::identity("ann"))).await;
    if let Some(t) = s.try_next_transition() {
        assert!(t.updates.is_empty(), "{} updates", t.updates.len());
        view.apply(&t);
    }
    // Later changes still apply to what the client has.
    let c = add_note(&engine, "t", 2i64, "b").await;
    view.catch_up(&s, c.ts).await;
    for (q, f, a) in [
        (1, "memberNotes", obj! {"topic" => "t"}),
        (2, "notesAfter", args),
    ] {
        assert_eq!(view.values[&q], fresh(&engine, f, a, Some("ann")).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_subscriptions_share_one_execution() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open_fast(dir.path());
    let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
    let args = obj! {"topic" => "t", "after" => 0i64, "limit" => 10i64};
    let mut sessions = Vec::new();
    for _ in 0..1000 {
        let s = mgr.connect(None).await;
        s.subscribe(7, "notesAfter", args.clone()).await.unwrap();
        sessions.push(s);
    }
    assert_eq!(mgr.metrics().executions.load(Ordering::Relaxed), 1);
    let before = mgr.metrics().reruns.load(Ordering::Relaxed);
    let c = add_note(&engine, "t", 1i64, "a").await;
    for s in &sessions {
        let mut v = View::default();
        v.catch_up(s, c.ts).await;
        assert_eq!(v.values[&7].as_ref().unwrap().as_array().unwrap().len(), 1);
    }
    assert_eq!(
        mgr.metrics().reruns.load(Ordering::Relaxed) - before,
        1,
        "one re-run for 1,000 subscribers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_moves_all_queries_together() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open_fast(dir.path());
    for n in ["a", "b"] {
        engine
            .mutation("createCounter", obj! {"name" => n}, None)
            .await
            .unwrap();
    }
    engine
        .mutation("increment", obj! {"name" => "a"}, None)
        .await
        .unwrap();
    let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
    let s = mgr.connect(None).await;
    s.subscribe(1, "getCounter", obj! {"name" => "a"})
        .await
        .unwrap();
    s.subscribe(2, "getCounter", obj! {"name" => "b"})
        .await
        .unwrap();
    let mut view = View::default();
    view.catch_up(&s, engine.snapshot().ts).await;
    let c = engine
        .mutation(
            "transfer",
            obj! {"from" => "a", "to" => "b", "amount" => 1i64},
            None,
        )
        .await
        .unwrap();
    s.sync_to(c.ts).await;
    let t = s.next_transition().await.unwrap();
    assert_eq!(
        t.updates.len(),
        2,
        "both counters change in one transition: {t:?}"
    );
    view.apply(&t);
    let total: i64 = [1, 2]
        .iter()
        .map(|q| {
            view.values[q]
                .as_ref()
                .unwrap()
                .get_path("value")
                .unwrap()
                .as_i64()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 1);
}

/// A commit invalidating hundreds of executions at once re-runs them on several threads;
/// every subscriber still ends up equal to a fresh run, in one transition per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_invalidated_executions_rerun_in_parallel_consistently() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open_fast(dir.path());
    let config = SubscriptionConfig {
        rerun_threads: 4,
        ..SubscriptionConfig::default()
    };
    let mgr = SubscriptionManager::new(engine.clone(), config);
    let clients = [mgr.connect(None).await, mgr.connect(None).await];
    let mut args = Vec::new();
    for after in 0..100i64 {
        for limit in 1..=3i64 {
            args.push(obj! {"topic" => "t", "after" => after, "limit" => limit});
        }
    }
    for (i, a) in args.iter().enumerate() {
        clients[i % 2]
            .subscribe(i as u32, "notesAfter", a.clone())
            .await
            .unwrap();
    }
    assert_eq!(mgr.metrics().executions.load(Ordering::Relaxed), 300);
    let mut views = [View::default(), View::default()];
    let mut last = 0;
    for seq in [150i64, 50, 120] {
        let before = mgr.metrics().passes.load(Ordering::Relaxed);
        last = add_note(&engine, "t", seq, "x").await.ts;
        for (view, s) in views.iter_mut().zip(&clients) {
            view.catch_up(s, last).await;
        }
        assert!(mgr.metrics().passes.load(Ordering::Relaxed) > before);
    }
    assert!(mgr.metrics().reruns.load(Ordering::Relaxed) >= 300);
    for (i, a) in args.iter().enumerate() {
        let view = &views[i % 2];
        assert_eq!(view.ts, last);
        assert_eq!(
            view.values[&(i as u32)],
            fresh(&engine, "notesAfter", a.clone(), None).await,
            "query {i}"
        );
    }
}

/// A re-run does not validate again the documents its previous result already had (shared,
/// unchanged), but it does validate the ones it has not seen: a new document that breaks the
/// return validator fails the subscription with `INTERNAL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_validates_the_documents_it_has_not_seen() {
    let dir = tempfile::tempdir().unwrap();
    let mut functions = common::functions();
    functions.query(
        "untaggedNotes",
        Visibility::Public,
        v::object([("topic", v::string())]),
        v::array(v::object([
            ("_id", v::id("notes")),
            ("_creationTime", v::int64()),
            ("topic", v::string()),
            ("seq", v::int64()),
            ("text", v::string()),
        ])),
        |ctx, a: common::Topic| {
            Ok(Value::Array(
                ctx.query("notes", "by_topic_seq")
                    .eq("topic", a.topic)
                    .take(100)?,
            ))
        },
    );
    let mut config = EngineConfig::default();
    config.committer.durable = false;
    let engine = Engine::open(
        &dir.path().join("db.redb"),
        common::schema(),
        functions,
        config,
    )
    .expect("open engine");
    let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
    let s = mgr.connect(None).await;
    s.subscribe(1, "untaggedNotes", obj! {"topic" => "t"})
        .await
        .unwrap();
    // Keeps the session subscribed (and sent transitions) once query 1 has failed.
    let other = obj! {"topic" => "u", "after" => 0i64, "limit" => 10i64};
    s.subscribe(2, "notesAfter", other).await.unwrap();
    let mut view = View::default();
    for seq in 1..=3i64 {
        let ts = add_note(&engine, "t", seq, "x").await.ts;
        view.catch_up(&s, ts).await;
    }
    let notes = view.values[&1].as_ref().unwrap();
    assert_eq!(notes.as_array().map(|a| a.len()), Some(3));
    assert_eq!(
        view.values[&1],
        fresh(&engine, "untaggedNotes", obj! {"topic" => "t"}, None).await
    );

    // A tagged note: valid in its table, but not in this query's result.
    engine
        .transact(|ctx| {
            let tags = Value::Array(vec!["a".into()]);
            ctx.insert(
                "notes",
                obj! {"topic" => "t", "seq" => 4i64, "text" => "x", "tags" => tags},
            )
            .map(Value::from)
        })
        .await
        .unwrap();
    let after = engine
        .mutation("createCounter", obj! {"name" => "later"}, None)
        .await
        .unwrap()
        .ts;
    view.catch_up(&s, after).await;
    assert_eq!(view.values[&1], Err("INTERNAL".to_string()));
}

/// A query handler that panics on a re-run (on the worker or on a pool thread) ends only its
/// own subscriptions, with `INTERNAL`; every other subscription keeps being updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_query_fails_only_its_own_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open_fast(dir.path());
    let config = SubscriptionConfig {
        rerun_threads: 2,
        ..SubscriptionConfig::default()
    };
    let mgr = SubscriptionManager::new(engine.clone(), config);
    let s = mgr.connect(None).await;
    // Enough executions that a pass is shared with the pool thread.
    for q in 0..40u32 {
        let (f, a) = if q % 2 == 0 {
            ("notesOrPanic", obj! {"topic" => format!("t{q}")})
        } else {
            (
                "notesAfter",
                obj! {"topic" => format!("t{q}"), "after" => 0i64, "limit" => 10i64},
            )
        };
        s.subscribe(q, f, a).await.unwrap();
    }
    let mut view = View::default();
    let mut last = 0;
    for seq in [1i64, 13, 14] {
        for q in 0..40u32 {
            last = add_note(&engine, format!("t{q}"), seq, "x").await.ts;
        }
        view.catch_up(&s, last).await;
    }
    for q in 0..40u32 {
        if q % 2 == 0 {
            assert_eq!(view.values[&q], Err("INTERNAL".to_string()), "query {q}");
        } else {
            let notes = view.values[&q].as_ref().unwrap();
            assert_eq!(notes.as_array().map(|a| a.len()), Some(3), "query {q}");
        }
    }
    // The failed subscriptions ended: their ids are free again.
    s.subscribe(
        0,
        "notesAfter",
        obj! {"topic" => "t0", "after" => 0i64, "limit" => 10i64},
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_merged_and_never_delays_others() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_counter_a(dir.path()).await;
    let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
    let slow = mgr.connect(None).await;
    let fast = mgr.connect(None).await;
    for s in [&slow, &fast] {
        s.subscribe(1, "getCounter", obj! {"name" => "a"})
            .await
            .unwrap();
    }
    let mut fast_view = View::default();
    let mut last = 0;
    for i in 0..10_000u64 {
        last = engine
            .mutation("increment", obj! {"name" => "a"}, None)
            .await
            .unwrap()
            .ts;
        if i % 100 == 0 {
            fast_view.catch_up(&fast, last).await;
        }
    }
    fast_view.catch_up(&fast, last).await;
    assert_eq!(
        fast_view.values[&1].as_ref().unwrap().get_path("value"),
        Some(&Value::Int64(10_000))
    );
    // The worker pushes to each client in turn; wait until the slow one has the last commit.
    while slow.latest_ts() < last {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The slow client never read: it holds one merged transition, not 10,000.
    let t = slow.try_next_transition().expect("a pending transition");
    assert_eq!(t.updates.len(), 1);
    assert!(
        slow.try_next_transition().is_none(),
        "one merged transition, not a queue"
    );
    assert!(slow.merges() > 0);
    let mut slow_view = View::default();
    slow_view.apply(&t);
    assert_eq!(
        slow_view.values[&1],
        fresh(&engine, "getCounter", obj! {"name" => "a"}, None).await
    );
}

/// A client that stops reading while it subscribes and unsubscribes fresh ids: each end waits
/// in its outbox until read, so the ends count against the subscription limit instead of
/// growing the outbox without bound; reading them frees the ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_ends_count_against_the_subscription_limit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_counter_a(dir.path()).await;
    let config = SubscriptionConfig {
        max_subscriptions_per_client: 4,
        ..SubscriptionConfig::default()
    };
    let mgr = SubscriptionManager::new(engine.clone(), config);
    let s = mgr.connect(None).await;
    let args = || obj! {"name" => "a"};
    for q in 0..4 {
        s.subscribe(q, "getCounter", args()).await.unwrap();
        s.unsubscribe(q).await;
    }
    let refused = s
        .subscribe(4, "getCounter", args())
        .await
        .expect_err("four unread ends fill the limit");
    assert_eq!(refused.code, "RATE_LIMITED");
    // Reading the ends frees their ids.
    let mut view = View::default();
    view.apply(&next_transition(&s).await);
    assert!(view.values.is_empty(), "every subscription has ended");
    s.subscribe(4, "getCounter", args()).await.unwrap();
    view.await_query(&s, 4).await;
}

/// A subscription the consumer ends itself (`end`, as the server does with an update too
/// large for a frame) sends nothing more: not what was pending for it, not a later change,
/// not a `Removed`; its execution is dropped, the others go on, and its id can be used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_ended_by_the_consumer_sends_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_counter_a(dir.path()).await;
    let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
    let s = mgr.connect(None).await;
    let mut view = View::default();
    s.subscribe(1, "getCounter", obj! {"name" => "a"})
        .await
        .unwrap();
    let notes = obj! {"topic" => "t", "after" => 0i64, "limit" => 3i64};
    s.subscribe(2, "notesAfter", notes).await.unwrap();
    view.await_query(&s, 1).await;
    view.await_query(&s, 2).await;
    let executions = mgr.metrics().executions.load(Ordering::Relaxed);
    // A change pending for query 1, not yet taken.
    let c = engine
        .mutation("increment", obj! {"name" => "a"}, None)
        .await
        .unwrap();
    s.sync_to(c.ts).await;
    while s.latest_ts() < c.ts {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.end(1).await;
    view.values.remove(&1);
    // Taken once the end has reached the worker (`sync_to` goes through the same queue).
    let c2 = engine
        .mutation("increment", obj! {"name" => "a"}, None)
        .await
        .unwrap();
    view.catch_up(&s, c2.ts).await;
    assert!(!view.values.contains_key(&1), "{:?}", view.values);
    assert_eq!(
        mgr.metrics().executions.load(Ordering::Relaxed),
        executions - 1
    );
    // The same id is the client's again.
    s.subscribe(1, "getCounter", obj! {"name" => "a"})
        .await
        .unwrap();
    view.await_query(&s, 1).await;
    assert_eq!(
        view.values[&1],
        fresh(&engine, "getCounter", obj! {"name" => "a"}, None).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_access_ends_the_subscription_and_shares_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open_fast(dir.path());
    for u in ["ann", "bob"] {
        engine
            .mutation("addMember", obj! {"topic" => "t", "user" => u}, None)
            .await
            .unwrap();
    }
    let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
    let ann = mgr.connect(Some(common::identity("ann"))).await;
    let bob = mgr.connect(Some(common::identity("bob"))).await;
    let eve = mgr.connect(Some(common::identity("eve"))).await;
    for s in [&ann, &bob, &eve] {
        s.subscribe(1, "memberNotes", obj! {"topic" => "t"})
            .await
            .unwrap();
    }
    let (mut va, mut vb, mut ve) = (View::default(), View::default(), View::default());
    let now = engine.snapshot().ts;
    va.catch_up(&ann, now).await;
    vb.catch_up(&bob, now).await;
    ve.catch_up(&eve, now).await;
    assert_eq!(ve.values[&1], Err("FORBIDDEN".into()));
    // One shared body plus one access check per member.
    assert_eq!(mgr.metrics().executions.load(Ordering::Relaxed), 3);
    let c = engine
        .mutation("removeMember", obj! {"topic" => "t", "user" => "bob"}, None)
        .await
        .unwrap();
    vb.catch_up(&bob, c.ts).await;
    assert_eq!(vb.values[&1], Err("FORBIDDEN".into()));
    let c = add_note(&engine, "t", 1i64, "secret").await;
    va.catch_up(&ann, c.ts).await;
    assert_eq!(va.values[&1].as_ref().unwrap().as_array().unwrap().len(), 1);
    bob.sync_to(c.ts).await;
    while let Ok(Some(t)) =
        tokio::time::timeout(Duration::from_millis(200), bob.next_transition()).await
    {
        assert!(
            t.updates.is_empty(),
            "bob receives nothing after removal: {t:?}"
        );
    }
}

/// The failures of a client's subscriptions go through its `FailureReport`, told whether its
/// identity had lapsed: from the re-run that `lapse_identity` causes until the next
/// `set_identity`, new subscriptions included, and not before or after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_after_a_lapsed_identity_are_reported_as_lapsed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_ann_in_t(dir.path()).await;
    let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
    let report: FailureReport = std::sync::Arc::new(|e: FunctionError, lapsed: bool| {
        let standing = if lapsed { "lapsed" } else { "current" };
        FunctionError::new(e.code.clone(), format!("{standing}: {}", e.message))
    });
    let s = mgr
        .connect_reporting(Some(common::identity("ann")), report)
        .await;
    // Reads transitions until `query_id` fails; returns the reported error's message.
    let failure_of = |query_id: u32| {
        let s = &s;
        async move {
            loop {
                for u in next_transition(s).await.updates {
                    if let QueryUpdate::Failed { query_id: q, error } = u {
                        if q == query_id {
                            return format!("{} {}", error.code, error.message);
                        }
                    }
                }
            }
        }
    };
    let topic = |t: &str| obj! {"topic" => t};
    s.subscribe(1, "memberNotes", topic("t")).await.unwrap();
    s.subscribe(2, "memberNotes", topic("other")).await.unwrap();
    assert_eq!(failure_of(2).await, "FORBIDDEN current: not a member");
    s.lapse_identity().await;
    assert_eq!(failure_of(1).await, "UNAUTHORIZED lapsed: sign in");
    s.subscribe(3, "memberNotes", topic("t")).await.unwrap();
    assert_eq!(failure_of(3).await, "UNAUTHORIZED lapsed: sign in");
    s.set_identity(Some(common::identity("ann"))).await;
    s.subscribe(4, "memberNotes", topic("other")).await.unwrap();
    assert_eq!(failure_of(4).await, "FORBIDDEN current: not a member");
}

mod property {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    struct Fixture {
        rt: tokio::runtime::Runtime,
        engine: Engine,
        mgr: SubscriptionManager,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let (engine, mgr) = rt.block_on(async {
                // A result limit that windows of up to five notes cross both ways as notes
                // come, go and change length, so a re-run's size (worked out from the
                // previous result's) must agree with a fresh query's on every side of it.
                let engine = common::open_fast_with(dir.path(), |config| {
                    config.limits.max_result_bytes = RESULT_LIMIT_BYTES;
                });
                let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
                (engine, mgr)
            });
            Fixture {
                rt,
                engine,
                mgr,
                _dir: dir,
            }
        })
    }

    const RESULT_LIMIT_BYTES: usize = 320;
    /// The query id of each session's query that never changes.
    const KEEPER: u32 = 1_000;

    #[derive(Clone, Debug)]
    enum Op {
        Add { topic: u8, seq: i64 },
        Delete { topic: u8, nth: usize },
        Retext { topic: u8, nth: usize, text: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, -5i64..20).prop_map(|(topic, seq)| Op::Add { topic, seq }),
            (0u8..3, 0usize..6).prop_map(|(topic, nth)| Op::Delete { topic, nth }),
            (0u8..3, 0usize..6, any::<u8>()).prop_map(|(topic, nth, text)| Op::Retext {
                topic,
                nth,
                text
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
        /// After every commit, every subscriber's view equals a fresh run of its query, and
        /// each transition brings all of a client's queries to one timestamp.
        #[test]
        fn subscriber_view_equals_fresh_query(
            subs in proptest::collection::vec((0u8..3, -3i64..10, 1i64..6, 0usize..3), 1..6),
            ops in proptest::collection::vec(op(), 1..12),
        ) {
            let f = fixture();
            let case = f.rt.block_on(async {
                static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let case = CASE.fetch_add(1, Ordering::Relaxed);
                let topic = move |t: u8| format!("c{case}-{t}");
                let sessions: Vec<ClientSession> = {
                    let mut v = Vec::new();
                    for _ in 0..3 { v.push(f.mgr.connect(None).await); }
                    v
                };
                let mut queries: Vec<(usize, u32, Value)> = Vec::new();
                for (i, (t, after, limit, client)) in subs.iter().enumerate() {
                    let args = obj! {"topic" => topic(*t), "after" => *after, "limit" => *limit};
                    sessions[*client].subscribe(i as u32, "notesAfter", args.clone()).await.unwrap();
                    queries.push((*client, i as u32, args));
                }
                // Each session also follows a query that never changes, so it is sent
                // transitions (and can catch up) while every query it tests has failed.
                for s in &sessions {
                    let never = obj! {"topic" => topic(9), "after" => 0i64, "limit" => 1i64};
                    s.subscribe(KEEPER, "notesAfter", never).await.unwrap();
                }
                let mut views: Vec<View> = (0..3).map(|_| View::default()).collect();
                // Queries whose subscription `Failed` (a result over the limit) has ended.
                let mut ended: Vec<(usize, u32, Value)> = Vec::new();
                for op in ops {
                    let t = match &op { Op::Add { topic: t, .. } | Op::Delete { topic: t, .. } | Op::Retext { topic: t, .. } => topic(*t) };
                    let op2 = op.clone();
                    f.engine.transact(move |ctx| {
                        match &op2 {
                            Op::Add { seq, .. } => { ctx.insert("notes", obj! {"topic" => t.clone(), "seq" => *seq, "text" => "n"})?; }
                            Op::Delete { nth, .. } | Op::Retext { nth, .. } => {
                                let rows = ctx.query("notes", "by_topic_seq").eq("topic", t.clone()).take(nth + 1)?;
                                if let Some(r) = rows.get(*nth) {
                                    let id = r.get_path("_id").unwrap().as_str().unwrap().to_string();
                                    if let Op::Retext { text, .. } = &op2 {
                                        let mut o = query_engine::value::Object::new();
                                        o.insert("text".into(), "t".repeat(usize::from(*text % 96)).into());
                                        ctx.patch("notes", &id, o)?;
                                    } else {
                                        ctx.delete("notes", &id)?;
                                    }
                                }
                            }
                        }
                        Ok(Value::Null)
                    }).await.unwrap();
                    // Commits are serial here, so the latest snapshot is this commit's.
                    let ts = f.engine.snapshot().ts;
                    for (s, view) in sessions.iter().zip(&mut views) {
                        view.catch_up(s, ts).await;
                    }
                    // A client subscribes again to what ended; its first result comes at `ts`.
                    for (client, q, args) in ended.drain(..) {
                        views[client].values.remove(&q);
                        sessions[client].subscribe(q, "notesAfter", args).await.unwrap();
                        views[client].await_query(&sessions[client], q).await;
                    }
                    for (client, q, args) in &queries {
                        let expected = fresh(&f.engine, "notesAfter", args.clone(), None).await;
                        if views[*client].values.get(q) != Some(&expected) {
                            return Err(format!("query {q} of client {client} diverged after {op:?}"));
                        }
                        if expected.is_err() {
                            ended.push((*client, *q, args.clone()));
                        }
                    }
                }
                Ok(())
            });
            prop_assert!(case.is_ok(), "{:?}", case);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_closes_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open(dir.path());
    let mgr = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
    let s = mgr.connect(None).await;
    s.subscribe(1, "getCounter", obj! {"name" => "a"})
        .await
        .unwrap();
    engine
        .mutation("createCounter", obj! {"name" => "a"}, None)
        .await
        .unwrap();
    drop((s, mgr));
    common::close(engine, Duration::from_secs(10)).await;
    let again = common::open(dir.path());
    let v = again
        .query("getCounter", obj! {"name" => "a"}, None)
        .await
        .unwrap();
    assert_eq!(v.value.get_path("value"), Some(&Value::Int64(0)));
}
