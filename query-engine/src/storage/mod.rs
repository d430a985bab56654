//! Storage on redb: documents by id, index entries by (index, key), and engine metadata.
//! The write path is: the committer logs a batch (`log`: one fsynced append to the
//! write-ahead log, after which it is durable and may be acknowledged), then `publish`es it:
//! the batch becomes a layer of every new snapshot and goes to the applier thread, which
//! writes it into redb later, several batches per redb transaction. Readers get a `Snapshot`:
//! a redb view plus the layers redb does not hold yet.

mod applier;
mod snapshot;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;

use arc_swap::ArcSwap;
use redb::{Database, Durability, TableDefinition};

use crate::doc_cache::DocCache;
use crate::wal::{encode_record, Sealed, Wal};
use crate::writes::WriteSet;
use applier::{Applier, Job};
use snapshot::Base;
pub use snapshot::{KeyIter, Layer, Snapshot};

const DOCUMENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("documents");
const INDEX_ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("index_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Write-ahead log size that triggers a checkpoint (a durable redb commit, then the sealed
/// log segments are deleted).
const CHECKPOINT_WAL_BYTES: u64 = 64 << 20;
/// Decoded documents kept by the cache.
const DOC_CACHE_ENTRIES: usize = 200_000;
/// Batches the applier may fall behind before the committer waits for it.
const MAX_PENDING_BATCHES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Redb(Box<redb::Error>),
    #[error("storage: corrupt document {0}: {1}")]
    CorruptDocument(String, String),
    #[error("storage: corrupt metadata {0}: {1}")]
    CorruptMeta(String, String),
    #[error("storage: write-ahead log: {0}")]
    Wal(std::io::Error),
    #[error("storage: closed")]
    Closed,
}

macro_rules! redb_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self { StorageError::Redb(Box::new(e.into())) }
        }
    )*};
}
redb_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub struct Storage {
    db: Arc<Database>,
    wal: parking_lot::Mutex<Wal>,
    cache: Arc<DocCache>,
    /// redb's latest applied state, published by the applier.
    applied: Arc<ArcSwap<Base>>,
    /// Batches published to snapshots that the last seen base may not hold yet, oldest first.
    /// Only the committer touches it.
    pending: parking_lot::Mutex<VecDeque<Layer>>,
    /// Bounded: when the applier is this many jobs behind, publishing waits for it.
    to_applier: parking_lot::Mutex<Option<SyncSender<Job>>>,
    applier: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpoint_bytes: u64,
    /// Shared with every snapshot (read transactions keep the file open too) and declared
    /// last, since fields drop in order: it signals once the file is really closed.
    closed: Arc<CloseSignal>,
}

type Closed = Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>;

#[derive(Default)]
pub(crate) struct CloseSignal(Closed);

/// Waits until a `Storage` (and so its redb file) has been dropped.
#[derive(Clone)]
pub struct CloseWaiter(Closed);

impl CloseWaiter {
    /// Blocks until closed or `timeout` passes; returns whether it closed.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let (lock, cvar) = &*self.0;
        let Ok(guard) = lock.lock() else { return false };
        match cvar.wait_timeout_while(guard, timeout, |closed| !*closed) {
            Ok((closed, _)) => *closed,
            Err(_) => false,
        }
    }
}

impl Drop for CloseSignal {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.0;
        if let Ok(mut closed) = lock.lock() {
            *closed = true;
        }
        cvar.notify_all();
    }
}

/// Tuning of the write path; the defaults suit production.
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// Log bytes after which the log is rotated and a checkpoint makes redb durable.
    pub checkpoint_bytes: u64,
    /// Batches the applier may fall behind before publishing waits for it.
    pub max_pending_batches: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            checkpoint_bytes: CHECKPOINT_WAL_BYTES,
            max_pending_batches: MAX_PENDING_BATCHES,
        }
    }
}

impl Storage {
    pub fn open(path: &Path) -> Result<Storage, StorageError> {
        Self::open_with(path, StorageOptions::default())
    }

    /// Opens (creating) the database, replaying log records newer than redb's durable state.
    pub fn open_with(path: &Path, options: StorageOptions) -> Result<Storage, StorageError> {
        let db = Arc::new(Database::create(path)?);
        let txn = db.begin_write()?;
        txn.open_table(DOCUMENTS)?;
        txn.open_table(INDEX_ENTRIES)?;
        txn.open_table(META)?;
        txn.commit()?;
        let (mut wal, records) = Wal::open(path).map_err(StorageError::Wal)?;
        let mut durable_ts = read_last_ts(&db)?;
        if !records.is_empty() {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate);
            let mut replayed = 0;
            for rec in records.iter().filter(|r| r.ts > durable_ts) {
                apply(
                    &txn,
                    rec.docs.iter().map(|(id, d)| (id.as_slice(), d.as_deref())),
                    rec.index.iter().map(|(k, p)| (k.as_slice(), *p)),
                    rec.meta.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
                )?;
                replayed += 1;
            }
            txn.commit()?;
            tracing::info!(replayed, "replayed the write-ahead log");
            durable_ts = read_last_ts(&db)?;
        }
        wal.reset().map_err(StorageError::Wal)?;
        let closed = Arc::new(CloseSignal::default());
        let cache = Arc::new(DocCache::new(DOC_CACHE_ENTRIES));
        let applied = Arc::new(ArcSwap::from_pointee(open_base(&db, durable_ts, &closed)?));
        let (tx, rx) = sync_channel(options.max_pending_batches.max(1));
        let applier = Applier {
            db: db.clone(),
            cache: cache.clone(),
            applied: applied.clone(),
            closed: closed.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("applier".into())
            .spawn(move || applier.run(rx))
            .map_err(StorageError::Wal)?;
        Ok(Storage {
            db,
            wal: parking_lot::Mutex::new(wal),
            cache,
            applied,
            pending: parking_lot::Mutex::new(VecDeque::new()),
            to_applier: parking_lot::Mutex::new(Some(tx)),
            applier: parking_lot::Mutex::new(Some(handle)),
            checkpoint_bytes: options.checkpoint_bytes,
            closed,
        })
    }

    pub fn close_waiter(&self) -> CloseWaiter {
        CloseWaiter(self.closed.0.clone())
    }

    /// A snapshot at `ts` of everything published so far (`ts` must not be older than the
    /// latest published batch; it is the caller's latest commit timestamp).
    pub fn snapshot(&self, ts: u64) -> Snapshot {
        let base = self.applied.load_full();
        let mut pending = self.pending.lock();
        while pending.front().is_some_and(|l| l.ts <= base.ts) {
            pending.pop_front();
        }
        Snapshot {
            ts,
            cache: self.cache.clone(),
            base,
            layers: pending.iter().cloned().collect(),
        }
    }

    /// Appends a batch to the write-ahead log and waits for its fsync: once this returns the
    /// batch is durable. Every present document must have its encoding in `writes.encoded`.
    /// Returns the log segments a checkpoint may now delete, when the log got long enough to
    /// rotate; pass them to `publish`.
    pub fn log(
        &self,
        writes: &WriteSet,
        ts: u64,
        meta: &[(&'static str, Vec<u8>)],
    ) -> Result<Option<Sealed>, StorageError> {
        let record = encode_record(
            ts,
            meta.iter().map(|(k, v)| (*k, v.as_slice())),
            writes.docs.iter().map(|(id, d)| {
                let bytes = d
                    .as_ref()
                    .and_then(|_| writes.encoded.get(id))
                    .map(Vec::as_slice);
                (id.to_bytes(), bytes)
            }),
            writes.index_entries.iter().map(|(k, p)| (k.as_slice(), *p)),
        );
        let mut wal = self.wal.lock();
        wal.append_durable(&record).map_err(StorageError::Wal)?;
        if wal.len() > self.checkpoint_bytes {
            return wal.rotate().map(Some).map_err(StorageError::Wal);
        }
        Ok(None)
    }

    /// Makes a logged (or, in non-durable mode, unlogged) batch visible: hands it to the
    /// applier and returns the snapshot at `ts` that includes it. Waits while the applier is
    /// too far behind. Every present document must have its encoding in `writes.encoded`.
    pub fn publish(
        &self,
        writes: WriteSet,
        ts: u64,
        meta: Vec<(&'static str, Vec<u8>)>,
        sealed: Option<Sealed>,
    ) -> Result<Snapshot, StorageError> {
        let layer = Layer {
            ts,
            writes: Arc::new(writes),
        };
        {
            let sender = self.to_applier.lock();
            let Some(tx) = sender.as_ref() else {
                return Err(StorageError::Closed);
            };
            let sent = tx.send(Job::Apply {
                layer: layer.clone(),
                meta,
            });
            let sent = sent.and_then(|()| match sealed {
                Some(s) => tx.send(Job::Checkpoint(s)),
                None => Ok(()),
            });
            if sent.is_err() {
                return Err(StorageError::Closed);
            }
        }
        self.pending.lock().push_back(layer);
        Ok(self.snapshot(ts))
    }

    /// Writes metadata entries in a durable redb transaction of their own (schema and index
    /// bookkeeping; not part of any batch).
    pub fn write_meta_durable(&self, meta: &[(&str, Vec<u8>)]) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        apply(
            &txn,
            std::iter::empty(),
            std::iter::empty(),
            meta.iter().map(|(k, v)| (*k, v.as_slice())),
        )?;
        txn.commit()?;
        Ok(())
    }

    /// Stops the applier after it has applied everything published and made redb durable.
    /// Idempotent; also done on drop.
    pub fn shut_down(&self) {
        drop(self.to_applier.lock().take());
        if let Some(handle) = self.applier.lock().take() {
            if handle.join().is_err() {
                tracing::error!("the applier thread panicked");
            }
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn read_last_ts(db: &Database) -> Result<u64, StorageError> {
    let r = db.begin_read()?;
    let meta = r.open_table(META)?;
    let ts = meta
        .get("last_ts")?
        .and_then(|g| g.value().try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    Ok(ts)
}

/// Opens redb's current state as the base of snapshots, holding every batch up to `ts`.
fn open_base(db: &Database, ts: u64, closed: &Arc<CloseSignal>) -> Result<Base, StorageError> {
    let txn = db.begin_read()?;
    Ok(Base {
        ts,
        docs: txn.open_table(DOCUMENTS)?,
        index: txn.open_table(INDEX_ENTRIES)?,
        meta: txn.open_table(META)?,
        _closed: closed.clone(),
    })
}

/// Applies documents, index entries and metadata inside a redb write transaction.
fn apply<'a>(
    txn: &redb::WriteTransaction,
    docs: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    index: impl Iterator<Item = (&'a [u8], bool)>,
    meta: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Result<(), StorageError> {
    let mut d = txn.open_table(DOCUMENTS)?;
    for (id, doc) in docs {
        match doc {
            Some(bytes) => {
                d.insert(id, bytes)?;
            }
            None => {
                d.remove(id)?;
            }
        }
    }
    let mut i = txn.open_table(INDEX_ENTRIES)?;
    for (key, present) in index {
        if present {
            i.insert(key, [].as_slice())?;
        } else {
            i.remove(key)?;
        }
    }
    let mut m = txn.open_table(META)?;
    for (k, v) in meta {
        m.insert(k, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{DocumentId, TableNumber};
    use crate::value::Value;

    fn batch(ids: std::ops::Range<u64>, value: i64) -> WriteSet {
        let mut w = WriteSet::default();
        for i in ids {
            let id = DocumentId::new(TableNumber(7), i);
            w.docs.insert(id, Some(Arc::new(Value::Int64(value))));
            let mut key = vec![0, 0, 0, 9];
            key.extend_from_slice(&value.to_be_bytes());
            key.extend_from_slice(&id.to_bytes());
            w.index_entries.insert(key, true);
        }
        w.ensure_encoded().unwrap();
        w
    }

    fn meta(ts: u64) -> Vec<(&'static str, Vec<u8>)> {
        vec![("last_ts", ts.to_be_bytes().to_vec())]
    }

    fn commit(s: &Storage, w: WriteSet, ts: u64) -> Snapshot {
        let sealed = s.log(&w, ts, &meta(ts)).unwrap();
        s.publish(w, ts, meta(ts), sealed).unwrap()
    }

    fn values(s: &Snapshot, n: u64) -> Vec<Option<i64>> {
        (0..n)
            .map(|i| {
                s.get(&DocumentId::new(TableNumber(7), i))
                    .unwrap()
                    .map(|v| match *v {
                        Value::Int64(x) => x,
                        _ => panic!("not an int"),
                    })
            })
            .collect()
    }

    #[test]
    fn every_snapshot_sees_exactly_the_batches_up_to_its_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&dir.path().join("db")).unwrap();
        let mut snaps = Vec::new();
        for round in 1..=50i64 {
            // Each round overwrites ids 0..20 with its number and deletes id 20 + round.
            let mut w = batch(0..20, round);
            w.docs.insert(DocumentId::new(TableNumber(7), 20 + round as u64), None);
            snaps.push(commit(&s, w, round as u64 * 10));
        }
        for (i, snap) in snaps.iter().enumerate() {
            let round = i as i64 + 1;
            assert_eq!(values(snap, 20), vec![Some(round); 20]);
            // Index entries of every round so far are present (they are never removed here).
            let keys: Vec<_> = snap
                .index_keys(&[0, 0, 0, 9], Some(&[0, 0, 0, 10]), false)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(keys.len(), 20 * round as usize);
            let ids: Vec<_> = snap
                .doc_keys(&TableNumber(7).0.to_be_bytes(), None, true)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(ids.len(), 20);
            assert_eq!(ids[0], DocumentId::new(TableNumber(7), 19).to_bytes());
        }
    }

    #[test]
    fn logged_batches_survive_a_crash_before_the_applier_ran() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = Storage::open(&path).unwrap();
            commit(&s, batch(0..5, 1), 10);
            // Logged and acknowledged, never published: the applier never saw it.
            s.log(&batch(0..3, 2), 20, &meta(20)).unwrap();
        }
        let s = Storage::open(&path).unwrap();
        let snap = s.snapshot(20);
        assert_eq!(
            values(&snap, 5),
            vec![Some(2), Some(2), Some(2), Some(1), Some(1)]
        );
        assert_eq!(read_last_ts(&s.db).unwrap(), 20);
    }

    #[test]
    fn checkpoints_delete_sealed_log_segments_and_reopen_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let segments = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .contains(".wal.")
                })
                .count()
        };
        {
            let s = Storage::open_with(
                &path,
                StorageOptions {
                    checkpoint_bytes: 4096,
                    max_pending_batches: 4,
                },
            )
            .unwrap();
            for round in 1..=200i64 {
                commit(&s, batch(0..10, round), round as u64);
            }
            s.shut_down();
            // Rotation happened many times; checkpoints left only the newest segments.
            assert!(segments() <= 2, "{} segments left", segments());
        }
        let s = Storage::open(&path).unwrap();
        assert_eq!(values(&s.snapshot(200), 10), vec![Some(200); 10]);
    }
}
