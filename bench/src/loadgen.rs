//! Session WebSocket load generator and correctness checker: the job of
//! `../shared/bench/loadgen.mjs`, in Rust.
//!
//! S sessions x P participants join `/v1/sessions/{id}/ws`; for T seconds
//! each participant keeps K points in flight (closed loop) or sends R
//! points a second (open loop, still at most K in flight). Every frame is
//! checked as it arrives, exactly as loadgen.mjs does:
//!
//! - per session all welcomes agree on `lastSeq`;
//! - acked seqs are unique and exactly `lastSeq+1 ..= lastSeq+N`;
//! - each acked point reaches every other participant exactly once, never
//!   its sender, with the acked seq and the sender's `userId`;
//! - no ack is left unanswered after the drain (up to `drain_seconds`);
//! - no error frames, unexpected closes or failed upgrades.
//!
//! One thread drives every connection.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use super::drive::{self, block_on, cpu_report, cpu_snapshot, fail, Errors};
use super::summary::{fields, round_to, spread};
use super::{non_empty, non_negative, positive, seconds, Served};

/// The session WebSockets (the job and checks of loadgen.mjs).
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct Options {
    /// Sessions
    #[arg(long, default_value_t = 4, value_parser = positive)]
    pub sessions: usize,
    /// Participants per session
    #[arg(long, default_value_t = 5, value_parser = positive)]
    pub participants: usize,
    /// Send window in seconds
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    pub seconds: f64,
    /// Points in flight per participant
    #[arg(long, default_value_t = 8, value_parser = positive)]
    pub window: usize,
    /// Open loop: points per second per participant (0 = closed loop)
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub rate: f64,
    /// POST /v1/sessions first (owner = participant 0, members = the rest);
    /// implies --tokens (bench sessions does so for the rust target)
    #[arg(long)]
    pub create_sessions: bool,
    /// Seconds for each upgrade + welcome
    #[arg(long, default_value_t = 20.0, value_parser = seconds)]
    pub connect_timeout: f64,
    /// After the window, wait up to S for acks, then for deliveries
    #[arg(long, value_name = "S", default_value_t = 10.0, value_parser = non_negative)]
    pub drain_seconds: f64,
    /// User ids are X-s<S>-p<P> [default: bench-<random>]
    #[arg(long, value_name = "X", value_parser = non_empty)]
    pub user_prefix: Option<String>,
}

impl super::Gen for Options {
    const TITLE: &'static str = "bench sessions";

    fn shape(&self) -> Value {
        let (s, p, secs, w, r) = (
            self.sessions,
            self.participants,
            self.seconds,
            self.window,
            self.rate,
        );
        json!({"sessions": s, "participants": p, "seconds": secs, "window": w, "rate": r})
    }

    fn metrics(&self) -> &'static str {
        "acks_per_s deliveries_per_s ack_p50_ms ack_p99_ms delivery_p50_ms \
            delivery_p99_ms ack_max_ms ack_share_min errors cpu_workerd_pct cpu_proxy_pct \
            cpu_node_pct cpu_loadgen_pct workerd_cpu_us_per_ack"
    }

    /// The rust worker gets created sessions and `?token=` (enterprise),
    /// the references `?user=`.
    fn for_target(&self, rust: bool, secret: Option<&str>) -> (Self, Option<String>) {
        let opts = Options {
            create_sessions: rust,
            ..self.clone()
        };
        (opts, secret.filter(|_| rust).map(str::to_owned))
    }

    fn run(&self, s: &mut Served<'_>) -> Result<Vec<String>> {
        Ok(vec![run(self, &s.url, s.secret.as_deref(), &s.pids)?])
    }
}

/// `(session, participant, n)` of a point id of this run
/// (`<tag>-<session>-<participant>-<n>`).
fn parse_point_id(tag: &str, id: &str) -> Option<(usize, usize, usize)> {
    let mut it = id.rsplitn(4, '-');
    let n = it.next()?.parse().ok()?;
    let p = it.next()?.parse().ok()?;
    let s = it.next()?.parse().ok()?;
    (it.next()? == tag).then_some((s, p, n))
}

// ---- run state ---------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Join,
    Send,
    Stop,
    Close,
}

#[derive(Default)]
struct Part {
    user_id: String,
    /// Where it joins (with `?token=` or `?user=`).
    url: String,
    /// `(n, sent at)` of the points in flight.
    inflight: Vec<(usize, f64)>,
    /// Per point sent (index n): the seq its ack gave, and the seq its
    /// first delivery carried.
    points: Vec<(Option<i64>, Option<i64>)>,
    acks: usize,
    acks_in_window: u64,
    welcome: bool,
    /// `(from participant, n)` delivered here.
    received: HashSet<(usize, usize)>,
    closed: bool,
}

#[derive(Default)]
struct Session {
    last_seq: Option<i64>,
    /// Acked seqs: duplicates are refused as they come, and at the end
    /// they must be exactly `last_seq+1 ..= last_seq+N`.
    seqs: HashSet<i64>,
    /// `(participant, n)` of each acked point.
    acked: Vec<(usize, usize)>,
    parts: Vec<Part>,
}

#[derive(Default)]
struct State {
    sessions: Vec<Session>,
    errors: Errors,
    ack_lat: Vec<f64>,
    del_lat: Vec<f64>,
    acks_in_window: u64,
    deliveries_in_window: u64,
}

struct Shared {
    opts: Options,
    /// The run's start, and the wall clock then (ms): times are ms since.
    start: Instant,
    wall0_ms: f64,
    tag: String,
    phase: watch::Sender<Phase>,
    /// `(start, end)` of the send window.
    window: Cell<Option<(f64, f64)>>,
    state: RefCell<State>,
}

impl Shared {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }
    fn instant(&self, ms: f64) -> tokio::time::Instant {
        (self.start + Duration::from_secs_f64(ms.max(0.0) / 1000.0)).into()
    }
    fn in_window(&self, t: f64) -> bool {
        self.window.get().is_some_and(|(a, b)| t >= a && t <= b)
    }
    fn sending(&self) -> bool {
        *self.phase.borrow() == Phase::Send
    }
    fn fail(&self, code: &str) {
        fail(&mut self.state.borrow_mut().errors, code);
    }
    /// Whether `f` holds for every participant (with its session).
    fn all(&self, f: impl Fn(&Session, &Part) -> bool) -> bool {
        let st = self.state.borrow();
        st.sessions.iter().all(|s| s.parts.iter().all(|p| f(s, p)))
    }
}

/// A frame from the server; fields that do not matter here are skipped.
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Frame<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    id: Option<&'a str>,
    seq: Option<Value>,
    last_seq: Option<Value>,
    user_id: Option<&'a str>,
    code: Option<&'a str>,
    data: Option<Value>,
}

fn integer(v: &Option<Value>) -> Option<i64> {
    let v = v.as_ref()?;
    let f = v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15);
    v.as_i64().or(f.map(|f| f as i64))
}

/// Checks one text frame for participant `p` of session `s`; true when it
/// was an ack (so a slot in the window is free).
fn on_frame(sh: &Shared, s: usize, p: usize, raw: &str) -> bool {
    let st = &mut *sh.state.borrow_mut();
    check_frame(sh, st, s, p, raw).unwrap_or_else(|code| {
        fail(&mut st.errors, &code);
        false
    })
}

/// [`on_frame`]'s checks: `Err` is an error that ends the frame's checks.
fn check_frame(sh: &Shared, st: &mut State, s: usize, p: usize, raw: &str) -> Result<bool, String> {
    let t = sh.now();
    let m: Frame = serde_json::from_str(raw).map_err(|_| "bad_frame_json")?;
    let point = m.id.and_then(|id| parse_point_id(&sh.tag, id));
    let (sess, errors) = (&mut st.sessions[s], &mut st.errors);
    match m.ty {
        "welcome" if sess.parts[p].welcome => Err("second_welcome".into()),
        "welcome" => {
            let last = integer(&m.last_seq).ok_or("welcome_without_lastSeq")?;
            sess.parts[p].welcome = true;
            if *sess.last_seq.get_or_insert(last) != last {
                fail(errors, "welcome_lastSeq_mismatch");
            }
            Ok(false)
        }
        "ack" => {
            let part = &mut sess.parts[p];
            let n = point.filter(|&(ms, mp, _)| ms == s && mp == p).map(|x| x.2);
            let slot = n.and_then(|n| part.inflight.iter().position(|x| x.0 == n));
            let (n, t0) = part.inflight.swap_remove(slot.ok_or("unexpected_ack")?);
            st.ack_lat.push(t - t0);
            if sh.in_window(t) {
                st.acks_in_window += 1;
                part.acks_in_window += 1;
            }
            part.acks += 1;
            sess.acked.push((p, n));
            let q = integer(&m.seq).ok_or("ack_without_seq")?;
            if !sess.seqs.insert(q) {
                fail(errors, "duplicate_seq");
            }
            let (ack, delivered) = &mut part.points[n];
            *ack = Some(q);
            if delivered.is_some_and(|d| d != q) {
                fail(errors, "delivered_seq_differs_from_ack");
            }
            Ok(true)
        }
        "point" => {
            let (fs, fp, n) = point.ok_or("unknown_point_delivered")?;
            if fs != s && fs < sh.opts.sessions {
                return Err("point_from_other_session".into());
            } else if fs != s || fp >= sess.parts.len() || n >= sess.parts[fp].points.len() {
                return Err("unknown_point_delivered".into());
            } else if fp == p {
                return Err("own_point_echoed".into());
            } else if !sess.parts[p].received.insert((fp, n)) {
                return Err("duplicate_delivery".into());
            }
            if m.user_id != Some(sess.parts[fp].user_id.as_str()) {
                fail(errors, "wrong_userId");
            }
            let (dseq, (ack, delivered)) = (integer(&m.seq), &mut sess.parts[fp].points[n]);
            match (*ack, *delivered) {
                (Some(a), _) if dseq != Some(a) => fail(errors, "delivered_seq_differs_from_ack"),
                (None, None) => *delivered = dseq,
                (None, d) if d != dseq => fail(errors, "delivered_seq_differs"),
                _ => {}
            }
            if sh.in_window(t) {
                st.deliveries_in_window += 1;
            }
            let sent = m.data.as_ref().and_then(|d| d["t"].as_f64());
            st.del_lat
                .push(sh.wall0_ms + t - sent.ok_or("delivery_without_send_time")?);
            Ok(false)
        }
        "error" => Err(format!("server_error_{}", m.code.unwrap_or("undefined"))),
        "joined" | "left" | "pong" => Ok(false),
        _ => Err("unknown_frame_type".into()),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends as many points as the window (and, open loop, the rate with the
/// next point due at `next_at`) allow.
async fn pump(sh: &Shared, s: usize, p: usize, next_at: &mut f64, ws: &mut Ws) {
    let mut frames = Vec::new();
    {
        let mut st = sh.state.borrow_mut();
        let part = &mut st.sessions[s].parts[p];
        while sh.sending() && part.inflight.len() < sh.opts.window && !part.closed {
            let t = sh.now();
            if sh.opts.rate > 0.0 {
                if t < *next_at {
                    break;
                }
                *next_at += 1000.0 / sh.opts.rate;
            }
            let n = part.points.len();
            part.points.push((None, None));
            part.inflight.push((n, t));
            let (wall, tag) = (sh.wall0_ms + t, &sh.tag);
            frames.push(format!(
                r#"{{"type":"point","id":"{tag}-{s}-{p}-{n}","kind":"bench","value":{n},"ts":{},"data":{{"t":{wall:.3}}}}}"#,
                wall as u64,
            ));
        }
    }
    let count = frames.len();
    for f in frames {
        if ws.feed(Message::text(f)).await.is_err() {
            return; // the reading side sees the close
        }
    }
    if count > 0 {
        let _ = ws.flush().await;
    }
}

/// One participant's connection, from the upgrade to the close.
async fn connection(sh: &Shared, s: usize, p: usize) {
    let url = sh.state.borrow().sessions[s].parts[p].url.clone();
    let join_by = tokio::time::Instant::now() + Duration::from_secs_f64(sh.opts.connect_timeout);
    let mut phase = sh.phase.subscribe();
    // Frames here are ~200 bytes; tungstenite zeroes its whole read buffer
    // (128 KiB by default) before each read, which was a fifth of the
    // generator's CPU.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let conn = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let mut ws = match tokio::time::timeout_at(join_by, conn).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(tungstenite::Error::Http(res))) => {
            return finish(sh, s, p, &format!("upgrade_http_{}", res.status().as_u16()));
        }
        Ok(Err(e)) => return finish(sh, s, p, &format!("ws_error_{}", error_code(&e))),
        Err(_) => return finish(sh, s, p, "join_timeout"),
    };
    let (mut closing, mut close_by, mut next_at) = (false, tokio::time::Instant::now(), 0.0);
    loop {
        let (joined, inflight) = {
            let st = sh.state.borrow();
            let part = &st.sessions[s].parts[p];
            (part.welcome || part.closed, part.inflight.len())
        };
        let timer_on = sh.opts.rate > 0.0 && sh.sending() && inflight < sh.opts.window;
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if on_frame(sh, s, p, text.as_str()) {
                        pump(sh, s, p, &mut next_at, &mut ws).await;
                    }
                }
                Some(Ok(Message::Binary(_))) => sh.fail("binary_frame"),
                Some(Ok(Message::Close(frame))) => {
                    if !closing {
                        let code = frame.map_or(1005, |f| u16::from(f.code));
                        sh.fail(&format!("closed_by_server_{code}"));
                    }
                    closing = true;
                    finish(sh, s, p, "");
                    close_by = tokio::time::Instant::now() + Duration::from_secs(2);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if !closing {
                        sh.fail(&format!("ws_error_{}", error_code(&e)));
                        sh.fail("closed_by_server_1006");
                    }
                    break;
                }
                None => {
                    if !closing {
                        sh.fail("closed_by_server_1006");
                    }
                    break;
                }
            },
            // No welcome in time: this participant is out.
            _ = sleep_until(join_by), if !joined => finish(sh, s, p, "join_timeout"),
            Ok(()) = phase.changed() => match *phase.borrow_and_update() {
                Phase::Send => {
                    if sh.opts.rate > 0.0 {
                        let start = sh.window.get().unwrap_or_default().0;
                        let jitter = uuid::Uuid::new_v4().as_u64_pair().0 as f64 / u64::MAX as f64;
                        next_at = start + jitter * 1000.0 / sh.opts.rate;
                    }
                    pump(sh, s, p, &mut next_at, &mut ws).await;
                }
                Phase::Close if !closing => {
                    closing = true;
                    close_by = tokio::time::Instant::now() + Duration::from_secs(2);
                    let reason = "bench done".into();
                    let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason })).await;
                }
                _ => {}
            },
            _ = sleep_until(sh.instant(next_at)), if timer_on => {
                pump(sh, s, p, &mut next_at, &mut ws).await;
            }
            _ = sleep_until(close_by), if closing => break,
        }
    }
    finish(sh, s, p, "");
}

/// The connection is over (with error `code`, unless empty).
fn finish(sh: &Shared, s: usize, p: usize, code: &str) {
    let mut st = sh.state.borrow_mut();
    if !code.is_empty() {
        fail(&mut st.errors, code);
    }
    st.sessions[s].parts[p].closed = true;
}

/// A short name for a WebSocket error, as in `ws_error_<name>`.
fn error_code(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => format!("{:?}", io.kind()),
        e => format!("{e:?}")
            .split(['(', ' '])
            .next()
            .unwrap_or("other")
            .into(),
    }
}

// ---- run -----------------------------------------------------------------

/// Runs the generator against `url` and checks what comes back: with
/// `secret`, participants send `?token=` (enterprise), else `?user=`.
/// `watch_pids` are the server's processes whose CPU is reported. Returns
/// loadgen.mjs' JSON line.
pub fn run(opts: &Options, url: &str, secret: Option<&str>, watch_pids: &[u32]) -> Result<String> {
    let (port, tag) = (super::port_of(url)?, drive::tag(6));
    let prefix = opts
        .user_prefix
        .clone()
        .unwrap_or_else(|| format!("bench-{tag}"));
    let mut state = State::default();
    for s in 0..opts.sessions {
        let user = |p| format!("{prefix}-s{s}-p{p}");
        let users: Vec<String> = (0..opts.participants).map(user).collect();
        let mint = |u: &String| secret.map(|k| xtask::mint(k, u, "enterprise", None, 3600));
        let tokens = users.iter().map(|u| mint(u).transpose());
        let tokens = tokens.collect::<Result<Vec<_>>>()?;
        let id = match &tokens[0] {
            Some(t) if opts.create_sessions => {
                block_on(create_session(url, t, &format!("bench {s}"), &users[1..]))??
            }
            _ => uuid::Uuid::now_v7().to_string(),
        };
        let ws = format!("ws{}/v1/sessions/{id}/ws", url.trim_start_matches("http"));
        let mut session = Session::default();
        for (user_id, token) in users.into_iter().zip(tokens) {
            let url = match token {
                Some(t) => format!("{ws}?token={t}"),
                None => format!("{ws}?user={user_id}"),
            };
            let mut part = Part::default();
            (part.user_id, part.url) = (user_id, url);
            session.parts.push(part);
        }
        state.sessions.push(session);
    }
    let sh = Shared {
        opts: opts.clone(),
        start: Instant::now(),
        wall0_ms: drive::now_ms() as f64,
        tag,
        phase: watch::Sender::new(Phase::Join),
        window: Cell::new(None),
        state: RefCell::new(state),
    };
    let cpu = block_on(drive(&sh, (watch_pids, port)))?;
    Ok(verify(sh, cpu))
}

/// `POST /v1/sessions` by the owner of `token`; the new session's id.
pub async fn create_session(
    base: &str,
    token: &str,
    title: &str,
    members: &[String],
) -> Result<String> {
    let rb = drive::client()?
        .post(format!("{base}/v1/sessions"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30))
        .json(&json!({ "title": title, "members": members }));
    let v = drive::expect(rb, 201, "POST /v1/sessions").await?;
    let id = v["id"].as_str().map(str::to_owned);
    id.ok_or_else(|| anyhow!("POST /v1/sessions answered without an id: {v}"))
}

/// Every connection, and the phases: join, send for the window (the CPU
/// report's window), drain, close.
async fn drive(sh: &Shared, watch: (&[u32], u16)) -> Option<BTreeMap<String, f64>> {
    let (sessions, parts) = (sh.opts.sessions, sh.opts.participants);
    let conns = (0..sessions).flat_map(|s| (0..parts).map(move |p| connection(sh, s, p)));
    let control = async {
        let join = Duration::from_secs_f64(sh.opts.connect_timeout + 5.0);
        wait_for(join, || sh.all(|_, p| p.welcome || p.closed)).await;
        let mut cpu = None;
        if sh.all(|_, p| p.welcome) {
            let c0 = cpu_snapshot(watch.0, watch.1);
            let start = sh.now();
            let end = start + sh.opts.seconds * 1000.0;
            sh.window.set(Some((start, end)));
            sh.phase.send_replace(Phase::Send);
            sleep_until(sh.instant(end)).await;
            sh.phase.send_replace(Phase::Stop);
            cpu = Some(cpu_report(&c0, &cpu_snapshot(watch.0, watch.1)));
            // Drain: every sent point acked, then every acked point delivered.
            let drain = Duration::from_secs_f64(sh.opts.drain_seconds);
            wait_for(drain, || sh.all(|_, p| p.inflight.is_empty() || p.closed)).await;
            let delivered =
                |s: &Session, p: &Part| p.closed || p.received.len() + p.acks >= s.acked.len();
            wait_for(drain, || sh.all(delivered)).await;
        }
        sh.phase.send_replace(Phase::Close);
        cpu
    };
    tokio::join!(join_all(conns), control).1
}

async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() && Instant::now() <= end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The end-of-run checks and the figures.
fn verify(sh: Shared, cpu: Option<BTreeMap<String, f64>>) -> String {
    let (opts, mut st) = (sh.opts, sh.state.into_inner());
    let mut per_participant = Vec::new();
    for sess in &st.sessions {
        let mut add = |code: &str, n: usize| {
            if n > 0 {
                *st.errors.entry(code.into()).or_default() += n as u64;
            }
        };
        add(
            "unacked_at_end",
            sess.parts.iter().map(|p| p.inflight.len()).sum(),
        );
        if let Some(last) = sess.last_seq {
            let n = sess.seqs.len() as i64;
            add(
                "seq_gap_or_out_of_range",
                sess.seqs
                    .iter()
                    .filter(|&&q| q <= last || q > last + n)
                    .count(),
            );
            let missing = sess.acked.iter().map(|&(from, n)| {
                let lost = |(r, p): (usize, &Part)| r != from && !p.received.contains(&(from, n));
                sess.parts.iter().enumerate().filter(|&x| lost(x)).count()
            });
            add("missing_delivery", missing.sum());
        }
        per_participant.extend(sess.parts.iter().map(|p| p.acks_in_window));
    }
    let mean = st.acks_in_window as f64 / per_participant.len().max(1) as f64;
    let share_min = (mean > 0.0).then(|| {
        let min = per_participant.iter().copied().min().unwrap_or(0) as f64;
        round_to(min / mean, 3)
    });
    let per_s = |n: u64| (n as f64 / opts.seconds).round() as u64;
    let [ack_p50, ack_p99, ack_max] = spread(&mut st.ack_lat);
    let [del_p50, del_p99, _] = spread(&mut st.del_lat);
    // Keys in loadgen.mjs' order.
    fields! {
        "acks_per_s": per_s(st.acks_in_window), "deliveries_per_s": per_s(st.deliveries_in_window),
        "ack_p50_ms": ack_p50, "ack_p99_ms": ack_p99, "ack_max_ms": ack_max,
        "delivery_p50_ms": del_p50, "delivery_p99_ms": del_p99,
        "errors": st.errors.values().sum::<u64>(), "sessions": opts.sessions,
        "participants": opts.participants, "seconds": opts.seconds, "window": opts.window,
        "rate": opts.rate, "ack_share_min": share_min, "acks_total": st.ack_lat.len(),
        "deliveries_total": st.del_lat.len(), "error_detail": st.errors,
        "cpu_pct": cpu.unwrap_or_default(), "generator": "xtask",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use hyper_util::rt::TokioIo;
    use tokio::sync::mpsc;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    use super::super::defaults;
    use super::*;
    use crate::drive::fake;

    #[derive(Clone, Copy, PartialEq)]
    enum Fault {
        None,
        /// The 5th point of a session gets seq+2: a gap.
        SkipSeq,
        /// The 5th point of a session reuses the 4th's seq.
        ReuseSeq,
        /// The 5th point of a session misses one receiver.
        DropDelivery,
        /// Points go back to their sender too.
        EchoOwn,
        /// Each connection's 3rd point is never acked.
        LoseAck,
    }

    /// `(seq, points, peers)` per session.
    type Rooms = Mutex<BTreeMap<String, (i64, u64, Vec<(u64, mpsc::UnboundedSender<String>)>)>>;

    /// A session server speaking the frames the generator needs, correct
    /// or with one fault.
    fn fake(fault: Fault) -> String {
        let (rooms, conns) = (Arc::new(Rooms::default()), Arc::new(AtomicU64::new(0)));
        fake::start(Arc::new(move |req| {
            let key = req.headers()["sec-websocket-key"].as_bytes();
            let accept = tungstenite::handshake::derive_accept_key(key);
            // /v1/sessions/{id}/ws?user=U
            let uri = req.uri().to_string();
            let session = uri.split('/').nth(3).unwrap_or_default().to_owned();
            let user = uri.split("user=").nth(1).unwrap_or_default().to_owned();
            let (rooms, conn) = (Arc::clone(&rooms), conns.fetch_add(1, Ordering::Relaxed));
            tokio::spawn(async move {
                let io = TokioIo::new(hyper::upgrade::on(req).await.unwrap());
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                let (mut sink, mut stream) = ws.split();
                let (tx, mut rx) = mpsc::unbounded_channel::<String>();
                {
                    let mut rooms = rooms.lock().unwrap();
                    let room = rooms.entry(session.clone()).or_default();
                    room.2.push((conn, tx.clone()));
                    tx.send(format!(r#"{{"type":"welcome","lastSeq":{}}}"#, room.0))
                        .unwrap();
                }
                tokio::spawn(async move {
                    while let Some(m) = rx.recv().await {
                        if sink.send(Message::text(m)).await.is_err() {
                            break;
                        }
                    }
                });
                let mut mine = 0;
                while let Some(Ok(Message::Text(text))) = stream.next().await {
                    let v: Value = serde_json::from_str(text.as_str()).unwrap();
                    mine += 1;
                    let mut rooms = rooms.lock().unwrap();
                    let room = rooms.get_mut(&session).unwrap();
                    room.1 += 1;
                    let fifth = room.1 == 5;
                    room.0 += match fault {
                        Fault::SkipSeq if fifth => 2,
                        Fault::ReuseSeq if fifth => 0,
                        _ => 1,
                    };
                    let (seq, id) = (room.0, v["id"].as_str().unwrap());
                    if !(fault == Fault::LoseAck && mine == 3) {
                        let _ = tx.send(format!(r#"{{"type":"ack","id":"{id}","seq":{seq}}}"#));
                    }
                    let point = json!({"type": "point", "id": id, "seq": seq, "userId": user, "data": v["data"]});
                    let mut dropped = !(fault == Fault::DropDelivery && fifth);
                    for (c, peer) in &room.2 {
                        if *c == conn && fault != Fault::EchoOwn
                            || *c != conn && !std::mem::replace(&mut dropped, true)
                        {
                            continue;
                        }
                        let _ = peer.send(point.to_string());
                    }
                }
                if let Some(room) = rooms.lock().unwrap().get_mut(&session) {
                    room.2.retain(|(c, _)| *c != conn);
                }
            });
            let headers = [("upgrade", "websocket"), ("connection", "upgrade")];
            let mut headers: Vec<_> = headers.map(|(k, v)| (k, v.to_owned())).to_vec();
            headers.push(("sec-websocket-accept", accept));
            (101, headers, String::new())
        }))
    }

    fn run_against(fault: Fault, rate: f64) -> Value {
        let o = Options {
            sessions: 2,
            participants: 3,
            seconds: 0.4,
            window: 4,
            rate,
            drain_seconds: 1.0,
            ..defaults()
        };
        serde_json::from_str(&run(&o, &fake(fault), None, &[]).unwrap()).unwrap()
    }

    #[test]
    fn a_correct_server_passes_and_faults_are_reported() {
        let r = run_against(Fault::None, 0.0);
        let acks = r["acks_total"].as_u64().unwrap();
        assert!(
            r["errors"] == 0 && acks > 20 && r["deliveries_total"] == 2 * acks,
            "{r}"
        );
        // open loop: 6 participants x 100 points/s x 0.4 s = 240 points
        let r = run_against(Fault::None, 100.0);
        let acks = r["acks_total"].as_u64().unwrap();
        assert!(r["errors"] == 0 && (160..=260).contains(&acks), "{r}");
        for (fault, want) in [
            (Fault::SkipSeq, json!({"seq_gap_or_out_of_range": 2})),
            (Fault::ReuseSeq, json!({"duplicate_seq": 2})),
            (Fault::DropDelivery, json!({"missing_delivery": 2})),
            // each lost ack also leaves its seq out of the acked range
            (
                Fault::LoseAck,
                json!({"seq_gap_or_out_of_range": 6, "unacked_at_end": 6}),
            ),
        ] {
            assert_eq!(run_against(fault, 0.0)["error_detail"], want);
        }
        let r = run_against(Fault::EchoOwn, 0.0);
        let echoed = (&r["error_detail"]["own_point_echoed"], &r["errors"]);
        assert_eq!(echoed, (&r["acks_total"], &r["acks_total"]));
    }
}
