//! Pure request routing: method + path to a [`Route`], with path ids
//! validated before any Durable Object is touched.

use sesh_protocol::limits::{DEFAULT_READ_LIMIT, MAX_READ_LIMIT};
use sesh_protocol::{is_valid_user_id, parse_session_id};

use thiserror::Error;

/// Why a request matches no route.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RouteError {
    /// A malformed path id or query parameter.
    #[error("{0}")]
    BadRequest(String),
    /// No such route, or a path id that names nothing.
    #[error("{0}")]
    NotFound(String),
    /// A known path with another method; `allow` lists those it takes.
    #[error("method not allowed; allowed: {}", .allow.join(", "))]
    MethodNotAllowed {
        /// Methods the path accepts, for the `Allow` header.
        allow: &'static [&'static str],
    },
}

/// Where a request goes, with its ids already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /health`.
    Health,
    /// `GET /`: a page pointing to the console and the API documents.
    Home,
    /// `GET /openapi.json`: the OpenAPI document of the HTTP routes.
    OpenApi,
    /// `GET /asyncapi.json`: the AsyncAPI document of the session WebSocket.
    AsyncApi,
    /// `POST /v1/sessions`.
    CreateSession,
    /// `GET /v1/sessions/{id}`.
    GetSession(String),
    /// `GET /v1/sessions/{id}/ws`: WebSocket upgrade.
    SessionSocket(String),
    /// `POST /v1/sessions/{id}/points`.
    AppendPoints(String),
    /// `GET /v1/sessions/{id}/points`.
    ReadPoints(String),
    /// `POST /v1/sessions/{id}/end`.
    EndSession(String),
    /// `PUT /v1/sessions/{id}/members/{userId}`: (session, user).
    SetMember(String, String),
    /// `DELETE /v1/sessions/{id}/members/{userId}`: (session, user).
    RemoveMember(String, String),
    /// `POST /v1/presence/heartbeat`.
    Heartbeat,
    /// `GET /v1/presence/{userId}`.
    GetPresence(String),
    /// `GET /v1/presence?users=...`.
    BatchPresence,
    /// `GET /v1/quota`.
    GetQuota,
    /// `POST /v1/quota/check`.
    CheckQuota,
    /// `POST /v1/quota/refund`.
    RefundQuota,
    /// `GET /v1/sessions`: the caller's sessions across partitions.
    ListSessions,
    /// `GET /v1/users/{userId}/metrics`.
    UserMetrics(String),
    /// `POST /v1/users/{userId}/exports`.
    CreateExport(String),
    /// `GET /v1/users/{userId}/exports/{id}`.
    GetExport(String, String),
    /// `GET /v1/users/{userId}/exports/{id}/download`.
    DownloadExport(String, String),
}

impl Route {
    /// The route pattern, for logs (ids are not logged as part of it).
    pub fn pattern(&self) -> &'static str {
        match self {
            Self::Health => "/health",
            Self::Home => "/",
            Self::OpenApi => "/openapi.json",
            Self::AsyncApi => "/asyncapi.json",
            Self::CreateSession => "/v1/sessions",
            Self::GetSession(_) => "/v1/sessions/{id}",
            Self::SessionSocket(_) => "/v1/sessions/{id}/ws",
            Self::AppendPoints(_) | Self::ReadPoints(_) => "/v1/sessions/{id}/points",
            Self::EndSession(_) => "/v1/sessions/{id}/end",
            Self::SetMember(..) | Self::RemoveMember(..) => "/v1/sessions/{id}/members/{userId}",
            Self::Heartbeat => "/v1/presence/heartbeat",
            Self::GetPresence(_) => "/v1/presence/{userId}",
            Self::BatchPresence => "/v1/presence",
            Self::GetQuota => "/v1/quota",
            Self::CheckQuota => "/v1/quota/check",
            Self::RefundQuota => "/v1/quota/refund",
            Self::ListSessions => "/v1/sessions",
            Self::UserMetrics(_) => "/v1/users/{userId}/metrics",
            Self::CreateExport(_) => "/v1/users/{userId}/exports",
            Self::GetExport(..) => "/v1/users/{userId}/exports/{id}",
            Self::DownloadExport(..) => "/v1/users/{userId}/exports/{id}/download",
        }
    }

    /// Whether the route needs a token (everything under `/v1`).
    pub fn needs_auth(&self) -> bool {
        !matches!(
            self,
            Self::Health | Self::Home | Self::OpenApi | Self::AsyncApi
        )
    }
}

const GET: &[&str] = &["GET"];
const POST: &[&str] = &["POST"];
const GET_POST: &[&str] = &["GET", "POST"];
const PUT_DELETE: &[&str] = &["PUT", "DELETE"];

/// Routes a request. Unknown paths are 404, known paths with another method
/// 405 (with the allowed methods), malformed ids 400.
pub fn route(method: &str, path: &str) -> Result<Route, RouteError> {
    let segs: Vec<&str> = match path.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        None => return Err(not_found()),
    };
    // Empty segments (`/v1/sessions/`, `//`) name nothing.
    if path == "/" {
        return match method {
            "GET" | "HEAD" => Ok(Route::Home),
            _ => Err(RouteError::MethodNotAllowed { allow: GET }),
        };
    }
    if segs.iter().any(|s| s.is_empty()) {
        return Err(not_found());
    }
    // HEAD is answered like GET by HTTP convention; the body is dropped by
    // the runtime.
    let m = if method == "HEAD" { "GET" } else { method };
    let pick = |allow: &'static [&'static str], r: Route| -> Result<Route, RouteError> {
        if allow.contains(&m) {
            Ok(r)
        } else {
            Err(RouteError::MethodNotAllowed { allow })
        }
    };
    match segs.as_slice() {
        ["health"] => pick(GET, Route::Health),
        ["openapi.json"] => pick(GET, Route::OpenApi),
        ["asyncapi.json"] => pick(GET, Route::AsyncApi),
        ["v1", "sessions"] => match m {
            "GET" => Ok(Route::ListSessions),
            "POST" => Ok(Route::CreateSession),
            _ => Err(RouteError::MethodNotAllowed { allow: GET_POST }),
        },
        ["v1", "sessions", id] => {
            let id = session_id(id)?;
            pick(GET, Route::GetSession(id))
        }
        ["v1", "sessions", id, "ws"] => {
            let id = session_id(id)?;
            pick(GET, Route::SessionSocket(id))
        }
        ["v1", "sessions", id, "points"] => {
            let id = session_id(id)?;
            match m {
                "GET" => Ok(Route::ReadPoints(id)),
                "POST" => Ok(Route::AppendPoints(id)),
                _ => Err(RouteError::MethodNotAllowed { allow: GET_POST }),
            }
        }
        ["v1", "sessions", id, "end"] => {
            let id = session_id(id)?;
            pick(POST, Route::EndSession(id))
        }
        ["v1", "sessions", id, "members", user] => {
            let (id, user) = (session_id(id)?, user_id(user)?);
            match m {
                "PUT" => Ok(Route::SetMember(id, user)),
                "DELETE" => Ok(Route::RemoveMember(id, user)),
                _ => Err(RouteError::MethodNotAllowed { allow: PUT_DELETE }),
            }
        }
        ["v1", "presence"] => pick(GET, Route::BatchPresence),
        ["v1", "presence", "heartbeat"] => pick(POST, Route::Heartbeat),
        ["v1", "presence", user] => {
            let user = user_id(user)?;
            pick(GET, Route::GetPresence(user))
        }
        ["v1", "quota"] => pick(GET, Route::GetQuota),
        ["v1", "quota", "check"] => pick(POST, Route::CheckQuota),
        ["v1", "quota", "refund"] => pick(POST, Route::RefundQuota),
        ["v1", "users", user, "metrics"] => {
            let user = user_id(user)?;
            pick(GET, Route::UserMetrics(user))
        }
        ["v1", "users", user, "exports"] => {
            let user = user_id(user)?;
            pick(POST, Route::CreateExport(user))
        }
        ["v1", "users", user, "exports", id] => {
            let (user, id) = (user_id(user)?, export_id(id)?);
            pick(GET, Route::GetExport(user, id))
        }
        ["v1", "users", user, "exports", id, "download"] => {
            let (user, id) = (user_id(user)?, export_id(id)?);
            pick(GET, Route::DownloadExport(user, id))
        }
        _ => Err(not_found()),
    }
}

/// Whether `path` is under the authenticated API (`/v1`).
pub fn is_api_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Whether `path` is a session's WebSocket route (the only one that takes
/// `?token=`, since browsers cannot set headers on a WebSocket).
pub fn is_socket_path(path: &str) -> bool {
    path.starts_with("/v1/sessions/") && path.ends_with("/ws")
}

/// Parses `afterSeq` and `limit` of `GET .../points`.
pub fn parse_read_query(
    after: Option<&str>,
    limit: Option<&str>,
) -> Result<(u64, u64), RouteError> {
    let after = match after {
        None => 0,
        Some(s) => s.parse::<u64>().map_err(|_| {
            RouteError::BadRequest("afterSeq must be a non-negative integer".into())
        })?,
    };
    let limit = match limit {
        None => DEFAULT_READ_LIMIT as u64,
        Some(s) => match s.parse::<u64>() {
            Ok(l) if (1..=MAX_READ_LIMIT as u64).contains(&l) => l,
            _ => {
                return Err(RouteError::BadRequest(format!(
                    "limit must be an integer from 1 to {MAX_READ_LIMIT}"
                )))
            }
        },
    };
    Ok((after, limit))
}

fn not_found() -> RouteError {
    RouteError::NotFound("no such route".into())
}

/// A session id path segment. Session ids are UUIDs, so any other segment
/// names a session that cannot exist: `404`, as for any unknown session
/// (CONTRACT.md section 5), with a message that says why.
fn session_id(seg: &str) -> Result<String, RouteError> {
    parse_session_id(seg)
        .ok_or_else(|| RouteError::NotFound("no such session: session ids are UUIDs".into()))
}

/// An export id path segment: a UUID, else `404` as for an unknown export.
fn export_id(seg: &str) -> Result<String, RouteError> {
    parse_session_id(seg)
        .ok_or_else(|| RouteError::NotFound("no such export: export ids are UUIDs".into()))
}

/// A user id path segment; clients may percent-encode `@` and `:`.
pub fn user_id(seg: &str) -> Result<String, RouteError> {
    let decoded = percent_decode(seg)
        .filter(|s| is_valid_user_id(s))
        .ok_or_else(|| {
            RouteError::BadRequest("user id must be 1-128 characters of [A-Za-z0-9_.:@-]".into())
        })?;
    Ok(decoded)
}

/// Decodes `%XX` escapes; `None` for a broken escape or non-UTF-8 result.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The HTTP status the edge gives each error (the mapping itself is the
    // Worker's `error.rs`; these tests only tell the three kinds apart).
    fn status(e: &RouteError) -> u16 {
        match e {
            RouteError::BadRequest(_) => 400,
            RouteError::NotFound(_) => 404,
            RouteError::MethodNotAllowed { .. } => 405,
        }
    }

    const SID: &str = "0190a6b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b";

    #[test]
    fn routes_every_contract_path() {
        let s = SID.to_owned();
        let cases = [
            ("GET", "/health".to_owned(), Route::Health),
            ("GET", "/".to_owned(), Route::Home),
            ("GET", "/openapi.json".to_owned(), Route::OpenApi),
            ("GET", "/asyncapi.json".to_owned(), Route::AsyncApi),
            ("POST", "/v1/sessions".to_owned(), Route::CreateSession),
            (
                "GET",
                format!("/v1/sessions/{SID}"),
                Route::GetSession(s.clone()),
            ),
            (
                "GET",
                format!("/v1/sessions/{SID}/ws"),
                Route::SessionSocket(s.clone()),
            ),
            (
                "POST",
                format!("/v1/sessions/{SID}/points"),
                Route::AppendPoints(s.clone()),
            ),
            (
                "GET",
                format!("/v1/sessions/{SID}/points"),
                Route::ReadPoints(s.clone()),
            ),
            (
                "POST",
                format!("/v1/sessions/{SID}/end"),
                Route::EndSession(s.clone()),
            ),
            (
                "POST",
                "/v1/presence/heartbeat".to_owned(),
                Route::Heartbeat,
            ),
            (
                "GET",
                "/v1/presence/bob".to_owned(),
                Route::GetPresence("bob".into()),
            ),
            ("GET", "/v1/presence".to_owned(), Route::BatchPresence),
            (
                "PUT",
                format!("/v1/sessions/{s}/members/bob"),
                Route::SetMember(s.clone(), "bob".into()),
            ),
            (
                "DELETE",
                format!("/v1/sessions/{s}/members/bob"),
                Route::RemoveMember(s.clone(), "bob".into()),
            ),
            ("GET", "/v1/quota".to_owned(), Route::GetQuota),
            ("POST", "/v1/quota/check".to_owned(), Route::CheckQuota),
            ("POST", "/v1/quota/refund".to_owned(), Route::RefundQuota),
            ("GET", "/v1/sessions".to_owned(), Route::ListSessions),
            (
                "GET",
                "/v1/users/ann%40x.io/metrics".to_owned(),
                Route::UserMetrics("ann@x.io".into()),
            ),
            (
                "POST",
                "/v1/users/bob/exports".to_owned(),
                Route::CreateExport("bob".into()),
            ),
            (
                "GET",
                format!("/v1/users/bob/exports/{SID}"),
                Route::GetExport("bob".into(), s.clone()),
            ),
            (
                "GET",
                format!("/v1/users/bob/exports/{SID}/download"),
                Route::DownloadExport("bob".into(), s.clone()),
            ),
        ];
        for (m, p, want) in cases {
            assert_eq!(route(m, &p), Ok(want), "{m} {p}");
        }
    }

    #[test]
    fn session_ids_are_canonicalised_to_lower_case() {
        let upper = SID.to_uppercase();
        assert_eq!(
            route("GET", &format!("/v1/sessions/{upper}")),
            Ok(Route::GetSession(SID.to_owned()))
        );
    }

    #[test]
    fn unknown_paths_are_404() {
        // `/` is the home page (issue 24), not a 404.
        for p in [
            "",
            "/v1",
            "/v2/sessions",
            "/v1/sessions/",
            "/health/x",
            "/v1/quota/x/y",
            "/v1//sessions",
        ] {
            assert_eq!(route("GET", p).map_err(|e| status(&e)), Err(404), "{p:?}");
        }
    }

    #[test]
    fn wrong_methods_are_405_with_allow() {
        assert_eq!(
            route("DELETE", "/v1/sessions"),
            Err(RouteError::MethodNotAllowed { allow: GET_POST })
        );
        assert_eq!(
            route("POST", "/v1/users/bob/metrics"),
            Err(RouteError::MethodNotAllowed { allow: GET })
        );
        assert_eq!(
            route("PUT", &format!("/v1/sessions/{SID}/points")),
            Err(RouteError::MethodNotAllowed { allow: GET_POST })
        );
        assert_eq!(route("POST", "/health").map_err(|e| status(&e)), Err(405));
        assert_eq!(route("HEAD", "/health"), Ok(Route::Health));
    }

    #[test]
    fn malformed_ids_are_answered_before_method_checks() {
        // A session or export id that is not a UUID names nothing: 404.
        for p in [
            "/v1/sessions/nope",
            "/v1/sessions/nope/ws",
            "/v1/sessions/123/points",
            "/v1/users/bob/exports/nope",
            "/v1/users/bob/exports/nope/download",
        ] {
            assert_eq!(route("GET", p).map_err(|e| status(&e)), Err(404), "{p}");
        }
        for p in [
            "/v1/presence/a%2Fb",
            "/v1/presence/a%zz",
            "/v1/users/a%2Fb/metrics",
        ] {
            assert_eq!(route("GET", p).map_err(|e| status(&e)), Err(400), "{p}");
        }
        let long = "u".repeat(129);
        assert_eq!(
            route("GET", &format!("/v1/presence/{long}")).map_err(|e| status(&e)),
            Err(400)
        );
    }

    #[test]
    fn user_ids_may_be_percent_encoded() {
        assert_eq!(
            route("GET", "/v1/presence/ann%40example.com"),
            Ok(Route::GetPresence("ann@example.com".into()))
        );
    }

    #[test]
    fn api_and_socket_paths() {
        assert!(is_api_path("/v1") && is_api_path("/v1/quota") && is_api_path("/v1/"));
        assert!(!is_api_path("/v10") && !is_api_path("/health") && !is_api_path("/"));
        assert!(is_socket_path(&format!("/v1/sessions/{SID}/ws")));
        assert!(!is_socket_path(&format!("/v1/sessions/{SID}/points")));
    }

    #[test]
    fn read_query_parsing() {
        assert_eq!(parse_read_query(None, None), Ok((0, 100)));
        assert_eq!(parse_read_query(Some("5"), Some("1000")), Ok((5, 1000)));
        for (a, l) in [
            (Some("-1"), None),
            (Some("x"), None),
            (None, Some("0")),
            (None, Some("1001")),
        ] {
            assert_eq!(status(&parse_read_query(a, l).unwrap_err()), 400);
        }
    }

    #[test]
    fn patterns_hide_ids() {
        let r = route("GET", &format!("/v1/sessions/{SID}/ws")).unwrap();
        assert_eq!(r.pattern(), "/v1/sessions/{id}/ws");
        assert!(!Route::Health.needs_auth());
        assert!(r.needs_auth());
    }

    #[test]
    fn home_and_documents_need_no_token_and_take_only_get() {
        for r in [Route::Home, Route::OpenApi, Route::AsyncApi] {
            assert!(!r.needs_auth());
        }
        assert_eq!(route("HEAD", "/"), Ok(Route::Home));
        assert!(matches!(
            route("POST", "/"),
            Err(RouteError::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            route("POST", "/openapi.json"),
            Err(RouteError::MethodNotAllowed { .. })
        ));
    }
}
