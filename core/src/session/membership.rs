//! Who is in the session: members (owner and `members`), the live
//! connections with their flood state, and the admission rules (member,
//! not ended, the owner's plan's participants cap, seats per user).

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sesh_protocol::{Participant, Role, SessionStatus};

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
    /// Its live state (the last `state` frame's data).
    pub state: Option<Map<String, Value>>,
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
        state: c.state.clone(),
    }
}

/// Checks that `user` is a member (owner, writer or viewer).
pub fn check_member(meta: &Meta, user: &str) -> Result<(), SessionError> {
    check_member_of(&meta.owner_id, &meta.members, &meta.viewers, user)
}

/// Checks that `user` may write points: the owner or a writer. A viewer
/// is refused with `forbidden`, a non-member too.
pub fn check_writer(meta: &Meta, user: &str) -> Result<(), SessionError> {
    check_member(meta, user)?;
    if meta.viewers.iter().any(|v| v == user) {
        return Err(SessionError::Forbidden(
            "viewers cannot write points in this session".into(),
        ));
    }
    Ok(())
}

/// The role `user` holds besides the owner's, if any.
pub fn role_of(meta: &Meta, user: &str) -> Option<Role> {
    if meta.members.iter().any(|m| m == user) {
        Some(Role::Writer)
    } else if meta.viewers.iter().any(|v| v == user) {
        Some(Role::Viewer)
    } else {
        None
    }
}

/// What a membership change by `caller` does to the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `user` now holds `role` (added, or moved from the other list).
    Set {
        /// Who.
        user: String,
        /// The role.
        role: Role,
    },
    /// `user` is no longer a member.
    Remove {
        /// Who.
        user: String,
    },
}

/// Checks a membership change against the record and applies it to
/// `meta`; `Ok(false)` when it changes nothing (the role already held).
/// Only the owner sets roles; the owner or the member themself removes;
/// nothing changes an ended session; the owner holds no role; the lists
/// stay within `MAX_MEMBERS` together.
pub fn apply(meta: &mut Meta, caller: &str, change: &Change) -> Result<bool, SessionError> {
    check_member(meta, caller)?;
    let is_owner = caller == meta.owner_id;
    match change {
        Change::Set { user, role } => {
            if !is_owner {
                return Err(SessionError::Forbidden(
                    "only the owner can add members or change roles".into(),
                ));
            }
            if meta.status == SessionStatus::Ended {
                return Err(SessionError::Ended);
            }
            if *user == meta.owner_id {
                return Err(SessionError::Validation(
                    "the owner has no role to change".into(),
                ));
            }
            let current = role_of(meta, user);
            if current == Some(*role) {
                return Ok(false);
            }
            if current.is_none()
                && meta.members.len() + meta.viewers.len() >= sesh_protocol::MAX_MEMBERS
            {
                return Err(SessionError::Validation(format!(
                    "a session holds at most {} members and viewers besides the owner",
                    sesh_protocol::MAX_MEMBERS
                )));
            }
            meta.members.retain(|m| m != user);
            meta.viewers.retain(|v| v != user);
            match role {
                Role::Writer => meta.members.push(user.clone()),
                Role::Viewer => meta.viewers.push(user.clone()),
            }
            Ok(true)
        }
        Change::Remove { user } => {
            if !is_owner && caller != user {
                return Err(SessionError::Forbidden(
                    "only the owner can remove another member".into(),
                ));
            }
            if meta.status == SessionStatus::Ended {
                return Err(SessionError::Ended);
            }
            if *user == meta.owner_id {
                return Err(SessionError::Validation(
                    "the owner cannot leave the session; end it instead".into(),
                ));
            }
            if role_of(meta, user).is_none() {
                return Err(SessionError::NotFound(format!(
                    "{user} is not a member of this session"
                )));
            }
            meta.members.retain(|m| m != user);
            meta.viewers.retain(|v| v != user);
            Ok(true)
        }
    }
}

/// Checks the lists of a new session against its owner: the owner holds
/// no role, so naming them in `members` or `viewers` is refused.
pub fn check_owner_not_listed(
    owner: &str,
    members: &[String],
    viewers: &[String],
) -> Result<(), SessionError> {
    if members.iter().chain(viewers).any(|m| m == owner) {
        return Err(SessionError::Validation(
            "the owner is a member already; leave them out of members and viewers".into(),
        ));
    }
    Ok(())
}

/// Checks that `user` is the owner or one of `members` or `viewers`: the
/// one rule for a live session's record and for an ended one's as D1
/// keeps it.
pub fn check_member_of(
    owner: &str,
    members: &[String],
    viewers: &[String],
    user: &str,
) -> Result<(), SessionError> {
    if owner == user || members.iter().chain(viewers).any(|m| m == user) {
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
/// members and viewers read, only the owner ends (again), nothing changes
/// it.
pub fn retired_call(
    owner: &str,
    (members, viewers): (&[String], &[String]),
    user: &str,
    call: RetiredCall,
) -> Result<RetiredAnswer, SessionError> {
    check_member_of(owner, members, viewers, user)?;
    match call {
        RetiredCall::Read { after_seq, limit } => Ok(RetiredAnswer::Points { after_seq, limit }),
        RetiredCall::End if owner != user => Err(SessionError::Forbidden(
            "only the owner can end the session".into(),
        )),
        RetiredCall::Get | RetiredCall::End => Ok(RetiredAnswer::Session),
        RetiredCall::Change => Err(SessionError::Ended),
    }
}
