//! The D1 partition scheme (CONTRACT.md sections 5 and 9) as plain values:
//! which table a row goes to, which tables can hold the rows of a time range,
//! and the statements that create a partition.
//!
//! Sessions live by start month in `sessions_YYYY_MM` (with their member
//! index `session_members_YYYY_MM`), points by `ts` month in
//! `session_points_YYYY_MM`. Data whose month is 12 or more months before
//! "now"'s month lives in yearly tables `sessions_YYYY`,
//! `session_members_YYYY` and `session_points_YYYY` with the same columns.
//! While a month moves into its year, both tables exist and may hold the
//! same rows; readers query them as one [`Group`] and keep each row once:
//!
//! - sessions: the yearly copy wins, because [`write_partition`] sends every
//!   later upsert of an old session there;
//! - points and members: copies are identical (points are keyed by
//!   `(session_id, seq)` and never change), so either copy does.
//!
//! Everything here is SQL text and `serde_json` values; the Worker binds and
//! runs the [`Statement`]s.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::time::{rfc3339, Millis};

/// Milliseconds in a day.
pub const DAY_MS: Millis = 86_400_000;

/// Months after which data belongs in its yearly table.
pub const MONTHS_BEFORE_YEARLY: i64 = 12;

/// Lists the registered partitions; feed its rows to [`Existing::from_rows`].
pub const LIST_PARTITIONS: &str = "SELECT name FROM partitions";

/// One SQL statement and its bound parameters, in `?1, ?2 …` order. The
/// caller prepares `sql` and binds `params` as they are (strings, numbers,
/// `null`); JSON arrays of points travel as one string parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// The SQL text.
    pub sql: String,
    /// The values for `?1`, `?2` …, exactly as many as the text uses.
    pub params: Vec<Value>,
}

impl Statement {
    /// A statement with its parameters.
    pub fn new(sql: impl Into<String>, params: Vec<Value>) -> Self {
        Statement {
            sql: sql.into(),
            params,
        }
    }
}

/// A row read back from D1 (or a record to write to it) that does not have
/// the expected shape. This is a bug or a damaged table, never the
/// caller's input: answer 500.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RowError {
    /// A column is missing or of the wrong type.
    #[error("column `{column}` is missing or not {expected}")]
    Column {
        /// The column name.
        column: &'static str,
        /// What it should have been.
        expected: &'static str,
    },
    /// A JSON text column does not parse.
    #[error("column `{column}` does not hold valid JSON: {detail}")]
    Json {
        /// The column name.
        column: &'static str,
        /// The parser's message.
        detail: String,
    },
}

/// Reads a text column.
pub(crate) fn col_str(row: &Value, column: &'static str) -> Result<String, RowError> {
    row.get(column)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(RowError::Column {
            column,
            expected: "text",
        })
}

/// Reads a nullable text column.
pub(crate) fn col_opt_str(row: &Value, column: &'static str) -> Result<Option<String>, RowError> {
    match row.get(column) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(RowError::Column {
            column,
            expected: "text or null",
        }),
    }
}

/// Reads an integer column. D1 hands numbers over as JavaScript numbers, so
/// an integral float is accepted as the integer it is.
pub(crate) fn col_int(row: &Value, column: &'static str) -> Result<i64, RowError> {
    let err = RowError::Column {
        column,
        expected: "an integer",
    };
    let v = row.get(column).ok_or(err.clone())?;
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(err),
    }
}

/// Reads a nullable number column.
pub(crate) fn col_opt_f64(row: &Value, column: &'static str) -> Result<Option<f64>, RowError> {
    match row.get(column) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(RowError::Column {
            column,
            expected: "a number or null",
        }),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1-12).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Howard Hinnant's algorithm: years start in March so the leap day is
    // the last day of the year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month 1-12, day 1-31)` of a day count since 1970-01-01.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A UTC calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: i64,
    month: u32,
}

impl Month {
    /// The month `month` (1-12) of `year`; `None` for a month out of range.
    pub fn new(year: i64, month: u32) -> Option<Month> {
        (1..=12).contains(&month).then_some(Month { year, month })
    }

    /// The month holding a moment.
    pub fn of(ms: Millis) -> Month {
        let (year, month, _) = civil_from_days(ms.div_euclid(DAY_MS));
        Month { year, month }
    }

    /// The year.
    pub fn year(self) -> i64 {
        self.year
    }

    /// The month of the year, 1-12.
    pub fn month(self) -> u32 {
        self.month
    }

    /// Months since year 0, for month arithmetic.
    pub fn index(self) -> i64 {
        self.year * 12 + i64::from(self.month) - 1
    }

    /// The month with a given [`Month::index`].
    pub fn from_index(index: i64) -> Month {
        Month {
            year: index.div_euclid(12),
            month: index.rem_euclid(12) as u32 + 1,
        }
    }

    /// The month after this one.
    pub fn next(self) -> Month {
        Month::from_index(self.index() + 1)
    }

    /// The first millisecond of the month.
    pub fn start_ms(self) -> Millis {
        days_from_civil(self.year, self.month, 1) * DAY_MS
    }

    /// The first millisecond after the month.
    pub fn end_ms(self) -> Millis {
        self.next().start_ms()
    }

    /// `YYYY_MM`, as in table names and `session_point_months.month`.
    pub fn suffix(self) -> String {
        format!("{:04}_{:02}", self.year, self.month)
    }

    /// Parses `YYYY_MM` strictly (four digits, underscore, two digits 01-12).
    pub fn parse(s: &str) -> Option<Month> {
        let (y, m) = s.split_once('_')?;
        if y.len() != 4 || m.len() != 2 || !all_digits(y) || !all_digits(m) {
            return None;
        }
        Month::new(y.parse().ok()?, m.parse().ok()?)
    }
}

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// The time a table covers: one month or one whole year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Span {
    /// A monthly table, `…_YYYY_MM`.
    Month(Month),
    /// A yearly table, `…_YYYY`.
    Year(i64),
}

impl Span {
    /// The table name suffix: `YYYY_MM` or `YYYY`.
    pub fn suffix(self) -> String {
        match self {
            Span::Month(m) => m.suffix(),
            Span::Year(y) => format!("{y:04}"),
        }
    }

    /// Parses `YYYY_MM` or `YYYY`.
    pub fn parse(s: &str) -> Option<Span> {
        if s.len() == 4 && all_digits(s) {
            return s.parse().ok().map(Span::Year);
        }
        Month::parse(s).map(Span::Month)
    }

    /// The first millisecond covered.
    pub fn start_ms(self) -> Millis {
        match self {
            Span::Month(m) => m.start_ms(),
            Span::Year(y) => days_from_civil(y, 1, 1) * DAY_MS,
        }
    }

    /// The first millisecond after the span.
    pub fn end_ms(self) -> Millis {
        match self {
            Span::Month(m) => m.end_ms(),
            Span::Year(y) => days_from_civil(y + 1, 1, 1) * DAY_MS,
        }
    }

    /// The year the span lies in.
    pub fn year(self) -> i64 {
        match self {
            Span::Month(m) => m.year(),
            Span::Year(y) => y,
        }
    }
}

/// Where a row dated `ts` is written when the write happens at `now`: its
/// monthly table while its month is less than 12 months before `now`'s
/// month, else its yearly table. Sessions are dated by `started_at`,
/// points by `ts`.
pub fn write_partition(ts: Millis, now: Millis) -> Span {
    let month = Month::of(ts);
    if Month::of(now).index() - month.index() >= MONTHS_BEFORE_YEARLY {
        Span::Year(month.year())
    } else {
        Span::Month(month)
    }
}

/// The three kinds of partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableKind {
    /// `sessions_…`: one row per session, by start.
    Sessions,
    /// `session_members_…`: one row per (member, session), the owner
    /// included, beside the sessions table of the same span.
    Members,
    /// `session_points_…`: one row per point, by `ts`.
    Points,
}

impl TableKind {
    const ALL: [TableKind; 3] = [TableKind::Sessions, TableKind::Members, TableKind::Points];

    /// The name prefix, underscore included.
    pub fn prefix(self) -> &'static str {
        match self {
            TableKind::Sessions => "sessions_",
            TableKind::Members => "session_members_",
            TableKind::Points => "session_points_",
        }
    }

    /// The table of this kind for a span.
    pub fn table(self, span: Span) -> String {
        format!("{}{}", self.prefix(), span.suffix())
    }

    /// The columns of this kind's tables, in order, each with its
    /// declaration: the one column list that creates the tables and that
    /// the writes, the reads and the moves name.
    pub fn columns(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // Ids are UUIDs, `members` and `metadata` JSON text, times
            // RFC 3339 UTC with milliseconds, so they also sort as text.
            TableKind::Sessions => &[
                ("id", "TEXT PRIMARY KEY"),
                ("owner_id", "TEXT NOT NULL"),
                ("title", "TEXT"),
                ("members", "TEXT NOT NULL"),
                ("viewers", "TEXT NOT NULL DEFAULT '[]'"),
                ("metadata", "TEXT NOT NULL"),
                ("status", "TEXT NOT NULL"),
                ("started_at", "TEXT NOT NULL"),
                ("ended_at", "TEXT"),
                ("point_count", "INTEGER NOT NULL"),
            ],
            TableKind::Members => &[
                ("user_id", "TEXT NOT NULL"),
                ("started_at", "INTEGER NOT NULL"),
                ("session_id", "TEXT NOT NULL"),
            ],
            TableKind::Points => &[
                ("session_id", "TEXT NOT NULL"),
                ("seq", "INTEGER NOT NULL"),
                ("user_id", "TEXT NOT NULL"),
                ("client_id", "TEXT"),
                ("kind", "TEXT NOT NULL"),
                ("value", "REAL"),
                ("data", "TEXT"),
                ("ts", "INTEGER NOT NULL"),
            ],
        }
    }

    /// The names of [`TableKind::columns`], in order, joined by `", "`,
    /// each after `prefix` (a table alias with its dot, or nothing).
    pub fn column_list(self, prefix: &str) -> String {
        let names: Vec<String> = self
            .columns()
            .iter()
            .map(|(name, _)| format!("{prefix}{name}"))
            .collect();
        names.join(", ")
    }

    /// `CREATE TABLE IF NOT EXISTS` (and its indexes) for a span.
    pub fn create(self, span: Span) -> Vec<String> {
        let t = self.table(span);
        let mut defs: Vec<String> = self
            .columns()
            .iter()
            .map(|(name, decl)| format!("{name} {decl}"))
            .collect();
        match self {
            TableKind::Sessions => {}
            // The key is the list query's order, so "sessions of user U
            // started in a range, newest first" is one index range scan.
            TableKind::Members => defs.push("PRIMARY KEY (user_id, started_at, session_id)".into()),
            // `(session_id, seq)` makes a repeated flush harmless; the
            // `(user_id, ts)` index serves the roll-up of one user's hour.
            TableKind::Points => defs.push("PRIMARY KEY (session_id, seq)".into()),
        }
        let defs = defs.join(", ");
        match self {
            TableKind::Sessions => vec![format!("CREATE TABLE IF NOT EXISTS {t} ({defs})")],
            TableKind::Members => {
                vec![format!(
                    "CREATE TABLE IF NOT EXISTS {t} ({defs}) WITHOUT ROWID"
                )]
            }
            TableKind::Points => vec![
                format!("CREATE TABLE IF NOT EXISTS {t} ({defs})"),
                format!("CREATE INDEX IF NOT EXISTS {t}_user_ts ON {t} (user_id, ts)"),
            ],
        }
    }

    /// Parses a partition table name into its kind and span.
    pub fn parse_table(name: &str) -> Option<(TableKind, Span)> {
        TableKind::ALL.into_iter().find_map(|kind| {
            name.strip_prefix(kind.prefix())
                .and_then(Span::parse)
                .map(|span| (kind, span))
        })
    }
}

/// What makes a partition exist: its `CREATE … IF NOT EXISTS` statements and
/// its registration in `partitions`, to run at the start of the batch that
/// writes to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ensure {
    /// The tables made sure of; remember them once the batch succeeded, so
    /// later batches of this isolate can leave the statements out.
    pub tables: Vec<String>,
    /// The statements.
    pub statements: Vec<Statement>,
}

/// The statements that make a span's sessions partition exist: the
/// sessions table and its members table, both registered.
pub fn ensure_sessions(span: Span, now: Millis) -> Ensure {
    ensure(&[TableKind::Sessions, TableKind::Members], span, now)
}

/// The statements that make a span's points partition exist, registered.
pub fn ensure_points(span: Span, now: Millis) -> Ensure {
    ensure(&[TableKind::Points], span, now)
}

fn ensure(kinds: &[TableKind], span: Span, now: Millis) -> Ensure {
    let mut tables = Vec::new();
    let mut statements = Vec::new();
    for &kind in kinds {
        let table = kind.table(span);
        statements.extend(
            kind.create(span)
                .into_iter()
                .map(|sql| Statement::new(sql, vec![])),
        );
        statements.push(Statement::new(
            "INSERT OR IGNORE INTO partitions (name, created_at) VALUES (?1, ?2)",
            vec![Value::from(table.as_str()), Value::from(rfc3339(now))],
        ));
        tables.push(table);
    }
    Ensure { tables, statements }
}

/// The partition tables that exist, as registered in `partitions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    tables: BTreeSet<(TableKind, Span)>,
}

impl Existing {
    /// From table names; names that are not partition tables are ignored.
    pub fn from_names<I, S>(names: I) -> Existing
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Existing {
            tables: names
                .into_iter()
                .filter_map(|n| TableKind::parse_table(n.as_ref()))
                .collect(),
        }
    }

    /// From the rows of [`LIST_PARTITIONS`] (objects with a `name`).
    pub fn from_rows(rows: &[Value]) -> Result<Existing, RowError> {
        let names = rows
            .iter()
            .map(|r| col_str(r, "name"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Existing::from_names(names))
    }

    /// Whether the table exists.
    pub fn contains(&self, kind: TableKind, span: Span) -> bool {
        self.tables.contains(&(kind, span))
    }

    /// Notes a table as existing (after a batch created it).
    pub fn insert(&mut self, kind: TableKind, span: Span) {
        self.tables.insert((kind, span));
    }

    /// The spans of one kind that exist.
    pub fn spans(&self, kind: TableKind) -> impl Iterator<Item = Span> + '_ {
        self.tables
            .iter()
            .filter(move |(k, _)| *k == kind)
            .map(|(_, s)| *s)
    }
}

/// Tables covering the same stretch of time, queried together and deduped
/// (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// First millisecond of the stretch (within the planned range).
    pub start: Millis,
    /// First millisecond after it (within the planned range).
    pub end: Millis,
    /// The tables' spans, preferred copy first: the yearly table (when it
    /// exists), then monthly tables, newest first.
    pub spans: Vec<Span>,
}

/// The tables of `kind` that can hold rows dated in `[from, to)`, as groups
/// newest first. A year with a yearly table is one group (the yearly table
/// and whichever of its months' tables still exist, during a move); a year
/// without one gives a group per existing monthly table. Empty ranges and
/// ranges without tables give no group.
pub fn plan(kind: TableKind, from: Millis, to: Millis, existing: &Existing) -> Vec<Group> {
    if from >= to {
        return Vec::new();
    }
    let overlaps = |s: Span| s.start_ms() < to && from < s.end_ms();
    // Keyed by the span's start so iteration in reverse is newest first.
    let mut groups: BTreeMap<Millis, Group> = BTreeMap::new();
    let years: BTreeSet<i64> = existing
        .spans(kind)
        .filter_map(|s| match s {
            Span::Year(y) if overlaps(s) => Some(y),
            _ => None,
        })
        .collect();
    for &y in &years {
        let s = Span::Year(y);
        groups.insert(
            s.start_ms(),
            Group {
                start: s.start_ms().max(from),
                end: s.end_ms().min(to),
                spans: vec![s],
            },
        );
    }
    let mut months: Vec<Month> = existing
        .spans(kind)
        .filter_map(|s| match s {
            Span::Month(m) if overlaps(s) => Some(m),
            _ => None,
        })
        .collect();
    months.sort_by(|a, b| b.cmp(a));
    for m in months {
        let s = Span::Month(m);
        if years.contains(&m.year()) {
            if let Some(g) = groups.get_mut(&Span::Year(m.year()).start_ms()) {
                g.spans.push(s);
            }
        } else {
            groups.insert(
                s.start_ms(),
                Group {
                    start: s.start_ms().max(from),
                    end: s.end_ms().min(to),
                    spans: vec![s],
                },
            );
        }
    }
    groups.into_values().rev().collect()
}

/// Monthly partitions due to move into their yearly tables at `now` (month
/// 12 or more months before `now`'s month), oldest first, whatever kind
/// of table still exists for them.
pub fn due_moves(existing: &Existing, now: Millis) -> Vec<Month> {
    let now_index = Month::of(now).index();
    let due: BTreeSet<Month> = existing
        .tables
        .iter()
        .filter_map(|(_, s)| match s {
            Span::Month(m) if now_index - m.index() >= MONTHS_BEFORE_YEARLY => Some(*m),
            _ => None,
        })
        .collect();
    due.into_iter().collect()
}

/// An in-memory SQLite standing in for D1 in tests: runs [`Statement`]s and
/// returns rows as JSON objects keyed by column name, as D1 does.
#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod testdb {
    use rusqlite::types::{Value as Sql, ValueRef};
    use rusqlite::Connection;
    use serde_json::{Map, Value};

    use crate::data::partition::Statement;

    /// The migrations the flush and the reads need applied (0003, the
    /// lifecycle's, is the lifecycle tests' own).
    pub fn open() -> Connection {
        let db = Connection::open_in_memory().expect("open");
        db.execute_batch(include_str!("../../../migrations/0001_init.sql"))
            .expect("0001");
        db.execute_batch(include_str!("../../../migrations/0002_history.sql"))
            .expect("0002");
        db.execute_batch(include_str!("../../../migrations/0004_session_stats.sql"))
            .expect("0004");
        db
    }

    fn to_sql(v: &Value) -> Sql {
        match v {
            Value::Null => Sql::Null,
            Value::Bool(b) => Sql::Integer(i64::from(*b)),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Sql::Integer(i),
                None => Sql::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Sql::Text(s.clone()),
            other => Sql::Text(other.to_string()),
        }
    }

    /// Runs one statement; rows as D1 gives them. Panics on an SQL error.
    pub fn run(db: &Connection, st: &Statement) -> Vec<Value> {
        try_run(db, st).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs one statement, checking D1's limits (which panic: a statement
    /// D1 would refuse is a bug); an SQL error is an `Err`.
    pub fn try_run(db: &Connection, st: &Statement) -> Result<Vec<Value>, String> {
        assert!(st.params.len() <= 100, "D1 binds at most 100 parameters");
        assert!(st.sql.len() <= 100_000, "D1 statements are at most 100 KB");
        // D1 refuses compound SELECTs of more than a few terms.
        assert!(
            st.sql.matches(" UNION ").count() <= 4,
            "too many terms in compound SELECT: {}",
            st.sql
        );
        let mut stmt = db
            .prepare(&st.sql)
            .map_err(|e| format!("{e}: {}", st.sql))?;
        assert_eq!(
            stmt.parameter_count(),
            st.params.len(),
            "parameter count of {}",
            st.sql
        );
        let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
        let params: Vec<Sql> = st.params.iter().map(to_sql).collect();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(|e| format!("{e}: {}", st.sql))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| format!("{e}: {}", st.sql))? {
            let mut obj = Map::new();
            for (i, name) in names.iter().enumerate() {
                let v = match row.get_ref(i).expect("column") {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(i) => Value::from(i),
                    ValueRef::Real(f) => Value::from(f),
                    ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(_) => panic!("blob column {name}"),
                };
                obj.insert(name.clone(), v);
            }
            out.push(Value::Object(obj));
        }
        Ok(out)
    }

    /// A tiny deterministic PRNG (xorshift64*), so seeded tests repeat.
    pub struct Rng(pub u64);

    impl Rng {
        /// The next 64 random bits.
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// A number in `0..n`.
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// Runs statements as one D1 batch: one transaction, in order, all or
    /// nothing; the rows of each.
    pub fn batch(db: &Connection, stmts: &[Statement]) -> Vec<Vec<Value>> {
        db.execute_batch("BEGIN").expect("begin");
        let out = stmts.iter().map(|s| run(db, s)).collect();
        db.execute_batch("COMMIT").expect("commit");
        out
    }
}

// rusqlite, which runs the statements, is a native-only dev-dependency.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    fn ms(y: i64, m: u32, d: u32) -> Millis {
        days_from_civil(y, m, d) * DAY_MS
    }

    fn month(y: i64, m: u32) -> Month {
        Month::new(y, m).expect("valid month")
    }

    #[test]
    fn civil_dates_round_trip_across_leap_years() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(ms(2025, 12, 1), 1_764_547_200_000);
        assert_eq!(ms(2026, 2, 1), 1_769_904_000_000);
        for days in (days_from_civil(1999, 12, 1)..days_from_civil(2101, 3, 1)).step_by(1) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(
            civil_from_days(days_from_civil(2024, 3, 1) - 1),
            (2024, 2, 29)
        );
        assert_eq!(
            civil_from_days(days_from_civil(2100, 3, 1) - 1),
            (2100, 2, 28)
        );
        assert_eq!(
            civil_from_days(days_from_civil(2000, 3, 1) - 1),
            (2000, 2, 29)
        );
    }

    #[test]
    fn months_follow_utc_boundaries() {
        let jan = month(2026, 1);
        assert_eq!(Month::of(1_769_903_999_999), jan);
        assert_eq!(Month::of(1_769_904_000_000), month(2026, 2));
        assert_eq!(jan.start_ms(), ms(2026, 1, 1));
        assert_eq!(month(2025, 12).next(), jan);
        assert_eq!(
            month(2024, 2).end_ms() - month(2024, 2).start_ms(),
            29 * DAY_MS
        );
        assert_eq!(
            month(2025, 2).end_ms() - month(2025, 2).start_ms(),
            28 * DAY_MS
        );
        assert_eq!(Month::from_index(jan.index() - 1), month(2025, 12));
        assert_eq!(jan.suffix(), "2026_01");
        assert_eq!(jan.suffix(), crate::time::month_suffix(jan.start_ms()));
    }

    #[test]
    fn names_parse_strictly() {
        for (name, kind, span) in [
            (
                "sessions_2026_01",
                TableKind::Sessions,
                Span::Month(month(2026, 1)),
            ),
            ("sessions_2024", TableKind::Sessions, Span::Year(2024)),
            (
                "session_members_2025_12",
                TableKind::Members,
                Span::Month(month(2025, 12)),
            ),
            ("session_points_2024", TableKind::Points, Span::Year(2024)),
            (
                "session_points_2024_10",
                TableKind::Points,
                Span::Month(month(2024, 10)),
            ),
        ] {
            assert_eq!(TableKind::parse_table(name), Some((kind, span)), "{name}");
            assert_eq!(kind.table(span), name);
        }
        for bad in [
            "partitions",
            "sessions_",
            "sessions_2026_13",
            "sessions_2026_00",
            "sessions_2026_1",
            "sessions_26",
            "sessions_2026_01_x",
            "session_points_+202",
            "session_points_２０２４",
            "metrics_hour",
        ] {
            assert_eq!(TableKind::parse_table(bad), None, "{bad}");
        }
    }

    #[test]
    fn writes_go_yearly_from_twelve_months_back() {
        let now = ms(2026, 3, 15);
        assert_eq!(
            write_partition(ms(2025, 4, 1), now),
            Span::Month(month(2025, 4))
        );
        assert_eq!(write_partition(ms(2025, 4, 1) - 1, now), Span::Year(2025));
        assert_eq!(write_partition(ms(2025, 3, 31), now), Span::Year(2025));
        assert_eq!(write_partition(ms(2024, 12, 31), now), Span::Year(2024));
        assert_eq!(
            write_partition(now + DAY_MS, now),
            Span::Month(month(2026, 3))
        );
        // The line moves with now's month, not with the day.
        let first = ms(2026, 3, 1);
        assert_eq!(write_partition(ms(2025, 3, 31), first), Span::Year(2025));
        assert_eq!(
            write_partition(ms(2025, 3, 31), first - 1),
            Span::Month(month(2025, 3))
        );
        assert_eq!(
            write_partition(ms(2025, 2, 28), first - 1),
            Span::Year(2025)
        );
    }

    fn existing(names: &[&str]) -> Existing {
        Existing::from_names(names)
    }

    fn spans(groups: &[Group]) -> Vec<Vec<String>> {
        groups
            .iter()
            .map(|g| g.spans.iter().map(|s| s.suffix()).collect())
            .collect()
    }

    #[test]
    fn plan_finds_monthly_tables_newest_first() {
        let ex = existing(&[
            "session_points_2025_11",
            "session_points_2025_12",
            "session_points_2026_01",
            "session_points_2026_03",
            "sessions_2026_02",
        ]);
        let g = plan(TableKind::Points, ms(2025, 12, 1), ms(2026, 3, 1), &ex);
        assert_eq!(spans(&g), vec![vec!["2026_01"], vec!["2025_12"]]);
        assert_eq!((g[0].start, g[0].end), (ms(2026, 1, 1), ms(2026, 2, 1)));
        // Edges: the last millisecond of a month belongs to it, the end is
        // exclusive.
        let g = plan(
            TableKind::Points,
            ms(2025, 12, 1) - 1,
            ms(2026, 3, 1) + 1,
            &ex,
        );
        assert_eq!(
            spans(&g),
            vec![
                vec!["2026_03"],
                vec!["2026_01"],
                vec!["2025_12"],
                vec!["2025_11"]
            ]
        );
        assert_eq!(g[0].end, ms(2026, 3, 1) + 1);
        assert_eq!(g[3].start, ms(2025, 12, 1) - 1);
    }

    #[test]
    fn plan_of_empty_ranges_is_empty() {
        let ex = existing(&["session_points_2026_01"]);
        let t = ms(2026, 1, 10);
        assert!(plan(TableKind::Points, t, t, &ex).is_empty());
        assert!(plan(TableKind::Points, t + 1, t, &ex).is_empty());
        assert!(plan(TableKind::Points, ms(2026, 2, 1), ms(2026, 3, 1), &ex).is_empty());
        assert!(plan(TableKind::Sessions, t, t + 1, &ex).is_empty());
        assert!(plan(TableKind::Points, i64::MIN, i64::MAX, &Existing::default()).is_empty());
    }

    #[test]
    fn plan_across_the_yearly_line_groups_a_year_with_its_moving_months() {
        let ex = existing(&[
            "sessions_2024",
            "sessions_2025",
            "sessions_2025_03",
            "sessions_2025_02",
            "sessions_2025_04",
            "sessions_2025_05",
            "sessions_2026_01",
        ]);
        let g = plan(TableKind::Sessions, ms(2024, 6, 1), ms(2026, 2, 1), &ex);
        assert_eq!(
            spans(&g),
            vec![
                vec!["2026_01"],
                vec!["2025", "2025_05", "2025_04", "2025_03", "2025_02"],
                vec!["2024"],
            ]
        );
        assert_eq!((g[1].start, g[1].end), (ms(2025, 1, 1), ms(2026, 1, 1)));
        assert_eq!((g[2].start, g[2].end), (ms(2024, 6, 1), ms(2025, 1, 1)));
        // A range inside one moving month still sees both copies.
        let g = plan(TableKind::Sessions, ms(2025, 3, 5), ms(2025, 3, 6), &ex);
        assert_eq!(spans(&g), vec![vec!["2025", "2025_03"]]);
        assert_eq!((g[0].start, g[0].end), (ms(2025, 3, 5), ms(2025, 3, 6)));
    }

    #[test]
    fn due_moves_are_months_twelve_or_more_back() {
        let ex = existing(&[
            "sessions_2025_02",
            "session_points_2025_02",
            "session_points_2025_03",
            "session_members_2025_01",
            "sessions_2025",
            "session_points_2025_04",
        ]);
        let now = ms(2026, 3, 31);
        assert_eq!(
            due_moves(&ex, now),
            vec![month(2025, 1), month(2025, 2), month(2025, 3)]
        );
        assert_eq!(
            due_moves(&ex, ms(2026, 3, 1) - 1),
            vec![month(2025, 1), month(2025, 2)]
        );
    }

    #[test]
    fn ensured_partitions_are_created_and_registered() {
        let db = testdb::open();
        let now = ms(2026, 1, 2);
        let mut all = ensure_sessions(Span::Month(month(2026, 1)), now);
        all.statements
            .extend(ensure_points(Span::Year(2024), now).statements);
        // Twice: creation is idempotent.
        testdb::batch(&db, &all.statements);
        testdb::batch(&db, &all.statements);
        assert_eq!(
            all.tables,
            vec!["sessions_2026_01", "session_members_2026_01"]
        );
        let rows = testdb::run(&db, &Statement::new(LIST_PARTITIONS, vec![]));
        let ex = Existing::from_rows(&rows).expect("rows");
        assert!(ex.contains(TableKind::Sessions, Span::Month(month(2026, 1))));
        assert!(ex.contains(TableKind::Members, Span::Month(month(2026, 1))));
        assert!(ex.contains(TableKind::Points, Span::Year(2024)));
        assert_eq!(ex.spans(TableKind::Points).count(), 1);
        assert!(Existing::from_rows(&[serde_json::json!({"name": 3})]).is_err());
    }

    #[test]
    fn tables_are_created_as_d1_already_has_them() {
        // The text the partitions in D1 were created with before the
        // columns were one list, with `viewers` (CONTRACT.md section 10,
        // migrations/0005_viewers.sql) added: a new partition must be the
        // same table.
        let m = Span::Month(month(2026, 1));
        assert_eq!(
            TableKind::Sessions.create(m),
            vec![
                "CREATE TABLE IF NOT EXISTS sessions_2026_01 (id TEXT PRIMARY KEY, \
                  owner_id TEXT NOT NULL, title TEXT, members TEXT NOT NULL, \
                  viewers TEXT NOT NULL DEFAULT '[]', metadata TEXT NOT NULL, \
                  status TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, \
                  point_count INTEGER NOT NULL)"
            ]
        );
        assert_eq!(
            TableKind::Members.create(m),
            vec![
                "CREATE TABLE IF NOT EXISTS session_members_2026_01 (user_id TEXT NOT NULL, \
                  started_at INTEGER NOT NULL, session_id TEXT NOT NULL, \
                  PRIMARY KEY (user_id, started_at, session_id)) WITHOUT ROWID"
            ]
        );
        assert_eq!(
            TableKind::Points.create(Span::Year(2024)),
            vec![
                "CREATE TABLE IF NOT EXISTS session_points_2024 (session_id TEXT NOT NULL, \
                 seq INTEGER NOT NULL, user_id TEXT NOT NULL, client_id TEXT, kind TEXT NOT NULL, \
                 value REAL, data TEXT, ts INTEGER NOT NULL, PRIMARY KEY (session_id, seq))",
                "CREATE INDEX IF NOT EXISTS session_points_2024_user_ts ON session_points_2024 \
                 (user_id, ts)"
            ]
        );
        assert_eq!(
            TableKind::Members.column_list("m."),
            "m.user_id, m.started_at, m.session_id"
        );
    }
}
