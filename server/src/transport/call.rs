//! Call streams: each carries one or more `Call` frames until the client's FIN, and the server
//! answers each with one `CallResult` carrying its `requestId`. Calls run concurrently under the
//! identity the connection has when their frame is read, bounded per connection; results go out
//! in completion order, every result ready at the moment coalesced into one write. Results the
//! client has not taken yet are counted against the byte budgets for unwritten results
//! (`budget`): while one of them is full, no further call starts; and a result left unwritten
//! for the result write timeout resets the stream, dropping what it holds.

use std::collections::HashSet;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use query_engine::error::{codes, FunctionError, FunctionResult};
use query_engine::functions::FunctionKind;
use query_engine::protocol::{
    decode_call, encode_frame_into, CallKind, CallOutcome, ClientMessage, ServerMessage,
};
use query_engine::value::Value;
use quinn::{RecvStream, SendStream};
use tokio::sync::OwnedSemaphorePermit;

use super::budget::HeldOutput;
use super::connection::{token_expired, without_server_markers, AuthState, ConnCtx};
use super::output::Output;
use super::stream::{
    Frame, FrameReader, CLOSE_PROTOCOL_ERROR, CLOSE_RESULT_TIMEOUT, CLOSE_SHUTDOWN,
};
use super::Shared;
use crate::metrics::UNKNOWN_FUNCTION;

/// How long the closing frames of a stream ended by a protocol error may take to be written.
const FATAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// A call that has run: what to answer, and its slot, released once the answer is written.
struct Finished {
    request_id: u64,
    function: String,
    outcome: CallOutcome,
    /// The commit timestamp the connection's subscriptions must reach (a mutation's, or an
    /// action's last), 0 if none.
    sync_ts: u64,
    slot: OwnedSemaphorePermit,
}

/// A `Call` frame read and waiting for a call slot, or for unwritten results to drain.
struct Pending {
    /// Holds its bytes in the inbound budget until decoded.
    frame: Frame,
    /// The identity the call runs under: the connection's when the frame was read (§5.5),
    /// whatever `Authenticate` comes while it waits.
    auth: Option<Arc<AuthState>>,
}

/// Where the client's side of the stream stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Input {
    Open,
    /// FIN received: the frame already read is still served.
    Finished,
    /// Stopped by us (shutdown) or reset by the client: nothing more is read or served.
    Closed,
}

/// What the task holds between turns of its loop.
struct CallStream {
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    send: SendStream,
    input: Input,
    /// Reads the next frame under the connection's byte budget; at most one frame is being
    /// read while none is `ready`.
    reader: FrameReader,
    /// A frame read and waiting for a call slot, or for unwritten results to drain.
    ready: Option<Pending>,
    /// The `ready` frame has been counted as held back for unwritten results.
    ready_held_back: bool,
    running: FuturesUnordered<BoxFuture<'static, Finished>>,
    /// `requestId`s of the calls read and not yet answered.
    in_flight: HashSet<u64>,
    /// A slot acquired for the `ready` frame.
    slot: Option<OwnedSemaphorePermit>,
    /// Encoded results not yet written (counted in `held`), each holding its call's slot until
    /// written in full, so that a client that does not read its results stops getting its
    /// calls run.
    out: Output<OwnedSemaphorePermit>,
    held: HeldOutput,
    /// When the first of `unwritten` came first in line: it must be written in full within
    /// the result write timeout. Results behind it are not charged for its wait.
    head_since: tokio::time::Instant,
    /// Highest `sync_ts` among the results appended since the last sync.
    sync_ts: u64,
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    send: SendStream,
    recv: RecvStream,
) {
    let reader = FrameReader::new(ctx.budget.clone(), &shared.limits);
    let held = ctx.budget.held_output();
    let stream = CallStream {
        shared,
        ctx,
        send,
        input: Input::Open,
        reader,
        ready: None,
        ready_held_back: false,
        running: FuturesUnordered::new(),
        in_flight: HashSet::new(),
        slot: None,
        out: Output::new(),
        held,
        head_since: tokio::time::Instant::now(),
        sync_ts: 0,
    };
    stream.run(recv).await;
}

impl CallStream {
    async fn run(mut self, mut recv: RecvStream) {
        let mut shutdown = self.shared.shutdown.clone();
        let mut stopping = pin!(async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        });
        let write_timeout = self.shared.limits.result_write_timeout;
        // One timer, moved only when another result comes first in line.
        let mut stalled = pin!(tokio::time::sleep(write_timeout));
        let mut stalled_at = None;
        loop {
            if let Err(message) = self.start_call() {
                return self.fail(message).await;
            }
            let frame_waiting = self.ready.is_some();
            let writing = !self.out.pending().is_empty();
            if writing {
                let deadline = self.head_since + write_timeout;
                if stalled_at != Some(deadline) {
                    stalled.as_mut().reset(deadline);
                    stalled_at = Some(deadline);
                }
            }
            // The connection, its address or the server holds its budget of unwritten results:
            // the frame waits, and so, at the bound, do the client's further calls.
            let need_room = frame_waiting && !self.ctx.budget.has_output_room();
            if need_room && !self.ready_held_back {
                self.ready_held_back = true;
                self.shared
                    .metrics
                    .calls_held_for_results
                    .fetch_add(1, Ordering::Relaxed);
            }
            if self.input != Input::Open && !frame_waiting && self.running.is_empty() && !writing {
                let _ = self.send.finish();
                return;
            }
            let need_slot = frame_waiting && self.slot.is_none();
            let slots = self.ctx.call_slots.clone();
            tokio::select! {
                biased;
                Some(done) = self.running.next(), if !self.running.is_empty() => {
                    self.answer(done);
                    // Everything else already done goes out in the same write.
                    while let Some(Some(done)) = self.running.next().now_or_never() {
                        self.answer(done);
                    }
                    // Before the results go out, the subscriptions are told to reach their
                    // commits (§8, reading your own writes): once for the whole batch. Also
                    // for a connection without live queries: a query it subscribes once it has
                    // the result may reach the worker before the commit does (the committer
                    // replies, then notifies), and this queued sync is what then brings it to
                    // the commit.
                    if self.sync_ts > 0 {
                        self.ctx.session.sync_to(self.sync_ts).await;
                        self.sync_ts = 0;
                    }
                }
                wrote = self.send.write(self.out.pending()), if writing => {
                    match wrote {
                        Ok(n) => self.advance_output(n),
                        Err(e) => {
                            // The client stopped reading or the connection is gone: nobody
                            // can receive the remaining results.
                            tracing::debug!(error = %e, "call stream write failed");
                            return;
                        }
                    }
                }
                slot = slots.acquire_owned(), if need_slot => {
                    // The semaphore is never closed.
                    self.slot = slot.ok();
                }
                // `start_call` looks again: the budgets may be full again by then.
                () = self.ctx.budget.output_room(), if need_room => {}
                () = stalled.as_mut(), if writing => return self.give_up(&mut recv),
                frame = self.reader.next(&mut recv), if self.input == Input::Open && !frame_waiting => {
                    match frame {
                        Ok(Some(frame)) => {
                            let auth = self.ctx.auth.load_full();
                            self.ready = Some(Pending { frame, auth });
                        }
                        Ok(None) => self.input = Input::Finished,
                        Err(e) => match e.to_fatal_message() {
                            Some(message) => {
                                e.count_stall(&self.shared.metrics);
                                return self.fail(message).await;
                            }
                            None => {
                                tracing::debug!(error = %e, "call stream read failed");
                                self.close_input();
                            }
                        },
                    }
                }
                () = &mut stopping, if self.input == Input::Open => {
                    // Calls already read finish and are answered; the client retries the
                    // rest on its next connection (protocol §12).
                    let _ = recv.stop(CLOSE_SHUTDOWN);
                    self.close_input();
                }
            }
        }
    }

    /// Starts the call in the `ready` frame if a slot is free and the connection, its address
    /// and the server are below their budgets of unwritten results; otherwise leaves it
    /// waiting. A result is held whole once its call has run, so this is what bounds them: at
    /// most a budget, plus one result for each call running when it filled.
    fn start_call(&mut self) -> Result<(), ServerMessage> {
        if self.ready.is_none() || !self.ctx.budget.has_output_room() {
            return Ok(());
        }
        let slot = match self.slot.take() {
            Some(slot) => slot,
            None => match self.ctx.call_slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => return Ok(()),
            },
        };
        let Some(Pending { frame, auth }) = self.ready.take() else {
            return Ok(());
        };
        self.ready_held_back = false;
        // The frame's bytes go back to the budget once it is decoded.
        let msg = decode_call(&frame.payload).map_err(|e| e.to_message(true))?;
        drop(frame);
        let ClientMessage::Call {
            request_id,
            kind,
            function,
            args,
            mutation_id,
        } = msg
        else {
            return Err(fatal_validation(
                "only Call frames may be sent on a call stream",
            ));
        };
        if !self.in_flight.insert(request_id) {
            return Err(fatal_validation(&format!(
                "requestId {request_id} is already in flight on this call stream"
            )));
        }
        let call = run_call(
            self.shared.clone(),
            auth,
            Request {
                request_id,
                kind,
                function,
                args,
                mutation_id,
            },
            slot,
        );
        self.running.push(call.boxed());
        Ok(())
    }

    /// Appends the result of a finished call to the output.
    fn answer(&mut self, done: Finished) {
        let max_frame = self.shared.limits.max_frame_bytes;
        let Finished {
            request_id,
            function,
            outcome,
            sync_ts,
            slot,
        } = done;
        self.in_flight.remove(&request_id);
        self.sync_ts = self.sync_ts.max(sync_ts);
        let buf = self.out.buf_mut();
        let start = buf.len();
        let msg = ServerMessage::CallResult {
            request_id,
            result: outcome,
        };
        let fallback = match encode_frame_into(&msg, buf) {
            Ok(len) if len <= max_frame as usize => None,
            Ok(len) => {
                tracing::warn!(function = %function, bytes = len, "call result exceeds the frame limit");
                buf.truncate(start);
                Some(FunctionError::internal(format!(
                    "the result of {len} bytes exceeds the frame limit of {max_frame} bytes"
                )))
            }
            Err(e) => {
                // Values always encode; this is a bug, reported to the client as INTERNAL.
                tracing::error!(error = %e, "cannot encode a call result");
                Some(FunctionError::internal("cannot encode the result"))
            }
        };
        if let Some(error) = fallback {
            let msg = ServerMessage::CallResult {
                request_id,
                result: CallOutcome::Err(error.into()),
            };
            if let Err(e) = encode_frame_into(&msg, buf) {
                tracing::error!(error = %e, "cannot encode an error result");
            }
        }
        self.held.add(buf.len() - start);
        if !self.out.has_unwritten_results() {
            self.head_since = tokio::time::Instant::now();
        }
        self.out.push_end(slot);
        // Nothing appended (both encodings failed): nothing to wait for.
        self.advance_output(0);
    }

    /// Records `n` bytes written; when results were written in full (their slots released),
    /// the next one's clock starts now.
    fn advance_output(&mut self, n: usize) {
        self.held.release(n);
        if self.out.advance(n) {
            self.head_since = tokio::time::Instant::now();
        }
        debug_assert_eq!(self.held.bytes(), self.out.pending().len());
    }

    fn close_input(&mut self) {
        self.input = Input::Closed;
        self.reader.clear();
        self.ready = None;
        self.ready_held_back = false;
        self.slot = None;
    }

    /// Ends the stream after a result went unwritten for the result write timeout: the client
    /// grants no credit for it, so it and everything behind it are dropped, their bytes
    /// released, and the stream reset both ways. The calls still running are dropped with the
    /// task, as when the connection is lost; the client learns from the code that its calls
    /// without a result got no answer.
    fn give_up(mut self, recv: &mut RecvStream) {
        self.shared
            .metrics
            .result_write_timeouts
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            bytes = self.held.bytes(),
            timeout = ?self.shared.limits.result_write_timeout,
            "a call result was not taken in time; resetting its stream"
        );
        let _ = self.send.reset(CLOSE_RESULT_TIMEOUT);
        let _ = recv.stop(CLOSE_RESULT_TIMEOUT);
    }

    /// Ends the connection after a protocol error on this stream: the results already encoded
    /// and the fatal `Error` are written (bounded in time), then the connection is closed.
    async fn fail(mut self, message: ServerMessage) {
        self.shared
            .metrics
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(?message, "protocol error on a call stream");
        let reason = match &message {
            ServerMessage::Error { code, .. } => code.clone(),
            _ => String::new(),
        };
        if let Err(e) = encode_frame_into(&message, self.out.buf_mut()) {
            tracing::error!(error = %e, "cannot encode a fatal error");
        }
        let flush = async {
            self.send.write_all(self.out.pending()).await.ok()?;
            self.send.finish().ok()?;
            self.send.stopped().await.ok()
        };
        let _ = tokio::time::timeout(FATAL_WRITE_TIMEOUT, flush).await;
        self.ctx.conn.close(CLOSE_PROTOCOL_ERROR, reason.as_bytes());
    }
}

fn fatal_validation(message: &str) -> ServerMessage {
    ServerMessage::Error {
        code: codes::VALIDATION_ERROR.into(),
        message: message.into(),
        data: Value::Null,
        fatal: true,
    }
}

/// One `Call` as read off the stream.
struct Request {
    request_id: u64,
    kind: CallKind,
    function: String,
    args: Value,
    mutation_id: Option<String>,
}

async fn run_call(
    shared: Arc<Shared>,
    auth: Option<Arc<AuthState>>,
    request: Request,
    slot: OwnedSemaphorePermit,
) -> Finished {
    let started = Instant::now();
    let Request {
        request_id,
        kind,
        function,
        args,
        mutation_id,
    } = request;
    let (result, label) = execute(&shared, auth, kind, &function, args, mutation_id).await;
    let (outcome, sync_ts) = match result {
        // A query's timestamp is a snapshot the subscriptions have no need to reach.
        Ok((value, ts)) if kind == CallKind::Query => (CallOutcome::Ok { value, ts }, 0),
        Ok((value, ts)) => (CallOutcome::Ok { value, ts }, ts),
        Err(e) => (CallOutcome::Err(e.into()), 0),
    };
    let code = match &outcome {
        CallOutcome::Ok { .. } => "OK",
        CallOutcome::Err(e) => e.code.as_str(),
    };
    shared
        .metrics
        .record_call(label, kind_label(kind), code, started.elapsed());
    Finished {
        request_id,
        function,
        outcome,
        sync_ts,
        slot,
    }
}

fn kind_label(kind: CallKind) -> &'static str {
    match kind {
        CallKind::Query => "query",
        CallKind::Mutation => "mutation",
        CallKind::Action => "action",
    }
}

/// Runs the call; returns its value and timestamp, and the function name to label metrics
/// with (`<unknown>` when no such public function exists, so labels stay bounded).
async fn execute<'a>(
    shared: &Shared,
    auth: Option<Arc<AuthState>>,
    kind: CallKind,
    function: &'a str,
    args: Value,
    mutation_id: Option<String>,
) -> (FunctionResult<(Value, u64)>, &'a str) {
    let engine = &shared.engine;
    let function_kind = match kind {
        CallKind::Query => FunctionKind::Query,
        CallKind::Mutation => FunctionKind::Mutation,
        CallKind::Action => FunctionKind::Action,
    };
    let def = match engine.public_function(function, function_kind) {
        Ok(def) => def,
        Err(e) => return (Err(e), UNKNOWN_FUNCTION),
    };
    let identity = match &auth {
        Some(state) if state.expired(shared.verifier.config().leeway_secs) => {
            // Refused before anything runs, and marked so: the client may send it again.
            return (
                Err(token_expired(
                    "the token has expired; Authenticate with a fresh one",
                )),
                function,
            );
        }
        Some(state) => Some(state.identity.clone()),
        None => None,
    };
    let result = match kind {
        CallKind::Query => engine
            .run_query_def(&def, args, identity.as_ref())
            .map(|r| (r.value, r.ts)),
        CallKind::Mutation => {
            // With a mutationId, a retry of a run that committed replays its recorded result
            // (protocol §12). If this call is dropped with its connection, the mutation still
            // commits once its transaction has reached the committer, record included, so the
            // client's retry finds it; before that, nothing commits and the retry runs it.
            engine
                .run_mutation_with_id(def, args, identity, mutation_id)
                .await
                .map(|outcome| {
                    if outcome.replayed {
                        shared
                            .metrics
                            .mutation_replays
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    (outcome.committed.value, outcome.committed.ts)
                })
        }
        CallKind::Action => {
            // `ts` is the commit timestamp of the action's last mutation (0 if none).
            engine
                .run_action_def_with_ts(def, args, identity)
                .await
                .map(|c| (c.value, c.ts))
        }
    };
    (result.map_err(without_server_markers), function)
}
