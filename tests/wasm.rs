//! What must behave the same on the production target (wasm32 in Node, via
//! wasm-bindgen-test): token verification, the clock, id generation and
//! protocol parsing.

#![cfg(target_arch = "wasm32")]

use serde_json::json;
use wasm_bindgen_test::wasm_bindgen_test;

use sesh::{ids, time};
use sesh_core::auth::{self, AuthError};
use sesh_protocol::{ClientFrame, FrameError, ServerFrame};

const SECRET: &[u8] = b"wasm-secret";

#[wasm_bindgen_test]
fn jwt_verification_matches_native() {
    let now = time::now_ms() / 1000;
    let t = auth::sign(
        &json!({"sub": "alice", "exp": now + 60, "plan": "pro"}),
        SECRET,
    );
    let c = auth::verify(&t, SECRET, now).expect("valid token");
    assert_eq!(
        (c.sub.as_str(), c.plan.as_str(), c.service),
        ("alice", "pro", false)
    );
    assert_eq!(
        auth::verify(&t, b"other", now),
        Err(AuthError::BadSignature)
    );
    assert_eq!(auth::verify(&t, SECRET, now + 60), Err(AuthError::Expired));
    let none = auth::sign_with_header(
        &json!({"alg": "none"}),
        &json!({"sub": "a", "exp": now + 9}),
        SECRET,
    );
    assert_eq!(
        auth::verify(&none, SECRET, now),
        Err(AuthError::UnsupportedAlgorithm)
    );
}

#[wasm_bindgen_test]
fn clock_is_real_utc_milliseconds() {
    let a = time::now_ms();
    // After 2025-01-01 and before 2100: a real clock, in milliseconds.
    assert!(a > 1_735_689_600_000 && a < 4_102_444_800_000, "{a}");
    assert!(time::now_ms() >= a);
    assert_eq!(sesh_core::time::rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(sesh_core::time::month_suffix(1_769_904_000_000), "2026_02");
}

#[wasm_bindgen_test]
fn ids_are_random_and_well_formed() {
    let now = time::now_ms();
    let a = ids::new_session_id(now);
    let b = ids::new_session_id(now);
    assert_ne!(a, b, "randomness works on wasm32");
    assert_eq!(
        sesh_protocol::parse_session_id(&a).as_deref(),
        Some(a.as_str())
    );
    assert_eq!(sesh_protocol::session_id_unix_ms(&a), Some(now));
    assert_ne!(ids::new_random_id(), ids::new_random_id());
}

#[wasm_bindgen_test]
fn protocol_parsing_matches_native() {
    match ClientFrame::parse(
        r#"{"type":"point","id":"p1","kind":"hr","value":72.5,"ts":1730000000000}"#,
    ) {
        Ok(ClientFrame::Point(p)) => {
            assert_eq!(p.kind, "hr");
            assert_eq!(p.value, Some(72.5));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ClientFrame::parse(r#"{"type":"warp"}"#),
        Err(FrameError::UnknownType(_))
    ));
    assert!(matches!(
        ClientFrame::parse("{"),
        Err(FrameError::InvalidJson(_))
    ));
    let ack = ServerFrame::Ack { id: None, seq: 7 }.to_json();
    assert_eq!(ack, r#"{"type":"ack","seq":7}"#);
}

#[wasm_bindgen_test]
fn quota_gcra_and_calendar_counters_match_native() {
    use sesh_core::config::Plans;
    use sesh_core::quota::QuotaState;
    use sesh_protocol::Resource;

    let plans = Plans::default();
    let free = plans.get("free").expect("free plan");
    let now = time::now_ms();
    let mut s = QuotaState::default();
    for _ in 0..20 {
        assert!(s.check(free, Resource::Api, 1, now).allowed);
    }
    let d = s.check(free, Resource::Api, 1, now);
    assert_eq!((d.allowed, d.retry_after_ms), (false, Some(1_000)));
    assert!(s.check(free, Resource::Api, 1, now + 1_000).allowed);
    let d = s.check(free, Resource::Points, 10_001, now);
    assert!(!d.allowed && d.remaining == Some(10_000));
    // The state is stored as JSON and must read back the same on wasm32.
    let text = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<QuotaState>(&text).unwrap(), s);
}

#[wasm_bindgen_test]
fn session_flood_limit_runs_on_the_virtual_clock() {
    use sesh_core::session::{Config, Decision, Meta, NoIds, SessionCore};
    use sesh_protocol::SessionStatus;

    let now = time::now_ms();
    let meta = Meta {
        id: ids::new_session_id(now),
        owner_id: "o".into(),
        title: None,
        members: vec![],
        viewers: vec![],
        metadata: Default::default(),
        status: SessionStatus::Active,
        started_at: now,
        ended_at: None,
        max_participants: 5,
        owner_plan: "free".into(),
    };
    let cfg = Config {
        flood_per_sec: 10,
        flood_burst: 2,
        ..Config::default()
    };
    let mut c = SessionCore::create(meta, cfg, now);
    c.join("c", "o", now);
    while c.poll().is_some() {}
    let mut frames = Vec::new();
    for _ in 0..3 {
        c.on_text("c", r#"{"type":"ping"}"#, now, &mut NoIds);
    }
    while let Some(a) = c.poll() {
        if let Decision::Send { text, .. } = a {
            frames.push(text.to_string());
        }
    }
    assert_eq!(frames[0], r#"{"type":"pong"}"#);
    assert!(frames[2].contains("rate_limited"), "{frames:?}");
}
