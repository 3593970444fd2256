//! The Worker's fetch handler: request id, CORS, routing, authentication,
//! then one hop to the Durable Object that owns the request's id.

use futures_util::future::join_all;
use sesh_protocol::limits::{MAX_BODY_BYTES, MAX_PRESENCE_BATCH};
use sesh_protocol::{
    parse_body, parse_optional_body, CreateSession, Health, Presence, QuotaCheck, QuotaRefund,
    Resource, SessionStatus, DEFAULT_COST, DEFAULT_PLAN,
};
use worker::{event, Context, Env, Headers, Method, Request, RequestInit, Response, Url};

use crate::edge::http::{self, internal, Answer, Binding, Caller, Hop, H_REQUEST_ID};
use crate::edge::reads;
use crate::error::ApiError;
use crate::ids;
use crate::time::now_ms;
use sesh_core::auth::{self, AuthError, Claims};
use sesh_core::calls::{
    Answered, ExportCall, Frame, PresenceAnswer, PresenceCall, QuotaAnswer, QuotaCall, SessionCall,
    H_CALL,
};
use sesh_core::config::{AllowedOrigins, Plans};
use sesh_core::presence::{shard_name, shard_of};
use sesh_core::quota::{Decided, RateLimit};
use sesh_core::route::{self, Route};
use sesh_core::session::{retired_call, RetiredAnswer, RetiredCall};

/// Headers a browser may send cross-origin, and those it may read.
const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";
const CORS_ALLOW_HEADERS: &str = "authorization, content-type, x-request-id";
const CORS_EXPOSE_HEADERS: &str = "x-request-id, ratelimit, ratelimit-policy, retry-after";

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let started = now_ms();
    let request_id = req
        .headers()
        .get(H_REQUEST_ID)
        .ok()
        .flatten()
        .filter(|v| ids::is_acceptable_request_id(v))
        .unwrap_or_else(ids::new_random_id);
    let method = req.method().to_string();
    let origin = req.headers().get("origin").ok().flatten();
    let config = settings(&env);
    let origins = &config.origins;

    let mut g = Gateway {
        env: &env,
        request_id: &request_id,
        origin: origin.as_deref(),
        origins,
        config: &config,
        pattern: "-",
        user: None,
        rate: None,
    };
    let result = g.handle(req).await;
    let (pattern, user, rate) = (g.pattern, g.user.take(), g.rate.take());
    let status_err = result
        .as_ref()
        .err()
        .map(|e| (e.status(), e.log_detail().map(str::to_owned)));
    let resp = http::respond(result);
    let status = status_err.as_ref().map_or(resp.status_code(), |(s, _)| *s);

    let headers = resp.headers().clone();
    let _ = headers.set(H_REQUEST_ID, &request_id);
    if let Some(rate) = &rate {
        http::set_rate(&headers, rate);
    }
    if let Some(o) = origin.as_deref().filter(|o| origins.allows(o)) {
        let _ = headers.set("access-control-allow-origin", o);
        let _ = headers.set("access-control-expose-headers", CORS_EXPOSE_HEADERS);
        let _ = headers.append("vary", "Origin");
    }
    if config.log.logs(status) {
        // One structured line per request; never the token.
        let mut line = serde_json::json!({
            "level": if status >= 500 { "error" } else { "info" },
            "requestId": request_id,
            "method": method,
            "route": pattern,
            "status": status,
            "durationMs": now_ms() - started,
        });
        if let Some(u) = user {
            line["user"] = u.into();
        }
        if let Some((_, Some(detail))) = status_err {
            line["error"] = detail.into();
        }
        worker::console_log!("{line}");
    }
    Ok(resp.with_headers(headers))
}

struct Gateway<'a> {
    env: &'a Env,
    request_id: &'a str,
    origin: Option<&'a str>,
    origins: &'a AllowedOrigins,
    config: &'a Settings,
    pattern: &'static str,
    user: Option<String>,
    // The caller's `api` policy after the charge, for the answer's
    // `RateLimit-Policy` and `RateLimit` headers.
    rate: Option<RateLimit>,
}

impl Gateway<'_> {
    /// Preflight, health, then for `/v1`: token, `api` charge, route, and
    /// the one hop to the object that owns the request's id.
    async fn handle(&mut self, mut req: Request) -> Result<Response, ApiError> {
        let method = req.method();
        if method == Method::Options {
            return self.preflight(&req);
        }
        let url = req.url().map_err(internal)?;
        #[cfg(feature = "test-faults")]
        if let Some(answer) = self.test_hook(&mut req, &url).await {
            return answer;
        }
        let path = url.path();
        if path == "/console" {
            // The page's relative links need the trailing slash.
            self.pattern = "/console/";
            let headers = Headers::new();
            let _ = headers.set("location", "/console/");
            return Ok(http::empty(308).with_headers(headers));
        }
        let reading = method == Method::Get || method == Method::Head;
        if let Some((content_type, text)) = crate::edge::console::asset(path).filter(|_| reading) {
            self.pattern = "/console/";
            let resp = http::json_text(200, text.to_owned());
            let _ = resp.headers().set("content-type", content_type);
            return Ok(resp);
        }
        if !route::is_api_path(path) {
            // Outside /v1: the health check, the home page and the API
            // documents, none of which needs a token.
            let route = route::route(method.as_ref(), path)?;
            self.pattern = route.pattern();
            let document = match route {
                Route::Home => (HTML, crate::edge::console::HOME),
                Route::OpenApi => (JSON, sesh_protocol::api::OPENAPI_JSON),
                Route::AsyncApi => (JSON, sesh_protocol::api::ASYNCAPI_JSON),
                _ => {
                    let health = Health {
                        status: "ok".into(),
                    };
                    return http::json(200, &health);
                }
            };
            let resp = http::json_text(200, document.1.to_owned());
            let _ = resp.headers().set("content-type", document.0);
            return Ok(resp);
        }
        // Every /v1 request is authenticated and charged before any other
        // work, routing included (CONTRACT.md section 7).
        let caller = self.admit(&req, &url).await?;
        let route = route::route(method.as_ref(), path)?;
        self.pattern = route.pattern();
        // Every routed request's body is read here, within the limit, also
        // where the route takes none: a body is 413 past 1 MiB on every
        // route however it is framed, and none is left unread behind an
        // answer.
        let body = http::read_body(&mut req, MAX_BODY_BYTES).await?;
        self.dispatch(route, req, body, &url, &caller).await
    }

    /// The caller of a `/v1` request: a verified token with a configured
    /// plan, charged one `api` unit unless it is a service token.
    async fn admit(&mut self, req: &Request, url: &Url) -> Result<Caller, ApiError> {
        let claims = self.authenticate(req, url, route::is_socket_path(url.path()))?;
        self.user = Some(claims.sub.clone());
        if self.config.plans.get(&claims.plan).is_none() {
            return Err(AuthError::InvalidClaim("plan").into());
        }
        let caller = Caller {
            user: claims.sub,
            plan: claims.plan,
            service: claims.service,
        };
        if !caller.service {
            self.charge(&caller).await?;
        }
        Ok(caller)
    }

    /// The typed call for a route, sent to the object that owns its id.
    async fn dispatch(
        &self,
        route: Route,
        req: Request,
        body: Vec<u8>,
        url: &Url,
        caller: &Caller,
    ) -> Result<Response, ApiError> {
        let hop = self.hop(caller);
        let me = caller.user.as_str();
        match route {
            Route::Health | Route::Home | Route::OpenApi | Route::AsyncApi => {
                Err(ApiError::NotFound("no such route".into()))
            }
            Route::CreateSession => self.create_session(body, caller).await,
            Route::GetSession(id) => self.read_session(&id, SessionCall::Get, caller).await,
            Route::SessionSocket(id) => self.upgrade(&id, &req, caller).await,
            Route::AppendPoints(id) => {
                self.read_session(&id, SessionCall::Append { body }, caller)
                    .await
            }
            Route::ReadPoints(id) => {
                let (after_seq, limit) = route::parse_read_query(
                    query(url, "afterSeq").as_deref(),
                    query(url, "limit").as_deref(),
                )?;
                let call = SessionCall::Read { after_seq, limit };
                self.read_session(&id, call, caller).await
            }
            Route::EndSession(id) => self.read_session(&id, SessionCall::End, caller).await,
            Route::SetMember(id, user_id) => {
                let call = SessionCall::SetMember { user_id, body };
                self.read_session(&id, call, caller).await
            }
            Route::RemoveMember(id, user_id) => {
                let call = SessionCall::RemoveMember { user_id };
                self.read_session(&id, call, caller).await
            }
            Route::Heartbeat => {
                let answer = hop.presence(me, PresenceCall::Heartbeat { body }).await?;
                presence_response(answer)
            }
            Route::GetPresence(user) => {
                let answer = hop.presence(&user, presence_get(&user)).await?;
                presence_response(answer)
            }
            Route::BatchPresence => self.batch_presence(url, caller).await,
            Route::GetQuota => {
                let plan = caller.plan.clone();
                http::quota_response(hop.quota(me, QuotaCall::Overview { plan }).await?)
            }
            Route::ListSessions => reads::list_sessions(self.env, url, caller).await,
            Route::UserMetrics(user) => reads::user_metrics(self.env, url, caller, &user).await,
            Route::CreateExport(user) => {
                may_export(caller, &user)?;
                let export_id = ids::new_session_id(now_ms());
                let call = ExportCall::Start {
                    export_id: export_id.clone(),
                    user_id: user,
                };
                hop.export(&export_id, call).await
            }
            Route::GetExport(user, export_id) => {
                may_export(caller, &user)?;
                let call = ExportCall::Status {
                    export_id: export_id.clone(),
                    user_id: user,
                };
                hop.export(&export_id, call).await
            }
            Route::DownloadExport(user, export_id) => {
                may_export(caller, &user)?;
                let call = ExportCall::Download {
                    export_id: export_id.clone(),
                    user_id: user,
                };
                hop.export(&export_id, call).await
            }
            Route::CheckQuota | Route::RefundQuota => {
                if !caller.service {
                    return Err(ApiError::Forbidden("a service token is required".into()));
                }
                let (subject, call) = quota_call(&route, &body)?;
                http::quota_response(hop.quota(&subject, call).await?)
            }
        }
    }

    /// A call to a session: its live object answers; once that object has
    /// no storage (the session ended and was retired), D1 does: reads from
    /// D1, ending again is the session as it ended, new points are 409.
    async fn read_session(
        &self,
        id: &str,
        call: SessionCall,
        caller: &Caller,
    ) -> Result<Response, ApiError> {
        // What to answer from D1, noted before the call moves (an append's
        // body is not copied).
        let retired = match &call {
            SessionCall::Read { after_seq, limit } => RetiredCall::Read {
                after_seq: *after_seq,
                limit: *limit,
            },
            SessionCall::Get => RetiredCall::Get,
            SessionCall::End => RetiredCall::End,
            _ => RetiredCall::Change,
        };
        let live = self.hop(caller).session(id, call).await?;
        if live.status_code() != 404 {
            return Ok(live);
        }
        // Only an ended record is a retired session; the live object's own
        // 404 (a member who is not one) is its answer.
        let ended = reads::ended_session(self.env, id).await?;
        let Some(s) = ended.filter(|s| s.status == SessionStatus::Ended) else {
            return Ok(live);
        };
        match retired_call(&s.owner_id, (&s.members, &s.viewers), &caller.user, retired)? {
            RetiredAnswer::Points { after_seq, limit } => {
                reads::ended_points(self.env, &s, after_seq, limit).await
            }
            RetiredAnswer::Session => reads::session_answer(self.env, &s).await,
        }
    }

    fn hop<'h>(&'h self, caller: &'h Caller) -> Hop<'h> {
        Hop {
            env: self.env,
            caller,
            request_id: Some(self.request_id),
        }
    }

    /// `POST /v1/sessions`: a valid body takes one `sessions` unit, given
    /// back when the session could not be created.
    async fn create_session(&self, body: Vec<u8>, caller: &Caller) -> Result<Response, ApiError> {
        let session_id = ids::new_session_id(now_ms());
        parse_optional_body::<CreateSession>(&body)?;
        self.charge_session(caller).await?;
        let created = self
            .hop(caller)
            .session(
                &session_id.clone(),
                SessionCall::Create { session_id, body },
            )
            .await;
        if !matches!(&created, Ok(r) if r.status_code() == 201) {
            let refund = QuotaCall::Refund {
                resource: Resource::Sessions,
                cost: 1,
            };
            let _ = self.hop(caller).quota(&caller.user, refund).await;
        }
        created
    }

    /// Test builds only: the D1 fault switch (`d1=fail` or `d1=slow`), the lifecycle hang
    /// (`/__test/hang?after=N` arms it, every call answers whether a run
    /// is stopped at it), a route that runs one SQL statement on D1, so
    /// integration tests can see what reached D1, and one that lists the
    /// `ARCHIVE` bucket (`?prefix=`) with each object's size and SHA-256.
    #[cfg(feature = "test-faults")]
    async fn test_hook(&self, req: &mut Request, url: &Url) -> Option<Result<Response, ApiError>> {
        match url.path() {
            "/__test/faults" => {
                let on = url.query_pairs().any(|(k, v)| k == "d1" && v == "fail");
                crate::faults::set_d1_failing(on);
                let slow = url.query_pairs().any(|(k, v)| k == "d1" && v == "slow");
                crate::faults::set_d1_slow(slow);
                let presence = url
                    .query_pairs()
                    .any(|(k, v)| k == "presence" && v == "fail");
                crate::faults::set_presence_failing(presence);
                Some(http::json(
                    200,
                    &serde_json::json!({"d1Failing": on, "d1Slow": slow, "presenceFailing": presence}),
                ))
            }
            "/__test/hang" => {
                let after = url
                    .query_pairs()
                    .find(|(k, _)| k == "after")
                    .and_then(|(_, v)| v.parse().ok());
                if let Some(calls) = after {
                    crate::faults::arm_lifecycle_hang(calls);
                }
                Some(http::json(
                    200,
                    &serde_json::json!({"hung": crate::faults::lifecycle_hung()}),
                ))
            }
            "/__test/d1" => Some(self.test_d1_query(req).await),
            "/__test/r2" => {
                let prefix = url
                    .query_pairs()
                    .find(|(k, _)| k == "prefix")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                Some(
                    match crate::lifecycle::test_listing(self.env, &prefix).await {
                        Ok(objects) => http::json(200, &serde_json::json!({ "objects": objects })),
                        Err(e) => Err(e),
                    },
                )
            }
            _ => None,
        }
    }

    /// A body of plain SQL runs as one statement and answers `{"rows"}`; a
    /// JSON `{"batch":[{"sql","params"}]}` runs as one D1 batch and answers
    /// `{"results":[rows...]}` (tests write rows the API cannot, such as
    /// sessions started months ago).
    #[cfg(feature = "test-faults")]
    async fn test_d1_query(&self, req: &mut Request) -> Result<Response, ApiError> {
        #[derive(serde::Deserialize)]
        struct Batch {
            batch: Vec<sesh_core::data::partition::Statement>,
        }
        let text = req.text().await.map_err(internal)?;
        let d1 = crate::db::database(self.env)?;
        if let Ok(b) = serde_json::from_str::<Batch>(&text) {
            let results = crate::db::batch(&d1, &b.batch).await?;
            return http::json(200, &serde_json::json!({ "results": results }));
        }
        let st = sesh_core::data::partition::Statement::new(text, Vec::new());
        let rows = crate::db::query(&d1, &st).await?;
        http::json(200, &serde_json::json!({ "rows": rows }))
    }

    /// Charges the caller's `api` unit for this request: 429 when denied,
    /// with nothing else done for it.
    async fn charge(&mut self, caller: &Caller) -> Result<(), ApiError> {
        let plan = caller.plan.clone();
        let answer = self
            .hop(caller)
            .quota(&caller.user, QuotaCall::Charge { plan })
            .await?;
        match answer {
            Ok(QuotaAnswer::Charged(c)) => {
                self.rate = Some(c.rate);
                if c.allowed {
                    Ok(())
                } else {
                    Err(ApiError::RateLimited {
                        retry_after_ms: c.retry_after_ms,
                    })
                }
            }
            Ok(other) => Err(ApiError::Internal(format!(
                "quota charge answered {other:?}"
            ))),
            Err(f) => Err(ApiError::Unavailable(format!(
                "quota charge answered {}",
                f.status
            ))),
        }
    }

    /// Takes one `sessions` unit of the caller's plan.
    async fn charge_session(&self, caller: &Caller) -> Result<(), ApiError> {
        let call = QuotaCall::Check {
            resource: Resource::Sessions,
            cost: 1,
            plan: caller.plan.clone(),
        };
        let answer = self.hop(caller).quota(&caller.user, call).await?;
        match answer {
            Ok(QuotaAnswer::Decided(Decided { decision: d, .. })) if d.allowed => Ok(()),
            // The quota object words the refusal.
            Ok(QuotaAnswer::Decided(Decided { decision: d, .. })) => Err(ApiError::QuotaExceeded {
                message: d
                    .error
                    .map_or_else(|| "sessions quota exceeded".into(), |e| e.message),
                retry_after_ms: d.retry_after_ms,
            }),
            Ok(other) => Err(ApiError::Internal(format!(
                "sessions quota answered {other:?}"
            ))),
            Err(f) => Err(ApiError::Unavailable(format!(
                "sessions quota answered {}",
                f.status
            ))),
        }
    }

    fn preflight(&self, req: &Request) -> Result<Response, ApiError> {
        let origin = self
            .origin
            .ok_or_else(|| ApiError::BadRequest("CORS preflight without Origin".into()))?;
        if !self.origins.allows(origin) {
            return Err(ApiError::Forbidden("origin not allowed".into()));
        }
        let headers = Headers::new();
        let _ = headers.set(
            "access-control-allow-methods",
            "GET, POST, PUT, DELETE, OPTIONS",
        );
        let asked = req
            .headers()
            .get("access-control-request-headers")
            .ok()
            .flatten();
        let _ = headers.set(
            "access-control-allow-headers",
            asked.as_deref().unwrap_or(CORS_ALLOW_HEADERS),
        );
        let _ = headers.set("access-control-max-age", "600");
        Ok(Response::empty()
            .map_err(internal)?
            .with_status(204)
            .with_headers(headers))
    }

    fn authenticate(&self, req: &Request, url: &Url, socket: bool) -> Result<Claims, ApiError> {
        let header = req.headers().get("authorization").ok().flatten();
        let token = match header.as_deref() {
            Some(h) => auth::bearer(h).ok_or(AuthError::Malformed)?.to_owned(),
            None if socket => query(url, "token")
                .ok_or(AuthError::MissingOnSocket)?
                .into_owned(),
            None => return Err(AuthError::Missing.into()),
        };
        let secret = self
            .config
            .secret
            .as_deref()
            .ok_or_else(|| ApiError::Internal("AUTH_SECRET is not configured".into()))?;
        Ok(auth::verify(&token, secret.as_bytes(), now_ms() / 1000)?)
    }

    /// A WebSocket upgrade goes to the session with the client's upgrade
    /// headers, less the token and anything posing as an internal header.
    /// A browser on a page not on the origin list (nor of this origin) is
    /// refused as CORS refuses it (an empty list allows none); clients that
    /// send no `Origin` are not browsers.
    async fn upgrade(
        &self,
        id: &str,
        req: &Request,
        caller: &Caller,
    ) -> Result<Response, ApiError> {
        if let Some(o) = self.origin {
            // A page of this very origin (the console) is not cross-origin.
            let same_origin = req
                .url()
                .is_ok_and(|u| u.origin().ascii_serialization().eq_ignore_ascii_case(o));
            if !self.origins.admits_socket(o, same_origin) {
                return Err(ApiError::Forbidden("origin not allowed".into()));
            }
        }
        let headers = req.headers().clone();
        let _ = headers.delete("authorization");
        http::strip_internal_headers(&headers);
        caller.write(&headers).map_err(internal)?;
        let _ = headers.set(H_REQUEST_ID, self.request_id);
        let call = Frame::encode(SessionCall::Socket)?;
        headers.set(H_CALL, &call.call).map_err(internal)?;
        let mut init = RequestInit::new();
        init.with_method(Method::Get).with_headers(headers);
        let inner = Request::new_with_init(http::OBJECT_URL, &init).map_err(internal)?;
        let resp = http::stub(self.env, Binding::Session, id)?
            .fetch_with_request(inner)
            .await
            .map_err(|e| ApiError::Unavailable(format!("session unreachable: {e}")))?;
        if resp.status_code() == 404 {
            // A retired session ended long ago: joining it is 409, as before.
            if let Some(s) = reads::ended_session(self.env, id).await? {
                let lists = (s.members.as_slice(), s.viewers.as_slice());
                retired_call(&s.owner_id, lists, &caller.user, RetiredCall::Change)?;
            }
        }
        Ok(resp)
    }

    /// `GET /v1/presence?users=a,b,c`: one request per read shard holding
    /// any of the users (not one per user), all in flight at once, answers
    /// in the order asked.
    async fn batch_presence(&self, url: &Url, caller: &Caller) -> Result<Response, ApiError> {
        let users = query(url, "users")
            .ok_or_else(|| ApiError::BadRequest("query parameter `users` is required".into()))?;
        let ids: Vec<String> = users
            .split(',')
            .map(|u| route::user_id(u.trim()))
            .collect::<Result<_, _>>()?;
        if ids.is_empty() || ids.len() > MAX_PRESENCE_BATCH {
            return Err(ApiError::BadRequest(format!(
                "`users` takes 1 to {MAX_PRESENCE_BATCH} ids"
            )));
        }
        // One call per read shard holding any of the users, all at once.
        let mut by_shard: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
        for u in &ids {
            by_shard.entry(shard_of(u)).or_default().push(u.clone());
        }
        let hop = self.hop(caller);
        let calls = by_shard.into_iter().map(|(n, users)| {
            let hop = &hop;
            async move {
                let call = PresenceCall::Batch {
                    users: users.clone(),
                };
                let views = match hop.presence(&shard_name(n), call).await? {
                    Ok(PresenceAnswer::Views(views)) => views,
                    Ok(other) => {
                        return Err(ApiError::Internal(format!(
                            "presence shard answered {other:?}"
                        )))
                    }
                    Err(f) => {
                        return Err(ApiError::Internal(format!(
                            "presence shard answered {}",
                            f.status
                        )))
                    }
                };
                Ok(users.into_iter().zip(views).collect::<Vec<_>>())
            }
        });
        let mut found: std::collections::HashMap<String, Presence> = Default::default();
        for r in join_all(calls).await {
            found.extend(r?);
        }
        let users: Vec<Option<&Presence>> = ids.iter().map(|u| found.get(u)).collect();
        http::json(200, &serde_json::json!({ "users": users }))
    }
}

/// Exports are for the user themself or a service token.
fn may_export(caller: &Caller, user: &str) -> Result<(), ApiError> {
    if caller.service || caller.user == user {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "exports are for the user themself or a service token".into(),
        ))
    }
}

/// The client's response to a user's presence (or the object's refusal).
fn presence_response(answered: Answered<PresenceAnswer>) -> Result<Response, ApiError> {
    match answered {
        Ok(PresenceAnswer::View(view)) => http::json(200, &view),
        Ok(other) => Err(ApiError::Internal(format!(
            "presence answered {other:?} to a client's call"
        ))),
        Err(f) => Ok(Answer::failure(f).into_response()),
    }
}

fn presence_get(user: &str) -> PresenceCall {
    PresenceCall::Get {
        user_id: user.to_owned(),
    }
}

/// The subject and call of a validated `/v1/quota/check` or `/refund` body.
fn quota_call(route: &Route, body: &[u8]) -> Result<(String, QuotaCall), ApiError> {
    if *route == Route::CheckQuota {
        let c = parse_body::<QuotaCheck>(body)?;
        let call = QuotaCall::Check {
            resource: c.resource,
            cost: c.cost.unwrap_or(DEFAULT_COST),
            plan: c.plan.unwrap_or_else(|| DEFAULT_PLAN.to_owned()),
        };
        Ok((c.subject, call))
    } else {
        let r = parse_body::<QuotaRefund>(body)?;
        let call = QuotaCall::Refund {
            resource: r.resource,
            cost: r.cost,
        };
        Ok((r.subject, call))
    }
}

/// A query parameter, decoded.
fn query<'u>(url: &'u Url, name: &str) -> Option<std::borrow::Cow<'u, str>> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// The gateway's configuration, read from the environment once per
/// isolate (vars and secrets only change with a new deployment, which
/// starts new isolates): reading a binding is a JS round trip each time.
struct Settings {
    secret: Option<String>,
    origins: AllowedOrigins,
    plans: Plans,
    log: LogMode,
}

/// Which requests get a log line (`REQUEST_LOG`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum LogMode {
    All,
    Errors,
    ServerErrors,
}

impl LogMode {
    fn logs(self, status: u16) -> bool {
        match self {
            LogMode::All => true,
            LogMode::Errors => status >= 400,
            LogMode::ServerErrors => status >= 500,
        }
    }
}

thread_local! {
    static SETTINGS: std::cell::RefCell<Option<std::rc::Rc<Settings>>> =
        const { std::cell::RefCell::new(None) };
}

fn settings(env: &Env) -> std::rc::Rc<Settings> {
    SETTINGS.with(|cell| {
        cell.borrow_mut()
            .get_or_insert_with(|| {
                std::rc::Rc::new(Settings {
                    secret: http::var(env, "AUTH_SECRET").filter(|s| !s.is_empty()),
                    origins: AllowedOrigins::parse(http::var(env, "ALLOWED_ORIGINS").as_deref()),
                    plans: http::plans(env),
                    log: match http::var(env, "REQUEST_LOG").as_deref() {
                        Some("all") => LogMode::All,
                        Some("off") => LogMode::ServerErrors,
                        // A line for every request costs more runtime CPU
                        // than a quota check itself (bench quota); the
                        // platform's invocation logs record every request.
                        _ => LogMode::Errors,
                    },
                })
            })
            .clone()
    })
}
