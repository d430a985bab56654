//! Ramp mode's search: bisection over write rates for the highest one that a step judges
//! sustainable. Pure logic (the steps themselves are run by the caller).

/// Bisection state: `lo` passed (0 until something passes), `hi` failed or is the ceiling.
#[derive(Clone, Debug)]
pub struct Bisect {
    lo: u64,
    hi: u64,
    /// Stop when the bracket is narrower than this many writes/s.
    resolution: u64,
    steps_left: usize,
    hi_tested: bool,
}

impl Bisect {
    /// Searches `(0, max]`, first trying `start`, for at most `steps` steps.
    pub fn new(max: u64, resolution: u64, steps: usize) -> Self {
        Bisect {
            lo: 0,
            hi: max.max(1),
            resolution: resolution.max(1),
            steps_left: steps,
            hi_tested: false,
        }
    }

    /// The next rate to try, or `None` when done.
    pub fn next(&self, start: Option<u64>) -> Option<u64> {
        if self.steps_left == 0 || self.hi.saturating_sub(self.lo) <= self.resolution {
            return None;
        }
        if let Some(s) = start.filter(|s| *s > self.lo && *s < self.hi) {
            return Some(s);
        }
        let mid = self.lo + (self.hi - self.lo) / 2;
        // Round to the resolution so reported rates are readable.
        let r = self.resolution;
        Some(((mid + r / 2) / r * r).clamp(self.lo + 1, self.hi))
    }

    /// Records a step's verdict.
    pub fn record(&mut self, rate: u64, sustainable: bool) {
        self.steps_left = self.steps_left.saturating_sub(1);
        if sustainable {
            self.lo = self.lo.max(rate);
            if rate >= self.hi {
                self.hi_tested = true;
            }
        } else {
            self.hi = self.hi.min(rate);
        }
    }

    /// The highest rate that passed (0 if none did).
    pub fn best(&self) -> u64 {
        self.lo
    }

    /// True when the ceiling itself passed: the real limit may be higher.
    pub fn ceiling_passed(&self) -> bool {
        self.hi_tested
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_on_the_threshold() {
        let limit = 7_300;
        let mut b = Bisect::new(40_000, 250, 20);
        let mut tried = Vec::new();
        let mut start = Some(10_000);
        while let Some(r) = b.next(start.take()) {
            tried.push(r);
            b.record(r, r <= limit);
        }
        assert_eq!(tried[0], 10_000);
        assert!(
            b.best() <= limit && limit - b.best() <= 250,
            "{tried:?} -> {}",
            b.best()
        );
        assert!(!b.ceiling_passed());
    }

    #[test]
    fn respects_the_step_budget_and_ceiling() {
        let mut b = Bisect::new(1_000, 10, 3);
        let mut n = 0;
        while let Some(r) = b.next(None) {
            b.record(r, true);
            n += 1;
        }
        assert_eq!(n, 3);
        assert!(b.best() > 800);
    }
}
