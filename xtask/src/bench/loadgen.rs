//! Session WebSocket load generator and correctness checker: the job of
//! `../shared/bench/loadgen.mjs`, in Rust, run in-process by `cargo xtask
//! bench`.
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
//! One thread (a current-thread tokio runtime) drives every connection, so
//! the generator takes as little as it can of the cores it shares with the
//! server.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use super::drive::{block_on, cpu_report, cpu_snapshot};
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

    fn shape(&self) -> (String, Value) {
        let (s, p, secs, w, r) = (
            self.sessions,
            self.participants,
            self.seconds,
            self.window,
            self.rate,
        );
        let text = format!("sessions={s} participants={p} seconds={secs} window={w} rate={r}");
        (
            text,
            json!({"sessions": s, "participants": p, "seconds": secs, "window": w, "rate": r}),
        )
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

/// A point id: `<tag>-<session>-<participant>-<n>`.
fn point_id(tag: &str, s: usize, p: usize, n: usize) -> String {
    format!("{tag}-{s}-{p}-{n}")
}

/// `(session, participant, n)` of a point id of this run (`tag`).
fn parse_point_id(tag: &str, id: &str) -> Option<(usize, usize, usize)> {
    let mut it = id.rsplitn(4, '-');
    let n = it.next()?.parse().ok()?;
    let p = it.next()?.parse().ok()?;
    let s = it.next()?.parse().ok()?;
    (it.next()? == tag).then_some((s, p, n))
}

// ---- run state ---------------------------------------------------------

/// Milliseconds since the run started, and the wall clock at that start.
struct Clock {
    start: Instant,
    wall0_ms: f64,
}

impl Clock {
    fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            start: Instant::now(),
            wall0_ms: wall.as_secs_f64() * 1000.0,
        }
    }
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }
    fn instant(&self, ms: f64) -> tokio::time::Instant {
        (self.start + Duration::from_secs_f64(ms.max(0.0) / 1000.0)).into()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Join,
    Send,
    Stop,
    Close,
}

#[derive(Clone, Copy, Default)]
struct Seqs {
    /// The seq the ack gave.
    ack: Option<i64>,
    /// The seq the first delivery carried, while no ack has come.
    delivered: Option<i64>,
}

#[derive(Default)]
struct Participant {
    user_id: String,
    token: Option<String>,
    /// `(n, sent at)` of the points in flight.
    inflight: Vec<(usize, f64)>,
    /// Per point sent (index n).
    points: Vec<Seqs>,
    ack_count: usize,
    ack_in_window: u64,
    welcome: bool,
    /// `[from participant][n]`: delivered here.
    received: Vec<Vec<bool>>,
    received_count: usize,
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
    parts: Vec<Participant>,
    errors: BTreeMap<String, u64>,
    ack_lat: Vec<f64>,
    del_lat: Vec<f64>,
    acks_in_window: u64,
    deliveries_in_window: u64,
}

impl Session {
    fn fail(&mut self, code: &str) {
        self.fail_n(code, 1);
    }
    fn fail_n(&mut self, code: &str, n: u64) {
        if n > 0 {
            *self.errors.entry(code.to_owned()).or_default() += n;
        }
    }
}

struct Shared {
    opts: Options,
    clock: Clock,
    tag: String,
    sending: AtomicBool,
    /// `(start, end)` of the send window, in clock ms.
    window: OnceLock<(f64, f64)>,
    sessions: Vec<Mutex<Session>>,
}

impl Shared {
    fn session(&self, s: usize) -> MutexGuard<'_, Session> {
        self.sessions[s].lock().unwrap_or_else(|e| e.into_inner())
    }
    fn in_window(&self, t: f64) -> bool {
        self.window.get().is_some_and(|&(a, b)| t >= a && t <= b)
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

fn integer(v: &Option<serde_json::Value>) -> Option<i64> {
    let v = v.as_ref()?;
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

/// Checks one text frame for participant `p` of session `s`; true when it
/// was an ack (so a slot in the window is free).
fn on_frame(sh: &Shared, s: usize, p: usize, raw: &str) -> bool {
    let mut sess = sh.session(s);
    check_frame(sh, &mut sess, s, p, raw).unwrap_or_else(|code| {
        sess.fail(&code);
        false
    })
}

/// [`on_frame`]'s checks: `Err` is an error that ends the frame's checks.
fn check_frame(
    sh: &Shared,
    sess: &mut Session,
    s: usize,
    p: usize,
    raw: &str,
) -> Result<bool, String> {
    let t = sh.clock.now();
    let m: Frame = serde_json::from_str(raw).map_err(|_| "bad_frame_json")?;
    let point = m.id.and_then(|id| parse_point_id(&sh.tag, id));
    match m.ty {
        "welcome" if sess.parts[p].welcome => Err("second_welcome".into()),
        "welcome" => {
            let last = integer(&m.last_seq).ok_or("welcome_without_lastSeq")?;
            sess.parts[p].welcome = true;
            if *sess.last_seq.get_or_insert(last) != last {
                sess.fail("welcome_lastSeq_mismatch");
            }
            Ok(false)
        }
        "ack" => {
            let n = point
                .filter(|&(ms, mp, _)| ms == s && mp == p)
                .map(|(_, _, n)| n);
            let slot = n.and_then(|n| sess.parts[p].inflight.iter().position(|x| x.0 == n));
            let (n, t0) = sess.parts[p]
                .inflight
                .swap_remove(slot.ok_or("unexpected_ack")?);
            sess.ack_lat.push(t - t0);
            if sh.in_window(t) {
                sess.acks_in_window += 1;
                sess.parts[p].ack_in_window += 1;
            }
            sess.parts[p].ack_count += 1;
            sess.acked.push((p, n));
            let q = integer(&m.seq).ok_or("ack_without_seq")?;
            if !sess.seqs.insert(q) {
                sess.fail("duplicate_seq");
            }
            let info = &mut sess.parts[p].points[n];
            info.ack = Some(q);
            if info.delivered.is_some_and(|d| d != q) {
                sess.fail("delivered_seq_differs_from_ack");
            }
            Ok(true)
        }
        "point" => {
            let (fs, fp, n) = point.ok_or("unknown_point_delivered")?;
            if fs != s {
                let other = fs < sh.sessions.len();
                return Err(if other {
                    "point_from_other_session"
                } else {
                    "unknown_point_delivered"
                }
                .into());
            }
            if fp >= sess.parts.len() || n >= sess.parts[fp].points.len() {
                return Err("unknown_point_delivered".into());
            }
            if fp == p {
                return Err("own_point_echoed".into());
            }
            let got = &mut sess.parts[p].received[fp];
            got.resize(got.len().max(n + 1), false);
            if std::mem::replace(&mut got[n], true) {
                return Err("duplicate_delivery".into());
            }
            sess.parts[p].received_count += 1;
            if m.user_id != Some(sess.parts[fp].user_id.as_str()) {
                sess.fail("wrong_userId");
            }
            let (dseq, info) = (integer(&m.seq), &mut sess.parts[fp].points[n]);
            let code = match (info.ack, info.delivered) {
                (Some(a), _) if dseq != Some(a) => Some("delivered_seq_differs_from_ack"),
                (None, None) => {
                    info.delivered = dseq;
                    None
                }
                (None, d) if d != dseq => Some("delivered_seq_differs"),
                _ => None,
            };
            code.into_iter().for_each(|c| sess.fail(c));
            if sh.in_window(t) {
                sess.deliveries_in_window += 1;
            }
            let sent = m
                .data
                .as_ref()
                .and_then(|d| d["t"].as_f64())
                .ok_or("delivery_without_send_time")?;
            sess.del_lat.push(sh.clock.wall0_ms + t - sent);
            Ok(false)
        }
        "error" => Err(format!("server_error_{}", m.code.unwrap_or("undefined"))),
        "joined" | "left" | "pong" => Ok(false),
        _ => Err("unknown_frame_type".into()),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One participant's connection, from the upgrade to the close.
struct Conn {
    sh: Arc<Shared>,
    s: usize,
    p: usize,
    /// Open loop: when the next point is due (clock ms).
    next_at: f64,
}

impl Conn {
    /// Sends as many points as the window (and the rate) allow.
    async fn pump(&mut self, ws: &mut Ws) {
        let sh = Arc::clone(&self.sh);
        let opts = &sh.opts;
        let mut frames = Vec::new();
        {
            let mut sess = sh.session(self.s);
            let part = &mut sess.parts[self.p];
            while sh.sending.load(Ordering::Relaxed)
                && part.inflight.len() < opts.window
                && !part.closed
            {
                let t = sh.clock.now();
                if opts.rate > 0.0 {
                    if t < self.next_at {
                        break;
                    }
                    self.next_at += 1000.0 / opts.rate;
                }
                let n = part.points.len();
                part.points.push(Seqs::default());
                part.inflight.push((n, t));
                let wall = sh.clock.wall0_ms + t;
                frames.push(format!(
                    r#"{{"type":"point","id":"{}","kind":"bench","value":{n},"ts":{},"data":{{"t":{wall:.3}}}}}"#,
                    point_id(&sh.tag, self.s, self.p, n),
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

    fn fail(&self, code: &str) {
        self.sh.session(self.s).fail(code);
    }

    fn inflight(&self) -> usize {
        self.sh.session(self.s).parts[self.p].inflight.len()
    }

    async fn run(
        mut self,
        url: String,
        mut phase: watch::Receiver<Phase>,
        joined: oneshot::Sender<bool>,
    ) {
        let sh = Arc::clone(&self.sh);
        let join_by =
            tokio::time::Instant::now() + Duration::from_secs_f64(sh.opts.connect_timeout.max(0.0));
        let mut joined = Some(joined);
        let conn = tokio::time::timeout_at(
            join_by,
            // Frames here are ~200 bytes; tungstenite zeroes its whole read
            // buffer (128 KiB by default) before each read, which was a
            // fifth of the generator's CPU.
            tokio_tungstenite::connect_async_with_config(
                url,
                Some(WebSocketConfig::default().read_buffer_size(8 * 1024)),
                true,
            ),
        )
        .await;
        let mut ws = match conn {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(tungstenite::Error::Http(res))) => {
                return self.finish(joined, &format!("upgrade_http_{}", res.status().as_u16()))
            }
            Ok(Err(e)) => return self.finish(joined, &format!("ws_error_{}", error_code(&e))),
            Err(_) => return self.finish(joined, "join_timeout"),
        };

        let mut closing = false;
        let mut close_by = tokio::time::Instant::now();
        let mut phase_open = true;
        loop {
            let timer_on = sh.opts.rate > 0.0
                && sh.sending.load(Ordering::Relaxed)
                && self.inflight() < sh.opts.window;
            let due = sh.clock.instant(self.next_at);
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        if on_frame(&sh, self.s, self.p, text.as_str()) {
                            self.pump(&mut ws).await;
                        }
                        if joined.is_some() && sh.session(self.s).parts[self.p].welcome {
                            let _ = joined.take().map(|j| j.send(true));
                        }
                    }
                    Some(Ok(Message::Binary(_))) => self.fail("binary_frame"),
                    Some(Ok(Message::Close(frame))) => {
                        if !closing {
                            let code = frame.map_or(1005, |f| u16::from(f.code));
                            self.fail(&format!("closed_by_server_{code}"));
                        }
                        closing = true;
                        self.mark_closed();
                        close_by = tokio::time::Instant::now() + Duration::from_secs(2);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        if !closing {
                            self.fail(&format!("ws_error_{}", error_code(&e)));
                            self.fail("closed_by_server_1006");
                        }
                        break;
                    }
                    None => {
                        if !closing {
                            self.fail("closed_by_server_1006");
                        }
                        break;
                    }
                },
                _ = sleep_until(join_by), if joined.is_some() => {
                    self.fail("join_timeout");
                    let _ = joined.take().map(|j| j.send(false));
                }
                changed = phase.changed(), if phase_open => {
                    if changed.is_err() {
                        phase_open = false;
                        continue;
                    }
                    let now = *phase.borrow_and_update();
                    match now {
                        Phase::Send => {
                            let (start, _) = sh.window.get().copied().unwrap_or_default();
                            if sh.opts.rate > 0.0 {
                                let jitter = uuid::Uuid::new_v4().as_u64_pair().0 as f64 / u64::MAX as f64;
                                self.next_at = start + jitter * 1000.0 / sh.opts.rate;
                            }
                            self.pump(&mut ws).await;
                        }
                        Phase::Close if !closing => {
                            closing = true;
                            close_by = tokio::time::Instant::now() + Duration::from_secs(2);
                            let _ = ws
                                .close(Some(CloseFrame {
                                    code: CloseCode::Normal,
                                    reason: "bench done".into(),
                                }))
                                .await;
                        }
                        _ => {}
                    }
                }
                _ = sleep_until(due), if timer_on => self.pump(&mut ws).await,
                _ = sleep_until(close_by), if closing => break,
            }
        }
        self.finish(joined, "");
    }

    fn mark_closed(&self) {
        self.sh.session(self.s).parts[self.p].closed = true;
    }

    /// The connection is over (with error `code`, unless empty).
    fn finish(&self, joined: Option<oneshot::Sender<bool>>, code: &str) {
        if !code.is_empty() {
            self.fail(code);
        }
        self.mark_closed();
        joined.map(|j| j.send(false));
    }
}

/// A short name for a WebSocket error, as in `ws_error_<name>`.
fn error_code(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => format!("{:?}", io.kind()),
        e => format!("{e:?}")
            .split(['(', ' '])
            .next()
            .unwrap_or("other")
            .to_owned(),
    }
}

// ---- run -----------------------------------------------------------------

/// Runs the generator against `url` and checks what comes back: with
/// `secret`, participants send `?token=` (enterprise), else `?user=`.
/// `watch_pids` are the server's processes whose CPU is reported. Returns
/// loadgen.mjs' JSON line.
pub fn run(opts: &Options, url: &str, secret: Option<&str>, watch_pids: &[u32]) -> Result<String> {
    let port = super::port_of(url)?;
    let tag = super::drive::tag(6);
    let prefix = opts
        .user_prefix
        .clone()
        .unwrap_or_else(|| format!("bench-{tag}"));
    let mut sessions = Vec::new();
    let mut urls: Vec<Vec<String>> = Vec::new();
    for s in 0..opts.sessions {
        let mut parts = Vec::new();
        for p in 0..opts.participants {
            let user_id = format!("{prefix}-s{s}-p{p}");
            let token = secret
                .map(|k| crate::mint(k, &user_id, "enterprise", None, 3600))
                .transpose()?;
            let received = vec![Vec::new(); opts.participants];
            parts.push(Participant {
                user_id,
                token,
                received,
                ..Participant::default()
            });
        }
        let id = match opts.create_sessions {
            true => {
                let members: Vec<&str> = parts[1..].iter().map(|p| p.user_id.as_str()).collect();
                let token = parts[0].token.as_deref().unwrap_or_default();
                block_on(create_session(url, token, &format!("bench {s}"), &members))??
            }
            false => uuid::Uuid::now_v7().to_string(),
        };
        let ws = format!("ws{}/v1/sessions/{id}/ws", url.trim_start_matches("http"));
        urls.push(
            parts
                .iter()
                .map(|pt| match &pt.token {
                    Some(t) => format!("{ws}?token={t}"),
                    None => format!("{ws}?user={}", pt.user_id),
                })
                .collect(),
        );
        sessions.push(Session {
            parts,
            ..Session::default()
        });
    }
    let sh = Arc::new(Shared {
        opts: opts.clone(),
        clock: Clock::new(),
        tag,
        sending: AtomicBool::new(false),
        window: OnceLock::new(),
        sessions: sessions.into_iter().map(Mutex::new).collect(),
    });
    let cpu = block_on(drive(Arc::clone(&sh), urls, watch_pids, port))?;
    let sh = Arc::try_unwrap(sh).map_err(|_| anyhow!("connections still running"))?;
    Ok(verify(sh, cpu))
}

/// `POST /v1/sessions` by the owner of `token`; the new session's id.
pub async fn create_session(
    base: &str,
    token: &str,
    title: &str,
    members: &[&str],
) -> Result<String> {
    let rb = super::drive::client()?
        .post(format!("{base}/v1/sessions"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30))
        .json(&json!({ "title": title, "members": members }));
    let v = super::drive::expect(rb, 201, "POST /v1/sessions").await?;
    v["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("POST /v1/sessions answered without an id: {v}"))
}

async fn drive(
    sh: Arc<Shared>,
    urls: Vec<Vec<String>>,
    watch_pids: &[u32],
    port: u16,
) -> Option<BTreeMap<String, f64>> {
    let (phase_tx, phase_rx) = watch::channel(Phase::Join);
    let mut tasks = Vec::new();
    let mut joins = Vec::new();
    for (s, row) in urls.into_iter().enumerate() {
        for (p, url) in row.into_iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            joins.push(rx);
            let conn = Conn {
                sh: Arc::clone(&sh),
                s,
                p,
                next_at: 0.0,
            };
            tasks.push(tokio::spawn(conn.run(url, phase_rx.clone(), tx)));
        }
    }
    let mut all_joined = true;
    for j in joins {
        all_joined &= j.await.unwrap_or(false);
    }
    let mut cpu = None;
    if all_joined {
        let c0 = cpu_snapshot(watch_pids, port);
        let start = sh.clock.now();
        let _ = sh.window.set((start, start + sh.opts.seconds * 1000.0));
        sh.sending.store(true, Ordering::Relaxed);
        let _ = phase_tx.send(Phase::Send);
        sleep_until(sh.clock.instant(start + sh.opts.seconds * 1000.0)).await;
        sh.sending.store(false, Ordering::Relaxed);
        let _ = phase_tx.send(Phase::Stop);
        cpu = Some(cpu_report(&c0, &cpu_snapshot(watch_pids, port)));
        // Drain: every sent point acked, then every acked point delivered.
        let drain = Duration::from_secs_f64(sh.opts.drain_seconds.max(0.0));
        wait_for(drain, || {
            (0..sh.sessions.len()).all(|s| {
                let sess = sh.session(s);
                sess.parts
                    .iter()
                    .all(|pt| pt.inflight.is_empty() || pt.closed)
            })
        })
        .await;
        wait_for(drain, || {
            (0..sh.sessions.len()).all(|s| {
                let sess = sh.session(s);
                let total: usize = sess.parts.iter().map(|pt| pt.ack_count).sum();
                sess.parts
                    .iter()
                    .all(|pt| pt.closed || pt.received_count >= total - pt.ack_count)
            })
        })
        .await;
    }
    let _ = phase_tx.send(Phase::Close);
    for t in tasks {
        let _ = t.await;
    }
    cpu
}

async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while !cond() {
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The end-of-run checks and the figures.
fn verify(sh: Shared, cpu: Option<BTreeMap<String, f64>>) -> String {
    let opts = sh.opts;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ack_lat = Vec::new();
    let mut del_lat = Vec::new();
    let (mut acks_in_window, mut deliveries_in_window) = (0u64, 0u64);
    let mut per_participant = Vec::new();
    for sess in sh.sessions {
        let mut sess = sess.into_inner().unwrap_or_else(|e| e.into_inner());
        let unacked: usize = sess.parts.iter().map(|pt| pt.inflight.len()).sum();
        sess.fail_n("unacked_at_end", unacked as u64);
        if let Some(last) = sess.last_seq {
            let n = sess.seqs.len() as i64;
            let bad = sess
                .seqs
                .iter()
                .filter(|&&q| q <= last || q > last + n)
                .count();
            sess.fail_n("seq_gap_or_out_of_range", bad as u64);
            let mut missing = 0u64;
            for &(from, n) in &sess.acked {
                for (r, pt) in sess.parts.iter().enumerate() {
                    if r != from && !pt.received[from].get(n).copied().unwrap_or(false) {
                        missing += 1;
                    }
                }
            }
            sess.fail_n("missing_delivery", missing);
        }
        for (k, v) in sess.errors {
            *errors.entry(k).or_default() += v;
        }
        ack_lat.extend(sess.ack_lat);
        del_lat.extend(sess.del_lat);
        acks_in_window += sess.acks_in_window;
        deliveries_in_window += sess.deliveries_in_window;
        per_participant.extend(sess.parts.iter().map(|pt| pt.ack_in_window));
    }
    let mean = acks_in_window as f64 / per_participant.len().max(1) as f64;
    let share_min = (mean > 0.0).then(|| {
        let min = per_participant.iter().copied().min().unwrap_or(0) as f64;
        round_to(min / mean, 3)
    });
    let per_s = |n: u64| (n as f64 / opts.seconds).round() as u64;
    let [ack_p50, ack_p99, ack_max] = spread(&mut ack_lat);
    let [del_p50, del_p99, _] = spread(&mut del_lat);
    // Keys in loadgen.mjs' order.
    fields! {
        "acks_per_s": per_s(acks_in_window), "deliveries_per_s": per_s(deliveries_in_window),
        "ack_p50_ms": ack_p50, "ack_p99_ms": ack_p99, "ack_max_ms": ack_max,
        "delivery_p50_ms": del_p50, "delivery_p99_ms": del_p99,
        "errors": errors.values().sum::<u64>(), "sessions": opts.sessions,
        "participants": opts.participants, "seconds": opts.seconds, "window": opts.window,
        "rate": opts.rate, "ack_share_min": share_min, "acks_total": ack_lat.len(),
        "deliveries_total": del_lat.len(), "error_detail": errors,
        "cpu_pct": cpu.unwrap_or_default(), "generator": "xtask",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures_util::{SinkExt, StreamExt};
    use tokio::sync::mpsc;
    use tokio_tungstenite::tungstenite::Message;

    use super::super::defaults;
    use super::*;

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
    type Rooms =
        Arc<Mutex<BTreeMap<String, (i64, u64, Vec<(u64, mpsc::UnboundedSender<String>)>)>>>;

    /// A session server speaking the frames the generator needs, correct
    /// or with one fault; its port.
    fn fake(fault: Fault) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                let rooms = Rooms::default();
                for conn in 0.. {
                    let (sock, _) = l.accept().await.unwrap();
                    tokio::spawn(serve(sock, conn, Arc::clone(&rooms), fault));
                }
            })
        });
        port
    }

    async fn serve(sock: tokio::net::TcpStream, conn: u64, rooms: Rooms, fault: Fault) {
        let mut uri = String::new();
        #[allow(clippy::result_large_err)] // tungstenite's callback type
        let callback = |req: &tungstenite::handshake::server::Request, res| {
            uri = req.uri().to_string();
            Ok(res)
        };
        let Ok(ws) = tokio_tungstenite::accept_hdr_async(sock, callback).await else {
            return;
        };
        // /v1/sessions/{id}/ws?user=U
        let session = uri.split('/').nth(3).unwrap_or_default().to_owned();
        let user = uri.split("user=").nth(1).unwrap_or_default().to_owned();
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
            let point =
                json!({"type": "point", "id": id, "seq": seq, "userId": user, "data": v["data"]});
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
        serde_json::from_str(
            &run(&o, &format!("http://127.0.0.1:{}", fake(fault)), None, &[]).unwrap(),
        )
        .unwrap()
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
        assert!(
            r["errors"] == 0 && (160..=260).contains(&r["acks_total"].as_u64().unwrap()),
            "{r}"
        );
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
        assert_eq!(
            (&r["error_detail"]["own_point_echoed"], &r["errors"]),
            (&r["acks_total"], &r["acks_total"])
        );
    }
}
