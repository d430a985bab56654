//! The control stream: one task reads client messages (`Authenticate`, `Subscribe`,
//! `Unsubscribe`, `Ping`) and acts on them, until the client closes the stream or sends
//! something fatal, which it hands to the connection task (`Fatal`) to send and close the
//! connection with; another owns the send side and writes replies and
//! transitions (one too large for a frame in parts, to a client that takes them; an update too
//! large for any frame as the failure of its subscription alone), pulling a
//! transition only when the stream has taken the previous one — that is the backpressure that
//! lets the subscription manager merge updates for a slow client.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use query_engine::error::{codes, FunctionError};
use query_engine::obj;
use query_engine::protocol::{ClientMessage, ErrorPayload, Modification, ServerMessage};
use query_engine::subscriptions::{ClientSession, QueryUpdate, Transition};
use query_engine::value::Value;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;

use super::connection::{token_expired, AuthState, ConnCtx};
use super::stream::{
    read_message, send_fatal_and_close, write_message, write_payload, FrameReader, WriteError,
    CLOSE_INTERNAL, CLOSE_PROTOCOL_ERROR,
};
use super::Shared;

/// What the reader (or the connection task) asks the writer to send.
pub(crate) enum Outgoing {
    /// `AuthOk`, `Pong` or a non-fatal `Error`.
    Message(ServerMessage),
    /// A `Subscribe` rejected up front (limit, unknown function, bad arguments): reported as
    /// `Failed` in a transition that moves no time (§5.3), written by the writer because only
    /// it knows where the client's timestamps stand.
    SubscribeFailed { query_id: u32, error: FunctionError },
    /// Written, then the connection is closed.
    Fatal(Fatal),
}

/// The last message on a connection, and the code to close it with.
pub(crate) struct Fatal {
    pub message: ServerMessage,
    pub close_code: VarInt,
}

fn error_message(
    code: &str,
    message: impl Into<String>,
    data: Value,
    fatal: bool,
) -> ServerMessage {
    ServerMessage::Error {
        code: code.into(),
        message: message.into(),
        data,
        fatal,
    }
}

/// Reads control messages until the client closes the stream (`None`) or sends something
/// fatal: the error to end the connection with, counted as a protocol error. The connection
/// task sends it, so that the connection is closed with its code even when the writer cannot
/// send it (a client that does not read the control stream).
pub(crate) async fn read_loop(
    ctx: Arc<ConnCtx>,
    shared: Arc<Shared>,
    recv: RecvStream,
    reader: FrameReader,
    out: mpsc::Sender<Outgoing>,
) -> Option<Fatal> {
    let fatal = read_messages(&ctx, &shared, recv, reader, &out).await?;
    shared
        .metrics
        .protocol_errors
        .fetch_add(1, Ordering::Relaxed);
    Some(fatal)
}

async fn read_messages(
    ctx: &ConnCtx,
    shared: &Shared,
    mut recv: RecvStream,
    mut reader: FrameReader,
    out: &mpsc::Sender<Outgoing>,
) -> Option<Fatal> {
    let leeway = shared.verifier.config().leeway_secs;
    loop {
        // The read stays pinned while the expiry timer fires, so no frame is cut in half.
        let read = read_message(&mut reader, &mut recv);
        tokio::pin!(read);
        let read = loop {
            tokio::select! {
                r = &mut read => break r,
                () = until(expiry_deadline(ctx, leeway)) => {
                    if let Some(reply) = expire_identity(ctx, leeway).await {
                        if out.send(reply).await.is_err() {
                            return None;
                        }
                    }
                }
            }
        };
        let msg = match read {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                tracing::debug!("client closed the control stream");
                return None;
            }
            Err(e) => {
                tracing::debug!(error = %e, "control stream read failed");
                let message = e.to_fatal_message()?;
                e.count_stall(&shared.metrics);
                return Some(Fatal {
                    message,
                    close_code: CLOSE_PROTOCOL_ERROR,
                });
            }
        };
        let reply = match msg {
            ClientMessage::Authenticate { token } => Some(authenticate(ctx, shared, token).await),
            ClientMessage::Subscribe {
                query_id,
                function,
                args,
            } => subscribe(ctx, query_id, &function, args).await,
            ClientMessage::Unsubscribe { query_id } => {
                ctx.session.unsubscribe(query_id).await;
                None
            }
            ClientMessage::Ping { nonce } => Some(Outgoing::Message(ServerMessage::Pong { nonce })),
            ClientMessage::Connect { .. } => {
                return Some(fatal_validation("Connect was already received"))
            }
            ClientMessage::Call { .. } => {
                return Some(fatal_validation(
                    "Call must be sent on a stream of its own, not on the control stream",
                ))
            }
        };
        let Some(reply) = reply else { continue };
        // A full queue makes the reader wait, which stops it reading: QUIC flow control then
        // slows the client down.
        if out.send(reply).await.is_err() {
            return None;
        }
    }
}

/// When the connection's token stops being valid (its `exp` plus the verifier's leeway), as
/// a point on tokio's clock; `None` when there is no token or it never expires (no `exp`, or
/// one past what the clock can represent).
fn expiry_deadline(ctx: &ConnCtx, leeway_secs: u64) -> Option<tokio::time::Instant> {
    let exp = ctx
        .auth
        .load()
        .as_ref()
        .filter(|state| !state.lapsed)?
        .expires_at?;
    let now = jsonwebtoken::get_current_timestamp();
    // `expired` is true strictly after exp + leeway: one second past it.
    let left = exp
        .saturating_add(leeway_secs)
        .saturating_add(1)
        .saturating_sub(now);
    // An `exp` too far ahead for the clock to represent never comes.
    tokio::time::Instant::now().checked_add(std::time::Duration::from_secs(left))
}

async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// An identity whose token expired without a refresh is dropped from the subscriptions, which
/// re-run anonymously (§11), so a query that needs the identity fails (marked `tokenExpired`)
/// instead of streaming on. Calls go on failing with `UNAUTHORIZED` `tokenExpired` (nothing run) until the
/// client authenticates again: run anonymously instead, a call meant for the user could do
/// something else, and the client could not tell that it is safe to send it again.
async fn expire_identity(ctx: &ConnCtx, leeway_secs: u64) -> Option<Outgoing> {
    let auth = ctx.auth.load_full();
    let state = auth
        .as_ref()
        .filter(|state| !state.lapsed && state.expired(leeway_secs))?;
    tracing::info!("token expired without a refresh; connection is now anonymous");
    ctx.auth.store(Some(Arc::new(AuthState {
        identity: state.identity.clone(),
        expires_at: state.expires_at,
        lapsed: true,
    })));
    // Failures from here to the next `Authenticate` are marked, so the client subscribes them
    // again once it has a fresh token.
    ctx.session.lapse_identity().await;
    let notice = token_expired(
        "the token expired; subscriptions run anonymously and calls are refused until Authenticate",
    );
    Some(Outgoing::Message(error_message(
        &notice.code,
        notice.message,
        notice.data,
        false,
    )))
}

fn fatal_validation(message: &str) -> Fatal {
    Fatal {
        message: error_message(codes::VALIDATION_ERROR, message, Value::Null, true),
        close_code: CLOSE_PROTOCOL_ERROR,
    }
}

async fn authenticate(ctx: &ConnCtx, shared: &Shared, token: Option<String>) -> Outgoing {
    let verified = match token {
        None => Ok(None),
        Some(token) => shared
            .verifier
            .verify(&token)
            .await
            .map(|identity| Some((identity, token_expiry(&token)))),
    };
    match verified {
        Ok(state) => {
            shared.metrics.auth_ok.fetch_add(1, Ordering::Relaxed);
            let subject = state.as_ref().map(|(identity, _)| identity.subject.clone());
            let identity = state.as_ref().map(|(identity, _)| identity.clone());
            ctx.auth.store(state.map(|(identity, expires_at)| {
                Arc::new(AuthState {
                    identity,
                    expires_at,
                    lapsed: false,
                })
            }));
            ctx.session.set_identity(identity).await;
            tracing::debug!(subject = ?subject, "authenticated");
            Outgoing::Message(ServerMessage::AuthOk { subject })
        }
        Err(e) => {
            shared.metrics.auth_failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(error = %e, "token rejected; connection is now anonymous");
            // The previous identity is dropped, never kept by accident (§5.2).
            ctx.auth.store(None);
            ctx.session.set_identity(None).await;
            Outgoing::Message(error_message(
                e.wire_code(),
                "the token was rejected; the connection is anonymous",
                Value::Null,
                false,
            ))
        }
    }
}

/// The `exp` claim of a token that has already been verified.
fn token_expiry(token: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Exp {
        exp: Option<u64>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Exp>(&bytes).ok()?.exp
}

async fn subscribe(ctx: &ConnCtx, query_id: u32, function: &str, args: Value) -> Option<Outgoing> {
    if !ctx.live_queries.lock().insert(query_id) {
        return Some(Outgoing::Message(error_message(
            codes::VALIDATION_ERROR,
            format!("query id {query_id} is already live on this connection"),
            obj! { "queryId" => i64::from(query_id) },
            false,
        )));
    }
    match ctx.session.subscribe(query_id, function, args).await {
        Ok(()) => None,
        Err(error) => {
            ctx.live_queries.lock().remove(&query_id);
            Some(Outgoing::SubscribeFailed { query_id, error })
        }
    }
}

async fn next_transition(session: Arc<ClientSession>) -> Option<Transition> {
    session.next_transition().await
}

/// Ends, on its own, every subscription whose update cannot go in a frame even alone: a
/// result may be up to the engine's `max_result_bytes` (8 MiB) while `max_frame_bytes` may be
/// as low as 64 KiB. The update is replaced by a `Failed` (`INTERNAL`, naming the size and the
/// limit, as a call's result over the limit is answered) and the session drops the
/// subscription, so it is not re-run and nothing more is sent for it; the rest of the
/// transition goes on as usual. Closing the connection instead would end every other query
/// and call on it, and the client, subscribing again on reconnecting, would be closed again.
async fn fail_oversized(ctx: &ConnCtx, shared: &Shared, transition: &mut Transition) -> bool {
    let max_frame = shared.limits.max_frame_bytes;
    let failed = transition.fail_oversized(max_frame as usize, |e| {
        FunctionError::internal(format!(
            "an update of {} bytes exceeds the frame limit of {} bytes",
            e.len, e.max
        ))
    });
    let any = !failed.is_empty();
    for e in failed {
        tracing::warn!(
            query_id = e.query_id,
            bytes = e.len,
            max_frame,
            "a subscription's update exceeds the frame limit; ending that subscription"
        );
        shared
            .metrics
            .oversized_updates
            .fetch_add(1, Ordering::Relaxed);
        // Before the `Failed` is written: a subscription the client makes again under this
        // id then reaches the session after the end.
        ctx.session.end(e.query_id).await;
    }
    any
}

/// Writes one transition, encoded as `payload`: in one frame, or, when it is too large for one and the client
/// reassembles parts (`ConnCtx::transition_parts`), in parts that each fit (protocol §8).
/// The parts are written one after the other before the writer takes anything else, so
/// nothing comes between them on the control stream. An update too large for a frame even
/// alone was replaced by its failure first (`fail_oversized`); a transition still too large
/// for a frame, for a client that does not take parts, fails with `WriteError::TooLarge`.
async fn write_transition(
    ctx: &ConnCtx,
    shared: &Shared,
    send: &mut SendStream,
    transition: &Transition,
    payload: Vec<u8>,
) -> Result<(), WriteError> {
    let max_frame = shared.limits.max_frame_bytes;
    let mut bytes = payload.len();
    if payload.len() <= max_frame as usize || !ctx.transition_parts {
        write_payload(send, &payload, max_frame).await?;
    } else {
        // Cannot fail after `fail_oversized`; mapped all the same rather than trusted.
        let parts = transition
            .encode_in_parts(max_frame as usize)
            .map_err(|e| WriteError::TooLarge {
                len: e.len,
                max: max_frame,
            })?;
        tracing::debug!(
            bytes,
            parts = parts.len(),
            "a transition too large for one frame is sent in parts"
        );
        shared
            .metrics
            .split_transitions
            .fetch_add(1, Ordering::Relaxed);
        bytes = 0;
        for part in &parts {
            write_payload(send, part, max_frame).await?;
            bytes += part.len();
        }
    }
    shared
        .metrics
        .transitions_sent
        .fetch_add(1, Ordering::Relaxed);
    shared
        .metrics
        .transition_bytes_sent
        .fetch_add(bytes as u64, Ordering::Relaxed);
    Ok(())
}

/// Owns the control stream's send side until the session ends.
pub(crate) async fn write_loop(
    ctx: Arc<ConnCtx>,
    shared: Arc<Shared>,
    mut send: SendStream,
    mut out: mpsc::Receiver<Outgoing>,
) {
    let max_frame = shared.limits.max_frame_bytes;
    // The end of the last transition written: where a time-neutral `Failed` must sit.
    let mut client_ts = 0u64;
    // Kept across loop turns so that a reply winning the race never drops a transition.
    let mut next = Box::pin(next_transition(ctx.session.clone()));
    loop {
        let written = tokio::select! {
            biased;
            item = out.recv() => match item {
                None => break,
                Some(Outgoing::Message(msg)) => write_message(&mut send, &msg, max_frame).await,
                Some(Outgoing::SubscribeFailed { query_id, error }) => {
                    let msg = ServerMessage::Transition {
                        start_ts: client_ts,
                        end_ts: client_ts,
                        modifications: vec![Modification::Failed {
                            query_id,
                            error: ErrorPayload::from(error),
                        }],
                        continued: false,
                    };
                    write_message(&mut send, &msg, max_frame).await
                }
                Some(Outgoing::Fatal(Fatal { message, close_code })) => {
                    send_fatal_and_close(&ctx.conn, &mut send, &message, max_frame, close_code).await;
                    return;
                }
            },
            transition = &mut next => {
                let Some(transition) = transition else { break };
                next = Box::pin(next_transition(ctx.session.clone()));
                let mut transition = transition;
                let mut payload = transition.encode();
                // Only a transition over the limit can hold an update too large for a frame
                // alone: the check stays off the path of every other transition.
                if payload.len() > max_frame as usize
                    && fail_oversized(&ctx, &shared, &mut transition).await
                {
                    payload = transition.encode();
                }
                {
                    let mut live = ctx.live_queries.lock();
                    for update in &transition.updates {
                        if let QueryUpdate::Failed { query_id, .. } | QueryUpdate::Removed { query_id } = update {
                            live.remove(query_id);
                        }
                    }
                }
                let result = write_transition(&ctx, &shared, &mut send, &transition, payload).await;
                if result.is_ok() {
                    client_ts = transition.end_ts;
                }
                result
            }
        };
        match written {
            Ok(()) => {}
            Err(WriteError::TooLarge { len, max }) => {
                tracing::error!(
                    len,
                    max,
                    "a transition exceeds the frame limit of a client that does not take parts; closing the connection"
                );
                let msg = error_message(
                    codes::INTERNAL,
                    format!("a transition of {len} bytes exceeds the frame limit of {max} bytes"),
                    Value::Null,
                    true,
                );
                send_fatal_and_close(&ctx.conn, &mut send, &msg, max_frame, CLOSE_INTERNAL).await;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "control stream write failed");
                return;
            }
        }
    }
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_read_from_the_payload() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"u","exp":1234}"#);
        assert_eq!(token_expiry(&format!("h.{payload}.s")), Some(1234));
        assert_eq!(token_expiry("garbage"), None);
    }
}
