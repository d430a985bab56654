//! Schema pushes on reopen: a schema the stored documents violate is refused (naming them) and
//! changes nothing; dropping a non-empty table is refused; a new index on a populated table
//! is unreadable while it backfills and then complete, including writes made during the
//! backfill; an index dropped from the schema has its entries purged, and one re-added or
//! redefined under the same name is rebuilt rather than served from stale entries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use query_engine::engine::{Engine, EngineConfig, OpenError};
use query_engine::error::FunctionError;
use query_engine::functions::Functions;
use query_engine::obj;
use query_engine::schema::{v, SchemaDefinition, TableDefinition};
use query_engine::value::{Object, Value};

const EVENTUALLY: Duration = Duration::from_secs(20);

fn things(n: query_engine::schema::Validator) -> TableDefinition {
    TableDefinition::new("things", v::object([("name", v::string()), ("n", n)]))
}

fn scratch() -> TableDefinition {
    TableDefinition::new("scratch", v::object([("x", v::int64())]))
}

fn config() -> EngineConfig {
    EngineConfig {
        run_scheduler: false,
        ..EngineConfig::default()
    }
}

/// Opens `dir/db.redb` with `schema`, retrying while a previous engine still holds the file.
async fn open(dir: &Path, schema: SchemaDefinition) -> Result<Engine, OpenError> {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        match Engine::open(
            &dir.join("db.redb"),
            schema.clone(),
            Functions::new(),
            config(),
        ) {
            Err(OpenError::Storage(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Every document of `table` in id order, page by page.
async fn scan(engine: &Engine, table: &'static str) -> Vec<Value> {
    let mut cursor: Option<String> = None;
    let mut out = Vec::new();
    loop {
        let c = cursor.clone();
        let page = engine
            .read(move |ctx| {
                let p = ctx.query(table, "by_id").paginate(c.as_deref(), 1_000)?;
                query_engine::json::to_value(&p).map_err(|e| FunctionError::internal(e.to_string()))
            })
            .await
            .unwrap();
        let p: query_engine::context::Page = query_engine::json::from_value(&page).unwrap();
        out.extend(p.page);
        if p.is_done {
            return out;
        }
        cursor = p.continue_cursor;
    }
}

fn id_of(doc: &Value) -> String {
    doc.get_path("_id")
        .and_then(Value::as_str)
        .unwrap()
        .to_string()
}

/// The `n` of each document of an array result.
fn ns(rows: &Value) -> Vec<i64> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|d| i64_of(d, "n"))
        .collect()
}

fn i64_of(doc: &Value, f: &str) -> i64 {
    doc.get_path(f).and_then(Value::as_i64).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_violated_by_data_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = SchemaDefinition::new()
        .table(things(v::optional(v::int64())))
        .table(scratch());
    let engine = open(dir.path(), v1.clone()).await.unwrap();
    let without_n = engine
        .transact(|ctx| {
            let mut ids = Vec::new();
            for i in 0..8i64 {
                let doc = if i % 3 == 1 {
                    obj! {"name" => format!("t{i}")}
                } else {
                    obj! {"name" => format!("t{i}"), "n" => i}
                };
                let id = ctx.insert("things", doc)?;
                if i % 3 == 1 {
                    ids.push(Value::String(id));
                }
            }
            Ok(Value::Array(ids))
        })
        .await
        .unwrap();
    let expected: BTreeSet<String> = without_n
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(expected.len(), 3);
    let before = scan(&engine, "things").await;
    engine.shutdown();
    drop(engine);

    // `n` becomes required: the three documents without it are named.
    let v2 = SchemaDefinition::new()
        .table(things(v::int64()))
        .table(scratch());
    match open(dir.path(), v2).await {
        Err(OpenError::DataViolatesSchema { table, ids, first }) => {
            assert_eq!(table, "things");
            assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);
            assert!(first.contains('n'), "{first}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a schema the data violates was accepted"),
    }
    // Nothing changed: the old schema still opens and every document is as it was.
    let engine = open(dir.path(), v1).await.unwrap();
    assert_eq!(scan(&engine, "things").await, before);
    // And it still accepts documents without `n`.
    engine
        .transact(|ctx| {
            ctx.insert("things", obj! {"name" => "late"})
                .map(Value::from)
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopen_checks_only_the_tables_whose_validator_changed() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = SchemaDefinition::new()
        .table(things(v::int64()))
        .table(scratch());
    let engine = open(dir.path(), v1.clone()).await.unwrap();
    engine
        .transact(|ctx| {
            for i in 0..5i64 {
                ctx.insert("things", obj! {"name" => format!("t{i}"), "n" => i})?;
            }
            for x in 0..3i64 {
                ctx.insert("scratch", obj! {"x" => x})?;
            }
            Ok(Value::Null)
        })
        .await
        .unwrap();
    let checked = |e: &Engine| e.metrics().open_documents_checked.load(Ordering::Relaxed);
    engine.shutdown();
    drop(engine);

    // The same schema again: nothing to check.
    let engine = open(dir.path(), v1).await.unwrap();
    assert_eq!(checked(&engine), 0);
    engine.shutdown();
    drop(engine);

    // `things.n` loosened: its five documents are checked, `scratch`'s are not.
    let v2 = SchemaDefinition::new()
        .table(things(v::optional(v::int64())))
        .table(scratch());
    let engine = open(dir.path(), v2.clone()).await.unwrap();
    assert_eq!(checked(&engine), 5);
    engine.shutdown();
    drop(engine);
    let engine = open(dir.path(), v2).await.unwrap();
    assert_eq!(checked(&engine), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_non_empty_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = SchemaDefinition::new()
        .table(things(v::optional(v::int64())))
        .table(scratch());
    let engine = open(dir.path(), v1.clone()).await.unwrap();
    engine
        .transact(|ctx| {
            ctx.insert("things", obj! {"name" => "keep"})
                .map(Value::from)
        })
        .await
        .unwrap();
    engine.shutdown();
    drop(engine);

    let without_things = SchemaDefinition::new().table(scratch());
    match open(dir.path(), without_things).await {
        Err(OpenError::TableNotEmpty(t)) => assert_eq!(t, "things"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("dropping a table with documents was accepted"),
    }
    // Dropping the empty table is fine, and the data is still there.
    let without_scratch = SchemaDefinition::new().table(things(v::optional(v::int64())));
    let engine = open(dir.path(), without_scratch).await.unwrap();
    let docs = scan(&engine, "things").await;
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].get_path("name"), Some(&Value::from("keep")));
}

const GROUPS: i64 = 50;
const SEED_DOCS: i64 = 5_000;
const WRITERS: usize = 4;

fn items(indexed: bool) -> SchemaDefinition {
    items_indexed_by(if indexed { &["group", "n"] } else { &[] })
}

/// `items` with `by_group_n` on `fields` (none: without the index).
fn items_indexed_by(fields: &[&str]) -> SchemaDefinition {
    let t = TableDefinition::new(
        "items",
        v::object([("group", v::int64()), ("n", v::int64())]),
    );
    let t = if fields.is_empty() {
        t
    } else {
        t.index("by_group_n", fields)
    };
    SchemaDefinition::new().table(t)
}

/// Reads group `g` through the new index; `Err` while it is backfilling.
async fn group_via_index(engine: &Engine, g: i64) -> Result<Vec<Value>, FunctionError> {
    engine
        .read(move |ctx| {
            ctx.query("items", "by_group_n")
                .eq("group", g)
                .collect(8_000)
                .map(Value::Array)
        })
        .await
        .map(|v| match v {
            Value::Array(a) => a,
            other => panic!("not an array: {other:?}"),
        })
}

/// One writer during the backfill: inserts, patches (moving documents between groups and
/// positions) and deletes among its own share of the seeded ids, until told to stop.
async fn writer(
    engine: Engine,
    w: usize,
    mut ids: Vec<String>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> usize {
    let mut ops = 0usize;
    let mut k = 0i64;
    while !stop.load(Ordering::Relaxed) && ops < 5_000 {
        k += 1;
        let op = k % 3;
        if op == 0 || ids.is_empty() {
            let g = (k * 7 + w as i64) % (GROUPS + 5);
            let id = engine
                .transact(move |ctx| {
                    ctx.insert("items", obj! {"group" => g, "n" => 1_000_000 + k})
                        .map(Value::from)
                })
                .await
                .unwrap();
            ids.push(id.as_str().unwrap().to_string());
        } else if op == 1 {
            let id = ids[(k as usize * 31) % ids.len()].clone();
            engine
                .transact(move |ctx| {
                    let mut o = Object::new();
                    o.insert("n".into(), Value::Int64(-k));
                    o.insert("group".into(), Value::Int64(k % GROUPS));
                    ctx.patch("items", &id, o)?;
                    Ok(Value::Null)
                })
                .await
                .unwrap();
        } else {
            let id = ids.swap_remove((k as usize * 17) % ids.len());
            engine
                .transact(move |ctx| ctx.delete("items", &id).map(|_| Value::Null))
                .await
                .unwrap();
        }
        ops += 1;
        acked.fetch_add(1, Ordering::Relaxed);
    }
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_index_backfills_while_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), items(false)).await.unwrap();
    let mut seeded = Vec::new();
    for chunk in 0..(SEED_DOCS / 500) {
        let ids = engine
            .transact(move |ctx| {
                let mut ids = Vec::new();
                for i in chunk * 500..(chunk + 1) * 500 {
                    ids.push(Value::String(
                        ctx.insert("items", obj! {"group" => i % GROUPS, "n" => i})?,
                    ));
                }
                Ok(Value::Array(ids))
            })
            .await
            .unwrap();
        seeded.extend(
            ids.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string()),
        );
    }
    engine.shutdown();
    drop(engine);

    let engine = open(dir.path(), items(true)).await.unwrap();
    // Straight after the push the index is not readable yet.
    let e = group_via_index(&engine, 0).await.unwrap_err();
    assert_eq!(e.code, "VALIDATION_ERROR");
    assert!(e.message.contains("backfilling"), "{e}");

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let share: Vec<String> = seeded.iter().skip(w).step_by(WRITERS).cloned().collect();
        tasks.push(tokio::spawn(writer(
            engine.clone(),
            w,
            share,
            stop.clone(),
            acked.clone(),
        )));
    }
    let mut during_backfill = 0;
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        // Writes acknowledged before this read are ones made while the index was backfilling
        // if the read still fails.
        let acked_before = acked.load(Ordering::Relaxed);
        match group_via_index(&engine, 0).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code, "VALIDATION_ERROR");
                assert!(e.message.contains("backfilling"), "{e}");
                during_backfill = acked_before;
            }
        }
        assert!(Instant::now() < deadline, "backfill never finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Keep writing a little after the index is ready, then stop and compare.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ops = 0;
    for t in tasks {
        ops += t.await.unwrap();
    }
    eprintln!("{ops} concurrent writes, {during_backfill} of them while the index was backfilling");
    assert!(during_backfill > 0, "no write overlapped the backfill");

    let truth = scan(&engine, "items").await;
    let mut by_group: BTreeMap<i64, Vec<(i64, String)>> = BTreeMap::new();
    for d in &truth {
        by_group
            .entry(i64_of(d, "group"))
            .or_default()
            .push((i64_of(d, "n"), id_of(d)));
    }
    assert!(by_group.len() > GROUPS as usize);
    for (g, mut expected) in by_group {
        let got = group_via_index(&engine, g).await.unwrap();
        let got: Vec<(i64, String)> = got.iter().map(|d| (i64_of(d, "n"), id_of(d))).collect();
        assert!(
            got.windows(2).all(|w| w[0].0 <= w[1].0),
            "group {g} not in n order"
        );
        let mut sorted = got.clone();
        sorted.sort();
        expected.sort();
        assert_eq!(sorted, expected, "group {g}");
    }
    // A range read on the new index: eq + range + take.
    let rows = engine
        .read(|ctx| {
            ctx.query("items", "by_group_n")
                .eq("group", 7i64)
                .gt("n", 100i64)
                .lt("n", 4_000i64)
                .take(10)
                .map(Value::Array)
        })
        .await
        .unwrap();
    let mut expected: Vec<i64> = truth
        .iter()
        .filter(|d| i64_of(d, "group") == 7)
        .map(|d| i64_of(d, "n"))
        .filter(|n| *n > 100 && *n < 4_000)
        .collect();
    expected.sort();
    expected.truncate(10);
    let got = ns(&rows);
    assert_eq!(got, expected);
}

/// Waits until `by_group_n` serves reads (a backfill may be running).
async fn until_readable(engine: &Engine) {
    let deadline = Instant::now() + EVENTUALLY;
    while let Err(e) = group_via_index(engine, 0).await {
        assert!(e.message.contains("backfilling"), "{e}");
        assert!(Instant::now() < deadline, "backfill never finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn by_group_n_id(engine: &Engine) -> query_engine::catalog::IndexId {
    engine
        .catalog()
        .table("items")
        .unwrap()
        .index("by_group_n")
        .unwrap()
        .id
}

/// Whether any entry is stored under index number `id`.
fn has_entries(engine: &Engine, id: query_engine::catalog::IndexId) -> bool {
    let start = id.0.to_be_bytes();
    let end = query_engine::encoding::prefix_successor(&start);
    let snap = engine.snapshot();
    let mut keys = snap.index_keys(&start, end.as_deref(), false).unwrap();
    keys.next().is_some()
}

/// Waits until no entry is left under the retired index number `id`.
async fn until_purged(engine: &Engine, id: query_engine::catalog::IndexId) {
    let deadline = Instant::now() + EVENTUALLY;
    while has_entries(engine, id) {
        assert!(Instant::now() < deadline, "index {} was never purged", id.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn insert_items(engine: &Engine, count: i64) -> Vec<String> {
    let ids = engine
        .transact(move |ctx| {
            let mut ids = Vec::new();
            for i in 0..count {
                ids.push(Value::String(
                    ctx.insert("items", obj! {"group" => i % 10, "n" => i})?,
                ));
            }
            Ok(Value::Array(ids))
        })
        .await
        .unwrap();
    ids.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_index_is_purged_and_rebuilt_when_added_again() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), items(true)).await.unwrap();
    let ids = insert_items(&engine, 300).await;
    let old = by_group_n_id(&engine);
    assert!(has_entries(&engine, old));
    engine.shutdown();
    drop(engine);

    // Without the index: its entries go, and writes meanwhile do not maintain it.
    let engine = open(dir.path(), items(false)).await.unwrap();
    until_purged(&engine, old).await;
    for (k, id) in ids.iter().enumerate() {
        let id = id.clone();
        engine
            .transact(move |ctx| {
                match k % 3 {
                    0 => ctx.delete("items", &id)?,
                    1 => {
                        let mut o = Object::new();
                        o.insert("group".into(), Value::Int64((k as i64 + 1) % 10));
                        ctx.patch("items", &id, o)?
                    }
                    _ => {}
                }
                Ok(Value::Null)
            })
            .await
            .unwrap();
    }
    insert_items(&engine, 50).await;
    engine.shutdown();
    drop(engine);

    // Added again: a new number, backfilled from the documents as they are now.
    let engine = open(dir.path(), items(true)).await.unwrap();
    assert_ne!(by_group_n_id(&engine), old);
    until_readable(&engine).await;
    let truth = scan(&engine, "items").await;
    assert_eq!(truth.len(), 250);
    for g in 0..10 {
        let mut expected: Vec<(i64, String)> = truth
            .iter()
            .filter(|d| i64_of(d, "group") == g)
            .map(|d| (i64_of(d, "n"), id_of(d)))
            .collect();
        expected.sort();
        let got: Vec<(i64, String)> = group_via_index(&engine, g)
            .await
            .unwrap()
            .iter()
            .map(|d| (i64_of(d, "n"), id_of(d)))
            .collect();
        assert_eq!(got, expected, "group {g}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_whose_fields_change_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), items(true)).await.unwrap();
    insert_items(&engine, 200).await;
    let old = by_group_n_id(&engine);
    engine.shutdown();
    drop(engine);

    // Same name, now keyed by `n`: entries keyed by `group` would answer `n = 3` with group 3.
    let engine = open(dir.path(), items_indexed_by(&["n"])).await.unwrap();
    let deadline = Instant::now() + EVENTUALLY;
    let rows = loop {
        let read = engine
            .read(|ctx| {
                ctx.query("items", "by_group_n")
                    .eq("n", 3i64)
                    .collect(100)
                    .map(Value::Array)
            })
            .await;
        match read {
            Ok(rows) => break rows,
            Err(e) => assert!(e.message.contains("backfilling"), "{e}"),
        }
        assert!(Instant::now() < deadline, "backfill never finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let got = ns(&rows);
    assert_eq!(got, vec![3]);
    assert_ne!(by_group_n_id(&engine), old);
    until_purged(&engine, old).await;
}
