//! The in-process API the server, tests and benchmarks use: `Engine::open(path, schema,
//! functions, config)`, then `query` / `mutation` / `action`. Opening checks the schema against
//! stored data, assigns stable table and index numbers, starts the committer thread, the
//! scheduler, the sweeper of expired mutation ids and any index backfills.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};

use crate::admission::{Admission, AdmissionConfig, Admit};
use crate::catalog::{Catalog, CatalogChange, IndexId, Numbering};
use crate::committer::{
    now_micros, CommitNotice, CommitObserver, CommitRequest, Committed, Committer, CommitterConfig,
    Rerun, Shared,
};
use crate::context::Ctx;
use crate::error::{unless_panicked, FunctionError, FunctionResult};
use crate::functions::{
    FailureRecorder, FunctionDef, FunctionKind, Functions, Handler, TxnHandler, Visibility,
};
use crate::id::{DocumentId, TableNumber};
use crate::identity::Identity;
use crate::index_maintenance;
use crate::metrics::EngineMetrics;
use crate::mutation_ids::{self, MutationDedupConfig, MutationOutcome};
use crate::reads::ReadSet;
use crate::scheduler::{self, Cron};
use crate::schema::{user_fields, SchemaDefinition, ValidationError, Validator};
use crate::storage::{Snapshot, Storage, StorageError, StorageOptions};
use crate::transaction::{Limits, Transaction};
use crate::value::Value;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub committer: CommitterConfig,
    pub limits: Limits,
    /// Most mutations executed or executing but not yet committed. A caller past the bound
    /// waits *before* reading its snapshot, so under overload transactions queue in front of
    /// execution (fresh reads, few conflicts, memory bounded) instead of behind it, where each
    /// would hold an old snapshot, conflict with what committed meanwhile and be re-executed
    /// serially by the committer. It also bounds the committer's queue.
    pub max_pending_commits: usize,
    /// How long a client's mutation may wait past `max_pending_commits` before it is refused
    /// as overloaded (`admission`); internal mutations always wait.
    pub admission: AdmissionConfig,
    /// Longest an action may run.
    pub max_action_time: Duration,
    pub crons: Vec<Cron>,
    /// How long finished scheduled jobs (succeeded or failed) are kept after they were due,
    /// for inspection, before the scheduler deletes them.
    pub finished_job_retention: Duration,
    /// Run scheduled jobs, crons and the sweep of expired mutation-id records in this process
    /// (needs a tokio runtime at `open`).
    pub run_scheduler: bool,
    /// Retried-mutation deduplication (`run_mutation_with_id`).
    pub mutation_dedup: MutationDedupConfig,
    /// The write path's tuning and the storage caches' sizes.
    pub storage: StorageOptions,
    /// Open only a database whose stored schema is the one given (or that has none yet), for
    /// offline tools: opening with a schema pushes it, so a tool of another build would retire
    /// the indexes it does not know and the server would backfill them again. Only a schema
    /// push may change the schema.
    pub require_stored_schema: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            committer: CommitterConfig::default(),
            limits: Limits::default(),
            max_pending_commits: 256,
            admission: AdmissionConfig::default(),
            max_action_time: Duration::from_secs(60),
            crons: Vec::new(),
            // As Convex keeps its scheduled functions' records.
            finished_job_retention: Duration::from_secs(7 * 24 * 3_600),
            run_scheduler: true,
            mutation_dedup: MutationDedupConfig::default(),
            storage: StorageOptions::default(),
            require_stored_schema: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("invalid schema: {0}")]
    Schema(String),
    #[error("existing documents of table {table} violate the new schema: {ids:?} (first error: {first})")]
    DataViolatesSchema {
        table: String,
        ids: Vec<String>,
        first: String,
    },
    #[error("table {0} was removed from the schema but still has documents")]
    TableNotEmpty(String),
    #[error("the database's schema is not this build's (push this build's schema first, or use the build that matches the database)")]
    SchemaMismatch,
}

/// Most offending document ids a refused schema push reports.
const MAX_REPORTED_VIOLATIONS: usize = 100;

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Arc<Storage>,
    catalog: Arc<ArcSwap<Catalog>>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    ids: Arc<AtomicU64>,
    limits: Limits,
    metrics: Arc<EngineMetrics>,
    observers: Arc<parking_lot::RwLock<Vec<CommitObserver>>>,
    functions: Arc<Functions>,
    commit_tx: mpsc::Sender<CommitRequest>,
    /// Admission of mutations (`EngineConfig::max_pending_commits`, `admission`).
    admission: Arc<Admission>,
    numbering: parking_lot::Mutex<Numbering>,
    seed: AtomicU64,
    max_action_time: Duration,
    mutation_dedup: MutationDedupConfig,
    shutdown: watch::Sender<bool>,
}

/// Result of a query: the value and the snapshot timestamp it was read at.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryResult {
    pub value: Value,
    pub ts: u64,
}

/// What an action handler gets: the caller's identity and the same call API clients use.
#[derive(Clone)]
pub struct ActionCtx {
    engine: Engine,
    identity: Option<Identity>,
    /// Highest commit timestamp of the mutations this action ran (for read-your-writes).
    last_commit_ts: Arc<AtomicU64>,
    /// When the engine stops the action (`EngineConfig::max_action_time` after it started).
    deadline: tokio::time::Instant,
}

impl ActionCtx {
    pub fn auth(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// When the engine stops this action with an `actionRunTimeMs` error: what it waits for
    /// (a provider, say) must end before then, leaving it time to act on the outcome.
    pub fn deadline(&self) -> tokio::time::Instant {
        self.deadline
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub async fn run_query(&self, name: &str, args: Value) -> FunctionResult<Value> {
        Ok(self
            .engine
            .query(name, args, self.identity.as_ref())
            .await?
            .value)
    }

    pub async fn run_mutation(&self, name: &str, args: Value) -> FunctionResult<Value> {
        let c = self
            .engine
            .mutation(name, args, self.identity.as_ref())
            .await?;
        self.last_commit_ts.fetch_max(c.ts, Ordering::Relaxed);
        Ok(c.value)
    }

    pub async fn run_action(&self, name: &str, args: Value) -> FunctionResult<Value> {
        let def = self.engine.function(name, FunctionKind::Action)?;
        let c = self
            .engine
            .run_action_def_with_ts(def, args, self.identity.clone())
            .await?;
        self.last_commit_ts.fetch_max(c.ts, Ordering::Relaxed);
        Ok(c.value)
    }
}

pub(crate) fn meta_u64(s: &Snapshot, key: &str) -> Result<u64, StorageError> {
    Ok(s.meta(key)?
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

fn meta_msgpack<T: serde::de::DeserializeOwned>(
    s: &Snapshot,
    key: &str,
) -> Result<Option<T>, StorageError> {
    match s.meta(key)? {
        None => Ok(None),
        Some(b) => rmp_serde::from_slice(&b)
            .map(Some)
            .map_err(|e| StorageError::CorruptMeta(key.to_string(), e.to_string())),
    }
}

impl Engine {
    /// Opens (or creates) the database file at `path` with `schema` and `functions`.
    pub fn open(
        path: &Path,
        schema: SchemaDefinition,
        functions: Functions,
        config: EngineConfig,
    ) -> Result<Engine, OpenError> {
        schema
            .check()
            .map_err(|e| OpenError::Schema(e.to_string()))?;
        let mut full = schema;
        let jobs = scheduler::table();
        full.tables.insert(jobs.name.clone(), jobs);
        let mutation_ids = mutation_ids::table();
        full.tables.insert(mutation_ids.name.clone(), mutation_ids);
        let storage = Arc::new(Storage::open_with(path, config.storage.clone())?);
        let snap = storage.snapshot(0);
        let last_ts = meta_u64(&snap, "last_ts")?;
        let id_hw = meta_u64(&snap, "id_high_water")?;
        let mut numbering: Numbering = meta_msgpack(&snap, "numbering")?.unwrap_or_default();
        // A schema stored by an older build that no longer decodes counts as unknown: every
        // table is checked.
        let stored = meta_msgpack::<SchemaDefinition>(&snap, "schema");
        if config.require_stored_schema
            && !matches!(&stored, Ok(None))
            && !matches!(&stored, Ok(Some(s)) if *s == full)
        {
            return Err(OpenError::SchemaMismatch);
        }
        let stored = stored.ok().flatten();
        let checked = check_existing_data(&snap, &full, stored.as_ref(), &numbering)?;
        let has_data = |name: &str| {
            numbering_table(&numbering, name)
                .is_some_and(|n| snap.table_has_documents(&n.0.to_be_bytes()).unwrap_or(true))
        };
        let mut new_numbering = numbering.clone();
        let catalog = Catalog::build(&full, &mut new_numbering, &has_data);
        numbering = new_numbering;
        let encoded =
            rmp_serde::to_vec_named(&numbering).map_err(|e| OpenError::Schema(e.to_string()))?;
        let schema_bytes =
            rmp_serde::to_vec_named(&full).map_err(|e| OpenError::Schema(e.to_string()))?;
        drop(snap);
        storage.write_meta_durable(&[("numbering", encoded), ("schema", schema_bytes)])?;
        let ts = last_ts.max(now_micros());
        let snapshot = Arc::new(ArcSwap::from_pointee(storage.snapshot(ts)));
        let catalog = Arc::new(ArcSwap::from_pointee(catalog));
        // Ids allocated by transactions that never committed are skipped, never reused.
        let ids = Arc::new(AtomicU64::new(id_hw + 1));
        let metrics = Arc::new(EngineMetrics::default());
        metrics
            .open_documents_checked
            .store(checked, Ordering::Relaxed);
        let observers = Arc::new(parking_lot::RwLock::new(Vec::new()));
        // Room for every admitted transaction plus the index backfill's own requests.
        let pending = config.max_pending_commits.max(1);
        let (commit_tx, commit_rx) = mpsc::channel(pending + 1);
        let committer = Committer::new(
            Shared {
                storage: storage.clone(),
                catalog: catalog.clone(),
                snapshot: snapshot.clone(),
                ids: ids.clone(),
                limits: config.limits.clone(),
                metrics: metrics.clone(),
                observers: observers.clone(),
            },
            config.committer.clone(),
            ts,
        );
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || committer.run(commit_rx))
            .map_err(|e| OpenError::Schema(format!("cannot start committer: {e}")))?;
        let (shutdown, _) = watch::channel(false);
        let admission = Admission::new(pending, config.admission.clone(), metrics.clone());
        let engine = Engine {
            inner: Arc::new(Inner {
                storage,
                catalog,
                snapshot,
                ids,
                limits: config.limits.clone(),
                metrics,
                observers,
                functions: Arc::new(functions),
                commit_tx,
                admission,
                numbering: parking_lot::Mutex::new(numbering),
                seed: AtomicU64::new(ts),
                max_action_time: config.max_action_time,
                mutation_dedup: config.mutation_dedup.clone(),
                shutdown,
            }),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            index_maintenance::start(&engine, &rt);
            if config.run_scheduler {
                rt.spawn(scheduler::run(
                    engine.clone(),
                    config.crons.clone(),
                    config.finished_job_retention,
                ));
                rt.spawn(mutation_ids::run_sweeper(
                    engine.clone(),
                    config.mutation_dedup.clone(),
                ));
            }
        }
        Ok(engine)
    }

    /// The latest catalog. Index readiness in it is relative to a snapshot
    /// (`IndexInfo::readable_at`); take the snapshot you read first and the catalog after it,
    /// so the catalog has every change the snapshot's commits made.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.inner.catalog.load_full()
    }

    pub fn functions(&self) -> &Arc<Functions> {
        &self.inner.functions
    }

    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.inner.metrics
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The latest committed snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.load_full()
    }

    /// Registers a callback run by the committer after each durable batch, in commit order.
    /// It must be quick and never block (reactivity queues the notice and returns).
    pub fn on_commit(&self, observer: impl Fn(&CommitNotice) + Send + Sync + 'static) {
        self.inner.observers.write().push(Arc::new(observer));
    }

    /// Stops the scheduler and backfills. Every acknowledged commit is already durable. The
    /// database file is released once every `Engine` handle is dropped; `close_waiter` tells
    /// when that has happened.
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
    }

    /// Shuts down, lets go of this handle and blocks until the database is closed (every
    /// other handle dropped too, the committer finished) or `within` has passed; returns
    /// whether it closed.
    pub fn close(self, within: Duration) -> bool {
        let closed = self.close_waiter();
        self.shutdown();
        drop(self);
        closed.wait(within)
    }

    /// A handle that waits for the database to be closed (all engine handles dropped and the
    /// committer finished), without keeping it open itself.
    pub fn close_waiter(&self) -> crate::storage::CloseWaiter {
        self.inner.storage.close_waiter()
    }

    /// Becomes `true` when `shutdown` is called; background work holding an `Engine` should
    /// finish and drop it so the database can close.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    fn next_seed(&self) -> u64 {
        self.inner
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
    }

    fn function(&self, name: &str, kind: FunctionKind) -> FunctionResult<Arc<FunctionDef>> {
        let def = self
            .inner
            .functions
            .get(name)
            .ok_or_else(|| FunctionError::not_found(format!("no function named {name:?}")))?;
        if def.kind != kind {
            return Err(FunctionError::validation(format!(
                "{name} is a {:?}, not a {kind:?}",
                def.kind
            )));
        }
        Ok(def.clone())
    }

    /// Looks up a function a client may call: public, of the given kind.
    pub fn public_function(
        &self,
        name: &str,
        kind: FunctionKind,
    ) -> FunctionResult<Arc<FunctionDef>> {
        let def = self.function(name, kind)?;
        if def.visibility != Visibility::Public {
            return Err(FunctionError::not_found(format!(
                "no function named {name:?}"
            )));
        }
        Ok(def)
    }

    pub fn validate_args(&self, def: &FunctionDef, args: &Value) -> FunctionResult<()> {
        def.args
            .validate(args, self.catalog().as_ref())
            .map_err(|e| {
                FunctionError::validation(e.to_string())
                    .with_data(crate::obj! { "path" => e.path.clone() })
            })
    }

    /// Checks a function's result against its size limit and return validator, and returns
    /// its size (`Value::size_bytes`). `checked` is a result of the same function that passed
    /// before, with its size (a subscription's previous result): when both are arrays, the
    /// elements they have in common at either end — the unchanged documents of a re-run
    /// window, shared, never copied — passed the same element validator then, and their size
    /// is the previous size less that of the elements in between; only the new middle is
    /// walked.
    pub(crate) fn check_result(
        &self,
        def: &FunctionDef,
        v: &Value,
        checked: Option<(&Value, usize)>,
    ) -> FunctionResult<usize> {
        let max = self.inner.limits.max_result_bytes;
        let too_large = || crate::transaction::limit_error("resultBytes", max);
        let catalog = self.catalog();
        let invalid = |at: String, e: ValidationError| {
            tracing::error!(function = %def.name, error = %e, at, "function returned an invalid value");
            FunctionError::internal(format!("{} returned an invalid value", def.name))
        };
        let (Validator::Array(element), Value::Array(items), Some((Value::Array(before), bytes))) =
            (&def.returns, v, checked)
        else {
            let bytes = v.size_within(max).ok_or_else(too_large)?;
            def.returns
                .validate(v, catalog.as_ref())
                .map_err(|e| invalid(String::new(), e))?;
            return Ok(bytes);
        };
        let (prefix, suffix) = crate::diff::common_ends(before, items);
        let removed: usize = before[prefix..before.len() - suffix]
            .iter()
            .map(Value::size_bytes)
            .sum();
        let added = &items[prefix..items.len() - suffix];
        let mut total = bytes.saturating_sub(removed);
        for (i, item) in added.iter().enumerate() {
            total += item
                .size_within(max.saturating_sub(total))
                .ok_or_else(too_large)?;
            element
                .validate(item, catalog.as_ref())
                .map_err(|e| invalid(format!("[{}]", prefix + i), e))?;
        }
        Ok(total)
    }

    /// A read-only transaction at `snapshot`; "now" is the snapshot time, so a query's result
    /// depends only on the data it reads.
    fn read_txn<'a>(&'a self, snapshot: &'a Snapshot, catalog: &'a Catalog) -> Transaction<'a> {
        Transaction::new(
            snapshot,
            None,
            catalog,
            &self.inner.ids,
            &self.inner.limits,
            (snapshot.ts / 1000) as i64,
            true,
            snapshot.ts,
        )
    }

    /// Runs `handler` as a read-only transaction at `snapshot`, returning its result and read
    /// set. Reactivity uses this to (re-)run subscribed queries at a commit's snapshot.
    pub fn run_query_at(
        &self,
        snapshot: &Snapshot,
        handler: &TxnHandler,
        args: Value,
        identity: Option<&Identity>,
    ) -> (FunctionResult<Value>, ReadSet) {
        let catalog = self.catalog();
        let mut txn = self.read_txn(snapshot, &catalog);
        let result = {
            let mut ctx = Ctx::new(
                &mut txn,
                identity,
                &self.inner.functions,
                FunctionKind::Query,
            );
            handler(&mut ctx, args)
        };
        let (reads, _) = txn.into_parts();
        (result, reads)
    }

    /// Runs a registered query (public or internal) at the latest snapshot.
    pub async fn query(
        &self,
        name: &str,
        args: Value,
        identity: Option<&Identity>,
    ) -> FunctionResult<QueryResult> {
        let def = self.function(name, FunctionKind::Query)?;
        self.run_query_def(&def, args, identity)
    }

    pub fn run_query_def(
        &self,
        def: &FunctionDef,
        args: Value,
        identity: Option<&Identity>,
    ) -> FunctionResult<QueryResult> {
        self.validate_args(def, &args)?;
        let Handler::Query(h) = &def.handler else {
            return Err(FunctionError::internal("not a query"));
        };
        let snapshot = self.snapshot();
        let (result, _) = self.run_query_at(&snapshot, h, args, identity);
        let value = result?;
        self.check_result(def, &value, None)?;
        Ok(QueryResult {
            value,
            ts: snapshot.ts,
        })
    }

    /// Runs a registered mutation (public or internal) and waits until it is durable.
    pub async fn mutation(
        &self,
        name: &str,
        args: Value,
        identity: Option<&Identity>,
    ) -> FunctionResult<Committed> {
        let def = self.function(name, FunctionKind::Mutation)?;
        self.run_mutation_def(def, args, identity.cloned()).await
    }

    pub async fn run_mutation_def(
        &self,
        def: Arc<FunctionDef>,
        args: Value,
        identity: Option<Identity>,
    ) -> FunctionResult<Committed> {
        Ok(self
            .run_mutation_admitted(def, args, identity, None, Admit::Wait)
            .await?
            .committed)
    }

    /// Runs a client's mutation: past the admission bound it may be refused as overloaded
    /// (`RATE_LIMITED`, `data.reason = "overloaded"`; see `admission`), having run nothing.
    /// With a `mutation_id`, at most once per (identity, mutation id) within
    /// `MutationDedupConfig::ttl` (protocol §12): a retry of a run that committed writes
    /// nothing and returns the recorded result (`replayed`) at a timestamp at or after the
    /// original commit (the replay's own). The record commits in the same transaction
    /// as the mutation, so a run that fails leaves none and its retry runs again.
    pub async fn run_mutation_with_id(
        &self,
        def: Arc<FunctionDef>,
        args: Value,
        identity: Option<Identity>,
        mutation_id: Option<String>,
    ) -> FunctionResult<MutationOutcome> {
        self.run_mutation_admitted(def, args, identity, mutation_id, Admit::Shed)
            .await
    }

    async fn run_mutation_admitted(
        &self,
        def: Arc<FunctionDef>,
        args: Value,
        identity: Option<Identity>,
        mutation_id: Option<String>,
        admit: Admit,
    ) -> FunctionResult<MutationOutcome> {
        if let Some(id) = &mutation_id {
            mutation_ids::check_id(id)?;
        }
        self.validate_args(&def, &args)?;
        let Handler::Mutation(h) = def.handler.clone() else {
            return Err(FunctionError::internal("not a mutation"));
        };
        let on_failure = def
            .on_failure
            .clone()
            .map(|recorder| (def.name.clone(), recorder, identity.clone()));
        let functions = self.inner.functions.clone();
        let engine = self.clone();
        let identity_key = identity
            .as_ref()
            .map(Identity::token_identifier)
            .unwrap_or_default();
        // Set by the run whose result is committed: the committer may re-execute the body.
        let replayed = Arc::new(AtomicBool::new(false));
        let replayed_in_body = replayed.clone();
        // Set when the handler's own run failed (its error is then the call's).
        let handler_failed = Arc::new(AtomicBool::new(false));
        let handler_failed_in_body = handler_failed.clone();
        let body = move |txn: &mut Transaction<'_>| {
            let mut ctx = Ctx::new(txn, identity.as_ref(), &functions, FunctionKind::Mutation);
            let run = |ctx: &mut Ctx<'_, '_>| {
                let v = unless_panicked(&def.name, || h(ctx, args.clone()))
                    .inspect_err(|_| handler_failed_in_body.store(true, Ordering::Relaxed))?;
                engine.check_result(&def, &v, None)?;
                Ok(v)
            };
            let Some(id) = &mutation_id else {
                return run(&mut ctx);
            };
            let config = &engine.inner.mutation_dedup;
            let (v, replay) =
                mutation_ids::run_once(&mut ctx, config, &identity_key, id, &def.name, run)?;
            replayed_in_body.store(replay, Ordering::Relaxed);
            Ok(v)
        };
        let committed = match self.commit_with(admit, body).await {
            Ok(committed) => committed,
            Err(e) => {
                if let Some((name, recorder, identity)) = on_failure {
                    if handler_failed.load(Ordering::Relaxed) {
                        self.record_failure(name, recorder, identity, &e).await;
                    }
                }
                return Err(e);
            }
        };
        Ok(MutationOutcome {
            committed,
            replayed: replayed.load(Ordering::Relaxed),
        })
    }

    /// Runs a failed mutation's `FailureRecorder` (named `name` in logs) in a transaction of
    /// its own; its failure is logged, never returned.
    async fn record_failure(
        &self,
        name: String,
        recorder: FailureRecorder,
        identity: Option<Identity>,
        error: &FunctionError,
    ) {
        let functions = self.inner.functions.clone();
        let error = error.clone();
        let function = name.clone();
        let body = move |txn: &mut Transaction<'_>| {
            let mut ctx = Ctx::new(txn, identity.as_ref(), &functions, FunctionKind::Mutation);
            unless_panicked(&function, || recorder(&mut ctx, &error)).map(|()| Value::Null)
        };
        if let Err(e) = self.commit_with(Admit::Wait, body).await {
            tracing::debug!(function = %name, error = %e, "recording a failed call failed");
        }
    }

    /// Runs `f` as a system mutation (no identity), committing its writes durably.
    pub async fn transact(
        &self,
        f: impl FnMut(&mut Ctx<'_, '_>) -> FunctionResult<Value> + Send + 'static,
    ) -> FunctionResult<Value> {
        let functions = self.inner.functions.clone();
        let mut f = f;
        let body = move |txn: &mut Transaction<'_>| {
            let mut ctx = Ctx::new(txn, None, &functions, FunctionKind::Mutation);
            unless_panicked("a system mutation", || f(&mut ctx))
        };
        Ok(self.commit_with(Admit::Wait, body).await?.value)
    }

    /// Runs `f` as a system query (no identity) at the latest snapshot.
    pub async fn read(
        &self,
        f: impl FnOnce(&mut Ctx<'_, '_>) -> FunctionResult<Value>,
    ) -> FunctionResult<Value> {
        let snapshot = self.snapshot();
        let catalog = self.catalog();
        let mut txn = self.read_txn(&snapshot, &catalog);
        let mut ctx = Ctx::new(&mut txn, None, &self.inner.functions, FunctionKind::Query);
        f(&mut ctx)
    }

    /// Runs the registered mutation `name` inside an existing transaction (the scheduler uses
    /// this so a job and its completion mark commit together).
    pub fn run_in(&self, ctx: &mut Ctx<'_, '_>, name: &str, args: Value) -> FunctionResult<Value> {
        let def = self.function(name, FunctionKind::Mutation)?;
        self.validate_args(&def, &args)?;
        let Handler::Mutation(h) = &def.handler else {
            return Err(FunctionError::internal("not a mutation"));
        };
        h(ctx, args)
    }

    async fn commit_with(
        &self,
        admit: Admit,
        mut body: impl FnMut(&mut Transaction<'_>) -> FunctionResult<Value> + Send + 'static,
    ) -> FunctionResult<Committed> {
        // Held until the commit is decided.
        let _admitted = self.inner.admission.admit(admit).await?;
        let snapshot = self.snapshot();
        let catalog = self.catalog();
        let now_ms = (now_micros().max(snapshot.ts) / 1000) as i64;
        let mut txn = Transaction::new(
            &snapshot,
            None,
            &catalog,
            &self.inner.ids,
            &self.inner.limits,
            now_ms,
            false,
            self.next_seed(),
        );
        let value = body(&mut txn)?;
        let (reads, writes) = txn.into_parts();
        let snapshot_ts = snapshot.ts;
        if writes.is_empty() {
            return Ok(Committed {
                ts: snapshot_ts,
                value,
            });
        }
        // Not kept alive while waiting for the committer: a snapshot pins its memtables.
        drop(snapshot);
        drop(catalog);
        self.submit(snapshot_ts, reads, writes, value, Box::new(body))
            .await
    }

    async fn submit(
        &self,
        snapshot_ts: u64,
        reads: ReadSet,
        writes: crate::writes::WriteSet,
        value: Value,
        rerun: crate::committer::Rerun,
    ) -> FunctionResult<Committed> {
        let (reply, rx) = oneshot::channel();
        let req = CommitRequest {
            snapshot_ts,
            reads,
            writes,
            value,
            rerun,
            catalog_change: None,
            reply,
        };
        self.inner
            .commit_tx
            .send(req)
            .await
            .map_err(|_| FunctionError::internal("committer stopped"))?;
        rx.await
            .map_err(|_| FunctionError::internal("committer stopped"))?
    }

    /// Runs a registered action (public or internal).
    pub async fn action(
        &self,
        name: &str,
        args: Value,
        identity: Option<&Identity>,
    ) -> FunctionResult<Value> {
        self.action_internal(name, args, identity.cloned()).await
    }

    pub(crate) async fn action_internal(
        &self,
        name: &str,
        args: Value,
        identity: Option<Identity>,
    ) -> FunctionResult<Value> {
        let def = self.function(name, FunctionKind::Action)?;
        self.run_action_def(def, args, identity).await
    }

    pub async fn run_action_def(
        &self,
        def: Arc<FunctionDef>,
        args: Value,
        identity: Option<Identity>,
    ) -> FunctionResult<Value> {
        Ok(self
            .run_action_def_with_ts(def, args, identity)
            .await?
            .value)
    }

    /// Runs an action; the timestamp returned is the commit timestamp of the last mutation it
    /// ran (0 if none), so a caller can wait for its effects to reach subscriptions.
    pub async fn run_action_def_with_ts(
        &self,
        def: Arc<FunctionDef>,
        args: Value,
        identity: Option<Identity>,
    ) -> FunctionResult<Committed> {
        self.validate_args(&def, &args)?;
        let Handler::Action(h) = &def.handler else {
            return Err(FunctionError::internal("not an action"));
        };
        let last_commit_ts = Arc::new(AtomicU64::new(0));
        let deadline = tokio::time::Instant::now() + self.inner.max_action_time;
        let ctx = ActionCtx {
            engine: self.clone(),
            identity,
            last_commit_ts: last_commit_ts.clone(),
            deadline,
        };
        let value = tokio::time::timeout_at(deadline, h(ctx, args))
            .await
            .map_err(|_| {
                crate::transaction::limit_error(
                    "actionRunTimeMs",
                    self.inner.max_action_time.as_millis() as usize,
                )
            })??;
        self.check_result(&def, &value, None)?;
        Ok(Committed {
            ts: last_commit_ts.load(Ordering::Relaxed),
            value,
        })
    }

    /// Runs `body` at the committer as a transaction of its own, on the latest state, so it
    /// cannot race with any other write (index backfills and purges). `None` once the
    /// committer has stopped.
    pub(crate) async fn run_at_committer(&self, body: Rerun) -> Option<FunctionResult<Committed>> {
        self.at_committer(body, None).await
    }

    /// Commits `change` to the catalog: snapshots at or after the returned timestamp see it,
    /// older ones do not. `None` once the committer has stopped.
    pub(crate) async fn commit_catalog_change(
        &self,
        change: CatalogChange,
    ) -> Option<FunctionResult<Committed>> {
        self.at_committer(Box::new(|_| Ok(Value::Null)), Some(change))
            .await
    }

    async fn at_committer(
        &self,
        body: Rerun,
        catalog_change: Option<CatalogChange>,
    ) -> Option<FunctionResult<Committed>> {
        let (reply, rx) = oneshot::channel();
        let req = CommitRequest {
            // Older than any batch kept for validation, so the committer runs `body` itself.
            snapshot_ts: 0,
            reads: ReadSet::default(),
            writes: Default::default(),
            value: Value::Null,
            rerun: body,
            catalog_change,
            reply,
        };
        self.inner.commit_tx.send(req).await.ok()?;
        rx.await.ok()
    }

    /// Changes the persisted numbering (durably). The catalog in memory changes only by a
    /// commit (`commit_catalog_change`).
    pub(crate) fn update_numbering(
        &self,
        change: impl FnOnce(&mut Numbering),
    ) -> Result<(), StorageError> {
        let mut numbering = self.inner.numbering.lock();
        let mut changed = numbering.clone();
        change(&mut changed);
        let bytes = rmp_serde::to_vec_named(&changed)
            .map_err(|e| StorageError::CorruptMeta("numbering".into(), e.to_string()))?;
        self.inner
            .storage
            .write_meta_durable(&[("numbering", bytes)])?;
        *numbering = changed;
        Ok(())
    }

    /// Indexes still backfilling plus dropped indexes whose entries are still being purged
    /// (0 once a schema change's index work is done).
    pub fn index_work_pending(&self) -> usize {
        let backfilling = self
            .catalog()
            .tables()
            .flat_map(|t| t.indexes.iter())
            .filter(|i| i.state == crate::catalog::IndexState::Backfilling)
            .count();
        backfilling + self.inner.numbering.lock().dropped_indexes.len()
    }

    /// Largest write-ahead log record, so the most one commit may write.
    pub(crate) fn max_record_bytes(&self) -> usize {
        self.inner.storage.max_record_bytes()
    }

    /// Numbers of dropped indexes whose entries are still to be purged.
    pub(crate) fn dropped_indexes(&self) -> Vec<IndexId> {
        self.inner.numbering.lock().dropped_indexes.clone()
    }
}

fn numbering_table(n: &Numbering, name: &str) -> Option<TableNumber> {
    n.tables.get(name).copied()
}

/// Refuses a schema that existing documents violate (naming the offending ids), or that drops
/// a table still holding documents. Only the tables whose document validator differs from the
/// `stored` schema's (all of them when it is unknown) are read: a restart with the same
/// schema reads no documents, where checking every one made opening take time in proportion
/// to the data. Returns how many documents were checked.
fn check_existing_data(
    snap: &Snapshot,
    schema: &SchemaDefinition,
    stored: Option<&SchemaDefinition>,
    numbering: &Numbering,
) -> Result<u64, OpenError> {
    let mut probe = numbering.clone();
    let catalog = Catalog::build(schema, &mut probe, &|_| false);
    let mut checked = 0u64;
    for (name, number) in &numbering.tables {
        let prefix = number.0.to_be_bytes();
        let Some(table) = catalog.table(name) else {
            if snap.table_has_documents(&prefix)? {
                return Err(OpenError::TableNotEmpty(name.clone()));
            }
            continue;
        };
        let unchanged = stored
            .and_then(|s| s.tables.get(name))
            .is_some_and(|t| t.document == table.validator);
        if unchanged {
            continue;
        }
        let mut bad = Vec::new();
        let mut first = String::new();
        for key in snap.doc_keys(
            &prefix,
            Some(&(number.0 as u64 + 1).to_be_bytes()[4..]),
            false,
        )? {
            let key = key?;
            let Some(id) = DocumentId::from_bytes(&key) else {
                continue;
            };
            let Some(doc) = snap.get(&id)? else { continue };
            checked += 1;
            let user = doc.as_object().map(user_fields).unwrap_or_default();
            if let Err(e) = table.validator.validate(&Value::from(user), &catalog) {
                if first.is_empty() {
                    first = e.to_string();
                }
                bad.push(id.to_string());
                if bad.len() >= MAX_REPORTED_VIOLATIONS {
                    break;
                }
            }
        }
        if !bad.is_empty() {
            return Err(OpenError::DataViolatesSchema {
                table: name.clone(),
                ids: bad,
                first,
            });
        }
    }
    Ok(checked)
}
