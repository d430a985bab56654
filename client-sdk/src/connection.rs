//! One QUIC connection to the server: the handshake (`Connect`/`Connected`, then the first
//! `Authenticate`), framed reads and writes on the control stream, and calls multiplexed over a
//! few long-lived call streams ("lanes"). Reconnecting and routing live in `client`.

use std::net::SocketAddr;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use query_engine::protocol::{
    close_code, decode_call_result, decode_transition, encode, encode_frame_into, read_frame,
    take_frame, validate_client, write_frame, CallOutcome, ClientMessage, FrameError,
    ServerMessage, PROTOCOL_VERSION,
};
use query_engine::value::Value;
use quinn::{RecvStream, SendStream};
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
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
    /// The subject the handshake's `Authenticate` signed in as (`None`: no token was sent).
    pub subject: Option<String>,
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
/// all within `params.timeout`. A token the server rejects fails the handshake with the
/// server's `UNAUTHORIZED`: a client that holds a token never goes on anonymous.
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
        // Reassembled in `Inner::read_control` (`transition_parts`).
        transition_parts: true,
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
    let subject = match p.token {
        None => None,
        Some(token) => {
            let msg = ClientMessage::Authenticate { token: Some(token) };
            write_message(&mut send, &msg, max_frame_bytes).await?;
            match read_auth_answer(&mut recv, max_frame_bytes, &mut transition_ts).await {
                Ok(subject) => subject,
                Err(e) => {
                    conn.close(0u8.into(), b"authentication failed");
                    return Err(e);
                }
            }
        }
    };
    Ok(Established {
        conn,
        send,
        recv,
        info,
        max_frame_bytes,
        subject,
        transition_ts,
    })
}

/// Reads the answer to the handshake's `Authenticate`: `AuthOk`'s subject, or the server's
/// `Error` (a rejected token, or a fatal error). Transitions may come first; with no
/// subscriptions yet they carry no modifications, only the timestamps, which `ts` follows.
async fn read_auth_answer(
    recv: &mut RecvStream,
    max_frame_bytes: u32,
    ts: &mut u64,
) -> Result<Option<String>, ClientError> {
    // Bounded: a server cannot stall the handshake forever (the caller also has a timeout).
    for _ in 0..MAX_FRAMES_BEFORE_AUTH_ANSWER {
        match read_message(recv, max_frame_bytes).await? {
            Some(ServerMessage::AuthOk { subject }) => return Ok(subject),
            Some(ServerMessage::Error {
                code,
                message,
                data,
                fatal,
            }) => return Err(ClientError::server(code, message, data, fatal)),
            // With no subscriptions yet, never one sent in parts.
            Some(ServerMessage::Transition {
                start_ts,
                end_ts,
                modifications,
                continued: false,
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

/// Refuses a message over a limit of protocol §10 that the server would answer with a fatal
/// `Error`, closing the connection (a function name, mutation id or token too long, arguments
/// nested too deep): `VALIDATION_ERROR` with the field in `data.path`, raised before the
/// message is queued, so that one bad request fails alone.
pub(crate) fn check_limits(msg: &ClientMessage) -> Result<(), ClientError> {
    validate_client(msg).map_err(|e| ClientError::Function {
        code: e.code().into(),
        message: e.to_string(),
        data: e.field().map_or(Value::Null, |field| {
            query_engine::obj! { "path" => field }
        }),
    })
}

/// Checks `msg`'s limits and encodes it, failing if the frame would exceed `max_frame_bytes`
/// (the server would close the connection on either).
pub(crate) fn encode_checked(
    msg: &ClientMessage,
    max_frame_bytes: u32,
) -> Result<Vec<u8>, ClientError> {
    check_limits(msg)?;
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
    Ok(read_sized_message(recv, max_frame_bytes)
        .await?
        .map(|(msg, _)| msg))
}

/// As `read_message`, with the length of the frame's payload.
pub(crate) async fn read_sized_message(
    recv: &mut RecvStream,
    max_frame_bytes: u32,
) -> Result<Option<(ServerMessage, usize)>, ClientError> {
    let Some(frame) = read_frame(recv, max_frame_bytes)
        .await
        .map_err(transport_error)?
    else {
        return Ok(None);
    };
    decode_transition(&frame)
        .map(|msg| Some((msg, frame.len())))
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

/// Call streams ("lanes") a connection multiplexes its calls over: more than one lets the
/// server run one connection's calls on more than one core, fewer coalesce better.
const CALL_LANES: usize = 2;
/// Most bytes taken off a call stream per read.
const MAX_READ_CHUNK_BYTES: usize = 64 * 1024;

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
    /// One permit per call in flight on the connection (the server's `maxConcurrentCalls`),
    /// held until its result arrives or its lane ends.
    call_slots: Arc<Semaphore>,
    lanes: [LaneSlot; CALL_LANES],
    /// The server is shutting down: it finished (FIN) or stopped (STOP_SENDING) a call
    /// stream, and takes no new one, though the connection stays up until its calls are
    /// answered. Calls wait for the next connection instead.
    draining: Arc<AtomicBool>,
}

/// Where a lane lives: the current one, replaced when it ends while the connection stays up.
#[derive(Default)]
struct LaneSlot {
    current: Mutex<Option<Arc<CallLane>>>,
    /// Serialises opening a replacement.
    opening: tokio::sync::Mutex<()>,
}

impl Session {
    pub(crate) fn new(
        gen: u64,
        conn: quinn::Connection,
        info: ServerInfo,
        max_frame_bytes: u32,
    ) -> Session {
        let slots = info.max_concurrent_calls.max(1) as usize;
        Session {
            gen,
            conn,
            info,
            max_frame_bytes,
            outbox_ready: Notify::new(),
            writer: Mutex::new(None),
            call_slots: Arc::new(Semaphore::new(slots)),
            lanes: Default::default(),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether calls can go on this connection: it is neither closed nor draining.
    pub(crate) fn is_live(&self) -> bool {
        self.conn.close_reason().is_none() && !self.draining.load(Ordering::Acquire)
    }

    /// Makes one call on one of the connection's call streams and waits for its result.
    pub(crate) async fn call(
        &self,
        call: &ClientMessage,
        request_id: u64,
    ) -> Result<CallOutcome, CallFailure> {
        let slot = self
            .call_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CallFailure::Lost { sent: false })?;
        let lane = self.lane(request_id as usize % CALL_LANES).await?;
        let answer = lane.enqueue(call, request_id, slot)?;
        // A lane answers every call it took, if only with `Lost` when it ends.
        answer
            .await
            .unwrap_or(Err(CallFailure::Lost { sent: true }))
    }

    /// The lane at `index`, opened (or replaced, if it ended) on first use.
    async fn lane(&self, index: usize) -> Result<Arc<CallLane>, CallFailure> {
        let slot = &self.lanes[index];
        if let Some(lane) = slot.live() {
            return Ok(lane);
        }
        let _opening = slot.opening.lock().await;
        if let Some(lane) = slot.live() {
            return Ok(lane);
        }
        if self.draining.load(Ordering::Acquire) {
            // The server would never accept the stream.
            return Err(CallFailure::Lost { sent: false });
        }
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|_| CallFailure::Lost { sent: false })?;
        let lane = Arc::new(CallLane {
            state: Mutex::new(LaneState::default()),
            queued: Notify::new(),
            max_frame_bytes: self.max_frame_bytes,
            server_draining: self.draining.clone(),
        });
        tokio::spawn(write_lane(lane.clone(), send));
        tokio::spawn(read_lane(lane.clone(), recv, self.conn.clone()));
        *slot.current.lock() = Some(lane.clone());
        Ok(lane)
    }
}

impl LaneSlot {
    fn live(&self) -> Option<Arc<CallLane>> {
        self.current
            .lock()
            .as_ref()
            .filter(|lane| lane.state.lock().accepting)
            .cloned()
    }
}

/// One bidirectional stream carrying many calls: callers append `Call` frames to a shared
/// buffer that one writer task sends in as few writes as it can, and one reader task hands
/// each `CallResult` to the caller waiting on its `requestId`.
struct CallLane {
    state: Mutex<LaneState>,
    /// Wakes the writer when the buffer stops being empty.
    queued: Notify,
    max_frame_bytes: u32,
    /// The session's `draining`, set before the callers of a lane the server ended learn.
    server_draining: Arc<AtomicBool>,
}

struct LaneState {
    /// False once the lane can take no more calls (its stream broke or ended).
    accepting: bool,
    /// Frames not yet handed to the stream.
    outbuf: Vec<u8>,
    /// Buffers handed to the stream so far: a call queued while this was `n` went out with
    /// buffer `n`, so it was (at least partly) sent once this exceeds `n`.
    taken: u64,
    /// Callers waiting for a result, by `requestId`. Bounded by the connection's call slots.
    waiting: HashMap<u64, Waiter>,
}

impl Default for LaneState {
    fn default() -> Self {
        LaneState {
            accepting: true,
            outbuf: Vec::new(),
            taken: 0,
            waiting: HashMap::new(),
        }
    }
}

struct Waiter {
    answer: oneshot::Sender<Result<CallOutcome, CallFailure>>,
    /// Value of `taken` when the call was queued.
    buffer: u64,
    /// Released with the waiter: when the result arrives or the lane ends, whether or not
    /// the caller is still there.
    _slot: OwnedSemaphorePermit,
}

type Answer = oneshot::Receiver<Result<CallOutcome, CallFailure>>;

impl CallLane {
    /// Queues `call` for the writer and registers its caller.
    fn enqueue(
        &self,
        call: &ClientMessage,
        request_id: u64,
        slot: OwnedSemaphorePermit,
    ) -> Result<Answer, CallFailure> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock();
        if !st.accepting {
            return Err(CallFailure::Lost { sent: false });
        }
        let was_empty = st.outbuf.is_empty();
        let start = st.outbuf.len();
        let too_large = match encode_frame_into(call, &mut st.outbuf) {
            Ok(len) if len <= self.max_frame_bytes as usize => None,
            Ok(len) => Some(format!(
                "message of {len} bytes exceeds the {}-byte frame limit",
                self.max_frame_bytes
            )),
            Err(e) => Some(e.to_string()),
        };
        if let Some(message) = too_large {
            st.outbuf.truncate(start);
            return Err(CallFailure::Fatal(ClientError::Encode(message)));
        }
        let buffer = st.taken;
        st.waiting.insert(
            request_id,
            Waiter {
                answer: tx,
                buffer,
                _slot: slot,
            },
        );
        drop(st);
        // A non-empty buffer already has the writer woken or about to take it.
        if was_empty {
            self.queued.notify_one();
        }
        Ok(rx)
    }

    /// Hands a result to its caller.
    fn deliver(&self, request_id: u64, outcome: CallOutcome) -> Result<(), ClientError> {
        let waiter = self.state.lock().waiting.remove(&request_id);
        match waiter {
            Some(w) => {
                // The caller may have gone; its slot is released all the same.
                let _ = w.answer.send(Ok(outcome));
                Ok(())
            }
            None => Err(ClientError::Protocol(format!(
                "CallResult for requestId {request_id}, which is not in flight on its stream"
            ))),
        }
    }

    /// Takes no more calls; the calls never handed to the stream fail as unsent. Those that
    /// were still get their results, or fail when the reader ends.
    fn stop_sending(&self) {
        let unsent: Vec<Waiter> = {
            let mut st = self.state.lock();
            st.accepting = false;
            st.outbuf = Vec::new();
            let taken = st.taken;
            st.waiting
                .extract_if(|_, w| w.buffer >= taken)
                .map(|(_, w)| w)
                .collect()
        };
        for w in unsent {
            let _ = w.answer.send(Err(CallFailure::Lost { sent: false }));
        }
    }

    /// Ends the lane: every call still waiting is lost, sent or not depending on whether its
    /// buffer went out.
    fn end(&self) {
        let (waiting, taken) = {
            let mut st = self.state.lock();
            st.accepting = false;
            st.outbuf = Vec::new();
            (std::mem::take(&mut st.waiting), st.taken)
        };
        for w in waiting.into_values() {
            let sent = w.buffer < taken;
            let _ = w.answer.send(Err(CallFailure::Lost { sent }));
        }
        // Lets the writer see that the lane is over.
        self.queued.notify_one();
    }
}

/// Sends what callers queue on `lane`, everything queued at the moment in one write.
async fn write_lane(lane: Arc<CallLane>, mut send: SendStream) {
    let mut batch = Vec::new();
    loop {
        lane.queued.notified().await;
        // Callers woken by the same event (the results of a group commit, say) queue their
        // next calls before this takes the buffer.
        tokio::task::yield_now().await;
        {
            let mut st = lane.state.lock();
            if !st.accepting {
                break;
            }
            if st.outbuf.is_empty() {
                continue;
            }
            std::mem::swap(&mut batch, &mut st.outbuf);
            st.taken += 1;
        }
        if let Err(e) = send.write_all(&batch).await {
            tracing::debug!(error = %e, "call stream write failed");
            if let quinn::WriteError::Stopped(code) = e {
                if code.into_inner() == u64::from(close_code::SHUTDOWN) {
                    lane.server_draining.store(true, Ordering::Release);
                }
            }
            lane.stop_sending();
            return;
        }
        batch.clear();
    }
    let _ = send.finish();
}

/// Hands each `CallResult` on the stream to its caller until the stream ends, then fails the
/// calls still waiting as lost. A fatal `Error` on the stream names no call (the server sends
/// no `requestId` with it) and ends the connection, so it is no call's answer: the connection
/// is dropped at once, here as for a stream that breaks the protocol, and the calls waiting
/// are retried on the next one as far as that is safe (protocol §12).
async fn read_lane(lane: Arc<CallLane>, mut recv: RecvStream, conn: quinn::Connection) {
    let mut buf = BytesMut::new();
    loop {
        if let Err(e) = deliver_frames(&lane, &mut buf) {
            tracing::warn!(error = %e, "call stream failed; dropping the connection");
            // Closed before the callers learn, so that they wait for the next connection.
            conn.close(0u8.into(), b"call stream failed");
            break;
        }
        match recv.read_chunk(MAX_READ_CHUNK_BYTES, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            // The server finishes a call stream the client has not only when it shuts down
            // (protocol §1); it takes no new stream either.
            Ok(None) => {
                lane.server_draining.store(true, Ordering::Release);
                break;
            }
            // The connection is gone: the calls left unanswered are lost.
            Err(_) => break,
        }
    }
    lane.end();
}

/// Delivers every complete frame in `buf`; an error is a protocol violation (or a server
/// `Error`) that ends the lane.
fn deliver_frames(lane: &CallLane, buf: &mut BytesMut) -> Result<(), ClientError> {
    while let Some(frame) =
        take_frame(buf, lane.max_frame_bytes).map_err(|e| ClientError::Protocol(e.to_string()))?
    {
        match decode_call_result(&frame).map_err(|e| ClientError::Protocol(e.to_string()))? {
            ServerMessage::CallResult { request_id, result } => lane.deliver(request_id, result)?,
            ServerMessage::Error {
                code,
                message,
                data,
                fatal,
            } => return Err(ClientError::server(code, message, data, fatal)),
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected {} on a call stream",
                    message_kind(&other)
                )))
            }
        }
    }
    Ok(())
}
