//! Sessions and points (CONTRACT.md section 5).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Validate;
use crate::ids::is_valid_user_id;
use crate::limits::{
    char_len, json_size, MAX_DATA_BYTES, MAX_KIND_CHARS, MAX_MEMBERS, MAX_METADATA_BYTES,
    MAX_POINTS_PER_BATCH, MAX_POINT_ID_CHARS, MAX_POINT_TS, MAX_TITLE_CHARS, MIN_POINT_TS,
};

/// Body of `POST /v1/sessions`. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSession {
    /// Title, at most 200 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// User ids allowed in besides the owner, at most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
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
        if let Some(members) = &self.members {
            if members.len() > MAX_MEMBERS {
                return Err(format!("members must list at most {MAX_MEMBERS} user ids"));
            }
            if let Some(i) = members.iter().position(|m| !is_valid_user_id(m)) {
                return Err(format!(
                    "members[{i}] is not a valid user id (1-128 characters of A-Z a-z 0-9 _ . : @ -)"
                ));
            }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct Participant {
    /// Server-chosen id of the connection.
    pub conn_id: String,
    /// Who is connected.
    pub user_id: String,
    /// When the connection joined, RFC 3339 UTC.
    pub joined_at: String,
}

/// The session object of the HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct Session {
    /// Session id (UUID, lowercase).
    pub id: String,
    /// The user who created it.
    pub owner_id: String,
    /// Title; `null` on the wire when there is none.
    pub title: Option<String>,
    /// User ids allowed in besides the owner.
    pub members: Vec<String>,
    /// Free-form object given at creation (`{}` when none).
    pub metadata: Map<String, Value>,
    /// Active or ended.
    pub status: SessionStatus,
    /// Creation time, RFC 3339 UTC.
    pub started_at: String,
    /// End time, RFC 3339 UTC; absent while active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Points recorded so far.
    pub point_count: u64,
    /// Highest `seq` so far (0 before the first point).
    pub last_seq: u64,
    /// Live connections.
    pub participants: Vec<Participant>,
    /// Live figures per point `kind`, over the points that carry a `value`
    /// (`{}` when none did). Absent only in answers that predate it.
    #[serde(default)]
    pub stats: BTreeMap<String, KindStats>,
}

/// Figures of one point `kind` over the points that carry a `value`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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

impl Session {
    /// True when `user_id` is the owner or one of the members.
    pub fn is_member(&self, user_id: &str) -> bool {
        self.owner_id == user_id || self.members.iter().any(|m| m == user_id)
    }
}

/// A point as a client sends it, over HTTP or in a `point` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct PointsAccepted {
    /// The `seq` of each point, in the order sent (a repeated `id` gets the
    /// `seq` it was first recorded with).
    pub seqs: Vec<u64>,
}

/// Answer to `GET /v1/sessions/{id}/points`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct PointsPage {
    /// Points with `seq > afterSeq`, in `seq` order, at most `limit`.
    pub points: Vec<StoredPoint>,
    /// The session's latest `seq`.
    pub last_seq: u64,
}

object_only!(
    CreateSession: "a session creation object",
    Participant: "a participant object",
    Session: "a session object",
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

    fn session() -> Session {
        Session {
            id: "0192cc09-1400-7e5f-8a6b-7c8d9e0f1a2b".into(),
            owner_id: "alice".into(),
            title: None,
            members: vec!["bob".into()],
            metadata: Map::new(),
            status: SessionStatus::Active,
            started_at: "2024-10-27T03:33:20Z".into(),
            ended_at: None,
            point_count: 0,
            last_seq: 0,
            participants: vec![],
            stats: BTreeMap::new(),
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
            r#"{"id":"0192cc09-1400-7e5f-8a6b-7c8d9e0f1a2b","ownerId":"alice","title":null,"members":["bob"],"metadata":{},"status":"active","startedAt":"2024-10-27T03:33:20Z","pointCount":0,"lastSeq":0,"participants":[],"stats":{}}"#
        );
    }

    #[test]
    fn ended_session_round_trips() {
        let mut s = session();
        s.title = Some("Morning run".into());
        s.status = SessionStatus::Ended;
        s.ended_at = Some("2024-10-27T04:00:00Z".into());
        s.metadata = obj(json!({"a": 1}));
        s.point_count = 3;
        s.last_seq = 3;
        s.participants = vec![Participant {
            conn_id: "c1".into(),
            user_id: "bob".into(),
            joined_at: "2024-10-27T03:34:00Z".into(),
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
        s.stats.insert("hr".into(), hr);
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
        assert!(parsed.stats.is_empty());
    }

    #[test]
    fn session_parsing_is_strict() {
        let mut v = serde_json::to_value(session()).expect("serialize");
        v["surprise"] = json!(true);
        assert!(serde_json::from_value::<Session>(v).is_err());
        let mut v = serde_json::to_value(session()).expect("serialize");
        v["status"] = json!("paused");
        assert!(serde_json::from_value::<Session>(v).is_err());
    }

    #[test]
    fn create_session_round_trips_and_accepts_empty_object() {
        round_trip(&CreateSession {
            title: Some("t".into()),
            members: Some(vec!["bob".into(), "carol@x.io".into()]),
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
