//! The D1 layout (CONTRACT.md section 5, "Durability") as SQL text: monthly
//! partition tables, created on first write, and the plan of one flush
//! ([`plan`]): statements with their parameters as plain values, tested
//! natively; the session object only binds and runs them, in one batch.
//!
//! Points go in as one JSON array per partition and statement, expanded by
//! SQLite's `json_each`: a single bound parameter however many points, so
//! D1's limit of 100 bound parameters per statement never binds a batch.

use std::collections::BTreeMap;

use sesh_protocol::SessionStatus;

use crate::core::session::Meta;
use crate::time::{month_suffix, rfc3339, Millis};

/// A bound parameter as a plain value.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// SQL text.
    Text(String),
    /// A number (D1 binds JS numbers).
    Num(f64),
    /// SQL NULL.
    Null,
}

impl From<&str> for Param {
    fn from(s: &str) -> Param {
        Param::Text(s.to_owned())
    }
}

impl From<String> for Param {
    fn from(s: String) -> Param {
        Param::Text(s)
    }
}

impl From<Option<String>> for Param {
    fn from(s: Option<String>) -> Param {
        s.map_or(Param::Null, Param::Text)
    }
}

/// One statement of a D1 batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Stmt {
    /// SQL text.
    pub sql: String,
    /// Its parameters, `?1` first.
    pub params: Vec<Param>,
}

impl Stmt {
    fn new(sql: impl Into<String>, params: Vec<Param>) -> Stmt {
        Stmt {
            sql: sql.into(),
            params,
        }
    }
}

/// The statements of one flush, run as one D1 batch (all or nothing), and
/// the partition tables it makes sure of (to remember once it succeeded).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// In order.
    pub stmts: Vec<Stmt>,
    /// Partition tables the batch creates if missing.
    pub tables: Vec<String>,
}

/// Plans one flush: the partitions it needs that `known` does not know of
/// (created and recorded in the same batch), the points as JSON arrays per
/// month of their `ts`, and the session row in the month of its start.
/// `points` are `(ts, stored JSON)` in seq order.
pub fn plan(
    meta: &Meta,
    point_count: u64,
    points: &[(Millis, String)],
    now: Millis,
    known: impl Fn(&str) -> bool,
) -> Plan {
    let now = rfc3339(now);
    let session_month = month_suffix(meta.started_at);
    let chunks = chunk_by_month(points);
    let mut months = vec![(
        create_sessions(&session_month),
        sessions_table(&session_month),
    )];
    for (m, _) in &chunks {
        let table = points_table(m);
        if !months.iter().any(|(_, t)| *t == table) {
            months.push((create_points(m), table));
        }
    }
    let mut p = Plan::default();
    for (create, table) in months {
        if !known(&table) {
            p.stmts.push(Stmt::new(create, Vec::new()));
            p.stmts.push(Stmt::new(
                RECORD_PARTITION,
                vec![table.as_str().into(), now.as_str().into()],
            ));
        }
        p.tables.push(table);
    }
    for (m, arr) in chunks {
        p.stmts.push(Stmt::new(
            insert_points(&m),
            vec![meta.id.as_str().into(), arr.into()],
        ));
    }
    let status = match meta.status {
        SessionStatus::Active => "active",
        SessionStatus::Ended => "ended",
    };
    p.stmts.push(Stmt::new(
        upsert_session(&session_month),
        vec![
            meta.id.as_str().into(),
            meta.owner_id.as_str().into(),
            meta.title.clone().into(),
            serde_json::to_string(&meta.members)
                .unwrap_or_else(|_| "[]".into())
                .into(),
            serde_json::to_string(&meta.metadata)
                .unwrap_or_else(|_| "{}".into())
                .into(),
            status.into(),
            rfc3339(meta.started_at).into(),
            meta.ended_at.map(rfc3339).into(),
            Param::Num(point_count as f64),
        ],
    ));
    p
}

/// Largest JSON array bound to one insert (D1 caps a bound value at 2 MB).
pub const MAX_CHUNK_BYTES: usize = 512 * 1024;

/// `sessions_YYYY_MM`.
pub fn sessions_table(month: &str) -> String {
    format!("sessions_{month}")
}

/// `session_points_YYYY_MM`.
pub fn points_table(month: &str) -> String {
    format!("session_points_{month}")
}

/// Creates a month's sessions partition if it is missing.
pub fn create_sessions(month: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\
         id TEXT PRIMARY KEY, owner_id TEXT NOT NULL, title TEXT, members TEXT NOT NULL, \
         metadata TEXT NOT NULL, status TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, \
         point_count INTEGER NOT NULL)",
        sessions_table(month)
    )
}

/// Creates a month's points partition if it is missing; `(session_id, seq)`
/// is the key that makes a repeated flush harmless.
pub fn create_points(month: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\
         session_id TEXT NOT NULL, seq INTEGER NOT NULL, user_id TEXT NOT NULL, client_id TEXT, \
         kind TEXT NOT NULL, value REAL, data TEXT, ts INTEGER NOT NULL, \
         PRIMARY KEY (session_id, seq))",
        points_table(month)
    )
}

/// Records a partition in the `partitions` table (for operators).
pub const RECORD_PARTITION: &str =
    "INSERT OR IGNORE INTO partitions (name, created_at) VALUES (?1, ?2)";

/// Inserts the points of a JSON array (`?2`, stored points as the API
/// returns them) for session `?1`; points already there are left alone.
pub fn insert_points(month: &str) -> String {
    format!(
        "INSERT OR IGNORE INTO {} (session_id, seq, user_id, client_id, kind, value, data, ts) \
         SELECT ?1, json_extract(p.value, '$.seq'), json_extract(p.value, '$.userId'), \
         json_extract(p.value, '$.id'), json_extract(p.value, '$.kind'), \
         json_extract(p.value, '$.value'), json_extract(p.value, '$.data'), \
         json_extract(p.value, '$.ts') FROM json_each(?2) AS p",
        points_table(month)
    )
}

/// Inserts or updates the session row: `?1` id, `?2` owner, `?3` title,
/// `?4` members (JSON), `?5` metadata (JSON), `?6` status, `?7` started_at,
/// `?8` ended_at, `?9` point_count. The count never goes down, so an older
/// flush landing late cannot undo a newer one.
pub fn upsert_session(month: &str) -> String {
    format!(
        "INSERT INTO {t} (id, owner_id, title, members, metadata, status, started_at, ended_at, point_count) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT(id) DO UPDATE SET title = excluded.title, members = excluded.members, \
         metadata = excluded.metadata, status = excluded.status, ended_at = excluded.ended_at, \
         point_count = max({t}.point_count, excluded.point_count)",
        t = sessions_table(month)
    )
}

/// Groups stored points `(ts, json)` by their partition month and packs
/// each group into JSON arrays of at most [`MAX_CHUNK_BYTES`] (a single
/// larger point still gets an array of its own).
pub fn chunk_by_month(points: &[(Millis, String)]) -> Vec<(String, String)> {
    let mut by_month: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (ts, body) in points {
        let arrays = by_month.entry(month_suffix(*ts)).or_default();
        match arrays.last_mut() {
            Some(arr) if arr.len() + body.len() + 2 <= MAX_CHUNK_BYTES => {
                arr.push(',');
                arr.push_str(body);
            }
            _ => arrays.push(format!("[{body}")),
        }
    }
    by_month
        .into_iter()
        .flat_map(|(month, arrays)| {
            arrays.into_iter().map(move |mut arr| {
                arr.push(']');
                (month.clone(), arr)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOV: Millis = 1_764_272_772_345; // 2025-11-27
    const DEC: Millis = 1_764_547_200_000; // 2025-12-01T00:00:00Z

    #[test]
    fn partition_names_follow_the_utc_month() {
        assert_eq!(points_table(&month_suffix(NOV)), "session_points_2025_11");
        assert_eq!(sessions_table(&month_suffix(DEC)), "sessions_2025_12");
        assert_eq!(month_suffix(DEC - 1), "2025_11");
    }

    #[test]
    fn points_split_by_month_into_valid_json_arrays() {
        let pts = vec![
            (NOV, r#"{"seq":1}"#.to_owned()),
            (DEC, r#"{"seq":2}"#.to_owned()),
            (NOV + 1, r#"{"seq":3}"#.to_owned()),
        ];
        let chunks = chunk_by_month(&pts);
        assert_eq!(
            chunks,
            vec![
                ("2025_11".to_owned(), r#"[{"seq":1},{"seq":3}]"#.to_owned()),
                ("2025_12".to_owned(), r#"[{"seq":2}]"#.to_owned()),
            ]
        );
    }

    #[test]
    fn large_batches_are_chunked_below_the_limit() {
        let body = format!(r#"{{"d":"{}"}}"#, "x".repeat(100 * 1024));
        let pts: Vec<(Millis, String)> = (0..12).map(|i| (NOV + i, body.clone())).collect();
        let chunks = chunk_by_month(&pts);
        assert!(chunks.len() >= 3, "{}", chunks.len());
        let mut n = 0;
        for (m, arr) in &chunks {
            assert_eq!(m, "2025_11");
            assert!(arr.len() <= MAX_CHUNK_BYTES);
            let v: Vec<serde_json::Value> = serde_json::from_str(arr).unwrap();
            n += v.len();
        }
        assert_eq!(n, 12, "every point exactly once");
    }

    fn meta() -> Meta {
        Meta {
            id: "019ac5a4-1d20-7000-8000-000000000000".into(),
            owner_id: "alice".into(),
            title: Some("t".into()),
            members: vec!["bob".into()],
            metadata: serde_json::Map::new(),
            status: SessionStatus::Active,
            started_at: NOV,
            ended_at: None,
            max_participants: 5,
            owner_plan: "free".into(),
        }
    }

    #[test]
    fn a_plan_creates_unknown_partitions_inserts_by_month_and_upserts_the_row() {
        let pts = vec![
            (NOV, r#"{"seq":1}"#.to_owned()),
            (DEC, r#"{"seq":2}"#.to_owned()),
        ];
        let p = plan(&meta(), 2, &pts, DEC, |_| false);
        let sql: Vec<&str> = p.stmts.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(sql.len(), 9, "{sql:#?}");
        assert!(sql[0].starts_with("CREATE TABLE IF NOT EXISTS sessions_2025_11"));
        assert_eq!(sql[1], RECORD_PARTITION);
        assert_eq!(
            p.stmts[1].params,
            vec![
                Param::Text("sessions_2025_11".into()),
                Param::Text("2025-12-01T00:00:00.000Z".into())
            ]
        );
        assert!(sql[2].contains("session_points_2025_11"));
        assert!(sql[4].contains("session_points_2025_12"));
        assert!(sql[6].starts_with("INSERT OR IGNORE INTO session_points_2025_11"));
        assert_eq!(p.stmts[6].params[1], Param::Text(r#"[{"seq":1}]"#.into()));
        assert!(sql[7].starts_with("INSERT OR IGNORE INTO session_points_2025_12"));
        assert!(sql[8].starts_with("INSERT INTO sessions_2025_11"));
        let row = &p.stmts[8].params;
        assert_eq!(row.len(), 9);
        assert_eq!(row[2], Param::Text("t".into()));
        assert_eq!(row[3], Param::Text(r#"["bob"]"#.into()));
        assert_eq!(row[5], Param::Text("active".into()));
        assert_eq!(row[7], Param::Null);
        assert_eq!(row[8], Param::Num(2.0));
        assert_eq!(
            p.tables,
            vec![
                "sessions_2025_11".to_owned(),
                "session_points_2025_11".to_owned(),
                "session_points_2025_12".to_owned()
            ]
        );
        // Known partitions are not created again; a row-only flush is one
        // statement.
        let p = plan(&meta(), 0, &[], DEC, |_| true);
        assert_eq!(p.stmts.len(), 1);
    }

    #[test]
    fn statements_name_their_partition_and_keep_one_row_per_seq() {
        assert!(create_points("2026_01").contains("PRIMARY KEY (session_id, seq)"));
        assert!(
            insert_points("2026_01").starts_with("INSERT OR IGNORE INTO session_points_2026_01")
        );
        assert!(upsert_session("2026_01").contains("ON CONFLICT(id) DO UPDATE"));
    }
}
