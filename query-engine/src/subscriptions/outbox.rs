//! A client's outbox: at most one pending transition, into which newer updates are merged.
//! A consumer that keeps up receives every transition as it happens; one that falls behind
//! receives the latest state (a query changed twice is sent in full) — memory per client is
//! bounded by its subscriptions' result sizes, never by the number of commits.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::diff::ResultDiff;
use crate::error::FunctionError;
use crate::value::Value;

use super::transition::{QueryUpdate, Transition};

/// What the worker hands the outbox for one query.
pub(crate) enum Update {
    /// The result changed by `diff`; `latest` is the full new value, used if merged.
    Changed {
        diff: Arc<ResultDiff>,
        encoded: Arc<Vec<u8>>,
        latest: Arc<Value>,
    },
    /// The full value (a new subscription, or a re-run under a new identity).
    Full(Arc<Value>),
    Failed(FunctionError),
    Removed,
}

#[derive(Default)]
struct State {
    /// Sorted by query id, one entry per query. A Vec rather than a map so its capacity is
    /// kept across transitions: a client that keeps up costs no allocation per push.
    pending: Vec<(u32, Update)>,
    /// End timestamp of the last transition taken; the next one starts here.
    delivered_ts: u64,
    /// Timestamp the client's state will be at after the pending transition.
    latest_ts: u64,
    /// A transition is due even if `pending` is empty (e.g. read-your-writes sync).
    due: bool,
    closed: bool,
    merges: u64,
}

#[derive(Default)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    notify: Notify,
}

impl Outbox {
    /// Adds updates that bring the client to `ts`.
    pub fn push(&self, ts: u64, updates: impl IntoIterator<Item = (u32, Update)>) -> usize {
        let mut s = self.state.lock();
        for (q, u) in updates {
            match s.pending.binary_search_by_key(&q, |(q, _)| *q) {
                Ok(i) => {
                    // The consumer has not taken the previous update: it gets the latest
                    // value in full instead of a diff against a state it never saw.
                    let merged = match u {
                        Update::Changed { latest, .. } => {
                            s.merges += 1;
                            Update::Full(latest)
                        }
                        u => u,
                    };
                    s.pending[i].1 = merged;
                }
                Err(i) => s.pending.insert(i, (q, u)),
            }
        }
        s.latest_ts = s.latest_ts.max(ts);
        // Only the push that makes a transition due wakes the consumer: while one is due, the
        // consumer has been woken (or holds a permit) and will take everything merged since.
        let wake = !s.due;
        s.due = true;
        let depth = s.pending.len();
        drop(s);
        if wake {
            self.notify.notify_one();
        }
        depth
    }

    pub fn close(&self) {
        self.state.lock().closed = true;
        self.notify.notify_one();
    }

    pub fn latest_ts(&self) -> u64 {
        self.state.lock().latest_ts
    }

    /// Merges performed so far (a measure of how far behind the consumer has been).
    pub fn merges(&self) -> u64 {
        self.state.lock().merges
    }

    fn take(&self) -> Option<Option<Transition>> {
        let mut s = self.state.lock();
        if s.due {
            s.due = false;
            let start = s.delivered_ts;
            s.delivered_ts = s.latest_ts;
            let updates = s
                .pending
                .drain(..)
                .map(|(query_id, u)| match u {
                    Update::Changed { diff, encoded, .. } => QueryUpdate::Updated {
                        query_id,
                        diff,
                        encoded: Some(encoded),
                    },
                    Update::Full(v) => QueryUpdate::Updated {
                        query_id,
                        diff: Arc::new(ResultDiff::Replace((*v).clone())),
                        encoded: None,
                    },
                    Update::Failed(error) => QueryUpdate::Failed { query_id, error },
                    Update::Removed => QueryUpdate::Removed { query_id },
                })
                .collect();
            return Some(Some(Transition {
                start_ts: start,
                end_ts: s.latest_ts,
                updates,
            }));
        }
        if s.closed {
            return Some(None);
        }
        None
    }

    pub fn try_next(&self) -> Option<Transition> {
        self.take().flatten()
    }

    pub async fn next(&self) -> Option<Transition> {
        loop {
            let notified = self.notify.notified();
            if let Some(t) = self.take() {
                return t;
            }
            notified.await;
        }
    }
}
