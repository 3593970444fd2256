//! The session's row as D1, the list, the archive and the export have it.

use std::collections::BTreeMap;

use sesh_protocol::SessionSummary;

use super::Meta;
use crate::time::rfc3339;

impl Meta {
    /// The session record with `point_count` points (and as many seqs:
    /// they have no gaps), times in RFC 3339, and no `stats` (a flush
    /// writes the figures of the kinds it changed apart; the live answer
    /// puts in all of them).
    pub fn record(&self, point_count: u64) -> SessionSummary {
        SessionSummary {
            id: self.id.clone(),
            owner_id: self.owner_id.clone(),
            title: self.title.clone(),
            members: self.members.clone(),
            viewers: self.viewers.clone(),
            metadata: self.metadata.clone(),
            status: self.status,
            started_at: rfc3339(self.started_at),
            ended_at: self.ended_at.map(rfc3339),
            point_count,
            last_seq: point_count,
            stats: BTreeMap::new(),
        }
    }
}

// rusqlite, which runs the statements, is a native-only dev-dependency.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use sesh_protocol::{CreateSession, KindStats, SessionStatus};

    use super::*;
    use crate::data::d1::plan;
    use crate::data::history::{find_session, parse_found_session};
    use crate::data::partition::{testdb, Existing, Statement, LIST_PARTITIONS};

    #[test]
    fn the_flushed_record_reads_back_as_listed() {
        let start = 1_764_272_772_345; // 2025-11-27T19:46:12.345Z
        let id = crate::testing::new_session_id(start);
        let create = CreateSession {
            title: Some("run".into()),
            members: Some(vec!["bob".into()]),
            viewers: None,
            metadata: serde_json::json!({"k": [1]}).as_object().cloned(),
        };
        let mut meta = Meta::new(id.clone(), ("ann", "pro", 25), create, start + 5);
        meta.status = SessionStatus::Ended;
        meta.ended_at = Some(start + 60_000);
        let rec = meta.record(7);
        assert_eq!(rec.started_at, "2025-11-27T19:46:12.345Z");
        assert_eq!(rec.ended_at.as_deref(), Some("2025-11-27T19:47:12.345Z"));
        assert_eq!((rec.point_count, rec.last_seq), (7, 7));
        let stats = [("hr".to_owned(), KindStats::of(2.5))];
        let db = testdb::open();
        let p = plan(&rec, &[], &stats, start + 61_000, |_| false).expect("plan");
        testdb::batch(&db, &p.stmts);
        let ex = Existing::from_rows(&testdb::run(&db, &Statement::new(LIST_PARTITIONS, vec![])))
            .expect("partitions");
        let find = find_session(&id, &ex).expect("its month exists");
        let found = parse_found_session(&testdb::run(&db, &find)).expect("row");
        let want = SessionSummary {
            stats: stats.into_iter().collect(),
            ..rec
        };
        assert_eq!(found, Some(want));
    }
}
