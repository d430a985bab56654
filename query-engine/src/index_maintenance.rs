//! Index work a schema push leaves behind, started when the engine opens: backfilling the
//! indexes new to a table that has documents, and purging the entries of indexes that left
//! the schema or changed their fields (their numbers are retired, see `catalog.rs`).
//!
//! Both run in chunks at the committer on the latest state, so neither races with writes:
//! live writes maintain a backfilling index themselves, and nothing writes or reads a retired
//! number any more. Each records its end in the persisted numbering (an index becomes ready,
//! a retired number is forgotten); one interrupted by a shutdown or a crash starts over at the
//! next open, which is safe because each chunk is idempotent.

use tokio::runtime::Handle;

use crate::catalog::{IndexId, IndexState};
use crate::encoding::prefix_successor;
use crate::engine::Engine;
use crate::error::FunctionError;
use crate::id::DocumentId;
use crate::transaction::{index_key, Order, Transaction};
use crate::value::Value;

/// Documents indexed per backfill commit.
const BACKFILL_CHUNK: usize = 512;
/// Entries deleted per purge commit.
const PURGE_CHUNK: usize = 4_096;

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

/// Builds a new index over existing documents, a chunk per commit in id order, then marks it
/// ready.
async fn backfill(engine: Engine, table: String, index: String) {
    let mut after: Option<DocumentId> = None;
    loop {
        let (t2, i2) = (table.clone(), index.clone());
        let start = after;
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
            let rows = txn.range(t, &by_id, from, end, Order::Asc, BACKFILL_CHUNK)?;
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
        match engine.run_at_committer(Box::new(body)).await {
            Some(Ok(c)) => match c.value {
                Value::String(s) => match DocumentId::parse(&s) {
                    Ok(id) => after = Some(id),
                    Err(_) => return,
                },
                _ => break,
            },
            Some(Err(e)) => {
                tracing::error!(table = %table, index = %index, error = %e, "backfill failed");
                return;
            }
            None => return,
        }
        if *engine.shutdown_signal().borrow() {
            return;
        }
    }
    let key = format!("{table}.{index}");
    let recorded = engine.update_numbering(
        |n| {
            n.index_states.insert(key.clone(), IndexState::Ready);
        },
        |n, catalog| {
            if let Some(id) = n.indexes.get(&key) {
                catalog.set_index_state(*id, IndexState::Ready);
            }
        },
    );
    match recorded {
        Ok(()) => tracing::info!(index = %key, "index backfilled and ready"),
        Err(e) => tracing::error!(index = %key, error = %e, "cannot record index as ready"),
    }
}

/// Deletes every entry stored under the retired index number `id`, a chunk per commit, then
/// forgets the number.
async fn purge(engine: Engine, id: IndexId) {
    let start = id.0.to_be_bytes().to_vec();
    let end = prefix_successor(&start);
    let mut purged = 0usize;
    loop {
        let (s, e) = (start.clone(), end.clone());
        let body = move |txn: &mut Transaction<'_>| {
            let keys = txn.merged_index_keys(&s, e.as_deref(), false, PURGE_CHUNK)?;
            let n = keys.len();
            for k in keys {
                txn.writes.index_entries.insert(k, false);
            }
            Ok(Value::Int64(n as i64))
        };
        match engine.run_at_committer(Box::new(body)).await {
            Some(Ok(c)) => match c.value {
                Value::Int64(0) => break,
                Value::Int64(n) => purged += n as usize,
                _ => return,
            },
            Some(Err(e)) => {
                tracing::error!(index = id.0, error = %e, "purge of a dropped index failed");
                return;
            }
            None => return,
        }
        if *engine.shutdown_signal().borrow() {
            return;
        }
    }
    let forgotten = engine.update_numbering(|n| n.dropped_indexes.retain(|d| *d != id), |_, _| {});
    match forgotten {
        Ok(()) => tracing::info!(index = id.0, entries = purged, "dropped index purged"),
        Err(e) => tracing::error!(index = id.0, error = %e, "cannot record index as purged"),
    }
}
