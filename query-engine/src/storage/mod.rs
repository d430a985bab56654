//! Storage on redb: documents by id, index entries by (index, key), and engine metadata.
//! The write path is: the committer logs a batch (`log`: one fsynced append to the
//! write-ahead log, after which it is durable and may be acknowledged), then `publish`es it:
//! the batch becomes a layer of every new snapshot and goes to the applier thread, which
//! writes it into redb later, several batches per redb transaction. Readers get a `Snapshot`:
//! a redb view plus the layers redb does not hold yet.

mod applier;
mod memtable;
mod reclaim;
mod snapshot;
mod writeback;

use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;

use arc_swap::ArcSwap;
use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use crate::doc_cache::DocCache;
use crate::id::ID_BYTES;
use crate::wal::{encode_record, RecordTooLarge, Replay, Sealed, Wal, WalError, MAX_RECORD_BYTES};
use crate::writes::WriteSet;
use applier::{Applier, Job};
use memtable::Memtable;
use reclaim::Reclaimer;
use snapshot::Base;
pub use snapshot::{KeyIter, Snapshot};
pub(crate) use writeback::{write_back, STEP as WRITEBACK_STEP};

/// Mode of every file the store creates (redb's file, log segments and their temporary
/// files): its owner's only, as the server's keys are. Documents are as private as keys.
const FILE_MODE: u32 = 0o600;

/// Options that create a file with `FILE_MODE` (an existing file keeps its mode).
pub(crate) fn private_file_options() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

const DOCUMENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("documents");
const INDEX_ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("index_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Write-ahead log size that triggers a checkpoint (a durable redb commit, then the sealed
/// log segments are deleted).
const CHECKPOINT_WAL_BYTES: u64 = 64 << 20;
/// Decoded documents kept by the cache.
const DOC_CACHE_ENTRIES: usize = 200_000;
/// redb's page cache: redb's own default, made explicit so a deployment can size it.
pub const PAGE_CACHE_BYTES: usize = 1 << 30;
/// Documents and index entries the active memtable may hold while the applier is busy.
const MAX_MEMTABLE_LEN: usize = 500_000;
/// Shortest time between two of the applier's redb transactions. Under random updates a
/// transaction rewrites most pages of the tables it touches whatever its size, so the
/// applier's CPU is roughly proportional to transactions per second: at 250 ms it was
/// ~28 µs per transfer at 10,000 transfers/s (100,000 accounts). A second bounds the memtable
/// to a second of writes (well under its entry bound at these rates) and the log replayed
/// after a crash to about a second of batches.
const APPLY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Redb(Box<redb::Error>),
    #[error("storage: corrupt document {0}: {1}")]
    CorruptDocument(String, String),
    #[error("storage: corrupt metadata {0}: {1}")]
    CorruptMeta(String, String),
    #[error("storage: write-ahead log: {0}")]
    Wal(#[from] WalError),
    #[error("storage: {0}; the batch was not logged")]
    RecordTooLarge(#[from] RecordTooLarge),
    #[error("storage: {0}")]
    Io(std::io::Error),
    #[error("storage: closed")]
    Closed,
    #[error("storage: {0} is open in another process (a running server?)")]
    InUse(String),
    #[error(
        "storage: the database file has redb file format {0}, from a build before redb 4; \
         this build reads format 3 only (development data can be deleted)"
    )]
    OldFileFormat(u8),
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
    redb::CommitError,
    redb::SetDurabilityError
);

pub struct Storage {
    db: Arc<Database>,
    wal: parking_lot::Mutex<Wal>,
    cache: Arc<DocCache>,
    /// redb's latest applied state, published by the applier.
    applied: Arc<ArcSwap<Base>>,
    /// The memtables; only the committer (and shutdown) changes them.
    state: parking_lot::Mutex<WriteState>,
    progress: Arc<Progress>,
    to_applier: parking_lot::Mutex<Option<SyncSender<Job>>>,
    applier: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpoint_bytes: u64,
    max_memtable_len: usize,
    max_record_bytes: usize,
    /// Frees memtables that snapshots and the committer let go of.
    reclaimer: Reclaimer,
    /// Shared with every snapshot (read transactions keep the file open too) and declared
    /// last, since fields drop in order: it signals once the file is really closed.
    closed: Arc<CloseSignal>,
}

#[derive(Default)]
struct WriteState {
    /// Batches committed since the last hand-over to the applier.
    active: Memtable,
    /// The memtable the applier is writing, until redb's published state includes it.
    frozen: Option<Arc<Memtable>>,
    /// Log segments to delete once the batches logged so far are durable in redb.
    sealed: Vec<Sealed>,
}

/// Lets the committer wait for the applier when the active memtable is full.
#[derive(Default)]
pub(crate) struct Progress {
    lock: parking_lot::Mutex<()>,
    cvar: parking_lot::Condvar,
    urgent: parking_lot::Mutex<bool>,
    urgent_cvar: parking_lot::Condvar,
}

impl Progress {
    fn advance(&self) {
        let _guard = self.lock.lock();
        self.cvar.notify_all();
    }

    /// Asks the applier to start its next transaction without waiting out its interval.
    fn hurry(&self) {
        let mut urgent = self.urgent.lock();
        *urgent = true;
        self.urgent_cvar.notify_all();
    }

    /// Sleeps for `d`, or until someone hurries the applier; unlike `pause_until` it leaves
    /// the request standing, so the rest of the job and the next one run unpaced. Returns
    /// whether the applier is being hurried.
    fn rest(&self, d: std::time::Duration) -> bool {
        *self.wait_for_hurry(std::time::Instant::now() + d)
    }

    /// Sleeps until `deadline`, or until someone hurries the applier; returns whether someone
    /// did.
    fn pause_until(&self, deadline: std::time::Instant) -> bool {
        std::mem::take(&mut *self.wait_for_hurry(deadline))
    }

    /// Waits until `deadline` or a hurry; returns the hurry flag, locked.
    fn wait_for_hurry(&self, deadline: std::time::Instant) -> parking_lot::MutexGuard<'_, bool> {
        let mut urgent = self.urgent.lock();
        while !*urgent
            && !self
                .urgent_cvar
                .wait_until(&mut urgent, deadline)
                .timed_out()
        {}
        urgent
    }
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
    /// Documents and index entries the active memtable may hold while the applier is busy;
    /// past this, publishing waits for the applier (bounds memory).
    pub max_memtable_len: usize,
    /// Shortest time between two of the applier's redb transactions: longer means larger
    /// transactions (cheaper per update), a larger memtable and a longer replay after a crash.
    pub apply_interval: std::time::Duration,
    /// Decoded documents the cache keeps (`doc_cache`).
    pub doc_cache_entries: usize,
    /// Bytes of redb's page cache (read and write buffers together); with the document cache
    /// and the memtables, most of the server's memory.
    pub page_cache_bytes: usize,
    /// Largest log record (one batch) accepted, at most `wal::MAX_RECORD_BYTES` (the default);
    /// the committer keeps batches under it. Lower only to test the bound.
    pub max_record_bytes: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            checkpoint_bytes: CHECKPOINT_WAL_BYTES,
            max_memtable_len: MAX_MEMTABLE_LEN,
            apply_interval: APPLY_INTERVAL,
            doc_cache_entries: DOC_CACHE_ENTRIES,
            page_cache_bytes: PAGE_CACHE_BYTES,
            max_record_bytes: MAX_RECORD_BYTES,
        }
    }
}

/// Drops the redb file's clean pages from the kernel's page cache before redb reads it. After
/// a failed fsync, Linux may keep the pages whose write failed as clean and serve them to a
/// restarted process (without a reboot), though they never reached the disk; the log replay
/// rewrites what its records hold, but redb's other pages (a sibling a split made, a leaf a
/// removal touched) would be read from that cache. Read from the disk instead. Best effort: a
/// failure is logged, and a missing file (a new database) has nothing cached.
fn forget_cached_pages(path: &Path) {
    use std::os::fd::AsRawFd;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the database to drop its cached pages");
            return;
        }
    };
    // SAFETY: `posix_fadvise` only advises the kernel about the open descriptor's pages.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        tracing::warn!(path = %path.display(), rc, "cannot drop the database's cached pages");
    }
}

impl Storage {
    pub fn open(path: &Path) -> Result<Storage, StorageError> {
        Self::open_with(path, StorageOptions::default())
    }

    /// Opens (creating) the database, replaying every record of the log into redb.
    pub fn open_with(path: &Path, options: StorageOptions) -> Result<Storage, StorageError> {
        forget_cached_pages(path);
        let file = writeback::PacedFile::open(path).map_err(StorageError::Io)?;
        let db = match Database::builder()
            .set_cache_size(options.page_cache_bytes)
            .create_with_backend(file)
        {
            Ok(db) => Arc::new(db),
            Err(redb::DatabaseError::UpgradeRequired(v)) => {
                return Err(StorageError::OldFileFormat(v))
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StorageError::InUse(path.display().to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        let txn = db.begin_write()?;
        txn.open_table(DOCUMENTS)?;
        txn.open_table(INDEX_ENTRIES)?;
        txn.open_table(META)?;
        txn.commit()?;
        // Room for the records past the rotation threshold, so the last ones still overwrite.
        let segment_bytes = options.checkpoint_bytes + options.checkpoint_bytes / 8;
        let replay = Replay::open(path).map_err(WalError::Io)?;
        // Every record still in the log is applied again, in order, whatever redb's `last_ts`
        // says: after a failed fsync the kernel may serve redb pages that never reached the
        // disk, and skipping the records those pages claim to hold, then deleting the log, lost
        // them at the next power cut. A record holds after-images only, so reapplying one
        // redb has is harmless.
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let replayed = replay.records(|rec| {
            apply(
                &txn,
                rec.docs.iter().map(|(id, d)| (*id, d.as_deref())),
                rec.index.iter().map(|(k, p)| (k.as_slice(), *p)),
                rec.meta.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
                || {},
            )
        })?;
        if replayed > 0 {
            txn.commit()?;
            tracing::info!(replayed, "replayed the write-ahead log");
        } else {
            txn.abort()?;
        }
        let durable_ts = read_last_ts(&db)?;
        let mut wal = replay.start(segment_bytes).map_err(WalError::Io)?;
        // Only now that redb holds every record durably.
        wal.discard_replayed().map_err(WalError::Io)?;
        let closed = Arc::new(CloseSignal::default());
        let cache = Arc::new(DocCache::new(options.doc_cache_entries));
        let applied = Arc::new(ArcSwap::from_pointee(open_base(&db, durable_ts, &closed)?));
        let progress = Arc::new(Progress::default());
        let (tx, rx) = sync_channel(1);
        let applier = Applier {
            db: db.clone(),
            cache: cache.clone(),
            applied: applied.clone(),
            progress: progress.clone(),
            interval: options.apply_interval,
            closed: closed.clone(),
        };
        let handle = crate::background::spawn("applier", move || applier.run(rx))
            .map_err(StorageError::Io)?;
        let reclaimer = Reclaimer::start().map_err(StorageError::Io)?;
        Ok(Storage {
            db,
            wal: parking_lot::Mutex::new(wal),
            cache,
            applied,
            state: parking_lot::Mutex::new(WriteState::default()),
            progress,
            to_applier: parking_lot::Mutex::new(Some(tx)),
            applier: parking_lot::Mutex::new(Some(handle)),
            checkpoint_bytes: options.checkpoint_bytes,
            max_memtable_len: options.max_memtable_len.max(1),
            max_record_bytes: options.max_record_bytes.min(MAX_RECORD_BYTES),
            reclaimer,
            closed,
        })
    }

    pub fn close_waiter(&self) -> CloseWaiter {
        CloseWaiter(self.closed.0.clone())
    }

    /// A snapshot at `ts` of everything published so far (`ts` must not be older than the
    /// latest published batch; it is the caller's latest commit timestamp).
    pub fn snapshot(&self, ts: u64) -> Snapshot {
        self.snapshot_of(&self.state.lock(), ts)
    }

    fn snapshot_of(&self, st: &WriteState, ts: u64) -> Snapshot {
        let base = self.applied.load_full();
        Snapshot {
            ts,
            cache: self.cache.clone(),
            frozen: st.frozen.clone().filter(|f| f.ts > base.ts),
            active: st.active.clone(),
            base,
            reclaimer: self.reclaimer.clone(),
        }
    }

    /// Largest log record accepted: a batch is refused by `log` past it.
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// Appends a batch to the write-ahead log and waits for its fsync: once this returns the
    /// batch is durable. Every present document must have its encoding in `writes.encoded`.
    /// A batch whose record would be over `max_record_bytes` is refused (`RecordTooLarge`)
    /// before anything is written: replay could not read it back. Returns the log segments a
    /// checkpoint may now delete, when the log got long enough to rotate; pass them to
    /// `publish`.
    pub fn log(
        &self,
        writes: &WriteSet,
        ts: u64,
        meta: &[(&'static str, Vec<u8>)],
    ) -> Result<Option<Sealed>, StorageError> {
        let mut record = encode_record(
            self.max_record_bytes,
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
        )?;
        let mut wal = self.wal.lock();
        wal.append_durable(&mut record).map_err(WalError::Io)?;
        if wal.len() > self.checkpoint_bytes || wal.wants_rotation() {
            // The batch is durable whatever happens here, so a failed rotation must not fail it.
            match wal.rotate() {
                Ok(sealed) => return Ok(Some(sealed)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a new log segment; appending to the current one")
                }
            }
        }
        Ok(None)
    }

    /// Makes a logged (or, in non-durable mode, unlogged) batch visible: adds it to the
    /// active memtable, hands that to the applier if it is free, and returns the snapshot at
    /// `ts` that includes the batch. Waits for the applier only when the active memtable is
    /// full. Every present document must have its encoding in `writes.encoded`.
    pub fn publish(
        &self,
        writes: WriteSet,
        ts: u64,
        meta: Vec<(&'static str, Vec<u8>)>,
        sealed: Option<Sealed>,
    ) -> Result<Snapshot, StorageError> {
        let mut st = self.state.lock();
        st.active.add(writes, ts, meta);
        st.sealed.extend(sealed);
        let full = st.active.len() > self.max_memtable_len;
        self.hand_over(&mut st, full)?;
        Ok(self.snapshot_of(&st, ts))
    }

    /// Whether the applier has finished the frozen memtable (redb's published state has it).
    fn applier_done(&self, st: &WriteState) -> bool {
        st.frozen
            .as_ref()
            .is_none_or(|f| self.applied.load().ts >= f.ts)
    }

    /// Freezes the active memtable and sends it to the applier, if the applier is free — or,
    /// with `wait`, once it is.
    fn hand_over(&self, st: &mut WriteState, wait: bool) -> Result<(), StorageError> {
        if !self.applier_done(st) {
            if !wait {
                return Ok(());
            }
            self.progress.hurry();
            let mut guard = self.progress.lock.lock();
            while !self.applier_done(st) {
                if self.applier.lock().as_ref().is_none_or(|h| h.is_finished()) {
                    return Err(StorageError::Closed);
                }
                self.progress
                    .cvar
                    .wait_for(&mut guard, std::time::Duration::from_millis(50));
            }
        }
        self.reclaimer.retire(st.frozen.take(), Memtable::default());
        if st.active.is_empty() {
            return Ok(());
        }
        let memtable = Arc::new(std::mem::take(&mut st.active));
        let job = Job {
            memtable: memtable.clone(),
            sealed: std::mem::take(&mut st.sealed),
        };
        let sender = self.to_applier.lock();
        match sender.as_ref().map(|tx| tx.send(job)) {
            Some(Ok(())) => {
                st.frozen = Some(memtable);
                Ok(())
            }
            _ => Err(StorageError::Closed),
        }
    }

    /// Writes metadata entries in a durable redb transaction of their own (schema and index
    /// bookkeeping; not part of any batch).
    pub fn write_meta_durable(&self, meta: &[(&str, Vec<u8>)]) -> Result<(), StorageError> {
        self.write_durable(std::iter::empty(), std::iter::empty(), meta)
    }

    /// Writes documents (id → encoded document, `None` to delete), index entries and
    /// metadata straight into redb in one durable transaction, past the log and the
    /// memtables: for work done while no transaction runs (opening, offline import).
    pub fn write_durable<'a>(
        &self,
        docs: impl Iterator<Item = ([u8; ID_BYTES], Option<&'a [u8]>)>,
        index: impl Iterator<Item = (&'a [u8], bool)>,
        meta: &'a [(&'a str, Vec<u8>)],
    ) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        apply(
            &txn,
            docs,
            index,
            meta.iter().map(|(k, v)| (*k, v.as_slice())),
            || {},
        )?;
        txn.commit()?;
        Ok(())
    }

    /// Stops the applier after it has applied everything published and made redb durable.
    /// Idempotent; also done on drop.
    pub fn shut_down(&self) {
        {
            let mut st = self.state.lock();
            // Hand over what is left, then wait until that is applied too.
            let drained = self
                .hand_over(&mut st, true)
                .and_then(|()| self.hand_over(&mut st, true));
            if let Err(e) = drained {
                tracing::warn!(error = %e, "shutting down with batches not applied to redb; the log has them");
            }
        }
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

/// Writes documents, index entries and metadata into the redb write transaction `txn`; `pace`
/// is called before each document and index entry (the applier rests there, see
/// `applier::Pacer`).
fn apply<'a>(
    txn: &redb::WriteTransaction,
    docs: impl Iterator<Item = ([u8; ID_BYTES], Option<&'a [u8]>)>,
    index: impl Iterator<Item = (&'a [u8], bool)>,
    meta: impl Iterator<Item = (&'a str, &'a [u8])>,
    mut pace: impl FnMut(),
) -> Result<(), StorageError> {
    let mut d = txn.open_table(DOCUMENTS)?;
    for (id, doc) in docs {
        pace();
        match doc {
            Some(bytes) => {
                d.insert(id.as_slice(), bytes)?;
            }
            None => {
                d.remove(id.as_slice())?;
            }
        }
    }
    let mut i = txn.open_table(INDEX_ENTRIES)?;
    for (key, present) in index {
        pace();
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

    /// A rest of the applier ends when the committer hurries it, and the request stands for
    /// the rest of the job: a later rest returns at once.
    #[test]
    fn hurrying_ends_the_applier_rest() {
        let progress = Arc::new(Progress::default());
        let resting = progress.clone();
        let (done, rested) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            assert!(resting.rest(std::time::Duration::from_secs(600)));
            assert!(resting.rest(std::time::Duration::from_secs(600)));
            done.send(()).unwrap();
        });
        progress.hurry();
        rested
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the rests end when hurried");
        t.join().unwrap();
    }

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
            w.docs
                .insert(DocumentId::new(TableNumber(7), 20 + round as u64), None);
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
    fn a_file_from_redb_2_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(redb2::Database::create(&path).unwrap());
        match Storage::open(&path) {
            Err(e @ StorageError::OldFileFormat(_)) => {
                assert!(e.to_string().contains("before redb 4"), "{e}")
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("a redb 2 file was opened"),
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

    /// After a failed fsync of redb a restart may read pages the kernel never wrote (PostgreSQL's
    /// "fsyncgate"): redb's `last_ts` then claims batches it will not have after a power cut.
    /// Recovery must replay the log's records anyway, and replaying those redb already holds
    /// (here the first batch, an insert, then an update and a delete over it) changes nothing.
    #[test]
    fn every_logged_record_is_replayed_whatever_redb_claims_to_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let key = |id: u64, value: i64| {
            let mut k = vec![0, 0, 0, 9];
            k.extend_from_slice(&value.to_be_bytes());
            k.extend_from_slice(&DocumentId::new(TableNumber(7), id).to_bytes());
            k
        };
        {
            let s = Storage::open(&path).unwrap();
            commit(&s, batch(0..5, 1), 10);
            // redb durably holds the first batch.
            s.shut_down();
            // Logged and acknowledged, never applied: ids 0..3 become 2, id 4 is deleted.
            let mut second = batch(0..3, 2);
            for id in 0..3 {
                second.index_entries.insert(key(id, 1), false);
            }
            second.docs.insert(DocumentId::new(TableNumber(7), 4), None);
            second.index_entries.insert(key(4, 1), false);
            s.log(&second, 20, &meta(20)).unwrap();
            // What the restart read: a `last_ts` past every record, without their writes.
            s.write_meta_durable(&meta(30)).unwrap();
        }
        let s = Storage::open(&path).unwrap();
        let snap = s.snapshot(30);
        assert_eq!(
            values(&snap, 5),
            vec![Some(2), Some(2), Some(2), Some(1), None]
        );
        let keys: Vec<_> = snap
            .index_keys(&[0, 0, 0, 9], Some(&[0, 0, 0, 10]), false)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut want = vec![key(0, 2), key(1, 2), key(2, 2), key(3, 1)];
        want.sort();
        assert_eq!(keys, want);
        // The log was applied in order: `last_ts` is the last record's.
        assert_eq!(read_last_ts(&s.db).unwrap(), 20);
    }

    /// A batch whose record would be over the cap is refused before anything is written, so
    /// nothing is acknowledged that replay could not read back; the log goes on.
    #[test]
    fn a_batch_over_the_record_cap_is_refused_before_it_is_logged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = Storage::open_with(
                &path,
                StorageOptions {
                    max_record_bytes: 4096,
                    ..StorageOptions::default()
                },
            )
            .unwrap();
            let mut big = WriteSet::default();
            big.docs.insert(
                DocumentId::new(TableNumber(7), 9),
                Some(Arc::new(Value::String("x".repeat(5000)))),
            );
            big.ensure_encoded().unwrap();
            match s.log(&big, 10, &meta(10)) {
                Err(StorageError::RecordTooLarge(e)) => assert_eq!(e.max_bytes, 4096),
                Err(e) => panic!("unexpected error: {e}"),
                Ok(_) => panic!("a record over the cap was logged"),
            }
            commit(&s, batch(0..2, 1), 20);
        }
        let s = Storage::open(&path).unwrap();
        let snap = s.snapshot(20);
        assert_eq!(values(&snap, 2), vec![Some(1), Some(1)]);
        assert!(snap
            .get(&DocumentId::new(TableNumber(7), 9))
            .unwrap()
            .is_none());
    }

    /// Storage that rotates its log and checkpoints every few KiB.
    fn open_checkpointing(path: &std::path::Path) -> Storage {
        Storage::open_with(
            path,
            StorageOptions {
                checkpoint_bytes: 4096,
                max_memtable_len: 40,
                apply_interval: std::time::Duration::ZERO,
                ..StorageOptions::default()
            },
        )
        .unwrap()
    }

    /// Names of the numbered log segments in `dir` (not the next one, being zero-filled, nor
    /// those being deleted), sorted.
    fn live_segments(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".wal.") && !n.contains(".wal.next") && !n.contains(".deleting"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn checkpoints_delete_sealed_log_segments_and_reopen_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = open_checkpointing(&path);
            for round in 1..=200i64 {
                commit(&s, batch(0..10, round), round as u64);
            }
            s.shut_down();
            // Rotation happened many times; checkpoints left only the newest segments.
            let left = live_segments(dir.path());
            assert!(left.len() <= 2, "{left:?} left");
        }
        let s = Storage::open(&path).unwrap();
        assert_eq!(values(&s.snapshot(200), 10), vec![Some(200); 10]);
    }

    /// A checkpointed segment that cannot be deleted keeps every newer one in the log: deleted
    /// while it stayed, the next open replayed it over their writes and old values came back.
    #[test]
    fn a_segment_that_cannot_be_deleted_keeps_the_newer_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let blocker = {
            let s = open_checkpointing(&path);
            // The first segment's removal renames it to `….deleting`; a non-empty directory of
            // that name makes the rename fail.
            let first = live_segments(dir.path());
            assert_eq!(first.len(), 1, "{first:?}");
            let blocker = dir.path().join(format!("{}.deleting", first[0]));
            std::fs::create_dir(&blocker).unwrap();
            std::fs::write(blocker.join("x"), b"x").unwrap();
            for round in 1..=200i64 {
                commit(&s, batch(0..10, round), round as u64);
            }
            s.shut_down();
            // Nothing was deleted behind the first segment.
            assert!(
                live_segments(dir.path()).len() > 3,
                "{:?}",
                live_segments(dir.path())
            );
            blocker
        };
        std::fs::remove_dir_all(&blocker).unwrap();
        let s = Storage::open(&path).unwrap();
        assert_eq!(values(&s.snapshot(200), 10), vec![Some(200); 10]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Whatever the applier has done, each snapshot's reads equal the state after exactly
        /// the batches up to its timestamp.
        #[test]
        fn snapshots_equal_a_model_of_the_batches_up_to_their_timestamp(
            batches in proptest::collection::vec(
                proptest::collection::vec((0u64..24, proptest::option::of(0i64..5)), 1..6),
                1..40,
            ),
            bounds in proptest::collection::vec((0u64..26, 0u64..26, proptest::bool::ANY), 4),
        ) {
            use std::collections::BTreeMap;
            let dir = tempfile::tempdir().unwrap();
            let s = Storage::open_with(
                &dir.path().join("db"),
                StorageOptions {
                    checkpoint_bytes: 2048,
                    max_memtable_len: 16,
                    apply_interval: std::time::Duration::from_millis(3),
                    // One entry per cache shard: evictions all the time, so readers' fills
                    // race the applier's puts and evictions.
                    doc_cache_entries: 16,
                    ..StorageOptions::default()
                },
            )
            .unwrap();
            let index_key = |id: u64, v: i64| {
                let mut k = vec![0, 0, 0, 9];
                k.extend_from_slice(&v.to_be_bytes());
                k.extend_from_slice(&DocumentId::new(TableNumber(7), id).to_bytes());
                k
            };
            let mut model: BTreeMap<u64, i64> = BTreeMap::new();
            let mut snaps = Vec::new();
            for (n, ops) in batches.iter().enumerate() {
                let mut w = WriteSet::default();
                for (id, v) in ops {
                    let doc_id = DocumentId::new(TableNumber(7), *id);
                    let old = w.docs.get(&doc_id).cloned().map(|d| d.map(|d| match *d {
                        Value::Int64(x) => x,
                        _ => unreachable!(),
                    })).unwrap_or(model.get(id).copied());
                    if let Some(o) = old {
                        w.index_entries.insert(index_key(*id, o), false);
                    }
                    match v {
                        Some(v) => {
                            w.docs.insert(doc_id, Some(Arc::new(Value::Int64(*v))));
                            w.index_entries.insert(index_key(*id, *v), true);
                        }
                        None => {
                            w.docs.insert(doc_id, None);
                        }
                    }
                }
                for (id, doc) in &w.docs {
                    match doc {
                        Some(d) => { model.insert(id.internal, match **d { Value::Int64(x) => x, _ => unreachable!() }); }
                        None => { model.remove(&id.internal); }
                    }
                }
                w.ensure_encoded().unwrap();
                let ts = (n as u64 + 1) * 10;
                let snap = commit(&s, w, ts);
                // Reads while the applier works (each miss fills the cache from redb).
                for id in 0..24u64 {
                    let got = snap.get(&DocumentId::new(TableNumber(7), id)).unwrap()
                        .map(|v| match *v { Value::Int64(x) => x, _ => unreachable!() });
                    proptest::prop_assert_eq!(got, model.get(&id).copied());
                }
                snaps.push((snap, model.clone()));
            }
            for (snap, model) in &snaps {
                for id in 0..24u64 {
                    let got = snap.get(&DocumentId::new(TableNumber(7), id)).unwrap()
                        .map(|v| match *v { Value::Int64(x) => x, _ => unreachable!() });
                    proptest::prop_assert_eq!(got, model.get(&id).copied());
                }
                for (a, b, desc) in &bounds {
                    let (lo, hi) = (DocumentId::new(TableNumber(7), *a.min(b)).to_bytes(), DocumentId::new(TableNumber(7), *a.max(b)).to_bytes());
                    let ids: Vec<Vec<u8>> = snap.doc_keys(&lo, Some(&hi), *desc).unwrap().collect::<Result<_, _>>().unwrap();
                    let mut want: Vec<Vec<u8>> = model.range(*a.min(b)..*a.max(b))
                        .map(|(id, _)| DocumentId::new(TableNumber(7), *id).to_bytes().to_vec()).collect();
                    if *desc { want.reverse(); }
                    proptest::prop_assert_eq!(ids, want);
                    let keys: Vec<Vec<u8>> = snap.index_keys(&[0, 0, 0, 9], Some(&[0, 0, 0, 10]), *desc).unwrap().collect::<Result<_, _>>().unwrap();
                    let mut want: Vec<Vec<u8>> = model.iter().map(|(id, v)| index_key(*id, *v)).collect();
                    want.sort();
                    if *desc { want.reverse(); }
                    proptest::prop_assert_eq!(keys, want);
                }
            }
            drop(snaps);
            s.shut_down();
            drop(s);
            // Reopened: the final state, from redb alone.
            let s = Storage::open(&dir.path().join("db")).unwrap();
            let snap = s.snapshot(u64::MAX);
            for id in 0..24u64 {
                let got = snap.get(&DocumentId::new(TableNumber(7), id)).unwrap()
                    .map(|v| match *v { Value::Int64(x) => x, _ => unreachable!() });
                proptest::prop_assert_eq!(got, model.get(&id).copied());
            }
        }
    }
}
