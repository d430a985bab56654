//! Re-running executions: what one execution needs to run (its spec), the re-run itself with
//! its diff against the previous result, and a pool of long-lived threads that join a large
//! pass, claiming its jobs one at a time. A re-run only reads at a snapshot, so any thread can
//! do it; the worker applies the results to its state afterwards, in one place.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

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
    /// `previous`'s size as its check measured it (0 for an error or an access check).
    pub previous_bytes: usize,
}

/// The outcome of re-running one execution, applied to the worker's state afterwards.
pub(super) struct Rerun {
    pub id: ExecId,
    pub executed: Executed,
    /// What subscribers need: `None` when the result did not change.
    pub update: Option<Update>,
}

/// One run of an execution: its result, the result's size (0 for an error or an access
/// check, whose value is never sent) and what it read.
pub(super) struct Executed {
    pub result: Result<Arc<Value>, FunctionError>,
    pub bytes: usize,
    pub reads: ReadSet,
}

/// Runs `spec` at `snapshot`. A handler that panics yields an `INTERNAL` error for its
/// subscribers instead of taking the subscription worker down with it. `checked` is the
/// execution's previous result and its size, if it had one (its unchanged documents are not
/// validated or measured again: `Engine::check_result`).
pub(super) fn execute(
    engine: &Engine,
    snapshot: &Snapshot,
    spec: &ExecSpec,
    checked: Option<(&Value, usize)>,
) -> Executed {
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
        return Executed {
            result: Err(e),
            bytes: 0,
            reads: ReadSet::default(),
        };
    };
    let mut bytes = 0;
    let result = r.and_then(|v| {
        if !spec.access {
            bytes = engine.check_result(&spec.def, &v, checked)?;
        }
        Ok(Arc::new(v))
    });
    Executed {
        result,
        bytes,
        reads,
    }
}

/// Re-runs one execution and works out what its subscribers need (nothing, a diff encoded
/// once, the full value, or the error).
pub(super) fn rerun(engine: &Engine, snapshot: &Snapshot, job: &RerunJob) -> Rerun {
    let checked = job
        .previous
        .as_ref()
        .ok()
        .map(|v| (v.as_ref(), job.previous_bytes));
    let executed = execute(engine, snapshot, &job.spec, checked);
    let update = match (&job.previous, &executed.result) {
        (Ok(old), Ok(new)) => Update::change(old.clone(), new.clone()),
        (Err(a), Err(b)) if a == b => None,
        (_, Err(e)) => Some(Update::Failed(e.clone())),
        (Err(_), Ok(v)) => Some(Update::Full(v.clone())),
    };
    Rerun {
        id: job.id,
        executed,
        update,
    }
}

/// Fewer re-runs than this in a pass run on the calling thread alone (waking a pool thread
/// costs about as much as a couple of re-runs).
const PARALLEL_MIN_RERUNS: usize = 16;

/// One pass shared with the pool: every participant claims the next job until none are left,
/// so a participant the OS does not schedule for a while delays the pass by at most the one
/// job it holds, not by a fixed share (with more threads than cores that happens every pass).
struct Pass {
    engine: Engine,
    snapshot: Arc<Snapshot>,
    /// Each job is taken by exactly one participant, which also drops its previous result.
    jobs: Vec<Mutex<Option<RerunJob>>>,
    next: AtomicUsize,
    done: Mutex<Vec<Rerun>>,
    all_done: Condvar,
}

impl Pass {
    /// Claims and runs jobs until none are left unclaimed.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = self.jobs.get(i) else {
                return;
            };
            let Some(job) = slot.lock().take() else {
                continue;
            };
            let out = rerun(&self.engine, &self.snapshot, &job);
            drop(job);
            let mut done = self.done.lock();
            done.push(out);
            if done.len() == self.jobs.len() {
                self.all_done.notify_all();
            }
        }
    }
}

/// Long-lived threads that join each large pass while the worker runs it too. Threads are
/// started once (starting one per pass cost as much as several re-runs); each holds at most
/// one pass, so the pool's memory is bounded by one pass.
pub(super) struct RerunPool {
    helpers: Vec<SyncSender<Arc<Pass>>>,
}

impl RerunPool {
    /// Starts `helpers` threads (fewer if the system refuses some).
    pub fn start(helpers: usize) -> Self {
        let mut senders = Vec::new();
        for i in 0..helpers {
            let (tx, rx) = sync_channel::<Arc<Pass>>(1);
            let spawned = std::thread::Builder::new()
                .name(format!("subscriptions-rerun-{i}"))
                .spawn(move || {
                    while let Ok(pass) = rx.recv() {
                        pass.work();
                    }
                });
            match spawned {
                Ok(_) => senders.push(tx),
                Err(e) => tracing::warn!(error = %e, "cannot start a re-run thread"),
            }
        }
        RerunPool { helpers: senders }
    }

    /// Re-runs `jobs` at `snapshot`: with at least `PARALLEL_MIN_RERUNS` of them the pool's
    /// threads join in; fewer run on the calling thread alone. Results come back in no
    /// particular order.
    pub fn run(
        &self,
        engine: &Engine,
        snapshot: &Arc<Snapshot>,
        jobs: Vec<RerunJob>,
    ) -> Vec<Rerun> {
        if jobs.len() < PARALLEL_MIN_RERUNS || self.helpers.is_empty() {
            return jobs.iter().map(|j| rerun(engine, snapshot, j)).collect();
        }
        let total = jobs.len();
        let pass = Arc::new(Pass {
            engine: engine.clone(),
            snapshot: snapshot.clone(),
            jobs: jobs.into_iter().map(|j| Mutex::new(Some(j))).collect(),
            next: AtomicUsize::new(0),
            done: Mutex::new(Vec::with_capacity(total)),
            all_done: Condvar::new(),
        });
        for tx in &self.helpers {
            // A helper still finishing the previous pass's last job has this pass queued; a
            // helper that is gone (it cannot panic: `rerun` catches panics) is skipped.
            let _ = tx.try_send(pass.clone());
        }
        pass.work();
        let mut done = pass.done.lock();
        while done.len() < total {
            pass.all_done.wait(&mut done);
        }
        std::mem::take(&mut *done)
    }
}
