//! Sessions and points (CONTRACT.md section 5).

use std::collections::BTreeMap;

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::Validate;
use crate::ids::is_valid_user_id;
use crate::limits::{
    char_len, json_size, MAX_DATA_BYTES, MAX_KIND_CHARS, MAX_MEMBERS, MAX_METADATA_BYTES,
    MAX_POINTS_PER_BATCH, MAX_POINT_ID_CHARS, MAX_POINT_TS, MAX_TITLE_CHARS, MIN_POINT_TS,
};

/// Body of `POST /v1/sessions`. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSession {
    /// Title, at most 200 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// User ids allowed in besides the owner, at most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
    /// User ids who may join, read and replay but write nothing; disjoint
    /// from `members` and together with them at most 100 distinct ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewers: Option<Vec<String>>,
    /// Free-form object, at most 16 KiB as compact JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

impl Validate for CreateSession {
    fn validate(&self) -> Result<(), String> {
        if let Some(title) = &self.title {
            if char_len(title) > MAX_TITLE_CHARS {
                return Err(format!(
                    "title must be at most {MAX_TITLE_CHARS} characters"
                ));
            }
        }
        let members = self.members.as_deref().unwrap_or_default();
        let viewers = self.viewers.as_deref().unwrap_or_default();
        for (field, list) in [("members", members), ("viewers", viewers)] {
            if let Some(i) = list.iter().position(|m| !is_valid_user_id(m)) {
                return Err(format!(
                    "{field}[{i}] is not a valid user id (1-128 characters of A-Z a-z 0-9 _ . : @ -)"
                ));
            }
        }
        if let Some(v) = viewers.iter().find(|v| members.contains(v)) {
            return Err(format!(
                "user {v} is in both members and viewers; a user has one role"
            ));
        }
        let mut distinct: Vec<&String> = members.iter().chain(viewers).collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() > MAX_MEMBERS {
            return Err(format!(
                "members and viewers must list at most {MAX_MEMBERS} distinct user ids together"
            ));
        }
        if let Some(metadata) = &self.metadata {
            if json_size(metadata) > MAX_METADATA_BYTES {
                return Err(format!(
                    "metadata must be at most {MAX_METADATA_BYTES} bytes as compact JSON"
                ));
            }
        }
        Ok(())
    }
}

/// Whether a session still takes participants and points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    /// `"active"`: open for joins and points.
    Active,
    /// `"ended"`: closed by its owner; read-only.
    Ended,
}

impl SessionStatus {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Active => "active",
            SessionStatus::Ended => "ended",
        }
    }
}

/// A live WebSocket connection in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct Participant {
    /// Server-chosen id of the connection.
    pub conn_id: String,
    /// Who is connected.
    pub user_id: String,
    /// When the connection joined, RFC 3339 UTC.
    pub joined_at: String,
    /// The connection's live state (a `state` frame's `data`), `null`
    /// until it sends one.
    #[serde(default)]
    pub state: Option<Map<String, Value>>,
}

/// A member's role, the body of `PUT /v1/sessions/{id}/members/{userId}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `"writer"`: joins, reads and sends points (listed in `members`).
    Writer,
    /// `"viewer"`: joins and reads, writes nothing (listed in `viewers`).
    Viewer,
}

/// Body of `PUT /v1/sessions/{id}/members/{userId}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct SetMember {
    /// The role the user gets.
    pub role: Role,
}

impl Validate for SetMember {
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The session record: the session object of the HTTP API without its
/// live `participants`. It is one row type for every place a session is
/// read or written as a whole: the sessions listed by `GET /v1/sessions`
/// (its `stats` as the session had them at its last flush to D1), the row
/// a flush writes to D1, the session line of an archive and of an export,
/// and the core of [`Session`].
///
/// Its JSON is an object with exactly these fields (unknown or repeated
/// ones are refused); [`Session`] writes and reads the same fields with
/// `participants` between `lastSeq` and `stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSummary {
    /// Session id (UUID, lowercase).
    pub id: String,
    /// The user who created it.
    pub owner_id: String,
    /// Title; `null` on the wire when there is none.
    pub title: Option<String>,
    /// Writers: user ids allowed in besides the owner who send points.
    pub members: Vec<String>,
    /// Viewers: user ids who join and read but write nothing (`[]` when
    /// none; a record written before viewers existed reads as `[]`).
    pub viewers: Vec<String>,
    /// Free-form object given at creation (`{}` when none).
    pub metadata: Map<String, Value>,
    /// Active or ended.
    pub status: SessionStatus,
    /// Creation time, RFC 3339 UTC.
    pub started_at: String,
    /// End time, RFC 3339 UTC; absent while active.
    pub ended_at: Option<String>,
    /// Points recorded so far.
    pub point_count: u64,
    /// Highest `seq` so far (0 before the first point); seqs have no gaps,
    /// so it equals `pointCount`.
    pub last_seq: u64,
    /// Figures per point `kind`, over the points that carry a `value`
    /// (`{}` when none did).
    pub stats: BTreeMap<String, KindStats>,
}

impl SessionSummary {
    /// True when `user_id` is the owner, a writer or a viewer.
    pub fn is_member(&self, user_id: &str) -> bool {
        self.owner_id == user_id
            || self.members.iter().any(|m| m == user_id)
            || self.viewers.iter().any(|m| m == user_id)
    }
}

/// The session object of the HTTP API (`GET /v1/sessions/{id}`, the
/// creation's and the end's answers): the record and its live connections.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Everything but the participants. In a session object `stats` may be
    /// absent (answers that predate it); it then reads as `{}`.
    pub summary: SessionSummary,
    /// Live connections.
    pub participants: Vec<Participant>,
}

impl Session {
    /// True when `user_id` is the owner or one of the members.
    pub fn is_member(&self, user_id: &str) -> bool {
        self.summary.is_member(user_id)
    }
}

// The record's fields in wire order; a session object has `participants`
// after `lastSeq`. Written out by hand because serde's `flatten` does not
// combine with `deny_unknown_fields`.
const SUMMARY_FIELDS: &[&str] = &[
    "id",
    "ownerId",
    "title",
    "members",
    "viewers",
    "metadata",
    "status",
    "startedAt",
    "endedAt",
    "pointCount",
    "lastSeq",
    "stats",
];

const SESSION_FIELDS: &[&str] = &[
    "id",
    "ownerId",
    "title",
    "members",
    "viewers",
    "metadata",
    "status",
    "startedAt",
    "endedAt",
    "pointCount",
    "lastSeq",
    "participants",
    "stats",
];

fn serialize_record<S: Serializer>(
    rec: &SessionSummary,
    participants: Option<&[Participant]>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let len = 11 + usize::from(rec.ended_at.is_some()) + usize::from(participants.is_some());
    let name = if participants.is_some() {
        "Session"
    } else {
        "SessionSummary"
    };
    let mut st = serializer.serialize_struct(name, len)?;
    st.serialize_field("id", &rec.id)?;
    st.serialize_field("ownerId", &rec.owner_id)?;
    st.serialize_field("title", &rec.title)?;
    st.serialize_field("members", &rec.members)?;
    st.serialize_field("viewers", &rec.viewers)?;
    st.serialize_field("metadata", &rec.metadata)?;
    st.serialize_field("status", &rec.status)?;
    st.serialize_field("startedAt", &rec.started_at)?;
    match &rec.ended_at {
        Some(t) => st.serialize_field("endedAt", t)?,
        None => st.skip_field("endedAt")?,
    }
    st.serialize_field("pointCount", &rec.point_count)?;
    st.serialize_field("lastSeq", &rec.last_seq)?;
    if let Some(p) = participants {
        st.serialize_field("participants", p)?;
    }
    st.serialize_field("stats", &rec.stats)?;
    st.end()
}

// Reads a record, and with `session` its participants too (required; a
// summary has none) with `stats` optional. Every field at most once, no other field; `title`
// and `endedAt` may be absent (as `null` and as none), as derived `Option`
// fields may.
struct RecordVisitor {
    session: bool,
}

fn once<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    slot: &mut Option<T>,
    field: &'static str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(field));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

fn required<T, E: de::Error>(slot: Option<T>, field: &'static str) -> Result<T, E> {
    slot.ok_or_else(|| E::missing_field(field))
}

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = (SessionSummary, Vec<Participant>);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.session {
            "a session object"
        } else {
            "a session summary object"
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut id, mut owner_id, mut title, mut members, mut metadata) =
            (None, None, None::<Option<String>>, None, None);
        let (mut status, mut started_at, mut ended_at, mut point_count, mut last_seq) =
            (None, None, None::<Option<String>>, None, None);
        let (mut participants, mut stats, mut viewers) = (None, None, None);
        let fields = if self.session {
            SESSION_FIELDS
        } else {
            SUMMARY_FIELDS
        };
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "id" => once(&mut map, &mut id, "id")?,
                "ownerId" => once(&mut map, &mut owner_id, "ownerId")?,
                "title" => once(&mut map, &mut title, "title")?,
                "members" => once(&mut map, &mut members, "members")?,
                "viewers" => once(&mut map, &mut viewers, "viewers")?,
                "metadata" => once(&mut map, &mut metadata, "metadata")?,
                "status" => once(&mut map, &mut status, "status")?,
                "startedAt" => once(&mut map, &mut started_at, "startedAt")?,
                "endedAt" => once(&mut map, &mut ended_at, "endedAt")?,
                "pointCount" => once(&mut map, &mut point_count, "pointCount")?,
                "lastSeq" => once(&mut map, &mut last_seq, "lastSeq")?,
                "participants" if self.session => {
                    once(&mut map, &mut participants, "participants")?
                }
                "stats" => once(&mut map, &mut stats, "stats")?,
                other => return Err(de::Error::unknown_field(other, fields)),
            }
        }
        let stats = match stats {
            Some(s) => s,
            None if self.session => BTreeMap::new(),
            None => return Err(de::Error::missing_field("stats")),
        };
        let participants = if self.session {
            required(participants, "participants")?
        } else {
            Vec::new()
        };
        let summary = SessionSummary {
            id: required(id, "id")?,
            owner_id: required(owner_id, "ownerId")?,
            title: title.flatten(),
            members: required(members, "members")?,
            viewers: viewers.unwrap_or_default(),
            metadata: required(metadata, "metadata")?,
            status: required(status, "status")?,
            started_at: required(started_at, "startedAt")?,
            ended_at: ended_at.flatten(),
            point_count: required(point_count, "pointCount")?,
            last_seq: required(last_seq, "lastSeq")?,
            stats,
        };
        Ok((summary, participants))
    }
}

impl Serialize for SessionSummary {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_record(self, None, serializer)
    }
}

impl<'de> Deserialize<'de> for SessionSummary {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (summary, _) = deserializer.deserialize_map(RecordVisitor { session: false })?;
        Ok(summary)
    }
}

impl Serialize for Session {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_record(&self.summary, Some(&self.participants), serializer)
    }
}

impl<'de> Deserialize<'de> for Session {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (summary, participants) =
            deserializer.deserialize_map(RecordVisitor { session: true })?;
        Ok(Session {
            summary,
            participants,
        })
    }
}

// The schemas follow `RecordVisitor`, not a derive (which cannot see the
// hand-written serde): exactly the record's fields, `title` and `endedAt`
// optional and nullable, `stats` required in a summary and optional in a
// session object, `participants` only (and required) in the latter.
fn record_schema(generator: &mut SchemaGenerator, session: bool) -> Schema {
    let string = generator.subschema_for::<String>();
    let nullable = generator.subschema_for::<Option<String>>();
    let mut properties = serde_json::json!({
        "id": { "type": "string", "description": "Session id (UUID, lowercase)." },
        "ownerId": { "type": "string", "description": "The user who created it." },
        "title": nullable.clone(),
        "members": generator.subschema_for::<Vec<String>>(),
        "viewers": generator.subschema_for::<Vec<String>>(),
        "metadata": generator.subschema_for::<Map<String, Value>>(),
        "status": generator.subschema_for::<SessionStatus>(),
        "startedAt": string.clone(),
        "endedAt": nullable,
        "pointCount": generator.subschema_for::<u64>(),
        "lastSeq": generator.subschema_for::<u64>(),
        "stats": generator.subschema_for::<BTreeMap<String, KindStats>>(),
    });
    let mut required = vec![
        "id",
        "ownerId",
        "members",
        "viewers",
        "metadata",
        "status",
        "startedAt",
        "pointCount",
        "lastSeq",
    ];
    if session {
        properties["participants"] = generator.subschema_for::<Vec<Participant>>().to_value();
        required.push("participants");
    } else {
        required.push("stats");
    }
    json_schema!({
        "type": "object",
        "description": if session {
            "The session object: the record and its live connections."
        } else {
            "The session record (a session object without participants)."
        },
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

impl JsonSchema for SessionSummary {
    fn schema_name() -> Cow<'static, str> {
        "SessionSummary".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        record_schema(generator, false)
    }
}

impl JsonSchema for Session {
    fn schema_name() -> Cow<'static, str> {
        "Session".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        record_schema(generator, true)
    }
}

/// Figures of one point `kind` over the points that carry a `value`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct KindStats {
    /// Points of this kind with a value.
    pub count: u64,
    /// Sum of their values.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// The value of the highest `seq`.
    pub last: f64,
}

impl KindStats {
    /// The figures of a single value.
    pub fn of(value: f64) -> KindStats {
        KindStats {
            count: 1,
            sum: value,
            min: value,
            max: value,
            last: value,
        }
    }

    /// Adds a value recorded after every value already counted.
    pub fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.last = value;
    }
}

/// A point as a client sends it, over HTTP or in a `point` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct NewPoint {
    /// Client idempotency key, 1-64 characters: a repeated id is recorded once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What the point is, 1-64 characters.
    pub kind: String,
    /// A number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Free-form object, at most 16 KiB as compact JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
    /// Milliseconds since the Unix epoch; the server's time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
}

object_only!(NewPoint: "a point object");

impl NewPoint {
    /// A point with only a `kind`.
    pub fn new(kind: impl Into<String>) -> Self {
        NewPoint {
            id: None,
            kind: kind.into(),
            value: None,
            data: None,
            ts: None,
        }
    }

    /// The point as stored: numbered `seq`, sent by `user_id`, at its own
    /// `ts` or else `now_ms`.
    pub fn into_stored(self, seq: u64, user_id: impl Into<String>, now_ms: i64) -> StoredPoint {
        StoredPoint {
            seq,
            user_id: user_id.into(),
            id: self.id,
            kind: self.kind,
            value: self.value,
            data: self.data,
            ts: self.ts.unwrap_or(now_ms),
        }
    }
}

impl Validate for NewPoint {
    fn validate(&self) -> Result<(), String> {
        if let Some(id) = &self.id {
            if !(1..=MAX_POINT_ID_CHARS).contains(&char_len(id)) {
                return Err(format!("id must be 1-{MAX_POINT_ID_CHARS} characters"));
            }
        }
        if !(1..=MAX_KIND_CHARS).contains(&char_len(&self.kind)) {
            return Err(format!("kind must be 1-{MAX_KIND_CHARS} characters"));
        }
        if let Some(value) = self.value {
            // JSON cannot carry NaN or infinities; this guards values built
            // in Rust, which would otherwise serialize as `null`.
            if !value.is_finite() {
                return Err("value must be a finite number".to_owned());
            }
        }
        if let Some(data) = &self.data {
            if json_size(data) > MAX_DATA_BYTES {
                return Err(format!(
                    "data must be at most {MAX_DATA_BYTES} bytes as compact JSON"
                ));
            }
        }
        if let Some(ts) = self.ts {
            if !(MIN_POINT_TS..MAX_POINT_TS).contains(&ts) {
                return Err(
                    "ts must be milliseconds since the Unix epoch, between the years 2000 and 2100"
                        .to_owned(),
                );
            }
        }
        Ok(())
    }
}

/// A point as stored, read back and broadcast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredPoint {
    /// Position in the session: 1, 2, 3 … without gaps.
    pub seq: u64,
    /// Who sent it.
    pub user_id: String,
    /// The client idempotency key, if one was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What the point is.
    pub kind: String,
    /// A number, if sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Free-form object, if sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
    /// Milliseconds since the Unix epoch: the client's, or the server's
    /// receive time when the client sent none.
    pub ts: i64,
}

/// Body of `POST /v1/sessions/{id}/points`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct PointsBatch {
    /// 1-100 points, recorded in this order.
    pub points: Vec<NewPoint>,
}

impl Validate for PointsBatch {
    fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_POINTS_PER_BATCH).contains(&self.points.len()) {
            return Err(format!(
                "points must hold 1-{MAX_POINTS_PER_BATCH} points, got {}",
                self.points.len()
            ));
        }
        for (i, point) in self.points.iter().enumerate() {
            point.validate().map_err(|e| format!("points[{i}]: {e}"))?;
        }
        Ok(())
    }
}

/// Answer to `POST /v1/sessions/{id}/points`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct PointsAccepted {
    /// The `seq` of each point, in the order sent (a repeated `id` gets the
    /// `seq` it was first recorded with).
    pub seqs: Vec<u64>,
}

/// Answer to `GET /v1/sessions/{id}/points`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct PointsPage {
    /// Points with `seq > afterSeq`, in `seq` order, at most `limit`.
    pub points: Vec<StoredPoint>,
    /// The session's latest `seq`.
    pub last_seq: u64,
}

object_only!(
    CreateSession: "a session creation object",
    SetMember: "an object with `role`",
    Participant: "a participant object",
    KindStats: "a stats object",
    StoredPoint: "a stored point object",
    PointsBatch: "an object with `points`",
    PointsAccepted: "an object with `seqs`",
    PointsPage: "a points page object",
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{parse_body, BodyError};
    use serde_json::json;

    fn round_trip<T>(value: &T) -> String
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let json = serde_json::to_string(value).expect("serialize");
        let back: T = serde_json::from_str(&json).expect("parse back");
        assert_eq!(&back, value, "{json}");
        json
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn summary() -> SessionSummary {
        SessionSummary {
            id: "0192cc09-1400-7e5f-8a6b-7c8d9e0f1a2b".into(),
            owner_id: "alice".into(),
            title: None,
            members: vec!["bob".into()],
            viewers: vec![],
            metadata: Map::new(),
            status: SessionStatus::Active,
            started_at: "2024-10-27T03:33:20Z".into(),
            ended_at: None,
            point_count: 0,
            last_seq: 0,
            stats: BTreeMap::new(),
        }
    }

    fn session() -> Session {
        Session {
            summary: summary(),
            participants: vec![],
        }
    }

    fn full_point() -> NewPoint {
        NewPoint {
            id: Some("p-1".into()),
            kind: "hr".into(),
            value: Some(72.5),
            data: Some(obj(json!({"unit": "bpm", "nested": [1, {"x": null}]}))),
            ts: Some(1_730_000_000_000),
        }
    }

    #[test]
    fn session_wire_has_null_title_and_no_ended_at() {
        let json = round_trip(&session());
        assert_eq!(
            json,
            r#"{"id":"0192cc09-1400-7e5f-8a6b-7c8d9e0f1a2b","ownerId":"alice","title":null,"members":["bob"],"viewers":[],"metadata":{},"status":"active","startedAt":"2024-10-27T03:33:20Z","pointCount":0,"lastSeq":0,"participants":[],"stats":{}}"#
        );
    }

    #[test]
    fn ended_session_round_trips() {
        let mut s = session();
        s.summary.title = Some("Morning run".into());
        s.summary.status = SessionStatus::Ended;
        s.summary.ended_at = Some("2024-10-27T04:00:00Z".into());
        s.summary.metadata = obj(json!({"a": 1}));
        s.summary.point_count = 3;
        s.summary.last_seq = 3;
        s.participants = vec![Participant {
            conn_id: "c1".into(),
            user_id: "bob".into(),
            joined_at: "2024-10-27T03:34:00Z".into(),
            state: None,
        }];
        let json = round_trip(&s);
        assert!(json.contains(r#""status":"ended""#), "{json}");
        assert!(
            json.contains(r#""endedAt":"2024-10-27T04:00:00Z""#),
            "{json}"
        );
        assert!(json.contains(r#""connId":"c1""#), "{json}");
        assert!(s.is_member("alice") && s.is_member("bob") && !s.is_member("carol"));
    }

    #[test]
    fn stats_round_trip_and_parse_strictly() {
        let mut s = session();
        let mut hr = KindStats::of(70.0);
        hr.add(80.5);
        hr.add(60.0);
        assert_eq!(
            hr,
            KindStats {
                count: 3,
                sum: 210.5,
                min: 60.0,
                max: 80.5,
                last: 60.0
            }
        );
        s.summary.stats.insert("hr".into(), hr);
        let json = round_trip(&s);
        assert!(
            json.contains(
                r#""stats":{"hr":{"count":3,"sum":210.5,"min":60.0,"max":80.5,"last":60.0}}"#
            ),
            "{json}"
        );
        let mut v = serde_json::to_value(&s).expect("serialize");
        v["stats"]["hr"]["avg"] = json!(1);
        assert!(serde_json::from_value::<Session>(v).is_err());
        let mut v = serde_json::to_value(&s).expect("serialize");
        v["stats"]["hr"]["count"] = json!(-1);
        assert!(serde_json::from_value::<Session>(v).is_err());
        let mut v = serde_json::to_value(&s).expect("serialize");
        v["stats"] = json!([]);
        assert!(serde_json::from_value::<Session>(v).is_err());
        let mut v = serde_json::to_value(session()).expect("serialize");
        v.as_object_mut().expect("object").remove("stats");
        let parsed: Session = serde_json::from_value(v).expect("stats may be absent");
        assert!(parsed.summary.stats.is_empty());
        let mut v = serde_json::to_value(summary()).expect("serialize");
        v.as_object_mut().expect("object").remove("stats");
        assert!(
            serde_json::from_value::<SessionSummary>(v).is_err(),
            "a listed session has its stats"
        );
    }

    #[test]
    fn a_session_is_its_summary_with_participants_in_between() {
        let mut s = session();
        s.summary.ended_at = Some("2024-10-27T04:00:00Z".into());
        s.summary.stats.insert("hr".into(), KindStats::of(1.0));
        s.participants = vec![Participant {
            conn_id: "c1".into(),
            user_id: "bob".into(),
            joined_at: "2024-10-27T03:34:00Z".into(),
            state: None,
        }];
        let whole = round_trip(&s);
        let part = round_trip(&s.summary);
        let (head, stats) = part.split_at(part.find(r#","stats":"#).expect("stats"));
        assert_eq!(
            whole,
            format!(
                r#"{head},"participants":[{{"connId":"c1","userId":"bob","joinedAt":"2024-10-27T03:34:00Z","state":null}}]{stats}"#
            )
        );
        assert!(head.ends_with(r#""endedAt":"2024-10-27T04:00:00Z","pointCount":0,"lastSeq":0"#));
        // Field order on input is free, as for any object.
        let mut v = serde_json::to_value(&s).expect("serialize");
        let reordered: Map<String, Value> = std::mem::take(v.as_object_mut().expect("object"))
            .into_iter()
            .rev()
            .collect();
        let back: Session = serde_json::from_value(Value::Object(reordered)).expect("any order");
        assert_eq!(back, s);
    }

    #[test]
    fn summary_and_session_refuse_what_the_other_has_and_repeats() {
        let mut v = serde_json::to_value(summary()).expect("serialize");
        v["participants"] = json!([]);
        let err = serde_json::from_value::<SessionSummary>(v).expect_err("no participants");
        assert!(
            err.to_string().contains("unknown field `participants`"),
            "{err}"
        );
        let mut v = serde_json::to_value(session()).expect("serialize");
        v.as_object_mut().expect("object").remove("participants");
        let err = serde_json::from_value::<Session>(v).expect_err("participants required");
        assert!(
            err.to_string().contains("missing field `participants`"),
            "{err}"
        );
        for field in [
            "id",
            "ownerId",
            "members",
            "metadata",
            "status",
            "startedAt",
            "pointCount",
            "lastSeq",
        ] {
            let mut v = serde_json::to_value(session()).expect("serialize");
            v.as_object_mut().expect("object").remove(field);
            let err = serde_json::from_value::<Session>(v).expect_err(field);
            assert!(
                err.to_string()
                    .contains(&format!("missing field `{field}`")),
                "{err}"
            );
        }
        // As derived `Option` fields: an absent title reads as none.
        let mut v = serde_json::to_value(session()).expect("serialize");
        v.as_object_mut().expect("object").remove("title");
        assert_eq!(
            serde_json::from_value::<Session>(v).expect("no title"),
            session()
        );
        let text = serde_json::to_string(&session()).expect("serialize");
        let twice = text.replacen(r#""lastSeq":0"#, r#""lastSeq":0,"lastSeq":1"#, 1);
        let err = serde_json::from_str::<Session>(&twice).expect_err("repeated field");
        assert!(
            err.to_string().contains("duplicate field `lastSeq`"),
            "{err}"
        );
        let text = serde_json::to_string(&summary()).expect("serialize");
        let twice = text.replacen(r#""title":null"#, r#""title":null,"title":"x""#, 1);
        assert!(serde_json::from_str::<SessionSummary>(&twice).is_err());
        let mut v = serde_json::to_value(summary()).expect("serialize");
        v["pointCount"] = json!(-1);
        assert!(serde_json::from_value::<SessionSummary>(v).is_err());
        assert!(serde_json::from_str::<SessionSummary>("[]").is_err());
        assert!(serde_json::from_str::<Session>(r#""session""#).is_err());
    }

    #[test]
    fn session_parsing_is_strict() {
        let mut v = serde_json::to_value(session()).expect("serialize");
        v["surprise"] = json!(true);
        assert!(serde_json::from_value::<Session>(v).is_err());
        let mut v = serde_json::to_value(summary()).expect("serialize");
        v["surprise"] = json!(true);
        assert!(serde_json::from_value::<SessionSummary>(v).is_err());
        let mut v = serde_json::to_value(session()).expect("serialize");
        v["status"] = json!("paused");
        assert!(serde_json::from_value::<Session>(v).is_err());
    }

    #[test]
    fn viewers_are_disjoint_from_members_and_share_their_limit() {
        let both = CreateSession {
            members: Some(vec!["bob".into()]),
            viewers: Some(vec!["bob".into()]),
            ..CreateSession::default()
        };
        assert!(both.validate().unwrap_err().contains("both"));
        let split = CreateSession {
            members: Some((0..60).map(|i| format!("w{i}")).collect()),
            viewers: Some((0..40).map(|i| format!("v{i}")).collect()),
            ..CreateSession::default()
        };
        assert_eq!(split.validate(), Ok(()));
        let over = CreateSession {
            viewers: Some((0..41).map(|i| format!("v{i}")).collect()),
            ..split.clone()
        };
        assert!(over.validate().unwrap_err().contains("at most 100"));
        let bad = CreateSession {
            viewers: Some(vec!["no spaces".into()]),
            ..CreateSession::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("viewers[0]"));
    }

    #[test]
    fn viewers_and_state_on_the_wire() {
        let mut s = session();
        s.summary.viewers = vec!["vic".into()];
        s.participants = vec![Participant {
            conn_id: "c".into(),
            user_id: "vic".into(),
            joined_at: "2024-10-27T03:33:20Z".into(),
            state: Some(obj(json!({"typing": true}))),
        }];
        let json = round_trip(&s);
        assert!(
            json.contains(r#""members":["bob"],"viewers":["vic"]"#),
            "{json}"
        );
        assert!(json.contains(r#""state":{"typing":true}"#), "{json}");
        // `[]` and `null` are written, never left out.
        let json = round_trip(&summary());
        assert!(json.contains(r#""viewers":[]"#), "{json}");
        s.participants[0].state = None;
        assert!(round_trip(&s).contains(r#""state":null"#));
        // A record from before viewers existed reads as having none.
        let mut v = serde_json::to_value(summary()).expect("serialize");
        v.as_object_mut().expect("object").remove("viewers");
        let old: SessionSummary = serde_json::from_value(v).expect("old record");
        assert!(old.viewers.is_empty());
        // Still strict: a repeated `viewers`, a wrong type.
        let text =
            round_trip(&summary()).replacen(r#""viewers":[]"#, r#""viewers":[],"viewers":[]"#, 1);
        assert!(serde_json::from_str::<SessionSummary>(&text).is_err());
        let mut v = serde_json::to_value(summary()).expect("serialize");
        v["viewers"] = json!("vic");
        assert!(serde_json::from_value::<SessionSummary>(v).is_err());
        assert!(summary().is_member("bob"));
        let mut with_viewer = summary();
        with_viewer.viewers = vec!["vic".into()];
        assert!(with_viewer.is_member("vic"));
    }

    #[test]
    fn set_member_is_strict() {
        let w: SetMember = parse_body(br#"{"role":"writer"}"#).expect("writer");
        assert_eq!(w.role, Role::Writer);
        let v: SetMember = parse_body(br#"{"role":"viewer"}"#).expect("viewer");
        assert_eq!(round_trip(&v), r#"{"role":"viewer"}"#);
        for bad in [
            &br#"{"role":"owner"}"#[..],
            br#"{}"#,
            br#"{"role":"writer","x":1}"#,
            br#"["writer"]"#,
        ] {
            assert!(parse_body::<SetMember>(bad).is_err());
        }
    }

    #[test]
    fn create_session_round_trips_and_accepts_empty_object() {
        round_trip(&CreateSession {
            title: Some("t".into()),
            members: Some(vec!["bob".into(), "carol@x.io".into()]),
            viewers: Some(vec!["vic".into()]),
            metadata: Some(obj(json!({"k": [1, 2]}))),
        });
        assert_eq!(round_trip(&CreateSession::default()), "{}");
        let parsed: CreateSession = parse_body(b"{}").expect("empty object is valid");
        assert_eq!(parsed, CreateSession::default());
    }

    #[test]
    fn create_session_limits() {
        let ok = CreateSession {
            title: Some("é".repeat(200)),
            members: Some((0..100).map(|i| format!("u{i}")).collect()),
            viewers: None,
            metadata: None,
        };
        assert_eq!(ok.validate(), Ok(()));

        let long_title = CreateSession {
            title: Some("é".repeat(201)),
            ..CreateSession::default()
        };
        assert!(long_title.validate().is_err_and(|e| e.contains("title")));

        let many = CreateSession {
            members: Some((0..101).map(|i| format!("u{i}")).collect()),
            ..CreateSession::default()
        };
        assert!(many.validate().is_err_and(|e| e.contains("members")));

        let bad_member = CreateSession {
            members: Some(vec!["ok".into(), "not ok".into()]),
            ..CreateSession::default()
        };
        assert!(bad_member
            .validate()
            .is_err_and(|e| e.starts_with("members[1]")));
    }

    #[test]
    fn create_session_metadata_size_boundary() {
        // {"k":"…"} is 8 bytes of framing around the string.
        let at_limit = obj(json!({"k": "x".repeat(MAX_METADATA_BYTES - 8)}));
        assert_eq!(json_size(&at_limit), MAX_METADATA_BYTES);
        let ok = CreateSession {
            metadata: Some(at_limit),
            ..CreateSession::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let too_big = CreateSession {
            metadata: Some(obj(json!({"k": "x".repeat(MAX_METADATA_BYTES - 7)}))),
            ..CreateSession::default()
        };
        assert!(too_big.validate().is_err_and(|e| e.contains("metadata")));
    }

    #[test]
    fn create_session_body_rejections() {
        assert!(matches!(
            parse_body::<CreateSession>(br#"{"title": 5}"#),
            Err(BodyError::Invalid(_))
        ));
        assert!(matches!(
            parse_body::<CreateSession>(br#"{"metadata": []}"#),
            Err(BodyError::Invalid(_))
        ));
        assert!(matches!(
            parse_body::<CreateSession>(br#"{"titel": "x"}"#),
            Err(BodyError::Invalid(m)) if m.contains("unknown field `titel`")
        ));
        assert!(matches!(
            parse_body::<CreateSession>(br#"{"members": ["a", 1]}"#),
            Err(BodyError::Invalid(_))
        ));
        assert!(matches!(
            parse_body::<CreateSession>(br#"{"members": ["a b"]}"#),
            Err(BodyError::Invalid(m)) if m.starts_with("members[0]")
        ));
    }

    #[test]
    fn new_point_round_trips_and_omits_absent_fields() {
        round_trip(&full_point());
        assert_eq!(round_trip(&NewPoint::new("tap")), r#"{"kind":"tap"}"#);
    }

    #[test]
    fn new_point_validation() {
        assert_eq!(full_point().validate(), Ok(()));
        let check = |p: NewPoint, needle: &str| {
            let err = p.validate().expect_err("must be rejected");
            assert!(err.contains(needle), "{err}");
        };
        check(NewPoint::new(""), "kind must be 1-64 characters");
        check(
            NewPoint::new("k".repeat(65)),
            "kind must be 1-64 characters",
        );
        assert_eq!(NewPoint::new("é".repeat(64)).validate(), Ok(()));
        let mut p = NewPoint::new("k");
        p.id = Some("i".repeat(65));
        check(p.clone(), "id must be 1-64 characters");
        p.id = Some(String::new());
        check(p.clone(), "id must be 1-64 characters");
        p.id = Some("i".repeat(64));
        assert_eq!(p.validate(), Ok(()));
        let mut p = NewPoint::new("k");
        p.ts = Some(-1);
        check(p.clone(), "ts");
        p.ts = Some(0);
        check(p.clone(), "ts");
        p.ts = Some(MIN_POINT_TS - 1);
        check(p.clone(), "ts");
        p.ts = Some(MAX_POINT_TS);
        check(p.clone(), "ts");
        p.ts = Some(MIN_POINT_TS);
        assert_eq!(p.validate(), Ok(()));
        p.ts = Some(MAX_POINT_TS - 1);
        assert_eq!(p.validate(), Ok(()));
        let mut p = NewPoint::new("k");
        p.value = Some(f64::NAN);
        check(p.clone(), "value");
        p.value = Some(f64::INFINITY);
        check(p, "value");
    }

    #[test]
    fn new_point_data_size_boundary() {
        let mut p = NewPoint::new("k");
        p.data = Some(obj(json!({"k": "x".repeat(MAX_DATA_BYTES - 8)})));
        assert_eq!(p.validate(), Ok(()));
        p.data = Some(obj(json!({"k": "x".repeat(MAX_DATA_BYTES - 7)})));
        assert!(p.validate().is_err_and(|e| e.contains("data")));
    }

    #[test]
    fn new_point_parsing_is_strict() {
        for bad in [
            r#"{"kind": 5}"#,
            r#"{"kind": "k", "data": [1]}"#,
            r#"{"kind": "k", "data": "x"}"#,
            r#"{"kind": "k", "ts": 1.5}"#,
            r#"{"kind": "k", "ts": "1"}"#,
            r#"{"kind": "k", "value": "1"}"#,
            r#"{"kind": "k", "extra": 1}"#,
            r#"{"value": 1}"#,
        ] {
            assert!(serde_json::from_str::<NewPoint>(bad).is_err(), "{bad}");
        }
        let p: NewPoint = serde_json::from_str(r#"{"kind":"k","value":3}"#).expect("int value");
        assert_eq!(p.value, Some(3.0));
    }

    #[test]
    fn stored_point_round_trips() {
        let stored = full_point().into_stored(7, "bob", 99);
        assert_eq!(stored.ts, 1_730_000_000_000);
        round_trip(&stored);
        let bare = NewPoint::new("tap").into_stored(1, "bob", 42);
        assert_eq!(
            round_trip(&bare),
            r#"{"seq":1,"userId":"bob","kind":"tap","ts":42}"#
        );
        assert!(serde_json::from_str::<StoredPoint>(
            r#"{"seq":1,"userId":"bob","kind":"tap","ts":42,"x":0}"#
        )
        .is_err());
    }

    #[test]
    fn points_batch_bounds() {
        let batch = |n: usize| PointsBatch {
            points: (0..n).map(|_| NewPoint::new("k")).collect(),
        };
        assert!(batch(0).validate().is_err_and(|e| e.contains("1-100")));
        assert!(batch(101).validate().is_err_and(|e| e.contains("1-100")));
        assert_eq!(batch(1).validate(), Ok(()));
        assert_eq!(batch(100).validate(), Ok(()));
        round_trip(&batch(2));
    }

    #[test]
    fn points_batch_names_the_bad_index() {
        let mut b = PointsBatch {
            points: (0..5).map(|_| NewPoint::new("k")).collect(),
        };
        b.points[3].kind = String::new();
        assert_eq!(
            b.validate(),
            Err("points[3]: kind must be 1-64 characters".to_owned())
        );
        assert_eq!(
            parse_body::<PointsBatch>(br#"{"points":[{"kind":"a"},{"kind":""}]}"#)
                .map(|b| b.points.len()),
            Err(BodyError::Invalid(
                "points[1]: kind must be 1-64 characters".into()
            ))
        );
        assert!(matches!(
            parse_body::<PointsBatch>(br#"{"points":[]}"#),
            Err(BodyError::Invalid(_))
        ));
        assert!(matches!(
            parse_body::<PointsBatch>(br#"{"points":{}}"#),
            Err(BodyError::Invalid(_))
        ));
    }

    #[test]
    fn arrays_never_stand_in_for_objects() {
        // A derived struct would take `["id","kind"]` as fields by position.
        for bad in [
            &br#"{"points":[["p1","k"]]}"#[..],
            br#"{"points":[[null,"k"]]}"#,
        ] {
            assert!(
                matches!(parse_body::<PointsBatch>(bad), Err(BodyError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(serde_json::from_str::<NewPoint>(r#"[null,"k"]"#).is_err());
        assert!(serde_json::from_str::<Participant>(r#"["c","u","t"]"#).is_err());
        let mut v = serde_json::to_value(session()).expect("serialize");
        v["participants"] = json!([["c", "u", "t"]]);
        assert!(serde_json::from_value::<Session>(v).is_err());
        assert!(serde_json::from_str::<PointsAccepted>("[[1]]").is_err());
    }

    #[test]
    fn free_form_objects_keep_the_last_duplicate_key() {
        let p: PointsBatch =
            parse_body(br#"{"points":[{"kind":"k","data":{"a":1,"a":2}}]}"#).expect("valid");
        assert_eq!(p.points[0].data, Some(obj(json!({"a": 2}))));
        assert!(matches!(
            parse_body::<PointsBatch>(br#"{"points":[{"kind":"k","kind":"j"}]}"#),
            Err(BodyError::Invalid(m)) if m.contains("duplicate field `kind`")
        ));
    }

    #[test]
    fn accepted_and_page_round_trip() {
        assert_eq!(
            round_trip(&PointsAccepted { seqs: vec![4, 5] }),
            r#"{"seqs":[4,5]}"#
        );
        let page = PointsPage {
            points: vec![full_point().into_stored(1, "alice", 0)],
            last_seq: 9,
        };
        let json = round_trip(&page);
        assert!(json.ends_with(r#""lastSeq":9}"#), "{json}");
    }
}
