//! One QUIC connection to the server: the handshake (`Connect`/`Connected`, then the first
//! `Authenticate`), framed reads and writes on the control stream, and one call on its own
//! bidirectional stream. Reconnecting and routing live in `client`.

use std::net::SocketAddr;
use std::time::Duration;

use parking_lot::Mutex;
use query_engine::protocol::{
    decode_server, encode, encode_frame, read_frame, write_frame, CallOutcome, ClientMessage,
    FrameError, ServerMessage, PROTOCOL_VERSION,
};
use quinn::{RecvStream, SendStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::ClientError;

/// Frames the handshake reads while waiting for the answer to `Authenticate`.
const MAX_FRAMES_BEFORE_AUTH_ANSWER: usize = 64;

/// What the server announced in `Connected`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub protocol_version: u32,
    pub server_version: String,
    /// Identifies this connection in the server's logs.
    pub session_id: String,
    pub max_frame_bytes: u32,
    pub max_subscriptions: u32,
    pub max_concurrent_calls: u32,
}

/// A connection after the handshake, before it is handed to the client's supervisor.
pub(crate) struct Established {
    pub conn: quinn::Connection,
    pub send: SendStream,
    pub recv: RecvStream,
    pub info: ServerInfo,
    /// The frame limit both ways: the server's, capped by the client's own.
    pub max_frame_bytes: u32,
    /// The outcome of the handshake's `Authenticate` (the subject), if a token was sent.
    pub auth: Option<Result<Option<String>, ClientError>>,
    /// `endTs` of the last (empty) transition received during the handshake, 0 if none.
    pub transition_ts: u64,
}

/// Everything the handshake needs.
pub(crate) struct HandshakeParams<'a> {
    pub endpoint: &'a quinn::Endpoint,
    pub config: &'a quinn::ClientConfig,
    pub addr: SocketAddr,
    pub server_name: &'a str,
    pub client_name: &'a str,
    pub last_seen_ts: Option<u64>,
    pub token: Option<String>,
    pub max_frame_bytes: u32,
    pub timeout: Duration,
}

/// Connects, opens the control stream and completes `Connect` and the first `Authenticate`,
/// all within `params.timeout`.
pub(crate) async fn handshake(params: HandshakeParams<'_>) -> Result<Established, ClientError> {
    let timeout = params.timeout;
    match tokio::time::timeout(timeout, handshake_inner(params)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Connect(format!(
            "no answer from the server within {} ms",
            timeout.as_millis()
        ))),
    }
}

async fn handshake_inner(p: HandshakeParams<'_>) -> Result<Established, ClientError> {
    let connecting = p
        .endpoint
        .connect_with(p.config.clone(), p.addr, p.server_name)
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    let conn = connecting
        .await
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    let connect = ClientMessage::Connect {
        protocol_version: PROTOCOL_VERSION,
        client_name: p.client_name.to_string(),
        last_seen_ts: p.last_seen_ts,
    };
    write_message(&mut send, &connect, p.max_frame_bytes).await?;
    let info = match read_message(&mut recv, p.max_frame_bytes).await? {
        Some(ServerMessage::Connected {
            protocol_version,
            server_version,
            session_id,
            max_frame_bytes,
            max_subscriptions,
            max_concurrent_calls,
        }) => ServerInfo {
            protocol_version,
            server_version,
            session_id,
            max_frame_bytes,
            max_subscriptions,
            max_concurrent_calls,
        },
        Some(ServerMessage::Error {
            code,
            message,
            data,
            fatal,
        }) => return Err(ClientError::server(code, message, data, fatal)),
        Some(other) => {
            return Err(ClientError::Protocol(format!(
                "expected Connected, got {}",
                message_kind(&other)
            )))
        }
        None => {
            return Err(ClientError::Connect(
                "the server closed the control stream during the handshake".into(),
            ))
        }
    };
    if info.protocol_version != PROTOCOL_VERSION {
        return Err(ClientError::Protocol(format!(
            "server answered with protocol version {}",
            info.protocol_version
        )));
    }
    let max_frame_bytes = info.max_frame_bytes.min(p.max_frame_bytes);
    let mut transition_ts = 0;
    let auth = match p.token {
        None => None,
        Some(token) => {
            let msg = ClientMessage::Authenticate { token: Some(token) };
            write_message(&mut send, &msg, max_frame_bytes).await?;
            Some(read_auth_answer(&mut recv, max_frame_bytes, &mut transition_ts).await?)
        }
    };
    Ok(Established {
        conn,
        send,
        recv,
        info,
        max_frame_bytes,
        auth,
        transition_ts,
    })
}

/// Reads the answer to the handshake's `Authenticate`: `AuthOk`, or a non-fatal `Error` for a
/// rejected token (a fatal one ends the handshake). Transitions may come first; with no
/// subscriptions yet they carry no modifications, only the timestamps, which `ts` follows.
async fn read_auth_answer(
    recv: &mut RecvStream,
    max_frame_bytes: u32,
    ts: &mut u64,
) -> Result<Result<Option<String>, ClientError>, ClientError> {
    // Bounded: a server cannot stall the handshake forever (the caller also has a timeout).
    for _ in 0..MAX_FRAMES_BEFORE_AUTH_ANSWER {
        match read_message(recv, max_frame_bytes).await? {
            Some(ServerMessage::AuthOk { subject }) => return Ok(Ok(subject)),
            Some(ServerMessage::Error {
                code,
                message,
                data,
                fatal,
            }) => {
                let error = ClientError::server(code, message, data, fatal);
                return if fatal { Err(error) } else { Ok(Err(error)) };
            }
            Some(ServerMessage::Transition {
                start_ts,
                end_ts,
                modifications,
            }) if start_ts == *ts && end_ts >= start_ts && modifications.is_empty() => {
                *ts = end_ts;
            }
            Some(ServerMessage::Pong { .. }) => {}
            Some(other) => {
                return Err(ClientError::Protocol(format!(
                    "expected AuthOk, got {}",
                    message_kind(&other)
                )))
            }
            None => {
                return Err(ClientError::Connect(
                    "the server closed the control stream during the handshake".into(),
                ))
            }
        }
    }
    Err(ClientError::Protocol(
        "no answer to Authenticate among the first frames".into(),
    ))
}

/// Encodes `msg` and writes it as one frame, refusing (without writing) one over the limit.
pub(crate) async fn write_message(
    send: &mut SendStream,
    msg: &ClientMessage,
    max_frame_bytes: u32,
) -> Result<(), ClientError> {
    let payload = encode_checked(msg, max_frame_bytes)?;
    write_frame(send, &payload).await.map_err(transport_error)
}

/// Encodes `msg`, failing if the frame would exceed `max_frame_bytes` (the server would close
/// the connection on it).
pub(crate) fn encode_checked(
    msg: &ClientMessage,
    max_frame_bytes: u32,
) -> Result<Vec<u8>, ClientError> {
    let payload = encode(msg).map_err(|e| ClientError::Encode(e.to_string()))?;
    if payload.len() > max_frame_bytes as usize {
        return Err(ClientError::Encode(format!(
            "message of {} bytes exceeds the {max_frame_bytes}-byte frame limit",
            payload.len()
        )));
    }
    Ok(payload)
}

/// Reads one message; `Ok(None)` when the stream ended cleanly between frames.
pub(crate) async fn read_message(
    recv: &mut RecvStream,
    max_frame_bytes: u32,
) -> Result<Option<ServerMessage>, ClientError> {
    let Some(frame) = read_frame(recv, max_frame_bytes)
        .await
        .map_err(transport_error)?
    else {
        return Ok(None);
    };
    decode_server(&frame)
        .map(Some)
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

fn transport_error(e: FrameError) -> ClientError {
    match e {
        FrameError::TooLarge { .. } => ClientError::Protocol(e.to_string()),
        FrameError::UnexpectedEof | FrameError::Io(_) => ClientError::Disconnected,
    }
}

pub(crate) fn message_kind(msg: &ServerMessage) -> &'static str {
    match msg {
        ServerMessage::Connected { .. } => "Connected",
        ServerMessage::AuthOk { .. } => "AuthOk",
        ServerMessage::CallResult { .. } => "CallResult",
        ServerMessage::Transition { .. } => "Transition",
        ServerMessage::Error { .. } => "Error",
        ServerMessage::Pong { .. } => "Pong",
    }
}

/// How one call attempt failed.
#[derive(Debug)]
pub(crate) enum CallFailure {
    /// The stream or connection broke. `sent` is false only when nothing of the call was
    /// written, so the server cannot have run it.
    Lost { sent: bool },
    /// Anything else: retrying would fail the same way.
    Fatal(ClientError),
}

/// Makes one call on a new stream: one `Call` frame, FIN, then one `CallResult`.
pub(crate) async fn call_once(
    conn: &quinn::Connection,
    max_frame_bytes: u32,
    call: &ClientMessage,
    request_id: u64,
) -> Result<CallOutcome, CallFailure> {
    let payload = encode_checked(call, max_frame_bytes).map_err(CallFailure::Fatal)?;
    // Prefix and payload in one buffer: one write into the stream (one lock of the
    // connection state) instead of two writes and a flush.
    let frame = encode_frame(&payload).map_err(|e| CallFailure::Fatal(transport_error(e)))?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|_| CallFailure::Lost { sent: false })?;
    send.write_all(&frame)
        .await
        .map_err(|_| CallFailure::Lost { sent: true })?;
    send.finish()
        .map_err(|_| CallFailure::Lost { sent: true })?;
    let frame = match read_frame(&mut recv, max_frame_bytes).await {
        Ok(Some(frame)) => frame,
        // The server ended the stream without an answer (e.g. it is shutting down).
        Ok(None) | Err(FrameError::UnexpectedEof) | Err(FrameError::Io(_)) => {
            return Err(CallFailure::Lost { sent: true })
        }
        Err(e @ FrameError::TooLarge { .. }) => {
            return Err(CallFailure::Fatal(ClientError::Protocol(e.to_string())))
        }
    };
    // The server's FIN normally arrives with the result: take it, so that dropping `recv`
    // does not send STOP_SENDING (a frame per call). Never waits.
    let mut byte = [0u8; 1];
    let _ = futures::FutureExt::now_or_never(recv.read(&mut byte));
    let msg = decode_server(&frame)
        .map_err(|e| CallFailure::Fatal(ClientError::Protocol(e.to_string())))?;
    match msg {
        ServerMessage::CallResult {
            request_id: got,
            result,
        } if got == request_id => Ok(result),
        ServerMessage::Error {
            code,
            message,
            data,
            fatal,
        } => Err(CallFailure::Fatal(ClientError::server(
            code, message, data, fatal,
        ))),
        other => Err(CallFailure::Fatal(ClientError::Protocol(format!(
            "unexpected {} on a call stream",
            message_kind(&other)
        )))),
    }
}

/// A live connection as the client uses it.
pub(crate) struct Session {
    /// Increases with every new connection of a client.
    pub gen: u64,
    pub conn: quinn::Connection,
    pub info: ServerInfo,
    pub max_frame_bytes: u32,
    /// Wakes the control-stream writer when the client's outbox has messages.
    pub outbox_ready: Notify,
    pub writer: Mutex<Option<JoinHandle<()>>>,
}

impl Session {
    pub(crate) fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }
}
