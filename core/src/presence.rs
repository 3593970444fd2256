//! The presence core of one user: live connections (each with its session),
//! the last heartbeat, and the status derived from them on a clock passed
//! in.
//!
//! - A user is present while a connection is live, within the grace period
//!   after their last connection closed (a reconnect does not flap the
//!   status), or within `ttl` of their last heartbeat. Present users show the
//!   status they last chose (`online` if they never chose), absent ones
//!   `offline`.
//! - A connection is trusted for `ttl`; then the object asks the session
//!   whether it still has it ([`Decision::Check`]), so a session that died
//!   without saying goodbye cannot keep a user online forever.
//!
//! Events are method calls with the time (`connect`, `disconnect`,
//! `heartbeat`, `alarm`, `confirmed`, `checked`); what the object must do
//! comes out of one channel, [`PresenceCore::poll`], as [`Decision`]s that
//! carry their data: store the state (its version bumped), publish it to
//! the read shard, ask a session about a connection, set the alarm.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use sesh_protocol::{HeartbeatStatus, Presence, PresenceStatus};

use crate::time::{rfc3339, Millis};

/// How long a user stays present after their last connection closed.
pub fn grace_ms(ttl_ms: u64) -> u64 {
    (ttl_ms / 2).min(5_000)
}

/// A live connection as presence knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conn {
    /// The session it belongs to.
    pub session_id: String,
    /// When it joined.
    pub joined_at: Millis,
    /// When it was last known to be live (joined or confirmed).
    pub confirmed_at: Millis,
    /// A check with its session is under way.
    #[serde(default)]
    pub checking: bool,
    /// Checks in a row that could not reach the session.
    #[serde(default)]
    pub failed_checks: u32,
}

/// The last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Beat {
    /// The status the user chose.
    pub status: HeartbeatStatus,
    /// What they are doing, if they said.
    pub activity: Option<String>,
    /// When it arrived.
    pub at: Millis,
}

/// How many checks of a connection in a row may fail (the session cannot
/// be asked) before the connection is dropped: a session that stays
/// unreachable must not keep its user online forever.
pub const MAX_FAILED_CHECKS: u32 = 5;

/// The stored state of one user's presence; persisted as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceState {
    conns: BTreeMap<String, Conn>,
    beat: Option<Beat>,
    /// The user's chosen status, kept while present.
    chosen: Option<HeartbeatStatus>,
    /// Present until then after the last connection closed.
    grace_until: Option<Millis>,
    last_seen: Option<Millis>,
    /// The status as of the last event or tick (what the alarm maintains).
    status: Option<PresenceStatus>,
    /// Bumped at every stored change, so a read shard keeps the newest of
    /// two publications that cross on the way.
    #[serde(default)]
    version: u64,
}

/// What the presence object must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Store this state (a change, its version bumped) before answering.
    Save(PresenceState),
    /// Tell the user's read shard of this stored state, before answering
    /// (a shard that cannot be reached hears of the next change).
    Publish(PresenceState),
    /// Ask `session` whether it still has `conn`; answer with
    /// [`PresenceCore::confirmed`], then [`PresenceCore::checked`].
    Check {
        /// The connection.
        conn: String,
        /// Its session.
        session: String,
    },
    /// Wake up (the alarm) no later than this.
    WakeAt(Millis),
}

/// What a session answered to a [`Decision::Check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckAnswer {
    /// The session answered whether it still has the connection.
    Has(bool),
    /// The session does not exist (never did, or was retired).
    NoSuchSession,
    /// The session could not be asked.
    Unreachable,
}

/// One user's presence: the configuration (the TTL) beside the stored
/// state, as in every core, and the decisions not yet polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceCore {
    ttl: u64,
    state: PresenceState,
    out: VecDeque<Decision>,
}

impl PresenceCore {
    /// The core of a user with stored `state`, under a TTL of `ttl` ms.
    pub fn new(ttl: u64, state: PresenceState) -> PresenceCore {
        PresenceCore {
            ttl,
            state,
            out: VecDeque::new(),
        }
    }

    /// The next decision to carry out.
    pub fn poll(&mut self) -> Option<Decision> {
        self.out.pop_front()
    }

    /// The state in memory (what the next `Save` will store).
    pub fn state(&self) -> &PresenceState {
        &self.state
    }

    // A change to store: its version, the state to save and to publish,
    // and the next wake-up.
    fn commit(&mut self) {
        self.state.version += 1;
        self.out.push_back(Decision::Save(self.state.clone()));
        self.out.push_back(Decision::Publish(self.state.clone()));
        if let Some(at) = self.next_wake() {
            self.out.push_back(Decision::WakeAt(at));
        }
    }

    /// A socket of this user joined `session_id`.
    pub fn connect(&mut self, conn: &str, session_id: &str, now: Millis) {
        self.state.conns.insert(
            conn.to_owned(),
            Conn {
                session_id: session_id.to_owned(),
                joined_at: now,
                confirmed_at: now,
                checking: false,
                failed_checks: 0,
            },
        );
        self.state.grace_until = None;
        self.seen(now);
        self.tick(now);
        self.commit();
    }

    /// A socket closed (or its session no longer has it).
    pub fn disconnect(&mut self, conn: &str, now: Millis) {
        self.drop_conn(conn, now);
        self.commit();
    }

    fn drop_conn(&mut self, conn: &str, now: Millis) {
        if self.state.conns.remove(conn).is_some() {
            self.seen(now);
            if self.state.conns.is_empty() {
                self.state.grace_until = Some(now + grace_ms(self.ttl) as Millis);
            }
        }
        self.tick(now);
    }

    /// A heartbeat: the status and activity the user reports.
    pub fn heartbeat(
        &mut self,
        status: Option<HeartbeatStatus>,
        activity: Option<String>,
        now: Millis,
    ) {
        let status = status.unwrap_or(HeartbeatStatus::Online);
        self.state.chosen = Some(status);
        self.state.beat = Some(Beat {
            status,
            activity,
            at: now,
        });
        self.seen(now);
        self.tick(now);
        self.commit();
    }

    fn seen(&mut self, now: Millis) {
        self.state.last_seen = Some(self.state.last_seen.map_or(now, |s| s.max(now)));
    }

    fn beat_fresh(&self, now: Millis) -> bool {
        self.state
            .beat
            .as_ref()
            .is_some_and(|b| now - b.at < self.ttl as Millis)
    }

    fn present(&self, now: Millis) -> bool {
        !self.state.conns.is_empty()
            || self.state.grace_until.is_some_and(|g| now < g)
            || self.beat_fresh(now)
    }

    /// Brings the derived state up to `now`: expired grace and heartbeats
    /// are dropped. Returns whether the status changed.
    pub fn tick(&mut self, now: Millis) -> bool {
        if self.state.grace_until.is_some_and(|g| now >= g) {
            self.state.grace_until = None;
        }
        if !self.beat_fresh(now) {
            if let Some(b) = self.state.beat.take() {
                // Absence is measured from the later of the last heartbeat
                // and the last connection.
                self.seen(b.at);
            }
        }
        let status = if self.present(now) {
            self.state
                .chosen
                .map_or(PresenceStatus::Online, PresenceStatus::from)
        } else {
            self.state.chosen = None;
            PresenceStatus::Offline
        };
        let changed = self.state.status != Some(status);
        self.state.status = Some(status);
        changed
    }

    /// The presence object of `user_id` at `now`.
    pub fn view(&self, user_id: &str, now: Millis) -> Presence {
        let present = self.present(now);
        let status = if present {
            self.state
                .chosen
                .map_or(PresenceStatus::Online, PresenceStatus::from)
        } else {
            PresenceStatus::Offline
        };
        let last_seen = if self.state.conns.is_empty() {
            self.state.last_seen
        } else {
            Some(now)
        };
        Presence {
            user_id: user_id.to_owned(),
            status,
            last_seen: last_seen.map(rfc3339),
            activity: if present {
                self.state.beat.as_ref().and_then(|b| b.activity.clone())
            } else {
                None
            },
            connections: u32::try_from(self.state.conns.len()).unwrap_or(u32::MAX),
        }
    }

    /// The alarm: what ran out is dropped, and each connection whose `ttl`
    /// ran out unconfirmed is to be checked with its session
    /// ([`Decision::Check`]); with none, the change is stored at once,
    /// else after the answers ([`checked`](Self::checked)).
    pub fn alarm(&mut self, now: Millis) {
        self.tick(now);
        let due = self.due_checks(now);
        if due.is_empty() {
            self.commit();
        }
        for (conn, session) in due {
            self.out.push_back(Decision::Check { conn, session });
        }
    }

    /// Every check of the alarm was answered: the state is stored.
    pub fn checked(&mut self, now: Millis) {
        self.tick(now);
        self.commit();
    }

    /// Connections whose `ttl` ran out unconfirmed: ask their session.
    /// Each is returned once until [`confirmed`](Self::confirmed) answers.
    fn due_checks(&mut self, now: Millis) -> Vec<(String, String)> {
        let mut due = Vec::new();
        for (id, c) in &mut self.state.conns {
            if !c.checking && now - c.confirmed_at >= self.ttl as Millis {
                c.checking = true;
                due.push((id.clone(), c.session_id.clone()));
            }
        }
        due
    }

    /// The session's answer about `conn`: still live (trust it for another
    /// `ttl`), or gone (drop it, as a close); a session that no longer
    /// exists has no connection either. The session could not be asked: a
    /// later check asks again, until [`MAX_FAILED_CHECKS`] in a row.
    pub fn confirmed(&mut self, conn: &str, answer: CheckAnswer, now: Millis) {
        let live = match answer {
            CheckAnswer::Has(live) => Some(live),
            CheckAnswer::NoSuchSession => Some(false),
            CheckAnswer::Unreachable => None,
        };
        match live {
            Some(true) => {
                if let Some(c) = self.state.conns.get_mut(conn) {
                    c.confirmed_at = now;
                    c.checking = false;
                    c.failed_checks = 0;
                }
            }
            Some(false) => self.drop_conn(conn, now),
            None => {
                let gave_up = match self.state.conns.get_mut(conn) {
                    Some(c) => {
                        c.checking = false;
                        c.failed_checks += 1;
                        // Retry after a short wait, not a whole ttl.
                        c.confirmed_at = now - self.ttl as Millis + 1_000;
                        c.failed_checks >= MAX_FAILED_CHECKS
                    }
                    None => false,
                };
                if gave_up {
                    self.drop_conn(conn, now);
                }
            }
        }
    }

    /// The next moment something can change without a request: a heartbeat
    /// or grace running out, or a connection due for a check.
    fn next_wake(&self) -> Option<Millis> {
        let ttl = self.ttl as Millis;
        let beat = self.state.beat.as_ref().map(|b| b.at + ttl);
        let conns = self
            .state
            .conns
            .values()
            .filter(|c| !c.checking)
            .map(|c| c.confirmed_at + ttl)
            .min();
        [beat, self.state.grace_until, conns]
            .into_iter()
            .flatten()
            .min()
    }

    /// The number of live connections.
    pub fn connections(&self) -> usize {
        self.state.conns.len()
    }

    /// The status as of the last event or tick.
    pub fn status(&self) -> Option<PresenceStatus> {
        self.state.status
    }
}

/// How many read shards answer batch presence reads. Few, because a batch
/// costs one object call per shard it touches (a batch of 100 touches all
/// of them); each shard takes every stored change of a quarter of the
/// users, which bounds the heartbeat rate the shards can absorb (see the
/// performance notes).
pub const SHARDS: u32 = 4;

/// The read shard of `user` (FNV-1a of the id: stable across isolates and
/// releases, which a shard's stored users depend on).
pub fn shard_of(user: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in user.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % SHARDS
}

/// The object name of read shard `n`: not a valid user id, so no user's
/// presence object can be a shard.
pub fn shard_name(n: u32) -> String {
    format!("#presence-shard/{n}")
}

/// A read shard: the newest published state of each of its users, from
/// which it answers their presence exactly as their own objects would
/// (the status follows from the state and the clock alone). Users it was
/// never told of were never seen: `offline`.
///
/// Memory holds only the users seen lately: one offline for longer than
/// the TTL is evicted ([`ShardCore::evict`]), and storage, which keeps
/// every published state, answers for it (`stored`), so its `lastSeen`
/// stays exact. Nothing is loaded at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardCore {
    ttl: u64,
    users: std::collections::HashMap<String, PresenceCore>,
    // The last sweep: one per TTL at most, as a sweep visits every user.
    swept: Millis,
}

/// The state storage holds for a user the shard's memory does not.
pub type StoredState<'a> = &'a mut dyn FnMut(&str) -> Option<PresenceState>;

impl ShardCore {
    /// An empty shard under a TTL of `ttl` ms.
    pub fn new(ttl: u64) -> ShardCore {
        ShardCore {
            ttl,
            users: std::collections::HashMap::new(),
            swept: Millis::MIN,
        }
    }

    /// Takes `state` as `user`'s presence unless a newer version is
    /// already here (in memory or in storage, `stored`); answers whether
    /// it was taken (and must be stored).
    pub fn publish(&mut self, user: &str, state: PresenceState, stored: StoredState) -> bool {
        let newest = match self.users.get(user) {
            Some(cur) => Some(cur.state.version),
            None => stored(user).map(|s| s.version),
        };
        if newest.is_some_and(|v| v >= state.version) {
            return false;
        }
        self.users
            .insert(user.to_owned(), PresenceCore::new(self.ttl, state));
        true
    }

    /// The presence of `user` at `now`.
    pub fn view(&self, user: &str, now: Millis, stored: StoredState) -> Presence {
        match self.users.get(user) {
            Some(core) => core.view(user, now),
            None => PresenceCore::new(self.ttl, stored(user).unwrap_or_default()).view(user, now),
        }
    }

    /// Drops from memory every user offline for longer than the TTL at
    /// `now` (storage still answers for them), at most once per TTL.
    pub fn evict(&mut self, now: Millis) {
        let ttl = self.ttl;
        if now.saturating_sub(self.swept) < ttl as Millis {
            return;
        }
        self.swept = now;
        self.users.retain(|_, c| {
            c.present(now)
                || c.state
                    .last_seen
                    .is_some_and(|t| now.saturating_sub(t) <= ttl as Millis)
        });
    }

    /// How many users memory holds.
    pub fn held(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_764_000_000_000;
    const TTL: u64 = 60_000;

    fn status(p: &PresenceCore, now: Millis) -> PresenceStatus {
        p.view("u", now).status
    }

    fn drain(p: &mut PresenceCore) -> Vec<Decision> {
        std::iter::from_fn(|| p.poll()).collect()
    }

    #[test]
    fn events_come_out_as_decisions_that_carry_the_state() {
        let mut p = PresenceCore::new(TTL, PresenceState::default());
        p.connect("c1", "s1", T0);
        let ds = drain(&mut p);
        let [Decision::Save(saved), Decision::Publish(published), Decision::WakeAt(at)] = &ds[..]
        else {
            panic!("{ds:?}");
        };
        assert_eq!((saved, saved.version, *at), (published, 1, T0 + 60_000));
        // The alarm asks the session first; the state is stored after the
        // answers.
        p.alarm(T0 + 60_000);
        let check = Decision::Check {
            conn: "c1".into(),
            session: "s1".into(),
        };
        assert_eq!(drain(&mut p), vec![check]);
        p.confirmed("c1", CheckAnswer::Has(false), T0 + 60_001);
        p.checked(T0 + 60_001);
        let ds = drain(&mut p);
        let [Decision::Save(s), Decision::Publish(_), Decision::WakeAt(at)] = &ds[..] else {
            panic!("{ds:?}");
        };
        assert_eq!((s.version, s.conns.len()), (2, 0));
        assert_eq!(*at, T0 + 60_001 + 5_000, "the grace runs out");
        // An alarm with nothing to check stores at once; nothing is left to
        // wake for.
        p.alarm(T0 + 70_000);
        let ds = drain(&mut p);
        let [Decision::Save(s), Decision::Publish(_)] = &ds[..] else {
            panic!("{ds:?}");
        };
        assert_eq!((s.version, s.status), (3, Some(PresenceStatus::Offline)));
    }

    #[test]
    fn a_session_that_no_longer_exists_has_no_connection() {
        let mut p = PresenceCore::new(TTL, PresenceState::default());
        p.connect("c1", "s1", T0);
        p.connect("c2", "s2", T0);
        drain(&mut p);
        p.alarm(T0 + 60_000);
        assert_eq!(drain(&mut p).len(), 2, "both checked");
        p.confirmed("c1", CheckAnswer::NoSuchSession, T0 + 60_001);
        p.confirmed("c2", CheckAnswer::Unreachable, T0 + 60_001);
        p.checked(T0 + 60_001);
        assert_eq!(p.connections(), 1, "gone, and asked again later");
        assert!(p.state().conns.contains_key("c2"));
    }

    #[test]
    fn a_stranger_is_offline_with_nothing_else() {
        let p = PresenceCore::new(TTL, PresenceState::default());
        let v = p.view("ann", T0);
        assert_eq!(v.status, PresenceStatus::Offline);
        assert_eq!((v.connections, v.last_seen, v.activity), (0, None, None));
        assert_eq!(p.next_wake(), None);
    }

    #[test]
    fn heartbeats_set_status_and_activity_until_the_ttl() {
        let mut p = PresenceCore::new(TTL, PresenceState::default());
        p.heartbeat(Some(HeartbeatStatus::Busy), Some("running".into()), T0);
        let v = p.view("u", T0 + 1);
        assert_eq!(v.status, PresenceStatus::Busy);
        assert_eq!(v.activity.as_deref(), Some("running"));
        assert_eq!(v.last_seen, Some(rfc3339(T0)));
        assert_eq!(p.next_wake(), Some(T0 + 60_000));
        assert_eq!(status(&p, T0 + 59_999), PresenceStatus::Busy);
        assert_eq!(status(&p, T0 + 60_000), PresenceStatus::Offline);
        assert!(p.tick(T0 + 60_000), "the alarm's tick changes the status");
        assert_eq!(p.status(), Some(PresenceStatus::Offline));
        assert_eq!(p.view("u", T0 + 60_000).activity, None);
        assert_eq!(p.view("u", T0 + 60_000).last_seen, Some(rfc3339(T0)));
        assert_eq!(p.next_wake(), None, "nothing left to expire");
        p.heartbeat(None, None, T0 + 70_000);
        assert_eq!(
            status(&p, T0 + 70_000),
            PresenceStatus::Online,
            "default online"
        );
    }

    #[test]
    fn a_live_connection_keeps_the_user_present_past_the_ttl() {
        let mut p = PresenceCore::new(TTL, PresenceState::default());
        p.heartbeat(Some(HeartbeatStatus::Away), None, T0);
        p.connect("c1", "s1", T0);
        assert_eq!(p.view("u", T0).connections, 1);
        assert_eq!(
            status(&p, T0 + 120_000),
            PresenceStatus::Away,
            "the chosen status sticks"
        );
        assert_eq!(
            p.view("u", T0 + 120_000).last_seen,
            Some(rfc3339(T0 + 120_000))
        );
    }

    #[test]
    fn a_quick_reconnect_does_not_flap_but_a_leave_becomes_final() {
        let mut p = PresenceCore::new(TTL, PresenceState::default());
        p.connect("c1", "s1", T0);
        p.disconnect("c1", T0 + 1_000);
        assert_eq!(p.view("u", T0 + 1_000).connections, 0);
        assert_eq!(
            status(&p, T0 + 3_000),
            PresenceStatus::Online,
            "within grace"
        );
        p.connect("c2", "s1", T0 + 3_000);
        assert!(!p.tick(T0 + 3_000), "no status change across the reconnect");
        p.disconnect("c2", T0 + 10_000);
        assert_eq!(p.next_wake(), Some(T0 + 15_000));
        assert_eq!(status(&p, T0 + 14_999), PresenceStatus::Online);
        assert_eq!(status(&p, T0 + 15_000), PresenceStatus::Offline);
        assert_eq!(
            p.view("u", T0 + 15_000).last_seen,
            Some(rfc3339(T0 + 10_000))
        );
    }

    #[test]
    fn counts_never_go_below_zero() {
        let mut p = PresenceCore::new(TTL, PresenceState::default());
        p.disconnect("ghost", T0);
        p.connect("c1", "s1", T0);
        p.disconnect("c1", T0);
        p.disconnect("c1", T0);
        assert_eq!(p.connections(), 0);
    }

    #[test]
    fn connections_are_checked_with_their_session_after_the_ttl() {
        let mut p = PresenceCore::new(TTL, PresenceState::default());
        p.connect("c1", "s1", T0);
        p.connect("c2", "s2", T0 + 10);
        assert_eq!(p.due_checks(T0 + 59_999), vec![]);
        assert_eq!(p.due_checks(T0 + 60_000), vec![("c1".into(), "s1".into())]);
        assert_eq!(p.due_checks(T0 + 60_000), vec![], "asked once");
        p.confirmed("c1", CheckAnswer::Has(true), T0 + 60_005);
        assert_eq!(p.next_wake(), Some(T0 + 60_010), "c2 is next");
        let due = p.due_checks(T0 + 60_010);
        assert_eq!(due, vec![("c2".into(), "s2".into())]);
        p.confirmed("c2", CheckAnswer::Has(false), T0 + 60_020);
        assert_eq!(p.connections(), 1, "the session no longer has c2");
        // A session that cannot be asked is asked again soon.
        let due = p.due_checks(T0 + 120_005);
        assert_eq!(due, vec![("c1".into(), "s1".into())]);
        p.confirmed("c1", CheckAnswer::Unreachable, T0 + 120_005);
        assert_eq!(p.connections(), 1);
        assert_eq!(p.next_wake(), Some(T0 + 121_005));
    }

    #[test]
    fn state_round_trips_through_storage() {
        let mut p = PresenceCore::new(TTL, PresenceState::default());
        p.connect("c1", "s1", T0);
        p.heartbeat(Some(HeartbeatStatus::Busy), Some("x".into()), T0);
        let text = serde_json::to_string(p.state()).unwrap();
        let back: PresenceState = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, p.state());
    }

    #[test]
    fn a_connection_whose_session_stays_unreachable_is_dropped() {
        let mut p = PresenceCore::new(TTL, PresenceState::default());
        p.connect("c1", "s1", T0);
        let mut now = T0 + TTL as Millis;
        for i in 1..=MAX_FAILED_CHECKS {
            assert_eq!(p.connections(), 1, "still trusted after {} failures", i - 1);
            let due = p.next_wake().unwrap().max(now);
            now = due;
            assert_eq!(p.due_checks(now).len(), 1);
            p.confirmed("c1", CheckAnswer::Unreachable, now);
        }
        assert_eq!(
            p.connections(),
            0,
            "gave up after {MAX_FAILED_CHECKS} failed checks"
        );
        assert!(
            p.view("u", now).status != PresenceStatus::Offline,
            "grace first"
        );
        assert_eq!(p.view("u", now + 5_000).status, PresenceStatus::Offline);
    }

    #[test]
    fn a_successful_check_forgives_earlier_failures() {
        let mut p = PresenceCore::new(TTL, PresenceState::default());
        p.connect("c1", "s1", T0);
        let mut now = T0 + TTL as Millis;
        for _ in 1..MAX_FAILED_CHECKS {
            p.due_checks(now);
            p.confirmed("c1", CheckAnswer::Unreachable, now);
            now = p.next_wake().unwrap();
        }
        p.due_checks(now);
        p.confirmed("c1", CheckAnswer::Has(true), now);
        now += TTL as Millis;
        p.due_checks(now);
        p.confirmed("c1", CheckAnswer::Unreachable, now);
        assert_eq!(p.connections(), 1);
    }

    #[test]
    fn shards_answer_exactly_what_the_user_objects_would() {
        let mut user = PresenceCore::new(TTL, PresenceState::default());
        let mut shard = ShardCore::new(TTL);
        // What the user's object publishes: each stored change's state.
        let published = |user: &mut PresenceCore| {
            drain(user)
                .into_iter()
                .find_map(|d| match d {
                    Decision::Publish(s) => Some(s),
                    _ => None,
                })
                .expect("a stored change is published")
        };
        user.heartbeat(Some(HeartbeatStatus::Away), Some("run".into()), T0);
        assert!(shard.publish("u", published(&mut user), &mut |_| None));
        user.connect("c1", "s1", T0 + 10);
        let newer = published(&mut user);
        user.disconnect("c1", T0 + 20);
        assert!(shard.publish("u", published(&mut user), &mut |_| None));
        assert!(
            !shard.publish("u", newer, &mut |_| None),
            "an older publication loses"
        );
        for now in [T0 + 20, T0 + 4_000, T0 + 59_999, T0 + 60_000, T0 + 90_000] {
            assert_eq!(
                shard.view("u", now, &mut |_| None),
                user.view("u", now),
                "at {now}"
            );
        }
        assert_eq!(
            shard.view("nobody", T0, &mut |_| None).status,
            PresenceStatus::Offline
        );
        assert_eq!(shard.view("nobody", T0, &mut |_| None).last_seen, None);
    }

    #[test]
    fn shards_evict_users_offline_beyond_the_ttl_and_storage_answers_for_them() {
        let mut shard = ShardCore::new(TTL);
        let mut store: BTreeMap<String, PresenceState> = BTreeMap::new();
        let mut users = Vec::new();
        for i in 0..50 {
            let mut user = PresenceCore::new(TTL, PresenceState::default());
            user.connect("c", "s", T0 + i);
            if i % 2 == 0 {
                user.disconnect("c", T0 + i + 1);
            }
            let state = drain(&mut user)
                .into_iter()
                .rev()
                .find_map(|d| match d {
                    Decision::Publish(s) => Some(s),
                    _ => None,
                })
                .unwrap();
            let name = format!("u{i}");
            assert!(shard.publish(&name, state.clone(), &mut |_| None));
            store.insert(name.clone(), state);
            users.push((name, user));
        }
        assert_eq!(shard.held(), 50);
        let later = T0 + 3 * TTL as Millis;
        shard.evict(later);
        assert_eq!(shard.held(), 25, "only the connected users stay");
        let mut stored = |u: &str| store.get(u).cloned();
        for (name, user) in &users {
            assert_eq!(
                shard.view(name, later, &mut stored),
                user.view(name, later),
                "{name}"
            );
        }
        // An older publication of an evicted user still loses to storage.
        let mut old = store["u0"].clone();
        old.version = 0;
        assert!(!shard.publish("u0", old, &mut stored));
    }

    #[test]
    fn shards_spread_users_and_are_not_user_ids() {
        let mut counts = [0u32; SHARDS as usize];
        for i in 0..8_000 {
            counts[shard_of(&format!("user-{i}")) as usize] += 1;
        }
        let even = 8_000 / SHARDS;
        assert!(
            counts
                .iter()
                .all(|c| (even * 7 / 10..even * 13 / 10).contains(c)),
            "{counts:?}"
        );
        assert_eq!(shard_of("ann"), shard_of("ann"));
        assert!(!sesh_protocol::is_valid_user_id(&shard_name(3)));
    }
}
