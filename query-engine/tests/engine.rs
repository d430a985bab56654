//! Engine integration tests: reads, writes, validation, limits, serializability, pagination,
//! restart durability and the scheduler, through the in-process API.

mod common;

use query_engine::obj;
use query_engine::value::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_then_query_by_index() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open(dir.path());
    let id = engine
        .mutation("createCounter", obj! {"name" => "a"}, None)
        .await
        .unwrap();
    assert!(id.value.as_str().is_some());
    let r = engine
        .mutation("increment", obj! {"name" => "a"}, None)
        .await
        .unwrap();
    assert_eq!(r.value, Value::Int64(1));
    let got = engine
        .query("getCounter", obj! {"name" => "a"}, None)
        .await
        .unwrap();
    assert_eq!(got.value.get_path("value"), Some(&Value::Int64(1)));
    assert!(got.ts >= r.ts);
    let missing = engine
        .query("getCounter", obj! {"name" => "zz"}, None)
        .await
        .unwrap_err();
    assert_eq!(missing.code, "NOT_FOUND");
}

/// A range whose lower bound lies above its upper bound is empty, also over a transaction's
/// own index writes (the write overlay's map panicked on it, so the call failed `INTERNAL`
/// whenever the mutation had written, or was re-executed over a batch that had).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inverted_range_is_empty_over_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open(dir.path());
    let args = |seq: i64, after: i64, before: i64| {
        obj! {"topic" => "t", "seq" => seq, "after" => after, "before" => before}
    };
    let rows = engine
        .mutation("addNoteThenRange", args(4, 5, 3), None)
        .await
        .unwrap();
    assert_eq!(rows.value, Value::Array(vec![]));
    let rows = engine
        .mutation("addNoteThenRange", args(5, 3, 6), None)
        .await
        .unwrap();
    let seqs: Vec<_> = rows
        .value
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.get_path("seq").cloned())
        .collect();
    assert_eq!(seqs, vec![Some(Value::Int64(4)), Some(Value::Int64(5))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open(dir.path());
    let e = engine
        .mutation("createCounter", obj! {"name" => 5i64}, None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "VALIDATION_ERROR");
    assert!(e.message.contains("name"), "{e}");
    let e = engine
        .mutation("createCounter", obj! {"name" => "x", "extra" => 1i64}, None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "VALIDATION_ERROR");
    assert!(e.message.contains("extra"), "{e}");
    // A document violating the table validator: nothing is written.
    let e = engine
        .mutation(
            "addNote",
            obj! {"topic" => "t", "seq" => 1i64, "text" => "x"},
            None,
        )
        .await;
    assert!(e.is_ok());
    let big = "x".repeat(2 << 20);
    let e = engine
        .mutation(
            "addNote",
            obj! {"topic" => "t", "seq" => 2i64, "text" => big},
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "VALIDATION_ERROR");
    let rows = engine
        .query(
            "notesAfter",
            obj! {"topic" => "t", "after" => 0i64, "limit" => 10i64},
            None,
        )
        .await
        .unwrap();
    assert_eq!(rows.value.as_array().unwrap().len(), 1);
    // Ids of the wrong table are refused.
    let note_id = rows.value.as_array().unwrap()[0]
        .get_path("_id")
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let e = engine
        .transact(move |ctx| ctx.get("counters", &note_id).map(|_| Value::Null))
        .await
        .unwrap_err();
    assert_eq!(e.code, "VALIDATION_ERROR");
    let e = engine
        .transact(|ctx| ctx.get("counters", "not-an-id").map(|_| Value::Null))
        .await
        .unwrap_err();
    assert_eq!(e.code, "VALIDATION_ERROR");
    // Writing a system field is refused.
    let e = engine
        .transact(|ctx| {
            ctx.insert(
                "counters",
                obj! {"name" => "q", "value" => 1i64, "_id" => "x"},
            )
            .map(Value::from)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, "VALIDATION_ERROR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_and_transfers_are_serializable() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open(dir.path());
    for n in ["a", "b", "c"] {
        engine
            .mutation("createCounter", obj! {"name" => n}, None)
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for t in 0..32 {
        let e = engine.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                if (t + i) % 3 == 0 {
                    let (from, to) = if i % 2 == 0 { ("a", "b") } else { ("b", "c") };
                    e.mutation(
                        "transfer",
                        obj! {"from" => from, "to" => to, "amount" => 1i64},
                        None,
                    )
                    .await
                    .unwrap();
                } else {
                    e.mutation("increment", obj! {"name" => "a"}, None)
                        .await
                        .unwrap();
                }
            }
        }));
    }
    let mut increments = 0;
    for t in 0..32 {
        for i in 0..50 {
            if (t + i) % 3 != 0 {
                increments += 1;
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut total = 0;
    for n in ["a", "b", "c"] {
        let v = engine
            .query("getCounter", obj! {"name" => n}, None)
            .await
            .unwrap();
        total += v.value.get_path("value").unwrap().as_i64().unwrap();
    }
    assert_eq!(total, increments, "no lost update");
    let m = engine.metrics();
    assert!(m.commits.load(std::sync::atomic::Ordering::Relaxed) >= 1600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_see_own_writes_and_paginate_stably() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open(dir.path());
    for seq in (1..=20i64).rev() {
        engine
            .mutation(
                "addNote",
                obj! {"topic" => "t", "seq" => seq, "text" => format!("n{seq}")},
                None,
            )
            .await
            .unwrap();
    }
    engine
        .mutation(
            "addNote",
            obj! {"topic" => "u", "seq" => 1i64, "text" => "other"},
            None,
        )
        .await
        .unwrap();
    let rows = engine
        .query(
            "notesAfter",
            obj! {"topic" => "t", "after" => 15i64, "limit" => 100i64},
            None,
        )
        .await
        .unwrap();
    let seqs: Vec<i64> = rows
        .value
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.get_path("seq").unwrap().as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![16, 17, 18, 19, 20]);
    // Read-your-writes inside a transaction, including deletes.
    let v = engine
        .transact(|ctx| {
            let first = ctx
                .query("notes", "by_topic_seq")
                .eq("topic", "t")
                .first()?
                .unwrap();
            let id = first.get_path("_id").unwrap().as_str().unwrap().to_string();
            ctx.delete("notes", &id)?;
            ctx.insert(
                "notes",
                obj! {"topic" => "t", "seq" => 0i64, "text" => "zero"},
            )?;
            let rows = ctx
                .query("notes", "by_topic_seq")
                .eq("topic", "t")
                .take(3)?;
            let desc = ctx
                .query("notes", "by_topic_seq")
                .eq("topic", "t")
                .desc()
                .take(2)?;
            Ok(Value::Array(
                rows.into_iter()
                    .chain(desc)
                    .map(|r| r.get_path("seq").unwrap().clone())
                    .collect(),
            ))
        })
        .await
        .unwrap();
    assert_eq!(
        v,
        Value::Array(vec![
            0i64.into(),
            2i64.into(),
            3i64.into(),
            20i64.into(),
            19i64.into()
        ])
    );
    // Pagination: pages are disjoint, ordered and complete; inserting before the cursor does
    // not shift later pages.
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let c = cursor.clone();
        let page = engine
            .read(move |ctx| {
                let p = ctx
                    .query("notes", "by_topic_seq")
                    .eq("topic", "t")
                    .paginate(c.as_deref(), 6)?;
                query_engine::json::to_value(&p)
                    .map_err(|e| query_engine::error::FunctionError::internal(e.to_string()))
            })
            .await
            .unwrap();
        let p: query_engine::context::Page = query_engine::json::from_value(&page).unwrap();
        seen.extend(
            p.page
                .iter()
                .map(|r| r.get_path("seq").unwrap().as_i64().unwrap()),
        );
        if seen.len() == 6 {
            engine
                .mutation(
                    "addNote",
                    obj! {"topic" => "t", "seq" => -5i64, "text" => "early"},
                    None,
                )
                .await
                .unwrap();
        }
        if p.is_done {
            break;
        }
        cursor = p.continue_cursor;
    }
    assert_eq!(seen, (0..=20).filter(|s| *s != 1).collect::<Vec<i64>>());
    let bad = engine
        .read(|ctx| {
            ctx.query("notes", "by_topic_seq")
                .eq("topic", "t")
                .paginate(Some("zz"), 5)
                .map(|_| Value::Null)
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code, "VALIDATION_ERROR");
}

/// A cursor over a long index key is taken back: keys are bounded by the document size, not
/// by the 4 KiB the cursor was once held to (a 5,000-byte topic's cursor was refused as
/// invalid, so no second page could be read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_continue_over_long_index_keys() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open(dir.path());
    let topic = "a".repeat(5_000);
    for seq in 0..3i64 {
        engine
            .mutation(
                "addNote",
                obj! {"topic" => topic.as_str(), "seq" => seq, "text" => "x"},
                None,
            )
            .await
            .unwrap();
    }
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let (c, t) = (cursor.clone(), topic.clone());
        let page = engine
            .read(move |ctx| {
                let p = ctx
                    .query("notes", "by_topic_seq")
                    .eq("topic", t.as_str())
                    .paginate(c.as_deref(), 1)?;
                query_engine::json::to_value(&p)
                    .map_err(|e| query_engine::error::FunctionError::internal(e.to_string()))
            })
            .await
            .unwrap();
        let p: query_engine::context::Page = query_engine::json::from_value(&page).unwrap();
        seen.extend(p.page.iter().map(|r| r.get_path("seq").cloned()));
        if p.is_done {
            break;
        }
        cursor = p.continue_cursor;
    }
    let want: Vec<_> = (0..3i64).map(|s| Some(Value::Int64(s))).collect();
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open_with(dir.path(), |c| {
        c.limits.max_documents_read = 5;
        c.limits.max_documents_written = 3;
    });
    for seq in 0..8i64 {
        engine
            .mutation(
                "addNote",
                obj! {"topic" => "t", "seq" => seq, "text" => "x"},
                None,
            )
            .await
            .unwrap();
    }
    let e = engine
        .query(
            "notesAfter",
            obj! {"topic" => "t", "after" => -1i64, "limit" => 100i64},
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "VALIDATION_ERROR");
    assert!(e.message.contains("documentsRead"));
    let e = engine
        .transact(|ctx| {
            for s in 100..110i64 {
                ctx.insert("notes", obj! {"topic" => "w", "seq" => s, "text" => "x"})?;
            }
            Ok(Value::Null)
        })
        .await
        .unwrap_err();
    assert!(e.message.contains("documentsWritten"));
    let rows = engine
        .read(|ctx| {
            Ok(Value::Array(
                ctx.query("notes", "by_topic_seq")
                    .eq("topic", "w")
                    .take(5)?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(
        rows,
        Value::Array(vec![]),
        "a failed mutation writes nothing"
    );
    let e = engine
        .read(|ctx| ctx.full_table_scan("notes", 3).map(Value::Array))
        .await
        .unwrap_err();
    assert_eq!(e.code, "VALIDATION_ERROR");
}

/// `bytesWritten` counts index keys too, which go into the log record with the document: a
/// transaction within the limit stays far below the record cap whatever its indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_written_limit_counts_index_keys() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open_with(dir.path(), |c| c.limits.max_bytes_written = 3_000);
    let insert = |topic: String| {
        engine.transact(move |ctx| {
            ctx.insert("members", obj! {"topic" => topic.clone(), "user" => "u"})?;
            Ok(Value::Null)
        })
    };
    // ~2,000 bytes of document, as much again in its `by_topic_user` key.
    let e = insert("t".repeat(2_000)).await.unwrap_err();
    assert_eq!(e.code, "VALIDATION_ERROR");
    assert!(e.message.contains("bytesWritten"), "{e}");
    insert("t".repeat(1_000)).await.unwrap();
}

/// `bytesRead` counts each document's stored (encoded) length, whether the read finds it in a
/// memtable, the document cache or redb after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_read_limit_counts_stored_documents_from_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let mut config = query_engine::engine::EngineConfig::default();
        // Each note below is a little over 1,000 bytes encoded: 4 fit, 5 do not.
        config.limits.max_bytes_read = 4_500;
        query_engine::engine::Engine::open(
            &dir.path().join("db"),
            common::schema(),
            common::functions(),
            config,
        )
        .unwrap()
    };
    let read = |engine: &query_engine::engine::Engine, limit: i64| {
        let engine = engine.clone();
        async move {
            engine
                .query(
                    "notesAfter",
                    obj! {"topic" => "t", "after" => -1i64, "limit" => limit},
                    None,
                )
                .await
        }
    };
    let engine = open();
    for seq in 0..8i64 {
        engine
            .mutation(
                "addNote",
                obj! {"topic" => "t", "seq" => seq, "text" => "x".repeat(1_000)},
                None,
            )
            .await
            .unwrap();
    }
    let check = |engine: query_engine::engine::Engine| async move {
        assert!(read(&engine, 4).await.is_ok());
        let e = read(&engine, 5).await.unwrap_err();
        assert_eq!(e.code, "VALIDATION_ERROR");
        assert!(e.message.contains("bytesRead"), "{}", e.message);
        engine
    };
    // Just written: from the memtables (or the cache, once applied).
    let engine = check(engine).await;
    // Reopened: from redb.
    common::close(engine, std::time::Duration::from_secs(30)).await;
    check(open()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_restart_and_ids_are_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let first_id;
    {
        let engine = common::open(dir.path());
        first_id = engine
            .mutation("createCounter", obj! {"name" => "a"}, None)
            .await
            .unwrap()
            .value;
        engine
            .mutation("increment", obj! {"name" => "a"}, None)
            .await
            .unwrap();
        common::close(engine, std::time::Duration::from_secs(30)).await;
    }
    let engine = query_engine::engine::Engine::open(
        &dir.path().join("db.redb"),
        common::schema(),
        common::functions(),
        Default::default(),
    )
    .unwrap();
    let v = engine
        .query("getCounter", obj! {"name" => "a"}, None)
        .await
        .unwrap();
    assert_eq!(v.value.get_path("value"), Some(&Value::Int64(1)));
    let second = engine
        .mutation("createCounter", obj! {"name" => "b"}, None)
        .await
        .unwrap()
        .value;
    assert_ne!(first_id, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_functions_are_not_public() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open(dir.path());
    let e = engine
        .public_function(
            "internalOnly",
            query_engine::functions::FunctionKind::Mutation,
        )
        .err()
        .unwrap();
    assert_eq!(e.code, "NOT_FOUND");
    assert!(engine.mutation("internalOnly", obj! {}, None).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_table_scans_stay_in_their_table() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open(dir.path());
    for n in ["a", "b"] {
        engine
            .mutation("createCounter", obj! {"name" => n}, None)
            .await
            .unwrap();
    }
    engine
        .mutation(
            "addNote",
            obj! {"topic" => "t", "seq" => 1i64, "text" => "x"},
            None,
        )
        .await
        .unwrap();
    let rows = engine
        .read(|ctx| ctx.full_table_scan("counters", 10).map(Value::Array))
        .await
        .unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    let notes = engine
        .read(|ctx| ctx.full_table_scan("notes", 10).map(Value::Array))
        .await
        .unwrap();
    assert_eq!(notes.as_array().unwrap().len(), 1);
}

/// Admission control: with one pending commit allowed, each increment executes only after the
/// previous one committed, so it reads the latest state and never conflicts; with the default
/// bound the same burst conflicts (and is re-executed by the committer). Either way the count
/// is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_makes_queued_mutations_read_fresh_state() {
    use std::sync::atomic::Ordering;
    for (pending, expect_conflicts) in [(1usize, false), (256, true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = query_engine::engine::EngineConfig::default();
        config.committer.durable = false;
        config.max_pending_commits = pending;
        let engine = query_engine::engine::Engine::open(
            &dir.path().join("db.redb"),
            common::schema(),
            common::functions(),
            config,
        )
        .unwrap();
        engine
            .mutation("createCounter", obj! {"name" => "c"}, None)
            .await
            .unwrap();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        engine
                            .mutation("increment", obj! {"name" => "c"}, None)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let v = engine
            .query("getCounter", obj! {"name" => "c"}, None)
            .await
            .unwrap()
            .value;
        assert_eq!(v.get_path("value"), Some(&Value::Int64(640)));
        let conflicts = engine.metrics().conflicts.load(Ordering::Relaxed);
        assert_eq!(
            conflicts > 0,
            expect_conflicts,
            "pending {pending}: {conflicts} conflicts"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_open_elsewhere_is_reported_as_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open(dir.path());
    let second = query_engine::engine::Engine::open(
        &dir.path().join("db.redb"),
        common::schema(),
        common::functions(),
        Default::default(),
    );
    match second {
        Err(query_engine::engine::OpenError::Storage(
            query_engine::storage::StorageError::InUse(path),
        )) => assert!(path.ends_with("db.redb"), "{path}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened twice"),
    }
    drop(engine);
}

/// A mutation's `FailureRecorder` runs after its handler fails, in a transaction of its own
/// with the caller's identity: its writes commit although the call's do not, the caller gets
/// the handler's error, and a call that succeeds records nothing. A recorder that fails
/// itself changes nothing of that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_recorder_commits_what_a_failed_call_leaves_behind() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open_fast(dir.path());
    let alice = common::identity("alice");
    let create = |name: &str| {
        let engine = engine.clone();
        let args = obj! { "name" => name };
        async move { engine.mutation("createCounter", args, None).await.unwrap() }
    };
    let value = |name: &str| {
        let engine = engine.clone();
        let args = obj! { "name" => name };
        async move {
            let c = engine.query("getCounter", args, None).await.unwrap();
            c.value.get_path("value").and_then(Value::as_i64).unwrap()
        }
    };
    let decrement = |who: Option<&query_engine::identity::Identity>| {
        let engine = engine.clone();
        let who = who.cloned();
        async move {
            engine
                .mutation("decrement", obj! { "name" => "a" }, who.as_ref())
                .await
        }
    };
    create("a").await;

    // The recorder's own failure (no counter to count in) leaves the call's error as it was.
    let e = decrement(Some(&alice)).await.unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.message.as_str()),
        ("CONFLICT", "a is at zero")
    );

    create("failures of alice").await;
    create("failures of nobody").await;
    let e = decrement(Some(&alice)).await.unwrap_err();
    assert_eq!(e.code, "CONFLICT");
    assert_eq!(
        value("a").await,
        0,
        "the refused call's write did not commit"
    );
    assert_eq!(value("failures of alice").await, 1);
    decrement(None).await.unwrap_err();
    assert_eq!(value("failures of nobody").await, 1);

    engine
        .mutation("increment", obj! { "name" => "a" }, None)
        .await
        .unwrap();
    assert_eq!(
        decrement(Some(&alice)).await.unwrap().value,
        Value::Int64(0)
    );
    assert_eq!(
        value("failures of alice").await,
        1,
        "a success records nothing"
    );
}
