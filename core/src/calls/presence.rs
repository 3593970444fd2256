//! Calls to a `PresenceDO` (a user's object, or a read shard named by
//! `presence::shard_name`), over JS RPC, and their answers.

use serde::{Deserialize, Serialize};
use sesh_protocol::Presence;

use super::Call;
use crate::presence::PresenceState;

/// What a `PresenceDO` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum PresenceCall {
    /// The presence of `user_id` (the object's own user).
    Get {
        /// The user, for the answer (an object never written has no name).
        user_id: String,
    },
    /// The caller's heartbeat (the client's `Heartbeat` body).
    Heartbeat {
        /// The client's body (the payload).
        #[serde(skip)]
        body: Vec<u8>,
    },
    /// A session tells of a socket that came or went.
    Conn {
        /// The user whose socket it is.
        user_id: String,
        /// The connection.
        conn_id: String,
        /// The session holding it.
        session_id: String,
        /// Joined (`true`) or gone.
        online: bool,
    },
    /// To a read shard: the newest stored state of one of its users.
    Publish {
        /// The user.
        user_id: String,
        /// The user's presence state as stored.
        state: PresenceState,
    },
    /// To a read shard: the presence of these users, in this order.
    Batch {
        /// User ids, already validated.
        users: Vec<String>,
    },
}

/// What a `PresenceDO` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PresenceAnswer {
    /// To `Get`, `Heartbeat` and `Conn`: the user's presence now.
    View(Presence),
    /// To `Batch`: the users' presence, in the order asked.
    Views(Vec<Presence>),
    /// To `Publish`: the shard holds the state (or a newer one).
    Published,
}

impl Call for PresenceCall {
    type Answer = PresenceAnswer;

    fn payload(&mut self) -> Option<&mut Vec<u8>> {
        match self {
            Self::Heartbeat { body } => Some(body),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::strict;
    use super::super::tests::{answer_round_trip, round_trip};
    use super::*;
    use crate::presence::PresenceCore;

    #[test]
    fn every_call_round_trips_with_any_user_id() {
        let mut core = PresenceCore::new(60_000, PresenceState::default());
        core.heartbeat(None, Some("typing".into()), 1_000);
        let state = core.state().clone();
        for c in [
            PresenceCall::Get {
                user_id: "ann@example.com".into(),
            },
            PresenceCall::Get {
                user_id: "a+b&c=d,e".into(),
            },
            PresenceCall::Heartbeat {
                body: br#"{"status":"away"}"#.to_vec(),
            },
            PresenceCall::Publish {
                user_id: "u".into(),
                state,
            },
            PresenceCall::Batch {
                users: vec!["a".into(), "b@c".into()],
            },
            PresenceCall::Conn {
                user_id: "u:1".into(),
                conn_id: "c".into(),
                session_id: "s".into(),
                online: false,
            },
        ] {
            round_trip(c);
        }
    }

    #[test]
    fn every_answer_round_trips() {
        let mut seen = Presence::unknown("u");
        seen.last_seen = Some("2025-11-30T23:59:00Z".into());
        seen.activity = Some("typing".into());
        seen.connections = 2;
        answer_round_trip(PresenceAnswer::View(seen.clone()));
        answer_round_trip(PresenceAnswer::Views(vec![Presence::unknown("a"), seen]));
        answer_round_trip(PresenceAnswer::Views(Vec::new()));
        answer_round_trip(PresenceAnswer::Published);
    }

    #[test]
    fn malformed_calls_and_answers_are_refused() {
        for bad in [
            r#"{"conn":{"userId":"u","connId":"c","sessionId":"s","online":1}}"#,
            r#"{"conn":{"userId":"u","connId":"c","sessionId":"s"}}"#,
            r#"{"batch":{"users":"a,b"}}"#,
            r#"{"get":{"userId":"u","plan":"free"}}"#,
            r#"{"heartbeat":{"body":"{}"}}"#,
        ] {
            assert!(strict::<PresenceCall>(bad).is_err(), "{bad}");
        }
        for bad in [
            r#"{"view":{"userId":"u","status":"offline","connections":0,"x":1}}"#,
            r#"{"published":{}}"#,
            r#"{"views":[{"userId":"u"}]}"#,
        ] {
            assert!(strict::<PresenceAnswer>(bad).is_err(), "{bad}");
        }
    }
}
