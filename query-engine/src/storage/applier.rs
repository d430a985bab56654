//! The applier: one thread that writes committed batches into redb after they were
//! acknowledged (they are durable in the write-ahead log already), so the committer's critical
//! path is validation plus one small sequential fsync. It takes every batch waiting and
//! applies them in one redb transaction, which is where it saves most: a hot page is copied
//! and written once per transaction, not once per batch. Then it publishes the new redb view
//! as the base for new snapshots. A checkpoint job makes redb durable and deletes the log
//! segments that are now redundant.

use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use arc_swap::ArcSwap;
use redb::{Database, Durability};

use super::snapshot::{Base, Layer};
use super::{apply, open_base, CloseSignal, StorageError};
use crate::doc_cache::DocCache;
use crate::wal::Sealed;

/// Most batches applied in one redb transaction.
const MAX_BATCHES_PER_TXN: usize = 64;

pub(super) enum Job {
    /// Apply a batch and record these metadata entries.
    Apply {
        layer: Layer,
        meta: Vec<(&'static str, Vec<u8>)>,
    },
    /// Make redb durable, then delete these log segments.
    Checkpoint(Sealed),
}

pub(super) struct Applier {
    pub db: Arc<Database>,
    pub cache: Arc<DocCache>,
    pub applied: Arc<ArcSwap<Base>>,
    pub closed: Arc<CloseSignal>,
}

impl Applier {
    /// Runs until the sender is dropped; then makes redb durable and returns.
    pub fn run(self, rx: Receiver<Job>) {
        let mut jobs = Vec::new();
        loop {
            match rx.recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
            let mut closed = false;
            while jobs.len() < MAX_BATCHES_PER_TXN {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if let Err(e) = self.apply_jobs(std::mem::take(&mut jobs)) {
                // The batches are durable in the log and replayed on the next open; serving on
                // without them in redb would grow memory without bound.
                tracing::error!(error = %e, "cannot apply committed batches to redb; stopping");
                std::process::abort();
            }
            if closed {
                break;
            }
        }
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "final checkpoint failed; the log will be replayed on open");
        }
    }

    fn checkpoint(&self) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        txn.commit()?;
        Ok(())
    }

    fn apply_jobs(&self, jobs: Vec<Job>) -> Result<(), StorageError> {
        let mut sealed = Vec::new();
        let mut applied_ts = None;
        let txn = self.db.begin_write()?;
        for job in &jobs {
            match job {
                Job::Apply { layer, meta } => {
                    let w = &layer.writes;
                    let mut docs = Vec::with_capacity(w.docs.len());
                    for (id, doc) in &w.docs {
                        let bytes = match doc {
                            None => None,
                            Some(_) => Some(w.encoded.get(id).ok_or_else(|| {
                                StorageError::CorruptDocument(
                                    id.to_string(),
                                    "committed without its encoding".into(),
                                )
                            })?),
                        };
                        docs.push((id.to_bytes(), bytes));
                    }
                    apply(
                        &txn,
                        docs.iter()
                            .map(|(id, d)| (id.as_slice(), d.map(Vec::as_slice))),
                        w.index_entries.iter().map(|(k, p)| (k.as_slice(), *p)),
                        meta.iter().map(|(k, v)| (*k, v.as_slice())),
                    )?;
                    applied_ts = Some(layer.ts);
                }
                Job::Checkpoint(_) => {}
            }
        }
        let durable = jobs.iter().any(|j| matches!(j, Job::Checkpoint(_)));
        let mut txn = txn;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        });
        txn.commit()?;
        for job in jobs {
            match job {
                Job::Apply { layer, .. } => {
                    for (id, doc) in &layer.writes.docs {
                        self.cache.put(*id, layer.ts, doc.clone());
                    }
                }
                Job::Checkpoint(s) => sealed.push(s),
            }
        }
        if let Some(ts) = applied_ts {
            self.applied
                .store(Arc::new(open_base(&self.db, ts, &self.closed)?));
        }
        for s in sealed {
            if let Err(e) = s.remove() {
                tracing::warn!(error = %e, "cannot delete checkpointed log segments");
            }
        }
        Ok(())
    }
}
