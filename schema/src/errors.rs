//! The seed's error taxonomy (§12): the only codes LinkedUp functions put on the wire. Server
//! code builds `FunctionError`s from these; clients parse the wire code back into the enum.

use query_engine::error::FunctionError;
use query_engine::value::Value;

/// A LinkedUp error code, as it crosses the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No verified identity, or no user document yet for it (call `users.ensure`).
    Unauthorized,
    /// Identified, but not allowed: not a participant, not a host, not an admin, other org.
    Forbidden,
    /// The addressed document does not exist.
    NotFound,
    /// Arguments fail validation; the message names the field path.
    ValidationError,
    /// Too many calls; `data.retryAfterMs` says when to retry.
    RateLimited,
    /// The call does not fit the current state (e.g. start a concluded meeting).
    Conflict,
    /// The meeting is not active (join, chat in a scheduled or ended meeting).
    MeetingNotActive,
    /// An external provider failed.
    ProviderError,
    /// A bug or an engine failure; never the caller's fault.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::ValidationError,
        ErrorCode::RateLimited,
        ErrorCode::Conflict,
        ErrorCode::MeetingNotActive,
        ErrorCode::ProviderError,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::ValidationError => "VALIDATION_ERROR",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::MeetingNotActive => "MEETING_NOT_ACTIVE",
            ErrorCode::ProviderError => "PROVIDER_ERROR",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// The code of a wire string; `None` for codes outside the taxonomy.
    pub fn parse(code: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// The code of an error a function returned (engine codes outside the taxonomy count as
    /// `Internal`).
    pub fn of(e: &FunctionError) -> ErrorCode {
        Self::parse(&e.code).unwrap_or(ErrorCode::Internal)
    }

    /// An error with this code and message.
    pub fn err(self, message: impl Into<String>) -> FunctionError {
        FunctionError::new(self.as_str(), message)
    }

    /// An error with this code, message and structured data.
    pub fn err_with(self, message: impl Into<String>, data: Value) -> FunctionError {
        self.err(message).with_data(data)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ErrorCode> for FunctionError {
    /// An error carrying only the code; prefer [`ErrorCode::err`] with a message.
    fn from(code: ErrorCode) -> Self {
        code.err(code.as_str())
    }
}

/// A validation error naming the offending field path, with the path in `data.path` as the
/// engine's argument validation does.
pub fn invalid_field(path: &str, message: impl std::fmt::Display) -> FunctionError {
    ErrorCode::ValidationError.err_with(
        format!("{path}: {message}"),
        query_engine::obj! { "path" => path },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_the_engine() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert_eq!(FunctionError::from(c).code, c.as_str());
        }
        use query_engine::error::codes;
        assert_eq!(ErrorCode::Forbidden.as_str(), codes::FORBIDDEN);
        assert_eq!(ErrorCode::ValidationError.as_str(), codes::VALIDATION_ERROR);
        assert_eq!(
            ErrorCode::of(&FunctionError::new("WEIRD", "x")),
            ErrorCode::Internal
        );
        let e = invalid_field("content", "must not be empty");
        assert_eq!(e.code, "VALIDATION_ERROR");
        assert_eq!(e.message, "content: must not be empty");
    }
}
