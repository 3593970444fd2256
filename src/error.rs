//! The one error type at the edge, and its single mapping to HTTP status,
//! JSON error code and WebSocket close code (CONTRACT.md section 4).
//!
//! Everything a handler can fail with becomes an [`ApiError`]. Variants that
//! carry internal detail (`Internal`, `Unavailable`) keep it for the log
//! only; [`ApiError::public_message`] never contains it.

use sesh_protocol::{BodyError, ErrorBody, ErrorCode, FrameError};

use sesh_core::auth::AuthError;
use sesh_core::calls::CallError;
use sesh_core::quota::QuotaError;
use sesh_core::route::RouteError;
use sesh_core::session::SessionError;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400 `bad_request`: a malformed path id, query parameter or header.
    #[error("{0}")]
    BadRequest(String),
    /// 400 `invalid_json`: the body is not JSON.
    #[error("{0}")]
    InvalidJson(String),
    /// 401 `unauthorized`.
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    /// 403 `forbidden`.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// 405 `method_not_allowed`; `allow` lists the methods the route takes.
    #[error("method not allowed; allowed: {}", .allow.join(", "))]
    MethodNotAllowed {
        /// Methods the path accepts, for the `Allow` header.
        allow: &'static [&'static str],
    },
    /// 409 `session_ended`.
    #[error("the session has ended")]
    SessionEnded,
    /// 409 `export_not_ready`: the export's file is not complete yet.
    #[error("{0}")]
    ExportNotReady(String),
    /// 413 `payload_too_large` (or close 1009 on a WebSocket).
    #[error("payload exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// 422 `validation_failed`: well-formed JSON with a bad field.
    #[error("{0}")]
    Validation(String),
    /// 429 `rate_limited`.
    #[error("rate limit exceeded")]
    RateLimited {
        /// How long until a retry can succeed, when known.
        retry_after_ms: Option<u64>,
    },
    /// 429 `quota_exceeded`: a plan limit.
    #[error("{message}")]
    QuotaExceeded {
        /// Which limit, for humans.
        message: String,
        /// How long until the quota allows it again, when known.
        retry_after_ms: Option<u64>,
    },
    /// 500 `internal`. The detail goes to the log, never to the client.
    #[error("internal error")]
    Internal(String),
    /// 503 `unavailable`. The detail goes to the log, never to the client.
    #[error("service temporarily unavailable")]
    Unavailable(String),
}

impl ApiError {
    /// HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) | Self::InvalidJson(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::SessionEnded | Self::ExportNotReady(_) => 409,
            Self::PayloadTooLarge { .. } => 413,
            Self::Validation(_) => 422,
            Self::RateLimited { .. } | Self::QuotaExceeded { .. } => 429,
            Self::Internal(_) => 500,
            Self::Unavailable(_) => 503,
        }
    }

    /// The `error.code` of the JSON body (and of WebSocket error frames).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::InvalidJson(_) => ErrorCode::InvalidJson,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            Self::SessionEnded => ErrorCode::SessionEnded,
            Self::ExportNotReady(_) => ErrorCode::ExportNotReady,
            Self::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::Validation(_) => ErrorCode::ValidationFailed,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            Self::Internal(_) => ErrorCode::Internal,
            Self::Unavailable(_) => ErrorCode::Unavailable,
        }
    }

    /// The WebSocket close code for an error that ends a connection.
    pub fn close_code(&self) -> u16 {
        match self {
            // 1009: message too big (RFC 6455 section 7.4.1).
            Self::PayloadTooLarge { .. } => 1009,
            // 1011: the server hit an unexpected condition.
            Self::Internal(_) => 1011,
            // 1013: try again later.
            Self::Unavailable(_) => 1013,
            // 1008: policy violation, for everything the client caused.
            _ => 1008,
        }
    }

    /// The message shown to the client: never internal detail.
    pub fn public_message(&self) -> String {
        self.to_string()
    }

    /// `Retry-After` in whole seconds (rounded up), where waiting helps.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_ms } | Self::QuotaExceeded { retry_after_ms, .. } => {
                retry_after_ms.map(|ms| ms.div_ceil(1000).max(1))
            }
            Self::Unavailable(_) => Some(1),
            _ => None,
        }
    }

    /// Internal detail to log, if any.
    pub fn log_detail(&self) -> Option<&str> {
        match self {
            Self::Internal(d) | Self::Unavailable(d) => Some(d),
            _ => None,
        }
    }

    /// The JSON body: `{"error":{"code","message"}}`.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code(), self.public_message())
    }

    /// Rebuilds an error from a code and message received from another part
    /// of the service (a Durable Object answering the gateway).
    pub fn from_code(code: ErrorCode, message: String) -> Self {
        match code {
            ErrorCode::BadRequest | ErrorCode::UnknownType | ErrorCode::Unsupported => {
                Self::BadRequest(message)
            }
            ErrorCode::InvalidJson => Self::InvalidJson(message),
            ErrorCode::Unauthorized => Self::Unauthorized(AuthError::Malformed),
            ErrorCode::Forbidden => Self::Forbidden(message),
            ErrorCode::NotFound => Self::NotFound(message),
            ErrorCode::MethodNotAllowed => Self::MethodNotAllowed { allow: &[] },
            ErrorCode::SessionEnded => Self::SessionEnded,
            ErrorCode::ExportNotReady => Self::ExportNotReady(message),
            ErrorCode::PayloadTooLarge => Self::PayloadTooLarge {
                limit: sesh_protocol::limits::MAX_BODY_BYTES,
            },
            ErrorCode::ValidationFailed => Self::Validation(message),
            ErrorCode::RateLimited => Self::RateLimited {
                retry_after_ms: None,
            },
            ErrorCode::QuotaExceeded => Self::QuotaExceeded {
                message,
                retry_after_ms: None,
            },
            ErrorCode::Internal => Self::Internal(message),
            ErrorCode::Unavailable => Self::Unavailable(message),
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::InvalidJson(m) => Self::InvalidJson(m),
            BodyError::Invalid(m) => Self::Validation(m),
        }
    }
}

impl From<FrameError> for ApiError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::InvalidJson(m) => Self::InvalidJson(m),
            FrameError::UnknownType(m) | FrameError::Invalid(m) => Self::Validation(m),
        }
    }
}

impl From<sesh_core::data::history::QueryError> for ApiError {
    fn from(e: sesh_core::data::history::QueryError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<sesh_core::data::partition::RowError> for ApiError {
    fn from(e: sesh_core::data::partition::RowError) -> Self {
        ApiError::Internal(format!("D1 row: {e}"))
    }
}

impl From<sesh_core::data::rollup::MetricsError> for ApiError {
    fn from(e: sesh_core::data::rollup::MetricsError) -> Self {
        match e {
            sesh_core::data::rollup::MetricsError::TooManyBuckets => {
                ApiError::BadRequest(e.to_string())
            }
            sesh_core::data::rollup::MetricsError::Row(r) => r.into(),
        }
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::BadRequest(m) => Self::BadRequest(m),
            RouteError::NotFound(m) => Self::NotFound(m),
            RouteError::MethodNotAllowed { allow } => Self::MethodNotAllowed { allow },
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Forbidden(m) => Self::Forbidden(m),
            SessionError::NotFound(m) => Self::NotFound(m),
            SessionError::Ended => Self::SessionEnded,
            SessionError::Validation(m) => Self::Validation(m),
            SessionError::QuotaExceeded {
                message,
                retry_after_ms,
            } => Self::QuotaExceeded {
                message,
                retry_after_ms,
            },
            SessionError::Unavailable(m) => Self::Unavailable(m),
            SessionError::Storage(m) => Self::Internal(m),
        }
    }
}

impl From<QuotaError> for ApiError {
    fn from(e: QuotaError) -> Self {
        match e {
            QuotaError::UnknownPlan(_) => Self::Validation(e.to_string()),
        }
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        Self::Internal(format!("internal call: {e}"))
    }
}

impl From<sesh_core::lifecycle::store::LifecycleError> for ApiError {
    fn from(e: sesh_core::lifecycle::store::LifecycleError) -> Self {
        match e {
            sesh_core::lifecycle::store::LifecycleError::Store(m) => Self::Unavailable(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<ApiError> {
        vec![
            ApiError::BadRequest("b".into()),
            ApiError::InvalidJson("j".into()),
            ApiError::Unauthorized(AuthError::Expired),
            ApiError::Forbidden("f".into()),
            ApiError::NotFound("n".into()),
            ApiError::MethodNotAllowed { allow: &["GET"] },
            ApiError::SessionEnded,
            ApiError::ExportNotReady("e".into()),
            ApiError::PayloadTooLarge { limit: 10 },
            ApiError::Validation("v".into()),
            ApiError::RateLimited {
                retry_after_ms: Some(1500),
            },
            ApiError::QuotaExceeded {
                message: "q".into(),
                retry_after_ms: None,
            },
            ApiError::Internal("db exploded at line 7".into()),
            ApiError::Unavailable("D1 timeout".into()),
        ]
    }

    #[test]
    fn status_and_code_follow_the_contract_table() {
        let got: Vec<(u16, &str)> = all()
            .iter()
            .map(|e| (e.status(), e.code().as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (400, "bad_request"),
                (400, "invalid_json"),
                (401, "unauthorized"),
                (403, "forbidden"),
                (404, "not_found"),
                (405, "method_not_allowed"),
                (409, "session_ended"),
                (409, "export_not_ready"),
                (413, "payload_too_large"),
                (422, "validation_failed"),
                (429, "rate_limited"),
                (429, "quota_exceeded"),
                (500, "internal"),
                (503, "unavailable"),
            ]
        );
    }

    #[test]
    fn internal_detail_never_reaches_the_body() {
        for e in all() {
            let body = serde_json::to_string(&e.body()).unwrap();
            assert!(
                !body.contains("line 7") && !body.contains("D1 timeout"),
                "{body}"
            );
        }
        assert_eq!(
            ApiError::Internal("secret".into()).log_detail(),
            Some("secret")
        );
    }

    #[test]
    fn body_shape_is_error_code_message() {
        let v = serde_json::to_value(ApiError::NotFound("no such session".into()).body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "not_found", "message": "no such session"}})
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let e = ApiError::RateLimited {
            retry_after_ms: Some(1001),
        };
        assert_eq!(e.retry_after_secs(), Some(2));
        let e = ApiError::RateLimited {
            retry_after_ms: Some(1),
        };
        assert_eq!(e.retry_after_secs(), Some(1));
        assert_eq!(ApiError::NotFound(String::new()).retry_after_secs(), None);
    }

    #[test]
    fn close_codes() {
        assert_eq!(ApiError::PayloadTooLarge { limit: 1 }.close_code(), 1009);
        assert_eq!(
            ApiError::RateLimited {
                retry_after_ms: None
            }
            .close_code(),
            1008
        );
        assert_eq!(ApiError::Internal(String::new()).close_code(), 1011);
    }

    #[test]
    fn body_errors_map_to_invalid_json_or_validation() {
        assert_eq!(
            ApiError::from(BodyError::InvalidJson("x".into())).status(),
            400
        );
        assert_eq!(ApiError::from(BodyError::Invalid("x".into())).status(), 422);
    }

    #[test]
    fn codes_round_trip_through_from_code() {
        for e in all() {
            assert_eq!(ApiError::from_code(e.code(), "m".into()).code(), e.code());
        }
    }
}
