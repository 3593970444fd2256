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

use crate::edge::http::{self, internal, Caller};
use crate::error::ApiError;
use crate::time::{now_ms, Millis};
use sesh_core::calls::{QuotaAnswer, QuotaCall};
use sesh_core::config::Plans;
use sesh_core::quota::{Applied, QuotaCore, QuotaError, Settled};

#[derive(Deserialize)]
struct SettledRow {
    id: String,
    day: f64,
}

#[derive(Deserialize)]
struct Row {
    state: String,
    plan: Option<String>,
}

/// API rate limit and plan quotas of one subject (CONTRACT.md section 7).
#[durable_object]
pub struct QuotaDO {
    sql: SqlStorage,
    plans: Plans,
    core: RefCell<Option<QuotaCore>>,
}

impl DurableObject for QuotaDO {
    fn new(state: State, env: Env) -> Self {
        Self {
            sql: state.storage().sql(),
            plans: http::plans(&env),
            core: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let answer = match http::read_call(&mut req).await {
            Ok(call) => Caller::read(&req).and_then(|caller| self.handle(call, &caller)),
            Err(e) => Err(e),
        };
        Ok(http::fetch_answer(answer))
    }
}

#[wasm_bindgen]
impl QuotaDO {
    /// One call over JS RPC (the arguments of `http::Hop`'s RPC call).
    pub fn rpc(
        &self,
        call: String,
        user: String,
        plan: String,
        service: bool,
        payload: Option<Vec<u8>>,
    ) -> JsValue {
        let received = http::rpc_received(call, user, plan, service, payload);
        http::rpc_answer(received.and_then(|(call, caller)| self.handle(call, &caller)))
    }
}

impl QuotaDO {
    /// Everything here is synchronous: no other request runs in between.
    fn handle(&self, call: QuotaCall, caller: &Caller) -> Result<QuotaAnswer, ApiError> {
        self.load()?;
        let mut guard = self.core.borrow_mut();
        let core = guard
            .as_mut()
            .ok_or_else(|| ApiError::Internal("quota not loaded".into()))?;
        let mut settled = None;
        let applied = apply(
            core,
            &caller.user,
            call,
            &self.plans,
            now_ms(),
            &mut settled,
        )?;
        if applied.changed {
            if let Err(e) = self.save(core, settled) {
                // Memory must not run ahead of storage: read it again.
                *guard = None;
                return Err(e);
            }
        }
        Ok(applied.answer)
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
        self.sql
            .exec(
                "CREATE TABLE IF NOT EXISTS settled (id TEXT PRIMARY KEY, day INTEGER NOT NULL)",
                None,
            )
            .map_err(internal)?;
        let settled: Vec<SettledRow> = self
            .sql
            .exec("SELECT id, day FROM settled", None)
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        let settled = settled
            .into_iter()
            .map(|r| (r.id, r.day as Millis))
            .collect();
        let rows: Vec<Row> = self
            .sql
            .exec("SELECT state, plan FROM quota WHERE k = 0", None)
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        let core = match rows.into_iter().next() {
            Some(r) => QuotaCore {
                state: serde_json::from_str(&r.state).map_err(internal)?,
                last_plan: r.plan,
                settled,
            },
            None => QuotaCore {
                settled,
                ..QuotaCore::default()
            },
        };
        *self.core.borrow_mut() = Some(core);
        Ok(())
    }

    // The counters, and a settlement's id with them (the runtime commits
    // the writes of one call together, before its answer leaves).
    fn save(&self, core: &QuotaCore, settled: Option<(String, Settled)>) -> Result<(), ApiError> {
        let text = serde_json::to_string(&core.state).map_err(internal)?;
        if let Some((id, s)) = settled {
            self.sql
                .exec(
                    "DELETE FROM settled WHERE day < ?",
                    vec![(s.forget_before as f64).into()],
                )
                .map_err(internal)?;
            if let Some(day) = s.record {
                self.sql
                    .exec(
                        "INSERT OR IGNORE INTO settled (id, day) VALUES (?, ?)",
                        vec![id.into(), (day as f64).into()],
                    )
                    .map_err(internal)?;
            }
        }
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

/// Turns a decoded call into the core's operation, and its outcome into
/// the call's answer; a settlement also says what to store of its id.
fn apply(
    core: &mut QuotaCore,
    subject: &str,
    call: QuotaCall,
    plans: &Plans,
    now: Millis,
    settled: &mut Option<(String, Settled)>,
) -> Result<Applied<QuotaAnswer>, QuotaError> {
    fn map<T>(a: Applied<T>, f: impl FnOnce(T) -> QuotaAnswer) -> Applied<QuotaAnswer> {
        Applied {
            answer: f(a.answer),
            changed: a.changed,
        }
    }
    Ok(match call {
        QuotaCall::Charge { plan } => map(core.charge(plans, &plan, now)?, QuotaAnswer::Charged),
        QuotaCall::Overview { plan } => map(
            core.overview(subject, plans, &plan, now)?,
            QuotaAnswer::Overview,
        ),
        QuotaCall::Check {
            resource,
            cost,
            plan,
        } => map(
            core.check(plans, resource, cost, &plan, now)?,
            QuotaAnswer::Decided,
        ),
        QuotaCall::Refund { resource, cost } => map(
            core.refund(plans, resource, cost, now)?,
            QuotaAnswer::Decided,
        ),
        QuotaCall::Reserve { plan, want } => map(
            core.reserve(plans, &plan, want, now)?,
            QuotaAnswer::Reserved,
        ),
        QuotaCall::Settle {
            id,
            day,
            used,
            returned,
        } => {
            let a = core.settle(&id, day, used, returned, now);
            *settled = Some((id, a.answer));
            Applied {
                answer: QuotaAnswer::Settled,
                changed: a.changed,
            }
        }
        QuotaCall::CurrentPlan => Applied {
            answer: QuotaAnswer::Plan(core.current_plan().to_owned()),
            changed: false,
        },
    })
}
