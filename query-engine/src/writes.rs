//! Write sets: the buffered effects of a transaction — final document states and the index
//! entry changes they imply — and the keys they touched. A write set is also an overlay that
//! reads consult before storage, which gives read-your-writes inside a transaction and lets
//! the committer run a transaction on top of the earlier members of its batch.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::catalog::IndexId;
use crate::doc_cache::{sized, SizedDoc};
use crate::id::DocumentId;
use crate::reads::TouchedKeys;
use crate::value::Value;
use crate::wal::{doc_entry_bytes, index_entry_bytes};

/// Storage key of an index entry: 4-byte big-endian index id, then the index key.
pub fn storage_key(index: IndexId, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len());
    out.extend_from_slice(&index.0.to_be_bytes());
    out.extend_from_slice(key);
    out
}

#[derive(Clone, Debug, Default)]
pub struct WriteSet {
    /// Final state of each written document: `None` means deleted.
    pub docs: BTreeMap<DocumentId, Option<Arc<Value>>>,
    /// MessagePack of each present document in `docs`, encoded where the transaction ran so
    /// the single committer thread does not have to.
    pub encoded: BTreeMap<DocumentId, Vec<u8>>,
    /// Index entry changes by storage key: `true` inserted, `false` removed.
    pub index_entries: BTreeMap<Vec<u8>, bool>,
    /// Keys this write set touched (for conflict checks and invalidation).
    pub touched: TouchedKeys,
    pub bytes_written: usize,
}

impl WriteSet {
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Looks up a document written here: `Some(None)` if deleted here, `None` if untouched.
    /// With its stored length (`doc_cache::sized`).
    pub fn doc(&self, id: &DocumentId) -> Option<Option<SizedDoc>> {
        let doc = self.docs.get(id)?;
        Some(
            doc.as_ref()
                .map(|d| sized(d, self.encoded.get(id).map(Vec::len))),
        )
    }

    /// Bytes this write set's entries take in a log record (`wal`); present documents count
    /// their encoding, so encode them first (`ensure_encoded`).
    pub fn record_bytes(&self) -> usize {
        let docs: usize = self
            .docs
            .iter()
            .map(|(id, doc)| {
                let encoded = doc
                    .as_ref()
                    .map(|_| self.encoded.get(id).map_or(0, Vec::len));
                doc_entry_bytes(encoded)
            })
            .sum();
        let index: usize = self
            .index_entries
            .keys()
            .map(|k| index_entry_bytes(k.len()))
            .sum();
        docs + index
    }

    /// Encodes every present document that has no encoding yet.
    pub fn ensure_encoded(&mut self) -> Result<(), String> {
        for (id, doc) in &self.docs {
            if let Some(doc) = doc {
                if !self.encoded.contains_key(id) {
                    let bytes = rmp_serde::to_vec_named(doc.as_ref())
                        .map_err(|e| format!("cannot encode document {id}: {e}"))?;
                    self.encoded.insert(*id, bytes);
                }
            }
        }
        Ok(())
    }

    /// Layers `later` (a transaction validated against everything in `self`) on top.
    pub fn merge(&mut self, mut later: WriteSet) {
        for (id, doc) in &later.docs {
            if doc.is_none() {
                self.encoded.remove(id);
            }
        }
        self.docs.extend(later.docs);
        self.encoded.extend(later.encoded);
        self.index_entries.extend(later.index_entries);
        self.touched
            .keys
            .extend(std::mem::take(&mut later.touched.keys));
        self.bytes_written += later.bytes_written;
    }

    /// Index entries of `index` within storage keys `[start, end)`, in key order.
    pub fn entries_in<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> impl DoubleEndedIterator<Item = (&'a Vec<u8>, bool)> + 'a {
        use std::ops::Bound;
        let lo = Bound::Included(start.to_vec());
        let hi = match end {
            // An end before the start would make the map panic; the range is empty.
            Some(e) => Bound::Excluded(e.max(start).to_vec()),
            None => Bound::Unbounded,
        };
        self.index_entries.range((lo, hi)).map(|(k, v)| (k, *v))
    }
}
