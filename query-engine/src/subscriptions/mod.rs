//! Reactivity: subscriptions whose results are re-computed only when a commit touches what
//! they read, and pushed to clients as consistent transitions.
//!
//! One worker thread owns all state. It learns of each durable batch from the committer (a
//! merged notice, so a burst of commits costs one pass), finds the affected executions through
//! the invalidation index, re-runs each once at the new snapshot, diffs against the previous
//! result (encoding each diff once), and pushes one transition per affected client into that
//! client's outbox. Identical subscriptions share an execution; functions declared
//! `Sharing::AfterAccessCheck` share the body across callers and run only the access check per
//! caller. Subscribing, unsubscribing and re-authenticating go through the same worker, so
//! every client's queries are always at the worker's one timestamp.

mod invalidation;
mod outbox;
mod rerun;
mod transition;
mod wakeup;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::engine::Engine;
use crate::error::{FunctionError, FunctionResult};
use crate::identity::Identity;
use crate::metrics::{Histogram, SIZE_BUCKETS};
use crate::reads::TouchedKeys;
use crate::storage::Snapshot;
use crate::value::Value;

pub use invalidation::InvalidationIndex;
pub use transition::{QueryUpdate, Transition, UpdateTooLarge};

use outbox::Outbox;

#[derive(Clone, Debug)]
pub struct SubscriptionConfig {
    pub max_subscriptions_per_client: usize,
    /// Bound of the command queue (subscribe/unsubscribe/...); callers wait when full.
    pub command_queue: usize,
    /// Most touched keys (summed over the batches) kept while the worker is behind; beyond
    /// it the next pass re-runs every execution instead (correct, just slower).
    pub max_pending_touched_keys: usize,
    /// Threads re-running the executions of one pass when it has many (1 = the worker
    /// alone); at most 8. The extra threads are started once and idle between passes.
    /// Default: the number of cores, at most 4.
    pub rerun_threads: usize,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        SubscriptionConfig {
            max_subscriptions_per_client: 1024,
            command_queue: 4096,
            max_pending_touched_keys: 1 << 20,
            rerun_threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        }
    }
}

pub type ClientId = u64;

/// How a client's subscription failures are reported: applied to the error of each of its
/// subscriptions that fails, before the failure is pushed. The flag says whether the client's
/// identity had lapsed (`ClientSession::lapse_identity`) with no new one since, so that the
/// application can tell the client which failures a fresh identity may undo; it can also strip
/// from a function's own error what only the application may say.
pub type FailureReport = Arc<dyn Fn(FunctionError, bool) -> FunctionError + Send + Sync>;

pub(crate) enum Command {
    Connect {
        client: ClientId,
        outbox: Arc<Outbox>,
        identity: Option<Identity>,
        report: Option<FailureReport>,
    },
    Subscribe {
        client: ClientId,
        query_id: u32,
        function: String,
        args: Value,
        reply: oneshot::Sender<FunctionResult<()>>,
    },
    Unsubscribe {
        client: ClientId,
        query_id: u32,
    },
    /// The consumer ended the subscription itself (`ClientSession::end`).
    End {
        client: ClientId,
        query_id: u32,
    },
    SetIdentity {
        client: ClientId,
        identity: Option<Identity>,
        /// The identity lapsed rather than being replaced (`ClientSession::lapse_identity`).
        lapsed: bool,
        reply: oneshot::Sender<()>,
    },
    SyncTo {
        client: ClientId,
        ts: u64,
    },
    /// Commit notices are pending.
    Wake,
}

/// Commits not yet processed. The committer only appends each batch's (shared) touched keys,
/// so noting a batch costs it O(1) whatever the batch size; the worker probes them all.
#[derive(Default)]
pub(crate) struct PendingCommits {
    pub touched: Vec<Arc<TouchedKeys>>,
    /// Keys in `touched`, summed over batches.
    pub touched_keys: usize,
    pub overflow: bool,
    pub latest: Option<Arc<Snapshot>>,
    pub commits: u64,
}

#[derive(Default)]
pub struct SubscriptionMetrics {
    pub executions: AtomicU64,
    pub subscriptions: AtomicU64,
    pub reruns: AtomicU64,
    pub reruns_unchanged: AtomicU64,
    pub commits_seen: AtomicU64,
    pub passes: AtomicU64,
    pub transitions: AtomicU64,
    pub transition_updates: Histogram,
    pub outbox_depth: Histogram,
}

impl SubscriptionMetrics {
    fn new() -> Self {
        SubscriptionMetrics {
            transition_updates: Histogram::new(SIZE_BUCKETS),
            outbox_depth: Histogram::new(SIZE_BUCKETS),
            ..Default::default()
        }
    }
}

struct ManagerInner {
    tx: mpsc::Sender<Command>,
    pending: Arc<Mutex<PendingCommits>>,
    closed: Arc<Mutex<Vec<ClientId>>>,
    metrics: Arc<SubscriptionMetrics>,
    next_client: AtomicU64,
    max_subscriptions: usize,
}

#[derive(Clone)]
pub struct SubscriptionManager {
    inner: Arc<ManagerInner>,
}

impl SubscriptionManager {
    /// Starts the worker and registers with the engine's committer.
    pub fn new(engine: Engine, config: SubscriptionConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.command_queue.max(16));
        let pending = Arc::new(Mutex::new(PendingCommits::default()));
        let closed = Arc::new(Mutex::new(Vec::new()));
        let metrics = Arc::new(SubscriptionMetrics::new());
        {
            let pending = pending.clone();
            // Weak, so the worker (which holds the engine) stops once every manager and
            // session handle is gone, and the engine can close.
            let tx = tx.downgrade();
            let max_keys = config.max_pending_touched_keys;
            let metrics = metrics.clone();
            engine.on_commit(move |notice| {
                metrics.commits_seen.fetch_add(1, Ordering::Relaxed);
                let mut p = pending.lock();
                if !p.overflow {
                    p.touched_keys += notice.touched.len();
                    if p.touched_keys > max_keys {
                        p.overflow = true;
                        p.touched = Vec::new();
                    } else {
                        p.touched.push(notice.touched.clone());
                    }
                }
                p.latest = Some(notice.snapshot.clone());
                p.commits += 1;
                drop(p);
                // If the queue is full the worker is busy and will look at pending commits
                // after its current command anyway.
                if let Some(tx) = tx.upgrade() {
                    let _ = tx.try_send(Command::Wake);
                }
            });
        }
        // Taken after registering, so no commit falls between the two.
        let snapshot = engine.snapshot();
        let worker = worker::Worker::new(
            engine,
            snapshot,
            config.clone(),
            pending.clone(),
            closed.clone(),
            metrics.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("subscriptions".into())
            .spawn(move || worker.run(rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the subscription worker");
        }
        SubscriptionManager {
            inner: Arc::new(ManagerInner {
                tx,
                pending,
                closed,
                metrics,
                next_client: AtomicU64::new(1),
                max_subscriptions: config.max_subscriptions_per_client,
            }),
        }
    }

    /// Opens a client session (one per connection).
    pub async fn connect(&self, identity: Option<Identity>) -> ClientSession {
        self.open(identity, None).await
    }

    /// Opens a client session whose subscription failures are reported through `report`.
    pub async fn connect_reporting(
        &self,
        identity: Option<Identity>,
        report: FailureReport,
    ) -> ClientSession {
        self.open(identity, Some(report)).await
    }

    async fn open(
        &self,
        identity: Option<Identity>,
        report: Option<FailureReport>,
    ) -> ClientSession {
        let client = self.inner.next_client.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::default());
        let _ = self
            .inner
            .tx
            .send(Command::Connect {
                client,
                outbox: outbox.clone(),
                identity,
                report,
            })
            .await;
        ClientSession {
            client,
            outbox,
            manager: self.inner.clone(),
        }
    }

    pub fn metrics(&self) -> &Arc<SubscriptionMetrics> {
        &self.inner.metrics
    }

    pub fn max_subscriptions_per_client(&self) -> usize {
        self.inner.max_subscriptions
    }

    /// Commits received but not yet processed (0 when the worker has caught up).
    pub fn pending_commits(&self) -> u64 {
        self.inner.pending.lock().commits
    }

    /// Appends subscription metrics in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let m = &self.inner.metrics;
        for (name, kind, help, v) in [
            (
                "subscriptions_executions",
                "gauge",
                "Live query executions",
                &m.executions,
            ),
            (
                "subscriptions_active",
                "gauge",
                "Live subscriptions",
                &m.subscriptions,
            ),
            (
                "subscriptions_reruns_total",
                "counter",
                "Executions re-run after a commit",
                &m.reruns,
            ),
            (
                "subscriptions_reruns_unchanged_total",
                "counter",
                "Re-runs whose result did not change",
                &m.reruns_unchanged,
            ),
            (
                "subscriptions_passes_total",
                "counter",
                "Invalidation passes (each covers one or more commits)",
                &m.passes,
            ),
            (
                "subscriptions_transitions_total",
                "counter",
                "Transitions pushed to client outboxes",
                &m.transitions,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP subscriptions_transition_updates Query updates per transition\n# TYPE subscriptions_transition_updates histogram");
        m.transition_updates
            .render("subscriptions_transition_updates", "", out);
        let _ = writeln!(out, "# HELP subscriptions_outbox_depth Pending query updates in a client outbox after a push\n# TYPE subscriptions_outbox_depth histogram");
        m.outbox_depth.render("subscriptions_outbox_depth", "", out);
    }
}

/// One client's view: its subscriptions and the transitions bringing them forward. Dropping
/// it ends all of its subscriptions.
pub struct ClientSession {
    client: ClientId,
    outbox: Arc<Outbox>,
    manager: Arc<ManagerInner>,
}

impl ClientSession {
    pub fn id(&self) -> ClientId {
        self.client
    }

    async fn send(&self, cmd: Command) -> FunctionResult<()> {
        self.manager
            .tx
            .send(cmd)
            .await
            .map_err(|_| FunctionError::internal("subscription worker stopped"))
    }

    /// Subscribes `query_id` to a public query. `Err` means rejected now (duplicate id,
    /// too many subscriptions, unknown function, invalid arguments); otherwise the first
    /// result — or the error of its first run — arrives in a transition.
    pub async fn subscribe(
        &self,
        query_id: u32,
        function: &str,
        args: Value,
    ) -> FunctionResult<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Subscribe {
            client: self.client,
            query_id,
            function: function.to_string(),
            args,
            reply,
        })
        .await?;
        rx.await
            .map_err(|_| FunctionError::internal("subscription worker stopped"))?
    }

    /// Ends a subscription; a `Removed` update follows.
    pub async fn unsubscribe(&self, query_id: u32) {
        let _ = self
            .send(Command::Unsubscribe {
                client: self.client,
                query_id,
            })
            .await;
    }

    /// Ends a subscription from the consumer's side, which has told the client itself (say,
    /// with a `Failed` in place of an update it could not deliver): nothing more is sent for
    /// it — whatever is pending for it is dropped at once, and no later change brings it back —
    /// and the worker drops it as it would an unsubscribed one, without a `Removed`. Call it
    /// before the client can learn of the end, so that a new subscription under the same id
    /// reaches the worker after it.
    pub async fn end(&self, query_id: u32) {
        self.outbox.end(query_id);
        let _ = self
            .send(Command::End {
                client: self.client,
                query_id,
            })
            .await;
    }

    /// Re-runs every subscription under a new identity (token refresh or sign-out) without
    /// dropping them; subscriptions the new identity may not see end with their error.
    pub async fn set_identity(&self, identity: Option<Identity>) {
        self.change_identity(identity, false).await;
    }

    /// The client's identity lapsed (say, its token expired without a refresh): every
    /// subscription re-runs anonymously, and until the next `set_identity` the failures of
    /// this client's subscriptions, those of this re-run included, are reported as lapsed
    /// (`FailureReport`).
    pub async fn lapse_identity(&self) {
        self.change_identity(None, true).await;
    }

    async fn change_identity(&self, identity: Option<Identity>, lapsed: bool) {
        let (reply, rx) = oneshot::channel();
        if self
            .send(Command::SetIdentity {
                client: self.client,
                identity,
                lapsed,
                reply,
            })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Asks for a transition ending at or after `ts` even if nothing this client watches
    /// changed (read-your-writes after the client's own mutation).
    pub async fn sync_to(&self, ts: u64) {
        let _ = self
            .send(Command::SyncTo {
                client: self.client,
                ts,
            })
            .await;
    }

    /// The next transition; `None` once the session is closed.
    pub async fn next_transition(&self) -> Option<Transition> {
        self.outbox.next().await
    }

    /// The pending transition, if any, without waiting.
    pub fn try_next_transition(&self) -> Option<Transition> {
        self.outbox.try_next()
    }

    /// The timestamp this client's subscriptions will be at after its pending transition.
    pub fn latest_ts(&self) -> u64 {
        self.outbox.latest_ts()
    }

    /// How many times pending updates were merged because the consumer was behind.
    pub fn merges(&self) -> u64 {
        self.outbox.merges()
    }
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        self.outbox.close();
        self.manager.closed.lock().push(self.client);
        let _ = self.manager.tx.try_send(Command::Wake);
    }
}
