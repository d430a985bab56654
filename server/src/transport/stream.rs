//! Frames and messages over quinn streams: reading one client message with the size limit
//! checked before the payload is buffered, writing one server message, and ending a
//! connection after a fatal error so the error frame still reaches the client.

use std::time::Duration;

use query_engine::protocol::{
    decode_client, encode, read_frame, write_frame, ClientMessage, FrameError, ProtocolError,
    ServerMessage,
};
use quinn::{Connection, RecvStream, SendStream, VarInt};

/// QUIC application close codes.
pub const CLOSE_NORMAL: VarInt = VarInt::from_u32(0);
pub const CLOSE_PROTOCOL_ERROR: VarInt = VarInt::from_u32(1);
pub const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(2);
pub const CLOSE_INTERNAL: VarInt = VarInt::from_u32(3);
/// How long a fatal error frame may take to be acknowledged before the connection closes
/// anyway.
const FATAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

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
    let Some(payload) = read_frame(recv, max_frame_bytes).await? else {
        return Ok(None);
    };
    Ok(Some(decode_client(&payload)?))
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
    write_frame(send, payload).await?;
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
