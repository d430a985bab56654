//! Frees retired memtables off the threads that serve reads and commits. Snapshots hold
//! memtable versions that share their nodes with later ones, so whichever holder lets go of a
//! frozen memtable last frees everything committed in an apply interval at once: ~15 ms of
//! work at 20,000 commits/s, and that holder was usually the subscription worker, which then
//! stalled every delivery once a second. Snapshots (and the committer, when it drops the
//! frozen memtable) hand their memtables to one background thread here instead. Sending is a
//! bounded, non-blocking `try_send`; when the queue is full the caller frees in place. The
//! thread pauses between drains so that senders wake it at most once per pause.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use super::memtable::Memtable;

/// Retired memtables queued at most; past this, callers free in place.
const CAPACITY: usize = 4096;
/// Pause after each drain, so a busy stream of retirements costs no wake-ups.
const PAUSE: Duration = Duration::from_millis(5);

/// A snapshot's memtable layers (or the committer's frozen memtable), to be freed.
type Retired = (Option<Arc<Memtable>>, Memtable);

#[derive(Clone)]
pub(crate) struct Reclaimer {
    tx: SyncSender<Retired>,
}

impl Reclaimer {
    /// Starts the thread; it ends when every `Reclaimer` clone is gone and the queue is empty.
    pub fn start() -> std::io::Result<Reclaimer> {
        let (tx, rx) = sync_channel(CAPACITY);
        crate::background::spawn("reclaimer", move || run(rx))?;
        Ok(Reclaimer { tx })
    }

    /// Frees `frozen` and `active` on the reclaimer's thread, or here if it is backed up.
    pub fn retire(&self, frozen: Option<Arc<Memtable>>, active: Memtable) {
        if frozen.is_none() && active.is_empty() {
            return;
        }
        match self.tx.try_send((frozen, active)) {
            Ok(()) => {}
            Err(TrySendError::Full(r) | TrySendError::Disconnected(r)) => drop(r),
        }
    }
}

fn run(rx: Receiver<Retired>) {
    while let Ok(first) = rx.recv() {
        drop(first);
        while let Ok(r) = rx.try_recv() {
            drop(r);
        }
        std::thread::sleep(PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{DocumentId, TableNumber};
    use crate::value::Value;
    use crate::writes::WriteSet;

    fn memtable(ts: u64) -> Memtable {
        let mut w = WriteSet::default();
        let id = DocumentId::new(TableNumber(7), ts);
        w.docs.insert(id, Some(Arc::new(Value::Int64(ts as i64))));
        w.ensure_encoded().unwrap();
        let mut m = Memtable::default();
        m.add(w, ts, Vec::new());
        m
    }

    /// What is retired is freed — on the thread, or in place once the thread is gone — and
    /// nothing else is kept alive.
    #[test]
    fn retired_memtables_are_freed() {
        let r = Reclaimer::start().unwrap();
        let frozen = Arc::new(memtable(1));
        let watch = Arc::downgrade(&frozen);
        r.retire(Some(frozen), memtable(2));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while watch.strong_count() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(watch.strong_count(), 0, "freed by the reclaimer");

        let gone = Reclaimer {
            tx: sync_channel(1).0,
        };
        let frozen = Arc::new(memtable(3));
        let watch = Arc::downgrade(&frozen);
        gone.retire(Some(frozen), Memtable::default());
        assert_eq!(watch.strong_count(), 0, "freed in place");
    }
}
