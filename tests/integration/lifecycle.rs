//! CONTRACT.md section 9 on a runtime of its own (its scheduled runs move,
//! archive and prune everything old in its D1, which would disturb the
//! shared server's tests): sessions with points across 30 months, the
//! scheduled handler run as of now and of seven months later, every point
//! read back once through the API (monthly, yearly and archived tiers), and
//! a user export checked line by line and by its SHA-256.

use std::io::Read;

use serde_json::{Map, Value};
use sesh::core::history::{write_points, write_session, SessionRecord};
use sesh::core::partition::{Month, Statement};
use sesh::time::now_ms;
use sesh_protocol::SessionStatus;
use sha2::{Digest, Sha256};

use crate::client::{call_at, d1_at, d1_batch_at, unique, TestFn};
use crate::harness::{service_token, user_token, Server};

/// The tests of this module, by name.
pub const TESTS: &[(&str, TestFn)] =
    crate::test_list!("lifecycle", thirty_months_move_archive_prune_and_export);

const POINTS: usize = 10;

// A session and its points written to D1 as a flush at `write_now` does.
fn seed(id: &str, owner: &str, members: &[String], ts: &[i64], write_now: i64) -> Vec<Statement> {
    let started = sesh::core::history::v7_time(id).expect("v7 id");
    let points: Vec<(i64, String)> = ts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p = serde_json::json!({"seq": i + 1, "userId": owner, "kind": "k",
                "value": i as f64 / 2.0, "ts": t});
            (*t, p.to_string())
        })
        .collect();
    let meta = Map::new();
    let rec = SessionRecord {
        id,
        owner_id: owner,
        title: Some("old"),
        members,
        metadata: &meta,
        status: SessionStatus::Ended,
        started_at: started,
        ended_at: Some(started + 60_000),
        point_count: ts.len() as u64,
    };
    let mut out = Vec::new();
    for w in write_points(id, &points, write_now)
        .into_iter()
        .chain([write_session(&rec, write_now)])
    {
        out.extend(w.ensure.statements);
        out.extend(w.statements);
    }
    out
}

async fn all_points(base: &str, id: &str, token: &str) -> Vec<(u64, i64)> {
    let mut out: Vec<(u64, i64)> = Vec::new();
    loop {
        let after = out.last().map_or(0, |p| p.0);
        let a = call_at(
            base,
            "GET",
            &format!("/v1/sessions/{id}/points?afterSeq={after}&limit=3"),
            Some(token),
            None,
            &[],
        )
        .await;
        assert_eq!(a.status, 200, "{id}: {}", a.text);
        let page = a.body["points"].as_array().expect("points").clone();
        out.extend(
            page.iter()
                .map(|p| (p["seq"].as_u64().unwrap(), p["ts"].as_i64().unwrap())),
        );
        if page.len() < 3 {
            assert_eq!(a.body["lastSeq"], out.len() as u64, "{id}");
            return out;
        }
    }
}

// The scheduled handler as of `time`, with the server's log on failure.
async fn run_scheduled(server: &Server, time: i64) {
    let url = format!(
        "{}/cdn-cgi/handler/scheduled?cron=*/15+*+*+*+*&time={time}",
        server.base
    );
    let resp = reqwest::get(url).await.expect("scheduled run");
    assert!(
        resp.status().is_success(),
        "scheduled: {}\n--- server log (tail) ---\n{}",
        resp.status(),
        server.log_tail()
    );
}

async fn tables(base: &str) -> Vec<String> {
    d1_at(
        base,
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'session%' ORDER BY name",
    )
    .await
    .iter()
    .map(|r| r["name"].as_str().unwrap().to_owned())
    .collect()
}

async fn count(base: &str, sql: &str) -> i64 {
    d1_at(base, sql).await[0]["n"].as_i64().unwrap()
}

async fn thirty_months_move_archive_prune_and_export() {
    let server = tokio::task::spawn_blocking(|| {
        Server::start(&[("LIFECYCLE_MOVE_CHUNK", "7"), ("EXPORT_STEP_POINTS", "40")])
    })
    .await
    .unwrap();
    let base = server.base.clone();
    let (u, v) = (unique("life-u"), unique("life-v"));
    let tu = user_token(&u, "enterprise");
    let now = now_ms();
    let this = Month::of(now).index();
    // Session i started i months back (mid-month), ten points a minute
    // apart, flushed when it happened; v owns one with u as a member and
    // one without.
    let mut sessions: Vec<(String, Vec<i64>)> = Vec::new();
    for back in 0..30i64 {
        let start = Month::from_index(this - back).start_ms() + 10 * 86_400_000 + back;
        let start = start.min(now - 3_600_000);
        let id = sesh::ids::new_session_id(start);
        let ts: Vec<i64> = (1..=POINTS as i64).map(|k| start + k * 60_000).collect();
        d1_batch_at(&base, &seed(&id, &u, &[], &ts, start)).await;
        sessions.push((id, ts));
    }
    let shared_at = Month::from_index(this - 26).start_ms() + 86_400_000;
    let shared = sesh::ids::new_session_id(shared_at);
    let shared_ts = vec![shared_at + 1, shared_at + 2];
    d1_batch_at(
        &base,
        &seed(&shared, &v, std::slice::from_ref(&u), &shared_ts, shared_at),
    )
    .await;
    let other = sesh::ids::new_session_id(shared_at + 5);
    d1_batch_at(&base, &seed(&other, &v, &[], &[shared_at + 9], shared_at)).await;
    sessions.push((shared.clone(), shared_ts));

    let want: Vec<Vec<(u64, i64)>> = sessions
        .iter()
        .map(|(_, ts)| {
            ts.iter()
                .enumerate()
                .map(|(i, t)| (i as u64 + 1, *t))
                .collect()
        })
        .collect();
    for ((id, _), w) in sessions.iter().zip(&want) {
        assert_eq!(&all_points(&base, id, &tu).await, w, "before: {id}");
    }

    // As of now: months 12 or more back move, sessions started 12 or more
    // months back are archived, 24 or more back pruned. Repeated runs at
    // the same time finish whatever one run left.
    for _ in 0..3 {
        run_scheduled(&server, now).await;
    }
    let t = tables(&base).await;
    let cutoff = Month::from_index(this - 12);
    for name in &t {
        if let Some(m) = name.rsplit_once('_').and_then(|(rest, mm)| {
            let (_, yyyy) = rest.rsplit_once('_')?;
            Month::parse(&format!("{yyyy}_{mm}"))
        }) {
            assert!(m > cutoff, "{name} should have moved: {t:?}");
        }
    }
    let year = Month::from_index(this - 29).year();
    assert!(t.contains(&format!("session_points_{year}")), "{t:?}");
    assert!(t.contains(&format!("sessions_{year}")), "{t:?}");
    // 18 of u's sessions and the two of v's are cold.
    assert_eq!(
        count(
            &base,
            "SELECT count(*) AS n FROM archives WHERE verified = 1"
        )
        .await,
        20
    );
    assert_eq!(
        count(&base, "SELECT count(*) AS n FROM archives WHERE pruned = 2").await,
        8
    );
    let pruned_id = &sessions[27].0;
    let mut left = 0;
    for name in t.iter().filter(|n| n.starts_with("session_points_")) {
        left += count(
            &base,
            &format!("SELECT count(*) AS n FROM {name} WHERE session_id = '{pruned_id}'"),
        )
        .await;
    }
    assert_eq!(left, 0, "pruned points are gone from D1");
    for ((id, _), w) in sessions.iter().zip(&want) {
        assert_eq!(&all_points(&base, id, &tu).await, w, "after: {id}");
    }

    // Seven months on: more months move, more sessions are archived and
    // pruned; still every point once.
    let later = Month::from_index(this + 7).start_ms() + 86_400_000;
    for _ in 0..3 {
        run_scheduled(&server, later).await;
    }
    assert_eq!(
        count(&base, "SELECT count(*) AS n FROM archives WHERE pruned = 2").await,
        15
    );
    for ((id, _), w) in sessions.iter().zip(&want) {
        assert_eq!(&all_points(&base, id, &tu).await, w, "later: {id}");
    }

    // Export: others may not, the user and a service may.
    let stranger = user_token(&unique("x"), "pro");
    let path = format!("/v1/users/{u}/exports");
    call_at(&base, "POST", &path, Some(&stranger), None, &[])
        .await
        .assert_error(403, "forbidden");
    let missing = format!("{path}/0190a6b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b");
    call_at(&base, "GET", &missing, Some(&tu), None, &[])
        .await
        .assert_error(404, "not_found");
    let created = call_at(&base, "POST", &path, Some(&tu), None, &[]).await;
    assert_eq!(created.status, 202, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert!(
        ["pending", "running"].contains(&created.body["status"].as_str().unwrap()),
        "{}",
        created.text
    );
    let status_path = format!("{path}/{id}");
    let svc = service_token("backend");
    let mut status = Value::Null;
    for _ in 0..240 {
        let a = call_at(&base, "GET", &status_path, Some(&svc), None, &[]).await;
        assert_eq!(a.status, 200, "{}", a.text);
        status = a.body.clone();
        match status["status"].as_str().unwrap() {
            "done" => break,
            "failed" => panic!("export failed: {status}\n{}", server.log_tail()),
            _ => {
                let early = call_at(
                    &base,
                    "GET",
                    &format!("{status_path}/download"),
                    Some(&tu),
                    None,
                    &[],
                )
                .await;
                if early.status != 200 {
                    early.assert_error(409, "export_not_ready");
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    assert_eq!(
        status["status"],
        "done",
        "{status}\n--- server log (tail) ---\n{}",
        server.log_tail()
    );
    let resp = reqwest::Client::new()
        .get(format!("{base}{status_path}/download"))
        .bearer_auth(&tu)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let bytes = resp.bytes().await.unwrap().to_vec();
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(status["sha256"], sha.as_str());
    assert_eq!(status["bytes"], bytes.len());
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .unwrap();
    let mut got: Vec<(String, Vec<(u64, i64)>)> = Vec::new();
    let mut metrics = 0;
    for line in text.lines() {
        let l: Value = serde_json::from_str(line).unwrap();
        match l["type"].as_str().unwrap() {
            "session" => got.push((l["id"].as_str().unwrap().to_owned(), Vec::new())),
            "point" => {
                let cur = got.last_mut().unwrap();
                assert_eq!(l["sessionId"], cur.0.as_str());
                cur.1
                    .push((l["seq"].as_u64().unwrap(), l["ts"].as_i64().unwrap()));
            }
            "metric" => metrics += 1,
            other => panic!("{other}"),
        }
    }
    let mut expect: Vec<(String, Vec<(u64, i64)>)> = sessions
        .iter()
        .map(|(id, _)| id.clone())
        .zip(want.iter().cloned())
        .collect();
    expect.sort_by_key(|(id, _)| sesh::core::history::v7_time(id));
    assert_eq!(got, expect, "exactly u's sessions and points");
    assert_eq!(status["sessions"], expect.len());
    assert_eq!(status["points"], 30 * POINTS + 2);
    let day_rows = count(
        &base,
        &format!("SELECT count(*) AS n FROM metrics_day WHERE user_id = '{u}'"),
    )
    .await;
    assert_eq!(metrics, day_rows);
    assert!(metrics > 0, "the roll-ups ran before the export");
    drop(server);
}
