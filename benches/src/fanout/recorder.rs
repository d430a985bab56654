//! What a fan-out run measures, shared by the write driver and every subscriber: commit
//! timestamps per (meeting, sequence), latency histograms (commit→delivery, scheduled
//! send→delivery, scheduled send→mutation reply), delivery and anomaly counters, and each
//! subscriber's progress. Latencies start at the *scheduled* send time, so a driver that falls
//! behind its arrival schedule shows up in the figures (no coordinated omission).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

use super::checker::Anomalies;
use crate::report::{latency_histogram, Latency};

/// Histogram shards: subscribers record into `shard % HIST_SHARDS` to spread lock traffic.
const HIST_SHARDS: usize = 16;
/// Most deliveries whose commit timestamp was not yet known when they arrived, kept for
/// resolving at the end of a step; beyond this they are counted as unresolved.
const MAX_PENDING: usize = 4_000_000;

/// Microseconds since the Unix epoch on this host's clock (the server's commit timestamps use
/// the same clock when it runs on this host).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[derive(Clone)]
struct Hists {
    commit_delivery: Histogram<u64>,
    send_delivery: Histogram<u64>,
    mutation: Histogram<u64>,
}

impl Hists {
    fn new() -> Self {
        Hists {
            commit_delivery: latency_histogram(),
            send_delivery: latency_histogram(),
            mutation: latency_histogram(),
        }
    }
}

/// Latencies of one step; a value above the histogram's range is clamped to its top.
fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, h.high()));
}

/// Figures of one measured window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepFigures {
    pub commit_to_delivery: Latency,
    pub send_to_delivery: Latency,
    pub mutation: Latency,
    /// Deliveries (chunk × subscriber) of writes scheduled inside the window.
    pub deliveries: u64,
    /// Deliveries whose commit timestamp never became known (not in the commit histogram).
    pub unresolved_commit_ts: u64,
    pub writes_ok: u64,
    pub write_errors: BTreeMap<String, u64>,
}

pub struct Recorder {
    /// Per meeting, commit timestamp (µs) by sequence (index `seq - 1`); 0 = not known yet.
    commit_ts: Vec<Box<[AtomicU64]>>,
    /// Per meeting, highest sequence acknowledged to a writer.
    acked_seq: Vec<AtomicI64>,
    /// Per meeting, how many writes were acknowledged as new (not retries).
    acked_writes: Vec<AtomicU64>,
    /// Sequences acknowledged to two different writes.
    duplicate_writes: AtomicU64,
    /// Writes whose sequence is beyond `commit_ts` capacity (their latency is not joined).
    beyond_capacity: AtomicU64,
    /// Scheduled-send window `[start, end)` whose deliveries and writes are recorded.
    window_start_us: AtomicU64,
    window_end_us: AtomicU64,
    hists: Vec<Mutex<Hists>>,
    pending: Mutex<Vec<(u32, i64, u64)>>,
    unresolved: AtomicU64,
    deliveries: AtomicU64,
    writes_ok: AtomicU64,
    write_errors: Mutex<BTreeMap<String, u64>>,
    anomalies: Mutex<Anomalies>,
    /// Results delivered to subscriptions that should never change.
    idle_wakeups: AtomicU64,
    /// Per subscriber, the highest sequence handed to it.
    progress: Vec<AtomicI64>,
}

impl Recorder {
    /// `max_seq` bounds the sequences per meeting whose commit time is remembered.
    pub fn new(meetings: usize, subscribers: usize, max_seq: usize) -> Self {
        let commit_ts = (0..meetings)
            .map(|_| (0..max_seq).map(|_| AtomicU64::new(0)).collect())
            .collect();
        Recorder {
            commit_ts,
            acked_seq: (0..meetings).map(|_| AtomicI64::new(0)).collect(),
            acked_writes: (0..meetings).map(|_| AtomicU64::new(0)).collect(),
            duplicate_writes: AtomicU64::new(0),
            beyond_capacity: AtomicU64::new(0),
            window_start_us: AtomicU64::new(u64::MAX),
            window_end_us: AtomicU64::new(u64::MAX),
            hists: (0..HIST_SHARDS).map(|_| Mutex::new(Hists::new())).collect(),
            pending: Mutex::new(Vec::new()),
            unresolved: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            writes_ok: AtomicU64::new(0),
            write_errors: Mutex::new(BTreeMap::new()),
            anomalies: Mutex::new(Anomalies::default()),
            idle_wakeups: AtomicU64::new(0),
            progress: (0..subscribers).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    pub fn meetings(&self) -> usize {
        self.acked_seq.len()
    }

    /// Starts recording writes scheduled in `[start_us, end_us)` (and their deliveries).
    pub fn open_window(&self, start_us: u64, end_us: u64) {
        self.window_end_us.store(end_us, Ordering::SeqCst);
        self.window_start_us.store(start_us, Ordering::SeqCst);
    }

    fn in_window(&self, sched_us: u64) -> bool {
        sched_us >= self.window_start_us.load(Ordering::Relaxed)
            && sched_us < self.window_end_us.load(Ordering::Relaxed)
    }

    /// A write acknowledged: its sequence and, when known, its commit timestamp.
    pub fn write_ok(
        &self,
        meeting: usize,
        seq: i64,
        duplicate: bool,
        commit_ts: Option<u64>,
        sched_us: u64,
    ) {
        if !duplicate {
            self.acked_writes[meeting].fetch_add(1, Ordering::Relaxed);
        }
        self.acked_seq[meeting].fetch_max(seq, Ordering::Relaxed);
        if let Some(ts) = commit_ts {
            match usize::try_from(seq - 1)
                .ok()
                .and_then(|i| self.commit_ts[meeting].get(i))
            {
                Some(slot) => {
                    if slot
                        .compare_exchange(0, ts, Ordering::Relaxed, Ordering::Relaxed)
                        .is_err()
                        && !duplicate
                    {
                        self.duplicate_writes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    self.beyond_capacity.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if self.in_window(sched_us) {
            self.writes_ok.fetch_add(1, Ordering::Relaxed);
            let took = now_us().saturating_sub(sched_us);
            record(&mut self.hists[meeting % HIST_SHARDS].lock().mutation, took);
        }
    }

    /// A write failed with `code`.
    pub fn write_failed(&self, code: &str) {
        *self
            .write_errors
            .lock()
            .entry(code.to_string())
            .or_insert(0) += 1;
    }

    /// A chunk handed to a subscriber: `commit_ts` when the delivery carries it (PostgreSQL),
    /// else looked up (or resolved at the end of the step).
    pub fn delivered(
        &self,
        shard: usize,
        meeting: usize,
        seq: i64,
        sched_us: u64,
        commit_ts: Option<u64>,
        recv_us: u64,
    ) {
        if !self.in_window(sched_us) {
            return;
        }
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        let commit = commit_ts.or_else(|| {
            usize::try_from(seq - 1)
                .ok()
                .and_then(|i| self.commit_ts[meeting].get(i))
                .map(|slot| slot.load(Ordering::Relaxed))
                .filter(|ts| *ts != 0)
        });
        {
            let mut h = self.hists[shard % HIST_SHARDS].lock();
            record(&mut h.send_delivery, recv_us.saturating_sub(sched_us));
            if let Some(ts) = commit {
                record(&mut h.commit_delivery, recv_us.saturating_sub(ts));
            }
        }
        if commit.is_none() {
            let mut pending = self.pending.lock();
            if pending.len() < MAX_PENDING {
                pending.push((meeting as u32, seq, recv_us));
            } else {
                self.unresolved.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn add_anomalies(&self, a: Anomalies) {
        if a.total() > 0 {
            self.anomalies.lock().add(a);
        }
    }

    pub fn idle_wakeup(&self) {
        self.idle_wakeups.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_progress(&self, subscriber: usize, seq: i64) {
        self.progress[subscriber].store(seq, Ordering::Relaxed);
    }

    pub fn progress(&self, subscriber: usize) -> i64 {
        self.progress[subscriber].load(Ordering::Relaxed)
    }

    pub fn acked_seq(&self, meeting: usize) -> i64 {
        self.acked_seq[meeting].load(Ordering::Relaxed)
    }

    pub fn acked_writes(&self, meeting: usize) -> u64 {
        self.acked_writes[meeting].load(Ordering::Relaxed)
    }

    pub fn duplicate_writes(&self) -> u64 {
        self.duplicate_writes.load(Ordering::Relaxed)
    }

    pub fn anomalies(&self) -> Anomalies {
        *self.anomalies.lock()
    }

    pub fn idle_wakeups(&self) -> u64 {
        self.idle_wakeups.load(Ordering::Relaxed)
    }

    pub fn beyond_capacity(&self) -> u64 {
        self.beyond_capacity.load(Ordering::Relaxed)
    }

    /// Closes the window: resolves deliveries that arrived before their write's commit
    /// timestamp was known, returns the window's figures and clears them for the next one.
    pub fn take_step(&self) -> StepFigures {
        self.open_window(u64::MAX, u64::MAX);
        let pending = std::mem::take(&mut *self.pending.lock());
        let mut unresolved = self.unresolved.swap(0, Ordering::Relaxed);
        let mut merged = Hists::new();
        for shard in &self.hists {
            let mut h = shard.lock();
            let _ = merged.commit_delivery.add(&h.commit_delivery);
            let _ = merged.send_delivery.add(&h.send_delivery);
            let _ = merged.mutation.add(&h.mutation);
            *h = Hists::new();
        }
        for (meeting, seq, recv_us) in pending {
            let ts = usize::try_from(seq - 1)
                .ok()
                .and_then(|i| self.commit_ts[meeting as usize].get(i))
                .map(|slot| slot.load(Ordering::Relaxed))
                .unwrap_or(0);
            if ts == 0 {
                unresolved += 1;
            } else {
                record(&mut merged.commit_delivery, recv_us.saturating_sub(ts));
            }
        }
        StepFigures {
            commit_to_delivery: Latency::of(&merged.commit_delivery),
            send_to_delivery: Latency::of(&merged.send_delivery),
            mutation: Latency::of(&merged.mutation),
            deliveries: self.deliveries.swap(0, Ordering::Relaxed),
            unresolved_commit_ts: unresolved,
            writes_ok: self.writes_ok.swap(0, Ordering::Relaxed),
            write_errors: std::mem::take(&mut *self.write_errors.lock()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_join_commit_times_known_before_or_after() {
        let r = Recorder::new(2, 3, 16);
        r.open_window(1_000, 2_000);
        r.write_ok(0, 1, false, Some(1_100), 1_000);
        r.delivered(0, 0, 1, 1_000, None, 1_300); // commit known: 200 µs
        r.delivered(1, 1, 1, 1_500, None, 1_900); // commit not yet known
        r.write_ok(1, 1, false, Some(1_600), 1_500);
        r.delivered(2, 1, 2, 5_000, None, 5_100); // outside the window: ignored
        let f = r.take_step();
        assert_eq!(f.deliveries, 2);
        assert_eq!(f.commit_to_delivery.count, 2);
        assert_eq!(f.unresolved_commit_ts, 0);
        assert_eq!(f.send_to_delivery.count, 2);
        assert_eq!(f.writes_ok, 2);
        assert_eq!(r.acked_seq(1), 1);
        // A sequence acknowledged twice is a duplicate write.
        r.write_ok(1, 1, false, Some(1_700), 1_600);
        assert_eq!(r.duplicate_writes(), 1);
    }
}
