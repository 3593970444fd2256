use serde_json::Value;

use crate::data::partition::Statement;
use crate::lifecycle::format::{archive_key, gunzip_lines, sha256_hex};
use crate::lifecycle::reads::EndedPoints;
use crate::lifecycle::store::mem::{run as sql, seed, sid, Mem};
use crate::lifecycle::tests::{ms, thirty_months};
use crate::lifecycle::{LifecycleConfig, Run};

#[test]
fn manifests_list_every_object_with_its_checksum_and_counts() {
    let m = Mem::new();
    let sessions = thirty_months(&m, 3);
    m.drive(Run::new(ms(2026, 7, 15), &LifecycleConfig::default()))
        .unwrap();
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
    m.drive(Run::new(ms(2025, 8, 1), &LifecycleConfig::default()))
        .unwrap();
    let key = archive_key(&id, start);
    m.blobs.borrow_mut().get_mut(&key).unwrap()[20] ^= 1;
    let cfg = LifecycleConfig::default();
    let later = ms(2026, 3, 1);
    let r = m.drive(Run::new(later, &cfg)).unwrap();
    assert_eq!(r.pruned, 0, "{r:?}");
    let n = sql(
        &m.db,
        &Statement::new("SELECT count(*) AS n FROM session_points_2024", vec![]),
    )
    .unwrap();
    assert_eq!(n[0]["n"], 9, "nothing deleted");
    // The next run archives it again and then prunes.
    let r = m.drive(Run::new(later, &cfg)).unwrap();
    assert_eq!((r.archived, r.pruned), (1, 1), "{r:?}");
    let n = sql(
        &m.db,
        &Statement::new("SELECT count(*) AS n FROM session_points_2024", vec![]),
    )
    .unwrap();
    assert_eq!(n[0]["n"], 0);
    let page = m.drive(EndedPoints::new(&id, 4, 2)).unwrap().unwrap();
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
    let r = m
        .drive(Run::new(ms(2026, 7, 1), &LifecycleConfig::default()))
        .unwrap();
    assert_eq!((r.archived, r.deferred, r.pruned), (0, 1, 0), "{r:?}");
    assert!(m.blobs.borrow().is_empty());
    let page = m.drive(EndedPoints::new(&id, 0, 10)).unwrap().unwrap();
    assert_eq!(page.points.len(), 2);
    assert!(m
        .drive(EndedPoints::new(&sid(start, 9), 0, 10))
        .unwrap()
        .is_none());
}
