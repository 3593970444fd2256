//! `QuotaDO`: one object per subject. Carries out what [`QuotaCore`]
//! decides, with the state written to SQLite before the answer leaves (the
//! runtime's output gate holds the answer until the write is durable).
//! Every call runs from read to write without an `await`, so concurrent
//! requests cannot interleave: checks are exact.

use std::cell::RefCell;

use serde::Deserialize;
use worker::{durable_object, DurableObject, Env, Request, Response, SqlStorage, State};

use crate::calls::QuotaCall;
use crate::config::Plans;
use crate::core::quota::{QuotaCore, Reply};
use crate::error::ApiError;
use crate::http::{self, internal, Caller};
use crate::time::now_ms;

#[derive(Deserialize)]
struct Row {
    state: String,
    plan: Option<String>,
}

/// API rate limit and plan quotas of one subject (CONTRACT.md section 7).
#[durable_object]
pub struct QuotaDO {
    sql: SqlStorage,
    plans: Result<Plans, String>,
    core: RefCell<Option<QuotaCore>>,
}

impl DurableObject for QuotaDO {
    fn new(state: State, env: Env) -> Self {
        Self {
            sql: state.storage().sql(),
            plans: Plans::parse(http::var(&env, "PLANS").as_deref()),
            core: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let answer = match http::read_wire(&mut req).await {
            Ok(wire) => self.handle(&req, wire),
            Err(e) => Err(e),
        };
        Ok(http::respond(answer))
    }
}

impl QuotaDO {
    /// Everything here is synchronous: no other request runs in between.
    fn handle(&self, req: &Request, wire: crate::calls::Wire) -> Result<Response, ApiError> {
        let call = QuotaCall::from_wire(wire)?;
        let caller = Caller::read(req)?;
        let plans = self
            .plans
            .as_ref()
            .map_err(|e| ApiError::Internal(format!("configuration: {e}")))?;
        self.load()?;
        let mut guard = self.core.borrow_mut();
        let core = guard
            .as_mut()
            .ok_or_else(|| ApiError::Internal("quota not loaded".into()))?;
        let reply = core.apply(&caller.user, &call, plans, now_ms())?;
        if reply.changed {
            if let Err(e) = self.save(core) {
                // Memory must not run ahead of storage: read it again.
                *guard = None;
                return Err(e);
            }
        }
        Ok(answer(reply))
    }

    /// Reads the subject's state once per object lifetime.
    fn load(&self) -> Result<(), ApiError> {
        if self.core.borrow().is_some() {
            return Ok(());
        }
        self.sql
            .exec(
                "CREATE TABLE IF NOT EXISTS quota (k INTEGER PRIMARY KEY CHECK (k = 0), state TEXT NOT NULL, plan TEXT)",
                None,
            )
            .map_err(internal)?;
        let rows: Vec<Row> = self
            .sql
            .exec("SELECT state, plan FROM quota WHERE k = 0", None)
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        let core = match rows.into_iter().next() {
            Some(r) => QuotaCore {
                state: serde_json::from_str(&r.state).map_err(internal)?,
                last_plan: r.plan,
            },
            None => QuotaCore::default(),
        };
        *self.core.borrow_mut() = Some(core);
        Ok(())
    }

    fn save(&self, core: &QuotaCore) -> Result<(), ApiError> {
        let text = serde_json::to_string(&core.state).map_err(internal)?;
        self.sql
            .exec(
                "INSERT INTO quota (k, state, plan) VALUES (0, ?, ?) \
                 ON CONFLICT(k) DO UPDATE SET state = excluded.state, plan = excluded.plan",
                vec![text.into(), core.last_plan.clone().into()],
            )
            .map_err(internal)?;
        Ok(())
    }
}

/// The runtime answer for a core reply.
fn answer(reply: Reply) -> Response {
    let resp = match reply.body {
        Some(text) => http::json_text(reply.status, text),
        None => http::empty(reply.status),
    };
    let headers = resp.headers();
    for (name, value) in &reply.headers {
        let _ = headers.set(name, value);
    }
    resp
}
