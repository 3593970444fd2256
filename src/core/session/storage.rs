//! The session object's own SQLite storage, as text: tables, the triggers
//! that keep `units` and `stats` in step with every stored point, and the
//! statements the adapter runs. Pure data; the native tests run it on
//! SQLite beside the core.
//!
//! A point is stored with one statement: inserting it spends its unit and
//! counts its value through the triggers, in the same statement, so a write
//! is atomic without a transaction around several statements (the
//! triggers do exactly what [`super::Units::spend`] and
//! [`super::stats::Stats::add`] do in memory).

// `points` is the write-ahead log and the source of reads and replays;
// client ids are found through the partial index on (user_id, client_id),
// never loaded whole. `kind` and `value` feed the stats trigger.
/// The tables, created when missing.
pub const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS session (\
  k INTEGER PRIMARY KEY CHECK (k = 0), meta TEXT NOT NULL, meta_version INTEGER NOT NULL, \
  flushed_meta_version INTEGER NOT NULL DEFAULT 0, flushed_seq INTEGER NOT NULL DEFAULT 0, \
  units INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS points (\
  seq INTEGER PRIMARY KEY, client_id TEXT, ts INTEGER NOT NULL, body TEXT NOT NULL, user_id TEXT, \
  kind TEXT, value REAL);
CREATE TABLE IF NOT EXISTS units (\
  k INTEGER PRIMARY KEY CHECK (k = 0), day INTEGER NOT NULL, held INTEGER NOT NULL, used INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stats (\
  kind TEXT PRIMARY KEY, count INTEGER NOT NULL, sum REAL NOT NULL, min REAL NOT NULL, \
  max REAL NOT NULL, last REAL NOT NULL);
CREATE TABLE IF NOT EXISTS presence_outbox (\
  id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, conn_id TEXT NOT NULL, online INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS settle_outbox (\
  id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, plan TEXT NOT NULL, day INTEGER NOT NULL, \
  used INTEGER NOT NULL, returned INTEGER NOT NULL);";

/// Probes for the `user_id` column (storage written before client ids were
/// scoped to users fails it).
pub const HAS_USER_ID: &str = "SELECT user_id FROM points LIMIT 0";

/// Storage written before client ids were scoped to users: the column is
/// added and filled once, and the stats computed once.
pub const MIGRATE_USER_ID: &str = "\
ALTER TABLE points ADD COLUMN user_id TEXT;
UPDATE points SET user_id = json_extract(body, '$.userId');
INSERT OR REPLACE INTO stats (kind, count, sum, min, max, last) \
  SELECT json_extract(body, '$.kind'), COUNT(*), SUM(json_extract(body, '$.value')), \
  MIN(json_extract(body, '$.value')), MAX(json_extract(body, '$.value')), \
  (SELECT json_extract(p2.body, '$.value') FROM points p2 \
   WHERE json_extract(p2.body, '$.kind') = json_extract(points.body, '$.kind') \
   AND json_extract(p2.body, '$.value') IS NOT NULL ORDER BY p2.seq DESC LIMIT 1) \
  FROM points WHERE json_extract(body, '$.value') IS NOT NULL GROUP BY json_extract(body, '$.kind');";

/// Probes for the `kind` and `value` columns.
pub const HAS_KIND: &str = "SELECT kind, value FROM points LIMIT 0";

/// Storage written before the triggers: the columns they read. Older rows
/// keep `NULL` there; their units and stats are already in their tables.
pub const MIGRATE_KIND: &str = "\
ALTER TABLE points ADD COLUMN kind TEXT;
ALTER TABLE points ADD COLUMN value REAL;";

/// The client id index and the triggers, created when missing.
pub const INDEX_AND_TRIGGERS: &str = "\
CREATE INDEX IF NOT EXISTS points_by_client ON points (user_id, client_id) \
  WHERE client_id IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS points_spend AFTER INSERT ON points BEGIN \
  UPDATE units SET held = max(held - 1, 0), used = used + 1 WHERE k = 0; END;
CREATE TRIGGER IF NOT EXISTS points_stats AFTER INSERT ON points WHEN NEW.value IS NOT NULL BEGIN \
  INSERT INTO stats (kind, count, sum, min, max, last) \
  VALUES (NEW.kind, 1, NEW.value, NEW.value, NEW.value, NEW.value) \
  ON CONFLICT(kind) DO UPDATE SET count = count + 1, sum = sum + excluded.sum, \
  min = min(min, excluded.min), max = max(max, excluded.max), last = excluded.last; END;";

/// Stores one point: `seq, client_id, ts, body, user_id, kind, value`.
pub const INSERT_POINT: &str =
    "INSERT INTO points (seq, client_id, ts, body, user_id, kind, value) \
  VALUES (?, ?, ?, ?, ?, ?, ?)";

/// Stores the points of one JSON array of `[seq, client_id, ts, body,
/// user_id, kind, value]` rows, in order, in one statement.
pub const INSERT_POINTS: &str =
    "INSERT INTO points (seq, client_id, ts, body, user_id, kind, value) \
  SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6 \
  FROM json_each(?) ORDER BY key";

/// The parameter of [`INSERT_POINTS`] for `rows`.
pub fn points_json(rows: &[std::rc::Rc<super::Row>]) -> String {
    let rows: Vec<_> = rows
        .iter()
        .map(|r| {
            let p = &r.point;
            serde_json::json!([p.seq, p.id, p.ts, r.json, p.user_id, p.kind, p.value])
        })
        .collect();
    serde_json::Value::from(rows).to_string()
}

/// Sets the units in hand: `day, held, used`.
pub const SAVE_UNITS: &str = "INSERT INTO units (k, day, held, used) VALUES (0, ?, ?, ?) \
  ON CONFLICT(k) DO UPDATE SET day = excluded.day, held = excluded.held, used = excluded.used";

/// The units in hand.
pub const LOAD_UNITS: &str = "SELECT day, held, used FROM units WHERE k = 0";

/// The figures of every kind.
pub const LOAD_STATS: &str = "SELECT kind, count, sum, min, max, last FROM stats";

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c.execute_batch(INDEX_AND_TRIGGERS).unwrap();
        c
    }

    #[test]
    fn one_statement_stores_many_points_with_their_units_and_stats() {
        let c = db();
        c.execute(SAVE_UNITS, (5, 10, 0)).unwrap();
        let rows = serde_json::json!([
            [1, "a", 7, "{}", "u", "hr", 70.0],
            [2, null, 8, "{}", "u", "hr", 60.0],
            [3, "b", 9, "{}", "v", "note", null]
        ]);
        c.execute(INSERT_POINTS, [rows.to_string()]).unwrap();
        let units: (i64, i64, i64) = c
            .query_row(LOAD_UNITS, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        assert_eq!(units, (5, 7, 3));
        let hr: (i64, f64, f64, f64, f64) = c
            .query_row(
                "SELECT count, sum, min, max, last FROM stats WHERE kind = 'hr'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(hr, (2, 130.0, 60.0, 70.0, 60.0));
        let kinds: i64 = c
            .query_row("SELECT count(*) FROM stats", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kinds, 1, "a point without a value counts in no figure");
        let seqs: Vec<(i64, Option<String>)> = c
            .prepare("SELECT seq, client_id FROM points ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            seqs,
            vec![(1, Some("a".into())), (2, None), (3, Some("b".into()))]
        );
    }

    #[test]
    fn a_failed_insert_leaves_units_and_stats_untouched() {
        let c = db();
        c.execute(SAVE_UNITS, (5, 10, 0)).unwrap();
        c.execute(INSERT_POINT, (1, "a", 7, "{}", "u", "hr", 70.0))
            .unwrap();
        // The seq is taken: the whole statement, triggers included, fails.
        let rows = serde_json::json!([
            [2, "b", 7, "{}", "u", "hr", 1.0],
            [1, "c", 7, "{}", "u", "hr", 2.0]
        ]);
        assert!(c.execute(INSERT_POINTS, [rows.to_string()]).is_err());
        let units: (i64, i64) = c
            .query_row("SELECT held, used FROM units", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(units, (9, 1));
        let count: i64 = c
            .query_row("SELECT count FROM stats WHERE kind = 'hr'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(count, 1);
    }

    #[test]
    fn old_storage_migrates_to_the_trigger_columns() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE points (seq INTEGER PRIMARY KEY, client_id TEXT, ts INTEGER NOT NULL, \
             body TEXT NOT NULL, user_id TEXT);
             INSERT INTO points VALUES (1, 'a', 7, '{}', 'u');",
        )
        .unwrap();
        c.execute_batch(SCHEMA).unwrap();
        assert!(c.prepare(HAS_KIND).is_err());
        c.execute_batch(MIGRATE_KIND).unwrap();
        c.execute_batch(INDEX_AND_TRIGGERS).unwrap();
        c.execute(SAVE_UNITS, (5, 1, 1)).unwrap();
        c.execute(INSERT_POINT, (2, "b", 7, "{}", "u", "hr", 3.0))
            .unwrap();
        let used: i64 = c
            .query_row("SELECT used FROM units", [], |r| r.get(0))
            .unwrap();
        assert_eq!(used, 2);
    }
}
