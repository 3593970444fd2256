-- History and analytics: the tables that are not partitioned.
--
-- Partition tables (sessions_*, session_members_*, session_points_*) are
-- still created on first use, in the batch that writes to them, and
-- registered in `partitions` (see src/core/partition.rs).

-- Which months' points partitions hold a session's points ('YYYY_MM', by
-- point ts), so reading an ended session's points from D1 touches only
-- those tables. Filled with INSERT OR IGNORE in the batch that writes the
-- points.
CREATE TABLE IF NOT EXISTS session_point_months (
  session_id TEXT NOT NULL,
  month TEXT NOT NULL,
  PRIMARY KEY (session_id, month)
) WITHOUT ROWID;

-- (author, UTC hour) buckets whose metrics must be recomputed: written with
-- INSERT OR IGNORE in the batch that writes the points, deleted by the
-- scheduled roll-up in the batch that recomputed them. `month` ('YYYY_MM'
-- of the hour) leads the key because a roll-up batch works on one month.
CREATE TABLE IF NOT EXISTS rollup_marks (
  month TEXT NOT NULL,
  hour_ms INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  PRIMARY KEY (month, hour_ms, user_id)
) WITHOUT ROWID;

-- Metrics per author, kind and bucket (start_ms: first millisecond of the
-- UTC hour, day, ISO week starting Monday, or month). `count` counts all
-- points; `value_count`, `sum`, `min` and `max` only those with a value
-- (sum/min/max NULL when none has). The key leads with (user_id, start_ms)
-- so a user's time range is one index range scan, with or without a kind.
CREATE TABLE IF NOT EXISTS metrics_hour (
  user_id TEXT NOT NULL,
  start_ms INTEGER NOT NULL,
  kind TEXT NOT NULL,
  count INTEGER NOT NULL,
  value_count INTEGER NOT NULL,
  sum REAL,
  min REAL,
  max REAL,
  PRIMARY KEY (user_id, start_ms, kind)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS metrics_day (
  user_id TEXT NOT NULL,
  start_ms INTEGER NOT NULL,
  kind TEXT NOT NULL,
  count INTEGER NOT NULL,
  value_count INTEGER NOT NULL,
  sum REAL,
  min REAL,
  max REAL,
  PRIMARY KEY (user_id, start_ms, kind)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS metrics_week (
  user_id TEXT NOT NULL,
  start_ms INTEGER NOT NULL,
  kind TEXT NOT NULL,
  count INTEGER NOT NULL,
  value_count INTEGER NOT NULL,
  sum REAL,
  min REAL,
  max REAL,
  PRIMARY KEY (user_id, start_ms, kind)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS metrics_month (
  user_id TEXT NOT NULL,
  start_ms INTEGER NOT NULL,
  kind TEXT NOT NULL,
  count INTEGER NOT NULL,
  value_count INTEGER NOT NULL,
  sum REAL,
  min REAL,
  max REAL,
  PRIMARY KEY (user_id, start_ms, kind)
) WITHOUT ROWID;
