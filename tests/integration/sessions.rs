//! CONTRACT.md section 5 over real HTTP and WebSocket: membership, frames,
//! sequencing, idempotency, resume, limits, end, and D1 persistence.

use serde_json::{json, Value};

use crate::client::{base, call, create_session_at, d1_at, get, post, unique, Next, TestFn, Ws};
use crate::harness::user_token;

async fn session(owner: &str, members: &[&str]) -> String {
    create_session_at(base(), &user_token(owner, "pro"), members).await
}

async fn join(id: &str, user: &str) -> (Ws, Value) {
    let mut ws = Ws::join_at(base(), id, &user_token(user, "pro")).await;
    let welcome = ws.frame().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

fn point(id: &str, kind: &str) -> Value {
    json!({"type": "point", "id": id, "kind": kind, "value": 1.5, "data": {"k": id}})
}

/// Rows of this session in a D1 points partition of the current month.
async fn d1_points(id: &str) -> Vec<Value> {
    let month = sesh_core::time::month_suffix(sesh::time::now_ms());
    d1_at(
        base(),
        &format!("SELECT seq, user_id, client_id, kind, value, data FROM session_points_{month} WHERE session_id = '{id}' ORDER BY seq"),
    )
    .await
}

/// The tests of this module, by name.
pub const TESTS: &[(&str, TestFn)] = crate::test_list!(
    "sessions",
    welcome_joined_and_left_frames,
    points_are_acked_broadcast_and_numbered_without_gaps,
    repeated_id_is_acked_with_first_seq_and_not_rebroadcast,
    resume_replays_everything_after_the_given_seq,
    bad_frames_get_error_frames_and_the_socket_stays_open,
    frames_over_64_kib_close_with_1009,
    flooding_is_rate_limited_then_closed_1008,
    http_points_batch_read_and_broadcast,
    membership_is_enforced_everywhere,
    owners_plan_limits_live_connections,
    end_notifies_closes_and_refuses_further_writes,
    points_reach_d1_in_batches_exactly_once,
    points_of_another_month_land_in_that_months_partition
);

async fn welcome_joined_and_left_frames() {
    let (a, b) = (unique("a"), unique("b"));
    let id = session(&a, &[&b]).await;
    let (mut wa, welcome) = join(&id, &a).await;
    assert_eq!(welcome["sessionId"], id.as_str());
    assert_eq!(welcome["userId"], a.as_str());
    assert_eq!(welcome["lastSeq"], 0);
    let conn_a = welcome["connId"].as_str().unwrap().to_owned();
    assert_eq!(welcome["participants"][0]["connId"], conn_a.as_str());

    let (wb, wel_b) = join(&id, &b).await;
    assert_eq!(wel_b["participants"].as_array().unwrap().len(), 2);
    let joined = wa.frame().await;
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["userId"], b.as_str());
    assert_eq!(joined["connId"], wel_b["connId"]);
    assert!(joined["joinedAt"].as_str().unwrap().ends_with('Z'));

    let g = get(&format!("/v1/sessions/{id}"), &user_token(&a, "pro")).await;
    assert_eq!(
        g.body["participants"].as_array().unwrap().len(),
        2,
        "{}",
        g.text
    );

    wb.close().await;
    let left = wa.frame().await;
    assert_eq!(
        left,
        json!({"type": "left", "connId": wel_b["connId"], "userId": b})
    );
}

async fn points_are_acked_broadcast_and_numbered_without_gaps() {
    let (a, b) = (unique("a"), unique("b"));
    let id = session(&a, &[&b]).await;
    let (mut wa, _) = join(&id, &a).await;
    let (mut wb, _) = join(&id, &b).await;
    wa.frame().await; // joined(b)
    for i in 0..5 {
        wa.send(&point(&format!("a{i}"), "hr")).await;
        wb.send(&point(&format!("b{i}"), "hr")).await;
    }
    let mut seqs = Vec::new();
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    for (ws, got) in [(&mut wa, &mut got_a), (&mut wb, &mut got_b)] {
        while got.len() < 10 {
            got.push(ws.frame().await);
        }
    }
    for (mine, theirs, me) in [(&got_a, &got_b, &a), (&got_b, &got_a, &b)] {
        let acks: Vec<&Value> = mine.iter().filter(|f| f["type"] == "ack").collect();
        let points: Vec<&Value> = mine.iter().filter(|f| f["type"] == "point").collect();
        assert_eq!((acks.len(), points.len()), (5, 5), "{mine:?}");
        for p in &points {
            assert_ne!(p["userId"], me.as_str(), "own point echoed");
            assert_eq!(p["kind"], "hr");
            assert_eq!(p["value"], 1.5);
            assert!(p["ts"].as_i64().unwrap() > 1_700_000_000_000);
            // The point seen by the other side carries the seq the sender got.
            let ack = theirs
                .iter()
                .find(|f| f["type"] == "ack" && f["id"] == p["id"])
                .expect("the sender's ack");
            assert_eq!(ack["seq"], p["seq"]);
        }
        seqs.extend(acks.iter().map(|f| f["seq"].as_u64().unwrap()));
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=10).collect::<Vec<_>>(),
        "1..10, no gap, no duplicate"
    );
}

async fn repeated_id_is_acked_with_first_seq_and_not_rebroadcast() {
    let (a, b) = (unique("a"), unique("b"));
    let id = session(&a, &[&b]).await;
    let (mut wa, _) = join(&id, &a).await;
    let (mut wb, _) = join(&id, &b).await;
    wa.frame().await;
    wa.send(&point("same", "k")).await;
    assert_eq!(
        wa.frame().await,
        json!({"type": "ack", "id": "same", "seq": 1})
    );
    wa.send(&point("same", "k")).await;
    assert_eq!(
        wa.frame().await,
        json!({"type": "ack", "id": "same", "seq": 1})
    );
    wa.send(&point("other", "k")).await;
    assert_eq!(wa.frame().await["seq"], 2);
    let first = wb.frame().await;
    let second = wb.frame().await;
    assert_eq!(
        (first["id"].as_str(), second["id"].as_str()),
        (Some("same"), Some("other"))
    );
    // Over HTTP the same user's id is the same point too.
    let t = user_token(&a, "pro");
    let r = post(
        &format!("/v1/sessions/{id}/points"),
        &t,
        &json!({"points": [{"id": "same", "kind": "k"}, {"kind": "k"}]}),
    )
    .await;
    assert_eq!(r.body, json!({"seqs": [1, 3]}), "{}", r.text);
}

async fn resume_replays_everything_after_the_given_seq() {
    let a = unique("a");
    let id = session(&a, &[]).await;
    let (mut wa, _) = join(&id, &a).await;
    for i in 0..7 {
        wa.send(&point(&format!("p{i}"), "k")).await;
        wa.frame().await;
    }
    let (mut late, welcome) = join(&id, &a).await;
    assert_eq!(welcome["lastSeq"], 7);
    late.send(&json!({"type": "resume", "afterSeq": 3})).await;
    let mut seqs = Vec::new();
    loop {
        let f = late.frame().await;
        if f["type"] == "resumed" {
            assert_eq!(
                f,
                json!({"type": "resumed", "lastSeq": 7, "throughSeq": 7, "more": false})
            );
            break;
        }
        assert_eq!(f["type"], "point");
        seqs.push(f["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, vec![4, 5, 6, 7]);
}

async fn bad_frames_get_error_frames_and_the_socket_stays_open() {
    let a = unique("a");
    let id = session(&a, &[]).await;
    let (mut ws, _) = join(&id, &a).await;
    for (text, code) in [
        ("not json", "invalid_json"),
        (r#"{"type":"teleport"}"#, "unknown_type"),
        (
            r#"{"type":"point","id":"bad","kind":""}"#,
            "validation_failed",
        ),
        (
            r#"{"type":"point","kind":"k","extra":true}"#,
            "validation_failed",
        ),
        (r#"{"type":"resume"}"#, "validation_failed"),
    ] {
        ws.send_text(text).await;
        let f = ws.frame().await;
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some(code)),
            "{text}: {f}"
        );
        assert!(f["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    ws.send_text(r#"{"type":"point","id":"bad","kind":""}"#)
        .await;
    assert_eq!(ws.frame().await["ref"], "bad");
    ws.send_binary(vec![1, 2, 3]).await;
    assert_eq!(ws.frame().await["code"], "unsupported");
    ws.send(&json!({"type": "ping"})).await;
    assert_eq!(ws.frame().await, json!({"type": "pong"}));
    // A non-owner may not end.
    let b = unique("b");
    let id2 = session(&a, &[&b]).await;
    let (mut wb, _) = join(&id2, &b).await;
    wb.send(&json!({"type": "end"})).await;
    assert_eq!(wb.frame().await["code"], "forbidden");
}

async fn frames_over_64_kib_close_with_1009() {
    let a = unique("a");
    let id = session(&a, &[]).await;
    let (mut ws, _) = join(&id, &a).await;
    let big = json!({"type": "point", "kind": "k", "data": {"x": "y".repeat(70 * 1024)}});
    ws.send(&big).await;
    match ws.next().await {
        Next::Closed(code) => assert_eq!(code, 1009),
        Next::Frame(f) => panic!("expected close 1009, got {f}"),
    }
}

async fn flooding_is_rate_limited_then_closed_1008() {
    let (a, b) = (unique("a"), unique("b"));
    let id = session(&a, &[&b]).await;
    let (mut flood, _) = join(&id, &a).await;
    let (mut calm, _) = join(&id, &b).await;
    flood.frame().await;
    // Not the exact ping text, which the runtime answers without the object.
    for _ in 0..3000 {
        flood.send_text(r#"{"type": "ping"}"#).await;
    }
    let mut limited = 0;
    let code = loop {
        match flood.next().await {
            Next::Frame(f) if f["type"] == "error" => {
                assert_eq!(f["code"], "rate_limited");
                assert!(f["retryAfterMs"].as_u64().is_some(), "{f}");
                limited += 1;
            }
            Next::Frame(_) => {}
            Next::Closed(c) => break c,
        }
    };
    assert!(limited > 0);
    assert_eq!(code, 1008);
    calm.send(&json!({"type": "ping"})).await;
    let (pong, _) = calm.until("pong").await;
    assert_eq!(pong, json!({"type": "pong"}));
}

async fn http_points_batch_read_and_broadcast() {
    let (a, b) = (unique("a"), unique("b"));
    let id = session(&a, &[&b]).await;
    let (mut wb, _) = join(&id, &b).await;
    let t = user_token(&a, "pro");
    let points: Vec<Value> = (0..5).map(|i| json!({"id": format!("h{i}"), "kind": "hr", "value": i, "ts": 1_764_000_000_000i64 + i})).collect();
    let r = post(
        &format!("/v1/sessions/{id}/points"),
        &t,
        &json!({"points": points}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({"seqs": [1, 2, 3, 4, 5]}));
    for i in 1..=5 {
        let f = wb.frame().await;
        assert_eq!(
            (f["type"].as_str(), f["seq"].as_u64()),
            (Some("point"), Some(i))
        );
        assert_eq!(f["userId"], a.as_str());
    }
    let page = get(&format!("/v1/sessions/{id}/points?afterSeq=2&limit=2"), &t).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(page.body["lastSeq"], 5);
    let seqs: Vec<u64> = page.body["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4]);
    assert_eq!(
        page.body["points"][0],
        json!({"seq": 3, "userId": a, "id": "h2", "kind": "hr", "value": 2.0, "ts": 1_764_000_000_002i64})
    );
    let all = get(&format!("/v1/sessions/{id}/points"), &t).await;
    assert_eq!(all.body["points"].as_array().unwrap().len(), 5);
    get(&format!("/v1/sessions/{id}/points?limit=1001"), &t)
        .await
        .assert_error(400, "bad_request");
    get(&format!("/v1/sessions/{id}/points?afterSeq=-1"), &t)
        .await
        .assert_error(400, "bad_request");
    let bad = post(
        &format!("/v1/sessions/{id}/points"),
        &t,
        &json!({"points": []}),
    )
    .await;
    bad.assert_error(422, "validation_failed");
    let s = get(&format!("/v1/sessions/{id}"), &t).await;
    assert_eq!(
        (s.body["pointCount"].as_u64(), s.body["lastSeq"].as_u64()),
        (Some(5), Some(5))
    );
}

async fn membership_is_enforced_everywhere() {
    let (a, stranger) = (unique("a"), unique("x"));
    let id = session(&a, &[]).await;
    let t = user_token(&stranger, "pro");
    get(&format!("/v1/sessions/{id}/points"), &t)
        .await
        .assert_error(403, "forbidden");
    post(
        &format!("/v1/sessions/{id}/points"),
        &t,
        &json!({"points": [{"kind": "k"}]}),
    )
    .await
    .assert_error(403, "forbidden");
    post(&format!("/v1/sessions/{id}/end"), &t, &json!({}))
        .await
        .assert_error(403, "forbidden");
    assert_eq!(Ws::try_join_at(base(), &id, &t).await.err(), Some(403));
}

async fn owners_plan_limits_live_connections() {
    let a = unique("a");
    let m: Vec<String> = (0..6).map(|i| unique(&format!("m{i}"))).collect();
    let members: Vec<&str> = m.iter().map(String::as_str).collect();
    // Free plan (the owner's current one): 5 participants per session.
    let id = create_session_at(base(), &user_token(&a, "free"), &members).await;
    let mut socks = Vec::new();
    for user in &m[..5] {
        socks.push(Ws::join_at(base(), &id, &user_token(user, "enterprise")).await);
    }
    let refused = call(
        "GET",
        &format!("/v1/sessions/{id}/ws"),
        Some(&user_token(&m[5], "enterprise")),
        None,
        &[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
    .await;
    refused.assert_error(429, "quota_exceeded");
    socks.pop().unwrap().close().await;
    // The seat frees once the close has been processed.
    let mut joined = false;
    for _ in 0..50 {
        if Ws::try_join_at(base(), &id, &user_token(&m[5], "free"))
            .await
            .is_ok()
        {
            joined = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(joined, "a seat frees when someone leaves");
}

async fn end_notifies_closes_and_refuses_further_writes() {
    let (a, b) = (unique("a"), unique("b"));
    let id = session(&a, &[&b]).await;
    let (mut wa, _) = join(&id, &a).await;
    let (mut wb, _) = join(&id, &b).await;
    wa.frame().await;
    wa.send(&point("e1", "k")).await;
    wa.frame().await;
    wb.frame().await;
    let tb = user_token(&b, "pro");
    post(&format!("/v1/sessions/{id}/end"), &tb, &json!({}))
        .await
        .assert_error(403, "forbidden");
    let ta = user_token(&a, "pro");
    let r = post(&format!("/v1/sessions/{id}/end"), &ta, &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "ended");
    assert!(r.body["endedAt"].as_str().is_some());
    assert_eq!(r.body["participants"], json!([]));
    for ws in [&mut wa, &mut wb] {
        assert_eq!(ws.frame().await, json!({"type": "ended", "lastSeq": 1}));
        match ws.next().await {
            Next::Closed(code) => assert_eq!(code, 1000),
            Next::Frame(f) => panic!("expected close, got {f}"),
        }
    }
    post(
        &format!("/v1/sessions/{id}/points"),
        &ta,
        &json!({"points": [{"kind": "k"}]}),
    )
    .await
    .assert_error(409, "session_ended");
    assert_eq!(Ws::try_join_at(base(), &id, &ta).await.err(), Some(409));
    let again = post(&format!("/v1/sessions/{id}/end"), &ta, &json!({})).await;
    assert_eq!(again.status, 200, "ending twice is harmless");
    // End flushed everything to D1, with the session row.
    let rows = d1_points(&id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["client_id"], "e1");
    assert_eq!(rows[0]["data"], r#"{"k":"e1"}"#);
    let month = sesh_core::time::month_suffix(sesh::time::now_ms());
    let s = d1_at(
        base(),
        &format!("SELECT status, point_count, owner_id FROM sessions_{month} WHERE id = '{id}'"),
    )
    .await;
    assert_eq!(
        s,
        vec![json!({"status": "ended", "point_count": 1, "owner_id": a})]
    );
}

async fn points_reach_d1_in_batches_exactly_once() {
    let a = unique("a");
    let id = session(&a, &[]).await;
    let (mut ws, _) = join(&id, &a).await;
    // 25 points: two full batches of 10 go at once, the rest after the
    // flush interval.
    for i in 0..25 {
        ws.send(&point(&format!("d{i}"), "k")).await;
        ws.frame().await;
    }
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = d1_points(&id).await;
        if rows.len() == 25 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let seqs: Vec<u64> = rows.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
}

async fn points_of_another_month_land_in_that_months_partition() {
    let a = unique("a");
    let id = session(&a, &[]).await;
    let t = user_token(&a, "pro");
    // Imported data (a ts more than a day ahead is refused): 40 days ago
    // lands in that month's partition, 2001-03-15 in the yearly partition
    // of 2001 (older than 12 months, CONTRACT.md section 5).
    let recent = sesh::time::now_ms() - 40 * 86_400_000;
    let r = post(
        &format!("/v1/sessions/{id}/points"),
        &t,
        &json!({"points": [{"kind": "k", "ts": 984_614_400_000i64}, {"kind": "k", "ts": recent}]}),
    )
    .await;
    assert_eq!(r.body, json!({"seqs": [1, 2]}), "{}", r.text);
    post(&format!("/v1/sessions/{id}/end"), &t, &json!({})).await;
    let rows = d1_at(
        base(),
        &format!("SELECT seq FROM session_points_2001 WHERE session_id = '{id}'"),
    )
    .await;
    assert_eq!(rows, vec![json!({"seq": 1})]);
    let month = sesh_core::time::month_suffix(recent);
    let rows = d1_at(
        base(),
        &format!("SELECT seq FROM session_points_{month} WHERE session_id = '{id}'"),
    )
    .await;
    assert_eq!(rows, vec![json!({"seq": 2})]);
}
