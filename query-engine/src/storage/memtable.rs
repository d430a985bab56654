//! The memtable: committed batches that redb does not hold yet, merged into persistent
//! (copy-on-write) ordered maps of documents and index entries. Cloning one is O(1), so every
//! snapshot carries the exact memtable of its timestamp, and a read is one lookup however many
//! batches it holds. The committer adds each batch to the active memtable; when the applier is
//! free the active memtable is frozen and handed to it whole, already sorted and with each key
//! once (a hot key written by a hundred batches is written to redb once).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use imbl::OrdMap;

use crate::id::{DocumentId, ID_BYTES};
use crate::value::Value;
use crate::writes::WriteSet;

/// The latest state of one document in a memtable.
#[derive(Clone, Debug)]
pub struct DocEntry {
    /// Commit timestamp of the batch that wrote it.
    pub ts: u64,
    /// `None`: deleted.
    pub doc: Option<Arc<Value>>,
    /// MessagePack of `doc` (present documents only).
    pub encoded: Option<Arc<Vec<u8>>>,
}

#[derive(Clone, Default)]
pub struct Memtable {
    pub docs: OrdMap<DocumentId, DocEntry>,
    /// Index entry changes by storage key: `true` present, `false` removed.
    pub index: OrdMap<Arc<[u8]>, bool>,
    /// Latest value of each metadata entry written with the batches.
    pub meta: BTreeMap<&'static str, Vec<u8>>,
    /// Commit timestamp of the newest batch held (0 when empty).
    pub ts: u64,
}

impl Memtable {
    pub fn is_empty(&self) -> bool {
        self.ts == 0
    }

    /// Documents and index entries held.
    pub fn len(&self) -> usize {
        self.docs.len() + self.index.len()
    }

    /// Adds a batch committed at `ts` (newer than every batch held). Every present document
    /// must have its encoding in `writes.encoded`.
    pub fn add(&mut self, writes: WriteSet, ts: u64, meta: Vec<(&'static str, Vec<u8>)>) {
        let WriteSet {
            docs,
            mut encoded,
            index_entries,
            ..
        } = writes;
        for (id, doc) in docs {
            let encoded = doc.as_ref().and_then(|_| encoded.remove(&id)).map(Arc::new);
            self.docs.insert(id, DocEntry { ts, doc, encoded });
        }
        for (key, present) in index_entries {
            self.index.insert(Arc::from(key), present);
        }
        self.meta.extend(meta);
        self.ts = ts;
    }

    /// The state of `id` here: `Some(None)` if deleted, `None` if not held.
    pub fn doc(&self, id: &DocumentId) -> Option<&Option<Arc<Value>>> {
        self.docs.get(id).map(|e| &e.doc)
    }

    /// Index entry changes with storage keys in `[start, end)`, in scan order.
    pub fn index_range<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
        desc: bool,
    ) -> Box<dyn Iterator<Item = (Vec<u8>, bool)> + 'a> {
        let hi = end.map_or(Bound::Unbounded, Bound::Excluded);
        let range = self
            .index
            .range::<_, [u8]>((Bound::Included(start), hi))
            .map(|(k, p)| (k.to_vec(), *p));
        if desc {
            Box::new(range.rev())
        } else {
            Box::new(range)
        }
    }

    /// Documents (as 12-byte keys, present or deleted) with keys in `[start, end)`, in scan
    /// order.
    pub fn doc_range<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
        desc: bool,
    ) -> Box<dyn Iterator<Item = (Vec<u8>, bool)> + 'a> {
        // Ids order like their byte form, so the ids in the range are those from `start`
        // zero-padded (or cut) to an id's length, filtered by the exact byte bounds.
        let mut low = [0u8; ID_BYTES];
        let n = start.len().min(ID_BYTES);
        low[..n].copy_from_slice(&start[..n]);
        let low = DocumentId::from_bytes(&low);
        let (start, end) = (start.to_vec(), end.map(<[u8]>::to_vec));
        let below_end = move |k: &Vec<u8>| end.as_ref().is_none_or(|e| k < e);
        let range = low
            .into_iter()
            .flat_map(move |low| self.docs.range(low..))
            .map(|(id, e)| (id.to_bytes().to_vec(), e.doc.is_some()));
        if desc {
            Box::new(
                range
                    .rev()
                    .skip_while(move |(k, _)| !below_end(k))
                    .take_while(move |(k, _)| k >= &start),
            )
        } else {
            Box::new(
                range
                    .skip_while(move |(k, _)| k < &start)
                    .take_while(move |(k, _)| below_end(k)),
            )
        }
    }
}
