//! The session core's one error type. The core refuses with it (an HTTP
//! append, a join, an `end`); the Worker's `error.rs` maps it to status and
//! close code. The JSON code of each variant is its wire identity, so the
//! core can put it in the `error` frames it sends itself.

use sesh_protocol::ErrorCode;
use thiserror::Error;

/// Why the session refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    /// The user may not do this (not a member, not the owner).
    #[error("{0}")]
    Forbidden(String),
    /// The user asked about is not a member.
    #[error("{0}")]
    NotFound(String),
    /// The session has ended.
    #[error("the session has ended")]
    Ended,
    /// A well-formed request with a bad field.
    #[error("{0}")]
    Validation(String),
    /// A plan limit: the session is full, the user holds every seat, or
    /// the owner's points are used up.
    #[error("{message}")]
    QuotaExceeded {
        /// Which limit, for humans.
        message: String,
        /// How long until it allows the request again, when known.
        retry_after_ms: Option<u64>,
    },
    /// Something the request needs could not be asked (the owner's quota
    /// object); trying again may work.
    #[error("{0}")]
    Unavailable(String),
    /// The session's storage failed the write; nothing of it was kept.
    #[error("{0}")]
    Storage(String),
}

impl SessionError {
    /// The JSON `code` of this refusal (CONTRACT.md section 4).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Ended => ErrorCode::SessionEnded,
            Self::Validation(_) => ErrorCode::ValidationFailed,
            Self::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Storage(_) => ErrorCode::Internal,
        }
    }

    /// The wait a client should make before trying again, when one helps.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::QuotaExceeded { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }
}
