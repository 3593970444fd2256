//! Answers of the history and analytics routes: `GET /v1/sessions`
//! ([`SessionList`]) and `GET /v1/users/{userId}/metrics`
//! ([`MetricsAnswer`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::session::SessionSummary;

/// The answer to `GET /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionList {
    /// The page, newest first.
    pub sessions: Vec<SessionSummary>,
    /// Present while more sessions remain; pass it back as `cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The answer to `GET /v1/users/{userId}/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsAnswer {
    /// The user.
    pub user_id: String,
    /// `hour`, `day`, `week` or `month`.
    pub granularity: String,
    /// Sorted by start, then kind; at most 1000.
    pub buckets: Vec<Bucket>,
}

/// One user's figures for one kind and bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct Bucket {
    /// Start of the bucket, RFC 3339 UTC.
    pub start: String,
    /// The kind.
    pub kind: String,
    /// Points.
    pub count: u64,
    /// Sum of the values; `null` when no point had one.
    pub sum: Option<f64>,
    /// Smallest value; `null` when none.
    pub min: Option<f64>,
    /// Largest value; `null` when none.
    pub max: Option<f64>,
    /// `sum` over the points with a value; `null` when none.
    pub avg: Option<f64>,
}

object_only!(
    SessionList: "a session list object",
    MetricsAnswer: "a metrics object",
    Bucket: "a metrics bucket object",
);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Map;

    use super::*;
    use crate::session::{KindStats, SessionStatus};

    #[test]
    fn session_list_round_trips_and_is_strict() {
        let list = SessionList {
            sessions: vec![SessionSummary {
                id: "0190a6b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b".into(),
                owner_id: "ann".into(),
                title: None,
                members: vec!["bob".into()],
                viewers: vec!["vic".into()],
                metadata: Map::new(),
                status: SessionStatus::Ended,
                started_at: "2026-01-01T00:00:00.000Z".into(),
                ended_at: Some("2026-01-01T01:00:00.000Z".into()),
                point_count: 3,
                last_seq: 3,
                stats: BTreeMap::from([("hr".into(), KindStats::of(0.1))]),
            }],
            next_cursor: Some("abc".into()),
        };
        let text = serde_json::to_string(&list).unwrap();
        assert!(text.contains(r#""nextCursor":"abc""#), "{text}");
        assert!(text.contains(r#""title":null"#), "{text}");
        assert!(text.contains(r#""stats":{"hr":{"count":1,"#), "{text}");
        assert_eq!(serde_json::from_str::<SessionList>(&text).unwrap(), list);
        let last = SessionList {
            next_cursor: None,
            ..list
        };
        let text = serde_json::to_string(&last).unwrap();
        assert!(!text.contains("nextCursor"), "absent on the last page");
        assert!(serde_json::from_str::<SessionList>(r#"{"sessions":[],"more":true}"#).is_err());
        assert!(serde_json::from_str::<SessionList>("[[]]").is_err());
    }

    #[test]
    fn metrics_round_trip_with_nulls_for_valueless_buckets() {
        let m = MetricsAnswer {
            user_id: "ann".into(),
            granularity: "week".into(),
            buckets: vec![Bucket {
                start: "2025-12-29T00:00:00.000Z".into(),
                kind: "hr".into(),
                count: 2,
                sum: None,
                min: None,
                max: None,
                avg: None,
            }],
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(
            text.contains(r#""sum":null,"min":null,"max":null,"avg":null"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<MetricsAnswer>(&text).unwrap(), m);
        let extra = r#"{"start":"x","kind":"k","count":1,"sum":null,"min":null,"max":null,"avg":null,"p99":1}"#;
        assert!(serde_json::from_str::<Bucket>(extra).is_err());
    }
}
