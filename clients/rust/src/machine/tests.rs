//! The machine against a fake server on a virtual clock: frames travel
//! through queues that a drop empties (so acks and points in flight are
//! lost), and the server can go down and come back with its storage.

use std::collections::{HashMap, VecDeque};

use sesh_protocol::{ClientFrame, NewPoint, Participant, ServerFrame, StoredPoint};

use super::*;

/// The server side: stored points, idempotency per user, live connections.
#[derive(Default)]
struct FakeServer {
    points: Vec<StoredPoint>,
    ids: HashMap<(String, String), u64>,
    up: bool,
    /// Client index -> connection number, while connected.
    conns: HashMap<usize, u32>,
    next_conn: u32,
    /// Largest replay page; `usize::MAX` for the protocol without pages.
    page: usize,
}

/// One simulated client: its machine, user, and the frames in flight each
/// way.
struct Peer {
    m: Machine,
    user: String,
    to_server: VecDeque<String>,
    to_client: VecDeque<String>,
    connected: bool,
    events: Vec<Event>,
    acked: HashMap<String, u64>,
    ack_count: usize,
    refused: Vec<(String, Error)>,
    sent: Vec<String>,
}

struct Sim {
    now: u64,
    server: FakeServer,
    peers: Vec<Peer>,
    rng: fastrand::Rng,
}

fn cfg() -> LiveConfig {
    LiveConfig {
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(2000),
            factor: 2.0,
        },
        ..LiveConfig::default()
    }
}

fn frame_text(f: &ServerFrame) -> String {
    f.to_json()
}

impl Sim {
    fn new(users: &[&str], seed: u64) -> Sim {
        let peers = users
            .iter()
            .enumerate()
            .map(|(i, u)| Peer {
                m: Machine::new(cfg(), seed + i as u64),
                user: (*u).to_owned(),
                to_server: VecDeque::new(),
                to_client: VecDeque::new(),
                connected: false,
                events: Vec::new(),
                acked: HashMap::new(),
                ack_count: 0,
                refused: Vec::new(),
                sent: Vec::new(),
            })
            .collect();
        Sim {
            now: 1_000,
            server: FakeServer {
                up: true,
                // Small replay pages, so resuming follows `more` as against the real
                // server with REPLAY_PAGE.
                page: 3,
                ..FakeServer::default()
            },
            peers,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    fn start(&mut self) {
        for p in &mut self.peers {
            p.m.start(self.now);
        }
        self.settle();
    }

    fn send(&mut self, peer: usize, kind: &str) -> String {
        let id = self.peers[peer].m.send(self.now, NewPoint::new(kind));
        self.peers[peer].sent.push(id.clone());
        id
    }

    /// Carries out outputs and delivers frames until nothing moves.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.peers.len() {
                while let Some(o) = self.peers[i].m.poll_output() {
                    moved = true;
                    self.output(i, o);
                }
            }
            for i in 0..self.peers.len() {
                if let Some(text) = self.peers[i].to_server.pop_front() {
                    moved = true;
                    self.server_receives(i, &text);
                }
                if let Some(text) = self.peers[i].to_client.pop_front() {
                    moved = true;
                    let now = self.now;
                    self.peers[i].m.received(now, &text);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn output(&mut self, i: usize, o: Output) {
        let now = self.now;
        match o {
            Output::Connect => {
                if self.server.up {
                    self.peers[i].m.connected(now);
                    self.peers[i].connected = true;
                    self.server.next_conn += 1;
                    let conn = self.server.next_conn;
                    self.server.conns.insert(i, conn);
                    let welcome = ServerFrame::Welcome {
                        session_id: "s".into(),
                        conn_id: format!("c{conn}"),
                        user_id: self.peers[i].user.clone(),
                        last_seq: self.server.points.len() as u64,
                        participants: Vec::new(),
                    };
                    self.peers[i].to_client.push_back(frame_text(&welcome));
                    let joined = ServerFrame::Joined(Participant {
                        conn_id: format!("c{conn}"),
                        user_id: self.peers[i].user.clone(),
                        joined_at: "2026-01-01T00:00:00Z".into(),
                        state: None,
                    });
                    self.broadcast(i, &joined);
                } else {
                    self.peers[i]
                        .m
                        .connect_failed(now, Error::transport("connection refused"));
                }
            }
            Output::Send(text) => {
                if self.peers[i].connected {
                    self.peers[i].to_server.push_back(text);
                }
            }
            Output::CloseSocket => self.cut(i, false),
            Output::Event(e) => self.peers[i].events.push(e),
            Output::Acked { id, seq } => {
                self.peers[i].ack_count += 1;
                assert!(
                    self.peers[i].acked.insert(id.clone(), seq).is_none(),
                    "{id} acked twice"
                );
            }
            Output::Refused { id, error } => self.peers[i].refused.push((id, error)),
            Output::Stopped => {}
        }
    }

    fn broadcast(&mut self, from: usize, f: &ServerFrame) {
        let text = frame_text(f);
        for (j, p) in self.peers.iter_mut().enumerate() {
            if j != from && self.server.conns.contains_key(&j) {
                p.to_client.push_back(text.clone());
            }
        }
    }

    fn server_receives(&mut self, i: usize, text: &str) {
        if !self.server.up || !self.server.conns.contains_key(&i) {
            return;
        }
        match ClientFrame::parse(text).expect("client frames are valid") {
            ClientFrame::Point(p) => {
                let user = self.peers[i].user.clone();
                let key = (user.clone(), p.id.clone().expect("every point has an id"));
                let id = p.id.clone();
                if let Some(&seq) = self.server.ids.get(&key) {
                    let ack = ServerFrame::Ack { id, seq };
                    self.peers[i].to_client.push_back(frame_text(&ack));
                    return;
                }
                let seq = self.server.points.len() as u64 + 1;
                let stored = p.into_stored(seq, user, 0);
                self.server.ids.insert(key, seq);
                self.server.points.push(stored.clone());
                let ack = ServerFrame::Ack { id, seq };
                self.peers[i].to_client.push_back(frame_text(&ack));
                self.broadcast(i, &ServerFrame::Point(stored));
            }
            ClientFrame::Resume { after_seq } => {
                let page: Vec<StoredPoint> = self
                    .server
                    .points
                    .iter()
                    .skip(after_seq as usize)
                    .take(self.server.page)
                    .cloned()
                    .collect();
                let through_seq = page.last().map_or(after_seq, |p| p.seq);
                for p in page {
                    let t = frame_text(&ServerFrame::Point(p));
                    self.peers[i].to_client.push_back(t);
                }
                let last_seq = self.server.points.len() as u64;
                let t = frame_text(&ServerFrame::Resumed {
                    last_seq,
                    through_seq,
                    more: through_seq < last_seq,
                });
                self.peers[i].to_client.push_back(t);
            }
            ClientFrame::Ping => {
                self.peers[i]
                    .to_client
                    .push_back(frame_text(&ServerFrame::Pong));
            }
            // The fake server has no live room state; the clients here
            // send none.
            ClientFrame::Signal { .. } | ClientFrame::State { .. } => {}
            ClientFrame::End => {
                let last_seq = self.server.points.len() as u64;
                let ended = ServerFrame::Ended { last_seq };
                for p in &mut self.peers {
                    p.to_client.push_back(frame_text(&ended));
                }
            }
        }
    }

    /// Cuts peer `i`'s socket: frames in flight either way are lost; the
    /// machine hears of it unless it asked for the close itself.
    fn cut(&mut self, i: usize, tell: bool) {
        let was = self.peers[i].connected;
        self.peers[i].connected = false;
        self.peers[i].to_server.clear();
        self.peers[i].to_client.clear();
        if let Some(conn) = self.server.conns.remove(&i) {
            let left = ServerFrame::Left {
                conn_id: format!("c{conn}"),
                user_id: self.peers[i].user.clone(),
            };
            self.broadcast(i, &left);
        }
        if tell && was {
            let now = self.now;
            self.peers[i].m.disconnected(now);
        }
    }

    fn crash_server(&mut self) {
        self.server.up = false;
        for i in 0..self.peers.len() {
            self.cut(i, true);
        }
    }

    /// Moves the virtual clock to the earliest timeout (at most `max` ms
    /// ahead) and fires it.
    fn advance(&mut self, max: u64) {
        let limit = self.now + max;
        let next = self
            .peers
            .iter()
            .filter_map(|p| p.m.poll_timeout())
            .min()
            .unwrap_or(limit)
            .min(limit);
        self.now = self.now.max(next);
        for i in 0..self.peers.len() {
            if self.peers[i]
                .m
                .poll_timeout()
                .is_some_and(|t| t <= self.now)
            {
                let now = self.now;
                self.peers[i].m.handle_timeout(now);
            }
        }
        self.settle();
    }

    fn points_seen(&self, i: usize) -> Vec<StoredPoint> {
        self.peers[i]
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Point(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// The invariants: each sent point stored once and acked once with its
    /// stored seq; each peer saw exactly the others' points, in order.
    fn check(&self) {
        let stored = &self.server.points;
        for (i, p) in self.peers.iter().enumerate() {
            assert_eq!(p.m.unacked(), 0, "peer {i} has unacked points");
            assert_eq!(p.ack_count, p.sent.len(), "peer {i}: one ack per point");
            for id in &p.sent {
                let n = stored
                    .iter()
                    .filter(|s| s.user_id == p.user && s.id.as_deref() == Some(id))
                    .count();
                assert_eq!(n, 1, "{id} stored once");
                let seq = p.acked[id];
                assert_eq!(stored[seq as usize - 1].id.as_deref(), Some(id.as_str()));
            }
            let others: Vec<u64> = stored
                .iter()
                .filter(|s| !p.sent.iter().any(|id| s.id.as_deref() == Some(id)))
                .map(|s| s.seq)
                .collect();
            let seen: Vec<u64> = self.points_seen(i).iter().map(|s| s.seq).collect();
            assert_eq!(
                seen, others,
                "peer {i} sees the others' points once, in order"
            );
        }
    }
}

#[test]
fn backoff_grows_to_its_cap_with_full_jitter() {
    let b = Backoff::default();
    assert_eq!(b.ceiling(0), Duration::from_millis(500));
    assert_eq!(b.ceiling(1), Duration::from_millis(1000));
    assert_eq!(b.ceiling(4), Duration::from_millis(8000));
    assert_eq!(b.ceiling(5), Duration::from_secs(10));
    assert_eq!(b.ceiling(1000), Duration::from_secs(10));
    let mut rng = fastrand::Rng::with_seed(7);
    let delays: Vec<Duration> = (0..200).map(|_| b.delay(3, &mut rng)).collect();
    assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)));
    assert!(delays.iter().any(|d| *d < Duration::from_secs(1)));
    assert!(delays.iter().any(|d| *d > Duration::from_secs(3)));
}

#[test]
fn points_are_acked_and_delivered_to_the_other() {
    let mut sim = Sim::new(&["a", "b"], 1);
    sim.start();
    assert!(matches!(sim.peers[0].events[0], Event::Connected { .. }));
    for k in 0..5 {
        sim.send(0, &format!("a{k}"));
        sim.send(1, &format!("b{k}"));
    }
    sim.settle();
    sim.check();
    assert_eq!(sim.server.points.len(), 10);
    assert!(sim.peers[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::Joined(p) if p.user_id == "b")));
}

#[test]
fn generated_ids_are_v4_uuids_and_given_ids_are_kept() {
    let mut m = Machine::new(cfg(), 3);
    let id = m.send(0, NewPoint::new("k"));
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4");
    assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
    let mut p = NewPoint::new("k");
    p.id = Some("mine".into());
    assert_eq!(m.send(0, p), "mine");
}

#[test]
fn nothing_is_sent_before_welcome_and_queued_points_go_after_it() {
    let mut m = Machine::new(cfg(), 1);
    m.start(0);
    assert_eq!(m.poll_output(), Some(Output::Connect));
    m.send(0, NewPoint::new("k"));
    assert_eq!(m.poll_output(), None);
    m.connected(5);
    assert_eq!(m.poll_output(), None);
    let welcome = ServerFrame::Welcome {
        session_id: "s".into(),
        conn_id: "c".into(),
        user_id: "a".into(),
        last_seq: 0,
        participants: Vec::new(),
    };
    m.received(6, &welcome.to_json());
    assert!(matches!(
        m.poll_output(),
        Some(Output::Event(Event::Connected { .. }))
    ));
    assert!(matches!(m.poll_output(), Some(Output::Send(t)) if t.contains("\"type\":\"point\"")));
}

#[test]
fn a_lost_ack_is_resent_with_its_id_and_stored_once() {
    let mut sim = Sim::new(&["a", "b"], 2);
    sim.start();
    sim.send(0, "x");
    // The server takes the point; its ack is lost with the socket.
    for o in std::iter::from_fn(|| sim.peers[0].m.poll_output()).collect::<Vec<_>>() {
        sim.output(0, o);
    }
    let text = sim.peers[0].to_server.pop_front().unwrap();
    sim.server_receives(0, &text);
    sim.cut(0, true);
    sim.settle();
    assert_eq!(sim.peers[0].m.unacked(), 1);
    for _ in 0..20 {
        sim.advance(5_000);
    }
    sim.check();
    assert_eq!(sim.server.points.len(), 1);
}

#[test]
fn a_point_lost_on_the_way_is_resent() {
    let mut sim = Sim::new(&["a", "b"], 3);
    sim.start();
    sim.send(0, "x");
    for o in std::iter::from_fn(|| sim.peers[0].m.poll_output()).collect::<Vec<_>>() {
        sim.output(0, o);
    }
    sim.cut(0, true);
    assert!(sim.server.points.is_empty());
    for _ in 0..20 {
        sim.advance(5_000);
    }
    sim.check();
    assert_eq!(sim.server.points.len(), 1);
}

#[test]
fn reconnects_resume_from_the_last_seq_seen() {
    let mut sim = Sim::new(&["a", "b"], 4);
    sim.start();
    sim.send(1, "b1");
    sim.settle();
    sim.cut(0, true);
    // b goes on while a is away.
    for k in 0..5 {
        sim.send(1, &format!("b{k}"));
    }
    sim.settle();
    assert_eq!(sim.points_seen(0).len(), 1);
    let resumes_before = sim.server.points.len();
    for _ in 0..20 {
        sim.advance(5_000);
    }
    assert_eq!(resumes_before, 6);
    sim.check();
    assert!(sim.peers[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::Disconnected { retry_in: Some(_) })));
}

#[test]
fn the_server_down_for_a_while_is_retried_with_growing_waits() {
    let mut sim = Sim::new(&["a", "b"], 5);
    sim.start();
    sim.send(0, "a0");
    sim.settle();
    sim.crash_server();
    sim.send(0, "a1");
    sim.send(1, "b1");
    let t0 = sim.now;
    for _ in 0..12 {
        sim.advance(60_000);
    }
    let waits: Vec<Duration> = sim.peers[0]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Disconnected { retry_in: Some(d) } => Some(*d),
            _ => None,
        })
        .collect();
    assert!(waits.len() >= 5, "{waits:?}");
    assert!(waits.iter().all(|w| *w <= Duration::from_secs(2)));
    assert!(sim.now > t0);
    sim.server.up = true;
    for _ in 0..20 {
        sim.advance(5_000);
    }
    sim.check();
}

#[test]
fn forbidden_or_ended_sessions_stop_and_refuse_pending_points() {
    let mut m = Machine::new(cfg(), 1);
    m.start(0);
    m.poll_output();
    m.send(0, NewPoint::new("k"));
    let mut e = Error::new("forbidden", "not a member");
    e.status = Some(403);
    m.connect_failed(1, e);
    let outs: Vec<Output> = std::iter::from_fn(|| m.poll_output()).collect();
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Refused { error, .. } if error.code == "forbidden")));
    assert_eq!(outs.last(), Some(&Output::Stopped));
    assert!(m.is_stopped());
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn a_silent_socket_is_dropped_after_the_pong_timeout() {
    let mut m = Machine::new(cfg(), 1);
    m.start(0);
    m.connected(0);
    let welcome = ServerFrame::Welcome {
        session_id: "s".into(),
        conn_id: "c".into(),
        user_id: "a".into(),
        last_seq: 0,
        participants: Vec::new(),
    };
    m.received(0, &welcome.to_json());
    while m.poll_output().is_some() {}
    let t = m.poll_timeout().unwrap();
    assert_eq!(t, 20_000);
    m.handle_timeout(t);
    assert_eq!(
        m.poll_output(),
        Some(Output::Send(r#"{"type":"ping"}"#.into()))
    );
    let t = m.poll_timeout().unwrap();
    assert_eq!(t, 30_000);
    m.handle_timeout(t);
    assert_eq!(m.poll_output(), Some(Output::CloseSocket));
    assert!(matches!(
        m.poll_output(),
        Some(Output::Event(Event::Disconnected { .. }))
    ));
}

#[test]
fn rate_limited_points_wait_and_go_again_in_order() {
    let mut m = Machine::new(cfg(), 1);
    m.start(0);
    m.connected(0);
    let welcome = ServerFrame::Welcome {
        session_id: "s".into(),
        conn_id: "c".into(),
        user_id: "a".into(),
        last_seq: 0,
        participants: Vec::new(),
    };
    m.received(0, &welcome.to_json());
    let a = m.send(0, NewPoint::new("k"));
    let b = m.send(0, NewPoint::new("k"));
    while m.poll_output().is_some() {}
    let limited = ServerFrame::Error {
        code: ErrorCode::RateLimited,
        message: "slow down".into(),
        r#ref: Some(a.clone()),
        retry_after_ms: Some(300),
    };
    m.received(10, &limited.to_json());
    assert_eq!(m.poll_output(), None);
    assert_eq!(m.poll_timeout(), Some(310));
    m.handle_timeout(310);
    let sent: Vec<Output> = std::iter::from_fn(|| m.poll_output()).collect();
    assert_eq!(sent.len(), 2);
    assert!(matches!(&sent[0], Output::Send(t) if t.contains(&a)));
    assert!(matches!(&sent[1], Output::Send(t) if t.contains(&b)));
}

#[test]
fn a_refused_point_resolves_with_the_servers_error() {
    let mut sim = Sim::new(&["a"], 6);
    sim.start();
    let id = sim.send(0, "k");
    sim.peers[0].sent.clear();
    // Stand-in for the server refusing it (e.g. quota_exceeded).
    let err = ServerFrame::Error {
        code: ErrorCode::QuotaExceeded,
        message: "daily points quota".into(),
        r#ref: Some(id.clone()),
        retry_after_ms: None,
    };
    sim.peers[0].to_server.clear();
    while let Some(o) = sim.peers[0].m.poll_output() {
        if !matches!(o, Output::Send(_)) {
            sim.output(0, o);
        }
    }
    let now = sim.now;
    sim.peers[0].m.received(now, &err.to_json());
    sim.settle();
    assert_eq!(sim.peers[0].refused.len(), 1);
    assert_eq!(sim.peers[0].refused[0].0, id);
    assert_eq!(sim.peers[0].refused[0].1.code, "quota_exceeded");
    assert_eq!(sim.peers[0].m.unacked(), 0);
}

#[test]
fn out_of_order_points_are_held_until_the_gap_fills() {
    let mut m = Machine::new(cfg(), 1);
    m.start(0);
    m.connected(0);
    let welcome = ServerFrame::Welcome {
        session_id: "s".into(),
        conn_id: "c".into(),
        user_id: "a".into(),
        last_seq: 0,
        participants: Vec::new(),
    };
    m.received(0, &welcome.to_json());
    while m.poll_output().is_some() {}
    let p = |seq: u64| ServerFrame::Point(NewPoint::new("k").into_stored(seq, "b", 0)).to_json();
    m.received(1, &p(2));
    m.received(1, &p(3));
    assert_eq!(m.poll_output(), None);
    // After the gap timeout the machine asks for a replay of it.
    let t = m.poll_timeout().unwrap();
    assert_eq!(t, 2_001);
    m.handle_timeout(t);
    assert_eq!(
        m.poll_output(),
        Some(Output::Send(r#"{"type":"resume","afterSeq":0}"#.into()))
    );
    m.received(t, &p(1));
    m.received(t, &p(2));
    m.received(t, &p(3));
    let seqs: Vec<u64> = std::iter::from_fn(|| m.poll_output())
        .filter_map(|o| match o {
            Output::Event(Event::Point(p)) => Some(p.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
}

#[test]
fn random_drops_and_crashes_keep_exactly_once_in_order() {
    for seed in 0..40 {
        let mut sim = Sim::new(&["a", "b", "c"], seed * 7 + 1);
        sim.start();
        for _round in 0..60 {
            let r = sim.rng.u32(0..100);
            let who = sim.rng.usize(0..3);
            match r {
                0..=54 => {
                    sim.send(who, "k");
                    // Deliver only part of what is in flight before the
                    // next action, so drops hit frames on the way.
                    let steps = sim.rng.usize(0..4);
                    for _ in 0..steps {
                        while let Some(o) = sim.peers[who].m.poll_output() {
                            sim.output(who, o);
                        }
                        if let Some(t) = sim.peers[who].to_server.pop_front() {
                            sim.server_receives(who, &t);
                        }
                    }
                }
                55..=69 => sim.settle(),
                70..=84 => sim.cut(who, true),
                85..=89 => sim.crash_server(),
                _ => {
                    sim.server.up = true;
                    sim.advance(3_000);
                }
            }
        }
        sim.server.up = true;
        for _ in 0..100 {
            sim.advance(10_000);
        }
        sim.check();
    }
}
