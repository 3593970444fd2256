//! `ActiveSessionDO`: one object per session id. Feeds [`SessionCore`]
//! events and carries out its decisions: SQLite writes (one transaction
//! per write, `storage`), socket sends (`sockets`), alarms, outbox
//! deliveries, reservations, the owner's plan and the D1 flush the core
//! planned (`remote`). The adapter decides nothing itself.

mod remote;
mod sockets;
mod storage;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use sesh_protocol::{
    parse_body, parse_optional_body, CreateSession, PointsAccepted, PointsBatch, SetMember,
};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::{
    durable_object, DurableObject, Env, Request, Response, SqlStorage, State, WebSocket,
    WebSocketIncomingMessage,
};

use crate::edge::http::{self, internal, Caller};
use crate::error::ApiError;
use crate::ids;
use crate::time::{now_ms, Millis};
use sesh_core::calls::{SessionAnswer, SessionCall};
use sesh_core::config::Plans;
use sesh_core::lifecycle::LifecycleConfig;
use sesh_core::outbox::RETRY_MS;
use sesh_core::session::{
    Change, Config, ConnId, Decision, EntryId, FlushJob, Meta, Outgoing, PresenceNote, SessionCore,
    SessionError,
};
use storage::{settle_stmt, stats_stmts, units_stmt, SqlIds};

/// Whether the session was read from storage, and what it found.
enum Loaded {
    /// Storage not read yet (a fresh instance).
    Unread,
    /// No session lives here.
    Absent,
    /// The session.
    Live(Box<SessionCore>),
}

/// The core's answers to HTTP batches ([`Decision::Appended`]), for the
/// requests that wait for them (a batch may be answered while another
/// request carries out the reservation it waited for).
#[derive(Default)]
struct Answers {
    ready: HashMap<u64, Result<Vec<u64>, SessionError>>,
    waiting: HashMap<u64, Waker>,
}

/// A live, multi-participant session (CONTRACT.md section 5).
#[durable_object]
pub struct ActiveSessionDO {
    state: State,
    env: Env,
    sql: SqlStorage,
    cfg: Config,
    plans: Plans,
    core: RefCell<Loaded>,
    sockets: RefCell<HashMap<ConnId, WebSocket>>,
    alarm_at: Cell<Option<Millis>>,
    answers: RefCell<Answers>,
    conn_ids: js_sys::WeakMap,
    send_fn: RefCell<Option<js_sys::Function>>,
    // What frames left to wait for (`frame_now`), until `finish` runs it.
    later: RefCell<Later>,
}

const PING: &str = r#"{"type":"ping"}"#;
const PONG: &str = r#"{"type":"pong"}"#;

/// Decisions that wait on something, carried out after the sends.
#[derive(Default)]
struct Later {
    wake: Option<Millis>,
    reserves: Vec<(String, String, u64)>,
    plans: Vec<String>,
    flushes: Vec<FlushJob>,
    deliveries: Vec<(EntryId, Outgoing)>,
    failed: Option<ApiError>,
    retire: bool,
}

impl Later {
    /// Adds what `other` waits for (failures are logged where they happen).
    fn merge(&mut self, other: Later) {
        self.wake = match (self.wake, other.wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.reserves.extend(other.reserves);
        self.plans.extend(other.plans);
        self.flushes.extend(other.flushes);
        self.deliveries.extend(other.deliveries);
        self.retire |= other.retire;
    }

    fn is_empty(&self) -> bool {
        self.wake.is_none()
            && self.reserves.is_empty()
            && self.plans.is_empty()
            && self.flushes.is_empty()
            && self.deliveries.is_empty()
            && !self.retire
    }
}

impl DurableObject for ActiveSessionDO {
    fn new(state: State, env: Env) -> Self {
        let sql = state.storage().sql();
        let t = http::tuning(&env);
        let cfg = Config {
            flush_batch: t.flush_batch,
            flush_interval_ms: t.flush_interval_ms,
            seats_per_user: t.seats_per_user,
            replay_page: t.replay_page,
            session_frames_per_sec: t.session_frames_per_sec,
            session_frames_burst: t.session_frames_burst,
            waiting_max_points: usize::try_from(t.waiting_points_max).unwrap_or(usize::MAX),
            waiting_max_bytes: usize::try_from(t.waiting_bytes_max).unwrap_or(usize::MAX),
            units_idle_ms: t.units_idle_ms,
            units_settle_ms: t.units_settle_ms,
            max_kinds: usize::try_from(t.max_kinds).unwrap_or(usize::MAX),
            ended_retention_ms: LifecycleConfig::from_vars(|k| http::var(&env, k))
                .map(|c| c.ended_retention_ms.max(0) as u64)
                .unwrap_or_else(|e| {
                    log_error(&ApiError::Internal(format!("configuration: {e}")));
                    Config::default().ended_retention_ms
                }),
            ..Config::default()
        };
        let plans = http::plans(&env);
        // The runtime answers the exact ping text itself, without waking
        // a hibernating object; other pings reach `on_text`.
        match worker::worker_sys::WebSocketRequestResponsePair::new(PING, PONG) {
            Ok(pair) => {
                if let Err(e) = state.as_raw().set_websocket_auto_response(&pair) {
                    log_error(&internal(format!("auto-response: {e:?}")));
                }
            }
            Err(e) => log_error(&internal(format!("auto-response pair: {e:?}"))),
        }
        Self {
            state,
            env,
            sql,
            cfg,
            plans,
            core: RefCell::new(Loaded::Unread),
            sockets: RefCell::new(HashMap::new()),
            alarm_at: Cell::new(None),
            answers: RefCell::new(Answers::default()),
            conn_ids: js_sys::WeakMap::new(),
            send_fn: RefCell::new(None),
            later: RefCell::new(Later::default()),
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        let r = self.handle(req).await;
        Ok(http::respond(r))
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> worker::Result<()> {
        let message = match message {
            WebSocketIncomingMessage::String(t) => JsValue::from_str(&t),
            WebSocketIncomingMessage::Binary(b) => js_sys::Uint8Array::from(&b[..]).buffer().into(),
        };
        if self.frame_now(&ws, &message) {
            self.finish_frames().await;
        }
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        _code: usize,
        _reason: String,
        _was_clean: bool,
    ) -> worker::Result<()> {
        self.on_gone(&ws).await;
        // Complete the closing handshake; the socket may already be closed.
        let _ = ws.close(Some(1000), Some("closed"));
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> worker::Result<()> {
        self.on_gone(&ws).await;
        Ok(())
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_at.set(None);
        self.on_alarm().await;
        Response::ok("")
    }
}

#[wasm_bindgen(wasm_bindgen_futures = ::worker::wasm_bindgen_futures)]
impl ActiveSessionDO {
    /// A WebSocket frame without a promise (`src/entry.mjs`): true when
    /// [`ActiveSessionDO::finish`] must run for what it left.
    pub fn frame(&self, ws: worker::worker_sys::web_sys::WebSocket, message: JsValue) -> bool {
        self.frame_now(&ws.into(), &message)
    }

    /// Whether frames or an answered request left something to wait for
    /// ([`ActiveSessionDO::finish`] then runs it).
    pub fn pending(&self) -> bool {
        !self.later.borrow().is_empty()
    }

    /// Carries out what frames (or an answered request) left to wait for.
    pub async fn finish(&self) {
        self.finish_frames().await;
    }
}

fn log_error(e: &ApiError) {
    http::log_error("ActiveSessionDO", e);
}

impl ActiveSessionDO {
    async fn handle(&self, mut req: Request) -> Result<Response, ApiError> {
        let call: SessionCall = http::read_call(&mut req).await?;
        let caller = Caller::read(&req)?;
        if let SessionCall::Create { session_id, body } = call {
            let create: CreateSession = parse_optional_body(&body)?;
            return self.create(&caller, create, session_id).await;
        }
        self.load()?;
        if let SessionCall::HasConn { conn_id } = &call {
            // From a PresenceDO checking a connection it was told about.
            let live = self.feed(|c| c.has_conn(conn_id))?;
            return http::json(200, &SessionAnswer::Live(live));
        }
        self.feed(|c| c.check_member(&caller.user))??;
        match call {
            SessionCall::Get => http::json(200, &self.feed(|c| c.view())?),
            SessionCall::Socket => self.upgrade(&req, &caller).await,
            SessionCall::Append { body } => {
                let batch: PointsBatch = parse_body(&body)?;
                self.append(&caller, batch).await
            }
            SessionCall::Read { after_seq, limit } => {
                let last_seq = self.feed(|c| c.last_seq())?;
                let text = self.points_page(after_seq, limit, last_seq)?;
                Ok(http::json_text(200, text))
            }
            SessionCall::End => {
                self.feed(|c| c.end(&caller.user, now_ms()))??;
                // The core asks for the final flush at once; if D1 is down
                // the alarm keeps retrying.
                self.run().await?;
                http::json(200, &self.feed(|c| c.view())?)
            }
            SessionCall::SetMember { user_id, body } => {
                let set: SetMember = parse_body(&body)?;
                let change = Change::Set {
                    user: user_id,
                    role: set.role,
                };
                self.change_members(&caller, change).await
            }
            SessionCall::RemoveMember { user_id } => {
                self.change_members(&caller, Change::Remove { user: user_id })
                    .await
            }
            SessionCall::Create { .. } | SessionCall::HasConn { .. } => {
                Err(ApiError::Internal("session call handled above".into()))
            }
        }
    }

    /// A membership change: the core stores the record (synchronously, in
    /// this object's SQLite) before anything else of it goes out, and the
    /// answer is the session as it is then.
    async fn change_members(&self, caller: &Caller, change: Change) -> Result<Response, ApiError> {
        self.feed(|c| c.change_members(&caller.user, &change, now_ms()))??;
        self.run().await?;
        http::json(200, &self.feed(|c| c.view())?)
    }

    /// Feeds the loaded core an event (or asks it something); a missing
    /// session is a 404.
    fn feed<T>(&self, f: impl FnOnce(&mut SessionCore) -> T) -> Result<T, ApiError> {
        match &mut *self.core.borrow_mut() {
            Loaded::Live(core) => Ok(f(core)),
            Loaded::Unread | Loaded::Absent => Err(ApiError::NotFound("no such session".into())),
        }
    }

    async fn create(
        &self,
        caller: &Caller,
        create: CreateSession,
        id: String,
    ) -> Result<Response, ApiError> {
        self.load()?;
        if matches!(&*self.core.borrow(), Loaded::Live(_)) {
            return Err(ApiError::Internal(format!("session id collision {id}")));
        }
        sesh_core::session::check_owner_not_listed(
            &caller.user,
            create.members.as_deref().unwrap_or_default(),
            create.viewers.as_deref().unwrap_or_default(),
        )?;
        self.prepare_schema()?;
        let max_participants = self
            .plans
            .get(&caller.plan)
            .map(|p| p.participants_per_session)
            .ok_or_else(|| ApiError::Internal(format!("unknown plan {}", caller.plan)))?;
        let now = now_ms();
        let owner = (caller.user.as_str(), caller.plan.as_str(), max_participants);
        let meta = Meta::new(id, owner, create, now);
        let core = SessionCore::create(meta, self.cfg, now);
        let view = core.view();
        *self.core.borrow_mut() = Loaded::Live(Box::new(core));
        self.run().await?;
        http::json(201, &view)
    }

    /// Loads the session from storage once per object lifetime (also after
    /// hibernation, when the sockets are still there).
    fn load(&self) -> Result<(), ApiError> {
        if !matches!(&*self.core.borrow(), Loaded::Unread) {
            return Ok(());
        }
        let Some((meta, mut restored)) = self.read_session()? else {
            *self.core.borrow_mut() = Loaded::Absent;
            return Ok(());
        };
        restored.conns = self.restore_sockets();
        let core = SessionCore::restore(meta, self.cfg, restored, now_ms());
        *self.core.borrow_mut() = Loaded::Live(Box::new(core));
        Ok(())
    }

    async fn upgrade(&self, req: &Request, caller: &Caller) -> Result<Response, ApiError> {
        // The participants cap is the owner's current plan's: the core
        // takes it from the owner's token or asks for it.
        self.feed(|c| c.want_plan(&caller.user, &caller.plan, &self.plans))?;
        self.run().await?;
        self.feed(|c| c.admit(&caller.user))??;
        let upgrade = req.headers().get("upgrade").ok().flatten();
        if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
            return Err(ApiError::BadRequest(
                "this route takes a WebSocket upgrade".into(),
            ));
        }
        let now = now_ms();
        let conn = ids::new_random_id();
        let client = self.accept(&conn, &caller.user, now)?;
        self.feed(|c| c.join(&conn, &caller.user, now))?;
        self.run().await?;
        Response::from_websocket(client).map_err(internal)
    }

    /// A frame, carried out as far as it goes without waiting (the core,
    /// storage, the sends); what must wait (a reservation, a flush, the
    /// alarm, the outboxes) is left for [`ActiveSessionDO::finish`].
    /// Returns whether anything was left. Most frames leave nothing, so the
    /// runtime's handler needs no promise for them (`src/entry.mjs`).
    fn frame_now(&self, ws: &WebSocket, message: &JsValue) -> bool {
        if let Err(e) = self.load() {
            let _ = ws.close(Some(e.close_code()), Some("server error"));
            log_error(&e);
            return false;
        }
        let Some(conn) = self.conn_of(ws) else {
            let _ = ws.close(Some(1011), Some("lost connection state"));
            return false;
        };
        let now = now_ms();
        let sql = &self.sql;
        let fed = self.feed(|c| match message.as_string() {
            Some(text) => c.on_text(&conn, &text, now, &mut SqlIds(sql)),
            None => {
                let len = message
                    .dyn_ref::<js_sys::ArrayBuffer>()
                    .map_or(0, |b| b.byte_length() as usize);
                c.on_binary(&conn, len, now)
            }
        });
        if let Err(e) = fed {
            log_error(&e);
            return false;
        }
        match self.run_sync() {
            Ok(later) => {
                // A failed write was told to its sender by the core; the
                // socket stays open.
                if let Some(e) = &later.failed {
                    log_error(e);
                }
                if later.is_empty() {
                    return false;
                }
                self.later.borrow_mut().merge(later);
                true
            }
            Err(e) => {
                log_error(&e);
                false
            }
        }
    }

    /// Carries out what frames left to wait for.
    async fn finish_frames(&self) {
        let later = std::mem::take(&mut *self.later.borrow_mut());
        if let Err(e) = self.run_later(later).await {
            log_error(&e);
        }
    }

    /// `POST .../points`: the core takes the batch (the owner's token tells
    /// the owner's plan); it is answered once its points are stored, or
    /// refused, possibly after a reservation, never after a flush to D1.
    async fn append(&self, caller: &Caller, batch: PointsBatch) -> Result<Response, ApiError> {
        let sql = &self.sql;
        let id = self.feed(|c| {
            c.caller_plan(&caller.user, &caller.plan, &self.plans);
            c.append(&caller.user, batch.points, now_ms(), &mut SqlIds(sql))
        })??;
        let mut later = self.run_sync()?;
        loop {
            if let Some(e) = &later.failed {
                log_error(e);
            }
            let ready = self.answers.borrow_mut().ready.remove(&id);
            if let Some(answer) = ready {
                // The points are stored (or the batch refused): answer now.
                // The flush and the rest wait for `finish`, which
                // `src/entry.mjs` runs after the answer.
                self.later.borrow_mut().merge(later);
                return http::json(200, &PointsAccepted { seqs: answer? });
            }
            if later.reserves.is_empty() && later.plans.is_empty() {
                break;
            }
            // Only a reservation or the owner's plan can bring the answer.
            for (owner, plan, want) in std::mem::take(&mut later.reserves) {
                self.reserve(&owner, &plan, want).await?;
            }
            for owner in std::mem::take(&mut later.plans) {
                self.ask_plan(&owner).await?;
            }
            let next = self.run_sync()?;
            later.failed = next.failed.clone();
            later.merge(next);
        }
        // Granted units are kept even when the batch is refused.
        let ran = self.run_later(later).await;
        let answer = match ran {
            Ok(()) => self.answer_of(id).await,
            // What the run left undone may hold the answer back.
            Err(e) => match self.answers.borrow_mut().ready.remove(&id) {
                Some(answer) => answer,
                None => return Err(e),
            },
        };
        http::json(200, &PointsAccepted { seqs: answer? })
    }

    /// The core's answer to HTTP batch `id`, once it comes.
    async fn answer_of(&self, id: u64) -> Result<Vec<u64>, SessionError> {
        poll_fn(|cx| {
            let mut answers = self.answers.borrow_mut();
            match answers.ready.remove(&id) {
                Some(answer) => Poll::Ready(answer),
                None => {
                    answers.waiting.insert(id, cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    fn answered(&self, batch: u64, result: Result<Vec<u64>, SessionError>) {
        let mut answers = self.answers.borrow_mut();
        answers.ready.insert(batch, result);
        if let Some(waker) = answers.waiting.remove(&batch) {
            waker.wake();
        }
    }

    async fn on_gone(&self, ws: &WebSocket) {
        if self.load().is_err() {
            return;
        }
        if let Some(conn) = self.conn_of(ws) {
            self.sockets.borrow_mut().remove(&conn);
            let now = now_ms();
            if self.feed(|c| c.leave(&conn, now)).is_ok() {
                if let Err(e) = self.run().await {
                    log_error(&e);
                }
            }
        }
    }

    /// The core's tick carries out whatever is due (flushes, settlements,
    /// outbox retries, retirement) and asks for the next wake-up; when the
    /// adapter itself failed to carry that out, the alarm comes back soon.
    async fn on_alarm(&self) {
        let ran = match self.load() {
            Ok(()) => match self.feed(|c| c.tick(now_ms())) {
                Ok(()) => self.run().await,
                // No session (never created, or retired): nothing to do.
                Err(_) => return,
            },
            Err(e) => Err(e),
        };
        if let Err(e) = ran {
            log_error(&e);
            let _ = self.ensure_alarm(now_ms() + RETRY_MS).await;
        }
    }

    /// Deletes the object's storage, as the core decided; the session's
    /// reads are answered from D1 afterwards. A failure goes back to the
    /// core, which tries again.
    async fn retire(&self) -> Result<(), ApiError> {
        let storage = self.state.storage();
        let deleted = match storage.delete_alarm().await {
            Ok(()) => storage.delete_all().await,
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            log_error(&internal(e));
            return self.feed(|c| c.retire_failed(now_ms()));
        }
        self.alarm_at.set(None);
        self.sockets.borrow_mut().clear();
        *self.core.borrow_mut() = Loaded::Absent;
        Ok(())
    }

    /// Makes sure the alarm fires no later than `at`.
    async fn ensure_alarm(&self, at: Millis) -> Result<(), ApiError> {
        http::ensure_alarm(&self.state, &self.alarm_at, at).await
    }

    /// Carries out the core's decisions until none is left: the ones that
    /// need no waiting first (sends, storage), then the awaited ones
    /// (quota, D1, alarm, outboxes), so an ack never waits on another
    /// object. A failed write is reported after everything else ran.
    async fn run(&self) -> Result<(), ApiError> {
        let later = self.run_sync()?;
        self.run_later(later).await
    }

    /// Carries out `later`, then whatever that queued, until nothing is
    /// left. Every delivery and request is answered to the core, so none
    /// stays out.
    async fn run_later(&self, mut later: Later) -> Result<(), ApiError> {
        let mut failed = None;
        loop {
            if later.failed.is_some() {
                failed = later.failed.clone();
            }
            if later.is_empty() {
                break;
            }
            for (owner, plan, want) in later.reserves {
                self.reserve(&owner, &plan, want).await?;
            }
            for owner in later.plans {
                self.ask_plan(&owner).await?;
            }
            for job in later.flushes {
                self.flush(job).await?;
            }
            for (id, item) in later.deliveries {
                self.deliver(id, item).await?;
            }
            if let Some(at) = later.wake {
                self.ensure_alarm(at).await?;
            }
            if later.retire {
                self.retire().await?;
            }
            later = self.run_sync()?;
        }
        failed.map_or(Ok(()), Err)
    }

    /// Carries out the queued decisions that need no waiting; returns the
    /// rest.
    fn run_sync(&self) -> Result<Later, ApiError> {
        let mut later = Later::default();
        loop {
            let decision = match &mut *self.core.borrow_mut() {
                Loaded::Live(c) => c.poll(),
                Loaded::Unread | Loaded::Absent => None,
            };
            let Some(decision) = decision else { break };
            match decision {
                Decision::Send { to, text } => self.send_to(&to, &text),
                Decision::Broadcast { except, text } => self.broadcast(except.as_deref(), &text),
                Decision::Close { conn, code, reason } => self.close(&conn, code, reason),
                Decision::Replay {
                    conn,
                    after,
                    through,
                    then,
                } => self.replay(&conn, after, through, &then),
                Decision::Store(w) => {
                    let result = self.store(&w);
                    if let Err(e) = &result {
                        log_error(e);
                        later.failed = Some(e.clone());
                    }
                    self.feed(|c| c.stored(result.is_ok(), now_ms()))?;
                }
                Decision::SaveMeta { meta, version } => {
                    if let Err(e) = self.save_meta(&meta, version) {
                        // Storage is the truth: the change it did not keep
                        // is forgotten with the core, which the next event
                        // reads again; nothing of the change went out.
                        *self.core.borrow_mut() = Loaded::Unread;
                        return Err(e);
                    }
                }
                Decision::SaveState { conn, state } => self.save_state(&conn, state),
                Decision::SaveUnits(u) => self.atomic(vec![units_stmt(u)])?,
                Decision::SaveStats(c) => {
                    // A failed checkpoint only lengthens the next wake-up's
                    // count; its kinds are written with the next one.
                    let result = self.atomic(stats_stmts(&c));
                    if let Err(e) = &result {
                        log_error(e);
                    }
                    self.feed(|core| core.stats_saved(result.is_ok()))?;
                }
                Decision::Presence {
                    id,
                    user,
                    conn,
                    online,
                } => {
                    let note = PresenceNote { user, conn, online };
                    // Not stored: still delivered from memory, only not
                    // again after a wake-up.
                    if let Err(e) = self.save_presence(id, &note) {
                        log_error(&e);
                    }
                }
                Decision::Settle {
                    id,
                    owner,
                    plan,
                    settlement,
                    units,
                } => self.atomic(vec![
                    settle_stmt(id, owner, plan, settlement),
                    units_stmt(units),
                ])?,
                Decision::Deliver { id, item } => later.deliveries.push((id, item)),
                Decision::AskPlan { owner } => later.plans.push(owner),
                Decision::Appended { batch, result } => self.answered(batch, result),
                Decision::Reserve { owner, plan, want } => later.reserves.push((owner, plan, want)),
                Decision::Flush(job) => later.flushes.push(job),
                // An alarm already armed as early leaves nothing to wait
                // for, so a frame then needs no async step.
                Decision::WakeAt(at) if self.alarm_at.get().is_some_and(|cur| cur <= at) => {}
                Decision::WakeAt(at) => later.wake = Some(later.wake.map_or(at, |w| w.min(at))),
                Decision::Retire => later.retire = true,
            }
        }
        Ok(later)
    }
}
