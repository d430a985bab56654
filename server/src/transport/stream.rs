//! Frames and messages over quinn streams: reading client frames with the size limit checked
//! and the bytes reserved from the connection's budget before the payload is buffered, and a
//! deadline for the payload; writing one server message; and ending a connection after a
//! fatal error so the error frame still reaches the client.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use query_engine::protocol::frame::LENGTH_PREFIX_BYTES;
use query_engine::protocol::{
    close_code, decode_client, encode, encode_frame, ClientMessage, FrameError, ProtocolError,
    ServerMessage,
};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::time::Instant;

use super::budget::{ConnBudget, Reservation};
use crate::config::ConnectionLimits;
use crate::metrics::ServerMetrics;

/// The protocol's QUIC application close codes, as quinn takes them.
pub const CLOSE_NORMAL: VarInt = VarInt::from_u32(close_code::NORMAL);
pub const CLOSE_PROTOCOL_ERROR: VarInt = VarInt::from_u32(close_code::PROTOCOL_ERROR);
pub const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(close_code::SHUTDOWN);
pub const CLOSE_INTERNAL: VarInt = VarInt::from_u32(close_code::INTERNAL);
pub const CLOSE_TOO_MANY_CONNECTIONS: VarInt = VarInt::from_u32(close_code::TOO_MANY_CONNECTIONS);
pub const CLOSE_RESULT_TIMEOUT: VarInt = VarInt::from_u32(close_code::RESULT_TIMEOUT);
/// How long a fatal error frame may take to be acknowledged before the connection closes
/// anyway.
const FATAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A frame's payload did not arrive in full within the deadline after its bytes were
    /// reserved: a client holding server memory with a frame it never finishes.
    #[error("a frame of {len} bytes was not received in full within {timeout:?}")]
    Stalled { len: u32, timeout: Duration },
}

impl ReadError {
    /// Counts a stalled frame apart (it is also a protocol error, counted where it is sent).
    pub(crate) fn count_stall(&self, metrics: &ServerMetrics) {
        if let ReadError::Stalled { .. } = self {
            metrics
                .inbound_frame_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The fatal error to send, or `None` when the stream itself is gone (reset, connection
    /// lost), so that nothing can be sent on it.
    pub fn to_fatal_message(&self) -> Option<ServerMessage> {
        match self {
            ReadError::Frame(FrameError::Io(_)) => None,
            ReadError::Frame(e) => Some(ServerMessage::Error {
                code: query_engine::error::codes::VALIDATION_ERROR.into(),
                message: e.to_string(),
                data: query_engine::value::Value::Null,
                fatal: true,
            }),
            ReadError::Protocol(e) => Some(e.to_message(true)),
            ReadError::Stalled { timeout, .. } => {
                Some(timed_out(self.to_string(), "frameTimeoutMs", *timeout))
            }
        }
    }
}

/// The fatal `VALIDATION_ERROR` for a client that did not send something within `timeout`,
/// naming the limit (`data`: `{limit, max}` in milliseconds).
pub(crate) fn timed_out(message: String, limit: &str, timeout: Duration) -> ServerMessage {
    ServerMessage::Error {
        code: query_engine::error::codes::VALIDATION_ERROR.into(),
        message,
        data: query_engine::obj! {
            "limit" => limit,
            "max" => i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
        },
        fatal: true,
    }
}

/// Reads one client message; `Ok(None)` when the stream ends cleanly between frames. The
/// frame's bytes are released once it has been decoded.
pub(crate) async fn read_message(
    reader: &mut FrameReader,
    recv: &mut RecvStream,
) -> Result<Option<ClientMessage>, ReadError> {
    let Some(frame) = reader.next(recv).await? else {
        return Ok(None);
    };
    Ok(Some(decode_client(&frame.payload)?))
}

/// One frame's payload and the budget it holds until dropped.
pub(crate) struct Frame {
    pub payload: Bytes,
    _reservation: Reservation,
}

/// Reads the frames of one stream under its connection's byte budget: the length prefix is
/// checked against the frame limit, then the payload's bytes are reserved (waiting while they
/// do not fit), and only then is the payload read, with a deadline. Cancel-safe: a frame read
/// or reserved in part stays here for the next call.
pub(crate) struct FrameReader {
    budget: ConnBudget,
    max_frame_bytes: u32,
    timeout: Duration,
    prefix: [u8; LENGTH_PREFIX_BYTES],
    prefix_filled: usize,
    pending: Pending,
}

enum Pending {
    /// Reading the length prefix.
    Prefix,
    /// Waiting for the budget to take the payload.
    Reserving {
        len: u32,
        reserve: BoxFuture<'static, Option<Reservation>>,
    },
    /// Reading the payload, until `deadline`.
    Payload {
        len: u32,
        buf: BytesMut,
        reservation: Reservation,
        deadline: Instant,
    },
}

impl FrameReader {
    pub fn new(budget: ConnBudget, limits: &ConnectionLimits) -> Self {
        FrameReader {
            budget,
            max_frame_bytes: limits.max_frame_bytes,
            timeout: limits.inbound_frame_timeout,
            prefix: [0; LENGTH_PREFIX_BYTES],
            prefix_filled: 0,
            pending: Pending::Prefix,
        }
    }

    /// The next frame; `Ok(None)` when the stream ends cleanly between frames.
    pub async fn next(&mut self, recv: &mut RecvStream) -> Result<Option<Frame>, ReadError> {
        loop {
            match &mut self.pending {
                Pending::Prefix => {
                    let want = LENGTH_PREFIX_BYTES - self.prefix_filled;
                    let Some(chunk) = recv.read_chunk(want, true).await.map_err(io_error)? else {
                        return match self.prefix_filled {
                            0 => Ok(None),
                            _ => Err(FrameError::UnexpectedEof.into()),
                        };
                    };
                    let end = self.prefix_filled + chunk.bytes.len();
                    self.prefix[self.prefix_filled..end].copy_from_slice(&chunk.bytes);
                    self.prefix_filled = end;
                    if end == LENGTH_PREFIX_BYTES {
                        let len = u32::from_be_bytes(self.prefix);
                        if len > self.max_frame_bytes {
                            return Err(FrameError::TooLarge {
                                len: len.into(),
                                max: self.max_frame_bytes,
                            }
                            .into());
                        }
                        self.prefix_filled = 0;
                        self.pending = Pending::Reserving {
                            len,
                            reserve: Box::pin(self.budget.reserve(len)),
                        };
                    }
                }
                Pending::Reserving { len, reserve } => {
                    let len = *len;
                    let reservation = reserve.await.ok_or_else(|| {
                        ReadError::Frame(FrameError::Io(std::io::Error::other(
                            "the inbound byte budget was closed",
                        )))
                    })?;
                    self.pending = Pending::Payload {
                        len,
                        // Reserved, so allocated whole: it never grows or moves.
                        buf: BytesMut::with_capacity(len as usize),
                        reservation,
                        deadline: Instant::now() + self.timeout,
                    };
                }
                Pending::Payload {
                    len, buf, deadline, ..
                } => {
                    let left = *len as usize - buf.len();
                    let mut whole = None;
                    if left > 0 {
                        let chunk = tokio::select! {
                            chunk = recv.read_chunk(left, true) => chunk.map_err(io_error)?,
                            () = tokio::time::sleep_until(*deadline) => {
                                return Err(ReadError::Stalled { len: *len, timeout: self.timeout });
                            }
                        };
                        let Some(chunk) = chunk else {
                            return Err(FrameError::UnexpectedEof.into());
                        };
                        if chunk.bytes.len() < left || !buf.is_empty() {
                            buf.extend_from_slice(&chunk.bytes);
                            continue;
                        }
                        // The whole payload in one chunk: kept as received, not copied.
                        whole = Some(chunk.bytes);
                    }
                    if let Pending::Payload {
                        buf, reservation, ..
                    } = std::mem::replace(&mut self.pending, Pending::Prefix)
                    {
                        return Ok(Some(Frame {
                            payload: whole.unwrap_or_else(|| buf.freeze()),
                            _reservation: reservation,
                        }));
                    }
                }
            }
        }
    }

    /// Sets the largest frame this reader takes from now on (the `Connect` frame is held to a
    /// few KiB, so a client that has not said who it is reserves next to nothing).
    pub fn limit_frames_to(&mut self, max_frame_bytes: u32) {
        self.max_frame_bytes = max_frame_bytes;
    }

    /// Forgets any frame read in part, releasing its bytes.
    pub fn clear(&mut self) {
        self.prefix_filled = 0;
        self.pending = Pending::Prefix;
    }
}

fn io_error(e: quinn::ReadError) -> FrameError {
    FrameError::Io(std::io::Error::other(e))
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot encode message: {0}")]
    Encode(#[from] ProtocolError),
    #[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
    TooLarge { len: usize, max: u32 },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Writes one already-encoded payload as a frame, refusing payloads over the limit.
pub async fn write_payload(
    send: &mut SendStream,
    payload: &[u8],
    max_frame_bytes: u32,
) -> Result<(), WriteError> {
    if payload.len() > max_frame_bytes as usize {
        return Err(WriteError::TooLarge {
            len: payload.len(),
            max: max_frame_bytes,
        });
    }
    // Prefix and payload in one buffer: one write into the stream (one lock of the connection
    // state, one chunk to packetise) instead of two writes and a flush.
    let frame = encode_frame(payload)?;
    send.write_all(&frame)
        .await
        .map_err(|e| FrameError::Io(std::io::Error::other(e)))?;
    Ok(())
}

pub async fn write_message(
    send: &mut SendStream,
    msg: &ServerMessage,
    max_frame_bytes: u32,
) -> Result<(), WriteError> {
    write_payload(send, &encode(msg)?, max_frame_bytes).await
}

/// Sends a fatal `Error` on `send`, finishes the stream, waits (bounded) for the client to
/// receive it, then closes the connection.
pub async fn send_fatal_and_close(
    conn: &Connection,
    send: &mut SendStream,
    msg: &ServerMessage,
    max_frame_bytes: u32,
    close_code: VarInt,
) {
    if write_message(send, msg, max_frame_bytes).await.is_ok() && send.finish().is_ok() {
        let _ = tokio::time::timeout(FATAL_FLUSH_TIMEOUT, send.stopped()).await;
    }
    conn.close(close_code, close_reason(msg));
}

/// The reason a connection closed after `msg` gives: the code of an `Error`.
pub fn close_reason(msg: &ServerMessage) -> &[u8] {
    match msg {
        ServerMessage::Error { code, .. } => code.as_bytes(),
        _ => b"",
    }
}
