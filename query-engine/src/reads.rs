//! Read sets: every read a function makes, recorded as a key range of one index. They are the
//! engine's contract with the committer (optimistic concurrency) and with reactivity
//! (invalidation), so they must cover exactly what was examined — no more, no less.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::IndexId;

/// A half-open range of index keys `[start, end)`; `end == None` runs to the end of the index.
/// Keys exclude the 4-byte index prefix: for `by_id` the key is the 12 id bytes, for other
/// indexes the encoded field values followed by the id bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// The range holding exactly one key.
    pub fn point(key: &[u8]) -> Self {
        let mut end = key.to_vec();
        end.push(0);
        KeyRange {
            start: key.to_vec(),
            end: Some(end),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_ref().is_none_or(|e| key < e.as_slice())
    }

    pub fn is_empty(&self) -> bool {
        self.end.as_ref().is_some_and(|e| *e <= self.start)
    }
}

/// Keys a committed transaction touched: for each written document, its id under `by_id` and
/// its old and new key under every index of its table (both, even if equal, so a reader of
/// the document through any index sees the change).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TouchedKeys {
    pub keys: BTreeSet<(IndexId, Vec<u8>)>,
}

impl TouchedKeys {
    pub fn insert(&mut self, index: IndexId, key: Vec<u8>) {
        self.keys.insert((index, key));
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether any touched key of `index` lies in `range`.
    pub fn intersects(&self, index: IndexId, range: &KeyRange) -> bool {
        let lo = (index, range.start.clone());
        let mut it = self.keys.range(lo..);
        match it.next() {
            Some((i, k)) if *i == index => range.end.as_ref().is_none_or(|e| k < e),
            _ => false,
        }
    }
}

/// All ranges a transaction or query read, per index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadSet {
    ranges: BTreeMap<IndexId, Vec<KeyRange>>,
    len: usize,
}

impl ReadSet {
    pub fn record(&mut self, index: IndexId, range: KeyRange) {
        if range.is_empty() {
            return;
        }
        self.ranges.entry(index).or_default().push(range);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (IndexId, &KeyRange)> {
        self.ranges
            .iter()
            .flat_map(|(i, rs)| rs.iter().map(move |r| (*i, r)))
    }

    /// Whether a write touching `touched` would change anything this read set saw.
    pub fn conflicts_with(&self, touched: &TouchedKeys) -> bool {
        if touched.is_empty() {
            return false;
        }
        self.iter().any(|(i, r)| touched.intersects(i, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_range_holds_only_its_key() {
        let r = KeyRange::point(b"ab");
        assert!(r.contains(b"ab"));
        assert!(!r.contains(b"ab\x00"));
        assert!(!r.contains(b"aa"));
        assert!(!r.contains(b"b"));
    }

    #[test]
    fn conflicts_only_on_overlap() {
        let mut reads = ReadSet::default();
        reads.record(
            IndexId(1),
            KeyRange {
                start: b"m1-10".to_vec(),
                end: Some(b"m1-20".to_vec()),
            },
        );
        let mut w = TouchedKeys::default();
        w.insert(IndexId(1), b"m1-20".to_vec());
        w.insert(IndexId(2), b"m1-15".to_vec());
        assert!(!reads.conflicts_with(&w));
        w.insert(IndexId(1), b"m1-15".to_vec());
        assert!(reads.conflicts_with(&w));
    }
}
