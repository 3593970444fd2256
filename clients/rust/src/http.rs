//! The HTTP side: every route of the contract with its typed answer, and
//! pagers over the session list and a session's points.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sesh_protocol::{
    CreateSession, Health, Heartbeat, MetricsAnswer, NewPoint, PointsAccepted, PointsBatch,
    PointsPage, Presence, PresenceBatch, QuotaCheck, QuotaDecision, QuotaOverview, QuotaRefund,
    Session, SessionList, SessionStatus, SessionSummary, StoredPoint,
};

use crate::error::Error;
use crate::machine::LiveConfig;

/// A future the client can keep across awaits on its runtime (`Send` on
/// native, where tasks may move between threads).
#[cfg(not(target_arch = "wasm32"))]
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
/// A future the client can keep across awaits on its runtime (the browser
/// has one thread).
#[cfg(target_arch = "wasm32")]
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + 'static>>;

/// `Send` where the runtime has threads; nothing in the browser.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync> MaybeSend for T {}
/// `Send` where the runtime has threads; nothing in the browser.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T> MaybeSend for T {}

#[cfg(not(target_arch = "wasm32"))]
type TokenFn = dyn Fn() -> BoxFuture<Result<String, Error>> + Send + Sync;
#[cfg(target_arch = "wasm32")]
type TokenFn = dyn Fn() -> BoxFuture<Result<String, Error>>;

/// Shared ownership across tasks: atomic where tasks may run on other
/// threads, plain in the browser's single thread.
#[cfg(not(target_arch = "wasm32"))]
type Shared<T> = std::sync::Arc<T>;
#[cfg(target_arch = "wasm32")]
type Shared<T> = std::rc::Rc<T>;

/// A client of one Sesh server. Cheap to clone; clones share the
/// connection pool and the token provider.
#[derive(Clone)]
pub struct Client {
    inner: Shared<Inner>,
}

struct Inner {
    base: String,
    http: reqwest::Client,
    token: Shared<TokenFn>,
    live: LiveConfig,
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    base: String,
    token: Shared<TokenFn>,
    live: LiveConfig,
}

impl ClientBuilder {
    /// Uses this token for every request and connect.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token: String = token.into();
        self.token = Shared::new(move || {
            let t = token.clone();
            Box::pin(async move { Ok(t) })
        });
        self
    }

    /// Asks `provider` for a token before each request and each (re)connect
    /// of a live session, so that an expired token is replaced in time.
    /// The provider should cache a token while it is valid.
    pub fn token_provider<F, Fut>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + MaybeSend + 'static,
        Fut: Future<Output = Result<String, Error>> + MaybeSendFuture + 'static,
    {
        self.token = Shared::new(move || Box::pin(provider()));
        self
    }

    /// Reconnect, keep-alive and replay settings of live sessions joined
    /// with [`Client::join`].
    pub fn live_config(mut self, live: LiveConfig) -> Self {
        self.live = live;
        self
    }

    /// The client.
    pub fn build(self) -> Client {
        Client {
            inner: Shared::new(Inner {
                base: self.base.trim_end_matches('/').to_owned(),
                http: reqwest::Client::new(),
                token: self.token,
                live: self.live,
            }),
        }
    }
}

/// `Send` for futures where the runtime has threads; nothing in the
/// browser.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSendFuture: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send> MaybeSendFuture for T {}
/// `Send` for futures where the runtime has threads; nothing in the
/// browser.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSendFuture {}
#[cfg(target_arch = "wasm32")]
impl<T> MaybeSendFuture for T {}

/// Filters of `GET /v1/sessions`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Sessions started at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Sessions started before this time (RFC 3339).
    pub to: Option<String>,
    /// Only sessions in this state.
    pub status: Option<SessionStatus>,
    /// Page size (at most 100).
    pub limit: Option<u32>,
}

/// Parameters of `GET /v1/users/{id}/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsQuery {
    /// `hour`, `day`, `week` or `month`.
    pub granularity: String,
    /// Buckets starting at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Buckets starting before this time (RFC 3339).
    pub to: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
}

impl Default for MetricsQuery {
    fn default() -> Self {
        MetricsQuery {
            granularity: "day".to_owned(),
            from: None,
            to: None,
            kind: None,
        }
    }
}

/// A user export (`POST /v1/users/{id}/exports` and its status).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Export {
    /// The export's id.
    pub id: String,
    /// `pending`, `running`, `done` or `failed`.
    pub status: String,
    /// Sessions written so far.
    #[serde(default)]
    pub sessions: Option<u64>,
    /// Points written so far.
    #[serde(default)]
    pub points: Option<u64>,
    /// Size of the file once done.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// SHA-256 of the file once done (hex).
    #[serde(default)]
    pub sha256: Option<String>,
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8787`)
    /// that sends `token`.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Client {
        Client::builder(base).token(token).build()
    }

    /// A builder for a client of the server at `base`.
    pub fn builder(base: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base.into(),
            token: Shared::new(|| Box::pin(async { Err(Error::new("unauthorized", "no token")) })),
            live: LiveConfig::default(),
        }
    }

    /// The server's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.inner.base
    }

    /// The live settings given to the builder.
    pub fn live_config(&self) -> &LiveConfig {
        &self.inner.live
    }

    /// A token from the provider.
    pub async fn token(&self) -> Result<String, Error> {
        (self.inner.token)().await
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, Error> {
        self.call(Method::GET, "/health".to_owned(), None::<&()>, false)
            .await
    }

    /// `POST /v1/sessions`: a new session, owned by the caller.
    pub async fn create_session(&self, body: &CreateSession) -> Result<Session, Error> {
        self.call(Method::POST, "/v1/sessions".to_owned(), Some(body), true)
            .await
    }

    /// `GET /v1/sessions/{id}`: the session with its live participants.
    pub async fn session(&self, id: &str) -> Result<Session, Error> {
        self.call(
            Method::GET,
            format!("/v1/sessions/{}", seg(id)),
            None::<&()>,
            true,
        )
        .await
    }

    /// `POST /v1/sessions/{id}/end` (owner only).
    pub async fn end_session(&self, id: &str) -> Result<Session, Error> {
        let path = format!("/v1/sessions/{}/end", seg(id));
        self.call(Method::POST, path, None::<&()>, true).await
    }

    /// `POST /v1/sessions/{id}/points`: up to 100 points; their `seq`s.
    pub async fn post_points(&self, id: &str, points: Vec<NewPoint>) -> Result<Vec<u64>, Error> {
        let path = format!("/v1/sessions/{}/points", seg(id));
        let a: PointsAccepted = self
            .call(Method::POST, path, Some(&PointsBatch { points }), true)
            .await?;
        Ok(a.seqs)
    }

    /// `GET /v1/sessions/{id}/points?afterSeq=&limit=`: one page.
    pub async fn points_page(
        &self,
        id: &str,
        after_seq: u64,
        limit: Option<u32>,
    ) -> Result<PointsPage, Error> {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("afterSeq", &after_seq.to_string());
        if let Some(l) = limit {
            q.append_pair("limit", &l.to_string());
        }
        let path = format!("/v1/sessions/{}/points?{}", seg(id), q.finish());
        self.call(Method::GET, path, None::<&()>, true).await
    }

    /// Every point of a session after `after_seq`, page by page.
    pub fn points(&self, id: &str, after_seq: u64) -> PointsPager {
        PointsPager {
            client: self.clone(),
            session: id.to_owned(),
            after_seq,
            limit: None,
            done: false,
        }
    }

    /// `GET /v1/sessions?from=&to=&status=&limit=&cursor=`: one page.
    pub async fn sessions_page(
        &self,
        query: &ListQuery,
        cursor: Option<&str>,
    ) -> Result<SessionList, Error> {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(v) = &query.from {
            q.append_pair("from", v);
        }
        if let Some(v) = &query.to {
            q.append_pair("to", v);
        }
        if let Some(v) = query.status {
            q.append_pair("status", v.as_str());
        }
        if let Some(v) = query.limit {
            q.append_pair("limit", &v.to_string());
        }
        if let Some(v) = cursor {
            q.append_pair("cursor", v);
        }
        let q = q.finish();
        let path = if q.is_empty() {
            "/v1/sessions".to_owned()
        } else {
            format!("/v1/sessions?{q}")
        };
        self.call(Method::GET, path, None::<&()>, true).await
    }

    /// The caller's sessions matching `query`, newest first, following
    /// `nextCursor` from page to page.
    pub fn sessions(&self, query: ListQuery) -> SessionPager {
        SessionPager {
            client: self.clone(),
            query,
            cursor: None,
            done: false,
        }
    }

    /// `POST /v1/presence/heartbeat`: the caller's own presence.
    pub async fn heartbeat(&self, body: &Heartbeat) -> Result<Presence, Error> {
        let path = "/v1/presence/heartbeat".to_owned();
        self.call(Method::POST, path, Some(body), true).await
    }

    /// `GET /v1/presence/{userId}`.
    pub async fn presence(&self, user: &str) -> Result<Presence, Error> {
        let path = format!("/v1/presence/{}", seg(user));
        self.call(Method::GET, path, None::<&()>, true).await
    }

    /// `GET /v1/presence?users=a,b,c` (at most 100), in the order asked.
    pub async fn presence_of(&self, users: &[&str]) -> Result<Vec<Presence>, Error> {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("users", &users.join(","))
            .finish();
        let b: PresenceBatch = self
            .call(Method::GET, format!("/v1/presence?{q}"), None::<&()>, true)
            .await?;
        Ok(b.users)
    }

    /// `GET /v1/quota`: the caller's plan and usage.
    pub async fn quota(&self) -> Result<QuotaOverview, Error> {
        self.call(Method::GET, "/v1/quota".to_owned(), None::<&()>, true)
            .await
    }

    /// `POST /v1/quota/check` (service tokens): the decision, allowed or
    /// not (a refusal is an answer here, not an error).
    pub async fn quota_check(&self, body: &QuotaCheck) -> Result<QuotaDecision, Error> {
        let (status, text, retry) = self
            .send(Method::POST, "/v1/quota/check", Some(body), true)
            .await?;
        if status == 200 || status == 429 {
            if let Ok(d) = serde_json::from_str::<QuotaDecision>(&text) {
                return Ok(d);
            }
        }
        Err(Error::from_answer(status, &text, retry))
    }

    /// `POST /v1/quota/refund` (service tokens): gives units back.
    pub async fn quota_refund(&self, body: &QuotaRefund) -> Result<(), Error> {
        let (status, text, retry) = self
            .send(Method::POST, "/v1/quota/refund", Some(body), true)
            .await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(Error::from_answer(status, &text, retry))
        }
    }

    /// `GET /v1/users/{userId}/metrics`.
    pub async fn metrics(&self, user: &str, query: &MetricsQuery) -> Result<MetricsAnswer, Error> {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("granularity", &query.granularity);
        if let Some(v) = &query.from {
            q.append_pair("from", v);
        }
        if let Some(v) = &query.to {
            q.append_pair("to", v);
        }
        if let Some(v) = &query.kind {
            q.append_pair("kind", v);
        }
        let path = format!("/v1/users/{}/metrics?{}", seg(user), q.finish());
        self.call(Method::GET, path, None::<&()>, true).await
    }

    /// `POST /v1/users/{userId}/exports`: starts an export.
    pub async fn create_export(&self, user: &str) -> Result<Export, Error> {
        let path = format!("/v1/users/{}/exports", seg(user));
        self.call(Method::POST, path, None::<&()>, true).await
    }

    /// `GET /v1/users/{userId}/exports/{id}`.
    pub async fn export(&self, user: &str, id: &str) -> Result<Export, Error> {
        let path = format!("/v1/users/{}/exports/{}", seg(user), seg(id));
        self.call(Method::GET, path, None::<&()>, true).await
    }

    /// `GET /v1/users/{userId}/exports/{id}/download`: the gzip'd NDJSON.
    pub async fn download_export(&self, user: &str, id: &str) -> Result<Vec<u8>, Error> {
        let path = format!("/v1/users/{}/exports/{}/download", seg(user), seg(id));
        let resp = self.request(Method::GET, &path, None::<&()>, true).await?;
        let status = resp.status().as_u16();
        let retry = retry_after(resp.headers());
        if (200..300).contains(&status) {
            Ok(resp.bytes().await?.to_vec())
        } else {
            let text = resp.text().await.unwrap_or_default();
            Err(Error::from_answer(status, &text, retry))
        }
    }

    /// The WebSocket URL of a session with `?token=`.
    pub(crate) fn ws_url(&self, session: &str, token: &str) -> String {
        let base = &self.inner.base;
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.clone()
        };
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .finish();
        format!("{ws}/v1/sessions/{}/ws?{q}", seg(session))
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<&B>,
        auth: bool,
    ) -> Result<T, Error> {
        let (status, text, retry) = self.send(method, &path, body, auth).await?;
        if !(200..300).contains(&status) {
            return Err(Error::from_answer(status, &text, retry));
        }
        serde_json::from_str(&text).map_err(|e| Error::decode(format!("{path}: {e}")))
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        auth: bool,
    ) -> Result<(u16, String, Option<Duration>), Error> {
        let resp = self.request(method, path, body, auth).await?;
        let status = resp.status().as_u16();
        let retry = retry_after(resp.headers());
        let text = resp.text().await?;
        Ok((status, text, retry))
    }

    async fn request<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        auth: bool,
    ) -> Result<reqwest::Response, Error> {
        let mut rb = self
            .inner
            .http
            .request(method, format!("{}{path}", self.inner.base));
        if auth {
            rb = rb.bearer_auth(self.token().await?);
        }
        if let Some(b) = body {
            let text = serde_json::to_string(b).map_err(Error::decode)?;
            rb = rb.header("content-type", "application/json").body(text);
        }
        Ok(rb.send().await?)
    }
}

/// `Retry-After` in seconds.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The caller's sessions, page by page (from [`Client::sessions`]).
pub struct SessionPager {
    client: Client,
    query: ListQuery,
    cursor: Option<String>,
    done: bool,
}

impl SessionPager {
    /// The next page, or `None` once the list is exhausted.
    pub async fn next_page(&mut self) -> Result<Option<Vec<SessionSummary>>, Error> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .client
            .sessions_page(&self.query, self.cursor.as_deref())
            .await?;
        self.cursor = page.next_cursor;
        self.done = self.cursor.is_none();
        Ok(Some(page.sessions))
    }

    /// Every remaining session.
    pub async fn all(mut self) -> Result<Vec<SessionSummary>, Error> {
        let mut out = Vec::new();
        while let Some(page) = self.next_page().await? {
            out.extend(page);
        }
        Ok(out)
    }
}

/// A session's points after some `seq`, page by page (from
/// [`Client::points`]).
pub struct PointsPager {
    client: Client,
    session: String,
    after_seq: u64,
    limit: Option<u32>,
    done: bool,
}

impl PointsPager {
    /// Pages of at most `limit` points (the server's default otherwise).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The `seq` the next page starts after.
    pub fn after_seq(&self) -> u64 {
        self.after_seq
    }

    /// The next page, or `None` once the points up to the session's
    /// `lastSeq` (as of the last page) are read.
    pub async fn next_page(&mut self) -> Result<Option<Vec<StoredPoint>>, Error> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .client
            .points_page(&self.session, self.after_seq, self.limit)
            .await?;
        if let Some(last) = page.points.last() {
            self.after_seq = last.seq;
        }
        self.done = page.points.is_empty() || self.after_seq >= page.last_seq;
        if page.points.is_empty() {
            return Ok(None);
        }
        Ok(Some(page.points))
    }

    /// Every remaining point.
    pub async fn all(mut self) -> Result<Vec<StoredPoint>, Error> {
        let mut out = Vec::new();
        while let Some(page) = self.next_page().await? {
            out.extend(page);
        }
        Ok(out)
    }
}
