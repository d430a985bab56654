//! Collaborative note editing over the network: `NoteSession` wires a `NoteEditor` to the
//! server. It loads `notes.get`, learns every committed op in version order from a
//! `notes.opsSince` subscription (its own ops there are the acks), sends one op at a time with
//! `notes.applyOperation`, retransmits after connection loss, sends an op refused as based too
//! far back again once it has caught up (`CONFLICT` `tooFarBehind`: the editor keeps it
//! transformed to its version), and reloads on any other `CONFLICT`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use linkedup_schema::api::notes::{
    fns, op_weight, window_may_be_cut, ApplyOperationArgs, NoteOpEntry, NoteState, MAX_OPS_SINCE,
};
use linkedup_schema::ot::TextOperation;
use parking_lot::Mutex;
use query_engine::error::codes;
use query_engine::obj;
use query_engine::value::Value;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{new_mutation_id, CallReply, Client};
use crate::error::ClientError;
use crate::note_editor::{EditRefused, NoteEditor, OutgoingOp};
use crate::subscription::Subscription;
use crate::transcripts::{backoff_delay, classify, Retry};

/// Why a session cannot go on, or an edit was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NoteSessionError {
    /// The server refused (e.g. `FORBIDDEN`), or the connection failed past every retry.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The edit was refused, the text unchanged: it does not fit the current text (build it
    /// with `edit_with` to avoid races), or the server would refuse it (see `NoteSession::edit`).
    #[error(transparent)]
    Refused(#[from] EditRefused),
    /// A `NoteSessionConfig` field is out of range.
    #[error("invalid note session configuration: {0}")]
    Config(String),
    /// The session was closed.
    #[error("note session closed")]
    Closed,
}

/// How a `NoteSession` follows the op log and retries.
#[derive(Clone, Debug, PartialEq)]
pub struct NoteSessionConfig {
    /// Ops per `notes.opsSince` window: 1..=500.
    pub ops_window: i64,
    /// The subscription is re-anchored at the current version once its window holds this many
    /// ops (or is full), so results stay small: 1..=`ops_window`.
    pub reanchor_after: usize,
    /// Attempts to send one op (or to reload the note) on transient errors.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for NoteSessionConfig {
    fn default() -> Self {
        NoteSessionConfig {
            ops_window: 128,
            reanchor_after: 32,
            max_attempts: 10,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl NoteSessionConfig {
    pub fn validate(&self) -> Result<(), NoteSessionError> {
        let bad = |s: &str| Err(NoteSessionError::Config(s.into()));
        if !(1..=MAX_OPS_SINCE).contains(&self.ops_window) {
            return bad("ops_window must be 1..=500");
        }
        if self.reanchor_after == 0 || self.reanchor_after as i64 > self.ops_window {
            return bad("reanchor_after must be 1..=ops_window");
        }
        if !(1..=50).contains(&self.max_attempts) {
            return bad("max_attempts must be 1..=50");
        }
        if self.initial_backoff > self.max_backoff {
            return bad("initial_backoff must not exceed max_backoff");
        }
        Ok(())
    }
}

/// The session's state at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSnapshot {
    /// The text with local edits not yet confirmed.
    pub text: String,
    /// The last server version reflected in `text`.
    pub version: u64,
    /// Local edits await confirmation.
    pub pending: bool,
    /// How many reloads dropped unconfirmed local edits (protocol `CONFLICT` with resync).
    pub discarded_edits: u64,
    /// How many times an edit the server refused as based too far back was sent again after
    /// catching up (kept, not dropped).
    pub resent_edits: u64,
}

struct State {
    editor: NoteEditor,
    /// The op to send next (the editor's op in flight, not yet handed to a call).
    outbox: Option<OutgoingOp>,
    discarded_edits: u64,
    resent_edits: u64,
    failed: Option<NoteSessionError>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the worker: an op is in the outbox, or the session is closing.
    wake: Notify,
    /// Bumped on every change of `state`, for waiters.
    revision: watch::Sender<u64>,
    closing: watch::Sender<bool>,
}

impl Shared {
    fn changed(&self) {
        self.revision.send_modify(|r| *r = r.wrapping_add(1));
    }

    fn snapshot(&self) -> NoteSnapshot {
        let st = self.state.lock();
        NoteSnapshot {
            text: st.editor.text().to_string(),
            version: st.editor.version(),
            pending: st.editor.has_pending(),
            discarded_edits: st.discarded_edits,
            resent_edits: st.resent_edits,
        }
    }
}

/// One editor of one meeting's note, live. Edits apply locally at once and reach the server in
/// the background; remote edits arrive by themselves. Dropping the session stops it (edits not
/// yet confirmed may or may not reach the server); `synchronized` first to be sure.
pub struct NoteSession {
    shared: Arc<Shared>,
    client_id: String,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for NoteSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSession")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl NoteSession {
    /// Opens the note of `meeting_id` with the default configuration.
    pub async fn open(client: &Client, meeting_id: &str) -> Result<NoteSession, NoteSessionError> {
        Self::open_with(client, meeting_id, NoteSessionConfig::default()).await
    }

    /// Loads the note (refusals such as `FORBIDDEN` are returned here) and starts following it.
    pub async fn open_with(
        client: &Client,
        meeting_id: &str,
        config: NoteSessionConfig,
    ) -> Result<NoteSession, NoteSessionError> {
        config.validate()?;
        let note = load(client, meeting_id).await?;
        let client_id = new_mutation_id();
        let version = version_of(&note);
        let (revision, _) = watch::channel(0);
        let (closing, closing_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                editor: NoteEditor::new(note.content, version),
                outbox: None,
                discarded_edits: 0,
                resent_edits: 0,
                failed: None,
            }),
            wake: Notify::new(),
            revision,
            closing,
        });
        let sub = subscribe_ops(client, meeting_id, version, &config)?;
        let worker = Worker {
            client: client.clone(),
            meeting_id: meeting_id.to_string(),
            client_id: client_id.clone(),
            config,
            shared: shared.clone(),
            sub,
            window_ops: 0,
            window_cut: false,
            call: None,
            retry_at: None,
            attempts: 0,
            catch_up_to: None,
            catch_ups: 0,
        };
        let worker = tokio::spawn(worker.run(closing_rx));
        Ok(NoteSession {
            shared,
            client_id,
            worker: Some(worker),
        })
    }

    /// This editor's id on the server (`clientId` of its ops).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The text as the user sees it (with unconfirmed local edits).
    pub fn text(&self) -> String {
        self.shared.state.lock().editor.text().to_string()
    }

    /// The last server version reflected in `text`.
    pub fn version(&self) -> u64 {
        self.shared.state.lock().editor.version()
    }

    pub fn snapshot(&self) -> NoteSnapshot {
        self.shared.snapshot()
    }

    /// Bumped on every change (remote op, ack, reload, failure): watch it to redraw.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.revision.subscribe()
    }

    /// Applies `op`, built against [`text`](Self::text), locally and queues it for the server.
    /// An edit the server would refuse is refused here instead (`NoteSessionError::Refused`),
    /// leaving the text as it was: one over the per-op limits
    /// (`linkedup_schema::ot::OpLimits::DEFAULT`: make it in smaller edits), one that would
    /// lengthen the note past `linkedup_schema::api::notes::MAX_NOTE_CHARS`. So is one made
    /// while `note_editor::MAX_BUFFERED_OPS` ops of edits already wait for the server (edits
    /// that compose into the last of them are still taken).
    pub fn edit(&self, op: TextOperation) -> Result<(), NoteSessionError> {
        self.edit_with(|_| op).map(|_| ())
    }

    /// Builds an edit from the current text and applies it atomically, so a remote op arriving
    /// meanwhile cannot make it stale. Returns the text after the edit. Refused as by `edit`.
    pub fn edit_with(
        &self,
        build: impl FnOnce(&str) -> TextOperation,
    ) -> Result<String, NoteSessionError> {
        let text = {
            let mut st = self.shared.state.lock();
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            let op = build(st.editor.text());
            if let Some(out) = st.editor.apply_local(op)? {
                st.outbox = Some(out);
            }
            st.editor.text().to_string()
        };
        self.shared.wake.notify_one();
        self.shared.changed();
        Ok(text)
    }

    /// Waits until every local edit made so far is confirmed by the server.
    pub async fn synchronized(&self) -> Result<(), NoteSessionError> {
        self.wait_until(|st| !st.editor.has_pending()).await
    }

    /// Waits until the session reflects server version `version` or later and has no
    /// unconfirmed edits (e.g. the version `notes.get` reported).
    pub async fn caught_up_to(&self, version: u64) -> Result<(), NoteSessionError> {
        self.wait_until(|st| st.editor.version() >= version && !st.editor.has_pending())
            .await
    }

    async fn wait_until(&self, done: impl Fn(&State) -> bool) -> Result<(), NoteSessionError> {
        let mut rx = self.shared.revision.subscribe();
        loop {
            {
                let st = self.shared.state.lock();
                if let Some(e) = &st.failed {
                    return Err(e.clone());
                }
                if done(&st) {
                    return Ok(());
                }
            }
            if rx.changed().await.is_err() {
                return Err(NoteSessionError::Closed);
            }
        }
    }

    /// Stops following the note and waits for the worker to end.
    pub async fn close(mut self) {
        self.shared.closing.send_replace(true);
        if let Some(worker) = self.worker.take() {
            let _ = worker.await;
        }
    }
}

impl Drop for NoteSession {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.abort();
        }
    }
}

fn version_of(note: &NoteState) -> u64 {
    u64::try_from(note.version).unwrap_or(0)
}

async fn load(client: &Client, meeting_id: &str) -> Result<NoteState, ClientError> {
    client
        .query(fns::GET, &obj! { "meetingId" => meeting_id })
        .await
}

fn subscribe_ops(
    client: &Client,
    meeting_id: &str,
    version: u64,
    config: &NoteSessionConfig,
) -> Result<Subscription, ClientError> {
    client.subscribe(
        fns::OPS_SINCE,
        &obj! {
            "meetingId" => meeting_id,
            "version" => version as i64,
            "limit" => config.ops_window,
        },
    )
}

type CallFuture = Pin<Box<dyn Future<Output = Result<CallReply, ClientError>> + Send>>;

/// What the worker must do after an event.
enum Next {
    Go,
    /// The local copy cannot follow the server's log: fetch the note and start over.
    Reload(String),
    Fail(NoteSessionError),
}

struct Worker {
    client: Client,
    meeting_id: String,
    client_id: String,
    config: NoteSessionConfig,
    shared: Arc<Shared>,
    sub: Subscription,
    /// Ops in the current subscription's latest result.
    window_ops: usize,
    /// Whether that result may have been cut short by the server's weight bound.
    window_cut: bool,
    /// The `applyOperation` call under way, with the `clientSeq` it carries.
    call: Option<(u64, CallFuture)>,
    /// When to retransmit the op in flight after a transient failure.
    retry_at: Option<Instant>,
    /// Failed attempts for the op in flight.
    attempts: u32,
    /// The op in flight was refused as based too far back: send it again once the editor
    /// reflects this version.
    catch_up_to: Option<u64>,
    /// Such refusals of the op in flight; past `max_attempts` the session reloads.
    catch_ups: u32,
}

impl Worker {
    async fn run(mut self, mut closing: watch::Receiver<bool>) {
        loop {
            self.start_call();
            let next = tokio::select! {
                _ = closing.wait_for(|c| *c) => return,
                item = self.sub.next() => self.on_ops(item),
                reply = poll_call(&mut self.call) => self.on_reply(reply),
                _ = sleep_until(self.retry_at) => {
                    self.retry_at = None;
                    let mut st = self.shared.state.lock();
                    st.outbox = st.editor.in_flight();
                    Next::Go
                }
                _ = self.shared.wake.notified() => Next::Go,
            };
            let next = match next {
                Next::Reload(why) => {
                    tracing::debug!(meeting = %self.meeting_id, reason = %why, "reloading the note");
                    tokio::select! {
                        _ = closing.wait_for(|c| *c) => return,
                        r = self.reload() => r,
                    }
                }
                other => other,
            };
            if let Next::Fail(e) = next {
                tracing::debug!(meeting = %self.meeting_id, error = %e, "note session failed");
                self.shared.state.lock().failed = Some(e);
                self.shared.changed();
                return;
            }
        }
    }

    /// Hands the outbox to a new `applyOperation` call if none is under way.
    fn start_call(&mut self) {
        if self.call.is_some() || self.retry_at.is_some() {
            return;
        }
        let Some(out) = self.shared.state.lock().outbox.take() else {
            return;
        };
        let args = ApplyOperationArgs {
            meeting_id: self.meeting_id.clone(),
            base_version: out.base_version as i64,
            op: out.op.components().to_vec(),
            client_id: self.client_id.clone(),
            client_seq: out.client_seq as i64,
        };
        let client = self.client.clone();
        let call: CallFuture = Box::pin(async move {
            let args = query_engine::json::to_value(&args)
                .map_err(|e| ClientError::Encode(e.to_string()))?;
            client
                .mutation_with_id(fns::APPLY_OPERATION, args, &new_mutation_id())
                .await
        });
        self.call = Some((out.client_seq, call));
    }

    /// A new result of the op log: feed the ops after our version to the editor, in order.
    fn on_ops(&mut self, item: Option<Result<query_engine::value::Value, ClientError>>) -> Next {
        let value = match item {
            None => return Next::Fail(NoteSessionError::Closed),
            Some(Err(e)) if e.code() == Some(codes::CONFLICT) => {
                return Next::Reload(format!("op log: {e}"))
            }
            Some(Err(e)) => return Next::Fail(e.into()),
            Some(Ok(v)) => v,
        };
        let ops: Vec<NoteOpEntry> = match query_engine::json::from_value(&value) {
            Ok(ops) => ops,
            Err(e) => return Next::Fail(ClientError::Decode(e.to_string()).into()),
        };
        self.window_ops = ops.len();
        // A window cut short by the server's weight bound is not re-run for the ops after
        // it: re-anchor after its last op as for a full one.
        self.window_cut = window_may_be_cut(ops.iter().map(|o| op_weight(&o.op)).sum());
        let mut acked = false;
        {
            let mut st = self.shared.state.lock();
            for entry in ops {
                let Ok(sequence) = u64::try_from(entry.sequence) else {
                    return Next::Reload(format!("op with sequence {}", entry.sequence));
                };
                if sequence <= st.editor.version() {
                    continue;
                }
                let in_flight = st.editor.in_flight().map(|o| o.client_seq);
                let ours = entry.client_id == self.client_id
                    && u64::try_from(entry.client_seq).ok() == in_flight;
                let applied = if ours {
                    acked = true;
                    st.editor.server_ack(sequence).map(|next| {
                        st.outbox = next;
                    })
                } else {
                    // Another editor's op, or one of ours that a reload stopped waiting for.
                    st.editor.apply_remote(entry.op, sequence)
                };
                if let Err(e) = applied {
                    return Next::Reload(e.to_string());
                }
            }
        }
        if acked {
            // The op in flight is committed: its call (if still running) and any retry of it
            // are moot.
            self.call = None;
            self.retry_at = None;
            self.attempts = 0;
            self.catch_up_to = None;
            self.catch_ups = 0;
        }
        self.resend_if_caught_up();
        self.shared.changed();
        if self.window_ops >= self.config.reanchor_after || self.window_cut {
            let version = self.shared.state.lock().editor.version();
            match subscribe_ops(&self.client, &self.meeting_id, version, &self.config) {
                Ok(sub) => {
                    self.sub = sub;
                    self.window_ops = 0;
                    self.window_cut = false;
                }
                Err(e) => return Next::Fail(e.into()),
            }
        }
        Next::Go
    }

    /// An `applyOperation` call ended. Success needs nothing: the op's ack is its entry in the
    /// op log, which keeps acks and remote ops in one order.
    fn on_reply(&mut self, (seq, reply): (u64, Result<CallReply, ClientError>)) -> Next {
        self.call = None;
        let still_in_flight = self
            .shared
            .state
            .lock()
            .editor
            .in_flight()
            .map(|o| o.client_seq)
            == Some(seq);
        let error = match reply {
            Ok(_) => return Next::Go,
            Err(_) if !still_in_flight => return Next::Go, // acked or reloaded meanwhile
            Err(e) => e,
        };
        if too_far_behind(&error).is_some() && self.catch_ups < self.config.max_attempts {
            // Nothing was applied: follow the op log up to where the server is (the editor
            // transforms the op in flight on the way) and send it again from there.
            self.catch_ups += 1;
            self.catch_up_to = too_far_behind(&error);
            self.resend_if_caught_up();
            return Next::Go;
        }
        match error.code() {
            // The base version is too old (compacted), or the op does not fit the server's
            // note: our copy is off.
            Some(codes::CONFLICT) | Some(codes::VALIDATION_ERROR) => {
                return Next::Reload(format!("applyOperation: {error}"))
            }
            _ => {}
        }
        self.attempts += 1;
        let wait = match classify(&error) {
            _ if self.attempts >= self.config.max_attempts => None,
            Retry::Never => None,
            Retry::Backoff => Some(self.backoff()),
            Retry::After(d) => Some(d.max(self.backoff()).min(self.config.max_backoff * 4)),
        };
        match wait {
            Some(wait) => {
                tracing::debug!(error = %error, attempts = self.attempts, "note op failed; retransmitting");
                self.retry_at = Some(Instant::now() + wait);
                Next::Go
            }
            None => Next::Fail(error.into()),
        }
    }

    /// Sends the op in flight again once the editor has caught up to where the server was
    /// when it refused the op as based too far back.
    fn resend_if_caught_up(&mut self) {
        let Some(target) = self.catch_up_to else {
            return;
        };
        let mut st = self.shared.state.lock();
        if st.editor.version() < target {
            return;
        }
        self.catch_up_to = None;
        st.outbox = st.editor.in_flight();
        if st.outbox.is_some() {
            st.resent_edits += 1;
        }
    }

    fn backoff(&self) -> Duration {
        backoff_delay(
            self.config.initial_backoff,
            self.config.max_backoff,
            self.attempts,
            rand::random(),
        )
    }

    /// Fetches the note, replaces the local copy (dropping unconfirmed edits) and follows the
    /// op log from its version.
    async fn reload(&mut self) -> Next {
        self.call = None;
        self.retry_at = None;
        self.attempts = 0;
        self.catch_up_to = None;
        self.catch_ups = 0;
        let mut attempts = 0;
        let note = loop {
            attempts += 1;
            match load(&self.client, &self.meeting_id).await {
                Ok(note) => break note,
                Err(e) => match classify(&e) {
                    Retry::Backoff | Retry::After(_) if attempts < self.config.max_attempts => {
                        tokio::time::sleep(backoff_delay(
                            self.config.initial_backoff,
                            self.config.max_backoff,
                            attempts,
                            rand::random(),
                        ))
                        .await;
                    }
                    _ => return Next::Fail(e.into()),
                },
            }
        };
        let version = version_of(&note);
        // Subscribe before installing the text, so no op after `version` can be missed.
        let sub = match subscribe_ops(&self.client, &self.meeting_id, version, &self.config) {
            Ok(sub) => sub,
            Err(e) => return Next::Fail(e.into()),
        };
        {
            let mut st = self.shared.state.lock();
            if st.editor.resync(note.content, version) {
                st.discarded_edits += 1;
            }
            st.outbox = None;
        }
        self.sub = sub;
        self.window_ops = 0;
        self.window_cut = false;
        self.shared.changed();
        Next::Go
    }
}

/// The version to catch up to before sending again, when `error` refused an op as based too far
/// back (`CONFLICT`, `data.reason = "tooFarBehind"`, `data.currentVersion`).
fn too_far_behind(error: &ClientError) -> Option<u64> {
    match error {
        ClientError::Function { code, data, .. }
            if code == codes::CONFLICT
                && data.get_path("reason").and_then(Value::as_str) == Some("tooFarBehind") =>
        {
            data.get_path("currentVersion")
                .and_then(Value::as_i64)
                .and_then(|v| u64::try_from(v).ok())
        }
        _ => None,
    }
}

/// The running call's outcome, tagged with its `clientSeq`; pending forever when none runs.
async fn poll_call(call: &mut Option<(u64, CallFuture)>) -> (u64, Result<CallReply, ClientError>) {
    match call {
        Some((seq, fut)) => {
            let reply = fut.await;
            (*seq, reply)
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bounds_are_checked() {
        assert!(NoteSessionConfig::default().validate().is_ok());
        let bad = [
            NoteSessionConfig {
                ops_window: 0,
                ..NoteSessionConfig::default()
            },
            NoteSessionConfig {
                ops_window: 501,
                ..NoteSessionConfig::default()
            },
            NoteSessionConfig {
                ops_window: 10,
                reanchor_after: 11,
                ..NoteSessionConfig::default()
            },
            NoteSessionConfig {
                max_attempts: 0,
                ..NoteSessionConfig::default()
            },
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(NoteSessionError::Config(_))));
        }
    }
}
