-- Sesh D1 schema.
--
-- Sessions and points live in monthly partition tables, sessions_YYYY_MM and
-- session_points_YYYY_MM (UTC). The Worker creates a partition the first
-- time it writes to it (CREATE TABLE IF NOT EXISTS in the same batch as the
-- write), so a point in a new month never fails. This table records which
-- partitions exist, for operators and retention jobs.
CREATE TABLE IF NOT EXISTS partitions (
  name TEXT PRIMARY KEY,
  created_at TEXT NOT NULL
);
