//! Calls to an `ActiveSessionDO`. They travel as fetches: the socket call
//! is a WebSocket upgrade, and the other answers are the contract's own
//! answers to the client, passed on as the object made them. The one
//! answer another object reads back is [`SessionAnswer`].

use serde::{Deserialize, Serialize};

use super::Call;

/// What an `ActiveSessionDO` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum SessionCall {
    /// Create the session `session_id` from a validated `CreateSession` body.
    Create {
        /// The new session's id (the object cannot read its own name).
        session_id: String,
        /// The client's body, already validated by the gateway (the
        /// payload).
        #[serde(skip)]
        body: Vec<u8>,
    },
    /// The session object with its live participants.
    Get,
    /// A WebSocket upgrade (the upgrade headers travel with the request).
    Socket,
    /// Record a batch of points (the client's `PointsBatch` body).
    Append {
        /// The client's body (the payload).
        #[serde(skip)]
        body: Vec<u8>,
    },
    /// Stored points with `seq > after_seq`, at most `limit`.
    Read {
        /// Exclusive lower bound.
        after_seq: u64,
        /// Page size, already bounded by the gateway.
        limit: u64,
    },
    /// End the session.
    End,
    /// Give `user_id` a role (the client's `SetMember` body).
    SetMember {
        /// Who.
        user_id: String,
        /// The client's body (the payload).
        #[serde(skip)]
        body: Vec<u8>,
    },
    /// Remove `user_id` from the session.
    RemoveMember {
        /// Who.
        user_id: String,
    },
    /// Whether connection `conn_id` is still live (asked by presence).
    HasConn {
        /// The connection asked about.
        conn_id: String,
    },
}

/// What a session answers to another object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum SessionAnswer {
    /// To [`SessionCall::HasConn`]: whether the connection is live.
    Live(bool),
}

impl Call for SessionCall {
    type Answer = SessionAnswer;

    fn payload(&mut self) -> Option<&mut Vec<u8>> {
        match self {
            Self::Create { body, .. } | Self::Append { body } | Self::SetMember { body, .. } => {
                Some(body)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{answer_round_trip, round_trip};
    use super::super::{strict, Frame};
    use super::*;

    #[test]
    fn every_call_round_trips() {
        for c in [
            SessionCall::Create {
                session_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
                body: b"{}".to_vec(),
            },
            SessionCall::Get,
            SessionCall::Socket,
            SessionCall::Append {
                body: br#"{"points":[]}"#.to_vec(),
            },
            // A body need not be UTF-8: the object, not the trip, judges it.
            SessionCall::Append {
                body: vec![0xff, 0, b'\n'],
            },
            SessionCall::Read {
                after_seq: u64::MAX,
                limit: 1000,
            },
            SessionCall::End,
            SessionCall::SetMember {
                user_id: "bob".into(),
                body: br#"{"role":"viewer"}"#.to_vec(),
            },
            SessionCall::RemoveMember {
                user_id: "bob".into(),
            },
            SessionCall::HasConn {
                conn_id: "a&b=c d%".into(),
            },
        ] {
            round_trip(c);
        }
    }

    #[test]
    fn every_answer_round_trips() {
        answer_round_trip(SessionAnswer::Live(true));
        answer_round_trip(SessionAnswer::Live(false));
    }

    #[test]
    fn the_live_answer_keeps_its_json() {
        let text = serde_json::to_string(&SessionAnswer::Live(true)).unwrap();
        assert_eq!(text, r#"{"live":true}"#);
    }

    #[test]
    fn malformed_calls_are_refused() {
        for bad in [
            r#""nope""#,
            r#"{"read":{"afterSeq":"x","limit":1}}"#,
            r#"{"read":{"afterSeq":1}}"#,
            r#"{"read":{"afterSeq":1,"limit":1,"more":2}}"#,
            r#"{"hasConn":{}}"#,
            r#"{"removeMember":{}}"#,
            r#"{"removeMember":{"userId":"bob","role":"viewer"}}"#,
            r#"{"get":{}}"#,
            r#""get" "#,
            r#""get""get""#,
            r#"{"create":{"sessionId":"s","body":[1]}}"#,
        ] {
            assert!(strict::<SessionCall>(bad).is_err(), "{bad}");
        }
        let f = Frame {
            call: r#""end""#.into(),
            payload: None,
        };
        assert_eq!(f.decode::<SessionCall>(), Ok(SessionCall::End));
    }
}
