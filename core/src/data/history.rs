//! Sessions and points in D1 across partitions (CONTRACT.md sections 5 and
//! 9): the list `GET /v1/sessions`, the writes of a flush (session row,
//! member rows, points with their month and roll-up marks), and the read of
//! a session and its points once its live object is gone.
//!
//! Each function gives [`Statement`]s to run and takes back the rows D1
//! answered (JSON objects keyed by column name); nothing here runs SQL.
//!
//! Listing a user's sessions:
//! 1. run [`LIST_PARTITIONS`](crate::data::partition::LIST_PARTITIONS) and
//!    build an [`Existing`] from its rows;
//! 2. [`ListQuery::parse`] the query string (errors are 400 `bad_request`);
//! 3. run every statement of [`ListQuery::statements`] in one D1 batch (none:
//!    skip the batch, the answer is empty);
//! 4. pass all their rows, in any order, to [`ListQuery::answer`] and send it.
//!
//! Flushing a session (one batch, as today): for each [`PartitionWrite`] of
//! [`write_points`] and of [`write_session`] (the session record, the
//! [`SessionSummary`] the list reads back), its `ensure.statements`
//! (unless the isolate already created all of `ensure.tables`), then its
//! `statements`, then [`write_stats`]. After success, remember
//! `ensure.tables`. The flush plan puts these in order.
//!
//! Reading an ended session whose object is gone:
//! 1. one batch: `LIST_PARTITIONS` and [`point_months`];
//! 2. one batch: [`find_session`] (`None`: 404) and [`read_points`] (`None`:
//!    no points); [`parse_found_session`] (`None`: 404) gives the session,
//!    [`points_page`] the page with the session's `last_seq`.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sesh_protocol::limits::MAX_READ_LIMIT;
use sesh_protocol::{
    KindStats, PointsPage, SessionList, SessionStatus, SessionSummary, StoredPoint,
};
use thiserror::Error;

use crate::data::partition::{
    col_int, col_opt_f64, col_opt_str, col_str, ensure_points, ensure_sessions, plan,
    write_partition, Ensure, Existing, Month, RowError, Span, Statement, TableKind, DAY_MS,
};
use crate::time::Millis;

/// Largest JSON array bound to one insert (D1 caps a bound value at 2 MB).
pub const MAX_CHUNK_BYTES: usize = 512 * 1024;

/// Sessions per page when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 20;

/// Largest `limit`.
pub const MAX_LIMIT: u32 = 100;

/// The window listed when `from` is absent: the 30 days before `to`.
pub const DEFAULT_WINDOW_MS: Millis = 30 * DAY_MS;

// Longer than any cursor this module writes; checked before decoding so a
// huge value costs nothing.
const MAX_CURSOR_CHARS: usize = 512;

/// A query parameter the caller got wrong: answer 400 `bad_request` with the
/// message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QueryError {
    /// A time is not RFC 3339.
    #[error("`{param}` must be an RFC 3339 date-time such as 2026-01-31T12:00:00Z, got {value:?}")]
    Time {
        /// The parameter.
        param: &'static str,
        /// What was sent.
        value: String,
    },
    /// `from` is not before `to`.
    #[error("`from` must be before `to`")]
    EmptyRange,
    /// `status` is neither `active` nor `ended`.
    #[error("`status` must be `active` or `ended`")]
    Status,
    /// `limit` is not an integer in range.
    #[error("`limit` must be an integer from 1 to {max}")]
    Limit {
        /// The largest allowed.
        max: u32,
    },
    /// `cursor` is not one this server wrote.
    #[error("`cursor` is not a cursor this server gave out")]
    Cursor,
    /// A parameter differs from the one the cursor was issued for.
    #[error("`{param}` differs from the query the cursor was given for; send it as before or leave it out")]
    CursorMismatch {
        /// The parameter.
        param: &'static str,
    },
    /// `granularity` is not one of the four.
    #[error("`granularity` must be one of hour, day, week, month")]
    Granularity,
    /// `kind` is empty or too long.
    #[error("`kind` must be 1-64 characters")]
    Kind,
}

/// Parses an RFC 3339 date-time (any offset) into milliseconds.
pub fn parse_time(param: &'static str, value: &str) -> Result<Millis, QueryError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| QueryError::Time {
            param,
            value: value.chars().take(64).collect(),
        })
}

/// The query string of `GET /v1/sessions`, as sent (absent parameters
/// `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListParams<'a> {
    /// `from`, RFC 3339.
    pub from: Option<&'a str>,
    /// `to`, RFC 3339.
    pub to: Option<&'a str>,
    /// `status`: `active` or `ended`.
    pub status: Option<&'a str>,
    /// `limit`: 1-100.
    pub limit: Option<&'a str>,
    /// `cursor`: a `nextCursor` from an earlier page.
    pub cursor: Option<&'a str>,
}

// What a cursor carries: the position (started_at ms and id of the last
// session answered) and the window and filter it belongs to, so the
// following pages list the same window even when `from`/`to` were left to
// their defaults, which move with the clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorBody {
    v: u8,
    t: Millis,
    i: String,
    f: Millis,
    u: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<SessionStatus>,
}

const CURSOR_VERSION: u8 = 1;

fn encode_cursor(body: &CursorBody) -> String {
    // Serializing a struct of integers and strings cannot fail.
    let json = serde_json::to_vec(body).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(s: &str) -> Result<CursorBody, QueryError> {
    if s.len() > MAX_CURSOR_CHARS {
        return Err(QueryError::Cursor);
    }
    let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| QueryError::Cursor)?;
    let body: CursorBody = serde_json::from_slice(&bytes).map_err(|_| QueryError::Cursor)?;
    // Only the exact text this module writes is accepted: no other JSON
    // spelling, order or padding of the same content.
    let valid = body.v == CURSOR_VERSION
        && is_uuid(&body.i)
        && body.f <= body.t
        && body.t < body.u
        && encode_cursor(&body) == s;
    if valid {
        Ok(body)
    } else {
        Err(QueryError::Cursor)
    }
}

/// True for a lower-case hyphenated UUID.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// The creation time in a v7 session id; `None` for any other id.
pub fn v7_time(id: &str) -> Option<Millis> {
    if !is_uuid(id) || id.as_bytes()[14] != b'7' {
        return None;
    }
    let hex: String = id[..8].chars().chain(id[9..13].chars()).collect();
    i64::from_str_radix(&hex, 16).ok()
}

/// A parsed `GET /v1/sessions` for one caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    user: String,
    from: Millis,
    to: Millis,
    status: Option<SessionStatus>,
    limit: u32,
    after: Option<(Millis, String)>,
}

fn pick<T: PartialEq>(
    param: &'static str,
    given: Option<T>,
    from_cursor: Option<T>,
) -> Result<Option<T>, QueryError> {
    match (given, from_cursor) {
        (Some(g), Some(c)) if g != c => Err(QueryError::CursorMismatch { param }),
        (g, c) => Ok(g.or(c)),
    }
}

impl ListQuery {
    /// Validates the parameters for caller `user` at `now`. Defaults: `to`
    /// now, `from` 30 days before `to`, every status, 20 sessions. With a
    /// cursor, absent `from`, `to` and `status` are the cursor's, and given
    /// ones must equal them.
    pub fn parse(
        user: &str,
        params: &ListParams<'_>,
        now: Millis,
    ) -> Result<ListQuery, QueryError> {
        let cursor = params.cursor.map(decode_cursor).transpose()?;
        let from = params.from.map(|v| parse_time("from", v)).transpose()?;
        let to = params.to.map(|v| parse_time("to", v)).transpose()?;
        let status = params
            .status
            .map(|s| match s {
                "active" => Ok(SessionStatus::Active),
                "ended" => Ok(SessionStatus::Ended),
                _ => Err(QueryError::Status),
            })
            .transpose()?;
        let limit = match params.limit {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<u32>()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or(QueryError::Limit { max: MAX_LIMIT })?,
        };
        let to = pick("to", to, cursor.as_ref().map(|c| c.u))?.unwrap_or(now);
        let from = pick("from", from, cursor.as_ref().map(|c| c.f))?
            .unwrap_or(to.saturating_sub(DEFAULT_WINDOW_MS));
        let status = match (&cursor, status) {
            (None, s) => s,
            (Some(c), None) => c.s,
            (Some(c), Some(s)) if c.s == Some(s) => Some(s),
            (Some(_), Some(_)) => return Err(QueryError::CursorMismatch { param: "status" }),
        };
        if from >= to {
            return Err(QueryError::EmptyRange);
        }
        Ok(ListQuery {
            user: user.to_owned(),
            from,
            to,
            status,
            limit,
            after: cursor.map(|c| (c.t, c.i)),
        })
    }

    /// The statements to run in one batch: one per table group holding the
    /// window (none when no partition does). Parameters: at most six each.
    pub fn statements(&self, existing: &Existing) -> Vec<Statement> {
        // Start below the cursor, or at the window's end.
        let (upper_t, upper_id) = match &self.after {
            Some((t, id)) if *t < self.to => (*t, id.clone()),
            _ => (self.to, String::new()),
        };
        let mut params = vec![
            Value::from(self.user.as_str()),
            Value::from(self.from),
            Value::from(upper_t),
            Value::from(upper_id),
            Value::from(self.limit + 1),
        ];
        if let Some(s) = self.status {
            params.push(Value::from(s.as_str()));
        }
        // One statement per table pair, not one compound SELECT per group:
        // D1 refuses compound SELECTs of more than a few terms.
        plan(TableKind::Members, self.from, self.to, existing)
            .into_iter()
            .flat_map(|g| g.spans)
            .filter(|s| existing.contains(TableKind::Sessions, *s))
            .map(|s| {
                let sql = list_sql(s, self.status.is_some(), existing);
                Statement::new(sql, params.clone())
            })
            .collect()
    }

    /// The answer from the rows of all [`ListQuery::statements`]: newest
    /// first, at most `limit`, with `nextCursor` while more remain.
    pub fn answer(&self, rows: impl IntoIterator<Item = Value>) -> Result<SessionList, RowError> {
        let mut found = rows
            .into_iter()
            .map(|r| Ok((col_int(&r, "started_ms")?, session_from_row(&r)?)))
            .collect::<Result<Vec<(Millis, SessionSummary)>, RowError>>()?;
        // Newest first. A session is found once (a month's statement skips
        // what its year table already has); the dedup keeps the answer
        // right even if a caller passes rows twice.
        found.sort_by(|a, b| (b.0, &b.1.id).cmp(&(a.0, &a.1.id)));
        found.dedup_by(|a, b| a.1.id == b.1.id);
        let more = found.len() > self.limit as usize;
        found.truncate(self.limit as usize);
        let next_cursor = match found.last() {
            Some((t, s)) if more => Some(encode_cursor(&CursorBody {
                v: CURSOR_VERSION,
                t: *t,
                i: s.id.clone(),
                f: self.from,
                u: self.to,
                s: self.status,
            })),
            _ => None,
        };
        Ok(SessionList {
            sessions: found.into_iter().map(|(_, s)| s).collect(),
            next_cursor,
        })
    }
}

// One table pair: read in index order and stopped after the limit.
// A month whose year table exists (a move under way) leaves out the
// sessions the year table already has, so the newer copy is the one listed
// and filtered by status.
fn list_sql(span: Span, by_status: bool, existing: &Existing) -> String {
    let cols: Vec<String> = TableKind::Sessions
        .columns()
        .iter()
        .map(|(c, _)| format!("s.{c} AS {c}"))
        .collect();
    format!(
        "SELECT m.started_at AS started_ms, {cols}, {stats} FROM {members} AS m \
         JOIN {sessions} AS s ON s.id = m.session_id \
         WHERE m.user_id = ?1 AND m.started_at >= ?2 \
         AND (m.started_at, m.session_id) < (?3, ?4){status}{shadow} \
         ORDER BY m.started_at DESC, m.session_id DESC LIMIT ?5",
        cols = cols.join(", "),
        stats = stats_column("s.id"),
        members = TableKind::Members.table(span),
        sessions = TableKind::Sessions.table(span),
        status = if by_status { " AND s.status = ?6" } else { "" },
        shadow = match span {
            Span::Month(m) if existing.contains(TableKind::Sessions, Span::Year(m.year())) => {
                format!(
                    " AND NOT EXISTS (SELECT 1 FROM {} AS y WHERE y.id = s.id)",
                    TableKind::Sessions.table(Span::Year(m.year()))
                )
            }
            _ => String::new(),
        },
    )
}

/// The kinds whose figures a session read from D1 carries at most (the
/// first by name): a kind's figures take about 200 bytes, and D1 answers
/// no value over 2 MB, so a session with many thousands of kinds must not
/// fail every list it is in. `GET /v1/sessions/{id}` of a live session
/// has them all.
pub const MAX_LISTED_KINDS: usize = 256;

// The `stats` of session `id` as one JSON array of `[kind, figures]`, the
// figures as the flush wrote them (JSON text, kept as a string: reading
// them back as JSON would print the numbers again, with fewer digits).
fn stats_column(id: &str) -> String {
    format!(
        "(SELECT json_group_array(json_array(st.kind, st.stats)) FROM \
         (SELECT kind, stats FROM session_stats WHERE session_id = {id} \
         ORDER BY kind LIMIT {MAX_LISTED_KINDS}) AS st) AS stats"
    )
}

// A kind whose figures do not read back is left out rather than failing
// the whole list: a sum beyond the range of a double is written as `null`.
fn stats_col(row: &Value) -> Result<BTreeMap<String, KindStats>, RowError> {
    let pairs: Vec<(String, String)> = json_col(row, "stats")?;
    Ok(pairs
        .into_iter()
        .filter_map(|(kind, figures)| Some((kind, serde_json::from_str(&figures).ok()?)))
        .collect())
}

fn json_col<T: serde::de::DeserializeOwned>(
    row: &Value,
    column: &'static str,
) -> Result<T, RowError> {
    serde_json::from_str(&col_str(row, column)?).map_err(|e| RowError::Json {
        column,
        detail: e.to_string(),
    })
}

fn session_from_row(row: &Value) -> Result<SessionSummary, RowError> {
    let status = match col_str(row, "status")?.as_str() {
        "active" => SessionStatus::Active,
        "ended" => SessionStatus::Ended,
        _ => {
            return Err(RowError::Column {
                column: "status",
                expected: "`active` or `ended`",
            })
        }
    };
    let point_count =
        u64::try_from(col_int(row, "point_count")?).map_err(|_| RowError::Column {
            column: "point_count",
            expected: "a count",
        })?;
    Ok(SessionSummary {
        id: col_str(row, "id")?,
        owner_id: col_str(row, "owner_id")?,
        title: col_opt_str(row, "title")?,
        members: json_col(row, "members")?,
        // A row read without the column (a query of the record's older
        // shape) has no viewers.
        viewers: match row.get("viewers") {
            None | Some(Value::Null) => Vec::new(),
            Some(_) => json_col(row, "viewers")?,
        },
        metadata: json_col(row, "metadata")?,
        status,
        started_at: col_str(row, "started_at")?,
        ended_at: col_opt_str(row, "ended_at")?,
        point_count,
        last_seq: point_count,
        stats: stats_col(row)?,
    })
}

/// Upserts a session's figures per kind into `session_stats` (CONTRACT.md
/// section 5: listed sessions carry `stats`), for the flush's batch: JSON
/// arrays of `[kind, figures as JSON text]` of at most
/// [`MAX_CHUNK_BYTES`], bound with the session id, one statement
/// per array.
pub fn write_stats(session_id: &str, stats: &[(String, KindStats)]) -> Vec<Statement> {
    let mut arrays = Vec::new();
    for (kind, figures) in stats {
        let text = serde_json::to_string(figures).unwrap_or_default();
        push_chunked(&mut arrays, &json!([kind, text]).to_string());
    }
    arrays
        .into_iter()
        .map(|mut a| {
            a.push(']');
            Statement::new(
                "INSERT INTO session_stats (session_id, kind, stats) \
                 SELECT ?1, json_extract(s.value, '$[0]'), json_extract(s.value, '$[1]') \
                 FROM json_each(?2) AS s WHERE true \
                 ON CONFLICT (session_id, kind) DO UPDATE SET stats = excluded.stats",
                vec![Value::from(session_id), Value::from(a)],
            )
        })
        .collect()
}

/// Statements writing to one partition, with what makes it exist.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionWrite {
    /// The partition written.
    pub span: Span,
    /// Its creation; put `ensure.statements` before `statements` unless
    /// this isolate already saw every table of `ensure.tables` created.
    pub ensure: Ensure,
    /// The writes.
    pub statements: Vec<Statement>,
}

/// The session row of `rec` and its member rows (the owner included), for
/// the same batch as the flush's points (its `stats` are not in the row:
/// [`write_stats`] writes the figures of the kinds a flush changed); the
/// partition is [`write_partition`]`(started_at, now)`. The row is upserted
/// as the flush always did (the count never goes down); member rows are
/// added for the owner, every writer and every viewer, and the rows of
/// users no longer in the record are deleted. An error: `started_at` is not RFC 3339 (a record this
/// server did not make).
///
/// A monthly write also makes sure of its year's sessions table and
/// updates the row there when the row is there, inserting into the month
/// only when it is not: the lifecycle may have moved the month already,
/// as of a later clock than the writer's (CONTRACT.md section 9), and the
/// row must stay one row, the newest where readers prefer it (the yearly
/// copy; see `partition`).
pub fn write_session(rec: &SessionSummary, now: Millis) -> Result<PartitionWrite, RowError> {
    let started_ms = parse_time("startedAt", &rec.started_at).map_err(|_| RowError::Column {
        column: "started_at",
        expected: "an RFC 3339 date-time",
    })?;
    let span = write_partition(started_ms, now);
    let sessions = TableKind::Sessions.table(span);
    let placeholders: Vec<String> = (1..=TableKind::Sessions.columns().len())
        .map(|i| format!("?{i}"))
        .collect();
    let yearly = match span {
        Span::Month(m) => Some(Span::Year(m.year())),
        Span::Year(_) => None,
    };
    // Into the month only while the year does not hold the row; a
    // `SELECT` with a `WHERE` so SQLite parses the `ON CONFLICT`.
    let source = match yearly {
        Some(y) => format!(
            "SELECT {placeholders} WHERE NOT EXISTS (SELECT 1 FROM {y} WHERE id = ?1)",
            placeholders = placeholders.join(", "),
            y = TableKind::Sessions.table(y),
        ),
        None => format!("VALUES ({})", placeholders.join(", ")),
    };
    let upsert = format!(
        "INSERT INTO {t} ({cols}) {source} \
         ON CONFLICT(id) DO UPDATE SET title = excluded.title, members = excluded.members, \
         viewers = excluded.viewers, \
         metadata = excluded.metadata, status = excluded.status, ended_at = excluded.ended_at, \
         point_count = max({t}.point_count, excluded.point_count)",
        t = sessions,
        cols = TableKind::Sessions.column_list(""),
    );
    let mut everyone: Vec<&str> = vec![rec.owner_id.as_str()];
    everyone.extend(rec.members.iter().map(String::as_str));
    everyone.extend(rec.viewers.iter().map(String::as_str));
    everyone.sort_unstable();
    everyone.dedup();
    let everyone_json = Value::from(everyone).to_string();
    let members_sql = format!(
        "INSERT OR IGNORE INTO {} ({}) SELECT m.value, ?2, ?1 FROM json_each(?3) AS m",
        TableKind::Members.table(span),
        TableKind::Members.column_list("")
    );
    // Removed users' rows go in the same batch, so their list stops showing
    // the session with the flush that stores the change (in the year's
    // table too, where a move may have put them).
    let removed = |t: Span| {
        Statement::new(
            format!(
                "DELETE FROM {} WHERE session_id = ?1 AND user_id NOT IN \
                 (SELECT m.value FROM json_each(?2) AS m)",
                TableKind::Members.table(t),
            ),
            vec![
                Value::from(rec.id.as_str()),
                Value::from(everyone_json.as_str()),
            ],
        )
    };
    // In the order of `TableKind::Sessions.columns()`, as
    // `session_from_row` reads them back.
    let params = vec![
        Value::from(rec.id.as_str()),
        Value::from(rec.owner_id.as_str()),
        rec.title.as_deref().map_or(Value::Null, Value::from),
        Value::from(Value::from(rec.members.clone()).to_string()),
        Value::from(Value::from(rec.viewers.clone()).to_string()),
        Value::from(Value::Object(rec.metadata.clone()).to_string()),
        Value::from(rec.status.as_str()),
        Value::from(rec.started_at.as_str()),
        rec.ended_at.as_deref().map_or(Value::Null, Value::from),
        Value::from(rec.point_count),
    ];
    let mut statements = Vec::new();
    let mut ensure = ensure_sessions(span, now);
    if let Some(y) = yearly {
        let year = ensure_sessions(y, now);
        ensure.tables.splice(0..0, year.tables);
        ensure.statements.splice(0..0, year.statements);
        statements.push(Statement::new(
            format!(
                "UPDATE {t} SET title = ?2, members = ?3, viewers = ?4, metadata = ?5, \
                 status = ?6, ended_at = ?7, point_count = max(point_count, ?8) WHERE id = ?1",
                t = TableKind::Sessions.table(y),
            ),
            vec![
                params[0].clone(),
                params[2].clone(),
                params[3].clone(),
                params[4].clone(),
                params[5].clone(),
                params[6].clone(),
                params[8].clone(),
                params[9].clone(),
            ],
        ));
        statements.push(removed(y));
    }
    statements.extend([
        Statement::new(upsert, params),
        Statement::new(
            members_sql,
            vec![
                Value::from(rec.id.as_str()),
                Value::from(started_ms),
                Value::from(everyone_json.as_str()),
            ],
        ),
        removed(span),
    ]);
    Ok(PartitionWrite {
        span,
        ensure,
        statements,
    })
}

/// Appends the JSON text `item` to the last of `arrays` (JSON arrays left
/// open, to be closed with `]`) while it stays within `MAX_CHUNK_BYTES`,
/// else opens a new one: each array is one bound parameter.
fn push_chunked(arrays: &mut Vec<String>, item: &str) {
    match arrays.last_mut() {
        Some(arr) if arr.len() + item.len() + 2 <= MAX_CHUNK_BYTES => {
            arr.push(',');
            arr.push_str(item);
        }
        _ => arrays.push(format!("[{item}")),
    }
}

/// The statements of a flush's points of session `session_id`: stored
/// points `(ts, JSON as the API returns it)` grouped by
/// [`write_partition`]`(ts, now)` into JSON arrays of at most
/// [`MAX_CHUNK_BYTES`], each array bound as one parameter of three
/// statements: the points insert (`INSERT OR IGNORE` on `(session_id,
/// seq)`), the session's point months and the roll-up marks
/// ([`mark_statement`]). Run them all
/// in the batch that writes the session row.
pub fn write_points(
    session_id: &str,
    points: &[(Millis, String)],
    now: Millis,
) -> Vec<PartitionWrite> {
    let mut out: Vec<(Span, Vec<String>)> = Vec::new();
    for (ts, body) in points {
        let span = write_partition(*ts, now);
        let idx = match out.iter().position(|(s, _)| *s == span) {
            Some(i) => i,
            None => {
                out.push((span, Vec::new()));
                out.len() - 1
            }
        };
        push_chunked(&mut out[idx].1, body);
    }
    out.into_iter()
        .map(|(span, arrays)| PartitionWrite {
            span,
            ensure: ensure_points(span, now),
            statements: arrays
                .into_iter()
                .flat_map(|mut arr| {
                    arr.push(']');
                    [
                        Statement::new(
                            insert_points_sql(span),
                            vec![Value::from(session_id), Value::from(arr.as_str())],
                        ),
                        Statement::new(
                            RECORD_POINT_MONTHS,
                            vec![Value::from(session_id), Value::from(arr.as_str())],
                        ),
                        mark_statement(&arr),
                    ]
                })
                .collect(),
        })
        .collect()
}

fn insert_points_sql(span: Span) -> String {
    format!(
        "INSERT OR IGNORE INTO {} ({}) \
         SELECT ?1, json_extract(p.value, '$.seq'), json_extract(p.value, '$.userId'), \
         json_extract(p.value, '$.id'), json_extract(p.value, '$.kind'), \
         json_extract(p.value, '$.value'), json_extract(p.value, '$.data'), \
         json_extract(p.value, '$.ts') FROM json_each(?2) AS p",
        TableKind::Points.table(span),
        TableKind::Points.column_list("")
    )
}

/// Marks the (author, hour) buckets of a JSON array of stored points (`?1`)
/// for the roll-up to recompute. Runs in the batch
/// that inserts those points.
pub fn mark_statement(points_json: &str) -> Statement {
    Statement::new(
        "INSERT OR IGNORE INTO rollup_marks (month, hour_ms, user_id) \
         SELECT DISTINCT strftime('%Y_%m', t / 1000, 'unixepoch'), t - t % 3600000, u \
         FROM (SELECT json_extract(p.value, '$.ts') AS t, json_extract(p.value, '$.userId') AS u \
         FROM json_each(?1) AS p)",
        vec![Value::from(points_json)],
    )
}

/// Records the months ('YYYY_MM' of each point's `ts`, UTC) of a JSON array
/// of points (`?2`) for session `?1`.
pub const RECORD_POINT_MONTHS: &str =
    "INSERT OR IGNORE INTO session_point_months (session_id, month) \
     SELECT DISTINCT ?1, strftime('%Y_%m', json_extract(p.value, '$.ts') / 1000, 'unixepoch') \
     FROM json_each(?2) AS p";

/// Reads the months of a session's points; its rows go to
/// [`parse_point_months`]. Run it in one batch with
/// [`LIST_PARTITIONS`](crate::data::partition::LIST_PARTITIONS); then
/// [`find_session`] and [`read_points`] together in a second batch.
pub fn point_months(session_id: &str) -> Statement {
    Statement::new(
        "SELECT month FROM session_point_months WHERE session_id = ?1 ORDER BY month",
        vec![Value::from(session_id)],
    )
}

/// The months of [`point_months`]'s rows.
pub fn parse_point_months(rows: &[Value]) -> Result<Vec<Month>, RowError> {
    rows.iter()
        .map(|r| {
            Month::parse(&col_str(r, "month")?).ok_or(RowError::Column {
                column: "month",
                expected: "YYYY_MM",
            })
        })
        .collect()
}

/// The statement finding session `id` in D1: its partition is its start
/// month, which a v7 id carries, so only that month's and year's tables
/// are searched (the yearly copy wins). `None` when the id is not v7 or no
/// such table exists: the session is not in D1 (404).
pub fn find_session(id: &str, existing: &Existing) -> Option<Statement> {
    let month = Month::of(v7_time(id)?);
    let spans: Vec<Span> = [Span::Year(month.year()), Span::Month(month)]
        .into_iter()
        .filter(|s| existing.contains(TableKind::Sessions, *s))
        .collect();
    let cols = TableKind::Sessions.column_list("");
    let stats = stats_column("?1");
    let branches: Vec<String> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "SELECT {i} AS copy, {cols} FROM {} WHERE id = ?1",
                TableKind::Sessions.table(*s)
            )
        })
        .collect();
    (!branches.is_empty()).then(|| {
        Statement::new(
            format!(
                "SELECT {cols}, {stats} FROM ({}) ORDER BY copy LIMIT 1",
                branches.join(" UNION ALL ")
            ),
            vec![Value::from(id)],
        )
    })
}

/// The session of [`find_session`]'s rows; `None`: not found (404).
pub fn parse_found_session(rows: &[Value]) -> Result<Option<SessionSummary>, RowError> {
    rows.first().map(session_from_row).transpose()
}

const POINT_COLUMNS: &str = "seq, user_id, client_id, kind, value, data, ts";

/// The statements reading the points of session `session_id` with
/// `seq > after_seq`, in seq order, at most `limit` each (1-1000; other
/// values are clamped), one per partition of `months` (from
/// [`parse_point_months`]) that exists: D1 refuses compound SELECTs of more
/// than a few terms, so tables are not joined in SQL. Run them in one batch
/// and give their rows to [`merge_points`]. Empty when there are none.
pub fn read_points(
    session_id: &str,
    after_seq: u64,
    limit: u32,
    months: &[Month],
    existing: &Existing,
) -> Vec<Statement> {
    let spans = point_spans(months, existing);
    let limit = limit.clamp(1, MAX_READ_LIMIT as u32);
    spans
        .iter()
        .map(|s| {
            Statement::new(
                format!(
                    "SELECT {POINT_COLUMNS} FROM {} WHERE session_id = ?1 AND seq > ?2 \
                     ORDER BY seq LIMIT ?3",
                    TableKind::Points.table(*s)
                ),
                vec![
                    Value::from(session_id),
                    Value::from(i64::try_from(after_seq).unwrap_or(i64::MAX)),
                    Value::from(limit),
                ],
            )
        })
        .collect()
}

/// The rows of [`read_points`]'s statements as one page: in seq order, a
/// point found in two tables (a move under way) once, at most `limit`.
pub fn merge_points(results: &[Vec<Value>], limit: u64) -> Vec<Value> {
    let mut rows: Vec<(i64, &Value)> = results
        .iter()
        .flatten()
        .map(|r| (col_int(r, "seq").unwrap_or(i64::MAX), r))
        .collect();
    rows.sort_by_key(|(seq, _)| *seq);
    rows.dedup_by_key(|(seq, _)| *seq);
    rows.into_iter()
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(|(_, r)| r.clone())
        .collect()
}

/// The `GET /v1/sessions/{id}/points` answer from [`read_points`]'s rows
/// (none when it gave no statement) and the session's `lastSeq`.
pub fn points_page(rows: &[Value], last_seq: u64) -> Result<PointsPage, RowError> {
    let points = rows
        .iter()
        .map(|r| {
            let seq = u64::try_from(col_int(r, "seq")?).map_err(|_| RowError::Column {
                column: "seq",
                expected: "a positive integer",
            })?;
            let data = match col_opt_str(r, "data")? {
                Some(_) => Some(json_col(r, "data")?),
                None => None,
            };
            Ok(StoredPoint {
                seq,
                user_id: col_str(r, "user_id")?,
                id: col_opt_str(r, "client_id")?,
                kind: col_str(r, "kind")?,
                value: col_opt_f64(r, "value")?,
                data,
                ts: col_int(r, "ts")?,
            })
        })
        .collect::<Result<Vec<_>, RowError>>()?;
    Ok(PointsPage { points, last_seq })
}

/// The points tables that exist for `months`: each month's and its year's,
/// in order, once each.
fn point_spans(months: &[Month], existing: &Existing) -> Vec<Span> {
    let mut spans: Vec<Span> = months
        .iter()
        .flat_map(|m| [Span::Year(m.year()), Span::Month(*m)])
        .filter(|s| existing.contains(TableKind::Points, *s))
        .collect();
    spans.sort();
    spans.dedup();
    spans
}

/// The statements computing session `session_id`'s `stats` from D1 (a
/// retired session's object, which kept them, is gone): per points table
/// of `months` that exists, one `GROUP BY kind` over the points with a
/// value, with the seq and value of the highest such seq. A monthly table
/// whose year table exists skips the points the year already has (a move
/// under way), so no point counts twice. Run them in one batch and give
/// their rows to [`merge_stats`]. Empty when there are none.
pub fn stats_statements(session_id: &str, months: &[Month], existing: &Existing) -> Vec<Statement> {
    let spans = point_spans(months, existing);
    spans
        .iter()
        .map(|s| {
            let t = TableKind::Points.table(*s);
            let skip = match s {
                Span::Month(m) if existing.contains(TableKind::Points, Span::Year(m.year())) => {
                    format!(
                        " AND NOT EXISTS (SELECT 1 FROM {} AS y WHERE y.session_id = p.session_id \
                         AND y.seq = p.seq)",
                        TableKind::Points.table(Span::Year(m.year()))
                    )
                }
                _ => String::new(),
            };
            Statement::new(
                format!(
                    "SELECT g.kind, g.n, g.sum, g.min, g.max, g.last_seq, q.value AS last FROM \
                     (SELECT kind, count(*) AS n, sum(value) AS sum, min(value) AS min, \
                     max(value) AS max, max(seq) AS last_seq FROM {t} AS p \
                     WHERE session_id = ?1 AND value IS NOT NULL{skip} GROUP BY kind) AS g \
                     JOIN {t} AS q ON q.session_id = ?1 AND q.seq = g.last_seq"
                ),
                vec![Value::from(session_id)],
            )
        })
        .collect()
}

/// The `stats` of a session from the rows of [`stats_statements`]:
/// counts and sums added, the extremes kept, `last` from the highest seq.
pub fn merge_stats(results: &[Vec<Value>]) -> Result<BTreeMap<String, KindStats>, RowError> {
    let mut out: BTreeMap<String, (i64, KindStats)> = BTreeMap::new();
    for r in results.iter().flatten() {
        let kind = col_str(r, "kind")?;
        let f = |c: &'static str| {
            col_opt_f64(r, c)?.ok_or(RowError::Column {
                column: c,
                expected: "a number",
            })
        };
        let count = u64::try_from(col_int(r, "n")?).map_err(|_| RowError::Column {
            column: "n",
            expected: "a count",
        })?;
        let (seq, part) = (
            col_int(r, "last_seq")?,
            KindStats {
                count,
                sum: f("sum")?,
                min: f("min")?,
                max: f("max")?,
                last: f("last")?,
            },
        );
        match out.get_mut(&kind) {
            None => {
                out.insert(kind, (seq, part));
            }
            Some((last_seq, s)) => {
                s.count += part.count;
                s.sum += part.sum;
                s.min = s.min.min(part.min);
                s.max = s.max.max(part.max);
                if seq > *last_seq {
                    (*last_seq, s.last) = (seq, part.last);
                }
            }
        }
    }
    Ok(out.into_iter().map(|(k, (_, s))| (k, s)).collect())
}

// rusqlite, which runs the statements, is a native-only dev-dependency.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
