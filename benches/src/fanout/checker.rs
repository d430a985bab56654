//! The per-subscriber correctness check: which sequences of a meeting a subscriber has been
//! handed, so that every chunk counts as delivered exactly once, and anything missed, repeated
//! or out of order is counted. Pure logic, shared by the LinkedUp and PostgreSQL subscribers.

/// Anomalies one tracker saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Anomalies {
    /// Sequences skipped over (a gap the subscriber was never handed).
    pub missed: u64,
    /// A sequence handed over again as if new, or twice in one result.
    pub duplicates: u64,
    /// A result older than one already seen, or sequences not in ascending order.
    pub out_of_order: u64,
}

impl Anomalies {
    pub fn total(&self) -> u64 {
        self.missed + self.duplicates + self.out_of_order
    }

    pub fn add(&mut self, other: Anomalies) {
        self.missed += other.missed;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
    }
}

/// What one subscriber of one meeting has received. Sequences are gap-free per meeting and
/// start at 1, so the next one expected is always `last_seq + 1`.
#[derive(Clone, Debug, Default)]
pub struct SequenceTracker {
    last_seq: i64,
    /// The current subscription window: chunks after `window_from`, and how many of them the
    /// largest result so far held.
    window_from: i64,
    window_seen: usize,
    anomalies: Anomalies,
}

impl SequenceTracker {
    /// A tracker for a subscriber that has seen everything up to `last_seq`.
    pub fn starting_at(last_seq: i64) -> Self {
        SequenceTracker {
            last_seq,
            window_from: last_seq,
            ..Self::default()
        }
    }

    /// Highest sequence handed to this subscriber.
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    pub fn anomalies(&self) -> Anomalies {
        self.anomalies
    }

    /// One pushed chunk (PostgreSQL notifications arrive one by one). Returns true when it is
    /// new, i.e. a delivery to record.
    pub fn observe(&mut self, seq: i64) -> bool {
        if seq <= self.last_seq {
            self.anomalies.duplicates += 1;
            return false;
        }
        if seq != self.last_seq + 1 {
            // Notifications are sent at commit; a later sequence before an earlier one is a
            // reorder, and the earlier one, if it comes, is counted then as a duplicate.
            self.anomalies.missed += (seq - self.last_seq - 1) as u64;
        }
        self.last_seq = seq;
        true
    }

    /// Starts a new window after `last_seq` (the resumable pattern: re-subscribe from the
    /// last sequence seen when the window fills).
    pub fn rewindow(&mut self) {
        self.window_from = self.last_seq;
        self.window_seen = 0;
    }

    /// The window's lower bound (exclusive): the `fromSequence` to subscribe with.
    pub fn window_from(&self) -> i64 {
        self.window_from
    }

    /// One result of `transcripts.stream(meetingId, window_from, limit)`: the sequences of its
    /// chunks in result order. Calls `deliver(index)` for every chunk new to this subscriber
    /// and returns true when the window is full (time to `rewindow` and re-subscribe).
    pub fn on_window(
        &mut self,
        seqs: impl ExactSizeIterator<Item = Option<i64>>,
        limit: usize,
        mut deliver: impl FnMut(usize),
    ) -> bool {
        let len = seqs.len();
        if len < self.window_seen {
            // The window only grows: a shorter result is an older state shown after a newer.
            self.anomalies.out_of_order += 1;
        }
        self.window_seen = self.window_seen.max(len);
        let mut prev: Option<i64> = None;
        for (i, seq) in seqs.enumerate() {
            let Some(seq) = seq else {
                self.anomalies.out_of_order += 1;
                continue;
            };
            if let Some(p) = prev {
                if seq == p {
                    self.anomalies.duplicates += 1;
                    continue;
                }
                if seq < p {
                    self.anomalies.out_of_order += 1;
                    continue;
                }
            }
            prev = Some(seq);
            let expected = self.window_from + 1 + i as i64;
            if seq <= self.last_seq {
                // Already handed over: it must still sit where it was.
                if seq != expected {
                    self.anomalies.out_of_order += 1;
                }
                continue;
            }
            if seq != self.last_seq + 1 {
                self.anomalies.missed += (seq - self.last_seq - 1) as u64;
            }
            self.last_seq = seq;
            deliver(i);
        }
        len >= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(t: &mut SequenceTracker, seqs: &[i64], limit: usize) -> (Vec<usize>, bool) {
        let mut got = Vec::new();
        let full = t.on_window(seqs.iter().map(|s| Some(*s)), limit, |i| got.push(i));
        (got, full)
    }

    #[test]
    fn growing_windows_deliver_each_sequence_once() {
        let mut t = SequenceTracker::default();
        assert_eq!(window(&mut t, &[], 4), (vec![], false));
        assert_eq!(window(&mut t, &[1], 4), (vec![0], false));
        assert_eq!(window(&mut t, &[1, 2, 3], 4), (vec![1, 2], false));
        // A repeated result (e.g. after a reconnect) delivers nothing.
        assert_eq!(window(&mut t, &[1, 2, 3], 4), (vec![], false));
        assert_eq!(window(&mut t, &[1, 2, 3, 4], 4), (vec![3], true));
        t.rewindow();
        assert_eq!(t.window_from(), 4);
        assert_eq!(window(&mut t, &[5, 6], 4), (vec![0, 1], false));
        assert_eq!(t.last_seq(), 6);
        assert_eq!(t.anomalies(), Anomalies::default());
    }

    #[test]
    fn gaps_repeats_and_regressions_are_counted() {
        let mut t = SequenceTracker::default();
        window(&mut t, &[1, 2, 5], 10);
        assert_eq!(t.anomalies().missed, 2);
        window(&mut t, &[1, 2], 10);
        assert_eq!(t.anomalies().out_of_order, 1);
        window(&mut t, &[1, 2, 5, 5, 6], 10);
        assert_eq!(t.anomalies().duplicates, 1);
        assert_eq!(t.last_seq(), 6);
    }

    #[test]
    fn pushed_chunks_track_order() {
        let mut t = SequenceTracker::starting_at(10);
        assert!(t.observe(11));
        assert!(!t.observe(11));
        assert!(t.observe(13));
        assert!(!t.observe(12));
        assert_eq!(
            t.anomalies(),
            Anomalies {
                missed: 1,
                duplicates: 2,
                out_of_order: 0
            }
        );
    }
}
