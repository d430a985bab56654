//! Retried-mutation deduplication (protocol §12): the committed result of each mutation is
//! remembered by (identity, mutationId) for a bounded time and count, so a retry returns it
//! instead of applying the mutation twice; a concurrent duplicate waits for the first run.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use query_engine::committer::Committed;
use query_engine::error::{FunctionError, FunctionResult};
use tokio::sync::watch;

use crate::config::MutationDedupConfig;

/// (identity key, mutation id); the identity key is `issuer|subject`, empty when anonymous.
pub(crate) type DedupKey = (String, String);

enum Slot {
    /// A run is in flight; the receiver wakes when it ends either way.
    Running(watch::Receiver<()>),
    Done {
        committed: Committed,
        at: Instant,
        seq: u64,
        bytes: usize,
    },
}

#[derive(Default)]
struct State {
    slots: HashMap<DedupKey, Slot>,
    /// Completed entries, oldest first: (seq, key). Stale items (their slot is gone or newer)
    /// are skipped when popped; the queue never holds more than `max_entries` items.
    order: VecDeque<(u64, DedupKey)>,
    next_seq: u64,
    value_bytes: usize,
    /// Completed entries held.
    done: usize,
}

enum Claim {
    Run(watch::Sender<()>),
    Wait(watch::Receiver<()>),
    Done(Committed),
}

pub(crate) struct MutationDedup {
    config: MutationDedupConfig,
    state: Mutex<State>,
}

/// How a deduplicated mutation call ended.
pub(crate) struct DedupOutcome {
    pub result: FunctionResult<Committed>,
    /// True when the result is a remembered one and the mutation did not run again.
    pub replayed: bool,
}

impl MutationDedup {
    pub(crate) fn new(config: MutationDedupConfig) -> Arc<Self> {
        Arc::new(MutationDedup {
            config,
            state: Mutex::new(State::default()),
        })
    }

    /// Remembered results currently held.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().done
    }

    /// Runs `mutation` unless a result for `key` is remembered. The mutation runs in a task of
    /// its own, so that a connection dropping mid-commit still records the outcome for the
    /// retry that will follow.
    pub(crate) async fn run<F>(self: &Arc<Self>, key: DedupKey, mutation: F) -> DedupOutcome
    where
        F: Future<Output = FunctionResult<Committed>> + Send + 'static,
    {
        let mut mutation = Some(mutation);
        loop {
            match self.claim(&key) {
                Claim::Done(committed) => {
                    return DedupOutcome {
                        result: Ok(committed),
                        replayed: true,
                    }
                }
                Claim::Wait(mut rx) => {
                    // Ends when the running call finishes (its sender drops); then look again.
                    let _ = rx.changed().await;
                }
                Claim::Run(tx) => {
                    let Some(mutation) = mutation.take() else {
                        // Only reachable if a claim were granted twice, which `claim` prevents.
                        return DedupOutcome {
                            result: Err(FunctionError::internal("mutation claimed twice")),
                            replayed: false,
                        };
                    };
                    let guard = RunGuard {
                        dedup: self.clone(),
                        key: key.clone(),
                        _wake: tx,
                        finished: false,
                    };
                    let task = tokio::spawn(async move {
                        let mut guard = guard;
                        let result = mutation.await;
                        guard.finish(&result);
                        result
                    });
                    let result = task
                        .await
                        .unwrap_or_else(|_| Err(FunctionError::internal("mutation task failed")));
                    return DedupOutcome {
                        result,
                        replayed: false,
                    };
                }
            }
        }
    }

    fn claim(&self, key: &DedupKey) -> Claim {
        let mut state = self.state.lock();
        match state.slots.get(key) {
            Some(Slot::Done { committed, at, .. }) if at.elapsed() <= self.config.ttl => {
                return Claim::Done(committed.clone())
            }
            Some(Slot::Running(rx)) => return Claim::Wait(rx.clone()),
            Some(Slot::Done { bytes, .. }) => {
                let bytes = *bytes;
                state.value_bytes -= bytes;
                state.done -= 1;
                state.slots.remove(key);
            }
            None => {}
        }
        let (tx, rx) = watch::channel(());
        state.slots.insert(key.clone(), Slot::Running(rx));
        Claim::Run(tx)
    }

    fn complete(&self, key: &DedupKey, result: Option<&Committed>) {
        let mut state = self.state.lock();
        let Some(committed) = result else {
            // Nothing committed: forget the key so a retry runs the mutation.
            state.slots.remove(key);
            return;
        };
        let bytes = committed.value.size_bytes();
        if self.config.max_entries == 0 || bytes > self.config.max_value_bytes {
            state.slots.remove(key);
            return;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.slots.insert(
            key.clone(),
            Slot::Done {
                committed: committed.clone(),
                at: Instant::now(),
                seq,
                bytes,
            },
        );
        state.value_bytes += bytes;
        state.done += 1;
        state.order.push_back((seq, key.clone()));
        self.evict(&mut state);
    }

    /// Drops the oldest completed entries while over a bound or past the TTL.
    fn evict(&self, state: &mut State) {
        while let Some((seq, key)) = state.order.front().cloned() {
            let current = match state.slots.get(&key) {
                Some(Slot::Done {
                    seq: s, at, bytes, ..
                }) if *s == seq => Some((*at, *bytes)),
                _ => None,
            };
            let over = state.order.len() > self.config.max_entries
                || state.value_bytes > self.config.max_value_bytes;
            match current {
                // Stale queue item: its entry expired, failed or was replaced.
                None => {
                    state.order.pop_front();
                }
                Some((at, bytes)) if over || at.elapsed() > self.config.ttl => {
                    state.order.pop_front();
                    state.slots.remove(&key);
                    state.value_bytes -= bytes;
                    state.done -= 1;
                }
                Some(_) => break,
            }
        }
    }
}

/// Records the outcome when the mutation finishes, and releases the claim if the task dies
/// first, so waiters never hang.
struct RunGuard {
    dedup: Arc<MutationDedup>,
    key: DedupKey,
    /// Dropped with the guard, which wakes the waiters.
    _wake: watch::Sender<()>,
    finished: bool,
}

impl RunGuard {
    fn finish(&mut self, result: &FunctionResult<Committed>) {
        self.dedup.complete(&self.key, result.as_ref().ok());
        self.finished = true;
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.dedup.complete(&self.key, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use query_engine::value::Value;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    fn key(id: &str) -> DedupKey {
        ("iss|user".into(), id.into())
    }

    fn counting(
        runs: &Arc<AtomicU64>,
        ok: bool,
    ) -> impl Future<Output = FunctionResult<Committed>> {
        let runs = runs.clone();
        async move {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
            if ok {
                Ok(Committed {
                    ts: n,
                    value: Value::Int64(n as i64),
                })
            } else {
                Err(FunctionError::conflict("no"))
            }
        }
    }

    #[tokio::test]
    async fn retries_and_concurrent_duplicates_run_once() {
        let dedup = MutationDedup::new(MutationDedupConfig::default());
        let runs = Arc::new(AtomicU64::new(0));
        let (a, b) = tokio::join!(
            dedup.run(key("m1"), counting(&runs, true)),
            dedup.run(key("m1"), counting(&runs, true)),
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(a.result.clone().unwrap(), b.result.clone().unwrap());
        assert!(a.replayed != b.replayed);
        let again = dedup.run(key("m1"), counting(&runs, true)).await;
        assert!(again.replayed);
        assert_eq!(again.result.unwrap().ts, 1);
        let other = dedup.run(key("m2"), counting(&runs, true)).await;
        assert!(!other.replayed);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_are_not_remembered() {
        let dedup = MutationDedup::new(MutationDedupConfig::default());
        let runs = Arc::new(AtomicU64::new(0));
        assert!(dedup
            .run(key("m"), counting(&runs, false))
            .await
            .result
            .is_err());
        let retry = dedup.run(key("m"), counting(&runs, true)).await;
        assert!(!retry.replayed);
        assert!(retry.result.is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn entries_are_bounded() {
        let dedup = MutationDedup::new(MutationDedupConfig {
            max_entries: 3,
            ..MutationDedupConfig::default()
        });
        let runs = Arc::new(AtomicU64::new(0));
        for i in 0..10 {
            dedup
                .run(key(&format!("m{i}")), counting(&runs, true))
                .await;
        }
        assert_eq!(dedup.len(), 3);
        assert!(dedup.state.lock().order.len() <= 3);
        // The newest are kept, the oldest forgotten.
        assert!(dedup.run(key("m9"), counting(&runs, true)).await.replayed);
        assert!(!dedup.run(key("m0"), counting(&runs, true)).await.replayed);
    }
}
