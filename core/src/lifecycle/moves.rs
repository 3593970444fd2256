//! The partition moves of the scheduled run (CONTRACT.md section 9): every
//! monthly partition whose month is 12 or more months before `now`'s month
//! ([`due_moves`]) moves into its yearly tables.
//!
//! The yearly tables are made sure of; then for each of the month's tables
//! (sessions, members, points) its rows are copied with `INSERT OR IGNORE`
//! in keyset chunks of `move_chunk` rows (a session row already in the
//! yearly table, written there by a later upsert, wins), then checked
//! chunk by chunk to be in the yearly table, and when all of the month's
//! tables are checked, one batch drops them and unregisters them, guarded
//! by their row counts (a row written to a monthly table after its check
//! fails the batch and restarts that table's copy). Each chunk is one D1
//! batch that also moves the cursor in `partition_moves`, so a run killed
//! at any statement resumes where the last batch left off and ends in the
//! same state. Readers see both copies during a move and keep one (see
//! `partition`).

use std::collections::VecDeque;

use serde_json::Value;

use crate::data::partition::{
    col_int, col_opt_str, col_str, due_moves, ensure_points, ensure_sessions, Existing, Month,
    Span, Statement, TableKind, LIST_PARTITIONS,
};
use crate::lifecycle::store::{
    ask, finished, first_rows, one, rows, Answer, Budget, Driver, Io, LifecycleError, Poll,
};
use crate::time::Millis;

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

// Where a move is, between two round trips.
#[derive(Debug)]
enum State {
    // Read the registry.
    Start,
    Existing,
    // The next due month, if any.
    NextMonth,
    // The month's yearly tables and move rows are made sure of.
    Started(Month),
    // The next chunk of the first table still copying or checking.
    Chunk,
    ChunkEnd(usize),
    // A chunk's batch ran: the table is at `next`.
    Saved(usize, MoveState),
    // A chunk's check answered; `end` is where the chunk ended.
    Checked(usize, Option<Vec<Value>>),
    // All tables checked: count, then drop.
    Drop,
    Counted,
    // Tables found grown since their check, their move rows set back
    // one at a time.
    Resetting(VecDeque<usize>),
    Dropped,
    Done,
}

/// The partition moves due at `now`, as far as the budget allows. Done
/// with `true` when every due month is moved, `false` when it stopped at
/// the budget or at a table that grew after its check (the next run goes
/// on from the move rows).
#[derive(Debug)]
pub struct Moves {
    now: Millis,
    chunk: u32,
    /// The round trips left.
    pub budget: Budget,
    /// Monthly tables dropped after their move.
    pub moved: Vec<String>,
    ex: Existing,
    months: VecDeque<Month>,
    states: Vec<MoveState>,
    state: State,
    answer: Option<Answer>,
}

impl Moves {
    /// The moves due at `now`, copying and checking `move_chunk` rows per
    /// statement.
    pub fn new(now: Millis, move_chunk: u32, budget: Budget) -> Moves {
        Moves {
            now,
            chunk: move_chunk,
            budget,
            moved: Vec::new(),
            ex: Existing::default(),
            months: VecDeque::new(),
            states: Vec::new(),
            state: State::Start,
            answer: None,
        }
    }
}

impl Driver for Moves {
    type Output = bool;

    fn poll(&mut self) -> Result<Poll<bool>, LifecycleError> {
        loop {
            let answer = self.answer.take();
            match std::mem::replace(&mut self.state, State::Done) {
                State::Start => {
                    if !self.budget.take(1) {
                        return Ok(Poll::Done(false));
                    }
                    return ask(
                        &mut self.state,
                        State::Existing,
                        one(Statement::new(LIST_PARTITIONS, vec![])),
                    );
                }
                State::Existing => {
                    self.ex = Existing::from_rows(&first_rows(answer)?)?;
                    self.months = due_moves(&self.ex, self.now).into_iter().collect();
                    self.state = State::NextMonth;
                }
                State::NextMonth => {
                    let Some(month) = self.months.pop_front() else {
                        return Ok(Poll::Done(true));
                    };
                    if !self.budget.take(1) {
                        return Ok(Poll::Done(false));
                    }
                    let batch = start_month(month, &self.ex, self.now);
                    return ask(&mut self.state, State::Started(month), Io::Batch(batch));
                }
                State::Started(month) => {
                    let rows = rows(answer)?.pop().unwrap_or_default();
                    self.states.clear();
                    for k in month_kinds(month, &self.ex) {
                        let table = k.table(Span::Month(month));
                        let row = rows
                            .iter()
                            .find(|r| r.get("tbl").and_then(Value::as_str) == Some(table.as_str()))
                            .ok_or_else(|| {
                                LifecycleError::Store(format!("no move row for {table}"))
                            })?;
                        self.states.push(parse_state(k, month, row)?);
                    }
                    self.state = State::Chunk;
                }
                State::Chunk => {
                    // The tables in order, each copied and checked to the
                    // end before the next (a reset sets only a later one
                    // back, so the first unfinished is the one to go on).
                    let Some(i) = self
                        .states
                        .iter()
                        .position(|s| matches!(s.phase, Phase::Copy | Phase::Verify))
                    else {
                        self.state = State::Drop;
                        continue;
                    };
                    if !self.budget.take(2) {
                        return Ok(Poll::Done(false));
                    }
                    let io = one(chunk_end(&self.states[i], self.chunk));
                    return ask(&mut self.state, State::ChunkEnd(i), io);
                }
                State::ChunkEnd(i) => {
                    let st = &self.states[i];
                    let end = chunk_end_key(st, &first_rows(answer)?);
                    if st.phase == Phase::Copy {
                        let (copy, next) = copy_chunk(st, end);
                        let save = save(&next, self.now);
                        return ask(
                            &mut self.state,
                            State::Saved(i, next),
                            Io::Batch(vec![copy, save]),
                        );
                    }
                    let check = check_chunk(st, &end);
                    return ask(&mut self.state, State::Checked(i, end), one(check));
                }
                State::Checked(i, end) => {
                    let row = first_rows(answer)?.first().cloned().unwrap_or(Value::Null);
                    let next = checked(&self.states[i], end, &row)?;
                    let save = save(&next, self.now);
                    return ask(&mut self.state, State::Saved(i, next), one(save));
                }
                State::Saved(i, next) => {
                    rows(answer)?;
                    self.states[i] = next;
                    self.state = State::Chunk;
                }
                State::Drop => {
                    if !self.budget.take(2) {
                        return Ok(Poll::Done(false));
                    }
                    let counts: Vec<Statement> = self
                        .states
                        .iter()
                        .map(|s| {
                            Statement::new(format!("SELECT count(*) AS n FROM {}", s.table), vec![])
                        })
                        .collect();
                    return ask(&mut self.state, State::Counted, Io::Batch(counts));
                }
                State::Counted => {
                    let got = rows(answer)?;
                    let mut stale = VecDeque::new();
                    for (i, (st, rows)) in self.states.iter_mut().zip(&got).enumerate() {
                        let n = rows
                            .first()
                            .map(|r| col_int(r, "n"))
                            .transpose()?
                            .unwrap_or(0);
                        if n != st.verified {
                            // Rows arrived after the check: check (and copy)
                            // again.
                            st.phase = Phase::Copy;
                            st.cursor = None;
                            st.verified = 0;
                            stale.push_back(i);
                        }
                    }
                    if stale.is_empty() {
                        let batch = drop_month(&mut self.states, self.now);
                        return ask(&mut self.state, State::Dropped, Io::Batch(batch));
                    }
                    self.state = State::Resetting(stale);
                }
                State::Resetting(mut stale) => {
                    if answer.is_some() {
                        rows(answer)?;
                    }
                    let Some(i) = stale.pop_front() else {
                        return Ok(Poll::Done(false));
                    };
                    let save = save(&self.states[i], self.now);
                    return ask(&mut self.state, State::Resetting(stale), one(save));
                }
                State::Dropped => {
                    rows(answer)?;
                    self.moved
                        .extend(self.states.iter().map(|s| s.table.clone()));
                    self.state = State::NextMonth;
                }
                State::Done => return Err(finished()),
            }
        }
    }

    fn handle(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }
}

fn month_kinds(month: Month, ex: &Existing) -> Vec<TableKind> {
    KINDS
        .into_iter()
        .filter(|k| ex.contains(*k, Span::Month(month)))
        .collect()
}

// Makes sure of the yearly tables and the month's move rows, and reads
// the move rows back.
fn start_month(month: Month, ex: &Existing, now: Millis) -> Vec<Statement> {
    let kinds = month_kinds(month, ex);
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
        vec![Value::from(Value::from(tables).to_string())],
    ));
    start
}

// The query for the key of the last row of the next chunk.
fn chunk_end(st: &MoveState, n: u32) -> Statement {
    let (cond, mut params) = after(st.kind, &st.cursor, "", 2);
    params.insert(0, Value::from(n.max(1) - 1));
    let cols: Vec<&str> = key(st.kind).iter().map(|(c, _)| *c).collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE {cond} ORDER BY {} LIMIT 1 OFFSET ?1",
        cols.join(", "),
        st.table,
        cols.join(", ")
    );
    Statement::new(sql, params)
}

// The key of the last row of the next chunk; `None` when fewer than `n`
// rows remain after the cursor.
fn chunk_end_key(st: &MoveState, rows: &[Value]) -> Option<Vec<Value>> {
    rows.first().map(|r| {
        key(st.kind)
            .iter()
            .map(|(c, _)| r.get(*c).cloned().unwrap_or(Value::Null))
            .collect()
    })
}

// The copy of a chunk, and the table's state once it is done.
fn copy_chunk(st: &MoveState, end: Option<Vec<Value>>) -> (Statement, MoveState) {
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
    (copy, next)
}

// How many rows of a chunk there are and how many the yearly table lacks.
fn check_chunk(st: &MoveState, end: &Option<Vec<Value>>) -> Statement {
    let (cond, params) = range(st, end, "m.", 1);
    let same: Vec<String> = key(st.kind)
        .iter()
        .map(|(c, _)| format!("y.{c} = m.{c}"))
        .collect();
    Statement::new(
        format!(
            "SELECT count(*) AS n, coalesce(sum(NOT EXISTS (SELECT 1 FROM {} AS y WHERE {})), 0) \
             AS missing FROM {} AS m WHERE {cond}",
            st.yearly,
            same.join(" AND "),
            st.table
        ),
        params,
    )
}

// The table's state after a chunk's check answered `row`.
fn checked(
    st: &MoveState,
    end: Option<Vec<Value>>,
    row: &Value,
) -> Result<MoveState, LifecycleError> {
    let (count, missing) = (col_int(row, "n")?, col_int(row, "missing")?);
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
    Ok(next)
}

// The batch that drops the month's checked tables, and marks them done.
fn drop_month(states: &mut [MoveState], now: Millis) -> Vec<Statement> {
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
    batch
}
