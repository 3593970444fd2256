//! Native tests of the session core on a virtual clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::*;

const T0: Millis = 1_764_000_000_000;

fn meta(max: u64) -> Meta {
    Meta {
        id: "0190a6b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b".into(),
        owner_id: "owner".into(),
        title: None,
        members: vec!["bob".into(), "carol".into()],
        metadata: Map::new(),
        status: SessionStatus::Active,
        started_at: T0,
        ended_at: None,
        max_participants: max,
        owner_plan: "pro".into(),
    }
}

fn core() -> SessionCore {
    funded(SessionCore::create(meta(5), Config::default(), T0))
}

/// A core with plenty of points units in hand.
fn funded(mut c: SessionCore) -> SessionCore {
    c.add_units(1_000_000);
    drain(&mut c);
    c
}

fn drain(c: &mut SessionCore) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// Frames each connection received, as JSON, given the live set at each
/// broadcast.
fn deliver(actions: &[Action], live: &[&str]) -> BTreeMap<String, Vec<Value>> {
    let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for a in actions {
        match a {
            Action::Send { to, text } => got.entry(to.clone()).or_default().push(json(text)),
            Action::Broadcast { except, text } => {
                for c in live {
                    if except.as_deref() != Some(*c) {
                        got.entry(c.to_string()).or_default().push(json(text));
                    }
                }
            }
            _ => {}
        }
    }
    got
}

/// Stores and commits a socket point, as the adapter does.
fn send_point(c: &mut SessionCore, conn: &str, text: &str, now: Millis) -> Option<StoredPoint> {
    let p = c.on_text(conn, text, now)?;
    c.commit(Origin::Socket(conn), &p, now);
    Some(p)
}

#[test]
fn join_sends_welcome_to_the_joiner_and_joined_to_the_others() {
    let mut c = core();
    c.join("c1", "owner", T0);
    let a = drain(&mut c);
    let got = deliver(&a, &["c1"]);
    let w = &got["c1"][0];
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["connId"], "c1");
    assert_eq!(w["lastSeq"], 0);
    assert_eq!(w["participants"].as_array().unwrap().len(), 1);
    assert_eq!(got["c1"].len(), 1, "no joined frame to oneself");

    c.join("c2", "bob", T0 + 1);
    let got = deliver(&drain(&mut c), &["c1", "c2"]);
    assert_eq!(got["c1"][0]["type"], "joined");
    assert_eq!(got["c1"][0]["userId"], "bob");
    assert_eq!(got["c2"][0]["type"], "welcome");
    assert_eq!(got["c2"][0]["participants"].as_array().unwrap().len(), 2);
}

#[test]
fn presence_hears_of_every_join_and_leave() {
    let mut c = core();
    c.join("c1", "bob", T0);
    let a = drain(&mut c);
    assert!(a.contains(&Action::Presence {
        user: "bob".into(),
        conn: "c1".into(),
        online: true
    }));
    c.leave("c1");
    let a = drain(&mut c);
    assert!(a.contains(&Action::Presence {
        user: "bob".into(),
        conn: "c1".into(),
        online: false
    }));
    assert!(!c.leave("c1"));
    assert!(drain(&mut c).is_empty(), "a second leave says nothing");
    c.join("c2", "carol", T0);
    drain(&mut c);
    c.end("owner", T0).unwrap();
    let a = drain(&mut c);
    assert!(a.contains(&Action::Presence {
        user: "carol".into(),
        conn: "c2".into(),
        online: false
    }));
}

#[test]
fn points_wait_for_units_and_beyond_the_quota_get_quota_exceeded() {
    let mut c = SessionCore::create(meta(5), Config::default(), T0);
    c.join("c1", "owner", T0);
    drain(&mut c);
    assert!(c
        .on_text("c1", r#"{"type":"point","id":"a","kind":"k"}"#, T0)
        .is_none());
    assert!(c
        .on_text("c1", r#"{"type":"point","id":"b","kind":"k"}"#, T0)
        .is_none());
    assert_eq!(
        drain(&mut c),
        vec![Action::Reserve(200)],
        "one reservation for both"
    );
    // The owner has one point left today.
    let ready = c.granted(1, T0);
    assert_eq!(ready.len(), 1);
    assert_eq!((ready[0].1.seq, ready[0].1.id.as_deref()), (1, Some("a")));
    let got = deliver(&drain(&mut c), &["c1"]);
    assert_eq!(got["c1"][0]["code"], "quota_exceeded");
    assert_eq!(got["c1"][0]["ref"], "b", "never a silent drop");
    // A failed reservation is an error frame too.
    c.on_text("c1", r#"{"type":"point","id":"c","kind":"k"}"#, T0);
    drain(&mut c);
    c.reserve_failed();
    let got = deliver(&drain(&mut c), &["c1"]);
    assert_eq!(
        (got["c1"][0]["code"].as_str(), got["c1"][0]["ref"].as_str()),
        (Some("unavailable"), Some("c"))
    );
}

#[test]
fn busy_sessions_reserve_bigger_blocks() {
    let mut c = SessionCore::create(meta(5), Config::default(), T0);
    c.join("c1", "owner", T0);
    drain(&mut c);
    let mut asked = Vec::new();
    for i in 0..8_000 {
        let text = format!(r#"{{"type":"point","id":"p{i}","kind":"k"}}"#);
        // One frame a millisecond: within the flood limit.
        let now = T0 + i;
        if let Some(p) = c.on_text("c1", &text, now) {
            c.commit(Origin::Socket("c1"), &p, now);
        }
        for a in drain(&mut c) {
            if let Action::Reserve(n) = a {
                asked.push(n);
                for (conn, p) in c.granted(n, T0) {
                    c.commit(Origin::Socket(&conn), &p, T0);
                }
            }
        }
    }
    assert_eq!(c.last_seq(), 8_000);
    assert_eq!(&asked[..6], &[200, 400, 800, 1_600, 3_200, 3_200]);
    // A partial grant (the quota running out) starts small again.
    c.on_text("c1", r#"{"type":"point","kind":"k"}"#, T0);
    let _ = c.granted(1, T0);
    assert!(asked.len() < 10, "few round trips: {asked:?}");
}

#[test]
fn spare_units_go_back_when_idle_or_ended() {
    let mut c = SessionCore::create(meta(5), Config::default(), T0);
    c.join("c1", "owner", T0);
    c.on_text("c1", r#"{"type":"point","kind":"k"}"#, T0);
    drain(&mut c);
    let ready = c.granted(200, T0);
    c.commit(Origin::Socket("c1"), &ready[0].1, T0);
    drain(&mut c);
    assert_eq!(c.budget(), 199);
    c.leave("c1");
    assert!(drain(&mut c).contains(&Action::Refund(199)));
    assert_eq!((c.budget(), c.units()), (0, 1));
}

#[test]
fn admit_refuses_strangers_ended_and_full_sessions() {
    let mut c = funded(SessionCore::create(meta(2), Config::default(), T0));
    assert_eq!(c.admit("mallory").unwrap_err().status(), 403);
    c.join("a", "owner", T0);
    c.join("b", "bob", T0);
    let full = c.admit("carol").unwrap_err();
    assert_eq!(
        (full.status(), full.code()),
        (429, ErrorCode::QuotaExceeded)
    );
    c.leave("b");
    assert!(c.admit("carol").is_ok());
    c.end("owner", T0).unwrap();
    assert_eq!(c.admit("carol").unwrap_err(), ApiError::SessionEnded);
}

#[test]
fn points_are_numbered_1_2_3_and_acked_only_on_commit() {
    let mut c = core();
    c.join("c1", "owner", T0);
    c.join("c2", "bob", T0);
    drain(&mut c);
    let p = c
        .on_text(
            "c1",
            r#"{"type":"point","id":"a","kind":"hr","value":70}"#,
            T0 + 5,
        )
        .expect("a new point to store");
    assert_eq!((p.seq, p.user_id.as_str(), p.ts), (1, "owner", T0 + 5));
    assert!(
        drain(&mut c).is_empty(),
        "nothing leaves before the point is stored"
    );
    c.commit(Origin::Socket("c1"), &p, T0 + 5);
    let got = deliver(&drain(&mut c), &["c1", "c2"]);
    assert_eq!(got["c1"], vec![json(r#"{"type":"ack","id":"a","seq":1}"#)]);
    assert_eq!(got["c2"][0]["type"], "point");
    assert_eq!(got["c2"][0]["seq"], 1);
    assert_eq!(got["c2"][0]["userId"], "owner");
    let p2 = send_point(
        &mut c,
        "c2",
        r#"{"type":"point","kind":"hr","ts":1764000000001}"#,
        T0 + 6,
    )
    .unwrap();
    assert_eq!((p2.seq, p2.ts), (2, 1_764_000_000_001));
    assert_eq!(c.last_seq(), 2);
}

#[test]
fn a_repeated_id_is_acked_with_its_first_seq_and_not_stored_again() {
    let mut c = core();
    c.join("c1", "owner", T0);
    c.join("c2", "bob", T0);
    send_point(&mut c, "c1", r#"{"type":"point","id":"x","kind":"k"}"#, T0).unwrap();
    send_point(&mut c, "c1", r#"{"type":"point","id":"y","kind":"k"}"#, T0).unwrap();
    drain(&mut c);
    assert!(c
        .on_text("c1", r#"{"type":"point","id":"x","kind":"k"}"#, T0)
        .is_none());
    let got = deliver(&drain(&mut c), &["c1", "c2"]);
    assert_eq!(got["c1"], vec![json(r#"{"type":"ack","id":"x","seq":1}"#)]);
    assert!(!got.contains_key("c2"), "not broadcast again");
    // Over HTTP too, from another member.
    let dup = c
        .accept(
            Origin::Http("bob"),
            NewPoint {
                id: Some("y".into()),
                ..NewPoint::new("k")
            },
            T0,
        )
        .unwrap();
    assert_eq!(
        dup,
        Accepted::Duplicate {
            seq: 2,
            id: Some("y".into())
        }
    );
    assert_eq!(c.last_seq(), 2);
}

#[test]
fn abort_gives_the_seq_back_when_storage_fails() {
    let mut c = core();
    c.join("c1", "owner", T0);
    drain(&mut c);
    let p = c
        .on_text("c1", r#"{"type":"point","id":"a","kind":"k"}"#, T0)
        .unwrap();
    c.abort(&p);
    assert_eq!(c.last_seq(), 0);
    let again = c
        .on_text("c1", r#"{"type":"point","id":"a","kind":"k"}"#, T0)
        .unwrap();
    assert_eq!(again.seq, 1, "the id is free again and no gap appears");
}

#[test]
fn bad_frames_get_error_frames_and_the_connection_stays() {
    let mut c = core();
    c.join("c1", "owner", T0);
    drain(&mut c);
    let cases = [
        ("{", "invalid_json"),
        (r#"{"type":"warp"}"#, "unknown_type"),
        (
            r#"{"type":"point","id":"r1","kind":""}"#,
            "validation_failed",
        ),
        (
            r#"{"type":"point","kind":"k","colour":1}"#,
            "validation_failed",
        ),
    ];
    for (text, code) in cases {
        assert!(c.on_text("c1", text, T0).is_none());
        let got = deliver(&drain(&mut c), &["c1"]);
        assert_eq!(got["c1"][0]["type"], "error", "{text}");
        assert_eq!(got["c1"][0]["code"], code, "{text}");
    }
    assert!(c.has_conn("c1"));
    c.on_text("c1", r#"{"type":"point","id":"r1","kind":""}"#, T0);
    let got = deliver(&drain(&mut c), &["c1"]);
    assert_eq!(got["c1"][0]["ref"], "r1", "the error names the point");
    c.on_binary("c1", 10, T0);
    let got = deliver(&drain(&mut c), &["c1"]);
    assert_eq!(got["c1"][0]["code"], "unsupported");
    assert!(c.has_conn("c1"));
}

#[test]
fn oversized_frames_close_with_1009() {
    let mut c = core();
    c.join("c1", "owner", T0);
    c.join("c2", "bob", T0);
    drain(&mut c);
    let big = format!(
        r#"{{"type":"point","kind":"k","data":{{"x":"{}"}}}}"#,
        "a".repeat(MAX_FRAME_BYTES)
    );
    assert!(c.on_text("c1", &big, T0).is_none());
    let a = drain(&mut c);
    assert!(a.contains(&Action::Close {
        conn: "c1".into(),
        code: 1009,
        reason: "frame too large"
    }));
    assert!(!c.has_conn("c1"));
    assert_eq!(deliver(&a, &["c2"])["c2"][0]["type"], "left");
}

#[test]
fn ping_pong_and_resume_replays_through_the_adapter() {
    let mut c = core();
    c.join("c1", "owner", T0);
    send_point(&mut c, "c1", r#"{"type":"point","kind":"k"}"#, T0);
    drain(&mut c);
    c.on_text("c1", r#"{"type":"ping"}"#, T0);
    assert_eq!(
        deliver(&drain(&mut c), &["c1"])["c1"],
        vec![json(r#"{"type":"pong"}"#)]
    );
    c.on_text("c1", r#"{"type":"resume","afterSeq":0}"#, T0);
    assert_eq!(
        drain(&mut c),
        vec![Action::Replay {
            conn: "c1".into(),
            after_seq: 0,
            last_seq: 1
        }]
    );
}

#[test]
fn flooding_gets_rate_limited_then_closed_1008_and_others_are_not_slowed() {
    let cfg = Config {
        flood_per_sec: 10,
        flood_burst: 5,
        flood_close_after: 3,
        ..Config::default()
    };
    let mut c = funded(SessionCore::create(meta(5), cfg, T0));
    c.join("flood", "owner", T0);
    c.join("calm", "bob", T0);
    drain(&mut c);
    for _ in 0..5 {
        c.on_text("flood", r#"{"type":"ping"}"#, T0);
    }
    assert_eq!(
        deliver(&drain(&mut c), &["flood", "calm"])["flood"].len(),
        5
    );
    c.on_text("flood", r#"{"type":"ping"}"#, T0);
    let got = deliver(&drain(&mut c), &["flood", "calm"]);
    assert_eq!(got["flood"][0]["code"], "rate_limited");
    assert_eq!(
        got["flood"][0]["retryAfterMs"], 100,
        "one emission interval at 10/s"
    );
    // The calm participant is served at once.
    assert!(send_point(&mut c, "calm", r#"{"type":"point","kind":"k"}"#, T0).is_some());
    // After the emission interval the flooder may send again.
    c.on_text("flood", r#"{"type":"ping"}"#, T0 + 100);
    let got = deliver(&drain(&mut c), &["flood"]);
    assert_eq!(got["flood"].last().unwrap()["type"], "pong");
    // Refusals count up while they come less than a second apart: the one
    // at T0 and two more make three, the limit.
    for _ in 0..2 {
        c.on_text("flood", r#"{"type":"ping"}"#, T0 + 100);
    }
    assert!(c.has_conn("flood"));
    c.on_text("flood", r#"{"type":"ping"}"#, T0 + 100);
    let a = drain(&mut c);
    assert!(a.contains(&Action::Close {
        conn: "flood".into(),
        code: 1008,
        reason: "flooding"
    }));
    assert!(!c.has_conn("flood"));
}

#[test]
fn a_second_without_refusals_forgives_earlier_ones() {
    let cfg = Config {
        flood_per_sec: 10,
        flood_burst: 1,
        flood_close_after: 2,
        ..Config::default()
    };
    let mut c = funded(SessionCore::create(meta(5), cfg, T0));
    c.join("x", "owner", T0);
    let mut t = T0;
    for _ in 0..5 {
        for _ in 0..3 {
            c.on_text("x", r#"{"type":"ping"}"#, t);
        }
        t += 1_100;
    }
    assert!(
        c.has_conn("x"),
        "two refusals a burst, bursts more than a second apart"
    );
}

#[test]
fn flush_when_batch_is_full_or_after_the_interval() {
    let mut c = core();
    // The new session row is due one interval after creation.
    assert_eq!(c.next_flush_at(), Some(T0 + 2_000));
    assert_eq!(c.poll_flush(T0 + 1_999), None);
    let b = c.poll_flush(T0 + 2_000).unwrap();
    assert_eq!((b.from, b.to), (1, 0), "row only");
    c.flush_done(b, true, T0 + 2_000);
    assert_eq!(c.next_flush_at(), None);

    c.join("c1", "owner", T0);
    let t = T0 + 10_000;
    send_point(&mut c, "c1", r#"{"type":"point","kind":"k"}"#, t);
    assert_eq!(
        c.next_flush_at(),
        Some(t + 2_000),
        "interval after the first pending point"
    );
    for i in 1..10 {
        send_point(&mut c, "c1", r#"{"type":"point","kind":"k"}"#, t + i);
    }
    assert!(
        drain(&mut c).contains(&Action::WakeAt(t)),
        "a full batch is due at once"
    );
    let b = c.poll_flush(t + 9).unwrap();
    assert_eq!((b.from, b.to), (1, 10));
    assert_eq!(c.poll_flush(t + 9), None, "one flush in flight at a time");
    c.flush_done(b, true, t + 20);
    assert_eq!(c.flushed_seq(), 10);
    assert_eq!(c.next_flush_at(), None);
}

#[test]
fn failed_flush_keeps_points_pending_and_backs_off() {
    let mut c = core();
    c.join("c1", "owner", T0);
    for _ in 0..10 {
        send_point(&mut c, "c1", r#"{"type":"point","kind":"k"}"#, T0);
    }
    let mut now = T0;
    let mut waits = Vec::new();
    for _ in 0..8 {
        let b = c.poll_flush(now).expect("due");
        c.flush_done(b, false, now);
        let next = c.next_flush_at().unwrap();
        waits.push(next - now);
        now = next;
    }
    assert_eq!(
        waits,
        vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
    );
    assert_eq!(c.flushed_seq(), 0);
    let b = c.poll_flush(now).unwrap();
    assert_eq!((b.from, b.to), (1, 10), "the same points, again");
    c.flush_done(b, true, now);
    assert_eq!(c.flushed_seq(), 10);
    assert_eq!(c.next_flush_at(), None);
}

#[test]
fn end_broadcasts_closes_everyone_and_flushes_now() {
    let mut c = core();
    c.join("c1", "owner", T0);
    c.join("c2", "bob", T0);
    send_point(&mut c, "c2", r#"{"type":"point","kind":"k"}"#, T0);
    drain(&mut c);
    assert_eq!(c.end("bob", T0).unwrap_err().status(), 403);
    c.on_text("c1", r#"{"type":"end"}"#, T0 + 50);
    let a = drain(&mut c);
    let got = deliver(&a, &["c1", "c2"]);
    assert_eq!(
        got["c1"].last().unwrap(),
        &json(r#"{"type":"ended","lastSeq":1}"#)
    );
    assert_eq!(
        got["c2"].last().unwrap(),
        &json(r#"{"type":"ended","lastSeq":1}"#)
    );
    for conn in ["c1", "c2"] {
        assert!(a.contains(&Action::Close {
            conn: conn.into(),
            code: 1000,
            reason: "session ended"
        }));
    }
    assert!(a.contains(&Action::SaveMeta));
    assert_eq!(c.view().status, SessionStatus::Ended);
    assert!(c.next_flush_at().unwrap() <= T0 + 50, "flush at once");
    let e = c
        .accept(Origin::Http("owner"), NewPoint::new("k"), T0)
        .unwrap_err();
    assert_eq!(e, ApiError::SessionEnded);
    assert_eq!(c.end("owner", T0 + 60), Ok(()), "ending twice is fine");
}

#[test]
fn http_points_are_broadcast_to_every_socket_and_members_only() {
    let mut c = core();
    c.join("c1", "bob", T0);
    drain(&mut c);
    let e = c
        .accept(Origin::Http("mallory"), NewPoint::new("k"), T0)
        .unwrap_err();
    assert_eq!(e.status(), 403);
    let Accepted::New(p) = c
        .accept(Origin::Http("carol"), NewPoint::new("k"), T0)
        .unwrap()
    else {
        panic!("new point");
    };
    c.commit(Origin::Http("carol"), &p, T0);
    let got = deliver(&drain(&mut c), &["c1"]);
    assert_eq!(got["c1"][0]["type"], "point");
    assert_eq!(got["c1"][0]["userId"], "carol");
}

#[test]
fn restore_continues_from_storage() {
    let r = Restored {
        last_seq: 7,
        flushed_seq: 5,
        ids: vec![("a".into(), 3)],
        conns: vec![("c1".into(), "bob".into(), T0)],
        meta_version: 1,
        flushed_meta_version: 1,
        units: 1_000,
    };
    let mut c = SessionCore::restore(meta(5), Config::default(), r, T0 + 100);
    assert!(
        drain(&mut c).contains(&Action::WakeAt(T0 + 2_100)),
        "pending points get flushed"
    );
    assert!(c.has_conn("c1"));
    let dup = c.accept(
        Origin::Socket("c1"),
        NewPoint {
            id: Some("a".into()),
            ..NewPoint::new("k")
        },
        T0,
    );
    assert_eq!(
        dup.unwrap(),
        Accepted::Duplicate {
            seq: 3,
            id: Some("a".into())
        }
    );
    let p = send_point(&mut c, "c1", r#"{"type":"point","kind":"k"}"#, T0).unwrap();
    assert_eq!(p.seq, 8);
    let b = c.poll_flush(T0 + 2_100).unwrap();
    assert_eq!((b.from, b.to), (6, 8));
}

#[test]
fn backoff_is_capped() {
    assert_eq!(retry_backoff_ms(1), 1_000);
    assert_eq!(retry_backoff_ms(3), 4_000);
    assert_eq!(retry_backoff_ms(100), 60_000);
}

fn world_cfg() -> Config {
    Config {
        reserve_block: 5,
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

/// The adapter, simulated: storage, D1 (a set, as `INSERT OR IGNORE` on
/// `(session_id, seq)`), the live sockets and what each received.
struct World {
    core: SessionCore,
    storage: BTreeMap<u64, StoredPoint>,
    d1: BTreeSet<u64>,
    live: Vec<String>,
    received: HashMap<String, Vec<u64>>,
    acked: HashMap<String, u64>,
    sent_by: HashMap<u64, String>,
    joined_at_seq: HashMap<String, u64>,
    now: Millis,
    next_conn: u32,
    presence: HashMap<String, i32>,
    reservations: Vec<u64>,
    granted: u64,
    refunded: u64,
}

impl World {
    fn new() -> World {
        let mut core = SessionCore::create(meta(100), world_cfg(), T0);
        drain(&mut core);
        World {
            core,
            storage: BTreeMap::new(),
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
            granted: 0,
            refunded: 0,
        }
    }

    fn run_actions(&mut self) {
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Send { to, text } => self.receive(&to, &text),
                Action::Broadcast { except, text } => {
                    for c in self.live.clone() {
                        if except.as_deref() != Some(c.as_str()) {
                            self.receive(&c, &text);
                        }
                    }
                }
                Action::Close { conn, .. } => self.live.retain(|c| *c != conn),
                Action::Presence { conn, online, .. } => {
                    let n = self.presence.entry(conn).or_insert(0);
                    *n += if online { 1 } else { -1 };
                    assert!((0..=1).contains(n), "presence count of a connection");
                }
                Action::Reserve(n) => self.reservations.push(n),
                Action::Refund(n) => self.refunded += n,
                Action::Replay { .. }
                | Action::SaveMeta
                | Action::WakeAt(_)
                | Action::SaveUnits => {}
            }
        }
    }

    fn receive(&mut self, conn: &str, text: &str) {
        let v = json(text);
        match v["type"].as_str().unwrap() {
            "point" => {
                let seq = v["seq"].as_u64().unwrap();
                assert_ne!(
                    self.sent_by.get(&seq).map(String::as_str),
                    Some(conn),
                    "own point echoed"
                );
                self.received.entry(conn.to_owned()).or_default().push(seq);
            }
            "ack" => {
                let seq = v["seq"].as_u64().unwrap();
                assert!(self.storage.contains_key(&seq), "ack before storage");
                if let Some(id) = v["id"].as_str() {
                    let first = *self.acked.entry(id.to_owned()).or_insert(seq);
                    assert_eq!(first, seq, "a repeated id keeps its first seq");
                }
            }
            _ => {}
        }
    }

    fn store_and_commit(&mut self, conn: &str, p: StoredPoint) {
        self.storage.insert(p.seq, p.clone());
        self.sent_by.insert(p.seq, conn.to_owned());
        self.core.commit(Origin::Socket(conn), &p, self.now);
    }

    /// Answers the oldest reservation: in full, in part, none left, or the
    /// quota object unreachable.
    fn answer_reservation(&mut self, rng: &mut Rng) {
        if self.reservations.is_empty() {
            return;
        }
        let want = self.reservations.remove(0);
        match rng.below(6) {
            0 => self.core.reserve_failed(),
            k => {
                let n = [want, want, want, want / 2, 0][(k - 1) as usize];
                self.granted += n;
                for (conn, p) in self.core.granted(n, self.now) {
                    self.store_and_commit(&conn, p);
                }
            }
        }
    }

    fn step(&mut self, rng: &mut Rng) {
        self.now += rng.below(300) as Millis;
        if rng.below(3) == 0 {
            self.answer_reservation(rng);
            // The adapter carries decisions out before the next event.
            self.run_actions();
        }
        match rng.below(10) {
            0 if self.live.len() < 6 => {
                self.next_conn += 1;
                let conn = format!("c{}", self.next_conn);
                let user = ["owner", "bob", "carol"][rng.below(3) as usize];
                self.core.join(&conn, user, self.now);
                self.joined_at_seq
                    .insert(conn.clone(), self.core.last_seq());
                self.live.push(conn);
            }
            1 if !self.live.is_empty() => {
                let conn = self.live.remove(rng.below(self.live.len() as u64) as usize);
                self.core.leave(&conn);
            }
            2..=5 if !self.live.is_empty() => {
                let conn = self.live[rng.below(self.live.len() as u64) as usize].clone();
                let id = rng.below(40);
                let text = format!(r#"{{"type":"point","id":"p{id}","kind":"k"}}"#);
                if let Some(p) = self.core.on_text(&conn, &text, self.now) {
                    if rng.below(20) == 0 {
                        self.core.abort(&p);
                    } else {
                        self.storage.insert(p.seq, p.clone());
                        self.sent_by.insert(p.seq, conn.clone());
                        self.core.commit(Origin::Socket(&conn), &p, self.now);
                    }
                }
            }
            6 => {
                let n = 1 + rng.below(3);
                // The adapter reserves what an HTTP batch needs first.
                if rng.below(2) == 0 {
                    self.granted += n;
                    self.core.add_units(n);
                }
                for _ in 0..n {
                    let p = NewPoint {
                        id: Some(format!("h{}", rng.below(40))),
                        ..NewPoint::new("k")
                    };
                    match self.core.accept(Origin::Http("bob"), p, self.now) {
                        Ok(Accepted::New(p)) => {
                            self.storage.insert(p.seq, p.clone());
                            self.core.commit(Origin::Http("bob"), &p, self.now);
                        }
                        Ok(Accepted::Duplicate { .. }) => {}
                        Err(e) => assert_eq!(e.code(), ErrorCode::QuotaExceeded),
                    }
                }
            }
            7 | 8 => self.flush(rng.below(3) != 0),
            _ => self.restart(),
        }
        self.run_actions();
    }

    fn flush(&mut self, ok: bool) {
        if let Some(b) = self.core.poll_flush(self.now) {
            for seq in b.from..=b.to {
                assert!(
                    self.storage.contains_key(&seq),
                    "flushes only stored points"
                );
                if ok {
                    self.d1.insert(seq);
                }
            }
            self.core.flush_done(b, ok, self.now);
        }
    }

    /// The object is evicted and wakes with what storage holds; sockets
    /// survive (hibernation).
    fn restart(&mut self) {
        self.run_actions();
        let r = Restored {
            last_seq: self.storage.keys().next_back().copied().unwrap_or(0),
            flushed_seq: self.core.flushed_seq(),
            ids: self
                .storage
                .values()
                .filter_map(|p| p.id.clone().map(|id| (id, p.seq)))
                .collect(),
            conns: self
                .live
                .iter()
                .map(|c| (c.clone(), "bob".to_owned(), self.now))
                .collect(),
            meta_version: self.core.meta_version(),
            flushed_meta_version: self.core.meta_version(),
            units: self.core.units(),
        };
        self.reservations.clear();
        self.core = SessionCore::restore(self.core.meta().clone(), world_cfg(), r, self.now);
    }
}

#[test]
fn random_interleavings_keep_the_invariants() {
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut w = World::new();
        for _ in 0..400 {
            w.step(&mut rng);
        }
        // No gap, no duplicate: storage holds exactly 1..=last_seq.
        let last = w.core.last_seq();
        assert_eq!(
            w.storage.keys().copied().collect::<Vec<_>>(),
            (1..=last).collect::<Vec<_>>(),
            "seed {seed}"
        );
        // Everyone received each other's points once, in order, while live.
        for (conn, seqs) in &w.received {
            let mut sorted = seqs.clone();
            sorted.dedup();
            assert_eq!(&sorted, seqs, "seed {seed}: {conn} got a point twice");
            assert!(seqs.windows(2).all(|p| p[0] < p[1]), "seed {seed}: order");
        }
        for conn in &w.live {
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
            w.granted += n;
            assert!(w.core.granted(n, w.now).is_empty());
            w.run_actions();
        }
        for _ in 0..20 {
            w.now = w.core.next_flush_at().unwrap_or(w.now).max(w.now);
            w.flush(true);
        }
        assert_eq!(w.d1, (1..=last).collect::<BTreeSet<_>>(), "seed {seed}");
        // Units: never a point without one, and what was not used went back.
        assert!(
            w.granted >= w.refunded + last,
            "seed {seed}: units overdrawn"
        );
        assert_eq!(
            w.core.budget(),
            0,
            "seed {seed}: spare units refunded at end"
        );
        assert_eq!(w.granted - w.refunded, w.core.units(), "seed {seed}");
        // Every connection the session announced it also took back.
        assert!(
            w.presence.values().all(|n| *n == 0),
            "seed {seed}: {:?}",
            w.presence
        );
        assert_eq!(
            w.core.next_flush_at(),
            None,
            "seed {seed}: nothing left pending"
        );
    }
}

#[test]
fn point_frames_built_from_stored_json_are_the_wire_point_frame() {
    let p = NewPoint {
        id: Some("x".into()),
        value: Some(2.5),
        ..NewPoint::new("hr")
    }
    .into_stored(7, "bob", T0);
    let text = point_frame(&serde_json::to_string(&p).unwrap());
    let parsed: ServerFrame = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed, ServerFrame::Point(p));
}
