//! Waking clients' outbox consumers in bulk. The worker is a plain thread, and waking a tokio
//! task from outside the runtime takes the runtime's global queue lock and, when a runtime
//! thread is parked, a futex wake — per task. At 20,000 commits/s with 5 subscribers each that
//! was 100,000 such wakes a second, and a `sched_switch` trace showed the worker preempted by
//! the threads it woke and spinning on the queue lock. So the worker collects the outboxes that
//! became due during a pass and hands them over with one cross-thread wake to a task on the
//! runtime, which wakes each consumer from inside (a push onto its own run queue).
//!
//! Without a runtime at hand (a manager created outside tokio), consumers are woken directly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::outbox::Outbox;

#[derive(Default)]
struct Handoff {
    /// Outboxes to wake. An outbox is added only when a push makes it due, and is not due
    /// again until its consumer took the transition, so this holds each client at most once.
    due: Mutex<Vec<Arc<Outbox>>>,
    notify: Notify,
    closed: AtomicBool,
}

/// The worker's side: outboxes to wake after the current pass.
pub(super) struct Wakeups {
    /// Collected during a pass, handed over by `flush`.
    batch: Vec<Arc<Outbox>>,
    /// `None`: no runtime; wake directly.
    handoff: Option<Arc<Handoff>>,
}

impl Wakeups {
    /// Starts the waking task on the current tokio runtime, if there is one.
    pub fn start() -> Self {
        let handoff = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let h = Arc::new(Handoff::default());
            rt.spawn(wake_loop(h.clone()));
            h
        });
        Wakeups {
            batch: Vec::new(),
            handoff,
        }
    }

    /// Wakes `outbox`'s consumer at the next `flush`.
    pub fn add(&mut self, outbox: Arc<Outbox>) {
        self.batch.push(outbox);
    }

    /// Wakes every consumer added since the last flush.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let Some(h) = &self.handoff else {
            for o in self.batch.drain(..) {
                o.wake();
            }
            return;
        };
        let mut due = h.due.lock();
        let was_empty = due.is_empty();
        due.append(&mut self.batch);
        drop(due);
        // A non-empty list means the task has been notified and not yet taken it.
        if was_empty {
            h.notify.notify_one();
        }
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        self.flush();
        if let Some(h) = &self.handoff {
            h.closed.store(true, Ordering::Release);
            h.notify.notify_one();
        }
    }
}

async fn wake_loop(h: Arc<Handoff>) {
    let mut woken = Vec::new();
    loop {
        h.notify.notified().await;
        std::mem::swap(&mut woken, &mut *h.due.lock());
        for o in woken.drain(..) {
            o.wake();
        }
        if h.closed.load(Ordering::Acquire) && h.due.lock().is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Consumers parked on their outboxes, each pushed to and added; `flush` runs on a plain
    /// thread, as the worker's does. Every consumer must get its own transition.
    fn wake_all_from_a_thread(rt: &tokio::runtime::Runtime, mut wakeups: Wakeups) {
        let outboxes: Vec<Arc<Outbox>> = (0..200).map(|_| Arc::default()).collect();
        let consumers: Vec<_> = outboxes
            .iter()
            .map(|o| {
                let o = o.clone();
                rt.spawn(async move { o.next().await.map(|t| t.end_ts) })
            })
            .collect();
        // Kept until the consumers are checked: dropping it flushes and wakes the task too.
        let wakeups = std::thread::spawn(move || {
            for (i, o) in outboxes.iter().enumerate() {
                let (_, wake) = o.push(i as u64 + 1, Vec::new());
                assert!(wake, "the first push makes a transition due");
                wakeups.add(o.clone());
            }
            wakeups.flush();
            wakeups
        })
        .join()
        .expect("flushing thread");
        rt.block_on(async {
            for (i, c) in consumers.into_iter().enumerate() {
                let end = tokio::time::timeout(Duration::from_secs(10), c)
                    .await
                    .expect("consumer woken")
                    .expect("consumer task");
                assert_eq!(end, Some(i as u64 + 1));
            }
        });
        drop(wakeups);
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn consumers_are_woken_through_the_runtime_task() {
        let rt = runtime();
        let wakeups = rt.block_on(async { Wakeups::start() });
        assert!(wakeups.handoff.is_some());
        wake_all_from_a_thread(&rt, wakeups);
    }

    #[test]
    fn without_a_runtime_consumers_are_woken_directly() {
        let wakeups = Wakeups::start();
        assert!(wakeups.handoff.is_none());
        wake_all_from_a_thread(&runtime(), wakeups);
    }
}
