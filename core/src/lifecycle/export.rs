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
//!
//! **One at a time.** [`start`] is one D1 batch: the row is inserted only
//! while none of the user's exports is pending or running, then the
//! user's pending or running export is read back. D1 runs a batch as one
//! transaction on its one writer, so of two concurrent starts exactly one
//! inserts and both answer that export; the export's object steps only
//! when the export answered is its own.
//!
//! **Expiry.** [`Expire`], a step of the scheduled run as of its event's
//! time, marks `expired` every export done `EXPORT_RETENTION_DAYS` or more
//! before (`updated_at` of a done row is when it was done: nothing writes
//! a done row), then deletes the parts of expired exports and sets their
//! `parts` to 0, so a run killed between the two finds the parts again.
//! An expired export's download is 404 `not_found`.
//!
//! **Failures.** A step that fails is tried again after a wait that doubles
//! from 1 s to a minute; after [`MAX_FAILURES`] in a row the export is
//! marked `failed`. [`after_step`] decides, from the count of failures in a
//! row that the export's object keeps and hands it; the object only stores
//! the count, sets the alarm and runs the statement it is given.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sesh_protocol::limits::MAX_READ_LIMIT;
use sesh_protocol::PointsPage;
use sha2::{Digest, Sha256};

use crate::data::history::{
    find_session, merge_points, parse_found_session, point_months, points_page, read_points,
};
use crate::data::partition::{
    col_int, col_opt_f64, col_opt_str, col_str, Existing, RowError, Statement, TableKind,
    LIST_PARTITIONS,
};
use crate::lifecycle::format::{hex, NdjsonGz};
use crate::lifecycle::reads::{archive_state, decoded, source, Source};
use crate::lifecycle::store::{
    ask, deleted, finished, first_rows, object, one, rows, stored, Answer, Budget, Driver, Io,
    LifecycleError, Poll,
};
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
    /// Done, and its file deleted after the retention.
    Expired,
}

impl Status {
    /// The wire and column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        [
            Status::Pending,
            Status::Running,
            Status::Done,
            Status::Failed,
            Status::Expired,
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
    /// `pending`, `running`, `done`, `failed` or `expired`.
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

/// Creates the export row (pending) unless one of the user's exports is
/// pending or running; repeating it changes nothing.
pub fn create(id: &str, user: &str, now: Millis) -> Statement {
    let state = serde_json::to_string(&Progress::default()).unwrap_or_default();
    Statement::new(
        "INSERT OR IGNORE INTO exports (id, user_id, status, state, created_at, updated_at) \
         SELECT ?1, ?2, 'pending', ?3, ?4, ?4 WHERE NOT EXISTS (SELECT 1 FROM exports \
         WHERE user_id = ?2 AND status IN ('pending', 'running'))",
        vec![
            Value::from(id),
            Value::from(user),
            Value::from(state),
            Value::from(now),
        ],
    )
}

/// The batch of `POST /v1/users/{userId}/exports` (see the module
/// documentation): [`create`], then the export the POST answers, the
/// user's pending or running one (else `id`'s own row); the second
/// statement's rows go to [`ExportRow::from_rows`].
pub fn start(id: &str, user: &str, now: Millis) -> Vec<Statement> {
    vec![
        create(id, user, now),
        Statement::new(
            "SELECT id, user_id, status, sessions, points, bytes, sha256, parts, state \
             FROM exports WHERE user_id = ?2 AND (status IN ('pending', 'running') OR id = ?1) \
             ORDER BY status IN ('pending', 'running') DESC, created_at LIMIT 1",
            vec![Value::from(id), Value::from(user)],
        ),
    ]
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
         WHERE id = ?1 AND status IN ('pending', 'running')",
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
/// attempt (1 s doubling to a minute), or `None` when the export gives up
/// and is marked failed ([`fail`]).
// The export's own policy: a step is an alarm of its own object, so it
// owes nothing to the session's flush retries, though the shape is alike.
pub fn retry_after(failures: u32) -> Option<Millis> {
    let doubling: Millis = 1 << failures.saturating_sub(1).min(6);
    (failures < MAX_FAILURES).then_some((1_000 * doubling).min(60_000))
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

#[derive(Debug)]
enum State {
    Load,
    Loaded,
    Existing(ExportRow),
    // Write lines until the step's room is used up.
    Lines,
    NextSession,
    Found(Millis, String),
    Source(Current, u64),
    ArchivePage(Current, u64, String),
    D1Page(Current, u64),
    Metrics(u64),
    // The step's part is stored; advance the row.
    PartPut,
    Advanced,
    // The last step: the file's size and checksum from its parts.
    FinishEmpty(ExportRow),
    FinishPart(u32),
    FinishDone,
    Done,
}

// What one step has written so far (its row as read, and its lines).
struct Work {
    row: ExportRow,
    ex: Existing,
    p: Progress,
    sessions: u64,
    points: u64,
    out: NdjsonGz,
    room: u64,
}

// The last step's reading of the parts.
struct Finish {
    id: String,
    parts: u32,
    sha: Sha256,
    bytes: u64,
}

/// One step of an export (one alarm of its object): writes at most
/// `step_points` lines as one part and advances the row, or, once every
/// line is written, reads the parts back for the file's size and SHA-256
/// and sets it done. Done with [`Step::More`] when more steps are due.
pub struct ExportStep {
    id: String,
    now: Millis,
    step_points: u32,
    work: Option<Work>,
    finish: Option<Finish>,
    state: State,
    answer: Option<Answer>,
}

impl std::fmt::Debug for ExportStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportStep")
            .field("id", &self.id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ExportStep {
    /// A step of export `id` at `now`.
    pub fn new(id: &str, now: Millis, step_points: u32) -> ExportStep {
        ExportStep {
            id: id.to_owned(),
            now,
            step_points,
            work: None,
            finish: None,
            state: State::Load,
            answer: None,
        }
    }

    fn work(&mut self) -> Result<&mut Work, LifecycleError> {
        self.work.as_mut().ok_or_else(finished)
    }

    // Reads part `n` back, or sets the export done once all are read.
    fn finish_from(&mut self, n: u32) -> Result<Poll<Step>, LifecycleError> {
        let f = self.finish.as_ref().ok_or_else(finished)?;
        if n < f.parts {
            let key = part_key(&f.id, n);
            return ask(&mut self.state, State::FinishPart(n), Io::Get(key));
        }
        let done = Statement::new(
            "UPDATE exports SET status = 'done', parts = ?2, bytes = ?3, sha256 = ?4, updated_at = ?5 \
             WHERE id = ?1 AND status IN ('pending', 'running')",
            vec![
                Value::from(f.id.as_str()),
                Value::from(f.parts),
                Value::from(f.bytes),
                Value::from(hex(&f.sha.clone().finalize())),
                Value::from(self.now),
            ],
        );
        ask(&mut self.state, State::FinishDone, one(done))
    }

    // Stores the step's part (if it has lines), else advances the row.
    fn write(&mut self) -> Result<Poll<Step>, LifecycleError> {
        let w = self.work()?;
        if w.out.lines() > 0 {
            let out = std::mem::take(&mut w.out);
            let key = part_key(&w.row.id, w.row.parts);
            return ask(
                &mut self.state,
                State::PartPut,
                Io::Put {
                    key,
                    bytes: out.finish(),
                },
            );
        }
        self.advance(false)
    }

    // Advances the row only if `parts` is still what the step read: a step
    // killed after its put writes the same part again.
    fn advance(&mut self, put: bool) -> Result<Poll<Step>, LifecycleError> {
        let now = self.now;
        let w = self.work()?;
        let parts = w.row.parts + u32::from(put);
        let state = serde_json::to_string(&w.p).unwrap_or_default();
        let update = Statement::new(
            "UPDATE exports SET status = 'running', state = ?2, parts = ?3, sessions = ?4, \
             points = ?5, updated_at = ?6 WHERE id = ?1 AND parts = ?7 \
             AND status IN ('pending', 'running')",
            vec![
                Value::from(w.row.id.as_str()),
                Value::from(state),
                Value::from(parts),
                Value::from(w.sessions),
                Value::from(w.points),
                Value::from(now),
                Value::from(w.row.parts),
            ],
        );
        ask(&mut self.state, State::Advanced, one(update))
    }

    // Takes the page of the current session's points.
    fn take_page(
        &mut self,
        cur: Current,
        limit: u64,
        page: PointsPage,
    ) -> Result<(), LifecycleError> {
        let w = self.work()?;
        let n = page.points.len() as u64;
        for pt in &page.points {
            w.out.line(&point_line(&cur.id, pt));
        }
        w.points += n;
        w.room = w.room.saturating_sub(n.max(1));
        match page.points.last() {
            Some(last) if n == limit => {
                w.p.current = Some(Current {
                    after_seq: last.seq,
                    ..cur
                });
            }
            _ => {
                w.p.after = Some((cur.started_ms, cur.id));
                w.p.current = None;
            }
        }
        self.state = State::Lines;
        Ok(())
    }
}

impl Driver for ExportStep {
    type Output = Step;

    fn poll(&mut self) -> Result<Poll<Step>, LifecycleError> {
        loop {
            let answer = self.answer.take();
            match std::mem::replace(&mut self.state, State::Done) {
                State::Load => {
                    let io = one(load(&self.id));
                    return ask(&mut self.state, State::Loaded, io);
                }
                State::Loaded => {
                    let Some(row) = ExportRow::from_rows(&first_rows(answer)?)? else {
                        return Ok(Poll::Done(Step::Finished));
                    };
                    if matches!(row.status, Status::Done | Status::Failed | Status::Expired) {
                        return Ok(Poll::Done(Step::Finished));
                    }
                    if row.progress.phase == Phase::Finish {
                        if row.parts == 0 {
                            // A user with nothing to export still gets a
                            // valid (empty) gzip file.
                            let key = part_key(&row.id, 0);
                            return ask(
                                &mut self.state,
                                State::FinishEmpty(row),
                                Io::Put {
                                    key,
                                    bytes: NdjsonGz::new().finish(),
                                },
                            );
                        }
                        self.finish = Some(Finish {
                            id: row.id.clone(),
                            parts: row.parts,
                            sha: Sha256::new(),
                            bytes: 0,
                        });
                        return self.finish_from(0);
                    }
                    return ask(
                        &mut self.state,
                        State::Existing(row),
                        one(Statement::new(LIST_PARTITIONS, vec![])),
                    );
                }
                State::Existing(row) => {
                    let ex = Existing::from_rows(&first_rows(answer)?)?;
                    self.work = Some(Work {
                        p: row.progress.clone(),
                        sessions: row.sessions,
                        points: row.points,
                        row,
                        ex,
                        out: NdjsonGz::new(),
                        room: u64::from(self.step_points.max(1)),
                    });
                    self.state = State::Lines;
                }
                State::Lines => {
                    let w = self.work()?;
                    if w.room == 0 || w.p.phase == Phase::Finish {
                        return self.write();
                    }
                    match (w.p.phase, w.p.current.clone()) {
                        (Phase::Sessions, None) => {
                            let batch = next_session(&w.row.user_id, &w.p.after, &w.ex);
                            if batch.is_empty() {
                                self.answer = Some(Answer::Rows(Vec::new()));
                                self.state = State::NextSession;
                                continue;
                            }
                            return ask(&mut self.state, State::NextSession, Io::Batch(batch));
                        }
                        (Phase::Sessions, Some(cur)) => {
                            let limit = w.room.min(MAX_READ_LIMIT as u64);
                            let batch = vec![point_months(&cur.id), archive_state(&cur.id)];
                            return ask(
                                &mut self.state,
                                State::Source(cur, limit),
                                Io::Batch(batch),
                            );
                        }
                        (Phase::Metrics, _) => {
                            let limit = w.room.min(1000);
                            let (t, kind) =
                                w.p.metric_after
                                    .clone()
                                    .unwrap_or((Millis::MIN, String::new()));
                            let read = Statement::new(
                                "SELECT start_ms, kind, count, value_count, sum, min, max FROM metrics_day \
                                 WHERE user_id = ?1 AND (start_ms, kind) > (?2, ?3) \
                                 ORDER BY start_ms, kind LIMIT ?4",
                                vec![
                                    Value::from(w.row.user_id.as_str()),
                                    Value::from(t),
                                    Value::from(kind),
                                    Value::from(limit),
                                ],
                            );
                            return ask(&mut self.state, State::Metrics(limit), one(read));
                        }
                        (Phase::Finish, _) => return self.write(),
                    }
                }
                State::NextSession => {
                    let w = self.work()?;
                    let Some((started_ms, sid)) = first_session(rows(answer)?)? else {
                        w.p.phase = Phase::Metrics;
                        self.state = State::Lines;
                        continue;
                    };
                    match find_session(&sid, &w.ex) {
                        Some(st) => {
                            return ask(&mut self.state, State::Found(started_ms, sid), one(st))
                        }
                        None => {
                            w.p.after = Some((started_ms, sid));
                            self.state = State::Lines;
                        }
                    }
                }
                State::Found(started_ms, sid) => {
                    let found = parse_found_session(&first_rows(answer)?)?;
                    let w = self.work()?;
                    match found {
                        Some(s) => {
                            w.out.line(&session_line(&s));
                            w.sessions += 1;
                            w.room -= 1;
                            w.p.current = Some(Current {
                                id: sid,
                                started_ms,
                                after_seq: 0,
                            });
                        }
                        // A member row without its session row (not written
                        // yet): nothing to export for it.
                        None => w.p.after = Some((started_ms, sid)),
                    }
                    self.state = State::Lines;
                }
                State::Source(cur, limit) => {
                    let src = rows(answer)?;
                    let none = Vec::new();
                    let from = source(src.first().unwrap_or(&none), src.get(1).unwrap_or(&none))?;
                    match from {
                        Source::Archive(key) => {
                            let get = Io::Get(key.clone());
                            return ask(&mut self.state, State::ArchivePage(cur, limit, key), get);
                        }
                        Source::D1(months) => {
                            let w = self.work()?;
                            let stmts =
                                read_points(&cur.id, cur.after_seq, limit as u32, &months, &w.ex);
                            if stmts.is_empty() {
                                self.answer = Some(Answer::Rows(Vec::new()));
                                self.state = State::D1Page(cur, limit);
                                continue;
                            }
                            return ask(
                                &mut self.state,
                                State::D1Page(cur, limit),
                                Io::Batch(stmts),
                            );
                        }
                    }
                }
                State::ArchivePage(cur, limit, key) => {
                    let page = decoded(&key, answer)?.page(cur.after_seq, limit);
                    self.take_page(cur, limit, page)?;
                }
                State::D1Page(cur, limit) => {
                    let page = points_page(&merge_points(&rows(answer)?, limit), 0)?;
                    self.take_page(cur, limit, page)?;
                }
                State::Metrics(limit) => {
                    let rows = first_rows(answer)?;
                    let w = self.work()?;
                    for r in &rows {
                        w.out.line(&metric_line(r)?);
                    }
                    let n = rows.len() as u64;
                    w.room = w.room.saturating_sub(n.max(1));
                    match rows.last() {
                        Some(last) if n == limit => {
                            w.p.metric_after =
                                Some((col_int(last, "start_ms")?, col_str(last, "kind")?))
                        }
                        _ => w.p.phase = Phase::Finish,
                    }
                    self.state = State::Lines;
                }
                State::PartPut => {
                    stored(answer)?;
                    return self.advance(true);
                }
                State::Advanced => {
                    rows(answer)?;
                    return Ok(Poll::Done(Step::More));
                }
                State::FinishEmpty(row) => {
                    stored(answer)?;
                    self.finish = Some(Finish {
                        id: row.id,
                        parts: 1,
                        sha: Sha256::new(),
                        bytes: 0,
                    });
                    return self.finish_from(0);
                }
                State::FinishPart(n) => {
                    let f = self.finish.as_mut().ok_or_else(finished)?;
                    let key = part_key(&f.id, n);
                    let part = object(answer)?.ok_or(LifecycleError::Object {
                        key,
                        detail: "missing".into(),
                    })?;
                    f.sha.update(&part);
                    f.bytes += part.len() as u64;
                    return self.finish_from(n + 1);
                }
                State::FinishDone => {
                    rows(answer)?;
                    return Ok(Poll::Done(Step::Finished));
                }
                State::Done => return Err(finished()),
            }
        }
    }

    fn handle(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }
}

/// What the export's object does after a step, from the step's outcome and
/// the failed steps in a row before it (kept by the object).
#[derive(Debug, Clone, PartialEq)]
pub enum AfterStep {
    /// Run the next step at `at`; the count of failures starts again at 0.
    Next {
        /// When (the step's end: at once).
        at: Millis,
    },
    /// Nothing more to do (done, failed or unknown).
    Stop,
    /// Store `failures` and try again at `at`.
    Retry {
        /// Failed steps in a row, this one included.
        failures: u32,
        /// When to try again.
        at: Millis,
    },
    /// Store `failures` and give up: `write` marks the export failed.
    GiveUp {
        /// Failed steps in a row, this one included.
        failures: u32,
        /// The statement that marks it failed, with the reason.
        write: Statement,
    },
}

/// Part objects deleted by one request (R2's limit for one delete).
const DELETE_KEYS: u32 = 1_000;

/// The expiry of done exports at `now` (see the module documentation),
/// within `budget`; done with the number of exports whose files it
/// deleted (a run out of budget leaves the rest to the next run).
#[derive(Debug)]
pub struct Expire {
    now: Millis,
    retention_ms: Millis,
    budget: Budget,
    deleted: u32,
    state: ExpireState,
    answer: Option<Answer>,
}

#[derive(Debug)]
enum ExpireState {
    Mark,
    Marked,
    // The parts above `left` of export `id` are being deleted.
    Delete { id: String, left: u32 },
    Done,
}

// The next expired export that still has parts.
fn next_expired() -> Statement {
    Statement::new(
        "SELECT id, parts FROM exports WHERE status = 'expired' AND parts > 0 ORDER BY id LIMIT 1",
        vec![],
    )
}

impl Expire {
    /// The expiry at `now` of exports done `retention_days` days before.
    pub fn new(now: Millis, retention_days: u32, budget: Budget) -> Expire {
        Expire {
            now,
            retention_ms: Millis::from(retention_days) * crate::data::partition::DAY_MS,
            budget,
            deleted: 0,
            state: ExpireState::Mark,
            answer: None,
        }
    }

    fn io(&mut self, next: ExpireState, io: Io) -> Poll<u32> {
        if !self.budget.take(1) {
            self.state = ExpireState::Done;
            return Poll::Done(self.deleted);
        }
        self.state = next;
        Poll::Io(io)
    }

    // The parts of the export in `rows` (from [`next_expired`]), or done.
    fn delete_next(&mut self, rows: &[Value]) -> Result<Poll<u32>, LifecycleError> {
        let Some(r) = rows.first() else {
            self.state = ExpireState::Done;
            return Ok(Poll::Done(self.deleted));
        };
        let id = col_str(r, "id")?;
        let parts = u32::try_from(col_int(r, "parts")?).unwrap_or(0);
        let left = parts.saturating_sub(DELETE_KEYS);
        let keys = (left..parts).map(|n| part_key(&id, n)).collect();
        Ok(self.io(ExpireState::Delete { id, left }, Io::Delete(keys)))
    }
}

impl Driver for Expire {
    type Output = u32;

    fn poll(&mut self) -> Result<Poll<u32>, LifecycleError> {
        let answer = self.answer.take();
        match std::mem::replace(&mut self.state, ExpireState::Done) {
            ExpireState::Mark => {
                let mark = Statement::new(
                    "UPDATE exports SET status = 'expired', updated_at = ?1 \
                     WHERE status = 'done' AND updated_at <= ?2",
                    vec![
                        Value::from(self.now),
                        Value::from(self.now - self.retention_ms),
                    ],
                );
                Ok(self.io(ExpireState::Marked, Io::Batch(vec![mark, next_expired()])))
            }
            ExpireState::Marked => {
                let found = rows(answer)?;
                self.delete_next(found.get(1).map_or(&[], Vec::as_slice))
            }
            ExpireState::Delete { id, left } => {
                deleted(answer)?;
                if left == 0 {
                    self.deleted += 1;
                }
                let update = Statement::new(
                    "UPDATE exports SET parts = ?2 WHERE id = ?1 AND status = 'expired'",
                    vec![Value::from(id.as_str()), Value::from(left)],
                );
                Ok(self.io(ExpireState::Marked, Io::Batch(vec![update, next_expired()])))
            }
            ExpireState::Done => Err(finished()),
        }
    }

    fn handle(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }
}

/// The object's next move after a step of export `id` that ended at `now`
/// with `outcome`, `failures` failed steps in a row before it.
pub fn after_step(
    id: &str,
    outcome: &Result<Step, LifecycleError>,
    failures: u32,
    now: Millis,
) -> AfterStep {
    match outcome {
        Ok(Step::More) => AfterStep::Next { at: now },
        Ok(Step::Finished) => AfterStep::Stop,
        Err(e) => {
            let failures = failures.saturating_add(1);
            match retry_after(failures) {
                Some(wait) => AfterStep::Retry {
                    failures,
                    at: now + wait,
                },
                None => AfterStep::GiveUp {
                    failures,
                    write: fail(id, &e.to_string(), now),
                },
            }
        }
    }
}

// rusqlite, which runs the statements, is a native-only dev-dependency.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
