//! User exports (CONTRACT.md section 9): `POST /v1/users/{userId}/exports`
//! and its status and download, as a sequence of small steps with their
//! progress in D1 (`exports`), each step one alarm of the export's object.
//!
//! **File.** gzip'd NDJSON: every session the user owns or is a member of,
//! oldest start first (then by id), as
//! `{"type":"session",…the session as GET /v1/sessions lists it}`, each
//! followed by its points in seq order as
//! `{"type":"point","sessionId",…the point as GET …/points shows it}`
//! (from D1, or from the archive once pruned), then the user's metrics by
//! UTC day as `{"type":"metric","start","kind","count","sum","min","max","avg"}`
//! by start then kind (from `metrics_day`).
//!
//! **Steps.** A step appends at most `EXPORT_STEP_POINTS` lines as one
//! complete gzip member, the R2 object `exports/{id}/part-{n:06}.gz`
//! (concatenated gzip members are one valid gzip file), then advances the
//! row (`state`, `parts`, counts) only if `parts` is still what it read: a
//! step killed after its put writes the same part again. The last step
//! reads the parts back in order for the file's size and SHA-256 and sets
//! `status` `done`. The download streams the parts in order.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sesh_protocol::limits::MAX_READ_LIMIT;
use sha2::{Digest, Sha256};

use crate::data::history::{
    find_session, merge_points, parse_found_session, point_months, points_page, read_points,
};
use crate::data::partition::{
    col_int, col_opt_f64, col_opt_str, col_str, Existing, RowError, Statement, TableKind,
};
use crate::lifecycle::archive::{archive_state, fetch_archive, hex, source, NdjsonGz, Source};
use crate::lifecycle::existing;
use crate::lifecycle::store::{query, Backend, LifecycleError};
use crate::time::{rfc3339, Millis};

/// The R2 key of an export's part `n`.
pub fn part_key(id: &str, n: u32) -> String {
    format!("exports/{id}/part-{n:06}.gz")
}

/// Where an export is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, no step run yet.
    Pending,
    /// Steps under way.
    Running,
    /// The file is complete: `bytes` and `sha256` are known.
    Done,
    /// Given up (its object's alarm failed too often).
    Failed,
}

impl Status {
    /// The wire and column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        [
            Status::Pending,
            Status::Running,
            Status::Done,
            Status::Failed,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    #[default]
    Sessions,
    Metrics,
    Finish,
}

// A session being written: its points after `after_seq` are still due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Current {
    id: String,
    started_ms: Millis,
    after_seq: u64,
}

/// An export's progress, kept as JSON in `exports.state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    phase: Phase,
    // The last session fully written, as (start ms, id).
    after: Option<(Millis, String)>,
    current: Option<Current>,
    // The last metric written, as (start ms, kind).
    metric_after: Option<(Millis, String)>,
}

/// An `exports` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRow {
    /// Export id.
    pub id: String,
    /// Whose data.
    pub user_id: String,
    /// Where it is.
    pub status: Status,
    /// Sessions written so far.
    pub sessions: u64,
    /// Points written so far.
    pub points: u64,
    /// File size, once done.
    pub bytes: Option<u64>,
    /// Hex SHA-256 of the file, once done.
    pub sha256: Option<String>,
    /// Part objects written.
    pub parts: u32,
    /// Progress.
    pub progress: Progress,
}

/// The answer of `POST` (202) and `GET /v1/users/{userId}/exports/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportStatus {
    /// Export id.
    pub id: String,
    /// `pending`, `running`, `done` or `failed`.
    pub status: Status,
    /// Sessions in the file (so far, until done).
    pub sessions: u64,
    /// Points in the file (so far, until done).
    pub points: u64,
    /// Size of the file in bytes, once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Hex SHA-256 of the file, once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl ExportRow {
    /// The status answer.
    pub fn status(&self) -> ExportStatus {
        ExportStatus {
            id: self.id.clone(),
            status: self.status,
            sessions: self.sessions,
            points: self.points,
            bytes: self.bytes,
            sha256: self.sha256.clone(),
        }
    }
}

/// Creates the export row (pending); repeating it changes nothing.
pub fn create(id: &str, user: &str, now: Millis) -> Statement {
    let state = serde_json::to_string(&Progress::default()).unwrap_or_default();
    Statement::new(
        "INSERT OR IGNORE INTO exports (id, user_id, status, state, created_at, updated_at) \
         VALUES (?1, ?2, 'pending', ?3, ?4, ?4)",
        vec![
            Value::from(id),
            Value::from(user),
            Value::from(state),
            Value::from(now),
        ],
    )
}

/// Reads the export row; its rows go to [`ExportRow::from_rows`].
pub fn load(id: &str) -> Statement {
    Statement::new(
        "SELECT id, user_id, status, sessions, points, bytes, sha256, parts, state \
         FROM exports WHERE id = ?1",
        vec![Value::from(id)],
    )
}

/// Marks the export failed (its object gave up), with the reason for the
/// operator.
pub fn fail(id: &str, error: &str, now: Millis) -> Statement {
    Statement::new(
        "UPDATE exports SET status = 'failed', error = ?2, updated_at = ?3 \
         WHERE id = ?1 AND status != 'done'",
        vec![Value::from(id), Value::from(error), Value::from(now)],
    )
}

fn unsigned(row: &Value, column: &'static str) -> Result<u64, RowError> {
    u64::try_from(col_int(row, column)?).map_err(|_| RowError::Column {
        column,
        expected: "a count",
    })
}

impl ExportRow {
    /// The row of [`load`]'s rows; `None`: no such export.
    pub fn from_rows(rows: &[Value]) -> Result<Option<ExportRow>, RowError> {
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let status = Status::parse(&col_str(r, "status")?).ok_or(RowError::Column {
            column: "status",
            expected: "an export status",
        })?;
        let progress = serde_json::from_str(&col_str(r, "state")?).map_err(|e| RowError::Json {
            column: "state",
            detail: e.to_string(),
        })?;
        let bytes = match r.get("bytes") {
            None | Some(Value::Null) => None,
            Some(_) => Some(unsigned(r, "bytes")?),
        };
        Ok(Some(ExportRow {
            id: col_str(r, "id")?,
            user_id: col_str(r, "user_id")?,
            status,
            sessions: unsigned(r, "sessions")?,
            points: unsigned(r, "points")?,
            bytes,
            sha256: col_opt_str(r, "sha256")?,
            parts: u32::try_from(col_int(r, "parts")?).unwrap_or(0),
            progress,
        }))
    }
}

/// Failed steps in a row after which the export is marked `failed`.
pub const MAX_FAILURES: u32 = 20;

/// After the `failures`-th failed step in a row: the wait before the next
/// attempt (1 s doubling to a minute, as a session's D1 retries), or `None`
/// when the export gives up and is marked failed ([`fail`]).
pub fn retry_after(failures: u32) -> Option<Millis> {
    (failures < MAX_FAILURES).then(|| crate::session::retry_backoff_ms(failures) as Millis)
}

/// What is left after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More steps are due.
    More,
    /// The export is done, failed or unknown: nothing more to do.
    Finished,
}

/// The line of a session (the session as listed, tagged).
pub fn session_line(session: &impl Serialize) -> Value {
    tagged("session", session, None)
}

/// The line of a point of `session_id` (the stored point, tagged).
pub fn point_line(session_id: &str, point: &impl Serialize) -> Value {
    tagged("point", point, Some(session_id))
}

fn tagged(kind: &str, v: &impl Serialize, session_id: Option<&str>) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), Value::from(kind));
    if let Some(s) = session_id {
        m.insert("sessionId".into(), Value::from(s));
    }
    if let Ok(Value::Object(o)) = serde_json::to_value(v) {
        m.extend(o);
    }
    Value::Object(m)
}

fn metric_line(row: &Value) -> Result<Value, RowError> {
    let value_count = col_int(row, "value_count")?;
    let sum = col_opt_f64(row, "sum")?;
    Ok(serde_json::json!({
        "type": "metric",
        "start": rfc3339(col_int(row, "start_ms")?),
        "kind": col_str(row, "kind")?,
        "count": col_int(row, "count")?,
        "sum": sum,
        "min": col_opt_f64(row, "min")?,
        "max": col_opt_f64(row, "max")?,
        "avg": sum.filter(|_| value_count > 0).map(|s| s / value_count as f64),
    }))
}

// The user's next session after `after` (start ms, id): one statement per
// members table (D1 allows only a few terms in a compound SELECT), run as
// one batch; the smallest answer wins, and copies of a moving month are
// the same row.
fn next_session(user: &str, after: &Option<(Millis, String)>, ex: &Existing) -> Vec<Statement> {
    let (t, id) = after.clone().unwrap_or((Millis::MIN, String::new()));
    ex.spans(TableKind::Members)
        .map(|s| {
            Statement::new(
                format!(
                    "SELECT started_at AS started_ms, session_id FROM {} \
                     WHERE user_id = ?1 AND (started_at, session_id) > (?2, ?3) \
                     ORDER BY started_at, session_id LIMIT 1",
                    TableKind::Members.table(s)
                ),
                vec![Value::from(user), Value::from(t), Value::from(id.as_str())],
            )
        })
        .collect()
}

fn first_session(answers: Vec<Vec<Value>>) -> Result<Option<(Millis, String)>, RowError> {
    let mut best: Option<(Millis, String)> = None;
    for r in answers.iter().flatten() {
        let k = (col_int(r, "started_ms")?, col_str(r, "session_id")?);
        if best.as_ref().is_none_or(|b| k < *b) {
            best = Some(k);
        }
    }
    Ok(best)
}

/// Runs one step of export `id` at `now`, writing at most `step_points`
/// lines.
pub async fn step<B: Backend>(
    b: &B,
    id: &str,
    now: Millis,
    step_points: u32,
) -> Result<Step, LifecycleError> {
    let Some(row) = ExportRow::from_rows(&query(b, load(id)).await?)? else {
        return Ok(Step::Finished);
    };
    if matches!(row.status, Status::Done | Status::Failed) {
        return Ok(Step::Finished);
    }
    if row.progress.phase == Phase::Finish {
        finish(b, &row, now).await?;
        return Ok(Step::Finished);
    }
    let ex = existing(b).await?;
    let mut p = row.progress.clone();
    let (mut sessions, mut points) = (row.sessions, row.points);
    let mut out = NdjsonGz::new();
    let mut room = u64::from(step_points.max(1));
    while room > 0 && p.phase != Phase::Finish {
        match (p.phase, p.current.clone()) {
            (Phase::Sessions, None) => {
                let batch = next_session(&row.user_id, &p.after, &ex);
                let answers = if batch.is_empty() {
                    Vec::new()
                } else {
                    b.batch(&batch).await?
                };
                let Some((started_ms, sid)) = first_session(answers)? else {
                    p.phase = Phase::Metrics;
                    continue;
                };
                let found = match find_session(&sid, &ex) {
                    Some(st) => parse_found_session(&query(b, st).await?)?,
                    None => None,
                };
                match found {
                    Some(s) => {
                        out.line(&session_line(&s));
                        sessions += 1;
                        room -= 1;
                        p.current = Some(Current {
                            id: sid,
                            started_ms,
                            after_seq: 0,
                        });
                    }
                    // A member row without its session row (not written
                    // yet): nothing to export for it.
                    None => p.after = Some((started_ms, sid)),
                }
            }
            (Phase::Sessions, Some(cur)) => {
                let limit = room.min(MAX_READ_LIMIT as u64);
                let src = b
                    .batch(&[point_months(&cur.id), archive_state(&cur.id)])
                    .await?;
                let page = match source(&src[0], &src[1])? {
                    Source::Archive(key) => {
                        fetch_archive(b, &key).await?.page(cur.after_seq, limit)
                    }
                    Source::D1(months) => {
                        let stmts = read_points(&cur.id, cur.after_seq, limit as u32, &months, &ex);
                        let rows = if stmts.is_empty() {
                            Vec::new()
                        } else {
                            b.batch(&stmts).await?
                        };
                        points_page(&merge_points(&rows, limit), 0)?
                    }
                };
                let n = page.points.len() as u64;
                for pt in &page.points {
                    out.line(&point_line(&cur.id, pt));
                }
                points += n;
                room = room.saturating_sub(n.max(1));
                match page.points.last() {
                    Some(last) if n == limit => {
                        p.current = Some(Current {
                            after_seq: last.seq,
                            ..cur
                        });
                    }
                    _ => {
                        p.after = Some((cur.started_ms, cur.id));
                        p.current = None;
                    }
                }
            }
            (Phase::Metrics, _) => {
                let limit = room.min(1000);
                let (t, kind) = p
                    .metric_after
                    .clone()
                    .unwrap_or((Millis::MIN, String::new()));
                let rows = query(
                    b,
                    Statement::new(
                        "SELECT start_ms, kind, count, value_count, sum, min, max FROM metrics_day \
                         WHERE user_id = ?1 AND (start_ms, kind) > (?2, ?3) \
                         ORDER BY start_ms, kind LIMIT ?4",
                        vec![
                            Value::from(row.user_id.as_str()),
                            Value::from(t),
                            Value::from(kind),
                            Value::from(limit),
                        ],
                    ),
                )
                .await?;
                for r in &rows {
                    out.line(&metric_line(r)?);
                }
                let n = rows.len() as u64;
                room = room.saturating_sub(n.max(1));
                match rows.last() {
                    Some(last) if n == limit => {
                        p.metric_after = Some((col_int(last, "start_ms")?, col_str(last, "kind")?))
                    }
                    _ => p.phase = Phase::Finish,
                }
            }
            (Phase::Finish, _) => {}
        }
    }
    let mut parts = row.parts;
    if out.lines() > 0 {
        b.put(&part_key(id, parts), out.finish()).await?;
        parts += 1;
    }
    let state = serde_json::to_string(&p).unwrap_or_default();
    b.batch(&[Statement::new(
        "UPDATE exports SET status = 'running', state = ?2, parts = ?3, sessions = ?4, \
         points = ?5, updated_at = ?6 WHERE id = ?1 AND parts = ?7 AND status != 'done'",
        vec![
            Value::from(id),
            Value::from(state),
            Value::from(parts),
            Value::from(sessions),
            Value::from(points),
            Value::from(now),
            Value::from(row.parts),
        ],
    )])
    .await?;
    Ok(Step::More)
}

// Size and SHA-256 of the whole file from its parts, then `done`.
async fn finish<B: Backend>(b: &B, row: &ExportRow, now: Millis) -> Result<(), LifecycleError> {
    let mut parts = row.parts;
    if parts == 0 {
        // A user with nothing to export still gets a valid (empty) gzip file.
        b.put(&part_key(&row.id, 0), NdjsonGz::new().finish())
            .await?;
        parts = 1;
    }
    let mut sha = Sha256::new();
    let mut bytes = 0u64;
    for n in 0..parts {
        let key = part_key(&row.id, n);
        let part = b.get(&key).await?.ok_or(LifecycleError::Object {
            key,
            detail: "missing".into(),
        })?;
        sha.update(&part);
        bytes += part.len() as u64;
    }
    b.batch(&[Statement::new(
        "UPDATE exports SET status = 'done', parts = ?2, bytes = ?3, sha256 = ?4, updated_at = ?5 \
         WHERE id = ?1 AND status != 'done'",
        vec![
            Value::from(row.id.as_str()),
            Value::from(parts),
            Value::from(bytes),
            Value::from(hex(&sha.finalize())),
            Value::from(now),
        ],
    )])
    .await?;
    Ok(())
}

// rusqlite, which runs the statements, is a native-only dev-dependency.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
