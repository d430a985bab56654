//! One QUIC connection: the handshake (`Connect` → `Connected` on the first bidirectional
//! stream, or a fatal `Error` for a first frame that is not a `Connect` or none in time), then
//! the control stream's reader and writer and one task per call stream (each serving many
//! calls), until the client leaves, a fatal error ends it, or the server shuts down (drain,
//! then close); the connection is closed with the code of how it ended, whether or not the
//! writer could still send the last word.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use query_engine::error::{codes, FunctionError};
use query_engine::identity::Identity;
use query_engine::obj;
use query_engine::protocol::{
    ClientMessage, ServerMessage, PROTOCOL_VERSION, SUPPORTED_PROTOCOL_VERSIONS, TOKEN_EXPIRED,
};
use query_engine::subscriptions::ClientSession;
use query_engine::value::Value;
use quinn::{Connection, Incoming, SendStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::admission::Admission;
use super::budget::{ConnBudget, ServerBudget};
use super::control::{self, Fatal, Outgoing};
use super::stream::{
    close_reason, read_message, send_fatal_and_close, timed_out, write_message, FrameReader,
    CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_SHUTDOWN, CLOSE_TOO_MANY_CONNECTIONS,
};
use super::{call, report_panic, Shared};
use crate::metrics::ServerMetrics;

/// How long the writer gets to send the closing frames once the connection is ending.
const WRITER_STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest `Connect` frame (its client name is at most a few hundred bytes).
const MAX_CONNECT_FRAME_BYTES: u32 = 16 * 1024;

/// A verified identity and when its token expires (Unix seconds), so calls made after expiry
/// fail with `UNAUTHORIZED` as the protocol requires.
pub(crate) struct AuthState {
    pub identity: Identity,
    pub expires_at: Option<u64>,
    /// The token expired without a refresh and the subscriptions were re-run anonymously;
    /// calls are refused (`tokenExpired`) until the next `Authenticate`, never run anonymously
    /// for a client that believes it is signed in.
    pub lapsed: bool,
}

impl AuthState {
    pub fn expired(&self, leeway_secs: u64) -> bool {
        self.lapsed
            || self.expires_at.is_some_and(|exp| {
                jsonwebtoken::get_current_timestamp() > exp.saturating_add(leeway_secs)
            })
    }
}

/// An `UNAUTHORIZED` saying the connection's token expired, marked so in `data` (protocol §9):
/// a call refused for it ran nothing, which is what lets a client send it again, whatever its
/// kind, once it has authenticated afresh.
pub(crate) fn token_expired(message: &str) -> FunctionError {
    FunctionError::unauthorized(message).with_data(obj! { TOKEN_EXPIRED => true })
}

/// A function's own error with the server's `tokenExpired` marker taken out of its data: only
/// the server may say that a call ran nothing (a client re-sends such a call, actions
/// included) or that a subscription failed for want of a fresh token (a client subscribes it
/// again once it has one).
pub(crate) fn without_server_markers(mut error: FunctionError) -> FunctionError {
    if let Value::Object(data) = &mut error.data {
        if data.contains_key(TOKEN_EXPIRED) {
            Arc::make_mut(data).remove(TOKEN_EXPIRED);
        }
    }
    error
}

/// How the connection's subscription failures reach the client. One that fails while the
/// identity has lapsed (its token expired without a refresh, §11: the re-run that drops the
/// identity, and anything subscribed or re-run before the next `Authenticate`) failed for want
/// of a fresh token, whatever the anonymous run said: it is reported as that, marked, so that
/// the client subscribes it again once a fresh token is accepted. A function's own error
/// cannot carry the marker.
fn report_subscription_failure(error: FunctionError, lapsed: bool) -> FunctionError {
    if lapsed {
        token_expired(&format!(
            "the token expired; subscribe again after Authenticate (without it: {}: {})",
            error.code, error.message
        ))
    } else {
        without_server_markers(error)
    }
}

/// State of one connection, shared by its control stream and call tasks.
pub(crate) struct ConnCtx {
    pub conn: Connection,
    pub session: Arc<ClientSession>,
    /// The identity calls run under; replaced by every `Authenticate`.
    pub auth: ArcSwapOption<AuthState>,
    /// Query ids live from the client's point of view: added on `Subscribe`, removed when
    /// the `Removed`/`Failed` ending them is written. Bounded by the subscription limit.
    pub live_queries: Mutex<HashSet<u32>>,
    /// One permit per call in flight on the connection, over all its call streams
    /// (`maxConcurrentCalls`): held from reading the `Call` until its result is written.
    pub call_slots: Arc<Semaphore>,
    /// Bytes of inbound frames and of unwritten call results the connection may hold, over all
    /// its streams.
    pub budget: ConnBudget,
    /// The client announced in `Connect` that it reassembles a transition sent in parts
    /// (`transitionParts`): one too large for a frame is split rather than fatal.
    pub transition_parts: bool,
}

/// Counts the connection as open for as long as it lives.
struct OpenGuard(Arc<ServerMetrics>);

impl OpenGuard {
    fn new(metrics: &Arc<ServerMetrics>) -> Self {
        metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        OpenGuard(metrics.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

enum End {
    Shutdown,
    /// The control stream's reader ended: the client closed the stream, or sent something
    /// fatal.
    ControlClosed(Option<Fatal>),
    ConnectionLost,
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    budget: Arc<ServerBudget>,
    incoming: Incoming,
) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "handshake refused");
            return;
        }
    };
    let conn = match tokio::time::timeout(shared.limits.connect_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "handshake timed out");
            return;
        }
    };
    // Counted once the handshake has proven the address, so spoofed packets count for nothing.
    let Some(slot) = admission.claim(conn.remote_address()) else {
        conn.close(
            CLOSE_TOO_MANY_CONNECTIONS,
            b"too many connections from this address",
        );
        return;
    };
    let _open = OpenGuard::new(&shared.metrics);
    let session_id = format!("{:016x}", rand::random::<u64>());
    let span = tracing::info_span!("conn", session = %session_id, %remote);
    // The slot goes with the connection's byte budget: its place in the address's count is
    // given back once the budget and every byte reserved from it are.
    run(shared, conn, budget.connection(slot), session_id)
        .instrument(span)
        .await;
}

async fn run(shared: Arc<Shared>, conn: Connection, budget: ConnBudget, session_id: String) {
    let limits = &shared.limits;
    let max_frame = limits.max_frame_bytes;
    let Ok(Ok((mut send, mut recv))) =
        tokio::time::timeout(limits.connect_timeout, conn.accept_bi()).await
    else {
        conn.close(CLOSE_PROTOCOL_ERROR, b"no control stream");
        return;
    };
    let mut control_reader = FrameReader::new(budget.clone(), limits);
    // Before `Connect` nothing is known of the client: its first frame may hold a few KiB,
    // not a whole frame's budget (megabytes) for the connect timeout.
    control_reader.limit_frames_to(MAX_CONNECT_FRAME_BYTES.min(max_frame));
    let first = match tokio::time::timeout(
        limits.connect_timeout,
        read_message(&mut control_reader, &mut recv),
    )
    .await
    {
        Ok(Ok(Some(msg))) => msg,
        Ok(Ok(None)) => {
            conn.close(CLOSE_NORMAL, b"");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "bad first frame");
            if let Some(msg) = e.to_fatal_message() {
                e.count_stall(&shared.metrics);
                refuse(&shared, &conn, &mut send, &msg).await;
            }
            conn.close(CLOSE_PROTOCOL_ERROR, b"");
            return;
        }
        Err(_) => {
            tracing::debug!("no Connect in time");
            let timeout = limits.connect_timeout;
            let message = format!("no Connect within {timeout:?} of opening the control stream");
            refuse(
                &shared,
                &conn,
                &mut send,
                &timed_out(message, "connectTimeoutMs", timeout),
            )
            .await;
            return;
        }
    };
    // Whether the client reassembles transitions sent in parts (`Connect.transitionParts`).
    let mut splits_transitions = false;
    let fatal = match first {
        ClientMessage::Connect {
            protocol_version,
            client_name,
            last_seen_ts,
            transition_parts,
        } => {
            if SUPPORTED_PROTOCOL_VERSIONS.contains(&protocol_version) {
                tracing::info!(client = %client_name, last_seen_ts, transition_parts, "client connected");
                splits_transitions = transition_parts;
                None
            } else {
                Some(ServerMessage::unsupported_version(protocol_version))
            }
        }
        _ => Some(ServerMessage::Error {
            code: codes::VALIDATION_ERROR.into(),
            message: "the first frame on the control stream must be Connect".into(),
            data: Value::Null,
            fatal: true,
        }),
    };
    if let Some(msg) = fatal {
        refuse(&shared, &conn, &mut send, &msg).await;
        return;
    }
    let connected = ServerMessage::Connected {
        protocol_version: PROTOCOL_VERSION,
        server_version: shared.server_version.clone(),
        session_id: session_id.clone(),
        max_frame_bytes: max_frame,
        max_subscriptions: limits.max_subscriptions,
        max_concurrent_calls: limits.max_concurrent_calls,
    };
    if write_message(&mut send, &connected, max_frame)
        .await
        .is_err()
    {
        return;
    }

    control_reader.limit_frames_to(max_frame);
    let ctx = Arc::new(ConnCtx {
        conn: conn.clone(),
        session: Arc::new(
            shared
                .subscriptions
                .connect_reporting(None, Arc::new(report_subscription_failure))
                .await,
        ),
        auth: ArcSwapOption::empty(),
        live_queries: Mutex::new(HashSet::new()),
        call_slots: Arc::new(Semaphore::new(limits.max_concurrent_calls.max(1) as usize)),
        budget,
        transition_parts: splits_transitions,
    });
    let (out_tx, out_rx) = mpsc::channel(limits.control_queue.max(1));
    let mut writer = tokio::spawn(
        control::write_loop(ctx.clone(), shared.clone(), send, out_rx).in_current_span(),
    );
    let mut reader = Box::pin(control::read_loop(
        ctx.clone(),
        shared.clone(),
        recv,
        control_reader,
        out_tx.clone(),
    ));
    let mut calls = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    let end = loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stopping| *stopping) => break End::Shutdown,
            fatal = &mut reader => break End::ControlClosed(fatal),
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    // Finished streams are reaped here rather than in a branch of their own,
                    // which would wake this task once per stream. Stream credit bounds how
                    // many can be waiting: at most `max_concurrent_calls`.
                    while let Some(joined) = calls.try_join_next() {
                        report_panic(joined, "call stream");
                    }
                    calls.spawn(
                        call::serve(shared.clone(), ctx.clone(), send, recv).in_current_span(),
                    );
                }
                Err(e) => {
                    tracing::debug!(reason = %e, "connection closed");
                    break End::ConnectionLost;
                }
            },
        }
    };
    drop(reader);
    let last = match end {
        End::Shutdown => {
            let drained = tokio::time::timeout(shared.drain_timeout, async {
                while calls.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    calls = calls.len(),
                    "in-flight calls did not finish in time"
                );
            }
            calls.abort_all();
            Some(Fatal {
                message: ServerMessage::Error {
                    code: codes::INTERNAL.into(),
                    message: "server shutting down".into(),
                    data: Value::Null,
                    fatal: true,
                },
                close_code: CLOSE_SHUTDOWN,
            })
        }
        End::ControlClosed(fatal) => {
            calls.abort_all();
            fatal
        }
        End::ConnectionLost => {
            calls.abort_all();
            writer.abort();
            tracing::debug!("connection ended");
            return;
        }
    };
    // The writer sends what it has queued, then the last word if there is one (which closes
    // the connection), bounded in time: one blocked on a client that does not read the control
    // stream is given up. Either way the connection is closed with the code of how it ended.
    let (close_code, reason) = match &last {
        Some(fatal) => (fatal.close_code, close_reason(&fatal.message).to_vec()),
        None => (CLOSE_NORMAL, Vec::new()),
    };
    if let Some(fatal) = last {
        let _ =
            tokio::time::timeout(WRITER_STOP_TIMEOUT, out_tx.send(Outgoing::Fatal(fatal))).await;
    }
    drop(out_tx);
    if tokio::time::timeout(WRITER_STOP_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    conn.close(close_code, &reason);
    tracing::debug!("connection ended");
}

/// Ends a connection whose client broke the protocol before it was `Connected`: `msg` is sent
/// on the control stream (bounded in time) and the connection closed with code 1.
async fn refuse(shared: &Shared, conn: &Connection, send: &mut SendStream, msg: &ServerMessage) {
    shared
        .metrics
        .protocol_errors
        .fetch_add(1, Ordering::Relaxed);
    let max_frame = shared.limits.max_frame_bytes;
    send_fatal_and_close(conn, send, msg, max_frame, CLOSE_PROTOCOL_ERROR).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function cannot make its own error look like the server's refusal under an expired
    /// token (which tells a client the call ran nothing); its other data stays.
    #[test]
    fn a_functions_error_loses_the_token_expired_marker_only() {
        let own = FunctionError::unauthorized("no")
            .with_data(obj! { TOKEN_EXPIRED => true, "why" => "mine" });
        let sent = without_server_markers(own);
        assert_eq!(sent.data.get_path(TOKEN_EXPIRED), None);
        assert_eq!(sent.data.get_path("why"), Some(&Value::from("mine")));
    }

    /// A subscription's failure is marked `tokenExpired` when, and only when, the identity
    /// had lapsed: a function's own marker is taken out, whatever its code.
    #[test]
    fn only_a_failure_after_the_identity_lapsed_is_marked() {
        let forged = FunctionError::forbidden("no").with_data(obj! { TOKEN_EXPIRED => true });
        let current = report_subscription_failure(forged, false);
        assert_eq!(current.code, codes::FORBIDDEN);
        assert_eq!(current.data.get_path(TOKEN_EXPIRED), None);
        let lapsed = report_subscription_failure(FunctionError::forbidden("no"), true);
        assert_eq!(lapsed.code, codes::UNAUTHORIZED);
        assert_eq!(
            lapsed.data.get_path(TOKEN_EXPIRED),
            Some(&Value::Bool(true))
        );
    }
}
