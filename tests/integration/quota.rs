//! CONTRACT.md section 7 over real HTTP (and the points quota over
//! WebSocket): headers, the api limit, checks, refunds, exactness, the
//! session and points counters, and usage surviving a crash.

use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{base, call, call_at, create_session_at, get, post, unique, TestFn, Ws};
use crate::harness::{service_token, user_token, Server};

async fn check(subject: &str, resource: &str, cost: u64) -> (u16, Value) {
    let s = service_token(&unique("svc"));
    let a = post(
        "/v1/quota/check",
        &s,
        &json!({"subject": subject, "resource": resource, "cost": cost, "plan": "free"}),
    )
    .await;
    (a.status, a.body)
}

/// The tests of this module, by name.
pub const TESTS: &[(&str, TestFn)] = crate::test_list!(
    "quota",
    every_v1_answer_carries_the_api_rate_limit_headers,
    a_burst_ends_in_429_and_recovers_after_the_wait,
    a_denied_check_consumes_nothing,
    check_answers_carry_the_subjects_policy_and_retry_after,
    refund_gives_units_back,
    concurrent_checks_admit_exactly_the_remaining,
    creating_a_session_uses_the_sessions_counter,
    points_use_the_owners_daily_quota_and_refusals_are_error_frames,
    unused_points_units_go_back_when_the_session_ends,
    usage_survives_a_crash_of_the_runtime
);

async fn every_v1_answer_carries_the_api_rate_limit_headers() {
    let t = user_token(&unique("h"), "free");
    let mut seen = Vec::new();
    for path in [
        "/v1/quota",
        "/v1/nope",
        "/v1/presence/x",
        "/v1/sessions/not-a-uuid",
    ] {
        let a = get(path, &t).await;
        assert_eq!(
            a.header("ratelimit-policy"),
            Some("\"api\";q=60;w=60"),
            "{path}"
        );
        seen.push(a.header("ratelimit").unwrap().to_owned());
    }
    assert_eq!(
        seen[0], "\"api\";r=19;t=1",
        "one unit used of a burst of 20"
    );
    // Three more units used (one may have refilled meanwhile on a slow run).
    assert!(
        ["\"api\";r=16;t=4", "\"api\";r=17;t=3"].contains(&seen[3].as_str()),
        "{}",
        seen[3]
    );
    let bad = post("/v1/sessions", &t, &json!({"nope": 1})).await;
    assert_eq!(bad.status, 422);
    assert!(bad.header("ratelimit").is_some(), "errors carry them too");
    // Service tokens are not charged and get none.
    let s = get("/v1/quota", &service_token(&unique("svc"))).await;
    assert_eq!(s.header("ratelimit"), None);
}

async fn a_burst_ends_in_429_and_recovers_after_the_wait() {
    let t = user_token(&unique("burst"), "free");
    // Free plan: a burst of 20, then one unit a second. Requests go until
    // the first refusal (however fast this machine is, at least the burst
    // passes first), each a valid session create.
    let mut allowed = 0;
    let denied = loop {
        let a = post("/v1/sessions", &t, &json!({})).await;
        if a.status == 429 {
            break a;
        }
        assert_eq!(a.status, 201, "{}", a.text);
        allowed += 1;
        assert!(allowed < 29, "never refused");
    };
    assert!(allowed >= 20, "the burst of 20 passes: {allowed}");
    denied.assert_error(429, "rate_limited");
    assert_eq!(denied.header("retry-after"), Some("1"));
    assert!(denied
        .header("ratelimit")
        .unwrap()
        .starts_with("\"api\";r=0;"));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let ok = get("/v1/quota", &t).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    // The refused create had no effect: only the allowed ones were counted.
    assert_eq!(ok.body["sessions"]["used"], allowed, "{}", ok.text);
}

async fn a_denied_check_consumes_nothing() {
    let subject = unique("deny");
    let (status, body) = check(&subject, "points", 10_001).await;
    assert_eq!(status, 429);
    assert_eq!(body["allowed"], false);
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(
        (body["limit"].as_u64(), body["remaining"].as_u64()),
        (Some(10_000), Some(10_000))
    );
    assert!(body.get("retryAfterMs").is_none(), "no wait makes it fit");
    let (status, body) = check(&subject, "points", 1).await;
    assert_eq!((status, body["remaining"].as_u64()), (200, Some(9_999)));
    assert!(body["resetMs"].as_u64().unwrap() <= 86_400_000);
}

async fn check_answers_carry_the_subjects_policy_and_retry_after() {
    let subject = unique("api");
    let s = service_token(&unique("svc"));
    let body = json!({"subject": subject, "resource": "api", "cost": 20, "plan": "free"});
    let a = post("/v1/quota/check", &s, &body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        (a.body["limit"].as_u64(), a.body["remaining"].as_u64()),
        (Some(60), Some(0))
    );
    assert_eq!(a.header("ratelimit"), Some("\"api\";r=0;t=20"));
    let a = post(
        "/v1/quota/check",
        &s,
        &json!({"subject": subject, "resource": "api", "plan": "free"}),
    )
    .await;
    assert_eq!(a.status, 429);
    assert_eq!(a.body["error"]["code"], "rate_limited");
    let retry = a.body["retryAfterMs"].as_u64().unwrap();
    assert!(
        (1..=1_000).contains(&retry),
        "at most one emission interval: {retry}"
    );
    assert_eq!(a.header("retry-after"), Some("1"));
    let bad = post(
        "/v1/quota/check",
        &s,
        &json!({"subject": subject, "resource": "coins"}),
    )
    .await;
    bad.assert_error(422, "validation_failed");
    let bad = post(
        "/v1/quota/check",
        &s,
        &json!({"subject": subject, "resource": "api", "cost": 0}),
    )
    .await;
    bad.assert_error(422, "validation_failed");
}

async fn refund_gives_units_back() {
    let subject = unique("refund");
    let (_, body) = check(&subject, "sessions", 5).await;
    assert_eq!(body["remaining"], 25);
    let s = service_token(&unique("svc"));
    let a = post(
        "/v1/quota/refund",
        &s,
        &json!({"subject": subject, "resource": "sessions", "cost": 3}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["remaining"], 28);
    let (_, body) = check(&subject, "sessions", 1).await;
    assert_eq!(body["remaining"], 27);
}

async fn concurrent_checks_admit_exactly_the_remaining() {
    let subject = unique("exact");
    let (_, body) = check(&subject, "points", 10_000 - 10).await;
    assert_eq!(body["remaining"], 10);
    let calls = (0..20).map(|_| check(&subject, "points", 1));
    let answers = futures_util::future::join_all(calls).await;
    let mut remaining: Vec<u64> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b["remaining"].as_u64().unwrap())
        .collect();
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..10).collect::<Vec<_>>(),
        "exactly 10 admitted, each a different unit"
    );
    assert_eq!(answers.iter().filter(|(s, _)| *s == 429).count(), 10);
    let (status, body) = check(&subject, "points", 1).await;
    assert_eq!((status, body["remaining"].as_u64()), (429, Some(0)));
}

async fn creating_a_session_uses_the_sessions_counter() {
    let me = unique("sess");
    check(&me, "sessions", 29).await;
    let t = user_token(&me, "free");
    let a = post("/v1/sessions", &t, &json!({})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = post("/v1/sessions", &t, &json!({})).await;
    a.assert_error(429, "quota_exceeded");
    assert!(a.header("retry-after").is_some());
    // An invalid request is not charged a session.
    let me2 = unique("sess");
    let t2 = user_token(&me2, "free");
    post("/v1/sessions", &t2, &json!({"title": 5}))
        .await
        .assert_error(422, "validation_failed");
    let q = get("/v1/quota", &t2).await;
    assert_eq!(q.body["sessions"]["used"], 0, "{}", q.text);
    assert_eq!(q.body["sessions"]["limit"], 30);
}

async fn points_use_the_owners_daily_quota_and_refusals_are_error_frames() {
    let owner = unique("pts");
    let t = user_token(&owner, "free");
    let id = create_session_at(base(), &t, &[]).await;
    check(&owner, "points", 10_000 - 5).await;
    let mut ws = Ws::join_at(base(), &id, &t).await;
    ws.frame().await;
    for i in 0..8 {
        ws.send(&json!({"type": "point", "id": format!("q{i}"), "kind": "k"}))
            .await;
    }
    let mut acks = Vec::new();
    let mut refused = Vec::new();
    while acks.len() + refused.len() < 8 {
        let f = ws.frame().await;
        match f["type"].as_str() {
            Some("ack") => acks.push(f["seq"].as_u64().unwrap()),
            Some("error") => {
                assert_eq!(f["code"], "quota_exceeded", "{f}");
                refused.push(f["ref"].as_str().unwrap().to_owned());
            }
            _ => panic!("unexpected {f}"),
        }
    }
    assert_eq!(acks, vec![1, 2, 3, 4, 5]);
    assert_eq!(refused, vec!["q5", "q6", "q7"], "never a silent drop");
    // An HTTP batch beyond the quota is refused whole.
    let r = post(
        &format!("/v1/sessions/{id}/points"),
        &t,
        &json!({"points": [{"kind": "k"}]}),
    )
    .await;
    r.assert_error(429, "quota_exceeded");
    // Used units are settled with each D1 flush (FLUSH_INTERVAL_MS).
    let mut q = get("/v1/quota", &t).await;
    for _ in 0..50 {
        if q.body["points"]["used"] == 10_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        q = get("/v1/quota", &t).await;
    }
    assert_eq!(q.body["points"]["used"], 10_000, "{}", q.text);
}

async fn unused_points_units_go_back_when_the_session_ends() {
    let owner = unique("back");
    let t = user_token(&owner, "free");
    let id = create_session_at(base(), &t, &[]).await;
    let mut ws = Ws::join_at(base(), &id, &t).await;
    ws.frame().await;
    for i in 0..3 {
        ws.send(&json!({"type": "point", "id": format!("b{i}"), "kind": "k"}))
            .await;
        ws.frame().await;
    }
    let r = call(
        "POST",
        &format!("/v1/sessions/{id}/end"),
        Some(&t),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let q = get("/v1/quota", &t).await;
    assert_eq!(
        q.body["points"]["used"], 3,
        "only recorded points stay charged: {}",
        q.text
    );
}

async fn usage_survives_a_crash_of_the_runtime() {
    let mut server = tokio::task::spawn_blocking(|| Server::start(&[]))
        .await
        .unwrap();
    let subject = unique("crash");
    let s = service_token(&unique("svc"));
    let body = json!({"subject": subject, "resource": "points", "cost": 100, "plan": "free"});
    let a = call_at(
        &server.base,
        "POST",
        "/v1/quota/check",
        Some(&s),
        Some(body.to_string().into_bytes()),
        &[],
    )
    .await;
    assert_eq!(a.body["remaining"], 9_900, "{}", a.text);
    let server = tokio::task::spawn_blocking(move || {
        server.crash_and_restart();
        server
    })
    .await
    .unwrap();
    let body = json!({"subject": subject, "resource": "points", "cost": 1, "plan": "free"});
    let a = call_at(
        &server.base,
        "POST",
        "/v1/quota/check",
        Some(&s),
        Some(body.to_string().into_bytes()),
        &[],
    )
    .await;
    assert_eq!(
        a.body["remaining"], 9_899,
        "neither forgotten nor forgiven: {}",
        a.text
    );
    drop(server);
}
