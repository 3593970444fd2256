use rusqlite::Connection;
use serde_json::json;

use super::*;
use crate::data::partition::testdb::{self, Rng};
use crate::data::partition::{days_from_civil, LIST_PARTITIONS};
use crate::testing::new_session_id;
use crate::time::{month_suffix, rfc3339};

fn ms(y: i64, m: u32, d: u32) -> Millis {
    days_from_civil(y, m, d) * DAY_MS
}

fn existing(db: &Connection) -> Existing {
    Existing::from_rows(&testdb::run(db, &Statement::new(LIST_PARTITIONS, vec![])))
        .expect("partitions")
}

fn apply(db: &Connection, writes: Vec<PartitionWrite>) {
    let mut stmts = Vec::new();
    for w in writes {
        stmts.extend(w.ensure.statements);
        stmts.extend(w.statements);
    }
    testdb::batch(db, &stmts);
}

struct Sess {
    id: String,
    owner: String,
    members: Vec<String>,
    started: Millis,
    status: SessionStatus,
    count: u64,
}

impl Sess {
    fn new(started: Millis, owner: &str, members: &[&str]) -> Sess {
        Sess {
            id: new_session_id(started),
            owner: owner.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            started,
            status: SessionStatus::Active,
            count: 0,
        }
    }

    fn record(&self) -> SessionSummary {
        let metadata = json!({"n": self.count})
            .as_object()
            .cloned()
            .unwrap_or_default();
        SessionSummary {
            id: self.id.clone(),
            owner_id: self.owner.clone(),
            title: Some("t".into()),
            members: self.members.clone(),
            viewers: vec![],
            metadata,
            status: self.status,
            started_at: rfc3339(self.started),
            ended_at: (self.status == SessionStatus::Ended).then(|| rfc3339(self.started + 1000)),
            point_count: self.count,
            last_seq: self.count,
            stats: BTreeMap::new(),
        }
    }

    fn write(&self, now: Millis) -> PartitionWrite {
        write_session(&self.record(), now).expect("an RFC 3339 start")
    }
}

/// Copies a monthly partition into its yearly tables, as a move in
/// progress has done (both copies exist).
fn copy_to_year(db: &Connection, month: Month, now: Millis) {
    let year = Span::Year(month.year());
    let mut stmts = ensure_sessions(year, now).statements;
    stmts.extend(ensure_points(year, now).statements);
    let ex = existing(db);
    for kind in [TableKind::Sessions, TableKind::Members, TableKind::Points] {
        if ex.contains(kind, Span::Month(month)) {
            stmts.push(Statement::new(
                format!(
                    "INSERT OR IGNORE INTO {} SELECT * FROM {}",
                    kind.table(year),
                    kind.table(Span::Month(month))
                ),
                vec![],
            ));
        }
    }
    testdb::batch(db, &stmts);
}

fn list_all(
    db: &Connection,
    user: &str,
    params: ListParams<'_>,
    now: Millis,
) -> Vec<SessionSummary> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = ListQuery::parse(
            user,
            &ListParams {
                cursor: cursor.as_deref(),
                ..params
            },
            now,
        )
        .expect("valid query");
        let stmts = q.statements(&existing(db));
        let rows: Vec<Value> = testdb::batch(db, &stmts).into_iter().flatten().collect();
        let page = q.answer(rows).expect("rows");
        let limit = params
            .limit
            .map_or(DEFAULT_LIMIT as usize, |l| l.parse().unwrap_or(0));
        assert!(page.sessions.len() <= limit);
        out.extend(page.sessions);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
        assert!(out.len() < 10_000, "paging does not end");
    }
}

#[test]
fn params_are_validated_with_clear_errors() {
    let now = ms(2026, 3, 10);
    let q = ListQuery::parse("u", &ListParams::default(), now).expect("defaults");
    assert_eq!(
        (q.from, q.to, q.limit, q.status),
        (now - 30 * DAY_MS, now, 20, None)
    );
    let parse = |p: ListParams<'_>| ListQuery::parse("u", &p, now);
    let err = parse(ListParams {
        from: Some("yesterday"),
        ..Default::default()
    })
    .expect_err("bad from");
    assert_eq!(
        err.to_string(),
        "`from` must be an RFC 3339 date-time such as 2026-01-31T12:00:00Z, got \"yesterday\""
    );
    assert!(matches!(
        parse(ListParams {
            to: Some("2026-13-01T00:00:00Z"),
            ..Default::default()
        }),
        Err(QueryError::Time { param: "to", .. })
    ));
    assert_eq!(
        parse(ListParams {
            from: Some("2026-03-01T00:00:00+01:00"),
            to: Some("2026-02-28T23:00:00Z"),
            ..Default::default()
        }),
        Err(QueryError::EmptyRange)
    );
    for bad in ["0", "101", "-1", "abc", "", "1.5"] {
        assert_eq!(
            parse(ListParams {
                limit: Some(bad),
                ..Default::default()
            }),
            Err(QueryError::Limit { max: 100 }),
            "{bad}"
        );
    }
    assert_eq!(
        parse(ListParams {
            status: Some("paused"),
            ..Default::default()
        }),
        Err(QueryError::Status)
    );
    let q = parse(ListParams {
        from: Some("2025-01-01T00:00:00Z"),
        status: Some("ended"),
        limit: Some("100"),
        ..Default::default()
    })
    .expect("valid");
    assert_eq!(
        (q.from, q.status, q.limit),
        (ms(2025, 1, 1), Some(SessionStatus::Ended), 100)
    );
}

#[test]
fn cursors_round_trip_and_garbage_is_rejected() {
    let now = ms(2026, 3, 10);
    let q = ListQuery::parse(
        "u",
        &ListParams {
            status: Some("active"),
            limit: Some("1"),
            ..Default::default()
        },
        now,
    )
    .expect("valid");
    let id = new_session_id(now - DAY_MS);
    let row = |id: &str, t: Millis| {
        json!({"started_ms": t, "id": id, "owner_id": "u", "title": null, "members": "[]",
               "metadata": "{}", "status": "active", "started_at": rfc3339(t),
               "ended_at": null, "point_count": 0, "stats": "[]"})
    };
    let page = q
        .answer(vec![
            row(&id, now - DAY_MS),
            row(&new_session_id(now - 2 * DAY_MS), now - 2 * DAY_MS),
        ])
        .expect("rows");
    assert_eq!(page.sessions.len(), 1);
    let cursor = page.next_cursor.expect("more remain");
    let body = decode_cursor(&cursor).expect("own cursor");
    assert_eq!(
        (body.t, body.i.as_str(), body.f, body.u),
        (now - DAY_MS, id.as_str(), q.from, q.to)
    );
    // Later pages keep the window, even though the clock moved.
    let next = ListQuery::parse(
        "u",
        &ListParams {
            cursor: Some(&cursor),
            ..Default::default()
        },
        now + 5 * DAY_MS,
    )
    .expect("cursor alone");
    assert_eq!(
        (next.from, next.to, next.status),
        (q.from, q.to, Some(SessionStatus::Active))
    );
    assert_eq!(next.after, Some((now - DAY_MS, id.clone())));
    assert_eq!(
        ListQuery::parse(
            "u",
            &ListParams {
                cursor: Some(&cursor),
                status: Some("ended"),
                ..Default::default()
            },
            now
        ),
        Err(QueryError::CursorMismatch { param: "status" })
    );
    assert_eq!(
        ListQuery::parse(
            "u",
            &ListParams {
                cursor: Some(&cursor),
                to: Some("2030-01-01T00:00:00Z"),
                ..Default::default()
            },
            now
        ),
        Err(QueryError::CursorMismatch { param: "to" })
    );
    // A cursor without status does not fit a query with one.
    let plain = encode_cursor(&CursorBody {
        s: None,
        ..body.clone()
    });
    assert!(ListQuery::parse(
        "u",
        &ListParams {
            cursor: Some(&plain),
            status: Some("active"),
            ..Default::default()
        },
        now
    )
    .is_err());

    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let json_of =
        |b: &CursorBody| String::from_utf8(serde_json::to_vec(b).expect("json")).expect("utf8");
    let mut garbage = vec![
        String::new(),
        "x".into(),
        "!!!!".into(),
        format!("{cursor}="),
        format!("{cursor}A"),
        cursor.replace('e', "f"),
        "A".repeat(600),
        b64("not json"),
        b64("[]"),
        b64("{}"),
        json_of(&body),
        b64(&json_of(&body).replace("\"t\"", "\"x\"")),
        b64(&json_of(&body).replacen('{', "{\"extra\":1,", 1)),
        b64(&format!(" {}", json_of(&body))),
        b64(&format!(
            "[1,{},\"{}\",{},{}]",
            body.t, body.i, body.f, body.u
        )),
    ];
    for bad in [
        CursorBody {
            v: 2,
            ..body.clone()
        },
        CursorBody {
            i: "not-a-uuid".into(),
            ..body.clone()
        },
        CursorBody {
            i: body.i.to_uppercase(),
            ..body.clone()
        },
        CursorBody {
            t: body.u,
            ..body.clone()
        },
        CursorBody {
            t: body.f - 1,
            ..body.clone()
        },
    ] {
        garbage.push(encode_cursor(&bad));
    }
    for g in &garbage {
        assert_eq!(
            ListQuery::parse(
                "u",
                &ListParams {
                    cursor: Some(g),
                    ..Default::default()
                },
                now
            ),
            Err(QueryError::Cursor),
            "{g:?}"
        );
    }
}

#[test]
fn v7_ids_locate_their_month() {
    let t = ms(2025, 11, 30) + 123;
    assert_eq!(v7_time(&new_session_id(t)), Some(t));
    assert_eq!(v7_time("0192cc09-1400-4e5f-8a6b-7c8d9e0f1a2b"), None);
    assert_eq!(v7_time("0192CC09-1400-7E5F-8A6B-7C8D9E0F1A2B"), None);
    assert_eq!(v7_time("nope"), None);
    assert_eq!(find_session("nope", &Existing::default()), None);
}

#[test]
fn session_writes_upsert_without_losing_points_and_members_stay() {
    let db = testdb::open();
    let now = ms(2026, 1, 5);
    let mut s = Sess::new(now, "alice", &["bob", "alice", "bob"]);
    s.count = 5;
    apply(&db, vec![s.write(now)]);
    // A late, older flush cannot lower the count; a newer one ends it.
    s.count = 3;
    apply(&db, vec![s.write(now)]);
    s.status = SessionStatus::Ended;
    s.count = 9;
    apply(&db, vec![s.write(now + 10)]);
    let ex = existing(&db);
    let found = testdb::run(&db, &find_session(&s.id, &ex).expect("partition exists"));
    let got = parse_found_session(&found).expect("row").expect("found");
    assert_eq!(
        (got.point_count, got.last_seq, got.status),
        (9, 9, SessionStatus::Ended)
    );
    assert_eq!(got.members, vec!["bob", "alice", "bob"]);
    assert_eq!(got.started_at, rfc3339(now));
    assert_eq!(got.ended_at, Some(rfc3339(now + 1000)));
    let members = testdb::run(
        &db,
        &Statement::new(
            "SELECT user_id FROM session_members_2026_01 ORDER BY user_id",
            vec![],
        ),
    );
    assert_eq!(
        members,
        vec![json!({"user_id": "alice"}), json!({"user_id": "bob"})]
    );
    let wire = serde_json::to_value(&got).expect("json");
    assert_eq!(wire["title"], json!("t"));
    assert!(wire.get("participants").is_none());
    assert_eq!(wire["metadata"], json!({"n": 9}));
}

#[test]
fn paging_250_sessions_over_14_months_loses_and_repeats_nothing() {
    let db = testdb::open();
    let now = ms(2026, 3, 10);
    let first = ms(2025, 1, 3);
    let mut rng = Rng(0x5e55_1011);
    let users = ["alice", "bob", "carol"];
    let mut all = Vec::new();
    for i in 0..250 {
        // Some sessions share a start millisecond, so ids break ties.
        let started = if i % 10 == 9 {
            all.last().map_or(first, |s: &Sess| s.started)
        } else {
            first + rng.below((now - first - DAY_MS) as u64) as Millis
        };
        let owner = users[rng.below(3) as usize];
        let members: Vec<&str> = users
            .iter()
            .copied()
            .filter(|u| *u != owner && rng.below(2) == 0)
            .collect();
        let mut s = Sess::new(started, owner, &members);
        // Created and flushed while new (monthly), and for half of them a
        // flush at the end, now (the yearly table once 12 months old).
        apply(&db, vec![s.write(started + 1)]);
        if rng.below(2) == 0 {
            s.status = SessionStatus::Ended;
            s.count = 1 + rng.below(50);
            apply(&db, vec![s.write(now)]);
        }
        all.push(s);
    }
    let ex = existing(&db);
    assert!(
        ex.contains(TableKind::Sessions, Span::Year(2025)),
        "some ended in yearly tables"
    );
    assert!(ex.contains(TableKind::Sessions, Span::Month(Month::of(first))));
    // And one month is half moved: every row copied, monthly still there.
    copy_to_year(&db, Month::of(ms(2025, 4, 1)), now);

    let from = rfc3339(ms(2025, 1, 1));
    for user in users {
        for (status, limit) in [(None, "7"), (Some("ended"), "100"), (Some("active"), "1")] {
            let got = list_all(
                &db,
                user,
                ListParams {
                    from: Some(&from),
                    status,
                    limit: Some(limit),
                    ..Default::default()
                },
                now,
            );
            let mut want: Vec<&Sess> = all
                .iter()
                .filter(|s| s.owner == user || s.members.iter().any(|m| m == user))
                .filter(|s| status.is_none_or(|st| s.status.as_str() == st))
                .collect();
            want.sort_by(|a, b| (b.started, &b.id).cmp(&(a.started, &a.id)));
            let got_ids: Vec<&str> = got.iter().map(|s| s.id.as_str()).collect();
            let want_ids: Vec<&str> = want.iter().map(|s| s.id.as_str()).collect();
            assert_eq!(got_ids, want_ids, "{user} {status:?}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(
                    (g.status, g.point_count),
                    (w.status, w.count),
                    "latest copy wins"
                );
                assert_eq!(g.started_at, rfc3339(w.started));
            }
        }
    }
    // A window inside the data: only sessions started in it.
    let (lo, hi) = (ms(2025, 3, 31), ms(2025, 5, 2));
    let got = list_all(
        &db,
        "alice",
        ListParams {
            from: Some(&rfc3339(lo)),
            to: Some(&rfc3339(hi)),
            limit: Some("3"),
            ..Default::default()
        },
        now,
    );
    let want = all
        .iter()
        .filter(|s| s.owner == "alice" || s.members.iter().any(|m| m == "alice"))
        .filter(|s| (lo..hi).contains(&s.started))
        .count();
    assert_eq!(got.len(), want);
    assert!(want > 0);
    // Nobody's sessions, and the default window before any data.
    assert!(list_all(&db, "dave", ListParams::default(), now).is_empty());
    let q = ListQuery::parse("alice", &ListParams::default(), ms(2024, 1, 1)).expect("valid");
    assert!(q.statements(&ex).is_empty());
    assert_eq!(
        q.answer(vec![]).expect("empty"),
        SessionList {
            sessions: vec![],
            next_cursor: None
        }
    );
}

fn point(seq: u64, user: &str, ts: Millis, value: Option<f64>) -> (Millis, String) {
    let mut p = json!({"seq": seq, "userId": user, "kind": "hr", "ts": ts});
    if let Some(v) = value {
        p["value"] = json!(v);
    }
    if seq.is_multiple_of(3) {
        p["id"] = json!(format!("c{seq}"));
        p["data"] = json!({"k": [seq]});
    }
    (ts, p.to_string())
}

#[test]
fn ended_sessions_read_back_from_d1_across_partitions() {
    let db = testdb::open();
    let started = ms(2025, 2, 27);
    let mut s = Sess::new(started, "alice", &["bob"]);
    // 40 points over three months, flushed in a few batches as they come.
    let pts: Vec<(Millis, String)> = (1..=40)
        .map(|seq| {
            point(
                seq,
                if seq % 2 == 0 { "bob" } else { "alice" },
                started + seq as Millis * 2 * DAY_MS,
                (seq % 4 != 0).then_some(seq as f64 / 2.0),
            )
        })
        .collect();
    for chunk in pts.chunks(15) {
        s.count += chunk.len() as u64;
        let now = chunk[chunk.len() - 1].0;
        let mut w = write_points(&s.id, chunk, now);
        w.push(s.write(now));
        apply(&db, w);
    }
    // A repeated flush changes nothing.
    apply(&db, write_points(&s.id, &pts[..15], pts[14].0));
    s.status = SessionStatus::Ended;
    apply(&db, vec![s.write(ms(2026, 3, 2))]);
    copy_to_year(&db, Month::new(2025, 3).expect("month"), ms(2026, 3, 2));

    let months_rows = testdb::run(&db, &point_months(&s.id));
    let months = parse_point_months(&months_rows).expect("months");
    let suffixes: Vec<String> = months.iter().map(|m| m.suffix()).collect();
    assert_eq!(suffixes, vec!["2025_03", "2025_04", "2025_05"]);
    let ex = existing(&db);
    let row = testdb::run(&db, &find_session(&s.id, &ex).expect("tables"));
    let found = parse_found_session(&row).expect("row").expect("found");
    assert_eq!((found.status, found.last_seq), (SessionStatus::Ended, 40));

    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let stmts = read_points(&s.id, after, 7, &months, &ex);
        assert!(!stmts.is_empty(), "tables");
        let rows: Vec<Vec<Value>> = stmts.iter().map(|st| testdb::run(&db, st)).collect();
        let page = points_page(&merge_points(&rows, 7), found.last_seq).expect("rows");
        let Some(last) = page.points.last() else {
            break;
        };
        after = last.seq;
        seen.extend(page.points);
    }
    assert_eq!(seen.len(), 40);
    for (p, (ts, body)) in seen.iter().zip(&pts) {
        let want: StoredPoint = serde_json::from_str(body).expect("point");
        assert_eq!(p, &want);
        assert_eq!(p.ts, *ts);
    }
    assert!(read_points(&s.id, 0, 10, &[], &ex).is_empty());
    let other = new_session_id(ms(2024, 6, 1));
    assert!(find_session(&other, &ex).is_none());
    let none = testdb::run(
        &db,
        &find_session(&new_session_id(started + 5), &ex).expect("tables"),
    );
    assert_eq!(parse_found_session(&none), Ok(None));
}

#[test]
fn retired_session_stats_count_each_point_once_across_partitions() {
    let db = testdb::open();
    let started = ms(2025, 2, 27);
    let mut s = Sess::new(started, "alice", &[]);
    // Two kinds over three months; every fourth point and the last "hr"
    // carry no value, so `last` is not simply the last point's.
    let pts: Vec<(Millis, String)> = (1..=41u64)
        .map(|seq| {
            let ts = started + seq as Millis * 2 * DAY_MS;
            let kind = if seq % 2 == 0 { "pace" } else { "hr" };
            let mut p = json!({"seq": seq, "userId": "alice", "kind": kind, "ts": ts});
            if seq % 4 != 0 && seq != 41 {
                p["value"] = json!(if kind == "hr" {
                    seq as f64 / 2.0
                } else {
                    -(seq as f64)
                });
            }
            (ts, p.to_string())
        })
        .collect();
    s.count = pts.len() as u64;
    s.status = SessionStatus::Ended;
    let mut w = write_points(&s.id, &pts, started);
    w.push(s.write(started));
    apply(&db, w);
    // March is half moved: its points are in both its table and 2025's.
    copy_to_year(&db, Month::new(2025, 3).expect("month"), ms(2026, 3, 2));
    let ex = existing(&db);
    let months = parse_point_months(&testdb::run(&db, &point_months(&s.id))).expect("months");
    let stmts = stats_statements(&s.id, &months, &ex);
    assert_eq!(stmts.len(), 4, "2025, and March to May");
    let rows: Vec<Vec<Value>> = stmts.iter().map(|st| testdb::run(&db, st)).collect();
    let points: Vec<StoredPoint> = pts
        .iter()
        .map(|(_, b)| serde_json::from_str(b).expect("point"))
        .collect();
    let want = crate::lifecycle::format::stats_of(&points);
    assert_eq!((want["hr"].count, want["pace"].count), (20, 10));
    assert_eq!(want["hr"].last, 39.0 / 2.0);
    assert_eq!(want["pace"].last, -38.0);
    assert_eq!(merge_stats(&rows).expect("rows"), want);
    assert!(stats_statements(&s.id, &[], &ex).is_empty());
    assert_eq!(merge_stats(&[]).expect("none"), BTreeMap::new());
}

#[test]
fn point_months_and_partitions_follow_ts_and_age() {
    let now = ms(2026, 3, 10);
    let pts = vec![
        point(1, "a", ms(2026, 3, 1) - 1, None),
        point(2, "a", ms(2025, 3, 31), Some(1.0)),
        point(3, "a", ms(2025, 4, 1), None),
        point(4, "a", ms(2026, 3, 1), None),
    ];
    let writes = write_points("s", &pts, now);
    let spans: Vec<String> = writes.iter().map(|w| w.span.suffix()).collect();
    assert_eq!(spans, vec!["2026_02", "2025", "2025_04", "2026_03"]);
    let db = testdb::open();
    apply(&db, writes);
    let rows = testdb::run(&db, &point_months("s"));
    let got: Vec<String> = parse_point_months(&rows)
        .expect("months")
        .iter()
        .map(|m| m.suffix())
        .collect();
    let mut want: Vec<String> = pts.iter().map(|(t, _)| month_suffix(*t)).collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn large_flushes_are_chunked_and_land_once() {
    let body = "x".repeat(100 * 1024);
    let now = ms(2026, 1, 10);
    let pts: Vec<(Millis, String)> = (1..=12)
        .map(|seq| {
            let ts = now + seq;
            (
                ts,
                json!({"seq": seq, "userId": "a", "kind": "k", "ts": ts, "data": {"d": body}})
                    .to_string(),
            )
        })
        .collect();
    let writes = write_points("s", &pts, now);
    assert_eq!(writes.len(), 1);
    assert!(
        writes[0].statements.len() >= 9,
        "three statements per chunk"
    );
    for st in &writes[0].statements {
        assert!(st
            .params
            .iter()
            .all(|p| p.as_str().is_none_or(|s| s.len() <= MAX_CHUNK_BYTES)));
    }
    let db = testdb::open();
    apply(&db, writes);
    let n = testdb::run(
        &db,
        &Statement::new("SELECT count(*) AS n FROM session_points_2026_01", vec![]),
    );
    assert_eq!(n, vec![json!({"n": 12})]);
}

#[test]
fn listed_and_found_sessions_carry_the_stats_the_flush_wrote_exactly() {
    let db = testdb::open();
    let now = ms(2026, 3, 10);
    let s = Sess::new(now - DAY_MS, "ann", &["bob"]);
    apply(&db, vec![s.write(now)]);
    let listed = list_all(&db, "bob", ListParams::default(), now);
    assert!(
        listed.len() == 1 && listed[0].stats.is_empty(),
        "{listed:?}"
    );
    // Figures whose shortest text needs 17 digits come back bit for bit.
    let odd = KindStats {
        count: 2,
        sum: 0.1 + 0.2,
        min: 0.1,
        max: 0.2,
        last: 1e-300,
    };
    testdb::batch(
        &db,
        &write_stats(
            &s.id,
            &[("hr".into(), KindStats::of(72.0)), ("x".into(), odd)],
        ),
    );
    // A later flush replaces the figures of the kinds it carries.
    let hr = KindStats {
        count: 2,
        sum: 150.0,
        min: 72.0,
        max: 78.0,
        last: 78.0,
    };
    testdb::batch(&db, &write_stats(&s.id, &[("hr".into(), hr)]));
    let want = BTreeMap::from([("hr".to_owned(), hr), ("x".to_owned(), odd)]);
    let listed = list_all(&db, "ann", ListParams::default(), now);
    assert_eq!(listed[0].stats, want);
    let find = find_session(&s.id, &existing(&db)).expect("a partition");
    let found = parse_found_session(&testdb::run(&db, &find)).expect("row");
    assert_eq!(found.map(|f| f.stats), Some(want));
    // Many kinds go out in several statements, each within D1's limits.
    let many: Vec<(String, KindStats)> = (0..6000)
        .map(|i| (format!("{i:064}"), KindStats::of(f64::from(i))))
        .collect();
    let stmts = write_stats(&s.id, &many);
    assert!(stmts.len() > 1, "{}", stmts.len());
    testdb::batch(&db, &stmts);
    let listed = list_all(&db, "ann", ListParams::default(), now);
    assert_eq!(listed[0].stats.len(), MAX_LISTED_KINDS, "the first by name");
    assert_eq!(
        listed[0].stats.keys().next().map(String::as_str),
        Some(many[0].0.as_str())
    );
}

#[test]
fn figures_of_any_double_read_back_exactly_and_a_broken_one_is_left_out() {
    let db = testdb::open();
    let now = ms(2026, 3, 10);
    let s = Sess::new(now - DAY_MS, "ann", &[]);
    apply(&db, vec![s.write(now)]);
    let mut rng = Rng(7);
    let any = |rng: &mut Rng| {
        let x = f64::from_bits(rng.next());
        if x.is_finite() {
            x
        } else {
            0.5
        }
    };
    let figures: Vec<(String, KindStats)> = (0..200)
        .map(|i| {
            let f = KindStats {
                count: 1,
                sum: any(&mut rng),
                min: any(&mut rng),
                max: any(&mut rng),
                last: any(&mut rng),
            };
            (format!("k{i}"), f)
        })
        .collect();
    testdb::batch(&db, &write_stats(&s.id, &figures));
    // A sum beyond a double's range is written as null: that kind is left
    // out, the rest of the answer stands.
    let overflow = KindStats {
        count: 2,
        sum: f64::INFINITY,
        min: 1e308,
        max: 1e308,
        last: 1e308,
    };
    testdb::batch(&db, &write_stats(&s.id, &[("huge".into(), overflow)]));
    let listed = list_all(&db, "ann", ListParams::default(), now);
    let want: BTreeMap<String, KindStats> = figures.into_iter().collect();
    assert_eq!(listed[0].stats, want);
}
