//! The gateway over real HTTP: health, errors, authentication, routing to
//! each object, request ids, CORS, and refused WebSocket upgrades.

use serde_json::json;
use tokio_tungstenite::tungstenite;

use crate::client::{base, call, create_session_at, get, post, unique, TestFn};
use crate::harness::{now_secs, service_token, token, user_token, ALLOWED_ORIGIN, SECRET};

const UNKNOWN_SESSION: &str = "0190a6b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b";

/// The tests of this module, by name.
pub const TESTS: &[(&str, TestFn)] = crate::test_list!(
    "gateway",
    health_needs_no_token,
    home_page_and_api_documents_need_no_token,
    request_id_is_echoed_or_generated,
    unknown_routes_are_json_404,
    wrong_methods_are_json_405_with_allow,
    missing_and_bad_tokens_are_401,
    quota_object_reports_the_callers_plan,
    presence_object_reports_offline_for_a_stranger,
    presence_batch_keeps_the_order_and_limits_ids,
    malformed_path_ids_are_404_or_400_not_500,
    unknown_session_is_404_from_the_object,
    session_create_then_get_by_members_only,
    bad_bodies_are_400_413_422,
    an_upload_over_the_limit_costs_only_its_413,
    bodies_whose_fields_are_all_optional_may_be_left_out,
    check_and_refund_need_a_service_token,
    cors_preflight_for_allowed_origins_only,
    websocket_upgrade_without_token_is_refused_401,
    websocket_upgrade_from_foreign_origin_is_refused_403,
    websocket_token_in_query_reaches_the_object
);

async fn health_needs_no_token() {
    let a = call("GET", "/health", None, None, &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, json!({"status": "ok"}));
}

async fn home_page_and_api_documents_need_no_token() {
    let client = reqwest::Client::new();
    let home = client
        .get(format!("{}/", base()))
        .send()
        .await
        .expect("GET /");
    assert_eq!(home.status().as_u16(), 200);
    let ct = home.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert!(ct.starts_with("text/html"), "{ct}");
    let page = home.text().await.expect("page");
    for link in ["/console/", "/openapi.json", "/asyncapi.json"] {
        assert!(
            page.contains(&format!("href=\"{link}\"")),
            "{link} in {page}"
        );
    }
    // The documents served are the checked-in ones, byte for byte.
    for (path, text) in [
        ("/openapi.json", sesh_protocol::api::OPENAPI_JSON),
        ("/asyncapi.json", sesh_protocol::api::ASYNCAPI_JSON),
    ] {
        let a = call("GET", path, None, None, &[]).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(a.text, text, "{path}");
    }
}

async fn request_id_is_echoed_or_generated() {
    let a = call(
        "GET",
        "/health",
        None,
        None,
        &[("x-request-id", "trace-abc.123")],
    )
    .await;
    assert_eq!(a.header("x-request-id"), Some("trace-abc.123"));
    let b = call("GET", "/health", None, None, &[]).await;
    let c = call("GET", "/health", None, None, &[]).await;
    let (b, c) = (
        b.header("x-request-id").unwrap(),
        c.header("x-request-id").unwrap(),
    );
    assert!(!b.is_empty() && b != c, "generated ids differ: {b} {c}");
    // An unsafe client id is replaced, not echoed.
    let d = call("GET", "/health", None, None, &[("x-request-id", "a b")]).await;
    assert_ne!(d.header("x-request-id"), Some("a b"));
    // Errors carry the id too.
    let e = call("GET", "/nope", None, None, &[("x-request-id", "err-1")]).await;
    assert_eq!(e.header("x-request-id"), Some("err-1"));
}

async fn unknown_routes_are_json_404() {
    // `/` is the home page (home_page_and_api_documents_need_no_token).
    for p in ["/nope", "/v2/sessions", "/health/x"] {
        call("GET", p, None, None, &[])
            .await
            .assert_error(404, "not_found");
    }
    // Under /v1 the token comes first (and the request is charged), then
    // the route.
    call("GET", "/v1/whatever", None, None, &[])
        .await
        .assert_error(401, "unauthorized");
    let t = user_token(&unique("u"), "free");
    for p in ["/v1", "/v1/whatever", "/v1/sessions/", "/v1//sessions"] {
        get(p, &t).await.assert_error(404, "not_found");
    }
}

async fn wrong_methods_are_json_405_with_allow() {
    let t = user_token(&unique("u"), "free");
    let a = call("DELETE", "/v1/sessions", Some(&t), None, &[]).await;
    a.assert_error(405, "method_not_allowed");
    assert_eq!(a.header("allow"), Some("GET, POST"), "GET lists sessions");
    let a = call(
        "PUT",
        &format!("/v1/sessions/{UNKNOWN_SESSION}/points"),
        Some(&t),
        None,
        &[],
    )
    .await;
    a.assert_error(405, "method_not_allowed");
    assert_eq!(a.header("allow"), Some("GET, POST"));
    call("POST", "/health", None, None, &[])
        .await
        .assert_error(405, "method_not_allowed");
}

async fn missing_and_bad_tokens_are_401() {
    let now = now_secs();
    let sub = unique("u");
    let wrong_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub, "exp": now + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap();
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": sub, "exp": now + 60}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&json!({"sub": sub, "exp": now + 60}).to_string())
    );
    let cases = [
        ("expired", token(json!({"sub": sub, "exp": now - 10}))),
        ("wrong secret", wrong_secret),
        ("HS512", hs512),
        ("alg none", alg_none),
        ("malformed", "not.a.jwt".to_owned()),
        ("garbage", "x".to_owned()),
        (
            "bad sub",
            token(json!({"sub": "has space", "exp": now + 60})),
        ),
        ("no exp", token(json!({"sub": sub}))),
        (
            "unknown plan",
            token(json!({"sub": sub, "exp": now + 60, "plan": "platinum"})),
        ),
    ];
    for (what, t) in cases {
        let a = get("/v1/quota", &t).await;
        assert_eq!(a.status, 401, "{what}: {}", a.text);
        a.assert_error(401, "unauthorized");
    }
    call("GET", "/v1/quota", None, None, &[])
        .await
        .assert_error(401, "unauthorized");
    call(
        "GET",
        "/v1/quota",
        None,
        None,
        &[("authorization", "Basic abc")],
    )
    .await
    .assert_error(401, "unauthorized");
}

async fn quota_object_reports_the_callers_plan() {
    let user = unique("q");
    let a = get("/v1/quota", &user_token(&user, "pro")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["plan"], "pro");
    assert_eq!(a.body["subject"], user.as_str());
    assert_eq!(a.body["api"]["limit"], 600);
    assert_eq!(a.body["sessions"]["limit"], 1000);
    let a = get("/v1/quota", &user_token(&user, "enterprise")).await;
    assert_eq!(a.body["plan"], "enterprise");
    assert_eq!(a.body["points"]["limit"], serde_json::Value::Null);
}

async fn presence_object_reports_offline_for_a_stranger() {
    let me = user_token(&unique("p"), "free");
    let other = unique("nobody");
    let a = get(&format!("/v1/presence/{other}"), &me).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["userId"], other.as_str());
    assert_eq!(a.body["status"], "offline");
    assert_eq!(a.body["connections"], 0);
}

async fn presence_batch_keeps_the_order_and_limits_ids() {
    let me = user_token(&unique("p"), "free");
    let ids: Vec<String> = (0..5).map(|i| unique(&format!("b{i}"))).collect();
    let a = get(&format!("/v1/presence?users={}", ids.join(",")), &me).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let got: Vec<&str> = a.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["userId"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    get(&format!("/v1/presence?users={}", many.join(",")), &me)
        .await
        .assert_error(400, "bad_request");
    get("/v1/presence?users=ok,bad%20id", &me)
        .await
        .assert_error(400, "bad_request");
    get("/v1/presence", &me)
        .await
        .assert_error(400, "bad_request");
}

async fn malformed_path_ids_are_404_or_400_not_500() {
    let t = user_token(&unique("u"), "free");
    // Session ids are UUIDs: any other id is an unknown session.
    get("/v1/sessions/not-a-uuid", &t)
        .await
        .assert_error(404, "not_found");
    get("/v1/sessions/not-a-uuid/points", &t)
        .await
        .assert_error(404, "not_found");
    get("/v1/presence/%ZZ", &t)
        .await
        .assert_error(400, "bad_request");
    let long = "x".repeat(129);
    get(&format!("/v1/presence/{long}"), &t)
        .await
        .assert_error(400, "bad_request");
}

async fn unknown_session_is_404_from_the_object() {
    let t = user_token(&unique("u"), "free");
    get(&format!("/v1/sessions/{UNKNOWN_SESSION}"), &t)
        .await
        .assert_error(404, "not_found");
}

async fn session_create_then_get_by_members_only() {
    let owner = unique("owner");
    let member = unique("member");
    let t = user_token(&owner, "free");
    let a = post(
        "/v1/sessions",
        &t,
        &json!({"title": "Morning run", "members": [member], "metadata": {"k": 1}}),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let id = a.body["id"].as_str().unwrap().to_owned();
    assert!(sesh_protocol::parse_session_id(&id).is_some(), "{id}");
    assert_eq!(a.body["ownerId"], owner.as_str());
    assert_eq!(a.body["status"], "active");
    assert_eq!(a.body["members"], json!([member]));
    assert_eq!(a.body["metadata"], json!({"k": 1}));

    let g = get(&format!("/v1/sessions/{id}"), &user_token(&member, "free")).await;
    assert_eq!(g.status, 200, "{}", g.text);
    assert_eq!(g.body["id"], id.as_str());
    assert_eq!(g.body["title"], "Morning run");
    get(
        &format!("/v1/sessions/{id}"),
        &user_token(&unique("stranger"), "free"),
    )
    .await
    .assert_error(403, "forbidden");
}

async fn bad_bodies_are_400_413_422() {
    let t = user_token(&unique("u"), "free");
    let a = call(
        "POST",
        "/v1/sessions",
        Some(&t),
        Some(b"{not json".to_vec()),
        &[],
    )
    .await;
    a.assert_error(400, "invalid_json");
    post("/v1/sessions", &t, &json!({"title": "x".repeat(201)}))
        .await
        .assert_error(422, "validation_failed");
    post("/v1/sessions", &t, &json!({"colour": "red"}))
        .await
        .assert_error(422, "validation_failed");
    let big = vec![b' '; (1 << 20) + 1];
    call("POST", "/v1/sessions", Some(&t), Some(big.clone()), &[])
        .await
        .assert_error(413, "payload_too_large");
    // Also on a route that reads no body.
    let id = create_session_at(base(), &t, &[]).await;
    let end = format!("/v1/sessions/{id}/end");
    call("POST", &end, Some(&t), Some(big), &[])
        .await
        .assert_error(413, "payload_too_large");
    assert_eq!(
        get(&format!("/v1/sessions/{id}"), &t).await.body["status"],
        "active"
    );
}

/// A body over 1 MiB, sent on a raw connection both with its length and
/// chunked (a client that does not say its length up front), to a route
/// that reads bodies and to one that does not: each answer is 413, and the
/// next request, on a fresh connection, is answered at once. Before refused
/// bodies were drained, the local runtime answered nothing more until it
/// restarted, or "Your worker restarted mid-request".
async fn an_upload_over_the_limit_costs_only_its_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = user_token(&unique("u"), "pro");
    let addr = base().trim_start_matches("http://").to_owned();
    let id = create_session_at(base(), &t, &[]).await;
    let body = vec![b' '; 2 << 20];
    for path in ["/v1/sessions".to_owned(), format!("/v1/sessions/{id}/end")] {
        for chunked in [true, false] {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_owned()
            } else {
                format!("Content-Length: {}", body.len())
            };
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\n\
                 Content-Type: application/json\r\n{framing}\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            for part in body.chunks(64 * 1024) {
                let frame = if chunked {
                    [format!("{:x}\r\n", part.len()).as_bytes(), part, b"\r\n"].concat()
                } else {
                    part.to_vec()
                };
                if s.write_all(&frame).await.is_err() {
                    break;
                }
            }
            if chunked {
                let _ = s.write_all(b"0\r\n\r\n").await;
            }
            let mut answer = vec![0u8; 64];
            let n = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut answer))
                .await
                .expect("an answer to the oversized upload")
                .unwrap();
            let status = String::from_utf8_lossy(&answer[..n]).to_string();
            assert!(
                status.starts_with("HTTP/1.1 413"),
                "{path} chunked={chunked}: {status}"
            );
            drop(s);
            let next = tokio::time::timeout(std::time::Duration::from_secs(10), async {
                call("GET", "/v1/quota", Some(&t), None, &[]).await
            })
            .await
            .expect("the next request is answered promptly");
            assert_eq!(next.status, 200, "{path} chunked={chunked}: {}", next.text);
        }
    }
}

async fn bodies_whose_fields_are_all_optional_may_be_left_out() {
    let t = user_token(&unique("u"), "free");
    let a = call("POST", "/v1/sessions", Some(&t), None, &[]).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(
        (&a.body["members"], &a.body["status"]),
        (&json!([]), &json!("active"))
    );
    let a = call("POST", "/v1/presence/heartbeat", Some(&t), None, &[]).await;
    assert_eq!(
        (a.status, &a.body["status"]),
        (200, &json!("online")),
        "{}",
        a.text
    );
    let a = call("POST", "/v1/sessions", Some(&t), Some(b" ".to_vec()), &[]).await;
    assert_eq!(a.status, 201, "{}", a.text);
}

async fn check_and_refund_need_a_service_token() {
    let t = user_token(&unique("u"), "enterprise");
    let body = json!({"subject": "someone", "resource": "api"});
    post("/v1/quota/check", &t, &body)
        .await
        .assert_error(403, "forbidden");
    post(
        "/v1/quota/refund",
        &t,
        &json!({"subject": "someone", "resource": "api", "cost": 1}),
    )
    .await
    .assert_error(403, "forbidden");
    let s = service_token(&unique("svc"));
    assert_ne!(post("/v1/quota/check", &s, &body).await.status, 403);
}

async fn cors_preflight_for_allowed_origins_only() {
    let ok = call(
        "OPTIONS",
        "/v1/sessions",
        None,
        None,
        &[
            ("origin", ALLOWED_ORIGIN),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
    )
    .await;
    assert_eq!(ok.status, 204, "{}", ok.text);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some(ALLOWED_ORIGIN)
    );
    // Every method a route takes, the members' PUT and DELETE too.
    let methods = ok.header("access-control-allow-methods").unwrap();
    for m in ["GET", "POST", "PUT", "DELETE"] {
        assert!(methods.contains(m), "{methods}");
    }
    assert!(ok
        .header("access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    let bad = call(
        "OPTIONS",
        "/v1/sessions",
        None,
        None,
        &[
            ("origin", "https://evil.example.com"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    bad.assert_error(403, "forbidden");
    assert_eq!(bad.header("access-control-allow-origin"), None);
    // Simple requests from an allowed origin get the CORS answer headers.
    let h = call("GET", "/health", None, None, &[("origin", ALLOWED_ORIGIN)]).await;
    assert_eq!(
        h.header("access-control-allow-origin"),
        Some(ALLOWED_ORIGIN)
    );
}

async fn websocket_upgrade_without_token_is_refused_401() {
    let url = format!(
        "{}/v1/sessions/{UNKNOWN_SESSION}/ws",
        base().replace("http", "ws")
    );
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!("expected a 401 refusal, got {other:?}"),
    }
    // The refusal is the contract's JSON error (read over plain HTTP: a
    // WebSocket client library may drop the body of a refused handshake).
    let a = call(
        "GET",
        &format!("/v1/sessions/{UNKNOWN_SESSION}/ws"),
        None,
        None,
        &[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
    .await;
    a.assert_error(401, "unauthorized");
    let message = a.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("?token="), "{message}");
}

async fn websocket_upgrade_from_foreign_origin_is_refused_403() {
    use tungstenite::client::IntoClientRequest;
    let t = user_token(&unique("u"), "free");
    let url = format!(
        "{}/v1/sessions/{UNKNOWN_SESSION}/ws?token={t}",
        base().replace("http", "ws")
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example.com".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        other => panic!("expected a 403 refusal, got {other:?}"),
    }
}

async fn websocket_token_in_query_reaches_the_object() {
    // A valid ?token= passes the gateway: the unknown session then answers
    // 404 from the object, before any upgrade.
    let t = user_token(&unique("u"), "free");
    let url = format!(
        "{}/v1/sessions/{UNKNOWN_SESSION}/ws?token={t}",
        base().replace("http", "ws")
    );
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 404),
        other => panic!("expected a 404 refusal, got {other:?}"),
    }
}
