//! The logic of a live session connection as a pure state machine: no
//! sockets, no timers, no clock. Whoever drives it (the [`crate::Live`]
//! task, or a test with a fake server and a virtual clock) feeds it what
//! happened with the time in milliseconds, and carries out its [`Output`]s
//! (connect, send a frame, close, tell the user), waking it at
//! [`Machine::poll_timeout`].
//!
//! What it guarantees, whatever the drops: every point given to
//! [`Machine::send`] is sent with its idempotency id until it is acked (or
//! refused), so the server stores it exactly once; and every stored point of
//! another participant is emitted exactly once and in `seq` order, because
//! points are released only when every lower `seq` is known (replayed,
//! received, or acked as one of ours), and a reconnect resumes from the
//! highest `seq` released.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use sesh_protocol::{ClientFrame, ErrorCode, NewPoint, Participant, ServerFrame, StoredPoint};

use crate::error::Error;

/// Delays between reconnect attempts: exponential growth with full jitter
/// (each delay is uniform in `[0, min(max, initial * factor^attempt)]`).
///
/// The defaults sit between partysocket (1 s growing to 10 s) and Phoenix
/// (tens of milliseconds first, 5 s at most): quick first retries for a blip,
/// at most 10 s apart when the server is down for long.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The ceiling of the first delay.
    pub initial: Duration,
    /// The largest ceiling.
    pub max: Duration,
    /// Growth of the ceiling per failed attempt.
    pub factor: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
            factor: 2.0,
        }
    }
}

impl Backoff {
    /// The ceiling of the delay before attempt `attempt` (0 for the first
    /// retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let grown = self.initial.as_secs_f64() * self.factor.max(1.0).powi(attempt.min(64) as i32);
        Duration::from_secs_f64(grown.min(self.max.as_secs_f64()).max(0.0))
    }

    /// A delay for `attempt`, uniform in `[0, ceiling]`, from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rng.u64(0..=ceiling))
    }
}

/// Tuning of a live connection.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveConfig {
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
    /// How long a connect (until the `welcome` frame) may take.
    pub connect_timeout: Duration,
    /// A `ping` goes out after this long without sending one.
    pub ping_interval: Duration,
    /// No frame for this long after a `ping`: the connection is dead.
    pub pong_timeout: Duration,
    /// A point held back for a missing lower `seq` this long asks for a
    /// replay of the gap.
    pub gap_timeout: Duration,
    /// Replay from just after this `seq` on the first join (`Some(0)`: the
    /// whole session); `None` starts with the points after the join.
    pub start_after: Option<u64>,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            gap_timeout: Duration::from_secs(2),
            start_after: None,
        }
    }
}

/// What happened in a live session, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The socket is (again) in the session: after every connect.
    Connected {
        /// This connection's id.
        conn_id: String,
        /// The authenticated user.
        user_id: String,
        /// The session's latest `seq` when joined.
        last_seq: u64,
        /// Who is connected now (this connection included).
        participants: Vec<Participant>,
    },
    /// Another connection joined.
    Joined(Participant),
    /// Another connection left.
    Left {
        /// The connection that closed.
        conn_id: String,
        /// Its user.
        user_id: String,
    },
    /// A point of another participant (or, in a replay, of another
    /// connection of the same user), once each and in `seq` order.
    Point(StoredPoint),
    /// The session's membership changed.
    Members {
        /// The writers besides the owner.
        members: Vec<String>,
        /// The viewers.
        viewers: Vec<String>,
    },
    /// This user was removed from the session; the handle is done and
    /// does not reconnect.
    Removed,
    /// Another participant's signal.
    Signal {
        /// The sending connection.
        from: String,
        /// Its user.
        user_id: String,
        /// What it sent.
        data: serde_json::Map<String, serde_json::Value>,
    },
    /// Another participant's live state changed.
    State {
        /// The connection.
        conn_id: String,
        /// Its user.
        user_id: String,
        /// The new state.
        data: serde_json::Map<String, serde_json::Value>,
    },
    /// The session ended; the handle is done.
    Ended {
        /// The session's final `seq`.
        last_seq: u64,
    },
    /// An `error` frame not about one of our points, or a failed connect.
    Error(Error),
    /// The socket went away; `retry_in` is the wait before the next attempt
    /// (`None` when it will not reconnect).
    Disconnected {
        /// The wait before reconnecting.
        retry_in: Option<Duration>,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open a socket (with a fresh token) and report
    /// [`Machine::connected`] or [`Machine::connect_failed`].
    Connect,
    /// Send this text frame on the open socket.
    Send(String),
    /// Close the socket, if one is open or opening.
    CloseSocket,
    /// Tell the user.
    Event(Event),
    /// The point with this id is stored with this `seq`.
    Acked {
        /// The point's idempotency id.
        id: String,
        /// Its `seq`.
        seq: u64,
    },
    /// The point with this id will never be stored.
    Refused {
        /// The point's idempotency id.
        id: String,
        /// Why.
        error: Error,
    },
    /// The machine is done: nothing more will come out.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Link {
    Idle,
    Connecting { since: u64 },
    Open { since: u64, welcomed: bool },
    Waiting { until: u64 },
    Stopped,
}

#[derive(Debug)]
struct Pending {
    id: String,
    frame: String,
    sent: bool,
}

/// The live connection logic; see the module docs.
#[derive(Debug)]
pub struct Machine {
    cfg: LiveConfig,
    rng: fastrand::Rng,
    link: Link,
    attempt: u32,
    user_id: Option<String>,
    /// Every `seq` up to this one is released (or is ours); `None` before
    /// the first `welcome`.
    watermark: Option<u64>,
    /// Points above a gap, waiting for it to fill.
    held: BTreeMap<u64, StoredPoint>,
    /// Our own acked `seq`s above the watermark.
    own: BTreeSet<u64>,
    /// Unacked points in send order.
    pending: VecDeque<Pending>,
    /// A `resume` is outstanding.
    resuming: bool,
    /// Replay caught up since the last `welcome`: points may flow.
    ready: bool,
    hold_until: Option<u64>,
    last_rx: u64,
    last_ping: u64,
    ping_sent: Option<u64>,
    gap_since: Option<u64>,
    /// The live state set with [`Machine::set_state`], sent again on every
    /// `welcome` (a new connection starts with none).
    state: Option<serde_json::Map<String, serde_json::Value>>,
    out: VecDeque<Output>,
}

impl Machine {
    /// A machine that will connect once [`Machine::start`] is called;
    /// `seed` drives the jitter and the generated ids.
    pub fn new(cfg: LiveConfig, seed: u64) -> Self {
        Machine {
            state: None,
            cfg,
            rng: fastrand::Rng::with_seed(seed),
            link: Link::Idle,
            attempt: 0,
            user_id: None,
            watermark: None,
            held: BTreeMap::new(),
            own: BTreeSet::new(),
            pending: VecDeque::new(),
            resuming: false,
            ready: false,
            hold_until: None,
            last_rx: 0,
            last_ping: 0,
            ping_sent: None,
            gap_since: None,
            out: VecDeque::new(),
        }
    }

    /// Asks for the first connect.
    pub fn start(&mut self, now: u64) {
        if self.link == Link::Idle {
            self.link = Link::Connecting { since: now };
            self.out.push_back(Output::Connect);
        }
    }

    /// The highest `seq` released so far (the `afterSeq` of the next
    /// resume).
    pub fn last_seq(&self) -> Option<u64> {
        self.watermark
    }

    /// How many points wait for their ack.
    pub fn unacked(&self) -> usize {
        self.pending.len()
    }

    /// Whether the machine has stopped for good.
    pub fn is_stopped(&self) -> bool {
        self.link == Link::Stopped
    }

    /// Queues a point; returns its idempotency id (the point's own, or a
    /// new random one). It goes out now if the connection is ready, else
    /// once it is.
    pub fn send(&mut self, now: u64, mut point: NewPoint) -> String {
        let id = match &point.id {
            Some(id) => id.clone(),
            None => {
                let id = self.new_id();
                point.id = Some(id.clone());
                id
            }
        };
        if self.link == Link::Stopped {
            self.out.push_back(Output::Refused {
                id: id.clone(),
                error: Error::closed("the live session is closed"),
            });
            return id;
        }
        let frame = to_json(&ClientFrame::Point(point));
        self.pending.push_back(Pending {
            id: id.clone(),
            frame,
            sent: false,
        });
        self.flush(now);
        id
    }

    /// Asks the server to end the session (owner only).
    pub fn end_session(&mut self) {
        if matches!(self.link, Link::Open { welcomed: true, .. }) {
            self.out.push_back(Output::Send(to_json(&ClientFrame::End)));
        }
    }

    /// Sends an ephemeral signal to every other participant, or to
    /// connection `to` only (dropped when not connected: signals are not
    /// kept).
    pub fn signal(&mut self, data: serde_json::Map<String, serde_json::Value>, to: Option<String>) {
        if matches!(self.link, Link::Open { welcomed: true, .. }) {
            self.out
                .push_back(Output::Send(to_json(&ClientFrame::Signal { data, to })));
        }
    }

    /// Sets this connection's live state (sent again after a reconnect).
    pub fn set_state(&mut self, data: serde_json::Map<String, serde_json::Value>) {
        if matches!(self.link, Link::Open { welcomed: true, .. }) {
            self.out
                .push_back(Output::Send(to_json(&ClientFrame::State {
                    data: data.clone(),
                })));
        }
        self.state = Some(data);
    }

    /// Closes for good: unacked points are refused with `closed`.
    pub fn close(&mut self) {
        self.stop(Error::closed("the live session was closed"));
    }

    /// Drops the current socket and reconnects at once (a network change,
    /// or a test of the reconnect path).
    pub fn reconnect(&mut self, now: u64) {
        if matches!(self.link, Link::Open { .. } | Link::Connecting { .. }) {
            self.out.push_back(Output::CloseSocket);
            self.lost(now, Some(0));
        } else if let Link::Waiting { .. } = self.link {
            self.link = Link::Waiting { until: now };
        }
    }

    /// The socket opened (the `welcome` frame comes next).
    pub fn connected(&mut self, now: u64) {
        if let Link::Connecting { .. } = self.link {
            self.link = Link::Open {
                since: now,
                welcomed: false,
            };
            self.last_rx = now;
        }
    }

    /// The connect failed, with the HTTP status of a refused upgrade when
    /// known. 403, 404 and 409 are final; anything else is retried.
    pub fn connect_failed(&mut self, now: u64, error: Error) {
        if !matches!(self.link, Link::Connecting { .. } | Link::Open { .. }) {
            return;
        }
        let fatal = matches!(error.status, Some(403 | 404 | 409));
        if fatal {
            self.out
                .push_back(Output::Event(Event::Error(error.clone())));
            self.stop(error);
            return;
        }
        let floor = error.retry_after.map(|d| d.as_millis() as u64);
        self.out.push_back(Output::Event(Event::Error(error)));
        self.lost(now, floor);
    }

    /// The open socket closed or failed.
    pub fn disconnected(&mut self, now: u64) {
        if matches!(self.link, Link::Open { .. } | Link::Connecting { .. }) {
            self.lost(now, None);
        }
    }

    /// A text frame arrived.
    pub fn received(&mut self, now: u64, text: &str) {
        if !matches!(self.link, Link::Open { .. }) {
            return;
        }
        self.last_rx = now;
        self.ping_sent = None;
        match serde_json::from_str::<ServerFrame>(text) {
            Ok(frame) => self.frame(now, frame),
            Err(e) => self
                .out
                .push_back(Output::Event(Event::Error(Error::decode(format!(
                    "server frame: {e}"
                ))))),
        }
    }

    /// When [`Machine::handle_timeout`] is due next, if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut at: Option<u64> = None;
        let mut at_least = |t: u64| at = Some(at.map_or(t, |a| a.min(t)));
        match self.link {
            Link::Idle | Link::Stopped => return None,
            Link::Waiting { until } => at_least(until),
            Link::Connecting { since } => at_least(since + ms(self.cfg.connect_timeout)),
            Link::Open {
                since,
                welcomed: false,
            } => at_least(since + ms(self.cfg.connect_timeout)),
            Link::Open { welcomed: true, .. } => {
                match self.ping_sent {
                    Some(sent) => at_least(sent + ms(self.cfg.pong_timeout)),
                    None => at_least(self.last_ping + ms(self.cfg.ping_interval)),
                }
                if let Some(h) = self.hold_until {
                    at_least(h);
                }
                if let Some(g) = self.gap_since {
                    if !self.resuming {
                        at_least(g + ms(self.cfg.gap_timeout));
                    }
                }
            }
        }
        at
    }

    /// Time has come (see [`Machine::poll_timeout`]).
    pub fn handle_timeout(&mut self, now: u64) {
        match self.link {
            Link::Idle | Link::Stopped => {}
            Link::Waiting { until } => {
                if now >= until {
                    self.link = Link::Connecting { since: now };
                    self.out.push_back(Output::Connect);
                }
            }
            Link::Connecting { since }
            | Link::Open {
                since,
                welcomed: false,
            } => {
                if now >= since + ms(self.cfg.connect_timeout) {
                    self.out.push_back(Output::CloseSocket);
                    self.out
                        .push_back(Output::Event(Event::Error(Error::transport(
                            "connect timed out",
                        ))));
                    self.lost(now, None);
                }
            }
            Link::Open { welcomed: true, .. } => {
                if let Some(sent) = self.ping_sent {
                    if now >= sent + ms(self.cfg.pong_timeout) {
                        self.out.push_back(Output::CloseSocket);
                        self.lost(now, None);
                        return;
                    }
                } else if now >= self.last_ping + ms(self.cfg.ping_interval) {
                    self.out
                        .push_back(Output::Send(to_json(&ClientFrame::Ping)));
                    self.last_ping = now;
                    self.ping_sent = Some(now);
                }
                if self.hold_until.is_some_and(|h| now >= h) {
                    self.hold_until = None;
                    self.flush(now);
                }
                if let (Some(g), false) = (self.gap_since, self.resuming) {
                    if now >= g + ms(self.cfg.gap_timeout) {
                        self.gap_since = Some(now);
                        self.resume_from(self.watermark.unwrap_or(0));
                    }
                }
            }
        }
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn frame(&mut self, now: u64, frame: ServerFrame) {
        match frame {
            ServerFrame::Welcome {
                session_id: _,
                conn_id,
                user_id,
                last_seq,
                participants,
            } => {
                self.link = Link::Open {
                    since: now,
                    welcomed: true,
                };
                self.attempt = 0;
                self.last_ping = now;
                self.ping_sent = None;
                self.user_id = Some(user_id.clone());
                let from = *self
                    .watermark
                    .get_or_insert(self.cfg.start_after.unwrap_or(last_seq).min(last_seq));
                self.out.push_back(Output::Event(Event::Connected {
                    conn_id,
                    user_id,
                    last_seq,
                    participants,
                }));
                if let Some(data) = self.state.clone() {
                    self.out
                        .push_back(Output::Send(to_json(&ClientFrame::State { data })));
                }
                if last_seq > from {
                    self.ready = false;
                    self.resume_from(from);
                } else {
                    self.ready = true;
                    self.flush(now);
                }
            }
            ServerFrame::Joined(p) => self.out.push_back(Output::Event(Event::Joined(p))),
            ServerFrame::Left { conn_id, user_id } => self
                .out
                .push_back(Output::Event(Event::Left { conn_id, user_id })),
            ServerFrame::Point(p) => self.point(now, p),
            ServerFrame::Ack { id, seq } => {
                if let Some(id) = id {
                    if let Some(i) = self.pending.iter().position(|p| p.id == id) {
                        self.pending.remove(i);
                        self.out.push_back(Output::Acked { id, seq });
                    }
                }
                self.mark_own(now, seq);
            }
            ServerFrame::Resumed { .. } => {
                let (through, more) = resumed_parts(&frame);
                if more {
                    self.resume_from(through.max(self.watermark.unwrap_or(0)));
                } else {
                    self.resuming = false;
                    if !self.ready {
                        self.ready = true;
                        self.flush(now);
                    }
                    self.gap_since = (!self.held.is_empty() || !self.own.is_empty()).then_some(now);
                }
            }
            ServerFrame::Pong => {}
            ServerFrame::Error {
                code,
                message,
                r#ref,
                retry_after_ms,
            } => {
                let retry_after = retry_after_ms.map(Duration::from_millis);
                let error = Error {
                    status: None,
                    code: code.as_str().to_owned(),
                    message,
                    retry_after,
                };
                let ours = r#ref
                    .as_deref()
                    .and_then(|r| self.pending.iter().position(|p| p.id == r));
                match (ours, code) {
                    (Some(_), ErrorCode::RateLimited) | (None, ErrorCode::RateLimited) => {
                        // Unsent again, all of them, so that order is kept
                        // when the wait is over.
                        for p in &mut self.pending {
                            p.sent = false;
                        }
                        let wait = retry_after_ms.unwrap_or(1000);
                        self.hold_until = Some(now + wait);
                        if ours.is_none() {
                            self.out.push_back(Output::Event(Event::Error(error)));
                        }
                    }
                    (Some(i), _) => {
                        if let Some(p) = self.pending.remove(i) {
                            self.out.push_back(Output::Refused { id: p.id, error });
                        }
                    }
                    (None, _) => self.out.push_back(Output::Event(Event::Error(error))),
                }
            }
            ServerFrame::Members { members, viewers } => self
                .out
                .push_back(Output::Event(Event::Members { members, viewers })),
            ServerFrame::Signal {
                from,
                user_id,
                data,
            } => self.out.push_back(Output::Event(Event::Signal {
                from,
                user_id,
                data,
            })),
            ServerFrame::State {
                conn_id,
                user_id,
                data,
            } => self.out.push_back(Output::Event(Event::State {
                conn_id,
                user_id,
                data,
            })),
            ServerFrame::Removed => {
                self.out.push_back(Output::Event(Event::Removed));
                let mut e = Error::new("forbidden", "removed from the session");
                e.status = Some(403);
                self.stop(e);
            }
            ServerFrame::Ended { last_seq } => {
                self.out.push_back(Output::Event(Event::Ended { last_seq }));
                let mut e = Error::new("session_ended", "the session has ended");
                e.status = Some(409);
                self.stop(e);
            }
        }
    }

    fn point(&mut self, now: u64, p: StoredPoint) {
        let ours = self.user_id.as_deref() == Some(p.user_id.as_str())
            && p.id
                .as_deref()
                .is_some_and(|id| self.pending.iter().any(|q| q.id == id));
        if ours {
            // A replay holds a point whose ack the drop swallowed: that is
            // its ack, and resending it is no longer needed.
            if let Some(id) = p.id.clone() {
                self.pending.retain(|q| q.id != id);
                self.out.push_back(Output::Acked { id, seq: p.seq });
            }
            self.mark_own(now, p.seq);
            return;
        }
        let Some(w) = self.watermark else { return };
        if p.seq <= w || self.own.contains(&p.seq) || self.held.contains_key(&p.seq) {
            return;
        }
        self.held.insert(p.seq, p);
        self.release(now);
    }

    fn mark_own(&mut self, now: u64, seq: u64) {
        if self.watermark.is_some_and(|w| seq > w) {
            self.own.insert(seq);
            self.release(now);
        }
    }

    /// Moves the watermark over every known `seq` and emits held points.
    fn release(&mut self, now: u64) {
        let Some(mut w) = self.watermark else { return };
        loop {
            let next = w + 1;
            if self.own.remove(&next) {
                w = next;
            } else if let Some(p) = self.held.remove(&next) {
                w = next;
                self.out.push_back(Output::Event(Event::Point(p)));
            } else {
                break;
            }
        }
        self.watermark = Some(w);
        if self.held.is_empty() && self.own.is_empty() {
            self.gap_since = None;
        } else if self.gap_since.is_none() {
            self.gap_since = Some(now);
        }
    }

    fn resume_from(&mut self, after_seq: u64) {
        self.resuming = true;
        self.out
            .push_back(Output::Send(to_json(&ClientFrame::Resume { after_seq })));
    }

    fn flush(&mut self, now: u64) {
        if !self.ready
            || !matches!(self.link, Link::Open { welcomed: true, .. })
            || self.hold_until.is_some_and(|h| now < h)
        {
            return;
        }
        for p in &mut self.pending {
            if !p.sent {
                p.sent = true;
                self.out.push_back(Output::Send(p.frame.clone()));
            }
        }
    }

    /// The socket is gone: wait (at least `floor` ms) and reconnect.
    fn lost(&mut self, now: u64, floor: Option<u64>) {
        let delay = ms(self.cfg.backoff.delay(self.attempt, &mut self.rng));
        let delay = floor.map_or(delay, |f| if f == 0 { 0 } else { delay.max(f) });
        self.attempt = self.attempt.saturating_add(1);
        self.link = Link::Waiting { until: now + delay };
        self.ready = false;
        self.resuming = false;
        self.ping_sent = None;
        self.hold_until = None;
        for p in &mut self.pending {
            p.sent = false;
        }
        self.out.push_back(Output::Event(Event::Disconnected {
            retry_in: Some(Duration::from_millis(delay)),
        }));
    }

    fn stop(&mut self, error: Error) {
        if self.link == Link::Stopped {
            return;
        }
        self.link = Link::Stopped;
        self.out.push_back(Output::CloseSocket);
        for p in self.pending.drain(..) {
            self.out.push_back(Output::Refused {
                id: p.id,
                error: error.clone(),
            });
        }
        self.out.push_back(Output::Stopped);
    }

    fn new_id(&mut self) -> String {
        // A random (version 4) UUID.
        let hi = (self.rng.u64(..) & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
        let lo = (self.rng.u64(..) & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xffff,
            hi & 0xffff,
            lo >> 48,
            lo & 0xffff_ffff_ffff
        )
    }
}

/// `throughSeq` and `more` of a `resumed` frame.
fn resumed_parts(frame: &ServerFrame) -> (u64, bool) {
    match frame {
        ServerFrame::Resumed {
            through_seq, more, ..
        } => (*through_seq, *more),
        _ => (0, false),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn to_json(frame: &ClientFrame) -> String {
    // A client frame is strings, finite numbers and JSON objects: it always
    // serializes.
    serde_json::to_string(frame).unwrap_or_default()
}

#[cfg(test)]
mod tests;
