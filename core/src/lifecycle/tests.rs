use super::*;
use crate::data::partition::Statement;
use crate::data::partition::{days_from_civil, DAY_MS};
use crate::lifecycle::reads::EndedPoints;
use crate::lifecycle::store::mem::{seed, sid, Kill, Mem};
use serde_json::Value;

pub(crate) fn ms(y: i64, m: u32, d: u32) -> Millis {
    days_from_civil(y, m, d) * DAY_MS
}

/// One session a month from 2024-01 to 2026-06 owned by alice (bob a
/// member of every other one), `n` points each, the last one still
/// active; each written when it happened. The session of 2025-03 has a
/// point in the next month too.
pub(crate) fn thirty_months(m: &Mem, n: usize) -> Vec<(String, Vec<Millis>)> {
    let mut out = Vec::new();
    for i in 0..30u32 {
        let (y, mo) = (2024 + i64::from(i / 12), i % 12 + 1);
        let start = ms(y, mo, 10) + i64::from(i) * 1000;
        let id = sid(start, i as u16);
        let mut ts: Vec<Millis> = (0..n as i64).map(|k| start + 60_000 * (k + 1)).collect();
        if (y, mo) == (2025, 3) {
            ts.push(ms(2025, 4, 2));
        }
        let members = if i % 2 == 0 {
            vec!["bob".to_owned()]
        } else {
            vec![]
        };
        seed(m, &id, "alice", &members, &ts, i != 29, start + 3_600_000);
        out.push((id, ts));
    }
    out
}

fn tables(m: &Mem) -> Vec<String> {
    let mut stmt =
        m.db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .filter(|n| n.starts_with("session"))
        .collect()
}

fn run_until_complete(m: &Mem, now: Millis, cfg: &LifecycleConfig) -> Vec<Report> {
    let mut reports = Vec::new();
    for _ in 0..200 {
        let r = m.drive(Run::new(now, cfg)).expect("run");
        let done = r.complete;
        reports.push(r);
        if done {
            return reports;
        }
    }
    panic!("the lifecycle never completes");
}

// Every point of the session through the read path, in pages of 3.
fn read_all(m: &Mem, id: &str) -> Vec<(u64, Millis)> {
    let mut out = Vec::new();
    loop {
        let after = out.last().map_or(0, |(s, _)| *s);
        let page = m
            .drive(EndedPoints::new(id, after, 3))
            .expect("read")
            .expect("session found");
        let n = page.points.len();
        out.extend(page.points.iter().map(|p| (p.seq, p.ts)));
        if n < 3 {
            assert_eq!(page.last_seq, out.len() as u64, "lastSeq of {id}");
            return out;
        }
    }
}

fn expected(ts: &[Millis]) -> Vec<(u64, Millis)> {
    ts.iter()
        .enumerate()
        .map(|(i, t)| (i as u64 + 1, *t))
        .collect()
}

#[test]
fn cutoffs_follow_months_not_days() {
    let now = ms(2026, 7, 15);
    assert!(months_old(Month::new(2025, 7).unwrap(), now, 12));
    assert!(!months_old(Month::new(2025, 8).unwrap(), now, 12));
    assert_eq!(cutoff_ms(now, 12), ms(2025, 8, 1));
    assert_eq!(cutoff_ms(now, 24), ms(2024, 8, 1));
    assert_eq!(cutoff_ms(ms(2026, 8, 1) - 1, 12), ms(2025, 8, 1));
}

#[test]
fn configuration_defaults_and_refusals() {
    let c = LifecycleConfig::from_vars(|_| None).unwrap();
    assert_eq!(c, LifecycleConfig::default());
    assert_eq!(c.archive_after_months, 12);
    assert_eq!(c.detail_retention_months, 24);
    assert_eq!(c.ended_retention_ms, 604_800_000);
    let c = LifecycleConfig::from_vars(|k| match k {
        "DETAIL_RETENTION_MONTHS" => Some("36".into()),
        "LIFECYCLE_MOVE_CHUNK" => Some(" 100 ".into()),
        "ENDED_RETENTION_MS" => Some("".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!((c.detail_retention_months, c.move_chunk), (36, 100));
    for (k, v) in [
        ("ARCHIVE_AFTER_MONTHS", "6"),
        ("LIFECYCLE_MAX_CALLS", "x"),
        ("EXPORT_STEP_POINTS", "0"),
    ] {
        let e = LifecycleConfig::from_vars(|q| (q == k).then(|| v.to_owned())).unwrap_err();
        assert!(e.contains(k), "{e}");
    }
}

#[test]
fn nothing_is_due_for_recent_data() {
    let m = Mem::new();
    let now = ms(2026, 7, 15);
    let id = sid(ms(2026, 5, 3), 1);
    seed(
        &m,
        &id,
        "alice",
        &[],
        &[ms(2026, 5, 3) + 1],
        true,
        ms(2026, 5, 3),
    );
    let before = m.dump();
    let r = run_until_complete(&m, now, &LifecycleConfig::default());
    assert_eq!(r.last().unwrap().moved, Vec::<String>::new());
    assert_eq!(r.last().unwrap().archived, 0);
    // Only the move bookkeeping may differ: nothing was due.
    assert_eq!(m.dump(), before);
}

#[test]
fn thirty_months_move_archive_and_prune_and_every_point_reads_once() {
    let m = Mem::new();
    let sessions = thirty_months(&m, 5);
    let now = ms(2026, 7, 15);
    let cfg = LifecycleConfig {
        move_chunk: 4,
        prune_chunk: 2,
        ..LifecycleConfig::default()
    };
    let reports = run_until_complete(&m, now, &cfg);
    let t = tables(&m);
    for y in [2024, 2025] {
        for k in ["sessions", "session_members", "session_points"] {
            assert!(t.contains(&format!("{k}_{y}")), "{k}_{y} in {t:?}");
        }
    }
    // Months 12 or more back are gone, the others stay.
    assert!(!t.iter().any(|n| n.contains("_2024_")), "{t:?}");
    for mo in 1..=7 {
        assert!(
            !t.iter().any(|n| n.ends_with(&format!("_2025_{mo:02}"))),
            "{t:?}"
        );
    }
    assert!(t.contains(&"session_points_2025_08".to_owned()), "{t:?}");
    assert!(t.contains(&"sessions_2026_06".to_owned()), "{t:?}");
    let registered: Vec<String> = crate::lifecycle::store::mem::run(
        &m.db,
        &Statement::new("SELECT name FROM partitions ORDER BY name", vec![]),
    )
    .unwrap()
    .iter()
    .map(|r| r["name"].as_str().unwrap().to_owned())
    .collect();
    let mut on_disk: Vec<String> = t
        .iter()
        .filter(|n| n.starts_with("session_") || n.starts_with("sessions_"))
        .cloned()
        .collect();
    on_disk.retain(|n| n != "session_point_months" && n != "session_stats");
    assert_eq!(registered, on_disk);
    let archived: u32 = reports.iter().map(|r| r.archived).sum();
    // Started 2024-01 .. 2025-07 and ended: 19 sessions.
    assert_eq!(archived, 19);
    let pruned: u32 = reports.iter().map(|r| r.pruned).sum();
    // Started 2024-01 .. 2024-07: 7 sessions.
    assert_eq!(pruned, 7);
    for (id, ts) in &sessions {
        assert_eq!(read_all(&m, id), expected(ts), "{id}");
    }
    // Pruned points are gone from D1, the sessions rows stay.
    let left = crate::lifecycle::store::mem::run(
        &m.db,
        &Statement::new("SELECT count(*) AS n FROM session_points_2024", vec![]),
    )
    .unwrap();
    // 2024-08 .. 2024-12 keep their 5 points each.
    assert_eq!(left[0]["n"], 25);
    let rows = crate::lifecycle::store::mem::run(
        &m.db,
        &Statement::new("SELECT count(*) AS n FROM sessions_2024", vec![]),
    )
    .unwrap();
    assert_eq!(rows[0]["n"], 12);
    // A second run at the same time has nothing to do.
    let before = m.dump();
    let again = m.drive(Run::new(now, &cfg)).unwrap();
    assert!(again.complete && again.archived == 0 && again.pruned == 0 && again.moved.is_empty());
    assert_eq!(m.dump(), before);
}

#[test]
fn runs_on_a_small_budget_finish_the_work_of_one_big_run() {
    let reference = Mem::new();
    thirty_months(&reference, 4);
    let now = ms(2026, 7, 15);
    let cfg = LifecycleConfig {
        move_chunk: 3,
        prune_chunk: 2,
        ..LifecycleConfig::default()
    };
    run_until_complete(&reference, now, &cfg);
    let small = Mem::new();
    thirty_months(&small, 4);
    let reports = run_until_complete(
        &small,
        now,
        &LifecycleConfig {
            max_calls: 10,
            ..cfg
        },
    );
    assert!(reports.len() > 5, "{} runs", reports.len());
    assert_eq!(small.dump(), reference.dump());
}

#[test]
fn a_run_killed_at_any_call_resumes_to_the_same_end_state() {
    let now = ms(2026, 7, 15);
    let cfg = LifecycleConfig {
        move_chunk: 3,
        prune_chunk: 2,
        ..LifecycleConfig::default()
    };
    // Fewer sessions keep the number of calls (each a kill point) small.
    let setup = || {
        let m = Mem::new();
        for (i, (y, mo)) in [(2024, 2), (2024, 2), (2025, 3), (2025, 9)]
            .into_iter()
            .enumerate()
        {
            let start = ms(y, mo, 5) + i as i64;
            let id = sid(start, i as u16);
            let ts: Vec<Millis> = (1..=7).map(|k| start + k * 1000).collect();
            seed(&m, &id, "alice", &["bob".to_owned()], &ts, true, start);
        }
        m
    };
    let reference = setup();
    run_until_complete(&reference, now, &cfg);
    let total = reference.calls.get();
    let want = reference.dump();
    assert!(total > 30, "{total} calls");
    for at in 0..total {
        for kill in [Kill::Before, Kill::After] {
            let m = setup();
            m.kill.set(Some((at, kill)));
            let first = m.drive(Run::new(now, &cfg));
            assert!(first.is_err() || first.as_ref().is_ok_and(|r| r.complete));
            m.kill.set(None);
            run_until_complete(&m, now, &cfg);
            assert_eq!(m.dump(), want, "killed {kill:?} call {at}");
        }
    }
}

#[test]
fn rows_written_to_a_moving_month_after_its_check_are_not_lost() {
    let m = Mem::new();
    let start = ms(2025, 2, 3);
    let id = sid(start, 1);
    seed(&m, &id, "alice", &[], &[start + 1, start + 2], true, start);
    let now = ms(2026, 7, 15);
    // Stop right after the checks, before the drop.
    let cfg = LifecycleConfig {
        max_calls: 1 + 1 + 3 * 4 + 1,
        ..LifecycleConfig::default()
    };
    let r = m.drive(Run::new(now, &cfg)).unwrap();
    assert!(!r.complete);
    assert!(r.moved.is_empty(), "{r:?}");
    // A late flush lands in the monthly table (its session row, written
    // at the flush's time, goes to the yearly one).
    for sql in [
        format!(
            "INSERT INTO session_points_2025_02 (session_id, seq, user_id, kind, value, ts) \
             VALUES ('{id}', 3, 'alice', 'k', 3, {})",
            start + 3
        ),
        "UPDATE sessions_2025 SET point_count = 3".to_owned(),
    ] {
        m.db.execute_batch(&sql).unwrap();
    }
    run_until_complete(&m, now, &LifecycleConfig::default());
    assert!(!tables(&m).contains(&"session_points_2025_02".to_owned()));
    assert_eq!(
        read_all(&m, &id),
        expected(&[start + 1, start + 2, start + 3])
    );
}

#[test]
fn a_driver_fails_on_an_answer_that_is_not_to_its_request() {
    let id = sid(ms(2024, 1, 1), 1);
    let mut d = crate::lifecycle::reads::EndedStats::new(&id);
    assert!(matches!(
        d.poll().unwrap(),
        Poll::Io(crate::lifecycle::store::Io::Batch(_))
    ));
    d.handle(Answer::Stored);
    let e = d.poll().unwrap_err();
    assert!(e.to_string().contains("wanted rows"), "{e}");
    // A run asks for nothing before its first poll and stops at a zero
    // budget without a request.
    let mut r = Run::new(
        ms(2026, 7, 15),
        &LifecycleConfig {
            max_calls: 0,
            ..LifecycleConfig::default()
        },
    );
    match r.poll().unwrap() {
        Poll::Done(report) => assert!(!report.complete),
        Poll::Io(io) => panic!("{io:?}"),
    }
    assert!(r.poll().is_err(), "polled after it was done");
}

fn archive_row(m: &Mem, id: &str) -> Value {
    crate::lifecycle::store::mem::run(
        &m.db,
        &Statement::new(
            "SELECT points, verified, pruned FROM archives WHERE session_id = ?1",
            vec![Value::from(id)],
        ),
    )
    .unwrap()
    .into_iter()
    .next()
    .expect("an archives row")
}

#[test]
fn points_that_reach_d1_after_the_archive_survive_pruning() {
    let m = Mem::new();
    let start = ms(2024, 2, 3);
    let id = sid(start, 1);
    let ts: Vec<Millis> = (1..=3).map(|k| start + k * 1000).collect();
    seed(&m, &id, "alice", &[], &ts, true, start);
    let cfg = LifecycleConfig::default();
    // Archived (a year old), not yet pruned (two years).
    run_until_complete(&m, ms(2025, 6, 15), &cfg);
    assert_eq!(archive_row(&m, &id)["points"], 3);
    // A flush backlog lands after the archive: two more points, the row's
    // count with them.
    let late: Vec<Millis> = (4..=5).map(|k| start + k * 1000).collect();
    for (i, t) in late.iter().enumerate() {
        m.db.execute_batch(&format!(
            "INSERT INTO session_points_2024 (session_id, seq, user_id, kind, value, ts) \
             VALUES ('{id}', {}, 'alice', 'k', 1, {t})",
            i + 4
        ))
        .unwrap();
    }
    m.db.execute_batch(&format!(
        "UPDATE sessions_2024 SET point_count = 5 WHERE id = '{id}'"
    ))
    .unwrap();
    let reports = run_until_complete(&m, ms(2026, 7, 15), &cfg);
    assert!(reports.iter().map(|r| r.archived).sum::<u32>() >= 1);
    let row = archive_row(&m, &id);
    assert_eq!(
        (row["points"].clone(), row["pruned"].clone()),
        (5.into(), 2.into())
    );
    let all: Vec<Millis> = ts.iter().chain(&late).copied().collect();
    assert_eq!(read_all(&m, &id), expected(&all));
}

#[test]
fn an_archive_run_overlapping_a_prune_never_lowers_pruned() {
    let m = Mem::new();
    let start = ms(2024, 2, 3);
    let id = sid(start, 1);
    let ts: Vec<Millis> = (1..=4).map(|k| start + k * 1000).collect();
    seed(&m, &id, "alice", &[], &ts, true, start);
    let now = ms(2026, 7, 15);
    // The moves alone first, so both runs below see the same tables.
    let moves_only = LifecycleConfig {
        archive_after_months: 1000,
        detail_retention_months: 1000,
        ..LifecycleConfig::default()
    };
    run_until_complete(&m, now, &moves_only);
    // A slow run has read the points and is about to write the object.
    let mut slow = archive::Archive::new(now, cutoff_ms(now, 12), Budget::new(1000), 1000);
    loop {
        match slow.poll().unwrap() {
            Poll::Io(io @ crate::lifecycle::store::Io::Put { .. }) => {
                // Meanwhile another run archives and prunes the session.
                run_until_complete(&m, now, &LifecycleConfig::default());
                assert_eq!(archive_row(&m, &id)["pruned"], 2);
                slow.handle(m.call(io).unwrap());
                break;
            }
            Poll::Io(io) => slow.handle(m.call(io).unwrap()),
            Poll::Done(_) => panic!("the slow run wrote nothing"),
        }
    }
    m.drive(slow).unwrap();
    let row = archive_row(&m, &id);
    assert_eq!(
        (row["verified"].clone(), row["pruned"].clone()),
        (1.into(), 2.into())
    );
    assert_eq!(read_all(&m, &id), expected(&ts));
}

#[test]
fn a_session_too_large_for_a_run_holds_back_no_other() {
    let m = Mem::new();
    let big_start = ms(2024, 2, 3);
    let big = sid(big_start, 1);
    let big_ts: Vec<Millis> = (1..=25_000).map(|k| big_start + k * 10).collect();
    seed(&m, &big, "alice", &[], &big_ts, true, big_start);
    let small_start = ms(2024, 3, 3);
    let small = sid(small_start, 2);
    let small_ts: Vec<Millis> = (1..=5).map(|k| small_start + k * 1000).collect();
    seed(&m, &small, "alice", &[], &small_ts, true, small_start);
    let cfg = LifecycleConfig {
        max_calls: 20,
        ..LifecycleConfig::default()
    };
    let now = ms(2026, 7, 15);
    let mut pruned = 0;
    let mut last = Report::default();
    for _ in 0..50 {
        last = m.drive(Run::new(now, &cfg)).unwrap();
        pruned += last.pruned;
        if last.oversized > 0 && last.pruned == 0 && last.archived == 0 && last.moved.is_empty() {
            break;
        }
    }
    assert_eq!(pruned, 1, "{last:?}");
    assert_eq!(archive_row(&m, &small)["pruned"], 2);
    assert_eq!(last.oversized, 1);
    assert!(!last.complete);
    assert_eq!(read_all(&m, &small), expected(&small_ts));
    assert_eq!(read_all(&m, &big).len(), big_ts.len());
}

// Every session row of `id` in every sessions table, as (table, status).
fn session_rows(m: &Mem, id: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in tables(m).into_iter().filter(|t| t.starts_with("sessions_")) {
        let mut stmt =
            m.db.prepare(&format!("SELECT status FROM {t} WHERE id = ?1"))
                .unwrap();
        let found: Vec<String> = stmt
            .query_map([id], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        out.extend(found.into_iter().map(|s| (t.clone(), s)));
    }
    out
}

#[test]
fn a_flush_of_a_month_already_moved_lands_and_the_next_run_moves_it() {
    use crate::data::d1;
    use crate::time::rfc3339;
    let m = Mem::new();
    let start = ms(2025, 2, 3);
    let id = sid(start, 1);
    seed(&m, &id, "alice", &[], &[start + 1, start + 2], false, start);
    // The scheduled run as of 17 months later moves February away while
    // the session's own clock is still in February.
    run_until_complete(&m, ms(2026, 7, 15), &LifecycleConfig::default());
    assert!(!tables(&m).contains(&"sessions_2025_02".to_owned()));
    let rec = sesh_protocol::SessionSummary {
        id: id.clone(),
        owner_id: "alice".into(),
        title: Some("t".into()),
        members: vec![],
        viewers: Vec::new(),
        metadata: serde_json::Map::new(),
        status: sesh_protocol::SessionStatus::Ended,
        started_at: rfc3339(start),
        ended_at: Some(rfc3339(start + 10)),
        point_count: 3,
        last_seq: 3,
        stats: Default::default(),
    };
    let point = serde_json::json!({"seq": 3, "userId": "alice", "kind": "k",
        "value": 3, "data": {"i": 2}, "ts": start + 3});
    let points = [(start + 3, point.to_string())];
    // An isolate that created February's tables before the move fails
    // once; the retry makes sure of its tables whatever it remembered.
    let cached = d1::plan(&rec, &points, &[], start + 10, |_| true).unwrap();
    assert!(m.batch(&cached.stmts).is_err());
    let retry = d1::plan(&rec, &points, &[], start + 10, |_| false).unwrap();
    m.batch(&retry.stmts).expect("the late flush lands");
    // One row, the newest, where readers look first.
    assert_eq!(
        session_rows(&m, &id),
        vec![("sessions_2025".to_owned(), "ended".to_owned())]
    );
    run_until_complete(&m, ms(2026, 7, 15), &LifecycleConfig::default());
    assert!(
        !tables(&m).iter().any(|t| t.ends_with("_2025_02")),
        "{:?}",
        tables(&m)
    );
    assert_eq!(session_rows(&m, &id).len(), 1);
    assert_eq!(
        read_all(&m, &id),
        expected(&[start + 1, start + 2, start + 3])
    );
}
