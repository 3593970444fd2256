//! The plan of one flush to D1 ([`plan`]): the session's points, each in the
//! partition of its `ts` (monthly, or yearly once 12 months old), with the
//! months the session has points in and the roll-up marks of their hours,
//! and the session row with its member rows, in the partition of its start
//! (CONTRACT.md sections 5 and 9), and the `stats` of the kinds the points
//! changed. The statements come from the queries
//! ([`history`](crate::data::history)); this module only puts them in
//! order, and the session object only binds and runs them, as one batch.
//! The row is the session record ([`SessionSummary`]) that the list, the
//! archive and the export share.
//!
//! Points go in as one JSON array per partition and statement, expanded by
//! SQLite's `json_each`: a single bound parameter however many points, so
//! D1's limit of 100 bound parameters per statement never binds a batch.

use sesh_protocol::{KindStats, SessionSummary};

use crate::data::history::{write_points, write_session, write_stats};
use crate::data::partition::{RowError, Statement};
use crate::time::Millis;

/// The statements of one flush, run as one D1 batch (all or nothing), and
/// the partition tables it makes sure of (to remember once it succeeded).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// In order.
    pub stmts: Vec<Statement>,
    /// Partition tables the batch creates if missing.
    pub tables: Vec<String>,
}

/// Plans one flush at `now`: the partitions it needs that `known` does not
/// know of (created and registered in the same batch, before their first
/// write), the points, the session row `record` (its `point_count` the
/// count flushed), and `stats`, the figures of the kinds the points
/// changed (`record.stats` is not written). `points` are `(ts, stored
/// JSON)` in seq order. An error: the record's `started_at` is not
/// RFC 3339.
pub fn plan(
    record: &SessionSummary,
    points: &[(Millis, String)],
    stats: &[(String, KindStats)],
    now: Millis,
    known: impl Fn(&str) -> bool,
) -> Result<Plan, RowError> {
    let row = write_session(record, now)?;
    let mut p = Plan::default();
    for w in write_points(&record.id, points, now)
        .into_iter()
        .chain([row])
    {
        if !w.ensure.tables.iter().all(|t| known(t)) {
            p.stmts.extend(w.ensure.statements);
        }
        p.stmts.extend(w.statements);
        p.tables.extend(w.ensure.tables);
    }
    p.stmts.extend(write_stats(&record.id, stats));
    Ok(p)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;
    use sesh_protocol::SessionStatus;

    use super::*;
    use crate::time::rfc3339;

    const NOV: Millis = 1_764_272_772_345; // 2025-11-27
    const DEC: Millis = 1_764_547_200_000; // 2025-12-01T00:00:00Z
    const OLD: Millis = 1_700_000_000_000; // 2023-11-14: a yearly partition by DEC

    fn record() -> SessionSummary {
        SessionSummary {
            id: "019ac5a4-1d20-7000-8000-000000000000".into(),
            owner_id: "alice".into(),
            title: Some("t".into()),
            members: vec!["bob".into()],
            viewers: vec![],
            metadata: serde_json::Map::new(),
            status: SessionStatus::Active,
            started_at: rfc3339(NOV),
            ended_at: None,
            point_count: 3,
            last_seq: 3,
            stats: BTreeMap::new(),
        }
    }

    #[test]
    fn a_plan_creates_unknown_partitions_then_writes_points_and_the_row() {
        let pts = vec![
            (NOV, json!({"seq":1,"ts":NOV,"userId":"alice"}).to_string()),
            (DEC, json!({"seq":2,"ts":DEC,"userId":"bob"}).to_string()),
            (OLD, json!({"seq":3,"ts":OLD,"userId":"bob"}).to_string()),
        ];
        let p = plan(&record(), &pts, &[], DEC, |_| false).expect("plan");
        let sql: Vec<&str> = p.stmts.iter().map(|s| s.sql.as_str()).collect();
        let first = |needle: &str| {
            sql.iter()
                .position(|s| s.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in {sql:#?}"))
        };
        for table in [
            "session_points_2025_11",
            "session_points_2025_12",
            "session_points_2023",
        ] {
            assert!(
                first(&format!("CREATE TABLE IF NOT EXISTS {table}"))
                    < first(&format!("INSERT OR IGNORE INTO {table}")),
                "{table} exists before its write"
            );
        }
        assert!(first("session_point_months") > 0);
        assert!(first("rollup_marks") > 0);
        assert!(
            first("INSERT INTO sessions_2025_11")
                > first("CREATE TABLE IF NOT EXISTS sessions_2025_11")
        );
        assert!(first("session_members_2025_11") > 0);
        assert!(p.tables.contains(&"session_points_2023".to_owned()));
        assert!(p.stmts.iter().all(|s| s.params.len() <= 100));
        // Known partitions are not created again.
        let again = plan(&record(), &pts, &[], DEC, |_| true).expect("plan");
        assert!(again.stmts.iter().all(|s| !s.sql.starts_with("CREATE")));
        assert!(again.stmts.len() < p.stmts.len());
    }

    #[test]
    fn a_record_whose_start_is_not_rfc3339_plans_nothing() {
        let rec = SessionSummary {
            started_at: "yesterday".into(),
            ..record()
        };
        assert!(matches!(
            plan(&rec, &[], &[], DEC, |_| true),
            Err(RowError::Column {
                column: "started_at",
                ..
            })
        ));
    }
}
