//! Error codes, the JSON error body, and strict parsing of request bodies
//! (CONTRACT.md section 4).

use std::fmt;

use schemars::JsonSchema;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

/// Every error code the API answers with, over HTTP and in WebSocket
/// `error` frames. On the wire it is a snake_case string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// `bad_request`: a malformed path id, query parameter or header (400).
    BadRequest,
    /// `invalid_json`: the body or frame is not a JSON object (400).
    InvalidJson,
    /// `unauthorized`: missing, malformed, forged or expired token (401).
    Unauthorized,
    /// `forbidden`: authenticated but not allowed (403).
    Forbidden,
    /// `not_found`: no such route or resource (404).
    NotFound,
    /// `method_not_allowed`: the route exists, the method does not (405).
    MethodNotAllowed,
    /// `session_ended`: the session no longer takes writes or joins (409).
    SessionEnded,
    /// `export_not_ready`: the export's file is not complete yet (409).
    ExportNotReady,
    /// `payload_too_large`: a body over 1 MiB (413).
    PayloadTooLarge,
    /// `validation_failed`: well-formed JSON that breaks a rule (422).
    ValidationFailed,
    /// `rate_limited`: the API rate or a connection's flood limit (429).
    RateLimited,
    /// `quota_exceeded`: a plan quota (429).
    QuotaExceeded,
    /// `internal`: an unexpected server failure; never carries detail (500).
    Internal,
    /// `unavailable`: a dependency is down for now (503).
    Unavailable,
    /// `unknown_type`: a WebSocket frame whose `type` is not known.
    UnknownType,
    /// `unsupported`: a WebSocket frame the server does not take (binary).
    Unsupported,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadRequest,
        ErrorCode::InvalidJson,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::SessionEnded,
        ErrorCode::ExportNotReady,
        ErrorCode::PayloadTooLarge,
        ErrorCode::ValidationFailed,
        ErrorCode::RateLimited,
        ErrorCode::QuotaExceeded,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::UnknownType,
        ErrorCode::Unsupported,
    ];

    /// The wire string, e.g. `"bad_request"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::SessionEnded => "session_ended",
            ErrorCode::ExportNotReady => "export_not_ready",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Unsupported => "unsupported",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The inside of an error body: `{"code":..,"message":..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Explanation for humans; never internal detail.
    pub message: String,
}

impl ErrorDetail {
    /// An error detail with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorDetail {
            code,
            message: message.into(),
        }
    }
}

/// Every HTTP error answer: `{"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

impl ErrorBody {
    /// An error body with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail::new(code, message),
        }
    }
}

/// Why a request body was refused by [`parse_body`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON at all (syntax error, truncated, empty): `invalid_json`.
    InvalidJson(String),
    /// JSON, but not the expected shape or breaking a rule: `validation_failed`.
    Invalid(String),
}

impl BodyError {
    /// The API error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            BodyError::InvalidJson(_) => ErrorCode::InvalidJson,
            BodyError::Invalid(_) => ErrorCode::ValidationFailed,
        }
    }

    /// The message for humans.
    pub fn message(&self) -> &str {
        match self {
            BodyError::InvalidJson(m) | BodyError::Invalid(m) => m,
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for BodyError {}

impl From<BodyError> for ErrorBody {
    fn from(e: BodyError) -> Self {
        ErrorBody::new(e.code(), e.message())
    }
}

/// Rules a value must follow beyond its JSON shape (lengths, sizes, ranges).
pub trait Validate {
    /// `Ok` when every rule holds, else a message for humans naming the field.
    fn validate(&self) -> Result<(), String>;
}

/// Parses a request body strictly: it must be a JSON object of exactly the
/// shape of `T` (no unknown fields, no wrong types), and then pass
/// [`Validate::validate`].
///
/// Syntax errors, truncation, an empty body or invalid UTF-8 give
/// [`BodyError::InvalidJson`]; well-formed JSON that is not an object, has a
/// missing, unknown or wrongly typed field, or fails validation gives
/// [`BodyError::Invalid`].
pub fn parse_body<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, BodyError> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(BodyError::InvalidJson(
            "request body is not valid UTF-8".to_owned(),
        ));
    };
    match first_json_byte(bytes) {
        None => return Err(BodyError::InvalidJson("request body is empty".to_owned())),
        Some(b'{') => {}
        // Derived struct deserializers also accept a JSON array (fields by
        // position), which would be a silent leniency, so only an object may
        // go on to `T`.
        Some(_) => {
            return Err(match serde_json::from_str::<IgnoredAny>(text) {
                Ok(_) => BodyError::Invalid("request body must be a JSON object".to_owned()),
                Err(e) => BodyError::InvalidJson(e.to_string()),
            })
        }
    }
    let value: T = serde_json::from_str(text).map_err(|e| {
        if is_not_json(text, &e) {
            BodyError::InvalidJson(e.to_string())
        } else {
            BodyError::Invalid(shape_message(&e))
        }
    })?;
    value.validate().map_err(BodyError::Invalid)?;
    Ok(value)
}

/// [`parse_body`] for a body whose fields are all optional (`POST
/// /v1/sessions`, the presence heartbeat): an empty body, or one of only
/// whitespace, reads as `{}`, so a bare `POST` is the request with every
/// field left out.
pub fn parse_optional_body<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, BodyError> {
    match first_json_byte(bytes) {
        None => parse_body(b"{}"),
        Some(_) => parse_body(bytes),
    }
}

/// True when `e`, from parsing `text`, means the text is not JSON at all
/// (rather than JSON of the wrong shape).
pub(crate) fn is_not_json(text: &str, e: &serde_json::Error) -> bool {
    match e.classify() {
        serde_json::error::Category::Data => false,
        // serde_json reports some shape errors as syntax errors (a number
        // where an enum string is expected gives "expected value", 1e400
        // gives "number out of range"), so the text itself decides; this
        // runs on the error path only.
        _ => serde_json::from_str::<IgnoredAny>(text).is_err(),
    }
}

/// A message for JSON of the wrong shape.
pub(crate) fn shape_message(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => e.to_string(),
        // The miscategorized cases (a number where an enum string is
        // expected, a number beyond what a double holds): serde_json's text
        // would read as a syntax error, so say what it means.
        _ => format!(
            "invalid value at line {} column {}: wrong type or out of range",
            e.line(),
            e.column()
        ),
    }
}

/// The first byte after JSON whitespace, if any.
pub(crate) fn first_json_byte(bytes: &[u8]) -> Option<u8> {
    bytes
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

object_only!(
    ErrorDetail: "an error detail object",
    ErrorBody: "an error body object",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Probe {
        n: u32,
    }

    impl Validate for Probe {
        fn validate(&self) -> Result<(), String> {
            if self.n > 10 {
                return Err("n must be at most 10".to_owned());
            }
            Ok(())
        }
    }

    #[test]
    fn error_codes_serialize_as_snake_case_and_match_as_str() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).expect("parse");
            assert_eq!(back, code);
        }
        assert_eq!(ErrorCode::MethodNotAllowed.as_str(), "method_not_allowed");
        assert_eq!(ErrorCode::UnknownType.to_string(), "unknown_type");
        assert!(serde_json::from_str::<ErrorCode>("\"BadRequest\"").is_err());
    }

    #[test]
    fn error_body_wire_shape() {
        let body = ErrorBody::new(ErrorCode::NotFound, "no such session");
        let json = serde_json::to_string(&body).expect("serialize");
        assert_eq!(
            json,
            r#"{"error":{"code":"not_found","message":"no such session"}}"#
        );
        let back: ErrorBody = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, body);
        assert!(serde_json::from_str::<ErrorBody>(
            r#"{"error":{"code":"not_found","message":"m","extra":1}}"#
        )
        .is_err());
    }

    #[test]
    fn body_error_codes() {
        assert_eq!(
            BodyError::InvalidJson("x".into()).code(),
            ErrorCode::InvalidJson
        );
        assert_eq!(
            BodyError::Invalid("y".into()).code(),
            ErrorCode::ValidationFailed
        );
        assert_eq!(BodyError::Invalid("y".into()).message(), "y");
        let body = ErrorBody::from(BodyError::Invalid("bad".into()));
        assert_eq!(body.error.code, ErrorCode::ValidationFailed);
    }

    #[test]
    fn parse_body_accepts_valid() {
        let p: Probe = parse_body(b" {\"n\": 3} ").expect("valid");
        assert_eq!(p.n, 3);
    }

    #[test]
    fn parse_body_syntax_errors_are_invalid_json() {
        for bad in [
            &b"{\"n\": 3"[..],
            b"{n: 3}",
            b"",
            b"   ",
            b"nope",
            b"{\"n\":3} trailing",
            b"{\"n\":\"\xff\"}",
            b"[\"\xff\"]",
        ] {
            match parse_body::<Probe>(bad) {
                Err(BodyError::InvalidJson(m)) => assert!(!m.is_empty()),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
    }

    #[test]
    fn an_optional_body_may_be_left_out_but_not_broken() {
        let c: crate::CreateSession = parse_optional_body(b"").expect("empty is {}");
        assert_eq!(c, parse_body(b"{}").expect("{} is valid"));
        let c: crate::CreateSession = parse_optional_body(b" \n").expect("whitespace is {}");
        assert_eq!(c, parse_body(b"{}").expect("{} is valid"));
        assert!(matches!(
            parse_optional_body::<crate::CreateSession>(b"{\"title\":"),
            Err(BodyError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_optional_body::<crate::CreateSession>(b"{\"nope\":1}"),
            Err(BodyError::Invalid(_))
        ));
        // A body whose fields are required is still refused when empty.
        assert!(matches!(
            parse_optional_body::<Probe>(b""),
            Err(BodyError::Invalid(_))
        ));
    }

    #[test]
    fn parse_body_data_errors_are_invalid() {
        for (bad, needle) in [
            (&b"{\"n\": \"3\"}"[..], "invalid type"),
            (b"{}", "missing field `n`"),
            (b"{\"n\": 3, \"m\": 1}", "unknown field `m`"),
            (b"{\"n\": -1}", "invalid value"),
            (b"{\"n\": 1e400}", "out of range"),
            (b"[3]", "must be a JSON object"),
            (b"3", "must be a JSON object"),
            (b"null", "must be a JSON object"),
        ] {
            match parse_body::<Probe>(bad) {
                Err(BodyError::Invalid(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only parsing matters here
    struct EnumProbe {
        code: ErrorCode,
    }

    impl Validate for EnumProbe {
        fn validate(&self) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn wrong_type_for_an_enum_is_invalid_not_invalid_json() {
        // serde_json calls this one a syntax error; the body is valid JSON.
        match parse_body::<EnumProbe>(br#"{"code": 5}"#) {
            Err(BodyError::Invalid(m)) => assert!(m.contains("wrong type"), "{m}"),
            other => panic!("{other:?}"),
        }
        match parse_body::<EnumProbe>(br#"{"code": "nope"}"#) {
            Err(BodyError::Invalid(m)) => assert!(m.contains("unknown variant"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_body::<EnumProbe>(br#"{"code": 5"#),
            Err(BodyError::InvalidJson(_))
        ));
        assert!(parse_body::<EnumProbe>(br#"{"code": "internal"}"#).is_ok());
    }

    #[test]
    fn parse_body_runs_validation() {
        assert_eq!(
            parse_body::<Probe>(b"{\"n\": 11}").map(|p| p.n),
            Err(BodyError::Invalid("n must be at most 10".into()))
        );
    }
}
