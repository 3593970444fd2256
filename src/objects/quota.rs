//! `QuotaDO`: one object per subject. Carries out what [`QuotaState`]
//! decides, with the state written to SQLite before the answer leaves (the
//! runtime's output gate holds the answer until the write is durable).
//! Every operation runs from read to write without an `await`, so
//! concurrent requests cannot interleave: checks are exact.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};
use sesh_protocol::{ErrorCode, ErrorDetail, QuotaDecision, QuotaOverview, Resource};
use worker::{durable_object, DurableObject, Env, Request, Response, SqlStorage, State};

use crate::config::{Plan, Plans};
use crate::core::quota::{ApiHeaders, QuotaState};
use crate::error::ApiError;
use crate::http::{self, internal, Caller};
use crate::time::now_ms;

/// Header of a refused charge: the wait in milliseconds (internal).
pub(crate) const H_RETRY_AFTER_MS: &str = "x-sesh-retry-after-ms";

/// `resource` and `cost` of an internal check or refund (the gateway has
/// validated the client's body and passes them in the query).
fn resource_and_cost(url: &worker::Url) -> Result<(Resource, u64), ApiError> {
    let resource = match super::query(url, "resource").as_deref() {
        Some("api") => Resource::Api,
        Some("sessions") => Resource::Sessions,
        Some("points") => Resource::Points,
        other => return Err(ApiError::Internal(format!("bad resource {other:?}"))),
    };
    let cost = super::query(url, "cost")
        .and_then(|c| c.parse().ok())
        .filter(|c: &u64| *c >= 1)
        .ok_or_else(|| ApiError::Internal("bad cost".into()))?;
    Ok((resource, cost))
}

/// A session reserving points units of its owner (internal).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Reserve {
    pub plan: String,
    pub want: u64,
}

/// A session giving unused points units back (internal).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct GiveBack {
    pub plan: String,
    pub units: u64,
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
    plans: Result<Plans, String>,
    state: RefCell<Option<QuotaState>>,
    // The plan the subject was last checked under: refunds name none.
    last_plan: RefCell<Option<String>>,
}

impl DurableObject for QuotaDO {
    fn new(state: State, env: Env) -> Self {
        let plans = Plans::parse(env.var("PLANS").ok().map(|v| v.to_string()).as_deref());
        Self {
            sql: state.storage().sql(),
            plans,
            state: RefCell::new(None),
            last_plan: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let body = if req.method() == worker::Method::Post {
            req.bytes().await.unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(http::respond(self.handle(&req, &body)))
    }
}

impl QuotaDO {
    fn plan(&self, name: &str) -> Result<Plan, ApiError> {
        let plans = self
            .plans
            .as_ref()
            .map_err(|e| ApiError::Internal(format!("configuration: {e}")))?;
        plans
            .get(name)
            .copied()
            .ok_or_else(|| ApiError::Validation(format!("unknown plan {name:?}")))
    }

    /// Everything here is synchronous: no other request runs in between.
    fn handle(&self, req: &Request, body: &[u8]) -> Result<Response, ApiError> {
        let (op, url) = super::op(req)?;
        let caller = Caller::read(req)?;
        let now = now_ms();
        let mut s = self.load()?;
        match op.as_str() {
            "/charge" => {
                // The answer is all headers: the gateway reads no body on
                // the path every request takes.
                let plan = self.plan(&caller.plan)?;
                let d = s.check(&plan, Resource::Api, 1, now);
                if d.allowed {
                    self.save(&s, &caller.plan)?;
                }
                let h = s.api_headers(&plan, now);
                let resp = Response::empty()
                    .map_err(internal)?
                    .with_status(if d.allowed { 204 } else { 429 });
                let headers = resp.headers();
                let _ = headers.set("ratelimit-policy", &h.policy());
                let _ = headers.set("ratelimit", &h.limit());
                if let Some(ms) = d.retry_after_ms {
                    let _ = headers.set(H_RETRY_AFTER_MS, &ms.to_string());
                }
                Ok(resp)
            }
            "/overview" => {
                let plan = self.plan(&caller.plan)?;
                let view = QuotaOverview {
                    subject: caller.user.clone(),
                    plan: caller.plan.clone(),
                    api: s.usage(&plan, Resource::Api, now),
                    sessions: s.usage(&plan, Resource::Sessions, now),
                    points: s.usage(&plan, Resource::Points, now),
                };
                http::json(200, &view)
            }
            "/check" => {
                // Validated by the gateway, passed in the query: no body to
                // read or parse here.
                let (resource, cost) = resource_and_cost(&url)?;
                let plan_name = super::query(&url, "plan").unwrap_or_else(|| "free".into());
                let plan_name = plan_name.as_str();
                let plan = self.plan(plan_name)?;
                let c_resource = resource;
                let mut d = s.check(&plan, resource, cost, now);
                if d.allowed {
                    self.save(&s, plan_name)?;
                }
                let status = if d.allowed { 200 } else { 429 };
                if !d.allowed {
                    d.error = Some(refusal(c_resource));
                }
                Ok(with_api_headers(
                    http::json(status, &d)?,
                    &s.api_headers(&plan, now),
                    &d,
                ))
            }
            "/refund" => {
                let (resource, cost) = resource_and_cost(&url)?;
                let plan_name = self
                    .last_plan
                    .borrow()
                    .clone()
                    .unwrap_or_else(|| "free".into());
                let plan = self.plan(&plan_name)?;
                let d = s.refund(&plan, resource, cost, now);
                self.save(&s, &plan_name)?;
                Ok(with_api_headers(
                    http::json(200, &d)?,
                    &s.api_headers(&plan, now),
                    &d,
                ))
            }
            "/reserve" => {
                let r: Reserve = serde_json::from_slice(body).map_err(internal)?;
                let plan = self.plan(&r.plan)?;
                let granted = s.reserve(&plan, Resource::Points, r.want, now);
                if granted > 0 {
                    self.save(&s, &r.plan)?;
                }
                http::json(200, &serde_json::json!({ "granted": granted }))
            }
            "/give-back" => {
                let g: GiveBack = serde_json::from_slice(body).map_err(internal)?;
                let plan = self.plan(&g.plan)?;
                s.refund(&plan, Resource::Points, g.units, now);
                self.save(&s, &g.plan)?;
                http::json(200, &serde_json::json!({}))
            }
            _ => Err(ApiError::Internal(format!("unknown quota operation {op}"))),
        }
    }

    fn load(&self) -> Result<QuotaState, ApiError> {
        if let Some(s) = *self.state.borrow() {
            return Ok(s);
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
        let s = match rows.into_iter().next() {
            Some(r) => {
                *self.last_plan.borrow_mut() = r.plan;
                serde_json::from_str(&r.state).map_err(internal)?
            }
            None => QuotaState::default(),
        };
        *self.state.borrow_mut() = Some(s);
        Ok(s)
    }

    fn save(&self, s: &QuotaState, plan: &str) -> Result<(), ApiError> {
        let text = serde_json::to_string(s).map_err(internal)?;
        self.sql
            .exec(
                "INSERT INTO quota (k, state, plan) VALUES (0, ?, ?) \
                 ON CONFLICT(k) DO UPDATE SET state = excluded.state, plan = excluded.plan",
                vec![text.into(), plan.into()],
            )
            .map_err(internal)?;
        *self.state.borrow_mut() = Some(*s);
        *self.last_plan.borrow_mut() = Some(plan.to_owned());
        Ok(())
    }
}

fn refusal(res: Resource) -> ErrorDetail {
    match res {
        Resource::Api => ErrorDetail::new(ErrorCode::RateLimited, "api rate limit exceeded"),
        Resource::Sessions => {
            ErrorDetail::new(ErrorCode::QuotaExceeded, "monthly sessions quota exceeded")
        }
        Resource::Points => {
            ErrorDetail::new(ErrorCode::QuotaExceeded, "daily points quota exceeded")
        }
    }
}

/// The subject's `api` policy headers, and `Retry-After` on a refusal
/// where a wait helps.
fn with_api_headers(resp: Response, h: &ApiHeaders, d: &QuotaDecision) -> Response {
    let headers = resp.headers();
    let _ = headers.set("ratelimit-policy", &h.policy());
    let _ = headers.set("ratelimit", &h.limit());
    if let Some(ms) = d.retry_after_ms.filter(|_| !d.allowed) {
        let _ = headers.set("retry-after", &ms.div_ceil(1000).max(1).to_string());
    }
    resp
}
