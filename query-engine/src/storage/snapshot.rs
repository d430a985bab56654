//! Read views. A `Snapshot` at commit timestamp `ts` is redb's state after some earlier
//! commit (its base, as far as the applier had got) plus the batches after that up to `ts`:
//! the memtable being applied (frozen) and the active one, each as it was at `ts`. Reads
//! consult the active memtable, then the frozen one, then the decoded-document cache, then
//! redb, so a snapshot sees exactly the batches up to `ts` whatever the applier is doing.

use std::sync::Arc;

use redb::ReadOnlyTable;

use super::memtable::Memtable;
use super::reclaim::Reclaimer;
use super::{CloseSignal, StorageError};
use crate::doc_cache::{Cached, DocCache, SizedDoc};
use crate::id::{DocumentId, ID_BYTES};
use crate::key_merge::{MergedKeys, OverlayIter};
use crate::value::Value;

pub(super) type BytesTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// Result of a storage scan: keys in scan order.
pub type KeyIter<'a> = Box<dyn Iterator<Item = Result<Vec<u8>, StorageError>> + 'a>;

/// redb's state after the applier's transaction that applied every batch up to `ts`.
pub(super) struct Base {
    pub ts: u64,
    pub docs: BytesTable,
    pub index: BytesTable,
    pub meta: ReadOnlyTable<&'static str, &'static [u8]>,
    pub _closed: Arc<CloseSignal>,
}

/// A consistent read-only view at commit timestamp `ts`.
pub struct Snapshot {
    pub ts: u64,
    pub(super) cache: Arc<DocCache>,
    pub(super) base: Arc<Base>,
    /// Batches after `base.ts` that the applier is writing into redb.
    pub(super) frozen: Option<Arc<Memtable>>,
    /// Batches after those, up to `ts`.
    pub(super) active: Memtable,
    pub(super) reclaimer: Reclaimer,
}

impl Drop for Snapshot {
    /// The last holder of a memtable frees all of it; that happens on the reclaimer's thread.
    fn drop(&mut self) {
        self.reclaimer
            .retire(self.frozen.take(), std::mem::take(&mut self.active));
    }
}

impl Snapshot {
    pub fn get(&self, id: &DocumentId) -> Result<Option<Arc<Value>>, StorageError> {
        Ok(self.get_sized(id)?.map(|(doc, _)| doc))
    }

    /// The document with the length of its stored encoding.
    pub fn get_sized(&self, id: &DocumentId) -> Result<Option<SizedDoc>, StorageError> {
        let held = self
            .active
            .doc(id)
            .or_else(|| self.frozen.as_ref().and_then(|f| f.doc(id)));
        if let Some(doc) = held {
            return Ok(doc);
        }
        if let Cached::Hit(doc) = self.cache.get(id, self.ts) {
            return Ok(doc);
        }
        let key = id.to_bytes();
        match self.base.docs.get(key.as_slice())? {
            None => Ok(None),
            Some(guard) => {
                let bytes = guard.value();
                let doc = (Arc::new(decode_doc(id, bytes)?), bytes.len());
                self.cache.fill(*id, self.base.ts, doc.clone());
                Ok(Some(doc))
            }
        }
    }

    /// Engine metadata as redb holds it (written at open and by the applier; not layered).
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.base.meta.get(key)?.map(|g| g.value().to_vec()))
    }

    /// Lays the memtables' entries (frozen, then active) over a scan of redb.
    fn layered<'a>(
        &'a self,
        base: KeyIter<'a>,
        desc: bool,
        range: impl Fn(&'a Memtable) -> OverlayIter<'a>,
    ) -> KeyIter<'a> {
        let mut keys = base;
        for m in self.frozen.as_deref().into_iter().chain([&self.active]) {
            if !m.is_empty() {
                keys = Box::new(MergedKeys::new(keys, range(m), desc));
            }
        }
        keys
    }

    /// Index entry storage keys in `[start, end)`, ascending or descending.
    pub fn index_keys(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        desc: bool,
    ) -> Result<KeyIter<'_>, StorageError> {
        let base = scan_keys(&self.base.index, start, end, desc)?;
        Ok(self.layered(base, desc, |m| m.index_range(start, end, desc)))
    }

    /// Document ids (12-byte keys) in `[start, end)`, ascending or descending.
    pub fn doc_keys(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        desc: bool,
    ) -> Result<KeyIter<'_>, StorageError> {
        let base = scan_keys(&self.base.docs, start, end, desc)?;
        Ok(self.layered(base, desc, |m| m.doc_range(start, end, desc)))
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

pub(super) fn decode_doc(id: &DocumentId, bytes: &[u8]) -> Result<Value, StorageError> {
    crate::msgpack_reader::value_from_slice(bytes)
        .map_err(|e| StorageError::CorruptDocument(id.to_string(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::TableNumber;
    use crate::obj;

    #[test]
    fn documents_decode_and_corrupt_ones_say_why_as_before() {
        let id = DocumentId::new(TableNumber(3), 9);
        let doc = obj! { "text" => "hi", "n" => 1i64, "f" => 0.5 };
        let bytes = rmp_serde::to_vec_named(&doc).expect("encode");
        assert_eq!(decode_doc(&id, &bytes).expect("decode"), doc);
        // Reserved marker, truncated, duplicate key: the error rmp_serde gave, for this id.
        for bad in [
            &[0xc1][..],
            &bytes[..bytes.len() - 1],
            &[0x82, 0xa1, b'a', 1, 0xa1, b'a', 2],
        ] {
            let Err(StorageError::CorruptDocument(at, why)) = decode_doc(&id, bad) else {
                panic!("{bad:02x?} decoded");
            };
            assert_eq!(at, id.to_string());
            assert_eq!(
                Some(why),
                rmp_serde::from_slice::<Value>(bad)
                    .err()
                    .map(|e| e.to_string())
            );
        }
    }
}
