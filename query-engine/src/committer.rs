//! The single committer. Transactions execute concurrently on snapshots and arrive here with
//! their read and write sets. Each batch is validated in order (optimistic concurrency against
//! everything committed after the transaction's snapshot and against earlier members of the
//! batch); a transaction that conflicts is re-executed here, on the latest state plus the
//! batch so far, so hot keys serialize at memory speed instead of bouncing back to clients.
//! The whole batch is one append and one fsync of the write-ahead log (a small batch may wait
//! a moment for more members while writes arrive often: `group_commit`); then it is published
//! to new snapshots (redb gets it later, from the applier), every member is acknowledged and
//! the batch's touched keys are published to observers, in commit order. A log record has a
//! size cap (replay must read back whatever was acknowledged): members that would take it
//! past the cap go to a further record, and one too large by itself fails alone.
//!
//! A request may also carry a catalog change (an index becoming ready). It ends its batch, so
//! it commits at the batch's timestamp with nothing after it in the batch, and the committer
//! stores the changed catalog before the snapshot that includes the commit: the catalog is
//! only ever changed here, at a commit timestamp.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};

use crate::catalog::{Catalog, CatalogChange};
use crate::error::{FunctionError, FunctionResult};
use crate::group_commit::GroupCommit;
use crate::metrics::EngineMetrics;
use crate::reads::{ReadSet, TouchedKeys};
use crate::storage::{Snapshot, Storage};
use crate::transaction::{limit_error, Limits, Transaction};
use crate::value::Value;
use crate::wal::{meta_entry_bytes, RECORD_FIXED_BYTES};
use crate::writes::WriteSet;

/// Bytes of a batch's log record besides its members' entries: the fixed part and the two
/// metadata entries (`last_ts`, `id_high_water`: short keys, 8-byte values), with room.
const RECORD_RESERVE_BYTES: usize = RECORD_FIXED_BYTES + 2 * meta_entry_bytes(16, 8);

/// Re-executes a transaction's function on a transaction the committer provides.
pub(crate) type Rerun = Box<dyn FnMut(&mut Transaction<'_>) -> FunctionResult<Value> + Send>;

pub(crate) struct CommitRequest {
    pub snapshot_ts: u64,
    pub reads: ReadSet,
    pub writes: WriteSet,
    pub value: Value,
    pub rerun: Rerun,
    /// A catalog change made by this commit (`None` for every transaction).
    pub catalog_change: Option<CatalogChange>,
    pub reply: oneshot::Sender<FunctionResult<Committed>>,
}

/// A committed transaction as its caller sees it: the commit timestamp and the function's
/// return value (from the re-execution, if there was one).
#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    pub ts: u64,
    pub value: Value,
}

/// What reactivity learns of each durable batch, in commit order.
pub struct CommitNotice {
    /// Snapshot timestamp before the batch.
    pub prev_ts: u64,
    /// Snapshot timestamp after the batch.
    pub ts: u64,
    pub touched: Arc<TouchedKeys>,
    pub snapshot: Arc<Snapshot>,
}

pub type CommitObserver = Arc<dyn Fn(&CommitNotice) + Send + Sync>;

/// `CommitterConfig::group_commit_wait` unless configured.
pub const DEFAULT_GROUP_COMMIT_WAIT: Duration = Duration::from_millis(1);

#[derive(Clone, Debug)]
pub struct CommitterConfig {
    /// fsync every batch (the default). Off only for benchmarks that say so.
    pub durable: bool,
    /// Most transactions in one batch.
    pub max_batch_txns: usize,
    /// Most bytes written in one batch.
    pub max_batch_bytes: usize,
    /// Commit batches kept for validating transactions that started on older snapshots; a
    /// transaction older than the window is re-executed rather than validated.
    pub conflict_window_batches: usize,
    /// How long a small batch may be held for more members while writes arrive often enough
    /// to fill the wait (`group_commit`); zero never waits.
    pub group_commit_wait: Duration,
}

impl Default for CommitterConfig {
    fn default() -> Self {
        CommitterConfig {
            durable: true,
            max_batch_txns: 1024,
            max_batch_bytes: 32 << 20,
            conflict_window_batches: 4096,
            group_commit_wait: DEFAULT_GROUP_COMMIT_WAIT,
        }
    }
}

pub(crate) struct Shared {
    pub storage: Arc<Storage>,
    pub catalog: Arc<ArcSwap<Catalog>>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub ids: Arc<AtomicU64>,
    pub limits: Limits,
    pub metrics: Arc<EngineMetrics>,
    pub observers: Arc<parking_lot::RwLock<Vec<CommitObserver>>>,
}

struct LogEntry {
    ts: u64,
    touched: Arc<TouchedKeys>,
}

pub(crate) struct Committer {
    shared: Shared,
    config: CommitterConfig,
    log: VecDeque<LogEntry>,
    /// Oldest snapshot timestamp the log can validate against.
    log_floor_ts: u64,
    last_ts: u64,
}

/// Wall-clock microseconds, used only to keep commit timestamps near real time.
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Wall-clock milliseconds since the epoch.
pub fn now_millis() -> i64 {
    (now_micros() / 1_000) as i64
}

/// Requests taken from the queue for one batch.
struct Batch {
    members: Vec<CommitRequest>,
    bytes: usize,
}

impl Batch {
    fn new(first: CommitRequest) -> Self {
        Batch {
            bytes: first.writes.bytes_written,
            members: vec![first],
        }
    }

    /// Whether another member may join: within the batch bounds, and no catalog change yet
    /// (members after one would run on the catalog from before it while committing after it).
    fn open(&self, config: &CommitterConfig) -> bool {
        self.members.len() < config.max_batch_txns
            && self.bytes < config.max_batch_bytes
            && self
                .members
                .last()
                .is_some_and(|r| r.catalog_change.is_none())
    }

    /// Takes what is queued now, while the batch is open.
    fn fill(&mut self, rx: &mut mpsc::Receiver<CommitRequest>, config: &CommitterConfig) {
        while self.open(config) {
            match rx.try_recv() {
                Ok(r) => {
                    self.bytes += r.writes.bytes_written;
                    self.members.push(r);
                }
                Err(_) => break,
            }
        }
    }
}

impl Committer {
    pub fn new(shared: Shared, config: CommitterConfig, last_ts: u64) -> Self {
        Committer {
            shared,
            config,
            log: VecDeque::new(),
            log_floor_ts: last_ts,
            last_ts,
        }
    }

    /// Runs until every sender is gone, then returns (pending work is finished first).
    pub fn run(mut self, mut rx: mpsc::Receiver<CommitRequest>) {
        let mut group = GroupCommit::new(self.config.group_commit_wait, Instant::now());
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Batch::new(first);
            batch.fill(&mut rx, &self.config);
            group.arrived(batch.members.len(), Instant::now());
            if let Some(wait) = group
                .hold(batch.members.len())
                .filter(|_| batch.open(&self.config))
            {
                std::thread::sleep(wait);
                let before = batch.members.len();
                batch.fill(&mut rx, &self.config);
                let gained = batch.members.len() - before;
                group.arrived(gained, Instant::now());
                group.held(gained);
                self.shared
                    .metrics
                    .group_commit_waits
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.commit_batch(batch.members);
        }
    }

    fn conflicts(&self, req: &CommitRequest, batch: &WriteSet) -> bool {
        if req.snapshot_ts < self.log_floor_ts {
            return true;
        }
        if req.reads.conflicts_with(&batch.touched) {
            return true;
        }
        self.log
            .iter()
            .rev()
            .take_while(|e| e.ts > req.snapshot_ts)
            .any(|e| req.reads.conflicts_with(&e.touched))
    }

    /// Commits a batch: usually one log record, but members that would take the record over
    /// the cap go to a further one (see `commit_part`).
    fn commit_batch(&mut self, batch: Vec<CommitRequest>) {
        let mut pending = VecDeque::from(batch);
        while !pending.is_empty() {
            let (committed, carried) = self.commit_part(&mut pending);
            let Some(mut req) = carried else { continue };
            if committed {
                // It was validated (or re-executed) on top of exactly what was just committed,
                // so it starts the next record as if its snapshot were that commit.
                req.snapshot_ts = self.last_ts;
                pending.push_front(req);
            } else {
                // Its writes assumed the members that just failed.
                let _ = req
                    .reply
                    .send(Err(FunctionError::internal("commit failed")));
            }
        }
    }

    /// Validates members from the front of `pending` and commits those that fit in one log
    /// record (`Storage::max_record_bytes`). A member that alone would not fit fails by
    /// itself; one that fits only without the members before it is returned, validated
    /// against them, to start the next record. Returns whether anything was committed.
    fn commit_part(
        &mut self,
        pending: &mut VecDeque<CommitRequest>,
    ) -> (bool, Option<CommitRequest>) {
        let m = &self.shared.metrics;
        let snapshot = self.shared.snapshot.load_full();
        let catalog = self.shared.catalog.load_full();
        let max_entry_bytes = self
            .shared
            .storage
            .max_record_bytes()
            .saturating_sub(RECORD_RESERVE_BYTES);
        let mut entry_bytes = 0;
        let mut carried = None;
        let mut overlay = WriteSet::default();
        let mut accepted: Vec<(oneshot::Sender<FunctionResult<Committed>>, Value)> = Vec::new();
        let mut changes: Vec<CatalogChange> = Vec::new();
        while let Some(mut req) = pending.pop_front() {
            if self.conflicts(&req, &overlay) {
                m.conflicts.fetch_add(1, Ordering::Relaxed);
                m.reexecutions.fetch_add(1, Ordering::Relaxed);
                let now_ms = (now_micros().max(self.last_ts) / 1000) as i64;
                let seed = self.last_ts ^ (accepted.len() as u64).rotate_left(32);
                let mut txn = Transaction::new(
                    &snapshot,
                    Some(&overlay),
                    &catalog,
                    &self.shared.ids,
                    &self.shared.limits,
                    now_ms,
                    false,
                    seed,
                );
                match (req.rerun)(&mut txn) {
                    Ok(v) => {
                        let (_, writes) = txn.into_parts();
                        req.writes = writes;
                        req.value = v;
                    }
                    Err(e) => {
                        let _ = req.reply.send(Err(e));
                        continue;
                    }
                }
            }
            if let Err(e) = req.writes.ensure_encoded() {
                tracing::error!(error = %e, "cannot encode a transaction's writes");
                let _ = req
                    .reply
                    .send(Err(FunctionError::internal("commit failed")));
                continue;
            }
            let bytes = req.writes.record_bytes();
            if bytes > max_entry_bytes {
                let _ = req
                    .reply
                    .send(Err(limit_error("logRecordBytes", max_entry_bytes)));
                continue;
            }
            if entry_bytes + bytes > max_entry_bytes {
                carried = Some(req);
                break;
            }
            entry_bytes += bytes;
            overlay.merge(std::mem::take(&mut req.writes));
            if let Some(change) = req.catalog_change {
                let (index, key) = change.touched_key();
                overlay.touched.insert(index, key);
                changes.push(change);
            }
            accepted.push((req.reply, req.value));
        }
        if accepted.is_empty() {
            return (false, carried);
        }
        let prev_ts = self.last_ts;
        let ts = (prev_ts + accepted.len() as u64).max(now_micros());
        let first_ts = ts - (accepted.len() as u64 - 1);
        let meta = vec![
            ("last_ts", ts.to_be_bytes().to_vec()),
            (
                "id_high_water",
                self.shared
                    .ids
                    .load(Ordering::SeqCst)
                    .to_be_bytes()
                    .to_vec(),
            ),
        ];
        let started = Instant::now();
        let logged = match overlay.ensure_encoded() {
            Err(e) => Err(e),
            Ok(()) if self.config.durable => self
                .shared
                .storage
                .log(&overlay, ts, &meta)
                .map_err(|e| e.to_string()),
            Ok(()) => Ok(None),
        };
        let sealed = match logged {
            Ok(sealed) => sealed,
            Err(e) => {
                tracing::error!(error = %e, "commit failed; batch rejected");
                for (reply, _) in accepted {
                    let _ = reply.send(Err(FunctionError::internal("commit failed")));
                }
                return (false, carried);
            }
        };
        m.record_commit(accepted.len(), started.elapsed());
        let touched = Arc::new(std::mem::take(&mut overlay.touched));
        if !changes.is_empty() {
            let mut changed = (*catalog).clone();
            for change in changes {
                changed.apply(change, ts);
            }
            // Before the snapshot: readers take a snapshot first and the catalog after it, so
            // one whose snapshot includes this commit sees the change, and `ready_ts` hides it
            // from older snapshots.
            self.shared.catalog.store(Arc::new(changed));
        }
        let new_snapshot = match self.shared.storage.publish(overlay, ts, meta, sealed) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                // The batch is durable; only publishing it failed (the storage is shutting
                // down). Stop rather than acknowledge writes that reads would not see.
                tracing::error!(error = %e, "cannot publish a logged batch");
                std::process::abort();
            }
        };
        self.shared.snapshot.store(new_snapshot.clone());
        self.last_ts = ts;
        self.log.push_back(LogEntry {
            ts,
            touched: touched.clone(),
        });
        while self.log.len() > self.config.conflict_window_batches {
            if let Some(e) = self.log.pop_front() {
                self.log_floor_ts = e.ts;
            }
        }
        // Observers first (each O(1)): a subscription made after an acknowledgement, by any
        // client, must find the notice already queued, or it could start before the commit.
        let notice = CommitNotice {
            prev_ts,
            ts,
            touched,
            snapshot: new_snapshot,
        };
        for o in self.shared.observers.read().iter() {
            o(&notice);
        }
        for (i, (reply, value)) in accepted.into_iter().enumerate() {
            let _ = reply.send(Ok(Committed {
                ts: first_ts + i as u64,
                value,
            }));
        }
        (true, carried)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{DocumentId, TableNumber};
    use crate::storage::StorageOptions;

    type Reply = oneshot::Receiver<FunctionResult<Committed>>;

    fn open(path: &std::path::Path, max_record_bytes: usize) -> Committer {
        let storage = Arc::new(
            Storage::open_with(
                path,
                StorageOptions {
                    max_record_bytes,
                    ..StorageOptions::default()
                },
            )
            .unwrap(),
        );
        let snapshot = Arc::new(ArcSwap::from_pointee(storage.snapshot(0)));
        let shared = Shared {
            storage,
            catalog: Arc::new(ArcSwap::from_pointee(Catalog::default())),
            snapshot,
            ids: Arc::new(AtomicU64::new(1)),
            limits: Limits::default(),
            metrics: Arc::new(EngineMetrics::default()),
            observers: Arc::new(parking_lot::RwLock::new(Vec::new())),
        };
        Committer::new(shared, CommitterConfig::default(), 0)
    }

    fn doc_id(id: u64) -> DocumentId {
        DocumentId::new(TableNumber(7), id)
    }

    /// A transaction writing document `id`, a string of `len` bytes, read nothing.
    fn request(id: u64, len: usize) -> (CommitRequest, Reply) {
        let mut writes = WriteSet::default();
        writes
            .docs
            .insert(doc_id(id), Some(Arc::new(Value::String("x".repeat(len)))));
        let (reply, rx) = oneshot::channel();
        let req = CommitRequest {
            snapshot_ts: 0,
            reads: ReadSet::default(),
            writes,
            value: Value::Null,
            rerun: Box::new(|_| Err(FunctionError::internal("not re-executed"))),
            catalog_change: None,
            reply,
        };
        (req, rx)
    }

    fn present(c: &Committer, ids: &[u64]) -> Vec<bool> {
        let snap = c.shared.snapshot.load();
        ids.iter()
            .map(|id| snap.get(&doc_id(*id)).unwrap().is_some())
            .collect()
    }

    /// A transaction whose writes alone would take a log record over the cap fails by itself;
    /// the rest of its batch commits. Members that fit only apart go to two records. Nothing
    /// acknowledged is missing after a reopen.
    #[test]
    fn a_transaction_over_the_record_cap_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut c = open(&path, 4096);
        let (a, a_reply) = request(1, 100);
        let (big, big_reply) = request(2, 5000);
        let (b, b_reply) = request(3, 100);
        c.commit_batch(vec![a, big, b]);
        assert!(a_reply.blocking_recv().unwrap().is_ok());
        let e = big_reply.blocking_recv().unwrap().unwrap_err();
        assert!(e.message.contains("logRecordBytes"), "{e}");
        assert!(b_reply.blocking_recv().unwrap().is_ok());
        // Each fits, not both: two records, both acknowledged, in order.
        let (d, d_reply) = request(4, 2500);
        let (e, e_reply) = request(5, 2500);
        c.commit_batch(vec![d, e]);
        let d_ts = d_reply.blocking_recv().unwrap().unwrap().ts;
        let e_ts = e_reply.blocking_recv().unwrap().unwrap().ts;
        assert!(d_ts < e_ts);
        let ids = [1, 2, 3, 4, 5];
        let want = vec![true, false, true, true, true];
        assert_eq!(present(&c, &ids), want);
        drop(c);
        let c = open(&path, 4096);
        assert_eq!(present(&c, &ids), want);
    }
}
