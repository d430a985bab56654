//! Index work a schema push leaves behind, started when the engine opens: backfilling the
//! indexes new to a table that has documents, and purging the entries of indexes that left
//! the schema or changed their fields (their numbers are retired, see `catalog.rs`).
//!
//! Both run in chunks at the committer on the latest state, so neither races with writes,
//! resting after each chunk as long as it took, so they take at most about half of the
//! committer's time and a live commit waits behind one chunk at a time, not a run of them:
//! live writes maintain a backfilling index themselves, and nothing writes or reads a retired
//! number any more. Each records its end in the persisted numbering (an index becomes ready,
//! a retired number is forgotten); one interrupted by a shutdown or a crash starts over at the
//! next open, which is safe because each chunk is idempotent. A backfilled index becomes
//! ready by a commit after its last chunk (`CatalogChange::IndexReady`), so readiness holds
//! from a timestamp on and never for a snapshot that lacks some of its entries.

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::catalog::{CatalogChange, IndexId, IndexState};
use crate::encoding::prefix_successor;
use crate::engine::Engine;
use crate::error::FunctionError;
use crate::id::DocumentId;
use crate::obj;
use crate::transaction::{index_key, Order, Transaction};
use crate::value::Value;

/// Rests as long as the chunk started at `started` took; false if the engine is shutting
/// down (before or during the rest).
async fn rest_after(started: Instant, shutdown: &mut watch::Receiver<bool>) -> bool {
    let rest = tokio::time::sleep(started.elapsed());
    // `wait_for` is ready at once when the engine is already shutting down (or gone).
    tokio::select! {
        biased;
        _ = shutdown.wait_for(|stop| *stop) => false,
        _ = rest => true,
    }
}

/// Documents indexed per backfill commit.
const BACKFILL_CHUNK: usize = 512;
/// Most entries deleted per purge commit.
const PURGE_CHUNK: usize = 4_096;
/// Entries the first purge commit reads; later ones read as many as the key bytes allow.
const FIRST_PURGE_CHUNK: usize = 16;
/// Most key bytes one purge commit deletes (less if the log's record is smaller): keys are up
/// to twice the document size, so `PURGE_CHUNK` of them could exceed a log record, and a purge
/// whose commit is refused never finishes.
const PURGE_CHUNK_BYTES: usize = 8 << 20;

/// Spawns the backfill of every `Backfilling` index and the purge of every retired index
/// number.
pub(crate) fn start(engine: &Engine, rt: &Handle) {
    let catalog = engine.catalog();
    for t in catalog.tables() {
        for i in t.indexes.iter() {
            if i.state == IndexState::Backfilling {
                rt.spawn(backfill(engine.clone(), t.name.clone(), i.name.clone()));
            }
        }
    }
    for id in engine.dropped_indexes() {
        rt.spawn(purge(engine.clone(), id));
    }
}

/// Builds a new index over existing documents, a chunk per commit in id order, then makes it
/// ready.
async fn backfill(engine: Engine, table: String, index: String) {
    let mut shutdown = engine.shutdown_signal();
    let mut backfill = Backfill::new(engine, table, index, BACKFILL_CHUNK);
    loop {
        let started = Instant::now();
        match backfill.step().await {
            Progress::More if !rest_after(started, &mut shutdown).await => return,
            Progress::More => {}
            Progress::Done => break,
            Progress::Stopped => return,
        }
    }
    backfill.finish().await;
}

/// Whether `e` is a call's read limit (`documentsRead`, `bytesRead`) being exceeded.
fn is_read_limit(e: &FunctionError) -> bool {
    matches!(
        e.data.get_path("limit").and_then(Value::as_str),
        Some("bytesRead" | "documentsRead")
    )
}

/// A backfill under way: a cursor over its table's documents in id order.
struct Backfill {
    engine: Engine,
    table: String,
    index: String,
    /// The last document indexed so far.
    after: Option<DocumentId>,
    /// Documents the next chunk reads: halved while a chunk exceeds the per-call read limits
    /// (large documents: 17 of 1 MiB pass the 16 MiB `maxBytesRead`), doubled back up to
    /// `max_chunk_docs` after each chunk that fits.
    chunk_docs: usize,
    max_chunk_docs: usize,
}

/// What a backfill step left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    /// Documents may be left to index.
    More,
    /// Every document is indexed (a chunk found none left).
    Done,
    /// The backfill cannot go on (logged); it starts over at the next open.
    Stopped,
}

impl Backfill {
    fn new(engine: Engine, table: String, index: String, chunk_docs: usize) -> Self {
        Backfill {
            engine,
            table,
            index,
            after: None,
            chunk_docs,
            max_chunk_docs: chunk_docs,
        }
    }

    /// Indexes the next `chunk_docs` documents in one commit at the committer.
    async fn step(&mut self) -> Progress {
        let (t2, i2) = (self.table.clone(), self.index.clone());
        let (start, chunk_docs) = (self.after, self.chunk_docs);
        let body = move |txn: &mut Transaction<'_>| {
            let catalog = std::sync::Arc::new(txn.catalog().clone());
            let t = catalog
                .table(&t2)
                .ok_or_else(|| FunctionError::internal("table gone"))?;
            let idx = t
                .index(&i2)
                .ok_or_else(|| FunctionError::internal("index gone"))?
                .clone();
            let mut from = t.number.0.to_be_bytes().to_vec();
            if let Some(a) = start {
                from = a.to_bytes().to_vec();
                from.push(0);
            }
            let end = (t.number.0 as u64 + 1).to_be_bytes()[4..].to_vec();
            let end = if t.number.0 == u32::MAX {
                None
            } else {
                Some(end)
            };
            let mut by_id = t.by_id().clone();
            by_id.state = IndexState::Ready;
            let rows = txn.range(t, &by_id, from, end, Order::Asc, chunk_docs)?;
            let mut last = None;
            for r in &rows {
                let id = DocumentId::from_bytes(&r.key)
                    .ok_or_else(|| FunctionError::internal("bad id"))?;
                let key = index_key(&idx, &r.doc, &id.to_bytes());
                txn.writes
                    .index_entries
                    .insert(crate::writes::storage_key(idx.id, &key), true);
                last = Some(id);
            }
            Ok(last
                .map(|l| Value::String(l.to_string()))
                .unwrap_or(Value::Null))
        };
        match self.engine.run_at_committer(Box::new(body)).await {
            Some(Ok(c)) => match c.value {
                Value::String(s) => match DocumentId::parse(&s) {
                    Ok(id) => {
                        self.after = Some(id);
                        self.chunk_docs = (self.chunk_docs * 2).min(self.max_chunk_docs);
                        Progress::More
                    }
                    Err(_) => Progress::Stopped,
                },
                _ => Progress::Done,
            },
            // One document always fits (the read limits are above the document size limit).
            Some(Err(e)) if is_read_limit(&e) && self.chunk_docs > 1 => {
                self.chunk_docs /= 2;
                Progress::More
            }
            Some(Err(e)) => {
                tracing::error!(table = %self.table, index = %self.index, error = %e, "backfill failed");
                Progress::Stopped
            }
            None => Progress::Stopped,
        }
    }

    /// Makes the index ready: durably in the numbering, then by a commit of its own, so a
    /// reader at a snapshot from before the last chunk never takes the index as ready.
    async fn finish(self) {
        let key = format!("{}.{}", self.table, self.index);
        let recorded = self.engine.update_numbering(|n| {
            n.index_states.insert(key.clone(), IndexState::Ready);
        });
        if let Err(e) = recorded {
            tracing::error!(index = %key, error = %e, "cannot record index as ready");
            return;
        }
        let Some(id) = self
            .engine
            .catalog()
            .table(&self.table)
            .and_then(|t| t.index(&self.index))
            .map(|i| i.id)
        else {
            return;
        };
        match self
            .engine
            .commit_catalog_change(CatalogChange::IndexReady(id))
            .await
        {
            Some(Ok(c)) => tracing::info!(index = %key, ts = c.ts, "index backfilled and ready"),
            Some(Err(e)) => tracing::error!(index = %key, error = %e, "cannot make index ready"),
            None => {}
        }
    }
}

/// Deletes every entry stored under the retired index number `id`, a chunk per commit, then
/// forgets the number.
async fn purge(engine: Engine, id: IndexId) {
    let start = id.0.to_be_bytes().to_vec();
    let end = prefix_successor(&start);
    let mut purged = 0usize;
    let mut shutdown = engine.shutdown_signal();
    let max_bytes = PURGE_CHUNK_BYTES.min(engine.max_record_bytes() / 4).max(1);
    let mut chunk = FIRST_PURGE_CHUNK;
    loop {
        let started = Instant::now();
        let (s, e) = (start.clone(), end.clone());
        let body = move |txn: &mut Transaction<'_>| {
            let keys = txn.merged_index_keys(&s, e.as_deref(), false, chunk)?;
            // At least one key, then as many as fit in `max_bytes`.
            let (mut n, mut bytes) = (0usize, 0usize);
            for k in keys {
                if n > 0 && bytes + k.len() > max_bytes {
                    break;
                }
                bytes += k.len();
                n += 1;
                txn.writes.index_entries.insert(k, false);
            }
            Ok(obj! { "n" => n as i64, "bytes" => bytes as i64 })
        };
        match engine.run_at_committer(Box::new(body)).await {
            Some(Ok(c)) => {
                let field = |f| c.value.get_path(f).and_then(Value::as_i64).unwrap_or(0) as usize;
                let (n, bytes) = (field("n"), field("bytes"));
                if n == 0 {
                    break;
                }
                purged += n;
                // The next chunk sized by these keys' mean length.
                chunk = (max_bytes / (bytes / n).max(1)).clamp(1, PURGE_CHUNK);
            }
            Some(Err(e)) => {
                tracing::error!(index = id.0, error = %e, "purge of a dropped index failed");
                return;
            }
            None => return,
        }
        if !rest_after(started, &mut shutdown).await {
            return;
        }
    }
    let forgotten = engine.update_numbering(|n| n.dropped_indexes.retain(|d| *d != id));
    match forgotten {
        Ok(()) => tracing::info!(index = id.0, entries = purged, "dropped index purged"),
        Err(e) => tracing::error!(index = id.0, error = %e, "cannot record index as purged"),
    }
}

#[cfg(test)]
mod tests {
    //! What a subscriber sees across an index backfill equals a fresh query at the same
    //! timestamp. The engines here are opened outside a tokio runtime, so no backfill starts by
    //! itself: each test drives it, in chunks, between its own reads and writes.

    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::diff::apply;
    use crate::engine::EngineConfig;
    use crate::error::FunctionResult;
    use crate::functions::{Functions, Handler, Visibility};
    use crate::obj;
    use crate::schema::{v, SchemaDefinition, TableDefinition};
    use crate::storage::Snapshot;
    use crate::subscriptions::{
        ClientSession, QueryUpdate, SubscriptionConfig, SubscriptionManager,
    };

    /// A safety net against a hung test, not a timing assertion.
    const HANG: Duration = Duration::from_secs(60);

    /// Holds `byA`'s next access check between two rendezvous with the test, once armed.
    struct Pause {
        armed: AtomicBool,
        barrier: Barrier,
    }

    fn schema(indexed: bool) -> SchemaDefinition {
        let t = TableDefinition::new("t", v::object([("a", v::int64())]));
        SchemaDefinition::new().table(if indexed { t.index("by_a", &["a"]) } else { t })
    }

    #[derive(serde::Deserialize)]
    struct ByA {
        tolerant: bool,
    }

    /// `byA`: the documents through `by_a`; `tolerant` answers null while the index cannot be
    /// read, instead of failing. `truth`: the same documents through `by_creation_time`, in
    /// the index's order.
    fn functions(pause: Arc<Pause>) -> Functions {
        let mut f = Functions::new();
        f.shared_query(
            "byA",
            v::object([("tolerant", v::boolean())]),
            v::any(),
            move |_, _: ByA| {
                if pause.armed.swap(false, Ordering::SeqCst) {
                    pause.barrier.wait();
                    pause.barrier.wait();
                }
                Ok(())
            },
            |ctx, a: ByA| match ctx.query("t", "by_a").collect(1_000) {
                Ok(rows) => Ok(Value::Array(rows)),
                Err(e) if a.tolerant && e.message.contains("backfilling") => Ok(Value::Null),
                Err(e) => Err(e),
            },
        );
        f.query(
            "truth",
            Visibility::Public,
            v::object([]),
            v::any(),
            |ctx, _: Value| {
                let mut rows = ctx.query("t", "by_creation_time").collect(1_000)?;
                let key = |d: &Value| {
                    let a = d.get_path("a").and_then(Value::as_i64);
                    let id = d
                        .get_path("_id")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    (a, id)
                };
                rows.sort_by_key(key);
                Ok(Value::Array(rows))
            },
        );
        f
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Must be called outside the runtime: inside it the engine would start the backfill.
    fn open(dir: &Path, indexed: bool, pause: Arc<Pause>) -> Engine {
        let config = EngineConfig {
            run_scheduler: false,
            ..EngineConfig::default()
        };
        Engine::open(
            &dir.join("db.redb"),
            schema(indexed),
            functions(pause),
            config,
        )
        .expect("open")
    }

    fn unpaused() -> Arc<Pause> {
        Arc::new(Pause {
            armed: AtomicBool::new(false),
            barrier: Barrier::new(2),
        })
    }

    async fn insert(engine: &Engine, a: i64) -> String {
        let id = engine
            .transact(move |ctx| ctx.insert("t", obj! {"a" => a}).map(Value::from))
            .await
            .expect("insert");
        id.as_str().expect("id").to_string()
    }

    /// A database whose table `t` holds a document per value of `values`, then opened with the
    /// new index `by_a` (backfilling, not started) and the ids of those documents.
    fn pushed_index(dir: &Path, rt: &tokio::runtime::Runtime, values: &[i64]) -> Vec<String> {
        let engine = open(dir, false, unpaused());
        let mut ids = Vec::new();
        for a in values {
            ids.push(rt.block_on(insert(&engine, *a)));
        }
        assert!(engine.close(HANG), "database closed");
        ids
    }

    /// A chunk whose documents exceed the per-call read limit is retried smaller, down to one
    /// document, so the backfill finishes: before, it stopped there for good and the index
    /// stayed unreadable (17 documents of 1 MiB in a chunk pass the 16 MiB limit; here the
    /// limit is made small instead).
    #[test]
    fn a_backfill_over_more_bytes_than_a_call_may_read_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let values: Vec<i64> = (0..20).collect();
        pushed_index(dir.path(), &rt, &values);
        let config = EngineConfig {
            run_scheduler: false,
            limits: crate::transaction::Limits {
                max_bytes_read: 200,
                ..crate::transaction::Limits::default()
            },
            ..EngineConfig::default()
        };
        let engine = Engine::open(
            &dir.path().join("db.redb"),
            schema(true),
            functions(unpaused()),
            config,
        )
        .expect("open");
        rt.block_on(async {
            let mut b = Backfill::new(engine.clone(), "t".into(), "by_a".into(), BACKFILL_CHUNK);
            loop {
                match tokio::time::timeout(HANG, b.step()).await.expect("a step") {
                    Progress::More => {}
                    Progress::Done => break,
                    Progress::Stopped => panic!("the backfill stopped"),
                }
            }
            b.finish().await;
        });
        assert_eq!(engine.index_work_pending(), 0);
        let indexed = rt
            .block_on(engine.read(|ctx| {
                let rows = ctx.query("t", "by_a").take(2)?;
                Ok(Value::Array(rows))
            }))
            .expect("the index reads");
        assert_eq!(indexed.as_array().map(<[Value]>::len), Some(2));
        assert!(engine.close(HANG), "database closed");
    }

    /// A dropped index's entries are purged in commits that fit the log's record: before,
    /// a chunk of 4,096 keys over the record limit was refused, and the purge never finished
    /// (keys are up to twice the document size; here the record is made small instead).
    #[test]
    fn a_purge_fits_its_commits_in_a_log_record() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        {
            let engine = open(dir.path(), true, unpaused());
            for a in 0..300 {
                rt.block_on(insert(&engine, a));
            }
            assert!(engine.close(HANG), "database closed");
        }
        let mut config = EngineConfig {
            run_scheduler: false,
            ..EngineConfig::default()
        };
        config.storage.max_record_bytes = 4096;
        let engine = Engine::open(
            &dir.path().join("db.redb"),
            schema(false),
            functions(unpaused()),
            config,
        )
        .expect("open");
        let dropped = engine.dropped_indexes();
        assert_eq!(dropped.len(), 1);
        for id in dropped {
            rt.block_on(async { tokio::time::timeout(HANG, purge(engine.clone(), id)).await })
                .expect("the purge ends");
        }
        assert_eq!(engine.index_work_pending(), 0);
        assert!(engine.close(HANG), "database closed");
    }

    /// The registered query `name` run at `snapshot`, as a fresh query at its timestamp.
    fn query_at(
        engine: &Engine,
        snapshot: &Snapshot,
        name: &str,
        args: Value,
    ) -> FunctionResult<Value> {
        let def = engine.functions().get(name).expect("registered").clone();
        let Handler::Query(h) = &def.handler else {
            panic!("{name} is not a query");
        };
        engine.run_query_at(snapshot, h, args, None).0
    }

    /// The subscriptions of one session as its client sees them: per query id, the value or
    /// the error that ended it.
    #[derive(Default)]
    struct View {
        queries: HashMap<u32, Result<Value, FunctionError>>,
        ts: u64,
    }

    impl View {
        async fn catch_up(&mut self, s: &ClientSession, ts: u64) {
            s.sync_to(ts).await;
            while self.ts < ts {
                let t = tokio::time::timeout(HANG, s.next_transition())
                    .await
                    .expect("a transition")
                    .expect("session open");
                for u in &t.updates {
                    match u {
                        QueryUpdate::Updated { query_id, diff, .. } => {
                            let old = match self.queries.get(query_id) {
                                Some(Ok(v)) => v.clone(),
                                _ => Value::Null,
                            };
                            let new = apply(&old, diff).expect("diff applies");
                            self.queries.insert(*query_id, Ok(new));
                        }
                        QueryUpdate::Failed { query_id, error } => {
                            self.queries.insert(*query_id, Err(error.clone()));
                        }
                        QueryUpdate::Removed { query_id } => {
                            self.queries.remove(query_id);
                        }
                    }
                }
                self.ts = t.end_ts;
            }
        }
    }

    /// The subscription to `byA` starts at the worker's snapshot from before the backfill, and
    /// its body runs only after the whole backfill and the ready flip (its access check holds
    /// it): the race of a subscription made in the instant the index turns ready.
    fn subscribe_while_the_index_turns_ready(tolerant: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime();
        let values: Vec<i64> = (0..20).map(|i| (i * 7) % 5).collect();
        pushed_index(dir.path(), &rt, &values);
        let pause = unpaused();
        let engine = open(dir.path(), true, pause.clone());
        assert_eq!(engine.index_work_pending(), 1);
        let manager = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
        let session = Arc::new(rt.block_on(manager.connect(None)));
        // Keeps the session subscribed whatever happens to `byA`.
        rt.block_on(session.subscribe(2, "truth", obj! {}))
            .expect("subscribed");
        let before = engine.snapshot();

        pause.armed.store(true, Ordering::SeqCst);
        let s = session.clone();
        let subscribed =
            rt.spawn(async move { s.subscribe(1, "byA", obj! {"tolerant" => tolerant}).await });
        pause.barrier.wait();
        rt.block_on(backfill(engine.clone(), "t".into(), "by_a".into()));
        assert_eq!(engine.index_work_pending(), 0, "backfilled and ready");
        pause.barrier.wait();
        rt.block_on(subscribed).expect("task").expect("subscribed");

        let latest = engine.snapshot();
        let mut view = View::default();
        rt.block_on(view.catch_up(&session, latest.ts));
        let args = obj! {"tolerant" => tolerant};
        let fresh = query_at(&engine, &latest, "byA", args.clone()).expect("ready now");
        assert_eq!(fresh.as_array().map(<[Value]>::len), Some(values.len()));
        assert_eq!(
            fresh,
            query_at(&engine, &latest, "truth", obj! {}).expect("truth")
        );
        match &view.queries[&1] {
            Ok(seen) => assert_eq!(
                seen, &fresh,
                "the subscriber at {} sees what a fresh query there does",
                latest.ts
            ),
            // Ended at the worker's snapshot, `before`, where the index could not be read yet;
            // so does a fresh query there.
            Err(e) => {
                assert!(!tolerant, "{e}");
                assert_eq!(query_at(&engine, &before, "byA", args).as_ref(), Err(e));
            }
        }
    }

    #[test]
    fn a_subscription_made_as_the_index_turns_ready_is_not_left_with_a_partial_result() {
        subscribe_while_the_index_turns_ready(false);
    }

    #[test]
    fn a_subscription_that_did_without_a_backfilling_index_reruns_when_it_is_ready() {
        subscribe_while_the_index_turns_ready(true);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(i64),
        Patch(usize, i64),
        Delete(usize),
        /// The backfill's next chunk (two documents), or its end once none are left.
        Chunk,
        /// Keep the current snapshot, to query at it after the backfill.
        Hold,
        /// Subscribe to `byA` (tolerant).
        Subscribe,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..6i64).prop_map(Op::Insert),
            (any::<usize>(), 0..6i64).prop_map(|(i, a)| Op::Patch(i, a)),
            any::<usize>().prop_map(Op::Delete),
            Just(Op::Chunk),
            Just(Op::Chunk),
            Just(Op::Hold),
            Just(Op::Subscribe),
        ]
    }

    /// Runs `ops` against a database whose table held `seed` when `by_a` was added, driving
    /// the backfill two documents a chunk; then checks that every held snapshot reads `by_a`
    /// either not at all or exactly as `truth`, and every subscriber sees a fresh query.
    fn backfill_interleaved(seed: Vec<i64>, ops: Vec<Op>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime();
        let mut ids = pushed_index(dir.path(), &rt, &seed);
        let engine = open(dir.path(), true, unpaused());
        let manager = SubscriptionManager::new(engine.clone(), SubscriptionConfig::default());
        let session = rt.block_on(manager.connect(None));
        rt.block_on(session.subscribe(0, "truth", obj! {}))
            .expect("subscribed");
        let mut backfill = Backfill::new(engine.clone(), "t".into(), "by_a".into(), 2);
        let mut done = false;
        let mut held = vec![engine.snapshot()];
        let mut subs = 0u32;
        for op in ops {
            match op {
                Op::Insert(a) => ids.push(rt.block_on(insert(&engine, a))),
                Op::Patch(_, _) | Op::Delete(_) if ids.is_empty() => {}
                Op::Patch(i, a) => {
                    let id = ids[i % ids.len()].clone();
                    rt.block_on(engine.transact(move |ctx| {
                        let mut o = crate::value::Object::new();
                        o.insert("a".into(), Value::Int64(a));
                        ctx.patch("t", &id, o).map(|_| Value::Null)
                    }))
                    .expect("patch");
                }
                Op::Delete(i) => {
                    let id = ids.swap_remove(i % ids.len());
                    rt.block_on(
                        engine.transact(move |ctx| ctx.delete("t", &id).map(|_| Value::Null)),
                    )
                    .expect("delete");
                }
                Op::Chunk if done => {}
                Op::Chunk => match rt.block_on(backfill.step()) {
                    Progress::More => {}
                    Progress::Done => done = true,
                    Progress::Stopped => panic!("backfill stopped"),
                },
                Op::Hold => held.push(engine.snapshot()),
                Op::Subscribe => {
                    subs += 1;
                    rt.block_on(session.subscribe(subs, "byA", obj! {"tolerant" => true}))
                        .expect("subscribed");
                }
            }
        }
        while !done {
            match rt.block_on(backfill.step()) {
                Progress::More => {}
                Progress::Done => done = true,
                Progress::Stopped => panic!("backfill stopped"),
            }
        }
        rt.block_on(backfill.finish());
        assert_eq!(engine.index_work_pending(), 0);
        let latest = engine.snapshot();
        held.push(latest.clone());

        let strict = || obj! {"tolerant" => false};
        for s in &held {
            let truth = query_at(&engine, s, "truth", obj! {}).expect("truth");
            match query_at(&engine, s, "byA", strict()) {
                Ok(rows) => assert_eq!(rows, truth, "by_a read at {}", s.ts),
                Err(e) => assert!(e.message.contains("backfilling"), "{e}"),
            }
        }
        let fresh = query_at(&engine, &latest, "byA", strict()).expect("ready");
        let mut view = View::default();
        rt.block_on(view.catch_up(&session, latest.ts));
        for q in 1..=subs {
            assert_eq!(
                view.queries.get(&q).map(Result::as_ref),
                Some(Ok(&fresh)),
                "subscription {q} at {}",
                latest.ts
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn subscribers_see_fresh_queries_across_a_backfill(
            seed in proptest::collection::vec(0..6i64, 0..8),
            ops in proptest::collection::vec(op(), 0..24),
        ) {
            backfill_interleaved(seed, ops);
        }
    }
}
