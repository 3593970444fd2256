//! `ActiveSessionDO`: one object per session id.

use std::cell::RefCell;

use serde::Deserialize;
use sesh_protocol::{parse_body, CreateSession, Session, SessionStatus};
use worker::{durable_object, DurableObject, Env, Request, Response, SqlStorage, State};

use crate::error::ApiError;
use crate::http::{self, internal, Caller};
use crate::time::{now_ms, rfc3339};

/// A live, multi-participant session (CONTRACT.md section 5).
#[durable_object]
pub struct ActiveSessionDO {
    sql: SqlStorage,
    // Loaded on first use; `Some(None)` means "known not to exist".
    meta: RefCell<Option<Option<Meta>>>,
}

/// The session's own row, as stored in the object's SQLite.
#[derive(Debug, Clone, Deserialize)]
struct Meta {
    id: String,
    owner_id: String,
    title: Option<String>,
    members: String,
    metadata: String,
    status: String,
    started_at: i64,
    ended_at: Option<i64>,
}

impl Meta {
    fn members(&self) -> Vec<String> {
        serde_json::from_str(&self.members).unwrap_or_default()
    }

    fn is_member(&self, user: &str) -> bool {
        self.owner_id == user || self.members().iter().any(|m| m == user)
    }

    fn to_wire(&self) -> Session {
        Session {
            id: self.id.clone(),
            owner_id: self.owner_id.clone(),
            title: self.title.clone(),
            members: self.members(),
            metadata: serde_json::from_str(&self.metadata).unwrap_or_default(),
            status: if self.status == "ended" {
                SessionStatus::Ended
            } else {
                SessionStatus::Active
            },
            started_at: rfc3339(self.started_at),
            ended_at: self.ended_at.map(rfc3339),
            point_count: 0,
            last_seq: 0,
            participants: Vec::new(),
        }
    }
}

impl DurableObject for ActiveSessionDO {
    fn new(state: State, _env: Env) -> Self {
        let sql = state.storage().sql();
        Self {
            sql,
            meta: RefCell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        Ok(http::respond(self.handle(req).await))
    }
}

impl ActiveSessionDO {
    async fn handle(&self, mut req: Request) -> Result<Response, ApiError> {
        let (op, url) = super::op(&req)?;
        let caller = Caller::read(&req)?;
        if op == "/create" {
            let body = req.bytes().await.map_err(internal)?;
            let create: CreateSession = parse_body(&body)?;
            return self.create(&caller, create, super::query(&url, "sessionId"));
        }
        let meta = self
            .load()?
            .ok_or_else(|| ApiError::NotFound("no such session".into()))?;
        if !meta.is_member(&caller.user) {
            return Err(ApiError::Forbidden("not a member of this session".into()));
        }
        match op.as_str() {
            "/get" => http::json(200, &meta.to_wire()),
            _ => Err(ApiError::Unavailable(
                "live session operations are not enabled yet".into(),
            )),
        }
    }

    fn create(
        &self,
        caller: &Caller,
        create: CreateSession,
        id: Option<String>,
    ) -> Result<Response, ApiError> {
        let id = id.ok_or_else(|| ApiError::Internal("create without sessionId".into()))?;
        if self.load()?.is_some() {
            return Err(ApiError::Internal(format!("session id collision {id}")));
        }
        let members =
            serde_json::to_string(&create.members.unwrap_or_default()).map_err(internal)?;
        let metadata =
            serde_json::to_string(&create.metadata.unwrap_or_default()).map_err(internal)?;
        let started_at = now_ms();
        self.ensure_schema()?;
        self.sql
            .exec(
                "INSERT INTO session (id, owner_id, owner_plan, title, members, metadata, status, started_at) \
                 VALUES (?, ?, ?, ?, ?, ?, 'active', ?)",
                vec![
                    id.clone().into(),
                    caller.user.clone().into(),
                    caller.plan.clone().into(),
                    create.title.clone().into(),
                    members.clone().into(),
                    metadata.clone().into(),
                    started_at.into(),
                ],
            )
            .map_err(internal)?;
        let meta = Meta {
            id,
            owner_id: caller.user.clone(),
            title: create.title,
            members,
            metadata,
            status: "active".into(),
            started_at,
            ended_at: None,
        };
        let wire = meta.to_wire();
        *self.meta.borrow_mut() = Some(Some(meta));
        http::json(201, &wire)
    }

    fn ensure_schema(&self) -> Result<(), ApiError> {
        self.sql
            .exec(
                "CREATE TABLE IF NOT EXISTS session (\
                   id TEXT PRIMARY KEY, owner_id TEXT NOT NULL, owner_plan TEXT NOT NULL, \
                   title TEXT, members TEXT NOT NULL, metadata TEXT NOT NULL, \
                   status TEXT NOT NULL, started_at INTEGER NOT NULL, ended_at INTEGER)",
                None,
            )
            .map_err(internal)?;
        Ok(())
    }

    fn load(&self) -> Result<Option<Meta>, ApiError> {
        if let Some(m) = self.meta.borrow().as_ref() {
            return Ok(m.clone());
        }
        self.ensure_schema()?;
        let rows: Vec<Meta> = self
            .sql
            .exec(
                "SELECT id, owner_id, title, members, metadata, status, started_at, ended_at FROM session LIMIT 1",
                None,
            )
            .and_then(|c| c.to_array())
            .map_err(internal)?;
        let m = rows.into_iter().next();
        *self.meta.borrow_mut() = Some(m.clone());
        Ok(m)
    }
}
