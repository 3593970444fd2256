//! `ActiveSessionDO`: one object per session id. Feeds [`SessionCore`]
//! events and carries out its decisions: SQLite writes (one transaction
//! per write), socket sends, alarms, the durable outboxes to presence and
//! quota, and the D1 flush the core planned.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use sesh_protocol::{
    parse_body, parse_optional_body, CreateSession, KindStats, PointsAccepted, PointsBatch,
};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::{
    durable_object, DurableObject, Env, Request, Response, SqlStorage, SqlStorageValue, State,
    WebSocket, WebSocketIncomingMessage, WebSocketPair,
};

use crate::edge::http::{self, internal, Caller, Hop};
use crate::error::ApiError;
use crate::ids;
use crate::time::{now_ms, Millis};
use sesh_core::calls::{PresenceCall, QuotaAnswer, QuotaCall, SessionAnswer, SessionCall};
use sesh_core::config::Plans;
use sesh_core::data::d1;
use sesh_core::lifecycle::LifecycleConfig;
use sesh_core::quota::Reserved;
use sesh_core::session::storage;
use sesh_core::session::{
    point_frame, Append, Checkpoint, Config, ConnId, Decision, FlushJob, IdLookup, Meta, Restored,
    SessionCore, Settlement, Units, Write,
};

#[wasm_bindgen]
extern "C" {
    /// The object's `DurableObjectStorage`, for the one method `worker`
    /// does not bind.
    #[wasm_bindgen(extends = js_sys::Object)]
    type TxStorage;

    // `storage.transactionSync(fn)`: runs `fn` as one SQLite transaction,
    // rolled back if it throws (DO SQL refuses BEGIN and SAVEPOINT).
    #[wasm_bindgen(method, catch, js_name = transactionSync)]
    fn transaction_sync(this: &TxStorage, work: &js_sys::Function) -> Result<JsValue, JsValue>;
}

/// What a socket carries across hibernation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attachment {
    conn_id: ConnId,
    user_id: String,
    joined_at: Millis,
}

/// Whether the session was read from storage, and what it found.
enum Loaded {
    /// Storage not read yet (a fresh instance).
    Unread,
    /// No session lives here.
    Absent,
    /// The session.
    Live(Box<SessionCore>),
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
    delivering: Cell<bool>,
    settling: Cell<bool>,
    conn_ids: js_sys::WeakMap,
    send_fn: RefCell<Option<js_sys::Function>>,
    // What frames left to wait for (`frame_now`), until `finish` runs it.
    later: RefCell<Later>,
}

/// How long before an undelivered outbox entry is tried again.
const OUTBOX_RETRY_MS: Millis = 2_000;

const PING: &str = r#"{"type":"ping"}"#;
const PONG: &str = r#"{"type":"pong"}"#;

#[derive(Deserialize)]
struct SessionRow {
    meta: String,
    meta_version: i64,
    flushed_meta_version: i64,
    flushed_seq: i64,
}

#[derive(Deserialize)]
struct UnitsRow {
    day: i64,
    held: i64,
    used: i64,
}

#[derive(Deserialize)]
struct StatsRow {
    kind: String,
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
}

#[derive(Deserialize)]
struct MarkRow {
    through_seq: i64,
}

#[derive(Deserialize)]
struct TailRow {
    kind: String,
    value: f64,
}

#[derive(Deserialize)]
struct BodyRow {
    ts: i64,
    body: String,
}

#[derive(Deserialize)]
struct SeqBodyRow {
    seq: i64,
    body: String,
}

#[derive(Deserialize)]
struct SeqRow {
    seq: i64,
}

#[derive(Deserialize)]
struct OutboxRow {
    id: i64,
    user_id: String,
    conn_id: String,
    online: i64,
}

#[derive(Deserialize)]
struct SettleRow {
    id: i64,
    owner: String,
    plan: String,
    day: i64,
    used: i64,
    returned: i64,
}

#[derive(Deserialize)]
struct MaxRow {
    m: Option<i64>,
}

/// A seq as SQLite takes it: values past `i64::MAX` clamp rather than wrap.
fn sql_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Client ids looked up through the `(user_id, client_id)` index.
struct SqlIds<'a>(&'a SqlStorage);

impl IdLookup for SqlIds<'_> {
    fn seq_of(&mut self, user: &str, id: &str) -> Option<u64> {
        let rows: Vec<SeqRow> = self
            .0
            .exec(
                "SELECT seq FROM points WHERE user_id = ? AND client_id = ? LIMIT 1",
                vec![user.into(), id.into()],
            )
            .and_then(|c| c.to_array())
            .ok()?;
        rows.first().map(|r| r.seq as u64)
    }
}

/// Decisions that wait on something, carried out after the sends.
#[derive(Default)]
struct Later {
    wake: Option<Millis>,
    presence: bool,
    settle: bool,
    reserves: Vec<(String, String, u64)>,
    flushes: Vec<FlushJob>,
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
        self.presence |= other.presence;
        self.settle |= other.settle;
        self.reserves.extend(other.reserves);
        self.flushes.extend(other.flushes);
        self.retire |= other.retire;
    }

    fn is_empty(&self) -> bool {
        self.wake.is_none()
            && !self.presence
            && !self.settle
            && self.reserves.is_empty()
            && self.flushes.is_empty()
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
            delivering: Cell::new(false),
            settling: Cell::new(false),
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

    /// Carries out what frames left to wait for.
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
            SessionCall::Read { after_seq, limit } => self.read_points(after_seq, limit),
            SessionCall::End => {
                self.feed(|c| c.end(&caller.user, now_ms()))??;
                // The core asks for the final flush at once; if D1 is down
                // the alarm keeps retrying.
                self.run().await?;
                http::json(200, &self.feed(|c| c.view())?)
            }
            SessionCall::Create { .. } | SessionCall::HasConn { .. } => {
                Err(ApiError::Internal("session call handled above".into()))
            }
        }
    }

    /// Feeds the loaded core an event (or asks it something); a missing
    /// session is a 404.
    fn feed<T>(&self, f: impl FnOnce(&mut SessionCore) -> T) -> Result<T, ApiError> {
        match &mut *self.core.borrow_mut() {
            Loaded::Live(core) => Ok(f(core)),
            Loaded::Unread | Loaded::Absent => Err(ApiError::NotFound("no such session".into())),
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

    /// Creates the tables (and migrates storage written before the
    /// `user_id` column, the trigger columns and the stats checkpoint)
    /// when they are missing.
    fn prepare_schema(&self) -> Result<(), ApiError> {
        self.sql.exec(storage::SCHEMA, None).map_err(internal)?;
        if self.sql.exec(storage::HAS_USER_ID, None).is_err() {
            self.sql
                .exec(storage::MIGRATE_USER_ID, None)
                .map_err(internal)?;
        }
        if self.sql.exec(storage::HAS_KIND, None).is_err() {
            self.sql
                .exec(storage::MIGRATE_KIND, None)
                .map_err(internal)?;
        }
        self.sql
            .exec(storage::INDEX_AND_TRIGGERS, None)
            .map_err(internal)?;
        Ok(())
    }

    /// Loads the session from storage once per object lifetime (also after
    /// hibernation, when the sockets are still there). Reads a bounded
    /// number of rows whatever the number of points.
    fn load(&self) -> Result<(), ApiError> {
        if !matches!(&*self.core.borrow(), Loaded::Unread) {
            return Ok(());
        }
        // No tables: no session was ever created here, or it was retired.
        // Reading creates nothing, so a retired object stays empty.
        let tables: Vec<MaxRow> = self
            .sql
            .exec(
                "SELECT count(*) AS m FROM sqlite_master WHERE type = 'table' AND name = 'session'",
                None,
            )
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        if tables.first().and_then(|r| r.m).unwrap_or(0) == 0 {
            *self.core.borrow_mut() = Loaded::Absent;
            return Ok(());
        }
        self.prepare_schema()?;
        let rows: Vec<SessionRow> = self
            .sql
            .exec(
                "SELECT meta, meta_version, flushed_meta_version, flushed_seq FROM session WHERE k = 0",
                None,
            )
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        let Some(row) = rows.into_iter().next() else {
            *self.core.borrow_mut() = Loaded::Absent;
            return Ok(());
        };
        let meta: Meta = serde_json::from_str(&row.meta).map_err(internal)?;
        let last: Vec<MaxRow> = self
            .sql
            .exec("SELECT MAX(seq) AS m FROM points", None)
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        let units: Vec<UnitsRow> = self
            .sql
            .exec(storage::LOAD_UNITS, None)
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        let stats: Vec<StatsRow> = self
            .sql
            .exec(storage::LOAD_STATS, None)
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        let mark: Vec<MarkRow> = self
            .sql
            .exec(storage::LOAD_STATS_MARK, None)
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        let stats_through = mark.first().map_or(0, |m| m.through_seq.max(0) as u64);
        // At most about `stats_every` rows: the points since the checkpoint.
        let tail: Vec<TailRow> = self
            .sql
            .exec(storage::STATS_TAIL, vec![sql_seq(stats_through).into()])
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
            conns,
            meta_version: row.meta_version as u64,
            flushed_meta_version: row.flushed_meta_version as u64,
            units: units
                .first()
                .map(|u| Units {
                    day: u.day,
                    held: u.held as u64,
                    used: u.used as u64,
                })
                .unwrap_or_default(),
            stats: stats
                .into_iter()
                .map(|s| {
                    let figures = KindStats {
                        count: s.count as u64,
                        sum: s.sum,
                        min: s.min,
                        max: s.max,
                        last: s.last,
                    };
                    (s.kind, figures)
                })
                .collect::<BTreeMap<_, _>>(),
            stats_through,
            stats_tail: tail.into_iter().map(|t| (t.kind, t.value)).collect(),
        };
        let core = SessionCore::restore(meta, self.cfg, restored, now_ms());
        *self.sockets.borrow_mut() = sockets;
        *self.core.borrow_mut() = Loaded::Live(Box::new(core));
        Ok(())
    }

    /// The owner's current plan: the caller's own token if the caller is
    /// the owner, else what the owner's quota object last saw, else the
    /// plan stored with the session.
    async fn current_plan(&self, caller: &Caller) -> Result<String, ApiError> {
        let meta = self.feed(|c| c.meta().clone())?;
        if caller.user == meta.owner_id {
            return Ok(caller.plan.clone());
        }
        let asked = match self
            .quota_call(&meta.owner_id, QuotaCall::CurrentPlan)
            .await
        {
            Some(QuotaAnswer::Plan(plan)) => Some(plan),
            _ => None,
        };
        Ok(asked.unwrap_or(meta.owner_plan))
    }

    /// Notes the owner's plan in the core, with its participants cap.
    fn use_plan(&self, plan: &str) -> Result<(), ApiError> {
        let Some(p) = self.plans.get(plan) else {
            return Ok(());
        };
        let cap = p.participants_per_session;
        self.feed(|c| c.set_plan(plan, cap))
    }

    async fn upgrade(&self, req: &Request, caller: &Caller) -> Result<Response, ApiError> {
        let plan = self.current_plan(caller).await?;
        self.use_plan(&plan)?;
        self.feed(|c| c.admit(&caller.user))??;
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
        self.feed(|c| c.join(&conn, &caller.user, now))?;
        self.run().await?;
        Response::from_websocket(pair.client).map_err(internal)
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

    async fn append(&self, caller: &Caller, batch: PointsBatch) -> Result<Response, ApiError> {
        if self.feed(|c| c.meta().owner_id == caller.user)? {
            self.use_plan(&caller.plan)?;
        }
        let sql = &self.sql;
        let points = batch.points;
        let first = self.feed(|c| {
            c.append(
                &caller.user,
                points.clone(),
                true,
                now_ms(),
                &mut SqlIds(sql),
            )
        })??;
        let answer = match first {
            Append::Seqs(seqs) => Ok(seqs),
            Append::NeedUnits { owner, plan, want } => {
                let r = self
                    .ask_units(&owner, &plan, want)
                    .await
                    .ok_or_else(|| ApiError::Unavailable("could not reserve points quota".into()));
                match r {
                    Ok(r) => self.feed(|c| {
                        let now = now_ms();
                        c.add_units(r.granted, r.day, now);
                        c.append(&caller.user, points, false, now, &mut SqlIds(sql))
                            .map_err(ApiError::from)
                    })?,
                    Err(e) => Err(e),
                }
                .and_then(|a| match a {
                    Append::Seqs(seqs) => Ok(seqs),
                    Append::NeedUnits { .. } => Err(ApiError::Internal(
                        "units asked for twice in one batch".into(),
                    )),
                })
            }
        };
        // Granted units are kept even when the batch is refused.
        self.run().await?;
        http::json(200, &PointsAccepted { seqs: answer? })
    }

    fn read_points(&self, after: u64, limit: u64) -> Result<Response, ApiError> {
        let last_seq = self.feed(|c| c.last_seq())?;
        let rows: Vec<BodyRow> = self
            .sql
            .exec(
                "SELECT ts, body FROM points WHERE seq > ? ORDER BY seq LIMIT ?",
                vec![sql_seq(after).into(), sql_seq(limit).into()],
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
            let now = now_ms();
            if self.feed(|c| c.leave(&conn, now)).is_ok() {
                if let Err(e) = self.run().await {
                    log_error(&e);
                }
            }
        }
    }

    /// Every step runs even when an earlier one failed, and the alarm is
    /// armed again for whatever is still pending.
    async fn on_alarm(&self) {
        if let Err(e) = self.load() {
            log_error(&e);
            let _ = self.ensure_alarm(now_ms() + OUTBOX_RETRY_MS).await;
            return;
        }
        let now = now_ms();
        if self.feed(|c| c.tick(now)).is_err() {
            return;
        }
        if let Err(e) = self.run().await {
            log_error(&e);
        }
        if matches!(*self.core.borrow(), Loaded::Absent) {
            // Retired: nothing is left to deliver or to wake for.
            return;
        }
        if let Err(e) = self.deliver_presence().await {
            log_error(&e);
        }
        if let Err(e) = self.deliver_settlements().await {
            log_error(&e);
        }
        if let Err(e) = self.rearm().await {
            log_error(&e);
            let _ = self.ensure_alarm(now_ms() + OUTBOX_RETRY_MS).await;
        }
    }

    /// Deletes the object's storage: the session ended long enough ago and
    /// all of it is in D1 (reads are answered from there). Undelivered
    /// outbox entries keep it, and the alarm tries again.
    async fn retire(&self) -> Result<(), ApiError> {
        if self.has_rows("presence_outbox")? || self.has_rows("settle_outbox")? {
            return self.ensure_alarm(now_ms() + OUTBOX_RETRY_MS).await;
        }
        let storage = self.state.storage();
        storage.delete_alarm().await.map_err(internal)?;
        storage.delete_all().await.map_err(internal)?;
        self.alarm_at.set(None);
        self.sockets.borrow_mut().clear();
        *self.core.borrow_mut() = Loaded::Absent;
        Ok(())
    }

    /// Arms the alarm for the core's next wake-up and any undelivered
    /// outbox entry.
    async fn rearm(&self) -> Result<(), ApiError> {
        let mut at = self.feed(|c| c.next_wake())?;
        if self.has_rows("presence_outbox")? || self.has_rows("settle_outbox")? {
            let retry = now_ms() + OUTBOX_RETRY_MS;
            at = Some(at.map_or(retry, |a| a.min(retry)));
        }
        match at {
            Some(at) => self.ensure_alarm(at).await,
            None => Ok(()),
        }
    }

    fn has_rows(&self, table: &str) -> Result<bool, ApiError> {
        let rows: Vec<MaxRow> = self
            .sql
            .exec(&format!("SELECT MAX(id) AS m FROM {table}"), None)
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        Ok(rows.first().and_then(|r| r.m).is_some())
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
    /// left.
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
            for job in later.flushes {
                self.flush(job).await?;
            }
            if let Some(at) = later.wake {
                self.ensure_alarm(at).await?;
            }
            if later.presence {
                if let Err(e) = self.deliver_presence().await {
                    log_error(&e);
                }
            }
            if later.settle {
                if let Err(e) = self.deliver_settlements().await {
                    log_error(&e);
                }
            }
            if later.retire {
                self.retire().await?;
                break;
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
                Decision::Send { to, text } => {
                    if let Some(ws) = self.sockets.borrow().get(&to) {
                        let _ = ws.send_with_str(&*text);
                    }
                }
                Decision::Broadcast { except, text } => {
                    // One JS string for every recipient, not one each.
                    let js = JsValue::from_str(&text);
                    for (id, ws) in self.sockets.borrow().iter() {
                        if except.as_deref() != Some(id.as_str()) {
                            self.send_js(ws, &js);
                        }
                    }
                }
                Decision::Close { conn, code, reason } => {
                    if let Some(ws) = self.sockets.borrow_mut().remove(&conn) {
                        let _ = ws.close(Some(code), Some(reason));
                    }
                }
                Decision::Replay {
                    conn,
                    after,
                    through,
                    then,
                } => {
                    if let Err(e) = self.replay(&conn, after, through, &then) {
                        log_error(&e);
                    }
                }
                Decision::Store(w) => {
                    let result = self.store(&w);
                    if let Err(e) = &result {
                        log_error(e);
                        later.failed = Some(e.clone());
                    }
                    self.feed(|c| c.stored(result.is_ok(), now_ms()))?;
                }
                Decision::SaveMeta { meta, version } => self.save_meta(&meta, version)?,
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
                Decision::Presence { user, conn, online } => {
                    self.sql
                        .exec(
                            "INSERT INTO presence_outbox (user_id, conn_id, online) VALUES (?, ?, ?)",
                            vec![user.into(), conn.into(), i64::from(online).into()],
                        )
                        .map_err(internal)?;
                    later.presence = true;
                }
                Decision::Settle {
                    owner,
                    plan,
                    settlement,
                    units,
                } => {
                    self.atomic(vec![
                        settle_stmt(owner, plan, settlement),
                        units_stmt(units),
                    ])?;
                    later.settle = true;
                }
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

    /// Runs statements as one SQLite transaction: all or nothing.
    fn atomic(&self, stmts: Vec<(&'static str, Vec<SqlStorageValue>)>) -> Result<(), ApiError> {
        let sql = self.sql.clone();
        let work = Rc::new(RefCell::new(Some(stmts)));
        let todo = Rc::clone(&work);
        let f = Closure::<dyn FnMut() -> Result<(), JsValue>>::new(move || {
            let stmts = todo.borrow_mut().take().unwrap_or_default();
            for (q, params) in stmts {
                sql.exec(q, params)
                    .map_err(|e| JsValue::from_str(&e.to_string()))?;
            }
            Ok(())
        });
        let storage = self.state.storage();
        let raw: &TxStorage = storage.as_raw().unchecked_ref();
        raw.transaction_sync(f.as_ref().unchecked_ref())
            .map(|_| ())
            .map_err(|e| ApiError::Internal(format!("storage transaction failed: {e:?}")))
    }

    /// One write of the core: its points, in one statement (the triggers
    /// spend their units and count their figures in the same statement).
    fn store(&self, w: &Write) -> Result<(), ApiError> {
        let stmt = match &w.points[..] {
            [r] => {
                let p = &r.point;
                (
                    storage::INSERT_POINT,
                    vec![
                        sql_seq(p.seq).into(),
                        p.id.clone().into(),
                        p.ts.into(),
                        r.json.as_str().into(),
                        p.user_id.as_str().into(),
                        p.kind.as_str().into(),
                        p.value.into(),
                    ],
                )
            }
            rows => (
                storage::INSERT_POINTS,
                vec![storage::points_json(rows).into()],
            ),
        };
        #[cfg(feature = "test-faults")]
        if w.points
            .iter()
            .any(|r| r.point.kind == crate::faults::FAIL_STORE_KIND)
        {
            // Fails after the points went in, in the same transaction, so
            // the rollback is what a test sees.
            return self.atomic(vec![
                stmt,
                (
                    "INSERT INTO no_such_table_injected_fault VALUES (1)",
                    Vec::new(),
                ),
            ]);
        }
        self.sql.exec(stmt.0, stmt.1).map(|_| ()).map_err(internal)
    }

    fn save_meta(&self, meta: &Meta, version: u64) -> Result<(), ApiError> {
        let text = serde_json::to_string(meta).map_err(internal)?;
        self.sql
            .exec(
                "INSERT INTO session (k, meta, meta_version) VALUES (0, ?, ?) \
                 ON CONFLICT(k) DO UPDATE SET meta = excluded.meta, meta_version = excluded.meta_version",
                vec![text.into(), (version as i64).into()],
            )
            .map_err(internal)?;
        Ok(())
    }

    /// Replays one page to `conn`: stored points after `after` through
    /// `through`, read in chunks that advance by the last seq read.
    fn replay(&self, conn: &str, after: u64, through: u64, then: &str) -> Result<(), ApiError> {
        let sockets = self.sockets.borrow();
        let Some(ws) = sockets.get(conn) else {
            return Ok(());
        };
        let mut from = after;
        while from < through {
            let rows: Vec<SeqBodyRow> = self
                .sql
                .exec(
                    "SELECT seq, body FROM points WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 500",
                    vec![sql_seq(from).into(), sql_seq(through).into()],
                )
                .and_then(|c| c.to_array())
                .map_err(internal)?;
            let Some(last) = rows.last() else { break };
            from = last.seq as u64;
            for r in &rows {
                let _ = ws.send_with_str(point_frame(&r.body));
            }
        }
        let _ = ws.send_with_str(then);
        Ok(())
    }

    /// Reserves points units of the owner and feeds the answer to the core.
    async fn reserve(&self, owner: &str, plan: &str, want: u64) -> Result<(), ApiError> {
        let got = self.ask_units(owner, plan, want).await;
        let now = now_ms();
        let sql = &self.sql;
        self.feed(|c| match got {
            Some(r) => c.granted(r.granted, r.day, now, &mut SqlIds(sql)),
            None => c.reserve_failed(now),
        })
    }

    /// Asks the owner's quota object for up to `want` points units.
    async fn ask_units(&self, owner: &str, plan: &str, want: u64) -> Option<Reserved> {
        let call = QuotaCall::Reserve {
            plan: plan.to_owned(),
            want,
        };
        match self.quota_call(owner, call).await? {
            QuotaAnswer::Reserved(r) => Some(r),
            _ => None,
        }
    }

    async fn quota_call(&self, subject: &str, call: QuotaCall) -> Option<QuotaAnswer> {
        let caller = Caller::internal(subject);
        let hop = Hop {
            env: &self.env,
            caller: &caller,
            request_id: None,
        };
        hop.quota(subject, call).await.ok()?.ok()
    }

    /// Writes one planned batch to D1 and feeds the outcome to the core.
    async fn flush(&self, job: FlushJob) -> Result<(), ApiError> {
        let ok = match self.write_d1(&job).await {
            Ok(()) => self
                .sql
                .exec(
                    "UPDATE session SET flushed_seq = max(flushed_seq, ?), \
                     flushed_meta_version = max(flushed_meta_version, ?) WHERE k = 0",
                    vec![
                        sql_seq(job.batch.to).into(),
                        sql_seq(job.batch.meta_version).into(),
                    ],
                )
                .is_ok(),
            Err(e) => {
                log_error(&e);
                false
            }
        };
        self.feed(|c| c.flush_done(job.batch, ok, now_ms()))
    }

    /// Binds and runs the D1 plan of one flush as one `batch()`.
    async fn write_d1(&self, job: &FlushJob) -> Result<(), ApiError> {
        #[cfg(feature = "test-faults")]
        if crate::faults::d1_failing() {
            return Err(ApiError::Unavailable(
                "D1 failure injected for tests".into(),
            ));
        }
        let b = job.batch;
        let rows: Vec<BodyRow> = if b.from <= b.to {
            self.sql
                .exec(
                    "SELECT ts, body FROM points WHERE seq BETWEEN ? AND ? ORDER BY seq",
                    vec![sql_seq(b.from).into(), sql_seq(b.to).into()],
                )
                .and_then(|c| c.to_array())
                .map_err(internal)?
        } else {
            Vec::new()
        };
        let points: Vec<(Millis, String)> = rows.into_iter().map(|r| (r.ts, r.body)).collect();
        let plan = d1::plan(
            &job.meta.record(job.point_count),
            &points,
            &job.stats,
            now_ms(),
            super::partition_known,
        )?;
        let db = crate::db::database(&self.env)?;
        crate::db::batch(&db, &plan.stmts).await?;
        for table in plan.tables {
            super::remember_partition(table);
        }
        Ok(())
    }

    /// Tells users' presence objects about sockets that came and went, in
    /// order, from the outbox. An unreachable presence object does not hold
    /// the session up: the rest waits in the outbox for the alarm.
    async fn deliver_presence(&self) -> Result<(), ApiError> {
        #[cfg(feature = "test-faults")]
        if crate::faults::presence_failing() {
            return Err(ApiError::Unavailable(
                "presence delivery failure injected for tests".into(),
            ));
        }
        if self.delivering.replace(true) {
            return Ok(());
        }
        let result = self.deliver_outbox().await;
        self.delivering.set(false);
        if !result? {
            self.ensure_alarm(now_ms() + OUTBOX_RETRY_MS).await?;
        }
        Ok(())
    }

    async fn deliver_outbox(&self) -> Result<bool, ApiError> {
        let session_id = self.feed(|c| c.meta().id.clone())?;
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
                let caller = Caller::internal(&r.user_id);
                let hop = Hop {
                    env: &self.env,
                    caller: &caller,
                    request_id: None,
                };
                let update = PresenceCall::Conn {
                    user_id: r.user_id.clone(),
                    conn_id: r.conn_id,
                    session_id: session_id.clone(),
                    online: r.online != 0,
                };
                let sent = hop.presence(&r.user_id, update).await;
                if !matches!(sent, Ok(Ok(_))) {
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

    /// Delivers settlements to the owner's quota object, in order, from
    /// their outbox; what cannot be delivered now waits for the alarm.
    async fn deliver_settlements(&self) -> Result<(), ApiError> {
        if self.settling.replace(true) {
            return Ok(());
        }
        let result = self.deliver_settle_outbox().await;
        self.settling.set(false);
        if !result? {
            self.ensure_alarm(now_ms() + OUTBOX_RETRY_MS).await?;
        }
        Ok(())
    }

    async fn deliver_settle_outbox(&self) -> Result<bool, ApiError> {
        loop {
            let rows: Vec<SettleRow> = self
                .sql
                .exec(
                    "SELECT id, owner, plan, day, used, returned FROM settle_outbox ORDER BY id LIMIT 50",
                    None,
                )
                .and_then(|c| c.to_array())
                .map_err(internal)?;
            if rows.is_empty() {
                return Ok(true);
            }
            for r in rows {
                let call = QuotaCall::Settle {
                    plan: r.plan,
                    day: r.day,
                    used: r.used as u64,
                    returned: r.returned as u64,
                };
                if self.quota_call(&r.owner, call).await.is_none() {
                    return Ok(false);
                }
                self.sql
                    .exec("DELETE FROM settle_outbox WHERE id = ?", vec![r.id.into()])
                    .map_err(internal)?;
            }
        }
    }
}

fn units_stmt(u: Units) -> (&'static str, Vec<SqlStorageValue>) {
    (
        storage::SAVE_UNITS,
        vec![u.day.into(), sql_seq(u.held).into(), sql_seq(u.used).into()],
    )
}

fn stats_stmts(c: &Checkpoint) -> Vec<(&'static str, Vec<SqlStorageValue>)> {
    let mut stmts: Vec<_> = c
        .kinds
        .iter()
        .map(|(kind, s)| {
            (
                storage::SAVE_STATS,
                vec![
                    kind.as_str().into(),
                    sql_seq(s.count).into(),
                    s.sum.into(),
                    s.min.into(),
                    s.max.into(),
                    s.last.into(),
                ],
            )
        })
        .collect();
    stmts.push((
        storage::SAVE_STATS_MARK,
        vec![sql_seq(c.through_seq).into()],
    ));
    stmts
}

fn settle_stmt(owner: String, plan: String, s: Settlement) -> (&'static str, Vec<SqlStorageValue>) {
    (
        "INSERT INTO settle_outbox (owner, plan, day, used, returned) VALUES (?, ?, ?, ?, ?)",
        vec![
            owner.into(),
            plan.into(),
            s.day.into(),
            sql_seq(s.used).into(),
            sql_seq(s.returned).into(),
        ],
    )
}

fn attachment_conn(ws: &WebSocket) -> Option<ConnId> {
    ws.deserialize_attachment::<Attachment>()
        .ok()
        .flatten()
        .map(|a| a.conn_id)
}
