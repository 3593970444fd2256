//! CONTRACT.md section 10 over real HTTP and WebSocket: viewers, the
//! members routes, their live effect, durability across a SIGKILL, the
//! session list, signals and live states.

use serde_json::{json, Value};

use crate::client::{base, call, call_at, get, post, unique, Next, TestFn, Ws};
use crate::harness::{user_token, Server};

fn tok(user: &str) -> String {
    user_token(user, "pro")
}

async fn create(owner: &str, members: &[&str], viewers: &[&str]) -> String {
    let a = post(
        "/v1/sessions",
        &tok(owner),
        &json!({"members": members, "viewers": viewers}),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    a.body["id"].as_str().unwrap().to_owned()
}

async fn set_role(base: &str, id: &str, by: &str, user: &str, role: &str) -> crate::client::Answer {
    let body = json!({ "role": role }).to_string().into_bytes();
    call_at(
        base,
        "PUT",
        &format!("/v1/sessions/{id}/members/{user}"),
        Some(&tok(by)),
        Some(body),
        &[("content-type", "application/json")],
    )
    .await
}

async fn remove(id: &str, by: &str, user: &str) -> crate::client::Answer {
    call(
        "DELETE",
        &format!("/v1/sessions/{id}/members/{user}"),
        Some(&tok(by)),
        None,
        &[],
    )
    .await
}

async fn join(id: &str, user: &str) -> (Ws, Value) {
    let mut ws = Ws::join_at(base(), id, &tok(user)).await;
    let welcome = ws.frame().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// Whether `user`'s session list holds session `id`, polled for a while
/// (the list reads D1, which a flush fills within `FLUSH_INTERVAL_MS`).
async fn listed_becomes(user: &str, id: &str, want: bool) {
    for _ in 0..40 {
        let a = get("/v1/sessions?limit=100", &tok(user)).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let found = a.body["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id);
        if found == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!(
        "{user}'s list never {} {id}",
        if want { "showed" } else { "dropped" }
    );
}

/// The tests of this module, by name.
pub const TESTS: &[(&str, TestFn)] = crate::test_list!(
    "members",
    viewers_at_creation_are_validated_and_answered,
    the_routes_check_who_asks_and_what,
    a_viewer_reads_and_joins_but_writes_nothing_until_made_writer,
    a_removed_user_gets_removed_then_1008_and_is_locked_out,
    the_list_follows_membership_changes,
    signals_and_states_reach_the_others,
    ended_sessions_refuse_membership_changes,
    a_change_survives_a_sigkill
);

async fn viewers_at_creation_are_validated_and_answered() {
    let (o, w, v) = (unique("o"), unique("w"), unique("v"));
    let t = tok(&o);
    let both = post(
        "/v1/sessions",
        &t,
        &json!({"members": [&w], "viewers": [&w]}),
    )
    .await;
    both.assert_error(422, "validation_failed");
    let owner_in = post("/v1/sessions", &t, &json!({"viewers": [&o]})).await;
    owner_in.assert_error(422, "validation_failed");
    let many: Vec<String> = (0..101).map(|i| format!("x{i}")).collect();
    let (m, vs) = many.split_at(60);
    let over = post("/v1/sessions", &t, &json!({"members": m, "viewers": vs})).await;
    over.assert_error(422, "validation_failed");
    let a = post(
        "/v1/sessions",
        &t,
        &json!({"members": [&w], "viewers": [&v]}),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["viewers"], json!([v]));
    let plain = post("/v1/sessions", &t, &json!({})).await;
    assert_eq!(plain.body["viewers"], json!([]), "{}", plain.text);
    let id = a.body["id"].as_str().unwrap();
    let g = get(&format!("/v1/sessions/{id}"), &tok(&v)).await;
    assert_eq!(g.status, 200, "a viewer reads: {}", g.text);
    assert_eq!(g.body["viewers"], json!([v]));
}

async fn the_routes_check_who_asks_and_what() {
    let (o, w, x) = (unique("o"), unique("w"), unique("x"));
    let id = create(&o, &[&w], &[]).await;
    set_role(base(), &id, &w, &x, "writer")
        .await
        .assert_error(403, "forbidden");
    set_role(base(), &id, &o, &o, "viewer")
        .await
        .assert_error(422, "validation_failed");
    set_role(base(), &id, &o, &x, "admin")
        .await
        .assert_error(422, "validation_failed");
    remove(&id, &o, &x).await.assert_error(404, "not_found");
    remove(&id, &x, &w).await.assert_error(403, "forbidden");
    let a = set_role(base(), &id, &o, &x, "viewer").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["viewers"], json!([x]));
    assert_eq!(a.body["members"], json!([w]));
    let a = set_role(base(), &id, &o, &x, "writer").await;
    assert_eq!(a.body["members"], json!([w, x]), "{}", a.text);
    assert_eq!(a.body["viewers"], json!([]));
    // A member leaves by themself.
    let a = remove(&id, &w, &w).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["members"], json!([x]));
}

async fn a_viewer_reads_and_joins_but_writes_nothing_until_made_writer() {
    let (o, v) = (unique("o"), unique("v"));
    let id = create(&o, &[], &[&v]).await;
    let (mut wo, _) = join(&id, &o).await;
    let (mut wv, _) = join(&id, &v).await;
    wo.until("joined").await;
    wv.send(&json!({"type": "point", "id": "p1", "kind": "k"}))
        .await;
    let e = wv.frame().await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "forbidden");
    assert_eq!(e["ref"], "p1");
    wv.send(&json!({"type": "ping"})).await;
    assert_eq!(wv.frame().await["type"], "pong", "the socket stays open");
    let http = post(
        &format!("/v1/sessions/{id}/points"),
        &tok(&v),
        &json!({"points": [{"kind": "k"}]}),
    )
    .await;
    http.assert_error(403, "forbidden");
    // The owner's points reach the viewer.
    wo.send(&json!({"type": "point", "id": "o1", "kind": "k"}))
        .await;
    assert_eq!(wo.frame().await["type"], "ack");
    assert_eq!(wv.frame().await["type"], "point");
    // Made writer: the same socket writes.
    assert_eq!(set_role(base(), &id, &o, &v, "writer").await.status, 200);
    let m = wv.frame().await;
    assert_eq!(m, json!({"type": "members", "members": [v], "viewers": []}));
    assert_eq!(wo.frame().await, m, "every participant hears it");
    wv.send(&json!({"type": "point", "id": "p1", "kind": "k"}))
        .await;
    let ack = wv.frame().await;
    assert_eq!(ack, json!({"type": "ack", "id": "p1", "seq": 2}));
    // Made viewer again: the socket is kept.
    assert_eq!(set_role(base(), &id, &o, &v, "viewer").await.status, 200);
    assert_eq!(wv.frame().await["type"], "members");
    wv.send(&json!({"type": "point", "id": "p2", "kind": "k"}))
        .await;
    assert_eq!(wv.frame().await["code"], "forbidden");
}

async fn a_removed_user_gets_removed_then_1008_and_is_locked_out() {
    let (o, w) = (unique("o"), unique("w"));
    let id = create(&o, &[&w], &[]).await;
    let (mut wo, _) = join(&id, &o).await;
    let (mut ww, _) = join(&id, &w).await;
    wo.until("joined").await;
    let a = remove(&id, &o, &w).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(ww.frame().await, json!({"type": "removed"}));
    match ww.next().await {
        Next::Closed(code) => assert_eq!(code, 1008),
        Next::Frame(f) => panic!("a frame after removed: {f}"),
    }
    let (left, _) = wo.until("left").await;
    assert_eq!(left["userId"], w.as_str());
    let (m, _) = wo.until("members").await;
    assert_eq!(m["members"], json!([]));
    assert_eq!(
        Ws::try_join_at(base(), &id, &tok(&w)).await.err(),
        Some(403)
    );
    get(&format!("/v1/sessions/{id}"), &tok(&w))
        .await
        .assert_error(403, "forbidden");
    get(&format!("/v1/sessions/{id}/points"), &tok(&w))
        .await
        .assert_error(403, "forbidden");
}

async fn the_list_follows_membership_changes() {
    let (o, w, v) = (unique("o"), unique("w"), unique("v"));
    let id = create(&o, &[&w], &[&v]).await;
    listed_becomes(&v, &id, true).await;
    listed_becomes(&w, &id, true).await;
    let x = unique("x");
    assert_eq!(set_role(base(), &id, &o, &x, "viewer").await.status, 200);
    listed_becomes(&x, &id, true).await;
    assert_eq!(remove(&id, &o, &w).await.status, 200);
    listed_becomes(&w, &id, false).await;
    let a = get("/v1/sessions?limit=100", &tok(&o)).await;
    let s = a.body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .cloned()
        .expect("the owner's list");
    assert_eq!(s["viewers"], json!([v, x]), "the D1 row has the viewers");
}

async fn signals_and_states_reach_the_others() {
    let (o, v) = (unique("o"), unique("v"));
    let id = create(&o, &[], &[&v]).await;
    let (mut wo, wel_o) = join(&id, &o).await;
    let conn_o = wel_o["connId"].as_str().unwrap().to_owned();
    let (mut wv, wel_v) = join(&id, &v).await;
    let conn_v = wel_v["connId"].as_str().unwrap().to_owned();
    assert_eq!(wel_v["participants"][0]["state"], Value::Null);
    wo.until("joined").await;
    // A viewer signals; nothing is stored.
    wv.send(&json!({"type": "signal", "data": {"cursor": [1, 2]}}))
        .await;
    let s = wo.frame().await;
    assert_eq!(
        s,
        json!({"type": "signal", "from": conn_v, "userId": v, "data": {"cursor": [1, 2]}})
    );
    wo.send(&json!({"type": "signal", "data": {"hi": 1}, "to": conn_v}))
        .await;
    assert_eq!(wv.frame().await["from"], conn_o.as_str());
    let big = "x".repeat(4 * 1024);
    wv.send(&json!({"type": "signal", "data": {"k": big}}))
        .await;
    assert_eq!(wv.frame().await["code"], "validation_failed");
    // A state replaces the last one and is in the session object.
    wv.send(&json!({"type": "state", "data": {"typing": true}}))
        .await;
    assert_eq!(
        wo.frame().await,
        json!({"type": "state", "connId": conn_v, "userId": v, "data": {"typing": true}})
    );
    wv.send(&json!({"type": "state", "data": {"typing": false}}))
        .await;
    assert_eq!(wo.frame().await["data"]["typing"], false);
    let g = get(&format!("/v1/sessions/{id}"), &tok(&o)).await;
    let p = g.body["participants"].as_array().unwrap();
    let mine = p.iter().find(|p| p["connId"] == conn_v.as_str()).unwrap();
    assert_eq!(mine["state"], json!({"typing": false}));
    assert_eq!(g.body["lastSeq"], 0, "signals and states are not points");
    // A third connection sees the state in its welcome, and it goes with
    // the connection.
    let (_w3, wel3) = join(&id, &o).await;
    let theirs = wel3["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["connId"] == conn_v.as_str())
        .cloned()
        .unwrap();
    assert_eq!(theirs["state"], json!({"typing": false}));
    wv.close().await;
    wo.until("left").await;
    let g = get(&format!("/v1/sessions/{id}"), &tok(&o)).await;
    assert!(g.body["participants"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["connId"] != conn_v.as_str()));
}

async fn ended_sessions_refuse_membership_changes() {
    let (o, w) = (unique("o"), unique("w"));
    let id = create(&o, &[&w], &[]).await;
    let end = call(
        "POST",
        &format!("/v1/sessions/{id}/end"),
        Some(&tok(&o)),
        None,
        &[],
    )
    .await;
    assert_eq!(end.status, 200, "{}", end.text);
    set_role(base(), &id, &o, &unique("x"), "viewer")
        .await
        .assert_error(409, "session_ended");
    remove(&id, &w, &w).await.assert_error(409, "session_ended");
}

async fn a_change_survives_a_sigkill() {
    let mut server = tokio::task::spawn_blocking(|| Server::start(&[]))
        .await
        .unwrap();
    let (o, w, v) = (unique("o"), unique("w"), unique("v"));
    let b = server.base.clone();
    let created = call_at(
        &b,
        "POST",
        "/v1/sessions",
        Some(&tok(&o)),
        Some(json!({"members": [&w]}).to_string().into_bytes()),
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(set_role(&b, &id, &o, &w, "viewer").await.status, 200);
    assert_eq!(set_role(&b, &id, &o, &v, "writer").await.status, 200);
    // Kill the runtime the moment the answers are in.
    let server = tokio::task::spawn_blocking(move || {
        server.crash_and_restart();
        server
    })
    .await
    .unwrap();
    let b = server.base.clone();
    let g = call_at(
        &b,
        "GET",
        &format!("/v1/sessions/{id}"),
        Some(&tok(&o)),
        None,
        &[],
    )
    .await;
    assert_eq!(g.status, 200, "{}", g.text);
    assert_eq!(g.body["members"], json!([v]));
    assert_eq!(g.body["viewers"], json!([w]));
    let p = call_at(
        &b,
        "POST",
        &format!("/v1/sessions/{id}/points"),
        Some(&tok(&w)),
        Some(json!({"points": [{"kind": "k"}]}).to_string().into_bytes()),
        &[("content-type", "application/json")],
    )
    .await;
    p.assert_error(403, "forbidden");
}
