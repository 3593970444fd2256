//! A joined session: a background task drives the [`Machine`] with a real
//! socket, a real clock and timers; the [`Live`] handle sends points and
//! yields events.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::{mpsc, oneshot};
use futures::future::{pending, FutureExt};
use futures::{select_biased, SinkExt, Stream, StreamExt};
use sesh_protocol::{NewPoint, SessionStatus};
use tokio_tungstenite_wasm::{Message, WebSocketStream};

use crate::error::Error;
use crate::http::{BoxFuture, Client};
use crate::machine::{Event, LiveConfig, Machine, Output};
use crate::rt;

/// A point the server has stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The point's idempotency id (given or generated).
    pub id: String,
    /// Its `seq` in the session.
    pub seq: u64,
}

enum Cmd {
    Point(NewPoint, oneshot::Sender<Result<Ack, Error>>),
    End,
    Reconnect,
    Close,
}

/// A live session (from [`Client::join`]): send points with
/// [`Live::send`], read [`Event`]s as a `Stream` or with
/// [`Live::next_event`]. It reconnects by itself; dropping it (and every
/// [`LiveSender`]) leaves the session.
pub struct Live {
    sender: LiveSender,
    events: mpsc::UnboundedReceiver<Event>,
}

/// The sending half of a [`Live`], cheap to clone (e.g. for another task).
#[derive(Clone)]
pub struct LiveSender {
    cmds: mpsc::UnboundedSender<Cmd>,
}

impl LiveSender {
    /// Sends a point; resolves with its `seq` once the server has stored
    /// it, across reconnects. A point without an `id` gets a random one, so
    /// a resend after a drop is never stored twice.
    pub fn send(&self, point: NewPoint) -> impl std::future::Future<Output = Result<Ack, Error>> {
        let (tx, rx) = oneshot::channel();
        let queued = self.cmds.unbounded_send(Cmd::Point(point, tx)).is_ok();
        async move {
            if !queued {
                return Err(Error::closed("the live session is closed"));
            }
            rx.await
                .unwrap_or_else(|_| Err(Error::closed("the live session is closed")))
        }
    }

    /// Asks the server to end the session (owner only); an
    /// [`Event::Ended`] follows.
    pub fn end_session(&self) {
        let _ = self.cmds.unbounded_send(Cmd::End);
    }

    /// Drops the current socket and reconnects at once.
    pub fn reconnect(&self) {
        let _ = self.cmds.unbounded_send(Cmd::Reconnect);
    }

    /// Leaves the session: points not yet acked fail with `closed`.
    pub fn close(&self) {
        let _ = self.cmds.unbounded_send(Cmd::Close);
    }
}

impl Live {
    /// See [`LiveSender::send`].
    pub fn send(&self, point: NewPoint) -> impl std::future::Future<Output = Result<Ack, Error>> {
        self.sender.send(point)
    }

    /// A sending handle to share.
    pub fn sender(&self) -> LiveSender {
        self.sender.clone()
    }

    /// The next event; `None` once the session is left or ended.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.next().await
    }

    /// See [`LiveSender::end_session`].
    pub fn end_session(&self) {
        self.sender.end_session()
    }

    /// See [`LiveSender::reconnect`].
    pub fn reconnect(&self) {
        self.sender.reconnect()
    }

    /// See [`LiveSender::close`].
    pub fn close(&self) {
        self.sender.close()
    }
}

impl Stream for Live {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_next_unpin(cx)
    }
}

impl Client {
    /// Joins a session over a WebSocket with the client's live settings.
    /// Returns at once; the connect happens in the background (an
    /// [`Event::Connected`] comes first). Needs a tokio runtime on native.
    pub fn join(&self, session: &str) -> Live {
        self.join_with(session, self.live_config().clone())
    }

    /// Joins a session with these live settings.
    pub fn join_with(&self, session: &str, cfg: LiveConfig) -> Live {
        let (cmd_tx, cmd_rx) = mpsc::unbounded();
        let (ev_tx, ev_rx) = mpsc::unbounded();
        let machine = Machine::new(cfg, rt::seed());
        rt::spawn(drive(
            self.clone(),
            session.to_owned(),
            machine,
            cmd_rx,
            ev_tx,
        ));
        Live {
            sender: LiveSender { cmds: cmd_tx },
            events: ev_rx,
        }
    }
}

enum Step {
    Cmd(Option<Cmd>),
    Connected(Result<Box<WebSocketStream>, Error>),
    Frame(Option<Result<Message, tokio_tungstenite_wasm::Error>>),
    Timer,
}

/// The task behind a [`Live`]: carries out the machine's outputs and feeds
/// it what the socket, the clock and the handle say.
async fn drive(
    client: Client,
    session: String,
    mut m: Machine,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut waiters: HashMap<String, oneshot::Sender<Result<Ack, Error>>> = HashMap::new();
    let mut socket: Option<Box<WebSocketStream>> = None;
    let mut connecting: Option<BoxFuture<Result<Box<WebSocketStream>, Error>>> = None;
    let mut handle_gone = false;
    m.start(rt::now_ms());
    loop {
        while let Some(o) = m.poll_output() {
            match o {
                Output::Connect => {
                    socket = None;
                    connecting = Some(Box::pin(open(client.clone(), session.clone())));
                }
                Output::Send(text) => {
                    if let Some(s) = socket.as_mut() {
                        if s.send(Message::text(text)).await.is_err() {
                            socket = None;
                            m.disconnected(rt::now_ms());
                        }
                    }
                }
                Output::CloseSocket => {
                    // Dropping closes it (a close frame in the browser, the
                    // TCP connection on native); awaiting a polite close on
                    // a dead link could hang.
                    socket = None;
                    connecting = None;
                }
                Output::Event(e) => {
                    let _ = events.unbounded_send(e);
                }
                Output::Acked { id, seq } => {
                    if let Some(w) = waiters.remove(&id) {
                        let _ = w.send(Ok(Ack { id, seq }));
                    }
                }
                Output::Refused { id, error } => {
                    if let Some(w) = waiters.remove(&id) {
                        let _ = w.send(Err(error));
                    }
                }
                Output::Stopped => return,
            }
        }
        let deadline = m.poll_timeout();
        let step = {
            let cmd = async {
                if handle_gone {
                    pending().await
                } else {
                    cmds.next().await
                }
            };
            let conn = async {
                match connecting.as_mut() {
                    Some(f) => f.await,
                    None => pending().await,
                }
            };
            let frame = async {
                match socket.as_mut() {
                    Some(s) => s.next().await,
                    None => pending().await,
                }
            };
            let timer = async {
                match deadline {
                    Some(t) => {
                        rt::sleep(std::time::Duration::from_millis(
                            t.saturating_sub(rt::now_ms()),
                        ))
                        .await
                    }
                    None => pending().await,
                }
            };
            select_biased! {
                c = cmd.fuse() => Step::Cmd(c),
                r = conn.fuse() => Step::Connected(r),
                f = frame.fuse() => Step::Frame(f),
                () = timer.fuse() => Step::Timer,
            }
        };
        let now = rt::now_ms();
        match step {
            Step::Cmd(Some(Cmd::Point(p, reply))) => {
                let id = m.send(now, p);
                waiters.insert(id, reply);
            }
            Step::Cmd(Some(Cmd::End)) => m.end_session(),
            Step::Cmd(Some(Cmd::Reconnect)) => m.reconnect(now),
            Step::Cmd(Some(Cmd::Close)) => m.close(),
            Step::Cmd(None) => {
                handle_gone = true;
                m.close();
            }
            Step::Connected(r) => {
                connecting = None;
                match r {
                    Ok(s) => {
                        socket = Some(s);
                        m.connected(now);
                    }
                    Err(e) => m.connect_failed(now, e),
                }
            }
            Step::Frame(Some(Ok(Message::Text(t)))) => m.received(now, t.as_str()),
            Step::Frame(Some(Ok(Message::Close(_)))) | Step::Frame(None) => {
                socket = None;
                m.disconnected(now);
            }
            Step::Frame(Some(Ok(_))) => {}
            Step::Frame(Some(Err(_))) => {
                socket = None;
                m.disconnected(now);
            }
            Step::Timer => m.handle_timeout(now),
        }
    }
}

/// Opens the session's socket with a fresh token.
async fn open(client: Client, session: String) -> Result<Box<WebSocketStream>, Error> {
    let token = client.token().await?;
    match tokio_tungstenite_wasm::connect(client.ws_url(&session, &token)).await {
        Ok(s) => Ok(Box::new(s)),
        Err(e) => Err(refusal(&client, &session, e).await),
    }
}

/// Why a connect failed: the refused upgrade's answer on native; in the
/// browser (which hides it) a read of the session tells a final refusal
/// (forbidden, unknown, ended) from a passing failure.
async fn refusal(client: &Client, session: &str, e: tokio_tungstenite_wasm::Error) -> Error {
    #[cfg(not(target_arch = "wasm32"))]
    if let tokio_tungstenite_wasm::Error::Http(resp) = &e {
        let status = resp.status().as_u16();
        let body = resp
            .body()
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .map(std::time::Duration::from_secs);
        return Error::from_answer(status, &body, retry);
    }
    if cfg!(target_arch = "wasm32") {
        match client.session(session).await {
            Err(err) if matches!(err.status, Some(401 | 403 | 404)) => return err,
            Ok(s) if s.summary.status == SessionStatus::Ended => {
                let mut err = Error::new("session_ended", "the session has ended");
                err.status = Some(409);
                return err;
            }
            _ => {}
        }
    }
    Error::transport(format!("connect: {e}"))
}
