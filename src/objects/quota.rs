//! `QuotaDO`: one object per subject (user id).

use sesh_protocol::{QuotaOverview, ResourceUsage};
use worker::{durable_object, DurableObject, Env, Request, Response, State};

use crate::config::Plans;
use crate::error::ApiError;
use crate::http::{self, Caller};

/// API rate limit and plan quotas of one subject (CONTRACT.md section 7).
#[durable_object]
pub struct QuotaDO {
    #[allow(dead_code)]
    state: State,
    env: Env,
}

impl DurableObject for QuotaDO {
    fn new(state: State, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        Ok(http::respond(self.handle(req)))
    }
}

impl QuotaDO {
    fn handle(&self, req: Request) -> Result<Response, ApiError> {
        let (op, _) = super::op(&req)?;
        let caller = Caller::read(&req)?;
        match op.as_str() {
            "/overview" => {
                let plans =
                    Plans::parse(self.env.var("PLANS").ok().map(|v| v.to_string()).as_deref())
                        .map_err(|e| ApiError::Internal(format!("configuration: {e}")))?;
                let plan = plans
                    .get(&caller.plan)
                    .ok_or_else(|| ApiError::Internal(format!("unknown plan {}", caller.plan)))?;
                let usage = |limit: Option<u64>| ResourceUsage {
                    limit,
                    used: 0,
                    remaining: limit,
                    reset_ms: None,
                    resets_at: None,
                };
                http::json(
                    200,
                    &QuotaOverview {
                        subject: caller.user,
                        plan: caller.plan.clone(),
                        api: usage(Some(plan.api_per_min)),
                        sessions: usage(plan.sessions_per_month),
                        points: usage(plan.points_per_day),
                    },
                )
            }
            _ => Err(ApiError::Internal(format!("unknown quota operation {op}"))),
        }
    }
}
