//! Errors that cross the engine's boundary. A function error carries a wire code, a message
//! and structured data; engine-internal failures map to `INTERNAL` at the edge.

use crate::value::Value;

/// Codes the engine itself produces. Applications may use further codes (any
/// upper-snake-case string); these are the ones the engine relies on.
pub mod codes {
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
    pub const FORBIDDEN: &str = "FORBIDDEN";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const VALIDATION_ERROR: &str = "VALIDATION_ERROR";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const CONFLICT: &str = "CONFLICT";
    pub const INTERNAL: &str = "INTERNAL";
}

/// An error returned by a function call, as the caller sees it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FunctionError {
    pub code: String,
    pub message: String,
    pub data: Value,
}

impl FunctionError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        FunctionError {
            code: code.into(),
            message: message.into(),
            data: Value::Null,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(codes::VALIDATION_ERROR, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(codes::NOT_FOUND, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(codes::FORBIDDEN, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(codes::UNAUTHORIZED, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(codes::CONFLICT, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL, message)
    }
}

pub type FunctionResult<T> = Result<T, FunctionError>;

/// Runs a function's handler so that a panic in it fails that call with `INTERNAL` (naming
/// `function`) instead of unwinding into the thread that runs it: on the committer, a panic in
/// a re-executed mutation would end the thread and with it every later write.
pub(crate) fn unless_panicked<T>(
    function: &str,
    run: impl FnOnce() -> FunctionResult<T>,
) -> FunctionResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
        tracing::error!(function, "function handler panicked");
        Err(FunctionError::internal(format!("{function} failed")))
    })
}
