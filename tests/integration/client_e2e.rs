//! `sesh-client` end to end: two clients send while the runtime is killed
//! with SIGKILL and restarted; both reconnect unaided, every point is acked
//! once and stored once (in the object and in D1), and each client sees
//! every point of the other exactly once, in `seq` order.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sesh_client::protocol::{CreateSession, NewPoint};
use sesh_client::{Ack, Backoff, Client, Event, LiveConfig};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{d1_at, unique, TestFn};
use crate::harness::{user_token, Server};

/// The tests of this module, by name.
pub const TESTS: &[(&str, TestFn)] = crate::test_list!(
    "client_e2e",
    two_clients_survive_a_sigkill_with_every_point_once
);

/// A TCP forwarder on a fixed port to whatever port the runtime listens on
/// now (a restarted runtime gets a new one). Connections in flight die
/// with the runtime, as they would behind a load balancer.
async fn proxy(backend: Arc<AtomicU16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let port = listener.local_addr().expect("proxy address").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = backend.load(Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

/// A client whose token provider counts its calls.
fn client(base: &str, token: String, calls: Arc<AtomicUsize>) -> Client {
    Client::builder(base)
        .token_provider(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let t = token.clone();
            async move { Ok(t) }
        })
        .live_config(LiveConfig {
            backoff: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(2),
                factor: 2.0,
            },
            ..LiveConfig::default()
        })
        .build()
}

/// Collects a live session's points and counts its (re)connects until
/// `want` points arrived.
async fn collect(mut live: sesh_client::Live, want: usize) -> (Vec<u64>, Vec<String>, usize) {
    let (mut seqs, mut users, mut connects) = (Vec::new(), Vec::new(), 0);
    while seqs.len() < want {
        match tokio::time::timeout(Duration::from_secs(120), live.next_event()).await {
            Ok(Some(Event::Point(p))) => {
                seqs.push(p.seq);
                users.push(p.user_id);
            }
            Ok(Some(Event::Connected { .. })) => connects += 1,
            Ok(Some(Event::Ended { .. })) | Ok(None) => break,
            Ok(Some(_)) => {}
            Err(_) => panic!("no event for 120 s; {} of {want} points", seqs.len()),
        }
    }
    (seqs, users, connects)
}

async fn two_clients_survive_a_sigkill_with_every_point_once() {
    const N: usize = 40;
    let mut server = tokio::task::spawn_blocking(|| Server::start(&[]))
        .await
        .expect("start");
    let backend = Arc::new(AtomicU16::new(server.port()));
    let base = format!("http://127.0.0.1:{}", proxy(backend.clone()).await);
    let (a, b) = (unique("ca"), unique("cb"));
    let (calls_a, calls_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ca = client(&base, user_token(&a, "pro"), calls_a.clone());
    let cb = client(&base, user_token(&b, "pro"), calls_b.clone());
    let session = ca
        .create_session(&CreateSession {
            members: Some(vec![b.clone()]),
            ..CreateSession::default()
        })
        .await
        .expect("create session");
    let id = session.summary.id.clone();
    let mut la = ca.join(&id);
    let mut lb = cb.join(&id);
    for live in [&mut la, &mut lb] {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), live.next_event()).await {
                Ok(Some(Event::Connected { .. })) => break,
                Ok(Some(_)) => {}
                other => panic!("no welcome: {other:?}"),
            }
        }
    }
    let (sa, sb) = (la.sender(), lb.sender());
    let seen_a = tokio::spawn(collect(la, N));
    let seen_b = tokio::spawn(collect(lb, N));
    // Both send a point every 15 ms; the runtime dies a third of the way.
    let send_all = |s: sesh_client::LiveSender, who: &'static str| {
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..N {
                let mut p = NewPoint::new(who);
                p.value = Some(i as f64);
                let s = s.clone();
                acks.push(tokio::spawn(async move { s.send(p).await }));
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            let mut out: Vec<Ack> = Vec::new();
            for a in acks {
                let ack = tokio::time::timeout(Duration::from_secs(120), a)
                    .await
                    .expect("ack within 120 s")
                    .expect("send task");
                out.push(ack.unwrap_or_else(|e| panic!("{who}: point refused: {e}")));
            }
            out
        })
    };
    let acks_a = send_all(sa.clone(), "a");
    let acks_b = send_all(sb.clone(), "b");
    tokio::time::sleep(Duration::from_millis(15 * N as u64 / 3)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.crash_and_restart();
        server
    })
    .await
    .expect("restart");
    backend.store(server.port(), Ordering::SeqCst);
    let acks_a = acks_a.await.expect("a's acks");
    let acks_b = acks_b.await.expect("b's acks");
    let (seen_by_a, users_a, connects_a) = seen_a.await.expect("a's events");
    let (seen_by_b, users_b, connects_b) = seen_b.await.expect("b's events");

    // Acked once each, and the two clients' seqs are 1..=2N without gaps.
    let seqs = |acks: &[Ack]| acks.iter().map(|a| a.seq).collect::<BTreeSet<u64>>();
    let (sa_seqs, sb_seqs) = (seqs(&acks_a), seqs(&acks_b));
    assert_eq!(sa_seqs.len(), N, "a: one seq per point");
    assert_eq!(sb_seqs.len(), N, "b: one seq per point");
    let all: BTreeSet<u64> = sa_seqs.union(&sb_seqs).copied().collect();
    assert_eq!(
        all,
        (1..=2 * N as u64).collect(),
        "stored once each, no gaps"
    );
    // Each saw the other's points once, in order, and nothing of its own.
    assert_eq!(seen_by_a, sb_seqs.iter().copied().collect::<Vec<_>>());
    assert_eq!(seen_by_b, sa_seqs.iter().copied().collect::<Vec<_>>());
    assert!(users_a.iter().all(|u| *u == b) && users_b.iter().all(|u| *u == a));
    // They reconnected by themselves, with a fresh token each time.
    assert!(
        connects_a >= 1 && connects_b >= 1,
        "{connects_a} {connects_b}"
    );
    assert!(
        calls_a.load(Ordering::SeqCst) >= 3,
        "token asked per connect"
    );
    assert!(
        calls_b.load(Ordering::SeqCst) >= 2,
        "token asked per connect"
    );

    // The HTTP read agrees, and D1 holds each point exactly once after the
    // end flush.
    let stored = ca.points(&id, 0).limit(7).all().await.expect("points");
    assert_eq!(
        stored.iter().map(|p| p.seq).collect::<Vec<_>>(),
        (1..=2 * N as u64).collect::<Vec<_>>()
    );
    for ack in acks_a.iter().chain(&acks_b) {
        let p = &stored[ack.seq as usize - 1];
        assert_eq!(p.id.as_deref(), Some(ack.id.as_str()));
    }
    let ended = ca.end_session(&id).await.expect("end");
    assert_eq!(ended.summary.point_count, 2 * N as u64);
    let month = sesh_core::time::month_suffix(sesh::time::now_ms());
    let rows: Vec<Value> = d1_at(
        &server.base,
        &format!(
            "SELECT COUNT(*) AS n, COUNT(DISTINCT seq) AS d, MIN(seq) AS lo, MAX(seq) AS hi \
             FROM session_points_{month} WHERE session_id = '{id}'"
        ),
    )
    .await;
    let n = 2 * N;
    assert_eq!(rows, vec![json!({"n": n, "d": n, "lo": 1, "hi": n})]);
    drop(server);
}
