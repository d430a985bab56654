//! A client's outbox: at most one pending transition, into which newer updates are merged.
//! A consumer that keeps up receives every transition as it happens; one that falls behind
//! receives the latest state — memory per client is bounded by its subscriptions' result
//! sizes, never by the number of commits. A query changed twice is sent as one diff from the
//! value the client has to the latest: sending it in full instead made every transition of a
//! lagging client as large as its whole results, so it fell further behind and never caught
//! up (seen in the fan-out benchmark after an overloaded step).
//!
//! Merging only remembers the two ends (`Update::Merged`); the diff between them is worked out
//! when the consumer takes the transition, on the consumer's task. Diffing at every merge put
//! a lagging client's work — a diff and an encoding of up to a whole result per commit, for
//! each of its lagging queries — on the subscription worker that every client waits for.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::diff::{diff, ResultDiff};
use crate::error::FunctionError;
use crate::value::Value;

use super::transition::{encode_diff, QueryUpdate, Transition};

/// The result changed from `base` (what the client has) to `latest` by `diff`.
pub(crate) struct Change {
    diff: Arc<ResultDiff>,
    encoded: Arc<Vec<u8>>,
    base: Arc<Value>,
    latest: Arc<Value>,
}

/// What the worker hands the outbox for one query. Cloned once per subscriber of a changed
/// execution, so a change is one shared allocation: one reference count to bump, not four.
#[derive(Clone)]
pub(crate) enum Update {
    Changed(Arc<Change>),
    /// Changes merged while the consumer lagged: from `base` (what the client has) to
    /// `latest`, diffed when taken.
    Merged {
        base: Arc<Value>,
        latest: Arc<Value>,
    },
    /// The full value (a new subscription, or a re-run under a new identity).
    Full(Arc<Value>),
    Failed(FunctionError),
    Removed,
}

impl Update {
    /// The change from `base` to `latest`, its diff encoded once; `None` if they are equal.
    pub fn change(base: Arc<Value>, latest: Arc<Value>) -> Option<Update> {
        diff(&base, &latest).map(|d| {
            Update::Changed(Arc::new(Change {
                encoded: Arc::new(encode_diff(&d)),
                diff: Arc::new(d),
                base,
                latest,
            }))
        })
    }

    /// The value this update leaves the client with, if it is a change of a value.
    fn latest(&self) -> Option<&Arc<Value>> {
        match self {
            Update::Changed(c) => Some(&c.latest),
            Update::Merged { latest, .. } => Some(latest),
            _ => None,
        }
    }

    /// What the client has before this change, if it is one.
    fn base(&self) -> Option<&Arc<Value>> {
        match self {
            Update::Changed(c) => Some(&c.base),
            Update::Merged { base, .. } => Some(base),
            _ => None,
        }
    }
}

/// `later` applied after `earlier`, as one update. Constant time: a change after a change is
/// remembered by its ends, not diffed here.
fn merge(earlier: Update, later: Update) -> Update {
    if let (Some(base), Some(latest)) = (earlier.base(), later.latest()) {
        return Update::Merged {
            base: base.clone(),
            latest: latest.clone(),
        };
    }
    match (earlier, later.latest()) {
        // The client has no value the change applies to: it gets the new value in full.
        (Update::Full(_), Some(latest)) => Update::Full(latest.clone()),
        _ => later,
    }
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
    /// Subscriptions the consumer ended itself (`end`) that the worker has not dropped yet.
    /// Updates pushed for them meanwhile are discarded: the client was told they ended, and a
    /// change merged after that would bring back a query it no longer has. At most one entry
    /// per subscription of the client, and the worker clears it as soon as it drops the one.
    ended: Vec<u32>,
    closed: bool,
    merges: u64,
}

#[derive(Default)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    notify: Notify,
}

impl Outbox {
    /// Adds updates that bring the client to `ts`. Returns the pending depth and whether this
    /// push made a transition due — then the caller must `wake` the consumer (the worker does
    /// it in bulk after its pass, see `wakeup`).
    pub fn push(&self, ts: u64, updates: impl IntoIterator<Item = (u32, Update)>) -> (usize, bool) {
        let mut s = self.state.lock();
        for (q, u) in updates {
            if s.ended.contains(&q) {
                continue;
            }
            match s.pending.binary_search_by_key(&q, |(q, _)| *q) {
                Ok(i) => {
                    // The consumer has not taken the previous update: merge the two into
                    // what takes it from the value it has to the latest.
                    s.merges += 1;
                    let earlier = std::mem::replace(&mut s.pending[i].1, Update::Removed);
                    s.pending[i].1 = merge(earlier, u);
                }
                Err(i) => s.pending.insert(i, (q, u)),
            }
        }
        s.latest_ts = s.latest_ts.max(ts);
        // Only the push that makes a transition due needs to wake the consumer: while one is
        // due, the consumer has been woken (or holds a permit) and will take everything merged
        // since.
        let wake = !s.due;
        s.due = true;
        (s.pending.len(), wake)
    }

    /// Wakes the consumer after a push that made a transition due.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// The consumer ended subscription `query_id` itself (and told the client so): what is
    /// pending for it is dropped, and so is whatever is pushed for it until `forget_end`.
    pub fn end(&self, query_id: u32) {
        let mut s = self.state.lock();
        s.pending.retain(|(q, _)| *q != query_id);
        if !s.ended.contains(&query_id) {
            s.ended.push(query_id);
        }
    }

    /// The worker dropped subscription `query_id`, ended by `end`: it pushes nothing more for
    /// it, and a new subscription under the same id is the client's again.
    pub fn forget_end(&self, query_id: u32) {
        self.state.lock().ended.retain(|q| *q != query_id);
    }

    pub fn close(&self) {
        self.state.lock().closed = true;
        self.notify.notify_one();
    }

    /// Whether the session's handle is gone (`close` was called).
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    pub fn latest_ts(&self) -> u64 {
        self.state.lock().latest_ts
    }

    /// Subscriptions whose end (`Removed` or `Failed`) is pending, not yet taken by the
    /// consumer. Their ids are still live from the client's side until it reads the end, so
    /// they count against its subscription limit: a client that stops reading while it
    /// subscribes and unsubscribes fresh ids would otherwise grow this outbox without bound.
    pub fn pending_ends(&self) -> usize {
        self.state
            .lock()
            .pending
            .iter()
            .filter(|(_, u)| matches!(u, Update::Removed | Update::Failed(_)))
            .count()
    }

    /// Merges performed so far (a measure of how far behind the consumer has been).
    pub fn merges(&self) -> u64 {
        self.state.lock().merges
    }

    fn take(&self) -> Option<Option<Transition>> {
        let mut merged = Vec::new();
        let (start_ts, end_ts, mut updates) = {
            let mut s = self.state.lock();
            if !s.due {
                return s.closed.then_some(None);
            }
            s.due = false;
            let start = s.delivered_ts;
            s.delivered_ts = s.latest_ts;
            let mut updates = Vec::with_capacity(s.pending.len());
            for (query_id, u) in s.pending.drain(..) {
                updates.push(match u {
                    // Diffed below, after the lock is released, so the worker's pushes to
                    // this outbox do not wait for them.
                    Update::Merged { base, latest } => {
                        merged.push((query_id, base, latest));
                        continue;
                    }
                    Update::Changed(c) => QueryUpdate::Updated {
                        query_id,
                        diff: c.diff.clone(),
                        encoded: Some(c.encoded.clone()),
                    },
                    Update::Full(v) => QueryUpdate::Updated {
                        query_id,
                        diff: Arc::new(ResultDiff::Replace((*v).clone())),
                        encoded: None,
                    },
                    Update::Failed(error) => QueryUpdate::Failed { query_id, error },
                    Update::Removed => QueryUpdate::Removed { query_id },
                });
            }
            (start, s.latest_ts, updates)
        };
        if !merged.is_empty() {
            // Changes that cancelled out send nothing for their query.
            updates.extend(merged.into_iter().filter_map(|(query_id, base, latest)| {
                Some(QueryUpdate::Updated {
                    query_id,
                    diff: Arc::new(diff(&base, &latest)?),
                    encoded: None,
                })
            }));
            updates.sort_by_key(QueryUpdate::query_id);
        }
        Some(Some(Transition {
            start_ts,
            end_ts,
            updates,
        }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::apply;
    use crate::obj;

    fn docs(n: i64) -> Arc<Value> {
        Arc::new(Value::Array(
            (0..n)
                .map(|i| obj! {"_id" => format!("d{i}"), "text" => "x".repeat(100)})
                .collect(),
        ))
    }

    fn changed(base: &Arc<Value>, latest: &Arc<Value>) -> Update {
        Update::change(base.clone(), latest.clone()).expect("a change")
    }

    /// A consumer that fell behind gets one diff from the value it has to the latest — as
    /// small as the change, not the whole result — and applying it gives the latest value.
    #[test]
    fn merged_changes_stay_a_diff_from_what_the_client_has() {
        let o = Outbox::default();
        let versions: Vec<Arc<Value>> = (40..=45).map(docs).collect();
        for (i, w) in versions.windows(2).enumerate() {
            o.push(i as u64 + 1, vec![(7, changed(&w[0], &w[1]))]);
        }
        let t = o.try_next().expect("a transition");
        assert_eq!((t.start_ts, t.end_ts), (0, 5));
        let [QueryUpdate::Updated { diff, encoded, .. }] = &t.updates[..] else {
            panic!("one update expected");
        };
        assert!(matches!(**diff, ResultDiff::Array(ref edits) if edits.len() == 5));
        // Diffed when taken, so encoded by the connection, not shared.
        assert!(encoded.is_none());
        assert!(encode_diff(diff).len() < 1_000);
        assert_eq!(apply(&versions[0], diff).unwrap(), *versions[5]);
        assert_eq!(o.merges(), 4);
    }

    /// Merged changes, diffed at take, keep their place among the other queries' updates.
    #[test]
    fn merged_changes_keep_query_order() {
        let o = Outbox::default();
        let (a, b, c) = (docs(1), docs(2), docs(3));
        o.push(1, vec![(2, changed(&a, &b))]);
        o.push(
            2,
            vec![
                (1, changed(&a, &b)),
                (2, changed(&b, &c)),
                (3, Update::Full(c.clone())),
            ],
        );
        let t = o.try_next().expect("a transition");
        let ids: Vec<u32> = t.updates.iter().map(QueryUpdate::query_id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        let QueryUpdate::Updated { diff, encoded, .. } = &t.updates[1] else {
            panic!("query 2 updated");
        };
        assert!(encoded.is_none(), "diffed when taken");
        assert_eq!(apply(&a, diff).unwrap(), *c);
    }

    /// Changes that cancel out leave nothing to send for that query; a query the client has
    /// no value for yet stays a full value.
    #[test]
    fn cancelling_changes_send_nothing_and_full_values_stay_full() {
        let o = Outbox::default();
        let (a, b) = (docs(3), docs(4));
        o.push(1, vec![(1, changed(&a, &b)), (2, Update::Full(a.clone()))]);
        o.push(2, vec![(1, changed(&b, &a)), (2, changed(&a, &b))]);
        let t = o.try_next().expect("a transition");
        assert_eq!(t.end_ts, 2);
        let [QueryUpdate::Updated {
            query_id: 2, diff, ..
        }] = &t.updates[..]
        else {
            panic!("only query 2 expected, got {} updates", t.updates.len());
        };
        assert_eq!(**diff, ResultDiff::Replace((*b).clone()));
    }
}
