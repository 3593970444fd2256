//! `ActiveSessionDO`: one object per session id. Carries out what
//! [`SessionCore`] decides: SQLite write-ahead, socket sends, alarms, and
//! the D1 flush.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sesh_protocol::{
    parse_body, CreateSession, PointsAccepted, PointsBatch, ServerFrame, SessionStatus, StoredPoint,
};
use wasm_bindgen::{JsCast, JsValue};
use worker::{
    durable_object, DurableObject, Env, Request, Response, SqlStorage, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair,
};

use crate::calls::{PresenceCall, QuotaCall, SessionCall};
use crate::config::Plans;
use crate::core::d1;
use crate::core::quota::Reserved;
use crate::core::session::{
    point_frame, Accepted, Action, Config, ConnId, FlushBatch, Meta, Origin, Restored, SessionCore,
};
use crate::error::ApiError;
use crate::http::{self, internal, Caller, Hop};
use crate::ids;
use crate::time::{month_suffix, now_ms, rfc3339, Millis};

/// What a socket carries across hibernation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attachment {
    conn_id: ConnId,
    user_id: String,
    joined_at: Millis,
}

/// A live, multi-participant session (CONTRACT.md section 5).
#[durable_object]
pub struct ActiveSessionDO {
    state: State,
    env: Env,
    sql: SqlStorage,
    cfg: Config,
    // `None` until loaded; `Some(None)` when no session exists here.
    core: RefCell<Option<Option<SessionCore>>>,
    sockets: RefCell<HashMap<ConnId, WebSocket>>,
    alarm_at: Cell<Option<Millis>>,
    flushing: Cell<bool>,
    delivering: Cell<bool>,
    conn_ids: js_sys::WeakMap,
    send_fn: RefCell<Option<js_sys::Function>>,
    // The UTC day of the points units in hand.
    units_day: Cell<Millis>,
}

// `points.client_id` has no index: the core keeps every id in memory
// (reloaded with one scan on wake) and is the one place that decides
// repeats; an index would only make every write-ahead insert dearer.
const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS session (\
  k INTEGER PRIMARY KEY CHECK (k = 0), meta TEXT NOT NULL, meta_version INTEGER NOT NULL, \
  flushed_meta_version INTEGER NOT NULL DEFAULT 0, flushed_seq INTEGER NOT NULL DEFAULT 0, \
  units INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS points (\
  seq INTEGER PRIMARY KEY, client_id TEXT, ts INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS presence_outbox (\
  id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, conn_id TEXT NOT NULL, online INTEGER NOT NULL);";

/// How long before an undelivered presence update is tried again.
const PRESENCE_RETRY_MS: Millis = 2_000;

#[derive(Deserialize)]
struct SessionRow {
    meta: String,
    meta_version: i64,
    flushed_meta_version: i64,
    flushed_seq: i64,
    units: i64,
}

#[derive(Deserialize)]
struct IdRow {
    client_id: String,
    seq: i64,
}

#[derive(Deserialize)]
struct BodyRow {
    ts: i64,
    body: String,
}

#[derive(Deserialize)]
struct OutboxRow {
    id: i64,
    user_id: String,
    conn_id: String,
    online: i64,
}

#[derive(Deserialize)]
struct MaxRow {
    m: Option<i64>,
}

impl DurableObject for ActiveSessionDO {
    fn new(state: State, env: Env) -> Self {
        let sql = state.storage().sql();
        let tuning = http::tuning(&env);
        let cfg = Config {
            flush_batch: tuning.flush_batch,
            flush_interval_ms: tuning.flush_interval_ms,
            ..Config::default()
        };
        Self {
            state,
            env,
            sql,
            cfg,
            core: RefCell::new(None),
            sockets: RefCell::new(HashMap::new()),
            alarm_at: Cell::new(None),
            flushing: Cell::new(false),
            delivering: Cell::new(false),
            conn_ids: js_sys::WeakMap::new(),
            send_fn: RefCell::new(None),
            units_day: Cell::new(0),
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
        if let Err(e) = self.on_message(&ws, message).await {
            log_error(&e);
            let _ = ws.close(Some(e.close_code()), Some("server error"));
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
        if let Err(e) = self.on_alarm().await {
            log_error(&e);
        }
        Response::ok("")
    }
}

fn log_error(e: &ApiError) {
    http::log_error("ActiveSessionDO", e);
}

impl ActiveSessionDO {
    async fn handle(&self, mut req: Request) -> Result<Response, ApiError> {
        let call = SessionCall::from_wire(http::read_wire(&mut req).await?)?;
        let caller = Caller::read(&req)?;
        if let SessionCall::Create { session_id, body } = call {
            let create: CreateSession = parse_body(&body)?;
            return self.create(&caller, create, session_id).await;
        }
        self.load()?;
        if let SessionCall::HasConn { conn_id } = &call {
            // From a PresenceDO checking a connection it was told about.
            let live = self.with_core(|c| Ok(c.has_conn(conn_id)))?;
            return http::json(200, &serde_json::json!({ "live": live }));
        }
        self.with_core(|c| c.check_member(&caller.user))?;
        match call {
            SessionCall::Get => http::json(200, &self.with_core(|c| Ok(c.view()))?),
            SessionCall::Socket => self.upgrade(&req, &caller).await,
            SessionCall::Append { body } => {
                let batch: PointsBatch = parse_body(&body)?;
                self.append(&caller, batch).await
            }
            SessionCall::Read { after_seq, limit } => self.read_points(after_seq, limit),
            SessionCall::End => {
                self.with_core(|c| c.end(&caller.user, now_ms()))?;
                self.run().await?;
                // Everything pending goes to D1 before the answer; if D1 is
                // down the alarm keeps retrying.
                self.flush_due().await;
                self.run().await?;
                http::json(200, &self.with_core(|c| Ok(c.view()))?)
            }
            SessionCall::Create { .. } | SessionCall::HasConn { .. } => {
                Err(ApiError::Internal("session call handled above".into()))
            }
        }
    }

    /// The connection id of a socket. Read from the attachment once per
    /// socket and object lifetime, then from a weak map keyed by the socket
    /// (the attachment is a structured clone: costly on every frame).
    fn conn_of(&self, ws: &WebSocket) -> Option<ConnId> {
        let key: &js_sys::Object = ws.as_ref().as_ref();
        if let Some(id) = self.conn_ids.get(key).as_string() {
            return Some(id);
        }
        let id = attachment_conn(ws)?;
        self.conn_ids.set(key, &JsValue::from_str(&id));
        Some(id)
    }

    /// Sends an already converted JS string (`WebSocket.prototype.send`,
    /// looked up once). A socket that closed meanwhile is skipped.
    fn send_js(&self, ws: &WebSocket, text: &JsValue) {
        let target: &JsValue = ws.as_ref().as_ref();
        let mut cached = self.send_fn.borrow_mut();
        if cached.is_none() {
            *cached = js_sys::Reflect::get(target, &JsValue::from_str("send"))
                .ok()
                .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        }
        if let Some(send) = cached.as_ref() {
            let _ = send.call1(target, text);
        }
    }

    /// Runs `f` on the loaded core; a missing session is a 404.
    fn with_core<T>(
        &self,
        f: impl FnOnce(&mut SessionCore) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut guard = self.core.borrow_mut();
        match guard.as_mut() {
            Some(Some(core)) => f(core),
            _ => Err(ApiError::NotFound("no such session".into())),
        }
    }

    async fn create(
        &self,
        caller: &Caller,
        create: CreateSession,
        id: String,
    ) -> Result<Response, ApiError> {
        self.load()?;
        if matches!(&*self.core.borrow(), Some(Some(_))) {
            return Err(ApiError::Internal(format!("session id collision {id}")));
        }
        let plans = Plans::parse(http::var(&self.env, "PLANS").as_deref())
            .map_err(|e| ApiError::Internal(format!("configuration: {e}")))?;
        let max_participants = plans
            .get(&caller.plan)
            .map(|p| p.participants_per_session)
            .ok_or_else(|| ApiError::Internal(format!("unknown plan {}", caller.plan)))?;
        let meta = Meta {
            id,
            owner_id: caller.user.clone(),
            title: create.title,
            members: create.members.unwrap_or_default(),
            metadata: create.metadata.unwrap_or_default(),
            status: SessionStatus::Active,
            started_at: now_ms(),
            ended_at: None,
            max_participants,
            owner_plan: caller.plan.clone(),
        };
        let core = SessionCore::create(meta, self.cfg, now_ms());
        let view = core.view();
        *self.core.borrow_mut() = Some(Some(core));
        self.run().await?;
        http::json(201, &view)
    }

    /// Loads the session from storage once per object lifetime (also after
    /// hibernation, when the sockets are still there).
    fn load(&self) -> Result<(), ApiError> {
        if self.core.borrow().is_some() {
            return Ok(());
        }
        self.sql.exec(SCHEMA, None).map_err(internal)?;
        let rows: Vec<SessionRow> = self
            .sql
            .exec(
                "SELECT meta, meta_version, flushed_meta_version, flushed_seq, units FROM session WHERE k = 0",
                None,
            )
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        let Some(row) = rows.into_iter().next() else {
            *self.core.borrow_mut() = Some(None);
            return Ok(());
        };
        let meta: Meta = serde_json::from_str(&row.meta).map_err(internal)?;
        let last: Vec<MaxRow> = self
            .sql
            .exec("SELECT MAX(seq) AS m FROM points", None)
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        let ids: Vec<IdRow> = self
            .sql
            .exec(
                "SELECT client_id, seq FROM points WHERE client_id IS NOT NULL",
                None,
            )
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        let mut sockets = HashMap::new();
        let mut conns = Vec::new();
        for ws in self.state.get_websockets() {
            match ws.deserialize_attachment::<Attachment>() {
                Ok(Some(a)) => {
                    conns.push((a.conn_id.clone(), a.user_id, a.joined_at));
                    sockets.insert(a.conn_id, ws);
                }
                _ => {
                    let _ = ws.close(Some(1011), Some("lost connection state"));
                }
            }
        }
        let restored = Restored {
            last_seq: last.first().and_then(|r| r.m).unwrap_or(0) as u64,
            flushed_seq: row.flushed_seq as u64,
            ids: ids
                .into_iter()
                .map(|r| (r.client_id, r.seq as u64))
                .collect(),
            conns,
            meta_version: row.meta_version as u64,
            flushed_meta_version: row.flushed_meta_version as u64,
            units: row.units as u64,
        };
        let core = SessionCore::restore(meta, self.cfg, restored, now_ms());
        *self.sockets.borrow_mut() = sockets;
        *self.core.borrow_mut() = Some(Some(core));
        Ok(())
    }

    async fn upgrade(&self, req: &Request, caller: &Caller) -> Result<Response, ApiError> {
        self.with_core(|c| c.admit(&caller.user))?;
        let upgrade = req.headers().get("upgrade").ok().flatten();
        if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
            return Err(ApiError::BadRequest(
                "this route takes a WebSocket upgrade".into(),
            ));
        }
        let pair = WebSocketPair::new().map_err(internal)?;
        let now = now_ms();
        let conn = ids::new_random_id();
        self.state.accept_web_socket(&pair.server);
        pair.server
            .serialize_attachment(Attachment {
                conn_id: conn.clone(),
                user_id: caller.user.clone(),
                joined_at: now,
            })
            .map_err(internal)?;
        let key: &js_sys::Object = pair.server.as_ref().as_ref();
        self.conn_ids.set(key, &JsValue::from_str(&conn));
        self.sockets.borrow_mut().insert(conn.clone(), pair.server);
        self.with_core(|c| {
            c.join(&conn, &caller.user, now);
            Ok(())
        })?;
        self.run().await?;
        Response::from_websocket(pair.client).map_err(internal)
    }

    async fn on_message(
        &self,
        ws: &WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<(), ApiError> {
        self.load()?;
        let Some(conn) = self.conn_of(ws) else {
            let _ = ws.close(Some(1011), Some("lost connection state"));
            return Ok(());
        };
        let now = now_ms();
        let stored = self.with_core(|c| {
            Ok(match &message {
                WebSocketIncomingMessage::String(text) => c.on_text(&conn, text, now),
                WebSocketIncomingMessage::Binary(b) => {
                    c.on_binary(&conn, b.len(), now);
                    None
                }
            })
        })?;
        if let Some(p) = stored {
            self.write_ahead(Origin::Socket(&conn), &p, now)?;
        }
        self.run().await
    }

    /// Stores a numbered point, then commits it in the core (which queues
    /// the ack and the broadcast); a failed write gives the seq back.
    fn write_ahead(&self, from: Origin<'_>, p: &StoredPoint, now: Millis) -> Result<(), ApiError> {
        let body = serde_json::to_string(p).map_err(internal)?;
        let stored = self.sql.exec(
            "INSERT INTO points (seq, client_id, ts, body) VALUES (?, ?, ?, ?)",
            vec![
                (p.seq as i64).into(),
                p.id.clone().into(),
                p.ts.into(),
                body.as_str().into(),
            ],
        );
        self.with_core(|c| {
            match &stored {
                Ok(_) => c.commit_json(from, p, &body, now),
                Err(_) => c.abort(p),
            }
            Ok(())
        })?;
        stored.map(|_| ()).map_err(internal)
    }

    async fn append(&self, caller: &Caller, batch: PointsBatch) -> Result<Response, ApiError> {
        // All or nothing: the units for every new point are in hand before
        // the first is numbered.
        let (need, budget) = self.with_core(|c| Ok((c.new_points(&batch.points), c.budget())))?;
        if need > budget {
            let block = self.cfg.reserve_block.max(need - budget);
            let got = self
                .ask_units(block)
                .await
                .ok_or_else(|| ApiError::Unavailable("could not reserve points quota".into()))?;
            let short = self.with_core(|c| {
                c.add_units(got);
                Ok(c.budget() < need)
            })?;
            if short {
                // Keep what was granted for later points; refuse this batch.
                self.run().await?;
                return Err(ApiError::QuotaExceeded {
                    message: "the session owner's daily points quota is used up".into(),
                    retry_after_ms: None,
                });
            }
        }
        let now = now_ms();
        let mut seqs = Vec::with_capacity(batch.points.len());
        for p in batch.points {
            let accepted = self.with_core(|c| c.accept(Origin::Http(&caller.user), p, now));
            match accepted {
                Ok(Accepted::Duplicate { seq, .. }) => seqs.push(seq),
                Ok(Accepted::New(stored)) => {
                    self.write_ahead(Origin::Http(&caller.user), &stored, now)?;
                    seqs.push(stored.seq);
                }
                Err(e) => {
                    // Points before this one are stored and answered on a
                    // retry (same ids, same seqs); send what is queued.
                    self.run().await?;
                    return Err(e);
                }
            }
        }
        self.run().await?;
        http::json(200, &PointsAccepted { seqs })
    }

    fn read_points(&self, after: u64, limit: u64) -> Result<Response, ApiError> {
        let last_seq = self.with_core(|c| Ok(c.last_seq()))?;
        let rows: Vec<BodyRow> = self
            .sql
            .exec(
                "SELECT ts, body FROM points WHERE seq > ? ORDER BY seq LIMIT ?",
                vec![(after as i64).into(), (limit as i64).into()],
            )
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        // The stored bodies are already the wire form: no re-serialization.
        let mut text =
            String::with_capacity(rows.iter().map(|r| r.body.len() + 1).sum::<usize>() + 32);
        text.push_str("{\"points\":[");
        for (i, r) in rows.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&r.body);
        }
        text.push_str(&format!("],\"lastSeq\":{last_seq}}}"));
        Ok(http::json_text(200, text))
    }

    async fn on_gone(&self, ws: &WebSocket) {
        if self.load().is_err() {
            return;
        }
        if let Some(conn) = self.conn_of(ws) {
            self.sockets.borrow_mut().remove(&conn);
            let _ = self.with_core(|c| {
                c.leave(&conn);
                Ok(())
            });
            if let Err(e) = self.run().await {
                log_error(&e);
            }
        }
    }

    async fn on_alarm(&self) -> Result<(), ApiError> {
        self.load()?;
        self.deliver_presence().await?;
        self.flush_due().await;
        self.run().await?;
        // This alarm is spent: arm the next one for whatever is still
        // pending (its time may have moved since the alarm was set).
        if let Some(at) = self.with_core(|c| Ok(c.next_flush_at()))? {
            self.ensure_alarm(at).await?;
        }
        if self.has_outbox()? {
            self.ensure_alarm(now_ms() + PRESENCE_RETRY_MS).await?;
        }
        Ok(())
    }

    fn has_outbox(&self) -> Result<bool, ApiError> {
        let rows: Vec<MaxRow> = self
            .sql
            .exec("SELECT MAX(id) AS m FROM presence_outbox", None)
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        Ok(rows.first().and_then(|r| r.m).is_some())
    }

    /// Tells users' presence objects about sockets that came and went, in
    /// order, from the outbox. An unreachable presence object does not hold
    /// the session up: the rest waits in the outbox for the alarm.
    async fn deliver_presence(&self) -> Result<(), ApiError> {
        if self.delivering.replace(true) {
            return Ok(());
        }
        let result = self.deliver_outbox().await;
        self.delivering.set(false);
        if !result? {
            self.ensure_alarm(now_ms() + PRESENCE_RETRY_MS).await?;
        }
        Ok(())
    }

    async fn deliver_outbox(&self) -> Result<bool, ApiError> {
        let session_id = self.with_core(|c| Ok(c.meta().id.clone()))?;
        loop {
            let rows: Vec<OutboxRow> = self
                .sql
                .exec(
                    "SELECT id, user_id, conn_id, online FROM presence_outbox ORDER BY id LIMIT 50",
                    None,
                )
                .and_then(|c| c.to_array())
                .map_err(internal)?;
            if rows.is_empty() {
                return Ok(true);
            }
            for r in rows {
                let update = PresenceCall::Conn {
                    user_id: r.user_id,
                    conn_id: r.conn_id,
                    session_id: session_id.clone(),
                    online: r.online != 0,
                };
                if !self.tell_presence(update).await {
                    return Ok(false);
                }
                self.sql
                    .exec(
                        "DELETE FROM presence_outbox WHERE id = ?",
                        vec![r.id.into()],
                    )
                    .map_err(internal)?;
            }
        }
    }

    async fn tell_presence(&self, call: PresenceCall) -> bool {
        let PresenceCall::Conn { user_id, .. } = &call else {
            return false;
        };
        let caller = Caller::internal(user_id);
        let hop = Hop {
            env: &self.env,
            caller: &caller,
            request_id: None,
        };
        let sent = hop.presence(&user_id.clone(), call).await;
        matches!(sent, Ok(r) if r.status_code() == 200)
    }

    /// Makes sure the alarm fires no later than `at`.
    async fn ensure_alarm(&self, at: Millis) -> Result<(), ApiError> {
        http::ensure_alarm(&self.state, &self.alarm_at, at).await
    }

    /// Carries out the core's queued decisions, in order.
    async fn run(&self) -> Result<(), ApiError> {
        // Sends happen at once; the awaited work (quota, alarm, presence)
        // after them, so an ack never waits on another object.
        loop {
            let later = self.run_sync()?;
            if let Some(n) = later.reserve {
                self.reserve_units(n).await?;
            }
            if later.refund > 0 {
                self.give_back(later.refund).await;
            }
            if let Some(at) = later.wake {
                if at <= now_ms() {
                    // Due now (a full batch): flush here, as the alarm
                    // would, without the round trip through it.
                    self.flush_due().await;
                } else {
                    self.ensure_alarm(at).await?;
                }
            }
            if later.presence {
                self.deliver_presence().await?;
            }
            if !self.with_core(|c| Ok(c.has_actions()))? {
                return Ok(());
            }
        }
    }

    /// Carries out the queued decisions that need no waiting; returns the
    /// rest.
    fn run_sync(&self) -> Result<Later, ApiError> {
        let mut later = Later::default();
        let (wake, presence) = (&mut later.wake, &mut later.presence);
        loop {
            let action = {
                let mut guard = self.core.borrow_mut();
                match guard.as_mut() {
                    Some(Some(c)) => c.poll_action(),
                    _ => None,
                }
            };
            let Some(action) = action else { break };
            match action {
                Action::Send { to, text } => {
                    if let Some(ws) = self.sockets.borrow().get(&to) {
                        let _ = ws.send_with_str(&*text);
                    }
                }
                Action::Broadcast { except, text } => {
                    // One JS string for every recipient, not one each.
                    let js = JsValue::from_str(&text);
                    for (id, ws) in self.sockets.borrow().iter() {
                        if except.as_deref() != Some(id.as_str()) {
                            self.send_js(ws, &js);
                        }
                    }
                }
                Action::Close { conn, code, reason } => {
                    if let Some(ws) = self.sockets.borrow_mut().remove(&conn) {
                        let _ = ws.close(Some(code), Some(reason));
                    }
                }
                Action::Replay {
                    conn,
                    after_seq,
                    last_seq,
                } => self.replay(&conn, after_seq, last_seq)?,
                Action::SaveMeta => self.save_meta()?,
                Action::WakeAt(at) => *wake = Some(wake.map_or(at, |w| w.min(at))),
                Action::Presence { user, conn, online } => {
                    self.sql
                        .exec(
                            "INSERT INTO presence_outbox (user_id, conn_id, online) VALUES (?, ?, ?)",
                            vec![user.into(), conn.into(), i64::from(online).into()],
                        )
                        .map_err(internal)?;
                    *presence = true;
                }
                Action::Reserve(n) => later.reserve = Some(n),
                Action::Refund(n) => later.refund += n,
                Action::SaveUnits => {
                    let units = self.with_core(|c| Ok(c.units()))?;
                    self.sql
                        .exec(
                            "UPDATE session SET units = ? WHERE k = 0",
                            vec![(units as i64).into()],
                        )
                        .map_err(internal)?;
                }
            }
        }
        Ok(later)
    }

    /// Reserves points units of the owner and numbers the points that
    /// waited for them.
    async fn reserve_units(&self, want: u64) -> Result<(), ApiError> {
        let got = self.ask_units(want).await;
        let now = now_ms();
        let ready = self.with_core(|c| {
            Ok(match got {
                Some(n) => c.granted(n, now),
                None => {
                    c.reserve_failed();
                    Vec::new()
                }
            })
        })?;
        for (conn, p) in ready {
            self.write_ahead(Origin::Socket(&conn), &p, now)?;
        }
        Ok(())
    }

    /// Asks the owner's quota object for up to `want` points units, and
    /// notes the UTC day they come from.
    async fn ask_units(&self, want: u64) -> Option<u64> {
        let (owner, plan) = self
            .with_core(|c| Ok((c.meta().owner_id.clone(), c.meta().owner_plan.clone())))
            .ok()?;
        let mut resp = self
            .quota_call(&owner, QuotaCall::Reserve { plan, want })
            .await?;
        let r: Reserved = resp.json().await.ok()?;
        self.units_day.set(r.day);
        Some(r.granted)
    }

    /// Gives unused points units back to the owner's quota, to the day they
    /// were reserved on. If the quota object cannot be reached the units
    /// stay charged (the owner loses at most one block); this is logged.
    async fn give_back(&self, units: u64) {
        let Ok((owner, plan)) =
            self.with_core(|c| Ok((c.meta().owner_id.clone(), c.meta().owner_plan.clone())))
        else {
            return;
        };
        let call = QuotaCall::Settle {
            plan,
            day: self.units_day.get(),
            used: 0,
            returned: units,
        };
        if self.quota_call(&owner, call).await.is_none() {
            log_error(&ApiError::Unavailable(format!(
                "could not give {units} points units back to {owner}"
            )));
        }
    }

    async fn quota_call(&self, subject: &str, call: QuotaCall) -> Option<Response> {
        let caller = Caller::internal(subject);
        let hop = Hop {
            env: &self.env,
            caller: &caller,
            request_id: None,
        };
        let resp = hop.quota(subject, call).await.ok()?;
        (resp.status_code() == 200).then_some(resp)
    }

    fn replay(&self, conn: &str, after_seq: u64, last_seq: u64) -> Result<(), ApiError> {
        let sockets = self.sockets.borrow();
        let Some(ws) = sockets.get(conn) else {
            return Ok(());
        };
        let mut from = after_seq;
        while from < last_seq {
            let rows: Vec<BodyRow> = self
                .sql
                .exec(
                    "SELECT ts, body FROM points WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 500",
                    vec![(from as i64).into(), (last_seq as i64).into()],
                )
                .and_then(|c| c.to_array())
                .map_err(internal)?;
            if rows.is_empty() {
                break;
            }
            from += rows.len() as u64;
            for r in rows {
                let _ = ws.send_with_str(point_frame(&r.body));
            }
        }
        let _ = ws.send_with_str(ServerFrame::Resumed { last_seq }.to_json());
        Ok(())
    }

    fn save_meta(&self) -> Result<(), ApiError> {
        let (meta, version) = self.with_core(|c| Ok((c.meta().clone(), c.meta_version())))?;
        let text = serde_json::to_string(&meta).map_err(internal)?;
        self.sql
            .exec(
                "INSERT INTO session (k, meta, meta_version) VALUES (0, ?, ?) \
                 ON CONFLICT(k) DO UPDATE SET meta = excluded.meta, meta_version = excluded.meta_version",
                vec![text.into(), (version as i64).into()],
            )
            .map_err(internal)?;
        Ok(())
    }

    /// Writes every due batch to D1, one at a time, until none is due or a
    /// write fails (the core then schedules the retry).
    async fn flush_due(&self) {
        if self.flushing.replace(true) {
            return;
        }
        loop {
            let batch = self
                .with_core(|c| Ok(c.poll_flush(now_ms())))
                .ok()
                .flatten();
            let Some(batch) = batch else { break };
            let result = self.write_d1(batch).await;
            let ok = match result {
                Ok(()) => self
                    .sql
                    .exec(
                        "UPDATE session SET flushed_seq = max(flushed_seq, ?), \
                         flushed_meta_version = max(flushed_meta_version, ?) WHERE k = 0",
                        vec![(batch.to as i64).into(), (batch.meta_version as i64).into()],
                    )
                    .map(|_| true)
                    .unwrap_or(false),
                Err(e) => {
                    log_error(&e);
                    false
                }
            };
            let _ = self.with_core(|c| {
                c.flush_done(batch, ok, now_ms());
                Ok(())
            });
            if !ok {
                break;
            }
        }
        self.flushing.set(false);
    }

    /// One D1 `batch()`: the partitions it needs, the points (as JSON
    /// arrays expanded in SQL) and the session row.
    async fn write_d1(&self, batch: FlushBatch) -> Result<(), ApiError> {
        #[cfg(feature = "test-faults")]
        if crate::faults::d1_failing() {
            return Err(ApiError::Unavailable(
                "D1 failure injected for tests".into(),
            ));
        }
        let (meta, count) =
            self.with_core(|c| Ok((c.meta().clone(), batch.to.max(c.flushed_seq()))))?;
        let rows: Vec<BodyRow> = if batch.from <= batch.to {
            self.sql
                .exec(
                    "SELECT ts, body FROM points WHERE seq BETWEEN ? AND ? ORDER BY seq",
                    vec![(batch.from as i64).into(), (batch.to as i64).into()],
                )
                .and_then(|c| c.to_array())
                .map_err(internal)?
        } else {
            Vec::new()
        };
        let db = self.env.d1("DB").map_err(internal)?;
        let now = rfc3339(now_ms());
        let mut stmts = Vec::new();
        let session_month = month_suffix(meta.started_at);
        let mut months = vec![(
            session_month.clone(),
            d1::create_sessions(&session_month),
            d1::sessions_table(&session_month),
        )];
        let points: Vec<(Millis, String)> = rows.into_iter().map(|r| (r.ts, r.body)).collect();
        let chunks = d1::chunk_by_month(&points);
        for (m, _) in &chunks {
            if !months.iter().any(|(_, _, t)| *t == d1::points_table(m)) {
                months.push((m.clone(), d1::create_points(m), d1::points_table(m)));
            }
        }
        for (_, create, table) in &months {
            if !super::partition_known(table) {
                stmts.push(db.prepare(create.clone()));
                stmts.push(
                    db.prepare(d1::RECORD_PARTITION)
                        .bind(&[JsValue::from_str(table), JsValue::from_str(&now)])
                        .map_err(internal)?,
                );
            }
        }
        for (m, arr) in &chunks {
            stmts.push(
                db.prepare(d1::insert_points(m))
                    .bind(&[JsValue::from_str(&meta.id), JsValue::from_str(arr)])
                    .map_err(internal)?,
            );
        }
        let members = serde_json::to_string(&meta.members).map_err(internal)?;
        let metadata = serde_json::to_string(&meta.metadata).map_err(internal)?;
        let status = match meta.status {
            SessionStatus::Active => "active",
            SessionStatus::Ended => "ended",
        };
        stmts.push(
            db.prepare(d1::upsert_session(&session_month))
                .bind(&[
                    JsValue::from_str(&meta.id),
                    JsValue::from_str(&meta.owner_id),
                    meta.title
                        .as_deref()
                        .map_or(JsValue::NULL, JsValue::from_str),
                    JsValue::from_str(&members),
                    JsValue::from_str(&metadata),
                    JsValue::from_str(status),
                    JsValue::from_str(&rfc3339(meta.started_at)),
                    meta.ended_at
                        .map_or(JsValue::NULL, |t| JsValue::from_str(&rfc3339(t))),
                    JsValue::from_f64(count as f64),
                ])
                .map_err(internal)?,
        );
        let results = db
            .batch(stmts)
            .await
            .map_err(|e| ApiError::Unavailable(format!("D1 batch failed: {e}")))?;
        if let Some(r) = results.iter().find(|r| !r.success()) {
            return Err(ApiError::Unavailable(format!(
                "D1 statement failed: {}",
                r.error().unwrap_or_default()
            )));
        }
        for (_, _, table) in months {
            super::remember_partition(table);
        }
        Ok(())
    }
}

/// Decisions that wait on something, carried out after the sends.
#[derive(Default)]
struct Later {
    wake: Option<Millis>,
    presence: bool,
    reserve: Option<u64>,
    refund: u64,
}

fn attachment_conn(ws: &WebSocket) -> Option<ConnId> {
    ws.deserialize_attachment::<Attachment>()
        .ok()
        .flatten()
        .map(|a| a.conn_id)
}
