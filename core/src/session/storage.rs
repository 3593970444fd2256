//! The session object's own SQLite storage, as text: tables, the trigger
//! that keeps `units` in step with every stored point, the stats
//! checkpoint, and the statements the adapter runs. Pure data; the native
//! tests run it on SQLite beside the core.
//!
//! A point is stored with one statement: inserting it spends its unit
//! through the trigger (which does exactly what [`super::Units::spend`]
//! does in memory), so a write is atomic without a transaction around
//! several statements. The `stats` figures are a checkpoint: they count
//! every point up to `stats_mark.through_seq`, and a wake-up counts the
//! few stored after it ([`STATS_TAIL`]); a trigger counting every point
//! cost more than the insert itself.

// `points` is the write-ahead log and the source of reads and replays;
// client ids are found through the partial index on (user_id, client_id),
// never loaded whole. `kind` and `value` feed the stats.
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
CREATE TABLE IF NOT EXISTS stats_mark (\
  k INTEGER PRIMARY KEY CHECK (k = 0), through_seq INTEGER NOT NULL);
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

/// The client id index and the units trigger, created when missing. Storage
/// that has no stats mark yet had its stats counted by a trigger on every
/// point (or has no points): its mark is its last seq, set before that
/// trigger goes.
pub const INDEX_AND_TRIGGERS: &str = "\
CREATE INDEX IF NOT EXISTS points_by_client ON points (user_id, client_id) \
  WHERE client_id IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS points_spend AFTER INSERT ON points BEGIN \
  UPDATE units SET held = max(held - 1, 0), used = used + 1 WHERE k = 0; END;
INSERT OR IGNORE INTO stats_mark (k, through_seq) SELECT 0, coalesce(MAX(seq), 0) FROM points;
DROP TRIGGER IF EXISTS points_stats;";

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

/// The figures of every kind, as of the mark.
pub const LOAD_STATS: &str = "SELECT kind, count, sum, min, max, last FROM stats";

/// The seq the stored figures count through.
pub const LOAD_STATS_MARK: &str = "SELECT through_seq FROM stats_mark WHERE k = 0";

/// The valued points after the mark (`?`), in order: `kind, value`.
pub const STATS_TAIL: &str =
    "SELECT kind, value FROM points WHERE seq > ? AND value IS NOT NULL ORDER BY seq";

/// Sets one kind's figures: `kind, count, sum, min, max, last`.
pub const SAVE_STATS: &str = "INSERT INTO stats (kind, count, sum, min, max, last) \
  VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(kind) DO UPDATE SET count = excluded.count, \
  sum = excluded.sum, min = excluded.min, max = excluded.max, last = excluded.last";

/// Sets the mark: `through_seq`. In one transaction with the figures.
pub const SAVE_STATS_MARK: &str = "INSERT INTO stats_mark (k, through_seq) VALUES (0, ?) \
  ON CONFLICT(k) DO UPDATE SET through_seq = excluded.through_seq";

// The outboxes keep the ids the core gave their entries (its `Outbox`):
// a receiver can tell a redelivery by its id, and a wake-up goes on with
// ids above every stored one.
/// Puts a presence entry in: `id, user_id, conn_id, online`.
pub const INSERT_PRESENCE_OUTBOX: &str =
    "INSERT OR REPLACE INTO presence_outbox (id, user_id, conn_id, online) VALUES (?, ?, ?, ?)";

/// Puts a settlement in: `id, owner, plan, day, used, returned`.
pub const INSERT_SETTLE_OUTBOX: &str = "INSERT OR REPLACE INTO settle_outbox \
  (id, owner, plan, day, used, returned) VALUES (?, ?, ?, ?, ?, ?)";

/// Takes a delivered presence entry out: `id`.
pub const DELETE_PRESENCE_OUTBOX: &str = "DELETE FROM presence_outbox WHERE id = ?";

/// Takes a delivered settlement out: `id`.
pub const DELETE_SETTLE_OUTBOX: &str = "DELETE FROM settle_outbox WHERE id = ?";

/// The highest id each outbox ever gave (`AUTOINCREMENT` keeps it even
/// when the outbox is empty): `name, seq`.
pub const OUTBOX_LAST_IDS: &str = "SELECT name, seq FROM sqlite_sequence \
  WHERE name IN ('presence_outbox', 'settle_outbox')";

/// The undelivered presence entries: `id, user_id, conn_id, online`.
pub const LOAD_PRESENCE_OUTBOX: &str =
    "SELECT id, user_id, conn_id, online FROM presence_outbox ORDER BY id";

/// The undelivered settlements: `id, owner, plan, day, used, returned`.
pub const LOAD_SETTLE_OUTBOX: &str =
    "SELECT id, owner, plan, day, used, returned FROM settle_outbox ORDER BY id";

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

    fn tail(c: &Connection, after: i64) -> Vec<(String, f64)> {
        c.prepare(STATS_TAIL)
            .unwrap()
            .query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn mark(c: &Connection) -> i64 {
        c.query_row(LOAD_STATS_MARK, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn one_statement_stores_many_points_with_their_units() {
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
        // New storage: the figures count nothing yet, the tail has every
        // valued point in order.
        assert_eq!(mark(&c), 0);
        assert_eq!(
            tail(&c, 0),
            vec![("hr".to_owned(), 70.0), ("hr".to_owned(), 60.0)]
        );
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
    fn a_checkpoint_moves_the_mark_and_sets_the_figures() {
        let c = db();
        c.execute(INSERT_POINT, (1, "a", 7, "{}", "u", "hr", 70.0))
            .unwrap();
        c.execute(INSERT_POINT, (2, "b", 7, "{}", "u", "hr", 50.0))
            .unwrap();
        for _ in 0..2 {
            c.execute(SAVE_STATS, ("hr", 1, 70.0, 70.0, 70.0, 70.0))
                .unwrap();
            c.execute(SAVE_STATS_MARK, [1]).unwrap();
        }
        let hr: (i64, f64) = c
            .query_row("SELECT count, last FROM stats WHERE kind = 'hr'", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(hr, (1, 70.0));
        assert_eq!(mark(&c), 1);
        assert_eq!(tail(&c, mark(&c)), vec![("hr".to_owned(), 50.0)]);
    }

    #[test]
    fn a_failed_insert_leaves_units_and_points_untouched() {
        let c = db();
        c.execute(SAVE_UNITS, (5, 10, 0)).unwrap();
        c.execute(INSERT_POINT, (1, "a", 7, "{}", "u", "hr", 70.0))
            .unwrap();
        // The seq is taken: the whole statement, trigger included, fails.
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
        assert_eq!(tail(&c, 0), vec![("hr".to_owned(), 70.0)]);
    }

    #[test]
    fn outbox_entries_keep_the_ids_they_were_given() {
        let c = db();
        // Storage of the previous version numbered its entries itself.
        c.execute(
            "INSERT INTO presence_outbox (user_id, conn_id, online) VALUES ('u', 'c0', 1)",
            [],
        )
        .unwrap();
        c.execute(INSERT_PRESENCE_OUTBOX, (5, "u", "c1", 1))
            .unwrap();
        c.execute(INSERT_PRESENCE_OUTBOX, (5, "u", "c1", 1))
            .unwrap();
        c.execute(INSERT_SETTLE_OUTBOX, (2, "o", "pro", 7, 3, 4))
            .unwrap();
        c.execute(DELETE_PRESENCE_OUTBOX, [1]).unwrap();
        let ids: Vec<(i64, String)> = c
            .prepare(LOAD_PRESENCE_OUTBOX)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            ids,
            vec![(5, "c1".to_owned())],
            "written once, under its id"
        );
        let settle: (i64, i64, i64) = c
            .query_row(LOAD_SETTLE_OUTBOX, [], |r| {
                Ok((r.get(0)?, r.get(4)?, r.get(5)?))
            })
            .unwrap();
        assert_eq!(settle, (2, 3, 4));
        c.execute(DELETE_SETTLE_OUTBOX, [2]).unwrap();
        let last: Vec<(String, i64)> = c
            .prepare(OUTBOX_LAST_IDS)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            last.contains(&("presence_outbox".to_owned(), 5)),
            "{last:?}"
        );
        assert!(last.contains(&("settle_outbox".to_owned(), 2)), "{last:?}");
        assert!(c
            .prepare(LOAD_SETTLE_OUTBOX)
            .unwrap()
            .query([])
            .unwrap()
            .next()
            .unwrap()
            .is_none());
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
        assert_eq!(mark(&c), 1, "its figures counted the old point");
        assert_eq!(tail(&c, mark(&c)), vec![("hr".to_owned(), 3.0)]);
    }

    #[test]
    fn storage_of_the_stats_trigger_keeps_its_figures_and_loses_the_trigger() {
        let c = Connection::open_in_memory().unwrap();
        // As the previous version left it: figures kept by a trigger.
        c.execute_batch(&SCHEMA.replace(
            "CREATE TABLE IF NOT EXISTS stats_mark (\
  k INTEGER PRIMARY KEY CHECK (k = 0), through_seq INTEGER NOT NULL);",
            "",
        ))
        .unwrap();
        c.execute_batch(
            "CREATE TRIGGER points_stats AFTER INSERT ON points WHEN NEW.value IS NOT NULL BEGIN \
             INSERT INTO stats (kind, count, sum, min, max, last) \
             VALUES (NEW.kind, 1, NEW.value, NEW.value, NEW.value, NEW.value) \
             ON CONFLICT(kind) DO UPDATE SET count = count + 1, sum = sum + excluded.sum, \
             min = min(min, excluded.min), max = max(max, excluded.max), last = excluded.last; END;",
        )
        .unwrap();
        c.execute(INSERT_POINT, (1, "a", 7, "{}", "u", "hr", 70.0))
            .unwrap();
        c.execute(INSERT_POINT, (2, "b", 7, "{}", "u", "hr", 60.0))
            .unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c.execute_batch(INDEX_AND_TRIGGERS).unwrap();
        assert_eq!(mark(&c), 2);
        c.execute(INSERT_POINT, (3, "c", 7, "{}", "u", "hr", 10.0))
            .unwrap();
        let count: i64 = c
            .query_row("SELECT count FROM stats WHERE kind = 'hr'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(count, 2, "the trigger is gone");
        assert_eq!(tail(&c, mark(&c)), vec![("hr".to_owned(), 10.0)]);
        // Preparing again changes nothing.
        c.execute_batch(INDEX_AND_TRIGGERS).unwrap();
        assert_eq!(mark(&c), 2);
    }
}
