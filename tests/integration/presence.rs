//! CONTRACT.md section 6 over real HTTP and WebSocket. The shared server
//! runs with `PRESENCE_TTL_MS=2000` (grace: 1 s).

use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{base, create_session_at, get, post, unique, TestFn, Ws};
use crate::harness::user_token;

/// Polls a user's presence until `done` holds (at most 10 s).
async fn presence_until(user: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t = user_token(&unique("viewer"), "pro");
    let mut last = Value::Null;
    for _ in 0..100 {
        last = get(&format!("/v1/presence/{user}"), &t).await.body;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("presence of {user} never got there; last: {last}");
}

/// The tests of this module, by name.
pub const TESTS: &[(&str, TestFn)] = crate::test_list!(
    "presence",
    heartbeat_sets_status_and_activity,
    heartbeat_bodies_are_validated,
    offline_after_the_ttl_without_any_request,
    a_session_socket_counts_as_a_connection_until_it_closes,
    batch_read_mixes_online_and_unknown_in_the_order_asked
);

async fn heartbeat_sets_status_and_activity() {
    let me = unique("hb");
    let t = user_token(&me, "free");
    let a = post(
        "/v1/presence/heartbeat",
        &t,
        &json!({"status": "busy", "activity": "running 5k"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["userId"], me.as_str());
    assert_eq!(a.body["status"], "busy");
    assert_eq!(a.body["activity"], "running 5k");
    assert_eq!(a.body["connections"], 0);
    assert!(a.body["lastSeen"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));
    let seen = get(
        &format!("/v1/presence/{me}"),
        &user_token(&unique("other"), "free"),
    )
    .await;
    assert_eq!(seen.body["status"], "busy");
    let a = post("/v1/presence/heartbeat", &t, &json!({"status": "away"})).await;
    assert_eq!(a.body["status"], "away");
    let a = post("/v1/presence/heartbeat", &t, &json!({})).await;
    assert_eq!(a.body["status"], "online", "a bare heartbeat means online");
}

async fn heartbeat_bodies_are_validated() {
    let t = user_token(&unique("hb"), "free");
    post("/v1/presence/heartbeat", &t, &json!({"status": "offline"}))
        .await
        .assert_error(422, "validation_failed");
    post(
        "/v1/presence/heartbeat",
        &t,
        &json!({"activity": "x".repeat(129)}),
    )
    .await
    .assert_error(422, "validation_failed");
    post("/v1/presence/heartbeat", &t, &json!({"mood": "happy"}))
        .await
        .assert_error(422, "validation_failed");
}

async fn offline_after_the_ttl_without_any_request() {
    let me = unique("ttl");
    let t = user_token(&me, "free");
    post(
        "/v1/presence/heartbeat",
        &t,
        &json!({"status": "online", "activity": "x"}),
    )
    .await;
    // No request to this user's presence for longer than the TTL.
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let v = get(
        &format!("/v1/presence/{me}"),
        &user_token(&unique("other"), "free"),
    )
    .await
    .body;
    assert_eq!(v["status"], "offline", "{v}");
    assert!(v.get("activity").is_none(), "no activity once offline: {v}");
    assert!(v["lastSeen"].as_str().is_some(), "last seen stays: {v}");
}

async fn a_session_socket_counts_as_a_connection_until_it_closes() {
    let me = unique("ws");
    let t = user_token(&me, "pro");
    let id = create_session_at(base(), &t, &[]).await;
    let mut ws = Ws::join_at(base(), &id, &t).await;
    ws.frame().await;
    let v = presence_until(&me, |v| v["connections"] == 1).await;
    assert_eq!(v["status"], "online");
    // Past the TTL the session confirms the socket: still one connection.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let v = presence_until(&me, |_| true).await;
    assert_eq!(
        (v["status"].as_str(), v["connections"].as_u64()),
        (Some("online"), Some(1)),
        "{v}"
    );
    let mut second = Ws::join_at(base(), &id, &t).await;
    second.frame().await;
    presence_until(&me, |v| v["connections"] == 2).await;
    second.close().await;
    ws.close().await;
    let v = presence_until(&me, |v| v["connections"] == 0).await;
    assert_eq!(v["status"], "online", "within the reconnect grace: {v}");
    presence_until(&me, |v| v["status"] == "offline").await;
}

async fn batch_read_mixes_online_and_unknown_in_the_order_asked() {
    let on = unique("on");
    post(
        "/v1/presence/heartbeat",
        &user_token(&on, "free"),
        &json!({"status": "away"}),
    )
    .await;
    let ghost = unique("ghost");
    let t = user_token(&unique("viewer"), "free");
    let a = get(&format!("/v1/presence?users={ghost},{on}"), &t).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let users = a.body["users"].as_array().unwrap();
    assert_eq!(users[0]["userId"], ghost.as_str());
    assert_eq!(users[0]["status"], "offline");
    assert_eq!(users[1]["userId"], on.as_str());
    assert_eq!(users[1]["status"], "away");
}
