use super::*;
use crate::lifecycle::format::{gunzip_lines, sha256_hex};
use crate::lifecycle::store::mem::{seed, sid, Kill, Mem};
use crate::lifecycle::tests::{ms, thirty_months};
use crate::lifecycle::{LifecycleConfig, Run};

const EXPORT: &str = "0190a6b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b";

// Alice's thirty months in every tier, a session of carol's with alice as
// a member, one of carol's without her, and metrics of alice and bob.
fn world() -> (Mem, Vec<(String, usize)>) {
    let m = Mem::new();
    let mut want: Vec<(String, usize)> = thirty_months(&m, 3)
        .into_iter()
        .map(|(id, ts)| (id, ts.len()))
        .collect();
    let t = ms(2026, 6, 20);
    let shared = sid(t, 100);
    seed(
        &m,
        &shared,
        "carol",
        &["alice".to_owned()],
        &[t + 1, t + 2],
        true,
        t,
    );
    let other = sid(t + 5, 101);
    seed(&m, &other, "carol", &[], &[t + 6], true, t);
    want.push((shared, 2));
    m.db.execute_batch(
        "INSERT INTO metrics_day VALUES ('alice', 1704067200000, 'k', 3, 3, 6.0, 1.0, 3.0);
         INSERT INTO metrics_day VALUES ('alice', 1704067200000, 'j', 1, 0, NULL, NULL, NULL);
         INSERT INTO metrics_day VALUES ('bob', 1704067200000, 'k', 9, 9, 9.0, 1.0, 1.0);",
    )
    .unwrap();
    m.drive(Run::new(ms(2026, 7, 15), &LifecycleConfig::default()))
        .unwrap();
    (m, want)
}

fn drive(m: &Mem, step_points: u32) -> ExportRow {
    m.batch(&[create(EXPORT, "alice", 1)]).unwrap();
    for _ in 0..1000 {
        if m.drive(ExportStep::new(EXPORT, 2, step_points)).unwrap() == Step::Finished {
            let rows = m.query(load(EXPORT)).unwrap();
            return ExportRow::from_rows(&rows).unwrap().unwrap();
        }
    }
    panic!("the export never finishes");
}

fn file(m: &Mem, row: &ExportRow) -> Vec<u8> {
    let blobs = m.blobs.borrow();
    (0..row.parts)
        .flat_map(|n| blobs[&part_key(EXPORT, n)].clone())
        .collect()
}

#[test]
fn an_export_holds_exactly_the_users_sessions_points_and_metrics() {
    let (m, want) = world();
    // Some of alice's sessions were pruned to the archive.
    let pruned = crate::lifecycle::store::mem::run(
        &m.db,
        &Statement::new(
            "SELECT count(*) AS n FROM archives WHERE pruned = 2",
            vec![],
        ),
    )
    .unwrap();
    assert_eq!(pruned[0]["n"], 7);
    let row = drive(&m, 7);
    assert_eq!(row.status, Status::Done);
    assert!(row.parts > 5, "{} parts", row.parts);
    let bytes = file(&m, &row);
    assert_eq!(row.bytes, Some(bytes.len() as u64));
    assert_eq!(row.sha256.as_deref(), Some(sha256_hex(&bytes).as_str()));
    let lines: Vec<Value> = gunzip_lines(&bytes)
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut got: Vec<(String, usize)> = Vec::new();
    let mut metrics = Vec::new();
    for l in &lines {
        match l["type"].as_str().unwrap() {
            "session" => {
                assert!(metrics.is_empty(), "metrics come last");
                got.push((l["id"].as_str().unwrap().to_owned(), 0));
            }
            "point" => {
                let cur = got.last_mut().expect("a point follows its session");
                assert_eq!(l["sessionId"], cur.0.as_str());
                cur.1 += 1;
                assert_eq!(l["seq"], cur.1, "points in seq order");
                assert!(l["ts"].is_i64() && l["kind"] == "k");
            }
            "metric" => metrics.push(l.clone()),
            other => panic!("line type {other}"),
        }
    }
    assert_eq!(got, want, "sessions oldest first, each with all its points");
    assert_eq!(row.sessions, want.len() as u64);
    assert_eq!(row.points, want.iter().map(|w| w.1 as u64).sum::<u64>());
    assert_eq!(metrics.len(), 2);
    assert_eq!(metrics[0]["kind"], "j");
    assert_eq!(metrics[1]["avg"], 2.0);
    assert_eq!(metrics[0]["start"], "2024-01-01T00:00:00.000Z");
    let status = serde_json::to_value(row.status()).unwrap();
    assert_eq!(status["status"], "done");
    assert_eq!(status["sha256"], sha256_hex(&bytes).as_str());
    // Another step changes nothing.
    assert_eq!(
        m.drive(ExportStep::new(EXPORT, 3, 7)).unwrap(),
        Step::Finished
    );
}

// Three sessions of alice: pruned to the archive, yearly, monthly.
fn small_world() -> Mem {
    let m = Mem::new();
    for (i, (y, mo)) in [(2024, 1), (2025, 2), (2026, 6)].into_iter().enumerate() {
        let t = ms(y, mo, 4);
        let ts: Vec<i64> = (1..=5).map(|k| t + k).collect();
        seed(&m, &sid(t, i as u16), "alice", &[], &ts, true, t);
    }
    m.db.execute_batch("INSERT INTO metrics_day VALUES ('alice', 0, 'k', 3, 3, 6.0, 1.0, 3.0)")
        .unwrap();
    m.drive(Run::new(ms(2026, 7, 15), &LifecycleConfig::default()))
        .unwrap();
    m
}

#[test]
fn an_export_killed_at_any_call_ends_with_the_same_file() {
    let world = || (small_world(), ());
    let (reference, _) = world();
    let want_row = drive(&reference, 3);
    assert_eq!((want_row.sessions, want_row.points), (3, 15));
    let want = file(&reference, &want_row);
    let (probe, _) = world();
    let before = probe.calls.get();
    drive(&probe, 3);
    let calls = probe.calls.get() - before;
    for at in 0..calls {
        for kill in [Kill::Before, Kill::After] {
            let (m, _) = world();
            m.kill.set(Some((m.calls.get() + at, kill)));
            // A failed creation is answered as an error; the client asks again.
            while m.batch(&[create(EXPORT, "alice", 1)]).is_err() {}
            let mut finished = false;
            for _ in 0..1000 {
                match m.drive(ExportStep::new(EXPORT, 2, 3)) {
                    Ok(Step::Finished) => {
                        finished = true;
                        break;
                    }
                    Ok(Step::More) | Err(_) => {}
                }
            }
            assert!(finished, "killed {kill:?} at {at}");
            m.kill.set(None);
            let rows = m.query(load(EXPORT)).unwrap();
            let row = ExportRow::from_rows(&rows).unwrap().unwrap();
            assert_eq!(row, want_row, "killed {kill:?} at {at}");
            assert_eq!(file(&m, &row), want, "killed {kill:?} at {at}");
        }
    }
}

#[test]
fn a_user_without_data_gets_an_empty_gzip_file() {
    let m = Mem::new();
    let row = drive(&m, 10);
    assert_eq!(
        (row.status, row.sessions, row.points, row.parts),
        (Status::Done, 0, 0, 1)
    );
    let bytes = file(&m, &row);
    assert!(gunzip_lines(&bytes).unwrap().is_empty());
    assert_eq!(row.sha256.unwrap(), sha256_hex(&bytes));
    assert!(ExportRow::from_rows(&[]).unwrap().is_none());
}

#[test]
fn failed_steps_back_off_to_a_minute_then_the_export_gives_up() {
    let waits: Vec<Option<Millis>> = (1..=7).map(retry_after).collect();
    let secs = [1, 2, 4, 8, 16, 32, 60].map(|s| Some(s * 1000));
    assert_eq!(waits, secs);
    assert_eq!(retry_after(MAX_FAILURES - 1), Some(60_000));
    assert_eq!(retry_after(MAX_FAILURES), None);
}

#[test]
fn the_export_core_counts_failures_and_decides_retry_or_give_up() {
    let boom = Err(LifecycleError::Store("d1 down".into()));
    assert_eq!(
        after_step(EXPORT, &Ok(Step::More), 5, 100),
        AfterStep::Next { at: 100 }
    );
    assert_eq!(
        after_step(EXPORT, &Ok(Step::Finished), 5, 100),
        AfterStep::Stop
    );
    assert_eq!(
        after_step(EXPORT, &boom, 0, 100),
        AfterStep::Retry {
            failures: 1,
            at: 1_100
        }
    );
    assert_eq!(
        after_step(EXPORT, &boom, 8, 100),
        AfterStep::Retry {
            failures: 9,
            at: 60_100
        }
    );
    // The last failure marks the export failed, with the reason.
    match after_step(EXPORT, &boom, MAX_FAILURES - 1, 100) {
        AfterStep::GiveUp { failures, write } => {
            assert_eq!(failures, MAX_FAILURES);
            assert_eq!(write, fail(EXPORT, "storage: d1 down", 100));
        }
        other => panic!("{other:?}"),
    }
    // Carried out on a real row: it is failed, and no step runs again.
    let m = Mem::new();
    m.batch(&[create(EXPORT, "alice", 1)]).unwrap();
    m.batch(&[fail(EXPORT, "storage: d1 down", 2)]).unwrap();
    let row = ExportRow::from_rows(&m.query(load(EXPORT)).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(row.status, Status::Failed);
    assert_eq!(
        m.drive(ExportStep::new(EXPORT, 3, 7)).unwrap(),
        Step::Finished
    );
}

// The export `start` answers.
fn started(m: &Mem, id: &str, user: &str, now: Millis) -> ExportRow {
    let answers = m.batch(&start(id, user, now)).unwrap();
    ExportRow::from_rows(&answers[1])
        .unwrap()
        .expect("an export")
}

#[test]
fn a_start_while_one_is_pending_or_running_answers_that_one() {
    let (m, _) = world();
    let second = "0190a6b2-7c3d-7e4f-8a5b-000000000002";
    assert_eq!(started(&m, EXPORT, "alice", 1).id, EXPORT);
    // Pending: the second start answers the first and inserts nothing.
    assert_eq!(started(&m, second, "alice", 2).id, EXPORT);
    assert!(m.query(load(second)).unwrap().is_empty());
    // Another user is not held back.
    assert_eq!(started(&m, second, "bob", 2).id, second);
    // Running, then done: a new start is an export of its own.
    assert_eq!(m.drive(ExportStep::new(EXPORT, 2, 3)).unwrap(), Step::More);
    let third = "0190a6b2-7c3d-7e4f-8a5b-000000000003";
    let running = started(&m, third, "alice", 3);
    assert_eq!(
        (running.id.as_str(), running.status),
        (EXPORT, Status::Running)
    );
    while m.drive(ExportStep::new(EXPORT, 4, 1000)).unwrap() == Step::More {}
    assert_eq!(started(&m, third, "alice", 5).id, third);
    // Repeating a start answers its own export whatever its status.
    assert_eq!(started(&m, EXPORT, "alice", 6).id, third);
}

#[test]
fn exports_expire_after_the_retention_and_their_parts_are_deleted() {
    let (m, _) = world();
    let row = drive(&m, 7);
    assert_eq!(row.status, Status::Done);
    let parts = |m: &Mem| {
        m.blobs
            .borrow()
            .keys()
            .filter(|k| k.starts_with(&format!("exports/{EXPORT}/")))
            .count()
    };
    assert_eq!(parts(&m), row.parts as usize);
    let day = crate::data::partition::DAY_MS;
    // Done at 2 (the steps' time): not yet at 7 days less a millisecond.
    let early = m
        .drive(Expire::new(2 + 7 * day - 1, 7, Budget::new(100)))
        .unwrap();
    assert_eq!(early, 0);
    assert_eq!(parts(&m), row.parts as usize);
    // Killed at every call and run again, it ends with the parts gone.
    for kill in 0..4 {
        m.kill.set(Some((m.calls.get() + kill, Kill::After)));
        let _ = m.drive(Expire::new(2 + 8 * day, 7, Budget::new(100)));
        m.kill.set(None);
    }
    m.drive(Expire::new(2 + 8 * day, 7, Budget::new(100)))
        .unwrap();
    let after = ExportRow::from_rows(&m.query(load(EXPORT)).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((after.status, after.parts), (Status::Expired, 0));
    assert_eq!(parts(&m), 0);
    assert_eq!(after.status().status.as_str(), "expired");
    // A step of an expired export does nothing.
    assert_eq!(
        m.drive(ExportStep::new(EXPORT, 3, 7)).unwrap(),
        Step::Finished
    );
}
