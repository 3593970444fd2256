//! The hardening of sessions over real HTTP and WebSocket: ids scoped to
//! users, replay pages, seats per user, the runtime's ping auto-response,
//! future timestamps, the points quota's Retry-After, start times from the
//! id, live stats, points units shown as used and reserved, rolled-back
//! writes, the owner's current plan, and the gateway's header stripping and
//! streamed body limit.

use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{base, call, call_at, create_session_at, get, post, unique, TestFn, Ws};
use crate::harness::{service_token, user_token, Server};

async fn session(owner: &str, members: &[&str]) -> String {
    create_session_at(base(), &user_token(owner, "pro"), members).await
}

async fn join_at(base: &str, id: &str, user: &str) -> Ws {
    let mut ws = Ws::join_at(base, id, &user_token(user, "pro")).await;
    let welcome = ws.frame().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ws
}

/// The next frame of type `ty`, skipping `joined`/`left`/`point` frames.
async fn next_of(ws: &mut Ws, ty: &str) -> Value {
    ws.until(ty).await.0
}

async fn upgrade_status(id: &str, token: &str) -> crate::client::Answer {
    call(
        "GET",
        &format!("/v1/sessions/{id}/ws"),
        Some(token),
        None,
        &[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
    .await
}

async fn d1_table_exists_at(base: &str, month: &str) -> bool {
    let sql = format!("SELECT name FROM sqlite_master WHERE name = 'session_points_{month}'");
    !crate::client::d1_at(base, &sql).await.is_empty()
}

/// Polls `GET /v1/quota` of `token` until `ok` holds (at most ~12 s,
/// slowly enough for a free plan's api limit).
async fn quota_until_at(base: &str, token: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..40 {
        let q = call_at(base, "GET", "/v1/quota", Some(token), None, &[]).await;
        if ok(&q.body) {
            return q.body;
        }
        last = q.body;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("quota never got there: {last}");
}

/// The tests of this module, by name.
pub const TESTS: &[(&str, TestFn)] = crate::test_list!(
    "hardening",
    ids_are_scoped_to_their_user,
    resume_pages_and_http_only_sessions_give_idle_units_back,
    seats_per_user_refuse_a_fourth_socket_before_the_upgrade,
    the_exact_ping_is_answered_by_the_runtime_and_others_too,
    a_ts_more_than_a_day_ahead_is_validation_failed,
    kinds_beyond_max_kinds_are_validation_failed_and_a_batch_is_refused_whole,
    the_points_quota_refusal_carries_retry_after_until_the_next_utc_day,
    started_at_lies_in_the_month_of_the_id,
    live_stats_are_in_the_session_object,
    quota_shows_points_reserved_beside_used_and_used_is_exact_once_settled,
    a_failed_write_leaves_no_trace,
    the_owners_current_plan_applies_at_each_join,
    posting_to_an_ended_session_reserves_nothing,
    client_sent_internal_headers_impersonate_no_one,
    an_alarm_whose_presence_step_fails_still_flushes_and_rearms,
    a_chunked_body_over_1_mib_is_413,
);

async fn ids_are_scoped_to_their_user() {
    let (a, b) = (unique("a"), unique("b"));
    let id = session(&a, &[&b]).await;
    let mut wa = join_at(base(), &id, &a).await;
    let mut wb = join_at(base(), &id, &b).await;
    wa.send(&json!({"type": "point", "id": "same", "kind": "k"}))
        .await;
    assert_eq!(
        next_of(&mut wa, "ack").await,
        json!({"type": "ack", "id": "same", "seq": 1})
    );
    wb.send(&json!({"type": "point", "id": "same", "kind": "k"}))
        .await;
    assert_eq!(
        next_of(&mut wb, "ack").await,
        json!({"type": "ack", "id": "same", "seq": 2})
    );
    // The other user's point reaches a as a new point.
    let p = next_of(&mut wa, "point").await;
    assert_eq!(
        (p["seq"].as_u64(), p["userId"].as_str()),
        (Some(2), Some(b.as_str()))
    );
    // A repeat by the same user: its first seq, not stored again.
    wa.send(&json!({"type": "point", "id": "same", "kind": "k"}))
        .await;
    assert_eq!(
        next_of(&mut wa, "ack").await,
        json!({"type": "ack", "id": "same", "seq": 1})
    );
    let r = post(
        &format!("/v1/sessions/{id}/points"),
        &user_token(&b, "pro"),
        &json!({"points": [{"id": "same", "kind": "k"}]}),
    )
    .await;
    assert_eq!(r.body, json!({"seqs": [2]}), "{}", r.text);
    let g = get(&format!("/v1/sessions/{id}"), &user_token(&a, "pro")).await;
    assert_eq!(g.body["lastSeq"], 2, "{}", g.text);
}

async fn resume_pages_and_http_only_sessions_give_idle_units_back() {
    let server = tokio::task::spawn_blocking(|| {
        Server::start(&[("REPLAY_PAGE", "5"), ("UNITS_IDLE_MS", "1500")])
    })
    .await
    .unwrap();
    let b = server.base.clone();
    let a = unique("a");
    let ta = user_token(&a, "free");
    let id = create_session_at(&b, &ta, &[]).await;
    let points: Vec<Value> = (0..12)
        .map(|i| json!({"id": format!("r{i}"), "kind": "k"}))
        .collect();
    let r = call_at(
        &b,
        "POST",
        &format!("/v1/sessions/{id}/points"),
        Some(&ta),
        Some(json!({"points": points}).to_string().into_bytes()),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut ws = Ws::join_at(&b, &id, &ta).await;
    ws.frame().await;
    let mut after = 0u64;
    let mut pages = Vec::new();
    loop {
        ws.send(&json!({"type": "resume", "afterSeq": after})).await;
        let (resumed, frames) = ws.until("resumed").await;
        let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
        assert_eq!(resumed["lastSeq"], 12, "{resumed}");
        pages.push((
            seqs,
            resumed["throughSeq"].as_u64().unwrap(),
            resumed["more"].as_bool().unwrap(),
        ));
        if !resumed["more"].as_bool().unwrap() {
            break;
        }
        after = resumed["throughSeq"].as_u64().unwrap();
    }
    assert_eq!(
        pages,
        vec![
            ((1..=5).collect::<Vec<_>>(), 5, true),
            ((6..=10).collect(), 10, true),
            (vec![11, 12], 12, false),
        ]
    );
    // Nothing after the end; a huge afterSeq does not wrap around.
    ws.send(&json!({"type": "resume", "afterSeq": 12})).await;
    assert_eq!(
        ws.frame().await,
        json!({"type": "resumed", "lastSeq": 12, "throughSeq": 12, "more": false})
    );
    ws.send_text(r#"{"type":"resume","afterSeq":18446744073709551615}"#)
        .await;
    let f = ws.frame().await;
    assert_eq!(
        (f["type"].as_str(), f["more"].as_bool()),
        (Some("resumed"), Some(false)),
        "{f}"
    );
    assert_eq!(f["throughSeq"].as_u64(), Some(u64::MAX));
    let page = call_at(
        &b,
        "GET",
        &format!("/v1/sessions/{id}/points?afterSeq=18446744073709551615"),
        Some(&ta),
        None,
        &[],
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(page.body["points"], json!([]), "{}", page.text);
    ws.close().await;
    // HTTP only from here: the idle session gives its spare units back.
    let h = unique("h");
    let th = user_token(&h, "free");
    let id = create_session_at(&b, &th, &[]).await;
    let r = call_at(
        &b,
        "POST",
        &format!("/v1/sessions/{id}/points"),
        Some(&th),
        Some(
            json!({"points": [{"kind": "k"}, {"kind": "k"}]})
                .to_string()
                .into_bytes(),
        ),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let q = quota_until_at(&b, &th, |q| {
        q["points"]["used"] == 2 && q["points"]["reserved"] == 0
    })
    .await;
    assert_eq!(q["points"]["remaining"], 10_000 - 2, "{q}");
    drop(server);
}

async fn seats_per_user_refuse_a_fourth_socket_before_the_upgrade() {
    let (a, b) = (unique("a"), unique("b"));
    let id = session(&a, &[&b]).await;
    let mut socks = Vec::new();
    for _ in 0..3 {
        socks.push(join_at(base(), &id, &b).await);
    }
    upgrade_status(&id, &user_token(&b, "pro"))
        .await
        .assert_error(429, "quota_exceeded");
    // Another user still gets in.
    socks.push(join_at(base(), &id, &a).await);
}

async fn the_exact_ping_is_answered_by_the_runtime_and_others_too() {
    let a = unique("a");
    let id = session(&a, &[]).await;
    let mut ws = join_at(base(), &id, &a).await;
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(ws.frame().await, json!({"type": "pong"}));
    ws.send_text(r#"{ "type": "ping" }"#).await;
    assert_eq!(ws.frame().await, json!({"type": "pong"}));
}

async fn a_ts_more_than_a_day_ahead_is_validation_failed() {
    let a = unique("a");
    let id = session(&a, &[]).await;
    let ahead = sesh::time::now_ms() + 24 * 3_600_000 + 60_000;
    let t = user_token(&a, "pro");
    post(
        &format!("/v1/sessions/{id}/points"),
        &t,
        &json!({"points": [{"kind": "k", "ts": ahead}]}),
    )
    .await
    .assert_error(422, "validation_failed");
    let mut ws = join_at(base(), &id, &a).await;
    ws.send(&json!({"type": "point", "id": "f", "kind": "k", "ts": ahead}))
        .await;
    let f = ws.frame().await;
    assert_eq!(
        (f["code"].as_str(), f["ref"].as_str()),
        (Some("validation_failed"), Some("f")),
        "{f}"
    );
    // An old time is fine.
    let r = post(
        &format!("/v1/sessions/{id}/points"),
        &t,
        &json!({"points": [{"kind": "k", "ts": 1_000_000_000_000i64}]}),
    )
    .await;
    assert_eq!(r.body, json!({"seqs": [1]}), "{}", r.text);
}

async fn kinds_beyond_max_kinds_are_validation_failed_and_a_batch_is_refused_whole() {
    let a = unique("a");
    let id = session(&a, &[]).await;
    let t = user_token(&a, "pro");
    let url = format!("/v1/sessions/{id}/points");
    // The default MAX_KINDS: 1000 kinds, in batches of 100.
    for b in 0..10 {
        let points: Vec<Value> = (0..100)
            .map(|i| json!({"kind": format!("k{}", b * 100 + i), "value": 1}))
            .collect();
        let r = post(&url, &t, &json!({ "points": points })).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = post(
        &url,
        &t,
        &json!({"points": [{"kind": "k1", "value": 2}, {"kind": "new", "value": 1}]}),
    )
    .await;
    r.assert_error(422, "validation_failed");
    let g = get(&format!("/v1/sessions/{id}"), &t).await;
    assert_eq!(g.body["lastSeq"], 1000, "nothing of the batch is stored");
    assert_eq!(g.body["stats"]["k1"]["count"], 1);
    assert_eq!(g.body["stats"].as_object().map(|m| m.len()), Some(1000));
    let mut ws = join_at(base(), &id, &a).await;
    ws.send(&json!({"type": "point", "id": "f", "kind": "other", "value": 1}))
        .await;
    let f = ws.frame().await;
    assert_eq!(
        (f["code"].as_str(), f["ref"].as_str()),
        (Some("validation_failed"), Some("f")),
        "{f}"
    );
    // Known kinds, and points without a value, go on.
    let r = post(
        &url,
        &t,
        &json!({"points": [{"kind": "k5", "value": 2}, {"kind": "plain"}]}),
    )
    .await;
    assert_eq!(r.body, json!({"seqs": [1001, 1002]}), "{}", r.text);
}

async fn the_points_quota_refusal_carries_retry_after_until_the_next_utc_day() {
    let owner = unique("ra");
    let t = user_token(&owner, "free");
    let id = create_session_at(base(), &t, &[]).await;
    let s = service_token(&unique("svc"));
    let c = post(
        "/v1/quota/check",
        &s,
        &json!({"subject": owner, "resource": "points", "cost": 10_000, "plan": "free"}),
    )
    .await;
    assert_eq!(c.status, 200, "{}", c.text);
    let r = post(
        &format!("/v1/sessions/{id}/points"),
        &t,
        &json!({"points": [{"kind": "k"}]}),
    )
    .await;
    r.assert_error(429, "quota_exceeded");
    let secs: i64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    let now = sesh::time::now_ms();
    let until = (86_400_000 - now.rem_euclid(86_400_000)) / 1000;
    assert!(
        (secs - until).abs() <= 5,
        "Retry-After {secs}, next UTC day in {until}"
    );
}

async fn started_at_lies_in_the_month_of_the_id() {
    let a = unique("a");
    let id = session(&a, &[]).await;
    let g = get(&format!("/v1/sessions/{id}"), &user_token(&a, "pro")).await;
    let from_id = sesh_protocol::session_id_unix_ms(&id).expect("a v7 id");
    assert_eq!(
        g.body["startedAt"],
        sesh_core::time::rfc3339(from_id),
        "{}",
        g.text
    );
}

async fn live_stats_are_in_the_session_object() {
    let a = unique("a");
    let id = session(&a, &[]).await;
    let t = user_token(&a, "pro");
    let g = get(&format!("/v1/sessions/{id}"), &t).await;
    assert_eq!(g.body["stats"], json!({}), "{}", g.text);
    let r = post(
        &format!("/v1/sessions/{id}/points"),
        &t,
        &json!({"points": [{"kind": "hr", "value": 70}, {"kind": "hr", "value": 90.5}, {"kind": "hr"}, {"kind": "speed", "value": 3}, {"kind": "hr", "value": 60}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut ws = join_at(base(), &id, &a).await;
    ws.send(&json!({"type": "point", "kind": "speed", "value": 5}))
        .await;
    next_of(&mut ws, "ack").await;
    let g = get(&format!("/v1/sessions/{id}"), &t).await;
    assert_eq!(
        g.body["stats"],
        json!({
            "hr": {"count": 3, "sum": 220.5, "min": 60.0, "max": 90.5, "last": 60.0},
            "speed": {"count": 2, "sum": 8.0, "min": 3.0, "max": 5.0, "last": 5.0}
        }),
        "{}",
        g.text
    );
}

async fn quota_shows_points_reserved_beside_used_and_used_is_exact_once_settled() {
    let owner = unique("q");
    let t = user_token(&owner, "free");
    let id = create_session_at(base(), &t, &[]).await;
    let mut ws = Ws::join_at(base(), &id, &t).await;
    ws.frame().await;
    for i in 0..3 {
        ws.send(&json!({"type": "point", "id": format!("u{i}"), "kind": "k"}))
            .await;
        next_of(&mut ws, "ack").await;
    }
    let q = get("/v1/quota", &t).await;
    let (used, reserved) = (
        q.body["points"]["used"].as_u64().unwrap(),
        q.body["points"]["reserved"].as_u64().unwrap(),
    );
    assert!(
        reserved >= 3 && used + reserved >= 200,
        "blocks taken ahead: {}",
        q.text
    );
    // Within the settle interval (`UNITS_SETTLE_MS`) the used units are
    // settled exactly; the rest stays reserved (whole blocks of 200, 400
    // ... taken).
    let q = quota_until_at(base(), &t, |q| q["points"]["used"] == 3).await;
    let reserved = q["points"]["reserved"].as_u64().unwrap();
    assert!(reserved >= 197 && (reserved + 3) % 200 == 0, "{q}");
}

async fn a_failed_write_leaves_no_trace() {
    let a = unique("a");
    let id = session(&a, &[]).await;
    let t = user_token(&a, "pro");
    let r = post(
        &format!("/v1/sessions/{id}/points"),
        &t,
        &json!({"points": [{"id": "x", "kind": "k", "value": 1}, {"kind": "fault.store"}]}),
    )
    .await;
    r.assert_error(500, "internal");
    let g = get(&format!("/v1/sessions/{id}"), &t).await;
    assert_eq!(
        (g.body["lastSeq"].as_u64(), &g.body["stats"]),
        (Some(0), &json!({})),
        "{}",
        g.text
    );
    let p = get(&format!("/v1/sessions/{id}/points"), &t).await;
    assert_eq!(p.body, json!({"points": [], "lastSeq": 0}), "{}", p.text);
    let mut ws = join_at(base(), &id, &a).await;
    ws.send(&json!({"type": "point", "id": "w", "kind": "fault.store"}))
        .await;
    let f = ws.frame().await;
    assert_eq!(
        (f["code"].as_str(), f["ref"].as_str()),
        (Some("unavailable"), Some("w")),
        "{f}"
    );
    // The id and the seq are free again.
    let r = post(
        &format!("/v1/sessions/{id}/points"),
        &t,
        &json!({"points": [{"id": "x", "kind": "k"}]}),
    )
    .await;
    assert_eq!(r.body, json!({"seqs": [1]}), "{}", r.text);
}

async fn the_owners_current_plan_applies_at_each_join() {
    let a = unique("a");
    let m: Vec<String> = (0..6).map(|i| unique(&format!("m{i}"))).collect();
    let members: Vec<&str> = m.iter().map(String::as_str).collect();
    // Created on the free plan (5 participants) ...
    let id = create_session_at(base(), &user_token(&a, "free"), &members).await;
    // ... then the owner is seen on pro (25 participants).
    assert_eq!(get("/v1/quota", &user_token(&a, "pro")).await.status, 200);
    let mut socks = Vec::new();
    for user in &m {
        socks.push(join_at(base(), &id, user).await);
    }
    assert_eq!(socks.len(), 6);
}

async fn posting_to_an_ended_session_reserves_nothing() {
    let owner = unique("end");
    let t = user_token(&owner, "free");
    let id = create_session_at(base(), &t, &[]).await;
    let r = call(
        "POST",
        &format!("/v1/sessions/{id}/end"),
        Some(&t),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    post(
        &format!("/v1/sessions/{id}/points"),
        &t,
        &json!({"points": [{"kind": "k"}]}),
    )
    .await
    .assert_error(409, "session_ended");
    let q = get("/v1/quota", &t).await;
    assert_eq!(
        (
            q.body["points"]["used"].as_u64(),
            q.body["points"]["reserved"].as_u64()
        ),
        (Some(0), Some(0)),
        "{}",
        q.text
    );
}

async fn client_sent_internal_headers_impersonate_no_one() {
    let (victim, mallory) = (unique("victim"), unique("mallory"));
    let id = session(&victim, &[]).await;
    let tm = user_token(&mallory, "pro");
    let g = call(
        "GET",
        &format!("/v1/sessions/{id}"),
        Some(&tm),
        None,
        &[("x-sesh-user", &victim), ("x-sesh-service", "1")],
    )
    .await;
    g.assert_error(403, "forbidden");
    let c = call(
        "POST",
        "/v1/sessions",
        Some(&tm),
        Some(b"{}".to_vec()),
        &[("x-sesh-user", &victim), ("x-sesh-plan", "enterprise")],
    )
    .await;
    assert_eq!(
        (c.status, c.body["ownerId"].as_str()),
        (201, Some(mallory.as_str())),
        "{}",
        c.text
    );
    // Nor on a WebSocket upgrade.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "{}/v1/sessions/{id}/ws?token={tm}",
        base().replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("x-sesh-user", victim.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        Ok(_) => panic!("joined as someone else"),
        Err(e) => panic!("{e}"),
    }
}

async fn an_alarm_whose_presence_step_fails_still_flushes_and_rearms() {
    let server = tokio::task::spawn_blocking(|| Server::start(&[]))
        .await
        .unwrap();
    let b = server.base.clone();
    let fault = |q: &'static str| {
        let b = b.clone();
        async move {
            let a = call_at(&b, "POST", &format!("/__test/faults?{q}"), None, None, &[]).await;
            assert_eq!(a.status, 200, "{}", a.text);
        }
    };
    fault("presence=fail").await;
    let a = unique("a");
    let t = user_token(&a, "pro");
    let id = create_session_at(&b, &t, &[]).await;
    let mut ws = Ws::join_at(&b, &id, &t).await;
    ws.frame().await;
    // Fewer than a batch: only the alarm flushes them.
    for i in 0..3 {
        ws.send(&json!({"type": "point", "id": format!("al{i}"), "kind": "k"}))
            .await;
        next_of(&mut ws, "ack").await;
    }
    let month = sesh_core::time::month_suffix(sesh::time::now_ms());
    let sql = format!("SELECT seq FROM session_points_{month} WHERE session_id = '{id}'");
    let mut rows = Vec::new();
    for _ in 0..50 {
        if d1_table_exists_at(&b, &month).await {
            rows = crate::client::d1_at(&b, &sql).await;
            if rows.len() == 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        rows.len(),
        3,
        "flushed by the alarm although presence failed"
    );
    // The alarm keeps coming back for the undelivered presence update.
    fault("presence=ok").await;
    let mut connections = Value::Null;
    for _ in 0..50 {
        let p = call_at(&b, "GET", &format!("/v1/presence/{a}"), Some(&t), None, &[]).await;
        connections = p.body["connections"].clone();
        if connections == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(connections, 1, "the presence outbox was retried");
    drop(server);
}

async fn a_chunked_body_over_1_mib_is_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = unique("a");
    let id = session(&a, &[]).await;
    let host = base().trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
    let head = format!(
        "POST /v1/sessions/{id}/points HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        user_token(&a, "pro")
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..20 {
        let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
        piece.extend_from_slice(&chunk);
        piece.extend_from_slice(b"\r\n");
        // The server may answer and stop reading before the end.
        if s.write_all(&piece).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
}
