//! Admission of mutations to execution and commit, and the shedding of load past it.
//!
//! At most `max_pending_commits` mutations execute or wait for the committer at once; callers
//! past that queue here, first come first served. Internal callers (scheduler, actions, sweeps)
//! wait as long as it takes. Client calls (`Admit::Shed`) must not: under a sustained overload
//! their queue would grow for as long as the overload lasts, every call would wait for all of
//! it, and the backlog would keep latency high long after the load fell (measured before this
//! module: mutation p99 8–15 s during an overload over QUIC, and up to 9 s of backlog after it).
//!
//! So a client call's wait is bounded the way CoDel bounds a packet queue, checked when the
//! call reaches the head of the queue:
//! - while the queue keeps draining — some admission within the last `interval` waited less
//!   than `target` — a call may wait up to `max_wait`, which absorbs bursts;
//! - once the queue stands — every admission for `interval` waited `target` or longer — a call
//!   that has waited `target` is refused, so the queue shrinks to what the committer clears
//!   within `target` and an overload leaves no backlog behind it;
//! - at most `max_waiting` calls queue; more are refused on arrival.
//!
//! A refused call has read and written nothing. It fails with `RATE_LIMITED`,
//! `data.reason = "overloaded"` and `data.retryAfterMs`, so retrying it (under the same
//! mutation id) is safe. Grants travel as `Permit`s, which give the slot back when dropped, so a
//! caller that goes away while queued or just after being granted leaks nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
// tokio's clock, so tests can pause it; the same as std's otherwise.
use tokio::time::Instant;

use crate::error::{codes, FunctionError};
use crate::metrics::EngineMetrics;
use crate::obj;

/// Bounds on a client mutation's wait for admission (`EngineConfig::admission`).
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    /// Longest wait while the queue drains.
    pub max_wait: Duration,
    /// Longest wait once the queue stands; also the wait below which it counts as draining.
    pub target: Duration,
    /// How long every admission must have waited `target` or more for the queue to stand.
    pub interval: Duration,
    /// Most client calls queued at once.
    pub max_waiting: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_wait: Duration::from_secs(1),
            target: Duration::from_millis(50),
            interval: Duration::from_millis(100),
            max_waiting: 10_000,
        }
    }
}

/// Whether a caller may be refused instead of waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Wait,
    Shed,
}

pub(crate) struct Admission {
    capacity: usize,
    config: AdmissionConfig,
    metrics: Arc<EngineMetrics>,
    state: parking_lot::Mutex<State>,
}

struct State {
    in_use: usize,
    queue: VecDeque<Waiter>,
    /// When an admission last waited less than `target` (or not at all).
    last_good: Instant,
}

struct Waiter {
    since: Instant,
    admit: Admit,
    reply: oneshot::Sender<Result<Permit, Refused>>,
}

/// How long a refused caller had waited, and how many were queued then.
struct Refused {
    waited: Duration,
    queued: usize,
}

/// One admitted slot; dropping it admits the next caller.
pub(crate) struct Permit {
    admission: Option<Arc<Admission>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(a) = self.admission.take() {
            a.release();
        }
    }
}

impl Admission {
    pub fn new(capacity: usize, config: AdmissionConfig, metrics: Arc<EngineMetrics>) -> Arc<Self> {
        Arc::new(Admission {
            capacity: capacity.max(1),
            config,
            metrics,
            state: parking_lot::Mutex::new(State {
                in_use: 0,
                queue: VecDeque::new(),
                last_good: Instant::now(),
            }),
        })
    }

    /// Waits for a slot; `Admit::Shed` callers are refused as the module comment says.
    pub async fn admit(self: &Arc<Self>, admit: Admit) -> Result<Permit, FunctionError> {
        let mut reply = {
            let mut s = self.state.lock();
            let now = Instant::now();
            if s.in_use < self.capacity && s.queue.is_empty() {
                s.in_use += 1;
                s.last_good = now;
                return Ok(self.permit());
            }
            if admit == Admit::Shed && s.queue.len() >= self.config.max_waiting {
                let queued = s.queue.len();
                drop(s);
                return Err(self.refusal(Refused {
                    waited: Duration::ZERO,
                    queued,
                }));
            }
            let (tx, rx) = oneshot::channel();
            s.queue.push_back(Waiter {
                since: now,
                admit,
                reply: tx,
            });
            self.note_queued(&s);
            rx
        };
        let outcome = match admit {
            Admit::Wait => reply.await,
            // The head-of-queue check refuses the call at `max_wait` only when a slot frees;
            // the timer bounds the wait when none does (a stalled disk).
            Admit::Shed => match tokio::time::timeout(self.config.max_wait, &mut reply).await {
                Ok(r) => r,
                Err(_) => {
                    // A grant sent just as the timer fired is used, not lost.
                    reply.close();
                    reply.try_recv().or(Ok(Err(Refused {
                        waited: self.config.max_wait,
                        queued: self.state.lock().queue.len(),
                    })))
                }
            },
        };
        match outcome {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(refused)) => Err(self.refusal(refused)),
            Err(_) => Err(FunctionError::internal("engine closed")),
        }
    }

    fn permit(self: &Arc<Self>) -> Permit {
        Permit {
            admission: Some(self.clone()),
        }
    }

    /// Hands the freed slot to the first queued caller still waiting, refusing on the way the
    /// client calls that have waited too long.
    fn release(self: &Arc<Self>) {
        let mut s = self.state.lock();
        let now = Instant::now();
        let granted = self.hand_over(&mut s, now);
        if !granted {
            s.in_use -= 1;
        }
        self.note_queued(&s);
    }

    fn note_queued(&self, s: &State) {
        self.metrics
            .admission_queued
            .store(s.queue.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Gives the slot being released to the first queued caller that may still have it;
    /// false when there is none.
    fn hand_over(self: &Arc<Self>, s: &mut State, now: Instant) -> bool {
        while let Some(w) = s.queue.pop_front() {
            let waited = now.saturating_duration_since(w.since);
            let standing = now.saturating_duration_since(s.last_good) > self.config.interval;
            if w.admit == Admit::Shed
                && (waited >= self.config.max_wait || (standing && waited >= self.config.target))
            {
                let queued = s.queue.len();
                // A caller already gone needs no answer.
                let _ = w.reply.send(Err(Refused { waited, queued }));
                continue;
            }
            match w.reply.send(Ok(self.permit())) {
                Ok(()) => {
                    if waited < self.config.target {
                        s.last_good = now;
                    }
                    self.metrics.admission_wait.observe_duration(waited);
                    return true;
                }
                // The caller went away: the slot goes to the next one.
                Err(Ok(mut unused)) => unused.admission = None,
                Err(Err(_)) => {}
            }
        }
        false
    }

    fn refusal(&self, r: Refused) -> FunctionError {
        self.metrics
            .admission_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Back off longer the more callers are queued: about the time to clear them.
        let backlog = u32::try_from(1 + r.queued / self.capacity).unwrap_or(u32::MAX);
        let retry_after = self
            .config
            .interval
            .saturating_mul(backlog)
            .min(self.config.max_wait);
        FunctionError::new(
            codes::RATE_LIMITED,
            format!(
                "the server is overloaded: the mutation was not run after waiting {} ms for \
                 admission ({} queued); retry after {} ms",
                r.waited.as_millis(),
                r.queued,
                retry_after.as_millis()
            ),
        )
        .with_data(obj! {
            "reason" => OVERLOADED,
            "retryAfterMs" => retry_after.as_millis() as i64,
        })
    }
}

/// `data.reason` of a call refused by load shedding.
pub const OVERLOADED: &str = "overloaded";

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(capacity: usize, config: AdmissionConfig) -> Arc<Admission> {
        Admission::new(capacity, config, Arc::new(EngineMetrics::default()))
    }

    fn reason(e: &FunctionError) -> Option<&str> {
        e.data.get_path("reason").and_then(|v| v.as_str())
    }

    #[tokio::test(start_paused = true)]
    async fn a_free_slot_admits_at_once_and_a_dropped_permit_admits_the_next() {
        let a = admission(1, AdmissionConfig::default());
        let first = a.admit(Admit::Shed).await.unwrap();
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { a.admit(Admit::Shed).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(a.state.lock().queue.len(), 1);
        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!(a.state.lock().in_use, 0);
    }

    /// A burst on a draining queue waits (up to `max_wait`) instead of being refused.
    #[tokio::test(start_paused = true)]
    async fn a_burst_waits_while_the_queue_drains() {
        let a = admission(1, AdmissionConfig::default());
        let mut held = Some(a.admit(Admit::Shed).await.unwrap());
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move {
                    let p = a.admit(Admit::Shed).await?;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    drop(p);
                    Ok::<_, FunctionError>(())
                })
            })
            .collect();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        held.take();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert_eq!(
            a.metrics
                .admission_refused
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    /// Once every admission for `interval` waited `target` or more, calls that have waited
    /// `target` are refused with RATE_LIMITED/overloaded, internal callers still wait, and the
    /// slot count comes back whole.
    #[tokio::test(start_paused = true)]
    async fn a_standing_queue_sheds_client_calls_but_not_internal_ones() {
        let a = admission(1, AdmissionConfig::default());
        let held = a.admit(Admit::Shed).await.unwrap();
        let spawn = |admit| {
            let a = a.clone();
            tokio::spawn(async move { a.admit(admit).await.map(drop) })
        };
        let clients: Vec<_> = (0..4).map(|_| spawn(Admit::Shed)).collect();
        let internal = spawn(Admit::Wait);
        tokio::task::yield_now().await;
        // Nothing admitted for 200 ms: the queue stands.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(held);
        for c in clients {
            let e = c.await.unwrap().unwrap_err();
            assert_eq!(e.code, codes::RATE_LIMITED);
            assert_eq!(reason(&e), Some(OVERLOADED));
            assert!(e.data.get_path("retryAfterMs").and_then(|v| v.as_i64()) > Some(0));
        }
        internal.await.unwrap().unwrap();
        let s = a.state.lock();
        assert_eq!((s.in_use, s.queue.len()), (0, 0));
    }

    /// With no slot freed at all, a client call gives up at `max_wait`.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_queue_refuses_at_max_wait() {
        let a = admission(1, AdmissionConfig::default());
        let _held = a.admit(Admit::Shed).await.unwrap();
        let started = tokio::time::Instant::now();
        let e = a.admit(Admit::Shed).await.map(drop).unwrap_err();
        assert_eq!(reason(&e), Some(OVERLOADED));
        assert_eq!(started.elapsed(), AdmissionConfig::default().max_wait);
        // The refused caller holds no slot; its queue entry goes at the next release.
        assert_eq!(a.state.lock().in_use, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_on_arrival() {
        let config = AdmissionConfig {
            max_waiting: 2,
            ..AdmissionConfig::default()
        };
        let a = admission(1, config);
        let _held = a.admit(Admit::Shed).await.unwrap();
        let _queued: Vec<_> = (0..2)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move { a.admit(Admit::Shed).await.map(drop) })
            })
            .collect();
        tokio::task::yield_now().await;
        let e = a.admit(Admit::Shed).await.map(drop).unwrap_err();
        assert_eq!(reason(&e), Some(OVERLOADED));
        // Internal callers are never refused for the queue's length.
        let internal = tokio::spawn({
            let a = a.clone();
            async move { a.admit(Admit::Wait).await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(a.state.lock().queue.len(), 3);
        internal.abort();
    }

    /// A caller dropped while queued (its connection closed) is skipped; the slot goes on.
    #[tokio::test(start_paused = true)]
    async fn a_caller_gone_from_the_queue_does_not_hold_the_slot() {
        let a = admission(1, AdmissionConfig::default());
        let held = a.admit(Admit::Wait).await.unwrap();
        let gone = tokio::spawn({
            let a = a.clone();
            async move { a.admit(Admit::Wait).await.map(drop) }
        });
        let next = tokio::spawn({
            let a = a.clone();
            async move { a.admit(Admit::Wait).await.map(drop) }
        });
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        drop(held);
        next.await.unwrap().unwrap();
        assert_eq!(a.state.lock().in_use, 0);
    }
}
