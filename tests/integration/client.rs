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

/// Declares async tests and the `TESTS` table the harness runs.
#[macro_export]
macro_rules! async_tests {
    ($prefix:literal; $( async fn $name:ident() $body:block )*) => {
        $( async fn $name() $body )*
        /// The tests of this module, by name.
        pub const TESTS: &[(&str, fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>)] = &[
            $( (concat!($prefix, "::", stringify!($name)), || Box::pin($name())) ),*
        ];
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
    let mut rb = client().request(method, format!("{base}{path}"));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.header("content-type", "application/json").body(b);
    }
    let resp = rb.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body read");
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
