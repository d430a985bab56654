//! Rate limits for log lines that anyone can cause (refused connections, refused webhooks):
//! the first goes through, then at most one per interval, each saying how many were held back
//! since the previous one, so a flood of bad requests cannot flood the log. The metrics count
//! every event; this only thins the lines.

use std::time::{Duration, Instant};

/// At most one line per this long for each kind of event.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct LogLimit {
    last_line: Option<Instant>,
    held_back: u64,
}

impl LogLimit {
    /// `Some(events held back since the last line)` when this one is to be logged.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        match self.last_line {
            Some(last) if now.saturating_duration_since(last) < LOG_INTERVAL => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last_line = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_logged_once_per_interval_with_a_count_of_the_rest() {
        let mut log = LogLimit::default();
        let t0 = Instant::now();
        assert_eq!(log.note(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(log.note(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(log.note(t0 + LOG_INTERVAL), Some(5));
        assert_eq!(log.note(t0 + LOG_INTERVAL), None);
    }
}
