//! One call stream: exactly one `Call` in, exactly one `CallResult` out. The call runs under
//! the connection's identity at the time the stream was accepted; only public functions of
//! the stated kind are callable; mutations with a `mutationId` are deduplicated.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use query_engine::error::{codes, FunctionError, FunctionResult};
use query_engine::functions::FunctionKind;
use query_engine::protocol::{encode, CallKind, CallOutcome, ClientMessage, ServerMessage};
use query_engine::value::Value;
use quinn::{RecvStream, SendStream};

use super::connection::{AuthState, ConnCtx};
use super::stream::{
    consume_fin, read_message, send_fatal_and_close, write_payload, CLOSE_PROTOCOL_ERROR,
};
use super::Shared;
use crate::metrics::UNKNOWN_FUNCTION;

pub(crate) async fn serve(
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    auth: Option<Arc<AuthState>>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let started = Instant::now();
    let max_frame = shared.limits.max_frame_bytes;
    let msg = match read_message(&mut recv, max_frame).await {
        Ok(Some(msg)) => msg,
        Ok(None) => {
            // Opened and finished without a Call: nothing to answer.
            let _ = send.finish();
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "call stream read failed");
            if let Some(msg) = e.to_fatal_message() {
                shared
                    .metrics
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                send_fatal_and_close(&ctx.conn, &mut send, &msg, max_frame, CLOSE_PROTOCOL_ERROR)
                    .await;
            }
            return;
        }
    };
    // Anything after the Call is a client bug; dropping `recv` tells the client to stop. Its
    // FIN normally came with the Call: taken first, the drop sends nothing.
    consume_fin(&mut recv);
    drop(recv);
    let ClientMessage::Call {
        request_id,
        kind,
        function,
        args,
        mutation_id,
    } = msg
    else {
        shared
            .metrics
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        let msg = ServerMessage::Error {
            code: codes::VALIDATION_ERROR.into(),
            message: "only a Call may be sent on a call stream".into(),
            data: Value::Null,
            fatal: true,
        };
        send_fatal_and_close(&ctx.conn, &mut send, &msg, max_frame, CLOSE_PROTOCOL_ERROR).await;
        return;
    };
    let (result, label) = execute(&shared, &ctx, auth, kind, &function, args, mutation_id).await;
    let mut outcome = match result {
        Ok((value, ts)) => CallOutcome::Ok { value, ts },
        Err(e) => CallOutcome::Err(e.into()),
    };
    let mut payload = encode_result(request_id, &outcome);
    if payload.len() > max_frame as usize {
        tracing::warn!(function = %function, bytes = payload.len(), "call result exceeds the frame limit");
        outcome = CallOutcome::Err(
            FunctionError::internal(format!(
                "the result of {} bytes exceeds the frame limit of {max_frame} bytes",
                payload.len()
            ))
            .into(),
        );
        payload = encode_result(request_id, &outcome);
    }
    let code = match &outcome {
        CallOutcome::Ok { .. } => "OK",
        CallOutcome::Err(e) => e.code.as_str(),
    };
    shared
        .metrics
        .record_call(label, kind_label(kind), code, started.elapsed());
    match write_payload(&mut send, &payload, max_frame).await {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => tracing::debug!(error = %e, "could not write the call result"),
    }
}

fn encode_result(request_id: u64, outcome: &CallOutcome) -> Vec<u8> {
    let msg = ServerMessage::CallResult {
        request_id,
        result: outcome.clone(),
    };
    encode(&msg).unwrap_or_else(|e| {
        // Values always encode; this is a bug, reported to the client as INTERNAL.
        tracing::error!(error = %e, "cannot encode a call result");
        let fallback = ServerMessage::CallResult {
            request_id,
            result: CallOutcome::Err(FunctionError::internal("cannot encode the result").into()),
        };
        encode(&fallback).unwrap_or_default()
    })
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
    ctx: &ConnCtx,
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
            return (
                Err(FunctionError::unauthorized(
                    "the token has expired; Authenticate with a fresh one",
                )),
                function,
            )
        }
        Some(state) => Some(state.identity.clone()),
        None => None,
    };
    let result = match kind {
        CallKind::Query => engine
            .run_query_def(&def, args, identity.as_ref())
            .map(|r| (r.value, r.ts)),
        CallKind::Mutation => {
            let dedup_key = mutation_id.map(|id| {
                let who = identity
                    .as_ref()
                    .map(|i| i.token_identifier())
                    .unwrap_or_default();
                (who, id)
            });
            let run = {
                let engine = engine.clone();
                async move { engine.run_mutation_def(def, args, identity).await }
            };
            let committed = match dedup_key {
                Some(key) => {
                    let outcome = shared.dedup.run(key, run).await;
                    if outcome.replayed {
                        shared
                            .metrics
                            .mutation_replays
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    outcome.result
                }
                None => run.await,
            };
            if let Ok(c) = &committed {
                ctx.session.sync_to(c.ts).await;
            }
            committed.map(|c| (c.value, c.ts))
        }
        CallKind::Action => {
            // `ts` is the commit timestamp of the action's last mutation (0 if none).
            let result = engine
                .run_action_def_with_ts(def, args, identity)
                .await
                .map(|c| (c.value, c.ts));
            if let Ok((_, ts)) = &result {
                if *ts > 0 {
                    ctx.session.sync_to(*ts).await;
                }
            }
            result
        }
    };
    (result, function)
}
