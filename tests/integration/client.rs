//! A small client for the tests: the shared server's address, HTTP calls
//! that return status, headers and JSON, and assertions on error shapes.

use std::sync::OnceLock;

use serde_json::Value;

static BASE: OnceLock<String> = OnceLock::new();

/// Records the shared server's base URL.
pub fn set_base(base: &str) {
    let _ = BASE.set(base.to_owned());
}

/// The shared server's base URL.
pub fn base() -> &'static str {
    BASE.get().expect("shared server started")
}

/// Runs a test future on a fresh runtime.
pub fn block_on<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A test: an `async fn` with no arguments, boxed.
pub type TestFn = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// The `TESTS` table of a module: `(module::name, test)` for each of the
/// named `async fn`s.
#[macro_export]
macro_rules! test_list {
    ($module:literal, $($name:ident),* $(,)?) => {
        &[$((concat!($module, "::", stringify!($name)), || Box::pin($name()))),*]
    };
}

/// An answer: status, headers and the body parsed as JSON (`Null` if empty).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the contract's error shape with this status and code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "status; body: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "errors are JSON"
        );
        assert_eq!(self.body["error"]["code"], code, "body: {}", self.text);
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error has a message: {}",
            self.text
        );
        assert_eq!(
            self.body.as_object().map(|o| o.len()),
            Some(1),
            "only `error` at top level: {}",
            self.text
        );
    }
}

// A client per call: pooled connections belong to the runtime that opened
// them, and every test runs on its own runtime.
fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Sends a request to `path` on the shared server.
pub async fn call(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Answer {
    call_at(base(), method, path, token, body, headers).await
}

/// Sends a request to `path` on the server at `base`.
pub async fn call_at(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut attempt = 0;
    let (status, headers, text) = loop {
        let mut rb = client().request(method.clone(), format!("{base}{path}"));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = &body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.clone());
        }
        let resp = rb.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body read");
        // wrangler dev's proxy answers this (not the Worker) when its
        // runtime was swapped while a request that it does not retry
        // itself (not GET or HEAD) was on its way; it asks to send again.
        attempt += 1;
        if status == 503 && text.starts_with(PROXY_RESTARTED) && attempt < 5 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        }
        break (status, headers, text);
    };
    crate::documents::check_answer(method.as_str(), path, status, &text);
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"))
    };
    Answer {
        status,
        headers,
        body,
        text,
    }
}

/// The start of wrangler dev's proxy answer to a request cut off by a
/// swap of its runtime.
pub const PROXY_RESTARTED: &str = "Your worker restarted mid-request.";

/// GET with a token.
pub async fn get(path: &str, token: &str) -> Answer {
    call("GET", path, Some(token), None, &[]).await
}

/// POST a JSON value with a token.
pub async fn post(path: &str, token: &str, body: &Value) -> Answer {
    call(
        "POST",
        path,
        Some(token),
        Some(body.to_string().into_bytes()),
        &[],
    )
    .await
}

/// Creates a session owned by the token's user; returns its id.
pub async fn create_session_at(base: &str, token: &str, members: &[&str]) -> String {
    let body = serde_json::json!({ "members": members })
        .to_string()
        .into_bytes();
    let a = call_at(base, "POST", "/v1/sessions", Some(token), Some(body), &[]).await;
    assert_eq!(a.status, 201, "create: {}", a.text);
    a.body["id"].as_str().expect("session id").to_owned()
}

/// Runs one SQL statement on local D1 through the test-build route.
pub async fn d1_at(base: &str, sql: &str) -> Vec<Value> {
    let a = call_at(
        base,
        "POST",
        "/__test/d1",
        None,
        Some(sql.as_bytes().to_vec()),
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "d1 query: {}", a.text);
    a.body["rows"].as_array().cloned().unwrap_or_default()
}

/// Runs statements as one D1 batch through the test-build route; answers
/// each statement's rows.
pub async fn d1_batch_at(
    base: &str,
    stmts: &[sesh_core::data::partition::Statement],
) -> Vec<Vec<Value>> {
    let body = serde_json::json!({ "batch": stmts })
        .to_string()
        .into_bytes();
    let a = call_at(base, "POST", "/__test/d1", None, Some(body), &[]).await;
    assert_eq!(a.status, 200, "d1 batch: {}", a.text);
    serde_json::from_value(a.body["results"].clone()).expect("results")
}

/// Runs the scheduled handler as of `time` (ms), as the cron would.
pub async fn run_scheduled_at(base: &str, time: i64) {
    let url = format!("{base}/cdn-cgi/handler/scheduled?cron=*/15+*+*+*+*&time={time}");
    let resp = client().get(url).send().await.expect("scheduled run");
    assert!(resp.status().is_success(), "scheduled: {}", resp.status());
}

/// Turns the test-build D1 fault switch on or off.
pub async fn set_d1_failing_at(base: &str, failing: bool) {
    let q = if failing { "fail" } else { "ok" };
    let a = call_at(
        base,
        "POST",
        &format!("/__test/faults?d1={q}"),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "fault switch: {}", a.text);
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket participant.
pub struct Ws {
    inner: WsStream,
}

/// What the server sent next.
#[derive(Debug)]
pub enum Next {
    /// A JSON text frame.
    Frame(Value),
    /// The server closed with this code.
    Closed(u16),
}

impl Ws {
    /// Joins a session (token in the query, as a browser would).
    pub async fn join_at(base: &str, session: &str, token: &str) -> Ws {
        Self::try_join_at(base, session, token)
            .await
            .unwrap_or_else(|status| panic!("join refused with {status}"))
    }

    /// Joins, or returns the HTTP status of the refusal.
    pub async fn try_join_at(base: &str, session: &str, token: &str) -> Result<Ws, u16> {
        let url = format!(
            "{}/v1/sessions/{session}/ws?token={token}",
            base.replacen("http", "ws", 1)
        );
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((inner, _)) => Ok(Ws { inner }),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
            Err(e) => panic!("WebSocket connect failed: {e}"),
        }
    }

    /// Sends a JSON value as a text frame.
    pub async fn send(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, t: &str) {
        use futures_util::SinkExt;
        self.inner
            .send(tokio_tungstenite::tungstenite::Message::text(t))
            .await
            .expect("send frame");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, b: Vec<u8>) {
        use futures_util::SinkExt;
        self.inner
            .send(tokio_tungstenite::tungstenite::Message::binary(b))
            .await
            .expect("send frame");
    }

    /// The next frame or close, within 10 s.
    pub async fn next(&mut self) -> Next {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(10), self.inner.next())
                .await
                .expect("a frame within 10 s");
            match m {
                Some(Ok(Message::Text(t))) => {
                    let frame = serde_json::from_str(&t).expect("JSON frame");
                    crate::documents::check_server_frame(&frame);
                    return Next::Frame(frame);
                }
                Some(Ok(Message::Close(c))) => {
                    return Next::Closed(c.map(|c| u16::from(c.code)).unwrap_or(1005))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected message {other:?}"),
                Some(Err(e)) => panic!("socket error: {e}"),
                None => return Next::Closed(1006),
            }
        }
    }

    /// The next frame, which must be JSON text.
    pub async fn frame(&mut self) -> Value {
        match self.next().await {
            Next::Frame(v) => v,
            Next::Closed(c) => panic!("closed with {c}, expected a frame"),
        }
    }

    /// Frames until one of type `ty` (returned); the others are returned too.
    pub async fn until(&mut self, ty: &str) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let f = self.frame().await;
            if f["type"] == ty {
                return (f, skipped);
            }
            skipped.push(f);
        }
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self.inner.close(None).await;
    }
}

/// A user id no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
