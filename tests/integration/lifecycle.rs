//! CONTRACT.md section 9 on runtimes of their own (their scheduled runs
//! move, archive and prune everything old in their D1, which would disturb
//! the shared server's tests): sessions with points across 30 months, the
//! scheduled handler run as of now and of seven months later, every point
//! read back once through the API (monthly, yearly and archived tiers), and
//! a user export checked line by line and by its SHA-256; and the same
//! seed on two runtimes, one run without interruption and one SIGKILLed in
//! the middle of a move and of an archive, ending with identical D1 and R2.

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sesh::time::now_ms;
use sesh_core::data::history::{write_points, write_session};
use sesh_core::data::partition::{Month, Statement};
use sesh_core::time::rfc3339;
use sesh_protocol::{SessionStatus, SessionSummary};
use sha2::{Digest, Sha256};

use crate::client::{call_at, create_session_at, d1_at, d1_batch_at, unique, TestFn, Ws};
use crate::harness::{service_token, user_token, Server};

/// The tests of this module, by name.
pub const TESTS: &[(&str, TestFn)] = crate::test_list!(
    "lifecycle",
    thirty_months_move_archive_prune_and_export,
    a_run_400_days_ahead_while_sessions_write_loses_no_row,
    one_export_at_a_time_and_files_expire,
    sigkill_mid_move_and_mid_archive_ends_as_an_uninterrupted_run
);

const POINTS: usize = 10;

// A session and its points written to D1 as a flush at `write_now` does.
fn seed(id: &str, owner: &str, members: &[String], ts: &[i64], write_now: i64) -> Vec<Statement> {
    let started = sesh_core::data::history::v7_time(id).expect("v7 id");
    let points: Vec<(i64, String)> = ts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p = serde_json::json!({"seq": i + 1, "userId": owner, "kind": "k",
                "value": i as f64 / 2.0, "ts": t});
            (*t, p.to_string())
        })
        .collect();
    let rec = SessionSummary {
        id: id.to_owned(),
        owner_id: owner.to_owned(),
        title: Some("old".into()),
        members: members.to_vec(),
        viewers: vec![],
        metadata: Map::new(),
        status: SessionStatus::Ended,
        started_at: rfc3339(started),
        ended_at: Some(rfc3339(started + 60_000)),
        point_count: ts.len() as u64,
        last_seq: ts.len() as u64,
        stats: Default::default(),
    };
    let mut out = Vec::new();
    for w in write_points(id, &points, write_now)
        .into_iter()
        .chain([write_session(&rec, write_now).expect("an RFC 3339 start")])
    {
        out.extend(w.ensure.statements);
        out.extend(w.statements);
    }
    out
}

async fn all_points(base: &str, id: &str, token: &str) -> Vec<(u64, i64)> {
    paged_points(base, id, token, 3).await
}

// Every point of a session through the API, `limit` per page, checking
// `lastSeq` at the end.
async fn paged_points(base: &str, id: &str, token: &str, limit: usize) -> Vec<(u64, i64)> {
    let mut out: Vec<(u64, i64)> = Vec::new();
    loop {
        let after = out.last().map_or(0, |p| p.0);
        let a = call_at(
            base,
            "GET",
            &format!("/v1/sessions/{id}/points?afterSeq={after}&limit={limit}"),
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
        if page.len() < limit {
            assert_eq!(a.body["lastSeq"], out.len() as u64, "{id}");
            return out;
        }
    }
}

// A client whose requests fail instead of hanging when a run never ends.
fn scheduled_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(180))
        .build()
        .expect("client")
}

// The scheduled handler as of `time`, with the server's log on failure.
async fn run_scheduled(server: &Server, time: i64) {
    let url = format!(
        "{}/cdn-cgi/handler/scheduled?cron=*/15+*+*+*+*&time={time}",
        server.base
    );
    let resp = match scheduled_client().get(url).send().await {
        Ok(r) => r,
        Err(e) => panic!(
            "scheduled run: {e}\n--- server log (tail) ---\n{}",
            server.log_tail()
        ),
    };
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
    // A retired session's stats come from its points: monthly, yearly, and
    // the archive once pruned.
    let want_stats =
        serde_json::json!({"k": {"count": 10, "sum": 22.5, "min": 0.0, "max": 4.5, "last": 4.5}});
    for i in [3, 15, 27] {
        let id = &sessions[i].0;
        let a = call_at(
            &base,
            "GET",
            &format!("/v1/sessions/{id}"),
            Some(&tu),
            None,
            &[],
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.body["stats"], want_stats, "session {i} months back");
    }
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
    // A bound on waiting, not a timing claim: a loaded machine is slow.
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let a = call_at(&base, "GET", &status_path, Some(&svc), None, &[]).await;
        assert_eq!(a.status, 200, "{}", a.text);
        status = a.body.clone();
        match status["status"].as_str().unwrap() {
            "done" => break,
            "failed" => panic!("export failed: {status}\n{}", server.log_tail()),
            _ => {
                // Before done it is 409; the export may finish between the
                // two calls, and then the file comes (not JSON).
                let early = reqwest::Client::new()
                    .get(format!("{base}{status_path}/download"))
                    .bearer_auth(&tu)
                    .send()
                    .await
                    .unwrap();
                if early.status().as_u16() != 200 {
                    assert_eq!(early.status().as_u16(), 409);
                    let body: Value = early.json().await.unwrap();
                    assert_eq!(body["error"]["code"], "export_not_ready", "{body}");
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
    expect.sort_by_key(|(id, _)| sesh_core::data::history::v7_time(id));
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

// The SIGKILL test's runtimes: partition moves three rows per statement
// and runs of at most 150 round trips, so that moving 18 months takes
// about six runs and archiving the 72 cold sessions three: a kill in a run
// lands in the middle of the step.
const KILL_VARS: &[(&str, &str)] = &[
    ("LIFECYCLE_MOVE_CHUNK", "2"),
    ("LIFECYCLE_MAX_CALLS", "150"),
];
const KILL_MONTHS: i64 = 30;
const KILL_PER_MONTH: i64 = 4;
const KILL_POINTS: i64 = 6;

// A session's id and its points as (seq, ts).
type Expected = (String, Vec<(u64, i64)>);

// Sessions `KILL_PER_MONTH` a month over the last `KILL_MONTHS` months,
// owned by `u` with `v` as a member, `KILL_POINTS` points each, flushed
// when they happened: the statements and each session's (id, points).
fn kill_seed(u: &str, v: &str, now: i64) -> (Vec<Vec<Statement>>, Vec<Expected>) {
    let this = Month::of(now).index();
    let (mut batches, mut sessions) = (Vec::new(), Vec::new());
    for back in 0..KILL_MONTHS {
        for k in 0..KILL_PER_MONTH {
            let start = Month::from_index(this - back).start_ms() + (10 + k) * 86_400_000 + back;
            let start = start.min(now - 3_600_000 - k);
            let id = sesh::ids::new_session_id(start);
            let ts: Vec<i64> = (1..=KILL_POINTS).map(|i| start + i * 60_000).collect();
            batches.push(seed(&id, u, &[v.to_owned()], &ts, start));
            let want = ts.iter().enumerate().map(|(i, t)| (i as u64 + 1, *t));
            sessions.push((id, want.collect()));
        }
    }
    (batches, sessions)
}

// Everything the lifecycle can touch: each D1 table (but the runtime's
// own and the migrations log, which holds wall-clock times) with its rows
// as sorted JSON text, and the archive bucket's objects with their sizes
// and SHA-256.
async fn state(base: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let names = d1_at(
        base,
        "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, 4) != '_cf_' \
         AND name NOT LIKE 'sqlite%' AND name != 'd1_migrations' ORDER BY name",
    )
    .await;
    let mut out = std::collections::BTreeMap::new();
    for n in names.iter().filter_map(|r| r["name"].as_str()) {
        let mut rows: Vec<String> = d1_at(base, &format!("SELECT * FROM {n}"))
            .await
            .iter()
            .map(Value::to_string)
            .collect();
        rows.sort();
        out.insert(n.to_owned(), rows);
    }
    let r2 = reqwest::get(format!("{base}/__test/r2?prefix="))
        .await
        .expect("r2 listing");
    assert_eq!(r2.status().as_u16(), 200);
    let listing: Value = r2.json().await.expect("r2 listing JSON");
    let objects = listing["objects"].as_array().cloned().unwrap_or_default();
    out.insert("r2:".into(), objects.iter().map(Value::to_string).collect());
    out
}

// Scheduled runs as of `now` until one changes nothing (judged by the
// progress tables and the tables left, then checked on the whole state);
// the end state.
async fn run_to_end(server: &Server, now: i64) -> std::collections::BTreeMap<String, Vec<String>> {
    let progress = "SELECT (SELECT count(*) FROM partitions) || ',' || \
        (SELECT count(*) || ',' || coalesce(sum(phase = 'done'), 0) || ',' || coalesce(sum(verified), 0) \
         FROM partition_moves) || ',' || (SELECT count(*) || ',' || coalesce(sum(verified + pruned + \
         manifested), 0) FROM archives) || ',' || (SELECT count(*) FROM rollup_marks) AS n";
    let fingerprint = || async { d1_at(&server.base, progress).await[0]["n"].clone() };
    let mut last = fingerprint().await;
    for _ in 0..40 {
        run_scheduled(server, now).await;
        let next = fingerprint().await;
        if next == last {
            let end = state(&server.base).await;
            run_scheduled(server, now).await;
            assert_eq!(
                state(&server.base).await,
                end,
                "a further run changes nothing"
            );
            return end;
        }
        last = next;
    }
    panic!("the lifecycle did not settle in 40 runs");
}

// Whether a scheduled run is stopped at the armed hang; `arm` arms it that
// many D1/R2 calls into the next run.
async fn hang(server: &Server, arm: Option<u32>) -> bool {
    let path = arm.map_or_else(
        || "/__test/hang".to_owned(),
        |n| format!("/__test/hang?after={n}"),
    );
    let a = call_at(&server.base, "POST", &path, None, None, &[]).await;
    match a.body["hung"].as_bool() {
        Some(hung) if a.status == 200 => hung,
        _ => panic!("hang: {} {}\n{}", a.status, a.text, server.log_tail()),
    }
}

// Starts a scheduled run as of `now` that stops before its call `calls + 1`
// (the test build's hang), waits until it is stopped there and kills the
// runtime with SIGKILL, then starts it again on the same state: a kill at
// a known point inside a run that did part of its work, whatever the
// machine's speed. Answers the restarted runtime.
async fn kill_mid_run(mut server: Server, now: i64, calls: u32) -> Server {
    assert!(!hang(&server, Some(calls)).await, "armed, not yet stopped");
    let url = format!(
        "{}/cdn-cgi/handler/scheduled?cron=*/15+*+*+*+*&time={now}",
        server.base
    );
    let run =
        tokio::spawn(async move { scheduled_client().get(url).send().await.map(|r| r.status()) });
    let t0 = Instant::now();
    while !hang(&server, None).await {
        assert!(
            !run.is_finished(),
            "the run ended before its call {}\n{}",
            calls + 1,
            server.log_tail()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the run did not reach its call {} in 2 minutes\n{}",
            calls + 1,
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server = tokio::task::spawn_blocking(move || {
        server.crash_and_restart();
        server
    })
    .await
    .unwrap();
    run.abort();
    assert!(
        !hang(&server, None).await,
        "the restarted runtime is not stopped"
    );
    server
}

async fn sigkill_mid_move_and_mid_archive_ends_as_an_uninterrupted_run() {
    // Fails instead of hanging if a runtime stops answering.
    tokio::time::timeout(Duration::from_secs(600), sigkill_test())
        .await
        .expect("the SIGKILL test finished within 10 minutes");
}

async fn sigkill_test() {
    let starting = [0, 1].map(|_| tokio::task::spawn_blocking(|| Server::start(KILL_VARS)));
    let [reference, victim] = starting;
    let (reference, victim) = (reference.await.unwrap(), victim.await.unwrap());
    let (u, v) = (unique("kill-u"), unique("kill-v"));
    let tu = user_token(&u, "enterprise");
    let now = now_ms();
    let this = Month::of(now).index();
    let (batches, sessions) = kill_seed(&u, &v, now);
    for b in &batches {
        d1_batch_at(&reference.base, b).await;
        d1_batch_at(&victim.base, b).await;
    }
    // Monthly tables of `prefix` 12 or more months old (due to move).
    let oldest_kept = Month::from_index(this - 11).suffix();
    let left = |prefix: &str| {
        format!(
            "SELECT count(*) AS n FROM partitions WHERE name GLOB \
             '{prefix}[0-9][0-9][0-9][0-9]_[0-9][0-9]' AND name < '{prefix}{oldest_kept}'"
        )
    };
    let cold = (KILL_MONTHS - 12) * KILL_PER_MONTH;
    let pruned = (KILL_MONTHS - 24) * KILL_PER_MONTH;

    let expected = run_to_end(&reference, now).await;
    let points_tables = |s: &std::collections::BTreeMap<String, Vec<String>>| {
        s.keys()
            .filter(|k| k.starts_with("session_points_"))
            .cloned()
            .collect::<Vec<_>>()
    };
    // The reference did all of it: 18 months moved, every cold session
    // archived, the oldest pruned, and the objects and manifests in R2.
    assert_eq!(count(&reference.base, &left("session_points_")).await, 0);
    assert!(
        points_tables(&expected).len() >= 12,
        "{:?}",
        points_tables(&expected)
    );
    assert_eq!(
        count(
            &reference.base,
            "SELECT count(*) AS n FROM archives WHERE verified = 1"
        )
        .await,
        cold
    );
    assert_eq!(
        count(
            &reference.base,
            "SELECT count(*) AS n FROM archives WHERE pruned = 2"
        )
        .await,
        pruned
    );
    let objects = &expected["r2:"];
    assert!(
        objects.len() as i64 > cold && objects.iter().any(|o| o.contains("archive/manifests/")),
        "{objects:?}"
    );
    drop(reference);

    // Killed halfway into the first run, while months are being moved (a
    // run moves a sixth of them).
    let victim = kill_mid_run(victim, now, 75).await;
    let moving = "SELECT count(*) + coalesce(sum(phase = 'done') + sum(k1 IS NOT NULL) + \
        sum(verified), 0) AS n FROM partition_moves";
    assert!(
        count(&victim.base, moving).await > 0,
        "the killed run had begun the moves"
    );
    let moves_left = count(&victim.base, &left("session_points_")).await;
    assert!(
        moves_left > 0,
        "the kill landed in the middle of the moves: {moves_left} months left"
    );
    assert_eq!(
        count(&victim.base, "SELECT count(*) AS n FROM archives").await,
        0,
        "nothing archived before the moves are done"
    );
    // Mid-move, every point is readable once, from the monthly or the
    // yearly copy.
    for (id, want) in &sessions {
        assert_eq!(
            &paged_points(&victim.base, id, &tu, 5).await,
            want,
            "mid-move: {id}"
        );
    }

    // Killed while cold sessions are being archived (a run archives a third
    // of them), once the moves are done.
    for _ in 0..20 {
        if count(&victim.base, &left("session_points_")).await == 0 {
            break;
        }
        run_scheduled(&victim, now).await;
    }
    let archived_before = count(&victim.base, "SELECT count(*) AS n FROM archives").await;
    let victim = kill_mid_run(victim, now, 60).await;
    for prefix in ["sessions_", "session_members_", "session_points_"] {
        assert_eq!(
            count(&victim.base, &left(prefix)).await,
            0,
            "{prefix} moved"
        );
    }
    let archived = count(&victim.base, "SELECT count(*) AS n FROM archives").await;
    assert!(
        archived > archived_before && archived < cold,
        "the kill landed in the middle of the archives: {archived} of {cold}"
    );
    for (id, want) in &sessions {
        assert_eq!(
            &paged_points(&victim.base, id, &tu, 5).await,
            want,
            "mid-archive: {id}"
        );
    }

    // Run again until done: the same tables, rows, archive rows, objects
    // and manifests as the uninterrupted run, and every point once.
    let got = run_to_end(&victim, now).await;
    let names =
        |s: &std::collections::BTreeMap<String, Vec<String>>| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&got), names(&expected), "the same tables");
    for (name, rows) in &expected {
        assert_eq!(got[name].len(), rows.len(), "rows of {name}");
        assert_eq!(&got[name], rows, "{name}");
    }
    for (id, want) in &sessions {
        assert_eq!(
            &paged_points(&victim.base, id, &tu, 5).await,
            want,
            "after: {id}"
        );
    }
    drop(victim);
}

// The distinct seqs of a session's points in D1, over every points table,
// and how many distinct (seq) there are against how many rows.
async fn d1_point_seqs(base: &str, id: &str) -> Vec<u64> {
    let mut seqs = Vec::new();
    for t in tables(base)
        .await
        .into_iter()
        .filter(|t| t.starts_with("session_points_"))
    {
        seqs.extend(
            d1_at(
                base,
                &format!("SELECT seq FROM {t} WHERE session_id = '{id}'"),
            )
            .await
            .iter()
            .map(|r| r["seq"].as_u64().unwrap()),
        );
    }
    seqs.sort_unstable();
    seqs.dedup();
    seqs
}

// Points `from..=to` over the socket, each acked with its seq.
async fn send_points(ws: &mut Ws, from: u64, to: u64) {
    for i in from..=to {
        ws.send(&serde_json::json!({"type": "point", "id": format!("p{i}"), "kind": "k"}))
            .await;
        assert_eq!(ws.frame().await["seq"], i);
    }
}

// The session through the list, its GET and its points: each row once.
async fn read_once(base: &str, id: &str, token: &str, n: u64) {
    let list = call_at(
        base,
        "GET",
        "/v1/sessions?limit=100",
        Some(token),
        None,
        &[],
    )
    .await;
    assert_eq!(list.status, 200, "{}", list.text);
    let rows: Vec<&Value> = list.body["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter(|s| s["id"] == id)
        .collect();
    assert_eq!(rows.len(), 1, "listed once: {}", list.text);
    assert_eq!(rows[0]["status"], "ended", "{}", list.text);
    assert_eq!(rows[0]["pointCount"], n, "{}", list.text);
    let one = call_at(
        base,
        "GET",
        &format!("/v1/sessions/{id}"),
        Some(token),
        None,
        &[],
    )
    .await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.body["pointCount"], n, "{}", one.text);
    assert_eq!(one.body["status"], "ended", "{}", one.text);
    let seqs: Vec<u64> = paged_points(base, id, token, 4)
        .await
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
}

// CONTRACT.md section 9: the scheduled handler as of ~400 days ahead moves
// the month the live session still writes; its later flushes land all the
// same (the isolate's partition cache forgets a table whose batch failed),
// the session row stays one row, and the next run moves the stragglers.
async fn a_run_400_days_ahead_while_sessions_write_loses_no_row() {
    let server = tokio::task::spawn_blocking(|| Server::start(&[("FLUSH_INTERVAL_MS", "200")]))
        .await
        .unwrap();
    let base = server.base.clone();
    let a = unique("skew");
    let t = user_token(&a, "pro");
    let id = create_session_at(&base, &t, &[]).await;
    let mut ws = Ws::join_at(&base, &id, &t).await;
    ws.frame().await;
    send_points(&mut ws, 1, 5).await;
    let landed = |n: u64| {
        let (base, id) = (base.clone(), id.clone());
        async move {
            for _ in 0..150 {
                if d1_point_seqs(&base, &id).await.len() as u64 == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!(
                "{n} points never reached D1: {:?}",
                d1_point_seqs(&base, &id).await
            );
        }
    };
    landed(5).await;
    let ahead = now_ms() + 400 * 86_400_000;
    let month = Month::of(now_ms()).suffix();
    for _ in 0..2 {
        run_scheduled(&server, ahead).await;
    }
    let moved = tables(&base).await;
    assert!(
        !moved.iter().any(|n| n.ends_with(&month)),
        "this month moved: {moved:?}"
    );
    send_points(&mut ws, 6, 10).await;
    let end = call_at(
        &base,
        "POST",
        &format!("/v1/sessions/{id}/end"),
        Some(&t),
        None,
        &[],
    )
    .await;
    assert_eq!(end.status, 200, "{}", end.text);
    landed(10).await;
    read_once(&base, &id, &t, 10).await;
    for _ in 0..2 {
        run_scheduled(&server, ahead).await;
    }
    let after = tables(&base).await;
    assert!(
        !after.iter().any(|n| n.ends_with(&month)),
        "the stragglers moved: {after:?}"
    );
    read_once(&base, &id, &t, 10).await;
    drop(server);
}

// The R2 keys under `prefix` (the test build's listing).
async fn r2_keys(base: &str, prefix: &str) -> Vec<String> {
    let r2 = reqwest::get(format!("{base}/__test/r2?prefix={prefix}"))
        .await
        .expect("r2 listing");
    assert_eq!(r2.status().as_u16(), 200);
    let listing: Value = r2.json().await.expect("r2 listing JSON");
    listing["objects"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|o| o["key"].as_str().unwrap_or_default().to_owned())
        .collect()
}

// CONTRACT.md section 9: while a user's export is pending or running, a
// POST (two at once too) answers it; a done export's file is deleted by
// the scheduled run as of EXPORT_RETENTION_DAYS later: `expired`, 404.
async fn one_export_at_a_time_and_files_expire() {
    let server = tokio::task::spawn_blocking(|| {
        Server::start(&[("EXPORT_STEP_POINTS", "5"), ("EXPORT_RETENTION_DAYS", "7")])
    })
    .await
    .unwrap();
    let base = server.base.clone();
    let u = unique("exp-u");
    let tu = user_token(&u, "enterprise");
    let start = now_ms() - 3_600_000;
    let id = sesh::ids::new_session_id(start);
    let ts: Vec<i64> = (1..=200).map(|k| start + k).collect();
    d1_batch_at(&base, &seed(&id, &u, &[], &ts, start)).await;
    let path = format!("/v1/users/{u}/exports");
    let (a, b) = tokio::join!(
        call_at(&base, "POST", &path, Some(&tu), None, &[]),
        call_at(&base, "POST", &path, Some(&tu), None, &[])
    );
    assert_eq!((a.status, b.status), (202, 202), "{} {}", a.text, b.text);
    let export = a.body["id"].as_str().unwrap().to_owned();
    assert_eq!(b.body["id"], export.as_str(), "two at once give one export");
    let again = call_at(&base, "POST", &path, Some(&tu), None, &[]).await;
    assert_eq!(again.status, 202, "{}", again.text);
    assert!(
        again.body["status"] != "done",
        "40 steps are still under way: {}",
        again.text
    );
    assert_eq!(again.body["id"], export.as_str(), "{}", again.text);
    assert_eq!(
        count(
            &base,
            &format!("SELECT count(*) AS n FROM exports WHERE user_id = '{u}'")
        )
        .await,
        1,
        "one export row"
    );
    let status_path = format!("{path}/{export}");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut status = Value::Null;
    while Instant::now() < deadline {
        let s = call_at(&base, "GET", &status_path, Some(&tu), None, &[]).await;
        status = s.body.clone();
        if status["status"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(status["status"], "done", "{status}\n{}", server.log_tail());
    let prefix = format!("exports/{export}/");
    assert!(!r2_keys(&base, &prefix).await.is_empty());
    // A week less a few minutes after: kept.
    run_scheduled(&server, now_ms() + 7 * 86_400_000 - 600_000).await;
    let kept = call_at(&base, "GET", &status_path, Some(&tu), None, &[]).await;
    assert_eq!(kept.body["status"], "done", "{}", kept.text);
    run_scheduled(&server, now_ms() + 8 * 86_400_000).await;
    let gone = call_at(&base, "GET", &status_path, Some(&tu), None, &[]).await;
    assert_eq!(gone.status, 200, "{}", gone.text);
    assert_eq!(gone.body["status"], "expired", "{}", gone.text);
    call_at(
        &base,
        "GET",
        &format!("{status_path}/download"),
        Some(&tu),
        None,
        &[],
    )
    .await
    .assert_error(404, "not_found");
    assert_eq!(r2_keys(&base, &prefix).await, Vec::<String>::new());
    // A new export may start now.
    let next = call_at(&base, "POST", &path, Some(&tu), None, &[]).await;
    assert_eq!(next.status, 202, "{}", next.text);
    assert_ne!(next.body["id"], export.as_str());
    drop(server);
}
