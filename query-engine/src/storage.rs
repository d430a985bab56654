//! Storage on redb: documents by id, index entries by (index, key), and engine metadata.
//! The committer is the only writer; everyone else reads a `Snapshot`, a redb read
//! transaction pinned at one commit timestamp.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadOnlyTable, TableDefinition};

use crate::doc_cache::{Cached, DocCache};
use crate::id::{DocumentId, ID_BYTES};
use crate::value::Value;
use crate::wal::{Record, Wal};
use crate::writes::WriteSet;

const DOCUMENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("documents");
const INDEX_ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("index_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Write-ahead log size that triggers a checkpoint (a durable redb commit, then an empty log).
const CHECKPOINT_WAL_BYTES: u64 = 64 << 20;
/// Decoded documents kept by the committer's cache.
const DOC_CACHE_ENTRIES: usize = 200_000;

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
    db: Database,
    wal: parking_lot::Mutex<Wal>,
    cache: Arc<DocCache>,
    /// Shared with every snapshot (read transactions keep the file open too) and declared
    /// last, since fields drop in order: it signals once the file is really closed.
    closed: Arc<CloseSignal>,
}

type Closed = Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>;

#[derive(Default)]
struct CloseSignal(Closed);

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

impl Storage {
    pub fn open(path: &Path) -> Result<Storage, StorageError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(DOCUMENTS)?;
        txn.open_table(INDEX_ENTRIES)?;
        txn.open_table(META)?;
        txn.commit()?;
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push(".wal");
        let (mut wal, records) = Wal::open(Path::new(&wal_path)).map_err(StorageError::Wal)?;
        if !records.is_empty() {
            let durable_ts = {
                let r = db.begin_read()?;
                let meta = r.open_table(META)?;
                let ts = meta
                    .get("last_ts")?
                    .and_then(|g| g.value().try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                ts
            };
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
            wal.truncate().map_err(StorageError::Wal)?;
        }
        Ok(Storage {
            db,
            wal: parking_lot::Mutex::new(wal),
            cache: Arc::new(DocCache::new(DOC_CACHE_ENTRIES)),
            closed: Arc::new(CloseSignal::default()),
        })
    }

    pub fn close_waiter(&self) -> CloseWaiter {
        CloseWaiter(self.closed.0.clone())
    }

    pub fn snapshot(&self, ts: u64) -> Result<Snapshot, StorageError> {
        let txn = self.db.begin_read()?;
        Ok(Snapshot {
            ts,
            cache: self.cache.clone(),
            docs: txn.open_table(DOCUMENTS)?,
            index: txn.open_table(INDEX_ENTRIES)?,
            meta: txn.open_table(META)?,
            _closed: self.closed.clone(),
        })
    }

    /// Makes a durable batch's document versions visible to cached reads at `ts` and later.
    pub fn cache_committed(&self, writes: &WriteSet, ts: u64) {
        for (id, doc) in &writes.docs {
            self.cache.put(*id, ts, doc.clone());
        }
    }

    /// Writes a batch's effects and metadata. `Logged` returns once the batch is in the fsynced
    /// write-ahead log (redb applies it without an fsync; checkpoints make that durable);
    /// `Immediate` is a durable redb commit; `Volatile` is neither (benchmarks that say so).
    pub fn commit(
        &self,
        writes: &WriteSet,
        meta: &[(&str, Vec<u8>)],
        mode: CommitMode,
    ) -> Result<(), StorageError> {
        let mut docs = Vec::with_capacity(writes.docs.len());
        for (id, doc) in &writes.docs {
            let bytes = match (doc, writes.encoded.get(id)) {
                (None, _) => None,
                (Some(_), Some(encoded)) => Some(encoded.clone()),
                (Some(doc), None) => {
                    Some(rmp_serde::to_vec_named(doc.as_ref()).map_err(|e| {
                        StorageError::CorruptDocument(id.to_string(), e.to_string())
                    })?)
                }
            };
            docs.push((id.to_bytes(), bytes));
        }
        let mut wal = match mode {
            CommitMode::Logged => {
                let record = Record {
                    ts: meta
                        .iter()
                        .find(|(k, _)| *k == "last_ts")
                        .and_then(|(_, v)| v.as_slice().try_into().ok())
                        .map(u64::from_be_bytes)
                        .unwrap_or(0),
                    meta: meta
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                    docs: Vec::new(),
                    index: Vec::new(),
                };
                let bytes = encode_record(record, &docs, writes);
                let mut wal = self.wal.lock();
                wal.append_durable(&bytes).map_err(StorageError::Wal)?;
                Some(wal)
            }
            _ => None,
        };
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if mode == CommitMode::Immediate {
            Durability::Immediate
        } else {
            Durability::None
        });
        apply(
            &txn,
            docs.iter().map(|(id, d)| (id.as_slice(), d.as_deref())),
            writes.index_entries.iter().map(|(k, p)| (k.as_slice(), *p)),
            meta.iter().map(|(k, v)| (*k, v.as_slice())),
        )?;
        txn.commit()?;
        if let Some(wal) = wal.as_mut() {
            if wal.len() > CHECKPOINT_WAL_BYTES {
                let mut txn = self.db.begin_write()?;
                txn.set_durability(Durability::Immediate);
                txn.commit()?;
                wal.truncate().map_err(StorageError::Wal)?;
            }
        }
        Ok(())
    }
}

/// How a commit is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    Logged,
    Immediate,
    Volatile,
}

/// Encodes a batch as a log record without copying its documents twice.
fn encode_record(
    mut record: Record,
    docs: &[([u8; ID_BYTES], Option<Vec<u8>>)],
    writes: &WriteSet,
) -> Vec<u8> {
    record.docs = docs.to_vec();
    record.index = writes
        .index_entries
        .iter()
        .map(|(k, p)| (k.clone(), *p))
        .collect();
    record.encode()
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

/// A consistent read-only view at commit timestamp `ts`.
pub struct Snapshot {
    pub ts: u64,
    cache: Arc<DocCache>,
    docs: BytesTable,
    index: BytesTable,
    meta: ReadOnlyTable<&'static str, &'static [u8]>,
    _closed: Arc<CloseSignal>,
}

/// Result of a storage scan: keys in scan order, stopping at `limit`.
pub type KeyIter<'a> = Box<dyn Iterator<Item = Result<Vec<u8>, StorageError>> + 'a>;

impl Snapshot {
    pub fn get(&self, id: &DocumentId) -> Result<Option<Arc<Value>>, StorageError> {
        if let Cached::Hit(doc) = self.cache.get(id, self.ts) {
            return Ok(doc);
        }
        let key = id.to_bytes();
        match self.docs.get(key.as_slice())? {
            None => Ok(None),
            Some(guard) => decode_doc(id, guard.value()).map(|v| Some(Arc::new(v))),
        }
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.meta.get(key)?.map(|g| g.value().to_vec()))
    }

    /// Index entry storage keys in `[start, end)`, ascending or descending.
    pub fn index_keys(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        desc: bool,
    ) -> Result<KeyIter<'_>, StorageError> {
        scan_keys(&self.index, start, end, desc)
    }

    /// Document ids (12-byte keys) in `[start, end)`, ascending or descending.
    pub fn doc_keys(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        desc: bool,
    ) -> Result<KeyIter<'_>, StorageError> {
        scan_keys(&self.docs, start, end, desc)
    }

    /// Whether any document of the table with this 4-byte prefix exists.
    pub fn table_has_documents(&self, table_prefix: &[u8; 4]) -> Result<bool, StorageError> {
        let mut end = table_prefix.to_vec();
        end.push(0xff);
        end.extend_from_slice(&[0xff; ID_BYTES]);
        Ok(self
            .doc_keys(table_prefix, Some(&end), false)?
            .next()
            .is_some())
    }
}

type BytesTable = ReadOnlyTable<&'static [u8], &'static [u8]>;
type Entry<'a> = (
    redb::AccessGuard<'a, &'static [u8]>,
    redb::AccessGuard<'a, &'static [u8]>,
);

fn scan_keys<'a>(
    table: &'a BytesTable,
    start: &[u8],
    end: Option<&[u8]>,
    desc: bool,
) -> Result<KeyIter<'a>, StorageError> {
    let range = match end {
        Some(e) => table.range::<&[u8]>(start..e)?,
        None => table.range::<&[u8]>(start..)?,
    };
    let key = |r: Result<Entry<'_>, redb::StorageError>| {
        r.map(|(k, _)| k.value().to_vec())
            .map_err(StorageError::from)
    };
    Ok(if desc {
        Box::new(range.rev().map(key))
    } else {
        Box::new(range.map(key))
    })
}

fn decode_doc(id: &DocumentId, bytes: &[u8]) -> Result<Value, StorageError> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| StorageError::CorruptDocument(id.to_string(), e.to_string()))
}
