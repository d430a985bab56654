//! The versioned client–server wire protocol: length-delimited frames (`frame`) carrying
//! MessagePack messages (`messages`). Generic over applications; `docs/protocol.md` is the
//! specification a second client can be written from.

mod direct;
pub mod frame;
pub mod messages;
pub mod udp;

/// The QUIC application error codes of the protocol (`docs/protocol.md`, "Close codes"),
/// shared by the server that sends them and the clients that read them. A server shutting down
/// also stops reading call streams with `SHUTDOWN`.
pub mod close_code {
    pub const NORMAL: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const SHUTDOWN: u32 = 2;
    pub const INTERNAL: u32 = 3;
    /// Closed right after the handshake: the source address has as many connections as it may.
    pub const TOO_MANY_CONNECTIONS: u32 = 4;
    /// A call stream reset (both ways): a result on it was not taken in time (the client
    /// granted no flow-control credit for it), so its results were dropped.
    pub const RESULT_TIMEOUT: u32 = 5;
}

pub use frame::{
    encode_frame, frame_ready, read_frame, take_frame, write_frame, FrameError,
    DEFAULT_MAX_FRAME_BYTES,
};
pub use messages::{
    decode_call, decode_call_result, decode_client, decode_server, decode_transition, encode,
    encode_frame_into, validate_client, CallKind, CallOutcome, ClientMessage, ErrorPayload,
    Modification, ProtocolError, ServerMessage, WireMessage, PROTOCOL_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
};

/// Key of the marker in an `UNAUTHORIZED` error's `data` (`true`) saying the connection's
/// token had expired: on the control stream, the notice that the identity was dropped; in a
/// `CallResult`, that the call was refused before anything ran, so it may be sent again under
/// a fresh token whatever its kind (protocol §9, §11).
pub const TOKEN_EXPIRED: &str = "tokenExpired";
