//! Re-running executions: what one execution needs to run (its spec), the re-run itself with
//! its diff against the previous result, and a pool of long-lived threads that take a share of
//! a large pass. A re-run only reads at a snapshot, so any thread can do it; the worker applies
//! the results to its state afterwards, in one place.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;

use crate::engine::Engine;
use crate::error::FunctionError;
use crate::functions::{FunctionDef, TxnHandler};
use crate::identity::Identity;
use crate::reads::ReadSet;
use crate::storage::Snapshot;
use crate::value::Value;

use super::invalidation::ExecId;
use super::outbox::Update;

/// Everything needed to run an execution again; shared by the worker and the pool threads.
pub(super) struct ExecSpec {
    pub handler: TxnHandler,
    pub def: Arc<FunctionDef>,
    pub args: Value,
    /// The caller's identity; `None` for a shared body or a public query.
    pub identity: Option<Identity>,
    /// An access check (its value is not sent; only its failure matters).
    pub access: bool,
}

/// One execution to re-run, with the result its subscribers have now.
pub(super) struct RerunJob {
    pub id: ExecId,
    pub spec: Arc<ExecSpec>,
    pub previous: Result<Arc<Value>, FunctionError>,
}

/// The outcome of re-running one execution, applied to the worker's state afterwards.
pub(super) struct Rerun {
    pub id: ExecId,
    pub result: Result<Arc<Value>, FunctionError>,
    pub reads: ReadSet,
    /// What subscribers need: `None` when the result did not change.
    pub update: Option<Update>,
}

/// Runs `spec` at `snapshot`. A handler that panics yields an `INTERNAL` error for its
/// subscribers instead of taking the subscription worker down with it.
pub(super) fn execute(
    engine: &Engine,
    snapshot: &Snapshot,
    spec: &ExecSpec,
) -> (Result<Arc<Value>, FunctionError>, ReadSet) {
    let run = catch_unwind(AssertUnwindSafe(|| {
        engine.run_query_at(
            snapshot,
            &spec.handler,
            spec.args.clone(),
            spec.identity.as_ref(),
        )
    }));
    let Ok((r, reads)) = run else {
        tracing::error!(function = %spec.def.name, "query handler panicked");
        let e = FunctionError::internal(format!("query {} failed", spec.def.name));
        return (Err(e), ReadSet::default());
    };
    let r = r.and_then(|v| {
        if !spec.access {
            engine.check_result(&spec.def, &v)?;
        }
        Ok(Arc::new(v))
    });
    (r, reads)
}

/// Re-runs one execution and works out what its subscribers need (nothing, a diff encoded
/// once, the full value, or the error).
pub(super) fn rerun(engine: &Engine, snapshot: &Snapshot, job: &RerunJob) -> Rerun {
    let (result, reads) = execute(engine, snapshot, &job.spec);
    let update = match (&job.previous, &result) {
        (Ok(old), Ok(new)) => Update::change(old.clone(), new.clone()),
        (Err(a), Err(b)) if a == b => None,
        (_, Err(e)) => Some(Update::Failed(e.clone())),
        (Err(_), Ok(v)) => Some(Update::Full(v.clone())),
    };
    Rerun {
        id: job.id,
        result,
        reads,
        update,
    }
}

/// Fewer re-runs than this in a pass run on the calling thread alone (handing a share to a
/// pool thread costs about as much as a couple of re-runs).
const PARALLEL_MIN_RERUNS: usize = 16;

/// A share of one pass for a pool thread.
struct Share {
    engine: Engine,
    snapshot: Arc<Snapshot>,
    jobs: Vec<RerunJob>,
}

/// Long-lived threads that re-run a share of each large pass while the worker runs its own.
/// Threads are started once (starting one per pass cost as much as several re-runs); each
/// holds at most one share, so the pool's memory is bounded by one pass.
pub(super) struct RerunPool {
    shares: Vec<SyncSender<Share>>,
    done: Receiver<Vec<Rerun>>,
}

impl RerunPool {
    /// Starts `helpers` threads (fewer if the system refuses some).
    pub fn start(helpers: usize) -> Self {
        let (done_tx, done) = channel();
        let mut shares = Vec::new();
        for i in 0..helpers {
            let (tx, rx) = sync_channel::<Share>(1);
            let done_tx: Sender<Vec<Rerun>> = done_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("subscriptions-rerun-{i}"))
                .spawn(move || {
                    while let Ok(share) = rx.recv() {
                        let out = share
                            .jobs
                            .iter()
                            .map(|j| rerun(&share.engine, &share.snapshot, j))
                            .collect();
                        // Dropped here, not in the worker: freeing a share's old values is
                        // part of the share's cost.
                        drop(share);
                        if done_tx.send(out).is_err() {
                            return;
                        }
                    }
                });
            match spawned {
                Ok(_) => shares.push(tx),
                Err(e) => tracing::warn!(error = %e, "cannot start a re-run thread"),
            }
        }
        RerunPool { shares, done }
    }

    /// Re-runs `jobs` at `snapshot`: with at least `PARALLEL_MIN_RERUNS` of them the pool's
    /// threads take equal shares and the calling thread the first one; fewer run on the calling
    /// thread alone. Results come back in no particular order.
    pub fn run(
        &self,
        engine: &Engine,
        snapshot: &Arc<Snapshot>,
        mut jobs: Vec<RerunJob>,
    ) -> Vec<Rerun> {
        let parts = if jobs.len() < PARALLEL_MIN_RERUNS {
            1
        } else {
            self.shares.len() + 1
        };
        let per = jobs.len().div_ceil(parts).max(1);
        let mut sent = 0;
        for tx in self.shares.iter().take(parts - 1) {
            if jobs.len() <= per {
                break;
            }
            let share = jobs.split_off(jobs.len() - per);
            let share = Share {
                engine: engine.clone(),
                snapshot: snapshot.clone(),
                jobs: share,
            };
            match tx.send(share) {
                Ok(()) => sent += 1,
                // That thread is gone: this one does its share.
                Err(back) => jobs.extend(back.0.jobs),
            }
        }
        let mut out: Vec<Rerun> = jobs.iter().map(|j| rerun(engine, snapshot, j)).collect();
        for _ in 0..sent {
            match self.done.recv() {
                Ok(part) => out.extend(part),
                // Every pool thread exited mid-share, which `rerun` (catching panics) rules
                // out; the executions keep their previous results until the next commit.
                Err(_) => break,
            }
        }
        out
    }
}
