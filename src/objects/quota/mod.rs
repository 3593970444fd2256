//! `QuotaDO`: one object per subject. Carries out what [`QuotaCore`]
//! decides, with the state written to SQLite before the answer leaves (the
//! runtime's output gate holds the answer until the write is durable).
//! Every call runs from read to write without an `await`, so concurrent
//! requests cannot interleave: checks are exact. Calls arrive over JS RPC
//! (`rpc`, see `src/entry.mjs`); the fetch handler answers the same calls.

use std::cell::RefCell;

use serde::Deserialize;
use wasm_bindgen::prelude::*;
use worker::{durable_object, DurableObject, Env, Request, Response, SqlStorage, State};

use crate::edge::http::{self, internal, Answer, Caller};
use crate::error::ApiError;
use crate::time::now_ms;
use sesh_core::calls::{QuotaCall, Wire};
use sesh_core::config::Plans;
use sesh_core::quota::{QuotaCore, Reply};

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
            Ok(wire) => Caller::read(&req).and_then(|caller| self.handle(wire, &caller)),
            Err(e) => Err(e),
        };
        Ok(Answer::of(answer).into_response())
    }
}

#[wasm_bindgen]
impl QuotaDO {
    /// One call over JS RPC (the arguments of `http::Hop`'s RPC call).
    pub fn rpc(
        &self,
        path: String,
        user: String,
        plan: String,
        service: bool,
        body: Option<Vec<u8>>,
    ) -> JsValue {
        let (wire, caller) = http::rpc_received(path, user, plan, service, body);
        http::rpc_answer(Answer::of(self.handle(wire, &caller)))
    }
}

impl QuotaDO {
    /// Everything here is synchronous: no other request runs in between.
    fn handle(&self, wire: Wire, caller: &Caller) -> Result<Answer, ApiError> {
        let call = QuotaCall::from_wire(wire)?;
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

/// The answer for a core reply.
fn answer(reply: Reply) -> Answer {
    Answer {
        status: reply.status,
        headers: reply
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        body: reply.body,
    }
}
