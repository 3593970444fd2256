//! The browser client end to end: `sesh-client` compiled to wasm32, run by
//! `wasm-bindgen-test-runner` in headless Chromium against a live
//! `wrangler dev`. Two clients on the page join one session over
//! `web_sys::WebSocket`, exchange points, and one of them loses its socket
//! with points in flight: every point is acked once and stored once, and
//! each client sees the other's points once, in `seq` order.
//!
//! `cargo xtask test` starts the server (with `ALLOWED_ORIGINS=*`, as the
//! runner's page is on another port) and passes its base URL and two
//! tokens at compile time: `SESH_BROWSER_BASE`, `SESH_BROWSER_USER_A`,
//! `SESH_BROWSER_TOKEN_A`, `SESH_BROWSER_USER_B`, `SESH_BROWSER_TOKEN_B`.
//! Without them the tests only say they were skipped.

#![cfg(target_arch = "wasm32")]

use std::cell::Cell;
use std::collections::BTreeSet;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures::future::{join_all, FutureExt};
use futures::{pin_mut, select};
use sesh_client::protocol::{CreateSession, NewPoint, StoredPoint};
use sesh_client::{Ack, Backoff, Client, Event, Live, LiveConfig};
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// The server and the two users, if the xtask passed them.
struct Env {
    base: &'static str,
    users: [(&'static str, &'static str); 2],
}

fn env() -> Option<Env> {
    let env = Env {
        base: option_env!("SESH_BROWSER_BASE")?,
        users: [
            (
                option_env!("SESH_BROWSER_USER_A")?,
                option_env!("SESH_BROWSER_TOKEN_A")?,
            ),
            (
                option_env!("SESH_BROWSER_USER_B")?,
                option_env!("SESH_BROWSER_TOKEN_B")?,
            ),
        ],
    };
    if env.base.is_empty() {
        return None;
    }
    Some(env)
}

/// A client whose token provider counts its calls (one per request and
/// per connect), with quick reconnects.
fn client(base: &str, token: &'static str, calls: Rc<Cell<usize>>) -> Client {
    Client::builder(base)
        .token_provider(move || {
            calls.set(calls.get() + 1);
            async move { Ok(token.to_owned()) }
        })
        .live_config(LiveConfig {
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
                factor: 2.0,
            },
            ..LiveConfig::default()
        })
        .build()
}

/// `f`, or a panic naming `what` after `secs` seconds.
async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    let f = f.fuse();
    let timer = gloo_timers::future::sleep(Duration::from_secs(secs)).fuse();
    pin_mut!(f, timer);
    select! {
        v = f => v,
        () = timer => panic!("{what}: nothing within {secs} s"),
    }
}

/// What a live session said while it was read.
#[derive(Default)]
struct Seen {
    points: Vec<StoredPoint>,
    connects: usize,
    disconnects: usize,
    ended: bool,
}

/// Reads `live` until `done` holds, keeping its points and counting its
/// (re)connects.
async fn read_until(live: &mut Live, seen: &mut Seen, what: &str, done: impl Fn(&Seen) -> bool) {
    while !done(seen) {
        match within(60, what, live.next_event()).await {
            Some(Event::Point(p)) => seen.points.push(p),
            Some(Event::Connected { .. }) => seen.connects += 1,
            Some(Event::Disconnected { .. }) => seen.disconnects += 1,
            Some(Event::Ended { .. }) => seen.ended = true,
            Some(Event::Error(e)) => console_log!("{what}: error event: {e}"),
            Some(Event::Joined(_))
            | Some(Event::Left { .. })
            | Some(Event::Members { .. })
            | Some(Event::Removed)
            | Some(Event::Signal { .. })
            | Some(Event::State { .. }) => {}
            None => panic!("{what}: the live session closed"),
        }
    }
}

/// Sends `n` points of `kind` (values `from..from+n`) without waiting
/// between them; the acks, in sending order.
fn send_many(
    live: &Live,
    kind: &str,
    from: usize,
    n: usize,
) -> impl Future<Output = Vec<Result<Ack, sesh_client::Error>>> {
    let sends: Vec<_> = (from..from + n)
        .map(|i| {
            let mut p = NewPoint::new(kind);
            p.value = Some(i as f64);
            live.send(p)
        })
        .collect();
    join_all(sends)
}

fn acked(what: &str, acks: Vec<Result<Ack, sesh_client::Error>>) -> Vec<Ack> {
    acks.into_iter()
        .map(|a| a.unwrap_or_else(|e| panic!("{what}: point refused: {e}")))
        .collect()
}

fn seqs(points: &[StoredPoint]) -> Vec<u64> {
    points.iter().map(|p| p.seq).collect()
}

/// Two clients, a session of A's with B as a member, both joined.
struct Pair {
    a: Client,
    b: Client,
    user_a: &'static str,
    user_b: &'static str,
    calls_a: Rc<Cell<usize>>,
    session: String,
    la: Live,
    lb: Live,
    seen_a: Seen,
    seen_b: Seen,
}

async fn pair(env: &Env, title: &str) -> Pair {
    let [(user_a, token_a), (user_b, token_b)] = env.users;
    let calls_a = Rc::new(Cell::new(0));
    let a = client(env.base, token_a, calls_a.clone());
    let b = client(env.base, token_b, Rc::new(Cell::new(0)));
    let session = within(
        30,
        "create the session",
        a.create_session(&CreateSession {
            title: Some(title.to_owned()),
            members: Some(vec![user_b.to_owned()]),
            ..CreateSession::default()
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("create the session: {e}"));
    let (mut la, mut lb) = (a.join(&session.summary.id), b.join(&session.summary.id));
    let (mut seen_a, mut seen_b) = (Seen::default(), Seen::default());
    read_until(&mut la, &mut seen_a, "A joins", |s| s.connects == 1).await;
    read_until(&mut lb, &mut seen_b, "B joins", |s| s.connects == 1).await;
    Pair {
        a,
        b,
        user_a,
        user_b,
        calls_a,
        session: session.summary.id,
        la,
        lb,
        seen_a,
        seen_b,
    }
}

#[wasm_bindgen_test]
async fn two_browser_clients_exchange_points() {
    let Some(env) = env() else {
        console_log!("skipped: SESH_BROWSER_BASE and the tokens were not set at build time");
        return;
    };
    let mut p = pair(&env, "browser exchange").await;

    let acks_a = acked(
        "A",
        within(30, "A's acks", send_many(&p.la, "from_a", 0, 5)).await,
    );
    let acks_b = acked(
        "B",
        within(30, "B's acks", send_many(&p.lb, "from_b", 0, 5)).await,
    );
    let all: BTreeSet<u64> = acks_a.iter().chain(&acks_b).map(|a| a.seq).collect();
    assert_eq!(all, (1..=10).collect(), "ten points, one seq each");

    read_until(&mut p.la, &mut p.seen_a, "A reads B's points", |s| {
        s.points.len() >= 5
    })
    .await;
    read_until(&mut p.lb, &mut p.seen_b, "B reads A's points", |s| {
        s.points.len() >= 5
    })
    .await;
    assert_eq!(
        seqs(&p.seen_a.points),
        acks_b.iter().map(|a| a.seq).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&p.seen_b.points),
        acks_a.iter().map(|a| a.seq).collect::<Vec<_>>()
    );
    assert!(p.seen_a.points.iter().all(|x| x.user_id == p.user_b));
    assert!(p.seen_b.points.iter().all(|x| x.user_id == p.user_a));
    let values: Vec<f64> = p.seen_b.points.iter().filter_map(|x| x.value).collect();
    assert_eq!(values, vec![0.0, 1.0, 2.0, 3.0, 4.0]);

    // The owner ends it; the other side hears so.
    within(30, "end", p.a.end_session(&p.session))
        .await
        .unwrap_or_else(|e| panic!("end the session: {e}"));
    read_until(&mut p.lb, &mut p.seen_b, "B hears the end", |s| s.ended).await;
    console_log!("exchange: 10 points, each seen once by the other side");
}

#[wasm_bindgen_test]
async fn a_dropped_socket_resends_and_resumes_exactly_once() {
    let Some(env) = env() else {
        console_log!("skipped: SESH_BROWSER_BASE and the tokens were not set at build time");
        return;
    };
    let mut p = pair(&env, "browser reconnect").await;
    let calls_before = p.calls_a.get();

    // A queues ten points and drops its socket right behind them: those
    // the server stored before the drop are acked only after the
    // reconnect, as resends with the same ids.
    let first_a = send_many(&p.la, "from_a", 0, 10);
    p.la.reconnect();
    // B sends while A is away: A gets them by resuming from its last seq.
    let first_b = send_many(&p.lb, "from_b", 0, 10);
    let (first_a, first_b) = within(60, "acks across the drop", async {
        futures::join!(first_a, first_b)
    })
    .await;
    let mut acks_a = acked("A", first_a);
    let mut acks_b = acked("B", first_b);

    // Once more, with A dropping mid-batch and both sending after.
    let more_a = send_many(&p.la, "from_a", 10, 5);
    p.la.reconnect();
    let later_a = send_many(&p.la, "from_a", 15, 5);
    let more_b = send_many(&p.lb, "from_b", 10, 10);
    let (more_a, later_a, more_b) = within(60, "acks across the second drop", async {
        futures::join!(more_a, later_a, more_b)
    })
    .await;
    acks_a.extend(acked("A", more_a));
    acks_a.extend(acked("A", later_a));
    acks_b.extend(acked("B", more_b));

    // Every point acked once, with its own seq, and no gaps: nothing was
    // stored twice.
    let (n_a, n_b) = (acks_a.len(), acks_b.len());
    assert_eq!((n_a, n_b), (20, 20));
    let sa: BTreeSet<u64> = acks_a.iter().map(|a| a.seq).collect();
    let sb: BTreeSet<u64> = acks_b.iter().map(|a| a.seq).collect();
    assert_eq!((sa.len(), sb.len()), (n_a, n_b), "one seq per point");
    let all: BTreeSet<u64> = sa.union(&sb).copied().collect();
    assert_eq!(
        all,
        (1..=(n_a + n_b) as u64).collect(),
        "stored once each, no gaps"
    );
    let ids: BTreeSet<&str> = acks_a.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), n_a, "one id per point");

    // Each side saw the other's points once, in seq order.
    read_until(&mut p.la, &mut p.seen_a, "A reads B's points", |s| {
        s.points.len() >= n_b
    })
    .await;
    read_until(&mut p.lb, &mut p.seen_b, "B reads A's points", |s| {
        s.points.len() >= n_a
    })
    .await;
    assert_eq!(
        seqs(&p.seen_a.points),
        sb.iter().copied().collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&p.seen_b.points),
        sa.iter().copied().collect::<Vec<_>>()
    );
    let values_b: Vec<f64> = p.seen_a.points.iter().filter_map(|x| x.value).collect();
    assert_eq!(values_b, (0..20).map(f64::from).collect::<Vec<_>>());

    // A reconnected twice by itself, asking for a fresh token each time.
    assert!(p.seen_a.disconnects >= 2, "{} drops", p.seen_a.disconnects);
    assert!(p.seen_a.connects >= 3, "{} connects", p.seen_a.connects);
    assert!(
        p.calls_a.get() >= calls_before + 2,
        "a token per connect: {} then {}",
        calls_before,
        p.calls_a.get()
    );

    // The HTTP read agrees: each point stored once, under its id.
    let stored = within(
        30,
        "read the points",
        p.b.points(&p.session, 0).limit(7).all(),
    )
    .await
    .unwrap_or_else(|e| panic!("read the points: {e}"));
    assert_eq!(seqs(&stored), (1..=(n_a + n_b) as u64).collect::<Vec<_>>());
    for ack in acks_a.iter().chain(&acks_b) {
        let point = &stored[ack.seq as usize - 1];
        assert_eq!(point.id.as_deref(), Some(ack.id.as_str()));
    }
    let mut from_a: Vec<f64> = stored
        .iter()
        .filter(|x| x.user_id == p.user_a)
        .filter_map(|x| x.value)
        .collect();
    from_a.sort_by(f64::total_cmp);
    assert_eq!(
        from_a,
        (0..20).map(f64::from).collect::<Vec<_>>(),
        "each of A's points stored once"
    );

    p.la.close();
    p.lb.close();
    console_log!(
        "reconnect: {} points across two drops, A connected {} times",
        n_a + n_b,
        p.seen_a.connects
    );
}
