//! GetStream Video (seed §3, §6, §15, §20): the provider that creates a meeting's call (its
//! "room") and keeps its members in line with the meeting's participants, the tokens
//! participants join it with, and the verification of the webhooks Stream sends about it.
//! Nothing here knows about the database; `linkedup::stream_rooms`, `linkedup::stream_tokens`
//! and `linkedup::stream_webhook` use it.
//!
//! Which provider runs is configuration (`StreamConfig`): the deterministic local one by
//! default (no network; the room id is derived from the meeting id, so development and tests
//! work offline), or Stream's REST API (`client`) when an API key and secret are given.

pub mod client;
pub mod config;
pub mod provider;
pub mod tokens;
pub mod webhook;

use linkedup_schema::ErrorCode;
use query_engine::error::FunctionError;
use query_engine::obj;

pub use crate::secret::Secret;
pub use client::{ApiSettings, StreamClient};
pub use config::StreamConfig;
pub use provider::{LocalCall, LocalCalls, MemberChange, RoomMember, RoomProvider, RoomRequest};
pub use tokens::{mint_call_token, CallToken};

/// Stream's API host (the one its server SDKs default to).
pub const DEFAULT_BASE_URL: &str = "https://chat.stream-io-api.com";
/// The call type rooms are created with unless configured otherwise.
pub const DEFAULT_CALL_TYPE: &str = "default";
/// Longest call type or call id Stream accepts.
pub const MAX_CALL_ID_CHARS: usize = 64;

/// Whether `s` is usable as a Stream call type or call id: 1 to 64 of `a-z A-Z 0-9 _ -`.
/// Meeting ids always are (23 lowercase base32 characters).
pub fn is_call_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_CALL_ID_CHARS
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A call's `cid` as Stream writes it: `<call type>:<call id>`.
pub fn call_cid(call_type: &str, call_id: &str) -> String {
    format!("{call_type}:{call_id}")
}

/// Why a request to Stream failed. Messages never contain the API secret or the server token.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Stream answered with an error status; `message` is Stream's, shortened.
    #[error("Stream answered HTTP {status}: {message}")]
    Api { status: u16, message: String },
    /// Stream could not be reached, or did not answer in time.
    #[error("cannot reach Stream: {0}")]
    Transport(String),
    #[error("Stream's response is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// Stream answered 2xx with something other than what the API documents.
    #[error("unexpected response from Stream: {0}")]
    BadResponse(String),
    /// A request this client refuses to send (bad call type or id).
    #[error("invalid request to Stream: {0}")]
    InvalidRequest(String),
    /// The retry budget ran out; `last` is the final attempt's error.
    #[error("Stream failed {attempts} times; last: {last}")]
    GaveUp {
        attempts: u32,
        last: Box<StreamError>,
    },
}

impl From<crate::provider_http::OutOfTime> for StreamError {
    fn from(_: crate::provider_http::OutOfTime) -> Self {
        StreamError::Transport("out of time".into())
    }
}

impl StreamError {
    /// Whether another attempt may succeed: Stream overloaded (429), failing (5xx), or not
    /// reached. Every request this client sends is idempotent (get-or-create with an id
    /// derived from the meeting, upsert of users, setting a member's role, removing or
    /// blocking or unblocking a user), so repeating one is safe.
    pub fn is_retryable(&self) -> bool {
        match self {
            StreamError::Api { status, .. } => *status == 429 || *status >= 500,
            StreamError::Transport(_) => true,
            _ => false,
        }
    }

    /// Whether the failure may pass: retryable, or the client's own retries of a retryable
    /// one ran out. A job retries later only such a failure (a refusal would be repeated).
    pub fn is_transient(&self) -> bool {
        self.is_retryable() || matches!(self, StreamError::GaveUp { .. })
    }

    /// The `PROVIDER_ERROR` a function returns for this failure; `data.transient` says
    /// whether a later attempt may succeed (`is_transient`).
    pub fn to_function_error(&self) -> FunctionError {
        let status = match self {
            StreamError::Api { status, .. } => i64::from(*status),
            StreamError::GaveUp { last, .. } => match last.as_ref() {
                StreamError::Api { status, .. } => i64::from(*status),
                _ => 0,
            },
            _ => 0,
        };
        ErrorCode::ProviderError.err_with(
            self.to_string(),
            obj! { "provider" => "stream", "status" => status, "transient" => self.is_transient() },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s: Secret = "hunter2".parse().unwrap();
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn call_ids_are_checked() {
        assert!(is_call_id("default"));
        assert!(is_call_id("0123456789abcdefghjkmnp"));
        assert!(is_call_id("audio_room-2"));
        for bad in ["", "a:b", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(!is_call_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn only_overload_failures_and_unreachability_are_retried() {
        let api = |status| StreamError::Api {
            status,
            message: String::new(),
        };
        assert!(api(429).is_retryable());
        assert!(api(500).is_retryable());
        assert!(api(503).is_retryable());
        assert!(!api(400).is_retryable());
        assert!(!api(401).is_retryable());
        assert!(!api(404).is_retryable());
        assert!(StreamError::Transport("timeout".into()).is_retryable());
        assert!(!StreamError::TooLarge { limit: 1 }.is_retryable());
        assert!(!StreamError::BadResponse("x".into()).is_retryable());
    }

    #[test]
    fn failures_become_provider_errors_with_the_status() {
        let e = StreamError::GaveUp {
            attempts: 3,
            last: Box::new(StreamError::Api {
                status: 503,
                message: "busy".into(),
            }),
        }
        .to_function_error();
        assert_eq!(e.code, "PROVIDER_ERROR");
        assert_eq!(
            e.data.get_path("status").and_then(|v| v.as_i64()),
            Some(503)
        );
        assert!(e.message.contains("busy"), "{e}");
    }
}
