//! WebSocket frames: JSON text tagged by `"type"` (CONTRACT.md section 5).

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, value::MapAccessDeserializer, Deserializer, IgnoredAny, MapAccess};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{first_json_byte, is_not_json, shape_message, ErrorCode, Validate};
use crate::limits::{char_len, json_size, MAX_POINT_ID_CHARS, MAX_SIGNAL_BYTES, MAX_STATE_BYTES};
use crate::session::{NewPoint, Participant, StoredPoint};

/// A frame a client sends.
///
/// Serializes as `{"type":"point",...point}`, `{"type":"resume","afterSeq":N}`,
/// `{"type":"ping"}` or `{"type":"end"}`. Parse with [`ClientFrame::parse`],
/// which classifies failures for the `error` frame; the `Deserialize` impl
/// applies the same rules but reports every failure as a plain serde error.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ClientFrame {
    /// Record a point; answered by `ack` once durable.
    Point(NewPoint),
    /// Replay stored points with `seq > after_seq`, one page (the server's
    /// `REPLAY_PAGE`) at most, then `resumed`.
    Resume {
        /// The last `seq` the client has seen.
        after_seq: u64,
    },
    /// Keep-alive; answered by `pong`.
    Ping,
    /// End the session (owner only).
    End,
    /// An ephemeral message to every other participant, or to connection
    /// `to` only: never stored, acked or replayed, no points quota.
    Signal {
        /// At most 4 KiB as compact JSON.
        data: Map<String, Value>,
        /// The one connection to deliver to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// The connection's live state, replacing its previous one.
    State {
        /// At most 2 KiB as compact JSON.
        data: Map<String, Value>,
    },
}

/// Why a client frame was refused; each maps to an `error` frame code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Not JSON, or JSON that is not an object: `invalid_json`.
    InvalidJson(String),
    /// An object whose `type` is a string other than the four known ones:
    /// `unknown_type`.
    UnknownType(String),
    /// A missing or non-string `type`, or a known type with a missing,
    /// unknown or wrongly typed field, or a point breaking a rule:
    /// `validation_failed`.
    Invalid(String),
}

impl FrameError {
    /// The code for the `error` frame.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::InvalidJson(_) => ErrorCode::InvalidJson,
            FrameError::UnknownType(_) => ErrorCode::UnknownType,
            FrameError::Invalid(_) => ErrorCode::ValidationFailed,
        }
    }

    /// The message for humans.
    pub fn message(&self) -> &str {
        match self {
            FrameError::InvalidJson(m) | FrameError::UnknownType(m) | FrameError::Invalid(m) => m,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for FrameError {}

impl ClientFrame {
    /// Parses one text frame strictly.
    ///
    /// - not JSON, or JSON but not an object: [`FrameError::InvalidJson`];
    /// - `type` absent or not a string: [`FrameError::Invalid`];
    /// - `type` a string other than `point`, `resume`, `ping`, `end`:
    ///   [`FrameError::UnknownType`], whatever the other fields hold;
    /// - a known type with a missing, unknown or wrongly typed field, or a
    ///   point that fails [`NewPoint`] validation: [`FrameError::Invalid`].
    ///
    /// A JSON `null` counts as absent for the optional point fields (`id`,
    /// `value`, `data`, `ts`), as it does for [`NewPoint`].
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        match first_json_byte(text.as_bytes()) {
            Some(b'{') => {}
            _ => {
                return Err(FrameError::InvalidJson(
                    match serde_json::from_str::<IgnoredAny>(text) {
                        Ok(_) => "a frame must be a JSON object".to_owned(),
                        Err(e) => e.to_string(),
                    },
                ))
            }
        }
        // Happy path: one pass into a struct holding every field of every
        // frame type; which fields the type allows is checked afterwards.
        match serde_json::from_str::<RawFrame>(text) {
            Ok(raw) => raw.into_frame(),
            Err(e) if is_not_json(text, &e) => Err(FrameError::InvalidJson(e.to_string())),
            Err(e) => Err(explain_data_error(text, e)),
        }
    }

    /// The client point `id` a frame carries, for the `ref` of an `error`
    /// frame about it: `Some` only for an object with `"type":"point"` and a
    /// string `id` of 1-64 characters. Meant for the error path; it parses
    /// the text again.
    pub fn point_ref(text: &str) -> Option<String> {
        let probe: RefProbe = serde_json::from_str(text).ok()?;
        match (probe.ty, probe.id) {
            (Some(FrameType::Point), Some(Value::String(id)))
                if (1..=MAX_POINT_ID_CHARS).contains(&char_len(&id)) =>
            {
                Some(id)
            }
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for ClientFrame {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Via deserialize_map so that a JSON array is refused, where a
        // derived struct would accept fields by position.
        struct FrameVisitor;

        impl<'de> de::Visitor<'de> for FrameVisitor {
            type Value = ClientFrame;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a client frame object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ClientFrame, A::Error> {
                let raw = RawFrame::deserialize(MapAccessDeserializer::new(map))?;
                raw.into_frame().map_err(|e| de::Error::custom(e.message()))
            }
        }

        deserializer.deserialize_map(FrameVisitor)
    }
}

/// The `type` of a client frame, read without allocating for known names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FrameType {
    Point,
    Resume,
    Ping,
    End,
    Signal,
    State,
    Other(String),
}

impl FrameType {
    /// The wire name of a known type.
    fn name(&self) -> &str {
        match self {
            FrameType::Point => "point",
            FrameType::Resume => "resume",
            FrameType::Ping => "ping",
            FrameType::End => "end",
            FrameType::Signal => "signal",
            FrameType::State => "state",
            FrameType::Other(name) => name,
        }
    }
}

impl<'de> Deserialize<'de> for FrameType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TypeVisitor;

        impl de::Visitor<'_> for TypeVisitor {
            type Value = FrameType;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a frame type string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<FrameType, E> {
                Ok(match v {
                    "point" => FrameType::Point,
                    "resume" => FrameType::Resume,
                    "ping" => FrameType::Ping,
                    "end" => FrameType::End,
                    "signal" => FrameType::Signal,
                    "state" => FrameType::State,
                    other => FrameType::Other(other.to_owned()),
                })
            }
        }

        deserializer.deserialize_str(TypeVisitor)
    }
}

/// Reads a field that is present, so that `null` (`Some(None)`) can be told
/// apart from absent (`None`, via `#[serde(default)]`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Every field any client frame may carry. `Some(None)` is an explicit
/// `null`; `None` is absent.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawFrame {
    #[serde(rename = "type", default, deserialize_with = "present")]
    ty: Option<FrameType>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    kind: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    value: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Option<Map<String, Value>>>,
    #[serde(default, deserialize_with = "present")]
    ts: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    after_seq: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    to: Option<Option<String>>,
}

/// Fields of each known frame type besides `type`, as serde would list them.
const POINT_FIELDS: &str = "one of `type`, `id`, `kind`, `value`, `data`, `ts`";
const RESUME_FIELDS: &str = "`type` or `afterSeq`";
const BARE_FIELDS: &str = "`type`";
const SIGNAL_FIELDS: &str = "one of `type`, `data`, `to`";
const STATE_FIELDS: &str = "`type` or `data`";

impl RawFrame {
    /// Checks the fields against the frame type and builds the frame.
    fn into_frame(self) -> Result<ClientFrame, FrameError> {
        let ty = match self.ty {
            None => return Err(FrameError::Invalid("missing field `type`".to_owned())),
            Some(FrameType::Other(name)) => return Err(unknown_type(&name)),
            Some(ty) => ty,
        };
        let point_fields = [
            ("id", self.id.is_some()),
            ("kind", self.kind.is_some()),
            ("value", self.value.is_some()),
            ("data", self.data.is_some()),
            ("ts", self.ts.is_some()),
        ];
        let unknown = |field: &str, expected: &str| {
            FrameError::Invalid(format!(
                "unknown field `{field}` in a `{}` frame, expected {expected}",
                ty.name()
            ))
        };
        if self.to.is_some() && ty != FrameType::Signal {
            let expected = match ty {
                FrameType::Point => POINT_FIELDS,
                FrameType::Resume => RESUME_FIELDS,
                FrameType::State => STATE_FIELDS,
                _ => BARE_FIELDS,
            };
            return Err(unknown("to", expected));
        }
        match ty {
            FrameType::Signal | FrameType::State => {
                let expected = if ty == FrameType::Signal {
                    SIGNAL_FIELDS
                } else {
                    STATE_FIELDS
                };
                let others = [
                    ("id", self.id.is_some()),
                    ("kind", self.kind.is_some()),
                    ("value", self.value.is_some()),
                    ("ts", self.ts.is_some()),
                    ("afterSeq", self.after_seq.is_some()),
                ];
                if let Some((field, _)) = others.iter().find(|(_, set)| *set) {
                    return Err(unknown(field, expected));
                }
                let data = match self.data {
                    Some(Some(data)) => data,
                    Some(None) => {
                        return Err(FrameError::Invalid(
                            "invalid type: null, expected an object for `data`".to_owned(),
                        ))
                    }
                    None => return Err(FrameError::Invalid("missing field `data`".to_owned())),
                };
                let max = if ty == FrameType::Signal {
                    MAX_SIGNAL_BYTES
                } else {
                    MAX_STATE_BYTES
                };
                if json_size(&data) > max {
                    return Err(FrameError::Invalid(format!(
                        "data must be at most {max} bytes as compact JSON"
                    )));
                }
                if ty == FrameType::State {
                    return Ok(ClientFrame::State { data });
                }
                let to = match self.to {
                    Some(Some(to)) if !to.is_empty() => Some(to),
                    Some(_) => {
                        return Err(FrameError::Invalid(
                            "`to` must be a connection id".to_owned(),
                        ))
                    }
                    None => None,
                };
                Ok(ClientFrame::Signal { data, to })
            }
            FrameType::Point => {
                if self.after_seq.is_some() {
                    return Err(unknown("afterSeq", POINT_FIELDS));
                }
                let kind = match self.kind {
                    Some(Some(kind)) => kind,
                    Some(None) => {
                        return Err(FrameError::Invalid(
                            "invalid type: null, expected a string for `kind`".to_owned(),
                        ))
                    }
                    None => return Err(FrameError::Invalid("missing field `kind`".to_owned())),
                };
                let point = NewPoint {
                    id: self.id.flatten(),
                    kind,
                    value: self.value.flatten(),
                    data: self.data.flatten(),
                    ts: self.ts.flatten(),
                };
                point.validate().map_err(FrameError::Invalid)?;
                Ok(ClientFrame::Point(point))
            }
            FrameType::Resume => {
                if let Some((field, _)) = point_fields.iter().find(|(_, set)| *set) {
                    return Err(unknown(field, RESUME_FIELDS));
                }
                match self.after_seq {
                    Some(Some(after_seq)) => Ok(ClientFrame::Resume { after_seq }),
                    Some(None) => Err(FrameError::Invalid(
                        "invalid type: null, expected u64 for `afterSeq`".to_owned(),
                    )),
                    None => Err(FrameError::Invalid("missing field `afterSeq`".to_owned())),
                }
            }
            FrameType::Ping | FrameType::End => {
                if let Some((field, _)) = point_fields.iter().find(|(_, set)| *set) {
                    return Err(unknown(field, BARE_FIELDS));
                }
                if self.after_seq.is_some() {
                    return Err(unknown("afterSeq", BARE_FIELDS));
                }
                Ok(if ty == FrameType::Ping {
                    ClientFrame::Ping
                } else {
                    ClientFrame::End
                })
            }
            FrameType::Other(name) => Err(unknown_type(&name)),
        }
    }
}

/// The error for a `type` that is not one of the four.
fn unknown_type(name: &str) -> FrameError {
    // A hostile client could send a huge type name; the message quotes a
    // bounded prefix of it.
    const QUOTED_CHARS: usize = 64;
    let mut quoted: String = name.chars().take(QUOTED_CHARS).collect();
    if quoted.len() < name.len() {
        quoted.push('…');
    }
    FrameError::UnknownType(format!(
        "unknown frame type `{quoted}`, expected one of `point`, `resume`, `ping`, `end`, `signal`, `state`"
    ))
}

/// Just the `type` of a frame, ignoring every other field.
#[derive(Deserialize)]
struct TypeProbe {
    #[serde(rename = "type", default, deserialize_with = "present")]
    ty: Option<FrameType>,
}

/// The `type` and raw `id` of a frame, for [`ClientFrame::point_ref`].
#[derive(Deserialize)]
struct RefProbe {
    #[serde(rename = "type", default, deserialize_with = "present")]
    ty: Option<FrameType>,
    #[serde(default)]
    id: Option<Value>,
}

/// A `point` frame with exactly its own fields, for precise messages.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // read only for the errors it reports
struct StrictPoint {
    #[serde(rename = "type")]
    ty: IgnoredAny,
    id: Option<String>,
    kind: String,
    value: Option<f64>,
    data: Option<Map<String, Value>>,
    ts: Option<i64>,
}

/// A `resume` frame with exactly its own fields, for precise messages.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // read only for the errors it reports
struct StrictResume {
    #[serde(rename = "type")]
    ty: IgnoredAny,
    after_seq: u64,
}

/// A `signal` frame with exactly its own fields, for precise messages.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read only for the errors it reports
struct StrictSignal {
    #[serde(rename = "type")]
    ty: IgnoredAny,
    data: Map<String, Value>,
    to: Option<String>,
}

/// A `state` frame with exactly its own fields, for precise messages.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read only for the errors it reports
struct StrictState {
    #[serde(rename = "type")]
    ty: IgnoredAny,
    data: Map<String, Value>,
}

/// A `ping` or `end` frame: nothing but `type`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read only for the errors it reports
struct StrictBare {
    #[serde(rename = "type")]
    ty: IgnoredAny,
}

/// Classifies a frame that is a JSON object but did not fit [`RawFrame`].
/// Runs only on the error path, so it may parse the text again.
fn explain_data_error(text: &str, original: serde_json::Error) -> FrameError {
    let ty = match serde_json::from_str::<TypeProbe>(text) {
        Ok(TypeProbe { ty: Some(ty) }) => ty,
        Ok(TypeProbe { ty: None }) => {
            return FrameError::Invalid("missing field `type`".to_owned())
        }
        Err(e) => return FrameError::Invalid(shape_message(&e)),
    };
    // Re-parse against the known type's own fields so that the message lists
    // what that type accepts, not the union of all frame fields.
    let strict = match ty {
        FrameType::Other(name) => return unknown_type(&name),
        FrameType::Point => serde_json::from_str::<StrictPoint>(text).err(),
        FrameType::Resume => serde_json::from_str::<StrictResume>(text).err(),
        FrameType::Ping | FrameType::End => serde_json::from_str::<StrictBare>(text).err(),
        FrameType::Signal => serde_json::from_str::<StrictSignal>(text).err(),
        FrameType::State => serde_json::from_str::<StrictState>(text).err(),
    };
    FrameError::Invalid(shape_message(&strict.unwrap_or(original)))
}

/// A frame the server sends. Deserializing is strict: an unknown `type`
/// or an unknown field is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    remote = "Self",
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum ServerFrame {
    /// First frame on join.
    Welcome {
        /// The session joined.
        session_id: String,
        /// This connection's id.
        conn_id: String,
        /// The authenticated user.
        user_id: String,
        /// The session's latest `seq`.
        last_seq: u64,
        /// The session's live connections.
        participants: Vec<Participant>,
    },
    /// Someone else joined: `{"type":"joined","connId","userId","joinedAt"}`.
    Joined(Participant),
    /// Someone else's connection closed.
    Left {
        /// The connection that closed.
        conn_id: String,
        /// Its user.
        user_id: String,
    },
    /// A point recorded by another participant, or replayed after `resume`.
    Point(StoredPoint),
    /// The sender's point is durable.
    Ack {
        /// The client `id` of the point, when it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Its `seq` (the first one, for a repeated `id`).
        seq: u64,
    },
    /// A replay page asked for by `resume` is complete.
    Resumed {
        /// The session's latest `seq`.
        last_seq: u64,
        /// The last `seq` replayed, or the request's `afterSeq` when none was.
        through_seq: u64,
        /// Stored points remain after `through_seq`: send `resume` again
        /// from there.
        more: bool,
    },
    /// Answer to `ping`.
    // Serde ignores extra fields of a unit variant in an internally tagged
    // enum; this keeps `{"type":"pong","x":1}` an error like everywhere else.
    #[serde(deserialize_with = "no_fields")]
    Pong,
    /// Something went wrong; the connection stays open unless a close follows.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Explanation for humans.
        message: String,
        /// The client point `id` the error is about, when known.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
        /// For `rate_limited`: how long to wait before sending again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The session ended; the server closes with 1000 next.
    Ended {
        /// The final `seq`.
        last_seq: u64,
    },
    /// The session's membership changed (every participant gets it).
    Members {
        /// The writers besides the owner.
        members: Vec<String>,
        /// The viewers.
        viewers: Vec<String>,
    },
    /// The receiving user was removed from the session; the server closes
    /// with 1008 next and sends nothing more.
    #[serde(deserialize_with = "no_fields")]
    Removed,
    /// Another participant's ephemeral message.
    Signal {
        /// The sending connection.
        from: String,
        /// Its user.
        user_id: String,
        /// What it sent.
        data: Map<String, Value>,
    },
    /// Another participant's live state changed.
    State {
        /// The connection.
        conn_id: String,
        /// Its user.
        user_id: String,
        /// The new state.
        data: Map<String, Value>,
    },
}

object_only!(ServerFrame: "a server frame object");

/// Accepts only an empty object: the rest of a frame that has no fields.
fn no_fields<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoFields {}

    NoFields::deserialize(deserializer).map(|NoFields {}| ())
}

impl ServerFrame {
    /// An `error` frame with no `ref` and no `retryAfterMs`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            code,
            message: message.into(),
            r#ref: None,
            retry_after_ms: None,
        }
    }

    /// The `error` frame answering a client frame `text` that
    /// [`ClientFrame::parse`] refused with `err`; `ref` is the point id the
    /// frame carried, if any.
    pub fn from_frame_error(err: &FrameError, text: &str) -> Self {
        ServerFrame::Error {
            code: err.code(),
            message: err.message().to_owned(),
            r#ref: ClientFrame::point_ref(text),
            retry_after_ms: None,
        }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Every field serializes infallibly (string keys, finite or `null`
        // numbers); the fallback only keeps this total.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"internal error"}"#.to_owned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{MAX_SIGNAL_BYTES, MAX_STATE_BYTES};
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn invalid(text: &str) -> String {
        match ClientFrame::parse(text) {
            Err(FrameError::Invalid(m)) => m,
            other => panic!("{text}: expected Invalid, got {other:?}"),
        }
    }

    fn unknown(text: &str) -> String {
        match ClientFrame::parse(text) {
            Err(FrameError::UnknownType(m)) => m,
            other => panic!("{text}: expected UnknownType, got {other:?}"),
        }
    }

    fn not_json(text: &str) -> String {
        match ClientFrame::parse(text) {
            Err(FrameError::InvalidJson(m)) => m,
            other => panic!("{text}: expected InvalidJson, got {other:?}"),
        }
    }

    fn full_point() -> NewPoint {
        NewPoint {
            id: Some("p-1".into()),
            kind: "hr".into(),
            value: Some(-0.25),
            data: match json!({"a": {"b": [1, "two", null]}}) {
                Value::Object(m) => Some(m),
                _ => None,
            },
            ts: Some(1_730_000_000_000),
        }
    }

    fn participant() -> Participant {
        Participant {
            conn_id: "c-1".into(),
            user_id: "alice".into(),
            joined_at: "2024-10-27T03:33:20Z".into(),
            state: None,
        }
    }

    #[test]
    fn client_frames_round_trip() {
        for frame in [
            ClientFrame::Point(full_point()),
            ClientFrame::Point(NewPoint::new("tap")),
            ClientFrame::Resume { after_seq: 0 },
            ClientFrame::Resume {
                after_seq: u64::MAX,
            },
            ClientFrame::Ping,
            ClientFrame::End,
        ] {
            let text = serde_json::to_string(&frame).expect("serialize");
            assert_eq!(ClientFrame::parse(&text), Ok(frame.clone()), "{text}");
            let via_serde: ClientFrame = serde_json::from_str(&text).expect("deserialize");
            assert_eq!(via_serde, frame);
        }
    }

    #[test]
    fn client_frame_wire_shapes() {
        let wire = |f: &ClientFrame| serde_json::to_string(f).expect("serialize");
        assert_eq!(
            wire(&ClientFrame::Point(NewPoint::new("tap"))),
            r#"{"type":"point","kind":"tap"}"#
        );
        assert_eq!(
            wire(&ClientFrame::Resume { after_seq: 4 }),
            r#"{"type":"resume","afterSeq":4}"#
        );
        assert_eq!(wire(&ClientFrame::Ping), r#"{"type":"ping"}"#);
        assert_eq!(wire(&ClientFrame::End), r#"{"type":"end"}"#);
    }

    #[test]
    fn field_order_and_whitespace_do_not_matter() {
        assert_eq!(
            ClientFrame::parse(" {\"kind\":\"k\",\n\"ts\":1730000000000, \"type\":\"point\"} "),
            Ok(ClientFrame::Point(NewPoint {
                ts: Some(1_730_000_000_000),
                ..NewPoint::new("k")
            }))
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"p\u006fint","kind":"k","value":null,"id":null}"#),
            Ok(ClientFrame::Point(NewPoint::new("k")))
        );
    }

    #[test]
    fn unknown_type_wins_over_odd_fields() {
        assert!(unknown(r#"{"type":"dance"}"#).contains("`dance`"));
        assert!(unknown(r#"{"type":"Point","kind":"k"}"#).contains("`Point`"));
        unknown(r#"{"type":"dance","kind":5,"whatever":[1]}"#);
        unknown(r#"{"kind":5,"type":"dance"}"#);
        let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(10_000));
        assert!(unknown(&long).len() < 200);
    }

    #[test]
    fn missing_or_non_string_type_is_invalid() {
        assert_eq!(invalid(r#"{"kind":"k"}"#), "missing field `type`");
        assert_eq!(invalid(r#"{}"#), "missing field `type`");
        assert_eq!(invalid(r#"{"kind":5}"#), "missing field `type`");
        assert!(invalid(r#"{"type":5}"#).contains("invalid type"));
        assert!(invalid(r#"{"type":null}"#).contains("invalid type"));
        assert!(invalid(r#"{"type":"ping","type":"ping"}"#).contains("duplicate field"));
    }

    #[test]
    fn unknown_fields_are_invalid() {
        assert!(invalid(r#"{"type":"point","kind":"k","colour":"red"}"#)
            .contains("unknown field `colour`"));
        assert!(invalid(r#"{"type":"ping","kind":"k"}"#).contains("unknown field `kind`"));
        assert!(invalid(r#"{"type":"ping","kind":null}"#).contains("unknown field `kind`"));
        assert!(invalid(r#"{"type":"end","afterSeq":1}"#).contains("unknown field `afterSeq`"));
        assert!(invalid(r#"{"type":"resume","afterSeq":1,"ts":1}"#).contains("unknown field `ts`"));
        assert!(invalid(r#"{"type":"point","kind":"k","afterSeq":1}"#)
            .contains("unknown field `afterSeq`"));
        // The message lists the type's own fields, not every frame field.
        let m = invalid(r#"{"type":"ping","x":1}"#);
        assert!(m.contains("unknown field `x`, expected `type`"), "{m}");
    }

    #[test]
    fn wrongly_typed_fields_are_invalid() {
        assert!(invalid(r#"{"type":"point","kind":5}"#).contains("invalid type"));
        assert!(invalid(r#"{"type":"point","kind":"k","data":[1]}"#).contains("invalid type"));
        assert!(invalid(r#"{"type":"point","kind":"k","data":"x"}"#).contains("invalid type"));
        assert!(invalid(r#"{"type":"point","kind":"k","ts":1.5}"#).contains("invalid type"));
        assert!(invalid(r#"{"type":"point","kind":"k","value":"1"}"#).contains("invalid type"));
        assert!(invalid(r#"{"type":"point","kind":"k","id":7}"#).contains("invalid type"));
        assert!(invalid(r#"{"type":"point","kind":null}"#).contains("null"));
        assert!(invalid(r#"{"type":"point","kind":"k","value":1e400}"#).contains("out of range"));
    }

    #[test]
    fn point_rules_are_enforced() {
        assert_eq!(invalid(r#"{"type":"point"}"#), "missing field `kind`");
        assert_eq!(
            invalid(r#"{"type":"point","kind":""}"#),
            "kind must be 1-64 characters"
        );
        let kind65 = format!(r#"{{"type":"point","kind":"{}"}}"#, "k".repeat(65));
        assert_eq!(invalid(&kind65), "kind must be 1-64 characters");
        let kind64 = format!(r#"{{"type":"point","kind":"{}"}}"#, "é".repeat(64));
        assert!(ClientFrame::parse(&kind64).is_ok());
        let id65 = format!(r#"{{"type":"point","kind":"k","id":"{}"}}"#, "i".repeat(65));
        assert_eq!(invalid(&id65), "id must be 1-64 characters");
        assert!(invalid(r#"{"type":"point","kind":"k","ts":-1}"#).contains("ts"));
        let big = format!(
            r#"{{"type":"point","kind":"k","data":{{"k":"{}"}}}}"#,
            "x".repeat(16 * 1024)
        );
        assert!(invalid(&big).contains("data must be at most 16384 bytes"));
        let fits = format!(
            r#"{{"type":"point","kind":"k","data":{{"k":"{}"}}}}"#,
            "x".repeat(16 * 1024 - 8)
        );
        assert!(ClientFrame::parse(&fits).is_ok());
    }

    #[test]
    fn resume_needs_a_non_negative_after_seq() {
        assert_eq!(invalid(r#"{"type":"resume"}"#), "missing field `afterSeq`");
        assert!(invalid(r#"{"type":"resume","afterSeq":-1}"#).contains("invalid value"));
        assert!(invalid(r#"{"type":"resume","afterSeq":"3"}"#).contains("invalid type"));
        assert!(invalid(r#"{"type":"resume","afterSeq":1.0}"#).contains("invalid type"));
        assert!(invalid(r#"{"type":"resume","afterSeq":null}"#).contains("null"));
        assert!(invalid(r#"{"type":"resume","after_seq":3}"#).contains("unknown field"));
    }

    #[test]
    fn non_json_and_non_objects_are_invalid_json() {
        assert!(!not_json("").is_empty());
        not_json("hello");
        not_json(r#"{"type":"ping""#);
        not_json(r#"{"type":"ping"} extra"#);
        not_json(r#"{'type':'ping'}"#);
        assert_eq!(not_json(r#"["ping"]"#), "a frame must be a JSON object");
        assert_eq!(not_json(r#""ping""#), "a frame must be a JSON object");
        assert_eq!(not_json("42"), "a frame must be a JSON object");
        assert_eq!(not_json("null"), "a frame must be a JSON object");
    }

    #[test]
    fn frame_error_codes() {
        assert_eq!(
            FrameError::InvalidJson(String::new()).code(),
            ErrorCode::InvalidJson
        );
        assert_eq!(
            FrameError::UnknownType(String::new()).code(),
            ErrorCode::UnknownType
        );
        assert_eq!(
            FrameError::Invalid("m".into()).code(),
            ErrorCode::ValidationFailed
        );
        assert_eq!(FrameError::Invalid("m".into()).message(), "m");
    }

    #[test]
    fn serde_deserialize_is_as_strict_as_parse() {
        for bad in [
            r#"["point","k"]"#,
            r#"{"type":"dance"}"#,
            r#"{"type":"ping","x":1}"#,
            r#"{"type":"point","kind":""}"#,
            r#"{"type":"resume"}"#,
        ] {
            assert!(serde_json::from_str::<ClientFrame>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn point_ref_is_the_client_point_id() {
        assert_eq!(
            ClientFrame::point_ref(r#"{"type":"point","id":"a1","kind":""}"#).as_deref(),
            Some("a1")
        );
        assert_eq!(
            ClientFrame::point_ref(r#"{"type":"point","id":"a1","kind":5,"x":[]}"#).as_deref(),
            Some("a1")
        );
        assert_eq!(ClientFrame::point_ref(r#"{"type":"point","id":5}"#), None);
        assert_eq!(ClientFrame::point_ref(r#"{"type":"ping","id":"a1"}"#), None);
        assert_eq!(ClientFrame::point_ref("nope"), None);
        let long = format!(r#"{{"type":"point","id":"{}"}}"#, "i".repeat(65));
        assert_eq!(ClientFrame::point_ref(&long), None);

        let text = r#"{"type":"point","id":"a1","kind":""}"#;
        let err = ClientFrame::parse(text).expect_err("empty kind");
        assert_eq!(
            ServerFrame::from_frame_error(&err, text).to_json(),
            r#"{"type":"error","code":"validation_failed","message":"kind must be 1-64 characters","ref":"a1"}"#
        );
    }

    fn all_server_frames() -> Vec<ServerFrame> {
        vec![
            ServerFrame::Welcome {
                session_id: "0192cc09-1400-7e5f-8a6b-7c8d9e0f1a2b".into(),
                conn_id: "c-1".into(),
                user_id: "alice".into(),
                last_seq: 12,
                participants: vec![participant()],
            },
            ServerFrame::Joined(participant()),
            ServerFrame::Left {
                conn_id: "c-2".into(),
                user_id: "bob".into(),
            },
            ServerFrame::Point(full_point().into_stored(3, "bob", 0)),
            ServerFrame::Point(NewPoint::new("tap").into_stored(4, "bob", 77)),
            ServerFrame::Ack {
                id: Some("p-1".into()),
                seq: 3,
            },
            ServerFrame::Ack { id: None, seq: 4 },
            ServerFrame::Resumed {
                last_seq: 4,
                through_seq: 4,
                more: false,
            },
            ServerFrame::Resumed {
                last_seq: 2_500,
                through_seq: 1_000,
                more: true,
            },
            ServerFrame::Pong,
            ServerFrame::error(ErrorCode::UnknownType, "unknown frame type"),
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                r#ref: Some("p-9".into()),
                retry_after_ms: Some(250),
            },
            ServerFrame::Ended { last_seq: 4 },
        ]
    }

    #[test]
    fn server_frames_round_trip() {
        for frame in all_server_frames() {
            let text = frame.to_json();
            let back: ServerFrame = serde_json::from_str(&text).expect("parse");
            assert_eq!(back, frame, "{text}");
        }
    }

    #[test]
    fn server_frame_wire_shapes() {
        let frames = all_server_frames();
        let wire: Vec<String> = frames.iter().map(ServerFrame::to_json).collect();
        assert_eq!(
            wire[0],
            r#"{"type":"welcome","sessionId":"0192cc09-1400-7e5f-8a6b-7c8d9e0f1a2b","connId":"c-1","userId":"alice","lastSeq":12,"participants":[{"connId":"c-1","userId":"alice","joinedAt":"2024-10-27T03:33:20Z","state":null}]}"#
        );
        assert_eq!(
            wire[1],
            r#"{"type":"joined","connId":"c-1","userId":"alice","joinedAt":"2024-10-27T03:33:20Z","state":null}"#
        );
        assert_eq!(wire[2], r#"{"type":"left","connId":"c-2","userId":"bob"}"#);
        assert_eq!(
            wire[4],
            r#"{"type":"point","seq":4,"userId":"bob","kind":"tap","ts":77}"#
        );
        assert_eq!(wire[5], r#"{"type":"ack","id":"p-1","seq":3}"#);
        assert_eq!(wire[6], r#"{"type":"ack","seq":4}"#);
        assert_eq!(
            wire[7],
            r#"{"type":"resumed","lastSeq":4,"throughSeq":4,"more":false}"#
        );
        assert_eq!(
            wire[8],
            r#"{"type":"resumed","lastSeq":2500,"throughSeq":1000,"more":true}"#
        );
        assert_eq!(wire[9], r#"{"type":"pong"}"#);
        assert_eq!(
            wire[10],
            r#"{"type":"error","code":"unknown_type","message":"unknown frame type"}"#
        );
        assert_eq!(
            wire[11],
            r#"{"type":"error","code":"rate_limited","message":"slow down","ref":"p-9","retryAfterMs":250}"#
        );
        assert_eq!(wire[12], r#"{"type":"ended","lastSeq":4}"#);
    }

    #[test]
    fn server_frame_parsing_is_strict() {
        for bad in [
            r#"{"type":"hello"}"#,
            r#"{"seq":1}"#,
            r#"{"type":"ack","seq":1,"extra":true}"#,
            r#"{"type":"ack","seq":-1}"#,
            r#"{"type":"joined","connId":"c","userId":"u","joinedAt":"t","x":1}"#,
            r#"{"type":"point","seq":1,"userId":"u","kind":"k","ts":1,"x":1}"#,
            r#"{"type":"error","code":"oops","message":"m"}"#,
            r#"{"type":"resumed"}"#,
            r#"{"type":"resumed","lastSeq":4}"#,
            r#"{"type":"resumed","lastSeq":4,"throughSeq":4,"more":"no"}"#,
            r#"{"type":"resumed","lastSeq":4,"throughSeq":4,"more":false,"x":1}"#,
            r#"{"type":"pong","x":1}"#,
            r#"["pong"]"#,
            r#"["ack",null,1]"#,
            r#"{"type":"joined","connId":"c","userId":"u"}"#,
        ] {
            assert!(serde_json::from_str::<ServerFrame>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signal_and_state_frames_parse_strictly() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"signal","data":{"x":1}}"#),
            Ok(ClientFrame::Signal {
                data: obj(json!({"x": 1})),
                to: None
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"signal","data":{},"to":"c-2"}"#),
            Ok(ClientFrame::Signal {
                data: Map::new(),
                to: Some("c-2".into())
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"state","data":{"typing":true}}"#),
            Ok(ClientFrame::State {
                data: obj(json!({"typing": true}))
            })
        );
        for frame in [
            ClientFrame::Signal {
                data: obj(json!({"a": [1]})),
                to: Some("c".into()),
            },
            ClientFrame::State { data: Map::new() },
        ] {
            let text = serde_json::to_string(&frame).expect("serialize");
            assert_eq!(ClientFrame::parse(&text), Ok(frame.clone()));
            let back: ClientFrame = serde_json::from_str(&text).expect("deserialize");
            assert_eq!(back, frame);
        }
        assert!(invalid(r#"{"type":"signal"}"#).contains("missing field `data`"));
        assert!(invalid(r#"{"type":"signal","data":null}"#).contains("null"));
        invalid(r#"{"type":"signal","data":[1]}"#);
        assert!(invalid(r#"{"type":"state","data":{},"to":"c"}"#).contains("`to`"));
        assert!(invalid(r#"{"type":"point","kind":"k","to":"c"}"#).contains("`to`"));
        assert!(invalid(r#"{"type":"signal","data":{},"kind":"k"}"#).contains("`kind`"));
        assert!(invalid(r#"{"type":"signal","data":{},"to":""}"#).contains("`to`"));
        let big = "x".repeat(MAX_SIGNAL_BYTES);
        assert!(
            invalid(&format!(r#"{{"type":"signal","data":{{"k":"{big}"}}}}"#))
                .contains("4096 bytes")
        );
        let big = "x".repeat(MAX_STATE_BYTES);
        assert!(
            invalid(&format!(r#"{{"type":"state","data":{{"k":"{big}"}}}}"#))
                .contains("2048 bytes")
        );
        let fits = "x".repeat(MAX_STATE_BYTES - 8);
        assert!(
            ClientFrame::parse(&format!(r#"{{"type":"state","data":{{"k":"{fits}"}}}}"#)).is_ok()
        );
    }

    #[test]
    fn members_removed_signal_and_state_server_frames_round_trip() {
        let frames = [
            ServerFrame::Members {
                members: vec!["bob".into()],
                viewers: vec!["vic".into()],
            },
            ServerFrame::Removed,
            ServerFrame::Signal {
                from: "c-1".into(),
                user_id: "bob".into(),
                data: obj(json!({"cursor": [1, 2]})),
            },
            ServerFrame::State {
                conn_id: "c-1".into(),
                user_id: "bob".into(),
                data: Map::new(),
            },
        ];
        for f in frames {
            let text = f.to_json();
            let back: ServerFrame = serde_json::from_str(&text).expect(&text);
            assert_eq!(back, f);
        }
        assert_eq!(ServerFrame::Removed.to_json(), r#"{"type":"removed"}"#);
        assert!(serde_json::from_str::<ServerFrame>(r#"{"type":"removed","x":1}"#).is_err());
        assert!(serde_json::from_str::<ServerFrame>(
            r#"{"type":"members","members":[],"viewers":[],"x":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<ServerFrame>(
            r#"{"type":"signal","from":"c","userId":"u","data":{},"to":"d"}"#
        )
        .is_err());
    }
}
