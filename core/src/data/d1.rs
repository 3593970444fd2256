//! The plan of one flush to D1 ([`plan`]): the session's points, each in the
//! partition of its `ts` (monthly, or yearly once 12 months old), with the
//! months the session has points in and the roll-up marks of their hours,
//! and the session row with its member rows, in the partition of its start
//! (CONTRACT.md sections 5 and 9), and the `stats` of the kinds the points
//! changed. The statements come from the query layer
//! (`core::history`), which alone names partition tables; the session
//! object only binds and runs them, as one batch.
//!
//! Points go in as one JSON array per partition and statement, expanded by
//! SQLite's `json_each`: a single bound parameter however many points, so
//! D1's limit of 100 bound parameters per statement never binds a batch.

use sesh_protocol::KindStats;

use crate::data::history::{write_points, write_session, write_stats, SessionRecord};
use crate::data::partition::Statement;
use crate::session::Meta;
use crate::time::Millis;

/// Largest JSON array bound to one insert (D1 caps a bound value at 2 MB).
pub const MAX_CHUNK_BYTES: usize = 512 * 1024;

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
/// write), the points, the session row with `point_count`, and `stats`.
/// `points` are `(ts, stored JSON)` in seq order.
pub fn plan(
    meta: &Meta,
    point_count: u64,
    points: &[(Millis, String)],
    stats: &[(String, KindStats)],
    now: Millis,
    known: impl Fn(&str) -> bool,
) -> Plan {
    let row = write_session(
        &SessionRecord {
            id: &meta.id,
            owner_id: &meta.owner_id,
            title: meta.title.as_deref(),
            members: &meta.members,
            metadata: &meta.metadata,
            status: meta.status,
            started_at: meta.started_at,
            ended_at: meta.ended_at,
            point_count,
        },
        now,
    );
    let mut p = Plan::default();
    for w in write_points(&meta.id, points, now).into_iter().chain([row]) {
        if !w.ensure.tables.iter().all(|t| known(t)) {
            p.stmts.extend(w.ensure.statements);
        }
        p.stmts.extend(w.statements);
        p.tables.extend(w.ensure.tables);
    }
    p.stmts.extend(write_stats(&meta.id, stats));
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sesh_protocol::SessionStatus;

    const NOV: Millis = 1_764_272_772_345; // 2025-11-27
    const DEC: Millis = 1_764_547_200_000; // 2025-12-01T00:00:00Z
    const OLD: Millis = 1_700_000_000_000; // 2023-11-14: a yearly partition by DEC

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
    fn a_plan_creates_unknown_partitions_then_writes_points_and_the_row() {
        let pts = vec![
            (NOV, json!({"seq":1,"ts":NOV,"userId":"alice"}).to_string()),
            (DEC, json!({"seq":2,"ts":DEC,"userId":"bob"}).to_string()),
            (OLD, json!({"seq":3,"ts":OLD,"userId":"bob"}).to_string()),
        ];
        let p = plan(&meta(), 3, &pts, &[], DEC, |_| false);
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
        let again = plan(&meta(), 3, &pts, &[], DEC, |_| true);
        assert!(again.stmts.iter().all(|s| !s.sql.starts_with("CREATE")));
        assert!(again.stmts.len() < p.stmts.len());
    }
}
