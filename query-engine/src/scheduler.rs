//! Scheduled functions and crons. Jobs live in the system table `_scheduled_jobs`, written by
//! `ctx.schedule_*` inside a mutation (so they exist only if it commits). The runner executes
//! due jobs: a mutation job runs in the same transaction that marks it done (exactly once); an
//! action job is marked running before it starts (at most once) and its outcome recorded. Jobs
//! survive restarts; an action interrupted by a restart is recorded as failed, not re-run (all
//! of them, however many). At most `MAX_RUNNING_ACTIONS` actions run at once; a backlog waits,
//! pending. A cron's schedule survives restarts: its next run is an interval after its last.
//! Finished jobs are kept for `EngineConfig::finished_job_retention` after they were due and
//! then deleted, a bounded batch per transaction, so the table does not grow with every job
//! ever run (each cron run and each continuation of a purge is a job).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::Engine;
use crate::error::{FunctionError, FunctionResult};
use crate::functions::FunctionKind;
use crate::obj;
use crate::schema::{v, IndexDefinition, TableDefinition};
use crate::value::{Object, Value};

pub const SCHEDULED_JOBS: &str = "_scheduled_jobs";
const BY_STATE_TIME: &str = "by_state_time";
/// Jobs by state and kind, by time: the due mutation jobs apart from a backlog of actions.
const BY_STATE_KIND_TIME: &str = "by_state_kind_time";
/// A function's jobs by time: when a cron last ran.
const BY_FUNCTION_TIME: &str = "by_function_time";
/// Most jobs started per scheduler pass.
const MAX_JOBS_PER_PASS: usize = 64;
/// Longest the runner sleeps before looking again.
const MAX_IDLE: Duration = Duration::from_millis(100);
/// How often finished jobs past their retention are looked for (more often if the retention
/// is shorter).
const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
/// Most finished jobs deleted per transaction.
const CLEANUP_BATCH: usize = 500;
/// Most scheduled actions running at once; more due ones wait, pending. Actions call outside
/// providers and may run for a minute each: a backlog of thousands must not start at once.
const MAX_RUNNING_ACTIONS: usize = 32;

/// A job to run every `interval_ms`, registered at startup.
#[derive(Clone, Debug)]
pub struct Cron {
    pub name: String,
    pub interval_ms: i64,
    pub function: String,
    pub args: Value,
}

pub(crate) fn table() -> TableDefinition {
    TableDefinition {
        name: SCHEDULED_JOBS.to_string(),
        document: v::object([
            ("function", v::string()),
            (
                "kind",
                v::union(vec![v::literal("mutation"), v::literal("action")]),
            ),
            ("args", v::any()),
            ("runAtMs", v::int64()),
            (
                "state",
                v::union(vec![
                    v::literal("pending"),
                    v::literal("running"),
                    v::literal("success"),
                    v::literal("failed"),
                ]),
            ),
            ("error", v::optional(v::string())),
            ("completedAtMs", v::optional(v::int64())),
            ("createdAt", v::int64()),
        ]),
        indexes: vec![
            IndexDefinition {
                name: BY_STATE_TIME.to_string(),
                fields: vec!["state".to_string(), "runAtMs".to_string()],
            },
            IndexDefinition {
                name: BY_STATE_KIND_TIME.to_string(),
                fields: vec![
                    "state".to_string(),
                    "kind".to_string(),
                    "runAtMs".to_string(),
                ],
            },
            IndexDefinition {
                name: BY_FUNCTION_TIME.to_string(),
                fields: vec!["function".to_string(), "runAtMs".to_string()],
            },
        ],
    }
}

pub(crate) fn new_job(
    function: &str,
    kind: FunctionKind,
    args: Value,
    at_ms: i64,
    now_ms: i64,
) -> Value {
    let kind = if kind == FunctionKind::Action {
        "action"
    } else {
        "mutation"
    };
    obj! {
        "function" => function,
        "kind" => kind,
        "args" => args,
        "runAtMs" => at_ms,
        "state" => "pending",
        "createdAt" => now_ms,
    }
}

fn str_field(doc: &Value, f: &str) -> FunctionResult<String> {
    doc.get_path(f)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| FunctionError::internal(format!("scheduled job without {f}")))
}

fn finish(state: &str, error: Option<String>, now_ms: i64) -> Object {
    let mut o = Object::new();
    o.insert("state".into(), state.into());
    o.insert("completedAtMs".into(), now_ms.into());
    if let Some(e) = error {
        o.insert("error".into(), e.into());
    }
    o
}

/// Runs due jobs and crons, and deletes finished jobs older than `retention`, until the
/// engine shuts down.
pub(crate) async fn run(engine: Engine, crons: Vec<Cron>, retention: Duration) {
    if let Err(e) = recover_interrupted(&engine).await {
        tracing::error!(error = %e, "scheduler recovery failed");
    }
    let start = crate::committer::now_millis();
    let mut next_cron = Vec::with_capacity(crons.len());
    for c in &crons {
        next_cron.push(first_run(&engine, c, start).await);
    }
    let mut next_cleanup = tokio::time::Instant::now();
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let mut shutdown = engine.shutdown_signal();
    let actions = Arc::new(Semaphore::new(MAX_RUNNING_ACTIONS));
    loop {
        let now = crate::committer::now_millis();
        if tokio::time::Instant::now() >= next_cleanup {
            next_cleanup = tokio::time::Instant::now() + CLEANUP_INTERVAL.min(retention);
            if let Err(e) = delete_finished(&engine, now.saturating_sub(retention_ms)).await {
                tracing::warn!(error = %e, "cannot delete finished scheduled jobs");
            }
        }
        for (c, next) in crons.iter().zip(next_cron.iter_mut()) {
            if now >= *next {
                *next = now + c.interval_ms.max(1);
                let (f, args) = (c.function.clone(), c.args.clone());
                // Due now, so the run is kept for the retention like any other job (due at 0,
                // it was deleted by the next cleanup, its error with it).
                let r = engine
                    .transact(move |ctx| ctx.schedule_at(now, &f, args.clone()).map(Value::from))
                    .await;
                if let Err(e) = r {
                    tracing::warn!(cron = %c.name, error = %e, "cannot schedule cron run");
                }
            }
        }
        let ran = match run_due(&engine, &actions, now).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "scheduler pass failed");
                0
            }
        };
        if ran == 0 {
            tokio::select! {
                _ = tokio::time::sleep(MAX_IDLE) => {}
                _ = shutdown.changed() => return,
            }
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// When `cron` runs first after a start at `start_ms`: an interval after its last run (its
/// newest job, kept for the retention), at once if that is past; an interval from now if it
/// has no run on record. Counting from the start alone, a cron never ran on a server restarted
/// more often than its interval (deploys every few hours: no daily compaction).
async fn first_run(engine: &Engine, cron: &Cron, start_ms: i64) -> i64 {
    let function = cron.function.clone();
    let last = engine
        .read(move |ctx| {
            Ok(ctx
                .query(SCHEDULED_JOBS, BY_FUNCTION_TIME)
                .eq("function", function.as_str())
                .lte("runAtMs", start_ms)
                .desc()
                .first()?
                .and_then(|j| j.get_path("runAtMs").cloned())
                .unwrap_or(Value::Null))
        })
        .await;
    let interval = cron.interval_ms.max(1);
    match last {
        Ok(Value::Int64(at)) if at > 0 => at.saturating_add(interval).max(start_ms),
        Ok(_) => start_ms + interval,
        Err(e) => {
            // The index is still being built (a database from before it): as if no run.
            tracing::info!(cron = %cron.name, error = %e, "no record of the cron's last run");
            start_ms + interval
        }
    }
}

/// Up to `limit` jobs in `state` (of `kind`, if given) due by `before_ms`, oldest first.
async fn due_jobs(
    engine: &Engine,
    state: &'static str,
    kind: Option<&'static str>,
    before_ms: i64,
    limit: usize,
) -> FunctionResult<Vec<Value>> {
    engine
        .read(move |ctx| {
            let jobs = match kind {
                Some(kind) => ctx
                    .query(SCHEDULED_JOBS, BY_STATE_KIND_TIME)
                    .eq("state", state)
                    .eq("kind", kind),
                None => ctx.query(SCHEDULED_JOBS, BY_STATE_TIME).eq("state", state),
            };
            let rows = jobs.lte("runAtMs", before_ms).take(limit)?;
            Ok(Value::Array(rows))
        })
        .await
        .map(|v| match v {
            Value::Array(a) => a,
            _ => Vec::new(),
        })
}

/// Deletes the finished jobs that were due before `before_ms`, a batch per transaction;
/// returns how many.
async fn delete_finished(engine: &Engine, before_ms: i64) -> FunctionResult<usize> {
    let mut deleted = 0;
    for state in ["success", "failed"] {
        loop {
            let n = engine
                .transact(move |ctx| {
                    let done = ctx
                        .query(SCHEDULED_JOBS, BY_STATE_TIME)
                        .eq("state", state)
                        .lt("runAtMs", before_ms)
                        .take(CLEANUP_BATCH)?;
                    for job in &done {
                        ctx.delete(SCHEDULED_JOBS, &str_field(job, "_id")?)?;
                    }
                    Ok(Value::Int64(done.len() as i64))
                })
                .await?
                .as_i64()
                .unwrap_or(0) as usize;
            deleted += n;
            if n < CLEANUP_BATCH {
                break;
            }
        }
    }
    Ok(deleted)
}

/// An action marked running when the process stopped may or may not have had its effect;
/// at-most-once means recording it as failed, never running it again.
async fn recover_interrupted(engine: &Engine) -> FunctionResult<()> {
    loop {
        // Each recovered job leaves the `running` range, so the next read finds the rest.
        let jobs = due_jobs(engine, "running", None, i64::MAX, MAX_JOBS_PER_PASS).await?;
        if jobs.is_empty() {
            return Ok(());
        }
        recover(engine, jobs).await?;
    }
}

async fn recover(engine: &Engine, jobs: Vec<Value>) -> FunctionResult<()> {
    for job in jobs {
        let id = str_field(&job, "_id")?;
        engine
            .transact(move |ctx| {
                let now = ctx.now_ms();
                ctx.patch(
                    SCHEDULED_JOBS,
                    &id,
                    finish("failed", Some("interrupted by a restart".into()), now),
                )?;
                Ok(Value::Null)
            })
            .await?;
    }
    Ok(())
}

/// Runs the due jobs of one pass; returns how many it started. An action job waits, pending,
/// while `MAX_RUNNING_ACTIONS` run already.
async fn run_due(engine: &Engine, actions: &Arc<Semaphore>, now_ms: i64) -> FunctionResult<usize> {
    let jobs = due_to_start(engine, actions.available_permits(), now_ms).await?;
    let mut started = 0;
    for job in jobs {
        let id = str_field(&job, "_id")?;
        let function = str_field(&job, "function")?;
        let args = job.get_path("args").cloned().unwrap_or(Value::Null);
        if str_field(&job, "kind")? == "mutation" {
            run_mutation_job(engine, id, function, args).await;
            started += 1;
        } else if let Ok(permit) = actions.clone().try_acquire_owned() {
            run_action_job(engine, permit, id, function, args).await;
            started += 1;
        }
    }
    Ok(started)
}

/// The pending jobs due by `now_ms` that this pass may start: mutation jobs, and action jobs
/// up to the `free_actions` slots, each kind oldest first. Read together, the first
/// `MAX_JOBS_PER_PASS` due jobs could all be actions waiting for a slot, and mutation jobs and
/// crons due after them waited until the backlog of actions ahead of them was run.
async fn due_to_start(
    engine: &Engine,
    free_actions: usize,
    now_ms: i64,
) -> FunctionResult<Vec<Value>> {
    let pending = |kind, limit| due_jobs(engine, "pending", kind, now_ms, limit);
    let mut jobs = match pending(Some("mutation"), MAX_JOBS_PER_PASS).await {
        Ok(jobs) => jobs,
        Err(e) => {
            // The index is still being built (a database from before it): every kind in
            // one read, as before it.
            tracing::debug!(error = %e, "due jobs read by time only");
            return pending(None, MAX_JOBS_PER_PASS).await;
        }
    };
    let free_actions = free_actions.min(MAX_JOBS_PER_PASS);
    if free_actions > 0 {
        jobs.extend(pending(Some("action"), free_actions).await?);
    }
    Ok(jobs)
}

/// Claims a pending job inside the caller's transaction; `false` if someone else ran it.
fn claim(ctx: &mut crate::context::Ctx<'_, '_>, id: &str, state: &str) -> FunctionResult<bool> {
    let still_pending = ctx
        .get(SCHEDULED_JOBS, id)?
        .is_some_and(|d| d.get_path("state").and_then(Value::as_str) == Some("pending"));
    if still_pending {
        let mut o = Object::new();
        o.insert("state".into(), state.into());
        ctx.patch(SCHEDULED_JOBS, id, o)?;
    }
    Ok(still_pending)
}

async fn run_mutation_job(engine: &Engine, id: String, function: String, args: Value) {
    let (jid, f, a) = (id.clone(), function.clone(), args.clone());
    let eng = engine.clone();
    let outcome = engine
        .transact(move |ctx| {
            if !claim(ctx, &jid, "running")? {
                return Ok(Value::Bool(false));
            }
            eng.run_in(ctx, &f, a.clone())?;
            let now = ctx.now_ms();
            ctx.patch(SCHEDULED_JOBS, &jid, finish("success", None, now))?;
            Ok(Value::Bool(true))
        })
        .await;
    let metrics = engine.metrics();
    if outcome == Ok(Value::Bool(true)) {
        metrics.record_job(&function, "success");
    }
    if let Err(e) = outcome {
        tracing::warn!(job = %id, function = %function, error = %e, "scheduled mutation failed");
        let msg = e.to_string();
        let r = engine
            .transact(move |ctx| {
                let claimed = claim(ctx, &id, "failed")?;
                if claimed {
                    let now = ctx.now_ms();
                    ctx.patch(
                        SCHEDULED_JOBS,
                        &id,
                        finish("failed", Some(msg.clone()), now),
                    )?;
                }
                Ok(Value::Bool(claimed))
            })
            .await;
        match r {
            Ok(Value::Bool(true)) => metrics.record_job(&function, "failed"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot record scheduled mutation failure"),
        }
    }
}

async fn run_action_job(
    engine: &Engine,
    permit: OwnedSemaphorePermit,
    id: String,
    function: String,
    args: Value,
) {
    let jid = id.clone();
    let claimed = engine
        .transact(move |ctx| claim(ctx, &jid, "running").map(Value::from))
        .await;
    if claimed != Ok(Value::Bool(true)) {
        return;
    }
    let engine2 = engine.clone();
    tokio::spawn(async move {
        let _running = permit;
        // A panicking action fails its job (else it stayed `running` until a restart).
        let result = AssertUnwindSafe(engine2.action_internal(&function, args, None))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(FunctionError::internal(format!("{function} panicked"))));
        let error = result.err().map(|e| e.to_string());
        let state = if error.is_some() { "failed" } else { "success" };
        engine2.metrics().record_job(&function, state);
        let r = engine2
            .transact(move |ctx| {
                let now = ctx.now_ms();
                ctx.patch(SCHEDULED_JOBS, &id, finish(state, error.clone(), now))?;
                Ok(Value::Null)
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot record scheduled action outcome");
        }
    });
}
