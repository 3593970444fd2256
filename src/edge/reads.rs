//! The reads answered from D1 rather than by an object: a caller's session
//! list, a user's metrics, and ended sessions whose live object no longer
//! has storage. Each parses its query with a pure core, runs the core's
//! statements through [`crate::db`], and answers what the core makes of the
//! rows.

use worker::{Env, Response, Url};

use sesh_protocol::{Session, SessionSummary};

use crate::db;
use crate::edge::http::{self, Caller};
use crate::error::ApiError;
use crate::time::now_ms;
use sesh_core::data::history::{self, ListParams, ListQuery};
use sesh_core::data::rollup::{MetricsParams, MetricsQuery};

fn param<'u>(pairs: &'u [(String, String)], name: &str) -> Option<&'u str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn pairs(url: &Url) -> Vec<(String, String)> {
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `GET /v1/sessions`: the caller's own and member sessions, newest first,
/// across every partition.
pub async fn list_sessions(env: &Env, url: &Url, caller: &Caller) -> Result<Response, ApiError> {
    let q = pairs(url);
    let params = ListParams {
        from: param(&q, "from"),
        to: param(&q, "to"),
        status: param(&q, "status"),
        limit: param(&q, "limit"),
        cursor: param(&q, "cursor"),
    };
    let query = ListQuery::parse(&caller.user, &params, now_ms())?;
    let d1 = db::database(env)?;
    let existing = db::existing(&d1).await?;
    let rows = db::batch(&d1, &query.statements(&existing)).await?;
    http::json(200, &query.answer(rows.into_iter().flatten())?)
}

/// `GET /v1/users/{userId}/metrics`: the user themself or a service token.
pub async fn user_metrics(
    env: &Env,
    url: &Url,
    caller: &Caller,
    user: &str,
) -> Result<Response, ApiError> {
    if !caller.service && caller.user != user {
        return Err(ApiError::Forbidden(
            "metrics are for the user themself or a service token".into(),
        ));
    }
    let q = pairs(url);
    let params = MetricsParams {
        granularity: param(&q, "granularity"),
        from: param(&q, "from"),
        to: param(&q, "to"),
        kind: param(&q, "kind"),
    };
    let query = MetricsQuery::parse(user, &params, now_ms())?;
    let d1 = db::database(env)?;
    let rows = db::query(&d1, &query.statement()).await?;
    http::json(200, &query.answer(&rows)?)
}

/// An ended session as D1 has it, once its live object has no storage:
/// `None` when D1 has no such session either.
pub async fn ended_session(env: &Env, id: &str) -> Result<Option<SessionSummary>, ApiError> {
    let d1 = db::database(env)?;
    let existing = db::existing(&d1).await?;
    let Some(find) = history::find_session(id, &existing) else {
        return Ok(None);
    };
    let rows = db::query(&d1, &find).await?;
    Ok(history::parse_found_session(&rows)?)
}

/// A member's view of an ended session from D1 (`GET /v1/sessions/{id}`):
/// the session object with no live participants and its `stats` computed
/// from its points (in D1, or in its archive once pruned).
pub async fn session_answer(env: &Env, s: &SessionSummary) -> Result<Response, ApiError> {
    let stats = crate::lifecycle::ended_stats(env, &s.id).await?;
    let session = Session {
        summary: SessionSummary { stats, ..s.clone() },
        participants: Vec::new(),
    };
    http::json(200, &session)
}

/// Points of an ended session (`GET .../points`), in seq order: from D1,
/// or from its R2 archive once its detailed points are pruned.
pub async fn ended_points(
    env: &Env,
    s: &SessionSummary,
    after_seq: u64,
    limit: u64,
) -> Result<Response, ApiError> {
    match crate::lifecycle::ended_points(env, &s.id, after_seq, limit).await? {
        Some(page) => http::json(200, &page),
        None => Err(ApiError::NotFound("no such session".into())),
    }
}
