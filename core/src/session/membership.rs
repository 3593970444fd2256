//! Who is in the session: members (owner and `members`), the live
//! connections with their flood state, and the admission rules (member,
//! not ended, the owner's plan's participants cap, seats per user).

use std::collections::BTreeMap;

use sesh_protocol::{Participant, SessionStatus};

use super::flood::{Gcra, Strikes};
use super::Meta;
use crate::session::SessionError;
use crate::time::{rfc3339, Millis};

/// A connection id (unique per socket, kept in the socket's attachment).
pub type ConnId = String;

/// One live socket.
pub struct Conn {
    /// Whose socket.
    pub user_id: String,
    /// When it joined.
    pub joined_at: Millis,
    /// Its own flood limit.
    pub limiter: Gcra,
    /// Its refusals.
    pub strikes: Strikes,
}

/// The live connections, in connection id order.
#[derive(Default)]
pub struct Conns(pub BTreeMap<ConnId, Conn>);

impl Conns {
    /// The participants as answered and announced.
    pub fn participants(&self) -> Vec<Participant> {
        self.0.iter().map(|(id, c)| participant(id, c)).collect()
    }

    /// Live sockets of `user`.
    pub fn seats_of(&self, user: &str) -> u64 {
        self.0.values().filter(|c| c.user_id == user).count() as u64
    }

    /// Whether a frame to everyone but `except` reaches anyone.
    pub fn any_but(&self, except: Option<&str>) -> bool {
        self.0.keys().any(|c| Some(c.as_str()) != except)
    }
}

/// A participant entry.
pub fn participant(id: &str, c: &Conn) -> Participant {
    Participant {
        conn_id: id.to_owned(),
        user_id: c.user_id.clone(),
        joined_at: rfc3339(c.joined_at),
    }
}

/// Checks that `user` is a member.
pub fn check_member(meta: &Meta, user: &str) -> Result<(), SessionError> {
    check_member_of(&meta.owner_id, &meta.members, user)
}

/// Checks that `user` is the owner or one of `members`: the one rule for a
/// live session's record and for an ended one's as D1 keeps it.
pub fn check_member_of(owner: &str, members: &[String], user: &str) -> Result<(), SessionError> {
    if owner == user || members.iter().any(|m| m == user) {
        Ok(())
    } else {
        Err(SessionError::Forbidden(
            "not a member of this session".into(),
        ))
    }
}

/// Whether `user` may open one more socket, given the participants cap of
/// the owner's current plan and the seats per user.
pub fn admit(
    meta: &Meta,
    conns: &Conns,
    user: &str,
    max_participants: u64,
    seats_per_user: u64,
) -> Result<(), SessionError> {
    check_member(meta, user)?;
    if meta.status == SessionStatus::Ended {
        return Err(SessionError::Ended);
    }
    if conns.0.len() as u64 >= max_participants {
        return Err(SessionError::QuotaExceeded {
            message: format!(
                "the session is full ({max_participants} live connections allowed by the owner's plan)"
            ),
            retry_after_ms: None,
        });
    }
    if conns.seats_of(user) >= seats_per_user {
        return Err(SessionError::QuotaExceeded {
            message: format!(
                "you already hold {seats_per_user} live connections in this session; close one first"
            ),
            retry_after_ms: None,
        });
    }
    Ok(())
}

/// A call on an ended session whose object is retired (its storage gone;
/// D1 holds the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetiredCall {
    /// `GET .../points`.
    Read {
        /// Exclusive lower bound.
        after_seq: u64,
        /// Page size.
        limit: u64,
    },
    /// `GET /v1/sessions/{id}`.
    Get,
    /// `POST .../end`: ending again.
    End,
    /// Anything that would change the session (a socket, new points).
    Change,
}

/// What D1 answers for a [`RetiredCall`] that is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetiredAnswer {
    /// A page of its points.
    Points {
        /// Exclusive lower bound.
        after_seq: u64,
        /// Page size.
        limit: u64,
    },
    /// The session as it ended (ending again changes nothing).
    Session,
}

/// The rules for a retired session, the same as its live object applied:
/// members read, only the owner ends (again), nothing changes it.
pub fn retired_call(
    owner: &str,
    members: &[String],
    user: &str,
    call: RetiredCall,
) -> Result<RetiredAnswer, SessionError> {
    check_member_of(owner, members, user)?;
    match call {
        RetiredCall::Read { after_seq, limit } => Ok(RetiredAnswer::Points { after_seq, limit }),
        RetiredCall::End if owner != user => Err(SessionError::Forbidden(
            "only the owner can end the session".into(),
        )),
        RetiredCall::Get | RetiredCall::End => Ok(RetiredAnswer::Session),
        RetiredCall::Change => Err(SessionError::Ended),
    }
}
