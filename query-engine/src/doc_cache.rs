//! A cache of decoded documents, filled only by the storage applier with the versions it has
//! just written to redb (in commit order), so hot reads skip redb and MessagePack decoding.
//! Each entry is tagged with the commit timestamp that wrote it; a reader at snapshot `ts` may
//! use an entry only if its tag is ≤ `ts` and the snapshot's in-memory layers (newer batches)
//! do not have the document (then it is the version visible at `ts`, because the applier
//! replaces the entry on every later write). Evicting an entry
//! only sends readers back to storage, so the cache is always correct.

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
    map: HashMap<DocumentId, (u64, Option<Arc<Value>>), BuildHasherDefault<IdHasher>>,
    /// Write order, for evicting the least recently written entries.
    order: VecDeque<(DocumentId, u64)>,
}

pub struct DocCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

/// What the cache knows of a document at a snapshot.
pub enum Cached {
    /// The visible version (`None`: deleted).
    Hit(Option<Arc<Value>>),
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
        &self.shards[(h as usize) % SHARDS]
    }

    pub fn get(&self, id: &DocumentId, ts: u64) -> Cached {
        match self.shard(id).lock().map.get(id) {
            Some((w, doc)) if *w <= ts => Cached::Hit(doc.clone()),
            _ => Cached::Miss,
        }
    }

    /// Records the version of `id` written at `ts` (called by the applier, in commit order).
    pub fn put(&self, id: DocumentId, ts: u64, doc: Option<Arc<Value>>) {
        let mut s = self.shard(&id).lock();
        s.map.insert(id, (ts, doc));
        s.order.push_back((id, ts));
        while s.map.len() > self.per_shard || s.order.len() > 2 * self.per_shard {
            let Some((old, at)) = s.order.pop_front() else {
                break;
            };
            if s.map.get(&old).is_some_and(|(w, _)| *w == at) {
                s.map.remove(&old);
            }
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
        c.put(id, 10, Some(Arc::new(Value::Int64(1))));
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
}
