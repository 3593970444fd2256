//! Typed calls to the Durable Objects and their answers: one file per
//! object family, each with a call enum and an answer enum (mini-redis's
//! `Command`, one file per command, is the model). The gateway builds a
//! call, an object decodes the same call and matches on it; neither side
//! spells an operation name, a query or a header by hand.
//!
//! A call travels as a [`Frame`]: its JSON (serde, `deny_unknown_fields`
//! throughout) and, for the calls that carry a client's body, that body as
//! it came, beside the JSON rather than inside it, so it is neither copied
//! into a string nor parsed twice (it is parsed once, where it is used).
//! Over JS RPC the two are the call's arguments; over a fetch the JSON is
//! the [`H_CALL`] header and the payload the request body. An answer
//! travels as the JSON of `Result<Answer, Failure>` ([`encode_answer`]).
//! Every decode is strict: an unknown field, a missing one, trailing text,
//! a payload where none belongs or none where one does is a [`CallError`].

pub mod export;
pub mod presence;
pub mod quota;
pub mod session;

pub use export::ExportCall;
pub use presence::{PresenceAnswer, PresenceCall};
pub use quota::{QuotaAnswer, QuotaCall};
pub use session::{SessionAnswer, SessionCall};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sesh_protocol::ErrorBody;
use thiserror::Error;

/// A call or answer between the gateway and an object that does not
/// decode: a bug on one side, never the client's fault (the edge answers
/// 500).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct CallError(pub String);

/// The request header that carries a call's JSON when it travels as a
/// fetch (the session's and the export's calls, whose answers are HTTP
/// responses: a WebSocket upgrade, a file). Its JSON is ASCII only
/// ([`Frame`] escapes the rest), so it is a valid header value.
pub const H_CALL: &str = "x-sesh-call";

/// A call to one object family: serde gives its JSON, and
/// [`Call::payload`] names the one field, if any, that travels beside it.
pub trait Call: Serialize + DeserializeOwned {
    /// What the object answers to this family's calls.
    type Answer: Serialize + DeserializeOwned;

    /// The field of this call that holds a client's body, which the JSON
    /// leaves out (`#[serde(skip)]`); `None` for a call without one.
    fn payload(&mut self) -> Option<&mut Vec<u8>>;
}

/// A call on its way: the JSON and the payload beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The call as JSON, ASCII only.
    pub call: String,
    /// A client's body, for the calls that carry one.
    pub payload: Option<Vec<u8>>,
}

impl Frame {
    /// The frame of `call`.
    pub fn encode<C: Call>(mut call: C) -> Result<Frame, CallError> {
        let payload = call.payload().map(std::mem::take);
        let json = serde_json::to_string(&call).map_err(|e| CallError(format!("encoding: {e}")))?;
        Ok(Frame {
            call: ascii_json(json),
            payload,
        })
    }

    /// The call this frame carries, strictly.
    pub fn decode<C: Call>(self) -> Result<C, CallError> {
        let mut call: C = strict(&self.call)?;
        match (call.payload(), self.payload) {
            (Some(slot), Some(p)) => *slot = p,
            (None, None) => {}
            (Some(_), None) => return Err(CallError("call without its payload".into())),
            (None, Some(_)) => return Err(CallError("payload left over".into())),
        }
        Ok(call)
    }
}

/// Why an object refused a call, as the edge answers it: the status, the
/// contract's error body, and the `Retry-After` seconds when a wait helps
/// (data, not a header: the edge makes the header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Failure {
    /// HTTP status of the refusal.
    pub status: u16,
    /// The error body for the client.
    pub body: ErrorBody,
    /// Seconds to wait before asking again, if a wait helps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

/// An object's answer or refusal, as it travels.
pub type Answered<A> = Result<A, Failure>;

/// The text of an answer or refusal.
pub fn encode_answer<A: Serialize>(answer: &Answered<A>) -> Result<String, CallError> {
    serde_json::to_string(answer).map_err(|e| CallError(format!("encoding an answer: {e}")))
}

/// The answer or refusal a text carries, strictly.
pub fn decode_answer<A: DeserializeOwned>(text: &str) -> Result<Answered<A>, CallError> {
    strict(text)
}

/// Parses `text` as exactly one `T`: serde's `deny_unknown_fields` refuses
/// unknown fields, and nothing may follow the value, whitespace included
/// (the encoder writes none).
pub fn strict<T: DeserializeOwned>(text: &str) -> Result<T, CallError> {
    if text.ends_with(|c: char| c.is_ascii_whitespace()) {
        return Err(CallError("trailing data after the value".into()));
    }
    serde_json::from_str(text).map_err(|e| CallError(format!("decoding: {e}")))
}

// Compact JSON has non-ASCII characters only inside strings, where a
// `\uXXXX` escape means the same: the result is a valid header value.
fn ascii_json(json: String) -> String {
    if json.is_ascii() {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The trip a call makes, checked: encoded, decoded to the same call.
    pub fn round_trip<C: Call + Clone + PartialEq + std::fmt::Debug>(call: C) {
        let frame = Frame::encode(call.clone()).unwrap();
        assert!(frame.call.is_ascii(), "{}", frame.call);
        assert_eq!(frame.decode::<C>(), Ok(call));
    }

    /// The trip an answer makes, checked, as an answer and as a refusal.
    pub fn answer_round_trip<A>(answer: A)
    where
        A: Serialize + DeserializeOwned + Clone + PartialEq + std::fmt::Debug,
    {
        let ok: Answered<A> = Ok(answer);
        let text = encode_answer(&ok).unwrap();
        assert_eq!(decode_answer::<A>(&text), Ok(ok), "{text}");
        assert!(decode_answer::<A>(&format!("{text} ")).is_err());
        assert!(decode_answer::<A>(&format!("{text}{{}}")).is_err());
    }

    #[test]
    fn failures_round_trip() {
        for f in [
            Failure {
                status: 500,
                body: ErrorBody::new(sesh_protocol::ErrorCode::Internal, "internal error"),
                retry_after_secs: None,
            },
            Failure {
                status: 503,
                body: ErrorBody::new(sesh_protocol::ErrorCode::Unavailable, "later"),
                retry_after_secs: Some(1),
            },
        ] {
            let err: Answered<SessionAnswer> = Err(f);
            let text = encode_answer(&err).unwrap();
            assert_eq!(decode_answer(&text), Ok(err));
        }
    }

    #[test]
    fn unknown_fields_and_trailing_data_are_refused() {
        let f =
            r#"{"Err":{"status":500,"body":{"error":{"code":"internal","message":"m"}},"x":1}}"#;
        assert!(decode_answer::<SessionAnswer>(f).is_err());
        assert!(decode_answer::<SessionAnswer>(r#"{"Ok":{"live":true},"Err":1}"#).is_err());
        assert!(decode_answer::<SessionAnswer>(r#"{"Ok":{"live":true}} "#).is_err());
        assert!(decode_answer::<SessionAnswer>(r#"{"Ok":{"live":true}}x"#).is_err());
        assert!(decode_answer::<SessionAnswer>(r#"{"Ok":{"live":true}}"#).is_ok());
    }

    #[test]
    fn non_ascii_values_survive_as_escapes() {
        round_trip(SessionCall::HasConn {
            conn_id: "é😀\"\\".into(),
        });
    }

    #[test]
    fn payloads_belong_where_the_call_says() {
        let mut f = Frame::encode(SessionCall::Get).unwrap();
        f.payload = Some(b"{}".to_vec());
        assert!(f.decode::<SessionCall>().is_err(), "a payload left over");
        let mut f = Frame::encode(SessionCall::Append { body: Vec::new() }).unwrap();
        f.payload = None;
        assert!(f.decode::<SessionCall>().is_err(), "a payload missing");
    }
}
