use super::*;
use crate::lifecycle::store::mem::{block_on, run as sql, seed, sid, Mem};
use crate::lifecycle::tests::{ms, thirty_months};
use crate::lifecycle::{run, LifecycleConfig};

fn summary(id: &str, n: u64) -> SessionSummary {
    SessionSummary {
        id: id.to_owned(),
        owner_id: "alice".into(),
        title: Some("t".into()),
        members: vec!["bob".into()],
        metadata: serde_json::Map::new(),
        status: sesh_protocol::SessionStatus::Ended,
        started_at: rfc3339(ms(2024, 3, 1)),
        ended_at: Some(rfc3339(ms(2024, 3, 2))),
        point_count: n,
        last_seq: n,
        stats: Default::default(),
    }
}

fn point(seq: u64) -> StoredPoint {
    StoredPoint {
        seq,
        user_id: "alice".into(),
        id: seq.is_multiple_of(2).then(|| format!("c{seq}")),
        kind: "k".into(),
        value: (!seq.is_multiple_of(3)).then_some(seq as f64 / 4.0),
        data: None,
        ts: ms(2024, 3, 1) + seq as i64,
    }
}

#[test]
fn archives_round_trip_and_verify() {
    let id = sid(ms(2024, 3, 1), 1);
    let points: Vec<StoredPoint> = (1..=250).map(point).collect();
    let obj = encode(&summary(&id, 250), &points);
    assert_eq!(obj.points, 250);
    assert_eq!(obj.sha256, sha256_hex(&obj.bytes));
    assert_eq!(obj.sha256.len(), 64);
    let d = verify(&obj.bytes, 250, &obj.sha256).expect("verifies");
    assert_eq!(d.points, points);
    assert_eq!(d.session["id"], id.as_str());
    assert_eq!(d.session["pointCount"], 250);
    assert_eq!(d.last_seq(), 250);
    // Pages as the API gives them.
    let p = d.page(10, 5);
    assert_eq!(
        p.points.iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
    assert_eq!(p.last_seq, 250);
    assert!(d.page(250, 100).points.is_empty());
    // Same input, same bytes: a rerun writes the same object.
    assert_eq!(encode(&summary(&id, 250), &points), obj);
    // The lines are the API's JSON.
    let lines = gunzip_lines(&obj.bytes).unwrap();
    assert_eq!(lines.len(), 251);
    assert_eq!(lines[2], serde_json::to_string(&point(2)).unwrap());
}

#[test]
fn damaged_or_miscounted_archives_do_not_verify() {
    let id = sid(ms(2024, 3, 1), 1);
    let points: Vec<StoredPoint> = (1..=20).map(point).collect();
    let obj = encode(&summary(&id, 20), &points);
    assert!(verify(&obj.bytes, 19, &obj.sha256)
        .unwrap_err()
        .contains("20 points"));
    let mut bad = obj.bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    assert!(verify(&bad, 20, &obj.sha256)
        .unwrap_err()
        .contains("sha256"));
    // A bad object whose recorded checksum matches still fails to parse.
    assert!(verify(&bad, 20, &sha256_hex(&bad)).is_err());
    assert!(decode(b"not gzip").is_err());
    let keys = (
        archive_key(&id, ms(2024, 3, 1)),
        quarter(ms(2024, 3, 31)),
        quarter(ms(2024, 4, 1)),
    );
    assert_eq!(
        keys,
        (
            format!("archive/sessions/2024/{id}.ndjson.gz"),
            "2024-Q1".into(),
            "2024-Q2".into()
        )
    );
}

#[test]
fn manifests_list_every_object_with_its_checksum_and_counts() {
    let m = Mem::new();
    let sessions = thirty_months(&m, 3);
    block_on(run(&m, ms(2026, 7, 15), &LifecycleConfig::default())).unwrap();
    let blobs = m.blobs.borrow();
    let mut listed = 0;
    for (key, bytes) in blobs
        .iter()
        .filter(|(k, _)| k.starts_with("archive/manifests/"))
    {
        let man: Value = serde_json::from_slice(bytes).unwrap();
        let q = key
            .trim_start_matches("archive/manifests/")
            .trim_end_matches(".json");
        assert_eq!(man["quarter"], q);
        let objects = man["objects"].as_array().unwrap();
        assert_eq!(man["sessions"], objects.len());
        let mut total = 0;
        for o in objects {
            let obj = &blobs[o["key"].as_str().unwrap()];
            assert_eq!(o["sha256"], sha256_hex(obj));
            assert_eq!(o["bytes"], obj.len());
            let lines = gunzip_lines(obj).unwrap();
            assert_eq!(o["rows"], lines.len());
            assert_eq!(o["points"].as_u64().unwrap() + 1, lines.len() as u64);
            total += o["points"].as_u64().unwrap();
            listed += 1;
        }
        assert_eq!(man["points"], total);
    }
    // 2024-01 .. 2025-07: seven quarters, nineteen sessions.
    assert_eq!(listed, 19);
    assert_eq!(
        blobs
            .keys()
            .filter(|k| k.starts_with("archive/manifests/"))
            .count(),
        7
    );
    let archived = &sessions[0].0;
    assert!(blobs.contains_key(&format!("archive/sessions/2024/{archived}.ndjson.gz")));
}

#[test]
fn a_damaged_archive_is_written_again_before_any_point_is_pruned() {
    let m = Mem::new();
    let start = ms(2024, 2, 3);
    let id = sid(start, 7);
    let ts: Vec<i64> = (1..=9).map(|k| start + k).collect();
    seed(&m, &id, "alice", &[], &ts, true, start);
    // Archived (12 months back), not yet pruned (24).
    block_on(run(&m, ms(2025, 8, 1), &LifecycleConfig::default())).unwrap();
    let key = archive_key(&id, start);
    m.blobs.borrow_mut().get_mut(&key).unwrap()[20] ^= 1;
    let cfg = LifecycleConfig::default();
    let later = ms(2026, 3, 1);
    let r = block_on(run(&m, later, &cfg)).unwrap();
    assert_eq!(r.pruned, 0, "{r:?}");
    let n = sql(
        &m.db,
        &Statement::new("SELECT count(*) AS n FROM session_points_2024", vec![]),
    )
    .unwrap();
    assert_eq!(n[0]["n"], 9, "nothing deleted");
    // The next run archives it again and then prunes.
    let r = block_on(run(&m, later, &cfg)).unwrap();
    assert_eq!((r.archived, r.pruned), (1, 1), "{r:?}");
    let n = sql(
        &m.db,
        &Statement::new("SELECT count(*) AS n FROM session_points_2024", vec![]),
    )
    .unwrap();
    assert_eq!(n[0]["n"], 0);
    let page = block_on(ended_points(&m, &id, 4, 2)).unwrap().unwrap();
    assert_eq!(
        page.points.iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![5, 6]
    );
    assert_eq!(page.last_seq, 9);
}

#[test]
fn sessions_with_points_still_to_flush_are_not_archived() {
    let m = Mem::new();
    let start = ms(2024, 2, 3);
    let id = sid(start, 8);
    seed(&m, &id, "alice", &[], &[start + 1, start + 2], true, start);
    m.db.execute_batch("UPDATE sessions_2024_02 SET point_count = 3")
        .unwrap();
    let r = block_on(run(&m, ms(2026, 7, 1), &LifecycleConfig::default())).unwrap();
    assert_eq!((r.archived, r.deferred, r.pruned), (0, 1, 0), "{r:?}");
    assert!(m.blobs.borrow().is_empty());
    let page = block_on(ended_points(&m, &id, 0, 10)).unwrap().unwrap();
    assert_eq!(page.points.len(), 2);
    assert!(block_on(ended_points(&m, &sid(start, 9), 0, 10))
        .unwrap()
        .is_none());
}
