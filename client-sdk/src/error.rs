//! What can go wrong for a caller of the SDK: a function's own error as it crossed the wire,
//! a control-stream `Error` from the server, or a transport/protocol failure. Cloneable, since
//! one failure may be reported to many subscriptions at once.

use query_engine::admission::OVERLOADED;
use query_engine::error::codes;
use query_engine::protocol::{ErrorPayload, TOKEN_EXPIRED};
use query_engine::value::Value;

#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    /// The function ran (or was refused by the server) and failed: `code` is one of the wire
    /// codes (`UNAUTHORIZED`, `FORBIDDEN`, `NOT_FOUND`, `VALIDATION_ERROR`, ...).
    #[error("{code}: {message}")]
    Function {
        code: String,
        message: String,
        data: Value,
    },
    /// The server sent an `Error` on the control stream: a rejected token (`UNAUTHORIZED`), a
    /// refused `Connect`, or a fatal protocol error.
    #[error("server error {code}: {message}")]
    Server {
        code: String,
        message: String,
        data: Value,
        fatal: bool,
    },
    /// The address given to `Client::connect` could not be parsed or resolved.
    #[error("invalid server address {0:?}")]
    InvalidAddress(String),
    /// The TLS settings are unusable (bad PEM, bad fingerprint, ...).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The QUIC/TLS handshake failed (server down, certificate not trusted, ALPN mismatch).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection was lost and the call cannot be retried safely (an action, or a
    /// mutation sent without a mutation id: either may or may not have run), or no connection
    /// came back in time.
    #[error("disconnected from the server")]
    Disconnected,
    /// A mutation was sent, the connection dropped, and its one retry (same mutation id) got
    /// no answer that tells whether the first attempt was applied: it was lost too, or the
    /// server refused it before looking the id up (shed as overloaded, or refused for an
    /// expired token that no refresh replaced), or it could not be sent. It may or may not
    /// have been applied; retrying it with `Client::mutation_with_id` and this id is safe
    /// (the server deduplicates by id), and a fresh id is not.
    #[error("mutation {mutation_id} was sent but its outcome is unknown (connection lost, and its retry did not tell)")]
    MutationUnconfirmed { mutation_id: String },
    /// The server broke the protocol (undecodable frame, unexpected message, gap in
    /// transition timestamps).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The arguments could not be converted to a value.
    #[error("cannot encode arguments: {0}")]
    Encode(String),
    /// The result could not be converted to the requested type.
    #[error("cannot decode result: {0}")]
    Decode(String),
    /// The client was closed (or dropped) while the call or subscription was pending.
    #[error("client closed")]
    Closed,
}

impl ClientError {
    /// The wire error code, for errors the server reported.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Function { code, .. } | ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when the server said the caller is not (or no longer) authenticated.
    pub fn is_unauthorized(&self) -> bool {
        self.code() == Some(codes::UNAUTHORIZED)
    }

    /// True when the server said the connection's token had expired (`UNAUTHORIZED` with
    /// `data.tokenExpired`): as a call's answer, the call was refused before anything ran; on
    /// the control stream, the identity was dropped (protocol §9, §11).
    pub fn is_token_expired(&self) -> bool {
        match self {
            ClientError::Function { data, .. } | ClientError::Server { data, .. } => {
                self.is_unauthorized() && data.get_path(TOKEN_EXPIRED) == Some(&Value::Bool(true))
            }
            _ => false,
        }
    }

    /// True when the server shed the call under load before running it (`RATE_LIMITED` with
    /// `data.reason = "overloaded"`): nothing was applied, and it may be retried after
    /// `data.retryAfterMs`. (A mutation's retry after a lost attempt that is shed so comes back
    /// `MutationUnconfirmed` instead: the lost attempt may have been applied.)
    pub fn is_overloaded(&self) -> bool {
        match self {
            ClientError::Function { code, data, .. } => {
                code == codes::RATE_LIMITED
                    && data.get_path("reason").and_then(Value::as_str) == Some(OVERLOADED)
            }
            _ => false,
        }
    }

    /// The wait the server asked for before a retry (`data.retryAfterMs`, when positive).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ClientError::Function { data, .. } | ClientError::Server { data, .. } => data
                .get_path("retryAfterMs")
                .and_then(Value::as_i64)
                .filter(|ms| *ms > 0)
                .map(|ms| std::time::Duration::from_millis(ms as u64)),
            _ => None,
        }
    }

    pub(crate) fn function(payload: ErrorPayload) -> Self {
        ClientError::Function {
            code: payload.code,
            message: payload.message,
            data: payload.data,
        }
    }

    pub(crate) fn server(code: String, message: String, data: Value, fatal: bool) -> Self {
        ClientError::Server {
            code,
            message,
            data,
            fatal,
        }
    }
}
