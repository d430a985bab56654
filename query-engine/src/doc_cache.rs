//! A cache of decoded documents, so hot reads skip redb and MessagePack decoding. The storage
//! applier puts the versions it has just written to redb (in commit order); a reader that had
//! to go to redb fills in the version it read there. Each entry is tagged with a commit
//! timestamp at or after the write of its version: the applier's with the write's, a reader's
//! with its snapshot's redb base. A reader at snapshot `ts` may use an entry only if its tag is
//! ≤ `ts` and the snapshot's in-memory layers (newer batches) do not have the document (then it
//! is the version visible at `ts`, because the applier replaces the entry on every later
//! write). Evicting an entry only sends readers back to storage.
//!
//! A fill must not bring back a version the applier has replaced since the reader's base: the
//! replacement may already be evicted again. So each shard remembers the highest tag it has
//! evicted, and a fill whose base is older than that is dropped (as is one for a document
//! already present). A replacement newer than the base is then either present (the fill is
//! dropped), evicted (its tag is above the base: dropped), or still to come from the applier
//! (it overwrites the fill, and until then readers newer than it find it in their memtables).
//!
//! Without fills, a document that is read but seldom written (a user, a meeting, a
//! participant row checked on every call) was evicted by the stream of newer writes within
//! about half a minute at 2,000 writes/s, and every later read went to redb and decoded it.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::id::DocumentId;
use crate::value::Value;

const SHARDS: usize = 16;

/// Ids are engine-assigned counters, not attacker-chosen keys, so a multiply-mix of their
/// words hashes them well and much faster than SipHash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<DocumentId, (u64, Option<SizedDoc>), BuildHasherDefault<IdHasher>>,
    /// Insertion order, for evicting the least recently put or filled entries.
    order: VecDeque<(DocumentId, u64)>,
    /// Highest tag evicted so far; fills with an older base are dropped.
    evicted_max: u64,
}

impl Shard {
    fn insert(&mut self, id: DocumentId, tag: u64, doc: Option<SizedDoc>, per_shard: usize) {
        self.map.insert(id, (tag, doc));
        self.order.push_back((id, tag));
        while self.map.len() > per_shard || self.order.len() > 2 * per_shard {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|(w, _)| *w == at) {
                self.map.remove(&old);
                self.evicted_max = self.evicted_max.max(at);
            }
        }
    }
}

pub struct DocCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

/// A decoded document with the length of its stored encoding (what a read counts against
/// `Limits::max_bytes_read`).
pub type SizedDoc = (Arc<Value>, usize);

/// `doc` with its stored length: that of its encoding, or `Value::size_bytes` while it has
/// none yet (a transaction's own writes are encoded only when it ends).
pub fn sized(doc: &Arc<Value>, encoded_len: Option<usize>) -> SizedDoc {
    (doc.clone(), encoded_len.unwrap_or_else(|| doc.size_bytes()))
}

/// What the cache knows of a document at a snapshot.
pub enum Cached {
    /// The visible version (`None`: deleted).
    Hit(Option<SizedDoc>),
    Miss,
}

impl DocCache {
    pub fn new(capacity: usize) -> Self {
        DocCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: (capacity / SHARDS).max(1),
        }
    }

    fn shard(&self, id: &DocumentId) -> &Mutex<Shard> {
        let h = id.internal ^ (id.table.0 as u64).rotate_left(17);
        &self.shards[(h as usize) % self.shards.len()]
    }

    pub fn get(&self, id: &DocumentId, ts: u64) -> Cached {
        match self.shard(id).lock().map.get(id) {
            Some((w, doc)) if *w <= ts => Cached::Hit(doc.clone()),
            _ => Cached::Miss,
        }
    }

    /// Records the version of `id` written at `ts` (called by the applier, in commit order,
    /// before it publishes the redb state that holds it).
    pub fn put(&self, id: DocumentId, ts: u64, doc: Option<SizedDoc>) {
        self.shard(&id).lock().insert(id, ts, doc, self.per_shard);
    }

    /// Offers the version of `id` a reader found in redb's state at `base` (the applied
    /// commit timestamp of its snapshot). Kept only if the cache has no entry for `id` and
    /// has evicted nothing newer than `base` (see the module comment).
    pub fn fill(&self, id: DocumentId, base: u64, doc: SizedDoc) {
        let mut s = self.shard(&id).lock();
        if base >= s.evicted_max && !s.map.contains_key(&id) {
            s.insert(id, base, Some(doc), self.per_shard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::TableNumber;

    #[test]
    fn visible_only_at_or_after_its_write_and_bounded() {
        let c = DocCache::new(32);
        let id = DocumentId::new(TableNumber(1), 1);
        c.put(id, 10, Some((Arc::new(Value::Int64(1)), 9)));
        assert!(matches!(c.get(&id, 9), Cached::Miss));
        assert!(matches!(c.get(&id, 10), Cached::Hit(Some(_))));
        c.put(id, 12, None);
        assert!(matches!(c.get(&id, 11), Cached::Miss));
        assert!(matches!(c.get(&id, 12), Cached::Hit(None)));
        for i in 0..1000 {
            c.put(DocumentId::new(TableNumber(2), i), 20 + i, None);
        }
        let total: usize = c.shards.iter().map(|s| s.lock().map.len()).sum();
        assert!(total <= 32);
    }

    #[test]
    fn a_fill_never_brings_back_a_replaced_version() {
        // One shard, one entry: every put evicts the previous one.
        let c = DocCache {
            shards: vec![Mutex::new(Shard::default())],
            per_shard: 1,
        };
        let (a, b) = (
            DocumentId::new(TableNumber(1), 1),
            DocumentId::new(TableNumber(1), 2),
        );
        let v = |n| (Arc::new(Value::Int64(n)), 9);
        // Absent and nothing evicted: a reader at base 5 fills in what redb had.
        c.fill(a, 5, v(1));
        assert!(matches!(c.get(&a, 5), Cached::Hit(Some((d, 9))) if *d == Value::Int64(1)));
        assert!(matches!(c.get(&a, 4), Cached::Miss));
        // Present: a fill does not overwrite.
        c.put(a, 7, Some(v(2)));
        c.fill(a, 6, v(1));
        assert!(matches!(c.get(&a, 7), Cached::Hit(Some((d, 9))) if *d == Value::Int64(2)));
        // The version put at 7 is evicted by b's: a reader whose base (6) predates it must not
        // bring back the version it read, but one at or after the eviction's tag may.
        c.put(b, 8, Some(v(9)));
        assert!(matches!(c.get(&a, 8), Cached::Miss));
        c.fill(a, 6, v(1));
        assert!(matches!(c.get(&a, 8), Cached::Miss));
        c.fill(a, 8, v(2));
        assert!(matches!(c.get(&a, 8), Cached::Hit(Some((d, 9))) if *d == Value::Int64(2)));
    }
}
