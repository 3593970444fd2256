//! `PresenceDO`: one object per user id.

use sesh_protocol::{Presence, PresenceStatus};
use worker::{durable_object, DurableObject, Env, Request, Response, State};

use crate::error::ApiError;
use crate::http;

/// Presence of one user (CONTRACT.md section 6).
#[durable_object]
pub struct PresenceDO {
    #[allow(dead_code)]
    state: State,
}

impl DurableObject for PresenceDO {
    fn new(state: State, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        Ok(http::respond(self.handle(req)))
    }
}

impl PresenceDO {
    fn handle(&self, req: Request) -> Result<Response, ApiError> {
        let (op, url) = super::op(&req)?;
        match op.as_str() {
            "/get" => {
                let user_id = super::query(&url, "userId")
                    .ok_or_else(|| ApiError::Internal("presence read without userId".into()))?;
                http::json(
                    200,
                    &Presence {
                        user_id,
                        status: PresenceStatus::Offline,
                        last_seen: None,
                        activity: None,
                        connections: 0,
                    },
                )
            }
            "/heartbeat" => Err(ApiError::Unavailable(
                "presence heartbeats are not enabled yet".into(),
            )),
            _ => Err(ApiError::Internal(format!(
                "unknown presence operation {op}"
            ))),
        }
    }
}
