//! The invalidation index: from the read ranges of live executions to the executions, so a
//! commit finds the executions it affects without scanning the subscribed ones.
//!
//! Every key inside a range `[start, end)` begins with the longest common prefix of `start`
//! and `end` (a key that diverged from that prefix would sort outside the range). So each range
//! is filed under `(index, common prefix)` in a hash map, and a written key is matched by
//! looking up its own prefixes — only the prefix lengths actually in use for that index. Point
//! reads by id land in a bucket of their own; a meeting's ranges share the meeting's bucket;
//! ranges of other meetings are never looked at. Cost per written key: one hash probe per
//! distinct prefix length in use, plus the ranges in the matching buckets.

use std::collections::{BTreeMap, HashMap};

use roaring::RoaringBitmap;

use crate::catalog::IndexId;
use crate::reads::{KeyRange, ReadSet, TouchedKeys};

pub type ExecId = u32;

/// Ranges filed under one (index, common prefix), with the execution that read each.
type Bucket = Vec<(KeyRange, ExecId)>;

#[derive(Default)]
pub struct InvalidationIndex {
    buckets: HashMap<(IndexId, Vec<u8>), Bucket>,
    /// Per index: prefix length in use -> number of ranges filed under that length.
    prefix_lens: HashMap<IndexId, BTreeMap<usize, usize>>,
    ranges: usize,
}

fn common_prefix(r: &KeyRange) -> &[u8] {
    match &r.end {
        None => &[],
        Some(end) => {
            let n = r
                .start
                .iter()
                .zip(end.iter())
                .take_while(|(a, b)| a == b)
                .count();
            &r.start[..n]
        }
    }
}

impl InvalidationIndex {
    pub fn insert(&mut self, exec: ExecId, reads: &ReadSet) {
        for (index, range) in reads.iter() {
            let prefix = common_prefix(range).to_vec();
            *self
                .prefix_lens
                .entry(index)
                .or_default()
                .entry(prefix.len())
                .or_default() += 1;
            self.buckets
                .entry((index, prefix))
                .or_default()
                .push((range.clone(), exec));
            self.ranges += 1;
        }
    }

    pub fn remove(&mut self, exec: ExecId, reads: &ReadSet) {
        for (index, range) in reads.iter() {
            let prefix = common_prefix(range).to_vec();
            let key = (index, prefix);
            let Some(bucket) = self.buckets.get_mut(&key) else {
                continue;
            };
            let Some(pos) = bucket.iter().position(|(r, e)| *e == exec && r == range) else {
                continue;
            };
            bucket.swap_remove(pos);
            self.ranges -= 1;
            if bucket.is_empty() {
                self.buckets.remove(&key);
            }
            if let Some(lens) = self.prefix_lens.get_mut(&index) {
                if let Some(c) = lens.get_mut(&key.1.len()) {
                    *c -= 1;
                    if *c == 0 {
                        lens.remove(&key.1.len());
                    }
                }
                if lens.is_empty() {
                    self.prefix_lens.remove(&index);
                }
            }
        }
    }

    /// Adds to `out` every execution with a range containing one of `touched`.
    pub fn affected(&self, touched: &TouchedKeys, out: &mut RoaringBitmap) {
        let mut probe: (IndexId, Vec<u8>) = (IndexId(0), Vec::new());
        for (index, key) in &touched.keys {
            let Some(lens) = self.prefix_lens.get(index) else {
                continue;
            };
            for &len in lens.keys() {
                if len > key.len() {
                    break;
                }
                probe.0 = *index;
                probe.1.clear();
                probe.1.extend_from_slice(&key[..len]);
                if let Some(bucket) = self.buckets.get(&probe) {
                    for (range, exec) in bucket {
                        if range.contains(key) {
                            out.insert(*exec);
                        }
                    }
                }
            }
        }
    }

    /// Number of ranges filed.
    pub fn len(&self) -> usize {
        self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn range(s: &[u8], e: Option<&[u8]>) -> KeyRange {
        KeyRange {
            start: s.to_vec(),
            end: e.map(|e| e.to_vec()),
        }
    }

    proptest! {
        /// The index finds exactly the executions a linear scan of all ranges finds.
        #[test]
        fn matches_linear_scan(
            ranges in proptest::collection::vec(
                (0u32..3, proptest::collection::vec(0u8..4, 0..4), proptest::option::of(proptest::collection::vec(0u8..4, 0..4))),
                0..40),
            keys in proptest::collection::vec((0u32..3, proptest::collection::vec(0u8..4, 0..5)), 1..10),
            remove_every in 2usize..5,
        ) {
            let mut idx = InvalidationIndex::default();
            let mut live = Vec::new();
            for (i, (ix, s, e)) in ranges.iter().enumerate() {
                let mut rs = ReadSet::default();
                rs.record(IndexId(*ix), range(s, e.as_deref()));
                idx.insert(i as u32, &rs);
                live.push((i as u32, rs));
            }
            let mut kept = Vec::new();
            for (n, (exec, rs)) in live.into_iter().enumerate() {
                if n % remove_every == 0 { idx.remove(exec, &rs); } else { kept.push((exec, rs)); }
            }
            let mut touched = TouchedKeys::default();
            for (ix, k) in &keys { touched.insert(IndexId(*ix), k.clone()); }
            let mut found = RoaringBitmap::new();
            idx.affected(&touched, &mut found);
            let expected: RoaringBitmap = kept.iter()
                .filter(|(_, rs)| rs.conflicts_with(&touched))
                .map(|(e, _)| *e).collect();
            prop_assert_eq!(found, expected);
        }
    }
}
