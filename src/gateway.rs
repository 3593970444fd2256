//! The Worker's fetch handler: request id, CORS, routing, authentication,
//! then one hop to the Durable Object that owns the request's id.

use futures_util::future::join_all;
use sesh_protocol::limits::{MAX_BODY_BYTES, MAX_PRESENCE_BATCH};
use sesh_protocol::{
    parse_body, CreateSession, Health, QuotaCheck, QuotaDecision, QuotaRefund, Resource,
};
use worker::{event, Context, Env, Headers, Method, Request, RequestInit, Response, Url};

use crate::auth::{self, AuthError, Claims};
use crate::config::{AllowedOrigins, Plans};
use crate::error::ApiError;
use crate::http::{self, internal, Caller, H_REQUEST_ID};
use crate::ids;
use crate::objects::quota::H_RETRY_AFTER_MS;
use crate::route::{self, Route};
use crate::time::now_ms;

/// Headers a browser may send cross-origin, and those it may read.
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
    if let Some((policy, limit)) = rate {
        let _ = headers.set("ratelimit-policy", &policy);
        let _ = headers.set("ratelimit", &limit);
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
    // The caller's `api` policy after the charge (`RateLimit-Policy`,
    // `RateLimit`), for the answer's headers.
    rate: Option<(String, String)>,
}

impl Gateway<'_> {
    async fn handle(&mut self, mut req: Request) -> Result<Response, ApiError> {
        let method = req.method();
        if method == Method::Options {
            return self.preflight(&req);
        }
        let url = req.url().map_err(internal)?;
        #[cfg(feature = "test-faults")]
        if url.path() == "/__test/faults" {
            let on = url.query_pairs().any(|(k, v)| k == "d1" && v == "fail");
            crate::faults::set_d1_failing(on);
            return http::json(200, &serde_json::json!({"d1Failing": on}));
        }
        #[cfg(feature = "test-faults")]
        if url.path() == "/__test/d1" {
            return self.test_d1_query(&mut req).await;
        }
        let path = url.path();
        if !route::is_api_path(path) {
            // Outside /v1 there is only the health check.
            let route = route::route(method.as_ref(), path)?;
            self.pattern = route.pattern();
            return http::json(
                200,
                &Health {
                    status: "ok".into(),
                },
            );
        }
        // Every /v1 request is authenticated and charged before any other
        // work, routing included.
        let claims = self.authenticate(&req, &url, route::is_socket_path(path))?;
        self.user = Some(claims.sub.clone());
        let known_plan = match &self.config.plans {
            Ok(plans) => plans.get(&claims.plan).is_some(),
            Err(e) => return Err(ApiError::Internal(format!("configuration: {e}"))),
        };
        if !known_plan {
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
        let route = route::route(method.as_ref(), path)?;
        self.pattern = route.pattern();
        if matches!(route, Route::SessionSocket(_)) {
            self.check_socket_origin()?;
        }

        match route {
            Route::Health => Err(ApiError::NotFound("no such route".into())),
            Route::CreateSession => {
                let id = ids::new_session_id(now_ms());
                let body = http::read_body(&mut req, MAX_BODY_BYTES).await?;
                // Only a valid request is charged a session.
                parse_body::<CreateSession>(&body)?;
                self.charge_session(&caller).await?;
                let q = format!("sessionId={id}");
                let created = self
                    .forward(
                        "ACTIVE_SESSION",
                        &id,
                        "/create",
                        Method::Post,
                        Some(body),
                        &caller,
                        Some(&q),
                    )
                    .await;
                if !matches!(&created, Ok(r) if r.status_code() == 201) {
                    // Not created: the session unit goes back.
                    self.refund_session(&caller).await;
                }
                created
            }
            Route::GetSession(id) => {
                self.forward(
                    "ACTIVE_SESSION",
                    &id,
                    "/get",
                    Method::Get,
                    None,
                    &caller,
                    None,
                )
                .await
            }
            Route::SessionSocket(id) => {
                let op = format!("/ws?sessionId={id}");
                self.forward_upgrade("ACTIVE_SESSION", &id, &op, &req, &caller)
                    .await
            }
            Route::AppendPoints(id) => {
                let body = http::read_body(&mut req, MAX_BODY_BYTES).await?;
                self.forward(
                    "ACTIVE_SESSION",
                    &id,
                    "/points",
                    Method::Post,
                    Some(body),
                    &caller,
                    None,
                )
                .await
            }
            Route::ReadPoints(id) => {
                self.forward(
                    "ACTIVE_SESSION",
                    &id,
                    "/points",
                    Method::Get,
                    None,
                    &caller,
                    url.query(),
                )
                .await
            }
            Route::EndSession(id) => {
                self.forward(
                    "ACTIVE_SESSION",
                    &id,
                    "/end",
                    Method::Post,
                    None,
                    &caller,
                    None,
                )
                .await
            }
            Route::Heartbeat => {
                let body = http::read_body(&mut req, MAX_BODY_BYTES).await?;
                let user = caller.user.clone();
                self.forward(
                    "PRESENCE",
                    &user,
                    "/heartbeat",
                    Method::Post,
                    Some(body),
                    &caller,
                    None,
                )
                .await
            }
            Route::GetPresence(user) => self.presence_of(&user, &caller).await,
            Route::BatchPresence => self.batch_presence(&url, &caller).await,
            Route::GetQuota => {
                let user = caller.user.clone();
                self.forward(
                    "QUOTA",
                    &user,
                    "/overview",
                    Method::Get,
                    None,
                    &caller,
                    None,
                )
                .await
            }
            Route::CheckQuota | Route::RefundQuota => {
                if !caller.service {
                    return Err(ApiError::Forbidden("a service token is required".into()));
                }
                let body = http::read_body(&mut req, MAX_BODY_BYTES).await?;
                // Validated here: the subject names the object to ask, and
                // the rest goes in the query (no body to read there).
                let (subject, op, q) = if route == Route::CheckQuota {
                    let c = parse_body::<QuotaCheck>(&body)?;
                    let q = check_query(c.resource, c.cost.unwrap_or(1), c.plan.as_deref());
                    (c.subject, "/check", q)
                } else {
                    let r = parse_body::<QuotaRefund>(&body)?;
                    let q = check_query(r.resource, r.cost, None);
                    (r.subject, "/refund", q)
                };
                self.forward("QUOTA", &subject, op, Method::Get, None, &caller, Some(&q))
                    .await
            }
        }
    }

    /// Test builds only: runs one SQL statement on D1 and answers its rows,
    /// so integration tests can see what reached D1.
    #[cfg(feature = "test-faults")]
    async fn test_d1_query(&self, req: &mut Request) -> Result<Response, ApiError> {
        let sql = req.text().await.map_err(internal)?;
        let db = self.env.d1("DB").map_err(internal)?;
        let result = db.prepare(sql).all().await.map_err(internal)?;
        let rows: Vec<serde_json::Value> = result.results().map_err(internal)?;
        http::json(200, &serde_json::json!({"rows": rows}))
    }

    /// Charges the caller's `api` unit for this request: 429 when denied,
    /// with nothing else done for it.
    async fn charge(&mut self, caller: &Caller) -> Result<(), ApiError> {
        let q = format!("plan={}", caller.plan);
        let resp = self
            .forward(
                "QUOTA",
                &caller.user,
                "/charge",
                Method::Get,
                None,
                caller,
                Some(&q),
            )
            .await?;
        let h = resp.headers();
        let header = |name: &str| h.get(name).ok().flatten();
        self.rate = header("ratelimit-policy").zip(header("ratelimit"));
        match resp.status_code() {
            204 => Ok(()),
            429 => Err(ApiError::RateLimited {
                retry_after_ms: header(H_RETRY_AFTER_MS).and_then(|v| v.parse().ok()),
            }),
            s => Err(ApiError::Unavailable(format!("quota charge answered {s}"))),
        }
    }

    /// Takes one `sessions` unit of the caller's plan.
    async fn charge_session(&self, caller: &Caller) -> Result<(), ApiError> {
        let q = check_query(Resource::Sessions, 1, Some(&caller.plan));
        let mut resp = self
            .forward(
                "QUOTA",
                &caller.user,
                "/check",
                Method::Get,
                None,
                caller,
                Some(&q),
            )
            .await?;
        match resp.status_code() {
            200 => Ok(()),
            429 => {
                let d: QuotaDecision = resp.json().await.map_err(internal)?;
                Err(ApiError::QuotaExceeded {
                    message: "monthly sessions quota exceeded".into(),
                    retry_after_ms: d.retry_after_ms,
                })
            }
            s => Err(ApiError::Unavailable(format!(
                "sessions quota answered {s}"
            ))),
        }
    }

    async fn refund_session(&self, caller: &Caller) {
        let q = check_query(Resource::Sessions, 1, None);
        let _ = self
            .forward(
                "QUOTA",
                &caller.user,
                "/refund",
                Method::Get,
                None,
                caller,
                Some(&q),
            )
            .await;
    }

    fn preflight(&self, req: &Request) -> Result<Response, ApiError> {
        let origin = self
            .origin
            .ok_or_else(|| ApiError::BadRequest("CORS preflight without Origin".into()))?;
        if !self.origins.allows(origin) {
            return Err(ApiError::Forbidden("origin not allowed".into()));
        }
        let headers = Headers::new();
        let _ = headers.set("access-control-allow-methods", "GET, POST, OPTIONS");
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

    /// A browser opening a socket from a page not on the list is refused,
    /// when the list is configured. Clients that send no `Origin` (native
    /// apps, servers) are not browsers and are not subject to it.
    fn check_socket_origin(&self) -> Result<(), ApiError> {
        match self.origin {
            Some(o) if self.origins.is_configured() && !self.origins.allows(o) => {
                Err(ApiError::Forbidden("origin not allowed".into()))
            }
            _ => Ok(()),
        }
    }

    fn authenticate(&self, req: &Request, url: &Url, socket: bool) -> Result<Claims, ApiError> {
        let header = req.headers().get("authorization").ok().flatten();
        let token = match header.as_deref() {
            Some(h) => auth::bearer(h).ok_or(AuthError::Malformed)?.to_owned(),
            None if socket => url
                .query_pairs()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
                .ok_or(AuthError::Missing)?,
            None => return Err(AuthError::Missing.into()),
        };
        let secret = self
            .config
            .secret
            .as_deref()
            .ok_or_else(|| ApiError::Internal("AUTH_SECRET is not configured".into()))?;
        Ok(auth::verify(&token, secret.as_bytes(), now_ms() / 1000)?)
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        binding: &str,
        name: &str,
        op: &str,
        method: Method,
        body: Option<Vec<u8>>,
        caller: &Caller,
        query: Option<&str>,
    ) -> Result<Response, ApiError> {
        let path = match query {
            Some(q) => format!("{op}?{q}"),
            None => op.to_owned(),
        };
        http::call_object(
            self.env,
            binding,
            name,
            &path,
            method,
            body.as_deref(),
            caller,
            Some(self.request_id),
        )
        .await
    }

    async fn forward_upgrade(
        &self,
        binding: &str,
        name: &str,
        op: &str,
        req: &Request,
        caller: &Caller,
    ) -> Result<Response, ApiError> {
        let headers = req.headers().clone();
        // The token has done its job here; objects never see it.
        let _ = headers.delete("authorization");
        caller.write(&headers).map_err(internal)?;
        let _ = headers.set(H_REQUEST_ID, self.request_id);
        let mut init = RequestInit::new();
        init.with_method(Method::Get).with_headers(headers);
        let inner =
            Request::new_with_init(&format!("https://object{op}"), &init).map_err(internal)?;
        self.stub(binding, name)?
            .fetch_with_request(inner)
            .await
            .map_err(|e| ApiError::Unavailable(format!("{binding} unreachable: {e}")))
    }

    fn stub(&self, binding: &str, name: &str) -> Result<worker::Stub, ApiError> {
        http::stub(self.env, binding, name)
    }

    async fn presence_of(&self, user: &str, caller: &Caller) -> Result<Response, ApiError> {
        let q = format!("userId={user}");
        self.forward(
            "PRESENCE",
            user,
            "/get",
            Method::Get,
            None,
            caller,
            Some(&q),
        )
        .await
    }

    /// `GET /v1/presence?users=a,b,c`: one request per user, all in flight
    /// at once, answers in the order asked.
    async fn batch_presence(&self, url: &Url, caller: &Caller) -> Result<Response, ApiError> {
        let users = url
            .query_pairs()
            .find(|(k, _)| k == "users")
            .map(|(_, v)| v.into_owned())
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
        let calls = ids.iter().map(|u| async move {
            let mut resp = self.presence_of(u, caller).await?;
            if resp.status_code() != 200 {
                return Err(ApiError::Internal(format!(
                    "presence answered {}",
                    resp.status_code()
                )));
            }
            resp.text().await.map_err(internal)
        });
        // Each object answers a presence object as JSON already: the batch
        // is their texts in the order asked, not parsed and written again.
        let mut text = String::from("{\"users\":[");
        for (i, r) in join_all(calls).await.into_iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&r?);
        }
        text.push_str("]}");
        Ok(http::json_text(200, text))
    }
}

/// The query of an internal quota check or refund.
fn check_query(resource: Resource, cost: u64, plan: Option<&str>) -> String {
    match plan {
        Some(p) => format!("resource={}&cost={cost}&plan={p}", resource.as_str()),
        None => format!("resource={}&cost={cost}", resource.as_str()),
    }
}

/// The gateway's configuration, read from the environment once per
/// isolate (vars and secrets only change with a new deployment, which
/// starts new isolates): reading a binding is a JS round trip each time.
struct Settings {
    secret: Option<String>,
    origins: AllowedOrigins,
    plans: Result<Plans, String>,
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
                    secret: var(env, "AUTH_SECRET").filter(|s| !s.is_empty()),
                    origins: AllowedOrigins::parse(var(env, "ALLOWED_ORIGINS").as_deref()),
                    plans: Plans::parse(var(env, "PLANS").as_deref()),
                    log: match var(env, "REQUEST_LOG").as_deref() {
                        Some("off") => LogMode::ServerErrors,
                        Some("errors") => LogMode::Errors,
                        _ => LogMode::All,
                    },
                })
            })
            .clone()
    })
}

/// A var or secret as a string (`.dev.vars` and `wrangler secret` values
/// arrive as plain strings either way).
fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string())
}
