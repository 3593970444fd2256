//! The property test: random interleavings of joins, leaves, socket and
//! HTTP points (ids repeated within and across users), failed writes,
//! partial and failed reservations, day changes, replays, successful and
//! failed flushes, outbox deliveries that fail, lose their answer or are
//! cut off by a restart, the owner's plan asked or unknown, membership
//! changes (writers made viewers and back, members added and removed, by
//! the owner or themselves), signals and live states, and restarts, with
//! the adapter simulated.

use std::collections::BTreeSet;

use super::*;
use crate::config::Plans;
use sesh_protocol::Role;

fn world_cfg() -> Config {
    Config {
        reserve_block: 5,
        replay_page: 4,
        units_idle_ms: 5_000,
        id_cache: 8,
        stats_every: 3,
        ..Config::default()
    }
}

/// A tiny deterministic PRNG (xorshift64*), so the random interleavings are
/// reproducible from the seed printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Client ids looked up in the simulated storage, as the adapter's index.
struct StorageIds<'a>(&'a BTreeMap<u64, StoredPoint>);

impl IdLookup for StorageIds<'_> {
    fn seq_of(&mut self, user: &str, id: &str) -> Option<u64> {
        self.0
            .values()
            .find(|p| p.user_id == user && p.id.as_deref() == Some(id))
            .map(|p| p.seq)
    }
}

/// The adapter, simulated: storage (points, units, stats, watermark), D1
/// (a set, as `INSERT OR IGNORE` on `(session_id, seq)`), the quota, the
/// live sockets and what each received.
struct World {
    core: SessionCore,
    storage: BTreeMap<u64, StoredPoint>,
    stored_day: BTreeMap<u64, Millis>,
    // Seqs of the write just stored: their first ack names the sender.
    fresh: BTreeSet<u64>,
    // The object's SQLite storage, with the adapter's schema and
    // statements: units and stats are what its triggers made of the points.
    db: rusqlite::Connection,
    flushed: u64,
    meta_version: u64,
    d1: BTreeSet<u64>,
    live: Vec<(String, String)>,
    received: HashMap<String, Vec<u64>>,
    acked: HashMap<(String, String), u64>,
    sent_by: HashMap<u64, String>,
    joined_at_seq: HashMap<String, u64>,
    now: Millis,
    next_conn: u32,
    presence: HashMap<String, i32>,
    reservations: Vec<u64>,
    granted: BTreeMap<Millis, u64>,
    settled_used: BTreeMap<Millis, u64>,
    settled_returned: BTreeMap<Millis, u64>,
    fail_writes: bool,
    fail_flushes: bool,
    fail_deliveries: bool,
    // Outbox entries each receiver applied (a redelivery is told by its id).
    applied: BTreeSet<EntryId>,
    // Deliveries out and not answered yet.
    in_flight: Vec<EntryId>,
    // HTTP batches not answered yet: (user, points).
    batches: HashMap<u64, (String, Vec<NewPoint>)>,
    answered: u64,
    // The session record as last stored (`SaveMeta`): what a restart reads.
    stored_meta: Option<Meta>,
    // Live states as kept with the sockets (`SaveState`).
    states: HashMap<String, Map<String, Value>>,
    // Connections that got `removed`: nothing may reach them afterwards.
    removed: BTreeSet<String>,
    rng: Rng,
}

impl World {
    fn new(seed: u64) -> World {
        let mut w = World {
            core: SessionCore::create(meta(100), world_cfg(), T0),
            storage: BTreeMap::new(),
            stored_day: BTreeMap::new(),
            fresh: BTreeSet::new(),
            db: storage_db(),
            flushed: 0,
            meta_version: 0,
            d1: BTreeSet::new(),
            live: Vec::new(),
            received: HashMap::new(),
            acked: HashMap::new(),
            sent_by: HashMap::new(),
            joined_at_seq: HashMap::new(),
            now: T0,
            next_conn: 0,
            presence: HashMap::new(),
            reservations: Vec::new(),
            granted: BTreeMap::new(),
            settled_used: BTreeMap::new(),
            settled_returned: BTreeMap::new(),
            fail_writes: true,
            fail_flushes: true,
            fail_deliveries: true,
            applied: BTreeSet::new(),
            in_flight: Vec::new(),
            batches: HashMap::new(),
            answered: 0,
            stored_meta: None,
            states: HashMap::new(),
            removed: BTreeSet::new(),
            rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
        };
        w.run_actions();
        w
    }

    fn user_of(&self, conn: &str) -> Option<String> {
        self.live
            .iter()
            .find(|(c, _)| c == conn)
            .map(|(_, u)| u.clone())
    }

    fn run_actions(&mut self) {
        while let Some(a) = self.core.poll() {
            match a {
                Decision::Send { to, text } => self.receive(&to, &text),
                Decision::Broadcast { except, text } => {
                    for (c, _) in self.live.clone() {
                        if except.as_deref() != Some(c.as_str()) {
                            self.receive(&c, &text);
                        }
                    }
                }
                Decision::Close { conn, .. } => self.live.retain(|(c, _)| *c != conn),
                Decision::Retire => {
                    assert!(
                        self.d1.len() as u64 >= self.core.last_seq(),
                        "a session retires only with every point in D1"
                    );
                    assert!(self.live.is_empty(), "and nobody connected");
                }
                Decision::Presence {
                    id,
                    user,
                    conn,
                    online,
                } => {
                    self.db
                        .execute(
                            storage::INSERT_PRESENCE_OUTBOX,
                            rusqlite::params![id, user, conn, online],
                        )
                        .unwrap();
                }
                Decision::Deliver { id, item } => self.deliver(id, item),
                Decision::AskPlan { owner } => {
                    assert_eq!(owner, "owner");
                    let plan = ["pro", "enterprise", "no-such-plan"][self.rng.below(3) as usize];
                    let answer = (self.rng.below(4) != 0).then_some(plan);
                    self.core.plan_known(answer, &Plans::default());
                }
                Decision::Appended { batch, result } => self.appended(batch, result),
                Decision::Reserve { want, .. } => self.reservations.push(want),
                Decision::Store(w) => {
                    for r in &w.points {
                        assert!(
                            self.core.meta().is_writer(&r.point.user_id),
                            "a point stored from {}, who is not a writer",
                            r.point.user_id
                        );
                    }
                    self.store(w)
                }
                Decision::SaveMeta { meta, version } => {
                    self.meta_version = version;
                    self.stored_meta = Some(meta);
                }
                Decision::SaveState { conn, state } => {
                    self.states.insert(conn, state);
                }
                Decision::SaveUnits(u) => self.save_units(u),
                Decision::SaveStats(c) => self.save_stats(&c),
                Decision::Settle {
                    id,
                    owner,
                    plan,
                    settlement: s,
                    units,
                } => {
                    let tx = self.db.transaction().unwrap();
                    tx.execute(
                        storage::INSERT_SETTLE_OUTBOX,
                        rusqlite::params![id, owner, plan, s.day, s.used, s.returned],
                    )
                    .unwrap();
                    tx.execute(storage::SAVE_UNITS, (units.day, units.held, units.used))
                        .unwrap();
                    tx.commit().unwrap();
                }
                Decision::Flush(job) => {
                    let ok = !self.fail_flushes || self.rng.below(3) != 0;
                    for seq in job.batch.from..=job.batch.to {
                        assert!(
                            self.storage.contains_key(&seq),
                            "flushes only stored points"
                        );
                        if ok {
                            self.d1.insert(seq);
                        }
                    }
                    if ok {
                        self.flushed = self.flushed.max(job.batch.to);
                    }
                    self.core.flush_done(job.batch, ok, self.now);
                }
                Decision::Replay {
                    after,
                    through,
                    then,
                    ..
                } => {
                    let last = self.core.last_seq();
                    let then = json(&then);
                    assert!(through <= last);
                    assert!(through.saturating_sub(after) <= world_cfg().replay_page);
                    assert_eq!(then["more"], json(&(through < last).to_string()));
                    for seq in after + 1..=through {
                        assert!(self.storage.contains_key(&seq), "replays stored points");
                    }
                }
                Decision::WakeAt(_) => {}
            }
        }
        self.fresh.clear();
    }

    /// An outbox entry to its receiver: taken, refused, taken with the
    /// answer lost, or left out to be answered later (or never, when the
    /// object restarts first).
    fn deliver(&mut self, id: EntryId, item: Outgoing) {
        let pick = if self.fail_deliveries {
            self.rng.below(6)
        } else {
            5
        };
        match pick {
            0 => self.core.undeliverable(id, self.now),
            1 => {
                self.receive_entry(id, item);
                self.core.undeliverable(id, self.now);
            }
            2 => {
                self.receive_entry(id, item);
                self.in_flight.push(id);
            }
            _ => {
                self.receive_entry(id, item);
                self.delivered(id);
            }
        }
    }

    fn delivered(&mut self, id: EntryId) {
        let (q, n) = match id {
            EntryId::Presence(n) => (storage::DELETE_PRESENCE_OUTBOX, n),
            EntryId::Settle(n) => (storage::DELETE_SETTLE_OUTBOX, n),
        };
        self.db.execute(q, [n]).unwrap();
        self.core.delivered(id, self.now);
    }

    /// The receiver applies each entry once, in order within its outbox.
    fn receive_entry(&mut self, id: EntryId, item: Outgoing) {
        if let Some(last) = self
            .applied
            .iter()
            .rfind(|a| std::mem::discriminant(*a) == std::mem::discriminant(&id))
        {
            assert!(*last <= id, "{id:?} after {last:?}: out of order");
        }
        if !self.applied.insert(id) {
            return;
        }
        match item {
            Outgoing::Presence(p) => {
                let n = self.presence.entry(p.conn).or_insert(0);
                *n += if p.online { 1 } else { -1 };
                assert!((0..=1).contains(n), "presence count of a connection");
            }
            Outgoing::Settle(s) => {
                let s = s.settlement;
                *self.settled_used.entry(s.day).or_default() += s.used;
                *self.settled_returned.entry(s.day).or_default() += s.returned;
            }
        }
    }

    /// An HTTP batch's answer: its seqs are stored points of its own.
    fn appended(&mut self, batch: u64, result: Result<Vec<u64>, SessionError>) {
        let (user, points) = self.batches.remove(&batch).expect("one answer per batch");
        self.answered += 1;
        match result {
            Ok(seqs) => {
                assert_eq!(seqs.len(), points.len());
                for (p, seq) in points.iter().zip(&seqs) {
                    let sp = self.storage.get(seq).expect("answered once durable");
                    assert_eq!(sp.user_id, user);
                    if let Some(id) = &p.id {
                        assert_eq!(sp.id.as_ref(), Some(id));
                        let first = *self.acked.entry((user.clone(), id.clone())).or_insert(*seq);
                        assert_eq!(first, *seq, "http repeat keeps its first seq");
                    }
                }
            }
            Err(e) => assert!(
                matches!(
                    e.code(),
                    ErrorCode::QuotaExceeded
                        | ErrorCode::Unavailable
                        | ErrorCode::Internal
                        | ErrorCode::SessionEnded
                        | ErrorCode::Forbidden
                ),
                "{e:?}"
            ),
        }
    }

    /// A membership change: a role set by the owner (or tried by someone
    /// else), or a removal by the owner or the member themself.
    fn change_members(&mut self) {
        let user = USERS[1 + self.rng.below(USERS.len() as u64 - 1) as usize].to_owned();
        let caller = if self.rng.below(4) == 0 {
            user.clone()
        } else {
            "owner".to_owned()
        };
        let change = match self.rng.below(3) {
            0 => Change::Remove { user },
            1 => Change::Set {
                user,
                role: Role::Viewer,
            },
            _ => Change::Set {
                user,
                role: Role::Writer,
            },
        };
        let before = self.core.meta().clone();
        match self.core.change_members(&caller, &change, self.now) {
            Ok(()) => {}
            Err(e) => {
                assert!(
                    matches!(
                        e.code(),
                        ErrorCode::Forbidden | ErrorCode::NotFound | ErrorCode::SessionEnded
                    ),
                    "{e:?}"
                );
                assert_eq!(
                    self.core.meta(),
                    &before,
                    "a refused change changes nothing"
                );
            }
        }
        self.run_actions();
        assert_eq!(
            self.stored_meta.as_ref(),
            Some(self.core.meta()),
            "a change is stored before anything else of it"
        );
    }

    /// One transaction: all of it, or (sometimes) nothing.
    fn store(&mut self, w: Write) {
        if self.fail_writes && self.rng.below(12) == 0 {
            self.core.stored(false, self.now);
            return;
        }
        self.fresh = w.points.iter().map(|r| r.point.seq).collect();
        for r in &w.points {
            assert!(
                self.storage.insert(r.point.seq, r.point.clone()).is_none(),
                "a seq stored twice"
            );
            self.stored_day.insert(r.point.seq, day_of(self.now));
        }
        // Both of the adapter's statements: one point, or many at once.
        if let [r] = &w.points[..] {
            let p = &r.point;
            self.db
                .execute(
                    storage::INSERT_POINT,
                    rusqlite::params![p.seq, p.id, p.ts, r.json, p.user_id, p.kind, p.value],
                )
                .unwrap();
        } else {
            self.db
                .execute(storage::INSERT_POINTS, [storage::points_json(&w.points)])
                .unwrap();
        }
        self.core.stored(true, self.now);
    }

    fn receive(&mut self, conn: &str, text: &str) {
        let v = json(text);
        assert!(
            !self.removed.contains(conn),
            "{conn} received {text} after `removed`"
        );
        match v["type"].as_str().unwrap() {
            "removed" => {
                self.removed.insert(conn.to_owned());
            }
            "point" => {
                let seq = v["seq"].as_u64().unwrap();
                assert_ne!(
                    self.sent_by.get(&seq).map(String::as_str),
                    Some(conn),
                    "own point echoed"
                );
                assert!(self.storage.contains_key(&seq), "broadcast before storage");
                self.received.entry(conn.to_owned()).or_default().push(seq);
            }
            "ack" => {
                let seq = v["seq"].as_u64().unwrap();
                let p = self.storage.get(&seq).expect("ack before storage");
                let user = self.user_of(conn).expect("ack to a live socket");
                assert_eq!(p.user_id, user, "acked someone else's point");
                if self.fresh.remove(&seq) {
                    self.sent_by.insert(seq, conn.to_owned());
                }
                if let Some(id) = v["id"].as_str() {
                    assert_eq!(p.id.as_deref(), Some(id));
                    let first = *self.acked.entry((user, id.to_owned())).or_insert(seq);
                    assert_eq!(first, seq, "a repeated id keeps its first seq");
                }
            }
            _ => {}
        }
    }

    /// Answers the oldest reservation: in full, in part, none left, or the
    /// quota object unreachable.
    fn answer_reservation(&mut self) {
        if self.reservations.is_empty() {
            return;
        }
        let want = self.reservations.remove(0);
        let mut ids = StorageIds(&self.storage);
        match self.rng.below(6) {
            0 => self.core.reserve_failed(self.now),
            k => {
                let n = [want, want, want, want / 2, 0][(k - 1) as usize];
                let day = day_of(self.now);
                *self.granted.entry(day).or_default() += n;
                self.core.granted(n, day, self.now, &mut ids);
            }
        }
    }

    fn http_batch(&mut self) {
        let user = USERS[self.rng.below(USERS.len() as u64) as usize];
        let n = 1 + self.rng.below(3);
        let points: Vec<NewPoint> = (0..n)
            .map(|_| NewPoint {
                id: (self.rng.below(4) != 0).then(|| format!("p{}", self.rng.below(30))),
                value: (self.rng.below(2) == 0).then(|| self.rng.below(100) as f64),
                ..NewPoint::new(["a", "b"][self.rng.below(2) as usize])
            })
            .collect();
        let mut ids = StorageIds(&self.storage);
        match self.core.append(user, points.clone(), self.now, &mut ids) {
            Ok(batch) => {
                self.batches.insert(batch, (user.to_owned(), points));
            }
            Err(e) => assert!(
                matches!(e.code(), ErrorCode::SessionEnded | ErrorCode::Forbidden),
                "{e:?}"
            ),
        }
        self.run_actions();
    }

    fn step(&mut self) {
        self.now += self.rng.below(300) as Millis;
        if self.rng.below(60) == 0 {
            // Hours pass: some steps cross a UTC day.
            self.now += 8 * 3_600_000;
        }
        if self.rng.below(3) == 0 {
            self.answer_reservation();
            // The adapter carries decisions out before the next event.
            self.run_actions();
        }
        if !self.in_flight.is_empty() && self.rng.below(2) == 0 {
            let id = self.in_flight.remove(0);
            self.delivered(id);
            self.run_actions();
        }
        match self.rng.below(12) {
            0 if self.live.len() < 6 => {
                self.next_conn += 1;
                let conn = format!("c{}", self.next_conn);
                let user = USERS[self.rng.below(USERS.len() as u64) as usize];
                // The owner's token tells the plan; anyone else's join
                // asks for it.
                self.core.want_plan(user, "pro", &Plans::default());
                self.run_actions();
                if self.core.admit(user).is_ok() {
                    self.core.join(&conn, user, self.now);
                    self.joined_at_seq
                        .insert(conn.clone(), self.core.last_seq());
                    self.live.push((conn, user.to_owned()));
                }
            }
            1 if !self.live.is_empty() => {
                let i = self.rng.below(self.live.len() as u64) as usize;
                let (conn, _) = self.live.remove(i);
                self.core.leave(&conn, self.now);
            }
            2..=5 if !self.live.is_empty() => {
                let i = self.rng.below(self.live.len() as u64) as usize;
                let conn = self.live[i].0.clone();
                let id = self.rng.below(30);
                let value = self.rng.below(100);
                let text = if self.rng.below(2) == 0 {
                    format!(r#"{{"type":"point","id":"p{id}","kind":"a","value":{value}}}"#)
                } else {
                    format!(r#"{{"type":"point","id":"p{id}","kind":"b"}}"#)
                };
                let mut ids = StorageIds(&self.storage);
                self.core.on_text(&conn, &text, self.now, &mut ids);
            }
            6 | 7 => self.http_batch(),
            8 if !self.live.is_empty() => {
                let i = self.rng.below(self.live.len() as u64) as usize;
                let conn = self.live[i].0.clone();
                let after = self.rng.below(self.core.last_seq() + 3);
                let text = format!(r#"{{"type":"resume","afterSeq":{after}}}"#);
                self.core.on_text(&conn, &text, self.now, &mut NoIds);
            }
            9 => self.core.tick(self.now),
            10 => match self.rng.below(3) {
                0 => self.change_members(),
                _ if !self.live.is_empty() => {
                    let i = self.rng.below(self.live.len() as u64) as usize;
                    let conn = self.live[i].0.clone();
                    let text = if self.rng.below(2) == 0 {
                        r#"{"type":"signal","data":{"x":1}}"#.to_owned()
                    } else {
                        format!(r#"{{"type":"state","data":{{"n":{}}}}}"#, self.rng.below(9))
                    };
                    self.core.on_text(&conn, &text, self.now, &mut NoIds);
                }
                _ => self.core.tick(self.now),
            },
            _ => self.restart(),
        }
        self.run_actions();
    }

    /// The object is evicted and wakes with what storage holds; sockets
    /// survive (hibernation).
    fn restart(&mut self) {
        self.run_actions();
        let r = Restored {
            last_seq: self.storage.keys().next_back().copied().unwrap_or(0),
            flushed_seq: self.flushed,
            conns: self
                .live
                .iter()
                .map(|(c, u)| (c.clone(), u.clone(), self.now, self.states.get(c).cloned()))
                .collect(),
            meta_version: self.meta_version,
            flushed_meta_version: 0,
            units: self.stored_units(),
            stats: self.stored_stats(),
            stats_through: self.stats_mark(),
            stats_tail: self.stats_tail(),
            ..Restored::default()
        };
        let (a, b) = (self.stored_units(), self.core.units());
        assert_eq!(
            (a.held, a.used),
            (b.held, b.used),
            "units persisted as held"
        );
        if a.held + a.used > 0 {
            assert_eq!(a.day, b.day, "units persisted with their day");
        }
        self.reservations.clear();
        // Deliveries out are lost with the instance; HTTP requests too.
        self.in_flight.clear();
        self.batches.clear();
        let r = Restored {
            presence_outbox: self.stored_presence(),
            settle_outbox: self.stored_settlements(),
            outbox_last_ids: self.outbox_last_ids(),
            ..r
        };
        let meta = self
            .stored_meta
            .clone()
            .expect("the record is stored at creation");
        assert_eq!(&meta, self.core.meta(), "the record as stored");
        let states = |c: &SessionCore| -> Vec<_> {
            c.view()
                .participants
                .into_iter()
                .map(|p| (p.conn_id, p.user_id, p.state))
                .collect()
        };
        let before = states(&self.core);
        self.core = SessionCore::restore(meta, world_cfg(), r, self.now);
        assert_eq!(
            states(&self.core),
            before,
            "live states survive hibernation"
        );
    }
}

/// The users of the world: the owner, two writers, and two who start as
/// strangers (made viewers or writers, and removed, as the test goes).
const USERS: [&str; 5] = ["owner", "bob", "carol", "vic", "dave"];

fn storage_db() -> rusqlite::Connection {
    let db = rusqlite::Connection::open_in_memory().unwrap();
    db.execute_batch(storage::SCHEMA).unwrap();
    db.execute_batch(storage::INDEX_AND_TRIGGERS).unwrap();
    db
}

impl World {
    fn save_units(&self, u: Units) {
        self.db
            .execute(storage::SAVE_UNITS, (u.day, u.held, u.used))
            .unwrap();
    }

    fn stored_units(&self) -> Units {
        self.db
            .query_row(storage::LOAD_UNITS, [], |r| {
                Ok(Units {
                    day: r.get(0)?,
                    held: r.get(1)?,
                    used: r.get(2)?,
                })
            })
            .unwrap_or_default()
    }

    /// A checkpoint in one transaction, or (sometimes) not at all.
    fn save_stats(&mut self, c: &Checkpoint) {
        if self.fail_writes && self.rng.below(4) == 0 {
            self.core.stats_saved(false);
            return;
        }
        let tx = self.db.transaction().unwrap();
        for (kind, s) in &c.kinds {
            tx.execute(
                storage::SAVE_STATS,
                rusqlite::params![kind, s.count, s.sum, s.min, s.max, s.last],
            )
            .unwrap();
        }
        tx.execute(storage::SAVE_STATS_MARK, [c.through_seq])
            .unwrap();
        tx.commit().unwrap();
        self.core.stats_saved(true);
    }

    fn stored_presence(&self) -> Vec<(u64, PresenceNote)> {
        let mut q = self.db.prepare(storage::LOAD_PRESENCE_OUTBOX).unwrap();
        q.query_map([], |r| {
            let note = PresenceNote {
                user: r.get(1)?,
                conn: r.get(2)?,
                online: r.get(3)?,
            };
            Ok((r.get(0)?, note))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn stored_settlements(&self) -> Vec<(u64, SettleNote)> {
        let mut q = self.db.prepare(storage::LOAD_SETTLE_OUTBOX).unwrap();
        q.query_map([], |r| {
            let note = SettleNote {
                owner: r.get(1)?,
                plan: r.get(2)?,
                settlement: Settlement {
                    day: r.get(3)?,
                    used: r.get(4)?,
                    returned: r.get(5)?,
                },
            };
            Ok((r.get(0)?, note))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn outbox_last_ids(&self) -> (u64, u64) {
        let mut q = self.db.prepare(storage::OUTBOX_LAST_IDS).unwrap();
        let rows: Vec<(String, u64)> = q
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let of = |name: &str| rows.iter().find(|(n, _)| n == name).map_or(0, |r| r.1);
        (of("presence_outbox"), of("settle_outbox"))
    }

    fn stats_mark(&self) -> u64 {
        self.db
            .query_row(storage::LOAD_STATS_MARK, [], |r| r.get(0))
            .unwrap()
    }

    fn stats_tail(&self) -> Vec<(String, f64)> {
        let mut q = self.db.prepare(storage::STATS_TAIL).unwrap();
        q.query_map([self.stats_mark()], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// The figures a wake-up would have: the checkpoint and its tail.
    fn restored_stats(&self) -> BTreeMap<String, KindStats> {
        let mut m = self.stored_stats();
        for (kind, v) in self.stats_tail() {
            match m.get_mut(&kind) {
                Some(s) => s.add(v),
                None => {
                    m.insert(kind, KindStats::of(v));
                }
            }
        }
        m
    }

    fn stored_stats(&self) -> BTreeMap<String, KindStats> {
        let mut q = self.db.prepare(storage::LOAD_STATS).unwrap();
        q.query_map([], |r| {
            Ok((
                r.get(0)?,
                KindStats {
                    count: r.get(1)?,
                    sum: r.get(2)?,
                    min: r.get(3)?,
                    max: r.get(4)?,
                    last: r.get(5)?,
                },
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }
}

fn expected_stats(storage: &BTreeMap<u64, StoredPoint>) -> BTreeMap<String, KindStats> {
    let mut m: BTreeMap<String, KindStats> = BTreeMap::new();
    for p in storage.values() {
        if let Some(v) = p.value {
            match m.get_mut(&p.kind) {
                Some(s) => s.add(v),
                None => {
                    m.insert(p.kind.clone(), KindStats::of(v));
                }
            }
        }
    }
    m
}

#[test]
fn random_interleavings_keep_the_invariants() {
    for seed in 1..=300u64 {
        let mut w = World::new(seed);
        for _ in 0..400 {
            w.step();
        }
        // No gap, no duplicate: storage holds exactly 1..=last_seq.
        let last = w.core.last_seq();
        assert_eq!(
            w.storage.keys().copied().collect::<Vec<_>>(),
            (1..=last).collect::<Vec<_>>(),
            "seed {seed}"
        );
        // One point per (user, id).
        let mut keys = BTreeSet::new();
        for p in w.storage.values() {
            if let Some(id) = &p.id {
                assert!(
                    keys.insert((p.user_id.clone(), id.clone())),
                    "seed {seed}: ({}, {id}) stored twice",
                    p.user_id
                );
            }
        }
        // Stats are those of what was stored, in memory and in storage.
        let expected = expected_stats(&w.storage);
        assert_eq!(w.core.view().summary.stats, expected, "seed {seed}");
        assert_eq!(
            w.restored_stats(),
            expected,
            "seed {seed}: stored checkpoint and tail"
        );
        assert!(
            w.stats_tail().len() as u64 <= 2 * world_cfg().stats_every + 10,
            "seed {seed}: the tail stays short"
        );
        // Everyone received each other's points once, in order, while live.
        for (conn, seqs) in &w.received {
            let mut sorted = seqs.clone();
            sorted.dedup();
            assert_eq!(&sorted, seqs, "seed {seed}: {conn} got a point twice");
            assert!(seqs.windows(2).all(|p| p[0] < p[1]), "seed {seed}: order");
        }
        for (conn, _) in &w.live {
            let from = w.joined_at_seq[conn];
            let expected: Vec<u64> = (from + 1..=last)
                .filter(|s| w.sent_by.get(s) != Some(conn))
                .collect();
            let got: Vec<u64> = w.received.get(conn).cloned().unwrap_or_default();
            assert_eq!(got, expected, "seed {seed}: {conn} missed points");
        }
        // Every stored point eventually reaches D1 exactly once.
        w.core.end("owner", w.now).unwrap();
        w.run_actions();
        while !w.reservations.is_empty() {
            // Late answers to reservations made before the end.
            let n = w.reservations.remove(0);
            let day = day_of(w.now);
            *w.granted.entry(day).or_default() += n;
            w.core.granted(n, day, w.now, &mut NoIds);
            w.run_actions();
        }
        w.fail_flushes = false;
        w.fail_deliveries = false;
        for _ in 0..20 {
            while let Some(id) = w.in_flight.pop() {
                w.delivered(id);
                w.run_actions();
            }
            w.now = w.core.next_wake().unwrap_or(w.now).max(w.now);
            w.core.tick(w.now);
            w.run_actions();
        }
        assert!(
            w.batches.is_empty(),
            "seed {seed}: every HTTP batch answered"
        );
        assert_eq!(
            w.core.outbox_len(),
            (0, 0),
            "seed {seed}: outboxes delivered"
        );
        assert_eq!(w.d1, (1..=last).collect::<BTreeSet<_>>(), "seed {seed}");
        // Units: every grant settled to its own day; each day's used units
        // are exactly the points stored that day.
        assert_eq!(w.core.units().held + w.core.units().used, 0, "seed {seed}");
        let mut per_day: BTreeMap<Millis, u64> = BTreeMap::new();
        for d in w.stored_day.values() {
            *per_day.entry(*d).or_default() += 1;
        }
        for (day, g) in &w.granted {
            let used = w.settled_used.get(day).copied().unwrap_or(0);
            let back = w.settled_returned.get(day).copied().unwrap_or(0);
            assert_eq!(*g, used + back, "seed {seed}: day {day} settled exactly");
            assert_eq!(
                used,
                per_day.get(day).copied().unwrap_or(0),
                "seed {seed}: day {day} used"
            );
        }
        // Every connection the session announced it also took back.
        assert!(
            w.presence.values().all(|n| *n == 0),
            "seed {seed}: {:?}",
            w.presence
        );
        // Nothing left pending but, for an ended session, its retirement.
        assert_eq!(
            w.core.next_wake(),
            w.core.retire_at(),
            "seed {seed}: nothing left pending"
        );
        assert_eq!(
            w.core.retire_at().is_some(),
            w.core.meta().ended_at.is_some(),
            "seed {seed}: an ended, settled, flushed session is due to retire"
        );
        assert!(w.answered > 0, "seed {seed}: some HTTP batch was answered");
    }
}
