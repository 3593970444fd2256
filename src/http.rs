//! Small HTTP helpers shared by the gateway and the objects: JSON answers,
//! error answers, bounded body reads, and the identity headers the gateway
//! passes to objects.

use serde::Serialize;
use worker::{Env, Headers, Method, Request, RequestInit, Response, ResponseBuilder, State};

use crate::time::Millis;

use crate::error::ApiError;

/// Header carrying the verified caller's user id from the gateway to an
/// object. Objects are reachable only through the gateway, so it is trusted.
pub const H_USER: &str = "x-sesh-user";
/// Header carrying the verified caller's plan name.
pub const H_PLAN: &str = "x-sesh-plan";
/// Header set to `1` when the caller used a service token.
pub const H_SERVICE: &str = "x-sesh-service";
/// The request id, echoed to clients and passed to objects for their logs.
pub const H_REQUEST_ID: &str = "x-request-id";

/// The verified caller, as an object sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// User id (`sub`).
    pub user: String,
    /// Plan name.
    pub plan: String,
    /// Service token.
    pub service: bool,
}

impl Caller {
    /// The caller of a request one object makes to another on `user`'s
    /// behalf (trusted, like a service token).
    pub fn internal(user: &str) -> Caller {
        Caller {
            user: user.to_owned(),
            plan: "free".into(),
            service: true,
        }
    }

    /// Writes the caller into headers for an internal request.
    pub fn write(&self, h: &Headers) -> worker::Result<()> {
        h.set(H_USER, &self.user)?;
        h.set(H_PLAN, &self.plan)?;
        if self.service {
            h.set(H_SERVICE, "1")?;
        }
        Ok(())
    }

    /// Reads the caller from an internal request. A missing header means the
    /// request did not come through the gateway: a bug, hence `Internal`.
    pub fn read(req: &Request) -> Result<Caller, ApiError> {
        let h = req.headers();
        let user = h
            .get(H_USER)
            .ok()
            .flatten()
            .ok_or_else(|| ApiError::Internal("object request without caller".into()))?;
        let plan = h
            .get(H_PLAN)
            .ok()
            .flatten()
            .unwrap_or_else(|| "free".into());
        let service = h.get(H_SERVICE).ok().flatten().is_some_and(|v| v == "1");
        Ok(Caller {
            user,
            plan,
            service,
        })
    }
}

/// A JSON answer with the given status.
pub fn json<T: Serialize>(status: u16, body: &T) -> Result<Response, ApiError> {
    let text = serde_json::to_string(body).map_err(internal)?;
    Ok(json_text(status, text))
}

/// A JSON answer from already serialized text.
pub fn json_text(status: u16, text: String) -> Response {
    let headers = Headers::new();
    // Setting a valid header name and value on a fresh Headers cannot fail.
    let _ = headers.set("content-type", "application/json");
    ResponseBuilder::new()
        .with_status(status)
        .with_headers(headers)
        .fixed(text.into_bytes())
}

/// The JSON error answer for `e`, with `Allow` and `Retry-After` where they
/// apply. Infallible: an answer must always go out.
pub fn error_response(e: &ApiError) -> Response {
    let text = serde_json::to_string(&e.body()).unwrap_or_else(|_| {
        r#"{"error":{"code":"internal","message":"internal error"}}"#.to_owned()
    });
    let resp = json_text(e.status(), text);
    let headers = resp.headers();
    if let ApiError::MethodNotAllowed { allow } = e {
        let _ = headers.set("allow", &allow.join(", "));
    }
    if let Some(s) = e.retry_after_secs() {
        let _ = headers.set("retry-after", &s.to_string());
    }
    resp
}

/// Turns a handler result into a response.
pub fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(|e| {
        if let Some(d) = e.log_detail() {
            worker::console_error!("{}", serde_json::json!({"level": "error", "error": d}));
        }
        error_response(&e)
    })
}

/// Reads a request body of at most `limit` bytes: 413 beyond it, checked
/// against `Content-Length` first so large bodies are not read at all.
pub async fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = ApiError::PayloadTooLarge { limit };
    if let Ok(Some(len)) = req.headers().get("content-length") {
        match len.trim().parse::<usize>() {
            Ok(n) if n > limit => return Err(too_large),
            Ok(_) => {}
            Err(_) => return Err(ApiError::BadRequest("invalid Content-Length".into())),
        }
    }
    let bytes = req
        .bytes()
        .await
        .map_err(|e| ApiError::BadRequest(format!("could not read the request body: {e}")))?;
    if bytes.len() > limit {
        return Err(too_large);
    }
    Ok(bytes)
}

/// Maps a runtime error to an internal error (detail kept for the log).
pub fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// Sends an internal request to the object `name` of `binding` (the
/// gateway forwarding, or one object asking another): `path` is the
/// operation with its query, `caller` whom it is for, `request_id` passed on
/// for the object's logs. A transport failure is `Unavailable`.
#[allow(clippy::too_many_arguments)]
pub async fn call_object(
    env: &Env,
    binding: &str,
    name: &str,
    path: &str,
    method: Method,
    body: Option<&[u8]>,
    caller: &Caller,
    request_id: Option<&str>,
) -> Result<Response, ApiError> {
    let headers = Headers::new();
    caller.write(&headers).map_err(internal)?;
    if let Some(id) = request_id {
        let _ = headers.set(H_REQUEST_ID, id);
    }
    let mut init = RequestInit::new();
    init.with_method(method).with_headers(headers);
    if let Some(b) = body {
        init.with_body(Some(js_sys::Uint8Array::from(b).into()));
    }
    let req = Request::new_with_init(&format!("https://object{path}"), &init).map_err(internal)?;
    stub(env, binding, name)?
        .fetch_with_request(req)
        .await
        .map_err(|e| ApiError::Unavailable(format!("{binding} unreachable: {e}")))
}

thread_local! {
    // Durable Object namespaces by binding name, looked up once per isolate.
    static NAMESPACES: std::cell::RefCell<std::collections::HashMap<String, worker::ObjectNamespace>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The stub of the object `name` of `binding`.
pub fn stub(env: &Env, binding: &str, name: &str) -> Result<worker::Stub, ApiError> {
    let fail = |e: worker::Error| ApiError::Internal(format!("binding {binding}: {e}"));
    let ns = NAMESPACES.with(|cell| {
        if let Some(ns) = cell.borrow().get(binding) {
            return Ok(ns.clone());
        }
        let ns = env.durable_object(binding)?;
        cell.borrow_mut().insert(binding.to_owned(), ns.clone());
        Ok(ns)
    });
    ns.and_then(|ns| ns.id_from_name(name)?.get_stub())
        .map_err(fail)
}

/// Sets the object's alarm to the moment `at` (ms since the epoch). The
/// runtime's `setAlarm` also takes offsets; this always passes a moment.
pub async fn set_alarm(state: &State, at: Millis) -> Result<(), ApiError> {
    let moment = chrono::DateTime::from_timestamp_millis(at.max(0)).unwrap_or_default();
    state.storage().set_alarm(moment).await.map_err(internal)
}
