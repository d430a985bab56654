//! The applier: one thread that writes committed batches into redb after they were
//! acknowledged (they are durable in the write-ahead log already), so the committer's critical
//! path is validation plus one small sequential fsync. It receives a frozen memtable — every
//! batch committed while it was busy with the previous one, merged, sorted, each key once —
//! and writes it in one redb transaction, so a hot B-tree page is copied and written once per
//! transaction, not once per batch. Then it fills the decoded-document cache and publishes
//! redb's new state as the base for new snapshots. A job carrying sealed log segments is
//! committed durably, after which those segments are deleted.
//!
//! Under uniformly random updates nearly every redb page of a table is rewritten by every
//! transaction (~20 µs a page here), so the cost per update falls as transactions grow: the
//! applier therefore starts at most one transaction per interval (1 s by default) unless
//! the committer is waiting for it (memtable full, or shutting down). Measured with redb
//! alone, random updates over 100,000 keys: ~20 µs per update at 500–8,000 updates per
//! transaction, 6 µs at 32,000, 2.3 µs at 100,000.
//!
//! That transaction is a burst: at 20,000 commits/s it takes a whole core for ~100 ms each
//! second, and on a small machine the committer and the subscription threads queue behind it
//! (in-process commit→delivery p99 went from ~5 ms between bursts to 15–80 ms across them).
//! Nobody waits for it, so it is paced (`Pacer`): it rests after each slice of work and takes
//! at most about half a core — unless the committer is waiting for it, then it runs flat out.
//! It also runs at the lowest thread priority (`crate::background`), so within its half core
//! it still gives way to the committer and the subscription threads whenever they want to run
//! — except while the committer or a shutdown waits for it: then it takes its normal priority
//! back (`background::Urgent`) until the job is done.

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redb::{Database, Durability};

use super::memtable::Memtable;
use super::snapshot::Base;
use super::{apply, open_base, CloseSignal, Progress, StorageError};
use crate::background::Urgent;
use crate::doc_cache::DocCache;
use crate::wal::Sealed;

/// The applier's share of a core, in percent, while nobody waits for it.
const CPU_SHARE_PERCENT: u32 = 50;
/// Work between two rests.
const SLICE: Duration = Duration::from_millis(2);
/// Writes between two looks at the clock.
const CHECK_EVERY: u32 = 32;

/// Rests the applier between slices of a transaction's writes so that it takes about
/// `CPU_SHARE_PERCENT` of a core; a rest ends early when the committer hurries the applier,
/// which then runs unpaced at its normal priority until the job is done.
struct Pacer<'a> {
    progress: &'a Progress,
    slice_start: Instant,
    writes: u32,
    urgent: Option<Urgent>,
}

impl<'a> Pacer<'a> {
    fn new(progress: &'a Progress, hurried: bool) -> Self {
        Pacer {
            progress,
            slice_start: Instant::now(),
            writes: 0,
            urgent: hurried.then(Urgent::take),
        }
    }

    /// Called after each write.
    fn tick(&mut self) {
        self.writes = self.writes.wrapping_add(1);
        if !self.writes.is_multiple_of(CHECK_EVERY) {
            return;
        }
        let worked = self.slice_start.elapsed();
        if worked < SLICE {
            return;
        }
        let hurried = self
            .progress
            .rest(worked * (100 - CPU_SHARE_PERCENT) / CPU_SHARE_PERCENT);
        if hurried && self.urgent.is_none() {
            self.urgent = Some(Urgent::take());
        }
        self.slice_start = Instant::now();
    }
}

/// Removes sealed segments oldest first, stopping at the first that cannot be removed: the
/// rest wait behind it for the next checkpoint, since deleting a newer segment while an older
/// one stays in the log would let replay undo the newer one's commits.
fn remove_in_order(undeleted: &mut Vec<Sealed>) {
    while let Some(oldest) = undeleted.first_mut() {
        if let Err(e) = oldest.remove() {
            tracing::error!(
                error = %e,
                "cannot delete checkpointed log segments; they and every newer one stay until a \
                 later checkpoint can (the log grows meanwhile)"
            );
            return;
        }
        undeleted.remove(0);
    }
}

pub(super) struct Job {
    pub memtable: Arc<Memtable>,
    /// Log segments whose records are all in `memtable` or already applied.
    pub sealed: Vec<Sealed>,
}

pub(super) struct Applier {
    pub db: Arc<Database>,
    pub cache: Arc<DocCache>,
    pub applied: Arc<ArcSwap<Base>>,
    pub progress: Arc<Progress>,
    /// Shortest time between the starts of two redb transactions (see `StorageOptions`).
    pub interval: Duration,
    pub closed: Arc<CloseSignal>,
}

impl Applier {
    /// Runs until the sender is dropped; then makes redb durable and returns.
    pub fn run(self, rx: Receiver<Job>) {
        let mut last_start = Instant::now();
        // Checkpointed segments not yet deleted, oldest first (see `Sealed::remove`).
        let mut undeleted = Vec::new();
        while let Ok(job) = rx.recv() {
            let hurried = self.progress.pause_until(last_start + self.interval);
            last_start = Instant::now();
            if let Err(e) = self.apply_job(job, &mut undeleted, hurried) {
                // The batches are durable in the log and replayed on the next open; serving on
                // without them in redb would grow memory without bound.
                tracing::error!(error = %e, "cannot apply committed batches to redb; stopping");
                std::process::abort();
            }
        }
        // The shutdown waits for it.
        let _urgent = Urgent::take();
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "final checkpoint failed; the log will be replayed on open");
        }
    }

    fn checkpoint(&self) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }

    /// Applies the job's memtable; a checkpoint (a job carrying sealed segments) then deletes
    /// `undeleted` and the job's segments, oldest first, keeping those it could not delete.
    /// `hurried`: someone waits for this job.
    fn apply_job(
        &self,
        job: Job,
        undeleted: &mut Vec<Sealed>,
        hurried: bool,
    ) -> Result<(), StorageError> {
        let m = &job.memtable;
        let mut txn = self.db.begin_write()?;
        if !job.sealed.is_empty() {
            txn.set_durability(Durability::Immediate)?;
        } else {
            txn.set_durability(Durability::None)?;
        }
        let mut docs = Vec::with_capacity(m.docs.len());
        for (id, e) in m.docs.iter() {
            let bytes = match (&e.doc, &e.encoded) {
                (None, _) => None,
                (Some(_), Some(b)) => Some(b.as_slice()),
                (Some(_), None) => {
                    return Err(StorageError::CorruptDocument(
                        id.to_string(),
                        "committed without its encoding".into(),
                    ))
                }
            };
            docs.push((id.to_bytes(), bytes));
        }
        let mut pacer = Pacer::new(&self.progress, hurried);
        apply(
            &txn,
            docs.into_iter(),
            m.index.iter().map(|(k, p)| (k.as_bytes(), *p)),
            m.meta.iter().map(|(k, v)| (*k, v.as_slice())),
            || pacer.tick(),
        )?;
        txn.commit()?;
        for (id, e) in m.docs.iter() {
            self.cache.put(*id, e.ts, e.sized());
            pacer.tick();
        }
        self.applied
            .store(Arc::new(open_base(&self.db, m.ts, &self.closed)?));
        self.progress.advance();
        if !job.sealed.is_empty() {
            undeleted.extend(job.sealed);
            remove_in_order(undeleted);
        }
        Ok(())
    }
}
