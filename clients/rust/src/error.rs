//! The one error type of the client.

use std::fmt;
use std::time::Duration;

use sesh_protocol::{ErrorBody, ErrorCode};

/// Any failure of a call or of a live session: an error answer of the API
/// (HTTP status or `error` frame), or one found on this side (network,
/// undecodable answer, closed handle).
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    /// The HTTP status; `None` for WebSocket `error` frames and failures
    /// found on this side.
    pub status: Option<u16>,
    /// The contract's snake_case code (`rate_limited`, `not_found`, ...), or
    /// one of this client's own: `transport` (the request or socket failed),
    /// `decode` (an answer that is not what the contract says), `closed`
    /// (the live handle is gone).
    pub code: String,
    /// Explanation for humans.
    pub message: String,
    /// How long the server asks to wait before trying again
    /// (`Retry-After`, or `retryAfterMs` of an `error` frame).
    pub retry_after: Option<Duration>,
}

impl Error {
    /// An error with this code and message and no status.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            status: None,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// The request or the socket failed before an answer came.
    pub fn transport(message: impl fmt::Display) -> Self {
        Error::new("transport", message.to_string())
    }

    /// An answer that does not decode as the contract says.
    pub fn decode(message: impl fmt::Display) -> Self {
        Error::new("decode", message.to_string())
    }

    /// The live handle was closed, or the session ended, before an answer.
    pub fn closed(message: impl Into<String>) -> Self {
        Error::new("closed", message)
    }

    /// An error answer: `status`, its body as text and `Retry-After`.
    pub fn from_answer(status: u16, body: &str, retry_after: Option<Duration>) -> Self {
        match serde_json::from_str::<ErrorBody>(body) {
            Ok(b) => Error {
                status: Some(status),
                code: b.error.code.as_str().to_owned(),
                message: b.error.message,
                retry_after,
            },
            // Not the contract's shape (a proxy's page, say): keep the
            // status and a short excerpt so the cause stays visible.
            Err(_) => Error {
                status: Some(status),
                code: "decode".to_owned(),
                message: format!(
                    "HTTP {status}: {}",
                    body.chars().take(200).collect::<String>()
                ),
                retry_after,
            },
        }
    }

    /// The code as the contract's enum, when it is one of the contract's.
    pub fn api_code(&self) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == self.code)
    }

    /// Whether trying the same thing again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code.as_str(),
            "transport" | "rate_limited" | "unavailable" | "internal"
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} ({s}): {}", self.code, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

impl std::error::Error for Error {}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        if e.is_decode() {
            Error::decode(e)
        } else {
            Error::transport(e)
        }
    }
}
