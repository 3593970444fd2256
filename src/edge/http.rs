//! Small HTTP helpers shared by the gateway and the objects: JSON answers,
//! error answers, bounded body reads, and the identity headers the gateway
//! passes to objects.

use serde::Serialize;
use wasm_bindgen::prelude::*;
use worker::{Env, Headers, Method, Request, RequestInit, Response, ResponseBuilder, State};

use crate::error::ApiError;
use sesh_core::calls::{
    self, Answered, Call, ExportCall, Failure, Frame, PresenceCall, QuotaAnswer, QuotaCall,
    SessionCall, H_CALL,
};
use sesh_core::config::{Plans, Tuning};
use sesh_core::quota::RateLimit;
use sesh_core::time::Millis;

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

/// An answer with no body.
pub fn empty(status: u16) -> Response {
    ResponseBuilder::new().with_status(status).empty()
}

/// A var or secret as a string, `None` when unset (`.dev.vars` and
/// `wrangler secret` values arrive as plain strings either way). The one
/// way configuration is read from the environment.
pub fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string())
}

/// The tuning knobs from the environment. A malformed var is logged and
/// its default used: an object must come up even when misconfigured.
pub fn tuning(env: &Env) -> Tuning {
    Tuning::from_vars(|k| var(env, k)).unwrap_or_else(|e| {
        worker::console_error!("{}", serde_json::json!({"level": "error", "error": e}));
        Tuning::default()
    })
}

/// The plan table from the environment, under the one policy for a
/// malformed `PLANS` ([`Plans::from_var`]): logged, and the defaults used.
pub fn plans(env: &Env) -> Plans {
    Plans::from_var(var(env, "PLANS").as_deref(), |e| {
        worker::console_error!("{}", serde_json::json!({"level": "error", "error": e}));
    })
}

/// Logs an error of a Durable Object's own work (an alarm, a socket), one
/// structured line; internal detail stays in the log.
pub fn log_error(object: &str, e: &ApiError) {
    let detail = e.log_detail().map_or_else(|| e.to_string(), str::to_owned);
    worker::console_error!(
        "{}",
        serde_json::json!({"level": "error", "object": object, "error": detail})
    );
}

/// The JSON error answer for `e`, with `Allow` and `Retry-After` where they
/// apply. Infallible: an answer must always go out.
pub fn error_response(e: &ApiError) -> Response {
    Answer::error(e).into_response()
}

/// Turns a handler result into a response.
pub fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(|e| {
        if e.log_detail().is_some() {
            log_error("-", &e);
        }
        error_response(&e)
    })
}

/// Reads and drops a refused body before its 413 leaves. A large body left
/// unread behind an early answer, or cancelled at once, wedged the local
/// runtime (wrangler's proxy waits on the upload it forwards): the next
/// request hung, or got "Your worker restarted mid-request".
async fn discard_body(req: &Request) {
    if let Some(stream) = req.inner().body() {
        let reader: worker::web_sys::ReadableStreamDefaultReader =
            stream.get_reader().unchecked_into();
        drain(&reader).await;
    }
}

/// Reads and drops the rest of a refused body, up to [`DRAIN_BYTES`], then
/// cancels what is left.
async fn drain(reader: &worker::web_sys::ReadableStreamDefaultReader) {
    use worker::wasm_bindgen_futures::JsFuture;
    let mut seen = 0usize;
    while seen < DRAIN_BYTES {
        let Ok(step) = JsFuture::from(reader.read()).await else {
            return;
        };
        if js_sys::Reflect::get(&step, &"done".into()).map_or(true, |d| d.as_bool().unwrap_or(true))
        {
            return;
        }
        seen += js_sys::Reflect::get(&step, &"value".into()).map_or(0, |v| {
            v.unchecked_into::<js_sys::Uint8Array>().length() as usize
        });
    }
    let _ = reader.cancel();
}

/// How much of a refused chunked body is read and dropped.
const DRAIN_BYTES: usize = 64 << 20;

/// Reads a request body of at most `limit` bytes: 413 beyond it. A
/// `Content-Length` over the limit is refused before anything is read; a
/// body without one (chunked) is read as a stream and refused as soon as it
/// passes the limit, so no oversized body is ever held whole. Either way the
/// rest of a refused body is read and dropped ([`drain`]), not kept.
pub async fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    use worker::wasm_bindgen_futures::JsFuture;
    use worker::web_sys::ReadableStreamDefaultReader;

    let too_large = ApiError::PayloadTooLarge { limit };
    let unreadable =
        |e: JsValue| ApiError::BadRequest(format!("could not read the request body: {e:?}"));
    if let Ok(Some(len)) = req.headers().get("content-length") {
        match len.trim().parse::<usize>() {
            Ok(n) if n > limit => {
                discard_body(req).await;
                return Err(too_large);
            }
            // A known length within the limit is read whole, in one step
            // (a stream costs a reader and a promise per chunk).
            Ok(_) => {
                return req.bytes().await.map_err(|e| {
                    ApiError::BadRequest(format!("could not read the request body: {e}"))
                })
            }
            Err(_) => return Err(ApiError::BadRequest("invalid Content-Length".into())),
        }
    }
    let Some(stream) = req.inner().body() else {
        return Ok(Vec::new());
    };
    // The runtime's own reader, so a refused body can be drained.
    let reader: ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    let mut body = Vec::new();
    loop {
        let step = JsFuture::from(reader.read()).await.map_err(unreadable)?;
        let done = js_sys::Reflect::get(&step, &"done".into()).map_err(unreadable)?;
        if done.as_bool().unwrap_or(true) {
            return Ok(body);
        }
        let chunk: js_sys::Uint8Array = js_sys::Reflect::get(&step, &"value".into())
            .map_err(unreadable)?
            .unchecked_into();
        let n = chunk.length() as usize;
        if body.len() + n > limit {
            drain(&reader).await;
            return Err(too_large);
        }
        let start = body.len();
        body.resize(start + n, 0);
        chunk.copy_to(&mut body[start..]);
    }
}

/// Removes every `x-sesh-*` header: those are the gateway's word to the
/// objects, and a client must never be able to speak it.
pub fn strip_internal_headers(headers: &Headers) {
    let names: Vec<String> = headers
        .keys()
        .filter(|k| k.to_ascii_lowercase().starts_with("x-sesh-"))
        .collect();
    for name in names {
        let _ = headers.delete(&name);
    }
}

/// Maps a runtime error to an internal error (detail kept for the log).
pub fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// An object's answer as plain data: status, headers and JSON text. It is
/// what an object hands back over RPC, and what becomes a runtime response
/// only where one is needed (an object's fetch, or the gateway's answer to
/// its client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Headers beside `content-type`.
    pub headers: Vec<(String, String)>,
    /// JSON text, if any.
    pub body: Option<String>,
}

impl Answer {
    /// A JSON answer.
    pub fn json<T: Serialize>(status: u16, body: &T) -> Result<Answer, ApiError> {
        let text = serde_json::to_string(body).map_err(internal)?;
        Ok(Answer::text(status, text))
    }

    /// A JSON answer from already serialized text.
    pub fn text(status: u16, text: String) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Some(text),
        }
    }

    /// The contract's JSON error for `e`, with `Allow` and `Retry-After`
    /// where they apply.
    pub fn error(e: &ApiError) -> Answer {
        let text = serde_json::to_string(&e.body()).unwrap_or_else(|_| {
            r#"{"error":{"code":"internal","message":"internal error"}}"#.to_owned()
        });
        let mut a = Answer::text(e.status(), text);
        if let ApiError::MethodNotAllowed { allow } = e {
            a.headers.push(("allow".into(), allow.join(", ")));
        }
        if let Some(s) = e.retry_after_secs() {
            a.headers.push(("retry-after".into(), s.to_string()));
        }
        a
    }

    /// The answer for an object's refusal.
    pub fn failure(f: Failure) -> Answer {
        let mut a = Answer::json(f.status, &f.body).unwrap_or_else(|e| Answer::error(&e));
        if let Some(s) = f.retry_after_secs {
            a.headers.push(("retry-after".into(), s.to_string()));
        }
        a
    }

    /// The runtime response.
    pub fn into_response(self) -> Response {
        let resp = match self.body {
            Some(text) => json_text(self.status, text),
            None => empty(self.status),
        };
        let headers = resp.headers();
        for (name, value) in &self.headers {
            let _ = headers.set(name, value);
        }
        resp
    }
}

/// An object's refusal of a call, as it travels back (internal detail
/// logged here, where it happened, never sent).
pub fn failure(e: &ApiError) -> Failure {
    if e.log_detail().is_some() {
        log_error("-", e);
    }
    Failure {
        status: e.status(),
        body: e.body(),
        retry_after_secs: e.retry_after_secs(),
    }
}

/// Sets the rate-limit headers of `rate`: the one place they are written.
pub fn set_rate(headers: &Headers, rate: &RateLimit) {
    let _ = headers.set("ratelimit-policy", &rate.policy());
    let _ = headers.set("ratelimit", &rate.limit());
}

/// The client's response to a quota answer the gateway passes on: the
/// overview, or a check's or refund's decision (429 when refused, with
/// `Retry-After` where a wait helps) with the resource's rate-limit
/// headers; a refusal as the object worded it.
pub fn quota_response(answered: Answered<QuotaAnswer>) -> Result<Response, ApiError> {
    match answered {
        Ok(QuotaAnswer::Overview(view)) => json(200, &view),
        Ok(QuotaAnswer::Decided(d)) => {
            let status = if d.decision.allowed { 200 } else { 429 };
            let resp = json(status, &d.decision)?;
            let headers = resp.headers();
            if let Some(rate) = &d.rate {
                set_rate(headers, rate);
            }
            if let Some(ms) = d.decision.retry_after_ms.filter(|_| !d.decision.allowed) {
                let _ = headers.set("retry-after", &ms.div_ceil(1000).max(1).to_string());
            }
            Ok(resp)
        }
        Ok(other) => Err(ApiError::Internal(format!(
            "quota answered {other:?} to a client's call"
        ))),
        Err(f) => Ok(Answer::failure(f).into_response()),
    }
}

#[wasm_bindgen(wasm_bindgen_futures = ::worker::wasm_bindgen_futures)]
extern "C" {
    /// The stub of an object class that serves JS RPC (declared as a
    /// `DurableObject` subclass in `src/entry.mjs`).
    #[wasm_bindgen(extends = js_sys::Object)]
    type RpcStub;

    // The one RPC method, `rpc(call, user, plan, service, payload)`: the
    // call's JSON, the caller, and the payload beside the JSON (a byte
    // array, or `undefined`). It answers the JSON of the answer.
    #[wasm_bindgen(method, catch, js_name = rpc)]
    async fn rpc(
        this: &RpcStub,
        call: &str,
        user: &str,
        plan: &str,
        service: bool,
        payload: JsValue,
    ) -> Result<JsValue, JsValue>;
}

/// A call received over RPC, decoded, and the caller, as [`Hop`] sent
/// them.
pub fn rpc_received<C: Call>(
    call: String,
    user: String,
    plan: String,
    service: bool,
    payload: Option<Vec<u8>>,
) -> Result<(C, Caller), ApiError> {
    let call = Frame { call, payload }.decode()?;
    let caller = Caller {
        user,
        plan,
        service,
    };
    Ok((call, caller))
}

/// An object's answer or refusal in its RPC form (the JSON of
/// [`Answered`]).
pub fn rpc_answer<A: Serialize>(r: Result<A, ApiError>) -> JsValue {
    JsValue::from_str(&answer_text(r))
}

/// An object's answer or refusal to a fetch that carried a typed call.
pub fn fetch_answer<A: Serialize>(r: Result<A, ApiError>) -> Response {
    json_text(200, answer_text(r))
}

fn answer_text<A: Serialize>(r: Result<A, ApiError>) -> String {
    let answered = r.map_err(|e| failure(&e));
    calls::encode_answer(&answered).unwrap_or_else(|e| {
        let f = failure(&ApiError::from(e));
        calls::encode_answer::<()>(&Err(f)).unwrap_or_default()
    })
}

/// The Durable Object classes, by their binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// `ACTIVE_SESSION`: one object per session id.
    Session,
    /// `PRESENCE`: one object per user id.
    Presence,
    /// `QUOTA`: one object per subject.
    Quota,
    /// `EXPORT`: one object per user export.
    Export,
}

impl Binding {
    /// The binding's name in `wrangler.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Binding::Session => "ACTIVE_SESSION",
            Binding::Presence => "PRESENCE",
            Binding::Quota => "QUOTA",
            Binding::Export => "EXPORT",
        }
    }
}

/// Whom an internal call is for and on whose behalf: the target object and
/// the caller, plus the request id for the object's logs.
pub struct Hop<'a> {
    /// The environment holding the bindings.
    pub env: &'a Env,
    /// The verified caller.
    pub caller: &'a Caller,
    /// The request id of the client request, if any.
    pub request_id: Option<&'a str>,
}

impl Hop<'_> {
    /// Asks the session object `id`; its answer is the client's.
    pub async fn session(&self, id: &str, call: SessionCall) -> Result<Response, ApiError> {
        self.call(Binding::Session, id, call).await
    }

    /// Asks the presence object of `user` (over RPC).
    pub async fn presence(
        &self,
        user: &str,
        call: PresenceCall,
    ) -> Result<Answered<<PresenceCall as Call>::Answer>, ApiError> {
        self.rpc(Binding::Presence, user, call).await
    }

    /// Asks the object of export `call`'s id; its answer is the client's.
    pub async fn export(&self, id: &str, call: ExportCall) -> Result<Response, ApiError> {
        self.call(Binding::Export, id, call).await
    }

    /// Asks the quota object of `subject` (over RPC).
    pub async fn quota(
        &self,
        subject: &str,
        call: QuotaCall,
    ) -> Result<Answered<QuotaAnswer>, ApiError> {
        self.rpc(Binding::Quota, subject, call).await
    }

    /// One call over JS RPC: no request or response objects, no body
    /// streams (a fetch to an object costs about three times the runtime
    /// CPU of an RPC call with the same data). A transport failure is
    /// `Unavailable`; an answer that does not decode is `Internal`.
    async fn rpc<C: Call>(
        &self,
        to: Binding,
        name: &str,
        call: C,
    ) -> Result<Answered<C::Answer>, ApiError> {
        let frame = Frame::encode(call)?;
        let stub: RpcStub = stub(self.env, to, name)?.into_rpc();
        let payload = frame
            .payload
            .as_deref()
            .map_or(JsValue::UNDEFINED, |b| js_sys::Uint8Array::from(b).into());
        let c = self.caller;
        let answer = stub
            .rpc(&frame.call, &c.user, &c.plan, c.service, payload)
            .await
            .map_err(|e| ApiError::Unavailable(format!("{} unreachable: {e:?}", to.name())))?;
        let text = answer
            .as_string()
            .ok_or_else(|| ApiError::Internal(format!("{} answered no text", to.name())))?;
        Ok(calls::decode_answer(&text)?)
    }

    /// Sends one internal request carrying `call`: its JSON in the
    /// [`H_CALL`] header, its payload as the body. A transport failure is
    /// `Unavailable`.
    async fn call<C: Call>(&self, to: Binding, name: &str, call: C) -> Result<Response, ApiError> {
        let frame = Frame::encode(call)?;
        let headers = Headers::new();
        self.caller.write(&headers).map_err(internal)?;
        headers.set(H_CALL, &frame.call).map_err(internal)?;
        if let Some(id) = self.request_id {
            let _ = headers.set(H_REQUEST_ID, id);
        }
        let mut init = RequestInit::new();
        init.with_headers(headers);
        match &frame.payload {
            Some(b) => {
                init.with_method(Method::Post)
                    .with_body(Some(js_sys::Uint8Array::from(b.as_slice()).into()));
            }
            None => {
                init.with_method(Method::Get);
            }
        }
        let req = Request::new_with_init(OBJECT_URL, &init).map_err(internal)?;
        stub(self.env, to, name)?
            .fetch_with_request(req)
            .await
            .map_err(|e| ApiError::Unavailable(format!("{} unreachable: {e}", to.name())))
    }
}

/// The URL of every internal fetch: the call is in [`H_CALL`], not here.
pub const OBJECT_URL: &str = "https://object/call";

/// The typed call an object received over a fetch: the JSON from the
/// [`H_CALL`] header, the payload from the body when the method carries
/// one.
pub async fn read_call<C: Call>(req: &mut Request) -> Result<C, ApiError> {
    let call = req
        .headers()
        .get(H_CALL)
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::Internal("object request without a call".into()))?;
    let payload = if req.method() == Method::Post {
        Some(req.bytes().await.map_err(internal)?)
    } else {
        None
    };
    Ok(Frame { call, payload }.decode()?)
}

thread_local! {
    // Durable Object namespaces by binding name, looked up once per isolate.
    static NAMESPACES: std::cell::RefCell<std::collections::HashMap<String, worker::ObjectNamespace>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The stub of the object `name` of `binding`.
pub fn stub(env: &Env, binding: Binding, name: &str) -> Result<worker::Stub, ApiError> {
    let binding = binding.name();
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

/// Makes sure the object's alarm fires no later than `at`: only ever
/// earlier, since a later wake is left to the alarm already set, which
/// re-arms for what is still pending when it fires. `armed` is the object's
/// note of the alarm it set (cleared when the alarm runs).
pub async fn ensure_alarm(
    state: &State,
    armed: &std::cell::Cell<Option<Millis>>,
    at: Millis,
) -> Result<(), ApiError> {
    if armed.get().is_none_or(|cur| at < cur) {
        set_alarm(state, at).await?;
        armed.set(Some(at));
    }
    Ok(())
}

/// Sets the object's alarm to the moment `at` (ms since the epoch). The
/// runtime's `setAlarm` also takes offsets; this always passes a moment.
pub async fn set_alarm(state: &State, at: Millis) -> Result<(), ApiError> {
    let moment = chrono::DateTime::from_timestamp_millis(at.max(0)).unwrap_or_default();
    state.storage().set_alarm(moment).await.map_err(internal)
}
