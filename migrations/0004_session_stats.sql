-- A session's live `stats` as its object had them at its last flush, one
-- row per point kind (`stats`: the figures as JSON text,
-- {"count","sum","min","max","last"}), so the session list answers them
-- from D1 (CONTRACT.md section 5: a listed session is the session object
-- without participants). Not partitioned: keyed by session, like
-- session_point_months. Written in the flush's batch, upserted per kind.
CREATE TABLE IF NOT EXISTS session_stats (
  session_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  stats TEXT NOT NULL,
  PRIMARY KEY (session_id, kind)
) WITHOUT ROWID;
