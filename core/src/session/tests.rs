//! Native tests of the session core on a virtual clock.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::*;

const T0: Millis = 1_764_000_000_000;
const DAY: Millis = 86_400_000;

fn meta(max: u64) -> Meta {
    Meta {
        id: "0190a6b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b".into(),
        owner_id: "owner".into(),
        title: None,
        members: vec!["bob".into(), "carol".into()],
        viewers: vec![],
        metadata: Map::new(),
        status: SessionStatus::Active,
        started_at: T0,
        ended_at: None,
        max_participants: max,
        owner_plan: "pro".into(),
    }
}

fn core() -> SessionCore {
    funded(created(meta(5), Config::default()))
}

/// A new session at T0 whose row reached D1 (the flush every creation
/// starts at once).
fn created(meta: Meta, cfg: Config) -> SessionCore {
    let mut c = SessionCore::create(meta, cfg, T0);
    let row = flush_job(&drain(&mut c)).expect("the row goes to D1 at once");
    c.flush_done(row.batch, true, T0);
    c
}

/// A core with plenty of points units of T0's day in hand.
fn funded(mut c: SessionCore) -> SessionCore {
    fund(&mut c, 1_000_000, day_of(T0), T0);
    drain(&mut c);
    c
}

/// Puts `n` units of `day` in hand, as a grant would, without a
/// reservation being out.
fn fund(c: &mut SessionCore, n: u64, day: Millis, now: Millis) {
    c.tick_clock(now);
    c.take_grant(n, day);
}

/// Every decision, with each write stored successfully (as the adapter
/// does when storage works).
fn drain(c: &mut SessionCore) -> Vec<Decision> {
    let mut out = Vec::new();
    while let Some(d) = c.poll() {
        let store = matches!(d, Decision::Store(_));
        out.push(d);
        if store {
            c.stored(true, c.clock.get());
        }
    }
    out
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// Frames each connection received, as JSON, given the live set at each
/// broadcast.
fn deliver(actions: &[Decision], live: &[&str]) -> BTreeMap<String, Vec<Value>> {
    let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for a in actions {
        match a {
            Decision::Send { to, text } => got.entry(to.clone()).or_default().push(json(text)),
            Decision::Broadcast { except, text } => {
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

fn stored_points(ds: &[Decision]) -> Vec<StoredPoint> {
    ds.iter()
        .filter_map(|d| match d {
            Decision::Store(w) => Some(w.points.iter().map(|r| r.point.clone())),
            _ => None,
        })
        .flatten()
        .collect()
}

fn flush_job(ds: &[Decision]) -> Option<FlushJob> {
    ds.iter().find_map(|d| match d {
        Decision::Flush(j) => Some(j.clone()),
        _ => None,
    })
}

fn reserve(want: u64) -> Decision {
    Decision::Reserve {
        owner: "owner".into(),
        plan: "pro".into(),
        want,
    }
}

/// Sends a socket point and stores it, as the adapter does; returns it.
fn send_point(c: &mut SessionCore, conn: &str, text: &str, now: Millis) -> Option<StoredPoint> {
    c.on_text(conn, text, now, &mut NoIds);
    stored_points(&drain(c)).pop()
}

/// An HTTP batch, its writes stored: its answer (which must come without a
/// reservation), and every other decision.
fn http_with(
    c: &mut SessionCore,
    user: &str,
    points: Vec<NewPoint>,
    now: Millis,
) -> (Result<Vec<u64>, SessionError>, Vec<Decision>) {
    let batch = match c.append(user, points, now, &mut NoIds) {
        Ok(b) => b,
        Err(e) => return (Err(e), Vec::new()),
    };
    let mut answer = None;
    let mut rest = Vec::new();
    for d in drain(c) {
        match d {
            Decision::Appended { batch: b, result } if b == batch => answer = Some(result),
            other => rest.push(other),
        }
    }
    (answer.expect("answered without a reservation"), rest)
}

fn http(
    c: &mut SessionCore,
    user: &str,
    points: Vec<NewPoint>,
    now: Millis,
) -> Result<Vec<u64>, SessionError> {
    http_with(c, user, points, now).0
}

/// The answer to HTTP batch `batch` among `ds`.
fn appended(ds: &[Decision], batch: u64) -> Option<Result<Vec<u64>, SessionError>> {
    ds.iter().find_map(|d| match d {
        Decision::Appended { batch: b, result } if *b == batch => Some(result.clone()),
        _ => None,
    })
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
    assert!(a.iter().any(
        |d| matches!(d, Decision::Presence { user, conn, online: true, .. }
        if user == "bob" && conn == "c1")
    ));
    c.leave("c1", T0);
    let a = drain(&mut c);
    assert!(a.iter().any(
        |d| matches!(d, Decision::Presence { user, conn, online: false, .. }
        if user == "bob" && conn == "c1")
    ));
    assert!(!c.leave("c1", T0));
    assert!(drain(&mut c).is_empty(), "a second leave says nothing");
    c.join("c2", "carol", T0);
    drain(&mut c);
    c.end("owner", T0).unwrap();
    let a = drain(&mut c);
    assert!(a.iter().any(
        |d| matches!(d, Decision::Presence { user, conn, online: false, .. }
        if user == "carol" && conn == "c2")
    ));
}

#[test]
fn points_wait_for_units_and_beyond_the_quota_get_quota_exceeded() {
    let mut c = created(meta(5), Config::default());
    c.join("c1", "owner", T0);
    drain(&mut c);
    c.on_text(
        "c1",
        r#"{"type":"point","id":"a","kind":"k"}"#,
        T0,
        &mut NoIds,
    );
    c.on_text(
        "c1",
        r#"{"type":"point","id":"b","kind":"k"}"#,
        T0,
        &mut NoIds,
    );
    assert_eq!(
        drain(&mut c),
        vec![reserve(200)],
        "one reservation for both"
    );
    // The owner has one point left today.
    c.granted(1, day_of(T0), T0, &mut NoIds);
    let a = drain(&mut c);
    let ready = stored_points(&a);
    assert_eq!(ready.len(), 1);
    assert_eq!((ready[0].seq, ready[0].id.as_deref()), (1, Some("a")));
    let got = deliver(&a, &["c1"]);
    let err = got["c1"].iter().find(|f| f["type"] == "error").unwrap();
    assert_eq!(err["code"], "quota_exceeded");
    assert_eq!(err["ref"], "b", "never a silent drop");
    assert_eq!(
        err["retryAfterMs"].as_i64().unwrap(),
        day_of(T0) + DAY - T0,
        "until the next UTC day"
    );
    // A failed reservation is an error frame too.
    c.on_text(
        "c1",
        r#"{"type":"point","id":"c","kind":"k"}"#,
        T0,
        &mut NoIds,
    );
    drain(&mut c);
    c.reserve_failed(T0);
    let got = deliver(&drain(&mut c), &["c1"]);
    assert_eq!(
        (got["c1"][0]["code"].as_str(), got["c1"][0]["ref"].as_str()),
        (Some("unavailable"), Some("c"))
    );
}

#[test]
fn points_waiting_for_units_are_bounded_in_count_and_bytes() {
    let cfg = Config {
        waiting_max_points: 3,
        waiting_max_bytes: 200,
        ..Config::default()
    };
    let mut c = created(meta(5), cfg);
    c.join("c1", "owner", T0);
    drain(&mut c);
    for i in 0..5 {
        let text = format!(r#"{{"type":"point","id":"w{i}","kind":"k"}}"#);
        c.on_text("c1", &text, T0, &mut NoIds);
    }
    let got = deliver(&drain(&mut c), &["c1"]);
    let refused: Vec<_> = got["c1"].iter().map(|f| f["ref"].clone()).collect();
    assert_eq!(refused, vec![json(r#""w3""#), json(r#""w4""#)]);
    assert_eq!(got["c1"][0]["code"], "rate_limited");
    assert!(got["c1"][0]["retryAfterMs"].as_u64().unwrap() > 0);
    // Bytes: one big point fills the queue.
    let mut c = created(meta(5), cfg);
    c.join("c1", "owner", T0);
    drain(&mut c);
    let big = format!(
        r#"{{"type":"point","id":"big","kind":"k","data":{{"x":"{}"}}}}"#,
        "a".repeat(100)
    );
    c.on_text("c1", &big, T0, &mut NoIds);
    c.on_text("c1", &big.replace("big", "big2"), T0, &mut NoIds);
    let got = deliver(&drain(&mut c), &["c1"]);
    assert_eq!(got["c1"].len(), 1, "{got:?}");
    assert_eq!(got["c1"][0]["ref"], "big2");
    // Granted: the queued point is stored, the queue is free again.
    c.granted(200, day_of(T0), T0, &mut NoIds);
    assert_eq!(stored_points(&drain(&mut c)).len(), 1);
}

#[test]
fn more_waiting_points_than_a_full_block_ask_again() {
    let cfg = Config {
        reserve_block: 2,
        ..Config::default()
    };
    let mut c = created(meta(5), cfg);
    c.join("c1", "owner", T0);
    drain(&mut c);
    for i in 0..5 {
        let text = format!(r#"{{"type":"point","id":"m{i}","kind":"k"}}"#);
        c.on_text("c1", &text, T0, &mut NoIds);
    }
    assert_eq!(drain(&mut c), vec![reserve(2)]);
    c.granted(2, day_of(T0), T0, &mut NoIds);
    let a = drain(&mut c);
    assert_eq!(stored_points(&a).len(), 2);
    assert!(a.contains(&reserve(4)), "{a:?}");
    assert!(deliver(&a, &["c1"])["c1"]
        .iter()
        .all(|f| f["type"] == "ack"));
}

#[test]
fn busy_sessions_reserve_bigger_blocks() {
    let mut c = created(meta(5), Config::default());
    c.join("c1", "owner", T0);
    drain(&mut c);
    let mut asked = Vec::new();
    for i in 0..8_000 {
        let text = format!(r#"{{"type":"point","id":"p{i}","kind":"k"}}"#);
        // One frame a millisecond: within the flood limit.
        let now = T0 + i;
        c.on_text("c1", &text, now, &mut NoIds);
        let mut pending = drain(&mut c);
        while let Some(Decision::Reserve { want, .. }) = pending
            .iter()
            .find(|d| matches!(d, Decision::Reserve { .. }))
            .cloned()
        {
            asked.push(want);
            c.granted(want, day_of(T0), now, &mut NoIds);
            pending = drain(&mut c);
        }
    }
    assert_eq!(c.last_seq(), 8_000);
    assert_eq!(&asked[..6], &[200, 400, 800, 1_600, 3_200, 3_200]);
    assert!(asked.len() < 10, "few round trips: {asked:?}");
}

#[test]
fn spare_units_go_back_when_idle_or_ended() {
    let mut c = created(meta(5), Config::default());
    c.join("c1", "owner", T0);
    c.on_text("c1", r#"{"type":"point","kind":"k"}"#, T0, &mut NoIds);
    drain(&mut c);
    c.granted(200, day_of(T0), T0, &mut NoIds);
    drain(&mut c);
    assert_eq!(c.units().held, 199);
    c.leave("c1", T0);
    let settled = drain(&mut c).into_iter().find_map(|d| match d {
        Decision::Settle {
            settlement, units, ..
        } => Some((settlement, units)),
        _ => None,
    });
    let (s, u) = settled.expect("settled");
    assert_eq!((s.day, s.used, s.returned), (day_of(T0), 1, 199));
    assert_eq!((u.held, u.used), (0, 0));
}

#[test]
fn http_only_sessions_give_idle_units_back_from_the_alarm() {
    let mut c = created(meta(5), Config::default());
    drain(&mut c);
    let batch = c
        .append("bob", vec![NewPoint::new("k")], T0, &mut NoIds)
        .unwrap();
    let a = drain(&mut c);
    assert!(a.contains(&reserve(200)), "the socket path's reservation");
    assert_eq!(appended(&a, batch), None, "the batch waits for it");
    c.granted(200, day_of(T0), T0, &mut NoIds);
    let a = drain(&mut c);
    assert_eq!(appended(&a, batch), Some(Ok(vec![1])));
    let settle_at = T0 + Config::default().units_settle_ms as Millis;
    let idle_at = T0 + Config::default().units_idle_ms as Millis;
    assert!(a
        .iter()
        .any(|d| matches!(d, Decision::WakeAt(t) if *t <= settle_at)));
    let settled = |c: &mut SessionCore| {
        drain(c).into_iter().find_map(|d| match d {
            Decision::Settle { settlement, .. } => Some(settlement),
            _ => None,
        })
    };
    // The spent unit is settled as used a settle interval on; the unused
    // ones go back once the session was idle long enough.
    c.tick(settle_at - 1);
    assert_eq!(settled(&mut c), None);
    c.tick(settle_at);
    let used = Settlement {
        day: day_of(T0),
        used: 1,
        returned: 0,
    };
    assert_eq!(settled(&mut c), Some(used));
    c.tick(idle_at - 1);
    assert_eq!(settled(&mut c), None);
    c.tick(idle_at);
    let rest = Settlement {
        day: day_of(T0),
        used: 0,
        returned: 199,
    };
    assert_eq!(settled(&mut c), Some(rest));
    assert_eq!(c.next_wake(), c.next_flush_at(), "nothing idle left");
}

#[test]
fn units_are_spent_on_their_own_day_and_settled_at_a_day_change() {
    let mut c = core();
    c.join("c1", "owner", T0);
    send_point(&mut c, "c1", r#"{"type":"point","kind":"k"}"#, T0).unwrap();
    let next_day = day_of(T0) + DAY + 5;
    c.on_text(
        "c1",
        r#"{"type":"point","id":"n","kind":"k"}"#,
        next_day,
        &mut NoIds,
    );
    let a = drain(&mut c);
    let s = a.iter().find_map(|d| match d {
        Decision::Settle {
            settlement, units, ..
        } => Some((*settlement, *units)),
        _ => None,
    });
    let (s, u) = s.expect("the old day settled");
    assert_eq!((s.day, s.used, s.returned), (day_of(T0), 1, 1_000_000 - 1));
    assert_eq!(
        u,
        Units {
            day: day_of(next_day),
            held: 0,
            used: 0
        }
    );
    assert!(a.contains(&reserve(200)), "units of the new day");
    assert!(stored_points(&a).is_empty(), "the point waits for them");
    c.granted(200, day_of(next_day), next_day, &mut NoIds);
    let p = stored_points(&drain(&mut c));
    assert_eq!(p[0].seq, 2);
    assert_eq!(
        c.units(),
        Units {
            day: day_of(next_day),
            held: 199,
            used: 1
        }
    );
}

#[test]
fn spent_units_are_settled_at_most_once_a_settle_interval() {
    let mut c = core();
    let every = Config::default().units_settle_ms as Millis;
    c.join("c1", "owner", T0);
    let settled = |c: &mut SessionCore| {
        drain(c)
            .into_iter()
            .filter_map(|d| match d {
                Decision::Settle { settlement, .. } => Some((settlement.used, settlement.returned)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    for i in 0..10 {
        c.on_text("c1", r#"{"type":"point","kind":"k"}"#, T0 + i, &mut NoIds);
    }
    assert_eq!(settled(&mut c), vec![], "not within the interval");
    assert!(c.next_wake().is_some_and(|t| t <= T0 + every));
    // The next point after the interval settles everything spent so far,
    // itself included.
    c.on_text(
        "c1",
        r#"{"type":"point","kind":"k"}"#,
        T0 + every,
        &mut NoIds,
    );
    assert_eq!(settled(&mut c), vec![(11, 0)]);
    assert_eq!(c.units().used, 0);
    for i in 1..=5 {
        c.on_text(
            "c1",
            r#"{"type":"point","kind":"k"}"#,
            T0 + every + i,
            &mut NoIds,
        );
    }
    assert_eq!(settled(&mut c), vec![]);
    // A quiet session settles from the alarm.
    c.tick(T0 + 2 * every - 1);
    assert_eq!(settled(&mut c), vec![]);
    c.tick(T0 + 2 * every);
    assert_eq!(settled(&mut c), vec![(5, 0)]);
    assert!(c.next_wake().is_none_or(|t| t > T0 + 2 * every));
}

#[test]
fn admit_refuses_strangers_ended_full_sessions_and_extra_seats() {
    let mut c = funded(created(meta(2), Config::default()));
    assert_eq!(c.admit("mallory").unwrap_err().code(), ErrorCode::Forbidden);
    c.join("a", "owner", T0);
    c.join("b", "bob", T0);
    let full = c.admit("carol").unwrap_err();
    assert_eq!(full.code(), ErrorCode::QuotaExceeded);
    c.leave("b", T0);
    assert!(c.admit("carol").is_ok());
    // The owner's current plan raises the cap.
    c.set_plan("enterprise", 100);
    assert!(drain(&mut c)
        .iter()
        .any(|d| matches!(d, Decision::SaveMeta { meta, .. } if meta.owner_plan == "enterprise")));
    c.join("b1", "bob", T0);
    c.join("b2", "bob", T0);
    assert!(c.admit("bob").is_ok());
    c.join("b3", "bob", T0);
    let seats = c.admit("bob").unwrap_err();
    assert_eq!(seats.code(), ErrorCode::QuotaExceeded);
    assert!(c.admit("carol").is_ok(), "seats are per user");
    c.end("owner", T0).unwrap();
    assert_eq!(c.admit("carol").unwrap_err(), SessionError::Ended);
}

#[test]
fn points_are_numbered_1_2_3_and_acked_only_once_stored() {
    let mut c = core();
    c.join("c1", "owner", T0);
    c.join("c2", "bob", T0);
    drain(&mut c);
    c.on_text(
        "c1",
        r#"{"type":"point","id":"a","kind":"hr","value":70}"#,
        T0 + 5,
        &mut NoIds,
    );
    let Some(Decision::Store(w)) = c.poll() else {
        panic!("the point is stored first");
    };
    let p = &w.points[0].point;
    assert_eq!((p.seq, p.user_id.as_str(), p.ts), (1, "owner", T0 + 5));
    assert_eq!(c.poll(), None, "nothing leaves before the point is stored");
    assert_eq!(c.last_seq(), 0);
    c.stored(true, T0 + 5);
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
fn a_repeated_id_of_the_same_user_is_acked_with_its_first_seq_and_not_stored_again() {
    let mut c = core();
    c.join("c1", "owner", T0);
    c.join("c2", "bob", T0);
    send_point(&mut c, "c1", r#"{"type":"point","id":"x","kind":"k"}"#, T0).unwrap();
    send_point(&mut c, "c1", r#"{"type":"point","id":"y","kind":"k"}"#, T0).unwrap();
    drain(&mut c);
    assert!(send_point(&mut c, "c1", r#"{"type":"point","id":"x","kind":"k"}"#, T0).is_none());
    c.on_text(
        "c1",
        r#"{"type":"point","id":"x","kind":"k"}"#,
        T0,
        &mut NoIds,
    );
    let got = deliver(&drain(&mut c), &["c1", "c2"]);
    assert_eq!(got["c1"], vec![json(r#"{"type":"ack","id":"x","seq":1}"#)]);
    assert!(!got.contains_key("c2"), "not broadcast again");
    // Over HTTP too, by the same user.
    assert_eq!(
        http(
            &mut c,
            "owner",
            vec![NewPoint {
                id: Some("y".into()),
                ..NewPoint::new("k")
            }],
            T0
        ),
        Ok(vec![2])
    );
    assert_eq!(c.last_seq(), 2);
}

#[test]
fn ids_are_scoped_to_their_user() {
    let mut c = core();
    c.join("c1", "owner", T0);
    c.join("c2", "bob", T0);
    let a = send_point(
        &mut c,
        "c1",
        r#"{"type":"point","id":"same","kind":"k"}"#,
        T0,
    )
    .unwrap();
    let b = send_point(
        &mut c,
        "c2",
        r#"{"type":"point","id":"same","kind":"k"}"#,
        T0,
    )
    .unwrap();
    assert_eq!(
        (a.seq, b.seq),
        (1, 2),
        "two users' equal ids are two points"
    );
    assert_eq!(
        http(
            &mut c,
            "carol",
            vec![NewPoint {
                id: Some("same".into()),
                ..NewPoint::new("k")
            }],
            T0
        ),
        Ok(vec![3])
    );
    drain(&mut c);
    assert_eq!(
        http(
            &mut c,
            "bob",
            vec![NewPoint {
                id: Some("same".into()),
                ..NewPoint::new("k")
            }],
            T0
        ),
        Ok(vec![2])
    );
    assert!(stored_points(&drain(&mut c)).is_empty());
}

#[test]
fn ids_beyond_the_cache_are_looked_up_in_storage() {
    struct Stored(HashMap<(String, String), u64>, u32);
    impl IdLookup for Stored {
        fn seq_of(&mut self, user: &str, id: &str) -> Option<u64> {
            self.1 += 1;
            self.0.get(&(user.to_owned(), id.to_owned())).copied()
        }
    }
    let cfg = Config {
        id_cache: 2,
        ..Config::default()
    };
    let r = Restored {
        last_seq: 500,
        conns: vec![("c1".into(), "bob".into(), T0, None)],
        units: Units {
            day: day_of(T0),
            held: 100,
            used: 0,
        },
        ..Restored::default()
    };
    let mut c = SessionCore::restore(meta(5), cfg, r, T0);
    drain(&mut c);
    let mut storage = Stored(HashMap::from([(("bob".into(), "old".into()), 7)]), 0);
    c.on_text(
        "c1",
        r#"{"type":"point","id":"old","kind":"k"}"#,
        T0,
        &mut storage,
    );
    let got = deliver(&drain(&mut c), &["c1"]);
    assert_eq!(
        got["c1"],
        vec![json(r#"{"type":"ack","id":"old","seq":7}"#)]
    );
    c.on_text(
        "c1",
        r#"{"type":"point","id":"old","kind":"k"}"#,
        T0,
        &mut storage,
    );
    drain(&mut c);
    assert_eq!(storage.1, 1, "a second repeat is answered from the cache");
    c.on_text(
        "c1",
        r#"{"type":"point","id":"new","kind":"k"}"#,
        T0,
        &mut storage,
    );
    assert_eq!(stored_points(&drain(&mut c))[0].seq, 501);
}

#[test]
fn a_failed_write_leaves_no_trace() {
    let mut c = core();
    c.join("c1", "owner", T0);
    c.join("c2", "bob", T0);
    send_point(
        &mut c,
        "c1",
        r#"{"type":"point","kind":"hr","value":1}"#,
        T0,
    )
    .unwrap();
    let units = c.units();
    let stats = c.view().summary.stats;
    c.on_text(
        "c1",
        r#"{"type":"point","id":"a","kind":"hr","value":9}"#,
        T0,
        &mut NoIds,
    );
    let mut frames = Vec::new();
    while let Some(d) = c.poll() {
        if let Decision::Store(_) = d {
            c.stored(false, T0);
        } else {
            frames.push(d);
        }
    }
    let got = deliver(&frames, &["c1", "c2"]);
    assert_eq!(got["c1"][0]["code"], "unavailable");
    assert_eq!(got["c1"][0]["ref"], "a");
    assert!(!got.contains_key("c2"), "nothing broadcast");
    assert_eq!(c.last_seq(), 1);
    assert_eq!(c.units(), units);
    assert_eq!(c.view().summary.stats, stats);
    // The id is free again and no gap appears.
    let again = send_point(&mut c, "c1", r#"{"type":"point","id":"a","kind":"k"}"#, T0).unwrap();
    assert_eq!(again.seq, 2);
    // An HTTP batch is one write: all or nothing.
    let batch = vec![
        NewPoint {
            id: Some("h1".into()),
            ..NewPoint::new("k")
        },
        NewPoint {
            id: Some("h2".into()),
            value: Some(3.0),
            ..NewPoint::new("hr")
        },
    ];
    let id = c.append("bob", batch.clone(), T0, &mut NoIds).unwrap();
    let Some(Decision::Store(w)) = c.poll() else {
        panic!("one write");
    };
    assert_eq!(w.points.len(), 2);
    c.stored(false, T0);
    let e = appended(&drain(&mut c), id).expect("answered").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Internal, "answered only once stored");
    assert_eq!(c.last_seq(), 2);
    assert_eq!(
        http(&mut c, "bob", batch, T0),
        Ok(vec![3, 4]),
        "same seqs on the retry"
    );
}

#[test]
fn a_repeat_within_one_batch_gets_the_first_seq() {
    let mut c = core();
    let p = || NewPoint {
        id: Some("d".into()),
        ..NewPoint::new("k")
    };
    let (answer, rest) = http_with(&mut c, "bob", vec![p(), p(), NewPoint::new("k")], T0);
    assert_eq!(answer, Ok(vec![1, 1, 2]));
    assert_eq!(stored_points(&rest).len(), 2);
}

#[test]
fn points_too_far_ahead_are_validation_failed() {
    let mut c = core();
    c.join("c1", "owner", T0);
    drain(&mut c);
    let ahead = T0 + MAX_TS_AHEAD_MS + 1;
    c.on_text(
        "c1",
        &format!(r#"{{"type":"point","id":"f","kind":"k","ts":{ahead}}}"#),
        T0,
        &mut NoIds,
    );
    let got = deliver(&drain(&mut c), &["c1"]);
    assert_eq!(got["c1"][0]["code"], "validation_failed");
    assert_eq!(got["c1"][0]["ref"], "f");
    let e = http(
        &mut c,
        "bob",
        vec![NewPoint {
            ts: Some(ahead),
            ..NewPoint::new("k")
        }],
        T0,
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ValidationFailed);
    let ok = NewPoint {
        ts: Some(T0 + MAX_TS_AHEAD_MS),
        ..NewPoint::new("k")
    };
    assert_eq!(http(&mut c, "bob", vec![ok], T0), Ok(vec![1]));
    let old = NewPoint {
        ts: Some(0),
        ..NewPoint::new("k")
    };
    assert_eq!(
        http(&mut c, "bob", vec![old], T0),
        Ok(vec![2]),
        "old times are fine"
    );
}

#[test]
fn the_http_batch_reserves_what_it_needs_or_is_refused_until_tomorrow() {
    let mut c = created(meta(5), Config::default());
    drain(&mut c);
    let batch: Vec<NewPoint> = (0..300).map(|_| NewPoint::new("k")).collect();
    let id = c.append("bob", batch.clone(), T0, &mut NoIds).unwrap();
    assert_eq!(drain(&mut c), vec![reserve(300)]);
    c.granted(120, day_of(T0), T0, &mut NoIds);
    let e = appended(&drain(&mut c), id).expect("refused").unwrap_err();
    assert_eq!(e.code(), ErrorCode::QuotaExceeded);
    assert_eq!(e.retry_after_ms(), Some((day_of(T0) + DAY - T0) as u64));
    assert_eq!(c.units().held, 120, "kept for later points");
    // A batch the units in hand cover goes at once.
    let small: Vec<NewPoint> = (0..100).map(|_| NewPoint::new("k")).collect();
    let seqs = http(&mut c, "bob", small, T0).unwrap();
    assert_eq!((seqs[0], seqs[99]), (1, 100));
    // A full grant that still falls short (the units went meanwhile) is
    // asked again; the quota unreachable is `unavailable`.
    let id = c.append("bob", batch.clone(), T0, &mut NoIds).unwrap();
    assert_eq!(drain(&mut c), vec![reserve(280)]);
    c.granted(280, day_of(T0), T0, &mut NoIds);
    let a = drain(&mut c);
    let seqs = appended(&a, id).expect("numbered").unwrap();
    assert_eq!((seqs[0], seqs[299]), (101, 400));
    let id = c.append("bob", batch, T0, &mut NoIds).unwrap();
    assert!(drain(&mut c)
        .iter()
        .any(|d| matches!(d, Decision::Reserve { .. })));
    c.reserve_failed(T0);
    let e = appended(&drain(&mut c), id).expect("refused").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    // A batch waiting when the session ends is refused as ended.
    let id = c
        .append("bob", vec![NewPoint::new("k"); 200], T0, &mut NoIds)
        .unwrap();
    drain(&mut c);
    c.end("owner", T0).unwrap();
    assert_eq!(appended(&drain(&mut c), id), Some(Err(SessionError::Ended)));
    let e = c
        .append("bob", vec![NewPoint::new("k")], T0, &mut NoIds)
        .unwrap_err();
    assert_eq!(
        e,
        SessionError::Ended,
        "no reservation for an ended session"
    );
}

#[test]
fn stats_follow_what_was_stored() {
    let mut c = core();
    c.join("c1", "owner", T0);
    for (v, kind) in [(70.0, "hr"), (80.0, "hr"), (1.5, "speed"), (60.0, "hr")] {
        send_point(
            &mut c,
            "c1",
            &format!(r#"{{"type":"point","kind":"{kind}","value":{v}}}"#),
            T0,
        );
    }
    send_point(&mut c, "c1", r#"{"type":"point","kind":"hr"}"#, T0);
    let s = c.view().summary.stats;
    assert_eq!(
        s["hr"],
        KindStats {
            count: 3,
            sum: 210.0,
            min: 60.0,
            max: 80.0,
            last: 60.0
        }
    );
    assert_eq!(s["speed"].count, 1);
    c.on_text(
        "c1",
        r#"{"type":"point","kind":"hr","value":100}"#,
        T0,
        &mut NoIds,
    );
    let Some(Decision::Store(w)) = c.poll() else {
        panic!("a write");
    };
    assert_eq!(w.points.len(), 1);
    assert_eq!(c.view().summary.stats["hr"].max, 100.0);
    c.stored(true, T0);
    // Restored from storage, not recomputed.
    let r = Restored {
        last_seq: 6,
        stats: c.view().summary.stats,
        ..Restored::default()
    };
    let c2 = SessionCore::restore(meta(5), Config::default(), r, T0);
    assert_eq!(c2.view().summary.stats["hr"].count, 4);
}

#[test]
fn kinds_beyond_max_kinds_are_validation_failed_and_a_batch_holding_one_is_refused_whole() {
    let cfg = Config {
        max_kinds: 3,
        ..Config::default()
    };
    let mut c = funded(created(meta(5), cfg));
    c.join("c1", "owner", T0);
    drain(&mut c);
    let valued = |kind: &str| NewPoint {
        value: Some(1.0),
        ..NewPoint::new(kind)
    };
    assert_eq!(
        http(
            &mut c,
            "bob",
            vec![valued("a"), valued("b"), valued("a")],
            T0
        ),
        Ok(vec![1, 2, 3])
    );
    // A batch of one known kind and two new ones: refused whole.
    let e = http(
        &mut c,
        "bob",
        vec![valued("a"), valued("c"), valued("d")],
        T0,
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ValidationFailed);
    assert_eq!(c.view().summary.last_seq, 3, "nothing of it stored");
    // Points without a value hold no kind; known kinds go on.
    assert_eq!(
        http(&mut c, "bob", vec![NewPoint::new("z"), valued("b")], T0),
        Ok(vec![4, 5])
    );
    assert_eq!(
        send_point(&mut c, "c1", r#"{"type":"point","kind":"c","value":2}"#, T0).map(|p| p.seq),
        Some(6)
    );
    c.on_text(
        "c1",
        r#"{"type":"point","id":"x","kind":"d","value":2}"#,
        T0,
        &mut NoIds,
    );
    let got = deliver(&drain(&mut c), &["c1"]);
    assert_eq!(got["c1"][0]["code"], "validation_failed");
    assert_eq!(got["c1"][0]["ref"], "x");
    assert_eq!(c.view().summary.stats.len(), 3);
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
        c.on_text("c1", text, T0, &mut NoIds);
        let got = deliver(&drain(&mut c), &["c1"]);
        assert_eq!(got["c1"][0]["type"], "error", "{text}");
        assert_eq!(got["c1"][0]["code"], code, "{text}");
    }
    assert!(c.has_conn("c1"));
    c.on_text(
        "c1",
        r#"{"type":"point","id":"r1","kind":""}"#,
        T0,
        &mut NoIds,
    );
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
    c.on_text("c1", &big, T0, &mut NoIds);
    let a = drain(&mut c);
    assert!(a.contains(&Decision::Close {
        conn: "c1".into(),
        code: 1009,
        reason: "frame too large"
    }));
    assert!(!c.has_conn("c1"));
    assert_eq!(deliver(&a, &["c2"])["c2"][0]["type"], "left");
}

#[test]
fn ping_pong_and_resume_replays_one_page_at_a_time() {
    let cfg = Config {
        replay_page: 2,
        ..Config::default()
    };
    let mut c = funded(created(meta(5), cfg));
    c.join("c1", "owner", T0);
    for _ in 0..5 {
        send_point(&mut c, "c1", r#"{"type":"point","kind":"k"}"#, T0);
    }
    drain(&mut c);
    c.on_text("c1", r#"{"type":"ping"}"#, T0, &mut NoIds);
    assert_eq!(
        deliver(&drain(&mut c), &["c1"])["c1"],
        vec![json(r#"{"type":"pong"}"#)]
    );
    let replay = |c: &mut SessionCore, after: u64| {
        c.on_text(
            "c1",
            &format!(r#"{{"type":"resume","afterSeq":{after}}}"#),
            T0,
            &mut NoIds,
        );
        match drain(c).pop() {
            Some(Decision::Replay {
                after,
                through,
                then,
                ..
            }) => (after, through, json(&then)),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        replay(&mut c, 0),
        (
            0,
            2,
            json(r#"{"type":"resumed","lastSeq":5,"throughSeq":2,"more":true}"#)
        )
    );
    assert_eq!(
        replay(&mut c, 4),
        (
            4,
            5,
            json(r#"{"type":"resumed","lastSeq":5,"throughSeq":5,"more":false}"#)
        )
    );
    assert_eq!(
        replay(&mut c, 9),
        (
            9,
            5,
            json(r#"{"type":"resumed","lastSeq":5,"throughSeq":9,"more":false}"#)
        )
    );
    let (_, through, then) = replay(&mut c, u64::MAX);
    assert_eq!(through, 5, "nothing to read beyond the last seq");
    assert_eq!(then["throughSeq"], json(&u64::MAX.to_string()));
}

#[test]
fn flooding_gets_rate_limited_then_closed_1008_and_others_are_not_slowed() {
    let cfg = Config {
        flood_per_sec: 10,
        flood_burst: 5,
        flood_close_after: 3,
        ..Config::default()
    };
    let mut c = funded(created(meta(5), cfg));
    c.join("flood", "owner", T0);
    c.join("calm", "bob", T0);
    drain(&mut c);
    for _ in 0..5 {
        c.on_text("flood", r#"{"type":"ping"}"#, T0, &mut NoIds);
    }
    assert_eq!(
        deliver(&drain(&mut c), &["flood", "calm"])["flood"].len(),
        5
    );
    c.on_text("flood", r#"{"type":"ping"}"#, T0, &mut NoIds);
    let got = deliver(&drain(&mut c), &["flood", "calm"]);
    assert_eq!(got["flood"][0]["code"], "rate_limited");
    assert_eq!(
        got["flood"][0]["retryAfterMs"], 100,
        "one emission interval at 10/s"
    );
    // The calm participant is served at once.
    assert!(send_point(&mut c, "calm", r#"{"type":"point","kind":"k"}"#, T0).is_some());
    // After the emission interval the flooder may send again.
    c.on_text("flood", r#"{"type":"ping"}"#, T0 + 100, &mut NoIds);
    let got = deliver(&drain(&mut c), &["flood"]);
    assert_eq!(got["flood"].last().unwrap()["type"], "pong");
    // Refusals count up while they come less than a second apart: the one
    // at T0 and two more make three, the limit.
    for _ in 0..2 {
        c.on_text("flood", r#"{"type":"ping"}"#, T0 + 100, &mut NoIds);
    }
    assert!(c.has_conn("flood"));
    c.on_text("flood", r#"{"type":"ping"}"#, T0 + 100, &mut NoIds);
    let a = drain(&mut c);
    assert!(a.contains(&Decision::Close {
        conn: "flood".into(),
        code: 1008,
        reason: "flooding"
    }));
    assert!(!c.has_conn("flood"));
}

#[test]
fn the_session_wide_limit_caps_all_connections_together() {
    let cfg = Config {
        flood_per_sec: 100,
        flood_burst: 10,
        session_frames_per_sec: 10,
        session_frames_burst: 12,
        flood_close_after: 2,
        ..Config::default()
    };
    let mut c = funded(created(meta(5), cfg));
    for conn in ["a", "b", "c"] {
        c.join(conn, "bob", T0);
    }
    drain(&mut c);
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..6 {
        for conn in ["a", "b", "c"] {
            c.on_text(conn, r#"{"type":"ping"}"#, T0, &mut NoIds);
            for f in deliver(&drain(&mut c), &[conn])
                .remove(conn)
                .unwrap_or_default()
            {
                match f["type"].as_str() {
                    Some("pong") => pongs += 1,
                    _ => {
                        assert_eq!(f["code"], "rate_limited");
                        limited += 1;
                    }
                }
            }
        }
    }
    assert_eq!((pongs, limited), (12, 6), "the session's burst, shared");
    assert!(
        ["a", "b", "c"].iter().all(|k| c.has_conn(k)),
        "the session-wide limit closes no one"
    );
}

#[test]
fn a_second_without_refusals_forgives_earlier_ones() {
    let cfg = Config {
        flood_per_sec: 10,
        flood_burst: 1,
        flood_close_after: 2,
        ..Config::default()
    };
    let mut c = funded(created(meta(5), cfg));
    c.join("x", "owner", T0);
    let mut t = T0;
    for _ in 0..5 {
        for _ in 0..3 {
            c.on_text("x", r#"{"type":"ping"}"#, t, &mut NoIds);
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
    // The new session row goes to D1 at once (the list reads D1).
    let mut c = SessionCore::create(meta(5), Config::default(), T0);
    let j = flush_job(&drain(&mut c)).expect("the row at creation");
    assert_eq!((j.batch.from, j.batch.to), (1, 0), "row only");
    c.flush_done(j.batch, true, T0 + 5);
    assert_eq!(c.next_flush_at(), None);
    fund(&mut c, 1_000_000, day_of(T0), T0);
    drain(&mut c);

    c.join("c1", "owner", T0);
    let t = T0 + 10_000;
    send_point(&mut c, "c1", r#"{"type":"point","kind":"k"}"#, t);
    assert_eq!(
        c.next_flush_at(),
        Some(t + 2_000),
        "interval after the first pending point"
    );
    let mut full = None;
    for i in 1..10 {
        c.on_text("c1", r#"{"type":"point","kind":"k"}"#, t + i, &mut NoIds);
        full = full.or(flush_job(&drain(&mut c)));
    }
    let j = full.expect("a full batch goes at once");
    assert_eq!((j.batch.from, j.batch.to, j.point_count), (1, 10, 10));
    c.tick(t + 9);
    assert_eq!(
        flush_job(&drain(&mut c)),
        None,
        "one flush in flight at a time"
    );
    c.flush_done(j.batch, true, t + 20);
    assert_eq!(c.flushed_seq(), 10);
    assert_eq!(c.next_flush_at(), None);
}

#[test]
fn failed_flush_keeps_points_pending_and_backs_off() {
    let mut c = core();
    c.join("c1", "owner", T0);
    let mut job = None;
    for _ in 0..10 {
        c.on_text("c1", r#"{"type":"point","kind":"k"}"#, T0, &mut NoIds);
        job = job.or(flush_job(&drain(&mut c)));
    }
    let mut now = T0;
    let mut waits = Vec::new();
    for _ in 0..8 {
        let j = job.take().expect("due");
        c.flush_done(j.batch, false, now);
        drain(&mut c);
        let next = c.next_flush_at().unwrap();
        waits.push(next - now);
        now = next;
        c.tick(now);
        job = flush_job(&drain(&mut c));
    }
    assert_eq!(
        waits,
        vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
    );
    assert_eq!(c.flushed_seq(), 0);
    let j = job.unwrap();
    assert_eq!(
        (j.batch.from, j.batch.to),
        (1, 10),
        "the same points, again"
    );
    c.flush_done(j.batch, true, now);
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
    assert_eq!(c.end("bob", T0).unwrap_err().code(), ErrorCode::Forbidden);
    c.on_text("c1", r#"{"type":"end"}"#, T0 + 50, &mut NoIds);
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
        assert!(a.contains(&Decision::Close {
            conn: conn.into(),
            code: 1000,
            reason: "session ended"
        }));
    }
    assert!(a.iter().any(
        |d| matches!(d, Decision::SaveMeta { meta, version: 2 } if meta.status == SessionStatus::Ended)
    ));
    assert!(flush_job(&a).is_some(), "flush at once");
    assert!(
        a.iter().any(|d| matches!(d, Decision::Settle { .. })),
        "units settled"
    );
    assert_eq!(c.view().summary.status, SessionStatus::Ended);
    let e = http(&mut c, "owner", vec![NewPoint::new("k")], T0).unwrap_err();
    assert_eq!(e, SessionError::Ended);
    assert_eq!(c.end("owner", T0 + 60), Ok(()), "ending twice is fine");
}

#[test]
fn http_points_are_broadcast_to_every_socket_and_members_only() {
    let mut c = core();
    c.join("c1", "bob", T0);
    drain(&mut c);
    let e = http(&mut c, "mallory", vec![NewPoint::new("k")], T0).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden);
    let (answer, rest) = http_with(&mut c, "carol", vec![NewPoint::new("k")], T0);
    assert_eq!(answer, Ok(vec![1]));
    let got = deliver(&rest, &["c1"]);
    assert_eq!(got["c1"][0]["type"], "point");
    assert_eq!(got["c1"][0]["userId"], "carol");
}

#[test]
fn restore_continues_from_storage() {
    let r = Restored {
        last_seq: 7,
        flushed_seq: 5,
        conns: vec![("c1".into(), "bob".into(), T0, None)],
        meta_version: 1,
        flushed_meta_version: 1,
        units: Units {
            day: day_of(T0),
            held: 1_000,
            used: 0,
        },
        stats: [("hr".to_owned(), KindStats::of(60.0))].into(),
        stats_through: 5,
        stats_tail: vec![("hr".into(), 80.0), ("rr".into(), 12.0)],
        ..Restored::default()
    };
    let mut c = SessionCore::restore(meta(5), Config::default(), r, T0 + 100);
    // The checkpoint and the points stored after it.
    let stats = c.view().summary.stats;
    assert_eq!(
        (stats["hr"].count, stats["hr"].sum, stats["hr"].last),
        (2, 140.0, 80.0)
    );
    assert_eq!(stats["rr"].count, 1);
    assert!(
        drain(&mut c).contains(&Decision::WakeAt(T0 + 2_100)),
        "pending points get flushed"
    );
    assert!(c.has_conn("c1"));
    let p = send_point(&mut c, "c1", r#"{"type":"point","kind":"k"}"#, T0 + 100).unwrap();
    assert_eq!(p.seq, 8);
    c.tick(T0 + 2_100);
    let j = flush_job(&drain(&mut c)).unwrap();
    assert_eq!((j.batch.from, j.batch.to), (6, 8));
}

#[test]
fn stats_are_checkpointed_every_so_many_points_and_a_failed_one_is_written_again() {
    let cfg = Config {
        stats_every: 3,
        ..Config::default()
    };
    let mut c = funded(created(meta(5), cfg));
    c.join("c1", "owner", T0);
    drain(&mut c);
    // Stores one point; the checkpoint that came with it, if one did.
    let point = |c: &mut SessionCore, kind: &str, i: Millis| {
        let text = format!(r#"{{"type":"point","kind":"{kind}","value":{i}}}"#);
        c.on_text("c1", &text, T0 + i, &mut NoIds);
        drain(c).into_iter().find_map(|d| match d {
            Decision::SaveStats(cp) => Some(cp),
            _ => None,
        })
    };
    assert_eq!(point(&mut c, "a", 1), None);
    assert_eq!(point(&mut c, "b", 2), None, "not yet");
    let cp = point(&mut c, "a", 3).expect("after 3 points");
    assert_eq!(cp.through_seq, 3);
    let kinds: Vec<_> = cp
        .kinds
        .iter()
        .map(|(k, s)| (k.as_str(), s.count))
        .collect();
    assert_eq!(kinds, vec![("a", 2), ("b", 1)]);
    // Not stored: its kinds go with the next one, whose mark is later.
    c.stats_saved(false);
    let cp = point(&mut c, "c", 4).expect("the mark did not move");
    assert_eq!(cp.through_seq, 4);
    let kinds: Vec<_> = cp.kinds.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, vec!["a", "b", "c"]);
    c.stats_saved(true);
    for i in 5..7 {
        assert_eq!(point(&mut c, "c", i), None, "3 points after the new mark");
    }
    let cp = point(&mut c, "c", 7).expect("3 after 4");
    assert_eq!(
        (cp.through_seq, cp.kinds.len(), cp.kinds[0].1.count),
        (7, 1, 4)
    );
}

#[test]
fn backoff_is_capped() {
    assert_eq!(retry_backoff_ms(1), 1_000);
    assert_eq!(retry_backoff_ms(3), 4_000);
    assert_eq!(retry_backoff_ms(100), 60_000);
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

// rusqlite, which runs the object's statements, is a native-only
// dev-dependency.
mod members;
#[cfg(not(target_arch = "wasm32"))]
mod world;

#[test]
fn a_new_record_starts_at_its_v7_ids_time() {
    let create = CreateSession {
        title: Some("run".into()),
        members: Some(vec!["bob".into()]),
        viewers: None,
        metadata: None,
    };
    let id = crate::testing::new_session_id(T0 - 5_000);
    let m = Meta::new(id.clone(), ("ann", "pro", 25), create.clone(), T0);
    assert_eq!((m.started_at, m.id.as_str()), (T0 - 5_000, id.as_str()));
    assert_eq!((m.owner_id.as_str(), m.owner_plan.as_str()), ("ann", "pro"));
    assert_eq!(
        (m.members.len(), m.max_participants, m.ended_at),
        (1, 25, None)
    );
    assert!(m.metadata.is_empty() && m.status == SessionStatus::Active);
    // A v4 id encodes no time: the record starts now.
    let v4 = "0190a6b2-7c3d-4e4f-8a5b-6c7d8e9f0a1b".to_owned();
    assert_eq!(Meta::new(v4, ("ann", "pro", 25), create, T0).started_at, T0);
}

#[test]
fn a_flush_never_starts_while_numbered_points_wait_to_be_stored() {
    let mut c = created(meta(5), Config::default());
    fund(&mut c, 20, day_of(T0), T0);
    c.join("c1", "owner", T0);
    drain(&mut c);
    let point = |c: &mut SessionCore, kind: &str| {
        let text = format!(r#"{{"type":"point","kind":"{kind}","value":1}}"#);
        c.on_text("c1", &text, T0, &mut NoIds);
        drain(c)
    };
    let mut first = None;
    for _ in 0..20 {
        first = first.or(flush_job(&point(&mut c, "a")));
    }
    let first = first.expect("a full batch goes at once");
    assert_eq!((first.batch.to, c.last_seq()), (10, 20));
    // The 21st point waits for units; once they are granted it is numbered
    // and its write queued, not stored yet, when the first flush lands with
    // a full batch pending.
    point(&mut c, "b");
    c.granted(200, day_of(T0), T0, &mut NoIds);
    c.flush_done(first.batch, true, T0);
    let ds: Vec<Decision> = std::iter::from_fn(|| c.poll()).collect();
    assert!(ds.iter().any(|d| matches!(d, Decision::Store(_))), "{ds:?}");
    assert_eq!(flush_job(&ds), None, "no flush while a write waits");
    c.stored(false, T0);
    let next = flush_job(&drain(&mut c)).expect("the stored points go now");
    assert_eq!((next.batch.from, next.batch.to), (11, 20));
    let kinds: Vec<&str> = next.stats.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["a"], "no figure of the failed write reaches D1");
}

fn deliveries(ds: &[Decision]) -> Vec<(EntryId, Outgoing)> {
    ds.iter()
        .filter_map(|d| match d {
            Decision::Deliver { id, item } => Some((*id, item.clone())),
            _ => None,
        })
        .collect()
}

fn presence_deliveries(ds: &[Decision]) -> Vec<(EntryId, Outgoing)> {
    let mut out = deliveries(ds);
    out.retain(|(id, _)| matches!(id, EntryId::Presence(_)));
    out
}

#[test]
fn outbox_entries_go_one_at_a_time_and_a_failed_one_is_retried_after_a_pause() {
    let mut c = core();
    c.join("c1", "bob", T0);
    c.leave("c1", T0);
    let a = drain(&mut c);
    let persisted: Vec<u64> = a
        .iter()
        .filter_map(|d| match d {
            Decision::Presence { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(persisted, vec![1, 2], "both persisted, with their ids");
    let out = presence_deliveries(&a);
    assert_eq!(out.len(), 1, "one entry out at a time: {out:?}");
    let (first, item) = out[0].clone();
    assert_eq!(first, EntryId::Presence(1));
    assert!(matches!(
        item,
        Outgoing::Presence(PresenceNote { online: true, .. })
    ));
    c.undeliverable(first, T0 + 10);
    let a = drain(&mut c);
    assert!(presence_deliveries(&a).is_empty(), "paused");
    let retry = T0 + 10 + crate::outbox::RETRY_MS;
    assert!(a.contains(&Decision::WakeAt(retry)), "{a:?}");
    assert_eq!(c.next_wake(), Some(retry));
    c.tick(retry);
    let again = presence_deliveries(&drain(&mut c));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, first, "the same entry, under the same id");
    c.delivered(first, retry);
    let next = presence_deliveries(&drain(&mut c));
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].0, EntryId::Presence(2));
    c.delivered(EntryId::Presence(2), retry);
    assert_eq!(c.outbox_len().0, 0);
    assert!(presence_deliveries(&drain(&mut c)).is_empty());
}

#[test]
fn settlements_have_their_own_outbox_and_a_wake_up_delivers_what_storage_kept() {
    let mut c = core();
    c.end("owner", T0).unwrap();
    let a = drain(&mut c);
    let settle = a
        .iter()
        .find_map(|d| match d {
            Decision::Settle { id, .. } => Some(*id),
            _ => None,
        })
        .expect("units go back at the end");
    let out = deliveries(&a);
    assert!(out.iter().any(|(id, _)| *id == EntryId::Settle(settle)));
    // Evicted before the answer: the wake-up delivers the stored entry
    // again, and new entries get new ids.
    let note = SettleNote {
        owner: "owner".into(),
        plan: "pro".into(),
        settlement: Settlement {
            day: day_of(T0),
            used: 0,
            returned: 5,
        },
    };
    let r = Restored {
        presence_outbox: vec![(
            4,
            PresenceNote {
                user: "bob".into(),
                conn: "c9".into(),
                online: false,
            },
        )],
        settle_outbox: vec![(settle, note.clone())],
        outbox_last_ids: (6, settle),
        ..Restored::default()
    };
    let mut c = SessionCore::restore(meta(5), Config::default(), r, T0);
    let out = deliveries(&drain(&mut c));
    assert!(out.contains(&(EntryId::Settle(settle), Outgoing::Settle(note))));
    assert!(out.iter().any(|(id, _)| *id == EntryId::Presence(4)));
    c.join("c1", "bob", T0);
    let ids: Vec<u64> = drain(&mut c)
        .iter()
        .filter_map(|d| match d {
            Decision::Presence { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![7], "above every id given before");
}

#[test]
fn an_ended_session_retires_only_once_its_outboxes_are_delivered() {
    let cfg = Config {
        ended_retention_ms: 1_000,
        ..Config::default()
    };
    let mut c = funded(created(meta(5), cfg));
    c.join("c1", "bob", T0);
    c.end("owner", T0).unwrap();
    let a = drain(&mut c);
    if let Some(job) = flush_job(&a) {
        c.flush_done(job.batch, true, T0);
    }
    let mut out = deliveries(&a);
    out.extend(deliveries(&drain(&mut c)));
    let retire = T0 + 1_000;
    c.tick(retire);
    let a = drain(&mut c);
    assert!(
        !a.contains(&Decision::Retire),
        "entries still to deliver: {a:?}"
    );
    assert_eq!(c.retire_at(), None);
    // Every entry delivered, in turn: then it is due.
    let mut guard = 0;
    while let Some((id, _)) = out.pop() {
        c.delivered(id, retire);
        out.extend(deliveries(&drain(&mut c)));
        guard += 1;
        assert!(guard < 10);
    }
    assert_eq!(c.outbox_len(), (0, 0));
    assert_eq!(c.retire_at(), Some(retire));
    c.tick(retire);
    assert!(drain(&mut c).contains(&Decision::Retire));
    // A failed deletion is tried again from the alarm.
    c.retire_failed(retire);
    assert_eq!(
        drain(&mut c),
        vec![Decision::WakeAt(retire + crate::outbox::RETRY_MS)]
    );
    c.tick(retire + crate::outbox::RETRY_MS);
    assert!(drain(&mut c).contains(&Decision::Retire));
}

#[test]
fn the_owners_plan_comes_from_the_owners_token_or_is_asked() {
    let plans = crate::config::Plans::default();
    let mut c = core();
    c.want_plan("owner", "free", &plans);
    let a = drain(&mut c);
    assert!(
        !a.iter().any(|d| matches!(d, Decision::AskPlan { .. })),
        "the owner's token tells it"
    );
    assert_eq!(c.meta().owner_plan, "free");
    assert_eq!(
        c.meta().max_participants,
        plans.get("free").unwrap().participants_per_session
    );
    c.want_plan("bob", "enterprise", &plans);
    assert_eq!(
        drain(&mut c),
        vec![Decision::AskPlan {
            owner: "owner".into()
        }],
        "a member's own plan says nothing of the owner's"
    );
    c.plan_known(Some("pro"), &plans);
    assert_eq!(c.meta().owner_plan, "pro");
    assert_eq!(c.meta().max_participants, 25);
    assert!(drain(&mut c)
        .iter()
        .any(|d| matches!(d, Decision::SaveMeta { .. })));
    // A plan PLANS does not know, or no answer: the stored plan stands.
    c.plan_known(Some("gold"), &plans);
    assert_eq!(c.meta().owner_plan, "pro");
    c.plan_known(None, &plans);
    assert_eq!(c.meta().owner_plan, "pro");
    assert!(drain(&mut c).is_empty(), "nothing changed");
    // An HTTP call by the owner takes the owner's token's plan too.
    assert!(c.caller_plan("owner", "enterprise", &plans));
    assert!(!c.caller_plan("bob", "free", &plans));
    assert_eq!(c.meta().owner_plan, "enterprise");
}

#[test]
fn an_http_batch_short_of_units_waits_behind_a_socket_reservation() {
    let mut c = created(meta(5), Config::default());
    c.join("c1", "owner", T0);
    drain(&mut c);
    c.on_text(
        "c1",
        r#"{"type":"point","id":"s","kind":"k"}"#,
        T0,
        &mut NoIds,
    );
    assert_eq!(drain(&mut c), vec![reserve(200)]);
    let batch = c
        .append("bob", vec![NewPoint::new("k"); 3], T0, &mut NoIds)
        .unwrap();
    assert!(
        drain(&mut c).is_empty(),
        "no second reservation while one is out"
    );
    c.granted(200, day_of(T0), T0, &mut NoIds);
    let a = drain(&mut c);
    assert_eq!(
        stored_points(&a).len(),
        4,
        "the socket point, then the batch"
    );
    assert_eq!(appended(&a, batch), Some(Ok(vec![2, 3, 4])));
}

#[test]
fn retired_sessions_keep_the_live_rules() {
    let members = vec!["bob".to_owned()];
    let read = RetiredCall::Read {
        after_seq: 3,
        limit: 10,
    };
    assert_eq!(
        retired_call("owner", (&members, &[]), "bob", read),
        Ok(RetiredAnswer::Points {
            after_seq: 3,
            limit: 10
        })
    );
    assert_eq!(
        retired_call("owner", (&members, &[]), "bob", RetiredCall::Get),
        Ok(RetiredAnswer::Session)
    );
    assert_eq!(
        retired_call("owner", (&members, &[]), "owner", RetiredCall::End),
        Ok(RetiredAnswer::Session)
    );
    let e = retired_call("owner", (&members, &[]), "bob", RetiredCall::End).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden);
    let e = retired_call("owner", (&members, &[]), "mallory", RetiredCall::Get).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden);
    assert_eq!(
        retired_call("owner", (&members, &[]), "owner", RetiredCall::Change),
        Err(SessionError::Ended)
    );
    // The same membership rule as the live record's.
    let mut live = meta(5);
    live.members = members;
    assert_eq!(live.is_member("bob"), live.is_member("bob"));
    assert!(!live.is_member("mallory"));
}
