//! The session core: membership, sequencing, idempotency, flood limiting,
//! the D1 batching decision, and which frame goes to whom.
//!
//! A point goes through two steps so that the order "durable, then acked"
//! is structural: [`SessionCore::accept`] numbers it and hands it back for
//! storage, and only [`SessionCore::commit`], called once the adapter has
//! written it, queues the ack and the broadcast. [`SessionCore::abort`]
//! undoes an accept whose write failed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroU32;
use std::rc::Rc;

use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sesh_protocol::limits::MAX_FRAME_BYTES;
use sesh_protocol::{
    ClientFrame, ErrorCode, NewPoint, Participant, ServerFrame, Session, SessionStatus, StoredPoint,
};

use crate::core::clock::VirtualClock;
use crate::error::ApiError;
use crate::time::{rfc3339, Millis};

/// A connection id (unique per socket, kept in the socket's attachment).
pub type ConnId = String;

/// The session's own record, persisted by the adapter as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// Session id (UUID).
    pub id: String,
    /// Creator; the only one who may end it.
    pub owner_id: String,
    /// Optional title.
    pub title: Option<String>,
    /// Other members.
    pub members: Vec<String>,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
    /// Active or ended.
    pub status: SessionStatus,
    /// Creation time.
    pub started_at: Millis,
    /// End time, once ended.
    pub ended_at: Option<Millis>,
    /// Live connections allowed at once (the owner's plan).
    pub max_participants: u64,
    /// The owner's plan, whose daily points the session's points use.
    pub owner_plan: String,
}

impl Meta {
    /// Whether `user` may read, join and write.
    pub fn is_member(&self, user: &str) -> bool {
        self.owner_id == user || self.members.iter().any(|m| m == user)
    }
}

/// Tuning of one session core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Flush once this many points are pending.
    pub flush_batch: u32,
    /// ... or this long after the first pending point.
    pub flush_interval_ms: u64,
    /// Largest number of points written to D1 in one flush.
    pub max_flush_points: u64,
    /// Per-connection frames per second (sustained).
    pub flood_per_sec: u32,
    /// Per-connection burst of frames.
    pub flood_burst: u32,
    /// Refused frames, each within a second of the previous refusal, after
    /// which the connection is closed (1008).
    pub flood_close_after: u32,
    /// Points units reserved from the owner's quota at a time, at first;
    /// a busy session's blocks double (to 16 times this) while they are
    /// granted in full, so a fast session asks its quota rarely.
    pub reserve_block: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            flush_batch: 10,
            flush_interval_ms: 2_000,
            max_flush_points: 500,
            flood_per_sec: 1_000,
            flood_burst: 1_000,
            flood_close_after: 100,
            reserve_block: 200,
        }
    }
}

/// Who sent a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// A live participant's socket.
    Socket(&'a str),
    /// `POST .../points` by a user.
    Http(&'a str),
}

/// What became of an accepted point.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// The client `id` was seen before: answer with its first `seq`; store
    /// and broadcast nothing.
    Duplicate {
        /// The point's first `seq`.
        seq: u64,
        /// The client id.
        id: Option<String>,
    },
    /// A new point, numbered; the adapter must store it, then commit it.
    New(StoredPoint),
}

/// A decision for the adapter to carry out, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a frame to one connection.
    Send {
        /// Recipient.
        to: ConnId,
        /// JSON text.
        text: Rc<str>,
    },
    /// Send a frame to every live connection except `except`.
    Broadcast {
        /// The sender, who does not get its own point back.
        except: Option<ConnId>,
        /// JSON text (serialized once for everyone).
        text: Rc<str>,
    },
    /// Close a connection (it has already left the core).
    Close {
        /// The connection.
        conn: ConnId,
        /// WebSocket close code.
        code: u16,
        /// Reason for humans.
        reason: &'static str,
    },
    /// Send `conn` every stored point with `after_seq < seq <= last_seq` as
    /// `point` frames, in order, then `resumed{last_seq}`.
    Replay {
        /// The resuming connection.
        conn: ConnId,
        /// Exclusive lower bound.
        after_seq: u64,
        /// Inclusive upper bound (the session's `lastSeq` at the request).
        last_seq: u64,
    },
    /// Persist the session record (it changed).
    SaveMeta,
    /// Tell the user's presence that a connection came or went.
    Presence {
        /// Whose presence.
        user: String,
        /// The connection.
        conn: ConnId,
        /// Joined (`true`) or gone (`false`).
        online: bool,
    },
    /// Make sure the object wakes (alarm) no later than this.
    WakeAt(Millis),
    /// Reserve up to this many points units from the owner's quota, then
    /// report with [`SessionCore::granted`] or [`SessionCore::reserve_failed`].
    Reserve(u64),
    /// Give this many unused points units back to the owner's quota.
    Refund(u64),
    /// Persist the units held ([`SessionCore::units`]).
    SaveUnits,
}

/// A contiguous range of points to write to D1, with the session row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushBatch {
    /// First seq (inclusive); `from > to` means "session row only".
    pub from: u64,
    /// Last seq (inclusive).
    pub to: u64,
    /// The session record's version this batch writes.
    pub meta_version: u64,
}

/// Flush progress, rebuilt from storage on wake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FlushState {
    /// Every point up to here is in D1 (durable watermark).
    flushed_seq: u64,
    /// A batch is being written.
    in_flight: Option<FlushBatch>,
    /// When the oldest unflushed point (or row change) was noted.
    pending_since: Option<Millis>,
    /// Consecutive failures, for backoff.
    failures: u32,
    /// No attempt before this after a failure.
    retry_at: Option<Millis>,
    /// Version of the session record already in D1.
    flushed_meta_version: u64,
}

type Limiter = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    VirtualClock,
    governor::middleware::NoOpMiddleware<std::time::Duration>,
>;

struct Conn {
    user_id: String,
    joined_at: Millis,
    limiter: Limiter,
    // Refusals since the connection last went a second without one.
    strikes: u32,
    last_refusal: Millis,
}

/// One session's state and logic.
pub struct SessionCore {
    meta: Meta,
    meta_version: u64,
    cfg: Config,
    last_seq: u64,
    ids: HashMap<String, u64>,
    conns: BTreeMap<ConnId, Conn>,
    flush: FlushState,
    clock: VirtualClock,
    out: VecDeque<Action>,
    // Points units taken from the owner's quota, net of refunds; every
    // stored point used one, so `units - last_seq` are still in hand.
    units: u64,
    reserving: bool,
    // The size of the next reservation (see `Config::reserve_block`).
    block: u64,
    // Socket points that arrived while no unit was in hand, in order.
    waiting: VecDeque<(ConnId, NewPoint)>,
}

/// What the adapter knows after a wake-up, to rebuild a core.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Highest stored seq.
    pub last_seq: u64,
    /// Durable D1 watermark.
    pub flushed_seq: u64,
    /// Client ids already used, with their seq.
    pub ids: Vec<(String, u64)>,
    /// Live sockets that survived hibernation: (conn, user, joined at).
    pub conns: Vec<(ConnId, String, Millis)>,
    /// Version of the stored session record.
    pub meta_version: u64,
    /// Version of the session record already in D1.
    pub flushed_meta_version: u64,
    /// Points units held (see [`SessionCore::units`]).
    pub units: u64,
}

/// Exponential backoff for D1 retries: 1 s, 2 s, 4 s ... at most 60 s.
pub fn retry_backoff_ms(failures: u32) -> u64 {
    1_000u64
        .saturating_mul(1u64 << failures.saturating_sub(1).min(6))
        .min(60_000)
}

impl SessionCore {
    /// A new session.
    pub fn create(meta: Meta, cfg: Config, now: Millis) -> SessionCore {
        let mut core = Self::build(meta, cfg, now);
        // The new row must reach D1 even if no point ever does.
        core.meta_version = 1;
        core.flush.pending_since = Some(now);
        core.out.push_back(Action::SaveMeta);
        core.schedule();
        core
    }

    /// A session rebuilt from storage after the object woke up.
    pub fn restore(meta: Meta, cfg: Config, r: Restored, now: Millis) -> SessionCore {
        let mut core = Self::build(meta, cfg, now);
        core.last_seq = r.last_seq;
        core.ids = r.ids.into_iter().collect();
        core.flush.flushed_seq = r.flushed_seq.min(r.last_seq);
        core.meta_version = r.meta_version;
        core.flush.flushed_meta_version = r.flushed_meta_version;
        core.units = r.units.max(core.last_seq);
        for (conn, user, joined_at) in r.conns {
            let c = core.new_conn(user, joined_at);
            core.conns.insert(conn, c);
        }
        if core.has_pending() {
            core.flush.pending_since = Some(now);
        }
        core.schedule();
        core
    }

    fn build(meta: Meta, cfg: Config, now: Millis) -> SessionCore {
        let clock = VirtualClock::default();
        clock.set(now);
        SessionCore {
            meta,
            meta_version: 0,
            cfg,
            last_seq: 0,
            ids: HashMap::new(),
            conns: BTreeMap::new(),
            flush: FlushState::default(),
            clock,
            out: VecDeque::new(),
            units: 0,
            reserving: false,
            block: cfg.reserve_block,
            waiting: VecDeque::new(),
        }
    }

    fn new_conn(&self, user_id: String, joined_at: Millis) -> Conn {
        let per_sec = NonZeroU32::new(self.cfg.flood_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.cfg.flood_burst).unwrap_or(NonZeroU32::MIN);
        Conn {
            user_id,
            joined_at,
            limiter: RateLimiter::direct_with_clock(
                Quota::per_second(per_sec).allow_burst(burst),
                self.clock.clone(),
            ),
            strikes: 0,
            last_refusal: Millis::MIN,
        }
    }

    /// Whether decisions are waiting to be carried out.
    pub fn has_actions(&self) -> bool {
        !self.out.is_empty()
    }

    /// The next decision to carry out, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// The session record.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The latest seq.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The version of the session record; bumps on every change that D1
    /// must see.
    pub fn meta_version(&self) -> u64 {
        self.meta_version
    }

    /// The session as answered over HTTP, with live participants.
    pub fn view(&self) -> Session {
        Session {
            id: self.meta.id.clone(),
            owner_id: self.meta.owner_id.clone(),
            title: self.meta.title.clone(),
            members: self.meta.members.clone(),
            metadata: self.meta.metadata.clone(),
            status: self.meta.status,
            started_at: rfc3339(self.meta.started_at),
            ended_at: self.meta.ended_at.map(rfc3339),
            point_count: self.last_seq,
            last_seq: self.last_seq,
            participants: self.participants(),
        }
    }

    fn participants(&self) -> Vec<Participant> {
        self.conns
            .iter()
            .map(|(id, c)| participant(id, c))
            .collect()
    }

    /// Whether `user` may open a socket now; checked before the upgrade.
    pub fn admit(&self, user: &str) -> Result<(), ApiError> {
        self.check_member(user)?;
        if self.meta.status == SessionStatus::Ended {
            return Err(ApiError::SessionEnded);
        }
        if self.conns.len() as u64 >= self.meta.max_participants {
            return Err(ApiError::QuotaExceeded {
                message: format!(
                    "the session is full ({} live connections allowed by the owner's plan)",
                    self.meta.max_participants
                ),
                retry_after_ms: None,
            });
        }
        Ok(())
    }

    /// Checks that `user` is a member.
    pub fn check_member(&self, user: &str) -> Result<(), ApiError> {
        if self.meta.is_member(user) {
            Ok(())
        } else {
            Err(ApiError::Forbidden("not a member of this session".into()))
        }
    }

    /// A socket joined (after [`admit`](Self::admit) and the upgrade):
    /// `welcome` to it, `joined` to the others.
    pub fn join(&mut self, conn: &str, user: &str, now: Millis) {
        self.clock.set(now);
        let c = self.new_conn(user.to_owned(), now);
        let p = participant(conn, &c);
        self.conns.insert(conn.to_owned(), c);
        let welcome = ServerFrame::Welcome {
            session_id: self.meta.id.clone(),
            conn_id: conn.to_owned(),
            user_id: user.to_owned(),
            last_seq: self.last_seq,
            participants: self.participants(),
        };
        self.send(conn, &welcome);
        self.broadcast(Some(conn), &ServerFrame::Joined(p));
        self.out.push_back(Action::Presence {
            user: user.to_owned(),
            conn: conn.to_owned(),
            online: true,
        });
    }

    /// A socket closed or failed: `left` to the others. Unknown connections
    /// (already gone) are ignored.
    pub fn leave(&mut self, conn: &str) -> bool {
        match self.conns.remove(conn) {
            Some(c) => {
                self.broadcast(
                    None,
                    &ServerFrame::Left {
                        conn_id: conn.to_owned(),
                        user_id: c.user_id.clone(),
                    },
                );
                self.out.push_back(Action::Presence {
                    user: c.user_id,
                    conn: conn.to_owned(),
                    online: false,
                });
                if self.conns.is_empty() && self.waiting.is_empty() {
                    // Idle: units in hand go back to the owner.
                    self.refund_units();
                }
                true
            }
            None => false,
        }
    }

    /// Whether `conn` is a live participant.
    pub fn has_conn(&self, conn: &str) -> bool {
        self.conns.contains_key(conn)
    }

    /// A text frame from `conn`. Returns a new point to store (then
    /// [`commit`](Self::commit) or [`abort`](Self::abort)); everything else
    /// is queued as actions.
    pub fn on_text(&mut self, conn: &str, text: &str, now: Millis) -> Option<StoredPoint> {
        self.clock.set(now);
        if text.len() > MAX_FRAME_BYTES {
            self.drop_conn(conn, 1009, "frame too large");
            return None;
        }
        if !self.admit_frame(conn) {
            return None;
        }
        let frame = match ClientFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                self.send(conn, &ServerFrame::from_frame_error(&e, text));
                return None;
            }
        };
        match frame {
            ClientFrame::Point(p) => {
                let reference = p.id.clone();
                let known = p.id.as_ref().and_then(|id| self.ids.get(id)).is_some();
                let active = self.meta.status == SessionStatus::Active;
                if active && !known && (!self.waiting.is_empty() || self.budget() == 0) {
                    // No unit in hand: the point waits (in order) for a
                    // reservation from the owner's quota.
                    self.waiting.push_back((conn.to_owned(), p));
                    self.request_units();
                    return None;
                }
                match self.accept(Origin::Socket(conn), p, now) {
                    Ok(Accepted::New(stored)) => return Some(stored),
                    Ok(Accepted::Duplicate { seq, id }) => {
                        self.send(conn, &ServerFrame::Ack { id, seq });
                    }
                    Err(e) => self.send_error(conn, &e, reference),
                }
            }
            ClientFrame::Resume { after_seq } => {
                self.out.push_back(Action::Replay {
                    conn: conn.to_owned(),
                    after_seq,
                    last_seq: self.last_seq,
                });
            }
            ClientFrame::Ping => self.send(conn, &ServerFrame::Pong),
            ClientFrame::End => {
                let user = self.conns.get(conn).map(|c| c.user_id.clone());
                if let Some(user) = user {
                    if let Err(e) = self.end(&user, now) {
                        self.send_error(conn, &e, None);
                    }
                }
            }
        }
        None
    }

    /// A binary frame: not part of the protocol.
    pub fn on_binary(&mut self, conn: &str, len: usize, now: Millis) {
        self.clock.set(now);
        if len > MAX_FRAME_BYTES {
            self.drop_conn(conn, 1009, "frame too large");
            return;
        }
        if self.admit_frame(conn) {
            self.send(
                conn,
                &ServerFrame::error(
                    ErrorCode::Unsupported,
                    "binary frames are not supported; send JSON text",
                ),
            );
        }
    }

    /// The per-connection flood limit. A refused frame gets `rate_limited`;
    /// a connection that keeps on without a second's pause is closed (1008).
    fn admit_frame(&mut self, conn: &str) -> bool {
        let close_after = self.cfg.flood_close_after;
        let now = self.clock.get();
        let Some(c) = self.conns.get_mut(conn) else {
            return false;
        };
        let not_until = match c.limiter.check() {
            Ok(()) => return true,
            Err(n) => n,
        };
        if now.saturating_sub(c.last_refusal) > 1_000 {
            c.strikes = 0;
        }
        c.strikes += 1;
        c.last_refusal = now;
        if c.strikes > close_after {
            self.drop_conn(conn, 1008, "flooding");
        } else {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&self.clock));
            let frame = ServerFrame::Error {
                code: ErrorCode::RateLimited,
                message: "too many frames; slow down".into(),
                r#ref: None,
                retry_after_ms: Some(wait.as_millis().max(1) as u64),
            };
            self.send(conn, &frame);
        }
        false
    }

    fn drop_conn(&mut self, conn: &str, code: u16, reason: &'static str) {
        if self.leave(conn) {
            self.out.push_back(Action::Close {
                conn: conn.to_owned(),
                code,
                reason,
            });
        }
    }

    /// Validates and numbers a point. Nothing is queued: the caller stores a
    /// [`Accepted::New`] point and then commits it.
    pub fn accept(
        &mut self,
        from: Origin<'_>,
        p: NewPoint,
        now: Millis,
    ) -> Result<Accepted, ApiError> {
        let user = match from {
            Origin::Socket(conn) => self
                .conns
                .get(conn)
                .map(|c| c.user_id.clone())
                .ok_or_else(|| ApiError::Forbidden("connection has left".into()))?,
            Origin::Http(user) => {
                self.check_member(user)?;
                user.to_owned()
            }
        };
        if self.meta.status == SessionStatus::Ended {
            return Err(ApiError::SessionEnded);
        }
        if let Some(id) = &p.id {
            if let Some(&seq) = self.ids.get(id) {
                return Ok(Accepted::Duplicate {
                    seq,
                    id: p.id.clone(),
                });
            }
        }
        if self.budget() == 0 {
            return Err(points_exhausted());
        }
        self.last_seq += 1;
        let seq = self.last_seq;
        if let Some(id) = &p.id {
            self.ids.insert(id.clone(), seq);
        }
        Ok(Accepted::New(p.into_stored(seq, user, now)))
    }

    /// Undoes the latest [`accept`](Self::accept) after its write failed.
    pub fn abort(&mut self, p: &StoredPoint) {
        if p.seq == self.last_seq {
            self.last_seq -= 1;
            if let Some(id) = &p.id {
                self.ids.remove(id);
            }
        }
    }

    /// A stored point: ack to its sender (if a socket), the point to every
    /// other participant, and the flush decision.
    pub fn commit(&mut self, from: Origin<'_>, p: &StoredPoint, now: Millis) {
        let json = serde_json::to_string(p).unwrap_or_default();
        self.commit_json(from, p, &json, now);
    }

    /// [`commit`](Self::commit) for a point whose JSON (as stored) the
    /// adapter already has: the broadcast frame is built from it rather
    /// than serialized again.
    pub fn commit_json(&mut self, from: Origin<'_>, p: &StoredPoint, json: &str, now: Millis) {
        let except = match from {
            Origin::Socket(conn) => {
                self.send(
                    conn,
                    &ServerFrame::Ack {
                        id: p.id.clone(),
                        seq: p.seq,
                    },
                );
                Some(conn.to_owned())
            }
            Origin::Http(_) => None,
        };
        if self.conns.len() > usize::from(except.is_some()) {
            self.out.push_back(Action::Broadcast {
                except,
                text: point_frame(json).into(),
            });
        }
        if self.flush.pending_since.is_none() {
            self.flush.pending_since = Some(now);
        }
        if self.budget() < self.block / 2 {
            // Top up before running dry, so points rarely wait.
            self.request_units();
        }
        self.schedule();
    }

    /// How many of `points` would be new (not repeats of a known or an
    /// earlier id in the same batch): the units a batch needs.
    pub fn new_points(&self, points: &[NewPoint]) -> u64 {
        let mut seen = std::collections::HashSet::new();
        points
            .iter()
            .filter(|p| match &p.id {
                Some(id) => !self.ids.contains_key(id) && seen.insert(id.as_str()),
                None => true,
            })
            .count() as u64
    }

    /// Points units still in hand.
    pub fn budget(&self) -> u64 {
        self.units.saturating_sub(self.last_seq)
    }

    /// Points units held, net of refunds (persisted by the adapter).
    pub fn units(&self) -> u64 {
        self.units
    }

    fn request_units(&mut self) {
        if !self.reserving && self.meta.status == SessionStatus::Active {
            self.reserving = true;
            self.out.push_back(Action::Reserve(self.block));
        }
    }

    /// Units added outside a [`Action::Reserve`] (an HTTP batch that
    /// reserved what it needs).
    pub fn add_units(&mut self, n: u64) {
        if n > 0 {
            self.units += n;
            self.out.push_back(Action::SaveUnits);
        }
    }

    /// A reservation came back with `n` units. Waiting points are numbered
    /// now, in order, and returned for storage; those beyond the quota get
    /// `quota_exceeded` error frames.
    pub fn granted(&mut self, n: u64, now: Millis) -> Vec<(ConnId, StoredPoint)> {
        self.clock.set(now);
        self.reserving = false;
        self.block = if n >= self.block {
            (self.block * 2).min(self.cfg.reserve_block * 16)
        } else {
            self.cfg.reserve_block
        };
        self.add_units(n);
        if self.meta.status == SessionStatus::Ended {
            // Too late: the session ended while the reservation was out.
            self.refund_units();
        }
        let mut ready = Vec::new();
        while let Some((conn, p)) = self.waiting.pop_front() {
            if !self.conns.contains_key(&conn) {
                continue;
            }
            let reference = p.id.clone();
            match self.accept(Origin::Socket(&conn), p, now) {
                Ok(Accepted::New(stored)) => ready.push((conn, stored)),
                Ok(Accepted::Duplicate { seq, id }) => {
                    self.send(&conn, &ServerFrame::Ack { id, seq })
                }
                Err(e) => self.send_error(&conn, &e, reference),
            }
        }
        ready
    }

    /// The owner's quota could not be asked: waiting points get an
    /// `unavailable` error frame (never a silent drop); the client resends.
    pub fn reserve_failed(&mut self) {
        self.reserving = false;
        let e = ApiError::Unavailable("could not reserve points quota".into());
        while let Some((conn, p)) = self.waiting.pop_front() {
            let frame = ServerFrame::Error {
                code: e.code(),
                message: "the points quota could not be checked; send the point again".into(),
                r#ref: p.id,
                retry_after_ms: Some(1_000),
            };
            self.send(&conn, &frame);
        }
    }

    fn refund_units(&mut self) {
        let spare = self.budget();
        if spare > 0 {
            self.units -= spare;
            self.out.push_back(Action::Refund(spare));
            self.out.push_back(Action::SaveUnits);
        }
    }

    /// Ends the session (owner only): `ended` to everyone, every socket
    /// closed with 1000, and a flush of everything. Ending twice is fine.
    pub fn end(&mut self, user: &str, now: Millis) -> Result<(), ApiError> {
        self.check_member(user)?;
        if user != self.meta.owner_id {
            return Err(ApiError::Forbidden(
                "only the owner can end the session".into(),
            ));
        }
        if self.meta.status == SessionStatus::Ended {
            return Ok(());
        }
        self.meta.status = SessionStatus::Ended;
        self.meta.ended_at = Some(now);
        self.meta_version += 1;
        self.out.push_back(Action::SaveMeta);
        self.broadcast(
            None,
            &ServerFrame::Ended {
                last_seq: self.last_seq,
            },
        );
        let conns = std::mem::take(&mut self.conns);
        for (conn, c) in conns {
            self.out.push_back(Action::Presence {
                user: c.user_id,
                conn: conn.clone(),
                online: false,
            });
            self.out.push_back(Action::Close {
                conn,
                code: 1000,
                reason: "session ended",
            });
        }
        self.waiting.clear();
        self.refund_units();
        // Everything goes to D1 now, not after the interval.
        self.flush.pending_since = Some(now - self.cfg.flush_interval_ms as Millis);
        self.flush.retry_at = None;
        self.schedule();
        Ok(())
    }

    fn has_pending(&self) -> bool {
        self.flush.flushed_seq < self.last_seq
            || self.flush.flushed_meta_version < self.meta_version
    }

    /// When the next flush is due, if anything is pending.
    pub fn next_flush_at(&self) -> Option<Millis> {
        if self.flush.in_flight.is_some() || !self.has_pending() {
            return None;
        }
        if let Some(r) = self.flush.retry_at {
            return Some(r);
        }
        let since = self.flush.pending_since?;
        let pending = self.last_seq - self.flush.flushed_seq;
        if pending >= u64::from(self.cfg.flush_batch) {
            Some(since.min(self.clock.get()))
        } else {
            Some(since + self.cfg.flush_interval_ms as Millis)
        }
    }

    fn schedule(&mut self) {
        if let Some(at) = self.next_flush_at() {
            self.out.push_back(Action::WakeAt(at));
        }
    }

    /// The batch to write to D1 now, if one is due. At most one is in flight.
    pub fn poll_flush(&mut self, now: Millis) -> Option<FlushBatch> {
        self.clock.set(now);
        match self.next_flush_at() {
            Some(at) if at <= now => {}
            _ => return None,
        }
        let from = self.flush.flushed_seq + 1;
        let to = self
            .last_seq
            .min(self.flush.flushed_seq + self.cfg.max_flush_points);
        let batch = FlushBatch {
            from,
            to,
            meta_version: self.meta_version,
        };
        self.flush.in_flight = Some(batch);
        Some(batch)
    }

    /// The outcome of writing `batch` to D1. On success the adapter has
    /// already stored the new watermark.
    pub fn flush_done(&mut self, batch: FlushBatch, ok: bool, now: Millis) {
        self.clock.set(now);
        if self.flush.in_flight != Some(batch) {
            return;
        }
        self.flush.in_flight = None;
        if ok {
            self.flush.flushed_seq = self.flush.flushed_seq.max(batch.to);
            self.flush.flushed_meta_version =
                self.flush.flushed_meta_version.max(batch.meta_version);
            self.flush.failures = 0;
            self.flush.retry_at = None;
            self.flush.pending_since = if self.has_pending() {
                // What arrived during the write waits at most one interval;
                // a full batch goes at once (next_flush_at).
                Some(now)
            } else {
                None
            };
        } else {
            self.flush.failures += 1;
            self.flush.retry_at = Some(now + retry_backoff_ms(self.flush.failures) as Millis);
        }
        self.schedule();
    }

    /// The durable D1 watermark.
    pub fn flushed_seq(&self) -> u64 {
        self.flush.flushed_seq
    }

    fn send(&mut self, to: &str, frame: &ServerFrame) {
        self.out.push_back(Action::Send {
            to: to.to_owned(),
            text: frame.to_json().into(),
        });
    }

    fn send_error(&mut self, to: &str, e: &ApiError, reference: Option<String>) {
        let frame = ServerFrame::Error {
            code: e.code(),
            message: e.public_message(),
            r#ref: reference,
            retry_after_ms: None,
        };
        self.send(to, &frame);
    }

    fn broadcast(&mut self, except: Option<&str>, frame: &ServerFrame) {
        if self.conns.keys().any(|c| Some(c.as_str()) != except) {
            self.out.push_back(Action::Broadcast {
                except: except.map(str::to_owned),
                text: frame.to_json().into(),
            });
        }
    }
}

/// `{"type":"point", ...stored point}` from a stored point's JSON object.
pub fn point_frame(json: &str) -> String {
    let rest = json.strip_prefix('{').unwrap_or(json);
    if rest.trim_start().starts_with('}') {
        return r#"{"type":"point"}"#.to_owned();
    }
    format!("{{\"type\":\"point\",{rest}")
}

fn points_exhausted() -> ApiError {
    ApiError::QuotaExceeded {
        message: "the session owner's daily points quota is used up".into(),
        retry_after_ms: None,
    }
}

fn participant(id: &str, c: &Conn) -> Participant {
    Participant {
        conn_id: id.to_owned(),
        user_id: c.user_id.clone(),
        joined_at: rfc3339(c.joined_at),
    }
}

#[cfg(test)]
mod tests;
