//! CONTRACT.md sections 5 (the list route, reads of retired sessions) and 8
//! (analytics) against local D1: sessions across 14 months, points across
//! 30 months, roll-ups run through the scheduled handler as of a chosen
//! time, and late points after D1 failed for a while.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use sesh::time::now_ms;
use sesh_core::data::history::{write_points, write_session};
use sesh_core::data::partition::Statement;
use sesh_core::data::rollup::{day_start, hour_start, month_start, week_start};
use sesh_core::time::rfc3339;
use sesh_protocol::{SessionStatus, SessionSummary};

use crate::client::{
    base, call_at, create_session_at, d1_at, d1_batch_at, get, run_scheduled_at, set_d1_failing_at,
    unique, TestFn,
};
use crate::harness::{service_token, user_token, Server};

/// The tests of this module, by name.
pub const TESTS: &[(&str, TestFn)] = crate::test_list!(
    "history",
    list_pages_through_250_sessions_across_14_months,
    list_rejects_bad_parameters,
    created_session_is_listed_at_once_with_the_stats_of_its_last_flush,
    retired_session_reads_back_from_d1,
    metrics_of_points_across_30_months_match_a_direct_computation,
    late_points_are_counted_after_the_next_run,
    metrics_are_for_the_user_or_a_service_only,
    an_ended_session_retires_its_storage_and_still_reads_back
);

const DAY: i64 = 86_400_000;
const MONTH: i64 = 30 * DAY;

/// Writes session rows (and their member rows) into D1 as the flush does,
/// each started at its own time.
async fn seed_sessions(sessions: &[(String, String, Vec<String>, i64, bool)]) {
    let now = now_ms();
    let mut stmts: Vec<Statement> = Vec::new();
    for (id, owner, members, started, ended) in sessions {
        let w = write_session(
            &SessionSummary {
                id: id.clone(),
                owner_id: owner.clone(),
                title: Some("seeded".into()),
                members: members.clone(),
                viewers: vec![],
                metadata: Map::new(),
                status: if *ended {
                    SessionStatus::Ended
                } else {
                    SessionStatus::Active
                },
                started_at: rfc3339(*started),
                ended_at: ended.then(|| rfc3339(*started + 1000)),
                point_count: 0,
                last_seq: 0,
                stats: BTreeMap::new(),
            },
            now,
        )
        .expect("an RFC 3339 start");
        stmts.extend(w.ensure.statements);
        stmts.extend(w.statements);
        if stmts.len() > 60 {
            d1_batch_at(base(), &stmts).await;
            stmts.clear();
        }
    }
    d1_batch_at(base(), &stmts).await;
}

async fn list_sessions_listing(q: &str, token: &str) -> (Vec<String>, Option<String>) {
    let a = get(&format!("/v1/sessions?{q}"), token).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let ids = a.body["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| {
            assert!(s.get("participants").is_none(), "no participants: {s}");
            s["id"].as_str().expect("id").to_owned()
        })
        .collect();
    (ids, a.body["nextCursor"].as_str().map(str::to_owned))
}

fn enc(s: &str) -> String {
    s.replace(':', "%3A").replace('+', "%2B")
}

async fn list_pages_through_250_sessions_across_14_months() {
    let (me, other) = (unique("lister"), unique("stranger"));
    let now = now_ms();
    let mut seeded = Vec::new();
    for i in 0..250i64 {
        // Spread over 14 months, newest a day ago; every third is another's
        // session with me as a member.
        let started = now - DAY - i * (14 * MONTH / 250);
        let id = sesh::ids::new_session_id(started);
        let (owner, members) = if i % 3 == 0 {
            (other.clone(), vec![me.clone()])
        } else {
            (me.clone(), Vec::new())
        };
        seeded.push((id, owner, members, started, i % 2 == 0));
    }
    // Someone else's session I am not in.
    let foreign = sesh::ids::new_session_id(now - 2 * DAY);
    seeded.push((
        foreign.clone(),
        other.clone(),
        Vec::new(),
        now - 2 * DAY,
        false,
    ));
    seed_sessions(&seeded).await;

    let token = user_token(&me, "pro");
    let window = format!(
        "from={}&to={}",
        enc(&rfc3339(now - 15 * MONTH)),
        enc(&rfc3339(now))
    );
    let mut seen = Vec::new();
    let mut q = format!("{window}&limit=17");
    loop {
        let (ids, next) = list_sessions_listing(&q, &token).await;
        assert!(ids.len() <= 17);
        seen.extend(ids);
        match next {
            Some(c) => q = format!("limit=17&cursor={c}"),
            None => break,
        }
    }
    let expected: Vec<String> = seeded[..250].iter().map(|s| s.0.clone()).collect();
    assert_eq!(seen.len(), 250, "no loss, no repeat");
    assert_eq!(seen, expected, "newest first");
    assert!(!seen.contains(&foreign));

    // Status filter and the default window (the last 30 days).
    let (ended, _) =
        list_sessions_listing(&format!("{window}&status=ended&limit=100"), &token).await;
    assert!(ended.iter().all(|id| {
        let i = expected.iter().position(|e| e == id).expect("known");
        i % 2 == 0
    }));
    let (recent, _) = list_sessions_listing("limit=100", &token).await;
    let recent_expected = seeded[..250]
        .iter()
        .filter(|s| s.3 >= now - 30 * DAY)
        .count();
    assert!(
        recent.len() >= recent_expected.saturating_sub(1) && recent.len() <= recent_expected + 1,
        "{} vs {recent_expected}",
        recent.len()
    );
}

async fn list_rejects_bad_parameters() {
    let t = user_token(&unique("u"), "free");
    for q in [
        "limit=0",
        "limit=101",
        "limit=x",
        "from=yesterday",
        "status=paused",
        "cursor=garbage",
        "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
    ] {
        get(&format!("/v1/sessions?{q}"), &t)
            .await
            .assert_error(400, "bad_request");
    }
    let a = get("/v1/sessions", &t).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body, json!({"sessions": []}));
}

async fn created_session_is_listed_at_once_with_the_stats_of_its_last_flush() {
    let owner = unique("owner");
    let member = unique("member");
    let (ot, mt) = (user_token(&owner, "pro"), user_token(&member, "pro"));
    let id = create_session_at(base(), &ot, &[&member]).await;
    let listed = |body: &Value| {
        body["sessions"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["id"] == id.as_str()).cloned())
    };
    // The row reaches D1 before the creation is answered, so the first list
    // after it has the session (well within FLUSH_INTERVAL_MS).
    let a = get("/v1/sessions?limit=5", &mt).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let found = listed(&a.body).expect("a new session is in its members' lists at once");
    assert_eq!(found["stats"], json!({}), "no points yet: {found}");
    assert!(found.get("participants").is_none(), "{found}");
    // Once flushed, a listed session's stats are the session object's.
    let points = json!({"points": [
        {"kind": "hr", "value": 0.1}, {"kind": "hr", "value": 0.2},
        {"kind": "note"}, {"kind": "speed", "value": -3.5}
    ]});
    let a = crate::client::post(&format!("/v1/sessions/{id}/points"), &ot, &points).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let live = get(&format!("/v1/sessions/{id}"), &ot).await.body["stats"].clone();
    assert_eq!(live["hr"]["count"], 2, "{live}");
    let mut seen = Value::Null;
    for _ in 0..40 {
        let a = get("/v1/sessions?limit=5", &mt).await;
        seen = listed(&a.body).map_or(Value::Null, |s| s["stats"].clone());
        if seen == live {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(seen, live, "listed stats equal the live ones after a flush");
}

async fn retired_session_reads_back_from_d1() {
    // D1 rows of a session whose object never existed here: exactly what
    // a retired session looks like from the gateway.
    let (owner, member, stranger) = (unique("o"), unique("m"), unique("s"));
    let started = now_ms() - 3 * MONTH;
    let id = sesh::ids::new_session_id(started);
    seed_sessions(&[(
        id.clone(),
        owner.clone(),
        vec![member.clone()],
        started,
        true,
    )])
    .await;
    let points: Vec<(i64, String)> = (1..=5)
        .map(|seq| {
            let ts = started + seq * DAY * 20;
            let p =
                json!({"seq": seq, "userId": owner, "kind": "hr", "value": seq as f64, "ts": ts});
            (ts, p.to_string())
        })
        .collect();
    let mut stmts = Vec::new();
    for w in write_points(&id, &points, now_ms()) {
        stmts.extend(w.ensure.statements);
        stmts.extend(w.statements);
    }
    stmts.push(Statement::new(
        format!(
            "UPDATE sessions_{} SET point_count = 5 WHERE id = ?1",
            sesh_core::time::month_suffix(started)
        ),
        vec![json!(id)],
    ));
    d1_batch_at(base(), &stmts).await;

    let a = get(&format!("/v1/sessions/{id}"), &user_token(&member, "pro")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "ended");
    assert_eq!(a.body["participants"], json!([]));
    assert_eq!(a.body["lastSeq"], 5);
    assert_eq!(
        a.body["stats"],
        json!({"hr": {"count": 5, "sum": 15.0, "min": 1.0, "max": 5.0, "last": 5.0}}),
        "stats computed from the points in D1"
    );
    let a = get(
        &format!("/v1/sessions/{id}/points?afterSeq=2&limit=2"),
        &user_token(&owner, "pro"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let seqs: Vec<i64> = a.body["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4], "across monthly partitions, in seq order");
    assert_eq!(a.body["lastSeq"], 5);
    get(&format!("/v1/sessions/{id}"), &user_token(&stranger, "pro"))
        .await
        .assert_error(403, "forbidden");
    let unknown = sesh::ids::new_session_id(started);
    get(
        &format!("/v1/sessions/{unknown}"),
        &user_token(&owner, "pro"),
    )
    .await
    .assert_error(404, "not_found");
}

/// Figures per (granularity, start, kind) computed directly from points
/// `(ts, kind, value)`.
type Figures = BTreeMap<(String, i64, String), (u64, u64, f64, f64, f64)>;

fn expected_figures(points: &[(i64, String, Option<f64>)]) -> Figures {
    let mut out: Figures = BTreeMap::new();
    for (ts, kind, value) in points {
        for (g, start) in [
            ("hour", hour_start(*ts)),
            ("day", day_start(*ts)),
            ("week", week_start(*ts)),
            ("month", month_start(*ts)),
        ] {
            let e = out.entry((g.to_owned(), start, kind.clone())).or_insert((
                0,
                0,
                0.0,
                f64::INFINITY,
                f64::NEG_INFINITY,
            ));
            e.0 += 1;
            if let Some(v) = value {
                e.1 += 1;
                e.2 += v;
                e.3 = e.3.min(*v);
                e.4 = e.4.max(*v);
            }
        }
    }
    out
}

async fn metrics_at(base: &str, user: &str, g: &str, from: i64, to: i64) -> Vec<Value> {
    let path = format!(
        "/v1/users/{user}/metrics?granularity={g}&from={}&to={}",
        enc(&rfc3339(from)),
        enc(&rfc3339(to))
    );
    let a = call_at(base, "GET", &path, Some(&service_token("svc")), None, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["granularity"], g);
    assert_eq!(a.body["userId"], user);
    a.body["buckets"].as_array().cloned().unwrap_or_default()
}

/// Asserts that the user's metrics at every granularity equal `points`.
async fn assert_metrics(base: &str, user: &str, points: &[(i64, String, Option<f64>)]) {
    let expected = expected_figures(points);
    let from = points.iter().map(|p| p.0).min().unwrap() - 40 * DAY;
    let to = points.iter().map(|p| p.0).max().unwrap() + 40 * DAY;
    for g in ["hour", "day", "week", "month"] {
        let buckets = metrics_at(base, user, g, from, to).await;
        let want: Vec<_> = expected.iter().filter(|(k, _)| k.0 == g).collect();
        assert_eq!(buckets.len(), want.len(), "{g}: {buckets:?}");
        for (b, ((_, start, kind), (count, vcount, sum, min, max))) in buckets.iter().zip(want) {
            assert_eq!(b["start"], rfc3339(*start), "{g}");
            assert_eq!(b["kind"], kind.as_str());
            assert_eq!(b["count"], *count, "{g} {b}");
            if *vcount == 0 {
                for f in ["sum", "min", "max", "avg"] {
                    assert_eq!(b[f], Value::Null, "{g} {f} {b}");
                }
            } else {
                let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-6;
                assert!(close(&b["sum"], *sum), "{g} sum {b}");
                assert!(close(&b["min"], *min), "{g} min {b}");
                assert!(close(&b["max"], *max), "{g} max {b}");
                assert!(close(&b["avg"], sum / *vcount as f64), "{g} avg {b}");
            }
        }
    }
}

/// Posts `points` (as `(ts, kind, value)`) to session `id` in batches.
async fn post_points(base: &str, id: &str, token: &str, points: &[(i64, String, Option<f64>)]) {
    for chunk in points.chunks(100) {
        let body: Vec<Value> = chunk
            .iter()
            .map(|(ts, kind, value)| match value {
                Some(v) => json!({"kind": kind, "value": v, "ts": ts}),
                None => json!({"kind": kind, "ts": ts}),
            })
            .collect();
        let a = call_at(
            base,
            "POST",
            &format!("/v1/sessions/{id}/points"),
            Some(token),
            Some(json!({ "points": body }).to_string().into_bytes()),
            &[],
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text);
    }
}

async fn end_session(base: &str, id: &str, token: &str) {
    let a = call_at(
        base,
        "POST",
        &format!("/v1/sessions/{id}/end"),
        Some(token),
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
}

/// Points across 30 months for two authors, a quarter without a value,
/// several in the same hours.
fn spread_points(now: i64, n: i64, salt: i64) -> Vec<(i64, String, Option<f64>)> {
    (0..n)
        .map(|i| {
            let ts = now - DAY - (i * 7 + salt) % 30 * MONTH - (i * 37 % 5) * 3_600_000 - i % 3;
            let kind = if i % 2 == 0 { "hr" } else { "pace" };
            let value = (i % 4 != 0).then_some((i % 17) as f64 - 3.5);
            (ts, kind.to_owned(), value)
        })
        .collect()
}

async fn metrics_of_points_across_30_months_match_a_direct_computation() {
    let (owner, member) = (unique("author"), unique("coauthor"));
    let (to, tm) = (user_token(&owner, "pro"), user_token(&member, "pro"));
    let id = create_session_at(base(), &to, &[&member]).await;
    let now = now_ms();
    let mine = spread_points(now, 240, 0);
    let theirs = spread_points(now, 60, 3);
    post_points(base(), &id, &to, &mine).await;
    post_points(base(), &id, &tm, &theirs).await;
    end_session(base(), &id, &to).await;

    // Old points landed in yearly partitions, recent ones in monthly.
    let tables: Vec<String> = d1_at(base(), "SELECT name FROM partitions")
        .await
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    let yearly = sesh_core::time::month_suffix(now - 25 * MONTH)[..4].to_owned();
    assert!(
        tables.contains(&format!("session_points_{yearly}")),
        "{tables:?}"
    );
    assert!(
        tables.contains(&format!(
            "session_points_{}",
            sesh_core::time::month_suffix(now - DAY)
        )),
        "{tables:?}"
    );

    run_scheduled_at(base(), now).await;
    assert_metrics(base(), &owner, &mine).await;
    assert_metrics(base(), &member, &theirs).await;

    // A second run, and a run as of another time, change nothing.
    run_scheduled_at(base(), now).await;
    run_scheduled_at(base(), now + 3_600_000).await;
    assert_metrics(base(), &owner, &mine).await;
    assert_metrics(base(), &member, &theirs).await;
}

async fn late_points_are_counted_after_the_next_run() {
    let server = Server::start(&[("FLUSH_INTERVAL_MS", "300")]);
    let b = server.base.as_str();
    let owner = unique("late");
    let token = user_token(&owner, "pro");
    let id = create_session_at(b, &token, &[]).await;
    let now = now_ms();
    let hour = hour_start(now - 5 * DAY);
    let first: Vec<(i64, String, Option<f64>)> = (0..10)
        .map(|i| (hour + i * 1000, "hr".to_owned(), Some(i as f64)))
        .collect();
    post_points(b, &id, &token, &first).await;
    wait_for_d1_points(b, &id, 10).await;
    run_scheduled_at(b, now).await;
    assert_metrics(b, &owner, &first).await;

    // D1 fails: more points for the same hour wait in the session.
    set_d1_failing_at(b, true).await;
    let late: Vec<(i64, String, Option<f64>)> = (0..7)
        .map(|i| (hour + 60_000 + i, "hr".to_owned(), Some(100.0 + i as f64)))
        .collect();
    post_points(b, &id, &token, &late).await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    run_scheduled_at(b, now).await;
    assert_metrics(b, &owner, &first).await;

    // D1 is back: the points land late, and the next run counts them.
    set_d1_failing_at(b, false).await;
    wait_for_d1_points(b, &id, 17).await;
    run_scheduled_at(b, now + 1000).await;
    let all: Vec<_> = first.iter().chain(late.iter()).cloned().collect();
    assert_metrics(b, &owner, &all).await;
    let marks = d1_at(b, "SELECT count(*) AS n FROM rollup_marks").await;
    assert_eq!(marks[0]["n"], 0, "every mark consumed");
}

/// Waits until D1 holds `n` points of session `id` (any partition).
async fn wait_for_d1_points(base: &str, id: &str, n: u64) {
    for _ in 0..120 {
        let months = d1_at(
            base,
            &format!("SELECT month FROM session_point_months WHERE session_id = '{id}'"),
        )
        .await;
        let tables: BTreeSet<String> = d1_at(base, "SELECT name FROM partitions")
            .await
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .filter(|t| t.starts_with("session_points_"))
            .collect();
        if !months.is_empty() {
            let union: Vec<String> = tables
                .iter()
                .map(|t| format!("SELECT seq FROM {t} WHERE session_id = '{id}'"))
                .collect();
            let rows = d1_at(
                base,
                &format!("SELECT count(*) AS n FROM ({})", union.join(" UNION ")),
            )
            .await;
            if rows[0]["n"].as_u64() == Some(n) {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("D1 never held {n} points of {id}");
}

async fn metrics_are_for_the_user_or_a_service_only() {
    let (me, you) = (unique("me"), unique("you"));
    let t = user_token(&me, "free");
    let a = get(&format!("/v1/users/{me}/metrics"), &t).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        a.body,
        json!({"userId": me, "granularity": "day", "buckets": []})
    );
    get(&format!("/v1/users/{you}/metrics"), &t)
        .await
        .assert_error(403, "forbidden");
    get(&format!("/v1/users/{me}/metrics?granularity=year"), &t)
        .await
        .assert_error(400, "bad_request");
}

async fn an_ended_session_retires_its_storage_and_still_reads_back() {
    let server = Server::start(&[("ENDED_RETENTION_MS", "1000"), ("FLUSH_INTERVAL_MS", "300")]);
    let b = server.base.as_str();
    let (owner, member) = (unique("retiring"), unique("member"));
    let (to, tm) = (user_token(&owner, "pro"), user_token(&member, "pro"));
    let id = create_session_at(b, &to, &[&member]).await;
    let points: Vec<(i64, String, Option<f64>)> = (0..25)
        .map(|i| (now_ms() - i * 1000, "hr".to_owned(), Some(i as f64)))
        .collect();
    post_points(b, &id, &to, &points).await;
    end_session(b, &id, &to).await;
    let live = call_at(
        b,
        "GET",
        &format!("/v1/sessions/{id}"),
        Some(&tm),
        None,
        &[],
    )
    .await;
    let want_stats =
        json!({"hr": {"count": 25, "sum": 300.0, "min": 0.0, "max": 24.0, "last": 24.0}});
    assert_eq!(
        live.body["stats"], want_stats,
        "the live object answers: {}",
        live.text
    );
    // A title only D1 has tells which answers: the live object keeps its
    // own. Written once the end's flush is in (it rewrites the row).
    let month = sesh_core::time::month_suffix(sesh_core::data::history::v7_time(&id).unwrap());
    let row = format!("SELECT status, point_count FROM sessions_{month} WHERE id = '{id}'");
    for _ in 0..100 {
        if d1_at(b, &row).await == vec![json!({"status": "ended", "point_count": 25})] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    d1_at(
        b,
        &format!("UPDATE sessions_{month} SET title = 'from-d1' WHERE id = '{id}'"),
    )
    .await;

    // The object deletes its storage one retention after the end (its
    // alarm); answers then come from D1, with the stats computed from the
    // points there.
    let mut retired = None;
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let a = call_at(
            b,
            "GET",
            &format!("/v1/sessions/{id}"),
            Some(&tm),
            None,
            &[],
        )
        .await;
        if a.body["title"] == "from-d1" {
            retired = Some(a);
            break;
        }
    }
    let a = retired.expect("the ended session's object retired its storage");
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "ended");
    assert_eq!(a.body["lastSeq"], 25);
    assert_eq!(a.body["participants"], json!([]));
    assert_eq!(a.body["stats"], want_stats, "the same stats from D1");
    let mut seqs = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("/v1/sessions/{id}/points?afterSeq={after}&limit=10");
        let page = call_at(b, "GET", &path, Some(&to), None, &[]).await;
        assert_eq!(page.status, 200, "{}", page.text);
        assert_eq!(page.body["lastSeq"], 25);
        let got: Vec<i64> = page.body["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["seq"].as_i64().unwrap())
            .collect();
        let Some(last) = got.last().copied() else {
            break;
        };
        seqs.extend(got);
        after = last;
    }
    assert_eq!(
        seqs,
        (1..=25).collect::<Vec<_>>(),
        "every point once, in order"
    );
    // Still ended for everyone: no new points, no joins, ending again is
    // the session as it ended.
    let late = json!({"points": [{"kind": "hr", "value": 1}]})
        .to_string()
        .into_bytes();
    call_at(
        b,
        "POST",
        &format!("/v1/sessions/{id}/points"),
        Some(&to),
        Some(late),
        &[],
    )
    .await
    .assert_error(409, "session_ended");
    let again = call_at(
        b,
        "POST",
        &format!("/v1/sessions/{id}/end"),
        Some(&to),
        None,
        &[],
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["status"], "ended");
    call_at(
        b,
        "POST",
        &format!("/v1/sessions/{id}/end"),
        Some(&tm),
        None,
        &[],
    )
    .await
    .assert_error(403, "forbidden");
    assert_eq!(
        crate::client::Ws::try_join_at(b, &id, &tm).await.err(),
        Some(409),
        "joining a retired session is 409"
    );
}
