//! When the committer holds a small batch back for more members (group commit with a wait).
//!
//! Every batch costs the same whatever its size: a log append and an fsync, publishing a
//! snapshot, waking the subscription worker and each member's caller. Under load, batches of
//! one or two transactions paid that cost once or twice per write (the fan-out benchmark at
//! 3,000 writes/s: 1.7 transactions and one fsync per 560 µs). Holding a small batch for up
//! to 300 µs doubled its size and took ~9 % of the server's CPU per write off; for up to 1 ms,
//! 5.5 transactions a batch and ~18 % off, delivery p99 within the run-to-run swing either
//! way (A/B on one binary, alternating). At low load the wait would only add latency, so it is taken
//! only when the recent arrival rate says more members are due within it — as PostgreSQL's
//! `commit_delay` applies only with `commit_siblings` transactions active.
//!
//! The rate is counted over fixed windows; the last finished window decides, so a burst that
//! ends stops the waiting within one window. A high rate is not enough, though: one writer
//! that sends its next transaction only once the last is acknowledged (an import, a loop of
//! calls) arrives often, yet nothing joins while it waits for itself, and holding would slow
//! it threefold. So each hold's gain is kept (a moving average of the members it added), and
//! holds that gain nothing stop; one in `PROBE_EVERY` eligible batches still holds, to notice
//! when they would pay again.

use std::time::{Duration, Instant};

/// Arrivals are counted over windows this long.
const WINDOW: Duration = Duration::from_millis(100);
/// A batch this large already spreads its fixed cost; holding it gains little.
const AMORTISED_BATCH: usize = 4;
/// Waiting pays when at least this many members are expected to arrive within the wait.
const EXPECTED_ARRIVALS: f64 = 0.5;
/// Holds stop while they gained fewer members than this on average.
const MIN_GAIN: f64 = 0.5;
/// Weight of the latest hold in the average gain.
const GAIN_WEIGHT: f64 = 0.25;
/// While holds do not pay, one eligible batch in this many still holds.
const PROBE_EVERY: u32 = 32;

/// Decides, batch by batch, whether the committer waits for more members.
pub(crate) struct GroupCommit {
    wait: Duration,
    window_start: Instant,
    in_window: u64,
    /// Arrivals per second in the last finished window.
    rate: f64,
    /// Members a hold gained, moving average.
    gain: f64,
    /// Eligible batches not held since holds stopped paying (or the last probe).
    skipped: u32,
}

impl GroupCommit {
    /// `wait` zero never waits.
    pub fn new(wait: Duration, now: Instant) -> Self {
        GroupCommit {
            wait,
            window_start: now,
            in_window: 0,
            rate: 0.0,
            gain: 1.0,
            skipped: 0,
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

    /// How long to hold a batch of `len` members for more, if at all; a hold taken must be
    /// reported with `held`.
    pub fn hold(&mut self, len: usize) -> Option<Duration> {
        let eligible = !self.wait.is_zero()
            && len < AMORTISED_BATCH
            && self.rate * self.wait.as_secs_f64() >= EXPECTED_ARRIVALS;
        if !eligible {
            return None;
        }
        if self.gain < MIN_GAIN {
            self.skipped += 1;
            if self.skipped < PROBE_EVERY {
                return None;
            }
        }
        self.skipped = 0;
        Some(self.wait)
    }

    /// Reports that a hold added `gained` members.
    pub fn held(&mut self, gained: usize) {
        self.gain += GAIN_WEIGHT * (gained as f64 - self.gain);
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
        g.held(2);
        assert_eq!(g.hold(3), Some(WAIT));
        g.held(1);
        assert_eq!(g.hold(AMORTISED_BATCH), None, "large enough already");
        // The load falls: within a window or two the waiting stops.
        feed(&mut g, t, 100, 1);
        assert_eq!(g.hold(1), None);
    }

    #[test]
    fn holds_that_gain_nothing_stop_but_are_probed_now_and_then() {
        let start = Instant::now();
        let mut g = GroupCommit::new(WAIT, start);
        // A sequential writer: frequent arrivals, but each hold waits for nobody.
        feed(&mut g, start, 3_000, 1);
        let mut held = 0;
        for _ in 0..4 * PROBE_EVERY {
            if g.hold(1).is_some() {
                held += 1;
                g.held(0);
            }
        }
        // Three holds take the average below MIN_GAIN (1 → 0.75 → 0.56 → 0.42), then one
        // probe per PROBE_EVERY eligible batches.
        assert_eq!(held, 3 + 3, "{held}");
        // Holds that pay again restart them.
        while g.hold(1).is_none() {}
        g.held(4);
        assert_eq!(g.hold(1), Some(WAIT));
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
