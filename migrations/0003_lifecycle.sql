-- Data lifecycle (CONTRACT.md section 9): partition moves, R2 archives,
-- pruning, user exports. See src/core/lifecycle.rs, archive.rs, export.rs.

-- One row per (monthly table) being moved into its yearly table. `phase`:
-- 'copy' (rows after the keyset cursor `k1, k2, k3` still to copy),
-- 'verify' (rows after the cursor still to check in the yearly table;
-- `verified` counts those checked), 'done' (monthly table dropped and
-- unregistered). A run killed anywhere resumes from here; every step is
-- one D1 batch that does its work and moves the cursor together.
CREATE TABLE IF NOT EXISTS partition_moves (
  tbl TEXT PRIMARY KEY,
  phase TEXT NOT NULL,
  k1 TEXT,
  k2 INTEGER,
  k3 TEXT,
  verified INTEGER NOT NULL DEFAULT 0,
  updated_at INTEGER NOT NULL
);

-- One row per archived session: its R2 object (`key`), the points it
-- holds, its size and SHA-256 (hex). `verified` 1: read back from R2 and
-- checked. `pruned`: 0 points in D1; 1 reads go to the archive, D1 points
-- being deleted; 2 D1 points deleted. `started_ms`: the session's start. `quarter` ('YYYY-Qn' of the
-- session's start) names its manifest; `manifested` 1 once a manifest
-- listing it was written.
CREATE TABLE IF NOT EXISTS archives (
  session_id TEXT PRIMARY KEY,
  key TEXT NOT NULL,
  quarter TEXT NOT NULL,
  started_ms INTEGER NOT NULL,
  points INTEGER NOT NULL,
  bytes INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  verified INTEGER NOT NULL DEFAULT 0,
  pruned INTEGER NOT NULL DEFAULT 0,
  manifested INTEGER NOT NULL DEFAULT 0,
  archived_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS archives_quarter ON archives (quarter, manifested);
CREATE INDEX IF NOT EXISTS archives_prune ON archives (pruned, started_ms);

-- User exports. `state` is the exporter's progress (JSON, see
-- src/core/export.rs); `parts` the R2 part objects written
-- (exports/{id}/part-{n:06}.gz, n from 0). A step writes part `parts` and
-- then advances the row only if `parts` is still what it read.
CREATE TABLE IF NOT EXISTS exports (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL,
  status TEXT NOT NULL,
  sessions INTEGER NOT NULL DEFAULT 0,
  points INTEGER NOT NULL DEFAULT 0,
  bytes INTEGER,
  sha256 TEXT,
  parts INTEGER NOT NULL DEFAULT 0,
  state TEXT NOT NULL,
  error TEXT,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
