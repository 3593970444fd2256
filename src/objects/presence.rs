//! `PresenceDO`: one object per user id. Carries out what
//! [`PresenceCore`] decides: the state in SQLite, the alarm at the next
//! moment the status can change, and the checks with sessions.

use std::cell::{Cell, RefCell};

use serde::{Deserialize, Serialize};
use sesh_protocol::{parse_body, Heartbeat};
use worker::{durable_object, DurableObject, Env, Method, Request, Response, SqlStorage, State};

use crate::config::Tuning;
use crate::core::presence::PresenceCore;
use crate::error::ApiError;
use crate::http::{self, internal, Caller};
use crate::time::{now_ms, Millis};

/// What a session tells a user's presence about one of its sockets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ConnUpdate {
    pub user_id: String,
    pub conn_id: String,
    pub session_id: String,
    pub online: bool,
}

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
    // `None` until loaded; then the user id (once known) and the state.
    core: RefCell<Option<(Option<String>, PresenceCore)>>,
    alarm_at: Cell<Option<Millis>>,
    table_ready: Cell<bool>,
}

impl DurableObject for PresenceDO {
    fn new(state: State, env: Env) -> Self {
        let sql = state.storage().sql();
        let ttl = Tuning::from_vars(|k| env.var(k).ok().map(|v| v.to_string()))
            .map(|t| t.presence_ttl_ms)
            .unwrap_or_else(|_| Tuning::default().presence_ttl_ms);
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
            worker::console_error!(
                "{}",
                serde_json::json!({"level": "error", "object": "PresenceDO", "error": e.log_detail().unwrap_or(&e.to_string())})
            );
        }
        Response::ok("")
    }
}

impl PresenceDO {
    async fn handle(&self, mut req: Request) -> Result<Response, ApiError> {
        let (op, url) = super::op(&req)?;
        self.load()?;
        let now = now_ms();
        match op.as_str() {
            "/get" => {
                let user = super::query(&url, "userId")
                    .ok_or_else(|| ApiError::Internal("presence read without userId".into()))?;
                let core = self.core.borrow();
                let view = core
                    .as_ref()
                    .map(|(_, c)| c.view(&user, now, self.ttl))
                    .unwrap_or_else(|| PresenceCore::default().view(&user, now, self.ttl));
                http::json(200, &view)
            }
            "/heartbeat" => {
                let caller = Caller::read(&req)?;
                let body = req.bytes().await.map_err(internal)?;
                let beat: Heartbeat = parse_body(&body)?;
                let view = self.update(&caller.user, |c| {
                    c.heartbeat(beat.status, beat.activity, now, self.ttl)
                })?;
                self.schedule().await?;
                http::json(200, &view)
            }
            "/conn" => {
                let body = req.bytes().await.map_err(internal)?;
                let u: ConnUpdate = serde_json::from_slice(&body).map_err(internal)?;
                let view = self.update(&u.user_id, |c| {
                    if u.online {
                        c.connect(&u.conn_id, &u.session_id, now, self.ttl);
                    } else {
                        c.disconnect(&u.conn_id, now, self.ttl);
                    }
                })?;
                self.schedule().await?;
                http::json(200, &view)
            }
            _ => Err(ApiError::Internal(format!(
                "unknown presence operation {op}"
            ))),
        }
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
                serde_json::from_str(&r.state).map_err(internal)?,
            ),
            None => (None, PresenceCore::default()),
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
        let text = serde_json::to_string(core).map_err(internal)?;
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
        Ok(core.view(user, now_ms(), self.ttl))
    }

    /// Sets the alarm to the next moment the status can change.
    async fn schedule(&self) -> Result<(), ApiError> {
        let next = self
            .core
            .borrow()
            .as_ref()
            .and_then(|(_, c)| c.next_wake(self.ttl));
        if let Some(at) = next {
            // Only ever earlier: a later wake (every heartbeat moves it) is
            // left to the alarm already set, which re-arms when it fires.
            if self.alarm_at.get().is_none_or(|cur| at < cur) {
                http::set_alarm(&self.state, at).await?;
                self.alarm_at.set(Some(at));
            }
        }
        Ok(())
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
            core.tick(now, self.ttl);
            (user.clone(), core.due_checks(now, self.ttl))
        };
        let mut answers = Vec::with_capacity(checks.len());
        for (conn, session) in checks {
            answers.push((conn.clone(), self.ask_session(&user, &session, &conn).await));
        }
        let now = now_ms();
        self.update(&user, |c| {
            for (conn, live) in answers {
                c.confirmed(&conn, live, now, self.ttl);
            }
            c.tick(now, self.ttl);
        })?;
        self.schedule().await
    }

    /// Whether `session` still has `conn`; `None` when it cannot be asked.
    async fn ask_session(&self, user: &str, session: &str, conn: &str) -> Option<bool> {
        let caller = Caller::internal(user);
        let mut resp = http::call_object(
            &self.env,
            "ACTIVE_SESSION",
            session,
            &format!("/has-conn?connId={conn}"),
            Method::Get,
            None,
            &caller,
            None,
        )
        .await
        .ok()?;
        if resp.status_code() == 404 {
            return Some(false);
        }
        let v: serde_json::Value = resp.json().await.ok()?;
        v["live"].as_bool()
    }
}
