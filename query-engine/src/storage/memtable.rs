//! The memtable: committed batches that redb does not hold yet, merged into persistent
//! (copy-on-write) ordered maps of documents and index entries. Cloning one is O(1), so every
//! snapshot carries the exact memtable of its timestamp, and a read is one lookup however many
//! batches it holds. The committer adds each batch to the active memtable; when the applier is
//! free the active memtable is frozen and handed to it whole, already sorted and with each key
//! once (a hot key written by a hundred batches is written to redb once).
//!
//! Index keys are held inline in the map's nodes when they are short (`IndexKey`), so a seek
//! compares bytes in the node it is searching instead of following a pointer per comparison,
//! and copying a node on write is one copy instead of a reference count per key.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use imbl::OrdMap;

use crate::doc_cache::{self, SizedDoc};
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

impl DocEntry {
    /// The document with its encoded length (`None`: deleted).
    pub fn sized(&self) -> Option<SizedDoc> {
        let encoded_len = self.encoded.as_ref().map(|e| e.len());
        Some(doc_cache::sized(self.doc.as_ref()?, encoded_len))
    }
}

/// Longest index key held inline. 62 bytes keep an `IndexKey` at 64 bytes and cover an index
/// on two or three short fields (key = 4-byte index id, the encoded fields, the 12-byte id).
const INLINE_KEY_BYTES: usize = 62;

/// An index storage key: inline when at most `INLINE_KEY_BYTES` long, shared otherwise.
/// Compares, and borrows, as its bytes.
#[derive(Clone)]
pub enum IndexKey {
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY_BYTES],
    },
    Shared(Arc<[u8]>),
}

impl IndexKey {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            IndexKey::Inline { len, bytes } => &bytes[..*len as usize],
            IndexKey::Shared(b) => b,
        }
    }
}

impl From<&[u8]> for IndexKey {
    fn from(key: &[u8]) -> Self {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE_KEY_BYTES => {
                let mut bytes = [0; INLINE_KEY_BYTES];
                bytes[..key.len()].copy_from_slice(key);
                IndexKey::Inline { len, bytes }
            }
            _ => IndexKey::Shared(Arc::from(key)),
        }
    }
}

impl Borrow<[u8]> for IndexKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for IndexKey {}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IndexKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x?}", self.as_bytes())
    }
}

#[derive(Clone, Default)]
pub struct Memtable {
    pub docs: OrdMap<DocumentId, DocEntry>,
    /// Index entry changes by storage key: `true` present, `false` removed.
    pub index: OrdMap<IndexKey, bool>,
    /// Latest value of each metadata entry written with the batches. Shared, so that a
    /// snapshot's copy of the memtable allocates nothing; a batch copies it on write.
    pub meta: Arc<BTreeMap<&'static str, Vec<u8>>>,
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
            self.index.insert(IndexKey::from(key.as_slice()), present);
        }
        Arc::make_mut(&mut self.meta).extend(meta);
        self.ts = ts;
    }

    /// The state of `id` here: `Some(None)` if deleted, `None` if not held.
    pub fn doc(&self, id: &DocumentId) -> Option<Option<SizedDoc>> {
        self.docs.get(id).map(DocEntry::sized)
    }

    /// Index entry changes with storage keys in `[start, end)`, in scan order.
    pub fn index_range<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
        desc: bool,
    ) -> Box<dyn Iterator<Item = (Vec<u8>, bool)> + 'a> {
        // The range is opened at the scan's far end and cut by comparing keys: a bounded end
        // costs the map a second seek (and a cursor) that a short scan never reaches.
        let entry = |(k, p): (&IndexKey, &bool)| (k.as_bytes().to_vec(), *p);
        if desc {
            let start = start.to_vec();
            let hi = end.map_or(Bound::Unbounded, Bound::Excluded);
            Box::new(
                self.index
                    .range::<_, [u8]>((Bound::Unbounded, hi))
                    .rev()
                    .take_while(move |(k, _)| k.as_bytes() >= start.as_slice())
                    .map(entry),
            )
        } else {
            let end = end.map(<[u8]>::to_vec);
            Box::new(
                self.index
                    .range::<_, [u8]>((Bound::Included(start), Bound::Unbounded))
                    .take_while(move |(k, _)| {
                        end.as_ref().is_none_or(|e| k.as_bytes() < e.as_slice())
                    })
                    .map(entry),
            )
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Keys around the inline limit, so both representations and their comparisons occur.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..4, INLINE_KEY_BYTES - 2..INLINE_KEY_BYTES + 3)
    }

    proptest! {
        /// An `IndexKey` holds its bytes exactly, orders like them whichever way each side is
        /// held, and a memtable range over such keys yields what a byte-ordered map would.
        #[test]
        fn index_keys_order_like_their_bytes(
            keys in proptest::collection::btree_map(key(), any::<bool>(), 0..40),
            a in key(),
            b in key(),
            desc in any::<bool>(),
        ) {
            let (ka, kb) = (IndexKey::from(a.as_slice()), IndexKey::from(b.as_slice()));
            prop_assert_eq!(ka.as_bytes(), a.as_slice());
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka == kb, a == b);

            let mut m = Memtable::default();
            for (k, present) in &keys {
                m.index.insert(IndexKey::from(k.as_slice()), *present);
            }
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let mut expect: Vec<(Vec<u8>, bool)> = keys
                .range(lo.clone()..hi.clone())
                .map(|(k, p)| (k.clone(), *p))
                .collect();
            if desc {
                expect.reverse();
            }
            let got: Vec<(Vec<u8>, bool)> = m.index_range(&lo, Some(&hi), desc).collect();
            prop_assert_eq!(got, expect);
        }
    }
}
