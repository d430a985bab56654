//! The subscription worker: owns executions, the invalidation index and client states, and
//! applies commands and commit notices strictly one at a time, so every client's queries are
//! always at the same timestamp (the worker's snapshot).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;
use roaring::RoaringBitmap;
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::error::{FunctionError, FunctionResult};
use crate::functions::{FunctionDef, FunctionKind, Handler, Sharing, TxnHandler};
use crate::identity::Identity;
use crate::storage::Snapshot;
use crate::value::Value;

use super::invalidation::{ExecId, InvalidationIndex};
use super::outbox::{Outbox, Update};
use super::rerun::{self, ExecSpec, Executed, Rerun, RerunJob, RerunPool};
use super::wakeup::Wakeups;
use super::{
    ClientId, Command, FailureReport, PendingCommits, SubscriptionConfig, SubscriptionMetrics,
};

/// Most threads re-running executions of one pass.
const MAX_RERUN_THREADS: usize = 8;
/// What makes two subscriptions share an execution.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ExecKey {
    function: String,
    /// MessagePack of the arguments (objects are sorted maps, so equal args encode equally).
    args: Vec<u8>,
    /// `None` for a shared body; the caller's identity otherwise.
    identity: Option<Identity>,
    /// An access-check execution rather than a body.
    access: bool,
}

struct Execution {
    key: ExecKey,
    spec: Arc<ExecSpec>,
    /// Its latest run: result, the result's size and what it read (indexed under `reads`).
    run: Executed,
    subscribers: FxHashSet<(ClientId, u32)>,
}

struct Sub {
    body: ExecId,
    access: Option<ExecId>,
    function: String,
    args: Value,
}

struct ClientState {
    identity: Option<Identity>,
    outbox: Arc<Outbox>,
    subs: FxHashMap<u32, Sub>,
    /// Applied to each failure before it is pushed, if given.
    report: Option<FailureReport>,
    /// The identity lapsed (`ClientSession::lapse_identity`) and no new one was set since.
    lapsed: bool,
}

pub(crate) struct Worker {
    engine: Engine,
    snapshot: Arc<Snapshot>,
    config: SubscriptionConfig,
    pending: Arc<Mutex<PendingCommits>>,
    closed: Arc<Mutex<Vec<ClientId>>>,
    metrics: Arc<SubscriptionMetrics>,
    index: InvalidationIndex,
    // Maps keyed by ids the worker assigns use a fast non-keyed hash (nothing a client sends
    // chooses these keys); `by_key` holds client-chosen arguments and keeps the default.
    execs: FxHashMap<ExecId, Execution>,
    by_key: HashMap<ExecKey, ExecId>,
    free_ids: Vec<ExecId>,
    next_id: ExecId,
    clients: FxHashMap<ClientId, ClientState>,
    /// (client, query, update) triples of the pass being applied; kept to reuse its capacity.
    updates: Vec<(ClientId, u32, Update)>,
    /// Threads sharing large passes with this one (`rerun_threads - 1` of them).
    pool: RerunPool,
    /// Read-your-writes requests waiting for the worker to reach a timestamp.
    syncs: BTreeMap<u64, Vec<ClientId>>,
    /// Consumers to wake once the current command or pass is done.
    wakeups: Wakeups,
}

impl Worker {
    pub fn new(
        engine: Engine,
        snapshot: Arc<Snapshot>,
        config: SubscriptionConfig,
        pending: Arc<Mutex<PendingCommits>>,
        closed: Arc<Mutex<Vec<ClientId>>>,
        metrics: Arc<SubscriptionMetrics>,
    ) -> Self {
        let threads = config.rerun_threads.clamp(1, MAX_RERUN_THREADS);
        Worker {
            pool: RerunPool::start(threads - 1),
            engine,
            snapshot,
            config,
            pending,
            closed,
            metrics,
            index: InvalidationIndex::default(),
            execs: FxHashMap::default(),
            by_key: HashMap::new(),
            free_ids: Vec::new(),
            next_id: 0,
            clients: FxHashMap::default(),
            updates: Vec::new(),
            syncs: BTreeMap::new(),
            wakeups: Wakeups::start(),
        }
    }

    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.blocking_recv() {
            // Commits first: every notice queued before this command arrived was queued
            // before its sender could have seen the commit acknowledged, so a subscription
            // must start at or after it (real-time order across clients).
            self.process_commits();
            self.handle(cmd);
            self.drain_closed();
            self.process_commits();
            self.wakeups.flush();
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Connect {
                client,
                outbox,
                identity,
                report,
            } => {
                // A session dropped before its Connect got here was already looked for by
                // `drain_closed` (its handle closes the outbox before queueing the id), so it
                // must not be registered now: nothing would ever remove it. One still open
                // here is found by a later `drain_closed` when dropped.
                if outbox.is_closed() {
                    return;
                }
                self.clients.insert(
                    client,
                    ClientState {
                        identity,
                        outbox,
                        subs: FxHashMap::default(),
                        report,
                        lapsed: false,
                    },
                );
            }
            Command::Subscribe {
                client,
                query_id,
                function,
                args,
                reply,
            } => {
                let r = self.subscribe(client, query_id, function, args);
                let _ = reply.send(r);
            }
            Command::Unsubscribe { client, query_id } => {
                if let Some(sub) = self
                    .clients
                    .get_mut(&client)
                    .and_then(|c| c.subs.remove(&query_id))
                {
                    self.release(client, query_id, &sub);
                    self.push(client, vec![(query_id, Update::Removed)]);
                }
            }
            Command::End { client, query_id } => {
                let Some(c) = self.clients.get_mut(&client) else {
                    return;
                };
                // Gone already if it failed or was unsubscribed meanwhile; the outbox dropped
                // that end, for the client has had one.
                let sub = c.subs.remove(&query_id);
                c.outbox.forget_end(query_id);
                if let Some(sub) = sub {
                    self.release(client, query_id, &sub);
                }
            }
            Command::SetIdentity {
                client,
                identity,
                lapsed,
                reply,
            } => {
                self.set_identity(client, identity, lapsed);
                let _ = reply.send(());
            }
            Command::SyncTo { client, ts } => {
                let now = self.snapshot.ts;
                if let Some(c) = self.clients.get(&client) {
                    if ts > now {
                        self.syncs.entry(ts).or_default().push(client);
                    } else if c.outbox.latest_ts() < now && !c.subs.is_empty() {
                        // A client without subscriptions has nothing to bring up to date; a
                        // query it subscribes later starts at or after `now`.
                        self.push(client, Vec::new());
                    }
                }
            }
            Command::Wake => {}
        }
    }

    fn drain_closed(&mut self) {
        let closed = std::mem::take(&mut *self.closed.lock());
        for client in closed {
            if let Some(c) = self.clients.remove(&client) {
                for (q, sub) in c.subs {
                    self.release(client, q, &sub);
                }
            }
        }
    }

    fn push<I>(&mut self, client: ClientId, updates: I)
    where
        I: IntoIterator<Item = (u32, Update)>,
        I::IntoIter: ExactSizeIterator,
    {
        if let Some(c) = self.clients.get(&client) {
            let report = c.report.as_ref().map(|report| (report, c.lapsed));
            let updates = updates.into_iter().map(|(q, u)| match (u, report) {
                (Update::Failed(e), Some((report, lapsed))) => {
                    (q, Update::Failed(report(e, lapsed)))
                }
                (u, _) => (q, u),
            });
            let n = updates.len();
            let (depth, wake) = c.outbox.push(self.snapshot.ts, updates);
            if wake {
                self.wakeups.add(c.outbox.clone());
            }
            self.metrics.transitions.fetch_add(1, Ordering::Relaxed);
            self.metrics.transition_updates.observe(n as f64);
            self.metrics.outbox_depth.observe(depth as f64);
        }
    }

    fn subscribe(
        &mut self,
        client: ClientId,
        query_id: u32,
        function: String,
        args: Value,
    ) -> FunctionResult<()> {
        let Some(c) = self.clients.get(&client) else {
            return Err(FunctionError::internal("unknown client session"));
        };
        if c.subs.contains_key(&query_id) {
            return Err(FunctionError::validation(format!(
                "query id {query_id} is already subscribed"
            )));
        }
        // Ended subscriptions whose `Removed`/`Failed` the client has not read yet still
        // hold their ids on the client's side, and an entry in the outbox on ours.
        if c.subs.len() + c.outbox.pending_ends() >= self.config.max_subscriptions_per_client {
            return Err(FunctionError::new(
                crate::error::codes::RATE_LIMITED,
                format!(
                    "too many subscriptions (max {}, counting ended ones whose end is unread)",
                    self.config.max_subscriptions_per_client
                ),
            ));
        }
        let def = self
            .engine
            .public_function(&function, FunctionKind::Query)?;
        self.engine.validate_args(&def, &args)?;
        let identity = c.identity.clone();
        let update = self.attach(client, query_id, def, function, args, identity);
        self.push(client, vec![(query_id, update)]);
        Ok(())
    }

    /// Attaches a subscription to (possibly new) executions and returns its first update.
    fn attach(
        &mut self,
        client: ClientId,
        query_id: u32,
        def: Arc<FunctionDef>,
        function: String,
        args: Value,
        identity: Option<Identity>,
    ) -> Update {
        let Handler::Query(plain_handler) = def.handler.clone() else {
            return Update::Failed(FunctionError::internal("not a query"));
        };
        let args_bytes = rmp_serde::to_vec_named(&args).unwrap_or_default();
        let (body_key, body_handler, access) = match &def.sharing {
            Sharing::PerIdentity => (
                ExecKey {
                    function: function.clone(),
                    args: args_bytes,
                    identity: identity.clone(),
                    access: false,
                },
                plain_handler,
                None,
            ),
            Sharing::AfterAccessCheck { access, body } => (
                ExecKey {
                    function: function.clone(),
                    args: args_bytes.clone(),
                    identity: None,
                    access: false,
                },
                body.clone(),
                Some((
                    ExecKey {
                        function: function.clone(),
                        args: args_bytes,
                        identity: identity.clone(),
                        access: true,
                    },
                    access.clone(),
                )),
            ),
        };
        let sub_key = (client, query_id);
        // The access check runs first: a caller who fails it never runs (or sees) the body.
        let access_id = match access {
            Some((key, check)) => {
                let id = self.execution(key, check, &def, &args, identity.as_ref());
                let exec = &self.execs[&id];
                if let Err(e) = &exec.run.result {
                    let e = e.clone();
                    self.drop_if_unused(id);
                    return Update::Failed(e);
                }
                Some(id)
            }
            None => None,
        };
        let body_identity = if access_id.is_some() { None } else { identity };
        let body_id = self.execution(body_key, body_handler, &def, &args, body_identity.as_ref());
        let result = self.execs[&body_id].run.result.clone();
        match result {
            Err(e) => {
                self.drop_if_unused(body_id);
                if let Some(a) = access_id {
                    self.drop_if_unused(a);
                }
                Update::Failed(e)
            }
            Ok(v) => {
                for id in std::iter::once(body_id).chain(access_id) {
                    if let Some(e) = self.execs.get_mut(&id) {
                        e.subscribers.insert(sub_key);
                    }
                }
                if let Some(c) = self.clients.get_mut(&client) {
                    c.subs.insert(
                        query_id,
                        Sub {
                            body: body_id,
                            access: access_id,
                            function,
                            args,
                        },
                    );
                }
                self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
                Update::Full(v)
            }
        }
    }

    /// Finds or creates (running it at the worker's snapshot) the execution for `key`.
    fn execution(
        &mut self,
        key: ExecKey,
        handler: TxnHandler,
        def: &Arc<FunctionDef>,
        args: &Value,
        identity: Option<&Identity>,
    ) -> ExecId {
        if let Some(id) = self.by_key.get(&key) {
            return *id;
        }
        let spec = Arc::new(ExecSpec {
            handler,
            def: def.clone(),
            args: args.clone(),
            identity: identity.cloned(),
            access: key.access,
        });
        let executed = rerun::execute(&self.engine, &self.snapshot, &spec, None);
        let id = self.free_ids.pop().unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id - 1
        });
        self.index.insert(id, &executed.reads);
        self.by_key.insert(key.clone(), id);
        self.execs.insert(
            id,
            Execution {
                key,
                spec,
                run: executed,
                subscribers: FxHashSet::default(),
            },
        );
        self.metrics.executions.fetch_add(1, Ordering::Relaxed);
        id
    }

    fn drop_if_unused(&mut self, id: ExecId) {
        let unused = self
            .execs
            .get(&id)
            .is_some_and(|e| e.subscribers.is_empty());
        if unused {
            if let Some(e) = self.execs.remove(&id) {
                self.index.remove(id, &e.run.reads);
                self.by_key.remove(&e.key);
                self.free_ids.push(id);
                self.metrics.executions.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn release(&mut self, client: ClientId, query_id: u32, sub: &Sub) {
        for id in std::iter::once(sub.body).chain(sub.access) {
            if let Some(e) = self.execs.get_mut(&id) {
                e.subscribers.remove(&(client, query_id));
            }
            self.drop_if_unused(id);
        }
        self.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }

    fn set_identity(&mut self, client: ClientId, identity: Option<Identity>, lapsed: bool) {
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        c.identity = identity.clone();
        // Before the re-run: its failures are the first the lapse causes.
        c.lapsed = lapsed;
        let subs: Vec<(u32, Sub)> = c.subs.drain().collect();
        let mut updates = Vec::new();
        for (q, sub) in subs {
            // What the client holds once it has taken its pending transition: the result of
            // the body execution, whose every change went to the outbox as it was made.
            let held = self
                .execs
                .get(&sub.body)
                .and_then(|e| e.run.result.as_ref().ok().cloned());
            self.release(client, q, &sub);
            let def = self
                .engine
                .public_function(&sub.function, FunctionKind::Query);
            let update = match def {
                Ok(def) => self.attach(client, q, def, sub.function, sub.args, identity.clone()),
                Err(e) => Update::Failed(e),
            };
            // A refresh of the same user's token usually changes nothing: the difference, not
            // every result again (which could also exceed a frame all together).
            match (update, held) {
                (Update::Full(new), Some(held)) => {
                    updates.extend(Update::change(held, new).map(|u| (q, u)))
                }
                (update, _) => updates.push((q, update)),
            }
        }
        self.push(client, updates);
    }

    /// Re-runs `ids` at the worker's snapshot, sharing a large pass with the pool.
    fn rerun_all(&self, ids: &[ExecId]) -> Vec<Rerun> {
        let jobs: Vec<RerunJob> = ids
            .iter()
            .filter_map(|id| {
                let exec = self.execs.get(id)?;
                Some(RerunJob {
                    id: *id,
                    spec: exec.spec.clone(),
                    previous: exec.run.result.clone(),
                    previous_bytes: exec.run.bytes,
                })
            })
            .collect();
        self.pool.run(&self.engine, &self.snapshot, jobs)
    }

    fn process_commits(&mut self) {
        let pending = std::mem::take(&mut *self.pending.lock());
        let Some(snapshot) = pending.latest else {
            return;
        };
        if snapshot.ts <= self.snapshot.ts {
            return;
        }
        self.metrics.passes.fetch_add(1, Ordering::Relaxed);
        self.snapshot = snapshot;
        let mut affected = RoaringBitmap::new();
        if pending.overflow {
            affected.extend(self.execs.keys().copied());
        } else {
            for touched in &pending.touched {
                self.index.affected(touched, &mut affected);
            }
        }
        // Re-run every affected execution at the new snapshot (in parallel when there are
        // many), then apply the results here; collect (client, query, update) triples,
        // grouped per client below.
        let ids: Vec<ExecId> = affected.iter().collect();
        let reruns = self.rerun_all(&ids);
        let mut updates = std::mem::take(&mut self.updates);
        let mut ended: Vec<(ClientId, u32)> = Vec::new();
        for rerun in reruns {
            self.metrics.reruns.fetch_add(1, Ordering::Relaxed);
            let id = rerun.id;
            let Some(exec) = self.execs.get_mut(&id) else {
                continue;
            };
            // A re-run usually reads the same ranges again (a window over one meeting's
            // index range); then its entries in the index stay as they are.
            if exec.run.reads != rerun.executed.reads {
                self.index.remove(id, &exec.run.reads);
                self.index.insert(id, &rerun.executed.reads);
            }
            exec.run = rerun.executed;
            let Some(update) = rerun.update else {
                self.metrics
                    .reruns_unchanged
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let is_access = exec.key.access;
            for &(client, q) in &exec.subscribers {
                match &update {
                    Update::Failed(e) => {
                        updates.push((client, q, Update::Failed(e.clone())));
                        ended.push((client, q));
                    }
                    // An access check that still passes changes nothing for the subscriber.
                    _ if is_access => {}
                    u => updates.push((client, q, u.clone())),
                }
            }
        }
        for (client, q) in ended {
            if let Some(sub) = self
                .clients
                .get_mut(&client)
                .and_then(|c| c.subs.remove(&q))
            {
                self.release(client, q, &sub);
            }
        }
        let ts = self.snapshot.ts;
        // Clients that asked for a sync up to `ts` get a transition even without changes.
        let mut synced: Vec<ClientId> = Vec::new();
        while let Some(entry) = self.syncs.first_entry() {
            if *entry.key() > ts {
                break;
            }
            synced.extend(entry.remove());
        }
        // One transition per client: group by client, then by query; a query with two updates
        // (its body changed and its access check failed) keeps the failure.
        // Equal keys are equal updates' kinds, so an unstable sort groups them the same way.
        updates
            .sort_unstable_by_key(|(client, q, u)| (*client, *q, !matches!(u, Update::Failed(_))));
        updates.dedup_by_key(|(client, q, _)| (*client, *q));
        for group in updates.chunk_by(|a, b| a.0 == b.0) {
            let client = group[0].0;
            self.push(client, group.iter().map(|(_, q, u)| (*q, u.clone())));
        }
        updates.clear();
        self.updates = updates;
        synced.sort_unstable();
        synced.dedup();
        for client in synced {
            // Already pushed above if any of its queries changed; nothing to bring up to date
            // without subscriptions (a query subscribed later starts at or after `ts`).
            let behind = self
                .clients
                .get(&client)
                .is_some_and(|c| c.outbox.latest_ts() < ts && !c.subs.is_empty());
            if behind {
                self.push(client, Vec::new());
            }
        }
    }
}
