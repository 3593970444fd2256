//! `PresenceDO`: one object per user id. Carries out what
//! [`PresenceCore`] decides ([`Decision`]): the state in SQLite, its
//! publication to the read shard, the checks with sessions (their answers
//! go back to the core), and the alarm at the next moment the status can
//! change. A few
//! instances named by [`shard_name`] are read shards instead: every user
//! object publishes each stored change to its shard, and a batch read asks
//! only the shards ([`ShardCore`]).

use std::cell::{Cell, RefCell};

use serde::Deserialize;
use sesh_protocol::{parse_optional_body, Heartbeat};
use wasm_bindgen::prelude::*;
use worker::{durable_object, DurableObject, Env, Request, Response, SqlStorage, State};

use crate::edge::http::{self, internal, Caller, Hop};
use crate::error::ApiError;
use crate::time::{now_ms, Millis};
use sesh_core::calls::{self, PresenceAnswer, PresenceCall, SessionAnswer, SessionCall};
use sesh_core::presence::{
    shard_name, shard_of, CheckAnswer, Decision, PresenceCore, PresenceState, ShardCore,
};

#[derive(Deserialize)]
struct Row {
    user_id: String,
    state: String,
}

#[derive(Deserialize)]
struct ShardRow {
    state: String,
}

/// Presence of one user (CONTRACT.md section 6).
#[durable_object]
pub struct PresenceDO {
    state: State,
    env: Env,
    sql: SqlStorage,
    ttl: u64,
    // `None` until loaded; then the user id (once known) and the core.
    core: RefCell<Option<(Option<String>, PresenceCore)>>,
    alarm_at: Cell<Option<Millis>>,
    table_ready: Cell<bool>,
    // Set when this object is a read shard (named by `shard_name`).
    shard: RefCell<Option<ShardCore>>,
}

impl DurableObject for PresenceDO {
    fn new(state: State, env: Env) -> Self {
        let sql = state.storage().sql();
        let ttl = http::tuning(&env).presence_ttl_ms;
        Self {
            state,
            env,
            sql,
            ttl,
            core: RefCell::new(None),
            alarm_at: Cell::new(None),
            table_ready: Cell::new(false),
            shard: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let answer = match http::read_call(&mut req).await {
            Ok(call) => match Caller::read(&req) {
                Ok(caller) => self.handle(call, &caller).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        Ok(http::fetch_answer(answer))
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_at.set(None);
        if let Err(e) = self.on_alarm().await {
            http::log_error("PresenceDO", &e);
        }
        Response::ok("")
    }
}

#[wasm_bindgen(wasm_bindgen_futures = ::worker::wasm_bindgen_futures)]
impl PresenceDO {
    /// One call over JS RPC (the arguments of `http::Hop`'s RPC call).
    pub async fn rpc(
        &self,
        call: String,
        user: String,
        plan: String,
        service: bool,
        payload: Option<Vec<u8>>,
    ) -> JsValue {
        let answer = match http::rpc_received(call, user, plan, service, payload) {
            Ok((call, caller)) => self.handle(call, &caller).await,
            Err(e) => Err(e),
        };
        http::rpc_answer(answer)
    }
}

impl PresenceDO {
    async fn handle(
        &self,
        call: PresenceCall,
        caller: &Caller,
    ) -> Result<PresenceAnswer, ApiError> {
        self.load()?;
        let now = now_ms();
        match call {
            PresenceCall::Get { user_id } => {
                let core = self.core.borrow();
                let view = match core.as_ref() {
                    Some((_, c)) => c.view(&user_id, now),
                    None => self.fresh().view(&user_id, now),
                };
                Ok(PresenceAnswer::View(view))
            }
            PresenceCall::Heartbeat { body } => {
                let beat: Heartbeat = parse_optional_body(&body)?;
                let view = self
                    .apply(&caller.user, |c| {
                        c.heartbeat(beat.status, beat.activity, now)
                    })
                    .await?;
                Ok(PresenceAnswer::View(view))
            }
            PresenceCall::Conn {
                user_id,
                conn_id,
                session_id,
                online,
            } => {
                let view = self
                    .apply(&user_id, |c| {
                        if online {
                            c.connect(&conn_id, &session_id, now);
                        } else {
                            c.disconnect(&conn_id, now);
                        }
                    })
                    .await?;
                Ok(PresenceAnswer::View(view))
            }
            PresenceCall::Publish { user_id, state } => {
                self.shard_publish(&user_id, state)?;
                Ok(PresenceAnswer::Published)
            }
            PresenceCall::Batch { users } => {
                self.load_shard()?;
                let mut shard = self.shard.borrow_mut();
                let shard = shard
                    .as_mut()
                    .ok_or_else(|| ApiError::Internal("shard not loaded".into()))?;
                shard.evict(now);
                let mut failed = None;
                let views = users
                    .iter()
                    .map(|u| shard.view(u, now, &mut |u| self.stored_shard_user(u, &mut failed)))
                    .collect();
                if let Some(e) = failed {
                    return Err(e);
                }
                Ok(PresenceAnswer::Views(views))
            }
        }
    }

    /// Tells the user's read shard of their new state, before the change is
    /// answered, so a batch read after it sees it. A shard that cannot be
    /// reached is told again by the next change (logged meanwhile).
    async fn publish(&self, user: &str, state: &PresenceState) {
        let caller = Caller::internal(user);
        let hop = Hop {
            env: &self.env,
            caller: &caller,
            request_id: None,
        };
        let call = PresenceCall::Publish {
            user_id: user.to_owned(),
            state: state.clone(),
        };
        let shard = shard_name(shard_of(user));
        match hop.presence(&shard, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(f)) => http::log_error(
                "PresenceDO",
                &ApiError::Unavailable(format!("presence shard answered {}", f.status)),
            ),
            Err(e) => http::log_error("PresenceDO", &e),
        }
    }

    /// A shard's table, made once per object lifetime; its users are read
    /// when asked for (memory holds only the ones seen lately).
    fn load_shard(&self) -> Result<(), ApiError> {
        if self.shard.borrow().is_some() {
            return Ok(());
        }
        self.sql
            .exec(
                "CREATE TABLE IF NOT EXISTS shard_users (user_id TEXT PRIMARY KEY, state TEXT NOT NULL)",
                None,
            )
            .map_err(internal)?;
        *self.shard.borrow_mut() = Some(ShardCore::new(self.ttl));
        Ok(())
    }

    // The stored state of a user the shard's memory does not hold; a
    // failed read is kept in `failed` for the caller to answer.
    fn stored_shard_user(
        &self,
        user: &str,
        failed: &mut Option<ApiError>,
    ) -> Option<PresenceState> {
        let read = || -> Result<Option<PresenceState>, ApiError> {
            let rows: Vec<ShardRow> = self
                .sql
                .exec(
                    "SELECT state FROM shard_users WHERE user_id = ?",
                    vec![user.into()],
                )
                .and_then(|c| c.to_array())
                .map_err(internal)?;
            match rows.into_iter().next() {
                Some(r) => Ok(Some(serde_json::from_str(&r.state).map_err(internal)?)),
                None => Ok(None),
            }
        };
        match read() {
            Ok(s) => s,
            Err(e) => {
                *failed = Some(e);
                None
            }
        }
    }

    fn shard_publish(&self, user: &str, state: PresenceState) -> Result<(), ApiError> {
        self.load_shard()?;
        let text = serde_json::to_string(&state).map_err(internal)?;
        let mut failed = None;
        let taken = match self.shard.borrow_mut().as_mut() {
            Some(shard) => {
                shard.evict(now_ms());
                shard.publish(user, state, &mut |u| self.stored_shard_user(u, &mut failed))
            }
            None => false,
        };
        if let Some(e) = failed {
            return Err(e);
        }
        if taken {
            self.sql
                .exec(
                    "INSERT INTO shard_users (user_id, state) VALUES (?, ?) \
                     ON CONFLICT(user_id) DO UPDATE SET state = excluded.state",
                    vec![user.into(), text.into()],
                )
                .map_err(internal)?;
        }
        Ok(())
    }

    fn fresh(&self) -> PresenceCore {
        PresenceCore::new(self.ttl, PresenceState::default())
    }

    fn load(&self) -> Result<(), ApiError> {
        if self.core.borrow().is_some() {
            return Ok(());
        }
        // A user never written has no table: reading them writes nothing.
        let rows: Vec<Row> = self
            .sql
            .exec("SELECT user_id, state FROM presence WHERE k = 0", None)
            .and_then(|c| c.to_array())
            .unwrap_or_default();
        let loaded = match rows.into_iter().next() {
            Some(r) => (
                Some(r.user_id),
                PresenceCore::new(self.ttl, serde_json::from_str(&r.state).map_err(internal)?),
            ),
            None => (None, self.fresh()),
        };
        *self.core.borrow_mut() = Some(loaded);
        Ok(())
    }

    /// Applies `event` to `user`'s core, carries out what it decided, and
    /// answers the user's presence after it.
    async fn apply(
        &self,
        user: &str,
        event: impl FnOnce(&mut PresenceCore),
    ) -> Result<sesh_protocol::Presence, ApiError> {
        self.feed(|id, core| {
            event(core);
            *id = Some(user.to_owned());
        })?;
        self.carry_out(user).await?;
        self.feed(|_, core| core.view(user, now_ms()))
    }

    /// `f` on the loaded core (and the user id, once known): an event, a
    /// poll or a read; no borrow is held across an await.
    fn feed<T>(
        &self,
        f: impl FnOnce(&mut Option<String>, &mut PresenceCore) -> T,
    ) -> Result<T, ApiError> {
        let mut guard = self.core.borrow_mut();
        let (id, core) = guard
            .as_mut()
            .ok_or_else(|| ApiError::Internal("presence not loaded".into()))?;
        Ok(f(id, core))
    }

    /// Carries out the core's decisions in order. Checks are asked once
    /// the rest is done, and their answers go back to the core, which then
    /// decides what to store.
    async fn carry_out(&self, user: &str) -> Result<(), ApiError> {
        let mut checks = Vec::new();
        loop {
            match self.feed(|_, c| c.poll())? {
                Some(Decision::Save(state)) => {
                    if let Err(e) = self.save(user, &state) {
                        // A change not stored is not published either: the
                        // core (and what it still had to do) is dropped and
                        // read again from storage by the next call.
                        *self.core.borrow_mut() = None;
                        return Err(e);
                    }
                }
                Some(Decision::Publish(state)) => self.publish(user, &state).await,
                Some(Decision::Check { conn, session }) => checks.push((conn, session)),
                Some(Decision::WakeAt(at)) => {
                    http::ensure_alarm(&self.state, &self.alarm_at, at).await?
                }
                None if checks.is_empty() => return Ok(()),
                None => {
                    let mut answers = Vec::with_capacity(checks.len());
                    for (conn, session) in checks.drain(..) {
                        let live = self.ask_session(user, &session, &conn).await;
                        answers.push((conn, live));
                    }
                    let now = now_ms();
                    self.feed(|_, c| {
                        for (conn, live) in answers {
                            c.confirmed(&conn, live, now);
                        }
                        c.checked(now);
                    })?;
                }
            }
        }
    }

    /// Stores the user's state.
    fn save(&self, user: &str, state: &PresenceState) -> Result<(), ApiError> {
        let text = serde_json::to_string(state).map_err(internal)?;
        if !self.table_ready.replace(true) {
            self.sql
                .exec(
                    "CREATE TABLE IF NOT EXISTS presence (k INTEGER PRIMARY KEY CHECK (k = 0), user_id TEXT NOT NULL, state TEXT NOT NULL)",
                    None,
                )
                .map_err(internal)?;
        }
        self.sql
            .exec(
                "INSERT INTO presence (k, user_id, state) VALUES (0, ?, ?) \
                 ON CONFLICT(k) DO UPDATE SET user_id = excluded.user_id, state = excluded.state",
                vec![user.into(), text.as_str().into()],
            )
            .map_err(internal)?;
        Ok(())
    }

    /// The alarm: what ran out expires, and connections whose trust ran
    /// out are checked with their sessions. A user never stored has
    /// nothing to expire.
    async fn on_alarm(&self) -> Result<(), ApiError> {
        self.load()?;
        let user = self.feed(|id, core| {
            if id.is_some() {
                core.alarm(now_ms());
            }
            id.clone()
        })?;
        match user {
            Some(user) => self.carry_out(&user).await,
            None => Ok(()),
        }
    }

    /// What `session` answers about `conn`, as the core takes it.
    async fn ask_session(&self, user: &str, session: &str, conn: &str) -> CheckAnswer {
        let caller = Caller::internal(user);
        let hop = Hop {
            env: &self.env,
            caller: &caller,
            request_id: None,
        };
        let call = SessionCall::HasConn {
            conn_id: conn.to_owned(),
        };
        let Ok(mut resp) = hop.session(session, call).await else {
            return CheckAnswer::Unreachable;
        };
        if resp.status_code() == 404 {
            return CheckAnswer::NoSuchSession;
        }
        if resp.status_code() != 200 {
            return CheckAnswer::Unreachable;
        }
        let Ok(text) = resp.text().await else {
            return CheckAnswer::Unreachable;
        };
        // A live session's answer that does not decode is a bug: logged.
        match calls::strict::<SessionAnswer>(&text) {
            Ok(SessionAnswer::Live(live)) => CheckAnswer::Has(live),
            Err(e) => {
                http::log_error("PresenceDO", &e.into());
                CheckAnswer::Unreachable
            }
        }
    }
}
