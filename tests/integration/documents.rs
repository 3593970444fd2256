//! The one checker of the published API documents (CONTRACT.md section
//! 12): every answer the tests get and every frame they read is validated
//! against `/openapi.json` and `/asyncapi.json` (the checked-in documents
//! the Worker serves), so the documents cannot drift from the service.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use jsonschema::Validator;
use serde_json::{json, Value};
use sesh_protocol::api::{ASYNCAPI_JSON, OPENAPI_JSON};

fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON"))
}

// A schema of the document made a root: `$ref`s into `#/components` resolve
// against the copy of the components beside it.
fn compile(components: &Value, schema: &Value) -> Validator {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": components,
        "allOf": [schema],
    });
    jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

fn validate(validator: &Validator, what: &str, value: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match the API document: {}\n{value}",
        errors.join("; ")
    );
}

/// The document's path template that `path` matches, if any.
fn template(path: &str) -> Option<&'static str> {
    let segs: Vec<&str> = path.split('/').collect();
    openapi()["paths"]
        .as_object()?
        .keys()
        .map(String::as_str)
        .find(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segs.len()
                && ts.iter().zip(&segs).all(|(t, s)| {
                    (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s
                })
        })
}

/// Checks one HTTP answer against the OpenAPI document: a documented
/// route's status must be documented and its body must match that
/// status's schema; a path or method the document does not have must be
/// answered with an error body (404, 405 or 400; under `/v1` also 401 and
/// 429, since a token and the `api` charge come before routing).
pub fn check_answer(method: &str, path_and_query: &str, status: u16, text: &str) {
    let path = path_and_query.split('?').next().unwrap_or_default();
    // Test hooks, wrangler's own routes, preflights and the console's files
    // are not part of the API.
    if path.starts_with("/__test/")
        || path.starts_with("/cdn-cgi/")
        || path.starts_with("/console")
        || method == "OPTIONS"
    {
        return;
    }
    let head = method == "HEAD";
    let method = if head {
        "get".to_owned()
    } else {
        method.to_ascii_lowercase()
    };
    let body: Option<Value> = serde_json::from_str(text).ok();
    let components = &openapi()["components"];
    let op = template(path).and_then(|t| openapi()["paths"][t].get(&method).map(|op| (t, op)));
    let Some((template, op)) = op else {
        assert!(
            matches!(status, 400 | 404 | 405)
                || (path.starts_with("/v1") && matches!(status, 401 | 429)),
            "{method} {path}: not in the API document, answered {status}"
        );
        let error = &components["schemas"]["ErrorBody"];
        let body = body.unwrap_or_else(|| {
            panic!("{method} {path}: {status} without a JSON error body: {text}")
        });
        validate(
            &error_validator(components, error),
            &format!("{method} {path} {status}"),
            &body,
        );
        return;
    };
    let answer = op["responses"].get(status.to_string()).unwrap_or_else(|| {
        panic!("{method} {template}: status {status} is not in the API document: {text}")
    });
    let Some(schema) = answer.pointer("/content/application~1json/schema") else {
        return;
    };
    if head {
        return;
    }
    let body =
        body.unwrap_or_else(|| panic!("{method} {template} {status}: body is not JSON: {text}"));
    let key = format!("{method} {template} {status}");
    let validator = cached(&key, || compile(components, schema));
    validate(&validator, &key, &body);
}

fn error_validator(components: &Value, error: &Value) -> std::sync::Arc<Validator> {
    cached("error", || compile(components, error))
}

fn cached(key: &str, build: impl FnOnce() -> Validator) -> std::sync::Arc<Validator> {
    static CACHE: OnceLock<Mutex<HashMap<String, std::sync::Arc<Validator>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().expect("cache").get(key) {
        return v.clone();
    }
    let v = std::sync::Arc::new(build());
    cache
        .lock()
        .expect("cache")
        .insert(key.to_owned(), v.clone());
    v
}

/// Checks a frame the server sent against the AsyncAPI document: it must
/// be one of the server's messages (`server.<type>`), matching its payload.
pub fn check_server_frame(frame: &Value) {
    static DOC: OnceLock<Value> = OnceLock::new();
    let doc =
        DOC.get_or_init(|| serde_json::from_str(ASYNCAPI_JSON).expect("asyncapi.json is JSON"));
    let kind = frame["type"]
        .as_str()
        .unwrap_or_else(|| panic!("frame without a type: {frame}"));
    let name = format!("server.{kind}");
    let schema = doc["components"]["messages"][&name]
        .pointer("/payload/schema")
        .unwrap_or_else(|| panic!("frame type {kind:?} is not in the AsyncAPI document: {frame}"));
    let validator = cached(&name, || compile(&doc["components"], schema));
    validate(&validator, &format!("frame {kind}"), frame);
}
