//! Fault tests, each on a runtime of its own: a SIGKILL right after a burst
//! of acks, and D1 failing for a while.

use serde_json::{json, Value};

use crate::client::{call_at, create_session_at, d1_at, set_d1_failing_at, unique, TestFn, Ws};
use crate::harness::{user_token, Server};

async fn d1_seqs(base: &str, id: &str) -> Vec<u64> {
    let month = sesh_core::time::month_suffix(sesh::time::now_ms());
    d1_at(
        base,
        &format!("SELECT seq FROM session_points_{month} WHERE session_id = '{id}' ORDER BY seq"),
    )
    .await
    .iter()
    .map(|r| r["seq"].as_u64().unwrap())
    .collect()
}

async fn d1_table_exists(base: &str) -> bool {
    let month = sesh_core::time::month_suffix(sesh::time::now_ms());
    !d1_at(
        base,
        &format!("SELECT name FROM sqlite_master WHERE name = 'session_points_{month}'"),
    )
    .await
    .is_empty()
}

/// The tests of this module, by name.
pub const TESTS: &[(&str, TestFn)] = crate::test_list!(
    "faults",
    sigkill_after_acks_loses_nothing_and_seq_goes_on,
    d1_failures_keep_points_pending_until_they_land_once,
    an_http_batch_that_completes_a_flush_batch_is_answered_before_the_flush
);

async fn set_d1_slow_at(base: &str, slow: bool) {
    let q = if slow { "slow" } else { "ok" };
    let a = call_at(
        base,
        "POST",
        &format!("/__test/faults?d1={q}"),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "fault switch: {}", a.text);
}

async fn an_http_batch_that_completes_a_flush_batch_is_answered_before_the_flush() {
    // Flushes are due by batch size only (FLUSH_BATCH 10), and each one
    // takes 3 s longer (the Worker's `faults::D1_SLOW_MS`).
    let server = tokio::task::spawn_blocking(|| Server::start(&[("FLUSH_INTERVAL_MS", "600000")]))
        .await
        .unwrap();
    let base = server.base.clone();
    let a = unique("a");
    let t = user_token(&a, "pro");
    let id = create_session_at(&base, &t, &[]).await;
    set_d1_slow_at(&base, true).await;
    let points: Vec<Value> = (0..10)
        .map(|i| json!({"kind": "k", "id": format!("p{i}")}))
        .collect();
    let r = call_at(
        &base,
        "POST",
        &format!("/v1/sessions/{id}/points"),
        Some(&t),
        Some(json!({ "points": points }).to_string().into_bytes()),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["seqs"].as_array().map(Vec::len), Some(10));
    // An order, not a time: the answer is here while the (slowed) flush
    // has not landed; an answer that waited for it finds the points in D1.
    let landed = if d1_table_exists(&base).await {
        d1_seqs(&base, &id).await
    } else {
        Vec::new()
    };
    assert!(
        landed.is_empty(),
        "the answer waited for the flush: {landed:?} in D1"
    );
    set_d1_slow_at(&base, false).await;
    // The flush still lands, after the answer.
    let mut seqs = Vec::new();
    for _ in 0..50 {
        if d1_table_exists(&base).await {
            seqs = d1_seqs(&base, &id).await;
            if seqs.len() == 10 {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());
}

async fn sigkill_after_acks_loses_nothing_and_seq_goes_on() {
    let mut server = tokio::task::spawn_blocking(|| Server::start(&[("PRESENCE_TTL_MS", "1500")]))
        .await
        .unwrap();
    let a = unique("a");
    let t = user_token(&a, "pro");
    let id = create_session_at(&server.base, &t, &[]).await;
    let mut ws = Ws::join_at(&server.base, &id, &t).await;
    ws.frame().await;
    // A burst: 40 points in flight, then wait for every ack.
    for i in 0..40 {
        ws.send(&json!({"type": "point", "id": format!("k{i}"), "kind": "k", "value": i}))
            .await;
    }
    let mut acked = Vec::new();
    while acked.len() < 40 {
        let f = ws.frame().await;
        assert_eq!(f["type"], "ack", "{f}");
        acked.push(f["seq"].as_u64().unwrap());
    }
    // Kill the runtime the moment the last ack is in.
    let server = tokio::task::spawn_blocking(move || {
        server.crash_and_restart();
        server
    })
    .await
    .unwrap();
    let base = server.base.clone();
    let page = call_at(
        &base,
        "GET",
        &format!("/v1/sessions/{id}/points?limit=1000"),
        Some(&t),
        None,
        &[],
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text);
    let points = page.body["points"].as_array().unwrap();
    let seqs: Vec<u64> = points.iter().map(|p| p["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=40).collect::<Vec<_>>(),
        "every acked point, once"
    );
    assert_eq!(page.body["lastSeq"], 40);
    for (i, p) in points.iter().enumerate() {
        assert_eq!(p["id"], format!("k{i}"));
    }
    let mut ws = Ws::join_at(&base, &id, &t).await;
    let welcome = ws.frame().await;
    assert_eq!(welcome["lastSeq"], 40);
    // A retry of an acked point is still a duplicate; a new one is 41.
    ws.send(&json!({"type": "point", "id": "k7", "kind": "k"}))
        .await;
    assert_eq!(
        ws.frame().await,
        json!({"type": "ack", "id": "k7", "seq": 8})
    );
    ws.send(&json!({"type": "point", "id": "next", "kind": "k"}))
        .await;
    assert_eq!(
        ws.frame().await,
        json!({"type": "ack", "id": "next", "seq": 41})
    );
    // The socket that died with the runtime is dropped from presence once
    // its TTL is up (the session no longer has it); the new one stays.
    let viewer = user_token(&unique("viewer"), "free");
    let mut conns = None;
    for _ in 0..60 {
        let p = call_at(
            &base,
            "GET",
            &format!("/v1/presence/{a}"),
            Some(&viewer),
            None,
            &[],
        )
        .await;
        conns = p.body["connections"].as_u64();
        if conns == Some(1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        conns,
        Some(1),
        "the dead socket is dropped, the live one kept"
    );
    // And D1 holds each point exactly once after the end flush.
    let r = call_at(
        &base,
        "POST",
        &format!("/v1/sessions/{id}/end"),
        Some(&t),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(d1_seqs(&base, &id).await, (1..=41).collect::<Vec<_>>());
    drop(server);
}

async fn d1_failures_keep_points_pending_until_they_land_once() {
    let server = tokio::task::spawn_blocking(|| Server::start(&[("FLUSH_INTERVAL_MS", "200")]))
        .await
        .unwrap();
    let base = server.base.clone();
    let a = unique("a");
    let t = user_token(&a, "pro");
    let id = create_session_at(&base, &t, &[]).await;
    // Let the new session row reach D1, so the partitions exist.
    set_d1_failing_at(&base, true).await;
    let mut ws = Ws::join_at(&base, &id, &t).await;
    ws.frame().await;
    for i in 0..23 {
        ws.send(&json!({"type": "point", "id": format!("f{i}"), "kind": "k"}))
            .await;
        let f = ws.frame().await;
        assert_eq!(f["seq"], i + 1, "acks go on while D1 is down: {f}");
    }
    // Several flush attempts fail meanwhile (batch of 10 due at once, then
    // retries with backoff).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    if d1_table_exists(&base).await {
        assert_eq!(
            d1_seqs(&base, &id).await,
            Vec::<u64>::new(),
            "nothing landed while failing"
        );
    }
    // Reads are served while D1 is down.
    let page = call_at(
        &base,
        "GET",
        &format!("/v1/sessions/{id}/points?limit=1000"),
        Some(&t),
        None,
        &[],
    )
    .await;
    assert_eq!(page.body["points"].as_array().map(Vec::len), Some(23));
    set_d1_failing_at(&base, false).await;
    let mut seqs = Vec::new();
    for _ in 0..200 {
        if d1_table_exists(&base).await {
            seqs = d1_seqs(&base, &id).await;
            if seqs.len() == 23 {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        seqs,
        (1..=23).collect::<Vec<_>>(),
        "every point, exactly once"
    );
    let r = call_at(
        &base,
        "POST",
        &format!("/v1/sessions/{id}/end"),
        Some(&t),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(d1_seqs(&base, &id).await.len(), 23);
    let rows: Vec<Value> = d1_at(&base, &format!("SELECT COUNT(*) AS n, COUNT(DISTINCT seq) AS d FROM session_points_{} WHERE session_id = '{id}'", sesh_core::time::month_suffix(sesh::time::now_ms()))).await;
    assert_eq!(rows, vec![json!({"n": 23, "d": 23})]);
    drop(server);
}
