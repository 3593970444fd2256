//! The data lifecycle of CONTRACT.md section 9, run by the scheduled
//! handler at the event's time `now`: what is due, and the partition moves.
//! Archives and pruning are in [`crate::lifecycle::archive`], exports in
//! [`crate::lifecycle::export`].
//!
//! [`run`] does, in order, as far as its [`Budget`] of round trips allows
//! (a run that stops early reports `complete: false`; the next run at the
//! same time goes on from the progress recorded in D1):
//!
//! 1. **Moves.** Every monthly partition whose month is 12 or more months
//!    before `now`'s month ([`due_moves`]) moves into its yearly tables:
//!    the yearly tables are made sure of; then for each of the month's
//!    tables (sessions, members, points) its rows are copied with
//!    `INSERT OR IGNORE` in keyset chunks of `move_chunk` rows (a session
//!    row already in the yearly table, written there by a later upsert,
//!    wins), then checked chunk by chunk to be in the yearly table, and
//!    when all of the month's tables are checked, one batch drops them and
//!    unregisters them, guarded by their row counts (a row written to a
//!    monthly table after its check fails the batch and restarts that
//!    table's copy). Each chunk is one D1 batch that also moves the cursor
//!    in `partition_moves`, so a run killed at any statement resumes where
//!    the last batch left off and ends in the same state. Readers see both
//!    copies during a move and keep one (see `partition`).
//! 2. **Archives** of cold ended sessions to R2, with quarterly manifests.
//! 3. **Pruning** of archived sessions' detailed points.

pub mod archive;
pub mod export;
pub mod store;

use serde_json::Value;

use crate::data::partition::{
    col_int, col_opt_str, col_str, due_moves, ensure_points, ensure_sessions, Existing, Month,
    Span, Statement, TableKind, LIST_PARTITIONS,
};
use crate::lifecycle::store::{query, Backend, Budget, LifecycleError};
use crate::time::Millis;

/// The lifecycle settings (Worker vars; README's configuration table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// `ARCHIVE_AFTER_MONTHS`: an ended session whose start month is this
    /// many months or more before now's month is archived to R2.
    pub archive_after_months: u32,
    /// `DETAIL_RETENTION_MONTHS`: an archived session whose start month is
    /// this many months or more before now's month has its points deleted
    /// from D1 (after its archive is read back and verified).
    pub detail_retention_months: u32,
    /// `ENDED_RETENTION_MS`: how long an ended session's object keeps its
    /// own storage once every point is in D1 (the session object's rule).
    pub ended_retention_ms: Millis,
    /// `LIFECYCLE_MOVE_CHUNK`: rows copied or checked by one statement of
    /// a partition move.
    pub move_chunk: u32,
    /// `LIFECYCLE_PRUNE_CHUNK`: points deleted by one statement.
    pub prune_chunk: u32,
    /// `LIFECYCLE_MAX_CALLS`: D1 and R2 round trips one scheduled run may
    /// make before it stops (the rest is left to the next run).
    pub max_calls: u32,
    /// `EXPORT_STEP_POINTS`: points written by one export step (one alarm,
    /// one gzip member).
    pub export_step_points: u32,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            archive_after_months: 12,
            detail_retention_months: 24,
            ended_retention_ms: 7 * 86_400_000,
            move_chunk: 5_000,
            prune_chunk: 5_000,
            max_calls: 500,
            export_step_points: 5_000,
        }
    }
}

impl LifecycleConfig {
    /// From vars looked up by `get`; absent or empty vars keep their
    /// defaults. Errors name the var, for the operator's log.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<LifecycleConfig, String> {
        let mut c = LifecycleConfig::default();
        let num = |name: &str, min: u64, max: u64| -> Result<Option<u64>, String> {
            match get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
            {
                None => Ok(None),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                    _ => Err(format!(
                        "{name} must be an integer from {min} to {max}, not {v:?}"
                    )),
                },
            }
        };
        if let Some(n) = num("ARCHIVE_AFTER_MONTHS", 12, 1200)? {
            c.archive_after_months = n as u32;
        }
        if let Some(n) = num("DETAIL_RETENTION_MONTHS", 12, 1200)? {
            c.detail_retention_months = n as u32;
        }
        if let Some(n) = num("ENDED_RETENTION_MS", 0, 10 * 365 * 86_400_000)? {
            c.ended_retention_ms = n as Millis;
        }
        if let Some(n) = num("LIFECYCLE_MOVE_CHUNK", 1, 50_000)? {
            c.move_chunk = n as u32;
        }
        if let Some(n) = num("LIFECYCLE_PRUNE_CHUNK", 1, 50_000)? {
            c.prune_chunk = n as u32;
        }
        if let Some(n) = num("LIFECYCLE_MAX_CALLS", 10, 100_000)? {
            c.max_calls = n as u32;
        }
        if let Some(n) = num("EXPORT_STEP_POINTS", 1, 100_000)? {
            c.export_step_points = n as u32;
        }
        Ok(c)
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Monthly tables dropped after their move.
    pub moved: Vec<String>,
    /// Sessions archived and verified.
    pub archived: u32,
    /// Manifests written.
    pub manifests: u32,
    /// Sessions whose D1 points were deleted.
    pub pruned: u32,
    /// Sessions left for later because D1 does not hold all their points
    /// yet (a flush still pending).
    pub deferred: u32,
    /// Whether all work due at `now` is done; `false` when the run stopped
    /// at its budget.
    pub complete: bool,
}

/// Whether a month is at least `months` months before `now`'s month.
pub fn months_old(month: Month, now: Millis, months: u32) -> bool {
    Month::of(now).index() - month.index() >= i64::from(months)
}

/// The first millisecond of the first month that is NOT `months` or more
/// months before `now`'s month: rows dated before it are that old.
pub fn cutoff_ms(now: Millis, months: u32) -> Millis {
    Month::from_index(Month::of(now).index() - i64::from(months) + 1).start_ms()
}

/// Does all lifecycle work due at `now` that the budget allows: moves,
/// archives, pruning.
pub async fn run<B: Backend>(
    b: &B,
    now: Millis,
    cfg: &LifecycleConfig,
) -> Result<Report, LifecycleError> {
    let mut budget = Budget::new(cfg.max_calls);
    let mut report = Report::default();
    let moves_done = run_moves(b, now, cfg, &mut budget, &mut report).await?;
    let archive_done = moves_done
        && crate::lifecycle::archive::run_archive(b, now, cfg, &mut budget, &mut report).await?;
    let prune_done = archive_done
        && crate::lifecycle::archive::run_prune(b, now, cfg, &mut budget, &mut report).await?;
    report.complete = prune_done;
    Ok(report)
}

/// Reads the partitions registry.
pub async fn existing<B: Backend>(b: &B) -> Result<Existing, LifecycleError> {
    let rows = query(b, Statement::new(LIST_PARTITIONS, vec![])).await?;
    Ok(Existing::from_rows(&rows)?)
}

const KINDS: [TableKind; 3] = [TableKind::Sessions, TableKind::Members, TableKind::Points];

// The primary key, the keyset order of the chunks. Its columns are stored
// in `partition_moves` as k1 (text), k2 (integer), k3 (text).
fn key(kind: TableKind) -> &'static [(&'static str, &'static str)] {
    match kind {
        TableKind::Sessions => &[("id", "k1")],
        TableKind::Members => &[
            ("user_id", "k1"),
            ("started_at", "k2"),
            ("session_id", "k3"),
        ],
        TableKind::Points => &[("session_id", "k1"), ("seq", "k2")],
    }
}

fn key_list(kind: TableKind, alias: &str) -> String {
    let cols: Vec<String> = key(kind)
        .iter()
        .map(|(c, _)| format!("{alias}{c}"))
        .collect();
    format!("({})", cols.join(", "))
}

// `(key) > (?first, ...)`, or always true without a cursor.
fn after(
    kind: TableKind,
    cursor: &Option<Vec<Value>>,
    alias: &str,
    first: usize,
) -> (String, Vec<Value>) {
    match cursor {
        None => ("1 = 1".into(), vec![]),
        Some(c) => {
            let ph: Vec<String> = (0..c.len()).map(|i| format!("?{}", first + i)).collect();
            (
                format!("{} > ({})", key_list(kind, alias), ph.join(", ")),
                c.clone(),
            )
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Copy,
    Verify,
    Verified,
    Done,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Copy => "copy",
            Phase::Verify => "verify",
            Phase::Verified => "verified",
            Phase::Done => "done",
        }
    }

    fn parse(s: &str) -> Option<Phase> {
        [Phase::Copy, Phase::Verify, Phase::Verified, Phase::Done]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

#[derive(Debug, Clone)]
struct MoveState {
    kind: TableKind,
    table: String,
    yearly: String,
    phase: Phase,
    cursor: Option<Vec<Value>>,
    verified: i64,
}

// The statement that sets a table's move row to `phase` with `cursor`.
fn save(st: &MoveState, now: Millis) -> Statement {
    let mut ks = [Value::Null, Value::Null, Value::Null];
    if let Some(c) = &st.cursor {
        for ((_, k), v) in key(st.kind).iter().zip(c) {
            let i = match *k {
                "k1" => 0,
                "k2" => 1,
                _ => 2,
            };
            ks[i] = v.clone();
        }
    }
    let [k1, k2, k3] = ks;
    Statement::new(
        "UPDATE partition_moves SET phase = ?2, k1 = ?3, k2 = ?4, k3 = ?5, verified = ?6, \
         updated_at = ?7 WHERE tbl = ?1",
        vec![
            Value::from(st.table.as_str()),
            Value::from(st.phase.as_str()),
            k1,
            k2,
            k3,
            Value::from(st.verified),
            Value::from(now),
        ],
    )
}

// Starts a move row; a row left `done` by an earlier move of a table that
// was written again (so exists again) starts over.
fn start_move(table: &str, now: Millis) -> Statement {
    Statement::new(
        "INSERT INTO partition_moves (tbl, phase, verified, updated_at) VALUES (?1, 'copy', 0, ?2) \
         ON CONFLICT(tbl) DO UPDATE SET phase = 'copy', k1 = NULL, k2 = NULL, k3 = NULL, \
         verified = 0, updated_at = excluded.updated_at WHERE partition_moves.phase = 'done'",
        vec![Value::from(table), Value::from(now)],
    )
}

fn parse_state(kind: TableKind, month: Month, row: &Value) -> Result<MoveState, LifecycleError> {
    let phase =
        Phase::parse(&col_str(row, "phase")?).ok_or(crate::data::partition::RowError::Column {
            column: "phase",
            expected: "a move phase",
        })?;
    let cursor = col_opt_str(row, "k1")?.map(|_| {
        key(kind)
            .iter()
            .map(|(_, k)| row.get(*k).cloned().unwrap_or(Value::Null))
            .collect()
    });
    Ok(MoveState {
        kind,
        table: kind.table(Span::Month(month)),
        yearly: kind.table(Span::Year(month.year())),
        phase,
        cursor,
        verified: col_int(row, "verified")?,
    })
}

async fn run_moves<B: Backend>(
    b: &B,
    now: Millis,
    cfg: &LifecycleConfig,
    budget: &mut Budget,
    report: &mut Report,
) -> Result<bool, LifecycleError> {
    if !budget.take(1) {
        return Ok(false);
    }
    let ex = existing(b).await?;
    for month in due_moves(&ex, now) {
        if !move_month(b, month, &ex, now, cfg, budget, report).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Moves one month's tables into their year; `false` when the budget ran
/// out first.
async fn move_month<B: Backend>(
    b: &B,
    month: Month,
    ex: &Existing,
    now: Millis,
    cfg: &LifecycleConfig,
    budget: &mut Budget,
    report: &mut Report,
) -> Result<bool, LifecycleError> {
    let kinds: Vec<TableKind> = KINDS
        .into_iter()
        .filter(|k| ex.contains(*k, Span::Month(month)))
        .collect();
    let year = Span::Year(month.year());
    let mut start = ensure_sessions(year, now).statements;
    start.extend(ensure_points(year, now).statements);
    for k in &kinds {
        start.push(start_move(&k.table(Span::Month(month)), now));
    }
    let tables: Vec<String> = kinds.iter().map(|k| k.table(Span::Month(month))).collect();
    start.push(Statement::new(
        "SELECT tbl, phase, k1, k2, k3, verified FROM partition_moves \
         WHERE tbl IN (SELECT value FROM json_each(?1))",
        vec![Value::from(Value::from(tables.clone()).to_string())],
    ));
    if !budget.take(1) {
        return Ok(false);
    }
    let rows = b.batch(&start).await?.pop().unwrap_or_default();
    let mut states = Vec::new();
    for k in &kinds {
        let table = k.table(Span::Month(month));
        let row = rows
            .iter()
            .find(|r| r.get("tbl").and_then(Value::as_str) == Some(table.as_str()))
            .ok_or_else(|| LifecycleError::Store(format!("no move row for {table}")))?;
        states.push(parse_state(*k, month, row)?);
    }
    for st in &mut states {
        while matches!(st.phase, Phase::Copy | Phase::Verify) {
            if !budget.take(2) {
                return Ok(false);
            }
            match st.phase {
                Phase::Copy => copy_chunk(b, st, cfg.move_chunk, now).await?,
                _ => verify_chunk(b, st, cfg.move_chunk, now).await?,
            }
        }
    }
    if !budget.take(2) {
        return Ok(false);
    }
    drop_month(b, &mut states, now, report).await
}

// The key of the last row of the next chunk; `None` when fewer than `n`
// rows remain after the cursor.
async fn chunk_end<B: Backend>(
    b: &B,
    st: &MoveState,
    n: u32,
) -> Result<Option<Vec<Value>>, LifecycleError> {
    let (cond, mut params) = after(st.kind, &st.cursor, "", 2);
    params.insert(0, Value::from(n.max(1) - 1));
    let cols: Vec<&str> = key(st.kind).iter().map(|(c, _)| *c).collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE {cond} ORDER BY {} LIMIT 1 OFFSET ?1",
        cols.join(", "),
        st.table,
        cols.join(", ")
    );
    let rows = query(b, Statement::new(sql, params)).await?;
    Ok(rows.first().map(|r| {
        cols.iter()
            .map(|c| r.get(*c).cloned().unwrap_or(Value::Null))
            .collect()
    }))
}

// The rows after the cursor up to `end` (inclusive; all when `None`).
fn range(
    st: &MoveState,
    end: &Option<Vec<Value>>,
    alias: &str,
    first: usize,
) -> (String, Vec<Value>) {
    let (mut cond, mut params) = after(st.kind, &st.cursor, alias, first);
    if let Some(e) = end {
        let ph: Vec<String> = (0..e.len())
            .map(|i| format!("?{}", first + params.len() + i))
            .collect();
        cond = format!(
            "{cond} AND {} <= ({})",
            key_list(st.kind, alias),
            ph.join(", ")
        );
        params.extend(e.iter().cloned());
    }
    (cond, params)
}

async fn copy_chunk<B: Backend>(
    b: &B,
    st: &mut MoveState,
    n: u32,
    now: Millis,
) -> Result<(), LifecycleError> {
    let end = chunk_end(b, st, n).await?;
    let (cond, params) = range(st, &end, "", 1);
    let cols = st.kind.column_list("");
    let copy = Statement::new(
        format!(
            "INSERT OR IGNORE INTO {} ({cols}) SELECT {cols} FROM {} WHERE {cond}",
            st.yearly, st.table
        ),
        params,
    );
    let mut next = st.clone();
    match end {
        Some(e) => next.cursor = Some(e),
        None => {
            next.phase = Phase::Verify;
            next.cursor = None;
            next.verified = 0;
        }
    }
    b.batch(&[copy, save(&next, now)]).await?;
    *st = next;
    Ok(())
}

async fn verify_chunk<B: Backend>(
    b: &B,
    st: &mut MoveState,
    n: u32,
    now: Millis,
) -> Result<(), LifecycleError> {
    let end = chunk_end(b, st, n).await?;
    let (cond, params) = range(st, &end, "m.", 1);
    let same: Vec<String> = key(st.kind)
        .iter()
        .map(|(c, _)| format!("y.{c} = m.{c}"))
        .collect();
    let check = Statement::new(
        format!(
            "SELECT count(*) AS n, coalesce(sum(NOT EXISTS (SELECT 1 FROM {} AS y WHERE {})), 0) \
             AS missing FROM {} AS m WHERE {cond}",
            st.yearly,
            same.join(" AND "),
            st.table
        ),
        params,
    );
    let rows = query(b, check).await?;
    let row = rows.first().cloned().unwrap_or(Value::Null);
    let (count, missing) = (col_int(&row, "n")?, col_int(&row, "missing")?);
    let mut next = st.clone();
    if missing > 0 {
        // Rows the copy did not bring over (written behind its cursor):
        // copy again from the start; INSERT OR IGNORE makes that cheap.
        next.phase = Phase::Copy;
        next.cursor = None;
        next.verified = 0;
    } else {
        next.verified += count;
        match end {
            Some(e) => next.cursor = Some(e),
            None => {
                next.phase = Phase::Verified;
                next.cursor = None;
            }
        }
    }
    b.batch(&[save(&next, now)]).await?;
    *st = next;
    Ok(())
}

async fn drop_month<B: Backend>(
    b: &B,
    states: &mut [MoveState],
    now: Millis,
    report: &mut Report,
) -> Result<bool, LifecycleError> {
    let counts: Vec<Statement> = states
        .iter()
        .map(|s| Statement::new(format!("SELECT count(*) AS n FROM {}", s.table), vec![]))
        .collect();
    let got = b.batch(&counts).await?;
    let mut stale = false;
    for (st, rows) in states.iter_mut().zip(&got) {
        let n = rows
            .first()
            .map(|r| col_int(r, "n"))
            .transpose()?
            .unwrap_or(0);
        if n != st.verified {
            // Rows arrived after the check: check (and copy) again.
            st.phase = Phase::Copy;
            st.cursor = None;
            st.verified = 0;
            b.batch(&[save(st, now)]).await?;
            stale = true;
        }
    }
    if stale {
        return Ok(false);
    }
    let mut batch = Vec::new();
    for st in states.iter() {
        // Fails the whole batch (json() of text that is not JSON) if a row
        // reached the table since it was counted.
        batch.push(Statement::new(
            format!(
                "SELECT json('not json ' || n) FROM (SELECT count(*) AS n FROM {}) WHERE n != ?1",
                st.table
            ),
            vec![Value::from(st.verified)],
        ));
    }
    for st in states.iter_mut() {
        batch.push(Statement::new(
            format!("DROP TABLE IF EXISTS {}", st.table),
            vec![],
        ));
        batch.push(Statement::new(
            "DELETE FROM partitions WHERE name = ?1",
            vec![Value::from(st.table.as_str())],
        ));
        st.phase = Phase::Done;
        batch.push(save(st, now));
    }
    b.batch(&batch).await?;
    report.moved.extend(states.iter().map(|s| s.table.clone()));
    Ok(true)
}

// rusqlite, which runs the statements, is a native-only dev-dependency.
#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod tests;
