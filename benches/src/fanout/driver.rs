//! The open-loop write driver: write `i` is due at `start + i / rate`, goes to meeting
//! `i % meetings` and that meeting's producer `(i / meetings) % producers`, and is sent when
//! due whether or not earlier writes have been answered. In-flight writes are bounded; a write
//! that finds no room is skipped and counted (the step then cannot pass).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use indicatif::ProgressBar;
use tokio::sync::Semaphore;

use super::recorder::now_us;

/// One write: (meeting, producer, scheduled send time µs, chunk text).
pub type WriteFn = Arc<dyn Fn(usize, usize, u64, String) -> BoxFuture<'static, ()> + Send + Sync>;

/// Longest wait for in-flight writes after the schedule ends.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// What the driver did.
#[derive(Clone, Copy, Debug, Default)]
pub struct DriveOutcome {
    pub scheduled: u64,
    /// Writes not sent because `max_in_flight` writes were outstanding.
    pub skipped: u64,
    /// Largest delay between a write's scheduled and actual send, µs.
    pub max_send_lag_us: u64,
    /// Writes still unanswered `FINISH_TIMEOUT` after the schedule ended.
    pub unfinished: u64,
}

/// The driver's settings.
#[derive(Clone, Debug)]
pub struct Drive {
    pub rate: f64,
    pub duration: Duration,
    pub meetings: usize,
    pub producers: usize,
    pub max_in_flight: usize,
    /// Chunk text length in bytes (at least the timestamp and write id).
    pub text_bytes: usize,
}

/// The text of write `i`: the scheduled send time first (subscribers parse it), then the
/// write's identity, padded to `len` bytes.
pub fn chunk_text(sched_us: u64, meeting: usize, producer: usize, i: u64, len: usize) -> String {
    let mut t = format!("{sched_us} m{meeting} p{producer} w{i} ");
    while t.len() < len {
        t.push('x');
    }
    t
}

/// The scheduled send time at the start of a chunk's text.
pub fn parse_sched_us(text: &str) -> Option<u64> {
    text.split(' ').next()?.parse().ok()
}

/// Runs the schedule; returns when it ended and every write was answered (or timed out).
/// `first_write` numbers the writes (continuing across steps keeps chunk texts unique).
pub async fn drive(
    d: &Drive,
    first_write: u64,
    write: WriteFn,
    bar: Option<&ProgressBar>,
) -> DriveOutcome {
    let meetings = d.meetings.max(1);
    let producers = d.producers.max(1);
    let total = (d.rate * d.duration.as_secs_f64()).round() as u64;
    let in_flight = Arc::new(Semaphore::new(d.max_in_flight.max(1)));
    let max_lag = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let start_us = now_us();
    let interval_us = 1e6 / d.rate.max(1e-3);
    let mut skipped = 0;
    let mut sent: u64 = 0;
    while sent < total {
        let elapsed_us = start.elapsed().as_micros() as f64;
        let due = ((elapsed_us / interval_us).floor() as u64 + 1).min(total);
        while sent < due {
            let i = sent;
            sent += 1;
            let sched_us = start_us + (i as f64 * interval_us) as u64;
            let lag = now_us().saturating_sub(sched_us);
            max_lag.fetch_max(lag, Ordering::Relaxed);
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                skipped += 1;
                continue;
            };
            let meeting = (i % meetings as u64) as usize;
            let producer = ((i / meetings as u64) % producers as u64) as usize;
            let n = first_write + i;
            let text = chunk_text(sched_us, meeting, producer, n, d.text_bytes);
            let fut = write(meeting, producer, sched_us, text);
            tokio::spawn(async move {
                fut.await;
                drop(permit);
            });
        }
        if let Some(b) = bar {
            b.set_position(sent);
        }
        if sent < total {
            let next = start + Duration::from_micros((sent as f64 * interval_us) as u64);
            tokio::time::sleep_until(next.into()).await;
        }
    }
    let all = u32::try_from(d.max_in_flight.max(1)).unwrap_or(u32::MAX);
    let unfinished = match tokio::time::timeout(FINISH_TIMEOUT, in_flight.acquire_many(all)).await {
        Ok(Ok(_)) => 0,
        _ => d
            .max_in_flight
            .max(1)
            .saturating_sub(in_flight.available_permits()) as u64,
    };
    DriveOutcome {
        scheduled: total,
        skipped,
        max_send_lag_us: max_lag.load(Ordering::Relaxed),
        unfinished,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_texts_carry_their_schedule() {
        let t = chunk_text(1_795_000_000_123_456, 3, 1, 42, 64);
        assert_eq!(t.len(), 64);
        assert_eq!(parse_sched_us(&t), Some(1_795_000_000_123_456));
        assert!(t.starts_with("1795000000123456 m3 p1 w42 "));
    }

    #[tokio::test]
    async fn sends_every_scheduled_write_round_robin() {
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let s = seen.clone();
        let write: WriteFn = Arc::new(move |m, p, _sched, _t| {
            s.lock().push((m, p));
            Box::pin(async {})
        });
        let d = Drive {
            rate: 2_000.0,
            duration: Duration::from_millis(50),
            meetings: 3,
            producers: 2,
            max_in_flight: 1_000,
            text_bytes: 32,
        };
        let out = drive(&d, 0, write, None).await;
        assert_eq!(out.scheduled, 100);
        assert_eq!(out.skipped, 0);
        let seen = seen.lock();
        assert_eq!(seen.len(), 100);
        assert_eq!(&seen[..4], &[(0, 0), (1, 0), (2, 0), (0, 1)]);
    }
}
