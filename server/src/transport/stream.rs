//! Frames and messages over quinn streams: reading one client message with the size limit
//! checked before the payload is buffered, writing one server message, and ending a
//! connection after a fatal error so the error frame still reaches the client.

use std::time::Duration;

use query_engine::protocol::frame::LENGTH_PREFIX_BYTES;
use query_engine::protocol::{
    decode_client, encode, encode_frame, ClientMessage, FrameError, ProtocolError, ServerMessage,
};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::io::AsyncReadExt;

/// QUIC application close codes.
pub const CLOSE_NORMAL: VarInt = VarInt::from_u32(0);
pub const CLOSE_PROTOCOL_ERROR: VarInt = VarInt::from_u32(1);
pub const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(2);
pub const CLOSE_INTERNAL: VarInt = VarInt::from_u32(3);
/// How long a fatal error frame may take to be acknowledged before the connection closes
/// anyway.
const FATAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Payload buffer reserved up front; beyond it the buffer grows with the bytes received.
const INITIAL_PAYLOAD_CAPACITY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

impl ReadError {
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
        }
    }
}

/// Reads one client message; `Ok(None)` when the stream ends cleanly between frames.
pub async fn read_message(
    recv: &mut RecvStream,
    max_frame_bytes: u32,
) -> Result<Option<ClientMessage>, ReadError> {
    let Some(payload) = read_frame_incrementally(recv, max_frame_bytes).await? else {
        return Ok(None);
    };
    Ok(Some(decode_client(&payload)?))
}

/// Like `protocol::read_frame`, but the buffer grows only as payload bytes arrive, so a
/// length prefix alone (without the data) cannot make the server reserve `max_frame_bytes`.
async fn read_frame_incrementally(
    recv: &mut RecvStream,
    max_frame_bytes: u32,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    let mut filled = 0;
    while filled < LENGTH_PREFIX_BYTES {
        let n = recv.read(&mut prefix[filled..]).await.map_err(io_error)?;
        match n {
            Some(n) => filled += n,
            None if filled == 0 => return Ok(None),
            None => return Err(FrameError::UnexpectedEof),
        }
    }
    let len = u32::from_be_bytes(prefix);
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len: len.into(),
            max: max_frame_bytes,
        });
    }
    let mut payload = Vec::with_capacity((len as usize).min(INITIAL_PAYLOAD_CAPACITY));
    (&mut *recv)
        .take(u64::from(len))
        .read_to_end(&mut payload)
        .await?;
    if payload.len() != len as usize {
        return Err(FrameError::UnexpectedEof);
    }
    Ok(Some(payload))
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
    let reason = match msg {
        ServerMessage::Error { code, .. } => code.as_bytes(),
        _ => b"",
    };
    conn.close(close_code, reason);
}
