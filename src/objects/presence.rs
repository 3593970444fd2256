//! `PresenceDO`: one object per user id. Carries out what
//! [`PresenceCore`] decides: the state in SQLite, the alarm at the next
//! moment the status can change, and the checks with sessions.

use std::cell::{Cell, RefCell};

use serde::Deserialize;
use sesh_protocol::{parse_body, Heartbeat};
use worker::{durable_object, DurableObject, Env, Request, Response, SqlStorage, State};

use crate::calls::{PresenceCall, SessionCall};
use crate::core::presence::{PresenceCore, PresenceState};
use crate::error::ApiError;
use crate::http::{self, internal, Caller, Hop};
use crate::time::{now_ms, Millis};

#[derive(Deserialize)]
struct Row {
    user_id: String,
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
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        Ok(http::respond(self.handle(req).await))
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_at.set(None);
        if let Err(e) = self.on_alarm().await {
            http::log_error("PresenceDO", &e);
        }
        Response::ok("")
    }
}

impl PresenceDO {
    async fn handle(&self, mut req: Request) -> Result<Response, ApiError> {
        let call = PresenceCall::from_wire(http::read_wire(&mut req).await?)?;
        self.load()?;
        let now = now_ms();
        match call {
            PresenceCall::Get { user_id } => {
                let core = self.core.borrow();
                let view = match core.as_ref() {
                    Some((_, c)) => c.view(&user_id, now),
                    None => self.fresh().view(&user_id, now),
                };
                http::json(200, &view)
            }
            PresenceCall::Heartbeat { body } => {
                let caller = Caller::read(&req)?;
                let beat: Heartbeat = parse_body(&body)?;
                let view = self.update(&caller.user, |c| {
                    c.heartbeat(beat.status, beat.activity, now)
                })?;
                self.schedule().await?;
                http::json(200, &view)
            }
            PresenceCall::Conn {
                user_id,
                conn_id,
                session_id,
                online,
            } => {
                let view = self.update(&user_id, |c| {
                    if online {
                        c.connect(&conn_id, &session_id, now);
                    } else {
                        c.disconnect(&conn_id, now);
                    }
                })?;
                self.schedule().await?;
                http::json(200, &view)
            }
        }
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

    /// Applies `f`, stores the new state, and answers the new view.
    fn update(
        &self,
        user: &str,
        f: impl FnOnce(&mut PresenceCore),
    ) -> Result<sesh_protocol::Presence, ApiError> {
        let mut guard = self.core.borrow_mut();
        let (id, core) = guard
            .as_mut()
            .ok_or_else(|| ApiError::Internal("presence not loaded".into()))?;
        f(core);
        *id = Some(user.to_owned());
        let text = serde_json::to_string(core.state()).map_err(internal)?;
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
                vec![user.into(), text.into()],
            )
            .map_err(internal)?;
        Ok(core.view(user, now_ms()))
    }

    /// Sets the alarm to the next moment the status can change.
    async fn schedule(&self) -> Result<(), ApiError> {
        let next = self.core.borrow().as_ref().and_then(|(_, c)| c.next_wake());
        match next {
            Some(at) => http::ensure_alarm(&self.state, &self.alarm_at, at).await,
            None => Ok(()),
        }
    }

    /// Expires what ran out and asks sessions about connections whose
    /// trust ran out.
    async fn on_alarm(&self) -> Result<(), ApiError> {
        self.load()?;
        let now = now_ms();
        let (user, checks) = {
            let mut guard = self.core.borrow_mut();
            let Some((Some(user), core)) = guard.as_mut() else {
                return Ok(());
            };
            core.tick(now);
            (user.clone(), core.due_checks(now))
        };
        let mut answers = Vec::with_capacity(checks.len());
        for (conn, session) in checks {
            answers.push((conn.clone(), self.ask_session(&user, &session, &conn).await));
        }
        let now = now_ms();
        self.update(&user, |c| {
            for (conn, live) in answers {
                c.confirmed(&conn, live, now);
            }
            c.tick(now);
        })?;
        self.schedule().await
    }

    /// Whether `session` still has `conn`; `None` when it cannot be asked.
    async fn ask_session(&self, user: &str, session: &str, conn: &str) -> Option<bool> {
        let caller = Caller::internal(user);
        let hop = Hop {
            env: &self.env,
            caller: &caller,
            request_id: None,
        };
        let call = SessionCall::HasConn {
            conn_id: conn.to_owned(),
        };
        let mut resp = hop.session(session, call).await.ok()?;
        if resp.status_code() == 404 {
            return Some(false);
        }
        let v: serde_json::Value = resp.json().await.ok()?;
        v["live"].as_bool()
    }
}
