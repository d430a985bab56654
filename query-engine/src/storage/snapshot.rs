//! Read views. A `Snapshot` at commit timestamp `ts` is a redb read transaction holding every
//! batch up to some earlier timestamp (its base, as far as the applier had got), plus the
//! batches after that up to `ts`, kept in memory as layers until redb has them. Reads consult
//! the layers newest first, then the decoded-document cache, then redb, so a snapshot sees
//! exactly the batches up to `ts` whatever the applier is doing.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use redb::ReadOnlyTable;

use super::{CloseSignal, StorageError};
use crate::doc_cache::{Cached, DocCache};
use crate::id::{DocumentId, ID_BYTES};
use crate::key_merge::MergedKeys;
use crate::value::Value;
use crate::writes::WriteSet;

pub(super) type BytesTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// Result of a storage scan: keys in scan order.
pub type KeyIter<'a> = Box<dyn Iterator<Item = Result<Vec<u8>, StorageError>> + 'a>;

/// A committed batch that redb may not have yet: its documents (decoded and encoded) and
/// index entry changes. Shared by the snapshots that need it and the applier.
#[derive(Clone)]
pub struct Layer {
    pub ts: u64,
    pub writes: Arc<WriteSet>,
}

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
    /// Batches after `base.ts` up to `ts`, oldest first.
    pub(super) layers: Arc<[Layer]>,
}

impl Snapshot {
    pub fn get(&self, id: &DocumentId) -> Result<Option<Arc<Value>>, StorageError> {
        for layer in self.layers.iter().rev() {
            if let Some(doc) = layer.writes.docs.get(id) {
                return Ok(doc.clone());
            }
        }
        if let Cached::Hit(doc) = self.cache.get(id, self.ts) {
            return Ok(doc);
        }
        let key = id.to_bytes();
        match self.base.docs.get(key.as_slice())? {
            None => Ok(None),
            Some(guard) => decode_doc(id, guard.value()).map(|v| Some(Arc::new(v))),
        }
    }

    /// Engine metadata as redb holds it (written at open and by the applier; not layered).
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.base.meta.get(key)?.map(|g| g.value().to_vec()))
    }

    /// Index entry storage keys in `[start, end)`, ascending or descending.
    pub fn index_keys(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        desc: bool,
    ) -> Result<KeyIter<'_>, StorageError> {
        let base = scan_keys(&self.base.index, start, end, desc)?;
        if self.layers.is_empty() {
            return Ok(base);
        }
        let mut overlay = BTreeMap::new();
        let hi = end.map_or(Bound::Unbounded, Bound::Excluded);
        for layer in self.layers.iter() {
            for (k, present) in layer
                .writes
                .index_entries
                .range::<[u8], _>((Bound::Included(start), hi))
            {
                overlay.insert(k.clone(), *present);
            }
        }
        Ok(Box::new(MergedKeys::new(base, overlay, desc)))
    }

    /// Document ids (12-byte keys) in `[start, end)`, ascending or descending.
    pub fn doc_keys(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        desc: bool,
    ) -> Result<KeyIter<'_>, StorageError> {
        let base = scan_keys(&self.base.docs, start, end, desc)?;
        if self.layers.is_empty() {
            return Ok(base);
        }
        // Ids order like their byte form, so the first id not below `start` is `start`
        // zero-padded (or cut) to an id's length.
        let mut low = [0u8; ID_BYTES];
        let n = start.len().min(ID_BYTES);
        low[..n].copy_from_slice(&start[..n]);
        let low = DocumentId::from_bytes(&low).unwrap_or(DocumentId::new(
            crate::id::TableNumber(0),
            0,
        ));
        let mut overlay = BTreeMap::new();
        for layer in self.layers.iter() {
            for (id, doc) in layer.writes.docs.range(low..) {
                let k = id.to_bytes();
                if k.as_slice() < start {
                    continue;
                }
                if end.is_some_and(|e| k.as_slice() >= e) {
                    break;
                }
                overlay.insert(k.to_vec(), doc.is_some());
            }
        }
        Ok(Box::new(MergedKeys::new(base, overlay, desc)))
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

    /// Batches held in memory by this snapshot (not yet in its redb view).
    pub fn layer_count(&self) -> usize {
        self.layers.len()
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
    rmp_serde::from_slice(bytes)
        .map_err(|e| StorageError::CorruptDocument(id.to_string(), e.to_string()))
}
