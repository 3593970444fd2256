//! The published API documents (CONTRACT.md section 12): an OpenAPI 3.1
//! document of every HTTP route and an AsyncAPI 3.0 document of the session
//! WebSocket, generated from this crate's own types.
//!
//! The schemas come from `schemars` (JSON Schema 2020-12, the dialect of
//! OpenAPI 3.1 and a schema format AsyncAPI 3.0 accepts), which reads the
//! same serde attributes the types parse with; nothing here restates a
//! field. The checked-in copies (`protocol/api/*.json`) are compared with
//! these by the crate's tests; `SESH_REGENERATE_API=1 cargo test -p
//! sesh-protocol api` rewrites them.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::{
    ClientFrame, CreateSession, ErrorBody, Health, Heartbeat, MetricsAnswer, PointsAccepted,
    PointsBatch, PointsPage, Presence, PresenceBatch, QuotaCheck, QuotaDecision, QuotaOverview,
    QuotaRefund, ServerFrame, Session, SessionList, SetMember,
};

/// The checked-in OpenAPI document, as the Worker serves it.
pub const OPENAPI_JSON: &str = include_str!("../api/openapi.json");

/// The checked-in AsyncAPI document, as the Worker serves it.
pub const ASYNCAPI_JSON: &str = include_str!("../api/asyncapi.json");

/// The error statuses every authenticated route may answer, each with
/// [`ErrorBody`] (CONTRACT.md section 4).
const ERROR_STATUSES: &[(u16, &str)] = &[
    (400, "bad_request or invalid_json"),
    (
        401,
        "unauthorized: missing, malformed, expired or badly signed token",
    ),
    (403, "forbidden"),
    (404, "not_found"),
    (405, "method_not_allowed"),
    (409, "session_ended or export_not_ready"),
    (413, "payload_too_large"),
    (422, "validation_failed"),
    (429, "rate_limited or quota_exceeded (with Retry-After)"),
    (500, "internal"),
    (503, "unavailable"),
];

/// One HTTP route of the contract.
struct Route {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    /// `(name, description)` of the query parameters.
    query: &'static [(&'static str, &'static str)],
    /// The request body's schema, when it takes one.
    body: Option<Value>,
    /// `(status, description, body schema)`; `None` for no JSON body.
    answers: Vec<(u16, &'static str, Option<Value>)>,
    auth: bool,
}

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    generator.subschema_for::<T>().to_value()
}

fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator()
}

// ExportStatus is defined in sesh-core (not yet a protocol type), so its
// schema is the loosest true one until it moves here.
fn export_status() -> Value {
    json!({
        "type": "object",
        "description": "An export's status: id, status (pending, running, done, failed), sessions, points, bytes and sha256 once done.",
        "required": ["id", "status"],
    })
}

fn routes(g: &mut SchemaGenerator) -> Vec<Route> {
    let one = |s| vec![(200, "OK", Some(s))];
    vec![
        Route {
            method: "get",
            path: "/health",
            summary: "Liveness; needs no token.",
            query: &[],
            body: None,
            answers: one(schema::<Health>(g)),
            auth: false,
        },
        Route {
            method: "get",
            path: "/",
            summary: "A page pointing to the console and these documents (text/html).",
            query: &[],
            body: None,
            answers: vec![(200, "The page", None)],
            auth: false,
        },
        Route {
            method: "get",
            path: "/openapi.json",
            summary: "This document.",
            query: &[],
            body: None,
            answers: vec![(200, "The OpenAPI 3.1 document", None)],
            auth: false,
        },
        Route {
            method: "get",
            path: "/asyncapi.json",
            summary: "The AsyncAPI 3.0 document of the session WebSocket.",
            query: &[],
            body: None,
            answers: vec![(200, "The AsyncAPI 3.0 document", None)],
            auth: false,
        },
        Route {
            method: "post",
            path: "/v1/sessions",
            summary: "Create a session (plan quota sessions per month).",
            query: &[],
            body: Some(schema::<CreateSession>(g)),
            answers: vec![(201, "Created", Some(schema::<Session>(g)))],
            auth: true,
        },
        Route {
            method: "get",
            path: "/v1/sessions",
            summary: "The caller's sessions across partitions, newest first.",
            query: &[
                ("from", "RFC 3339; default 30 days ago"),
                ("to", "RFC 3339, exclusive; default now"),
                ("status", "active or ended"),
                ("limit", "at most 100, default 20"),
                ("cursor", "the previous page's nextCursor"),
            ],
            body: None,
            answers: one(schema::<SessionList>(g)),
            auth: true,
        },
        Route {
            method: "get",
            path: "/v1/sessions/{id}",
            summary: "A session with its live participants (members).",
            query: &[],
            body: None,
            answers: one(schema::<Session>(g)),
            auth: true,
        },
        Route {
            method: "get",
            path: "/v1/sessions/{id}/ws",
            summary: "WebSocket upgrade (see /asyncapi.json); the token may be passed as ?token=.",
            query: &[("token", "the JWT, for clients that cannot set headers")],
            body: None,
            answers: vec![(101, "Switching Protocols", None)],
            auth: true,
        },
        Route {
            method: "post",
            path: "/v1/sessions/{id}/points",
            summary: "Record points (members); broadcast to live participants.",
            query: &[],
            body: Some(schema::<PointsBatch>(g)),
            answers: one(schema::<PointsAccepted>(g)),
            auth: true,
        },
        Route {
            method: "get",
            path: "/v1/sessions/{id}/points",
            summary: "Stored points in seq order (members).",
            query: &[
                ("afterSeq", "points with a greater seq; default 0"),
                ("limit", "at most 1000, default 100"),
            ],
            body: None,
            answers: one(schema::<PointsPage>(g)),
            auth: true,
        },
        Route {
            method: "post",
            path: "/v1/sessions/{id}/end",
            summary: "End a session (owner).",
            query: &[],
            body: None,
            answers: one(schema::<Session>(g)),
            auth: true,
        },
        Route {
            method: "put",
            path: "/v1/sessions/{id}/members/{userId}",
            summary: "Add a member with a role, or change their role (owner).",
            query: &[],
            body: Some(schema::<SetMember>(g)),
            answers: one(schema::<Session>(g)),
            auth: true,
        },
        Route {
            method: "delete",
            path: "/v1/sessions/{id}/members/{userId}",
            summary: "Remove a member (the owner, or the member to leave).",
            query: &[],
            body: None,
            answers: one(schema::<Session>(g)),
            auth: true,
        },
        Route {
            method: "post",
            path: "/v1/presence/heartbeat",
            summary: "The caller's own presence.",
            query: &[],
            body: Some(schema::<Heartbeat>(g)),
            answers: one(schema::<Presence>(g)),
            auth: true,
        },
        Route {
            method: "get",
            path: "/v1/presence/{userId}",
            summary: "A user's presence.",
            query: &[],
            body: None,
            answers: one(schema::<Presence>(g)),
            auth: true,
        },
        Route {
            method: "get",
            path: "/v1/presence",
            summary: "Presence of up to 100 users, in the order asked.",
            query: &[("users", "comma-separated user ids")],
            body: None,
            answers: one(schema::<PresenceBatch>(g)),
            auth: true,
        },
        Route {
            method: "get",
            path: "/v1/quota",
            summary: "The caller's plan and usage per resource.",
            query: &[],
            body: None,
            answers: one(schema::<QuotaOverview>(g)),
            auth: true,
        },
        Route {
            method: "post",
            path: "/v1/quota/check",
            summary: "Check and take units for a subject (service tokens).",
            query: &[],
            body: Some(schema::<QuotaCheck>(g)),
            answers: vec![
                (200, "Allowed", Some(schema::<QuotaDecision>(g))),
                (
                    429,
                    "Denied: the decision with its error object; or the caller's own api charge refused",
                    Some(json!({ "anyOf": [schema::<QuotaDecision>(g), schema::<ErrorBody>(g)] })),
                ),
            ],
            auth: true,
        },
        Route {
            method: "post",
            path: "/v1/quota/refund",
            summary: "Give units back (service tokens).",
            query: &[],
            body: Some(schema::<QuotaRefund>(g)),
            answers: one(schema::<QuotaDecision>(g)),
            auth: true,
        },
        Route {
            method: "get",
            path: "/v1/users/{userId}/metrics",
            summary: "Roll-ups of a user's points (self or service).",
            query: &[
                ("granularity", "hour, day, week or month"),
                ("from", "RFC 3339"),
                ("to", "RFC 3339"),
                ("kind", "one point kind"),
            ],
            body: None,
            answers: one(schema::<MetricsAnswer>(g)),
            auth: true,
        },
        Route {
            method: "post",
            path: "/v1/users/{userId}/exports",
            summary: "Start an export of everything of a user (self or service).",
            query: &[],
            body: None,
            answers: vec![(202, "Accepted", Some(export_status()))],
            auth: true,
        },
        Route {
            method: "get",
            path: "/v1/users/{userId}/exports/{id}",
            summary: "An export's status.",
            query: &[],
            body: None,
            answers: one(export_status()),
            auth: true,
        },
        Route {
            method: "get",
            path: "/v1/users/{userId}/exports/{id}/download",
            summary: "The export's gzip'd NDJSON file, once done.",
            query: &[],
            body: None,
            answers: vec![(200, "The file (application/gzip)", None)],
            auth: true,
        },
    ]
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect()
}

fn take_components(mut g: SchemaGenerator) -> Value {
    Value::Object(g.take_definitions(true).into_iter().collect::<Map<_, _>>())
}

/// The OpenAPI 3.1 document of every HTTP route.
pub fn openapi() -> Value {
    let mut g = generator();
    let error = schema::<ErrorBody>(&mut g);
    let mut paths = Map::new();
    for r in routes(&mut g) {
        let mut responses = Map::new();
        for (status, description, body) in &r.answers {
            let mut answer = json!({ "description": description });
            if let Some(body) = body {
                answer["content"] = json!({ "application/json": { "schema": body } });
            }
            responses.insert(status.to_string(), answer);
        }
        let errors: &[(u16, &str)] = if r.auth {
            ERROR_STATUSES
        } else {
            &[(500, "internal")]
        };
        for (status, description) in errors {
            responses.entry(status.to_string()).or_insert_with(|| {
                json!({
                    "description": description,
                    "content": { "application/json": { "schema": error } },
                })
            });
        }
        let mut parameters = path_params(r.path);
        parameters.extend(r.query.iter().map(|(name, description)| {
            json!({ "name": name, "in": "query", "required": false, "description": description, "schema": { "type": "string" } })
        }));
        let mut op = json!({
            "summary": r.summary,
            "operationId": format!("{}{}", r.method, r.path.replace(['{', '}'], "").replace('/', "_")),
            "responses": responses,
        });
        if !parameters.is_empty() {
            op["parameters"] = Value::Array(parameters);
        }
        if let Some(body) = r.body {
            op["requestBody"] =
                json!({ "required": true, "content": { "application/json": { "schema": body } } });
        }
        op["security"] = if r.auth {
            json!([{ "bearer": [] }])
        } else {
            json!([])
        };
        let item = paths.entry(r.path).or_insert_with(|| json!({}));
        item[r.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Sesh",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Real-time session coordination. The session WebSocket is described in /asyncapi.json.",
        },
        "paths": paths,
        "components": {
            "schemas": take_components(g),
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT (HS256)" },
            },
        },
    })
}

/// The AsyncAPI 3.0 document of the session WebSocket: every frame in both
/// directions, one message per frame `type`.
pub fn asyncapi() -> Value {
    let mut g = generator();
    let client = g.root_schema_for::<ClientFrame>().to_value();
    let server = g.root_schema_for::<ServerFrame>().to_value();
    let mut messages = Map::new();
    let mut send = Vec::new();
    let mut receive = Vec::new();
    for (frames, side) in [(&client, &mut send), (&server, &mut receive)] {
        for variant in frames["oneOf"].as_array().into_iter().flatten() {
            let Some(kind) = frame_type(variant) else {
                continue;
            };
            let name = if std::ptr::eq(frames, &client) {
                format!("client.{kind}")
            } else {
                format!("server.{kind}")
            };
            messages.insert(
                name.clone(),
                json!({
                    "name": kind,
                    "title": kind,
                    "summary": variant.get("description").cloned().unwrap_or(Value::Null),
                    "contentType": "application/json",
                    "payload": {
                        "schemaFormat": "application/schema+json;version=draft-2020-12",
                        "schema": strip_description(variant),
                    },
                }),
            );
            side.push(json!({ "$ref": format!("#/channels/session/messages/{name}") }));
        }
    }
    let channel_messages: Map<String, Value> = messages
        .keys()
        .map(|k| {
            (
                k.clone(),
                json!({ "$ref": format!("#/components/messages/{k}") }),
            )
        })
        .collect();
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Sesh session WebSocket",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "JSON text frames tagged by type. Connect with Authorization: Bearer or ?token=.",
        },
        "channels": {
            "session": {
                "address": "/v1/sessions/{id}/ws",
                "parameters": { "id": { "description": "Session id (UUID)." } },
                "messages": channel_messages,
            },
        },
        "operations": {
            "send": { "action": "receive", "channel": { "$ref": "#/channels/session" }, "summary": "Frames a client sends.", "messages": send },
            "receive": { "action": "send", "channel": { "$ref": "#/channels/session" }, "summary": "Frames the server sends.", "messages": receive },
        },
        "components": {
            "messages": messages,
            "schemas": take_components(g),
        },
    })
}

fn frame_type(variant: &Value) -> Option<String> {
    let tag = &variant["properties"]["type"];
    tag.get("const")
        .or_else(|| tag["enum"].get(0))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn strip_description(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("description");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, doc: Value) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("api")
            .join(name);
        let text = serde_json::to_string_pretty(&doc).expect("a document serializes") + "\n";
        if std::env::var_os("SESH_REGENERATE_API").is_some() {
            std::fs::create_dir_all(path.parent().expect("a folder")).expect("api folder");
            std::fs::write(&path, &text).expect("write the document");
            return;
        }
        let stored = match name {
            "openapi.json" => OPENAPI_JSON,
            _ => ASYNCAPI_JSON,
        };
        assert!(
            stored == text,
            "{} differs from what the types generate; run `SESH_REGENERATE_API=1 cargo test -p sesh-protocol api` and commit it",
            path.display()
        );
    }

    #[test]
    fn api_openapi_is_current() {
        check("openapi.json", openapi());
    }

    #[test]
    fn api_asyncapi_is_current() {
        check("asyncapi.json", asyncapi());
    }

    #[test]
    fn api_asyncapi_has_every_frame() {
        let doc = asyncapi();
        let messages = doc["components"]["messages"].as_object().expect("messages");
        for kind in ["point", "resume", "ping", "end"] {
            assert!(
                messages.contains_key(&format!("client.{kind}")),
                "client {kind}"
            );
        }
        for kind in [
            "welcome", "joined", "left", "point", "ack", "resumed", "pong", "error", "ended",
        ] {
            assert!(
                messages.contains_key(&format!("server.{kind}")),
                "server {kind}"
            );
        }
    }
}
