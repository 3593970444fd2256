use super::*;
use crate::lifecycle::store::mem::sid;
use crate::lifecycle::tests::ms;
use crate::time::rfc3339;

fn summary(id: &str, n: u64) -> SessionSummary {
    SessionSummary {
        id: id.to_owned(),
        owner_id: "alice".into(),
        title: Some("t".into()),
        members: vec!["bob".into()],
        viewers: vec![],
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
