//! The session core: membership, sequencing, idempotency, flood limits,
//! points units, live stats, the D1 batching decision, and which frame goes
//! to whom.
//!
//! Events come in as method calls with `now`; decisions come out of one
//! channel, [`SessionCore::poll`], each carrying the data needed to carry
//! it out (quinn-proto's `handle_event` / `poll_transmit` split). Outcomes
//! of I/O come back as events: [`SessionCore::stored`],
//! [`SessionCore::granted`], [`SessionCore::flush_done`].
//!
//! A point is numbered into a pending write; the adapter stores the whole
//! write in one transaction ([`Decision::Store`]) and reports the outcome.
//! Only then are acks and broadcasts queued, so "durable, then acked" is
//! structural; a failed write is rolled back (seqs, ids, units, stats) as
//! if its points never came.

mod error;
mod flood;
mod flush;
mod ids;
mod membership;
mod record;
mod stats;
pub mod storage;
mod units;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sesh_protocol::limits::MAX_FRAME_BYTES;
use sesh_protocol::{
    session_id_unix_ms, ClientFrame, CreateSession, ErrorCode, KindStats, NewPoint, ServerFrame,
    Session, SessionStatus, StoredPoint,
};

pub use flush::{retry_backoff_ms, FlushBatch};
pub use ids::{IdCache, IdKey, IdLookup, NoIds};
pub use membership::{
    check_owner_not_listed, retired_call, Change, ConnId, RetiredAnswer, RetiredCall,
};
pub use units::{day_of, until_next_day, Settlement, Units};

use crate::clock::VirtualClock;
use crate::config::Plans;
use crate::outbox::{Outbox, RETRY_MS};
use crate::time::Millis;
pub use error::SessionError;
use flood::{Gcra, Strikes};
use flush::{FlushState, Pending};
use membership::{participant, Conn, Conns};
pub use stats::Checkpoint;
use stats::Stats;

/// How far ahead of server time a point's `ts` may lie.
pub const MAX_TS_AHEAD_MS: Millis = 24 * 60 * 60 * 1000;

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
    /// Writers besides the owner.
    pub members: Vec<String>,
    /// Viewers (a record stored before viewers existed has none).
    #[serde(default)]
    pub viewers: Vec<String>,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
    /// Active or ended.
    pub status: SessionStatus,
    /// Creation time (from the v7 id, so it lies in the id's month).
    pub started_at: Millis,
    /// End time, once ended.
    pub ended_at: Option<Millis>,
    /// Live connections allowed at once by the owner's plan as last seen.
    pub max_participants: u64,
    /// The owner's plan as last seen, whose daily points the session uses.
    pub owner_plan: String,
}

impl Meta {
    /// The record of session `id`, created by `owner` on `plan` (whose cap
    /// of live connections is `max_participants`) at `now`. Its start is the
    /// time its v7 id encodes, so it lies in the id's month (the partition
    /// its row goes to); `now` for an id of another version.
    pub fn new(
        id: String,
        (owner, plan, max_participants): (&str, &str, u64),
        create: CreateSession,
        now: Millis,
    ) -> Meta {
        Meta {
            started_at: session_id_unix_ms(&id).unwrap_or(now),
            id,
            owner_id: owner.to_owned(),
            title: create.title,
            members: create.members.unwrap_or_default(),
            viewers: create.viewers.unwrap_or_default(),
            metadata: create.metadata.unwrap_or_default(),
            status: SessionStatus::Active,
            ended_at: None,
            max_participants,
            owner_plan: plan.to_owned(),
        }
    }

    /// Whether `user` may read and join.
    pub fn is_member(&self, user: &str) -> bool {
        membership::check_member(self, user).is_ok()
    }

    /// Whether `user` may write points (the owner or a writer).
    pub fn is_writer(&self, user: &str) -> bool {
        membership::check_writer(self, user).is_ok()
    }
}

/// Tuning of one session core (configuration, apart from stored state).
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
    /// Frames per second of all connections together.
    pub session_frames_per_sec: u32,
    /// Burst of all connections together.
    pub session_frames_burst: u32,
    /// Live sockets one user may hold in the session.
    pub seats_per_user: u64,
    /// Points replayed per `resume`.
    pub replay_page: u64,
    /// Points units reserved from the owner's quota at a time, at first;
    /// a busy session's blocks double (to 16 times this) while they are
    /// granted in full, so a fast session asks its quota rarely.
    pub reserve_block: u64,
    /// Socket points that may wait for a reservation at once.
    pub waiting_max_points: usize,
    /// Bytes (frame text) of the points waiting for a reservation.
    pub waiting_max_bytes: usize,
    /// Units in hand go back after this long without a point or a socket.
    pub units_idle_ms: u64,
    /// Spent units are settled as used at most this often, and within
    /// this long of being spent (each settlement is a call to the quota
    /// object, too dear for every D1 flush of a busy session).
    pub units_settle_ms: u64,
    /// Stored points between two checkpoints of the stats (a wake-up
    /// counts at most about this many points after the last one).
    pub stats_every: u64,
    /// Distinct kinds of valued points a session holds (`MAX_KINDS`): the
    /// stats, every checkpoint and every GET answer grow with them.
    pub max_kinds: usize,
    /// Client ids remembered in memory; older ones are looked up.
    pub id_cache: usize,
    /// An ended session's storage is deleted this long after the end, once
    /// everything is in D1, every unit is settled and both outboxes are
    /// delivered (`ENDED_RETENTION_MS`).
    pub ended_retention_ms: u64,
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
            session_frames_per_sec: 10_000,
            session_frames_burst: 10_000,
            seats_per_user: 3,
            replay_page: 1_000,
            reserve_block: 200,
            waiting_max_points: 1_000,
            waiting_max_bytes: 1 << 20,
            units_idle_ms: 60_000,
            units_settle_ms: 1_000,
            stats_every: 100,
            max_kinds: 1_000,
            id_cache: 10_000,
            ended_retention_ms: 7 * 86_400_000,
        }
    }
}

/// A numbered point with its JSON as stored (and broadcast).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The point.
    pub point: StoredPoint,
    /// Its JSON object.
    pub json: String,
}

/// What one storage write holds: the points, which pay their units and
/// count their figures as they go in.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// New points, in seq order. Storing them also spends their units and
    /// counts their values ([`storage`]'s triggers).
    pub points: Vec<Rc<Row>>,
}

/// One D1 flush: the seq range, the session row's data, the point count,
/// and the live `stats` of every kind changed after the points already in
/// D1 (they may count stored points past the range).
#[derive(Debug, Clone, PartialEq)]
pub struct FlushJob {
    /// The seq range and the record version.
    pub batch: FlushBatch,
    /// The session record to upsert.
    pub meta: Meta,
    /// Points the row counts.
    pub point_count: u64,
    /// Figures to upsert, per kind.
    pub stats: Vec<(String, KindStats)>,
}

/// A decision for the adapter to carry out, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
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
    /// Send `conn` the stored points with `after < seq <= through` as
    /// `point` frames, in order, then the text `then` (`resumed`).
    Replay {
        /// The resuming connection.
        conn: ConnId,
        /// Exclusive lower bound.
        after: u64,
        /// Inclusive upper bound.
        through: u64,
        /// The frame that ends the page.
        then: Rc<str>,
    },
    /// Store these points (with their units and figures) atomically, then
    /// report with [`SessionCore::stored`] before polling on.
    Store(Write),
    /// Persist the session record.
    SaveMeta {
        /// The record.
        meta: Meta,
        /// Its version.
        version: u64,
    },
    /// Persist the units in hand.
    SaveUnits(Units),
    /// Keep connection `conn`'s live state with its socket (the
    /// attachment), so it survives hibernation.
    SaveState {
        /// The connection.
        conn: ConnId,
        /// Its state.
        state: Map<String, Value>,
    },
    /// Persist a stats checkpoint (figures and mark in one transaction),
    /// then report with [`SessionCore::stats_saved`] before polling on.
    SaveStats(Checkpoint),
    /// Put entry `id` in the presence outbox: the user's presence is to
    /// hear that a connection came or went ([`Decision::Deliver`] follows).
    Presence {
        /// The entry's id (stable: the receiver applies it once).
        id: u64,
        /// Whose presence.
        user: String,
        /// The connection.
        conn: ConnId,
        /// Joined (`true`) or gone (`false`).
        online: bool,
    },
    /// Reserve up to `want` points units from `owner`'s quota, then report
    /// with [`SessionCore::granted`] or [`SessionCore::reserve_failed`].
    Reserve {
        /// The session owner.
        owner: String,
        /// The owner's plan.
        plan: String,
        /// Units wanted.
        want: u64,
    },
    /// Settle units with the owner's quota: in one transaction put the
    /// settlement in the settlement outbox as entry `id` and persist
    /// `units` ([`Decision::Deliver`] follows).
    Settle {
        /// The entry's id (stable: the receiver applies it once).
        id: u64,
        /// The session owner.
        owner: String,
        /// The owner's plan.
        plan: String,
        /// What to settle.
        settlement: Settlement,
        /// Units in hand after it.
        units: Units,
    },
    /// Write this batch to D1, then report with
    /// [`SessionCore::flush_done`].
    Flush(FlushJob),
    /// Deliver an outbox entry to its receiver, then report with
    /// [`SessionCore::delivered`] (and delete it from storage) or
    /// [`SessionCore::undeliverable`]. One entry per outbox is out at a time.
    Deliver {
        /// Which outbox, and the entry's id there.
        id: EntryId,
        /// What to deliver.
        item: Outgoing,
    },
    /// Ask the owner's quota for the owner's current plan, then report
    /// with [`SessionCore::plan_known`].
    AskPlan {
        /// The session owner.
        owner: String,
    },
    /// The answer to the HTTP batch `batch` of [`SessionCore::append`]:
    /// its seqs once its points are stored, or why it was refused.
    Appended {
        /// The batch.
        batch: u64,
        /// Its seqs, in request order, or the refusal.
        result: Result<Vec<u64>, SessionError>,
    },
    /// Make sure the object wakes (alarm) no later than this.
    WakeAt(Millis),
    /// The session ended long enough ago, everything of it is in D1 and
    /// settled, and both outboxes are delivered: delete the object's
    /// storage (report a failure with [`SessionCore::retire_failed`]).
    /// Reads are answered from D1 afterwards.
    Retire,
}

/// An entry of one of the session's outboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryId {
    /// Of the presence outbox.
    Presence(u64),
    /// Of the settlement outbox.
    Settle(u64),
}

/// What a user's presence hears about one of the user's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceNote {
    /// Whose presence.
    pub user: String,
    /// The connection.
    pub conn: ConnId,
    /// Joined (`true`) or gone (`false`).
    pub online: bool,
}

/// A settlement for the owner's quota object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleNote {
    /// The session owner.
    pub owner: String,
    /// The owner's plan.
    pub plan: String,
    /// What to settle.
    pub settlement: Settlement,
}

/// What a [`Decision::Deliver`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// To the user's presence object.
    Presence(PresenceNote),
    /// To the owner's quota object.
    Settle(SettleNote),
}

/// A socket that survived hibernation: (conn, user, joined at, live state).
pub type RestoredConn = (ConnId, String, Millis, Option<Map<String, Value>>);

/// What storage holds, to rebuild a core after a wake-up.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Highest stored seq.
    pub last_seq: u64,
    /// Durable D1 watermark.
    pub flushed_seq: u64,
    /// Live sockets that survived hibernation: (conn, user, joined at,
    /// live state).
    pub conns: Vec<RestoredConn>,
    /// Version of the stored session record.
    pub meta_version: u64,
    /// Version of the session record already in D1.
    pub flushed_meta_version: u64,
    /// Points units held.
    pub units: Units,
    /// Live figures per kind, as of the stats checkpoint.
    pub stats: std::collections::BTreeMap<String, KindStats>,
    /// The seq the checkpoint counts through.
    pub stats_through: u64,
    /// `(kind, value)` of the valued points stored after it, in order.
    pub stats_tail: Vec<(String, f64)>,
    /// Undelivered presence entries, with their ids.
    pub presence_outbox: Vec<(u64, PresenceNote)>,
    /// Undelivered settlements, with their ids.
    pub settle_outbox: Vec<(u64, SettleNote)>,
    /// The highest ids ever given in the outboxes (presence, settlements).
    pub outbox_last_ids: (u64, u64),
}

/// The session's durable state as the core holds it.
struct State {
    meta: Meta,
    meta_version: u64,
    last_seq: u64,
    units: Units,
    stats: Stats,
    flush: FlushState,
}

/// A point waiting for a reservation.
struct Waiting {
    conn: ConnId,
    point: NewPoint,
    bytes: usize,
}

/// An HTTP batch waiting for a reservation.
struct Batch {
    id: u64,
    user: String,
    points: Vec<NewPoint>,
}

/// Points numbered and not stored yet, with what to undo if the write fails.
struct PendingWrite {
    // HTTP batches answered once the write is stored: (batch, seqs).
    batches: Vec<(u64, Vec<u64>)>,
    rows: Vec<(Option<ConnId>, Rc<Row>)>,
    ids: HashMap<IdKey, u64>,
    // Repeats of a pending point, acked once it is stored.
    acks: Vec<(ConnId, Option<String>, u64)>,
    units_before: Units,
    stats_before: Vec<(String, Option<KindStats>)>,
    polled: bool,
}

/// One session's state and logic.
pub struct SessionCore {
    cfg: Config,
    st: State,
    conns: Conns,
    ids: IdCache,
    write: Option<PendingWrite>,
    waiting: VecDeque<Waiting>,
    waiting_bytes: usize,
    batches: VecDeque<Batch>,
    next_batch: u64,
    presence_out: Outbox<PresenceNote>,
    settle_out: Outbox<SettleNote>,
    // The size of the reservation that is out, if one is.
    reserving: Option<u64>,
    // The size of the next reservation (see `Config::reserve_block`).
    block: u64,
    last_activity: Millis,
    // When units were last settled (or the core was made).
    settled_at: Millis,
    session_limit: Gcra,
    clock: VirtualClock,
    out: VecDeque<Decision>,
}

impl SessionCore {
    /// A new session.
    pub fn create(meta: Meta, cfg: Config, now: Millis) -> SessionCore {
        let mut core = Self::build(meta, cfg, Restored::default(), now);
        // The new row must reach D1 even if no point ever does, and at
        // once: the session list reads D1.
        core.st.meta_version = 1;
        core.st.flush.note_urgent(now);
        core.save_meta();
        core.schedule();
        core
    }

    /// A session rebuilt from storage after the object woke up.
    pub fn restore(meta: Meta, cfg: Config, r: Restored, now: Millis) -> SessionCore {
        let mut core = Self::build(meta, cfg, r, now);
        if core
            .st
            .flush
            .has_pending(core.st.last_seq, core.st.meta_version)
        {
            core.st.flush.note(now);
        }
        core.schedule();
        core
    }

    fn build(meta: Meta, cfg: Config, r: Restored, now: Millis) -> SessionCore {
        let clock = VirtualClock::default();
        clock.set(now);
        let mut core = SessionCore {
            st: State {
                meta,
                meta_version: r.meta_version,
                last_seq: r.last_seq,
                units: r.units,
                stats: Stats::restore_from(r.stats, r.stats_through, r.stats_tail),
                flush: FlushState {
                    flushed_seq: r.flushed_seq.min(r.last_seq),
                    flushed_meta_version: r.flushed_meta_version,
                    ..FlushState::default()
                },
            },
            conns: Conns::default(),
            ids: IdCache::new(cfg.id_cache, r.last_seq == 0),
            write: None,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            batches: VecDeque::new(),
            next_batch: 1,
            presence_out: Outbox::restore(r.presence_outbox, r.outbox_last_ids.0),
            settle_out: Outbox::restore(r.settle_outbox, r.outbox_last_ids.1),
            reserving: None,
            block: cfg.reserve_block,
            last_activity: now,
            settled_at: now,
            session_limit: Gcra::new(cfg.session_frames_per_sec, cfg.session_frames_burst, &clock),
            clock,
            out: VecDeque::new(),
            cfg,
        };
        for (conn, user, joined_at, state) in r.conns {
            let mut c = core.new_conn(user, joined_at);
            c.state = state;
            core.conns.0.insert(conn, c);
        }
        core
    }

    fn new_conn(&self, user_id: String, joined_at: Millis) -> Conn {
        Conn {
            user_id,
            joined_at,
            limiter: Gcra::new(self.cfg.flood_per_sec, self.cfg.flood_burst, &self.clock),
            strikes: Strikes::default(),
            state: None,
        }
    }

    fn tick_clock(&mut self, now: Millis) {
        self.clock.set(now);
    }

    /// The next decision to carry out, if any. A pending write comes out as
    /// [`Decision::Store`] once everything queued before it is out.
    pub fn poll(&mut self) -> Option<Decision> {
        if let Some(d) = self.out.pop_front() {
            return Some(d);
        }
        let w = self.write.as_mut().filter(|w| !w.polled)?;
        w.polled = true;
        Some(Decision::Store(Write {
            points: w.rows.iter().map(|(_, r)| Rc::clone(r)).collect(),
        }))
    }

    /// The session record.
    pub fn meta(&self) -> &Meta {
        &self.st.meta
    }

    /// The latest stored seq.
    pub fn last_seq(&self) -> u64 {
        self.st.last_seq
    }

    /// The version of the session record; bumps on every change that D1
    /// must see.
    pub fn meta_version(&self) -> u64 {
        self.st.meta_version
    }

    /// Units in hand.
    pub fn units(&self) -> Units {
        self.st.units
    }

    /// The durable D1 watermark.
    pub fn flushed_seq(&self) -> u64 {
        self.st.flush.flushed_seq
    }

    /// The session as answered over HTTP, with live participants and stats.
    pub fn view(&self) -> Session {
        let mut summary = self.st.meta.record(self.st.last_seq);
        summary.stats = self.st.stats.all();
        Session {
            summary,
            participants: self.conns.participants(),
        }
    }

    /// Whether `conn` is a live participant.
    pub fn has_conn(&self, conn: &str) -> bool {
        self.conns.0.contains_key(conn)
    }

    /// Checks that `user` is a member.
    pub fn check_member(&self, user: &str) -> Result<(), SessionError> {
        membership::check_member(&self.st.meta, user)
    }

    /// The owner's current plan and its participants cap (asked of the
    /// owner's quota at each join); points reservations use it from now on.
    pub fn set_plan(&mut self, plan: &str, max_participants: u64) {
        let m = &mut self.st.meta;
        if m.owner_plan != plan || m.max_participants != max_participants {
            m.owner_plan = plan.to_owned();
            m.max_participants = max_participants;
            self.save_meta();
        }
    }

    /// Whether `user` may open a socket now; checked before the upgrade,
    /// with the participants cap of the owner's current plan.
    pub fn admit(&self, user: &str) -> Result<(), SessionError> {
        membership::admit(
            &self.st.meta,
            &self.conns,
            user,
            self.st.meta.max_participants,
            self.cfg.seats_per_user,
        )
    }

    /// A socket joined (after [`admit`](Self::admit) and the upgrade):
    /// `welcome` to it, `joined` to the others.
    pub fn join(&mut self, conn: &str, user: &str, now: Millis) {
        self.tick_clock(now);
        let c = self.new_conn(user.to_owned(), now);
        let p = participant(conn, &c);
        self.conns.0.insert(conn.to_owned(), c);
        let welcome = ServerFrame::Welcome {
            session_id: self.st.meta.id.clone(),
            conn_id: conn.to_owned(),
            user_id: user.to_owned(),
            last_seq: self.st.last_seq,
            participants: self.conns.participants(),
        };
        self.send(conn, &welcome);
        self.broadcast(Some(conn), &ServerFrame::Joined(p));
        self.note_presence(user.to_owned(), conn.to_owned(), true);
    }

    /// A socket closed or failed: `left` to the others. Unknown connections
    /// (already gone) are ignored.
    pub fn leave(&mut self, conn: &str, now: Millis) -> bool {
        self.tick_clock(now);
        let Some(c) = self.conns.0.remove(conn) else {
            return false;
        };
        self.broadcast(
            None,
            &ServerFrame::Left {
                conn_id: conn.to_owned(),
                user_id: c.user_id.clone(),
            },
        );
        self.note_presence(c.user_id, conn.to_owned(), false);
        self.waiting.retain(|w| w.conn != conn);
        self.waiting_bytes = self.waiting.iter().map(|w| w.bytes).sum();
        if self.is_idle() {
            // Idle: units in hand go back to the owner.
            self.settle_all();
        }
        true
    }

    /// A text frame from `conn`.
    pub fn on_text(&mut self, conn: &str, text: &str, now: Millis, ids: &mut dyn IdLookup) {
        self.tick_clock(now);
        if text.len() > MAX_FRAME_BYTES {
            self.drop_conn(conn, 1009, "frame too large");
            return;
        }
        if !self.admit_frame(conn) {
            return;
        }
        let frame = match ClientFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                self.send(conn, &ServerFrame::from_frame_error(&e, text));
                return;
            }
        };
        match frame {
            ClientFrame::Point(p) => self.socket_point(conn, p, text.len(), now, ids),
            ClientFrame::Resume { after_seq } => self.resume(conn, after_seq),
            ClientFrame::Ping => self.send(conn, &ServerFrame::Pong),
            ClientFrame::Signal { data, to } => self.signal(conn, data, to),
            ClientFrame::State { data } => self.set_state(conn, data),
            ClientFrame::End => {
                let user = self.conns.0.get(conn).map(|c| c.user_id.clone());
                if let Some(user) = user {
                    if let Err(e) = self.end(&user, now) {
                        self.send_error(conn, &e, None);
                    }
                }
            }
        }
    }

    /// A binary frame: not part of the protocol.
    pub fn on_binary(&mut self, conn: &str, len: usize, now: Millis) {
        self.tick_clock(now);
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

    // An ephemeral message: to one other connection or to everyone else;
    // nothing stored, nothing charged (the flood limit was taken).
    fn signal(&mut self, conn: &str, data: Map<String, Value>, to: Option<String>) {
        let Some(user) = self.conns.0.get(conn).map(|c| c.user_id.clone()) else {
            return;
        };
        let frame = ServerFrame::Signal {
            from: conn.to_owned(),
            user_id: user,
            data,
        };
        match to {
            Some(to) if to != conn && self.conns.0.contains_key(&to) => self.send(&to, &frame),
            Some(to) => {
                let e = SessionError::NotFound(format!(
                    "no other live connection `{to}` in this session"
                ));
                self.send_error(conn, &e, None);
            }
            None => self.broadcast(Some(conn), &frame),
        }
    }

    // The connection's live state: kept with the socket, announced to the
    // others.
    fn set_state(&mut self, conn: &str, data: Map<String, Value>) {
        let Some(c) = self.conns.0.get_mut(conn) else {
            return;
        };
        c.state = Some(data.clone());
        let user = c.user_id.clone();
        self.out.push_back(Decision::SaveState {
            conn: conn.to_owned(),
            state: data.clone(),
        });
        self.broadcast(
            Some(conn),
            &ServerFrame::State {
                conn_id: conn.to_owned(),
                user_id: user,
                data,
            },
        );
    }

    /// A membership change by `caller` (`PUT` or `DELETE .../members/{user}`).
    /// Applied to the record, which is stored ([`Decision::SaveMeta`])
    /// before anything else of it goes out; then a removed user's sockets
    /// get `removed` and close (1008), and every remaining participant gets
    /// `members`. The record reaches D1 with the next flush. A change that
    /// changes nothing (the role already held) decides nothing. Points
    /// numbered before it (in flight) keep their seqs; from now on a
    /// viewer's points are refused.
    pub fn change_members(
        &mut self,
        caller: &str,
        change: &Change,
        now: Millis,
    ) -> Result<(), SessionError> {
        self.tick_clock(now);
        if !membership::apply(&mut self.st.meta, caller, change)? {
            return Ok(());
        }
        self.st.meta_version += 1;
        self.save_meta();
        self.st.flush.note(now);
        if let Change::Remove { user } = change {
            self.remove_user(user, now);
        }
        let frame = ServerFrame::Members {
            members: self.st.meta.members.clone(),
            viewers: self.st.meta.viewers.clone(),
        };
        self.broadcast(None, &frame);
        // Waiting points of a user who is no longer a writer are refused
        // now rather than numbered later.
        self.refuse_non_writers();
        self.schedule();
        Ok(())
    }

    // Every socket of a removed user: `removed`, then the close, before
    // anything else is sent (the adapter drops a socket at its close, so
    // nothing reaches it afterwards); then `left` to the others.
    fn remove_user(&mut self, user: &str, now: Millis) {
        let conns: Vec<ConnId> = self
            .conns
            .0
            .iter()
            .filter(|(_, c)| c.user_id == user)
            .map(|(id, _)| id.clone())
            .collect();
        for conn in &conns {
            self.send(conn, &ServerFrame::Removed);
            self.out.push_back(Decision::Close {
                conn: conn.clone(),
                code: 1008,
                reason: "removed from the session",
            });
        }
        for conn in &conns {
            self.leave(conn, now);
        }
    }

    fn refuse_non_writers(&mut self) {
        let meta = &self.st.meta;
        let conns = &self.conns;
        let (keep, refuse): (VecDeque<Waiting>, VecDeque<Waiting>) =
            std::mem::take(&mut self.waiting)
                .into_iter()
                .partition(|w| {
                    conns
                        .0
                        .get(&w.conn)
                        .is_some_and(|c| meta.is_writer(&c.user_id))
                });
        self.waiting = keep;
        self.waiting_bytes = self.waiting.iter().map(|w| w.bytes).sum();
        let e = SessionError::Forbidden("viewers cannot write points in this session".into());
        for w in refuse {
            self.send_error(&w.conn, &e, w.point.id);
        }
        let (keep, refuse): (VecDeque<Batch>, VecDeque<Batch>) = std::mem::take(&mut self.batches)
            .into_iter()
            .partition(|b| self.st.meta.is_writer(&b.user));
        self.batches = keep;
        for b in refuse {
            let e = membership::check_writer(&self.st.meta, &b.user)
                .err()
                .unwrap_or_else(|| e.clone());
            self.answer(b.id, Err(e));
        }
    }

    fn resume(&mut self, conn: &str, after: u64) {
        let last = self.st.last_seq;
        let through = if after >= last {
            after
        } else {
            last.min(after.saturating_add(self.cfg.replay_page.max(1)))
        };
        let then = ServerFrame::Resumed {
            last_seq: last,
            through_seq: through,
            more: through < last,
        };
        self.out.push_back(Decision::Replay {
            conn: conn.to_owned(),
            after,
            through: through.min(last),
            then: then.to_json().into(),
        });
    }

    /// The flood limits. A refused frame gets `rate_limited`; a connection
    /// that keeps on without a second's pause is closed (1008). Refusals
    /// by the session-wide limit are not the connection's strikes.
    fn admit_frame(&mut self, conn: &str) -> bool {
        let now = self.clock.get();
        let Some(c) = self.conns.0.get_mut(conn) else {
            return false;
        };
        let wait = match c.limiter.take(&self.clock) {
            Ok(()) => match self.session_limit.take(&self.clock) {
                Ok(()) => return true,
                Err(wait) => wait,
            },
            Err(wait) => {
                if c.strikes.strike(now) > self.cfg.flood_close_after {
                    self.drop_conn(conn, 1008, "flooding");
                    return false;
                }
                wait
            }
        };
        let frame = ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: "too many frames; slow down".into(),
            r#ref: None,
            retry_after_ms: Some(wait),
        };
        self.send(conn, &frame);
        false
    }

    fn drop_conn(&mut self, conn: &str, code: u16, reason: &'static str) {
        let now = self.clock.get();
        if self.leave(conn, now) {
            self.out.push_back(Decision::Close {
                conn: conn.to_owned(),
                code,
                reason,
            });
        }
    }

    fn socket_point(
        &mut self,
        conn: &str,
        p: NewPoint,
        bytes: usize,
        now: Millis,
        ids: &mut dyn IdLookup,
    ) {
        let Some(user) = self.conns.0.get(conn).map(|c| c.user_id.clone()) else {
            return;
        };
        let reference = p.id.clone();
        if let Err(e) = membership::check_writer(&self.st.meta, &user) {
            self.send_error(conn, &e, reference);
            return;
        }
        if let Err(e) = self.check_point(&p, now) {
            self.send_error(conn, &e, reference);
            return;
        }
        if let Some(seq) = self.known(&user, p.id.as_deref(), ids) {
            self.ack_repeat(conn, p.id, seq);
            return;
        }
        self.roll_day(now);
        if !self.waiting.is_empty() || self.st.units.spendable(now) == 0 {
            self.wait_for_units(conn, p, bytes);
            return;
        }
        self.number(Some(conn), &user, p, now);
    }

    /// Queues a point for the next reservation, within the bounds.
    fn wait_for_units(&mut self, conn: &str, p: NewPoint, bytes: usize) {
        if self.waiting.len() >= self.cfg.waiting_max_points
            || self.waiting_bytes + bytes > self.cfg.waiting_max_bytes
        {
            let frame = ServerFrame::Error {
                code: ErrorCode::RateLimited,
                message: "too many points are waiting for the points quota; send this one again"
                    .into(),
                r#ref: p.id,
                retry_after_ms: Some(1_000),
            };
            self.send(conn, &frame);
            return;
        }
        self.waiting_bytes += bytes;
        self.waiting.push_back(Waiting {
            conn: conn.to_owned(),
            point: p,
            bytes,
        });
        self.request_units(0);
    }

    fn check_point(&self, p: &NewPoint, now: Millis) -> Result<(), SessionError> {
        if self.st.meta.status == SessionStatus::Ended {
            return Err(SessionError::Ended);
        }
        if p.ts
            .is_some_and(|ts| ts > now.saturating_add(MAX_TS_AHEAD_MS))
        {
            return Err(SessionError::Validation(
                "ts lies more than 24 hours ahead of server time".into(),
            ));
        }
        self.check_kinds(std::slice::from_ref(p))
    }

    // The kinds the session holds are capped: points that would take it
    // beyond `max_kinds` are refused (a batch whole).
    fn check_kinds(&self, points: &[NewPoint]) -> Result<(), SessionError> {
        let valued = points
            .iter()
            .filter(|p| p.value.is_some())
            .map(|p| p.kind.as_str());
        if self.st.stats.kinds() + self.st.stats.new_kinds(valued) > self.cfg.max_kinds {
            return Err(SessionError::Validation(format!(
                "the session holds its most kinds ({}); no further kind is taken",
                self.cfg.max_kinds
            )));
        }
        Ok(())
    }

    /// The seq of `(user, id)` if that point is stored or pending.
    fn known(&mut self, user: &str, id: Option<&str>, ids: &mut dyn IdLookup) -> Option<u64> {
        let id = id?;
        if let Some(w) = &self.write {
            if let Some(&seq) = w.ids.get(&(user.to_owned(), id.to_owned())) {
                return Some(seq);
            }
        }
        if let Some(seq) = self.ids.get(user, id) {
            return Some(seq);
        }
        if self.ids.surely_new(user, id) {
            return None;
        }
        let seq = ids.seq_of(user, id)?;
        self.ids.insert((user.to_owned(), id.to_owned()), seq);
        Some(seq)
    }

    fn ack_repeat(&mut self, conn: &str, id: Option<String>, seq: u64) {
        match self.write.as_mut() {
            // The first point is not stored yet: ack once it is.
            Some(w) if seq > self.st.last_seq => w.acks.push((conn.to_owned(), id, seq)),
            _ => self.send(conn, &ServerFrame::Ack { id, seq }),
        }
    }

    /// Numbers a point into the pending write (units in hand checked).
    fn number(&mut self, from: Option<&str>, user: &str, p: NewPoint, now: Millis) -> u64 {
        let last_seq = self.st.last_seq;
        let units = self.st.units;
        let w = self.write.get_or_insert_with(|| PendingWrite {
            batches: Vec::new(),
            rows: Vec::new(),
            ids: HashMap::new(),
            acks: Vec::new(),
            units_before: units,
            stats_before: Vec::new(),
            polled: false,
        });
        let seq = last_seq + w.rows.len() as u64 + 1;
        if let Some(id) = &p.id {
            w.ids.insert((user.to_owned(), id.clone()), seq);
        }
        let point = p.into_stored(seq, user, now);
        if let Some(before) = self.st.stats.add(&point) {
            w.stats_before.push(before);
        }
        self.st.units.spend();
        let json = serde_json::to_string(&point).unwrap_or_default();
        w.rows
            .push((from.map(str::to_owned), Rc::new(Row { point, json })));
        seq
    }

    /// The outcome of the [`Decision::Store`] just carried out. Stored:
    /// acks to the senders, the points to everyone else, the flush
    /// decision. Failed: everything the write numbered is undone and the
    /// socket senders get `unavailable` (they resend).
    pub fn stored(&mut self, ok: bool, now: Millis) {
        self.tick_clock(now);
        let Some(w) = self.write.take() else {
            return;
        };
        if !ok {
            self.st.units = w.units_before;
            for (kind, before) in w.stats_before.into_iter().rev() {
                self.st.stats.restore(kind, before);
            }
            let refs = w
                .rows
                .iter()
                .filter_map(|(c, r)| c.clone().map(|c| (c, r.point.id.clone())))
                .chain(w.acks.into_iter().map(|(c, id, _)| (c, id)));
            let frames: Vec<_> = refs.collect();
            for (conn, id) in frames {
                let frame = ServerFrame::Error {
                    code: ErrorCode::Unavailable,
                    message: "the point could not be stored; send it again".into(),
                    r#ref: id,
                    retry_after_ms: Some(1_000),
                };
                self.send(&conn, &frame);
            }
            for (batch, _) in w.batches {
                let e = SessionError::Storage("the points could not be stored".into());
                self.answer(batch, Err(e));
            }
            self.schedule();
            return;
        }
        for (key, seq) in w.ids {
            self.ids.insert(key, seq);
        }
        for (from, row) in &w.rows {
            self.st.last_seq = row.point.seq;
            if let Some(conn) = from {
                self.send(
                    conn,
                    &ServerFrame::Ack {
                        id: row.point.id.clone(),
                        seq: row.point.seq,
                    },
                );
            }
            if self.conns.any_but(from.as_deref()) {
                self.out.push_back(Decision::Broadcast {
                    except: from.clone(),
                    text: point_frame(&row.json).into(),
                });
            }
        }
        for (conn, id, seq) in w.acks {
            self.send(&conn, &ServerFrame::Ack { id, seq });
        }
        for (batch, seqs) in w.batches {
            self.answer(batch, Ok(seqs));
        }
        if let Some(c) = self
            .st
            .stats
            .checkpoint(self.st.last_seq, self.cfg.stats_every)
        {
            self.out.push_back(Decision::SaveStats(c));
        }
        self.last_activity = now;
        self.st.flush.note(now);
        if self.st.units.spendable(now) < self.block / 2 && !self.conns.0.is_empty() {
            // Top up before running dry, so socket points rarely wait.
            self.request_units(0);
        }
        self.schedule();
    }

    /// `POST .../points` by `user`: all or nothing. A refusal of the
    /// request itself (not a member, ended, a bad point) comes back at
    /// once; otherwise the batch gets an id, and its answer comes as
    /// [`Decision::Appended`]: its seqs once its points are stored, or
    /// `quota_exceeded` until the next UTC day. Units for every new point
    /// must be in hand first; when they are short, the batch waits for the
    /// reservation socket points use ([`Decision::Reserve`]).
    pub fn append(
        &mut self,
        user: &str,
        points: Vec<NewPoint>,
        now: Millis,
        ids: &mut dyn IdLookup,
    ) -> Result<u64, SessionError> {
        self.tick_clock(now);
        membership::check_writer(&self.st.meta, user)?;
        for (i, p) in points.iter().enumerate() {
            self.check_point(p, now).map_err(|e| match e {
                SessionError::Validation(m) => {
                    SessionError::Validation(format!("points[{i}]: {m}"))
                }
                other => other,
            })?;
        }
        self.check_kinds(&points)?;
        let id = self.next_batch;
        self.next_batch += 1;
        self.batches.push_back(Batch {
            id,
            user: user.to_owned(),
            points,
        });
        self.roll_day(now);
        self.number_batches(None, now, ids);
        Ok(id)
    }

    // Numbers the waiting HTTP batches that the units in hand cover, in
    // order. One that is short waits for a reservation, or, after a grant
    // that was not in full (the quota ran out), is refused.
    fn number_batches(&mut self, grant_in_full: Option<bool>, now: Millis, ids: &mut dyn IdLookup) {
        while let Some(b) = self.batches.pop_front() {
            let mut seen = std::collections::HashSet::new();
            let mut need = 0u64;
            for p in &b.points {
                let new = match p.id.as_deref() {
                    Some(id) => self.known(&b.user, Some(id), ids).is_none() && seen.insert(id),
                    None => true,
                };
                need += u64::from(new);
            }
            // Points numbered while this batch waited may have taken kinds.
            if let Err(e) = self.check_kinds(&b.points) {
                self.answer(b.id, Err(e));
                continue;
            }
            let have = self.st.units.spendable(now);
            if need > have {
                if grant_in_full == Some(false) {
                    self.answer(b.id, Err(points_exhausted(now)));
                    continue;
                }
                self.request_units(need - have);
                self.batches.push_front(b);
                return;
            }
            let mut seqs = Vec::with_capacity(b.points.len());
            for p in b.points {
                let seq = match self.known(&b.user, p.id.as_deref(), ids) {
                    Some(seq) => seq,
                    None => self.number(None, &b.user, p, now),
                };
                seqs.push(seq);
            }
            let last = self.st.last_seq;
            match self.write.as_mut() {
                // Answered once its points (or the first of a repeat) are
                // stored.
                Some(w) if seqs.iter().any(|s| *s > last) => w.batches.push((b.id, seqs)),
                _ => self.answer(b.id, Ok(seqs)),
            }
        }
    }

    fn answer(&mut self, batch: u64, result: Result<Vec<u64>, SessionError>) {
        self.out.push_back(Decision::Appended { batch, result });
    }

    fn refuse_batches(&mut self, e: &SessionError) {
        while let Some(b) = self.batches.pop_front() {
            self.answer(b.id, Err(e.clone()));
        }
    }

    /// The outcome of the [`Decision::SaveStats`] just carried out.
    pub fn stats_saved(&mut self, ok: bool) {
        self.st.stats.saved(ok);
    }

    /// A call by `user` whose token says `plan`: the owner's own token
    /// tells the owner's current plan, which the session takes (with its
    /// participants cap in `plans`). Returns whether `user` is the owner.
    pub fn caller_plan(&mut self, user: &str, plan: &str, plans: &Plans) -> bool {
        if user != self.st.meta.owner_id {
            return false;
        }
        self.use_plan(plan, plans);
        true
    }

    /// Before `user` (on `plan`) joins: the participants cap must be the
    /// owner's current plan's. The owner's own token tells it; for anyone
    /// else the core asks the owner's quota ([`Decision::AskPlan`]).
    pub fn want_plan(&mut self, user: &str, plan: &str, plans: &Plans) {
        if !self.caller_plan(user, plan, plans) {
            self.out.push_back(Decision::AskPlan {
                owner: self.st.meta.owner_id.clone(),
            });
        }
    }

    /// The answer to [`Decision::AskPlan`]: the plan the owner's quota last
    /// saw, or `None` when it could not be asked (the plan stored with the
    /// session then stands). A plan that `plans` does not know changes
    /// nothing.
    pub fn plan_known(&mut self, plan: Option<&str>, plans: &Plans) {
        let plan = plan.map_or_else(|| self.st.meta.owner_plan.clone(), str::to_owned);
        self.use_plan(&plan, plans);
    }

    fn use_plan(&mut self, plan: &str, plans: &Plans) {
        if let Some(p) = plans.get(plan) {
            self.set_plan(plan, p.participants_per_session);
        }
    }

    fn take_grant(&mut self, granted: u64, day: Millis) {
        match self.st.units.add(granted, day) {
            Some(s) => self.push_settle(s),
            None if granted > 0 => self.out.push_back(Decision::SaveUnits(self.st.units)),
            None => {}
        }
    }

    // Asks for a block of units (at least `at_least`), unless a
    // reservation is out already.
    fn request_units(&mut self, at_least: u64) {
        if self.reserving.is_none() && self.st.meta.status == SessionStatus::Active {
            let want = self.block.max(at_least);
            self.reserving = Some(want);
            self.out.push_back(Decision::Reserve {
                owner: self.st.meta.owner_id.clone(),
                plan: self.st.meta.owner_plan.clone(),
                want,
            });
        }
    }

    /// A [`Decision::Reserve`] came back with `granted` units of `day`.
    /// Waiting points are numbered now, in order, then waiting HTTP
    /// batches; when the quota ran out the rest get `quota_exceeded`.
    pub fn granted(&mut self, granted: u64, day: Millis, now: Millis, ids: &mut dyn IdLookup) {
        self.tick_clock(now);
        let want = self.reserving.take().unwrap_or(self.block);
        let full = granted >= want;
        self.block = if full {
            (self.block * 2).min(self.cfg.reserve_block * 16)
        } else {
            self.cfg.reserve_block
        };
        self.take_grant(granted, day);
        if self.st.meta.status == SessionStatus::Ended {
            // Too late: the session ended while the reservation was out.
            self.settle_all();
            return;
        }
        self.roll_day(now);
        self.number_waiting(full, now, ids);
        self.number_batches(Some(full), now, ids);
    }

    fn number_waiting(&mut self, full: bool, now: Millis, ids: &mut dyn IdLookup) {
        while let Some(front) = self.waiting.front() {
            let id = front.point.id.clone();
            let Some(user) = self.conns.0.get(&front.conn).map(|c| c.user_id.clone()) else {
                // Its socket left meanwhile.
                self.pop_waiting();
                continue;
            };
            if let Some(seq) = self.known(&user, id.as_deref(), ids) {
                if let Some(w) = self.pop_waiting() {
                    self.ack_repeat(&w.conn, w.point.id, seq);
                }
                continue;
            }
            if self.st.units.spendable(now) == 0 {
                if full {
                    // More are waiting than this block held: ask again.
                    self.request_units(0);
                    return;
                }
                let e = points_exhausted(now);
                while let Some(w) = self.waiting.pop_front() {
                    self.send_error(&w.conn, &e, w.point.id);
                }
                self.waiting_bytes = 0;
                return;
            }
            if let Some(w) = self.pop_waiting() {
                self.number(Some(&w.conn), &user, w.point, now);
            }
        }
    }

    fn pop_waiting(&mut self) -> Option<Waiting> {
        let w = self.waiting.pop_front()?;
        self.waiting_bytes = self.waiting_bytes.saturating_sub(w.bytes);
        Some(w)
    }

    /// The owner's quota could not be asked: waiting points get an
    /// `unavailable` error frame (never a silent drop; the client resends),
    /// waiting HTTP batches an `unavailable` answer.
    pub fn reserve_failed(&mut self, now: Millis) {
        self.tick_clock(now);
        self.reserving = None;
        self.refuse_batches(&SessionError::Unavailable(
            "could not reserve points quota".into(),
        ));
        while let Some(w) = self.waiting.pop_front() {
            let frame = ServerFrame::Error {
                code: ErrorCode::Unavailable,
                message: "the points quota could not be checked; send the point again".into(),
                r#ref: w.point.id,
                retry_after_ms: Some(1_000),
            };
            self.send(&w.conn, &frame);
        }
        self.waiting_bytes = 0;
    }

    fn roll_day(&mut self, now: Millis) {
        if let Some(s) = self.st.units.roll(now) {
            self.push_settle(s);
        }
    }

    fn settle_all(&mut self) {
        if let Some(s) = self.st.units.settle_all() {
            self.push_settle(s);
        }
    }

    fn push_settle(&mut self, settlement: Settlement) {
        self.settled_at = self.clock.get();
        let note = SettleNote {
            owner: self.st.meta.owner_id.clone(),
            plan: self.st.meta.owner_plan.clone(),
            settlement,
        };
        let id = self.settle_out.push(note.clone());
        self.out.push_back(Decision::Settle {
            id,
            owner: note.owner,
            plan: note.plan,
            settlement,
            units: self.st.units,
        });
        self.pump();
    }

    fn note_presence(&mut self, user: String, conn: ConnId, online: bool) {
        let note = PresenceNote { user, conn, online };
        let id = self.presence_out.push(note.clone());
        self.out.push_back(Decision::Presence {
            id,
            user: note.user,
            conn: note.conn,
            online,
        });
        self.pump();
    }

    // The next entry of each outbox goes out when none is out and no
    // retry pause runs.
    fn pump(&mut self) {
        let now = self.clock.get();
        if let Some((n, note)) = self.presence_out.next(now) {
            self.out.push_back(Decision::Deliver {
                id: EntryId::Presence(n),
                item: Outgoing::Presence(note),
            });
        }
        if let Some((n, note)) = self.settle_out.next(now) {
            self.out.push_back(Decision::Deliver {
                id: EntryId::Settle(n),
                item: Outgoing::Settle(note),
            });
        }
    }

    /// The receiver took outbox entry `id` ([`Decision::Deliver`]); the
    /// adapter deletes it from storage. The next entry goes out.
    pub fn delivered(&mut self, id: EntryId, now: Millis) {
        self.tick_clock(now);
        match id {
            EntryId::Presence(n) => self.presence_out.delivered(n),
            EntryId::Settle(n) => self.settle_out.delivered(n),
        };
        self.schedule();
    }

    /// Outbox entry `id` could not be delivered: it stays, and its outbox
    /// tries again after a pause (an alarm).
    pub fn undeliverable(&mut self, id: EntryId, now: Millis) {
        self.tick_clock(now);
        match id {
            EntryId::Presence(n) => self.presence_out.undeliverable(n, now),
            EntryId::Settle(n) => self.settle_out.undeliverable(n, now),
        }
        self.schedule();
    }

    /// Undelivered outbox entries (presence, settlements).
    pub fn outbox_len(&self) -> (usize, usize) {
        (self.presence_out.len(), self.settle_out.len())
    }

    /// Ends the session (owner only): `ended` to everyone, every socket
    /// closed with 1000, units settled, and a flush of everything. Ending
    /// twice is fine.
    pub fn end(&mut self, user: &str, now: Millis) -> Result<(), SessionError> {
        self.tick_clock(now);
        self.check_member(user)?;
        if user != self.st.meta.owner_id {
            return Err(SessionError::Forbidden(
                "only the owner can end the session".into(),
            ));
        }
        if self.st.meta.status == SessionStatus::Ended {
            return Ok(());
        }
        self.st.meta.status = SessionStatus::Ended;
        self.st.meta.ended_at = Some(now);
        self.st.meta_version += 1;
        self.save_meta();
        self.broadcast(
            None,
            &ServerFrame::Ended {
                last_seq: self.st.last_seq,
            },
        );
        let conns = std::mem::take(&mut self.conns.0);
        for (conn, c) in conns {
            self.note_presence(c.user_id, conn.clone(), false);
            self.out.push_back(Decision::Close {
                conn,
                code: 1000,
                reason: "session ended",
            });
        }
        self.waiting.clear();
        self.waiting_bytes = 0;
        self.refuse_batches(&SessionError::Ended);
        self.settle_all();
        // Everything goes to D1 now, not after the interval.
        self.st.flush.pending_since = Some(now - self.cfg.flush_interval_ms as Millis);
        self.st.flush.retry_at = None;
        self.schedule();
        Ok(())
    }

    /// The alarm fired: a due flush, idle units given back, the storage
    /// retired when its time has come, and the next wake-up.
    pub fn tick(&mut self, now: Millis) {
        self.tick_clock(now);
        if self.idle_at().is_some_and(|at| at <= now) {
            self.settle_all();
        }
        if self.retire_at().is_some_and(|at| at <= now) {
            self.out.push_back(Decision::Retire);
            return;
        }
        self.schedule();
    }

    /// The storage could not be deleted ([`Decision::Retire`]): the alarm
    /// tries again after a pause.
    pub fn retire_failed(&mut self, now: Millis) {
        self.tick_clock(now);
        self.out
            .push_back(Decision::WakeAt(now.saturating_add(RETRY_MS)));
    }

    /// When an ended session's storage may go: `ended_retention_ms` after
    /// the end, once every point and the final record are in D1, no unit
    /// is held or unsettled, and both outboxes are delivered. `None` while
    /// any of that is missing.
    pub fn retire_at(&self) -> Option<Millis> {
        let ended = self.st.meta.ended_at?;
        let f = &self.st.flush;
        let u = self.st.units;
        let done = f.flushed_seq >= self.st.last_seq
            && f.flushed_meta_version >= self.st.meta_version
            && u.held == 0
            && u.used == 0
            && self.write.is_none()
            && self.conns.0.is_empty()
            && self.presence_out.is_empty()
            && self.settle_out.is_empty();
        done.then(|| ended.saturating_add(self.cfg.ended_retention_ms as Millis))
    }

    // When units in hand go back for want of use.
    fn idle_at(&self) -> Option<Millis> {
        let u = self.st.units;
        (self.is_idle() && (u.held > 0 || u.used > 0))
            .then(|| self.last_activity + self.cfg.units_idle_ms as Millis)
    }

    // No socket, and no point waiting for units or storage.
    fn is_idle(&self) -> bool {
        self.conns.0.is_empty()
            && self.waiting.is_empty()
            && self.batches.is_empty()
            && self.write.is_none()
    }

    // When the spent units are next due to be settled as used: the
    // interval after the last settlement, and only between writes (a
    // pending write's units are spent in memory, not yet in storage).
    fn settle_at(&self) -> Option<Millis> {
        (self.st.units.used > 0 && self.write.is_none()).then(|| {
            self.settled_at
                .saturating_add(self.cfg.units_settle_ms as Millis)
        })
    }

    fn pending(&self) -> Pending {
        Pending {
            last_seq: self.st.last_seq,
            meta_version: self.st.meta_version,
            batch: self.cfg.flush_batch,
            interval_ms: self.cfg.flush_interval_ms,
            now: self.clock.get(),
        }
    }

    /// When the next flush is due, if anything is pending.
    pub fn next_flush_at(&self) -> Option<Millis> {
        self.st.flush.next_at(self.pending())
    }

    /// When the object must wake next (flush, units to settle, idle
    /// units, an outbox to retry, retirement), if ever.
    pub fn next_wake(&self) -> Option<Millis> {
        [
            self.next_flush_at(),
            self.settle_at(),
            self.idle_at(),
            self.presence_out.wake_at(),
            self.settle_out.wake_at(),
            self.retire_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // A due flush, settlement or outbox retry goes out now; anything later
    // is an alarm.
    fn schedule(&mut self) {
        let now = self.clock.get();
        self.pump();
        if self.settle_at().is_some_and(|at| at <= now) {
            if let Some(s) = self.st.units.settle_used() {
                self.push_settle(s);
            }
        }
        // Not while numbered points wait to be stored: a flush carries the
        // live figures, which must count exactly the stored points.
        if self.write.is_none() && self.next_flush_at().is_some_and(|at| at <= now) {
            let batch = self.st.flush.start(
                self.st.last_seq,
                self.st.meta_version,
                self.cfg.max_flush_points,
            );
            let stats = self.st.stats.since(batch.from - 1, batch.to);
            self.out.push_back(Decision::Flush(FlushJob {
                batch,
                meta: self.st.meta.clone(),
                point_count: batch.to.max(self.st.flush.flushed_seq),
                stats,
            }));
        }
        if let Some(at) = self.next_wake() {
            self.out.push_back(Decision::WakeAt(at));
        }
    }

    /// The outcome of a [`Decision::Flush`]. On success the adapter has
    /// already stored the new watermark.
    pub fn flush_done(&mut self, batch: FlushBatch, ok: bool, now: Millis) {
        self.tick_clock(now);
        let p = self.pending();
        if !self.st.flush.done(batch, ok, p) {
            return;
        }
        self.schedule();
    }

    fn save_meta(&mut self) {
        self.out.push_back(Decision::SaveMeta {
            meta: self.st.meta.clone(),
            version: self.st.meta_version,
        });
    }

    fn send(&mut self, to: &str, frame: &ServerFrame) {
        self.out.push_back(Decision::Send {
            to: to.to_owned(),
            text: frame.to_json().into(),
        });
    }

    fn send_error(&mut self, to: &str, e: &SessionError, reference: Option<String>) {
        let frame = ServerFrame::Error {
            code: e.code(),
            message: e.to_string(),
            r#ref: reference,
            retry_after_ms: e.retry_after_ms(),
        };
        self.send(to, &frame);
    }

    fn broadcast(&mut self, except: Option<&str>, frame: &ServerFrame) {
        if self.conns.any_but(except) {
            self.out.push_back(Decision::Broadcast {
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

/// The refusal of points beyond the owner's daily quota, until the next
/// UTC day.
pub fn points_exhausted(now: Millis) -> SessionError {
    SessionError::QuotaExceeded {
        message: "the session owner's daily points quota is used up".into(),
        retry_after_ms: Some(until_next_day(now)),
    }
}

#[cfg(test)]
mod tests;
