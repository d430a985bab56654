//! When the committer holds a small batch back for more members (group commit with a wait).
//!
//! Every batch costs the same whatever its size: a log append and an fsync, publishing a
//! snapshot, waking the subscription worker and each member's caller. Under load, batches of
//! one or two transactions paid that cost once or twice per write (the fan-out benchmark at
//! 3,000 writes/s: 1.7 transactions and one fsync per 560 µs); holding a small batch for
//! 300 µs doubled its size and took ~11 % of the server's CPU per write off, at no cost to
//! delivery latency at that rate. At low load the wait would only add latency, so it is taken
//! only when the recent arrival rate says more members are due within it — as PostgreSQL's
//! `commit_delay` applies only with `commit_siblings` transactions active.
//!
//! The rate is counted over fixed windows; the last finished window decides, so a burst that
//! ends stops the waiting within one window.

use std::time::{Duration, Instant};

/// Arrivals are counted over windows this long.
const WINDOW: Duration = Duration::from_millis(100);
/// A batch this large already spreads its fixed cost; holding it gains little.
const AMORTISED_BATCH: usize = 4;
/// Waiting pays when at least this many members are expected to arrive within the wait.
const EXPECTED_ARRIVALS: f64 = 0.5;

/// Decides, batch by batch, whether the committer waits for more members.
pub(crate) struct GroupCommit {
    wait: Duration,
    window_start: Instant,
    in_window: u64,
    /// Arrivals per second in the last finished window.
    rate: f64,
}

impl GroupCommit {
    /// `wait` zero never waits.
    pub fn new(wait: Duration, now: Instant) -> Self {
        GroupCommit {
            wait,
            window_start: now,
            in_window: 0,
            rate: 0.0,
        }
    }

    /// Counts `n` requests taken from the queue at `now`.
    pub fn arrived(&mut self, n: usize, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW {
            // A window with no batch at all in it (idle) counts as rate zero through
            // `elapsed` covering it.
            self.rate = self.in_window as f64 / elapsed.as_secs_f64();
            self.window_start = now;
            self.in_window = 0;
        }
        self.in_window += n as u64;
    }

    /// How long to hold a batch of `len` members for more, if at all.
    pub fn hold(&self, len: usize) -> Option<Duration> {
        let worth_it = !self.wait.is_zero()
            && len < AMORTISED_BATCH
            && self.rate * self.wait.as_secs_f64() >= EXPECTED_ARRIVALS;
        worth_it.then_some(self.wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_micros(300);

    /// Feeds `per_sec` single arrivals a second for `secs` seconds, evenly spaced.
    fn feed(g: &mut GroupCommit, start: Instant, per_sec: u64, secs: u64) -> Instant {
        let step = Duration::from_secs(1) / per_sec as u32;
        let mut t = start;
        for _ in 0..per_sec * secs {
            t += step;
            g.arrived(1, t);
        }
        t
    }

    #[test]
    fn waits_only_while_arrivals_are_frequent_enough_to_fill_the_wait() {
        let start = Instant::now();
        let mut g = GroupCommit::new(WAIT, start);
        assert_eq!(g.hold(1), None, "no rate known yet");
        // 1,000/s: 0.3 arrivals expected in 300 µs.
        let t = feed(&mut g, start, 1_000, 1);
        assert_eq!(g.hold(1), None);
        // 3,000/s: 0.9 expected.
        let t = feed(&mut g, t, 3_000, 1);
        assert_eq!(g.hold(1), Some(WAIT));
        assert_eq!(g.hold(3), Some(WAIT));
        assert_eq!(g.hold(AMORTISED_BATCH), None, "large enough already");
        // The load falls: within a window or two the waiting stops.
        feed(&mut g, t, 100, 1);
        assert_eq!(g.hold(1), None);
    }

    #[test]
    fn an_idle_gap_ends_the_waiting() {
        let start = Instant::now();
        let mut g = GroupCommit::new(WAIT, start);
        let t = feed(&mut g, start, 5_000, 1);
        assert_eq!(g.hold(1), Some(WAIT));
        // One arrival after ten idle seconds: the window it closes held the burst's tail
        // over ten seconds.
        g.arrived(1, t + Duration::from_secs(10));
        assert_eq!(g.hold(1), None);
    }

    #[test]
    fn a_zero_wait_never_holds() {
        let start = Instant::now();
        let mut g = GroupCommit::new(Duration::ZERO, start);
        feed(&mut g, start, 50_000, 1);
        assert_eq!(g.hold(1), None);
    }
}
