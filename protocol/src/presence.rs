//! Presence (CONTRACT.md section 6).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::Validate;
use crate::limits::{char_len, MAX_ACTIVITY_CHARS};

/// A user's presence as answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    /// `"online"`.
    Online,
    /// `"away"`.
    Away,
    /// `"busy"`.
    Busy,
    /// `"offline"`: no live connection and no heartbeat within the TTL.
    Offline,
}

impl PresenceStatus {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceStatus::Online => "online",
            PresenceStatus::Away => "away",
            PresenceStatus::Busy => "busy",
            PresenceStatus::Offline => "offline",
        }
    }
}

/// A status a client may set with a heartbeat (`offline` is only ever
/// derived by the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HeartbeatStatus {
    /// `"online"`.
    Online,
    /// `"away"`.
    Away,
    /// `"busy"`.
    Busy,
}

impl From<HeartbeatStatus> for PresenceStatus {
    fn from(s: HeartbeatStatus) -> Self {
        match s {
            HeartbeatStatus::Online => PresenceStatus::Online,
            HeartbeatStatus::Away => PresenceStatus::Away,
            HeartbeatStatus::Busy => PresenceStatus::Busy,
        }
    }
}

/// Body of `POST /v1/presence/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct Heartbeat {
    /// The status to set, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<HeartbeatStatus>,
    /// What the user is doing, at most 128 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<String>,
}

impl Validate for Heartbeat {
    fn validate(&self) -> Result<(), String> {
        if let Some(activity) = &self.activity {
            if char_len(activity) > MAX_ACTIVITY_CHARS {
                return Err(format!(
                    "activity must be at most {MAX_ACTIVITY_CHARS} characters"
                ));
            }
        }
        Ok(())
    }
}

/// A user's presence object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct Presence {
    /// Whose presence.
    pub user_id: String,
    /// Current status.
    pub status: PresenceStatus,
    /// Last heartbeat or connection activity, RFC 3339 UTC; absent if never seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Last reported activity; absent if none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<String>,
    /// Live WebSocket connections of the user.
    pub connections: u32,
}

impl Presence {
    /// The presence of a user never seen: offline, no connections.
    pub fn unknown(user_id: impl Into<String>) -> Self {
        Presence {
            user_id: user_id.into(),
            status: PresenceStatus::Offline,
            last_seen: None,
            activity: None,
            connections: 0,
        }
    }
}

/// Answer to `GET /v1/presence?users=...`, in the order asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self", rename_all = "camelCase", deny_unknown_fields)]
pub struct PresenceBatch {
    /// One presence per user id asked for.
    pub users: Vec<Presence>,
}

object_only!(
    Heartbeat: "a heartbeat object",
    Presence: "a presence object",
    PresenceBatch: "an object with `users`",
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{parse_body, BodyError};

    #[test]
    fn heartbeat_parsing() {
        let hb: Heartbeat = parse_body(br#"{"status":"away","activity":"lunch"}"#).expect("valid");
        assert_eq!(hb.status, Some(HeartbeatStatus::Away));
        assert_eq!(hb.activity.as_deref(), Some("lunch"));
        assert_eq!(parse_body::<Heartbeat>(b"{}"), Ok(Heartbeat::default()));
        for bad in [
            &br#"{"status":"offline"}"#[..],
            br#"{"status":"Online"}"#,
            br#"{"status":1}"#,
            br#"{"activity":["x"]}"#,
            br#"{"mood":"ok"}"#,
        ] {
            assert!(
                matches!(parse_body::<Heartbeat>(bad), Err(BodyError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn heartbeat_activity_limit_counts_characters() {
        let ok = Heartbeat {
            status: None,
            activity: Some("é".repeat(128)),
        };
        assert_eq!(ok.validate(), Ok(()));
        let too_long = Heartbeat {
            status: None,
            activity: Some("a".repeat(129)),
        };
        assert!(too_long.validate().is_err_and(|e| e.contains("activity")));
    }

    #[test]
    fn heartbeat_round_trips() {
        let hb = Heartbeat {
            status: Some(HeartbeatStatus::Busy),
            activity: Some("coding".into()),
        };
        let json = serde_json::to_string(&hb).expect("serialize");
        assert_eq!(json, r#"{"status":"busy","activity":"coding"}"#);
        assert_eq!(serde_json::from_str::<Heartbeat>(&json).expect("parse"), hb);
    }

    #[test]
    fn presence_wire_shape_and_round_trip() {
        let p = Presence::unknown("bob");
        let json = serde_json::to_string(&p).expect("serialize");
        assert_eq!(
            json,
            r#"{"userId":"bob","status":"offline","connections":0}"#
        );
        assert_eq!(serde_json::from_str::<Presence>(&json).expect("parse"), p);

        let batch = PresenceBatch {
            users: vec![
                Presence {
                    user_id: "alice".into(),
                    status: HeartbeatStatus::Away.into(),
                    last_seen: Some("2024-10-27T03:33:20Z".into()),
                    activity: Some("lunch".into()),
                    connections: 2,
                },
                p,
            ],
        };
        let json = serde_json::to_string(&batch).expect("serialize");
        assert!(json.contains(r#""status":"away","lastSeen":"2024-10-27T03:33:20Z""#));
        assert_eq!(
            serde_json::from_str::<PresenceBatch>(&json).expect("parse"),
            batch
        );
        assert!(serde_json::from_str::<Presence>(
            r#"{"userId":"bob","status":"offline","connections":-1}"#
        )
        .is_err());
    }

    #[test]
    fn status_strings() {
        for s in [
            PresenceStatus::Online,
            PresenceStatus::Away,
            PresenceStatus::Busy,
            PresenceStatus::Offline,
        ] {
            assert_eq!(
                serde_json::to_string(&s).expect("serialize"),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
